"""`make_sampler(backend_cfg, loaded_model)`: the sampler a `conf/backend/*.yaml` config names."""
from __future__ import annotations

from typing import Any

from harness.errors import ConfigError
from harness.sampling.base import Sampler

BACKENDS = ("hf", "hf_generate", "vllm")


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


def model_device(loaded_model: Any) -> str:
    """The device type ("cpu", "cuda") the loaded model's first parameter sits on; "cpu" for a model without any."""
    parameters = getattr(getattr(loaded_model, "model", None), "parameters", None)
    first = next(iter(parameters()), None) if callable(parameters) else None
    return "cpu" if first is None else first.device.type


def _rng(backend_cfg: Any) -> str:
    from harness.sampling.counter_rng import RNGS

    rng = str(_get(backend_cfg, "rng", "generator"))
    if rng not in RNGS:
        raise ConfigError(f"backend.rng: '{rng}' is not a random stream ({', '.join(RNGS)})")
    return rng


def make_sampler(backend_cfg: Any, loaded_model: Any) -> Sampler:
    name = _get(backend_cfg, "name")
    if name == "hf":
        from harness.sampling.fast import FastHFSampler

        device = model_device(loaded_model)
        if device != "cpu" and device not in getattr(FastHFSampler, "devices", ("cpu",)):
            raise ConfigError(
                f"backend.name=hf: the fast sampler's decode step runs on the CPU only, and the model is on {device} "
                "(model.device): use backend=hf_generate or backend=vllm there, or model.device=cpu"
            )
        return FastHFSampler(
            loaded_model,
            batch_size=int(_get(backend_cfg, "batch_size", 64)),
            num_threads=_get(backend_cfg, "num_threads"),
            max_batch_tokens=int(_get(backend_cfg, "max_batch_tokens", 2048)),
            matmul_dtype=str(_get(backend_cfg, "matmul_dtype", "float32")),
            rng=_rng(backend_cfg),
            matmul_kernel=str(_get(backend_cfg, "matmul_kernel", "auto")),
        )
    if name == "hf_generate":
        from harness.sampling.hf import HFGenerateSampler

        return HFGenerateSampler(
            loaded_model,
            batch_size=int(_get(backend_cfg, "batch_size", 16)),
            num_threads=_get(backend_cfg, "num_threads"),
            rng=_rng(backend_cfg),
        )
    if name == "vllm":
        from harness.sampling.vllm import VLLMSampler

        return VLLMSampler(
            loaded_model,
            gpu_memory_utilization=float(_get(backend_cfg, "gpu_memory_utilization", 0.9)),
            enable_prefix_caching=bool(_get(backend_cfg, "enable_prefix_caching", True)),
            tensor_parallel_size=int(_get(backend_cfg, "tensor_parallel_size", 1)),
            dtype=str(_get(backend_cfg, "dtype", "auto")),
            max_num_seqs=_get(backend_cfg, "max_num_seqs"),
            max_batch_tokens=_get(backend_cfg, "max_batch_tokens"),
        )
    raise ConfigError(f"backend.name: unknown sampling backend '{name}' (known: {', '.join(BACKENDS)})")
