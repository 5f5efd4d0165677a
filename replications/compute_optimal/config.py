"""The compute_optimal config's own keys, typed: validated at start-up so a bad value names its key."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from omegaconf import MISSING, DictConfig

from harness.config import PaperAnalysisConfig, SubsetSamplingConfig, check_run_keys, validate
from harness.errors import ConfigError
from harness.reward.models import reward_model_config
from harness.selection.metrics import k_grid
from harness.selection.tree_search import METHODS

SAMPLING_METHODS = ("majority_vote", "rm_weighted_vote", "rm_best_of_n")


@dataclass
class GreedySettings:
    enabled: bool = MISSING
    max_new_tokens: int = MISSING


@dataclass
class SearchSettings:
    methods: List[str] = MISSING
    widths: List[int] = MISSING
    problems: Optional[int] = MISSING
    aggregations: List[str] = MISSING
    softmax_temperature: float = MISSING
    truncate_ratio: Optional[float] = MISSING
    beam_width: int = MISSING
    max_depth: int = MISSING
    max_step_tokens: int = MISSING
    max_tokens: int = MISSING
    answer_pattern: Optional[str] = MISSING


@dataclass
class FlopsSettings:
    prefix_reuse: bool = MISSING


@dataclass
class ClaimSettings:
    saturation_ratio: float = MISSING
    saturation_doublings: int = MISSING


@dataclass
class ComputeOptimalConfig(PaperAnalysisConfig):
    """No field has a default: conf/compute_optimal/default.yaml is the one place the defaults live."""

    budgets: Optional[List[int]] = MISSING
    sampling_methods: List[str] = MISSING
    greedy: GreedySettings = MISSING
    search: SearchSettings = MISSING
    flops: FlopsSettings = MISSING
    save_reward_model: bool = MISSING
    selection: SubsetSamplingConfig = MISSING
    claims: ClaimSettings = MISSING


def check_config(cfg: DictConfig) -> ComputeOptimalConfig:
    co = validate(cfg, ComputeOptimalConfig, "compute_optimal")
    keys = check_run_keys(cfg)
    reward_model_config(cfg.reward_model)
    for key, methods in (("sampling_methods", co.sampling_methods), ("search.aggregations", co.search.aggregations)):
        for m in methods:
            if m not in SAMPLING_METHODS:
                raise ConfigError(f"config key 'compute_optimal.{key}': method '{m}' is not one of "
                                  f"{', '.join(SAMPLING_METHODS)}")
    for key in ("max_step_tokens", "max_tokens", "max_depth", "beam_width"):
        if getattr(co.search, key) < 1:
            raise ConfigError(f"config key 'compute_optimal.search.{key}': must be >= 1, got {getattr(co.search, key)}")
    if co.search.softmax_temperature <= 0:
        raise ConfigError(f"config key 'compute_optimal.search.softmax_temperature': must be > 0, "
                          f"got {co.search.softmax_temperature}")
    if co.claims.saturation_doublings < 1:
        raise ConfigError(f"config key 'compute_optimal.claims.saturation_doublings': must be >= 1, "
                          f"got {co.claims.saturation_doublings}")
    for m in co.search.methods:
        if m not in METHODS:
            raise ConfigError(f"compute_optimal.search.methods: '{m}' is not one of {', '.join(METHODS)}")
    if any(w < 1 for w in co.search.widths):
        raise ConfigError(f"compute_optimal.search.widths: every width must be >= 1, got {co.search.widths}")
    if co.budgets and any(not 1 <= b <= keys.samples for b in co.budgets):
        raise ConfigError(f"compute_optimal.budgets: every N must be in 1..samples={keys.samples}, got {co.budgets}")
    return co


def budgets(co: ComputeOptimalConfig, samples: int) -> list[int]:
    return k_grid(samples, co.budgets)
