"""The exponentiated power law log(coverage) = a·k^b: recovery on synthetic data, usable points, errors."""
import numpy as np
import pytest

from harness.selection.scaling_fit import fit_exponentiated_power_law, predict

KS = np.unique(np.round(np.logspace(0, 4, 40)).astype(int))  # the paper's 40 log-spaced k up to 10,000


@pytest.mark.parametrize("a, b", [(-2.0, -0.4), (-0.7, -0.15), (-5.0, -0.9)])
def test_recovers_known_parameters(a, b):
    coverage = np.exp(a * KS.astype(float) ** b)
    fit = fit_exponentiated_power_law(KS, coverage)
    assert fit.a == pytest.approx(a, rel=1e-4)
    assert fit.b == pytest.approx(b, rel=1e-4)
    assert fit.r2_log == pytest.approx(1.0, abs=1e-8)
    assert fit.n_points == len(KS)
    assert predict(fit, KS) == pytest.approx(coverage, rel=1e-4)


def test_noisy_data_fits_well():
    rng = np.random.default_rng(0)
    coverage = np.exp(-1.5 * KS.astype(float) ** -0.3) * (1 + 0.01 * rng.standard_normal(len(KS)))
    fit = fit_exponentiated_power_law(KS, np.clip(coverage, 0, 1))
    assert fit.a == pytest.approx(-1.5, rel=0.1)
    assert fit.b == pytest.approx(-0.3, rel=0.1)
    assert 0.9 < fit.r2_log <= 1.0


def test_zero_coverage_points_are_left_out_and_counted():
    ks = np.array([1, 2, 4, 8, 16, 32, 64])
    coverage = np.exp(-3.0 * ks.astype(float) ** -0.5)
    coverage[:2] = 0.0
    fit = fit_exponentiated_power_law(ks, coverage)
    assert fit.n_points == 5
    assert list(fit.ks_used) == [4, 8, 16, 32, 64]
    assert fit.a == pytest.approx(-3.0, rel=1e-4)


def test_too_few_usable_points_fail_clearly():
    with pytest.raises(ValueError, match="at least 3 points"):
        fit_exponentiated_power_law([1, 2, 4, 8], [0.0, 0.0, 0.1, 0.2])
    with pytest.raises(ValueError, match="equal length"):
        fit_exponentiated_power_law([1, 2, 4], [0.1, 0.2])
    with pytest.raises(ValueError, match="coverage in"):
        fit_exponentiated_power_law([1, 2, 4], [0.1, 0.2, 1.5])


def test_predict_is_monotone_for_negative_a_and_b():
    fit = fit_exponentiated_power_law(KS, np.exp(-2.0 * KS.astype(float) ** -0.4))
    curve = predict(fit, [1, 10, 100, 1000, 10_000, 100_000])
    assert np.all(np.diff(curve) > 0) and np.all(curve < 1)
