"""parameter_sweep: a grid traded walk-forward; each window trades the set chosen on the windows
before it, and only those out-of-sample windows are reported. Real bundled closes, real engine."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

import constants as C
import pair_scan as ps
import parameter_sweep as psw
import performance_stats as pst
import process_stock_data as psd
import train_model as tm
from error_handling import ConfigurationError
from pair_engine import TradingConfig
from pair_selection import walk_forward_windows
from tests.helpers import copy_home, local_cluster, run
from trial_ledger import TrialLedger

GRID = ("entry_z=1.5,2.5", "exit_z=0,0.5", "lookback=40")


@pytest.fixture(scope="module")
def closes(bundled) -> pd.DataFrame:
    """AMD/BAC over 2016-2020: 16 windows of 252 + 63 bars, the first 4 training only."""
    return bundled.close[["AMD", "BAC"]].loc["2016":"2020"]


@pytest.fixture(scope="module")
def settings() -> psw.SweepSettings:
    candidates, skipped = psw.parse_grid(GRID, model=False)
    assert skipped == 0
    return psw.SweepSettings(candidates)


@pytest.fixture(scope="module")
def swept(closes, settings) -> psw.SweepResult:
    return psw.run_sweep(closes, "AMD", "BAC", settings)


# --- The choice and the reported path (pure) ------------------------------------------------------
def test_a_set_best_in_sample_and_worst_out_of_sample_is_reported_at_its_out_of_sample_loss():
    """Set A earns on windows 0-3 and loses on 4-7, set B the opposite: window 4 trades A (it is
    best on 0-3), so the reported path holds A's loss there, never its in-sample gains."""
    rng = np.random.default_rng(7)
    noise = [rng.normal(0, 0.002, 20) for _ in range(8)]
    good = [n + 0.004 for n in noise]
    bad = [n - 0.004 for n in noise]
    a = good[:4] + bad[4:]
    b = bad[:4] + good[4:]
    picks = psw.walk_forward_choices([a, b], train=4)
    assert picks[0][0] == 0  # A is chosen for window 4 on its in-sample record
    assert picks[0][1] == pytest.approx(pst.sharpe_ratio(np.concatenate(a[:4])))
    path = psw.out_of_sample_returns([a, b], picks, train=4)
    assert len(path) == 4  # windows 4..7 only
    assert np.array_equal(path[0], a[4])  # A's out-of-sample loss is what is reported
    for window in a[:4]:
        assert not any(np.array_equal(window, p) for p in path)
    assert np.prod(1 + path[0]) - 1 < 0
    # With one training window, window i trades the set best on window i - 1 (windows 1..7).
    assert [k for k, _ in psw.walk_forward_choices([a, b], train=1)] == [0, 0, 0, 0, 1, 1, 1]


def test_ties_and_undefined_scores_go_to_the_earlier_set():
    flat = [np.zeros(10)] * 3  # never traded: Sharpe undefined, scored 0
    assert psw.walk_forward_choices([flat, flat], train=2) == [(0, 0.0)]
    losing = [np.full(10, -0.001) + np.linspace(0, 1e-4, 10)] * 3
    assert psw.walk_forward_choices([losing, flat], train=2)[0][0] == 1


# --- The sweep on real data -----------------------------------------------------------------------
def test_reported_windows_are_the_chosen_sets_traded_by_the_engine_after_the_training_windows(
    closes, settings, swept
):
    windows = walk_forward_windows(len(closes), 252, 63)
    assert [c.window_index for c in swept.choices] == list(range(4, len(windows)))
    assert swept.dates[0] == closes.index[windows[4].trading_start]
    assert swept.dates[-1] == closes.index[windows[-1].trading_stop - 1]
    cfg = TradingConfig()
    pieces = []
    for c in swept.choices:
        direct = ps.scan_window(
            closes, "AMD", "BAC", c.chosen, settings.candidates[c.chosen], c.window_index,
            windows[c.window_index], cfg,
        )  # fmt: skip
        pieces.append(direct.returns)
        assert c.oos_return == pytest.approx(np.prod(1 + direct.returns) - 1, abs=1e-15)
        # The choice is the best in-sample Sharpe over the four windows before it.
        scores = [
            pst.sharpe_ratio(
                np.concatenate(
                    [
                        ps.scan_window(closes, "AMD", "BAC", k, r, i, windows[i], cfg).returns
                        for i in range(c.window_index - 4, c.window_index)
                    ]
                )
            )
            for k, r in enumerate(settings.candidates)
        ] if c.window_index == 4 else None  # fmt: skip
        if scores is not None:
            finite = [s if math.isfinite(s) else 0.0 for s in scores]
            assert c.chosen == int(np.argmax(finite))
    assert np.array_equal(swept.returns, np.concatenate(pieces))
    assert len(swept.returns) == len(swept.dates) == len(swept.bar_choice)


def test_statistics_are_those_of_the_reported_returns_deflated_by_the_sets_tried(swept):
    est = pst.estimate_sharpe(swept.returns)
    assert swept.estimate.sharpe == est.sharpe
    assert swept.trial_count.trials == 4
    sharpes = swept.candidate_sharpes
    assert swept.trial_count.sharpe_variance == pytest.approx(np.var(sharpes, ddof=1))
    assert swept.dsr == pytest.approx(
        pst.deflated_sharpe_ratio(swept.returns, 4, np.var(sharpes, ddof=1))
    )
    # A set's fixed Sharpe is over exactly the reported windows.
    assert all(math.isfinite(s) for s in sharpes)


def test_no_lookahead_choices_before_a_cut_are_unchanged(closes, settings, swept):
    cut = closes.iloc[: walk_forward_windows(len(closes), 252, 63)[10].trading_stop]
    early = psw.run_sweep(cut, "AMD", "BAC", settings)
    assert early.choices == swept.choices[: len(early.choices)]
    assert np.array_equal(early.returns, swept.returns[: len(early.returns)])


def test_a_sweep_on_local_processes_and_on_a_dask_cluster_equals_the_in_process_sweep(
    closes, settings, swept
):
    import task_runner as tr

    with tr.LocalRunner(2) as runner:
        other = psw.run_sweep(closes, "AMD", "BAC", settings, mapper=ps.runner_mapper(runner))
    assert other.choices == swept.choices
    assert np.array_equal(other.returns, swept.returns)
    with local_cluster(2) as client, tr.DaskRunner(client=client) as dask:
        on_dask = psw.run_sweep(closes, "AMD", "BAC", settings, mapper=ps.runner_mapper(dask))
    assert on_dask.choices == swept.choices
    assert np.array_equal(on_dask.returns, swept.returns)
    assert on_dask.candidate_sharpes == swept.candidate_sharpes


# --- The grid -------------------------------------------------------------------------------------
def test_grid_defaults_and_invalid_combinations():
    rules, skipped = psw.parse_grid(None, model=False)
    assert len(rules) == 12 and skipped == 0
    assert {r.zscore_bars for r in rules} == {40, 60}
    models, _ = psw.parse_grid(None, model=True)
    assert len(models) == 12 and all(isinstance(m, psw.ModelParameters) for m in models)
    some, skipped = psw.parse_grid(["entry_z=1,2", "exit_z=0.5,1.5"], model=False)
    assert skipped == 2 and len(some) == 3 * 2  # entry 1 with exit 1.5, at lookback 40 and 60


@pytest.mark.parametrize(
    ("items", "model", "needle"),
    [
        (["entry_z"], False, "KEY=V1,V2"),
        (["entry_z=2,x"], False, "not a number"),
        (["buy=0.6"], False, "a model key: pass --model"),
        (["entry_z=2"], True, "a rule key: drop --model"),
        (["lookback=2.5"], False, "whole number"),
        (["entry_z=1", "exit_z=1,2"], False, "no valid parameter set"),
        (["entry_z=1,1"], False, "given twice"),
    ],
)
def test_bad_grids_are_refused_in_one_line(items, model, needle):
    with pytest.raises(ConfigurationError, match=needle):
        psw.parse_grid(items, model=model)


@pytest.mark.parametrize(
    ("items", "model", "needle"),
    [
        (["kelly=-1"], True, "--grid kelly: -1 is out of range; allowed: 0 < kelly <= 1"),
        (["kelly=0.5,1.5"], True, "--grid kelly: 1.5 is out of range; allowed: 0 < kelly <= 1"),
        (["buy=1.5"], True, "--grid buy: 1.5 is out of range; allowed: 0 < buy < 1"),
        (["sell=0"], True, "--grid sell: 0 is out of range; allowed: 0 < sell < 1"),
        (["exit_z=-1"], False, "--grid exit_z: -1 is out of range; allowed: 0 <= exit_z"),
        (["entry_z=0"], False, "--grid entry_z: 0 is out of range; allowed: 0 < entry_z"),
        (["lookback=2"], False, "--grid lookback: 2 is out of range; allowed: lookback a whole"),
        (["entry_z=2,2.0"], False, "--grid entry_z: 2.0 is given twice"),
    ],
)
def test_a_grid_value_out_of_its_range_is_named_with_the_range(items, model, needle):
    """Not the rule between keys ("each needs sell <= buy"): the value and its own range."""
    with pytest.raises(ConfigurationError) as info:
        psw.parse_grid(items, model=model)
    assert needle in str(info.value)


def test_too_few_windows_for_the_training_windows_is_refused(closes, settings):
    with pytest.raises(ConfigurationError, match="train-windows"):
        psw.run_sweep(closes.iloc[:500], "AMD", "BAC", settings)  # 3 windows, 4 to train


# --- The command ----------------------------------------------------------------------------------
def test_cli_sweep_writes_its_folder_records_one_trial_per_set_and_reruns_are_not_new_trials(
    tmp_path,
):
    args = ("main.py", "sweep", "--long", "AMD", "--short", "BAC", "--start", "2016-01-01",
            "--end", "2020-12-31", "--grid", *GRID, "--jobs", "1")  # fmt: skip
    res = run(*args, home=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "walk-forward (out of sample)" in res.stdout
    folders = [p for p in (tmp_path / "results").iterdir() if p.is_dir()]
    assert len(folders) == 1
    folder = folders[0]
    assert {p.name for p in folder.iterdir()} == {
        "summary.json", "windows.csv", "candidates.csv", "equity.csv",
    }  # fmt: skip
    summary = json.loads((folder / "summary.json").read_text())
    windows = pd.read_csv(folder / "windows.csv")
    equity = pd.read_csv(folder / "equity.csv", parse_dates=["date"])
    assert summary["walk_forward"]["trials"] == 4
    assert len(windows) == summary["run"]["windows"]
    assert str(equity["date"].iloc[0].date()) == summary["run"]["oos_start"]
    assert set(equity["window"]) == set(windows["window_index"])
    wf_return = float(np.prod(1 + equity["return"].to_numpy()) - 1)
    assert wf_return == pytest.approx(summary["walk_forward"]["total_return"], abs=1e-6)
    assert f"{summary['walk_forward']['sharpe']:.2f}" in res.stdout
    trials = [t for t in TrialLedger(tmp_path / "results") if t.kind == psw.TRIAL_KIND]
    assert len(trials) == 4
    again = run(*args, home=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "DSR deflated over 4 trials as of " in again.stdout  # the same sets: no new trials
    wider = run(*args[:-5], "entry_z=1.5,2,2.5", "exit_z=0,0.5", "lookback=40", "--jobs", "1",
                home=tmp_path)  # fmt: skip
    assert wider.returncode == 0, wider.stderr
    assert "DSR deflated over 6 trials as of " in wider.stdout  # 2 new sets, 6 distinct


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--grid", "entry_z=abc"), "not a number"),
        (("--model-version", "v1"), "--model-version needs --model"),
        (("--train-windows", "40", "--start", "2020-01-01"), "train-windows"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, args, needle):
    res = run("main.py", "sweep", "--long", "AMD", "--short", "BAC", *args, home=tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert needle in res.stderr
    assert "Traceback" not in res.stderr
    results = tmp_path / "results"
    assert not results.exists() or not [p for p in results.iterdir() if p.is_dir()]


# --- A model's thresholds -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_home(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep-model")
    home = C.paths(root).ensure()
    psd.process("bundled", C.Pair("AAPL", "MSFT"), home=home)
    tm.train(
        C.Pair("AAPL", "MSFT"), tm.TrainConfig(models=("xgb",), folds=2, xgb_trees=40), home=home
    )
    return root


def test_model_sweep_scores_only_bars_after_the_models_training_range(trained_home, tmp_path):
    from model_management import ModelRegistry

    home = copy_home(trained_home, tmp_path)
    pair = C.Pair("AAPL", "MSFT")
    request = psw.SweepRequest(
        pair=pair,
        settings=psw.SweepSettings(
            psw.parse_grid(["buy=0.55,0.6", "sell=0.45", "kelly=0.5"], model=True)[0],
            formation_bars=63,
        ),
        model="xgb",
    )
    result, summary, _folder, _ = psw.sweep(request, home=home)
    record = ModelRegistry(home.models_dir).get_active_model("xgb", pair)
    seen_until = pd.Timestamp(record.metadata["ranges"]["validation"][1])
    table, _ = psd.load_processed(pair, home)
    first_scored = table.index[table.index.searchsorted(seen_until, side="right")]
    # Window 0 forms on the 63 closes before the first scored bar (closes only) and trades from
    # it; windows 0-3 only choose, so the reported bars start 4 windows later.
    scored = table.index[table.index >= first_scored]
    assert result.dates[0] == scored[4 * 63]
    assert result.source == f"model:{record.version}"
    assert summary["walk_forward"]["trials"] == 2
    # Each reported window equals the engine run of that window with the chosen thresholds.
    probs = psw.sweep_table(request, home, [])[0]
    windows = walk_forward_windows(len(probs), 63, 63)
    c = result.choices[0]
    direct = psw.model_window(
        probs, "AAPL", "MSFT", c.chosen, request.settings.candidates[c.chosen], c.window_index,
        windows[c.window_index], TradingConfig(),
    )  # fmt: skip
    assert np.array_equal(result.returns[: len(direct.returns)], direct.returns)
    assert direct.fills > 0
    with pytest.raises(ConfigurationError, match="inside the training/validation range"):
        psw.sweep(
            psw.SweepRequest(pair=pair, settings=request.settings, model="xgb", start="2010-01-04"),
            home=home,
        )
