"""Estimators over graded samples: pass@k / coverage, selection (voting, best-of-k) as expectations over
size-k subsets of each problem's n samples, and bootstrap CIs over problems.

Selection methods are never evaluated on "the first k samples": that estimate has needless variance.
Each is the expectation over a uniformly random size-k subset, exact where the subsets can be enumerated
(or, for best-of-k, always, via order statistics) and Monte Carlo with seeded subsets otherwise.
"""
from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy.special import gammaln

# Canonical selection-method names and the spellings the papers' configs use for them. Every estimate of
# "how often does this method pick a correct answer from k samples" goes through `method_value`.
METHODS = ("majority", "weighted_vote", "best_of_k", "pass@k")
METHOD_ALIASES = {
    "majority": "majority",
    "majority_vote": "majority",
    "maj": "majority",
    "weighted_vote": "weighted_vote",
    "rm_weighted_vote": "weighted_vote",
    "reward_model_weighted_vote": "weighted_vote",
    "best_of_k": "best_of_k",
    "best_of_n": "best_of_k",
    "rm_best_of_k": "best_of_k",
    "reward_model_best_of_k": "best_of_k",
    "rm_best_of_n": "best_of_k",  # the compute-optimal paper's name
    "pass@k": "pass@k",
    "pass_at_k": "pass@k",
    "coverage": "pass@k",  # the Monkeys paper's name
}
SCORED_METHODS = ("weighted_vote", "best_of_k")  # need a reward-model score per sample


def canonical_method(name: str) -> str:
    """The canonical name (one of METHODS) of a selection method, from any of its accepted spellings."""
    try:
        return METHOD_ALIASES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown selection method {name!r}: expected one of {', '.join(METHOD_ALIASES)}") from None


def needs_scores(method: str) -> bool:
    return canonical_method(method) in SCORED_METHODS


def k_grid(n: int, ks: Sequence[int] | None = None) -> list[int]:
    """The k (samples per problem, or budget N) of every curve: the given ks within 1..n, else 1, 2, 4, ... and n."""
    n = _check_int("n", n)
    if n < 1:
        raise ValueError(f"k_grid needs n >= 1, got {n}")
    if ks:
        return sorted({int(k) for k in ks if 1 <= int(k) <= n})
    return sorted({2**i for i in range(n.bit_length()) if 2**i <= n} | {n})


def problem_rng(seed: int, problem_id: Any, k: int) -> np.random.Generator:
    """The Monte Carlo generator of one (problem, k): derived from (seed, problem_id, k) by hashing, so a
    problem's estimate does not move when other problems are added, removed or reordered."""
    digest = hashlib.sha256(f"{int(seed)}\x00{problem_id}\x00{int(k)}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


@dataclass(frozen=True)
class PairedDifference:
    """mean(a - b) over the same problems, with a percentile-bootstrap CI over problems."""

    mean: float
    ci_low: float
    ci_high: float
    n: int

    @property
    def status(self) -> str:
        """'holds' when the CI lies above 0, 'fails' below, else 'inconclusive'."""
        return "holds" if self.ci_low > 0 else "fails" if self.ci_high < 0 else "inconclusive"

    def text(self) -> str:
        return (f"{self.mean * 100:+.1f} points [{self.ci_low * 100:+.1f}, {self.ci_high * 100:+.1f}] "
                f"(paired bootstrap, n={self.n})")


def paired_bootstrap(a: Any, b: Any, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> PairedDifference:
    """Difference of two methods / models / iterations on the same problems (row i of a and b: problem i)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_bootstrap needs two 1-D arrays over the same problems, got {a.shape} and {b.shape}")
    mean, low, high = bootstrap_ci(a - b, n_boot=n_boot, seed=seed, alpha=alpha)
    return PairedDifference(mean, low, high, len(a))


def _check_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021)."""
    n, c, k = _check_int("n", n), _check_int("c", c), _check_int("k", k)
    if n < 1 or not 0 <= c <= n:
        raise ValueError(f"need n >= 1 and 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    # The product form of the ratio of binomials never builds the (huge) binomials themselves.
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=float)))


def bootstrap_ci(
    values: Any, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05
) -> tuple[Any, Any, Any]:
    """Mean and percentile-bootstrap (1 - alpha) CI over rows (problems).

    1-D input -> three floats; 2-D (problems x columns) -> three arrays, every column resampled with the
    same problem draws (so differences between columns are consistent).
    """
    v = np.asarray(values, dtype=float)
    if v.ndim not in (1, 2) or v.shape[0] == 0:
        raise ValueError(f"bootstrap_ci needs a non-empty 1-D or 2-D array, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError("bootstrap_ci got NaN or infinite values")
    if not 0 < alpha < 1 or int(n_boot) < 1:
        raise ValueError(f"need 0 < alpha < 1 and n_boot >= 1, got alpha={alpha}, n_boot={n_boot}")
    cols = v.reshape(v.shape[0], -1)
    p, n_cols = cols.shape
    rng = np.random.default_rng(seed)
    means = np.empty((int(n_boot), n_cols))
    chunk = max(1, 4_000_000 // (p * n_cols))  # bounds memory for many problems
    for start in range(0, int(n_boot), chunk):
        m = min(chunk, int(n_boot) - start)
        means[start : start + m] = cols[rng.integers(0, p, size=(m, p))].mean(axis=1)
    mean = cols.mean(axis=0)
    low = np.quantile(means, alpha / 2, axis=0)
    high = np.quantile(means, 1 - alpha / 2, axis=0)
    if v.ndim == 1:
        return float(mean[0]), float(low[0]), float(high[0])
    return mean, low, high


def _curve(values: np.ndarray, ks: Sequence[int], column: str, n_boot: int, seed: int, alpha: float) -> pd.DataFrame:
    mean, low, high = bootstrap_ci(values, n_boot=n_boot, seed=seed, alpha=alpha)
    return pd.DataFrame(
        {"k": [int(k) for k in ks], column: mean, "ci_low": low, "ci_high": high, "n_problems": values.shape[0]}
    )


def coverage_curve(
    counts: Sequence[tuple[int, int]], ks: Sequence[int], n_boot: int = 2000, seed: int = 0, alpha: float = 0.05
) -> pd.DataFrame:
    """Coverage (mean pass@k over problems) at each k, with a bootstrap CI over problems.

    counts: (n_i, c_i) per problem. Columns: k, coverage, ci_low, ci_high, n_problems.
    """
    if len(counts) == 0 or len(ks) == 0:
        raise ValueError("coverage_curve needs at least one problem and one k")
    return _curve(pass_at_k_table(counts, ks), ks, "coverage", n_boot, seed, alpha)


def pass_at_k_table(counts: Sequence[tuple[int, int]], ks: Sequence[int]) -> np.ndarray:
    """pass@k per problem (rows: (n_i, c_i) of `counts`) at each k (columns)."""
    return np.array([[pass_at_k(int(n), int(c), int(k)) for k in ks] for n, c in counts])


# ---- selection as expectations over size-k subsets ----------------------------------------------------


def _rng(rng_or_seed: Any) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


def _subsets(n: int, k: int, rng: np.random.Generator, exact_limit: int, num_subsets: int) -> np.ndarray:
    """All C(n, k) index subsets (M x k) when there are at most exact_limit, else num_subsets random ones."""
    if math.comb(n, k) <= exact_limit:
        return np.array(list(itertools.combinations(range(n), k)), dtype=np.intp).reshape(-1, k)
    return np.argpartition(rng.random((num_subsets, n)), k - 1, axis=1)[:, :k]


def _missing(answer: Any) -> bool:
    return answer is None or (isinstance(answer, float) and math.isnan(answer))  # pandas turns None into NaN


def _encode(answers: Sequence[str | None], correct: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Answer ids (None -> the sentinel id G) and each answer's correctness (mean over its samples)."""
    table: dict[str, int] = {}
    ids = np.array([-1 if _missing(a) else table.setdefault(a, len(table)) for a in answers], dtype=np.intp)
    groups = len(table)
    ids[ids < 0] = groups
    corr = np.asarray(correct, dtype=float)
    sums = np.bincount(ids, weights=corr, minlength=groups + 1)[:groups]
    sizes = np.bincount(ids, minlength=groups + 1)[:groups]
    return ids, sums / np.maximum(sizes, 1)


def _winner_value(counts: np.ndarray, score: np.ndarray, group_correct: np.ndarray) -> float:
    """Mean over rows (subsets) of P(the winning answer is correct): ties split uniformly, None never wins.

    counts/score: (subsets x answers) vote counts and vote totals, the None column already dropped.
    """
    present = counts > 0
    masked = np.where(present, score, -np.inf)
    best = masked.max(axis=1, keepdims=True)
    # Float sums of equal weights in different orders may differ in the last bits: still a tie.
    winners = present & (masked >= best - 1e-9 * np.maximum(1.0, np.abs(best)))
    n_win = winners.sum(axis=1)
    value = (winners * group_correct).sum(axis=1) / np.maximum(n_win, 1)
    return float(np.where(n_win > 0, value, 0.0).mean())


def _vote_value(
    ids: np.ndarray,
    group_correct: np.ndarray,
    weights: np.ndarray | None,
    k: int,
    rng: np.random.Generator,
    exact_limit: int,
    num_subsets: int,
) -> float:
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    groups = len(group_correct)
    if groups == 0:
        return 0.0
    n = len(ids)
    if weights is None and math.comb(n, k) > exact_limit:
        # Majority vote only needs each answer's count in the subset: draw those directly, O(answers) per
        # subset instead of O(n) (matters at the paper's n = 10,000).
        sizes = np.bincount(ids, minlength=groups + 1)
        counts = rng.multivariate_hypergeometric(sizes, k, size=num_subsets)[:, :groups]
        return _winner_value(counts, counts.astype(float), group_correct)
    subsets = _subsets(n, k, rng, exact_limit, num_subsets)
    m = subsets.shape[0]
    flat = (ids[subsets] + (groups + 1) * np.arange(m)[:, None]).ravel()
    size = m * (groups + 1)
    counts = np.bincount(flat, minlength=size).reshape(m, groups + 1)[:, :groups]
    if weights is None:
        score = counts.astype(float)
    else:
        score = np.bincount(flat, weights=weights[subsets].ravel(), minlength=size).reshape(m, groups + 1)[:, :groups]
    return _winner_value(counts, score, group_correct)


def _check_lengths(k: int, **arrays: Sequence[Any]) -> int:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"lengths differ: {lengths}")
    n = next(iter(lengths.values()))
    k = _check_int("k", k)
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k} with n={n} samples")
    return n


def expected_majority_vote(
    answers: Sequence[str | None],
    correct: Sequence[bool],
    k: int,
    rng_or_seed: Any = 0,
    exact_limit: int = 20000,
    num_subsets: int = 1000,
) -> float:
    """P(majority answer of a uniformly random size-k subset is correct); ties split uniformly; None abstains.

    An answer's correctness is the mean correctness of the samples giving it (0 or 1 when the grader is
    consistent on equal vote keys).
    """
    return _expected_vote(answers, None, correct, k, rng_or_seed, exact_limit, num_subsets)


def _check_weights(weights: Sequence[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=float)
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("vote weights must be finite and >= 0 (map reward-model logits to probabilities first)")
    return w


def expected_weighted_vote(
    answers: Sequence[str | None],
    weights: Sequence[float],
    correct: Sequence[bool],
    k: int,
    rng_or_seed: Any = 0,
    exact_limit: int = 20000,
    num_subsets: int = 1000,
) -> float:
    """As expected_majority_vote, each sample voting with its weight (e.g. a reward-model score)."""
    return _expected_vote(answers, weights, correct, k, rng_or_seed, exact_limit, num_subsets)


def _expected_vote(answers, weights, correct, k, rng_or_seed, exact_limit, num_subsets) -> float:
    """Majority vote (weights None: the count-only fast path) or weighted vote, over size-k subsets."""
    if weights is None:
        _check_lengths(k, answers=answers, correct=correct)
        w = None
    else:
        _check_lengths(k, answers=answers, weights=weights, correct=correct)
        w = _check_weights(weights)
    ids, group_correct = _encode(answers, correct)
    return _vote_value(ids, group_correct, w, int(k), _rng(rng_or_seed), exact_limit, num_subsets)


def _log_comb(m: np.ndarray, k: int) -> np.ndarray:
    return gammaln(m + 1) - gammaln(k + 1) - gammaln(m - k + 1)


def expected_best_of_k(scores: Sequence[float], correct: Sequence[bool], k: int) -> float:
    """P(the highest-scoring sample of a uniformly random size-k subset is correct), exactly.

    For a group of t samples tied at one score with L samples strictly below, P(the subset's best lies in
    the group) = (C(L+t, k) - C(L, k)) / C(n, k); a uniform tie-break makes each member equally likely.
    """
    n = _check_lengths(k, scores=scores, correct=correct)
    s = np.asarray(scores, dtype=float)
    if not np.all(np.isfinite(s)):
        raise ValueError("best-of-k scores must be finite")
    _, group = np.unique(s, return_inverse=True)
    sizes = np.bincount(group)
    correct_in_group = np.bincount(group, weights=np.asarray(correct, dtype=float))
    below = np.cumsum(sizes) - sizes

    def all_within(m: np.ndarray) -> np.ndarray:  # C(m, k) / C(n, k)
        out = np.zeros(len(m))
        ok = m >= k
        out[ok] = np.exp(_log_comb(m[ok].astype(float), k) - _log_comb(np.array([float(n)]), k))
        return out

    p_group = all_within(below + sizes) - all_within(below)
    return float(np.sum(p_group * correct_in_group / sizes))


def _field(record: Any, key: str, where: str) -> Any:
    if isinstance(record, Mapping):
        if key in record:
            return record[key]
    elif hasattr(record, key):
        return getattr(record, key)
    raise ValueError(f"{where} has no field '{key}'")


def method_value(
    method: str,
    correct: Sequence[bool],
    k: int,
    answers: Sequence[str | None] | None = None,
    scores: Sequence[float] | None = None,
    rng_or_seed: Any = 0,
    num_subsets: int = 1000,
    exact_limit: int = 20000,
) -> float:
    """One problem: the expected correctness of `method` (any accepted spelling) on a random size-k subset of
    its samples. Votes need `answers`, weighted vote and best-of-k need `scores`."""
    kind = canonical_method(method)
    if kind == "pass@k":
        _check_lengths(k, correct=correct)
        return pass_at_k(len(correct), int(sum(bool(c) for c in correct)), int(k))
    if kind == "best_of_k":
        return expected_best_of_k(_required(scores, "scores", kind), correct, k)
    weights = _required(scores, "scores", kind) if kind == "weighted_vote" else None
    return _expected_vote(_required(answers, "answers", kind), weights, correct, k, rng_or_seed, exact_limit,
                          num_subsets)


def _required(values: Any, what: str, kind: str) -> Any:
    if values is None:
        raise ValueError(f"selection method {kind!r} needs {what} per sample")
    return values


def per_problem_values(
    per_problem: Sequence[Any],
    ks: Sequence[int],
    method: str = "majority",
    seed: int = 0,
    num_subsets: int = 1000,
    exact_limit: int = 20000,
    score_key: str = "scores",
) -> np.ndarray:
    """(problems x ks) array of `method_value`; Monte Carlo subsets drawn from `problem_rng(seed, problem_id, k)`.

    per_problem: records (dicts or objects) with `problem_id`, `correct` per sample, `answers` (vote keys,
    None = no answer) for the votes and `score_key` for the reward-model methods.
    """
    kind = canonical_method(method)
    values = np.empty((len(per_problem), len(ks)))
    for i, rec in enumerate(per_problem):
        pid = _field(rec, "problem_id", f"problem {i}")
        where = f"problem {pid}"
        correct = list(_field(rec, "correct", where))
        answers = list(_field(rec, "answers", where)) if kind in ("majority", "weighted_vote") else None
        scores = list(_field(rec, score_key, where)) if kind in SCORED_METHODS else None
        for j, k in enumerate(ks):
            if not 1 <= int(k) <= len(correct):
                raise ValueError(f"k={k} is outside 1..{len(correct)}, the samples of {where}")
            values[i, j] = method_value(kind, correct, int(k), answers, scores, problem_rng(seed, pid, int(k)),
                                        num_subsets, exact_limit)
    return values


def selection_curve(
    per_problem: Sequence[Any], ks: Sequence[int], method: str = "majority", seed: int = 0, n_boot: int = 2000,
    alpha: float = 0.05, **options: Any
) -> pd.DataFrame:
    """A selection method's expected accuracy at each k, with a bootstrap CI over problems.

    Records and options (num_subsets, exact_limit, score_key) as for `per_problem_values`.
    Columns: k, value, ci_low, ci_high, n_problems.
    """
    canonical_method(method)
    if len(per_problem) == 0 or len(ks) == 0:
        raise ValueError("selection_curve needs at least one problem and one k")
    values = per_problem_values(per_problem, ks, method, seed, **options)
    return _curve(values, ks, "value", n_boot, seed, alpha)
