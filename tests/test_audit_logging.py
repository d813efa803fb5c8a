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


# --- Anchors --------------------------------------------------------------------------------------
def _anchor_home(home: Path, n: int, *, drop_last: int = 0) -> audit.AuditAnchor:
    """A home whose log had `n` records, positions.json anchoring the last; then `drop_last`
    lines removed from the end of the log."""
    log = _append_fills(home / "logs" / "audit.jsonl", n)
    anchor = log.anchor()
    assert anchor is not None
    _store_anchor(home / "positions.json", anchor)
    if drop_last:
        log.path.write_bytes(b"".join(_lines(log.path)[:-drop_last]))
    return anchor


def _store_anchor(file: Path, anchor: audit.AuditAnchor) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps({"schema_version": 1, "audit_anchor": anchor.to_json()}))


def test_anchor_is_the_last_records_seq_and_hash_and_round_trips_through_json(log_path):
    assert AuditLog(log_path).anchor() is None
    log = _append_fills(log_path, 3)
    last = log.last()
    assert last is not None

    anchor = log.anchor()

    assert anchor == audit.AuditAnchor(3, last.hash) == audit.AuditAnchor.of(last)
    assert audit.AuditAnchor.from_json(json.loads(json.dumps(anchor.to_json()))) == anchor
    for bad in ({"seq": 0, "hash": last.hash}, {"seq": 3, "hash": "abc"}, {"seq": 3}, [3]):
        with pytest.raises(ValueError):
            audit.AuditAnchor.from_json(bad)


def test_a_removed_tail_is_found_only_with_an_anchor_and_names_both_seqs(log_path):
    log = _append_fills(log_path, 5)
    anchor = log.anchor()
    log_path.write_bytes(b"".join(_lines(log_path)[:-1]))

    assert verify(log_path).ok
    result = verify(log_path, anchor, anchor_source="positions.json")

    assert (result.ok, result.first_bad_line, result.bad_seq, result.count) == (False, 5, 5, 4)
    assert result.reason is not None
    assert result.reason.startswith(
        "truncated: the last record is seq 4, but positions.json anchors seq 5 (hash "
    )


def test_a_chain_rewritten_whole_is_found_by_the_anchor_at_its_seq(log_path):
    anchor = _append_fills(log_path, 3).anchor()
    _write_chain(log_path, 3)  # another valid chain of the same length

    assert verify(log_path).ok
    result = verify(log_path, anchor)

    assert (result.ok, result.first_bad_line, result.bad_seq) == (False, 3, 3)
    assert result.reason is not None and result.reason.startswith("rewritten: record seq 3 has")


def test_an_anchor_with_no_log_at_all_is_a_truncation(log_path):
    anchor = audit.AuditAnchor(7, "a" * 64)

    result = verify(log_path, anchor)

    assert not result.ok and result.reason is not None
    assert result.reason.startswith("truncated: no records, but the anchor anchors seq 7")


def test_stored_anchor_takes_the_higher_seq_and_notes_unreadable_files(tmp_path):
    import constants as C

    home = C.paths(tmp_path)
    read_none = audit.read_stored_anchor(home)
    assert read_none.anchor is None and "positions.json: absent" in read_none.describe()
    _store_anchor(home.positions_file, audit.AuditAnchor(3, "a" * 64))
    _store_anchor(home.heartbeat_file, audit.AuditAnchor(5, "b" * 64))
    assert audit.read_stored_anchor(home) == audit.StoredAnchor(
        audit.AuditAnchor(5, "b" * 64), "data/heartbeat.json", ()
    )
    home.heartbeat_file.write_text('{"audit_anchor": ')

    stored = audit.read_stored_anchor(home)

    assert (stored.anchor, stored.source) == (audit.AuditAnchor(3, "a" * 64), "positions.json")
    assert stored.notes == ("data/heartbeat.json: not valid JSON",)


def test_cli_verify_exits_11_for_a_removed_tail_naming_the_anchors_seq(tmp_path):
    _anchor_home(tmp_path, 5, drop_last=1)

    done = run("main.py", "audit", "verify", home=tmp_path)

    assert done.returncode == 11, done.stdout + done.stderr
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: BROKEN at line 5 (record seq 5)")
    assert "the last record is seq 4, but positions.json anchors seq 5" in errors[0]
    assert "python main.py audit repair" in errors[0]


def test_cli_verify_without_an_anchor_is_ok_but_says_none_was_found(tmp_path):
    _append_fills(tmp_path / "logs" / "audit.jsonl", 3)

    done = run("main.py", "audit", "verify", home=tmp_path)

    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    assert first.startswith("OK: 3 records, hash chain intact")
    assert second.startswith(
        "no anchor found (positions.json: absent; data/heartbeat.json: absent)"
    )


def test_cli_verify_exits_11_when_the_anchored_record_was_rewritten(tmp_path):
    anchor = _anchor_home(tmp_path, 3)
    _write_chain(tmp_path / "logs" / "audit.jsonl", 3)

    done = run("main.py", "audit", "verify", home=tmp_path)

    assert done.returncode == 11
    assert "rewritten: record seq 3 has hash" in done.stderr
    assert f"positions.json anchors hash {anchor.hash[:12]}" in done.stderr


def test_cli_verify_of_a_missing_file_exits_2_with_one_line(tmp_path):
    done = run(
        "main.py", "audit", "verify", "--file", str(tmp_path / "missing.jsonl"), home=tmp_path
    )

    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: no such file: {tmp_path}/missing.jsonl"]


# --- Refusing to write, and repairs ---------------------------------------------------------------
def test_check_chain_passes_an_intact_log_and_raises_naming_the_line_and_the_repair(log_path):
    log = _append_fills(log_path, 3)
    audit.check_chain(log_path, log.anchor())
    log_path.write_bytes(log_path.read_bytes().replace(b'"qty":101', b'"qty":901'))

    with pytest.raises(audit.AuditIntegrityError) as caught:
        audit.check_chain(log_path)

    message = str(caught.value)
    assert "\n" not in message and str(log_path) in message
    assert "BROKEN at line 2 (record seq 2)" in message
    assert f"python main.py audit repair --file {log_path}" in message


def test_repair_documents_a_broken_chain_and_its_record_is_chained(log_path):
    log = _append_fills(log_path, 5)
    lines = _lines(log_path)
    log_path.write_bytes(
        lines[0] + lines[1].replace(b'"qty":101', b'"qty":901') + b"".join(lines[2:])
    )
    before = log_path.read_bytes()

    repair = log.repair()

    assert repair is not None and repair.event == "chain_repair"
    assert log_path.read_bytes().startswith(before)  # only appended
    assert (repair.seq, repair.prev_hash) == (6, json.loads(lines[-1])["hash"])
    assert repair.payload["first_bad_line"] == 2 and repair.payload["first_bad_seq"] == 2
    assert repair.payload["reason"] == "hash mismatch (record was modified)"
    assert repair.payload["prev_hash_found"] == repair.prev_hash
    assert repair.payload["skipped_lines"] == 4
    assert verify(log_path) == audit.VerifyResult(True, 6, None, None, None, 1, 4)
    after = log.append("stop")
    assert after.prev_hash == repair.hash and verify(log_path).count == 7
    # The repair record is itself under the chain: editing it breaks verification.
    log_path.write_bytes(log_path.read_bytes().replace(b'"skipped_lines":4', b'"skipped_lines":3'))
    assert verify(log_path).first_bad_line == 2


def test_a_line_edited_after_its_repair_breaks_verification_again(log_path):
    log = _append_fills(log_path, 5)
    log_path.write_bytes(log_path.read_bytes().replace(b'"qty":101', b'"qty":901'))
    log.repair()
    log_path.write_bytes(log_path.read_bytes().replace(b'"qty":103', b'"qty":903'))

    result = verify(log_path)

    assert (result.ok, result.first_bad_line) == (False, 2)
    assert result.reason is not None
    assert "the chain_repair record at line 6 does not document it" in result.reason


def test_a_break_after_a_repair_needs_its_own_repair(log_path):
    log = _append_fills(log_path, 3)
    log_path.write_bytes(log_path.read_bytes().replace(b'"qty":101', b'"qty":901'))
    log.repair()
    log.append("stop")
    with log_path.open("ab") as f:
        f.write(b"not json\n")

    assert verify(log_path).first_bad_line == 6
    log.repair()
    assert verify(log_path) == audit.VerifyResult(True, 7, None, None, None, 2, 3)


def test_repair_moves_a_torn_tail_aside_and_documents_the_break(log_path):
    log = _append_fills(log_path, 3)
    log_path.write_bytes(log_path.read_bytes().replace(b'"qty":101', b'"qty":901') + b'{"seq":')

    repair = log.repair()

    assert repair is not None and repair.payload["torn_bytes"] == len(b'{"seq":')
    assert Path(repair.payload["torn_saved_to"]).read_bytes() == b'{"seq":'
    assert verify(log_path).ok


def test_cli_repair_then_verify_is_ok_for_a_broken_chain(tmp_path):
    path = tmp_path / "logs" / "audit.jsonl"
    _append_fills(path, 5)
    path.write_bytes(path.read_bytes().replace(b'"qty":101', b'"qty":901'))

    repaired = run("main.py", "audit", "repair", home=tmp_path)
    checked = run("main.py", "audit", "verify", home=tmp_path)

    assert repaired.returncode == 0, repaired.stderr
    assert "appended chain_repair record seq 6 documenting line 2: hash mismatch" in repaired.stdout
    assert "nothing moved or rewritten" in repaired.stdout
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("OK: 6 records, hash chain intact apart from 1 documented")


def test_cli_repair_of_an_intact_log_changes_nothing(tmp_path):
    import hashlib

    _anchor_home(tmp_path, 3)
    path = tmp_path / "logs" / "audit.jsonl"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()

    done = run("main.py", "audit", "repair", home=tmp_path)

    assert done.returncode == 0, done.stderr
    assert "nothing to repair: OK: 3 records" in done.stdout
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_cli_repair_documents_a_removed_tail_and_verify_then_accepts_the_anchor(tmp_path):
    anchor = _anchor_home(tmp_path, 5, drop_last=1)

    repaired = run("main.py", "audit", "repair", home=tmp_path)
    checked = run("main.py", "audit", "verify", home=tmp_path)

    assert repaired.returncode == 0, repaired.stderr
    assert "documenting line 5: truncated: the last record is seq 4" in repaired.stdout
    record = AuditLog(tmp_path / "logs" / "audit.jsonl").last()
    assert record is not None and record.event == "chain_repair"
    assert record.payload["anchor"] == anchor.to_json()
    assert record.payload["anchor_source"] == "positions.json"
    assert checked.returncode == 0, checked.stderr
    assert "anchor seq 5 holds" in checked.stdout
    assert verify(tmp_path / "logs" / "audit.jsonl", anchor).ok
