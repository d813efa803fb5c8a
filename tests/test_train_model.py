"""train_model: chronological splits, walk-forward dates, real tiny XGBoost and LSTM models."""

from __future__ import annotations

import itertools
import subprocess

import numpy as np
import pytest

import constants as C
import model_artifacts as ma
import process_stock_data as psd
import train_model as tm
from tests.helpers import run

PAIR = C.Pair("AAPL", "MSFT")
TINY = tm.TrainConfig(folds=2, epochs=2, lstm_units=4, xgb_trees=20, batch_size=128, patience=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tm.TrainingData:
    """Real AAPL/MSFT features 2012-2019 (about 1,950 labeled rows)."""
    home = C.paths(tmp_path_factory.mktemp("home"))
    table, summary = psd.process("bundled", PAIR, start="2012-01-01", end="2019-12-31", home=home)
    return tm.TrainingData.from_processed(table, PAIR, summary.sha256)


def test_chronological_split_orders_parts_with_a_label_gap():
    train, val, holdout = tm.chronological_split(1000, 0.15, 0.15)
    assert train.start == 0 and holdout.stop == 1000
    assert train.stop + tm.LABEL_HORIZON_BARS <= val.start
    assert val.stop + tm.LABEL_HORIZON_BARS <= holdout.start
    assert len(holdout) == 150 and len(val) == 150


def test_walk_forward_folds_never_train_on_or_after_their_test_start(data):
    """On real dates: each fold's last training label is realized strictly before its test start."""
    folds = tm.walk_forward_folds(len(data.y), 5)
    assert [f.number for f in folds] == [1, 2, 3, 4, 5]
    for prev, fold in itertools.pairwise(folds):
        assert fold.train.stop > prev.train.stop  # expanding window
        assert fold.test.start == prev.test.stop  # consecutive test blocks
    for fold in folds:
        last_label_realized = data.dates[fold.train.stop - 1 + tm.LABEL_HORIZON_BARS]
        assert data.dates[fold.train.stop - 1] < last_label_realized < data.dates[fold.test.start]


def test_walk_forward_reports_dates_and_metrics_per_fold(data):
    dev = tm.Split(0, len(data.y) - 200)
    folds = tm.walk_forward("xgb", data, dev, TINY)
    assert len(folds) == 2
    for f in folds:
        assert f["train_end"] < f["test_start"] <= f["test_end"]
        assert 0 <= f["accuracy"] <= 1 and f["log_loss"] > 0 and 0 <= f["roc_auc"] <= 1
    assert folds[0]["test_end"] < folds[1]["test_start"]


def test_windows_end_at_their_row():
    x = np.arange(30, dtype=float).reshape(10, 3)
    w = ma.windows(x, 4)
    assert w.shape == (7, 4, 3)
    np.testing.assert_array_equal(w[0], x[0:4])
    np.testing.assert_array_equal(w[-1], x[6:10])


def test_scaler_is_fit_on_the_training_part_only(data):
    train, _, _ = tm.chronological_split(len(data.y), 0.15, 0.15)
    scaler = ma.Scaler.fit(data.x[train.rows])
    np.testing.assert_allclose(scaler.mean, data.x[train.rows].mean(axis=0))
    assert not np.allclose(scaler.mean, data.x.mean(axis=0))


def test_xgb_saved_and_reloaded_predicts_identically(data, tmp_path):
    train, val, holdout = tm.chronological_split(len(data.y), 0.15, 0.15)
    model, scaler, prob, covered = tm._fit_predict("xgb", data, train, val, holdout, TINY)
    ma.save_artifacts("xgb", model, scaler, tmp_path)
    again, scaler2 = ma.load_artifacts("xgb", tmp_path)
    prob2 = ma.xgb_predict(again, scaler2.transform(data.x[covered.rows]))
    np.testing.assert_array_equal(prob, prob2)
    assert covered == holdout


def test_xgb_training_is_deterministic_for_a_seed(data):
    train, val, holdout = tm.chronological_split(len(data.y), 0.15, 0.15)
    a = tm._fit_predict("xgb", data, train, val, holdout, TINY)[2]
    b = tm._fit_predict("xgb", data, train, val, holdout, TINY)[2]
    np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def lstm(data):
    pytest.importorskip("tensorflow", reason="the lstm profile is not installed")
    train, val, holdout = tm.chronological_split(len(data.y), 0.15, 0.15)
    return tm._fit_predict("lstm", data, train, val, holdout, TINY), holdout


def test_lstm_holdout_predictions_cover_every_holdout_row(lstm):
    (_, _, prob, covered), holdout = lstm
    assert covered == holdout  # windows reach back into past rows, never forward
    assert prob.shape == (len(holdout),) and np.all((prob > 0) & (prob < 1))


def test_lstm_saved_and_reloaded_predicts_identically(lstm, data, tmp_path):
    (model, scaler, prob, covered), _ = lstm
    ma.save_artifacts("lstm", model, scaler, tmp_path)
    again, scaler2 = ma.load_artifacts("lstm", tmp_path)
    x = scaler2.transform(data.x)
    ctx = covered.start - (TINY.lookback - 1)
    np.testing.assert_array_equal(
        ma.lstm_predict(again, x[ctx : covered.stop], TINY.lookback), prob
    )


def test_lstm_prediction_for_a_bar_ignores_later_bars(lstm, data):
    """Causality of the windows: predicting row t from rows up to t only gives the same number."""
    (model, scaler, prob, covered), _ = lstm
    x = scaler.transform(data.x)
    t = covered.start + 37
    alone = ma.lstm_predict(model, x[t - TINY.lookback + 1 : t + 1], TINY.lookback)
    assert alone[0] == pytest.approx(prob[37], abs=1e-6)


def test_train_reports_holdout_beside_baselines_on_the_same_rows(tmp_path):
    report = tm.train(
        PAIR,
        tm.TrainConfig(models=("xgb",), folds=2, xgb_trees=20),
        home=C.paths(tmp_path),
        register=False,
    )
    (xgb,) = report.models
    assert set(report.baselines) == {"majority_class", "zscore_mean_reversion"}
    assert {m["rows"] for m in report.baselines.values()} == {xgb.holdout["rows"]}
    assert report.ranges["validation"][1] < report.ranges["holdout"][0]
    assert report.baselines["majority_class"]["roc_auc"] == 0.5  # a constant score ranks nothing
    rows = tm.summary_rows(report)
    assert rows[0][0].startswith("xgb") and rows[-1][0] == "baseline: zscore_mean_reversion"


def test_unknown_model_kind_is_refused():
    with pytest.raises(Exception, match="unknown --model 'rnn'"):
        tm.parse_models("rnn")


def test_train_then_models_from_the_command_line(tmp_path):
    """`train` registers an active model; `models` lists it, and shows a tampered one FAILED."""

    def cli(*args: str) -> subprocess.CompletedProcess:
        return run("main.py", *args, home=tmp_path, extra_env={"COLUMNS": "250"})

    trained = cli("train", "--model", "xgb", "--folds", "2")
    assert trained.returncode == 0, trained.stderr
    assert "Holdout 2018-02-01 .. 2022-12-27" in trained.stdout
    assert "baseline: zscore_mean_reversion" in trained.stdout
    listed = cli("models")
    assert listed.returncode == 0
    assert "active" in listed.stdout and "OK" in listed.stdout and "FAILED" not in listed.stdout
    import pandas as pd

    processed = tmp_path / "data" / "processed_AAPL_MSFT.parquet"
    table = pd.read_parquet(processed)
    table.iloc[-60:, table.columns.get_loc("AAPL_rsi_14")] += 40  # a genuine shift
    table.to_parquet(processed)
    drift = cli("drift")
    assert drift.returncode == 1, drift.stderr
    assert "drifted result" in drift.stdout and "AAPL_rsi_14" in drift.stdout
    alerts = (tmp_path / "logs" / "alerts.log").read_text().splitlines()
    assert alerts and all('"source": "drift_detection"' in line for line in alerts)
    (model_file,) = (tmp_path / "models").glob("xgb-*/model.json")
    blob = bytearray(model_file.read_bytes())
    blob[100] ^= 0x01
    model_file.write_bytes(bytes(blob))
    tampered = cli("models")
    assert "FAILED (model.json)" in tampered.stdout


def test_without_tensorflow_train_names_the_profile_and_trains_xgboost(tmp_path):
    """Core profile: site-packages without tensorflow/keras (symlinks to everything else)."""
    import os
    import site
    import subprocess
    import sys
    from pathlib import Path

    root = Path(tm.__file__).resolve().parent
    view = tmp_path / "site-packages-without-tf"
    view.mkdir()
    (venv_site,) = [Path(p) for p in site.getsitepackages() if p.endswith("site-packages")]
    for entry in venv_site.iterdir():
        if not entry.name.lower().startswith(("tensorflow", "keras", "tf_keras")):
            (view / entry.name).symlink_to(entry)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(view), "TRADING_HOME": str(tmp_path / "h")}
    check = [
        sys._base_executable,
        "-s",
        "-c",
        "import importlib.util as u; print(u.find_spec('tensorflow'))",
    ]
    assert subprocess.run(check, env=env, capture_output=True, text=True).stdout.strip() == "None"
    proc = subprocess.run(
        [sys._base_executable, "-s", "main.py", "train", "--folds", "2"],
        cwd=root,
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert tm.LSTM_PROFILE_HINT in proc.stdout
    assert "xgb (xgb-AAPL_MSFT-" in proc.stdout and "lstm (lstm-" not in proc.stdout


def test_models_promote_rollback_retire_from_the_command_line(tmp_path):

    from model_management import ModelRegistry, ModelStatus

    home = C.paths(tmp_path)
    cfg = tm.TrainConfig(models=("xgb",), folds=2, xgb_trees=10)
    first = tm.train(PAIR, cfg, home=home).models[0].version
    second = tm.train(PAIR, cfg, home=home).models[0].version
    registry = ModelRegistry(home.models_dir)
    assert registry.get(second).status is ModelStatus.CANARY

    def cli(*args: str) -> subprocess.CompletedProcess:
        return run("main.py", "models", *args, home=tmp_path, extra_env={"COLUMNS": "250"})

    assert cli("promote", second).returncode == 0
    assert registry.get(second).status is ModelStatus.ACTIVE
    assert registry.get(first).status is ModelStatus.RETIRED
    assert cli("rollback", "--kind", "xgb").returncode == 0
    assert registry.get_active_model("xgb", PAIR).version == first
    bad = cli("retire", "xgb-NOPE")
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown model version xgb-NOPE")
    assert len(bad.stderr.strip().splitlines()) == 1
    missing = cli("promote")
    assert missing.returncode == 2 and "needs a VERSION" in missing.stderr


@pytest.mark.skipif(not tm.tensorflow_available(), reason="TensorFlow (lstm profile) not installed")
def test_keras_import_filters_tensorflow_start_up_chatter_but_not_other_stderr(tmp_path):
    code = (
        "import sys, model_artifacts as ma\n"
        "print('before', file=sys.stderr, flush=True)\n"
        "keras = ma.import_keras()\n"
        "assert ma.import_keras() is keras\n"
        "keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])\n"
        "print('after', file=sys.stderr)\n"
    )
    proc = run("-c", code, home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == "before" and lines[-1] == "after"  # our own stderr is untouched
    assert not [line for line in lines if any(noise in line for noise in ma._TF_NOISE)]
