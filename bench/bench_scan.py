"""Pair scan throughput: one process, joblib processes and a Dask LocalCluster, and what a full
scan would cost.

The work of `main.py scan` is one `pair_scan.scan_pair` task per (pair, rule set): every
walk-forward window (`scan_window`: formation statistics, then a full backtest engine run on the
trading window), then the pair's row (`summarize_pair`: Sharpe, bootstrap interval, PSR). The full
grid (190 bundled pairs x 12 rule sets x 127 windows = 289,560 windows, hours of CPU here) is too
long for a bench, so this runs a subset and extrapolates from its measured CPU cost per window:

- pairs: the first --pairs of `pair_scan.universe_pairs` over the bundled tickers (AAPL/AMD,
  AAPL/BAC, ...; a fixed order);
- rule sets: the first --sets of the 12-set grid, entry z in (1.5, 2, 2.5) x exit z in (0, 0.5) x
  z-score bars in (40, 60), rule "current" (in that nesting order);
- windows: the most recent --windows of the full history's walk-forward windows (252 formation +
  63 trading bars): the price table starts (127 - N) x 63 rows later, so these are exactly the
  full-history windows (a window reads its own rows only).

The bench runs `run_scan(..., pairs=subset)` through the same mapper as `main.py scan`
(`pair_scan.runner_mapper` over a `task_runner` runner, no TaskCache); a check runs `run_scan` on
the first pair's table alone and compares.

Backends (--backends, comma-separated): serial (`SerialRunner`, this process), joblib1 and joblib2
(`LocalRunner(1)`, `LocalRunner(2)`; joblib runs n_jobs=1 in this process, 2 on loky worker
processes), dask1 and dask2 (`DaskRunner` on a `LocalCluster` of 1 or 2 worker processes, 1 thread
each: dask1 is the one-worker-process reference of dask2). The pool is started and warmed (the
task modules imported, one small task run) before the clock starts; its start time is shown apart.
Per backend: windows and tasks, wall time, windows/s, scaling against
joblib1 (else the first backend), CPU ms per task measured inside the workers (`getrusage` in each
worker before and after each stage), CPU used by this (parent) process, peak RSS of each worker
process (VmHWM, which includes the worker's imports), and whether the results equal the first
backend's bit for bit.

Then: a per-task cost breakdown (the steps of one `scan_window`, timed directly in this process),
the parent's per-task overhead (task keys, result size), and the extrapolation: CPU s per window
task x tasks / workers (perfect scaling; the measured 2-worker scaling shown beside it) for the
bundled 190 pairs and for a 500-ticker universe (124,750 pairs) of the same history, with the
scan's default single rule set and with the 12-set grid, never below the parent floor: the
parent's own CPU per task (measured on joblib2: keys, pickling, collecting results) x tasks, which
no worker count shortens.

Timings are noisy on a shared machine: the load average is printed as it goes; CPU seconds
measured inside the workers are steadier than wall time, and "cores got" (the workers' CPU s / wall
s) says how much of the machine a run had. The scaling targets (2 workers >= 1.7x one) are shown
measured on wall time and, beside it, inferred from the CPU per task as if each worker had a free
core. Nothing here asserts a speed.

Run: .venv/bin/python bench/bench_scan.py [--pairs N] [--sets N] [--windows N]
     [--backends serial,joblib1,joblib2,dask1,dask2] [--breakdown-reps N]
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import pickle
import resource
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# One core per worker: keep numpy/BLAS single-threaded (inherited by the worker processes).
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
# Worker processes (loky, Dask) import the task modules from the repository root too.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (os.path.abspath(ROOT), os.environ.get("PYTHONPATH", "")) if p
)

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import pair_scan as ps  # noqa: E402
import process_stock_data as psd  # noqa: E402
import task_runner as tr  # noqa: E402
from backtest_strategy import ZSCORE_RULES, run_backtest  # noqa: E402
from pair_engine import TradingConfig, rule_instructions  # noqa: E402
from pair_selection import pair_statistics, walk_forward_windows  # noqa: E402

BACKENDS = ("serial", "joblib1", "joblib2", "dask1", "dask2")
GRID = tuple(
    ps.RuleParameters(entry_z=entry, exit_z=exit_, zscore_bars=bars, rule="current")
    for entry in (1.5, 2.0, 2.5)
    for exit_ in (0.0, 0.5)
    for bars in (40, 60)
)
BIG_TICKERS = 500
TARGET_WALL_S = 60.0
TARGET_SCALING = 1.7


# --- Worker probes (top-level: sent to the worker processes) --------------------------------------
WARM_MARK = "BENCH_SCAN_WARM_PID"


def warm_up() -> None:
    """One `scan_window` on a small synthetic pair (400 bars, one window), after importing the
    task modules (task_runner imports distributed: a second of CPU)."""
    import pandas as pd

    import pair_scan
    import task_runner  # noqa: F401

    rng = np.random.default_rng(0)
    steps = rng.normal(0, 0.01, size=(400, 2))
    steps[:, 1] += steps[:, 0]
    frame = pd.DataFrame(
        100 * np.exp(np.cumsum(steps, axis=0)),
        index=pd.bdate_range("2020-01-01", periods=400, name="date"),
        columns=["A", "B"],
    )
    window = walk_forward_windows(len(frame))[0]
    pair_scan.scan_window(
        frame, "A", "B", 0, pair_scan.RuleParameters(), 0, window, TradingConfig()
    )


def worker_usage(sleep_s: float = 0.0) -> tuple[int, float, int]:
    """(pid, CPU seconds used so far, peak RSS in bytes) of the calling process. The first call in
    a process runs `warm_up` first, so a baseline taken before the clock includes the imports and
    first-call costs."""
    # Once per process: one small scan task (imports, first-call costs) before the clock. The mark
    # is per pid in the environment: a module global would be pickled by value with this function.
    if os.environ.get(WARM_MARK) != str(os.getpid()):
        warm_up()
        os.environ[WARM_MARK] = str(os.getpid())
    if sleep_s:
        time.sleep(sleep_s)  # keep this worker busy so the next probe lands on another one
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return os.getpid(), ru.ru_utime + ru.ru_stime, peak_rss()


def peak_rss() -> int:
    """Peak resident memory of this process in bytes: VmHWM from /proc/self/status (Linux), which
    starts afresh at exec; `ru_maxrss` elsewhere, which Linux carries over from the parent that
    forked the process (so a worker would show its parent's peak)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def self_usage() -> tuple[float, int]:
    """CPU seconds of this thread (not the pools' helper threads) and peak RSS (bytes) of this
    process."""
    cpu = resource.getrusage(resource.RUSAGE_THREAD)
    return cpu.ru_utime + cpu.ru_stime, peak_rss()


# --- Backends -------------------------------------------------------------------------------------
class Backend:
    """A runner and a way to read every worker process's usage."""

    name = ""
    workers = 1

    def start(self) -> tr.Runner:
        raise NotImplementedError

    def usage(self) -> dict[int, tuple[float, int]]:
        """pid -> (CPU s, peak RSS bytes) of every worker process."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop the worker processes."""


class SerialBackend(Backend):
    name = "serial"

    def start(self) -> tr.Runner:
        return tr.SerialRunner()

    def usage(self) -> dict[int, tuple[float, int]]:
        return {os.getpid(): self_usage()}


def _stop_loky() -> None:
    """Shut down joblib's reusable loky executor (if any), so the next pool starts fresh."""
    from joblib.externals.loky import reusable_executor

    executor = getattr(reusable_executor, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)


class JoblibBackend(Backend):
    def __init__(self, jobs: int) -> None:
        self.workers = jobs
        self.name = f"joblib{jobs}"

    def start(self) -> tr.Runner:
        _stop_loky()
        self.usage()  # starts the pool's processes and imports the task modules
        return tr.LocalRunner(self.workers)

    def usage(self) -> dict[int, tuple[float, int]]:
        from joblib import Parallel, delayed

        seen: dict[int, tuple[float, int]] = {}
        for _ in range(5):  # a probe lands on whichever worker is free: until every one answered
            calls = (delayed(worker_usage)(0.1) for _ in range(3 * self.workers))
            for pid, cpu, rss in Parallel(n_jobs=self.workers, backend="loky")(calls):
                seen[pid] = max(seen.get(pid, (0.0, 0)), (cpu, rss))
            if len(seen) >= self.workers:
                break
        return seen

    def close(self) -> None:
        _stop_loky()


class DaskBackend(Backend):
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.name = f"dask{workers}"
        self.cluster: Any = None
        self.client: Any = None

    def start(self) -> tr.Runner:
        from distributed import Client, LocalCluster

        self.cluster = LocalCluster(
            n_workers=self.workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        )
        self.client = Client(self.cluster, set_as_default=False)
        self.usage()
        return tr.DaskRunner(client=self.client)

    def usage(self) -> dict[int, tuple[float, int]]:
        answers = self.client.run(worker_usage)  # on every worker, by address
        return {pid: (cpu, rss) for pid, cpu, rss in answers.values()}

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def make_backend(name: str) -> Backend:
    if name == "serial":
        return SerialBackend()
    if name.startswith("joblib") and name[6:].isdigit() and int(name[6:]) >= 1:
        return JoblibBackend(int(name[6:]))
    if name.startswith("dask") and name[4:].isdigit() and int(name[4:]) >= 1:
        return DaskBackend(int(name[4:]))
    raise SystemExit(f"unknown backend {name!r}: serial, joblibN or daskN (e.g. joblib2, dask2)")


# --- The scan of a subset of pairs, as `main.py scan` runs it -------------------------------------
@dataclass
class Run:
    backend: str
    workers: int
    start_s: float
    window_tasks: int
    pair_tasks: int
    windows_s: float
    stats_s: float
    worker_cpu_windows_s: float
    worker_cpu_stats_s: float
    parent_cpu_s: float
    worker_rss: list[int]
    rows: list[ps.PairResult] = field(repr=False)
    window_results: list[ps.WindowResult] = field(repr=False)

    @property
    def wall_s(self) -> float:
        return self.windows_s + self.stats_s


def cpu_delta(before: dict[int, tuple[float, int]], after: dict[int, tuple[float, int]]) -> float:
    """CPU seconds the worker processes used between two probes (a new process counts from 0)."""
    return sum(cpu - before.get(pid, (0.0, 0))[0] for pid, (cpu, _) in after.items())


def scan_stages(
    closes: Any,
    pairs: Sequence[tuple[str, str]],
    rules: Sequence[ps.RuleParameters],
    config: TradingConfig,
    mapper: ps.Mapper,
    between: Callable[[], None] = lambda: None,
) -> tuple[list[ps.WindowResult], list[ps.PairResult], float, float]:
    """`run_scan` on `pairs` only (one `scan_pair` task per pair x rule set: its windows and its
    row): window results, pair rows (ranked), the wall time, and 0.0 for the statistics (they run
    inside each task); `between()` runs untimed after it."""
    t0 = time.perf_counter()
    result = ps.run_scan(closes, ps.ScanSettings(rules=tuple(rules)), config, mapper=mapper,
                         pairs=pairs)  # fmt: skip
    wall = time.perf_counter() - t0
    between()
    return result.window_results, result.pairs, wall, 0.0


def run_backend(
    backend: Backend,
    closes: Any,
    pairs: Sequence[tuple[str, str]],
    rules: Sequence[ps.RuleParameters],
    config: TradingConfig,
) -> Run:
    t0 = time.perf_counter()
    runner = backend.start()
    start_s = time.perf_counter() - t0
    try:
        probes = [backend.usage()]
        parent0 = time.process_time()
        parent_probe = [0.0]

        def between() -> None:
            p = time.process_time()
            probes.append(backend.usage())
            parent_probe[0] += time.process_time() - p

        results, rows, windows_s, stats_s = scan_stages(
            closes, pairs, rules, config, ps.runner_mapper(runner), between
        )
        parent_cpu = time.process_time() - parent0 - parent_probe[0]
        probes.append(probes[-1])  # one stage: nothing runs after it
    finally:
        runner.close()
        backend.close()
    if isinstance(backend, SerialBackend):  # the work ran in this (parent) process
        worker_windows = probes[1][os.getpid()][0] - probes[0][os.getpid()][0]
        worker_stats = probes[2][os.getpid()][0] - probes[1][os.getpid()][0]
    else:
        worker_windows = cpu_delta(probes[0], probes[1])
        worker_stats = cpu_delta(probes[1], probes[2])
    return Run(
        backend=backend.name,
        workers=backend.workers,
        start_s=start_s,
        window_tasks=len(results),
        pair_tasks=len(rows),  # = tasks: one per pair x rule set
        windows_s=windows_s,
        stats_s=stats_s,
        worker_cpu_windows_s=worker_windows,
        worker_cpu_stats_s=worker_stats,
        parent_cpu_s=parent_cpu,
        worker_rss=sorted(rss for _, rss in probes[2].values()),
        rows=rows,
        window_results=results,
    )


def same_sharpes(a: Sequence[ps.PairResult], b: Sequence[ps.PairResult]) -> bool:
    """The rows' Sharpes (and interval ends) equal bit for bit, pair by pair."""
    if [(p.pair, p.rule_index) for p in a] != [(p.pair, p.rule_index) for p in b]:
        return False
    bits = [
        np.array([(p.sharpe, p.sharpe_ci_low, p.sharpe_ci_high) for p in rows]).view(np.int64)
        for rows in (a, b)
    ]
    return bool(np.array_equal(*bits))


def same_windows(a: Sequence[ps.WindowResult], b: Sequence[ps.WindowResult]) -> bool:
    return len(a) == len(b) and all(x.same_as(y) for x, y in zip(a, b, strict=True))


# --- Per-task cost breakdown ----------------------------------------------------------------------
def breakdown(
    closes: Any, pair: tuple[str, str], rule: ps.RuleParameters, config: TradingConfig, reps: int
) -> dict[str, float]:
    """CPU seconds per call of each step of `scan_window` (its code, step by step), mean over the
    last `reps` windows of `pair`."""
    windows = walk_forward_windows(len(closes))[-reps:]
    spent = dict.fromkeys(
        ("slice + log", "pair_statistics", "z-score + states + instructions", "run_backtest"), 0.0
    )
    spent["whole scan_window"] = 0.0
    long, short = pair
    ps.scan_window(closes, long, short, 0, rule, 0, windows[0], config)  # first-call costs
    gc.collect()
    for w in windows:
        c = time.thread_time()
        ps.scan_window(closes, long, short, 0, rule, 0, w, config)
        spent["whole scan_window"] += time.thread_time() - c
        c0 = time.thread_time()
        rows = closes[[long, short]].iloc[w.formation_start : w.trading_stop]
        logs = np.log(rows.to_numpy("float64"))
        f = w.formation_bars
        c1 = time.thread_time()
        pair_statistics(logs[:f, 0], logs[:f, 1])
        c2 = time.thread_time()
        spec = ZSCORE_RULES[rule.rule]
        z = spec.zscore(logs[:, 0], logs[:, 1], rule.zscore_bars)[f:]
        states = ps.end_flat(spec.states(z, rule.entry_z, rule.exit_z), config.fill_delay_bars)
        instructions = rule_instructions(states, config.sizing)
        c3 = time.thread_time()
        run_backtest(
            rows.iloc[f:],
            instructions.weights,
            config,
            label="scan",
            history=rows.iloc[:f],
            log_rejections=False,
            weight_unit="usd" if instructions.per_usd else "equity",
        )
        c4 = time.thread_time()
        for key, seconds in zip(spent, (c1 - c0, c2 - c1, c3 - c2, c4 - c3), strict=False):
            spent[key] += seconds
    out = {k: v / len(windows) for k, v in spent.items()}
    whole = out.pop("whole scan_window")
    out["the rest (the result record; timer noise)"] = whole - sum(out.values())
    out["whole scan_window (timed apart)"] = whole
    return out


def parent_overhead(
    closes: Any, pair: tuple[str, str], rules: Sequence[ps.RuleParameters], config: TradingConfig
) -> tuple[float, int, int]:
    """Seconds to build one task (its SHA-256 key over the arguments' canonical bytes), in the
    parent, per window it covers; the pickled bytes of a task's arguments and of its result (a
    `scan_pair` task: one pair x rule set, every window)."""
    windows = tuple(walk_forward_windows(len(closes)))
    args = [(*pair, k, rule, windows, config) for k, rule in enumerate(rules)]
    name = f"{ps.scan_pair.__module__}:{ps.scan_pair.__qualname__}"
    t0 = time.thread_time()
    for a in args:
        tr.task(ps._table_task, name, *a, version=ps.TASK_VERSION)
    per_window = (time.thread_time() - t0) / len(args) / len(windows)
    result = ps.scan_pair(closes, *args[-1])
    return (
        per_window,
        len(pickle.dumps(args[-1], protocol=5)),
        len(pickle.dumps(result, protocol=5)),
    )


# --- Formatting -----------------------------------------------------------------------------------
def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:,.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:,.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:,.1f} h"
    return f"{seconds / 86400:,.1f} d"


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def size(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n / 1e3:,.0f} kB"


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pairs", type=int, default=10, help="the first N of the 190 bundled pairs (default 10)"
    )
    parser.add_argument(
        "--sets", type=int, default=12, help="the first N of the 12 rule sets (default 12)"
    )
    parser.add_argument(
        "--windows",
        type=int,
        default=8,
        help="the most recent N of the 127 walk-forward windows (default 8)",
    )
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help=f"comma-separated, run in this order (default {','.join(BACKENDS)}); "
        "joblibN and daskN take any N",
    )
    parser.add_argument(
        "--breakdown-reps",
        type=int,
        default=10,
        help="windows timed step by step for the per-task breakdown (default 10; 0: skip)",
    )
    args = parser.parse_args()
    width = max(shutil.get_terminal_size((180, 24)).columns, 180)
    console = Console(width=width, highlight=False)
    t_start = time.perf_counter()

    universe = ps.checked_universe(psd.load_bundled().close)
    all_pairs = ps.universe_pairs(list(universe.columns))
    full_windows = walk_forward_windows(len(universe))
    n_pairs = min(max(args.pairs, 1), len(all_pairs))
    n_sets = min(max(args.sets, 1), len(GRID))
    n_windows = min(max(args.windows, 1), len(full_windows))
    step = full_windows[0].trading_bars
    closes = universe.iloc[(len(full_windows) - n_windows) * step :]
    pairs, rules = all_pairs[:n_pairs], GRID[:n_sets]
    windows = walk_forward_windows(len(closes))
    offset = (len(full_windows) - n_windows) * step
    assert [w.trading_start + offset for w in windows] == [
        w.trading_start for w in full_windows[-n_windows:]
    ]  # the same windows as the full history's last ones
    config = TradingConfig()
    backends = [make_backend(b.strip()) for b in args.backends.split(",") if b.strip()]

    console.print(
        f"numpy {np.__version__}, python {sys.version.split()[0]}; {load()} "
        "(a shared machine: other jobs run beside this one, so wall times are noisy; the CPU s "
        "measured inside the workers are steadier)"
    )
    console.print(
        f"universe: {universe.shape[1]} bundled tickers, {len(universe):,} bars "
        f"{universe.index[0].date()} .. {universe.index[-1].date()}, {len(all_pairs)} pairs, "
        f"{len(full_windows)} walk-forward windows (252 formation + {step} trading bars)"
    )
    console.print(
        f"subset: {n_pairs} pairs ({', '.join(f'{a}/{b}' for a, b in pairs[:4])}"
        f"{', ...' if n_pairs > 4 else ''}) x {n_sets} rule sets x the last {n_windows} windows "
        f"(trading {closes.index[windows[0].trading_start].date()} .. "
        f"{closes.index[windows[-1].trading_stop - 1].date()}) = "
        f"{n_pairs * n_sets * n_windows:,} windows in {n_pairs * n_sets} tasks (one per pair x "
        "rule set); no task cache"
    )

    if args.breakdown_reps > 0:
        steps = breakdown(closes, pairs[0], rules[0], config, min(args.breakdown_reps, n_windows))
        whole = steps["whole scan_window (timed apart)"]
        bt = Table(
            title=f"one window task, step by step ({pairs[0][0]}/{pairs[0][1]}, "
            f"{rules[0].label}, mean of {min(args.breakdown_reps, n_windows)} windows, "
            "CPU of this thread)"
        )
        bt.add_column("step")
        bt.add_column("CPU ms", justify="right")
        bt.add_column("share of the whole task", justify="right")
        for name, seconds in steps.items():
            bt.add_row(name, f"{1e3 * seconds:,.2f}", f"{100 * seconds / whole:,.0f} %")
        console.print(bt)
    per_task, task_bytes, result_bytes = parent_overhead(closes, pairs[0], rules, config)
    console.print(
        f"parent side, per window: building the tasks (SHA-256 key over the arguments' "
        f"canonical bytes) {1e6 * per_task:,.0f} us of CPU; one task (a pair x rule set, "
        f"{n_windows} windows): arguments pickled {task_bytes:,} B, result pickled "
        f"{result_bytes:,} B (run_scan keeps every window result in the parent until the end)"
    )

    runs: list[Run] = []
    for backend in backends:
        run = run_backend(backend, closes, pairs, rules, config)
        runs.append(run)
        console.print(
            f"  {run.backend}: {run.wall_s:,.1f} s wall (pool start {run.start_s:,.1f} s apart); "
            f"{load()}"
        )

    reference = next((r for r in runs if r.backend == "joblib1"), runs[0] if runs else None)
    table = Table(
        title="scan of the subset, per backend (pool started and warmed before the clock)"
    )
    for col in (
        "backend",
        "windows",
        "tasks",
        "start s",
        "wall s",
        "windows/s",
        "scaling",
        "CPU ms/window",
        "parent CPU s",
        "cores got",
        "peak RSS MiB/worker",
        "same",
    ):
        table.add_column(col, justify="left" if col == "backend" else "right")
    for run in runs:
        same = same_sharpes(run.rows, runs[0].rows) and same_windows(
            run.window_results, runs[0].window_results
        )
        table.add_row(
            run.backend,
            f"{run.window_tasks:,}",
            f"{run.pair_tasks:,}",
            f"{run.start_s:,.1f}",
            f"{run.wall_s:,.1f}",
            f"{run.window_tasks / run.windows_s:,.1f}",
            f"{reference.wall_s / run.wall_s:.2f}x" if reference else "-",
            f"{1e3 * run.worker_cpu_windows_s / run.window_tasks:,.1f}",
            f"{run.parent_cpu_s:,.1f}",
            f"{(run.worker_cpu_windows_s + run.worker_cpu_stats_s) / run.wall_s:,.2f}",
            ", ".join(mib(r) for r in run.worker_rss),
            "yes" if same else "NO",
        )
    console.print(table)
    if runs:
        console.print(
            "start: pool start and warm-up, not in wall; wall: the scan (one stage: each task "
            "trades its windows and computes its row); "
            f"scaling = {reference.backend if reference else '-'} wall / this wall; CPU ms: "
            "measured inside the worker processes (getrusage before and after the scan) per "
            "window, the row's statistics included; parent CPU: this process during the scan "
            "(task keys, pickling, results; the "
            "Dask scheduler runs here too; serial: all the work); cores got: the workers' CPU s / "
            "wall s (below the worker count: the machine's other jobs took the rest); peak RSS: "
            "VmHWM of each worker process (serial: this process, whole bench so far); same = "
            f"every pair's Sharpe and interval bit-identical to {runs[0].backend}'s and every "
            "window result equal (returns bit for bit)"
        )
        # run_scan on the first pair's table alone: the subset scan must give the same rows.
        check = ps.run_scan(
            closes[list(pairs[0])], ps.ScanSettings(rules=rules), config, mapper=ps.serial_map
        )
        mine = sorted((p for p in runs[0].rows if p.pair == check.pairs[0].pair), key=_rule)
        agree = same_sharpes(sorted(check.pairs, key=_rule), mine)
        console.print(
            f"check: run_scan on {pairs[0][0]}/{pairs[0][1]} alone gives the same Sharpes as "
            f"the subset scan: {'yes' if agree else 'NO'}"
        )

    if not runs:
        return
    # Extrapolation: the largest measured in-worker CPU per task (conservative).
    per_window = {r.backend: r.worker_cpu_windows_s / r.window_tasks for r in runs}
    cpu_window = max(per_window.values())
    low_name = min(per_window, key=per_window.__getitem__)
    cpu_pair_per_window = max(r.worker_cpu_stats_s / max(r.pair_tasks, 1) for r in runs) / n_windows
    two = next((r for r in runs if r.workers == 2 and r.backend.startswith("joblib")), None)
    one = reference
    measured_eff = (one.wall_s / two.wall_s) / 2 if (one and two and one is not two) else math.nan
    console.print(
        f"\nextrapolation: ({1e3 * cpu_window:,.1f} CPU ms per window task, the largest in-worker "
        f"figure measured above (the smallest: {1e3 * per_window[low_name]:,.1f} ms, {low_name}), "
        f"+ {1e3 * cpu_pair_per_window:,.2f} ms, its share of a pair task per window: a pair "
        "task's bootstrap grows with its windows, taken as linear) x tasks / workers, i.e. "
        f"perfect scaling; 'measured eff.' divides the 2-worker figure by the measured 2-worker "
        f"efficiency {measured_eff:.0%} ({one.backend} wall / joblib2 wall / 2). The "
        f"{BIG_TICKERS}-ticker universe has the same history ({len(full_windows)} windows). "
        "Each time is at least the parent floor (below)."
    )
    # The parent's own CPU per window task (keys, pickling, collecting results: serial, whatever
    # the worker count), measured on a pool of worker processes; else the key building alone.
    pooled = [r for r in runs if r.workers >= 2 and r.backend.startswith("joblib")]
    parent_per_task = min(r.parent_cpu_s / r.window_tasks for r in pooled) if pooled else per_task
    parent_name = (
        f"{min(pooled, key=lambda r: r.parent_cpu_s).backend}: task keys, pickling, collecting "
        "results"
        if pooled
        else "building the task keys alone: no joblib pool of 2+ workers ran"
    )
    big_pairs = BIG_TICKERS * (BIG_TICKERS - 1) // 2
    worker_counts = (1, 2, 16, 64, 256)
    et = Table(title="estimated wall time of a full-history scan, by worker count")
    for col in ("universe", "pairs", "rule sets", "window tasks", "CPU total"):
        et.add_column(col, justify="left" if col == "universe" else "right")
    for n in worker_counts:
        et.add_column(f"{n} worker{'s' if n > 1 else ''}", justify="right")
    et.add_column("2, measured eff.", justify="right")
    et.add_column("parent floor", justify="right")
    et.add_column("results held", justify="right")
    estimates: dict[tuple[int, int, int], float] = {}
    for label, n_p in (
        (f"{universe.shape[1]} bundled", len(all_pairs)),
        (f"{BIG_TICKERS} tickers", big_pairs),
    ):
        for n_s in (1, len(GRID)):
            tasks = n_p * n_s * len(full_windows)
            cpu = tasks * (cpu_window + cpu_pair_per_window)
            floor = tasks * parent_per_task if math.isfinite(parent_per_task) else 0.0
            cells = []
            for n in worker_counts:
                estimates[(n_p, n_s, n)] = max(cpu / n, floor)
                cells.append(duration(max(cpu / n, floor)) + ("*" if floor > cpu / n else ""))
            et.add_row(
                label,
                f"{n_p:,}",
                str(n_s),
                f"{tasks:,}",
                f"{cpu / 3600:,.1f} h",
                *cells,
                duration(cpu / 2 / measured_eff) if measured_eff > 0 else "-",
                duration(floor),
                size(tasks * result_bytes / n_windows),
            )
    console.print(et)
    dask = [r for r in runs if r.backend.startswith("dask")]
    console.print(
        f"parent floor: the parent's own CPU per window task, {1e3 * parent_per_task:,.2f} ms "
        f"({parent_name}; serial whatever the worker count), x tasks; a time marked * is that "
        "floor: beyond about "
        f"{cpu_window / parent_per_task:,.0f} workers the parent, not the workers, sets the pace"
        + (
            "; on Dask the client and its LocalCluster scheduler (in this process) spent "
            + ", ".join(
                f"{1e3 * r.parent_cpu_s / r.window_tasks:,.1f} ms ({r.backend})" for r in dask
            )
            + " per window task"
            if dask
            else ""
        )
        + f". Results held: run_scan keeps every WindowResult in the parent until the end "
        f"({result_bytes / n_windows:,.0f} B pickled each, more in memory)."
    )
    default_2 = estimates[(len(all_pairs), 1, 2)]
    grid_2 = estimates[(len(all_pairs), len(GRID), 2)]
    console.print(
        f"target: the {len(all_pairs)}-pair scan in < {TARGET_WALL_S:.0f} s on 2 cores: estimated "
        f"{duration(default_2)} with the default rule set and {duration(grid_2)} with the "
        f"12-set grid (perfect scaling): "
        f"{'met' if default_2 < TARGET_WALL_S else 'not met'} / "
        f"{'met' if grid_2 < TARGET_WALL_S else 'not met'}"
    )
    by_name = {r.backend: r for r in runs}
    for run in runs:
        if run.workers < 2:
            continue
        family = run.backend.rstrip("0123456789")
        bases: list[Run] = []
        for base in (by_name.get(f"{family}1"), one):
            if base is not None and base is not run and all(base is not b for b in bases):
                bases.append(base)
        for base in bases:
            ratio = base.wall_s / run.wall_s
            # What the ratio would be if every worker had a core of its own: the workers' CPU per
            # task against the base's (an inference from CPU time, not a measurement of wall).
            base_cpu = base.worker_cpu_windows_s + base.worker_cpu_stats_s
            run_cpu = run.worker_cpu_windows_s + run.worker_cpu_stats_s
            cores = run_cpu / run.wall_s
            console.print(
                f"target: {run.backend} >= {TARGET_SCALING}x {base.backend}: measured "
                f"{ratio:.2f}x wall ({'met' if ratio >= TARGET_SCALING else 'not met'}), its "
                f"{run.workers} workers got {cores:.2f} cores of the shared machine; with a free "
                f"core each: {run.workers * base_cpu / run_cpu:.2f}x (inferred from CPU per task)"
            )
    console.print(f"{load()}; bench wall time {time.perf_counter() - t_start:,.1f} s")


def _rule(p: ps.PairResult) -> int:
    return p.rule_index


if __name__ == "__main__":
    main()
