"""How sure can we be of a backtest's edge: Sharpe ratio confidence intervals, the probabilistic and
deflated Sharpe ratios, a paired test of two Sharpe ratios, DeLong's AUC interval and a test of a
classifier's accuracy against always predicting the majority class.

Pure functions over numpy arrays, no I/O, no clock, deterministic given `seed`. Imported by the
backtest and training paths only; it imports no project module.

Conventions
-----------
- **Returns** are simple per-period returns as fractions (0.01 = +1 %), one per trading day by
  default, already in excess of the risk-free rate (the Sharpe here uses a risk-free rate of 0).
  A numpy array, a list or a pandas Series; NaN is dropped (NaN *pairs* for two paired series).
  The callers pass one return per bar, n = bars: a run's first bar is measured against its
  initial capital (0.0 with any fill delay >= 1: nothing can be held over the first bar). Kept
  rather than dropped so returns stay aligned bar for bar with equity.csv and between the
  columns a paired test compares; it shrinks a Sharpe by about 1/(2n) relative (0.2 % on a year).
- **Sharpe ratio**, annualised: ``mean / std(ddof=1) * sqrt(periods)``, `periods` = 252 for daily
  returns. The PSR/DSR formulas work per period; their benchmark arguments are annualised and
  converted inside (``SR_per_period = SR_annual / sqrt(periods)``).
- **Skew and kurtosis** are the sample (biased, population-moment) estimators used by Bailey &
  López de Prado; kurtosis is *non-excess* (3 for a normal distribution).
- **Bootstrap**: the stationary bootstrap of Politis & Romano (1994), indices drawn by
  `arch.bootstrap.StationaryBootstrap` seeded with ``numpy.random.default_rng(seed)``; its mean
  block length is `arch.bootstrap.optimal_block_length` (Politis & White 2004, Patton, Politis &
  White 2009), at least 1 and at most the sample size (1 for fewer than `MIN_OBS_BLOCK`
  observations, too few to estimate dependence).
- **Degenerate input** (fewer than `MIN_OBS` observations, a constant series, an infinite return)
  gives NaN, never an exception; `sharpe_ratio` alone needs only 2 observations. The classifier
  tests raise ValueError instead: one class only or unequal lengths is a caller's bug, not a
  market outcome.

References: Bailey & López de Prado, "The Sharpe Ratio Efficient Frontier" (J. of Risk, 2012) for
the PSR; "The Deflated Sharpe Ratio" (J. of Portfolio Management, 2014) for the expected maximum
Sharpe of N trials and the DSR; Ledoit & Wolf, "Robust performance hypothesis testing with the
Sharpe ratio" (J. of Empirical Finance, 2008); DeLong, DeLong & Clarke-Pearson (Biometrics, 1988)
and Sun & Xu (IEEE Signal Processing Letters, 2014) for the AUC variance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import pandas as pd
from arch.bootstrap import StationaryBootstrap, optimal_block_length
from scipy import stats

PERIODS_PER_YEAR = 252
#: Fewer observations than this give NaN statistics (skew and a bootstrap need at least three).
MIN_OBS = 3
#: Below this many observations the block length is 1: arch's estimator needs at least 8.
MIN_OBS_BLOCK = 10
#: Euler-Mascheroni constant, in the expected maximum of N normal Sharpe ratios.
EULER_GAMMA = 0.5772156649015329
#: Bootstrap replications are summed this many at a time (bounds memory at ~chunk x n floats).
_CHUNK_ELEMENTS = 1_000_000

Returns: TypeAlias = np.ndarray | pd.Series | Sequence[float]


@dataclass(frozen=True)
class SharpeEstimate:
    """A strategy's annualised Sharpe ratio with its uncertainty; all Sharpes annualised."""

    sharpe: float
    """Annualised Sharpe of the returns (mean/std ddof=1 x sqrt(periods)); NaN if degenerate."""
    ci_low: float
    """Lower end of the stationary-bootstrap percentile interval of the annualised Sharpe."""
    ci_high: float
    """Upper end of that interval (at the `level` asked for, 95 % by default)."""
    psr: float
    """Probabilistic Sharpe ratio: the probability that the true Sharpe exceeds 0."""
    n_obs: int
    """Observations used (NaN dropped)."""
    skew: float
    """Sample skewness of the returns (biased estimator)."""
    kurtosis: float
    """Sample kurtosis, non-excess (normal = 3), as in the PSR formula."""
    block_length: float
    """Mean block length of the stationary bootstrap, in observations (at least 1)."""


@dataclass(frozen=True)
class SharpeDifference:
    """Test of H0: Sharpe(a) == Sharpe(b) for two return series on the same dates."""

    difference: float
    """Annualised Sharpe of a minus that of b."""
    p_value: float
    """Two-sided p-value of H0: equal Sharpe ratios."""
    ci_low: float
    """Lower end of the confidence interval of the difference (annualised)."""
    ci_high: float
    """Upper end of that interval."""
    method: str
    """How the p-value and the interval were computed."""


@dataclass(frozen=True)
class AucEstimate:
    """Area under the ROC curve with DeLong's standard error and a normal interval in [0, 1]."""

    auc: float
    ci_low: float
    ci_high: float
    std_error: float
    n_pos: int
    n_neg: int


@dataclass(frozen=True)
class AccuracyTest:
    """A classifier's accuracy against always predicting the most frequent class."""

    accuracy: float
    """Share of predictions equal to the truth."""
    majority_rate: float
    """Share of the most frequent class in the truth: the accuracy of always predicting it."""
    p_value: float
    """One-sided exact binomial P(X >= correct | p = majority_rate)."""
    n: int


# --- Inputs -----------------------------------------------------------------------------------
def _as_returns(returns: Returns) -> np.ndarray:
    """Returns as a 1-D float64 array with NaN dropped."""
    x = np.asarray(returns, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"returns must be one-dimensional, got shape {x.shape}")
    return x[~np.isnan(x)]


def _is_degenerate(x: np.ndarray, min_obs: int = MIN_OBS) -> bool:
    """Too short, holding an infinite value, or constant (zero variance: no Sharpe ratio)."""
    return x.size < min_obs or not np.isfinite(x).all() or float(np.ptp(x)) == 0.0


def _per_period_moments(x: np.ndarray) -> tuple[float, float, float]:
    """Per-period Sharpe (ddof=1), sample skew and non-excess kurtosis of a non-degenerate x (the
    biased moment estimators, as `scipy.stats.skew` and `kurtosis(fisher=False)` compute them)."""
    c = x - np.mean(x)
    c2 = c * c
    m2 = float(np.mean(c2))
    sr = float(np.mean(x) / math.sqrt(m2 * x.size / (x.size - 1)))
    skew = float(np.mean(c2 * c)) / m2**1.5
    kurt = float(np.mean(c2 * c2)) / m2**2
    return sr, skew, kurt


# --- Stationary bootstrap ---------------------------------------------------------------------
def _block_length(*series: np.ndarray) -> float:
    """Mean block length for a stationary bootstrap of the series (jointly: the largest of each
    series' optimal length), clipped to [1, n]."""
    n = series[0].size
    if n < MIN_OBS_BLOCK:
        return 1.0
    lengths = optimal_block_length(np.column_stack(series))["stationary"].to_numpy()
    block = float(np.max(lengths))
    if not math.isfinite(block):
        return 1.0
    return min(max(block, 1.0), float(n))


def _bootstrap_sums(features: np.ndarray, block: float, reps: int, seed: int) -> np.ndarray:
    """Column sums of `features` (n x k) over `reps` stationary-bootstrap resamples of its rows,
    shape (reps, k).

    The indices are arch's own (`StationaryBootstrap.update_indices`, the same sequence
    `bootstrap(reps)` yields for this seed); each chunk of resamples is turned into a count matrix
    (how often each row was drawn) and weighted by `features`, which is much faster than
    gathering every resample.
    """
    n = features.shape[0]
    # arch types block_size as int but uses only 1/block_size: a fractional mean length is fine
    bs = StationaryBootstrap(block, np.arange(n), seed=np.random.default_rng(seed))  # type: ignore[arg-type]
    chunk = max(1, min(reps, _CHUNK_ELEMENTS // max(n, 1)))
    sums = np.empty((reps, features.shape[1]))
    for start in range(0, reps, chunk):
        m = min(chunk, reps - start)
        idx = np.stack([bs.update_indices() for _ in range(m)])
        idx += (np.arange(m) * n)[:, None]  # row r's draws counted in bins r*n .. r*n + n-1
        counts = np.bincount(idx.ravel(), minlength=m * n).reshape(m, n)
        # Not `counts @ features`: BLAS sums in an order that depends on its thread count, so a
        # worker process limited to one thread would differ in the last bit. numpy's own
        # (pairwise) sums are the same in every process: results do not depend on the backend.
        for j in range(features.shape[1]):
            sums[start : start + m, j] = (counts * features[:, j]).sum(axis=1)
    return sums


def _sharpes_from_centred_sums(
    s1: np.ndarray, s2: np.ndarray, centre: float, n: int, periods: int
) -> np.ndarray:
    """Annualised Sharpes of resamples from the sums `s1`, `s2` of their returns minus `centre`
    and of those squared (centring keeps the sum-of-squares variance accurate); NaN where a
    resample is constant (its variance is rounding noise, below 1e-9 of the typical one)."""
    mean = s1 / n + centre
    var = np.maximum(s2 - s1**2 / n, 0.0) / (n - 1)
    constant = var <= 1e-9 * float(np.median(s2)) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        out = mean / np.sqrt(var) * math.sqrt(periods)
    out[constant] = np.nan
    return out


def _bootstrap_sharpes(
    x: np.ndarray, block: float, reps: int, seed: int, periods: int
) -> np.ndarray:
    """Annualised Sharpe of each of `reps` stationary-bootstrap resamples of x."""
    centre = float(np.mean(x))
    xc = x - centre
    sums = _bootstrap_sums(np.column_stack([xc, xc * xc]), block, reps, seed)
    return _sharpes_from_centred_sums(sums[:, 0], sums[:, 1], centre, x.size, periods)


def _percentile_interval(draws: np.ndarray, level: float) -> tuple[float, float]:
    """Equal-tailed percentile interval of the finite draws."""
    finite = draws[np.isfinite(draws)]
    if finite.size == 0:
        return math.nan, math.nan
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)


# --- Sharpe ratio and its uncertainty ---------------------------------------------------------
def sharpe_ratio(returns: Returns, periods: int = PERIODS_PER_YEAR) -> float:
    """Annualised Sharpe ratio, ``mean / std(ddof=1) * sqrt(periods)``, risk-free rate 0; NaN for
    fewer than 2 observations or a constant series."""
    x = _as_returns(returns)
    if _is_degenerate(x, min_obs=2):
        return math.nan
    return float(np.mean(x) / np.std(x, ddof=1) * math.sqrt(periods))


def sharpe_ci(
    returns: Returns,
    *,
    periods: int = PERIODS_PER_YEAR,
    level: float = 0.95,
    reps: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Stationary-bootstrap percentile interval (low, high) of the annualised Sharpe ratio at
    `level`; (NaN, NaN) if degenerate."""
    x = _as_returns(returns)
    if _is_degenerate(x):
        return math.nan, math.nan
    draws = _bootstrap_sharpes(x, _block_length(x), reps, seed, periods)
    return _percentile_interval(draws, level)


def _psr(sr: float, benchmark: float, n: int, skew: float, kurt: float) -> float:
    """PSR from per-period Sharpe `sr` and `benchmark`, sample size n, skew and non-excess kurtosis
    (Bailey & López de Prado 2012, eq. 11)."""
    variance_factor = 1.0 - skew * sr + (kurt - 1.0) / 4.0 * sr**2
    if not variance_factor > 0 or n < 2:
        return math.nan
    z = (sr - benchmark) * math.sqrt(n - 1) / math.sqrt(variance_factor)
    return float(stats.norm.cdf(z))


def probabilistic_sharpe_ratio(
    returns: Returns, benchmark_sharpe: float = 0.0, *, periods: int = PERIODS_PER_YEAR
) -> float:
    """Probability that the true Sharpe exceeds `benchmark_sharpe` (annualised) given the sample's
    length, skew and kurtosis (Bailey & López de Prado 2012):
    ``Phi((SR - SR*) sqrt(n-1) / sqrt(1 - skew SR + (kurt-1)/4 SR^2))`` with per-period SR, SR*."""
    x = _as_returns(returns)
    if _is_degenerate(x):
        return math.nan
    sr, skew, kurt = _per_period_moments(x)
    return _psr(sr, benchmark_sharpe / math.sqrt(periods), x.size, skew, kurt)


def expected_max_sharpe(n_trials: int, sharpe_variance: float) -> float:
    """Expected maximum of `n_trials` Sharpe estimates whose true value is 0 and whose variance
    across trials is `sharpe_variance` (Bailey & López de Prado 2014):
    ``sqrt(V) ((1-gamma) Phi^-1(1 - 1/N) + gamma Phi^-1(1 - 1/(N e)))``.

    In the units of V: pass the variance of per-period Sharpes for a per-period answer, of
    annualised Sharpes for an annualised one. 0.0 for N <= 1 or V <= 0; NaN for NaN V.
    """
    if math.isnan(sharpe_variance):
        return math.nan
    if n_trials <= 1 or sharpe_variance <= 0:
        return 0.0
    z = (1.0 - EULER_GAMMA) * stats.norm.ppf(1.0 - 1.0 / n_trials) + EULER_GAMMA * stats.norm.ppf(
        1.0 - 1.0 / (n_trials * math.e)
    )
    return float(math.sqrt(sharpe_variance) * z)


def deflated_sharpe_ratio(
    returns: Returns,
    n_trials: int,
    trial_sharpe_variance: float,
    *,
    periods: int = PERIODS_PER_YEAR,
) -> float:
    """Deflated Sharpe ratio (Bailey & López de Prado 2014): the PSR against the Sharpe the best of
    `n_trials` skill-less trials would show, ``expected_max_sharpe(N, V)``.

    `trial_sharpe_variance` is the variance of the trials' annualised Sharpe ratios. With one trial
    the DSR is the PSR against 0.
    """
    benchmark = expected_max_sharpe(n_trials, trial_sharpe_variance)
    return probabilistic_sharpe_ratio(returns, benchmark, periods=periods)


@dataclass(frozen=True)
class SharpeMoments:
    """What a PSR or DSR needs of a return series, so it can be recomputed later without the
    returns (the trial ledger keeps these, not the series)."""

    n_obs: int
    sharpe: float  # annualised
    skew: float
    kurtosis: float  # non-excess


def sharpe_moments(returns: Returns, *, periods: int = PERIODS_PER_YEAR) -> SharpeMoments | None:
    """The annualised Sharpe, sample size, skew and kurtosis of `returns`; None if degenerate."""
    x = _as_returns(returns)
    if _is_degenerate(x):
        return None
    sr, skew, kurt = _per_period_moments(x)
    return SharpeMoments(int(x.size), sr * math.sqrt(periods), skew, kurt)


def deflated_sharpe_from_moments(
    moments: SharpeMoments,
    n_trials: int,
    trial_sharpe_variance: float,
    *,
    periods: int = PERIODS_PER_YEAR,
) -> float:
    """`deflated_sharpe_ratio` from a series' moments instead of the series (equal to it up to
    rounding: the per-period Sharpe is recovered as ``sharpe / sqrt(periods)``)."""
    benchmark = expected_max_sharpe(n_trials, trial_sharpe_variance)
    if math.isnan(benchmark):
        return math.nan
    root = math.sqrt(periods)
    return _psr(
        moments.sharpe / root, benchmark / root, moments.n_obs, moments.skew, moments.kurtosis
    )


def estimate_sharpe(
    returns: Returns,
    *,
    periods: int = PERIODS_PER_YEAR,
    level: float = 0.95,
    reps: int = 1000,
    seed: int = 0,
) -> SharpeEstimate:
    """The annualised Sharpe, its bootstrap interval at `level`, its PSR against 0 and the moments
    behind them, in one pass; NaN fields (n_obs still set) if degenerate."""
    x = _as_returns(returns)
    if _is_degenerate(x):
        return SharpeEstimate(
            sharpe=sharpe_ratio(x, periods),
            ci_low=math.nan,
            ci_high=math.nan,
            psr=math.nan,
            n_obs=int(x.size),
            skew=math.nan,
            kurtosis=math.nan,
            block_length=math.nan,
        )
    sr, skew, kurt = _per_period_moments(x)
    block = _block_length(x)
    low, high = _percentile_interval(_bootstrap_sharpes(x, block, reps, seed, periods), level)
    return SharpeEstimate(
        sharpe=sr * math.sqrt(periods),
        ci_low=low,
        ci_high=high,
        psr=_psr(sr, 0.0, x.size, skew, kurt),
        n_obs=int(x.size),
        skew=skew,
        kurtosis=kurt,
        block_length=block,
    )


# --- Two strategies' Sharpe ratios ------------------------------------------------------------
def _paired(a: Returns, b: Returns) -> tuple[np.ndarray, np.ndarray]:
    """Two paired return series as float arrays with every pair holding a NaN dropped."""
    if isinstance(a, pd.Series) and isinstance(b, pd.Series) and not a.index.equals(b.index):
        raise ValueError("a and b are not on the same dates (their indexes differ); align them")
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or y.ndim != 1 or x.size != y.size:
        raise ValueError(
            f"a and b must be one-dimensional and of equal length (paired by date), "
            f"got shapes {x.shape} and {y.shape}"
        )
    keep = ~(np.isnan(x) | np.isnan(y))
    return x[keep], y[keep]


#: `SharpeDifference.method` of `sharpe_difference_test`.
PAIRED_BOOTSTRAP_METHOD = "paired stationary bootstrap"


def sharpe_difference_test(
    a: Returns,
    b: Returns,
    *,
    periods: int = PERIODS_PER_YEAR,
    level: float = 0.95,
    reps: int = 1000,
    seed: int = 0,
) -> SharpeDifference:
    """Test H0: Sharpe(a) == Sharpe(b) for returns on the same dates (equal lengths, paired by
    position; two Series must share their index). Pairs holding a NaN are dropped.

    Method: paired stationary bootstrap (the same resampled dates for both series, mean block
    length the larger of the two series' optimal lengths), centred: with D the observed difference
    and D* its bootstrap replicates, ``p = (1 + #{|D* - D| >= |D|}) / (reps + 1)`` and the interval
    is the symmetric ``D -/+ q`` with q the `level` quantile of |D* - D|, so that it excludes 0
    exactly when p < 1 - level (up to the quantile's interpolation).

    Why this method: in a simulation of equal true Sharpes (1,000-2,000 pairs each, 500 reps) its
    rejection rate at 5 % was 4.2 % (i.i.d. normal, n=1250, corr 0.5), 5.3 % (Student t4, corr
    0.8), 5.0 % (GARCH(1,1)), 5.0 % (n=250), 6.9 % (n=250, t4-GARCH, corr 0.9) and 7.3 % (AR(1)
    0.3); a studentised bootstrap gave 4.3/5.4/5.1/5.3/6.8/7.1 %, Ledoit & Wolf's HAC test
    (Newey-West) 5.1/5.3/4.8/5.5/7.3/7.5 % and the i.i.d. delta method 16 % under AR(1). The
    centred bootstrap is as close to nominal as the studentised one, and simpler.
    Degenerate input (fewer than 3 pairs, a constant series) gives NaN fields.
    """
    x, y = _paired(a, b)
    if _is_degenerate(x) or _is_degenerate(y):
        nan = math.nan
        return SharpeDifference(nan, nan, nan, nan, PAIRED_BOOTSTRAP_METHOD)
    n = x.size
    difference = sharpe_ratio(x, periods) - sharpe_ratio(y, periods)
    cx, cy = float(np.mean(x)), float(np.mean(y))
    xc, yc = x - cx, y - cy
    sums = _bootstrap_sums(
        np.column_stack([xc, xc * xc, yc, yc * yc]), _block_length(x, y), reps, seed
    )
    draws = _sharpes_from_centred_sums(
        sums[:, 0], sums[:, 1], cx, n, periods
    ) - _sharpes_from_centred_sums(sums[:, 2], sums[:, 3], cy, n, periods)
    deviations = np.abs(draws[np.isfinite(draws)] - difference)
    if deviations.size == 0:
        nan = math.nan
        return SharpeDifference(difference, nan, nan, nan, PAIRED_BOOTSTRAP_METHOD)
    p_value = (1.0 + np.count_nonzero(deviations >= abs(difference))) / (deviations.size + 1.0)
    half_width = float(np.quantile(deviations, level))
    return SharpeDifference(
        difference=difference,
        p_value=float(p_value),
        ci_low=difference - half_width,
        ci_high=difference + half_width,
        method=PAIRED_BOOTSTRAP_METHOD,
    )


# --- Classifiers ------------------------------------------------------------------------------
def _binary_labels(y_true: object, name: str = "y_true") -> np.ndarray:
    """Labels as a bool array (True = positive class 1); ValueError unless all are 0/1 or bool."""
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {y.shape}")
    values = set(np.unique(y).tolist())
    if not values <= {0, 1}:
        raise ValueError(f"{name} must hold only 0/1 or False/True, got {sorted(values)[:5]}")
    return y.astype(bool)


def _midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    return stats.rankdata(values, method="average")


def auc_delong(y_true: object, score: object, level: float = 0.95) -> AucEstimate:
    """ROC AUC of `score` for binary `y_true` (1/True = positive; a higher score = more likely
    positive), with DeLong's (1988) standard error computed by the O(n log n) midrank algorithm
    of Sun & Xu (2014) and a normal interval at `level` clipped to [0, 1]. Ties count one half.

    Raises ValueError if the lengths differ, a score is NaN, or only one class is present.
    """
    y = _binary_labels(y_true)
    s = np.asarray(score, dtype=np.float64)
    if s.shape != y.shape:
        raise ValueError(f"y_true and score differ in shape: {y.shape} vs {s.shape}")
    if np.isnan(s).any():
        raise ValueError("score holds NaN; drop those rows (and their labels) first")
    pos, neg = s[y], s[~y]
    m, n = pos.size, neg.size
    if m == 0 or n == 0:
        raise ValueError(
            f"AUC needs both classes in y_true, got {m} positive and {n} negative labels"
        )
    combined = _midranks(np.concatenate([pos, neg]))
    # placement values: share of the other class a case beats (ties count 1/2)
    v10 = (combined[:m] - _midranks(pos)) / n
    v01 = 1.0 - (combined[m:] - _midranks(neg)) / m
    auc = float(np.mean(v10))
    s10 = float(np.var(v10, ddof=1)) if m > 1 else 0.0
    s01 = float(np.var(v01, ddof=1)) if n > 1 else 0.0
    std_error = math.sqrt(s10 / m + s01 / n)
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    return AucEstimate(
        auc=auc,
        ci_low=max(0.0, auc - z * std_error),
        ci_high=min(1.0, auc + z * std_error),
        std_error=std_error,
        n_pos=int(m),
        n_neg=int(n),
    )


def accuracy_vs_majority(y_true: object, y_pred: object) -> AccuracyTest:
    """Accuracy of `y_pred` and a one-sided exact binomial test that it beats always predicting
    the most frequent class of `y_true`: ``P(X >= correct)``, X ~ Binomial(n, majority rate).

    Any hashable labels. Raises ValueError if the lengths differ, the input is empty, or y_true
    holds one class only (the majority rule is then always right and nothing can beat it).
    """
    truth = np.asarray(y_true)
    pred = np.asarray(y_pred)
    if truth.ndim != 1 or truth.shape != pred.shape:
        raise ValueError(
            f"y_true and y_pred must be one-dimensional and of equal length, "
            f"got shapes {truth.shape} and {pred.shape}"
        )
    if truth.size == 0:
        raise ValueError("y_true is empty")
    _, counts = np.unique(truth, return_counts=True)
    if counts.size < 2:
        raise ValueError("y_true holds one class only: accuracy cannot beat the majority rule")
    n = int(truth.size)
    correct = int(np.count_nonzero(truth == pred))
    majority_rate = float(counts.max() / n)
    p_value = stats.binomtest(correct, n, majority_rate, alternative="greater").pvalue
    return AccuracyTest(
        accuracy=correct / n, majority_rate=majority_rate, p_value=float(p_value), n=n
    )


# --- One line for a report --------------------------------------------------------------------
#: Longest line `verdict` returns.
VERDICT_MAX_CHARS = 160


def _fmt_p(p: float) -> str:
    return "p < 0.01" if p < 0.005 else f"p {p:.2f}"


def _benchmark_clause(
    p_vs_benchmarks: Mapping[str, float | SharpeDifference | None], alpha: float, room: int
) -> str:
    """'better than X (p 0.01)', 'differs from X (p 0.03)', or 'not distinguishable from X or Y';
    summarised by a count when the names do not fit in `room` characters."""
    tested: list[str] = []
    significant: list[tuple[str, str, float]] = []  # (relation, name, p)
    for key, value in p_vs_benchmarks.items():
        p = value.p_value if isinstance(value, SharpeDifference) else value
        if p is None or math.isnan(p):  # not tested: say nothing about it
            continue
        name = key.replace("_", " ")
        tested.append(name)
        if not p < alpha:
            continue
        if isinstance(value, SharpeDifference):
            relation = "better than" if value.difference > 0 else "worse than"
        else:  # a bare two-sided p-value says there is a difference, not which way
            relation = "differs from"
        significant.append((relation, name, float(p)))
    if not tested:
        return ""
    if not significant:
        clause = "not distinguishable from " + " or ".join(tested)
        if len(clause) > room:
            clause = f"not distinguishable from any of {len(tested)} benchmarks"
        return clause
    clause = "; ".join(f"{relation} {name} ({_fmt_p(p)})" for relation, name, p in significant)
    if len(clause) > room:
        worst = max(p for _, _, p in significant)
        clause = (
            f"differs from {len(significant)} of {len(tested)} benchmarks ({_fmt_p(worst)} or less)"
        )
    return clause


def verdict(
    estimate: SharpeEstimate,
    dsr: float | None = None,
    p_vs_benchmarks: Mapping[str, float | SharpeDifference | None] | None = None,
    level: float = 0.95,
    trials: int | None = None,
) -> str:
    """One line in plain words: is the edge positive, negative or indistinguishable from zero at
    `level` (by the Sharpe interval), does it survive deflation (DSR >= level; over how many
    `trials`, when given), and how it
    compares with the benchmarks (p-values of `sharpe_difference_test`, keyed by name; underscores
    read as spaces).

    A benchmark is named as "better/worse than" when given as a `SharpeDifference` with p below
    1 - level, as "differs from" when given as a bare two-sided p-value (which carries no sign),
    and all together as "not distinguishable from ..." when none is below; a None or NaN p-value
    (not tested) is left out. At most `VERDICT_MAX_CHARS` characters.
    """
    pct = f"{level * 100:g} %"
    if not (math.isfinite(estimate.ci_low) and math.isfinite(estimate.ci_high)):
        line = f"too little data to judge the edge ({estimate.n_obs} returns)"
        return line[:VERDICT_MAX_CHARS]
    ci = f"Sharpe CI {estimate.ci_low:.2f} .. {estimate.ci_high:.2f}"
    if estimate.ci_low > 0:
        line = f"positive edge at {pct} ({ci})"
        if dsr is not None and math.isfinite(dsr):
            over = f" over {trials:,} trials" if trials else ""
            if dsr >= level:
                line += f", survives deflation{over} (DSR {dsr:.2f})"
            else:
                by = f"its {trials:,}" if trials else "the"
                line += f", but not after deflating by {by} trials (DSR {dsr:.2f})"
    elif estimate.ci_high < 0:
        line = f"negative edge at {pct} ({ci})"
    else:
        line = f"edge not distinguishable from zero at {pct} ({ci})"
    if p_vs_benchmarks:
        clause = _benchmark_clause(p_vs_benchmarks, 1.0 - level, VERDICT_MAX_CHARS - len(line) - 2)
        if clause:
            line += "; " + clause
    return line[:VERDICT_MAX_CHARS]
