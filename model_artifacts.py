"""Saved model artifacts: the scaler, save/load of XGBoost and Keras LSTM models, and predicting.

Why its own module: the trainer writes these artifacts, and signals and drift detection read them;
keeping the read side here lets both depend on it without importing the trainer, so dependencies
point one way (train_model, signals, model_drift_detection -> model_artifacts).

Probabilities are P(label = 1): the long leg beats the short leg over the next bar. An LSTM
prediction for row t uses the window of rows t-lookback+1 .. t only (no later bar). XGBoost is
imported when a model is loaded; TensorFlow only when an LSTM is loaded or scored.
Imports nothing from the project.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Files of one saved model in its directory (the registry checks their SHA-256 before a load).
SCALER_FILE = "scaler.json"
XGB_MODEL_FILE = "model.json"
LSTM_MODEL_FILE = "model.keras"


@dataclass(frozen=True)
class Scaler:
    """Per-feature standardization fit on the training part only; saved beside the model."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(cls, x: np.ndarray) -> Scaler:
        std = x.std(axis=0)
        return cls(
            tuple(map(float, x.mean(axis=0))), tuple(float(s) if s > 0 else 1.0 for s in std)
        )

    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((x - np.asarray(self.mean)) / np.asarray(self.std)).astype("float32")

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> Scaler:
        d = json.loads(path.read_text())
        return cls(tuple(d["mean"]), tuple(d["std"]))


# --- XGBoost --------------------------------------------------------------------------------------
def xgb_predict(model: Any, x: np.ndarray) -> np.ndarray:
    """P(label = 1) per row."""
    return model.predict_proba(x)[:, 1]


# --- LSTM -----------------------------------------------------------------------------------------
# TensorFlow's C++ start-up chatter, printed on stderr before its log level is read (so
# TF_CPP_MIN_LOG_LEVEL cannot hide it): noise for the operator, never an error.
_TF_NOISE = ("All log messages before absl::InitializeLog()", "oneDNN custom operations are on")


def import_keras() -> Any:
    """Import keras (TensorFlow) with its start-up chatter filtered from stderr; anything else
    TensorFlow prints while importing is passed through."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "keras" in sys.modules:
        return sys.modules["keras"]

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import keras
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
            kept = [line for line in text.splitlines() if not any(n in line for n in _TF_NOISE)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
    return keras


def windows(x: np.ndarray, lookback: int) -> np.ndarray:
    """Windows ending at each row: out[i] = x[i : i + lookback], the window of row i+lookback-1."""
    view = np.lib.stride_tricks.sliding_window_view(x, lookback, axis=0)  # (n-lb+1, f, lb)
    return np.ascontiguousarray(np.moveaxis(view, -1, 1))


# A few windows (the live loop scores one bar at a time) go through a tf.function traced once per
# model and input shape: ~1 ms, where predict_on_batch re-traces and costs 15-150 ms per call.
_SMALL_BATCH = 16
_compiled: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def lstm_predict(model: Any, x_scaled: np.ndarray, lookback: int) -> np.ndarray:
    """P(label = 1) for rows lookback-1 .. n-1 (each needs a full window)."""
    batch = windows(x_scaled, lookback)
    if len(batch) > _SMALL_BATCH:
        return np.asarray(model.predict_on_batch(batch)).reshape(-1)
    fn = _compiled.get(model)
    if fn is None:
        import tensorflow as tf

        fn = _compiled[model] = tf.function(
            lambda t: model(t, training=False), reduce_retracing=True
        )
    return np.asarray(fn(batch.astype("float32"))).reshape(-1)


# --- Files ----------------------------------------------------------------------------------------
def save_artifacts(kind: str, model: Any, scaler: Scaler, directory: Path) -> None:
    """Write the model of `kind` ("xgb" or "lstm") and its scaler into `directory` (then handed
    to the registry)."""
    directory.mkdir(parents=True, exist_ok=True)
    scaler.save(directory / SCALER_FILE)
    if kind == "xgb":
        model.save_model(directory / XGB_MODEL_FILE)
    else:
        model.save(directory / LSTM_MODEL_FILE)


def load_artifacts(kind: str, directory: Path) -> tuple[Any, Scaler]:
    """The model and scaler saved by `save_artifacts` (the registry verified them first)."""
    scaler = Scaler.load(directory / SCALER_FILE)
    if kind == "xgb":
        from xgboost import XGBClassifier

        model = XGBClassifier()
        model.load_model(directory / XGB_MODEL_FILE)
        return model, scaler
    keras = import_keras()
    return keras.models.load_model(directory / LSTM_MODEL_FILE), scaler
