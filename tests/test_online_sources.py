"""Online sources against real servers on 127.0.0.1: yfinance and alpaca-py parse what a local
server answers in Yahoo's and Alpaca's own formats. Nothing here reaches the internet."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pytest

yf = pytest.importorskip("yfinance")
pytest.importorskip("alpaca")
pytest.importorskip("pytest_httpserver")

from pytest_httpserver import HTTPServer  # noqa: E402 - after the skips: the live profile's deps
from werkzeug import Request, Response  # noqa: E402

import constants as C  # noqa: E402
import process_stock_data as psd  # noqa: E402
from error_handling import ConfigurationError, DataError, DataSourceUnavailable  # noqa: E402

# alpaca-py's import of its live-stream module warns about websockets' legacy API; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning")

NY = "America/New_York"
ANY_PATH = re.compile(".*")
KEY_ID, SECRET = "PKTEST1234567890", "local-test-secret-0123456789"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch) -> None:
    """No proxy between us and 127.0.0.1, and no Alpaca settings from the developer's shell."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    for var in ("ALPACA_API_KEY", "ALPACA_SECRET_KEY", "ALPACA_DATA_URL", "ALPACA_DATA_FEED"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session", autouse=True)
def _yfinance_cache_in_tmp(tmp_path_factory) -> None:
    """yfinance's timezone and cookie caches live in a temporary folder, not in ~/.cache."""
    yf.set_tz_cache_location(str(tmp_path_factory.mktemp("yfinance-cache")))


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def dropping_server() -> Iterator[str]:
    """A server on 127.0.0.1 that accepts each connection and closes it without an answer."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    thread.join()
    sock.close()


@pytest.fixture
def stalling_server() -> Iterator[str]:
    """A server on 127.0.0.1 that answers each request only after 2 s (released when the test
    ends); its own, so that a late answer never lands in the log of the shared one."""
    release = threading.Event()

    def stall(request: Request) -> Response:
        release.wait(2.0)
        return Response("{}", content_type="application/json")

    server = HTTPServer(host="127.0.0.1", port=0)
    server.expect_request(ANY_PATH).respond_with_handler(stall)
    server.start()
    yield server.url_for("").rstrip("/")
    release.set()
    server.stop()


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


# --- yfinance -------------------------------------------------------------------------------------
# AAPL, first sessions of 2024, as Yahoo's chart API returns them: bars stamped at the 09:30
# New York open, traded closes in `close`, split- and dividend-adjusted ones in `adjclose`.
YAHOO_DAYS = ["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05", "2024-01-08"]
YAHOO_OPEN = [187.15, 184.22, 182.15, 181.99, 182.09]
YAHOO_HIGH = [188.44, 185.88, 183.09, 182.76, 185.60]
YAHOO_LOW = [183.89, 183.43, 180.88, 180.17, 181.50]
YAHOO_CLOSE = [185.64, 184.25, 181.91, 181.18, 185.56]
YAHOO_ADJCLOSE = [184.73, 183.35, 181.02, 180.29, 184.65]
YAHOO_VOLUME = [82488700, 58414500, 71983600, 62303300, 59144500]
YAHOO_OPEN_TS = [int(pd.Timestamp(f"{d} 09:30", tz=NY).timestamp()) for d in YAHOO_DAYS]


def _yahoo_chart(symbol: str, rows: list[int]) -> dict:
    """Yahoo's /v8/finance/chart answer holding the given rows of the AAPL bars above."""
    pick = lambda values: [values[i] for i in rows]  # noqa: E731
    meta = {
        "currency": "USD",
        "symbol": symbol,
        "exchangeName": "NMS",
        "fullExchangeName": "NasdaqGS",
        "instrumentType": "EQUITY",
        "firstTradeDate": 345479400,
        "regularMarketTime": 1704747601,
        "hasPrePostMarketData": True,
        "gmtoffset": -18000,
        "timezone": "EST",
        "exchangeTimezoneName": NY,
        "regularMarketPrice": 185.56,
        "chartPreviousClose": 192.53,
        "priceHint": 2,
        "currentTradingPeriod": {
            name: {"timezone": "EST", "start": start, "end": end, "gmtoffset": -18000}
            for name, start, end in (
                ("pre", 1704704400, 1704724200),
                ("regular", 1704724200, 1704747600),
                ("post", 1704747600, 1704762000),
            )
        },
        "dataGranularity": "1d",
        "range": "",
        "validRanges": ["1d", "5d", "1mo", "3mo", "6mo", "1y", "2y", "5y", "10y", "ytd", "max"],
    }
    quote = {
        "open": pick(YAHOO_OPEN),
        "high": pick(YAHOO_HIGH),
        "low": pick(YAHOO_LOW),
        "close": pick(YAHOO_CLOSE),
        "volume": pick(YAHOO_VOLUME),
    }
    result = {
        "meta": meta,
        "timestamp": pick(YAHOO_OPEN_TS),
        "indicators": {"quote": [quote], "adjclose": [{"adjclose": pick(YAHOO_ADJCLOSE)}]},
    }
    return {"chart": {"result": [result], "error": None}}


def _json(body: dict, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")


def yahoo(request: Request) -> Response:
    """Yahoo Finance as yfinance meets it: the cookie page (fc.yahoo.com), the crumb, the chart of
    AAPL (bars with period1 <= open < period2, or the last one for range=1d) and 404 otherwise."""
    if request.path == "/":
        return Response("", status=200)
    if request.path == "/v1/test/getcrumb":
        return Response("LocalCrumb1", content_type="text/plain")
    if request.path == "/v8/finance/chart/AAPL":
        if "period1" in request.args:
            lo, hi = int(request.args["period1"]), int(request.args["period2"])
            rows = [i for i, ts in enumerate(YAHOO_OPEN_TS) if lo <= ts < hi]
        else:
            rows = [len(YAHOO_OPEN_TS) - 1]
        return _json(_yahoo_chart("AAPL", rows))
    if request.path.startswith("/v8/finance/chart/"):
        error = {"code": "Not Found", "description": "No data found, symbol may be delisted"}
        return _json({"chart": {"result": None, "error": error}}, status=404)
    error = {"code": "Not Found", "description": "Quote not found for symbol"}
    return _json({"finance": {"result": None, "error": error}}, status=404)


class LocalYahoo(psd._yahoo_session_class()):  # type: ignore[misc]
    """The adapter's own session kind, with every *.yahoo.com URL sent to a local server instead."""

    def __init__(self, base_url: str) -> None:
        super().__init__()
        self.base_url = base_url.rstrip("/")

    def request(self, method, url, *args, **kwargs):
        parts = urlsplit(url)
        assert (parts.hostname or "").endswith("yahoo.com"), f"yfinance asked for {url}"
        local = self.base_url + parts.path + (f"?{parts.query}" if parts.query else "")
        return super().request(method, local, *args, **kwargs)


def test_yfinance_gives_adjusted_closes_and_volume_on_session_dates(httpserver_ipv4):
    httpserver_ipv4.expect_request(ANY_PATH).respond_with_handler(yahoo)
    session = LocalYahoo(httpserver_ipv4.url_for("/"))

    data = psd.fetch_yfinance(
        ["AAPL"], pd.Timestamp("2024-01-02"), pd.Timestamp("2024-01-08"), session=session
    )

    assert data.source == "yfinance"
    expected_dates = pd.DatetimeIndex(YAHOO_DAYS, name="date")
    assert data.close.index.equals(expected_dates) and data.close.index.tz is None
    assert list(data.close.columns) == ["AAPL"] and data.close["AAPL"].dtype == "float64"
    np.testing.assert_allclose(data.close["AAPL"], YAHOO_ADJCLOSE)  # adjusted, not traded
    assert data.volume is not None and data.volume.index.equals(expected_dates)
    np.testing.assert_array_equal(data.volume["AAPL"], YAHOO_VOLUME)


def test_yfinance_asks_yahoo_for_new_york_midnights_with_end_inclusive(httpserver_ipv4):
    httpserver_ipv4.expect_request(ANY_PATH).respond_with_handler(yahoo)
    session = LocalYahoo(httpserver_ipv4.url_for("/"))

    data = psd.fetch_yfinance(
        ["AAPL"], pd.Timestamp("2024-01-03"), pd.Timestamp("2024-01-05"), session=session
    )

    charts = [r.args for r, _ in httpserver_ipv4.log if "period1" in r.args]
    assert len(charts) == 1
    assert int(charts[0]["period1"]) == pd.Timestamp("2024-01-03", tz=NY).timestamp()
    assert int(charts[0]["period2"]) == pd.Timestamp("2024-01-06", tz=NY).timestamp()
    assert charts[0]["interval"] == "1d"
    assert list(data.close.index.strftime("%Y-%m-%d")) == ["2024-01-03", "2024-01-04", "2024-01-05"]


def test_yfinance_unknown_ticker_is_a_data_error_naming_it(httpserver_ipv4):
    httpserver_ipv4.expect_request(ANY_PATH).respond_with_handler(yahoo)
    session = LocalYahoo(httpserver_ipv4.url_for("/"))

    with pytest.raises(DataError) as info:
        psd.fetch_yfinance(
            ["ZZZZQ"], pd.Timestamp("2024-01-02"), pd.Timestamp("2024-01-08"), session=session
        )

    assert not isinstance(info.value, DataSourceUnavailable)
    assert "ZZZZQ" in _one_line(info.value)


def test_yfinance_offline_fails_fast_and_points_to_offline_sources(closed_port):
    session = LocalYahoo(f"http://127.0.0.1:{closed_port}")

    started = time.monotonic()
    with pytest.raises(DataSourceUnavailable) as info:
        psd.fetch_yfinance(
            ["MSFT"], pd.Timestamp("2024-02-01"), pd.Timestamp("2024-02-09"), session=session
        )
    elapsed = time.monotonic() - started

    assert elapsed < C.ONLINE_TIMEOUT_S
    message = _one_line(info.value)
    assert message.startswith("yfinance: could not reach Yahoo Finance (no network?): ")
    assert "--source bundled" in message and "--source csv:PATH" in message


def test_yfinance_stalled_server_fails_within_timeout(stalling_server):
    session = LocalYahoo(stalling_server)

    started = time.monotonic()
    with pytest.raises(DataSourceUnavailable, match=r"no answer within 0\.5 s"):
        psd.fetch_yfinance(
            ["JPM"],
            pd.Timestamp("2024-03-01"),
            pd.Timestamp("2024-03-08"),
            timeout_s=0.5,
            session=session,
        )
    assert time.monotonic() - started < 1.5


# --- Alpaca ---------------------------------------------------------------------------------------
def _bar(day: str, utc_hour: int, close: float, volume: int) -> dict:
    """One daily bar as Alpaca's /v2/stocks/bars returns it: stamped at midnight New York."""
    return {
        "t": f"{day}T{utc_hour:02d}:00:00Z",
        "o": round(close * 1.004, 2),
        "h": round(close * 1.01, 2),
        "l": round(close * 0.99, 2),
        "c": close,
        "v": volume,
        "n": volume // 80,
        "vw": round(close * 1.001, 4),
    }


# January (EST: midnight New York is 05:00 UTC) and around the March switch to EDT (04:00 UTC).
ALPACA_BARS = {
    "AAPL": [
        _bar("2024-01-02", 5, 184.73, 82488674),
        _bar("2024-01-03", 5, 183.35, 58418916),
        _bar("2024-01-04", 5, 181.02, 71992243),
        _bar("2024-01-05", 5, 180.29, 62371161),
        _bar("2024-01-08", 5, 184.65, 59144470),
        _bar("2024-01-09", 5, 184.23, 42841809),
        _bar("2024-01-10", 5, 185.27, 46792908),
        _bar("2024-03-08", 5, 170.16, 76267041),
        _bar("2024-03-11", 4, 171.37, 60139473),
        _bar("2024-03-12", 4, 172.25, 59825372),
    ],
    "MSFT": [
        _bar("2024-01-02", 5, 367.87, 25258600),
        _bar("2024-01-03", 5, 367.49, 23083500),
        _bar("2024-01-04", 5, 364.96, 20901500),
    ],
}


def alpaca(page_size: int | None = None) -> Callable[[Request], Response]:
    """Alpaca's /v2/stocks/bars: the bars of the requested symbols with start <= t <= end, in
    pages of `page_size` bars linked by next_page_token."""

    def handler(request: Request) -> Response:
        if request.path != "/v2/stocks/bars":
            return _json({"code": 40410000, "message": "endpoint not found"}, status=404)
        start, end = pd.Timestamp(request.args["start"]), pd.Timestamp(request.args["end"])
        rows = [
            (symbol, bar)
            for symbol in request.args["symbols"].split(",")
            for bar in ALPACA_BARS.get(symbol, [])
            if start <= pd.Timestamp(bar["t"]) <= end
        ]
        offset = int(request.args.get("page_token", "page-0").removeprefix("page-"))
        page = rows[offset : offset + page_size] if page_size else rows[offset:]
        bars: dict[str, list[dict]] = {}
        for symbol, bar in page:
            bars.setdefault(symbol, []).append(bar)
        after = offset + len(page)
        token = f"page-{after}" if after < len(rows) else None
        return _json({"bars": bars, "next_page_token": token})

    return handler


def _fetch_alpaca(base_url: str, tickers=("AAPL",), start="2024-01-02", end="2024-01-05", **kw):
    return psd.fetch_alpaca(
        list(tickers),
        pd.Timestamp(start),
        pd.Timestamp(end),
        api_key=KEY_ID,
        secret_key=SECRET,
        base_url=base_url,
        **kw,
    )


def test_alpaca_asks_for_adjusted_daily_bars_of_all_symbols_with_the_keys(httpserver_ipv4):
    httpserver_ipv4.expect_request(ANY_PATH).respond_with_handler(alpaca())

    _fetch_alpaca(httpserver_ipv4.url_for(""), tickers=("AAPL", "MSFT"))

    (request, _response), *more = httpserver_ipv4.log
    assert not more
    assert request.path == "/v2/stocks/bars"
    assert request.args["symbols"] == "AAPL,MSFT"
    assert request.args["timeframe"] == "1Day"
    assert request.args["adjustment"] == "all"
    assert request.args["feed"] == "iex"
    assert request.args["start"] == "2024-01-02T05:00:00+00:00"  # midnight New York
    assert request.args["end"] == "2024-01-06T04:59:59+00:00"  # end day included
    assert request.headers["APCA-API-KEY-ID"] == KEY_ID
    assert request.headers["APCA-API-SECRET-KEY"] == SECRET


def test_alpaca_keys_come_from_the_encrypted_store_when_not_in_the_environment(
    httpserver_ipv4, tmp_path, monkeypatch
):
    import credential_manager as cm
    from constants import paths

    password = "correct horse battery staple"
    store = cm.CredentialStore.open(paths(tmp_path).credentials_file, password, create=True)
    store.set("ALPACA_API_KEY", KEY_ID)
    store.set("ALPACA_SECRET_KEY", SECRET)
    monkeypatch.setenv("TRADING_HOME", str(tmp_path))
    monkeypatch.setenv("TRADING_MASTER_PASSWORD", password)
    httpserver_ipv4.expect_request(ANY_PATH).respond_with_handler(alpaca())

    psd.fetch_alpaca(
        ["AAPL"],
        pd.Timestamp("2024-01-02"),
        pd.Timestamp("2024-01-05"),
        base_url=httpserver_ipv4.url_for(""),
    )

    (request, _response), *_ = httpserver_ipv4.log
    assert request.headers["APCA-API-KEY-ID"] == KEY_ID
    assert request.headers["APCA-API-SECRET-KEY"] == SECRET


def test_alpaca_bars_become_new_york_session_dates(httpserver_ipv4):
    httpserver_ipv4.expect_request(ANY_PATH).respond_with_handler(alpaca())

    data = _fetch_alpaca(httpserver_ipv4.url_for(""), start="2024-03-08", end="2024-03-12")

    assert data.source == "alpaca"
    dates = pd.DatetimeIndex(["2024-03-08", "2024-03-11", "2024-03-12"], name="date")
    assert data.close.index.equals(dates) and data.close.index.tz is None
    assert data.close["AAPL"].tolist() == [170.16, 171.37, 172.25]
    assert data.close["AAPL"].dtype == "float64"
    assert data.volume is not None and data.volume.index.equals(dates)
    assert data.volume["AAPL"].tolist() == [76267041.0, 60139473.0, 59825372.0]


def test_alpaca_follows_next_page_token_across_pages(httpserver_ipv4):
    httpserver_ipv4.expect_request(ANY_PATH).respond_with_handler(alpaca(page_size=2))

    data = _fetch_alpaca(httpserver_ipv4.url_for(""), start="2024-01-02", end="2024-01-08")

    tokens = [r.args.get("page_token") for r, _ in httpserver_ipv4.log]
    assert tokens == [None, "page-2", "page-4"]
    assert data.close.index.strftime("%Y-%m-%d").tolist() == YAHOO_DAYS
    assert data.close["AAPL"].tolist() == [184.73, 183.35, 181.02, 180.29, 184.65]


def test_alpaca_symbol_without_bars_is_a_data_error_naming_it(httpserver_ipv4):
    httpserver_ipv4.expect_request(ANY_PATH).respond_with_handler(alpaca())

    with pytest.raises(DataError) as info:
        _fetch_alpaca(httpserver_ipv4.url_for(""), tickers=("AAPL", "ZZZZQ"))

    assert not isinstance(info.value, DataSourceUnavailable)
    message = _one_line(info.value)
    assert "no bars for ZZZZQ between 2024-01-02 and 2024-01-05" in message
    assert "AAPL" not in message


def test_alpaca_rejected_keys_are_a_configuration_error(httpserver_ipv4):
    body = {"code": 40110000, "message": "request is not authorized"}
    httpserver_ipv4.expect_request(ANY_PATH).respond_with_json(body, status=401)

    with pytest.raises(ConfigurationError) as info:
        _fetch_alpaca(httpserver_ipv4.url_for(""))

    message = _one_line(info.value)
    assert "Alpaca rejected the API keys (HTTP 401: request is not authorized)" in message
    assert "ALPACA_API_KEY" in message and "ALPACA_SECRET_KEY" in message
    assert SECRET not in message


def test_alpaca_html_error_page_is_reported_without_parsing_it_as_json(httpserver_ipv4):
    page = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
    httpserver_ipv4.expect_request(ANY_PATH).respond_with_data(
        page, status=502, content_type="text/html"
    )

    with pytest.raises(DataSourceUnavailable) as info:
        _fetch_alpaca(httpserver_ipv4.url_for(""))

    message = _one_line(info.value)
    assert "HTTP 502: 502 Bad Gateway nginx" in message and "--source bundled" in message


def test_alpaca_other_refusal_is_a_data_error_with_alpacas_message(httpserver_ipv4):
    body = {"code": 42210000, "message": "invalid symbol: BRK B"}
    httpserver_ipv4.expect_request(ANY_PATH).respond_with_json(body, status=422)

    with pytest.raises(DataError) as info:
        _fetch_alpaca(httpserver_ipv4.url_for(""))

    assert not isinstance(info.value, DataSourceUnavailable)
    assert "(HTTP 422: invalid symbol: BRK B)" in _one_line(info.value)


def test_alpaca_answer_without_bars_is_a_data_error_naming_the_url(httpserver_ipv4):
    # e.g. ALPACA_DATA_URL pointing at the trading API instead of market data
    httpserver_ipv4.expect_request(ANY_PATH).respond_with_json({"status": "ACTIVE"})
    url = httpserver_ipv4.url_for("").rstrip("/")

    with pytest.raises(DataError) as info:
        _fetch_alpaca(url)

    assert not isinstance(info.value, DataSourceUnavailable)
    assert _one_line(info.value).startswith(f"alpaca: unexpected answer from {url}: ")


def test_alpaca_rate_limit_gives_up_within_timeout_instead_of_sleeping_through_retries(
    httpserver_ipv4,
):
    body = {"code": 42910000, "message": "too many requests"}
    httpserver_ipv4.expect_request(ANY_PATH).respond_with_json(body, status=429)

    started = time.monotonic()
    with pytest.raises(DataSourceUnavailable, match="HTTP 429: too many requests"):
        _fetch_alpaca(httpserver_ipv4.url_for(""), timeout_s=1.0)
    assert time.monotonic() - started < 1.5  # alpaca-py alone would retry 3 times 3 s apart


def test_alpaca_stalled_server_fails_within_timeout(stalling_server):
    started = time.monotonic()
    with pytest.raises(DataSourceUnavailable, match=r"no answer within 0\.5 s"):
        _fetch_alpaca(stalling_server, timeout_s=0.5)
    assert time.monotonic() - started < 1.5


def test_alpaca_closed_port_fails_fast_and_points_to_offline_sources(closed_port):
    url = f"http://127.0.0.1:{closed_port}"

    started = time.monotonic()
    with pytest.raises(DataSourceUnavailable) as info:
        _fetch_alpaca(url)
    elapsed = time.monotonic() - started

    assert elapsed < C.ONLINE_TIMEOUT_S
    message = _one_line(info.value)
    assert message.startswith(f"alpaca: could not reach Alpaca market data at {url} (no network?)")
    assert "Connection refused" in message
    assert "--source bundled" in message and "--source csv:PATH" in message


def test_alpaca_dropped_connection_is_unavailable_not_a_crash(dropping_server):
    with pytest.raises(DataSourceUnavailable, match="could not reach Alpaca market data"):
        _fetch_alpaca(dropping_server)


def test_alpaca_missing_keys_name_both_variables_and_dotenv(httpserver_ipv4, monkeypatch):
    monkeypatch.setenv("ALPACA_API_KEY", KEY_ID)  # the secret is missing

    with pytest.raises(ConfigurationError) as info:
        psd.fetch_alpaca(
            ["AAPL"],
            pd.Timestamp("2024-01-02"),
            pd.Timestamp("2024-01-05"),
            base_url=httpserver_ipv4.url_for(""),
        )

    message = _one_line(info.value)
    assert "ALPACA_API_KEY" in message and "ALPACA_SECRET_KEY" in message and ".env" in message
    assert "credentials set" in message  # the encrypted store is offered too
    assert httpserver_ipv4.log == []  # refused before any request


def test_alpaca_reads_keys_url_and_feed_from_the_environment(httpserver_ipv4, monkeypatch):
    httpserver_ipv4.expect_request(ANY_PATH).respond_with_handler(alpaca())
    monkeypatch.setenv("ALPACA_API_KEY", KEY_ID)
    monkeypatch.setenv("ALPACA_SECRET_KEY", SECRET)
    monkeypatch.setenv("ALPACA_DATA_URL", httpserver_ipv4.url_for("/v2/"))  # /v2 is tolerated
    monkeypatch.setenv("ALPACA_DATA_FEED", "sip")

    data = psd.fetch_alpaca(["MSFT"], pd.Timestamp("2024-01-02"), pd.Timestamp("2024-01-04"))

    ((request, _response),) = httpserver_ipv4.log
    assert request.path == "/v2/stocks/bars" and request.args["feed"] == "sip"
    assert request.headers["APCA-API-SECRET-KEY"] == SECRET
    assert data.close["MSFT"].tolist() == [367.87, 367.49, 364.96]


# --- The incremental cache, end to end through alpaca ---------------------------------------------
@pytest.fixture
def alpaca_env(httpserver_ipv4, monkeypatch):
    httpserver_ipv4.expect_request(ANY_PATH).respond_with_handler(alpaca())
    monkeypatch.setenv("ALPACA_API_KEY", KEY_ID)
    monkeypatch.setenv("ALPACA_SECRET_KEY", SECRET)
    monkeypatch.setenv("ALPACA_DATA_URL", httpserver_ipv4.url_for(""))
    return httpserver_ipv4


def _starts_seen(server) -> list[str]:
    return [request.args["start"] for request, _ in server.log]


def test_cache_fetches_only_bars_after_the_cached_ones(alpaca_env, tmp_path):
    home = C.paths(tmp_path)

    first = psd.load_online_cached(
        "alpaca", ["AAPL"], pd.Timestamp("2024-01-02"), pd.Timestamp("2024-01-05"), home=home
    )
    assert _starts_seen(alpaca_env) == ["2024-01-02T05:00:00+00:00"]
    assert (tmp_path / "data" / "prices_alpaca.parquet").exists()
    assert first.close.index.strftime("%Y-%m-%d").tolist() == YAHOO_DAYS[:4]

    alpaca_env.clear_log()
    second = psd.load_online_cached(
        "alpaca", ["AAPL"], pd.Timestamp("2024-01-02"), pd.Timestamp("2024-01-10"), home=home
    )

    # from the second-to-last cached bar: it checks the adjustment basis, the last is refreshed
    assert _starts_seen(alpaca_env) == ["2024-01-04T05:00:00+00:00"]
    assert second.close.index.strftime("%Y-%m-%d").tolist() == [
        *YAHOO_DAYS,
        "2024-01-09",
        "2024-01-10",
    ]
    assert second.close["AAPL"].tolist() == [b["c"] for b in ALPACA_BARS["AAPL"][:7]]
    assert second.volume is not None and second.volume["AAPL"].iloc[-1] == 46792908.0


def test_cache_update_without_a_new_session_returns_the_cached_bars(alpaca_env, tmp_path):
    home = C.paths(tmp_path)
    psd.load_online_cached(
        "alpaca", ["AAPL"], pd.Timestamp("2024-01-02"), pd.Timestamp("2024-01-05"), home=home
    )
    alpaca_env.clear_log()

    # Saturday: Alpaca has no bar after Friday's yet.
    data = psd.load_online_cached(
        "alpaca", ["AAPL"], pd.Timestamp("2024-01-02"), pd.Timestamp("2024-01-06"), home=home
    )

    assert _starts_seen(alpaca_env) == ["2024-01-04T05:00:00+00:00"]
    assert data.close.index.strftime("%Y-%m-%d").tolist() == YAHOO_DAYS[:4]


def test_cache_replaces_a_partial_last_bar(alpaca_env, tmp_path, monkeypatch):
    """A bar fetched during the session is provisional: the next update replaces it."""
    home = C.paths(tmp_path)
    final = ALPACA_BARS["AAPL"]
    intraday = [dict(b) for b in final]
    intraday[3]["c"] = 179.00  # 2024-01-05 fetched at noon
    monkeypatch.setitem(ALPACA_BARS, "AAPL", intraday)
    psd.load_online_cached(
        "alpaca", ["AAPL"], pd.Timestamp("2024-01-02"), pd.Timestamp("2024-01-05"), home=home
    )
    monkeypatch.setitem(ALPACA_BARS, "AAPL", final)  # the session closed: the final bar is 180.29
    alpaca_env.clear_log()
    data = psd.load_online_cached(
        "alpaca", ["AAPL"], pd.Timestamp("2024-01-02"), pd.Timestamp("2024-01-08"), home=home
    )
    assert _starts_seen(alpaca_env) == ["2024-01-04T05:00:00+00:00"]  # incremental, no full fetch
    assert data.close.loc["2024-01-05", "AAPL"] == 180.29
    assert data.close.loc["2024-01-08", "AAPL"] == 184.65


def test_cache_refetches_everything_when_the_source_re_adjusted_history(
    alpaca_env, tmp_path, monkeypatch
):
    """After a 2:1 split the source halves past closes: no cached bar may keep the old basis."""
    home = C.paths(tmp_path)
    psd.load_online_cached(
        "alpaca", ["AAPL"], pd.Timestamp("2024-01-02"), pd.Timestamp("2024-01-05"), home=home
    )
    split = [dict(b, c=round(b["c"] / 2, 3)) for b in ALPACA_BARS["AAPL"]]
    monkeypatch.setitem(ALPACA_BARS, "AAPL", split)
    alpaca_env.clear_log()
    data = psd.load_online_cached(
        "alpaca", ["AAPL"], pd.Timestamp("2024-01-02"), pd.Timestamp("2024-01-08"), home=home
    )
    assert _starts_seen(alpaca_env) == ["2024-01-04T05:00:00+00:00", "2024-01-02T05:00:00+00:00"]
    assert data.close["AAPL"].tolist() == [b["c"] for b in split[:5]]
    cache = pd.read_parquet(tmp_path / "data" / "prices_alpaca.parquet")
    assert cache["close"].tolist() == [b["c"] for b in split[:5]]  # no bar of the old basis left


def test_cache_covering_the_request_fetches_nothing(alpaca_env, tmp_path):
    home = C.paths(tmp_path)
    psd.load_online_cached(
        "alpaca", ["AAPL"], pd.Timestamp("2024-01-02"), pd.Timestamp("2024-01-10"), home=home
    )
    alpaca_env.clear_log()
    data = psd.load_online_cached(
        "alpaca", ["AAPL"], pd.Timestamp("2024-01-03"), pd.Timestamp("2024-01-08"), home=home
    )
    assert alpaca_env.log == []
    assert data.close.index.strftime("%Y-%m-%d").tolist() == YAHOO_DAYS[1:]
