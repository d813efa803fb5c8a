"""The local Alpaca (tests/local_alpaca.py) behaves like Alpaca's paper API where our live loop
depends on it: asynchronous and partial fills, Alpaca's quantity rule, a settable clock and
prices, daily bars; driven through alpaca-py's own clients over HTTP on 127.0.0.1, and its
command line started as a process. Nothing here reaches the internet."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd
import pytest

pytest.importorskip("alpaca")
pytest.importorskip("pytest_httpserver")

import requests
from pytest_httpserver import HTTPServer

with warnings.catch_warnings():  # alpaca-py imports websockets' deprecated legacy API
    warnings.filterwarnings("ignore", "websockets.legacy is deprecated", DeprecationWarning)
    from alpaca.common.exceptions import APIError
    from alpaca.trading.client import TradingClient
    from alpaca.trading.enums import OrderSide, TimeInForce
    from alpaca.trading.requests import MarketOrderRequest

import process_stock_data as psd
from tests.helpers import ROOT
from tests.local_alpaca import KEY_ID, PRICES, SECRET, FakeAlpaca

# alpaca-py's import of its live-stream module warns about websockets' legacy API; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning")

PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
HEADERS = {"APCA-API-KEY-ID": KEY_ID, "APCA-API-SECRET-KEY": SECRET}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch) -> None:
    """No proxy between us and 127.0.0.1, and no Alpaca settings from the developer's shell."""
    for var in (*PROXIES, "ALPACA_API_KEY", "ALPACA_SECRET_KEY", "ALPACA_DATA_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("ALPACA_DATA_FEED", raising=False)


@pytest.fixture
def serve() -> Iterator[Callable[..., FakeAlpaca]]:
    """serve(**options): a FakeAlpaca with those options behind a threaded server on 127.0.0.1."""
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    fakes: list[FakeAlpaca] = []

    def start(**options: Any) -> FakeAlpaca:
        assert not fakes, "one local Alpaca per test"
        fake = FakeAlpaca(**options)
        server.expect_request(re.compile(".*")).respond_with_handler(fake.handle)
        server.start()
        fake.url = server.url_for("").rstrip("/")
        fakes.append(fake)
        return fake

    yield start
    for fake in fakes:
        fake.release.set()
    if server.is_running():
        server.stop()


def trading(fake: FakeAlpaca) -> TradingClient:
    return TradingClient(KEY_ID, SECRET, paper=True, url_override=fake.url)


def market(symbol: str, side: OrderSide, qty: int, cid: str) -> MarketOrderRequest:
    return MarketOrderRequest(
        symbol=symbol, qty=qty, side=side, time_in_force=TimeInForce.DAY, client_order_id=cid
    )


def states(client: TradingClient, order_id: str, until: str, timeout_s: float = 5.0) -> list:
    """The (status, filled_qty) an order goes through, polled every 20 ms until `until`."""
    seen: list[tuple[str, str]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        order: Any = client.get_order_by_id(order_id)
        state = (order.status.value, order.filled_qty)
        if not seen or seen[-1] != state:
            seen.append(state)
        if state[0] == until:
            return seen
        time.sleep(0.02)
    raise AssertionError(f"order {order_id} not {until} within {timeout_s} s: {seen}")


# --- Fills ----------------------------------------------------------------------------------------
def test_an_order_is_pending_new_then_filled_after_fill_after_s(serve):
    fake = serve(fill_after_s=0.5)
    client = trading(fake)
    posted_at = time.monotonic()

    order: Any = client.submit_order(market("AAPL", OrderSide.BUY, 10, "cid-a"))

    assert (order.status.value, order.filled_qty, order.filled_avg_price) == (
        "pending_new",
        "0",
        None,
    )
    assert [p.symbol for p in client.get_all_positions()] == []  # type: ignore[union-attr]
    assert states(client, str(order.id), "filled") == [("pending_new", "0"), ("filled", "10")]
    assert time.monotonic() - posted_at >= 0.5
    done: Any = client.get_order_by_id(order.id)
    assert float(done.filled_avg_price) == PRICES["AAPL"]
    assert done.filled_at is not None
    assert fake.positions == {"AAPL": [10, PRICES["AAPL"]]}
    assert fake.cash == pytest.approx(100_000.0 - 10 * PRICES["AAPL"])
    assert [(f["client_order_id"], f["qty"], f["filled_qty"]) for f in fake.fills] == [
        ("cid-a", 10, 10)
    ]


def test_a_partial_fill_then_the_rest_with_cumulative_qty_and_average(serve):
    fake = serve(fill_after_s=1.0, partial=True)
    client = trading(fake)

    order: Any = client.submit_order(market("MSFT", OrderSide.SELL, 7, "cid-m"))
    assert states(client, str(order.id), "partially_filled") == [
        ("pending_new", "0"),
        ("partially_filled", "3"),
    ]
    half: Any = client.get_order_by_id(order.id)
    assert float(half.filled_avg_price) == 370.60 and half.filled_at is None
    assert [o.id for o in client.get_orders()] == [order.id]  # type: ignore[union-attr]
    fake.prices["MSFT"] = 372.00  # the rest fills at the price of its moment
    assert states(client, str(order.id), "filled") == [("partially_filled", "3"), ("filled", "7")]

    done: Any = client.get_order_by_id(order.id)
    assert float(done.filled_avg_price) == pytest.approx((3 * 370.60 + 4 * 372.00) / 7)
    assert [(f["qty"], f["price"], f["filled_qty"]) for f in fake.fills] == [
        (3, 370.60, 3),
        (4, 372.00, 7),
    ]
    qty, avg = fake.positions["MSFT"]
    assert qty == -7 and avg == pytest.approx((3 * 370.60 + 4 * 372.00) / 7)
    assert fake.cash == pytest.approx(100_000.0 + 3 * 370.60 + 4 * 372.00)


def test_a_canceled_order_fills_no_further(serve):
    fake = serve(fill_after_s=1.0, partial=True)
    client = trading(fake)
    order: Any = client.submit_order(market("AAPL", OrderSide.BUY, 4, "cid-c"))
    states(client, str(order.id), "partially_filled")

    client.cancel_order_by_id(order.id)
    time.sleep(0.6)  # past the second fill's time

    done: Any = client.get_order_by_id(order.id)
    assert (done.status.value, done.filled_qty) == ("canceled", "2")
    assert fake.positions == {"AAPL": [2, PRICES["AAPL"]]}
    assert len(fake.fills) == 1


# --- Alpaca's quantity rule -----------------------------------------------------------------------
def test_a_flips_opening_sell_before_the_closing_sell_filled_is_refused(serve):
    fake = serve(fill_after_s=0.5, qty_rule=True, positions={"AAPL": (10, 180.0)})
    client = trading(fake)

    closing: Any = client.submit_order(market("AAPL", OrderSide.SELL, 10, "close"))
    (held,) = client.get_all_positions()  # type: ignore[misc]
    assert (held.qty, held.qty_available) == ("10", "0")
    with pytest.raises(APIError) as refused:
        client.submit_order(market("AAPL", OrderSide.SELL, 10, "open"))
    assert refused.value.status_code == 403
    assert "insufficient qty available for order (requested: 10, available: 0)" in str(
        refused.value
    )

    states(client, str(closing.id), "filled")
    opening: Any = client.submit_order(market("AAPL", OrderSide.SELL, 10, "open"))  # now flat
    states(client, str(opening.id), "filled")
    assert fake.positions["AAPL"] == [-10, PRICES["AAPL"]]
    assert [f["client_order_id"] for f in fake.fills] == ["close", "open"]


def test_an_order_crossing_zero_in_one_go_is_refused(serve):
    fake = serve(qty_rule=True, positions={"MSFT": (-5, 360.0)})
    with pytest.raises(APIError, match=r"requested: 8, available: 5") as refused:
        trading(fake).submit_order(market("MSFT", OrderSide.BUY, 8, "flip"))
    assert refused.value.status_code == 403
    assert fake.orders == [] and fake.positions == {"MSFT": [-5.0, 360.0]}


def test_while_flat_a_sell_is_allowed_despite_an_open_buy(serve):
    fake = serve(fill=False, qty_rule=True)
    client = trading(fake)
    client.submit_order(market("AAPL", OrderSide.BUY, 10, "buy"))
    sell: Any = client.submit_order(market("AAPL", OrderSide.SELL, 5, "sell"))
    assert sell.status.value == "accepted"
    assert len(client.get_orders()) == 2  # type: ignore[arg-type]


# --- Clock, prices, positions, bars ---------------------------------------------------------------
def test_the_clock_answers_the_set_values(serve):
    now = pd.Timestamp("2024-07-05 12:00:01.250000", tz="UTC")
    fake = serve(
        clock_now=now,
        is_open=False,
        next_open=pd.Timestamp("2024-07-05 13:30", tz="UTC"),
        next_close=pd.Timestamp("2024-07-05 20:00", tz="UTC"),
        stamp_fraction=pd.Timedelta(0),
    )
    raw = requests.get(f"{fake.url}/v2/clock", headers=HEADERS, timeout=5).json()
    assert raw["timestamp"] == "2024-07-05T08:00:01.250000-04:00"  # New York, summer time

    clock: Any = trading(fake).get_clock()

    assert pd.Timestamp(clock.timestamp) == now
    assert clock.is_open is False
    assert pd.Timestamp(clock.next_open) == pd.Timestamp("2024-07-05 13:30", tz="UTC")
    assert pd.Timestamp(clock.next_close) == pd.Timestamp("2024-07-05 20:00", tz="UTC")


def test_a_clock_callable_is_read_per_request_and_stamps_trades(serve):
    ticks = iter(pd.Timestamp(f"2024-01-03 15:00:0{i}", tz="UTC") for i in range(5))
    fake = serve(clock=lambda: next(ticks), stamp_fraction=pd.Timedelta(0))
    get = lambda path: requests.get(fake.url + path, headers=HEADERS, timeout=5).json()  # noqa: E731
    assert get("/v2/clock")["timestamp"] == "2024-01-03T10:00:00-05:00"
    trades = get("/v2/stocks/trades/latest?symbols=AAPL")["trades"]
    assert trades["AAPL"]["t"] == "2024-01-03T15:00:00.000000000Z"  # one second before 15:00:01


def test_a_foreign_position_is_listed_with_its_price(serve):
    fake = serve(positions={"KO": (-40, 60.0)}, prices={**PRICES, "KO": 61.5})
    client = trading(fake)

    (ko,) = client.get_all_positions()  # type: ignore[misc]

    assert (ko.symbol, ko.qty, ko.side.value) == ("KO", "-40", "short")
    assert (float(ko.current_price), float(ko.avg_entry_price)) == (61.5, 60.0)
    assert float(ko.market_value) == -40 * 61.5
    account: Any = client.get_account()
    assert float(account.equity) == pytest.approx(100_000.0 - 40 * 61.5)
    fake.prices["KO"] = 59.0
    (ko,) = client.get_all_positions()  # type: ignore[misc]
    assert float(ko.current_price) == 59.0


def test_bars_are_served_in_pages_to_fetch_alpaca(serve, monkeypatch):
    days = pd.DatetimeIndex(["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"])
    bars = pd.DataFrame(
        {"AAPL": [184.73, 183.35, 181.02, 180.29], "MSFT": [367.87, 367.49, 364.96, 367.75]},
        index=days,
    )
    fake = serve(bars=bars, bars_page_size=3)
    monkeypatch.setenv("ALPACA_DATA_URL", fake.url)

    data = psd.fetch_alpaca(
        ["AAPL", "MSFT"],
        pd.Timestamp("2024-01-03"),
        pd.Timestamp("2024-01-05"),
        api_key=KEY_ID,
        secret_key=SECRET,
    )

    pd.testing.assert_frame_equal(
        data.close, bars.loc["2024-01-03":], check_names=False, check_freq=False
    )
    assert fake.hits["GET", "/v2/stocks/bars"] == 2  # 6 bars in pages of 3


# --- The command line -----------------------------------------------------------------------------
def test_the_command_line_serves_until_terminated():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in PROXIES}
    args = ["--port", str(port), "--closed", "--hold", "AAPL=-60", "--fill-after", "0.5"]
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.local_alpaca", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()
            try:
                answer = requests.get(f"{url}/v2/clock", headers=HEADERS, timeout=2)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "the local Alpaca did not answer"
                time.sleep(0.2)
        clock = answer.json()
        assert answer.status_code == 200 and clock["is_open"] is False
        now = pd.Timestamp.now(tz="UTC")
        assert abs(pd.Timestamp(clock["timestamp"]) - now) < pd.Timedelta(seconds=30)
        assert now < pd.Timestamp(clock["next_open"]) <= now + pd.Timedelta(days=5)
        (held,) = requests.get(f"{url}/v2/positions", headers=HEADERS, timeout=5).json()
        assert (held["symbol"], held["qty"]) == ("AAPL", "-60")
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert (
        f"ALPACA_API_KEY={KEY_ID} ALPACA_SECRET_KEY={SECRET} "
        f"ALPACA_TRADING_URL={url} ALPACA_DATA_URL={url}"
    ) in out
    assert "GET /v2/clock 200" in err.splitlines()
    assert "GET /v2/positions 200" in err.splitlines()
