"""The Monkeys config's own keys, typed: validated at start-up so a bad value names its key.

No field has a default: conf/monkeys/default.yaml is the one place the defaults live (and are documented).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

from omegaconf import MISSING, DictConfig

from harness.config import PaperAnalysisConfig, SubsetSamplingConfig, check_run_keys, validate
from harness.errors import ConfigError
from harness.selection.metrics import canonical_method


@dataclass
class FitConfig:
    num_points: int = MISSING
    min_k: int = MISSING


@dataclass
class SelectionConfig(SubsetSamplingConfig):
    methods: List[str] = MISSING


@dataclass
class GreedyBaselineConfig:
    enabled: bool = MISSING
    task: str = MISSING
    prompt: str = MISSING
    limit: Optional[int] = MISSING
    max_new_tokens: int = MISSING


@dataclass
class ClaimsConfig:
    fit_r2_holds: float = MISSING
    fit_r2_fails: float = MISSING
    saturation_window: int = MISSING


@dataclass
class MonkeysConfig(PaperAnalysisConfig):
    ks: Optional[List[int]] = MISSING
    fit: FitConfig = MISSING
    selection: SelectionConfig = MISSING
    reward_model: Optional[Any] = MISSING
    greedy_baseline: GreedyBaselineConfig = MISSING
    claims: ClaimsConfig = MISSING


def check_config(cfg: DictConfig) -> MonkeysConfig:
    paper = validate(cfg, MonkeysConfig, "monkeys")
    check_run_keys(cfg)
    for method in paper.selection.methods:
        try:
            canonical_method(method)
        except ValueError as err:
            raise ConfigError(f"config key 'monkeys.selection.methods': {err}") from None
    c = paper.claims
    if not 0 <= c.fit_r2_fails <= c.fit_r2_holds <= 1:
        raise ConfigError(f"config key 'monkeys.claims': need 0 <= fit_r2_fails <= fit_r2_holds <= 1, "
                          f"got {c.fit_r2_fails} and {c.fit_r2_holds}")
    if c.saturation_window < 2:
        raise ConfigError(f"config key 'monkeys.claims.saturation_window': must be >= 2, got {c.saturation_window}")
    return paper
