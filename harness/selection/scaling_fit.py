"""The Large Language Monkeys coverage law: log(coverage) ≈ a·k^b, i.e. coverage ≈ exp(a·k^b).

Fitted by least squares on log coverage (as the paper does, on 40 log-spaced k), so points with zero
coverage, where the log is undefined, are left out and the number of points used is reported.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

MIN_POINTS = 3


@dataclass(frozen=True)
class FitResult:
    a: float
    b: float
    r2_log: float  # R² of the fit on log coverage; NaN when log coverage is constant
    n_points: int
    ks_used: np.ndarray


def _log_law(k: np.ndarray, a: float, b: float) -> np.ndarray:
    return a * np.power(k, b)


def fit_exponentiated_power_law(ks: Sequence[float], coverage: Sequence[float]) -> FitResult:
    k = np.asarray(ks, dtype=float)
    c = np.asarray(coverage, dtype=float)
    if k.ndim != 1 or k.shape != c.shape:
        raise ValueError(f"ks and coverage must be 1-D of equal length, got shapes {k.shape} and {c.shape}")
    if not (np.all(np.isfinite(k)) and np.all(np.isfinite(c))):
        raise ValueError("ks and coverage must be finite")
    if np.any(k <= 0) or np.any(c < 0) or np.any(c > 1 + 1e-9):
        raise ValueError("need ks > 0 and coverage in [0, 1]")
    use = c > 0
    if use.sum() < MIN_POINTS:
        raise ValueError(
            f"need at least {MIN_POINTS} points with coverage > 0 to fit log coverage = a*k^b, "
            f"got {int(use.sum())} of {len(c)}"
        )
    k, y = k[use], np.log(np.minimum(c[use], 1.0))
    # Start from the straight-line fit of log(-log C) on log k, which is exact for noiseless data.
    below_one = y < 0
    if below_one.sum() >= 2 and np.ptp(k[below_one]) > 0:
        b0, log_minus_a0 = np.polyfit(np.log(k[below_one]), np.log(-y[below_one]), 1)
        p0 = (-float(np.exp(log_minus_a0)), float(b0))
    else:
        p0 = (min(float(y.min()), -1e-3), -0.5)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)  # covariance is not used
            (a, b), _ = curve_fit(_log_law, k, y, p0=p0, maxfev=20000)
    except RuntimeError as err:
        raise ValueError(f"the exponentiated power-law fit did not converge: {err}") from None
    residual = y - _log_law(k, a, b)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(residual**2)) / ss_tot if ss_tot > 0 else float("nan")
    return FitResult(float(a), float(b), r2, int(len(k)), k)


def predict(fit: FitResult, ks: Sequence[float]) -> np.ndarray:
    return np.exp(_log_law(np.asarray(ks, dtype=float), fit.a, fit.b))
