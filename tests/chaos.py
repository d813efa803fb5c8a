"""SIGKILL chaos for the paper replay, shared by tests/test_live_trading.py (a CI-sized count, kills
placed by audit records) and bench/bench_chaos.py (50 kills and more, placed by time): kill
`python main.py live --replay` at random points inside its loop, resume it to the end, and measure
what differs from an uninterrupted replay of the same window in a home with the same order tag."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tests.helpers import ROOT


@dataclass
class ChaosReport:
    """What a killed-and-resumed replay ended with, against the uninterrupted one (USD)."""

    kills: int
    starts: int  # `start` records in the audit: one per killed run, plus the final one
    equity_diff: float  # final equity (equity log) minus the reference's
    cash_diff: float  # final cash minus the reference's
    positions_equal: bool
    ids_equal: bool  # the same client order ids, with the same quantities and fills
    doubled_fills: list[str] = field(default_factory=list)  # audited shares > broker's filled
    missing_fills: list[str] = field(default_factory=list)  # audited shares < broker's filled
    chain_ok: bool = True
    final_returncode: int = 0

    @property
    def clean(self) -> bool:
        return (
            abs(self.equity_diff) < 0.005
            and abs(self.cash_diff) < 0.005
            and self.positions_equal
            and self.ids_equal
            and not self.doubled_fills
            and not self.missing_fills
            and self.chain_ok
            and self.final_returncode == 0
        )


def _env(home: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TICKER_LONG", "TICKER_SHORT")}
    env.update(
        {"TRADING_HOME": str(home.home), "PYTHONDONTWRITEBYTECODE": "1", "ALERT_WEBHOOK_URL": ""}
    )
    return env


def _lines(path: Any) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _state(home: Any) -> dict[str, Any]:
    state = json.loads(home.paper_broker_file.read_text())
    return {**state, **state["ledger"]}


def _last_equity(home: Any) -> float:
    last = home.data_dir.joinpath("equity_paper.csv").read_text().strip().splitlines()[-1]
    return float(last.split(",")[1])


def kill_and_resume(
    home: Any,
    reference: Any,
    window: tuple[str, str],
    kills: int,
    seed: int,
    after_steps: int | None = None,
) -> ChaosReport:
    """Kill the replay of `window` in `home` `kills` times, run it to the end, and compare with
    `reference` (already replayed). Each kill comes after the run's `start` record: a random
    0-0.5 s later, or with `after_steps`, as soon as 1 to `after_steps` (at random) more audit
    records are written, so that every kill lands inside the loop, next to an order, a fill or a
    position change (not in the start-up a time-based kill often hits), and a short window takes
    many kills."""
    import audit_logging

    rng = random.Random(seed)
    done = 0
    for _ in range(3 * kills):  # at most: each run is killed or finishes
        before = _lines(home.audit_log)
        proc = subprocess.Popen(
            [sys.executable, "main.py", "live", "--replay", *window],
            cwd=ROOT,
            env=_env(home),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while _lines(home.audit_log) <= before and time.monotonic() < deadline:
                time.sleep(0.01)
            if after_steps is None:
                time.sleep(rng.uniform(0.0, 0.5))
            else:
                target = before + 1 + rng.randint(1, after_steps)
                while (
                    _lines(home.audit_log) < target
                    and proc.poll() is None
                    and time.monotonic() < deadline
                ):
                    time.sleep(0.002)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        if proc.returncode == 0:
            break  # it finished before the kill
        done += 1
        json.loads(home.positions_file.read_text())  # always parses
        if done >= kills:
            break
    final = subprocess.run(
        [sys.executable, "main.py", "live", "--replay", *window],
        cwd=ROOT,
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=600,
    )
    mine, theirs = _state(home), _state(reference)
    audited: Counter[str] = Counter()
    starts = 0
    for record in audit_logging.AuditLog(home.audit_log).records():
        if record.event == "fill":
            audited[record.payload["client_order_id"]] += record.payload["qty"]
        starts += record.event == "start"
    filled = {cid: o["filled_qty"] for cid, o in mine["orders"].items() if o["filled_qty"]}
    same_orders = sorted(mine["orders"]) == sorted(theirs["orders"]) and all(
        (o["qty"], o["filled_qty"], o["filled_avg_price"])
        == (
            theirs["orders"][cid]["qty"],
            theirs["orders"][cid]["filled_qty"],
            theirs["orders"][cid]["filled_avg_price"],
        )
        for cid, o in mine["orders"].items()
        if cid in theirs["orders"]
    )
    return ChaosReport(
        kills=done,
        starts=starts,
        equity_diff=_last_equity(home) - _last_equity(reference),
        cash_diff=mine["cash"] - theirs["cash"],
        positions_equal={s: p["qty"] for s, p in mine["positions"].items()}
        == {s: p["qty"] for s, p in theirs["positions"].items()},
        ids_equal=same_orders,
        doubled_fills=sorted(c for c in audited if audited[c] > filled.get(c, 0)),
        missing_fills=sorted(c for c in filled if audited[c] < filled[c]),
        chain_ok=audit_logging.verify(home.audit_log).ok,
        final_returncode=final.returncode,
    )


def kill_after_a_fill_before_positions(home: Any, window: tuple[str, str]) -> int:
    """Kill the replay of `window` when the audit log holds a `fill` record that positions.json
    does not (its audit anchor is older): the crash between the journal and the state file.
    Returns the fill's seq."""

    def fill_not_saved(new: list[dict[str, Any]]) -> int | None:
        fills = [r["seq"] for r in new if r["event"] == "fill"]
        return fills[-1] if fills and _anchor(home) < fills[-1] else None

    return kill_when(home, window, fill_not_saved)


def kill_after_borrow_before_positions(home: Any, window: tuple[str, str]) -> int:
    """Kill the replay of `window` after the paper account charged a day's borrow (a new bar's
    quotes) that positions.json does not show, with no fill since it was written. Returns the
    seq of the new bar's `signal` record."""

    def borrow_not_saved(new: list[dict[str, Any]]) -> int | None:
        signals = [r["seq"] for r in new if r["event"] == "signal"]
        if not signals or not home.paper_broker_file.exists():
            return None
        saved = json.loads(home.positions_file.read_text())
        cash = json.loads(home.paper_broker_file.read_text())["ledger"]["cash"]
        return signals[-1] if abs(cash - saved["cash"]) > 0.005 else None

    return kill_when(home, window, borrow_not_saved)


def _anchor(home: Any) -> int:
    saved = json.loads(home.positions_file.read_text())
    return (saved.get("audit_anchor") or {}).get("seq", 0)


def kill_when(home: Any, window: tuple[str, str], moment: Any) -> int:
    """Run the replay of `window`, pause it (SIGSTOP) at each batch of new audit records, and
    SIGKILL it the first time `moment(new records)` returns a seq (else let it go on): a kill
    at a chosen point of the real process, found by looking at its files. Returns that seq."""
    proc = subprocess.Popen(
        [sys.executable, "main.py", "live", "--replay", *window],
        cwd=ROOT,
        env=_env(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    offset, pending = 0, b""
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            if not home.audit_log.exists() or not home.positions_file.exists():
                time.sleep(0.01)
                continue
            with open(home.audit_log, "rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
            offset += len(chunk)
            *lines, pending = (pending + chunk).split(b"\n")
            if not lines:
                time.sleep(0.001)
                continue
            os.kill(proc.pid, signal.SIGSTOP)
            seq = moment([json.loads(x) for x in lines])
            if seq is not None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                return seq
            os.kill(proc.pid, signal.SIGCONT)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
    raise AssertionError(f"the replay of {window} ended before the moment to kill it came")
