"""The Monkeys report: figures, tables with n and CIs, published numbers beside ours, claim checks."""
from __future__ import annotations

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
from replications.monkeys.analysis import LadderResults, MonkeysResults, fitted_curve

METRIC_LABELS = {"majority_vote": "majority vote", "rm_best_of_k": "reward model best-of-k",
                 "rm_weighted_vote": "reward-weighted majority vote"}


def _figures(run: Run, res: MonkeysResults, title: str) -> list[tuple[Path, str]]:
    overlays = []
    if res.fit is not None:
        overlays.append((fitted_curve(res.fit, res.n_samples),
                         f"fit exp({res.fit.a:.2f}·k^{res.fit.b:.2f})"))
    if res.coverage_by_verdict:  # strict and lenient grading side by side
        by_verdict = pd.concat([c.assign(verdict=f"{v} grading") for v, c in res.coverage_by_verdict.items()],
                               ignore_index=True)
        cov = curve_plot(by_verdict, "k", "coverage", run.path("coverage.png"), group="verdict", overlays=overlays,
                         title=f"Coverage vs samples: {title}", xlabel="samples per problem k",
                         ylabel="coverage (pass@k)")
    else:
        cov = curve_plot(res.coverage, "k", "coverage", run.path("coverage.png"), overlays=overlays,
                         title=f"Coverage vs samples: {title}", xlabel="samples per problem k",
                         ylabel="coverage (pass@k)")
    curves = [res.coverage.rename(columns={"coverage": "value"}).assign(method="coverage (pass@k)")]
    if len(res.selection):
        curves += [g.assign(method=METRIC_LABELS.get(m, m)) for m, g in res.selection.groupby("method", sort=False)]
    both = pd.concat(curves, ignore_index=True)[["method", "k", "value", "ci_low", "ci_high"]]
    sel = curve_plot(both, "k", "value", run.path("selection.png"), group="method",
                     title=f"Coverage vs selection: {title}", xlabel="samples per problem k",
                     ylabel="fraction of problems solved")
    return [(cov, "Coverage (pass@k) vs k with the exponentiated power-law fit; band: bootstrap 95% CI over problems"),
            (sel, "Coverage vs majority vote (and reward-model selection when configured): selection saturates")]


def _estimates(curve: pd.DataFrame, column: str) -> list[str]:
    return [format_estimate(getattr(r, column), r.ci_low, r.ci_high, int(r.n_problems)) for r in curve.itertuples()]


def coverage_frame(res: MonkeysResults) -> pd.DataFrame:
    """coverage.csv: the configured grading's coverage, and beside it each verdict's (coverage_strict, ...)."""
    out = res.coverage.copy()
    for verdict, curve in res.coverage_by_verdict.items():
        out = out.merge(curve[["k", "coverage", "ci_low", "ci_high"]].rename(columns={
            "coverage": f"coverage_{verdict}", "ci_low": f"ci_low_{verdict}", "ci_high": f"ci_high_{verdict}"}),
            on="k", how="left")
    return out


def _published(res: MonkeysResults, dataset: str, our_model: str, models: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(compact table for the report, full side-by-side frame for the CSV)."""
    entries = [e for e in load_published("monkeys").select(metric="coverage", dataset=dataset) if e.model in models]
    full = side_by_side(res.coverage.assign(metric="coverage", model=our_model), entries, join_on=["metric", "k"])
    ours = {int(r.k): r for r in res.coverage.itertuples()}
    rows = []
    for e in sorted(entries, key=lambda e: (int(e.setting["k"]), e.model, e.source)):
        k = int(e.setting["k"])
        mine = ours.get(k)
        rows.append({
            "k": k,
            f"this run: {our_model}": format_estimate(mine.coverage, mine.ci_low, mine.ci_high, int(mine.n_problems))
            if mine is not None else f"not drawn (k > {res.n_samples})",
            "published model": e.model,
            "published coverage": f"{'≈' if e.approximate else ''}{e.value * 100:.1f}%" + (f" (n={e.n})" if e.n else ""),
            "published source": e.label(),
        })
    return pd.DataFrame(rows), full


def ladder_fit_frame(ladder: LadderResults) -> pd.DataFrame:
    """ladder_fit.csv: the power-law fit per level, or why there is none."""
    return pd.DataFrame([{"level": lv.level, "n_problems": lv.n_problems,
                          "a": lv.fit.a if lv.fit else None, "b": lv.fit.b if lv.fit else None,
                          "r2_log": lv.fit.r2_log if lv.fit else None, "n_points": lv.fit.n_points if lv.fit else 0,
                          "no_fit": lv.fit_error or ""} for lv in ladder.levels])


def _ladder_section(rep: Report, run: Run, ladder: LadderResults, cfg: DictConfig) -> None:
    settings = cfg.monkeys.ladder
    n_per_level = sorted({lv.n_problems for lv in ladder.levels})
    rep.heading(f"Coverage vs k per ladder level: {ladder.model}")
    where = f", checkpoint `{portable(ladder.policy['path'])}`" if ladder.policy.get("path") else ""
    rep.text(
        f"Model `{ladder.model}` (loaded as `{ladder.loaded_name}`{where}, weights `{ladder.identity}`) on the "
        f"difficulty ladder `{settings.dataset}` (harness/data/ladder.py), levels "
        f"{', '.join(str(lv.level) for lv in ladder.levels)}, the first {'/'.join(map(str, n_per_level))} test "
        f"problems of each; prompt `{settings.prompt}`; {ladder.n_samples} samples per problem at the run's "
        f"temperature {cfg.sampling.temperature} and top_p {cfg.sampling.top_p}, max {settings.max_new_tokens} new "
        f"tokens; grader `{cfg.grader.method}`, {cfg.grader.get('mode', 'configured')} verdicts. Coverage per level "
        f"is a mean over that level's problems with a bootstrap 95% CI over them.")
    frame = ladder.coverage_frame()
    path = curve_plot(frame.assign(level=[f"level {lv}" for lv in frame["level"]]), "k", "coverage",
                      run.path("ladder_coverage.png"), group="level",
                      title=f"Coverage vs samples per ladder level: {ladder.model}",
                      xlabel="samples per problem k", ylabel="coverage (pass@k)")
    rep.figure(path, "Coverage (pass@k) vs k, one curve per ladder level; band: bootstrap 95% CI over the level's problems")
    table = ladder.levels[0].coverage[["k"]].copy()
    for lv in ladder.levels:
        table[f"level {lv.level}"] = _estimates(lv.coverage, "coverage")
    rep.table(table, "coverage (pass@k) per ladder level")
    fits = ladder_fit_frame(ladder)
    rep.table(pd.DataFrame([{
        "level": r.level,
        "exponentiated power-law fit": (f"a = {r.a:.4f}, b = {r.b:.4f}, R² (log coverage) = {r.r2_log:.4f} on "
                                        f"{r.n_points} points" if r.n_points else f"no fit: {r.no_fit}"),
    } for r in fits.itertuples()]), "log coverage ≈ a·k^b per level, fitted as for the main curve")
    run.save_csv("ladder_coverage.csv", frame)
    run.save_csv("ladder_fit.csv", fits)
    run.save_csv("ladder_per_problem.csv", ladder.per_problem)


def write(run: Run, exp: Experiment, spec: PromptSpec, res: MonkeysResults, claims: list[Claim],
          cfg: DictConfig) -> Path:
    model, dataset = exp.model.name, exp.problems.name
    title = f"{model} on {dataset} ({res.n_problems} problems, {res.n_samples} samples each)"
    rep = Report(f"Large Language Monkeys (arXiv 2407.21787), regenerated: {title}")
    rep.text(
        f"Model `{model}` ({exp.model.num_parameters / 1e6:.1f} M parameters, `{portable(exp.model.source)}`, weights `{exp.model.identity}`); "
        f"data `{portable(exp.problems.source)}` (sha256 `{exp.problems.sha256[:16]}…`), "
        f"{res.n_problems} problems; prompt `{spec.name}`; {res.n_samples} samples per problem at "
        f"temperature {cfg.sampling.temperature}, top_p {cfg.sampling.top_p}, max {cfg.sampling.max_new_tokens} "
        f"new tokens, seed {cfg.sampling.seed}; grader `{cfg.grader.method}`. Every estimate below is a mean over "
        f"problems with a bootstrap 95% CI over problems and its n."
    )
    for path, caption in _figures(run, res, title):
        rep.figure(path, caption)

    rep.heading("Coverage and selection vs k")
    table = res.coverage[["k"]].copy()
    table["coverage (pass@k)"] = _estimates(res.coverage, "coverage")
    for verdict, curve in res.coverage_by_verdict.items():
        table[f"coverage, {verdict} grading"] = _estimates(curve, "coverage")
    for method, g in res.selection.groupby("method", sort=False) if len(res.selection) else []:
        table[METRIC_LABELS.get(method, method)] = _estimates(g, "value")
    rep.table(table, "coverage (pass@k): the configured grading; strict / lenient columns, when present, grade the "
                     "same samples both ways" if res.coverage_by_verdict else None)
    run.save_csv("coverage.csv", coverage_frame(res))
    run.save_csv("selection.csv", res.selection)
    run.save_csv("per_problem.csv", res.per_problem)

    rep.heading("Exponentiated power-law fit")
    if res.fit is None:
        rep.text(f"No fit: {res.fit_error}")
    else:
        f = res.fit
        rep.text(f"log coverage ≈ a·k^b with a = {f.a:.4f}, b = {f.b:.4f}; R² on log coverage = {f.r2_log:.4f}, "
                 f"fitted on {f.n_points} log-spaced k in [{min(f.ks_used)}, {max(f.ks_used)}] "
                 f"({res.n_problems} problems; points with zero coverage are excluded).")
        run.save_json("fit.json", {"a": f.a, "b": f.b, "r2_log": f.r2_log, "n_points": f.n_points,
                                   "ks_used": [int(k) for k in f.ks_used], "n_problems": res.n_problems})

    rep.heading("Beside the paper (published numbers are the paper's, for its models)")
    compact, full = _published(res, exp.problems.problems[0].dataset, model, list(cfg.monkeys.published.models))
    if len(compact):
        rep.table(compact, "Regenerated coverage (this run, this model, bootstrap 95% CI) beside the coverage the "
                           "paper published for its own models; ≈: read off a plot.")
        run.save_csv("published_side_by_side.csv", full)
    else:
        rep.text("No published numbers for this dataset in results/published/monkeys.yaml.")

    if res.ladder is not None:
        _ladder_section(rep, run, res.ladder, cfg)

    if res.greedy:
        g = res.greedy
        o, t = g["ours"], g["lm_eval"]
        rep.heading("Greedy baseline: ours vs lm-evaluation-harness on the same problems")
        rows = [("ours (harness sampler, temperature 0, our grader)", g["prompt"],
                 format_estimate(o["accuracy"], o["ci_low"], o["ci_high"], o["n"]))]
        for metric, value in t["metrics"].items():
            low, high = t["ci"].get(metric, (None, None))
            rows.append((f"lm-eval {t['version']} `{g['task']}` {metric}", g["task"],
                         format_estimate(value, low, high, t["n"])))
        rep.table(pd.DataFrame(rows, columns=["greedy accuracy from", "prompt", "accuracy"]))
        a = g["per_problem_agreement"]
        rep.text(f"Problem by problem, our verdict and lm-eval's `{a['metric']}` agree on {a['agree']} of {a['n']} "
                 f"problems." + (f" lm-eval deviations from a stock run: {'; '.join(t['deviations'])}."
                                 if t["deviations"] else ""))
        run.save_json("greedy_baseline.json", g)

    rep.finish(claims, run.timings, run.draws)
    return rep.write(run.path("report.md"))
