"""Hash-chained, append-only audit log of what the live loop decided and what moved money.

Why: after an incident we must be able to show what the system saw and did, and prove that the
record was not edited afterwards. Each line of `logs/audit.jsonl` is one JSON record whose `hash`
is the SHA-256 of its own content plus the previous record's hash, so changing, removing,
inserting or reordering any line breaks the chain at that line (`python main.py audit verify`).
A chain can still be rewritten whole from the edited line on, and a removed tail leaves a chain
that is intact: the writer keeps an *anchor* (the last record's seq and hash, `AuditLog.anchor()`)
in positions.json and the heartbeat, and `verify(path, anchor)` requires exactly that record.

Invariants kept here:
- seq runs 1, 2, 3, ... with no gaps within a segment; record 1's prev_hash is GENESIS_HASH.
- one record = one line = one os.write on an O_APPEND descriptor, then fsync; the read of the last
  record and the write happen under `<log>.lock` (processes) and a per-path thread lock.
- bytes after the last newline (a crash mid-write) are moved to `<log>.torn-<UTC stamp>` and a
  "recovery" record says so before the next record is written; nothing is silently dropped.
- payloads are plain JSON with secrets redacted before they are hashed or written.
- nothing here rewrites or deletes a complete line; `audit repair` only appends.

The repair rule (`python main.py audit repair`, run by an operator; `verify` enforces it):
- The log is read line by line. While the chain holds, each record must link to the one before
  it (seq + 1, prev_hash, own hash). The first line where it does not is a *break* at line B;
  B and every line after it are *skipped* (kept as found, not chain-checked) until a line R that
  is a `chain_repair` record documenting the break. R documents it only when all of these hold:
  its own hash recomputes; payload `first_bad_line` == B; payload `skipped_lines` == R - B and
  `skipped_sha256` == SHA-256 of the bytes of lines B .. R-1; payload `last_good_hash` == the hash
  of the last record verified before B (null when there is none); R's prev_hash == the `hash`
  field of the last parseable line before R and R's seq == that line's seq + 1 (GENESIS_HASH and
  seq 1 when no line before R parses). R then starts a new segment: the next record must link to
  R. A break that no such record follows fails verification, naming B. So every byte stays
  covered: lines before B by the chain and `last_good_hash`, lines B .. R-1 by `skipped_sha256`,
  and R and later lines by the chain again.
- A `chain_repair` record that follows an intact chain is an ordinary record (it links like any
  other); that is how a truncation or a rewrite that only the anchor shows is documented.
- Anchors: an anchor holds when some parseable line has exactly its seq and hash, or when a
  `chain_repair` record in the chain (not a skipped one) carries it in payload `anchor` (the
  operator repaired the log knowing that anchor). Otherwise the log was *truncated* (its last
  record's seq is below the anchor's) or *rewritten* (a record with that seq has another hash).

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

from constants import Paths, paths
from error_handling import AuditIntegrityError, ConfigurationError, TradingError

__all__ = [
    "EVENT_TYPES",
    "GENESIS_HASH",
    "AuditAnchor",
    "AuditLog",
    "AuditRecord",
    "StoredAnchor",
    "VerifyResult",
    "canonical_json",
    "check_chain",
    "read_stored_anchor",
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
        "data_failure",  # the market data failed (start-up): the error, its cause, keys or outage
        "pair_not_sized",  # the capital cannot size both legs: no order, with the reason
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
        "chain_repair",  # `audit repair`: documents a break or a failed anchor; rewrites nothing
        "home_recorded",  # a home's first start: its account, and the shares it does not own
        "home_claimed",  # `home claim`: this home trades the account from here, with a new tag
        "positions_adopted",  # `positions adopt`: shares held apart become the home's own
    }
)
#: Fields of a record on disk, in the order they are documented.
FIELDS: tuple[str, ...] = ("seq", "time", "event", "payload", "prev_hash", "hash")
#: Bytes read per step when looking for the last lines from the end of the file.
TAIL_BLOCK_BYTES = 64 * 1024
NO_RECORDS_HINT = "no audit records yet: `python main.py live` writes them"
REPAIR_COMMAND = "python main.py audit repair"
#: Key of the anchor in positions.json and data/heartbeat.json.
ANCHOR_KEY = "audit_anchor"

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


@dataclass(frozen=True)
class AuditAnchor:
    """The last record the writer knows it wrote: kept outside the log (positions.json, the
    heartbeat) so that a removed tail or a log rewritten past it is detected."""

    seq: int  # the record's seq, >= 1
    hash: str  # the record's hash: 64 lowercase hex digits

    def __post_init__(self) -> None:
        if not isinstance(self.seq, int) or isinstance(self.seq, bool) or self.seq < 1:
            raise ValueError(f"audit anchor seq must be an integer >= 1, got {self.seq!r}")
        if not (
            isinstance(self.hash, str)
            and len(self.hash) == 64
            and all(c in "0123456789abcdef" for c in self.hash)
        ):
            raise ValueError(
                f"audit anchor hash must be 64 lowercase hex digits, got {self.hash!r}"
            )

    @classmethod
    def of(cls, record: AuditRecord) -> AuditAnchor:
        """The anchor of `record` (what the live loop stores after each write)."""
        return cls(record.seq, record.hash)

    def to_json(self) -> dict[str, Any]:
        """`{"seq": int, "hash": str}`, as stored under `audit_anchor`."""
        return {"seq": self.seq, "hash": self.hash}

    @classmethod
    def from_json(cls, data: Any) -> AuditAnchor:
        """Read `{"seq": int, "hash": str}`; ValueError naming what is wrong."""
        if not isinstance(data, Mapping) or set(data) != {"seq", "hash"}:
            raise ValueError(f'expected {{"seq": int, "hash": str}}, got {data!r}')
        return cls(data["seq"], data["hash"])

    def short(self) -> str:
        """`seq 58 (hash abcd1234abcd…)` for messages."""
        return f"seq {self.seq:,} (hash {self.hash[:12]}…)"


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
                saved = self._set_aside_torn(fd, torn, complete_end)
                recovery = self._recovery_record(torn, complete_end, saved, seq + 1, prev_hash)
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

    def _set_aside_torn(self, fd: int, torn: bytes, offset: int) -> Path:
        """Save the bytes of a half-written record, cut them off; return where they were saved."""
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
            "moved them to %s",
            self.path,
            len(torn),
            saved,
        )
        return saved

    def _recovery_record(
        self, torn: bytes, offset: int, saved: Path, seq: int, prev_hash: str
    ) -> AuditRecord:
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

    def anchor(self) -> AuditAnchor | None:
        """The last complete record's anchor (reads only the tail), or None for an empty log.

        AuditIntegrityError when the last line is not a record.
        """
        last = self.last()
        return AuditAnchor.of(last) if last is not None else None

    def repair(
        self, anchor: AuditAnchor | None = None, *, anchor_source: str = "the anchor"
    ) -> AuditRecord | None:
        """Make the log verify again by appending, never by rewriting; the record written or None.

        Under the log's locks: half-written bytes at the end are moved aside as `append` does.
        If the log then verifies (with `anchor`), only a "recovery" record is written when bytes
        were moved, else nothing (None). Otherwise one `chain_repair` record documents the first
        problem `verify` finds, per the repair rule in the module docstring; its payload names
        the first bad line and seq, the reason, the last record verified before it, the skipped
        lines' count and SHA-256, the line it links to and `anchor`.
        """
        import filelock

        if not self.path.exists() and anchor is None:
            return None  # nothing written yet, and nothing says anything was
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file_lock = filelock.FileLock(str(self.path) + ".lock", timeout=self.lock_timeout_s)
        try:
            with _thread_lock(self.path), file_lock:
                return self._repair_locked(anchor, anchor_source)
        except filelock.Timeout as exc:
            raise TradingError(
                f"could not lock {file_lock.lock_file} within {self.lock_timeout_s:g} s; another "
                "process is writing the audit log (stop the live loop before a repair)"
            ) from exc

    def _repair_locked(self, anchor: AuditAnchor | None, anchor_source: str) -> AuditRecord | None:
        created = not self.path.exists()  # an anchor but no log: the whole log was removed
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if created:
                _fsync_dir(self.path.parent)
            _lines, torn, complete_end = _read_tail(fd, 1)
            saved = self._set_aside_torn(fd, torn, complete_end) if torn else None
            scan = _scan(self.path, anchor, anchor_source)
            last = scan.last_parsed
            seq, prev_hash = (last.seq, last.hash) if last is not None else (0, GENESIS_HASH)
            if scan.result.ok:
                if saved is None:
                    return None
                record = self._recovery_record(torn, complete_end, saved, seq + 1, prev_hash)
            else:
                payload = _repair_payload(scan, anchor, anchor_source)
                if saved is not None:
                    payload |= {"torn_bytes": len(torn), "torn_saved_to": str(saved)}
                record = self._record(
                    seq + 1, "chain_repair", _plain_payload("chain_repair", payload), prev_hash
                )
            _write_all(fd, _line(record))
            return record
        finally:
            os.close(fd)


# --- Verification ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class VerifyResult:
    """Outcome of `verify`: where the log first fails, and how many records precede it."""

    ok: bool
    count: int  # lines verified before the first problem (all when ok), documented breaks included
    first_bad_line: int | None  # 1-based line of the first problem (for a truncation: last + 1)
    reason: str | None  # why that line is broken
    bad_seq: int | None = None  # seq of the broken line when it could be read, or the anchor's
    repairs: int = 0  # breaks documented by a chain_repair record (see the repair rule)
    skipped: int = 0  # lines kept as found between a documented break and its repair
    anchor: AuditAnchor | None = None  # the anchor checked, if any

    def describe(self, path: Path | str) -> str:
        """One line for people: the verdict, where, why, and how much of the log still holds."""
        if self.ok:
            if self.count == 0 and self.anchor is None:
                return f"{NO_RECORDS_HINT} ({path})"
            noun = "record" if self.count == 1 else "records"
            text = f"OK: {self.count:,} {noun}, hash chain intact"
            if self.repairs:
                breaks = "break" if self.repairs == 1 else "breaks"
                text += (
                    f" apart from {self.repairs:,} documented {breaks} ({self.skipped:,} "
                    "lines kept as found, covered by chain_repair records)"
                )
            if self.anchor is not None:
                text += f", anchor seq {self.anchor.seq:,} holds"
            return f"{text} ({path})"
        where = f"line {self.first_bad_line:,}"
        if self.bad_seq is not None:
            where += f" (record seq {self.bad_seq:,})"
        before = f"{self.count:,} records before it verify"
        if self.count <= 1:
            before = "1 record before it verifies" if self.count else "no record before it"
        return f"BROKEN at {where} of {path}: {self.reason}; {before}"


def verify(
    path: Path, anchor: AuditAnchor | None = None, *, anchor_source: str = "the anchor"
) -> VerifyResult:
    """Check every line of `path` against the chain and the repair rule, streaming (constant
    memory); with `anchor`, also require that record (else: truncated or rewritten).

    An absent or empty file is OK with count 0 unless an anchor says records were written.
    Reports the first problem; `anchor_source` names the anchor in messages ("positions.json").
    """
    return _scan(Path(path), anchor, anchor_source).result


def check_chain(
    path: Path, anchor: AuditAnchor | None = None, *, anchor_source: str = "the anchor"
) -> None:
    """Nothing when `verify(path, anchor)` passes; else AuditIntegrityError, one line naming the
    file, the first bad line and the repair command (the live loop calls it before writing)."""
    result = verify(path, anchor, anchor_source=anchor_source)
    if result.ok:
        return
    command = REPAIR_COMMAND
    if Path(path).resolve() != paths().audit_log:
        command += f" --file {path}"
    raise AuditIntegrityError(
        f"{result.describe(path)}; not writing to a broken audit log: keep a copy as evidence, "
        f"then run `{command}` to document the break (nothing is rewritten)"
    )


@dataclass(frozen=True)
class _Position:
    """A parsed line: its number, seq and stored hash."""

    line: int
    seq: int
    hash: str


@dataclass
class _OpenBreak:
    """A break not (yet) documented: where, why, and a digest of the lines skipped since."""

    line: int
    seq: int | None
    reason: str
    last_good: _Position | None  # the last record the chain verified before the break
    digest: Any  # hashlib sha256 of the skipped lines' bytes, the break's line included
    lines: int = 1
    near_miss: str | None = None  # why a chain_repair record after it does not document it


@dataclass(frozen=True)
class _Scan:
    """Everything one pass over the log learns; `result` is what `verify` returns."""

    result: VerifyResult
    open_break: _OpenBreak | None  # the first undocumented break, if any
    last_parsed: _Position | None  # the last line that parses (a repair links to it)
    lines: int  # complete and torn lines read
    anchor_problem: str | None  # why the anchor does not hold (also when the chain broke first)


def _scan(path: Path, anchor: AuditAnchor | None, anchor_source: str) -> _Scan:
    """One streaming pass applying the chain, the repair rule and the anchor rule."""
    count = repairs = skipped = number = 0
    expected_seq, prev_hash = 1, GENESIS_HASH
    last_good: _Position | None = None
    last_parsed: _Position | None = None
    open_break: _OpenBreak | None = None
    anchor_held = False
    at_anchor: tuple[int, int, str] | None = None  # (line, records before it, its hash)
    if path.exists():
        with open(path, "rb") as f:
            for number, line in enumerate(f, start=1):
                record, reason = _check_line(line)
                member = False
                if open_break is not None:
                    why_not = _repair_mismatch(record, open_break, last_parsed)
                    if why_not is None:
                        repairs, skipped, member = repairs + 1, skipped + open_break.lines, True
                        count += open_break.lines  # covered by the repair's skipped_sha256
                        open_break = None
                    else:
                        if record is not None and record.event == "chain_repair":
                            names_it = record.payload.get("first_bad_line") == open_break.line
                            if open_break.near_miss is None or names_it:
                                open_break.near_miss = (
                                    f"the chain_repair record at line {number:,} does not "
                                    f"document it ({why_not})"
                                )
                        open_break.digest.update(line)
                        open_break.lines += 1
                else:
                    if record is not None:
                        reason = _chain_problem(record, expected_seq, prev_hash)
                    if reason is None:
                        member = True
                    else:
                        seq = record.seq if record is not None else None
                        open_break = _OpenBreak(
                            number, seq, reason, last_good, hashlib.sha256(line)
                        )
                if record is None:
                    continue
                if member:
                    count += 1
                    expected_seq, prev_hash = record.seq + 1, record.hash
                    last_good = _Position(number, record.seq, record.hash)
                    if anchor is not None and record.event == "chain_repair":
                        anchor_held |= record.payload.get("anchor") == anchor.to_json()
                last_parsed = _Position(number, record.seq, record.hash)
                if anchor is not None and record.seq == anchor.seq:
                    anchor_held |= record.hash == anchor.hash
                    at_anchor = (number, count - member, record.hash)

    anchor_problem, anchor_line, anchor_before = None, number + 1, count
    if anchor is not None and not anchor_held:
        if last_parsed is None or last_parsed.seq < anchor.seq:
            last = f"the last record is seq {last_parsed.seq:,}" if last_parsed else "no records"
            anchor_problem = f"truncated: {last}, but {anchor_source} anchors {anchor.short()}"
        elif at_anchor is not None:
            anchor_line, anchor_before, found = at_anchor
            anchor_problem = (
                f"rewritten: record seq {anchor.seq:,} has hash {found[:12]}…, but "
                f"{anchor_source} anchors hash {anchor.hash[:12]}… (rewritten at or before it)"
            )
        else:
            anchor_problem = (
                f"rewritten: no record has seq {anchor.seq:,}, but {anchor_source} anchors "
                f"{anchor.short()}"
            )
    if open_break is not None:
        reason = open_break.reason
        if open_break.near_miss:
            reason += f"; {open_break.near_miss}"
        bad = (open_break.line, reason, open_break.seq)
        before = count
        for_break = open_break
    elif anchor_problem is not None:
        bad = (anchor_line, anchor_problem, anchor.seq if anchor else None)
        before = anchor_before
        for_break = None
    else:
        result = VerifyResult(True, count, None, None, None, repairs, skipped, anchor)
        return _Scan(result, None, last_parsed, number, None)
    bad_line, why, bad_seq = bad
    result = VerifyResult(False, before, bad_line, why, bad_seq, repairs, skipped, anchor)
    return _Scan(result, for_break, last_parsed, number, anchor_problem)


def _repair_mismatch(
    record: AuditRecord | None, open_break: _OpenBreak, last_parsed: _Position | None
) -> str | None:
    """None when `record` is a chain_repair documenting `open_break` (the repair rule), else why
    not, for a message."""
    if record is None or record.event != "chain_repair":
        return "not a chain_repair record"
    recomputed = record_hash(
        record.seq, record.time, record.event, record.payload, record.prev_hash
    )
    if recomputed != record.hash:
        return "its own hash does not match"
    payload = record.payload
    if payload.get("first_bad_line") != open_break.line:
        return f"it names line {payload.get('first_bad_line')}"
    if (
        payload.get("skipped_lines") != open_break.lines
        or payload.get("skipped_sha256") != open_break.digest.hexdigest()
    ):
        return f"the lines from line {open_break.line:,} changed since"
    last_good = open_break.last_good
    if payload.get("last_good_hash") != (last_good.hash if last_good else None):
        return f"the record before line {open_break.line:,} changed since"
    seq, prev_hash = (last_parsed.seq, last_parsed.hash) if last_parsed else (0, GENESIS_HASH)
    if record.prev_hash != prev_hash or record.seq != seq + 1:
        return "it does not link to the last readable line before it"
    return None


def _repair_payload(scan: _Scan, anchor: AuditAnchor | None, anchor_source: str) -> dict[str, Any]:
    """The chain_repair payload documenting the first problem of a failed `scan`."""
    result, open_break, last = scan.result, scan.open_break, scan.last_parsed
    payload: dict[str, Any] = {
        "reason": open_break.reason if open_break else result.reason,
        "first_bad_line": result.first_bad_line,
        "first_bad_seq": result.bad_seq,
        "last_good_line": None,
        "last_good_seq": None,
        "last_good_hash": None,
        "skipped_lines": 0,
        "skipped_sha256": hashlib.sha256(b"").hexdigest(),
        "prev_line": last.line if last else None,  # the line this record links to
        "prev_seq": last.seq if last else None,
        "prev_hash_found": last.hash if last else GENESIS_HASH,
        "anchor": anchor.to_json() if anchor else None,
        "anchor_source": anchor_source if anchor else None,
        "anchor_problem": scan.anchor_problem,
    }
    if open_break is not None:
        good = open_break.last_good
        payload |= {
            "last_good_line": good.line if good else None,
            "last_good_seq": good.seq if good else None,
            "last_good_hash": good.hash if good else None,
            "skipped_lines": open_break.lines,
            "skipped_sha256": open_break.digest.hexdigest(),
        }
    return payload


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


# --- Anchors kept by the live loop ----------------------------------------------------------------
@dataclass(frozen=True)
class StoredAnchor:
    """The anchor found in a TRADING_HOME's state files, and where (or why there is none)."""

    anchor: AuditAnchor | None  # the higher-seq anchor of positions.json and the heartbeat
    source: str  # the file it came from ("positions.json"), or "" when none was found
    notes: tuple[str, ...]  # one note per file without a usable anchor ("positions.json: absent")

    def describe(self) -> str:
        """One line: which anchor is checked, or why none is."""
        if self.anchor is None:
            return (
                f"no anchor found ({'; '.join(self.notes)}): a removed tail cannot be detected "
                "from the chain alone"
            )
        return f"anchor {self.anchor.short()} from {self.source}"


def read_stored_anchor(home: Paths | None = None, *, strict: bool = False) -> StoredAnchor:
    """The `audit_anchor` of positions.json and data/heartbeat.json (the higher seq; positions.json
    on a tie); an absent, unreadable or malformed file or key is noted, never raised -- unless
    `strict` (`audit verify`, `audit repair`): then a file that exists but cannot be read as
    JSON is a ConfigurationError naming it, since the anchor it may hold cannot be checked."""
    home = home or paths()
    found: list[tuple[AuditAnchor, str]] = []
    notes: list[str] = []
    for file in (home.positions_file, home.heartbeat_file):
        label = (
            file.relative_to(home.home).as_posix() if file.is_relative_to(home.home) else str(file)
        )
        try:
            data = json.loads(file.read_bytes())
        except FileNotFoundError:
            notes.append(f"{label}: absent")
            continue
        except OSError as exc:
            if strict:
                raise ConfigurationError(
                    f"{file} is unreadable ({exc.strerror or exc}): the audit anchor it keeps "
                    "cannot be checked; fix its permissions"
                ) from None
            notes.append(f"{label}: unreadable ({exc.strerror or exc})")
            continue
        except ValueError:
            if strict:
                raise ConfigurationError(
                    f"{file} is not valid JSON: the audit anchor it keeps cannot be checked; "
                    "restore it from a backup or move it aside"
                ) from None
            notes.append(f"{label}: not valid JSON")
            continue
        if not isinstance(data, dict) or ANCHOR_KEY not in data:
            notes.append(f"{label}: no {ANCHOR_KEY}")
            continue
        try:
            found.append((AuditAnchor.from_json(data[ANCHOR_KEY]), label))
        except ValueError as exc:
            notes.append(f"{label}: unusable {ANCHOR_KEY} ({exc})")
    if not found:
        return StoredAnchor(None, "", tuple(notes))
    anchor, source = max(found, key=lambda item: item[0].seq)  # max keeps the first on a tie
    return StoredAnchor(anchor, source, tuple(notes))


# --- Command line ---------------------------------------------------------------------------------
_DESCRIPTION = "\n\n".join(
    textwrap.fill(paragraph, 96)
    for paragraph in (
        "The live loop writes every start, signal, risk decision, order, fill, position change, "
        "alert and halt to $TRADING_HOME/logs/audit.jsonl, one JSON record a line. Each record "
        "carries the SHA-256 of its content and of the record before it, so an edited, removed, "
        "inserted or reordered line breaks the chain where it happened.",
        "verify: check the whole chain, and the anchor the live loop keeps in positions.json "
        "and data/heartbeat.json (the last record it wrote: a removed tail is detected); exit 0 "
        "when intact, 11 naming the first broken line or seq.",
        "repair: when verify fails, append one chain_repair record that documents the break "
        "(where, why, what was found) and links to the last readable line; nothing is moved or "
        "rewritten, and verify then accepts the break. On an intact log it changes nothing.",
        "tail: print the last records.",
    )
)
_EPILOG = """\
examples:
  python main.py audit verify                    check $TRADING_HOME/logs/audit.jsonl
  python main.py audit verify --file copy.jsonl  check a copy (e.g. from a backup; no anchor)
  python main.py audit repair                    document a break found by verify (append-only)
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


def _log_and_anchor(args: argparse.Namespace) -> tuple[Path, StoredAnchor]:
    """The log a command reads, and the home's anchor when that log is the home's own.

    ConfigurationError (exit 2) for a --file that does not exist.
    """
    home = paths()
    if not args.file:
        return home.audit_log, read_stored_anchor(home, strict=True)
    path = Path(args.file)
    if not path.exists():
        raise ConfigurationError(f"no such file: {path}")
    if path.resolve() == home.audit_log:
        return path, read_stored_anchor(home, strict=True)
    return path, StoredAnchor(None, "", ("--file is not $TRADING_HOME/logs/audit.jsonl",))


def _cmd_verify(args: argparse.Namespace) -> int:
    path, stored = _log_and_anchor(args)
    try:
        result = verify(path, stored.anchor, anchor_source=stored.source)
    except OSError as exc:
        raise TradingError(f"cannot read the audit log {path}: {exc.strerror or exc}") from exc
    message = result.describe(path)
    if not result.ok:
        raise AuditIntegrityError(f"{message}; to document it: `{REPAIR_COMMAND}`")
    print(message)
    if result.count:
        print(stored.describe())
    return 0


def _cmd_repair(args: argparse.Namespace) -> int:
    path, stored = _log_and_anchor(args)
    print(stored.describe())
    try:
        record = AuditLog(path).repair(stored.anchor, anchor_source=stored.source)
        after = verify(path, stored.anchor, anchor_source=stored.source)
    except OSError as exc:
        raise TradingError(f"cannot repair the audit log {path}: {exc.strerror or exc}") from exc
    if record is None:
        print(f"nothing to repair: {after.describe(path)}; the file was not changed")
    elif record.event == "recovery":
        print(
            f"moved {record.payload['torn_bytes']} bytes of a half-written last line to "
            f"{record.payload['saved_to']} and appended recovery record seq {record.seq:,}"
        )
    else:
        payload = record.payload
        skipped = payload["skipped_lines"]
        print(
            f"appended chain_repair record seq {record.seq:,} documenting line "
            f"{payload['first_bad_line']:,}: {payload['reason']}"
        )
        print(
            f"it links to seq {payload['prev_seq']} (hash {payload['prev_hash_found'][:12]}…); "
            f"{skipped:,} line{'s' if skipped != 1 else ''} kept as found; "
            "nothing moved or rewritten"
        )
        if "torn_saved_to" in payload:
            print(
                f"moved {payload['torn_bytes']} bytes of a half-written last line to "
                f"{payload['torn_saved_to']}"
            )
        print(f"now: {after.describe(path)}")
    if not after.ok:
        raise AuditIntegrityError(f"still broken after the repair: {after.describe(path)}")
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
    """Add `audit verify`, `audit repair` and `audit tail` to main.py's sub-parsers."""
    parser = commands.add_parser(
        "audit",
        parents=[common],
        help="verify or repair the hash-chained audit log of the live loop, or show its end",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    file_help = "audit log to read (default: $TRADING_HOME/logs/audit.jsonl)"

    check = actions.add_parser(
        "verify",
        parents=[common],
        help="check the hash chain and the stored anchor; exit 11 naming the first broken line",
        description="Recompute every record's hash and its link to the record before it, and "
        "require the anchor (last record written) kept in positions.json / data/heartbeat.json.",
    )
    check.add_argument("--file", metavar="PATH", help=file_help)
    check.set_defaults(func=_cmd_verify)

    fix = actions.add_parser(
        "repair",
        parents=[common],
        help="document a break with an appended chain_repair record (rewrites nothing)",
        description="When verify fails, append one chain_repair record naming the first bad line, "
        "the reason and what was found, linked to the last readable line; verify then accepts "
        "that break. Nothing is moved or rewritten; an intact log is left unchanged. Stop the "
        "live loop first.",
    )
    fix.add_argument("--file", metavar="PATH", help=file_help)
    fix.set_defaults(func=_cmd_repair)

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
