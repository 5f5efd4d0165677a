"""Typed schema of the `r3` config group (conf/r3/*.yaml): the arms, their budget, the reward and GRPO."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from harness.config import require_at_least, require_choice, validate
from harness.errors import ConfigError
from harness.training.rl import RLConfig, rl_config
from replications.r3.curriculum import SCHEDULES
from replications.r3.reward import RewardValues

R3_ARMS = ("reverse", "mixed")  # the schedules that are R3; `scratch` is outcome-only RL


# conf/r3/default.yaml is the one source of defaults: these schemas give types and no values, so a key
# missing from the YAML fails with its name instead of silently taking another default.
@dataclass
class RewardSettings:
    correct: float = MISSING  # the stated answer is right
    wrong: float = MISSING  # an answer is stated but wrong (the official code's partial epsilon)
    none: float = MISSING  # no answer stated, or cut off at the token limit


@dataclass
class EvalSettings:
    greedy_max_new_tokens: int = MISSING  # greedy pass@1 on the test set, the paper's metric


@dataclass
class R3Settings:
    name: str = MISSING
    arms: List[str] = MISSING  # schedules trained from the same SFT policy: scratch (outcome-only RL), reverse, mixed
    steps: int = MISSING  # optimizer steps per arm (each arm sees steps * prompts_per_step * G samples)
    stages: Optional[int] = MISSING  # cap on K, the number of stages (null: the longest demonstration's steps)
    seed: int = MISSING  # order of the training problems and the mixed schedule's stage draws
    reward: RewardSettings = MISSING
    rl: Any = MISSING  # harness.training.rl.RLConfig fields (its `training` is the run's `training` group)
    eval: EvalSettings = MISSING
    fail_at: Optional[str] = MISSING  # testing only: raise when this stage starts (simulates a killed run)


def r3_settings(cfg: DictConfig) -> R3Settings:
    s = validate(cfg, R3Settings, "r3")
    if not s.arms:
        raise ConfigError("config key 'r3.arms': give at least one schedule")
    for arm in s.arms:
        require_choice("r3.arms", arm, SCHEDULES)
    if len(set(s.arms)) != len(s.arms):
        raise ConfigError(f"config key 'r3.arms': a schedule is listed twice: {s.arms}")
    require_at_least("r3.steps", s.steps, 1)
    require_at_least("r3.stages", s.stages, 1, allow_none=True)
    require_at_least("r3.eval.greedy_max_new_tokens", s.eval.greedy_max_new_tokens, 1)
    reward_values(s)
    rl_settings(cfg, s)
    return s


def reward_values(s: R3Settings) -> RewardValues:
    return RewardValues(s.reward.correct, s.reward.wrong, s.reward.none).check()


def rl_settings(cfg: DictConfig, s: R3Settings) -> RLConfig:
    """r3.rl with the run's `training` group and (harness rollouts) its `backend` group."""
    node = OmegaConf.to_container(s.rl, resolve=True) if OmegaConf.is_config(s.rl) else dict(s.rl or {})
    if "training" in node or "backend" in node:
        raise ConfigError("config key 'r3.rl': set training and backend in their own config groups, not here")
    node["training"] = OmegaConf.to_container(cfg.training, resolve=True)
    node["backend"] = OmegaConf.to_container(cfg.backend, resolve=True)
    return rl_config(node, key="r3.rl")
