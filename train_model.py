"""Training: XGBoost and a Keras LSTM on the processed features, judged only out of sample.

Time is never shuffled. The rows are cut into train / validation / holdout in date order, with a
gap of LABEL_HORIZON_BARS between parts: row t's label uses the close of t+1, so without the gap the
last training label would peek at the first bar of the next part. Walk-forward validation uses
expanding windows over train+validation; the holdout is touched once, at the end, and reported
beside two baselines on the same dates. TensorFlow is imported only when the LSTM is trained.
Saving, loading and scoring a fitted model live in `model_artifacts`, which signals and drift
detection read without importing this module.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import platform
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import constants as C
from error_handling import ConfigurationError
from model_artifacts import (
    Scaler,
    import_keras,
    lstm_predict,
    save_artifacts,
    windows,
    xgb_predict,
)

log = logging.getLogger(__name__)

LABEL_HORIZON_BARS = 1  # the label of row t is known at the close of t+1
MODEL_KINDS = ("xgb", "lstm")
LSTM_PROFILE_HINT = "the LSTM needs TensorFlow: run ./install.sh lstm (or full)"
DRIFT_REFERENCE_FILE = "drift_reference.json"


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run; every field has the default `main.py train` uses."""

    models: tuple[str, ...] = MODEL_KINDS
    folds: int = 4  # walk-forward folds over train+validation
    epochs: int = 15  # LSTM epochs at most (early stopping on the validation part)
    lookback: int = 20  # LSTM window, bars
    validation_fraction: float = 0.15
    holdout_fraction: float = 0.15
    seed: int = 42
    lstm_units: int = 32
    batch_size: int = 256
    patience: int = 3
    xgb_trees: int = 200
    xgb_depth: int = 4
    xgb_learning_rate: float = 0.05
    tune_ensemble: bool = False  # pick (lstm, xgb) weights on the validation part


# --- Splits ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Split:
    """Row positions [start, stop) of one chronological part."""

    start: int
    stop: int

    @property
    def rows(self) -> slice:
        return slice(self.start, self.stop)

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Fold:
    """One walk-forward fold: train on [0, train.stop), test on [test.start, test.stop)."""

    number: int
    train: Split
    test: Split


def chronological_split(
    n_rows: int, validation_fraction: float, holdout_fraction: float
) -> tuple[Split, Split, Split]:
    """(train, validation, holdout) in date order, separated by LABEL_HORIZON_BARS-row gaps."""
    if not (0 < validation_fraction < 1 and 0 < holdout_fraction < 1):
        raise ConfigurationError("validation and holdout fractions must be between 0 and 1")
    gap = LABEL_HORIZON_BARS
    holdout_start = n_rows - round(n_rows * holdout_fraction)
    val_start = holdout_start - gap - round(n_rows * validation_fraction)
    train_stop = val_start - gap
    if train_stop < 100:
        raise ConfigurationError(
            f"only {n_rows} labeled rows: too few for train/validation/holdout parts"
        )
    return Split(0, train_stop), Split(val_start, holdout_start - gap), Split(holdout_start, n_rows)


def walk_forward_folds(n_rows: int, folds: int, *, min_train: int = 250) -> list[Fold]:
    """Expanding-window folds over rows [0, n_rows): fold i trains on everything before its test
    block (less a LABEL_HORIZON_BARS gap) and tests on the next block."""
    if folds < 1:
        raise ConfigurationError("--folds must be at least 1")
    test_size = (n_rows - min_train) // folds
    if test_size < 20:
        raise ConfigurationError(f"{n_rows} rows are too few for {folds} walk-forward folds")
    out = []
    for i in range(folds):
        test_start = n_rows - (folds - i) * test_size
        out.append(
            Fold(
                i + 1,
                Split(0, test_start - LABEL_HORIZON_BARS),
                Split(test_start, test_start + test_size),
            )
        )
    return out


# --- Metrics --------------------------------------------------------------------------------------
def classification_metrics(
    y: np.ndarray, prob: np.ndarray, next_return: np.ndarray
) -> dict[str, float]:
    """Accuracy, log-loss, ROC AUC, and the gross return of the rule 'long the spread when
    p > 0.5, short it otherwise' (sum of daily spread returns, no costs). With their uncertainty:
    the AUC's DeLong 95 % interval, and the accuracy against always predicting the rows' more
    frequent class (one-sided exact binomial p)."""
    from sklearn.metrics import accuracy_score, log_loss

    import performance_stats as ps

    prob = np.clip(prob.astype("float64"), 1e-7, 1 - 1e-7)
    position = np.where(prob > 0.5, 1.0, -1.0)
    both = len(np.unique(y)) == 2
    nan = float("nan")
    auc = ps.auc_delong(y, prob) if both else None
    acc = ps.accuracy_vs_majority(y, (prob > 0.5).astype(int)) if both else None
    return {
        "accuracy": float(accuracy_score(y, prob > 0.5)),
        "log_loss": float(log_loss(y, prob, labels=[0, 1])),
        "roc_auc": auc.auc if auc else nan,
        "roc_auc_ci_95": [auc.ci_low, auc.ci_high] if auc else [nan, nan],
        "majority_rate": acc.majority_rate if acc else nan,
        "accuracy_p_value": acc.p_value if acc else nan,
        "rule_return": float(np.sum(position * next_return)),
        "rows": len(y),
    }


def baseline_predictions(train_labels: np.ndarray, spread_z: np.ndarray) -> dict[str, np.ndarray]:
    """Probabilities of the two baselines: the training majority class, and mean reversion of the
    spread z-score (spread high -> expect it to fall -> long leg underperforms)."""
    majority = float(np.mean(train_labels))
    return {
        "majority_class": np.full(len(spread_z), majority),
        "zscore_mean_reversion": 1.0 / (1.0 + np.exp(spread_z)),
    }


# --- The data a model sees ------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingData:
    """Labeled rows of the processed table: features X, labels y, next spread returns, dates."""

    x: np.ndarray
    y: np.ndarray
    next_return: np.ndarray
    dates: pd.DatetimeIndex
    feature_names: tuple[str, ...]
    spread_z: np.ndarray
    data_sha256: str

    @classmethod
    def from_processed(cls, table: pd.DataFrame, pair: C.Pair, data_sha256: str) -> TrainingData:
        names = C.feature_names(
            pair.long, pair.short, with_volume=f"{pair.long}_volume_ratio" in table
        )
        labeled = table[table[C.LABEL_COLUMN].notna()]
        return cls(
            x=labeled[names].to_numpy("float64"),
            y=labeled[C.LABEL_COLUMN].to_numpy("int64"),
            next_return=labeled[C.NEXT_SPREAD_RETURN_COLUMN].to_numpy("float64"),
            dates=pd.DatetimeIndex(labeled.index),
            feature_names=tuple(names),
            spread_z=labeled[f"spread_z_{pair.long}_{pair.short}"].to_numpy("float64"),
            data_sha256=data_sha256,
        )

    def date_range(self, part: Split) -> tuple[str, str]:
        return str(self.dates[part.start].date()), str(self.dates[part.stop - 1].date())


# --- XGBoost --------------------------------------------------------------------------------------
def fit_xgb(x: np.ndarray, y: np.ndarray, config: TrainConfig, *, n_jobs: int = 2) -> Any:
    """XGBoost on (x, y), seeded by `config.seed`; `n_jobs=1` makes a fit bit-identical in any
    process (the scan's model tasks)."""
    from xgboost import XGBClassifier

    model = XGBClassifier(
        n_estimators=config.xgb_trees,
        max_depth=config.xgb_depth,
        learning_rate=config.xgb_learning_rate,
        subsample=0.8,
        colsample_bytree=0.8,
        random_state=config.seed,
        n_jobs=n_jobs,
        tree_method="hist",
        eval_metric="logloss",
    )
    model.fit(x, y)
    return model


# --- LSTM -----------------------------------------------------------------------------------------
def tensorflow_available() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def build_lstm(lookback: int, n_features: int, config: TrainConfig) -> Any:
    keras = import_keras()
    model = keras.Sequential(
        [
            keras.Input((lookback, n_features)),
            keras.layers.LSTM(config.lstm_units),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    return model


def fit_lstm(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    config: TrainConfig,
    on_epoch: Callable[[int, float], None] | None = None,
) -> Any:
    """Fit on windows of already scaled features; early stopping on the validation windows."""
    keras = import_keras()
    keras.utils.set_random_seed(config.seed)
    lb = config.lookback
    xt, yt = windows(x_train, lb), y_train[lb - 1 :]
    xv, yv = windows(x_val, lb), y_val[lb - 1 :]
    model = build_lstm(lb, x_train.shape[1], config)
    callbacks: list[Any] = [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.patience, restore_best_weights=True
        )
    ]
    if on_epoch is not None:
        callbacks.append(
            keras.callbacks.LambdaCallback(
                on_epoch_end=lambda epoch, logs: on_epoch(epoch + 1, float(logs["val_loss"]))
            )
        )
    model.fit(
        xt,
        yt,
        validation_data=(xv, yv),
        epochs=config.epochs,
        batch_size=config.batch_size,
        shuffle=True,  # shuffles windows inside the training part only, never across parts
        verbose=0,
        callbacks=callbacks,
    )
    return model


# --- Orchestration --------------------------------------------------------------------------------
@dataclass
class ModelReport:
    """Out-of-sample figures of one model kind."""

    kind: str
    folds: list[dict[str, Any]] = field(default_factory=list)
    holdout: dict[str, float] = field(default_factory=dict)
    version: str | None = None
    epochs_run: int | None = None


@dataclass
class TrainingReport:
    pair: C.Pair
    ranges: dict[str, tuple[str, str]]
    models: list[ModelReport]
    baselines: dict[str, dict[str, float]]
    skipped: list[str]


def _fit_predict(
    kind: str,
    data: TrainingData,
    train: Split,
    val: Split,
    test: Split,
    config: TrainConfig,
    on_epoch: Callable[[int, float], None] | None = None,
) -> tuple[Any, Scaler, np.ndarray, Split]:
    """Fit `kind` on `train` (LSTM: early stopping on `val`), predict `test`.

    Returns the model, its scaler, probabilities and the test rows they cover (the LSTM's first
    test window reaches back into earlier rows, which is allowed: they are past bars).
    """
    scaler = Scaler.fit(data.x[train.rows])
    if kind == "xgb":
        model = fit_xgb(scaler.transform(data.x[train.rows]), data.y[train.rows], config)
        return model, scaler, xgb_predict(model, scaler.transform(data.x[test.rows])), test
    lb = config.lookback
    x_all = scaler.transform(data.x)
    model = fit_lstm(
        x_all[train.rows], data.y[train.rows], x_all[val.rows], data.y[val.rows], config, on_epoch
    )
    # Windows for the test rows start lookback-1 rows before the test part (past data only).
    ctx = max(0, test.start - (lb - 1))
    prob = lstm_predict(model, x_all[ctx : test.stop], lb)
    covered = Split(ctx + lb - 1, test.stop)
    return model, scaler, prob[-len(covered) :], covered


def walk_forward(
    kind: str,
    data: TrainingData,
    dev: Split,
    config: TrainConfig,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Per-fold out-of-sample metrics over the development part (train+validation)."""
    results = []
    for fold in walk_forward_folds(len(dev), config.folds):
        # The LSTM's early stopping needs a validation slice: the last 15 % of the fold's training.
        n_val = max(config.lookback * 2, int(len(fold.train) * 0.15))
        f_train = Split(0, fold.train.stop - n_val - LABEL_HORIZON_BARS)
        f_val = Split(fold.train.stop - n_val, fold.train.stop)
        train_part = fold.train if kind == "xgb" else f_train
        _, _, prob, covered = _fit_predict(kind, data, train_part, f_val, fold.test, config)
        m: dict[str, Any] = dict(
            classification_metrics(data.y[covered.rows], prob, data.next_return[covered.rows])
        )
        train_end = data.dates[train_part.stop - 1]
        m.update(
            fold=fold.number,
            train_end=str(train_end.date()),
            test_start=str(data.dates[fold.test.start].date()),
            test_end=str(data.dates[fold.test.stop - 1].date()),
        )
        results.append(m)
        if progress:
            progress(f"{kind} fold {fold.number}/{config.folds}")
    return results


#: Fewest training rows a walk-forward test block's model may be fitted on; fewer: not scored.
MIN_TRAIN_ROWS = 100


@dataclass(frozen=True)
class BlockScore:
    """One test block of `score_test_blocks`: the model trained on `train_rows` usable rows, all
    at positions < `train_stop`, and scored the usable rows `rows` (positions) of the block."""

    number: int
    block: Split
    train_stop: int
    train_rows: int
    rows: np.ndarray = field(repr=False, compare=False)
    prob: np.ndarray = field(repr=False, compare=False)


def score_test_blocks(
    x: np.ndarray,
    y: np.ndarray,
    usable: np.ndarray,
    blocks: Sequence[Split],
    config: TrainConfig,
    *,
    min_train_rows: int = MIN_TRAIN_ROWS,
    n_jobs: int = 1,
) -> list[BlockScore]:
    """XGBoost walk-forward over given test blocks of row positions (date order, expanding
    window): block k's model trains on the usable rows before ``block.start -
    LABEL_HORIZON_BARS`` (the last training label is realized before the block's first bar) and
    scores the block's usable rows, on the raw features. A block with fewer than
    `min_train_rows` training rows or one class only is skipped (not scored). `usable`: rows
    whose features and label are known."""
    out = []
    positions = np.arange(len(y))
    for number, block in enumerate(blocks, 1):
        train_stop = max(block.start - LABEL_HORIZON_BARS, 0)
        train = usable & (positions < train_stop)
        test = usable & (positions >= block.start) & (positions < block.stop)
        if train.sum() < min_train_rows or len(np.unique(y[train])) < 2 or not test.any():
            continue
        # Raw features as float32 (what XGBoost bins): trees need no scaling, and a fitted
        # scaler's float sums are one more place where processes could differ in the last bit.
        model = fit_xgb(x[train].astype("float32"), y[train], config, n_jobs=n_jobs)
        prob = xgb_predict(model, x[test].astype("float32"))
        out.append(
            BlockScore(
                number=number,
                block=block,
                train_stop=train_stop,
                train_rows=int(train.sum()),
                rows=positions[test],
                prob=np.asarray(prob, dtype="float64"),
            )
        )
    return out


def library_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("numpy", "pandas", "scikit-learn", "xgboost-cpu", "tensorflow-cpu", "keras"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def train(
    pair: C.Pair,
    config: TrainConfig,
    *,
    source: str | None = None,
    home: C.Paths | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    register: bool = True,
) -> TrainingReport:
    """Process the data, run walk-forward validation, fit the final models, score the holdout once,
    and register the models with their metadata. `progress(task, done, total)` reports steps."""
    import process_stock_data as psd

    home = home or C.paths()
    table, summary = psd.process(C.data_source_name(source), pair, home=home)
    data = TrainingData.from_processed(table, pair, summary.sha256)
    train_part, val_part, holdout = chronological_split(
        len(data.y), config.validation_fraction, config.holdout_fraction
    )
    dev = Split(0, val_part.stop)
    ranges = {
        "train": data.date_range(train_part),
        "validation": data.date_range(val_part),
        "holdout": data.date_range(holdout),
    }
    kinds = list(config.models)
    skipped = []
    if "lstm" in kinds and not tensorflow_available():
        kinds.remove("lstm")
        skipped.append(f"lstm: {LSTM_PROFILE_HINT}")
        log.info("skipping the LSTM: %s", LSTM_PROFILE_HINT)  # the CLI tells the user

    total = sum(config.folds + (config.epochs if k == "lstm" else 1) for k in kinds)
    done = 0

    def step(task: str) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(task, done, total)

    if config.tune_ensemble and set(kinds) != set(MODEL_KINDS):
        raise ConfigurationError("--tune-ensemble needs both models (--model all) and TensorFlow")
    reports = []
    fitted: dict[str, tuple[Any, Scaler]] = {}
    for kind in kinds:
        report = ModelReport(kind)
        report.folds = walk_forward(kind, data, dev, config, progress=step)
        epochs_seen = 0

        def on_epoch(epoch: int, val_loss: float, kind: str = kind) -> None:
            nonlocal epochs_seen
            epochs_seen = epoch
            step(f"{kind} final fit epoch {epoch} (val loss {val_loss:.4f})")

        model, scaler, prob, covered = _fit_predict(
            kind, data, train_part, val_part, holdout, config, on_epoch
        )
        if kind == "lstm":
            report.epochs_run = epochs_seen
            for _ in range(config.epochs - epochs_seen):  # early stop: finish the bar
                step(f"{kind} stopped early")
        else:
            step(f"{kind} final fit")
        report.holdout = classification_metrics(
            data.y[covered.rows], prob, data.next_return[covered.rows]
        )
        fitted[kind] = (model, scaler)
        reports.append(report)

    extra: dict[str, Any] = {}
    if config.tune_ensemble:
        extra["ensemble_weights"] = list(_tune_on_validation(fitted, data, val_part, config))
        log.info("ensemble weights (lstm, xgb) tuned on validation: %s", extra["ensemble_weights"])
    if register:
        for report in reports:
            model, scaler = fitted[report.kind]
            report.version = _register(
                report.kind, model, scaler, data, config, ranges, report, home, pair, extra
            )

    base_probs = baseline_predictions(data.y[train_part.rows], data.spread_z[holdout.rows])
    baselines = {
        name: classification_metrics(data.y[holdout.rows], p, data.next_return[holdout.rows])
        for name, p in base_probs.items()
    }
    return TrainingReport(pair, ranges, reports, baselines, skipped)


def _tune_on_validation(
    fitted: dict[str, tuple[Any, Scaler]], data: TrainingData, val: Split, config: TrainConfig
) -> tuple[float, float]:
    """Ensemble weights from the final models' predictions on the validation rows only."""
    from signals import tune_ensemble_weights

    xgb, xgb_scaler = fitted["xgb"]
    lstm, lstm_scaler = fitted["lstm"]
    p_xgb = xgb_predict(xgb, xgb_scaler.transform(data.x[val.rows]))
    lb = config.lookback
    x = lstm_scaler.transform(data.x)
    p_lstm = lstm_predict(lstm, x[val.start - lb + 1 : val.stop], lb)
    return tune_ensemble_weights(data.y[val.rows], p_lstm, p_xgb)


def _register(
    kind: str,
    model: Any,
    scaler: Scaler,
    data: TrainingData,
    config: TrainConfig,
    ranges: dict[str, tuple[str, str]],
    report: ModelReport,
    home: C.Paths,
    pair: C.Pair,
    extra: dict[str, Any],
) -> str:
    from model_drift_detection import reference_statistics
    from model_management import ModelRegistry

    train_rows = chronological_split(
        len(data.y), config.validation_fraction, config.holdout_fraction
    )[0]
    reference = pd.DataFrame(data.x[train_rows.rows], columns=list(data.feature_names))
    metadata = {
        "ranges": {k: list(v) for k, v in ranges.items()},
        "holdout_metrics": report.holdout,
        "walk_forward": report.folds,
        "config": asdict(config),
        "library_versions": library_versions(),
        "data_sha256": data.data_sha256,
        "drift_reference_file": DRIFT_REFERENCE_FILE,
        **extra,
    }
    with tempfile.TemporaryDirectory(prefix=f"train-{kind}-") as tmp:
        save_artifacts(kind, model, scaler, Path(tmp))
        # Per-feature reference statistics of the training part (~0.5 MB): an artifact, so its
        # SHA-256 is checked with the model's, and the registry index stays small.
        (Path(tmp) / DRIFT_REFERENCE_FILE).write_text(json.dumps(reference_statistics(reference)))
        record = ModelRegistry(home.models_dir).register(
            kind,
            Path(tmp),
            pair=pair,
            feature_names=list(data.feature_names),
            lookback=config.lookback if kind == "lstm" else None,
            metadata=metadata,
        )
    log.info("registered %s %s (%s)", kind, record.version, record.status.value)
    return record.version


def parse_models(value: str) -> tuple[str, ...]:
    """`--model lstm|xgb|all` as a tuple of kinds."""
    if value == "all":
        return MODEL_KINDS
    if value not in MODEL_KINDS:
        raise ConfigurationError(f"unknown --model {value!r}; choose lstm, xgb or all")
    return (value,)


def summary_rows(report: TrainingReport) -> list[Sequence[str]]:
    """Rows (name, then SUMMARY_COLUMNS) of the holdout table."""

    rows: list[Sequence[str]] = [
        [f"{r.kind} ({r.version or 'not registered'})", *metric_cells(r.holdout)]
        for r in report.models
    ]
    rows += [[f"baseline: {name}", *metric_cells(m)] for name, m in report.baselines.items()]
    return rows


#: Column names of `summary_rows` after the model's name.
SUMMARY_COLUMNS = (
    "accuracy",
    "p vs majority",
    "log-loss",
    "AUC",
    "AUC 95 % CI (DeLong)",
    "rule return",
)


def metric_cells(m: dict[str, Any]) -> list[str]:
    """One model's cells under SUMMARY_COLUMNS."""
    return [
        f"{m['accuracy']:.3f}",
        _p_text(m.get("accuracy_p_value")),
        f"{m['log_loss']:.4f}",
        f"{m['roc_auc']:.3f}",
        auc_ci_text(m),
        f"{m['rule_return']:+.3f}",
    ]


def _p_text(p: Any) -> str:
    if p is None or not np.isfinite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def auc_ci_text(metrics: dict[str, Any]) -> str:
    """'0.506 .. 0.570', or n/a (metrics of a model registered before the interval existed)."""
    ci = metrics.get("roc_auc_ci_95")
    if not ci or any(v is None or not np.isfinite(v) for v in ci):
        return "n/a"
    return f"{ci[0]:.3f} .. {ci[1]:.3f}"


def ensure_active_model(pair: C.Pair, home: C.Paths, *, progress: Any = None) -> str | None:
    """Train (and register) models when the pair has no active one of the kind(s) signals use,
    so a fresh clone gets a full result from one command. Returns a note of what was trained."""
    import signals as sg
    from model_management import ModelRegistry

    registry = ModelRegistry(home.models_dir, home=home.home)
    kinds = (
        ("lstm", "xgb") if sg.ensemble_enabled() else (os.environ.get(sg.ENV_SIGNAL_MODEL, "xgb"),)
    )
    if all(registry.get_active_model(kind, pair) is not None for kind in kinds):
        return None
    models = ("lstm", "xgb") if tensorflow_available() else ("xgb",)
    log.info("no active %s model for %s: training first", "/".join(kinds), pair.key)
    report = train(pair, TrainConfig(models=models), home=home, progress=progress)
    return (
        f"trained {', '.join(f'{r.kind} {r.version}' for r in report.models)} first "
        f"(no active model for {pair.long}/{pair.short})"
    )
