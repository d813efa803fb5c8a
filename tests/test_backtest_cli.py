"""`python main.py backtest` and `python main.py risk` as a user runs them."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pandas as pd
import pytest

import constants as C
import train_model as tm
from tests.helpers import run, trained_copy

PAIR = C.Pair("AAPL", "MSFT")
TINY = tm.TrainConfig(folds=2, epochs=2, lstm_units=4, xgb_trees=20, batch_size=256, patience=1)


def only_run_dir(home: Path) -> Path:
    runs = [p for p in (home / "results").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(runs) == 1, runs
    return runs[0]


def write_csv(path: Path, rows: list[tuple]) -> Path:
    path.write_text("\n".join(",".join(str(v) for v in row) for row in rows) + "\n")
    return path


# --- A user's signal file -------------------------------------------------------------------------
def test_flat_commission_signal_backtest_matches_a_hand_computed_equity_curve(tmp_path):
    """Buy the spread on 2021-03-01, flip on 03-10, go flat on 03-22; $1 per order and nothing
    else; fills at the next bar's close; 25 % of equity per leg in whole shares."""
    import process_stock_data as psd

    signals = write_csv(
        tmp_path / "signals.csv",
        [("date", "action"), ("2021-03-01", "buy"), ("2021-03-10", "sell"), ("2021-03-22", "flat")],
    )
    home = tmp_path / "home"
    res = run(
        "main.py", "backtest", "--signals", str(signals), "--start", "2021-03-01",
        "--end", "2021-03-31", "--flat-commission", "1", "--no-charts", home=home,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    got = pd.read_csv(only_run_dir(home) / "equity.csv", index_col="date", parse_dates=True)

    close = psd.load_bundled().close[["AAPL", "MSFT"]].loc["2021-03-01":"2021-03-31"]
    fills = {"2021-03-02": +1, "2021-03-11": -1, "2021-03-23": 0}  # the bar after each signal
    cash, qa, qm = 100_000.0, 0, 0
    expected = []
    for day, (pa, pm) in close.iterrows():
        key = str(day.date())
        if key in fills:
            equity = cash + qa * pa + qm * pm
            direction = fills[key]
            new_a = math.trunc(direction * 0.25 * equity / pa)
            new_m = math.trunc(-direction * 0.25 * equity / pm)
            orders = 0
            for old, new, price in ((qa, new_a, pa), (qm, new_m, pm)):
                if old != 0 and (new == 0 or (new > 0) != (old > 0)):
                    cash += old * price  # close the old position
                    orders += 1
                    old = 0
                if new != old:
                    cash -= (new - old) * price
                    orders += 1
            cash -= 1.0 * orders
            qa, qm = new_a, new_m
        expected.append(cash + qa * pa + qm * pm)
    # To the cent and beyond: equity.csv keeps 6 decimals.
    assert (got["equity"] - expected).abs().max() < 1e-5
    trades = pd.read_csv(only_run_dir(home) / "trades.csv")
    assert len(trades) == 8 and trades["commission"].sum() == 8.0
    assert (trades["fill_price"] == trades["bar_price"]).all()


def test_tight_limits_over_eight_months_log_each_rejection_with_its_reason(tmp_path):
    """Weekly instructions alternating 10 % and 30 % of equity per leg against a $15,000 leg
    limit: the 30 % ones are refused, in the log and in summary.json."""
    import process_stock_data as psd

    days = psd.load_bundled().close.loc["2021-01-04":"2021-08-31"].index[::5]
    rows = [("date", "AAPL", "MSFT")]
    for i, day in enumerate(days):
        f = 0.1 if i % 2 == 0 else 0.3
        rows.append((str(day.date()), f if i % 4 < 2 else -f, -f if i % 4 < 2 else f))
    signals = write_csv(tmp_path / "weights.csv", rows)
    home = tmp_path / "home"
    res = run(
        "main.py", "backtest", "--signals", str(signals), "--start", "2021-01-04",
        "--end", "2021-08-31", "--max-leg-notional", "15000", "--no-charts", home=home,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "Orders refused by the risk gate" in res.stdout and "leg_notional" in res.stdout
    summary = json.loads((only_run_dir(home) / "summary.json").read_text())
    refused = summary["strategy"]["rejections"]
    assert refused.get("leg_notional", 0) >= len(days) // 2 - 1
    assert summary["strategy"]["fills"] > 0  # the 10 % instructions went through
    log_lines = [
        json.loads(line)["message"]
        for line in (home / "logs" / "trading.log").read_text().splitlines()
    ]
    logged = [m for m in log_lines if "risk gate rejected" in m]
    assert len(logged) == sum(refused.values())
    assert all("[leg_notional]" in m and "> limit $15,000" in m for m in logged)
    assert {r["reason"] for r in summary["rejections"]} == {"leg_notional"}


def test_the_drawdown_liquidation_fills_at_the_close_after_the_breach_is_seen(tmp_path):
    """The issue's run: AMD/PG from 2016-01-04 with every cost at zero, long AMD / short PG at
    half of equity each. equity.csv first shows the 10 % breach on the 2016-01-15 close;
    trades.csv liquidates at the next close (Tuesday 2016-01-19), never at the breach close."""
    signals = write_csv(
        tmp_path / "weights.csv", [("date", "AMD", "PG"), ("2016-01-04", 0.5, -0.5)]
    )
    home = tmp_path / "home"
    res = run(
        "main.py", "backtest", "--long", "AMD", "--short", "PG", "--signals", str(signals),
        "--start", "2016-01-04", "--end", "2016-04-04", "--fees", "none",
        "--commission-per-share", "0", "--commission-min", "0", "--half-spread-bps", "0",
        "--impact-coef", "0", "--borrow-rate", "0", "--max-gross", "1e9", "--max-net", "1e9",
        "--max-leg-notional", "1e9", "--max-order-notional", "1e9", "--max-leverage", "50",
        "--daily-loss-limit", "0.99", "--max-drawdown", "0.1", "--no-charts", home=home,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = only_run_dir(home)
    equity = pd.read_csv(out / "equity.csv", index_col="date", parse_dates=True)["equity"]
    peak = equity.cummax().clip(lower=100_000.0)
    breached = equity.index[equity <= peak * 0.9]
    assert str(breached[0].date()) == "2016-01-15"
    trades = pd.read_csv(out / "trades.csv", parse_dates=["date"])
    liq = trades[trades["purpose"] == "liquidation"]
    assert len(liq) == 2 and (liq["date"] > breached[0]).all()
    assert set(liq["date"].dt.date.astype(str)) == {"2016-01-19"}  # the next bar (MLK day)
    assert (liq["fill_price"] == liq["bar_price"]).all()  # zero costs: at that close
    strategy = json.loads((out / "summary.json").read_text())["strategy"]
    assert (strategy["halted_at"], strategy["liquidated_at"]) == ("2016-01-15", "2016-01-19")
    assert "2016-01-15 close" in res.stdout and "liquidated on 2016-01-19" in res.stdout


def test_results_folder_has_every_output_and_no_temporary_leftovers(tmp_path):
    signals = write_csv(
        tmp_path / "s.csv", [("date", "action"), ("2022-01-03", "buy"), ("2022-06-01", "sell")]
    )
    home = tmp_path / "home"
    res = run("main.py", "backtest", "--signals", str(signals), "--start", "2022-01-03", home=home)
    assert res.returncode == 0, res.stderr
    folder = only_run_dir(home)
    assert sorted(p.name for p in folder.iterdir()) == [
        "equity.csv",
        "equity.html",
        "equity.png",
        "summary.json",
        "trades.csv",
    ]
    assert (folder / "equity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plotly" in (folder / "equity.html").read_text()[:5_000_000].lower()
    summary = json.loads((folder / "summary.json").read_text())
    assert set(summary["benchmarks"]) == {"zscore_rule", "buy_hold_long"}
    assert summary["run"]["start"] == "2022-01-03" and summary["run"]["end"] == "2022-12-28"
    # The run's folder and the trial ledger, nothing half-written beside them.
    assert sorted(p.name for p in (home / "results").iterdir()) == [folder.name, "trials.jsonl"]


def _march_2021_backtest(tmp_path: Path) -> list[str]:
    signals = write_csv(tmp_path / "s.csv", [("date", "action"), ("2021-03-01", "buy")])
    return ["main.py", "backtest", "--signals", str(signals), "--start", "2021-03-01",
            "--end", "2021-03-31"]  # fmt: skip


def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: the pid names no process now
    return child.pid


def test_a_backtest_killed_while_writing_leaves_a_temp_folder_the_next_run_removes(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    home = tmp_path / "home"
    results = home / "results"
    env = {**os.environ, "TRADING_HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1"}
    env = {k: v for k, v in env.items() if k not in ("TICKER_LONG", "TICKER_SHORT", "DATA_SOURCE")}
    args = _march_2021_backtest(tmp_path)
    victim = subprocess.Popen(
        [sys.executable, *args], cwd=Path(__file__).resolve().parent.parent, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    leftover: list[Path] = []
    while victim.poll() is None and not leftover and time.monotonic() < deadline:
        leftover = [p for p in results.glob(".*") if p.is_dir()] if results.exists() else []
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert leftover, "the backtest finished before its temp folder was seen"
    assert f".{victim.pid}." in leftover[0].name and leftover[0].exists()

    res = run(*args, home=home)

    assert res.returncode == 0, res.stderr
    assert not leftover[0].exists()
    run_dir = only_run_dir(home)
    assert sorted(p.name for p in results.iterdir()) == [run_dir.name, "trials.jsonl"]
    # The killed run was counted as a trial before it wrote anything: both runs are in the
    # ledger, as one distinct trial (the same configuration twice).
    from trial_ledger import TrialLedger

    strategy_trials = [t for t in TrialLedger(results) if t.kind == "strategy"]
    assert len(strategy_trials) == 2
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["strategy"]["trials"] == 1


def test_backtest_removes_only_the_temp_folders_no_running_process_can_finish(tmp_path):
    """Dead creator: removed. Live creator (this test process): kept, unless the folder was written
    before that process started (a reused pid). Pid-less folders of older versions: removed when
    written before the run started. Real results and other hidden folders: kept."""
    import os

    results = tmp_path / "home" / "results"
    names = {
        "dead": f".20240102-030405_AAPL_MSFT_model.{_dead_pid()}.ab12cd34",
        "live": f".20240102-030405_AAPL_MSFT_model.{os.getpid()}.ef56gh78",
        "reused": f".20240102-030405_AAPL_MSFT_model.{os.getpid()}.zz99yy88",
        "old_format": ".20240102-030405_AAPL_MSFT_model.k3j4h5g6",
        "old_format_being_written": ".20240102-030406_AAPL_MSFT_model.q1w2e3r4",
        "real": "20240102-030405_AAPL_MSFT_model",
        "other_hidden": ".cache",
    }
    for name in names.values():
        (results / name).mkdir(parents=True)
        (results / name / "equity.csv").write_text("date,equity\n")
    year_2000 = 946_684_800
    for key in ("reused", "old_format"):
        os.utime(results / names[key], (year_2000, year_2000))
    in_ten_minutes = time.time() + 600
    os.utime(results / names["old_format_being_written"], (in_ten_minutes, in_ten_minutes))

    res = run(*_march_2021_backtest(tmp_path), home=tmp_path / "home")

    assert res.returncode == 0, res.stderr
    gone = {key for key, name in names.items() if not (results / name).exists()}
    expected_gone = (
        {"dead", "reused", "old_format"} if Path("/proc/self/stat").exists() else {"dead"}
    )
    assert gone == expected_gone


@pytest.mark.parametrize(
    "args,message",
    [
        (["--start", "2021-13-45"], "'2021-13-45' is not a date YYYY-MM-DD"),
        (["--signals", "no-such-file.csv"], "not found"),
        (["--max-drawdown", "1.5"], "drawdown"),
        (["--capital", "-5"], "capital"),
        (["--recall", "MSFT"], "--recall wants SYM:YYYY-MM-DD"),
        (["--hold", "maybe"], "invalid choice"),
    ],
)
def test_bad_backtest_input_is_one_line_and_writes_no_results(tmp_path, args, message):
    res = run("main.py", "backtest", *args, home=tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    results = tmp_path / "results"
    assert not results.exists() or not any(results.iterdir())


# --- Model-driven runs ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    pytest.importorskip("tensorflow", reason="the lstm profile is not installed")
    return trained_copy(tmp_path_factory, "backtest-home", TINY, PAIR)


def test_default_backtest_is_out_of_sample_with_both_benchmarks(trained):
    from model_management import ModelRegistry

    res = run("main.py", "backtest", "--no-charts", home=trained)
    assert res.returncode == 0, res.stderr
    assert "out of sample" in res.stdout
    for column in ("strategy (model)", "z-score rule", "buy & hold AAPL"):
        assert column in res.stdout
    runs = sorted(p for p in (trained / "results").iterdir() if p.is_dir())
    summary = json.loads((runs[-1] / "summary.json").read_text())
    active = ModelRegistry(C.paths(trained).models_dir).get_active_model("xgb", PAIR)
    validated_to = pd.Timestamp(active.metadata["ranges"]["validation"][1])
    assert pd.Timestamp(summary["run"]["start"]) > validated_to
    assert summary["run"]["in_sample"] is False
    assert summary["run"]["versions"] == [active.version]


def test_backtest_refuses_dates_the_model_learned_from(trained):
    res = run("main.py", "backtest", "--start", "2012-01-03", "--end", "2012-12-31", home=trained)
    assert res.returncode == 2
    assert "--allow-in-sample" in res.stderr and "Traceback" not in res.stderr


def test_allow_in_sample_labels_the_result(trained):
    res = run(
        "main.py", "backtest", "--start", "2012-01-03", "--end", "2012-12-31",
        "--allow-in-sample", "--no-charts", home=trained,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "IN-SAMPLE" in res.stdout
    runs = sorted(p for p in (trained / "results").iterdir() if p.is_dir())
    summary = json.loads((runs[-1] / "summary.json").read_text())
    assert summary["run"]["in_sample"] is True
    assert any("IN-SAMPLE" in note for note in summary["run"]["notes"])


def test_a_specific_model_version_can_be_backtested(trained):
    from model_management import ModelRegistry

    lstm = ModelRegistry(C.paths(trained).models_dir).get_active_model("lstm", PAIR)
    res = run("main.py", "backtest", "--model", lstm.version, "--no-charts", home=trained)
    assert res.returncode == 0, res.stderr
    assert lstm.version in res.stdout
    bogus = run("main.py", "backtest", "--model", "xgb-nope", home=trained)
    assert bogus.returncode == 2 and "xgb-nope" in bogus.stderr


def test_backtest_on_a_fresh_home_trains_a_model_first(tmp_path):
    """The README's first command: no processed data, no model, one command, a full report."""
    res = run(
        "main.py", "backtest", "--no-charts", home=tmp_path, extra_env={"SIGNAL_MODEL": "xgb"}
    )
    assert res.returncode == 0, res.stderr
    assert "trained" in res.stdout and "z-score rule" in res.stdout
    assert (tmp_path / "data" / "processed_AAPL_MSFT.parquet").exists()
    assert (only_run_dir(tmp_path) / "summary.json").exists()


# --- main.py risk ---------------------------------------------------------------------------------
def test_risk_status_and_reset_round_trip(tmp_path):
    import risk_management as rm

    state = C.paths(tmp_path).risk_state_file
    manager = rm.RiskManager(state_path=state, home=tmp_path)
    manager.update_equity(100_000.0, pd.Timestamp("2024-01-02"))
    assert manager.update_equity(85_000.0, pd.Timestamp("2024-01-03")) is True
    status = run("main.py", "risk", home=tmp_path)
    assert status.returncode == 0 and "HALTED" in status.stdout
    assert "breach was seen on the 2024-01-03 close" in status.stdout  # its liquidation waits
    reset = run("main.py", "risk", "reset", home=tmp_path)
    assert reset.returncode == 0 and "halt cleared" in reset.stdout
    assert not rm.RiskManager(state_path=state).halted
    assert json.loads(state.read_text())["drawdown_bar"] is None
    alerts = (tmp_path / "logs" / "alerts.log").read_text().splitlines()
    assert [json.loads(a)["severity"] for a in alerts] == ["CRITICAL", "INFO"]


def test_risk_reset_repairs_a_corrupt_state_file(tmp_path):
    state = C.paths(tmp_path).risk_state_file
    state.parent.mkdir(parents=True)
    state.write_text("{not json")
    status = run("main.py", "risk", home=tmp_path)
    assert status.returncode == 5 and "risk reset" in status.stderr  # exit 5: risk
    assert run("main.py", "risk", "reset", home=tmp_path).returncode == 0
    assert json.loads(state.read_text())["halted"] is False
