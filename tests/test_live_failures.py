"""The live loop's failure paths, as an operator meets them (issue 23): a withheld flip is
completed at the next bar; market-data failures are audited, alerted and retried like broker
failures; SIGTERM during a hanging start-up ends at once; `status` shows the clock the loop used;
a pair is traded both legs or not at all; `live --once` refusing stale data writes nothing.

Against the local Alpaca (tests/local_alpaca.py: a real HTTP server on 127.0.0.1, with fault
injection) or the paper broker; our code runs unmodified."""

from __future__ import annotations

import hashlib
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("alpaca")
pytest.importorskip("pytest_httpserver")

from pytest_httpserver import HTTPServer

import constants as C
import process_stock_data as psd
from tests.helpers import run
from tests.local_alpaca import FakeAlpaca, serving
from tests.test_live_alpaca import (
    NEXT_CLOSE,
    NEXT_OPEN,
    OPEN_NOW,
    PAIR,
    env,
    live_process,
    new_home,
    signal_file,
    wait_for,
)

pytestmark = pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning")


# --- Fixtures (as tests/test_live_alpaca.py's) ---------------------------------------------------
@pytest.fixture(scope="module")
def processed(tmp_path_factory) -> Path:
    """A home with the bundled pair processed (no model: these runs trade a signal file)."""
    root = tmp_path_factory.mktemp("processed")
    psd.process("bundled", PAIR, home=C.paths(root).ensure())
    return root


@pytest.fixture(scope="module")
def table(processed) -> pd.DataFrame:
    return psd.load_processed(PAIR, C.paths(processed))[0]


@pytest.fixture
def home(processed, tmp_path, monkeypatch) -> C.Paths:
    for var in ("ALERT_WEBHOOK_URL", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    return new_home(processed, tmp_path / "home")


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[HTTPServer, dict[str, FakeAlpaca]]]:
    with serving() as served:
        yield served


@pytest.fixture
def alpaca(server, table) -> Iterator[FakeAlpaca]:
    """Alpaca at 10:00 New York on 2022-12-29, the pair at the 2022-12-28 closes, flat; orders
    fill at once; Alpaca's quantity rule is on."""
    http, current = server
    last = table.loc["2022-12-28"]
    prices = {"AAPL": float(last["AAPL_close"]), "MSFT": float(last["MSFT_close"])}
    fake = FakeAlpaca(
        qty_rule=True,
        prices=prices,
        clock_now=OPEN_NOW,
        next_open=NEXT_OPEN,
        next_close=NEXT_CLOSE,
        stamp_fraction=pd.Timedelta(0),
    )
    fake.url = http.url_for("").rstrip("/")
    current["fake"] = fake
    yield fake
    fake.release.set()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- Item 15: a refusal writes nothing ----------------------------------------------------------
def test_live_once_on_stale_bundled_data_writes_nothing_but_the_lock(processed, tmp_path):
    home = C.paths(tmp_path / "fresh")
    (tmp_path / "fresh" / "data").mkdir(parents=True)
    parquet = home.processed_file(PAIR)
    for suffix in (".parquet", ".json"):  # an earlier `process`, a day old
        src = C.paths(processed).processed_file(PAIR).with_suffix(suffix)
        parquet.with_suffix(suffix).write_bytes(src.read_bytes())
    before = {p: (_sha(p), p.stat().st_mtime_ns) for p in (parquet, parquet.with_suffix(".json"))}

    proc = run("main.py", "live", "--once", home=home.home, extra_env={"ALERT_WEBHOOK_URL": ""})

    assert proc.returncode == 2, proc.stderr
    assert "end on 2022-12-28" in proc.stderr.strip().splitlines()[-1]
    assert {p: (_sha(p), p.stat().st_mtime_ns) for p in before} == before  # not rewritten
    written = sorted(str(p.relative_to(home.home)) for p in home.home.rglob("*") if p.is_file())
    assert written == [
        "data/live.lock",
        "data/processed_AAPL_MSFT.json",
        "data/processed_AAPL_MSFT.parquet",
        "logs/trading.log",
    ]


# --- Item 13: status shows the clock the loop used ----------------------------------------------
def test_status_shows_the_brokers_clock_the_running_loop_decided_on(home, alpaca, tmp_path):
    # Alpaca says open on 2022-12-29 whatever the local calendar says about today.
    proc = live_process(home, alpaca, "--signals", signal_file(tmp_path), "--interval", "60")
    try:
        wait_for(lambda: home.heartbeat_file.exists())
        running = run("main.py", "status", home=home.home, extra_env=env(home, alpaca))
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    stopped = run("main.py", "status", home=home.home, extra_env=env(home, alpaca))

    beat = json.loads(home.heartbeat_file.read_text())
    assert beat["market_open"] is True and beat["clock_source"] == "alpaca's clock"
    assert "market: OPEN by alpaca's clock at 2022-12-29T15:00:00+00:00" in running.stdout
    assert "local NYSE calendar now:" in running.stdout  # the other clock, labelled
    assert "now by the local NYSE calendar" in stopped.stdout  # no loop: the calendar now
    assert "the loop last saw the market open by alpaca's clock" in stopped.stdout
