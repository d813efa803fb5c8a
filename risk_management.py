"""The risk gate, drawdown control, position sizing and risk metrics.

`RiskManager.pre_trade_check` is the only producer of `ApprovedBasket`, so every order that reaches
the executor passed these checks together with the other legs of its basket. Invariants:

- An approved basket that is not reduce-only leaves the portfolio within every limit of
  `RiskLimits` (leg, gross, net, leverage, order size, buying power) at the check prices.
- A reduce-only basket (every order shrinks its position without crossing zero) passes a halted or
  loss-limited account, so the account can always get flat.
- The backtest keeps risk state in memory only (`state_path=None`); live and paper trading persist
  the halt flag and equity peak in `data/risk_state.json`, written atomically on every change.

Sign conventions of the metrics: returns are simple periodic (daily) returns; VaR and CVaR are
POSITIVE loss fractions (a 2 % one-day 95 % VaR is 0.02); max drawdown is a NEGATIVE fraction
(-0.25 = 25 % below the peak), as in empyrical.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

import alert_dispatch
import constants as C
from error_handling import ConfigurationError, RiskViolation
from live_state import RESET_HINT, RiskState
from trading_execution import ApprovedBasket, Order

_INF = math.inf


class RiskReason(enum.StrEnum):
    """Stable codes of `RiskViolation.reason`."""

    LEG_NOTIONAL = "leg_notional"
    GROSS_EXPOSURE = "gross_exposure"
    NET_EXPOSURE = "net_exposure"
    ORDER_SIZE = "order_size"
    LEVERAGE = "leverage"
    DAILY_LOSS = "daily_loss"
    BUYING_POWER = "buying_power"
    PRICE_SANITY = "price_sanity"
    STALE_DATA = "stale_data"
    MARKET_CLOSED = "market_closed"
    TRADING_HALTED = "trading_halted"


@dataclass(frozen=True)
class RiskLimits:
    """Limits of the risk gate. Every field has a default a new user can keep; USD unless noted."""

    #: Per symbol after the basket: |position| x price.
    max_leg_notional: float = 60_000.0
    #: Sum over symbols of |position| x price after the basket.
    max_gross_exposure: float = 120_000.0
    #: |sum over symbols of signed position x price| after the basket.
    max_net_exposure: float = 25_000.0
    #: Per order: qty x check price.
    max_order_notional: float = 60_000.0
    #: Per order, shares.
    max_order_qty: int = 1_000_000
    #: Gross exposure after the basket / equity (a ratio, 1.5 = 150 %).
    max_leverage: float = 1.5
    #: Fraction of start-of-day equity: entries are refused once equity <= sod x (1 - limit).
    daily_loss_limit_pct: float = 0.05
    #: Fraction below the equity peak at which trading halts and everything is liquidated.
    max_drawdown_pct: float = 0.10
    #: Reg T initial margin (fraction): computed buying power = equity / margin - gross exposure.
    initial_margin: float = 0.5
    #: A price older than this (days, relative to the snapshot's `now`) is stale; 4 covers a long
    #: weekend for daily bars.
    max_price_age_days: float = 4.0
    #: Backtest price sanity: a price must lie in [ref / f, ref x f] of the last accepted price.
    price_band_factor: float = 3.0

    def __post_init__(self) -> None:
        positive = {
            "max_leg_notional": self.max_leg_notional,
            "max_gross_exposure": self.max_gross_exposure,
            "max_net_exposure": self.max_net_exposure,
            "max_order_notional": self.max_order_notional,
            "max_leverage": self.max_leverage,
            "max_price_age_days": self.max_price_age_days,
        }
        for name, value in positive.items():
            if not (isinstance(value, int | float) and 0 < value < _INF):
                raise ConfigurationError(f"risk limit {name} must be a positive number: {value!r}")
        if isinstance(self.max_order_qty, bool) or not (
            isinstance(self.max_order_qty, int) and self.max_order_qty >= 1
        ):
            raise ConfigurationError(
                f"risk limit max_order_qty must be a whole number >= 1: {self.max_order_qty!r}"
            )
        for name, value in (
            ("daily_loss_limit_pct", self.daily_loss_limit_pct),
            ("max_drawdown_pct", self.max_drawdown_pct),
        ):
            if not (isinstance(value, int | float) and 0 < value < 1):
                raise ConfigurationError(
                    f"risk limit {name} must be a fraction in (0, 1), e.g. 0.05 for 5 %: {value!r}"
                )
        if not (isinstance(self.initial_margin, int | float) and 0 < self.initial_margin <= 1):
            raise ConfigurationError(
                f"initial_margin must be a fraction in (0, 1] (Reg T: 0.5): {self.initial_margin!r}"
            )
        if not (isinstance(self.price_band_factor, int | float) and self.price_band_factor > 1):
            raise ConfigurationError(
                f"price_band_factor must be a number > 1: {self.price_band_factor!r}"
            )


@dataclass(frozen=True, slots=True)
class PortfolioSnapshot:
    """The account before the basket. USD; `positions` are signed shares (short < 0)."""

    equity: float
    cash: float
    positions: Mapping[str, int]
    #: Equity at the start of the trading day, for the daily loss limit.
    start_of_day_equity: float
    #: Broker-reported buying power; None = equity / initial_margin - current gross exposure.
    buying_power: float | None = None


@dataclass(frozen=True, slots=True)
class MarketSnapshot:
    """What the gate knows about prices at `now` (timezone-aware, like the price times)."""

    now: pd.Timestamp
    #: USD per share each order would trade at; also marks the positions.
    prices: Mapping[str, float]
    #: When each price was observed (the bar time).
    price_times: Mapping[str, pd.Timestamp]
    #: Previously accepted prices, for the sanity band.
    reference_prices: Mapping[str, float] = field(default_factory=dict)
    market_open: bool = True
    #: Live: price sanity uses constants.price_sanity_range and the market must be open.
    #: Backtest (False): the price band around the reference price; no market-hours check.
    live: bool = False


class RiskManager:
    """Pre-trade checks on whole baskets, plus the drawdown halt.

    `state_path=None` keeps the halt flag and the equity peak in memory (the backtest); with a path
    they are loaded at start and written atomically on every change. Alerts go to
    `paths(home).alerts_log`; `alerts=False` writes none (e.g. a parameter sweep).
    """

    def __init__(
        self,
        limits: RiskLimits | None = None,
        *,
        state_path: Path | None = None,
        home: Path | None = None,
        alerts: bool = True,
    ):
        self.limits = limits or RiskLimits()
        self.state_path = Path(state_path) if state_path is not None else None
        self.home = home
        self.alerts = alerts
        self._halted = False
        self._halt_reason: str | None = None
        self._halted_at: pd.Timestamp | None = None
        self._equity_peak: float | None = None
        self._drawdown_bar: pd.Timestamp | None = None
        lim = self.limits
        # Plain floats for the hot path.
        self._max_age_s = float(lim.max_price_age_days) * 86_400.0
        self._max_leg = float(lim.max_leg_notional)
        self._max_gross = float(lim.max_gross_exposure)
        self._max_net = float(lim.max_net_exposure)
        self._max_order_notional = float(lim.max_order_notional)
        self._max_order_qty = int(lim.max_order_qty)
        self._max_leverage = float(lim.max_leverage)
        self._daily_floor = 1.0 - float(lim.daily_loss_limit_pct)
        self._margin = float(lim.initial_margin)
        self._band = float(lim.price_band_factor)
        if self.state_path is not None:
            self._load()

    @classmethod
    def reset_file(
        cls,
        state_path: Path,
        equity: float | None = None,
        *,
        limits: RiskLimits | None = None,
        home: Path | None = None,
    ) -> RiskManager:
        """Clear the halt stored at `state_path` whatever the file holds (also a corrupt one):
        what `python main.py risk reset` does. Returns the manager bound to the path."""
        manager = cls(limits, home=home)
        manager.state_path = Path(state_path)
        manager.reset(equity)
        return manager

    # --- State --------------------------------------------------------------------------------
    @property
    def halted(self) -> bool:
        """True after a drawdown breach or `halt()`: only reduce-only baskets pass."""
        return self._halted

    @property
    def halt_reason(self) -> str | None:
        """Why trading is halted; None when it is not."""
        return self._halt_reason

    @property
    def halted_at(self) -> pd.Timestamp | None:
        """When trading was halted; None when it is not."""
        return self._halted_at

    @property
    def drawdown_bar(self) -> pd.Timestamp | None:
        """The bar whose close revealed a drawdown breach, while the liquidation it calls for is
        still to be sent (`liquidation_sent`); None otherwise."""
        return self._drawdown_bar

    @property
    def equity_peak(self) -> float | None:
        """Highest equity seen by `update_equity` (USD); None before the first update."""
        return self._equity_peak

    def _load(self) -> None:
        assert self.state_path is not None
        state = RiskState.read(self.state_path)  # RiskStateError when it cannot be trusted
        if state is None:
            return
        self._halted = state.halted
        self._halt_reason = state.halt_reason
        self._halted_at = pd.Timestamp(state.halted_at) if state.halted_at is not None else None
        self._equity_peak = state.equity_peak
        bar = state.drawdown_bar
        self._drawdown_bar = pd.Timestamp(bar) if bar is not None else None

    def _save(self) -> None:
        if self.state_path is None:
            return
        RiskState(
            halted=self._halted,
            halt_reason=self._halt_reason,
            halted_at=self._halted_at.isoformat() if self._halted_at is not None else None,
            equity_peak=self._equity_peak,
            drawdown_bar=None if self._drawdown_bar is None else self._drawdown_bar.isoformat(),
        ).save(self.state_path)

    def _alert(self, severity: str, title: str, message: str, details: dict[str, Any]) -> None:
        if self.alerts:
            alert_dispatch.send(severity, "risk", title, message, details, home=self.home)

    # --- Drawdown control ---------------------------------------------------------------------
    def update_equity(
        self,
        equity: float,
        at: pd.Timestamp,
        *,
        holding: bool = True,
        bar: pd.Timestamp | None = None,
    ) -> bool:
        """Record the account's equity (USD) at `at`, marked at the close of `bar` (default
        `at`); raises the peak when higher.

        Returns True exactly once per breach, when positions are held (`holding`), equity <= peak
        x (1 - max_drawdown_pct) and trading was not yet halted: trading is then halted
        (persisted), a CRITICAL alert is written, `drawdown_bar` is set to `bar`, and the caller
        must liquidate every position once an order can fill (`pair_engine.control_drawdown`).
        A flat book never breaches (there is nothing to liquidate). Otherwise False.
        """
        equity = float(equity)
        if not math.isfinite(equity):
            raise ConfigurationError(f"equity must be a finite number of USD: {equity!r} at {at}")
        changed = False
        if self._equity_peak is None or equity > self._equity_peak:
            self._equity_peak = equity
            changed = True
        peak = self._equity_peak
        limit = self.limits.max_drawdown_pct
        if holding and not self._halted and equity <= peak * (1.0 - limit):
            drawdown = equity / peak - 1.0 if peak > 0 else -_INF
            self._drawdown_bar = pd.Timestamp(at if bar is None else bar)
            self._set_halt(f"drawdown {drawdown:.2%} breached the limit {-limit:.2%}", at)
            self._alert(
                "CRITICAL",
                "Drawdown limit breached: trading halted",
                f"equity ${equity:,.2f} is {-drawdown:.2%} below the peak ${peak:,.2f} "
                f"(limit {limit:.2%}); liquidating all positions. After review, {RESET_HINT}.",
                {
                    "equity": equity,
                    "peak": peak,
                    "drawdown": drawdown,
                    "limit": limit,
                    "time": pd.Timestamp(at).isoformat(),
                },
            )
            return True
        if changed:
            self._save()
        return False

    def liquidation_sent(self) -> None:
        """The liquidation a drawdown breach called for was sent: none is due any more
        (persisted). The halt stays until `reset`."""
        if self._drawdown_bar is not None:
            self._drawdown_bar = None
            self._save()

    def raise_peak(self, equity: float) -> None:
        """Raise the equity peak to `equity` (USD) when higher, with no drawdown test: the
        backtest's vectorized stretches, whose bars were tested in bulk."""
        if self._equity_peak is None or equity > self._equity_peak:
            self._equity_peak = float(equity)
            self._save()

    def _set_halt(self, reason: str, at: pd.Timestamp) -> None:
        self._halted = True
        self._halt_reason = reason
        self._halted_at = pd.Timestamp(at)
        self._save()

    def halt(self, reason: str, at: pd.Timestamp) -> None:
        """Halt new entries (persisted; a CRITICAL alert naming `reason`). A no-op when already
        halted."""
        if self._halted:
            return
        self._set_halt(reason, at)
        self._alert(
            "CRITICAL",
            "Trading halted",
            f"trading halted at {pd.Timestamp(at).isoformat()}: {reason}. {RESET_HINT}.",
            {"reason": reason, "time": pd.Timestamp(at).isoformat()},
        )

    def reset(self, equity: float | None = None) -> None:
        """Clear the halt; when `equity` (USD) is given the peak restarts there. Persisted; an
        INFO alert records it."""
        if equity is not None:
            equity = float(equity)
            if not math.isfinite(equity) or equity <= 0:
                raise ConfigurationError(f"equity must be a positive number of USD: {equity!r}")
        previous = self._halt_reason
        self._halted = False
        self._halt_reason = None
        self._halted_at = None
        self._drawdown_bar = None
        if equity is not None:
            self._equity_peak = equity
        self._save()
        self._alert(
            "INFO",
            "Trading halt reset",
            "trading halt cleared"
            + (f"; equity peak reset to ${equity:,.2f}" if equity is not None else ""),
            {"previous_reason": previous, "equity_peak": self._equity_peak},
        )

    # --- The gate -----------------------------------------------------------------------------
    def pre_trade_check(
        self, orders: Sequence[Order], portfolio: PortfolioSnapshot, market: MarketSnapshot
    ) -> ApprovedBasket:
        """Check `orders` as one basket; the approved basket, or RiskViolation for the first check
        that fails. Order of checks: market closed (live), stale data, price sanity, then for
        baskets that are not reduce-only: halt, order size, leg notional, gross, net, leverage,
        buying power, daily loss -- exposures measured on the portfolio after all orders."""
        if not orders:
            raise ConfigurationError("pre_trade_check needs at least one order (empty basket)")
        prices = market.prices
        live = market.live

        if live and not market.market_open:
            raise RiskViolation(
                RiskReason.MARKET_CLOSED.value,
                f"market is closed at {market.now}; orders wait for the next session",
            )

        now = self._check_fresh(orders, market)
        self._check_prices(orders, market)
        positions = portfolio.positions
        if _is_reduce_only(orders, positions):
            return ApprovedBasket(tuple(orders), now, True)
        if self._halted:
            raise RiskViolation(
                RiskReason.TRADING_HALTED.value,
                f"trading is halted ({self._halt_reason}); only reducing orders pass. {RESET_HINT}",
            )
        self._check_order_sizes(orders, prices)
        gross, opening = self._check_exposure(orders, positions, prices, now)
        self._check_capital(portfolio, gross, opening, prices)
        return ApprovedBasket(tuple(orders), now, False)

    def _check_fresh(self, orders: Sequence[Order], market: MarketSnapshot) -> pd.Timestamp:
        """Stale data: every order's symbol has a price no older than the limit. Returns `now`
        as a Timestamp."""
        prices = market.prices
        # Integer nanoseconds since the epoch (UTC for aware timestamps): pandas' Timestamp minus
        # Float seconds: a Timedelta costs ~9 us with a timezone, and ns overflow after 2262.
        price_times = market.price_times
        now = market.now
        if not isinstance(now, pd.Timestamp):
            now = pd.Timestamp(now)
        now_s = now.timestamp()  # float seconds: any date (ns `.value` overflows after 2262)
        naive = now.tzinfo is None
        max_age_s = self._max_age_s
        for order in orders:
            sym = order.symbol
            t = price_times.get(sym)
            if sym not in prices or t is None or t is pd.NaT:
                raise RiskViolation(RiskReason.STALE_DATA.value, f"no price for {sym} at {now}")
            if not isinstance(t, pd.Timestamp):
                t = pd.Timestamp(t)
            if (t.tzinfo is None) is not naive:
                raise ConfigurationError(
                    f"price time of {sym} ({t}) and the check time ({now}) must both be "
                    "timezone-aware (or both naive)"
                )
            age_s = now_s - t.timestamp()
            if age_s > max_age_s:
                raise RiskViolation(
                    RiskReason.STALE_DATA.value,
                    f"{sym} price from {t} is {age_s / 86_400:.1f} days old at {now} > limit "
                    f"{self.limits.max_price_age_days:g} days",
                )

        return now

    def _check_prices(self, orders: Sequence[Order], market: MarketSnapshot) -> None:
        """Price sanity: live, the per-symbol ranges of constants; backtest, the band around the
        reference price."""
        prices, live = market.prices, market.live
        refs = market.reference_prices
        for order in orders:
            sym = order.symbol
            price = prices[sym]
            ref = refs.get(sym)
            if live:
                low, high = C.price_sanity_range(sym, ref)
            elif ref is not None:
                low, high = price_band(ref, self._band)
            else:
                low, high = 0.0, _INF
            if not price_sane(price, low, high):
                band = f"[${low:,.2f}, ${high:,.2f}]" if high < _INF else "(0, inf)"
                raise RiskViolation(
                    RiskReason.PRICE_SANITY.value,
                    f"{sym} price ${price:,.4f} outside the plausible range {band}"
                    + (f" (reference ${ref:,.2f})" if ref is not None else ""),
                )

    def _check_order_sizes(self, orders: Sequence[Order], prices: Mapping[str, float]) -> None:
        max_qty = self._max_order_qty
        max_notional = self._max_order_notional
        for order in orders:
            verdict = order_size_verdict(order.qty, prices[order.symbol], max_notional, max_qty)
            if verdict == 1:
                notional = order.qty * prices[order.symbol]
                raise RiskViolation(
                    RiskReason.ORDER_SIZE.value,
                    f"{order.symbol} order notional ${notional:,.0f} > limit ${max_notional:,.0f}",
                )
            if verdict == 2:
                raise RiskViolation(
                    RiskReason.ORDER_SIZE.value,
                    f"{order.symbol} order of {order.qty:,} shares > limit {max_qty:,} shares",
                )

    def _check_exposure(
        self,
        orders: Sequence[Order],
        positions: Mapping[str, int],
        prices: Mapping[str, float],
        now: pd.Timestamp,
    ) -> tuple[float, float]:
        """Leg, gross and net exposure after the basket. Returns (gross exposure, USD the basket
        opens)."""
        post = dict(positions)
        opening = 0.0  # USD of the basket that opens or increases exposure
        for order in orders:
            sym = order.symbol
            before = post.get(sym, 0)
            signed = order.signed_qty
            opening += opened_qty(before, signed, order.qty) * prices[sym]
            post[sym] = before + signed

        gross = 0.0
        net = 0.0
        max_leg = self._max_leg
        for sym, qty in post.items():
            if qty == 0:
                continue
            mark = prices.get(sym)
            if mark is None:
                raise RiskViolation(
                    RiskReason.STALE_DATA.value,
                    f"no price to mark the {sym} position at {now}",
                )
            if not 0.0 < mark < _INF:
                raise RiskViolation(
                    RiskReason.PRICE_SANITY.value,
                    f"{sym} mark price ${mark} is not a positive finite number",
                )
            notional = qty * mark
            leg = abs(notional)
            if leg_over(leg, max_leg):
                raise RiskViolation(
                    RiskReason.LEG_NOTIONAL.value,
                    f"{sym} notional after order ${leg:,.0f} > limit ${max_leg:,.0f}",
                )
            gross += leg
            net += notional

        verdict = exposure_verdict(gross, net, self._max_gross, self._max_net)
        if verdict == 1:
            raise RiskViolation(
                RiskReason.GROSS_EXPOSURE.value,
                f"gross exposure after basket ${gross:,.0f} > limit ${self._max_gross:,.0f}",
            )
        if verdict == 2:
            raise RiskViolation(
                RiskReason.NET_EXPOSURE.value,
                f"net exposure after basket ${net:,.0f} exceeds limit ±${self._max_net:,.0f}",
            )
        return gross, opening

    def _check_capital(
        self,
        portfolio: PortfolioSnapshot,
        gross: float,
        opening: float,
        prices: Mapping[str, float],
    ) -> None:
        """Leverage, buying power and the daily loss limit."""
        positions = portfolio.positions
        equity = portfolio.equity
        buying_power = portfolio.buying_power
        if buying_power is None:
            current_gross = 0.0
            for sym, qty in positions.items():
                if qty:
                    current_gross += abs(qty * prices[sym])  # every held symbol was marked above
            buying_power = reg_t_buying_power(equity, self._margin, current_gross)
        sod = portfolio.start_of_day_equity
        verdict = capital_verdict(
            equity, gross, opening, buying_power, sod, self._max_leverage, self._daily_floor
        )
        if verdict == 1:
            raise RiskViolation(
                RiskReason.LEVERAGE.value,
                f"equity ${equity:,.2f} <= 0: no leverage is available",
            )
        if verdict == 2:
            leverage = gross / equity
            raise RiskViolation(
                RiskReason.LEVERAGE.value,
                f"leverage after basket {leverage:.2f}x (gross ${gross:,.0f} / equity "
                f"${equity:,.0f}) > limit {self._max_leverage:.2f}x",
            )
        if verdict == 3:
            raise RiskViolation(
                RiskReason.BUYING_POWER.value,
                f"basket needs ${opening:,.0f} of buying power > available ${buying_power:,.0f}",
            )
        if verdict == 4:
            floor = sod * self._daily_floor
            raise RiskViolation(
                RiskReason.DAILY_LOSS.value,
                f"equity ${equity:,.0f} <= daily loss floor ${floor:,.0f} (start of day "
                f"${sod:,.0f}, limit {self.limits.daily_loss_limit_pct:.1%}); only reducing "
                "orders pass until tomorrow",
            )


def _is_reduce_only(orders: Sequence[Order], positions: Mapping[str, int]) -> bool:
    """Every order shrinks |position| of its symbol without crossing zero; no symbol twice."""
    seen: set[str] = set()
    for order in orders:
        sym = order.symbol
        if sym in seen:
            return False
        seen.add(sym)
        if not reduces(positions.get(sym, 0), order.signed_qty, order.qty):
            return False
    return True


# --- The gate's checks as plain arithmetic --------------------------------------------------------
# `pre_trade_check` calls these for every basket, live and backtest; `fast_engine` compiles the
# very same functions with numba for the backtest's compiled path, so no check exists twice.
# Verdicts are ints: 0 passes, any other value names the failed check (the caller's message).
def reduces(before: float, signed_qty: float, qty: float) -> bool:
    """An order of `signed_qty` (`qty` = |signed_qty|) shrinks a position of `before` shares
    without crossing zero."""
    return not (before == 0 or (before > 0) == (signed_qty > 0) or qty > abs(before))


def price_band(reference: float, factor: float) -> tuple[float, float]:
    """The backtest's plausible range for a price: [reference / factor, reference x factor]."""
    return reference / factor, reference * factor


def price_sane(price: float, low: float, high: float) -> bool:
    """`price` in [low, high], positive and finite (written so that NaN fails)."""
    return low <= price <= high and 0.0 < price < _INF


def order_size_verdict(qty: float, price: float, max_notional: float, max_qty: float) -> int:
    """1: qty x price above the order notional limit (or NaN); 2: more shares than allowed."""
    if not qty * price <= max_notional:
        return 1
    if qty > max_qty:
        return 2
    return 0


def opened_qty(before: float, signed_qty: float, qty: float) -> float:
    """Shares of an order that open or increase exposure on a position of `before` shares: all
    of it, or the part beyond closing the position (which opens the other way)."""
    if before == 0 or (before > 0) == (signed_qty > 0):
        return qty
    return max(0, qty - abs(before))


def leg_over(leg_notional: float, max_leg: float) -> bool:
    """|position| x price of one symbol after the basket above the leg limit."""
    return leg_notional > max_leg


def exposure_verdict(gross: float, net: float, max_gross: float, max_net: float) -> int:
    """1: gross exposure after the basket above its limit; 2: |net| above its limit."""
    if gross > max_gross:
        return 1
    if abs(net) > max_net:
        return 2
    return 0


def reg_t_buying_power(equity: float, margin: float, current_gross: float) -> float:
    """Buying power a simulated account has, USD: equity / initial margin - gross exposure."""
    return equity / margin - current_gross


def capital_verdict(
    equity: float,
    gross: float,
    opening: float,
    buying_power: float,
    start_of_day_equity: float,
    max_leverage: float,
    daily_floor: float,
) -> int:
    """1: equity <= 0; 2: gross / equity above the leverage limit; 3: the basket opens more than
    the buying power; 4: equity at or below start-of-day equity x `daily_floor`."""
    if not equity > 0.0:
        return 1
    if not gross / equity <= max_leverage:
        return 2
    if not opening <= buying_power:
        return 3
    if not equity > start_of_day_equity * daily_floor:
        return 4
    return 0


def drawdown_breach_index(
    equity: np.ndarray, peak: float, limit_pct: float
) -> tuple[int | None, float]:
    """First index i with equity[i] <= running_peak_i x (1 - limit_pct), where running_peak_i =
    max(peak, max(equity[:i+1])) (USD), and the running peak at i -- or at the end of the array
    when there is no breach (`peak` for an empty array). Equity must be finite."""
    values = np.asarray(equity, dtype=float)
    if values.ndim != 1:
        raise ConfigurationError(f"equity must be one-dimensional, got shape {values.shape}")
    if not 0 < limit_pct < 1:
        raise ConfigurationError(f"drawdown limit must be a fraction in (0, 1): {limit_pct!r}")
    if values.size == 0:
        return None, float(peak)
    if not np.isfinite(values).all():
        raise ConfigurationError("equity contains NaN or infinite values")
    running = np.maximum(np.maximum.accumulate(values), peak)
    breached = values <= running * (1.0 - limit_pct)
    i = int(np.argmax(breached))
    if breached[i]:
        return i, float(running[i])
    return None, float(running[-1])


# --- Sizing -------------------------------------------------------------------------------------
def kelly_fraction(
    probability: float, payoff_ratio: float, *, fraction: float = 0.5, cap: float = 0.5
) -> float:
    """Fraction of equity to risk: clip(fraction x (p - (1 - p) / b), 0, cap).

    `probability` p is the chance the trade wins; `payoff_ratio` b = average win / average loss;
    `fraction` scales full Kelly (0.5 = half Kelly); `cap` is the largest result.
    """
    if not 0.0 <= probability <= 1.0:
        raise ConfigurationError(f"win probability must be in [0, 1]: {probability!r}")
    if not 0.0 < payoff_ratio < _INF:
        raise ConfigurationError(f"payoff ratio (avg win / avg loss) must be > 0: {payoff_ratio!r}")
    if not 0.0 < fraction < _INF:
        raise ConfigurationError(f"Kelly fraction must be > 0 (0.5 = half Kelly): {fraction!r}")
    if not 0.0 < cap <= 1.0:
        raise ConfigurationError(f"Kelly cap must be in (0, 1]: {cap!r}")
    full = probability - (1.0 - probability) / payoff_ratio
    return float(min(max(fraction * full, 0.0), cap))


# --- Metrics ------------------------------------------------------------------------------------
# Definitions follow empyrical; every metric is NaN for fewer than 2 returns (after NaNs are
# dropped) because neither a dispersion nor a meaningful drawdown exists there.
_NORMAL = NormalDist()


def _clean(returns: np.ndarray | pd.Series) -> np.ndarray | None:
    values = np.asarray(returns, dtype=float)
    if values.ndim != 1:
        raise ConfigurationError(f"returns must be one-dimensional, got shape {values.shape}")
    values = values[~np.isnan(values)]
    return values if values.size >= 2 else None


def _tail(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ConfigurationError(f"confidence level must be in (0, 1), e.g. 0.95: {level!r}")
    return round(1.0 - level, 12)  # 1 - 0.95 is 0.05000000000000004; empyrical's cutoff is 0.05


def historical_var(returns: np.ndarray | pd.Series, level: float = 0.95) -> float:
    """One-period historical VaR: the loss (POSITIVE fraction) not exceeded with probability
    `level`; -percentile(returns, 100 x (1 - level)), i.e. -empyrical.value_at_risk."""
    r = _clean(returns)
    cutoff = _tail(level)
    if r is None:
        return math.nan
    return float(-np.percentile(r, 100 * cutoff))


def historical_cvar(returns: np.ndarray | pd.Series, level: float = 0.95) -> float:
    """Historical expected shortfall (POSITIVE fraction): minus the mean of the worst
    int((n - 1) x (1 - level)) + 1 returns, i.e. -empyrical.conditional_value_at_risk."""
    r = _clean(returns)
    cutoff = _tail(level)
    if r is None:
        return math.nan
    k = int((len(r) - 1) * cutoff)
    return float(-np.mean(np.partition(r, k)[: k + 1]))


def parametric_var(returns: np.ndarray | pd.Series, level: float = 0.95) -> float:
    """Normal VaR (POSITIVE fraction): -(mean + z_{1-level} x std), std with ddof=1."""
    r = _clean(returns)
    tail = _tail(level)
    if r is None:
        return math.nan
    z = _NORMAL.inv_cdf(tail)
    return float(-(r.mean() + z * r.std(ddof=1)))


def parametric_cvar(returns: np.ndarray | pd.Series, level: float = 0.95) -> float:
    """Normal expected shortfall (POSITIVE fraction): -(mean - std x pdf(z) / (1 - level)) with
    z = z_{1-level}, std with ddof=1."""
    r = _clean(returns)
    tail = _tail(level)
    if r is None:
        return math.nan
    z = _NORMAL.inv_cdf(tail)
    return float(-(r.mean() - r.std(ddof=1) * _NORMAL.pdf(z) / tail))


def sharpe_ratio(
    returns: np.ndarray | pd.Series, periods_per_year: int = 252, risk_free: float = 0.0
) -> float:
    """Annualized Sharpe: mean(r - rf) / std(r - rf, ddof=1) x sqrt(periods). `risk_free` is per
    period. NaN when the excess returns do not vary (empyrical gives ±inf there)."""
    r = _clean(returns)
    if r is None:
        return math.nan
    adj = r - risk_free if risk_free != 0 else r
    if adj.max() == adj.min():
        return math.nan
    return float(adj.mean() / adj.std(ddof=1) * math.sqrt(periods_per_year))


def _downside_risk(r: np.ndarray, required_return: float, periods_per_year: int) -> float:
    downside = np.clip(r - required_return, -_INF, 0.0)
    return float(np.sqrt(np.mean(np.square(downside))) * math.sqrt(periods_per_year))


def sortino_ratio(
    returns: np.ndarray | pd.Series, periods_per_year: int = 252, required_return: float = 0.0
) -> float:
    """Annualized Sortino as empyrical: mean(r - required) x periods / downside risk, where the
    downside risk is sqrt(mean(min(r - required, 0)^2)) x sqrt(periods) over ALL periods. NaN
    when no period falls below `required_return` (empyrical gives inf there)."""
    r = _clean(returns)
    if r is None:
        return math.nan
    risk = _downside_risk(r, required_return, periods_per_year)
    if risk == 0.0:
        return math.nan
    return float(np.mean(r - required_return) * periods_per_year / risk)


def annual_volatility(returns: np.ndarray | pd.Series, periods_per_year: int = 252) -> float:
    """std(r, ddof=1) x sqrt(periods), a fraction per year."""
    r = _clean(returns)
    if r is None:
        return math.nan
    return float(r.std(ddof=1) * math.sqrt(periods_per_year))


def max_drawdown(returns: np.ndarray | pd.Series) -> float:
    """Largest fall of the compounded wealth (1 + r) products from a running peak that starts at
    the initial wealth 1: a NEGATIVE fraction (-0.25 = 25 % below the peak), 0 without losses."""
    r = _clean(returns)
    if r is None:
        return math.nan
    wealth = np.empty(len(r) + 1)
    wealth[0] = 1.0
    np.cumprod(1.0 + r, out=wealth[1:])
    peak = np.fmax.accumulate(wealth)
    return float(np.min((wealth - peak) / peak))


def cagr(returns: np.ndarray | pd.Series, periods_per_year: int = 252) -> float:
    """Compound annual growth rate (fraction): prod(1 + r) ** (1 / years) - 1, with years =
    len(r) / periods_per_year."""
    r = _clean(returns)
    if r is None:
        return math.nan
    years = len(r) / periods_per_year
    return float(np.prod(1.0 + r) ** (1.0 / years) - 1.0)


def calmar_ratio(returns: np.ndarray | pd.Series, periods_per_year: int = 252) -> float:
    """CAGR / |max drawdown|; NaN when there is no drawdown (or the ratio is infinite)."""
    mdd = max_drawdown(returns)
    if not mdd < 0:
        return math.nan
    ratio = cagr(returns, periods_per_year) / abs(mdd)
    return ratio if math.isfinite(ratio) else math.nan


@dataclass(frozen=True)
class RiskMetrics:
    """Risk and performance of a return series. VaR/CVaR: POSITIVE one-period loss fractions;
    max_drawdown: NEGATIVE fraction; cagr, annual_volatility: fractions per year."""

    n_periods: int
    cagr: float
    annual_volatility: float
    sharpe: float
    sortino: float
    max_drawdown: float
    calmar: float
    var_95: float
    cvar_95: float
    var_99: float
    cvar_99: float
    parametric_var_95: float
    parametric_cvar_95: float
    parametric_var_99: float
    parametric_cvar_99: float


def risk_metrics(returns: np.ndarray | pd.Series, periods_per_year: int = 252) -> RiskMetrics:
    """Every metric of this module on one series of periodic simple returns (NaNs dropped)."""
    r = np.asarray(returns, dtype=float)
    if r.ndim != 1:
        raise ConfigurationError(f"returns must be one-dimensional, got shape {r.shape}")
    r = r[~np.isnan(r)]
    return RiskMetrics(
        n_periods=len(r),
        cagr=cagr(r, periods_per_year),
        annual_volatility=annual_volatility(r, periods_per_year),
        sharpe=sharpe_ratio(r, periods_per_year),
        sortino=sortino_ratio(r, periods_per_year),
        max_drawdown=max_drawdown(r),
        calmar=calmar_ratio(r, periods_per_year),
        var_95=historical_var(r, 0.95),
        cvar_95=historical_cvar(r, 0.95),
        var_99=historical_var(r, 0.99),
        cvar_99=historical_cvar(r, 0.99),
        parametric_var_95=parametric_var(r, 0.95),
        parametric_cvar_95=parametric_cvar(r, 0.95),
        parametric_var_99=parametric_var(r, 0.99),
        parametric_cvar_99=parametric_cvar(r, 0.99),
    )
