"""Model probabilities -> typed pair signals, shared by the backtest and the live loop.

A signal says what to do at the close of one bar: buy the spread (long the long leg, short the short
leg), sell it, or hold. It comes from the registry's active model (through the A/B controller, so a
canary gets its share of bars) or, with ENSEMBLE_MODE on, from the weighted LSTM + XGBoost ensemble.
Probabilities between the two thresholds are a dead zone: Hold.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

import constants as C
from error_handling import ConfigurationError
from model_artifacts import Scaler, load_artifacts, lstm_predict, xgb_predict

ENV_ENSEMBLE_MODE = "ENSEMBLE_MODE"
ENV_SIGNAL_MODEL = "SIGNAL_MODEL"  # model kind that decides when the ensemble is off
DEFAULT_ENSEMBLE_WEIGHTS = (0.6, 0.4)  # (lstm, xgb)


class Action(enum.StrEnum):
    BUY_SPREAD = "buy"  # buy the long leg, sell the short leg
    SELL_SPREAD = "sell"  # sell the long leg, buy the short leg
    HOLD = "hold"


@dataclass(frozen=True)
class Thresholds:
    """Buy when P(long beats short) >= buy, sell when <= sell; in between: Hold."""

    buy: float = 0.55
    sell: float = 0.45

    def __post_init__(self) -> None:
        if not 0.0 < self.sell <= self.buy < 1.0:
            raise ConfigurationError(
                f"signal thresholds need 0 < sell <= buy < 1 (got sell={self.sell}, buy={self.buy})"
            )

    def action(self, probability: float) -> Action:
        if probability >= self.buy:
            return Action.BUY_SPREAD
        if probability <= self.sell:
            return Action.SELL_SPREAD
        return Action.HOLD


@dataclass(frozen=True)
class Signal:
    """What to do at the close of `bar_time`; `probability` is P(long leg beats short next bar)."""

    action: Action
    text: str  # Pair.buy_signal, Pair.sell_signal or constants.HOLD_SIGNAL
    buy_leg: str | None  # ticker to buy (None on Hold)
    sell_leg: str | None  # ticker to sell (None on Hold)
    probability: float
    model_version: str
    bar_time: pd.Timestamp


def make_signal(
    pair: C.Pair, probability: float, model_version: str, bar_time: pd.Timestamp, th: Thresholds
) -> Signal:
    action = th.action(probability)
    if action is Action.BUY_SPREAD:
        return Signal(
            action, pair.buy_signal, pair.long, pair.short, probability, model_version, bar_time
        )
    if action is Action.SELL_SPREAD:
        return Signal(
            action, pair.sell_signal, pair.short, pair.long, probability, model_version, bar_time
        )
    return Signal(action, C.HOLD_SIGNAL, None, None, probability, model_version, bar_time)


# --- Ensemble -------------------------------------------------------------------------------------
def ensemble_enabled() -> bool:
    """ENSEMBLE_MODE=1/true/on/yes turns the ensemble on; anything else leaves it off."""
    return os.environ.get(ENV_ENSEMBLE_MODE, "").strip().lower() in ("1", "true", "on", "yes")


def ensemble_predict(
    lstm_pred: np.ndarray | float,
    xgb_pred: np.ndarray | float,
    weights: Sequence[float] = DEFAULT_ENSEMBLE_WEIGHTS,
) -> np.ndarray:
    """Weighted mean of the two models' probabilities; weights (lstm, xgb) are normalized to 1."""
    w = np.asarray(weights, dtype="float64")
    if w.shape != (2,) or np.any(w < 0) or w.sum() <= 0:
        raise ConfigurationError(
            f"ensemble weights must be two non-negative numbers, got {weights}"
        )
    a, b = np.asarray(lstm_pred, dtype="float64"), np.asarray(xgb_pred, dtype="float64")
    if a.shape != b.shape:
        raise ConfigurationError(f"ensemble inputs differ in shape: {a.shape} vs {b.shape}")
    w = w / w.sum()
    return w[0] * a + w[1] * b


def tune_ensemble_weights(
    y_val: np.ndarray, lstm_val: np.ndarray, xgb_val: np.ndarray, step: float = 0.1
) -> tuple[float, float]:
    """(lstm, xgb) weights minimizing log-loss on the VALIDATION part (never the holdout)."""
    from sklearn.metrics import log_loss

    best, best_loss = DEFAULT_ENSEMBLE_WEIGHTS, float("inf")
    for w in np.round(np.arange(0.0, 1.0 + 1e-9, step), 10):
        p = np.clip(ensemble_predict(lstm_val, xgb_val, (w, 1 - w)), 1e-7, 1 - 1e-7)
        loss = log_loss(y_val, p, labels=[0, 1])
        if loss < best_loss - 1e-12:
            best, best_loss = (float(w), float(1 - w)), loss
    return best


# --- Scoring with registered models ---------------------------------------------------------------
@dataclass(frozen=True)
class LoadedModel:
    """A verified registered model with its scaler, ready to score processed rows."""

    kind: str
    version: str
    model: Any
    scaler: Scaler
    lookback: int | None
    feature_names: tuple[str, ...]
    metadata: dict[str, Any]

    def probabilities(self, table: pd.DataFrame, rows: slice) -> np.ndarray:
        """P(label = 1) for table rows `rows`; the LSTM reads lookback-1 earlier rows too."""
        x = self.scaler.transform(table[list(self.feature_names)].to_numpy("float64"))
        start, stop, _ = rows.indices(len(table))
        if self.kind == "xgb":
            return xgb_predict(self.model, x[start:stop])
        lb = int(self.lookback or 1)
        if start < lb - 1:
            raise ConfigurationError(
                f"the LSTM needs {lb - 1} bars before {table.index[start].date()} for its window"
            )
        return lstm_predict(self.model, x[start - lb + 1 : stop], lb)


def load_model(
    registry: Any, version: str, pair: C.Pair, feature_names: Sequence[str]
) -> LoadedModel:
    """Verify (SHA-256, pair, features) and load a registered model."""
    record = registry.get(version)
    directory = registry.load(version, pair=pair, feature_names=list(feature_names))
    model, scaler = load_artifacts(record.name, directory)
    return LoadedModel(
        record.name,
        version,
        model,
        scaler,
        record.lookback,
        tuple(record.feature_names),
        record.metadata,
    )


class SignalGenerator:
    """Turns processed rows into signals with the registry's models; caches loaded models."""

    def __init__(
        self,
        pair: C.Pair,
        *,
        home: C.Paths | None = None,
        thresholds: Thresholds | None = None,
        ensemble: bool | None = None,
        kind: str | None = None,
    ):
        from model_management import ABTestController, ModelRegistry

        self.pair = pair
        self.home = home or C.paths()
        self.registry = ModelRegistry(self.home.models_dir, home=self.home.home)
        self.thresholds = thresholds or Thresholds()
        self.ensemble = ensemble_enabled() if ensemble is None else ensemble
        self.kind = kind or os.environ.get(ENV_SIGNAL_MODEL, "xgb")
        kinds = ("lstm", "xgb") if self.ensemble else (self.kind,)
        self.controllers = {k: ABTestController(self.registry, k, pair) for k in kinds}
        self._loaded: dict[str, LoadedModel] = {}

    def check(self, table: pd.DataFrame) -> None:
        """Load every model a bar may be scored with (each kind's champion and canary), so an
        altered or missing artifact (ModelIntegrityError) or no model at all is found before
        the caller writes anything; then warm each one up on the table's last row."""
        features = self._features(table)
        for kind in self.controllers:
            self.controllers[kind].select_model(pd.Timestamp(table.index[-1]).isoformat())
            for record in (
                self.registry.get_active_model(kind, self.pair),
                self.registry.get_canary(kind, self.pair),
            ):
                if record is not None and record.version not in self._loaded:
                    self._loaded[record.version] = load_model(
                        self.registry, record.version, self.pair, features
                    )
        # Warm-up: score the last row once with each model (result dropped), so the first live
        # bar does not pay for tracing the LSTM's inference function (about 100 ms).
        last = slice(len(table) - 1, len(table))
        for loaded in self._loaded.values():
            with contextlib.suppress(ConfigurationError):  # too few rows for a window
                loaded.probabilities(table, last)

    def _model(self, kind: str, key: str, features: Sequence[str]) -> LoadedModel:
        version = self.controllers[kind].select_model(key).version
        if version not in self._loaded:
            self._loaded[version] = load_model(self.registry, version, self.pair, features)
        return self._loaded[version]

    def _features(self, table: pd.DataFrame) -> list[str]:
        names = C.feature_names(self.pair.long, self.pair.short, with_volume=True)
        return [c for c in names if c in table.columns]

    def _kind_probabilities(
        self, kind: str, table: pd.DataFrame, lo: int, hi: int
    ) -> tuple[np.ndarray, list[str]]:
        """Per bar in [lo, hi): the probability of the model the A/B controller picks for that
        bar (key: the bar's date) and its version. Each version scores its bars in one batch."""
        keys = [pd.Timestamp(d).isoformat() for d in table.index[lo:hi]]
        versions = [self.controllers[kind].select_model(k).version for k in keys]
        prob = np.empty(hi - lo)
        for version in set(versions):
            if version not in self._loaded:
                self._loaded[version] = load_model(
                    self.registry, version, self.pair, self._features(table)
                )
            mask = np.array([v == version for v in versions])
            prob[mask] = self._loaded[version].probabilities(table, slice(lo, hi))[mask]
        return prob, versions

    def score(self, table: pd.DataFrame, lo: int, hi: int) -> tuple[np.ndarray, list[str]]:
        """Probabilities for rows [lo, hi) and, per row, the model version that produced it."""
        if not self.ensemble:
            return self._kind_probabilities(self.kind, table, lo, hi)
        p_lstm, v_lstm = self._kind_probabilities("lstm", table, lo, hi)
        p_xgb, v_xgb = self._kind_probabilities("xgb", table, lo, hi)
        weights = self._loaded[v_lstm[-1]].metadata.get(
            "ensemble_weights", DEFAULT_ENSEMBLE_WEIGHTS
        )
        labels = [
            f"ensemble({a},{b};w={weights[0]:.2f}/{weights[1]:.2f})"
            for a, b in zip(v_lstm, v_xgb, strict=True)
        ]
        return ensemble_predict(p_lstm, p_xgb, weights), labels

    def latest(self, table: pd.DataFrame) -> Signal:
        """The signal for the last row (the latest closed bar). The A/B key is the bar's date."""
        prob, versions = self.score(table, len(table) - 1, len(table))
        bar_time = pd.Timestamp(table.index[-1])
        return make_signal(self.pair, float(prob[-1]), versions[-1], bar_time, self.thresholds)

    def record_outcome(self, signal: Signal, next_spread_return: float) -> list[Any]:
        """Score a signal once its next bar is known, and act on the canary test automatically.

        A buy is a hit when the spread then rose, a sell when it fell; a hold is not scored. Each
        deciding model (both, for the ensemble) gets the outcome; when a controller's test says
        promote or roll back, it is applied at once (and logged by the registry). Returns the
        decisions that were applied.
        """
        import logging

        from model_management import PromotionAction

        if signal.action is Action.HOLD or not np.isfinite(next_spread_return):
            return []
        hit = (next_spread_return > 0) == (signal.action is Action.BUY_SPREAD)
        # "v" or "ensemble(v_lstm,v_xgb;w=...)": the exact versions that decided
        deciders = set(re.split(r"[(),;]", signal.model_version))
        applied = []
        for kind, controller in self.controllers.items():
            state = controller.state()
            for rec in (state.champion, state.challenger):
                if rec is not None and rec.version in deciders:
                    controller.record_outcome(rec.version, hit)
            decision = controller.evaluate()
            if decision.action is not PromotionAction.CONTINUE:
                controller.apply(decision)
                self._loaded.clear()
                logging.getLogger(__name__).warning(
                    "A/B %s %s: %s %s (%s)",
                    kind,
                    self.pair.key,
                    decision.action.value,
                    decision.challenger_version,
                    decision.reason,
                )
                applied.append(decision)
        return applied

    def in_sample_until(self) -> pd.Timestamp:
        """Last date any deciding model saw in training or validation."""
        ends = [
            pd.Timestamp(rec.metadata["ranges"]["validation"][1])
            for controller in self.controllers.values()
            for rec in (controller.state().champion, controller.state().challenger)
            if rec is not None
        ]
        if not ends:
            raise ConfigurationError(
                f"no active model for {self.pair.long}/{self.pair.short}; "
                "run `python main.py train`"
            )
        return max(ends)

    def series(
        self,
        table: pd.DataFrame,
        start: str | pd.Timestamp | None = None,
        end: str | pd.Timestamp | None = None,
        *,
        allow_in_sample: bool = False,
    ) -> pd.DataFrame:
        """Signals for every bar in start..end, one model decision per bar (the A/B key is the
        bar's date). Refuses bars a model trained or validated on unless `allow_in_sample`; the
        `in_sample` column says which bars those were."""
        dates = pd.DatetimeIndex(table.index)
        lo = dates.searchsorted(pd.Timestamp(start)) if start is not None else 0
        hi = dates.searchsorted(pd.Timestamp(end), side="right") if end is not None else len(dates)
        if lo >= hi:
            raise ConfigurationError(f"no bars between {start} and {end}")
        seen_until = self.in_sample_until()
        in_sample = dates[lo:hi] <= seen_until
        if in_sample.any() and not allow_in_sample:
            raise ConfigurationError(
                f"{int(in_sample.sum())} bars from {dates[lo].date()} are on or before "
                f"{seen_until.date()}, which the model trained or validated on; start after it "
                "or pass --allow-in-sample (results are then labeled in-sample)"
            )
        prob, versions = self.score(table, lo, hi)
        rows = []
        for date, p, version in zip(dates[lo:hi], prob, versions, strict=True):
            sig = make_signal(self.pair, float(p), version, date, self.thresholds)
            rows.append((date, sig.action.value, sig.text, sig.probability, sig.model_version))
        out = pd.DataFrame(
            rows, columns=["date", "action", "signal", "probability", "model_version"]
        )
        out = out.set_index("date")
        out["in_sample"] = in_sample
        return out


def get_latest_signal(
    data: pd.DataFrame, pair: C.Pair | None = None, *, home: C.Paths | None = None, **kwargs: Any
) -> Signal:
    """The signal for the latest bar of a processed table (see SignalGenerator.latest)."""
    return SignalGenerator(pair or C.resolve_pair(), home=home, **kwargs).latest(data)


def describe(signal: Signal) -> str:
    """One line for logs and the CLI."""
    return json.dumps(
        {
            "bar": signal.bar_time.isoformat(),
            "signal": signal.text,
            "p": round(signal.probability, 4),
            "model": signal.model_version,
        }
    )
