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
