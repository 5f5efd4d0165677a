"""From samples to a chosen answer: pass@k, majority / weighted vote, best-of-k, tree search, FLOPs, the coverage power-law fit."""
