"""trading_execution.py: the risk-gate type check, fill prices and cash, participation cap, forced
closes, seeded slippage, client order ids and the validation of orders and settings."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import trading_execution as te
import transaction_costs as tc
from error_handling import ConfigurationError

BAR_TIME = pd.Timestamp("2024-06-03 16:00", tz="America/New_York")

#: Fixed regulatory rates, so the expected fees below are checkable by hand.
COSTS = tc.CostModel(
    commission_per_share=0.005,
    commission_min=1.0,
    commission_max_pct=0.01,
    half_spread_bps=2.0,
    impact_coefficient=0.5,
    sec_fee_per_million=27.80,
    finra_taf_per_share=0.000166,
    finra_taf_max=8.30,
)

PRICE = 100.0
DAILY_VOL = 0.02
ADV = 1_000_000.0


def quote(price: float = PRICE, adv_shares: float = ADV) -> te.BarQuote:
    return te.BarQuote(price=price, daily_vol=DAILY_VOL, adv_shares=adv_shares, time=BAR_TIME)


def order(
    side: te.Side, qty: int, purpose: te.Purpose = te.Purpose.ENTRY, symbol: str = "AAPL"
) -> te.Order:
    return te.Order(
        symbol=symbol,
        side=side,
        qty=qty,
        client_order_id=te.client_order_id("test-run", BAR_TIME, symbol, purpose, side, qty),
        purpose=purpose,
    )


def basket(*orders: te.Order) -> te.ApprovedBasket:
    return te.ApprovedBasket(orders=tuple(orders), checked_at=BAR_TIME)


def fill_one(
    o: te.Order, config: te.ExecutionConfig | None = None, q: te.BarQuote | None = None
) -> te.Fill:
    executor = te.OrderExecutor(config or te.ExecutionConfig(costs=COSTS))
    (fill,) = executor.execute(basket(o), {o.symbol: q or quote()})
    return fill


def cost_fraction(qty: int, adv_shares: float = ADV) -> float:
    """half_spread_bps / 1e4 + Y × σ × sqrt(Q / ADV), from the CostModel fields."""
    return COSTS.half_spread_bps / 1e4 + COSTS.impact_coefficient * DAILY_VOL * math.sqrt(
        qty / adv_shares
    )


# --- The risk gate --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "not_a_basket",
    [
        [order(te.Side.BUY, 10)],
        (order(te.Side.BUY, 10),),
    ],
    ids=["list", "tuple"],
)
def test_execute_refuses_orders_that_are_not_an_approved_basket(not_a_basket):
    executor = te.OrderExecutor(te.ExecutionConfig(costs=COSTS))
    with pytest.raises(TypeError, match="ApprovedBasket"):
        executor.execute(not_a_basket, {"AAPL": quote()})


def test_execute_returns_one_fill_per_order_in_basket_order():
    orders = (order(te.Side.BUY, 10, symbol="AAPL"), order(te.Side.SELL, 20, symbol="MSFT"))
    executor = te.OrderExecutor(te.ExecutionConfig(costs=COSTS))
    fills = executor.execute(basket(*orders), {"AAPL": quote(), "MSFT": quote(price=300.0)})
    assert [(f.client_order_id, f.symbol, f.requested_qty) for f in fills] == [
        (o.client_order_id, o.symbol, o.qty) for o in orders
    ]


# --- Fill price and cash --------------------------------------------------------------------------
def test_buy_fills_above_bar_price_by_half_spread_plus_square_root_impact():
    fill = fill_one(order(te.Side.BUY, 1_000))
    assert fill.price == pytest.approx(PRICE * (1 + cost_fraction(1_000)), rel=1e-12)
    assert fill.price > PRICE


def test_sell_fills_below_bar_price_by_half_spread_plus_square_root_impact():
    fill = fill_one(order(te.Side.SELL, 1_000))
    assert fill.price == pytest.approx(PRICE * (1 - cost_fraction(1_000)), rel=1e-12)
    assert fill.price < PRICE


def test_fill_reference_price_is_the_bar_price():
    fill = fill_one(order(te.Side.BUY, 1_000))
    assert fill.reference_price == PRICE


def test_buy_cash_change_is_minus_notional_minus_commission():
    fill = fill_one(order(te.Side.BUY, 1_000))
    # commission: 0.005 × 1000 = 5.00 USD (above the 1.00 minimum, below 1 % of notional)
    assert fill.cash_change == pytest.approx(-1_000 * fill.price - 5.00, abs=1e-9)


def test_sell_cash_change_is_notional_minus_commission_sec_fee_and_taf():
    fill = fill_one(order(te.Side.SELL, 1_000))
    # commission 5.00; SEC fee 100,000 × 27.80 / 1e6 = 2.78; TAF 1000 × 0.000166 = 0.166 → 0.17
    assert fill.cash_change == pytest.approx(1_000 * fill.price - (5.00 + 2.78 + 0.17), abs=1e-9)


def test_buy_pays_no_sec_fee_or_taf():
    fill = fill_one(order(te.Side.BUY, 1_000))
    assert (fill.costs.sec_fee, fill.costs.finra_taf) == (0.0, 0.0)


def test_sell_pays_sec_fee_and_taf():
    fill = fill_one(order(te.Side.SELL, 1_000))
    assert (fill.costs.sec_fee, fill.costs.finra_taf) == pytest.approx((2.78, 0.17), abs=1e-12)


# --- Participation cap ----------------------------------------------------------------------------
def test_order_above_participation_cap_fills_floor_of_cap_times_adv_partially():
    config = te.ExecutionConfig(costs=COSTS, participation_cap=0.10)
    fill = fill_one(order(te.Side.BUY, 2_000), config, quote(adv_shares=12_345))
    assert (fill.qty, fill.status, fill.unfilled_qty) == (
        1_234,
        te.OrderStatus.PARTIALLY_FILLED,
        766,
    )


def test_partially_filled_order_is_priced_on_the_filled_shares():
    config = te.ExecutionConfig(costs=COSTS, participation_cap=0.10)
    fill = fill_one(order(te.Side.BUY, 2_000), config, quote(adv_shares=12_345))
    assert fill.price == pytest.approx(PRICE * (1 + cost_fraction(1_234, 12_345)), rel=1e-12)


def test_order_below_participation_cap_fills_in_full():
    config = te.ExecutionConfig(costs=COSTS, participation_cap=0.10)
    fill = fill_one(order(te.Side.SELL, 999), config, quote(adv_shares=10_000))
    assert (fill.qty, fill.status, fill.unfilled_qty) == (999, te.OrderStatus.FILLED, 0)


def test_order_exactly_at_participation_cap_fills_in_full():
    config = te.ExecutionConfig(costs=COSTS, participation_cap=0.10)
    fill = fill_one(order(te.Side.BUY, 1_000), config, quote(adv_shares=10_000))
    assert (fill.qty, fill.status) == (1_000, te.OrderStatus.FILLED)


def test_order_exactly_at_a_decimal_participation_cap_fills_in_full():
    config = te.ExecutionConfig(costs=COSTS, participation_cap=0.29)
    fill = fill_one(order(te.Side.BUY, 29), config, quote(adv_shares=100))
    assert (fill.qty, fill.status) == (29, te.OrderStatus.FILLED)


def test_order_is_cancelled_when_the_cap_allows_no_shares():
    config = te.ExecutionConfig(costs=COSTS, participation_cap=0.10)
    fill = fill_one(order(te.Side.BUY, 5), config, quote(adv_shares=9))
    assert (fill.qty, fill.status, fill.cash_change) == (0, te.OrderStatus.CANCELED, 0.0)


@pytest.mark.parametrize("purpose", [te.Purpose.LIQUIDATION, te.Purpose.BUY_IN])
def test_forced_close_is_not_capped_by_participation(purpose):
    config = te.ExecutionConfig(costs=COSTS, participation_cap=0.10)
    fill = fill_one(order(te.Side.BUY, 5_000, purpose), config, quote(adv_shares=10_000))
    assert (fill.qty, fill.status, fill.unfilled_qty) == (5_000, te.OrderStatus.FILLED, 0)


# --- Forced buy-in --------------------------------------------------------------------------------
def test_buy_in_fills_at_penalised_close_moved_by_spread_and_impact():
    config = te.ExecutionConfig(costs=COSTS, buy_in_penalty_bps=150.0)
    fill = fill_one(order(te.Side.BUY, 1_000, te.Purpose.BUY_IN), config)
    expected = PRICE * (1 + 150.0 / 1e4) * (1 + cost_fraction(1_000))
    assert fill.price == pytest.approx(expected, rel=1e-12)


def test_buy_in_reference_price_is_the_unpenalised_close():
    config = te.ExecutionConfig(costs=COSTS, buy_in_penalty_bps=150.0)
    fill = fill_one(order(te.Side.BUY, 1_000, te.Purpose.BUY_IN), config)
    assert fill.reference_price == PRICE


def test_liquidation_pays_no_buy_in_penalty():
    config = te.ExecutionConfig(costs=COSTS, buy_in_penalty_bps=150.0)
    fill = fill_one(order(te.Side.BUY, 1_000, te.Purpose.LIQUIDATION), config)
    assert fill.price == pytest.approx(PRICE * (1 + cost_fraction(1_000)), rel=1e-12)


# --- Seeded slippage ------------------------------------------------------------------------------
ORDER_SEQUENCE = (
    (order(te.Side.BUY, 100), order(te.Side.SELL, 200, symbol="MSFT")),
    (order(te.Side.SELL, 300), order(te.Side.BUY, 400, symbol="MSFT")),
    (order(te.Side.BUY, 500),),
)
QUOTES = {"AAPL": quote(), "MSFT": quote(price=300.0)}


def sequence_prices(config: te.ExecutionConfig) -> list[float]:
    """Fill prices of ORDER_SEQUENCE, basket after basket, on one executor."""
    executor = te.OrderExecutor(config)
    return [f.price for orders in ORDER_SEQUENCE for f in executor.execute(basket(*orders), QUOTES)]


def noisy_prices(seed: int) -> list[float]:
    return sequence_prices(te.ExecutionConfig(costs=COSTS, slippage_std_bps=5.0, seed=seed))


def test_same_seed_gives_identical_noisy_fills():
    assert noisy_prices(7) == noisy_prices(7)


def test_different_seeds_give_different_noisy_fills():
    assert noisy_prices(7) != noisy_prices(8)


def test_slippage_noise_moves_the_fill_price():
    assert noisy_prices(7) != sequence_prices(te.ExecutionConfig(costs=COSTS))


noise_cases = {
    "seed": st.integers(min_value=0, max_value=2**32 - 1),
    "std_bps": st.floats(min_value=0.01, max_value=500.0),
    "qty": st.integers(min_value=1, max_value=50_000),
}


@settings(max_examples=200, deadline=None)
@given(**noise_cases)
def test_noisy_buy_never_fills_below_the_noiseless_price(seed, std_bps, qty):
    o = order(te.Side.BUY, qty)
    noisy = fill_one(o, te.ExecutionConfig(costs=COSTS, slippage_std_bps=std_bps, seed=seed))
    assert noisy.price >= fill_one(o).price


@settings(max_examples=200, deadline=None)
@given(**noise_cases)
def test_noisy_sell_never_fills_above_the_noiseless_price(seed, std_bps, qty):
    o = order(te.Side.SELL, qty)
    noisy = fill_one(o, te.ExecutionConfig(costs=COSTS, slippage_std_bps=std_bps, seed=seed))
    assert noisy.price <= fill_one(o).price


# --- Client order ids -----------------------------------------------------------------------------
id_parts = st.lists(
    st.one_of(st.text(max_size=300), st.integers(), st.sampled_from(list(te.Purpose))),
    min_size=1,
    max_size=8,
)


def test_client_order_id_is_deterministic_for_the_same_parts():
    parts = ("run-1", BAR_TIME, "AAPL", te.Purpose.ENTRY, "long")
    assert te.client_order_id(*parts) == te.client_order_id(*parts)


@given(parts=id_parts, data=st.data())
def test_client_order_id_differs_when_any_part_differs(parts, data):
    i = data.draw(st.integers(min_value=0, max_value=len(parts) - 1), label="changed part")
    replacement = data.draw(st.text(max_size=50).filter(lambda s: s != str(parts[i])))
    changed = [*parts[:i], replacement, *parts[i + 1 :]]
    assert te.client_order_id(*parts) != te.client_order_id(*changed)


@given(parts=id_parts)
def test_client_order_id_has_pt_prefix_and_fits_alpacas_128_characters(parts):
    cid = te.client_order_id(*parts)
    assert cid.startswith("pt-")
    assert 3 < len(cid) <= 128


def test_client_order_id_distinguishes_parts_containing_the_separator():
    assert te.client_order_id("run|1", "AAPL") != te.client_order_id("run", "1|AAPL")


# --- Orders ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("qty", [0, -1, -100, 0.0, -0.5])
def test_order_refuses_non_positive_quantity(qty):
    with pytest.raises(ConfigurationError, match="positive, finite number of shares"):
        te.Order("AAPL", te.Side.BUY, qty, "pt-x")


@pytest.mark.parametrize("qty", [True, "3", None])
def test_order_refuses_a_quantity_that_is_not_a_number(qty):
    with pytest.raises(ConfigurationError, match="positive, finite number of shares"):
        te.Order("AAPL", te.Side.BUY, qty, "pt-x")


@pytest.mark.parametrize("qty", [2.5, 0.5, np.float64(3.25)])
def test_order_keeps_a_fractional_quantity_as_a_float(qty):
    order = te.Order("AAPL", te.Side.SELL, qty, "pt-x")
    assert type(order.qty) is float and order.qty == float(qty)
    assert order.signed_qty == -float(qty)


@pytest.mark.parametrize("qty", [3, np.int64(3)])
def test_order_keeps_a_whole_quantity_as_an_int(qty):
    assert type(te.Order("AAPL", te.Side.BUY, qty, "pt-x").qty) is int


@pytest.mark.parametrize("qty", [math.nan, math.inf])
def test_order_refuses_non_finite_quantity_with_configuration_error(qty):
    with pytest.raises(ConfigurationError):
        te.Order("AAPL", te.Side.BUY, qty, "pt-x")


@pytest.mark.parametrize(("side", "signed"), [(te.Side.BUY, 25), (te.Side.SELL, -25)])
def test_order_signed_qty_is_positive_for_buys_and_negative_for_sells(side, signed):
    assert te.Order("AAPL", side, 25, "pt-x").signed_qty == signed


# --- Execution settings ---------------------------------------------------------------------------
@pytest.mark.parametrize("cap", [0.0, -0.1, 1.01, math.nan])
def test_execution_config_refuses_participation_cap_outside_zero_to_one(cap):
    with pytest.raises(ConfigurationError, match="participation cap"):
        te.ExecutionConfig(participation_cap=cap)


@pytest.mark.parametrize("adv", [0.0, -1.0])
def test_execution_config_refuses_non_positive_default_adv(adv):
    with pytest.raises(ConfigurationError, match="average daily volume"):
        te.ExecutionConfig(default_adv_usd=adv)


@pytest.mark.parametrize("probability", [-0.01, 1.01, math.nan])
def test_execution_config_refuses_recall_probability_outside_zero_to_one(probability):
    with pytest.raises(ConfigurationError, match="recall probability"):
        te.ExecutionConfig(htb_recall_probability=probability)


def test_execution_config_refuses_negative_buy_in_penalty():
    with pytest.raises(ConfigurationError, match="buy-in penalty"):
        te.ExecutionConfig(buy_in_penalty_bps=-1.0)


def test_execution_config_refuses_negative_slippage():
    with pytest.raises(ConfigurationError, match="slippage"):
        te.ExecutionConfig(slippage_std_bps=-0.5)


@pytest.mark.parametrize("name", ["default_adv_usd", "buy_in_penalty_bps", "slippage_std_bps"])
def test_execution_config_refuses_nan_settings(name):
    with pytest.raises(ConfigurationError):
        te.ExecutionConfig(**{name: math.nan})
