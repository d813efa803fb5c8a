"""Take docs/dashboard.png: the dashboard over a replayed paper session, full page, 1280 px wide.

    .venv/bin/python docs/take_screenshot.py [--home DIR] [--out docs/dashboard.png]

Without --home it builds a throw-away TRADING_HOME with the project's own code (bundled prices,
an XGBoost model, `live --replay 2022-01-03 2022-03-31`, a backtest from 2022-01-03, a few
alerts). It starts `streamlit run dashboard.py` on 127.0.0.1, waits for /_stcore/health, drives
headless Chromium through the DevTools protocol (a plain `chromium --screenshot` catches
Streamlit's grey placeholders), waits until every panel has drawn, and captures the whole page.

Needs Chromium (`apt-get install -y chromium`) and the `websockets` package (in constraints.txt).
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: JavaScript that is true once every panel has drawn: the last panel's verdict is on the page,
#: the plotly charts are drawn and no skeleton placeholder or running indicator is left.
READY_JS = """
(() => {
  const text = document.body ? document.body.innerText : "";
  const charts = document.querySelectorAll(".js-plotly-plot .main-svg").length;
  const skeletons = document.querySelectorAll('[data-testid="stSkeleton"]').length;
  const running = document.querySelector('[data-testid="stStatusWidget"]');
  return text.includes("Positions and equity") && text.includes("verified:")
    && charts >= %d && skeletons === 0 && !running;
})()
"""
#: Height of the page's content in CSS pixels (Streamlit scrolls an inner container, not body).
HEIGHT_JS = """
(() => {
  const main = document.querySelector('[data-testid="stMain"]');
  const block = document.querySelector('[data-testid="stMainBlockContainer"]');
  if (!block) return document.body.scrollHeight;
  return Math.ceil(block.getBoundingClientRect().bottom + (main ? main.scrollTop : 0));
})()
"""
#: Where the sidebar's right edge is (it slides in and out): the page is settled when this stops
#: moving.
SIDEBAR_JS = """
(() => {
  const bar = document.querySelector('[data-testid="stSidebar"]');
  return bar ? [bar.getAttribute("aria-expanded"), bar.getBoundingClientRect().right] : null;
})()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(url: str, timeout_s: float) -> str:
    """The body of `url` once it answers 200, polling until `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (localhost)
                return response.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {timeout_s:g} s") from None
            time.sleep(0.25)


def build_home(root: Path) -> None:
    """A TRADING_HOME after a replayed paper session, a backtest and a few alerts."""
    sys.path.insert(0, str(ROOT))
    os.environ["TRADING_HOME"] = str(root)
    import pandas as pd

    import alert_dispatch
    import backtest_strategy as bs
    import constants as C
    import live_trading as lt
    import process_stock_data as psd
    import train_model as tm

    home, pair = C.paths(root).ensure(), C.resolve_pair()
    psd.process("bundled", pair, home=home)
    tm.train(pair, tm.TrainConfig(models=("xgb",)), home=home)
    config = lt.LiveConfig(
        replay_start=pd.Timestamp("2022-01-03", tz="America/New_York"),
        replay_end=pd.Timestamp("2022-03-31", tz="America/New_York"),
    )
    lt.run_trading_loop(config=config, pair=pair, home=home)
    bs.backtest(bs.BacktestRequest(pair, start="2022-01-03", write_charts=False), home=home)
    for severity, title, message in (
        ("INFO", "Model registered", "xgb model registered and active"),
        ("WARNING", "Data feed slow", "quote for MSFT took 4.2 s"),
        ("HIGH", "Positions differ from the broker", "1 difference; the broker's positions win"),
    ):
        alert_dispatch.send(severity, "screenshot", title, message, home=root)
    alert_dispatch.close_all(timeout_s=10)


@contextmanager
def running(
    command: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Start `command` in its own process group, output to `log`; stop that group afterwards."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(  # noqa: S603 (our own fixed command line)
            command,
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        try:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, 9)


class DevTools:
    """A minimal Chrome DevTools protocol client over one page's (open) websocket."""

    def __init__(self, ws: Any):
        self._ws = ws
        self._ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        self._ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=60))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")


def wait_settled(devtools: DevTools, timeout_s: float) -> None:
    """Until the sidebar has stopped sliding (two equal readings half a second apart)."""
    deadline = time.monotonic() + timeout_s
    last = devtools.evaluate(SIDEBAR_JS)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = devtools.evaluate(SIDEBAR_JS)
        if now == last:
            return
        last = now


def find_chromium() -> str:
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("no Chromium found: install it with `apt-get install -y chromium`")


def wait_until(devtools: DevTools, expression: str, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not devtools.evaluate(expression):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the page did not show {what} within {timeout_s:g} s")
        time.sleep(0.5)


def viewport(devtools: DevTools, width: int, height: int) -> None:
    devtools.call(
        "Emulation.setDeviceMetricsOverride",
        width=width,
        height=height,
        deviceScaleFactor=1,
        mobile=False,
    )


def capture(url: str, out: Path, width: int, min_charts: int, timeout_s: float) -> None:
    chromium = find_chromium()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        command = [
            chromium,
            "--headless=new",
            f"--remote-debugging-port={port}",
            f"--user-data-dir={profile}",
            f"--window-size={width},1000",
            "--hide-scrollbars",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-gpu",
            "about:blank",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.insert(1, "--no-sandbox")  # Chromium refuses to run as root with the sandbox
        with running(command, Path(profile) / "chromium.log"):
            wait_for(f"http://127.0.0.1:{port}/json/version", 30)
            pages = json.loads(wait_for(f"http://127.0.0.1:{port}/json/list", 10))
            page = next(p for p in pages if p.get("type") == "page")
            from websockets.sync.client import connect

            with connect(page["webSocketDebuggerUrl"], max_size=64 * 2**20) as ws:
                devtools = DevTools(ws)
                devtools.call("Page.enable")
                viewport(devtools, width, 1000)
                devtools.call("Page.navigate", url=url)
                wait_until(devtools, READY_JS % min_charts, timeout_s, "every panel")
                wait_settled(devtools, 10)
                # Grow the viewport to the whole page (Streamlit scrolls an inner container), let
                # plotly re-lay out, and measure again until the height holds.
                height = 0
                for _ in range(5):
                    measured = int(devtools.evaluate(HEIGHT_JS)) + 40
                    if measured == height:
                        break
                    height = measured
                    viewport(devtools, width, height)
                    time.sleep(1.5)
                    wait_until(devtools, READY_JS % min_charts, timeout_s, "every panel")
                    wait_settled(devtools, 10)
                shot = devtools.call(
                    "Page.captureScreenshot",
                    format="png",
                    captureBeyondViewport=False,
                    clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
                )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(shot["data"]))
    print(f"wrote {out} ({width} x {height} px)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="TRADING_HOME to show (default: build one)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("--width", type=int, default=1280, help="page width in px (1280)")
    parser.add_argument("--min-charts", type=int, default=4, help="plotly charts to wait for (4)")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds to wait (90)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="dashboard-home-") as scratch:
        home = args.home
        if home is None:
            home = Path(scratch)
            print(f"building a TRADING_HOME in {home} (process, train xgb, replay, backtest)")
            build_home(home)
        port = free_port()
        env = {**os.environ, "TRADING_HOME": str(home.resolve()), "DASHBOARD_REFRESH_S": "0"}
        command = [
            sys.executable, "-m", "streamlit", "run", str(ROOT / "dashboard.py"),
            "--server.port", str(port),
            "--server.address", "127.0.0.1",
            "--server.headless", "true",
            "--browser.gatherUsageStats", "false",
        ]  # fmt: skip
        log = Path(scratch) / "streamlit.log"
        with running(command, log, env=env, cwd=ROOT):  # ROOT/.streamlit/config.toml applies
            try:
                wait_for(f"http://127.0.0.1:{port}/_stcore/health", 60)
            except TimeoutError:
                tail = log.read_text(errors="replace")[-2000:]
                raise SystemExit(f"streamlit did not start:\n{tail}") from None
            capture(
                f"http://127.0.0.1:{port}/", args.out, args.width, args.min_charts, args.timeout
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
