"""ReST (Gulcehre et al. 2023, arXiv 2308.08998) in its ReST-EM form (Singh et al. 2023, arXiv 2312.06585):

    policy_0 = base model
    for i in 1..I:
        Grow:    D_i = {(x, y_s) : x in train problems, y_s ~ policy_{i-1}(. | prompt(x)), s = 1..N}
        Improve: keep y with reward r(x, y) > tau (ReST-EM: r = 1[answer correct], tau = 0.5),
                 at most C per problem (+ a fraction of reference solutions, ReST),
                 policy_i = fine-tune(base (ReST-EM) | policy_{i-1} (ReST), kept) with loss on the solution tokens
        Evaluate policy_i on held-out test problems: greedy pass@1, pass@k and maj@k from samples.

`python -m replications.rest` runs one iteration on the ladder from the SFT warm start (levels 1-3) on levels
4-6, given as question + final answer only; kept samples must also have every step line right; an
equal-steps control fine-tuned on the reference solutions of the same problems runs beside it, and the
claims are paired bootstrap differences over the same test problems. `rest=gsm8k` is the former default
(the embedded model on GSM8K subsets). Rerunning the same command resumes a killed run at the stage where
it stopped (ledger.json in the run directory).
"""
from __future__ import annotations

from harness.pipeline.recipe import recipe_entry
from replications.rest import loop, report

main = recipe_entry("rest", loop.setup, report.write)

if __name__ == "__main__":
    main()
