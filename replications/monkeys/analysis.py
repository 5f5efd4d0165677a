"""The Monkeys paper's measurements on graded samples: coverage, its power-law fit, selection, claims."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from harness.config import sampling_params
from harness.data.problems import ProblemSet, dataset_config, load_problems
from harness.errors import ConfigError
from harness.grading.graded import per_problem
from harness.pipeline.experiment import BASE, Experiment, Policy, prompt_from_cfg
from harness.reporting.published import claim, published_text
from harness.reporting.report import Claim, format_estimate
from harness.selection.metrics import canonical_method, coverage_curve, k_grid, paired_bootstrap, pass_at_k_table, selection_curve
from harness.selection.scaling_fit import FitResult, fit_exponentiated_power_law, predict


@dataclass
class LadderLevel:
    level: int
    n_problems: int
    coverage: pd.DataFrame  # k, coverage, ci_low, ci_high, n_problems
    fit: FitResult | None
    fit_error: str | None


@dataclass
class LadderResults:
    """Coverage vs k per ladder level, from the ladder's own model (`monkeys.ladder.model`)."""

    model: str  # the config name (e.g. smollm2_135m_sft)
    loaded_name: str  # the loaded model's name (a warm start's carries its weights hash)
    identity: str
    policy: dict  # Policy.as_dict(): which checkpoint, if any
    n_samples: int
    levels: list[LadderLevel]
    per_problem: pd.DataFrame  # problem_id, level, n, c (and c_strict, c_lenient when graded both ways)

    def coverage_frame(self) -> pd.DataFrame:
        """ladder_coverage.csv: one row per (level, k)."""
        return pd.concat([lv.coverage.assign(level=lv.level) for lv in self.levels], ignore_index=True)[
            ["level", "k", "coverage", "ci_low", "ci_high", "n_problems"]]


@dataclass
class MonkeysResults:
    n_samples: int
    n_problems: int
    coverage: pd.DataFrame  # k, coverage, ci_low, ci_high, n_problems
    fit: FitResult | None
    fit_error: str | None
    selection: pd.DataFrame  # method, k, value, ci_low, ci_high, n_problems
    per_problem: pd.DataFrame  # problem_id, n, c, level/subject when known
    greedy: dict[str, Any] = field(default_factory=dict)
    # Coverage under each grading verdict (strict, lenient) when the graded samples carry both; else empty.
    coverage_by_verdict: dict[str, pd.DataFrame] = field(default_factory=dict)
    ladder: LadderResults | None = None


VERDICTS = ("strict", "lenient")


def verdict_counts(graded: pd.DataFrame) -> dict[str, list[tuple[int, int]]]:
    """Per verdict, (n, c) per problem (problems sorted by id, as `per_problem`), from the `correct_<verdict>`
    columns the grader writes beside `correct`; empty when they are not there."""
    columns = [f"correct_{v}" for v in VERDICTS]
    if not set(columns) <= set(graded.columns):
        return {}
    by_problem = graded.groupby("problem_id", sort=True)
    sizes = by_problem.size()
    return {v: list(zip(sizes.astype(int), by_problem[f"correct_{v}"].sum().astype(int))) for v in VERDICTS}


def fit_points(counts: list[tuple[int, int]], n: int, num_points: int, min_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Coverage at `num_points` log-spaced k (the paper fits on 40), without CIs."""
    ks = np.unique(np.round(np.logspace(np.log10(min_k), np.log10(n), num_points)).astype(int))
    return ks, pass_at_k_table(counts, ks).mean(axis=0)


RM_METHODS = ("rm_best_of_k", "rm_weighted_vote")


def score_with_reward_model(exp: Experiment, spec, graded: pd.DataFrame, cfg: DictConfig) -> pd.DataFrame:
    """Add each sample's reward-model score (conf/reward_model/<name> or a node) as a `scores` column."""
    from harness.grading.graded import reward_scores
    from harness.reward.models import load_reward_model

    rm = load_reward_model(cfg.monkeys.reward_model)
    entry = exp.entry(spec, sampling_params(cfg, tuple(spec.stop)))
    exp.run.record("reward_model", {"name": rm.name})
    return reward_scores(entry, graded, exp.problems.problems, rm)


def coverage_and_fit(counts: list[tuple[int, int]], paper: DictConfig) -> tuple[pd.DataFrame, FitResult | None, str | None]:
    """Coverage at the k grid (bootstrap CIs over problems) and the power-law fit, or why there is none."""
    n = min(ni for ni, _ in counts)
    coverage = coverage_curve(counts, k_grid(n, paper.ks), n_boot=paper.bootstrap.num_resamples,
                              seed=paper.bootstrap.seed)
    fks, fcov = fit_points(counts, n, paper.fit.num_points, paper.fit.min_k)
    if np.all(fcov >= 1.0):  # log coverage is 0 at every k: any b fits, so there is no law to report
        return coverage, None, f"coverage is 1 at every k from {int(fks[0])}: nothing left to fit"
    try:
        return coverage, fit_exponentiated_power_law(fks, fcov), None
    except ValueError as err:  # e.g. coverage 0 at almost every k: nothing to fit
        return coverage, None, str(err)


def analyse(graded: pd.DataFrame, cfg: DictConfig) -> MonkeysResults:
    has_scores = "scores" in graded.columns
    records = per_problem(graded, extra=("scores",) if has_scores else ())
    counts = [(r["n"], r["c"]) for r in records]
    n = min(r["n"] for r in records)
    paper = cfg.monkeys
    ks = k_grid(n, paper.ks)
    coverage, fit, fit_error = coverage_and_fit(counts, paper)

    curves = []
    methods = list(paper.selection.methods) + ([m for m in RM_METHODS if m not in paper.selection.methods]
                                               if has_scores else [])
    for method in methods:
        curve = selection_curve(
            records, ks, method=method, seed=paper.selection.seed, num_subsets=paper.selection.num_subsets,
            n_boot=paper.bootstrap.num_resamples,
        )
        curves.append(curve.assign(method=method))
    selection = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()
    table = pd.DataFrame([{"problem_id": r["problem_id"], "n": r["n"], "c": r["c"]} for r in records])
    by_verdict = {}
    for verdict, verdict_counts_ in verdict_counts(graded).items():
        table[f"c_{verdict}"] = [c for _, c in verdict_counts_]
        by_verdict[verdict] = coverage_curve(verdict_counts_, ks, n_boot=paper.bootstrap.num_resamples,
                                             seed=paper.bootstrap.seed)
    return MonkeysResults(n, len(records), coverage, fit, fit_error, selection, table,
                          coverage_by_verdict=by_verdict)


def ladder_problem_set(cfg: DictConfig) -> ProblemSet:
    """The first `problems_per_level` test problems of each configured ladder level (the same ones every run)."""
    from harness.training.warm_start import first_per_level

    ladder = cfg.monkeys.ladder
    dataset = dataset_config(ladder.dataset)
    dataset.levels = None if ladder.levels is None else list(ladder.levels)
    full = load_problems(dataset, cfg.data.root)
    chosen = first_per_level(full.problems, int(ladder.problems_per_level))
    return replace(full, problems=chosen, selection={**full.selection, "per_level": int(ladder.problems_per_level)})


def ladder_policy(cfg: DictConfig) -> Policy:
    """The policy of `monkeys.ladder.model`: the run's own model, a warm start (its checkpoint, trained the
    first time and then found by content key) or a checkpoint folder (`path`)."""
    from harness.training.warm_start import model_config, warm_start_checkpoint

    name = cfg.monkeys.ladder.model
    if name == cfg.model.name:
        return BASE
    model_cfg = model_config(name)
    if model_cfg.get("warm_start") and not model_cfg.get("path"):
        return Policy.checkpoint(warm_start_checkpoint(model_cfg))
    if model_cfg.get("path"):
        return Policy.checkpoint(model_cfg.path)
    raise ConfigError(f"config key 'monkeys.ladder.model': '{name}' is neither the run's model ('{cfg.model.name}') "
                      f"nor a warm start or checkpoint folder, so it cannot be a policy of this run")


@dataclass
class LadderDraw:
    graded: pd.DataFrame
    problem_set: ProblemSet
    policy: Policy
    loaded_name: str
    identity: str


def sample_ladder(exp: Experiment, cfg: DictConfig) -> LadderDraw:
    """`monkeys.ladder.samples` graded samples per ladder problem from the ladder's model, through the store."""
    ladder = cfg.monkeys.ladder
    problem_set = ladder_problem_set(cfg)
    exp.run.record("ladder_data", problem_set.provenance())
    policy = ladder_policy(cfg)
    spec = prompt_from_cfg(ladder.prompt)
    params = replace(sampling_params(cfg, tuple(spec.stop)), max_new_tokens=int(ladder.max_new_tokens))
    graded = exp.sample_and_grade(spec, n=int(ladder.samples), params=params, desc="ladder sampling",
                                  policy=policy, problem_set=problem_set)
    model = exp.load(policy)
    return LadderDraw(graded, problem_set, policy, model.name, model.identity)


def analyse_ladder(draw: LadderDraw, cfg: DictConfig) -> LadderResults:
    graded = draw.graded
    level_of = {p.id: p.metadata["level"] for p in draw.problem_set.problems}
    by_problem = graded.groupby("problem_id", sort=True)
    table = pd.DataFrame({"n": by_problem.size(), "c": by_problem["correct"].sum()}).astype(int)
    for verdict, counts in verdict_counts(graded).items():
        table[f"c_{verdict}"] = [c for _, c in counts]
    table = table.rename_axis("problem_id").reset_index()
    table.insert(1, "level", table["problem_id"].map(level_of).astype(int))
    levels = []
    for level, rows in table.groupby("level", sort=True):
        coverage, fit, fit_error = coverage_and_fit(list(zip(rows["n"], rows["c"])), cfg.monkeys)
        levels.append(LadderLevel(int(level), len(rows), coverage, fit, fit_error))
    return LadderResults(str(cfg.monkeys.ladder.model), draw.loaded_name, draw.identity, draw.policy.as_dict(),
                         int(table["n"].min()), levels, table)


def greedy_baselines(exp: Experiment, cfg: DictConfig) -> dict[str, Any]:
    """Our greedy accuracy and lm-eval's on the same problems with the same (lm-eval) prompt."""
    gb = cfg.monkeys.greedy_baseline
    if not gb.enabled:
        return {}
    from harness.data.problems import resolve_data_root
    from harness.grading.lm_eval_baseline import run_lm_eval
    from harness.selection.metrics import bootstrap_ci

    problems = exp.problems.problems[: gb.limit] if gb.limit else exp.problems.problems
    spec = prompt_from_cfg(gb.prompt)
    params = sampling_params(cfg, tuple(spec.stop))
    params = type(params)(**{**params.__dict__, "temperature": 0.0, "max_new_tokens": int(gb.max_new_tokens)})
    ours = exp.sample_and_grade(spec, n=1, params=params, problems=problems, desc="greedy")
    ours_correct = ours.sort_values("problem_id")["correct"].to_numpy(dtype=float)
    mean, lo, hi = bootstrap_ci(ours_correct)
    # our gsm8k_cot_8shot is lm-eval's plain-text few-shot context, so lm-eval runs without a chat template too
    theirs = run_lm_eval(exp.model, gb.task, resolve_data_root(cfg.data.root), problem_ids=[p.id for p in problems],
                         max_gen_toks=int(gb.max_new_tokens), chat_template=False)
    ours_by_id = dict(zip(ours["problem_id"], ours["correct"]))
    strict = next((m for m in theirs.metrics if "strict" in m), next(iter(theirs.metrics)))
    agree = [bool(r.correct.get(strict)) == bool(ours_by_id[r.problem_id]) for r in theirs.records]
    return {
        "prompt": spec.name,
        "task": gb.task,
        "ours": {"accuracy": mean, "ci_low": lo, "ci_high": hi, "n": len(ours_correct)},
        "lm_eval": {
            "version": theirs.lm_eval_version,
            "metrics": theirs.metrics,
            "ci": theirs.ci,
            "n": theirs.n,
            "chat_template": theirs.chat_template,
            "deviations": theirs.deviations,
            "wall_seconds": theirs.wall_seconds,
        },
        "per_problem_agreement": {"metric": strict, "agree": int(sum(agree)), "n": len(agree)},
    }


def _at(df: pd.DataFrame, k: int, col: str = "coverage") -> pd.Series:
    return df.loc[df["k"] == k].iloc[0]


# How results/published/monkeys.yaml spells each selection method.
PUBLISHED_METRIC = {"pass@k": "coverage", "majority": "majority_vote", "weighted_vote": "rm_weighted_vote",
                    "best_of_k": "rm_best_of_n"}


def _published_coverage(cfg: DictConfig, method: str = "coverage") -> str | None:
    models = list(cfg.monkeys.published.models)
    dataset = OmegaConf.select(cfg, "dataset.name")
    metric = PUBLISHED_METRIC[canonical_method(method)]
    return published_text("monkeys", metric, dataset, models) if dataset else None


@dataclass
class Rise:
    """Does coverage rise from k=1 to the largest k? `status` is a claim status, `why` qualifies it."""

    status: str
    why: str  # "", "floor" (nothing solved at any k), "ceiling" (all solved at k=1), "CIs overlap"
    k1: int
    kmax: int
    evidence: str
    ours: str


def coverage_rise(cov: pd.DataFrame, n: int, per_problem: pd.DataFrame | None = None) -> Rise:
    """Coverage at k=1 vs the largest k. With the per-problem counts (n, c) the rise is a paired bootstrap over
    problems of pass@kmax - pass@1 (holds when its CI is above zero); without them, the two CIs must be apart.
    Per problem pass@k never falls with k, so the question is whether the rise is real at this n, not its sign."""
    k1, kmax = int(cov["k"].min()), int(cov["k"].max())
    first, last = _at(cov, k1), _at(cov, kmax)
    ours = (f"coverage@{k1} {format_estimate(first.coverage, first.ci_low, first.ci_high, n)} -> "
            f"coverage@{kmax} {format_estimate(last.coverage, last.ci_low, last.ci_high, n)}")
    evidence = (f"coverage {first.coverage:.3f} [{first.ci_low:.3f}, {first.ci_high:.3f}] -> "
                f"{last.coverage:.3f} [{last.ci_low:.3f}, {last.ci_high:.3f}], n={n} problems")
    if last.coverage == 0:
        return Rise("inconclusive", "floor", k1, kmax, evidence + " (no problem solved at any k)", ours)
    if first.coverage >= 1:
        return Rise("inconclusive", "ceiling", k1, kmax, evidence + f" (every problem solved at k={k1})", ours)
    if per_problem is not None and len(per_problem):
        table = pass_at_k_table(list(zip(per_problem["n"], per_problem["c"])), [k1, kmax])
        gain = paired_bootstrap(table[:, 1], table[:, 0])
        evidence += (f"; paired gain {100 * gain.mean:+.1f} points [{100 * gain.ci_low:+.1f}, {100 * gain.ci_high:+.1f}] "
                     f"(bootstrap over {gain.n} problems)")
        if gain.ci_low > 0:
            return Rise("holds", "", k1, kmax, evidence, ours)
        if gain.ci_high <= 0:  # no problem gains from more samples: coverage is flat
            return Rise("fails", "", k1, kmax, evidence, ours)
        return Rise("inconclusive", "paired CI reaches 0", k1, kmax, evidence, ours)
    if last.ci_low > first.ci_high:
        return Rise("holds", "", k1, kmax, evidence, ours)
    if last.coverage <= first.coverage:
        return Rise("fails", "", k1, kmax, evidence, ours)
    return Rise("inconclusive", "CIs overlap", k1, kmax, evidence + " (CIs overlap)", ours)


def grading_note(cfg: DictConfig) -> str:
    """' (strict grading)': which verdict `correct` is, for claim names (graded frames carry both)."""
    mode = OmegaConf.select(cfg, "grader.mode", default=None)
    return f" ({mode} grading)" if mode else ""


def check_claims(res: MonkeysResults, cfg: DictConfig) -> list[Claim]:
    thresholds = cfg.monkeys.claims
    graded_as = grading_note(cfg)
    claims = []
    cov = res.coverage
    n = res.n_problems
    rise = coverage_rise(cov, n, res.per_problem)
    k1, kmax = rise.k1, rise.kmax
    last = _at(cov, kmax)
    name = f"Coverage rises with the number of samples (k={k1} -> k={kmax}){graded_as}"
    claims.append(claim(name, rise.status, rise.evidence, n=n, ours=rise.ours, published=_published_coverage(cfg)))

    name = f"Coverage follows an exponentiated power law, log C ≈ a·k^b{graded_as}"
    if res.fit is None:
        claims.append(claim(name, "inconclusive", f"no fit: {res.fit_error}", n=n))
    else:
        f = res.fit
        evidence = (f"a={f.a:.3f}, b={f.b:.3f}, R² (log coverage)={f.r2_log:.3f} on {f.n_points} points "
                    f"(holds at R² >= {thresholds.fit_r2_holds}, fails below {thresholds.fit_r2_fails})")
        status = ("holds" if f.r2_log >= thresholds.fit_r2_holds
                  else "fails" if f.r2_log < thresholds.fit_r2_fails else "inconclusive")
        claims.append(claim(name, status, evidence, n=n, ours=f"R² = {f.r2_log:.3f} (a={f.a:.3f}, b={f.b:.3f})"))

    sel = res.selection
    window = int(thresholds.saturation_window)
    for method, g in sel.groupby("method", sort=False) if len(sel) else []:
        k_from = max(k for k in g["k"] if k <= max(1, kmax // window))
        s_last, s_from = _at(g, kmax), _at(g, k_from)
        c_from = _at(cov, k_from)
        gain_sel = s_last.value - s_from.value
        gain_cov = last.coverage - c_from.coverage
        name = f"{method} saturates while coverage keeps rising (k={k_from} -> {kmax}){graded_as}"
        evidence = (f"{method} {s_from.value:.3f} -> {s_last.value:.3f} (+{gain_sel:.3f}); coverage "
                    f"{c_from.coverage:.3f} -> {last.coverage:.3f} (+{gain_cov:.3f}); at k={kmax}: coverage "
                    f"[{last.ci_low:.3f}, {last.ci_high:.3f}] vs {method} [{s_last.ci_low:.3f}, {s_last.ci_high:.3f}]")
        numbers = dict(n=n, ours=f"at k={kmax}: {method} {format_estimate(s_last.value, s_last.ci_low, s_last.ci_high, n)}"
                                 f" vs coverage {format_estimate(last.coverage, last.ci_low, last.ci_high, n)}",
                       published=_published_coverage(cfg, method))
        if last.coverage == 0:
            claims.append(claim(name, "inconclusive", evidence + " (no problem solved at any k)", **numbers))
        elif last.ci_low > s_last.ci_high and gain_cov > gain_sel:
            claims.append(claim(name, "holds", evidence, **numbers))
        elif s_last.value >= last.coverage:
            claims.append(claim(name, "fails", evidence, **numbers))
        else:
            claims.append(claim(name, "inconclusive", evidence, **numbers))
    if res.ladder is not None:
        claims.append(ladder_claim(res.ladder, graded_as))
    return claims


def ladder_claim(ladder: LadderResults, graded_as: str = "") -> Claim:
    """Coverage rises with k on every ladder level: fails if it falls on one, holds if it rises (CIs apart)
    on every level where it can move; a level at the floor (nothing solved) or ceiling (all solved at k=1)
    cannot show a rise at this k and is named, not counted."""
    rises = {lv.level: coverage_rise(lv.coverage, lv.n_problems, ladder.per_problem[ladder.per_problem["level"] == lv.level])
             for lv in ladder.levels}
    testable = {level: r for level, r in rises.items() if r.why not in ("floor", "ceiling")}
    verdicts = "; ".join(f"level {level}: {r.status}{f' ({r.why})' if r.why else ''}" for level, r in rises.items())
    kmax = max(r.kmax for r in rises.values())
    name = f"Coverage rises with k on every ladder level (k=1 -> k={kmax}, {ladder.model}){graded_as}"
    n = int(sum(lv.n_problems for lv in ladder.levels))
    ours = "; ".join(f"L{level} {r.ours}" for level, r in rises.items())
    untested = sorted(set(rises) - set(testable))
    evidence = verdicts + (f". Not testable at this k: levels {untested}" if untested else "")
    if any(r.status == "fails" for r in testable.values()):
        status = "fails"
    elif testable and all(r.status == "holds" for r in testable.values()):
        status = "holds"
    else:
        status = "inconclusive"
    return claim(name, status, evidence, n=n, ours=ours)


def fitted_curve(fit: FitResult, n: int) -> pd.DataFrame:
    ks = np.unique(np.round(np.logspace(0, np.log10(n), 60)).astype(int))
    return pd.DataFrame({"k": ks, "coverage": predict(fit, ks)})
