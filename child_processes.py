"""Child processes that die with their parent: the dashboard's Streamlit server and the local
worker processes of `scan --jobs N` / `sweep --jobs N`.

Invariants:
- **No orphans.** A child started here, or a process that calls `exit_with_parent` at its start,
  receives `PARENT_DEATH_SIGNAL` from the kernel when its parent dies, whatever kills the parent
  (SIGKILL included): Linux's `prctl(PR_SET_PDEATHSIG)`. A parent that is already gone when the
  child gets there (the race between fork and prctl) makes the child exit at once.
- **A stop reaches the child.** `run_child` passes SIGTERM, SIGHUP and SIGINT on to the child
  (SIGINT after 2 s, if a terminal's Ctrl-C has not already stopped it) and waits for it, so
  `kill PID`, `systemctl stop` or a closed terminal stop the server, not only the launcher, and
  the port is free when the launcher exits.
- Standard library only (ctypes, signal, subprocess). Elsewhere than Linux, `exit_with_parent` does
  nothing (`supported()` says so) and `run_child` still forwards the signals.

The kernel's signal follows the *thread* that started the child: a child started from a thread
that ends before the process gets the signal then. `run_child` starts its child from the calling
(main) thread; loky starts its workers from the thread that submits work and, to replace a worker
that timed out, from its manager thread, which lives as long as the pool.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

#: Sent to a child when its parent dies: it lets Streamlit and Python close cleanly.
PARENT_DEATH_SIGNAL = signal.SIGTERM
#: Seconds `run_child` waits for the child after forwarding a stop, before it kills it.
STOP_GRACE_S = 10.0
#: Seconds between two looks at the child while waiting for it.
_POLL_S = 0.2
#: Seconds before a SIGINT is passed on: a Ctrl-C in the terminal reaches the child as well (same
#: process group), and a second one would interrupt its clean stop.
_INTERRUPT_DELAY_S = 2.0
#: Linux's prctl option (linux/prctl.h).
_PR_SET_PDEATHSIG = 1
#: Signals `run_child` forwards to its child.
_FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def supported() -> bool:
    """Whether this platform kills a child when its parent dies (Linux only)."""
    return sys.platform.startswith("linux")


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's prctl (None where unsupported), resolved once; `_child_setup` resolves it in the
    parent, so a forked child does not load a library."""
    if not supported():
        return None
    return ctypes.CDLL(None, use_errno=True).prctl


def exit_with_parent(parent_pid: int | None = None, sig: int = PARENT_DEATH_SIGNAL) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies; exit at once if the
    parent (`parent_pid`, when given: its pid before the fork) is already gone. Call it at the
    start of a child: a worker initializer (`initargs=(os.getpid(),)`), a `preexec_fn`. A no-op
    where unsupported."""
    prctl = _prctl()
    if prctl is None:
        return
    if prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # the parent died before prctl: nobody would send the signal now


def _child_setup() -> Callable[[], None] | None:
    """The `preexec_fn` that ties a child to this process (None where unsupported)."""
    if _prctl() is None:
        return None
    return functools.partial(exit_with_parent, os.getpid())


class _Forwarder:
    """While installed, SIGTERM, SIGHUP and SIGINT to this process are recorded (signal, time) for
    `run_child` to pass on; the previous handlers come back after."""

    def __init__(self) -> None:
        self.received: list[tuple[int, float]] = []
        self._previous: dict[int, Any] = {}

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.received.append((signum, time.monotonic()))

    def __enter__(self) -> _Forwarder:
        self._previous = {s: signal.signal(s, self._record) for s in _FORWARDED}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _send(child: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        child.send_signal(signum)


def run_child(
    command: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    grace_s: float = STOP_GRACE_S,
) -> int:
    """Run `command` as a child that dies with this process, pass stop signals on to it and wait
    for it. Returns its exit code, or 128 + the signal number when a signal ended it (the shell's
    convention); a child still running `grace_s` after the first stop is killed. Call it from the
    main thread (signal handlers)."""
    with _Forwarder() as forwarder:
        child = subprocess.Popen(list(command), cwd=cwd, preexec_fn=_child_setup())  # noqa: S603
        passed_on = 0
        while True:
            try:
                code = child.wait(timeout=_POLL_S)
                break
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            for signum, at in forwarder.received[passed_on:]:
                if signum == signal.SIGINT and now < at + _INTERRUPT_DELAY_S:
                    break  # a terminal's Ctrl-C reached the child too: let it stop on its own
                _send(child, signum)
                passed_on += 1
            if forwarder.received and now >= forwarder.received[0][1] + grace_s:
                child.kill()
    return 128 - code if code < 0 else code
