"""The live loop's failure paths, as an operator meets them (issue 23): a withheld flip is
completed at the next bar; market-data failures are audited, alerted and retried like broker
failures; SIGTERM during a hanging start-up ends at once; `status` shows the clock the loop used;
a pair is traded both legs or not at all; `live --once` refusing stale data writes nothing.

Against the local Alpaca (tests/local_alpaca.py: a real HTTP server on 127.0.0.1, with fault
injection) or the paper broker; our code runs unmodified."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("alpaca")
pytest.importorskip("pytest_httpserver")

from pytest_httpserver import HTTPServer

import backtest_strategy as bs
import constants as C
import live_trading as lt
import pair_engine as pe
import process_stock_data as psd
import risk_management as rm
from error_handling import ConfigurationError, KeysRejected
from tests.helpers import ROOT, run
from tests.local_alpaca import BARS, FakeAlpaca, serving
from tests.test_live_alpaca import (
    NEXT_CLOSE,
    NEXT_OPEN,
    OPEN_NOW,
    PAIR,
    alerts,
    alpaca_broker,
    env,
    held,
    live_process,
    new_home,
    own,
    records,
    run_once,
    signal_file,
    wait_for,
)
from trading_api import FillPolicy

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


# --- Item 14: both legs or none -----------------------------------------------------------------
def test_both_legs_sized_refuses_only_a_pair_left_with_one_leg():
    assert pe.both_legs_sized(0.25, -0.25, 1, -1)
    assert pe.both_legs_sized(0.25, -0.25, 0, 0)  # neither leg: no position, no pair to break
    assert pe.both_legs_sized(0.0, 0.0, 0, 0)  # flat
    assert not pe.both_legs_sized(0.25, -0.25, 1, 0)  # the dearer leg got no share
    assert not pe.both_legs_sized(-0.25, 0.25, 0, 2)


@pytest.mark.parametrize("engine", ["interpreted", "compiled"])
def test_a_backtest_with_capital_for_one_leg_only_trades_neither_and_says_why(table, engine):
    pytest.importorskip("numba")
    closes = table[["AAPL_close", "MSFT_close"]].loc["2022-01-03":"2022-03-31"]
    closes.columns = ["AAPL", "MSFT"]  # AAPL ~ $170, MSFT ~ $300: $250 a leg buys 1 and 0
    weights = np.full((len(closes), 2), np.nan)
    weights[0] = (0.25, -0.25)
    weights[20] = (-0.25, 0.25)
    config = pe.TradingConfig(initial_capital=1_000.0)

    result = bs.run_backtest(closes, weights, config, log_rejections=False, engine=engine)

    assert len(result.trades) == 0  # before: AAPL +1 and MSFT 0, a one-legged "pair"
    assert (result.equity[["qty_AAPL", "qty_MSFT"]] == 0).all().all()
    assert [r.reason for r in result.rejections] == ["one_legged", "one_legged"]
    assert "MSFT 0 shares" in result.rejections[0].message


def test_the_live_loop_with_capital_for_one_leg_only_sends_no_order_and_says_why(
    home, alpaca, table, tmp_path
):
    alpaca.cash = 1_000.0
    summary = run_once(home, alpaca, signal_file(tmp_path, 0.2, -0.2), table)  # 1.5, 0.8

    assert alpaca.posted == [] and held(alpaca) == {}  # before: buy 1 AAPL, nothing of MSFT
    (record,) = records(home, "pair_not_sized")
    assert record.payload["target"] == {"AAPL": 1, "MSFT": 0}
    assert any("traded both legs or not at all" in r for r in summary.idle_reasons)
    assert lt.read_positions(home.positions_file).last_processed_bar.startswith("2022-12-28")


# --- Item 7: a withheld flip is completed -------------------------------------------------------
def test_a_withheld_flip_is_completed_at_the_next_bar_that_says_keep(home, alpaca, table, tmp_path):
    """A state file asks -1 on 2022-12-27 (and keeps it after): the reduce does not fill in
    time, so it is cancelled and the increase withheld; on 2022-12-28 the file says keep, and
    the loop compares the target with what is held: it completes the flip."""
    alpaca.positions = {"AAPL": [85.0, alpaca.prices["AAPL"]], "MSFT": [-46.0, 240.0]}
    own(home, alpaca)  # the home's own shares, not held apart (item 12)
    signals = tmp_path / "states.csv"
    signals.write_text("date,state\n2022-12-27,-1\n")
    alpaca.clock_now = pd.Timestamp("2022-12-28 15:00", tz="UTC")  # 10:00 New York
    alpaca.fill = False  # the reduce rests unfilled
    slow = alpaca_broker(alpaca, fill_policy=FillPolicy(timeout_s=0.3, poll_s=0.05))
    run_once(home, alpaca, str(signals), table.loc[:"2022-12-27"], broker=slow)
    assert held(alpaca) == {"AAPL": 85, "MSFT": -46}  # withheld (correct)
    assert records(home, "increase_withheld")
    after_first = json.loads(home.positions_file.read_text())

    alpaca.clock_now, alpaca.fill = OPEN_NOW, True
    summary = run_once(home, alpaca, str(signals), table)

    assert held(alpaca)["AAPL"] < 0 < held(alpaca)["MSFT"]  # before: +85/-46 for good
    assert not any("says keep" in r for r in summary.idle_reasons)
    assert held(alpaca) == after_first["owed_target"]  # what the withheld decision aimed at
    assert lt.read_positions(home.positions_file).owed_target is None


# --- Item 10: SIGTERM while the broker hangs at start-up ----------------------------------------
@pytest.mark.parametrize("path", ["/v2/clock", "/v2/account"])
def test_sigterm_while_the_broker_hangs_at_start_up_ends_at_once_writing_only_stop(
    home, alpaca, tmp_path, monkeypatch, path
):
    """The clock hangs before the `start` record (the stale-data check asks it), the account
    after it (reconciliation): either way the stop ends the wait within a second or two, no
    request follows it, and the audit gains nothing but the `stop` record."""
    import tests.local_alpaca as local

    monkeypatch.setattr(local, "STALL_S", 60.0)  # an answer held back a minute: a hang
    alpaca.fail("GET", path, *["stall"] * 10)
    proc = live_process(home, alpaca, "--signals", signal_file(tmp_path))
    try:
        wait_for(lambda: alpaca.hits["GET", path] >= 1)
        time.sleep(0.5)  # inside the hanging request
        before = [r.event for r in records(home)]
        hits = alpaca.requests
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        proc.kill()
        alpaca.release.set()

    assert proc.returncode == 0, err
    assert took < 5.0, f"SIGTERM took {took:.1f} s: {err}"  # before: 10 s a hanging request
    assert alpaca.requests == hits  # nothing asked of the broker after the signal
    events = [r.event for r in records(home)]
    assert events[: len(before)] == before and events[len(before) :] == ["stop"]
    assert records(home)[-1].payload["reason"] == "SIGTERM"
    risk = rm.RiskManager(state_path=home.risk_state_file, home=home.home, alerts=False)
    assert not risk.halted  # a stop is not a broker failure


# --- Item 9: market-data failures are failures --------------------------------------------------
@pytest.fixture
def data_alpaca(alpaca) -> FakeAlpaca:
    """The local Alpaca serving the bundled AAPL/MSFT daily closes as its market data."""
    alpaca.bars = psd.load_bundled().close[["AAPL", "MSFT"]]
    return alpaca


def data_env(home: C.Paths, fake: FakeAlpaca, **extra: str) -> dict[str, str]:
    return {**env(home, fake), "DATA_SOURCE": "alpaca", **extra}


def live_once(home: C.Paths, fake: FakeAlpaca, signals: str, **extra: str):
    return run(
        "main.py", "live", "--broker", "alpaca", "--once", "--signals", signals,
        home=home.home, extra_env=data_env(home, fake, **extra),
    )  # fmt: skip


def events(home: C.Paths) -> list[str]:
    return [r.event for r in records(home)]


def test_one_market_data_503_at_start_up_is_retried_and_the_run_trades(home, data_alpaca, tmp_path):
    data_alpaca.fail("GET", BARS, 503)
    done = live_once(home, data_alpaca, signal_file(tmp_path))

    assert done.returncode == 0, done.stderr  # before: exit 3 on the one 503
    assert data_alpaca.hits["GET", BARS] >= 3  # the failed request, then both legs
    assert len(data_alpaca.posted) == 2 and "data_failure" not in events(home)


def test_a_market_data_outage_at_start_up_halts_alerts_and_records_stop(
    home, data_alpaca, tmp_path
):
    data_alpaca.fail("GET", BARS, *[503] * 50)
    done = live_once(home, data_alpaca, signal_file(tmp_path))

    assert done.returncode == 3, done.stderr
    assert "market data is unavailable" in done.stderr.strip().splitlines()[-1]
    assert data_alpaca.hits["GET", BARS] == 3  # three attempts, none after
    assert events(home) == ["start", "data_failure", "halt", "stop"]  # before: none
    (failure,) = records(home, "data_failure")
    assert "HTTP 503" in failure.payload["error"] and not failure.payload["keys_rejected"]
    titles = {a["title"]: a["severity"] for a in alerts(home)}
    assert titles["Market data unavailable"] == "HIGH"
    assert titles["Trading halted"] == "CRITICAL"
    risk = rm.RiskManager(state_path=home.risk_state_file, home=home.home, alerts=False)
    assert risk.halted and "market data failing at start-up" in risk.halt_reason
    assert data_alpaca.posted == []


def test_rejected_market_data_keys_at_start_up_say_so_alert_and_are_audited(
    home, data_alpaca, tmp_path
):
    done = live_once(home, data_alpaca, signal_file(tmp_path), ALPACA_SECRET_KEY="wrong")

    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "rejected the API keys" in last and "Traceback" not in done.stderr
    assert data_alpaca.hits["GET", BARS] == 1  # no retry can fix a key
    assert events(home) == ["start", "data_failure", "stop"]  # before: nothing recorded
    assert records(home, "data_failure")[0].payload["keys_rejected"] is True
    assert any(a["title"] == "Market data keys rejected" for a in alerts(home))
    assert issubclass(KeysRejected, ConfigurationError)


def test_a_loop_keeps_running_through_a_market_data_outage_at_start_up(home, data_alpaca, tmp_path):
    data_alpaca.fail("GET", BARS, *[503] * 4)  # the first fetch's 3 attempts and one more
    environ = {k: v for k, v in os.environ.items() if k not in ("TICKER_LONG", "TICKER_SHORT")}
    environ.update(data_env(home, data_alpaca))
    args = ["live", "--broker", "alpaca", "--signals", signal_file(tmp_path), "--interval", "0.5"]
    proc = subprocess.Popen(
        [sys.executable, "main.py", *args], cwd=ROOT, env=environ, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: home.heartbeat_file.exists() or proc.poll() is not None)
        alive = proc.poll() is None  # before: exit 3 at the first 503
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()

    assert alive and proc.returncode == 0, err
    assert json.loads(home.heartbeat_file.read_text())["status"] in ("running", "stopped")
    assert events(home)[:2] == ["start", "data_failure"] and events(home)[-1] == "stop"
    assert data_alpaca.hits["GET", BARS] >= 6  # retried until the bars came


def test_a_loop_fetches_the_next_days_bar_through_a_data_outage_and_trades_it(
    home, data_alpaca, tmp_path
):
    """A loop started on 2022-12-28 (bars to 12-27) looks for new bars on each new day: on
    12-29 the fetch first fails (an outage: audited, the loop goes on), then brings the 12-28
    bar, whose instruction (appended to the signal file meanwhile) is traded."""
    bars = data_alpaca.bars
    data_alpaca.bars = bars.loc[:"2022-12-27"]
    data_alpaca.clock_now = pd.Timestamp("2022-12-28 15:00", tz="UTC")
    signals = tmp_path / "signals.csv"
    signals.write_text("date,AAPL,MSFT\n2022-12-27,0,0\n")  # flat: nothing to do
    environ = {k: v for k, v in os.environ.items() if k not in ("TICKER_LONG", "TICKER_SHORT")}
    environ.update(data_env(home, data_alpaca))
    args = ["live", "--broker", "alpaca", "--signals", str(signals), "--interval", "0.5"]
    proc = subprocess.Popen(
        [sys.executable, "main.py", *args], cwd=ROOT, env=environ, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: home.heartbeat_file.exists())
        assert data_alpaca.posted == []
        signals.write_text("date,AAPL,MSFT\n2022-12-27,0,0\n2022-12-28,0.3,-0.3\n")
        data_alpaca.fail("GET", BARS, *[503] * 3)  # the next look's three attempts
        data_alpaca.bars = bars
        data_alpaca.clock_now = OPEN_NOW  # 2022-12-29: a new day, the 12-28 bar has closed
        wait_for(lambda: len(data_alpaca.posted) == 2 or proc.poll() is not None)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()

    assert proc.returncode == 0, err
    assert held(data_alpaca)["AAPL"] > 0 > held(data_alpaca)["MSFT"]  # before: never fetched
    (failure,) = records(home, "data_failure")
    assert failure.payload["at_start"] is False and "HTTP 503" in failure.payload["error"]
    assert lt.read_positions(home.positions_file).last_processed_bar.startswith("2022-12-28")
