"""Large Language Monkeys (Brown et al., 2024, arXiv 2407.21787), as its algorithm box reads:

    for each problem x:  draw k samples y_1..y_k ~ LM(· | prompt(x)) at temperature T   (the store: each drawn once)
                         [score each y_i with a reward model, when one is configured]
    coverage(k)   = E_x[ pass@k ]                               (unbiased estimator over n >= k samples)
    fit           log coverage(k) ≈ a · k^b                     (exponentiated power law)
    selection(k)  = E_x E_{S ⊂ samples, |S|=k}[ pick(S) correct ] for majority vote / reward model
    claims:       coverage keeps rising with k; selection saturates well below it.

On CPU the same measurements run a second time per level of the difficulty ladder (`monkeys.ladder`), with the
SFT warm start, which sits at the edge of its ability there (the embedded base model solves almost no GSM8K).
"""
from __future__ import annotations

from omegaconf import DictConfig

from harness.cli import hydra_entry
from harness.pipeline.experiment import prompt_from_cfg, setup_experiment
from harness.reporting.run import start_run
from replications.monkeys import analysis, report
from replications.monkeys.config import check_config


def monkeys(cfg: DictConfig) -> None:
    check_config(cfg)
    run = start_run(cfg, "monkeys")
    ladder_on = bool(cfg.monkeys.ladder.enabled)
    # the ladder's model samples first, so the run's model is loaded once, for the rest of the run
    exp = setup_experiment(cfg, run, load=not ladder_on)
    spec = prompt_from_cfg(cfg.prompt)

    ladder_draw = None
    if ladder_on:
        with run.stage("ladder: repeated sampling"):
            ladder_draw = analysis.sample_ladder(exp, cfg)
    with run.stage("repeated sampling"):
        graded = exp.sample_and_grade(spec, n=cfg.samples)
    if cfg.mode == "sample":
        return
    if cfg.monkeys.reward_model:
        with run.stage("reward model scoring"):
            graded = analysis.score_with_reward_model(exp, spec, graded, cfg)

    with run.stage("coverage and fit"):
        results = analysis.analyse(graded, cfg)
        if ladder_draw is not None:
            results.ladder = analysis.analyse_ladder(ladder_draw, cfg)
    with run.stage("greedy baseline (ours vs lm-eval)"):
        results.greedy = analysis.greedy_baselines(exp, cfg)

    with run.stage("report"):
        claims = analysis.check_claims(results, cfg)
        path = report.write(run, exp, spec, results, claims, cfg)
    print(f"report: {path}")


main = hydra_entry("monkeys", monkeys)

if __name__ == "__main__":
    main()
