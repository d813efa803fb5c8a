"""Brokers behind one interface, and `execute_signal`: pair signal -> gated orders -> broker.

- `SimulatedBroker` (the default): local, fills through `OrderExecutor` with the backtest's cost
  model, its own state persisted atomically so a restart continues where it stopped.
- `AlpacaBroker`: alpaca-py's TradingClient (paper unless live), base URLs configurable.

Invariants:
- A broker accepts only an `ApprovedBasket`, which only `RiskManager.pre_trade_check` creates:
  no order reaches a broker around the risk gate.
- Client order ids are derived from (strategy, bar time, leg, purpose): a retry or a restart of
  the same decision produces the same ids, and an order whose id the broker already knows is looked
  up, never submitted again.
"""

from __future__ import annotations

import abc
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

import risk_management as rm
from atomic_io import atomic_write_json
from data_validation import MarketClock, market_clock
from error_handling import BrokerError, ConfigurationError, RiskViolation
from trading_execution import (
    ApprovedBasket,
    BarQuote,
    ExecutionConfig,
    Order,
    OrderExecutor,
    Purpose,
    Side,
    orders_toward,
)

log = logging.getLogger(__name__)

_STATE_VERSION = 1


# --- Records --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Account:
    """The broker's view of the account, USD."""

    equity: float
    cash: float
    buying_power: float
    status: str = "ACTIVE"


@dataclass(frozen=True)
class Position:
    """A holding: `qty` signed shares (short < 0), average entry price and last price (USD)."""

    symbol: str
    qty: int
    avg_entry_price: float
    market_price: float

    @property
    def market_value(self) -> float:
        return self.qty * self.market_price


@dataclass(frozen=True)
class BrokerOrder:
    """An order as the broker knows it. `status`: new, accepted, partially_filled, filled,
    canceled or rejected (Alpaca's words)."""

    id: str
    client_order_id: str
    symbol: str
    side: Side
    qty: int
    filled_qty: int
    filled_avg_price: float | None
    status: str
    submitted_at: pd.Timestamp
    purpose: str = Purpose.ENTRY.value
    fees: float = 0.0  # explicit fees charged (simulated broker)

    @property
    def done(self) -> bool:
        return self.status in ("filled", "canceled", "rejected", "expired")


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


def _require_approved(basket: object) -> ApprovedBasket:
    if not isinstance(basket, ApprovedBasket):
        raise TypeError("a broker takes only an ApprovedBasket from RiskManager.pre_trade_check")
    return basket


# --- Simulated broker -----------------------------------------------------------------------------
class SimulatedBroker(Broker):
    """A local broker for paper trading and replays: market orders fill at once at the latest
    quote plus spread and impact, with the backtest's fees and borrow, through `OrderExecutor`.

    Its state (cash, positions, every order by client id, latest quotes, borrow accrued) lives in
    `state_path`, rewritten atomically after every change, so a crash loses nothing that was
    acknowledged and a restart continues from the file. `now` gives the current time (the live
    loop's clock)."""

    name = "simulated"

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

    # --- State ---------------------------------------------------------------------------------
    def _load(self, initial_cash: float) -> dict[str, Any]:
        import json

        if not self.state_path.exists():
            return {
                "version": _STATE_VERSION,
                "cash": float(initial_cash),
                "initial_cash": float(initial_cash),
                "positions": {},
                "orders": {},
                "quotes": {},
                "borrow_paid": 0.0,
                "borrow_through": None,
            }
        try:
            state = json.loads(self.state_path.read_text())
            if state.get("version") != _STATE_VERSION:
                raise ValueError(f"unknown version {state.get('version')!r}")
            missing = [k for k in ("cash", "positions", "orders", "quotes") if k not in state]
            if missing:
                raise KeyError(", ".join(missing))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigurationError(
                f"simulated broker state {self.state_path} is unreadable ({exc}); move it aside "
                "to start a fresh paper account"
            ) from None
        return state

    def _save(self) -> None:
        atomic_write_json(self.state_path, self._state)

    # --- Market data ---------------------------------------------------------------------------
    def set_market(self, quotes: Mapping[str, BarQuote]) -> None:
        """Record the latest bar of each symbol (the prices fills use) and accrue short borrow on
        the previous close for the calendar days since the last accrual."""
        from transaction_costs import borrow_fee

        state = self._state
        times = [pd.Timestamp(q.time) for q in quotes.values()]
        day = max(times).tz_convert("UTC").normalize() if times else None
        through = state.get("borrow_through")
        if day is not None and through is not None:
            days = (day - pd.Timestamp(through)).days
            if days > 0:
                fee = 0.0
                for sym, pos in state["positions"].items():
                    if pos["qty"] < 0 and sym in state["quotes"]:
                        prior = state["quotes"][sym]["price"]
                        fee += borrow_fee(-pos["qty"] * prior, days, sym, self.execution.costs)
                state["cash"] -= fee
                state["borrow_paid"] += fee
        if day is not None:
            state["borrow_through"] = day.isoformat()
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
        for sym, pos in self._state["positions"].items():
            if pos["qty"] == 0:
                continue
            q = self._state["quotes"].get(sym)
            price = q["price"] if q else pos["avg"]
            out[sym] = Position(sym, int(pos["qty"]), float(pos["avg"]), float(price))
        return out

    def account(self) -> Account:
        cash = float(self._state["cash"])
        equity = cash + sum(p.market_value for p in self.positions().values())
        return Account(equity=equity, cash=cash, buying_power=max(equity, 0.0) * 2.0)

    def clock(self) -> MarketClock:
        return market_clock(self._now())

    def get_order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        raw = self._state["orders"].get(client_order_id)
        return None if raw is None else _order_from_state(raw)

    def cancel_order(self, order_id: str) -> None:
        """Simulated market orders fill at once: nothing is ever open to cancel."""

    def submit_basket(self, basket: ApprovedBasket) -> list[BrokerOrder]:
        basket = _require_approved(basket)
        orders = self._state["orders"]
        new = [o for o in basket.orders if o.client_order_id not in orders]
        if new:
            quotes = {o.symbol: self._bar_quote(o.symbol) for o in new}
            fills = {f.client_order_id: f for f in self._executor.execute(basket, quotes)}
            now = pd.Timestamp(self._now())
            for order in new:
                fill = fills[order.client_order_id]
                self._apply(order, fill)
                orders[order.client_order_id] = {
                    "id": f"sim-{len(orders) + 1}",
                    "client_order_id": order.client_order_id,
                    "symbol": order.symbol,
                    "side": order.side.value,
                    "qty": order.qty,
                    "filled_qty": fill.qty,
                    "filled_avg_price": fill.price if fill.qty else None,
                    "status": "filled"
                    if fill.qty == order.qty
                    else ("partially_filled" if fill.qty else "canceled"),
                    "submitted_at": now.isoformat(),
                    "purpose": order.purpose.value,
                    "fees": fill.costs.explicit,
                }
            self._save()  # one atomic write per basket: all of it happened, or none
        else:
            log.info(
                "simulated broker: basket already filled (%d orders), not resubmitted",
                len(basket.orders),
            )
        return [_order_from_state(orders[o.client_order_id]) for o in basket.orders]

    def _apply(self, order: Order, fill: Any) -> None:
        positions = self._state["positions"]
        pos = positions.setdefault(order.symbol, {"qty": 0, "avg": 0.0})
        q, avg, dq = int(pos["qty"]), float(pos["avg"]), int(fill.signed_qty)
        new = q + dq
        if dq != 0:
            if q == 0 or (q > 0) == (dq > 0):
                pos["avg"] = (avg * abs(q) + fill.price * abs(dq)) / abs(new)
            elif new == 0:
                pos["avg"] = 0.0
            elif (new > 0) != (q > 0):
                pos["avg"] = fill.price
        pos["qty"] = new
        self._state["cash"] += fill.cash_change

    @property
    def borrow_paid(self) -> float:
        return float(self._state["borrow_paid"])

    def filled_client_ids(self) -> list[str]:
        """Every client order id this account filled (for audits and crash tests)."""
        return [cid for cid, o in self._state["orders"].items() if o["filled_qty"] > 0]


def _order_from_state(raw: Mapping[str, Any]) -> BrokerOrder:
    return BrokerOrder(
        id=raw["id"],
        client_order_id=raw["client_order_id"],
        symbol=raw["symbol"],
        side=Side(raw["side"]),
        qty=int(raw["qty"]),
        filled_qty=int(raw["filled_qty"]),
        filled_avg_price=raw["filled_avg_price"],
        status=raw["status"],
        submitted_at=pd.Timestamp(raw["submitted_at"]),
        purpose=raw.get("purpose", Purpose.ENTRY.value),
        fees=float(raw.get("fees", 0.0)),
    )


# --- From a signal to orders ----------------------------------------------------------------------
@dataclass(frozen=True)
class SizingPolicy:
    """How big a pair position is: fractional Kelly on the signal's probability, per leg."""

    kelly_fraction: float = 0.5
    max_leg_fraction: float = 0.5
    payoff_ratio: float = 1.0


@dataclass(frozen=True)
class ExecutionReport:
    """What `execute_signal` did: the target, each basket's orders or its refusal."""

    action: str
    target: dict[str, int]
    submitted: list[BrokerOrder] = field(default_factory=list)
    rejections: list[tuple[str, str]] = field(default_factory=list)  # (reason, message)
    already_known: list[str] = field(default_factory=list)  # client ids looked up, not resent


def target_shares(
    action: str,
    probability: float,
    long: str,
    short: str,
    equity: float,
    prices: Mapping[str, float],
    sizing: SizingPolicy,
    current: Mapping[str, int],
) -> dict[str, int]:
    """Signed target shares per leg for a pair signal. buy: long the long leg, short the short
    leg; sell: the reverse; hold: keep what is held. Size: Kelly fraction of equity per leg."""
    if action == "hold":
        return {long: int(current.get(long, 0)), short: int(current.get(short, 0))}
    if action not in ("buy", "sell"):
        raise ConfigurationError(f"unknown signal action {action!r}")
    p_win = probability if action == "buy" else 1.0 - probability
    frac = rm.kelly_fraction(
        p_win, sizing.payoff_ratio, fraction=sizing.kelly_fraction, cap=sizing.max_leg_fraction
    )
    direction = 1 if action == "buy" else -1
    leg_usd = frac * max(equity, 0.0)
    return {
        long: direction * math.trunc(leg_usd / prices[long]),
        short: -direction * math.trunc(leg_usd / prices[short]),
    }


def execute_signal(
    signal: Any,
    broker: Broker,
    risk: rm.RiskManager,
    *,
    long: str,
    short: str,
    sizing: SizingPolicy | None = None,
    strategy: str = "pair",
    start_of_day_equity: float | None = None,
    reference_prices: Mapping[str, float] | None = None,
    on_decision: Callable[[str, dict[str, Any]], None] | None = None,
) -> ExecutionReport:
    """Turn a pair signal into leg orders sized by the risk manager's Kelly rule, pass each basket
    through `pre_trade_check` (live rules: market open, price sanity from constants, staleness),
    and submit what it approves. Orders whose client id the broker already has are looked up,
    not resubmitted. `on_decision(event, payload)` receives each risk decision and submission
    (for the audit log)."""
    sizing = sizing or SizingPolicy()
    action = getattr(signal.action, "value", signal.action)
    account = broker.account()
    held = {sym: p.qty for sym, p in broker.positions().items()}
    quotes = broker.latest_prices([long, short])
    missing = [s for s in (long, short) if s not in quotes]
    if missing:
        raise BrokerError(f"no latest price for {', '.join(missing)} from {broker.name}")
    prices = {s: q.price for s, q in quotes.items()}
    target = target_shares(
        action, float(signal.probability), long, short, account.equity, prices, sizing, held
    )
    report = ExecutionReport(action=action, target=target)
    bar = pd.Timestamp(signal.bar_time).isoformat()
    reduce, increase = orders_toward(held, target, Purpose.ENTRY, (strategy, bar))
    clock = broker.clock()
    for batch in (reduce, increase):
        if not batch:
            continue
        found = {o.client_order_id: broker.get_order_by_client_id(o.client_order_id) for o in batch}
        known = {cid: bo for cid, bo in found.items() if bo is not None}
        if known:  # a restart after the broker accepted them: never send twice
            report.already_known.extend(known)
            report.submitted.extend(known.values())
            batch = [o for o in batch if o.client_order_id not in known]
            if not batch:
                continue
        portfolio = rm.PortfolioSnapshot(
            equity=account.equity,
            cash=account.cash,
            positions=dict(held),
            start_of_day_equity=(
                account.equity if start_of_day_equity is None else start_of_day_equity
            ),
            buying_power=account.buying_power,
        )
        market = rm.MarketSnapshot(
            now=clock.at,
            prices=prices,
            price_times={s: q.time for s, q in quotes.items()},
            reference_prices=dict(reference_prices or {}),
            live=True,
            market_open=clock.is_open,
        )
        try:
            basket = risk.pre_trade_check(batch, portfolio, market)
        except RiskViolation as exc:
            report.rejections.append((exc.reason, exc.detail))
            if on_decision:
                on_decision(
                    "risk_decision",
                    {
                        "accepted": False,
                        "reason": exc.reason,
                        "message": exc.detail,
                        "orders": [_order_text(o) for o in batch],
                    },
                )
            log.info(
                "risk gate rejected %s: [%s] %s",
                " + ".join(_order_text(o) for o in batch),
                exc.reason,
                exc.detail,
            )
            continue
        if on_decision:
            on_decision(
                "risk_decision",
                {"accepted": True, "orders": [_order_text(o) for o in basket.orders]},
            )
        placed = broker.submit_basket(basket)
        report.submitted.extend(placed)
        if on_decision:
            for o in placed:
                on_decision(
                    "order_submitted",
                    {
                        "client_order_id": o.client_order_id,
                        "symbol": o.symbol,
                        "side": o.side.value,
                        "qty": o.qty,
                        "status": o.status,
                        "filled_qty": o.filled_qty,
                        "filled_avg_price": o.filled_avg_price,
                    },
                )
        account = broker.account()
        held = {sym: p.qty for sym, p in broker.positions().items()}
    return report


def _order_text(order: Order) -> str:
    return f"{order.side.value} {order.qty} {order.symbol}"
