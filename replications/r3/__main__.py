"""R3 (Xi et al. 2024, arXiv 2402.05808): reverse curriculum reinforcement learning from outcome rewards.

    pi_0 = SFT(base, reference rationales)                       (model=smollm2_135m_sft: the ladder warm start)
    cut each demonstration into steps s_1..s_S (one per line; the answer line closes s_S)
    for stage k = 1..K:                                          (reverse; `mixed`: k ~ U{1..S} per example)
        start state of x: prompt(x) + s_1..s_{max(S-k, 0)}       (the last stage: the question alone)
        pi_k = RL(pi_{k-1}, start states, reward r = 1 correct | 0.2 wrong answer | 0 none, KL to pi_0)
    baseline: the same RL steps and samples from the question alone (outcome-only RL)
    evaluate pi_0, the baseline and R3: greedy pass@1 per ladder level

The optimiser is GRPO (TRL 1.16 has no PPO trainer), not the paper's PPO. `python -m replications.r3`
runs both arms on the ladder; rerunning the same command resumes a killed run at the stage where it stopped.
"""
from __future__ import annotations

from omegaconf import DictConfig

from harness.cli import hydra_entry
from harness.reporting.run import start_run
from replications.r3 import loop, report


def r3(cfg: DictConfig) -> None:
    run = start_run(cfg, "r3")
    recipe = loop.setup(cfg, run)
    results = recipe.run_all()
    with run.stage("report"):
        path = report.write(run, recipe, results, cfg)
    print(f"report: {path}")


main = hydra_entry("r3", r3)

if __name__ == "__main__":
    main()
