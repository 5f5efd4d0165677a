"""Grade stored samples once (grades are cached beside the samples) and tabulate them per problem."""
from __future__ import annotations

from typing import Any, Sequence

import pandas as pd

from harness.data.problems import Problem
from harness.grading.grader import Grader, normalize_for_vote
from harness.store.samples import StoreEntry


def grade_samples(
    entry: StoreEntry,
    samples: pd.DataFrame,
    problems: Sequence[Problem],
    method: str = "math_verify",
    timeout: float = 5.0,
    workers: int = 2,
) -> pd.DataFrame:
    """`samples` plus columns correct, extracted, status, vote_answer (graded by `method`).

    Grades are kept in a sidecar of the store entry keyed by (problem_id, index), so regrading a
    resumed or extended run only grades the new samples.
    """
    by_id = {p.id: p for p in problems}
    dataset = problems[0].dataset if problems else "gsm8k"
    sidecar = f"grades-{method}"
    cached = {(r["problem_id"], int(r["index"])): r for r in entry.read_sidecars(sidecar)}
    todo = samples[[(pid, int(i)) not in cached for pid, i in zip(samples["problem_id"], samples["index"])]]
    if len(todo):
        with Grader(dataset, method=method, timeout=timeout, workers=workers) as grader:
            results = grader.grade_many(list(todo["text"]), [by_id[pid].answer for pid in todo["problem_id"]])
        fresh = [
            {"problem_id": pid, "index": int(i), "correct": bool(r.correct), "extracted": r.extracted, "status": r.status}
            for pid, i, r in zip(todo["problem_id"], todo["index"], results)
        ]
        entry.append_sidecar(sidecar, fresh)
        cached.update({(r["problem_id"], r["index"]): r for r in fresh})
    out = samples.copy()
    rows = [cached[(pid, int(i))] for pid, i in zip(out["problem_id"], out["index"])]
    out["correct"] = [bool(r["correct"]) for r in rows]
    out["extracted"] = [r["extracted"] for r in rows]
    out["status"] = [r["status"] for r in rows]
    out["vote_answer"] = [normalize_for_vote(r["extracted"], dataset) for r in rows]
    return out


def per_problem(graded: pd.DataFrame, extra: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One record per problem, samples in index order: n, c, and lists of answers / correctness."""
    records = []
    for pid, g in graded.sort_values(["problem_id", "index"]).groupby("problem_id", sort=True):
        rec = {
            "problem_id": pid,
            "n": len(g),
            "c": int(g["correct"].sum()),
            "answers": list(g["vote_answer"]),
            "correct": [bool(x) for x in g["correct"]],
        }
        for col in extra:
            rec[col] = list(g[col])
        records.append(rec)
    return records


def reward_scores(entry: StoreEntry, graded: pd.DataFrame, problems: Sequence[Problem], reward_model: Any,
                  aggregation: str | None = None) -> pd.DataFrame:
    """`graded` plus a `scores` column: the reward model's score of each sample, cached beside the samples.

    Scoring is a forward pass per sample, so scores are kept in a sidecar of the store entry keyed by
    (problem_id, index) and the reward model's name + aggregation, like grades.
    """
    by_id = {p.id: p for p in problems}
    how = aggregation or getattr(getattr(reward_model, "config", None), "aggregation", None) or "last"
    sidecar = f"rm-{reward_model.name}-{how}"
    cached = {(r["problem_id"], int(r["index"])): r["score"] for r in entry.read_sidecars(sidecar)}
    todo = graded[[(pid, int(i)) not in cached for pid, i in zip(graded["problem_id"], graded["index"])]]
    if len(todo):
        scores = reward_model.score([by_id[pid].question for pid in todo["problem_id"]], list(todo["text"]), how)
        fresh = [{"problem_id": pid, "index": int(i), "score": float(sc)}
                 for pid, i, sc in zip(todo["problem_id"], todo["index"], scores)]
        entry.append_sidecar(sidecar, fresh)
        cached.update({(r["problem_id"], r["index"]): r["score"] for r in fresh})
    return graded.assign(scores=[cached[(pid, int(i))] for pid, i in zip(graded["problem_id"], graded["index"])])
