"""task_runner: same results with every backend and worker count, shared inputs sent once per
worker, a killed worker changes nothing, interrupted cached runs resume, keys are canonical.

Dask runs on a real `distributed.LocalCluster` (worker processes); the task functions below are
top-level so that worker processes import them from this module.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from distributed import Client

import task_runner as tr
from error_handling import ConfigurationError
from tests.helpers import alive, local_cluster

ROOT = Path(__file__).resolve().parent.parent


# --- Task functions (top-level: worker processes import them) -------------------------------------
def window_statistics(shared: dict, start: int, length: int, seed: int) -> np.ndarray:
    """A small deterministic numpy computation over the shared price table: the standard
    deviation of a seeded random portfolio's log returns and the mean of each column."""
    prices = shared["prices"].iloc[start : start + length]
    log_returns = np.diff(np.log(prices.to_numpy()), axis=0)
    weights = np.random.default_rng(seed).normal(size=log_returns.shape[1])
    portfolio = log_returns @ weights
    return np.concatenate([[portfolio.std(ddof=1)], log_returns.mean(axis=0)])


def slow_window_statistics(shared: dict, start: int, length: int, seed: int) -> np.ndarray:
    time.sleep(0.15)
    return window_statistics(shared, start, length, seed)


def delayed_identity(i: int, delay_s: float) -> int:
    time.sleep(delay_s)
    return i


def counted_square(shared: dict, i: int, calls_file: str) -> float:
    """Appends `i` to `calls_file` (one line per call) and returns a float of the shared data."""
    with open(calls_file, "a") as fh:
        fh.write(f"{i}\n")
    return float(shared["x"][i] ** 2)


#: Deserialisations of each CountedPayload in this process, by token.
LOADS: dict[str, int] = {}


class CountedPayload:
    """Shared data that counts, in the process that unpickles it, how often it was unpickled."""

    def __init__(self, token: str, values: np.ndarray) -> None:
        self.token, self.values = token, values

    def __reduce__(self) -> tuple:
        return (_rebuild_payload, (self.token, self.values))


def _rebuild_payload(token: str, values: np.ndarray) -> CountedPayload:
    LOADS[token] = LOADS.get(token, 0) + 1
    return CountedPayload(token, values)


def loads_seen(shared: dict, i: int) -> tuple[int, int]:
    """(this worker's pid, how often this worker unpickled the shared payload so far)."""
    time.sleep(0.02)
    payload = shared["payload"]
    return os.getpid(), LOADS.get(payload.token, 0)


# --- Fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_workers() -> Iterator[Client]:
    """One cluster of two worker processes for the tests that do not harm it."""
    with local_cluster(2) as client:
        yield client


@pytest.fixture(scope="module")
def prices() -> pd.DataFrame:
    """A seeded random walk: 600 business days of 6 tickers."""
    rng = np.random.default_rng(7)
    steps = rng.normal(0.0, 0.01, size=(600, 6))
    index = pd.bdate_range("2020-01-01", periods=600, name="date")
    return pd.DataFrame(100 * np.exp(steps.cumsum(axis=0)), index=index, columns=list("ABCDEF"))


def window_tasks(fn=window_statistics, n: int = 16) -> list[tr.Task]:
    return [tr.task(fn, 20 * k, 120, 1000 + k) for k in range(n)]


def assert_identical(a: list, b: list, label: str = "") -> None:
    assert len(a) == len(b), label
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), label


# --- Same results everywhere ----------------------------------------------------------------------
def test_results_are_identical_with_every_backend_and_worker_count(prices, two_workers):
    tasks = window_tasks()
    shared = {"prices": prices}
    expected = tr.SerialRunner().map(tasks, shared=shared)
    with (
        local_cluster(1) as one_worker,
        tr.runner_from_options(jobs=None, scheduler=one_worker.scheduler.address) as by_address,
    ):
        dask_1 = by_address.map(tasks, shared=shared)
    runs = {
        "local-1": tr.LocalRunner(jobs=1).map(tasks, shared=shared),
        "local-2": tr.LocalRunner(jobs=2).map(tasks, shared=shared),
        "dask-2": tr.DaskRunner(client=two_workers).map(tasks, shared=shared),
        "dask-1 (by address)": dask_1,
    }
    for name, results in runs.items():
        assert_identical(results, expected, name)


def test_results_come_in_task_order_not_finishing_order():
    tasks = [tr.task(delayed_identity, i, 0.03 * (8 - i)) for i in range(8)]
    seen: list[tuple[int, int]] = []
    results = tr.LocalRunner(jobs=2).map(tasks, progress=lambda d, n: seen.append((d, n)))
    assert results == list(range(8))
    assert seen == [(d, 8) for d in range(1, 9)]


def test_a_repeated_task_runs_once_and_fills_every_position(tmp_path):
    calls = tmp_path / "calls.txt"
    t = tr.task(counted_square, 3, str(calls))
    results = tr.SerialRunner().map([t, t, t], shared={"x": np.arange(5.0)})
    assert results == [9.0, 9.0, 9.0]
    assert calls.read_text().split() == ["3"]


# --- Shared inputs --------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["local", "dask"])
def test_shared_inputs_are_unpickled_once_per_worker_not_once_per_task(backend, two_workers):
    """Each task reports how often its worker unpickled the payload: always once. Were the payload
    sent with each task, a worker running several tasks would report 2, 3, ..."""
    payload = CountedPayload(uuid.uuid4().hex, np.arange(100_000.0))
    tasks = [tr.task(loads_seen, i) for i in range(12)]
    runner = tr.LocalRunner(jobs=2) if backend == "local" else tr.DaskRunner(client=two_workers)
    results = runner.map(tasks, shared={"payload": payload})
    pids = [pid for pid, _ in results]
    assert len(set(pids)) < len(tasks)  # some worker ran several tasks
    assert [loads for _, loads in results] == [1] * len(tasks)


def first_shared_value(shared: dict, i: int) -> float:
    return float(shared["x"][0]) + i


def test_back_to_back_maps_with_the_same_shared_name_each_see_their_own_values(two_workers):
    """A map's shared data is released after it; the next map's data of the same name is new."""
    runner = tr.DaskRunner(client=two_workers)
    tasks = [tr.task(first_shared_value, i) for i in range(4)]
    for k in range(8):
        assert runner.map(tasks, shared={"x": np.full(10, float(k))}) == [k + i for i in range(4)]


# --- Failures -------------------------------------------------------------------------------------
def test_a_worker_killed_mid_run_does_not_change_the_results(prices):
    tasks = window_tasks(slow_window_statistics, n=20)  # 0.15 s each
    shared = {"prices": prices}
    killed_at: list[int] = []
    with local_cluster(2) as client:
        victim = next(iter(client.run(os.getpid).values()))

        def kill_one_worker(done: int, total: int) -> None:
            if done == 3 and not killed_at:
                os.kill(victim, signal.SIGKILL)
                killed_at.append(done)

        results = tr.DaskRunner(client=client).map(tasks, shared=shared, progress=kill_one_worker)
        assert killed_at == [3]  # killed while 17 tasks were unfinished
        assert not alive(victim)
    assert_identical(results, tr.SerialRunner().map(tasks, shared=shared))


def fail_on_two(i: int) -> int:
    if i == 2:
        raise ValueError(f"task {i} refuses")
    return i


@pytest.mark.parametrize("backend", ["serial", "local", "dask"])
def test_a_failing_task_raises_its_own_error_from_every_backend(backend, request):
    runner = {
        "serial": tr.SerialRunner,
        "local": lambda: tr.LocalRunner(jobs=2),
        "dask": lambda: tr.DaskRunner(client=request.getfixturevalue("two_workers")),
    }[backend]()
    with pytest.raises(ValueError, match="task 2 refuses"):
        runner.map([tr.task(fail_on_two, i) for i in range(4)])


def test_an_unreachable_scheduler_is_a_configuration_error_within_5_s():
    start = time.monotonic()
    with pytest.raises(ConfigurationError, match=r"cannot reach the Dask scheduler at tcp://"):
        tr.runner_from_options(jobs=None, scheduler="tcp://127.0.0.1:9")
    assert time.monotonic() - start < 5


@pytest.mark.parametrize(
    "address",
    ["nonsense", "tcp://host", "http://h:8786", "tcp://h:x", "tcp://h:99999", "tcp://h:0"],
)
def test_a_malformed_scheduler_address_is_refused_before_connecting(address):
    start = time.monotonic()
    with pytest.raises(ConfigurationError, match="not a Dask scheduler address"):
        tr.runner_from_options(jobs=None, scheduler=address)
    assert time.monotonic() - start < 1


def test_runner_from_options_without_a_scheduler(monkeypatch):
    monkeypatch.delenv(tr.ENV_SCHEDULER, raising=False)
    assert isinstance(tr.runner_from_options(1, None), tr.SerialRunner)
    assert tr.runner_from_options(None, None).jobs == -1
    assert tr.runner_from_options(3, None).jobs == 3
    with pytest.raises(ConfigurationError, match="jobs must be"):
        tr.runner_from_options(0, None)


# --- Resumable runs -------------------------------------------------------------------------------
class Interrupted(Exception):
    pass


def test_an_interrupted_cached_run_resumes_with_only_the_missing_tasks(tmp_path):
    calls = tmp_path / "calls.txt"
    shared = {"x": np.linspace(0.0, 1.0, 12)}
    tasks = [tr.task(counted_square, i, str(calls)) for i in range(12)]
    cache = tr.TaskCache(tmp_path / "cache" / "tasks")

    def interrupt_after_five(done: int, total: int) -> None:
        if done == 5:
            raise Interrupted

    with pytest.raises(Interrupted):
        tr.cached_map(tr.SerialRunner(), tasks, cache, shared=shared, progress=interrupt_after_five)
    assert len(cache) == 5  # each result was stored as it arrived

    progress: list[tuple[int, int]] = []
    resumed = tr.cached_map(
        tr.LocalRunner(jobs=2), tasks, cache, shared=shared, progress=lambda *p: progress.append(p)
    )
    ran = [int(line) for line in calls.read_text().split()]
    assert sorted(ran) == list(range(12))  # the first 5 ran once, the other 7 only on resume
    assert progress[0] == (5, 12) and progress[-1] == (12, 12)
    uncached = tr.SerialRunner().map(
        [tr.task(counted_square, i, str(tmp_path / "other.txt")) for i in range(12)], shared=shared
    )
    assert [x.hex() for x in resumed] == [x.hex() for x in uncached]
    assert len(cache) == 12


def test_a_cached_result_is_not_reused_when_the_shared_inputs_change(tmp_path):
    calls = tmp_path / "calls.txt"
    cache = tr.TaskCache(tmp_path / "cache")
    tasks = [tr.task(counted_square, 1, str(calls))]
    first = tr.cached_map(tr.SerialRunner(), tasks, cache, shared={"x": np.array([1.0, 2.0])})
    again = tr.cached_map(tr.SerialRunner(), tasks, cache, shared={"x": np.array([1.0, 2.0])})
    changed = tr.cached_map(tr.SerialRunner(), tasks, cache, shared={"x": np.array([1.0, 3.0])})
    assert (first, again, changed) == ([4.0], [4.0], [9.0])
    assert calls.read_text().split() == ["1", "1"]


# --- Keys -----------------------------------------------------------------------------------------
KEY_ARGS = """(
    1, 2.5, -0.0, "AAPL", None, True, (1, 2), [3, 4],
    {"b": 1.0, "a": [np.float64(0.1), np.int32(7)]},
    np.arange(6.0).reshape(2, 3),
    pd.Timestamp("2021-03-04", tz="America/New_York"),
    pd.Series([1.0, 2.0], index=pd.Index(["x", "y"]), name="s"),
)"""


def test_equal_arguments_give_equal_keys_in_another_process():
    code = (
        "import statistics, numpy as np, pandas as pd, task_runner as tr\n"
        f"print(tr.task(statistics.fmean, *{KEY_ARGS}, version='2').key)\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    import statistics

    here = tr.task(statistics.fmean, *eval(KEY_ARGS), version="2").key  # noqa: S307 - our literal
    assert out.stdout.strip() == here


def test_dict_order_does_not_change_a_key_but_values_types_function_and_version_do():
    import statistics

    key = tr.task(statistics.fmean, {"a": 1, "b": 2.0}).key
    assert tr.task(statistics.fmean, {"b": 2.0, "a": 1}).key == key
    different = [
        tr.task(statistics.fmean, {"a": 1, "b": 2.5}),
        tr.task(statistics.fmean, {"a": 1.0, "b": 2.0}),  # int vs float
        tr.task(statistics.fmean, {"a": True, "b": 2.0}),  # bool vs int
        tr.task(statistics.fmean, [("a", 1), ("b", 2.0)]),
        tr.task(statistics.median, {"a": 1, "b": 2.0}),
        tr.task(statistics.fmean, {"a": 1, "b": 2.0}, version="2"),
    ]
    keys = {key} | {t.key for t in different}
    assert len(keys) == 1 + len(different)
    assert tr.task(statistics.fmean, (1, 2)).key != tr.task(statistics.fmean, [1, 2]).key
    a = np.zeros(4)
    assert tr.task(statistics.fmean, a).key != tr.task(statistics.fmean, a.reshape(2, 2)).key
    assert tr.task(statistics.fmean, a).key != tr.task(statistics.fmean, a.astype("f4")).key


def test_task_refuses_what_it_cannot_key_or_a_worker_cannot_import():
    import statistics

    def nested(x):
        return x

    with pytest.raises(TypeError, match="lambda or defined inside a function"):
        tr.task(lambda x: x, 1)
    with pytest.raises(TypeError, match="lambda or defined inside a function"):
        tr.task(nested, 1)
    with pytest.raises(TypeError, match=r"task argument args\[0\]\[0\] of type .*object"):
        tr.task(statistics.fmean, (object(),))
