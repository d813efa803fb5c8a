"""Every backtest figure with its uncertainty: the trial ledger, the deflated Sharpe over the
trials counted there, summary.json's keys, the report's rows and verdict, the z-score benchmark's
two rules, and the classifier's AUC interval and accuracy test in the train metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import backtest_strategy as bt
import constants as C
import performance_stats as ps
from error_handling import ConfigurationError
from pair_engine import TradingConfig
from tests.helpers import run
from trial_ledger import Trial, TrialCount, TrialLedger, config_hash

PAIR = C.Pair("AAPL", "MSFT")
START, END = "2021-01-04", "2021-12-31"
KEYS = ("sharpe_ci_95", "psr", "dsr", "trials", "p_vs_zscore", "p_vs_buy_hold")


def action_file(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("date,action\n" + "".join(f"{d},{a}\n" for d, a in rows))
    return path


SIGNALS = [
    ("2021-02-01", "buy"),
    ("2021-04-01", "sell"),
    ("2021-06-01", "flat"),
    ("2021-08-02", "buy"),
    ("2021-11-01", "flat"),
]


def backtest(home: C.Paths, signal_file: Path, fraction: float = 0.25, **kw) -> bt.BacktestReport:
    config = TradingConfig().with_values({"sizing.rule_leg_fraction": fraction})
    request = bt.BacktestRequest(
        pair=PAIR,
        start=START,
        end=END,
        signal_file=str(signal_file),
        config=config,
        write_charts=False,
        **kw,
    )
    return bt.backtest(request, home=home)


def daily_returns(run_dir: Path, column: str, capital: float = 100_000.0) -> np.ndarray:
    eq = pd.read_csv(run_dir / "equity.csv", index_col="date")[column]
    return (eq / eq.shift(1).fillna(capital) - 1.0).to_numpy()


# --- The ledger -----------------------------------------------------------------------------------
def test_n_distinct_backtests_on_a_pair_deflate_by_n_and_a_rerun_is_not_a_new_trial(home, tmp_path):
    signals = action_file(tmp_path / "s.csv", SIGNALS)
    reports = [backtest(home, signals, fraction=f) for f in (0.1, 0.2, 0.3)]
    assert [r.summary["strategy"]["trials"] for r in reports] == [1, 2, 3]
    # The third run's DSR is the paper's formula over the three runs' Sharpes.
    sharpes = [r.summary["strategy"]["sharpe"] for r in reports]
    third = reports[-1]
    returns = daily_returns(third.run_dir, "equity")
    expected = ps.deflated_sharpe_ratio(returns, 3, float(np.var(sharpes, ddof=1)))
    assert third.summary["strategy"]["dsr"] == pytest.approx(expected, rel=1e-9)
    assert third.summary["strategy"]["dsr"] < third.summary["strategy"]["psr"]
    # With one trial the deflated Sharpe is the probabilistic one.
    first = reports[0].summary["strategy"]
    assert first["dsr"] == pytest.approx(first["psr"], rel=1e-12)

    again = backtest(home, signals, fraction=0.2)  # identical to the second: not a new trial
    assert again.summary["strategy"]["trials"] == 3
    assert not any("not trials" in n for n in again.summary["run"]["notes"])
    other_file = action_file(tmp_path / "t.csv", SIGNALS[:3])  # another signal file: a trial
    assert backtest(home, other_file, fraction=0.2).summary["strategy"]["trials"] == 4

    ledger = list(TrialLedger(home.results_dir))
    assert len(ledger) == 2 * 5  # strategy and z-score benchmark per run, reruns included
    with open(TrialLedger(home.results_dir).path, "a") as fh:
        fh.write('{"run_id": "torn"')  # a crash mid-line: not counted, and said so
    torn = backtest(home, signals, fraction=0.2)
    assert torn.summary["strategy"]["trials"] == 4
    assert any("1 line(s) are not trials" in n for n in torn.summary["run"]["notes"])
    # Every trial names its run's folder.
    folders = {p.name for p in home.results_dir.iterdir() if p.is_dir()}
    assert {t.run_id for t in TrialLedger(home.results_dir)} == folders


def test_trials_on_other_dates_or_pairs_are_counted_apart(home, tmp_path):
    signals = action_file(tmp_path / "s.csv", SIGNALS)
    backtest(home, signals, fraction=0.1)
    shorter = bt.BacktestRequest(
        pair=PAIR, start=START, end="2021-11-30", signal_file=str(signals), write_charts=False
    )
    assert bt.backtest(shorter, home=home).summary["strategy"]["trials"] == 1
    assert backtest(home, signals, fraction=0.3).summary["strategy"]["trials"] == 2


def test_the_ledger_skips_a_torn_last_line_and_appends_after_it(tmp_path):
    ledger = TrialLedger(tmp_path)
    trial = Trial("r1", "2026-01-01T00:00:00+00:00", ("A", "B"), "2020-01-02", "2020-12-31",
                  252, "strategy", "rule:x", config_hash({"a": 1}), 0.5)  # fmt: skip
    ledger.record(trial)
    with open(ledger.path, "a") as fh:
        fh.write('{"run_id": "torn", "pair": ["A"')  # a crash mid-line
    ledger.record(Trial(**{**trial.__dict__, "run_id": "r2", "config_hash": "other"}))
    trials, unreadable = ledger.read()
    assert [t.run_id for t in trials] == ["r1", "r2"] and unreadable == 1
    assert ledger.count(("A", "B"), "2020-01-02", "2020-12-31", "strategy").trials == 2


def test_trial_count_variance_is_the_sample_variance_of_the_sharpes():
    assert TrialCount.of([0.5]) == TrialCount(1, 0.0)
    count = TrialCount.of([0.1, 0.5, 0.9, math.nan])
    assert count.trials == 4  # an undefined Sharpe is still a trial
    assert count.sharpe_variance == pytest.approx(np.var([0.1, 0.5, 0.9], ddof=1))
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})


# --- summary.json and the report -----------------------------------------------------------------
def test_summary_json_carries_the_uncertainty_of_every_column(home, tmp_path):
    report = backtest(home, action_file(tmp_path / "s.csv", SIGNALS))
    summary = json.loads((report.run_dir / "summary.json").read_text())
    columns = {
        "strategy": (summary["strategy"], "equity"),
        "zscore_rule": (summary["benchmarks"]["zscore_rule"], "zscore_rule_equity"),
        "buy_hold_long": (summary["benchmarks"]["buy_hold_long"], "buy_hold_equity"),
    }
    for name, (stats, column) in columns.items():
        assert set(KEYS) <= set(stats), name
        r = daily_returns(report.run_dir, column)
        est = ps.estimate_sharpe(r, reps=1000, seed=0)
        low, high = stats["sharpe_ci_95"]
        assert (low, high) == pytest.approx((est.ci_low, est.ci_high), abs=1e-4)
        assert low < stats["sharpe"] < high
        assert stats["psr"] == pytest.approx(ps.probabilistic_sharpe_ratio(r), abs=1e-4)
    strat = summary["strategy"]
    assert strat["p_vs_zscore"] == pytest.approx(
        ps.sharpe_difference_test(
            daily_returns(report.run_dir, "equity"),
            daily_returns(report.run_dir, "zscore_rule_equity"),
            reps=1000,
            seed=0,
        ).p_value,
        abs=1e-3,
    )
    assert summary["benchmarks"]["zscore_rule"]["p_vs_zscore"] is None
    assert summary["benchmarks"]["buy_hold_long"]["p_vs_buy_hold"] is None
    assert 0 <= strat["p_vs_buy_hold"] <= 1
    assert isinstance(strat["verdict"], str) and "95 %" in strat["verdict"]
    assert summary["run"]["statistics"]["reps"] == 1000
    assert summary["run"]["benchmark_rule"]["name"] == "current"


def test_the_report_prints_the_uncertainty_rows_and_a_verdict(tmp_path):
    signals = action_file(tmp_path / "s.csv", SIGNALS)
    home = tmp_path / "home"
    args = ("main.py", "backtest", "--signals", str(signals), "--start", START, "--end", END,
            "--no-charts")  # fmt: skip
    wide = {"COLUMNS": "200"}  # the table's row names unwrapped
    res = run(*args, home=home, extra_env=wide)
    assert res.returncode == 0, res.stderr
    for row in ("Sharpe 95 % CI", "P(Sharpe > 0)", "DSR deflated over 1 trial as of ",
                "vs z-score rule: p", "vs buy & hold: p", "verdict:"):  # fmt: skip
        assert row in res.stdout, row
    res = run(*args, "--rule-fraction", "0.4", home=home, extra_env=wide)
    assert "DSR deflated over 2 trials as of " in res.stdout


# --- The z-score benchmark's two rules ------------------------------------------------------------
def test_the_textbook_rule_goes_flat_before_it_reverses_and_the_current_rule_does_not():
    z = np.array([np.nan, 2.5, 1.0, -2.5, -2.5, 0.2, -2.1, 3.0, 3.0, 0.4, -1.0])
    textbook = bt.textbook_zscore_states(z, 2.0, 0.5)
    assert textbook.tolist() == [0, -1, -1, 0, 1, 0, 1, 0, -1, 0, 0]
    current = bt.zscore_rule_states(z, 2.0, 0.5)
    assert current[3] == 1.0  # reverses short -> long on the bar itself
    assert np.isnan(current[2])  # and keeps the position between the bands


def test_benchmark_rule_textbook_changes_the_benchmark_and_is_recorded(home, tmp_path):
    # 2015 holds the only direct reversals of the z-score rule on AAPL/MSFT since 2010.
    signals = action_file(tmp_path / "s.csv", [("2015-03-02", "buy"), ("2015-09-01", "flat")])

    def year_2015(rule: str) -> bt.BacktestReport:
        request = bt.BacktestRequest(
            pair=PAIR,
            start="2015-01-02",
            end="2015-12-31",
            signal_file=str(signals),
            benchmark_rule=rule,
            write_charts=False,
        )
        return bt.backtest(request, home=home)

    current, textbook = year_2015("current"), year_2015("textbook")
    a, b = current.summary["benchmarks"], textbook.summary["benchmarks"]
    assert a["zscore_rule"]["final_equity"] != b["zscore_rule"]["final_equity"]
    assert textbook.summary["run"]["benchmark_rule"]["name"] == "textbook"
    # The strategy is the same trial; the benchmark under another rule is another.
    assert textbook.summary["strategy"]["trials"] == 1
    assert b["zscore_rule"]["trials"] == 2
    with pytest.raises(ConfigurationError, match="benchmark rule"):
        bt.BacktestRequest(pair=PAIR, benchmark_rule="fancy")


# --- The classifier's uncertainty in the train metrics --------------------------------------------
def test_train_metrics_carry_the_auc_interval_and_the_accuracy_p_value():
    from scipy.stats import binomtest

    import train_model as tm

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 600)
    prob = np.clip(0.5 + 0.15 * (y - 0.5) + rng.normal(0, 0.2, 600), 0.01, 0.99)
    m = tm.classification_metrics(y, prob, rng.normal(0, 0.01, 600))
    low, high = m["roc_auc_ci_95"]
    assert low < m["roc_auc"] < high
    correct = int(((prob > 0.5) == y).sum())
    majority = max(y.mean(), 1 - y.mean())
    assert m["majority_rate"] == pytest.approx(majority)
    assert m["accuracy_p_value"] == pytest.approx(
        binomtest(correct, len(y), majority, alternative="greater").pvalue
    )
    row = dict(zip(tm.SUMMARY_COLUMNS, tm.metric_cells(m), strict=True))
    assert row["AUC 95 % CI (DeLong)"] == f"{low:.3f} .. {high:.3f}"


# --- The first bar (issue 23 item 5): n = bars, the first return against the initial capital -----
def test_every_statistic_counts_each_bar_the_first_a_zero_against_the_initial_capital(
    home, tmp_path
):
    """The documented convention, pinned against a computation from equity.csv alone: one return
    per bar (n = bars), the first bar's against the initial capital, which is exactly 0 with the
    default one-bar fill delay (nothing can be held over the first bar)."""
    from scipy import stats

    report = backtest(home, action_file(tmp_path / "s.csv", SIGNALS))
    summary = json.loads((report.run_dir / "summary.json").read_text())
    equity = pd.read_csv(report.run_dir / "equity.csv")["equity"].to_numpy()
    r = equity / np.concatenate([[100_000.0], equity[:-1]]) - 1.0
    assert r.size == summary["run"]["bars"] and r[0] == 0.0
    sr = r.mean() / r.std(ddof=1)
    assert summary["strategy"]["sharpe"] == pytest.approx(sr * math.sqrt(252), rel=1e-9)
    skew, kurt = stats.skew(r), stats.kurtosis(r, fisher=False)
    psr = stats.norm.cdf(
        sr * math.sqrt(r.size - 1) / math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2)
    )
    assert summary["strategy"]["psr"] == pytest.approx(psr, rel=1e-7)  # equity.csv as written
    # Not the bars - 1 convention: dropping the first zero gives measurably other figures.
    rest = r[1:]
    assert (
        abs(rest.mean() / rest.std(ddof=1) * math.sqrt(252) - summary["strategy"]["sharpe"]) > 1e-6
    )
