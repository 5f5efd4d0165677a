"""The Monkeys config's own keys, typed: validated at start-up so a bad value names its key."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import DictConfig

from harness.config import BootstrapConfig, PublishedConfig, SubsetSamplingConfig, check_run_keys, validate


@dataclass
class FitConfig:
    num_points: int = 40
    min_k: int = 1


@dataclass
class SelectionConfig(SubsetSamplingConfig):
    methods: List[str] = field(default_factory=lambda: ["majority_vote"])


@dataclass
class GreedyBaselineConfig:
    enabled: bool = True
    task: str = "gsm8k_cot"
    prompt: str = "gsm8k_cot_8shot"
    limit: Optional[int] = None
    max_new_tokens: int = 256


@dataclass
class MonkeysConfig:
    ks: Optional[List[int]] = None
    fit: FitConfig = field(default_factory=FitConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    reward_model: Optional[Any] = None
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    greedy_baseline: GreedyBaselineConfig = field(default_factory=GreedyBaselineConfig)
    published: PublishedConfig = field(default_factory=PublishedConfig)


def check_config(cfg: DictConfig) -> None:
    validate(cfg, MonkeysConfig, "monkeys")
    check_run_keys(cfg)
