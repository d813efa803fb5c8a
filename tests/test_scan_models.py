"""`main.py scan --models N`: XGBoost trained and scored walk-forward on the top pairs, out of
sample only, identical on every backend. Real bundled closes and tiny real models (no mocks)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest

import pair_scan as ps
from error_handling import ConfigurationError
from tests.helpers import run

TICKERS = ["AAPL", "MSFT", "KO", "PEP"]
#: Small, fast models: the behaviour under test does not depend on their size.
SETTINGS = ps.ModelSettings(
    folds=4, train=dataclasses.replace(ps.ModelSettings().train, xgb_trees=20)
)


@pytest.fixture(scope="module")
def closes(bundled) -> pd.DataFrame:
    """Four bundled tickers over 2015-2018: 11 trading windows of 63 bars, 2016-01 .. 2018-10."""
    return bundled.close[TICKERS].loc["2015":"2018"]


@pytest.fixture(scope="module")
def scanned(closes) -> ps.ScanResult:
    return ps.run_scan(closes)


@pytest.fixture(scope="module")
def blocks(scanned) -> tuple[tuple[int, int], ...]:
    return ps.model_blocks(scanned.windows, SETTINGS.folds)


@pytest.fixture(scope="module")
def ko_pep(closes, blocks) -> ps.PairModelResult:
    return ps.pair_models(closes, "KO", "PEP", blocks, SETTINGS)


def test_test_blocks_are_trading_windows_and_cover_the_out_of_sample_span(scanned, blocks):
    assert len(blocks) == 4
    assert blocks[0][0] == scanned.windows[0].trading_start
    assert blocks[-1][1] == scanned.windows[-1].trading_stop
    assert all(a[1] == b[0] for a, b in itertools.pairwise(blocks))  # contiguous
    starts = {w.trading_start for w in scanned.windows}
    assert all(start in starts for start, _ in blocks)  # folds change at window boundaries


def test_every_fold_trains_only_on_bars_whose_label_is_known_before_its_test_block(
    closes, scanned, ko_pep
):
    dates = closes.index
    assert len(ko_pep.folds) == 4
    for fold in ko_pep.folds:
        train_end, test_start = pd.Timestamp(fold.train_end), pd.Timestamp(fold.test_start)
        assert train_end < test_start
        # The last training label is the next bar's return: that bar is before the test block too.
        assert dates.get_loc(train_end) + 1 < dates.get_loc(test_start)
    for earlier, later in itertools.pairwise(ko_pep.folds):
        assert later.train_rows > earlier.train_rows  # expanding window
    # Every scored bar is an out-of-sample bar of the scan, and every one is scored.
    oos = dates[scanned.windows[0].trading_start : scanned.windows[-1].trading_stop]
    np.testing.assert_array_equal(ko_pep.dates, oos.to_numpy())
    assert ko_pep.scored_bars == len(oos) == sum(f.bars for f in ko_pep.folds)
    assert ko_pep.prob.min() >= 0.0 and ko_pep.prob.max() <= 1.0
    assert ko_pep.auc_ci_low < ko_pep.auc < ko_pep.auc_ci_high
    assert 0.0 <= ko_pep.accuracy_p <= 1.0


def test_no_lookahead_scores_are_unchanged_when_later_data_are_cut(closes, blocks, ko_pep):
    # Everything after the last scored label (the bar after the last test block) is dropped.
    assert blocks[-1][1] + 1 < len(closes)  # the 2018 tail after the last window exists
    cut = ps.pair_models(closes.iloc[: blocks[-1][1] + 1], "KO", "PEP", blocks, SETTINGS)
    assert cut.same_as(ko_pep)
    # A cut right after block k (its last label's bar) leaves folds 1..k+1 unchanged.
    k = 1
    early = ps.pair_models(closes.iloc[: blocks[k][1] + 1], "KO", "PEP", blocks[: k + 1], SETTINGS)
    n = early.scored_bars
    assert early.folds == ko_pep.folds[: k + 1]
    np.testing.assert_array_equal(early.dates, ko_pep.dates[:n])
    np.testing.assert_array_equal(early.prob, ko_pep.prob[:n])


def test_a_block_with_too_little_history_is_not_scored(closes, blocks):
    first_train = ps.pair_models(closes, "KO", "PEP", blocks, SETTINGS).folds[0].train_rows
    strict = dataclasses.replace(SETTINGS, min_train_rows=first_train + 1)
    result = ps.pair_models(closes, "KO", "PEP", blocks, strict)
    assert [f.number for f in result.folds] == [2, 3, 4]
    assert pd.Timestamp(result.folds[0].test_start) == closes.index[blocks[1][0]]


def test_models_are_identical_in_process_and_on_local_processes(closes, scanned):
    import task_runner as tr

    serial = ps.run_models(closes, dataclasses.replace(scanned), 2, SETTINGS)
    with tr.LocalRunner(2) as local:
        mapper = ps.runner_mapper(local)
        parallel = ps.run_models(closes, dataclasses.replace(scanned), 2, SETTINGS, mapper=mapper)
    assert list(serial.models) == list(parallel.models) == ps.top_pairs(scanned, 2)
    for key, m in serial.models.items():
        assert m.same_as(parallel.models[key]), key


def test_run_models_refuses_fewer_than_one_pair(closes, scanned):
    with pytest.raises(ConfigurationError, match="--models"):
        ps.run_models(closes, dataclasses.replace(scanned), 0)


def _write_universe(path, bundled, tickers=("AAPL", "MSFT", "KO"), years=("2017", "2019")):
    bundled.close[list(tickers)].loc[years[0] : years[1]].to_csv(path, index_label="date")
    return path


def test_cli_models_2_scores_exactly_the_top_2_pairs_in_the_table_and_files(tmp_path, bundled):
    universe = _write_universe(tmp_path / "u.csv", bundled)
    proc = run(
        "main.py", "scan", "--universe", f"csv:{universe}", "--models", "2", "--jobs", "1",
        "--no-charts", home=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "xgb AUC (95 % CI)" in proc.stdout and "acc p" in proc.stdout
    (folder,) = (tmp_path / "results").glob("scan-*")
    table = pd.read_csv(folder / "pairs.csv")
    assert set(ps.MODEL_COLUMNS) <= set(table.columns)
    scored = table["xgb_auc"].notna()
    assert list(scored) == [True, True, False]  # ranks 1 and 2 only
    assert table.loc[scored, "xgb_scored_bars"].gt(0).all()
    assert table.loc[~scored, list(ps.MODEL_COLUMNS)].isna().all().all()
    lo, hi = table.loc[scored, "xgb_auc_ci_low"], table.loc[scored, "xgb_auc_ci_high"]
    assert ((lo < table.loc[scored, "xgb_auc"]) & (table.loc[scored, "xgb_auc"] < hi)).all()
    parquet = pd.read_parquet(folder / "pairs.parquet")
    assert list(parquet.columns) == list(table.columns)
    summary = json.loads((folder / "summary.json").read_text())
    models = summary["models"]
    assert models["pairs_scored"] == 2 and models["kind"] == "xgb"
    assert [p["pair"] for p in models["pairs"]] == list(table["pair"][:2])
    assert models["folds"] == len(models["test_blocks"]) == len(models["pairs"][0]["folds"])
    assert models["test_blocks"][0]["start"] == summary["run"]["oos_start"]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("│")]
    for line, pair, auc in zip(rows, table["pair"], table["xgb_auc"], strict=True):
        assert pair in line
        assert (f"{auc:.3f} (" in line) == (not math.isnan(auc))


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_cli_models_below_one_is_refused_in_one_line(tmp_path, bundled, value):
    universe = _write_universe(tmp_path / "u.csv", bundled)
    proc = run("main.py", "scan", "--universe", f"csv:{universe}", "--models", value, home=tmp_path)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "--models" in err, err
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def test_bare_models_flag_means_the_top_5_pairs():
    import main

    parser = main.build_parser(trading=True)
    assert main._model_pairs(parser.parse_args(["scan", "--models"]).models) == 5
    assert main._model_pairs(parser.parse_args(["scan", "--models", "7"]).models) == 7
    assert main._model_pairs(parser.parse_args(["scan"]).models) == 0
