"""Numbers of a ReST run from its ledger: per-iteration test accuracy with CIs, Grow coverage, kept
counts, and the paper's claims as paired comparisons over the same test problems."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from harness.selection.metrics import bootstrap_ci, expected_majority_vote, pass_at_k
from harness.reporting.report import Claim, format_estimate


@dataclass
class Scores:
    """Per-problem values of one policy on the test problems (rows in test-problem order)."""

    greedy: np.ndarray | None  # 0/1 per problem
    pass_at: dict[int, np.ndarray]  # k -> unbiased pass@k per problem
    maj_at: dict[int, np.ndarray]  # k -> expected majority-vote accuracy of k samples per problem
    n_problems: int


def scores(ev: dict, problem_ids: Sequence[str], ks: Sequence[int], seed: int = 0) -> Scores:
    greedy = None
    if "greedy" in ev:
        greedy = np.array([ev["greedy"][pid] for pid in problem_ids], dtype=float)
    pass_at, maj_at = {}, {}
    if "samples" in ev:
        by_id = {r["problem_id"]: r for r in ev["samples"]}
        recs = [by_id[pid] for pid in problem_ids]
        for k in ks:
            pass_at[k] = np.array([pass_at_k(r["n"], r["c"], k) for r in recs])
            maj_at[k] = np.array(
                [expected_majority_vote(r["answers"], r["correct"], k, rng_or_seed=[seed, i, k]) for i, r in enumerate(recs)]
            )
    return Scores(greedy, pass_at, maj_at, len(problem_ids))


def estimate(values: np.ndarray | None, n_boot: int, seed: int) -> tuple[float, float, float]:
    if values is None or len(values) == 0:
        return (float("nan"),) * 3
    return bootstrap_ci(values, n_boot=n_boot, seed=seed)


def accuracy_table(per_iter: dict[int, Scores], ks: Sequence[int], n_boot: int, seed: int) -> pd.DataFrame:
    """Long form: iteration, metric, k, value, ci_low, ci_high, n_problems."""
    rows = []
    for it, sc in sorted(per_iter.items()):
        if sc.greedy is not None:
            rows.append((it, "greedy pass@1", 1, *estimate(sc.greedy, n_boot, seed), sc.n_problems))
        for k in ks:
            if k in sc.pass_at:
                rows.append((it, f"pass@{k}", k, *estimate(sc.pass_at[k], n_boot, seed), sc.n_problems))
                rows.append((it, f"maj@{k}", k, *estimate(sc.maj_at[k], n_boot, seed), sc.n_problems))
    return pd.DataFrame(rows, columns=["iteration", "metric", "k", "value", "ci_low", "ci_high", "n_problems"])


def grow_table(grows: dict, improves: dict, thresholds: Sequence[float]) -> pd.DataFrame:
    rows = []
    for i, g in sorted(grows.items(), key=lambda kv: int(kv[0])):
        row = {
            "iteration": int(i),
            "sampled by": _policy_label(g["policy"]),
            "problems": g["problems"],
            "samples": g["samples"],
            "correct samples": g["correct_samples"],
            "sample accuracy": g["sample_accuracy"],
            "coverage (pass@N)": g["coverage"],
        }
        for j in range(1, len(thresholds) + 1):
            step = improves.get(f"{i}.{j}")
            if step is None:
                continue
            suffix = "" if len(thresholds) == 1 else f" (step {j}, reward > {thresholds[j - 1]})"
            row[f"kept samples{suffix}"] = step["kept_samples"]
            row[f"kept problems{suffix}"] = step["kept_problems"]
            row[f"references{suffix}"] = step["references"]
            row[f"train loss before -> after{suffix}"] = _loss(step)
        rows.append(row)
    return pd.DataFrame(rows)


def _loss(step: dict) -> str:
    if step.get("checkpoint") is None:
        return f"not trained ({step.get('skipped', '')})"
    before, after = step.get("loss_before"), step.get("loss_after")
    if before is None or after is None:
        return f"train loss {step.get('train_loss'):.3f}" if step.get("train_loss") is not None else ""
    return f"{before:.3f} -> {after:.3f}"


def _policy_label(ref: dict) -> str:
    return "base" if ref["kind"] == "base" else ref["path"].rstrip("/").split("/")[-1]


# ---- claims -------------------------------------------------------------------------------------


def _verdict(diff: np.ndarray, n_boot: int, seed: int) -> tuple[str, str]:
    mean, lo, hi = bootstrap_ci(diff, n_boot=n_boot, seed=seed)
    status = "holds" if lo > 0 else "fails" if hi < 0 else "inconclusive"
    return status, f"{mean * 100:+.1f} points [{lo * 100:+.1f}, {hi * 100:+.1f}] (paired bootstrap, n={len(diff)})"


def _headline(sc: Scores) -> tuple[str, np.ndarray | None]:
    if sc.greedy is not None:
        return "greedy pass@1", sc.greedy
    if sc.pass_at:
        return "pass@1", sc.pass_at[min(sc.pass_at)]
    return "none", None


def check_claims(per_iter: dict[int, Scores], ks: Sequence[int], n_boot: int, seed: int) -> list[Claim]:
    claims = []
    last = max(per_iter)
    name, base = _headline(per_iter[0])
    _, first = _headline(per_iter.get(1, per_iter[0]))
    if base is not None and 1 in per_iter:
        status, ev = _verdict(first - base, n_boot, seed)
        claims.append(Claim("Iteration 1 improves test accuracy over the base model", status, f"{name} change: {ev}"))
    if base is not None and last >= 2:
        _, final = _headline(per_iter[last])
        # The gain of iterations 2..I over iteration 1 is smaller than iteration 1's own gain (or negative: overfitting).
        status, ev = _verdict((first - base) - (final - first), n_boot, seed)
        claims.append(Claim(
            "Later iterations improve less than the first (or overfit)", status,
            f"(gain of iteration 1) - (gain of iterations 2..{last}) in {name}: {ev}",
        ))
    else:
        claims.append(Claim("Later iterations improve less than the first (or overfit)", "inconclusive",
                            "needs at least 2 iterations"))
    kmax = max((k for k in ks if k in per_iter[0].pass_at), default=None)
    if kmax is not None and kmax in per_iter[last].pass_at and last >= 1:
        status, ev = _verdict(per_iter[last].pass_at[kmax] - per_iter[0].pass_at[kmax], n_boot, seed)
        claims.append(Claim(f"pass@{kmax} (best-of-{kmax} with a verifier) still gains after ReST", status,
                            f"pass@{kmax} change, iteration {last} vs base: {ev}"))
        status, ev = _verdict(per_iter[last].maj_at[kmax] - per_iter[0].maj_at[kmax], n_boot, seed)
        claims.append(Claim(f"Majority voting (maj@{kmax}) gains after ReST", status,
                            f"maj@{kmax} change, iteration {last} vs base: {ev}"))
    else:
        claims.append(Claim("pass@k still gains after ReST", "inconclusive", "no sampled evaluation (rest.eval.samples=0)"))
    return claims


def estimate_text(df: pd.DataFrame, iteration: int, metric: str) -> str:
    row = df[(df["iteration"] == iteration) & (df["metric"] == metric)]
    if row.empty:
        return "n/a"
    r = row.iloc[0]
    return format_estimate(r["value"], r["ci_low"], r["ci_high"], int(r["n_problems"]))


def to_jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj
