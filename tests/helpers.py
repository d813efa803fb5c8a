"""Running the application as a user does (`python main.py ...` in a subprocess), and what the
live-loop tests share: a private copy of a trained home, a replay configuration."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
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
