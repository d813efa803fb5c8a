"""The risk gate, drawdown control and Kelly sizing, specified behaviour by behaviour."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import constants as C
from error_handling import ConfigurationError, RiskStateError, RiskViolation
from risk_management import (
    MarketSnapshot,
    PortfolioSnapshot,
    RiskLimits,
    RiskManager,
    RiskReason,
    drawdown_breach_index,
    kelly_fraction,
)
from trading_execution import ApprovedBasket, Order, Purpose, Side, client_order_id

NOW = pd.Timestamp("2024-03-05 16:00", tz="America/New_York")
SYMBOLS = ("AAPL", "MSFT", "KO", "PEP")


# --- Builders -------------------------------------------------------------------------------------
def order(symbol: str, side: Side, qty: int, purpose: Purpose = Purpose.ENTRY) -> Order:
    return Order(
        symbol, side, qty, client_order_id("test", symbol, side, qty, purpose), purpose=purpose
    )


def buy(symbol: str, qty: int, purpose: Purpose = Purpose.ENTRY) -> Order:
    return order(symbol, Side.BUY, qty, purpose)


def sell(symbol: str, qty: int, purpose: Purpose = Purpose.ENTRY) -> Order:
    return order(symbol, Side.SELL, qty, purpose)


def portfolio(
    positions: dict[str, int] | None = None,
    equity: float = 100_000.0,
    start_of_day_equity: float | None = None,
    buying_power: float | None = None,
) -> PortfolioSnapshot:
    return PortfolioSnapshot(
        equity=equity,
        cash=equity,
        positions=positions or {},
        start_of_day_equity=equity if start_of_day_equity is None else start_of_day_equity,
        buying_power=buying_power,
    )


def market(
    prices: dict[str, float] | None = None,
    *,
    price_times: dict[str, pd.Timestamp] | None = None,
    reference_prices: dict[str, float] | None = None,
    market_open: bool = True,
    live: bool = False,
) -> MarketSnapshot:
    prices = {s: 100.0 for s in SYMBOLS} if prices is None else prices
    return MarketSnapshot(
        now=NOW,
        prices=prices,
        price_times={s: NOW for s in prices} if price_times is None else price_times,
        reference_prices=reference_prices or {},
        market_open=market_open,
        live=live,
    )


def rejection(manager: RiskManager, orders, pf=None, mk=None) -> RiskViolation:
    with pytest.raises(RiskViolation) as info:
        manager.pre_trade_check(orders, pf or portfolio(), mk or market())
    return info.value


@pytest.fixture
def manager() -> RiskManager:
    """The backtest's manager: default limits, in memory, no alerts written."""
    return RiskManager(alerts=False)


# --- Approval -------------------------------------------------------------------------------------
def test_basket_within_limits_is_approved(manager):
    orders = [buy("AAPL", 200), sell("MSFT", 200)]
    basket = manager.pre_trade_check(orders, portfolio(), market())
    assert basket == ApprovedBasket(tuple(orders), NOW, False)


def test_net_neutral_pair_passes_net_check_although_one_leg_alone_would_not(manager):
    long_leg, short_leg = buy("AAPL", 400), sell("MSFT", 400)  # $40,000 each, net $0
    assert rejection(manager, [long_leg]).reason == RiskReason.NET_EXPOSURE
    basket = manager.pre_trade_check([long_leg, short_leg], portfolio(), market())
    assert basket.orders == (long_leg, short_leg)


def test_empty_basket_is_a_configuration_error(manager):
    with pytest.raises(ConfigurationError, match="empty basket"):
        manager.pre_trade_check([], portfolio(), market())


# --- One test per reason --------------------------------------------------------------------------
def test_order_rejected_when_leg_notional_exceeds_limit(manager):
    violation = rejection(manager, [buy("MSFT", 150)], portfolio({"MSFT": 500}))
    assert violation.reason == RiskReason.LEG_NOTIONAL
    assert "MSFT notional after order $65,000 > limit $60,000" in violation.detail


def test_basket_rejected_when_gross_exposure_exceeds_limit(manager):
    held = {"AAPL": 550, "MSFT": -550}  # $110,000 gross, net 0
    violation = rejection(manager, [buy("KO", 150)], portfolio(held, equity=200_000.0))
    assert violation.reason == RiskReason.GROSS_EXPOSURE
    assert "$125,000 > limit $120,000" in violation.detail


def test_order_rejected_when_net_exposure_exceeds_limit(manager):
    violation = rejection(manager, [buy("AAPL", 300)])
    assert violation.reason == RiskReason.NET_EXPOSURE
    assert "$30,000" in violation.detail and "$25,000" in violation.detail


def test_order_rejected_when_order_notional_exceeds_limit(manager):
    violation = rejection(manager, [buy("AAPL", 700), sell("MSFT", 700)])
    assert violation.reason == RiskReason.ORDER_SIZE
    assert "$70,000 > limit $60,000" in violation.detail


def test_order_rejected_when_order_quantity_exceeds_limit():
    manager = RiskManager(RiskLimits(max_order_qty=100), alerts=False)
    violation = rejection(manager, [buy("AAPL", 101), sell("MSFT", 101)])
    assert violation.reason == RiskReason.ORDER_SIZE
    assert "101 shares > limit 100 shares" in violation.detail


def test_basket_rejected_when_leverage_exceeds_limit(manager):
    violation = rejection(manager, [buy("AAPL", 200), sell("MSFT", 200)], portfolio(equity=20_000))
    assert violation.reason == RiskReason.LEVERAGE
    assert "2.00x" in violation.detail and "1.50x" in violation.detail


def test_basket_rejected_as_leverage_when_equity_is_not_positive(manager):
    violation = rejection(manager, [buy("AAPL", 10), sell("MSFT", 10)], portfolio(equity=-5.0))
    assert violation.reason == RiskReason.LEVERAGE


def test_basket_rejected_when_broker_buying_power_is_short(manager):
    pf = portfolio(buying_power=10_000.0)
    violation = rejection(manager, [buy("AAPL", 200), sell("MSFT", 200)], pf)
    assert violation.reason == RiskReason.BUYING_POWER
    assert "$40,000" in violation.detail and "$10,000" in violation.detail


def test_computed_buying_power_is_equity_over_margin_minus_gross_exposure():
    limits = RiskLimits(max_leverage=10.0, max_gross_exposure=1e9, max_leg_notional=1e9)
    manager = RiskManager(limits, alerts=False)
    held = {"KO": 500, "PEP": -500}  # $100,000 gross; buying power = 100,000 / 0.5 - 100,000
    pf = portfolio(held, equity=100_000.0)
    manager.pre_trade_check([buy("AAPL", 500), sell("MSFT", 500)], pf, market())  # needs $100,000
    violation = rejection(manager, [buy("AAPL", 501), sell("MSFT", 501)], pf)
    assert violation.reason == RiskReason.BUYING_POWER


def test_closing_part_of_an_order_needs_no_buying_power(manager):
    # Flipping MSFT from -200 to +100 opens only 100 shares; -200 -> 0 costs nothing.
    pf = portfolio({"MSFT": -200, "AAPL": 250}, buying_power=10_000.0)
    basket = manager.pre_trade_check([buy("MSFT", 300), sell("AAPL", 150)], pf, market())
    assert basket.reduce_only is False


def test_entry_rejected_when_daily_loss_limit_is_reached(manager):
    pf = portfolio(equity=95_000.0, start_of_day_equity=100_000.0)  # exactly -5 %
    violation = rejection(manager, [buy("AAPL", 10), sell("MSFT", 10)], pf)
    assert violation.reason == RiskReason.DAILY_LOSS


def test_order_rejected_when_backtest_price_leaves_the_band_of_the_reference(manager):
    mk = market({"AAPL": 301.0, "MSFT": 100.0}, reference_prices={"AAPL": 100.0})
    violation = rejection(manager, [buy("AAPL", 10), sell("MSFT", 10)], mk=mk)
    assert violation.reason == RiskReason.PRICE_SANITY
    assert "AAPL" in violation.detail


@pytest.mark.parametrize("bad", [math.nan, math.inf, 0.0, -1.0])
def test_order_rejected_when_price_is_not_positive_and_finite(manager, bad):
    mk = market({"AAPL": bad, "MSFT": 100.0})
    assert rejection(manager, [buy("AAPL", 10)], mk=mk).reason == RiskReason.PRICE_SANITY


def test_live_order_rejected_when_price_is_outside_the_configured_range(manager):
    low, _ = C.price_sanity_range("AAPL")
    mk = market({"AAPL": low / 2, "MSFT": 300.0}, live=True)
    violation = rejection(manager, [buy("AAPL", 10), sell("MSFT", 10)], mk=mk)
    assert violation.reason == RiskReason.PRICE_SANITY


def test_order_rejected_when_price_is_older_than_the_limit(manager):
    old = NOW - pd.Timedelta(days=4, minutes=1)
    mk = market({"AAPL": 100.0, "MSFT": 100.0}, price_times={"AAPL": NOW, "MSFT": old})
    violation = rejection(manager, [buy("AAPL", 10), sell("MSFT", 10)], mk=mk)
    assert violation.reason == RiskReason.STALE_DATA
    assert "MSFT" in violation.detail


def test_price_four_days_old_is_not_stale(manager):
    weekend = NOW - pd.Timedelta(days=4)
    mk = market({"AAPL": 100.0, "MSFT": 100.0}, price_times={"AAPL": weekend, "MSFT": weekend})
    manager.pre_trade_check([buy("AAPL", 10), sell("MSFT", 10)], portfolio(), mk)


def test_order_rejected_when_symbol_has_no_price(manager):
    mk = market({"AAPL": 100.0})
    violation = rejection(manager, [buy("AAPL", 10), sell("MSFT", 10)], mk=mk)
    assert violation.reason == RiskReason.STALE_DATA
    assert "no price for MSFT" in violation.detail


def test_order_rejected_when_price_time_is_missing(manager):
    mk = market({"AAPL": 100.0}, price_times={"AAPL": pd.NaT})
    assert rejection(manager, [buy("AAPL", 10)], mk=mk).reason == RiskReason.STALE_DATA


def test_naive_price_time_against_aware_check_time_is_a_configuration_error(manager):
    mk = market({"AAPL": 100.0}, price_times={"AAPL": NOW.tz_localize(None)})
    with pytest.raises(ConfigurationError, match="timezone-aware"):
        manager.pre_trade_check([buy("AAPL", 10)], portfolio(), mk)


def test_live_order_rejected_when_market_is_closed(manager):
    mk = market({"AAPL": 150.0, "MSFT": 300.0}, live=True, market_open=False)
    violation = rejection(manager, [buy("AAPL", 10), sell("MSFT", 10)], mk=mk)
    assert violation.reason == RiskReason.MARKET_CLOSED


def test_backtest_ignores_the_market_open_flag(manager):
    mk = market(market_open=False)
    manager.pre_trade_check([buy("AAPL", 10), sell("MSFT", 10)], portfolio(), mk)


def test_entry_rejected_while_trading_is_halted(manager):
    manager.halt("operator stop", NOW)
    violation = rejection(manager, [buy("AAPL", 10), sell("MSFT", 10)])
    assert violation.reason == RiskReason.TRADING_HALTED
    assert "operator stop" in violation.detail


# --- Reduce-only baskets --------------------------------------------------------------------------
def test_reduce_only_exit_passes_while_halted(manager):
    manager.halt("drawdown", NOW)
    exits = [sell("AAPL", 300, Purpose.EXIT), buy("MSFT", 300, Purpose.EXIT)]
    basket = manager.pre_trade_check(exits, portfolio({"AAPL": 300, "MSFT": -300}), market())
    assert basket.reduce_only is True


def test_reduce_only_liquidation_passes_over_daily_loss_and_exposure_limits(manager):
    held = {"AAPL": 2_000, "MSFT": -1_000}  # leg, gross, net and leverage all broken
    pf = portfolio(held, equity=50_000.0, start_of_day_equity=100_000.0, buying_power=0.0)
    exits = [sell("AAPL", 2_000, Purpose.LIQUIDATION), buy("MSFT", 500, Purpose.LIQUIDATION)]
    assert manager.pre_trade_check(exits, pf, market()).reduce_only is True


def test_order_crossing_zero_is_not_reduce_only(manager):
    manager.halt("drawdown", NOW)
    violation = rejection(manager, [sell("AAPL", 150, Purpose.EXIT)], portfolio({"AAPL": 100}))
    assert violation.reason == RiskReason.TRADING_HALTED


def test_symbol_twice_in_a_basket_is_not_reduce_only(manager):
    manager.halt("drawdown", NOW)
    twice = [sell("AAPL", 60, Purpose.EXIT), sell("AAPL", 60, Purpose.EXIT)]
    violation = rejection(manager, twice, portfolio({"AAPL": 100}))
    assert violation.reason == RiskReason.TRADING_HALTED


def test_reduce_only_exit_still_needs_a_fresh_price(manager):
    mk = market({"AAPL": 100.0}, price_times={"AAPL": NOW - pd.Timedelta(days=10)})
    violation = rejection(manager, [sell("AAPL", 100, Purpose.EXIT)], portfolio({"AAPL": 100}), mk)
    assert violation.reason == RiskReason.STALE_DATA


# --- Property: nothing that breaks a limit is approved --------------------------------------------
@st.composite
def scenarios(draw):
    symbols = draw(st.lists(st.sampled_from(SYMBOLS), min_size=1, max_size=4, unique=True))
    prices = {s: draw(st.floats(1.0, 400.0)) for s in SYMBOLS}
    positions = {s: draw(st.integers(-600, 600)) for s in symbols}
    equity = draw(st.floats(-1_000.0, 250_000.0))
    sod = equity * draw(st.floats(0.9, 1.1))
    bp = draw(st.none() | st.floats(0.0, 60_000.0))
    basket = draw(
        st.lists(
            st.builds(order, st.sampled_from(SYMBOLS), st.sampled_from(Side), st.integers(1, 600)),
            min_size=1,
            max_size=3,
        )
    )
    return portfolio(positions, equity, sod, bp), market(prices), basket


def independent_opening_notional(orders, positions, prices) -> float:
    total, pos = 0.0, dict(positions)
    for o in orders:
        p, s = pos.get(o.symbol, 0), o.signed_qty
        closing = min(abs(s), abs(p)) if p * s < 0 else 0
        total += (abs(s) - closing) * prices[o.symbol]
        pos[o.symbol] = p + s
    return total


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_approved_basket_leaves_the_portfolio_within_every_limit(scenario):
    pf, mk, orders = scenario
    limits = RiskLimits()
    try:
        basket = RiskManager(limits, alerts=False).pre_trade_check(orders, pf, mk)
    except RiskViolation:
        return
    after = dict(pf.positions)
    for o in orders:
        after[o.symbol] = after.get(o.symbol, 0) + o.signed_qty
    if basket.reduce_only:
        for o in orders:
            before = pf.positions[o.symbol]
            assert abs(after[o.symbol]) < abs(before) and after[o.symbol] * before >= 0
        return
    tol = 1 + 1e-9
    notionals = [q * mk.prices[s] for s, q in after.items()]
    gross = sum(abs(n) for n in notionals)
    assert all(abs(n) <= limits.max_leg_notional * tol for n in notionals)
    assert gross <= limits.max_gross_exposure * tol
    assert abs(sum(notionals)) <= limits.max_net_exposure * tol
    assert pf.equity > 0 and gross / pf.equity <= limits.max_leverage * tol
    for o in orders:
        assert o.qty <= limits.max_order_qty
        assert o.qty * mk.prices[o.symbol] <= limits.max_order_notional * tol
    held_gross = sum(abs(q * mk.prices[s]) for s, q in pf.positions.items())
    bp = pf.buying_power if pf.buying_power is not None else pf.equity / 0.5 - held_gross
    assert independent_opening_notional(orders, pf.positions, mk.prices) <= bp * tol + 1e-6
    assert pf.equity > pf.start_of_day_equity * (1 - limits.daily_loss_limit_pct)


# --- State file -----------------------------------------------------------------------------------
def test_halt_persists_across_a_new_manager_on_the_same_state_file(tmp_path):
    state = tmp_path / "data" / "risk_state.json"
    RiskManager(state_path=state, home=tmp_path).halt("operator stop", NOW)
    reloaded = RiskManager(state_path=state, home=tmp_path)
    assert reloaded.halted and reloaded.halt_reason == "operator stop"
    assert reloaded.halted_at == NOW


def test_equity_peak_persists_across_a_new_manager(tmp_path):
    state = tmp_path / "risk_state.json"
    RiskManager(state_path=state, home=tmp_path).update_equity(123_456.0, NOW)
    assert RiskManager(state_path=state, home=tmp_path).equity_peak == 123_456.0


def test_reset_clears_the_persisted_halt_and_restarts_the_peak(tmp_path):
    state = tmp_path / "risk_state.json"
    first = RiskManager(state_path=state, home=tmp_path)
    first.update_equity(100_000.0, NOW)
    first.halt("operator stop", NOW)
    first.reset(equity=80_000.0)
    reloaded = RiskManager(state_path=state, home=tmp_path)
    assert not reloaded.halted and reloaded.halt_reason is None and reloaded.halted_at is None
    assert reloaded.equity_peak == 80_000.0


def test_reset_appends_an_info_alert(tmp_path):
    RiskManager(home=tmp_path).reset()
    (line,) = (tmp_path / "logs" / "alerts.log").read_text().splitlines()
    record = json.loads(line)
    assert (record["severity"], record["title"]) == ("INFO", "Trading halt reset")


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        '{"halted": "yes"}',
        '{"halted": false, "equity_peak": "x"}',
        '{"halted": false, "equity_peak": -1}',
    ],
)
def test_corrupt_state_file_is_a_risk_state_error_naming_the_file(tmp_path, content):
    state = tmp_path / "risk_state.json"
    state.write_text(content)
    with pytest.raises(RiskStateError) as info:  # exit 5, as the README's table says
        RiskManager(state_path=state, home=tmp_path)
    assert str(state) in str(info.value) and "risk reset" in str(info.value)


def test_reset_file_recovers_a_corrupt_state_file(tmp_path):
    state = tmp_path / "risk_state.json"
    state.write_text("{not json")
    RiskManager.reset_file(state, equity=90_000.0, home=tmp_path)
    reloaded = RiskManager(state_path=state, home=tmp_path)
    assert not reloaded.halted and reloaded.equity_peak == 90_000.0


def test_in_memory_manager_never_writes_the_risk_state_file(home):
    manager = RiskManager(alerts=False)
    manager.update_equity(100_000.0, NOW)
    assert manager.update_equity(50_000.0, NOW) is True
    manager.reset(60_000.0)
    assert not home.risk_state_file.exists()


# --- Drawdown control -----------------------------------------------------------------------------
def test_update_equity_raises_the_peak_only_when_higher():
    manager = RiskManager(alerts=False)
    for equity in (100.0, 120.0, 110.0):
        manager.update_equity(equity, NOW)
    assert manager.equity_peak == 120.0


def test_drawdown_breach_halts_once_and_appends_one_critical_alert(tmp_path):
    manager = RiskManager(state_path=tmp_path / "risk_state.json", home=tmp_path)
    results = [
        manager.update_equity(e, NOW + pd.Timedelta(days=i))
        for i, e in enumerate((100_000.0, 95_000.0, 90_000.0, 85_000.0))
    ]
    assert results == [False, False, True, False]
    assert manager.halted and RiskManager(state_path=tmp_path / "risk_state.json").halted
    lines = (tmp_path / "logs" / "alerts.log").read_text().splitlines()
    assert len(lines) == 1
    alert = json.loads(lines[0])
    assert alert["severity"] == "CRITICAL" and alert["source"] == "risk"
    assert alert["title"] == "Drawdown limit breached: trading halted"
    details = alert["details"]
    assert details["equity"] == 90_000.0 and details["peak"] == 100_000.0
    assert details["drawdown"] == pytest.approx(-0.10) and details["limit"] == 0.10
    assert details["time"] == (NOW + pd.Timedelta(days=2)).isoformat()


def test_a_breach_keeps_its_bar_until_the_liquidation_is_sent_across_restarts(tmp_path):
    """The bar whose close revealed the breach survives a restart (the liquidation is due
    `fill_delay_bars` after it); once the liquidation is sent none is due, the halt stays."""
    state = tmp_path / "risk_state.json"
    bar = pd.Timestamp("2024-01-03")
    first = RiskManager(state_path=state, home=tmp_path)
    first.update_equity(100_000.0, NOW)
    assert first.update_equity(85_000.0, NOW, bar=bar)
    reloaded = RiskManager(state_path=state, home=tmp_path)
    assert reloaded.drawdown_bar == bar and reloaded.halted
    reloaded.liquidation_sent()
    again = RiskManager(state_path=state, home=tmp_path)
    assert again.drawdown_bar is None and again.halted


def test_a_risk_state_file_from_before_the_breach_bar_still_loads(tmp_path):
    state = tmp_path / "risk_state.json"
    state.write_text(
        json.dumps({"version": 1, "halted": True, "halt_reason": "x", "equity_peak": 1.0})
    )
    manager = RiskManager(state_path=state, home=tmp_path)
    assert manager.halted and manager.drawdown_bar is None


def test_a_corrupt_breach_bar_is_refused_naming_the_field(tmp_path):
    state = tmp_path / "risk_state.json"
    state.write_text(json.dumps({"halted": True, "drawdown_bar": "yesterday"}))
    with pytest.raises(RiskStateError, match="drawdown_bar"):
        RiskManager(state_path=state, home=tmp_path)


def test_drawdown_breach_after_reset_halts_again(tmp_path):
    manager = RiskManager(home=tmp_path)
    manager.update_equity(100.0, NOW)
    assert manager.update_equity(85.0, NOW)
    manager.reset(equity=85.0)
    assert not manager.update_equity(80.0, NOW)
    assert manager.update_equity(76.0, NOW)


def naive_breach(equity: list[float], peak: float, limit: float) -> tuple[int | None, float]:
    running = peak
    for i, e in enumerate(equity):
        running = max(running, e)
        if e <= running * (1 - limit):
            return i, running
    return None, running


def test_drawdown_breach_index_finds_the_first_breach():
    equity = np.array([100.0, 110.0, 100.0, 98.0, 120.0, 90.0])
    assert drawdown_breach_index(equity, peak=105.0, limit_pct=0.10) == (3, 110.0)
    assert drawdown_breach_index(equity[:3], peak=105.0, limit_pct=0.10) == (None, 110.0)
    assert drawdown_breach_index(np.array([]), peak=105.0, limit_pct=0.10) == (None, 105.0)


@given(
    st.lists(st.floats(1.0, 1_000.0), max_size=60),
    st.floats(1.0, 1_000.0),
    st.floats(0.01, 0.9),
)
def test_drawdown_breach_index_matches_a_plain_loop(equity, peak, limit):
    assert drawdown_breach_index(np.array(equity), peak, limit) == naive_breach(equity, peak, limit)


# --- Limits ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [
        {"max_leg_notional": 0.0},
        {"max_gross_exposure": -1.0},
        {"max_net_exposure": math.nan},
        {"max_order_qty": 0},
        {"max_leverage": math.inf},
        {"daily_loss_limit_pct": 1.0},
        {"max_drawdown_pct": 0.0},
        {"initial_margin": 1.5},
        {"max_price_age_days": 0.0},
        {"price_band_factor": 1.0},
    ],
)
def test_invalid_risk_limits_are_configuration_errors(bad):
    with pytest.raises(ConfigurationError):
        RiskLimits(**bad)


# --- Kelly ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("p", "b", "fraction", "cap", "expected"),
    [
        (0.6, 1.0, 0.5, 0.5, 0.1),  # full Kelly 0.2
        (0.5, 2.0, 0.5, 0.5, 0.125),  # full Kelly 0.25
        (0.6, 1.0, 1.0, 0.5, 0.2),
        (0.9, 9.0, 1.0, 0.5, 0.5),  # full Kelly 0.8889, capped
        (0.4, 1.0, 0.5, 0.5, 0.0),  # negative edge: no bet
    ],
)
def test_kelly_fraction_hand_values(p, b, fraction, cap, expected):
    assert kelly_fraction(p, b, fraction=fraction, cap=cap) == pytest.approx(expected, abs=1e-15)


@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.floats(0.05, 20.0))
def test_kelly_fraction_is_monotonic_in_win_probability(p1, p2, b):
    low, high = sorted((p1, p2))
    assert kelly_fraction(low, b) <= kelly_fraction(high, b)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"probability": 1.1, "payoff_ratio": 1.0},
        {"probability": math.nan, "payoff_ratio": 1.0},
        {"probability": 0.5, "payoff_ratio": 0.0},
        {"probability": 0.5, "payoff_ratio": 1.0, "fraction": 0.0},
        {"probability": 0.5, "payoff_ratio": 1.0, "cap": 2.0},
    ],
)
def test_kelly_fraction_rejects_invalid_inputs(kwargs):
    with pytest.raises(ConfigurationError):
        kelly_fraction(**kwargs)
