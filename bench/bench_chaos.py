"""SIGKILL chaos of the paper replay: `--kills` random kills (default 50) of `python main.py live
--replay 2022-01-03 2022-12-28`, each at a random point inside the loop, then a run to the end;
compared with an uninterrupted replay of the same window in a home with the same order tag.

Prints the kills made, the final equity and cash differences (USD), whether positions and the
client order ids (quantities, fills) are equal, the orders whose audited fill shares exceed or
fall short of the broker's, and whether the audit chain verifies. Exits 1 when anything differs.

Run: .venv/bin/python bench/bench_chaos.py [--kills N] [--seed S]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import constants as C
import live_trading as lt
import process_stock_data as psd
import train_model as tm
from tests.chaos import kill_and_resume
from tests.helpers import replay_config

PAIR = C.Pair("AAPL", "MSFT")
WINDOW = ("2022-01-03", "2022-12-28")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50, help="SIGKILLs (default 50)")
    parser.add_argument("--seed", type=int, default=20221, help="random seed of the kill times")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    os.environ["ALERT_WEBHOOK_URL"] = ""
    root = Path(tempfile.mkdtemp(prefix="bench-chaos-"))
    try:
        trained = C.paths(root / "trained").ensure()
        psd.process("bundled", PAIR, home=trained)
        tm.train(PAIR, tm.TrainConfig(models=("xgb",)), home=trained)
        homes = []
        for name in ("killed", "reference"):
            for part in ("data", "models"):
                shutil.copytree(trained.home / part, root / name / part)
            homes.append(C.paths(root / name))
        home, reference = homes
        reference.order_tag_file.write_text(home.order_tag() + "\n")
        started = time.perf_counter()
        lt.run_trading_loop(config=replay_config(*WINDOW), pair=PAIR, home=reference)
        print(f"reference replay {WINDOW[0]}..{WINDOW[1]}: {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        report = kill_and_resume(home, reference, WINDOW, kills=args.kills, seed=args.seed)
        took = time.perf_counter() - started
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"kills: {report.kills} (runs started: {report.starts}), {took:.0f} s in all")
    print(f"final equity - reference: {report.equity_diff:+.6f} USD")
    print(f"final cash - reference:   {report.cash_diff:+.6f} USD")
    print(f"positions equal: {report.positions_equal}; orders equal: {report.ids_equal}")
    print(
        f"orders audited twice: {len(report.doubled_fills)}; missing: {len(report.missing_fills)}"
    )
    print(f"audit chain verifies: {report.chain_ok}; final run exit {report.final_returncode}")
    print("CLEAN" if report.clean else "DIFFERS")
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())
