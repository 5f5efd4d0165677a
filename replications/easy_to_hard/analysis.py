"""Easy-to-Hard's numbers: reranking curves on hard problems (majority vs weighted vote vs best-of-N, easy- vs
all-trained evaluator), Supervision Gap Recovered, the policy before and after RL, and the claims."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from harness.grading.graded import per_problem
from harness.reporting.published import claim, load_published
from harness.selection.difficulty import (
    SupervisionGapRecovered,
    difficulty_of,
    sgr_by_group,
    supervision_gap_recovered,
)
from harness.selection.metrics import bootstrap_ci, k_grid, paired_bootstrap, per_problem_values
from replications.easy_to_hard.config import EasyToHardConfig

MOST = 0.5  # "recovers most of the gain": SGR above one half
PUBLISHED_METRIC = {"majority": "majority_vote", "weighted_vote": "rm_weighted_vote", "best_of_k": "rm_best_of_n"}


@dataclass
class Reranking:
    ks: list[int]
    problem_ids: list[str]
    values: dict[str, np.ndarray]  # series -> (problems x ks) expected accuracy
    curves: pd.DataFrame  # series, method, evaluator, rm, k, value, ci_low, ci_high, n_problems

    def at(self, series: str, k: int) -> np.ndarray:
        return self.values[series][:, self.ks.index(k)]


def series_name(method: str, subset: str | None = None, level: str | None = None) -> str:
    return method if subset is None else f"{method}/{subset}_{level}"


def reranking(scored: pd.DataFrame, rm_names: Sequence[tuple[str, str]], s: EasyToHardConfig, samples: int
              ) -> Reranking:
    """Every selection method's expected accuracy at each N on the hard pool, with bootstrap CIs over problems."""
    columns = [f"{sub}_{lvl}_{m}" for sub, lvl in rm_names for m in ("weighted_vote", "best_of_k")]
    records = per_problem(scored, extra=columns)
    ks = k_grid(samples, s.budgets)
    plan = [("pass@k", None, None, None), ("majority", None, None, None)]
    plan += [(m, sub, lvl, f"{sub}_{lvl}_{m}") for m in ("weighted_vote", "best_of_k") for sub, lvl in rm_names]
    values, rows = {}, []
    for method, subset, level, key in plan:
        options = {"score_key": key} if key else {}
        v = per_problem_values(records, ks, method, s.selection.seed, s.selection.num_subsets, **options)
        name = series_name(method, subset, level)
        values[name] = v
        mean, low, high = bootstrap_ci(v, n_boot=s.bootstrap.num_resamples, seed=s.bootstrap.seed)
        for j, k in enumerate(ks):
            rows.append({"series": name, "method": method, "evaluator": subset, "rm": level, "k": k,
                         "value": float(mean[j]), "ci_low": float(low[j]), "ci_high": float(high[j]),
                         "n_problems": len(records)})
    return Reranking(ks, [r["problem_id"] for r in records], values, pd.DataFrame(rows))


def sgr_k(rr: Reranking, s: EasyToHardConfig) -> int:
    return s.sgr.k if s.sgr.k in rr.ks else rr.ks[-1]


def supervision_gaps(rr: Reranking, problems_by_id: dict, rm_levels: Sequence[str], s: EasyToHardConfig
                     ) -> pd.DataFrame:
    """SGR per reward-model level, over all hard problems and per hardness group (level, steps): unsupervised =
    majority vote, easy / hard = `sgr.method` with the easy- / all-trained reward model, all at N = sgr k."""
    k = sgr_k(rr, s)
    unsup = rr.at("majority", k)
    options = {"epsilon": s.sgr.epsilon, "n_boot": s.bootstrap.num_resamples, "seed": s.bootstrap.seed}
    rows = []
    for level in rm_levels:
        easy_name, all_name = series_name(s.sgr.method, "easy", level), series_name(s.sgr.method, "all", level)
        if easy_name not in rr.values or all_name not in rr.values:
            continue
        easy, hard = rr.at(easy_name, k), rr.at(all_name, k)
        overall = supervision_gap_recovered(easy, hard, unsup, **options)
        rows.append(_sgr_row(level, "all hard", None, k, overall))
        for by in s.hardness_groups:
            groups = [difficulty_of(problems_by_id[pid], by) for pid in rr.problem_ids]
            for value, sgr in sgr_by_group(groups, easy, hard, unsup, **options).items():
                rows.append(_sgr_row(level, by, value, k, sgr))
    return pd.DataFrame(rows)


def policy_gaps(greedy: dict[str, pd.Series], problems_by_id: dict, s: EasyToHardConfig) -> pd.DataFrame:
    """Hase et al.'s SGR of the policy: unsupervised = the model without SFT, easy = SFT on easy levels, hard =
    SFT on all levels; greedy correctness on the same hard problems, overall and per hardness group."""
    ids = sorted(set.intersection(*(set(v.index) for v in greedy.values())))
    e, h, u = (greedy[k].loc[ids].to_numpy(float) for k in ("easy", "all", "unsupervised"))
    options = {"epsilon": s.sgr.epsilon, "n_boot": s.bootstrap.num_resamples, "seed": s.bootstrap.seed}
    rows = [_sgr_row("policy", "all hard", None, 1, supervision_gap_recovered(e, h, u, **options))]
    for by in s.hardness_groups:
        groups = [difficulty_of(problems_by_id[pid], by) for pid in ids]
        rows += [_sgr_row("policy", by, v, 1, sgr) for v, sgr in sgr_by_group(groups, e, h, u, **options).items()]
    return pd.DataFrame(rows)


def _sgr_row(level: str, group: str, value: Any, k: int, sgr: SupervisionGapRecovered) -> dict:
    return {"rm": level, "group": group, "value": value, "k": k, **sgr.as_dict(), "text": sgr.text()}


def rl_comparison(before: pd.Series, after: pd.Series, s: EasyToHardConfig) -> dict:
    """Sampled pass@1 on the hard problems before and after RL, paired by problem."""
    common = sorted(set(before.index) & set(after.index))
    b, a = before.loc[common].to_numpy(float), after.loc[common].to_numpy(float)
    diff = paired_bootstrap(a, b, n_boot=s.bootstrap.num_resamples, seed=s.bootstrap.seed)
    est = {name: bootstrap_ci(v, n_boot=s.bootstrap.num_resamples, seed=s.bootstrap.seed) for name, v in
           (("before", b), ("after", a))}
    return {"n": len(common), "before": est["before"], "after": est["after"], "difference": diff}


# ---- published numbers and claims ---------------------------------------------------------------------------


PUBLISHED_FIGURE = "Fig. 4"  # SFT and evaluator of one size, both trained on levels 1-3: our setting's analogue


def published_hard(s: EasyToHardConfig, ks: Sequence[int]) -> pd.DataFrame:
    """The paper's hard-level (4-5) reranking numbers at our N (Fig. 4), for the configured published models."""
    rows = []
    for e in load_published("easy_to_hard").select(dataset="math500", levels="4-5"):
        k = e.setting.get("k")
        if (e.model in s.published.models and k in ks and e.metric in PUBLISHED_METRIC.values()
                and e.source.startswith(PUBLISHED_FIGURE)):
            rows.append({"model": e.model, "panel": e.source.split(",")[1].strip(), "metric": e.metric, "k": k,
                         "value": e.value})
    return pd.DataFrame(rows, columns=["model", "panel", "metric", "k", "value"])


def published_wide(s: EasyToHardConfig, ks: Sequence[int]) -> pd.DataFrame:
    rows = published_hard(s, ks)
    if rows.empty:
        return rows
    wide = rows.pivot_table(index=["model", "panel", "metric"], columns="k", values="value", sort=False).reset_index()
    wide.columns = [c if isinstance(c, str) else f"N={c}" for c in wide.columns]
    return wide


def _published_claim(s: EasyToHardConfig, k: int) -> str | None:
    rows = published_hard(s, [k])
    parts = []
    for model, g in rows.groupby("model", sort=False):
        by = dict(zip(g["metric"], g["value"]))
        if "rm_weighted_vote" in by and "majority_vote" in by:
            parts.append(f"{model} ({PUBLISHED_FIGURE}, levels 4-5, N={k}): weighted vote {by['rm_weighted_vote']:.1%} "
                         f"vs majority {by['majority_vote']:.1%}")
    return "; ".join(parts) or None


def _sgr_claim(name: str, row: Any, what: str) -> Any:
    if not row["defined"]:
        return claim(name, "inconclusive", f"SGR undefined: {row['reason']}", n=int(row["n"]), ours=row["text"])
    status = "holds" if row["ci_low"] > MOST else "fails" if row["ci_high"] < MOST else "inconclusive"
    return claim(name, status, f"{what}: {row['text']}; 'most' = above {MOST}", n=int(row["n"]), ours=row["text"])


def check_claims(rr: Reranking, sgr: pd.DataFrame, rm_levels: Sequence[str], rl: dict | None,
                 s: EasyToHardConfig, policy_sgr: pd.DataFrame | None = None) -> list:
    k = sgr_k(rr, s)
    primary = rm_levels[0]
    claims = []
    wv_easy = series_name("weighted_vote", "easy", primary)
    if wv_easy in rr.values:
        diff = paired_bootstrap(rr.at(wv_easy, k), rr.at("majority", k), n_boot=s.bootstrap.num_resamples,
                                seed=s.bootstrap.seed)
        claims.append(claim(
            "weighted voting with an easy-trained RM beats majority voting on hard problems", diff.status,
            f"weighted vote (easy-trained {primary.upper()}) - majority vote at N={k}, paired by problem",
            n=diff.n, ours=diff.text(), published=_published_claim(s, k)))
    overall = sgr[(sgr["rm"] == primary) & (sgr["group"] == "all hard")] if len(sgr) else sgr
    if len(overall):
        claims.append(_sgr_claim("the easy-trained RM recovers most of the all-trained RM's gain (SGR)",
                                 overall.iloc[0], f"SGR = (easy - majority) / (all - majority) with {s.sgr.method} "
                                                  f"at N={k}"))
    else:
        claims.append(claim("the easy-trained RM recovers most of the all-trained RM's gain (SGR)", "inconclusive",
                            "no all-levels reward model in this run: SGR not computed"))
    if policy_sgr is not None and len(policy_sgr):
        claims.append(_sgr_claim("SFT on easy levels recovers most of the all-levels SFT's gain on hard problems "
                                 "(Hase et al.)", policy_sgr.iloc[0], "SGR of greedy accuracy = (easy SFT - no SFT) / "
                                                                      "(all-levels SFT - no SFT)"))
    name = "RL against the easy-trained RM improves hard accuracy"
    if rl is None:
        claims.append(claim(name, "inconclusive", "RL not run (easy_to_hard.rl.enabled=false)"))
    else:
        d = rl["difference"]
        claims.append(claim(name, d.status, "sampled pass@1 on hard problems, after GRPO - before, paired by problem",
                            n=d.n, ours=d.text(),
                            published="Llemma-7B PPO with the level-1-3 PRM: 34.0% on MATH500 (abstract; all levels)"))
    return claims
