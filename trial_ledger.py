"""The trial ledger: every backtest ever run in a trading home, so a Sharpe is deflated by the
number of things tried rather than by a guess.

File: `<results>/trials.jsonl`, one JSON record per line, append-only. Each append locks the
file (flock), writes one whole line and fsyncs it, so a crash leaves at most one torn last line,
which readers skip (and `count` reports). Nothing is ever rewritten.

What counts as a trial (Bailey & López de Prado 2014): a distinct configuration evaluated on the
same pair and the same dates. Re-running an identical backtest (same kind, source, configuration
hash) gives the identical result and is not another trial; anything else that differs is.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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

    @property
    def key(self) -> tuple[str, str, str]:
        """What makes it a distinct trial within one pair and date range."""
        return self.kind, self.source, self.config_hash

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
        )


@dataclass(frozen=True)
class TrialCount:
    """The distinct trials on one pair, date range and kind, for the deflated Sharpe."""

    trials: int
    sharpe_variance: float  # variance (ddof=1) of their annualised Sharpes; 0 below 2 trials

    @classmethod
    def of(cls, sharpes: Sequence[float]) -> TrialCount:
        finite = [s for s in sharpes if s is not None and math.isfinite(s)]
        n = len(sharpes)
        if len(finite) < 2:
            return cls(max(n, 1), 0.0)
        mean = sum(finite) / len(finite)
        var = sum((s - mean) ** 2 for s in finite) / (len(finite) - 1)
        return cls(max(n, 1), var)


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 (hex, 16 chars) of a JSON-able configuration, independent of key order."""
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class TrialLedger:
    """`results/trials.jsonl` of one trading home."""

    def __init__(self, results_dir: str | os.PathLike[str]):
        self.path = Path(results_dir) / LEDGER_FILE

    def record(self, trial: Trial) -> None:
        """Append one trial: a whole line, fsynced, under an exclusive lock on the file itself
        (concurrent backtests in one home append whole lines, never interleaved)."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(trial.to_json(), sort_keys=True, allow_nan=False) + "\n"
        with open(self.path, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                fh.seek(0, os.SEEK_END)
                if fh.tell() > 0:
                    fh.seek(-1, os.SEEK_END)
                    if fh.read(1) != b"\n":  # close a torn line left by a crash; readers skip it
                        fh.write(b"\n")
                fh.write(line.encode("utf-8"))
                fh.flush()
                os.fsync(fh.fileno())
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def __iter__(self) -> Iterator[Trial]:
        """Every readable trial, oldest first; torn or foreign lines are skipped."""
        yield from self.read()[0]

    def read(self) -> tuple[list[Trial], int]:
        """(every readable trial, oldest first; the number of lines that are not a trial: a torn
        last line after a crash, or an edit by hand)."""
        try:
            lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return [], 0
        trials: list[Trial] = []
        unreadable = 0
        for line in lines:
            if not line.strip():
                continue
            try:
                trials.append(Trial.from_json(json.loads(line)))
            except (ValueError, KeyError, TypeError, IndexError):
                unreadable += 1
        return trials, unreadable

    def count(
        self, pair: Sequence[str], start: str, end: str, kind: str, *, extra: Trial | None = None
    ) -> TrialCount:
        """Distinct trials of `kind` on `pair` over exactly start..end (`extra`, the run being
        reported, included whether or not it is recorded yet). The last record of a key wins."""
        latest: dict[tuple[str, str, str], float | None] = {}
        for trial in [*self, *([extra] if extra else [])]:
            if (
                trial.kind == kind
                and list(trial.pair) == list(pair)
                and (trial.start, trial.end) == (start, end)
            ):
                latest[trial.key] = trial.sharpe
        return TrialCount.of([s if s is not None else math.nan for s in latest.values()])
