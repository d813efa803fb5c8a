"""The trial ledger's identity (a trial is what it earned: runs with identical returns bar for bar
are one trial), each run's DSR recomputed over the trials counted now, `main.py trials` and its
prune audit (issue 23, items 2 and 3)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import backtest_strategy as bt
import constants as C
import performance_stats as ps
from pair_engine import TradingConfig
from tests.helpers import run
from trial_ledger import Restart, Trial, TrialLedger, returns_fingerprint, trials_command

PAIR = C.Pair("AAPL", "MSFT")
START, END = "2021-01-04", "2021-12-31"
SIGNALS = [("2021-02-01", "buy"), ("2021-04-01", "sell"), ("2021-06-01", "flat"),
           ("2021-08-02", "buy"), ("2021-11-01", "flat")]  # fmt: skip


def action_file(path: Path, rows=SIGNALS) -> Path:
    path.write_text("date,action\n" + "".join(f"{d},{a}\n" for d, a in rows))
    return path


def backtest(home: C.Paths, signals: Path, **values) -> bt.BacktestReport:
    request = bt.BacktestRequest(
        pair=PAIR,
        start=START,
        end=END,
        signal_file=str(signals),
        config=TradingConfig().with_values(values),
        write_charts=False,
    )
    return bt.backtest(request, home=home)


def trial(run_id: str, returns, recorded_at: str = "2026-01-05T10:00:00+00:00", **kw) -> Trial:
    fields = dict(pair=("A", "B"), start="2020-01-02", end="2020-12-31", kind="strategy",
                  source="rule:x", config_hash=run_id)  # fmt: skip
    fields.update(kw)
    return Trial.of_returns(returns, run_id=run_id, recorded_at=recorded_at, **fields)


def noise(seed: int, n: int = 250, mean: float = 4e-4) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, 0.01, n)


# --- Item 2: identity is what a run earned -------------------------------------------------------
def test_a_setting_that_changes_no_return_is_not_another_trial_of_the_benchmark(home, tmp_path):
    """Four --rebalance-band runs: the z-score benchmark's returns are identical bar for bar in
    all four (the issue counted it 4 times); the strategy counts as many trials as it has
    distinct results."""
    signals = action_file(tmp_path / "s.csv")
    reports = [backtest(home, signals, rebalance_band=b) for b in (0.0, 0.1, 0.25, 0.5)]
    benchmark = [r.summary["benchmarks"]["zscore_rule"] for r in reports]
    assert len({b["sharpe"] for b in benchmark}) == 1  # the same benchmark every time
    assert [b["trials"] for b in benchmark] == [1, 1, 1, 1]
    strategy = [r.summary["strategy"] for r in reports]
    distinct = len({s["sharpe"] for s in strategy})
    assert strategy[-1]["trials"] == distinct
    # With one trial the benchmark's DSR is its PSR, not deflated by settings it ignores.
    assert benchmark[-1]["dsr"] == pytest.approx(benchmark[-1]["psr"], rel=1e-12)


def test_two_runs_with_identical_returns_are_one_trial_whatever_their_settings(tmp_path):
    ledger = TrialLedger(tmp_path)
    r = noise(1)
    ledger.record(trial("r1", r, source="signals:aaa"))
    ledger.record(trial("r2", r.copy(), source="signals:bbb"))  # renamed file, same returns
    ledger.record(trial("r3", r, kind="strategy", pair=("A", "B")))  # a re-run
    assert ledger.count(("A", "B"), "2020-01-02", "2020-12-31", "strategy").trials == 1
    changed = r.copy()
    changed[100] += 1e-6  # one bar differs
    ledger.record(trial("r4", changed))
    assert ledger.count(("A", "B"), "2020-01-02", "2020-12-31", "strategy").trials == 2


def test_the_fingerprint_names_the_returns_pair_and_dates():
    r = noise(2)
    base = returns_fingerprint(r, ("A", "B"), "2020-01-02", "2020-12-31")
    assert base == returns_fingerprint(list(r), ["A", "B"], "2020-01-02", "2020-12-31")
    assert base != returns_fingerprint(r, ("B", "A"), "2020-01-02", "2020-12-31")
    assert base != returns_fingerprint(r, ("A", "B"), "2020-01-03", "2020-12-31")
    assert base != returns_fingerprint(r[:-1], ("A", "B"), "2020-01-02", "2020-12-31")
    zeros = np.zeros(5)
    assert returns_fingerprint(zeros, "AB", "x", "y") == returns_fingerprint(-zeros, "AB", "x", "y")


def test_records_written_before_fingerprints_keep_their_old_identity(tmp_path):
    ledger = TrialLedger(tmp_path)
    old = {"run_id": "old", "recorded_at": "2025-01-01T00:00:00+00:00", "pair": ["A", "B"],
           "start": "2020-01-02", "end": "2020-12-31", "bars": 250, "kind": "strategy",
           "source": "rule:x", "config_hash": "h1", "sharpe": 0.4}  # fmt: skip
    ledger.path.write_text(json.dumps(old) + "\n" + json.dumps({**old, "run_id": "again"}) + "\n")
    assert ledger.count(("A", "B"), "2020-01-02", "2020-12-31", "strategy").trials == 1
    (first, _), unreadable = ledger.read()[0], ledger.read()[1]
    assert unreadable == 0 and first.fingerprint is None and first.moments is None
    ledger.record(trial("new", noise(3)))
    assert ledger.count(("A", "B"), "2020-01-02", "2020-12-31", "strategy").trials == 2


# --- Item 3: the DSR over the trials counted now -------------------------------------------------
def test_dsr_from_the_recorded_moments_equals_the_dsr_of_the_returns():
    r = noise(4)
    t = trial("r", r)
    for n, var in ((1, 0.0), (4, 0.3), (190, 0.05)):
        expected = ps.deflated_sharpe_ratio(r, n, var)
        assert ps.deflated_sharpe_from_moments(t.moments, n, var) == pytest.approx(
            expected, rel=1e-12, abs=1e-15
        )
    assert t.sharpe == pytest.approx(ps.sharpe_ratio(r), rel=1e-12)
    assert t.n_obs == 250 and t.bars == 250


def test_trials_list_recomputes_the_first_runs_dsr_over_the_trials_on_record_now(home, tmp_path):
    first = backtest(home, action_file(tmp_path / "s.csv"))
    others = ([("2021-03-01", "sell"), ("2021-09-01", "flat")], [("2021-05-03", "buy")])
    later = [backtest(home, action_file(tmp_path / f"s{i}.csv", rows)) for i, rows in
             enumerate(others)]  # fmt: skip
    frozen = first.summary["strategy"]
    assert frozen["trials"] == 1 and frozen["trials_as_of"]
    assert later[-1].summary["strategy"]["trials"] == 3
    lines = trials_command(TrialLedger(home.results_dir), "list")
    row = next(ln for ln in lines if first.run_dir.name in ln and "signals:" in ln)
    dsr_now = float(row.split()[-1])
    # The first run's returns deflated over the three trials now on record, by hand.
    sharpes = [r.summary["strategy"]["sharpe"] for r in (first, *later)]
    returns = first.strategy.returns.to_numpy()
    expected = ps.deflated_sharpe_ratio(returns, 3, float(np.var(sharpes, ddof=1)))
    assert dsr_now == pytest.approx(expected, abs=5e-4)  # printed to 3 decimals
    assert abs(dsr_now - frozen["dsr"]) > 0.01  # its own report froze the count at 1 trial
    head = next(ln for ln in lines if ln.startswith("AAPL/MSFT") and " strategy: " in ln)
    assert "DSR deflated over 3 trials as of " in head


def test_prune_since_stops_counting_older_runs_and_leaves_an_audit_record(tmp_path):
    ledger = TrialLedger(tmp_path)
    ledger.record(trial("jan", noise(5), "2026-01-05T10:00:00+00:00"))
    ledger.record(trial("feb", noise(6), "2026-02-05T10:00:00+00:00"))
    ledger.record(trial("mar", noise(7), "2026-03-05T10:00:00+00:00"))
    before = ledger.path.read_bytes()
    out = trials_command(ledger, "prune", since="2026-02-01", reason="new  data   vendor",
                         now="2026-03-06T00:00:00+00:00")  # fmt: skip
    assert "stopped counting 1 trial record(s) of 1 run(s) recorded before 2026-02-01" in out[0]
    assert ledger.path.read_bytes().startswith(before)  # appended, nothing rewritten
    entries, _ = ledger.entries()
    restart = entries[-1]
    assert isinstance(restart, Restart)
    assert (restart.since, restart.reason, restart.dropped_runs) == (
        "2026-02-01", "new data vendor", ("jan",))  # fmt: skip
    assert [t.run_id for t in ledger] == ["feb", "mar"]
    assert ledger.count(("A", "B"), "2020-01-02", "2020-12-31", "strategy").trials == 2
    # A run recorded after the restart counts, whatever its date; --all drops everything so far.
    ledger.record(trial("apr", noise(8), "2026-04-05T10:00:00+00:00"))
    trials_command(ledger, "prune", everything=True, reason="fresh start",
                   now="2026-04-06T00:00:00+00:00")  # fmt: skip
    assert list(ledger) == []
    ledger.record(trial("may", noise(9), "2026-05-05T10:00:00+00:00"))
    assert [t.run_id for t in ledger] == ["may"]
    shown = "\n".join(trials_command(ledger, "list", everything=True,
                                     now="2026-05-06T00:00:00+00:00"))  # fmt: skip
    assert shown.count("dropped") >= 4 and "new data vendor" in shown and "fresh start" in shown
    quiet = "\n".join(trials_command(ledger, "list", now="2026-05-06T00:00:00+00:00"))
    assert "jan" not in quiet and "may" in quiet


def test_prune_with_nothing_to_drop_writes_nothing(tmp_path):
    ledger = TrialLedger(tmp_path)
    ledger.record(trial("jan", noise(5), "2026-01-05T10:00:00+00:00"))
    before = ledger.path.read_bytes()
    out = trials_command(ledger, "prune", since="2026-01-01", reason="x",
                         now="2026-03-06T00:00:00+00:00")  # fmt: skip
    assert "nothing written" in out[0] and ledger.path.read_bytes() == before


def test_a_scan_trial_is_deflated_over_its_scans_universe(tmp_path):
    ledger = TrialLedger(tmp_path)
    for i, pair in enumerate((("A", "B"), ("A", "C"), ("B", "C"))):
        ledger.record(trial("scan-1", noise(10 + i), kind="scan", pair=pair))
    lines = trials_command(ledger, "list", now="2026-01-06T00:00:00+00:00")
    heads = [ln for ln in lines if " scan: " in ln]
    assert len(heads) == 3
    assert all("deflated over 3 trials as of 2026-01-06 00:00 UTC" in h for h in heads)


# --- The command line ---------------------------------------------------------------------------
def test_cli_trials_lists_and_prunes_through_main(tmp_path):
    home = tmp_path / "home"
    ledger = TrialLedger(home / "results")
    ledger.record(trial("run-a", noise(1), "2026-01-05T10:00:00+00:00", pair=("AAPL", "MSFT")))
    ledger.record(trial("run-b", noise(2), "2026-01-06T10:00:00+00:00", pair=("AAPL", "MSFT")))
    listed = run("main.py", "trials", home=home)
    assert listed.returncode == 0, listed.stderr
    assert "run-a" in listed.stdout and "run-b" in listed.stdout
    assert "DSR deflated over 2 trials as of" in listed.stdout
    pruned = run("main.py", "trials", "prune", "--since", "2026-01-06", "--reason", "test",
                 home=home)  # fmt: skip
    assert pruned.returncode == 0, pruned.stderr
    assert "stopped counting 1 trial record(s)" in pruned.stdout
    again = run("main.py", "trials", "list", home=home)
    assert "run-a" not in again.stdout and "deflated over 1 trial as of" in again.stdout
    every = run("main.py", "trials", "list", "--all", home=home)
    assert "run-a" in every.stdout and "restart" in every.stdout and math.isfinite(1.0)
