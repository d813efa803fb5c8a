"""The live loop: `python main.py live` (paper by default), under cron (`--once`) or tmux.

Each iteration, inside NYSE hours: latest closed bar -> (once per new bar) quotes to the paper
broker, signal, the previous signal's outcome to the A/B test, drift check (once per 5 new bars),
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
import constants as C
import pair_engine as pe
import risk_management as rm
import trading_api as ta
from atomic_io import atomic_write_json
from audit_logging import AuditLog
from data_validation import NEW_YORK, market_clock
from error_handling import (
    BrokerError,
    CircuitOpenError,
    ConfigurationError,
    DataError,
    DataSourceUnavailable,
    TradingError,
)
from trading_execution import BarQuote, Purpose

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
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
        self._set(table)

    def _set(self, table: pd.DataFrame) -> None:
        self.table = table
        dates = pd.DatetimeIndex(table.index)
        closes = (dates + pd.Timedelta(hours=16)).tz_localize(NEW_YORK).tz_convert("UTC")
        self._close_ns = closes.as_unit("ns").asi8
        self._closes = closes

    def refresh(self) -> None:
        """Fetch and process the latest data (live mode); the replay's table never changes."""
        if self._refresh is not None:
            self._set(self._refresh())

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
    """Instructions from a signal CSV (`backtest --signals`), on the feed's bars from `first`."""

    def __init__(self, path: str, pair: C.Pair, table: pd.DataFrame, first: int, sizing: Any):
        self.first = first
        dates = pd.DatetimeIndex(table.index)[first:]
        self._weights = pe.read_signal_file(path, pair, dates, sizing)

    def weights(self, table: pd.DataFrame, row: int) -> tuple[float, float]:
        i = row - self.first
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
@dataclass(frozen=True)
class PendingDecision:
    """A decision saved before its orders (write-ahead): after a restart the same bar is carried
    out with the same target, so the same client ids and quantities go out."""

    bar: str  # ISO timestamp of the decision bar
    target: Mapping[str, int]  # signed shares per leg
    start_of_day_equity: float  # USD, for the daily loss limit

    def to_json(self) -> dict[str, Any]:
        return {
            "bar": self.bar,
            "target": dict(self.target),
            "start_of_day_equity": self.start_of_day_equity,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PendingDecision:
        return cls(
            str(data["bar"]),
            {str(s): int(q) for s, q in data["target"].items()},
            float(data.get("start_of_day_equity", math.nan)),
        )


@dataclass(frozen=True)
class HeldPosition:
    """One leg in positions.json: signed shares, average entry and last price (USD)."""

    qty: int
    avg_entry_price: float
    market_price: float


@dataclass(frozen=True)
class PositionsState:
    """data/positions.json: the loop's view of the account after every change (the broker wins
    at start-up), the last bar decided and the decision in flight."""

    mode: str
    broker: str
    updated_at: str
    cash: float
    equity: float
    positions: Mapping[str, HeldPosition]
    open_orders: tuple[Mapping[str, Any], ...] = ()
    last_processed_bar: str | None = None
    pending_decision: PendingDecision | None = None
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def of(
        cls,
        broker: ta.Broker,
        mode: str,
        last_bar: pd.Timestamp | None,
        now: pd.Timestamp,
        pending: PendingDecision | None = None,
    ) -> PositionsState:
        account = broker.account()
        return cls(
            mode=mode,
            broker=broker.name,
            updated_at=now.isoformat(),
            cash=round(account.cash, 6),
            equity=round(account.equity, 6),
            positions={
                sym: HeldPosition(p.qty, round(p.avg_entry_price, 6), p.market_price)
                for sym, p in sorted(broker.positions().items())
            },
            open_orders=tuple(
                {
                    "client_order_id": o.client_order_id,
                    "symbol": o.symbol,
                    "side": o.side.value,
                    "qty": o.qty,
                    "filled_qty": o.filled_qty,
                    "status": o.status,
                }
                for o in broker.open_orders()
            ),
            last_processed_bar=last_bar.isoformat() if last_bar is not None else None,
            pending_decision=pending,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "mode": self.mode,
            "broker": self.broker,
            "updated_at": self.updated_at,
            "cash": self.cash,
            "equity": self.equity,
            "positions": {s: dataclasses.asdict(p) for s, p in self.positions.items()},
            "open_orders": [dict(o) for o in self.open_orders],
            "last_processed_bar": self.last_processed_bar,
            "pending_decision": self.pending_decision.to_json() if self.pending_decision else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PositionsState:
        pending = data.get("pending_decision")
        return cls(
            mode=str(data["mode"]),
            broker=str(data["broker"]),
            updated_at=str(data["updated_at"]),
            cash=float(data["cash"]),
            equity=float(data["equity"]),
            positions={
                str(s): HeldPosition(
                    int(p["qty"]), float(p["avg_entry_price"]), float(p["market_price"])
                )
                for s, p in data.get("positions", {}).items()
            },
            open_orders=tuple(data.get("open_orders") or ()),
            last_processed_bar=data.get("last_processed_bar"),
            pending_decision=PendingDecision.from_json(pending) if pending else None,
            schema_version=int(data["schema_version"]),
        )

    def save(self, path: Path) -> None:
        atomic_write_json(path, self.to_json())


def read_positions(path: Path) -> PositionsState | None:
    """positions.json, or None when absent; ConfigurationError naming the file when unreadable."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"{path} is unreadable ({exc}); move it aside: the broker's positions will be used"
        ) from None
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        version = data.get("schema_version") if isinstance(data, dict) else None
        raise ConfigurationError(
            f"{path} has schema version {version!r}, expected {SCHEMA_VERSION}"
        )
    try:
        return PositionsState.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"{path} is not a positions file ({type(exc).__name__}: {exc}); move it aside: the "
            "broker's positions will be used"
        ) from None


@dataclass(frozen=True)
class EquityRow:
    """One row of data/equity_<mode>.csv: the account at a bar's close, after that bar's
    decision (the backtest's equity.csv has the same columns for the same bars)."""

    date: str  # ISO date of the bar
    equity: float
    cash: float
    borrow_paid: float
    positions: Mapping[str, int]

    def line(self, symbols: tuple[str, ...]) -> str:
        qty = ",".join(str(int(self.positions.get(s, 0))) for s in symbols)
        return f"{self.date},{self.equity:.6f},{self.cash:.6f},{self.borrow_paid:.6f},{qty}\n"


def equity_log_path(home: C.Paths, mode: str) -> Path:
    return home.data_dir / f"equity_{mode}.csv"


def append_equity_row(path: Path, row: EquityRow, symbols: tuple[str, ...]) -> bool:
    """Append `row` (fsync) unless the file already has its date (a restart re-running the bar);
    returns whether it was written."""
    header = "date,equity,cash,borrow_paid," + ",".join(f"qty_{s}" for s in symbols) + "\n"
    last = last_equity_row(path)
    if last is not None and last[0] >= row.date:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        if fh.tell() == 0:
            fh.write(header)
        fh.write(row.line(symbols))
        fh.flush()
        os.fsync(fh.fileno())
    return True


def last_equity_row(path: Path) -> list[str] | None:
    """The fields of the last data row of an equity log (its tail only); None when there is
    none (no file, or only a header)."""
    if not path.exists():
        return None
    with open(path, "rb") as fh:
        fh.seek(max(fh.seek(0, os.SEEK_END) - 4096, 0))
        lines = fh.read().decode("utf-8", "replace").splitlines()
    if not lines or not lines[-1][:1].isdigit():
        return None
    return lines[-1].split(",")


def read_equity_log(path: Path) -> pd.DataFrame:
    """data/equity_<mode>.csv by date (the last row wins for a date written twice)."""
    frame = pd.read_csv(path, parse_dates=["date"])
    return frame.drop_duplicates("date", keep="last").set_index("date").sort_index()


@dataclass(frozen=True)
class Heartbeat:
    """data/heartbeat.json: what the loop is doing, rewritten every iteration (times ISO, UTC;
    money USD). Read by `status` and the dashboard through `read`."""

    status: str  # running | waiting for the open | stopped
    time: str  # wall clock of the write
    loop_time: str  # the loop's clock (the replay's simulated time)
    pid: int
    mode: str  # paper | live
    broker: str
    market_open: bool
    next_open: str
    next_close: str
    equity: float
    cash: float
    positions: Mapping[str, int]
    halted: bool
    halt_reason: str | None
    circuit_breakers: Mapping[str, str]
    last_bar: str | None
    interval_s: float
    stopped_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Heartbeat:
        if not isinstance(data, Mapping):
            raise ValueError(f"not a heartbeat object: {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(n for n in names - set(data) if n != "stopped_at")
        if missing:
            raise ValueError(f"heartbeat lacks {', '.join(missing)}")
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def read(cls, path: Path) -> Heartbeat | None:
        """The heartbeat file, None when absent; ConfigurationError naming it when unreadable."""
        if not path.exists():
            return None
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"{path} is not a readable heartbeat ({exc}); the loop rewrites it at its next "
                "iteration, or delete it"
            ) from None


def _write_heartbeat(path: Path, beat: Heartbeat) -> None:
    """Atomic rename without fsync: a heartbeat is rewritten every iteration and losing the last
    one to a power cut only makes the loop look older than it is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(beat.to_json(), indent=2) + "\n")
    os.replace(tmp, path)


def reconcile(saved: PositionsState | None, broker: ta.Broker) -> list[dict[str, Any]]:
    """Differences between positions.json and the broker (the broker wins): one entry per symbol
    whose quantity differs, and one for cash beyond a cent."""
    if saved is None:
        return []
    diffs: list[dict[str, Any]] = []
    mine = {s: p.qty for s, p in saved.positions.items()}
    theirs = broker.holdings()
    for sym in sorted(set(mine) | set(theirs)):
        if mine.get(sym, 0) != theirs.get(sym, 0):
            diffs.append(
                {"symbol": sym, "saved_qty": mine.get(sym, 0), "broker_qty": theirs.get(sym, 0)}
            )
    cash = broker.account().cash
    if abs(saved.cash - cash) > 0.01:
        diffs.append({"field": "cash", "saved": saved.cash, "broker": round(cash, 2)})
    return diffs


# --- The loop -------------------------------------------------------------------------------------
class _Stop:
    """Ctrl-C and SIGTERM set the event; the loop stops at its next safe point."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason = "end"
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal_module.SIGINT, signal_module.SIGTERM):
            self._previous[sig] = signal_module.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.reason = signal_module.Signals(signum).name
        log.warning("%s received: stopping at the next safe point", self.reason)
        self.event.set()

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
    home.live_lock_file.with_suffix(".pid").write_text(f"{os.getpid()}\n")
    return lock


@dataclass
class _IterationState:
    last_bar: pd.Timestamp | None = None  # the latest bar whose decision was carried out
    pending: PendingDecision | None = None  # a decision saved but maybe not carried out
    signal_bar: pd.Timestamp | None = None  # the latest bar seen (its signal computed)
    description: dict[str, Any] | None = None  # that bar's signal, for the prediction log
    model_version: str | None = None
    bars_since_drift: int = DRIFT_EVERY_BARS


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
    state: _IterationState = field(default_factory=_IterationState)
    deadman: DeadMansSwitch | None = None
    first_row: int = 0  # the first bar this run decides (the replay's START)

    def save_positions(self, now: pd.Timestamp) -> None:
        PositionsState.of(
            self.broker, self.mode, self.state.last_bar, now, self.state.pending
        ).save(self.home.positions_file)

    def on_event(self, event: str, payload: dict[str, Any]) -> None:
        """The engine's decisions, into the audit log and the summary."""
        self.audit.append(event, payload)
        if event == "order_submitted":
            self.summary.orders += 1
            if payload.get("filled_qty"):
                self.audit.append("fill", payload)
        elif event == "risk_decision" and not payload.get("accepted"):
            self.summary.rejections += 1


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
    `generator` (a signals.SignalGenerator) replaces the one built from the registry."""
    config = config or LiveConfig()
    if config.live and paper_trading:
        raise ConfigurationError("live=True contradicts paper_trading=True")
    home = (home or C.paths()).ensure()
    pair = pair or C.resolve_pair()
    stopper = _Stop()
    if stop is not None:
        stopper.event = stop
    lock = _acquire_lock(home)
    summary = LoopSummary()
    audit = AuditLog(home.audit_log)
    session: _Session | None = None
    try:
        session, clock = _start(config, pair, home, clock, broker, feed, generator, audit, summary)
        stopper.install()
        _run(session, clock, stopper)
        if stopper.event.is_set():
            summary.stopped_by = stopper.reason if stopper.reason != "end" else "stop"
        summary.equity = session.broker.account().equity
        return summary
    finally:
        try:
            if session is not None:
                session.save_positions(pd.Timestamp.now(tz="UTC"))
            audit.append(
                "stop",
                {
                    "reason": summary.stopped_by,
                    "iterations": summary.iterations,
                    "equity": summary.equity,
                },
            )
            beat = _last_beat(home)
            if beat is not None:
                stopped_at = pd.Timestamp.now(tz="UTC").isoformat()
                _write_heartbeat(
                    home.heartbeat_file,
                    dataclasses.replace(beat, status="stopped", stopped_at=stopped_at),
                )
        finally:
            stopper.restore()
            lock.release()
            alert_dispatch.close_all()


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
) -> tuple[_Session, Any]:
    """Feed, clock, broker, risk manager and signal source; the `start` record; reconciliation
    with the broker (the broker wins)."""
    mode = "live" if config.live else "paper"
    trading = config.trading
    if feed is None:
        feed = _default_feed(pair, home, replay=config.replay)
    saved = read_positions(home.positions_file)
    last_bar = (
        pd.Timestamp(saved.last_processed_bar) if saved and saved.last_processed_bar else None
    )
    if clock is None:
        clock = RealClock()
        if config.replay:
            start = pd.Timestamp(config.replay_start)
            if last_bar is not None:  # resume after the last bar decided, never replay it
                start = max(start, feed.bar_close_time(feed.row_of(last_bar)))
            clock = ReplayClock(start, config.speed)
    if broker is None:
        broker = ta.SimulatedBroker(
            home.paper_broker_file,
            initial_cash=trading.initial_capital,
            execution=trading.execution,
            now=clock.now,
        )
    risk = rm.RiskManager(trading.limits, state_path=home.risk_state_file, home=home.home)
    first_row = 0
    if config.replay:
        first_row = feed.closed_rows(pd.Timestamp(config.replay_start))
    source = _signal_source(config, pair, home, feed, first_row, generator)
    session = _Session(config, pair, home, broker, risk, source, feed, audit, summary, mode)
    session.first_row = first_row
    session.state.last_bar = last_bar
    session.state.pending = saved.pending_decision if saved else None
    audit.append(
        "start",
        {
            "mode": mode,
            "broker": broker.name,
            "pair": list(pair.tickers),
            "pid": os.getpid(),
            "interval_s": config.interval_s,
            "replay": [str(config.replay_start), str(config.replay_end)] if config.replay else None,
            "once": config.once,
            "signals": config.signal_file or "model",
            "config": trading.to_dict(),
        },
    )
    log.info(
        "live loop started: %s, %s broker, %s/%s, every %gs%s",
        mode,
        broker.name,
        pair.long,
        pair.short,
        config.interval_s,
        f", replay {config.replay_start}..{config.replay_end}" if config.replay else "",
    )
    _reconcile(session, saved)
    session.save_positions(clock.now())
    return session, clock


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
    return ModelSignals(generator, config.trading.sizing)


def _reconcile(session: _Session, saved: PositionsState | None) -> None:
    home, broker = session.home, session.broker
    diffs = reconcile(saved, broker)
    session.summary.reconciliation_differences = len(diffs)
    session.audit.append("reconciliation", {"differences": diffs, "broker_wins": True})
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
    """Iterate inside market hours, sleep outside them, until the replay ends, `--once`, or a
    stop."""
    config, home, broker, risk = session.config, session.home, session.broker, session.risk

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
        now = clock.now()
        if _replay_done(session, now):
            break
        mclock = market_clock(now)
        if not mclock.is_open:
            _write_heartbeat(
                home.heartbeat_file, _beat(now, session, mclock, "waiting for the open")
            )
            if config.once:
                log.info("market closed at %s; next open %s", now, mclock.next_open)
                break
            clock.sleep((mclock.next_open - now).total_seconds(), stopper.event)
            deadman.beat(clock.now())
            continue
        try:
            _iteration(session, now)
        except (BrokerError, DataSourceUnavailable) as exc:
            # The broker or the feed failed this time (retries and the breaker are behind
            # this): log, audit, and try again next interval; the switch watches progress.
            session.summary.errors += 1
            log.error("iteration at %s failed: %s", now, exc)
            session.audit.append("alert", {"source": "live_loop", "error": str(exc)})
            breaker = getattr(broker, "breaker", None)
            opened = breaker is not None and breaker.state.value == "open"
            if (isinstance(exc, CircuitOpenError) or opened) and not risk.halted:
                risk.halt(f"broker circuit breaker open: {exc}", now)
                session.audit.append("halt", {"reason": risk.halt_reason})
            if config.once:
                raise
            clock.sleep(config.interval_s, stopper.event)
            continue
        session.summary.iterations += 1
        deadman.beat(now)
        _write_heartbeat(home.heartbeat_file, _beat(now, session, mclock, "running"))
        if config.once:
            break
        clock.sleep(config.interval_s, stopper.event)


def _iteration(session: _Session, now: pd.Timestamp) -> None:
    """One pass: the latest closed bar; a new one is taken through `_new_bar` once."""
    feed, pair, state = session.feed, session.pair, session.state
    feed.refresh()
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
        return
    if state.signal_bar != bar:
        _new_bar(session, rows, now)
    if (state.last_bar is None or bar > state.last_bar) and rows - 1 >= session.first_row:
        # Once per bar; a failed attempt (broker outage) is retried at the next iteration.
        _decide(session, feed.table.iloc[:rows], rows - 1, now)
    session.summary.predictions += 1
    log.info(
        "prediction %s",
        json.dumps(state.description),
        extra={"bar": bar.isoformat(), "sim_time": now.isoformat()},
    )


def _new_bar(session: _Session, rows: int, now: pd.Timestamp) -> None:
    """A bar closed: quotes to the paper broker, its signal (audited), and -- the first time the
    bar is seen -- the previous signal's outcome and the drift check."""
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
    audit.append("signal", state.description)
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
        _drift_check(session.pair, session.home, table)


def _decide(session: _Session, table: pd.DataFrame, row: int, now: pd.Timestamp) -> None:
    """The bar's decision through the engine: drawdown control, then the instruction of the
    signal `fill_delay_bars` bars back (a simulated venue fills at this bar's close, as in the
    backtest); then the equity row and positions.json."""
    broker, risk, state, config = session.broker, session.risk, session.state, session.config
    trading = config.trading
    bar = pd.Timestamp(table.index[row])
    symbols = session.pair.tickers
    log_path = equity_log_path(session.home, session.mode)
    pending = state.pending if state.pending and state.pending.bar == bar.isoformat() else None
    sod = pending.start_of_day_equity if pending else _last_close_equity(log_path, broker)
    before = broker.holdings()
    pe.control_drawdown(
        broker,
        risk,
        now,
        id_parts=pe.drawdown_ids(bar),
        start_of_day_equity=sod,
        on_event=session.on_event,
    )
    delay = trading.fill_delay_bars if broker.simulated else max(trading.fill_delay_bars - 1, 0)
    src = row - delay
    if src >= session.first_row:
        target = pending.target if pending else None
        if target is None:
            target = pe.size_target(broker, session.source.weights(table, src), symbols)
        if target is not None:
            # Write-ahead: the target is saved before any order, so a restart between the two
            # baskets of a flip re-sends exactly the same orders (same ids, same quantities).
            state.pending = PendingDecision(bar.isoformat(), dict(target), sod)
            session.save_positions(now)
            pe.trade_to(
                broker,
                risk,
                trading,
                target,
                id_parts=pe.decision_ids(bar, table.index[src]),
                start_of_day_equity=sod,
                on_event=session.on_event,
            )
    after = broker.holdings()
    if after != before:
        session.audit.append("position_change", {"before": before, "after": after})
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
    """Close both legs with a reduce-only basket (it passes a halted gate)."""
    held = session.broker.holdings()
    report = pe.rebalance(
        session.broker,
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
    broker, risk = session.broker, session.risk
    account = broker.account()
    breaker = getattr(broker, "breaker", None)
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
        equity=round(account.equity, 2),
        cash=round(account.cash, 2),
        positions={s: q for s, q in broker.holdings().items() if q},
        halted=risk.halted,
        halt_reason=risk.halt_reason,
        circuit_breakers={breaker.name: breaker.state.value} if breaker is not None else {},
        last_bar=session.state.last_bar.isoformat() if session.state.last_bar else None,
        interval_s=session.config.interval_s,
    )


def _default_feed(pair: C.Pair, home: C.Paths, *, replay: bool) -> BarFeed:
    import process_stock_data as psd

    if replay:
        try:
            table, _ = psd.load_processed(pair, home)
        except DataError:
            table, _ = psd.process("bundled", pair, home=home)
        return BarFeed(table, pair)

    def fetch_and_process_latest_data() -> pd.DataFrame:
        table, _ = psd.process(C.data_source_name(), pair, home=home)
        return table

    return BarFeed(fetch_and_process_latest_data(), pair, refresh=None)


def status(home: C.Paths | None = None) -> dict[str, Any]:
    """What `main.py status` shows: heartbeat, positions, risk state, market clock now."""
    home = home or C.paths()
    out: dict[str, Any] = {"home": str(home.home)}
    now = pd.Timestamp.now(tz="UTC")
    clock = market_clock(now)
    out["market_open_now"] = clock.is_open
    out["next_open"] = clock.next_open.isoformat()
    beat = Heartbeat.read(home.heartbeat_file)
    if beat is not None:
        out["heartbeat"] = beat
        out["heartbeat_age_s"] = (now - pd.Timestamp(beat.time)).total_seconds()
    out["positions"] = read_positions(home.positions_file)
    risk = rm.RiskManager(state_path=home.risk_state_file, home=home.home, alerts=False)
    out["halted"] = risk.halted
    out["halt_reason"] = risk.halt_reason
    return out


__all__ = [
    "BarFeed",
    "DeadMansSwitch",
    "EquityRow",
    "Heartbeat",
    "LiveConfig",
    "LoopSummary",
    "PendingDecision",
    "PositionsState",
    "RealClock",
    "ReplayClock",
    "read_equity_log",
    "read_positions",
    "reconcile",
    "run_trading_loop",
    "status",
]
