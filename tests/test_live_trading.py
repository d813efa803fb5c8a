"""The live loop on replayed bundled history with the simulated broker: market hours, persisted
positions, the audit chain, reconciliation, SIGTERM, one instance per home, the dead man's switch,
and crash safety under SIGKILL."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import audit_logging
import constants as C
import live_trading as lt
import process_stock_data as psd
import train_model as tm
from data_validation import market_clock
from tests.helpers import ROOT, copy_home, replay_config, run, trained_copy

PAIR = C.Pair("AAPL", "MSFT")
NY = "America/New_York"


@pytest.fixture(scope="session")
def trained_home(tmp_path_factory) -> Path:
    """A TRADING_HOME with the processed bundled pair and a tiny real XGBoost model."""
    return trained_copy(tmp_path_factory, "trained", tm.TrainConfig(models=("xgb",)), PAIR)


@pytest.fixture
def home(trained_home, tmp_path) -> C.Paths:
    return copy_home(trained_home, tmp_path)


def env_for(home: C.Paths) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TICKER_LONG", "TICKER_SHORT")}
    env.update({"TRADING_HOME": str(home.home), "PYTHONDONTWRITEBYTECODE": "1"})
    env.pop("ALERT_WEBHOOK_URL", None)
    return env


def main(*args: str, home: C.Paths, extra_env: dict[str, str] | None = None):
    """`python main.py *args` on `home`, no webhook (tests.helpers.run: no stdin, no pair env)."""
    return run(
        "main.py", *args, home=home.home, extra_env={"ALERT_WEBHOOK_URL": "", **(extra_env or {})}
    )


def live_process(home: C.Paths, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "main.py", "live", *args],
        cwd=ROOT,
        env=env_for(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def audit_records(home: C.Paths) -> int:
    log = home.audit_log
    return log.read_bytes().count(b"\n") if log.exists() else 0


def broker_state(home: C.Paths) -> dict:
    """The paper account's file: its orders, and its ledger's cash and positions at top level."""
    state = json.loads(home.paper_broker_file.read_text())
    return {**state, **state["ledger"]}


# --- A month of replay ---------------------------------------------------------------------------
def test_a_month_replays_in_seconds_predicting_only_inside_market_hours(home, caplog):
    caplog.set_level(logging.INFO, logger="live_trading")
    started = time.perf_counter()
    summary = lt.run_trading_loop(
        config=replay_config("2022-01-03", "2022-01-31"), pair=PAIR, home=home
    )
    took = time.perf_counter() - started

    times = [
        pd.Timestamp(r.sim_time) for r in caplog.records if r.getMessage().startswith("prediction")
    ]
    sessions = 20  # January 2022: 21 weekdays, Martin Luther King Day closed
    # Every 5 min, 09:30-16:00, and one iteration on Tuesday 1 February to decide Monday's bar
    # (every bar dated START..END is decided, as in a backtest of the same dates).
    assert len(times) == summary.predictions == sessions * 78 + 1
    assert all(market_clock(t).is_open for t in times)
    assert {t.tz_convert(NY).date() for t in times} == {
        d.date() for d in pd.bdate_range("2022-01-03", "2022-02-01") if d.day != 17
    }
    assert took < 60, f"a month of replay took {took:.1f} s"
    # Trades happened through the gate, and what is held is on disk.
    assert summary.orders > 0
    saved = json.loads(home.positions_file.read_text())
    assert saved["schema_version"] == lt.SCHEMA_VERSION and saved["pending_decision"] is None
    held = {s: p["qty"] for s, p in broker_state(home)["positions"].items() if p["qty"]}
    assert {s: p["qty"] for s, p in saved["positions"].items()} == held
    assert saved["last_processed_bar"].startswith("2022-01-31")
    # The audit chain is intact and tells the story.
    assert audit_logging.verify(home.audit_log).ok
    events = [r.event for r in audit_logging.AuditLog(home.audit_log).records()]
    assert events[0] == "start" and events[-1] == "stop"
    assert {"signal", "risk_decision", "order_submitted", "fill", "position_change"} <= set(events)
    assert events.count("signal") == summary.bars == 21  # 2021-12-31 .. 2022-01-31


def test_each_bar_is_decided_once_however_many_intervals_see_it(home):
    lt.run_trading_loop(config=replay_config("2022-01-03", "2022-01-14"), pair=PAIR, home=home)
    orders = broker_state(home)["orders"].values()
    by_bar: dict[str, int] = {}
    for o in orders:
        by_bar[o["submitted_at"][:10]] = by_bar.get(o["submitted_at"][:10], 0) + 1
    assert by_bar and max(by_bar.values()) <= 4  # a flip: close + open per leg, once


def test_restart_reconciles_with_the_broker_and_the_broker_wins(home):
    lt.run_trading_loop(config=replay_config("2022-01-03", "2022-01-07"), pair=PAIR, home=home)
    saved = json.loads(home.positions_file.read_text())
    saved["positions"] = {"AAPL": {"qty": 999, "avg_entry_price": 1.0, "market_price": 1.0}}
    home.positions_file.write_text(json.dumps(saved))

    summary = lt.run_trading_loop(
        config=replay_config("2022-01-10", "2022-01-10"), pair=PAIR, home=home
    )

    assert summary.reconciliation_differences >= 1
    records = [
        r for r in audit_logging.AuditLog(home.audit_log).records() if r.event == "reconciliation"
    ]
    assert records[-1].payload["differences"][0]["saved_qty"] == 999
    alerts = [json.loads(line) for line in home.alerts_log.read_text().splitlines()]
    assert any(a["source"] == "reconciliation" and a["severity"] == "HIGH" for a in alerts)
    fixed = json.loads(home.positions_file.read_text())
    assert fixed["positions"].get("AAPL", {}).get("qty") != 999


def test_dead_mans_switch_trips_once_when_iterations_stop():
    trips = []
    switch = lt.DeadMansSwitch(interval_s=300, intervals=3, on_trip=trips.append)
    t0 = pd.Timestamp("2022-01-04 15:00", tz="UTC")
    switch.beat(t0)
    assert not switch.check(t0 + pd.Timedelta(seconds=899))
    assert switch.check(t0 + pd.Timedelta(seconds=901))
    assert not switch.check(t0 + pd.Timedelta(seconds=2000))  # once, until the next beat
    switch.beat(t0 + pd.Timedelta(seconds=2100))
    assert switch.check(t0 + pd.Timedelta(seconds=2100), stale_reason="feed stale")
    assert len(trips) == 2 and "no loop iteration completed" in trips[0]


def test_stale_data_trips_the_switch_and_does_not_trade(home, caplog):
    # The bundled data ends 2022-12-28: a replay into 2023 sees a feed that stopped (given
    # as a feed: `main.py live --replay` refuses dates past the data up front).
    table, _ = psd.load_processed(PAIR, home)
    summary = lt.run_trading_loop(
        config=replay_config("2023-01-09", "2023-01-09"),
        pair=PAIR,
        home=home,
        feed=lt.BarFeed(table, PAIR),
    )
    assert summary.orders == 0
    alerts = [json.loads(line) for line in home.alerts_log.read_text().splitlines()]
    assert any(a["source"] == "dead_mans_switch" and a["severity"] == "CRITICAL" for a in alerts)


# --- Processes: SIGTERM, one instance, SIGKILL ----------------------------------------------
def wait_for(path: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout_s} s")
        time.sleep(0.05)


def test_sigterm_stops_cleanly_and_a_second_instance_is_refused(home):
    first = live_process(home, "--replay", "2022-01-03", "2022-06-30", "--speed", "20000")
    try:
        wait_for(home.heartbeat_file)
        second = main("live", "--replay", "2022-01-03", "2022-01-31", home=home)
        assert second.returncode == 2
        assert "another `python main.py live`" in second.stderr and "Traceback" not in second.stderr
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    assert "stopped (SIGTERM)" in out
    saved = json.loads(home.positions_file.read_text())
    assert saved["schema_version"] == lt.SCHEMA_VERSION
    last = audit_logging.AuditLog(home.audit_log).last()
    assert last.event == "stop" and last.payload["reason"] == "SIGTERM"
    assert audit_logging.verify(home.audit_log).ok
    assert json.loads(home.heartbeat_file.read_text())["status"] == "stopped"


def test_sigkill_at_random_points_never_loses_or_doubles_a_trade(
    home, trained_home, tmp_path_factory
):
    """12 kills here, each right after 1-16 more audit records (bench/bench_chaos.py runs 50 and
    more, placed by time): the resumed replay ends with the uninterrupted one's equity and cash
    to the cent, the same orders, and an audit that lists every fill's shares exactly once."""
    from tests.chaos import kill_and_resume

    # A quarter: about 60 bars and 270 audit records (orders, fills, position changes), of
    # which the 12 killed runs use about 100, so each kill lands inside the loop.
    window = ("2022-01-03", "2022-03-31")
    reference = copy_home(trained_home, tmp_path_factory.mktemp("reference"))
    # The same order tag: client ids name their home, and the two must name theirs alike.
    reference.order_tag_file.write_text(home.order_tag() + "\n")
    lt.run_trading_loop(config=replay_config(*window), pair=PAIR, home=reference)

    report = kill_and_resume(home, reference, window, kills=12, seed=20221, after_steps=16)

    assert report.kills == 12
    assert report.starts == report.kills + 1  # every killed run got as far as the loop
    assert report.final_returncode == 0
    assert report.positions_equal and report.ids_equal
    assert abs(report.cash_diff) < 0.005 and abs(report.equity_diff) < 0.005
    assert report.doubled_fills == [] and report.missing_fills == []
    assert report.chain_ok


def test_a_kill_between_a_fill_and_positions_json_is_no_difference_at_the_restart(home):
    """Fills audited before a SIGKILL but not yet in positions.json (and the borrow charged
    with their bar) are replayed from the journal before reconciling: no HIGH "Positions
    differ" alert for what the journal explains."""
    from tests.chaos import kill_after_a_fill_before_positions

    window = ("2022-01-03", "2022-03-31")
    fill_seq = kill_after_a_fill_before_positions(home, window)
    assert json.loads(home.positions_file.read_text())["audit_anchor"]["seq"] < fill_seq

    resumed = main("live", "--replay", *window, home=home)

    assert resumed.returncode == 0, resumed.stderr
    (first, *_) = [
        r
        for r in audit_logging.AuditLog(home.audit_log).records()
        if r.event == "reconciliation" and r.seq > fill_seq
    ]
    assert first.payload["differences"] == [] and first.payload["journaled_fills"] >= 1
    alerts = home.alerts_log.read_text().splitlines() if home.alerts_log.exists() else []
    assert not [a for a in map(json.loads, alerts) if a["source"] == "reconciliation"]


def test_a_kill_after_a_days_borrow_before_positions_json_is_no_cash_difference(home):
    """The paper account charges a day's borrow when a new bar's quotes arrive; a kill before
    positions.json is written next left a cents-sized cash difference that was alerted."""
    from tests.chaos import kill_after_borrow_before_positions

    window = ("2022-01-03", "2022-03-31")
    signal_seq = kill_after_borrow_before_positions(home, window)

    resumed = main("live", "--replay", *window, home=home)

    assert resumed.returncode == 0, resumed.stderr
    (first, *_) = [
        r
        for r in audit_logging.AuditLog(home.audit_log).records()
        if r.event == "reconciliation" and r.seq > signal_seq
    ]
    assert first.payload["differences"] == []
    alerts = home.alerts_log.read_text().splitlines() if home.alerts_log.exists() else []
    assert not [a for a in map(json.loads, alerts) if a["source"] == "reconciliation"]


def test_status_reads_what_the_loop_wrote(home):
    lt.run_trading_loop(config=replay_config("2022-01-03", "2022-01-04"), pair=PAIR, home=home)
    proc = main("status", home=home)
    assert proc.returncode == 0, proc.stderr
    assert "STOPPED" in proc.stdout and "mode PAPER" in proc.stdout
    assert "positions:" in proc.stdout and "risk: trading allowed" in proc.stdout


def test_live_on_a_source_without_current_bars_refuses_before_writing_anything(tmp_path):
    home = C.paths(tmp_path)
    proc = main("live", "--once", home=home)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "the bundled data of AAPL/MSFT end on 2022-12-28" in last
    assert "DATA_SOURCE=yfinance or alpaca" in last and "live --replay" in last
    assert not home.audit_log.exists() and not home.positions_file.exists()


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_broken_audit_chain_refuses_the_loop_until_repaired(home):
    window = ("live", "--replay", "2022-01-03", "2022-01-07")
    assert main(*window, home=home).returncode == 0
    lines = home.audit_log.read_text().splitlines(keepends=True)
    lines[5] = lines[5].replace("2022", "2021", 1)  # line 6 rewritten
    home.audit_log.write_text("".join(lines))
    before = {p: _sha(p) for p in (home.audit_log, home.positions_file, home.paper_broker_file)}

    refused = main(*window, home=home)

    assert refused.returncode == 11
    last = refused.stderr.strip().splitlines()[-1]
    assert "line 6" in last and "python main.py audit repair" in last
    assert {p: _sha(p) for p in before} == before  # nothing written
    assert main("audit", "repair", home=home).returncode == 0
    again = main(*window, home=home)
    assert again.returncode == 0, again.stderr
    assert main("audit", "verify", home=home).returncode == 0


def test_a_removed_audit_tail_is_detected_by_the_anchor(home):
    window = ("live", "--replay", "2022-01-03", "2022-01-07")
    assert main(*window, home=home).returncode == 0
    saved = json.loads(home.positions_file.read_text())["audit_anchor"]
    lines = home.audit_log.read_text().splitlines(keepends=True)
    assert json.loads(lines[-1])["event"] == "stop"
    home.audit_log.write_text("".join(lines[:-3]))  # the stop and two records before it

    verify = main("audit", "verify", home=home)
    refused = main(*window, home=home)

    assert verify.returncode == 11 and "truncated" in verify.stdout + verify.stderr
    assert refused.returncode == 11 and "truncated" in refused.stderr
    assert saved["seq"] > len(lines) - 3


def test_a_torn_heartbeat_does_not_stop_a_restart(home):
    """The heartbeat is rewritten every iteration without fsync: a power cut may tear it, and
    the loop must simply write it again."""
    home.heartbeat_file.parent.mkdir(parents=True, exist_ok=True)
    home.heartbeat_file.write_text("{{{")
    summary = lt.run_trading_loop(
        config=replay_config("2022-01-03", "2022-01-04"), pair=PAIR, home=home
    )
    assert summary.iterations > 0
    assert lt.Heartbeat.read(home.heartbeat_file).status == "stopped"


def test_status_before_any_run_says_how_to_start(tmp_path):
    proc = main("status", home=C.paths(tmp_path))
    assert proc.returncode == 0
    assert "not started yet" in proc.stdout and "python main.py live" in proc.stdout


class FlakyBroker(lt.ta.SimulatedBroker):
    """A paper account whose connection fails on the first `failures` price requests: the broker
    side of an outage (a Broker implementation, not a patch of the loop)."""

    def __init__(self, *args, failures: int, error: type[Exception], **kw):
        super().__init__(*args, **kw)
        self.failures = failures
        self.error = error

    def latest_prices(self, symbols):
        if self.failures > 0:
            self.failures -= 1
            raise self.error("broker unreachable (test outage)")
        return super().latest_prices(symbols)


def _flaky(home: C.Paths, clock: lt.ReplayClock, failures: int, error) -> FlakyBroker:
    return FlakyBroker(
        home.ensure().paper_broker_file, now=clock.now, failures=failures, error=error
    )


def test_a_broker_outage_is_logged_and_retried_next_interval(home):
    from error_handling import BrokerError

    config = replay_config("2022-01-03", "2022-01-05")
    clock = lt.ReplayClock(config.replay_start)
    broker = _flaky(home, clock, 3, BrokerError)
    summary = lt.run_trading_loop(config=config, pair=PAIR, home=home, clock=clock, broker=broker)
    assert summary.errors == 3 and summary.orders > 0  # it went on trading afterwards
    failures = [
        r for r in audit_logging.AuditLog(home.audit_log).records() if r.event == "broker_failure"
    ]
    assert len(failures) == 3 and "test outage" in failures[0].payload["error"]
    # No breaker opened: a transient failure does not halt.
    assert not any(r.event == "halt" for r in audit_logging.AuditLog(home.audit_log).records())


def test_an_open_circuit_breaker_halts_new_entries(home):
    from error_handling import CircuitOpenError

    config = replay_config("2022-01-03", "2022-01-07")
    clock = lt.ReplayClock(config.replay_start)
    broker = _flaky(home, clock, 1, CircuitOpenError)
    summary = lt.run_trading_loop(config=config, pair=PAIR, home=home, clock=clock, broker=broker)
    assert summary.errors == 1 and summary.orders == 0  # halted: no entry after the breaker opened
    import risk_management as rm

    assert rm.RiskManager(state_path=home.risk_state_file, home=home.home, alerts=False).halted
    assert any(r.event == "halt" for r in audit_logging.AuditLog(home.audit_log).records())


def test_live_money_needs_keys_in_the_encrypted_store_not_the_environment(tmp_path):
    extra = {"ALPACA_API_KEY": "PKLIVE1234567890", "ALPACA_SECRET_KEY": "live-secret-0123456789"}
    proc = main("live", "--live", "--once", home=C.paths(tmp_path), extra_env=extra)
    assert proc.returncode == 2
    assert "encrypted credential store" in proc.stderr and "credentials set" in proc.stderr
    assert not C.paths(tmp_path).positions_file.exists()  # nothing started


def test_live_money_needs_a_typed_confirmation(tmp_path):
    import credential_manager as cm

    password = "a-long-master-password"
    store = cm.CredentialStore.open(C.paths(tmp_path).credentials_file, password, create=True)
    store.set("ALPACA_API_KEY", "PKLIVE1234567890")
    store.set("ALPACA_SECRET_KEY", "live-secret-0123456789")
    extra = {"TRADING_MASTER_PASSWORD": password, "TRADING_LIVE_CONFIRM": ""}
    proc = main("live", "--live", "--once", home=C.paths(tmp_path), extra_env=extra)
    assert proc.returncode == 2
    assert "TRADING_LIVE_CONFIRM" in proc.stderr and "Traceback" not in proc.stderr
    assert not C.paths(tmp_path).positions_file.exists()


def test_a_failure_that_opens_the_brokers_breaker_halts_trading_at_once(home):
    import alert_dispatch
    from error_handling import BrokerError, CircuitBreaker

    class BreakerBroker(FlakyBroker):
        def latest_prices(self, symbols):
            return self.breaker.call(super().latest_prices, symbols)

        def breaker_states(self):
            return {self.breaker.name: self.breaker.state.value}

        def failure_cause(self):
            open_ = self.breaker.state.value != "closed"
            return f"{self.breaker.name}: {self.breaker.first_error}" if open_ else None

    config = replay_config("2022-01-03", "2022-01-07")
    clock = lt.ReplayClock(config.replay_start)
    broker = BreakerBroker(
        home.ensure().paper_broker_file, now=clock.now, failures=1, error=BrokerError
    )
    broker.breaker = CircuitBreaker(
        "paper",
        failure_threshold=1,
        reset_timeout_s=1e9,
        on_state_change=alert_dispatch.breaker_alert_hook(home.home),
    )
    summary = lt.run_trading_loop(config=config, pair=PAIR, home=home, clock=clock, broker=broker)
    assert summary.orders == 0 and summary.errors >= 1
    halts = [r for r in audit_logging.AuditLog(home.audit_log).records() if r.event == "halt"]
    # The halt names the cause (the first error), not the secondary "circuit open".
    assert halts and "test outage" in halts[0].payload["reason"]
    assert "circuit" not in halts[0].payload["reason"]
    alerts = [json.loads(line) for line in home.alerts_log.read_text().splitlines()]
    assert any(a["source"] == "circuit_breaker" and a["severity"] == "CRITICAL" for a in alerts)


# --- No slow live bar ---------------------------------------------------------------------------
def test_the_drift_check_runs_every_fifth_new_bar_after_the_bar_is_decided(home):
    """Ten bars: due on the first and the sixth new bar, each run once that bar is decided (in
    the next iteration), never in the bar's own iteration."""
    summary = lt.run_trading_loop(
        config=replay_config("2022-01-03", "2022-01-14"), pair=PAIR, home=home
    )
    assert summary.bars >= 10
    assert summary.drift_checks == 2


def test_a_drift_check_made_due_by_a_once_run_still_runs_before_it_exits(home):
    ny = "America/New_York"
    config = lt.LiveConfig(  # one iteration at 10:00 on a Tuesday: Monday's bar is new
        replay_start=pd.Timestamp("2022-01-04 10:00").tz_localize(ny).tz_convert("UTC"),
        replay_end=pd.Timestamp("2022-01-15").tz_localize(ny).tz_convert("UTC"),
        once=True,
    )
    table, _ = psd.load_processed(PAIR, home)  # a feed of its own: every bar is fresh, as live
    summary = lt.run_trading_loop(
        config=config, pair=PAIR, home=home, feed=lt.BarFeed(table.loc[:"2022-01-14"], PAIR)
    )
    assert summary.iterations == 1 and summary.bars == 1
    assert summary.drift_checks == 1  # due on its one new bar, run at the end
