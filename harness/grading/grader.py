"""Grade model responses against reference answers: equivalence under both answer modes, vote keys.

Every response gets two verdicts (harness.grading.extract): strict (an explicitly stated, not cut-off final
answer) and lenient (the stated answer, else the last number); `GradeResult.correct` is the grader's mode.
GSM8K is graded by exact numeric comparison in-process, a stated answer only when it is one number. MATH is graded by math-verify (default) or by
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
from multiprocessing.connection import wait as wait_for
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

from harness.errors import ConfigError, HarnessError
from harness.grading.extract import (
    EXTRACTION_VERSION,
    MODES,
    Statement,
    as_fraction,
    is_truncated,
    join_digit_groups,
    last_boxed,
    last_number,
    read_number,
    stated_answer,
    strip_dollars,
)

DATASETS = ("gsm8k", "math")
METHODS = ("math_verify", "minerva")
Status = Literal["ok", "no_answer", "truncated", "timeout", "error"]
UNSETTLED: tuple[Status, ...] = ("timeout", "error")  # verdicts that say nothing about the answer: never cached

GSM8K_REL_TOL = 1e-6
# A worker's own alarm fires at `timeout`; the parent kills it only if it is still silent this much later
# (sympy stuck inside C code does not see the alarm).
KILL_GRACE_S = 2.0
WORKER_STARTUP_S = 120.0
_PROJECT_ROOT = Path(__file__).resolve().parents[2]  # workers import harness.grading.grader from here


@dataclass(frozen=True)
class GradeResult:
    correct: bool  # under the grader's mode
    extracted: str | None  # the answer graded under the grader's mode
    status: Status  # of the verdict under the grader's mode
    answered: bool = False  # a strict answer is present: stated explicitly and not cut off
    correct_strict: bool = False
    correct_lenient: bool = False
    status_strict: Status = "no_answer"
    status_lenient: Status = "no_answer"
    extracted_strict: str | None = None
    extracted_lenient: str | None = None

    @property
    def settled(self) -> bool:
        """Neither verdict is a timeout or a crash (those may come out differently on another run)."""
        return self.status_strict not in UNSETTLED and self.status_lenient not in UNSETTLED


@dataclass(frozen=True)
class Disagreement:
    index: int
    results: dict[str, GradeResult]  # grader method -> its verdict on response `index`


# ---- answer extraction ------------------------------------------------------------------------------

_MINERVA_LINE = re.compile(r"Final Answer: The final answer is(.*?)\.?\s*I hope it is correct")


def _extract_gsm8k(response: str) -> str | None:
    statement = stated_answer(response)
    return read_number(statement.answer) if statement else last_number(response)


def _extract_math(response: str) -> str | None:
    statement = stated_answer(response)
    return strip_dollars(statement.answer) or None if statement else None


def extract_answer(response: str, dataset: str, mode: str = "lenient") -> str | None:
    """The final answer a response states, or None. GSM8K: a cleaned number string ("1234", "-3.5", "3/4"),
    None when the stated answer is not one number. Strict: only a stated answer (truncation is the
    grader's business: it needs the finish reason)."""
    _check_dataset(dataset)
    check_mode(mode)
    if not isinstance(response, str) or not response.strip():
        return None
    if dataset == "gsm8k":
        if mode == "strict":
            statement = stated_answer(response)
            return read_number(statement.answer) if statement else None
        return _extract_gsm8k(response)
    return _extract_math(response)


def _minerva_extract(response: str) -> str | None:
    """The paper's extraction: only the Minerva "Final Answer: ... I hope it is correct." line counts."""
    if not isinstance(response, str) or not response.strip():
        return None
    answer = minerva_utils().get_unnormalized_answer(response)
    return None if answer == "[invalidanswer]" or not strip_dollars(answer) else answer


# ---- vote keys --------------------------------------------------------------------------------------

_MATH_VOTE_DROP = re.compile(r"\\left\b|\\right\b|\\[!,;: ]")


def normalize_for_vote(answer: str | None, dataset: str) -> str | None:
    """Canonical key under which equal answers vote together ("18", "18.0", "$18" -> "18" on GSM8K)."""
    _check_dataset(dataset)
    if answer is None:
        return None
    if dataset == "gsm8k":
        value = as_fraction(answer)
        key = str(value) if value is not None else answer.strip()
    else:
        key = _MATH_VOTE_DROP.sub("", strip_dollars(answer))
        key = re.sub(r"\s+", "", key).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").rstrip(".")
    return key or None


# ---- equivalence (GSM8K in-process; MATH inside workers) ---------------------------------------------


def _gsm8k_reference(reference: str) -> str:
    statement = stated_answer(reference)  # a full solution ends in "#### N"
    number = read_number(statement.answer) if statement else None
    return number if number is not None else reference


def _gsm8k_equal(extracted: str | None, reference: str) -> bool:
    if extracted is None:  # a stated answer that is not one number ("10^{10^{10}}", "\\frac{1+\\sqrt5}{2}")
        return False
    a, b = as_fraction(extracted), as_fraction(_gsm8k_reference(reference))
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


def _parsed(parsed: list) -> bool:
    """math-verify read an expression (it returns only the string when its LaTeX conversion failed)."""
    return len(parsed) >= 2


def _math_verify_equal(text: str, reference: str, answer: str | None) -> tuple[bool, str | None]:
    """math-verify on the statement `text` (its own rules pick the answer: several boxes, "final answer is");
    when it reads nothing there, on the stated `answer` alone in `$...$` (math-verify 0.9 reads "$10\\%$"
    but not "\\boxed{10\\%}")."""
    from math_verify import parse, verify

    # "1 000" is 1000 on either side (math-verify alone reads 1*000 = 0)
    text, reference = join_digit_groups(text), join_digit_groups(reference)
    answer = join_digit_groups(answer) if answer else answer
    if re.search(r"(?<!\\)\$|\\boxed|\\fbox", reference):  # stated: math-verify's own rules
        gold = parse(reference, parsing_timeout=None)  # (several boxes are one answer, as in a response)
    else:  # raw LaTeX, as datasets hold it
        gold = parse(f"${reference.strip().rstrip(' .')}$", parsing_timeout=None)
    if not gold:  # status "error": every sample of this problem would silently count as wrong
        raise ValueError(f"math-verify cannot read the reference {reference!r}")
    pred = parse(text, parsing_timeout=None)
    if not _parsed(pred) and answer:
        pred = parse(f"${strip_dollars(answer).rstrip(' .')}$", parsing_timeout=None) or pred
    read = str(pred[-1]) if pred else None
    return bool(verify(gold, pred, timeout_seconds=None)), read


def _minerva_equal(text: str, reference: str, answer: str | None) -> tuple[bool, str | None]:
    u = minerva_utils()
    return bool(u.is_equiv(u.normalize_final_answer(text), u.normalize_final_answer(_math_reference(reference)))), text


_EQUAL = {"math_verify": _math_verify_equal, "minerva": _minerva_equal}


class _AnswerTimeout(BaseException):
    """BaseException so that the libraries' `except Exception` blocks let it through."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise _AnswerTimeout()


def _judge(method: str, text: str, reference: str, answer: str | None, timeout: float) -> tuple[bool, Status, str | None]:
    """Runs in a worker's main thread, where SIGALRM can interrupt sympy's Python code."""
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        correct, read = _EQUAL[method](text, reference, answer)
        return correct, "ok", read
    except _AnswerTimeout:
        return False, "timeout", None
    except Exception:  # noqa: BLE001 - a grader crash on one answer must not stop the run
        return False, "error", None
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
    _EQUAL[method]("1", "2", None)


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
        correct, status, read = _judge(method, task["extracted"], task["reference"], task.get("answer"), task["timeout"])
        replies.write(json.dumps({"kind": "done", "id": task["id"], "correct": correct, "status": status,
                                  "read": read}) + "\n")


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

    def run(self, tasks: Sequence[tuple[str, str, str | None]], timeout: float) -> list[tuple[bool, Status, str | None]]:
        """Each task is (text, reference, stated answer or None); each result (correct, status, what was read)."""
        results: list[tuple[bool, Status, str | None] | None] = [None] * len(tasks)
        pending = deque(range(len(tasks)))
        while len(self.workers) < min(self.size, len(tasks)):
            self.workers.append(_Worker(self.method))
        while pending or any(w.task is not None for w in self.workers):
            for w in list(self.workers):
                if w.ready and w.task is None and pending:
                    tid = pending.popleft()
                    try:
                        text, reference, answer = tasks[tid]
                        w.send({"id": tid, "extracted": text, "reference": reference, "answer": answer, "timeout": timeout})
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
                        results[w.task] = (False, "error", None)
                        w.task = None
                    self._replace(w)
                    continue
                for msg in messages:
                    if msg["kind"] == "fatal":
                        self._fail(f"failed to start: {msg['error'].strip().splitlines()[-1]}")
                    elif msg["kind"] == "ready":
                        w.ready = True
                    elif msg["id"] == w.task:
                        results[w.task] = (bool(msg["correct"]), msg["status"], msg.get("read"))
                        w.task = None
            now = time.monotonic()
            for w in list(self.workers):
                if w.task is not None and now > w.deadline:
                    results[w.task] = (False, "timeout", None)
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


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"grader.mode '{mode}' is unknown: expected one of {', '.join(MODES)}")


def grader_version(method: str) -> str:
    """What can change a verdict besides the inputs: our extraction rules and the judging library's version."""
    import importlib.metadata as md

    library = "math-verify" if method == "math_verify" else "lm_eval"
    try:
        version = md.version(library)
    except md.PackageNotFoundError:
        version = "absent"
    return f"extract-{EXTRACTION_VERSION}+{library}-{version}"


@dataclass(frozen=True)
class _Plan:
    """How one response is judged under one mode: `key` for a verdict, or a fixed `status` without one."""

    key: tuple | None  # (text, reference, stated answer): judged once however many responses share it
    extracted: str | None
    status: Status | None = None  # no_answer / truncated when there is nothing to judge


class Grader:
    """Grades many responses under both modes; MATH equivalence runs in `workers` processes with a
    per-answer `timeout`. `mode` (strict | lenient) is the one `GradeResult.correct` reports.

    Verdicts are cached per (answer text, reference): repeated sampling states the same final answer
    many times. GSM8K never starts a worker. Use as a context manager, or call close().
    """

    def __init__(self, dataset: str, method: str = "math_verify", timeout: float = 5.0, workers: int = 2,
                 mode: str = "strict"):
        _check_dataset(dataset)
        if method not in METHODS:
            raise ConfigError(f"grader.method '{method}' is unknown: expected one of {', '.join(METHODS)}")
        check_mode(mode)
        if not timeout > 0:
            raise ConfigError(f"grader.timeout must be > 0 seconds, got {timeout}")
        if int(workers) < 1:
            raise ConfigError(f"grader.workers must be >= 1, got {workers}")
        self.dataset, self.method, self.timeout, self.workers = dataset, method, float(timeout), int(workers)
        self.mode = mode
        self.version = grader_version(method if dataset == "math" else "gsm8k")
        self._pool: _WorkerPool | None = None
        self._cache: dict[tuple, tuple[bool, Status, str | None]] = {}
        self._lock = threading.Lock()

    def extract(self, response: str) -> str | None:
        """The answer graded under the grader's mode (without the finish reason: truncation is not seen)."""
        if self.dataset == "math" and self.method == "minerva":
            return _minerva_extract(response)
        return extract_answer(response, self.dataset, self.mode)

    def _plans(self, response: str, reference: str, finish_reason: object) -> dict[str, _Plan]:
        if not isinstance(response, str) or not response.strip():
            return {m: _Plan(None, None, "no_answer") for m in MODES}
        truncated = is_truncated(finish_reason)
        if self.dataset == "math" and self.method == "minerva":
            answer = _minerva_extract(response)
            statement = None if answer is None else Statement(answer, answer, 0, 0)
        else:
            statement = stated_answer(response)
        if statement is not None:
            if self.dataset == "gsm8k":
                number = read_number(statement.answer)
                stated = _Plan(("gsm8k", number, reference), number if number is not None else statement.answer)
            else:
                stated = _Plan((statement.region, reference, statement.answer), statement.answer)
            strict = _Plan(None, statement.answer, "truncated") if truncated else stated
            return {"strict": strict, "lenient": stated}
        if self.dataset == "gsm8k":
            number = last_number(response)
            lenient = _Plan(("gsm8k", number, reference), number) if number is not None else _Plan(None, None, "no_answer")
        elif self.method == "math_verify":
            lines = [line for line in response.strip().splitlines() if line.strip()]
            lenient = _Plan((lines[-1][-500:], reference, None), None)  # math-verify's unanchored rules
        else:
            lenient = _Plan(None, None, "no_answer")
        return {"strict": _Plan(None, None, "no_answer"), "lenient": lenient}

    def grade(self, response: str, reference: str, finish_reason: str | None = None) -> GradeResult:
        return self.grade_many([response], [reference], [finish_reason])[0]

    def grade_many(self, responses: Sequence[str], references: Sequence[str],
                   finish_reasons: Sequence[str | None] | None = None) -> list[GradeResult]:
        """One GradeResult per response; `finish_reasons` ("length": cut off by the token limit) default to none."""
        if len(responses) != len(references):
            raise ValueError(f"{len(responses)} responses but {len(references)} references")
        finish_reasons = list(finish_reasons) if finish_reasons is not None else [None] * len(responses)
        if len(finish_reasons) != len(responses):
            raise ValueError(f"{len(responses)} responses but {len(finish_reasons)} finish reasons")
        plans = [self._plans(r, str(ref), f) for r, ref, f in zip(responses, references, finish_reasons)]
        with self._lock:
            todo = list(dict.fromkeys(p.key for ps in plans for p in ps.values()
                                      if p.key is not None and p.key not in self._cache))
            if todo and self.dataset == "gsm8k":
                for key in todo:
                    self._cache[key] = (_gsm8k_equal(key[1], key[2]), "ok", key[1])
            elif todo:
                if self._pool is None:
                    self._pool = _WorkerPool(self.method, self.workers)
                for key, verdict in zip(todo, self._pool.run(todo, self.timeout)):
                    self._cache[key] = verdict
            results = [self._result(ps) for ps in plans]
            for key in todo:  # a timeout or crash is tried again next time, never remembered
                if self._cache[key][1] in UNSETTLED:
                    del self._cache[key]
            return results

    def _result(self, plans: dict[str, _Plan]) -> GradeResult:
        verdicts = {}
        for mode, plan in plans.items():
            if plan.key is None:
                verdicts[mode] = (False, plan.status, plan.extracted)
            else:
                correct, status, read = self._cache[plan.key]
                verdicts[mode] = (bool(correct), status, plan.extracted if plan.extracted is not None else read)
        correct, status, extracted = verdicts[self.mode]
        return GradeResult(
            correct, extracted, status,
            answered=plans["strict"].key is not None,
            correct_strict=verdicts["strict"][0], correct_lenient=verdicts["lenient"][0],
            status_strict=verdicts["strict"][1], status_lenient=verdicts["lenient"][1],
            extracted_strict=verdicts["strict"][2], extracted_lenient=verdicts["lenient"][2],
        )

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
    mode: str = "strict",
) -> list[Disagreement]:
    """Grade the same responses with each method; return where their verdicts differ."""
    results = {}
    for method in methods:
        with Grader(dataset, method=method, timeout=timeout, workers=workers, mode=mode) as grader:
            results[method] = grader.grade_many(responses, references)
    return find_disagreements(results)


_default_graders: dict[str, Grader] = {}
_default_lock = threading.Lock()


def is_correct(response: str, reference: str, dataset: str) -> bool:
    """One response against one reference under the strict mode (math-verify for MATH), with a lazily
    started shared worker."""
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
