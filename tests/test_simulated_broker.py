"""The simulated broker, the engine's decision step on it through the risk gate, the shared
order builder and the NYSE market clock."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import pair_engine as pe
import risk_management as rm
import trading_api as ta
from data_validation import market_clock
from error_handling import ConfigurationError
from trading_execution import BarQuote, ExecutionConfig, Order, Purpose, Side, orders_toward

NOW = pd.Timestamp("2022-01-04 15:00", tz="UTC")  # a Tuesday, market open
BAR = pd.Timestamp("2022-01-03 21:00", tz="UTC")  # the last closed daily bar


def broker(tmp_path, now=NOW, **kw) -> ta.SimulatedBroker:
    b = ta.SimulatedBroker(tmp_path / "broker.json", now=lambda: now, **kw)
    b.set_market(
        {
            "AAPL": BarQuote(180.0, 0.015, 5e7 / 180.0, BAR),
            "MSFT": BarQuote(330.0, 0.014, 5e7 / 330.0, BAR),
        }
    )
    return b


def risk(**limits) -> rm.RiskManager:
    return rm.RiskManager(rm.RiskLimits(**limits), state_path=None, alerts=False)


# --- orders_toward -----------------------------------------------------------------------------
def test_orders_toward_splits_a_flip_into_a_close_and_an_open():
    reduce, increase = orders_toward(
        {"AAPL": 100, "MSFT": -50}, {"AAPL": -80, "MSFT": 40}, Purpose.ENTRY, ("s", "bar")
    )
    assert [(o.symbol, o.side, o.qty, o.purpose) for o in reduce] == [
        ("AAPL", Side.SELL, 100, Purpose.EXIT),
        ("MSFT", Side.BUY, 50, Purpose.EXIT),
    ]
    assert [(o.symbol, o.side, o.qty) for o in increase] == [
        ("AAPL", Side.SELL, 80),
        ("MSFT", Side.BUY, 40),
    ]


def test_orders_toward_ids_are_the_same_for_the_same_decision_and_differ_by_bar():
    first = orders_toward({}, {"AAPL": 10}, Purpose.ENTRY, ("s", "2022-01-03"))
    again = orders_toward({}, {"AAPL": 12}, Purpose.ENTRY, ("s", "2022-01-03"))
    other = orders_toward({}, {"AAPL": 10}, Purpose.ENTRY, ("s", "2022-01-04"))
    assert first[1][0].client_order_id == again[1][0].client_order_id
    assert first[1][0].client_order_id != other[1][0].client_order_id


def test_orders_toward_shrinking_a_position_is_one_reducing_order():
    reduce, increase = orders_toward({"AAPL": 100}, {"AAPL": 30}, Purpose.ENTRY, ("s", "b"))
    assert [(o.side, o.qty) for o in reduce] == [(Side.SELL, 70)] and increase == []


def test_orders_toward_closing_a_fractional_position_sells_exactly_the_held_quantity():
    held = 10_000.0 / 0.26  # 38461.53846153846: not a whole number of shares
    reduce, increase = orders_toward({"AAPL": held}, {"AAPL": 0.0}, Purpose.ENTRY, ("s", "b"))
    assert [(o.side, o.qty) for o in reduce] == [(Side.SELL, held)] and increase == []
    assert held + reduce[0].signed_qty == 0.0


def test_orders_toward_shrinking_a_fractional_position_sends_no_leftover_order():
    have, want = 76377.698, 19481.66
    assert have - (have - want) != want  # floats: the reduce alone misses the target by an ulp
    reduce, increase = orders_toward({"AAPL": have}, {"AAPL": want}, Purpose.ENTRY, ("s", "b"))
    assert [(o.side, o.qty) for o in reduce] == [(Side.SELL, have - want)] and increase == []


# --- SimulatedBroker ---------------------------------------------------------------------------
def approved(orders, b: ta.SimulatedBroker):
    acct = b.account()
    return risk().pre_trade_check(
        orders,
        rm.PortfolioSnapshot(
            acct.equity, acct.cash, {s: p.qty for s, p in b.positions().items()}, acct.equity
        ),
        rm.MarketSnapshot(
            now=NOW,
            prices={s: q.price for s, q in b.latest_prices(["AAPL", "MSFT"]).items()},
            price_times={"AAPL": BAR, "MSFT": BAR},
            live=True,
        ),
    )


def test_fills_update_cash_positions_and_fees_and_persist(tmp_path):
    b = broker(tmp_path)
    _, opening = orders_toward({}, {"AAPL": 100, "MSFT": -50}, Purpose.ENTRY, ("t", "b1"))
    placed = b.submit_basket(approved(opening, b))

    assert [(o.symbol, o.filled_qty, o.status) for o in placed] == [
        ("AAPL", 100, "filled"),
        ("MSFT", 50, "filled"),
    ]
    buy, sell = placed
    assert buy.filled_avg_price > 180.0 > 0 and sell.filled_avg_price < 330.0  # spread + impact
    expected_cash = (
        100_000 - 100 * buy.filled_avg_price + 50 * sell.filled_avg_price - buy.fees - sell.fees
    )
    assert b.account().cash == pytest.approx(expected_cash, abs=1e-9)
    assert sell.fees > buy.fees  # a sale also pays the SEC fee and FINRA TAF
    # A restart reads the same account from the file.
    again = ta.SimulatedBroker(tmp_path / "broker.json", now=lambda: NOW)
    assert again.account() == b.account()
    assert {s: p.qty for s, p in again.positions().items()} == {"AAPL": 100, "MSFT": -50}


def test_a_basket_already_filled_is_returned_not_filled_again(tmp_path):
    b = broker(tmp_path)
    _, opening = orders_toward({}, {"AAPL": 10}, Purpose.ENTRY, ("t", "b1"))
    basket = approved(opening, b)
    first = b.submit_basket(basket)
    cash = b.account().cash
    restarted = ta.SimulatedBroker(tmp_path / "broker.json", now=lambda: NOW)
    second = restarted.submit_basket(basket)
    assert second == first
    assert restarted.account().cash == cash and restarted.positions()["AAPL"].qty == 10


def test_an_id_the_account_knows_for_another_order_is_refused_not_taken_as_done(tmp_path):
    """A copied home sends its original's ids: the same id for another quantity or side is a
    conflict, never "already filled"."""
    b = broker(tmp_path)
    _, first = orders_toward({}, {"AAPL": 10}, Purpose.ENTRY, ("t", "b1"))
    b.submit_basket(approved(first, b))
    cash = b.account().cash
    _, other = orders_toward({}, {"AAPL": 25}, Purpose.ENTRY, ("t", "b1"))
    assert other[0].client_order_id == first[0].client_order_id

    with pytest.raises(ta.OrderIdConflict, match="buy 10 AAPL, not this home's buy 25 AAPL"):
        b.submit_basket(approved(other, b))
    with pytest.raises(ta.OrderIdConflict):
        b.known_orders(other)
    assert b.account().cash == cash and b.positions()["AAPL"].qty == 10
    assert set(b.known_orders(first)) == {first[0].client_order_id}  # the same order is known


def test_the_paper_account_has_an_id_that_survives_a_restart(tmp_path):
    b = broker(tmp_path)
    again = ta.SimulatedBroker(tmp_path / "broker.json", now=lambda: NOW)
    other = broker(tmp_path / "other")
    assert b.account().account_id.startswith("sim-")
    assert again.account().account_id == b.account().account_id
    assert other.account().account_id != b.account().account_id


def test_only_an_approved_basket_is_accepted(tmp_path):
    b = broker(tmp_path)
    _, opening = orders_toward({}, {"AAPL": 10}, Purpose.ENTRY, ("t", "b1"))
    with pytest.raises(TypeError, match="ApprovedBasket"):
        b.submit_basket(opening)  # type: ignore[arg-type]


def test_borrow_accrues_on_shorts_per_calendar_day_on_the_prior_close(tmp_path):
    b = broker(tmp_path, execution=ExecutionConfig())
    _, opening = orders_toward({}, {"MSFT": -50}, Purpose.ENTRY, ("t", "b1"))
    b.submit_basket(approved(opening, b))
    cash = b.account().cash
    friday = pd.Timestamp("2022-01-07 21:00", tz="UTC")  # 4 calendar days after BAR's day
    b.set_market(
        {
            "AAPL": BarQuote(181.0, 0.015, 5e7 / 181.0, friday),
            "MSFT": BarQuote(331.0, 0.014, 5e7 / 331.0, friday),
        }
    )
    fee = 50 * 330.0 * 0.003 * 4 / 360  # notional on the prior close x rate x days / 360
    assert b.borrow_paid == pytest.approx(fee)
    assert b.account().cash == pytest.approx(cash - fee)


def test_unreadable_state_file_is_a_clear_error(tmp_path):
    (tmp_path / "broker.json").write_text("{not json")
    with pytest.raises(ConfigurationError, match="move it aside"):
        ta.SimulatedBroker(tmp_path / "broker.json")


# --- The engine's decision step on the paper broker ----------------------------------------------
LEGS = ("AAPL", "MSFT")


def decide(
    b: ta.SimulatedBroker,
    action: str,
    p: float,
    gate: rm.RiskManager | None = None,
    bar: pd.Timestamp = BAR,
    **kw,
):
    """pair_engine.decide for a model signal on `b` (ids from `bar`), events collected."""
    events: list[tuple[str, dict]] = []
    report = pe.decide(
        b,
        gate or risk(),
        pe.TradingConfig(**kw),
        pe.signal_weights(action, p, pe.SizingConfig()),
        LEGS,
        id_parts=pe.decision_ids(bar, bar),
        start_of_day_equity=b.account().equity,
        on_event=lambda event, payload: events.append((event, payload)),
    )
    return report, events


def test_buy_signal_opens_both_legs_sized_by_kelly_through_the_gate(tmp_path):
    b = broker(tmp_path)
    report, events = decide(b, "buy", 0.6)
    # half Kelly at p = 0.6, b = 1: 0.5 x (0.6 - 0.4) = 10 % of equity per leg
    assert report.target == {"AAPL": int(10_000 / 180.0), "MSFT": -int(10_000 / 330.0)}
    assert b.holdings() == report.target
    assert [e for e, _ in events] == [  # each order announced before the basket is sent
        "risk_decision",
        "order_intent",
        "order_intent",
        "order_submitted",
        "order_submitted",
    ]
    assert events[0][1]["accepted"] is True


def test_a_refused_basket_reaches_no_broker_and_is_reported_with_its_reason(tmp_path):
    b = broker(tmp_path)
    report, events = decide(b, "buy", 0.9, risk(max_leg_notional=5_000.0))
    assert report.submitted == [] and b.positions() == {}
    assert report.denials[0].reason == "leg_notional"
    assert events == [("risk_decision", events[0][1])] and events[0][1]["accepted"] is False


def test_market_closed_refuses_the_entry(tmp_path):
    saturday = pd.Timestamp("2022-01-08 15:00", tz="UTC")
    b = broker(tmp_path, now=saturday)
    report, _ = decide(b, "buy", 0.7)
    assert report.denials[0].reason == "market_closed" and b.positions() == {}


def test_replaying_the_same_decision_after_a_restart_submits_nothing_new(tmp_path):
    b = broker(tmp_path)
    first, _ = decide(b, "sell", 0.3)
    state = json.loads((tmp_path / "broker.json").read_text())
    restarted = ta.SimulatedBroker(tmp_path / "broker.json", now=lambda: NOW)
    # The restart carries out the saved target again: the account already holds it.
    report = pe.rebalance(
        restarted,
        risk(),
        first.target,
        purpose=Purpose.ENTRY,
        id_parts=pe.decision_ids(BAR, BAR),
        start_of_day_equity=restarted.account().equity,
    )
    assert report.submitted == [] and restarted.holdings() == first.target
    # An order the broker has is looked up by its client id, never sent again.
    order = next(iter(state["orders"].values()))
    resent = Order(order["symbol"], Side(order["side"]), order["qty"], order["client_order_id"])
    assert list(restarted.known_orders([resent])) == [order["client_order_id"]]
    assert json.loads((tmp_path / "broker.json").read_text())["orders"] == state["orders"]


def test_hold_keeps_the_position(tmp_path):
    b = broker(tmp_path)
    decide(b, "buy", 0.6)
    held = b.holdings()
    report, events = decide(b, "hold", 0.5)
    assert report.submitted == [] and events == [] and b.holdings() == held


def test_a_resize_inside_the_band_does_not_trade_and_one_beyond_it_does(tmp_path):
    b = broker(tmp_path)
    decide(b, "buy", 0.6)  # 10 % of equity per leg
    small, _ = decide(
        b, "buy", 0.62, bar=BAR + pd.Timedelta(days=1)
    )  # 12 %: a 20 % change of the leg, inside the 25 % band
    assert small.target != b.holdings() and small.submitted == []
    large, _ = decide(b, "buy", 0.7, bar=BAR + pd.Timedelta(days=2))  # 20 %: twice the leg
    assert large.traded, large.denials
    assert b.holdings() == large.target


def test_borrow_is_charged_once_per_day_however_often_the_bar_is_set(tmp_path):
    b = broker(tmp_path)
    decide(b, "buy", 0.6)  # short MSFT
    later = pd.Timestamp("2022-01-06 21:00", tz="UTC")  # three calendar days after the bar
    quotes = {
        "AAPL": BarQuote(181.0, 0.015, 5e7 / 181.0, later),
        "MSFT": BarQuote(331.0, 0.014, 5e7 / 331.0, later),
    }
    b.set_market(quotes)
    once = b.borrow_paid
    shares = -b.holdings()["MSFT"]
    assert once == pytest.approx(shares * 330.0 * 0.003 * 3 / 360)
    b.set_market(quotes)  # the same bar again (a restart): no second charge
    restarted = ta.SimulatedBroker(tmp_path / "broker.json", now=lambda: NOW)
    restarted.set_market(quotes)
    assert b.borrow_paid == once and restarted.borrow_paid == once


# --- Market clock ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "at,is_open,next_open,next_close",
    [
        ("2024-07-03 16:30Z", True, "2024-07-05 13:30Z", "2024-07-03 17:00Z"),  # early close
        ("2024-07-03 17:30Z", False, "2024-07-05 13:30Z", "2024-07-05 20:00Z"),  # July 4th shut
        ("2024-07-06 14:00Z", False, "2024-07-08 13:30Z", "2024-07-08 20:00Z"),  # Saturday
        ("2024-12-31 21:30Z", False, "2025-01-02 14:30Z", "2025-01-02 21:00Z"),  # year end
        ("2024-03-11 13:45Z", True, "2024-03-12 13:30Z", "2024-03-11 20:00Z"),  # after DST
    ],
)
def test_market_clock_knows_holidays_early_closes_and_daylight_saving(
    at, is_open, next_open, next_close
):
    clock = market_clock(pd.Timestamp(at))
    assert clock.is_open is is_open
    assert clock.next_open == pd.Timestamp(next_open)
    assert clock.next_close == pd.Timestamp(next_close)


def test_market_clock_needs_a_timezone():
    with pytest.raises(ValueError, match="timezone-aware"):
        market_clock(pd.Timestamp("2024-07-03 16:30"))


def test_a_version_1_paper_account_is_read_into_the_ledger(tmp_path):
    """A paper account written before the shared ledger keeps its cash, positions and borrow."""
    path = tmp_path / "broker.json"
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "cash": 90_000.0,
                "initial_cash": 100_000.0,
                "positions": {
                    "AAPL": {"qty": 50, "avg": 180.0},
                    "MSFT": {"qty": -30, "avg": 330.0},
                },
                "orders": {},
                "quotes": {},
                "borrow_paid": 1.25,
                "borrow_through": "2022-01-03T00:00:00+00:00",
            }
        )
    )
    b = ta.SimulatedBroker(path, now=lambda: NOW)
    assert b.holdings() == {"AAPL": 50, "MSFT": -30}
    assert b.ledger.cash == 90_000.0 and b.borrow_paid == 1.25
    assert b.ledger.borrow_through == pe.day_number("2022-01-03")


def test_fractional_usd_legs_fill_persist_as_floats_and_a_close_leaves_exactly_zero(tmp_path):
    """$10,000 per leg in fractional shares on the paper account: the quantities are the exact
    quotients, they survive a restart bit for bit, and going flat leaves nothing."""
    b = broker(tmp_path)
    cfg = pe.TradingConfig(sizing=pe.SizingConfig(leg_usd=10_000.0, fractional_shares=True))

    def step(weights, bar):
        return pe.decide(
            b, risk(), cfg, weights, LEGS, id_parts=pe.decision_ids(bar, bar),
            start_of_day_equity=b.account().equity, per_usd=True,
        )  # fmt: skip

    report = step([10_000.0, -10_000.0], BAR)
    assert report.target == {"AAPL": 10_000.0 / 180.0, "MSFT": -10_000.0 / 330.0}
    assert b.holdings() == report.target
    again = ta.SimulatedBroker(tmp_path / "broker.json", now=lambda: NOW)
    assert again.holdings() == report.target  # JSON keeps every bit of a float
    assert [o.qty for o in map(again.get_order_by_client_id, b.filled_client_ids())] == [
        10_000.0 / 180.0,
        10_000.0 / 330.0,
    ]
    step([0.0, 0.0], BAR + pd.Timedelta(days=1))
    assert b.positions() == {} and b.ledger.qty == {"AAPL": 0.0, "MSFT": 0.0}
