"""pass@k, bootstrap CIs, and selection expectations checked against brute force over all subsets."""
import itertools
import math

import numpy as np
import pytest

from harness.selection.metrics import (
    bootstrap_ci,
    coverage_curve,
    expected_best_of_k,
    expected_majority_vote,
    expected_weighted_vote,
    pass_at_k,
    selection_curve,
)

# ---- pass@k -------------------------------------------------------------------------------------------


def test_pass_at_k_closed_forms():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    for k in range(1, 6):
        assert pass_at_k(5, 5, k) == 1.0
        assert pass_at_k(5, 0, k) == 0.0
    for n, k in [(10, 3), (100, 17), (10_000, 250)]:
        assert pass_at_k(n, 1, k) == pytest.approx(k / n)
    assert pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)  # 1 - C(2,2)/C(4,2)


def test_pass_at_k_matches_binomials_and_large_n():
    for n, c, k in [(20, 5, 3), (50, 10, 25), (64, 1, 64), (64, 63, 2)]:
        assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)
    value = pass_at_k(10_000, 37, 1000)  # C(10000, 1000) overflows a float; the product form does not
    assert 0 < value < 1 and math.isfinite(value)
    assert pass_at_k(10_000, 37, 1000) == pytest.approx(1 - math.comb(9963, 1000) / math.comb(10_000, 1000), rel=1e-9)
    assert pass_at_k(10_000, 5_000, 9_999) == 1.0


@pytest.mark.parametrize("n, c, k", [(5, 2, 6), (5, 2, 0), (5, 6, 1), (5, -1, 1), (0, 0, 1), (5.0, 2, 1), (5, 2, True)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


# ---- bootstrap ------------------------------------------------------------------------------------------


def test_bootstrap_ci_contains_the_mean_and_narrows_with_more_problems():
    rng = np.random.default_rng(1)
    small = rng.random(20)
    large = rng.random(2000)
    m, lo, hi = bootstrap_ci(small)
    assert lo <= m <= hi and m == pytest.approx(small.mean())
    m2, lo2, hi2 = bootstrap_ci(large)
    assert lo2 <= m2 <= hi2
    assert hi2 - lo2 < (hi - lo) / 3


def test_bootstrap_ci_is_seeded_and_handles_columns():
    values = np.random.default_rng(2).random(50)
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    mean, low, high = bootstrap_ci(np.column_stack([values, values, 1 - values]), seed=3)
    assert mean.shape == low.shape == high.shape == (3,)
    assert low[0] == low[1] and high[0] == high[1]  # same resamples for every column
    # 1 - x resampled with the same draws mirrors x's interval
    assert low[2] == pytest.approx(1 - high[0]) and high[2] == pytest.approx(1 - low[0])


def test_bootstrap_ci_degenerate_and_bad_input():
    assert bootstrap_ci(np.ones(10)) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        bootstrap_ci(np.array([]))
    with pytest.raises(ValueError):
        bootstrap_ci(np.array([0.5, np.nan]))


def test_coverage_curve():
    counts = [(10, 0), (10, 1), (10, 10), (10, 5)]
    df = coverage_curve(counts, [1, 2, 10], n_boot=500)
    assert list(df.columns) == ["k", "coverage", "ci_low", "ci_high", "n_problems"]
    assert df["coverage"].tolist() == pytest.approx(
        [np.mean([pass_at_k(n, c, k) for n, c in counts]) for k in (1, 2, 10)]
    )
    assert df.loc[df.k == 10, "coverage"].item() == pytest.approx(0.75)
    assert (df.ci_low <= df.coverage).all() and (df.coverage <= df.ci_high).all()
    assert (df.n_problems == 4).all()


# ---- selection: brute force over every size-k subset --------------------------------------------------


def brute_vote(answers, correct, k, weights=None):
    n = len(answers)
    weights = weights if weights is not None else [1.0] * n
    totals = []
    for subset in itertools.combinations(range(n), k):
        score = {}
        for i in subset:
            if answers[i] is not None:
                score[answers[i]] = score.get(answers[i], 0.0) + weights[i]
        if not score:
            totals.append(0.0)
            continue
        best = max(score.values())
        winners = [a for a, s in score.items() if math.isclose(s, best, rel_tol=1e-12, abs_tol=1e-12)]
        value = 0.0
        for a in winners:  # an answer's correctness: the mean over all samples giving it
            members = [correct[i] for i in range(n) if answers[i] == a]
            value += sum(members) / len(members)
        totals.append(value / len(winners))
    return float(np.mean(totals))


def brute_best_of_k(scores, correct, k):
    n = len(scores)
    totals = []
    for subset in itertools.combinations(range(n), k):
        best = max(scores[i] for i in subset)
        tied = [i for i in subset if scores[i] == best]
        totals.append(np.mean([correct[i] for i in tied]))
    return float(np.mean(totals))


def random_case(rng, n):
    alphabet = ["1", "2", "3", None]
    answers = [alphabet[i] for i in rng.integers(0, len(alphabet), n)]
    correct = [a == "1" for a in answers]
    return answers, correct


def test_majority_vote_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(60):
        n = int(rng.integers(1, 9))
        answers, correct = random_case(rng, n)
        for k in range(1, n + 1):
            assert expected_majority_vote(answers, correct, k) == pytest.approx(brute_vote(answers, correct, k), abs=1e-12)


def test_weighted_vote_matches_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(60):
        n = int(rng.integers(1, 9))
        answers, correct = random_case(rng, n)
        weights = list(rng.choice([0.0, 0.25, 0.5, 1.0], n)) if rng.random() < 0.5 else list(rng.random(n))
        for k in range(1, n + 1):
            got = expected_weighted_vote(answers, weights, correct, k)
            assert got == pytest.approx(brute_vote(answers, correct, k, weights), abs=1e-12)


def test_best_of_k_matches_brute_force_with_ties():
    rng = np.random.default_rng(2)
    for _ in range(80):
        n = int(rng.integers(1, 9))
        scores = list(rng.integers(0, 4, n).astype(float)) if rng.random() < 0.5 else list(rng.random(n))
        correct = list(rng.random(n) < 0.5)
        for k in range(1, n + 1):
            assert expected_best_of_k(scores, correct, k) == pytest.approx(brute_best_of_k(scores, correct, k), abs=1e-9)


def test_vote_edge_cases():
    assert expected_majority_vote([None, None], [False, False], 2) == 0.0  # nobody answered
    assert expected_majority_vote(["a", None, None], [True, False, False], 3) == 1.0  # None never wins
    assert expected_majority_vote(["a", "b"], [True, False], 2) == 0.5  # a tie is split
    assert expected_majority_vote(["a", "a", "b"], [True, True, False], 1) == pytest.approx(2 / 3)
    assert expected_majority_vote(["a", float("nan"), "b"], [True, False, False], 3) == 0.5  # pandas' NaN = None
    with pytest.raises(ValueError):
        expected_majority_vote(["a"], [True], 2)
    with pytest.raises(ValueError):
        expected_majority_vote(["a", "b"], [True], 1)
    with pytest.raises(ValueError):
        expected_weighted_vote(["a", "b"], [0.5, -1.0], [True, False], 1)


def test_monte_carlo_close_to_exact():
    rng = np.random.default_rng(3)
    n = 14
    answers = [["7", "8", "9", None][i] for i in rng.choice(4, n, p=[0.35, 0.3, 0.25, 0.1])]
    correct = [a == "7" for a in answers]
    weights = list(rng.random(n))
    for k in (3, 6, 9):
        exact = expected_majority_vote(answers, correct, k)
        mc = expected_majority_vote(answers, correct, k, rng_or_seed=5, exact_limit=0, num_subsets=20_000)
        assert mc == pytest.approx(exact, abs=0.02)
        exact_w = expected_weighted_vote(answers, weights, correct, k)
        mc_w = expected_weighted_vote(answers, weights, correct, k, rng_or_seed=5, exact_limit=0, num_subsets=20_000)
        assert mc_w == pytest.approx(exact_w, abs=0.02)
    # seeded: the same seed gives the same estimate
    a = expected_majority_vote(answers, correct, 6, rng_or_seed=11, exact_limit=0, num_subsets=500)
    b = expected_majority_vote(answers, correct, 6, rng_or_seed=np.random.default_rng(11), exact_limit=0, num_subsets=500)
    assert a == b


def test_large_n_monte_carlo_runs_and_is_sane():
    rng = np.random.default_rng(4)
    n = 256
    answers = [str(x) for x in rng.choice(5, n, p=[0.4, 0.15, 0.15, 0.15, 0.15])]
    correct = [a == "0" for a in answers]
    values = [expected_majority_vote(answers, correct, k, rng_or_seed=0) for k in (1, 16, 128, 256)]
    assert values[0] == pytest.approx(np.mean(correct))
    assert values[-1] == 1.0  # the full set's majority is "0"
    assert values[1] < values[2] <= values[3]


def records(rng, problems=30, n=12):
    out = []
    for i in range(problems):
        answers, correct = random_case(rng, n)
        out.append({"problem_id": f"p{i}", "answers": answers, "correct": correct, "scores": list(rng.random(n))})
    return out


@pytest.mark.parametrize("method", ["majority_vote", "rm_weighted_vote", "rm_best_of_k", "best_of_k", "coverage"])
def test_selection_curve(method):
    recs = records(np.random.default_rng(5))
    df = selection_curve(recs, [1, 2, 4, 12], method=method, seed=0, n_boot=300)
    assert list(df.columns) == ["k", "value", "ci_low", "ci_high", "n_problems"]
    assert (df.n_problems == 30).all()
    assert (df.ci_low <= df.value + 1e-12).all() and (df.value <= df.ci_high + 1e-12).all()
    k1 = np.mean([np.mean(r["correct"]) for r in recs])
    assert df.loc[df.k == 1, "value"].item() == pytest.approx(k1)  # every method is pass@1 at k=1
    if method == "majority_vote":
        want = np.mean([expected_majority_vote(r["answers"], r["correct"], 4) for r in recs])
        assert df.loc[df.k == 4, "value"].item() == pytest.approx(want)


def test_selection_curve_is_reproducible_and_validates():
    recs = records(np.random.default_rng(6), problems=5, n=40)
    a = selection_curve(recs, [5, 20], seed=1, n_boot=100, exact_limit=0, num_subsets=50)
    b = selection_curve(list(recs), [20, 5], seed=1, n_boot=100, exact_limit=0, num_subsets=50)
    assert a.set_index("k")["value"].to_dict() == pytest.approx(b.set_index("k")["value"].to_dict())
    with pytest.raises(ValueError, match="unknown selection method"):
        selection_curve(recs, [1], method="oracle")
    with pytest.raises(ValueError, match="k=41"):
        selection_curve(recs, [41])
    with pytest.raises(ValueError, match="rewards"):
        selection_curve(recs, [1], method="rm_best_of_k", score_key="rewards")
