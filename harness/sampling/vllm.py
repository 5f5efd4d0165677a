"""vLLM backend (GPU): the papers' own sampler. vllm is imported lazily; it is an optional extra.

How the suite's guarantee "a sample depends only on (seed, problem, index)" maps onto vLLM: vLLM seeds a
request, not a sample (a request with n > 1 draws its samples from one generator), so every sample index is
its own request (n=1) with vLLM's per-request `seed` set to `sample_seed(seed, key, index)`, the same 63-bit
seed the HF backends give their per-sample generator; the prefix cache shares the prompt's prefill among them.
A sample then does not depend on which other indices were asked for in the same call (the store's resume/shard
contract) as far as the sampling stream goes. Two limits remain: vLLM draws with its own kernels, so a vLLM sample
is not the HF backends' sample for the same seed (the store keys it apart through `numerics`); and vLLM's
logits are not batch-invariant by default (the batch a request shares can change the last bits of its logits, so
a draw near a boundary of the CDF can differ between runs). Within vLLM the guarantee therefore holds in
distribution always and sample for sample up to that rounding.

Mapping of SamplingParams (harness/sampling/base.py) onto vllm.SamplingParams:
- temperature 0 is greedy in both; the suite then draws one sample per prompt and copies it to every index.
- top_k 0 ("no top-k" here) becomes -1: older vLLM accepts only -1 for "disabled" (0 is an error there), newer
  versions default to 0 and still accept -1, so -1 is the value every version reads as "no top-k".
- max_new_tokens -> max_tokens; stop strings are passed (empty ones dropped: vLLM rejects them) and excluded
  from the text, as `cut_at_stop` does; `num_tokens` is vLLM's `len(token_ids)`, which keeps the tokens that
  spelled a stop string and the EOS token, as the HF backends count them (the fake-engine tests check the mapping,
  a GPU run with vllm installed checks vLLM's side: tests/test_sampling.py::test_vllm_samples).
- every token the HF backends end a sequence on (generation config's eos ids and the tokenizer's eos) is a
  `stop_token_ids` entry, so a sample ends at the same token under every backend.
- finish reasons: "length" -> length; "stop" with a string `stop_reason` -> stop; "stop" with an EOS or stop token
  (`stop_reason` None or an int) -> eos; anything else (an aborted request) is an error, never a sample.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

from harness.errors import ConfigError
from harness.sampling.base import Completion, SampleRequest, Sampler, SamplingParams, cut_at_stop, dtype_name, sample_seed

MISSING = "backend.name=vllm: vllm is not installed (pip install llm-replications[vllm], needs a GPU)"
NO_TOP_K = -1  # see the module docstring


def vllm_params(params: SamplingParams, key: str, index: int, stop_token_ids: Sequence[int] = ()) -> dict:
    """Keyword arguments of vllm.SamplingParams for one sample (same semantics as the HF backends)."""
    greedy = params.greedy
    return {
        "n": 1,
        "seed": None if greedy else sample_seed(params.seed, key, index),
        "temperature": 0.0 if greedy else float(params.temperature),
        "top_p": 1.0 if greedy else float(params.top_p),
        "top_k": NO_TOP_K if (greedy or not params.top_k) else int(params.top_k),
        "max_tokens": int(params.max_new_tokens),
        "stop": [s for s in params.stop if s],
        "stop_token_ids": [int(t) for t in stop_token_ids],
        "include_stop_str_in_output": False,
        "skip_special_tokens": True,
    }


def finish_reason(out: Any) -> str:
    """The suite's finish reason ("stop", "eos", "length") of one vLLM CompletionOutput."""
    if out.finish_reason == "length":
        return "length"
    if out.finish_reason == "stop":
        return "stop" if isinstance(getattr(out, "stop_reason", None), str) else "eos"
    raise RuntimeError(f"vLLM finished a sample with reason '{out.finish_reason}' (not stop or length): no sample to store")


def completion_from_output(key: str, index: int, out: Any, prompt_tokens: int, stop: Sequence[str]) -> Completion:
    """Map one vLLM CompletionOutput (text, token_ids, finish_reason, stop_reason) to a Completion."""
    text, _ = cut_at_stop(out.text, stop)  # vLLM already cuts; kept for identical semantics
    return Completion(key, index, text, len(out.token_ids), prompt_tokens, finish_reason(out))


class VLLMSampler(Sampler):
    name = "vllm"

    def __init__(
        self,
        loaded_model: Any,
        gpu_memory_utilization: float = 0.9,
        enable_prefix_caching: bool = True,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        max_num_seqs: int | None = None,
        max_batch_tokens: int | None = None,
    ):
        try:
            import vllm
        except ImportError:
            raise ConfigError(MISSING) from None
        from harness.sampling.hf import eos_token_ids

        self._vllm = vllm
        self.tokenizer = loaded_model.tokenizer
        self.stop_token_ids = eos_token_ids(loaded_model)
        kwargs: dict = {
            "model": _weights_path(loaded_model),
            "gpu_memory_utilization": gpu_memory_utilization,
            "enable_prefix_caching": enable_prefix_caching,
            "tensor_parallel_size": tensor_parallel_size,
            "dtype": dtype,
        }
        if max_num_seqs:
            kwargs["max_num_seqs"] = int(max_num_seqs)
        if max_batch_tokens:
            kwargs["max_num_batched_tokens"] = int(max_batch_tokens)
        # vLLM loads its own copy of the weights and claims a fixed share of the GPU's memory at start-up: a
        # transformers copy left on the GPU (model.device=cuda/auto) would make that start fail, and only its
        # tokenizer is used here.
        _off_the_gpu(loaded_model)
        self.llm = vllm.LLM(**kwargs)
        resolved = getattr(getattr(getattr(self.llm, "llm_engine", None), "model_config", None), "dtype", dtype)
        self._numerics = {"matmul_dtype": dtype_name(resolved), "kernels": "vllm"}  # GPU kernels round differently

    @property
    def numerics(self) -> dict:
        return dict(self._numerics)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def sample(self, requests: Sequence[SampleRequest], params: SamplingParams) -> Iterator[Completion]:
        prompts, sparams, owners = [], [], []
        for r in requests:
            # Prompts arrive rendered (BOS text included), as in harness.sampling.hf.encode_prompt.
            ids = self.tokenizer(r.prompt, add_special_tokens=False).input_ids
            indices = r.indices[:1] if params.greedy else r.indices
            for i in indices:
                prompts.append({"prompt_token_ids": ids})
                sparams.append(self._vllm.SamplingParams(**vllm_params(params, r.key, i, self.stop_token_ids)))
                owners.append((r, i, len(ids)))
        if not prompts:
            return
        outputs = self.llm.generate(prompts, sparams, use_tqdm=False)
        if len(outputs) != len(owners):  # zip would drop the missing samples without a word
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(owners)} requests")
        for (req, index, plen), out in zip(owners, outputs):
            c = completion_from_output(req.key, index, out.outputs[0], plen, params.stop)
            if params.greedy:
                for i in req.indices:
                    yield Completion(req.key, i, c.text, c.num_tokens, plen, c.finish_reason)
            else:
                yield c


def _off_the_gpu(loaded_model: Any) -> None:
    from harness.sampling.factory import model_device

    if getattr(loaded_model.model, "hf_device_map", None):  # accelerate's hooks pin such a model where it is
        raise ConfigError("backend.name=vllm: vLLM loads its own weights; load the model with model.device=cpu, not model.device_map")
    if model_device(loaded_model) != "cpu":
        import torch

        loaded_model.model.to("cpu")
        torch.cuda.empty_cache()


def _weights_path(loaded_model: Any) -> str:
    source = str(loaded_model.source)
    if source.startswith("random_init("):
        raise ConfigError("backend.name=vllm: a random_init model has no weights on disk for vLLM to load")
    return source
