"""Grade stored samples once (grades are cached beside the samples) and tabulate them per problem."""
from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Sequence

import pandas as pd

from harness.data.problems import Problem
from harness.grading.extract import MODES
from harness.grading.grader import Grader, check_mode, grader_version, normalize_for_vote
from harness.store.samples import StoreEntry

log = logging.getLogger(__name__)


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def grades_sidecar(dataset: str, method: str, timeout: float) -> str:
    """The sidecar name for grades: keyed by everything that can change a verdict besides the sample and
    the reference (both modes' verdicts are stored, so the configured mode is not part of it)."""
    key = {"dataset": dataset, "method": method, "version": grader_version(method if dataset == "math" else "gsm8k"),
           "modes": list(MODES), "timeout": float(timeout)}
    return f"grades-{method}-{_digest(key)}"


def grade_samples(
    entry: StoreEntry,
    samples: pd.DataFrame,
    problems: Sequence[Problem],
    method: str = "math_verify",
    timeout: float = 5.0,
    workers: int = 2,
    mode: str = "strict",
) -> pd.DataFrame:
    """`samples` plus columns correct (under `mode`), correct_strict, correct_lenient, answered, extracted,
    status, vote_answer.

    Grades are kept in a sidecar of the store entry keyed by (problem_id, index) and named by
    `grades_sidecar`, so regrading a resumed or extended run only grades the new samples. A timeout or a
    grader crash is never stored: those samples are graded again next time, and counted in
    `out.attrs["unsettled"]` ({"timeout": n, "error": n}) meanwhile (they count as wrong).
    """
    check_mode(mode)
    by_id = {p.id: p for p in problems}
    dataset = problems[0].dataset if problems else "gsm8k"
    sidecar = grades_sidecar(dataset, method, timeout)
    cached = {(r["problem_id"], int(r["index"])): r for r in entry.read_sidecars(sidecar)}
    todo = samples[[(pid, int(i)) not in cached for pid, i in zip(samples["problem_id"], samples["index"])]]
    unsettled = {"timeout": 0, "error": 0}
    if len(todo):
        finish = list(todo["finish_reason"]) if "finish_reason" in todo.columns else None
        with Grader(dataset, method=method, timeout=timeout, workers=workers, mode=mode) as grader:
            results = grader.grade_many(list(todo["text"]), [by_id[pid].answer for pid in todo["problem_id"]], finish)
        rows = [
            {"problem_id": pid, "index": int(i), "correct_strict": r.correct_strict, "correct_lenient": r.correct_lenient,
             "answered": r.answered, "extracted_strict": r.extracted_strict, "extracted_lenient": r.extracted_lenient,
             "status_strict": r.status_strict,
             "status_lenient": r.status_lenient, "settled": r.settled}
            for pid, i, r in zip(todo["problem_id"], todo["index"], results)
        ]
        for r in rows:
            for status in {r["status_strict"], r["status_lenient"]} & set(unsettled):
                unsettled[status] += 1
        entry.append_sidecar(sidecar, [{k: v for k, v in r.items() if k != "settled"} for r in rows if r["settled"]])
        cached.update({(r["problem_id"], r["index"]): r for r in rows})
        if any(unsettled.values()):
            log.warning("grading %s: %d timeouts, %d errors (counted wrong now, not stored, regraded next time)",
                        entry.dir.name, unsettled["timeout"], unsettled["error"])
    out = samples.copy()
    rows = [cached[(pid, int(i))] for pid, i in zip(out["problem_id"], out["index"])]
    out["correct_strict"] = [bool(r["correct_strict"]) for r in rows]
    out["correct_lenient"] = [bool(r["correct_lenient"]) for r in rows]
    out["correct"] = out[f"correct_{mode}"]
    out["answered"] = [bool(r["answered"]) for r in rows]
    # object columns: pandas >= 3 infers a string dtype from a list of str and None and turns None into NaN
    extracted = [r[f"extracted_{mode}"] for r in rows]
    out["extracted"] = pd.Series(extracted, index=out.index, dtype=object)
    out["status"] = pd.Series([r[f"status_{mode}"] for r in rows], index=out.index, dtype=object)
    out["vote_answer"] = pd.Series([normalize_for_vote(a, dataset) for a in extracted], index=out.index, dtype=object)
    out.attrs["unsettled"] = unsettled
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
    (problem_id, index), named by the reward model's name, aggregation and `identity` (a digest of its
    weights and config): a retrained head does not reuse the old scores.
    """
    by_id = {p.id: p for p in problems}
    how = aggregation or getattr(getattr(reward_model, "config", None), "aggregation", None) or "last"
    # A stand-in without `identity` (a test double) is keyed by its class: it has no weights to change.
    identity = getattr(reward_model, "identity", None) or f"{type(reward_model).__module__}.{type(reward_model).__qualname__}"
    sidecar = f"rm-{reward_model.name}-{how}-{_digest({'identity': identity, 'aggregation': how})}"
    cached = {(r["problem_id"], int(r["index"])): r["score"] for r in entry.read_sidecars(sidecar)}
    todo = graded[[(pid, int(i)) not in cached for pid, i in zip(graded["problem_id"], graded["index"])]]
    if len(todo):
        scores = reward_model.score([by_id[pid].question for pid in todo["problem_id"]], list(todo["text"]), how)
        fresh = [{"problem_id": pid, "index": int(i), "score": float(sc)}
                 for pid, i, sc in zip(todo["problem_id"], todo["index"], scores)]
        entry.append_sidecar(sidecar, fresh)
        cached.update({(r["problem_id"], r["index"]): r["score"] for r in fresh})
    return graded.assign(scores=[cached[(pid, int(i))] for pid, i in zip(graded["problem_id"], graded["index"])])
