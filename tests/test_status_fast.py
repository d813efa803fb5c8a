"""`main.py status` starts without pandas, numpy or pandas_market_calendars, and the cached NYSE
sessions it reads (`market_sessions.SessionCache`) never answer differently from the calendar.

Speed itself is measured by bench/bench_cli.py, never asserted here.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

import constants as C
import live_state
import market_sessions as ms
import risk_management as rm
from data_validation import market_clock
from tests.helpers import run

HEAVY = ("pandas", "numpy", "pandas_market_calendars")


# --- A home with every state file status reads, written by the records' own writers ------------
def _state_home(root: Path) -> C.Paths:
    home = C.paths(root).ensure()
    now = datetime.now(UTC)
    live_state.write_heartbeat(
        home.heartbeat_file,
        live_state.Heartbeat(
            status="stopped",
            time=now.isoformat(),
            loop_time=now.isoformat(),
            pid=12345,
            mode="paper",
            broker="simulated",
            market_open=False,
            next_open=now.isoformat(),
            next_close=now.isoformat(),
            equity=100_000.0,
            cash=90_000.0,
            positions={"AAPL": 10, "MSFT": -5},
            halted=True,
            halt_reason="drawdown 21% >= 20%",
            circuit_breakers={"orders": "closed"},
            last_bar="2022-01-07T00:00:00",
            interval_s=60.0,
        ),
    )
    live_state.PositionsState(
        mode="paper",
        broker="simulated",
        updated_at=now.isoformat(),
        cash=90_000.0,
        equity=100_000.0,
        positions={"AAPL": live_state.HeldPosition(10, 170.5, 172.0)},
        open_orders=(
            {"symbol": "MSFT", "side": "sell", "qty": 5, "filled_qty": 2, "status": "partial"},
        ),
        last_processed_bar="2022-01-07T00:00:00",
        foreign={"KO": live_state.HeldPosition(5, 60.0, 61.0)},
    ).save(home.positions_file)
    risk = rm.RiskManager(state_path=home.risk_state_file, home=home.home, alerts=False)
    risk.halt("drawdown 21% >= 20%", pd.Timestamp("2022-01-06T21:00:00Z"))
    return home


def _imported(stderr: str) -> set[str]:
    """Top-level module names in a `python -X importtime` report."""
    names = set()
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)$", line)
        if m:
            names.add(m.group(1).split(".")[0])
    return names


def test_status_imports_no_pandas_numpy_or_calendar_once_the_sessions_are_cached(tmp_path):
    home = _state_home(tmp_path / "home")
    first = run("main.py", "status", home=home.home, extra_env={"ALERT_WEBHOOK_URL": ""})
    assert first.returncode == 0, first.stderr
    assert home.session_cache_file.exists()  # the first call computed and cached the sessions

    again = run(
        "-X", "importtime", "main.py", "status", home=home.home,
        extra_env={"ALERT_WEBHOOK_URL": ""},
    )  # fmt: skip

    assert again.returncode == 0, again.stderr
    imported = _imported(again.stderr)
    assert {"live_state", "market_sessions"} <= imported  # the report is read right
    assert imported.isdisjoint(HEAVY), sorted(imported & set(HEAVY))
    assert "live_trading" not in imported and "risk_management" not in imported
    # Same answer from the calendar (first run) and from the cache (this run); the heartbeat's
    # age may have moved by a second.
    strip_age = lambda out: re.sub(r"heartbeat [\d,]+ s ago", "", out)  # noqa: E731
    assert strip_age(again.stdout) == strip_age(first.stdout)
    clock = market_clock(pd.Timestamp.now(tz="UTC"))
    market = f"market: {'OPEN' if clock.is_open else 'closed'} now by the local NYSE calendar"
    market += "; next open "
    assert f"{market}{clock.next_open.isoformat()}\n" in again.stdout
    assert "risk: HALTED (drawdown 21% >= 20%)" in again.stdout
    assert "AAPL +10 @ 170.50" in again.stdout and "KO +5 @ 61.00" in again.stdout
    assert "sell 5 MSFT (2 filled, partial)" in again.stdout


def test_status_in_a_process_leaves_the_heavy_modules_out_of_sys_modules(tmp_path):
    """The same property through `sys.modules`, on live_state.status called directly."""
    home = _state_home(tmp_path / "home")
    ms.SessionCache.compute(*_years_now(), datetime.now(UTC)).write(home.session_cache_file)
    code = (
        "import sys, live_state, constants as C; st = live_state.status(C.paths()); "
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules)); print(st['halted'])"
    )
    proc = run("-c", code, home=home.home)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["[]", "True"]


def test_status_of_a_home_never_started_creates_nothing(tmp_path):
    proc = run("main.py", "status", home=tmp_path, extra_env={"ALERT_WEBHOOK_URL": ""})
    assert proc.returncode == 0, proc.stderr
    assert "not started yet" in proc.stdout
    assert not (tmp_path / "data").exists()


# --- The session cache against the calendar ---------------------------------------------------
INSTANTS = [
    "2024-07-02 15:00Z",  # open
    "2024-07-02 12:00Z",  # before the open
    "2024-07-02 21:30Z",  # after the close
    "2024-07-03 16:30Z",  # early close day, open
    "2024-07-03 17:30Z",  # early close day, after 13:00 New York
    "2024-07-04 15:00Z",  # Independence Day
    "2024-07-06 14:00Z",  # Saturday
    "2024-11-29 17:30Z",  # the day after Thanksgiving, after its early close
    "2024-12-25 15:00Z",  # Christmas
    "2024-12-31 21:30Z",  # year end: the next open is in the next year
    "2024-03-11 13:45Z",  # the first session after daylight saving
    "2024-07-02 13:30Z",  # exactly the open
    "2024-07-02 20:00Z",  # exactly the close
]


def _years_now() -> tuple[int, int]:
    year = datetime.now(UTC).year
    return year, year + 1


def _as_calendar(at: datetime) -> tuple[bool, str, str]:
    clock = market_clock(pd.Timestamp(at))
    return clock.is_open, clock.next_open.isoformat(), clock.next_close.isoformat()


def _as_cached(found: ms.SessionPosition) -> tuple[bool, str, str]:
    return found.is_open, ms.utc(found.next_open).isoformat(), ms.utc(found.next_close).isoformat()


def _cache_written_before(at: datetime, path: Path, first_year: int = 2024) -> ms.SessionCache:
    cache = ms.SessionCache.compute(first_year, first_year + 1, at - timedelta(hours=1))
    cache.write(path)
    return cache


def _fingerprint(path: Path) -> tuple[bytes, int, int]:
    st = path.stat()
    return path.read_bytes(), st.st_ino, st.st_mtime_ns


@pytest.mark.parametrize("instant", INSTANTS)
def test_a_cached_answer_is_the_calendars_answer(instant, tmp_path):
    at = pd.Timestamp(instant).to_pydatetime()
    path = tmp_path / "nyse_sessions.json"
    _cache_written_before(at, path)
    before = _fingerprint(path)

    found = ms.session_position(at, path)

    assert _fingerprint(path) == before  # answered from the cache, not recomputed
    assert _as_cached(found) == _as_calendar(at)
    session_date = market_clock(pd.Timestamp(at)).session_date
    assert (found.session_open is not None) is (session_date is not None)


def test_the_cache_holds_early_closes_and_holidays(tmp_path):
    path = tmp_path / "nyse_sessions.json"
    cache = _cache_written_before(datetime(2024, 7, 1, tzinfo=UTC), path)
    read = ms.SessionCache.read(path)
    assert read == cache
    days = {
        ms.utc(o).date(): ms.utc(c) - ms.utc(o)
        for o, c in zip(read.opens, read.closes, strict=True)
    }
    assert days[datetime(2024, 7, 3).date()] == timedelta(hours=3, minutes=30)  # early close
    assert datetime(2024, 7, 4).date() not in days and datetime(2024, 12, 25).date() not in days


def _recomputed(path: Path, at: datetime) -> ms.SessionPosition:
    """session_position at `at` must fall back to the calendar and rewrite a valid cache."""
    found = ms.session_position(at, path)
    assert _as_cached(found) == _as_calendar(at)
    rewritten = ms.SessionCache.read(path)
    assert rewritten is not None and rewritten.written_at == at.astimezone(UTC)
    assert rewritten.position(ms.to_ns(at)) == found
    return found


def test_a_stale_cache_falls_back_to_the_calendar(tmp_path):
    at = datetime(2024, 7, 3, 17, 30, tzinfo=UTC)
    path = tmp_path / "nyse_sessions.json"
    ms.SessionCache.compute(2024, 2025, at - timedelta(days=8)).write(path)
    _recomputed(path, at)


def test_a_cache_written_after_now_is_not_trusted(tmp_path):
    at = datetime(2024, 7, 3, 17, 30, tzinfo=UTC)
    path = tmp_path / "nyse_sessions.json"
    ms.SessionCache.compute(2024, 2025, at + timedelta(days=1)).write(path)
    _recomputed(path, at)


def test_a_cache_of_another_calendar_falls_back_to_the_calendar(tmp_path):
    """A cache made by the weekday rule (no pandas_market_calendars then) counts July 4th as a
    session; with the calendar installed now it must not be used."""
    at = datetime(2024, 7, 4, 15, 0, tzinfo=UTC)
    path = tmp_path / "nyse_sessions.json"
    cache = ms.SessionCache.compute(2024, 2025, at - timedelta(hours=1))
    data = cache.to_json()
    data["calendar"] = "weekdays 09:30-16:00 New York"
    path.write_text(json.dumps(data))
    assert ms.calendar_identity() != data["calendar"]
    found = _recomputed(path, at)
    assert found.is_open is False


@pytest.mark.parametrize(
    "corrupt",
    [
        "{{{",
        "[]",
        '{"version": 1}',
        "not json at all",
        "",
    ],
)
def test_a_corrupt_cache_falls_back_to_the_calendar(corrupt, tmp_path):
    path = tmp_path / "nyse_sessions.json"
    path.write_text(corrupt)
    _recomputed(path, datetime(2024, 7, 2, 15, 0, tzinfo=UTC))


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["sessions"].reverse(),  # out of order
        lambda d: d["sessions"].__setitem__(3, d["sessions"][3][::-1]),  # close before open
        lambda d: d["sessions"].__setitem__(0, ["2024-01-02T14:30:00", "2024-01-02T21:00:00"]),
        lambda d: d.__setitem__("first_year", "2024"),
        lambda d: d.__setitem__("last_year", 2023),
        lambda d: d.__setitem__("version", 99),
        lambda d: d["sessions"].append(["2026-01-02T14:30:00+00:00", "2026-01-02T21:00:00+00:00"]),
        lambda d: d.__setitem__("sessions", []),
    ],
    ids=[
        "reversed",
        "close-before-open",
        "naive-times",
        "year-a-string",
        "years-reversed",
        "other-version",
        "session-outside-its-years",
        "no-sessions",
    ],
)
def test_an_invalid_cache_falls_back_to_the_calendar(change, tmp_path):
    at = datetime(2024, 7, 2, 15, 0, tzinfo=UTC)
    path = tmp_path / "nyse_sessions.json"
    data = ms.SessionCache.compute(2024, 2025, at - timedelta(hours=1)).to_json()
    change(data)
    path.write_text(json.dumps(data))
    assert ms.SessionCache.read(path) is None
    _recomputed(path, at)


@pytest.mark.parametrize(
    "instant,years",
    [
        ("2026-03-02 15:00Z", (2024, 2025)),  # after the cache's years
        ("2023-07-03 15:00Z", (2024, 2025)),  # before them
        ("2024-12-31 21:30Z", (2024, 2024)),  # inside, but the next open is past its end
        ("2024-12-31 15:00Z", (2024, 2024)),  # the last session open: the next open is past it
    ],
)
def test_a_cache_not_covering_now_falls_back_to_the_calendar(instant, years, tmp_path):
    at = pd.Timestamp(instant).to_pydatetime()
    path = tmp_path / "nyse_sessions.json"
    ms.SessionCache.compute(*years, at - timedelta(hours=1)).write(path)
    assert ms.SessionCache.read(path).position(ms.to_ns(at)) is None
    _recomputed(path, at)


def test_the_cache_is_replaced_by_a_rename_never_rewritten_in_place(tmp_path):
    """Atomic write: the new cache is a new file renamed over the old one (a reader that opened
    the old one reads it whole), and no temporary file is left behind."""
    at = datetime(2024, 7, 2, 15, 0, tzinfo=UTC)
    path = tmp_path / "nyse_sessions.json"
    ms.SessionCache.compute(2024, 2025, at - timedelta(days=8)).write(path)  # stale
    old_text = path.read_text()
    with open(path, encoding="utf-8") as reader:
        inode = os.fstat(reader.fileno()).st_ino
        _recomputed(path, at)
        assert reader.read() == old_text
    assert path.stat().st_ino != inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nyse_sessions.json"]


def test_an_unwritable_cache_still_answers_from_the_calendar(tmp_path):
    at = datetime(2024, 7, 3, 17, 30, tzinfo=UTC)
    path = tmp_path / "no-such-folder" / "nyse_sessions.json"
    found = ms.session_position(at, path)
    assert _as_cached(found) == _as_calendar(at)
    assert not path.parent.exists()


def test_status_and_the_risk_manager_read_one_risk_state(tmp_path):
    """RiskManager writes and reads data/risk_state.json through live_state.RiskState, which
    status reads too: a halt set by the one is seen by the other."""
    home = C.paths(tmp_path).ensure()
    risk = rm.RiskManager(state_path=home.risk_state_file, home=home.home, alerts=False)
    at = pd.Timestamp("2022-03-10T20:00:00Z")
    risk.halt("drawdown 21% >= 20%", at)
    state = live_state.RiskState.read(home.risk_state_file)
    assert state == live_state.RiskState(True, "drawdown 21% >= 20%", at.isoformat(), None)
    reloaded = rm.RiskManager(state_path=home.risk_state_file, home=home.home, alerts=False)
    assert reloaded.halted and reloaded.halted_at == at
