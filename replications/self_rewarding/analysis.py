"""Numbers of a Self-Rewarding run from its ledger: task accuracy per model and level, head-to-head by the grader,
each model as a judge, AIFT pair counts; and the paper's claims checked on them."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from harness.reporting.published import claim, published_text
from harness.reporting.report import Claim, format_estimate
from harness.selection.metrics import bootstrap_ci, paired_bootstrap
from replications.self_rewarding.pairs import head_to_head

N_BOOT = 2000
PAPER_JUDGES = ("Self-Rewarding Llama 2 70B (M1)", "Self-Rewarding Llama 2 70B (M3)")


def model_labels(results: dict) -> list[str]:
    """Evaluated models in order: m0, sft, m1, m2, ..."""
    evals = results["evals"]
    return ["m0", "sft"] + sorted((k for k in evals if k not in ("m0", "sft")), key=lambda k: int(k[1:]))


def label_text(label: str) -> str:
    return {"m0": "M0 (base)", "sft": "SFT baseline (IFT)"}.get(label, label.upper())


def _greedy(ev: dict, ids: Sequence[str]) -> np.ndarray:
    return np.array([ev["greedy"][pid] for pid in ids], dtype=float)


def _sampled(ev: dict, ids: Sequence[str]) -> np.ndarray | None:
    if "samples" not in ev:
        return None
    return np.array([ev["samples"][pid][0] / ev["samples"][pid][1] for pid in ids], dtype=float)


def accuracy_table(results: dict) -> pd.DataFrame:
    """Long form: model, level ("all" and each level), metric (greedy / sampled pass@1), value, CI, n."""
    levels = results["levels"]
    ids = sorted(levels)
    groups = {"all": ids}
    for level in sorted({lv for lv in levels.values() if lv is not None}):
        groups[str(level)] = [pid for pid in ids if levels[pid] == level]
    rows = []
    for label in model_labels(results):
        ev = results["evals"][label]
        for group, members in groups.items():
            for metric, values in (("greedy pass@1", _greedy(ev, members)), ("sampled pass@1", _sampled(ev, members))):
                if values is None or len(values) == 0:
                    continue
                mean, low, high = bootstrap_ci(values, n_boot=N_BOOT, seed=0)
                rows.append({"model": label, "level": group, "metric": metric, "value": mean, "ci_low": low,
                             "ci_high": high, "n": len(values)})
    return pd.DataFrame(rows)


def head_to_head_table(results: dict) -> pd.DataFrame:
    """M_{t+1} vs M_t and every trained model vs the SFT baseline, greedy answers judged by the grader."""
    evals, rows = results["evals"], []
    trained = [k for k in model_labels(results) if k not in ("m0", "sft")]
    for new, old in [*zip(trained[1:], trained[:-1]), *((m, "sft") for m in trained), ("sft", "m0")]:
        h = head_to_head(evals[new]["greedy"], evals[old]["greedy"])
        rows.append({"model": label_text(new), "opponent": label_text(old), **h})
    return pd.DataFrame(rows)


def judge_table(results: dict) -> pd.DataFrame:
    rows = []
    for label in [k for k in model_labels(results) if k in results["judges"]]:
        j = results["judges"][label]
        rows.append({"judge": label_text(label), "candidate pairs": j["pairs"], "pairwise accuracy": j["accuracy"],
                     "tie rate": j["tie_rate"], "unscored rate": j["unscored_rate"],
                     "unparsable judgements": j["unparsable_judgements"],
                     "scores (per judgement)": ", ".join(f"{k}: {v}" for k, v in j["score_distribution"].items())})
    return pd.DataFrame(rows)


def aift_table(results: dict) -> pd.DataFrame:
    rows = []
    for t, a in sorted(results["aift"].items(), key=lambda kv: int(kv[0])):
        train = results["train"].get(f"m{int(t) + 1}", {})
        rows.append({"iteration": f"AIFT(M{t}) -> M{int(t) + 1}", "prompts": a["prompts"], "pairs": a["pairs"],
                     "dropped: tie": a["ties"], "dropped: < 2 scored": a["too_few_scored"],
                     "dropped: identical texts": a["identical_texts"], "unscored candidates": a["unscored_candidates"],
                     "unparsable judgements": a["unparsable_judgements"],
                     "candidate accuracy": a["candidate_accuracy"],
                     "chosen correct": a["pairs_chosen_correct"], "rejected incorrect": a["pairs_rejected_incorrect"],
                     "DPO steps": train.get("steps"), "DPO loss before/after": _losses(train)})
    return pd.DataFrame(rows)


def _losses(step: dict) -> str:
    if step.get("loss_before") is None:
        return ""
    return f"{step['loss_before']:.3f} / {step['loss_after']:.3f}"


# ---- claims --------------------------------------------------------------------------------------------------

def _pairwise_points(j: dict) -> np.ndarray:
    """Per candidate pair: 1 if the correct one scored higher, else 0 (ties, unscored) - for a bootstrap CI."""
    return np.array([1.0] * j["correct_higher"] + [0.0] * (j["pairs"] - j["correct_higher"]))


def claims(results: dict) -> list[Claim]:
    out = []
    trained = [k for k in model_labels(results) if k not in ("m0", "sft")]
    first, last = trained[0], trained[-1]

    # 1. the judge's pairwise accuracy rises from M1 to the last model
    j1, jl = results["judges"].get(first), results["judges"].get(last)
    if j1 and jl and j1["pairs"] and jl["pairs"]:
        a1, al = _pairwise_points(j1), _pairwise_points(jl)
        m1, lo1, hi1 = bootstrap_ci(a1, n_boot=N_BOOT, seed=0)
        ml, lol, hil = bootstrap_ci(al, n_boot=N_BOOT, seed=0)
        # the same candidate pairs are judged by both models, in the same order: a paired comparison
        diff = paired_bootstrap(al, a1, n_boot=N_BOOT, seed=0)
        out.append(claim(
            f"the judge's pairwise accuracy rises from {first.upper()} to {last.upper()}", diff.status,
            f"{first.upper()} {format_estimate(m1, lo1, hi1, len(a1))} -> {last.upper()} {format_estimate(ml, lol, hil, len(al))}; "
            f"difference {diff.text()} over the same held-out candidate pairs",
            n=len(al), ours=format_estimate(ml, lol, hil, len(al)),
            published=published_text("self_rewarding", "pairwise_accuracy", models=PAPER_JUDGES)))
    else:
        out.append(claim(f"the judge's pairwise accuracy rises from {first.upper()} to {last.upper()}", "inconclusive",
                         "no held-out candidate pair with differing grader verdicts"))

    # 2. M_{t+1} beats M_t head-to-head (wins minus losses over the test problems, paired)
    evals, ids = results["evals"], sorted(results["levels"])
    for new, old in zip(trained[1:], trained[:-1]):
        h = head_to_head(evals[new]["greedy"], evals[old]["greedy"])
        diff = paired_bootstrap(_greedy(evals[new], ids), _greedy(evals[old], ids), n_boot=N_BOOT, seed=0)
        out.append(claim(
            f"{new.upper()} beats {old.upper()} head-to-head", diff.status,
            f"win/tie/loss {h['win']}/{h['tie']}/{h['loss']} of {h['n']} test problems (greedy, grader: correct beats "
            f"incorrect); wins minus losses {diff.text()}", n=h["n"], ours=f"{h['win_rate'] * 100:.1f}% wins, "
            f"{h['loss_rate'] * 100:.1f}% losses (n={h['n']})",
            published=published_text("self_rewarding", "win_rate", opponent=old.upper())))

    # 3. task accuracy does not fall from M1 to the last model (greedy pass@1, paired)
    before = _greedy(evals[first], ids)
    diff = paired_bootstrap(_greedy(evals[last], ids), before, n_boot=N_BOOT, seed=0)
    status = "fails" if diff.ci_high < 0 else "holds" if diff.ci_low >= -0.05 else "inconclusive"
    if before.sum() == 0 and status == "holds":  # from 0% nothing can fall: not evidence that accuracy is kept
        status = "inconclusive"
    out.append(claim(
        f"task accuracy does not fall from {first.upper()} to {last.upper()}", status,
        f"greedy pass@1 difference {diff.text()}; 'holds' needs the CI's lower end above -5 points, 'fails' its "
        "upper end below 0. The paper's own GSM8K accuracy fell from M1 to M3 (60.27% -> 57.70%, Llama 2 70B, "
        "Table 9), so a FAILS here would match the paper", n=diff.n, ours=diff.text(),
        published=published_text("self_rewarding", "accuracy", dataset="gsm8k")))
    return out
