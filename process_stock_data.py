"""Prices in, validated strictly-causal features out.

Sources (`--source` / DATA_SOURCE): `bundled` (real adjusted daily closes 1990-2022 for 20 US
stocks, shipped inside skfolio; offline), `yfinance`, `alpaca` (need a network; fail fast
otherwise) and `csv:PATH`. Features are a pure function of the closes: row t uses rows <= t only.
The label of row t is whether the long leg beats the short leg over the NEXT bar, so the last row
has none.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import constants as C
from atomic_io import atomic_write_bytes, atomic_write_json, sha256_bytes
from data_validation import ValidationReport, validate_prices
from error_handling import (
    ConfigurationError,
    DataError,
    DataSourceUnavailable,
    KeysRejected,
    ValidationError,
)

ONLINE_SOURCES = ("yfinance", "alpaca")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PriceData:
    """Daily bars: `close` (and `volume` when the source has it), index: session date."""

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
        raise ConfigurationError("the bundled data needs skfolio; run ./install.sh core") from exc
    close = load_sp500_dataset()
    close.index = pd.DatetimeIndex(close.index).normalize().rename("date")
    close.columns = [str(c) for c in close.columns]
    return PriceData(close.astype("float64"), "bundled")


def load_csv(path: str | os.PathLike[str]) -> PriceData:
    """A user's CSV: wide (a date column + one close column per ticker) or long OHLCV
    (date, symbol/ticker, close[, open, high, low, volume]). Values are validated later, not
    coerced.
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
    date_col = next(
        (lower[k] for k in ("date", "timestamp", "datetime", "time") if k in lower), None
    )
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
            raise ValidationError(
                "missing_column", f"{file} is long-format but has no close column"
            )
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


# --- Online sources: yfinance and Alpaca ----------------------------------------------------------
_NEW_YORK = "America/New_York"
_OFFLINE_HINT = "use --source bundled (offline, 1990-2022) or --source csv:PATH"
_ENV_ALPACA_API_KEY = "ALPACA_API_KEY"
_ENV_ALPACA_SECRET_KEY = "ALPACA_SECRET_KEY"  # noqa: S105 - a variable name, not a secret
_ENV_ALPACA_DATA_URL = "ALPACA_DATA_URL"  # base URL without /v2; unset: alpaca-py's default
_ENV_ALPACA_DATA_FEED = "ALPACA_DATA_FEED"  # iex (free, the default) or sip
#: yfinance keeps one process-wide session and error setting: one fetch_yfinance at a time.
_YFINANCE_LOCK = threading.Lock()


def _session_day(ts: pd.Timestamp | str) -> pd.Timestamp:
    """`ts` as a tz-naive midnight: its New York date when tz-aware, its own date otherwise."""
    ts = pd.Timestamp(ts)
    if ts.tz is not None:
        ts = ts.tz_convert(_NEW_YORK).tz_localize(None)
    return ts.normalize()


def _unreachable(source: str, what: str, reason: str) -> DataSourceUnavailable:
    return DataSourceUnavailable(
        f"{source}: could not reach {what} (no network?): {reason}; {_OFFLINE_HINT}"
    )


def _network_reason(exc: BaseException, timeout_s: float) -> str:
    """One short line saying why a requests or curl_cffi request failed in transport."""
    if "Timeout" in type(exc).__name__ or isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    text = " ".join(str(exc).split())
    for pattern in (
        r"\[Errno -?\d+\] ([^'\")\]]+)",  # requests: ...[Errno 111] Connection refused'))
        r"curl: \(\d+\) (.+?)(?:\. See https?://.*)?$",  # curl_cffi: curl: (7) Failed to ...
        r"\w+\('([^']+)'\)\)?$",  # requests: ('Connection aborted.', RemoteDisconnected('...'))
    ):
        match = re.search(pattern, text)
        if match:
            return match.group(1).strip()
    return text[:160] or type(exc).__name__


def _bounded_timeout(timeout: Any, deadline: float, timeout_error: type[Exception]) -> Any:
    """`timeout` (seconds, a (connect, read) pair or None) cut to the time left until `deadline`
    (time.monotonic() seconds); raises `timeout_error` when none is left."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise timeout_error("Timeout: the time allowed for this fetch has run out")
    if isinstance(timeout, tuple):
        return tuple(left if t is None else min(t, left) for t in timeout)
    if isinstance(timeout, int | float):
        return min(timeout, left)
    return left


def _online_prices(
    source: str,
    tickers: Sequence[str],
    close: dict[str, pd.Series],
    volume: dict[str, pd.Series],
    first: pd.Timestamp,
    last: pd.Timestamp,
    why: str,
) -> PriceData:
    """PriceData of `tickers` over first..last (session dates) from per-ticker close and volume
    series; DataError naming every ticker without a bar in that range."""

    def window(series: pd.Series) -> pd.Series:
        series = series[~series.index.duplicated(keep="last")].sort_index()
        return series[(series.index >= first) & (series.index <= last)].astype("float64")

    closes = {t: window(close[t]) for t in tickers if t in close}
    missing = [t for t in tickers if t not in closes or closes[t].dropna().empty]
    if missing:
        raise DataError(
            f"{source}: no bars for {', '.join(missing)} between {first.date()} and "
            f"{last.date()}{why}"
        )
    close_frame = pd.concat(closes, axis=1).sort_index()
    volume_frame = pd.concat({t: window(volume[t]) for t in tickers}, axis=1)
    volume_frame = volume_frame.reindex(close_frame.index)
    dates = pd.DatetimeIndex(close_frame.index).as_unit("us").rename("date")
    close_frame.index = volume_frame.index = dates
    return PriceData(close_frame, source, volume_frame)


@functools.cache
def _yahoo_session_class() -> type[Any]:
    """yfinance's default kind of session (curl_cffi with Chrome's TLS fingerprint) whose every
    request ends by `deadline`: yfinance's cookie and crumb requests would wait up to 30 s each."""
    from curl_cffi import requests as curl_requests

    class YahooSession(curl_requests.Session):
        deadline: float | None = None  # time.monotonic() seconds; None: no limit

        def __init__(self, **kwargs: Any) -> None:
            kwargs.setdefault("impersonate", "chrome")
            super().__init__(**kwargs)

        def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> Any:
            if self.deadline is not None:
                kwargs["timeout"] = _bounded_timeout(
                    kwargs.get("timeout"), self.deadline, curl_requests.exceptions.Timeout
                )
            return super().request(method, url, *args, **kwargs)

    return YahooSession


def _yfinance_error(
    exc: Exception, ticker: str, first: pd.Timestamp, last: pd.Timestamp, timeout_s: float
) -> DataError:
    """The project's error for what yfinance raised while fetching `ticker`."""
    from yfinance.exceptions import YFRateLimitError, YFTickerMissingError, YFTzMissingError

    if isinstance(exc, YFRateLimitError):
        return DataSourceUnavailable(
            f"yfinance: Yahoo Finance is rate-limiting this machine (HTTP 429); try again later "
            f"or {_OFFLINE_HINT}"
        )
    if isinstance(exc, YFTzMissingError):
        return DataError(
            f"yfinance: Yahoo Finance does not know {ticker} (no exchange timezone found: "
            "misspelt or delisted?)"
        )
    if isinstance(exc, YFTickerMissingError):
        reason = " ".join(str(exc).split()).removeprefix(f"${ticker.replace('.', '-')}: ")
        return DataError(
            f"yfinance: no bars for {ticker} between {first.date()} and {last.date()} "
            f"(Yahoo: {reason[:160]})"
        )
    # An HTTP error answer; curl_cffi's transport errors carry a response with status 0.
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int) and status >= 100:
        if status == 404:
            return DataError(f"yfinance: Yahoo Finance does not know {ticker} (HTTP 404)")
        if status == 429 or status >= 500:
            return DataSourceUnavailable(
                f"yfinance: Yahoo Finance is unavailable (HTTP {status}); try again later or "
                f"{_OFFLINE_HINT}"
            )
        return DataError(
            f"yfinance: Yahoo Finance refused the request for {ticker} (HTTP {status})"
        )
    if isinstance(exc, json.JSONDecodeError):
        return _unreachable("yfinance", "Yahoo Finance", "the answer is not JSON (a proxy page?)")
    if isinstance(exc, OSError):
        return _unreachable("yfinance", "Yahoo Finance", _network_reason(exc, timeout_s))
    return DataError(f"yfinance: {ticker}: {' '.join(str(exc).split())[:200]}")


def fetch_yfinance(
    tickers: Sequence[str],
    start: pd.Timestamp,
    end: pd.Timestamp,
    *,
    timeout_s: float = C.ONLINE_TIMEOUT_S,
    session: Any = None,
) -> PriceData:
    """Daily split- and dividend-adjusted closes and volume from Yahoo Finance via yfinance.

    Rows are session dates (tz-naive midnight, the exchange's own date), `start`..`end` inclusive.
    DataSourceUnavailable within about `timeout_s` when Yahoo cannot be reached; DataError naming a
    ticker Yahoo does not know or has no bars for. `session` is yfinance's own `session=` option (a
    curl_cffi or requests Session, e.g. with a proxy); the default is yfinance's kind of session,
    bounded by `timeout_s`. A session of another kind must bound its own requests (yfinance's
    cookie requests wait up to 30 s).
    """
    try:
        import yfinance as yf
        from yfinance.exceptions import YFException
    except ImportError as exc:  # pragma: no cover - the live profile installs yfinance
        raise ConfigurationError("--source yfinance needs yfinance; run ./install.sh live") from exc
    first, last = _session_day(start), _session_day(end)
    bounded = _yahoo_session_class()
    http = session if session is not None else bounded()
    close: dict[str, pd.Series] = {}
    volume: dict[str, pd.Series] = {}
    with _YFINANCE_LOCK:
        hide_exceptions = yf.config.debug.hide_exceptions
        # By default yfinance logs an error and returns an empty frame, offline or not: raise.
        yf.config.debug.hide_exceptions = False
        deadline = time.monotonic() + timeout_s
        if isinstance(http, bounded):
            http.deadline = deadline
        try:
            for ticker in tickers:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _unreachable(
                        "yfinance", "Yahoo Finance", f"no answer within {timeout_s:g} s"
                    )
                try:
                    frame = yf.Ticker(ticker.replace(".", "-"), session=http).history(
                        start=first.strftime("%Y-%m-%d"),
                        end=(last + pd.Timedelta(days=1)).strftime("%Y-%m-%d"),  # exclusive
                        interval="1d",
                        auto_adjust=True,
                        actions=False,
                        timeout=left,
                    )
                except (YFException, OSError, json.JSONDecodeError) as exc:
                    raise _yfinance_error(exc, ticker, first, last, timeout_s) from exc
                if frame.empty:
                    continue
                dates = pd.DatetimeIndex(frame.index)
                if dates.tz is not None:  # midnight in the exchange's timezone: keep its date
                    dates = dates.tz_localize(None)
                dates = dates.normalize()
                close[ticker] = pd.Series(frame["Close"].to_numpy("float64"), index=dates)
                volume[ticker] = pd.Series(frame["Volume"].to_numpy("float64"), index=dates)
        finally:
            yf.config.debug.hide_exceptions = hide_exceptions
            if isinstance(http, bounded):
                http.deadline = None  # yfinance keeps this session for its later calls
    return _online_prices("yfinance", tickers, close, volume, first, last, "")


@functools.cache
def _alpaca_session_class() -> type[Any]:
    """A requests session whose every request has a timeout and ends by `deadline`: alpaca-py
    passes no timeout (a stalled server blocks forever) and sleeps 3 s before retrying HTTP
    429/504; when that sleep would pass the deadline, this raises RetryError at once instead."""
    import requests
    from alpaca.common.constants import DEFAULT_RETRY_EXCEPTION_CODES, DEFAULT_RETRY_WAIT_SECONDS

    class AlpacaSession(requests.Session):
        deadline: float | None = None  # time.monotonic() seconds; None: no limit

        def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> Any:
            if self.deadline is None:
                return super().request(method, url, *args, **kwargs)
            kwargs["timeout"] = _bounded_timeout(
                kwargs.get("timeout"), self.deadline, requests.exceptions.Timeout
            )
            response = super().request(method, url, *args, **kwargs)
            if (
                response.status_code in DEFAULT_RETRY_EXCEPTION_CODES
                and time.monotonic() + DEFAULT_RETRY_WAIT_SECONDS >= self.deadline
            ):
                raise requests.exceptions.RetryError(
                    f"HTTP {response.status_code} and no time left to retry", response=response
                )
            return response

    return AlpacaSession


def alpaca_error_message(body: str) -> str:
    """The `message` of an Alpaca error body, else its text: APIError.message raises when the body
    is not JSON (an HTML page from a proxy)."""
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if isinstance(payload, dict) and payload.get("message"):
        return " ".join(str(payload["message"]).split())[:160]
    return " ".join(re.sub(r"<[^>]*>", " ", body).split())[:120]


def _alpaca_http_error(
    status: int | None, body: str, symbols: Sequence[str], feed: str
) -> ConfigurationError | DataError:
    """The project's error for an HTTP error answer from Alpaca."""
    detail = alpaca_error_message(body)
    label = f"HTTP {status}: {detail}" if detail else f"HTTP {status}"
    if status in (401, 403):
        plan = (
            f"; or your plan lacks the '{feed}' feed ({_ENV_ALPACA_DATA_FEED}; iex is free)"
            if status == 403
            else ""
        )
        return KeysRejected(
            f"alpaca: Alpaca rejected the API keys ({label}); check {_ENV_ALPACA_API_KEY} and "
            f"{_ENV_ALPACA_SECRET_KEY} in .env{plan}"
        )
    if status is None or status == 429 or status >= 500:
        return DataSourceUnavailable(
            f"alpaca: Alpaca market data is unavailable ({label}); try again later or "
            f"{_OFFLINE_HINT}"
        )
    return DataError(f"alpaca: Alpaca refused the bars request for {', '.join(symbols)} ({label})")


def fetch_alpaca(
    tickers: Sequence[str],
    start: pd.Timestamp,
    end: pd.Timestamp,
    *,
    timeout_s: float = C.ONLINE_TIMEOUT_S,
    api_key: str | None = None,
    secret_key: str | None = None,
    base_url: str | None = None,
    feed: str | None = None,
) -> PriceData:
    """Daily split- and dividend-adjusted bars from Alpaca's market data API via alpaca-py.

    Rows are New York session dates (tz-naive midnight), `start`..`end` inclusive. The keys, base
    URL and feed default to ALPACA_API_KEY, ALPACA_SECRET_KEY, ALPACA_DATA_URL (unset: alpaca-py's
    default) and ALPACA_DATA_FEED (unset: iex, the free feed). Within about `timeout_s`:
    DataSourceUnavailable when Alpaca cannot be reached or answers 429/5xx; ConfigurationError for
    missing or rejected keys; DataError naming a symbol without bars.
    """
    try:
        import requests
        from alpaca.common.enums import BaseURL
        from alpaca.common.exceptions import APIError
        from alpaca.data.enums import Adjustment, DataFeed
        from alpaca.data.historical import StockHistoricalDataClient
        from alpaca.data.requests import StockBarsRequest
        from alpaca.data.timeframe import TimeFrame
    except ImportError as exc:  # pragma: no cover - the live profile installs alpaca-py
        raise ConfigurationError("--source alpaca needs alpaca-py; run ./install.sh live") from exc
    from credential_manager import lookup

    # The environment wins; else the encrypted store (when TRADING_MASTER_PASSWORD is set).
    api_key = api_key or lookup(_ENV_ALPACA_API_KEY)
    secret_key = secret_key or lookup(_ENV_ALPACA_SECRET_KEY)
    if not api_key or not secret_key:
        raise ConfigurationError(
            f"--source alpaca needs {_ENV_ALPACA_API_KEY} and {_ENV_ALPACA_SECRET_KEY}: store "
            "them with `python main.py credentials set NAME` (encrypted) or set them in .env or "
            "the environment (paper keys from app.alpaca.markets)"
        )
    base_url = (base_url or os.environ.get(_ENV_ALPACA_DATA_URL) or "").strip().rstrip("/")
    base_url = base_url.removesuffix("/v2") or None  # alpaca-py appends /v2 itself
    feed_name = (feed or os.environ.get(_ENV_ALPACA_DATA_FEED) or "iex").strip().lower()
    try:
        data_feed = DataFeed(feed_name)
    except ValueError:
        raise ConfigurationError(
            f"unknown Alpaca data feed {feed_name!r} ({_ENV_ALPACA_DATA_FEED}); choose one of "
            f"{', '.join(f.value for f in DataFeed)}"
        ) from None
    first, last = _session_day(start), _session_day(end)
    symbols = {t.upper(): t for t in tickers}
    where = base_url or BaseURL.DATA.value
    request = StockBarsRequest(
        symbol_or_symbols=list(symbols),
        timeframe=TimeFrame.Day,
        start=first.tz_localize(_NEW_YORK).to_pydatetime(),
        end=(last + pd.Timedelta(days=1, seconds=-1)).tz_localize(_NEW_YORK).to_pydatetime(),
        adjustment=Adjustment.ALL,
        feed=data_feed,
    )
    client = StockHistoricalDataClient(api_key, secret_key, url_override=base_url)
    http = _alpaca_session_class()()
    http.deadline = time.monotonic() + timeout_s
    client._session = http  # RESTClient._one_request sends every request through this attribute
    try:
        barset = client.get_stock_bars(request)
    except APIError as exc:
        raise _alpaca_http_error(exc.status_code, str(exc), list(symbols), feed_name) from exc
    except requests.exceptions.RetryError as exc:  # AlpacaSession gave up on a 429/504
        response = exc.response
        raise _alpaca_http_error(
            getattr(response, "status_code", None),
            getattr(response, "text", ""),
            list(symbols),
            feed_name,
        ) from exc
    except requests.exceptions.RequestException as exc:
        reason = _network_reason(exc, timeout_s)
        raise _unreachable("alpaca", f"Alpaca market data at {where}", reason) from exc
    except ValueError as exc:  # a 200 answer that is not a bars page: a wrong ALPACA_DATA_URL?
        detail = " ".join(str(exc).split())[:160]
        raise DataError(f"alpaca: unexpected answer from {where}: {detail}") from exc
    finally:
        http.close()
    close: dict[str, pd.Series] = {}
    volume: dict[str, pd.Series] = {}
    for symbol, ticker in symbols.items():
        bars = barset.data.get(symbol) or []  # type: ignore[union-attr]  # not raw_data
        if not bars:
            continue
        stamps = pd.DatetimeIndex([bar.timestamp for bar in bars])
        if stamps.tz is None:
            stamps = stamps.tz_localize("UTC")
        # A daily bar is stamped at midnight New York (04:00 or 05:00 UTC): take the New York date.
        dates = stamps.tz_convert(_NEW_YORK).normalize().tz_localize(None)
        close[ticker] = pd.Series([bar.close for bar in bars], index=dates, dtype="float64")
        volume[ticker] = pd.Series([bar.volume for bar in bars], index=dates, dtype="float64")
    why = f" on the '{feed_name}' feed (unknown symbol, or no session in that range)"
    return _online_prices("alpaca", tickers, close, volume, first, last, why)


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
    """Online prices with an incremental cache: only bars from the last cached ones on are fetched.

    The cache (data/prices_<source>.parquet) holds close and volume in long form per ticker. An
    update re-fetches the last two cached bars: the last may have been a partial (intraday) bar and
    is replaced; the one before must come back unchanged, else the source has re-adjusted its
    history (a split or dividend since) and the ticker is fetched again in full, so old and new
    bars never mix adjustment bases. A ticker not cached yet, or cached from a later start, is
    fetched in full.
    """
    fetchers: dict[str, Callable[..., PriceData]] = {
        "yfinance": fetch_yfinance,
        "alpaca": fetch_alpaca,
    }
    fetch = fetchers[source]
    file = _price_cache_file(home, source)
    cached = pd.read_parquet(file) if file.exists() else _empty_cache()
    frames = [cached]
    refetched: set[str] = set()
    for ticker in tickers:
        have = cached[cached["symbol"] == ticker].sort_values("date")
        if len(have) and have["date"].iloc[0] <= start:
            if end < have["date"].iloc[-1]:
                continue  # every requested bar is cached and final
            anchor = have.iloc[-2] if len(have) >= 2 else have.iloc[-1]
            fresh = fetch([ticker], anchor["date"], end)
            fresh_close = fresh.close[ticker]
            if anchor["date"] in fresh_close.index and np.isclose(
                fresh_close[anchor["date"]], anchor["close"], rtol=1e-6, atol=0.0
            ):
                frames.append(_to_cache_rows(fresh, ticker))
                continue
            log.warning(
                "%s: %s changed its %s close since it was cached (re-adjusted history); "
                "re-fetching from %s",
                ticker,
                source,
                anchor["date"].date(),
                have["date"].iloc[0].date(),
            )
            start_full = have["date"].iloc[0]
        else:
            start_full = start
        refetched.add(ticker)
        frames.append(_to_cache_rows(fetch([ticker], start_full, end), ticker))
    if refetched:
        frames[0] = cached[~cached["symbol"].isin(refetched)]
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
    """Prices of `tickers` from `source` (bundled, yfinance, alpaca or csv:PATH), start..end."""
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


def hedge_ratio(
    log_long: pd.Series, log_short: pd.Series, bars: int = C.HEDGE_RATIO_BARS
) -> pd.Series:
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
    cols[f"corr_60d_{pair}"] = corr_valid.where(
        legs[long]["ret_1d"].rolling(C.CORRELATION_BARS).count() >= C.CORRELATION_BARS
    )
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


def _warmup(features: pd.DataFrame, source: str = "the source") -> tuple[int, str]:
    """Leading rows with any NaN feature, and which features need that many."""
    valid = features.notna().all(axis=1).to_numpy()
    if not valid.any():
        raise DataError(
            f"{source}: only {len(features)} bars: not enough history for the features "
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
    today: pd.Timestamp | None = None,
    write: bool = True,
) -> tuple[pd.DataFrame, ProcessSummary]:
    """Load, validate, compute features and label, drop warm-up rows, write the processed file.

    Writes data/processed_<LONG>_<SHORT>.parquet and its .json metadata atomically, only after
    every rule passed; `write=False` leaves that to `write_processed` (a caller that may still
    refuse, such as `live` on stale data, writes nothing). `today` (default: the clock's New York
    date) is the last date a bar may have.
    """
    home = (home or C.paths()).ensure()
    today = today if today is not None else pd.Timestamp.now(tz=_NEW_YORK).tz_localize(None)
    prices = load_prices(source, pair.tickers, start=start, end=end, home=home)
    report: ValidationReport = validate_prices(
        prices.close, pair.tickers, today=today.normalize(), source=prices.source
    )
    close = prices.close.astype("float64")
    volume = prices.volume.astype("float64") if prices.volume is not None else None
    features = compute_features(close, pair.long, pair.short, volume)
    warmup_rows, reason = _warmup(features, source)
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
    if write:
        _write_blob(blob, summary)
    return table, summary


def write_processed(table: pd.DataFrame, summary: ProcessSummary) -> None:
    """Write what `process(write=False)` returned: the table to `summary.path` and its .json
    metadata, atomically (the same bytes `process` would have written)."""
    buf = io.BytesIO()
    table.to_parquet(buf)
    _write_blob(buf.getvalue(), summary)


def _write_blob(blob: bytes, summary: ProcessSummary) -> None:
    out = Path(summary.path)
    summary = replace(summary, sha256=sha256_bytes(blob))
    atomic_write_bytes(out, blob)
    atomic_write_json(out.with_suffix(".json"), asdict(summary))
    log.info(
        "processed %s/%s from %s: %d rows %s..%s -> %s",
        summary.long,
        summary.short,
        summary.source,
        summary.rows,
        summary.start,
        summary.end,
        out,
        extra={"sha256": summary.sha256, "warmup_rows": summary.warmup_rows},
    )


def load_processed(
    pair: C.Pair, home: C.Paths | None = None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The processed table and its metadata; DataError saying how to create it when absent."""
    home = home or C.paths()
    file = home.processed_file(pair)
    if not file.exists():
        raise DataError(
            f"{file} not found; run "
            f"`python main.py process --long {pair.long} --short {pair.short}`"
        )
    meta = json.loads(file.with_suffix(".json").read_text())
    return pd.read_parquet(file), meta
