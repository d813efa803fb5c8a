"""One engine: a backtest and a paper replay of the same bars with the same configuration make the
same orders (client ids, quantities), the same fills (prices, costs) and the same equity on every
bar, to the cent -- for the model's signals, for a signal file, and for a replay killed with
SIGKILL ten times and resumed. Also: the live loop feeds signal outcomes to the A/B test, so a
clearly worse canary is rolled back automatically (audited and alerted)."""

from __future__ import annotations

import dataclasses
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import audit_logging
import backtest_strategy as bs
import constants as C
import live_trading as lt
import process_stock_data as psd
import train_model as tm
from tests.helpers import ROOT, copy_home, replay_config, trained_copy

PAIR = C.Pair("AAPL", "MSFT")
NY = "America/New_York"
START, END = "2022-01-03", "2022-03-31"
COST_FIELDS = ("commission", "spread", "impact", "sec_fee", "finra_taf")


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory) -> Path:
    """A TRADING_HOME with the processed bundled pair and a small real XGBoost model."""
    config = tm.TrainConfig(models=("xgb",), folds=2, xgb_trees=60)
    return trained_copy(tmp_path_factory, "parity", config, PAIR)


@pytest.fixture
def home(trained_home, tmp_path) -> C.Paths:
    return copy_home(trained_home, tmp_path)


def backtest(home: C.Paths, engine: str = "compiled", **kw) -> bs.BacktestResult:
    """The backtest of the replayed bars, by default through the compiled event loop (the paper
    replay is the interpreted decision step, so every test here also holds the two equal)."""
    request = bs.BacktestRequest(
        PAIR, start=START, end=END, allow_in_sample=True, write_charts=False, engine=engine, **kw
    )
    result = bs.backtest(request, home=home).strategy
    fractional = request.config.sizing.fractional_shares
    assert result.compiled_bars == (
        0 if engine == "interpreted" or fractional else len(result.equity)
    )
    return result


def assert_same_trading(result: bs.BacktestResult, home: C.Paths) -> None:
    """The paper account and its equity log against the backtest: ids, quantities, prices,
    costs, and every bar's equity and cash."""
    broker = json.loads(home.paper_broker_file.read_text())
    orders = broker["orders"]
    trades = result.trades
    assert len(trades) > 4, "the window should trade"
    assert sorted(trades["client_order_id"]) == sorted(orders)  # each id once, on both sides
    for t in trades.itertuples():
        o = orders[t.client_order_id]
        assert (o["symbol"], o["side"], o["qty"], o["filled_qty"]) == (
            t.symbol,
            t.side,
            t.requested_qty,
            t.qty,
        )
        assert o["filled_avg_price"] == pytest.approx(t.fill_price, abs=1e-9)
        for name in COST_FIELDS:
            assert o["costs"][name] == pytest.approx(getattr(t, name), abs=1e-9), name
    paper = lt.read_equity_log(lt.equity_log_path(home, "paper"))
    bt = result.equity
    assert list(paper.index) == list(bt.index)  # one row per bar, the same bars
    np.testing.assert_allclose(paper["equity"], bt["equity"], atol=0.005)
    np.testing.assert_allclose(paper["cash"], bt["cash"], atol=0.005)
    for sym in PAIR.tickers:
        assert (paper[f"qty_{sym}"].to_numpy() == bt[f"qty_{sym}"].to_numpy()).all()
    assert broker["ledger"]["cash"] == pytest.approx(bt["cash"].iloc[-1], abs=0.005)


@pytest.mark.parametrize("engine", ["compiled", "interpreted"])
def test_model_signals_trade_the_same_in_a_backtest_and_a_paper_replay(home, engine):
    result = backtest(home, engine)
    summary = lt.run_trading_loop(config=replay_config(START, END), pair=PAIR, home=home)
    assert summary.orders == len(result.trades)
    assert summary.equity == pytest.approx(result.equity["equity"].iloc[-1], abs=0.005)
    assert_same_trading(result, home)


def test_a_signal_file_trades_the_same_in_a_backtest_and_a_paper_replay(home, tmp_path):
    dates = pd.bdate_range(START, END)
    table, _ = psd.load_processed(PAIR, home)
    bars = [d for d in dates if d in table.index]
    rng = np.random.default_rng(7)
    actions = rng.choice(["buy", "sell", "hold", "flat"], size=len(bars), p=[0.2, 0.2, 0.5, 0.1])
    file = tmp_path / "signals.csv"
    pd.DataFrame({"date": [d.date() for d in bars], "action": actions}).to_csv(file, index=False)
    result = backtest(home, signal_file=str(file))
    config = replay_config(START, END, signal_file=str(file))
    summary = lt.run_trading_loop(config=config, pair=PAIR, home=home)
    assert summary.orders == len(result.trades)
    assert_same_trading(result, home)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_order_streams_trade_the_same_compiled_and_in_a_paper_replay(home, tmp_path, seed):
    """Random state files (random entries, flips, exits and re-sizes at random sizes per leg)
    and a random rebalance band and fill delay: the compiled backtest and the paper replay make
    the same orders, fills and equity."""
    table, _ = psd.load_processed(PAIR, home)
    bars = table.loc[START:END].index
    rng = np.random.default_rng(seed)
    states = rng.choice(["1", "-1", "0", ""], size=len(bars), p=[0.12, 0.12, 0.08, 0.68])
    file = tmp_path / "states.csv"
    pd.DataFrame({"date": [d.date() for d in bars], "state": states}).to_csv(file, index=False)
    trading = dataclasses.replace(
        bs.TradingConfig(),
        rebalance_band=float(rng.choice([0.0, 0.25])),
        fill_delay_bars=int(rng.integers(1, 3)),
        sizing=bs.SizingConfig(leg_usd=float(rng.uniform(5_000, 20_000))),
    )
    result = backtest(home, signal_file=str(file), config=trading)
    config = replay_config(START, END, signal_file=str(file), trading=trading)
    summary = lt.run_trading_loop(config=config, pair=PAIR, home=home)
    assert summary.orders == len(result.trades)
    assert_same_trading(result, home)


def test_fractional_usd_legs_trade_the_same_in_a_backtest_and_a_paper_replay(home, tmp_path):
    """A state file sized at $10,000 per leg in fractional shares: the paper account holds the
    backtest's float quantities bit for bit (its JSON state and equity log round-trip them)."""
    table, _ = psd.load_processed(PAIR, home)
    bars = table.loc[START:END].index
    rng = np.random.default_rng(3)
    states = rng.choice(["1", "-1", "0", ""], size=len(bars), p=[0.1, 0.1, 0.1, 0.7])
    file = tmp_path / "states.csv"
    pd.DataFrame({"date": [d.date() for d in bars], "state": states}).to_csv(file, index=False)
    trading = dataclasses.replace(
        bs.TradingConfig(), sizing=bs.SizingConfig(leg_usd=10_000.0, fractional_shares=True)
    )
    result = backtest(home, signal_file=str(file), config=trading)
    config = replay_config(START, END, signal_file=str(file), trading=trading)
    summary = lt.run_trading_loop(config=config, pair=PAIR, home=home)
    assert summary.orders == len(result.trades)
    assert (result.trades["qty"] % 1 != 0).all()
    assert_same_trading(result, home)


def drawdown_states(home: C.Paths, tmp_path: Path) -> Path:
    """A state file that enters, flips and flips back in early January 2022: with $40,000 legs
    and a 2 % drawdown limit it breaches late in the month, and asks for entries after it."""
    table, _ = psd.load_processed(PAIR, home)
    bars = table.loc[START:END].index
    states = {0: "1", 2: "-1", 5: "1", 30: "-1", 45: "1"}
    file = tmp_path / "states.csv"
    rows = [states.get(i, "") for i in range(len(bars))]
    pd.DataFrame({"date": [d.date() for d in bars], "state": rows}).to_csv(file, index=False)
    return file


@pytest.mark.parametrize("delay", [1, 2])
def test_a_drawdown_liquidation_trades_the_same_in_a_backtest_and_a_paper_replay(
    home, tmp_path, delay
):
    """The breach is seen on one bar's close in both worlds; the liquidation fills `delay` bars
    later at that bar's close, with the same ids, quantities and prices, and the later entries
    are refused in both."""
    file = drawdown_states(home, tmp_path)
    trading = dataclasses.replace(
        bs.TradingConfig(),
        fill_delay_bars=delay,
        sizing=bs.SizingConfig(leg_usd=40_000.0),
        limits=dataclasses.replace(bs.TradingConfig().limits, max_drawdown_pct=0.02),
    )
    request = bs.BacktestRequest(
        PAIR, start=START, end=END, allow_in_sample=True, write_charts=False,
        signal_file=str(file), config=trading,
    )  # fmt: skip
    result = bs.backtest(request, home=home).strategy
    liq = result.trades[result.trades["purpose"] == "liquidation"]
    assert result.halted_at is not None and len(liq) == 2
    dates = result.equity.index
    assert set(liq["date"]) == {dates[dates.get_loc(result.halted_at) + delay]}
    assert result.rejection_counts.get("trading_halted", 0) >= 1
    config = replay_config(START, END, signal_file=str(file), trading=trading)
    summary = lt.run_trading_loop(config=config, pair=PAIR, home=home)
    assert summary.orders == len(result.trades)
    assert_same_trading(result, home)


def test_a_replay_stopped_between_the_breach_and_its_liquidation_liquidates_on_time(home, tmp_path):
    """The breach's bar is kept in data/risk_state.json: a replay that ends on the breach's bar
    and is resumed the next day sends the liquidation on the bar a backtest does."""
    file = drawdown_states(home, tmp_path)
    trading = dataclasses.replace(
        bs.TradingConfig(),
        sizing=bs.SizingConfig(leg_usd=40_000.0),
        limits=dataclasses.replace(bs.TradingConfig().limits, max_drawdown_pct=0.02),
    )
    request = bs.BacktestRequest(
        PAIR, start=START, end=END, allow_in_sample=True, write_charts=False,
        signal_file=str(file), config=trading,
    )  # fmt: skip
    result = bs.backtest(request, home=home).strategy
    seen = result.halted_at
    assert seen is not None
    first = replay_config(START, str(seen.date()), signal_file=str(file), trading=trading)
    lt.run_trading_loop(config=first, pair=PAIR, home=home)
    risk = json.loads(home.risk_state_file.read_text())
    assert risk["halted"] and pd.Timestamp(risk["drawdown_bar"]).date() == seen.date()
    rest = replay_config(START, END, signal_file=str(file), trading=trading)
    lt.run_trading_loop(config=rest, pair=PAIR, home=home)
    assert json.loads(home.risk_state_file.read_text())["drawdown_bar"] is None
    assert_same_trading(result, home)


def test_the_same_configuration_is_traded_in_both(home):
    """A non-default TradingConfig changes both worlds the same way."""
    trading = dataclasses.replace(
        bs.TradingConfig(), rebalance_band=0.0, initial_capital=50_000.0, fill_delay_bars=2
    )
    result = backtest(home, config=trading)
    lt.run_trading_loop(config=replay_config(START, END, trading=trading), pair=PAIR, home=home)
    assert_same_trading(result, home)
    start = [r for r in audit_logging.AuditLog(home.audit_log).records() if r.event == "start"]
    assert start[-1].payload["config"] == trading.to_dict()


def test_parity_holds_after_ten_sigkills_of_the_replay(home):
    result = backtest(home)
    env = {
        **{k: v for k, v in __import__("os").environ.items() if k not in ("ALERT_WEBHOOK_URL",)},
        "TRADING_HOME": str(home.home),
        "TICKER_LONG": PAIR.long,
        "TICKER_SHORT": PAIR.short,
    }
    cmd = [sys.executable, "main.py", "live", "--replay", START, END]
    rng = random.Random(11)
    kills = 0
    for _ in range(40):
        before = audit_count(home)
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        while audit_count(home) <= before + 1 and time.monotonic() < deadline:
            time.sleep(0.01)  # wait for the loop to run (past "start" and "reconciliation")
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if proc.returncode == 0:
            break
        kills += 1
        if kills == 10:
            break
    assert kills == 10
    final = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert_same_trading(result, home)
    fills = [
        r.payload["client_order_id"]
        for r in audit_logging.AuditLog(home.audit_log).records()
        if r.event == "fill"
    ]
    assert len(fills) == len(set(fills)) == len(result.trades)  # each fill audited once


def audit_count(home: C.Paths) -> int:
    path = home.audit_log
    return path.read_bytes().count(b"\n") if path.exists() else 0


# --- Canary outcomes ---------------------------------------------------------------------------
def register_contrarian_canary(home: C.Paths) -> str:
    """A real XGBoost model trained on the opposite labels, registered as the canary with half
    the traffic: on the bars it trained on, its hit rate is far below the champion's."""
    from model_artifacts import save_artifacts
    from model_management import ModelRegistry

    table, _ = psd.load_processed(PAIR, home)
    data = tm.TrainingData.from_processed(table, PAIR, "contrarian")
    flipped = dataclasses.replace(data, y=1 - data.y)
    config = tm.TrainConfig(models=("xgb",), folds=2, xgb_trees=60)
    parts = tm.chronological_split(len(data.y), config.validation_fraction, config.holdout_fraction)
    model, scaler, _, _ = tm._fit_predict("xgb", flipped, *parts, config, lambda *_: None)
    registry = ModelRegistry(home.models_dir, canary_fraction=0.5)
    champion = registry.get_active_model("xgb", PAIR)
    artifacts = home.home / "contrarian"
    artifacts.mkdir()
    save_artifacts("xgb", model, scaler, artifacts)
    record = registry.register(
        "xgb",
        artifacts,
        pair=PAIR,
        feature_names=list(data.feature_names),
        lookback=None,
        metadata=champion.metadata,
    )
    return record.version


def test_a_clearly_worse_canary_is_rolled_back_by_the_replay_with_an_audit_record(home):
    import signals as sg
    from model_management import ABTestController

    canary = register_contrarian_canary(home)
    generator = sg.SignalGenerator(PAIR, home=home)
    assert generator.controllers["xgb"].state().challenger.version == canary
    generator.controllers["xgb"] = ABTestController(generator.registry, "xgb", PAIR, min_samples=20)
    # Bars the models trained on: the champion fits them, the contrarian is its mirror image.
    summary = lt.run_trading_loop(
        config=replay_config("2012-01-03", "2012-06-29"),
        pair=PAIR,
        home=home,
        generator=generator,
    )
    assert summary.model_changes == 1
    records = [r for r in audit_logging.AuditLog(home.audit_log).records()]
    rolled = [r for r in records if r.event == "model_rolled_back"]
    assert len(rolled) == 1 and rolled[0].payload["challenger"] == canary
    assert generator.controllers["xgb"].state().challenger is None  # no canary any more
    alerts = [json.loads(line) for line in home.alerts_log.read_text().splitlines()]
    assert any(a["source"] == "model_ab_test" and canary in a["title"] for a in alerts)
    # After the rollback every bar is decided by the champion.
    after = [r for r in records if r.event == "signal" and r.seq > rolled[0].seq]
    assert after and all(r.payload["model"] != canary for r in after)


def test_a_backtest_never_changes_the_registry(home):
    register_contrarian_canary(home)
    index = (home.models_dir / "registry.json").read_text()
    outcomes = sorted(p.name for p in home.models_dir.glob("ab_*.json"))
    backtest(home)
    assert (home.models_dir / "registry.json").read_text() == index
    assert sorted(p.name for p in home.models_dir.glob("ab_*.json")) == outcomes
