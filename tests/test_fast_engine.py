"""The compiled event loop (`fast_engine`) is the same engine as the interpreted one.

- Each rule it applies, compiled by numba, returns exactly what the interpreted function returns,
  on random inputs (costs, fill quantity, ledger, sizing, rebalance, leg orders, gate checks).
- Random order streams (random prices, volumes, instructions, sizing, costs and limits) give the
  same fills, rejections, round trips, equity and costs to the last bit, run compiled and run
  interpreted -- including runs the compiled loop hands back mid-way (a refusal, a drawdown halt).
- The paper replay (the live path) against the compiled backtest: tests/test_parity.py.
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import textwrap

import numba
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import backtest_strategy as bs
import fast_engine
import pair_engine as pe
import process_stock_data as psd
import risk_management as rm
import trading_execution as te
import transaction_costs as tc
from error_handling import ConfigurationError
from tests.helpers import ROOT

TICKERS = ("AAPL", "MSFT", "JPM", "XOM", "PG", "AMD")


@pytest.fixture(scope="module")
def closes() -> pd.DataFrame:
    return psd.load_bundled().close[list(TICKERS)]


@pytest.fixture(scope="module")
def compiled() -> dict[str, object]:
    """Every rule compiled on its own, as the loop compiles it."""
    fast_engine.kernel()  # registers the rules
    return {rule.__name__: numba.njit(rule) for rule in fast_engine.RULES}


#: The two numba helpers each compiled once for the module (a fresh `numba.njit` per example
#: compiles again: 50 examples cost 30 s of compilation and checked nothing more).
JITTED: dict[str, object] = {}


def jitted(fn):
    if fn.__name__ not in JITTED:
        JITTED[fn.__name__] = numba.njit(fn)
    return JITTED[fn.__name__]


def run_both(prices, weights, cfg, **kw) -> tuple[bs.BacktestResult, bs.BacktestResult]:
    fast = bs.run_backtest(prices, weights, cfg, log_rejections=False, engine="compiled", **kw)
    slow = bs.run_backtest(prices, weights, cfg, log_rejections=False, engine="interpreted", **kw)
    return fast, slow


def assert_same_run(fast: bs.BacktestResult, slow: bs.BacktestResult) -> None:
    pd.testing.assert_frame_equal(fast.trades, slow.trades, check_exact=True)
    pd.testing.assert_frame_equal(fast.equity, slow.equity, check_exact=True)
    assert fast.rejections == slow.rejections
    assert fast.round_trips == slow.round_trips
    assert fast.costs == slow.costs
    assert fast.halted_at == slow.halted_at
    assert (fast.realized_pnl, fast.unrealized_pnl) == (slow.realized_pnl, slow.unrealized_pnl)
    assert (fast.instructions, fast.event_bars) == (slow.instructions, slow.event_bars)
    assert slow.compiled_bars == 0


# --- Each rule, compiled and interpreted ----------------------------------------------------------
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
positive = st.floats(min_value=0.01, max_value=5e3, allow_nan=False)
shares = st.integers(min_value=-50_000, max_value=50_000)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sell=st.booleans(),
    q=st.integers(min_value=1, max_value=200_000),
    p=positive,
    vol=st.floats(min_value=0.0, max_value=0.2),
    adv=st.floats(min_value=1.0, max_value=1e8),
    per_share=st.sampled_from([0.0, 0.005, 0.0035]),
    bps=st.sampled_from([0.0, 1e-3, 2.5e-4]),
    floor=st.sampled_from([0.0, 1.0, 0.35]),
    cap_pct=st.sampled_from([0.01, 0.005, math.inf]),
    half_spread=st.sampled_from([0.0, 2.0, 7.5]),
    impact=st.sampled_from([0.0, 0.5, 1.0]),
    sec_rate=st.sampled_from([0.0, 8.0, 27.8, 22.9]),
    taf=st.sampled_from([(0.0, 0.0), (0.000166, 8.30), (0.000119, 5.95)]),
)
def test_the_compiled_cost_model_prices_every_order_as_the_interpreted_one(
    compiled,
    sell,
    q,
    p,
    vol,
    adv,
    per_share,
    bps,
    floor,
    cap_pct,
    half_spread,
    impact,
    sec_rate,
    taf,
):
    args = (sell, float(q), p, vol, adv, per_share, bps, floor, cap_pct, half_spread, impact)
    args = (*args, sec_rate, *taf)
    want = tc.fill_terms(*args)
    got = compiled["fill_terms"](*args)
    assert np.array_equal(np.array(got), np.array(want), equal_nan=True)


@settings(max_examples=300, deadline=None)
@given(
    before=shares,
    dq=shares.filter(lambda x: x != 0),
    avg=positive,
    price=positive,
    realized=finite,
    cap=st.floats(min_value=0.001, max_value=1.0),
    adv=st.floats(min_value=1.0, max_value=1e6),
    band=st.sampled_from([0.0, 0.1, 0.25, 0.5]),
    weight=st.floats(min_value=-3.0, max_value=3.0),
    scale=st.floats(min_value=1.0, max_value=1e7),
)
def test_the_compiled_ledger_sizing_and_orders_match_the_interpreted_rules(
    compiled, before, dq, avg, price, realized, cap, adv, band, weight, scale
):
    avg = avg if before else 0.0
    want = pe.book_fill(before, avg, realized, dq, price)
    got = compiled["book_fill"](float(before), avg, realized, float(dq), price)
    assert got == want and float(got[0]) == float(want[0])
    assert compiled["whole_shares"](weight, scale, price) == pe.whole_shares(weight, scale, price)
    target = before + dq
    assert compiled["leg_rebalances"](float(before), float(target), band) == pe.leg_rebalances(
        before, target, band
    )
    assert compiled["leg_orders"](float(before), float(target)) == te.leg_orders(before, target)
    qty = abs(dq)
    assert compiled["fill_quantity"](float(qty), cap, adv, False, False) == te.fill_quantity(
        qty, cap, adv, False, False
    )
    assert compiled["cash_change"](float(dq), price, 1.0, 0.02, 0.01) == te.cash_change(
        dq, price, 1.0, 0.02, 0.01
    )


@settings(max_examples=300, deadline=None)
@given(
    before=shares,
    signed=shares.filter(lambda x: x != 0),
    price=positive,
    ref=positive,
    factor=st.floats(min_value=1.01, max_value=5.0),
    equity=st.floats(min_value=-1e5, max_value=1e7),
    gross=st.floats(min_value=0.0, max_value=1e7),
    net=finite,
    opening=st.floats(min_value=0.0, max_value=1e7),
    sod=st.floats(min_value=1.0, max_value=1e7),
    limits=st.tuples(*(st.floats(min_value=1.0, max_value=1e7) for _ in range(4))),
)
def test_the_compiled_gate_checks_match_the_interpreted_ones(
    compiled, before, signed, price, ref, factor, equity, gross, net, opening, sod, limits
):
    max_notional, max_qty, max_gross, max_net = limits
    qty = abs(signed)
    c = compiled
    assert c["reduces"](float(before), float(signed), float(qty)) == rm.reduces(before, signed, qty)
    low, high = rm.price_band(ref, factor)
    assert c["price_band"](ref, factor) == (low, high)
    assert c["price_sane"](price, low, high) == rm.price_sane(price, low, high)
    assert c["order_size_verdict"](float(qty), price, max_notional, max_qty) == (
        rm.order_size_verdict(qty, price, max_notional, max_qty)
    )
    assert c["opened_qty"](float(before), float(signed), float(qty)) == rm.opened_qty(
        before, signed, qty
    )
    assert c["leg_over"](gross, max_gross) == rm.leg_over(gross, max_gross)
    assert c["exposure_verdict"](gross, net, max_gross, max_net) == rm.exposure_verdict(
        gross, net, max_gross, max_net
    )
    power = rm.reg_t_buying_power(equity, 0.5, gross)
    assert c["reg_t_buying_power"](equity, 0.5, gross) == power
    args = (equity, gross, opening, power, sod, 1.5, 0.95)
    assert c["capital_verdict"](*args) == rm.capital_verdict(*args)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**31 - 1), fractional=st.booleans())
def test_the_compiled_per_bar_state_equals_the_interpreted_one(seed, fractional):
    """`per_bar_state` and `borrow_base` (numba helpers of every long run) compiled and as they are
    (short runs): the same bits."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    close = rng.uniform(1, 500, (n, 2))
    day = np.cumsum(rng.integers(1, 4, n))
    bars = np.sort(rng.choice(n, size=int(rng.integers(0, n + 1)), replace=False))
    shares = rng.integers(-500, 500, (len(bars), 2)) + (
        rng.random((len(bars), 2)) if fractional else 0
    )
    records = np.column_stack(
        [bars, rng.uniform(-1e5, 1e6, len(bars)), shares, rng.uniform(0, 100, len(bars))]
    )
    records = np.vstack([[-1.0, 1e5, 0.0, 0.0, 0.0], records])
    rates = rng.uniform(0, 0.3, 2)
    kind = np.float64 if fractional else np.int64
    outputs = []
    for fn in (fast_engine.borrow_base, jitted(fast_engine.borrow_base)):
        base = np.empty((n, 2))
        fn(close, day, base)
        outputs.append(base)
    assert np.array_equal(outputs[0], outputs[1])
    want = np.vstack([np.zeros((1, 2)), np.cumsum(close[:-1] * np.diff(day)[:, None], axis=0)])
    assert np.array_equal(outputs[0], want)  # the numpy prefix sums it replaced
    results = []
    for fn in (fast_engine.per_bar_state, jitted(fast_engine.per_bar_state)):
        out, q0, q1 = np.empty((n, 3)), np.empty(n, dtype=kind), np.empty(n, dtype=kind)
        fn(records, close, base, rates, 360.0, out, q0, q1)
        results.append((out, q0, q1))
    for a, b in zip(*results, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_the_compiled_loop_dates_each_fee_as_the_cost_model_does(compiled):
    """A bar's yyyymmdd from its day number, then the fee segment in force, against the cost
    model's own dated lookups, on every day from 1600 to 2400 (and a sample of models)."""
    days = np.arange(-135_000, 157_000, dtype=np.int64)
    want = days.astype("datetime64[D]")
    text = np.char.replace(np.datetime_as_string(want).astype(str), "-", "").astype(np.int64)
    yyyymmdd = numba.njit(fast_engine.yyyymmdd)
    assert all(yyyymmdd(int(d)) == k for d, k in zip(days[::37], text[::37], strict=True))
    assert [fast_engine.yyyymmdd(int(d)) for d in days[::911]] == text[::911].tolist()
    fee_rates = numba.njit(fast_engine._fee_rates)
    models = [
        tc.CostModel(),
        tc.CostModel(sec_fee_per_million=5.0),
        tc.CostModel(finra_taf_max=1.0),
        tc.CostModel(regulatory_fees="none"),
    ]
    for model in models:
        keys, rates = tc.fee_segments(model)
        for d, key in zip(days[::97], text[::97], strict=True):
            got = fee_rates(keys, rates, days, int(np.searchsorted(days, d)))
            want_rates = (tc._sec_rate(int(key), model), *tc._taf_rate(int(key), model))
            assert tuple(got) == want_rates


# --- Whole runs, compiled and interpreted ---------------------------------------------------------
@st.composite
def order_streams(draw, closes: pd.DataFrame):
    """A random run: a slice of two real price series, volumes, instruction weights and a
    configuration that sometimes caps fills, refuses baskets or halts on drawdown."""
    seed = draw(st.integers(min_value=0, max_value=2**31 - 1))
    rng = np.random.default_rng(seed)
    a, b = rng.choice(len(TICKERS), size=2, replace=False)
    n = int(rng.integers(40, 400))
    start = int(rng.integers(0, len(closes) - n))
    prices = closes.iloc[start : start + n, [a, b]]
    volume = None
    if draw(st.booleans()):
        volume = pd.DataFrame(
            rng.lognormal(12, 1.5, size=(n, 2)), index=prices.index, columns=prices.columns
        )
    per_usd = draw(st.booleans())
    states = rng.choice([1.0, -1.0, 0.0, np.nan], size=n, p=[0.08, 0.08, 0.06, 0.78])
    size = rng.uniform(1_000, 60_000, n) if per_usd else rng.uniform(0.02, 0.9, n)
    weights = pe.instructions_from_states(states, size)
    resize = rng.random(n) < 0.05  # a re-size of the held direction (the band decides)
    weights[resize] = np.nan_to_num(weights[resize], nan=0.0) * rng.uniform(0.5, 1.5)
    costs = draw(
        st.sampled_from(
            [
                tc.CostModel(),
                tc.CostModel.flat(1.0),
                tc.CostModel.zero(),
                dataclasses.replace(tc.CostModel.zero(), commission_bps=10.0),
                tc.CostModel(borrow_rate_annual=0.2, half_spread_bps=20.0, impact_coefficient=1.0),
            ]
        )
    )
    limits = rm.RiskLimits(
        max_leg_notional=draw(st.sampled_from([60_000.0, 25_000.0, 1e9])),
        max_gross_exposure=draw(st.sampled_from([120_000.0, 45_000.0, 1e9])),
        max_net_exposure=draw(st.sampled_from([25_000.0, 2_000.0, 1e9])),
        max_order_notional=draw(st.sampled_from([60_000.0, 20_000.0, 1e9])),
        max_leverage=draw(st.sampled_from([1.5, 0.5, 1e6])),
        daily_loss_limit_pct=draw(st.sampled_from([0.05, 0.005, 0.99])),
        max_drawdown_pct=draw(st.sampled_from([0.10, 0.02, 0.99])),
        price_band_factor=draw(st.sampled_from([3.0, 1.02])),
    )
    cfg = pe.TradingConfig(
        initial_capital=draw(st.sampled_from([100_000.0, 30_000.0, 1_000_000.0])),
        fill_delay_bars=draw(st.sampled_from([0, 1, 2])),
        rebalance_band=draw(st.sampled_from([0.0, 0.25])),
        execution=te.ExecutionConfig(
            costs=costs,
            participation_cap=draw(st.sampled_from([0.1, 0.002, 1.0])),
            remainder=draw(st.sampled_from(list(te.RemainderPolicy))),
            default_adv_usd=draw(st.sampled_from([50e6, 2e5])),
        ),
        limits=limits,
    )
    return prices, weights, cfg, volume, per_usd


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_order_streams_trade_identically_compiled_and_interpreted(closes, data):
    prices, weights, cfg, volume, per_usd = data.draw(order_streams(closes))
    kw = {"volume": volume, "weight_unit": "usd" if per_usd else "equity"}
    fast, slow = run_both(prices, weights, cfg, **kw)
    assert_same_run(fast, slow)
    # The compiled loop records no refusal itself: it hands the run back at the first one (or
    # earlier: a drawdown breach, a second remainder on a leg), and a run it finishes has none.
    handed_back = fast.compiled_bars < len(prices)
    if handed_back:
        at = prices.index[fast.compiled_bars]
        assert all(r.date >= at for r in fast.rejections)
        assert fast.halted_at is None or fast.halted_at >= at
    assert handed_back or not fast.rejections


def flip_stream(closes: pd.DataFrame, n: int = 300) -> tuple[pd.DataFrame, np.ndarray]:
    prices = closes[["AAPL", "MSFT"]].iloc[-n:]
    states = np.full(n, np.nan)
    states[10::20] = 1.0
    states[20::20] = -1.0
    return prices, pe.instructions_from_states(states, 0.3)


def test_a_plain_run_is_compiled_to_the_end(closes):
    prices, weights = flip_stream(closes)
    fast, slow = run_both(prices, weights, pe.TradingConfig())
    assert fast.compiled_bars == len(prices)
    assert len(fast.trades) > 20 and len(fast.round_trips) > 10
    assert_same_run(fast, slow)


def test_a_refused_basket_hands_the_run_to_the_interpreted_path_at_its_bar(closes):
    prices, weights = flip_stream(closes)
    cfg = pe.TradingConfig(limits=rm.RiskLimits(max_leg_notional=20_000.0))
    fast, slow = run_both(prices, weights, cfg)
    assert fast.rejections and fast.rejections[0].reason == "leg_notional"
    first = fast.rejections[0].date
    assert fast.compiled_bars == prices.index.get_loc(first)
    assert_same_run(fast, slow)


def test_carried_remainders_are_traded_compiled_as_interpreted(closes):
    """A participation cap that fills a fraction of each order: the rest is carried, bar after
    bar, through the gate (a decision replaces what is still carried)."""
    prices, weights = flip_stream(closes)
    ex = te.ExecutionConfig(
        remainder=te.RemainderPolicy.CARRY, participation_cap=0.005, default_adv_usd=1e6
    )
    fast, slow = run_both(prices, weights, pe.TradingConfig(execution=ex))
    carried = fast.trades[fast.trades["purpose"] == "carry"]
    assert len(carried) > 20 and (fast.trades["status"] == "partially_filled").any()
    assert fast.compiled_bars == len(prices)
    assert_same_run(fast, slow)


def test_a_drawdown_halt_is_decided_by_the_interpreted_path(closes):
    prices, weights = flip_stream(closes)
    cfg = pe.TradingConfig(limits=rm.RiskLimits(max_drawdown_pct=0.01))
    fast, slow = run_both(prices, weights, cfg)
    assert fast.halted_at is not None
    assert 0 < fast.compiled_bars <= prices.index.get_loc(fast.halted_at)
    assert (fast.trades["purpose"] == "liquidation").any()
    assert_same_run(fast, slow)


def test_an_order_the_cost_model_refuses_fails_the_same_way(closes):
    """Prices jumping 10 <-> 50 every bar: a daily volatility so high that spread + impact pass
    100 % of the price for an order of a whole day's volume."""
    prices, weights = flip_stream(closes, 60)
    prices = pd.DataFrame(
        np.where(np.arange(60)[:, None] % 2 == 0, 10.0, 50.0) * [1.0, 1.1],
        index=prices.index,
        columns=prices.columns,
    )
    ex = te.ExecutionConfig(participation_cap=1.0, default_adv_usd=1_000.0)
    cfg = pe.TradingConfig(execution=ex, limits=rm.RiskLimits(price_band_factor=6.0))
    errors = []
    for engine in ("compiled", "interpreted"):
        with pytest.raises(ValueError) as caught:
            bs.run_backtest(prices, weights, cfg, log_rejections=False, engine=engine)
        errors.append(str(caught.value))
    assert errors[0] == errors[1] and "far too large to model" in errors[0]


@pytest.mark.parametrize(
    "change",
    [
        {"sizing": pe.SizingConfig(fractional_shares=True)},
        {"execution": te.ExecutionConfig(slippage_std_bps=5.0)},
        {"execution": te.ExecutionConfig(recall_dates={"MSFT": ("2022-09-01",)})},
    ],
    ids=["fractional", "slippage", "recall"],
)
def test_what_the_compiled_loop_does_not_handle_runs_interpreted(closes, change):
    prices, weights = flip_stream(closes)
    cfg = dataclasses.replace(pe.TradingConfig(), **change)
    fast, slow = run_both(prices, weights, cfg)
    assert fast.compiled_bars == 0
    assert_same_run(fast, slow)


def test_an_unknown_engine_is_refused(closes):
    prices, weights = flip_stream(closes, 50)
    with pytest.raises(ConfigurationError, match="engine must be one of auto, compiled"):
        bs.run_backtest(prices, weights, engine="numba")


def test_auto_compiles_long_runs_only_and_numba_loads_only_then(tmp_path):
    """In a fresh process: a short run stays interpreted and never imports numba; a run with
    `COMPILE_FROM_EVENTS` instructions is compiled; after that, short runs are compiled too."""
    script = tmp_path / "auto.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            import numpy as np
            import pandas as pd
            import backtest_strategy as bs, fast_engine, pair_engine as pe

            def run(n):
                prices = pd.DataFrame(
                    {"A": 100 + np.sin(np.arange(n)), "B": 50 + np.cos(np.arange(n))},
                    index=pd.bdate_range("1990-01-01", periods=n),
                )
                states = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
                w = pe.instructions_from_states(states, 0.1)
                costs = pe.ExecutionConfig(costs=pe.ExecutionConfig().costs.zero())
                cfg = pe.TradingConfig(execution=costs)
                return bs.run_backtest(prices, w, cfg, log_rejections=False).compiled_bars

            short = run(300)
            print(short, "numba" in sys.modules)
            print(run(fast_engine.COMPILE_FROM_EVENTS + 10), run(300))
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).stdout.split("\n")
    assert out[0] == "0 False"
    assert out[1] == f"{fast_engine.COMPILE_FROM_EVENTS + 10} 300"


def test_the_compiled_trades_are_built_on_first_read_and_kept(closes):
    prices, weights = flip_stream(closes)
    result = bs.run_backtest(prices, weights, log_rejections=False, engine="compiled")
    assert callable(result.trade_rows) and callable(result.trip_rows)
    count, notional = result.fill_count, result.traded_notional()  # before the frame exists
    assert callable(result.trade_rows)
    trades = result.trades
    assert result.trades is trades and not callable(result.trade_rows)
    assert count == len(trades) and notional == float(trades["notional"].abs().sum())
    assert (result.fill_count, result.traded_notional()) == (count, notional)
    assert trades["client_order_id"].is_unique
    assert result.round_trips is result.round_trips
