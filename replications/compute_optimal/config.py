"""The compute_optimal config's own keys, typed: validated at start-up so a bad value names its key."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import DictConfig

from harness.config import BootstrapConfig, PublishedConfig, SubsetSamplingConfig, check_run_keys, validate
from harness.errors import ConfigError
from harness.reward.models import reward_model_config
from harness.selection.tree_search import METHODS

SAMPLING_METHODS = ("majority_vote", "rm_weighted_vote", "rm_best_of_n")


@dataclass
class GreedySettings:
    enabled: bool = True
    max_new_tokens: int = 256


@dataclass
class SearchSettings:
    methods: List[str] = field(default_factory=lambda: ["rebase", "beam"])
    widths: List[int] = field(default_factory=lambda: [2, 4, 8])
    problems: Optional[int] = None
    aggregations: List[str] = field(default_factory=lambda: list(SAMPLING_METHODS))
    softmax_temperature: float = 0.2
    truncate_ratio: Optional[float] = None
    beam_width: int = 2
    max_depth: int = 12
    max_step_tokens: int = 128
    max_tokens: int = 256
    answer_pattern: Optional[str] = None


@dataclass
class FlopsSettings:
    prefix_reuse: bool = True


@dataclass
class ClaimSettings:
    saturation_ratio: float = 0.5


@dataclass
class ComputeOptimalConfig:
    budgets: Optional[List[int]] = None
    sampling_methods: List[str] = field(default_factory=lambda: list(SAMPLING_METHODS))
    greedy: GreedySettings = field(default_factory=GreedySettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    flops: FlopsSettings = field(default_factory=FlopsSettings)
    save_reward_model: bool = True
    selection: SubsetSamplingConfig = field(default_factory=SubsetSamplingConfig)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    claims: ClaimSettings = field(default_factory=ClaimSettings)
    published: PublishedConfig = field(default_factory=PublishedConfig)


def check_config(cfg: DictConfig) -> ComputeOptimalConfig:
    co = validate(cfg, ComputeOptimalConfig, "compute_optimal")
    keys = check_run_keys(cfg)
    reward_model_config(cfg.reward_model)
    for m in co.sampling_methods + co.search.aggregations:
        if m not in SAMPLING_METHODS:
            raise ConfigError(f"compute_optimal: method '{m}' is not one of {', '.join(SAMPLING_METHODS)}")
    for m in co.search.methods:
        if m not in METHODS:
            raise ConfigError(f"compute_optimal.search.methods: '{m}' is not one of {', '.join(METHODS)}")
    if any(w < 1 for w in co.search.widths):
        raise ConfigError(f"compute_optimal.search.widths: every width must be >= 1, got {co.search.widths}")
    if co.budgets and any(not 1 <= b <= keys.samples for b in co.budgets):
        raise ConfigError(f"compute_optimal.budgets: every N must be in 1..samples={keys.samples}, got {co.budgets}")
    return co


def budgets(co: ComputeOptimalConfig, samples: int) -> list[int]:
    if co.budgets:
        return sorted(set(int(b) for b in co.budgets))
    grid, n = [], 1
    while n <= samples:
        grid.append(n)
        n *= 2
    return sorted(set(grid + [samples]))
