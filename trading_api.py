"""Brokers behind one interface; each is a `pair_engine.Venue` that the engine's decision step
(`pair_engine.decide`) sends its approved baskets to.

- `SimulatedBroker` (the default): the paper account; fills through `OrderExecutor` with the
  backtest's cost model at the latest bar's close, booked in the backtest's `Ledger`, its state
  persisted atomically so a restart continues where it stopped.
- `AlpacaBroker`: alpaca-py's TradingClient (paper unless live), base URLs configurable.

Quantities are whole shares (int); the simulated broker also takes fractional shares (floats,
kept as floats in its state file) when the sizing asks for them. Alpaca does not: it allows no
fractional short sale and only fractional market DAY orders, so the live loop refuses
`fractional_shares` with it at start-up (`Broker.fractional_shares`).

Invariants:
- A broker accepts only an `ApprovedBasket`, which only `RiskManager.pre_trade_check` creates:
  no order reaches a broker around the risk gate.
- Client order ids are derived from (strategy, bar, signal bar, leg, purpose): a retry or a
  restart of the same decision produces the same ids, and an order whose id the broker already
  knows is looked up, never submitted again.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import pandas as pd

import pair_engine as pe
from atomic_io import atomic_write_json
from data_validation import NEW_YORK, MarketClock, market_clock
from error_handling import BrokerError, CircuitBreaker, ConfigurationError
from trading_execution import (
    ApprovedBasket,
    BarQuote,
    ExecutionConfig,
    Order,
    OrderExecutor,
    OrderStatus,
    Purpose,
    Qty,
    Side,
    as_qty,
)

log = logging.getLogger(__name__)

_STATE_VERSION = 2


# --- Records --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Account:
    """The broker's view of the account, USD."""

    equity: float
    cash: float
    buying_power: float
    status: str = "ACTIVE"
    #: The broker's id of the account (Alpaca's account UUID; the paper account's `sim-...`):
    #: a trading home records it at its first start and trades no other (home_identity).
    account_id: str = ""


@dataclass(frozen=True)
class Position:
    """A holding: `qty` signed shares (short < 0; a float in fractional shares), average entry
    price and last price (USD)."""

    symbol: str
    qty: Qty
    avg_entry_price: float
    market_price: float

    @property
    def market_value(self) -> float:
        return self.qty * self.market_price


@dataclass(frozen=True)
class BrokerOrder:
    """An order as the broker knows it: `filled_qty` shares of `qty` filled so far at an average
    `filled_avg_price` (USD; None before the first fill); `status` its place in the life cycle
    (a canceled or expired order may have filled part of its shares)."""

    id: str
    client_order_id: str
    symbol: str
    side: Side
    qty: Qty
    filled_qty: Qty
    filled_avg_price: float | None
    status: OrderStatus
    submitted_at: pd.Timestamp
    purpose: str = Purpose.ENTRY.value
    fees: float = 0.0  # explicit fees charged (simulated broker)

    @property
    def done(self) -> bool:
        """No more shares will fill."""
        return self.status.done


@dataclass(frozen=True)
class FillPolicy:
    """How long the engine waits for a real broker's asynchronous fills, and what it does with a
    reduce order still unfilled at the bound (a flip's increase orders wait for its reduce
    orders: Alpaca refuses to open a short while the long is still held).

    `timeout_s`: the bound (seconds); `poll_s`: between looks at the orders; `unfilled_reduce`:
    "cancel" (the default: nothing is left working when the loop moves on) or "leave" (it stays
    open, is saved as open and resolved at the next iteration)."""

    timeout_s: float = 30.0
    poll_s: float = 0.5
    unfilled_reduce: str = "cancel"

    def __post_init__(self) -> None:
        if not self.timeout_s >= 0:
            raise ConfigurationError(f"--fill-timeout must be >= 0 seconds, got {self.timeout_s}")
        if not self.poll_s > 0:
            raise ConfigurationError(f"fill poll interval must be > 0 seconds, got {self.poll_s}")
        if self.unfilled_reduce not in ("cancel", "leave"):
            raise ConfigurationError(
                f"--unfilled-reduce must be 'cancel' or 'leave', got {self.unfilled_reduce!r}"
            )


@dataclass(frozen=True)
class Quote:
    """The latest price of a symbol and when it was observed (tz-aware)."""

    symbol: str
    price: float
    time: pd.Timestamp


# --- The interface --------------------------------------------------------------------------------
class Broker(abc.ABC):
    """What the live loop needs from a broker."""

    name: str = "broker"
    #: pair_engine.Venue: a simulated broker fills at a bar's close already known to the loop.
    simulated: bool = False
    #: The risk gate applies live rules (market hours, constants' price sanity ranges).
    live_checks: bool = True
    #: It trades fractional shares the way the engine sizes them (short sales included).
    fractional_shares: bool = False
    #: Prefix of the client order ids this broker is sent (the live loop sets `pt-<home tag>`).
    order_prefix: str = "pt"
    fill_policy: FillPolicy = FillPolicy()
    #: Set by the live loop: a stop (SIGTERM) cuts retries and waits short.
    stop_event: threading.Event | None = None
    #: True while the loop's thread waits on a request: a stop signal may interrupt it there
    #: (`StopRequested` raised from the handler), and nowhere else.
    in_request: bool = False

    @abc.abstractmethod
    def account(self) -> Account: ...

    @abc.abstractmethod
    def positions(self) -> dict[str, Position]: ...

    @abc.abstractmethod
    def submit_basket(self, basket: ApprovedBasket) -> list[BrokerOrder]:
        """Submit every order of an approved basket (an order whose client id exists is looked up
        instead); returns the broker's view of each, in basket order."""

    @abc.abstractmethod
    def get_order_by_client_id(self, client_order_id: str) -> BrokerOrder | None: ...

    @abc.abstractmethod
    def cancel_order(self, order_id: str) -> None: ...

    @abc.abstractmethod
    def clock(self) -> MarketClock: ...

    @abc.abstractmethod
    def latest_prices(self, symbols: Sequence[str]) -> dict[str, Quote]: ...

    def open_orders(self) -> list[BrokerOrder]:
        """Orders not yet done (filled, canceled or rejected)."""
        return []

    def breaker_states(self) -> dict[str, str]:
        """State of each circuit breaker by name (none for a local broker)."""
        return {}

    def failure_cause(self) -> str | None:
        """The first error of an open circuit breaker (the cause of an outage), else None."""
        return None

    def stopping(self) -> bool:
        return self.stop_event is not None and self.stop_event.is_set()

    def pause(self, seconds: float) -> None:
        """Wait `seconds`, returning early on a stop."""
        if self.stop_event is not None:
            self.stop_event.wait(seconds)
        else:
            time.sleep(seconds)

    def await_fills(
        self,
        placed: Sequence[BrokerOrder],
        *,
        cancel_unfilled: bool,
        on_update: Callable[[BrokerOrder], Any] | None = None,
    ) -> list[BrokerOrder]:
        """The broker's latest view of `placed` once every order is done or
        `fill_policy.timeout_s` has passed (polled every `poll_s`; a stop ends the wait);
        `on_update` sees each new view of an order as it comes (a partial fill, the rest). With
        `cancel_unfilled` and the policy's "cancel", an order still working at the bound is
        cancelled (a fill racing the cancel is kept: the order is read again)."""
        policy = self.fill_policy
        deadline = time.monotonic() + policy.timeout_s
        current = list(placed)

        def look() -> None:
            for i, o in enumerate(current):
                if not o.done:
                    new = self._refresh(o)
                    if on_update is not None and (new.filled_qty, new.status) != (
                        o.filled_qty,
                        o.status,
                    ):
                        on_update(new)
                    current[i] = new

        while True:
            look()
            if all(o.done for o in current) or time.monotonic() >= deadline or self.stopping():
                break
            self.pause(policy.poll_s)
        working = [o for o in current if not o.done]
        if working and cancel_unfilled and policy.unfilled_reduce == "cancel":
            for o in working:
                try:
                    self.cancel_order(o.id)
                except BrokerError as exc:  # it filled meanwhile, or the broker is failing
                    log.warning("cancel of %s failed: %s", o.client_order_id, exc)
            look()
        for o in current:
            if not o.done:
                log.warning(
                    "%s %s %d %s: %d of %d shares filled after %.0f s; left open",
                    self.name,
                    o.client_order_id,
                    o.qty,
                    o.symbol,
                    o.filled_qty,
                    o.qty,
                    policy.timeout_s,
                )
        return current

    def _refresh(self, order: BrokerOrder) -> BrokerOrder:
        found = self.get_order_by_client_id(order.client_order_id)
        if found is None:
            raise BrokerError(f"{self.name} lost order {order.client_order_id}")
        return dataclasses.replace(found, purpose=order.purpose)

    def holdings(self) -> dict[str, int]:
        """Signed shares per symbol held (pair_engine.Venue)."""
        return {sym: p.qty for sym, p in self.positions().items()}

    def known_orders(self, orders: Sequence[Order]) -> dict[str, BrokerOrder]:
        """The orders among `orders` the broker already has, by client id (a restart after the
        broker accepted them: they are looked up, never sent twice)."""
        known = {}
        for order in orders:
            found = self.get_order_by_client_id(order.client_order_id)
            if found is not None:
                known[order.client_order_id] = check_same_order(order, found, self.name)
        return known

    def persist(self) -> None:
        """Write the account's local state now (the paper account's file); a remote broker keeps
        its own."""
        return None


class OrderIdConflict(BrokerError):
    """The broker already has an order with this client id, but for another symbol, side or
    quantity: another home (a copy of this one) sent it. Never taken as this order done."""

    def __init__(self, order: Order, found: BrokerOrder, broker: str):
        self.order, self.found = order, found
        super().__init__(
            f"{broker} already has client order id {order.client_order_id} for "
            f"{found.side.value} {found.qty} {found.symbol}, not this home's "
            f"{order.side.value} {order.qty} {order.symbol}: another home sends this home's ids "
            "(a copied home?); trading halted. Stop the other home, then run `python main.py "
            "home claim` in the home that owns the account (it takes a new order tag)"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.order, self.found, "broker"))


def same_order(order: Order, found: BrokerOrder) -> bool:
    """Whether the broker's order `found` (looked up by `order`'s client id) is `order`: the same
    symbol, side and quantity. An id is only proof of identity within one home."""
    return (found.symbol, found.side, found.qty) == (order.symbol, order.side, order.qty)


def check_same_order(order: Order, found: BrokerOrder, broker: str) -> BrokerOrder:
    """`found` when it is `order`; OrderIdConflict when the id stands for another order."""
    if not same_order(order, found):
        raise OrderIdConflict(order, found, broker)
    return found


def _require_approved(basket: object) -> ApprovedBasket:
    if not isinstance(basket, ApprovedBasket):
        raise TypeError("a broker takes only an ApprovedBasket from RiskManager.pre_trade_check")
    return basket


# --- Simulated broker -----------------------------------------------------------------------------
class SimulatedBroker(Broker):
    """A local broker for paper trading and replays: market-on-close orders fill at the latest bar's
    close plus spread and impact, with the backtest's fees and borrow, through `OrderExecutor`, and
    are booked in the backtest's `pair_engine.Ledger` -- the same accounting as a backtest.

    Its state (the ledger, every order by client id, latest quotes) lives in `state_path`,
    rewritten atomically after every change, so a crash loses nothing that was acknowledged and a
    restart continues from the file. `now` gives the current time (the live loop's clock)."""

    name = "simulated"
    simulated = True
    fractional_shares = True

    def __init__(
        self,
        state_path: str | Path,
        *,
        initial_cash: float = 100_000.0,
        execution: ExecutionConfig | None = None,
        now: Callable[[], pd.Timestamp] | None = None,
    ):
        self.state_path = Path(state_path)
        self.execution = execution or ExecutionConfig()
        self._executor = OrderExecutor(self.execution)
        self._now = now or (lambda: pd.Timestamp.now(tz="UTC"))
        self._state = self._load(initial_cash)
        self.ledger = pe.Ledger.from_json(self._state["ledger"])

    # --- State ---------------------------------------------------------------------------------
    def _load(self, initial_cash: float) -> dict[str, Any]:
        if not self.state_path.exists():
            return {
                "version": _STATE_VERSION,
                "initial_cash": float(initial_cash),
                "ledger": pe.Ledger(initial_cash).to_json(),
                "orders": {},
                "quotes": {},
                "account_id": _new_paper_account_id(),
            }
        try:
            state = json.loads(self.state_path.read_text())
            if not isinstance(state, dict):
                raise ValueError(f"a JSON {type(state).__name__}, not an object")
            if state.get("version") == 1:  # before the shared ledger: same fields, flat
                state = _state_v1_to_v2(state)
            if state.get("version") != _STATE_VERSION:
                raise ValueError(f"unknown version {state.get('version')!r}")
            missing = [k for k in ("ledger", "orders", "quotes") if k not in state]
            if missing:
                raise KeyError(", ".join(missing))
            pe.Ledger.from_json(state["ledger"])
            # An account saved before accounts had ids gets one (kept by its next save).
            state.setdefault("account_id", _new_paper_account_id())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigurationError(
                f"simulated broker state {self.state_path} is unreadable ({exc}); move it aside "
                "to start a fresh paper account"
            ) from None
        return state

    def _save(self) -> None:
        self._state["ledger"] = self.ledger.to_json()
        atomic_write_json(self.state_path, self._state)

    def persist(self) -> None:
        """Write the account file now: its id is then fixed before a home records it."""
        self._save()

    # --- Market data ---------------------------------------------------------------------------
    def set_market(self, quotes: Mapping[str, BarQuote]) -> None:
        """Record the latest bar of each symbol (the prices fills use) and charge short borrow on
        the previous close for the calendar days since the last charge (keyed by the bar's New
        York date: setting the same bar twice charges nothing)."""
        from transaction_costs import borrow_rate

        state = self._state
        times = [pd.Timestamp(q.time) for q in quotes.values()]
        if times:
            day = pe.day_number(max(times).tz_convert(NEW_YORK))
            prior = {s: q["price"] for s, q in state["quotes"].items()}
            costs = self.execution.costs
            rates = {s: borrow_rate(s, costs) for s in self.ledger.qty}
            fee = self.ledger.borrow_due(day, prior, rates, float(costs.borrow_day_count))
            self.ledger.charge_borrow(day, fee)
        for sym, q in quotes.items():
            state["quotes"][sym] = {
                "price": float(q.price),
                "time": pd.Timestamp(q.time).isoformat(),
                "daily_vol": float(q.daily_vol),
                "adv_shares": float(q.adv_shares),
            }
        self._save()

    def _bar_quote(self, symbol: str) -> BarQuote:
        q = self._state["quotes"].get(symbol)
        if q is None:
            raise BrokerError(f"simulated broker has no price for {symbol}; call set_market first")
        return BarQuote(q["price"], q["daily_vol"], q["adv_shares"], pd.Timestamp(q["time"]))

    # --- Broker interface ----------------------------------------------------------------------
    def latest_prices(self, symbols: Sequence[str]) -> dict[str, Quote]:
        out = {}
        for sym in symbols:
            q = self._state["quotes"].get(sym)
            if q is not None:
                out[sym] = Quote(sym, q["price"], pd.Timestamp(q["time"]))
        return out

    def positions(self) -> dict[str, Position]:
        out = {}
        for sym, qty in self.ledger.qty.items():
            if qty == 0:
                continue
            q = self._state["quotes"].get(sym)
            avg = self.ledger.avg.get(sym, 0.0)
            price = q["price"] if q else avg
            out[sym] = Position(sym, qty, float(avg), float(price))
        return out

    def account(self) -> Account:
        cash = self.ledger.cash
        equity = cash + sum(p.market_value for p in self.positions().values())
        return Account(
            equity=equity,
            cash=cash,
            buying_power=max(equity, 0.0) * 2.0,
            account_id=str(self._state["account_id"]),
        )

    def clock(self) -> MarketClock:
        return market_clock(self._now())

    def get_order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        raw = self._state["orders"].get(client_order_id)
        return None if raw is None else _order_from_state(raw)

    def cancel_order(self, order_id: str) -> None:
        """Simulated market orders fill at once: nothing is ever open to cancel."""

    def await_fills(
        self,
        placed: Sequence[BrokerOrder],
        *,
        cancel_unfilled: bool,
        on_update: Callable[[BrokerOrder], Any] | None = None,
    ) -> list[BrokerOrder]:
        """Done when placed: filled, or capped by the participation cap with the rest
        canceled."""
        return list(placed)

    def submit_basket(self, basket: ApprovedBasket) -> list[BrokerOrder]:
        basket = _require_approved(basket)
        orders = self._state["orders"]
        for o in basket.orders:
            if o.client_order_id in orders:
                check_same_order(o, _order_from_state(orders[o.client_order_id]), self.name)
        new = [o for o in basket.orders if o.client_order_id not in orders]
        if new:
            quotes = {o.symbol: self._bar_quote(o.symbol) for o in new}
            fills = {f.client_order_id: f for f in self._executor.execute(basket, quotes)}
            now = pd.Timestamp(self._now())
            for order in new:
                fill = fills[order.client_order_id]
                self.ledger.apply(fill)
                orders[order.client_order_id] = {
                    "id": f"sim-{len(orders) + 1}",
                    "client_order_id": order.client_order_id,
                    "symbol": order.symbol,
                    "side": order.side.value,
                    "qty": order.qty,
                    "filled_qty": fill.qty,
                    "filled_avg_price": fill.price if fill.qty else None,
                    # The capped rest of an order is canceled (Alpaca's words for the same).
                    "status": "filled" if fill.qty == order.qty else "canceled",
                    "submitted_at": now.isoformat(),
                    "purpose": order.purpose.value,
                    "fees": fill.costs.explicit,
                    "costs": dataclasses.asdict(fill.costs),
                }
            self._save()  # one atomic write per basket: all of it happened, or none
        else:
            log.info(
                "simulated broker: basket already filled (%d orders), not resubmitted",
                len(basket.orders),
            )
        return [_order_from_state(orders[o.client_order_id]) for o in basket.orders]

    @property
    def borrow_paid(self) -> float:
        return self.ledger.borrow_paid

    def filled_client_ids(self) -> list[str]:
        """Every client order id this account filled (for audits and crash tests)."""
        return [cid for cid, o in self._state["orders"].items() if o["filled_qty"] > 0]


def _new_paper_account_id() -> str:
    """A new paper account's id: `sim-` and 12 random hex digits."""
    return f"sim-{os.urandom(6).hex()}"


def _state_v1_to_v2(state: dict[str, Any]) -> dict[str, Any]:
    """A version-1 paper account (flat cash/positions/borrow fields) in the ledger's layout."""
    through = state.get("borrow_through")
    ledger = {
        "cash": float(state["cash"]),
        "positions": {
            s: {"qty": int(p["qty"]), "avg": float(p["avg"])} for s, p in state["positions"].items()
        },
        "realized_pnl": 0.0,
        "borrow_paid": float(state.get("borrow_paid", 0.0)),
        "borrow_through": None if through is None else pe.day_number(pd.Timestamp(through)),
    }
    return {
        "version": _STATE_VERSION,
        "initial_cash": float(state.get("initial_cash", state["cash"])),
        "ledger": ledger,
        "orders": state["orders"],
        "quotes": state["quotes"],
    }


def _stored_status(text: str) -> OrderStatus:
    """A simulated order's stored status (a capped order was "partially_filled" before the life
    cycle became one enum: its rest was canceled)."""
    return OrderStatus.CANCELED if text == "partially_filled" else OrderStatus(text)


def _order_from_state(raw: Mapping[str, Any]) -> BrokerOrder:
    return BrokerOrder(
        id=raw["id"],
        client_order_id=raw["client_order_id"],
        symbol=raw["symbol"],
        side=Side(raw["side"]),
        qty=as_qty(raw["qty"]),  # fractional shares stay floats
        filled_qty=as_qty(raw["filled_qty"]),
        filled_avg_price=raw["filled_avg_price"],
        status=_stored_status(raw["status"]),
        submitted_at=pd.Timestamp(raw["submitted_at"]),
        purpose=raw.get("purpose", Purpose.ENTRY.value),
        fees=float(raw.get("fees", 0.0)),
    )


# --- Alpaca ---------------------------------------------------------------------------------------
T = TypeVar("T")

_ENV_ALPACA_API_KEY = "ALPACA_API_KEY"
_ENV_ALPACA_SECRET_KEY = "ALPACA_SECRET_KEY"  # noqa: S105 - a variable name, not a secret
_ENV_ALPACA_TRADING_URL = "ALPACA_TRADING_URL"  # base URL without /v2; unset: alpaca-py's default
_ENV_ALPACA_DATA_URL = "ALPACA_DATA_URL"  # base URL without /v2; unset: alpaca-py's default
_ENV_ALPACA_DATA_FEED = "ALPACA_DATA_FEED"  # iex (free, the default) or sip

#: Alpaca's order statuses in our life cycle (BrokerOrder.status). Any other (pending_cancel,
#: held, accepted_for_bidding, ...) is an order still working: accepted, or partially_filled once
#: shares have filled.
_ALPACA_STATUS = {
    "pending_new": OrderStatus.NEW,
    "new": OrderStatus.ACCEPTED,
    "accepted": OrderStatus.ACCEPTED,
    "partially_filled": OrderStatus.PARTIALLY_FILLED,
    "filled": OrderStatus.FILLED,
    "canceled": OrderStatus.CANCELED,
    "done_for_day": OrderStatus.CANCELED,
    "replaced": OrderStatus.CANCELED,
    "expired": OrderStatus.EXPIRED,
    "rejected": OrderStatus.REJECTED,
}

#: The circuit breakers of the Alpaca broker, one per kind of endpoint, so that failures of one
#: kind open it whatever succeeds elsewhere: order placement and cancels (POST/DELETE
#: /v2/orders), the account's state (account, positions, clock, order look-ups) and market data.
BREAKER_KINDS = ("orders", "account", "market_data")
#: Consecutive failed HTTP attempts that open each breaker: one order that fails all 3 attempts
#: opens "orders" (and halts new entries).
BREAKER_THRESHOLDS = {"orders": 3, "account": 5, "market_data": 5}


class OrderRejected(BrokerError):
    """Alpaca answered with a 4xx other than 429 (insufficient buying power, not shortable, an
    unknown order, rejected keys): a business answer, so it is neither retried nor counted by the
    circuit breaker. `status` is the HTTP status."""

    def __init__(self, message: str, status: int | None = None):
        self.status = status
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.status))


class BrokerUnavailable(BrokerError):
    """Alpaca could not be reached, did not answer within the timeout, or answered 429 or 5xx;
    raised once the retries are used up."""


class AlpacaBroker(Broker):
    """Alpaca's trading API (paper unless `paper=False`) and market data through alpaca-py, under
    our own failure policy.

    alpaca-py sends requests without a timeout and itself retries 429/504 on every method, POST
    /v2/orders included. Here its retry is off and every request has `timeout_s` (seconds, to
    connect and between bytes of the answer). Each HTTP attempt runs through the circuit breaker
    of its kind of endpoint (`breakers`, see BREAKER_KINDS; open: CircuitOpenError at once, no
    request). Timeouts, dropped connections, 429 and 5xx are retried
    up to `attempts` calls in all, `backoff_s` x 2^n seconds apart (then BrokerUnavailable); any
    other 4xx raises OrderRejected at once, which the breaker does not count.

    Invariant: an order is posted at most once per client order id. Its id is looked up before
    the first POST, again before every retried POST (the broker may have accepted an order whose
    answer was lost), and after a 422 "client_order_id must be unique".
    """

    name = "alpaca"

    def __init__(
        self,
        api_key: str,
        secret_key: str,
        *,
        paper: bool = True,
        trading_url: str | None = None,
        data_url: str | None = None,
        timeout_s: float = 10.0,
        attempts: int = 3,
        backoff_s: float = 0.5,
        breakers: Mapping[str, CircuitBreaker] | None = None,
        on_breaker_change: Callable[[Any], None] | None = None,
        data_feed: str = "iex",
        sleep: Callable[[float], None] | None = None,
        fill_policy: FillPolicy | None = None,
        order_prefix: str = "pt",
    ):
        try:
            from alpaca.data.enums import DataFeed
            from alpaca.data.historical import StockHistoricalDataClient
            from alpaca.trading.client import TradingClient
        except ImportError as exc:  # pragma: no cover - the live profile installs alpaca-py
            raise ConfigurationError(
                "the Alpaca broker needs alpaca-py; run ./install.sh live"
            ) from exc
        if not timeout_s > 0:
            raise ConfigurationError(f"Alpaca timeout_s must be > 0 seconds: {timeout_s!r}")
        if attempts < 1:
            raise ConfigurationError(f"Alpaca attempts must be >= 1: {attempts!r}")
        if not backoff_s >= 0:
            raise ConfigurationError(f"Alpaca backoff_s must be >= 0 seconds: {backoff_s!r}")
        if not api_key or not secret_key:
            raise ConfigurationError(
                f"the Alpaca broker needs {_ENV_ALPACA_API_KEY} and {_ENV_ALPACA_SECRET_KEY}"
            )
        feed = data_feed.strip().lower()
        try:
            self.data_feed = DataFeed(feed)
        except ValueError:
            raise ConfigurationError(
                f"unknown Alpaca data feed {feed!r} ({_ENV_ALPACA_DATA_FEED}); choose one of "
                f"{', '.join(f.value for f in DataFeed)}"
            ) from None
        self.paper = paper
        self.timeout_s = float(timeout_s)
        self.attempts = int(attempts)
        self.backoff_s = float(backoff_s)
        self._sleep = sleep or self.pause
        self.breakers = _alpaca_breakers(breakers, on_breaker_change)
        self.fill_policy = fill_policy or FillPolicy()
        self.order_prefix = order_prefix
        self._trading = TradingClient(
            api_key, secret_key, paper=paper, url_override=_alpaca_base_url(trading_url)
        )
        self._data = StockHistoricalDataClient(
            api_key, secret_key, url_override=_alpaca_base_url(data_url)
        )
        for client in (self._trading, self._data):
            _harden_alpaca_client(client, self.timeout_s)

    @classmethod
    def from_environment(
        cls,
        *,
        paper: bool = True,
        home: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> AlpacaBroker:
        """Keys from ALPACA_API_KEY / ALPACA_SECRET_KEY (the environment wins, else the encrypted
        store under `home`); base URLs from ALPACA_TRADING_URL / ALPACA_DATA_URL (no trailing
        /v2; unset: Alpaca's own); the data feed from ALPACA_DATA_FEED (unset: iex). `options`
        go to the constructor."""
        from credential_manager import lookup

        api_key = lookup(_ENV_ALPACA_API_KEY, home=home)
        secret_key = lookup(_ENV_ALPACA_SECRET_KEY, home=home)
        if not api_key or not secret_key:
            missing = [
                name
                for name, value in (
                    (_ENV_ALPACA_API_KEY, api_key),
                    (_ENV_ALPACA_SECRET_KEY, secret_key),
                )
                if not value
            ]
            raise ConfigurationError(
                f"the Alpaca broker needs {' and '.join(missing)}: store them with `python main.py "
                f"credentials set {missing[0]}` (encrypted; read when TRADING_MASTER_PASSWORD is "
                "set) or set them in the environment (paper keys from app.alpaca.markets)"
            )
        return cls(
            api_key,
            secret_key,
            paper=paper,
            trading_url=os.environ.get(_ENV_ALPACA_TRADING_URL) or None,
            data_url=os.environ.get(_ENV_ALPACA_DATA_URL) or None,
            data_feed=os.environ.get(_ENV_ALPACA_DATA_FEED) or "iex",
            **options,
        )

    # --- Failure policy ------------------------------------------------------------------------
    def _call(self, kind: str, what: str, fn: Callable[[], T]) -> T:
        """`fn` (one alpaca-py call) through the breaker of its `kind`, retried on
        BrokerUnavailable (not after a stop).

        Not error_handling.retry_with_backoff: each retry is logged with its number, and the final
        error says how many attempts were made."""
        breaker = self.breakers[kind]
        for attempt in range(1, self.attempts + 1):
            try:
                # A read may be cut short by a stop; an order's POST is let finish (its answer
                # tells whether it was placed), bounded by `timeout_s`.
                self.in_request = kind != "orders"
                return breaker.call(self._translated, what, fn)
            except BrokerUnavailable as exc:
                if attempt == self.attempts or self.stopping():
                    raise BrokerUnavailable(f"{exc} (gave up after {attempt} attempt(s))") from exc
                wait_s = self.backoff_s * 2 ** (attempt - 1)
                log.warning(
                    "%s; attempt %d of %d, retrying in %.1f s", exc, attempt, self.attempts, wait_s
                )
                self._sleep(wait_s)
            finally:
                self.in_request = False
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def breaker_states(self) -> dict[str, str]:
        return {b.name: b.state.value for b in self.breakers.values()}

    def failure_cause(self) -> str | None:
        for breaker in self.breakers.values():
            if breaker.state.value != "closed" and breaker.first_error:
                return f"{breaker.name}: {breaker.first_error}"
        return None

    def _translated(self, what: str, fn: Callable[[], T]) -> T:
        """Run `fn`; its failures as BrokerUnavailable (retried), OrderRejected (not retried, not
        counted by the breaker) or BrokerError."""
        import requests
        from alpaca.common.exceptions import APIError

        try:
            return fn()
        except APIError as exc:
            raise _alpaca_api_error(what, exc) from exc
        except requests.exceptions.Timeout as exc:
            raise BrokerUnavailable(
                f"alpaca {what}: no answer within {self.timeout_s:g} s ({type(exc).__name__})"
            ) from exc
        except (
            requests.exceptions.ConnectionError,
            requests.exceptions.ChunkedEncodingError,
        ) as exc:
            detail = " ".join(str(exc).split())[:200]
            raise BrokerUnavailable(
                f"alpaca {what}: connection failed ({type(exc).__name__}: {detail})"
            ) from exc
        except requests.exceptions.JSONDecodeError as exc:  # a wrong base URL (an HTML page)?
            raise BrokerError(f"alpaca {what}: the answer is not JSON ({exc})") from exc
        except requests.exceptions.RequestException as exc:
            detail = " ".join(str(exc).split())[:200]
            raise BrokerError(f"alpaca {what}: {type(exc).__name__}: {detail}") from exc
        except ValueError as exc:  # a 200 answer alpaca-py cannot parse: a wrong base URL?
            detail = " ".join(str(exc).split())[:200]
            raise BrokerError(f"alpaca {what}: unexpected answer: {detail}") from exc

    # --- Broker interface ----------------------------------------------------------------------
    def account(self) -> Account:
        raw: Any = self._call("account", "GET /v2/account", self._trading.get_account)
        return Account(
            equity=_alpaca_usd(raw.equity, "account equity"),
            cash=_alpaca_usd(raw.cash, "account cash"),
            buying_power=_alpaca_usd(raw.buying_power, "account buying_power"),
            status=str(getattr(raw.status, "value", raw.status)),
            account_id=str(raw.id),
        )

    def positions(self) -> dict[str, Position]:
        """Signed shares (short < 0) per symbol, average entry and current price (USD)."""
        raw: Any = self._call("account", "GET /v2/positions", self._trading.get_all_positions)
        out = {}
        for p in raw:
            shares = abs(_alpaca_shares(p.qty, f"position {p.symbol}"))
            if str(getattr(p.side, "value", p.side)) == "short":
                shares = -shares
            if shares == 0:
                continue
            avg = float(p.avg_entry_price)
            price = float(p.current_price) if p.current_price is not None else avg
            out[p.symbol] = Position(p.symbol, shares, avg, price)
        return out

    def clock(self) -> MarketClock:
        raw: Any = self._call("account", "GET /v2/clock", self._trading.get_clock)
        at = _utc(raw.timestamp)
        return MarketClock(
            at=at,
            is_open=bool(raw.is_open),
            next_open=_utc(raw.next_open),
            next_close=_utc(raw.next_close),
            session_date=(
                at.tz_convert(NEW_YORK).normalize().tz_localize(None) if raw.is_open else None
            ),
        )

    def latest_prices(self, symbols: Sequence[str]) -> dict[str, Quote]:
        """The latest trade of each symbol on `data_feed`; a symbol without one is left out."""
        from alpaca.data.requests import StockLatestTradeRequest

        wanted = {s.upper(): s for s in symbols}
        if not wanted:
            return {}
        request = StockLatestTradeRequest(symbol_or_symbols=list(wanted), feed=self.data_feed)
        trades = self._call(
            "market_data",
            "GET /v2/stocks/trades/latest",
            lambda: self._data.get_stock_latest_trade(request),
        )
        return {
            wanted[sym]: Quote(wanted[sym], float(trade.price), _utc(trade.timestamp))
            for sym, trade in trades.items()
            if sym in wanted
        }

    def get_order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        raw = self._lookup(client_order_id)
        return None if raw is None else _order_from_alpaca(raw)

    def open_orders(self) -> list[BrokerOrder]:
        from alpaca.trading.enums import QueryOrderStatus
        from alpaca.trading.requests import GetOrdersRequest

        request = GetOrdersRequest(status=QueryOrderStatus.OPEN, limit=500)  # Alpaca's maximum
        raw = self._call(
            "account", "GET /v2/orders", lambda: self._trading.get_orders(filter=request)
        )
        return [_order_from_alpaca(o) for o in raw]

    def cancel_order(self, order_id: str) -> None:
        """Ask Alpaca to cancel an open order; OrderRejected when it is unknown or already done
        (filled). A retry whose lost first try did cancel it is not an error."""
        from alpaca.common.exceptions import APIError

        try:
            UUID(str(order_id))
        except ValueError:
            raise BrokerError(f"{order_id!r} is not an Alpaca order id (a UUID)") from None
        tries = 0

        def cancel() -> None:
            nonlocal tries
            tries += 1
            try:
                self._trading.cancel_order_by_id(order_id)
            except APIError as exc:
                if tries > 1 and exc.status_code == 422:  # "not cancelable": canceled already?
                    current: Any = self._trading.get_order_by_id(order_id)
                    status = str(getattr(current.status, "value", current.status))
                    if status in ("canceled", "pending_cancel"):
                        return
                raise

        self._call("orders", f"DELETE /v2/orders/{order_id}", cancel)

    def submit_basket(self, basket: ApprovedBasket) -> list[BrokerOrder]:
        """Each order as a DAY market order, unless Alpaca already has its client id (then that
        order is returned). An order that fails stops the basket: the ones before it stand, and a
        resubmission of the same basket finds them by client id."""
        basket = _require_approved(basket)
        placed = []
        for order in basket.orders:
            known = self._lookup(order.client_order_id)
            if known is not None:
                found = check_same_order(
                    order, _order_from_alpaca(known, order.purpose.value), self.name
                )
                log.info(
                    "alpaca already has order %s (%s): not submitted again",
                    found.client_order_id,
                    found.status,
                )
                placed.append(found)
            else:
                placed.append(self._post_once(order))
        return placed

    # --- Helpers -------------------------------------------------------------------------------
    def _lookup(self, client_order_id: str) -> Any:
        """Alpaca's order with this client id, or None; under the failure policy."""
        return self._call(
            "account",
            "GET /v2/orders:by_client_order_id",
            lambda: self._find_order(client_order_id),
        )

    def _find_order(self, client_order_id: str) -> Any:
        """Alpaca's order with this client id, or None (404); one request."""
        from alpaca.common.exceptions import APIError

        try:
            return self._trading.get_order_by_client_id(client_order_id)
        except APIError as exc:
            if exc.status_code == 404:
                return None
            raise

    def _post_once(self, order: Order) -> BrokerOrder:
        """POST a market order, never twice: a retry first looks the client id up (an earlier
        POST may have been accepted although its answer was lost), and a 422 for a duplicate
        client id returns the order Alpaca already has."""
        from alpaca.common.exceptions import APIError
        from alpaca.trading.enums import OrderSide, TimeInForce
        from alpaca.trading.requests import MarketOrderRequest

        cid = order.client_order_id
        if isinstance(order.qty, float):  # the live loop refuses fractional sizing at start-up
            raise ConfigurationError(
                f"alpaca: order {cid} is for {order.qty} shares, a fraction; fractional shares "
                "are not traded on Alpaca"
            )
        request = MarketOrderRequest(
            symbol=order.symbol,
            qty=order.qty,
            side=OrderSide(order.side.value),
            time_in_force=TimeInForce.DAY,
            client_order_id=cid,
        )
        tries = 0

        def post() -> Any:
            nonlocal tries
            tries += 1
            # Only a timeout, a dropped connection, 429 or 5xx leads to another try.
            if tries > 1 and (found := self._find_order(cid)) is not None:
                log.warning("alpaca accepted order %s although its answer was lost", cid)
                return found
            try:
                return self._trading.submit_order(request)
            except APIError as exc:
                if exc.status_code == 422 and _is_duplicate_client_id(exc):
                    found = self._find_order(cid)
                    if found is not None:
                        log.warning("alpaca already had order %s (422 on POST)", cid)
                        return found
                raise

        raw = self._call("orders", "POST /v2/orders", post)
        result = check_same_order(order, _order_from_alpaca(raw, order.purpose.value), self.name)
        log.info(
            "alpaca order %s: %s %d %s -> %s",
            cid,
            order.side.value,
            order.qty,
            order.symbol,
            result.status,
        )
        return result


def _alpaca_breakers(
    given: Mapping[str, CircuitBreaker] | None, on_change: Callable[[Any], None] | None
) -> dict[str, CircuitBreaker]:
    """One breaker per kind (BREAKER_KINDS): those `given`, the rest with BREAKER_THRESHOLDS
    and a 60 s reset. None counts a business rejection (OrderRejected): it says nothing about
    Alpaca's health."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(BREAKER_KINDS))
    if unknown:
        raise ConfigurationError(
            f"unknown breaker kind(s) {', '.join(unknown)}; kinds: {', '.join(BREAKER_KINDS)}"
        )
    out = {}
    for kind in BREAKER_KINDS:
        breaker = given.get(kind) or CircuitBreaker(
            f"alpaca {kind}",
            failure_threshold=BREAKER_THRESHOLDS[kind],
            reset_timeout_s=60.0,
            on_state_change=on_change,
        )
        if not issubclass(OrderRejected, breaker.excluded):
            breaker.excluded = (*breaker.excluded, OrderRejected)
        out[kind] = breaker
    return out


def _harden_alpaca_client(client: Any, timeout_s: float) -> None:
    """Give every request of an alpaca-py client a timeout and turn its own retry off.

    Relies on alpaca-py 0.44's RESTClient: `_one_request` sends through `self._session.request`
    (a requests.Session) without a timeout, and `_request` retries while `self._retry` > 0 on
    `self._retry_codes` (429, 504), sleeping 3 s; its constructor ignores retry_attempts=0 (and
    TradingClient does not forward it), so the attribute is set."""
    if not hasattr(client, "_session") or not hasattr(client, "_retry"):
        raise ConfigurationError(
            f"{type(client).__name__} lacks _session/_retry: this alpaca-py is not the 0.44 the "
            "broker was written for; install requirements-live.txt"
        )
    session = client._session
    session.request = functools.partial(session.request, timeout=(timeout_s, timeout_s))
    client._retry = 0


def _alpaca_base_url(url: str | None) -> str | None:
    """A base URL as alpaca-py wants it: no trailing slash or /v2 (it appends /v2 itself)."""
    url = (url or "").strip().rstrip("/").removesuffix("/v2")
    return url or None


def _alpaca_message(exc: Exception) -> str:
    """The `message` of the Alpaca error body carried by `exc` (or its text)."""
    from process_stock_data import alpaca_error_message

    return alpaca_error_message(str(exc))


def _alpaca_api_error(what: str, exc: Any) -> BrokerError:
    """The project's error for an HTTP error answer (alpaca-py's APIError)."""
    status = exc.status_code
    text = f"alpaca {what}: HTTP {status}: {_alpaca_message(exc)}"
    if status is None or status == 429 or status >= 500:
        return BrokerUnavailable(text)
    if status == 401:
        text += (
            f"; check {_ENV_ALPACA_API_KEY} and {_ENV_ALPACA_SECRET_KEY} (paper keys need "
            "paper=True, live keys paper=False)"
        )
    return OrderRejected(text, status)


def _is_duplicate_client_id(exc: Exception) -> bool:
    message = _alpaca_message(exc).lower()
    return "client_order_id" in message and "unique" in message


def _utc(value: Any) -> pd.Timestamp:
    """A timestamp from Alpaca (Eastern or UTC offset) as a UTC Timestamp; naive means UTC."""
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _alpaca_usd(value: Any, what: str) -> float:
    if value is None:
        raise BrokerError(f"alpaca: the answer has no {what}")
    return float(value)


def _alpaca_shares(value: Any, what: str) -> int:
    """Whole shares from Alpaca's decimal string: this application trades whole shares only."""
    shares = float(value or 0)
    if not shares.is_integer():
        raise BrokerError(
            f"alpaca: {what} is {value} shares, a fraction; this application trades whole "
            "shares only: settle the fraction in Alpaca's dashboard"
        )
    return int(shares)


def _order_from_alpaca(raw: Any, purpose: str = Purpose.ENTRY.value) -> BrokerOrder:
    """Our record of an alpaca-py Order; `purpose` is ours (Alpaca does not know it)."""
    status = str(getattr(raw.status, "value", raw.status))
    cid = raw.client_order_id
    filled = _alpaca_shares(raw.filled_qty, f"order {cid} filled_qty")
    price = raw.filled_avg_price
    return BrokerOrder(
        id=str(raw.id),
        client_order_id=cid,
        symbol=raw.symbol,
        side=Side(str(getattr(raw.side, "value", raw.side))),
        qty=_alpaca_shares(raw.qty, f"order {cid} qty"),
        filled_qty=filled,
        filled_avg_price=float(price) if price is not None and filled else None,
        status=_ALPACA_STATUS.get(
            status, OrderStatus.PARTIALLY_FILLED if filled else OrderStatus.ACCEPTED
        ),
        submitted_at=_utc(raw.submitted_at),
        purpose=purpose,
    )
