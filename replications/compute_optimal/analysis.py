"""Accuracy and FLOPs of every strategy at every budget, per problem and averaged, and the paper's claims.

Per-problem values are kept (long frame: problem_id, strategy, metric, budget, value, flops) so that
claims compare strategies on the same problems with a paired bootstrap.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from harness.selection.flops import TokenCount, expected_sampling_tokens
from harness.cli import CONF_DIR
from harness.reporting.published import claim, published_text
from harness.reporting.report import Claim, format_estimate
from harness.selection.metrics import bootstrap_ci, method_value, needs_scores, paired_bootstrap, problem_rng

DEFAULT_CONFIG = CONF_DIR / "compute_optimal" / "default.yaml"
LABELS = {"majority_vote": "majority vote", "rm_weighted_vote": "weighted vote", "rm_best_of_n": "best-of-N",
          "accuracy": "greedy"}
STRATEGY_LABELS = {"sampling": "sampling", "rebase": "REBASE", "beam": "beam search", "greedy": "greedy"}


def curve_label(strategy: str, metric: str) -> str:
    if strategy == "greedy":
        return "greedy"
    return f"{STRATEGY_LABELS.get(strategy, strategy)} + {LABELS.get(metric, metric)}"


def sampling_values(pool: pd.DataFrame, budgets: Sequence[int], methods: Sequence[str], policy_params: float,
                    rm_params: float, prefix_reuse: bool, seed: int, num_subsets: int) -> pd.DataFrame:
    """Per problem and N: expected accuracy of each selection method and the expected FLOPs of a size-N subset."""
    rows = []
    for pid, g in pool.sort_values(["problem_id", "index"]).groupby("problem_id", sort=True):
        answers, correct, scores = list(g["vote_answer"]), list(g["correct"]), list(g["score"])
        prompt, gen = float(g["prompt_tokens"].iloc[0]), float(g["num_tokens"].mean())
        rm_q, rm_s = float(g["rm_question_tokens"].max()), float(g["rm_solution_tokens"].mean())
        for n in budgets:
            for method in methods:
                uses_rm = needs_scores(method)
                costs = {}
                for reuse in (True, False):
                    t = expected_sampling_tokens(prompt, gen, n, reuse, rm_q, rm_s if uses_rm else None)
                    costs[reuse] = t
                t = costs[prefix_reuse]
                value = method_value(method, correct, n, answers, scores, problem_rng(seed, pid, n), num_subsets)
                rows.append({"problem_id": pid, "strategy": "sampling", "metric": method, "budget": n,
                             "value": value, "flops": t.flops(policy_params, rm_params),
                             "flops_other": costs[not prefix_reuse].flops(policy_params, rm_params),
                             "policy_tokens": t.policy, "rm_tokens": t.reward_model})
    return pd.DataFrame(rows)


def greedy_values(greedy: pd.DataFrame, policy_params: float) -> pd.DataFrame:
    rows = []
    for r in greedy.itertuples():
        t = TokenCount(policy_prefill=r.prompt_tokens, policy_generated=r.num_tokens)
        rows.append({"problem_id": r.problem_id, "strategy": "greedy", "metric": "accuracy", "budget": 1,
                     "value": float(r.correct), "flops": t.flops(policy_params), "flops_other": t.flops(policy_params),
                     "policy_tokens": t.policy, "rm_tokens": 0.0})
    return pd.DataFrame(rows)


def search_values(method: str, width: int, results, graded_leaves: dict[str, pd.DataFrame], aggregations: Sequence[str],
                  aggregation: str, policy_params: float, rm_params: float, prefix_reuse: bool) -> pd.DataFrame:
    """Per problem: each aggregation over all of the tree's finished solutions, and the tree's FLOPs."""
    from harness.reward.models import aggregate

    rows = []
    for res in results:
        leaves = graded_leaves[res.problem_id]
        answers, correct = list(leaves["vote_answer"]), list(leaves["correct"])
        scores = [aggregate(s, aggregation) for s in leaves["step_scores"]]
        t = res.cost.tokens(prefix_reuse)
        other = res.cost.tokens(not prefix_reuse)
        for agg in aggregations:
            value = method_value(agg, correct, len(correct), answers, scores) if len(correct) else 0.0
            rows.append({"problem_id": res.problem_id, "strategy": method, "metric": agg, "budget": width,
                         "value": value, "flops": t.flops(policy_params, rm_params),
                         "flops_other": other.flops(policy_params, rm_params),
                         "policy_tokens": t.policy, "rm_tokens": t.reward_model,
                         "solutions": len(correct), "nodes": res.num_nodes})
    return pd.DataFrame(rows)


def curves(per_problem: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    """Mean over problems with a bootstrap CI, per (strategy, metric, budget); x = mean FLOPs per problem."""
    rows = []
    for (strategy, metric, budget), g in per_problem.groupby(["strategy", "metric", "budget"], sort=False):
        mean, lo, hi = bootstrap_ci(g["value"].to_numpy(dtype=float), n_boot=n_boot, seed=seed)
        rows.append({"curve": curve_label(strategy, metric), "strategy": strategy, "metric": metric,
                     "budget": int(budget), "accuracy": mean, "ci_low": lo, "ci_high": hi,
                     "error_rate": 1 - mean, "error_ci_low": 1 - hi, "error_ci_high": 1 - lo,
                     "flops": float(g["flops"].mean()), "flops_other": float(g["flops_other"].mean()),
                     "policy_tokens": float(g["policy_tokens"].mean()), "rm_tokens": float(g["rm_tokens"].mean()),
                     "n_problems": int(len(g))})
    return pd.DataFrame(rows).sort_values(["strategy", "metric", "budget"], kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# claims


@dataclass(frozen=True)
class PublishedContext:
    """Which published numbers a claim shows beside ours: the run's dataset and the configured published models."""

    dataset: str
    models: tuple[str, ...] = ()

    def text(self, metric: str, **setting) -> str | None:
        return published_text("compute_optimal", metric, self.dataset, self.models, **setting)


def _published(context: PublishedContext | None, metric: str, **setting) -> str | None:
    return context.text(metric, **setting) if context else None


def _matrix(per_problem: pd.DataFrame, strategy: str, metric: str) -> pd.DataFrame:
    g = per_problem[(per_problem["strategy"] == strategy) & (per_problem["metric"] == metric)]
    return g.pivot(index="problem_id", columns="budget", values="value").sort_index()


def _mean_text(values: np.ndarray, n_boot: int, seed: int) -> str:
    mean, lo, hi = bootstrap_ci(values, n_boot=n_boot, seed=seed)
    return format_estimate(mean, lo, hi, len(values))


def claim_weighted_vs_majority(per_problem: pd.DataFrame, n_boot: int, seed: int,
                               context: PublishedContext | None = None) -> Claim:
    name = "Weighted majority voting ≥ majority voting at equal number of samples (sampling)"
    wv, mv = _matrix(per_problem, "sampling", "rm_weighted_vote"), _matrix(per_problem, "sampling", "majority_vote")
    budgets = [b for b in wv.columns if b in mv.columns and b >= 2]
    if not budgets:
        return claim(name, "inconclusive", "no budget N >= 2 with both methods")
    diffs = {b: paired_bootstrap(wv[b].to_numpy(), mv[b].to_numpy(), n_boot, seed) for b in budgets}
    evidence = ("weighted − majority: " + "; ".join(f"N={b}: {d.text()}" for b, d in diffs.items())
                + f"; n={len(wv)} problems")
    top = budgets[-1]
    ours = (f"N={top}: weighted vote {_mean_text(wv[top].to_numpy(), n_boot, seed)} vs majority vote "
            f"{_mean_text(mv[top].to_numpy(), n_boot, seed)}")
    numbers = dict(n=len(wv), ours=ours, published=_published(context, "rm_weighted_vote", strategy="sampling"))
    if any(d.status == "fails" for d in diffs.values()):
        return claim(name, "fails", evidence, **numbers)
    if all(d.mean >= 0 for d in diffs.values()) and any(d.status == "holds" for d in diffs.values()):
        return claim(name, "holds", evidence, **numbers)
    return claim(name, "inconclusive", evidence + " (no N where the difference is clear of 0)", **numbers)


def _interp_at(flops_x: np.ndarray, values: np.ndarray, x: float) -> tuple[np.ndarray, str]:
    """Per-problem values of a curve at FLOPs x (linear in log FLOPs between budgets; clamped at the ends)."""
    lx = np.log(flops_x)
    if x <= flops_x[0]:
        return values[:, 0], "below the curve's cheapest point: compared with it"
    if x >= flops_x[-1]:
        return values[:, -1], "beyond the curve's last point: compared with it"
    j = int(np.searchsorted(lx, np.log(x)))
    t = (np.log(x) - lx[j - 1]) / (lx[j] - lx[j - 1])
    return values[:, j - 1] * (1 - t) + values[:, j] * t, "interpolated in log FLOPs"


def claim_search_beats_sampling(per_problem: pd.DataFrame, n_boot: int, seed: int, search: str = "rebase",
                                context: PublishedContext | None = None) -> Claim:
    name = (f"{STRATEGY_LABELS[search]} + weighted vote is more accurate than sampling + weighted vote at the same FLOPs "
            "(i.e. reaches an accuracy with fewer FLOPs)")
    rb = per_problem[(per_problem["strategy"] == search) & (per_problem["metric"] == "rm_weighted_vote")]
    wv = per_problem[(per_problem["strategy"] == "sampling") & (per_problem["metric"] == "rm_weighted_vote")]
    if rb.empty or wv.empty:
        return claim(name, "inconclusive", f"needs both {search} and sampling weighted-vote results")
    pids = sorted(set(rb["problem_id"]) & set(wv["problem_id"]))
    wv = wv[wv["problem_id"].isin(pids)]
    vals = wv.pivot(index="problem_id", columns="budget", values="value").loc[pids]
    fl = wv.groupby("budget")["flops"].mean().loc[vals.columns].to_numpy()
    parts, diffs, ours = [], [], ""
    for width, g in rb[rb["problem_id"].isin(pids)].groupby("budget"):
        g = g.set_index("problem_id").loc[pids]
        x = float(g["flops"].mean())
        at, how = _interp_at(fl, vals.to_numpy(), x)
        d = paired_bootstrap(g["value"].to_numpy(), at, n_boot, seed)
        diffs.append(d)
        parts.append(f"width {width} at {x:.3g} FLOPs: {g['value'].mean():.3f} vs {at.mean():.3f} ({d.text()}, {how})")
        ours = (f"width {width}: {STRATEGY_LABELS[search]} {_mean_text(g['value'].to_numpy(), n_boot, seed)} vs "
                f"sampling {_mean_text(at, n_boot, seed)} at {x:.3g} FLOPs")
    evidence = "; ".join(parts) + f"; n={len(pids)} problems"
    numbers = dict(n=len(pids), ours=ours, published=_published(context, "rm_weighted_vote", strategy=search))
    if all(d.status == "fails" for d in diffs) or (all(d.mean < 0 for d in diffs)
                                                   and any(d.status == "fails" for d in diffs)):
        return claim(name, "fails", evidence, **numbers)
    if all(d.mean >= 0 for d in diffs) and any(d.status == "holds" for d in diffs):
        return claim(name, "holds", evidence, **numbers)
    return claim(name, "inconclusive", evidence, **numbers)


def claim_error_falls_with_flops(per_problem: pd.DataFrame, n_boot: int, seed: int) -> Claim:
    """The premise of every inference-scaling curve: some strategy's error at its largest budget is below its error
    at its smallest, on the same problems (paired bootstrap of the per-problem accuracies, last − first)."""
    name = "Error falls with inference FLOPs: some strategy is more accurate at its largest budget than at its smallest"
    parts, diffs, best = [], [], None
    for (strategy, metric), g in per_problem[per_problem["strategy"] != "greedy"].groupby(["strategy", "metric"],
                                                                                         sort=True):
        m = _matrix(per_problem, strategy, metric).dropna()
        if m.shape[1] < 2 or not len(m):
            continue
        first, last = m.columns[0], m.columns[-1]
        d = paired_bootstrap(m[last].to_numpy(), m[first].to_numpy(), n_boot, seed)
        a_first = bootstrap_ci(m[first].to_numpy(), n_boot=n_boot, seed=seed)
        a_last = bootstrap_ci(m[last].to_numpy(), n_boot=n_boot, seed=seed)
        separated = a_last[1] > a_first[2]  # the two budgets' own CIs do not overlap
        flops = g.groupby("budget")["flops"].mean()
        label = curve_label(strategy, metric)
        text = (f"{label}: {format_estimate(*a_first, len(m))} at {first} ({flops[first]:.3g} FLOPs) → "
                f"{format_estimate(*a_last, len(m))} at {last} ({flops[last]:.3g} FLOPs)")
        parts.append(f"{text}, last − first {d.text()}" + ("; the CIs separate" if separated else ""))
        diffs.append(d)
        if best is None or d.mean > best[0].mean:
            best = (d, text)
    if not diffs:
        return claim(name, "inconclusive", "no strategy with two or more budgets")
    evidence = "; ".join(parts)
    numbers = dict(n=diffs[0].n, ours=best[1])
    if any(d.status == "holds" for d in diffs):
        return claim(name, "holds", evidence, **numbers)
    if all(d.status == "fails" for d in diffs):
        return claim(name, "fails", evidence, **numbers)
    return claim(name, "inconclusive", evidence + " (no strategy's gain is clear of 0)", **numbers)


def claim_saturation(curves_df: pd.DataFrame, ratio: float, doublings: int) -> Claim:
    """Each multi-budget curve's last `doublings` doublings gain less than `ratio` of the `doublings` before them."""
    name = (f"Every strategy saturates: the last {doublings} doublings of budget gain < {ratio:.0%} of the "
            f"{doublings} before")
    parts, verdicts = [], []
    for label, g in curves_df[curves_df["strategy"] != "greedy"].groupby("curve", sort=False):
        g = g.sort_values("budget")
        b = list(g["budget"])
        acc = dict(zip(b, g["accuracy"]))
        last = b[-1]
        mid, first = last >> doublings, last >> (2 * doublings)
        if mid not in acc or first not in acc or first < 1:
            parts.append(f"{label}: too few budgets")
            verdicts.append(None)
            continue
        late, early = acc[last] - acc[mid], acc[mid] - acc[first]
        ok = late <= ratio * early if early > 0 else None
        # a late rise inside the last point's CI is noise on these few problems, not evidence against saturation
        low_last = dict(zip(b, g["ci_low"])).get(last) if "ci_low" in g else None
        if ok is False and low_last is not None and low_last <= acc[mid]:
            ok = None
        verdicts.append(ok)
        parts.append(f"{label}: N {first}→{mid} {early * 100:+.1f} pts, {mid}→{last} {late * 100:+.1f} pts"
                     + (" (within the CI)" if ok is None and early > 0 else ""))
    evidence = "; ".join(parts)
    numbers = dict(n=int(curves_df["n_problems"].max()) if "n_problems" in curves_df and len(curves_df) else None,
                   ours="; ".join(p for p in parts if "too few" not in p) or None)
    known = [v for v in verdicts if v is not None]
    if not known:
        return claim(name, "inconclusive", evidence + " (no curve tells: flat early on, or a late rise within its CI)",
                     **numbers)
    if all(known) and len(known) == len(verdicts):
        return claim(name, "holds", evidence, **numbers)
    if not all(known):
        return claim(name, "fails", evidence, **numbers)
    return claim(name, "inconclusive", evidence + " (some curves are flat from the start)", **numbers)


def check_claims(per_problem: pd.DataFrame, curves_df: pd.DataFrame, n_boot: int, seed: int, ratio: float,
                 searches: Sequence[str], doublings: int | None = None,
                 context: PublishedContext | None = None) -> list[Claim]:
    """The premise that error falls with FLOPs at all, then the paper's claims.
    doublings: compute_optimal.claims.saturation_doublings (None: the YAML default's);
    context: the dataset and published models whose numbers each claim shows beside ours."""
    if doublings is None:
        doublings = int(OmegaConf.load(DEFAULT_CONFIG).claims.saturation_doublings)
    claims = [claim_error_falls_with_flops(per_problem, n_boot, seed),
              claim_weighted_vs_majority(per_problem, n_boot, seed, context)]
    for s in searches:
        claims.append(claim_search_beats_sampling(per_problem, n_boot, seed, s, context))
    claims.append(claim_saturation(curves_df, ratio, doublings))
    return claims
