"""The ReST report: per-iteration test accuracy with CIs, Grow coverage and kept counts, published
ReST-EM numbers beside ours (labelled by model), the real CPU cost of each stage, and the paper's claims."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from harness.reporting.paths import portable
from harness.selection.metrics import bootstrap_ci
from harness.reporting.plots import curve_plot
from harness.reporting.published import load_published
from harness.reporting.report import Report, format_estimate, print_claims
from harness.reporting.run import Run
from replications.rest import analysis


def _pct(v: float) -> str:
    return f"{v * 100:.1f}%"


def _iteration_label(i: int, results: dict) -> str:
    if i == 0:
        return "0 (base)"
    ev = results["evals"][i]
    ref = ev["policy"]
    return f"{i} ({'base: nothing kept' if ref['kind'] == 'base' else Path(ref['path']).name})"


def _wide_accuracy(acc: pd.DataFrame, results: dict, per_iter: dict) -> pd.DataFrame:
    rows = []
    for i in sorted(per_iter):
        row: dict[str, Any] = {"iteration": _iteration_label(i, results)}
        if i > 0:
            steps = [s for key, s in results["improves"].items() if key.startswith(f"{i}.")]
            last = steps[-1] if steps else {}
            row["trained on"] = f"{last.get('kept_samples', 0)} samples + {last.get('references', 0)} refs"
        else:
            row["trained on"] = ""
        for metric in acc["metric"].unique():
            r = acc[(acc["iteration"] == i) & (acc["metric"] == metric)]
            if not r.empty:
                r = r.iloc[0]
                row[metric] = format_estimate(r["value"], r["ci_low"], r["ci_high"], int(r["n_problems"]))
        rows.append(row)
    return pd.DataFrame(rows)


def _per_level(test, per_iter: dict, control_scores) -> pd.DataFrame | None:
    levels = [p.metadata.get("level") for p in test.problems]
    if any(level is None for level in levels) or per_iter[0].greedy is None:
        return None
    arms = {_iteration_label_short(i): sc.greedy for i, sc in sorted(per_iter.items())}
    if control_scores is not None and control_scores.greedy is not None:
        arms["control"] = control_scores.greedy
    rows = []
    for level in sorted(set(levels)):
        mask = [lv == level for lv in levels]
        row: dict[str, Any] = {"level": level}
        for name, values in arms.items():
            v = values[mask]
            row[name] = format_estimate(*bootstrap_ci(v), len(v))
        rows.append(row)
    return pd.DataFrame(rows)


def _iteration_label_short(i: int) -> str:
    return "base" if i == 0 else f"iteration {i}"


def _control_row(control_acc: pd.DataFrame, step: dict) -> pd.DataFrame:
    row: dict[str, Any] = {"iteration": "control (references, equal steps)",
                           "trained on": f"{step.get('examples', 0)} reference solutions" if step.get("checkpoint")
                           else f"not trained ({step.get('skipped', '')})"}
    for r in control_acc.to_dict("records"):
        row[r["metric"]] = format_estimate(r["value"], r["ci_low"], r["ci_high"], int(r["n_problems"]))
    return pd.DataFrame([row])


def _published(cfg: DictConfig, acc: pd.DataFrame, last: int, dataset: str, model: str) -> pd.DataFrame:
    pub = load_published("rest")  # validated at start-up (harness.cli.check_startup)
    wanted = set(cfg.published.models) if cfg.get("published") else None
    rows = []
    for e in pub:
        if wanted is not None and e.model.split(" (")[0] not in wanted:
            continue
        if e.dataset not in ("math", "gsm8k"):  # APPS (code) is out of this suite's scope
            continue
        ours = "not measured here"
        if e.metric == "pass_at_1" and "iteration" in e.setting and len(e.setting) == 1:
            it = int(e.setting["iteration"])
            ours = analysis.estimate_text(acc, it, "greedy pass@1") if it <= last else f"not run (iterations={last})"
        elif e.metric == "majority_vote":
            k = int(e.setting.get("k", 0))
            row_it = last if "ReST" in e.model else 0
            ours = analysis.estimate_text(acc, row_it, f"maj@{k}")
            if ours == "n/a":
                ours = f"not drawn (k={k} > rest.eval.samples)"
        elif e.metric == "accuracy_gain":
            g0 = acc[(acc["iteration"] == 0) & (acc["metric"] == "greedy pass@1")]
            gl = acc[(acc["iteration"] == last) & (acc["metric"] == "greedy pass@1")]
            if not g0.empty and not gl.empty:
                ours = f"{(gl['value'].iloc[0] - g0['value'].iloc[0]) * 100:+.1f} points (iteration {last} vs base)"
        value = f"{e.value * 100:.2f}%" if e.unit == "fraction" else f"{e.value:g} {e.unit}"
        rows.append({
            "published model": e.model,
            "dataset": e.dataset,
            "metric": e.metric,
            "setting": ", ".join(f"{k}={v}" for k, v in e.setting.items()),
            "published": ("≈" if e.approximate else "") + value,
            f"this run ({model}, {dataset})": ours,
            "source": e.label(),
        })
    return pd.DataFrame(rows)


def _cost_table(run: Run, results: dict) -> pd.DataFrame:
    ledger = run.ledger()
    tokens: dict[str, int] = {}
    for key, value in ledger.items():
        if not isinstance(value, dict):
            continue
        t = value.get("generated_tokens")
        for sub in ("greedy_info", "samples_info"):
            if sub in value:
                t = (t or 0) + value[sub]["generated_tokens"]
        if t:
            tokens[key] = t
    label_to_key = {"eval base": "eval/0", "control 1 (references, equal steps)": "control/1",
                    "eval control 1": "eval/control1"}
    for key in ledger:
        if key.startswith("improve/"):
            label_to_key[f"improve {key[8:]} (filter + fine-tune)"] = key
        elif key.startswith("grow/"):
            label_to_key[f"grow {key[5:]}"] = key
        elif key.startswith("eval/") and key != "eval/0":
            label_to_key[f"eval {key[5:]}"] = key
    rows = []
    for label, seconds in run.timings.items():
        key = label_to_key.get(label)
        t = tokens.get(key) if key else None
        extra = ""
        if label.startswith(("improve", "control 1 (")):
            step = (results["improves"].get(label.split()[1]) if label.startswith("improve")
                    else results.get("control", {}).get("improve"))
            if step and step.get("checkpoint"):
                extra = f"{step['steps']} optimizer steps on {step['examples']} examples; trainer {step['train_seconds']:.0f} s"
        rows.append({
            "stage": label,
            "wall time (s)": round(float(seconds), 1),
            "generated tokens": t if t else "",
            "tokens/s": round(t / seconds, 1) if t and seconds else "",
            "load avg (1 min) at end": ledger.get(key, {}).get("load_avg_1m", "") if key else "",
            "notes": extra,
        })
    total = sum(float(s) for s in run.timings.values())
    rows.append({"stage": "total", "wall time (s)": round(total, 1), "generated tokens": sum(tokens.values()),
                 "tokens/s": "", "notes": ""})
    return pd.DataFrame(rows)


def write(run: Run, loop: Any, results: dict, cfg: DictConfig) -> Path:
    s = loop.settings
    ks = [int(k) for k in s.eval.ks]
    n_boot = int(cfg.get("bootstrap", {}).get("num_resamples", 2000)) if cfg.get("bootstrap") else 2000
    ids = loop.test.ids
    per_iter = {int(i): analysis.scores(ev, ids, ks) for i, ev in results["evals"].items()}
    acc = analysis.accuracy_table(per_iter, ks, n_boot, seed=0)
    run.save_csv("accuracy_per_iteration.csv", acc)
    grows = analysis.grow_table(results["grows"], results["improves"], s.thresholds)
    run.save_csv("grow_improve.csv", grows)
    models = tuple(cfg.published.models) if cfg.get("published") else ()
    control = results.get("control")
    control_scores = analysis.scores(control["eval"], ids, ks) if control else None
    claims = analysis.check_claims(per_iter, ks, n_boot, seed=0, context=analysis.PublishedContext(models),
                                   control=control_scores)
    last = max(per_iter)

    tr = loop.training
    model = cfg.model.name
    title = f"{model}, {s.algorithm}, {loop.train.name} -> {loop.test.name}"
    rep = Report(f"ReST / ReST-EM (arXiv 2308.08998, 2312.06585), regenerated: {title}")
    rep.text(
        f"Algorithm `{s.algorithm}` ({'each Improve fine-tunes the base model' if s.algorithm == 'rest_em' else 'each Improve continues from the last policy'}), "
        f"{s.iterations} Grow/Improve iterations. Grow: {len(loop.train)} training problems from `{portable(loop.train.source)}` "
        f"({_subset(loop.train)}), N = {s.samples_per_problem} samples each at temperature {cfg.sampling.temperature}, "
        f"top-k {cfg.sampling.top_k}, top-p {cfg.sampling.top_p}, max {cfg.sampling.max_new_tokens} new tokens; prompt `{loop.spec.name}`. "
        f"Improve: reward `{s.reward}` from grader `{cfg.grader.method}`, keep reward > {list(s.thresholds)}, "
        f"at most {s.max_per_problem} per problem{', every step line checked' if s.step_check else ''}, "
        f"reference fraction {s.reference_fraction}; training `{tr.name}` "
        f"({tr.finetune}, lr {tr.learning_rate} {tr.lr_scheduler} with warmup {tr.warmup}, {tr.epochs} epochs, batch {tr.batch_size}, "
        f"loss on the solution tokens). Test: {len(loop.test)} problems from `{portable(loop.test.source)}` ({_subset(loop.test)}); "
        f"greedy pass@1 (max {s.eval.greedy_max_new_tokens} new tokens) and pass@k / maj@k from {s.eval.samples} samples "
        f"per problem at temperature {s.eval.sampling.temperature}, top-p {s.eval.sampling.top_p}, top-k {s.eval.sampling.top_k}. "
        "Every estimate is a mean over test problems with a 95% percentile-bootstrap CI over problems; pass@k is the "
        "unbiased estimator, maj@k the expected majority vote of a random size-k subset of the samples."
    )

    rep.heading("Test accuracy per iteration")
    wide = _wide_accuracy(acc, results, per_iter)
    if control_scores is not None:
        control_acc = analysis.accuracy_table({1: control_scores}, ks, n_boot, seed=0)
        run.save_csv("control_arm.csv", control_acc)
        wide = pd.concat([wide, _control_row(control_acc, control["improve"])], ignore_index=True)
    rep.table(wide, caption="Held-out test accuracy after each iteration (iteration 0 = the base model); the control "
                            "arm is iteration 1's Improve step on reference solutions of the same problems, as many "
                            "examples (equal optimizer steps).")
    fig_df = acc[acc["metric"].isin(["greedy pass@1", f"pass@{max(ks)}", f"maj@{max(ks)}"])]
    if len(fig_df):
        fig = curve_plot(fig_df, "iteration", "value", run.path("accuracy_per_iteration.png"), group="metric", logx=False,
                         title=f"ReST test accuracy per iteration: {title}", xlabel="iteration (0 = base)",
                         ylabel="fraction of test problems solved")
        rep.figure(fig, "Test accuracy per iteration; bands: bootstrap 95% CI over test problems")

    by_level = _per_level(loop.test, per_iter, control_scores)
    if by_level is not None:
        rep.table(by_level, caption="Greedy pass@1 per ladder level of the test problems (the levels are chosen where "
                                    "the base model solves about 10-70%, so a change can show either way).")
        run.save_csv("accuracy_per_level.csv", by_level)

    rep.heading("Grow and Improve: coverage of the training problems and kept samples")
    rep.table(grows.assign(**{
        "sample accuracy": grows["sample accuracy"].map(_pct),
        "coverage (pass@N)": [_coverage_text(results["grows"][int(i)]) for i in grows["iteration"]],
    }), caption="Each Grow step samples from the policy of the previous iteration; coverage is the share of training "
                "problems with at least one correct sample among N. Train loss: completion NLL on the kept data before and after fine-tuning.")
    cov = pd.DataFrame([row for i, g in results["grows"].items() for row in _coverage_rows(int(i), g)])
    if len(cov):
        fig2 = curve_plot(cov, "iteration", "value", run.path("grow_coverage.png"), group="metric", logx=False,
                          title="Grow steps: training-problem coverage and kept samples", xlabel="iteration",
                          ylabel="fraction")
        rep.figure(fig2, "Coverage (pass@N) of the training problems and per-sample accuracy at each Grow step")

    rep.heading("Beside the paper (published numbers are the paper's, for its models and MATH)")
    pub = _published(cfg, acc, last, loop.test.name, model)
    if pub.empty:
        rep.text("No published ReST-EM numbers found in results/published/rest.yaml: nothing to compare with.")
    else:
        rep.text("The paper trains PaLM 2 models on MATH. Numbers it gives only as figure bars are not in "
                 "results/published/rest.yaml (see its `missing` list). Our column is the same metric for this run's "
                 "model and dataset: a different model and usually a different dataset, not a like-for-like comparison.")
        rep.table(pub)
        run.save_csv("published_side_by_side.csv", pub)

    rep.heading("What it cost on this machine")
    load = os.getloadavg()
    rep.text(f"Wall time of each stage as measured ({os.cpu_count()} cores; load average at report time "
             f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}: other jobs sharing the CPU slow every stage). "
             "A resumed run adds the time of each attempt.")
    cost = _cost_table(run, results)
    rep.table(cost)
    run.save_csv("stage_costs.csv", cost)

    rep.heading("Checkpoints")
    ckpts = [(k, v) for k, v in results["improves"].items() if v.get("checkpoint")]
    if ckpts:
        rep.bullets([f"`{v['checkpoint']}` (model `{v['model']}`, {v['examples']} examples, data sha256 `{v['sha256'][:12]}…`)"
                     for _, v in ckpts])
        conf_dir = os.path.relpath(Path(run.dir) / "conf")
        rep.text(f"Load one in any replication: `python -m replications.<paper> 'hydra.searchpath=[file://{conf_dir}]' "
                 f"model={cfg.paper}_iter{ckpts[-1][0].split('.')[0]}` (or `model.package=null model.file=null "
                 f"model.path=<checkpoint>`).")
    else:
        rep.text("No checkpoint was written: no Improve step had training examples.")

    rep.claims.extend(claims)
    rep.claims_section()
    path = rep.write(run.path("report.md"))
    run.save_json("results.json", analysis.to_jsonable({
        "accuracy": acc.to_dict("records"), "grow_improve": grows.to_dict("records"),
        "claims": [c.__dict__ for c in claims], "stages": run.timings,
    }))
    print(wide.to_string(index=False))
    print_claims(claims)
    return path


def _subset(ps) -> str:
    sel = ps.selection or {}
    return ", ".join(f"{k}={v}" for k, v in sel.items() if v is not None) or "all"


def _coverage_values(g: dict) -> list[float]:
    return [1.0 if c > 0 else 0.0 for c in g.get("per_problem_correct", {}).values()]


def _coverage_text(g: dict) -> str:
    vals = _coverage_values(g)
    if not vals:
        return _pct(g["coverage"])
    m, lo, hi = bootstrap_ci(vals)
    return format_estimate(m, lo, hi, len(vals))


def _coverage_rows(i: int, g: dict) -> list[dict]:
    per = g.get("per_problem_correct", {})
    if not per:
        return [{"iteration": i, "metric": f"coverage pass@{g['n']}", "value": g["coverage"]}]
    out = []
    for metric, vals in ((f"coverage pass@{g['n']}", _coverage_values(g)),
                         ("per-sample accuracy", [c / g["n"] for c in per.values()])):
        m, lo, hi = bootstrap_ci(vals)
        out.append({"iteration": i, "metric": metric, "value": m, "ci_low": lo, "ci_high": hi})
    return out
