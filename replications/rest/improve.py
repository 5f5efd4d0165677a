"""The Improve step's data: reward the graded Grow samples, keep those above the threshold, cap per
problem, and mix in reference solutions.

ReST (Gulcehre et al. 2023) filters with F(x, y; tau) = 1[R(x, y) > tau] and raises tau at every Improve
step; ReST-EM (Singh et al. 2023) uses the binary correctness reward and caps the correct solutions kept
per problem (10 on MATH) so that easy problems do not dominate the training set.

A right final answer can come from a wrong chain (on the ladder, 13% of a probe's kept samples had a wrong
"a op b = c" line); with `step_check` a kept sample must also have every such line right, which the
ladder's one-step-per-line solutions make checkable exactly (harness.reward.judge.wrong_statements).
"""
from __future__ import annotations

import random
import re
from typing import Mapping, Sequence

import pandas as pd

from harness.data.problems import Problem
from harness.errors import ConfigError
from harness.reward.judge import wrong_statements
from harness.training import TrainingData, completion_records, reference_records


_ANSWER_IS = re.compile(r"The answer is\s*\S+\.?\s*$")


def rewards(graded: pd.DataFrame, kind: str = "correct", partial_credit: float = 0.2) -> pd.Series:
    """Reward per graded sample: `correct` is 1/0; `partial` also gives `partial_credit` to a sample whose
    final answer was extracted but is wrong (R3's outcome reward), 0 to one with no answer."""
    correct = graded["correct"].astype(bool)
    if kind == "correct":
        return correct.astype(float)
    if kind == "partial":
        answered = graded["extracted"].notna() & (graded["extracted"].astype(str).str.len() > 0)
        return correct.astype(float).where(correct, answered.astype(float) * float(partial_credit))
    raise ConfigError(f"rest.reward: '{kind}' is not one of correct, partial")


def steps_correct(graded: pd.DataFrame) -> pd.Series:
    """Per sample: True when no "a op b = c" statement of its text is wrong."""
    return graded["text"].map(lambda text: not wrong_statements(str(text))).astype(bool)


def select(
    graded: pd.DataFrame,
    threshold: float,
    max_per_problem: int | None = None,
    dedupe: bool = False,
    step_check: bool = False,
) -> pd.DataFrame:
    """Rows of `graded` (with a `reward` column) kept for fine-tuning.

    Kept: reward > threshold (and, with `step_check`, no wrong step statement). Per problem, the highest rewards first, then sample index order (samples
    are i.i.d., so index order is a random order fixed by the seed); at most `max_per_problem` kept.
    """
    if "reward" not in graded:
        raise ConfigError("select: the graded samples have no 'reward' column")
    passing = graded[graded["reward"] > threshold]
    if step_check:
        passing = passing[steps_correct(passing)] if len(passing) else passing
    passing = passing.sort_values(["problem_id", "reward", "index"], ascending=[True, False, True], kind="stable")
    if dedupe:
        passing = passing.drop_duplicates(["problem_id", "text"], keep="first")
    if max_per_problem is not None:
        passing = passing.groupby("problem_id", sort=True).head(int(max_per_problem))
    return passing.reset_index(drop=True)


def num_references(num_kept: int, fraction: float) -> int:
    """How many reference solutions make them `fraction` of a training set with `num_kept` model samples."""
    if fraction <= 0 or num_kept == 0:
        return 0
    return int(round(num_kept * fraction / (1.0 - fraction)))


def reference_completion(problem: Problem, answer_format: str | None) -> str:
    """The reference solution, ending the way the prompt asks for the final answer (a target the
    grader can read, so reference and model solutions teach one answer format)."""
    solution, answer = problem.solution.strip(), problem.answer
    if answer_format == "boxed":
        return solution if "\\boxed" in solution else f"{solution}\nThe final answer is $\\boxed{{{answer}}}$."
    if answer_format == "minerva_final_answer":
        return f"{solution}\nFinal Answer: The final answer is ${answer}$. I hope it is correct."
    if answer_format == "gsm8k_hashes":
        return f"{solution}\n#### {answer}"
    if answer_format == "the_answer_is":
        # the ladder's solutions end with this sentence already (and are what the warm start was trained on)
        return solution if _ANSWER_IS.search(solution) else f"{solution} The answer is {answer}."
    return solution


def training_data(
    graded: pd.DataFrame,
    prompts: Mapping[str, str],
    problems: Sequence[Problem],
    threshold: float,
    max_per_problem: int | None,
    dedupe: bool,
    reference_fraction: float,
    answer_format: str | None,
    seed: int,
    provenance: Mapping | None = None,
    step_check: bool = False,
) -> tuple[TrainingData, pd.DataFrame]:
    """The training set of one Improve step, and the kept sample rows."""
    kept = select(graded, threshold, max_per_problem, dedupe, step_check)
    records = completion_records(kept, prompts, extra_columns=("index", "reward"))
    wanted = num_references(len(kept), reference_fraction)
    rng = random.Random(f"{seed}/references")
    chosen = rng.sample(list(problems), min(wanted, len(problems)))
    records += reference_records(chosen, prompts, lambda p: reference_completion(p, answer_format))
    meta = {
        "threshold": threshold,
        "max_per_problem": max_per_problem,
        "dedupe": dedupe,
        "step_check": step_check,
        "right_answer_wrong_steps": _right_answer_wrong_steps(graded, threshold),
        "kept_samples": len(kept),
        "kept_problems": int(kept["problem_id"].nunique()) if len(kept) else 0,
        "graded_samples": len(graded),
        "references": len(chosen),
        "references_wanted": wanted,  # more than the problems available when the fraction is high
        "reference_fraction": reference_fraction,
        **dict(provenance or {}),
    }
    return TrainingData(records, meta), kept


def _right_answer_wrong_steps(graded: pd.DataFrame, threshold: float) -> int:
    """Samples above the threshold with a wrong step statement (what `step_check` drops, counted either way)."""
    passing = graded[graded["reward"] > threshold]
    return int((~steps_correct(passing)).sum()) if len(passing) else 0


def control_data(kept: pd.DataFrame, prompts: Mapping[str, str], problems: Sequence[Problem],
                 answer_format: str | None, provenance: Mapping | None = None) -> TrainingData:
    """The control arm's training set: the reference solution of each kept sample's problem in its place.

    Same problems, same count (so the same optimizer steps), so a gain of ReST over the control is what its
    self-generated solutions add beyond more training on these problems."""
    by_id = {p.id: p for p in problems}
    missing = sorted(set(kept["problem_id"]) - set(by_id))
    if missing:
        raise ConfigError(f"control: kept sample of problem '{missing[0]}' is not a training problem")
    chosen = [by_id[pid] for pid in kept["problem_id"]]
    records = reference_records(chosen, prompts, lambda p: reference_completion(p, answer_format))
    meta = {"arm": "control: reference solutions of the kept samples' problems", "references": len(records),
            "kept_problems": len(set(kept["problem_id"])), **dict(provenance or {})}
    return TrainingData(records, meta)
