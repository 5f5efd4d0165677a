"""Which final answer a response states: strict (stated explicitly, not cut off) and lenient (the last number).

Strict: an answer counts only when the response states it: `\\boxed{}` / `\\fbox{}` (several boxes joined by
"and" / commas are one answer, e.g. a set), "The (final) answer is ..." / "Answer: ...", or "#### ...", and
the response was not cut off at the token limit (finish_reason "length"): a cut-off response never stated
its final answer, whatever its last box says.
Lenient: the stated answer even when cut off, else the last number of the response, as lm-eval's
`flexible-extract` (GSM8K) does; on MATH, the response's last line, read by math-verify's unanchored rules.
In both modes a number that is part of a larger expression (`10^{10^{10}}`, `9**9`, `\\frac{1+\\sqrt5}{2}`)
is never taken as the answer.
A box that holds text with its own inline math (`\\fbox{We find that $x < 3$.}`) states what that text
states: a statement inside it (`... so the loss is $\\boxed{28\\%}$.`), else the text itself, which math-verify
reads as it reads a response (the number reader refuses it: a sentence is not a number).
Digits grouped by spaces in threes (`1 000`) are one number in both modes.

Everything here is regexes and brace matching: no sympy, so it is safe in the parent process. Model text is
never `eval`-ed: numbers go through `fractions.Fraction`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

# Bump whenever a change here (or in how grader.py judges) can change an extracted answer or a verdict:
# cached grades are keyed by it.
EXTRACTION_VERSION = "3"

MODES = ("strict", "lenient")
TRUNCATED = "length"  # the finish_reason of a response stopped by the token limit

_BOX_START = re.compile(r"\\(?:boxed|fbox)\s*")
# What may stand between the boxes of one answer: "\boxed{1}, \boxed{2} and \boxed{3}", "$\boxed{a}$ or $\boxed{b}$".
_BOX_JOINER = re.compile(r"[\s$,;]*(?:(?:and|or|&|\\quad|\\qquad|\\text\{\s*(?:and|or|,)\s*\})[\s$,;]*)?")
# "The final answer is", "the answer is:", "Answer:", "Final Answer: The final answer is" (Minerva's line).
_ANSWER_PHRASE = re.compile(
    r"(?i)\b(?:final\s+answer|answer)\b(?:\s+(?:to|for)\s+[^\n.:=]{0,40}?)?\s*(?:is\b|:|=)\s*:?\s*"
)
_HASHES = re.compile(r"####\s*")
_SENTENCE_END = re.compile(r"\.(?=\s|$)|\n|\s+I hope it is correct", re.IGNORECASE)
# Inline math inside a box's content: the box holds text, not an expression.
_INLINE_MATH = re.compile(r"(?<!\\)\$[^$]*[^$\s\\][^$]*(?<!\\)\$")
# Digits grouped by single spaces, three to a group ("1 000", "12 345 678"): one number, as SI writes it and
# as LaTeX's math mode typesets it (it drops the spaces); math-verify would read "1 000" as 1*000.
_SPACED_DIGIT_GROUPS = re.compile(r"(?<![\d.,])\d{1,3}(?: \d{3})+(?:\.\d+)?(?![\d,]|\.\d| \d)")

NUMBER = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_NUMBER_TOKEN = re.compile(rf"(?<![\d.,])[-−]?(?:{NUMBER})(?:/\d+)?(?![\d])")
# After the number: nothing, "%", or words ("36 miles", "22 students at the 2nd grade"), but not an
# operator spelled as a word ("2 x 30", "5 times 3").
_AFTER_NUMBER = r"(?:%|(?!(?:x|times|plus|minus|divided|over|multiplied)\b)[A-Za-z].*)?"
_SINGLE_NUMBER = re.compile(rf"\s*([-−]?(?:{NUMBER})(?:/\d+)?)\s*{_AFTER_NUMBER}\s*[.!]?\s*", re.DOTALL)
# Characters that make a number an operand: "2^10", "9**9", "3+4", "2x", "x_2", "5!".
_OPERATOR_BEFORE = re.compile(r"(?:[\^*/+×·÷_<>{-]|\\cdot|\\times|\\div|\\frac|\\sqrt)\s*$|[A-Za-z]$")
_OPERATOR_AFTER = re.compile(r"^\}?\s*(?:[\^*/+×·÷_!{]|-\s*[\d(]|\\cdot|\\times|\\div)|^[A-Za-z]")


@dataclass(frozen=True)
class Statement:
    """A final answer as the response states it."""

    answer: str  # box contents (joined by ", " when several), or the text after the phrase / "####"
    region: str  # what math-verify reads: the boxes themselves, the phrase to its line's end, or a box's text
    start: int  # where the statement starts in the response
    end: int  # where its answer ends


def _brace_matches(text: str) -> dict[int, int]:
    """Index of each '{' -> index of its '}', one linear pass (escaped \\{ \\} are not structural)."""
    matches, stack = {}, []
    for i, ch in enumerate(text):
        if ch in "{}" and i and text[i - 1] == "\\":
            continue
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            matches[stack.pop()] = i
    return matches


def boxes(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every complete, non-empty \\boxed{...} / \\fbox{...} ("\\boxed 5" too)."""
    starts = list(_BOX_START.finditer(text))
    if not starts:
        return []
    matches = _brace_matches(text)
    out = []
    for m in starts:
        j = m.end()
        if j < len(text) and text[j] == "{":
            if j in matches and text[j + 1 : matches[j]].strip():
                out.append((m.start(), matches[j] + 1, text[j + 1 : matches[j]].strip()))
        elif m.group(0).endswith(" "):  # "\boxed 5" (no braces), as lm-eval accepts
            token = re.match(r"[^\s$]+", text[j:])
            if token:
                out.append((m.start(), j + token.end(), token.group(0)))
    nested = [b for b in out if any(o[0] < b[0] and b[1] <= o[1] for o in out)]
    return [b for b in out if b not in nested]


def last_boxed(text: str) -> str | None:
    """Content of the last complete \\boxed{...} / \\fbox{...}, or None."""
    found = boxes(text)
    return found[-1][2] if found else None


def _line_bounds(text: str, start: int, end: int) -> tuple[int, int]:
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", end)
    return line_start, len(text) if line_end < 0 else line_end


def _last_box_group(text: str) -> Statement | None:
    found = boxes(text)
    if not found:
        return None
    group = [found[-1]]
    for box in reversed(found[:-1]):
        gap = text[box[1] : group[0][0]]
        if not _BOX_JOINER.fullmatch(gap):
            break
        group.insert(0, box)
    start, end = group[0][0], group[-1][1]
    # The boxes alone are what math-verify reads: on the whole line, when it cannot read a box (`28\\%`), it
    # would take another formula of that line ("so $x=5$ and $\\boxed{28\\%}$" read as x = 5).
    return Statement(", ".join(b[2] for b in group), text[start:end], start, end)


def _inside_text_box(box: Statement) -> Statement:
    """What a box of text with inline math states: a statement inside it, else the text itself."""
    if not _INLINE_MATH.search(box.answer) or len(boxes(box.region)) != 1:  # several boxes: one answer each
        return box
    offset = box.region.index(box.answer)  # where the content starts inside `\\boxed{...}`
    inner = _statement(box.answer, look_inside_text_boxes=False)  # one level: no recursion on model text
    if inner is None:
        return Statement(box.answer, box.answer, box.start + offset, box.start + offset + len(box.answer))
    return Statement(inner.answer, inner.region, box.start + offset + inner.start, box.start + offset + inner.end)


def _after_anchor(text: str, anchor_end: int) -> str:
    rest = text[anchor_end : anchor_end + 300]
    cut = _SENTENCE_END.search(rest)
    return strip_dollars(rest[: cut.start()] if cut else rest)


def join_digit_groups(text: str) -> str:
    """`1 000` -> `1000` (see _SPACED_DIGIT_GROUPS); other spaces are left alone."""
    return _SPACED_DIGIT_GROUPS.sub(lambda m: m.group(0).replace(" ", ""), text)


def strip_dollars(answer: str) -> str:
    answer = answer.strip()
    while len(answer) >= 2 and answer[0] == "$" and answer[-1] == "$" and not answer.endswith("\\$"):
        answer = answer[1:-1].strip()
    return answer


def stated_answer(response: str) -> Statement | None:
    """The final answer the response states explicitly, or None (see the module docstring)."""
    return _statement(response, look_inside_text_boxes=True)


def _statement(response: str, look_inside_text_boxes: bool) -> Statement | None:
    if not isinstance(response, str) or not response.strip():
        return None
    hashes = _HASHES.search(response)  # the first "####", as the Monkeys repo and lm-eval's strict-match
    anchors = [hashes] if hashes else []
    box = None
    if not anchors:
        box = _last_box_group(response)
        anchors = [m for m in _ANSWER_PHRASE.finditer(response) if box is None or m.start() >= box.end]
    for anchor in reversed(anchors):  # the last phrase that is followed by an answer
        answer = _after_anchor(response, anchor.end())
        if answer:
            _, line_end = _line_bounds(response, anchor.start(), anchor.end())
            region = response[anchor.start() : line_end].strip()
            return Statement(answer, region, anchor.start(), anchor.end() + len(answer))
    return _inside_text_box(box) if box is not None and look_inside_text_boxes else box


def is_truncated(finish_reason: object) -> bool:
    return finish_reason == TRUNCATED


# ---- numbers (GSM8K) ----------------------------------------------------------------------------------

_LATEX_FRAC = re.compile(r"\\[dtc]?frac\s*(?:\{\s*(-?\d+)\s*\}|(\d))\s*(?:\{\s*(\d+)\s*\}|(\d))")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mbox|textrm)\s*\{([^{}]*)\}")
_LATEX_SPACING = re.compile(r"\\[!,;: ]|\\quad|\\qquad|\\left|\\right")


def _plain(answer: str) -> str:
    """LaTeX number spellings as plain text: `14{,}916`, `\\$16,\\!386.20`, `\\frac13`, `10\\%`, `\\text{ dollars}`."""
    s = strip_dollars(answer).replace("{,}", ",").replace("\\$", "").replace("\\%", "%").replace("$", "")
    s = _LATEX_SPACING.sub("", s)
    s = _TEXT_WRAPPER.sub(r" \1 ", s)
    s = _LATEX_FRAC.sub(lambda m: f"{m.group(1) or m.group(2)}/{m.group(3) or m.group(4)}", s)
    return s.replace("−", "-").strip()


def read_number(answer: str | None) -> str | None:
    """The number a stated answer is ("1234", "-3.5", "3/4"), or None when it is anything more than one
    number with units: an expression is never read as the number in it."""
    if answer is None:
        return None
    s = join_digit_groups(_plain(answer))
    if "=" in s:  # "x = 18", "3*6 = 18": the value after the last "=" (not "k = 45, n = 2")
        before, s = s.rsplit("=", 1)
        if "," in before:
            return None
    m = _SINGLE_NUMBER.fullmatch(s)
    return m.group(1).replace(",", "").replace("−", "-") if m else None


def _stands_alone(text: str, start: int, end: int) -> bool:
    before, after = text[max(0, start - 8) : start], text[end : end + 8]
    if after.startswith(".") and after[1:2].isdigit():
        return False
    return not _OPERATOR_BEFORE.search(before) and not _OPERATOR_AFTER.search(after)


def last_number(text: str) -> str | None:
    """The response's last number (lm-eval's flexible-extract), or None when that number is an operand."""
    plain = _plain(text) if "\\" in text or "{,}" in text else text
    tokens = list(_NUMBER_TOKEN.finditer(plain))
    if not tokens:
        return None
    last = tokens[-1]
    if not _stands_alone(plain, last.start(), last.end()):
        return None
    return last.group(0).replace(",", "").replace("−", "-")


def as_fraction(answer: str | None) -> Fraction | None:
    if answer is None:
        return None
    try:
        return Fraction(answer.replace(",", "").replace("$", "").strip().rstrip("."))
    except (ValueError, ZeroDivisionError):
        return None
