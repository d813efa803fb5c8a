"""The backtest engine on real bundled prices: accounting, costs, the risk gate, partial fills,
recalls, the drawdown halt, timing and truncation invariance."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import backtest_strategy as bt
import risk_management as rm
import trading_execution as te
import transaction_costs as tc

LOOSE = rm.RiskLimits(
    max_leg_notional=1e9,
    max_gross_exposure=1e9,
    max_net_exposure=1e9,
    max_order_notional=1e9,
    max_leverage=50.0,
    daily_loss_limit_pct=0.99,
    max_drawdown_pct=0.99,
)


@pytest.fixture(scope="module")
def prices(request) -> pd.DataFrame:
    import process_stock_data as psd

    close = psd.load_bundled().close[["AAPL", "MSFT"]]
    return close.loc["2019-01-01":"2021-12-31"]


def zscore_weights(prices: pd.DataFrame, fraction: float = 0.25) -> np.ndarray:
    z = bt.rolling_spread_zscore(np.log(prices["AAPL"].values), np.log(prices["MSFT"].values))
    return bt.instructions_from_states(bt.zscore_rule_states(z), fraction)


def signal_weights(n: int, at: dict[int, tuple[float, float]]) -> np.ndarray:
    w = np.full((n, 2), np.nan)
    for i, pair in at.items():
        w[i] = pair
    return w


def config(**kw) -> bt.BacktestConfig:
    execution = kw.pop("execution", te.ExecutionConfig())
    limits = kw.pop("limits", LOOSE)
    return bt.BacktestConfig(execution=execution, limits=limits, **kw)


# --- Accounting -----------------------------------------------------------------------------------
def test_cash_plus_marked_positions_equals_equity_on_every_bar(prices):
    r = bt.run_backtest(prices, zscore_weights(prices, 0.5), config())
    eq = r.equity
    marked = eq["cash"] + eq["qty_AAPL"] * eq["price_AAPL"] + eq["qty_MSFT"] * eq["price_MSFT"]
    assert len(r.trades) > 10
    np.testing.assert_allclose(marked, eq["equity"], rtol=0, atol=1e-6)


def test_cost_totals_equal_the_sum_of_per_trade_costs(prices):
    r = bt.run_backtest(prices, zscore_weights(prices, 0.5), config())
    for kind in ("commission", "spread", "impact", "sec_fee", "finra_taf", "buy_in_penalty"):
        assert r.costs[kind] == pytest.approx(r.trades[kind].sum(), abs=1e-9)
    assert r.costs["borrow"] == pytest.approx(r.equity["borrow_paid"].iloc[-1], abs=1e-6)
    assert r.costs["commission"] > 0 and r.costs["borrow"] > 0 and r.costs["spread"] > 0


def test_pnl_is_realized_plus_unrealized_minus_fees_and_borrow(prices):
    r = bt.run_backtest(prices, zscore_weights(prices, 0.5), config())
    c = r.costs
    explicit = c["commission"] + c["sec_fee"] + c["finra_taf"]
    change = r.equity["equity"].iloc[-1] - r.initial_capital
    assert change == pytest.approx(r.realized_pnl + r.unrealized_pnl - explicit - c["borrow"])


def test_borrow_is_charged_on_the_short_leg_at_actual_over_360(prices):
    """Short 100 MSFT from the first fill, held to the end: borrow = sum over the holding days of
    100 x prior close x rate x days / 360."""
    n = len(prices)
    execution = te.ExecutionConfig(costs=tc.CostModel.flat(0.0))
    execution = dataclasses.replace(
        execution, costs=dataclasses.replace(execution.costs, borrow_rate_annual=0.05)
    )
    w = signal_weights(n, {0: (0.0, -100.0)})
    r = bt.run_backtest(
        prices, w, config(execution=execution, fill_delay_bars=0), weight_unit="usd"
    )
    qty = -int(100.0 / prices["MSFT"].iloc[0])
    assert r.equity["qty_MSFT"].iloc[-1] == qty
    days = np.diff(prices.index.values).astype("timedelta64[D]").astype(float)
    expected = (-qty * prices["MSFT"].to_numpy()[:-1] * 0.05 * days / 360).sum()
    assert r.costs["borrow"] == pytest.approx(expected, rel=1e-12)


# --- Timing ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("delay", [0, 1, 3])
def test_an_instruction_fills_fill_delay_bars_after_its_bar(prices, delay):
    w = signal_weights(len(prices), {10: (0.2, -0.2)})
    r = bt.run_backtest(prices, w, config(fill_delay_bars=delay))
    assert set(r.trades["date"]) == {prices.index[10 + delay]}
    assert set(r.trades["bar_price"]) == set(prices.iloc[10 + delay])


def test_results_on_early_bars_do_not_depend_on_later_data(prices):
    """Truncation invariance: cutting the data after bar k changes nothing up to bar k."""
    w = zscore_weights(prices, 0.5)
    full = bt.run_backtest(prices, w, config())
    for k in (60, 250, 500):
        cut = bt.run_backtest(prices.iloc[:k], w[:k], config())
        pd.testing.assert_frame_equal(cut.equity, full.equity.iloc[:k])
        early = full.trades[full.trades["date"] <= prices.index[k - 1]].reset_index(drop=True)
        pd.testing.assert_frame_equal(cut.trades, early)


# --- The risk gate --------------------------------------------------------------------------------
def test_trade_blocked_when_the_position_limit_would_be_exceeded(prices, caplog):
    limits = dataclasses.replace(LOOSE, max_leg_notional=10_000.0)
    w = signal_weights(len(prices), {5: (0.25, -0.25)})  # $25,000 per leg
    with caplog.at_level("INFO", logger="backtest_strategy"):
        r = bt.run_backtest(prices, w, config(limits=limits))
    assert r.trades.empty
    assert r.rejection_counts == {"leg_notional": 1}
    assert "risk gate rejected" in caplog.text and "[leg_notional]" in caplog.text
    assert (r.equity["equity"] == r.initial_capital).all()


def test_trade_within_the_limits_goes_through(prices):
    limits = dataclasses.replace(LOOSE, max_leg_notional=30_000.0)
    w = signal_weights(len(prices), {5: (0.25, -0.25)})
    r = bt.run_backtest(prices, w, config(limits=limits))
    assert r.rejections == []
    assert sorted(r.trades["symbol"]) == ["AAPL", "MSFT"]
    assert (r.trades["status"] == "filled").all()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.data(),
    leg=st.floats(5_000, 80_000),
    gross=st.floats(10_000, 150_000),
    net=st.floats(1_000, 40_000),
)
def test_no_fill_leaves_the_book_outside_a_limit(prices, data, leg, gross, net):
    """Random instructions (sizes up to 1x equity per leg, any direction) against random limits:
    after every bar with an entry fill, each leg, the gross and the net exposure at that bar's
    prices are within the limits the gate enforced."""
    n = 120
    px = prices.iloc[:n]
    bars = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=12, unique=True))
    w = np.full((n, 2), np.nan)
    for b in bars:
        w[b] = data.draw(st.tuples(st.floats(-1, 1), st.floats(-1, 1)))
    limits = dataclasses.replace(
        LOOSE, max_leg_notional=leg, max_gross_exposure=gross, max_net_exposure=net
    )
    r = bt.run_backtest(px, w, config(limits=limits), log_rejections=False)
    entries = r.trades[r.trades["purpose"] == "entry"]
    for date in entries["date"].unique():
        row = r.equity.loc[date]
        notional = np.array(
            [row["qty_AAPL"] * row["price_AAPL"], row["qty_MSFT"] * row["price_MSFT"]]
        )
        assert (np.abs(notional) <= leg + 1e-6).all()
        assert np.abs(notional).sum() <= gross + 1e-6
        assert abs(notional.sum()) <= net + 1e-6


# --- Execution details ----------------------------------------------------------------------------
def test_order_above_the_participation_cap_fills_partially_and_the_rest_is_cancelled(prices):
    execution = te.ExecutionConfig(default_adv_usd=100_000.0, participation_cap=0.1)
    w = signal_weights(len(prices), {5: (0.25, -0.25)})
    r = bt.run_backtest(prices, w, config(execution=execution, fill_delay_bars=0))
    assert (r.trades["status"] == "partially_filled").all()
    assert len(r.trades) == 2 and set(r.trades["date"]) == {prices.index[5]}
    cap = np.floor(0.1 * 100_000.0 / prices.iloc[5].to_numpy())
    assert sorted(r.trades["qty"]) == sorted(cap.astype(int))


def test_carried_remainder_fills_on_the_following_bars(prices):
    execution = te.ExecutionConfig(
        default_adv_usd=100_000.0, participation_cap=0.1, remainder=te.RemainderPolicy.CARRY
    )
    w = signal_weights(len(prices), {5: (0.25, -0.25)})
    r = bt.run_backtest(prices, w, config(execution=execution, fill_delay_bars=0))
    carried = r.trades[r.trades["purpose"] == "carry"]
    assert not carried.empty and carried["date"].min() == prices.index[6]
    first = r.trades[r.trades["date"] == prices.index[5]].set_index("symbol")
    total = r.trades.groupby("symbol")["qty"].sum()
    assert (total == first["requested_qty"]).all()  # the whole order, in pieces


def test_recall_forces_a_buy_in_at_a_penalty_and_closes_the_pair(prices):
    day = prices.index[30]
    execution = te.ExecutionConfig(recall_dates={"MSFT": (str(day.date()),)})
    w = signal_weights(len(prices), {5: (0.25, -0.25)})
    r = bt.run_backtest(prices, w, config(execution=execution))
    buy_in = r.trades[r.trades["purpose"] == "buy_in"]
    assert list(buy_in["symbol"]) == ["MSFT"] and buy_in["date"].iloc[0] == day
    close = prices.loc[day, "MSFT"]
    assert buy_in["fill_price"].iloc[0] > close * 1.01  # 100 bps penalty, then spread and impact
    assert r.costs["buy_in_penalty"] == pytest.approx(buy_in["qty"].iloc[0] * close * 0.01)
    assert r.equity.loc[day, ["qty_AAPL", "qty_MSFT"]].tolist() == [0, 0]


def test_hard_to_borrow_recalls_are_deterministic_for_a_seed(prices):
    def run(seed):
        execution = te.ExecutionConfig(
            hard_to_borrow=frozenset({"MSFT"}), htb_recall_probability=0.05, seed=seed
        )
        return bt.run_backtest(prices, zscore_weights(prices), config(execution=execution))

    a, b, c = run(1), run(1), run(2)
    pd.testing.assert_frame_equal(a.trades, b.trades)
    recalls = lambda r: list(r.trades.loc[r.trades["purpose"] == "buy_in", "date"])  # noqa: E731
    assert recalls(a) and recalls(a) != recalls(c)


# --- Drawdown control -----------------------------------------------------------------------------
def test_drawdown_breach_liquidates_halts_and_blocks_every_later_entry():
    import process_stock_data as psd

    px = psd.load_bundled().close[["AAPL", "MSFT"]].loc["2020-01-02":"2020-06-30"]
    n = len(px)
    w = signal_weights(n, {0: (1.5, 0.0), 70: (1.0, -0.5), 90: (0.5, 0.0)})
    limits = dataclasses.replace(LOOSE, max_drawdown_pct=0.10)
    r = bt.run_backtest(px, w, config(limits=limits, fill_delay_bars=0))
    assert r.halted_at is not None and r.halted_at < px.index[70]
    liq = r.trades[r.trades["purpose"] == "liquidation"]
    assert list(liq["date"].unique()) == [r.halted_at]
    after = r.trades[r.trades["date"] > r.halted_at]
    assert after.empty
    assert r.rejection_counts == {"trading_halted": 2}
    held = r.equity.loc[r.halted_at :, ["qty_AAPL", "qty_MSFT"]]
    assert (held == 0).all().all()


@pytest.fixture(scope="module")
def amd_pg() -> pd.DataFrame:
    """AMD/PG, 2016-01-04 .. 2016-04-04: long AMD and short PG from the second bar breaches a
    10 % drawdown on the 2016-01-15 close (a Friday; the next bar is Tuesday the 19th)."""
    import process_stock_data as psd

    return psd.load_bundled().close[["AMD", "PG"]].loc["2016-01-04":"2016-04-04"]


def first_breach(equity: pd.Series, initial: float, limit: float) -> pd.Timestamp:
    """The first bar whose close is `limit` or more below the running peak (from `initial`)."""
    peak = equity.cummax().clip(lower=initial)
    return equity[equity <= peak * (1.0 - limit)].index[0]


@pytest.mark.parametrize("engine", ["compiled", "interpreted"])
@pytest.mark.parametrize("delay", [1, 2])
def test_a_drawdown_liquidation_fills_fill_delay_bars_after_the_close_that_reveals_it(
    amd_pg, engine, delay
):
    """No account can act on the close that reveals a breach: the halt starts on that bar, the
    liquidation fills `fill_delay_bars` later at that bar's close (zero costs: at the close)."""
    n = len(amd_pg)
    w = signal_weights(n, {0: (0.5, -0.5)})
    limits = dataclasses.replace(LOOSE, max_drawdown_pct=0.10)
    zero = te.ExecutionConfig(costs=tc.CostModel.zero())
    cfg = config(limits=limits, execution=zero, fill_delay_bars=delay)
    r = bt.run_backtest(amd_pg, w, cfg, engine=engine)
    eq = r.equity
    seen = first_breach(eq["equity"], r.initial_capital, 0.10)
    assert r.halted_at == seen
    assert delay != 1 or seen == pd.Timestamp("2016-01-15")
    fill_bar = eq.index[eq.index.get_loc(seen) + delay]
    liq = r.trades[r.trades["purpose"] == "liquidation"]
    assert sorted(liq["symbol"]) == ["AMD", "PG"]
    assert list(liq["date"].unique()) == [fill_bar]
    assert (liq["fill_price"] == liq["bar_price"]).all()
    assert liq["bar_price"].tolist() == amd_pg.loc[fill_bar, liq["symbol"]].tolist()
    held = eq.loc[seen:fill_bar, ["qty_AMD", "qty_PG"]]
    assert (held.iloc[:-1] != 0).all().all()  # still held through the bars before the fill
    assert (eq.loc[fill_bar:, ["qty_AMD", "qty_PG"]] == 0).all().all()
    assert r.trades["date"].max() == fill_bar


def test_the_halt_starts_on_the_bar_that_reveals_the_breach(amd_pg):
    """Entries that would fill on the breach bar or while the liquidation waits are refused."""
    n = len(amd_pg)
    b = amd_pg.index.get_loc(pd.Timestamp("2016-01-15"))
    w = signal_weights(n, {0: (0.5, -0.5), b - 1: (0.6, -0.6), b: (0.7, -0.7)})
    limits = dataclasses.replace(LOOSE, max_drawdown_pct=0.10)
    zero = te.ExecutionConfig(costs=tc.CostModel.zero())
    r = bt.run_backtest(amd_pg, w, config(limits=limits, execution=zero, fill_delay_bars=1))
    assert r.halted_at == amd_pg.index[b]
    assert [(x.date, x.reason) for x in r.rejections] == [
        (amd_pg.index[b], "trading_halted"),
        (amd_pg.index[b + 1], "trading_halted"),
    ]
    assert set(r.trades["purpose"]) == {"entry", "liquidation"}
    assert (r.equity.iloc[b + 1 :][["qty_AMD", "qty_PG"]] == 0).all().all()


def test_a_liquidation_the_gate_refuses_stays_due_and_goes_out_on_the_next_bar():
    """Long 100 shares at $100; the 85 close breaches 10 %; the next close, 20, is outside the
    price band (x3) of 85, so the gate refuses the liquidation there; it goes out at 21."""
    days = pd.bdate_range("2024-01-02", periods=10)
    long = [100.0, 100.0, 100.0, 85.0, 20.0, 21.0, 22.0, 23.0, 24.0, 25.0]
    px = pd.DataFrame({"AAPL": long, "MSFT": 50.0}, index=days)
    w = signal_weights(len(px), {0: (0.1, 0.0)})
    limits = dataclasses.replace(LOOSE, max_drawdown_pct=0.01)
    zero = te.ExecutionConfig(costs=tc.CostModel.zero())
    r = bt.run_backtest(px, w, config(limits=limits, execution=zero), engine="interpreted")
    assert r.halted_at == days[3]
    assert [(x.date, x.reason, x.purpose) for x in r.rejections] == [
        (days[4], "price_sanity", "liquidation")
    ]
    liq = r.trades[r.trades["purpose"] == "liquidation"]
    assert liq[["date", "symbol", "side", "qty"]].values.tolist() == [
        [days[5], "AAPL", "sell", 100]
    ]
    assert r.liquidated_at == days[5]


def test_a_liquidation_due_past_the_last_bar_leaves_the_book_halted_and_held(amd_pg):
    px = amd_pg.loc[:"2016-01-15"]  # the breach is seen on the last bar
    w = signal_weights(len(px), {0: (0.5, -0.5)})
    limits = dataclasses.replace(LOOSE, max_drawdown_pct=0.10)
    r = bt.run_backtest(px, w, config(limits=limits, fill_delay_bars=1))
    assert r.halted_at == px.index[-1]
    assert not (r.trades["purpose"] == "liquidation").any()
    assert (r.equity.iloc[-1][["qty_AMD", "qty_PG"]] != 0).all()


def test_the_backtest_never_writes_the_live_risk_state(prices, home):
    bt.run_backtest(prices, zscore_weights(prices, 2.0), config(limits=rm.RiskLimits()))
    assert not home.risk_state_file.exists()
    assert not home.alerts_log.exists()
