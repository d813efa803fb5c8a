"""Running the application as a user does (`python main.py ...` in a subprocess), and what the
live-loop tests share: a private copy of a trained home, a replay configuration, and homes that
are built once per test run and shared by every pytest-xdist worker."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run(
    *args: str, home: Path, extra_env: dict[str, str] | None = None, python: str = sys.executable
) -> subprocess.CompletedProcess:
    """Run `python *args` in the project directory with TRADING_HOME=home and no stdin; the pair
    and data source come from flags or `extra_env`, never from the caller's environment."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TICKER_LONG", "TICKER_SHORT", "DATA_SOURCE")
    }
    env.update({"TRADING_HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1", **(extra_env or {})})
    return subprocess.run(
        [python, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def copy_home(trained: Path, target: Path) -> Any:
    """A private copy of a trained TRADING_HOME (data and models; no live state yet)."""
    import constants as C

    for part in ("data", "models"):
        shutil.copytree(trained / part, target / part)
    return C.paths(target)


def built_once(tmp_path_factory: Any, recipe: str, build: Callable[[Path], None]) -> Path:
    """The folder that `build(folder)` fills, built once per test run: the first pytest-xdist
    worker to ask builds it under a file lock, the others wait and reuse it (training a model once
    instead of once per worker and module). `recipe` says what `build` makes, every setting
    included: it is the cache key, so two recipes never share a folder. The build goes to a
    temporary folder renamed into place, so a failed build leaves nothing for the next to reuse.
    The folder is shared: read it or copy it, never change it."""
    import filelock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's own folder, above each worker's (popen-gw0, popen-gw1)
    cache = base / "built-once"
    cache.mkdir(exist_ok=True)
    key = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    target = cache / key
    with filelock.FileLock(str(cache / f"{key}.lock")):
        if not target.exists():
            partial = cache / f"{key}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
            build(partial)
            partial.rename(target)
    return target


def trained_template(tmp_path_factory: Any, config: Any, pair: Any = None) -> Path:
    """The shared (read-only) TRADING_HOME with the bundled `pair` (default AAPL/MSFT) processed and
    `config`'s models (a train_model.TrainConfig) trained and registered; the training runs once
    per test run for each (pair, config), whichever test module or xdist worker asks first."""
    import constants as C

    pair = pair or C.Pair("AAPL", "MSFT")

    def build(folder: Path) -> None:
        import train_model as tm

        tm.train(pair, config, home=C.paths(folder).ensure())  # processes the bundled pair first

    return built_once(tmp_path_factory, f"bundled {pair} trained {config!r}", build)


def trained_copy(tmp_path_factory: Any, name: str, config: Any, pair: Any = None) -> Path:
    """A private copy of `trained_template(config, pair)` in a new temporary folder `name`."""
    target = tmp_path_factory.mktemp(name)
    shutil.copytree(trained_template(tmp_path_factory, config, pair), target, dirs_exist_ok=True)
    return target


def replay_config(start: str, end: str, **kw: Any) -> Any:
    """A live_trading.LiveConfig replaying the sessions from `start` to `end` inclusive (New York
    dates); every bar dated in that range is decided."""
    import pandas as pd

    import live_trading as lt

    ny = "America/New_York"
    return lt.LiveConfig(
        replay_start=pd.Timestamp(start).tz_localize(ny).tz_convert("UTC"),
        replay_end=(pd.Timestamp(end) + pd.Timedelta(days=1)).tz_localize(ny).tz_convert("UTC"),
        **kw,
    )


# --- Dask -----------------------------------------------------------------------------------------
def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, killed but not yet reaped, does not)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def worker_pids(client: Any) -> set[int]:
    """The worker processes' pids (LocalCluster's nannies run in this process)."""
    return set(client.run(os.getpid).values())


@contextlib.contextmanager
def local_cluster(n_workers: int) -> Iterator[Any]:
    """A client of a real `distributed.LocalCluster` of `n_workers` worker processes (one thread
    each); on exit the cluster is shut down and its worker processes are gone."""
    import logging

    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        pids = worker_pids(client)
        yield client
        pids |= worker_pids(client)  # a worker restarted after a kill
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in pids), "LocalCluster left processes behind"
