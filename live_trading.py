"""The live loop: `python main.py live` (paper by default), under cron (`--once`) or tmux.

Each iteration, inside NYSE hours: latest closed bars -> validate -> signal -> drift check (once
per 5 new bars) -> `execute_signal` (every basket through `RiskManager.pre_trade_check`) ->
persist positions.json -> audit -> heartbeat -> sleep the interval. Outside market hours it
sleeps until the next open. `--replay START END` drives the same loop with a simulated clock over
the bundled history and the simulated broker, so a new user sees it trade with no keys and no
network, and tests run months of it in seconds.

Invariants:
- One instance per TRADING_HOME (a lock file); a second one exits with a clear message.
- positions.json is written atomically (temp, fsync, rename) after every change; at start it is
  reconciled with the broker, the broker wins, and every difference is logged, audited, alerted.
- Orders carry client ids from (strategy, bar, leg, purpose): a restart re-derives the same ids
  and the broker's copy is looked up instead of trading twice.
- A stop (Ctrl-C, SIGTERM) is honoured at a safe point: between iterations, never inside one.
"""

from __future__ import annotations

import json
import logging
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
from trading_execution import BarQuote, Purpose, orders_toward

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
STRATEGY = "pair-live"
DRIFT_EVERY_BARS = 5  # a drift check per trading week, not per 5-minute interval
VOL_BARS = 20


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
    """How the loop runs. Times in seconds."""

    interval_s: float = 300.0
    once: bool = False
    live: bool = False  # real money: needs the Alpaca broker, credentials and a confirmation
    replay_start: pd.Timestamp | None = None
    replay_end: pd.Timestamp | None = None
    speed: float = 0.0
    initial_cash: float = 100_000.0
    deadman_intervals: int = 3  # alert when no iteration completed in this many intervals
    flatten_on_deadman: bool = False
    sizing: ta.SizingPolicy = field(default_factory=ta.SizingPolicy)
    limits: rm.RiskLimits = field(default_factory=rm.RiskLimits)

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


def _quotes(
    table: pd.DataFrame, rows: int, pair: C.Pair, close_time: pd.Timestamp, adv_usd: float
) -> dict[str, BarQuote]:
    """Last closed bar of each leg as the broker's quote: price, 20-bar volatility, ADV."""
    out = {}
    for sym in pair.tickers:
        closes = table[f"{sym}_close"].to_numpy("float64")[max(rows - VOL_BARS - 1, 0) : rows]
        rets = np.diff(closes) / closes[:-1] if len(closes) > 1 else np.array([])
        vol = float(np.std(rets, ddof=1)) if len(rets) > 4 else 0.02
        price = float(closes[-1])
        out[sym] = BarQuote(price, vol if vol > 0 else 0.02, adv_usd / price, close_time)
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
def _positions_state(
    broker: ta.Broker,
    mode: str,
    last_bar: pd.Timestamp | None,
    now: pd.Timestamp,
    pending: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    account = broker.account()
    return {
        "schema_version": SCHEMA_VERSION,
        "mode": mode,
        "broker": broker.name,
        "updated_at": now.isoformat(),
        "cash": round(account.cash, 6),
        "equity": round(account.equity, 6),
        "positions": {
            sym: {
                "qty": p.qty,
                "avg_entry_price": round(p.avg_entry_price, 6),
                "market_price": p.market_price,
            }
            for sym, p in sorted(broker.positions().items())
        },
        "open_orders": [
            {
                "client_order_id": o.client_order_id,
                "symbol": o.symbol,
                "side": o.side.value,
                "qty": o.qty,
                "filled_qty": o.filled_qty,
                "status": o.status,
            }
            for o in broker.open_orders()
        ],
        "last_processed_bar": last_bar.isoformat() if last_bar is not None else None,
        "pending_decision": dict(pending) if pending else None,
    }


def read_positions(path: Path) -> dict[str, Any] | None:
    """positions.json, or None when absent; ConfigurationError naming the file when unreadable."""
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"{path} is unreadable ({exc}); move it aside: the broker's positions will be used"
        ) from None
    if state.get("schema_version") != SCHEMA_VERSION:
        raise ConfigurationError(
            f"{path} has schema version {state.get('schema_version')!r}, expected {SCHEMA_VERSION}"
        )
    return state


def _write_heartbeat(path: Path, beat: Mapping[str, Any]) -> None:
    """Atomic rename without fsync: a heartbeat is rewritten every iteration and losing the last
    one to a power cut only makes the loop look older than it is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(beat, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def reconcile(saved: Mapping[str, Any] | None, broker: ta.Broker) -> list[dict[str, Any]]:
    """Differences between positions.json and the broker (the broker wins): one entry per symbol
    whose quantity differs, and one for cash beyond a cent."""
    if saved is None:
        return []
    diffs = []
    mine = {s: int(p["qty"]) for s, p in saved.get("positions", {}).items()}
    theirs = {s: p.qty for s, p in broker.positions().items()}
    for sym in sorted(set(mine) | set(theirs)):
        if mine.get(sym, 0) != theirs.get(sym, 0):
            diffs.append(
                {"symbol": sym, "saved_qty": mine.get(sym, 0), "broker_qty": theirs.get(sym, 0)}
            )
    cash = broker.account().cash
    if abs(float(saved.get("cash", cash)) - cash) > 0.01:
        diffs.append({"field": "cash", "saved": saved.get("cash"), "broker": round(cash, 2)})
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


def run_trading_loop(
    paper_trading: bool = True,
    *,
    config: LiveConfig | None = None,
    pair: C.Pair | None = None,
    home: C.Paths | None = None,
    clock: Any = None,
    broker: ta.Broker | None = None,
    feed: BarFeed | None = None,
    stop: threading.Event | None = None,
    progress: Callable[[pd.Timestamp], None] | None = None,
) -> LoopSummary:
    """Run the loop until the replay ends, `--once` finishes, or a stop; returns what it did."""
    import signals as sg

    config = config or LiveConfig()
    if config.live and paper_trading:
        raise ConfigurationError("live=True contradicts paper_trading=True")
    home = (home or C.paths()).ensure()
    pair = pair or C.resolve_pair()
    mode = "live" if config.live else "paper"
    stopper = _Stop()
    if stop is not None:
        stopper.event = stop
    lock = _acquire_lock(home)
    summary = LoopSummary()
    state = _IterationState()
    audit = AuditLog(home.audit_log)
    try:
        if feed is None:
            feed = _default_feed(pair, home, replay=config.replay)
        saved = read_positions(home.positions_file)
        last_bar = (
            pd.Timestamp(saved["last_processed_bar"])
            if saved and saved.get("last_processed_bar")
            else None
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
                home.paper_broker_file, initial_cash=config.initial_cash, now=clock.now
            )
        risk = rm.RiskManager(config.limits, state_path=home.risk_state_file, home=home.home)
        if config.replay:  # a new user's first replay trains the model it needs
            import train_model as tm

            trained = tm.ensure_active_model(pair, home)
            if trained:
                log.info("%s", trained)
        generator = sg.SignalGenerator(pair, home=home)
        stopper.install()
        audit.append(
            "start",
            {
                "mode": mode,
                "broker": broker.name,
                "pair": list(pair.tickers),
                "pid": os.getpid(),
                "interval_s": config.interval_s,
                "replay": [str(config.replay_start), str(config.replay_end)]
                if config.replay
                else None,
                "once": config.once,
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

        # Reconcile what we saved with what the broker holds; the broker wins.
        diffs = reconcile(saved, broker)
        summary.reconciliation_differences = len(diffs)
        audit.append("reconciliation", {"differences": diffs, "broker_wins": True})
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
        pending = (saved or {}).get("pending_decision")
        atomic_write_json(
            home.positions_file, _positions_state(broker, mode, last_bar, clock.now(), pending)
        )

        def trip(reason: str) -> None:
            alert_dispatch.send(
                "CRITICAL",
                "dead_mans_switch",
                "Live loop is not making progress",
                f"{reason}; check the process and the data feed",
                {"reason": reason},
                home=home.home,
            )
            audit.append("alert", {"source": "dead_mans_switch", "reason": reason})
            if config.flatten_on_deadman:
                _flatten(broker, risk, pair, clock.now(), audit, "dead man's switch")

        deadman = DeadMansSwitch(config.interval_s, config.deadman_intervals, trip)
        if not getattr(clock, "replay", False):
            threading.Thread(
                target=_watch,
                args=(deadman, clock, config.interval_s, stopper.event),
                daemon=True,
                name="deadman",
            ).start()

        state.last_bar, state.pending = last_bar, pending
        while not stopper.event.is_set():
            now = clock.now()
            if config.replay and now >= config.replay_end:
                break
            mclock = market_clock(now)
            if not mclock.is_open:
                _write_heartbeat(
                    home.heartbeat_file,
                    _beat(now, mode, broker, risk, mclock, state, "waiting for the open"),
                )
                if config.once:
                    log.info("market closed at %s; next open %s", now, mclock.next_open)
                    break
                wake = mclock.next_open
                if config.replay and wake > config.replay_end:
                    wake = config.replay_end
                clock.sleep((wake - now).total_seconds(), stopper.event)
                deadman.beat(clock.now())
                continue
            try:
                _iteration(
                    now,
                    config,
                    pair,
                    home,
                    broker,
                    risk,
                    generator,
                    feed,
                    audit,
                    deadman,
                    state,
                    summary,
                    mode,
                )
            except (BrokerError, DataSourceUnavailable) as exc:
                # The broker or the feed failed this time (retries and the breaker are behind
                # this): log, audit, and try again next interval; the switch watches progress.
                summary.errors += 1
                log.error("iteration at %s failed: %s", now, exc)
                audit.append("alert", {"source": "live_loop", "error": str(exc)})
                breaker = getattr(broker, "breaker", None)
                opened = breaker is not None and breaker.state.value == "open"
                if (isinstance(exc, CircuitOpenError) or opened) and not risk.halted:
                    risk.halt(f"broker circuit breaker open: {exc}", now)
                    audit.append("halt", {"reason": risk.halt_reason})
                if config.once:
                    raise
                clock.sleep(config.interval_s, stopper.event)
                continue
            summary.iterations += 1
            deadman.beat(now)
            _write_heartbeat(
                home.heartbeat_file, _beat(now, mode, broker, risk, mclock, state, "running")
            )
            if progress is not None:
                progress(now)
            if config.once:
                break
            clock.sleep(config.interval_s, stopper.event)
        if stopper.event.is_set():
            summary.stopped_by = stopper.reason if stopper.reason != "end" else "stop"
        summary.equity = broker.account().equity
        return summary
    finally:
        try:
            if broker is not None:
                atomic_write_json(
                    home.positions_file,
                    _positions_state(
                        broker, mode, state.last_bar, pd.Timestamp.now(tz="UTC"), state.pending
                    ),
                )
            audit.append(
                "stop",
                {
                    "reason": summary.stopped_by,
                    "iterations": summary.iterations,
                    "equity": summary.equity,
                },
            )
            if home.heartbeat_file.exists():
                beat = json.loads(home.heartbeat_file.read_text())
                beat["status"] = "stopped"
                beat["stopped_at"] = pd.Timestamp.now(tz="UTC").isoformat()
                _write_heartbeat(home.heartbeat_file, beat)
        finally:
            stopper.restore()
            lock.release()
            alert_dispatch.close_all()


@dataclass
class _IterationState:
    last_bar: pd.Timestamp | None = None  # the latest bar whose decision was carried out
    pending: dict[str, Any] | None = None  # a decision saved but maybe not carried out
    signal: Any = None
    signal_bar: pd.Timestamp | None = None
    model_version: str | None = None
    bars_since_drift: int = DRIFT_EVERY_BARS
    last_equity: float | None = None
    start_of_day_equity: float | None = None
    session: pd.Timestamp | None = None


def _iteration(
    now: pd.Timestamp,
    config: LiveConfig,
    pair: C.Pair,
    home: C.Paths,
    broker: ta.Broker,
    risk: rm.RiskManager,
    generator: Any,
    feed: BarFeed,
    audit: AuditLog,
    deadman: DeadMansSwitch,
    state: _IterationState,
    summary: LoopSummary,
    mode: str,
) -> None:
    """One pass: data -> signal -> drift -> risk -> execute -> persist -> audit."""
    import signals as sg

    feed.refresh()
    rows = feed.closed_rows(now)
    if rows < 2:
        raise DataError(
            f"no closed bar of {pair.long}/{pair.short} before {now}; the data start later"
        )
    bar = pd.Timestamp(feed.table.index[rows - 1])
    bar_close = feed.bar_close_time(rows - 1)
    # Stale feed: the latest bar should be the last session's. More than a few days is a dead feed.
    age_days = (now - bar_close).total_seconds() / 86_400
    if age_days > 4:
        deadman.check(
            now,
            stale_reason=(
                f"latest bar {bar.date()} is {age_days:.1f} days old at {now}: "
                "the data feed is stale"
            ),
        )
        log.warning("data feed stale (latest bar %s); not trading", bar.date())
        return
    session = market_clock(now).session_date
    if session != state.session:
        state.session = session
        state.start_of_day_equity = broker.account().equity
    table = feed.table.iloc[:rows]
    if state.signal is None or state.signal_bar != bar:
        state.signal_bar = bar
        if isinstance(broker, ta.SimulatedBroker):
            broker.set_market(
                _quotes(
                    feed.table,
                    rows,
                    pair,
                    bar_close,
                    broker.execution.default_adv_usd,
                )
            )
        state.signal = generator.latest(table)
        summary.bars += 1
        audit.append("signal", json.loads(sg.describe(state.signal)))
        if state.signal.model_version != state.model_version:
            state.model_version = state.signal.model_version
            audit.append("model_selected", {"model_version": state.model_version})
        state.bars_since_drift += 1
        if state.bars_since_drift >= DRIFT_EVERY_BARS:
            state.bars_since_drift = 0
            _drift_check(pair, home, table)
    signal = state.signal
    summary.predictions += 1
    log.info(
        "prediction %s",
        sg.describe(signal),
        extra={"bar": bar.isoformat(), "sim_time": now.isoformat()},
    )

    account = broker.account()
    if risk.update_equity(account.equity, now):
        audit.append("halt", {"reason": risk.halt_reason, "equity": account.equity})
        _flatten(broker, risk, pair, now, audit, "drawdown limit")
        atomic_write_json(home.positions_file, _positions_state(broker, mode, state.last_bar, now))
    if state.last_bar is not None and bar <= state.last_bar:
        return  # one decision per bar: this one was taken (maybe before a restart)
    before = {s: p.qty for s, p in broker.positions().items()}
    # Write-ahead: the target is fixed and saved before any order, so a restart between the two
    # baskets of a flip re-sends exactly the same orders (same ids, same quantities).
    pending = state.pending or {}
    if pending.get("bar") == bar.isoformat():
        target = {s: int(q) for s, q in pending["target"].items()}
    else:
        prices = {s: q.price for s, q in broker.latest_prices(list(pair.tickers)).items()}
        target = ta.target_shares(
            signal.action.value,
            float(signal.probability),
            pair.long,
            pair.short,
            account.equity,
            prices,
            config.sizing,
            before,
        )
        state.pending = {"bar": bar.isoformat(), "target": target}
        atomic_write_json(
            home.positions_file,
            _positions_state(broker, mode, state.last_bar, now, state.pending),
        )

    def on_decision(event: str, payload: dict[str, Any]) -> None:
        audit.append(event, payload)
        if event == "order_submitted":
            summary.orders += 1
            if payload.get("filled_qty"):
                audit.append("fill", payload)
        elif event == "risk_decision" and not payload.get("accepted"):
            summary.rejections += 1

    if not risk.halted or signal.action.value == "hold":
        try:
            ta.execute_signal(
                signal,
                broker,
                risk,
                long=pair.long,
                short=pair.short,
                sizing=config.sizing,
                strategy=STRATEGY,
                start_of_day_equity=state.start_of_day_equity,
                on_decision=on_decision,
                target=target,
            )
        except CircuitOpenError as exc:
            risk.halt(f"broker circuit breaker open: {exc}", now)
            audit.append("halt", {"reason": risk.halt_reason})
    after = {s: p.qty for s, p in broker.positions().items()}
    if after != before:
        audit.append("position_change", {"before": before, "after": after})
    state.last_bar = bar
    state.pending = None
    atomic_write_json(home.positions_file, _positions_state(broker, mode, bar, now))


def _flatten(
    broker: ta.Broker,
    risk: rm.RiskManager,
    pair: C.Pair,
    now: pd.Timestamp,
    audit: AuditLog,
    why: str,
) -> None:
    """Close both legs with a reduce-only basket (it passes a halted gate)."""
    held = {s: p.qty for s, p in broker.positions().items()}
    reduce, _ = orders_toward(
        held, {s: 0 for s in held}, Purpose.LIQUIDATION, (STRATEGY, "flatten", now.isoformat())
    )
    if not reduce:
        return
    quotes = broker.latest_prices(list(held))
    account = broker.account()
    clock = broker.clock()
    basket = risk.pre_trade_check(
        reduce,
        rm.PortfolioSnapshot(
            account.equity, account.cash, held, account.equity, account.buying_power
        ),
        rm.MarketSnapshot(
            now=clock.at,
            prices={s: q.price for s, q in quotes.items()},
            price_times={s: q.time for s, q in quotes.items()},
            live=True,
            market_open=clock.is_open,
        ),
    )
    placed = broker.submit_basket(basket)
    audit.append("order_submitted", {"why": why, "orders": [o.client_order_id for o in placed]})
    log.warning("flattened %s (%s)", held, why)


def _drift_check(pair: C.Pair, home: C.Paths, table: pd.DataFrame) -> None:
    from model_drift_detection import drift_report

    try:
        drift_report(pair, home=home, table=table, kinds=("xgb",), predictions=False)
    except TradingError as exc:  # no reference, too few rows: the loop goes on
        log.warning("drift check skipped: %s", exc)


def _watch(deadman: DeadMansSwitch, clock: Any, interval_s: float, stop: threading.Event) -> None:
    while not stop.wait(max(min(interval_s / 4, 60.0), 0.5)):
        deadman.check(clock.now())


def _beat(
    now: pd.Timestamp,
    mode: str,
    broker: ta.Broker,
    risk: rm.RiskManager,
    mclock: Any,
    state: _IterationState,
    status: str,
) -> dict[str, Any]:
    account = broker.account()
    breaker = getattr(broker, "breaker", None)
    return {
        "status": status,
        "time": pd.Timestamp.now(tz="UTC").isoformat(),
        "loop_time": now.isoformat(),
        "pid": os.getpid(),
        "mode": mode,
        "broker": broker.name,
        "market_open": bool(mclock.is_open),
        "next_open": mclock.next_open.isoformat(),
        "next_close": mclock.next_close.isoformat(),
        "equity": round(account.equity, 2),
        "cash": round(account.cash, 2),
        "positions": {s: p.qty for s, p in broker.positions().items()},
        "halted": risk.halted,
        "halt_reason": risk.halt_reason,
        "circuit_breakers": {breaker.name: breaker.state.value} if breaker is not None else {},
        "last_bar": state.last_bar.isoformat() if state.last_bar is not None else None,
    }


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
    if home.heartbeat_file.exists():
        beat = json.loads(home.heartbeat_file.read_text())
        out["heartbeat"] = beat
        out["heartbeat_age_s"] = (now - pd.Timestamp(beat["time"])).total_seconds()
    out["positions"] = read_positions(home.positions_file)
    risk = rm.RiskManager(state_path=home.risk_state_file, home=home.home, alerts=False)
    out["halted"] = risk.halted
    out["halt_reason"] = risk.halt_reason
    return out


__all__ = [
    "BarFeed",
    "DeadMansSwitch",
    "LiveConfig",
    "LoopSummary",
    "RealClock",
    "ReplayClock",
    "reconcile",
    "run_trading_loop",
    "status",
]
