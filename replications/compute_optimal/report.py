"""The compute-optimal report: error vs FLOPs, the accuracy table per strategy and budget, the reward model's
held-out quality, published numbers beside ours, and the paper's claims checked."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from harness.reporting.paths import portable
from harness.pipeline.experiment import Experiment
from harness.reporting.plots import curve_plot
from harness.data.prompts import PromptSpec
from harness.reporting.published import load_published, side_by_side
from harness.reporting.report import Claim, Report, format_estimate
from harness.reporting.run import Run


STEP_LABEL_SOURCES = {  # where intermediate steps' labels came from, by reward_model.training.step_labels.method
    "math_shepherd": "Math-Shepherd rollouts (intermediate steps)",
    "outcome": "the solution's outcome (every intermediate step)",
    "exact": "exact checks of every line against the reference chain (intermediate steps, no rollouts)",
}


FEATURE_TEXT = {"last": "the hidden state at a step's last token", "mean": "the hidden state's mean over the step",
                "logprob": "the policy's log-probabilities of its own tokens"}


def describe_features(features: list) -> str:
    return "; ".join(FEATURE_TEXT.get(f, f) for f in features)


def _fmt_flops(x: float) -> str:
    return f"{x:.3g}" if x and not math.isnan(x) else ""


def _figures(run: Run, cur: pd.DataFrame, title: str, x_label: str) -> list[tuple[Path, str]]:
    err = curve_plot(cur, "flops", "error_rate", run.path("error_vs_flops.png"), group="curve",
                     ci=("error_ci_low", "error_ci_high"), title=f"Error vs inference FLOPs: {title}",
                     xlabel=x_label, ylabel="test error rate")
    acc = curve_plot(cur, "flops", "accuracy", run.path("accuracy_vs_flops.png"), group="curve",
                     title=f"Accuracy vs inference FLOPs: {title}", xlabel=x_label, ylabel="accuracy")
    return [(err, "Test error vs inference FLOPs per problem, one curve per strategy (log x); band: bootstrap 95% CI "
                  "over problems. Sampling points are N = 1, 2, 4, ...; search points are widths."),
            (acc, "The same curves as accuracy")]


def _table(cur: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in cur.itertuples():
        rows.append({"strategy": r.curve, "N / width": r.budget,
                     "accuracy": format_estimate(r.accuracy, r.ci_low, r.ci_high, r.n_problems),
                     "FLOPs / problem": _fmt_flops(r.flops), "policy tokens": round(r.policy_tokens, 1),
                     "RM tokens": round(r.rm_tokens, 1)})
    return pd.DataFrame(rows)


def _published(cur: pd.DataFrame, dataset: str, model: str, models: list[str]) -> pd.DataFrame:
    pub = load_published("compute_optimal")
    entries = [e for e in pub.select(dataset=dataset) if e.model in models and "strategy" in e.setting]
    ours = cur.assign(model=model, budget_samples=cur["budget"],
                      metric=cur["metric"].where(cur["strategy"] != "greedy", "accuracy"),
                      value=cur["accuracy"])
    ours = ours[["model", "metric", "strategy", "budget_samples", "value", "ci_low", "ci_high", "n_problems", "flops"]]
    ours = ours.rename(columns={"flops": "flops_per_question"})
    side = side_by_side(ours, entries, join_on=["metric", "strategy", "budget_samples"])
    flops = {e.id: e.setting.get("flops_per_question") for e in entries}
    side["published_flops_per_question"] = [flops.get(i) for i in side["published_id"]]
    # Our rows without a published counterpart are in the main table already.
    return side[side["published_value"].notna()].reset_index(drop=True)


def _side_view(side: pd.DataFrame) -> pd.DataFrame:
    """The side-by-side table as read: our estimate with its CI and n, then the published cell and its source."""
    def ours(r) -> str:
        if pd.isna(r.get("value")):
            return "not run here"
        return f"{format_estimate(r['value'], r['ci_low'], r['ci_high'], int(r['n_problems']))}, {r['flops_per_question']:.2g} FLOPs"

    def theirs(r) -> str:
        fl, n = r.get("published_flops_per_question"), r.get("published_n")
        return (f"{100 * r['published_value']:.1f}%" + (f" (n={int(n)})" if pd.notna(n) and n else "")
                + (f", {fl:.2g} FLOPs" if pd.notna(fl) and fl else ""))

    return pd.DataFrame({
        "strategy": side["strategy"], "selection": side["metric"], "N / width": side["budget_samples"],
        "this run: " + str(side["model"].dropna().iloc[0] if side["model"].notna().any() else "ours"):
            [ours(r) for _, r in side.iterrows()],
        "published model": side["published_model"],
        "published (accuracy, FLOPs / question)": [theirs(r) for _, r in side.iterrows()],
        "published source": side["published_source"],
    })


def write(run: Run, exp: Experiment, spec: PromptSpec, cfg: DictConfig, co, per: pd.DataFrame, cur: pd.DataFrame,
          claims: list[Claim], rrm, search_stats: list[dict], policy_params: float, rm_params: float) -> Path:
    model, dataset = exp.model.name, exp.problems.name
    n_problems = exp.problems.problems.__len__()
    title = f"{model} on {dataset} ({n_problems} problems)"
    rep = Report(f"Compute-optimal inference (Wu et al., arXiv 2408.00724), regenerated: {title}")
    reuse = co.flops.prefix_reuse
    rep.text(
        f"Policy `{model}` ({policy_params / 1e6:.1f} M parameters, `{portable(exp.model.source)}`, weights `{exp.model.identity}`); data `{portable(exp.problems.source)}` "
        f"(sha256 `{exp.problems.sha256[:16]}…`), {n_problems} problems; prompt `{spec.name}`; pool of {cfg.samples} "
        f"samples per problem at temperature {cfg.sampling.temperature}, top_p {cfg.sampling.top_p}, max "
        f"{cfg.sampling.max_new_tokens} new tokens, seed {cfg.sampling.seed}; grader `{cfg.grader.method}`. "
        f"Reward model `{rrm.name}` ({rrm.info.get('how')}; {rm_params / 1e6:.1f} M FLOPs-parameters). "
        f"Voting and best-of-N at N are expectations over size-N subsets of the pool (harness.selection.metrics). "
        f"Every accuracy is a mean over problems with a bootstrap 95% CI and its n."
    )
    rep.text(
        "FLOPs per problem = 2 × parameters × tokens, policy and reward model, attention's context term left out. "
        + ("Counted with prefix reuse (as a prefix-caching server, the paper's SGLang): the prompt once per problem, "
           "every generated token and every reward-model token once; " if reuse else
           "Counted without prefix reuse: every request prefills its whole prompt (shared by the samples of that "
           "request), the reward model re-reads the whole partial solution at every node; ")
        + "`curves.csv` also has the other count (`flops_other`). The reward model's parameters exclude the input "
          "embedding (a lookup) and count only what its forward pass multiplies."
    )
    x_label = "inference FLOPs per problem" + (" (prefix reuse)" if reuse else " (no prefix reuse)")
    for path, caption in _figures(run, cur, title, x_label):
        rep.figure(path, caption)
    run.save_csv("curves.csv", cur)
    run.save_csv("per_problem.csv", per)

    rep.heading("Accuracy per strategy and budget")
    rep.table(_table(cur), "Sampling: N samples per problem; REBASE / beam search: width (finished solutions per "
                           "problem). FLOPs and tokens are means per problem.")

    rep.heading("Reward model")
    info = rrm.info
    m = info.get("heldout_metrics")
    if m:
        rep.text(
            f"Trained here: a logistic value head on the policy's first {info.get('layers')} layers (features "
            f"{info.get('features')}: {describe_features(info.get('features') or [])}), labels from the grader (last steps) and "
            f"{STEP_LABEL_SOURCES.get(info.get('labels', {}).get('method'), 'no intermediate labels')}, "
            f"cross-fitted over {len(m.get('per_fold', {}))} folds of problems. "
            f"Held out (each solution scored by the head that did not see its problem): AUC {m['auc']:.3f}, "
            f"balanced accuracy {m['balanced_accuracy']:.3f} at threshold 0.5 (chance: 0.5 for both), accuracy "
            f"{m['accuracy']:.3f} vs {m['majority_class_accuracy']:.3f} for always guessing the majority class; "
            f"n={m['n']} solutions, {m['positives']} correct."
            + (f" Within a problem (what voting and best-of-N use): mean AUC {m['within_problem_auc']:.3f} over the "
               f"{m['mixed_problems']} problems with both right and wrong samples." if "within_problem_auc" in m else ""))
        labels = info.get("labels", {})
        rep.table(pd.DataFrame([{"what": k, "value": str(v)} for k, v in labels.items()]), "Training data")
        if info.get("saved_to"):
            rep.text(f"Saved (head, config, provenance) to `{Path(info['saved_to']).name}/`; reload with "
                     f"`harness.reward.models.EmbeddedHeadRM.load(path)` or `reward_model.path=<that folder>`.")
        run.save_json("reward_model_metrics.json", info)
        if rrm.heldout is not None:
            run.save_csv("reward_model_heldout.csv", rrm.heldout)
    else:
        rep.text(f"Loaded: {info}")

    if search_stats:
        rep.heading("Tree searches")
        rep.table(pd.DataFrame(search_stats), "Nodes expanded and finished solutions over all problems; steps drawn "
                                              "vs reused from the sample store (cumulative over the searches).")

    rep.heading("Beside the paper (published numbers are the paper's, for its models)")
    side = _published(cur, exp.problems.problems[0].dataset, model, list(co.published.models))
    if len(side):
        rep.table(_side_view(side), "Published (the paper's models, labelled by model, with source) beside the regenerated "
                              "number at the same strategy and budget (this run, this model; value = accuracy). Empty "
                              "regenerated cells: that budget was not run here.")
        run.save_csv("published_side_by_side.csv", side)
    else:
        rep.text("No published numbers for this dataset in results/published/compute_optimal.yaml.")

    rep.finish(claims, run.timings, run.draws)
    return rep.write(run.path("report.md"))
