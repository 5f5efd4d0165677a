"""Easy-to-Hard Generalization (Sun et al. 2024) with Hase et al.'s Supervision Gap Recovered."""
