"""Structured configs: typed schemas the composed Hydra config is validated against.

Hydra composes YAML; these dataclasses give the composed config its types, so a wrong type or an
unknown key fails at start-up with one line naming the key, before any model is loaded.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Sequence

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
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
    warm_start: Optional[Any] = None  # a conf/warm_start name or node: fine-tune once before use (harness.training.warm_start)
    device: Optional[str] = None  # cpu (unset) | auto | cuda | cuda:N (harness.models.loading.placement)
    device_map: Optional[Any] = None  # passed to from_pretrained for models larger than one GPU; wins over device


@dataclass
class SamplingConfig:
    """No defaults: every paper's YAML sets its own sampling (they differ), and a key it forgets is an error."""

    temperature: float = MISSING
    top_p: float = MISSING
    top_k: int = MISSING
    max_new_tokens: int = MISSING
    seed: int = MISSING

    def check(self, key: str = "sampling") -> "SamplingConfig":
        """Raise ConfigError naming `<key>.<field>` for a value no sampler can use (e.g. temperature < 0 would
        sample from the inverted distribution without complaint)."""
        bad = [
            ("temperature", self.temperature < 0, ">= 0"),
            ("top_p", not 0 < self.top_p <= 1, "in (0, 1]"),
            ("top_k", self.top_k < 0, ">= 0 (0: no top-k)"),
            ("max_new_tokens", self.max_new_tokens < 1, ">= 1"),
        ]
        for name, wrong, allowed in bad:
            if wrong:
                raise ConfigError(f"config key '{key}.{name}': must be {allowed}, got {getattr(self, name)}")
        return self

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
    root: str = MISSING
    shard: str = MISSING


# The schemas below have no defaults: each paper's YAML sets (and documents) its values, conf/harness.yaml the
# shared ones, so a default can never silently differ from what the YAML says.


@dataclass
class SubsetSamplingConfig:
    """Monte Carlo size-k subsets for voting / best-of-k where exact enumeration is too large."""

    num_subsets: int = MISSING
    seed: int = MISSING


@dataclass
class BootstrapConfig:
    num_resamples: int = MISSING
    seed: int = MISSING


@dataclass
class PublishedConfig:
    models: List[str] = MISSING  # which published rows a report shows beside ours


@dataclass
class PaperAnalysisConfig:
    """What every paper's analysis node has: its bootstrap over problems and the published rows it shows."""

    bootstrap: BootstrapConfig = MISSING
    published: PublishedConfig = MISSING


@dataclass
class RunKeys:
    """Top-level keys every replication config has besides its config groups (conf/harness.yaml)."""

    paper: str = MISSING
    run_name: str = MISSING
    samples: int = MISSING
    mode: str = MISSING  # full | sample (only fill the store: sharded multirun jobs)
    progress: bool = MISSING


def check_run_keys(cfg: DictConfig) -> RunKeys:
    """Validate the top-level keys; read through the full config so `${model.name}`-style values resolve."""
    keys = validate(OmegaConf.create({k: cfg[k] for k in RunKeys.__dataclass_fields__ if k in cfg}), RunKeys)
    if keys.samples < 1:
        raise ConfigError(f"config key 'samples': must be >= 1, got {keys.samples}")
    if keys.mode not in ("full", "sample"):
        raise ConfigError(f"config key 'mode': must be 'full' or 'sample', got '{keys.mode}'")
    return keys


def validate(cfg: DictConfig, schema: type, key: str | None = None) -> Any:
    """Merge `cfg` (or the node at the dotted `key`) onto `schema`; returns the typed object (a dataclass instance).

    Raises ConfigError naming the offending key: unknown keys, wrong types and unset keys are caught here.
    """
    node = cfg if key is None else OmegaConf.select(cfg, key, default=None)
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
    return validate(cfg, SamplingConfig, "sampling").check().params(stop)


def _walk(cfg: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, node) of every node below `cfg`, Hydra's own settings left out; interpolations unresolved."""
    if isinstance(cfg, DictConfig):
        items = [(name, cfg._get_node(name)) for name in cfg.keys() if prefix or name != "hydra"]
    elif isinstance(cfg, ListConfig):
        items = list(enumerate(cfg._iter_ex(resolve=False)))
    else:
        return
    for name, child in items:
        key = f"{prefix}{name}"
        yield key, child
        yield from _walk(child, key + ".")


def sampling_nodes(cfg: DictConfig) -> list[str]:
    """Dotted keys of every `sampling` node in the config (`sampling`, `rest.eval.sampling`, ...)."""
    return [key for key, node in _walk(cfg) if key.rsplit(".", 1)[-1] == "sampling" and isinstance(node, DictConfig)]


def check_sampling(cfg: DictConfig) -> None:
    """Validate every sampling node at start-up (before any model is loaded): types and each value's range;
    and every other `*max_new_tokens` key (greedy baselines, evaluations) is >= 1."""
    for key in sampling_nodes(cfg):
        validate(cfg, SamplingConfig, key).check(key)
    for key, _ in _walk(cfg):
        if key.endswith("max_new_tokens") and not key.endswith("sampling.max_new_tokens"):
            value = OmegaConf.select(cfg, key)
            if isinstance(value, int) and not isinstance(value, bool) and value < 1:
                raise ConfigError(f"config key '{key}': must be >= 1, got {value}")


def require_choice(key: str, value: Any, choices: Sequence[str]) -> None:
    """A one-line ConfigError unless `value` is one of `choices` (the key is the full config path)."""
    if value not in choices:
        raise ConfigError(f"config key '{key}': '{value}' is not one of {', '.join(choices)}")


def require_at_least(key: str, value: Any, low: float, allow_none: bool = False) -> None:
    """A one-line ConfigError unless `value >= low` (or None, where `allow_none`)."""
    if value is None and allow_none:
        return
    if value is None or value < low:
        raise ConfigError(f"config key '{key}': must be >= {low}{' or null' if allow_none else ''}, got {value}")
