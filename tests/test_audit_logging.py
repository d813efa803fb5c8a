"""The audit log: a hash chain that every edit, removal, insertion or reorder breaks, written whole
lines at a time by any number of processes, repaired (never silently) after a torn write."""

from __future__ import annotations

import datetime as dt
import enum
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import filelock
import pytest

import audit_logging as audit
from audit_logging import GENESIS_HASH, AuditLog, canonical_json, record_hash, verify
from error_handling import TradingError
from tests.helpers import ROOT, run

SENTINEL = "sentinel-audit-0123456789"


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "logs" / "audit.jsonl"


def _append_fills(path: Path, n: int) -> AuditLog:
    log = AuditLog(path)
    for i in range(n):
        log.append("fill", {"symbol": "AAPL", "qty": 100 + i, "price": 187.25})
    return log


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _write_chain(path: Path, n: int) -> None:
    """A valid chain of `n` records written directly (appending one by one fsyncs each)."""
    prev, out = GENESIS_HASH, []
    for seq in range(1, n + 1):
        time, payload = "2024-03-04T14:30:00.000Z", {"i": seq}
        digest = record_hash(seq, time, "signal", payload, prev)
        record = {"seq": seq, "time": time, "event": "signal", "payload": payload}
        out.append(canonical_json({**record, "prev_hash": prev, "hash": digest}) + b"\n")
        prev = digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(out))


def _forge(line: bytes, **changes: object) -> bytes:
    """`line` with `changes` applied and its own hash recomputed (self-consistent)."""
    data = {**json.loads(line), **changes}
    data["hash"] = record_hash(
        data["seq"], data["time"], data["event"], data["payload"], data["prev_hash"]
    )
    return canonical_json(data) + b"\n"


# --- The chain ------------------------------------------------------------------------------------
def test_appended_records_are_numbered_chained_and_recomputable(log_path):
    log = _append_fills(log_path, 3)

    records = list(log.records())
    assert [r.seq for r in records] == [1, 2, 3]
    assert [r.prev_hash for r in records] == [GENESIS_HASH, records[0].hash, records[1].hash]
    for r in records:
        assert r.hash == record_hash(r.seq, r.time, r.event, r.payload, r.prev_hash)
        assert r.time.endswith("Z") and len(r.time) == len("2024-03-04T14:30:00.123Z")
    assert verify(log_path) == audit.VerifyResult(True, 3, None, None)
    assert log.last() == records[-1]


def test_payload_dates_paths_and_enums_are_written_as_text_and_still_verify(log_path):
    class Side(enum.Enum):
        BUY = "buy"

    when = dt.datetime(2024, 3, 4, 14, 30, tzinfo=dt.UTC)
    record = AuditLog(log_path).append(
        "order_submitted",
        {"at": when, "model": Path("models/v3"), "side": Side.BUY, "legs": (1, 2)},
    )

    assert record.payload == {
        "at": "2024-03-04T14:30:00+00:00",
        "model": "models/v3",
        "side": "buy",
        "legs": [1, 2],
    }
    assert verify(log_path).ok


def test_modified_payload_byte_is_a_hash_mismatch_at_its_line(log_path):
    _append_fills(log_path, 3)
    lines = _lines(log_path)
    lines[1] = lines[1].replace(b'"qty":101', b'"qty":901')
    log_path.write_bytes(b"".join(lines))

    result = verify(log_path)

    assert (result.ok, result.first_bad_line, result.count) == (False, 2, 1)
    assert result.reason is not None and "hash mismatch" in result.reason
    assert result.describe(log_path).startswith("BROKEN at line 2 (record seq 2)")


def test_deleted_middle_line_is_a_sequence_gap_at_its_line(log_path):
    _append_fills(log_path, 3)
    lines = _lines(log_path)
    log_path.write_bytes(lines[0] + lines[2])

    result = verify(log_path)

    assert (result.ok, result.first_bad_line, result.count) == (False, 2, 1)
    assert result.reason == "sequence gap: expected 2, found 3 (1 record missing)"


def test_forged_insert_with_renumbered_followers_is_caught_by_prev_hash(log_path):
    _append_fills(log_path, 3)
    one, two, three = _lines(log_path)
    forged = _forge(two, payload={"symbol": "AAPL", "qty": 5000, "price": 1.0})  # seq 2, chained
    # The forger renumbers the real records and fixes their own hashes, but not their links.
    tampered = [one, forged, _forge(two, seq=3), _forge(three, seq=4)]
    log_path.write_bytes(b"".join(tampered))

    result = verify(log_path)

    assert (result.ok, result.first_bad_line, result.count) == (False, 3, 2)
    assert result.reason is not None and result.reason.startswith("prev_hash does not match")


def test_swapped_lines_are_detected_at_the_first_moved_line(log_path):
    _append_fills(log_path, 3)
    one, two, three = _lines(log_path)
    log_path.write_bytes(one + three + two)

    result = verify(log_path)

    assert (result.ok, result.first_bad_line, result.count) == (False, 2, 1)
    assert result.reason is not None and result.reason.startswith("sequence")


def test_absent_or_empty_log_verifies_with_no_records(log_path):
    assert verify(log_path) == audit.VerifyResult(True, 0, None, None)
    log_path.parent.mkdir(parents=True)
    log_path.touch()
    assert verify(log_path).ok and verify(log_path).count == 0
    assert "no audit records yet" in verify(log_path).describe(log_path)
    assert AuditLog(log_path).last() is None


# --- Torn writes ----------------------------------------------------------------------------------
def test_truncated_last_line_is_reported_by_verify(log_path):
    _append_fills(log_path, 2)
    with log_path.open("ab") as f:
        f.write(b'{"event":"fill","hash":"ab')

    result = verify(log_path)

    assert (result.ok, result.first_bad_line, result.count) == (False, 3, 2)
    assert result.reason == "truncated last line (no newline): a crash while writing"


def test_append_after_a_torn_line_saves_it_aside_and_records_the_recovery(log_path, caplog):
    log = _append_fills(log_path, 2)
    torn = b'{"event":"fill","hash":"ab'
    with log_path.open("ab") as f:
        f.write(torn)

    new = log.append("stop", {"reason": "test"})

    saved = list(log_path.parent.glob("audit.jsonl.torn-*"))
    assert len(saved) == 1 and saved[0].read_bytes() == torn
    recovery, last = list(log.records())[-2:]
    assert recovery.event == "recovery" and recovery.seq == 3
    assert recovery.payload["torn_bytes"] == len(torn)
    assert recovery.payload["saved_to"] == str(saved[0])
    assert (last, last.seq) == (new, 4)
    assert verify(log_path).ok and verify(log_path).count == 4
    assert any("half-written" in r.getMessage() for r in caplog.records)


# --- What is written ------------------------------------------------------------------------------
def test_secrets_are_redacted_before_they_are_hashed_or_written(log_path, monkeypatch):
    monkeypatch.setenv("ALPACA_SECRET_KEY", SENTINEL)

    record = AuditLog(log_path).append(
        "alert",
        {"message": f"auth failed with {SENTINEL}", "nested": [{"x": SENTINEL}], "qty": 3},
    )

    assert SENTINEL not in log_path.read_text(encoding="utf-8")
    assert SENTINEL not in json.dumps(record.payload)
    assert record.payload["qty"] == 3
    assert verify(log_path).ok


def test_unknown_event_raises_and_writes_nothing(log_path):
    with pytest.raises(ValueError, match="unknown audit event 'trade'"):
        AuditLog(log_path).append("trade", {"qty": 1})
    assert not log_path.exists()


def test_nan_in_payload_raises_and_writes_nothing(log_path):
    log = _append_fills(log_path, 1)
    before = log_path.read_bytes()

    with pytest.raises(ValueError, match="not JSON-able"):
        log.append("signal", {"zscore": float("nan")})

    assert log_path.read_bytes() == before


# --- Concurrency ----------------------------------------------------------------------------------
_WRITER = """
import sys, time
from pathlib import Path
import audit_logging
log = audit_logging.AuditLog(Path(sys.argv[1]))
time.sleep(max(0.0, float(sys.argv[3]) - time.time()))  # all four start writing together
for i in range(25):
    log.append("signal", {"writer": int(sys.argv[2]), "i": i})
"""


def test_four_processes_appending_at_once_form_one_valid_chain(log_path):
    start = str(time.time() + 1.0)
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(log_path), str(w), start], cwd=ROOT)
        for w in range(4)
    ]
    assert [p.wait(timeout=60) for p in writers] == [0, 0, 0, 0]

    assert verify(log_path) == audit.VerifyResult(True, 100, None, None)
    records = list(AuditLog(log_path).records())
    assert [r.seq for r in records] == list(range(1, 101))
    assert sorted((r.payload["writer"], r.payload["i"]) for r in records) == [
        (w, i) for w in range(4) for i in range(25)
    ]


def test_append_waits_for_the_file_lock_and_times_out_without_writing(log_path):
    _append_fills(log_path, 1)
    before = log_path.read_bytes()
    with (
        filelock.FileLock(str(log_path) + ".lock"),
        pytest.raises(TradingError, match="could not lock"),
    ):
        AuditLog(log_path, lock_timeout_s=0.2).append("stop")

    assert log_path.read_bytes() == before


def test_threads_sharing_one_log_append_without_breaking_the_chain(log_path):
    log = AuditLog(log_path)
    threads = [
        threading.Thread(target=lambda: [log.append("signal", {"i": i}) for i in range(10)])
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert verify(log_path) == audit.VerifyResult(True, 40, None, None)


# --- Reading from the end -------------------------------------------------------------------------
def test_last_and_append_continue_a_long_log_and_it_verifies(log_path):
    _write_chain(log_path, 20_000)
    log = AuditLog(log_path)

    last = log.last()
    new = log.append("stop")

    assert last is not None and last.seq == 20_000
    assert new.seq == 20_001 and new.prev_hash == last.hash
    assert verify(log_path) == audit.VerifyResult(True, 20_001, None, None)


def test_last_reads_only_the_tail_so_an_unreadable_start_does_not_matter(log_path):
    _write_chain(log_path, 3)
    log_path.write_bytes(b"garbage\n" + log_path.read_bytes())

    last = AuditLog(log_path).last()

    assert last is not None and last.seq == 3
    assert verify(log_path).reason == "not valid JSON"


def test_last_finds_a_record_longer_than_one_read_block(log_path):
    log = _append_fills(log_path, 2)
    big = "x" * (3 * audit.TAIL_BLOCK_BYTES)

    log.append("alert", {"text": big})

    last = log.last()
    assert last is not None and last.seq == 3 and last.payload["text"] == big


def test_records_names_the_line_that_is_not_a_record(log_path):
    _append_fills(log_path, 2)
    with log_path.open("ab") as f:
        f.write(b"not json\n")

    with pytest.raises(audit.AuditIntegrityError, match="line 3: not valid JSON"):
        list(AuditLog(log_path).records())


# --- Command line ---------------------------------------------------------------------------------
def test_cli_verify_prints_ok_and_exits_0_on_an_intact_log(tmp_path):
    _append_fills(tmp_path / "logs" / "audit.jsonl", 3)

    done = run("main.py", "audit", "verify", home=tmp_path)

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK: 3 records, hash chain intact")


def test_cli_verify_exits_11_with_one_error_line_naming_the_tampered_line(tmp_path):
    path = tmp_path / "logs" / "audit.jsonl"
    _append_fills(path, 3)
    path.write_bytes(path.read_bytes().replace(b'"qty":101', b'"qty":901'))

    done = run("main.py", "audit", "verify", home=tmp_path)

    assert done.returncode == 11
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: BROKEN at line 2"), done.stderr
    assert "hash mismatch" in errors[0] and "Traceback" not in done.stderr


def test_cli_verify_of_an_absent_log_says_there_are_no_records_yet(tmp_path):
    done = run("main.py", "audit", "verify", home=tmp_path)

    assert done.returncode == 0, done.stderr
    assert "no audit records yet" in done.stdout


def test_cli_tail_prints_the_last_n_records(tmp_path):
    _append_fills(tmp_path / "logs" / "audit.jsonl", 3)

    done = run("main.py", "audit", "tail", "-n", "2", home=tmp_path)

    assert done.returncode == 0, done.stderr
    rows = done.stdout.splitlines()
    assert [row.split()[0] for row in rows] == ["2", "3"]
    assert rows[1].split()[2] == "fill" and '"qty":102' in rows[1]
