"""The Streamlit dashboard, run headless with AppTest over a TRADING_HOME made by the project itself
(processed data, an XGBoost model, a replayed paper session, a backtest run, alerts)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("streamlit")
pytest.importorskip("plotly")

from streamlit.testing.v1 import AppTest

import constants as C
from tests.helpers import built_once, trained_template
from trial_ledger import deflated_over

DASHBOARD = str(Path(__file__).resolve().parent.parent / "dashboard.py")
#: The universe of the home's scan: its six pairs include the traded AAPL/MSFT.
SCAN_TICKERS = ("AAPL", "MSFT", "KO", "PEP")
ALERT_TITLES = {
    "INFO": "Model promoted",
    "WARNING": "Data feed slow",
    "HIGH": "Positions differ from the broker",
    "CRITICAL": "Circuit breaker open",
}


@pytest.fixture(scope="session")
def built_home(tmp_path_factory) -> Path:
    """A TRADING_HOME filled by the real pipeline once per test run (about 5 s) and shared by the
    xdist workers; tests change only their copy (`home`)."""
    return built_once(
        tmp_path_factory, "test_dashboard home", lambda root: _build_home(root, tmp_path_factory)
    )


def _build_home(root: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    import alert_dispatch
    import backtest_strategy as bs
    import live_trading as lt
    import pair_scan as ps
    import process_stock_data as psd
    import train_model as tm

    universe = tmp_path_factory.mktemp("scan_universe") / "closes.csv"
    psd.load_bundled().close[list(SCAN_TICKERS)].loc["2017":"2019"].to_csv(
        universe, index_label="date"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(C.ENV_TRADING_HOME, str(root))
        mp.setenv(C.ENV_TICKER_LONG, C.DEFAULT_TICKER_LONG)
        mp.setenv(C.ENV_TICKER_SHORT, C.DEFAULT_TICKER_SHORT)
        pair = C.resolve_pair()
        config = tm.TrainConfig(models=("xgb",), folds=2, xgb_trees=60)  # test_parity's model
        shutil.copytree(trained_template(tmp_path_factory, config, pair), root, dirs_exist_ok=True)
        home = C.paths(root)
        config = lt.LiveConfig(
            replay_start=pd.Timestamp("2022-03-01", tz="America/New_York"),
            replay_end=pd.Timestamp("2022-03-15", tz="America/New_York"),
        )
        lt.run_trading_loop(config=config, pair=pair, home=home)
        bs.backtest(bs.BacktestRequest(pair, start="2022-06-01", write_charts=False), home=home)
        # A real scan of four tickers over three years (six pairs, about a second).
        scan = ps.ScanRequest(universe=f"csv:{universe}", write_charts=False)
        ps.scan(scan, results_dir=home.results_dir)
        for severity, title in ALERT_TITLES.items():
            alert_dispatch.send(severity, "test", title, f"{title} (test)", {"n": 1}, home=root)
        alert_dispatch.close_all(timeout_s=10)
    # Keep only what a user's TRADING_HOME holds after those commands (no lock/pid leftovers).
    for leftover in ("data/live.lock", "data/live.pid"):
        (root / leftover).unlink(missing_ok=True)
    positions = json.loads((root / "positions.json").read_text())["positions"]
    assert positions, "the replay should leave an open position for the positions panel"


@pytest.fixture
def home(built_home, tmp_path, monkeypatch) -> C.Paths:
    """A private copy of the built home (tests may corrupt it), set as TRADING_HOME."""
    root = tmp_path / "home"
    shutil.copytree(built_home, root)
    monkeypatch.setenv(C.ENV_TRADING_HOME, str(root))
    monkeypatch.setenv(C.ENV_TICKER_LONG, C.DEFAULT_TICKER_LONG)
    monkeypatch.setenv(C.ENV_TICKER_SHORT, C.DEFAULT_TICKER_SHORT)
    monkeypatch.delenv("DASHBOARD_REFRESH_S", raising=False)
    return C.paths()


@pytest.fixture
def empty_home(tmp_path, monkeypatch) -> C.Paths:
    monkeypatch.setenv(C.ENV_TRADING_HOME, str(tmp_path))
    monkeypatch.setenv(C.ENV_TICKER_LONG, C.DEFAULT_TICKER_LONG)
    monkeypatch.setenv(C.ENV_TICKER_SHORT, C.DEFAULT_TICKER_SHORT)
    monkeypatch.delenv("DASHBOARD_REFRESH_S", raising=False)
    return C.paths()


def run_app() -> AppTest:
    at = AppTest.from_file(DASHBOARD, default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(elements) -> list[str]:
    return [str(e.value) for e in elements]


def frame_with(at: AppTest, column: str) -> pd.DataFrame:
    """The first dataframe on the page that has `column`."""
    for element in at.dataframe:
        if column in element.value.columns:
            return element.value
    raise AssertionError(f"no dataframe with a {column!r} column")


PANEL_TITLES = [
    "Live status",
    "Positions and equity",
    "Prices and spread",
    "Backtest results",
    "Pair scan",
    "Parameter sweeps",
    "Alerts",
    "Model registry",
    "Audit log",
]


# --- Every panel from real files -----------------------------------------------------------------
def test_every_panel_renders_from_a_replayed_session(home):
    pair = C.resolve_pair()
    at = run_app()

    assert texts(at.header) == PANEL_TITLES
    assert not at.error
    assert pair.long in at.title[0].value and pair.short in at.title[0].value
    assert any(">PAPER<" in m for m in texts(at.markdown))
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Loop"] == "STOPPED"
    assert metrics["Trading"] == "not halted"
    assert metrics["Broker"] == "simulated"
    assert metrics["Market now"] in ("OPEN", "CLOSED")

    saved = json.loads(home.positions_file.read_text())
    positions = frame_with(at, "unrealized P&L")
    assert sorted(positions["leg"]) == sorted(saved["positions"])
    assert len(positions) == len(saved["positions"])
    for _, row in positions.iterrows():
        p = saved["positions"][row["leg"]]
        assert row["qty"] == p["qty"]
        assert row["unrealized P&L"] == pytest.approx(
            p["qty"] * (p["market_price"] - p["avg_entry_price"])
        )
    assert metrics["Equity"] == f"${saved['equity']:,.2f}"

    charts = at.get("plotly_chart")
    # equity over time, prices and spread, backtest equity, drawdown, Sharpe with its interval,
    # the scan's heatmap
    assert len(charts) == 6
    assert any(home.processed_file(pair).name in c for c in texts(at.caption))

    runs = [d.name for d in home.results_dir.iterdir() if d.is_dir() and "scan" not in d.name]
    assert at.selectbox(key="backtest_run").options == runs
    metrics_table = at.table[0].value
    assert f"buy & hold {pair.long}" in metrics_table.columns
    assert "Sharpe" in metrics_table.index
    # The run's uncertainty: the interval in the table and as an error bar, and the verdict.
    summary = json.loads((home.results_dir / runs[0] / "summary.json").read_text())
    low, high = summary["strategy"]["sharpe_ci_95"]
    strategy_column = metrics_table.columns[0]
    assert metrics_table.loc["Sharpe 95 % CI", strategy_column] == f"{low:.2f} .. {high:.2f}"
    assert metrics_table.loc["trials (deflated by)", strategy_column] == deflated_over(
        summary["strategy"]["trials"], summary["strategy"]["trials_as_of"]
    )
    assert any(summary["strategy"]["verdict"] in m.value for m in at.markdown)
    bars = json.loads(next(c for c in charts if c.key == "backtest_sharpe_ci").proto.spec)
    error = bars["data"][0]["error_y"]
    assert error["array"][0] == pytest.approx(high - summary["strategy"]["sharpe"])
    assert error["arrayminus"][0] == pytest.approx(summary["strategy"]["sharpe"] - low)

    alerts = frame_with(at, "severity")
    assert list(alerts["title"]) == list(reversed(ALERT_TITLES.values()))  # newest first

    registry = json.loads((home.models_dir / "registry.json").read_text())["models"]
    models = frame_with(at, "integrity")
    assert set(models["version"]) == {m["version"] for m in registry}
    assert set(models["integrity"]) == {"ok"}
    assert set(models["kind"]) == {"xgb"}

    records = len(home.audit_log.read_text().splitlines())
    assert texts(at.success) == [f"verified: {records:,} records, hash chain intact"]


def test_the_dashboard_changes_no_file(home):
    def snapshot() -> dict[str, tuple[int, int]]:
        return {
            str(p.relative_to(home.home)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in home.home.rglob("*")
            if p.is_file()
        }

    before = snapshot()
    run_app()
    assert snapshot() == before


def test_severity_filter_keeps_only_the_chosen_alerts(home):
    at = run_app()
    at.multiselect(key="alert_severity").set_value(["CRITICAL"]).run()
    alerts = frame_with(at, "severity")
    assert list(alerts["title"]) == [ALERT_TITLES["CRITICAL"]]


def test_refresh_interval_comes_from_the_environment(home, monkeypatch):
    monkeypatch.setenv("DASHBOARD_REFRESH_S", "12")
    at = run_app()
    assert at.number_input(key="refresh_s").value == 12.0


# --- Live status --------------------------------------------------------------------------------
def _rewrite_heartbeat(home: C.Paths, **changes) -> None:
    """The replay's heartbeat with `changes`, written as the loop writes it (a `Heartbeat`)."""
    import live_trading as lt

    beat = lt.Heartbeat.from_json(json.loads(home.heartbeat_file.read_text()))
    home.heartbeat_file.write_text(json.dumps(dataclasses.replace(beat, **changes).to_json()))


def _write_alpaca_heartbeat(home: C.Paths, **changes) -> None:
    """A live loop's heartbeat on the Alpaca broker, built field by field."""
    import live_trading as lt

    now = pd.Timestamp.now(tz="UTC")
    fields = {
        "status": "running",
        "time": now.isoformat(),
        "loop_time": now.isoformat(),
        "pid": 4242,
        "mode": "paper",
        "broker": "alpaca",
        "market_open": True,
        "next_open": (now + pd.Timedelta(days=1)).isoformat(),
        "next_close": (now + pd.Timedelta(hours=3)).isoformat(),
        "equity": 100_300.0,
        "cash": 100_000.0,
        "positions": {},
        "halted": False,
        "halt_reason": None,
        "circuit_breakers": {
            "alpaca orders": "closed",
            "alpaca account": "closed",
            "alpaca market_data": "closed",
        },
        "last_bar": "2022-03-15T00:00:00-04:00",
        "interval_s": 300.0,
    }
    fields.update(changes)
    home.heartbeat_file.write_text(json.dumps(lt.Heartbeat(**fields).to_json()))


@pytest.fixture
def live_lock(home):
    """The lock and pid file of a running `main.py live`, held by this test (pid 4242)."""
    import filelock

    lock = filelock.FileLock(str(home.live_lock_file))
    lock.acquire(timeout=5)
    home.live_lock_file.with_suffix(".pid").write_text("4242\n")
    yield 4242
    lock.release()


def loop_metric(at: AppTest):
    return next(m for m in at.metric if m.label == "Loop")


def test_live_mode_shows_the_red_real_money_badge(home, live_lock):
    now = pd.Timestamp.now(tz="UTC").isoformat()
    _rewrite_heartbeat(home, mode="live", status="running", time=now, broker="alpaca")
    at = run_app()
    badge = next(m for m in texts(at.markdown) if "REAL MONEY" in m)
    assert "LIVE — REAL MONEY" in badge and "#c62828" in badge
    assert not any(">PAPER<" in m for m in texts(at.markdown))
    assert {m.label: m.value for m in at.metric}["Loop"] == "RUNNING"


def test_a_held_lock_with_a_fresh_heartbeat_is_running(home, live_lock):
    now = pd.Timestamp.now(tz="UTC").isoformat()
    _rewrite_heartbeat(home, status="running", time=now)
    at = run_app()
    loop = loop_metric(at)
    assert loop.value == "RUNNING"
    assert f"pid {live_lock}" in str(loop.proto.delta)
    assert not any("not running" in e.lower() for e in texts(at.error))


def test_a_running_heartbeat_with_no_lock_held_is_a_dead_loop(home):
    now = pd.Timestamp.now(tz="UTC").isoformat()
    _rewrite_heartbeat(home, status="running", time=now)
    home.live_lock_file.touch()  # a lock file left behind, held by no process
    at = run_app()
    assert loop_metric(at).value == "NOT RUNNING"
    dead = [e for e in texts(at.error) if "not running" in e]
    assert len(dead) == 1
    assert "The loop is not running (last heartbeat said running: it died)" in dead[0]
    assert not any(m.value == "RUNNING" for m in at.metric)


def test_waiting_for_the_open_with_no_lock_file_is_a_dead_loop(home):
    _rewrite_heartbeat(home, status="waiting for the open")
    at = run_app()
    assert loop_metric(at).value == "NOT RUNNING"
    assert any(
        "not running (last heartbeat said waiting for the open: it died)" in e
        for e in texts(at.error)
    )


def test_a_running_loop_with_an_old_heartbeat_is_stale(home, live_lock):
    old = (pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=2)).isoformat()
    _rewrite_heartbeat(home, status="running", time=old)
    at = run_app()
    assert {m.label: m.value for m in at.metric}["Loop"] == "STALE"
    assert any("may be stuck" in w and "pid 4242" in w for w in texts(at.warning))


def test_the_broker_error_is_shown_next_to_the_breakers(home, live_lock):
    error = "alpaca orders: HTTP 503 Service Unavailable (circuit breaker opened)"
    _write_alpaca_heartbeat(
        home,
        status="broker unavailable",
        broker_error=error,
        circuit_breakers={
            "alpaca orders": "open",
            "alpaca account": "closed",
            "alpaca market_data": "closed",
        },
    )
    at = run_app()
    errors = texts(at.error)
    assert f"Last broker error: {error}" in errors
    breakers = next(e for e in errors if e.startswith("Circuit breakers:"))
    assert "alpaca orders: **open**" in breakers
    assert errors.index(f"Last broker error: {error}") == errors.index(breakers) + 1
    assert loop_metric(at).value == "RUNNING"


def test_no_broker_error_once_an_iteration_succeeds(home, live_lock):
    _write_alpaca_heartbeat(home, broker_error=None)
    at = run_app()
    assert not any("broker error" in e.lower() for e in texts(at.error))
    assert any(c.startswith("Circuit breakers: alpaca account") for c in texts(at.caption))


def test_a_halt_in_the_risk_state_is_shown(home):
    state = json.loads(home.risk_state_file.read_text())
    state.update(halted=True, halt_reason="drawdown 21% >= 20%", halted_at="2022-03-10T20:00:00Z")
    home.risk_state_file.write_text(json.dumps(state))
    at = run_app()
    assert {m.label: m.value for m in at.metric}["Trading"] == "HALTED"
    assert any("drawdown 21% >= 20%" in e for e in texts(at.error))


# --- Positions outside the pair -----------------------------------------------------------------
def test_positions_outside_the_pair_are_listed_as_not_traded(home):
    import live_trading as lt

    pair = C.resolve_pair()
    lt.PositionsState(
        mode="paper",
        broker="alpaca",
        updated_at=pd.Timestamp.now(tz="UTC").isoformat(),
        cash=50_000.0,
        equity=100_000.0,
        positions={
            pair.long: lt.HeldPosition(100, 150.0, 155.0),
            pair.short: lt.HeldPosition(-80, 200.0, 198.5),
        },
        foreign={"KO": lt.HeldPosition(5, 58.0, 60.0), "TSLA": lt.HeldPosition(-3, 250.0, 240.5)},
    ).save(home.positions_file)
    at = run_app()
    foreign = [w for w in texts(at.warning) if "outside the pair" in w]
    assert len(foreign) == 1
    text = foreign[0]
    assert "KO +5 shares at 60.00 USD = 300.00 USD" in text
    assert "TSLA -3 shares at 240.50 USD = -721.50 USD" in text
    assert "not traded by the loop" in text and "kept out of the pair's limits" in text
    legs = frame_with(at, "unrealized P&L")
    assert sorted(legs["leg"]) == sorted([pair.long, pair.short])  # the pair's table only
    assert {m.label: m.value for m in at.metric}[
        "Gross exposure"
    ] == f"${100 * 155.0 + 80 * 198.5:,.2f}"
    assert not at.error


def test_no_foreign_warning_when_the_account_holds_only_the_pair(home):
    at = run_app()
    assert not any("outside the pair" in w for w in texts(at.warning))


def test_without_positions_json_the_heartbeat_lists_foreign_shares(home):
    home.positions_file.unlink()
    _write_alpaca_heartbeat(home, foreign_positions={"KO": 5})
    at = run_app()
    foreign = [w for w in texts(at.warning) if "outside the pair" in w]
    assert len(foreign) == 1
    assert "KO +5 shares (price not recorded)" in foreign[0]
    assert "not traded by the loop" in foreign[0] and "heartbeat.json" in foreign[0]


# --- The pair scan -----------------------------------------------------------------------------
def _scan_folder(home: C.Paths) -> Path:
    (folder,) = [d for d in home.results_dir.iterdir() if d.is_dir() and d.name.startswith("scan-")]
    return folder


def test_the_scan_panel_ranks_the_pairs_as_pairs_csv_with_the_heatmap(home):
    folder = _scan_folder(home)
    expected = pd.read_csv(folder / "pairs.csv")
    summary = json.loads((folder / "summary.json").read_text())

    at = run_app()

    shown = frame_with(at, "OOS Sharpe")
    assert list(shown["pair"]) == list(expected["pair"])  # six pairs, in the scan's order
    assert shown["pair"].iloc[0] == expected["pair"].iloc[0]
    for i in range(len(expected)):
        assert shown["OOS Sharpe"].iloc[i] == pytest.approx(expected["sharpe"].iloc[i], rel=1e-5)
        assert shown["DSR"].iloc[i] == pytest.approx(expected["dsr"].iloc[i], rel=1e-5, abs=1e-9)
    top = expected.iloc[0]
    assert shown["95 % CI"].iloc[0] == f"{top['sharpe_ci_low']:.2f} .. {top['sharpe_ci_high']:.2f}"
    assert shown["trades"].iloc[0] == top["fills"]
    assert shown["cost bps"].iloc[0] == pytest.approx(1e4 * top["cost_share"], rel=1e-5)
    headline = next(c for c in texts(at.caption) if c.startswith(folder.name))
    for part in (
        f"universe {summary['run']['universe']}",
        "4 tickers, 6 pairs",
        f"{summary['run']['windows']} walk-forward windows",
        f"{summary['run']['oos_start']}..{summary['run']['oos_end']}",
        f"DSR {deflated_over(summary['trials']['count'], summary['trials']['as_of'])} (scan",
    ):
        assert part in headline, headline
    rank = int(expected.index[expected["pair"] == "AAPL/MSFT"][0]) + 1
    assert any(f"The traded pair AAPL/MSFT is #{rank} of 6" in c for c in texts(at.caption))

    heatmap = next(c for c in at.get("plotly_chart") if c.key == "scan_heatmap")
    data = json.loads(heatmap.proto.spec)["data"][0]
    assert data["type"] == "heatmap" and data["x"] == list(SCAN_TICKERS)
    i, j = SCAN_TICKERS.index(top["long"]), SCAN_TICKERS.index(top["short"])
    assert data["z"][i][j] == data["z"][j][i] == pytest.approx(top["sharpe"], rel=1e-5)
    assert data["z"][i][i] is None  # the diagonal is no pair
    assert at.selectbox(key="backtest_run").options == [
        d.name for d in home.results_dir.iterdir() if d.is_dir() and d != folder
    ]


def test_with_two_scans_a_select_box_offers_them_newest_first(home):
    older = _scan_folder(home)
    newer = home.results_dir / "scan-29991231-235959"
    shutil.copytree(older, newer)
    table = pd.read_parquet(newer / "pairs.parquet").iloc[::-1]  # another ranking
    table["rank"] = range(1, len(table) + 1)
    table.to_parquet(newer / "pairs.parquet", index=False)

    at = run_app()

    assert at.selectbox(key="scan_run").options == [newer.name, older.name]
    assert frame_with(at, "OOS Sharpe")["pair"].iloc[0] == table["pair"].iloc[0]
    at.selectbox(key="scan_run").set_value(older.name).run()
    first = pd.read_csv(older / "pairs.csv")["pair"].iloc[0]
    assert frame_with(at, "OOS Sharpe")["pair"].iloc[0] == first


# --- Missing and corrupt files ------------------------------------------------------------------
def test_with_every_file_missing_each_panel_says_what_creates_it(empty_home):
    at = run_app()
    assert texts(at.header) == PANEL_TITLES
    assert not at.error
    hints = " | ".join(texts(at.info))
    for expected in (
        "No heartbeat yet: run `python main.py live`",
        "No positions yet: run `python main.py live`",
        "to create positions.json",
        "No processed data for",
        "run `python main.py process`",
        "No backtest results yet: run `python main.py backtest`",
        "No parameter sweep yet: run `python main.py sweep`",
        "No alerts yet:",
        "`python main.py alerts test`",
        "No models yet: run `python main.py train`",
        "No audit log yet: run `python main.py live`",
        "No scan yet: run `python main.py scan`",
    ):
        assert expected in hints
    assert len(at.info) == 9
    assert not any(empty_home.home.iterdir())  # nothing created


def test_a_corrupt_positions_file_is_one_error_and_the_rest_renders(home):
    home.positions_file.write_text('{"schema_version": 1, "positions": ')
    at = run_app()
    errors = texts(at.error)
    assert len(errors) == 1
    assert errors[0].startswith("Positions and equity:") and "positions.json" in errors[0]
    assert "\n" not in errors[0]
    assert texts(at.header) == PANEL_TITLES
    assert frame_with(at, "integrity") is not None
    assert frame_with(at, "severity") is not None
    assert texts(at.success)[0].startswith("verified:")


def test_a_corrupt_alert_line_is_skipped_with_a_notice(home):
    with home.alerts_log.open("a") as f:
        f.write("this is not an alert\n")
    at = run_app()
    assert any("Skipped 1 unreadable line" in w for w in texts(at.warning))
    assert len(frame_with(at, "severity")) == len(ALERT_TITLES)
    assert not at.error
    assert frame_with(at, "unrealized P&L") is not None


def test_a_tampered_audit_log_is_reported_broken(home):
    lines = home.audit_log.read_text().splitlines()
    record = json.loads(lines[1])
    record["payload"]["tampered"] = True
    lines[1] = json.dumps(record)
    home.audit_log.write_text("\n".join(lines) + "\n")
    at = run_app()
    assert any(e.startswith("BROKEN at line 2") for e in texts(at.error))


def test_a_changed_model_artifact_fails_the_integrity_column(home):
    artifact = next(p for p in home.models_dir.glob("*/*.json"))
    artifact.write_text(artifact.read_text() + " ")
    at = run_app()
    assert any(v.startswith("BAD: ") for v in frame_with(at, "integrity")["integrity"])
    assert any("integrity check" in e for e in texts(at.error))


# --- Size ---------------------------------------------------------------------------------------
def test_a_100k_line_alert_log_renders_from_its_tail(home):
    line = home.alerts_log.read_text().splitlines()[0]
    record = json.loads(line)
    with home.alerts_log.open("w") as f:
        for i in range(100_000):
            record["title"] = f"alert {i}"
            record["severity"] = ("INFO", "WARNING", "MEDIUM", "HIGH", "CRITICAL")[i % 5]
            f.write(json.dumps(record) + "\n")
    size_mb = home.alerts_log.stat().st_size / 2**20

    start = time.perf_counter()
    at = AppTest.from_file(DASHBOARD, default_timeout=60)
    at.run()
    elapsed = time.perf_counter() - start
    print(f"\n100,000-line alerts.log ({size_mb:.1f} MB): first at.run() took {elapsed:.2f} s")

    assert not at.exception
    alerts = frame_with(at, "severity")
    assert alerts["title"].iloc[0] == "alert 99999"
    assert elapsed < 30


# --- Parameter sweeps -----------------------------------------------------------------------------
def test_the_sweep_panel_shows_the_chosen_set_per_window_and_the_out_of_sample_figures(home):
    import parameter_sweep as psw

    grid = psw.parse_grid(["entry_z=1.5,2.5", "exit_z=0.5", "lookback=40"], model=False)[0]
    request = psw.SweepRequest(
        pair=C.resolve_pair(), settings=psw.SweepSettings(grid), start="2016-01-01"
    )
    result, summary, folder, _ = psw.sweep(request, home=home)
    at = run_app()
    assert not at.error, texts(at.error)
    assert at.selectbox(key="sweep_run").value == folder.name
    # The sweep is not offered as a backtest run.
    assert folder.name not in at.selectbox(key="backtest_run").options
    windows = frame_with(at, "chosen set")
    assert list(windows["window"]) == [c.window_index for c in result.choices]
    assert list(windows["chosen set"]) == [c.label for c in result.choices]
    assert list(windows["OOS return"]) == [f"{c.oos_return:+.2%}" for c in result.choices]
    figures = [t.value for t in at.table]
    shown = next(f for f in figures if "walk-forward (out of sample)" in f.columns)
    column = shown["walk-forward (out of sample)"]
    assert column["Sharpe"] == f"{summary['walk_forward']['sharpe']:.2f}"
    assert column["deflated Sharpe"] == f"{result.dsr:.3f}"
    assert column["trials (deflated by)"].startswith("deflated over 2 trials as of ")
