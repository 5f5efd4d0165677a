"""Per-problem test results of one policy, kept in the ledger so the report needs no model."""
from __future__ import annotations

import pandas as pd

from harness.grading.graded import per_problem


def per_problem_correct(graded: pd.DataFrame) -> dict[str, int]:
    """Greedy (n=1): problem id -> 1 if its answer is correct."""
    return {pid: int(c) for pid, c in zip(graded["problem_id"], graded["correct"])}


def per_problem_records(graded: pd.DataFrame) -> list[dict]:
    """Sampled: per problem n, c and the normalised answers with their correctness (for maj@k)."""
    return [
        {"problem_id": r["problem_id"], "n": r["n"], "c": r["c"], "answers": r["answers"], "correct": r["correct"]}
        for r in per_problem(graded)
    ]
