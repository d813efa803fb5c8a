"""Prices in, validated strictly-causal features out.

Sources (`--source` / DATA_SOURCE): `bundled` (real adjusted daily closes 1990-2022 for 20 US stocks,
shipped inside skfolio; offline), `yfinance`, `alpaca` (need a network; fail fast otherwise) and
`csv:PATH`. Features are a pure function of the closes: row t uses rows <= t only. The label of row
t is whether the long leg beats the short leg over the NEXT bar, so the last row has none.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import constants as C
from atomic_io import atomic_write_bytes, atomic_write_json, sha256_bytes
from data_validation import ValidationReport, validate_prices
from error_handling import ConfigurationError, DataError, DataSourceUnavailable, ValidationError

ONLINE_SOURCES = ("yfinance", "alpaca")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PriceData:
    """Daily bars: `close` (and `volume` when the source has it), index = session date (tz-naive)."""

    close: pd.DataFrame
    source: str
    volume: pd.DataFrame | None = None

    def select(self, tickers: Sequence[str]) -> PriceData:
        """Only `tickers`, in that order; DataError listing what is available otherwise."""
        _require_tickers(self.close.columns, tickers, self.source)
        vol = None
        if self.volume is not None and all(t in self.volume.columns for t in tickers):
            vol = self.volume[list(tickers)]
        return PriceData(self.close[list(tickers)], self.source, vol)


def _require_tickers(available: Sequence[str], tickers: Sequence[str], source: str) -> None:
    missing = [t for t in tickers if t not in set(available)]
    if missing:
        raise DataError(
            f"{', '.join(missing)} not in source '{source}'; available: "
            f"{', '.join(sorted(map(str, available)))}"
        )


# --- Sources --------------------------------------------------------------------------------------
def load_bundled() -> PriceData:
    """All 20 bundled tickers: real adjusted closes 1990-01-02 .. 2022-12-28 (skfolio, offline)."""
    try:
        from skfolio.datasets import load_sp500_dataset
    except ImportError as exc:  # pragma: no cover - core profile installs skfolio
        raise ConfigurationError(
            "the bundled data needs skfolio; run ./install.sh core"
        ) from exc
    close = load_sp500_dataset()
    close.index = pd.DatetimeIndex(close.index).normalize().rename("date")
    close.columns = [str(c) for c in close.columns]
    return PriceData(close.astype("float64"), "bundled")


def load_csv(path: str | os.PathLike[str]) -> PriceData:
    """A user's CSV: wide (a date column + one close column per ticker) or long OHLCV
    (date, symbol/ticker, close[, open, high, low, volume]). Values are validated later, not coerced.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"CSV file not found: {file}")
    try:
        raw = pd.read_csv(file, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot parse CSV {file}: {first}") from None
    source = f"csv:{file}"
    lower = {c.lower().strip(): c for c in raw.columns}
    date_col = next((lower[k] for k in ("date", "timestamp", "datetime", "time") if k in lower), None)
    if date_col is None:
        raise ValidationError(
            "missing_column",
            f"{file} has no date column (expected one named date, timestamp or datetime); "
            f"columns: {', '.join(raw.columns)}",
        )
    dates = _parse_dates(raw[date_col], file)
    raw = raw.replace("", np.nan)
    symbol_col = next((lower[k] for k in ("symbol", "ticker") if k in lower), None)
    if symbol_col is not None:  # long format
        if "close" not in lower:
            raise ValidationError("missing_column", f"{file} is long-format but has no close column")
        raw = raw.assign(_date=dates, _symbol=raw[symbol_col].str.strip().str.upper())
        dup = raw.duplicated(["_date", "_symbol"])
        if dup.any():
            row = raw[dup].iloc[0]
            raise ValidationError(
                "duplicate_date", f"appears twice in {file}", row["_symbol"], row["_date"]
            )
        close = raw.pivot(index="_date", columns="_symbol", values=lower["close"])
        volume = None
        if "volume" in lower:
            volume = raw.pivot(index="_date", columns="_symbol", values=lower["volume"])
            volume = volume.apply(pd.to_numeric, errors="coerce")
    else:
        close = raw.drop(columns=[date_col]).set_index(dates)
        close.columns = [str(c).strip().upper() for c in close.columns]
        volume = None
    close.index.name = "date"
    close.columns.name = None
    return PriceData(close, source, volume)


def _parse_dates(column: pd.Series, file: Path) -> pd.DatetimeIndex:
    parsed = pd.to_datetime(column, errors="coerce", format="mixed")
    bad = parsed.isna()
    if bad.any():
        i = int(np.argmax(bad.to_numpy()))
        raise ValidationError(
            "bad_date", f"row {i + 2} of {file}: {column.iloc[i]!r} is not a date"
        )
    index = pd.DatetimeIndex(parsed)
    if index.tz is not None:
        index = index.tz_convert("America/New_York").tz_localize(None)
    return index.normalize()


def fetch_yfinance(
    tickers: Sequence[str],
    start: pd.Timestamp,
    end: pd.Timestamp,
    *,
    timeout_s: float = C.ONLINE_TIMEOUT_S,
) -> PriceData:
    """Daily adjusted OHLCV from Yahoo Finance via yfinance (needs a network)."""
    raise DataSourceUnavailable("yfinance adapter not implemented yet")  # HELPER-YFINANCE


def fetch_alpaca(
    tickers: Sequence[str],
    start: pd.Timestamp,
    end: pd.Timestamp,
    *,
    timeout_s: float = C.ONLINE_TIMEOUT_S,
) -> PriceData:
    """Daily split-adjusted bars from Alpaca's market data API via alpaca-py (needs a network)."""
    raise DataSourceUnavailable("alpaca adapter not implemented yet")  # HELPER-ALPACA


# --- Price cache for online sources ---------------------------------------------------------------
def _price_cache_file(home: C.Paths, source: str) -> Path:
    return home.data_dir / f"prices_{source}.parquet"


def load_online_cached(
    source: str,
    tickers: Sequence[str],
    start: pd.Timestamp,
    end: pd.Timestamp,
    *,
    home: C.Paths,
) -> PriceData:
    """Online prices with an incremental cache: only bars after the cached ones are fetched.

    The cache (data/prices_<source>.parquet) holds close and volume in long form per ticker; a
    ticker not cached yet is fetched over the whole range.
    """
    fetch = {"yfinance": fetch_yfinance, "alpaca": fetch_alpaca}[source]
    file = _price_cache_file(home, source)
    cached = pd.read_parquet(file) if file.exists() else _empty_cache()
    frames = [cached]
    for ticker in tickers:
        have = cached[cached["symbol"] == ticker]
        fetch_from = start
        if len(have):
            first, last = have["date"].min(), have["date"].max()
            if first <= start:
                fetch_from = last + pd.Timedelta(days=1)
        if fetch_from > end:
            continue
        fresh = fetch([ticker], fetch_from, end)
        frames.append(_to_cache_rows(fresh, ticker))
    merged = (
        pd.concat(frames, ignore_index=True)
        .drop_duplicates(["symbol", "date"], keep="last")
        .sort_values(["symbol", "date"])
        .reset_index(drop=True)
    )
    if len(frames) > 1:
        buf = io.BytesIO()
        merged.to_parquet(buf, index=False)
        atomic_write_bytes(file, buf.getvalue())
    sel = merged[merged["symbol"].isin(tickers) & merged["date"].between(start, end)]
    close = sel.pivot(index="date", columns="symbol", values="close")
    _require_tickers(close.columns, tickers, source)
    volume = sel.pivot(index="date", columns="symbol", values="volume")
    volume = volume if volume.notna().all().all() else None
    close = close[list(tickers)].dropna()
    close.columns.name = None
    if volume is not None:
        volume = volume.loc[close.index, list(tickers)]
        volume.columns.name = None
    return PriceData(close, source, volume)


def _empty_cache() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "symbol": pd.Series(dtype="str"),
            "date": pd.Series(dtype="datetime64[us]"),
            "close": pd.Series(dtype="float64"),
            "volume": pd.Series(dtype="float64"),
        }
    )


def _to_cache_rows(data: PriceData, ticker: str) -> pd.DataFrame:
    close = data.close[ticker]
    volume = (
        data.volume[ticker]
        if data.volume is not None and ticker in data.volume
        else pd.Series(np.nan, index=close.index)
    )
    return pd.DataFrame(
        {
            "symbol": ticker,
            "date": pd.DatetimeIndex(close.index).astype("datetime64[us]"),
            "close": close.to_numpy(dtype="float64"),
            "volume": volume.reindex(close.index).to_numpy(dtype="float64"),
        }
    )


def load_prices(
    source: str,
    tickers: Sequence[str],
    *,
    start: str | pd.Timestamp | None = None,
    end: str | pd.Timestamp | None = None,
    home: C.Paths | None = None,
) -> PriceData:
    """Prices of `tickers` from `source` ('bundled', 'yfinance', 'alpaca' or 'csv:PATH'), start..end."""
    home = home or C.paths()
    start_ts = pd.Timestamp(start) if start is not None else None
    end_ts = pd.Timestamp(end) if end is not None else None
    if source == "bundled":
        data = load_bundled().select(tickers)
    elif source.startswith("csv:"):
        path = source[4:]
        if not path:
            raise ConfigurationError("--source csv: needs a path, e.g. csv:data/my_prices.csv")
        data = load_csv(path).select(tickers)
    elif source in ONLINE_SOURCES:
        data = load_online_cached(
            source,
            tickers,
            start_ts or pd.Timestamp("2000-01-01"),
            end_ts or pd.Timestamp.now().normalize(),
            home=home,
        )
    else:
        raise ConfigurationError(
            f"unknown data source {source!r}; choose bundled, yfinance, alpaca or csv:PATH"
        )
    close = data.close
    if start_ts is not None:
        close = close[close.index >= start_ts]
    if end_ts is not None:
        close = close[close.index <= end_ts]
    if len(close) == 0:
        raise DataError(
            f"no bars for {', '.join(tickers)} in source '{data.source}' between "
            f"{start_ts.date() if start_ts is not None else 'the start'} and "
            f"{end_ts.date() if end_ts is not None else 'the end'}"
        )
    volume = data.volume.loc[close.index] if data.volume is not None else None
    return PriceData(close, data.source, volume)


# --- Features -------------------------------------------------------------------------------------
def _safe_div(num: pd.Series, den: pd.Series, fill: float) -> pd.Series:
    """num / den, with `fill` where den is zero (a flat window): the feature's neutral value."""
    den_arr = den.to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den_arr > 0, num.to_numpy() / den_arr, fill)
    out = np.where(np.isnan(den_arr), np.nan, out)
    return pd.Series(out, index=num.index)


def _rsi(close: pd.Series, bars: int) -> pd.Series:
    """Wilder RSI (0..100): 100 when there were no losses, 50 on a flat window."""
    delta = close.diff()
    gain = delta.clip(lower=0).ewm(alpha=1 / bars, adjust=False, min_periods=bars).mean()
    loss = (-delta).clip(lower=0).ewm(alpha=1 / bars, adjust=False, min_periods=bars).mean()
    g, lo = gain.to_numpy(), loss.to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        rsi = np.where(lo > 0, 100.0 - 100.0 / (1.0 + g / lo), np.where(g > 0, 100.0, 50.0))
    rsi = np.where(np.isnan(g) | np.isnan(lo), np.nan, rsi)
    return pd.Series(rsi, index=close.index)


def _leg_features(close: pd.Series) -> dict[str, pd.Series]:
    """The 10 per-leg features of one close series, keyed by suffix (see constants.LEG_FEATURES)."""
    log_p = np.log(close)
    ret_1d = log_p.diff()
    mean_z = close.rolling(C.PRICE_ZSCORE_BARS).mean()
    std_z = close.rolling(C.PRICE_ZSCORE_BARS).std()
    ema_fast = close.ewm(span=C.MACD_FAST_BARS, adjust=False, min_periods=C.MACD_FAST_BARS).mean()
    ema_slow = close.ewm(span=C.MACD_SLOW_BARS, adjust=False, min_periods=C.MACD_SLOW_BARS).mean()
    macd = (ema_fast - ema_slow) / close
    macd_signal = macd.ewm(
        span=C.MACD_SIGNAL_BARS, adjust=False, min_periods=C.MACD_SIGNAL_BARS
    ).mean()
    bb_mean = close.rolling(C.BOLLINGER_BARS).mean()
    bb_std = close.rolling(C.BOLLINGER_BARS).std()
    bb_lower = bb_mean - C.BOLLINGER_STD * bb_std
    return {
        "price_z60": _safe_div(close - mean_z, std_z, 0.0),
        "ret_1d": ret_1d,
        "ret_5d": log_p.diff(C.RETURN_SHORT_BARS),
        "vol_20d": ret_1d.rolling(C.VOLATILITY_BARS).std() * np.sqrt(C.TRADING_DAYS_PER_YEAR),
        "rsi_14": _rsi(close, C.RSI_BARS),
        "macd": macd,
        "macd_signal": macd_signal,
        "bb_pctb": _safe_div(close - bb_lower, 2 * C.BOLLINGER_STD * bb_std, 0.5),
        "mom_10": close / close.shift(C.MOMENTUM_BARS) - 1.0,
        "sma_ratio": close.rolling(C.SMA_FAST_BARS).mean() / close.rolling(C.SMA_SLOW_BARS).mean()
        - 1.0,
    }


def hedge_ratio(log_long: pd.Series, log_short: pd.Series, bars: int = C.HEDGE_RATIO_BARS) -> pd.Series:
    """Rolling OLS slope of log(long) on log(short) over `bars` bars ending at t (inclusive).

    A flat short leg has no slope; the last known ratio is carried forward (still causal).
    """
    cov = log_long.rolling(bars).cov(log_short)
    var = log_short.rolling(bars).var()
    return _safe_div(cov, var, np.nan).ffill()


def compute_features(
    close: pd.DataFrame,
    long: str,
    short: str,
    volume: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Features of the pair for every bar, warm-up rows included (NaN). Pure and strictly causal.

    Columns: `constants.feature_names(long, short, with_volume=volume is not None)`, in that order.
    """
    legs = {t: _leg_features(close[t].astype("float64")) for t in (long, short)}
    cols: dict[str, pd.Series] = {}
    for t in (long, short):
        for suffix in C.LEG_FEATURES:
            cols[f"{t}_{suffix}"] = legs[t][suffix]
    log_long, log_short = np.log(close[long]), np.log(close[short])
    beta = hedge_ratio(log_long, log_short)
    spread = log_long - beta * log_short
    spread_mean = spread.rolling(C.SPREAD_ZSCORE_BARS).mean()
    spread_std = spread.rolling(C.SPREAD_ZSCORE_BARS).std()
    corr = legs[long]["ret_1d"].rolling(C.CORRELATION_BARS).corr(legs[short]["ret_1d"])
    pair = f"{long}_{short}"
    cols[f"spread_{pair}"] = spread
    cols[f"spread_z_{pair}"] = _safe_div(spread - spread_mean, spread_std, 0.0)
    # A flat leg makes the correlation undefined: 0 says "no information".
    corr_valid = corr.where(np.isfinite(corr), 0.0)
    cols[f"corr_60d_{pair}"] = corr_valid.where(legs[long]["ret_1d"].rolling(C.CORRELATION_BARS).count() >= C.CORRELATION_BARS)
    if volume is not None:
        for t in (long, short):
            v = volume[t].astype("float64")
            cols[f"{t}_{C.VOLUME_FEATURE}"] = _safe_div(v, v.rolling(C.VOLUME_BARS).mean(), 0.0)
    features = pd.DataFrame(cols, index=close.index)
    names = C.feature_names(long, short, with_volume=volume is not None)
    assert list(features.columns) == names, "feature columns drifted from constants.feature_names"
    return features


def add_label(features: pd.DataFrame, close: pd.DataFrame, long: str, short: str) -> pd.DataFrame:
    """Add `next_spread_return` (simple return of long minus short over the NEXT bar) and `label`
    (1.0 if that is > 0, else 0.0; NaN on the last row, whose next bar is unknown)."""
    ret = close[[long, short]].pct_change()
    nxt = (ret[long] - ret[short]).shift(-1)
    out = features.copy()
    out[C.NEXT_SPREAD_RETURN_COLUMN] = nxt
    out[C.LABEL_COLUMN] = np.where(nxt.isna(), np.nan, (nxt > 0).astype("float64"))
    return out


# --- Pipeline -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProcessSummary:
    """What `process` produced, for the CLI summary and the metadata file."""

    source: str
    long: str
    short: str
    input_rows: int
    rows: int
    start: str
    end: str
    features: list[str]
    warmup_rows: int
    warmup_reason: str
    unlabeled_rows: int
    has_volume: bool
    path: str
    sha256: str
    rules: list[str] = field(default_factory=list)


def _warmup(features: pd.DataFrame) -> tuple[int, str]:
    """Leading rows with any NaN feature, and which features need that many."""
    valid = features.notna().all(axis=1).to_numpy()
    if not valid.any():
        raise DataError(
            f"only {len(features)} bars: not enough history for the features "
            f"(the longest needs {C.HEDGE_RATIO_BARS + C.SPREAD_ZSCORE_BARS - 1} bars)"
        )
    first = int(np.argmax(valid))
    lead = {c: int(np.argmax(features[c].notna().to_numpy())) for c in features.columns}
    worst = sorted(c for c, n in lead.items() if n == first)
    gaps = features.iloc[first:].isna()
    if gaps.any().any():
        col = gaps.any().idxmax()
        date = gaps[col].idxmax()
        raise DataError(f"feature {col} is missing on {date.date()} after the warm-up")
    reason = f"{', '.join(worst)} need{'s' if len(worst) == 1 else ''} {first + 1} bars of history"
    return first, reason


def process(
    source: str,
    pair: C.Pair,
    *,
    start: str | None = None,
    end: str | None = None,
    home: C.Paths | None = None,
) -> tuple[pd.DataFrame, ProcessSummary]:
    """Load, validate, compute features and label, drop warm-up rows, write the processed file.

    Writes data/processed_<LONG>_<SHORT>.parquet and its .json metadata atomically.
    """
    home = (home or C.paths()).ensure()
    prices = load_prices(source, pair.tickers, start=start, end=end, home=home)
    report: ValidationReport = validate_prices(prices.close, pair.tickers)
    close = prices.close.astype("float64")
    volume = prices.volume.astype("float64") if prices.volume is not None else None
    features = compute_features(close, pair.long, pair.short, volume)
    warmup_rows, reason = _warmup(features)
    table = add_label(features, close, pair.long, pair.short).iloc[warmup_rows:]
    table = pd.concat([close.iloc[warmup_rows:].add_suffix("_close"), table], axis=1)
    table.index.name = "date"

    buf = io.BytesIO()
    table.to_parquet(buf)
    blob = buf.getvalue()
    out = home.processed_file(pair)
    summary = ProcessSummary(
        source=prices.source,
        long=pair.long,
        short=pair.short,
        input_rows=report.rows,
        rows=len(table),
        start=str(table.index[0].date()),
        end=str(table.index[-1].date()),
        features=list(features.columns),
        warmup_rows=warmup_rows,
        warmup_reason=reason,
        unlabeled_rows=int(table[C.LABEL_COLUMN].isna().sum()),
        has_volume=volume is not None,
        path=str(out),
        sha256=sha256_bytes(blob),
        rules=list(report.rules),
    )
    atomic_write_bytes(out, blob)
    atomic_write_json(out.with_suffix(".json"), asdict(summary))
    log.info(
        "processed %s/%s from %s: %d rows %s..%s -> %s",
        pair.long, pair.short, summary.source, summary.rows, summary.start, summary.end, out,
        extra={"sha256": summary.sha256, "warmup_rows": warmup_rows},
    )
    return table, summary


def load_processed(pair: C.Pair, home: C.Paths | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The processed table and its metadata; DataError saying how to create it when absent."""
    home = home or C.paths()
    file = home.processed_file(pair)
    if not file.exists():
        raise DataError(f"{file} not found; run `python main.py process --long {pair.long} --short {pair.short}`")
    meta = json.loads(file.with_suffix(".json").read_text())
    return pd.read_parquet(file), meta
