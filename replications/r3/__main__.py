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

from harness.pipeline.recipe import recipe_entry
from replications.r3 import loop, report

main = recipe_entry("r3", loop.setup, report.write)

if __name__ == "__main__":
    main()
