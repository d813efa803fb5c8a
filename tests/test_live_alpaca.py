"""The live loop against a local Alpaca (tests/local_alpaca.py: a real HTTP server on 127.0.0.1
answering with alpaca-py's field names) that fills asynchronously and partially, refuses what
real Alpaca refuses (a flip's opening sell while the long is still held: 403 "insufficient qty
available") and fails on demand. Our loop, alpaca-py and requests run unmodified.

What is specified: a flip completes reduce-then-increase; positions.json is the broker's
confirmed state; every broker fill is audited exactly once, after a crash too (recovered); the
broker's clock decides; a bar refused for a closed market is retried, one refused while halted
is audited as skipped; a position outside the pair never blocks it; the orders breaker opens on
failing POSTs whatever GETs succeed, and halts with the cause; an outage at start-up halts;
SIGTERM in an outage exits 0 after the `stop` record and `status` tells dead from running; two
homes on one account never share a client order id.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

pytest.importorskip("alpaca")
pytest.importorskip("pytest_httpserver")

from pytest_httpserver import HTTPServer

import audit_logging
import constants as C
import home_identity
import live_trading as lt
import pair_engine as pe
import process_stock_data as psd
import risk_management as rm
from error_handling import ConfigurationError
from tests.helpers import ROOT, run
from tests.local_alpaca import KEY_ID, ORDERS, SECRET, FakeAlpaca, serving
from trading_api import AlpacaBroker, BrokerUnavailable, FillPolicy, OrderIdConflict

pytestmark = pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning")

PAIR = C.Pair("AAPL", "MSFT")
BAR = "2022-12-28"  # the last bundled session
OPEN_NOW = pd.Timestamp("2022-12-29 15:00", tz="UTC")  # 10:00 New York, a session day
NEXT_OPEN = pd.Timestamp("2022-12-30 14:30", tz="UTC")
NEXT_CLOSE = pd.Timestamp("2022-12-29 21:00", tz="UTC")


# --- Fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def processed(tmp_path_factory) -> Path:
    """A home with the bundled pair processed (no model: these runs trade a signal file)."""
    root = tmp_path_factory.mktemp("processed")
    psd.process("bundled", PAIR, home=C.paths(root).ensure())
    return root


@pytest.fixture(scope="module")
def table(processed) -> pd.DataFrame:
    return psd.load_processed(PAIR, C.paths(processed))[0]


def new_home(processed: Path, target: Path) -> C.Paths:
    import shutil

    shutil.copytree(processed / "data", target / "data")
    return C.paths(target)


@pytest.fixture
def home(processed, tmp_path, monkeypatch) -> C.Paths:
    for var in ("ALERT_WEBHOOK_URL", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    return new_home(processed, tmp_path / "home")


@pytest.fixture(scope="module")
def _server() -> Iterator[tuple[HTTPServer, dict[str, FakeAlpaca]]]:
    with serving() as served:
        yield served


@pytest.fixture
def alpaca(_server, table) -> Iterator[FakeAlpaca]:
    """Alpaca at 10:00 New York on 2022-12-29 with the pair at the 2022-12-28 closes: short 60
    AAPL, long 30 MSFT. Orders fill 0.3 s after the POST, in two parts; Alpaca's quantity rule
    is on."""
    server, current = _server
    last = table.loc[BAR]
    prices = {"AAPL": float(last["AAPL_close"]), "MSFT": float(last["MSFT_close"]), "KO": 62.5}
    fake = FakeAlpaca(
        fill_after_s=0.3,
        partial=True,
        qty_rule=True,
        prices=prices,
        positions={"AAPL": (-60, prices["AAPL"]), "MSFT": (30, prices["MSFT"])},
        clock_now=OPEN_NOW,
        next_open=NEXT_OPEN,
        next_close=NEXT_CLOSE,
        stamp_fraction=pd.Timedelta(0),
    )
    fake.url = server.url_for("").rstrip("/")
    current["fake"] = fake
    yield fake
    fake.release.set()


def signal_file(tmp_path: Path, long_weight: float = 0.3, short_weight: float = -0.3) -> str:
    """Long AAPL / short MSFT at 30 % of equity each on the last bar: a flip of both legs."""
    path = tmp_path / "signals.csv"
    path.write_text(f"date,AAPL,MSFT\n{BAR},{long_weight},{short_weight}\n")
    return str(path)


def alpaca_broker(fake: FakeAlpaca, **kw: Any) -> AlpacaBroker:
    kw.setdefault("timeout_s", 2.0)
    kw.setdefault("backoff_s", 0.0)
    kw.setdefault("fill_policy", FillPolicy(timeout_s=5.0, poll_s=0.05))
    return AlpacaBroker(KEY_ID, SECRET, trading_url=fake.url, data_url=fake.url, **kw)


def run_once(home: C.Paths, fake: FakeAlpaca, signals: str, table: pd.DataFrame, **kw: Any):
    """One `--once` iteration in this process, on the processed bundled bars."""
    broker = kw.pop("broker", None) or alpaca_broker(fake)
    config = lt.LiveConfig(once=True, signal_file=signals, interval_s=1.0)
    return lt.run_trading_loop(
        config=config, pair=PAIR, home=home, broker=broker, feed=lt.BarFeed(table, PAIR), **kw
    )


def own(home: C.Paths, fake: FakeAlpaca) -> None:
    """`positions adopt`: the shares the account holds in the pair become the home's own (a new
    home holds them apart)."""
    home_identity.adopt(home.ensure(), alpaca_broker(fake), PAIR.tickers, None)


def records(home: C.Paths, event: str | None = None) -> list[audit_logging.AuditRecord]:
    log = audit_logging.AuditLog(home.audit_log)
    return [r for r in log.records() if event is None or r.event == event]


def alerts(home: C.Paths) -> list[dict[str, Any]]:
    path = home.alerts_log
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def held(fake: FakeAlpaca) -> dict[str, int]:
    return {s: int(q) for s, (q, _) in fake.positions.items() if q}


def assert_each_fill_audited_once(home: C.Paths, fake: FakeAlpaca) -> None:
    """The audit's fill records account for every share the broker filled, none twice: per
    order, the audited cumulative counts rise through the broker's (a poll may see two fill
    events at once, never one twice) to its total."""
    audited: dict[str, list[int]] = {}
    for r in records(home, "fill"):
        audited.setdefault(r.payload["client_order_id"], []).append(r.payload["filled_qty"])
        assert r.payload["qty"] > 0
    made: dict[str, list[int]] = {}
    for f in fake.fills:
        made.setdefault(f["client_order_id"], []).append(f["filled_qty"])
    assert set(audited) == set(made)
    for cid, seen in audited.items():
        assert seen == sorted(set(seen)) and set(seen) <= set(made[cid])
        assert seen[-1] == made[cid][-1]


def env(home: C.Paths, fake: FakeAlpaca) -> dict[str, str]:
    return {
        "ALPACA_API_KEY": KEY_ID,
        "ALPACA_SECRET_KEY": SECRET,
        "ALPACA_TRADING_URL": fake.url,
        "ALPACA_DATA_URL": fake.url,
        "ALERT_WEBHOOK_URL": "",
        "TRADING_HOME": str(home.home),
        "PYTHONDONTWRITEBYTECODE": "1",
        "NO_PROXY": "127.0.0.1",
    }


def live_process(home: C.Paths, fake: FakeAlpaca, *args: str) -> subprocess.Popen:
    import os

    environ = {k: v for k, v in os.environ.items() if k not in ("TICKER_LONG", "TICKER_SHORT")}
    environ.update(env(home, fake))
    return subprocess.Popen(
        [sys.executable, "main.py", "live", "--broker", "alpaca", *args],
        cwd=ROOT,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def settled(fake: FakeAlpaca) -> FakeAlpaca:
    """The fake after applying the fills that are due (as its next request would)."""
    with fake.lock:
        fake.settle()
    return fake


def wait_for(condition: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


# --- Asynchronous fills ---------------------------------------------------------------------------
def test_a_flip_with_async_partial_fills_reduces_then_increases(home, alpaca, table, tmp_path):
    own(home, alpaca)
    alpaca.fill_after_s = 1.0  # half at 0.5 s, the rest at 1 s: each part seen as it comes
    signals = signal_file(tmp_path)
    summary = run_once(home, alpaca, signals, table)

    assert summary.errors == 0
    target = held(alpaca)
    assert target["AAPL"] > 0 > target["MSFT"]  # both legs flipped, no 403 on the way
    sides = [(p["symbol"], p["side"]) for p in alpaca.posted]
    assert sides == [("AAPL", "buy"), ("MSFT", "sell"), ("AAPL", "buy"), ("MSFT", "sell")]
    assert [float(p["qty"]) for p in alpaca.posted[:2]] == [60, 30]  # the closes, then the opens
    assert set(Counter(f["client_order_id"] for f in alpaca.fills).values()) == {2}  # partials
    # positions.json is the broker's confirmed state, nothing left open.
    saved = lt.read_positions(home.positions_file)
    assert {s: p.qty for s, p in saved.positions.items()} == target
    assert saved.open_orders == () and saved.last_processed_bar.startswith(BAR)
    assert saved.cash == pytest.approx(alpaca.cash, abs=0.01)
    assert_each_fill_audited_once(home, alpaca)
    # Partial fills are audited as they come (each order's half is seen on its own).
    assert any(r.payload["filled_qty"] < r.payload["order_qty"] for r in records(home, "fill"))
    assert len(records(home, "order_intent")) == 4

    # A restart: the loop's own fills are no difference; the bar's signal is not audited again.
    again = run_once(home, alpaca, signals, table)
    assert again.orders == 0
    assert again.idle_reasons == [f"no new bar since {BAR} (decided already)"]
    (_, second) = records(home, "reconciliation")
    assert second.payload["differences"] == []
    assert not [a for a in alerts(home) if a["source"] == "reconciliation"]
    assert len(records(home, "signal")) == 1
    assert len(alpaca.posted) == 4


def test_a_reduce_unfilled_at_the_bound_is_cancelled_and_the_increase_withheld(
    home, alpaca, table, tmp_path
):
    own(home, alpaca)
    alpaca.fill = False  # orders rest unfilled
    broker = alpaca_broker(alpaca, fill_policy=FillPolicy(timeout_s=0.3, poll_s=0.05))
    run_once(home, alpaca, signal_file(tmp_path), table, broker=broker)

    assert [p["side"] for p in alpaca.posted] == ["buy", "sell"]  # the closes only
    assert {o["status"] for o in alpaca.orders} == {"canceled"}
    (withheld,) = records(home, "increase_withheld")
    assert withheld.payload["withheld"] == [
        o for o in withheld.payload["withheld"] if o.startswith(("buy", "sell"))
    ]
    assert len(records(home, "order_done")) == 2
    assert held(alpaca) == {"AAPL": -60, "MSFT": 30}  # nothing moved, nothing left working
    assert lt.read_positions(home.positions_file).open_orders == ()


def test_a_reduce_left_open_is_saved_as_open_and_resolved_at_the_next_start(
    home, alpaca, table, tmp_path
):
    own(home, alpaca)
    alpaca.fill_after_s = 1.5
    alpaca.partial = False
    broker = alpaca_broker(
        alpaca, fill_policy=FillPolicy(timeout_s=0.2, poll_s=0.05, unfilled_reduce="leave")
    )
    signals = signal_file(tmp_path)
    run_once(home, alpaca, signals, table, broker=broker)

    saved = lt.read_positions(home.positions_file)
    assert [(o["symbol"], o["status"]) for o in saved.open_orders] == [
        ("AAPL", "new"),
        ("MSFT", "new"),
    ]
    assert {s: p.qty for s, p in saved.positions.items()} == {"AAPL": -60, "MSFT": 30}
    assert records(home, "increase_withheld") and not records(home, "fill")

    wait_for(lambda: len(settled(alpaca).fills) == 2)
    run_once(home, alpaca, signals, table)  # the same bar: decided already, only resolved

    saved = lt.read_positions(home.positions_file)
    assert saved.open_orders == () and held(alpaca) == {}
    assert {s: p.qty for s, p in saved.positions.items()} == {}
    assert all(r.payload["recovered"] for r in records(home, "fill"))
    assert_each_fill_audited_once(home, alpaca)
    (_, second) = records(home, "reconciliation")
    assert second.payload["differences"] == [] and second.payload["recovered_fills"] == 2


def test_a_sigkill_right_after_a_post_is_recovered_without_a_double(home, alpaca, tmp_path):
    signals = signal_file(tmp_path)
    adopted = run(
        "main.py",
        "positions",
        "adopt",
        "--broker",
        "alpaca",
        home=home.home,
        extra_env=env(home, alpaca),
    )
    assert adopted.returncode == 0, adopted.stderr
    alpaca.fail("POST", ORDERS, "lost")  # the first order is taken; its answer never comes
    proc = live_process(home, alpaca, "--once", "--signals", signals, "--fill-timeout", "5")
    try:
        wait_for(lambda: len(alpaca.posted) == 1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    wait_for(lambda: len(settled(alpaca).fills) == 2)  # it fills while we are down
    status = run("main.py", "status", home=home.home, extra_env=env(home, alpaca))
    assert "STOPPED (not running: it died" in status.stdout

    again = run(
        "main.py",
        "live",
        "--broker",
        "alpaca",
        "--once",
        "--signals",
        signals,
        home=home.home,
        extra_env=env(home, alpaca),
    )

    assert again.returncode == 0, again.stderr
    assert max(Counter(p["client_order_id"] for p in alpaca.posted).values()) == 1  # no double
    assert held(alpaca)["AAPL"] > 0 > held(alpaca)["MSFT"]
    assert_each_fill_audited_once(home, alpaca)
    first = alpaca.posted[0]["client_order_id"]
    recovered = [r for r in records(home, "fill") if r.payload["client_order_id"] == first]
    assert recovered and all(r.payload["recovered"] for r in recovered)
    assert sum(r.payload["qty"] for r in recovered) == 60  # found at start-up, audited once
    saved = lt.read_positions(home.positions_file)
    assert {s: p.qty for s, p in saved.positions.items()} == held(alpaca)


# --- The broker's clock ---------------------------------------------------------------------------
def test_the_brokers_open_market_trades_when_the_local_calendar_is_closed(
    home, alpaca, table, tmp_path
):
    own(home, alpaca)
    alpaca.clock_now = pd.Timestamp("2022-12-31 15:00", tz="UTC")  # a Saturday for NYSE
    run_once(home, alpaca, signal_file(tmp_path), table)
    assert len(alpaca.posted) == 4
    assert lt.read_positions(home.positions_file).last_processed_bar.startswith(BAR)


def test_the_brokers_closed_market_waits_and_the_bar_is_taken_at_its_open(
    home, alpaca, table, tmp_path
):
    own(home, alpaca)
    alpaca.is_open = False  # the local calendar says open at 10:00 New York on a session day
    signals = signal_file(tmp_path)
    summary = run_once(home, alpaca, signals, table)
    assert alpaca.posted == []
    assert summary.idle_reasons == [  # said, not silent
        "market closed by alpaca's clock at 2022-12-29 15:00 UTC; next open 2022-12-30 14:30 UTC"
    ]
    assert json.loads(home.heartbeat_file.read_text())["market_open"] is False
    assert lt.read_positions(home.positions_file).last_processed_bar is None

    alpaca.is_open = True
    run_once(home, alpaca, signals, table)
    assert len(alpaca.posted) == 4


class ClosingAlpaca(FakeAlpaca):
    """Open for the first `opens` clock requests, closed after: the market closes between the
    loop's check and the risk gate's."""

    opens = 1

    @property  # type: ignore[override]
    def is_open(self) -> bool:
        self.opens -= 1
        return self.opens >= 0

    @is_open.setter
    def is_open(self, value: bool) -> None:
        pass


def test_a_bar_refused_for_a_closed_market_is_deferred_then_traded(
    _server, alpaca, home, table, tmp_path
):
    _, current = _server
    closing = ClosingAlpaca(
        fill_after_s=0.1,
        qty_rule=True,
        prices=alpaca.prices,
        positions={s: tuple(p) for s, p in alpaca.positions.items()},
        clock_now=OPEN_NOW,
        next_open=NEXT_OPEN,
        next_close=NEXT_CLOSE,
        stamp_fraction=pd.Timedelta(0),
    )
    closing.url = alpaca.url
    current["fake"] = closing
    own(home, closing)
    signals = signal_file(tmp_path)
    run_once(home, closing, signals, table)

    assert closing.posted == []
    (deferred,) = records(home, "bar_deferred")
    assert deferred.payload["bar"].startswith(BAR)
    assert lt.read_positions(home.positions_file).last_processed_bar is None
    assert not lt.equity_log_path(home, "paper").exists()  # no equity row for an undecided bar

    closing.opens = 10  # open at the next try
    run_once(home, closing, signals, table)
    assert len(closing.posted) == 4
    assert lt.read_positions(home.positions_file).last_processed_bar.startswith(BAR)


# --- Positions outside the pair -------------------------------------------------------------------
def test_a_foreign_position_is_reported_and_does_not_block_the_pair(home, alpaca, table, tmp_path):
    own(home, alpaca)
    alpaca.positions["KO"] = [5.0, 60.0]  # bought by hand
    run_once(home, alpaca, signal_file(tmp_path), table)

    assert {p["symbol"] for p in alpaca.posted} == {"AAPL", "MSFT"}
    assert held(alpaca)["KO"] == 5 and held(alpaca)["AAPL"] > 0
    saved = lt.read_positions(home.positions_file)
    assert set(saved.positions) == {"AAPL", "MSFT"}
    assert saved.foreign["KO"].qty == 5 and saved.foreign["KO"].market_price == 62.5
    assert json.loads(home.heartbeat_file.read_text())["foreign_positions"] == {"KO": 5}
    (report,) = records(home, "foreign_positions")
    assert report.payload["positions"]["KO"]["value"] == pytest.approx(312.5)
    assert any(a["source"] == "foreign_positions" and "KO" in a["message"] for a in alerts(home))
    assert not records(home, "risk_decision") or all(
        r.payload["accepted"] for r in records(home, "risk_decision")
    )
    status = run("main.py", "status", home=home.home, extra_env=env(home, alpaca))
    assert "outside the pair" in status.stdout and "KO +5" in status.stdout


# --- Breakers and halts ---------------------------------------------------------------------------
def test_failing_posts_between_good_gets_open_the_orders_breaker_and_halt(
    home, alpaca, table, tmp_path
):
    alpaca.positions.clear()  # flat: the first order is an opening one
    broker = alpaca_broker(alpaca, attempts=1)  # one POST per run: failures spread over runs
    signals = signal_file(tmp_path)
    for _ in range(3):
        alpaca.fail("POST", ORDERS, 500)
        with pytest.raises(BrokerUnavailable, match="HTTP 500"):
            run_once(home, alpaca, signals, table, broker=broker)

    assert broker.breakers["orders"].state.value == "open"
    assert broker.breakers["account"].state.value == "closed"  # its GETs kept succeeding
    risk = rm.RiskManager(state_path=home.risk_state_file, home=home.home, alerts=False)
    assert risk.halted and "HTTP 500" in risk.halt_reason and "circuit" not in risk.halt_reason
    halted = [a for a in alerts(home) if a["title"] == "Trading halted"]
    assert halted and halted[0]["severity"] == "CRITICAL" and "HTTP 500" in halted[0]["message"]
    assert [a["severity"] for a in alerts(home) if a["source"] == "live_loop"] == ["HIGH"] * 3
    assert alpaca.orders == []

    # The broker is back; the halt holds: the bar is skipped, and the skip says why.
    summary = run_once(home, alpaca, signals, table)
    assert alpaca.orders == []
    assert any(r.startswith("trading halted since") for r in summary.idle_reasons)
    (skipped,) = records(home, "bar_skipped")
    assert skipped.payload["reason"].startswith("halted: broker alpaca failing")


def test_an_order_failing_all_its_attempts_in_a_once_run_halts_and_alerts(
    home, alpaca, table, tmp_path
):
    alpaca.positions.clear()
    alpaca.fail("POST", ORDERS, 500, 500, 500)
    with pytest.raises(BrokerUnavailable, match="gave up after 3 attempt"):
        run_once(home, alpaca, signal_file(tmp_path), table)

    risk = rm.RiskManager(state_path=home.risk_state_file, home=home.home, alerts=False)
    assert risk.halted and "alpaca orders: alpaca POST /v2/orders: HTTP 500" in risk.halt_reason
    severities = {a["title"]: a["severity"] for a in alerts(home)}
    assert severities["Trading halted"] == "CRITICAL"
    assert severities["Live iteration failed"] == "HIGH"
    assert records(home)[-1].event == "stop"


# --- Drawdown -------------------------------------------------------------------------------------
@pytest.mark.parametrize("delay", [1, 2])
def test_a_drawdown_liquidation_goes_out_as_late_as_an_instruction_would(
    home, alpaca, table, tmp_path, delay
):
    """An equity peak of $200,000 on record: the account's ~$100,000 breaches on the newest
    close. Alpaca fills in the session after it, one bar of the fill delay by itself: with the
    default delay of 1 the liquidation goes out in this session (as the bar's instruction
    would), with 2 it waits one bar, the breach's bar kept in risk_state.json. The halt starts
    now either way: the signal's flip is refused."""
    own(home, alpaca)  # the account's -60/+30 are the home's (a fresh home holds them apart)
    rm.RiskManager(state_path=home.risk_state_file, home=home.home, alerts=False).raise_peak(
        200_000.0
    )
    trading = pe.TradingConfig(fill_delay_bars=delay)
    config = lt.LiveConfig(
        once=True, signal_file=signal_file(tmp_path), interval_s=1.0, trading=trading
    )
    lt.run_trading_loop(
        config=config,
        pair=PAIR,
        home=home,
        broker=alpaca_broker(alpaca),
        feed=lt.BarFeed(table, PAIR),
    )
    risk = rm.RiskManager(state_path=home.risk_state_file, home=home.home, alerts=False)
    assert risk.halted and risk.halt_reason.startswith("drawdown")
    sides = [(p["symbol"], p["side"], float(p["qty"])) for p in alpaca.posted]
    if delay == 1:
        assert sides == [("AAPL", "buy", 60.0), ("MSFT", "sell", 30.0)]  # to flat, no flip
        wait_for(lambda: held(settled(alpaca)) == {})
        assert risk.drawdown_bar is None
    else:
        assert sides == [] and held(alpaca) == {"AAPL": -60, "MSFT": 30}
        assert str(risk.drawdown_bar.date()) == BAR


def test_an_outage_at_start_up_halts_with_its_cause(home, table, tmp_path):
    with socket.socket() as sock:  # a port on 127.0.0.1 nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    broker = AlpacaBroker(KEY_ID, SECRET, trading_url=url, data_url=url, backoff_s=0.0)
    config = lt.LiveConfig(once=True, signal_file=signal_file(tmp_path))
    with pytest.raises(BrokerUnavailable, match="connection failed"):
        lt.run_trading_loop(
            config=config, pair=PAIR, home=home, broker=broker, feed=lt.BarFeed(table, PAIR)
        )

    risk = rm.RiskManager(state_path=home.risk_state_file, home=home.home, alerts=False)
    assert risk.halted and "at start-up" in risk.halt_reason
    assert "connection failed" in risk.halt_reason
    assert records(home)[-1].event == "stop"
    assert any(a["severity"] == "CRITICAL" and a["title"] == "Trading halted" for a in alerts(home))


def test_sigterm_during_an_outage_exits_0_and_status_says_stopped(home, alpaca, tmp_path):
    proc = live_process(home, alpaca, "--signals", signal_file(tmp_path), "--interval", "0.5")
    try:
        wait_for(lambda: home.heartbeat_file.exists())
        alpaca.fail("GET", "/v2/clock", *[500] * 1000)  # the broker goes down
        hits = alpaca.hits["GET", "/v2/clock"]
        wait_for(lambda: alpaca.hits["GET", "/v2/clock"] >= hits + 4)
        running = run("main.py", "status", home=home.home, extra_env=env(home, alpaca))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()

    assert proc.returncode == 0, err
    assert f"RUNNING (pid {proc.pid}" in running.stdout
    last = records(home)[-1]
    assert last.event == "stop" and last.payload["reason"] == "SIGTERM"
    assert records(home, "broker_failure")
    status = run("main.py", "status", home=home.home, extra_env=env(home, alpaca))
    assert "loop: STOPPED;" in status.stdout
    assert "HTTP 500" in status.stdout  # the last failure the loop recorded


def test_sigterm_during_a_start_up_outage_exits_0_after_the_stop_record(home, alpaca, tmp_path):
    alpaca.fail("GET", "/v2/account", *[500] * 1000)  # down from the start
    proc = live_process(home, alpaca, "--signals", signal_file(tmp_path))
    try:
        wait_for(lambda: alpaca.hits["GET", "/v2/account"] >= 1)  # now in its retries
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()

    assert proc.returncode == 0, err
    last = records(home)[-1]
    assert last.event == "stop" and last.payload["reason"] == "SIGTERM"
    assert alpaca.hits["GET", "/v2/account"] < 3  # the retries were cut short
    risk = rm.RiskManager(state_path=home.risk_state_file, home=home.home, alerts=False)
    assert not risk.halted  # after the stop nothing but the `stop` record (issue 23, item 10)


# --- Client order ids -----------------------------------------------------------------------------
def test_two_homes_on_one_account_never_share_an_id(processed, alpaca, table, tmp_path):
    first = new_home(processed, tmp_path / "a")
    second = new_home(processed, tmp_path / "b")
    alpaca.positions.clear()
    signals = signal_file(tmp_path)
    run_once(first, alpaca, signals, table)
    ids_first = {o["client_order_id"] for o in alpaca.orders}
    alpaca.positions.clear()  # flattened by hand: the second home makes the same decision

    run_once(second, alpaca, signals, table)

    ids_second = {o["client_order_id"] for o in alpaca.orders} - ids_first
    assert len(ids_first) == len(ids_second) == 2
    assert {c.rsplit("-", 1)[0] for c in ids_first} == {first.order_prefix()}
    assert {c.rsplit("-", 1)[0] for c in ids_second} == {second.order_prefix()}
    assert first.order_prefix() != second.order_prefix()
    assert held(alpaca)["AAPL"] > 0  # the second home traded: it adopted none of the first's


# --- One home, one account ------------------------------------------------------------------------
def test_a_copied_home_does_not_trade_until_claimed_and_then_takes_a_new_tag(
    home, alpaca, table, tmp_path
):
    """`cp -a` of a traded home copies its order tag: the copy refuses to trade (one line, exit
    2, nothing written) until `home claim` gives it a tag of its own."""
    alpaca.positions.clear()
    signals = signal_file(tmp_path)
    run_once(home, alpaca, signals, table)
    copied = C.paths(tmp_path / "copy")
    shutil.copytree(home.home, copied.home, symlinks=True)
    before = {p: p.read_bytes() for p in (copied.audit_log, copied.positions_file)}
    posted = len(alpaca.posted)

    refused = run(
        "main.py", "live", "--broker", "alpaca", "--once", "--signals", signals,
        home=copied.home, extra_env=env(copied, alpaca),
    )  # fmt: skip

    assert refused.returncode == 2, refused.stderr
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert "a copy or a move" in refused.stderr and "home claim --broker alpaca" in refused.stderr
    assert {p: p.read_bytes() for p in before} == before and len(alpaca.posted) == posted

    claimed = run(
        "main.py", "home", "claim", "--broker", "alpaca", home=copied.home,
        extra_env=env(copied, alpaca),
    )  # fmt: skip
    assert claimed.returncode == 0, claimed.stderr
    assert copied.order_tag() != home.order_tag()
    (claim,) = records(copied, "home_claimed")
    assert claim.payload["previous"]["order_tag"] == home.order_tag()
    assert claim.payload["unowned"] == {}  # what positions.json holds stays the copy's own
    again = run(
        "main.py", "live", "--broker", "alpaca", "--once", "--signals", signals,
        home=copied.home, extra_env=env(copied, alpaca),
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert records(copied, "reconciliation")[-1].payload["differences"] == []


def test_an_id_the_broker_has_for_another_order_halts_and_is_never_taken_as_done(
    processed, alpaca, table, tmp_path
):
    """Two homes that share a tag (copied before homes recorded themselves) make the same ids
    for different orders: the second home's order is refused loudly, not taken as filled."""
    first = new_home(processed, tmp_path / "a")
    first.order_tag()
    twin = C.paths(tmp_path / "b")
    shutil.copytree(first.home, twin.home)  # the same data/order_tag
    alpaca.positions.clear()
    run_once(first, alpaca, signal_file(tmp_path), table)
    posted = list(alpaca.posted)

    with pytest.raises(OrderIdConflict, match="another home sends this home's ids"):
        run_once(twin, alpaca, signal_file(tmp_path, 0.5, -0.5), table)

    assert alpaca.posted == posted  # nothing sent for the twin, nothing it took as its own
    risk = rm.RiskManager(state_path=twin.risk_state_file, home=twin.home, alerts=False)
    assert risk.halted and "already has client order id" in risk.halt_reason
    halted = [a for a in alerts(twin) if a["title"] == "Trading halted"]
    assert halted and halted[0]["severity"] == "CRITICAL"
    (failure,) = records(twin, "broker_failure")
    assert "not this home's" in failure.payload["error"]
    assert not records(twin, "fill")


def test_a_home_refuses_another_venue_naming_both_and_how_to_start_a_new_home(
    home, alpaca, table, tmp_path
):
    """A paper replay then Alpaca in one home made each broker wipe the other's positions."""
    signals = signal_file(tmp_path)
    replay = run(
        "main.py", "live", "--replay", "2022-12-27", "2022-12-28", "--signals", signals,
        home=home.home, extra_env=env(home, alpaca),
    )  # fmt: skip
    assert replay.returncode == 0, replay.stderr
    written = {p: p.read_bytes() for p in (home.positions_file, home.audit_log)}

    switched = run(
        "main.py", "live", "--broker", "alpaca", "--once", "--signals", signals,
        home=home.home, extra_env=env(home, alpaca),
    )  # fmt: skip

    assert switched.returncode == 2, switched.stderr
    line = switched.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert "simulated account sim-" in line and f"alpaca account {alpaca.account_id}" in line
    assert "TRADING_HOME=/path/to/new-home python main.py live --broker alpaca" in line
    assert alpaca.posted == [] and {p: p.read_bytes() for p in written} == written
    assert not [a for a in alerts(home) if a["source"] == "reconciliation"]


def test_a_home_refuses_another_account_of_its_venue(home, alpaca, table, tmp_path):
    alpaca.positions.clear()
    signals = signal_file(tmp_path)
    run_once(home, alpaca, signals, table)
    recorded = alpaca.account_id
    alpaca.account_id = "0b5a6f3e-0000-4000-8000-000000000001"  # other keys: another account

    with pytest.raises(ConfigurationError, match=f"alpaca account {recorded}.*0b5a6f3e-0000"):
        run_once(home, alpaca, signals, table)
    # A paper run in the Alpaca home is refused the same way, before it writes anything.
    with pytest.raises(ConfigurationError, match="this start reaches simulated account sim-"):
        lt.run_trading_loop(
            config=lt.LiveConfig(once=True, signal_file=signals, interval_s=1.0),
            pair=PAIR,
            home=home,
            feed=lt.BarFeed(table, PAIR),
        )
    assert not home.paper_broker_file.exists()


def test_a_fresh_home_holds_the_accounts_pair_shares_apart_until_adopted(
    home, alpaca, table, tmp_path
):
    """AAPL +10 bought before the first start is not the home's: it buys its whole target,
    says so, and owns the 10 only after `positions adopt` (no difference reported then)."""
    alpaca.positions.clear()
    alpaca.positions["AAPL"] = [10.0, alpaca.prices["AAPL"]]
    signals = signal_file(tmp_path)
    run_once(home, alpaca, signals, table)

    bought = sum(int(p["qty"]) for p in alpaca.posted if p["symbol"] == "AAPL")
    assert [p["side"] for p in alpaca.posted if p["symbol"] == "AAPL"] == ["buy"]
    saved = lt.read_positions(home.positions_file)
    assert saved.positions["AAPL"].qty == bought  # the home's own: what it bought
    assert held(alpaca)["AAPL"] == bought + 10  # the 10 are left alone
    (said,) = [a for a in alerts(home) if a["source"] == "home_identity"]
    assert "AAPL +10" in said["message"] and "positions adopt" in said["message"]
    assert records(home, "home_recorded")[0].payload["unowned"] == {"AAPL": 10}

    adopted = run(
        "main.py", "positions", "adopt", "--broker", "alpaca", home=home.home,
        extra_env=env(home, alpaca),
    )  # fmt: skip
    assert adopted.returncode == 0, adopted.stderr
    assert "adopted: AAPL +10" in adopted.stdout
    run_once(home, alpaca, signals, table)
    assert records(home, "reconciliation")[-1].payload["differences"] == []
    assert lt.read_positions(home.positions_file).positions["AAPL"].qty == bought + 10
    assert not [a for a in alerts(home) if a["source"] == "reconciliation"]
