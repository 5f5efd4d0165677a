"""R3's report: accuracy per ladder level of SFT, outcome-only RL and R3; per-stage training statistics;
training curves (reward, KL, completion length, zero-variance groups); published numbers; claims."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from harness.reporting.plots import curve_plot
from harness.reporting.published import published_text
from harness.reporting.report import Report
from harness.reporting.run import Run
from replications.r3 import analysis


def write(run: Run, recipe, results: dict, cfg: DictConfig) -> Path:
    s = recipe.settings
    run_dir = Path(run.dir)
    levels = {p.id: p.metadata.get("level") for p in recipe.test.problems}
    rep = Report(f"R3 (reverse curriculum RL) on {cfg.dataset.name}: {cfg.model.name}", paper="r3")
    rep.text(
        "Xi et al. 2024 (arXiv 2402.05808). Every arm starts from the same SFT policy and trains the same number of "
        f"GRPO steps ({s.steps}) on the same problems, {recipe.rl.prompts_per_step} prompts x "
        f"{recipe.rl.num_generations} samples per step; arms differ only in the start states (curriculum.py). "
        "**The optimiser is GRPO (TRL 1.16 has no PPO trainer), not the paper's PPO**: no value model, "
        "group-relative advantages, KL to the SFT policy "
        f"(beta {recipe.rl.beta}). Reward: {s.reward.correct} correct, {s.reward.wrong} stated but wrong, "
        f"{s.reward.none} no stated answer (the official code's values)."
    )
    rep.heading("Test accuracy (greedy pass@1, per level)")
    rep.table(analysis.accuracy_table(results["evals"], levels), "mean [95% bootstrap CI] (n problems)")
    published = published_text("r3", "accuracy", dataset="gsm8k")
    if published:
        rep.text(f"Published (GSM8K, not the ladder; for scale only): {published}.")
    rep.heading("Training, per stage")
    rep.table(analysis.block_table(results["blocks"]),
              "zero-variance groups: share of groups whose samples all got the same reward (no GRPO advantage)")
    curves = analysis.curves(results["blocks"])
    if len(curves):
        curves_csv = run.save_csv("training_curves.csv", curves)
        for field in analysis.CURVE_FIELDS:
            frame = curves.dropna(subset=[field])
            if not len(frame):
                continue
            png = curve_plot(frame, "step", field, run_dir / f"curve_{field}.png", group="arm", ci=None, logx=False,
                             title=f"{field} per optimizer step", xlabel="optimizer step", ylabel=field)
            rep.figure(png, f"{field} per GRPO step, by arm (numbers: {Path(curves_csv).name})", relative_to=run_dir)
    rep.finish(analysis.claims(results["evals"], s.arms), run.timings, run.draws)
    return rep.write(run_dir / "report.md")
