"""Live loop iteration latency, sleeps excluded, with the simulated broker and LSTM inference.

A replay of `--sessions` NYSE sessions (from 2022-01-03) through `live_trading.run_trading_loop`
with a clock that records when the loop goes to sleep and wakes up: an iteration's latency is the
time from waking to the next sleep (data slice, signal, risk gate, broker, positions.json,
audit records, heartbeat). Iterations that see a new bar run the model (the LSTM, with
SIGNAL_MODEL=lstm; both models are trained first in a temporary home); the others reuse that
bar's signal. Prints mean, p50, p99 and max for all iterations and for new-bar ones, and the
peak resident memory of the process.

Run: .venv/bin/python bench/bench_live.py [--sessions N] [--model lstm|xgb]
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np
import pandas as pd

import constants as C
import live_trading as lt
import process_stock_data as psd
import train_model as tm
from data_validation import market_clock


class TimingClock(lt.ReplayClock):
    """A replay clock that timestamps (in real time) every sleep call and wake-up."""

    def __init__(self, start: pd.Timestamp):
        super().__init__(start)
        self.spans: list[tuple[float, bool]] = []  # (seconds awake, market open at wake-up)
        self._woke = time.perf_counter()
        self._open = False

    def sleep(self, seconds: float, stop: threading.Event) -> None:
        self.spans.append((time.perf_counter() - self._woke, self._open))
        super().sleep(seconds, stop)
        self._open = market_clock(self.now()).is_open
        self._woke = time.perf_counter()


def percentiles(ms: np.ndarray) -> str:
    return (
        f"mean {ms.mean():6.2f} ms  p50 {np.percentile(ms, 50):6.2f}  "
        f"p99 {np.percentile(ms, 99):6.2f}  max {ms.max():7.2f}  (n={len(ms):,})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20, help="sessions to replay (20)")
    parser.add_argument("--model", choices=["lstm", "xgb"], default="lstm", help="(lstm)")
    args = parser.parse_args()
    logging.disable(logging.INFO)  # one prediction line per iteration is not what we time
    os.environ["SIGNAL_MODEL"] = args.model
    pair = C.Pair("AAPL", "MSFT")
    with tempfile.TemporaryDirectory() as root:
        home = C.paths(root).ensure()
        started = time.perf_counter()
        psd.process("bundled", pair, home=home)
        models = ("lstm", "xgb") if args.model == "lstm" else ("xgb",)
        tm.train(pair, tm.TrainConfig(models=models), home=home)
        print(
            f"setup: processed and trained {'+'.join(models)} in "
            f"{time.perf_counter() - started:.1f} s"
        )

        days = pd.bdate_range("2022-01-03", periods=args.sessions * 2)
        start = pd.Timestamp("2022-01-03").tz_localize("America/New_York").tz_convert("UTC")
        sessions = [
            d
            for d in days
            if market_clock(
                d.tz_localize("America/New_York").tz_convert("UTC") + pd.Timedelta(hours=15)
            ).is_open
        ][: args.sessions]
        end = (
            (sessions[-1] + pd.Timedelta(days=1)).tz_localize("America/New_York").tz_convert("UTC")
        )
        config = lt.LiveConfig(replay_start=start, replay_end=end)
        clock = TimingClock(start)
        wall = time.perf_counter()
        summary = lt.run_trading_loop(config=config, pair=pair, home=home, clock=clock)
        wall = time.perf_counter() - wall

    spans = [(s * 1000, is_open) for s, is_open in clock.spans]
    awake = np.array([ms for ms, is_open in spans if is_open])
    # The first iteration of each session sees a new bar and runs the model.
    per_session = 78
    new_bar = awake[::per_session] if len(awake) >= per_session else awake[:1]
    rest = np.delete(awake, np.arange(0, len(awake), per_session))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"replay: {len(sessions)} sessions, {summary.iterations:,} iterations, {summary.bars} "
        f"new bars, {summary.orders} orders in {wall:.1f} s; model {args.model}"
    )
    print(f"all iterations      {percentiles(awake)}")
    print(f"new-bar iterations  {percentiles(new_bar)}   (signal computed)")
    print(f"same-bar iterations {percentiles(rest)}   (signal reused)")
    print(f"peak RSS {peak_mib:,.0f} MiB (process, TensorFlow included)")
    print("target: p99 under 50 ms")


if __name__ == "__main__":
    main()
