"""Typed schema of the `easy_to_hard` config group: conf/easy_to_hard/default.yaml is the one source of defaults
(no field here has a value), so a key missing from the YAML fails with its name."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from harness.config import PaperAnalysisConfig, SubsetSamplingConfig, check_run_keys, validate
from harness.errors import ConfigError
from harness.reward.models import AGGREGATIONS, LEVELS, reward_model_config
from harness.selection.difficulty import BY, DifficultySpec, difficulty_spec

SGR_METHODS = ("weighted_vote", "best_of_k")
RM_SOURCES = ("train", "load")
RL_REWARDS = ("easy", "all")


@dataclass
class TestSettings:
    per_level: Optional[int] = MISSING


@dataclass
class RewardModelSources:
    source: str = MISSING
    easy: Optional[Any] = MISSING
    all: Optional[Any] = MISSING


@dataclass
class RewardTrainingSettings:
    per_level: Optional[int] = MISSING
    samples: int = MISSING
    levels: List[str] = MISSING
    save: bool = MISSING


@dataclass
class AggregationSettings:
    weighted_vote: str = MISSING
    best_of_k: str = MISSING


@dataclass
class SgrSettings:
    k: Optional[int] = MISSING
    method: str = MISSING
    epsilon: float = MISSING


@dataclass
class PolicySgrSettings:
    enabled: bool = MISSING
    per_level: Optional[int] = MISSING
    max_new_tokens: int = MISSING


@dataclass
class RLSettings:
    enabled: bool = MISSING
    prompts: int = MISSING
    reward: str = MISSING
    eval_samples: int = MISSING
    grpo: Any = MISSING  # harness.training.rl.RLConfig keys, validated by rl_settings()


@dataclass
class EasyToHardConfig(PaperAnalysisConfig):
    name: str = MISSING
    difficulty: DifficultySpec = MISSING
    hardness_groups: List[str] = MISSING
    test: TestSettings = MISSING
    reward_models: RewardModelSources = MISSING
    reward_training: RewardTrainingSettings = MISSING
    budgets: Optional[List[int]] = MISSING
    aggregation: AggregationSettings = MISSING
    sgr: SgrSettings = MISSING
    policy_sgr: PolicySgrSettings = MISSING
    rl: RLSettings = MISSING
    selection: SubsetSamplingConfig = MISSING


def _bad(key: str, why: str) -> ConfigError:
    return ConfigError(f"config key 'easy_to_hard.{key}': {why}")


def check_config(cfg: DictConfig) -> EasyToHardConfig:
    """Validate the `easy_to_hard` node and what it depends on; every error is one line naming its key."""
    s = validate(cfg, EasyToHardConfig, "easy_to_hard")
    keys = check_run_keys(cfg)
    s.difficulty = difficulty_spec(s.difficulty, "easy_to_hard.difficulty")
    for group in s.hardness_groups:
        if group not in BY:
            raise _bad("hardness_groups", f"'{group}' is not one of {', '.join(BY)}")
    for key, value in (("test.per_level", s.test.per_level), ("reward_training.per_level", s.reward_training.per_level)):
        if value is not None and value < 1:
            raise _bad(key, f"must be >= 1 or null, got {value}")
    if s.reward_models.source not in RM_SOURCES:
        raise _bad("reward_models.source", f"'{s.reward_models.source}' is not one of {', '.join(RM_SOURCES)}")
    if s.reward_models.source == "load" and s.reward_models.easy is None:
        raise _bad("reward_models.easy", "source load needs the easy-trained reward model's config")
    if s.reward_models.source == "train":
        if s.reward_training.samples < 1:
            raise _bad("reward_training.samples", f"must be >= 1, got {s.reward_training.samples}")
        if not s.reward_training.levels:
            raise _bad("reward_training.levels", "needs at least one of prm, orm")
        for level in s.reward_training.levels:
            if level not in LEVELS:
                raise _bad("reward_training.levels", f"'{level}' is not one of {', '.join(LEVELS)}")
        rm = reward_model_config(reward_model_node(cfg))
        if rm.kind != "embedded":
            raise ConfigError(f"config key 'reward_model.kind': reward_models.source train fits the embedded head, "
                              f"got '{rm.kind}' (use easy_to_hard.reward_models.source=load for a hub model)")
    for key in ("weighted_vote", "best_of_k"):
        how = getattr(s.aggregation, key)
        if how not in AGGREGATIONS:
            raise _bad(f"aggregation.{key}", f"'{how}' is not one of {', '.join(AGGREGATIONS)}")
    if s.budgets and any(not 1 <= b <= keys.samples for b in s.budgets):
        raise _bad("budgets", f"every N must be in 1..samples={keys.samples}, got {s.budgets}")
    if s.sgr.k is not None and not 1 <= s.sgr.k <= keys.samples:
        raise _bad("sgr.k", f"must be in 1..samples={keys.samples} or null, got {s.sgr.k}")
    if s.sgr.method not in SGR_METHODS:
        raise _bad("sgr.method", f"'{s.sgr.method}' is not one of {', '.join(SGR_METHODS)}")
    if s.sgr.epsilon < 0:
        raise _bad("sgr.epsilon", f"must be >= 0, got {s.sgr.epsilon}")
    if s.policy_sgr.enabled:
        if s.policy_sgr.per_level is not None and s.policy_sgr.per_level < 1:
            raise _bad("policy_sgr.per_level", f"must be >= 1 or null, got {s.policy_sgr.per_level}")
        if OmegaConf.select(cfg, "model.warm_start") is None:
            raise _bad("policy_sgr.enabled", f"model '{cfg.model.name}' has no warm_start node to retrain on all levels")
    if s.rl.enabled:
        if s.rl.reward not in RL_REWARDS:
            raise _bad("rl.reward", f"'{s.rl.reward}' is not one of {', '.join(RL_REWARDS)}")
        if s.rl.prompts < 1 or s.rl.eval_samples < 1:
            raise _bad("rl", f"prompts and eval_samples must be >= 1, got {s.rl.prompts}, {s.rl.eval_samples}")
        rl_settings(cfg)
    check_warm_start_is_easy(cfg, s.difficulty)
    return s


def reward_model_node(cfg: DictConfig) -> dict:
    """`reward_model`, resolved against the whole config (its backbone is `${model.name}`)."""
    return OmegaConf.to_container(cfg.reward_model, resolve=True)


def rl_settings(cfg: DictConfig):
    """The GRPO config: `easy_to_hard.rl.grpo` with its `training` merged over the run's `training`."""
    from harness.training.rl import rl_config

    node = OmegaConf.to_container(OmegaConf.select(cfg, "easy_to_hard.rl.grpo"), resolve=True) or {}
    base = OmegaConf.to_container(cfg.training, resolve=True) if "training" in cfg else {}
    node["training"] = OmegaConf.to_container(OmegaConf.merge(base, node.get("training") or {}))
    return rl_config(node, "easy_to_hard.rl.grpo")


def check_warm_start_is_easy(cfg: DictConfig, spec: DifficultySpec) -> None:
    """The policy's SFT must have seen easy levels only: a warm start on any hard level breaks the premise."""
    node = OmegaConf.select(cfg, "model.warm_start")
    if node is None or spec.by != "level":
        return
    from harness.training.warm_start import warm_start_config

    levels = warm_start_config(node).data.levels
    if levels is None or not set(levels) <= set(spec.easy):
        raise ConfigError(f"config key 'model.warm_start': the policy's SFT trains on levels "
                          f"{'all' if levels is None else levels}, not only easy_to_hard.difficulty.easy={spec.easy}")
