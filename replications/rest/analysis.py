"""Numbers of a ReST run from its ledger: per-iteration test accuracy with CIs, Grow coverage, kept
counts, and the paper's claims as paired comparisons over the same test problems."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from harness.reporting.published import claim, published_text
from harness.reporting.report import Claim, format_estimate
from harness.selection.metrics import bootstrap_ci, paired_bootstrap, per_problem_values


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
        for method, table in (("pass@k", pass_at), ("majority", maj_at)):
            values = per_problem_values(recs, list(ks), method, seed=seed)
            table.update({k: values[:, j] for j, k in enumerate(ks)})
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


def _verdict(gain: np.ndarray, baseline: np.ndarray, n_boot: int, seed: int) -> tuple[str, str]:
    d = paired_bootstrap(gain, baseline, n_boot=n_boot, seed=seed)
    return d.status, d.text()


def _headline(sc: Scores) -> tuple[str, np.ndarray | None]:
    if sc.greedy is not None:
        return "greedy pass@1", sc.greedy
    if sc.pass_at:
        return "pass@1", sc.pass_at[min(sc.pass_at)]
    return "none", None


@dataclass(frozen=True)
class PublishedContext:
    """The published models whose ReST-EM numbers each claim shows beside ours (every dataset: the paper's is MATH)."""

    models: tuple[str, ...] = ()

    def text(self, metric: str, **setting) -> str | None:
        return published_text("rest", metric, None, self.models, **setting)


def _ours(label: str, values: dict[str, np.ndarray], n_boot: int, seed: int) -> str:
    return f"{label}: " + " -> ".join(f"{name} {format_estimate(*bootstrap_ci(v, n_boot=n_boot, seed=seed), len(v))}"
                                      for name, v in values.items())


def control_claims(base: Scores, first: Scores | None, control: Scores, n_boot: int, seed: int) -> list[Claim]:
    """The equal-steps control arm (fine-tuned on reference solutions of the problems ReST kept samples of):
    does more training on these problems help by itself, and do ReST's own solutions beat the references
    (the paper: ReST-EM beats fine-tuning on human-written solutions)?"""
    name, b = _headline(base)
    _, c = _headline(control)
    n = base.n_problems
    if b is None or c is None:
        return [claim("Iteration 1 improves over the equal-steps reference control", "inconclusive",
                      "no greedy or sampled evaluation of the control", n=n)]
    status, ev = _verdict(c, b, n_boot, seed)
    out = [claim("The equal-steps control (reference solutions of the same problems) improves over the base model",
                 status, f"{name} change, control vs base: {ev}", n=n,
                 ours=_ours(name, {"base": b, "control": c}, n_boot, seed))]
    if first is not None:
        _, f = _headline(first)
        status, ev = _verdict(f, c, n_boot, seed)
        out.append(claim("Iteration 1 improves over the equal-steps reference control (self-generated vs reference data)",
                         status, f"{name} change, iteration 1 vs control: {ev}", n=n,
                         ours=_ours(name, {"control": c, "iteration 1": f}, n_boot, seed)))
    return out


def check_claims(per_iter: dict[int, Scores], ks: Sequence[int], n_boot: int, seed: int,
                 context: PublishedContext | None = None, control: Scores | None = None) -> list[Claim]:
    claims = []
    last = max(per_iter)
    name, base = _headline(per_iter[0])
    _, first = _headline(per_iter.get(1, per_iter[0]))
    published = (lambda metric, **setting: context.text(metric, **setting)) if context else (lambda *a, **k: None)
    n = per_iter[0].n_problems
    if base is not None and 1 in per_iter:
        status, ev = _verdict(first, base, n_boot, seed)
        claims.append(claim("Iteration 1 improves test accuracy over the base model", status, f"{name} change: {ev}",
                            n=n, ours=_ours(name, {"base": base, "iteration 1": first}, n_boot, seed),
                            published=published("pass_at_1", iteration=1)))
    if base is not None and last >= 2:
        _, final = _headline(per_iter[last])
        # The gain of iterations 2..I over iteration 1 is smaller than iteration 1's own gain (or negative: overfitting).
        status, ev = _verdict(first - base, final - first, n_boot, seed)
        claims.append(claim(
            "Later iterations improve less than the first (or overfit)", status,
            f"(gain of iteration 1) - (gain of iterations 2..{last}) in {name}: {ev}", n=n,
            ours=_ours(name, {"base": base, "iteration 1": first, f"iteration {last}": final}, n_boot, seed),
            published=published("pass_at_1", iteration=last),
        ))
    else:
        claims.append(claim("Later iterations improve less than the first (or overfit)", "inconclusive",
                            "needs at least 2 iterations", n=n))
    if control is not None:
        claims.extend(control_claims(per_iter[0], per_iter.get(1), control, n_boot, seed))
    kmax = max((k for k in ks if k in per_iter[0].pass_at), default=None)
    if kmax is not None and kmax in per_iter[last].pass_at and last >= 1:
        for label, table, metric, setting in ((f"pass@{kmax}", "pass_at", None, {}),
                                               (f"maj@{kmax}", "maj_at", "majority_vote", {"k": kmax})):
            after, before = getattr(per_iter[last], table)[kmax], getattr(per_iter[0], table)[kmax]
            status, ev = _verdict(after, before, n_boot, seed)
            title = (f"pass@{kmax} (best-of-{kmax} with a verifier) still gains after ReST" if table == "pass_at"
                     else f"Majority voting (maj@{kmax}) gains after ReST")
            claims.append(claim(title, status, f"{label} change, iteration {last} vs base: {ev}", n=n,
                                ours=_ours(label, {"base": before, f"iteration {last}": after}, n_boot, seed),
                                published=published(metric, **setting) if metric else None))
    else:
        claims.append(claim("pass@k still gains after ReST", "inconclusive", "no sampled evaluation (rest.eval.samples=0)",
                            n=n))
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
