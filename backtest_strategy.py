"""The backtest: the shared decision step (`pair_engine`) driven over daily bars.

Per bar with something to do: mark to market (borrow accrued) -> drawdown control (a breach seen
on the bar's close halts there; its liquidation is an event `fill_delay_bars` later) -> recalls
(forced buy-in) -> carried remainders -> the bar's instruction -> `pair_engine.decide` (sizing,
rebalance band, `pre_trade_check`) -> the backtest venue (executor, ledger). Bars with nothing to
do (no instruction, no recall, no carried order) are computed in vectorized form: positions are
constant there, so cash, equity, borrow and the drawdown test are numpy over the whole stretch, and
the per-bar path only runs where something happens.

Time convention: an instruction stamped on bar t (decided on t's close) fills on bar
t + `fill_delay_bars` at that bar's close. The default delay is 1 (next close): a decision cannot
fill at the close it was computed from. The paper replay of the live loop does exactly the same.
Units: prices and money in USD, quantities in whole shares (int) or, with
`SizingConfig.fractional_shares`, fractional shares (float; the qty columns of equity.csv and
trades.csv are then floats), weights as signed fractions of equity per leg or, for rule sizing
with `SizingConfig.leg_usd`, signed USD per leg.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

import fast_engine
import pair_engine as pe
import risk_management as rm
import transaction_costs as tc
from error_handling import ConfigurationError
from pair_engine import (
    Instructions,
    SizingConfig,
    TradingConfig,
    instructions_from_states,
    model_weights,
    read_signal_file,
    rule_instructions,
)
from trading_execution import (
    ApprovedBasket,
    BarQuote,
    Fill,
    Order,
    OrderExecutor,
    Purpose,
    Qty,
    RemainderPolicy,
    Side,
    client_order_id,
)
from trial_ledger import Trial, TrialCount, TrialLedger, config_hash

log = logging.getLogger(__name__)

COST_KINDS = ("commission", "spread", "impact", "sec_fee", "finra_taf", "borrow", "buy_in_penalty")

#: Why the instruction of a bar a drawdown liquidation goes out on is not traded.
REPLACED = "a drawdown liquidation goes out on this bar: its instruction is not traded"

#: The backtest's configuration is the one trading configuration (kept under its old name).
BacktestConfig = TradingConfig

__all__ = [
    "BacktestConfig",
    "Instructions",
    "SizingConfig",
    "TradingConfig",
    "instructions_from_states",
    "model_weights",
    "read_signal_file",
    "rule_instructions",
]


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
    #: The trades frame, or what builds it on first read (`trades`).
    trade_rows: pd.DataFrame | Callable[[], pd.DataFrame] = field(repr=False)
    rejections: list[Rejection]
    #: The round trips, or what builds them on first read (`round_trips`).
    trip_rows: list[RoundTrip] | Callable[[], list[RoundTrip]] = field(repr=False)
    costs: dict[str, float]
    initial_capital: float
    #: The bar whose close revealed a drawdown breach (trading halted from it on); None if none.
    halted_at: pd.Timestamp | None
    realized_pnl: float
    unrealized_pnl: float
    instructions: int
    event_bars: int
    #: Bars the compiled event loop ran (`fast_engine`); the interpreted path ran the rest.
    compiled_bars: int = 0
    #: The bar the drawdown liquidation filled on (`fill_delay_bars` after `halted_at`); None
    #: when there was none, or it fell after the last bar.
    liquidated_at: pd.Timestamp | None = None

    @property
    def trades(self) -> pd.DataFrame:
        """One row per fill (`TRADE_COLUMNS`). A compiled run builds the frame, client order ids
        included, on first read: a scan or a sweep that only needs equity never pays for it."""
        if callable(self.trade_rows):
            self.trade_rows = self.trade_rows()
        return self.trade_rows

    @property
    def fill_count(self) -> int:
        """Fills in the run (rows of `trades`), without building the trades frame."""
        rows = self.trade_rows
        return len(rows.rows) if isinstance(rows, _CompiledFills) else len(self.trades)

    def traded_notional(self) -> float:
        """Gross traded notional, USD: the sum over fills of |qty x fill price| (the trades
        frame's `notional` column, summed as pandas sums it), without building the frame."""
        rows = self.trade_rows
        notional = rows.notional() if isinstance(rows, _CompiledFills) else self.trades["notional"]
        return float(pd.Series(notional, dtype="float64").abs().sum()) if len(notional) else 0.0

    @property
    def round_trips(self) -> list[RoundTrip]:
        """Pair positions from entry to exit, oldest first (built on first read, like `trades`)."""
        if callable(self.trip_rows):
            self.trip_rows = self.trip_rows()
        return self.trip_rows

    @property
    def returns(self) -> pd.Series:
        """Simple returns of equity per bar, one per bar (n = bars): the first bar against the
        initial capital, 0.0 unless something fills on it (fill delay 0). Every statistic uses
        this series as it is (performance_stats: "Returns")."""
        eq = self.equity["equity"]
        prev = eq.shift(1).fillna(self.initial_capital)
        return eq / prev - 1.0

    @property
    def rejection_counts(self) -> dict[str, int]:
        return dict(Counter(r.reason for r in self.rejections))


# --- Instructions ---------------------------------------------------------------------------------
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


def textbook_zscore_states(zscore: np.ndarray, entry: float = 2.0, exit: float = 0.5) -> np.ndarray:
    """The textbook rule as direction states: from flat, sell the spread above +entry and buy it
    below -entry; a position goes flat inside ±exit or on the opposite signal, with no direct
    reversal (the opposite entry waits for the next bar). NaN z is flat."""
    z = np.asarray(zscore, dtype="float64")
    out = np.zeros(len(z))
    state = 0.0
    for i, v in enumerate(z):
        if math.isnan(v):
            state = 0.0
        elif state == 0.0:
            state = -1.0 if v > entry else (1.0 if v < -entry else 0.0)
        elif abs(v) < exit or (v > entry if state > 0 else v < -entry):
            state = 0.0
        out[i] = state
    return out


class ZScoreRule(NamedTuple):
    """A z-score benchmark: its z-score (log closes -> z) and its states (z -> directions)."""

    zscore: Any
    states: Any
    description: str


#: The z-score benchmarks (`--benchmark-rule`): the same z-score, two rules. Both use 60-bar
#: windows, entry 2.0 and exit 0.5 by default, dollar-neutral legs of `--rule-fraction` (or
#: `--leg-usd`), and z computed on the whole processed history up to each bar, so it is warm on
#: the first backtest bar after 119 processed bars.
ZSCORE_RULES: dict[str, ZScoreRule] = {
    "current": ZScoreRule(
        rolling_spread_zscore,
        zscore_rule_states,
        "z of log(long) - beta_t log(short) (beta_t the 60-bar OLS slope) over its last 60 "
        "values; flat inside ±exit; reverses long<->short directly on an opposite signal",
    ),
    "textbook": ZScoreRule(
        rolling_spread_zscore,
        textbook_zscore_states,
        "the same z; from flat, enter beyond ±entry; flat inside ±exit or on an opposite "
        "signal, re-entering on a later bar (no direct reversal)",
    ),
}


# --- The backtest venue ---------------------------------------------------------------------------
class _Account(NamedTuple):
    equity: float
    cash: float
    buying_power: float


class _Quote(NamedTuple):
    price: float
    time: pd.Timestamp


class _Clock(NamedTuple):
    at: pd.Timestamp
    is_open: bool


class _BacktestVenue:
    """The `pair_engine.Venue` of a backtest: fills approved baskets at the current bar's close
    through `OrderExecutor`, books them in the shared `Ledger`, and records fills, costs and round
    trips."""

    name = "backtest"
    simulated = True
    live_checks = False

    def __init__(self, run: _BacktestRun):
        self.run = run
        self.order_prefix = run.order_prefix
        self.book = pe.Ledger(run.cfg.initial_capital, run.symbols)
        self.executor = OrderExecutor(run.cfg.execution)
        self.j = 0
        self.now: pd.Timestamp = run.dates[0]
        self.px: list[float] = run.close[0].tolist()
        self._quotes: dict[str, _Quote] = {}
        self._clock = _Clock(self.now, True)
        self.fills: list[tuple[Any, ...]] = []
        self.costs = dict.fromkeys(COST_KINDS, 0.0)
        self.carry: list[Order] = []
        self.trips: list[RoundTrip] = []
        self.trip_start: tuple[pd.Timestamp, float, int] | None = None

    def at_bar(self, j: int, now: pd.Timestamp) -> None:
        self.j, self.now, self.px = j, now, self.run.close[j].tolist()
        s0, s1 = self.run.symbols
        self._quotes = {s0: _Quote(self.px[0], now), s1: _Quote(self.px[1], now)}
        self._clock = _Clock(now, True)

    def mark(self, px: list[float] | None = None) -> float:
        px = px or self.px
        q = self.book.qty
        s0, s1 = self.run.symbols
        return self.book.cash + q[s0] * px[0] + q[s1] * px[1]

    def direction(self) -> int:
        s0, s1 = self.run.symbols
        q0, q1 = self.book.qty[s0], self.book.qty[s1]
        return 0 if q0 == 0 and q1 == 0 else (1 if q0 > 0 or q1 < 0 else -1)

    # The Venue protocol.
    def account(self) -> _Account:
        return _Account(self.mark(), self.book.cash, math.nan)

    def holdings(self) -> dict[str, int]:
        return dict(self.book.qty)

    def latest_prices(self, symbols: Any) -> dict[str, _Quote]:
        return self._quotes  # the bar's closes (set once per bar by `at_bar`)

    def clock(self) -> _Clock:
        return self._clock

    def known_orders(self, orders: Any) -> dict[str, Any]:
        return {}  # a backtest never restarts: no order is known before it is sent

    def await_fills(
        self, placed: Any, *, cancel_unfilled: bool, on_update: Any = None
    ) -> list[Any]:
        return list(placed)  # filled (or capped) at the bar's close when placed

    def submit_basket(self, basket: ApprovedBasket) -> list[Fill]:
        run, j, now = self.run, self.j, self.now
        before = self.direction()
        traded = {o.symbol for o in basket.orders}
        quotes = {
            sym: BarQuote(self.px[leg], float(run.vol[j, leg]), float(run.adv[j, leg]), now)
            for leg, sym in enumerate(run.symbols)
            if sym in traded
        }
        done = self.executor.execute(basket, quotes)
        for f in done:
            self.book.apply(f)
            self._record(f, now)
        self._trip_edge(now, before)
        return done

    def _record(self, f: Fill, now: pd.Timestamp) -> None:
        ex = self.run.cfg.execution
        penalty = 0.0
        if f.purpose is Purpose.BUY_IN:
            penalty = f.qty * f.reference_price * ex.buy_in_penalty_bps / 1e4
        c, costs = f.costs, self.costs
        costs["commission"] += c.commission
        costs["spread"] += c.spread
        costs["impact"] += c.impact
        costs["sec_fee"] += c.sec_fee
        costs["finra_taf"] += c.finra_taf
        costs["buy_in_penalty"] += penalty
        self.fills.append(
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
            self.carry.append(
                Order(
                    f.symbol,
                    f.side,
                    f.unfilled_qty,
                    client_order_id(
                        self.run.label, now.date(), f.symbol, "carry", f.client_order_id
                    ),
                    purpose=Purpose.CARRY,
                )
            )

    def _trip_edge(self, now: pd.Timestamp, before: int) -> None:
        """Close or open round trips when the direction changed across a basket."""
        after = self.direction()
        if after == before:
            return
        equity = self.mark()
        if self.trip_start is not None and before != 0:
            start_date, start_eq, d = self.trip_start
            self.trips.append(RoundTrip(start_date, now, d, equity - start_eq))
            self.trip_start = None
        if after != 0:
            self.trip_start = (now, equity, after)


# --- The run --------------------------------------------------------------------------------------
class _BacktestRun:
    """One backtest: the per-bar path for event bars (`bar`), vectorized stretches between them
    (`stretch`), and the result (`result`)."""

    def __init__(
        self,
        prices: pd.DataFrame,
        weights: np.ndarray,
        cfg: TradingConfig,
        *,
        label: str,
        strategy: str,
        volume: pd.DataFrame | None,
        history: pd.DataFrame | None,
        risk: rm.RiskManager | None,
        log_rejections: bool,
        per_usd: bool,
        order_prefix: str = "pt",
        engine: str = "auto",
    ):
        self.cfg, self.label, self.strategy = cfg, label, strategy
        self.engine = engine
        self.order_prefix = order_prefix
        self.log_rejections, self.per_usd = log_rejections, per_usd
        self.risk = risk or rm.RiskManager(cfg.limits, state_path=None, alerts=False)
        self.symbols = (str(prices.columns[0]), str(prices.columns[1]))
        n = self.n = len(prices)
        if n == 0:
            raise ConfigurationError("no bars to backtest")
        weights = np.asarray(weights, dtype="float64")
        if weights.shape != (n, 2):
            raise ConfigurationError(f"weights must have shape ({n}, 2), got {weights.shape}")
        self.weights = weights
        close = self.close = prices.to_numpy("float64")
        if not np.isfinite(close).all() or (close <= 0).any():
            raise ConfigurationError("prices must be finite and positive on every bar")
        self.dates = pd.DatetimeIndex(prices.index)
        self.day = self.dates.values.astype("datetime64[D]").astype("int64")
        self._market_inputs(prices, volume, history)
        self._events()
        self.venue = _BacktestVenue(self)
        self.rejections: list[Rejection] = []
        self.halted_at: pd.Timestamp | None = None
        #: The bar whose close revealed a drawdown breach, and the bar its liquidation fills on
        #: (`fill_delay_bars` later; None once sent, or past the data).
        self.breach_bar: int | None = None
        self.liquidate_at: int | None = None
        self.liquidated_at: pd.Timestamp | None = None
        self.event_bars = 0
        # State after each event bar: (bar, cash, qty long leg, qty short leg, borrow paid so far).
        self.record: list[tuple[int, float, Qty, Qty, float]] | np.ndarray = []
        #: What builds the trades and round trips of a run the compiled loop finished.
        self.compiled: tuple[_CompiledFills, _CompiledTrips] | None = None
        self.compiled_bars = 0
        self.risk.raise_peak(cfg.initial_capital)

    def _market_inputs(
        self, prices: pd.DataFrame, volume: pd.DataFrame | None, history: pd.DataFrame | None
    ) -> None:
        """Volatility and ADV per bar from this bar and earlier ones only (with `history`, the
        bars before the run, as warm-up), and the borrow prefix sums."""
        close, ex = self.close, self.cfg.execution
        warm = np.empty((0, 2)) if history is None else history.to_numpy("float64")[-60:]
        self.vol = pe.daily_vol(np.vstack([warm, close]) if len(warm) else close)[len(warm) :]
        self.adv = pe.adv_shares(
            close, None if volume is None else volume.to_numpy("float64"), ex.default_adv_usd
        )
        costs = ex.costs
        self.rates = [tc.borrow_rate(s, costs) for s in self.symbols]
        self.day_count = float(costs.borrow_day_count)
        # Borrow between events without a per-bar loop: P[t, leg] = sum over k <= t of
        # close[k-1, leg] x days(k-1, k], so a constant short of s shares pays
        # s x rate / day_count x (P[b] - P[a]) over the bars (a, b] (borrow on the prior close).
        self.base = fast_engine.prefix_sums(close, self.day)

    @functools.cached_property
    def close_base(self) -> np.ndarray:
        """[close, base]: equity over a stretch = const + close_base @ v (the per-bar path)."""
        return np.hstack([self.close, self.base])

    def _events(self) -> None:
        """Instruction bars (after the fill delay; the last ones may fall past the data) and
        recall bars (configured dates, and seeded hard-to-borrow draws)."""
        n, ex, day = self.n, self.cfg.execution, self.day
        w = self.weights
        src = np.flatnonzero(~(np.isnan(w[:, 0]) | np.isnan(w[:, 1])))  # rows without a NaN
        at = src + self.cfg.fill_delay_bars
        keep = at < n
        self.instructions = int(keep.sum())
        self.instr_at = dict(zip(at[keep].tolist(), src[keep].tolist(), strict=True))
        self.instruction_bars = (at[keep], src[keep])  # fill bar, signal bar; ascending
        self.stamp_at: dict[int, pd.Timestamp] = {}  # named by `_name_events` when needed
        self.date_strs: dict[int, str] = {}
        recall = self.recall = np.zeros((n, 2), dtype=bool)
        self.has_recalls = any(
            ex.recall_dates.get(s) or s in ex.hard_to_borrow for s in self.symbols
        )
        self.events = at[keep]  # without recalls the instruction bars are the events
        if not self.has_recalls:
            return
        rng = np.random.default_rng(ex.seed)
        for leg, sym in enumerate(self.symbols):
            for d in ex.recall_dates.get(sym, ()):
                try:
                    recall_day = np.datetime64(pd.Timestamp(d).date(), "D").astype("int64")
                except ValueError:
                    raise ConfigurationError(f"recall date {d!r} for {sym} is not a date") from None
                recall[:, leg] |= day == recall_day
            if sym in ex.hard_to_borrow:
                recall[:, leg] |= rng.random(n) < ex.htb_recall_probability
        self.events = np.union1d(at[keep], np.flatnonzero(recall.any(axis=1)))

    def _name_events(self, start: int) -> None:
        """Timestamps and ISO dates of the event bars from `start` on, made in one batch for the
        per-bar path (one at a time is slow)."""
        events = self.events[self.events >= start]
        self.stamp_at = dict(zip(events.tolist(), self.dates[events], strict=True))
        at, src = self.instruction_bars
        named = np.union1d(events, src[at >= start])
        iso = np.datetime_as_string(self.day[named].astype("datetime64[D]")).tolist()
        self.date_strs = dict(zip(named.tolist(), iso, strict=True))

    def date_str(self, j: int) -> str:
        text = self.date_strs.get(j)
        if text is None:
            text = self.date_strs[j] = str(np.datetime64(int(self.day[j]), "D"))
        return text

    # --- Borrow -----------------------------------------------------------------------------------
    def _borrow_coef(self) -> list[float]:
        """USD of borrow per unit of P, per leg, for the book's current shorts."""
        q = self.venue.book.qty
        return [
            max(-q[s], 0) * r / self.day_count
            for s, r in zip(self.symbols, self.rates, strict=True)
        ]

    def _charge_borrow(self, a: int, b: int) -> None:
        """Charge the borrow of bars (a, b] with the current positions, keyed by b's day."""
        if b <= a:
            return
        q = self.venue.book.qty
        fee = 0.0
        if q[self.symbols[0]] < 0 or q[self.symbols[1]] < 0:
            c = self._borrow_coef()
            base = self.base
            fee = c[0] * (base[b, 0] - base[a, 0]) + c[1] * (base[b, 1] - base[a, 1])
        self.venue.book.charge_borrow(int(self.day[b]), fee)

    # --- Driver -----------------------------------------------------------------------------------
    def run(self) -> BacktestResult:
        i = k = 0
        if fast_engine.unsupported(self) is None:
            i = self.compiled_bars = self._adopt(fast_engine.run_compiled(self))
        events, n_events, n = self.events, len(self.events), self.n
        if i < n:
            self._name_events(i)
        while i < n:
            while k < n_events and events[k] < i:
                k += 1
            nxt = i if self.venue.carry else (int(events[k]) if k < n_events else n)
            if self.liquidate_at is not None:  # a drawdown liquidation is an event too
                nxt = min(nxt, self.liquidate_at)
            if nxt > i:
                nxt = self.stretch(i, nxt)
                i = nxt
                if i >= n:
                    break
            self.bar(i)
            i += 1
        result = self.result()
        # The venue points back at the run: without this, the run's per-bar arrays (volatility,
        # ADV, borrow sums: ~70 MB at 1M bars) live until the cyclic garbage collector runs.
        self.venue.run = None
        return result

    def _adopt(self, out: fast_engine.Outcome) -> int:
        """Take over the compiled loop's state; returns the bar the per-bar path resumes at."""
        st, venue, book = out.state, self.venue, self.venue.book
        s0, s1 = self.symbols
        book.cash = float(st[fast_engine.CASH])
        book.qty[s0], book.qty[s1] = int(st[fast_engine.Q0]), int(st[fast_engine.Q1])
        book.avg[s0], book.avg[s1] = float(st[fast_engine.AVG0]), float(st[fast_engine.AVG1])
        book.realized = float(st[fast_engine.REALIZED])
        book.borrow_paid = float(st[fast_engine.PAID])
        through = float(st[fast_engine.THROUGH])
        book.borrow_through = None if through == fast_engine.NO_DAY else int(through)
        self.risk.raise_peak(float(st[fast_engine.PEAK]))
        for kind, col in zip(
            COST_KINDS[:5], range(fast_engine.COMMISSION, fast_engine.FINRA_TAF + 1), strict=True
        ):
            venue.costs[kind] = float(st[col])
        self.event_bars = int(st[fast_engine.EVENT_BARS])
        if st[fast_engine.TRIP_J] >= 0:
            j = int(st[fast_engine.TRIP_J])
            trip_eq, trip_dir = float(st[fast_engine.TRIP_EQ]), int(st[fast_engine.TRIP_DIR])
            venue.trip_start = (self.dates[j], trip_eq, trip_dir)
        fills = _CompiledFills(
            out.fills, self.dates, self.symbols, self.strategy, self.label, self.order_prefix
        )
        trips = _CompiledTrips(out.trips, self.dates)
        if out.stopped_at >= self.n:
            self.record = out.records
            self.compiled = (fills, trips)
            return self.n
        # The per-bar path goes on from here: plain records, fill rows and trips, as it keeps them.
        self.record = [tuple(r) for r in out.records.tolist()]
        columns = fills.columns()
        venue.fills.extend(zip(*columns, strict=True))
        venue.trips.extend(trips())
        for o in range(int(st[fast_engine.PENDING])):  # remainders carried into this bar
            leg, rest, parent = st[
                fast_engine.PENDING + 1 + 3 * o : fast_engine.PENDING + 4 + 3 * o
            ]
            sym, parent = self.symbols[int(leg)], int(parent)
            when = self.dates[int(out.fills[parent, 0])].date()
            venue.carry.append(
                Order(
                    sym,
                    Side.BUY if rest > 0 else Side.SELL,
                    int(abs(rest)),
                    client_order_id(self.label, when, sym, "carry", columns[16][parent]),
                    purpose=Purpose.CARRY,
                )
            )
        return out.stopped_at

    def stretch(self, i: int, nxt: int) -> int:
        """Bars [i, nxt) without events: positions constant, so no per-bar Python. Returns where
        the per-bar path resumes (earlier than `nxt` when a bar breaches the drawdown limit)."""
        book, risk = self.venue.book, self.risk
        s0, s1 = self.symbols
        q0, q1 = book.qty[s0], book.qty[s1]
        if q0 == 0 and q1 == 0:
            risk.raise_peak(book.cash)
        elif not risk.halted:  # holding (never from bar 0: the book starts flat)
            c, base = self._borrow_coef(), self.base
            v = np.array([q0, q1, -c[0], -c[1]], dtype="float64")
            const = book.cash + c[0] * base[i - 1, 0] + c[1] * base[i - 1, 1]
            eq_seg = const + self.close_base[i:nxt] @ v
            peak = risk.equity_peak or self.cfg.initial_capital
            limit = self.cfg.limits.max_drawdown_pct
            top = max(peak, float(eq_seg.max()))
            if float(eq_seg.min()) > top * (1.0 - limit):  # cheap: no bar can be in breach
                breach = None
            else:
                breach, _ = rm.drawdown_breach_index(eq_seg, peak, limit)
            if breach is not None:
                if breach > 0:
                    risk.raise_peak(float(eq_seg[:breach].max()))
                nxt = i + breach  # that bar takes the per-bar path (liquidation)
            else:
                risk.raise_peak(top)
        self._charge_borrow(i - 1, nxt - 1)
        return nxt

    def bar(self, j: int) -> None:
        """The per-bar path of bar j: borrow, drawdown control, recalls, carried orders, the
        instruction; then the state is recorded."""
        self.event_bars += 1
        venue = self.venue
        now = self.stamp_at.get(j)
        if now is None:
            now = self.dates[j]
        prev = self.close[max(j - 1, 0)].tolist()
        sod = venue.mark(prev) if j > 0 else self.cfg.initial_capital  # last close's equity
        venue.at_bar(j, now)
        self._charge_borrow(j - 1, j)
        self.refs = dict(zip(self.symbols, prev, strict=True))
        self.sod = sod
        liquidated = False
        if j == self.liquidate_at or self._may_breach(venue.mark()):
            liquidated = self._control_drawdown(j, now, sod)
        self._recalls(j, now)
        if venue.carry:
            pending, venue.carry[:] = list(venue.carry), []
            if j not in self.instr_at:
                self._submit(pending, now)
        src = self.instr_at.get(j)
        if src is not None and liquidated:
            if self.weights[src].any():  # what is not flat, the halt refuses
                halted = rm.RiskReason.TRADING_HALTED.value
                self.rejections.append(Rejection(now, halted, REPLACED, Purpose.ENTRY.value))
        elif src is not None:
            report = pe.decide(
                venue,
                self.risk,
                self.cfg,
                self.weights[src].tolist(),
                self.symbols,
                id_parts=(self.strategy, self.date_str(j), self.date_str(src)),
                start_of_day_equity=sod,
                reference_prices=self.refs,
                per_usd=self.per_usd,
            )
            self._note(report, now)
        b = venue.book
        self.record.append(
            (j, b.cash, b.qty[self.symbols[0]], b.qty[self.symbols[1]], b.borrow_paid)
        )

    def _control_drawdown(self, j: int, now: pd.Timestamp, sod: float) -> bool:
        """`pair_engine.control_drawdown` on bar j: a breach seen at j's close halts trading
        there and schedules the liquidation `fill_delay_bars` later; on that bar it is sent
        (carried remainders are dropped for it; one the gate refuses is due again at j + 1).
        True when a liquidation went out on j."""
        venue, delay = self.venue, self.cfg.fill_delay_bars
        liquidation = pe.control_drawdown(
            venue,
            self.risk,
            now,
            bar=now,
            fill_delay_bars=delay,
            bars_since_breach=None if self.breach_bar is None else j - self.breach_bar,
            id_parts=pe.drawdown_ids(self.date_str(j), self.strategy),
            start_of_day_equity=sod,
            reference_prices=self.refs,
        )
        if self.breach_bar is None and self.risk.halted:  # the breach was seen on this bar
            self.breach_bar, self.halted_at = j, now
            self.liquidate_at = j + delay if liquidation is None else None
        if liquidation is None:
            return False
        refused = bool(liquidation.denials)
        self.liquidate_at = j + 1 if refused else None
        if not refused:
            self.liquidated_at = now
        venue.carry.clear()
        self._note(liquidation, now)
        return True

    def _may_breach(self, equity: float) -> bool:
        """False when bar equity cannot breach the drawdown limit (then only the peak moves): a
        speed filter in front of `pair_engine.control_drawdown`, which decides."""
        risk = self.risk
        if risk.halted:
            return False
        peak = max(risk.equity_peak or equity, equity)
        if equity > peak * (1.0 - self.cfg.limits.max_drawdown_pct):
            risk.raise_peak(equity)
            return False
        return True

    def _recalls(self, j: int, now: pd.Timestamp) -> None:
        """A short in a recalled symbol is bought in, the other leg closed with it."""
        q = self.venue.book.qty
        for leg in (0, 1):
            sym = self.symbols[leg]
            if not (self.recall[j, leg] and q[sym] < 0):
                continue
            batch = [
                Order(
                    sym,
                    Side.BUY,
                    -q[sym],
                    client_order_id(self.label, self.date_str(j), sym, "buy_in"),
                    purpose=Purpose.BUY_IN,
                )
            ]
            other = self.symbols[1 - leg]
            if q[other] != 0:
                batch.append(
                    Order(
                        other,
                        Side.SELL if q[other] > 0 else Side.BUY,
                        abs(q[other]),
                        client_order_id(self.label, self.date_str(j), other, "recall_exit"),
                        purpose=Purpose.EXIT,
                    )
                )
            self.venue.carry.clear()
            self._submit(batch, now)

    def _submit(self, batch: list[Order], now: pd.Timestamp) -> None:
        report = pe.StepReport()
        pe.submit_checked(self.venue, self.risk, batch, self.sod, self.refs, report, on_event=None)
        self._note(report, now)

    def _note(self, report: pe.StepReport, now: pd.Timestamp) -> None:
        if report.unsized is not None:  # a pair the capital cannot size on both legs
            self.rejections.append(Rejection(now, "one_legged", report.unsized, "entry"))
            if self.log_rejections:
                log.warning("%s %s: %s", self.label, now.date(), report.unsized)
        for d in report.denials:
            self.rejections.append(Rejection(now, d.reason, d.message, d.purpose))
            if self.log_rejections:
                log.info(
                    "%s %s: risk gate rejected %s: [%s] %s",
                    self.label,
                    now.date(),
                    " + ".join(f"{o.side} {o.qty} {o.symbol}" for o in d.orders),
                    d.reason,
                    d.message,
                )

    def result(self) -> BacktestResult:
        """Per-bar state from the event records: positions hold between events, cash falls by the
        borrow accrued since the last event."""
        venue, cfg, close = self.venue, self.cfg, self.close
        venue.costs["borrow"] = venue.book.borrow_paid
        rec = np.array(self.record, dtype="float64").reshape(-1, 5)
        rec = np.vstack([[-1.0, cfg.initial_capital, 0.0, 0.0, 0.0], rec])
        fractional = cfg.sizing.fractional_shares
        state, qty0, qty1 = fast_engine.per_bar(
            rec, close, self.base, np.array(self.rates), self.day_count, fractional
        )
        s0, s1 = self.symbols
        equity = pd.DataFrame(
            {
                "equity": state[:, 0],
                "cash": state[:, 1],
                f"qty_{s0}": qty0,
                f"qty_{s1}": qty1,
                f"price_{s0}": close[:, 0],
                f"price_{s1}": close[:, 1],
                "borrow_paid": state[:, 2],
            },
            index=self.dates,
            copy=False,
        )
        equity.index.name = "date"
        trade_rows: Any
        trip_rows: Any
        if self.compiled is not None:
            trade_rows, trip_rows = self.compiled
        else:
            dtypes = FRACTIONAL_TRADE_DTYPES if fractional else TRADE_DTYPES
            columns = (
                list(zip(*venue.fills, strict=True)) if venue.fills else [()] * len(TRADE_COLUMNS)
            )
            trade_rows = trades_frame(columns, dtypes, self.dates.dtype)
            trip_rows = venue.trips
        book = venue.book
        unrealized = sum(
            book.qty[s] * (close[-1, leg] - book.avg[s]) for leg, s in enumerate(self.symbols)
        )
        return BacktestResult(
            label=self.label,
            symbols=self.symbols,
            equity=equity,
            trade_rows=trade_rows,
            rejections=self.rejections,
            trip_rows=trip_rows,
            costs=venue.costs,
            initial_capital=cfg.initial_capital,
            halted_at=self.halted_at,
            liquidated_at=self.liquidated_at,
            realized_pnl=book.realized,
            unrealized_pnl=float(unrealized),
            instructions=self.instructions,
            event_bars=self.event_bars,
            compiled_bars=self.compiled_bars,
        )


def trades_frame(columns: list[Any], dtypes: dict[str, str], date_dtype: Any) -> pd.DataFrame:
    """The trades frame from its columns (`TRADE_COLUMNS` order), column by column: a row-wise
    frame then .astype costs ~7 ms a run (scans run thousands)."""
    trades = pd.DataFrame(
        {
            # dtype given: text stays object (not pandas' inferred str), as before
            name: pd.Series(values, dtype=dtypes.get(name, "object"))
            for name, values in zip(TRADE_COLUMNS, columns, strict=True)
        }
    )
    trades["date"] = pd.DatetimeIndex(trades["date"], dtype=date_dtype)
    return trades


@dataclass(frozen=True, eq=False)
class _CompiledFills:
    """The compiled loop's fill rows (`fast_engine.FILL_COLUMNS`) and what names them: builds
    the trades frame, client order ids made as `orders_toward` makes them."""

    rows: np.ndarray
    dates: pd.DatetimeIndex
    symbols: tuple[str, str]
    strategy: str
    label: str
    prefix: str

    def notional(self) -> np.ndarray:
        """|qty| x fill price per fill, USD (the `notional` column)."""
        return self.rows[:, 3].astype(np.int64) * self.rows[:, 6]

    def columns(self) -> list[Any]:
        """The trade columns, `TRADE_COLUMNS` order."""
        rows = self.rows
        js, legs = rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64)
        qty, price = rows[:, 3].astype(np.int64), rows[:, 6]
        symbols = np.array(self.symbols, dtype=object)[legs]
        purposes = np.array([p.value for p in fast_engine.PURPOSES], dtype=object)[
            rows[:, 12].astype(np.int64)
        ]
        statuses = np.array([s.value for s in fast_engine.STATUSES], dtype=object)[
            rows[:, 13].astype(np.int64)
        ]
        sides = np.where(rows[:, 2] > 0, Side.BUY.value, Side.SELL.value).astype(object)
        day = self.dates.values.astype("datetime64[D]")
        on = np.datetime_as_string(day[js]).tolist()
        signal = np.datetime_as_string(day[rows[:, 14].astype(np.int64)]).tolist()
        parents = rows[:, 15].astype(np.int64).tolist()
        ids: list[str] = []
        for a, b, sym, p, parent in zip(
            on, signal, symbols.tolist(), purposes.tolist(), parents, strict=True
        ):
            if p == Purpose.CARRY.value:  # named after the fill it is left from (`_record`)
                when = self.dates[js[parent]].date()  # the bar's own calendar date, as there
                ids.append(client_order_id(self.label, when, sym, "carry", ids[parent]))
            else:
                part = "reduce" if p == Purpose.EXIT.value else "open"
                ids.append(client_order_id(self.strategy, a, b, sym, p, part, prefix=self.prefix))
        return [
            self.dates[js],
            symbols,
            sides,
            qty,
            rows[:, 4].astype(np.int64),
            rows[:, 5],
            price,
            qty * price,
            rows[:, 7],
            rows[:, 8],
            rows[:, 9],
            rows[:, 10],
            rows[:, 11],
            np.zeros(len(rows)),
            purposes,
            statuses,
            np.array(ids, dtype=object),
        ]

    def __call__(self) -> pd.DataFrame:
        return trades_frame(self.columns(), TRADE_DTYPES, self.dates.dtype)


@dataclass(frozen=True, eq=False)
class _CompiledTrips:
    """The compiled loop's round trips (entry bar, exit bar, direction, P&L) as `RoundTrip`s."""

    rows: np.ndarray
    dates: pd.DatetimeIndex

    def __call__(self) -> list[RoundTrip]:
        rows = self.rows
        starts = self.dates[rows[:, 0].astype(np.int64)]
        ends = self.dates[rows[:, 1].astype(np.int64)]
        return [
            RoundTrip(a, b, int(d), float(p))
            for a, b, d, p in zip(
                starts, ends, rows[:, 2].tolist(), rows[:, 3].tolist(), strict=True
            )
        ]


#: How `run_backtest` runs: see its `engine` argument.
ENGINES = ("auto", "compiled", "interpreted")


def run_backtest(
    prices: pd.DataFrame,
    weights: np.ndarray,
    config: TradingConfig | None = None,
    *,
    label: str = "strategy",
    strategy: str | None = None,
    volume: pd.DataFrame | None = None,
    history: pd.DataFrame | None = None,
    risk: rm.RiskManager | None = None,
    log_rejections: bool = True,
    weight_unit: str = "equity",
    order_prefix: str = "pt",
    engine: str = "auto",
) -> BacktestResult:
    """Run the pair through the engine.

    prices: date index, two close columns (long leg first). weights: (n, 2) instruction weights
    per leg as signed fractions of equity (`weight_unit="usd"`: signed USD notional per leg),
    decided on that bar's close; a NaN row means no instruction on that bar. volume (optional,
    shares, same shape as prices) gives average daily volume; without it
    `execution.default_adv_usd` is used. history (optional): closes before the first bar, for
    the volatility warm-up. strategy: the name in client order ids (default: `label`);
    order_prefix: their prefix (a trading home's `pt-<tag>`, as its live loop sends).
    engine: "compiled" runs the compiled event loop (`fast_engine`) where it applies;
    "interpreted" never does; "auto" (default) compiles a run of at least
    `fast_engine.COMPILE_FROM_EVENTS` instructions, or any run once the loop is loaded in this
    process. Every engine gives the same result to the last bit.
    """
    if weight_unit not in ("equity", "usd"):
        raise ConfigurationError(f"weight_unit must be 'equity' or 'usd', not {weight_unit!r}")
    if engine not in ENGINES:
        raise ConfigurationError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    run = _BacktestRun(
        prices,
        weights,
        config or TradingConfig(),
        label=label,
        strategy=strategy or label,
        volume=volume,
        history=history,
        risk=risk,
        log_rejections=log_rejections,
        per_usd=weight_unit == "usd",
        order_prefix=order_prefix,
        engine=engine,
    )
    return run.run()


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
            "liquidated_at": (
                None if result.liquidated_at is None else str(result.liquidated_at.date())
            ),
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
    #: The z-score benchmark's rule: "current" (reverses directly) or "textbook"; see ZSCORE_RULES.
    benchmark_rule: str = "current"
    config: TradingConfig = field(default_factory=TradingConfig)
    write_charts: bool = True
    #: `run_backtest`'s engine: "auto", "compiled" or "interpreted" (same results).
    engine: str = "auto"

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigurationError(f"engine must be one of {', '.join(ENGINES)}: {self.engine!r}")
        if self.benchmark_rule not in ZSCORE_RULES:
            raise ConfigurationError(
                f"benchmark rule must be one of {', '.join(ZSCORE_RULES)}: {self.benchmark_rule!r}"
            )


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
        seen_until = _seen_until(record, pair)
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


def _seen_until(record: Any, pair: Any) -> pd.Timestamp:
    """The last bar of a registered model's training and validation range; ConfigurationError
    when it was trained on another pair."""
    if (record.long, record.short) != (pair.long, pair.short):
        raise ConfigurationError(
            f"model {record.version} was trained on {record.long}/{record.short}, "
            f"not {pair.long}/{pair.short}"
        )
    return pd.Timestamp(record.metadata["ranges"]["validation"][1])


def model_probabilities(
    pair: Any,
    table: pd.DataFrame,
    home: Any,
    *,
    kind: str = "xgb",
    version: str | None = None,
    start: str | None = None,
    end: str | None = None,
    notes: list[str] | None = None,
    progress: Any = None,
) -> tuple[pd.Series, str]:
    """(P(long beats short) per bar, the model version) from `version` or the pair's active
    `kind` model (trained first when there is none), on bars after its training and validation
    range only (from `start` when later; to `end`). ConfigurationError when `start` is inside
    that range, for a model of another pair, or with fewer than 2 bars left."""
    import signals as sg
    import train_model as tm
    from model_management import ModelRegistry

    registry = ModelRegistry(home.models_dir, home=home.home)
    if version is None:
        record = registry.get_active_model(kind, pair)
        if record is None:
            tm.train(pair, tm.TrainConfig(models=(kind,)), home=home, progress=progress)
            record = registry.get_active_model(kind, pair)
            if record is None:
                raise ConfigurationError(f"training registered no active {kind} model")
            if notes is not None:
                notes.append(f"trained {kind} {record.version} first (no active {kind} model)")
    else:
        record = registry.get(version)
    seen_until = _seen_until(record, pair)
    dates = pd.DatetimeIndex(table.index)
    if start is not None and pd.Timestamp(start) <= seen_until:
        raise ConfigurationError(
            f"--start {start} is inside the training/validation range of model "
            f"{record.version} (to {seen_until.date()}); a sweep scores only later bars"
        )
    first = pd.Timestamp(start) if start else seen_until + pd.Timedelta(days=1)
    lo = dates.searchsorted(first)
    hi = dates.searchsorted(pd.Timestamp(end), side="right") if end else len(dates)
    if hi - lo < 2:
        raise ConfigurationError(
            f"fewer than 2 bars after model {record.version}'s training range "
            f"(to {seen_until.date()}) in the processed data ({dates[0].date()} .. "
            f"{dates[-1].date()})"
        )
    loaded = sg.load_model(registry, record.version, pair, _feature_columns(pair, table))
    prob = loaded.probabilities(table, slice(lo, hi))
    return pd.Series(prob, index=dates[lo:hi], name="probability"), record.version


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

    home = (home or C.paths()).ensure()
    pair, cfg = request.pair, request.config
    notes: list[str] = []
    table = processed_table(pair, home, notes)
    instructions, dates, label, model_info = _strategy_weights(
        request, table, home, progress, notes
    )
    close_cols = [f"{pair.long}_close", f"{pair.short}_close"]
    prices = table.loc[dates, close_cols]
    prices.columns = [pair.long, pair.short]
    history = table[close_cols].loc[: dates[0]].iloc[:-1]  # closes before the run: vol warm-up
    history.columns = prices.columns
    strategy = run_backtest(
        prices,
        instructions.weights,
        cfg,
        label=label,
        strategy=pe.STRATEGY,
        history=history,
        order_prefix=home.order_prefix(),  # named as this home's live loop names them
        weight_unit="usd" if instructions.per_usd else "equity",
        engine=request.engine,
    )
    # Benchmark 1: the spread z-score rule, same costs and risk gate. The z-score uses the full
    # processed history up to each bar (causal), so it is warm on the first backtest bar.
    rule = ZSCORE_RULES[request.benchmark_rule]
    all_close = table[close_cols].to_numpy("float64")
    z = rule.zscore(np.log(all_close[:, 0]), np.log(all_close[:, 1]))
    z = pd.Series(z, index=table.index).loc[dates].to_numpy()  # the rule starts flat on bar 0
    z_rule = rule_instructions(
        rule.states(z, request.zscore_entry, request.zscore_exit), cfg.sizing
    )
    zscore = run_backtest(
        prices,
        z_rule.weights,
        cfg,
        label="z-score rule",
        history=history,
        log_rejections=False,
        weight_unit="usd" if z_rule.per_usd else "equity",
        engine=request.engine,
    )
    # Benchmark 2: buy and hold the long leg with all capital, no costs.
    buy_hold = cfg.initial_capital * prices[pair.long] / prices[pair.long].iloc[0]
    has_volume = f"{pair.long}_{C.VOLUME_FEATURE}" in table.columns
    notes.extend(_run_notes(cfg, has_volume))
    notes.extend(tc.fee_assumptions(cfg.execution.costs, dates[0], dates[-1]))
    summary = _summary(request, dates, label, model_info, notes, strategy, zscore, buy_hold)
    run_id = reserve_run_id(home.results_dir, summary["run"], run_id)
    summary["run"]["run_id"] = run_id
    returns = {
        "strategy": strategy.returns,
        "zscore_rule": zscore.returns,
        "buy_hold_long": buy_hold / buy_hold.shift(1).fillna(cfg.initial_capital) - 1.0,
    }
    # Counted before the results are written: a run that dies after this still was a trial.
    trials = record_trials(home.results_dir, request, summary, returns)
    stats = uncertainty(returns, trials)
    summary["strategy"].update(stats["strategy"])
    for name in ("zscore_rule", "buy_hold_long"):
        summary["benchmarks"][name].update(stats[name])
    summary["run"]["statistics"] = {
        **STATISTICS_METHOD,
        "trials_file": str(TrialLedger(home.results_dir).path),
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


# --- Uncertainty: every Sharpe with its interval, deflation and tests against the benchmarks -----
#: How the figures' uncertainty is computed (summary.json run.statistics).
STATISTICS_METHOD: dict[str, Any] = {
    "level": 0.95,
    "bootstrap": "stationary (arch), optimal block length, percentile interval",
    "reps": 1000,
    "seed": 0,
    "psr": "Bailey & Lopez de Prado 2012, with skew and kurtosis",
    "dsr": "Bailey & Lopez de Prado 2014, over the distinct trials in trials.jsonl",
}
#: summary.json's p-value key for each column it is compared with.
P_KEYS = {"zscore_rule": "p_vs_zscore", "buy_hold_long": "p_vs_buy_hold"}
#: The verdict's names for the benchmarks.
BENCHMARK_NAMES = {"zscore_rule": "the z-score rule", "buy_hold_long": "buy & hold"}


def uncertainty(
    returns: dict[str, pd.Series], trials: dict[str, TrialCount]
) -> dict[str, dict[str, Any]]:
    """Per column (strategy and benchmarks, daily returns on the same bars): the Sharpe's
    bootstrap interval, PSR, DSR over its trials, the paired test against each benchmark, and
    (strategy only) a one-line verdict. Pure: same inputs, same figures (seeded)."""
    import performance_stats as ps

    level, reps, seed = (
        STATISTICS_METHOD["level"],
        STATISTICS_METHOD["reps"],
        STATISTICS_METHOD["seed"],
    )
    arrays = {k: np.asarray(v, dtype="float64") for k, v in returns.items()}
    out: dict[str, dict[str, Any]] = {}
    estimates: dict[str, Any] = {}
    tests: dict[str, Any] = {}  # the strategy against each benchmark, for the verdict's wording
    for name, r in arrays.items():
        est = ps.estimate_sharpe(r, level=level, reps=reps, seed=seed)
        count = trials.get(name) or TrialCount(1, 0.0)
        dsr = ps.deflated_sharpe_ratio(r, count.trials, count.sharpe_variance)
        row: dict[str, Any] = {
            "sharpe_ci_95": [est.ci_low, est.ci_high],
            "psr": est.psr,
            "dsr": dsr,
            "trials": count.trials,
            "trials_as_of": count.as_of,
            "trial_sharpe_variance": count.sharpe_variance,
            "bootstrap_block_length": est.block_length,
            "skew": est.skew,
            "kurtosis": est.kurtosis,
        }
        for other, key in P_KEYS.items():
            if other == name:
                row[key] = None
                continue
            test = ps.sharpe_difference_test(r, arrays[other], level=level, reps=reps, seed=seed)
            row[key] = test.p_value
            row[f"sharpe_minus_{other}"] = test.difference
            if name == "strategy":
                tests[BENCHMARK_NAMES[other]] = test
        out[name] = row
        estimates[name] = est
    strat = out["strategy"]
    strat["verdict"] = ps.verdict(
        estimates["strategy"],
        strat["dsr"] if strat["trials"] > 1 else None,
        tests,
        level=level,
        trials=strat["trials"],
    )
    return out


def reserve_run_id(results_dir: Any, run: dict[str, Any], run_id: str | None = None) -> str:
    """The results folder's name: `run_id`, or `<UTC stamp>_<LONG>_<SHORT>_<model|signals>`,
    with -2, -3... when taken."""
    from datetime import UTC, datetime
    from pathlib import Path

    if run_id is None:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        kind = "signals" if run.get("signal_file") else "model"
        run_id = f"{stamp}_{run['pair'][0]}_{run['pair'][1]}_{kind}"
    name, suffix = run_id, 1
    while (Path(results_dir) / name).exists():
        suffix += 1
        name = f"{run_id}-{suffix}"
    return name


def record_trials(
    results_dir: Any,
    request: BacktestRequest,
    summary: dict[str, Any],
    returns: dict[str, pd.Series],
) -> dict[str, TrialCount]:
    """Append this run's strategy and z-score benchmark (keyed by their `returns`' fingerprint) to
    the home's trial ledger; return, per column, the distinct trials on the same pair and bars
    (this run included), as of now."""
    import atomic_io
    from trial_ledger import utc_now

    run = summary["run"]
    ledger = TrialLedger(results_dir)
    cfg = summary["config"]
    if request.signal_file:
        source = f"signals:{atomic_io.sha256_file(request.signal_file)[:16]}"
    else:
        source = "model:" + ",".join(run.get("versions") or ["?"])
    configs = {
        "strategy": (source, {"config": cfg, "allow_in_sample": request.allow_in_sample}),
        "zscore_rule": (
            f"rule:{request.benchmark_rule}",
            {
                "config": cfg,
                "entry": request.zscore_entry,
                "exit": request.zscore_exit,
            },
        ),
    }
    now = utc_now()
    counts: dict[str, TrialCount] = {}
    for kind, (src, settings) in configs.items():
        trial = Trial.of_returns(
            returns[kind],
            run_id=run["run_id"],
            recorded_at=now,
            pair=(run["pair"][0], run["pair"][1]),
            start=run["start"],
            end=run["end"],
            kind=kind,
            source=src,
            config_hash=config_hash(settings),
        )
        ledger.record(trial)
        counts[kind] = ledger.count(trial.pair, trial.start, trial.end, kind, now=now)
    unreadable = ledger.read()[1]
    if unreadable:
        run["notes"].append(
            f"{ledger.path}: {unreadable} line(s) are not trials (a crash mid-write, or an edit) "
            "and were not counted"
        )
    return counts


def processed_table(pair: Any, home: Any, notes: list[str]) -> pd.DataFrame:
    """The pair's processed table, processing the default source first when there is none."""
    import constants as C
    import process_stock_data as psd
    from error_handling import DataError

    try:
        table, _meta = psd.load_processed(pair, home)
    except DataError:
        table, _ = psd.process(C.data_source_name(), pair, home=home)
        notes.append(f"processed {pair.long}/{pair.short} from {C.data_source_name()} first")
    return table


def _strategy_weights(
    request: BacktestRequest, table: pd.DataFrame, home: Any, progress: Any, notes: list[str]
) -> tuple[Instructions, pd.DatetimeIndex, str, dict[str, Any]]:
    """(instructions, bars, label, what the report says about the source): a signal file over
    the requested bars, or the model's out-of-sample signals (training one if needed)."""
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
        found = read_signal_file(
            request.signal_file,
            request.pair,
            dates,
            request.config.sizing,
            data_start=table.index[0],
            data_end=table.index[-1],
        )
        notes.extend(_signal_file_notes(found, first_processed=table.index[0]))
        info: dict[str, Any] = {
            "signal_file": str(request.signal_file),
            "signal_rows_skipped_before": found.skipped_before,
            "signal_rows_ignored_after": found.ignored_after,
        }
        return found, dates, "signal file", info
    import train_model as tm

    trained = tm.ensure_active_model(request.pair, home, progress=progress)
    if trained:
        notes.append(trained)
    sig, dates, model_info = _signals_for_range(request, table, home, notes)
    return Instructions(model_weights(sig, request.config.sizing)), dates, "model", model_info


def _signal_file_notes(found: Instructions, first_processed: Any) -> list[str]:
    """What the report says about the rows of a signal file outside the backtest's bars."""
    notes = []
    if found.skipped_before and found.first_bar is not None:
        first = found.first_bar
        # Before the first processed bar every row is flat (warm-up); before a later --start the
        # file only has to be flat by the first bar.
        at_start = first == pd.Timestamp(first_processed)
        where = "the first processed bar" if at_start else "the first bar of the backtest"
        rows = "row" if found.skipped_before == 1 else "rows"
        notes.append(
            f"signal file: {found.skipped_before} {rows} before {where} {first.date()} "
            f"skipped ({'all flat' if at_start else 'flat by then'})"
        )
    if found.ignored_after and found.last_bar is not None:
        rows = "row" if found.ignored_after == 1 else "rows"
        notes.append(
            f"signal file: {found.ignored_after} {rows} after the last bar of the backtest "
            f"{found.last_bar.date()} ignored (outside --end)"
        )
    return notes


def _run_notes(cfg: TradingConfig, has_volume: bool) -> list[str]:
    delay = cfg.fill_delay_bars
    timing = (
        "fills at the close of the bar after the signal"
        if delay == 1
        else (
            "fills at the signal bar's close"
            if delay == 0
            else f"fills {delay} bars after the signal"
        )
    )
    return [
        f"average daily volume assumed ${cfg.execution.default_adv_usd:,.0f} per leg"
        + ("" if has_volume else " (no volume in source)")
        + "; set it with --adv-usd",
        timing,
    ]


def _summary(
    request: BacktestRequest,
    dates: pd.DatetimeIndex,
    label: str,
    model_info: dict[str, Any],
    notes: list[str],
    strategy: BacktestResult,
    zscore: BacktestResult,
    buy_hold: pd.Series,
) -> dict[str, Any]:
    """summary.json: the run, the strategy and benchmark figures, the effective configuration."""
    cfg, pair = request.config, request.pair
    return {
        "run": {
            "pair": [pair.long, pair.short],
            "start": str(dates[0].date()),
            "end": str(dates[-1].date()),
            "bars": len(dates),
            "strategy": label,
            "in_sample": False,
            **model_info,
            "initial_capital": cfg.initial_capital,
            "fill_delay_bars": cfg.fill_delay_bars,
            "benchmark_rule": {
                "name": request.benchmark_rule,
                "entry_z": request.zscore_entry,
                "exit_z": request.zscore_exit,
                "description": ZSCORE_RULES[request.benchmark_rule].description,
            },
            "notes": notes,
        },
        "strategy": summarize(strategy),
        "benchmarks": {
            "zscore_rule": summarize(zscore),
            "buy_hold_long": performance(buy_hold, cfg.initial_capital),
        },
        "config": cfg.to_dict(),
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


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return str(value)


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
    from pathlib import Path

    from atomic_io import json_safe

    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    _remove_orphan_temp_folders(results_dir)
    final = results_dir / reserve_run_id(results_dir, summary["run"], run_id)
    summary["run"]["run_id"] = final.name
    # The creator's pid in the name lets a later run tell an orphan (creator killed) from a folder
    # still being written; see _remove_orphan_temp_folders.
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", dir=results_dir))
    try:
        eq = strategy.equity.copy()
        eq["drawdown"] = eq["equity"] / eq["equity"].cummax() - 1.0
        eq["zscore_rule_equity"] = zscore.equity["equity"]
        eq["buy_hold_equity"] = buy_hold
        eq.to_csv(tmp / "equity.csv", float_format="%.6f")
        strategy.trades.to_csv(tmp / "trades.csv", index=False, float_format="%.6f")
        text = json.dumps(json_safe(summary), indent=2, default=_json_default, allow_nan=False)
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


def _remove_orphan_temp_folders(results_dir: str | os.PathLike[str]) -> list[str]:
    """Remove the hidden temporary folders of write_results calls that died before their rename
    (SIGKILL, power loss); return their names. A folder is an orphan when its creator's pid is
    not running, or is running but started after the folder was last written (the pid was
    reused); a folder without a pid (older versions) when it was last written before this process
    started. Start times come from Linux /proc (elsewhere only dead pids count). Real results
    folders (no leading dot) and other names are never touched."""
    import re
    import shutil

    # `.<run-id>.<pid>.<suffix>`; before the pid was in the name `.<run-id>.<suffix>` (mkdtemp's
    # suffix: 8 of a-z, 0-9 and _).
    with_pid = re.compile(r"\.(?P<run_id>.+)\.(?P<pid>[0-9]+)\.[a-z0-9_]{8}")
    without_pid = re.compile(r"\.(?P<run_id>.+)\.[a-z0-9_]{8}")

    def started_at(pid: int) -> float | None:
        """Start of process `pid` in epoch seconds (Linux /proc, to about 1 s); None elsewhere."""
        try:
            with open(f"/proc/{pid}/stat") as fh:  # field 22, after the ")" of the command
                ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
            with open("/proc/stat") as fh:
                boot = next(float(line.split()[1]) for line in fh if line.startswith("btime "))
            return boot + ticks / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError, StopIteration):
            return None

    slack_s = 2.0  # btime is whole seconds; mtimes and clock ticks are finer
    me = started_at(os.getpid())  # None (no /proc): pid-less folders are left alone
    removed = []
    with os.scandir(results_dir) as entries:
        for entry in entries:
            if not entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                continue
            try:
                written = entry.stat(follow_symlinks=False).st_mtime
            except OSError:
                continue  # removed meanwhile
            match = with_pid.fullmatch(entry.name)
            if match:
                pid = int(match["pid"])
                if pid == os.getpid():
                    continue
                try:
                    os.kill(pid, 0)
                    start = started_at(pid)
                    orphan = start is not None and written + slack_s < start
                except ProcessLookupError:
                    orphan = True
                except PermissionError:  # another user's live process
                    orphan = False
            elif without_pid.fullmatch(entry.name):
                orphan = me is not None and written + slack_s < me
            else:
                orphan = False
            if orphan:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.name)
    if removed:
        log.info(
            "removed %d unfinished results folder(s) of killed runs in %s: %s",
            len(removed),
            results_dir,
            ", ".join(removed),
        )
    return removed


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
#: trades.csv of a fractional-share run: the quantities are floats.
FRACTIONAL_TRADE_DTYPES = {**TRADE_DTYPES, "qty": "float64", "requested_qty": "float64"}
