"""Single source of truth for the pair, signal strings, feature names, price ranges and paths.

Every other module asks this one for tickers, signal text and file locations; nothing else spells a
ticker, a signal string or a path literally. Environment variables are read when a function is
called (not at import), so `.env` loaded by `main.py` and `TRADING_HOME` set by tests both apply.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from error_handling import ConfigurationError

PROJECT_ROOT = Path(__file__).resolve().parent

# --- The pair -------------------------------------------------------------------------------------
DEFAULT_TICKER_LONG = "AAPL"
DEFAULT_TICKER_SHORT = "MSFT"
#: Defaults of the pair; `resolve_pair()` applies the env vars and `--long/--short` on top.
TICKER_LONG = DEFAULT_TICKER_LONG
TICKER_SHORT = DEFAULT_TICKER_SHORT
ENV_TICKER_LONG = "TICKER_LONG"
ENV_TICKER_SHORT = "TICKER_SHORT"

# US equity symbols: 1-10 characters, letters first, then letters, digits, '.' or '-' (BRK.B, BF-B).
_SYMBOL_RE = re.compile(r"^[A-Z][A-Z0-9.\-]{0,9}$")

HOLD_SIGNAL = "Hold"


def validate_symbol(symbol: str) -> str:
    """`symbol` upper-cased and stripped; ConfigurationError if it is not a ticker symbol."""
    cleaned = str(symbol).strip().upper()
    if not _SYMBOL_RE.match(cleaned):
        raise ConfigurationError(
            f"invalid ticker symbol {symbol!r}: expected 1-10 characters, a letter first, "
            "then letters, digits, '.' or '-' (e.g. AAPL, BRK.B)"
        )
    return cleaned


@dataclass(frozen=True)
class Pair:
    """The traded pair: buy `long` and sell `short` on an entry signal."""

    long: str
    short: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "long", validate_symbol(self.long))
        object.__setattr__(self, "short", validate_symbol(self.short))
        if self.long == self.short:
            raise ConfigurationError(f"the long and short legs must differ (both are {self.long})")

    @property
    def tickers(self) -> tuple[str, str]:
        """(long, short), the order used for price columns everywhere."""
        return (self.long, self.short)

    @property
    def key(self) -> str:
        """File-name-safe identifier, e.g. 'AAPL_MSFT'."""
        return f"{self.long}_{self.short}"

    @property
    def buy_signal(self) -> str:
        """Entry: long the long leg, short the short leg."""
        return f"Buy {self.long}, Sell {self.short}"

    @property
    def sell_signal(self) -> str:
        """Reverse: short the long leg, long the short leg."""
        return f"Sell {self.long}, Buy {self.short}"

    @property
    def signals(self) -> tuple[str, str, str]:
        """All signal strings for this pair: (buy, sell, hold)."""
        return (self.buy_signal, self.sell_signal, HOLD_SIGNAL)


def resolve_pair(long: str | None = None, short: str | None = None) -> Pair:
    """The pair in force: command-line values, else TICKER_LONG/TICKER_SHORT, else AAPL/MSFT."""
    return Pair(
        long or os.environ.get(ENV_TICKER_LONG) or DEFAULT_TICKER_LONG,
        short or os.environ.get(ENV_TICKER_SHORT) or DEFAULT_TICKER_SHORT,
    )


# --- Features -------------------------------------------------------------------------------------
#: Look-back windows of the features, in bars (trading days). process_stock_data uses these.
RETURN_SHORT_BARS = 5
VOLATILITY_BARS = 20
RSI_BARS = 14
MACD_FAST_BARS, MACD_SLOW_BARS, MACD_SIGNAL_BARS = 12, 26, 9
BOLLINGER_BARS, BOLLINGER_STD = 20, 2.0
MOMENTUM_BARS = 10
SMA_FAST_BARS, SMA_SLOW_BARS = 10, 50
PRICE_ZSCORE_BARS = 60
HEDGE_RATIO_BARS = 60
SPREAD_ZSCORE_BARS = 20
CORRELATION_BARS = 60
VOLUME_BARS = 20
TRADING_DAYS_PER_YEAR = 252

#: Per-leg feature suffixes, in column order. Column name is f"{ticker}_{suffix}".
LEG_FEATURES: tuple[str, ...] = (
    "price_z60",  # normalized price: z-score of the close over 60 bars
    "ret_1d",  # log return over 1 bar
    "ret_5d",  # log return over 5 bars
    "vol_20d",  # annualized std of 1-bar log returns over 20 bars
    "rsi_14",  # Wilder RSI, 0..100
    "macd",  # (EMA12 - EMA26) / close
    "macd_signal",  # EMA9 of macd
    "bb_pctb",  # Bollinger %B (20 bars, 2 std): 0 at the lower band, 1 at the upper
    "mom_10",  # close / close 10 bars ago - 1
    "sma_ratio",  # SMA10 / SMA50 - 1
)
#: Pair feature prefixes. Column name is f"{prefix}_{long}_{short}".
PAIR_FEATURES: tuple[str, ...] = (
    "spread",  # log(long) - hedge_ratio * log(short), hedge ratio from a 60-bar rolling OLS
    "spread_z",  # z-score of the spread over 20 bars
    "corr_60d",  # correlation of 1-bar log returns over 60 bars
)
#: Extra per-leg feature when the source has volume: volume / its 20-bar mean.
VOLUME_FEATURE = "volume_ratio"
LABEL_COLUMN = "label"
NEXT_SPREAD_RETURN_COLUMN = "next_spread_return"


def feature_names(long: str, short: str, *, with_volume: bool = False) -> list[str]:
    """Feature column names for a pair: 23 (10 per leg + 3 pair), 25 when the source has volume."""
    long, short = validate_symbol(long), validate_symbol(short)
    names = [f"{t}_{s}" for t in (long, short) for s in LEG_FEATURES]
    names += [f"{p}_{long}_{short}" for p in PAIR_FEATURES]
    if with_volume:
        names += [f"{t}_{VOLUME_FEATURE}" for t in (long, short)]
    return names


# --- Price bounds (history and live alike) --------------------------------------------------------
#: Any close outside [MIN_CLOSE_USD, MAX_CLOSE_USD] is an error in the data, not a price: the lowest
#: split-adjusted close of the bundled history is $0.098 (NVDA's 1999 closes adjust to about $0.03)
#: and the highest quoted US share (BRK.A) is under $1,000,000. A close of 1e308 would overflow the
#: features (a return of inf) and surface later as a missing feature, far from its cause.
MIN_CLOSE_USD = 1e-4
MAX_CLOSE_USD = 1e7


# --- Price sanity (live use only: history is split-adjusted, AAPL was $0.26 in 1990) -------------
#: Plausible live price range in USD per symbol. Review these when a stock splits.
PRICE_SANITY_RANGES: dict[str, tuple[float, float]] = {
    "AAPL": (50.0, 1_000.0),
    "MSFT": (100.0, 2_000.0),
    "JPM": (50.0, 1_000.0),
    "BAC": (10.0, 200.0),
    "KO": (20.0, 300.0),
    "PEP": (50.0, 600.0),
    "XOM": (30.0, 400.0),
    "CVX": (50.0, 600.0),
}
#: Unknown symbols: within this factor of the last accepted price, else an absolute fallback.
GENERIC_PRICE_FACTOR = 3.0
GENERIC_PRICE_RANGE = (0.01, 1_000_000.0)


def price_sanity_range(symbol: str, reference_price: float | None = None) -> tuple[float, float]:
    """(low, high) USD range a live price of `symbol` must lie in.

    Known symbols use PRICE_SANITY_RANGES; an unknown symbol with a reference (the last accepted
    price) must stay within GENERIC_PRICE_FACTOR of it; otherwise GENERIC_PRICE_RANGE applies.
    """
    symbol = validate_symbol(symbol)
    if symbol in PRICE_SANITY_RANGES:
        return PRICE_SANITY_RANGES[symbol]
    if reference_price is not None and reference_price > 0:
        return (reference_price / GENERIC_PRICE_FACTOR, reference_price * GENERIC_PRICE_FACTOR)
    return GENERIC_PRICE_RANGE


# --- Data sources and validation ------------------------------------------------------------------
ENV_DATA_SOURCE = "DATA_SOURCE"
DEFAULT_DATA_SOURCE = "bundled"
#: Online sources must fail within this many seconds when there is no network.
ONLINE_TIMEOUT_S = 15.0
#: Validation: more than this many NYSE sessions missing between two bars is a gap.
MAX_GAP_SESSIONS = 5
#: Live validation: the last bar may be at most this many sessions old.
MAX_STALE_SESSIONS = 1


def data_source_name(cli_value: str | None = None) -> str:
    """The data source in force: `--source`, else DATA_SOURCE, else 'bundled'."""
    return cli_value or os.environ.get(ENV_DATA_SOURCE) or DEFAULT_DATA_SOURCE


# --- Paths ----------------------------------------------------------------------------------------
ENV_TRADING_HOME = "TRADING_HOME"
ENV_ENV_FILE = "TRADING_ENV_FILE"


def env_file() -> Path:
    """The .env file `main.py` and the dashboard load and `scan --adopt` writes: $TRADING_ENV_FILE
    (from the environment only; tests point it at a temporary file), else the project's .env."""
    return Path(os.environ.get(ENV_ENV_FILE) or PROJECT_ROOT / ".env").expanduser()


@dataclass(frozen=True)
class Paths:
    """Where the application keeps its files, all under one root (`TRADING_HOME`)."""

    home: Path

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def results_dir(self) -> Path:
        return self.home / "results"

    @property
    def positions_file(self) -> Path:
        return self.home / "positions.json"

    @property
    def risk_state_file(self) -> Path:
        """The risk manager's halt flag and equity peak (live and paper; never the backtest)."""
        return self.data_dir / "risk_state.json"

    @property
    def credentials_file(self) -> Path:
        """The encrypted credential store (AES-256-GCM; see credential_manager)."""
        return self.home / "credentials.enc"

    @property
    def heartbeat_file(self) -> Path:
        """The live loop's last iteration: time, market, equity, halt (`main.py status`)."""
        return self.data_dir / "heartbeat.json"

    @property
    def session_cache_file(self) -> Path:
        """The NYSE sessions of this year and the next, cached for `main.py status`
        (`market_sessions.SessionCache`; recomputed from the calendar when unusable)."""
        return self.data_dir / "nyse_sessions.json"

    @property
    def paper_broker_file(self) -> Path:
        """The simulated broker's account (cash, positions, every order by client id)."""
        return self.data_dir / "paper_broker.json"

    @property
    def live_lock_file(self) -> Path:
        """Held by the running `main.py live`: one instance per TRADING_HOME."""
        return self.data_dir / "live.lock"

    @property
    def order_tag_file(self) -> Path:
        """This home's tag in every client order id (see `order_tag`)."""
        return self.data_dir / "order_tag"

    def order_tag(self) -> str:
        """This home's stable tag (6 hex digits) in the prefix of every client order id,
        `pt-<tag>-...`: two homes trading one account never share an id, so neither adopts the
        other's orders. Drawn once at random and kept in data/order_tag (a moved or copied home
        keeps it; a new home gets its own)."""
        path = self.order_tag_file
        for _ in range(2):
            try:
                tag = path.read_text(encoding="ascii").strip()
            except FileNotFoundError:
                _create_order_tag(path)
                continue
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigurationError(f"{path} is unreadable ({exc})") from None
            if not re.fullmatch(r"[0-9a-f]{6}", tag):
                raise ConfigurationError(
                    f"{path} holds {tag[:20]!r}, not a 6-hex-digit order tag; restore it from a "
                    "backup (it is part of every client order id this home sent)"
                )
            return tag
        raise ConfigurationError(f"cannot create {path}")

    @property
    def home_identity_file(self) -> Path:
        """The venue, account, place and order tag this home recorded at its first start
        (`home_identity`)."""
        return self.data_dir / "home.json"

    def order_prefix(self) -> str:
        """The prefix of this home's client order ids, `pt-<tag>` (its backtests use it too, so
        a backtest and a replay name their orders alike)."""
        return f"pt-{self.order_tag()}"

    @property
    def audit_log(self) -> Path:
        """Append-only, hash-chained record of what the live loop decided and did (JSON lines)."""
        return self.logs_dir / "audit.jsonl"

    @property
    def app_log(self) -> Path:
        return self.logs_dir / "trading.log"

    @property
    def alerts_log(self) -> Path:
        return self.logs_dir / "alerts.log"

    def processed_file(self, pair: Pair) -> Path:
        """Processed features of a pair (parquet); its metadata sits beside it as .json."""
        return self.data_dir / f"processed_{pair.key}.parquet"

    def ensure(self) -> Paths:
        """Create the directories (not the files); returns self."""
        for d in (self.data_dir, self.models_dir, self.logs_dir, self.results_dir):
            d.mkdir(parents=True, exist_ok=True)
        return self


# --- The environment ------------------------------------------------------------------------------
def _number(low: float, *, inclusive: bool) -> Any:
    def check(value: str) -> str | None:
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        ok = math.isfinite(number) and (number >= low if inclusive else number > low)
        return None if ok else f"a number of seconds {'>=' if inclusive else '>'} {low:g}"

    return check


def _one_of(*allowed: str, exact: bool = False) -> Any:
    def check(value: str) -> str | None:
        text = value if exact else value.strip().lower()
        return None if text in allowed else f"one of {', '.join(allowed)}"

    return check


def _url(value: str) -> str | None:
    return None if re.match(r"https?://[^\s/]+", value.strip()) else "an http:// or https:// URL"


def _symbol(value: str) -> str | None:
    try:
        validate_symbol(value)
    except ConfigurationError:
        return "a ticker: 1-10 characters, a letter first, then letters, digits, '.' or '-'"
    return None


def _source(value: str) -> str | None:
    name = value.strip()
    if name in ("bundled", "yfinance", "alpaca") or (name.startswith("csv:") and name[4:].strip()):
        return None
    return "bundled, yfinance, alpaca or csv:PATH"


def _scheduler(value: str) -> str | None:
    text = value.strip()
    scheme, sep, rest = text.partition("://")
    if sep and scheme in ("tcp", "tls", "ucx", "inproc", "ws", "wss") and rest:
        return None
    return "a Dask scheduler address such as tcp://HOST:8786"


def _env_path(value: str) -> str | None:
    return "a file, but it is a directory" if Path(value).expanduser().is_dir() else None


def _home(value: str) -> str | None:
    """A home that exists must be a writable directory; one that does not is made later, so its
    nearest existing ancestor must be a directory (not `.../prices.csv/sub`) this user can write."""
    path = Path(value).expanduser().absolute()
    if path.exists() and not path.is_dir():
        return "a directory, but it is a file"
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        return "a directory this user can write to, but it is read-only"
    if path.is_dir():
        return None
    parent = next((p for p in path.parents if os.path.lexists(p)), None)
    if parent is not None and not parent.is_dir():
        return f"a directory, but {parent} is a file, so nothing can be made under it"
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        return f"a directory this user can create, but {parent} is read-only"
    return None


_FLAGS = ("1", "true", "on", "yes", "0", "false", "off", "no")

#: Every environment variable the application reads, with what it accepts; `check_environment`
#: checks them all before any command does any work (tests/test_constants.py checks that every
#: variable the code reads is here). An empty value means unset: the default applies.
ENV_RULES: dict[str, Any] = {
    ENV_TICKER_LONG: _symbol,
    ENV_TICKER_SHORT: _symbol,
    ENV_DATA_SOURCE: _source,
    "TRADING_HOME": _home,
    ENV_ENV_FILE: _env_path,
    "TRADING_INTERVAL_S": _number(0, inclusive=False),
    "LOG_LEVEL": _one_of("debug", "info", "warning", "error", "critical"),
    "ENSEMBLE_MODE": _one_of(*_FLAGS),
    "SIGNAL_MODEL": _one_of("xgb", "lstm", exact=True),
    "ALERT_WEBHOOK_URL": _url,
    "ALERT_FLUSH_TIMEOUT_S": _number(0, inclusive=True),
    "DASHBOARD_REFRESH_S": _number(0, inclusive=True),
    "ALPACA_TRADING_URL": _url,
    "ALPACA_DATA_URL": _url,
    "ALPACA_DATA_FEED": _one_of("iex", "sip", "delayed_sip", "boats", "overnight", "otc"),
    "DASK_SCHEDULER_ADDRESS": _scheduler,
}


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """ConfigurationError (exit 2) naming the first variable of ENV_RULES whose value is not
    allowed, and what is; run before any work, so a typo costs nothing."""
    environ = os.environ if environ is None else environ
    for name, rule in ENV_RULES.items():
        value = environ.get(name, "")
        if not value.strip():
            continue
        wanted = rule(value)
        if wanted is not None:
            raise ConfigurationError(f"{name}={value!r} is not allowed: it must be {wanted}")


def _create_order_tag(path: Path) -> None:
    """Write a new random tag atomically: a temp file, fsync, then a hard link that fails when
    the tag exists (a concurrent creator wins; its tag is then read). A crash leaves either no
    tag or a whole one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="ascii") as fh:
        fh.write(os.urandom(3).hex() + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def paths(home: str | os.PathLike[str] | None = None) -> Paths:
    """Paths under `home`, else `TRADING_HOME`, else the project directory."""
    root = home or os.environ.get(ENV_TRADING_HOME) or PROJECT_ROOT
    return Paths(Path(root).expanduser().resolve())
