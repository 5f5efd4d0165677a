"""The reward model of a run: trained here from the pool (embedded, cross-fitted) or loaded from a config."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import pandas as pd
from omegaconf import DictConfig

from harness.errors import ConfigError
from harness.grading.grader import Grader
from harness.pipeline.experiment import Experiment
from harness.pipeline.iterated import derived_seed
from harness.reporting.paths import portable
from harness.data.prompts import PromptSpec
from harness.reward.models import RewardModel, TruncatedBackbone, load_reward_model, reward_model_config
from harness.reward.training import (
    choose_prefixes,
    exact_step_labels,
    labelled_solutions,
    math_shepherd_labels,
    outcome_step_labels,
    train_embedded_rm,
    training_config,
)
from harness.sampling.base import SamplingParams


@dataclass
class RunRewardModel:
    for_problem: Callable[[str], RewardModel]
    flops_parameters: int
    name: str
    info: dict = field(default_factory=dict)  # how it was made, held-out metrics, where it was saved
    heldout: pd.DataFrame | None = None


def _same_weights(rm_cfg, exp: Experiment) -> bool:
    """Whether the embedded backbone is the policy already loaded (so it is not loaded twice)."""
    backbone = rm_cfg.backbone
    name = backbone if isinstance(backbone, str) else (backbone or {}).get("name")
    return name == exp.model.name


def rollout_fn(exp: Experiment, spec: PromptSpec, prompts: Mapping[str, str], params: SamplingParams,
               references: Mapping[str, str], dataset: str, cfg: DictConfig) -> Callable:
    """Math-Shepherd rollouts through the store: continuations of `prompt + prefix`, graded with the run's grader."""
    entry = exp.entry(spec, params, variant={"continuation": True})
    exp.record_entry("prm_rollouts", entry)

    def run(prefixes: Mapping[str, str], n: int) -> dict[str, list[bool]]:
        full = {key: prompts[key.split("#", 1)[0]] + text for key, text in prefixes.items()}
        df = exp.draw(entry, full, n, params, desc="PRM rollouts")
        texts = [prefixes[k] + t for k, t in zip(df["problem_id"], df["text"])]
        refs = [references[k.split("#", 1)[0]] for k in df["problem_id"]]
        with Grader(dataset, method=cfg.grader.method, timeout=cfg.grader.timeout, workers=cfg.grader.workers) as g:
            grades = g.grade_many(texts, refs)
        out: dict[str, list[bool]] = {k: [] for k in prefixes}
        for key, r in zip(df["problem_id"], grades):
            out[key].append(bool(r.correct))
        return out

    return run


def reference_steps(problems) -> dict[str, list[str]]:
    """Each problem's reference step lines (ladder problems carry them as `steps`); a problem without them is a
    one-line DataError from exact_step_labels, which names it."""
    return {p.id: list(p.metadata["steps"]) for p in problems if p.metadata.get("steps")}


def build(exp: Experiment, spec: PromptSpec, graded: pd.DataFrame, cfg: DictConfig, params: SamplingParams
          ) -> RunRewardModel:
    rm_cfg = reward_model_config(cfg.reward_model)
    if rm_cfg.kind != "embedded" or rm_cfg.path:
        backbone = exp.model if rm_cfg.kind == "embedded" and _same_weights(rm_cfg, exp) else None
        rm = load_reward_model(rm_cfg, backbone)
        info = {"how": f"loaded ({rm_cfg.kind})", "source": rm_cfg.path or rm_cfg.hub_id,
                "provenance": getattr(rm, "provenance", None)}
        return RunRewardModel(lambda pid: rm, rm.flops_parameters, rm.name, info)

    if not _same_weights(rm_cfg, exp):
        raise ConfigError(f"reward_model.backbone: '{rm_cfg.backbone}' is not the policy '{exp.model.name}': "
                          "the embedded reward model is trained on the policy's own layers (set backbone to it)")
    tcfg = training_config(rm_cfg.training)
    problems = {p.id: p for p in exp.problems.problems}
    questions = {pid: p.question for pid, p in problems.items()}
    sols = labelled_solutions(graded, questions, rm_cfg.step_separator)
    sl = tcfg.step_labels
    label_stats: dict[str, Any] = {"method": sl.method}
    if rm_cfg.level == "prm" and sl.method == "math_shepherd" and sl.max_prefixes > 0:
        rparams = SamplingParams(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
                                 max_new_tokens=sl.max_new_tokens, stop=params.stop,
                                 seed=derived_seed(params.seed, "prm_rollouts"))
        prompts = exp.prompts(spec)
        fn = rollout_fn(exp, spec, prompts, rparams, {pid: p.answer for pid, p in problems.items()},
                        exp.problems.problems[0].dataset, cfg)
        prefixes = choose_prefixes(sols, sl.max_prefixes, sl.seed)
        label_stats.update(math_shepherd_labels(sols, prefixes, fn, sl, rm_cfg.step_separator))
        label_stats["rollouts_per_prefix"] = sl.rollouts + int(sl.include_original)
    elif sl.method == "outcome" and rm_cfg.level == "prm":
        outcome_step_labels(sols)
    elif sl.method == "exact" and rm_cfg.level == "prm":
        label_stats.update(exact_step_labels(sols, reference_steps(exp.problems.problems)))
    provenance = {
        "trained_on": {"data": exp.problems.provenance(), "model": exp.model.identity, "prompt": spec.name,
                       "sampling": params.as_dict(), "samples_per_problem": int(cfg.samples),
                       "store_entry": portable(exp.entry(spec, params).dir), "grader": cfg.grader.method},
        "step_labels": label_stats,
    }
    backbone = TruncatedBackbone(exp.model, rm_cfg.layers)
    trained = train_embedded_rm(rm_cfg, backbone, sols, tcfg, provenance)
    info = {"how": "trained here (cross-fitted by problem)", "heldout_metrics": trained.metrics,
            "labels": {**trained.label_stats, **label_stats}, "layers": rm_cfg.layers, "features": rm_cfg.features}
    if cfg.compute_optimal.save_reward_model:
        info["saved_to"] = portable(trained.full.save(exp.run.path("reward_model")))
    return RunRewardModel(trained.for_problem, trained.full.flops_parameters, rm_cfg.name, info, trained.heldout)


def score_pool(rrm: RunRewardModel, graded: pd.DataFrame, questions: Mapping[str, str]) -> pd.DataFrame:
    """`graded` plus score (aggregated), rm_question_tokens and rm_solution_tokens, each sample by its problem's RM."""
    groups: dict[int, tuple[RewardModel, list[int]]] = {}
    pids = list(graded["problem_id"])
    for i, pid in enumerate(pids):
        rm = rrm.for_problem(pid)
        groups.setdefault(id(rm), (rm, []))[1].append(i)
    score = [0.0] * len(graded)
    q_tokens = [0] * len(graded)
    s_tokens = [0] * len(graded)
    texts = list(graded["text"])
    for rm, idx in groups.values():
        scored = rm.score_solutions([questions[pids[i]] for i in idx], [texts[i] for i in idx])
        for i, s in zip(idx, scored):
            score[i] = s.score(rm.config.aggregation)
            q_tokens[i] = s.question_tokens
            s_tokens[i] = s.solution_tokens
    out = graded.copy()
    out["score"] = score
    out["rm_question_tokens"] = q_tokens
    out["rm_solution_tokens"] = s_tokens
    return out
