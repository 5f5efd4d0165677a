"""vLLM backend (GPU): the papers' own sampler. vllm is imported lazily; it is an optional extra.

Each request becomes one vLLM prompt with SamplingParams(n=len(indices)); vLLM seeds a request, not
a sample, so requests are split per sample index (n=1, seed=sample_seed(seed, key, index)) and the
prefix cache shares the prompt's prefill among them: a sample then does not depend on which other
indices were asked for in the same call (the store's resume/shard contract).
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

from harness.errors import ConfigError
from harness.sampling.base import Completion, SampleRequest, Sampler, SamplingParams, cut_at_stop, dtype_name, sample_seed

MISSING = "backend.name=vllm: vllm is not installed (pip install llm-replications[vllm], needs a GPU)"


def vllm_params(params: SamplingParams, key: str, index: int) -> dict:
    """Keyword arguments of vllm.SamplingParams for one sample (same semantics as the HF backends)."""
    greedy = params.greedy
    return {
        "n": 1,
        "seed": None if greedy else sample_seed(params.seed, key, index) & 0x7FFFFFFF,
        "temperature": 0.0 if greedy else float(params.temperature),
        "top_p": 1.0 if greedy else float(params.top_p),
        "top_k": -1 if (greedy or not params.top_k) else int(params.top_k),  # vLLM: -1 disables
        "max_tokens": int(params.max_new_tokens),
        "stop": list(params.stop),
        "include_stop_str_in_output": False,
        "skip_special_tokens": True,
    }


def completion_from_output(key: str, index: int, out: Any, prompt_tokens: int, stop: Sequence[str]) -> Completion:
    """Map one vLLM CompletionOutput (text, token_ids, finish_reason, stop_reason) to a Completion."""
    text, _ = cut_at_stop(out.text, stop)  # vLLM already cuts; kept for identical semantics
    if out.finish_reason == "length":
        reason = "length"
    elif isinstance(getattr(out, "stop_reason", None), str):
        reason = "stop"
    else:
        reason = "eos"
    return Completion(key, index, text, len(out.token_ids), prompt_tokens, reason)


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
        self._vllm = vllm
        self.tokenizer = loaded_model.tokenizer
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
        # vLLM loads its own copy of the weights; the transformers model is not needed on the GPU.
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
            ids = self.tokenizer(r.prompt, add_special_tokens=False).input_ids
            indices = r.indices[:1] if params.greedy else r.indices
            for i in indices:
                prompts.append({"prompt_token_ids": ids})
                sparams.append(self._vllm.SamplingParams(**vllm_params(params, r.key, i)))
                owners.append((r, i, len(ids)))
        outputs = self.llm.generate(prompts, sparams, use_tqdm=False)
        for (req, index, plen), out in zip(owners, outputs):
            c = completion_from_output(req.key, index, out.outputs[0], plen, params.stop)
            if params.greedy:
                for i in req.indices:
                    yield Completion(req.key, i, c.text, c.num_tokens, plen, c.finish_reason)
            else:
                yield c


def _weights_path(loaded_model: Any) -> str:
    source = str(loaded_model.source)
    if source.startswith("random_init("):
        raise ConfigError("backend.name=vllm: a random_init model has no weights on disk for vLLM to load")
    return source
