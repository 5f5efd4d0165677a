"""Difficulty splits of a problem set, and Hase et al.'s Supervision Gap Recovered.

Difficulty is configuration, never a constant in code (`DifficultySpec`, e.g. a paper's `difficulty:` node):

    by: level        # level: the problem's `level` (MATH 1-5, ladder 1-7) | steps: its number of solution steps
    easy: [1, 2, 3]  # values of `by` that are easy (trained on)
    hard: [4, 5]     # values of `by` that are hard (evaluated on); disjoint from easy

`steps` is the length of the problem's reference step list where it has one (the ladder's `steps` field),
else the number of non-empty lines of its reference solution (GSM8K rationales are one step per line, as
Hase et al. count them; for MATH the line count is a rough proxy). Problems whose value is in neither list
(a middle band, or MATH problems with no level) are in neither split and are counted as left out.

Supervision Gap Recovered (Hase et al. 2024, arXiv 2401.06751):

    SGR = (easy - unsupervised) / (hard - unsupervised)

the share of the gain from hard supervision that easy supervision already gives, all three measured on the
same test problems. Its CI resamples problems (the three scores of a problem stay together) and recomputes
the ratio of means; it is reported "undefined" when the denominator is too small to divide by: |hard -
unsupervised| below a configured epsilon, or a denominator CI that includes 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Sequence

import numpy as np
from omegaconf import MISSING

from harness.errors import ConfigError, DataError

BY = ("level", "steps")


@dataclass
class DifficultySpec:
    """No defaults: which levels are easy is always stated by the config that uses it."""

    by: str = MISSING
    easy: List[Any] = MISSING
    hard: List[Any] = MISSING


def difficulty_spec(node: Any, key: str = "difficulty") -> DifficultySpec:
    """A validated spec from a config node (DictConfig, dict or spec); every error names `key`.<field>."""
    from omegaconf import OmegaConf

    from harness.config import validate

    if isinstance(node, DifficultySpec):
        spec = node
    else:
        if node is None:
            raise ConfigError(f"config key '{key}' is missing (by, easy, hard)")
        plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
        try:
            spec = validate(OmegaConf.create({"d": plain}), DifficultySpec, "d")
        except ConfigError as err:
            raise ConfigError(str(err).replace("'d.", f"'{key}.", 1)) from None
    if spec.by not in BY:
        raise ConfigError(f"config key '{key}.by': '{spec.by}' is not one of {', '.join(BY)}")
    for name in ("easy", "hard"):
        values = getattr(spec, name)
        if not values:
            raise ConfigError(f"config key '{key}.{name}': needs at least one {spec.by} value")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"config key '{key}.{name}': {v!r} is not a non-negative integer {spec.by}")
        if len(set(values)) != len(values):
            raise ConfigError(f"config key '{key}.{name}': repeats a value ({values})")
    overlap = sorted(set(spec.easy) & set(spec.hard))
    if overlap:
        raise ConfigError(f"config key '{key}': {spec.by} {overlap[0]} is both easy and hard (easy {spec.easy}, "
                          f"hard {spec.hard})")
    return spec


def difficulty_of(problem: Any, by: str) -> int | None:
    """The problem's difficulty value under `by`; None when it has none (a MATH problem with no level)."""
    meta = getattr(problem, "metadata", None) or {}
    if by == "level":
        level = meta.get("level")
        return level if isinstance(level, int) and not isinstance(level, bool) else None
    steps = meta.get("steps")
    if isinstance(steps, (list, tuple)):
        return len(steps)
    lines = [line for line in (getattr(problem, "solution", "") or "").splitlines() if line.strip()]
    return len(lines) or None


@dataclass
class DifficultySplit:
    spec: DifficultySpec
    easy: list  # Problem
    hard: list
    left_out: int  # problems in neither split (middle band, or no difficulty value)
    no_value: int  # of which: no difficulty value at all

    @property
    def easy_ids(self) -> set[str]:
        return {p.id for p in self.easy}

    @property
    def hard_ids(self) -> set[str]:
        return {p.id for p in self.hard}

    def describe(self) -> dict:
        count = lambda ps: {str(v): sum(1 for p in ps if difficulty_of(p, self.spec.by) == v)  # noqa: E731
                            for v in sorted({difficulty_of(p, self.spec.by) for p in ps})}
        return {"by": self.spec.by, "easy_values": list(self.spec.easy), "hard_values": list(self.spec.hard),
                "easy": len(self.easy), "hard": len(self.hard), "easy_by_value": count(self.easy),
                "hard_by_value": count(self.hard), "left_out": self.left_out, "no_value": self.no_value}


def split_by_difficulty(problems: Sequence[Any], spec: DifficultySpec, where: str = "problems",
                        key: str = "difficulty") -> DifficultySplit:
    """Easy and hard problems of `problems` under `spec`, in input order; disjoint by construction and checked.

    An empty easy or hard side is a DataError naming `where` (the problem set) and the configured values."""
    spec = difficulty_spec(spec, key)
    easy_values, hard_values = set(spec.easy), set(spec.hard)
    easy, hard, left_out, no_value = [], [], 0, 0
    for p in problems:
        v = difficulty_of(p, spec.by)
        if v is None:
            no_value += 1
        if v in easy_values:
            easy.append(p)
        elif v in hard_values:
            hard.append(p)
        else:
            left_out += 1
    for name, chosen, values in (("easy", easy, spec.easy), ("hard", hard, spec.hard)):
        if not chosen:
            seen = sorted({v for v in (difficulty_of(p, spec.by) for p in problems) if v is not None})
            raise DataError(f"{where}: no problem has {spec.by} in {key}.{name}={values} (values present: {seen})")
    shared = {p.id for p in easy} & {p.id for p in hard}
    if shared:  # two problems with one id and different difficulty: the split would leak
        raise DataError(f"{where}: problem id '{sorted(shared)[0]}' is in both the easy and the hard split")
    return DifficultySplit(spec, easy, hard, left_out, no_value)


def step_operations(problem: Any) -> set[str]:
    """The operations of a ladder problem's reference steps (`a op b = c`); empty for other problems."""
    from harness.data.ladder import STEP_LINE

    ops = set()
    for line in (getattr(problem, "metadata", None) or {}).get("steps") or ():
        m = STEP_LINE.match(line)
        if m:
            ops.add(m.group(2))
    return ops


def check_operations_covered(split: DifficultySplit, key: str = "difficulty.easy") -> dict:
    """Easy problems must show every operation the hard ones use (else "easy-to-hard" tests an unseen skill).

    Returns {operation: (easy count, hard count)}; a hard operation absent from easy is a ConfigError."""
    def counts(ps):
        out: dict[str, int] = {}
        for p in ps:
            for op in step_operations(p):
                out[op] = out.get(op, 0) + 1
        return out

    easy, hard = counts(split.easy), counts(split.hard)
    missing = sorted(set(hard) - set(easy))
    if missing:
        raise ConfigError(f"config key '{key}': hard problems use '{missing[0]}', which no easy problem does "
                          f"(easy operations: {sorted(easy)})")
    return {op: (easy.get(op, 0), hard.get(op, 0)) for op in sorted(set(easy) | set(hard))}


# ---------------------------------------------------------------------------------------------
# Supervision Gap Recovered


@dataclass(frozen=True)
class SupervisionGapRecovered:
    value: float | None  # None when undefined
    ci_low: float | None
    ci_high: float | None
    n: int  # test problems
    easy: float  # mean score of each condition
    hard: float
    unsupervised: float
    gap: float  # hard - unsupervised
    gap_ci: tuple[float, float]
    reason: str | None = None  # why undefined

    @property
    def defined(self) -> bool:
        return self.value is not None

    def text(self) -> str:
        if not self.defined:
            return f"undefined ({self.reason}; n={self.n})"
        return f"{self.value:.2f} [{self.ci_low:.2f}, {self.ci_high:.2f}] (n={self.n})"

    def as_dict(self) -> dict:
        return {"sgr": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high, "n": self.n, "easy": self.easy,
                "hard": self.hard, "unsupervised": self.unsupervised, "gap": self.gap, "gap_ci": list(self.gap_ci),
                "defined": self.defined, "reason": self.reason}


def supervision_gap_recovered(easy: Any, hard: Any, unsupervised: Any, epsilon: float = 0.02, n_boot: int = 2000,
                              seed: int = 0, alpha: float = 0.05) -> SupervisionGapRecovered:
    """SGR of per-problem scores (row i of each array: test problem i), with a percentile bootstrap CI.

    Each replicate resamples problems with replacement and recomputes (mean easy - mean unsup) / (mean hard -
    mean unsup). Undefined (value None) when |hard - unsupervised| < epsilon or the CI of hard - unsupervised
    includes 0: a ratio over a denominator that may be 0 has no meaningful interval."""
    e, h, u = (np.asarray(x, dtype=float) for x in (easy, hard, unsupervised))
    if not (e.shape == h.shape == u.shape) or e.ndim != 1 or len(e) == 0:
        raise ValueError(f"SGR needs three non-empty 1-D arrays over the same problems, got {e.shape}, {h.shape}, "
                         f"{u.shape}")
    if not all(np.all(np.isfinite(x)) for x in (e, h, u)):
        raise ValueError("SGR got NaN or infinite scores")
    if epsilon < 0 or not 0 < alpha < 1 or n_boot < 1:
        raise ValueError(f"need epsilon >= 0, 0 < alpha < 1, n_boot >= 1; got {epsilon}, {alpha}, {n_boot}")
    n = len(e)
    num_all, den_all = e - u, h - u
    idx = np.random.default_rng(seed).integers(0, n, size=(int(n_boot), n))
    num, den = num_all[idx].mean(axis=1), den_all[idx].mean(axis=1)
    gap = float(den_all.mean())
    gap_ci = (float(np.quantile(den, alpha / 2)), float(np.quantile(den, 1 - alpha / 2)))
    base = dict(n=n, easy=float(e.mean()), hard=float(h.mean()), unsupervised=float(u.mean()), gap=gap, gap_ci=gap_ci)
    if abs(gap) < epsilon:
        return SupervisionGapRecovered(None, None, None, reason=f"|hard - unsupervised| = {abs(gap):.3f} < "
                                       f"epsilon {epsilon}", **base)
    if gap_ci[0] <= 0 <= gap_ci[1]:
        return SupervisionGapRecovered(None, None, None, reason=f"the CI of hard - unsupervised [{gap_ci[0]:.3f}, "
                                       f"{gap_ci[1]:.3f}] includes 0", **base)
    # Replicates whose denominator is exactly 0 cannot occur here in a way that matters: the CI excludes 0,
    # but a rare replicate may still hit it; it is dropped (counted in no quantile) rather than set to +-inf.
    ok = den != 0
    ratios = num[ok] / den[ok]
    return SupervisionGapRecovered(float(num_all.mean() / gap), float(np.quantile(ratios, alpha / 2)),
                                   float(np.quantile(ratios, 1 - alpha / 2)), **base)


def sgr_by_group(groups: Sequence[Any], easy: Any, hard: Any, unsupervised: Any, **options: Any
                 ) -> dict[Any, SupervisionGapRecovered]:
    """SGR per group (e.g. per hard level or per step count): `groups[i]` is problem i's group."""
    g = list(groups)
    e, h, u = (np.asarray(x, dtype=float) for x in (easy, hard, unsupervised))
    if not len(g) == len(e) == len(h) == len(u):
        raise ValueError(f"sgr_by_group: {len(g)} groups for {len(e)}, {len(h)}, {len(u)} scores")
    out = {}
    for value in sorted(set(g)):
        mask = np.array([x == value for x in g])
        out[value] = supervision_gap_recovered(e[mask], h[mask], u[mask], **options)
    return out

