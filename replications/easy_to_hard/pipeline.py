"""The steps of Easy-to-Hard: difficulty splits, the reward models trained on easy vs all levels, scoring, RL."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import pandas as pd
from omegaconf import DictConfig

from harness.data.problems import Problem, ProblemSet, load_problems
from harness.data.prompts import PromptSpec
from harness.errors import ConfigError
from harness.pipeline.experiment import Experiment
from harness.reporting.paths import portable
from harness.reward.models import RewardModel, TruncatedBackbone, load_reward_model, reward_model_config
from harness.reward.training import (
    exact_step_labels,
    labelled_solutions,
    outcome_metrics,
    outcome_step_labels,
    problem_ids_sha256,
    train_on_problems,
    training_config,
)
from harness.selection.difficulty import DifficultySplit, check_operations_covered, difficulty_of, split_by_difficulty
from replications.easy_to_hard.config import EasyToHardConfig, reward_model_node

SUBSETS = ("easy", "all")  # reward models trained on easy levels only, and on every level (the upper bound)


def subset_of(problem_set: ProblemSet, problems: list[Problem], label: str, extra: Mapping[str, Any]) -> ProblemSet:
    """A ProblemSet of some of `problem_set`'s problems (same file and sha256: the store entry is shared)."""
    selection = {**problem_set.selection, label: dict(extra)}
    return dataclasses.replace(problem_set, problems=problems, selection=selection)


def hard_test_set(exp: Experiment, s: EasyToHardConfig) -> tuple[ProblemSet, DifficultySplit]:
    """The hard test problems (first `test.per_level` of each hard value), and the test set's full split."""
    split = split_by_difficulty(exp.problems.problems, s.difficulty, where=f"dataset '{exp.problems.name}'",
                                key="easy_to_hard.difficulty")
    chosen = hard_set(exp, split, s.test.per_level, "reranking")
    exp.run.record("hard_test", chosen.provenance())
    return chosen, split


def hard_set(exp: Experiment, split: DifficultySplit, per_value: int | None, label: str) -> ProblemSet:
    """The first `per_value` hard test problems of each difficulty value, as a ProblemSet of the test file."""
    chosen = first_per_value(split.hard, per_value, split.spec.by)
    return subset_of(exp.problems, chosen, "easy_to_hard", {"side": "hard", "per_value": per_value, "for": label})


def first_per_value(problems: Sequence[Problem], per_value: int | None, by: str) -> list[Problem]:
    """The first `per_value` problems of each difficulty value (all of them when None), in input order."""
    if per_value is None:
        return list(problems)
    taken: dict[Any, int] = {}
    out = []
    for p in problems:
        v = difficulty_of(p, by)
        if taken.get(v, 0) < per_value:
            taken[v] = taken.get(v, 0) + 1
            out.append(p)
    return out


# ---- reward models ---------------------------------------------------------------------------------------


@dataclass
class RewardModels:
    """The reward models of a run, by subset (easy | all) and level (prm | orm); `primary` is the first level."""

    models: dict[str, dict[str, RewardModel]]
    levels: list[str]
    info: dict = field(default_factory=dict)  # how each was made: provenance, label stats, where it was saved

    @property
    def primary(self) -> str:
        return self.levels[0]

    def names(self) -> list[tuple[str, str]]:
        return [(subset, level) for subset in SUBSETS for level in self.levels if level in self.models.get(subset, {})]


def _same_weights(rm_cfg, exp: Experiment) -> bool:
    backbone = rm_cfg.backbone
    name = backbone if isinstance(backbone, str) else (backbone or {}).get("name")
    return name == exp.model.name


def reward_training_set(cfg: DictConfig, s: EasyToHardConfig, test_ids: set[str]) -> tuple[ProblemSet, DifficultySplit]:
    """Train problems whose policy samples label the reward models: the first `per_level` of every easy and
    hard value. A train problem that is also a test problem is an error (the RM would have seen it)."""
    train = load_problems(cfg.train_dataset, cfg.data.root)
    split = split_by_difficulty(train.problems, s.difficulty, where=f"train_dataset '{train.name}'",
                                key="easy_to_hard.difficulty")
    check_operations_covered(split, "easy_to_hard.difficulty.easy")
    per = s.reward_training.per_level
    chosen = first_per_value(split.easy, per, s.difficulty.by) + first_per_value(split.hard, per, s.difficulty.by)
    leaked = sorted({p.id for p in chosen} & test_ids)
    if leaked:
        raise ConfigError(f"train_dataset: problem '{leaked[0]}' is also a test problem")
    return subset_of(train, chosen, "easy_to_hard", {"per_level": per}), split


def train_reward_models(exp: Experiment, spec: PromptSpec, cfg: DictConfig, s: EasyToHardConfig,
                        test_ids: set[str]) -> RewardModels:
    """Sample the policy on easy and hard train problems, label the samples, and fit each reward model level
    twice: on the easy problems' samples only, and on all of them (not cross-fitted: used on test problems)."""
    rm_base = reward_model_config(reward_model_node(cfg))
    if not _same_weights(rm_base, exp):
        raise ConfigError(f"config key 'reward_model.backbone': '{rm_base.backbone}' is not the policy "
                          f"'{exp.model.name}': the embedded head reads the policy's own layers")
    tcfg = training_config(rm_base.training)
    train_set, split = reward_training_set(cfg, s, test_ids)
    graded = exp.sample_and_grade(spec, n=s.reward_training.samples, problem_set=train_set, desc="RM training pool")
    by_id = {p.id: p for p in train_set.problems}
    sols = labelled_solutions(graded, {pid: p.question for pid, p in by_id.items()}, rm_base.step_separator)
    method = tcfg.step_labels.method
    if method == "exact":
        label_stats = exact_step_labels(sols, {pid: p.metadata.get("steps") for pid, p in by_id.items()
                                               if p.metadata.get("steps")})
    elif method == "outcome":
        outcome_step_labels(sols)
        label_stats = {}
    else:  # Math-Shepherd rollouts live in replications/compute_optimal/reward.py (a paper: not imported here)
        raise ConfigError("config key 'reward_model.training.step_labels.method': math_shepherd is not wired for "
                          "easy_to_hard yet; use exact (ladder) or outcome, or easy_to_hard.reward_models.source=load")
    label_stats["method"] = method
    easy_ids = {p.id for p in train_set.problems if p.id in split.easy_ids}
    subsets = {"easy": sorted(easy_ids), "all": sorted(by_id)}
    backbone = TruncatedBackbone(exp.model, rm_base.layers)
    cache: dict = {}  # hidden states, shared by every head on this backbone
    provenance = {"policy": exp.model.identity, "prompt": spec.name, "store_entry": portable(graded.attrs["entry"].dir),
                  "samples_per_problem": s.reward_training.samples, "grader": cfg.grader.method,
                  "train_data": train_set.provenance(), "difficulty": split.describe(), "step_labels": label_stats}
    models: dict[str, dict[str, RewardModel]] = {subset: {} for subset in SUBSETS}
    info: dict = {"labels": label_stats, "pool": {"problems": len(by_id), "samples": len(graded),
                                                  "correct": int(graded["correct"].sum())}}
    for level in s.reward_training.levels:
        rm_cfg = dataclasses.replace(rm_base, level=level, name=f"{rm_base.name.rsplit('_', 1)[0]}_{level}")
        for subset, ids in subsets.items():
            trained = train_on_problems(rm_cfg, backbone, sols, ids, tcfg, provenance, subset, cache)
            models[subset][level] = trained.model
            entry = {"problems": len(trained.problem_ids), "ids_sha256": problem_ids_sha256(trained.problem_ids),
                     "fit_metrics_in_sample": trained.fit_metrics, "labels": trained.label_stats}
            if s.reward_training.save:
                entry["saved_to"] = portable(trained.model.save(exp.run.path(f"reward_models/{subset}_{level}")))
            info[f"{subset}/{level}"] = entry
    return RewardModels(models, list(s.reward_training.levels), info)


def load_reward_models(exp: Experiment, s: EasyToHardConfig) -> RewardModels:
    """Released reward models (paper scale): the easy-trained one, and the all-levels one when configured."""
    models: dict[str, dict[str, RewardModel]] = {subset: {} for subset in SUBSETS}
    info: dict = {}
    level = None
    for subset in SUBSETS:
        node = getattr(s.reward_models, subset)
        if node is None:
            continue
        rm = load_reward_model(node)
        level = level or rm.level
        models[subset][rm.level] = rm
        info[f"{subset}/{rm.level}"] = {"how": "loaded", "name": rm.name, "identity": rm.identity}
    return RewardModels(models, [level], info)


def score_pool(rms: RewardModels, graded: pd.DataFrame, questions: Mapping[str, str], s: EasyToHardConfig
               ) -> pd.DataFrame:
    """`graded` plus, per reward model, its solution score under each method's aggregation:
    columns `<subset>_<level>_weighted_vote` and `<subset>_<level>_best_of_k`."""
    out = graded.sort_values(["problem_id", "index"]).reset_index(drop=True)
    qs = [questions[pid] for pid in out["problem_id"]]
    texts = list(out["text"])
    for subset, level in rms.names():
        rm = rms.models[subset][level]
        scored = rm.score_solutions(qs, texts)
        for method in ("weighted_vote", "best_of_k"):
            how = getattr(s.aggregation, method)
            out[f"{subset}_{level}_{method}"] = [sc.score(how) for sc in scored]
    return out


def evaluator_metrics(rms: RewardModels, scored: pd.DataFrame) -> dict:
    """How well each reward model's best-of-N score separates right from wrong answers on the hard test pool."""
    return {f"{subset}/{level}": outcome_metrics(scored[f"{subset}_{level}_best_of_k"], scored["correct"], scored["problem_id"])
            for subset, level in rms.names()}


# ---- RL against the easy-trained reward model -------------------------------------------------------------


def rl_records(train_set: ProblemSet, prompts: Mapping[str, str], count: int) -> list[dict]:
    """`count` training questions (no answers: the reward model is the only supervision), levels interleaved
    so every optimizer step sees easy and hard ones."""
    by_level: dict[Any, list[Problem]] = {}
    for p in train_set.problems:
        by_level.setdefault(p.metadata.get("level"), []).append(p)
    order: list[Problem] = []
    queues = [list(v) for _, v in sorted(by_level.items(), key=lambda kv: str(kv[0]))]
    while len(order) < count and any(queues):
        for q in queues:
            if q and len(order) < count:
                order.append(q.pop(0))
    return [{"prompt": prompts[p.id], "problem_id": p.id, "question": p.question,
             "level": p.metadata.get("level")} for p in order]


def frozen_reward_model(cfg: DictConfig, rm: RewardModel) -> RewardModel:
    """The reward model on its own copy of the backbone: RL trains the policy in place, and a reward model
    sharing its layers would drift with it."""
    from harness.models.loading import load_model
    from harness.reward.models import EmbeddedHeadRM

    if not isinstance(rm, EmbeddedHeadRM):
        return rm
    fresh = load_model(cfg.model)
    return EmbeddedHeadRM(rm.config, TruncatedBackbone(fresh, rm.backbone.layers), rm.head, rm.provenance)


def rm_reward_fn(rm: RewardModel, aggregation: str):
    """GRPO's reward: the reward model's score of the completion; a cut-off completion gets 0 (no answer)."""
    def reward(completions: list[str], rows: list[dict], finish_reasons: list) -> list[float]:
        scores = rm.score([r["question"] for r in rows], completions, aggregation)
        return [0.0 if reason == "length" else float(sc) for sc, reason in zip(scores, finish_reasons)]

    return reward


def grpo_trainer(rl, reward_fn, reward_identity: str):
    """The trainer PolicyLoop.train calls: GRPO (harness.training.rl) with the reward model as the reward.

    Its name carries the reward model's identity: PolicyLoop keys a reusable checkpoint on the trainer's name,
    and a policy trained against another reward model must not be reused for this one."""
    from harness.training.config import training_config as policy_training_config
    from harness.training.rl import train_grpo

    def grpo(model, tokenizer, data, training_cfg, scratch_dir):
        cfg = dataclasses.replace(rl, training=policy_training_config(training_cfg))
        return train_grpo(model, tokenizer, data.records, reward_fn, cfg, scratch_dir)

    grpo.__name__ = f"grpo_reward_model:{reward_identity}"
    return grpo


def pass_at_1(graded: pd.DataFrame) -> pd.Series:
    """Sampled pass@1 per problem (mean correctness of its samples), indexed by problem id."""
    return graded.groupby("problem_id")["correct"].mean()


__all__ = ["RewardModels", "hard_test_set", "train_reward_models", "load_reward_models",
           "score_pool", "evaluator_metrics", "rl_records", "frozen_reward_model", "rm_reward_fn", "grpo_trainer",
           "pass_at_1", "reward_training_set", "first_per_value",
           "policy_variants", "greedy_by_policy"]


# ---- Hase et al.'s own setting: the policy trained on easy vs all levels vs not at all ----------------------


class _PrefixedRun:
    """The run, with what a second experiment records kept apart from the main policy's records."""

    def __init__(self, run: Any, prefix: str):
        self._run, self._prefix = run, prefix

    def record(self, key: str, value: Any) -> None:
        self._run.record(f"{self._prefix}:{key}", value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._run, name)


def policy_variants(model_cfg: DictConfig, s: EasyToHardConfig) -> dict[str, DictConfig]:
    """easy: the configured policy (SFT on easy levels); all: the same warm start on easy and hard levels (the
    upper bound); unsupervised: the model under the warm start, not fine-tuned."""
    from omegaconf import OmegaConf

    from harness.training.warm_start import base_model_config, warm_start_config

    node = model_cfg.get("warm_start")
    if node is None:
        raise ConfigError("config key 'easy_to_hard.policy_sgr.enabled': needs a model with a warm_start node "
                          "(the policy's SFT is trained here on easy levels, and again on all levels)")
    node = OmegaConf.create({"config": node} if isinstance(node, str) else OmegaConf.to_container(node, resolve=True))
    ws = warm_start_config(node)
    levels = sorted(set(s.difficulty.easy) | set(s.difficulty.hard))
    every = OmegaConf.merge(node, {"name": f"{ws.name}-levels-{'_'.join(map(str, levels))}", "data": {"levels": levels}})
    all_cfg = OmegaConf.merge(OmegaConf.to_container(model_cfg, resolve=True), {"warm_start": every})
    all_cfg.name = f"{model_cfg.name}_all_levels"
    return {"unsupervised": base_model_config(model_cfg), "easy": model_cfg, "all": all_cfg}


def greedy_by_policy(exp: Experiment, spec: PromptSpec, cfg: DictConfig, s: EasyToHardConfig, hard: ProblemSet
                     ) -> dict[str, pd.Series]:
    """Greedy correctness per hard problem of each policy variant (one model in memory at a time)."""
    from omegaconf import open_dict

    from harness.pipeline.experiment import setup_experiment
    from harness.sampling.base import SamplingParams

    params = SamplingParams(temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=s.policy_sgr.max_new_tokens,
                            stop=tuple(spec.stop), seed=int(cfg.sampling.seed))
    out = {}
    exp.release()
    for label, model_cfg in policy_variants(cfg.model, s).items():
        sub = cfg.copy()
        with open_dict(sub):
            sub.model = model_cfg
        other = setup_experiment(sub, _PrefixedRun(exp.run, f"policy_sgr/{label}"), problems=hard)
        graded = other.sample_and_grade(spec, n=1, params=params, problem_set=hard, desc=f"greedy {label} policy")
        out[label] = graded.groupby("problem_id")["correct"].mean()
        other.release()
    return out
