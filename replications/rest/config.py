"""Typed schema of the `rest` config group (conf/rest/*.yaml): the Grow/Improve loop and its evaluation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from harness.config import SamplingConfig, require_at_least, require_choice, validate
from harness.errors import ConfigError
from harness.training import training_config

ALGORITHMS = ("rest_em", "rest")
REWARDS = ("correct", "partial")


# conf/rest/default.yaml is the one source of defaults: these schemas give types (validated on load) and
# no values, so a key missing from the YAML fails with its name instead of silently taking another default.
@dataclass
class EvalSettings:
    greedy: bool = MISSING  # greedy pass@1, the paper's headline metric
    greedy_max_new_tokens: int = MISSING
    samples: int = MISSING  # samples per test problem for pass@k / maj@k (0: greedy only)
    ks: List[int] = MISSING
    sampling: SamplingConfig = MISSING
    train_accuracy: bool = MISSING  # also greedy accuracy on the Grow problems (the paper's train-test gap, Fig. 4)


@dataclass
class RestSettings:
    name: str = MISSING
    algorithm: str = MISSING  # rest_em: every Improve fine-tunes the base model | rest: continue from the last
    iterations: int = MISSING  # Grow steps, each followed by its Improve step(s) and an evaluation
    samples_per_problem: int = MISSING  # N solutions sampled per training problem in each Grow step
    reward: str = MISSING  # correct: 1/0 | partial: 1 correct, partial_credit for a wrong extracted answer, 0 none
    partial_credit: float = MISSING
    thresholds: List[float] = MISSING  # one Improve step per entry; keep reward > t
    max_per_problem: Optional[int] = MISSING  # cap on kept solutions per problem (null: no cap)
    dedupe: bool = MISSING  # drop a kept solution whose text equals an earlier kept one of the same problem
    step_check: bool = MISSING  # also drop a correct-answer sample with a wrong "a op b = c" line (harness.reward.judge)
    reference_fraction: float = MISSING  # share of the training set made of reference solutions
    seed: int = MISSING  # for the reference draw
    control: bool = MISSING  # also fine-tune iteration 1's init on the reference solutions of the problems whose
    # samples were kept, one per kept sample (equal steps): separates ReST's self-generated data from training more
    training: Any = MISSING  # null, or overrides of the `training` group for the Improve steps (e.g. a lower lr)
    eval: EvalSettings = MISSING
    fail_at: Optional[str] = MISSING  # testing only: raise when this stage starts (simulates a killed run)


def rest_settings(cfg: DictConfig) -> RestSettings:
    s = validate(cfg, RestSettings, "rest")
    require_choice("rest.algorithm", s.algorithm, ALGORITHMS)
    require_choice("rest.reward", s.reward, REWARDS)
    require_at_least("rest.iterations", s.iterations, 1)
    require_at_least("rest.samples_per_problem", s.samples_per_problem, 1)
    if not s.thresholds:
        raise ConfigError("rest.thresholds: give at least one threshold (one Improve step each)")
    if any(b < a for a, b in zip(s.thresholds, s.thresholds[1:])):
        raise ConfigError(f"rest.thresholds: must not decrease (ReST raises the threshold each Improve step), got {s.thresholds}")
    if s.algorithm == "rest_em" and len(s.thresholds) != 1:
        raise ConfigError("rest.thresholds: ReST-EM has one Improve step per iteration; give one threshold")
    if not 0.0 <= s.reference_fraction < 1.0:
        raise ConfigError(f"rest.reference_fraction: must be in [0, 1), got {s.reference_fraction}")
    require_at_least("rest.max_per_problem", s.max_per_problem, 1, allow_none=True)
    if s.eval.samples and any(k > s.eval.samples or k < 1 for k in s.eval.ks):
        raise ConfigError(f"rest.eval.ks: every k must be in 1..rest.eval.samples={s.eval.samples}, got {s.eval.ks}")
    if s.training is not None:
        if not isinstance(s.training, (dict, DictConfig)):
            raise ConfigError(f"rest.training: give null or a mapping of training keys, got {s.training!r}")
        improve_training(cfg)  # validated now, not after the first Grow step
    return s


def improve_training(cfg: DictConfig) -> DictConfig:
    """The training config of the Improve steps: the `training` group with `rest.training`'s overrides."""
    overrides = cfg.rest.get("training")
    if not overrides:
        return cfg.training
    unknown = sorted(set(overrides) - set(cfg.training))
    if unknown:
        raise ConfigError(f"rest.training.{unknown[0]}: not a key of the training config '{cfg.training.get('name')}'")
    merged = OmegaConf.merge(cfg.training, overrides)
    training_config(merged)
    return merged
