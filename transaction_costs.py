"""What a US equity order costs: commission, spread, market impact, SEC fee, FINRA TAF, borrow.

Pure functions, no I/O and no clock: every input (quantity, price, volatility, trade date, the
`CostModel`) is passed in. Sign convention: **every cost is a non-negative amount of USD**; the sign
of a quantity or notional is ignored (costs depend on size, the side says the direction).

Costs and units
---------------
- **Commission** (`commission`), USD per order: ``per_share × Q + bps/1e4 × notional``, raised to
  ``commission_min``, then capped at ``commission_max_pct × notional`` (IBKR-style: the cap is
  applied after the minimum), rounded to the cent. 0 for an order of 0 shares.
- **Half-spread** (`spread_cost`), USD: ``Q × price × half_spread_bps / 1e4``. Implicit: it is paid
  inside the fill price, not charged to cash.
- **Market impact** (`impact_fraction`, `market_impact_cost`), the square-root law::

      impact (fraction of price) = Y × σ_daily × sqrt(Q / ADV)

  with Q the shares traded, ADV the average daily volume in shares, σ_daily the standard deviation
  of daily returns (a fraction, 0.02 = 2 %), and Y a dimensionless coefficient of order one; Y ≈ 0.5
  to 1 is typical in the literature (Almgren, Thum, Hauptmann & Li 2005, "Direct estimation of
  equity market impact"; Tóth et al. 2011, "Anomalous price impact and the critical nature of
  liquidity in financial markets"). Impact cost in USD = ``Q × price × impact``; also implicit.
- **SEC Section 31 fee** (`sec_fee`), sells only, USD: ``sell notional × rate / 1e6`` with the rate
  in USD per $1M sold in force on the trade date (`SEC_FEE_RATES`), rounded *up* to the cent.
- **FINRA Trading Activity Fee** (`finra_taf`), sells only, USD: ``min(rate × shares sold, max per
  trade)`` with the rate and cap in force on the trade date (`FINRA_TAF_RATES`), rounded to the
  nearest cent.
- **Short borrow fee** (`borrow_fee`), USD accrued: ``|short notional| × annual rate × days /
  day count`` (actual/360 by default), not rounded: it accrues daily and is summed.

`trade_costs` bundles one order's costs in a `TradeCosts`; `fill_price` is the price the order
fills at (the reference price moved against the trader by half-spread + impact), so that
``Q × |fill_price − price| = spread + impact``. Commission, SEC fee and TAF (`TradeCosts.explicit`)
are charged to cash on top of the fill price.

Every element-wise function takes Python scalars or numpy arrays (broadcast together) and returns a
float for scalar input, an ndarray for array input. The scalar path is plain Python arithmetic (it
is called per order in the backtest loop) and computes exactly what the array path computes.
"""

from __future__ import annotations

import datetime
import functools
import math
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard, overload

import numpy as np
import numpy.typing as npt

from error_handling import ConfigurationError

FloatArray = npt.NDArray[np.float64]

# --- Dated regulatory fee tables ------------------------------------------------------------------
# (effective ISO date, rate), sorted by date. The rate in force on a trade date is the last entry
# with effective date <= trade date; dates before the first entry use the first entry. The SEC rate
# applies to covered sales on "charge dates" (the trade date for regular-way trades) on or after
# the effective date. "unverified" marks values not confirmed against the SEC or FINRA publication
# itself (found only in secondary sources, or inferred).

#: SEC Section 31 fee rate, USD per $1,000,000 of sell notional.
SEC_FEE_RATES: tuple[tuple[str, float], ...] = (
    # $21.80 in force in Feb-Mar 2016: FINRA Information Notice 3/15/16; effective date unverified.
    ("2016-02-16", 21.80),
    # Rate confirmed in force through 2018-05-21 by SEC Fee Rate Advisory #3 for FY2018;
    # effective date 2017-07-04 (FY2017 advisory) unverified.
    ("2017-07-04", 23.10),
    # SEC Fee Rate Advisory #3 for FY2018 (April 17, 2018): $13.00 from May 22, 2018.
    ("2018-05-22", 13.00),
    # SEC Fee Rate Advisory #2 for FY2019 (March 12, 2019): $20.70 from April 16, 2019.
    ("2019-04-16", 20.70),
    # FINRA Information Notice 2/3/2020 (SEC Fee Rate Advisory #2 for FY2020): $22.10 from Feb 18.
    ("2020-02-18", 22.10),
    # SEC Fee Rate Advisory #2 for FY2021 (January 15, 2021): $5.10 from February 25, 2021.
    ("2021-02-25", 5.10),
    # SEC Fee Rate Advisory #2 for FY2022. The rate is confirmed by the FY2023 advisory ($22.90
    # through 2023-02-26); the effective date 2022-05-14 is unverified.
    ("2022-05-14", 22.90),
    # SEC Fee Rate Advisory for FY2023 (January 23, 2023): $8.00 from February 27, 2023.
    ("2023-02-27", 8.00),
    # SEC Fee Rate Advisory #2 for FY2024 (April 2024): $27.80 from May 22, 2024.
    ("2024-05-22", 27.80),
    # SEC FY2025 order (Release 34-102779, April 8, 2025); FINRA Information Notice 4/24/25:
    # $0.00 from May 14, 2025.
    ("2025-05-14", 0.00),
    # SEC FY2026 order (Release 34-104909, February 27, 2026): rate and date unverified (secondary
    # source only).
    ("2026-04-04", 20.60),
)

#: FINRA Trading Activity Fee for covered equity sales: (USD per share sold, max USD per trade).
FINRA_TAF_RATES: tuple[tuple[str, tuple[float, float]], ...] = (
    # FINRA By-Laws Schedule A, Section 1: $0.000119/share, max $5.95 (FINRA TAF rule-flow
    # document); in force through 2021. Effective date unverified.
    ("2012-07-01", (0.000119, 5.95)),
    # SR-FINRA-2020-032 (phased fee increase), 2022 step: unverified.
    ("2022-01-01", (0.000130, 6.49)),
    # SR-FINRA-2020-032, 2023 step: per-share rate seen on broker fee pages; cap unverified.
    ("2023-01-01", (0.000145, 7.27)),
    # SR-FINRA-2020-032, 2024 step: $0.000166/share, max $8.30 (broker fee disclosures, 2024-2025).
    ("2024-01-01", (0.000166, 8.30)),
    # SR-FINRA-2024-019 (Release 34-101696, Nov 2024) phases TAF increases over 2026-2029;
    # 2026 values unverified (secondary source only).
    ("2026-01-01", (0.000195, 9.79)),
)


def _iso_key(iso: str) -> int:
    d = datetime.date.fromisoformat(iso)
    return d.year * 10000 + d.month * 100 + d.day


# Dates as yyyymmdd integers, so a lookup is one bisect over ints.
_SEC_KEYS = [_iso_key(d) for d, _ in SEC_FEE_RATES]
_SEC_VALUES = [rate for _, rate in SEC_FEE_RATES]
_TAF_KEYS = [_iso_key(d) for d, _ in FINRA_TAF_RATES]
_TAF_VALUES = [rate for _, rate in FINRA_TAF_RATES]

_CENT_EPS = 1e-9  # in cents: keeps float noise (27.800000000000001) from rounding a fee up a cent


@functools.lru_cache(maxsize=4096)
def _str_date_key(text: str) -> int:
    s = text.strip()
    try:
        d = datetime.date.fromisoformat(s[:10])
    except ValueError:
        try:
            d = datetime.datetime.fromisoformat(s).date()
        except ValueError:
            raise ValueError(
                f"trade date {text!r} is not an ISO date (expected e.g. '2024-05-22')"
            ) from None
    return d.year * 10000 + d.month * 100 + d.day


def _date_key(trade_date: object) -> int:
    """Trade date as a yyyymmdd int; a timestamp counts by its calendar date in its own timezone."""
    if isinstance(trade_date, datetime.date):  # also datetime and pandas Timestamp (tz or not)
        key = trade_date.year * 10000 + trade_date.month * 100 + trade_date.day
        if key != key:  # pandas NaT: year is nan
            raise ValueError("trade date is NaT; a fee needs the date the order traded on")
        return int(key)
    if isinstance(trade_date, str):
        return _str_date_key(trade_date)
    if isinstance(trade_date, np.datetime64):
        if np.isnat(trade_date):
            raise ValueError("trade date is NaT; a fee needs the date the order traded on")
        return _str_date_key(str(trade_date.astype("datetime64[D]")))
    raise TypeError(
        f"trade date must be a str, date, datetime, numpy.datetime64 or pandas.Timestamp, "
        f"not {type(trade_date).__name__}"
    )


def _lookup(keys: list[int], key: int) -> int:
    return max(bisect_right(keys, key) - 1, 0)


def sec_fee_rate(trade_date: object) -> float:
    """SEC Section 31 fee rate in force on `trade_date`, USD per $1M of sell notional."""
    return _SEC_VALUES[_lookup(_SEC_KEYS, _date_key(trade_date))]


def finra_taf_rate(trade_date: object) -> tuple[float, float]:
    """FINRA TAF in force on `trade_date`: (USD per share sold, max USD per trade)."""
    return _TAF_VALUES[_lookup(_TAF_KEYS, _date_key(trade_date))]


# --- The cost model -------------------------------------------------------------------------------
@dataclass(frozen=True)
class CostModel:
    """How much an order costs. Every field has a default a new user can keep; all are >= 0.

    The regulatory fields default to None, meaning "the dated table for the trade date"
    (`SEC_FEE_RATES`, `FINRA_TAF_RATES`); a number overrides the table on every date.
    """

    #: Commission per share traded, USD (IBKR Pro fixed: 0.005).
    commission_per_share: float = 0.005
    #: Commission as basis points of order notional, added to the per-share part (default 0).
    commission_bps: float = 0.0
    #: Minimum commission per order with qty > 0, USD (default 1.00).
    commission_min: float = 1.0
    #: Commission cap as a fraction of order notional, applied after the minimum (default 0.01 =
    #: 1 %); must be > 0; `math.inf` = no cap.
    commission_max_pct: float = 0.01
    #: Half the bid-ask spread, bps of price (default 2.0): what crossing the spread costs one way.
    half_spread_bps: float = 2.0
    #: Y in the square-root impact law, dimensionless (default 0.5; literature: 0.5-1).
    impact_coefficient: float = 0.5
    #: SEC Section 31 fee, USD per $1M of sell notional; None (default) = `SEC_FEE_RATES` by date.
    sec_fee_per_million: float | None = None
    #: FINRA TAF, USD per share sold; None (default) = `FINRA_TAF_RATES` by date.
    finra_taf_per_share: float | None = None
    #: FINRA TAF cap, USD per trade; None (default) = `FINRA_TAF_RATES` by date.
    finra_taf_max: float | None = None
    #: Annual short borrow fee as a fraction of short notional (default 0.003 = 30 bps, general
    #: collateral).
    borrow_rate_annual: float = 0.003
    #: Annual borrow fee per symbol (fraction), overriding `borrow_rate_annual`; keys upper-cased.
    borrow_rate_overrides: Mapping[str, float] = field(default_factory=dict)
    #: Days in the borrow year: 360 (actual/360, default, US market convention) or 365.
    borrow_day_count: int = 360

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name, unit in (
            ("commission_per_share", "USD per share"),
            ("commission_bps", "bps"),
            ("commission_min", "USD"),
            ("half_spread_bps", "bps"),
            ("impact_coefficient", "(dimensionless)"),
            ("borrow_rate_annual", "(annual fraction)"),
        ):
            _check_amount(problems, name, getattr(self, name), unit)
        for name, unit in (
            ("sec_fee_per_million", "USD per $1M"),
            ("finra_taf_per_share", "USD per share"),
            ("finra_taf_max", "USD"),
        ):
            if getattr(self, name) is not None:
                _check_amount(problems, name, getattr(self, name), unit + " or None")
        pct = self.commission_max_pct
        if not _is_real(pct) or not pct > 0:
            problems.append(
                "commission_max_pct must be > 0 (a fraction of notional; inf = no cap), "
                f"got {pct!r}"
            )
        if self.borrow_day_count not in (360, 365):
            problems.append(
                f"borrow_day_count must be 360 (actual/360) or 365, got {self.borrow_day_count!r}"
            )
        overrides: dict[str, float] = {}
        if not isinstance(self.borrow_rate_overrides, Mapping):
            problems.append(
                "borrow_rate_overrides must be a mapping of symbol to annual rate, got "
                f"{type(self.borrow_rate_overrides).__name__}"
            )
        else:
            for symbol, rate in self.borrow_rate_overrides.items():
                if not isinstance(symbol, str) or not symbol.strip():
                    problems.append(f"borrow_rate_overrides key {symbol!r} is not a symbol")
                    continue
                _check_amount(problems, f"borrow_rate_overrides[{symbol!r}]", rate, "(fraction)")
                overrides[symbol.strip().upper()] = rate
        if problems:
            raise ConfigurationError("invalid cost model: " + "; ".join(problems))
        # A private copy: the model stays frozen even if the caller's dict changes later.
        object.__setattr__(self, "borrow_rate_overrides", overrides)

    @classmethod
    def flat(cls, commission: float) -> CostModel:
        """Only a flat `commission` USD per order (qty > 0): no spread, impact, fees or borrow.

        For hand-checkable backtests: every order with shares costs exactly `commission` (to the
        cent) and fills at the reference price.
        """
        return cls(
            commission_per_share=0.0,
            commission_bps=0.0,
            commission_min=commission,
            commission_max_pct=math.inf,
            half_spread_bps=0.0,
            impact_coefficient=0.0,
            sec_fee_per_million=0.0,
            finra_taf_per_share=0.0,
            finra_taf_max=0.0,
            borrow_rate_annual=0.0,
        )

    @classmethod
    def zero(cls) -> CostModel:
        """No costs at all: every cost function returns 0 and orders fill at the reference price."""
        return cls.flat(0.0)


def _is_real(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def _check_amount(problems: list[str], name: str, value: Any, unit: str) -> None:
    if not _is_real(value) or not math.isfinite(value) or value < 0:
        problems.append(f"{name} must be a finite number >= 0 {unit}, got {value!r}")


# --- Element-wise cost functions ------------------------------------------------------------------
def _is_scalar(x: object) -> TypeGuard[float]:
    # Python int/float and numpy float64 (a float subclass) take the plain-Python path.
    return isinstance(x, int | float)


def _out(x: npt.NDArray[Any]) -> float | FloatArray:
    return float(x) if x.ndim == 0 else x.astype(np.float64, copy=False)


def _arr(x: npt.ArrayLike) -> FloatArray:
    return np.asarray(x, dtype=np.float64)


@overload
def commission(qty: float, price: float, model: CostModel) -> float: ...
@overload
def commission(
    qty: npt.ArrayLike, price: npt.ArrayLike, model: CostModel
) -> float | FloatArray: ...
def commission(qty: npt.ArrayLike, price: npt.ArrayLike, model: CostModel) -> float | FloatArray:
    """Commission per order, USD, rounded to the cent; 0 for 0 shares.

    ``min(max(per_share × Q + bps/1e4 × notional, commission_min), commission_max_pct × notional)``
    """
    per_share, bps = model.commission_per_share, model.commission_bps * 1e-4
    floor, cap_pct = model.commission_min, model.commission_max_pct
    if _is_scalar(qty) and _is_scalar(price):
        q = abs(float(qty))
        if q == 0.0:
            return 0.0
        notional = q * float(price)
        c = per_share * q + bps * notional
        if c < floor:
            c = floor
        if cap_pct != math.inf and c > cap_pct * notional:
            c = cap_pct * notional
        return round(c * 100.0) / 100.0
    qa = np.abs(_arr(qty))
    notional_a = qa * _arr(price)
    ca = np.maximum(per_share * qa + bps * notional_a, floor)
    if cap_pct != math.inf:
        ca = np.minimum(ca, cap_pct * notional_a)
    return _out(np.where(qa == 0.0, 0.0, np.round(ca, 2)))


@overload
def spread_cost(qty: float, price: float, model: CostModel) -> float: ...
@overload
def spread_cost(
    qty: npt.ArrayLike, price: npt.ArrayLike, model: CostModel
) -> float | FloatArray: ...
def spread_cost(qty: npt.ArrayLike, price: npt.ArrayLike, model: CostModel) -> float | FloatArray:
    """Half-spread paid crossing the book, USD: ``Q × price × half_spread_bps / 1e4``, unrounded."""
    bps = model.half_spread_bps
    if _is_scalar(qty) and _is_scalar(price):
        return abs(float(qty)) * float(price) * bps / 1e4
    return _out(np.abs(_arr(qty)) * _arr(price) * bps / 1e4)


def _check_liquidity(daily_vol: float, adv_shares: float) -> None:
    if not adv_shares > 0:
        raise ConfigurationError(
            f"average daily volume must be > 0 shares for the market impact model, got "
            f"{adv_shares!r}; set a volume source or ExecutionConfig.default_adv_usd"
        )
    if not daily_vol >= 0:
        raise ConfigurationError(
            f"daily volatility must be a number >= 0 (std of daily returns), got {daily_vol!r}"
        )


@overload
def impact_fraction(qty: float, daily_vol: float, adv_shares: float, model: CostModel) -> float: ...
@overload
def impact_fraction(
    qty: npt.ArrayLike, daily_vol: npt.ArrayLike, adv_shares: npt.ArrayLike, model: CostModel
) -> float | FloatArray: ...
def impact_fraction(
    qty: npt.ArrayLike, daily_vol: npt.ArrayLike, adv_shares: npt.ArrayLike, model: CostModel
) -> float | FloatArray:
    """Square-root market impact as a fraction of price: ``Y × σ_daily × sqrt(Q / ADV)``.

    0 for 0 shares. ConfigurationError when ADV <= 0 shares or σ_daily is negative or NaN.
    """
    y = model.impact_coefficient
    if _is_scalar(qty) and _is_scalar(daily_vol) and _is_scalar(adv_shares):
        vol, adv = float(daily_vol), float(adv_shares)
        _check_liquidity(vol, adv)
        return y * vol * math.sqrt(abs(float(qty)) / adv)
    qa, vol_a, adv_a = np.abs(_arr(qty)), _arr(daily_vol), _arr(adv_shares)
    if not (adv_a > 0).all():
        _check_liquidity(0.0, float(adv_a[~(adv_a > 0)].flat[0]))
    if not (vol_a >= 0).all():
        _check_liquidity(float(vol_a[~(vol_a >= 0)].flat[0]), 1.0)
    return _out(y * vol_a * np.sqrt(qa / adv_a))


@overload
def market_impact_cost(
    qty: float, price: float, daily_vol: float, adv_shares: float, model: CostModel
) -> float: ...
@overload
def market_impact_cost(
    qty: npt.ArrayLike,
    price: npt.ArrayLike,
    daily_vol: npt.ArrayLike,
    adv_shares: npt.ArrayLike,
    model: CostModel,
) -> float | FloatArray: ...
def market_impact_cost(
    qty: npt.ArrayLike,
    price: npt.ArrayLike,
    daily_vol: npt.ArrayLike,
    adv_shares: npt.ArrayLike,
    model: CostModel,
) -> float | FloatArray:
    """Market impact paid, USD: ``Q × price × impact_fraction`` (unrounded)."""
    frac = impact_fraction(qty, daily_vol, adv_shares, model)
    if _is_scalar(qty) and _is_scalar(price) and isinstance(frac, float):
        return abs(float(qty)) * float(price) * frac
    return _out(np.abs(_arr(qty)) * _arr(price) * frac)


def _ceil_cent(usd: float) -> float:
    return math.ceil(usd * 100.0 - _CENT_EPS) / 100.0 if usd > 0 else 0.0


def _sec_rate(date_key: int, model: CostModel) -> float:
    """The model's SEC rate, or the table's on that yyyymmdd date (USD per $1M sold)."""
    rate = model.sec_fee_per_million
    return _SEC_VALUES[_lookup(_SEC_KEYS, date_key)] if rate is None else rate


def _taf_rate(date_key: int, model: CostModel) -> tuple[float, float]:
    """(USD per share sold, max USD per trade): the model's, else the table's on that date."""
    per_share, cap = model.finra_taf_per_share, model.finra_taf_max
    if per_share is None or cap is None:
        table_rate, table_cap = _TAF_VALUES[_lookup(_TAF_KEYS, date_key)]
        per_share = table_rate if per_share is None else per_share
        cap = table_cap if cap is None else cap
    return per_share, cap


def _round_taf(fee: float, cap: float) -> float:
    return round(min(fee, cap) * 100.0) / 100.0


@overload
def sec_fee(sell_notional: float, trade_date: object, model: CostModel) -> float: ...
@overload
def sec_fee(
    sell_notional: npt.ArrayLike, trade_date: object, model: CostModel
) -> float | FloatArray: ...
def sec_fee(
    sell_notional: npt.ArrayLike, trade_date: object, model: CostModel
) -> float | FloatArray:
    """SEC Section 31 fee on a sale of `sell_notional` USD, rounded up to the cent; 0 for 0 USD.

    The rate is `model.sec_fee_per_million` or, when None, the `SEC_FEE_RATES` entry for
    `trade_date` (a str, date, datetime, numpy.datetime64 or pandas Timestamp; one date per call).
    """
    rate = _sec_rate(_date_key(trade_date), model)
    if _is_scalar(sell_notional):
        return _ceil_cent(abs(float(sell_notional)) * rate / 1e6)
    raw = np.abs(_arr(sell_notional)) * rate / 1e6
    return _out(np.where(raw > 0, np.ceil(raw * 100.0 - _CENT_EPS) / 100.0, 0.0))


@overload
def finra_taf(shares_sold: float, trade_date: object, model: CostModel) -> float: ...
@overload
def finra_taf(
    shares_sold: npt.ArrayLike, trade_date: object, model: CostModel
) -> float | FloatArray: ...
def finra_taf(
    shares_sold: npt.ArrayLike, trade_date: object, model: CostModel
) -> float | FloatArray:
    """FINRA Trading Activity Fee on a sale, USD: ``min(rate × shares, max per trade)``.

    Rounded to the nearest cent; 0 for 0 shares. Rate and cap each come from the model when not
    None, otherwise from `FINRA_TAF_RATES` for `trade_date` (one date per call).
    """
    per_share, cap = _taf_rate(_date_key(trade_date), model)
    if _is_scalar(shares_sold):
        return _round_taf(per_share * abs(float(shares_sold)), cap)
    fee_a = np.minimum(per_share * np.abs(_arr(shares_sold)), cap)
    return _out(np.round(fee_a, 2))


def borrow_rate(symbol: str, model: CostModel) -> float:
    """Annual borrow fee (fraction of short notional) for `symbol`: its override or the default."""
    return model.borrow_rate_overrides.get(symbol.upper(), model.borrow_rate_annual)


@overload
def borrow_fee(short_notional: float, days: float, symbol: str, model: CostModel) -> float: ...
@overload
def borrow_fee(
    short_notional: npt.ArrayLike, days: npt.ArrayLike, symbol: str, model: CostModel
) -> float | FloatArray: ...
def borrow_fee(
    short_notional: npt.ArrayLike, days: npt.ArrayLike, symbol: str, model: CostModel
) -> float | FloatArray:
    """Borrow fee accrued on a short, USD: ``|notional| × rate × days / borrow_day_count``.

    Unrounded (accruals are summed, the broker rounds the monthly charge). `days` are calendar
    days held (actual/360: a weekend counts); ValueError if any is negative.
    """
    rate, day_count = borrow_rate(symbol, model), model.borrow_day_count
    if _is_scalar(short_notional) and _is_scalar(days):
        d = float(days)
        if not d >= 0:
            raise ValueError(f"days held must be >= 0, got {days!r}")
        return abs(float(short_notional)) * rate * d / day_count
    d_a = _arr(days)
    if not (d_a >= 0).all():
        raise ValueError(f"days held must be >= 0, got {d_a[~(d_a >= 0)].flat[0]!r}")
    return _out(np.abs(_arr(short_notional)) * rate * d_a / day_count)


# --- One order ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TradeCosts:
    """The costs of one order, USD, each >= 0."""

    #: Broker commission, charged to cash.
    commission: float = 0.0
    #: Half-spread: implicit, inside the fill price.
    spread: float = 0.0
    #: Market impact: implicit, inside the fill price.
    impact: float = 0.0
    #: SEC Section 31 fee (sells only), charged to cash.
    sec_fee: float = 0.0
    #: FINRA Trading Activity Fee (sells only), charged to cash.
    finra_taf: float = 0.0

    @property
    def explicit(self) -> float:
        """Commission + SEC fee + TAF, USD: charged to cash on top of the fill price."""
        return self.commission + self.sec_fee + self.finra_taf

    @property
    def total(self) -> float:
        """Everything the order cost, USD: explicit + spread + impact."""
        return self.explicit + self.spread + self.impact


def _is_sell(side: str) -> bool:
    if side == "sell":
        return True
    if side == "buy":
        return False
    lowered = str(side).lower()
    if lowered in ("buy", "sell"):
        return lowered == "sell"
    raise ValueError(f"order side must be 'buy' or 'sell', got {side!r}")


def _order_qty(qty: float) -> float:
    q = float(qty)
    if not q >= 0:
        raise ValueError(
            f"order quantity must be >= 0 shares (the side gives the sign), got {qty!r}"
        )
    return q


def trade_costs(
    side: str,
    qty: float,
    price: float,
    *,
    daily_vol: float,
    adv_shares: float,
    trade_date: object,
    model: CostModel,
) -> TradeCosts:
    """Every cost of one order of `qty` shares (>= 0) at reference `price` USD on `trade_date`.

    `side` is "buy" or "sell" (or a StrEnum equal to one); the SEC fee and TAF apply to sells only.
    Scalars only; for qty == 0 every cost is 0.
    """
    sell = _is_sell(side)
    q = _order_qty(qty)
    if q == 0.0:
        return TradeCosts()
    p = float(price)
    frac = impact_fraction(q, float(daily_vol), float(adv_shares), model)
    return TradeCosts(
        commission=commission(q, p, model),
        spread=spread_cost(q, p, model),
        impact=q * p * frac,
        sec_fee=sec_fee(q * p, trade_date, model) if sell else 0.0,
        finra_taf=finra_taf(q, trade_date, model) if sell else 0.0,
    )


def fill_price(
    side: str,
    qty: float,
    price: float,
    *,
    daily_vol: float,
    adv_shares: float,
    model: CostModel,
) -> float:
    """Price an order of `qty` shares fills at, USD: `price` moved against the trader.

    ``price × (1 + s)`` for buys, ``price × (1 − s)`` for sells, with ``s = half_spread_bps / 1e4 +
    impact_fraction``; `price` itself for qty == 0. ValueError if ``s >= 1`` (an order so large
    against the day's volume that the model would fill it at a non-positive price).
    """
    sell = _is_sell(side)
    q = _order_qty(qty)
    p = float(price)
    if q == 0.0:
        return p
    s = model.half_spread_bps / 1e4 + impact_fraction(q, float(daily_vol), float(adv_shares), model)
    if s >= 1.0:
        raise ValueError(
            f"spread + impact is {s:.0%} of the price for {q:.0f} shares against an average daily "
            f"volume of {float(adv_shares):.0f} shares; the order is far too large to model"
        )
    return p * (1.0 - s) if sell else p * (1.0 + s)


def order_fill(
    side: str,
    qty: float,
    price: float,
    *,
    daily_vol: float,
    adv_shares: float,
    trade_date: object,
    model: CostModel,
) -> tuple[float, TradeCosts]:
    """(fill price, costs) of one order in a single pass: the executor's per-fill call.

    The same numbers as `fill_price(...)` and `trade_costs(...)` (a test holds them equal), with
    the impact computed once and plain float arithmetic, because the backtest calls this for
    every simulated fill.
    """
    sell = _is_sell(side)
    q = _order_qty(qty)
    p = float(price)
    if q == 0.0:
        return p, TradeCosts()
    vol, adv = float(daily_vol), float(adv_shares)
    _check_liquidity(vol, adv)
    frac = model.impact_coefficient * vol * math.sqrt(q / adv)
    s = model.half_spread_bps / 1e4 + frac
    if s >= 1.0:
        fill_price("sell" if sell else "buy", q, p, daily_vol=vol, adv_shares=adv, model=model)
    sec = taf = 0.0
    if sell:  # one date lookup for both fees
        key = _date_key(trade_date)
        sec = _ceil_cent(q * p * _sec_rate(key, model) / 1e6)
        per_share, cap = _taf_rate(key, model)
        taf = _round_taf(per_share * q, cap)
    costs = TradeCosts(
        commission=commission(q, p, model),
        spread=q * p * model.half_spread_bps / 1e4,
        impact=q * p * frac,
        sec_fee=sec,
        finra_taf=taf,
    )
    return (p * (1.0 - s) if sell else p * (1.0 + s)), costs
