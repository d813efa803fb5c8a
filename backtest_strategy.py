"""The backtest engine: an event loop over daily bars that trades a pair like the live loop would.

Per bar with something to do: mark to market (borrow accrued) → drawdown control → recalls
(forced buy-in) → carried remainders → the bar's instruction → sizing → `pre_trade_check` → the
executor → accounting. Bars with nothing to do (no instruction, no recall, no carried order) are
computed in vectorized form: positions are constant there, so cash, equity, borrow and the drawdown
test are numpy over the whole stretch, and the per-bar path only runs where something happens.

Time convention: an instruction stamped on bar t (decided on t's close) fills on bar
t + `fill_delay_bars` at that bar's close. The default delay is 1 (next close): a decision cannot
fill at the close it was computed from. Units: prices and money in USD, quantities in whole shares,
weights as signed fractions of equity per leg.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

import risk_management as rm
import transaction_costs as tc
from error_handling import ConfigurationError, RiskViolation
from trading_execution import (
    BarQuote,
    ExecutionConfig,
    Fill,
    Order,
    OrderExecutor,
    Purpose,
    RemainderPolicy,
    Side,
    client_order_id,
    orders_toward,
)

log = logging.getLogger(__name__)

DEFAULT_DAILY_VOL = 0.02  # for market impact before 20 bars of returns exist
VOL_BARS = 20

COST_KINDS = ("commission", "spread", "impact", "sec_fee", "finra_taf", "borrow", "buy_in_penalty")


@dataclass(frozen=True)
class BacktestConfig:
    """Everything a backtest run depends on besides prices and instructions."""

    initial_capital: float = 100_000.0
    fill_delay_bars: int = 1
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    limits: rm.RiskLimits = field(default_factory=rm.RiskLimits)

    def __post_init__(self) -> None:
        if not self.initial_capital > 0:
            raise ConfigurationError(f"initial capital must be positive: {self.initial_capital}")
        if self.fill_delay_bars < 0:
            raise ConfigurationError(f"fill delay must be >= 0 bars: {self.fill_delay_bars}")


@dataclass(frozen=True, slots=True)
class Rejection:
    """An order basket the risk gate refused."""

    date: pd.Timestamp
    reason: str
    message: str
    purpose: str


@dataclass(frozen=True, slots=True)
class RoundTrip:
    """One pair position from entry to exit; `pnl` is net of every cost (USD)."""

    entry_date: pd.Timestamp
    exit_date: pd.Timestamp
    direction: int  # +1 long the long leg, -1 short it
    pnl: float


@dataclass
class BacktestResult:
    """Per-bar state, fills, rejections and totals of one run."""

    label: str
    symbols: tuple[str, str]
    equity: pd.DataFrame  # date index: equity, cash, qty_<SYM>, price_<SYM>, borrow_paid
    trades: pd.DataFrame  # one row per fill
    rejections: list[Rejection]
    round_trips: list[RoundTrip]
    costs: dict[str, float]
    initial_capital: float
    halted_at: pd.Timestamp | None
    realized_pnl: float
    unrealized_pnl: float
    instructions: int
    event_bars: int

    @property
    def returns(self) -> pd.Series:
        """Simple returns of equity per bar (the first bar against the initial capital)."""
        eq = self.equity["equity"]
        prev = eq.shift(1).fillna(self.initial_capital)
        return eq / prev - 1.0

    @property
    def rejection_counts(self) -> dict[str, int]:
        return dict(Counter(r.reason for r in self.rejections))


# --- Instructions ---------------------------------------------------------------------------------
def instructions_from_states(states: np.ndarray, leg_fraction: np.ndarray | float) -> np.ndarray:
    """(n, 2) target weights from a direction state per bar (+1 buy the spread, -1 sell it, 0 flat,
    NaN keep): an instruction only where the state changes; NaN rows elsewhere."""
    states = np.asarray(states, dtype="float64")
    held = pd.Series(states).ffill().fillna(0.0).to_numpy()
    prev = np.concatenate([[0.0], held[:-1]])
    change = held != prev
    frac = np.broadcast_to(np.asarray(leg_fraction, dtype="float64"), held.shape)
    w = np.full((len(held), 2), np.nan)
    w[change, 0] = held[change] * frac[change]
    w[change, 1] = -held[change] * frac[change]
    return w


def zscore_rule_states(zscore: np.ndarray, entry: float = 2.0, exit: float = 0.5) -> np.ndarray:
    """The spread z-score rule as direction states: sell the spread above +entry, buy it below
    -entry, go flat inside ±exit, keep the position in between (NaN)."""
    z = np.asarray(zscore, dtype="float64")
    s = np.full(len(z), np.nan)
    s[np.abs(z) < exit] = 0.0
    s[z > entry] = -1.0
    s[z < -entry] = 1.0
    return s


def rolling_spread_zscore(
    log_long: np.ndarray, log_short: np.ndarray, bars: int = 60
) -> np.ndarray:
    """z-score of log(long) - beta*log(short) over `bars` bars, beta the rolling OLS slope over the
    same bars; both end at t inclusive (causal). NaN during warm-up."""
    a, b = pd.Series(log_long), pd.Series(log_short)
    beta = a.rolling(bars).cov(b) / b.rolling(bars).var()
    spread = a - beta * b
    z = (spread - spread.rolling(bars).mean()) / spread.rolling(bars).std()
    return z.to_numpy()


# --- The engine -----------------------------------------------------------------------------------
def _daily_vol(close: np.ndarray) -> np.ndarray:
    r = pd.DataFrame(close).pct_change()
    vol = r.rolling(VOL_BARS, min_periods=5).std().bfill().fillna(DEFAULT_DAILY_VOL)
    return vol.to_numpy()


class _Book:
    """Cash, positions and average costs of the two legs; applies fills."""

    def __init__(self, capital: float, symbols: tuple[str, str]):
        self.cash = capital
        self.symbols = symbols
        self.qty = [0, 0]
        self.avg = [0.0, 0.0]
        self.realized = 0.0

    def apply(self, leg: int, fill: Fill) -> None:
        dq = fill.signed_qty
        if dq == 0:
            return
        q, avg = self.qty[leg], self.avg[leg]
        if q == 0 or (q > 0) == (dq > 0):
            new = q + dq
            self.avg[leg] = (avg * abs(q) + fill.price * abs(dq)) / abs(new)
        else:
            closed = min(abs(dq), abs(q))
            self.realized += (fill.price - avg) * closed * (1 if q > 0 else -1)
            new = q + dq
            if new == 0:
                self.avg[leg] = 0.0
            elif (new > 0) != (q > 0):
                self.avg[leg] = fill.price
        self.qty[leg] = new
        self.cash += fill.cash_change


def run_backtest(
    prices: pd.DataFrame,
    weights: np.ndarray,
    config: BacktestConfig | None = None,
    *,
    label: str = "strategy",
    volume: pd.DataFrame | None = None,
    risk: rm.RiskManager | None = None,
    log_rejections: bool = True,
    weight_unit: str = "equity",
) -> BacktestResult:
    """Run the pair through the engine.

    prices: date index, two close columns (long leg first). weights: (n, 2) target weights per leg
    as signed fractions of equity (`weight_unit="usd"`: signed USD notional per leg); a NaN row
    means no instruction on that bar. volume (optional,
    shares, same shape as prices) gives average daily volume; without it
    `execution.default_adv_usd` is used.
    """
    cfg = config or BacktestConfig()
    ex = cfg.execution
    if weight_unit not in ("equity", "usd"):
        raise ConfigurationError(f"weight_unit must be 'equity' or 'usd', not {weight_unit!r}")
    per_usd = weight_unit == "usd"
    risk = risk or rm.RiskManager(cfg.limits, state_path=None, alerts=False)
    executor = OrderExecutor(ex)
    symbols = (str(prices.columns[0]), str(prices.columns[1]))
    n = len(prices)
    if n == 0:
        raise ConfigurationError("no bars to backtest")
    weights = np.asarray(weights, dtype="float64")
    if weights.shape != (n, 2):
        raise ConfigurationError(f"weights must have shape ({n}, 2), got {weights.shape}")
    close = prices.to_numpy("float64")
    if not np.isfinite(close).all() or (close <= 0).any():
        raise ConfigurationError("prices must be finite and positive on every bar")
    dates = pd.DatetimeIndex(prices.index)
    day = dates.values.astype("datetime64[D]").astype("int64")
    gap_days = np.diff(day, prepend=day[0]).astype("float64")
    vol = _daily_vol(close)
    if volume is not None:
        adv = volume.to_numpy("float64")
        adv = pd.DataFrame(adv).rolling(VOL_BARS, min_periods=1).mean().shift(1).bfill()
        adv = np.maximum(adv.to_numpy(), 1.0)
    else:
        adv = ex.default_adv_usd / close
    costs_model = ex.costs
    borrow_rate = np.array([tc.borrow_rate(s, costs_model) for s in symbols])
    day_count = float(costs_model.borrow_day_count)
    limit = cfg.limits.max_drawdown_pct

    # Instruction bars (after the fill delay); the last ones may fall past the data.
    has = ~np.isnan(weights).any(axis=1)
    instr_src = np.flatnonzero(has)
    instr_bar = instr_src + cfg.fill_delay_bars
    keep = instr_bar < n
    instr_at = dict(zip(instr_bar[keep].tolist(), instr_src[keep].tolist(), strict=True))
    # Recall candidates: configured dates, and hard-to-borrow draws (seeded).
    rng = np.random.default_rng(ex.seed)
    recall = np.zeros((n, 2), dtype=bool)

    date_strs: dict[int, str] = {}  # ISO dates of the bars that need them, made in one batch

    def date_str(j: int) -> str:
        text = date_strs.get(j)
        if text is None:
            text = date_strs[j] = str(np.datetime64(int(day[j]), "D"))
        return text

    for leg, sym in enumerate(symbols):
        for d in ex.recall_dates.get(sym, ()):
            try:
                recall_day = np.datetime64(pd.Timestamp(d).date(), "D").astype("int64")
            except ValueError:
                raise ConfigurationError(f"recall date {d!r} for {sym} is not a date") from None
            recall[:, leg] |= day == recall_day
        if sym in ex.hard_to_borrow:
            recall[:, leg] |= rng.random(n) < ex.htb_recall_probability
    events = np.union1d(instr_bar[keep], np.flatnonzero(recall.any(axis=1)))
    # Timestamps of the event bars, boxed in one batch (one at a time is slow); carried orders
    # can add bars, which are boxed on demand.
    stamp_at = dict(zip(events.tolist(), dates[events], strict=True))
    named = np.union1d(events, instr_src[keep])
    iso = np.datetime_as_string(day[named].astype("datetime64[D]")).tolist()
    date_strs.update(zip(named.tolist(), iso, strict=True))

    book = _Book(cfg.initial_capital, symbols)
    # Borrow between events without a per-bar loop: P[t, leg] = sum over k <= t of
    # close[k-1, leg] x days(k-1, k], so a constant short of s shares pays
    # s x rate / day_count x (P[b] - P[a]) over the bars (a, b] (borrow on the prior close).
    base = np.zeros((n, 2))
    if n > 1:
        base[1:] = np.cumsum(close[:-1] * gap_days[1:, None], axis=0)
    close_base = np.hstack([close, base])  # equity over a stretch = const + close_base @ v
    rates: list[float] = borrow_rate.tolist()
    # State after each event bar: (bar, cash, qty long leg, qty short leg, borrow paid so far).
    record: list[tuple[int, float, int, int, float]] = []
    fills: list[tuple[Any, ...]] = []
    rejections: list[Rejection] = []
    trips: list[RoundTrip] = []
    costs = dict.fromkeys(COST_KINDS, 0.0)
    peak = cfg.initial_capital
    halted_at: pd.Timestamp | None = None
    carry: list[Order] = []
    trip_start: tuple[pd.Timestamp, float, int] | None = None
    event_bars = 0
    borrow_total = 0.0

    cached_row: list[Any] = [-1, None]

    def row(j: int) -> list[float]:
        """Prices of bar j as Python floats (numpy scalars are slow one at a time)."""
        if cached_row[0] != j:
            cached_row[0], cached_row[1] = j, close[j].tolist()
        return cached_row[1]

    def mark(j: int) -> float:
        px = row(j)
        return book.cash + book.qty[0] * px[0] + book.qty[1] * px[1]

    def borrow_coef() -> list[float]:
        """USD of borrow per unit of P, per leg, for the book's current shorts."""
        return [max(-book.qty[leg], 0) * rates[leg] / day_count for leg in (0, 1)]

    def borrow_between(a: int, b: int) -> float:
        """Borrow paid over bars (a, b] with the current positions."""
        if b <= a:
            return 0.0
        c = borrow_coef()
        if c[0] == 0.0 and c[1] == 0.0:
            return 0.0
        return c[0] * (base[b, 0] - base[a, 0]) + c[1] * (base[b, 1] - base[a, 1])

    def submit(j: int, orders: list[Order], now: pd.Timestamp, sod: float) -> list[Fill]:
        nonlocal halted_at
        if not orders:
            return []
        equity = mark(j)
        portfolio = rm.PortfolioSnapshot(
            equity=equity,
            cash=book.cash,
            positions={symbols[0]: book.qty[0], symbols[1]: book.qty[1]},
            start_of_day_equity=sod,
        )
        px, ref = row(j), row(max(j - 1, 0))
        market = rm.MarketSnapshot(
            now=now,
            prices={symbols[0]: px[0], symbols[1]: px[1]},
            price_times={symbols[0]: now, symbols[1]: now},
            reference_prices={symbols[0]: ref[0], symbols[1]: ref[1]},
        )
        try:
            basket = risk.pre_trade_check(orders, portfolio, market)
        except RiskViolation as exc:
            rejections.append(Rejection(now, exc.reason, exc.detail, orders[0].purpose.value))
            if log_rejections:
                log.info(
                    "%s %s: risk gate rejected %s: [%s] %s",
                    label,
                    now.date(),
                    " + ".join(f"{o.side} {o.qty} {o.symbol}" for o in orders),
                    exc.reason,
                    exc.detail,
                )
            return []
        traded = {o.symbol for o in orders}
        quotes = {
            symbols[leg]: BarQuote(px[leg], float(vol[j, leg]), float(adv[j, leg]), now)
            for leg in (0, 1)
            if symbols[leg] in traded
        }
        done = executor.execute(basket, quotes)
        for f in done:
            leg = symbols.index(f.symbol)
            book.apply(leg, f)
            penalty = 0.0
            if f.purpose is Purpose.BUY_IN:
                penalty = f.qty * f.reference_price * ex.buy_in_penalty_bps / 1e4
            c = f.costs
            costs["commission"] += c.commission
            costs["spread"] += c.spread
            costs["impact"] += c.impact
            costs["sec_fee"] += c.sec_fee
            costs["finra_taf"] += c.finra_taf
            costs["buy_in_penalty"] += penalty
            fills.append(
                (
                    now,
                    f.symbol,
                    f.side._value_,  # _value_: a plain attribute; .value is a slow property
                    f.qty,
                    f.requested_qty,
                    f.reference_price,
                    f.price,
                    f.notional,
                    c.commission,
                    c.spread,
                    c.impact,
                    c.sec_fee,
                    c.finra_taf,
                    penalty,
                    f.purpose._value_,
                    f.status._value_,
                    f.client_order_id,
                )
            )
            if f.unfilled_qty > 0 and ex.remainder is RemainderPolicy.CARRY:
                carry.append(
                    Order(
                        f.symbol,
                        f.side,
                        f.unfilled_qty,
                        client_order_id(label, now.date(), f.symbol, "carry", f.client_order_id),
                        purpose=Purpose.CARRY,
                    )
                )
        return done

    def orders_to(j: int, target: tuple[int, int], purpose: Purpose, tag: str) -> list[list[Order]]:
        """[reducing orders, increasing orders] that move the book to `target` shares (the same
        order builder as the live loop's)."""
        held = {symbols[0]: book.qty[0], symbols[1]: book.qty[1]}
        goal = {symbols[0]: target[0], symbols[1]: target[1]}
        reduce, increase = orders_toward(held, goal, purpose, (label, date_str(j), tag))
        return [reduce, increase]

    def direction() -> int:
        q = book.qty[0]
        return 0 if q == 0 and book.qty[1] == 0 else (1 if q > 0 or book.qty[1] < 0 else -1)

    def trip_edge(j: int, now: pd.Timestamp, before: int) -> None:
        """Close or open round trips when the direction changed across a basket."""
        nonlocal trip_start
        after = direction()
        if after == before:
            return
        equity = mark(j)
        if trip_start is not None and before != 0:
            start_date, start_eq, d = trip_start
            trips.append(RoundTrip(start_date, now, d, equity - start_eq))
            trip_start = None
        if after != 0:
            trip_start = (now, equity, after)

    i = 0
    k = 0
    n_events = len(events)
    while i < n:
        while k < n_events and events[k] < i:
            k += 1
        nxt = int(events[k]) if k < n_events else n
        if carry:
            nxt = i
        if nxt > i:
            # A stretch without events: positions constant, so no per-bar Python.
            if book.qty[0] == 0 and book.qty[1] == 0:
                peak = max(peak, book.cash)
            elif halted_at is None:  # holding (never from bar 0: the book starts flat)
                c = borrow_coef()
                v = np.array([book.qty[0], book.qty[1], -c[0], -c[1]], dtype="float64")
                const = book.cash + c[0] * base[i - 1, 0] + c[1] * base[i - 1, 1]
                eq_seg = const + close_base[i:nxt] @ v
                top = max(peak, float(eq_seg.max()))
                if float(eq_seg.min()) > top * (1.0 - limit):  # cheap: no bar can be in breach
                    breach, peak_new = None, top
                else:
                    breach, peak_new = rm.drawdown_breach_index(eq_seg, peak, limit)
                if breach is not None:
                    nxt = i + breach  # that bar takes the per-bar path (liquidation)
                    if breach > 0:
                        peak = max(peak, float(eq_seg[:breach].max()))
                else:
                    peak = peak_new
            paid = borrow_between(i - 1, nxt - 1)
            book.cash -= paid
            borrow_total += paid
            i = nxt
            if i >= n:
                break
        # Bar i: the per-bar path.
        j = i
        event_bars += 1
        now = stamp_at.get(j)
        if now is None:
            now = dates[j]
        sod = mark(j - 1) if j > 0 else cfg.initial_capital  # last close's equity
        bar_fee = borrow_between(j - 1, j)
        book.cash -= bar_fee
        borrow_total += bar_fee
        equity = mark(j)
        before = direction()
        if halted_at is None and before != 0 and equity <= peak * (1.0 - limit):
            risk.halt(
                f"drawdown {1 - equity / peak:.1%} from peak ${peak:,.0f} >= {limit:.0%}",
                now,
            )
            halted_at = now
            carry.clear()
            for batch in orders_to(j, (0, 0), Purpose.LIQUIDATION, "dd"):
                submit(j, batch, now, sod)
            trip_edge(j, now, before)
        peak = max(peak, equity)
        # Recalls: a short in a recalled symbol is bought in, the other leg closed with it.
        for leg in (0, 1):
            if recall[j, leg] and book.qty[leg] < 0:
                before = direction()
                buy_in = Order(
                    symbols[leg],
                    Side.BUY,
                    -book.qty[leg],
                    client_order_id(label, date_str(j), symbols[leg], "buy_in"),
                    purpose=Purpose.BUY_IN,
                )
                other = 1 - leg
                batch = [buy_in]
                if book.qty[other] != 0:
                    q = book.qty[other]
                    batch.append(
                        Order(
                            symbols[other],
                            Side.SELL if q > 0 else Side.BUY,
                            abs(q),
                            client_order_id(label, date_str(j), symbols[other], "recall_exit"),
                            purpose=Purpose.EXIT,
                        )
                    )
                carry.clear()
                submit(j, batch, now, sod)
                trip_edge(j, now, before)
        if carry:
            pending, carry[:] = list(carry), []
            if j not in instr_at:
                before = direction()
                submit(j, pending, now, sod)
                trip_edge(j, now, before)
        if j in instr_at:
            w = weights[instr_at[j]]
            scale = 1.0 if per_usd else mark(j)
            px = row(j)
            target = (math.trunc(w[0] * scale / px[0]), math.trunc(w[1] * scale / px[1]))
            for batch in orders_to(j, target, Purpose.ENTRY, date_str(instr_at[j])):
                if not batch:
                    continue
                before = direction()
                submit(j, batch, now, sod)
                trip_edge(j, now, before)
        record.append((j, book.cash, book.qty[0], book.qty[1], borrow_total))
        i = j + 1

    costs["borrow"] = borrow_total
    # Per-bar state from the event records: positions hold between events, cash falls by the
    # borrow accrued since the last event.
    rec = np.array(record, dtype="float64").reshape(-1, 5)
    rec = np.vstack([[-1.0, cfg.initial_capital, 0.0, 0.0, 0.0], rec])
    last = np.searchsorted(rec[:, 0], np.arange(n), side="right") - 1
    state = rec[last]
    qty_arr = state[:, 2:4].astype("int64")
    coef = np.maximum(-state[:, 2:4], 0.0) * borrow_rate / day_count
    since = base - base[np.maximum(state[:, 0].astype("int64"), 0)]
    accrued = (coef * since).sum(axis=1)
    cash_arr = state[:, 1] - accrued
    equity = pd.DataFrame(
        {
            "equity": cash_arr + (qty_arr * close).sum(axis=1),
            "cash": cash_arr,
            f"qty_{symbols[0]}": qty_arr[:, 0],
            f"qty_{symbols[1]}": qty_arr[:, 1],
            f"price_{symbols[0]}": close[:, 0],
            f"price_{symbols[1]}": close[:, 1],
            "borrow_paid": state[:, 4] + accrued,
        },
        index=dates,
    )
    equity.index.name = "date"
    trades = pd.DataFrame(fills, columns=TRADE_COLUMNS).astype(TRADE_DTYPES)
    trades["date"] = pd.DatetimeIndex(trades["date"], dtype=dates.dtype)  # typed when empty too
    unrealized = sum(book.qty[leg] * (close[-1, leg] - book.avg[leg]) for leg in (0, 1))
    return BacktestResult(
        label=label,
        symbols=symbols,
        equity=equity,
        trades=trades,
        rejections=rejections,
        round_trips=trips,
        costs=costs,
        initial_capital=cfg.initial_capital,
        halted_at=halted_at,
        realized_pnl=book.realized,
        unrealized_pnl=float(unrealized),
        instructions=int(keep.sum()),
        event_bars=event_bars,
    )


TRADE_COLUMNS = [
    "date",
    "symbol",
    "side",
    "qty",
    "requested_qty",
    "bar_price",
    "fill_price",
    "notional",
    "commission",
    "spread",
    "impact",
    "sec_fee",
    "finra_taf",
    "buy_in_penalty",
    "purpose",
    "status",
    "client_order_id",
]


# --- Strategies: model signals, the z-score benchmark, a user's signal file -----------------------
@dataclass(frozen=True)
class SizingConfig:
    """How big a position is, as a fraction of equity per leg."""

    kelly_fraction: float = 0.5  # half Kelly
    max_leg_fraction: float = 0.5  # Kelly cap per leg
    payoff_ratio: float = 1.0  # average win / average loss assumed by Kelly
    rule_leg_fraction: float = 0.25  # fixed size for rules and action files (no probability)
    hold: str = "keep"  # a Hold signal keeps the position ("keep") or closes it ("flat")

    def __post_init__(self) -> None:
        if self.hold not in ("keep", "flat"):
            raise ConfigurationError(f"hold must be 'keep' or 'flat', not {self.hold!r}")
        for name in ("kelly_fraction", "max_leg_fraction", "rule_leg_fraction"):
            value = getattr(self, name)
            if not 0 < value <= 5:
                raise ConfigurationError(f"{name.replace('_', ' ')} must be in (0, 5]: {value}")
        if not self.payoff_ratio > 0:
            raise ConfigurationError(f"payoff ratio must be positive: {self.payoff_ratio}")


def model_weights(signals: pd.DataFrame, sizing: SizingConfig) -> np.ndarray:
    """(n, 2) weights from `SignalGenerator.series` output: buy/sell sized by fractional Kelly on
    the probability of the predicted direction; hold keeps (or flattens) the position."""
    action = signals["action"].to_numpy()
    prob = signals["probability"].to_numpy("float64")
    states = np.full(len(action), np.nan)
    states[action == "buy"] = 1.0
    states[action == "sell"] = -1.0
    if sizing.hold == "flat":
        states[action == "hold"] = 0.0
    p_win = np.where(states < 0, 1.0 - prob, prob)
    frac = np.array(
        [
            rm.kelly_fraction(
                float(p),
                sizing.payoff_ratio,
                fraction=sizing.kelly_fraction,
                cap=sizing.max_leg_fraction,
            )
            for p in p_win
        ]
    )
    # A direction with no Kelly edge is no position.
    states = np.where((frac <= 0) & np.isfinite(states) & (states != 0), 0.0, states)
    return instructions_from_states(states, frac)


ACTION_STATES = {"buy": 1.0, "sell": -1.0, "flat": 0.0, "hold": np.nan}


def read_signal_file(
    path: str, pair: Any, dates: pd.DatetimeIndex, sizing: SizingConfig
) -> np.ndarray:
    """(n, 2) weights on `dates` from a CSV: `date,action` (buy, sell, hold, flat or the pair's
    signal text, `Pair.buy_signal` / `Pair.sell_signal`) or `date,<LONG>,<SHORT>` target weights
    (signed fractions of equity; `long_weight,short_weight` also accepted). Each date must be a
    bar."""
    from pathlib import Path

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
    text = raw[cols["date"]].str.strip()
    when = pd.to_datetime(text, format="ISO8601", errors="coerce")
    if when.isna().any():
        bad = int(np.flatnonzero(when.isna().to_numpy())[0])
        raise ConfigurationError(
            f"signal file {file} line {line_no[bad]}: bad date {text[bad]!r} (use YYYY-MM-DD)"
        )
    when = pd.DatetimeIndex(when).tz_localize(None).normalize()
    index = pd.DatetimeIndex(dates).tz_localize(None).normalize()
    pos = index.get_indexer(when)
    if (pos < 0).any():
        bad = int(np.flatnonzero(pos < 0)[0])
        raise ConfigurationError(
            f"signal file {file} line {line_no[bad]}: {when[bad].date()} is not a bar of the "
            f"backtest ({index[0].date()} .. {index[-1].date()}; weekends and holidays have none)"
        )
    if pd.Index(pos).duplicated().any():
        bad = int(np.flatnonzero(pd.Index(pos).duplicated())[0])
        raise ConfigurationError(
            f"signal file {file} line {line_no[bad]}: date {when[bad].date()} repeats"
        )
    weights = np.full((len(index), 2), np.nan)
    long_col = cols.get(pair.long.lower()) or cols.get("long_weight")
    short_col = cols.get(pair.short.lower()) or cols.get("short_weight")
    if "action" in cols:
        texts = {
            "buy": 1.0,
            "sell": -1.0,
            "flat": 0.0,
            "hold": np.nan,
            pair.buy_signal.lower(): 1.0,
            pair.sell_signal.lower(): -1.0,
        }
        states = np.full(len(index), np.nan)
        for line, p, a in zip(line_no, pos, raw[cols["action"]], strict=True):
            key = str(a).strip().lower()
            if key not in texts:
                raise ConfigurationError(
                    f"signal file {file} line {line}: unknown action {a!r} "
                    f"(use buy, sell, hold, flat, {pair.buy_signal!r} or {pair.sell_signal!r})"
                )
            states[p] = texts[key]
        return instructions_from_states(states, sizing.rule_leg_fraction)
    if long_col is None or short_col is None:
        raise ConfigurationError(
            f"signal file {file} needs an 'action' column or weight columns "
            f"'{pair.long}','{pair.short}' (or 'long_weight','short_weight')"
        )
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
        weights[pos, j] = arr
    return weights


# --- Summary --------------------------------------------------------------------------------------
def performance(equity: pd.Series, initial_capital: float) -> dict[str, float]:
    """Return and risk figures of an equity curve (daily bars). VaR/CVaR: positive loss fractions
    of equity over one bar; max drawdown: negative fraction (see risk_management)."""
    returns = (equity / equity.shift(1).fillna(initial_capital) - 1.0).to_numpy()
    m = rm.risk_metrics(returns)
    return {
        "total_return": float(equity.iloc[-1] / initial_capital - 1.0),
        "cagr": m.cagr,
        "sharpe": m.sharpe,
        "sortino": m.sortino,
        "max_drawdown": m.max_drawdown,
        "calmar": m.calmar,
        "var_95": m.var_95,
        "cvar_95": m.cvar_95,
        "var_99": m.var_99,
        "cvar_99": m.cvar_99,
        "parametric_var_95": m.parametric_var_95,
        "final_equity": float(equity.iloc[-1]),
    }


def summarize(result: BacktestResult) -> dict[str, Any]:
    """Everything the report shows for one engine run (JSON-safe)."""
    eq = result.equity["equity"]
    out: dict[str, Any] = performance(eq, result.initial_capital)
    years = max(len(eq) / 252.0, 1e-9)
    traded = float(result.trades["notional"].sum()) if len(result.trades) else 0.0
    trips = result.round_trips
    out.update(
        {
            "fills": len(result.trades),
            "round_trips": len(trips),
            "win_rate": (sum(t.pnl > 0 for t in trips) / len(trips)) if trips else float("nan"),
            "turnover_per_year": traded / float(eq.mean()) / years,
            "traded_notional": traded,
            "costs": {k: round(v, 2) for k, v in result.costs.items()},
            "total_costs": round(sum(result.costs.values()), 2),
            "rejections": result.rejection_counts,
            "halted_at": None if result.halted_at is None else str(result.halted_at.date()),
            "realized_pnl": result.realized_pnl,
            "unrealized_pnl": result.unrealized_pnl,
            "instructions": result.instructions,
            "event_bars": result.event_bars,
        }
    )
    return out


# --- The `main.py backtest` job -------------------------------------------------------------------
@dataclass(frozen=True)
class BacktestRequest:
    """What the user asked for on the command line."""

    pair: Any  # constants.Pair
    start: str | None = None
    end: str | None = None
    model_version: str | None = None
    allow_in_sample: bool = False
    signal_file: str | None = None
    zscore_entry: float = 2.0
    zscore_exit: float = 0.5
    config: BacktestConfig = field(default_factory=BacktestConfig)
    sizing: SizingConfig = field(default_factory=SizingConfig)
    write_charts: bool = True


@dataclass
class BacktestReport:
    """A finished run: the strategy, both benchmarks, where the files are."""

    request: BacktestRequest
    strategy: BacktestResult
    zscore: BacktestResult
    buy_hold: pd.Series  # equity of buy-and-hold of the long leg (no costs)
    summary: dict[str, Any]
    run_dir: Any  # Path
    notes: list[str]


def _signals_for_range(
    request: BacktestRequest, table: pd.DataFrame, home: Any, notes: list[str]
) -> tuple[pd.DataFrame, pd.DatetimeIndex, dict[str, Any]]:
    """Model signals for the requested bars and what the report says about the model."""
    import signals as sg

    pair = request.pair
    gen = sg.SignalGenerator(pair, home=home)
    if request.model_version:
        record = gen.registry.get(request.model_version)
        if (record.long, record.short) != (pair.long, pair.short):
            raise ConfigurationError(
                f"model {record.version} was trained on {record.long}/{record.short}, "
                f"not {pair.long}/{pair.short}"
            )
        seen_until = pd.Timestamp(record.metadata["ranges"]["validation"][1])
        versions = [record.version]
    else:
        seen_until = gen.in_sample_until()
        versions = sorted(
            {
                r.version
                for c in gen.controllers.values()
                for r in (c.state().champion, c.state().challenger)
                if r is not None
            }
        )
    dates = pd.DatetimeIndex(table.index)
    start = pd.Timestamp(request.start) if request.start else seen_until + pd.Timedelta(days=1)
    lo = dates.searchsorted(start)
    hi = dates.searchsorted(pd.Timestamp(request.end), side="right") if request.end else len(dates)
    if hi - lo < 2:
        raise ConfigurationError(
            f"fewer than 2 bars between {start.date()} and "
            f"{request.end or dates[-1].date()} in the processed data "
            f"({dates[0].date()} .. {dates[-1].date()})"
        )
    in_sample = bool(dates[lo] <= seen_until)
    if in_sample and not request.allow_in_sample:
        raise ConfigurationError(
            f"{dates[lo].date()} .. {min(dates[hi - 1], seen_until).date()} is inside the "
            f"training/validation range of the model (to {seen_until.date()}); start after it "
            "or pass --allow-in-sample (the result is then labeled IN-SAMPLE)"
        )
    if request.model_version:
        features = _feature_columns(pair, table)
        loaded = sg.load_model(gen.registry, request.model_version, pair, features)
        prob = loaded.probabilities(table, slice(lo, hi))
        rows = [
            sg.make_signal(pair, float(p), loaded.version, d, gen.thresholds)
            for p, d in zip(prob, dates[lo:hi], strict=True)
        ]
        sig = pd.DataFrame(
            {
                "action": [s.action.value for s in rows],
                "probability": [s.probability for s in rows],
                "model_version": [s.model_version for s in rows],
            },
            index=dates[lo:hi],
        )
        sig["in_sample"] = dates[lo:hi] <= seen_until
    else:
        sig = gen.series(table, dates[lo], dates[hi - 1], allow_in_sample=request.allow_in_sample)
    if in_sample:
        notes.append(
            f"IN-SAMPLE: bars up to {seen_until.date()} were seen by the model in training or "
            "validation; these results overstate what to expect"
        )
    info = {"versions": versions, "in_sample_until": str(seen_until.date()), "in_sample": in_sample}
    return sig, dates[lo:hi], info


def _feature_columns(pair: Any, table: pd.DataFrame) -> list[str]:
    """The feature columns of a processed table for `pair` (with volume ones when present)."""
    import constants as C

    names = C.feature_names(pair.long, pair.short, with_volume=True)
    return [c for c in names if c in table.columns]


def backtest(
    request: BacktestRequest,
    *,
    home: Any = None,
    progress: Any = None,
    run_id: str | None = None,
) -> BacktestReport:
    """Load (or process) the pair's data, get signals (training a model first if there is none),
    run the strategy and the two benchmarks, and write results/<run-id>/."""
    import constants as C
    import process_stock_data as psd
    from error_handling import DataError

    home = (home or C.paths()).ensure()
    pair = request.pair
    notes: list[str] = []
    try:
        table, _meta = psd.load_processed(pair, home)
    except DataError:
        table, _ = psd.process(C.data_source_name(), pair, home=home)
        notes.append(f"processed {pair.long}/{pair.short} from {C.data_source_name()} first")
    close_cols = [f"{pair.long}_close", f"{pair.short}_close"]
    model_info: dict[str, Any] = {}
    if request.signal_file:
        dates = pd.DatetimeIndex(table.index)
        lo = dates.searchsorted(pd.Timestamp(request.start)) if request.start else 0
        hi = (
            dates.searchsorted(pd.Timestamp(request.end), side="right")
            if request.end
            else len(dates)
        )
        dates = dates[lo:hi]
        if len(dates) < 2:
            raise ConfigurationError("fewer than 2 bars in the requested range")
        weights = read_signal_file(request.signal_file, pair, dates, request.sizing)
        model_info = {"signal_file": str(request.signal_file), "in_sample": False}
        label = "signal file"
    else:
        import train_model as tm

        trained = tm.ensure_active_model(pair, home, progress=progress)
        if trained:
            notes.append(trained)
        sig, dates, model_info = _signals_for_range(request, table, home, notes)
        weights = model_weights(sig, request.sizing)
        label = "model"
    prices = table.loc[dates, close_cols]
    prices.columns = [pair.long, pair.short]
    cfg = request.config
    strategy = run_backtest(prices, weights, cfg, label=label)

    # Benchmark 1: the spread z-score rule, same costs and risk gate. The z-score uses the full
    # processed history up to each bar (causal), so it is warm on the first backtest bar.
    all_close = table[close_cols].to_numpy("float64")
    z = rolling_spread_zscore(np.log(all_close[:, 0]), np.log(all_close[:, 1]))
    z = pd.Series(z, index=table.index).loc[dates].to_numpy()
    z_weights = instructions_from_states(
        zscore_rule_states(z, request.zscore_entry, request.zscore_exit),
        request.sizing.rule_leg_fraction,
    )
    zscore = run_backtest(prices, z_weights, cfg, label="z-score rule", log_rejections=False)
    # Benchmark 2: buy and hold the long leg with all capital, no costs.
    buy_hold = cfg.initial_capital * prices[pair.long] / prices[pair.long].iloc[0]

    notes.append(
        f"average daily volume assumed ${cfg.execution.default_adv_usd:,.0f} per leg"
        + ("" if f"{pair.long}_{C.VOLUME_FEATURE}" in table.columns else " (no volume in source)")
        + "; set it with --adv-usd"
    )
    delay = cfg.fill_delay_bars
    notes.append(
        "fills at the close of the bar after the signal"
        if delay == 1
        else (
            "fills at the signal bar's close"
            if delay == 0
            else f"fills {delay} bars after the signal"
        )
    )
    summary = {
        "run": {
            "pair": [pair.long, pair.short],
            "start": str(dates[0].date()),
            "end": str(dates[-1].date()),
            "bars": len(dates),
            "strategy": label,
            **model_info,
            "initial_capital": cfg.initial_capital,
            "fill_delay_bars": delay,
            "notes": notes,
        },
        "strategy": summarize(strategy),
        "benchmarks": {
            "zscore_rule": summarize(zscore),
            "buy_hold_long": performance(buy_hold, cfg.initial_capital),
        },
        "config": _jsonable(cfg),
        "sizing": _jsonable(request.sizing),
        "rejections": [
            {
                "date": str(r.date.date()),
                "reason": r.reason,
                "message": r.message,
                "purpose": r.purpose,
            }
            for r in strategy.rejections
        ],
    }
    run_dir = write_results(
        home.results_dir,
        summary,
        strategy,
        zscore,
        buy_hold,
        run_id=run_id,
        charts=request.write_charts,
    )
    return BacktestReport(request, strategy, zscore, buy_hold, summary, run_dir, notes)


def _jsonable(obj: Any) -> Any:
    """Dataclasses, enums, sets and mappings as plain JSON values (for summary.json)."""
    import dataclasses
    import enum

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, dict) or hasattr(obj, "items"):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (set, frozenset)):
        return sorted(_jsonable(v) for v in obj)
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return str(value)


def _clean(obj: Any) -> Any:
    """NaN/inf -> None so summary.json is strict JSON."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    if isinstance(obj, (float, np.floating)) and not math.isfinite(float(obj)):
        return None
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_results(
    results_dir: Any,
    summary: dict[str, Any],
    strategy: BacktestResult,
    zscore: BacktestResult,
    buy_hold: pd.Series,
    *,
    run_id: str | None = None,
    charts: bool = True,
) -> Any:
    """results/<run-id>/: equity.csv, trades.csv, summary.json, equity.png, equity.html. Written
    into a hidden temporary folder and renamed at the end, so a folder either is complete or is
    not there."""
    import json
    import shutil
    import tempfile
    from datetime import UTC, datetime
    from pathlib import Path

    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    run = summary["run"]
    if run_id is None:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        kind = "signals" if run.get("signal_file") else "model"
        run_id = f"{stamp}_{run['pair'][0]}_{run['pair'][1]}_{kind}"
    final = results_dir / run_id
    suffix = 1
    while final.exists():
        suffix += 1
        final = results_dir / f"{run_id}-{suffix}"
    summary["run"]["run_id"] = final.name
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=results_dir))
    try:
        eq = strategy.equity.copy()
        eq["drawdown"] = eq["equity"] / eq["equity"].cummax() - 1.0
        eq["zscore_rule_equity"] = zscore.equity["equity"]
        eq["buy_hold_equity"] = buy_hold
        eq.to_csv(tmp / "equity.csv", float_format="%.6f")
        strategy.trades.to_csv(tmp / "trades.csv", index=False, float_format="%.6f")
        text = json.dumps(_clean(summary), indent=2, default=_json_default, allow_nan=False)
        (tmp / "summary.json").write_text(text + "\n")
        if charts:
            _charts(tmp, eq, summary)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o755)  # noqa: S103 (mkdtemp makes it 0700; results are for reading)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _charts(folder: Any, eq: pd.DataFrame, summary: dict[str, Any]) -> None:
    """equity.png (matplotlib) and equity.html (plotly): equity of the strategy and both
    benchmarks, and the strategy's drawdown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    run = summary["run"]
    long, short = run["pair"]
    title = f"{long}/{short} {run['start']} .. {run['end']}" + (
        " (IN-SAMPLE)" if run.get("in_sample") else ""
    )
    lines = {
        f"strategy ({run['strategy']})": eq["equity"],
        "z-score rule": eq["zscore_rule_equity"],
        f"buy & hold {long}": eq["buy_hold_equity"],
    }
    fig, (ax1, ax2) = plt.subplots(
        2, 1, figsize=(11, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    for name, series in lines.items():
        ax1.plot(series.index, series.to_numpy(), label=name, linewidth=1.2)
    ax1.set_ylabel("equity (USD)")
    ax1.set_title(title)
    ax1.legend(loc="upper left")
    ax1.grid(alpha=0.3)
    ax2.fill_between(eq.index, eq["drawdown"].to_numpy() * 100, 0, color="tab:red", alpha=0.4)
    ax2.set_ylabel("drawdown (%)")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / "equity.png", dpi=110)
    plt.close(fig)

    pfig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.7, 0.3])
    for name, series in lines.items():
        pfig.add_trace(go.Scatter(x=series.index, y=series.to_numpy(), name=name), row=1, col=1)
    pfig.add_trace(
        go.Scatter(
            x=eq.index,
            y=eq["drawdown"].to_numpy() * 100,
            name="drawdown (%)",
            fill="tozeroy",
            line={"color": "firebrick"},
        ),
        row=2,
        col=1,
    )
    pfig.update_layout(title=title, yaxis_title="equity (USD)", yaxis2_title="drawdown (%)")
    pfig.write_html(folder / "equity.html", include_plotlyjs=True, full_html=True)


TRADE_DTYPES = {
    "symbol": "object",
    "side": "object",
    "qty": "int64",
    "requested_qty": "int64",
    **dict.fromkeys(TRADE_COLUMNS[TRADE_COLUMNS.index("bar_price") : -3], "float64"),  # USD
    "purpose": "object",
    "status": "object",
    "client_order_id": "object",
}
