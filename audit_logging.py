"""Hash-chained, append-only audit log of what the live loop decided and what moved money.

Why: after an incident we must be able to show what the system saw and did, and prove that the
record was not edited afterwards. Each line of `logs/audit.jsonl` is one JSON record whose `hash`
is the SHA-256 of its own content plus the previous record's hash, so changing, removing,
inserting or reordering any line breaks the chain at that line (`python main.py audit verify`).
A chain can still be rewritten whole from the edited line on; keep copies elsewhere when that
matters.

Invariants kept here:
- seq runs 1, 2, 3, ... with no gaps; record 1's prev_hash is GENESIS_HASH.
- one record = one line = one os.write on an O_APPEND descriptor, then fsync; the read of the last
  record and the write happen under `<log>.lock` (processes) and a per-path thread lock.
- bytes after the last newline (a crash mid-write) are moved to `<log>.torn-<UTC stamp>` and a
  "recovery" record says so before the next record is written; nothing is silently dropped.
- payloads are plain JSON with secrets redacted before they are hashed or written.

A foundation module: imports only the standard library, `constants` and `error_handling` at import
time (filelock and logging_config inside functions), so `main.py --help` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import enum
import hashlib
import json
import logging
import os
import textwrap
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from constants import paths
from error_handling import AuditIntegrityError, TradingError

__all__ = [
    "EVENT_TYPES",
    "GENESIS_HASH",
    "AuditLog",
    "AuditRecord",
    "VerifyResult",
    "canonical_json",
    "record_hash",
    "register_cli",
    "verify",
]

#: prev_hash of the first record.
GENESIS_HASH = "0" * 64
#: Every event the log accepts; anything else is a programming error (ValueError).
EVENT_TYPES = frozenset(
    {
        "start",
        "stop",
        "model_selected",
        "model_promoted",  # an automatic canary promotion (A/B test)
        "model_rolled_back",  # an automatic canary rollback (A/B test)
        "signal",
        "risk_decision",
        "order_intent",  # written before an order is sent (a crash after it: looked up at start)
        "order_submitted",
        "order_update",  # the broker's later view of an order (an asynchronous fill, a cancel)
        "order_done",  # an order ended with shares unfilled (canceled, expired, rejected)
        "increase_withheld",  # a flip's reduce orders had not filled: its opening orders wait
        "fill",  # each new fill once (a partial fill, its rest), recovered ones included
        "bar_deferred",  # a bar's decision postponed (market closed): retried at the next open
        "bar_skipped",  # a bar not traded (halted), with the reason
        "foreign_positions",  # positions outside the pair, reported and left alone
        "position_change",
        "alert",
        "halt",
        "broker_failure",
        "reconciliation",
        "recovery",
    }
)
#: Fields of a record on disk, in the order they are documented.
FIELDS: tuple[str, ...] = ("seq", "time", "event", "payload", "prev_hash", "hash")
#: Bytes read per step when looking for the last lines from the end of the file.
TAIL_BLOCK_BYTES = 64 * 1024
NO_RECORDS_HINT = "no audit records yet: `python main.py live` writes them"

_log = logging.getLogger(__name__)


# --- Records and hashing --------------------------------------------------------------------------
@dataclass(frozen=True)
class AuditRecord:
    """One line of the audit log."""

    seq: int  # 1, 2, 3, ... with no gaps
    time: str  # UTC ISO-8601 with milliseconds and 'Z', e.g. 2024-03-04T14:30:00.123Z
    event: str  # one of EVENT_TYPES
    payload: dict[str, Any]  # plain JSON, secrets redacted
    prev_hash: str  # hash of the previous record; GENESIS_HASH for seq 1
    hash: str  # record_hash(seq, time, event, payload, prev_hash)


def canonical_json(obj: Any) -> bytes:
    """The one byte encoding that is hashed and written: sorted keys, no spaces, UTF-8, no NaN."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def record_hash(seq: int, time: str, event: str, payload: Mapping[str, Any], prev_hash: str) -> str:
    """SHA-256 hex of the canonical JSON of everything in a record but its own hash."""
    content = {"seq": seq, "time": time, "event": event, "payload": payload, "prev_hash": prev_hash}
    return hashlib.sha256(canonical_json(content)).hexdigest()


def _line(record: AuditRecord) -> bytes:
    return canonical_json(dataclasses.asdict(record)) + b"\n"


def _format_time(moment: dt.datetime) -> str:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"the audit clock must return a timezone-aware datetime, got {moment!r}")
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json_default(obj: Any) -> Any:
    """Values json cannot encode itself, as the text a reader expects (called by json.dumps)."""
    if isinstance(obj, dt.datetime | dt.date | dt.time):
        return obj.isoformat()
    if isinstance(obj, enum.Enum):
        return obj.value if isinstance(obj.value, str | int | float) else obj.name
    if isinstance(obj, Path | Decimal):
        return str(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=str)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if callable(getattr(obj, "item", None)):  # numpy / pandas scalars, without importing them
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _plain_payload(event: str, payload: Mapping[str, Any] | None) -> dict[str, Any]:
    """`payload` as the JSON it will read back as (so the hash recomputes), secrets redacted."""
    if payload is None:
        return {}
    if not isinstance(payload, Mapping):
        raise ValueError(f"audit payload for {event!r} must be a mapping, got {type(payload)}")
    try:
        plain = json.loads(json.dumps(dict(payload), default=_json_default, allow_nan=False))
        redacted: dict[str, Any] = _redact(plain)
        canonical_json(redacted)  # lone surrogates only fail when encoded to UTF-8
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(
            f"audit payload for {event!r} is not JSON-able ({exc}); pass numbers, strings, "
            "lists and dicts (NaN and infinity are not allowed)"
        ) from exc
    return redacted


def _redact(value: Any) -> Any:
    """Copy of a plain-JSON value with secrets replaced (strings only; numbers stay)."""
    from logging_config import REDACTED, known_secrets, redact

    secrets = known_secrets()

    def names_secret(key: str) -> bool:
        # logging_config decides which names hold secrets (api_key, x-token, password, ...).
        probe = f"{key}=x"
        return redact(probe) != probe

    def walk(item: Any, key: str | None) -> Any:
        if isinstance(item, str):
            return (
                REDACTED
                if item and key is not None and names_secret(key)
                else redact(item, secrets)
            )
        if isinstance(item, dict):
            return {redact(k, secrets): walk(v, k) for k, v in item.items()}
        if isinstance(item, list):
            return [walk(v, key) for v in item]
        return item

    return walk(value, None)


# --- Reading --------------------------------------------------------------------------------------
def _check_line(line: bytes) -> tuple[AuditRecord | None, str | None]:
    """(record, None) for a well-formed line (with its newline), else (None, reason)."""
    if not line.endswith(b"\n"):
        return None, "truncated last line (no newline): a crash while writing"
    try:
        data = json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return None, "not valid JSON"
    if not isinstance(data, dict):
        return None, "not a JSON object"
    for name in FIELDS:
        if name not in data:
            return None, f"missing field {name!r}"
    extra = sorted(set(data) - set(FIELDS))
    if extra:
        return None, f"unexpected field {extra[0]!r} (not covered by the hash)"
    seq, payload = data["seq"], data["payload"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        return None, f"field 'seq' is not a positive integer: {seq!r}"
    if not isinstance(payload, dict):
        return None, "field 'payload' is not a JSON object"
    for name in ("time", "event", "prev_hash", "hash"):
        if not isinstance(data[name], str):
            return None, f"field {name!r} is not a string"
    return AuditRecord(**data), None


def _read_tail(fd: int, n: int) -> tuple[list[bytes], bytes, int]:
    """(last `n` complete lines, newlines kept; torn bytes after them; offset of the torn bytes).

    Reads backwards in TAIL_BLOCK_BYTES steps until n + 1 newlines are seen, so the cost does not
    grow with the length of the log.
    """
    pos = os.fstat(fd).st_size
    chunks: list[bytes] = []
    newlines = 0
    while pos > 0 and newlines <= n:
        step = min(TAIL_BLOCK_BYTES, pos)
        pos -= step
        chunk = os.pread(fd, step, pos)
        chunks.append(chunk)
        newlines += chunk.count(b"\n")
    buf = b"".join(reversed(chunks))
    last_newline = buf.rfind(b"\n")
    complete_end = pos + last_newline + 1  # == pos when there is no newline at all (pos is 0 then)
    torn = buf[last_newline + 1 :]
    lines = [part + b"\n" for part in buf[: last_newline + 1].split(b"\n")[:-1]]
    if pos > 0:
        lines = lines[1:]  # may start mid-line
    return lines[-n:] if n > 0 else [], torn, complete_end


def _tail_records(path: Path, n: int) -> list[AuditRecord]:
    """The last `n` complete records of `path` (fewer when it has fewer); [] when it is absent."""
    try:
        with open(path, "rb") as f:
            lines, _torn, _end = _read_tail(f.fileno(), n)
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        record, reason = _check_line(line)
        if record is None:
            raise AuditIntegrityError(
                f"{path}: a record near the end is unreadable ({reason}); "
                "run `python main.py audit verify` to find the line"
            )
        records.append(record)
    return records


# --- Writing --------------------------------------------------------------------------------------
_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


def _thread_lock(path: Path) -> threading.Lock:
    """One lock per log file in this process, shared by every AuditLog on that file."""
    key = os.path.abspath(path)
    with _THREAD_LOCKS_GUARD:
        return _THREAD_LOCKS.setdefault(key, threading.Lock())


def _fsync_dir(directory: Path) -> None:
    """Make a new directory entry durable (a new log or torn file survives a power cut)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    written = os.write(fd, data)  # one write on O_APPEND: whole lines, never interleaved
    if written != len(data):
        raise OSError(f"short write to the audit log ({written} of {len(data)} bytes; disk full?)")
    os.fsync(fd)


class AuditLog:
    """Appends hash-chained records to one JSON-lines file; safe across threads and processes."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        lock_timeout_s: float = 10.0,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self.lock_timeout_s = float(lock_timeout_s)

    def append(self, event: str, payload: Mapping[str, Any] | None = None) -> AuditRecord:
        """Write one record of `event` and return it; fsync'd before returning.

        ValueError (and nothing written) for an unknown event or a payload that is not JSON-able.
        """
        if event not in EVENT_TYPES:
            raise ValueError(
                f"unknown audit event {event!r}; expected one of {', '.join(sorted(EVENT_TYPES))}"
            )
        plain = _plain_payload(event, payload)
        import filelock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        file_lock = filelock.FileLock(str(self.path) + ".lock", timeout=self.lock_timeout_s)
        try:
            with _thread_lock(self.path), file_lock:
                return self._append_locked(event, plain)
        except filelock.Timeout as exc:
            raise TradingError(
                f"could not lock {file_lock.lock_file} within {self.lock_timeout_s:g} s; another "
                "process is writing the audit log (or hung while holding the lock)"
            ) from exc

    def _append_locked(self, event: str, payload: dict[str, Any]) -> AuditRecord:
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if created:
                _fsync_dir(self.path.parent)
            lines, torn, complete_end = _read_tail(fd, 1)
            seq, prev_hash = 0, GENESIS_HASH
            if lines:
                last, reason = _check_line(lines[0])
                if last is None:
                    raise AuditIntegrityError(
                        f"{self.path}: the last record is unreadable ({reason}); not appending "
                        "to a broken log. Run `python main.py audit verify`, keep the file as "
                        "evidence and move it aside to start a new log"
                    )
                seq, prev_hash = last.seq, last.hash
            data = b""
            if torn:
                recovery = self._set_aside_torn(fd, torn, complete_end, seq + 1, prev_hash)
                seq, prev_hash = recovery.seq, recovery.hash
                data = _line(recovery)
            record = self._record(seq + 1, event, payload, prev_hash)
            _write_all(fd, data + _line(record))
            return record
        finally:
            os.close(fd)

    def _record(self, seq: int, event: str, payload: dict[str, Any], prev_hash: str) -> AuditRecord:
        time = _format_time(self._clock())
        digest = record_hash(seq, time, event, payload, prev_hash)
        return AuditRecord(seq, time, event, payload, prev_hash, digest)

    def _set_aside_torn(
        self, fd: int, torn: bytes, offset: int, seq: int, prev_hash: str
    ) -> AuditRecord:
        """Save the bytes of a half-written record, cut them off, and return the recovery record."""
        stamp = _format_time(self._clock()).replace("-", "").replace(":", "").replace(".", "")
        base = f"{self.path}.torn-{stamp}"
        for attempt in range(1000):
            saved = Path(base if attempt == 0 else f"{base}-{attempt}")
            try:
                out = os.open(saved, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                break
            except FileExistsError:
                continue
        else:
            raise OSError(f"cannot create a file to save the torn audit bytes next to {base}")
        try:
            _write_all(out, torn)  # saved before the log is cut: a crash here only duplicates
        finally:
            os.close(out)
        _fsync_dir(self.path.parent)
        os.ftruncate(fd, offset)
        os.fsync(fd)
        _log.warning(
            "audit log %s ended in %d bytes of a half-written record (a crash while writing); "
            "moved them to %s and appended a recovery record",
            self.path,
            len(torn),
            saved,
        )
        payload = {
            "reason": "bytes after the last newline (a crash while writing) were moved aside",
            "torn_bytes": len(torn),
            "offset": offset,
            "saved_to": str(saved),
        }
        return self._record(seq, "recovery", payload, prev_hash)

    def records(self) -> Iterator[AuditRecord]:
        """Every record in file order (parsed, not verified: use `verify` for the chain).

        AuditIntegrityError names the first line that is not a record.
        """
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            for number, line in enumerate(f, start=1):
                record, reason = _check_line(line)
                if record is None:
                    raise AuditIntegrityError(
                        f"{self.path} line {number}: {reason}; "
                        "run `python main.py audit verify` for the state of the chain"
                    )
                yield record

    def last(self) -> AuditRecord | None:
        """The last complete record (read from the end of the file), or None for an empty log."""
        tail = _tail_records(self.path, 1)
        return tail[0] if tail else None


# --- Verification ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class VerifyResult:
    """Outcome of `verify`: where the chain first breaks, and how many records precede it."""

    ok: bool
    count: int  # records verified OK before the first problem (all of them when ok)
    first_bad_line: int | None  # 1-based line number of the first broken record
    reason: str | None  # why that line is broken
    bad_seq: int | None = None  # seq the broken line claims, when it could be read

    def describe(self, path: Path | str) -> str:
        """One line for people: the verdict, where, why, and how much of the log still holds."""
        if self.ok:
            if self.count == 0:
                return f"{NO_RECORDS_HINT} ({path})"
            noun = "record" if self.count == 1 else "records"
            return f"OK: {self.count:,} {noun}, hash chain intact ({path})"
        where = f"line {self.first_bad_line:,}"
        if self.bad_seq is not None:
            where += f" (record seq {self.bad_seq:,})"
        before = f"{self.count:,} records before it verify"
        if self.count <= 1:
            before = "1 record before it verifies" if self.count else "no record before it"
        return f"BROKEN at {where} of {path}: {self.reason}; {before}"


def verify(path: Path) -> VerifyResult:
    """Check every line of `path` against the chain, streaming (constant memory).

    An absent or empty file is OK with count 0. Stops at the first problem.
    """
    count = 0
    prev_hash = GENESIS_HASH
    if not Path(path).exists():
        return VerifyResult(True, 0, None, None)
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            record, reason = _check_line(line)
            if record is None:
                return VerifyResult(False, count, number, reason)
            reason = _chain_problem(record, count + 1, prev_hash)
            if reason is not None:
                return VerifyResult(False, count, number, reason, record.seq)
            count, prev_hash = count + 1, record.hash
    return VerifyResult(True, count, None, None)


def _chain_problem(record: AuditRecord, expected_seq: int, prev_hash: str) -> str | None:
    """Why `record` does not belong at `expected_seq` after a record hashing to `prev_hash`."""
    recomputed = record_hash(
        record.seq, record.time, record.event, record.payload, record.prev_hash
    )
    if recomputed != record.hash:
        return "hash mismatch (record was modified)"
    if record.seq > expected_seq:
        missing = record.seq - expected_seq
        return (
            f"sequence gap: expected {expected_seq}, found {record.seq} "
            f"({missing} record{'s' if missing != 1 else ''} missing)"
        )
    if record.seq < expected_seq:
        return (
            f"sequence out of order: expected {expected_seq}, found {record.seq} "
            "(a record was inserted, repeated or moved)"
        )
    if record.prev_hash != prev_hash:
        previous = f"record {expected_seq - 1}" if expected_seq > 1 else "the genesis hash"
        return f"prev_hash does not match {previous} (a record was removed or inserted)"
    return None


# --- Command line ---------------------------------------------------------------------------------
_DESCRIPTION = "\n\n".join(
    textwrap.fill(paragraph, 96)
    for paragraph in (
        "The live loop writes every start, signal, risk decision, order, fill, position change, "
        "alert and halt to $TRADING_HOME/logs/audit.jsonl, one JSON record a line. Each record "
        "carries the SHA-256 of its content and of the record before it, so an edited, removed, "
        "inserted or reordered line breaks the chain where it happened.",
        "verify: check the whole chain; exit 0 when intact, 11 naming the first broken line. "
        "tail: print the last records.",
    )
)
_EPILOG = """\
examples:
  python main.py audit verify                    check $TRADING_HOME/logs/audit.jsonl
  python main.py audit verify --file copy.jsonl  check a copy (e.g. from a backup)
  python main.py audit tail                      the last 20 records
  python main.py audit tail -n 100               the last 100

a crash in the middle of a write leaves a partial last line: verify reports it, and the next write
moves those bytes to audit.jsonl.torn-<time> and records a "recovery" event before continuing.
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _format_tail_line(record: AuditRecord) -> str:
    payload = canonical_json(record.payload).decode("utf-8")
    return f"{record.seq:>8}  {record.time}  {record.event:<16} {payload}"


def _cmd_verify(args: argparse.Namespace) -> int:
    path = Path(args.file) if args.file else paths().audit_log
    try:
        result = verify(path)
    except OSError as exc:
        raise TradingError(f"cannot read the audit log {path}: {exc.strerror or exc}") from exc
    message = result.describe(path)
    if not result.ok:
        raise AuditIntegrityError(message)
    print(message)
    return 0


def _cmd_tail(args: argparse.Namespace) -> int:
    path = Path(args.file) if args.file else paths().audit_log
    try:
        records = _tail_records(path, args.n)
    except OSError as exc:
        raise TradingError(f"cannot read the audit log {path}: {exc.strerror or exc}") from exc
    if not records:
        print(f"{NO_RECORDS_HINT} ({path})")
    for record in records:
        print(_format_tail_line(record))
    return 0


def register_cli(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add `audit verify` and `audit tail` to main.py's sub-parsers."""
    parser = commands.add_parser(
        "audit",
        parents=[common],
        help="verify the hash-chained audit log of the live loop, or show its last records",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    file_help = "audit log to read (default: $TRADING_HOME/logs/audit.jsonl)"

    check = actions.add_parser(
        "verify",
        parents=[common],
        help="check the hash chain; exit 11 naming the first broken line",
        description="Recompute every record's hash and its link to the record before it.",
    )
    check.add_argument("--file", metavar="PATH", help=file_help)
    check.set_defaults(func=_cmd_verify)

    tail = actions.add_parser(
        "tail",
        parents=[common],
        help="print the last records: seq, UTC time, event, payload",
        description="Print the last N records, one a line: seq, UTC time, event, payload.",
    )
    tail.add_argument(
        "-n", type=_positive_int, default=20, metavar="N", help="how many records (20)"
    )
    tail.add_argument("--file", metavar="PATH", help=file_help)
    tail.set_defaults(func=_cmd_tail)
