"""The trial ledger: every backtest ever run in a trading home, so a Sharpe is deflated by the
number of things tried rather than by a guess.

File: `<results>/trials.jsonl`, one JSON record per line, append-only. Each append locks the
file (flock), writes one whole line and fsyncs it, so a crash leaves at most one torn last line,
which readers skip (and `count` reports). Nothing is ever rewritten or deleted: `prune` appends a
`Restart` record that says which runs it stops counting and why (`main.py trials prune`).

What counts as a trial (Bailey & López de Prado 2014): a distinct strategy evaluated on the same
pair and the same dates, and a strategy's identity is what it earned. A trial is keyed by the
fingerprint of its daily returns (`returns_fingerprint`: SHA-256 of the returns rounded to 1e-12,
with the pair and dates), so two runs whose returns are identical bar for bar are one trial
whatever else differs (a setting that changes no trade, a re-run, a renamed signal file), and any
run whose returns differ is another. Records written before fingerprints (no `fingerprint` key)
keep their old identity: kind, source and configuration hash.

Each trial also keeps its returns' moments (`n_obs`, `skew`, `kurtosis`, with `sharpe`), so its
deflated Sharpe can be recomputed over the trials on record at any later time without its returns
(`performance_stats.deflated_sharpe_from_moments`); `TrialCount.as_of` says when a count was taken.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    from performance_stats import SharpeMoments

LEDGER_FILE = "trials.jsonl"


@dataclass(frozen=True)
class Trial:
    """One backtest of one strategy on one pair and date range.

    kind: what was traded ("strategy", or a benchmark such as "zscore_rule"); source: where its
    signals came from ("model:<versions>", "signals:<sha256>", "rule:<name>"); config_hash:
    SHA-256 of everything else that decides its trades; sharpe: annualised Sharpe of its daily
    returns (None when undefined)."""

    run_id: str
    recorded_at: str  # UTC, ISO 8601
    pair: tuple[str, str]
    start: str  # first bar, YYYY-MM-DD
    end: str  # last bar, YYYY-MM-DD
    bars: int
    kind: str
    source: str
    config_hash: str
    sharpe: float | None
    #: `returns_fingerprint` of its daily returns; None in records written before it existed.
    fingerprint: str | None = None
    #: The returns' sample size, skew and non-excess kurtosis (None: degenerate or old record).
    n_obs: int | None = None
    skew: float | None = None
    kurtosis: float | None = None

    @classmethod
    def of_returns(
        cls,
        returns: Any,
        *,
        run_id: str,
        recorded_at: str,
        pair: tuple[str, str],
        start: str,
        end: str,
        kind: str,
        source: str,
        config_hash: str,
    ) -> Trial:
        """The trial of one run from its daily returns (one per bar, fractions): Sharpe, moments
        and fingerprint computed here, so every caller keys and deflates trials the same way."""
        import numpy as np

        import performance_stats as pst

        x = np.asarray(returns, dtype="float64")
        m = pst.sharpe_moments(x)
        sharpe = m.sharpe if m is not None else pst.sharpe_ratio(x)
        return cls(
            run_id=run_id,
            recorded_at=recorded_at,
            pair=(pair[0], pair[1]),
            start=start,
            end=end,
            bars=int(x.size),
            kind=kind,
            source=source,
            config_hash=config_hash,
            sharpe=sharpe if math.isfinite(sharpe) else None,
            fingerprint=returns_fingerprint(x, pair, start, end),
            n_obs=None if m is None else m.n_obs,
            skew=None if m is None else m.skew,
            kurtosis=None if m is None else m.kurtosis,
        )

    @property
    def key(self) -> tuple[str, ...]:
        """What makes it a distinct trial within one pair, date range and kind: its returns'
        fingerprint (old records without one: kind, source and configuration hash)."""
        if self.fingerprint:
            return ("returns", self.fingerprint)
        return self.kind, self.source, self.config_hash

    @property
    def moments(self) -> SharpeMoments | None:
        """What its DSR needs, or None (degenerate returns, or a record older than moments)."""
        if None in (self.sharpe, self.n_obs, self.skew, self.kurtosis):
            return None
        from performance_stats import SharpeMoments

        return SharpeMoments(self.n_obs, self.sharpe, self.skew, self.kurtosis)  # type: ignore[arg-type]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["pair"] = list(self.pair)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Trial:
        sharpe = data.get("sharpe")
        return cls(
            run_id=str(data["run_id"]),
            recorded_at=str(data["recorded_at"]),
            pair=(str(data["pair"][0]), str(data["pair"][1])),
            start=str(data["start"]),
            end=str(data["end"]),
            bars=int(data["bars"]),
            kind=str(data["kind"]),
            source=str(data["source"]),
            config_hash=str(data["config_hash"]),
            sharpe=None if sharpe is None else float(sharpe),
            fingerprint=None if data.get("fingerprint") is None else str(data["fingerprint"]),
            n_obs=None if data.get("n_obs") is None else int(data["n_obs"]),
            skew=None if data.get("skew") is None else float(data["skew"]),
            kurtosis=None if data.get("kurtosis") is None else float(data["kurtosis"]),
        )


def returns_fingerprint(returns: Any, pair: Sequence[str], start: str, end: str) -> str:
    """SHA-256 (hex, 16 chars) of a run's daily returns rounded to 1e-12 (-0.0 as 0.0, every NaN
    alike), its pair and its dates: equal exactly when the runs earned the same bar for bar."""
    import numpy as np

    x = np.round(np.asarray(returns, dtype="float64"), 12) + 0.0
    x = np.where(np.isnan(x), np.nan, x).astype("<f8")
    head = json.dumps([list(pair), start, end, int(x.size)]).encode("utf-8")
    return hashlib.sha256(head + x.tobytes()).hexdigest()[:16]


@dataclass(frozen=True)
class Restart:
    """An audit record: from here on, the runs recorded before `since` (a UTC date; None: every
    run so far) are no longer counted. `dropped_runs` lists them; nothing is deleted."""

    recorded_at: str  # UTC, ISO 8601
    since: str | None
    reason: str
    dropped: int
    dropped_runs: tuple[str, ...]

    def drops(self, trial: Trial) -> bool:
        """Whether this restart stops counting `trial` (one recorded before it in the file)."""
        return self.since is None or trial.recorded_at[:10] < self.since

    def to_json(self) -> dict[str, Any]:
        return {"record": "restart", **asdict(self), "dropped_runs": list(self.dropped_runs)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Restart:
        since = data["since"]
        return cls(
            recorded_at=str(data["recorded_at"]),
            since=None if since is None else str(since),
            reason=str(data["reason"]),
            dropped=int(data["dropped"]),
            dropped_runs=tuple(str(r) for r in data["dropped_runs"]),
        )


@dataclass(frozen=True)
class TrialCount:
    """The distinct trials on one pair, date range and kind, for the deflated Sharpe."""

    trials: int
    sharpe_variance: float  # variance (ddof=1) of their annualised Sharpes; 0 below 2 trials
    #: When the ledger was counted (UTC, ISO 8601, minutes); None for a count not from a ledger.
    as_of: str | None = None

    @classmethod
    def of(cls, sharpes: Sequence[float], *, as_of: str | None = None) -> TrialCount:
        finite = [s for s in sharpes if s is not None and math.isfinite(s)]
        n = len(sharpes)
        if len(finite) < 2:
            return cls(max(n, 1), 0.0, as_of)
        mean = sum(finite) / len(finite)
        var = sum((s - mean) ** 2 for s in finite) / (len(finite) - 1)
        return cls(max(n, 1), var, as_of)

    def describe(self) -> str:
        """ "deflated over N trials as of DATE": what a printed DSR depends on."""
        return deflated_over(self.trials, self.as_of)


def deflated_over(trials: int, as_of: str | None) -> str:
    """The words printed next to every DSR; `as_of` a UTC ISO time (or None: not recorded)."""
    when = f" as of {as_of[:16].replace('T', ' ')} UTC" if as_of else ""
    return f"deflated over {trials:,} trial{'s' if trials != 1 else ''}{when}"


def utc_now() -> str:
    """The current UTC time as the ledger writes it (ISO 8601, seconds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 (hex, 16 chars) of a JSON-able configuration, independent of key order."""
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class TrialLedger:
    """`results/trials.jsonl` of one trading home."""

    def __init__(self, results_dir: str | os.PathLike[str]):
        self.path = Path(results_dir) / LEDGER_FILE

    @contextlib.contextmanager
    def _locked(self) -> Iterator[BinaryIO]:
        """The file opened for appending under an exclusive lock on the file itself (concurrent
        runs in one home append whole lines, never interleaved)."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield fh
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    @staticmethod
    def _append(fh: BinaryIO, record: Mapping[str, Any]) -> None:
        """One whole line, fsynced; a torn line left by a crash is closed first (readers skip
        it)."""
        line = json.dumps(record, sort_keys=True, allow_nan=False) + "\n"
        fh.seek(0, os.SEEK_END)
        if fh.tell() > 0:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
        fh.write(line.encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())

    def record(self, trial: Trial) -> None:
        """Append one trial."""
        with self._locked() as fh:
            self._append(fh, trial.to_json())

    def __iter__(self) -> Iterator[Trial]:
        """Every counted trial, oldest first; torn or foreign lines are skipped."""
        yield from self.read()[0]

    def entries(self) -> tuple[list[Trial | Restart], int]:
        """(every trial and restart record in file order; the number of lines that are neither:
        a torn last line after a crash, or an edit by hand)."""
        try:
            lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return [], 0
        except OSError as exc:
            from error_handling import DataError

            raise DataError(
                f"the trial ledger {self.path} cannot be read ({exc.strerror or exc}); it must be "
                "a file"
            ) from None
        entries: list[Trial | Restart] = []
        unreadable = 0
        for line in lines:
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                if data.get("record") == "restart":
                    entries.append(Restart.from_json(data))
                else:
                    entries.append(Trial.from_json(data))
            except (ValueError, KeyError, TypeError, IndexError, AttributeError):
                unreadable += 1
        return entries, unreadable

    def read(self) -> tuple[list[Trial], int]:
        """(the trials still counted, oldest first: those no later restart dropped; the number of
        unreadable lines)."""
        entries, unreadable = self.entries()
        return counted_trials(entries), unreadable

    def count(
        self,
        pair: Sequence[str],
        start: str,
        end: str,
        kind: str,
        *,
        extra: Trial | None = None,
        now: str | None = None,
    ) -> TrialCount:
        """Distinct trials of `kind` on `pair` over exactly start..end (`extra`, the run being
        reported, included whether or not it is recorded yet), as of `now` (default: now)."""
        trials = [*self, *([extra] if extra else [])]
        return count_trials(trials, [tuple(pair)], start, end, kind, now=now or utc_now())

    def prune(self, since: str | None, reason: str, *, now: str | None = None) -> Restart | None:
        """Stop counting the runs recorded before `since` (a YYYY-MM-DD UTC date; None: all so
        far) by appending a `Restart` that lists them; None (nothing written) when none is
        counted. Read and written under the file's lock, so no run slips between the two."""
        with self._locked() as fh:
            trials = counted_trials(self.entries()[0])
            dropped = [t for t in trials if since is None or t.recorded_at[:10] < since]
            if not dropped:
                return None
            restart = Restart(
                recorded_at=now or utc_now(),
                since=since,
                reason=reason,
                dropped=len(dropped),
                dropped_runs=tuple(dict.fromkeys(t.run_id for t in dropped)),
            )
            self._append(fh, restart.to_json())
        return restart


def counted_trials(entries: Iterable[Trial | Restart]) -> list[Trial]:
    """The trials of `entries` (file order) that no later `Restart` dropped."""
    counted: list[Trial] = []
    for e in entries:
        if isinstance(e, Restart):
            counted = [t for t in counted if not e.drops(t)]
        else:
            counted.append(e)
    return counted


def count_trials(
    trials: Iterable[Trial],
    pairs: Iterable[Sequence[str]],
    start: str,
    end: str,
    kind: str,
    *,
    now: str | None = None,
) -> TrialCount:
    """Distinct trials of `kind` on any of `pairs` over exactly start..end (the last record of a
    key wins its Sharpe), with the variance of their Sharpes, as of `now`."""
    wanted = {tuple(p) for p in pairs}
    latest: dict[tuple[Any, ...], float | None] = {}
    for t in trials:
        if t.kind == kind and t.pair in wanted and (t.start, t.end) == (start, end):
            latest[(t.pair, *t.key)] = t.sharpe
    sharpes = [s if s is not None else math.nan for s in latest.values()]
    return replace(TrialCount.of(sharpes), as_of=now)


# --- `main.py trials`: the ledger listed, each run's DSR over the trials counted now ------------
#: Kinds whose trials deflate over a whole universe (every pair a scan recorded), not one pair.
UNIVERSE_KINDS = frozenset({"scan"})


@dataclass(frozen=True)
class TrialRow:
    """One run's trial as `trials list` shows it: its number among the distinct trials of its
    group (None: no longer counted) and its DSR over the trials counted now (None: undefined or
    a record without moments)."""

    trial: Trial
    number: int | None
    count: TrialCount | None
    dsr: float | None


@dataclass(frozen=True)
class TrialGroup:
    """The runs of one kind on one pair and date range."""

    pair: tuple[str, str]
    start: str
    end: str
    kind: str
    rows: tuple[TrialRow, ...]


def _universe(trial: Trial, counted: Sequence[Trial]) -> set[tuple[str, str]]:
    """The pairs `trial` is deflated with: its scan's pairs for a universe kind, else its own."""
    if trial.kind not in UNIVERSE_KINDS:
        return {trial.pair}
    return {t.pair for t in counted if t.run_id == trial.run_id and t.kind == trial.kind}


def trial_groups(
    entries: Sequence[Trial | Restart],
    *,
    now: str,
    include_dropped: bool = False,
    pair: tuple[str, str] | None = None,
    since: str | None = None,
) -> list[TrialGroup]:
    """The ledger's runs by (pair, dates, kind), each with its DSR recomputed over the trials
    counted `now` (as the run's own command counts them). `pair`, `since` (recorded on or after
    that UTC date) only filter what is shown; the counts always use every counted trial."""
    import performance_stats as pst

    counted = counted_trials(entries)
    live = {id(t) for t in counted}
    trials = [e for e in entries if isinstance(e, Trial)]
    counts: dict[Any, TrialCount] = {}
    groups: dict[tuple[Any, ...], list[TrialRow]] = {}
    numbers: dict[tuple[Any, ...], dict[tuple[str, ...], int]] = {}
    for t in trials:
        if id(t) not in live and not include_dropped:
            continue
        if pair is not None and t.pair != pair:
            continue
        if since is not None and t.recorded_at[:10] < since:
            continue
        group = (t.pair, t.start, t.end, t.kind)
        count = dsr = number = None
        if id(t) in live:
            universe = frozenset(_universe(t, counted))
            key = (universe, t.start, t.end, t.kind)
            if key not in counts:
                counts[key] = count_trials(counted, universe, t.start, t.end, t.kind, now=now)
            count = counts[key]
            m = t.moments
            if m is not None:
                value = pst.deflated_sharpe_from_moments(m, count.trials, count.sharpe_variance)
                dsr = value if math.isfinite(value) else None
            seen = numbers.setdefault(group, {})
            number = seen.setdefault(t.key, len(seen) + 1)
        groups.setdefault(group, []).append(TrialRow(t, number, count, dsr))
    return [
        TrialGroup(pair=g[0], start=g[1], end=g[2], kind=g[3], rows=tuple(rows))
        for g, rows in sorted(groups.items())
    ]


def _cell(value: float | None, fmt: str) -> str:
    return "—" if value is None or not math.isfinite(value) else format(value, fmt)


def render_trials(
    ledger: TrialLedger,
    *,
    now: str,
    include_dropped: bool = False,
    pair: tuple[str, str] | None = None,
    since: str | None = None,
) -> list[str]:
    """`main.py trials list`: a headline, then per pair, dates and kind a line saying what its
    DSRs are deflated over and one row per run; `include_dropped` adds the dropped runs and the
    restart records."""
    entries, unreadable = ledger.entries()
    trials = [e for e in entries if isinstance(e, Trial)]
    restarts = [e for e in entries if isinstance(e, Restart)]
    counted = len(counted_trials(entries))
    lines = [
        f"{ledger.path}: {len(trials):,} trial record(s), {counted:,} counted, "
        f"{len(trials) - counted:,} dropped by {len(restarts)} restart(s)"
        + (f"; {unreadable} unreadable line(s) skipped" if unreadable else "")
    ]
    groups = trial_groups(entries, now=now, include_dropped=include_dropped, pair=pair, since=since)
    if not groups:
        lines.append("no trials to show" + (" (none recorded yet)" if not trials else ""))
    header = ("trial", "run", "recorded (UTC)", "source", "Sharpe", "DSR now")
    for g in groups:
        live = [r for r in g.rows if r.count is not None]
        lines.append("")
        what = f"{g.pair[0]}/{g.pair[1]} {g.start}..{g.end} {g.kind}"
        if live:
            c = live[-1].count
            assert c is not None
            scope = " (the scan's universe)" if g.kind in UNIVERSE_KINDS else ""
            lines.append(
                f"{what}: DSR {c.describe()}{scope}, Sharpe variance {c.sharpe_variance:.4f}"
            )
        else:
            lines.append(f"{what}: no longer counted")
        table = [header] + [
            (
                "dropped" if r.number is None else str(r.number),
                r.trial.run_id,
                r.trial.recorded_at[:16].replace("T", " "),
                r.trial.source,
                _cell(r.trial.sharpe, ".2f"),
                _cell(r.dsr, ".3f"),
            )
            for r in g.rows
        ]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        for row in table:
            cells = [
                c.rjust(w) if i >= 4 else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ]
            lines.append("  " + "  ".join(cells).rstrip())
    if include_dropped and restarts:
        lines.append("")
        for r in restarts:
            before = f"recorded before {r.since}" if r.since else "every run before it"
            lines.append(
                f"restart {r.recorded_at[:16].replace('T', ' ')} UTC: stopped counting "
                f"{r.dropped} trial record(s) ({before}) of {len(r.dropped_runs)} run(s): "
                f"{r.reason}"
            )
    if any(r.trial.moments is None and r.count is not None for g in groups for r in g.rows):
        lines.append("")
        lines.append(
            "DSR now —: the Sharpe is undefined, or the record predates the moments the DSR needs "
            "(run it again to record them)"
        )
    return lines


def trials_command(
    ledger: TrialLedger,
    action: str,
    *,
    since: str | None = None,
    everything: bool = False,
    reason: str | None = None,
    pair: str | None = None,
    now: str | None = None,
) -> list[str]:
    """`main.py trials [list|prune]`, its options checked here (ConfigurationError, one line,
    before anything is written): the lines to print."""
    from error_handling import ConfigurationError

    now = now or utc_now()
    wanted = None
    if pair is not None:
        legs = [p.strip().upper() for p in pair.split("/")]
        if len(legs) != 2 or not all(legs):
            raise ConfigurationError(f"--pair must be LONG/SHORT, e.g. AAPL/MSFT, not {pair!r}")
        wanted = (legs[0], legs[1])
    if since is not None and since > now[:10]:
        raise ConfigurationError(f"--since {since} is after today ({now[:10]} UTC)")
    if action == "list":
        if reason is not None:
            raise ConfigurationError(
                "--reason is for `trials prune` (it says why counting restarts)"
            )
        return render_trials(ledger, now=now, include_dropped=everything, pair=wanted, since=since)
    if action != "prune":
        raise ConfigurationError(f"trials: unknown action {action!r} (list or prune)")
    if wanted is not None:
        raise ConfigurationError("--pair is for `trials list`: prune restarts the whole ledger")
    if everything == (since is not None):
        raise ConfigurationError(
            "trials prune needs exactly one of --since YYYY-MM-DD (stop counting runs recorded "
            "before that date) and --all (stop counting every run so far)"
        )
    if reason is None or not reason.strip():
        raise ConfigurationError(
            "trials prune needs --reason TEXT: the audit record says why counting restarted"
        )
    ledger.entries()  # an unreadable ledger is refused before anything is written
    restart = ledger.prune(since, " ".join(reason.split()), now=now)
    if restart is None:
        what = f"recorded before {since}" if since else "on record"
        return [f"{ledger.path}: no counted trial {what}; nothing written"]
    return [
        f"{ledger.path}: stopped counting {restart.dropped} trial record(s) of "
        f"{len(restart.dropped_runs)} run(s) "
        + (f"recorded before {since}" if since else "(all so far)")
        + f"; restart recorded at {restart.recorded_at} with the reason and the runs dropped "
        "(`trials list --all` shows them)"
    ]
