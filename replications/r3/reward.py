"""R3's outcome reward: 1 for a correct final answer, 0.2 for a stated but wrong one, 0 when none is stated.

The values are the official code's (R3_math/main.py: a correct answer scores 1, a wrong extracted answer a
partial epsilon of 0.2, no answer 0) and are config (`r3.reward`). "Stated" is the grader's strict notion
(harness.grading: an explicit "The answer is N" / box / "####", not cut off at the token limit): a
completion that trails off without stating an answer earns nothing, whatever numbers it wrote.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from harness.errors import ConfigError


@dataclass(frozen=True)
class RewardValues:
    correct: float = 1.0  # the stated answer equals the reference
    wrong: float = 0.2  # an answer is stated but differs from the reference
    none: float = 0.0  # no answer stated, or cut off at the token limit

    def check(self) -> "RewardValues":
        if not self.correct > self.wrong >= self.none:
            raise ConfigError(f"r3.reward: need correct > wrong >= none, got {self.correct}, {self.wrong}, {self.none}")
        return self


def outcome_rewards(grader, completions: Sequence[str], answers: Sequence[str],
                    finish_reasons: Sequence[str | None], values: RewardValues) -> list[float]:
    """One reward per completion, from the harness grader's strict verdicts (`grader`: a harness Grader)."""
    results = grader.grade_many(list(completions), [str(a) for a in answers], list(finish_reasons))
    return [values.correct if r.correct_strict else values.wrong if r.answered else values.none for r in results]
