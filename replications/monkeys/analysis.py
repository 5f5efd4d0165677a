"""The Monkeys paper's measurements on graded samples: coverage, its power-law fit, selection, claims."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from harness.config import sampling_params
from harness.grading.graded import per_problem
from harness.pipeline.experiment import Experiment, prompt_from_cfg
from harness.reporting.published import claim, published_text
from harness.reporting.report import Claim, format_estimate
from harness.selection.metrics import canonical_method, coverage_curve, k_grid, pass_at_k, selection_curve
from harness.selection.scaling_fit import FitResult, fit_exponentiated_power_law, predict


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
    cov = np.array([np.mean([pass_at_k(ni, ci, int(k)) for ni, ci in counts]) for k in ks])
    return ks, cov


RM_METHODS = ("rm_best_of_k", "rm_weighted_vote")


def score_with_reward_model(exp: Experiment, spec, graded: pd.DataFrame, cfg: DictConfig) -> pd.DataFrame:
    """Add each sample's reward-model score (conf/reward_model/<name> or a node) as a `scores` column."""
    from harness.grading.graded import reward_scores
    from harness.reward.models import load_reward_model

    rm = load_reward_model(cfg.monkeys.reward_model)
    entry = exp.entry(spec, sampling_params(cfg, tuple(spec.stop)))
    exp.run.record("reward_model", {"name": rm.name})
    return reward_scores(entry, graded, exp.problems.problems, rm)


def analyse(graded: pd.DataFrame, cfg: DictConfig) -> MonkeysResults:
    has_scores = "scores" in graded.columns
    records = per_problem(graded, extra=("scores",) if has_scores else ())
    counts = [(r["n"], r["c"]) for r in records]
    n = min(r["n"] for r in records)
    paper = cfg.monkeys
    ks = k_grid(n, paper.ks)
    coverage = coverage_curve(counts, ks, n_boot=paper.bootstrap.num_resamples, seed=paper.bootstrap.seed)

    fit, fit_error = None, None
    fks, fcov = fit_points(counts, n, paper.fit.num_points, paper.fit.min_k)
    try:
        fit = fit_exponentiated_power_law(fks, fcov)
    except ValueError as err:  # e.g. coverage 0 at almost every k: nothing to fit
        fit_error = str(err)

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


def check_claims(res: MonkeysResults, cfg: DictConfig) -> list[Claim]:
    thresholds = cfg.monkeys.claims
    claims = []
    cov = res.coverage
    k1, kmax = int(cov["k"].min()), int(cov["k"].max())
    first, last = _at(cov, k1), _at(cov, kmax)
    n = res.n_problems
    name = f"Coverage rises with the number of samples (k={k1} -> k={kmax})"
    ours = (f"coverage@{k1} {format_estimate(first.coverage, first.ci_low, first.ci_high, n)} -> "
            f"coverage@{kmax} {format_estimate(last.coverage, last.ci_low, last.ci_high, n)}")
    numbers = dict(n=n, ours=ours, published=_published_coverage(cfg))
    evidence = (f"coverage {first.coverage:.3f} [{first.ci_low:.3f}, {first.ci_high:.3f}] -> "
                f"{last.coverage:.3f} [{last.ci_low:.3f}, {last.ci_high:.3f}], n={n} problems")
    if last.coverage == 0:
        claims.append(claim(name, "inconclusive", evidence + " (no problem solved at any k)", **numbers))
    elif last.ci_low > first.ci_high:
        claims.append(claim(name, "holds", evidence, **numbers))
    elif last.coverage <= first.coverage:
        claims.append(claim(name, "fails", evidence, **numbers))
    else:
        claims.append(claim(name, "inconclusive", evidence + " (CIs overlap)", **numbers))

    name = "Coverage follows an exponentiated power law, log C ≈ a·k^b"
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
        name = f"{method} saturates while coverage keeps rising (k={k_from} -> {kmax})"
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
    return claims


def fitted_curve(fit: FitResult, n: int) -> pd.DataFrame:
    ks = np.unique(np.round(np.logspace(0, np.log10(n), 60)).astype(int))
    return pd.DataFrame({"k": ks, "coverage": predict(fit, ks)})
