"""The vLLM backend against a fake engine: a `vllm` module monkeypatched into sys.modules whose LLM and
SamplingParams record every request (sampling parameters, seeds, stop strings, n, logprobs) and return canned
outputs, so the mapping of the suite's SamplingParams onto vLLM's is checked without a GPU or vllm installed."""
from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from harness.errors import ConfigError
from harness.sampling.base import SampleRequest, SamplingParams, sample_seed
from harness.sampling.factory import make_sampler
from harness.sampling.vllm import NO_TOP_K, VLLMSampler

EOS, IM_END = 2, 7


class FakeSamplingParams:
    """Records its arguments; refuses what the strictest vLLM versions refuse."""

    def __init__(self, **kwargs):
        top_k = kwargs.get("top_k", -1)
        if top_k < -1 or top_k == 0:  # vLLM < 0.8: "top_k must be -1 (disable), or at least 1"
            raise ValueError(f"top_k must be -1 (disable), or at least 1, got {top_k}")
        if any(not s for s in kwargs.get("stop", [])):
            raise ValueError("stop cannot contain an empty string.")
        seed = kwargs.get("seed")
        if seed is not None and not -(2**63) <= seed < 2**63:
            raise ValueError("seed out of int64 range")
        self.kwargs = kwargs

    def __getattr__(self, name):
        return self.kwargs[name] if name in self.kwargs else None


def canned(prompt_ids, sp):
    """One CompletionOutput per request: its text names its seed, so equal seeds give equal samples."""
    return SimpleNamespace(text=f"seed={sp.seed} answer", token_ids=[11, 12, 13], finish_reason="stop", stop_reason=None)


class FakeLLM:
    instances: list = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.calls: list = []
        self.respond = canned
        self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(dtype=torch.bfloat16))
        FakeLLM.instances.append(self)

    def generate(self, prompts, sampling_params, use_tqdm=True):
        self.calls.append((list(prompts), list(sampling_params)))
        return [
            SimpleNamespace(prompt_token_ids=p["prompt_token_ids"], outputs=[self.respond(p["prompt_token_ids"], sp)])
            for p, sp in zip(prompts, sampling_params)
        ]


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM = FakeLLM
    module.SamplingParams = FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    FakeLLM.instances = []
    return module


class FakeTokenizer:
    eos_token_id = EOS

    def __call__(self, text, add_special_tokens=True):
        assert add_special_tokens is False  # prompts arrive rendered: no second BOS
        return SimpleNamespace(input_ids=[100 + (ord(c) % 50) for c in text.split()])


class FakeModel:
    def __init__(self, device="cpu"):
        self.generation_config = SimpleNamespace(eos_token_id=[EOS, IM_END])
        self.weight = torch.empty(1, device=device)
        self.moved_to: list = []

    def parameters(self):
        return iter([self.weight])

    def to(self, device):
        self.moved_to.append(device)
        self.weight = torch.empty(1, device=device)
        return self


def loaded(source="/models/llama3-8b", device="cpu"):
    return SimpleNamespace(source=source, tokenizer=FakeTokenizer(), model=FakeModel(device))


PARAMS = SamplingParams(temperature=0.6, top_p=0.95, top_k=0, max_new_tokens=256, stop=("Question:",), seed=3)


def sampler(**kwargs):
    return VLLMSampler(loaded(), **kwargs)


def sent(s):
    """(prompt_token_ids, recorded kwargs) of every request of the last generate call."""
    prompts, sps = s.llm.calls[-1]
    return [(p["prompt_token_ids"], sp.kwargs) for p, sp in zip(prompts, sps)]


def test_sampling_params_map_onto_vllms(fake_vllm):
    s = sampler()
    out = list(s.sample([SampleRequest("q1", "a b c", (0, 1))], PARAMS))
    requests = sent(s)
    assert len(requests) == 2 and len(out) == 2
    for (ids, kw), index in zip(requests, (0, 1)):
        assert ids == [100 + ord("a") % 50, 100 + ord("b") % 50, 100 + ord("c") % 50]
        assert kw["n"] == 1  # one request per sample: vLLM seeds requests, not samples
        assert kw["temperature"] == 0.6 and kw["top_p"] == 0.95
        assert kw["top_k"] == NO_TOP_K == -1
        assert kw["max_tokens"] == 256
        assert kw["stop"] == ["Question:"] and kw["include_stop_str_in_output"] is False
        assert kw["seed"] == sample_seed(3, "q1", index)
        assert kw.get("logprobs") is None  # nothing the store does not keep is asked for


def test_seed_is_the_suites_full_per_sample_seed(fake_vllm):
    # A 31-bit mask made two of 10,000 samples of one problem share a seed (and so a text) with odds ~2%.
    s = sampler()
    list(s.sample([SampleRequest("problem-7", "x", tuple(range(8)))], PARAMS))
    seeds = [kw["seed"] for _, kw in sent(s)]
    assert seeds == [sample_seed(3, "problem-7", i) for i in range(8)]
    assert max(seeds) >= 2**31  # the seed is not cut to 31 bits


def test_top_k_is_passed_when_set(fake_vllm):
    s = sampler()
    list(s.sample([SampleRequest("q", "x", (0,))], SamplingParams(temperature=1.0, top_k=40)))
    assert sent(s)[0][1]["top_k"] == 40


def test_a_sample_does_not_depend_on_the_other_indices_asked_for(fake_vllm):
    s = sampler()
    together = {c.index: c for c in s.sample([SampleRequest("q", "x y", (0, 1, 2))], PARAMS)}
    alone = list(s.sample([SampleRequest("q", "x y", (2,))], PARAMS))
    first_call = [sp.kwargs for sp in s.llm.calls[0][1]]
    assert sent(s)[0][1] == first_call[2]  # the same request, whichever indices came with it
    assert alone[0].text == together[2].text and alone[0].text != together[1].text


def test_greedy_draws_once_per_prompt_and_copies(fake_vllm):
    s = sampler()
    out = list(s.sample([SampleRequest("q", "x", (4, 5, 6))], SamplingParams(temperature=0.0, top_k=5, max_new_tokens=9)))
    [(_, kw)] = sent(s)
    assert kw["temperature"] == 0.0 and kw["seed"] is None and kw["top_k"] == NO_TOP_K and kw["top_p"] == 1.0
    assert [c.index for c in out] == [4, 5, 6] and len({c.text for c in out}) == 1


def test_every_eos_token_of_the_hf_backends_stops_vllm(fake_vllm):
    s = sampler()
    list(s.sample([SampleRequest("q", "x", (0,))], PARAMS))
    assert sent(s)[0][1]["stop_token_ids"] == [EOS, IM_END]


def test_empty_stop_strings_are_dropped(fake_vllm):
    s = sampler()
    list(s.sample([SampleRequest("q", "x", (0,))], SamplingParams(stop=("", "\n\n"))))
    assert sent(s)[0][1]["stop"] == ["\n\n"]


@pytest.mark.parametrize(
    "finish, stop_reason, expected",
    [("length", None, "length"), ("stop", "Question:", "stop"), ("stop", None, "eos"), ("stop", IM_END, "eos")],
)
def test_finish_reasons_and_token_counts(fake_vllm, finish, stop_reason, expected):
    s = sampler()
    s.llm.respond = lambda ids, sp: SimpleNamespace(text="The answer is 5", token_ids=[1, 2, 3, 4], finish_reason=finish,
                                                    stop_reason=stop_reason)
    [c] = s.sample([SampleRequest("q", "a b", (0,))], PARAMS)
    assert (c.finish_reason, c.num_tokens, c.prompt_tokens, c.text) == (expected, 4, 2, "The answer is 5")


def test_an_aborted_request_is_an_error_not_a_sample(fake_vllm):
    s = sampler()
    s.llm.respond = lambda ids, sp: SimpleNamespace(text="The ans", token_ids=[1], finish_reason="abort", stop_reason=None)
    with pytest.raises(RuntimeError, match="abort"):
        list(s.sample([SampleRequest("q", "x", (0,))], PARAMS))


def test_text_is_cut_before_a_stop_string_vllm_left_in(fake_vllm):
    s = sampler()
    s.llm.respond = lambda ids, sp: SimpleNamespace(text="5\nQuestion: next", token_ids=[1, 2, 3], finish_reason="stop",
                                                    stop_reason="Question:")
    [c] = s.sample([SampleRequest("q", "x", (0,))], PARAMS)
    assert c.text == "5\n" and c.num_tokens == 3


def test_fewer_outputs_than_requests_is_an_error(fake_vllm):
    s = sampler()
    real_generate = s.llm.generate
    s.llm.generate = lambda prompts, sps, use_tqdm=True: real_generate(prompts, sps)[:-1]
    with pytest.raises(RuntimeError, match="2 outputs for 3 requests"):
        list(s.sample([SampleRequest("q", "x", (0, 1, 2))], PARAMS))


def test_engine_arguments_and_numerics_from_the_backend_config(fake_vllm):
    cfg = OmegaConf.load("conf/backend/vllm.yaml")
    cfg.max_num_seqs = 64
    s = make_sampler(cfg, loaded("/models/llama3-8b"))
    kw = FakeLLM.instances[-1].kwargs
    assert kw["model"] == "/models/llama3-8b" and kw["dtype"] == "auto"
    assert kw["gpu_memory_utilization"] == 0.9 and kw["enable_prefix_caching"] is True
    assert kw["tensor_parallel_size"] == 1 and kw["max_num_seqs"] == 64 and "max_num_batched_tokens" not in kw
    assert s.numerics == {"matmul_dtype": "bfloat16", "kernels": "vllm"}  # what vLLM resolved `auto` to


def test_a_transformers_copy_off_the_cpu_is_moved_off_before_vllm_starts(fake_vllm):
    model = loaded(device="meta")  # any device but the CPU stands in for the GPU here
    VLLMSampler(model)
    assert model.model.moved_to == ["cpu"]
    on_cpu = loaded()
    VLLMSampler(on_cpu)
    assert on_cpu.model.moved_to == []


def test_a_model_spread_by_device_map_is_refused(fake_vllm):
    model = loaded()
    model.model.hf_device_map = {"model": 0}
    with pytest.raises(ConfigError, match="model.device=cpu"):
        VLLMSampler(model)


def test_random_init_has_no_weights_for_vllm(fake_vllm):
    with pytest.raises(ConfigError, match="random_init"):
        VLLMSampler(loaded(source="random_init(seed=0,h=64,l=2)"))


def test_missing_vllm_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm then raises ImportError
    with pytest.raises(ConfigError, match="vllm is not installed"):
        VLLMSampler(loaded())


def test_fast_backend_refuses_a_model_off_the_cpu_in_one_line():
    with pytest.raises(ConfigError, match=r"backend.name=hf: .* on meta") as err:
        make_sampler({"name": "hf"}, loaded(device="meta"))
    assert "\n" not in str(err.value)
