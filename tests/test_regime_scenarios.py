"""The engine through three real market regimes of the bundled AAPL/MSFT history.

COVID crash (2020-02-19 .. 2020-04-30), the 2021 bull market and the 2022 bear market. In each, two
strategies run with the default cost model: the spread z-score rule under the default risk limits,
and a leveraged long-AAPL book (short a little MSFT) sized so that the drawdown limit can bind.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

import backtest_strategy as bt
import risk_management as rm

REGIMES = {
    "covid_crash": ("2020-02-19", "2020-04-30"),
    "bull_2021": ("2021-01-04", "2021-12-31"),
    "bear_2022": ("2022-01-03", "2022-12-28"),
}
LEVERED = rm.RiskLimits(
    max_leg_notional=1e7,
    max_gross_exposure=1e7,
    max_net_exposure=1e7,
    max_order_notional=1e7,
    max_leverage=5.0,
    daily_loss_limit_pct=0.5,
    max_drawdown_pct=0.10,
    initial_margin=0.25,  # portfolio-margin-like buying power: 4x equity
)


@pytest.fixture(scope="module")
def history() -> pd.DataFrame:
    import process_stock_data as psd

    return psd.load_bundled().close[["AAPL", "MSFT"]]


def zscore_run(history: pd.DataFrame, start: str, end: str) -> bt.BacktestResult:
    z = bt.rolling_spread_zscore(np.log(history["AAPL"].values), np.log(history["MSFT"].values))
    z = pd.Series(z, index=history.index).loc[start:end].to_numpy()
    w = bt.instructions_from_states(bt.zscore_rule_states(z), 0.4)
    return bt.run_backtest(history.loc[start:end], w, bt.BacktestConfig())


def levered_run(history: pd.DataFrame, start: str, end: str) -> bt.BacktestResult:
    """2.5x long AAPL, 0.5x short MSFT from the first bar; re-entry attempts every 10 bars."""
    px = history.loc[start:end]
    w = np.full((len(px), 2), np.nan)
    w[0] = (2.5, -0.5)
    w[10::10] = [(2.0, -0.4), (2.5, -0.5)] * (len(w[10::10]) // 2) + [(2.0, -0.4)] * (
        len(w[10::10]) % 2
    )
    return bt.run_backtest(px, w, bt.BacktestConfig(limits=LEVERED, fill_delay_bars=0))


def runs(history, start, end):
    return {"zscore": zscore_run(history, start, end), "levered": levered_run(history, start, end)}


@pytest.mark.parametrize("regime", REGIMES)
def test_accounting_identity_holds_on_every_bar(history, regime):
    for name, r in runs(history, *REGIMES[regime]).items():
        eq = r.equity
        marked = eq["cash"] + eq["qty_AAPL"] * eq["price_AAPL"] + eq["qty_MSFT"] * eq["price_MSFT"]
        np.testing.assert_allclose(marked, eq["equity"], rtol=0, atol=1e-6, err_msg=name)
        assert len(r.trades) > 0, name


@pytest.mark.parametrize("regime", REGIMES)
def test_cost_totals_equal_the_sum_of_per_trade_costs(history, regime):
    for name, r in runs(history, *REGIMES[regime]).items():
        for kind in ("commission", "spread", "impact", "sec_fee", "finra_taf", "buy_in_penalty"):
            assert r.costs[kind] == pytest.approx(r.trades[kind].sum(), abs=1e-9), (name, kind)
        assert r.costs["borrow"] == pytest.approx(r.equity["borrow_paid"].iloc[-1], abs=1e-6)
        assert sum(r.costs.values()) > 0, name


@pytest.mark.parametrize("regime", REGIMES)
def test_drawdown_stops_within_one_bar_of_the_limit_once_liquidation_fires(history, regime):
    r = levered_run(history, *REGIMES[regime])
    if r.halted_at is None:
        pytest.fail(f"the 2.5x book never hit the 10 % limit in {regime}; resize the test")
    eq = r.equity
    h = eq.index.get_loc(r.halted_at)
    peak = max(r.initial_capital, eq["equity"].iloc[:h].max())
    before = eq.iloc[h - 1]
    # The bar's move on the positions held into it, plus what liquidating cost.
    move = abs(
        before["qty_AAPL"] * (eq["price_AAPL"].iloc[h] - before["price_AAPL"])
        + before["qty_MSFT"] * (eq["price_MSFT"].iloc[h] - before["price_MSFT"])
    )
    liq = r.trades[r.trades["date"] == r.halted_at]
    cost = liq[["commission", "spread", "impact", "sec_fee", "finra_taf"]].sum().sum()
    drawdown = 1.0 - eq["equity"] / eq["equity"].cummax().clip(lower=r.initial_capital)
    limit = LEVERED.max_drawdown_pct
    assert drawdown.iloc[:h].max() < limit  # not breached before the halt bar
    assert drawdown.max() <= limit + (move + cost) / peak + 1e-9
    after = eq.iloc[h:]
    assert (after[["qty_AAPL", "qty_MSFT"]] == 0).all().all()
    assert after["equity"].nunique() == 1  # flat: nothing moves it any more


def test_halt_fires_in_the_crash_and_no_entry_follows_it(history):
    r = levered_run(history, *REGIMES["covid_crash"])
    assert r.halted_at is not None
    assert pd.Timestamp("2020-02-19") < r.halted_at < pd.Timestamp("2020-03-31")
    later = r.trades[r.trades["date"] > r.halted_at]
    assert later.empty
    assert r.rejection_counts.get("trading_halted", 0) >= 2  # the re-entry attempts
    assert set(r.rejection_counts) == {"trading_halted"}


def test_default_limits_refuse_the_levered_book(history):
    """Sanity of the gate in a regime: the same 2.5x book under the default limits is refused."""
    px = history.loc[slice(*REGIMES["bull_2021"])]
    w = np.full((len(px), 2), np.nan)
    w[0] = (2.5, -0.5)
    r = bt.run_backtest(px, w, bt.BacktestConfig(limits=rm.RiskLimits()))
    assert r.trades.empty
    assert r.rejection_counts == {"order_size": 1}  # $250,000 > the $60,000 order limit


def test_the_limit_is_configurable(history):
    """A looser drawdown limit lets the crash run further before the halt."""
    tight = levered_run(history, *REGIMES["covid_crash"])
    loose = bt.run_backtest(
        history.loc[slice(*REGIMES["covid_crash"])],
        np.vstack([[2.5, -0.5], np.full((len(history.loc["2020-02-20":"2020-04-30"]), 2), np.nan)]),
        bt.BacktestConfig(
            limits=dataclasses.replace(LEVERED, max_drawdown_pct=0.30), fill_delay_bars=0
        ),
    )
    assert loose.halted_at is not None and loose.halted_at > tight.halted_at
