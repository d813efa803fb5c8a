"""The distributed scan as DEPLOYMENT.md sets it up: `./install.sh core`, then `.venv/bin/dask
scheduler` and `.venv/bin/dask worker` started as separate processes outside the checkout (so
the workers import the project from the install, never from their working folder), and
`main.py scan --scheduler` against them.

The venv is a real one made by install.sh, layered on the test's own venv: a `.pth` file lends it
the pinned dependencies (reinstalling 3 GB would take minutes) but not the project, which only
install.sh's step puts there. Its `dask` command is the test venv's console script with this venv's
interpreter, as pip would have written it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psutil
import pytest

from tests.helpers import ROOT, alive, run

TICKERS = ("AAPL", "MSFT", "KO")  # 3 pairs


@dataclass(frozen=True)
class Venv:
    """A venv in `path` whose `python` and `dask` are what a user runs."""

    path: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def dask(self) -> Path:
        return self.path / "bin" / "dask"


def _layered_venv(path: Path) -> Venv:
    """A venv with this test venv's dependencies (through a .pth file) and its `dask` command, but
    without the project."""
    subprocess.run(
        [sys._base_executable, "-m", "venv", "--without-pip", str(path)],  # type: ignore[attr-defined]
        check=True,
        timeout=60,
    )
    venv = Venv(path)
    site = Path(
        subprocess.check_output(
            [str(venv.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            text=True,
        ).strip()
    )
    (site / "_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    script = (Path(sys.executable).parent / "dask").read_text().splitlines(keepends=True)
    venv.dask.write_text(f"#!{venv.python}\n" + "".join(script[1:]))
    venv.dask.chmod(0o755)
    return venv


def _import_elsewhere(venv: Venv, cwd: Path) -> subprocess.CompletedProcess:
    """Where the venv's interpreter in `cwd` finds `task_runner` (the module a Dask worker first
    needs), without running it: its file, or exit 1 "No module named"."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = (
        "import importlib.util, sys; spec = importlib.util.find_spec('task_runner'); "
        "print(spec.origin) if spec else sys.exit(\"No module named 'task_runner'\")"
    )
    return subprocess.run(
        [str(venv.python), "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory) -> Venv:
    """A venv with the dependencies but without install.sh's project step."""
    return _layered_venv(tmp_path_factory.mktemp("bare") / ".venv")


@pytest.fixture(scope="module")
def installed_venv(tmp_path_factory) -> Venv:
    """A venv that `./install.sh core` has installed the project into (offline: the pinned build
    backend comes from the same indexes as every other package)."""
    venv = _layered_venv(tmp_path_factory.mktemp("installed") / ".venv")
    proc = subprocess.run(
        ["bash", str(ROOT / "install.sh"), "core"],
        env={**os.environ, "VENV": str(venv.path), "PYTHON": sys._base_executable},  # type: ignore[attr-defined]
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return venv


@pytest.fixture(scope="module")
def universe(tmp_path_factory, bundled) -> Path:
    """Three bundled tickers over 2018-2019: 3 pairs, 3 walk-forward windows of 252 + 63 bars."""
    path = tmp_path_factory.mktemp("universe") / "u.csv"
    bundled.close[list(TICKERS)].loc["2018":"2019"].to_csv(path, index_label="date")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@contextlib.contextmanager
def dask_cluster(venv: Venv, workdir: Path, nworkers: int) -> Iterator[str]:
    """DEPLOYMENT.md's two commands, each in its own folder outside the checkout (port: a free one,
    the dashboard: any free port); yields the scheduler's address once `nworkers` workers are up.
    On exit both are stopped (SIGTERM, as `systemctl stop` or Ctrl-C) and every process they
    started is gone."""
    from distributed import Client

    address = f"tcp://127.0.0.1:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    commands = {
        "scheduler": [str(venv.dask), "scheduler", "--host", "127.0.0.1",
                      "--port", address.rsplit(":", 1)[1], "--dashboard-address", ":0"],
        "worker": [str(venv.dask), "worker", address, "--nworkers", str(nworkers),
                   "--nthreads", "1", "--dashboard-address", ":0"],
    }  # fmt: skip
    procs: list[subprocess.Popen] = []
    pids: set[int] = set()
    try:
        for name, command in commands.items():
            folder = workdir / name
            folder.mkdir(parents=True, exist_ok=True)
            with (folder / "log.txt").open("w") as log:  # the child keeps its own descriptor
                procs.append(subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=log))
        deadline = time.monotonic() + 120
        with Client(address, timeout=60, set_as_default=False) as client:
            while len(client.scheduler_info()["workers"]) < nworkers:
                assert time.monotonic() < deadline, (workdir / "worker" / "log.txt").read_text()
                assert all(p.poll() is None for p in procs), "a dask command exited"
                time.sleep(0.2)
        for p in procs:
            pids |= {p.pid, *(c.pid for c in _descendants(p.pid))}
        yield address
    finally:
        for p in reversed(procs):  # workers first, so they do not wait for a lost scheduler
            pids |= {c.pid for c in _descendants(p.pid)}
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        deadline = time.monotonic() + 15
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in pids), "the dask commands left processes behind"


def _scan(venv: Venv, home: Path, universe: Path, *extra: str) -> subprocess.CompletedProcess:
    args = ("main.py", "scan", "--universe", f"csv:{universe}", "--no-charts", "--no-cache")
    return run(*args, *extra, home=home, python=str(venv.python))


def _scan_folder(home: Path) -> Path:
    (folder,) = (home / "results").glob("scan-*")
    return folder


def test_the_installed_project_imports_from_another_folder(bare_venv, installed_venv, tmp_path):
    before = _import_elsewhere(bare_venv, tmp_path)
    assert before.returncode != 0 and "No module named" in before.stderr  # the layering lends none
    after = _import_elsewhere(installed_venv, tmp_path)
    assert after.returncode == 0, after.stderr
    assert Path(after.stdout.strip()) == ROOT / "task_runner.py"  # editable: this checkout's code


def test_a_scan_on_the_documented_dask_cluster_equals_the_local_scan(
    installed_venv, universe, tmp_path
):
    with ThreadPoolExecutor(1) as pool:  # the local scan runs while the cluster starts
        running = pool.submit(_scan, installed_venv, tmp_path / "local", universe, "--jobs", "1")
        with dask_cluster(installed_venv, tmp_path / "cluster", nworkers=2) as address:
            remote = _scan(installed_venv, tmp_path / "remote", universe, "--scheduler", address)
        local = running.result()
    assert local.returncode == 0, local.stderr
    assert remote.returncode == 0, remote.stderr
    assert "Traceback" not in remote.stderr
    assert "on the Dask cluster" in remote.stdout, remote.stdout
    mine, theirs = _scan_folder(tmp_path / "local"), _scan_folder(tmp_path / "remote")
    table = pd.read_csv(mine / "pairs.csv")
    assert len(table) == 3 and table["windows"].min() >= 3
    assert (mine / "pairs.csv").read_bytes() == (theirs / "pairs.csv").read_bytes()
    pd.testing.assert_frame_equal(
        pd.read_parquet(mine / "pairs.parquet"), pd.read_parquet(theirs / "pairs.parquet")
    )
    top = [json.loads((f / "summary.json").read_text())["top"] for f in (mine, theirs)]
    assert top[0] == top[1]


def test_a_worker_that_cannot_import_the_project_is_named_in_one_line(
    bare_venv, universe, tmp_path
):
    with dask_cluster(bare_venv, tmp_path / "cluster", nworkers=1) as address:
        proc = _scan(bare_venv, tmp_path, universe, "--scheduler", address)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: a Dask worker cannot import"), err
    assert "'task_runner'" in err[0] and "./install.sh" in err[0] and address in err[0]
    assert "unexpected error" not in proc.stderr and "Traceback" not in proc.stderr
    assert not list((tmp_path / "results").glob("scan-*"))  # nothing half-written
