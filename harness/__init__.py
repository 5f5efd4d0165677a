"""Shared harness of llm-replications, grouped by the way data travels through a run:

    data/       problems (GSM8K, MATH, the ladder) and the prompts that render them
    models/     loading a model and identifying its weights by content
    sampling/   samplers behind one interface (fast CPU, reference generate, vLLM)
    store/      the content-keyed sample store and the caches beside it (grades, scores)
    grading/    answer extraction, the timed grader, graded samples, the lm-eval baseline
    selection/  pass@k, votes, best-of-k, tree search, FLOPs, the coverage fit
    reward/     outcome / process reward models and their training
    training/   SFT / DPO / RL with TRL, content-identified checkpoints
    pipeline/   an experiment's set-up and the loop for papers whose policy changes
    reporting/  run directories, reports, claims, plots, published numbers
"""
