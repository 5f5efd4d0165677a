"""The Self-Rewarding report: task accuracy of M0..M3 per ladder level, head-to-head by the grader, each model as a
judge, AIFT pairs and what was dropped, EFT data, published numbers (Llama 2 70B) beside ours, claims, cost."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from harness.reporting.plots import curve_plot
from harness.reporting.published import load_published
from harness.reporting.report import Report, format_estimate
from harness.reporting.run import Run
from replications.self_rewarding import analysis

# Published numbers that have a counterpart here: head-to-head rates (GPT-4 judged, ours by the grader), the
# judge's pairwise accuracy (human rankings there, grader verdicts here) and GSM8K accuracy (the task metric).
COUNTERPARTS = {("ift_test_256", m) for m in ("win_rate", "tie_rate", "loss_rate")} | {
    ("eft_eval", "pairwise_accuracy"), ("gsm8k", "accuracy")}


def _accuracy_wide(acc: pd.DataFrame, metric: str) -> pd.DataFrame:
    part = acc[acc["metric"] == metric]
    rows = []
    for model in dict.fromkeys(part["model"]):
        row = {"model": analysis.label_text(model)}
        for r in part[part["model"] == model].itertuples():
            row["all levels" if r.level == "all" else f"L{r.level}"] = format_estimate(r.value, r.ci_low, r.ci_high, r.n)
        rows.append(row)
    return pd.DataFrame(rows)


def _published_rows(cfg: DictConfig) -> pd.DataFrame:
    wanted = set(cfg.published.models) if cfg.get("published") else None
    rows = []
    for e in load_published("self_rewarding"):
        if (wanted is not None and e.model not in wanted) or (e.dataset, e.metric) not in COUNTERPARTS:
            continue
        rows.append({"published model": e.model, "dataset": e.dataset, "metric": e.metric,
                     "setting": ", ".join(f"{k}={v}" for k, v in e.setting.items()), "value": e.value_text(),
                     "source": e.label()})
    return pd.DataFrame(rows)


BALANCE_TEXT = {"verdict": "as many right as wrong examples, each verdict's scores in their natural shares",
                "score": "every target score cut to the count of the rarest", "none": "no balancing"}


def write(run: Run, steps, results: dict, cfg: DictConfig) -> Path:
    s = steps.settings
    rep = Report(f"Self-Rewarding Language Models on {cfg.model.name} ({cfg.dataset.name})")
    rep.text(f"Judge in the loop: **{s.judge}** ({'the model judges its own candidates' if s.judge == 'model' else 'the grader'}). "
             f"{s.iterations} AIFT iterations, N={s.candidates} candidates, {s.judge_repeats} judgements each, "
             f"DPO beta={cfg.self_rewarding.dpo_training.trl.get('beta')}. Test: {len(steps.test_problems)} held-out "
             "problems; accuracy is pass@1 with a 95% bootstrap CI over problems. EFT problems and AIFT prompts are "
             "training problems the SFT model was not trained on (the warm start's own problems are left out).")
    acc = analysis.accuracy_table(results)
    acc.to_csv(run.path("accuracy.csv"), index=False)
    rep.heading("Task accuracy (greedy pass@1)").table(_accuracy_wide(acc, "greedy pass@1"))
    per_level = acc[(acc["metric"] == "greedy pass@1") & (acc["level"] != "all")].copy()
    if not per_level.empty:
        per_level["level"] = per_level["level"].astype(int)
        per_level["model"] = per_level["model"].map(analysis.label_text)
        png = curve_plot(per_level, "level", "value", run.path("accuracy_per_level.png"), group="model", logx=False,
                         xlabel="ladder level", ylabel="greedy pass@1", title="Task accuracy per level, M0 ... M3")
        rep.figure(png, "Greedy pass@1 per ladder level, one line per model; band: bootstrap 95% CI over the level's "
                        "problems (numbers: accuracy.csv)", relative_to=run.dir)
    if (acc["metric"] == "sampled pass@1").any():
        rep.heading("Task accuracy (sampled pass@1, candidate decoding)").table(_accuracy_wide(acc, "sampled pass@1"))
    rep.heading("Head-to-head by the grader (greedy answers; a correct answer beats an incorrect one)")
    rep.table(analysis.head_to_head_table(results))
    rep.heading("Each model as a judge (held-out candidates: the SFT baseline's test samples)")
    rep.text("Pairwise accuracy: over candidate pairs of one problem whose grader verdicts differ, how often the "
             "correct one gets the higher mean score (ties and unscored candidates count as misses).")
    rep.table(analysis.judge_table(results))
    rep.heading("AIFT: preference pairs per iteration")
    rep.table(analysis.aift_table(results))
    eft = results["eft"]
    rep.heading("EFT data")
    rep.text(f"{eft['samples']} SFT-baseline samples of EFT problems ({eft['sample_accuracy'] * 100:.1f}% correct), "
             f"rendered as the rubric prompt with the target judgement of their verdict (correct and every "
             f"'a op b = c' statement right: 5; correct with a wrong statement: 4; wrong answer: 1; no answer: 0). "
             f"Balanced by {s.eft.balance} ({BALANCE_TEXT[s.eft.balance]}): targets before "
             f"{eft['targets_before_balance']}, after {eft['targets']}; "
             f"M1 trained on {results['train']['m1']['eft_examples']} EFT + {results['train']['m1']['ift_examples']} IFT examples.")
    rep.heading("Published (Llama 2 70B; not comparable in scale or task: shown for direction only)")
    rep.table(_published_rows(cfg))
    rep.finish(analysis.claims(results), run.timings, run.draws)
    run.save_json("results.json", results)
    return rep.write(run.path("report.md"))
