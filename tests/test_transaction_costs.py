"""transaction_costs.py: non-negative monotonic costs, hand-checked numbers, dated fee tables."""

from __future__ import annotations

import datetime as dt
import enum
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import transaction_costs as tc
from error_handling import ConfigurationError
from pair_engine import TradingConfig
from tests.helpers import run

# --- Strategies -----------------------------------------------------------------------------------
money = st.floats(min_value=0.0, max_value=1e9, allow_nan=False, allow_infinity=False)
shares = st.integers(min_value=0, max_value=10_000_000)
prices = st.floats(min_value=0.01, max_value=5_000.0, allow_nan=False, allow_infinity=False)
vols = st.floats(min_value=0.0, max_value=0.2, allow_nan=False, allow_infinity=False)
advs = st.floats(min_value=1.0, max_value=1e9, allow_nan=False, allow_infinity=False)
days = st.floats(min_value=0.0, max_value=3_650.0, allow_nan=False, allow_infinity=False)
# From before the Exchange Act to after the last table row: every era of both fee tables.
trade_dates = st.dates(min_value=dt.date(1930, 1, 1), max_value=dt.date(2030, 12, 31))


def _rate(hi: float) -> st.SearchStrategy[float]:
    return st.floats(min_value=0.0, max_value=hi, allow_nan=False, allow_infinity=False)


cost_models = st.builds(
    tc.CostModel,
    commission_per_share=_rate(0.05),
    commission_bps=_rate(50.0),
    commission_min=_rate(20.0),
    commission_max_pct=st.one_of(st.floats(min_value=1e-4, max_value=0.05), st.just(math.inf)),
    half_spread_bps=_rate(100.0),
    impact_coefficient=_rate(2.0),
    regulatory_fees=st.sampled_from(list(tc.FeeSchedule)),
    sec_fee_per_million=st.one_of(st.none(), _rate(100.0)),
    finra_taf_per_share=st.one_of(st.none(), _rate(0.001)),
    finra_taf_max=st.one_of(st.none(), _rate(20.0)),
    borrow_rate_annual=_rate(1.0),
    borrow_rate_overrides=st.dictionaries(st.sampled_from(["GME", "AMC", "MSFT"]), _rate(1.0)),
    borrow_day_count=st.sampled_from([360, 365]),
)


def ordered_pair(strategy: st.SearchStrategy[float]) -> st.SearchStrategy[tuple[float, float]]:
    return st.tuples(strategy, strategy).map(lambda ab: (min(ab), max(ab)))


class Side(enum.StrEnum):
    BUY = "buy"
    SELL = "sell"


DEFAULT = tc.CostModel()


# --- Invariants: non-negative and non-decreasing in size ----------------------------------------
@settings(deadline=None)
@given(model=cost_models, q=ordered_pair(shares), price=prices)
def test_commission_is_non_negative_and_non_decreasing_in_quantity(model, q, price):
    small, large = tc.commission(q[0], price, model), tc.commission(q[1], price, model)
    assert 0.0 <= small <= large


@settings(deadline=None)
@given(model=cost_models, q=ordered_pair(shares), price=prices)
def test_spread_cost_is_non_negative_and_non_decreasing_in_quantity(model, q, price):
    assert 0.0 <= tc.spread_cost(q[0], price, model) <= tc.spread_cost(q[1], price, model)


@settings(deadline=None)
@given(model=cost_models, q=ordered_pair(shares), price=prices, vol=vols, adv=advs)
def test_market_impact_is_non_negative_and_non_decreasing_in_quantity(model, q, price, vol, adv):
    assert (
        0.0
        <= tc.impact_fraction(q[0], vol, adv, model)
        <= tc.impact_fraction(q[1], vol, adv, model)
    )
    small = tc.market_impact_cost(q[0], price, vol, adv, model)
    assert 0.0 <= small <= tc.market_impact_cost(q[1], price, vol, adv, model)


@settings(deadline=None)
@given(model=cost_models, notional=ordered_pair(money), day=trade_dates)
def test_sec_fee_is_non_negative_and_non_decreasing_in_notional(model, notional, day):
    assert 0.0 <= tc.sec_fee(notional[0], day, model) <= tc.sec_fee(notional[1], day, model)


@settings(deadline=None)
@given(model=cost_models, q=ordered_pair(shares), day=trade_dates)
def test_finra_taf_is_non_negative_and_non_decreasing_in_shares(model, q, day):
    assert 0.0 <= tc.finra_taf(q[0], day, model) <= tc.finra_taf(q[1], day, model)


@settings(deadline=None)
@given(
    model=cost_models,
    notional=ordered_pair(money),
    held=ordered_pair(days),
    symbol=st.sampled_from(["GME", "AAPL"]),
)
def test_borrow_fee_is_non_negative_and_non_decreasing_in_notional_and_days(
    model, notional, held, symbol
):
    fee = tc.borrow_fee(notional[0], held[0], symbol, model)
    assert 0.0 <= fee <= tc.borrow_fee(notional[1], held[0], symbol, model)
    assert fee <= tc.borrow_fee(notional[0], held[1], symbol, model)


# --- Vectorized = element-wise scalar -------------------------------------------------------------
@settings(deadline=None)
@given(
    model=cost_models,
    rows=st.lists(st.tuples(shares, prices, vols, advs, money, days), min_size=1, max_size=20),
    day=trade_dates,
)
def test_vectorized_results_equal_elementwise_scalar_results(model, rows, day):
    q, p, vol, adv, notional, held = (np.array(col, dtype=float) for col in zip(*rows, strict=True))
    cases = [
        (lambda *a: tc.commission(*a, model), (q, p)),
        (lambda *a: tc.spread_cost(*a, model), (q, p)),
        (lambda *a: tc.impact_fraction(*a, model), (q, vol, adv)),
        (lambda *a: tc.market_impact_cost(*a, model), (q, p, vol, adv)),
        (lambda n: tc.sec_fee(n, day, model), (notional,)),
        (lambda n: tc.finra_taf(n, day, model), (q,)),
        (lambda n, d: tc.borrow_fee(n, d, "GME", model), (notional, held)),
    ]
    for fn, args in cases:
        vector = fn(*args)
        assert isinstance(vector, np.ndarray) and vector.shape == q.shape
        scalar = [fn(*(float(a[i]) for a in args)) for i in range(len(q))]
        assert all(type(s) is float for s in scalar)
        np.testing.assert_array_equal(vector, np.array(scalar))


def test_scalar_input_returns_a_float_and_array_input_an_array():
    assert type(tc.commission(100, 50.0, DEFAULT)) is float
    assert type(tc.commission(np.int64(100), np.float64(50.0), DEFAULT)) is float
    assert type(tc.sec_fee(np.array(1e4), "2024-06-03", DEFAULT)) is float
    out = tc.commission(np.array([[0, 100], [1000, 10]]), 50.0, DEFAULT)
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, [[0.0, 1.0], [5.0, 1.0]])


# --- Commission by hand ---------------------------------------------------------------------------
def test_commission_is_zero_for_zero_shares():
    assert tc.commission(0, 50.0, DEFAULT) == 0.0


def test_commission_minimum_applies_to_small_orders():
    assert tc.commission(100, 50.0, DEFAULT) == 1.00  # 100 x 0.005 = 0.50 -> minimum 1.00


def test_commission_is_per_share_above_the_minimum():
    assert tc.commission(1_000, 50.0, DEFAULT) == 5.00


def test_commission_cap_of_one_percent_applies_after_the_minimum():
    # 10 shares at $5: 0.05 -> minimum 1.00 -> capped at 1 % of $50 = 0.50
    assert tc.commission(10, 5.0, DEFAULT) == 0.50


def test_commission_cap_binds_large_cheap_orders():
    # 100,000 shares at $0.20: 500.00 per share, capped at 1 % of $20,000 = 200.00
    assert tc.commission(100_000, 0.20, DEFAULT) == 200.00


def test_commission_bps_adds_to_per_share_and_is_rounded_to_the_cent():
    model = tc.CostModel(commission_per_share=0.0035, commission_bps=1.0, commission_min=0.0)
    # 1,234 x 0.0035 = 4.319 plus 1 bp of $61,700 = 6.17 -> 10.489 -> 10.49
    assert tc.commission(1_234, 50.0, model) == 10.49


def test_commission_ignores_the_sign_of_quantity():
    assert tc.commission(-1_000, 50.0, DEFAULT) == tc.commission(1_000, 50.0, DEFAULT)


@pytest.mark.parametrize(("qty", "price"), [(1, 10.0), (1_000_000, 500.0), (3, 0.01)])
def test_flat_model_charges_exactly_the_flat_commission(qty, price):
    model = tc.CostModel.flat(4.95)
    costs = tc.trade_costs(
        "sell", qty, price, daily_vol=0.02, adv_shares=1e6, trade_date="2024-06-03", model=model
    )
    assert costs == tc.TradeCosts(commission=4.95)
    assert costs.total == 4.95
    assert tc.fill_price("buy", qty, price, daily_vol=0.02, adv_shares=1e6, model=model) == price
    assert tc.borrow_fee(1e6, 30, "GME", model) == 0.0


def test_zero_model_costs_nothing():
    model = tc.CostModel.zero()
    costs = tc.trade_costs(
        "sell", 5_000, 99.0, daily_vol=0.03, adv_shares=1e5, trade_date="2024-06-03", model=model
    )
    assert costs.total == 0.0
    assert tc.fill_price("sell", 5_000, 99.0, daily_vol=0.03, adv_shares=1e5, model=model) == 99.0


# --- Spread and impact ----------------------------------------------------------------------------
def test_spread_cost_by_hand():
    assert tc.spread_cost(1_000, 100.0, DEFAULT) == pytest.approx(20.0)  # 2 bps of $100,000


def test_impact_follows_the_square_root_law():
    # 0.5 x 0.02 x sqrt(10,000 / 1,000,000) = 0.001 of the price
    assert tc.impact_fraction(10_000, 0.02, 1e6, DEFAULT) == pytest.approx(0.001)
    # Four times the shares, twice the fraction.
    assert tc.impact_fraction(40_000, 0.02, 1e6, DEFAULT) == pytest.approx(0.002)
    assert tc.market_impact_cost(10_000, 50.0, 0.02, 1e6, DEFAULT) == pytest.approx(500.0)


@pytest.mark.parametrize("adv", [0.0, -5.0, float("nan")])
def test_impact_refuses_a_non_positive_average_daily_volume(adv):
    with pytest.raises(ConfigurationError, match="average daily volume"):
        tc.impact_fraction(100, 0.02, adv, DEFAULT)
    with pytest.raises(ConfigurationError, match="average daily volume"):
        tc.impact_fraction(np.array([100, 100]), 0.02, np.array([1e6, adv]), DEFAULT)


def test_impact_refuses_a_negative_or_missing_volatility():
    with pytest.raises(ConfigurationError, match="daily volatility"):
        tc.impact_fraction(100, float("nan"), 1e6, DEFAULT)
    with pytest.raises(ConfigurationError, match="daily volatility"):
        tc.impact_fraction(np.array([100]), np.array([-0.01]), 1e6, DEFAULT)


# --- SEC fee and FINRA TAF ------------------------------------------------------------------------
def _costs(side: str, qty: int, price: float, day: object = "2024-06-03") -> tc.TradeCosts:
    return tc.trade_costs(
        side, qty, price, daily_vol=0.02, adv_shares=1e7, trade_date=day, model=DEFAULT
    )


def test_sec_fee_and_taf_are_charged_on_sells_only():
    buy, sell = _costs("buy", 1_000, 100.0), _costs("sell", 1_000, 100.0)
    assert buy.sec_fee == 0.0 and buy.finra_taf == 0.0
    assert sell.sec_fee == 2.78  # $100,000 x $27.80 per million
    assert sell.finra_taf == 0.17  # 1,000 x $0.000166 = 0.166
    assert sell.commission == buy.commission and sell.spread == buy.spread


def test_sec_fee_is_rounded_up_to_the_cent():
    assert tc.sec_fee(10_000, "2024-06-03", DEFAULT) == 0.28  # 0.278
    assert tc.sec_fee(1.0, "2024-06-03", DEFAULT) == 0.01  # 0.0000278
    assert tc.sec_fee(12_345, "2023-03-01", DEFAULT) == 0.10  # 0.09876 at $8.00
    assert tc.sec_fee(0.0, "2024-06-03", DEFAULT) == 0.0


def test_sec_fee_on_a_whole_cent_is_not_bumped_by_float_noise():
    assert tc.sec_fee(1_000_000, "2024-06-03", DEFAULT) == 27.80
    assert tc.sec_fee(100_000, "2024-06-03", DEFAULT) == 2.78


def test_sec_fee_is_zero_while_the_rate_is_zero():
    assert tc.sec_fee(1e9, "2025-06-02", DEFAULT) == 0.0


def test_finra_taf_is_capped_per_trade():
    assert tc.finra_taf(100_000, "2024-06-03", DEFAULT) == 8.30  # 16.60 uncapped
    assert tc.finra_taf(100_000, "2023-06-01", DEFAULT) == 7.27


def test_finra_taf_is_rounded_to_the_nearest_cent():
    assert tc.finra_taf(1_000, "2024-06-03", DEFAULT) == 0.17  # 0.166
    assert tc.finra_taf(100, "2024-06-03", DEFAULT) == 0.02  # 0.0166
    assert tc.finra_taf(0, "2024-06-03", DEFAULT) == 0.0


@pytest.mark.parametrize(
    ("day_before", "day_of", "old", "new"),
    [
        ("2018-05-21", "2018-05-22", 23.10, 13.00),
        ("2019-04-15", "2019-04-16", 13.00, 20.70),
        ("2021-02-24", "2021-02-25", 22.10, 5.10),
        ("2023-02-26", "2023-02-27", 22.90, 8.00),
        ("2024-05-21", "2024-05-22", 8.00, 27.80),
        ("2025-05-13", "2025-05-14", 27.80, 0.00),
    ],
)
def test_sec_fee_rate_changes_on_the_effective_date(day_before, day_of, old, new):
    assert tc.sec_fee_rate(day_before) == old
    assert tc.sec_fee_rate(day_of) == new
    assert tc.sec_fee(1_000_000, day_before, DEFAULT) == old
    assert tc.sec_fee(1_000_000, day_of, DEFAULT) == new


def test_finra_taf_rate_changes_on_the_effective_date():
    assert tc.finra_taf_rate("2023-12-31") == (0.000145, 7.27)
    assert tc.finra_taf_rate("2024-01-01") == (0.000166, 8.30)
    assert tc.finra_taf_rate("2021-12-31") == (0.000119, 5.95)
    assert tc.finra_taf_rate("2022-01-01") == (0.000130, 6.49)


@pytest.mark.parametrize(
    ("day_before", "day_of", "old", "new"),
    [
        ("2003-03-21", "2003-03-22", 30.10, 25.20),
        ("2003-03-31", "2003-04-01", 25.20, 46.80),
        ("2004-02-21", "2004-02-22", 46.80, 39.00),
        ("2004-03-31", "2004-04-01", 39.00, 23.40),
        ("2008-03-31", "2008-04-01", 11.00, 5.60),
        ("2010-03-31", "2010-04-01", 12.70, 16.90),
        ("2011-01-20", "2011-01-21", 16.90, 19.20),
        ("2014-03-17", "2014-03-18", 17.40, 22.10),
    ],
)
def test_historical_sec_fee_rates_change_on_their_published_dates(day_before, day_of, old, new):
    # Each pair is from an SEC Fee Rate Advisory, NASD Member Alert or FINRA Information Notice.
    assert tc.sec_fee_rate(day_before) == old
    assert tc.sec_fee_rate(day_of) == new
    assert tc.sec_fee(1_000_000, day_of, DEFAULT) == new


def test_sec_fee_before_2001_12_28_is_one_three_hundredth_of_one_percent():
    assert tc.sec_fee_rate("1990-01-02") == pytest.approx(100 / 3)
    assert tc.sec_fee_rate("2001-12-27") == pytest.approx(100 / 3)
    assert tc.sec_fee_rate("2001-12-28") == 15.00
    # One cent per $300 sold.
    assert tc.sec_fee(30_000, "1996-05-01", DEFAULT) == 1.00


def test_there_is_no_sec_fee_before_the_exchange_act():
    assert tc.sec_fee_rate("1933-12-29") == 0.0
    assert tc.sec_fee(1e9, "1929-10-29", DEFAULT) == 0.0


def test_a_sell_in_2000_pays_the_2000_rate_not_the_2016_rate():
    costs = _costs("sell", 1_000, 50.0, day="2000-06-01")
    # $50,000 x $33.333... per million = $1.6667, rounded up to $1.67 (at $21.80 it would be $1.09)
    assert costs.sec_fee == 1.67
    assert costs.sec_fee != tc.sec_fee(50_000, "2016-06-01", DEFAULT) == 1.09


def test_finra_taf_is_zero_before_it_began():
    assert tc.finra_taf_rate("1995-06-01") == (0.0, 0.0)
    assert tc.finra_taf_rate("2002-09-30") == (0.0, 0.0)
    assert tc.finra_taf(10_000, "1995-06-01", DEFAULT) == 0.0
    assert _costs("sell", 10_000, 50.0, day="1999-03-01").finra_taf == 0.0
    assert tc.finra_taf_rate("2002-10-01") == (0.0001, 10.00)
    assert tc.finra_taf(10_000, "2002-10-01", DEFAULT) == 1.00


@pytest.mark.parametrize(
    ("day_before", "day_of", "old", "new"),
    [
        ("2004-10-31", "2004-11-01", (0.0001, 10.00), (0.000075, 3.75)),
        ("2011-06-30", "2011-07-01", (0.000075, 3.75), (0.000090, 4.50)),
        ("2012-02-29", "2012-03-01", (0.000090, 4.50), (0.000095, 4.75)),
    ],
)
def test_historical_finra_taf_rates_change_on_their_published_dates(day_before, day_of, old, new):
    assert tc.finra_taf_rate(day_before) == old
    assert tc.finra_taf_rate(day_of) == new


@pytest.mark.parametrize(
    "when",
    [
        "2024-05-22",
        "2024-05-22T15:59:00-04:00",
        dt.date(2024, 5, 22),
        dt.datetime(2024, 5, 22, 16, 0),
        np.datetime64("2024-05-22T13:30"),
        pd.Timestamp("2024-05-22"),
        pd.Timestamp("2024-05-22 16:00", tz="America/New_York"),
    ],
)
def test_every_kind_of_trade_date_on_the_effective_date_finds_the_new_rate(when):
    assert tc.sec_fee_rate(when) == 27.80


@pytest.mark.parametrize(
    "when",
    [
        "2024-05-21",
        "2024-05-21T23:59:59",
        dt.date(2024, 5, 21),
        dt.datetime(2024, 5, 21, 23, 59),
        np.datetime64("2024-05-21T23:59"),
        pd.Timestamp("2024-05-21 15:59", tz="America/New_York"),
    ],
)
def test_every_kind_of_trade_date_on_the_day_before_finds_the_old_rate(when):
    assert tc.sec_fee_rate(when) == 8.00


def test_a_timestamp_counts_by_its_own_calendar_date():
    # 23:30 in New York on May 21 is already May 22 in UTC: the timestamp's own date decides.
    late = pd.Timestamp("2024-05-21 23:30", tz="America/New_York")
    assert tc.sec_fee_rate(late) == 8.00
    assert tc.sec_fee_rate(late.tz_convert("UTC")) == 27.80


@pytest.mark.parametrize("bad", ["22/05/2024", "", "2024-13-45"])
def test_an_unreadable_trade_date_is_refused(bad):
    with pytest.raises(ValueError, match="ISO date"):
        tc.sec_fee_rate(bad)


def test_a_missing_trade_date_is_refused():
    with pytest.raises(ValueError, match="NaT"):
        tc.sec_fee_rate(pd.NaT)
    with pytest.raises(ValueError, match="NaT"):
        tc.sec_fee_rate(np.datetime64("NaT"))
    with pytest.raises(TypeError, match="trade date"):
        tc.sec_fee_rate(20240522)


def test_model_rates_override_the_dated_tables():
    model = tc.CostModel(sec_fee_per_million=10.0, finra_taf_per_share=0.001)
    assert tc.sec_fee(1_000_000, "2025-06-02", model) == 10.0  # table says 0.00
    # Per-share rate from the model, cap still from the 2024 table.
    assert tc.finra_taf(1_000, "2024-06-03", model) == 1.0
    assert tc.finra_taf(100_000, "2024-06-03", model) == 8.30
    assert tc.finra_taf(100_000, "2024-06-03", tc.CostModel(finra_taf_max=1.0)) == 1.0


def test_fee_tables_are_sorted_non_negative_and_start_with_no_fee():
    for table in (tc.SEC_FEE_RATES, tc.FINRA_TAF_RATES):
        dates = [dt.date.fromisoformat(d) for d, _ in table]
        assert dates == sorted(dates) and len(set(dates)) == len(dates)
        assert dates[0] == dt.date.min and dates[-1] >= dt.date(2026, 1, 1)
    assert tc.SEC_FEE_RATES[0][1] == 0.0 and tc.FINRA_TAF_RATES[0][1] == (0.0, 0.0)
    assert all(rate >= 0 for _, rate in tc.SEC_FEE_RATES)
    assert all(rate > 0 and cap > 0 for _, (rate, cap) in tc.FINRA_TAF_RATES[1:])
    assert tc.sec_fee_rate(dt.date.min) == 0.0 and tc.finra_taf_rate(dt.date.min) == (0.0, 0.0)


# --- The fee switch -------------------------------------------------------------------------------
NO_FEES = tc.CostModel(regulatory_fees=tc.FeeSchedule.NONE)


def test_no_fee_schedule_zeroes_sec_fee_and_taf_but_not_commission_spread_or_impact():
    args = {"daily_vol": 0.02, "adv_shares": 1e6, "trade_date": "2024-06-03"}
    with_fees = tc.trade_costs("sell", 1_000, 100.0, model=DEFAULT, **args)
    without = tc.trade_costs("sell", 1_000, 100.0, model=NO_FEES, **args)
    assert with_fees.sec_fee == 2.78 and with_fees.finra_taf == 0.17
    assert without.sec_fee == 0.0 and without.finra_taf == 0.0
    assert without.commission == with_fees.commission == 5.00
    assert without.spread == with_fees.spread > 0 and without.impact == with_fees.impact > 0
    _, filled = tc.order_fill("sell", 1_000, 100.0, model=NO_FEES, **args)
    assert filled == without


def test_no_fee_schedule_wins_over_explicit_fee_overrides():
    model = tc.CostModel(
        regulatory_fees=tc.FeeSchedule.NONE,
        sec_fee_per_million=27.80,
        finra_taf_per_share=0.000166,
        finra_taf_max=8.30,
    )
    assert tc.sec_fee(1e6, "2024-06-03", model) == 0.0
    assert tc.finra_taf(1_000, "2024-06-03", model) == 0.0
    np.testing.assert_array_equal(tc.sec_fee(np.array([1e6, 2e6]), "2024-06-03", model), [0, 0])
    np.testing.assert_array_equal(tc.finra_taf(np.array([10, 1e6]), "2024-06-03", model), [0, 0])


def test_fee_schedule_is_accepted_as_its_string_value():
    assert tc.CostModel(regulatory_fees="none").regulatory_fees is tc.FeeSchedule.NONE
    assert tc.CostModel().regulatory_fees is tc.FeeSchedule.DEFAULT


def test_flat_and_zero_models_use_no_fee_schedule():
    assert tc.CostModel.flat(4.95).regulatory_fees is tc.FeeSchedule.NONE
    assert tc.CostModel.zero().regulatory_fees is tc.FeeSchedule.NONE


def test_trading_config_builds_the_no_fee_schedule_from_a_string():
    config = TradingConfig.with_values(TradingConfig(), {"execution.costs.regulatory_fees": "none"})
    assert config.execution.costs.regulatory_fees is tc.FeeSchedule.NONE
    assert config.execution.costs.commission_per_share == DEFAULT.commission_per_share


def test_toml_config_turns_the_regulatory_fees_off(tmp_path):
    path = tmp_path / "costs.toml"
    path.write_text('[execution.costs]\nregulatory_fees = "none"\n', encoding="utf-8")
    assert TradingConfig.from_toml(path).execution.costs.regulatory_fees is tc.FeeSchedule.NONE


def test_toml_config_refuses_an_unknown_fee_schedule(tmp_path):
    path = tmp_path / "costs.toml"
    path.write_text('[execution.costs]\nregulatory_fees = "off"\n', encoding="utf-8")
    with pytest.raises(ConfigurationError, match="default, none"):
        TradingConfig.from_toml(path)


def test_backtest_help_lists_the_fee_switch(tmp_path):
    proc = run("main.py", "backtest", "--help", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "--fees {default,none}" in proc.stdout


# --- Fee assumptions for the report ---------------------------------------------------------------
def test_fee_assumptions_name_the_rates_in_force_over_a_long_run():
    lines = tc.fee_assumptions(DEFAULT, "1990-01-02", "2022-12-28")
    sec, taf, note = lines
    assert sec.startswith("SEC Section 31 fee: $5.10 .. $46.80 per $1M sold (dated table")
    assert "1934-06-06 .. 2022-05-14" in sec
    assert taf.startswith("FINRA TAF: none before 2002-10-01, then $0.000075 .. $0.00013 per share")
    assert "max $3.75 .. $10.00 per trade" in taf
    assert "split-adjusted" in note and "cap" in note
    assert all(len(line) <= 110 for line in lines)


def test_fee_assumptions_over_2018_to_2022():
    sec, taf, _ = tc.fee_assumptions(DEFAULT, dt.date(2018, 1, 2), pd.Timestamp("2022-12-30"))
    assert sec == (
        "SEC Section 31 fee: $5.10 .. $23.10 per $1M sold (dated table, 6 rates, "
        "2017-07-04 .. 2022-05-14)"
    )
    assert taf == (
        "FINRA TAF: $0.000119 .. $0.00013 per share sold, max $5.95 .. $6.49 per trade "
        "(dated table, 2 rates)"
    )


def test_fee_assumptions_before_the_taf_say_none_and_skip_the_share_note():
    lines = tc.fee_assumptions(DEFAULT, "1995-01-03", "1999-12-31")
    assert lines == [
        "SEC Section 31 fee: $33.33 per $1M sold (dated table, 1934-06-06 rate)",
        "FINRA TAF: none (it began 2002-10-01)",
    ]


def test_fee_assumptions_say_off_under_the_no_fee_schedule():
    for model in (NO_FEES, tc.CostModel.flat(1.0)):
        assert tc.fee_assumptions(model, "1990-01-02", "2022-12-28") == [
            "SEC Section 31 fee and FINRA TAF: off (--fees none)"
        ]


def test_fee_assumptions_name_overrides():
    model = tc.CostModel(sec_fee_per_million=10.0, finra_taf_per_share=0.0002, finra_taf_max=1.0)
    sec, taf, _ = tc.fee_assumptions(model, "2010-01-04", "2012-12-31")
    assert sec == "SEC Section 31 fee: $10.00 per $1M sold on every date (override)"
    assert taf == "FINRA TAF: $0.0002 per share sold, max $1.00 per trade on every date (override)"
    partial = tc.fee_assumptions(
        tc.CostModel(finra_taf_per_share=0.0002), "2000-01-03", "2003-01-02"
    )
    assert partial[1] == (
        "FINRA TAF: $0.0002 per share sold (override), max $10.00 per trade "
        "(dated table, 0 before 2002-10-01)"
    )


def test_fee_assumptions_refuse_a_reversed_range():
    with pytest.raises(ValueError, match="start <= end"):
        tc.fee_assumptions(DEFAULT, "2022-01-03", "2021-01-04")


# --- Borrow ---------------------------------------------------------------------------------------
def test_borrow_override_applies_to_its_symbol_only():
    model = tc.CostModel(borrow_rate_overrides={"gme": 0.25})
    assert tc.borrow_rate("GME", model) == 0.25
    assert tc.borrow_rate("MSFT", model) == 0.003
    assert tc.borrow_fee(36_000, 1, "GME", model) == pytest.approx(25.0)  # 36,000 x 0.25 / 360
    assert tc.borrow_fee(36_000, 1, "MSFT", model) == pytest.approx(0.30)


def test_one_year_of_daily_accrual_at_actual_360():
    days_held = np.diff(pd.date_range("2023-01-01", "2024-01-01", freq="D").to_numpy())
    days_held = days_held / np.timedelta64(1, "D")
    assert len(days_held) == 365
    fees = tc.borrow_fee(100_000.0, days_held, "MSFT", DEFAULT)
    assert fees.sum() == pytest.approx(100_000 * 0.003 * 365 / 360, rel=1e-12)


def test_weekend_gaps_accrue_calendar_days():
    bars = pd.bdate_range("2023-01-02", "2024-01-02")  # trading days: a Monday bar covers 3 days
    days_held = np.diff(bars.to_numpy()) / np.timedelta64(1, "D")
    fees = tc.borrow_fee(-100_000.0, days_held, "MSFT", DEFAULT)
    assert fees.sum() == pytest.approx(100_000 * 0.003 * 365 / 360, rel=1e-12)


def test_borrow_fee_at_actual_365():
    model = tc.CostModel(borrow_rate_annual=0.01, borrow_day_count=365)
    assert tc.borrow_fee(36_500, 1, "MSFT", model) == pytest.approx(1.0)  # 36,500 x 0.01 / 365


def test_borrow_fee_refuses_negative_days():
    with pytest.raises(ValueError, match="days held"):
        tc.borrow_fee(1_000, -1, "MSFT", DEFAULT)
    with pytest.raises(ValueError, match="days held"):
        tc.borrow_fee(np.array([1_000, 1_000]), np.array([1, -1]), "MSFT", DEFAULT)


def test_model_keeps_its_own_copy_of_the_overrides():
    overrides = {"GME": 0.25}
    model = tc.CostModel(borrow_rate_overrides=overrides)
    overrides["GME"] = 0.0
    assert tc.borrow_rate("GME", model) == 0.25


# --- One order: trade_costs and fill_price --------------------------------------------------------
@settings(deadline=None)
@given(
    model=cost_models,
    side=st.sampled_from(["buy", "sell", Side.BUY, Side.SELL]),
    qty=st.integers(min_value=0, max_value=1_000_000),
    price=prices,
    vol=st.floats(min_value=0.0, max_value=0.1),
    adv=st.floats(min_value=1e5, max_value=1e9),
    day=trade_dates,
)
def test_fill_price_moves_by_exactly_the_spread_and_impact_costs(
    model, side, qty, price, vol, adv, day
):
    costs = tc.trade_costs(
        side, qty, price, daily_vol=vol, adv_shares=adv, trade_date=day, model=model
    )
    fill = tc.fill_price(side, qty, price, daily_vol=vol, adv_shares=adv, model=model)
    # Up to float rounding of the fill price itself (a few ulps of the notional).
    rounding = 1e-14 * qty * price
    assert qty * abs(fill - price) == pytest.approx(
        costs.spread + costs.impact, rel=1e-9, abs=rounding
    )
    if side == "buy":
        assert fill >= price
    else:
        assert fill <= price
    # trade_costs is the element-wise functions put together.
    sell = side == "sell"
    assert costs == tc.TradeCosts(
        commission=tc.commission(qty, price, model),
        spread=tc.spread_cost(qty, price, model),
        impact=tc.market_impact_cost(qty, price, vol, adv, model),
        sec_fee=tc.sec_fee(qty * price, day, model) if sell else 0.0,
        finra_taf=tc.finra_taf(qty, day, model) if sell else 0.0,
    )


def test_buys_fill_above_and_sells_below_the_price():
    args = {"daily_vol": 0.02, "adv_shares": 1e6, "model": DEFAULT}
    # s = 2 bps + 0.5 x 0.02 x sqrt(10,000 / 1e6) = 0.0002 + 0.001
    assert tc.fill_price("buy", 10_000, 100.0, **args) == pytest.approx(100.12)
    assert tc.fill_price("sell", 10_000, 100.0, **args) == pytest.approx(99.88)
    assert tc.fill_price(Side.SELL, 10_000, 100.0, **args) == pytest.approx(99.88)


def test_an_empty_order_costs_nothing_and_fills_at_the_price():
    costs = tc.trade_costs(
        "sell", 0, 100.0, daily_vol=0.02, adv_shares=1e6, trade_date="2024-06-03", model=DEFAULT
    )
    assert costs == tc.TradeCosts() and costs.total == 0.0
    assert tc.fill_price("buy", 0, 100.0, daily_vol=0.02, adv_shares=1e6, model=DEFAULT) == 100.0


def test_trade_costs_split_into_explicit_and_implicit():
    costs = tc.TradeCosts(commission=1.0, spread=2.0, impact=3.0, sec_fee=0.28, finra_taf=0.17)
    assert costs.explicit == pytest.approx(1.45)
    assert costs.total == pytest.approx(6.45)


def test_an_unknown_side_is_refused():
    with pytest.raises(ValueError, match="'buy' or 'sell'"):
        _costs("hold", 100, 10.0)
    with pytest.raises(ValueError, match="'buy' or 'sell'"):
        tc.fill_price("short", 100, 10.0, daily_vol=0.02, adv_shares=1e6, model=DEFAULT)


def test_a_negative_order_quantity_is_refused():
    with pytest.raises(ValueError, match="quantity"):
        _costs("buy", -100, 10.0)


def test_an_order_too_large_to_model_is_refused():
    # 0.5 x 0.2 x sqrt(1e8 / 1e4) = 10 times the price
    with pytest.raises(ValueError, match="too large"):
        tc.fill_price("sell", 100_000_000, 10.0, daily_vol=0.2, adv_shares=1e4, model=DEFAULT)


# --- Bad settings ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("commission_per_share", -0.005),
        ("commission_bps", float("nan")),
        ("commission_min", -1.0),
        ("commission_max_pct", 0.0),
        ("commission_max_pct", -0.01),
        ("half_spread_bps", -2.0),
        ("impact_coefficient", float("inf")),
        ("sec_fee_per_million", -27.8),
        ("finra_taf_per_share", -0.000166),
        ("finra_taf_max", float("nan")),
        ("borrow_rate_annual", -0.003),
        ("borrow_day_count", 364),
        ("half_spread_bps", "2"),
        ("regulatory_fees", "off"),
    ],
)
def test_bad_cost_model_values_are_refused_naming_the_field(field, value):
    with pytest.raises(ConfigurationError, match=field) as info:
        tc.CostModel(**{field: value})
    assert "invalid cost model" in str(info.value) and repr(value) in str(info.value)


def test_bad_borrow_override_is_refused_naming_the_symbol():
    with pytest.raises(ConfigurationError, match="GME"):
        tc.CostModel(borrow_rate_overrides={"GME": -0.1})


def test_every_bad_value_is_reported_in_one_message():
    with pytest.raises(ConfigurationError) as info:
        tc.CostModel(commission_min=-1.0, half_spread_bps=-2.0, borrow_day_count=30)
    message = str(info.value)
    assert "commission_min" in message and "half_spread_bps" in message
    assert "borrow_day_count" in message


def test_flat_commission_must_be_non_negative():
    with pytest.raises(ConfigurationError, match="commission_min"):
        tc.CostModel.flat(-1.0)


@given(
    side=st.sampled_from(["buy", "sell"]),
    qty=st.integers(min_value=0, max_value=200_000),
    price=st.floats(min_value=0.5, max_value=5_000),
    vol=st.floats(min_value=0.0, max_value=0.1),
    adv=st.floats(min_value=1e5, max_value=1e9),
    day=st.dates(min_value=dt.date(2015, 1, 1), max_value=dt.date(2026, 12, 31)),
)
def test_order_fill_equals_fill_price_and_trade_costs(side, qty, price, vol, adv, day):
    model = tc.CostModel()
    got_price, got_costs = tc.order_fill(
        side, qty, price, daily_vol=vol, adv_shares=adv, trade_date=day, model=model
    )
    assert got_price == tc.fill_price(side, qty, price, daily_vol=vol, adv_shares=adv, model=model)
    assert got_costs == tc.trade_costs(
        side, qty, price, daily_vol=vol, adv_shares=adv, trade_date=day, model=model
    )
