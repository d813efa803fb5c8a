"""The live loop's state files as typed records, and `status()`, which reads them.

`PositionsState` (positions.json), `Heartbeat` (data/heartbeat.json), `RiskState`
(data/risk_state.json) and `EquityRow` (data/equity_<mode>.csv) are written by the loop
(`live_trading`, `risk_management.RiskManager`) and read by the loop at start, by `main.py status`
and by the dashboard, only through the readers here. Standard library only at import (no pandas,
numpy or calendar), so `main.py status` starts fast; its market clock comes from the cached NYSE
sessions (`market_sessions`).

Invariants: positions.json and risk_state.json are written atomically (temp, fsync, rename); the
heartbeat by an atomic rename without fsync (rewritten every iteration); the equity log is created
whole (header and first row) atomically, then appended with fsync. A file that cannot be read is
an error naming it, never a silent default: ConfigurationError for positions, the heartbeat and
the equity log (never appended under garbage), RiskStateError (the loop refuses to trade on an
unknown halt) for the risk state.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import constants as C
from atomic_io import atomic_write_json, atomic_write_text
from audit_logging import AuditAnchor, AuditLog
from error_handling import ConfigurationError, RiskStateError
from market_sessions import session_position, utc
from quantities import Qty, as_qty

SCHEMA_VERSION = 1  # positions.json
RISK_STATE_VERSION = 1  # data/risk_state.json
#: How to clear a halt, in every message about one.
RESET_HINT = "run `python main.py risk reset` to clear it (after checking the account)"


# --- positions.json -------------------------------------------------------------------------------
@dataclass(frozen=True)
class PendingDecision:
    """A decision saved before its orders (write-ahead): after a restart the same bar is carried
    out with the same target, so the same client ids and quantities go out."""

    bar: str  # ISO timestamp of the decision bar
    target: Mapping[str, Qty]  # signed shares per leg (floats in fractional shares)
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
            {str(s): as_qty(q) for s, q in data["target"].items()},
            float(data.get("start_of_day_equity", math.nan)),
        )


@dataclass(frozen=True)
class HeldPosition:
    """One leg in positions.json: signed shares (a float in fractional shares), average entry
    and last price (USD)."""

    qty: Qty
    avg_entry_price: float
    market_price: float


@dataclass(frozen=True)
class PositionsState:
    """data/positions.json: the loop's view of the account after every change, from the broker's
    confirmed fills (the broker wins at start-up): the pair's legs, positions outside the pair
    (`foreign`, reported only), the loop's own orders still open, the last bar decided, the
    last bar whose signal was audited, and the decision in flight."""

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
    foreign: Mapping[str, HeldPosition] = field(default_factory=dict)
    last_signal_bar: str | None = None
    #: The audit log's last record when this was written: a removed tail is detected.
    audit_anchor: AuditAnchor | None = None
    #: Short borrow the paper account had charged in all (USD; None for a remote broker): a
    #: charge made after this file was written explains a cash difference at the next start.
    borrow_paid: float | None = None
    #: Signed shares per leg a decision aimed at but did not reach because its increase was
    #: withheld (a reduce unfilled in time): the next bar without an instruction trades to it.
    owed_target: Mapping[str, Qty] | None = None

    @classmethod
    def of(
        cls,
        broker: Any,
        mode: str,
        last_bar: datetime | None,
        now: datetime,
        pending: PendingDecision | None = None,
        *,
        symbols: tuple[str, ...] | None = None,
        open_ids: Any = (),
        signal_bar: datetime | None = None,
        audit_anchor: AuditAnchor | None = None,
        unowned: Mapping[str, Qty] | None = None,
        owed_target: Mapping[str, Qty] | None = None,
    ) -> PositionsState:
        """The broker's state now (`broker`: a `trading_api.Broker`; times tz-aware);
        `symbols`: the pair (None: every position is the pair's); `open_ids`: the client ids of
        the loop's orders not yet done; `unowned`: shares held apart (not the home's, see
        home_identity), left out of its positions."""
        account = broker.account()
        unowned = unowned or {}
        held = {
            sym: HeldPosition(
                p.qty - unowned.get(sym, 0), round(p.avg_entry_price, 6), p.market_price
            )
            for sym, p in sorted(broker.positions().items())
            if p.qty != unowned.get(sym, 0)
        }
        mine = {s: p for s, p in held.items() if symbols is None or s in symbols}
        open_orders = []
        for cid in open_ids:
            o = broker.get_order_by_client_id(cid)
            if o is not None and not o.done:
                open_orders.append(
                    {
                        "client_order_id": o.client_order_id,
                        "symbol": o.symbol,
                        "side": o.side.value,
                        "qty": o.qty,
                        "filled_qty": o.filled_qty,
                        "status": o.status.value,
                    }
                )
        return cls(
            mode=mode,
            broker=broker.name,
            updated_at=now.isoformat(),
            cash=round(account.cash, 6),
            equity=round(account.equity, 6),
            positions=mine,
            open_orders=tuple(open_orders),
            last_processed_bar=last_bar.isoformat() if last_bar is not None else None,
            pending_decision=pending,
            foreign={s: p for s, p in held.items() if s not in mine},
            last_signal_bar=signal_bar.isoformat() if signal_bar is not None else None,
            audit_anchor=audit_anchor,
            borrow_paid=getattr(broker, "borrow_paid", None),
            owed_target=dict(owed_target) if owed_target is not None else None,
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
            "foreign": {s: dataclasses.asdict(p) for s, p in self.foreign.items()},
            "last_signal_bar": self.last_signal_bar,
            "audit_anchor": self.audit_anchor.to_json() if self.audit_anchor else None,
            "borrow_paid": self.borrow_paid,
            "owed_target": dict(self.owed_target) if self.owed_target is not None else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PositionsState:
        pending = data.get("pending_decision")

        def held(raw: Mapping[str, Any]) -> dict[str, HeldPosition]:
            return {
                str(s): HeldPosition(
                    as_qty(p["qty"]), float(p["avg_entry_price"]), float(p["market_price"])
                )
                for s, p in raw.items()
            }

        return cls(
            mode=str(data["mode"]),
            broker=str(data["broker"]),
            updated_at=str(data["updated_at"]),
            cash=float(data["cash"]),
            equity=float(data["equity"]),
            positions=held(data.get("positions", {})),
            open_orders=tuple(data.get("open_orders") or ()),
            last_processed_bar=data.get("last_processed_bar"),
            pending_decision=PendingDecision.from_json(pending) if pending else None,
            schema_version=int(data["schema_version"]),
            foreign=held(data.get("foreign") or {}),
            last_signal_bar=data.get("last_signal_bar"),
            audit_anchor=AuditAnchor.from_json(anchor)
            if (anchor := data.get("audit_anchor"))
            else None,
            borrow_paid=None if data.get("borrow_paid") is None else float(data["borrow_paid"]),
            owed_target={str(s): as_qty(q) for s, q in owed.items()}
            if (owed := data.get("owed_target"))
            else None,
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
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigurationError(
            f"{path} is not a positions file ({type(exc).__name__}: {exc}); move it aside: the "
            "broker's positions will be used"
        ) from None


# --- data/equity_<mode>.csv ----------------------------------------------------------------------
#: The equity log's first columns; a `qty_<SYMBOL>` column per leg of the pair follows.
EQUITY_COLUMNS = ("date", "equity", "cash", "borrow_paid")


@dataclass(frozen=True)
class EquityRow:
    """One row of data/equity_<mode>.csv: the account at a bar's close, after that bar's
    decision (the backtest's equity.csv has the same columns for the same bars). USD; quantities
    are signed shares."""

    date: str  # ISO date of the bar
    equity: float
    cash: float
    borrow_paid: float
    positions: Mapping[str, Qty]

    def line(self, symbols: tuple[str, ...]) -> str:
        # repr of a fractional quantity: read back, it is the same float.
        qty = ",".join(str(as_qty(self.positions.get(s, 0))) for s in symbols)
        return f"{self.date},{self.equity:.6f},{self.cash:.6f},{self.borrow_paid:.6f},{qty}\n"


def equity_log_path(home: C.Paths, mode: str) -> Path:
    return home.data_dir / f"equity_{mode}.csv"


def equity_log_header(symbols: tuple[str, ...]) -> str:
    return ",".join((*EQUITY_COLUMNS, *(f"qty_{s}" for s in symbols))) + "\n"


def check_equity_log(path: Path, symbols: tuple[str, ...] | None = None) -> str | None:
    """The last date of the equity log at `path`, None when it has no row (no file; an empty file
    or a lone header: an older version's torn first append). ConfigurationError naming the file
    and the line when it is not a log this loop could have written: another header (with
    `symbols`, other legs' qty columns), a row without an ISO date and finite numbers, dates
    not increasing, a cut last line. Read whole: the loop checks it before writing anything."""
    if not path.exists():
        return None
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _corrupt_equity_log(path, f"is unreadable ({exc})") from None
    lines = text.split("\n")
    if lines[-1]:
        raise _corrupt_equity_log(path, f"line {len(lines)} is cut short (no line end)")
    lines.pop()
    if not lines:
        return None
    columns = lines[0].split(",")
    legs = columns[len(EQUITY_COLUMNS) :]
    if (
        tuple(columns[: len(EQUITY_COLUMNS)]) != EQUITY_COLUMNS
        or len(legs) != 2
        or not all(c.startswith("qty_") and len(c) > 4 for c in legs)
    ):
        want = equity_log_header(symbols or ("LONG", "SHORT")).strip()
        raise _corrupt_equity_log(path, f"line 1 is {lines[0][:80]!r}, not the header {want!r}")
    if symbols is not None and legs != [f"qty_{s}" for s in symbols]:
        raise _corrupt_equity_log(
            path,
            f"is the log of {legs[0][4:]}/{legs[1][4:]}, not {'/'.join(symbols)}; move it "
            "aside to trade this pair in this home",
        )
    last: str | None = None
    for number, line in enumerate(lines[1:], 2):
        day = _equity_row_date(line, len(columns))
        if day is None:
            raise _corrupt_equity_log(
                path, f"line {number} is {line[:80]!r}, not a date and {len(columns) - 1} numbers"
            )
        if last is not None and day <= last:
            raise _corrupt_equity_log(path, f"line {number}: {day} does not come after {last}")
        last = day
    return last


def last_equity_row(path: Path) -> list[str] | None:
    """The fields of the last data row of an equity log (its tail only), None when it has none;
    ConfigurationError naming the file when that row does not parse (never appended under)."""
    if not path.exists():
        return None
    with open(path, "rb") as fh:
        fh.seek(max(fh.seek(0, os.SEEK_END) - 4096, 0))
        lines = fh.read().decode("utf-8", "replace").splitlines()
    if not lines or lines[-1].startswith(f"{EQUITY_COLUMNS[0]},"):
        return None
    fields = lines[-1].split(",")
    if _equity_row_date(lines[-1], len(fields)) is None or len(fields) != len(EQUITY_COLUMNS) + 2:
        raise _corrupt_equity_log(path, f"its last line {lines[-1][:80]!r} is not an equity row")
    return fields


def append_equity_row(path: Path, row: EquityRow, symbols: tuple[str, ...]) -> bool:
    """Append `row` (fsync) unless the log already has its date (a restart re-running the bar);
    returns whether it was written. A log without rows is written whole (header and row)
    atomically, so a crash never leaves a log without its header."""
    last = last_equity_row(path)
    if last is not None and last[0] >= row.date:
        return False
    if last is None:
        atomic_write_text(path, equity_log_header(symbols) + row.line(symbols))
        return True
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(row.line(symbols))
        fh.flush()
        os.fsync(fh.fileno())
    return True


def _equity_row_date(line: str, width: int) -> str | None:
    """The ISO date of an equity row with `width` fields (the date, then finite numbers)."""
    fields = line.split(",")
    day = fields[0]
    if len(fields) != width or len(day) != 10 or day[4] != "-" or day[7] != "-":
        return None
    try:
        date.fromisoformat(day)  # YYYY-MM-DD here (the dashes checked): a real calendar day
        numbers = [float(f) for f in fields[1:]]
    except ValueError:
        return None
    return day if all(math.isfinite(x) for x in numbers) else None


def _corrupt_equity_log(path: Path, what: str) -> ConfigurationError:
    return ConfigurationError(
        f"{path} {what}: the loop never appends under a log it cannot read; fix or move it aside"
    )


# --- data/risk_state.json -------------------------------------------------------------------------
@dataclass(frozen=True)
class RiskState:
    """data/risk_state.json: the drawdown halt and the equity peak the risk manager keeps across
    restarts (live and paper; the backtest keeps them in memory). `halted_at`: ISO time of the
    halt; `equity_peak`: USD, > 0; `drawdown_bar`: ISO time of the bar whose close revealed a
    drawdown breach while its liquidation is still to be sent (`fill_delay_bars` later), else
    None."""

    halted: bool = False
    halt_reason: str | None = None
    halted_at: str | None = None
    equity_peak: float | None = None
    drawdown_bar: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": RISK_STATE_VERSION,
            "halted": self.halted,
            "halt_reason": self.halt_reason,
            "halted_at": self.halted_at,
            "equity_peak": self.equity_peak,
            "drawdown_bar": self.drawdown_bar,
        }

    @classmethod
    def read(cls, path: Path) -> RiskState | None:
        """The risk state at `path`, None when absent; RiskStateError naming the file and the
        field when it cannot be trusted. When not halted, no reason and no time are kept."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise _corrupt_risk(path, f"cannot be read ({exc})") from exc
        try:
            state = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _corrupt_risk(path, f"is not valid JSON ({exc})") from exc
        if not isinstance(state, dict) or not isinstance(state.get("halted"), bool):
            raise _corrupt_risk(path, "has no boolean 'halted' field")
        peak = state.get("equity_peak")
        if peak is not None and (
            isinstance(peak, bool)
            or not isinstance(peak, int | float)
            or not math.isfinite(peak)
            or peak <= 0
        ):
            raise _corrupt_risk(path, f"has an invalid 'equity_peak': {peak!r}")
        reason = state.get("halt_reason")
        if reason is not None and not isinstance(reason, str):
            raise _corrupt_risk(path, f"has an invalid 'halt_reason': {reason!r}")
        halted_at = state.get("halted_at")
        if halted_at is not None:
            try:
                datetime.fromisoformat(halted_at)
            except (TypeError, ValueError) as exc:
                raise _corrupt_risk(path, f"has an invalid 'halted_at': {halted_at!r}") from exc
        drawdown_bar = state.get("drawdown_bar")  # absent from files written before it existed
        if drawdown_bar is not None:
            try:
                datetime.fromisoformat(drawdown_bar)
            except (TypeError, ValueError) as exc:
                raise _corrupt_risk(
                    path, f"has an invalid 'drawdown_bar': {drawdown_bar!r}"
                ) from exc
        halted = state["halted"]
        return cls(
            halted=halted,
            halt_reason=reason if halted else None,
            halted_at=halted_at if halted else None,
            equity_peak=float(peak) if peak is not None else None,
            drawdown_bar=drawdown_bar if halted else None,
        )

    def save(self, path: Path) -> None:
        atomic_write_json(path, self.to_json())


def _corrupt_risk(path: Path, what: str) -> RiskStateError:
    return RiskStateError(
        f"risk state file {path} {what}; refusing to trade on an unknown halt state. Fix or "
        f"delete the file, or {RESET_HINT}"
    )


# --- data/heartbeat.json --------------------------------------------------------------------------
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
    positions: Mapping[str, Qty]
    halted: bool
    halt_reason: str | None
    circuit_breakers: Mapping[str, str]
    last_bar: str | None
    interval_s: float
    stopped_at: str | None = None
    #: Signed shares of positions outside the pair (reported, never traded).
    foreign_positions: Mapping[str, Qty] = field(default_factory=dict)
    #: The last broker failure the loop saw (None once an iteration succeeds).
    broker_error: str | None = None
    #: The audit log's last record at this beat ({"seq", "hash"}): a removed tail is detected.
    audit_anchor: Mapping[str, Any] | None = None
    #: Whose clock `market_open` / `next_open` / `next_close` are ("alpaca's clock", "the NYSE
    #: calendar"): the clock the loop decided on, which `status` shows.
    clock_source: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Heartbeat:
        if not isinstance(data, Mapping):
            raise ValueError(f"not a heartbeat object: {type(data).__name__}")
        fields = dataclasses.fields(cls)
        names = {f.name for f in fields}
        required = {
            f.name
            for f in fields
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - set(data))
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


def write_heartbeat(path: Path, beat: Heartbeat) -> None:
    """Atomic rename without fsync: a heartbeat is rewritten every iteration and losing the last
    one to a power cut only makes the loop look older than it is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(beat.to_json(), indent=2) + "\n")
    os.replace(tmp, path)


# --- status ---------------------------------------------------------------------------------------
def status(home: C.Paths | None = None) -> dict[str, Any]:
    """What `main.py status` shows: heartbeat, positions, risk state, market clock now. The
    state files are read first, so a refused status writes nothing (the session cache is
    written last, and only when needed)."""
    home = home or C.paths()
    out: dict[str, Any] = {"home": str(home.home)}
    now = datetime.now(UTC)
    beat = Heartbeat.read(home.heartbeat_file)
    if beat is not None:
        out["heartbeat"] = beat
        out["heartbeat_age_s"] = (now - datetime.fromisoformat(beat.time)).total_seconds()
    out["loop_pid"] = loop_pid(home)
    last = AuditLog(home.audit_log).last() if home.audit_log.exists() else None
    out["last_audit_event"] = last.event if last is not None else None
    out["positions"] = read_positions(home.positions_file)
    risk = RiskState.read(home.risk_state_file) or RiskState()
    out["halted"] = risk.halted
    out["halt_reason"] = risk.halt_reason
    clock = session_position(now, home.session_cache_file)
    out["market_open_now"] = clock.is_open
    out["next_open"] = utc(clock.next_open).isoformat()
    return out


def loop_pid(home: C.Paths) -> int | None:
    """The pid of the `main.py live` holding this home's lock, None when no loop runs (the lock
    is free: a heartbeat saying "running" is then a dead loop's last word)."""
    if not home.live_lock_file.exists():
        return None
    if not _lock_held(home.live_lock_file):
        return None
    pid_file = home.live_lock_file.with_suffix(".pid")
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return -1  # held, but the pid file is gone or unreadable


def _lock_held(path: Path) -> bool:
    """Whether a process holds the `filelock.FileLock` on `path` (the loop's lock). On Unix that
    lock is an exclusive flock, probed here with fcntl (importing filelock costs `status` more
    than its whole work); where flock is missing, filelock itself is asked."""
    try:
        import fcntl
    except ImportError:
        return _lock_held_by_filelock(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            return True
        if exc.errno == errno.ENOSYS:  # filelock falls back to its soft lock here
            return _lock_held_by_filelock(path)
        raise
    finally:
        os.close(fd)  # closing releases a flock the probe won
    return False


def _lock_held_by_filelock(path: Path) -> bool:
    import filelock

    lock = filelock.FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        return True
    lock.release()
    return False


__all__ = [
    "RESET_HINT",
    "RISK_STATE_VERSION",
    "SCHEMA_VERSION",
    "Heartbeat",
    "HeldPosition",
    "PendingDecision",
    "PositionsState",
    "RiskState",
    "loop_pid",
    "read_positions",
    "status",
    "write_heartbeat",
]
