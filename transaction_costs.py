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
  nearest cent. 0 before the TAF began (October 2002). Shares are the quantity traded, which on
  split-adjusted historical prices is far more shares than were traded then, so old sells mostly
  pay the cap.
- Both fees are 0 under ``CostModel(regulatory_fees=FeeSchedule.NONE)`` (``--fees none``);
  `fee_assumptions` states in words what a run assumed for them.
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
import enum
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
# with effective date <= trade date. The first row of each table, dated 0001-01-01, is the rate
# before the fee existed (0), so every date has an entry and a fee is 0 before it began. The SEC
# rate applies to covered sales on "charge dates" (the trade date for regular-way trades) on or
# after the effective date. Each row cites its source; "unverified" marks a value or a date not
# confirmed against the SEC, NASD or FINRA publication itself (found only in a secondary source, or
# inferred, e.g. from the statutory lag after an appropriation). Where a rate in between is
# unknown, the comment says which rate is carried and why.

#: SEC Section 31 fee rate, USD per $1,000,000 of sell notional.
SEC_FEE_RATES: tuple[tuple[str, float], ...] = (
    # No Section 31 fee before the Securities Exchange Act of 1934.
    ("0001-01-01", 0.00),
    # Exchange Act enacted June 6, 1934 (Section 31 is in the original Act). The earliest rate
    # documented here is "1/300 of one percent" ($33.33 per $1M; SRO tables print it 0.0000333),
    # struck by the Fee Relief Act (Pub. L. 107-123) from 2001-12-28; a 1998 Traders Magazine
    # article gives the same rate. When 1/300 began is not documented here: it is carried back to
    # 1934, unverified for any date before 1998 (earlier rates, if different, are not modelled).
    ("1934-06-06", 100.0 / 3.0),
    # Fee Relief Act: $15.00 from December 28, 2001 (NASD Member Alerts 12/27/01 and 12/28/01;
    # SEC Fee Rate Advisory #8, January 16, 2002).
    ("2001-12-28", 15.00),
    # FY2002 mid-year adjustment (NASD Member Alert 3/4/02). Rate confirmed by NASD Member Alert
    # 3/3/03 ("current rate of $30.10"); the April 1 date from a secondary table: unverified.
    ("2002-04-01", 30.10),
    # FY2003 rate from March 22, 2003: NASD Member Alert 2/24/03; SEC Fee Rate Advisory #12.
    ("2003-03-22", 25.20),
    # FY2003 mid-year adjustment from April 1, 2003: SEC Fee Rate Advisory #12 (Feb 28, 2003).
    ("2003-04-01", 46.80),
    # FY2004 rate from February 22, 2004: NASD Member Alert 1/28/04 (Fee Rate Advisory #7).
    ("2004-02-22", 39.00),
    # FY2004 mid-year adjustment from April 1, 2004: NASD Member Alert 3/4/04 (Advisory #8).
    ("2004-04-01", 23.40),
    # FY2005 rate from January 7, 2005: secondary table only (traderstatus.com): unverified.
    ("2005-01-07", 32.90),
    # FY2005 mid-year adjustment (Fee Rate Advisory #7 for FY2005). Rate confirmed by NASD Member
    # Alert 9/30/05 ("current rate of $41.80"); the April 1 date from a secondary table: unverified.
    ("2005-04-01", 41.80),
    # FY2006: $30.70 thirty days after the FY2006 appropriation (NASD Member Alert 9/30/05); the
    # date, December 22, 2005, from a secondary table: unverified.
    ("2005-12-22", 30.70),
    # FY2007: $15.30 thirty days after the regular appropriation (SEC Fee Rate Advisory #4 for
    # FY2007, Nov 17, 2006); in force by May 7, 2007 (Advisory #1 for FY2008). Date inferred as 30
    # days after the full-year continuing resolution of February 15, 2007: unverified.
    ("2007-03-17", 15.30),
    # FY2008: $11.00 thirty days after the appropriation (Advisory #1 for FY2008); in force until
    # the mid-year change (FINRA Information Notice 3/10/08). Date inferred as 30 days after the
    # Consolidated Appropriations Act, 2008 (December 26, 2007): unverified.
    ("2008-01-25", 11.00),
    # FY2008 mid-year adjustment from April 1, 2008: FINRA Information Notice 3/10/08.
    ("2008-04-01", 5.60),
    # FY2009: rate in force from spring 2009 to January 2010 (SEC Fee Rate Advisory #1 for FY2010;
    # FINRA Information Notice 10/2/09). Date inferred as 30 days after the Omnibus Appropriations
    # Act, 2009 (March 11, 2009); $5.60 carried until then: unverified.
    ("2009-04-10", 25.70),
    # FY2010 rate from January 15, 2010 (SEC release 2009-270, as summarized by Lexology; the rate
    # itself is in Fee Rate Advisories #1 and #2 for FY2010): date unverified.
    ("2010-01-15", 12.70),
    # FY2010 mid-year adjustment from April 1, 2010: FINRA Information Notice 3/10/10.
    ("2010-04-01", 16.90),
    # FY2011 rate from January 21, 2011: SEC Fee Rate Advisory #5 for FY2011 (Dec 22, 2010).
    ("2011-01-21", 19.20),
    # FY2012 rate from February 21, 2012 (order 34-66202, Jan 20, 2012), as summarized by Corporate
    # Financial Weekly Digest: unverified.
    ("2012-02-21", 18.00),
    # FY2012 mid-year adjustment (order of March 2012, 77 FR 13663); rate confirmed in force by SEC
    # Fee Rate Advisory #2 for FY2013 (Nov 15, 2012); the statutory April 1 date: unverified.
    ("2012-04-01", 22.40),
    # FY2013 rate (order 34-69449, Apr 25, 2013: 60 days after the March 26, 2013 resolution);
    # rate confirmed by FINRA Information Notice 3/3/14. Date inferred: unverified.
    ("2013-05-25", 17.40),
    # FY2014 rate from March 18, 2014: FINRA Information Notice 3/3/14; still in force October 2014
    # (FINRA Information Notice 10/7/14). The FY2015 order (34-74057, Jan 15, 2015) changed the
    # rate in early 2015 to a value not found in the sources searched: $22.10 is carried until the
    # FY2016 rate.
    ("2014-03-18", 22.10),
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
    # No TAF before NASD introduced it. It replaced NASD's Regulatory Fee, a member fee that was not
    # charged per sale (SR-NASD-2002-98); NASD's "Section 3" transaction fee is its pass-through of
    # the SEC Section 31 fee, modelled by SEC_FEE_RATES, not a TAF.
    ("0001-01-01", (0.0, 0.0)),
    # TAF pilot (SR-NASD-2002-98) from October 1, 2002: NASD "Adjustment to NASD Trading Activity
    # Fee Initial Rates" (10/17/02), quoted on elitetrader.com: $0.0001/share, max $10 per trade,
    # retroactive to October 1, 2002: unverified. NTM 03-43 raised the equity rate from September 1,
    # 2003 (SR-NASD-2003-93); a broker notice in the same thread gives $0.0001/$10 for that date,
    # so the rate in early-to-mid 2003 may have been lower. $0.0001/$10 is carried (unverified).
    ("2002-10-01", (0.0001, 10.00)),
    # NTM 04-84: rate and per-trade cap reduced from November 1, 2004. FINRA Regulatory Notice
    # 11-27 confirms $0.000075/share "in place for over six years" and a $3.75 cap in 2011; that
    # the cap was set on this date: unverified.
    ("2004-11-01", (0.000075, 3.75)),
    # FINRA Regulatory Notice 11-27: $0.000090/share, max $4.50, from July 1, 2011.
    ("2011-07-01", (0.000090, 4.50)),
    # FINRA Regulatory Notice 12-06: $0.000095/share, max $4.75, from March 1, 2012.
    ("2012-03-01", (0.000095, 4.75)),
    # FINRA By-Laws Schedule A, Section 1: $0.000119/share, max $5.95 (FINRA TAF rule-flow
    # document); in force through 2021. Proposed May 2, 2012 (77 FR 27527); effective date
    # unverified.
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
    # Every table starts at 0001-01-01 (datetime.date.min), so every date finds a row.
    return max(bisect_right(keys, key) - 1, 0)


def sec_fee_rate(trade_date: object) -> float:
    """SEC Section 31 fee rate in force on `trade_date`, USD per $1M of sell notional (table)."""
    return _SEC_VALUES[_lookup(_SEC_KEYS, _date_key(trade_date))]


def finra_taf_rate(trade_date: object) -> tuple[float, float]:
    """FINRA TAF in force on `trade_date`: (USD per share sold, max USD per trade); (0, 0) before
    the TAF began."""
    return _TAF_VALUES[_lookup(_TAF_KEYS, _date_key(trade_date))]


# --- The cost model -------------------------------------------------------------------------------
class FeeSchedule(enum.StrEnum):
    """Which regulatory fees (SEC Section 31 fee, FINRA TAF) a cost model charges on sells."""

    #: The dated tables for the trade date, or the model's per-field overrides where set.
    DEFAULT = "default"
    #: Neither fee, whatever the other fields say (commission, spread, impact, borrow unchanged).
    NONE = "none"


@dataclass(frozen=True)
class CostModel:
    """How much an order costs. Every field has a default a new user can keep; all are >= 0.

    Under `regulatory_fees` = DEFAULT the regulatory fields default to None, meaning "the dated
    table for the trade date" (`SEC_FEE_RATES`, `FINRA_TAF_RATES`); a number overrides the table
    on every date. Under NONE the SEC fee and TAF are 0 and those fields are ignored.
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
    #: SEC Section 31 fee and FINRA TAF on sells: DEFAULT (default) = the dated tables or the
    #: overrides below; NONE = neither fee. A string ("default", "none") is accepted.
    regulatory_fees: FeeSchedule = FeeSchedule.DEFAULT
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
        schedule = self.regulatory_fees
        if not isinstance(schedule, FeeSchedule):
            try:
                schedule = FeeSchedule(schedule)
            except ValueError:
                choices = ", ".join(repr(m.value) for m in FeeSchedule)
                problems.append(f"regulatory_fees must be one of {choices}, got {schedule!r}")
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
        object.__setattr__(self, "regulatory_fees", schedule)

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
            regulatory_fees=FeeSchedule.NONE,
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


# --- The one-order rules, compiled as they are by `fast_engine` ---------------------------------
# Plain float arithmetic in the subset numba compiles: the interpreted path (live, paper, the
# backtest's per-bar path) calls these functions, and the compiled backtest compiles the very same
# ones, so no cost formula exists twice.
def commission_usd(
    q: float, price: float, per_share: float, bps: float, floor: float, cap_pct: float
) -> float:
    """Commission of one order of `q` >= 0 shares, USD to the cent; `bps` as a fraction (1e-4 x
    basis points), `cap_pct` may be inf."""
    if q == 0.0:
        return 0.0
    notional = q * price
    c = per_share * q + bps * notional
    if c < floor:
        c = floor
    if cap_pct != math.inf and c > cap_pct * notional:
        c = cap_pct * notional
    return round(c * 100.0) / 100.0


def ceil_cent(usd: float) -> float:
    """`usd` rounded up to the cent (0 for <= 0), ignoring float noise below 1e-9 cent."""
    return math.ceil(usd * 100.0 - _CENT_EPS) / 100.0 if usd > 0 else 0.0


def round_taf(fee: float, cap: float) -> float:
    """The TAF: `fee` capped at `cap`, to the nearest cent."""
    return round(min(fee, cap) * 100.0) / 100.0


def fill_terms(
    sell: bool,
    q: float,
    p: float,
    vol: float,
    adv: float,
    per_share: float,
    bps: float,
    floor: float,
    cap_pct: float,
    half_spread_bps: float,
    impact_coefficient: float,
    sec_rate: float,
    taf_per_share: float,
    taf_cap: float,
) -> tuple[float, float, float, float, float, float]:
    """(fill price, commission, spread, impact, SEC fee, TAF) of one order of `q` > 0 shares at
    reference price `p`, USD; the fees apply to sells only. The fill price is NaN when spread +
    impact reach the whole price (the caller refuses the order)."""
    frac = impact_coefficient * vol * math.sqrt(q / adv)
    s = half_spread_bps / 1e4 + frac
    sec = 0.0
    taf = 0.0
    if sell:
        sec = ceil_cent(q * p * sec_rate / 1e6)
        taf = round_taf(taf_per_share * q, taf_cap)
    price = math.nan
    if s < 1.0:
        price = p * (1.0 - s) if sell else p * (1.0 + s)
    return (
        price,
        commission_usd(q, p, per_share, bps, floor, cap_pct),
        q * p * half_spread_bps / 1e4,
        q * p * frac,
        sec,
        taf,
    )


def fee_segments(model: CostModel) -> tuple[npt.NDArray[np.int64], FloatArray]:
    """The fee dates of both tables as yyyymmdd keys, ascending, and (n, 3) SEC rate (USD per $1M
    sold), TAF per share and TAF cap in force from each key to the next: `_sec_rate` and
    `_taf_rate` asked once per segment (the compiled backtest looks a bar's date up here)."""
    keys = sorted(set(_SEC_KEYS) | set(_TAF_KEYS))
    rates = [(_sec_rate(k, model), *_taf_rate(k, model)) for k in keys]
    return np.array(keys, dtype=np.int64), np.array(rates, dtype=np.float64)


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
        return commission_usd(abs(float(qty)), float(price), per_share, bps, floor, cap_pct)
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


def _sec_rate(date_key: int, model: CostModel) -> float:
    """The model's SEC rate, or the table's on that yyyymmdd date (USD per $1M sold); 0 under
    FeeSchedule.NONE. Every SEC fee path (scalar, array, order_fill) goes through here."""
    if model.regulatory_fees is FeeSchedule.NONE:
        return 0.0
    rate = model.sec_fee_per_million
    return _SEC_VALUES[_lookup(_SEC_KEYS, date_key)] if rate is None else rate


def _taf_rate(date_key: int, model: CostModel) -> tuple[float, float]:
    """(USD per share sold, max USD per trade): the model's, else the table's on that date;
    (0, 0) under FeeSchedule.NONE. Every TAF path goes through here."""
    if model.regulatory_fees is FeeSchedule.NONE:
        return 0.0, 0.0
    per_share, cap = model.finra_taf_per_share, model.finra_taf_max
    if per_share is None or cap is None:
        table_rate, table_cap = _TAF_VALUES[_lookup(_TAF_KEYS, date_key)]
        per_share = table_rate if per_share is None else per_share
        cap = table_cap if cap is None else cap
    return per_share, cap


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
    `trade_date` (a str, date, datetime, numpy.datetime64 or pandas Timestamp; one date per call);
    0 under `FeeSchedule.NONE`.
    """
    rate = _sec_rate(_date_key(trade_date), model)
    if _is_scalar(sell_notional):
        return ceil_cent(abs(float(sell_notional)) * rate / 1e6)
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
    None, otherwise from `FINRA_TAF_RATES` for `trade_date` (one date per call); 0 under
    `FeeSchedule.NONE` and, from the table, before the TAF began.
    """
    per_share, cap = _taf_rate(_date_key(trade_date), model)
    if _is_scalar(shares_sold):
        return round_taf(per_share * abs(float(shares_sold)), cap)
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
    sec_rate = taf_rate = taf_cap = 0.0
    if sell:  # one date lookup for both fees
        key = _date_key(trade_date)
        sec_rate = _sec_rate(key, model)
        taf_rate, taf_cap = _taf_rate(key, model)
    price, fee, spread, impact, sec, taf = fill_terms(
        sell,
        q,
        p,
        vol,
        adv,
        model.commission_per_share,
        model.commission_bps * 1e-4,
        model.commission_min,
        model.commission_max_pct,
        model.half_spread_bps,
        model.impact_coefficient,
        sec_rate,
        taf_rate,
        taf_cap,
    )
    if price != price:  # NaN: spread + impact >= 100 % of the price; raises with the figures
        fill_price("sell" if sell else "buy", q, p, daily_vol=vol, adv_shares=adv, model=model)
    return price, TradeCosts(fee, spread, impact, sec, taf)


# --- What a run assumed ---------------------------------------------------------------------------
_TAF_NOTE = (
    "FINRA TAF is charged per split-adjusted share: on adjusted historical prices it mostly hits "
    "the per-trade cap"
)


def _in_force(table: tuple[tuple[str, Any], ...], keys: list[int], lo: int, hi: int) -> list[Any]:
    """The rows of `table` in force on some date of lo..hi (yyyymmdd), oldest first."""
    return list(table[_lookup(keys, lo) : _lookup(keys, hi) + 1])


def _usd_range(values: list[float], fmt: str) -> str:
    low, high = min(values), max(values)
    return f"${low:{fmt}}" if low == high else f"${low:{fmt}} .. ${high:{fmt}}"


def _per_share(usd: float) -> str:
    return f"${usd:.6f}".rstrip("0").rstrip(".")


def _per_share_range(values: list[float]) -> str:
    low, high = min(values), max(values)
    return _per_share(low) if low == high else f"{_per_share(low)} .. {_per_share(high)}"


def _dated(rows: list[Any]) -> str:
    """'(dated table, 6 rates, 2017-07-04 .. 2022-05-14)' for the rows in force."""
    if len(rows) == 1:
        return f"(dated table, {rows[0][0]} rate)"
    return f"(dated table, {len(rows)} rates, {rows[0][0]} .. {rows[-1][0]})"


def _sec_assumption(model: CostModel, lo: int, hi: int) -> str:
    if model.sec_fee_per_million is not None:
        rate = model.sec_fee_per_million
        return f"SEC Section 31 fee: ${rate:.2f} per $1M sold on every date (override)"
    rows = _in_force(SEC_FEE_RATES, _SEC_KEYS, lo, hi)
    began = SEC_FEE_RATES[1][0]
    before = rows[0] == SEC_FEE_RATES[0]
    rows = rows[1:] if before else rows
    if not rows:
        return f"SEC Section 31 fee: none (it began {began})"
    then = f"none before {began}, then " if before else ""
    rates = _usd_range([rate for _, rate in rows], ".2f")
    return f"SEC Section 31 fee: {then}{rates} per $1M sold {_dated(rows)}"


def _taf_assumption(model: CostModel, lo: int, hi: int) -> tuple[str, bool]:
    """The TAF line, and whether the run may have charged any TAF."""
    per_share, cap = model.finra_taf_per_share, model.finra_taf_max
    if per_share is not None and cap is not None:
        return (
            f"FINRA TAF: {_per_share(per_share)} per share sold, max ${cap:.2f} per trade on every "
            "date (override)",
            per_share > 0 and cap > 0,
        )
    rows = _in_force(FINRA_TAF_RATES, _TAF_KEYS, lo, hi)
    began = FINRA_TAF_RATES[1][0]
    before = rows[0] == FINRA_TAF_RATES[0]
    rows = rows[1:] if before else rows
    if not rows:
        return f"FINRA TAF: none (it began {began})", False
    rates = _per_share_range([rate for _, (rate, _) in rows])
    caps = _usd_range([c for _, (_, c) in rows], ".2f")
    if per_share is not None:  # the table's cap applies, and is 0 before the TAF began
        since = f", 0 before {began}" if before else ""
        return (
            f"FINRA TAF: {_per_share(per_share)} per share sold (override), max {caps} per trade "
            f"(dated table{since})",
            per_share > 0,
        )
    since = f", none before {began}" if before else ""
    if cap is not None:
        return (
            f"FINRA TAF: {rates} per share sold (dated table{since}), max ${cap:.2f} (override)",
            cap > 0,
        )
    if before:
        return (
            f"FINRA TAF: none before {began}, then {rates} per share sold, max {caps} per trade",
            True,
        )
    count = f"{rows[0][0]} rate" if len(rows) == 1 else f"{len(rows)} rates"
    return f"FINRA TAF: {rates} per share sold, max {caps} per trade (dated table, {count})", True


def fee_assumptions(model: CostModel, start: object, end: object) -> list[str]:
    """What a run with `model` assumed for the SEC Section 31 fee and the FINRA TAF on trade dates
    `start`..`end` (inclusive; any trade-date type): short lines for the report, in words.

    Names the rates in force over the range (from the dated tables, or the overrides), "none
    before" a fee began, or "off" under `FeeSchedule.NONE`. ValueError if `start` > `end`.
    """
    lo, hi = _date_key(start), _date_key(end)
    if lo > hi:
        raise ValueError(f"fee assumptions need start <= end, got {start!r} > {end!r}")
    if model.regulatory_fees is FeeSchedule.NONE:
        return ["SEC Section 31 fee and FINRA TAF: off (--fees none)"]
    taf, taf_charged = _taf_assumption(model, lo, hi)
    return [_sec_assumption(model, lo, hi), taf] + ([_TAF_NOTE] if taf_charged else [])
