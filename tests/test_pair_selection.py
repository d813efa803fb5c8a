"""pair_selection: walk-forward windows and per-formation-window pair statistics.

Synthetic pairs are seeded; the tolerances are stated next to each assertion with the values
measured when the test was written.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from statsmodels.tsa.stattools import coint

import pair_selection as ps
from error_handling import ConfigurationError

BETA = 1.5
HALF_LIFE = 10.0


def cointegrated_pair(
    seed: int, n: int = 2000, half_life_bars: float = HALF_LIFE, beta: float = BETA
) -> tuple[np.ndarray, np.ndarray]:
    """Log prices (a, b): b a random walk, a = beta * b + 0.2 + an AR(1) spread whose half-life
    is `half_life_bars` (phi = 0.5 ** (1 / half_life)); daily shocks of 1 % in both."""
    rng = np.random.default_rng(seed)
    phi = 0.5 ** (1.0 / half_life_bars)
    log_b = 4.0 + np.cumsum(rng.normal(0.0, 0.01, n))
    shocks = rng.normal(0.0, 0.01, n)
    spread = np.empty(n)
    spread[0] = shocks[0]
    for t in range(1, n):
        spread[t] = phi * spread[t - 1] + shocks[t]
    return beta * log_b + 0.2 + spread, log_b


def independent_walks(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two independent Gaussian random walks in log price, 1 % daily shocks."""
    rng = np.random.default_rng(seed)
    return 4.0 + np.cumsum(rng.normal(0.0, 0.01, n)), 4.0 + np.cumsum(rng.normal(0.0, 0.01, n))


# --- walk_forward_windows ---------------------------------------------------------------------
def test_default_windows_trade_contiguously_right_after_their_formation() -> None:
    windows = ps.walk_forward_windows(1000, formation_bars=252, trading_bars=63)
    assert len(windows) == (1000 - 252 - 63) // 63 + 1  # 11
    assert windows[0] == ps.WalkForwardWindow(0, 252, 252, 315)
    for w in windows:
        assert w.trading_start == w.formation_stop
        assert w.formation_bars == 252 and w.trading_bars == 63
        assert w.trading_stop <= 1000
    for prev, nxt in itertools.pairwise(windows):
        assert nxt.trading_start == prev.trading_stop  # contiguous, no overlap
    # The dropped incomplete window would have needed more rows than there are.
    assert windows[-1].trading_stop + 63 > 1000


def test_exactly_one_window_fits_formation_plus_trading_bars() -> None:
    assert ps.walk_forward_windows(315) == [ps.WalkForwardWindow(0, 252, 252, 315)]


def test_custom_step_rolls_the_formation_by_that_many_bars() -> None:
    windows = ps.walk_forward_windows(400, formation_bars=100, trading_bars=50, step_bars=20)
    assert [w.formation_start for w in windows] == list(range(0, 251, 20))
    assert all(w.trading_stop <= 400 for w in windows)


@pytest.mark.parametrize(
    ("n_bars", "kwargs"),
    [
        (1000, {"formation_bars": 0}),
        (1000, {"trading_bars": -5}),
        (1000, {"step_bars": 0}),
        (1000, {"formation_bars": 10}),  # below MIN_BARS
        (1000, {"formation_bars": 252.0}),
        (314, {}),  # one bar short of one window
    ],
)
def test_bad_window_sizes_are_refused(n_bars: int, kwargs: dict) -> None:
    with pytest.raises(ConfigurationError):
        ps.walk_forward_windows(n_bars, **kwargs)


def test_inconsistent_window_record_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        ps.WalkForwardWindow(0, 100, 101, 150)


# --- half_life ----------------------------------------------------------------------------------
def test_half_life_matches_a_hand_least_squares_fit() -> None:
    spread = np.array([1.0, 0.7, 0.55, 0.3, 0.28, 0.1, 0.12, -0.05, 0.02, -0.01])
    design = np.column_stack([spread[:-1], np.ones(spread.size - 1)])
    (lam, _), *_ = np.linalg.lstsq(design, np.diff(spread), rcond=None)
    expected = -math.log(2.0) / math.log(1.0 + lam)
    assert ps.half_life(spread) == pytest.approx(expected, rel=1e-12)
    assert 0.0 < expected < 10.0


def test_half_life_is_infinite_without_mean_reversion() -> None:
    trending = np.exp(np.linspace(0.0, 1.0, 50))  # grows away from its mean
    assert ps.half_life(trending) == math.inf


def test_half_life_refuses_nan() -> None:
    with pytest.raises(ConfigurationError, match="NaN"):
        ps.half_life(np.array([1.0, np.nan, 0.5, 0.2]))


# --- pair_statistics ------------------------------------------------------------------------------
def test_cointegrated_pair_recovers_hedge_ratio_and_half_life() -> None:
    log_a, log_b = cointegrated_pair(seed=7)
    stats = ps.pair_statistics(log_a, log_b)
    # Measured: hedge ratio 1.489, half-life 8.93 bars, p 1.0e-12, stability 0.043.
    assert stats.hedge_ratio == pytest.approx(BETA, abs=0.05)
    assert stats.half_life_bars == pytest.approx(HALF_LIFE, rel=0.25)
    assert stats.coint_pvalue < 0.01
    assert stats.bars == 2000
    assert 0.0 <= stats.hedge_ratio_stability < 0.1
    assert 0.5 < stats.correlation < 1.0


def test_half_life_estimate_is_unbiased_enough_across_seeds() -> None:
    estimates = [ps.pair_statistics(*cointegrated_pair(seed)).half_life_bars for seed in range(10)]
    # Measured on seeds 0..9: 8.57 to 12.05 bars (within -14 % .. +21 %); hedge ratios 1.467-1.522.
    assert all(abs(h / HALF_LIFE - 1.0) < 0.25 for h in estimates)


def test_independent_random_walks_are_rarely_called_cointegrated() -> None:
    pvalues = [
        ps.pair_statistics(*independent_walks(1000 + s, 252)).coint_pvalue for s in range(50)
    ]
    # A 5 % test: measured 2 of 50 rejections at 252 bars; allow up to 7 (14 %).
    assert sum(p < 0.05 for p in pvalues) <= 7


def test_independent_random_walks_have_long_or_infinite_half_lives() -> None:
    half_lives = [
        ps.pair_statistics(*independent_walks(1000 + s, 2000)).half_life_bars for s in range(50)
    ]
    # Measured over 2,000 bars: all 50 above 60 bars (3 inf); the cointegrated pair has ~10.
    assert sum(h > 6 * HALF_LIFE for h in half_lives) > 25


def test_coint_pvalue_is_statsmodels_engle_granger_with_one_lag() -> None:
    log_a, log_b = cointegrated_pair(seed=3, n=252)
    expected = coint(log_a, log_b, trend="c", maxlag=1, autolag=None)[1]
    assert ps.pair_statistics(log_a, log_b).coint_pvalue == expected


def test_hedge_ratio_and_correlation_match_numpy() -> None:
    log_a, log_b = independent_walks(5, 300)
    stats = ps.pair_statistics(log_a, log_b)
    slope, intercept = np.polyfit(log_b, log_a, 1)
    assert stats.hedge_ratio == pytest.approx(slope, rel=1e-9)
    assert stats.intercept == pytest.approx(intercept, rel=1e-9)
    corr = np.corrcoef(np.diff(log_a), np.diff(log_b))[0, 1]
    assert stats.correlation == pytest.approx(corr, rel=1e-12)


def test_hedge_ratio_stability_is_half_the_gap_of_the_half_window_slopes() -> None:
    log_a, log_b = independent_walks(11, 101)
    stats = ps.pair_statistics(log_a, log_b)
    first = np.polyfit(log_b[:50], log_a[:50], 1)[0]
    second = np.polyfit(log_b[50:], log_a[50:], 1)[0]
    expected = abs(first - second) / 2.0 / abs(stats.hedge_ratio)
    assert stats.hedge_ratio_stability == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    ("log_a", "log_b", "match"),
    [
        (np.r_[np.nan, np.zeros(39)], np.linspace(0.0, 1.0, 40), "NaN or inf"),
        (np.full(40, -np.inf), np.linspace(0.0, 1.0, 40), "NaN or inf"),
        (np.linspace(0.0, 1.0, 29), np.linspace(0.0, 2.0, 29), "at least 30"),
        (np.linspace(0.0, 1.0, 40), np.linspace(0.0, 1.0, 41), "equal length"),
        (np.linspace(0.0, 1.0, 40), np.full(40, 3.0), "constant"),
    ],
)
def test_bad_formation_data_is_refused_with_a_clear_message(
    log_a: np.ndarray, log_b: np.ndarray, match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        ps.pair_statistics(log_a, log_b)


# --- rolling_pair_statistics: no lookahead -------------------------------------------------------
def test_rolling_statistics_are_invariant_to_truncation_after_each_formation() -> None:
    log_a, log_b = cointegrated_pair(seed=21, n=800)
    windows = ps.walk_forward_windows(800, formation_bars=120, trading_bars=60)
    full = ps.rolling_pair_statistics(log_a, log_b, windows)
    assert len(full) == len(windows) == 11
    for k, window in enumerate(windows):
        cut = window.formation_stop
        truncated = ps.rolling_pair_statistics(log_a[:cut], log_b[:cut], windows[: k + 1])
        assert truncated == full[: k + 1]  # exact equality, field by field


def test_future_price_shock_does_not_change_a_windows_statistics() -> None:
    log_a, log_b = cointegrated_pair(seed=22, n=800)
    windows = ps.walk_forward_windows(800, formation_bars=120, trading_bars=60)
    before = ps.rolling_pair_statistics(log_a, log_b, windows)
    k = 4
    shocked_a, shocked_b = log_a.copy(), log_b.copy()
    shocked_a[windows[k].formation_stop :] += 0.7
    shocked_b[windows[k].formation_stop :] *= 0.5
    after = ps.rolling_pair_statistics(shocked_a, shocked_b, windows)
    assert after[: k + 1] == before[: k + 1]
    assert after[k + 1] != before[k + 1]  # the shock is visible to later formations


def test_window_past_the_data_is_refused() -> None:
    log_a, log_b = independent_walks(1, 200)
    with pytest.raises(ConfigurationError, match="runs past"):
        ps.rolling_pair_statistics(log_a, log_b, [ps.WalkForwardWindow(0, 252, 252, 315)])


# --- real data ------------------------------------------------------------------------------------
def test_aapl_msft_statistics_are_finite_on_the_bundled_prices() -> None:
    import process_stock_data as psd

    close = psd.load_bundled().close
    log_close = np.log(close[["AAPL", "MSFT"]].to_numpy(dtype=float))
    windows = ps.walk_forward_windows(len(log_close))
    stats = ps.rolling_pair_statistics(log_close[:, 0], log_close[:, 1], windows)
    # Measured: 127 windows 1990-2022; one half-life is inf (no reversion in that year).
    assert len(stats) == len(windows) > 100
    for s in stats:
        assert s.bars == 252
        assert all(
            math.isfinite(v)
            for v in (s.correlation, s.hedge_ratio, s.intercept, s.hedge_ratio_stability)
        )
        assert 0.0 <= s.coint_pvalue <= 1.0
        assert s.half_life_bars > 0.0
    last = stats[-1]  # formation ending in 2022: measured correlation 0.78, half-life 35 bars
    assert 0.3 < last.correlation < 1.0
    assert math.isfinite(last.half_life_bars)


def _engle_granger_by_hand(log_a: np.ndarray, log_b: np.ndarray, **adf: object) -> float:
    """The Engle-Granger p-value composed from its parts, not through `coint`: OLS residuals of a
    on (1, b), their ADF statistic without deterministic terms, MacKinnon's p for 2 variables."""
    import statsmodels.api as sm
    from statsmodels.tsa.adfvalues import mackinnonp
    from statsmodels.tsa.stattools import adfuller

    resid = sm.OLS(log_a, sm.add_constant(log_b)).fit().resid
    stat = adfuller(resid, regression="n", result_object=False, **adf)[0]
    return float(mackinnonp(stat, regression="c", N=2))


@pytest.mark.parametrize("seed", [3, 11])
def test_coint_lags_aic_is_statsmodels_default_lag_choice(seed: int) -> None:
    log_a, log_b = cointegrated_pair(seed=seed, n=252)
    log_a = log_a + np.cumsum(np.random.default_rng(seed).normal(0, 0.004, 252))  # weaker coint
    aic = ps.pair_statistics(log_a, log_b, coint_lags="aic").coint_pvalue
    assert aic == coint(log_a, log_b, trend="c", autolag="aic")[1]
    assert aic == pytest.approx(_engle_granger_by_hand(log_a, log_b, autolag="AIC"), rel=1e-9)


def test_coint_lags_fixed1_is_one_lag_and_the_default() -> None:
    log_a, log_b = cointegrated_pair(seed=3, n=252)
    log_a = log_a + np.cumsum(np.random.default_rng(3).normal(0, 0.004, 252))
    fixed = ps.pair_statistics(log_a, log_b, coint_lags="fixed1").coint_pvalue
    assert fixed == ps.pair_statistics(log_a, log_b).coint_pvalue
    assert fixed == pytest.approx(
        _engle_granger_by_hand(log_a, log_b, maxlag=1, autolag=None), rel=1e-9
    )
    # the two choices are really different tests on this window
    assert fixed != ps.pair_statistics(log_a, log_b, coint_lags="aic").coint_pvalue


def test_an_unknown_coint_lags_is_refused_naming_the_choices() -> None:
    log_a, log_b = cointegrated_pair(seed=3, n=252)
    with pytest.raises(ConfigurationError, match="fixed1, aic"):
        ps.pair_statistics(log_a, log_b, coint_lags="bic")
