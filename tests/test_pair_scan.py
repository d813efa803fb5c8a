"""pair_scan: every pair of a universe, walk-forward, the z-score rule traded out of sample through
the backtest engine. Real bundled closes, a small universe and a few years so it stays fast."""

from __future__ import annotations

import json
import math
import os
import pickle
import signal

import numpy as np
import pandas as pd
import pytest

import backtest_strategy as bt
import pair_scan as ps
from error_handling import ConfigurationError
from pair_engine import TradingConfig, rule_instructions
from pair_selection import pair_statistics
from tests.helpers import alive, local_cluster, run
from trial_ledger import TrialLedger

TICKERS = ["AAPL", "MSFT", "KO", "PEP"]


@pytest.fixture(scope="module")
def closes(bundled) -> pd.DataFrame:
    """Four bundled tickers over 2015-2018: 6 pairs, 11 walk-forward windows of 252 + 63 bars."""
    return bundled.close[TICKERS].loc["2015":"2018"]


@pytest.fixture(scope="module")
def scanned(closes) -> ps.ScanResult:
    return ps.run_scan(closes)


def _by_key(results):
    return {(r.long, r.short, r.rule_index, r.window_index): r for r in results}


def _direct_window(closes, long, short, w, rule, cfg) -> bt.BacktestResult:
    """The same window by hand: z on the formation + trading closes, the rule's states on the
    trading bars, flat `fill_delay_bars` before the end, one run_backtest call."""
    rows = closes[[long, short]].iloc[w.formation_start : w.trading_stop]
    logs = np.log(rows.to_numpy())
    z = bt.rolling_spread_zscore(logs[:, 0], logs[:, 1], rule.zscore_bars)[w.formation_bars :]
    states = bt.zscore_rule_states(z, rule.entry_z, rule.exit_z)
    states[-1 - cfg.fill_delay_bars :] = 0.0
    weights = rule_instructions(states, cfg.sizing).weights
    return bt.run_backtest(
        rows.iloc[w.formation_bars :],
        weights,
        cfg,
        history=rows.iloc[: w.formation_bars],
        log_rejections=False,
    )


def test_each_window_equals_a_direct_backtest_of_that_window(closes, scanned):
    cfg, rule = TradingConfig(), ps.RuleParameters()
    mine = [r for r in scanned.window_results if (r.long, r.short) == ("KO", "PEP")]
    assert len(mine) == len(scanned.windows) == 11
    for r in mine:
        direct = _direct_window(closes, "KO", "PEP", r.window, rule, cfg)
        np.testing.assert_array_equal(r.returns, direct.returns.to_numpy())
        assert r.fills == len(direct.trades)
        assert r.total_costs == pytest.approx(sum(direct.costs.values()), abs=1e-9)
        assert r.net_pnl == pytest.approx(direct.equity["equity"].iloc[-1] - 100_000.0)
        # every window ends flat: positions are closed at its last close
        assert direct.equity[["qty_KO", "qty_PEP"]].iloc[-1].tolist() == [0, 0]
        f = closes[["KO", "PEP"]].iloc[r.window.formation_start : r.window.formation_stop]
        assert r.statistics == pair_statistics(np.log(f["KO"]), np.log(f["PEP"]))
    assert sum(r.fills for r in mine) > 0  # the rule really traded


def test_pair_returns_are_its_windows_returns_chained_in_order(scanned):
    windows = _by_key(scanned.window_results)
    assert len(scanned.pairs) == 6
    for p in scanned.pairs:
        parts = [windows[(p.long, p.short, 0, i)].returns for i in range(len(scanned.windows))]
        np.testing.assert_array_equal(p.returns, np.concatenate(parts))
        assert p.bars == 11 * 63
        assert p.total_return == pytest.approx(np.prod(1 + p.returns) - 1)
        assert p.fills == sum(windows[(p.long, p.short, 0, i)].fills for i in range(11))


def test_no_lookahead_windows_before_a_cut_are_unchanged(closes, scanned):
    cut_at = scanned.windows[8].trading_stop + 20  # mid-way through window 9's trading rows
    cut = ps.run_scan(closes.iloc[:cut_at])
    assert len(cut.windows) == 9
    full = _by_key(scanned.window_results)
    for r in cut.window_results:
        assert r.window.trading_stop <= cut_at
        assert r.same_as(full[(r.long, r.short, r.rule_index, r.window_index)])


def test_ranked_by_dsr_then_sharpe_deflated_over_pairs_times_parameter_sets(closes):
    settings = ps.ScanSettings(
        rules=(ps.RuleParameters(), ps.RuleParameters(entry_z=1.5, exit_z=0.25))
    )
    result = ps.run_scan(closes[["AAPL", "MSFT", "KO"]], settings)
    assert len(result.pairs) == 3 * 2
    sharpes = [p.sharpe for p in result.pairs]
    for p in result.pairs:
        assert p.trials == 6
        assert p.trial_sharpe_variance == pytest.approx(np.var(sharpes, ddof=1))
        assert p.dsr <= p.psr  # deflation only lowers the probability
    keys = [(p.dsr, p.sharpe) for p in result.pairs]
    assert keys == sorted(keys, reverse=True)


def _reverse_map(fn, tasks, progress=None):
    """Runs the tasks last to first and hands the results back in that (reversed) order."""
    out = []
    for i, args in enumerate(reversed(tasks)):
        out.append(fn(*args))
        if progress:
            progress(i + 1, len(tasks))
    return out


def test_mapper_order_does_not_change_results(closes, scanned):
    calls = []

    def recording(fn, tasks, progress=None):
        calls.append(len(tasks))
        # a runner ships the function, the shared table and the tasks to other processes
        pickle.loads(pickle.dumps((fn, tasks[0])))  # noqa: S301 (our own bytes)
        return _reverse_map(fn, tasks, progress)

    other = ps.run_scan(closes, mapper=recording)
    assert calls == [6]  # one task per pair (x one rule set): its windows and its row
    assert [p.pair for p in other.pairs] == [p.pair for p in scanned.pairs]
    for a, b in zip(other.pairs, scanned.pairs, strict=True):
        assert a == b
        np.testing.assert_array_equal(a.returns, b.returns)
    for a, b in zip(other.window_results, scanned.window_results, strict=True):
        assert a.same_as(b)


def _write_universe(path, bundled, tickers=("AAPL", "MSFT", "KO"), years=("2017", "2019")):
    frame = bundled.close[list(tickers)].loc[years[0] : years[1]]
    frame.to_csv(path, index_label="date")
    return path


def test_scan_records_one_trial_per_pair_and_parameter_set(tmp_path, bundled):
    universe = _write_universe(tmp_path / "u.csv", bundled)
    request = ps.ScanRequest(universe=f"csv:{universe}", write_charts=False)
    result, summary, _ = ps.scan(request, results_dir=tmp_path / "results")
    trials = [t for t in TrialLedger(tmp_path / "results") if t.kind == "scan"]
    assert len(trials) == 3 and summary["trials"]["count"] == 3
    assert {t.pair for t in trials} == {("AAPL", "MSFT"), ("AAPL", "KO"), ("MSFT", "KO")}
    assert {(t.start, t.end) for t in trials} == {(result.oos_start, result.oos_end)}
    # the same scan again tries nothing new; other parameters are 3 more trials
    again, _, _ = ps.scan(request, results_dir=tmp_path / "results")
    assert again.trial_count.trials == 3
    other = ps.ScanRequest(
        universe=f"csv:{universe}",
        settings=ps.ScanSettings(rules=(ps.RuleParameters(entry_z=2.5),)),
        write_charts=False,
    )
    third, _, _ = ps.scan(other, results_dir=tmp_path / "results")
    assert third.trial_count.trials == 6
    assert all(p.trials == 6 for p in third.pairs)


@pytest.mark.parametrize(
    "content,needle",
    [
        ("day,AAPL,MSFT\n2020-01-02,1,2\n", "no date column"),
        ("date,AAPL\n2020-01-02,1\n2020-01-03,2\n", "at least 2 tickers"),
        ("date,AAPL,MSFT\n2020-01-02,1,2\n2020-01-03,0,2\n", "prices must be positive"),
        ("date,AAPL,MSFT\n2020-01-02,1,x\n", "is not a number"),
        ("date,A$PL,MSFT\n2020-01-02,1,2\n2020-01-03,1,2\n", "column 'A$PL'"),
        ("date,AAPL,MSFT\n2020-01-02,1,2\n2020-01-03,1e308,2\n", "AAPL on 2020-01-03 is 1e+308"),
    ],
)
def test_bad_universe_file_is_refused_in_one_line(tmp_path, content, needle):
    path = tmp_path / "u.csv"
    path.write_text(content)
    with pytest.raises(ConfigurationError) as info:
        ps.load_universe(f"csv:{path}")
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("start", "end", "needle"),
    [
        ("2030-01-02", None, "--start 2030-01-02 is after the last date of U (2022-12-28)"),
        (None, "1985-01-02", "--end 1985-01-02 is before the first date of U (1990-01-02)"),
    ],
)
def test_a_date_range_outside_the_data_is_named(bundled, start, end, needle):
    """Not "too little data ... 0 bars": the date and the data's own bound."""
    with pytest.raises(ConfigurationError) as info:
        ps.requested_dates(bundled.close, start, end, "U")
    assert needle in str(info.value)
    assert len(ps.requested_dates(bundled.close, "2022-12-01", "2022-12-10", "U")) == 7


def test_bad_settings_are_refused():
    with pytest.raises(ConfigurationError, match="warm-up"):
        ps.ScanSettings(formation_bars=100)
    with pytest.raises(ConfigurationError, match="exit z < entry z"):
        ps.RuleParameters(entry_z=1.0, exit_z=1.5)
    with pytest.raises(ConfigurationError, match="bundled or csv:PATH"):
        ps.load_universe("sp500")


def test_cli_scan_writes_every_file_and_prints_the_ranked_table(tmp_path, bundled):
    universe = _write_universe(tmp_path / "u.csv", bundled)
    proc = run("main.py", "scan", "--universe", f"csv:{universe}", "--top", "2", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    (folder,) = (tmp_path / "results").glob("scan-*")
    names = {p.name for p in folder.iterdir()}
    assert names == {"pairs.csv", "pairs.parquet", "summary.json", "heatmap.png", "heatmap.html"}
    table = pd.read_csv(folder / "pairs.csv")
    assert len(table) == 3 and list(table["rank"]) == [1, 2, 3]
    parquet = pd.read_parquet(folder / "pairs.parquet")
    assert list(parquet.columns) == list(table.columns)
    assert list(parquet["pair"]) == list(table["pair"])
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["run"]["pairs"] == 3 and summary["trials"]["count"] == 3
    assert [row["pair"] for row in summary["top"][:2]] == list(table["pair"][:2])
    shown = [line for line in proc.stdout.splitlines() if line.startswith("│")]
    assert len(shown) == 2  # --top 2
    assert table["pair"][0] in shown[0] and "OOS Sharpe" in proc.stdout
    assert math.isfinite(summary["top"][0]["sharpe"])


def test_cli_scan_grid_ranks_every_pair_and_set_and_deflates_by_their_product(tmp_path, bundled):
    universe = _write_universe(tmp_path / "u.csv", bundled)
    grid = ("--grid", "entry_z=1.5,2", "exit_z=0.5", "lookback=40")
    proc = run("main.py", "scan", "--universe", f"csv:{universe}", *grid, "--jobs", "1",
               "--no-charts", home=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (folder,) = (tmp_path / "results").glob("scan-*")
    table = pd.read_csv(folder / "pairs.csv")
    assert len(table) == 3 * 2  # 3 pairs x 2 sets, each a row
    assert sorted(set(zip(table["pair"], table["rule_entry_z"], strict=True))) == sorted(
        (p, z) for p in set(table["pair"]) for z in (1.5, 2.0)
    )
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["trials"]["count"] == 6 and len(summary["run"]["parameter_sets"]) == 2
    assert "current z40 1.5/0.5" in proc.stdout  # the set column
    both = run("main.py", "scan", "--universe", f"csv:{universe}", *grid, "--entry-z", "2",
               home=tmp_path)  # fmt: skip
    assert both.returncode == 2 and "either --grid or --entry-z" in both.stderr


def test_coint_lags_aic_changes_the_coint_column_only_never_the_trades(closes, scanned):
    aic = ps.run_scan(closes, ps.ScanSettings(coint_lags="aic"))
    fixed, other = _by_key(scanned.window_results), _by_key(aic.window_results)
    assert fixed.keys() == other.keys()
    for key, r in other.items():
        f = closes[[r.long, r.short]].iloc[r.window.formation_start : r.window.formation_stop]
        logs = np.log(f.to_numpy())
        assert (
            r.statistics.coint_pvalue == pair_statistics(logs[:, 0], logs[:, 1], "aic").coint_pvalue
        )
        np.testing.assert_array_equal(r.returns, fixed[key].returns)
    assert any(other[k].statistics.coint_pvalue != fixed[k].statistics.coint_pvalue for k in fixed)
    with pytest.raises(ConfigurationError, match="--coint-lags must be one of fixed1, aic"):
        ps.ScanSettings(coint_lags="bic")


def test_cli_scan_coint_lags_is_recorded_and_named_under_the_table(tmp_path, bundled):
    universe = _write_universe(tmp_path / "u.csv", bundled)
    proc = run("main.py", "scan", "--universe", f"csv:{universe}", "--coint-lags", "aic",
               "--jobs", "1", "--no-charts", home=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (folder,) = (tmp_path / "results").glob("scan-*")
    assert json.loads((folder / "summary.json").read_text())["run"]["coint_lags"] == "aic"
    assert "(ADF lags: aic)" in " ".join(proc.stdout.split())
    bad = run("main.py", "scan", "--universe", f"csv:{universe}", "--coint-lags", "bic",
              home=tmp_path)  # fmt: skip
    assert bad.returncode == 2 and "invalid choice: 'bic'" in bad.stderr


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--universe", "sp500"], "bundled or csv:PATH"),
        (["--universe", "csv:missing.csv"], "not found"),
        (["--universe", "csv:{u}", "--formation-bars", "700"], "too little data"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, bundled, args, needle):
    universe = _write_universe(tmp_path / "u.csv", bundled)
    args = [a.format(u=universe) for a in args]
    proc = run("main.py", "scan", *args, home=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and needle in err, err
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


# --- The task runner's backends -------------------------------------------------------------------
def _same_scan(a: ps.ScanResult, b: ps.ScanResult) -> None:
    assert [(p.pair, p.rule_index) for p in a.pairs] == [(p.pair, p.rule_index) for p in b.pairs]
    for p, q in zip(a.pairs, b.pairs, strict=True):
        assert np.array_equal(p.returns, q.returns)
        assert (p.sharpe, p.sharpe_ci_low, p.sharpe_ci_high, p.psr, p.dsr, p.fills) == (
            q.sharpe, q.sharpe_ci_low, q.sharpe_ci_high, q.psr, q.dsr, q.fills
        )  # fmt: skip


def test_the_scan_is_identical_in_process_on_local_processes_and_on_a_dask_cluster(
    closes, scanned, tmp_path
):
    import task_runner as tr

    with tr.LocalRunner(2) as local:
        _same_scan(scanned, ps.run_scan(closes, mapper=ps.runner_mapper(local)))
    with local_cluster(2) as client, tr.DaskRunner(client=client) as dask:
        _same_scan(scanned, ps.run_scan(closes, mapper=ps.runner_mapper(dask)))
        # A worker process killed mid-scan: Dask re-runs its tasks elsewhere, same result.
        victim = next(iter(client.run(os.getpid).values()))
        killed: list[int] = []

        def kill_one_worker(stage: str, done: int, total: int) -> None:
            if done == 1 and not killed:
                os.kill(victim, signal.SIGKILL)
                killed.append(done)

        again = ps.run_scan(closes, mapper=ps.runner_mapper(dask), progress=kill_one_worker)
        assert killed == [1]  # killed with 5 of 6 pairs unfinished
        assert not alive(victim)
        _same_scan(scanned, again)


def test_an_interrupted_scan_resumes_from_its_cache(closes, scanned, tmp_path):
    import task_runner as tr

    cache_dir = tmp_path / "cache"
    cache = tr.TaskCache(cache_dir)

    class Interrupted(Exception):
        pass

    def stop_after_2(stage: str, done: int, total: int) -> None:
        if stage == "pairs" and done == 2:
            raise Interrupted  # as a Ctrl-C after the 2nd pair

    with pytest.raises(Interrupted):
        ps.run_scan(
            closes, mapper=ps.runner_mapper(tr.SerialRunner(), cache), progress=stop_after_2
        )
    assert len(list(cache_dir.iterdir())) == 2  # each pair stored as it finished

    computed: list[int] = []

    def count(stage: str, done: int, total: int) -> None:
        if stage == "pairs":
            computed.append(done)

    resumed = ps.run_scan(closes, mapper=ps.runner_mapper(tr.SerialRunner(), cache), progress=count)
    _same_scan(scanned, resumed)
    pairs = len(scanned.pairs)
    # The progress starts at the 2 stored pairs; only the other pairs were computed.
    assert computed[0] == 2 and computed[-1] == pairs and len(computed) == pairs - 2 + 1
    assert len(list(cache_dir.iterdir())) == pairs
