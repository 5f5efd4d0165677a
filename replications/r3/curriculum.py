"""R3's reverse curriculum: demonstrations cut into steps, and the start states each stage hands the policy.

A demonstration (a reference solution) is cut into S steps, one per non-empty line. Stage k gives the
policy the question plus the first max(S - k, 0) reference steps and asks it to write the rest, so the
completion always holds the last k steps (or the whole solution when k >= S):

    stage 1      question + steps 1..S-1   -> the policy writes step S and the answer
    stage 2      question + steps 1..S-2   -> the policy writes steps S-1, S
    ...
    stage K      question alone            -> the whole solution (K = the longest demonstration)

Stages slide from the end of the demonstration to its start (Xi et al. 2024, arXiv 2402.05808, §3): the
policy first learns to finish nearly-solved problems, where a sparse outcome reward is easy to reach, and
ends solving from scratch. A demonstration shorter than k is already at its start (question alone).

The final-answer line ("The answer is N.", "#### N") is part of the last step, not a step of its own.
As its own step it would make stage 1 "copy the number the previous line computed": every sample of a
group would get the same reward, so the group's relative advantage would be zero and the stage would
teach nothing while costing a share of the budget. With it merged, stage 1 asks for one calculation.

Schedules (the paper trains with both):
- `reverse`: one block of training steps per stage, stages 1..K in order (staged R3);
- `mixed`: every visit of a problem draws its stage uniformly from 1..S (R3's "mix" data: each example is
  the question plus a random-length gold prefix, the empty prefix included);
- `scratch`: stage K only, the question alone: outcome-only RL, the baseline R3 is compared with.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from harness.errors import ConfigError, DataError

SCHEDULES = ("reverse", "mixed", "scratch")

# A line that only states the final answer: it closes the step before it rather than being a step.
_ANSWER_LINE = re.compile(r"^\s*(?:the\s+(?:final\s+)?answer\s+is\b|final\s+answer\s*:|answer\s*:|####)", re.IGNORECASE)


def cut_steps(solution: str) -> list[str]:
    """The steps of a demonstration: its non-empty lines (trailing spaces dropped, indentation kept), with a
    final-answer line joined to the step before it by a newline (see the module docstring)."""
    if not isinstance(solution, str):
        raise DataError(f"a demonstration must be text, got {type(solution).__name__}")
    steps: list[str] = []
    for line in solution.splitlines():
        line = line.rstrip()
        if not line.strip():
            continue
        if steps and _ANSWER_LINE.match(line):
            steps[-1] = f"{steps[-1]}\n{line}"
        else:
            steps.append(line)
    return steps


@dataclass(frozen=True)
class Demonstration:
    """One training problem: its rendered prompt (the question as the policy sees it), reference steps and
    final answer (what the grader compares against)."""

    problem_id: str
    prompt: str
    steps: tuple[str, ...]
    answer: str
    level: int | None = None

    @property
    def num_steps(self) -> int:
        return len(self.steps)


@dataclass(frozen=True)
class StartState:
    """What one stage gives the policy for one problem: the prompt it continues and what it is graded on."""

    problem_id: str
    stage: int  # k: the policy writes the last k steps (all of them when k >= the demonstration's length)
    given: int  # reference steps inside the prompt: max(S - k, 0)
    num_steps: int  # S
    prompt: str  # the rendered question followed by the given steps, one per line
    answer: str

    def as_record(self) -> dict:
        return {"prompt": self.prompt, "answer": self.answer, "problem_id": self.problem_id, "stage": self.stage,
                "given": self.given, "num_steps": self.num_steps}


ANSWER_LINE = "The answer is {answer}."


def demonstrations(problems: Iterable, prompts: Mapping[str, str], answer_line: str = ANSWER_LINE) -> list[Demonstration]:
    """Demonstrations from harness Problems (their reference `solution`) and their rendered prompts by id.

    A solution that does not state its answer (GSM8K's rationale, whose "#### N" the loader strips) gets
    `answer_line` as its last line: the policy is graded on a stated answer, so the demonstration it
    continues shows one."""
    out = []
    for p in problems:
        if p.id not in prompts:
            raise DataError(f"problem '{p.id}' has no rendered prompt")
        steps = cut_steps(p.solution)
        if not steps or not any(_ANSWER_LINE.match(line) for line in steps[-1].splitlines()):
            steps = cut_steps("\n".join([*steps, answer_line.format(answer=p.answer)]))
        out.append(Demonstration(p.id, prompts[p.id], tuple(steps), str(p.answer), (p.metadata or {}).get("level")))
    return out


def given_steps(num_steps: int, stage: int) -> int:
    """Reference steps in the prompt at `stage` for a demonstration of `num_steps` steps."""
    if stage < 1:
        raise ConfigError(f"r3 stage must be >= 1 (stage k leaves the last k steps to the policy), got {stage}")
    return max(num_steps - stage, 0)


def start_state(demo: Demonstration, stage: int) -> StartState:
    given = given_steps(demo.num_steps, stage)
    # The rendered prompt ends where the solution begins ("Answer:\n"): each given step is a full line of it.
    prefix = "".join(f"{step}\n" for step in demo.steps[:given])
    return StartState(demo.problem_id, stage, given, demo.num_steps, demo.prompt + prefix, demo.answer)


def num_stages(demos: Sequence[Demonstration], cap: int | None = None) -> int:
    """K, the number of stages: the longest demonstration's step count, at most `cap`. The last stage is
    always the question alone for every problem (stage_states), so a cap shortens the slide, never its end."""
    longest = max((d.num_steps for d in demos), default=1)
    return max(1, min(longest, cap) if cap else longest)


def stage_states(demos: Sequence[Demonstration], stage: int, last: int) -> list[StartState]:
    """Every demonstration's start state at `stage`; the last stage is the question alone for all."""
    return [start_state(d, max(d.num_steps, 1) if stage >= last else stage) for d in demos]


def split_steps(total_steps: int, stages: int) -> list[int]:
    """Training steps per stage: as equal as possible, earlier stages taking the remainder."""
    if total_steps < stages:
        raise ConfigError(f"r3.steps: {total_steps} training steps cannot cover {stages} stages (one each at least)")
    base, extra = divmod(total_steps, stages)
    return [base + (i < extra) for i in range(stages)]


@dataclass(frozen=True)
class StageBlock:
    """A run of training steps (one trainer call, one checkpoint, one ledger stage)."""

    name: str  # "stage1".."stageK" (reverse), "mixed1".., "scratch1..": a ledger stage and a report row
    stage: int | None  # k for a reverse or scratch block; None for a mixed one (each state carries its own)
    steps: int
    states: tuple[StartState, ...]


def schedule(demos: Sequence[Demonstration], kind: str, total_steps: int, prompts_per_step: int, seed: int,
             stages: int | None = None) -> list[StageBlock]:
    """The training plan of one schedule: K blocks of (steps, start states), each state one prompt.

    Every schedule has the same K blocks of the same sizes, over the same seeded order of demonstrations
    (cycled: no problem repeats before every problem was seen), differing only in the start states: so
    they train on the same problems, the same number of prompts and samples (at equal group size), with
    the optimiser restarted at the same points. "R3 beats outcome-only RL at equal training samples" is
    a comparison of schedules and nothing else.
    """
    if kind not in SCHEDULES:
        raise ConfigError(f"r3.schedule: '{kind}' is not one of {', '.join(SCHEDULES)}")
    if not demos:
        raise DataError("r3: no training demonstrations")
    if prompts_per_step < 1:
        raise ConfigError(f"r3.prompts_per_step: must be >= 1, got {prompts_per_step}")
    rng = random.Random(seed)
    last = num_stages(demos, stages)
    order = _cycle(demos, total_steps * prompts_per_step, rng)
    # drawn for every schedule, so that all three consume the seeded stream alike
    mixed = [rng.randint(1, max(d.num_steps, 1)) for d in order]
    blocks, start = [], 0
    for i, steps in enumerate(split_steps(total_steps, last), start=1):
        span = range(start, start + steps * prompts_per_step)
        start = span.stop
        chunk = [order[j] for j in span]
        if kind == "reverse":
            blocks.append(StageBlock(f"stage{i}", i, steps, tuple(stage_states(chunk, i, last))))
        elif kind == "scratch":
            blocks.append(StageBlock(f"scratch{i}", last, steps, tuple(stage_states(chunk, last, last))))
        else:
            blocks.append(StageBlock(f"mixed{i}", None, steps, tuple(start_state(order[j], mixed[j]) for j in span)))
    return blocks


def _cycle(demos: Sequence[Demonstration], count: int, rng: random.Random) -> list[Demonstration]:
    """`count` demonstrations: seeded shuffles of the whole set, one after another (no problem repeats
    before every problem was seen)."""
    out: list[Demonstration] = []
    while len(out) < count:
        epoch = list(demos)
        rng.shuffle(epoch)
        out.extend(epoch)
    return out[:count]
