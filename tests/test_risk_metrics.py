"""Risk metrics against empyrical (a test-only dependency) on real and generated returns.

Sign conventions checked here: VaR/CVaR are positive loss fractions (minus empyrical's values);
max drawdown is a negative fraction, as in empyrical.
"""

from __future__ import annotations

import math

import empyrical as ep
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import risk_management as rm
from error_handling import ConfigurationError

REL = 1e-10


def returns_of(bundled, ticker: str) -> pd.Series:
    """Daily simple returns of a bundled ticker, the first (NaN) one kept to test NaN dropping."""
    return bundled.close[ticker].pct_change()


def empyrical_reference(r: np.ndarray) -> dict[str, float]:
    """What our metrics must equal, in our sign conventions, from empyrical."""
    return {
        "sharpe": ep.sharpe_ratio(r, annualization=252),
        "sortino": ep.sortino_ratio(r, annualization=252),
        "max_drawdown": ep.max_drawdown(r),
        "cagr": ep.annual_return(r, annualization=252),
        "calmar": ep.calmar_ratio(r, annualization=252),
        "annual_volatility": ep.annual_volatility(r, annualization=252),
        "var_95": -ep.value_at_risk(r, cutoff=0.05),
        "cvar_95": -ep.conditional_value_at_risk(r, cutoff=0.05),
        "var_99": -ep.value_at_risk(r, cutoff=0.01),
        "cvar_99": -ep.conditional_value_at_risk(r, cutoff=0.01),
    }


def normal_reference(r: np.ndarray, level: float) -> tuple[float, float]:
    """Normal VaR and expected shortfall from scipy, positive loss fractions."""
    mu, sigma = r.mean(), r.std(ddof=1)
    z = stats.norm.ppf(1 - level)
    return -(mu + z * sigma), -(mu - sigma * stats.norm.pdf(z) / (1 - level))


@pytest.mark.parametrize("ticker", ["AAPL", "MSFT", "KO", "JPM"])
def test_metrics_match_empyrical_on_bundled_returns(bundled, ticker):
    returns = returns_of(bundled, ticker)
    metrics = rm.risk_metrics(returns)
    expected = empyrical_reference(returns.dropna().to_numpy())
    for name, value in expected.items():
        assert getattr(metrics, name) == pytest.approx(value, rel=REL), name
    assert metrics.n_periods == len(returns) - 1


def test_metrics_match_empyrical_on_a_pair_spread_return(bundled):
    r = (returns_of(bundled, "AAPL") - returns_of(bundled, "MSFT")).to_numpy() / 2
    clean = r[~np.isnan(r)]
    assert rm.sharpe_ratio(r) == pytest.approx(ep.sharpe_ratio(clean), rel=REL)
    assert rm.sortino_ratio(r) == pytest.approx(ep.sortino_ratio(clean), rel=REL)
    assert rm.max_drawdown(r) == pytest.approx(ep.max_drawdown(clean), rel=REL)
    assert rm.historical_cvar(r) == pytest.approx(-ep.conditional_value_at_risk(clean), rel=REL)


def test_parametric_var_and_cvar_match_the_normal_distribution(bundled):
    r = returns_of(bundled, "AAPL").dropna().to_numpy()
    for level in (0.95, 0.99):
        var, cvar = normal_reference(r, level)
        assert rm.parametric_var(r, level) == pytest.approx(var, rel=REL)
        assert rm.parametric_cvar(r, level) == pytest.approx(cvar, rel=REL)
        assert rm.parametric_cvar(r, level) > rm.parametric_var(r, level) > 0


def test_sharpe_and_sortino_take_a_per_period_threshold(bundled):
    r = returns_of(bundled, "KO").dropna().to_numpy()
    assert rm.sharpe_ratio(r, risk_free=0.0001) == pytest.approx(
        ep.sharpe_ratio(r, risk_free=0.0001), rel=REL
    )
    assert rm.sortino_ratio(r, required_return=0.0001) == pytest.approx(
        ep.sortino_ratio(r, required_return=0.0001), rel=REL
    )


def test_var_and_cvar_are_positive_losses_and_drawdown_negative():
    r = np.array([0.01, -0.02, 0.015, -0.04, 0.005, -0.01, 0.02, 0.0, -0.03, 0.01])
    assert rm.historical_var(r) > 0 and rm.historical_cvar(r) >= rm.historical_var(r)
    assert rm.max_drawdown(r) < 0


def test_max_drawdown_counts_a_first_day_loss_from_the_initial_wealth():
    assert rm.max_drawdown(np.array([-0.5, 0.1])) == pytest.approx(-0.5)


@pytest.mark.parametrize("values", [[], [0.01], [math.nan, 0.02, math.nan]])
def test_fewer_than_two_returns_give_nan(values):
    metrics = rm.risk_metrics(np.array(values, dtype=float))
    assert all(
        math.isnan(getattr(metrics, f)) for f in metrics.__dataclass_fields__ if f != "n_periods"
    )


def test_constant_returns_give_nan_sharpe_and_sortino():
    r = np.full(50, 0.001)
    assert math.isnan(rm.sharpe_ratio(r))
    assert math.isnan(rm.sortino_ratio(r))  # no period below the required return
    assert math.isnan(rm.calmar_ratio(r))  # no drawdown


def test_invalid_confidence_level_is_a_configuration_error():
    with pytest.raises(ConfigurationError):
        rm.historical_var(np.array([0.01, 0.02]), level=95)


# Returns rounded to 1e-6 look like real daily returns and avoid subnormal floats.
daily_returns = st.lists(
    st.floats(-0.5, 0.5).map(lambda x: round(x, 6)), min_size=2, max_size=400
).map(np.array)


def close(actual: float, expected: float) -> bool:
    if math.isnan(expected) or math.isinf(expected):
        return math.isnan(actual)  # we report undefined ratios as NaN where empyrical gives inf
    # The absolute term only matters for results that cancel to ~0 (mean ~ 0, CAGR ~ 0):
    # empyrical sums with bottleneck, we with numpy's pairwise summation.
    return actual == pytest.approx(expected, rel=REL, abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(daily_returns)
def test_metrics_match_empyrical_on_generated_returns(r):
    metrics = rm.risk_metrics(r)
    expected = empyrical_reference(r)
    if r.std(ddof=1) < 1e-9:  # (near-)constant: a ratio over rounding noise compares nothing
        expected.pop("sharpe")
        assert math.isnan(metrics.sharpe) or r.max() != r.min()
    for name, value in expected.items():
        assert close(getattr(metrics, name), value), (name, getattr(metrics, name), value)
