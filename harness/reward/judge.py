"""LLM-as-a-Judge: a model scores a response with the additive 5-point rubric of Self-Rewarding Language Models
(Yuan et al. 2024, arXiv 2401.10020, Fig. 2), and the grader can stand in for it (the oracle judge).

    judge = ModelJudge(exp, policy, spec, params)      # or OracleJudge()
    judgements = judge.judge(candidates, repeats=3)    # one list of `repeats` Judgements per candidate
    scores = [[j.score for j in js] for js in judgements]   # parse_score: None when there is no valid score

The interface follows TRL's judges (removed from TRL by 1.16): a judge maps prompts and completions to
verdicts, whatever produces them. A model judge's generations are samples like any other: drawn through the
sample store, one store row per (judged text, repeat), so a rerun reads them back instead of judging again.
"""
from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any, Mapping, Optional, Sequence

SCORE_MIN, SCORE_MAX = 0.0, 5.0

# The paper's Fig. 2 prompt, word for word. Found with the search tool (code corpus) in five independent
# transcriptions that agree on the wording: bytedance/AIPO alignment/prompt/llm_judge_prompt.py (this layout,
# straight quotes) and four files the index does not name (ids 31280752437, 47221192524, 38591744897,
# 70439873489; the first two keep the PDF's line breaks and curly quotes). Only the placeholders are ours.
JUDGE_TEMPLATE = """Review the user's question and the corresponding response using the additive 5-point scoring system described below. Points are accumulated based on the satisfaction of each criterion:

- Add 1 point if the response is relevant and provides some information related to the user's inquiry, even if it is incomplete or contains some irrelevant content.
- Add another point if the response addresses a substantial portion of the user's question, but does not completely resolve the query or provide a direct answer.
- Award a third point if the response answers the basic elements of the user's question in a useful way, regardless of whether it seems to have been written by an AI Assistant or if it has elements typically found in blogs or search results.
- Grant a fourth point if the response is clearly written from an AI Assistant's perspective, addressing the user's question directly and comprehensively, and is well-organized and helpful, even if there is slight room for improvement in clarity, conciseness or focus.
- Bestow a fifth point for a response that is impeccably tailored to the user's question by an AI Assistant, without extraneous information, reflecting expert knowledge, and demonstrating a high-quality, engaging, and insightful answer.

User: {question}
<response>{response}</response>

After examining the user's instruction and the response:

- Briefly justify your total score, up to 100 words.
- Conclude with the score using the format: "Score: <total points>"

Remember to assess from the AI Assistant perspective, utilizing web search knowledge as necessary. To evaluate the response in alignment with this additive scoring model, we'll systematically attribute points based on the outlined criteria."""
JUDGE_PROMPT_NAME = "self_rewarding_judge"


def render_judge_prompt(question: str, response: str) -> str:
    """The rubric prompt for one (question, response); plain replacement, since either text may hold braces."""
    return JUDGE_TEMPLATE.replace("{question}", question.strip()).replace("{response}", response.strip())


# "Score" as a word, a colon, optional markdown emphasis, then a plain decimal number. A sign is matched so
# that "Score: -1" reads as -1 (out of range) rather than as "no number".
_SCORE = re.compile(r"\bscore\s*:", re.IGNORECASE)
_NUMBER = re.compile(r"\s*[*_]{0,2}\s*([-+]?\d+(?:\.\d+)?)(?![\d.]*\d)")


def parse_score(text: str) -> Optional[float]:
    """The points of the last "Score: X" in `text` (case-insensitive), X a number in [0, 5]; else None.

    Only the last "Score:" counts: a judgement that ends in "Score:" with no number, or in an
    out-of-range number, is no score even if an earlier "Score: 3" exists (the model's conclusion is
    what the rubric asks for). "Score: 4/5" reads as 4 (points out of 5)."""
    found = list(_SCORE.finditer(text or ""))
    if not found:
        return None
    m = _NUMBER.match(text, found[-1].end())
    if not m:
        return None
    value = float(m.group(1))
    return value if SCORE_MIN <= value <= SCORE_MAX else None


# ---- the grader's verdict as a rubric score (the oracle judge and the EFT targets) -------------------------

# One arithmetic statement "a op b = c" (ladder steps are whole lines of this form; GSM8K rationales embed it).
_STATEMENT = re.compile(r"(?<![\d.])(-?\d+(?:\.\d+)?)\s*([-+*/×x])\s*(-?\d+(?:\.\d+)?)\s*=\s*(-?\d+(?:\.\d+)?)(?![\d.]*\d)")


def wrong_statements(response: str) -> list[str]:
    """The "a op b = c" statements of `response` whose arithmetic is wrong (exact rational arithmetic)."""
    wrong = []
    for m in _STATEMENT.finditer(response):
        a, op, b, c = Fraction(m.group(1)), m.group(2), Fraction(m.group(3)), Fraction(m.group(4))
        if op == "+":
            value = a + b
        elif op == "-":
            value = a - b
        elif op == "/":
            value = a / b if b else None
        else:
            value = a * b
        if value != c:
            wrong.append(m.group(0))
    return wrong


def verdict_score(correct: bool, answered: bool, response: str) -> int:
    """The rubric score a judge should give a response whose grader verdict is known.

    The rubric's points are additive; on a task with one checkable answer they fall as follows:
      5  the answer is correct and every "a op b = c" statement checks: "impeccably tailored ... expert
         knowledge" (nothing to improve that the grader can see);
      4  the answer is correct but some statement is wrong: answers "directly and comprehensively" with
         "slight room for improvement" (the fourth point, not the fifth);
      1  an answer is stated and it is wrong: "relevant and provides some information" (the first point),
         but it neither "answers the basic elements ... in a useful way" (third) nor resolves the query;
      0  no answer can be read (rambling, or cut off at the token limit): below any stated answer, so that a
         wrong-but-complete response is still preferred to one the grader cannot read.
    Scores 2 and 3 are never targets: the grader cannot tell "a substantial portion" of a wrong chain.
    """
    if correct:
        return 4 if wrong_statements(response) else 5
    return 1 if answered else 0


def target_judgement(correct: bool, answered: bool, response: str, answer: Optional[str]) -> str:
    """The judgement text a judge should write for a response with a known verdict: a short justification
    (one paragraph, no blank line: prompts may stop at one) ending in "Score: N"."""
    score = verdict_score(correct, answered, response)
    said = (answer or "").strip() or "none"
    if score == 5:
        why = f"The response works through the question one calculation at a time, every calculation is right, and the final answer, {said}, is correct."
    elif score == 4:
        why = f"The final answer, {said}, is correct, but the working contains a wrong calculation ({wrong_statements(response)[0]})."
    elif score == 1:
        why = f"The response is relevant to the question, but its final answer, {said}, is wrong."
    else:
        why = "The response does not state a final answer to the question."
    return f"{why}\nScore: {score}"


# ---- judges -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A response to be judged. `correct` / `answered` are the grader's verdict (the oracle reads them; a
    model judge never sees them)."""

    key: str  # e.g. "<problem_id>#<sample index>"
    question: str
    response: str
    correct: Optional[bool] = None
    answered: Optional[bool] = None
    answer: Optional[str] = None  # the answer the grader extracted


@dataclass(frozen=True)
class Judgement:
    text: str

    @property
    def score(self) -> Optional[float]:
        return parse_score(self.text)


class Judge(ABC):
    """Scores candidates; `judge` returns, per candidate, `repeats` judgements (in repeat order)."""

    name: str = "judge"

    @abstractmethod
    def judge(self, candidates: Sequence[Candidate], repeats: int = 1) -> list[list[Judgement]]: ...

    def info(self) -> dict:
        """What a ledger records of the last call (store entry, tokens...)."""
        return {"judge": self.name}


class OracleJudge(Judge):
    """The grader as the judge: writes the target judgement of the candidate's verdict (the same text the EFT
    data teaches), so a loop run with it proves the plumbing with a judge that is right by construction."""

    name = "oracle"

    def judge(self, candidates: Sequence[Candidate], repeats: int = 1) -> list[list[Judgement]]:
        out = []
        for c in candidates:
            if c.correct is None or c.answered is None:
                from harness.errors import DataError

                raise DataError(f"oracle judge: candidate '{c.key}' has no grader verdict")
            out.append([Judgement(target_judgement(c.correct, c.answered, c.response, c.answer))] * repeats)
        return out


# The judged texts are the data of a judge's store entry: each row's problem id is a hash of its rendered
# prompt, so the entry needs no data file hash of its own and any judgement of a text by the same model and
# decoding is found again, whichever stage or iteration asks for it.
JUDGED_BY_CONTENT = "judge-prompts-keyed-by-content"


def judge_spec(task_spec: Any) -> Any:
    """The prompt the judge request is rendered in: the task's own format (the rubric stands where a question
    stands), so the judge is asked the way the EFT data taught it; without exemplars or a task system prompt,
    which are about solving, not judging."""
    return replace(task_spec, name=f"{task_spec.name}+{JUDGE_PROMPT_NAME}", exemplars=[], exemplars_from=None,
                   system=None)


def judge_input(task_spec: Any, question: str, response: str, tokenizer: Any = None) -> str:
    """The full text a model judge is given (and an EFT example's prompt)."""
    from harness.data.problems import Problem
    from harness.data.prompts import render

    judge_problem = Problem(id="judge", question=render_judge_prompt(question, response), answer="", solution="",
                            dataset="judge")
    return render(judge_spec(task_spec), judge_problem, tokenizer)


def prompt_key(text: str) -> str:
    return "judge/" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class ModelJudge(Judge):
    """A policy of an Experiment as the judge, sampling through the store (`repeats` samples per prompt)."""

    name = "model"

    def __init__(self, exp: Any, policy: Any, task_spec: Any, params: Any, desc: str = "judge"):
        self.exp, self.policy, self.task_spec, self.params, self.desc = exp, policy, task_spec, params, desc
        self._info: dict = {}

    def entry(self):
        # through the experiment, like every sample: the key gets the policy's weights and the sampler's numerics
        return self.exp.entry(judge_spec(self.task_spec), self.params, policy=self.policy,
                              variant={"rubric": JUDGE_TEMPLATE}, data_key=JUDGED_BY_CONTENT)

    def judge(self, candidates: Sequence[Candidate], repeats: int = 1) -> list[list[Judgement]]:
        tokenizer = self.exp.load(self.policy).tokenizer
        texts = [judge_input(self.task_spec, c.question, c.response, tokenizer) for c in candidates]
        keys = [prompt_key(t) for t in texts]
        entry = self.entry()
        self.exp.record_entry(self.desc, entry)
        samples = self.exp.draw(entry, dict(zip(keys, texts)), repeats, self.params, self.policy, self.desc)
        by_key: Mapping[str, list[str]] = {
            k: list(g.sort_values("index")["text"]) for k, g in samples.groupby("problem_id", sort=False)
        }
        self._info = {"judge": self.name, "store": str(entry.dir), "model": entry.key.model,
                      "judged_texts": len(by_key), "repeats": repeats,
                      "generated_tokens": int(samples["num_tokens"].sum()),
                      "prompt_tokens": int(samples["prompt_tokens"].sum()),
                      "drawn_now": int(samples.attrs.get("drawn_now", 0))}
        return [[Judgement(t) for t in by_key[k]] for k in keys]

    def info(self) -> dict:
        from harness.reporting.paths import portable

        return {**self._info, "store": portable(self._info["store"])} if self._info else {"judge": self.name}
