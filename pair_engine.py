"""The one trading engine: configuration, sizing, rebalance rule, ledger and the decision step that
the backtest and the live loop (replay, paper and Alpaca) both call on every decision bar.

    instruction weights (signal bar t) + the venue's account, holdings and quotes (bar t + delay)
      -> target shares (one sizing rule) -> rebalance band -> `orders_toward`
      -> risk snapshot (built once per basket) -> `RiskManager.pre_trade_check` -> `Venue`

The loops keep only what differs: the clock, the data feed and persistence. Invariants:
- A signal decided on bar t's close is acted on at bar t + `fill_delay_bars`; a simulated venue
  fills at that bar's close, so a paper replay and a backtest of the same bars trade identically.
  A drawdown liquidation too: the close that reveals a breach halts trading, and the liquidation
  goes out `fill_delay_bars` later (`control_drawdown`).
- Client order ids come from (strategy, decision bar, signal bar, symbol, purpose, leg part): the
  same decision always produces the same ids, in the backtest and live alike.
- Borrow accrues once per calendar day, keyed by the day: charging a day twice (a crash and a
  resume) is a no-op.
Units: USD; shares whole (int) or, with `SizingConfig.fractional_shares`, fractional (float);
weights as signed fractions of equity per leg (long leg first), or signed USD per leg for rule
sizing with `SizingConfig.leg_usd`.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from pandas._libs.window.aggregations import roll_var as _roll_var

import risk_management as rm
from error_handling import ConfigurationError, RiskViolation
from trading_execution import (
    ApprovedBasket,
    ExecutionConfig,
    Fill,
    Order,
    Purpose,
    Qty,
    as_qty,
    orders_toward,
)

#: The strategy name in client order ids; the backtest and the live loop must agree on it.
STRATEGY = "pair"
DEFAULT_DAILY_VOL = 0.02  # for market impact before 5 bars of returns exist
VOL_BARS = 20


# --- Configuration --------------------------------------------------------------------------------
@dataclass(frozen=True)
class SizingConfig:
    """How big a position is: a fraction of equity per leg, or fixed USD per leg for rules."""

    #: Fraction of full Kelly (0.5 = half Kelly).
    kelly_fraction: float = 0.5
    #: Kelly cap per leg, fraction of equity.
    max_leg_fraction: float = 0.5
    #: Average win / average loss assumed by Kelly.
    payoff_ratio: float = 1.0
    #: Fixed size per leg for rules and action files (no probability).
    rule_leg_fraction: float = 0.25
    #: A Hold signal keeps the position ("keep") or closes it ("flat").
    hold: str = "keep"
    #: Fixed USD notional per leg for rule-sized positions (action and state files, the z-score
    #: benchmark) instead of `rule_leg_fraction` x equity; None: the fraction. Kelly-sized model
    #: signals and weight files (fractions of equity) are not affected.
    leg_usd: float | None = None
    #: Size legs in fractional shares (floats) instead of truncating to whole shares. The
    #: simulated venues (backtest, paper broker) support it; Alpaca is refused at start-up.
    fractional_shares: bool = False

    def __post_init__(self) -> None:
        if self.hold not in ("keep", "flat"):
            raise ConfigurationError(f"hold must be 'keep' or 'flat', not {self.hold!r}")
        if not isinstance(self.fractional_shares, bool):
            raise ConfigurationError(
                f"fractional shares must be true or false, not {self.fractional_shares!r}"
            )
        leg = self.leg_usd
        if leg is not None and (
            isinstance(leg, bool)
            or not isinstance(leg, int | float)
            or not (math.isfinite(leg) and leg > 0)
        ):
            raise ConfigurationError(f"leg USD must be a positive, finite amount of USD: {leg!r}")
        for name in ("kelly_fraction", "max_leg_fraction", "rule_leg_fraction"):
            value = getattr(self, name)
            if not 0 < value <= 5:
                raise ConfigurationError(f"{name.replace('_', ' ')} must be in (0, 5]: {value}")
        if not self.payoff_ratio > 0:
            raise ConfigurationError(f"payoff ratio must be positive: {self.payoff_ratio}")


@dataclass(frozen=True)
class TradingConfig:
    """Everything a run trades by besides prices and signals, for the backtest and live alike.
    Defaults live here once; `main.py` builds its options and their help from these fields."""

    #: Starting cash of a backtest or a fresh paper account, USD.
    initial_capital: float = 100_000.0
    #: Bars between the signal's close and the fill's close (1: the next close; 0: the same close).
    fill_delay_bars: int = 1
    #: Re-size a held direction only when a leg's target differs from the holding by more than
    #: this fraction of the leg (0.25 = 25 %); a direction change always trades. 0 re-sizes on
    #: any difference.
    rebalance_band: float = 0.25
    sizing: SizingConfig = field(default_factory=SizingConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    limits: rm.RiskLimits = field(default_factory=rm.RiskLimits)

    def __post_init__(self) -> None:
        if not (
            isinstance(self.initial_capital, int | float)
            and math.isfinite(self.initial_capital)
            and self.initial_capital > 0
        ):
            raise ConfigurationError(
                f"initial capital must be a positive number of USD: {self.initial_capital}"
            )
        if isinstance(self.fill_delay_bars, bool) or not (
            isinstance(self.fill_delay_bars, int) and self.fill_delay_bars >= 0
        ):
            raise ConfigurationError(f"fill delay must be >= 0 bars: {self.fill_delay_bars}")
        if not (isinstance(self.rebalance_band, int | float) and 0 <= self.rebalance_band < 1):
            raise ConfigurationError(
                f"rebalance band must be a fraction in [0, 1) of the leg: {self.rebalance_band!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (summary.json, the audit `start` record)."""
        return _plain(self)

    def with_values(self, values: Mapping[str, Any]) -> TradingConfig:
        """A copy with dotted-path values replaced, e.g. {"limits.max_drawdown_pct": 0.2}.
        Unknown names and wrong types are a ConfigurationError naming them."""
        nested: dict[str, Any] = {}
        for path, value in values.items():
            node = nested
            *parents, leaf = path.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        return _replace(self, nested, "")

    @classmethod
    def from_toml(cls, path: str | Path, base: TradingConfig | None = None) -> TradingConfig:
        """`base` (defaults) updated with a TOML file: top-level fields, and tables [sizing],
        [execution], [execution.costs], [limits]."""
        import tomllib

        file = Path(path)
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigurationError(f"config file {file} not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"config file {file} cannot be read: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"config file {file} is not valid TOML: {exc}") from None
        try:
            return _replace(base or cls(), data, "")
        except ConfigurationError as exc:
            raise ConfigurationError(f"config file {file}: {exc}") from None


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (set, frozenset)):
        return sorted(_plain(v) for v in obj)
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _replace(obj: Any, values: Mapping[str, Any], where: str) -> Any:
    """`obj` (a frozen dataclass) with `values` (nested mappings) applied, types checked."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    changes: dict[str, Any] = {}
    for name, value in values.items():
        label = f"{where}{name}"
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigurationError(f"unknown setting {label!r} (known here: {known})")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigurationError(f"{label} must be a table of settings, got {value!r}")
            changes[name] = _replace(current, value, f"{label}.")
        else:
            changes[name] = _coerce(label, current, value)
    try:
        return dataclasses.replace(obj, **changes)
    except TypeError as exc:
        raise ConfigurationError(f"invalid settings under {where or 'top level'}: {exc}") from None


def _coerce(label: str, current: Any, value: Any) -> Any:
    """`value` in the type of the field's current value (int, float, str, enum, set, mapping)."""
    if isinstance(current, enum.Enum):
        try:
            return type(current)(value)
        except ValueError:
            choices = ", ".join(m.value for m in type(current))
            raise ConfigurationError(f"{label} must be one of {choices}, got {value!r}") from None
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(current, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif isinstance(current, float) or current is None:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif isinstance(current, str) and isinstance(value, str):
        return value
    elif isinstance(current, (set, frozenset)) and isinstance(value, (list, tuple, set)):
        return frozenset(str(v).upper() for v in value)
    elif isinstance(current, Mapping) and isinstance(value, Mapping):
        return {
            str(k).upper(): tuple(v) if isinstance(v, (list, tuple)) else v
            for k, v in value.items()
        }
    kind = "number" if current is None else type(current).__name__
    raise ConfigurationError(f"{label} must be a {kind} like {current!r}, got {value!r}")


# --- Market inputs of the simulated fills ---------------------------------------------------------
def daily_vol(close: np.ndarray) -> np.ndarray:
    """Per bar and column: std of the last `VOL_BARS` daily returns ending at that bar (causal;
    at least 5 returns, else `DEFAULT_DAILY_VOL`). For market impact.

    Exactly ``DataFrame(close).pct_change().rolling(VOL_BARS, min_periods=5).std()`` (a test
    holds the bits equal), computed by the function pandas calls for it, `roll_var` (Welford),
    on each column: without the frame and window objects, a 63-bar scan window pays 55 us
    instead of 820."""
    close = np.asarray(close, dtype="float64")
    n = close.shape[0]
    end = np.arange(1, n + 1, dtype=np.int64)  # pandas' FixedWindowIndexer bounds
    start = np.clip(end - VOL_BARS, 0, n)
    out = np.empty_like(close)
    for col in range(close.shape[1]):
        x = np.ascontiguousarray(close[:, col])
        returns = np.empty(n)
        returns[:1] = np.nan
        returns[1:] = x[1:] / x[:-1] - 1.0  # pct_change
        var = _roll_var(returns, start, end, 5, 1)
        with np.errstate(invalid="ignore"):
            vol = np.sqrt(var)
        vol[var < 0] = 0.0  # pandas' zsqrt
        vol[np.isnan(vol)] = DEFAULT_DAILY_VOL
        out[:, col] = vol
    return out


def adv_shares(close: np.ndarray, volume: np.ndarray | None, default_adv_usd: float) -> np.ndarray:
    """Average daily volume in shares per bar: the mean of the previous `VOL_BARS` bars' volume
    (causal: bar t's own volume is not known when its order is placed); the default dollar
    volume / close where there is no earlier volume."""
    close = np.asarray(close, dtype="float64")
    fallback = default_adv_usd / close
    if volume is None:
        return fallback
    adv = pd.DataFrame(np.asarray(volume, dtype="float64")).rolling(VOL_BARS, min_periods=1)
    mean = adv.mean().shift(1).to_numpy()
    return np.maximum(np.where(np.isfinite(mean), mean, fallback), 1.0)


# --- Sizing and the rebalance rule ----------------------------------------------------------------
def signal_weights(action: str, probability: float, sizing: SizingConfig) -> tuple[float, float]:
    """(long leg, short leg) weights for one model signal: buy/sell sized by fractional Kelly on
    the probability of the predicted direction; hold -> NaN (keep) or 0 (flat); a direction
    without a Kelly edge -> 0 (flat)."""
    if action == "hold":
        return (math.nan, math.nan) if sizing.hold == "keep" else (0.0, 0.0)
    if action not in ("buy", "sell"):
        raise ConfigurationError(f"unknown signal action {action!r}")
    direction = 1.0 if action == "buy" else -1.0
    p_win = probability if action == "buy" else 1.0 - probability
    frac = rm.kelly_fraction(
        float(p_win),
        sizing.payoff_ratio,
        fraction=sizing.kelly_fraction,
        cap=sizing.max_leg_fraction,
    )
    if frac <= 0:
        return 0.0, 0.0
    return direction * frac, -direction * frac


def model_weights(signals: pd.DataFrame, sizing: SizingConfig) -> np.ndarray:
    """(n, 2) instruction weights from `SignalGenerator.series` output, `signal_weights` per bar:
    every buy or sell bar is an instruction (the rebalance band decides whether it trades)."""
    out = np.empty((len(signals), 2))
    actions = signals["action"].to_numpy()
    probs = signals["probability"].to_numpy("float64")
    for i, (a, p) in enumerate(zip(actions, probs, strict=True)):
        out[i] = signal_weights(str(a), float(p), sizing)
    return out


def instructions_from_states(states: np.ndarray, leg_fraction: np.ndarray | float) -> np.ndarray:
    """(n, 2) target weights from a direction state per bar (+1 buy the spread, -1 sell it, 0 flat,
    NaN keep): an instruction only where the state changes; NaN rows elsewhere. `leg_fraction`
    is the size per leg in the instructions' unit (a fraction of equity, or USD)."""
    states = np.asarray(states, dtype="float64")
    held = pd.Series(states).ffill().fillna(0.0).to_numpy()
    prev = np.concatenate([[0.0], held[:-1]])
    change = held != prev
    frac = np.broadcast_to(np.asarray(leg_fraction, dtype="float64"), held.shape)
    w = np.full((len(held), 2), np.nan)
    w[change, 0] = held[change] * frac[change]
    w[change, 1] = -held[change] * frac[change]
    return w


@dataclass(frozen=True, eq=False)
class Instructions:
    """What a signal source hands the engine: instruction weights per bar and their unit.

    `weights`: (n, 2) per leg, long leg first, decided on that bar's close; a NaN row is no
    instruction. `per_usd`: True when they are signed USD notionals per leg (rule sizing with
    `SizingConfig.leg_usd`), False when they are signed fractions of equity. A signal file also
    says what it left out: `skipped_before` rows dated before the first bar (`first_bar`; a
    feature warm-up, or rows before --start; the file is flat by that bar), `ignored_after` rows
    dated after the last bar (`last_bar`) but inside the data (after --end)."""

    weights: np.ndarray
    per_usd: bool = False
    skipped_before: int = 0
    ignored_after: int = 0
    first_bar: pd.Timestamp | None = None
    last_bar: pd.Timestamp | None = None


def rule_instructions(states: np.ndarray, sizing: SizingConfig) -> Instructions:
    """The one sizing rule of direction states (a rule such as the z-score benchmark, an action or
    a state file): `sizing.leg_usd` USD per leg when set, else `sizing.rule_leg_fraction` of
    equity per leg; an instruction where the state changes (`instructions_from_states`)."""
    if sizing.leg_usd is not None:
        return Instructions(instructions_from_states(states, sizing.leg_usd), per_usd=True)
    return Instructions(instructions_from_states(states, sizing.rule_leg_fraction))


def read_signal_file(
    path: str,
    pair: Any,
    dates: pd.DatetimeIndex,
    sizing: SizingConfig,
    *,
    data_start: Any = None,
    data_end: Any = None,
) -> Instructions:
    """Instructions on `dates` (the bars of the run) from a CSV with a `date` column and one of:
    `action` (buy, sell, hold, flat or the pair's signal text, `Pair.buy_signal` /
    `Pair.sell_signal`), `state` (+1 long the spread, -1 short it, 0 flat, blank or NaN keep),
    both sized by `rule_instructions`; or `<LONG>,<SHORT>` target weights (signed fractions of
    equity; `long_weight,short_weight` also accepted).

    Which rows count: a date inside `dates`' span must be one of its bars. The run starts flat
    on its first bar, so rows dated before it are skipped: one before the data's first bar
    (`data_start`; None: before the first bar) -- the features' warm-up -- must itself be flat
    (flat, hold, state 0 or blank, weights 0/0); rows inside the data but before the first bar
    (before --start) must leave the file flat at it. A row dated after the last bar is ignored
    when it is still inside the data (`data_end`: its last bar; i.e. after --end) and refused
    otherwise (no such bar yet)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigurationError(f"signal file {file} not found")
    try:
        raw = pd.read_csv(file, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"signal file {file} is not a readable CSV: {exc}") from None
    # Keep file line numbers for messages: line 1 is the header, blank lines still count.
    blank = (raw.apply(lambda col: col.str.strip()) == "").all(axis=1).to_numpy()
    line_no = (np.arange(len(raw)) + 2)[~blank]
    raw = raw[~blank].reset_index(drop=True)
    cols = {c.strip().lower(): c for c in raw.columns}
    if "date" not in cols:
        raise ConfigurationError(
            f"signal file {file} needs a 'date' column (got {list(raw.columns)})"
        )
    if "action" in cols and "state" in cols:
        raise ConfigurationError(
            f"signal file {file} has both an 'action' and a 'state' column; keep one"
        )
    text = raw[cols["date"]].str.strip()
    when = pd.to_datetime(text, format="ISO8601", errors="coerce")
    if when.isna().any():
        bad = int(np.flatnonzero(when.isna().to_numpy())[0])
        raise ConfigurationError(
            f"signal file {file} line {line_no[bad]}: bad date {text[bad]!r} (use YYYY-MM-DD)"
        )
    when = pd.DatetimeIndex(when).tz_localize(None).normalize()
    if when.duplicated().any():
        bad = int(np.flatnonzero(when.duplicated())[0])
        raise ConfigurationError(
            f"signal file {file} line {line_no[bad]}: date {when[bad].date()} repeats"
        )
    # Every row's instruction first (a bad value is refused wherever its row is) ...
    if "action" in cols or "state" in cols:
        if "action" in cols:
            states = _action_states(file, raw[cols["action"]], line_no, pair)
        else:
            states = _state_states(file, raw[cols["state"]], line_no)
        held = states  # NaN: keeps what was held
    else:
        weights = _column_weights(file, raw, cols, line_no, pair)
        held = np.where((weights == 0).all(axis=1), 0.0, 1.0)
    # ... then where the rows fall.
    index = pd.DatetimeIndex(dates).tz_localize(None).normalize()
    first, last = index[0], index[-1]
    before = np.asarray(when < first)
    after = np.asarray(when > last)
    start = first if data_start is None else pd.Timestamp(data_start).tz_localize(None).normalize()
    warm_up = before & np.asarray(when < start)
    if (warm_up & (held != 0) & ~np.isnan(held)).any():
        bad = int(np.flatnonzero(warm_up & (held != 0) & ~np.isnan(held))[0])
        raise ConfigurationError(
            f"signal file {file} line {line_no[bad]}: {when[bad].date()} is before the first bar "
            f"of the backtest {first.date()} and is not flat; rows before the data's first bar "
            f"{start.date()} (the features' warm-up) must be flat"
        )
    earlier = np.flatnonzero(before & ~warm_up & ~np.isnan(held))
    if len(earlier):
        last_set = int(earlier[np.argmax(when[earlier])])  # the latest row that sets a position
        if held[last_set] != 0:
            raise ConfigurationError(
                f"signal file {file} line {line_no[last_set]}: the position of "
                f"{when[last_set].date()} is still held at the first bar of the backtest "
                f"{first.date()}; the run starts flat, so start it where the file is flat (or "
                "earlier)"
            )
    end = None if data_end is None else pd.Timestamp(data_end).tz_localize(None).normalize()
    beyond = after if end is None else after & np.asarray(when > end)
    if beyond.any():
        bad = int(np.flatnonzero(beyond)[0])
        raise ConfigurationError(
            f"signal file {file} line {line_no[bad]}: {when[bad].date()} is after the last bar of "
            f"the data {(end if end is not None else last).date()}; process newer data first"
        )
    inside = ~before & ~after
    pos = index.get_indexer(when[inside])
    if (pos < 0).any():
        bad = int(np.flatnonzero(inside)[np.flatnonzero(pos < 0)[0]])
        raise ConfigurationError(
            f"signal file {file} line {line_no[bad]}: {when[bad].date()} is not a bar of the "
            f"backtest ({first.date()} .. {last.date()}; weekends and holidays have none)"
        )
    skipped, ignored = int(before.sum()), int(after.sum())
    if "action" in cols or "state" in cols:
        on_bars = np.full(len(index), np.nan)
        on_bars[pos] = states[inside]
        rule = rule_instructions(on_bars, sizing)
        return dataclasses.replace(
            rule, skipped_before=skipped, ignored_after=ignored, first_bar=first, last_bar=last
        )
    on_bars_w = np.full((len(index), 2), np.nan)
    on_bars_w[pos] = weights[inside]
    return Instructions(on_bars_w, False, skipped, ignored, first, last)


def _action_states(file: Path, actions: pd.Series, line_no: np.ndarray, pair: Any) -> np.ndarray:
    """The direction state of each row of an action column (NaN: hold, keep)."""
    texts = {
        "buy": 1.0,
        "sell": -1.0,
        "flat": 0.0,
        "hold": np.nan,
        pair.buy_signal.lower(): 1.0,
        pair.sell_signal.lower(): -1.0,
    }
    states = np.empty(len(actions))
    for i, (line, a) in enumerate(zip(line_no, actions, strict=True)):
        key = str(a).strip().lower()
        if key not in texts:
            raise ConfigurationError(
                f"signal file {file} line {line}: unknown action {a!r} "
                f"(use buy, sell, hold, flat, {pair.buy_signal!r} or {pair.sell_signal!r})"
            )
        states[i] = texts[key]
    return states


_STATE_VALUES = (1.0, -1.0, 0.0)


def _state_states(file: Path, values: pd.Series, line_no: np.ndarray) -> np.ndarray:
    """The direction state of each row of a state column: +1, -1, 0; blank or NaN keeps."""
    states = np.empty(len(values))
    for i, (line, v) in enumerate(zip(line_no, values, strict=True)):
        key = str(v).strip()
        if key == "" or key.lower() == "nan":
            states[i] = np.nan
            continue
        try:
            number = float(key)
        except ValueError:
            number = math.nan
        if number not in _STATE_VALUES:
            raise ConfigurationError(
                f"signal file {file} line {line}: state {v!r} must be 1 (long the spread), "
                "-1 (short it), 0 (flat) or blank (keep)"
            )
        states[i] = number
    return states


def _column_weights(
    file: Path, raw: pd.DataFrame, cols: Mapping[str, str], line_no: np.ndarray, pair: Any
) -> np.ndarray:
    """The (rows, 2) target weights of a weight file, row by row."""
    long_col = cols.get(pair.long.lower()) or cols.get("long_weight")
    short_col = cols.get(pair.short.lower()) or cols.get("short_weight")
    if long_col is None or short_col is None:
        raise ConfigurationError(
            f"signal file {file} needs an 'action' or 'state' column or weight columns "
            f"'{pair.long}','{pair.short}' (or 'long_weight','short_weight')"
        )
    weights = np.empty((len(raw), 2))
    for j, col in enumerate((long_col, short_col)):
        try:
            values = pd.to_numeric(raw[col].str.strip())
        except (ValueError, TypeError):
            bad = int(np.flatnonzero(pd.to_numeric(raw[col], errors="coerce").isna())[0])
            raise ConfigurationError(
                f"signal file {file} line {line_no[bad]}: weight {raw[col][bad]!r} is not a number"
            ) from None
        arr = values.to_numpy("float64")
        if not np.isfinite(arr).all() or (np.abs(arr) > 5).any():
            bad = int(np.flatnonzero(~np.isfinite(arr) | (np.abs(arr) > 5))[0])
            raise ConfigurationError(
                f"signal file {file} line {line_no[bad]}: weight {arr[bad]} must be finite and "
                "within ±5 (a fraction of equity)"
            )
        weights[:, j] = arr
    return weights


def target_shares(
    weights: Sequence[float], scale: float, prices: Sequence[float], *, fractional: bool = False
) -> tuple[Qty, ...]:
    """Signed shares per leg: weight x scale (equity, or 1 for USD weights) / price, truncated
    toward zero to whole shares (int), or as fractional shares (float) when `fractional`."""
    if fractional:
        return tuple(float(w * scale / p) for w, p in zip(weights, prices, strict=True))
    return tuple(whole_shares(w, scale, p) for w, p in zip(weights, prices, strict=True))


# The per-leg rules below are plain arithmetic in the subset numba compiles: the interpreted
# engine calls them, and `fast_engine` compiles the very same functions (no second copy).
def whole_shares(weight: float, scale: float, price: float) -> int:
    """Signed whole shares of one leg: weight x scale / price, truncated toward zero."""
    return math.trunc(weight * scale / price)


def both_legs_sized(w0: float, w1: float, want0: float, want1: float) -> bool:
    """A pair is traded both legs or not at all: False when a leg with a non-zero weight sizes to
    0 shares while the other leg does not (the capital is too small for the dearer leg), which
    would make the "pair" an outright bet on one stock."""
    if w0 != 0 and want0 == 0 and want1 != 0:
        return False
    return not (w1 != 0 and want1 == 0 and want0 != 0)


def leg_rebalances(have: Qty, want: Qty, band: float) -> bool:
    """One leg of the rebalance rule: it changes direction (or opens or closes), or its target
    differs from the holding by more than `band` x the larger of the two."""
    if have == want:
        return False
    if (have > 0) != (want > 0) or (have < 0) != (want < 0):
        return True
    return abs(want - have) > band * max(abs(want), abs(have))


def needs_rebalance(held: Mapping[str, Qty], target: Mapping[str, Qty], band: float) -> bool:
    """The one rebalance rule: trade when any leg does (`leg_rebalances`)."""
    return any(leg_rebalances(held.get(sym, 0), want, band) for sym, want in target.items())


def book_fill(
    q: Qty, avg: float, realized: float, dq: Qty, price: float
) -> tuple[Qty, float, float]:
    """A fill of `dq` signed shares at `price` on a position of `q` shares at average price `avg`:
    (new position, new average price, realized P&L so far + the closed part's), USD."""
    new = q + dq
    if q == 0 or (q > 0) == (dq > 0):
        avg = (avg * abs(q) + price * abs(dq)) / abs(new)
    else:
        closed = min(abs(dq), abs(q))
        realized += (price - avg) * closed * (1 if q > 0 else -1)
        if new == 0:
            avg = 0.0
        elif (new > 0) != (q > 0):
            avg = price
    return new, avg, realized


# --- The ledger -----------------------------------------------------------------------------------
def day_number(when: Any) -> int:
    """Days since 1970-01-01 of a date or timestamp's calendar date (as given; no conversion)."""
    ts = pd.Timestamp(when)
    return int((ts.tz_localize(None) if ts.tzinfo else ts).normalize().value // 86_400_000_000_000)


class Ledger:
    """Cash, signed positions, average prices, realized P&L and borrow of one account (USD).

    The backtest's book and the simulated broker's account are both this class: a fill changes
    them in one way only. Borrow is charged per calendar day, keyed by `borrow_through` (a day
    number): a second charge for a day already charged is refused."""

    __slots__ = ("avg", "borrow_paid", "borrow_through", "cash", "qty", "realized")

    def __init__(self, cash: float, symbols: Sequence[str] = ()):
        self.cash = float(cash)
        self.qty: dict[str, Qty] = dict.fromkeys(symbols, 0)
        self.avg: dict[str, float] = dict.fromkeys(symbols, 0.0)
        self.realized = 0.0
        self.borrow_paid = 0.0
        self.borrow_through: int | None = None

    def apply(self, fill: Fill) -> None:
        """Book a fill: position, average price, realized P&L on the closed part, cash."""
        dq = fill.signed_qty
        if dq == 0:
            return
        sym = fill.symbol
        self.qty[sym], self.avg[sym], self.realized = book_fill(
            self.qty.get(sym, 0), self.avg.get(sym, 0.0), self.realized, dq, fill.price
        )
        self.cash += fill.cash_change

    def borrow_due(
        self,
        day: int,
        prior_prices: Mapping[str, float],
        rates: Mapping[str, float],
        day_count: float,
    ) -> float:
        """Borrow on the shorts for the calendar days after `borrow_through` up to `day`, on the
        prior close (USD); 0 when the day is already charged or nothing was charged before."""
        if self.borrow_through is None or day <= self.borrow_through:
            return 0.0
        days = day - self.borrow_through
        fee = 0.0
        for sym, q in self.qty.items():
            if q < 0 and sym in prior_prices:
                fee += -q * rates[sym] / day_count * (prior_prices[sym] * days)
        return fee

    def charge_borrow(self, day: int, fee: float) -> bool:
        """Charge `fee` for the days through `day`; False (nothing charged) for a day already
        charged."""
        if self.borrow_through is not None and day <= self.borrow_through:
            return False
        self.cash -= fee
        self.borrow_paid += fee
        self.borrow_through = day
        return True

    def equity(self, prices: Mapping[str, float]) -> float:
        """Cash plus every position marked at `prices`."""
        return self.cash + sum(q * prices[s] for s, q in self.qty.items() if q)

    def holdings(self) -> dict[str, Qty]:
        """Signed shares per symbol (zeros included)."""
        return dict(self.qty)

    def to_json(self) -> dict[str, Any]:
        return {
            "cash": self.cash,
            "positions": {s: {"qty": q, "avg": self.avg.get(s, 0.0)} for s, q in self.qty.items()},
            "realized_pnl": self.realized,
            "borrow_paid": self.borrow_paid,
            "borrow_through": self.borrow_through,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Ledger:
        ledger = cls(float(data["cash"]))
        for sym, pos in data["positions"].items():
            ledger.qty[sym] = as_qty(pos["qty"])  # fractional shares stay floats
            ledger.avg[sym] = float(pos["avg"])
        ledger.realized = float(data.get("realized_pnl", 0.0))
        ledger.borrow_paid = float(data.get("borrow_paid", 0.0))
        through = data.get("borrow_through")
        ledger.borrow_through = None if through is None else int(through)
        return ledger


# --- Venues and the decision step -----------------------------------------------------------------
class AccountView(Protocol):
    equity: float
    cash: float
    buying_power: float


class QuoteView(Protocol):
    price: float
    time: pd.Timestamp


class ClockView(Protocol):
    at: pd.Timestamp
    is_open: bool


class Venue(Protocol):
    """Where approved baskets go: the backtest venue, the simulated (paper) broker, Alpaca.

    `simulated`: fills at a bar's close already known to the loop, and buying power is the gate's
    Reg-T computation; `live_checks`: the gate applies market hours and the constants' price
    sanity ranges (live rules) instead of the backtest's band around the previous close;
    `order_prefix`: the prefix of every client order id it is sent (`pt-<home tag>`).

    `await_fills` returns the venue's latest view of placed orders once they are done or a bound
    has passed (a simulated venue's orders are done when placed); with `cancel_unfilled` an order
    still working at the bound is cancelled first."""

    name: str
    simulated: bool
    live_checks: bool

    @property
    def order_prefix(self) -> str: ...

    def account(self) -> Any: ...

    def holdings(self) -> dict[str, Qty]: ...

    def latest_prices(self, symbols: Sequence[str]) -> Mapping[str, Any]: ...

    def clock(self) -> Any: ...

    def known_orders(self, orders: Sequence[Order]) -> dict[str, Any]: ...

    def submit_basket(self, basket: ApprovedBasket) -> list[Any]: ...

    def await_fills(
        self,
        placed: Sequence[Any],
        *,
        cancel_unfilled: bool,
        on_update: Callable[[Any], Any] | None = None,
    ) -> list[Any]: ...


@dataclass(frozen=True, slots=True)
class Denial:
    """A basket the risk gate refused: the run continues, the denial is recorded."""

    reason: str
    message: str
    purpose: str
    orders: tuple[Order, ...]


@dataclass
class StepReport:
    """What one decision step did."""

    target: dict[str, Qty] | None = None
    traded: bool = False
    submitted: list[Any] = field(default_factory=list)
    denials: list[Denial] = field(default_factory=list)
    already_known: list[str] = field(default_factory=list)
    #: Reduce orders a real venue had not filled by the bound; the increase basket was withheld.
    unfilled: list[Any] = field(default_factory=list)
    #: Why the instruction was not traded at all (`one_legged`), None when it was sized.
    unsized: str | None = None


EventHook = Callable[[str, dict[str, Any]], None]


def order_text(order: Order) -> str:
    return f"{order.side.value} {order.qty} {order.symbol}"


def rebalance(
    venue: Venue,
    risk: rm.RiskManager,
    target: Mapping[str, Qty],
    *,
    purpose: Purpose,
    id_parts: tuple[object, ...],
    start_of_day_equity: float,
    reference_prices: Mapping[str, float] | None = None,
    report: StepReport | None = None,
    on_event: EventHook | None = None,
) -> StepReport:
    """Move the venue's holdings to `target`: the reduce basket, then the increase basket, each
    through `pre_trade_check` on a snapshot of the venue taken just before it. Orders the venue
    already knows (a restart) are looked up, never sent twice.

    A real venue fills asynchronously and refuses to open a short while the long it replaces is
    still held (Alpaca: 403 "insufficient qty available"): there the increase basket waits until
    every reduce order has filled (`Venue.await_fills`, bounded), and is withheld -- recorded in
    `report.unfilled` and as an `increase_withheld` event -- when one has not."""
    report = report or StepReport()
    report.target = dict(target)
    reduce, increase = orders_toward(
        venue.holdings(), target, purpose, id_parts, prefix=venue.order_prefix
    )
    if reduce:
        placed = submit_checked(
            venue, risk, reduce, start_of_day_equity, reference_prices, report, on_event
        )
        if increase and placed and not venue.simulated:
            update = None
            if on_event is not None:

                def update(o: Any) -> None:
                    on_event("order_update", _order_payload(o))

            settled = venue.await_fills(placed, cancel_unfilled=True, on_update=update)
            report.unfilled = [o for o in settled if o.filled_qty < o.qty]
            if report.unfilled:
                if on_event is not None:
                    on_event(
                        "increase_withheld",
                        {
                            "reason": "reduce orders not filled within the bound",
                            "unfilled": [_order_payload(o) for o in report.unfilled],
                            "withheld": [order_text(o) for o in increase],
                        },
                    )
                return report
    if increase:
        submit_checked(
            venue, risk, increase, start_of_day_equity, reference_prices, report, on_event
        )
    return report


def submit_checked(
    venue: Venue,
    risk: rm.RiskManager,
    batch: Sequence[Order],
    start_of_day_equity: float,
    reference_prices: Mapping[str, float] | None,
    report: StepReport,
    on_event: EventHook | None = None,
) -> list[Any]:
    """One basket: orders the venue already knows are looked up (never sent twice); the rest
    pass `pre_trade_check` on a snapshot of the venue taken now, then go to the venue, each
    announced first as an `order_intent` event. A denial is recorded in `report` (and sent to
    `on_event`), not raised. Returns the venue's view of the basket's orders (known and placed;
    empty when denied)."""
    known = venue.known_orders(batch)
    if known:
        report.already_known.extend(known)
        report.submitted.extend(known.values())
        batch = [o for o in batch if o.client_order_id not in known]
        if not batch:
            return list(known.values())
    try:
        basket = risk.pre_trade_check(
            batch, *snapshots(venue, batch, start_of_day_equity, reference_prices)
        )
    except RiskViolation as exc:
        report.denials.append(Denial(exc.reason, exc.detail, batch[0].purpose.value, tuple(batch)))
        if on_event is not None:
            on_event(
                "risk_decision",
                {
                    "accepted": False,
                    "reason": exc.reason,
                    "message": exc.detail,
                    "orders": [order_text(o) for o in batch],
                },
            )
        return list(known.values())
    if on_event is not None:
        on_event(
            "risk_decision", {"accepted": True, "orders": [order_text(o) for o in basket.orders]}
        )
        for order in basket.orders:  # write-ahead: the audit names an order before it exists
            on_event(
                "order_intent",
                {
                    "client_order_id": order.client_order_id,
                    "symbol": order.symbol,
                    "side": order.side.value,
                    "qty": order.qty,
                    "purpose": order.purpose.value,
                },
            )
    placed = venue.submit_basket(basket)
    report.submitted.extend(placed)
    report.traded = True
    if on_event is not None:
        for o in placed:
            on_event("order_submitted", _order_payload(o))
    return [*known.values(), *placed]


def _order_payload(o: Any) -> dict[str, Any]:
    return {
        "client_order_id": o.client_order_id,
        "symbol": o.symbol,
        "side": getattr(o.side, "value", o.side),
        "qty": o.qty,
        "status": getattr(o.status, "value", o.status),
        "filled_qty": getattr(o, "filled_qty", o.qty),
        "filled_avg_price": getattr(o, "filled_avg_price", getattr(o, "price", None)),
        "fees": getattr(o, "fees", 0.0),  # USD so far: the journal explains cash with them
    }


def snapshots(
    venue: Venue,
    orders: Sequence[Order],
    start_of_day_equity: float,
    reference_prices: Mapping[str, float] | None,
) -> tuple[rm.PortfolioSnapshot, rm.MarketSnapshot]:
    """The risk gate's view of the venue: account, holdings, quotes and clock, built once."""
    account = venue.account()
    held = venue.holdings()
    symbols = list(held)
    symbols.extend(o.symbol for o in orders if o.symbol not in held)
    quotes = venue.latest_prices(symbols)
    clock = venue.clock()
    portfolio = rm.PortfolioSnapshot(
        equity=account.equity,
        cash=account.cash,
        positions=held,
        start_of_day_equity=start_of_day_equity,
        buying_power=None if venue.simulated else account.buying_power,
    )
    market = rm.MarketSnapshot(
        now=clock.at,
        prices={s: q.price for s, q in quotes.items()},
        price_times={s: q.time for s, q in quotes.items()},
        reference_prices=dict(reference_prices or {}),
        market_open=clock.is_open,
        live=venue.live_checks,
    )
    return portfolio, market


def decide(
    venue: Venue,
    risk: rm.RiskManager,
    config: TradingConfig,
    weights: Sequence[float],
    symbols: Sequence[str],
    *,
    id_parts: tuple[object, ...],
    start_of_day_equity: float,
    reference_prices: Mapping[str, float] | None = None,
    per_usd: bool = False,
    on_event: EventHook | None = None,
) -> StepReport:
    """The decision step: instruction weights (NaN: keep; `per_usd`: USD per leg, else fractions
    of equity) -> `size_target` on the venue's equity and quotes (whole or fractional shares, as
    `config.sizing` says) -> `trade_to` (the rebalance band, then `rebalance`)."""
    target = size_target(
        venue, weights, symbols, per_usd=per_usd, fractional=config.sizing.fractional_shares
    )
    if target is None:
        return StepReport()
    why = one_legged(weights, target)
    if why is not None:
        return StepReport(unsized=why)
    return trade_to(
        venue,
        risk,
        config,
        target,
        id_parts=id_parts,
        start_of_day_equity=start_of_day_equity,
        reference_prices=reference_prices,
        on_event=on_event,
    )


def trade_to(
    venue: Venue,
    risk: rm.RiskManager,
    config: TradingConfig,
    target: Mapping[str, Qty],
    *,
    id_parts: tuple[object, ...],
    start_of_day_equity: float,
    reference_prices: Mapping[str, float] | None = None,
    on_event: EventHook | None = None,
) -> StepReport:
    """A sized target through the rebalance band, then `rebalance`: the second half of `decide`,
    called on its own by the live loop, which saves the target before any order."""
    report = StepReport(target=dict(target))
    if not needs_rebalance(venue.holdings(), target, config.rebalance_band):
        return report
    return rebalance(
        venue,
        risk,
        target,
        purpose=Purpose.ENTRY,
        id_parts=id_parts,
        start_of_day_equity=start_of_day_equity,
        reference_prices=reference_prices,
        report=report,
        on_event=on_event,
    )


def size_target(
    venue: Venue,
    weights: Sequence[float],
    symbols: Sequence[str],
    *,
    per_usd: bool = False,
    fractional: bool = False,
) -> dict[str, Qty] | None:
    """The one sizing rule: signed shares per leg from instruction weights on the venue's equity
    (or USD notionals, `per_usd`) at its latest prices, whole or `fractional`; None for a NaN
    (keep) instruction."""
    if any(math.isnan(w) for w in weights):
        return None
    quotes = venue.latest_prices(symbols)
    missing = [s for s in symbols if s not in quotes]
    if missing:
        raise ConfigurationError(f"no latest price for {', '.join(missing)} from {venue.name}")
    scale = 1.0 if per_usd else venue.account().equity
    prices = [quotes[s].price for s in symbols]
    shares = target_shares(weights, scale, prices, fractional=fractional)
    return dict(zip(symbols, shares, strict=True))


def standing_target(
    instructed: Mapping[str, Qty] | None, owed: Mapping[str, Qty] | None
) -> dict[str, Qty] | None:
    """The target a bar trades toward: its own instruction's, else the one an earlier decision
    still owes (`owed_target`); `trade_to` then compares it with what is held, so "keep" after a
    withheld flip completes the flip instead of keeping the wrong side. None: nothing to do."""
    chosen = instructed if instructed is not None else owed
    return dict(chosen) if chosen is not None else None


def owed_target(report: StepReport) -> dict[str, Qty] | None:
    """The target a step aimed at but left unreached because its increase basket was withheld
    (a reduce a real venue had not filled in time); None when it was reached, refused by the
    gate or never set. A simulated venue fills at once, so the backtest never owes one."""
    if report.unfilled and report.target is not None:
        return dict(report.target)
    return None


def one_legged(weights: Sequence[float], target: Mapping[str, Qty]) -> str | None:
    """Why a sized `target` cannot be traded as a pair (`both_legs_sized` fails), naming the leg
    left at 0 shares; None when both legs are sized (or both are flat)."""
    (s0, q0), (s1, q1) = target.items()
    if both_legs_sized(float(weights[0]), float(weights[1]), float(q0), float(q1)):
        return None
    zero, other = (s0, s1) if q0 == 0 else (s1, s0)
    return (
        f"the capital sizes {other} {target[other]:+} but {zero} 0 shares: a pair is traded both "
        "legs or not at all, so no order (raise the capital or the size per leg)"
    )


def control_drawdown(
    venue: Venue,
    risk: rm.RiskManager,
    at: pd.Timestamp,
    *,
    bar: pd.Timestamp,
    fill_delay_bars: int,
    bars_since_breach: int | None,
    id_parts: tuple[object, ...],
    start_of_day_equity: float,
    reference_prices: Mapping[str, float] | None = None,
    on_event: EventHook | None = None,
) -> StepReport | None:
    """The one drawdown path: record the venue's equity at the close of `bar` with the risk
    manager. A breach while holding halts trading on that bar (only reduce-only baskets pass from
    then on), but no account can act on the close that reveals it: the liquidation, a reduce-only
    basket to flat, is sent `fill_delay_bars` bars later and fills like every other order.
    `bars_since_breach`: bars from the breach's bar (`risk.drawdown_bar`) to `bar` (None when
    unknown); a breach seen on `bar` counts 0. A liquidation the gate refuses (a closed market, a
    price out of its band) stays due: the caller calls again on a later bar. Returns the
    liquidation's report on a bar it is sent, else None; the caller trades no instruction on
    that bar (the liquidation's flat book is the bar's target, and a real venue's holdings do not
    show its fills yet)."""
    held = venue.holdings()
    holding = any(held.values())
    if risk.update_equity(venue.account().equity, at, holding=holding, bar=bar):
        bars_since_breach = 0
        if on_event is not None:
            on_event("halt", {"reason": risk.halt_reason, "equity": venue.account().equity})
    if not liquidation_due(risk.drawdown_bar, bars_since_breach, fill_delay_bars):
        return None
    report = rebalance(
        venue,
        risk,
        dict.fromkeys(held, 0),
        purpose=Purpose.LIQUIDATION,
        id_parts=id_parts,
        start_of_day_equity=start_of_day_equity,
        reference_prices=reference_prices,
        on_event=on_event,
    )
    if not report.denials:
        risk.liquidation_sent()
    return report


def liquidation_due(
    breach_bar: pd.Timestamp | None, bars_since_breach: int | None, fill_delay_bars: int
) -> bool:
    """True when a breach's liquidation is pending (`breach_bar`) and `fill_delay_bars` bars have
    passed since it: the fill timing of every order (a decision on bar t's close fills at
    t + delay)."""
    return (
        breach_bar is not None
        and bars_since_breach is not None
        and bars_since_breach >= fill_delay_bars
    )


def bars_between(index: pd.Index, first: pd.Timestamp, last: pd.Timestamp) -> int:
    """Bars of `index` after `first` up to and including `last` (0 when `last` <= `first`): how
    many bars a breach seen on `first` is old on `last` (`first` need not be in `index`)."""
    lo = int(index.searchsorted(pd.Timestamp(first), side="right"))
    hi = int(index.searchsorted(pd.Timestamp(last), side="right"))
    return max(hi - lo, 0)


def drawdown_ids(bar: Any, strategy: str = STRATEGY) -> tuple[str, str, str]:
    """The id parts of a drawdown liquidation on `bar` (ISO date)."""
    return (strategy, _iso_day(bar), "dd")


def decision_ids(bar: Any, signal_bar: Any, strategy: str = STRATEGY) -> tuple[str, str, str]:
    """The id parts of a decision: strategy, the bar it trades on and the bar its signal is from
    (ISO dates)."""
    return (strategy, _iso_day(bar), _iso_day(signal_bar))


def _iso_day(when: Any) -> str:
    if isinstance(when, str):
        return when[:10]
    return pd.Timestamp(when).strftime("%Y-%m-%d")


__all__ = [
    "STRATEGY",
    "Denial",
    "Instructions",
    "Ledger",
    "SizingConfig",
    "StepReport",
    "TradingConfig",
    "Venue",
    "adv_shares",
    "bars_between",
    "both_legs_sized",
    "control_drawdown",
    "daily_vol",
    "decide",
    "decision_ids",
    "drawdown_ids",
    "instructions_from_states",
    "liquidation_due",
    "model_weights",
    "needs_rebalance",
    "one_legged",
    "owed_target",
    "read_signal_file",
    "rebalance",
    "rule_instructions",
    "signal_weights",
    "size_target",
    "standing_target",
    "submit_checked",
    "target_shares",
    "trade_to",
]
