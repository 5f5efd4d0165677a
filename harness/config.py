"""Structured configs: typed schemas the composed Hydra config is validated against.

Hydra composes YAML; these dataclasses give the composed config its types, so a wrong type or an
unknown key fails at start-up with one line naming the key, before any model is loaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.errors import ConfigError
from harness.sampling.base import SamplingParams


@dataclass
class RandomInitConfig:
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    seed: int = 0
    tokenizer: Any = None


@dataclass
class ModelConfig:
    name: str = "model"
    package: Optional[str] = None  # a pip package shipping the weights (the embedded default)
    file: Optional[str] = None  # a file inside the folder/package (GGUF)
    path: Optional[str] = None  # a local folder (save_pretrained) or .gguf file: trained checkpoints
    hub_id: Optional[str] = None
    revision: Optional[str] = None
    chat_template: bool = False
    dtype: str = "float32"
    num_parameters: Optional[int] = None  # for FLOPs accounting where the weights are not loaded here
    random_init: Optional[RandomInitConfig] = None


@dataclass
class SamplingConfig:
    temperature: float = 0.6
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    seed: int = 0

    def params(self, stop: tuple[str, ...] = ()) -> SamplingParams:
        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_new_tokens=self.max_new_tokens,
            stop=tuple(stop),
            seed=self.seed,
        )


@dataclass
class StoreConfig:
    root: str = "results/store"
    shard: str = "main"


@dataclass
class SubsetSamplingConfig:
    """Monte Carlo size-k subsets for voting / best-of-k where exact enumeration is too large."""

    num_subsets: int = 1000
    seed: int = 0


@dataclass
class BootstrapConfig:
    num_resamples: int = 2000
    seed: int = 0


@dataclass
class PublishedConfig:
    models: List[str] = field(default_factory=list)  # which published rows a report shows beside ours


@dataclass
class RunKeys:
    """Top-level keys every replication config has besides its config groups (conf/harness.yaml)."""

    paper: str = "paper"
    run_name: str = "run"
    samples: int = 1
    mode: str = "full"  # full | sample (only fill the store: sharded multirun jobs)
    progress: bool = True


def check_run_keys(cfg: DictConfig) -> RunKeys:
    """Validate the top-level keys; read through the full config so `${model.name}`-style values resolve."""
    keys = validate(OmegaConf.create({k: cfg[k] for k in RunKeys.__dataclass_fields__ if k in cfg}), RunKeys)
    if keys.samples < 1:
        raise ConfigError(f"config key 'samples': must be >= 1, got {keys.samples}")
    if keys.mode not in ("full", "sample"):
        raise ConfigError(f"config key 'mode': must be 'full' or 'sample', got '{keys.mode}'")
    return keys


def validate(cfg: DictConfig, schema: type, key: str | None = None) -> Any:
    """Merge `cfg` (or `cfg[key]`) onto `schema`; returns the typed object (a dataclass instance).

    Raises ConfigError naming the offending key: unknown keys and wrong types are caught here.
    """
    node = cfg if key is None else cfg.get(key)
    if node is None:
        raise ConfigError(f"config key '{key}' is missing")
    try:
        if isinstance(node, DictConfig):  # resolve against the whole config before the node is detached
            node = OmegaConf.to_container(node, resolve=True)
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        where = f"{key}." if key else ""
        full_key = getattr(err, "full_key", None) or ""
        msg = str(err).strip().splitlines()[0]
        raise ConfigError(f"config key '{where}{full_key}': {msg}") from None


def sampling_params(cfg: DictConfig, stop: tuple[str, ...] = ()) -> SamplingParams:
    return validate(cfg, SamplingConfig, "sampling").params(stop)
