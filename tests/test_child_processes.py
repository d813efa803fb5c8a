"""Children die with their parent: `child_processes` on its own, then the real entry points
(`main.py scan --jobs 2` killed mid-run, `main.py dashboard` stopped and killed)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

import child_processes as cp
from tests.helpers import ROOT, alive

pytestmark = pytest.mark.skipif(not cp.supported(), reason="PR_SET_PDEATHSIG is Linux only")

#: Seconds a child may take to go after its parent: the kernel signals at once, Python and
#: Streamlit need a moment to close.
GONE_WITHIN_S = 5.0


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "TRADING_HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1"}


def _wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.1)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _assert_gone(pids: set[int], timeout_s: float = GONE_WITHIN_S) -> None:
    deadline = time.monotonic() + timeout_s
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [p for p in pids if alive(p)]
    for p in left:  # leave nothing behind for the next test, then fail
        psutil.Process(p).kill()
    assert not left, f"still alive {timeout_s} s after the parent: {left}"


def _launcher(code: str, tmp_path: Path) -> subprocess.Popen:
    """A Python parent running `code` with child_processes imported as `cp`."""
    script = tmp_path / "parent.py"
    script.write_text("import child_processes as cp\n" + textwrap.dedent(code))
    return subprocess.Popen(
        [sys.executable, str(script)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )


# --- child_processes on its own -------------------------------------------------------------------
def test_run_child_returns_the_childs_exit_code():
    assert cp.run_child([sys.executable, "-c", "raise SystemExit(3)"]) == 3


def test_a_child_of_a_killed_parent_gets_the_signal_and_ends(tmp_path):
    parent = _launcher("cp.run_child(['sleep', '60'])", tmp_path)
    _wait(lambda: _descendants(parent.pid), 10, "the child")
    (child,) = _descendants(parent.pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    _assert_gone({child.pid})


def test_a_stop_is_forwarded_and_a_child_that_ignores_it_is_killed_after_the_grace(tmp_path):
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    parent = _launcher(
        f"""
        import sys
        print('started', flush=True)
        sys.exit(cp.run_child([sys.executable, '-c', {stubborn!r}], grace_s=0.5))
        """,
        tmp_path,
    )
    assert parent.stdout.readline().strip() == "started"
    _wait(lambda: _descendants(parent.pid), 10, "the child")
    (child,) = _descendants(parent.pid)
    time.sleep(0.5)  # the child has installed its handler
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=10) == 128 + signal.SIGKILL
    _assert_gone({child.pid}, timeout_s=1)


def test_exit_with_parent_exits_when_the_parent_is_already_gone():
    """The race between fork and prctl: a parent pid that is no longer the parent."""
    proc = subprocess.run(
        [sys.executable, "-c", "import child_processes as cp; cp.exit_with_parent(1); print('on')"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1 and "on" not in proc.stdout


# --- The entry points -----------------------------------------------------------------------------
def test_a_killed_scan_leaves_no_worker_process(tmp_path, bundled):
    universe = tmp_path / "u.csv"
    bundled.close[["AAPL", "MSFT", "KO"]].loc["2015":"2019"].to_csv(universe, index_label="date")
    scan = subprocess.Popen(
        [sys.executable, "main.py", "scan", "--universe", f"csv:{universe}", "--jobs", "2",
         "--no-cache", "--no-charts"],
        cwd=ROOT, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def workers() -> list[psutil.Process]:
        return [p for p in _descendants(scan.pid) if "loky" in " ".join(p.cmdline())]

    try:
        _wait(lambda: len(workers()) >= 2 or scan.poll() is not None, 120, "2 worker processes")
        assert scan.poll() is None, "the scan ended before its workers were seen"
        children = {p.pid for p in _descendants(scan.pid)}  # workers and loky's trackers
    finally:
        scan.send_signal(signal.SIGKILL)
        scan.wait()
    assert len(children) >= 2
    _assert_gone(children)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture
def dashboard(tmp_path):
    """`main.py dashboard` on a free port, serving; yields (launcher, port, its child pids)."""
    pytest.importorskip("streamlit")
    port = _free_port()
    launcher = subprocess.Popen(
        [sys.executable, "main.py", "dashboard", "--port", str(port)],
        cwd=ROOT, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    children: set[int] = set()
    try:
        _wait(lambda: _healthy(port) or launcher.poll() is not None, 60, "the dashboard")
        assert launcher.poll() is None, "the dashboard launcher exited"
        children |= {p.pid for p in _descendants(launcher.pid)}
        yield launcher, port, children
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        for pid in children:  # after a failed test: leave no server behind
            if alive(pid):
                psutil.Process(pid).kill()


def test_a_stopped_dashboard_frees_its_port_and_leaves_no_child(dashboard):
    launcher, port, children = dashboard
    assert children
    launcher.send_signal(signal.SIGTERM)  # `kill PID`, `systemctl stop`
    assert launcher.wait(timeout=15) == 0
    _assert_gone(children)
    assert _port_free(port)


def test_a_killed_dashboard_launcher_takes_its_server_with_it(dashboard):
    launcher, port, children = dashboard
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    _assert_gone(children)
    _wait(lambda: _port_free(port), GONE_WITHIN_S, f"port {port} to be free")
