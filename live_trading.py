"""The live loop: `python main.py live` (paper by default), under cron (`--once`) or tmux.

Each iteration, inside NYSE hours: latest closed bar -> (once per new bar) quotes to the paper
broker, signal, the previous signal's outcome to the A/B test, drift check (once per 5 new bars,
in the first iteration after that bar's decision, so monitoring never delays orders),
`pair_engine` drawdown control and decision (the same step as the backtest: the signal of bar
t - fill_delay sized, banded, gated by `RiskManager.pre_trade_check`, sent to the broker) ->
equity row, positions.json, audit -> heartbeat -> sleep the interval. Outside market hours it
sleeps until the next open. `--replay START END` drives the same loop with a simulated clock over
the bundled history and the simulated broker, so a new user sees it trade with no keys and no
network, and tests run months of it in seconds.

Invariants:
- One instance per TRADING_HOME (a lock file); a second one exits with a clear message.
- positions.json is written atomically (temp, fsync, rename) after every change; at start it is
  reconciled with the broker, the broker wins, and every difference is logged, audited, alerted.
- Orders carry client ids from (strategy, bar, signal bar, leg, purpose), the backtest's ids: a
  restart re-derives the same ids and the broker's copy is looked up instead of trading twice.
- A paper replay of START..END and a backtest of the same bars with the same TradingConfig make
  the same orders, fills and per-bar equity (tests/test_parity.py).
- A stop (Ctrl-C, SIGTERM) is honoured at a safe point: between iterations, never inside one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal as signal_module
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import alert_dispatch
import audit_logging
import constants as C
import home_identity
import pair_engine as pe
import risk_management as rm
import trading_api as ta
from audit_logging import AuditLog
from data_validation import NEW_YORK, market_clock
from error_handling import (
    BrokerError,
    CircuitOpenError,
    ConfigurationError,
    DataError,
    DataSourceUnavailable,
    KeysRejected,
    StopRequested,
    TradingError,
)
from live_state import (
    EQUITY_COLUMNS,
    SCHEMA_VERSION,
    EquityRow,
    Heartbeat,
    HeldPosition,
    PendingDecision,
    PositionsState,
    append_equity_row,
    check_equity_log,
    equity_log_path,
    last_equity_row,
    loop_pid,
    read_positions,
    status,
    write_heartbeat,
)
from trading_execution import BarQuote, OrderStatus, Purpose, Qty, as_qty

log = logging.getLogger(__name__)

DRIFT_EVERY_BARS = 5  # a drift check per trading week, not per 5-minute interval


# --- Clocks ---------------------------------------------------------------------------------------
class RealClock:
    """Wall-clock time (UTC); sleeping waits on the stop event so a stop is immediate."""

    replay = False

    def now(self) -> pd.Timestamp:
        return pd.Timestamp.now(tz="UTC")

    def sleep(self, seconds: float, stop: threading.Event) -> None:
        stop.wait(max(seconds, 0.0))


class ReplayClock:
    """Simulated time from `start`: sleeping moves it forward at once (or `speed` times faster
    than real time when speed > 0)."""

    replay = True

    def __init__(self, start: pd.Timestamp, speed: float = 0.0):
        self._now = pd.Timestamp(start).tz_convert("UTC")
        self.speed = speed

    def now(self) -> pd.Timestamp:
        return self._now

    def sleep(self, seconds: float, stop: threading.Event) -> None:
        seconds = max(seconds, 0.0)
        if self.speed > 0:
            stop.wait(seconds / self.speed)
        self._now += pd.Timedelta(seconds=seconds)


# --- Settings and records -------------------------------------------------------------------------
@dataclass(frozen=True)
class LiveConfig:
    """How the loop runs (times in seconds); what it trades by is `trading`, the same
    `pair_engine.TradingConfig` a backtest takes."""

    interval_s: float = 300.0
    once: bool = False
    live: bool = False  # real money: needs the Alpaca broker, credentials and a confirmation
    replay_start: pd.Timestamp | None = None
    replay_end: pd.Timestamp | None = None
    speed: float = 0.0
    deadman_intervals: int = 3  # alert when no iteration completed in this many intervals
    flatten_on_deadman: bool = False
    trading: pe.TradingConfig = field(default_factory=pe.TradingConfig)
    #: Trade a signal CSV (as `backtest --signals`) instead of the model's signals.
    signal_file: str | None = None

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise ConfigurationError(f"--interval must be > 0 seconds, got {self.interval_s}")
        if (self.replay_start is None) != (self.replay_end is None):
            raise ConfigurationError("--replay needs both START and END")
        if self.replay_start is not None and self.replay_end <= self.replay_start:
            raise ConfigurationError("--replay END must be after START")
        if self.speed < 0:
            raise ConfigurationError(f"--speed must be >= 0, got {self.speed}")

    @property
    def replay(self) -> bool:
        return self.replay_start is not None


@dataclass
class LoopSummary:
    """What a run did (for the CLI and tests)."""

    iterations: int = 0
    predictions: int = 0
    bars: int = 0
    orders: int = 0
    rejections: int = 0
    reconciliation_differences: int = 0
    errors: int = 0  # iterations the broker or the data feed failed
    stopped_by: str = "end"
    equity: float | None = None
    model_changes: int = 0  # automatic canary promotions and rollbacks
    drift_checks: int = 0  # drift reports run (once per DRIFT_EVERY_BARS new bars)
    #: Why bars passed without an order (market closed, halted, no new bar, hold, ...), in the
    #: order first seen; `main.py live` prints them when nothing was traded.
    idle_reasons: list[str] = field(default_factory=list)
    started: bool = False  # the `start` record was written (then a `stop` record follows)
    #: The audit chain was checked: a stop by signal before the `start` record is recorded too.
    audit_checked: bool = False

    def idle(self, reason: str) -> None:
        if reason not in self.idle_reasons:
            self.idle_reasons.append(reason)


# --- Data -----------------------------------------------------------------------------------------
class BarFeed:
    """The pair's processed daily bars; at time t only the bars whose session has closed (close
    time = 16:00 New York of the bar's date, never earlier: no lookahead on early-close days)."""

    def __init__(
        self,
        table: pd.DataFrame,
        pair: C.Pair,
        *,
        refresh: Callable[[], pd.DataFrame] | None = None,
    ):
        self.pair = pair
        self._refresh = refresh
        self._fresh_day: Any = None  # the New York day whose first look fetched the bars
        self._set(table)

    def _set(self, table: pd.DataFrame) -> None:
        self.table = table
        dates = pd.DatetimeIndex(table.index)
        closes = (dates + pd.Timedelta(hours=16)).tz_localize(NEW_YORK).tz_convert("UTC")
        self._close_ns = closes.as_unit("ns").asi8
        self._closes = closes

    def refresh(self, now: pd.Timestamp) -> None:
        """Fetch and process the latest data (live mode) at the first look of each New York day
        at the broker's time `now` (a session's first iteration brings the bar the previous one
        closed); a failure raises and the next look tries again. The replay's table never
        changes."""
        day = now.tz_convert(NEW_YORK).date()
        if self._refresh is None or day == self._fresh_day:
            return
        self._set(self._refresh())
        self._fresh_day = day

    def fresh_at(self, now: pd.Timestamp) -> None:
        """The table was fetched at `now` (start-up): no refresh before the next day."""
        self._fresh_day = now.tz_convert(NEW_YORK).date()

    def closed_rows(self, now: pd.Timestamp) -> int:
        """How many bars have closed at `now`."""
        return int(np.searchsorted(self._close_ns, now.as_unit("ns").value, side="right"))

    def bar_close_time(self, row: int) -> pd.Timestamp:
        return self._closes[row]

    def row_of(self, bar: pd.Timestamp) -> int:
        """Row of the bar dated `bar` (the last one at or before it)."""
        return max(int(pd.DatetimeIndex(self.table.index).searchsorted(bar, side="right")) - 1, 0)


def bar_quotes(
    table: pd.DataFrame, rows: int, pair: C.Pair, close_time: pd.Timestamp, adv_usd: float
) -> dict[str, BarQuote]:
    """The last closed bar of each leg as the simulated broker's quote: close, volatility and ADV
    computed by the backtest's own functions over the bars up to it (causal)."""
    out = {}
    for sym in pair.tickers:
        closes = table[f"{sym}_close"].to_numpy("float64")[max(rows - 3 * pe.VOL_BARS, 0) : rows]
        vol = float(pe.daily_vol(closes[:, None])[-1, 0])
        adv = float(pe.adv_shares(closes[-1:], None, adv_usd)[0])
        out[sym] = BarQuote(float(closes[-1]), vol, adv, close_time)
    return out


# --- Signal sources -------------------------------------------------------------------------------
class ModelSignals:
    """Instructions from the registry's models: the signal of a bar (computed from the rows up to
    it, cached), sized by `pair_engine.signal_weights`; outcomes go back to the A/B test."""

    #: Kelly weights are fractions of equity.
    per_usd = False

    def __init__(self, generator: Any, sizing: pe.SizingConfig):
        self.generator = generator
        self.sizing = sizing
        self._cache: dict[pd.Timestamp, Any] = {}

    def signal(self, table: pd.DataFrame, row: int) -> Any:
        bar = pd.Timestamp(table.index[row])
        sig = self._cache.get(bar)
        if sig is None:
            sig = self._cache[bar] = self.generator.latest(table.iloc[: row + 1])
            if len(self._cache) > 8:
                self._cache.pop(next(iter(self._cache)))
        return sig

    def weights(self, table: pd.DataFrame, row: int) -> tuple[float, float]:
        sig = self.signal(table, row)
        return pe.signal_weights(sig.action.value, float(sig.probability), self.sizing)

    def describe(self, table: pd.DataFrame, row: int) -> dict[str, Any]:
        import signals as sg

        return json.loads(sg.describe(self.signal(table, row)))

    def record_outcome(self, table: pd.DataFrame, row: int) -> list[Any]:
        """Score bar `row`'s signal with its realized next-bar spread return (known once bar
        row + 1 has closed); returns the promotions or rollbacks this caused."""
        if "next_spread_return" not in table.columns:
            return []
        realized = float(table["next_spread_return"].iloc[row])
        applied = self.generator.record_outcome(self.signal(table, row), realized)
        if applied:
            self._cache.clear()  # later bars are scored by the new champion
        return applied


class FileSignals:
    """Instructions from a signal CSV (`backtest --signals`), on the feed's bars from `first`;
    `per_usd`: its weights are USD per leg (an action or state file with `leg_usd`), read the
    same way as the backtest reads them (`pair_engine.read_signal_file`)."""

    def __init__(self, path: str, pair: C.Pair, table: pd.DataFrame, first: int, sizing: Any):
        self.first = first
        self._args = (path, pair, sizing)
        self._read(table)

    def _read(self, table: pd.DataFrame) -> None:
        """The file's instructions on the table's bars from `first` (again when the live feed
        brought new bars: a row dated after the last bar read is read then)."""
        path, pair, sizing = self._args
        dates = pd.DatetimeIndex(table.index)[self.first :]
        found = pe.read_signal_file(path, pair, dates, sizing, data_start=table.index[0])
        if found.skipped_before:
            log.info(
                "signal file %s: %d rows before the first bar %s skipped (flat by then)",
                path,
                found.skipped_before,
                dates[0].date(),
            )
        self._weights = found.weights
        self.per_usd = found.per_usd

    def weights(self, table: pd.DataFrame, row: int) -> tuple[float, float]:
        i = row - self.first
        if i >= len(self._weights) and len(table) - self.first > len(self._weights):
            self._read(table)  # the feed has bars the file was not read on yet
        if i < 0 or i >= len(self._weights):
            return math.nan, math.nan
        w = self._weights[i]
        return float(w[0]), float(w[1])

    def describe(self, table: pd.DataFrame, row: int) -> dict[str, Any]:
        w = self.weights(table, row)
        weights = None if any(math.isnan(x) for x in w) else list(w)  # None: no instruction
        return {"bar": pd.Timestamp(table.index[row]).isoformat(), "weights": weights}

    def record_outcome(self, table: pd.DataFrame, row: int) -> list[Any]:
        return []


# --- The broker as the pair's venue, and the fill journal -----------------------------------------
class PairVenue:
    """The broker as the engine's `pair_engine.Venue` for one pair: it holds the pair's legs only.
    A position outside the pair (bought by hand, another strategy) is reported (status, the
    dashboard, an alert) but never traded and kept out of the pair's limits: the gate sees the
    pair's legs against the account's whole equity."""

    def __init__(
        self,
        broker: ta.Broker,
        symbols: tuple[str, ...],
        unowned: Mapping[str, Qty] | None = None,
    ):
        self.broker = broker
        self.symbols = symbols
        self.unowned = dict(unowned or {})  # shares the home does not own (home_identity)
        self.name = broker.name
        self.simulated = broker.simulated
        self.live_checks = broker.live_checks

    @property
    def order_prefix(self) -> str:
        return self.broker.order_prefix

    def account(self) -> ta.Account:
        return self.broker.account()

    def holdings(self) -> dict[str, int]:
        held = self.broker.holdings()
        return {
            s: held.get(s, 0) - self.unowned.get(s, 0)
            for s in self.symbols
            if held.get(s, 0) != self.unowned.get(s, 0)
        }

    def latest_prices(self, symbols: Any) -> dict[str, ta.Quote]:
        return self.broker.latest_prices(symbols)

    def clock(self) -> Any:
        return self.broker.clock()

    def known_orders(self, orders: Any) -> dict[str, ta.BrokerOrder]:
        return self.broker.known_orders(orders)

    def submit_basket(self, basket: Any) -> list[ta.BrokerOrder]:
        return self.broker.submit_basket(basket)

    def await_fills(
        self, placed: Any, *, cancel_unfilled: bool, on_update: Any = None
    ) -> list[ta.BrokerOrder]:
        return self.broker.await_fills(placed, cancel_unfilled=cancel_unfilled, on_update=on_update)


@dataclass
class _Tracked:
    """An order the loop sent, as far as the audit log has recorded it."""

    symbol: str
    side: str
    qty: Qty
    filled: Qty = 0
    avg_price: float = 0.0
    done: bool = False


@dataclass(frozen=True)
class FillDelta:
    """Shares newly filled on one order, signed (a sell < 0), at `price` (USD), with `fees`."""

    symbol: str
    shares: Qty
    price: float
    fees: float


class FillJournal:
    """Every broker fill audited exactly once. A `fill` record carries the shares of one new
    fill (a partial fill, or the rest) and the cumulative count; the audit log is the journal's
    memory, so after any crash the fills the broker made that the log lacks are audited when
    first seen -- at start-up, marked `recovered`. Orders are known to it from their
    `order_intent` records (written before each submission)."""

    def __init__(self, audit: AuditLog):
        self.audit = audit
        self.orders: dict[str, _Tracked] = {}

    @classmethod
    def from_audit(cls, audit: AuditLog) -> FillJournal:
        journal = cls(audit)
        orders = journal.orders
        for record in audit.records():
            event, p = record.event, record.payload
            if event == "order_intent":
                orders[p["client_order_id"]] = _Tracked(p["symbol"], p["side"], as_qty(p["qty"]))
            elif event == "fill" and p.get("client_order_id") in orders:
                t = orders[p["client_order_id"]]
                t.filled, t.avg_price = as_qty(p["filled_qty"]), float(p["avg_price"])
                t.done = t.done or t.filled >= t.qty
            elif event == "order_done" and p.get("client_order_id") in orders:
                orders[p["client_order_id"]].done = True
        return journal

    def open_ids(self) -> list[str]:
        """Client ids of the orders not known to be done."""
        return [cid for cid, t in self.orders.items() if not t.done]

    def intend(self, payload: Mapping[str, Any]) -> None:
        self.orders[payload["client_order_id"]] = _Tracked(
            payload["symbol"], payload["side"], as_qty(payload["qty"])
        )

    def observe(self, order: Any, *, recovered: bool = False) -> FillDelta | None:
        """Audit what is new about `order` (a BrokerOrder or its event payload): the shares
        filled since the last look, and its end when it ended short of its quantity."""
        get = order.get if isinstance(order, Mapping) else lambda k: getattr(order, k, None)
        cid = str(get("client_order_id"))
        t = self.orders.get(cid)
        if t is None or t.done:
            return None
        filled = as_qty(get("filled_qty") or 0)
        status = OrderStatus(str(get("status")))
        delta = None
        if filled > t.filled:
            avg = float(get("filled_avg_price") or 0.0)
            shares = filled - t.filled
            price = (avg * filled - t.avg_price * t.filled) / shares
            fees = float(get("fees") or 0.0) * shares / filled
            self.audit.append(
                "fill",
                {
                    "client_order_id": cid,
                    "symbol": t.symbol,
                    "side": t.side,
                    "qty": shares,
                    "price": round(price, 6),
                    "filled_qty": filled,
                    "avg_price": avg,
                    "order_qty": t.qty,
                    "status": status.value,
                    "recovered": recovered,
                    "fees": round(float(get("fees") or 0.0) * shares / filled, 6),
                },
            )
            t.filled, t.avg_price = filled, avg
            sign = 1 if t.side == "buy" else -1
            delta = FillDelta(t.symbol, sign * shares, price, fees)
        if status.done and not t.done:
            t.done = True
            if t.filled < t.qty:
                self.audit.append(
                    "order_done",
                    {
                        "client_order_id": cid,
                        "status": status.value,
                        "filled_qty": t.filled,
                        "qty": t.qty,
                        "recovered": recovered,
                    },
                )
        return delta

    def poll(
        self, broker: ta.Broker, *, recovered: bool = False, wait: bool = False
    ) -> list[FillDelta]:
        """Look up every open order at the broker and audit what is new; `wait`: first wait
        (bounded by the broker's fill policy) for them to be done. An intent the broker never
        received (a crash or failure before the POST) is closed as `not_at_broker`."""
        current = []
        for cid in self.open_ids():
            found = broker.get_order_by_client_id(cid)
            if found is None:
                self.orders[cid].done = True
                self.audit.append(
                    "order_done",
                    {"client_order_id": cid, "status": "not_at_broker", "recovered": recovered},
                )
            else:
                current.append(found)
        if wait and current:
            current = broker.await_fills(current, cancel_unfilled=False, on_update=self.observe)
        deltas = [self.observe(o, recovered=recovered) for o in current]
        return [d for d in deltas if d is not None]


def journaled_since(audit: AuditLog, since: Any) -> list[FillDelta]:
    """The fills (and adopted shares) the audit journal recorded after record `since` (an
    AuditAnchor: positions.json's), which a kill may have kept out of positions.json. Shares
    are signed; an adoption has no price."""
    out = []
    for record in audit.records():
        if record.seq <= since.seq:
            continue
        p = record.payload
        if record.event == "fill":
            sign = 1 if p["side"] == "buy" else -1
            shares = sign * as_qty(p["qty"])
            out.append(FillDelta(p["symbol"], shares, float(p["price"]), float(p.get("fees", 0))))
        elif record.event == "positions_adopted":
            out.extend(FillDelta(s, as_qty(q), 0.0, 0.0) for s, q in p["positions"].items())
    return out


# --- Dead man's switch ------------------------------------------------------------------------
class DeadMansSwitch:
    """Trips (once, until the next beat) when no iteration completed within `intervals` x
    `interval_s`, or when the data feed is stale; `on_trip(reason)` raises the alarm."""

    def __init__(self, interval_s: float, intervals: int, on_trip: Callable[[str], None]):
        self.limit_s = interval_s * intervals
        self.on_trip = on_trip
        self.last_beat: pd.Timestamp | None = None
        self.tripped = False

    def beat(self, now: pd.Timestamp) -> None:
        self.last_beat = now
        self.tripped = False

    def check(self, now: pd.Timestamp, *, stale_reason: str | None = None) -> bool:
        """True when it tripped now."""
        if self.tripped:
            return False
        reason = stale_reason
        if reason is None and self.last_beat is not None:
            idle = (now - self.last_beat).total_seconds()
            if idle > self.limit_s:
                reason = (
                    f"no loop iteration completed for {idle:,.0f} s (limit {self.limit_s:,.0f} s)"
                )
        if reason is None:
            return False
        self.tripped = True
        self.on_trip(reason)
        return True


# --- State files ----------------------------------------------------------------------------------
def read_equity_log(path: Path) -> pd.DataFrame:
    """data/equity_<mode>.csv by date, checked first (`check_equity_log`: ConfigurationError
    naming the file when it does not parse; no rows yet: an empty frame). A fractional quantity
    is written as its repr, which pandas' default float parser reads back exactly."""
    if check_equity_log(path) is None:
        return pd.DataFrame(
            columns=list(EQUITY_COLUMNS[1:]), index=pd.DatetimeIndex([], name="date")
        )
    return pd.read_csv(path, parse_dates=["date"]).set_index("date")


def reconcile(
    saved: PositionsState | None,
    broker: ta.Broker,
    symbols: tuple[str, ...] | None = None,
    recovered: Any = (),
    unowned: Mapping[str, Qty] | None = None,
) -> list[dict[str, Any]]:
    """Differences between positions.json and the broker (the broker wins): one entry per pair
    symbol whose quantity differs, and one for cash beyond a cent. `recovered` (FillDelta) are
    the loop's own fills journaled after positions.json was written (`journaled_since`, the
    ones found at start-up included): they are expected, not differences; so is the borrow the
    paper account charged since. Shares held apart (`unowned`) are not the home's; positions
    outside `symbols` are reported apart (`foreign`)."""
    if saved is None:
        return []
    diffs: list[dict[str, Any]] = []
    mine = {s: p.qty for s, p in saved.positions.items()}
    cash = saved.cash
    for fill in recovered:
        mine[fill.symbol] = mine.get(fill.symbol, 0) + fill.shares
        cash -= fill.shares * fill.price + fill.fees
    unowned = unowned or {}
    theirs = {s: q - unowned.get(s, 0) for s, q in broker.holdings().items()}
    paid = getattr(broker, "borrow_paid", None)
    if paid is not None and saved.borrow_paid is not None:
        cash -= paid - saved.borrow_paid
    for sym in sorted(set(mine) | set(theirs)):
        if symbols is not None and sym not in symbols:
            continue
        if mine.get(sym, 0) != theirs.get(sym, 0):
            diffs.append(
                {"symbol": sym, "saved_qty": mine.get(sym, 0), "broker_qty": theirs.get(sym, 0)}
            )
    broker_cash = broker.account().cash
    if abs(cash - broker_cash) > 0.01:
        diffs.append({"field": "cash", "saved": round(cash, 2), "broker": round(broker_cash, 2)})
    return diffs


# --- The loop -------------------------------------------------------------------------------------
class _Stop:
    """Ctrl-C and SIGTERM set the event; the loop stops at its next safe point. During start-up
    (`interruptible`: nothing decided yet) a signal that arrives while the thread waits on a
    broker read or the market data (`in_request`) also ends that wait at once: `StopRequested`
    is raised from the handler there, and nowhere else."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason = "end"
        self.broker: ta.Broker | None = None
        self.data: Any = None  # the market-data fetch (market_data.GuardedFetch) in use
        self.interruptible = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal_module.SIGINT, signal_module.SIGTERM):
            self._previous[sig] = signal_module.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.reason = signal_module.Signals(signum).name
        self.event.set()
        for waited in (self.broker, self.data) if self.interruptible else ():
            if waited is not None and waited.in_request:
                waited.in_request = False
                raise StopRequested(f"{self.reason} during a request")
        log.warning("%s received: stopping at the next safe point", self.reason)

    def check(self) -> None:
        """StopRequested when a stop has come: start-up asks nothing more of the broker."""
        if self.event.is_set():
            raise StopRequested(f"{self.reason} during start-up")

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal_module.signal(sig, handler)


def _acquire_lock(home: C.Paths) -> Any:
    import filelock

    lock = filelock.FileLock(str(home.live_lock_file), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        pid_file = home.live_lock_file.with_suffix(".pid")
        pid = pid_file.read_text().strip() if pid_file.exists() else "?"
        raise ConfigurationError(
            f"another `python main.py live` (pid {pid}) is running on {home.home}: one instance "
            f"per TRADING_HOME (lock {home.live_lock_file})"
        ) from None
    return lock


def _write_pid(home: C.Paths) -> None:
    """data/live.pid, for `status` and a second instance's message: written with the `start`
    record, after every refusal (a refused run leaves only the lock file)."""
    home.live_lock_file.with_suffix(".pid").write_text(f"{os.getpid()}\n")


@dataclass
class _IterationState:
    last_bar: pd.Timestamp | None = None  # the latest bar whose decision was carried out
    pending: PendingDecision | None = None  # a decision saved but maybe not carried out
    signal_bar: pd.Timestamp | None = None  # the latest bar seen (its signal computed)
    audited_signal_bar: pd.Timestamp | None = None  # the latest bar whose signal was audited
    description: dict[str, Any] | None = None  # that bar's signal, for the prediction log
    model_version: str | None = None
    bars_since_drift: int = DRIFT_EVERY_BARS
    #: Rows of the table the due drift check reads (run in the next iteration without a decision).
    drift_due_rows: int | None = None
    foreign: dict[str, int] = field(default_factory=dict)  # the last reported foreign positions
    deferred_bar: pd.Timestamp | None = None  # the bar last deferred (audited once)
    account: ta.Account | None = None  # the last account read (for a heartbeat in an outage)
    broker_error: str | None = None
    #: A target a withheld increase left unreached: the next bar without an instruction owes it.
    owed: dict[str, Qty] | None = None


@dataclass
class _Session:
    """One run of the loop: what it trades with and where it writes. Only the clock, the feed and
    persistence are the loop's own; every decision is `pair_engine`'s."""

    config: LiveConfig
    pair: C.Pair
    home: C.Paths
    broker: ta.Broker
    risk: rm.RiskManager
    source: Any  # ModelSignals | FileSignals
    feed: BarFeed
    audit: AuditLog
    summary: LoopSummary
    mode: str
    journal: FillJournal
    state: _IterationState = field(default_factory=_IterationState)
    deadman: DeadMansSwitch | None = None
    first_row: int = 0  # the first bar this run decides (the replay's START)
    #: Shares in the pair's symbols that are not this home's (home_identity): never traded.
    unowned: Mapping[str, Qty] = field(default_factory=dict)
    data: Any = None  # the live feed's guarded fetch (market_data.GuardedFetch); None in a replay

    @property
    def venue(self) -> PairVenue:
        return PairVenue(self.broker, self.pair.tickers, self.unowned)

    def save_positions(self, now: pd.Timestamp) -> PositionsState:
        """positions.json from the broker's confirmed state; a change in the positions outside
        the pair is reported."""
        st = self.state
        saved = PositionsState.of(
            self.broker,
            self.mode,
            st.last_bar,
            now,
            st.pending,
            symbols=self.pair.tickers,
            open_ids=self.journal.open_ids(),
            signal_bar=st.audited_signal_bar,
            audit_anchor=self.audit.anchor(),
            unowned=self.unowned,
            owed_target=st.owed,
        )
        saved.save(self.home.positions_file)
        st.account = ta.Account(saved.equity, saved.cash, math.nan)
        self._report_foreign(saved.foreign)
        return saved

    def _report_foreign(self, foreign: Mapping[str, HeldPosition]) -> None:
        shares = {s: p.qty for s, p in foreign.items()}
        if shares == self.state.foreign:
            return
        self.state.foreign = shares
        if not shares:
            self.audit.append("foreign_positions", {"positions": {}})
            return
        detail = {
            s: {"qty": p.qty, "price": p.market_price, "value": round(p.qty * p.market_price, 2)}
            for s, p in foreign.items()
        }
        text = ", ".join(
            f"{s} {p.qty:+,} (${p.qty * p.market_price:,.2f})" for s, p in foreign.items()
        )
        self.audit.append("foreign_positions", {"positions": detail})
        log.warning("positions outside %s/%s: %s (left alone)", *self.pair.tickers, text)
        alert_dispatch.send(
            "WARNING",
            "foreign_positions",
            "Positions outside the pair",
            f"{self.broker.name} holds {text}, outside {self.pair.long}/{self.pair.short}; the "
            "loop never trades them and keeps them out of the pair's limits",
            {"positions": detail},
            home=self.home.home,
        )

    def on_event(self, event: str, payload: dict[str, Any]) -> None:
        """The engine's decisions, into the audit log and the summary; every fill through the
        journal (audited once)."""
        self.audit.append(event, payload)
        if event == "order_intent":
            self.journal.intend(payload)
        elif event in ("order_submitted", "order_update"):
            if event == "order_submitted":
                self.summary.orders += 1
            self.journal.observe(payload)
        elif event == "risk_decision" and not payload.get("accepted"):
            self.summary.rejections += 1


def refuse_unsupported_sizing(trading: pe.TradingConfig, broker: Any) -> None:
    """ConfigurationError, before anything is written, when `broker` (a Broker or its class)
    cannot trade what the sizing makes: fractional shares on Alpaca, which allows no fractional
    short sale (a pair always has a short leg) and takes fractions only in market DAY orders."""
    if trading.sizing.fractional_shares and not broker.fractional_shares:
        raise ConfigurationError(
            f"fractional shares cannot be traded with the {broker.name} broker (Alpaca allows no "
            "fractional short sale and takes fractions only in market DAY orders); drop "
            "--fractional-shares (or [sizing] fractional_shares), or use the simulated broker"
        )


def run_trading_loop(
    paper_trading: bool = True,
    *,
    config: LiveConfig | None = None,
    pair: C.Pair | None = None,
    home: C.Paths | None = None,
    clock: Any = None,
    broker: ta.Broker | None = None,
    feed: BarFeed | None = None,
    generator: Any = None,
    stop: threading.Event | None = None,
    progress: Callable[[pd.Timestamp], None] | None = None,
) -> LoopSummary:
    """Run the loop until the replay ends, `--once` finishes, or a stop; returns what it did.
    `generator` (a signals.SignalGenerator) replaces the one built from the registry.

    A stop (SIGINT, SIGTERM, `stop`) at any moment -- an outage's retries included -- ends it
    normally after the `stop` record; a broker failure otherwise raises (after the halt and the
    `stop` record)."""
    config = config or LiveConfig()
    if config.live and paper_trading:
        raise ConfigurationError("live=True contradicts paper_trading=True")
    if broker is not None:
        refuse_unsupported_sizing(config.trading, broker)
    home = (home or C.paths()).ensure()
    pair = pair or C.resolve_pair()
    stopper = _Stop()
    if stop is not None:
        stopper.event = stop
    lock = _acquire_lock(home)
    summary = LoopSummary()
    audit = AuditLog(home.audit_log)
    session: _Session | None = None
    stopper.install()  # before any broker call: SIGTERM during a start-up outage is a stop too
    try:
        stopper.interruptible = True
        session, clock = _start(
            config, pair, home, clock, broker, feed, generator, audit, summary, stopper
        )
        stopper.interruptible = False  # from here a stop waits for the iteration to end
        _run(session, clock, stopper)
    except StopRequested:
        log.warning("%s received: the wait on the broker ended, stopping", stopper.reason)
    except (BrokerError, DataSourceUnavailable):
        if not stopper.event.is_set():
            summary.stopped_by = "error"
            raise
    finally:
        if stopper.event.is_set():
            summary.stopped_by = stopper.reason if stopper.reason != "end" else "stop"
        try:
            _finish(session, home, audit, summary)
        finally:
            stopper.restore()
            lock.release()
            alert_dispatch.close_all()
    return summary


def _finish(session: _Session | None, home: C.Paths, audit: AuditLog, summary: LoopSummary) -> None:
    """The last positions.json (when the broker answers), the `stop` record, a stopped
    heartbeat: written however the run ended -- unless it ended before its `start` record:
    refused (a broken audit chain, a bad state file, stale data), nothing is written; stopped
    by a signal, the `stop` record alone."""
    if not summary.started:
        if summary.audit_checked and summary.stopped_by in ("SIGTERM", "SIGINT"):
            audit.append("stop", {"reason": summary.stopped_by, "iterations": 0, "equity": None})
        return
    if session is not None:
        try:
            summary.equity = session.save_positions(pd.Timestamp.now(tz="UTC")).equity
        except (BrokerError, DataSourceUnavailable, StopRequested) as exc:
            log.warning("positions.json not refreshed at stop: %s", exc)
    audit.append(
        "stop",
        {"reason": summary.stopped_by, "iterations": summary.iterations, "equity": summary.equity},
    )
    beat = _last_beat(home)
    if beat is not None:
        stopped_at = pd.Timestamp.now(tz="UTC").isoformat()
        stopped = dataclasses.replace(
            beat, status="stopped", stopped_at=stopped_at, audit_anchor=_anchor_json(audit)
        )
        write_heartbeat(home.heartbeat_file, stopped)


def _start(
    config: LiveConfig,
    pair: C.Pair,
    home: C.Paths,
    clock: Any,
    broker: ta.Broker | None,
    feed: BarFeed | None,
    generator: Any,
    audit: AuditLog,
    summary: LoopSummary,
    stopper: _Stop,
) -> tuple[_Session, Any]:
    """Feed, clock, broker, risk manager and signal source; the `start` record; the fills the
    broker made since the last run (audited, recovered); reconciliation with the broker (the
    broker wins). A broker failure here halts new entries with its cause, then raises."""
    mode = "live" if config.live else "paper"
    trading = config.trading
    # Nothing is written before the audit chain, its anchor and the state files are read.
    stored = audit_logging.read_stored_anchor(home)
    audit_logging.check_chain(home.audit_log, stored.anchor, anchor_source=stored.source)
    summary.audit_checked = True
    saved = read_positions(home.positions_file)
    check_equity_log(equity_log_path(home, mode), pair.tickers)  # never appended under garbage
    risk = rm.RiskManager(trading.limits, state_path=home.risk_state_file, home=home.home)
    last_bar = (
        pd.Timestamp(saved.last_processed_bar) if saved and saved.last_processed_bar else None
    )
    clocks: list[Any] = [clock]  # the paper broker reads the loop's clock, set below
    if broker is None:
        broker = ta.SimulatedBroker(
            home.paper_broker_file,
            initial_cash=trading.initial_capital,
            execution=trading.execution,
            now=lambda: clocks[0].now(),
        )
    broker.stop_event = stopper.event  # before its first call: a stop cuts its waits short
    stopper.broker = broker
    default_feed = feed is None
    write_feed: Callable[[], None] | None = None
    if feed is None and config.replay:
        feed, write_feed = _default_feed(pair, home, replay=True)
    elif feed is None:
        feed, write_feed = _live_feed(config, pair, home, broker, risk, audit, summary, stopper)
    if clock is None:
        clock = RealClock()
        if config.replay:
            start = pd.Timestamp(config.replay_start)
            if last_bar is not None:  # resume after the last bar decided, never replay it
                start = max(start, feed.bar_close_time(feed.row_of(last_bar)))
            clock = ReplayClock(start, config.speed)
    clocks[0] = clock
    stopper.check()
    if default_feed and not config.replay:
        _refuse_an_old_feed(feed, pair, broker)
    first_row = 0
    if config.replay and default_feed:
        _refuse_a_replay_past_the_data(config, feed, pair)
        first_row = feed.closed_rows(pd.Timestamp(config.replay_start))
    source = _signal_source(config, pair, home, feed, first_row, generator)
    identity = _home_identity(home, broker, pair, saved)  # a refusal writes nothing
    # Every refusal is behind us: the processed table, the pid, the order tag are written now.
    if write_feed is not None:
        write_feed()
    if not summary.started:  # (a market-data failure at start-up recorded it already)
        _record_start(config, pair, home, broker, audit, summary)
    journal = FillJournal.from_audit(audit)
    session = _Session(
        config, pair, home, broker, risk, source, feed, audit, summary, mode, journal
    )
    session.first_row = first_row
    if not isinstance(identity, BrokerError):
        session.unowned = identity[0].unowned
    session.data = stopper.data
    state = session.state
    state.last_bar = last_bar
    state.pending = saved.pending_decision if saved else None
    state.owed = dict(saved.owed_target) if saved and saved.owed_target else None
    if saved is not None:
        state.foreign = {s: p.qty for s, p in saved.foreign.items()}
        if saved.last_signal_bar:
            state.audited_signal_bar = pd.Timestamp(saved.last_signal_bar)
    stopper.check()
    try:
        if isinstance(identity, BrokerError):  # the home's account could not be checked
            raise identity
        home_identity.report_unowned(home, audit, *identity, pair.tickers)
        recovered = journal.poll(broker, recovered=True)
        if recovered:
            log.warning(
                "%d fill(s) made since the last run audited now (recovered)", len(recovered)
            )
        _reconcile(session, saved, recovered)
        session.save_positions(clock.now())
    except BrokerError as exc:
        _broker_failed(session, exc, clock.now(), at_start=True)
        raise
    return session, clock


def _record_start(
    config: LiveConfig,
    pair: C.Pair,
    home: C.Paths,
    broker: ta.Broker,
    audit: AuditLog,
    summary: LoopSummary,
) -> None:
    """The run's first writes, once nothing refuses it: the pid, the order tag, the `start`
    record (after it, a `stop` record always follows)."""
    _write_pid(home)
    broker.order_prefix = home.order_prefix()  # its first write (a new home's tag)
    audit.append(
        "start",
        {
            "mode": "live" if config.live else "paper",
            "broker": broker.name,
            "pair": list(pair.tickers),
            "pid": os.getpid(),
            "interval_s": config.interval_s,
            "replay": [str(config.replay_start), str(config.replay_end)] if config.replay else None,
            "once": config.once,
            "signals": config.signal_file or "model",
            "order_prefix": broker.order_prefix,
            "config": config.trading.to_dict(),
        },
    )
    summary.started = True
    log.info(
        "live loop started: %s, %s broker, %s/%s, every %gs%s",
        "live" if config.live else "paper",
        broker.name,
        pair.long,
        pair.short,
        config.interval_s,
        f", replay {config.replay_start}..{config.replay_end}" if config.replay else "",
    )


def _live_feed(
    config: LiveConfig,
    pair: C.Pair,
    home: C.Paths,
    broker: ta.Broker,
    risk: rm.RiskManager,
    audit: AuditLog,
    summary: LoopSummary,
    stopper: _Stop,
) -> tuple[BarFeed, Callable[[], None]]:
    """The data source's bars for a live run, fetched under the broker's failure policy
    (`market_data.GuardedFetch`: breaker, retries). A failure is recorded like a broker's at
    start-up -- `start` and `data_failure` records, an alert, a halt for an outage -- then
    raised with `--once` or rejected keys; a loop waits an interval and tries again."""
    import market_data
    import process_stock_data as psd

    source = C.data_source_name()
    fetch = market_data.GuardedFetch(
        lambda: psd.process(source, pair, home=home, write=False), stop_event=stopper.event
    )
    stopper.data = fetch
    while True:
        try:
            table, processed = fetch()
            break
        except (DataSourceUnavailable, KeysRejected) as exc:
            _data_failed(config, pair, home, broker, risk, audit, summary, exc, fetch)
            if config.once or isinstance(exc, KeysRejected):
                raise
            log.error("market data unavailable at start-up: %s; retrying", exc)
            stopper.event.wait(config.interval_s)

    def refresh() -> pd.DataFrame:  # the loop's daily look for new bars, under the same policy
        fresh, meta = fetch()
        psd.write_processed(fresh, meta)
        return fresh

    return BarFeed(table, pair, refresh=refresh), lambda: psd.write_processed(table, processed)


def _data_failed_in_loop(session: _Session, exc: BaseException, now: pd.Timestamp) -> None:
    """A market-data failure in the loop: audited and alerted; the loop goes on and tries at
    its next interval. An open market-data breaker halts new entries with its cause, as an open
    broker breaker does."""
    cause = session.data.failure_cause()
    session.audit.append(
        "data_failure",
        {"error": str(exc), "cause": cause, "at_start": False, "keys_rejected": False},
    )
    alert_dispatch.send(
        "HIGH",
        "market_data",
        "Market data unavailable",
        f"{C.data_source_name()} market data: {exc}; retried at the next interval",
        {"error": str(exc), "source": C.data_source_name()},
        home=session.home.home,
    )
    if cause is not None and not session.risk.halted:
        reason = f"market data failing: {cause}"
        session.risk.halt(reason, now)
        session.audit.append("halt", {"reason": reason, "cause": cause})


def _data_failed(
    config: LiveConfig,
    pair: C.Pair,
    home: C.Paths,
    broker: ta.Broker,
    risk: rm.RiskManager,
    audit: AuditLog,
    summary: LoopSummary,
    exc: TradingError,
    fetch: Any,
) -> None:
    """A market-data failure at start-up, as a broker's: the `start` record (once), a
    `data_failure` record, an alert; an outage also halts new entries with its cause (keys
    rejected: nothing could trade anyway, the operator fixes them)."""
    if not summary.started:
        _record_start(config, pair, home, broker, audit, summary)
    keys = isinstance(exc, KeysRejected)
    cause = fetch.failure_cause()
    audit.append(
        "data_failure",
        {"error": str(exc), "cause": cause, "at_start": True, "keys_rejected": keys},
    )
    alert_dispatch.send(
        "CRITICAL" if keys else "HIGH",
        "market_data",
        "Market data keys rejected" if keys else "Market data unavailable",
        f"{C.data_source_name()} market data at start-up: {exc}",
        {"error": str(exc), "source": C.data_source_name()},
        home=home.home,
    )
    if not keys and not risk.halted:
        reason = f"market data failing at start-up: {cause or exc}"
        risk.halt(reason, pd.Timestamp.now(tz="UTC"))
        audit.append("halt", {"reason": reason, "cause": cause or str(exc)})


#: A live run refuses a data source whose last bar is older than this (days): it has no current
#: data (the dead man's switch calls a feed stale after 4 days).
OLD_FEED_DAYS = 5


def _refuse_an_old_feed(feed: BarFeed, pair: C.Pair, broker: ta.Broker) -> None:
    """ConfigurationError (exit 2), before anything is written, when the data source's last bar
    closed more than OLD_FEED_DAYS ago by the broker's clock (the bundled history ends
    2022-12-28): the fix is a current source, or a replay for history."""
    try:
        now = broker.clock().at
    except BrokerError:
        return  # the start-up below meets the failure and halts on it
    last = feed.bar_close_time(len(feed.table) - 1)
    age_days = (now - last).total_seconds() / 86_400
    feed.fresh_at(now)  # fetched just now: the first refresh is the next day's
    if age_days > OLD_FEED_DAYS:
        source = C.data_source_name()
        raise ConfigurationError(
            f"the {source} data of {pair.long}/{pair.short} end on {last.date()} "
            f"({age_days:,.0f} days ago): live trading needs current bars; set DATA_SOURCE="
            "yfinance or alpaca (README, Data sources), or replay history with `python main.py "
            "live --replay 2022-01-03 2022-03-31`"
        )


def _home_identity(
    home: C.Paths, broker: ta.Broker, pair: C.Pair, saved: PositionsState | None
) -> tuple[home_identity.HomeIdentity, bool] | BrokerError:
    """(HomeIdentity, first start): the account this home trades, checked (another venue or
    account, a copy on a remote account: ConfigurationError) and recorded at a first start.
    A broker failure is returned: the start-up raises it after its `start` record, and halts."""
    try:
        identity, new = home_identity.establish(home, broker, pair.tickers, saved)
    except BrokerError as exc:
        return exc
    if new:
        broker.persist()  # the paper account's id is on disk before the home names it
        home_identity.write_identity(home, identity)
    return identity, new


def _refuse_a_replay_past_the_data(config: LiveConfig, feed: BarFeed, pair: C.Pair) -> None:
    """ConfigurationError (exit 2) when the replay starts after the data's last bar."""
    last = pd.Timestamp(feed.table.index[-1])
    start = pd.Timestamp(config.replay_start).tz_convert(NEW_YORK).tz_localize(None).normalize()
    if start > last:
        raise ConfigurationError(
            f"--replay from {start.date()}: the {C.data_source_name()} data of "
            f"{pair.long}/{pair.short} end on {last.date()}; replay dates up to it"
        )


def _broker_failed(
    session: _Session, exc: BaseException, now: pd.Timestamp, *, at_start: bool = False
) -> None:
    """A broker failure: audited; an open circuit breaker or a failure at start-up halts new
    entries (persisted in risk_state.json) with its cause -- the first error of the breaker's
    run of failures, not "circuit open" -- and a CRITICAL alert."""
    broker, risk = session.broker, session.risk
    cause = broker.failure_cause()
    if cause is None and isinstance(exc, CircuitOpenError | ta.OrderIdConflict):
        cause = str(exc)  # an id that stands for another order halts at once
    session.state.broker_error = str(exc)
    session.audit.append(
        "broker_failure",
        {
            "error": str(exc),
            "cause": cause,
            "at_start": at_start,
            "breakers": broker.breaker_states(),
        },
    )
    if cause is None and not at_start:
        return
    reason = f"broker {broker.name} failing{' at start-up' if at_start else ''}: {cause or exc}"
    if not risk.halted:
        risk.halt(reason, now)
        session.audit.append("halt", {"reason": reason, "cause": cause or str(exc)})


def _signal_source(
    config: LiveConfig, pair: C.Pair, home: C.Paths, feed: BarFeed, first_row: int, generator: Any
) -> ModelSignals | FileSignals:
    """A signal file's instructions, or the registry's models (a replay trains one if needed)."""
    if config.signal_file:
        return FileSignals(config.signal_file, pair, feed.table, first_row, config.trading.sizing)
    if generator is None:
        import signals as sg

        if config.replay:  # a new user's first replay trains the model it needs
            import train_model as tm

            trained = tm.ensure_active_model(pair, home)
            if trained:
                log.info("%s", trained)
        generator = sg.SignalGenerator(pair, home=home)
        generator.check(feed.table)  # model integrity before anything is written
    return ModelSignals(generator, config.trading.sizing)


def _reconcile(session: _Session, saved: PositionsState | None, recovered: Any = ()) -> None:
    """positions.json against the broker, after the journal's fills since it was written (a
    kill between a fill's audit record and positions.json is no difference)."""
    home, broker = session.home, session.broker
    journaled = list(recovered)
    if saved is not None and saved.audit_anchor is not None:
        journaled = journaled_since(session.audit, saved.audit_anchor)  # recovered ones too
    diffs = reconcile(saved, broker, session.pair.tickers, journaled, session.unowned)
    session.summary.reconciliation_differences = len(diffs)
    session.audit.append(
        "reconciliation",
        {
            "differences": diffs,
            "broker_wins": True,
            "recovered_fills": len(recovered),
            "journaled_fills": len(journaled),
        },
    )
    if diffs:
        log.warning(
            "reconciliation: %d difference(s) between positions.json and the broker "
            "(the broker wins): %s",
            len(diffs),
            diffs,
        )
        alert_dispatch.send(
            "HIGH",
            "reconciliation",
            "Positions differ from the broker",
            f"{len(diffs)} difference(s) between {home.positions_file.name} and "
            f"{broker.name}; the broker's positions are used",
            {"differences": diffs},
            home=home.home,
        )


def _replay_done(session: _Session, now: pd.Timestamp) -> bool:
    """A replay ends once every bar dated START..END has been decided (the last one on the first
    iteration after its close), or a week after END whatever happened."""
    config = session.config
    if not config.replay or now < config.replay_end:
        return False
    last_row = session.feed.closed_rows(pd.Timestamp(config.replay_end)) - 1
    if last_row < session.first_row:
        return True
    last = pd.Timestamp(session.feed.table.index[last_row])
    decided = session.state.last_bar is not None and session.state.last_bar >= last
    return decided or now >= config.replay_end + pd.Timedelta(days=7)


def _run(session: _Session, clock: Any, stopper: _Stop) -> None:
    """Iterate while the broker's clock says the market is open (the local NYSE calendar for a
    simulated broker), sleep until its next open otherwise, until the replay ends, `--once`, or
    a stop."""
    config, home, broker = session.config, session.home, session.broker

    def trip(reason: str) -> None:
        alert_dispatch.send(
            "CRITICAL",
            "dead_mans_switch",
            "Live loop is not making progress",
            f"{reason}; check the process and the data feed",
            {"reason": reason},
            home=home.home,
        )
        session.audit.append("alert", {"source": "dead_mans_switch", "reason": reason})
        if config.flatten_on_deadman:
            _flatten(session, clock.now(), "dead man's switch")

    deadman = session.deadman = DeadMansSwitch(config.interval_s, config.deadman_intervals, trip)
    if not getattr(clock, "replay", False):
        threading.Thread(
            target=_watch,
            args=(deadman, clock, config.interval_s, stopper.event),
            daemon=True,
            name="deadman",
        ).start()
    while not stopper.event.is_set():
        if _replay_done(session, clock.now()):
            break
        try:
            mclock = broker.clock()  # the broker's view of the session decides
            now = mclock.at
            if not mclock.is_open:
                write_heartbeat(
                    home.heartbeat_file, _beat(now, session, mclock, "waiting for the open")
                )
                session.summary.idle(
                    f"market closed by {broker.name}'s clock at {now:%Y-%m-%d %H:%M} UTC; next "
                    f"open {mclock.next_open:%Y-%m-%d %H:%M} UTC"
                )
                if config.once:
                    log.info(
                        "market closed at %s (broker's clock); next open %s", now, mclock.next_open
                    )
                    break
                clock.sleep(max((mclock.next_open - now).total_seconds(), 1.0), stopper.event)
                deadman.beat(clock.now())
                continue
            _iteration(session, now)
        except (BrokerError, DataSourceUnavailable) as exc:
            # The broker or the feed failed this time (retries and the breakers are behind
            # this): audit, halt on an open breaker, and try again next interval.
            if stopper.event.is_set():
                break
            session.summary.errors += 1
            log.error("iteration failed: %s", exc)
            now = clock.now()
            data = isinstance(exc, DataSourceUnavailable) and session.data is not None
            if data:
                _data_failed_in_loop(session, exc, now)
            else:
                _broker_failed(session, exc, now)
            down = "market data unavailable" if data else "broker unavailable"
            write_heartbeat(home.heartbeat_file, _beat(now, session, None, down))
            if config.once:
                alert_dispatch.send(
                    "HIGH",
                    "live_loop",
                    "Live iteration failed",
                    f"the --once iteration failed: {exc}",
                    {"error": str(exc), "halted": session.risk.halted},
                    home=home.home,
                )
                raise
            clock.sleep(config.interval_s, stopper.event)
            continue
        session.state.broker_error = None
        session.summary.iterations += 1
        deadman.beat(clock.now())
        write_heartbeat(home.heartbeat_file, _beat(now, session, mclock, "running"))
        if config.once:
            break
        clock.sleep(config.interval_s, stopper.event)
    _due_drift_check(session)  # `--once`, the replay's end or a stop: a due check still runs


def _due_drift_check(session: _Session) -> None:
    """The drift check a new bar made due, on the rows up to that bar; then none is due."""
    rows = session.state.drift_due_rows
    if rows is not None:
        session.state.drift_due_rows = None
        _drift_check(session.pair, session.home, session.feed.table.iloc[:rows])
        session.summary.drift_checks += 1


def _iteration(session: _Session, now: pd.Timestamp) -> None:
    """One pass at the broker's time `now`: fills of the loop's open orders, then the latest
    closed bar; a new one is taken through `_new_bar` once."""
    feed, pair, state = session.feed, session.pair, session.state
    if session.journal.open_ids():
        session.journal.poll(session.broker)
    feed.refresh(now)
    rows = feed.closed_rows(now)
    if rows < 2:
        raise DataError(
            f"no closed bar of {pair.long}/{pair.short} before {now}; the data start later"
        )
    bar = pd.Timestamp(feed.table.index[rows - 1])
    # Stale feed: the latest bar should be the last session's. More than a few days is a dead feed.
    age_days = (now - feed.bar_close_time(rows - 1)).total_seconds() / 86_400
    if age_days > 4:
        assert session.deadman is not None
        session.deadman.check(
            now,
            stale_reason=(
                f"latest bar {bar.date()} is {age_days:.1f} days old at {now}: "
                "the data feed is stale"
            ),
        )
        log.warning("data feed stale (latest bar %s); not trading", bar.date())
        session.summary.idle(f"the data feed is stale: its latest bar {bar.date()} is old")
        return
    if state.signal_bar != bar:
        _new_bar(session, rows, now)
    if (state.last_bar is None or bar > state.last_bar) and rows - 1 >= session.first_row:
        # Once per bar; a failed attempt (broker outage) or a closed market is retried.
        _decide(session, feed.table.iloc[:rows], rows - 1, now)
    elif state.last_bar is not None and bar <= state.last_bar:
        session.summary.idle(f"no new bar since {state.last_bar.date()} (decided already)")
        _due_drift_check(session)  # the bar is decided: monitoring now
    session.summary.predictions += 1
    log.info(
        "prediction %s",
        json.dumps(state.description),
        extra={"bar": bar.isoformat(), "sim_time": now.isoformat()},
    )


def _new_bar(session: _Session, rows: int, now: pd.Timestamp) -> None:
    """A bar closed: quotes to the paper broker, its signal (audited once per bar, restarts
    included), and -- the first time the bar is seen -- the previous signal's outcome and the
    drift check."""
    feed, broker, state, audit = session.feed, session.broker, session.state, session.audit
    table = feed.table.iloc[:rows]
    row = rows - 1
    bar = pd.Timestamp(table.index[row])
    if isinstance(broker, ta.SimulatedBroker):
        broker.set_market(  # borrow is keyed by the bar's day: setting it again charges nothing
            bar_quotes(
                feed.table,
                rows,
                session.pair,
                feed.bar_close_time(row),
                broker.execution.default_adv_usd,
            )
        )
    state.description = session.source.describe(table, row)
    state.signal_bar = bar
    session.summary.bars += 1
    if state.audited_signal_bar is None or bar > state.audited_signal_bar:
        audit.append("signal", state.description)
        state.audited_signal_bar = bar
    version = state.description.get("model")
    if version is not None and version != state.model_version:
        state.model_version = version
        audit.append("model_selected", {"model_version": version})
    fresh = state.last_bar is None or bar > state.last_bar
    if row < session.first_row or not fresh:
        return  # before the replay's first bar, or decided before a restart
    if row - 1 >= session.first_row:
        _record_outcome(session, table, row - 1)
    state.bars_since_drift += 1
    if state.bars_since_drift >= DRIFT_EVERY_BARS and isinstance(session.source, ModelSignals):
        state.bars_since_drift = 0
        state.drift_due_rows = rows  # monitoring waits for an idle iteration: orders go first


def _decide(session: _Session, table: pd.DataFrame, row: int, now: pd.Timestamp) -> None:
    """The bar's decision through the engine: drawdown control (a breach seen on this bar halts;
    its liquidation goes out as late as an instruction would), then the instruction of the
    signal `fill_delay_bars` bars back (a simulated venue fills at this bar's close, as in the
    backtest); the fills it got (waited for, bounded); then the equity row and positions.json.

    A decision the gate refused because the market was closed is not marked done: it is retried
    at the next iteration the broker's clock says is open. One refused while halted is marked
    done with a `bar_skipped` record naming the halt."""
    broker, risk, state, config = session.broker, session.risk, session.state, session.config
    venue = session.venue
    trading = config.trading
    bar = pd.Timestamp(table.index[row])
    symbols = session.pair.tickers
    log_path = equity_log_path(session.home, session.mode)
    pending = state.pending if state.pending and state.pending.bar == bar.isoformat() else None
    sod = pending.start_of_day_equity if pending else _last_close_equity(log_path, broker)
    before = venue.holdings()
    reports = []
    # The paper broker fills at this bar's close, so an instruction waits the whole delay here;
    # Alpaca fills in the next session, one bar of the delay by itself.
    delay = trading.fill_delay_bars if broker.simulated else max(trading.fill_delay_bars - 1, 0)
    breach = risk.drawdown_bar
    dd = pe.control_drawdown(
        venue,
        risk,
        now,
        bar=bar,
        fill_delay_bars=delay,
        bars_since_breach=None if breach is None else pe.bars_between(table.index, breach, bar),
        id_parts=pe.drawdown_ids(bar),
        start_of_day_equity=sod,
        on_event=session.on_event,
    )
    if dd is not None:  # the liquidation's flat book is the bar's target (`control_drawdown`)
        reports.append(dd)
        state.owed = None  # liquidated: nothing is owed any more
        session.summary.idle("a drawdown liquidation went out: the bar's instruction is not traded")
    src = row - delay
    if src >= session.first_row and dd is None:
        target = pending.target if pending else None
        if target is None:
            weights = session.source.weights(table, src)
            instructed = pe.size_target(
                venue,
                weights,
                symbols,
                per_usd=session.source.per_usd,
                fractional=trading.sizing.fractional_shares,
            )
            why = pe.one_legged(weights, instructed) if instructed is not None else None
            if why is not None:
                _not_sized(session, bar, instructed or {}, why)
                state.owed = None  # a new instruction supersedes what was owed
            else:
                target = pe.standing_target(instructed, state.owed)
            if instructed is None and target is not None:
                log.info("the signal says keep: completing the withheld target %s", target)
            elif instructed is None:
                session.summary.idle(f"the signal of {table.index[src].date()} says keep")
        if target is not None:
            # Write-ahead: the target is saved before any order, so a restart between the two
            # baskets of a flip re-sends exactly the same orders (same ids, same quantities).
            state.pending = PendingDecision(bar.isoformat(), dict(target), sod)
            session.save_positions(now)
            report = pe.trade_to(
                venue,
                risk,
                trading,
                target,
                id_parts=pe.decision_ids(bar, table.index[src]),
                start_of_day_equity=sod,
                on_event=session.on_event,
            )
            reports.append(report)
            state.owed = pe.owed_target(report)  # held, not intended, decides the next bar
    if session.journal.open_ids():  # positions.json from confirmed fills: wait (bounded)
        session.journal.poll(broker, wait=True)
    after = venue.holdings()
    if after != before:
        session.audit.append("position_change", {"before": before, "after": after})
    reasons = {d.reason for r in reports for d in r.denials}
    for r in reports:
        for d in r.denials:
            session.summary.idle(f"the risk gate refused {d.purpose} orders: {d.reason}")
        if r.target is not None and not r.traded and not r.denials and not r.unfilled:
            session.summary.idle("the positions are within the rebalance band of the target")
        if r.unfilled:
            session.summary.idle("a closing order did not fill in time: the opening orders wait")
    if rm.RiskReason.MARKET_CLOSED.value in reasons:
        if state.deferred_bar != bar:
            state.deferred_bar = bar
            session.audit.append(
                "bar_deferred",
                {"bar": bar.isoformat(), "reason": "market closed: retried at the next open"},
            )
        session.save_positions(now)
        return
    if dd is not None or rm.RiskReason.TRADING_HALTED.value in reasons:
        session.summary.idle(f"trading halted since {risk.halted_at}: {risk.halt_reason}")
        session.audit.append(
            "bar_skipped", {"bar": bar.isoformat(), "reason": f"halted: {risk.halt_reason}"}
        )
    account = broker.account()
    append_equity_row(
        log_path,
        EquityRow(
            bar.strftime("%Y-%m-%d"),
            account.equity,
            account.cash,
            getattr(broker, "borrow_paid", 0.0),
            after,
        ),
        symbols,
    )
    state.last_bar = bar
    state.pending = None
    session.save_positions(now)


def _not_sized(session: _Session, bar: pd.Timestamp, target: Mapping[str, Qty], why: str) -> None:
    """A pair the capital cannot size on both legs: no order, and the loop says why (log,
    audit, the run's idle reasons)."""
    log.warning("%s: %s", bar.date(), why)
    session.summary.idle(why)
    session.audit.append(
        "pair_not_sized", {"bar": bar.isoformat(), "target": dict(target), "reason": why}
    )


def _last_close_equity(log_path: Path, broker: ta.Broker) -> float:
    """Equity at the previous bar's close (the last equity row), for the daily loss limit; the
    broker's equity now when there is none."""
    last = last_equity_row(log_path)
    return float(last[1]) if last is not None else broker.account().equity


def _record_outcome(session: _Session, table: pd.DataFrame, row: int) -> None:
    """Bar `row`'s signal meets its outcome (the next bar has closed): the A/B test may promote
    or roll back the canary; each change is audited and alerted."""
    for decision in session.source.record_outcome(table, row):
        session.summary.model_changes += 1
        event = "model_promoted" if decision.action.value == "promote" else "model_rolled_back"
        payload = {
            "challenger": decision.challenger_version,
            "champion": decision.champion_version,
            "reason": decision.reason,
            "bar": pd.Timestamp(table.index[row + 1]).isoformat(),
        }
        session.audit.append(event, payload)
        alert_dispatch.send(
            "WARNING",
            "model_ab_test",
            f"Canary {decision.challenger_version} {decision.action.value}d automatically",
            decision.reason,
            payload,
            home=session.home.home,
        )


def _flatten(session: _Session, now: pd.Timestamp, why: str) -> None:
    """Close both legs with a reduce-only basket (it passes a halted gate); positions outside
    the pair are left alone."""
    venue = session.venue
    held = venue.holdings()
    report = pe.rebalance(
        venue,
        session.risk,
        dict.fromkeys(held, 0),
        purpose=Purpose.LIQUIDATION,
        id_parts=(pe.STRATEGY, "flatten", now.isoformat()),
        start_of_day_equity=session.broker.account().equity,
        on_event=session.on_event,
    )
    log.warning("flattened %s (%s): %d orders", held, why, len(report.submitted))


def _drift_check(pair: C.Pair, home: C.Paths, table: pd.DataFrame) -> None:
    from model_drift_detection import drift_report

    try:
        drift_report(pair, home=home, table=table, kinds=("xgb",), predictions=False)
    except TradingError as exc:  # no reference, too few rows: the loop goes on
        log.warning("drift check skipped: %s", exc)


def _watch(deadman: DeadMansSwitch, clock: Any, interval_s: float, stop: threading.Event) -> None:
    while not stop.wait(max(min(interval_s / 4, 60.0), 0.5)):
        deadman.check(clock.now())


def _last_beat(home: C.Paths) -> Heartbeat | None:
    """The heartbeat on disk, None when absent or unreadable (it is rewritten anyway)."""
    try:
        return Heartbeat.read(home.heartbeat_file)
    except ConfigurationError:
        return None


def _beat(now: pd.Timestamp, session: _Session, mclock: Any, status: str) -> Heartbeat:
    """The heartbeat now. `mclock` None: the broker is failing -- nothing is asked of it (the
    last account read and the local calendar are shown)."""
    broker, risk, state = session.broker, session.risk, session.state
    if mclock is None:
        account, held = state.account, {}
        mclock = market_clock(now)
        source = "the NYSE calendar (the broker is failing)"
    else:
        account = state.account = broker.account()
        held = broker.holdings()
        source = clock_source(broker)
    return Heartbeat(
        status=status,
        time=pd.Timestamp.now(tz="UTC").isoformat(),
        loop_time=now.isoformat(),
        pid=os.getpid(),
        mode=session.mode,
        broker=broker.name,
        market_open=bool(mclock.is_open),
        next_open=mclock.next_open.isoformat(),
        next_close=mclock.next_close.isoformat(),
        equity=round(account.equity, 2) if account else math.nan,
        cash=round(account.cash, 2) if account else math.nan,
        positions={s: q for s, q in held.items() if q and s in session.pair.tickers},
        halted=risk.halted,
        halt_reason=risk.halt_reason,
        circuit_breakers=broker.breaker_states(),
        last_bar=state.last_bar.isoformat() if state.last_bar else None,
        interval_s=session.config.interval_s,
        foreign_positions=dict(state.foreign),
        broker_error=state.broker_error,
        audit_anchor=_anchor_json(session.audit),
        clock_source=source,
    )


def clock_source(broker: ta.Broker) -> str:
    """Whose clock `broker.clock()` reads: a real broker's own, the NYSE calendar for the paper
    broker."""
    return "the NYSE calendar" if broker.simulated else f"{broker.name}'s clock"


def _anchor_json(audit: AuditLog) -> dict[str, Any] | None:
    anchor = audit.anchor()
    return anchor.to_json() if anchor is not None else None


def _default_feed(
    pair: C.Pair, home: C.Paths, *, replay: bool
) -> tuple[BarFeed, Callable[[], None] | None]:
    """The data source's bars, and what writes the processed table once the run is not refused
    (None: nothing to write). A live run processes without writing: data it refuses as stale
    must leave data/processed_*.parquet as it was."""
    import process_stock_data as psd

    if replay:
        try:
            table, _ = psd.load_processed(pair, home)
        except DataError:
            table, _ = psd.process("bundled", pair, home=home)
        return BarFeed(table, pair), None
    table, summary = psd.process(C.data_source_name(), pair, home=home, write=False)
    return BarFeed(table, pair, refresh=None), lambda: psd.write_processed(table, summary)


__all__ = [
    "SCHEMA_VERSION",
    "BarFeed",
    "DeadMansSwitch",
    "EquityRow",
    "Heartbeat",
    "HeldPosition",
    "LiveConfig",
    "LoopSummary",
    "PendingDecision",
    "PositionsState",
    "RealClock",
    "ReplayClock",
    "append_equity_row",
    "check_equity_log",
    "equity_log_path",
    "last_equity_row",
    "loop_pid",
    "read_equity_log",
    "read_positions",
    "reconcile",
    "run_trading_loop",
    "status",
    "write_heartbeat",
]
