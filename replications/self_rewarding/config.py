"""Typed schema of the `self_rewarding` config group (conf/self_rewarding/*.yaml)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from harness.config import SamplingConfig, require_at_least, require_choice, validate
from harness.errors import ConfigError
from harness.training.config import TrainingConfig, training_config

JUDGES = ("model", "oracle")
M1_INITS = ("sft_baseline", "base")
# eft.balance -> the EFT record field whose values are drawn in equal numbers (none: no balancing)
EFT_BALANCE_FIELDS = {"verdict": "target_verdict", "score": "target_score", "none": None}


# conf/self_rewarding/default.yaml is the one source of defaults: these schemas give types and no values, so a
# key missing from the YAML fails with its name instead of silently taking another default.
@dataclass
class IftSettings:
    problems: int = MISSING  # reference solutions of train_dataset problems in M1's (and the baseline's) SFT data


@dataclass
class EftSettings:
    problems: int = MISSING  # EFT problems (train_dataset, disjoint from every AIFT prompt)
    samples_per_problem: int = MISSING  # SFT-baseline samples per EFT problem, graded, rendered as judge prompts
    balance: str = MISSING  # verdict | score | none: draw right and wrong (or every target score) equally often
    max_examples: Optional[int] = MISSING  # at most this many EFT examples in M1's data (null: all)


@dataclass
class EvalSettings:
    per_level: Optional[int] = MISSING  # the first N test problems of each level (null: all)
    greedy_max_new_tokens: int = MISSING
    samples: int = MISSING  # sampled pass@1 (candidate decoding); 0: greedy only
    judge_candidates: int = MISSING  # SFT-baseline test samples per problem judged by each model (RM metrics)
    judge_sft_baseline: bool = MISSING  # also measure the SFT baseline (no EFT) as a judge


@dataclass
class SelfRewardingSettings:
    name: str = MISSING
    judge: str = MISSING  # model | oracle
    iterations: int = MISSING
    candidates: int = MISSING  # N
    judge_repeats: int = MISSING
    min_scored_repeats: int = MISSING
    judge_sampling: SamplingConfig = MISSING
    prompts_per_iteration: int = MISSING
    m1_init: str = MISSING  # sft_baseline | base
    ift: IftSettings = MISSING
    eft: EftSettings = MISSING
    m1_training: Any = MISSING  # overrides of `training` (validated merged, as training_for() returns them)
    dpo_training: Any = MISSING
    eval: EvalSettings = MISSING
    seed: int = MISSING
    fail_at: Optional[str] = MISSING


def self_rewarding_settings(cfg: DictConfig) -> SelfRewardingSettings:
    s = validate(cfg, SelfRewardingSettings, "self_rewarding")
    require_choice("self_rewarding.judge", s.judge, JUDGES)
    require_choice("self_rewarding.m1_init", s.m1_init, M1_INITS)
    require_choice("self_rewarding.eft.balance", s.eft.balance, tuple(EFT_BALANCE_FIELDS))
    for key, low in (("iterations", 1), ("candidates", 2), ("judge_repeats", 1), ("prompts_per_iteration", 1),
                     ("eft.problems", 1), ("eft.samples_per_problem", 1), ("ift.problems", 0),
                     ("eval.samples", 0), ("eval.judge_candidates", 2)):
        require_at_least(f"self_rewarding.{key}", OmegaConf.select(OmegaConf.structured(s), key), low)
    if not 1 <= s.min_scored_repeats <= s.judge_repeats:
        raise ConfigError(f"config key 'self_rewarding.min_scored_repeats': must be in 1..judge_repeats={s.judge_repeats}, "
                          f"got {s.min_scored_repeats}")
    if s.eft.max_examples is not None:
        require_at_least("self_rewarding.eft.max_examples", s.eft.max_examples, 1)
    if s.eval.per_level is not None:
        require_at_least("self_rewarding.eval.per_level", s.eval.per_level, 1)
    s.judge_sampling.check("self_rewarding.judge_sampling")
    for key in ("m1_training", "dpo_training"):
        training_for(cfg, key)
    return s


def training_for(cfg: DictConfig, key: str) -> TrainingConfig:
    """`training` with the overrides in `self_rewarding.<key>`; a bad override fails naming its key."""
    overrides = OmegaConf.select(cfg, f"self_rewarding.{key}")
    if not isinstance(overrides, DictConfig):
        raise ConfigError(f"config key 'self_rewarding.{key}': must be a mapping of `training` overrides")
    try:
        base = OmegaConf.to_container(cfg.training, resolve=True)  # Hydra's struct flag would refuse trl.beta
        return training_config(OmegaConf.merge(base, OmegaConf.to_container(overrides, resolve=True)))
    except ConfigError as err:
        raise ConfigError(f"self_rewarding.{key}: {err}") from None
