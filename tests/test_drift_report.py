"""model_drift_detection.drift_report: a real tiny XGB model's reference against processed data."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest

import constants as C
import model_drift_detection as D
import process_stock_data as psd
import train_model
from error_handling import ConfigurationError, DataError, ModelIntegrityError

PAIR = C.Pair("AAPL", "MSFT")
#: 2,000 rows (about 8 years) are enough for PSI to tell a regime from sampling noise.
LONG_WINDOW = 2000


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory) -> C.Paths:
    """A home with an ACTIVE 20-tree XGB model (trained 1990-2013) and the 1990-2022 data."""
    home = C.paths(tmp_path_factory.mktemp("trained"))
    train_model.train(
        PAIR,
        train_model.TrainConfig(models=("xgb",), folds=2, xgb_trees=20),
        home=home,
        register=True,
    )
    return home


@pytest.fixture
def home(trained_home, tmp_path) -> C.Paths:
    """A private copy of the trained home: each test may re-process, tamper and log freely."""
    shutil.copytree(trained_home.home, tmp_path / "home")
    return C.paths(tmp_path / "home")


def alert_lines(home: C.Paths) -> list[dict]:
    if not home.alerts_log.exists():
        return []
    return [json.loads(line) for line in home.alerts_log.read_text().splitlines() if line]


def drift_alerts(home: C.Paths) -> list[dict]:
    return [a for a in alert_lines(home) if a["source"] == "drift_detection"]


def xgb_report(report: D.PairDriftReport) -> D.ModelDriftReport:
    (model,) = report.models
    assert model.kind == "xgb"
    return model


def drifted_features(report: D.PairDriftReport) -> list[str]:
    return [r.name for r in report.drifted if r.kind == D.DriftKind.FEATURE]


# --- The latest window ----------------------------------------------------------------------------


SHIFTED = "AAPL_rsi_14"


def shift_latest(home: C.Paths, feature: str = SHIFTED, by: float = 40.0, rows: int = 60) -> None:
    """Make the last `rows` bars of the processed file genuinely drift: `feature` moved by `by`."""
    file = home.processed_file(PAIR)
    table = pd.read_parquet(file)
    table.iloc[-rows:, table.columns.get_loc(feature)] += by
    table.to_parquet(file)


def test_a_shifted_feature_drifts_and_writes_one_alert_per_drifted_result(home):
    shift_latest(home)
    report = D.drift_report(PAIR, home=home)

    model = xgb_report(report)
    assert (model.window_start, model.window_end, model.rows) == ("2022-10-04", "2022-12-28", 60)
    assert SHIFTED in drifted_features(report)
    alerts = drift_alerts(home)
    assert len(alerts) == len(report.drifted) == model.alerts_written == report.alerts_written
    assert {a["details"]["feature"] for a in alerts} == {r.name for r in report.drifted}
    for alert in alerts:
        assert alert["details"]["model"] == model.version
        assert alert["severity"] in {"HIGH", "MEDIUM"}


def test_every_reference_feature_gets_a_result(home):
    model = xgb_report(D.drift_report(PAIR, home=home, emit=False))

    features = [r.name for r in model.report.results if r.kind == D.DriftKind.FEATURE]
    assert features == C.feature_names("AAPL", "MSFT")


def test_xgb_predictions_on_the_window_are_compared_with_those_on_validation(home):
    model = xgb_report(D.drift_report(PAIR, home=home, emit=False))

    (prediction,) = [r for r in model.report.results if r.kind == D.DriftKind.PREDICTION]
    assert prediction.name == D.PREDICTION_NAME
    assert prediction.details["current_count"] == 60
    # The validation part, 2013-03-07..2018-01-30: about 1,230 trading days.
    assert 1200 <= prediction.details["reference_count"] <= 1260


def test_predictions_false_compares_features_only(home):
    model = xgb_report(D.drift_report(PAIR, home=home, emit=False, predictions=False))

    assert {r.kind for r in model.report.results} == {D.DriftKind.FEATURE}


def test_emit_false_writes_no_alert(home):
    shift_latest(home)
    report = D.drift_report(PAIR, home=home, emit=False)

    assert report.drifted
    assert report.alerts_written == 0
    assert drift_alerts(home) == []


def test_table_rows_name_the_model_version_and_list_drifted_rows_first(home):
    shift_latest(home)
    report = D.drift_report(PAIR, home=home, emit=False)

    rows = report.to_table_rows()
    assert all(len(row) == len(D.MODEL_TABLE_HEADER) for row in rows)
    assert {row[0] for row in rows} == {xgb_report(report).version}
    flags = [row[-1] for row in rows]
    assert flags == sorted(flags, key=lambda flag: flag != "YES")


# --- Windows from the training period -------------------------------------------------------------


@pytest.mark.parametrize("window", [60, 250])
def test_windows_inside_the_training_period_raise_almost_no_alarm(home, window):
    """Calibration: PSI against the whole 1990-2013 part is far above 0.25 for slow features even
    inside it (the plain 0.25 rule flags most features); only PSI beyond the in-training 99th
    percentile counts, so in-training windows flag at most a couple of features."""
    flagged, plain = [], []
    for end in ("1995-06-30", "2001-03-30", "2008-10-31", "2012-06-29"):
        psd.process("bundled", PAIR, end=end, home=home)
        model = xgb_report(D.drift_report(PAIR, home=home, window=window, emit=False))
        features = [r for r in model.report.results if r.kind == D.DriftKind.FEATURE]
        flagged.append(sum(r.drifted for r in features))
        plain.append(sum(D.is_drifted(r.statistic, r.p_value) for r in features))
    assert max(flagged) <= 3, flagged
    assert sum(plain) >= 4 * max(1, sum(flagged)), (plain, flagged)


def test_the_training_part_itself_shows_no_feature_drift(home):
    psd.process("bundled", PAIR, end="2013-03-05", home=home)  # the training range ends here

    report = D.drift_report(PAIR, home=home, window=100_000)

    assert drifted_features(report) == []
    assert all(r.statistic < 0.01 for r in xgb_report(report).report.results if r.kind == "feature")
    assert drift_alerts(home) == []


# --- Too few rows ---------------------------------------------------------------------------------


def test_window_under_min_drift_rows_is_insufficient_and_emits_nothing(home):
    report = D.drift_report(PAIR, home=home, window=D.MIN_DRIFT_ROWS - 1)

    model = xgb_report(report)
    assert model.rows == D.MIN_DRIFT_ROWS - 1
    assert {r.band for r in model.report.results} == {D.DriftBand.INSUFFICIENT}
    assert not report.drifted
    assert drift_alerts(home) == []


def test_window_of_exactly_min_drift_rows_is_compared(home):
    model = xgb_report(D.drift_report(PAIR, home=home, window=D.MIN_DRIFT_ROWS, emit=False))

    assert D.DriftBand.INSUFFICIENT not in {r.band for r in model.report.results}


def test_window_below_one_row_is_a_configuration_error(home):
    with pytest.raises(ConfigurationError, match="at least 1 row"):
        D.drift_report(PAIR, home=home, window=0)


# --- Refusals -------------------------------------------------------------------------------------


def test_no_active_model_is_a_configuration_error_naming_the_train_command(tmp_path):
    with pytest.raises(
        ConfigurationError, match=r"no active model for AAPL/MSFT.*python main\.py train"
    ):
        D.drift_report(PAIR, home=C.paths(tmp_path))


def test_only_lstm_requested_without_an_lstm_model_is_a_configuration_error(home):
    with pytest.raises(ConfigurationError, match="no active model"):
        D.drift_report(PAIR, home=home, kinds=("lstm",))


def test_missing_processed_file_is_a_data_error_naming_the_process_command(home):
    home.processed_file(PAIR).unlink()

    with pytest.raises(DataError, match=r"python main\.py process"):
        D.drift_report(PAIR, home=home)


def test_tampered_drift_reference_is_a_model_integrity_error(home):
    (version_dir,) = [d for d in home.models_dir.iterdir() if d.is_dir()]
    reference = version_dir / train_model.DRIFT_REFERENCE_FILE
    blob = bytearray(reference.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    reference.write_bytes(bytes(blob))

    with pytest.raises(ModelIntegrityError, match=train_model.DRIFT_REFERENCE_FILE):
        D.drift_report(PAIR, home=home)
    assert drift_alerts(home) == []
    assert [a["severity"] for a in alert_lines(home)] == ["CRITICAL"]


# --- Imports --------------------------------------------------------------------------------------


def test_importing_the_module_loads_neither_tensorflow_nor_the_registry():
    code = (
        "import sys, model_drift_detection; "
        "print(sorted(m for m in ('tensorflow', 'keras', 'model_management', 'xgboost') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=C.PROJECT_ROOT
    )

    assert out.stdout.strip() == "[]"
