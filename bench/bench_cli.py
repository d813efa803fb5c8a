"""Whole-process time of the quick commands: `main.py --help`, `models` and `status`.

Builds a temporary TRADING_HOME as the tests do (the bundled AAPL/MSFT processed, a tiny XGBoost
model trained, a five-session paper replay for the live state files), then runs each command
`--runs` times as a fresh process and prints the median and the spread, beside `python -c pass`
(the interpreter's own start) measured in the same run: on a busy machine compare the medians,
not single runs. The first `status` of a home computes the NYSE sessions and caches them
(data/nyse_sessions.json); it is reported apart, then removed before each cold-cache run.
Bytecode as the environment has it: with PYTHONDONTWRITEBYTECODE=1 and no __pycache__, every
module is compiled at each start (main.py alone about 35 ms), so the line printed first says which.

Run: .venv/bin/python bench/bench_cli.py [--runs N] [--home PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import constants as C  # noqa: E402

PAIR = ("AAPL", "MSFT")


def make_home(root: Path) -> C.Paths:
    """A home with processed data, one registered model and the live loop's state files."""
    import process_stock_data as psd
    import train_model as tm

    home = C.paths(root).ensure()
    pair = C.Pair(*PAIR)
    psd.process("bundled", pair, home=home)
    tm.train(pair, tm.TrainConfig(models=("xgb",)), home=home)
    done = subprocess.run(
        [sys.executable, "main.py", "live", "--replay", "2022-01-03", "2022-01-07"],
        cwd=ROOT,
        env=_env(root),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the replay failed:\n{done.stderr}")
    return home


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TICKER_LONG", "TICKER_SHORT")}
    env.update({"TRADING_HOME": str(home), "ALERT_WEBHOOK_URL": "", "DATA_SOURCE": "bundled"})
    return env


def once(args: list[str], home: Path) -> float:
    """Seconds of one whole process (start to exit), output discarded; exits on a failure."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=_env(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return took


def row(name: str, times: list[float]) -> str:
    return (
        f"{name:<34} median {statistics.median(times):6.3f} s   "
        f"min {min(times):6.3f}   max {max(times):6.3f}   ({len(times)} runs)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per command (default 7)")
    parser.add_argument("--home", type=Path, help="an existing home instead of a new one")
    opts = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        if opts.home is not None:
            home = C.paths(opts.home)
        else:
            print("building a home (process, train xgb, 5-session replay) ...", flush=True)
            home = make_home(Path(tmp))
        cache = home.session_cache_file
        cold = []
        for _ in range(max(1, opts.runs // 2)):
            cache.unlink(missing_ok=True)
            cold.append(once(["main.py", "status"], home.home))
        commands = {
            "python -c pass (interpreter)": ["-c", "pass"],
            "main.py --help": ["main.py", "--help"],
            "main.py models": ["main.py", "models"],
            "main.py status": ["main.py", "status"],
        }
        results = {name: [] for name in commands}
        for _ in range(opts.runs):  # interleaved, so a burst of load hits every command alike
            for name, args in commands.items():
                results[name].append(once(args, home.home))
        cached = (ROOT / "__pycache__").is_dir()
        print(
            f"home: {home.home}; PYTHONDONTWRITEBYTECODE="
            f"{os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r}, __pycache__ "
            f"{'present' if cached else 'absent'} (modules compiled at each start when absent)"
        )
        for name, times in results.items():
            print(row(name, times))
        print(row("main.py status, no session cache", cold))


if __name__ == "__main__":
    main()
