"""AlpacaBroker against a local Alpaca: a small in-memory exchange (tests/local_alpaca.py) behind a
real HTTP server on 127.0.0.1 (pytest-httpserver), answering the REST paths alpaca-py 0.44 calls
with the JSON shapes of its models (TradeAccount, Order, Position, Clock, latest trades). The
exchange is a test double of Alpaca; our code and alpaca-py run unmodified.

What is specified: the broker's view of account, clock, prices, positions and orders; the failure
policy (timeouts, retries of 429/5xx only, the circuit breaker and its alert); and that an order is
never posted twice for one client order id (lost answers, restarts, 422 duplicates).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest

pytest.importorskip("alpaca")
pytest.importorskip("pytest_httpserver")

from pytest_httpserver import HTTPServer

import alert_dispatch
import risk_management as rm
from error_handling import (
    BreakerState,
    BrokerError,
    CircuitBreaker,
    CircuitOpenError,
    ConfigurationError,
)
from tests.local_alpaca import (
    BY_CLIENT_ID,
    KEY_ID,
    NOW,
    ORDERS,
    PRICES,
    SECRET,
    FakeAlpaca,
    serving,
)
from trading_api import (
    Account,
    AlpacaBroker,
    BrokerUnavailable,
    OrderIdConflict,
    OrderRejected,
    Position,
    Quote,
)
from trading_execution import ApprovedBasket, Order, OrderType, Purpose, Side, client_order_id

# alpaca-py's import of its live-stream module warns about websockets' legacy API; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning")

TIMEOUT_S = 0.3


# --- Fixtures and helpers -------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch) -> None:
    """No proxy between us and 127.0.0.1, and no Alpaca settings from the developer's shell."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    for var in (
        "ALPACA_API_KEY",
        "ALPACA_SECRET_KEY",
        "ALPACA_TRADING_URL",
        "ALPACA_DATA_URL",
        "ALPACA_DATA_FEED",
        "TRADING_MASTER_PASSWORD",
        "ALERT_WEBHOOK_URL",
    ):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def _local_server() -> Iterator[tuple[HTTPServer, dict[str, FakeAlpaca]]]:
    with serving() as served:
        yield served


@pytest.fixture
def alpaca(_local_server) -> Iterator[FakeAlpaca]:
    """A fresh local Alpaca per test; its stalled answers are released when the test ends."""
    server, current = _local_server
    fake = FakeAlpaca()
    fake.url = server.url_for("").rstrip("/")
    current["fake"] = fake
    yield fake
    fake.release.set()


def broker(alpaca: FakeAlpaca, **kw: Any) -> AlpacaBroker:
    kw.setdefault("timeout_s", TIMEOUT_S)
    kw.setdefault("sleep", lambda s: None)
    return AlpacaBroker(KEY_ID, SECRET, trading_url=alpaca.url, data_url=alpaca.url, **kw)


def approved(*orders: Order) -> ApprovedBasket:
    """A basket through the live risk gate (the only way to get one)."""
    risk = rm.RiskManager(rm.RiskLimits(), state_path=None, alerts=False)
    portfolio = rm.PortfolioSnapshot(
        equity=100_000.0,
        cash=100_000.0,
        positions={},
        start_of_day_equity=100_000.0,
        buying_power=200_000.0,
    )
    market = rm.MarketSnapshot(
        now=NOW,
        prices=PRICES,
        price_times={s: NOW - pd.Timedelta(seconds=1) for s in PRICES},
        live=True,
        market_open=True,
    )
    return risk.pre_trade_check(list(orders), portfolio, market)


def leg(symbol: str, side: Side, qty: int, bar: str = "2024-01-03") -> Order:
    cid = client_order_id("pair", bar, symbol, Purpose.ENTRY.value)
    return Order(symbol, side, qty, cid, OrderType.MARKET, Purpose.ENTRY)


def held_shares(alpaca: FakeAlpaca) -> dict[str, int]:
    """Signed shares per symbol in the local Alpaca's books."""
    return {s: int(q) for s, (q, _) in alpaca.positions.items()}


def pair_basket(bar: str = "2024-01-03") -> ApprovedBasket:
    """Long 10 AAPL, short 5 MSFT: the same ids every time the same decision is made."""
    return approved(leg("AAPL", Side.BUY, 10, bar), leg("MSFT", Side.SELL, 5, bar))


# --- A normal session -----------------------------------------------------------------------------
def test_a_session_reads_the_account_clock_and_prices_then_trades_a_basket(alpaca):
    b = broker(alpaca)
    assert b.account() == Account(100_000.0, 100_000.0, 200_000.0, "ACTIVE", alpaca.account_id)

    clock = b.clock()
    assert clock.is_open
    assert clock.at == pd.Timestamp("2024-01-03 15:00:00.123456", tz="UTC")
    assert clock.next_close == pd.Timestamp("2024-01-03 21:00", tz="UTC")
    assert clock.next_open == pd.Timestamp("2024-01-04 14:30", tz="UTC")
    assert clock.session_date == pd.Timestamp("2024-01-03")

    stamp = pd.Timestamp("2024-01-03 14:59:59.123456", tz="UTC")
    assert b.latest_prices(["AAPL", "MSFT", "ZZZZ"]) == {
        "AAPL": Quote("AAPL", 184.25, stamp),
        "MSFT": Quote("MSFT", 370.60, stamp),
    }
    assert alpaca.feeds == ["iex"]

    basket = pair_basket()
    placed = b.submit_basket(basket)
    assert [(o.symbol, o.side, o.qty, o.status) for o in placed] == [
        ("AAPL", Side.BUY, 10, "accepted"),
        ("MSFT", Side.SELL, 5, "accepted"),
    ]
    assert [o.client_order_id for o in placed] == [o.client_order_id for o in basket.orders]
    assert {o.purpose for o in placed} == {"entry"}
    assert placed[0].submitted_at == NOW

    assert b.positions() == {
        "AAPL": Position("AAPL", 10, 184.25, 184.25),
        "MSFT": Position("MSFT", -5, 370.60, 370.60),
    }
    filled = b.get_order_by_client_id(basket.orders[0].client_order_id)
    assert filled is not None
    assert (filled.id, filled.status, filled.filled_qty, filled.filled_avg_price) == (
        placed[0].id,
        "filled",
        10,
        184.25,
    )
    assert filled.done
    assert b.account().cash == pytest.approx(100_000.0 - 10 * 184.25 + 5 * 370.60)
    assert alpaca.hits["POST", ORDERS] == 2


def test_unknown_client_order_id_is_none(alpaca):
    assert broker(alpaca).get_order_by_client_id("pt-not-there") is None


def test_an_open_order_is_listed_and_canceled(alpaca):
    alpaca.fill = False
    b = broker(alpaca)
    placed = b.submit_basket(pair_basket())
    assert [o.id for o in b.open_orders()] == [o.id for o in placed]

    b.cancel_order(placed[0].id)

    assert [o.id for o in b.open_orders()] == [placed[1].id]
    canceled = b.get_order_by_client_id(placed[0].client_order_id)
    assert canceled is not None and canceled.status == "canceled" and canceled.done


def test_canceling_a_filled_order_is_rejected_with_alpacas_reason(alpaca):
    b = broker(alpaca)
    placed = b.submit_basket(pair_basket())
    with pytest.raises(OrderRejected, match="not cancelable"):
        b.cancel_order(placed[0].id)
    assert alpaca.hits["DELETE", f"{ORDERS}/{placed[0].id}"] == 1


def test_a_cancel_whose_answer_was_lost_is_not_an_error_on_retry(alpaca):
    alpaca.fill = False
    b = broker(alpaca)
    order = b.submit_basket(approved(leg("AAPL", Side.BUY, 10)))[0]
    alpaca.fail("DELETE", f"{ORDERS}/{order.id}", "lost")  # canceled; the answer never arrives

    b.cancel_order(order.id)  # the retry is answered 422 "not cancelable": it is canceled

    assert alpaca.hits["DELETE", f"{ORDERS}/{order.id}"] == 2
    assert alpaca.orders_for(order.client_order_id)[0]["status"] == "canceled"


# --- Failure policy -------------------------------------------------------------------------------
def test_429_is_retried_and_the_call_succeeds(alpaca):
    alpaca.fail("GET", "/v2/account", 429)
    assert broker(alpaca).account().equity == 100_000.0
    assert alpaca.hits["GET", "/v2/account"] == 2


def test_500_is_retried_with_backoff_then_broker_unavailable(alpaca):
    alpaca.fail("GET", "/v2/clock", 500, 500, 500)
    waits: list[float] = []
    b = broker(alpaca, attempts=3, backoff_s=0.5, sleep=waits.append)
    with pytest.raises(BrokerUnavailable, match=r"HTTP 500: internal server error.*3 attempt"):
        b.clock()
    assert alpaca.hits["GET", "/v2/clock"] == 3
    assert waits == [0.5, 1.0]


def test_a_stalled_answer_times_out_is_retried_then_broker_unavailable(alpaca):
    alpaca.fail("GET", "/v2/positions", "stall", "stall")
    b = broker(alpaca, attempts=2)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=r"no answer within 0\.3 s"):
        b.positions()
    assert time.monotonic() - started < 1.5  # two timeouts of 0.3 s, not the 2 s stall
    assert alpaca.hits["GET", "/v2/positions"] == 2


def test_a_refused_connection_is_retried_then_broker_unavailable():
    with socket.socket() as sock:  # a port on 127.0.0.1 that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    waits: list[float] = []
    b = AlpacaBroker(KEY_ID, SECRET, trading_url=url, timeout_s=TIMEOUT_S, sleep=waits.append)
    with pytest.raises(BrokerUnavailable, match="connection failed"):
        b.account()
    assert len(waits) == 2


@pytest.mark.parametrize(
    ("status", "reason"), [(400, "qty must be > 0"), (403, "insufficient buying power")]
)
def test_a_rejected_order_is_posted_once_and_does_not_trip_the_breaker(alpaca, status, reason):
    breaker = CircuitBreaker("alpaca", failure_threshold=1)  # one counted failure would open it
    b = broker(alpaca, attempts=3, breakers={"orders": breaker})
    alpaca.fail("POST", ORDERS, status)

    with pytest.raises(OrderRejected, match=f"HTTP {status}: {reason}") as raised:
        b.submit_basket(approved(leg("AAPL", Side.BUY, 10)))

    assert raised.value.status == status
    assert isinstance(raised.value, BrokerError)
    assert alpaca.hits["POST", ORDERS] == 1
    assert breaker.state is BreakerState.CLOSED
    assert alpaca.orders == []


def test_a_rejection_leaves_the_breaker_count_unchanged(alpaca):
    b = broker(alpaca, attempts=3)
    alpaca.fail("GET", "/v2/account", 500, 500, 500, 403)
    with pytest.raises(BrokerUnavailable):
        b.account()
    assert b.breakers["account"].failures == 3  # below the default threshold of 5

    with pytest.raises(OrderRejected, match="HTTP 403"):
        b.account()

    assert alpaca.hits["GET", "/v2/account"] == 4
    assert b.breakers["account"].failures == 3


def test_wrong_keys_are_rejected_once_with_a_hint(alpaca):
    b = AlpacaBroker(KEY_ID, "wrong-secret", trading_url=alpaca.url, timeout_s=TIMEOUT_S)
    with pytest.raises(OrderRejected, match=r"HTTP 401.*ALPACA_SECRET_KEY"):
        b.account()
    assert alpaca.requests == 1


def test_a_breaker_passed_in_learns_not_to_count_rejections(alpaca):
    b = broker(alpaca, breakers={"orders": CircuitBreaker("alpaca")})
    assert OrderRejected in b.breakers["orders"].excluded


# --- Circuit breaker ------------------------------------------------------------------------------
def test_breaker_opens_after_failures_alerts_and_then_refuses_without_a_request(
    alpaca, tmp_path, monkeypatch
):
    monkeypatch.delenv("ALERT_WEBHOOK_URL", raising=False)
    breaker = CircuitBreaker(
        "alpaca",
        failure_threshold=2,
        reset_timeout_s=60.0,
        on_state_change=alert_dispatch.breaker_alert_hook(tmp_path),
    )
    b = broker(alpaca, attempts=1, breakers={"account": breaker})
    alpaca.fail("GET", "/v2/account", *[500] * 5)
    for _ in range(2):
        with pytest.raises(BrokerUnavailable):
            b.account()
    assert breaker.state is BreakerState.OPEN
    sent = alpaca.requests

    with pytest.raises(CircuitOpenError, match="circuit 'alpaca' is open"):
        b.account()

    assert alpaca.requests == sent
    alerts = [
        json.loads(line) for line in (tmp_path / "logs" / "alerts.log").read_text().splitlines()
    ]
    assert any(a["severity"] == "CRITICAL" and a["source"] == "circuit_breaker" for a in alerts)


def test_retries_stop_as_soon_as_the_breaker_opens(alpaca):
    breaker = CircuitBreaker("alpaca", failure_threshold=2, reset_timeout_s=60.0)
    alpaca.fail("GET", "/v2/account", *[503] * 5)
    with pytest.raises(CircuitOpenError):
        broker(alpaca, attempts=5, breakers={"account": breaker}).account()
    assert alpaca.hits["GET", "/v2/account"] == 2


# --- An order is posted at most once --------------------------------------------------------------
def test_an_order_whose_answer_was_lost_is_looked_up_not_posted_again(alpaca):
    alpaca.fail("POST", ORDERS, "lost")  # Alpaca takes the AAPL order; its answer never arrives
    b = broker(alpaca)
    basket = pair_basket()
    cid = basket.orders[0].client_order_id

    placed = b.submit_basket(basket)

    assert [o.client_order_id for o in placed] == [o.client_order_id for o in basket.orders]
    (stored,) = alpaca.orders_for(cid)
    assert placed[0].id == stored["id"]
    assert [p["client_order_id"] for p in alpaca.posted].count(cid) == 1
    assert b.positions()["AAPL"].qty == 10


def test_a_restarted_broker_finds_the_basket_and_does_not_post_it_again(alpaca):
    first = broker(alpaca).submit_basket(pair_basket())
    assert alpaca.hits["POST", ORDERS] == 2

    again = broker(alpaca).submit_basket(pair_basket())  # a new process, the same decision

    assert alpaca.hits["POST", ORDERS] == 2
    assert [o.id for o in again] == [o.id for o in first]
    assert [o.status for o in again] == ["filled", "filled"]
    assert held_shares(alpaca) == {"AAPL": 10, "MSFT": -5}


def test_a_duplicate_client_id_answer_returns_the_existing_order(alpaca):
    basket = approved(leg("AAPL", Side.BUY, 10))
    (original,) = broker(alpaca).submit_basket(basket)
    alpaca.fail("GET", BY_CLIENT_ID, 404)  # the first look-up misses it (a stale replica)

    (found,) = broker(alpaca).submit_basket(basket)

    assert found.id == original.id
    assert found.status == "filled"
    assert alpaca.hits["POST", ORDERS] == 2  # the second POST was answered 422
    assert len(alpaca.orders_for(original.client_order_id)) == 1
    assert held_shares(alpaca) == {"AAPL": 10}


def test_an_id_alpaca_has_for_another_order_is_a_conflict_not_a_done_order(alpaca):
    """A copied home sends its original's ids: found by id is not enough, the order must be the
    same symbol, side and quantity (found at the look-up, and after a 422 duplicate)."""
    broker(alpaca).submit_basket(approved(leg("AAPL", Side.SELL, 66)))
    mine = approved(leg("AAPL", Side.BUY, 33))  # the same id

    with pytest.raises(OrderIdConflict, match="sell 66 AAPL, not this home's buy 33 AAPL"):
        broker(alpaca).submit_basket(mine)
    alpaca.fail("GET", BY_CLIENT_ID, 404)  # the look-up misses it: the POST is answered 422
    with pytest.raises(OrderIdConflict):
        broker(alpaca).submit_basket(mine)
    with pytest.raises(OrderIdConflict):
        broker(alpaca).known_orders(mine.orders)
    assert alpaca.hits["POST", ORDERS] == 2 and held_shares(alpaca) == {"AAPL": -66}


def test_only_an_approved_basket_is_accepted(alpaca):
    with pytest.raises(TypeError, match="ApprovedBasket"):
        broker(alpaca).submit_basket([leg("AAPL", Side.BUY, 10)])  # type: ignore[arg-type]
    assert alpaca.requests == 0


# --- Configuration --------------------------------------------------------------------------------
def test_from_environment_without_keys_names_the_credentials_command(tmp_path):
    with pytest.raises(ConfigurationError, match="credentials set ALPACA_API_KEY"):
        AlpacaBroker.from_environment(home=tmp_path)


def test_from_environment_takes_keys_and_base_urls_from_the_environment(
    alpaca, tmp_path, monkeypatch
):
    monkeypatch.setenv("ALPACA_API_KEY", KEY_ID)
    monkeypatch.setenv("ALPACA_SECRET_KEY", SECRET)
    monkeypatch.setenv("ALPACA_TRADING_URL", alpaca.url + "/")
    monkeypatch.setenv("ALPACA_DATA_URL", alpaca.url)
    b = AlpacaBroker.from_environment(home=tmp_path)

    assert b.account().equity == 100_000.0
    assert b.latest_prices(["AAPL"])["AAPL"].price == 184.25
    assert alpaca.requests == 2  # both answered by the local server, with the keys


def test_an_unknown_data_feed_is_a_configuration_error(alpaca):
    with pytest.raises(ConfigurationError, match="unknown Alpaca data feed 'nasdaq'"):
        broker(alpaca, data_feed="nasdaq")
