"""R3's numbers from a run's results (loop.R3.run_all): accuracy per level, per-stage training statistics,
training curves, and the paper's claims as verdicts with paired bootstrap CIs over the test problems."""
from __future__ import annotations

import statistics
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from harness.reporting.published import claim, published_text
from harness.reporting.report import format_estimate
from harness.selection.metrics import bootstrap_ci, paired_bootstrap
from replications.r3.config import R3_ARMS

ARM_LABELS = {"sft": "SFT", "scratch": "outcome-only RL (question alone)", "reverse": "R3 (staged)", "mixed": "R3 (mixed stages)"}
CURVE_FIELDS = ("reward", "kl", "completion_length", "zero_variance_share")


def r3_arm(arms: Sequence[str]) -> str | None:
    """The arm the R3 claims are checked on: the first R3 schedule the run trained."""
    return next((a for a in arms if a in R3_ARMS), None)


def accuracy_table(evals: Mapping[str, dict], levels: Mapping[str, int | None], n_boot: int = 2000) -> pd.DataFrame:
    """Greedy pass@1 per policy (rows) and test level (columns, then all), each with its CI and n."""
    level_values = sorted({lv for lv in levels.values() if lv is not None})
    rows = []
    for name, ev in evals.items():
        row = {"policy": ARM_LABELS.get(name, name)}
        for lv in [*level_values, None]:
            ids = [pid for pid in ev["greedy"] if lv is None or levels.get(pid) == lv]
            values = [ev["greedy"][pid] for pid in ids]
            key = "all" if lv is None else f"L{lv}"
            row[key] = format_estimate(*bootstrap_ci(values, n_boot=n_boot), n=len(values)) if values else "n/a"
        rows.append(row)
    return pd.DataFrame(rows)


def block_table(blocks: Mapping[str, Sequence[dict]]) -> pd.DataFrame:
    """Per training block: its stage, what it trained on, mean reward, zero-variance groups, KL, length."""
    rows = []
    for arm, steps in blocks.items():
        for b in steps:
            log = b.get("log") or []
            rows.append({
                "arm": arm, "block": b["block"], "stage k": b["stage"], "given steps (mean)": b["given_steps_mean"],
                "samples": b["samples"], "mean reward": b["mean_reward"], "correct share": b["correct_share"],
                "zero-variance groups": b["zero_variance_groups"],
                "KL (mean)": _mean(r.get("kl") for r in log),
                "completion tokens (mean)": _mean(r.get("completion_length") for r in log),
            })
    return pd.DataFrame(rows)


def curves(blocks: Mapping[str, Sequence[dict]]) -> pd.DataFrame:
    """One row per optimizer step of each arm, steps counted across its blocks."""
    rows = []
    for arm, steps in blocks.items():
        offset = 0
        for b in steps:
            for r in b.get("log") or []:
                rows.append({"arm": arm, "block": b["block"], "step": offset + int(r["step"]),
                             **{f: r.get(f) for f in CURVE_FIELDS}})
            offset += int(b["steps"])
    return pd.DataFrame(rows, columns=["arm", "block", "step", *CURVE_FIELDS])


def claims(evals: Mapping[str, dict], arms: Sequence[str], n_boot: int = 2000) -> list:
    r3 = r3_arm(arms)
    out = []
    checks = [
        ("R3 beats outcome-only RL at equal training samples", "scratch", "R3 - RL"),
        ("R3 beats SFT", "sft", "R3 - SFT"),
    ]
    for name, baseline, comparison in checks:
        published = published_text("r3", "accuracy_gain", comparison=comparison)
        if r3 is None or baseline not in evals or r3 not in evals:
            out.append(claim(name, "inconclusive", f"not run: needs the arms {r3 or 'reverse|mixed'} and {baseline}",
                             published=published))
            continue
        ids = sorted(set(evals[r3]["greedy"]) & set(evals[baseline]["greedy"]))
        diff = paired_bootstrap([evals[r3]["greedy"][i] for i in ids], [evals[baseline]["greedy"][i] for i in ids],
                                n_boot=n_boot)
        evidence = (f"greedy pass@1, {ARM_LABELS[r3]} minus {ARM_LABELS[baseline]}: {diff.text()}; "
                    "holds when the 95% CI lies above 0")
        ours = format_estimate(diff.mean, diff.ci_low, diff.ci_high, n=diff.n)
        out.append(claim(name, diff.status, evidence, n=diff.n, ours=ours, published=published))
    return out


def _mean(values) -> float | None:
    vals = [float(v) for v in values if v is not None and not np.isnan(float(v))]
    return statistics.fmean(vals) if vals else None
