"""Device placement as config (`model.device`, `model.device_map`, `dtype: auto`): the resolution logic and its
errors run everywhere; the tests that need CUDA skip cleanly without it (bench/gpu_check.sh runs them on a GPU)."""
from __future__ import annotations

import importlib.util
import shutil

import pytest
import torch
from omegaconf import OmegaConf

from harness.errors import ConfigError
from harness.models.loading import load_model, placement, resolve_device, resolve_dtype

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu_check.sh runs it)")


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def one_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


def test_unset_device_is_the_cpu_even_with_a_gpu(one_gpu):
    assert resolve_device(None) == "cpu"


def test_auto_is_cuda_when_there_is_one(one_gpu):
    assert resolve_device("auto") == "cuda"


def test_auto_is_the_cpu_without_cuda(no_cuda):
    assert resolve_device("auto") == "cpu"
    assert resolve_device("CPU") == "cpu"


@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_a_one_line_config_error(no_cuda, name):
    with pytest.raises(ConfigError, match=rf"model\.device={name}: CUDA is not available") as err:
        resolve_device(name)
    assert "\n" not in str(err.value)


def test_named_devices_pass_through(one_gpu):
    assert resolve_device("cuda") == "cuda"
    assert resolve_device("cuda:0") == "cuda:0"


def test_a_gpu_index_past_the_last_gpu_is_an_error(one_gpu):
    with pytest.raises(ConfigError, match=r"model\.device=cuda:1: this machine has 1 CUDA device"):
        resolve_device("cuda:1")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "cuda:", "mps", "cuda0"])
def test_unknown_devices_are_errors(one_gpu, name):
    with pytest.raises(ConfigError, match=r"model\.device: .* is not a device"):
        resolve_device(name)


def test_dtype_defaults_suit_the_device(one_gpu):
    assert resolve_dtype(None, "cpu") == "float32"
    assert resolve_dtype(None, "cuda") == "float32"  # unset stays the old default: only `auto` adapts
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("auto", "cuda") == "bfloat16"
    assert resolve_dtype("auto", "cuda:0") == "bfloat16"
    assert resolve_dtype("float16", "cpu") == "float16"


def test_auto_dtype_on_a_gpu_without_bf16_is_float16(one_gpu, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", "cuda") == "float16"


def test_unknown_dtype_names_the_key():
    with pytest.raises(ConfigError, match=r"model\.dtype: 'float33'"):
        resolve_dtype("float33", "cpu")


def test_device_map_wins_over_device(no_cuda):
    device, device_map = placement(OmegaConf.create({"device": "cuda", "device_map": "auto"}))
    assert (device, device_map) == ("cpu", "auto")
    device, device_map = placement(OmegaConf.create({"device_map": {"model": 0, "lm_head": 1}}))
    assert device_map == {"model": 0, "lm_head": 1} and isinstance(device_map, dict)


def test_plain_configs_place_on_the_device(one_gpu):
    assert placement(OmegaConf.create({"device": "cuda:0"})) == ("cuda:0", None)
    assert placement({"name": "x"}) == ("cpu", None)


GPU_TOKENIZER = "bench/gpu/tokenizer"  # SmolLM2's tokenizer as a folder (bench/gpu/make_tokenizer.py)


def _tiny(**overrides):
    cfg = OmegaConf.load("conf/model/tiny_random.yaml")
    if importlib.util.find_spec(cfg.random_init.tokenizer.package) is None:  # a GPU machine without the GGUF package
        cfg.random_init.tokenizer = {"path": GPU_TOKENIZER}
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def test_load_model_refuses_cuda_without_cuda(no_cuda):
    with pytest.raises(ConfigError, match=r"model\.device=cuda"):
        load_model(_tiny(device="cuda"))


def test_random_init_refuses_a_device_map():
    with pytest.raises(ConfigError, match=r"model\.device_map"):
        load_model(_tiny(device_map="auto"))


def test_auto_on_the_cpu_loads_what_the_old_default_loaded(no_cuda):
    auto = load_model(_tiny(device="auto", dtype="auto"))
    plain = load_model(_tiny())
    assert next(auto.model.parameters()).device.type == "cpu"
    assert next(auto.model.parameters()).dtype == torch.float32
    assert auto.identity == plain.identity  # the device key adds nothing to the identity


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """The tiny random model saved as a save_pretrained folder (the path a checkpoint loads from)."""
    folder = tmp_path_factory.mktemp("tiny")
    loaded = load_model(_tiny())
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return folder


def test_a_folder_loads_on_the_device_in_the_auto_dtype(no_cuda, tiny_folder):
    auto = load_model(OmegaConf.create({"name": "t", "path": str(tiny_folder), "device": "auto", "dtype": "auto"}))
    plain = load_model(OmegaConf.create({"name": "t", "path": str(tiny_folder)}))
    assert next(auto.model.parameters()).device.type == "cpu"
    assert auto.identity == plain.identity and auto.identity.endswith("/float32")


def test_a_device_map_reaches_from_pretrained(tiny_folder, monkeypatch):
    from transformers import AutoModelForCausalLM

    seen = {}
    real = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    loaded = load_model(OmegaConf.create({"name": "t", "path": str(tiny_folder), "device_map": {"": "cpu"}}))
    assert seen["device_map"] == {"": "cpu"} and isinstance(seen["device_map"], dict)
    assert next(loaded.model.parameters()).device.type == "cpu"


def test_a_tokenizer_folder_is_identified_by_its_files(tmp_path):
    from harness.models.loading import tokenizer_identity

    shutil.copytree(GPU_TOKENIZER, tmp_path / "tok")
    record = tokenizer_identity({"path": str(tmp_path / "tok")})
    assert record["kind"] == "tokenizer_folder" and "tokenizer.json" in record["files"]
    assert tokenizer_identity({"path": GPU_TOKENIZER})["sha256"] == record["sha256"]  # content, not path
    (tmp_path / "tok" / "chat_template.jinja").write_text("{{ messages }}")
    assert tokenizer_identity({"path": str(tmp_path / "tok")})["sha256"] != record["sha256"]


# ---- on a GPU ----------------------------------------------------------------------------------------


@needs_cuda
def test_random_init_on_cuda_has_the_cpu_identity_and_auto_is_bf16():
    on_gpu = load_model(_tiny(device="cuda", dtype="bfloat16"))
    on_cpu = load_model(_tiny(device="cpu", dtype="bfloat16"))
    assert next(on_gpu.model.parameters()).device.type == "cuda"
    assert on_gpu.identity == on_cpu.identity  # same weights: drawn on the CPU, then moved
    auto = load_model(_tiny(device="auto", dtype="auto"))
    assert next(auto.model.parameters()).dtype == torch.bfloat16
    assert auto.identity.endswith("/bfloat16")


@needs_cuda
def test_a_gpu_forward_agrees_with_the_cpu_in_float32():
    on_gpu = load_model(_tiny(device="cuda:0"))
    on_cpu = load_model(_tiny())
    ids = on_cpu.tokenizer("What is 2 + 3?", return_tensors="pt").input_ids
    with torch.inference_mode():
        cpu_logits = on_cpu.model(ids).logits
        gpu_logits = on_gpu.model(ids.cuda()).logits.cpu()
    assert torch.allclose(cpu_logits, gpu_logits, atol=1e-3, rtol=1e-3)


@needs_cuda
def test_reference_sampler_runs_on_cuda():
    from harness.sampling.base import SampleRequest, SamplingParams
    from harness.sampling.factory import make_sampler

    loaded = load_model(_tiny(device="cuda"))
    sampler = make_sampler({"name": "hf_generate", "batch_size": 4}, loaded)
    params = SamplingParams(temperature=0.6, top_p=0.95, max_new_tokens=8, seed=0)
    out = list(sampler.sample([SampleRequest("p", "Question: 1 + 1?", (0, 1, 2))], params))
    assert sorted(c.index for c in out) == [0, 1, 2]
    assert all(1 <= c.num_tokens <= 8 for c in out)
    again = list(sampler.sample([SampleRequest("p", "Question: 1 + 1?", (1,))], params))
    assert again[0].text == next(c.text for c in out if c.index == 1)  # a sample does not depend on its batch
    on_cpu = make_sampler({"name": "hf_generate", "batch_size": 4}, load_model(_tiny()))
    assert sampler.numerics != on_cpu.numerics, "GPU kernels round differently: CUDA samples need their own store key"


@needs_cuda
def test_fast_sampler_on_cuda_runs_or_refuses_in_one_line():
    from harness.sampling.base import SampleRequest, SamplingParams
    from harness.sampling.factory import make_sampler

    loaded = load_model(_tiny(device="cuda"))
    try:
        sampler = make_sampler({"name": "hf", "batch_size": 4}, loaded)
    except ConfigError as err:
        assert "backend.name=hf" in str(err) and "\n" not in str(err)
        return
    out = list(sampler.sample([SampleRequest("p", "Question: 1 + 1?", (0, 1))], SamplingParams(max_new_tokens=8)))
    assert sorted(c.index for c in out) == [0, 1]
    on_cpu = make_sampler({"name": "hf", "batch_size": 4}, load_model(_tiny()))
    assert sampler.numerics != on_cpu.numerics, "GPU kernels round differently: CUDA samples need their own store key"
