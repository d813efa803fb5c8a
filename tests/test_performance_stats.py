"""performance_stats: the Sharpe ratio, its bootstrap interval, PSR/DSR, the paired Sharpe test,
DeLong's AUC and the accuracy test, checked against published numbers, reference libraries and
Monte-Carlo frequencies."""

from __future__ import annotations

import math

import empyrical
import numpy as np
import pandas as pd
import pytest
from arch.bootstrap import StationaryBootstrap
from scipy import stats
from sklearn.metrics import roc_auc_score

import performance_stats as ps


def _normal_returns(rng: np.random.Generator, n: int, sharpe: float, vol: float = 0.01):
    """i.i.d. normal daily returns with the given true annualised Sharpe ratio."""
    return vol * (rng.standard_normal(n) + sharpe / math.sqrt(ps.PERIODS_PER_YEAR))


def _correlated_pair(rng, n, sharpe_a, sharpe_b, rho=0.5):
    """Two correlated i.i.d. normal daily return series with given true annualised Sharpes and
    different volatilities (1 % and 2 % a day)."""
    z = rng.multivariate_normal([0.0, 0.0], [[1.0, rho], [rho, 1.0]], size=n)
    root = math.sqrt(ps.PERIODS_PER_YEAR)
    return 0.01 * (z[:, 0] + sharpe_a / root), 0.02 * (z[:, 1] + sharpe_b / root)


def _paper_example_returns() -> np.ndarray:
    """1,250 daily returns with per-period Sharpe 2.5/sqrt(250), skew -3 and kurtosis 10 (to 4e-3).

    Kurtosis >= skew^2 + 1 holds for every distribution, with equality only for two-point ones, so
    the paper's moments (-3, 10) can only come from a two-point sample: a loss on 105 of 1,250
    days (share 0.084; exact would be 0.08397) gives skew -2.9994 and kurtosis 9.9965.
    """
    base = np.r_[np.zeros(105), np.ones(1250 - 105)]
    z = (base - base.mean()) / base.std(ddof=1)
    return 0.01 * (z + 2.5 / math.sqrt(250))


# --- Sharpe ratio -----------------------------------------------------------------------------
def test_sharpe_ratio_matches_empyrical():
    x = _normal_returns(np.random.default_rng(1), 800, sharpe=1.2)
    expected = empyrical.sharpe_ratio(x, risk_free=0.0, period="daily")
    assert ps.sharpe_ratio(x) == pytest.approx(expected, rel=1e-12)


def test_sharpe_ratio_drops_nan_and_accepts_list_and_series():
    x = _normal_returns(np.random.default_rng(2), 300, sharpe=0.5)
    with_gaps = x.copy()
    with_gaps[[3, 50, 299]] = np.nan
    clean = with_gaps[~np.isnan(with_gaps)]
    expected = clean.mean() / clean.std(ddof=1) * math.sqrt(252)
    assert ps.sharpe_ratio(with_gaps) == pytest.approx(expected, rel=1e-12)
    assert ps.sharpe_ratio(list(with_gaps)) == pytest.approx(expected, rel=1e-12)
    assert ps.sharpe_ratio(pd.Series(with_gaps)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("returns", [[], [0.01], [0.01] * 20, [np.nan, 0.02, np.nan]])
def test_degenerate_returns_give_nan_not_an_exception(returns):
    assert math.isnan(ps.sharpe_ratio(returns))
    assert all(math.isnan(v) for v in ps.sharpe_ci(returns, reps=50))
    assert math.isnan(ps.probabilistic_sharpe_ratio(returns))
    assert math.isnan(ps.deflated_sharpe_ratio(returns, 10, 0.5))
    est = ps.estimate_sharpe(returns, reps=50)
    assert math.isnan(est.ci_low) and math.isnan(est.psr) and math.isnan(est.kurtosis)
    assert est.n_obs == sum(1 for r in returns if not math.isnan(r))
    diff = ps.sharpe_difference_test(returns, returns, reps=50)
    assert math.isnan(diff.difference) and math.isnan(diff.p_value)


def test_two_observations_have_a_sharpe_but_no_interval():
    est = ps.estimate_sharpe([0.01, 0.03], reps=50)
    assert est.sharpe == pytest.approx(0.02 / np.std([0.01, 0.03], ddof=1) * math.sqrt(252))
    assert math.isnan(est.ci_low) and math.isnan(est.ci_high)


# --- Bootstrap interval -----------------------------------------------------------------------
@pytest.mark.parametrize("phi", [0.0, 0.6])
def test_sharpe_ci_is_the_percentile_interval_of_arch_stationary_bootstrap(phi):
    """The vectorised resampling reproduces arch's own bootstrap draw for draw."""
    rng = np.random.default_rng(3)
    e = rng.standard_normal(600)
    for t in range(1, e.size):  # AR(1) so that the block length is above 1 when phi > 0
        e[t] += phi * e[t - 1]
    x = 0.01 * (e + 0.05)
    est = ps.estimate_sharpe(x, reps=400, seed=11)
    bs = StationaryBootstrap(est.block_length, x, seed=np.random.default_rng(11))
    draws = bs.apply(lambda r: np.array([r.mean() / r.std(ddof=1) * math.sqrt(252)]), 400).ravel()
    low, high = np.percentile(draws, [2.5, 97.5])
    assert (est.ci_low, est.ci_high) == pytest.approx((low, high), rel=1e-9)
    assert ps.sharpe_ci(x, reps=400, seed=11) == (est.ci_low, est.ci_high)
    if phi > 0:
        assert est.block_length > 2.0


def test_sharpe_ci_is_deterministic_given_the_seed():
    x = _normal_returns(np.random.default_rng(4), 500, sharpe=1.0)
    assert ps.sharpe_ci(x, reps=200, seed=5) == ps.sharpe_ci(x, reps=200, seed=5)
    assert ps.sharpe_ci(x, reps=200, seed=5) != ps.sharpe_ci(x, reps=200, seed=6)


def test_sharpe_ci_covers_the_true_sharpe_in_about_95_percent_of_samples():
    """200 samples of 750 i.i.d. normal returns with true annualised Sharpe 1.0; the 95 % interval
    must cover it in 90-99 % of them (binomial sd at 95 % is 1.5 points)."""
    rng = np.random.default_rng(20240601)
    covered = 0
    for seed in range(200):
        low, high = ps.sharpe_ci(_normal_returns(rng, 750, sharpe=1.0), reps=300, seed=seed)
        covered += low <= 1.0 <= high
    assert 0.90 <= covered / 200 <= 0.99


def test_estimate_sharpe_bundles_the_separate_functions():
    x = pd.Series(_normal_returns(np.random.default_rng(5), 1000, sharpe=1.5))
    x.iloc[10] = np.nan
    est = ps.estimate_sharpe(x, reps=200, seed=3)
    clean = x.dropna().to_numpy()
    assert est.n_obs == 999
    assert est.sharpe == pytest.approx(ps.sharpe_ratio(x), rel=1e-12)
    assert (est.ci_low, est.ci_high) == ps.sharpe_ci(x, reps=200, seed=3)
    assert est.psr == pytest.approx(ps.probabilistic_sharpe_ratio(x), rel=1e-12)
    assert est.skew == pytest.approx(stats.skew(clean), abs=1e-12)
    assert est.kurtosis == pytest.approx(stats.kurtosis(clean, fisher=False), rel=1e-12)
    assert est.block_length >= 1.0
    assert est.ci_low < est.sharpe < est.ci_high


# --- PSR, expected maximum Sharpe, DSR --------------------------------------------------------
def test_expected_max_sharpe_and_dsr_reproduce_the_deflated_sharpe_paper_example():
    """Bailey & López de Prado (2014), "The Deflated Sharpe Ratio", section "A numerical example":
    annualised SR 2.5 over 5 years of daily returns (T = 1,250, 250 days a year), N = 100 trials
    whose annualised Sharpes have variance 1/2, skew -3, kurtosis 10; the paper finds
    E[max SR] = 0.1132 per period (1.7894 annualised) and DSR = 0.9004. (Also in the paper's
    author-supplied code, reproduced in stefan-jansen/machine-learning-for-trading,
    08_ml4t_workflow/01_multiple_testing/deflated_sharpe_ratio.py, `get_analytical_max_sr`.)
    """
    assert ps.expected_max_sharpe(100, 0.5 / 250) == pytest.approx(0.1132, abs=5e-5)
    assert ps.expected_max_sharpe(100, 0.5) == pytest.approx(0.1132 * math.sqrt(250), abs=2e-3)
    x = _paper_example_returns()
    assert ps.deflated_sharpe_ratio(x, 100, 0.5, periods=250) == pytest.approx(0.9004, abs=5e-5)


def test_psr_is_the_papers_formula_with_biased_skew_and_non_excess_kurtosis():
    """An independent route: scipy's moments and the normal cdf written out in the test."""
    x = _paper_example_returns()
    n, sr = x.size, x.mean() / x.std(ddof=1)
    skew, kurt = stats.skew(x), stats.kurtosis(x, fisher=False)
    benchmark = 1.0 / math.sqrt(250)  # annualised benchmark 1.0
    z = (sr - benchmark) * math.sqrt(n - 1) / math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2)
    assert ps.probabilistic_sharpe_ratio(x, 1.0, periods=250) == pytest.approx(
        stats.norm.cdf(z), rel=1e-12
    )


def test_psr_is_uniform_when_the_true_sharpe_equals_the_benchmark():
    """Monte-Carlo: 2,000 samples of 1,250 skewed, fat-tailed returns (negated gamma(0.5): skew
    -2.8, kurtosis 15) whose true annualised Sharpe is the benchmark 2.0. PSR > 0.95 or < 0.05
    should happen 10 % of the time; the normal-returns formula (no skew/kurtosis terms) gives
    about 17 % here, so the bounds [7.5 %, 12.5 %] (3.7 binomial sd) tell the two apart."""
    rng = np.random.default_rng(99)
    g = -(rng.gamma(0.5, 1.0, size=(2000, 1250)) - 0.5) / math.sqrt(0.5)
    samples = 0.01 * (g + 2.0 / math.sqrt(252))
    psr = np.array([ps.probabilistic_sharpe_ratio(x, 2.0) for x in samples])
    assert 0.075 <= np.mean((psr > 0.95) | (psr < 0.05)) <= 0.125


@pytest.mark.parametrize("n_trials", [10, 100, 1000])
def test_expected_max_sharpe_matches_the_monte_carlo_maximum_of_normals(n_trials):
    """The Gumbel approximation is within 3 % of the mean maximum of N normals (it is 2.3 % high
    at N = 10, 1 % at 100, 0.4 % at 1,000); Monte-Carlo error with 4,000 draws is about 0.3 %."""
    variance = 0.5
    draws = np.random.default_rng(n_trials).standard_normal((4000, n_trials))
    monte_carlo = math.sqrt(variance) * draws.max(axis=1).mean()
    assert ps.expected_max_sharpe(n_trials, variance) == pytest.approx(monte_carlo, rel=0.03)


def test_expected_max_sharpe_keeps_the_units_it_is_given():
    annual = ps.expected_max_sharpe(50, 0.8)
    assert annual / math.sqrt(252) == pytest.approx(ps.expected_max_sharpe(50, 0.8 / 252))


@pytest.mark.parametrize(("n_trials", "variance"), [(1, 0.5), (0, 0.5), (100, 0.0), (100, -1.0)])
def test_expected_max_sharpe_is_zero_without_a_search(n_trials, variance):
    assert ps.expected_max_sharpe(n_trials, variance) == 0.0


def test_dsr_with_one_trial_is_the_psr_against_zero():
    x = _normal_returns(np.random.default_rng(6), 500, sharpe=1.0)
    assert ps.deflated_sharpe_ratio(x, 1, 0.7) == ps.probabilistic_sharpe_ratio(x)


def test_dsr_falls_as_the_number_of_trials_grows():
    x = _normal_returns(np.random.default_rng(7), 1250, sharpe=2.0)
    dsr = [ps.deflated_sharpe_ratio(x, n, 0.5) for n in (1, 10, 100, 1000)]
    assert dsr == sorted(dsr, reverse=True)
    assert dsr[0] > dsr[-1]


# --- Paired Sharpe difference -----------------------------------------------------------------
def test_sharpe_difference_test_has_its_nominal_size_under_equal_sharpes():
    """300 pairs of correlated (0.5) i.i.d. normal series with equal true Sharpe 1.0 over 1,000
    days: rejections at 5 % must be within [2 %, 10 %] (binomial sd 1.3 points). The interval
    excludes 0 exactly when p < 0.05, but for a quantile-interpolation edge case or two."""
    rng = np.random.default_rng(12345)
    rejected = disagree = 0
    for seed in range(300):
        a, b = _correlated_pair(rng, 1000, 1.0, 1.0)
        result = ps.sharpe_difference_test(a, b, reps=300, seed=seed)
        rejected += result.p_value < 0.05
        disagree += (result.p_value < 0.05) != (result.ci_low > 0 or result.ci_high < 0)
    assert 0.02 <= rejected / 300 <= 0.10
    assert disagree <= 3


def test_sharpe_difference_test_detects_sharpe_2_against_0():
    """Sharpe 2 vs 0 over 1,000 days (correlation 0.5): the difference's standard error is about
    0.5, so the test should reject at 5 % in at least 80 of 100 simulations."""
    rng = np.random.default_rng(54321)
    results = [
        ps.sharpe_difference_test(*_correlated_pair(rng, 1000, 2.0, 0.0), reps=300, seed=seed)
        for seed in range(100)
    ]
    assert sum(r.p_value < 0.05 for r in results) >= 80
    assert np.mean([r.difference for r in results]) == pytest.approx(2.0, abs=0.25)
    assert all(r.method == "paired stationary bootstrap" for r in results)


def test_sharpe_difference_is_antisymmetric_in_its_arguments():
    a, b = _correlated_pair(np.random.default_rng(8), 700, 1.5, 0.5)
    ab = ps.sharpe_difference_test(a, b, reps=200, seed=1)
    ba = ps.sharpe_difference_test(b, a, reps=200, seed=1)
    assert ab.difference == pytest.approx(ps.sharpe_ratio(a) - ps.sharpe_ratio(b), rel=1e-12)
    assert ba.difference == pytest.approx(-ab.difference, rel=1e-12)
    assert ba.p_value == ab.p_value
    assert (ba.ci_low, ba.ci_high) == pytest.approx((-ab.ci_high, -ab.ci_low), rel=1e-12)


def test_sharpe_difference_drops_nan_pairs():
    a, b = _correlated_pair(np.random.default_rng(9), 400, 1.0, 0.0)
    a_gaps, b_gaps = a.copy(), b.copy()
    a_gaps[5], b_gaps[17] = np.nan, np.nan
    keep = np.ones(400, dtype=bool)
    keep[[5, 17]] = False
    assert ps.sharpe_difference_test(a_gaps, b_gaps, reps=100) == ps.sharpe_difference_test(
        a[keep], b[keep], reps=100
    )


def test_sharpe_difference_refuses_unpaired_series():
    with pytest.raises(ValueError, match="equal length"):
        ps.sharpe_difference_test(np.zeros(10), np.zeros(11))
    dates = pd.bdate_range("2024-01-01", periods=10)
    with pytest.raises(ValueError, match="same dates"):
        ps.sharpe_difference_test(
            pd.Series(np.arange(10.0), index=dates),
            pd.Series(np.arange(10.0), index=dates.shift(1)),
        )


# --- DeLong AUC -------------------------------------------------------------------------------
def _naive_delong(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """DeLong et al. (1988) written out with the O(m n) kernel psi (1, 1/2 for ties, 0)."""
    pos, neg = s[y == 1], s[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    var = v10.var(ddof=1) / pos.size + v01.var(ddof=1) / neg.size
    return float(psi.mean()), math.sqrt(var)


def _labelled_scores(rng: np.random.Generator, n: int, decimals: int | None = None):
    y = rng.integers(0, 2, n)
    s = rng.standard_normal(n) + 0.8 * y
    return y, (np.round(s, decimals) if decimals is not None else s)


@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_delong_auc_equals_sklearn_and_the_naive_delong_variance(decimals):
    """Continuous scores, and scores rounded so that many tie (decimals 1 and 0)."""
    y, s = _labelled_scores(np.random.default_rng(10), 500, decimals)
    est = ps.auc_delong(y, s)
    auc, se = _naive_delong(y, s)
    assert est.auc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert est.auc == pytest.approx(auc, abs=1e-12)
    assert est.std_error == pytest.approx(se, rel=1e-9)
    assert (est.n_pos, est.n_neg) == (int(y.sum()), int((1 - y).sum()))
    z = stats.norm.ppf(0.975)
    assert (est.ci_low, est.ci_high) == pytest.approx((auc - z * se, auc + z * se), rel=1e-9)


def test_delong_standard_error_agrees_with_a_bootstrap_of_sklearn_auc():
    """Standard deviation of roc_auc_score over 1,000 resamples of 400 rows, within 10 % (its
    Monte-Carlo error is about 2 %)."""
    rng = np.random.default_rng(11)
    y, s = _labelled_scores(rng, 400, decimals=1)
    aucs = []
    for _ in range(1000):
        i = rng.integers(0, y.size, y.size)
        if 0 < y[i].sum() < y.size:
            aucs.append(roc_auc_score(y[i], s[i]))
    assert ps.auc_delong(y, s).std_error == pytest.approx(np.std(aucs, ddof=1), rel=0.10)


def test_delong_interval_is_clipped_to_the_unit_interval():
    est = ps.auc_delong([0, 0, 0, 1, 1, 1, 0, 1], [0.1, 0.2, 0.3, 0.7, 0.8, 0.9, 0.25, 0.75])
    assert est.auc == 1.0 and est.ci_high == 1.0 and 0.0 <= est.ci_low <= 1.0
    assert ps.auc_delong([True, False, True], [0.9, 0.1, 0.8]).auc == 1.0


@pytest.mark.parametrize(
    ("y", "score", "message"),
    [
        ([1, 1, 1], [0.1, 0.2, 0.3], "both classes"),
        ([0, 1, 0], [0.1, 0.2], "shape"),
        ([0, 2, 1], [0.1, 0.2, 0.3], "0/1"),
        ([0, 1, 1], [0.1, np.nan, 0.3], "NaN"),
    ],
)
def test_delong_refuses_unusable_labels_or_scores(y, score, message):
    with pytest.raises(ValueError, match=message):
        ps.auc_delong(y, score)


# --- Accuracy against the majority class ------------------------------------------------------
def test_accuracy_vs_majority_is_the_exact_binomial_tail():
    rng = np.random.default_rng(12)
    y = (rng.random(300) < 0.6).astype(int)
    pred = np.where(rng.random(300) < 0.75, y, 1 - y)
    result = ps.accuracy_vs_majority(y, pred)
    correct = int((y == pred).sum())
    majority = max(y.mean(), 1 - y.mean())
    assert result.n == 300
    assert result.accuracy == pytest.approx(correct / 300)
    assert result.majority_rate == pytest.approx(majority)
    assert result.p_value == pytest.approx(stats.binom.sf(correct - 1, 300, majority), rel=1e-9)
    assert result.p_value < 0.01


def test_accuracy_equal_to_the_majority_rule_is_not_significant():
    y = ["up"] * 70 + ["down"] * 30
    result = ps.accuracy_vs_majority(y, ["up"] * 100)
    assert result.accuracy == result.majority_rate == 0.7
    assert result.p_value > 0.4


@pytest.mark.parametrize(
    ("y", "pred", "message"),
    [([1, 1, 1], [1, 0, 1], "one class"), ([0, 1], [0, 1, 1], "equal length"), ([], [], "empty")],
)
def test_accuracy_vs_majority_refuses_unusable_input(y, pred, message):
    with pytest.raises(ValueError, match=message):
        ps.accuracy_vs_majority(y, pred)


# --- Verdict ----------------------------------------------------------------------------------
def _estimate(low: float, high: float) -> ps.SharpeEstimate:
    return ps.SharpeEstimate(
        sharpe=(low + high) / 2,
        ci_low=low,
        ci_high=high,
        psr=0.9,
        n_obs=1250,
        skew=0.0,
        kurtosis=3.0,
        block_length=1.0,
    )


def _difference(d: float, p: float) -> ps.SharpeDifference:
    return ps.SharpeDifference(d, p, d - 0.5, d + 0.5, "paired stationary bootstrap")


def test_verdict_edge_not_distinguishable_from_zero():
    assert ps.verdict(_estimate(-0.9, 1.1)) == (
        "edge not distinguishable from zero at 95 % (Sharpe CI -0.90 .. 1.10)"
    )


def test_verdict_positive_edge_that_does_not_survive_deflation():
    assert ps.verdict(_estimate(0.3, 1.9), dsr=0.62) == (
        "positive edge at 95 % (Sharpe CI 0.30 .. 1.90), "
        "but not after deflating by the trials (DSR 0.62)"
    )


def test_verdict_names_how_many_trials_it_deflated_by():
    assert ps.verdict(_estimate(0.3, 1.9), dsr=0.62, trials=4) == (
        "positive edge at 95 % (Sharpe CI 0.30 .. 1.90), "
        "but not after deflating by its 4 trials (DSR 0.62)"
    )
    assert ps.verdict(_estimate(0.3, 1.9), dsr=0.97, trials=2) == (
        "positive edge at 95 % (Sharpe CI 0.30 .. 1.90), "
        "survives deflation over 2 trials (DSR 0.97)"
    )


def test_sharpe_moments_are_scipys_and_none_when_degenerate():
    from scipy import stats

    r = np.random.default_rng(7).normal(5e-4, 0.01, 300)
    m = ps.sharpe_moments(r)
    assert m is not None and m.n_obs == 300
    assert m.sharpe == pytest.approx(ps.sharpe_ratio(r), rel=1e-12)
    assert m.skew == pytest.approx(stats.skew(r), rel=1e-9)
    assert m.kurtosis == pytest.approx(stats.kurtosis(r, fisher=False), rel=1e-9)
    assert ps.deflated_sharpe_from_moments(m, 10, 0.2) == pytest.approx(
        ps.deflated_sharpe_ratio(r, 10, 0.2), rel=1e-12
    )
    assert ps.sharpe_moments(np.zeros(10)) is None and ps.sharpe_moments([0.01, 0.02]) is None


def test_verdict_positive_edge_surviving_deflation_and_beating_a_benchmark():
    line = ps.verdict(
        _estimate(0.3, 1.9),
        dsr=0.97,
        p_vs_benchmarks={"the_z-score_rule": _difference(0.8, 0.01), "buy_and_hold": 0.3},
    )
    assert line == (
        "positive edge at 95 % (Sharpe CI 0.30 .. 1.90), survives deflation (DSR 0.97); "
        "better than the z-score rule (p 0.01)"
    )


def test_verdict_negative_edge():
    assert ps.verdict(_estimate(-2.0, -0.4), dsr=0.01).startswith(
        "negative edge at 95 % (Sharpe CI -2.00 .. -0.40)"
    )


def test_verdict_names_benchmarks_not_distinguishable_when_all_p_are_large():
    line = ps.verdict(_estimate(-0.5, 1.0), p_vs_benchmarks={"buy_and_hold": 0.4, "z_score": 0.06})
    assert line.endswith("; not distinguishable from buy and hold or z score")


def test_verdict_bare_p_value_says_differs_without_a_direction():
    line = ps.verdict(_estimate(-0.5, 1.0), p_vs_benchmarks={"buy_and_hold": 0.004})
    assert line.endswith("; differs from buy and hold (p < 0.01)")


def test_verdict_leaves_out_benchmarks_that_were_not_tested():
    line = ps.verdict(_estimate(-0.5, 1.0), p_vs_benchmarks={"a": None, "b": math.nan, "c": 0.5})
    assert line.endswith("(Sharpe CI -0.50 .. 1.00); not distinguishable from c")
    assert ps.verdict(_estimate(-0.5, 1.0), p_vs_benchmarks={"a": None}).endswith("1.00)")


def test_verdict_uses_the_level_for_the_benchmark_threshold():
    line = ps.verdict(
        _estimate(0.1, 1.0), p_vs_benchmarks={"z": _difference(-0.4, 0.08)}, level=0.9
    )
    assert line.startswith("positive edge at 90 %")
    assert line.endswith("worse than z (p 0.08)")


def test_verdict_stays_one_short_line():
    names = {f"benchmark_number_{i}_with_a_long_name": 0.001 * i for i in range(1, 12)}
    for p_vs in (names, {k: 0.5 for k in names}):
        line = ps.verdict(_estimate(0.3, 1.9), dsr=0.5, p_vs_benchmarks=p_vs)
        assert len(line) <= 160 and "\n" not in line
    assert ps.verdict(ps.estimate_sharpe([0.01])).startswith("too little data")
