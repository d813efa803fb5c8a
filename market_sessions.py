"""NYSE sessions: the schedule, where an instant stands against it, and a cached copy on disk.

The schedule of a calendar year comes from pandas_market_calendars (holidays, closures, early
closes at 13:00 New York) when installed, else Monday-Friday 09:30-16:00 New York; both are
imported only when a year is computed. `data_validation.market_clock` (the loop, the paper
broker) and `main.py status` locate an instant with the same `locate`.

The cache (`data/nyse_sessions.json`, `Paths.session_cache_file`) lets `status` answer without
pandas. Invariants: it is written atomically (atomic_io); it holds whole UTC years
[first_year, last_year] computed by `year_sessions`, and answers only for an instant inside them
whose next open and close it holds; it is used only while it names the calendar installed now
(the package's file and its mtime, so an upgrade invalidates it) and is younger than
CACHE_MAX_AGE_S. Anything else (missing, corrupt, stale, not covering) is recomputed from the
calendar and rewritten: the cache never answers differently from the calendar.

Times are UTC nanoseconds since the epoch (ints), as pandas stores them.
"""

from __future__ import annotations

import bisect
import functools
import importlib.util
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from atomic_io import atomic_write_text

log = logging.getLogger(__name__)

NEW_YORK = "America/New_York"
CACHE_VERSION = 1
#: A cache older than this is recomputed (a week: a closure announced since is picked up).
CACHE_MAX_AGE_S = 7 * 86_400.0
#: No NYSE session is longer than this (the regular one is 6 h 30 min).
_MAX_SESSION_NS = 12 * 3_600 * 10**9
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_WEEKDAYS = "weekdays 09:30-16:00 New York"


@dataclass(frozen=True)
class SessionPosition:
    """Where an instant stands against the sessions (UTC ns). `next_open`: the next session's
    open after the instant (the current one's when before it); `next_close`: the close of the
    session in progress, else of the next one; `session_open`: the open of the session in
    progress, None when closed."""

    is_open: bool
    next_open: int
    next_close: int
    session_open: int | None


def locate(opens: Sequence[int], closes: Sequence[int], t: int) -> SessionPosition | None:
    """Where `t` stands against sessions `opens[k]`..`closes[k]` (sorted); None when the
    sessions end before its next open or close."""
    i = bisect.bisect_right(closes, t)  # first session whose close is after t
    if i >= len(closes):
        return None
    is_open = opens[i] <= t
    following = i + 1 if is_open else i
    if following >= len(opens):
        return None
    return SessionPosition(
        is_open=is_open,
        next_open=opens[following],
        next_close=closes[i],
        session_open=opens[i] if is_open else None,
    )


def to_ns(at: datetime) -> int:
    """A tz-aware datetime as UTC ns since the epoch (microsecond precision)."""
    if at.tzinfo is None:
        raise ValueError(f"needs a timezone-aware time, got {at}")
    return (at - _EPOCH) // timedelta(microseconds=1) * 1_000


def utc(ns: int) -> datetime:
    """UTC ns since the epoch as a tz-aware datetime (to the microsecond)."""
    return _EPOCH + timedelta(microseconds=ns // 1_000)


# --- The calendar ---------------------------------------------------------------------------------
def calendar_identity() -> str:
    """The calendar `year_sessions` uses now, found without importing it: pandas_market_calendars
    by its file and mtime (an upgrade changes it), else the weekday rule."""
    spec = importlib.util.find_spec("pandas_market_calendars")
    if spec is None or spec.origin is None:
        return _WEEKDAYS
    try:
        mtime = os.stat(spec.origin).st_mtime_ns
    except OSError:
        return _WEEKDAYS
    return f"pandas_market_calendars {spec.origin} {mtime}"


@functools.lru_cache(maxsize=64)
def year_sessions(year: int) -> tuple[tuple[int, ...], tuple[int, ...], str]:
    """(opens, closes, calendar) of a calendar year's NYSE sessions, UTC ns, in order; the
    calendar as `calendar_identity` names it. Imports pandas (and the calendar)."""
    import warnings

    import pandas as pd

    start, end = pd.Timestamp(f"{year}-01-01"), pd.Timestamp(f"{year}-12-31")
    try:
        import pandas_market_calendars as mcal
    except ImportError:
        days = pd.bdate_range(start, end)
        opens = (days + pd.Timedelta(hours=9, minutes=30)).tz_localize(NEW_YORK).tz_convert("UTC")
        closes = (days + pd.Timedelta(hours=16)).tz_localize(NEW_YORK).tz_convert("UTC")
        calendar = _WEEKDAYS
    else:
        with warnings.catch_warnings():  # its own pandas deprecation warnings, not ours
            warnings.simplefilter("ignore")
            sched = mcal.get_calendar("NYSE").schedule(start_date=start, end_date=end)
        opens = pd.DatetimeIndex(sched["market_open"]).tz_convert("UTC")
        closes = pd.DatetimeIndex(sched["market_close"]).tz_convert("UTC")
        calendar = calendar_identity()
    return (
        tuple(opens.as_unit("ns").asi8.tolist()),
        tuple(closes.as_unit("ns").asi8.tolist()),
        calendar,
    )


@functools.lru_cache(maxsize=16)
def years_sessions(first_year: int, last_year: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(opens, closes) of the years first_year..last_year, UTC ns, in order."""
    years = [year_sessions(y) for y in range(first_year, last_year + 1)]
    return (
        tuple(t for opens, _, _ in years for t in opens),
        tuple(t for _, closes, _ in years for t in closes),
    )


# --- The cache ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SessionCache:
    """data/nyse_sessions.json: the sessions of whole UTC years first_year..last_year from
    `calendar` (as `calendar_identity` names it), written at `written_at` (UTC)."""

    calendar: str
    first_year: int
    last_year: int
    written_at: datetime
    opens: tuple[int, ...]  # UTC ns
    closes: tuple[int, ...]  # UTC ns

    def __post_init__(self) -> None:
        if self.first_year > self.last_year:
            raise ValueError(f"years {self.first_year}..{self.last_year} are reversed")
        if not self.opens or len(self.opens) != len(self.closes):
            raise ValueError(f"{len(self.opens)} opens but {len(self.closes)} closes")
        lo = to_ns(datetime(self.first_year, 1, 1, tzinfo=UTC))
        hi = to_ns(datetime(self.last_year + 1, 1, 1, tzinfo=UTC))
        previous_close = lo - 1
        for k, (o, c) in enumerate(zip(self.opens, self.closes, strict=True)):
            if not (previous_close < o < c <= o + _MAX_SESSION_NS and c < hi):
                raise ValueError(f"session {k} ({utc(o)} to {utc(c)}) is out of order or range")
            previous_close = c

    def position(self, t: int) -> SessionPosition | None:
        """Where `t` (UTC ns) stands; None when this cache cannot tell (outside its years, or
        its sessions end before the answer)."""
        if t < to_ns(datetime(self.first_year, 1, 1, tzinfo=UTC)):
            return None
        return locate(self.opens, self.closes, t)

    def current(self, now: datetime, calendar: str) -> bool:
        """Still to be used at `now` with `calendar` installed: the same calendar, and written
        less than CACHE_MAX_AGE_S before now (never after it)."""
        age_s = (now - self.written_at).total_seconds()
        return self.calendar == calendar and 0 <= age_s < CACHE_MAX_AGE_S

    def to_json(self) -> dict[str, Any]:
        return {
            "version": CACHE_VERSION,
            "calendar": self.calendar,
            "first_year": self.first_year,
            "last_year": self.last_year,
            "written_at": self.written_at.isoformat(),
            "sessions": [
                [utc(o).isoformat(), utc(c).isoformat()]
                for o, c in zip(self.opens, self.closes, strict=True)
            ],
        }

    @classmethod
    def from_json(cls, data: Any) -> SessionCache:
        """ValueError/TypeError/KeyError for anything but a valid cache of this version."""
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            raise ValueError(f"not a session cache of version {CACHE_VERSION}")
        for key in ("first_year", "last_year"):
            if type(data[key]) is not int:
                raise TypeError(f"{key} is not an integer")
        written_at = datetime.fromisoformat(data["written_at"])
        sessions = [
            (to_ns(datetime.fromisoformat(o)), to_ns(datetime.fromisoformat(c)))
            for o, c in data["sessions"]
        ]
        return cls(
            calendar=str(data["calendar"]),
            first_year=data["first_year"],
            last_year=data["last_year"],
            written_at=written_at.astimezone(UTC),
            opens=tuple(o for o, _ in sessions),
            closes=tuple(c for _, c in sessions),
        )

    @classmethod
    def read(cls, path: Path) -> SessionCache | None:
        """The cache at `path`; None when absent or unreadable (it is recomputed)."""
        try:
            return cls.from_json(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as exc:
            log.warning("session cache %s is unusable (%s); recomputing it", path, exc)
            return None

    @classmethod
    def compute(cls, first_year: int, last_year: int, now: datetime) -> SessionCache:
        """From the calendar (imports pandas): the years first_year..last_year."""
        calendars = {year_sessions(y)[2] for y in range(first_year, last_year + 1)}
        opens, closes = years_sessions(first_year, last_year)
        return cls(" + ".join(sorted(calendars)), first_year, last_year, now, opens, closes)

    def write(self, path: Path) -> None:
        """Atomically (temp, fsync, rename): a reader sees the old cache or the new one."""
        atomic_write_text(path, json.dumps(self.to_json(), separators=(",", ":")) + "\n")


def session_position(now: datetime, cache_path: Path) -> SessionPosition:
    """Where `now` (tz-aware) stands against the NYSE sessions: from the cache at `cache_path`
    when it is current and covers `now`, else from the calendar, which rewrites the cache (the
    years of `now` and the next, as `data_validation.market_clock` uses). The cache is written
    only into an existing folder (a home never started gets none); one that cannot be written
    is logged and skipped."""
    t = to_ns(now)
    cached = SessionCache.read(cache_path)
    if cached is not None and cached.current(now, calendar_identity()):
        found = cached.position(t)
        if found is not None:
            return found
    year = utc(t).year
    fresh = SessionCache.compute(year, year + 1, now.astimezone(UTC))
    try:
        if cache_path.parent.is_dir():
            fresh.write(cache_path)
    except OSError as exc:
        log.warning("cannot write the session cache %s (%s)", cache_path, exc)
    found = fresh.position(t)
    if found is None:  # two whole years always hold the next open after an instant in the first
        raise RuntimeError(f"the NYSE calendar has no session after {now}")
    return found


__all__ = [
    "CACHE_MAX_AGE_S",
    "NEW_YORK",
    "SessionCache",
    "SessionPosition",
    "calendar_identity",
    "locate",
    "session_position",
    "to_ns",
    "utc",
    "year_sessions",
    "years_sessions",
]
