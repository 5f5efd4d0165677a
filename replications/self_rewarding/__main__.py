"""Self-Rewarding Language Models (Yuan et al. 2024, arXiv 2401.10020):

    M0 = the base model; SFT baseline = M0 + IFT (instruction data: here the ladder's reference solutions)
    M1 = SFT(M0 | SFT baseline, IFT + EFT)      EFT: the rubric prompt on a response with a known verdict,
                                                target = the judgement ending in "Score: N"
    for t in 1..T (T = 2: M2, M3):
        for each new prompt x:  y_1..y_N ~ M_t(. | x)              N = 4, T = 0.7, top-p 0.9
                                r_i = mean of 3 judgements of y_i by M_t with the additive 5-point rubric
                                chosen = argmax r_i, rejected = argmin r_i (dropped on a tie)
        M_{t+1} = DPO(M_t, pairs), beta = 0.1
    Evaluate M0..M_{T+1}: task accuracy, head-to-head, and each model as a judge (pairwise accuracy vs the grader).

`python -m replications.self_rewarding` runs it on the embedded model's ladder warm start; rerunning the same
command resumes a killed run at the stage where it stopped (ledger.json in the run directory).
"""
from __future__ import annotations

from harness.pipeline.recipe import recipe_entry
from replications.self_rewarding import loop, report

main = recipe_entry("self_rewarding", loop.setup, report.write)

if __name__ == "__main__":
    main()
