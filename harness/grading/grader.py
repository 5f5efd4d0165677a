"""Grade model responses against reference answers: answer extraction, equivalence, vote keys.

GSM8K is graded by exact numeric comparison in-process. MATH is graded by math-verify (default) or by
lm-eval's Minerva equivalence (the Large Language Monkeys repo's grader), always in worker processes:
both end in sympy, which can hang on adversarial answers (e.g. 9^{9^{9^{9^{9}}}}), and their signal-based
timeouts only work on a main thread. Each answer gets its own deadline; a worker that overruns it is
killed and replaced, and the answer counts as incorrect with status "timeout".

Model text is never `eval`-ed: numbers go through `fractions.Fraction`, LaTeX through the parsers.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from multiprocessing.connection import wait as wait_for
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

from harness.errors import ConfigError, HarnessError

DATASETS = ("gsm8k", "math")
METHODS = ("math_verify", "minerva")
Status = Literal["ok", "no_answer", "timeout", "error"]

GSM8K_REL_TOL = 1e-6
# A worker's own alarm fires at `timeout`; the parent kills it only if it is still silent this much later
# (sympy stuck inside C code does not see the alarm).
KILL_GRACE_S = 2.0
WORKER_STARTUP_S = 120.0
_PROJECT_ROOT = Path(__file__).resolve().parents[2]  # workers import harness.grading.grader from here


@dataclass(frozen=True)
class GradeResult:
    correct: bool
    extracted: str | None
    status: Status


@dataclass(frozen=True)
class Disagreement:
    index: int
    results: dict[str, GradeResult]  # grader method -> its verdict on response `index`


# ---- answer extraction ------------------------------------------------------------------------------

_NUMBER = re.compile(
    r"(?:(?<![\w)\]}])[-−])?"  # a minus sign that is not a binary minus ("10-4")
    r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?"
    r"|(?<![\d.])\.\d+"
)
_GSM8K_HASH = re.compile(r"####\s*\$?\s*(" + _NUMBER.pattern + ")")
_ANSWER_IS = re.compile(r"(?:the final answer is|the answer is)\s*:?\s*", re.IGNORECASE)
_MINERVA_LINE = re.compile(r"Final Answer: The final answer is(.*?)\.?\s*I hope it is correct")
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*(-?\d+)\s*\}\s*\{\s*(\d+)\s*\}")
_BOX_START = re.compile(r"\\(?:boxed|fbox)\s*")


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


def last_boxed(text: str) -> str | None:
    """Content of the last complete \\boxed{...} / \\fbox{...} (nested braces matched), or None."""
    starts = list(_BOX_START.finditer(text))
    if not starts:
        return None
    matches = _brace_matches(text)
    for m in reversed(starts):
        j = m.end()
        if j < len(text) and text[j] == "{":
            if j in matches:
                content = text[j + 1 : matches[j]].strip()
                if content:
                    return content
        elif m.group(0).endswith(" "):  # "\boxed 5" (no braces), as lm-eval accepts
            token = re.match(r"[^\s$]+", text[j:])
            if token:
                return token.group(0)
    return None


def _clean_number(token: str) -> str:
    return token.replace(",", "").replace("−", "-")


def _numbers(text: str) -> list[str]:
    text = _LATEX_FRAC.sub(r"\1/\2", text)
    return [_clean_number(m.group(0)) for m in _NUMBER.finditer(text)]


def _extract_gsm8k(response: str) -> str | None:
    m = _GSM8K_HASH.search(response)  # the first "#### N", as the Monkeys repo and lm-eval's strict match
    if m:
        return _clean_number(m.group(1))
    boxed = last_boxed(response)
    if boxed is not None:
        nums = _numbers(boxed)
        if nums:
            return nums[-1]
    said = list(_ANSWER_IS.finditer(response))
    if said:
        nums = _numbers(response[said[-1].end() :][:200])
        if nums:
            return nums[0]
    nums = _numbers(response)
    return nums[-1] if nums else None


def _strip_dollars(answer: str) -> str:
    answer = answer.strip()
    while len(answer) >= 2 and answer[0] == "$" and answer[-1] == "$" and not answer.endswith("\\$"):
        answer = answer[1:-1].strip()
    return answer


def _extract_math(response: str) -> str | None:
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed
    lines = _MINERVA_LINE.findall(response + " I hope it is correct.")  # a cut-off last line counts, as in lm-eval
    if lines:
        answer = _strip_dollars(lines[-1])
        return answer or None
    return None


def extract_answer(response: str, dataset: str) -> str | None:
    """The final answer a response states, or None. GSM8K: a cleaned number string ("1234", "-3.5", "3/4")."""
    _check_dataset(dataset)
    if not isinstance(response, str) or not response.strip():
        return None
    return _extract_gsm8k(response) if dataset == "gsm8k" else _extract_math(response)


def _minerva_extract(response: str) -> str | None:
    """The paper's extraction: only the Minerva "Final Answer: ... I hope it is correct." line counts."""
    if not isinstance(response, str) or not response.strip():
        return None
    answer = minerva_utils().get_unnormalized_answer(response)
    return None if answer == "[invalidanswer]" or not _strip_dollars(answer) else answer


# ---- vote keys --------------------------------------------------------------------------------------

_MATH_VOTE_DROP = re.compile(r"\\left\b|\\right\b|\\[!,;: ]")


def _as_fraction(answer: str) -> Fraction | None:
    try:
        return Fraction(answer.replace(",", "").replace("$", "").strip().rstrip("."))
    except (ValueError, ZeroDivisionError):
        return None


def normalize_for_vote(answer: str | None, dataset: str) -> str | None:
    """Canonical key under which equal answers vote together ("18", "18.0", "$18" -> "18" on GSM8K)."""
    _check_dataset(dataset)
    if answer is None:
        return None
    if dataset == "gsm8k":
        value = _as_fraction(answer)
        key = str(value) if value is not None else answer.strip()
    else:
        key = _MATH_VOTE_DROP.sub("", _strip_dollars(answer))
        key = re.sub(r"\s+", "", key).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").rstrip(".")
    return key or None


# ---- equivalence (GSM8K in-process; MATH inside workers) ---------------------------------------------


def _gsm8k_reference(reference: str) -> str:
    m = _GSM8K_HASH.search(reference)
    return _clean_number(m.group(1)) if m else reference


def _gsm8k_equal(extracted: str, reference: str) -> bool:
    a, b = _as_fraction(extracted), _as_fraction(_gsm8k_reference(reference))
    if a is None or b is None:
        return normalize_for_vote(extracted, "gsm8k") == normalize_for_vote(_gsm8k_reference(reference), "gsm8k")
    if a == b:
        return True
    try:
        return math.isclose(float(a), float(b), rel_tol=GSM8K_REL_TOL, abs_tol=GSM8K_REL_TOL)
    except OverflowError:
        return False


def _math_reference(reference: str) -> str:
    """A reference may be the raw boxed content (harness.data.problems) or a full solution."""
    boxed = last_boxed(reference)
    return boxed if boxed is not None else reference


def _math_verify_equal(extracted: str, reference: str) -> bool:
    from math_verify import parse, verify

    # `$...$`, not `\boxed{}`: math-verify 0.9 parses "$10\%$" but not "\boxed{10\%}"; a trailing period
    # breaks "1/2." into 1.
    gold = parse(f"${_strip_dollars(_math_reference(reference))}$", parsing_timeout=None)
    if not gold:  # status "error": every sample of this problem would silently count as wrong
        raise ValueError(f"math-verify cannot read the reference {reference!r}")
    pred = parse(f"${_strip_dollars(extracted).rstrip(' .')}$", parsing_timeout=None)
    return bool(verify(gold, pred, timeout_seconds=None))


def _minerva_equal(extracted: str, reference: str) -> bool:
    u = minerva_utils()
    return bool(u.is_equiv(u.normalize_final_answer(extracted), u.normalize_final_answer(_math_reference(reference))))


_EQUAL = {"math_verify": _math_verify_equal, "minerva": _minerva_equal}


class _AnswerTimeout(BaseException):
    """BaseException so that the libraries' `except Exception` blocks let it through."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise _AnswerTimeout()


def _judge(method: str, extracted: str, reference: str, timeout: float) -> tuple[bool, Status]:
    """Runs in a worker's main thread, where SIGALRM can interrupt sympy's Python code."""
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        return _EQUAL[method](extracted, reference), "ok"
    except _AnswerTimeout:
        return False, "timeout"
    except Exception:  # noqa: BLE001 - a grader crash on one answer must not stop the run
        return False, "error"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---- lm-eval's Minerva utilities ---------------------------------------------------------------------

_minerva = None
_minerva_lock = threading.Lock()
MINERVA_LATEX_PARSER = "unknown"  # which LaTeX parser is_equiv uses in this environment (for reports)


@contextlib.contextmanager
def _no_signal_timeout(seconds: int = 1, error_message: str = "Timeout") -> Iterator[None]:
    yield


def minerva_utils() -> Any:
    """lm_eval.tasks.minerva_math.utils, importable beside hydra's antlr4 4.9.

    lm-eval 0.4.13 asserts antlr4 4.11 at import (sympy's parse_latex needs it), but hydra/omegaconf pin
    4.9.3. The assert is bypassed for that one import; when sympy's parser is unusable, is_equiv parses with
    latex2sympy2_extended (math-verify's antlr-4.9 build of the same grammar family), configured like
    sympy's parse_latex (no normalisation, no lower-casing, no mixed fractions). lm-eval's fixed 5 s
    SIGALRM timeout is replaced by the grader's own per-answer timeout, which wraps the whole comparison.
    """
    global _minerva, MINERVA_LATEX_PARSER
    with _minerva_lock:
        if _minerva is not None:
            return _minerva
        import importlib.metadata as md

        import math_verify  # noqa: F401 - must pick its antlr build under the real version first

        real_version = md.version
        md.version = lambda name: "4.11.0" if name == "antlr4-python3-runtime" else real_version(name)
        try:
            import lm_eval.tasks.minerva_math.utils as u
        finally:
            md.version = real_version
        try:
            u.parse_latex("1")
            MINERVA_LATEX_PARSER = "sympy.parsing.latex.parse_latex"
        except ImportError:
            from latex2sympy2_extended import latex2sympy
            from latex2sympy2_extended.latex2sympy2 import ConversionConfig

            config = ConversionConfig(
                interpret_as_mixed_fractions=False, interpret_simple_eq_as_assignment=False,
                interpret_contains_as_eq=False, lowercase_symbols=False,
            )
            u.parse_latex = lambda s: latex2sympy(s, normalization_config=None, conversion_config=config)
            MINERVA_LATEX_PARSER = "latex2sympy2_extended.latex2sympy (sympy's parse_latex needs antlr4 4.11)"
        u.timeout = _no_signal_timeout
        _minerva = u
        return u


# ---- worker processes --------------------------------------------------------------------------------


def _warm_up(method: str) -> None:
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout is disabled" warnings: ours is on
    logging.getLogger("latex2sympy2_extended").setLevel(logging.ERROR)
    if method == "minerva":
        minerva_utils()
    _EQUAL[method]("1", "2")


def _worker_main(method: str) -> None:
    """A worker: JSON lines in on stdin, JSON lines out on the original stdout."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever the libraries print must not corrupt the replies
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops the workers
    try:
        _warm_up(method)
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        replies.write(json.dumps({"kind": "fatal", "error": traceback.format_exc()}) + "\n")
        return
    replies.write(json.dumps({"kind": "ready"}) + "\n")
    for line in sys.stdin:
        task = json.loads(line)
        correct, status = _judge(method, task["extracted"], task["reference"], task["timeout"])
        replies.write(json.dumps({"kind": "done", "id": task["id"], "correct": correct, "status": status}) + "\n")


def _worker_command(method: str) -> list[str]:
    return [sys.executable, "-c", f"from harness.grading.grader import _worker_main; _worker_main({method!r})"]


class _Worker:
    """A plain subprocess rather than multiprocessing: spawn/forkserver children re-import the caller's
    __main__ (breaking unguarded scripts), and fork copies a parent that may hold torch threads."""

    def __init__(self, method: str):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            _worker_command(method),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, bufsize=0,
        )
        self.fd = self.proc.stdout.fileno()
        self.buffer = b""
        self.ready = False
        self.task: int | None = None
        self.deadline = time.monotonic() + WORKER_STARTUP_S

    def send(self, message: dict) -> None:
        data = memoryview(json.dumps(message).encode() + b"\n")
        while data:  # an unbuffered pipe may take a long message in parts
            data = data[self.proc.stdin.write(data) :]

    def receive(self) -> list[dict] | None:
        """Complete messages now readable; None once the worker has exited."""
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            return None
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()

    def stop(self, deadline: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        self.kill()


class _WorkerPool:
    """Per-task deadlines with kill-and-replace.

    Hand-written because concurrent.futures / multiprocessing.Pool cannot kill one hung task: the whole
    executor breaks (BrokenProcessPool) or the hung worker blocks shutdown.
    """

    def __init__(self, method: str, workers: int):
        self.method, self.size = method, workers
        self.workers: list[_Worker] = []

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self.workers[self.workers.index(w)] = _Worker(self.method)

    def _fail(self, message: str) -> None:
        self.close()
        raise HarnessError(f"grader worker ({self.method}) {message}")

    def run(self, tasks: Sequence[tuple[str, str]], timeout: float) -> list[tuple[bool, Status]]:
        results: list[tuple[bool, Status] | None] = [None] * len(tasks)
        pending = deque(range(len(tasks)))
        while len(self.workers) < min(self.size, len(tasks)):
            self.workers.append(_Worker(self.method))
        while pending or any(w.task is not None for w in self.workers):
            for w in list(self.workers):
                if w.ready and w.task is None and pending:
                    tid = pending.popleft()
                    try:
                        w.send({"id": tid, "extracted": tasks[tid][0], "reference": tasks[tid][1], "timeout": timeout})
                    except OSError:  # died since its last answer
                        pending.appendleft(tid)
                        self._replace(w)
                        continue
                    w.task, w.deadline = tid, time.monotonic() + timeout + KILL_GRACE_S
            by_fd = {w.fd: w for w in self.workers if not w.ready or w.task is not None}
            wait_s = max(0.0, min(w.deadline for w in by_fd.values()) - time.monotonic())
            for fd in wait_for(list(by_fd), timeout=wait_s):
                w = by_fd[fd]
                messages = w.receive()
                if messages is None:  # the worker died (e.g. out of memory)
                    if not w.ready:
                        self._fail("exited while starting")
                    if w.task is not None:
                        results[w.task] = (False, "error")
                        w.task = None
                    self._replace(w)
                    continue
                for msg in messages:
                    if msg["kind"] == "fatal":
                        self._fail(f"failed to start: {msg['error'].strip().splitlines()[-1]}")
                    elif msg["kind"] == "ready":
                        w.ready = True
                    elif msg["id"] == w.task:
                        results[w.task] = (bool(msg["correct"]), msg["status"])
                        w.task = None
            now = time.monotonic()
            for w in list(self.workers):
                if w.task is not None and now > w.deadline:
                    results[w.task] = (False, "timeout")
                    w.task = None
                    self._replace(w)
                elif not w.ready and now > w.deadline:
                    self._fail(f"did not start within {WORKER_STARTUP_S:.0f} s")
        return results  # type: ignore[return-value]

    def close(self) -> None:
        for w in self.workers:
            with contextlib.suppress(OSError):
                w.proc.stdin.close()  # end of input: an idle worker exits by itself
        deadline = time.monotonic() + 0.5  # idle workers hold nothing worth waiting for
        for w in self.workers:
            w.stop(deadline)
        self.workers = []


# ---- public API --------------------------------------------------------------------------------------


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ConfigError(f"dataset '{dataset}' has no grader: expected one of {', '.join(DATASETS)}")


class Grader:
    """Grades many responses; MATH equivalence runs in `workers` processes with a per-answer `timeout`.

    Verdicts are cached per (extracted answer, reference): repeated sampling produces the same final
    answer many times. GSM8K never starts a worker. Use as a context manager, or call close().
    """

    def __init__(self, dataset: str, method: str = "math_verify", timeout: float = 5.0, workers: int = 2):
        _check_dataset(dataset)
        if method not in METHODS:
            raise ConfigError(f"grader.method '{method}' is unknown: expected one of {', '.join(METHODS)}")
        if not timeout > 0:
            raise ConfigError(f"grader.timeout must be > 0 seconds, got {timeout}")
        if int(workers) < 1:
            raise ConfigError(f"grader.workers must be >= 1, got {workers}")
        self.dataset, self.method, self.timeout, self.workers = dataset, method, float(timeout), int(workers)
        self._pool: _WorkerPool | None = None
        self._cache: dict[tuple[str, str], tuple[bool, Status]] = {}
        self._lock = threading.Lock()

    def extract(self, response: str) -> str | None:
        if self.dataset == "math" and self.method == "minerva":
            return _minerva_extract(response)
        return extract_answer(response, self.dataset)

    def grade(self, response: str, reference: str) -> GradeResult:
        return self.grade_many([response], [reference])[0]

    def grade_many(self, responses: Sequence[str], references: Sequence[str]) -> list[GradeResult]:
        if len(responses) != len(references):
            raise ValueError(f"{len(responses)} responses but {len(references)} references")
        extracted = [self.extract(r) for r in responses]
        keys = [(e, str(ref)) for e, ref in zip(extracted, references)]
        with self._lock:
            todo = list(dict.fromkeys(k for k in keys if k[0] is not None and k not in self._cache))
            if todo and self.dataset == "gsm8k":
                for k in todo:
                    self._cache[k] = (_gsm8k_equal(*k), "ok")
            elif todo:
                if self._pool is None:
                    self._pool = _WorkerPool(self.method, self.workers)
                for k, verdict in zip(todo, self._pool.run(todo, self.timeout)):
                    self._cache[k] = verdict
            out = []
            for e, k in zip(extracted, keys):
                if e is None:
                    out.append(GradeResult(False, None, "no_answer"))
                else:
                    correct, status = self._cache[k]
                    out.append(GradeResult(bool(correct), e, status))
            return out

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def __enter__(self) -> "Grader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def find_disagreements(results: dict[str, Sequence[GradeResult]]) -> list[Disagreement]:
    """Indices where graders (method -> results on the same inputs) give different verdicts."""
    names = list(results)
    lengths = {len(r) for r in results.values()}
    if len(lengths) > 1:
        raise ValueError(f"graders graded different numbers of responses: {lengths}")
    out = []
    for i in range(lengths.pop() if lengths else 0):
        verdicts = {name: results[name][i] for name in names}
        if len({v.correct for v in verdicts.values()}) > 1:
            out.append(Disagreement(i, verdicts))
    return out


def compare_graders(
    dataset: str,
    responses: Sequence[str],
    references: Sequence[str],
    methods: Sequence[str] = METHODS,
    timeout: float = 5.0,
    workers: int = 2,
) -> list[Disagreement]:
    """Grade the same responses with each method; return where their verdicts differ."""
    results = {}
    for method in methods:
        with Grader(dataset, method=method, timeout=timeout, workers=workers) as grader:
            results[method] = grader.grade_many(responses, references)
    return find_disagreements(results)


_default_graders: dict[str, Grader] = {}
_default_lock = threading.Lock()


def is_correct(response: str, reference: str, dataset: str) -> bool:
    """One response against one reference (math-verify for MATH), with a lazily started shared worker."""
    _check_dataset(dataset)
    with _default_lock:
        grader = _default_graders.get(dataset)
        if grader is None:
            grader = _default_graders[dataset] = Grader(dataset, "math_verify", timeout=5.0, workers=1)
    return grader.grade(response, reference).correct


@atexit.register
def _close_default_graders() -> None:
    for grader in _default_graders.values():
        grader.close()
