"""A local Alpaca: Alpaca's trading and market-data REST API in memory, answering the paths
alpaca-py 0.44 calls with the JSON field names of its models (TradeAccount, Order, Position,
Clock, latest trades, bars). A test double of Alpaca for tests and manual demos; our code and
alpaca-py run unmodified against it on 127.0.0.1.

In tests, serve `FakeAlpaca.handle` from pytest-httpserver (see tests/test_alpaca_broker.py). For
a manual demo, run it standalone (werkzeug, threaded):

    python -m tests.local_alpaca --port 8765 [--fill-after 1.0] [--partial] [--closed]
                                 [--hold AAPL=-60,MSFT=30] [--cash 100000]

It prints the environment variables that point `python main.py live --broker alpaca` at it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import math
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pandas as pd
from werkzeug import Request, Response

KEY_ID, SECRET = "PKTEST1234567890", "local-test-secret-0123456789"
NOW = pd.Timestamp("2024-01-03 15:00:00", tz="UTC")  # 10:00 New York, the session is open
NEXT_OPEN = pd.Timestamp("2024-01-04 14:30", tz="UTC")  # 09:30 New York the next day
NEXT_CLOSE = pd.Timestamp("2024-01-03 21:00", tz="UTC")  # 16:00 New York today
# Alpaca's clock and trade times carry sub-second digits; the fixture's answers have these.
STAMP_FRACTION = pd.Timedelta(nanoseconds=123_456_789)
PRICES = {"AAPL": 184.25, "MSFT": 370.60}
STALL_S = 2.0  # how long a stalled answer is held back at most (released when the test ends)
ORDERS = "/v2/orders"
BY_CLIENT_ID = "/v2/orders:by_client_order_id"
BARS = "/v2/stocks/bars"
BAR_VOLUME = 1_000_000  # every served bar's volume
NEW_YORK = "America/New_York"
WORKING = ("new", "accepted", "pending_new", "partially_filled")  # open, not done


def _iso(stamp: pd.Timestamp) -> str:
    return stamp.tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _iso_ns(stamp: pd.Timestamp) -> str:
    """RFC 3339 in UTC with nanoseconds, as the market-data API writes trade times."""
    utc = stamp.tz_convert("UTC")
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond * 1000 + utc.nanosecond:09d}Z"


def _new_york(stamp: pd.Timestamp) -> str:
    """The clock's format: New York offset, microseconds only when there are any."""
    return stamp.tz_convert(NEW_YORK).floor("us").isoformat()


def _error(status: int, message: str, **extra: Any) -> Response:
    """Alpaca's error body: {"code": <8 digits>, "message": ..., more fields for some}."""
    body = {"code": status * 100_000 + 10_000, "message": message, **extra}
    return Response(json.dumps(body), status=status, content_type="application/json")


def _price_text(value: float) -> str:
    """Cents as Alpaca writes them ("184.25"); an average of fills at several prices keeps more."""
    cents = round(value * 100)
    return f"{value:.2f}" if abs(value * 100 - cents) < 1e-6 else f"{value:.6f}".rstrip("0")


_MESSAGES = {
    400: "qty must be > 0",
    401: "request is not authorized",
    403: "insufficient buying power",
    404: "order not found",
    422: "invalid order",
    429: "rate limit exceeded",
    500: "internal server error occurred",
    503: "service unavailable",
}


class FakeAlpaca:
    """Alpaca's trading and market-data REST API in memory.

    Orders (market, day): by default (`fill_after_s` 0) a POST is answered "accepted" and the
    order fills at once at `prices[symbol]`. With `fill_after_s` > 0 the POST is answered
    "pending_new" (filled_qty "0") and the order fills that many wall-clock seconds later
    (time.monotonic); with `partial` too it fills floor(qty/2) shares at half that time
    ("partially_filled") and the rest at `fill_after_s` ("filled"). Due fills are applied
    lazily at the start of every request, at the price of that moment. `fill = False`: orders
    posted while it is off never fill (they stay open until canceled). Orders fill whether or
    not `is_open` says the market is open. An order for a symbol without a price: 422.

    `qty_rule` (Alpaca's rule, off by default): while long, a sell may not exceed the held
    shares minus the unfilled rest of open sell orders; while short, a buy likewise (so no
    order takes a position from long to short or back in one go). Refused: HTTP 403
    "insufficient qty available for order (requested: N, available: M)". While flat every
    order is allowed (open orders of the other direction do not count), so a fill can still
    cross zero then; the position's average is then that fill's price.

    Clock: `clock_now` (or `clock()` when set, read per request), `is_open`, `next_open`,
    `next_close`; the answer's timestamp and latest-trade times (`now - 1 s`) carry
    `stamp_fraction` as sub-second digits (set pd.Timedelta(0) for exact times).

    Market data: latest trades from `prices` (symbols without a price are left out); daily bars
    from `bars` (dates x tickers closes; o = h = l = c = close, v = BAR_VOLUME), in pages of
    `bars_page_size` (else the request's limit, else 1000) linked by next_page_token.

    Records: `hits` (requests per (method, path)), `posted` (every POST /v2/orders body),
    `orders` (the order JSONs), `fills` (one dict per fill event: order_id, client_order_id,
    symbol, side, qty of this fill, price, filled_qty cumulative, at), `feeds` (the feed of
    every latest-trades request).

    `fail(method, path, *faults)` queues what the next requests to that path get instead of the
    normal answer: an HTTP status (Alpaca's error body), "stall" (the answer comes after the
    client gave up) or "lost" (the request takes effect, then its answer stalls)."""

    def __init__(
        self,
        *,
        fill: bool = True,
        fill_after_s: float = 0.0,
        partial: bool = False,
        qty_rule: bool = False,
        cash: float = 100_000.0,
        positions: Mapping[str, tuple[float, float] | list[float]] | None = None,
        prices: Mapping[str, float] | None = None,
        bars: pd.DataFrame | None = None,
        bars_page_size: int | None = None,
        clock_now: pd.Timestamp = NOW,
        clock: Callable[[], pd.Timestamp] | None = None,
        is_open: bool = True,
        next_open: pd.Timestamp = NEXT_OPEN,
        next_close: pd.Timestamp = NEXT_CLOSE,
        stamp_fraction: pd.Timedelta = STAMP_FRACTION,
    ) -> None:
        self.url = ""
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.hits: Counter[tuple[str, str]] = Counter()
        self.script: dict[tuple[str, str], list[int | str]] = {}
        self.orders: list[dict[str, Any]] = []
        self.posted: list[dict[str, Any]] = []  # every POST /v2/orders body
        self.fills: list[dict[str, Any]] = []  # every fill event, partial ones included
        # symbol -> [signed qty, average entry]
        self.positions: dict[str, list[float]] = {
            s: [float(q), float(a)] for s, (q, a) in (positions or {}).items()
        }
        self.cash = cash
        self.fill = fill
        self.fill_after_s = fill_after_s
        self.partial = partial
        self.qty_rule = qty_rule
        self.prices: dict[str, float] = dict(PRICES if prices is None else prices)
        self.bars = bars
        self.bars_page_size = bars_page_size
        self.clock_now = clock_now
        self.clock = clock
        self.is_open = is_open
        self.next_open = next_open
        self.next_close = next_close
        self.stamp_fraction = stamp_fraction
        self.feeds: list[str] = []
        self.account_id = str(uuid.uuid4())
        # Scheduled fills: (due on time.monotonic, order, shares, fill time on the fake clock).
        self._due: list[tuple[float, dict[str, Any], int, pd.Timestamp]] = []

    # --- Test controls ---------------------------------------------------------------------------
    def fail(self, method: str, path: str, *faults: int | str) -> None:
        self.script.setdefault((method, path), []).extend(faults)

    @property
    def requests(self) -> int:
        return sum(self.hits.values())

    def orders_for(self, cid: str) -> list[dict[str, Any]]:
        return [o for o in self.orders if o["client_order_id"] == cid]

    def now(self) -> pd.Timestamp:
        """The exchange's time: `clock()` when set, else `clock_now`."""
        return self.clock() if self.clock is not None else self.clock_now

    def settle(self) -> None:
        """Apply the fills that are due (call under `lock`; every request does)."""
        if not self._due:
            return
        moment = time.monotonic()
        due = [d for d in self._due if d[0] <= moment]
        self._due = [d for d in self._due if d[0] > moment]
        for _, order, shares, stamp in sorted(due, key=lambda d: d[0]):
            if order["status"] in WORKING:  # not canceled meanwhile
                self._apply_fill(order, shares, stamp)

    # --- HTTP ------------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        key = (request.method, request.path)
        with self.lock:
            self.settle()
            self.hits[key] += 1
            queue = self.script.get(key)
            fault = queue.pop(0) if queue else None
        if isinstance(fault, int):
            return _error(fault, _MESSAGES[fault])
        if fault == "stall":
            self.release.wait(STALL_S)
        if request.headers.get("APCA-API-KEY-ID") != KEY_ID or (
            request.headers.get("APCA-API-SECRET-KEY") != SECRET
        ):
            return _error(401, _MESSAGES[401])
        with self.lock:
            self.settle()
            response = self._route(request)
        if fault == "lost":
            self.release.wait(STALL_S)
        return response

    def _route(self, request: Request) -> Response:
        method, path = request.method, request.path
        if (method, path) == ("GET", "/v2/account"):
            return self._json(self._account())
        if (method, path) == ("GET", "/v2/clock"):
            return self._json(
                {
                    "timestamp": _new_york(self.now() + self.stamp_fraction),
                    "is_open": self.is_open,
                    "next_open": _new_york(self.next_open),
                    "next_close": _new_york(self.next_close),
                }
            )
        if (method, path) == ("GET", "/v2/positions"):
            return self._json([self._position(s) for s, p in self.positions.items() if p[0]])
        if (method, path) == ("GET", "/v2/stocks/trades/latest"):
            self.feeds.append(request.args.get("feed", ""))
            symbols = request.args.get("symbols", "").split(",")
            return self._json({"trades": {s: self._trade(s) for s in symbols if s in self.prices}})
        if (method, path) == ("GET", BARS):
            return self._bars(request)
        if (method, path) == ("POST", ORDERS):
            return self._submit(request.get_json())
        if (method, path) == ("GET", ORDERS):
            status = request.args.get("status", "open")  # Alpaca's default: open orders
            assert status in ("open", "closed", "all")
            return self._json(
                [
                    o
                    for o in self.orders
                    if status == "all" or (o["status"] in WORKING) == (status == "open")
                ]
            )
        if (method, path) == ("GET", BY_CLIENT_ID):
            found = self.orders_for(request.args.get("client_order_id", ""))
            return self._json(found[0]) if found else _error(404, _MESSAGES[404])
        if method == "DELETE" and path.startswith(ORDERS + "/"):
            return self._cancel(path.rsplit("/", 1)[1])
        if method == "GET" and path.startswith(ORDERS + "/"):
            found = [o for o in self.orders if o["id"] == path.rsplit("/", 1)[1]]
            return self._json(found[0]) if found else _error(404, _MESSAGES[404])
        return _error(404, "endpoint not found")

    @staticmethod
    def _json(payload: Any) -> Response:
        return Response(json.dumps(payload), content_type="application/json")

    # --- Exchange --------------------------------------------------------------------------------
    def _submit(self, body: dict[str, Any]) -> Response:
        self.posted.append(body)
        cid = body.get("client_order_id") or str(uuid.uuid4())
        if self.orders_for(cid):
            return _error(422, "client_order_id must be unique")
        symbol, side, qty = body["symbol"], body["side"], int(float(body["qty"]))
        assert (body["type"], body["time_in_force"]) == ("market", "day")
        if symbol not in self.prices:
            return _error(422, f"asset {symbol!r} not found")
        if self.qty_rule:
            refused = self._qty_refusal(symbol, side, qty)
            if refused is not None:
                return refused
        now = self.now()
        stamp = _iso(now)
        later = self.fill and self.fill_after_s > 0
        order = {
            "id": str(uuid.uuid4()),
            "client_order_id": cid,
            "created_at": stamp,
            "updated_at": stamp,
            "submitted_at": stamp,
            "filled_at": None,
            "expired_at": None,
            "expires_at": self.next_close.tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ"),
            "canceled_at": None,
            "failed_at": None,
            "replaced_at": None,
            "replaced_by": None,
            "replaces": None,
            "asset_id": str(uuid.uuid5(uuid.NAMESPACE_DNS, symbol)),
            "symbol": symbol,
            "asset_class": "us_equity",
            "notional": None,
            "qty": str(qty),
            "filled_qty": "0",
            "filled_avg_price": None,
            "order_class": "",
            "order_type": "market",
            "type": "market",
            "side": side,
            "position_intent": f"{side}_to_open",
            "time_in_force": "day",
            "limit_price": None,
            "stop_price": None,
            "status": "pending_new" if later else "accepted",
            "extended_hours": False,
            "legs": None,
            "trail_percent": None,
            "trail_price": None,
            "hwm": None,
            "subtag": None,
            "source": None,
        }
        answer = dict(order)
        self.orders.append(order)
        if later:
            self._schedule(order, now)
        elif self.fill:
            self._apply_fill(order, qty, now + pd.Timedelta(milliseconds=20))
        return self._json(answer)

    def _schedule(self, order: dict[str, Any], now: pd.Timestamp) -> None:
        qty, started = int(order["qty"]), time.monotonic()
        first = qty // 2 if self.partial else 0
        parts = [(self.fill_after_s / 2, first), (self.fill_after_s, qty - first)]
        for delay, shares in parts:
            if shares:
                stamp = now + pd.Timedelta(seconds=delay)
                self._due.append((started + delay, order, shares, stamp))

    def _remaining(self, symbol: str, side: str) -> int:
        """Unfilled shares of the open `side` orders on `symbol`."""
        return sum(
            int(o["qty"]) - int(o["filled_qty"])
            for o in self.orders
            if o["symbol"] == symbol and o["side"] == side and o["status"] in WORKING
        )

    def _qty_refusal(self, symbol: str, side: str, qty: int) -> Response | None:
        held = int(self.positions.get(symbol, [0, 0.0])[0])
        closing = (held > 0 and side == "sell") or (held < 0 and side == "buy")
        if not closing:
            return None
        reserved = self._remaining(symbol, side)
        available = max(abs(held) - reserved, 0)
        if qty <= available:
            return None
        return _error(
            403,
            f"insufficient qty available for order (requested: {qty}, available: {available})",
            symbol=symbol,
            existing_qty=str(abs(held)),
            held_for_orders=str(reserved),
            available=str(available),
        )

    def _apply_fill(self, order: dict[str, Any], shares: int, stamp: pd.Timestamp) -> None:
        """`shares` of `order` fill at the current price: position, cash and the order."""
        symbol = order["symbol"]
        price = self.prices[symbol]
        signed = shares if order["side"] == "buy" else -shares
        held, avg = self.positions.get(symbol, [0, 0.0])
        new = held + signed
        if held == 0 or (held > 0) == (signed > 0):  # opening or adding: a weighted average
            avg = (avg * abs(held) + price * shares) / abs(new)
        elif new and (new > 0) != (held > 0):  # crossed zero: the rest opened at this price
            avg = price
        self.positions[symbol] = [new, avg if new else 0.0]
        self.cash -= signed * price
        before = int(order["filled_qty"])
        done = before + shares
        paid = float(order["filled_avg_price"] or 0.0) * before + price * shares
        filled = done == int(order["qty"])
        order.update(
            status="filled" if filled else "partially_filled",
            filled_qty=str(done),
            filled_avg_price=_price_text(paid / done),
            updated_at=_iso(stamp),
        )
        if filled:
            order["filled_at"] = _iso(stamp)
        self.fills.append(
            {
                "order_id": order["id"],
                "client_order_id": order["client_order_id"],
                "symbol": symbol,
                "side": order["side"],
                "qty": shares,
                "price": price,
                "filled_qty": done,
                "at": stamp,
            }
        )

    def _cancel(self, order_id: str) -> Response:
        found = [o for o in self.orders if o["id"] == order_id]
        if not found:
            return _error(404, "order not found")
        order = found[0]
        if order["status"] in ("filled", "canceled", "expired", "rejected"):
            return _error(422, f"order is not cancelable (status {order['status']})")
        stamp = _iso(self.now() + pd.Timedelta(seconds=1))
        order.update(status="canceled", canceled_at=stamp)
        self._due = [d for d in self._due if d[1] is not order]
        return Response(status=204)

    def _mark(self, symbol: str, avg: float) -> float:
        """The position's current price: the last trade, else its average entry."""
        return self.prices.get(symbol, avg)

    def _account(self) -> dict[str, Any]:
        values = [q * self._mark(s, a) for s, (q, a) in self.positions.items()]
        long_mv = sum(v for v in values if v > 0)
        short_mv = sum(v for v in values if v < 0)
        equity = self.cash + long_mv + short_mv
        return {
            "id": self.account_id,
            "account_number": "PA3LOCALTEST",
            "status": "ACTIVE",
            "crypto_status": "ACTIVE",
            "currency": "USD",
            "buying_power": f"{2 * equity:.2f}",
            "regt_buying_power": f"{2 * equity:.2f}",
            "non_marginable_buying_power": f"{equity:.2f}",
            "options_buying_power": f"{equity:.2f}",
            "cash": f"{self.cash:.2f}",
            "accrued_fees": "0",
            "pending_transfer_in": "0",
            "pending_transfer_out": "0",
            "portfolio_value": f"{equity:.2f}",
            "trading_blocked": False,
            "transfers_blocked": False,
            "account_blocked": False,
            "created_at": "2023-05-01T14:02:11.123456Z",
            "trade_suspended_by_user": False,
            "multiplier": "2",
            "shorting_enabled": True,
            "equity": f"{equity:.2f}",
            "last_equity": "100000",
            "long_market_value": f"{long_mv:.2f}",
            "short_market_value": f"{short_mv:.2f}",
            "initial_margin": "0",
            "maintenance_margin": "0",
            "last_maintenance_margin": "0",
            "sma": "0",
            "options_approved_level": 0,
            "options_trading_level": 0,
        }

    def _position(self, symbol: str) -> dict[str, Any]:
        qty, avg = self.positions[symbol]
        price = self._mark(symbol, avg)
        held_for_orders = self._remaining(symbol, "sell" if qty > 0 else "buy")
        available = max(abs(qty) - held_for_orders, 0) * (1 if qty > 0 else -1)
        return {
            "asset_id": str(uuid.uuid5(uuid.NAMESPACE_DNS, symbol)),
            "symbol": symbol,
            "exchange": "NASDAQ",
            "asset_class": "us_equity",
            "asset_marginable": True,
            "qty": str(int(qty)),  # negative for a short
            "qty_available": str(int(available)),
            "avg_entry_price": f"{avg:.2f}",
            "side": "long" if qty > 0 else "short",
            "market_value": f"{qty * price:.2f}",
            "cost_basis": f"{qty * avg:.2f}",
            "unrealized_pl": f"{qty * (price - avg):.2f}",
            "unrealized_plpc": "0",
            "unrealized_intraday_pl": f"{qty * (price - avg):.2f}",
            "unrealized_intraday_plpc": "0",
            "current_price": f"{price:.2f}",
            "lastday_price": f"{price:.2f}",
            "change_today": "0",
        }

    def _trade(self, symbol: str) -> dict[str, Any]:
        """The latest-trades endpoint's short keys (t, x, p, s, c, i, z), nanosecond time."""
        return {
            "t": _iso_ns(self.now() - pd.Timedelta(seconds=1) + self.stamp_fraction),
            "x": "V",
            "p": self.prices[symbol],
            "s": 100,
            "c": ["@"],
            "i": 52983525029461,
            "z": "C",
        }

    def _bars(self, request: Request) -> Response:
        """Daily bars of the requested symbols with start <= t <= end (t: midnight New York),
        symbol by symbol, in pages linked by next_page_token ("page-<offset>")."""
        if request.args.get("timeframe", "1Day") != "1Day":
            return _error(422, "only daily bars (timeframe 1Day) are served here")
        start = _utc(request.args.get("start"), pd.Timestamp.min.tz_localize("UTC"))
        end = _utc(request.args.get("end"), pd.Timestamp.max.tz_localize("UTC"))
        rows: list[tuple[str, dict[str, Any]]] = []
        table = self.bars if self.bars is not None else pd.DataFrame()
        for symbol in request.args.get("symbols", "").split(","):
            if symbol not in table.columns:
                continue
            for day, close in table[symbol].items():
                stamp = pd.Timestamp(day).normalize().tz_localize(NEW_YORK)
                if math.isnan(close) or not start <= stamp <= end:
                    continue
                rows.append((symbol, _bar(stamp, float(close))))
        offset = int((request.args.get("page_token") or "page-0").removeprefix("page-"))
        size = self.bars_page_size or int(request.args.get("limit") or 1000)
        page = rows[offset : offset + size]
        bars: dict[str, list[dict[str, Any]]] = {}
        for symbol, bar in page:
            bars.setdefault(symbol, []).append(bar)
        after = offset + len(page)
        token = f"page-{after}" if after < len(rows) else None
        return self._json({"bars": bars, "next_page_token": token})


@contextlib.contextmanager
def serving() -> Iterator[tuple[Any, dict[str, FakeAlpaca]]]:
    """One threaded pytest-httpserver on 127.0.0.1 (a stalled answer does not block the retry)
    sending every request to `current["fake"]`: a module's tests share the server, each with a
    fresh FakeAlpaca."""
    import re

    from pytest_httpserver import HTTPServer

    current: dict[str, FakeAlpaca] = {}
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.expect_request(re.compile(".*")).respond_with_handler(
        lambda request: current["fake"].handle(request)
    )
    server.start()
    try:
        yield server, current
    finally:
        server.stop()


def _utc(text: str | None, default: pd.Timestamp) -> pd.Timestamp:
    if not text:
        return default
    stamp = pd.Timestamp(text)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _bar(stamp: pd.Timestamp, close: float) -> dict[str, Any]:
    """One daily bar as Alpaca writes it: t at midnight New York in UTC, o = h = l = c."""
    price = round(close, 4)
    return {
        "t": stamp.tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ"),
        "o": price,
        "h": price,
        "l": price,
        "c": price,
        "v": BAR_VOLUME,
        "n": BAR_VOLUME // 100,
        "vw": price,
    }


# --- Standalone ----------------------------------------------------------------------------------
SESSIONS = 750  # daily bars served by the command line


def recent_bars(now: pd.Timestamp, sessions: int = SESSIONS) -> pd.DataFrame:
    """The bundled closes (skfolio's 20 US stocks, offline), their last `sessions` rows re-dated
    onto the NYSE sessions that closed before `now`, so a live loop sees fresh daily bars."""
    import pandas_market_calendars as mcal
    from skfolio.datasets import load_sp500_dataset

    close = load_sp500_dataset().astype("float64").iloc[-sessions:]
    close.columns = [str(c) for c in close.columns]
    days = 2 * sessions + 30  # calendar days that hold `sessions` sessions with room to spare
    schedule = mcal.get_calendar("NYSE").schedule(
        start_date=(now - pd.Timedelta(days=days)).date(), end_date=now.date()
    )
    closed = schedule.index[schedule["market_close"] < now][-sessions:]
    close.index = pd.DatetimeIndex(closed).normalize().rename("date")
    return close


@functools.lru_cache(maxsize=4)
def _nyse_days(first: datetime.date, last: datetime.date) -> pd.DataFrame:
    """NYSE sessions first..last (market_open, market_close in UTC); cached, as it is slow."""
    import pandas_market_calendars as mcal

    return mcal.get_calendar("NYSE").schedule(start_date=first, end_date=last)


def wall_session(now: pd.Timestamp, closed: bool) -> tuple[bool, pd.Timestamp, pd.Timestamp]:
    """(is_open, next_open, next_close) for the command line: open unless `closed`; the next
    NYSE close after `now`, and the next open after that close (open) or after now (closed)."""
    today = now.tz_convert(NEW_YORK).date()
    schedule = _nyse_days(today - datetime.timedelta(days=1), today + datetime.timedelta(days=14))
    next_close = schedule["market_close"][schedule["market_close"] > now].iloc[0]
    after = next_close if not closed else now
    next_open = schedule["market_open"][schedule["market_open"] > after].iloc[0]
    return not closed, next_open, next_close


def _holdings(text: str) -> dict[str, int]:
    """ "AAPL=-60,MSFT=30" -> {"AAPL": -60, "MSFT": 30}."""
    held: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        symbol, sep, qty = part.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"--hold wants SYMBOL=SHARES, got {part!r}")
        held[symbol.strip().upper()] = int(qty)
    return held


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.local_alpaca",
        description=(
            "A local Alpaca paper account on 127.0.0.1 (trading and market-data REST API, in "
            "memory, for demos of `python main.py live --broker alpaca`). The clock is the wall "
            "clock; prices and daily bars are the bundled closes of 20 US stocks (skfolio, "
            f"offline), their last {SESSIONS} rows re-dated onto the NYSE sessions that closed "
            "before now. Alpaca's quantity rule is on: an order that would flip a position or "
            "sell shares already held for open orders is refused (HTTP 403)."
        ),
    )
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free)")
    parser.add_argument(
        "--fill-after",
        type=float,
        default=0.0,
        metavar="S",
        help="market orders fill S seconds after they are posted (default 0: at once)",
    )
    parser.add_argument(
        "--partial",
        action="store_true",
        help="with --fill-after: fill half the shares at S/2 (partially_filled), the rest at S",
    )
    parser.add_argument(
        "--closed", action="store_true", help="the market is closed (default: always open)"
    )
    parser.add_argument(
        "--hold",
        type=_holdings,
        default={},
        metavar="SYM=N,...",
        help="preset positions in signed shares, e.g. AAPL=-60,MSFT=30 (average: the last close)",
    )
    parser.add_argument(
        "--cash", type=float, default=100_000.0, help="the account's cash (default 100000)"
    )
    parser.add_argument(
        "--allow-flips",
        action="store_true",
        help="switch Alpaca's quantity rule off (orders may flip a position in one go)",
    )
    return parser


def build(args: argparse.Namespace) -> FakeAlpaca:
    """The command line's FakeAlpaca (wall clock, bundled bars re-dated to recent sessions)."""
    now = pd.Timestamp.now(tz="UTC")
    bars = recent_bars(now)
    prices = {s: round(float(c), 2) for s, c in bars.iloc[-1].items() if not math.isnan(c)}
    unknown = sorted(set(args.hold) - set(prices))
    if unknown:
        raise SystemExit(f"--hold: no prices for {', '.join(unknown)} (known: {', '.join(prices)})")
    fake = FakeAlpaca(
        fill_after_s=args.fill_after,
        partial=args.partial,
        qty_rule=not args.allow_flips,
        cash=args.cash,
        positions={s: (q, prices[s]) for s, q in args.hold.items()},
        prices=prices,
        bars=bars,
        stamp_fraction=pd.Timedelta(0),
    )

    def wall_clock() -> pd.Timestamp:  # called per request, under the fake's lock
        stamp = pd.Timestamp.now(tz="UTC")
        fake.is_open, fake.next_open, fake.next_close = wall_session(stamp, args.closed)
        return stamp

    fake.is_open, fake.next_open, fake.next_close = wall_session(now, args.closed)
    fake.clock = wall_clock
    return fake


def main(argv: list[str] | None = None) -> int:
    from werkzeug.serving import WSGIRequestHandler, make_server

    args = _parser().parse_args(argv)
    fake = build(args)

    @Request.application
    def app(request: Request) -> Response:
        response = fake.handle(request)
        print(f"{request.method} {request.path} {response.status_code}", file=sys.stderr)
        sys.stderr.flush()
        return response

    class Quiet(WSGIRequestHandler):
        def log_request(self, *args: Any, **kwargs: Any) -> None:  # one line of ours instead
            pass

    server = make_server("127.0.0.1", args.port, app, threaded=True, request_handler=Quiet)
    url = f"http://127.0.0.1:{server.server_port}"
    fake.url = url
    held = ", ".join(f"{s} {int(q):+d}" for s, (q, _) in fake.positions.items()) or "none"
    print(f"local Alpaca on {url} (Ctrl-C stops it)")
    print(
        f"export ALPACA_API_KEY={KEY_ID} ALPACA_SECRET_KEY={SECRET} "
        f"ALPACA_TRADING_URL={url} ALPACA_DATA_URL={url}"
    )
    fills = f"after {args.fill_after:g} s" if args.fill_after else "at once"
    if args.partial and args.fill_after:
        fills += " in two parts"
    bars = fake.bars if fake.bars is not None else pd.DataFrame()
    print(
        f"market {'open' if fake.is_open else 'closed'}; daily bars "
        f"{bars.index[0]:%Y-%m-%d}..{bars.index[-1]:%Y-%m-%d} of {', '.join(bars.columns)}; "
        f"positions {held}; cash {fake.cash:.2f}; orders fill {fills}"
    )
    sys.stdout.flush()

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        fake.release.set()
    print("local Alpaca stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
