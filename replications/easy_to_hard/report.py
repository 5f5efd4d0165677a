"""The Easy-to-Hard report: hard-problem accuracy by selection method and N (figure with CI bands), easy- vs
all-trained evaluator, SGR with its CI by hardness, the policy before and after RL, published numbers, claims."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from harness.selection.difficulty import difficulty_of
from harness.reporting.plots import curve_plot
from harness.reporting.report import Report, format_estimate
from harness.reporting.run import Run
from replications.easy_to_hard import analysis


def _curve_table(rr: analysis.Reranking) -> pd.DataFrame:
    shown = sorted({rr.ks[0], rr.ks[len(rr.ks) // 2], rr.ks[-1]})
    rows = []
    for name, g in rr.curves.groupby("series", sort=False):
        row = {"method (evaluator)": name}
        for r in g[g["k"].isin(shown)].itertuples():
            row[f"N={r.k}"] = format_estimate(r.value, r.ci_low, r.ci_high)
        rows.append(row)
    return pd.DataFrame(rows)


def _sgr_table(sgr: pd.DataFrame) -> pd.DataFrame:
    if sgr.empty:
        return sgr
    return pd.DataFrame({
        "RM": sgr["rm"].str.upper(), "hard problems": [g if v is None or pd.isna(v) else f"{g} = {int(v)}"
                                                       for g, v in zip(sgr["group"], sgr["value"])],
        "n": sgr["n"], "majority (unsupervised)": sgr["unsupervised"].map(lambda x: f"{x:.1%}"),
        "easy-trained RM": sgr["easy"].map(lambda x: f"{x:.1%}"), "all-trained RM": sgr["hard"].map(lambda x: f"{x:.1%}"),
        "SGR [95% CI]": sgr["text"]})


def _reward_model_table(info: dict) -> pd.DataFrame:
    rows = []
    for name, e in info.items():
        if "/" not in name:
            continue
        labels, fit = e.get("labels") or {}, e.get("fit_metrics_in_sample") or {}
        rows.append({"reward model": name, "problems": e.get("problems"), "solutions": labels.get("solutions"),
                     "correct solutions": labels.get("correct_solutions"), "training rows": labels.get("training_rows"),
                     "in-sample AUC": fit.get("auc"), "problem ids sha256": (e.get("ids_sha256") or "")[:12],
                     "saved to": e.get("saved_to") or e.get("how")})
    return pd.DataFrame(rows)


def _evaluator_table(evaluators: dict) -> pd.DataFrame:
    return pd.DataFrame([{"reward model (trained on)": name, "n samples": m["n"], "correct": m["positives"],
                          "AUC (hard pool)": m["auc"], "AUC within a problem": m.get("within_problem_auc"),
                          "problems with both": m.get("mixed_problems"), "balanced accuracy": m["balanced_accuracy"]}
                         for name, m in evaluators.items()])


def write(run: Run, cfg: DictConfig, s, test, test_split, rms, rr: analysis.Reranking, evaluators: dict,
          sgr: pd.DataFrame, rl: dict | None, claims: list, policy_sgr: pd.DataFrame | None = None) -> Path:
    d = s.difficulty
    rep = Report(f"Easy-to-Hard generalization on {cfg.model.name} ({cfg.dataset.name})")
    counts = pd.Series([difficulty_of(p, d.by) for p in test.problems]).value_counts().sort_index()
    rep.text(f"Difficulty by **{d.by}**: easy = {d.easy}, hard = {d.hard}. Test: {len(test.problems)} hard problems "
             f"({', '.join(f'{d.by} {v}: {c}' for v, c in counts.items())}; the first {s.test.per_level} of each of "
             f"the test set's {len(test_split.hard)} hard problems). Policy: "
             f"`{cfg.model.name}` (SFT on easy levels only). Pool: {cfg.samples} samples per hard problem at "
             f"temperature {cfg.sampling.temperature}. Every accuracy is an expectation over size-N subsets of the "
             "pool, with a 95% bootstrap CI over problems.")
    rep.heading("Reward models")
    rep.text(f"Source: **{s.reward_models.source}**. Trained ones are fitted once (not cross-fitted) on the policy's "
             "samples of train problems: `easy` on easy levels only, `all` on every level (the upper bound); "
             "the ids of the problems each was fitted on are in its provenance (reward_models/*/reward_model.json).")
    rep.text(f"Step labels: {rms.info.get('labels')}. Training pool: {rms.info.get('pool')}.")
    rep.table(_reward_model_table(rms.info))
    rep.heading("Easy-trained vs all-trained evaluator on the hard pool").table(_evaluator_table(evaluators))
    figure = curve_plot(rr.curves, "k", "value", run.path("reranking_hard.png"), group="series", logx=True,
                        title="Hard problems: accuracy by selection method and N", xlabel="N (samples)",
                        ylabel="accuracy (expected over size-N subsets)")
    rep.heading("Reranking on hard problems").figure(figure, "accuracy on hard problems by method and N, 95% CI bands")
    rep.table(_curve_table(rr))
    rr.curves.to_csv(run.path("curves.csv"), index=False)
    rep.heading("Supervision Gap Recovered (Hase et al.)")
    rep.text(f"SGR = (easy - unsupervised) / (hard - unsupervised) at N={analysis.sgr_k(rr, s)}: unsupervised = "
             f"majority vote, easy / hard = {s.sgr.method} with the easy- / all-trained RM, on the same problems. "
             f"Undefined when |hard - unsupervised| < {s.sgr.epsilon} or its CI includes 0.")
    sgr.to_csv(run.path("sgr.csv"), index=False)
    rep.table(_sgr_table(sgr))
    if policy_sgr is not None:
        rep.heading("SGR of the policy's SFT (Hase et al.'s setting)", 3)
        rep.text("Greedy accuracy on hard test problems: unsupervised = the model without SFT, easy = the policy "
                 "(SFT on easy levels), hard = the same SFT on easy and hard levels.")
        policy_sgr.to_csv(run.path("sgr_policy.csv"), index=False)
        rep.table(_sgr_table(policy_sgr).rename(columns={"majority (unsupervised)": "no SFT (unsupervised)",
                                                         "easy-trained RM": "easy SFT", "all-trained RM": "all-levels SFT"}))
    rep.heading("RL against the easy-trained reward model")
    if rl is None:
        rep.text("Not run (easy_to_hard.rl.enabled=false).")
    else:
        b, a, diff = rl["before"], rl["after"], rl["difference"]
        rep.text(f"Optimiser: **{rl['optimiser']}** (the paper's PPO is not in TRL). Settings: {rl['config']}. "
                 f"Sampled pass@1 over {rl['samples']} samples per hard problem.")
        rep.table(pd.DataFrame([{"policy": "before RL (easy SFT)", "hard pass@1": format_estimate(*b, rl["n"])},
                                {"policy": "after RL", "hard pass@1": format_estimate(*a, rl["n"])},
                                {"policy": "after - before", "hard pass@1": diff.text()}]))
    rep.heading("Published numbers (MATH500 hard levels 4-5; their models, not ours)")
    rep.text(f"Sun et al. {analysis.PUBLISHED_FIGURE} (figure data labels, means over runs): SFT and OPRM of one size, "
             "both trained on MATH levels 1-3 (PRM800K), accuracy on levels 4-5 of MATH500, at our N.")
    published = analysis.published_wide(s, rr.ks)
    rep.table(published if len(published) else pd.DataFrame([{"note": "no published row at these N"}]))
    rep.finish(claims, run.timings, run.draws)
    return rep.write(run.path("report.md"))
