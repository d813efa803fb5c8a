"""Drift detection: has the data (or the model's output, or its hit rate) moved since training?

Why: a model is only as good as the resemblance of today's features to the features it was trained
on. At training time `reference_statistics` condenses the training features into a small
JSON-serializable dict (stored in the model's metadata); later `feature_drift` compares the latest
features against it, `prediction_drift` compares predicted probabilities and `performance_drift`
the recent hit rate. `emit_alerts` is the only function with a side effect (alerts.log).

Measures:
- PSI (population stability index) over the reference's quantile bins: the size of a shift.
  Bands: < 0.1 stable, 0.1-0.25 moderate, >= 0.25 significant (the industry-standard cut-offs).
- Two-sample Kolmogorov-Smirnov test against a stored subsample of the reference: whether a shift
  is more than sampling noise. scipy is used when installed (the "advanced" profile); otherwise
  the statistic is computed with numpy and the p-value with the asymptotic Kolmogorov law.

Drift rule (feature and prediction): drifted when PSI >= 0.25, or when PSI >= 0.1 and the KS
p-value < ks_alpha. A large PSI is a large shift on its own; a moderate PSI also arises by chance
in small windows (E[PSI | no drift] is about (bins - 1) / n_current), so it counts only when KS
says it is not noise; and a KS rejection with PSI < 0.1 is a real but harmless shift (KS rejects
trivially small shifts once n is in the thousands), so it is not an alert.

A stage-level module: imports numpy, pandas, `constants`, `error_handling`, `alert_dispatch`
(alerts) and `model_artifacts` (the saved-model loader; it never imports TensorFlow for XGB);
scipy optionally. `drift_report` imports the registry and the processed data inside the function.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

import alert_dispatch
from constants import Pair, Paths, feature_names, paths
from error_handling import ConfigurationError
from model_artifacts import load_artifacts, xgb_predict

if TYPE_CHECKING:  # the registry is imported inside `drift_report` only
    from model_management import ModelRecord, ModelRegistry

try:  # scipy is in the "advanced" profile, not core: fall back to numpy without it.
    from scipy import stats as _scipy_stats
except ImportError:  # pragma: no cover - exercised only where scipy is absent
    _scipy_stats = None

__all__ = [
    "DEFAULT_BINS",
    "DEFAULT_KS_ALPHA",
    "DEFAULT_SAMPLE_SIZE",
    "MIN_DRIFT_ROWS",
    "MODEL_TABLE_HEADER",
    "PSI_EPS",
    "PSI_MODERATE",
    "PSI_SIGNIFICANT",
    "TABLE_HEADER",
    "DriftBand",
    "DriftKind",
    "DriftReport",
    "DriftResult",
    "ModelDriftReport",
    "PairDriftReport",
    "drift_report",
    "emit_alerts",
    "feature_drift",
    "is_drifted",
    "ks_2samp_numpy",
    "ks_two_sample",
    "log_drift_alert",
    "performance_drift",
    "population_stability_index",
    "prediction_drift",
    "psi",
    "psi_band",
    "reference_statistics",
]

#: PSI at or above this is a moderate shift (MEDIUM alert when KS confirms it).
PSI_MODERATE = 0.1
#: PSI at or above this is a significant shift (HIGH alert on its own).
PSI_SIGNIFICANT = 0.25
#: Proportions are clipped to this before the log in PSI, so an empty bin gives a finite PSI.
PSI_EPS = 1e-4
#: Quantile bins of the reference (deciles).
DEFAULT_BINS = 10
#: Values kept per feature for the KS test; bounds the metadata to ~20 KB per feature.
DEFAULT_SAMPLE_SIZE = 1000
#: KS p-value under which a moderate PSI counts as drift.
DEFAULT_KS_ALPHA = 0.01
#: Name of the `prediction_drift` result.
PREDICTION_NAME = "predicted_probability"
#: Name of the `performance_drift` result.
PERFORMANCE_NAME = "hit_rate"
#: Performance drift is HIGH (significant) when the one-sided binomial p-value is below this.
PERFORMANCE_SIGNIFICANT_P = 0.05
#: Columns of `DriftReport.to_table_rows()`.
TABLE_HEADER: tuple[str, ...] = (
    "kind",
    "name",
    "statistic",
    "threshold",
    "band",
    "KS",
    "p-value",
    "drifted",
)


class DriftKind(StrEnum):
    """What was compared: input features, predicted probabilities or realised hit rate."""

    FEATURE = "feature"
    PREDICTION = "prediction"
    PERFORMANCE = "performance"


class DriftBand(StrEnum):
    """How far the statistic moved; a StrEnum, so it equals and serializes as its string."""

    STABLE = "stable"  # PSI < 0.1, or hit rate not below reference - margin
    MODERATE = "moderate"  # 0.1 <= PSI < 0.25 (MEDIUM severity)
    SIGNIFICANT = "significant"  # PSI >= 0.25 (HIGH severity)
    MISSING = "missing"  # the feature is not in the current data
    INSUFFICIENT = "insufficient"  # no finite values to compare, or the window is not yet full


#: Alert severity per band of a drifted result.
SEVERITY_BY_BAND: dict[DriftBand, str] = {
    DriftBand.SIGNIFICANT: "HIGH",
    DriftBand.MODERATE: "MEDIUM",
}


@dataclass(frozen=True)
class DriftResult:
    """One comparison. `statistic` is PSI (feature, prediction) or the hit rate (performance).

    `threshold` is the value `statistic` is judged against: PSI_SIGNIFICANT when PSI reached it,
    else PSI_MODERATE; for performance, reference hit rate - margin. Non-computable statistics are
    NaN. `details` holds plain JSON values (counts, means) for alerts and the CLI.
    """

    kind: DriftKind
    name: str
    statistic: float
    threshold: float
    band: DriftBand
    ks_statistic: float
    p_value: float
    drifted: bool
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def severity(self) -> str | None:
        """Alert severity ("HIGH" / "MEDIUM") when drifted, else None."""
        return SEVERITY_BY_BAND.get(self.band, "HIGH") if self.drifted else None


@dataclass(frozen=True)
class DriftReport:
    """The results of one drift check, for the CLI table and for alerting."""

    results: tuple[DriftResult, ...]

    @property
    def drifted(self) -> tuple[DriftResult, ...]:
        """The drifted results (empty, hence falsy, when nothing drifted)."""
        return tuple(r for r in self.results if r.drifted)

    @property
    def missing(self) -> tuple[str, ...]:
        """Names of reference features absent from the current data."""
        return tuple(r.name for r in self.results if r.band == DriftBand.MISSING)

    def to_table_rows(self) -> list[tuple[str, ...]]:
        """One row of strings per result, in TABLE_HEADER order; drifted rows first."""
        ordered = sorted(self.results, key=lambda r: (not r.drifted, r.kind, r.name))
        return [
            (
                str(r.kind),
                r.name,
                _fmt(r.statistic),
                _fmt(r.threshold),
                str(r.band),
                _fmt(r.ks_statistic),
                _fmt(r.p_value, p_value=True),
                "YES" if r.drifted else "no",
            )
            for r in ordered
        ]


def _fmt(value: float, *, p_value: bool = False) -> str:
    if not math.isfinite(value):
        return "-"
    if p_value and value < 1e-4:
        return f"{value:.1e}"
    return f"{value:.4f}"


# --- Reference statistics -------------------------------------------------------------------------
def _finite(values: Iterable[float] | np.ndarray | pd.Series) -> np.ndarray:
    """`values` as float64 with NaN and ±inf dropped (they have no bin and break mean/std)."""
    arr = np.asarray(values, dtype="float64").ravel()
    return arr[np.isfinite(arr)]


def _inner_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """Interior quantile edges of `reference`, duplicates removed (ties collapse bins).

    The outer edges are -inf/+inf implicitly, so values outside the reference range still count.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    if reference.size == 0 or bins == 1:
        return np.empty(0)
    return np.unique(np.quantile(reference, np.arange(1, bins) / bins))


def _proportions(values: np.ndarray, inner_edges: np.ndarray) -> np.ndarray:
    """Share of `values` per bin (-inf, e1), [e1, e2), ..., [ek, +inf)."""
    counts = np.bincount(
        np.searchsorted(inner_edges, values, side="right"), minlength=inner_edges.size + 1
    )
    return counts / max(values.size, 1)


#: Window sizes (bars) at which the in-training PSI variation is measured, and its quantile. Slow
#: features (volatility, correlation, the spread level) wander between regimes, so even windows
#: drawn from the training period have PSI far above 0.25 against the whole period (measured on
#: AAPL/MSFT 1990-2013: 60-bar windows flag 21 of 23 features on average). A feature drifts only
#: when its PSI exceeds both PSI_SIGNIFICANT and this quantile of its own in-training PSIs.
CALIBRATION_WINDOWS: tuple[int, ...] = (30, 60, 120, 250, 500, 1000)
CALIBRATION_QUANTILE = 0.99


def _null_psi_quantiles(values: np.ndarray, edges: np.ndarray, ref_props: np.ndarray) -> dict:
    """{window: CALIBRATION_QUANTILE of PSI of sliding in-training windows vs the whole part}."""
    bins = np.searchsorted(edges, values, side="right")
    onehot = np.zeros((values.size + 1, edges.size + 1))
    onehot[np.arange(1, values.size + 1), bins] = 1.0
    cum = np.cumsum(onehot, axis=0)
    expected = np.clip(ref_props, PSI_EPS, None)
    out = {}
    for w in CALIBRATION_WINDOWS:
        if values.size < 2 * w:
            continue
        ends = np.arange(w, values.size + 1, max(1, w // 4))
        actual = np.clip((cum[ends] - cum[ends - w]) / w, PSI_EPS, None)
        psis = np.sum((actual - expected) * np.log(actual / expected), axis=1)
        out[str(w)] = float(np.quantile(psis, CALIBRATION_QUANTILE))
    return out


def calibrated_threshold(reference: Mapping[str, Any], rows: int) -> float | None:
    """PSI a window of `rows` bars must exceed to count as drift; None without calibration.

    Uses the largest calibrated window not above `rows` (smaller windows vary more, so this errs
    towards fewer alerts), the smallest one for shorter windows.
    """
    null = reference.get("null_psi") or {}
    if not null:
        return None
    sizes = sorted(int(k) for k in null)
    fitting = [w for w in sizes if w <= rows] or sizes[:1]
    return max(PSI_SIGNIFICANT, float(null[str(fitting[-1])]))


def reference_statistics(
    features: pd.DataFrame,
    *,
    bins: int = DEFAULT_BINS,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Per-feature reference statistics, JSON-serializable, for the model's metadata.

    `{feature: {"edges": [...], "proportions": [...], "mean", "std", "count", "sample": [...]}}`.
    `edges` are the interior quantile edges (the outer -inf/+inf are implied, since JSON has no
    infinity); `proportions` has len(edges) + 1 entries; `sample` is a sorted random subsample
    of at most `sample_size` values, the same for the same data and `seed`. NaN/±inf are ignored;
    `mean`/`std` are None for a feature without finite values.
    """
    if sample_size < 1:
        raise ValueError(f"sample_size must be >= 1, got {sample_size}")
    out: dict[str, dict[str, Any]] = {}
    for column in features.columns:
        values = _finite(features[column])
        edges = _inner_edges(values, bins)
        if values.size > sample_size:
            # One generator per feature: the subsample of a column does not depend on its position.
            rng = np.random.default_rng(seed)
            sample = np.sort(values[rng.choice(values.size, size=sample_size, replace=False)])
        else:
            sample = np.sort(values)
        out[str(column)] = {
            "edges": [float(e) for e in edges],
            "proportions": [float(p) for p in _proportions(values, edges)],
            "mean": float(values.mean()) if values.size else None,
            "std": float(values.std(ddof=1)) if values.size > 1 else (0.0 if values.size else None),
            "count": int(values.size),
            "sample": [float(v) for v in sample],
            # rows are in time order here: the in-training variation of PSI per window size
            "null_psi": _null_psi_quantiles(values, edges, _proportions(values, edges)),
        }
    return out


# --- PSI ------------------------------------------------------------------------------------------
def population_stability_index(
    expected_props: Sequence[float] | np.ndarray,
    actual_props: Sequence[float] | np.ndarray,
    eps: float = PSI_EPS,
) -> float:
    """PSI = sum((actual - expected) * ln(actual / expected)) over bins; 0 when equal, >= 0.

    Proportions are clipped to `eps` first so that an empty bin contributes a large but finite
    term. Both must have one entry per bin, in the same bin order.
    """
    expected = np.asarray(expected_props, dtype="float64")
    actual = np.asarray(actual_props, dtype="float64")
    if expected.shape != actual.shape or expected.ndim != 1 or expected.size == 0:
        raise ValueError(
            f"PSI needs two equal-length 1-d proportion vectors, got {expected.shape} "
            f"and {actual.shape}"
        )
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    expected, actual = np.clip(expected, eps, None), np.clip(actual, eps, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def psi(
    reference_values: Sequence[float] | np.ndarray | pd.Series,
    current_values: Sequence[float] | np.ndarray | pd.Series,
    bins: int = DEFAULT_BINS,
) -> float:
    """PSI of `current_values` on the quantile bins of `reference_values` (NaN ignored)."""
    reference, current = _finite(reference_values), _finite(current_values)
    if reference.size == 0 or current.size == 0:
        raise ValueError("PSI needs at least one finite reference value and one current value")
    edges = _inner_edges(reference, bins)
    return population_stability_index(_proportions(reference, edges), _proportions(current, edges))


def psi_band(value: float) -> DriftBand:
    """STABLE below PSI_MODERATE, MODERATE below PSI_SIGNIFICANT, else SIGNIFICANT."""
    if value >= PSI_SIGNIFICANT:
        return DriftBand.SIGNIFICANT
    if value >= PSI_MODERATE:
        return DriftBand.MODERATE
    return DriftBand.STABLE


def is_drifted(psi_value: float, ks_p_value: float, ks_alpha: float = DEFAULT_KS_ALPHA) -> bool:
    """The drift rule: PSI >= PSI_SIGNIFICANT, or PSI >= PSI_MODERATE and KS p < `ks_alpha`."""
    if psi_value >= PSI_SIGNIFICANT:
        return True
    return psi_value >= PSI_MODERATE and ks_p_value < ks_alpha


# --- Kolmogorov-Smirnov ---------------------------------------------------------------------------
def _kolmogorov_sf(x: float) -> float:
    """P(K > x) for the Kolmogorov distribution: 2 * sum_k (-1)^(k-1) exp(-2 k^2 x^2)."""
    if x < 0.2:  # the series converges slowly here, and P(K > 0.2) > 1 - 1e-12
        return 1.0
    total = 0.0
    for k in range(1, 101):
        term = math.exp(-2.0 * k * k * x * x)
        total += term if k % 2 else -term
        if term < 1e-16:
            break
    return min(max(2.0 * total, 0.0), 1.0)


def ks_2samp_numpy(
    sample_a: Sequence[float] | np.ndarray, sample_b: Sequence[float] | np.ndarray
) -> tuple[float, float]:
    """Two-sided two-sample KS (statistic, p-value) without scipy.

    The statistic is scipy's exactly (max |ECDF_a - ECDF_b| over the pooled values, snapped to a
    multiple of 1 / lcm(n_a, n_b) as scipy's exact mode does); the p-value
    is the asymptotic Kolmogorov law with Stephens' small-sample correction, close to scipy's for
    samples of a few dozen or more.
    """
    a, b = np.sort(_finite(sample_a)), np.sort(_finite(sample_b))
    if a.size == 0 or b.size == 0:
        raise ValueError("KS needs at least one finite value in each sample")
    pooled = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, pooled, side="right") / a.size
    cdf_b = np.searchsorted(b, pooled, side="right") / b.size
    # D is a multiple of 1/lcm(n_a, n_b); snapping to it removes the ECDFs' rounding error (as
    # scipy does), so equal samples in a different order give the identical statistic.
    lcm = math.lcm(a.size, b.size)
    statistic = round(float(np.max(np.abs(cdf_a - cdf_b))) * lcm) / lcm
    n_eff = math.sqrt(a.size * b.size / (a.size + b.size))
    p_value = _kolmogorov_sf((n_eff + 0.12 + 0.11 / n_eff) * statistic)
    return statistic, p_value


def ks_two_sample(
    sample_a: Sequence[float] | np.ndarray, sample_b: Sequence[float] | np.ndarray
) -> tuple[float, float]:
    """Two-sided two-sample KS (statistic, p-value): scipy when installed, else `ks_2samp_numpy`."""
    if _scipy_stats is None:  # pragma: no cover - exercised only where scipy is absent
        return ks_2samp_numpy(sample_a, sample_b)
    a, b = _finite(sample_a), _finite(sample_b)
    if a.size == 0 or b.size == 0:
        raise ValueError("KS needs at least one finite value in each sample")
    result = _scipy_stats.ks_2samp(a, b)
    return float(result.statistic), float(result.pvalue)


# --- Drift checks ---------------------------------------------------------------------------------
def _distribution_result(
    kind: DriftKind,
    name: str,
    inner_edges: np.ndarray,
    expected_props: np.ndarray,
    ks_reference: np.ndarray,
    current: np.ndarray,
    ks_alpha: float,
    details: dict[str, Any],
) -> DriftResult:
    """PSI on the given bins + KS against `ks_reference`, judged by `is_drifted`."""
    psi_value = population_stability_index(expected_props, _proportions(current, inner_edges))
    ks_stat, p_value = ks_two_sample(ks_reference, current)
    bins = inner_edges.size + 1
    return DriftResult(
        kind=kind,
        name=name,
        statistic=psi_value,
        threshold=PSI_SIGNIFICANT if psi_value >= PSI_SIGNIFICANT else PSI_MODERATE,
        band=psi_band(psi_value),
        ks_statistic=ks_stat,
        p_value=p_value,
        drifted=is_drifted(psi_value, p_value, ks_alpha),
        details={
            **details,
            "current_count": int(current.size),
            "current_mean": float(current.mean()),
            # Sampling noise: PSI expected with no drift at all, ~ (bins - 1) / n_current.
            "psi_expected_without_drift": (bins - 1) / current.size,
        },
    )


def _not_comparable(kind: DriftKind, name: str, band: DriftBand, reason: str) -> DriftResult:
    nan = float("nan")
    return DriftResult(kind, name, nan, PSI_MODERATE, band, nan, nan, False, {"reason": reason})


def feature_drift(
    reference_stats: Mapping[str, Mapping[str, Any]],
    current: pd.DataFrame,
    *,
    ks_alpha: float = DEFAULT_KS_ALPHA,
) -> list[DriftResult]:
    """One result per reference feature: PSI on its stored bins, KS against its stored sample.

    `reference_stats` is what `reference_statistics` returned (also after a JSON round trip).
    A feature absent from `current` gives band MISSING, one without finite values on either side
    INSUFFICIENT; neither counts as drifted. Columns of `current` not in the reference are ignored.
    """
    results: list[DriftResult] = []
    for name, ref in reference_stats.items():
        if name not in current.columns:
            results.append(
                _not_comparable(
                    DriftKind.FEATURE, name, DriftBand.MISSING, "feature not in current data"
                )
            )
            continue
        values = _finite(current[name])
        sample = np.asarray(ref["sample"], dtype="float64")
        if values.size == 0 or sample.size == 0:
            side = "current data" if values.size == 0 else "reference"
            results.append(
                _not_comparable(
                    DriftKind.FEATURE, name, DriftBand.INSUFFICIENT, f"no finite values in {side}"
                )
            )
            continue
        result = _distribution_result(
            DriftKind.FEATURE,
            name,
            np.asarray(ref["edges"], dtype="float64"),
            np.asarray(ref["proportions"], dtype="float64"),
            sample,
            values,
            ks_alpha,
            {"reference_mean": ref["mean"], "reference_std": ref["std"]},
        )
        threshold = calibrated_threshold(ref, values.size)
        if threshold is not None:  # drift = beyond what the training period itself showed
            result = dataclasses.replace(
                result,
                threshold=threshold,
                drifted=result.statistic >= threshold,
                details={**result.details, "calibrated_threshold": threshold},
            )
        results.append(result)
    return results


def prediction_drift(
    reference_probs: Sequence[float] | np.ndarray,
    current_probs: Sequence[float] | np.ndarray,
    *,
    bins: int = DEFAULT_BINS,
    ks_alpha: float = DEFAULT_KS_ALPHA,
) -> DriftResult:
    """Drift of predicted probabilities: PSI on `bins` equal-width bins of [0, 1] plus KS.

    Fixed bins rather than quantiles: a confident model's probabilities pile up near 0 and 1 and
    their quantiles would tie. Same drift rule as features. NaN are ignored.
    """
    reference, current = _finite(reference_probs), _finite(current_probs)
    if reference.size == 0 or current.size == 0:
        return _not_comparable(
            DriftKind.PREDICTION, PREDICTION_NAME, DriftBand.INSUFFICIENT, "no finite probabilities"
        )
    for what, probs in (("reference", reference), ("current", current)):
        if probs.min() < 0.0 or probs.max() > 1.0:
            raise ValueError(f"{what} probabilities must lie in [0, 1]")
    inner_edges = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    return _distribution_result(
        DriftKind.PREDICTION,
        PREDICTION_NAME,
        inner_edges,
        _proportions(reference, inner_edges),
        reference,
        current,
        ks_alpha,
        {"reference_count": int(reference.size), "reference_mean": float(reference.mean())},
    )


def _binomial_cdf(successes: int, trials: int, rate: float) -> float:
    """P(X <= successes) for X ~ Binomial(trials, rate), summed in log space (no overflow)."""
    if rate <= 0.0:
        return 1.0
    if rate >= 1.0:
        return 1.0 if successes >= trials else 0.0
    log_rate, log_miss = math.log(rate), math.log1p(-rate)
    log_n = math.lgamma(trials + 1)
    total = sum(
        math.exp(
            log_n
            - math.lgamma(k + 1)
            - math.lgamma(trials - k + 1)
            + k * log_rate
            + (trials - k) * log_miss
        )
        for k in range(successes + 1)
    )
    return min(total, 1.0)


def performance_drift(
    hits: Sequence[bool] | np.ndarray,
    reference_hit_rate: float,
    *,
    window: int = 50,
    margin: float = 0.05,
) -> DriftResult:
    """Hit rate of the last `window` outcomes against the reference (e.g. the holdout's).

    Drifted when the window is full and its hit rate < reference - margin. `p_value` is the
    one-sided exact binomial P(hits <= observed | reference rate): SIGNIFICANT (HIGH) when it is
    below PERFORMANCE_SIGNIFICANT_P, else MODERATE. A window not yet full is INSUFFICIENT.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if not 0.0 <= reference_hit_rate <= 1.0:
        raise ValueError(f"reference_hit_rate must lie in [0, 1], got {reference_hit_rate}")
    recent = np.asarray(hits, dtype=bool).ravel()[-window:]
    n, successes = int(recent.size), int(recent.sum())
    rate = successes / n if n else float("nan")
    threshold = reference_hit_rate - margin
    p_value = _binomial_cdf(successes, n, reference_hit_rate) if n else float("nan")
    details = {
        "window": window,
        "outcomes": n,
        "hits": successes,
        "reference_hit_rate": reference_hit_rate,
        "margin": margin,
    }
    full = n >= window
    drifted = full and rate < threshold
    if not full:
        band = DriftBand.INSUFFICIENT
    elif not drifted:
        band = DriftBand.STABLE
    elif p_value < PERFORMANCE_SIGNIFICANT_P:
        band = DriftBand.SIGNIFICANT
    else:
        band = DriftBand.MODERATE
    return DriftResult(
        DriftKind.PERFORMANCE,
        PERFORMANCE_NAME,
        rate,
        threshold,
        band,
        float("nan"),
        p_value,
        drifted,
        details,
    )


# --- Alerts (the only side effect) ----------------------------------------------------------------
#: `source` of the records `log_drift_alert` writes.
DRIFT_ALERT_SOURCE = "drift_detection"


def log_drift_alert(
    feature: str,
    statistic: float,
    threshold: float,
    *,
    model: str | None = None,
    details: dict[str, Any] | None = None,
    severity: str = "HIGH",
    home: Path | None = None,
) -> dict[str, Any] | None:
    """Dispatch one drift alert through `alert_dispatch` (alerts.log, and the webhook if set).

    `statistic` is the drift measure of `feature` (e.g. PSI or a KS statistic) and `threshold` the
    value it crossed. Returns the alerts.log record as written (None when an identical alert in
    the coalescing window absorbed it); also logged at WARNING.
    """
    merged: dict[str, Any] = {
        "feature": feature,
        "statistic": statistic,
        "threshold": threshold,
        "model": model,
    }
    merged.update({k: v for k, v in (details or {}).items() if k not in merged})
    of_model = f" of model {model}" if model else ""
    return alert_dispatch.send(
        severity,
        DRIFT_ALERT_SOURCE,
        f"Feature drift: {feature}",
        (
            f"Feature {feature}{of_model} drifted: statistic {statistic:.4g} "
            f"crossed threshold {threshold:.4g}"
        ),
        merged,
        home=home,
    ).record


def emit_alerts(
    results: Iterable[DriftResult],
    *,
    model_version: str | None = None,
    home: Path | None = None,
) -> int:
    """Write one alerts.log line per drifted result (HIGH if significant, else MEDIUM).

    Returns the number of alerts written. `home` is the TRADING_HOME (default: the usual one).
    """
    written = 0
    for result in results:
        if not result.drifted:
            continue
        log_drift_alert(
            result.name,
            result.statistic,
            result.threshold,
            model=model_version,
            details={
                "kind": str(result.kind),
                "band": str(result.band),
                "ks_statistic": result.ks_statistic,
                "p_value": result.p_value,
                **result.details,
            },
            severity=result.severity or "HIGH",
            home=home,
        )
        written += 1
    return written


# --- Drift report of the registered models --------------------------------------------------------
#: With fewer current rows than this, PSI is mostly sampling noise: results are INSUFFICIENT.
MIN_DRIFT_ROWS = 30
#: Columns of `PairDriftReport.to_table_rows()`: the model version, then TABLE_HEADER.
MODEL_TABLE_HEADER: tuple[str, ...] = ("model", *TABLE_HEADER)


@dataclass(frozen=True)
class ModelDriftReport:
    """Drift of one registered model's inputs (and, for XGB, its predictions).

    `window_start`/`window_end` are the dates (YYYY-MM-DD) of the first and last current row;
    `rows` is how many current rows were compared; `alerts_written` the alerts.log lines emitted.
    """

    kind: str
    version: str
    window_start: str | None
    window_end: str | None
    rows: int
    report: DriftReport
    alerts_written: int = 0

    @property
    def drifted(self) -> tuple[DriftResult, ...]:
        """The drifted results of this model."""
        return self.report.drifted


@dataclass(frozen=True)
class PairDriftReport:
    """One `ModelDriftReport` per model kind with an ACTIVE model for `pair`."""

    pair: Pair
    models: tuple[ModelDriftReport, ...]

    @property
    def drifted(self) -> tuple[DriftResult, ...]:
        """Every drifted result over all models (empty, hence falsy, when nothing drifted)."""
        return tuple(r for m in self.models for r in m.drifted)

    @property
    def alerts_written(self) -> int:
        """alerts.log lines written by this check."""
        return sum(m.alerts_written for m in self.models)

    def to_table_rows(self) -> list[tuple[str, ...]]:
        """Rows in MODEL_TABLE_HEADER order: per model, its drifted results first."""
        return [(m.version, *row) for m in self.models for row in m.report.to_table_rows()]


def _insufficient(names: Iterable[str], kind: DriftKind, rows: int) -> list[DriftResult]:
    reason = f"{rows} current rows; at least {MIN_DRIFT_ROWS} are needed"
    return [_not_comparable(kind, name, DriftBand.INSUFFICIENT, reason) for name in names]


def _rows_between(table: pd.DataFrame, part: Sequence[str] | None) -> pd.DataFrame:
    """Rows of `table` dated within the inclusive [start, end] date strings of `part`."""
    if not part or len(part) != 2:
        return table.iloc[0:0]
    start, end = pd.Timestamp(part[0]), pd.Timestamp(part[1])
    dates = pd.DatetimeIndex(table.index).normalize()
    return table[(dates >= start) & (dates <= end)]


def drift_report(
    pair: Pair,
    *,
    home: Paths | None = None,
    window: int = 60,
    kinds: Sequence[str] = ("xgb", "lstm"),
    emit: bool = True,
    predictions: bool = True,
    table: pd.DataFrame | None = None,
) -> PairDriftReport:
    """Drift of the last `window` processed rows against each ACTIVE model's training reference.

    `table` (default: the processed file) lets the live loop check the bars it has seen so far.

    For every kind in `kinds` with an ACTIVE model of `pair`: verify and load its artifact
    directory (ModelIntegrityError on a changed file), read its drift reference (statistics of
    the training part), and run `feature_drift` on the window. With `predictions`, an XGB model
    also gets `prediction_drift` of its probabilities on the window against those on the
    validation part (skipped when the processed data no longer covers it; never for the LSTM,
    which would need TensorFlow). With `emit`, drifted results go to alerts.log with the model
    version. A window under MIN_DRIFT_ROWS rows gives INSUFFICIENT results and no alerts.
    DataError when the processed file is missing; ConfigurationError when no model is active.
    """
    from model_management import ModelRegistry
    from process_stock_data import load_processed

    if window < 1:
        raise ConfigurationError(f"the drift window must be at least 1 row, got {window}")
    home = home or paths()
    registry = ModelRegistry(home.models_dir, home=home.home)
    active = [(kind, registry.get_active_model(kind, pair)) for kind in dict.fromkeys(kinds)]
    records = [(kind, record) for kind, record in active if record is not None]
    if not records:
        raise ConfigurationError(
            f"no active model for {pair.long}/{pair.short}; run "
            f"`python main.py train --long {pair.long} --short {pair.short}`"
        )
    if table is None:
        table, _ = load_processed(pair, home)
    reports = [
        _model_drift(kind, record, registry, table, pair, home, window, emit, predictions)
        for kind, record in records
    ]
    return PairDriftReport(pair, tuple(reports))


def _model_drift(
    kind: str,
    record: ModelRecord,
    registry: ModelRegistry,
    table: pd.DataFrame,
    pair: Pair,
    home: Paths,
    window: int,
    emit: bool,
    predictions: bool,
) -> ModelDriftReport:
    """`drift_report` for one ACTIVE model `record`."""
    # `load` also refuses a model trained on other features than the processed data has.
    data_features = feature_names(
        pair.long, pair.short, with_volume=f"{pair.long}_volume_ratio" in table.columns
    )
    directory = registry.load(record.version, pair=pair, feature_names=data_features)
    features = list(record.feature_names)
    reference_name = record.metadata.get("drift_reference_file")
    if not reference_name or reference_name not in record.artifacts:
        raise ConfigurationError(
            f"model {record.version} has no drift reference among its verified artifacts; "
            f"retrain with `python main.py train --long {pair.long} --short {pair.short}`"
        )
    reference = json.loads((directory / reference_name).read_text(encoding="utf-8"))

    current = table[features].iloc[-window:]
    dates = pd.DatetimeIndex(current.index)
    window_start = str(dates[0].date()) if len(dates) else None
    window_end = str(dates[-1].date()) if len(dates) else None
    with_predictions = predictions and kind == "xgb"
    if len(current) < MIN_DRIFT_ROWS:
        results = _insufficient(reference, DriftKind.FEATURE, len(current))
        if with_predictions:
            results += _insufficient([PREDICTION_NAME], DriftKind.PREDICTION, len(current))
        report = DriftReport(tuple(results))
        return ModelDriftReport(
            kind, record.version, window_start, window_end, len(current), report
        )

    results = feature_drift(reference, current)
    if with_predictions:
        validation = _rows_between(table, record.metadata.get("ranges", {}).get("validation"))
        if len(validation) >= MIN_DRIFT_ROWS:
            results.append(_xgb_prediction_drift(directory, validation[features], current))
    report = DriftReport(tuple(results))
    written = (
        emit_alerts(report.results, model_version=record.version, home=home.home) if emit else 0
    )
    return ModelDriftReport(
        kind, record.version, window_start, window_end, len(current), report, written
    )


def _xgb_prediction_drift(
    directory: Path, validation: pd.DataFrame, current: pd.DataFrame
) -> DriftResult:
    """XGB probabilities on `current` against those on the validation rows (same scaler)."""
    model, scaler = load_artifacts("xgb", directory)
    reference_probs = xgb_predict(model, scaler.transform(validation.to_numpy("float64")))
    current_probs = xgb_predict(model, scaler.transform(current.to_numpy("float64")))
    return prediction_drift(reference_probs, current_probs)
