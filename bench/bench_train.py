"""Training and inference figures for the default models on the full bundled AAPL/MSFT history.

Prints: seconds to train both models with `main.py train` defaults (walk-forward folds + final fit),
single-window LSTM inference latency for each call form, XGBoost one-row latency, and peak RSS.
Targets on 2 CPU cores: both models < 60 s; LSTM inference < 2 ms per window; peak RSS < 2 GB.
Run: .venv/bin/python bench/bench_train.py [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np

import constants as C
import train_model as tm


def per_call_ms(fn, repeat: int) -> float:
    fn()  # warm-up: tracing, graph building
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=200, help="inference calls to average")
    args = parser.parse_args()
    pair = C.Pair("AAPL", "MSFT")
    config = tm.TrainConfig()
    home = C.paths(tempfile.mkdtemp(prefix="bench-train-"))

    t0 = time.perf_counter()
    report = tm.train(pair, config, home=home, register=False)
    train_s = time.perf_counter() - t0
    print(f"train both models ({config.folds} folds, <= {config.epochs} epochs): {train_s:.1f} s")
    for r in report.models:
        epochs = f", LSTM epochs run {r.epochs_run}" if r.epochs_run else ""
        m = r.holdout
        print(f"  {r.kind}: holdout accuracy {m['accuracy']:.3f}, AUC {m['roc_auc']:.3f}{epochs}")

    import process_stock_data as psd

    table, summary = psd.load_processed(pair, home)
    data = tm.TrainingData.from_processed(table, pair, summary["sha256"])
    train, val, holdout = tm.chronological_split(len(data.y), 0.15, 0.15)
    xgb, scaler, _, _ = tm._fit_predict("xgb", data, train, val, holdout, config)
    row = scaler.transform(data.x[-1:])
    xgb_ms = per_call_ms(lambda: tm.xgb_predict(xgb, row), args.repeat)
    print(f"xgb one-row predict_proba: {xgb_ms:.2f} ms")

    if tm.tensorflow_available():
        import tensorflow as tf

        lstm, scaler, _, _ = tm._fit_predict("lstm", data, train, val, holdout, config)
        window = tm.windows(scaler.transform(data.x[-config.lookback :]), config.lookback)
        compiled = tf.function(lambda x: lstm(x, training=False), reduce_retracing=True)
        tensor = tf.constant(window)
        forms = {
            "model.predict(x)": lambda: lstm.predict(window, verbose=0),
            "model(x) eager": lambda: lstm(window, training=False),
            "model.predict_on_batch(x) (live path)": lambda: lstm.predict_on_batch(window),
            "tf.function(model)(x)": lambda: compiled(tensor),
        }
        for name, fn in forms.items():
            n = args.repeat if "predict(x)" not in name else max(10, args.repeat // 10)
            print(f"lstm one window, {name}: {per_call_ms(fn, n):.2f} ms")
        same = np.allclose(np.asarray(compiled(tensor)), lstm.predict_on_batch(window))
        print(f"  tf.function and predict_on_batch agree: {same}")
    else:
        print(f"lstm skipped: {tm.LSTM_PROFILE_HINT}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak_mb:,.0f} MB")


if __name__ == "__main__":
    main()
