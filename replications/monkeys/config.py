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
class LadderConfig:
    """Coverage vs k per level of the difficulty ladder, with a second model (the warm start by default)."""

    enabled: bool = MISSING
    model: str = MISSING
    dataset: str = MISSING
    prompt: str = MISSING
    levels: Optional[List[int]] = MISSING
    problems_per_level: int = MISSING
    samples: int = MISSING
    max_new_tokens: int = MISSING


@dataclass
class MonkeysConfig(PaperAnalysisConfig):
    ks: Optional[List[int]] = MISSING
    fit: FitConfig = MISSING
    selection: SelectionConfig = MISSING
    reward_model: Optional[Any] = MISSING
    greedy_baseline: GreedyBaselineConfig = MISSING
    claims: ClaimsConfig = MISSING
    ladder: LadderConfig = MISSING


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
    check_ladder(paper.ladder)
    return paper


def check_ladder(ladder: LadderConfig) -> None:
    """Ranges and names of `monkeys.ladder`, checked before any model is loaded or sample drawn."""
    if not ladder.enabled:
        return
    from harness.data.ladder import LEVEL_NUMBERS
    from harness.data.problems import DATASET_CONF_DIR, dataset_config
    from harness.data.prompts import load_prompt
    from harness.training.warm_start import MODEL_CONF_DIR

    for key in ("problems_per_level", "samples"):
        if getattr(ladder, key) < 1:
            raise ConfigError(f"config key 'monkeys.ladder.{key}': must be >= 1, got {getattr(ladder, key)}")
    if not (MODEL_CONF_DIR / f"{ladder.model}.yaml").is_file():
        raise ConfigError(f"config key 'monkeys.ladder.model': no config {MODEL_CONF_DIR / ladder.model}.yaml")
    if not (DATASET_CONF_DIR / f"{ladder.dataset}.yaml").is_file():
        raise ConfigError(f"config key 'monkeys.ladder.dataset': no config {DATASET_CONF_DIR / ladder.dataset}.yaml")
    if dataset_config(ladder.dataset).kind != "ladder":
        raise ConfigError(f"config key 'monkeys.ladder.dataset': '{ladder.dataset}' is not a ladder dataset (kind: ladder)")
    unknown = sorted(set(ladder.levels or ()) - set(LEVEL_NUMBERS))
    if unknown:
        raise ConfigError(f"config key 'monkeys.ladder.levels': {unknown[0]} is not a ladder level "
                          f"({', '.join(map(str, LEVEL_NUMBERS))})")
    try:
        load_prompt(ladder.prompt)
    except ConfigError as err:
        raise ConfigError(f"config key 'monkeys.ladder.prompt': {err}") from None
