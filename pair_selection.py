"""Evidence that a pair of stocks mean-reverts, measured on rolling formation windows only.

The statistics half of `main.py scan` (still to come): walk-forward windows (a formation window,
then the trading window right after it, rolled forward), and per formation window the correlation
of daily log returns, the OLS hedge ratio, the Engle–Granger cointegration p-value, the half-life
of mean reversion and the hedge ratio's stability. Pure functions over numpy arrays; no I/O, no
clock. Imports only `error_handling` from the project.

Conventions
-----------
- **Rows** are positions into the caller's price table (one row per trading day, oldest first);
  windows are half-open ``[start, stop)``. **Prices** are *log* prices (``np.log(close)``).
- **Spread** of a window: ``log_a - hedge_ratio * log_b - intercept``, with hedge ratio and
  intercept the OLS fit of ``log_a`` on ``log_b`` over that same window: long 1 of a, short
  `hedge_ratio` of b in log terms.
- **No lookahead (invariant).** The statistics of a window are computed from rows
  ``[formation_start, formation_stop)`` only; rows at or after `formation_stop` (the trading
  window and beyond) never enter them. Enforced by `tests/test_pair_selection.py`'s truncation
  and future-shock tests.
- **Cointegration test** (`coint_pvalue`; the scan's ``--coint-lags``): ``fixed1`` (default) is
  ``statsmodels.tsa.stattools.coint(log_a, log_b, trend="c", maxlag=COINT_MAXLAG, autolag=None)``:
  the ADF regression on the residuals uses exactly one lagged difference. ``aic`` is statsmodels'
  own default, ``coint(log_a, log_b, trend="c", autolag="aic")``: the lag (0 to 15 on 252 bars)
  chosen by AIC per window. The two disagree (bundled BAC/JPM: p-values up to 0.64 apart on one
  window; 12 of 127 windows cointegrated under fixed1, 8 under aic). Why fixed1 is the default:
  ``autolag="aic"`` fits every lag up to 15 on 252 bars and costs ~8x as much (measured 9.2 ms
  instead of 1.2 ms of CPU a call), and the bundled scan makes 24,130 calls (190 pairs x 127
  windows); ``autolag=None`` with statsmodels' default maxlag (15 lags on 252 bars)
  spends degrees of freedom on lags daily spreads rarely need and loses power (one seeded
  cointegrated pair: p 0.06 with 15 lags, 1e-21 with one). One lag keeps the test's size: 2 of 50
  pairs of independent random walks rejected at 5 % (tests/test_pair_selection.py).
- **Half-life** in bars (trading days): from the AR(1) regression
  ``spread_t - spread_{t-1} = lambda * spread_{t-1} + c`` with ``phi = 1 + lambda``, the number of
  bars for a deviation's size to halve, ``ln(0.5) / ln(|phi|)``; ``inf`` when ``phi >= 1``
  (``lambda >= 0``: no mean reversion) or ``|phi| >= 1`` (explosive), ``0.0`` when ``phi == 0``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from statsmodels.tools.sm_exceptions import CollinearityWarning
from statsmodels.tsa.stattools import coint

from error_handling import ConfigurationError

#: A formation window shorter than this is refused: the ADF regression and the two half-window
#: hedge ratios need some data.
MIN_BARS = 30
#: Lagged differences in the Engle–Granger ADF regression under ``fixed1`` (module docstring).
COINT_MAXLAG = 1
#: How the ADF regression's lags are chosen: one fixed lag (default), or AIC up to statsmodels'
#: default maximum.
COINT_LAGS = ("fixed1", "aic")
#: Default formation window: one year of trading days.
FORMATION_BARS = 252
#: Default trading window: one quarter of trading days.
TRADING_BARS = 63


@dataclass(frozen=True)
class WalkForwardWindow:
    """A formation window followed by its out-of-sample trading window, as half-open row ranges
    ``[formation_start, formation_stop)`` and ``[trading_start, trading_stop)`` of the price table;
    ``trading_start == formation_stop``."""

    formation_start: int
    formation_stop: int
    trading_start: int
    trading_stop: int

    def __post_init__(self) -> None:
        if not (
            0
            <= self.formation_start
            < self.formation_stop
            == self.trading_start
            < self.trading_stop
        ):
            raise ConfigurationError(
                f"inconsistent walk-forward window {self}: need 0 <= formation_start < "
                "formation_stop == trading_start < trading_stop"
            )

    @property
    def formation_bars(self) -> int:
        """Rows in the formation window."""
        return self.formation_stop - self.formation_start

    @property
    def trading_bars(self) -> int:
        """Rows in the trading window."""
        return self.trading_stop - self.trading_start


def walk_forward_windows(
    n_bars: int,
    formation_bars: int = FORMATION_BARS,
    trading_bars: int = TRADING_BARS,
    step_bars: int | None = None,
) -> list[WalkForwardWindow]:
    """Walk-forward windows over a table of `n_bars` rows, oldest first.

    Window k forms on ``[k*step, k*step + formation_bars)`` and trades on the `trading_bars` rows
    right after. `step_bars` defaults to `trading_bars`, which makes the trading windows contiguous
    and non-overlapping; a smaller step overlaps them, a larger one leaves gaps. Every trading
    window is complete: a last one that would run past `n_bars` is dropped, so the final rows
    (fewer than `step_bars` of them with the default step) may be traded by no window. Raises
    ConfigurationError on a non-positive size or when not even one window fits.
    """
    step = trading_bars if step_bars is None else step_bars
    for name, value in (
        ("formation_bars", formation_bars),
        ("trading_bars", trading_bars),
        ("step_bars", step),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigurationError(
                f"{name} must be a positive whole number of bars, not {value!r}"
            )
    if formation_bars < MIN_BARS:
        raise ConfigurationError(
            f"formation_bars={formation_bars} is too short: pair statistics need at least "
            f"{MIN_BARS} bars"
        )
    if n_bars < formation_bars + trading_bars:
        raise ConfigurationError(
            f"too little data for one walk-forward window: {n_bars} bars, need at least "
            f"formation_bars + trading_bars = {formation_bars + trading_bars}"
        )
    windows = []
    start = 0
    while start + formation_bars + trading_bars <= n_bars:
        stop = start + formation_bars
        windows.append(WalkForwardWindow(start, stop, stop, stop + trading_bars))
        start += step
    return windows


@dataclass(frozen=True)
class PairStatistics:
    """Evidence of one formation window, all on log prices; a is regressed on b."""

    #: Pearson correlation of the daily log returns of a and b (bars - 1 returns).
    correlation: float
    #: OLS slope of log(a) on log(b) with intercept: log units of b per log unit of a.
    hedge_ratio: float
    #: OLS intercept of that fit, in log price.
    intercept: float
    #: Engle–Granger p-value (`coint_pvalue`, one ADF lag by default, AIC-chosen under ``aic``);
    #: small = evidence of cointegration.
    coint_pvalue: float
    #: Bars for a spread deviation to halve (`half_life` of the window's spread); inf when it
    #: does not revert, 0.0 when the fit is exact (a constant spread).
    half_life_bars: float
    #: ``|slope(first half) - slope(second half)| / 2 / |hedge_ratio|``: the population std of the
    #: two half-window hedge ratios relative to the full-window one. Scale-free, >= 0, lower =
    #: more stable; inf when the full-window ratio is 0.
    hedge_ratio_stability: float
    #: Rows in the formation window.
    bars: int


def _ols(y: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) of the least-squares fit ``y = slope * x + intercept``."""
    x_dev = x - x.mean()
    slope = float(np.dot(x_dev, y - y.mean()) / np.dot(x_dev, x_dev))
    return slope, float(y.mean() - slope * x.mean())


def half_life(spread: np.ndarray) -> float:
    """Half-life in bars of a spread's mean reversion, from the least-squares fit of
    ``spread_t - spread_{t-1} = lambda * spread_{t-1} + c`` over consecutive bars.

    ``ln(0.5) / ln(|1 + lambda|)``; inf when ``lambda >= 0`` (no reversion) or when
    ``|1 + lambda| >= 1`` (explosive), 0.0 when ``lambda == -1``. Raises ConfigurationError on
    NaN/inf, fewer than 3 bars or a constant spread.
    """
    s = np.asarray(spread, dtype=float)
    if s.ndim != 1 or s.size < 3:
        raise ConfigurationError(f"half_life needs a 1-d spread of at least 3 bars, got {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ConfigurationError("half_life: the spread contains NaN or inf")
    lagged = s[:-1]
    if np.ptp(lagged) == 0.0:
        raise ConfigurationError("half_life: the spread is constant, its reversion is undefined")
    lam, _ = _ols(np.diff(s), lagged)
    phi = 1.0 + lam
    if lam >= 0.0 or abs(phi) >= 1.0:
        return math.inf
    if phi == 0.0:
        return 0.0
    return math.log(0.5) / math.log(abs(phi))


def _checked_pair(log_a: np.ndarray, log_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both series as float arrays of equal length; ConfigurationError otherwise."""
    a = np.asarray(log_a, dtype=float)
    b = np.asarray(log_b, dtype=float)
    if a.ndim != 1 or b.ndim != 1 or a.shape != b.shape:
        raise ConfigurationError(
            f"log prices must be two 1-d series of equal length, got {a.shape} and {b.shape}"
        )
    return a, b


def coint_pvalue(a: np.ndarray, b: np.ndarray, lags: str = "fixed1") -> float:
    """Engle–Granger p-value of log prices a on b (constant trend): ``fixed1`` one ADF lag,
    ``aic`` the lag AIC picks (statsmodels' default). ConfigurationError on another `lags`."""
    if lags not in COINT_LAGS:
        raise ConfigurationError(f"coint lags must be one of {', '.join(COINT_LAGS)}, not {lags!r}")
    options = {"maxlag": COINT_MAXLAG, "autolag": None} if lags == "fixed1" else {"autolag": "aic"}
    with warnings.catch_warnings():
        # Perfect collinearity gives p = 0 by statsmodels' convention; not worth a warning per call.
        warnings.simplefilter("ignore", CollinearityWarning)
        return float(coint(a, b, trend="c", **options)[1])


def pair_statistics(
    log_a: np.ndarray, log_b: np.ndarray, coint_lags: str = "fixed1"
) -> PairStatistics:
    """Statistics of one formation window from the log prices of a and b over it (oldest first);
    `coint_lags` picks the Engle–Granger test's ADF lags (`coint_pvalue`).

    Raises ConfigurationError on unequal lengths, fewer than `MIN_BARS` bars, NaN or inf (a missing
    or non-positive price), or a constant series (no hedge ratio or correlation exists).
    """
    a, b = _checked_pair(log_a, log_b)
    n = a.size
    if n < MIN_BARS:
        raise ConfigurationError(f"a formation window needs at least {MIN_BARS} bars, got {n}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        bad = int(np.count_nonzero(~np.isfinite(a)) + np.count_nonzero(~np.isfinite(b)))
        raise ConfigurationError(
            f"{bad} log price(s) in the formation window are NaN or inf (missing or non-positive "
            "prices); fill or drop those rows before computing pair statistics"
        )
    half = n // 2
    if min(np.ptp(a), np.ptp(b[:half]), np.ptp(b[half:])) == 0.0:
        raise ConfigurationError(
            "a price series is constant over the formation window (or one of its halves); "
            "the hedge ratio is undefined"
        )
    returns_a, returns_b = np.diff(a), np.diff(b)
    if np.ptp(returns_a) == 0.0 or np.ptp(returns_b) == 0.0:
        correlation = math.nan  # constant returns: a straight line in log price, no correlation
    else:
        correlation = float(np.corrcoef(returns_a, returns_b)[0, 1])
    hedge_ratio, intercept = _ols(a, b)
    first, _ = _ols(a[:half], b[:half])
    second, _ = _ols(a[half:], b[half:])
    stability = abs(first - second) / 2.0 / abs(hedge_ratio) if hedge_ratio != 0.0 else math.inf
    pvalue = coint_pvalue(a, b, coint_lags)
    spread = a - hedge_ratio * b - intercept
    return PairStatistics(
        correlation=correlation,
        hedge_ratio=hedge_ratio,
        intercept=intercept,
        coint_pvalue=pvalue,
        half_life_bars=half_life(spread) if np.ptp(spread[:-1]) > 0.0 else 0.0,
        hedge_ratio_stability=stability,
        bars=n,
    )


def rolling_pair_statistics(
    log_a: np.ndarray, log_b: np.ndarray, windows: Sequence[WalkForwardWindow]
) -> list[PairStatistics]:
    """`pair_statistics` of each window's formation rows ``[formation_start, formation_stop)``,
    in the order of `windows`; rows after a window's `formation_stop` are never read for it.

    The series may end anywhere at or after the last formation_stop (its trading rows need not be
    there). Raises ConfigurationError when a formation window runs past the series.
    """
    a, b = _checked_pair(log_a, log_b)
    out = []
    for w in windows:
        if w.formation_stop > a.size:
            raise ConfigurationError(
                f"formation window [{w.formation_start}, {w.formation_stop}) runs past the "
                f"{a.size} bars given"
            )
        out.append(
            pair_statistics(
                a[w.formation_start : w.formation_stop], b[w.formation_start : w.formation_stop]
            )
        )
    return out
