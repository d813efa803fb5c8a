"""The backtest's compiled event loop: the same engine, with its per-event Python compiled by numba.

`backtest_strategy._BacktestRun` runs here first. The loop walks the same path as the interpreted
one -- vectorized stretches between event bars, and on each event bar: borrow, the drawdown
test, sizing, the rebalance band, the reduce basket then the increase basket, each through the risk
gate's checks, the executor's fill quantity, the cost model, the ledger and the round trips -- and
every rule it applies is the function the interpreted path and live trading call, compiled as it
is (`RULES`: `numba.extending.register_jitable` on the plain Python functions in their own
modules). No cost formula or gate check has a second copy here; what this module adds is only the
order of the steps, which `tests/test_fast_engine.py` holds equal to the interpreted engine's.

What it does not handle it hands back (`Outcome.stopped_at`): the interpreted engine resumes from
that bar with the state so far, and decides there exactly as before. That is any event whose outcome
is not a plain fill: a basket the gate refuses, a drawdown breach (the halt on that bar and the
liquidation `fill_delay_bars` later are both the interpreted path's), a fill price the cost model
refuses, more carried remainders than it keeps (4). A run the loop cannot start at
all (`unsupported`) runs interpreted from its first bar: fractional shares, random slippage, recalls
and hard-to-borrow draws, a halted risk manager, or numba missing.

Compiled code is cached on disk under a key made of this module's and every rule module's source,
so an edited rule can never run from a stale cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import pair_engine as pe
import risk_management as rm
import trading_execution as te
import transaction_costs as tc
from pair_engine import book_fill, both_legs_sized, leg_rebalances, whole_shares
from risk_management import (
    capital_verdict,
    exposure_verdict,
    leg_over,
    opened_qty,
    order_size_verdict,
    price_band,
    price_sane,
    reduces,
    reg_t_buying_power,
)
from trading_execution import cash_change, fill_quantity, leg_orders
from transaction_costs import fill_terms

#: The rules the compiled loop applies, each the one function the interpreted path calls.
RULES: tuple[Callable[..., Any], ...] = (
    pe.whole_shares,
    pe.leg_rebalances,
    pe.both_legs_sized,
    pe.book_fill,
    te.leg_orders,
    te.fill_quantity,
    te.cash_change,
    tc.commission_usd,
    tc.ceil_cent,
    tc.round_taf,
    tc.fill_terms,
    rm.reduces,
    rm.price_band,
    rm.price_sane,
    rm.order_size_verdict,
    rm.opened_qty,
    rm.leg_over,
    rm.exposure_verdict,
    rm.reg_t_buying_power,
    rm.capital_verdict,
)

#: "auto" compiles runs with at least this many instructions (or any run once the loop is loaded):
#: loading the compiled loop from its disk cache costs ~0.5 s, the interpreted path ~60 us an
#: instruction; a first compile after a source change, ~10 s.
COMPILE_FROM_EVENTS = 5_000
#: Runs of at least this many bars expand their per-bar state compiled (`per_bar`).
COMPILE_FROM_BARS = 50_000

# The loop's state vector (floats; quantities are whole shares, exact in float64).
CASH, Q0, Q1, AVG0, AVG1, REALIZED, PAID, THROUGH, PEAK = range(9)
N_FILLS, N_TRIPS, N_RECORDS, TRIP_J, TRIP_EQ, TRIP_DIR, EVENT_BARS = range(9, 16)
COMMISSION, SPREAD, IMPACT, SEC_FEE, FINRA_TAF = range(16, 21)
# Carried remainders, in the order the interpreted venue keeps them: how many, then (leg, signed
# shares, the fill row each is left from) for each.
PENDING = 21
MAX_PENDING = 4
STATE_SIZE = PENDING + 1 + 3 * MAX_PENDING
NO_DAY = -1e300  # borrow charged through no day yet

# Fill rows: bar, leg, side (+1 buy, -1 sell), qty, requested, bar price, fill price, commission,
# spread, impact, SEC fee, TAF, purpose (`PURPOSES`), status (`STATUSES`), signal bar (-1 for a
# carried remainder), the fill row a carried remainder is left from (-1 otherwise).
FILL_COLUMNS = 16
ENTRY, EXIT, CARRY = 0, 1, 2
PURPOSES = (te.Purpose.ENTRY, te.Purpose.EXIT, te.Purpose.CARRY)
STATUSES = (te.OrderStatus.FILLED, te.OrderStatus.PARTIALLY_FILLED, te.OrderStatus.CANCELED)

_LOCK = threading.RLock()
_KERNEL: Any = None
_CACHE = False


@dataclass(frozen=True)
class Outcome:
    """What the compiled loop did: `stopped_at` is the bar the interpreted engine resumes at
    (n: the run is complete); the arrays hold every fill, round trip and event-bar record up to
    there, and `state` the ledger, the risk peak, the open round trip and the cost sums."""

    stopped_at: int
    state: np.ndarray
    fills: np.ndarray
    trips: np.ndarray
    records: np.ndarray


def unsupported(run: Any) -> str | None:
    """Why `run` (a `_BacktestRun`) cannot start compiled, or None when it can."""
    cfg, ex = run.cfg, run.cfg.execution
    if run.engine == "interpreted":
        return "the interpreted engine was asked for"
    if run.engine == "auto" and _KERNEL is None and run.instructions < COMPILE_FROM_EVENTS:
        return "a short run: loading the compiled loop would cost more than it saves"
    if importlib.util.find_spec("numba") is None:
        return "numba is not installed"
    if cfg.sizing.fractional_shares:
        return "fractional shares"
    if ex.slippage_std_bps > 0:
        return "random slippage"
    if run.has_recalls and run.recall.any():
        return "recalls"
    if run.risk.halted or run.risk.equity_peak is None:
        return "risk manager halted"
    return None


def kernel() -> Any:
    """The compiled loop (compiled, or loaded from the disk cache, on first use)."""
    global _KERNEL
    with _LOCK:
        if _KERNEL is None:
            _KERNEL = _compile()
    return _KERNEL


def _source_key() -> str:
    digest = hashlib.sha256()
    for module in (pe, rm, te, tc):
        digest.update(Path(module.__file__).read_bytes())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()[:16]


def _cache_dir() -> None:
    """Point numba's disk cache at a folder keyed by the sources (stale keys are removed)."""
    global _CACHE
    import numba

    home = Path(__file__).resolve().parent / "__pycache__"
    key = f"numba-{_source_key()}"
    try:
        (home / key).mkdir(parents=True, exist_ok=True)
        numba.config.CACHE_DIR = str(home / key)
        _CACHE = True
        for old in home.glob("numba-*"):
            if old.name != key:
                shutil.rmtree(old, ignore_errors=True)
    except OSError:  # a read-only checkout: compile in memory in every process
        _CACHE = False


def _compile() -> Any:
    import numba
    from numba.extending import register_jitable

    _cache_dir()
    for rule in (*RULES, _direction, _charge_borrow, _basket, _fill, _trade, yyyymmdd, _fee_rates):
        register_jitable(rule)
    return numba.njit(cache=_CACHE, nogil=True)(_event_loop)


def per_bar_state(records, close, base, rates, day_count, out, qty0, qty1):
    """Every bar's equity, cash and borrow paid (`out`, (n, 3)) and shares per leg (`qty0`,
    `qty1`: int64 for whole shares, float64 for fractional ones), from the state after each
    event bar (`records`: bar, cash, shares, shares, borrow paid; the first row is the start, bar
    -1): positions hold between events, and cash falls by the borrow accrued on the shorts since
    the last event (on the prior closes' prefix sums `base`)."""
    n = close.shape[0]
    r = 0
    for t in range(n):
        while r + 1 < records.shape[0] and records[r + 1, 0] <= t:
            r += 1
        b = max(int(records[r, 0]), 0)
        q0, q1 = records[r, 2], records[r, 3]
        c0 = max(-q0, 0.0) * rates[0] / day_count
        c1 = max(-q1, 0.0) * rates[1] / day_count
        accrued = c0 * (base[t, 0] - base[b, 0]) + c1 * (base[t, 1] - base[b, 1])
        cash = records[r, 1] - accrued
        out[t, 0] = cash + (q0 * close[t, 0] + q1 * close[t, 1])
        out[t, 1] = cash
        out[t, 2] = records[r, 4] + accrued
        qty0[t] = q0
        qty1[t] = q1


def borrow_base(close, day, base):
    """The borrow prefix sums: base[t, leg] = sum over k <= t of close[k-1, leg] x calendar days
    (k-1, k], so a constant short of s shares pays s x rate / day count x (base[b] - base[a])
    over the bars (a, b] (borrow on the prior close). `base` (n, 2) is written."""
    for leg in range(2):
        total = 0.0
        base[0, leg] = 0.0
        for t in range(1, close.shape[0]):
            total = total + close[t - 1, leg] * float(day[t] - day[t - 1])
            base[t, leg] = total


def per_bar(
    records: np.ndarray,
    close: np.ndarray,
    base: np.ndarray,
    rates: np.ndarray,
    day_count: float,
    fractional: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`per_bar_state` into fresh arrays: (equity, cash, borrow paid), shares of the long leg,
    shares of the short leg."""
    n = close.shape[0]
    out = np.empty((n, 3))
    kind = np.float64 if fractional else np.int64
    qty0, qty1 = np.empty(n, dtype=kind), np.empty(n, dtype=kind)
    _helper(per_bar_state, n)(records, close, base, rates, day_count, out, qty0, qty1)
    return out, qty0, qty1


def prefix_sums(close: np.ndarray, day: np.ndarray) -> np.ndarray:
    """`borrow_base` into a fresh (n, 2) array."""
    base = np.empty((close.shape[0], 2))
    _helper(borrow_base, close.shape[0])(close, day, base)
    return base


_HELPERS: dict[Any, Any] = {}


def _helper(fn: Callable[..., Any], n: int) -> Callable[..., Any]:
    """`fn` compiled (one pass, no temporaries) for a run of `COMPILE_FROM_BARS` bars or once
    numba is loaded; as is otherwise, so a short run never loads numba. Same results either way."""
    compiled = _HELPERS.get(fn)
    if compiled is not None:
        return compiled
    if n < COMPILE_FROM_BARS and "numba" not in sys.modules:
        return fn
    with _LOCK:
        if fn not in _HELPERS:
            if importlib.util.find_spec("numba") is None:
                _HELPERS[fn] = fn
            else:
                import numba

                _cache_dir()
                _HELPERS[fn] = numba.njit(cache=_CACHE, nogil=True)(fn)
    return _HELPERS[fn]


def run_compiled(run: Any) -> Outcome:
    """Run `run` (a `_BacktestRun`, from its first bar) through the compiled loop."""
    cfg, ex, costs, limits = run.cfg, run.cfg.execution, run.cfg.execution.costs, run.cfg.limits
    at, src = (np.ascontiguousarray(a, dtype=np.int64) for a in run.instruction_bars)
    carry = ex.remainder is te.RemainderPolicy.CARRY
    fee_keys, fee_rates = tc.fee_segments(costs)
    # A fee's date is the bar's own calendar date (`transaction_costs._date_key`): its wall clock.
    dates = run.dates
    wall_day = run.day if dates.tz is None else _days(dates.tz_localize(None))
    m = len(at)
    state = np.zeros(STATE_SIZE)
    state[CASH] = cfg.initial_capital
    state[THROUGH] = NO_DAY
    state[PEAK] = float(run.risk.equity_peak)
    state[TRIP_J] = -1.0
    params = np.array(
        [
            cfg.initial_capital,
            1.0 if run.per_usd else 0.0,
            cfg.rebalance_band,
            ex.participation_cap,
            costs.commission_per_share,
            costs.commission_bps * 1e-4,
            costs.commission_min,
            costs.commission_max_pct,
            costs.half_spread_bps,
            costs.impact_coefficient,
            run.rates[0],
            run.rates[1],
            run.day_count,
            run.risk._band,
            run.risk._max_order_notional,
            float(run.risk._max_order_qty),
            run.risk._max_leg,
            run.risk._max_gross,
            run.risk._max_net,
            run.risk._max_leverage,
            run.risk._margin,
            run.risk._daily_floor,
            limits.max_drawdown_pct,
            1.0 if carry else 0.0,
        ]
    )
    # Room for every decision's fills; carried remainders add bars (the loop hands the run back
    # if it runs out of room).
    fills = np.empty(((8 if carry else 4) * m + 1024, FILL_COLUMNS))
    trips = np.empty((2 * m + 256, 4))
    records = np.empty(((2 if carry else 1) * m + 256, 5))
    stopped = kernel()(
        run.close,
        run.vol,
        run.adv,
        run.base,
        run.day,
        wall_day,
        run.weights,
        at,
        src,
        fee_keys,
        fee_rates,
        params,
        state,
        fills,
        trips,
        records,
    )
    return Outcome(
        int(stopped),
        state,
        fills[: int(state[N_FILLS])],
        trips[: int(state[N_TRIPS])],
        records[: int(state[N_RECORDS])],
    )


def _days(dates: Any) -> np.ndarray:
    """Days since 1970-01-01 of naive timestamps."""
    return dates.values.astype("datetime64[D]").astype(np.int64)


def yyyymmdd(day: int) -> int:
    """The yyyymmdd key of a day number (days since 1970-01-01, proleptic Gregorian): the civil
    date algorithm of H. Hinnant, in integers, so the compiled loop dates a bar's fees itself."""
    z = day + 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    y = yoe + era * 400 + (1 if m <= 2 else 0)
    return y * 10000 + m * 100 + d


def _fee_rates(fee_keys, fee_rates, wall_day, j):
    """The SEC rate, TAF per share and TAF cap in force on bar j's date."""
    row = np.searchsorted(fee_keys, yyyymmdd(wall_day[j]), side="right") - 1
    return fee_rates[max(row, 0)]


def _event_loop(
    close,
    vol,
    adv,
    base,
    day,
    wall_day,
    weights,
    at,
    src,
    fee_keys,
    fee_rates,
    params,
    st,
    fills,
    trips,
    rec,
):
    """The compiled `_BacktestRun.run`: returns the bar the interpreted engine resumes at (n when
    done). `st` (the state vector) is left as it was before that bar or stretch."""
    n = close.shape[0]
    m = at.shape[0]
    initial = params[0]
    per_usd = params[1] != 0.0
    band = params[2]
    costs = params[3:10]  # participation cap, then the cost model's terms (`_fill`)
    rate0, rate1, day_count = params[10], params[11], params[12]
    limits = params[13:22]  # the gate's limits (`_basket`)
    dd_limit = params[22]
    carry_on = params[23] != 0.0
    saved = st.copy()
    basket = np.empty((MAX_PENDING, 4))  # one basket: leg, signed shares, purpose, parent fill
    i = 0
    k = 0
    while i < n:
        while k < m and at[k] < i:
            k += 1
        pending = st[PENDING] > 0
        nxt = i if pending else (at[k] if k < m else n)
        if nxt > i:
            # --- stretch [i, nxt): positions constant ---
            q0, q1, cash = st[Q0], st[Q1], st[CASH]
            c0 = max(-q0, 0.0) * rate0 / day_count
            c1 = max(-q1, 0.0) * rate1 / day_count
            if q0 == 0 and q1 == 0:
                if cash > st[PEAK]:
                    st[PEAK] = cash
            else:
                const = cash + c0 * base[i - 1, 0] + c1 * base[i - 1, 1]
                running = st[PEAK]
                for t in range(i, nxt):
                    eq = const + (
                        close[t, 0] * q0 + close[t, 1] * q1 - c0 * base[t, 0] - c1 * base[t, 1]
                    )
                    if eq > running:
                        running = eq
                    if eq <= running * (1.0 - dd_limit):
                        return i  # a breach: halt and liquidation are the interpreted path's
                st[PEAK] = running
            _charge_borrow(st, base, day, i - 1, nxt - 1, rate0, rate1, day_count)
            i = nxt
            if i >= n:
                break
        # --- event bar i ---
        j = i
        if (
            st[N_FILLS] + 4 > fills.shape[0]
            or st[N_RECORDS] + 1 > rec.shape[0]
            or st[N_TRIPS] + 2 > trips.shape[0]
        ):
            return j  # out of room: the interpreted path goes on
        saved[:] = st
        instr = k < m and at[k] == j
        fee = _fee_rates(fee_keys, fee_rates, wall_day, j)
        st[EVENT_BARS] += 1
        p0, p1 = close[j, 0], close[j, 1]
        r0 = close[j - 1, 0] if j > 0 else close[0, 0]
        r1 = close[j - 1, 1] if j > 0 else close[0, 1]
        sod = st[CASH] + st[Q0] * r0 + st[Q1] * r1 if j > 0 else initial
        _charge_borrow(st, base, day, j - 1, j, rate0, rate1, day_count)
        equity = st[CASH] + st[Q0] * p0 + st[Q1] * p1
        peak = max(st[PEAK], equity)
        if not equity > peak * (1.0 - dd_limit):
            st[:] = saved
            return j  # drawdown control decides here
        if equity > st[PEAK]:
            st[PEAK] = equity
        if pending:  # the remainders carried from the last bar, unless a decision replaces them
            no = int(st[PENDING])
            for o in range(no):
                base_o = PENDING + 1 + 3 * o
                basket[o, 0] = st[base_o]
                basket[o, 1] = st[base_o + 1]
                basket[o, 2] = CARRY
                basket[o, 3] = st[base_o + 2]
            st[PENDING] = 0
            if not instr:
                ok = _trade(
                    st, fills, trips, j, basket, no, -1, close, vol, adv, r0, r1, sod, fee,
                    costs, limits, carry_on,
                )  # fmt: skip
                if not ok:
                    st[:] = saved
                    return j  # a refusal, or more remainders than the loop keeps
        if instr:
            scale = 1.0 if per_usd else equity
            want0 = float(whole_shares(weights[src[k], 0], scale, p0))
            want1 = float(whole_shares(weights[src[k], 1], scale, p1))
            if not both_legs_sized(weights[src[k], 0], weights[src[k], 1], want0, want1):
                st[:] = saved
                return j  # a one-legged pair: the interpreted path says why
            q0, q1 = st[Q0], st[Q1]
            if leg_rebalances(q0, want0, band) or leg_rebalances(q1, want1, band):
                cut0, add0 = leg_orders(q0, want0)
                cut1, add1 = leg_orders(q1, want1)
                for d0, d1, purpose in ((cut0, cut1, EXIT), (add0, add1, ENTRY)):
                    if d0 == 0 and d1 == 0:
                        continue
                    no = 0
                    for leg, d in ((0, d0), (1, d1)):
                        if d != 0:
                            basket[no, 0] = leg
                            basket[no, 1] = d
                            basket[no, 2] = purpose
                            basket[no, 3] = -1.0
                            no += 1
                    ok = _trade(
                        st, fills, trips, j, basket, no, src[k], close, vol, adv, r0, r1, sod,
                        fee, costs, limits, carry_on,
                    )  # fmt: skip
                    if not ok:
                        st[:] = saved
                        return j  # a refusal, a refused fill price or a second remainder
        r = int(st[N_RECORDS])
        rec[r, 0] = j
        rec[r, 1] = st[CASH]
        rec[r, 2] = st[Q0]
        rec[r, 3] = st[Q1]
        rec[r, 4] = st[PAID]
        st[N_RECORDS] += 1
        i += 1
    return n


def _trade(
    st,
    fills,
    trips,
    j,
    basket,
    no,
    signal_bar,
    close,
    vol,
    adv,
    r0,
    r1,
    sod,
    fee,
    costs,
    limits,
    carry_on,
):
    """One basket (`no` rows of leg, signed shares, purpose, parent fill) on bar j, as
    `submit_checked` sends it to the backtest venue: the gate, each order's fill in basket order,
    the round-trip edge. False (state half-changed: the caller restores it) when anything
    refuses."""
    p0, p1 = close[j, 0], close[j, 1]
    if not _basket(st, basket, no, p0, p1, r0, r1, sod, limits):
        return False
    before = _direction(st[Q0], st[Q1])
    for o in range(no):
        leg = int(basket[o, 0])
        if not _fill(
            st, fills, j, leg, basket[o, 1], close[j, leg], vol[j, leg], adv[j, leg], fee,
            basket[o, 2], signal_bar, basket[o, 3], costs, carry_on,
        ):  # fmt: skip
            return False
    after = _direction(st[Q0], st[Q1])
    if after != before:
        eq_now = st[CASH] + st[Q0] * p0 + st[Q1] * p1
        if st[TRIP_J] >= 0 and before != 0:
            t = int(st[N_TRIPS])
            trips[t, 0] = st[TRIP_J]
            trips[t, 1] = j
            trips[t, 2] = st[TRIP_DIR]
            trips[t, 3] = eq_now - st[TRIP_EQ]
            st[N_TRIPS] += 1
            st[TRIP_J] = -1.0
        if after != 0:
            st[TRIP_J] = j
            st[TRIP_EQ] = eq_now
            st[TRIP_DIR] = after
    return True


def _direction(q0: float, q1: float) -> int:
    """+1 long the spread, -1 short it, 0 flat (`_BacktestVenue.direction`)."""
    if q0 == 0 and q1 == 0:
        return 0
    return 1 if q0 > 0 or q1 < 0 else -1


def _charge_borrow(st, base, day, a, b, rate0, rate1, day_count):
    """Borrow of bars (a, b] on the current shorts, keyed by b's day (`_charge_borrow`)."""
    if b <= a:
        return
    q0, q1 = st[Q0], st[Q1]
    fee = 0.0
    if q0 < 0 or q1 < 0:
        c0 = max(-q0, 0.0) * rate0 / day_count
        c1 = max(-q1, 0.0) * rate1 / day_count
        fee = c0 * (base[b, 0] - base[a, 0]) + c1 * (base[b, 1] - base[a, 1])
    if day[b] <= st[THROUGH]:
        return
    st[CASH] -= fee
    st[PAID] += fee
    st[THROUGH] = day[b]


def _basket(st, basket, no, p0, p1, r0, r1, sod, limits):
    """`RiskManager.pre_trade_check` on the backtest venue's snapshot (prices fresh, the previous
    close as reference, Reg-T buying power): True when the basket passes. The same checks in the
    same order, by the same functions."""
    factor, max_notional, max_qty, max_leg, max_gross, max_net = limits[:6]
    max_leverage, margin, daily_floor = limits[6], limits[7], limits[8]
    q0, q1, cash = st[Q0], st[Q1], st[CASH]
    equity = cash + q0 * p0 + q1 * p1
    for o in range(no):
        price, ref = (p0, r0) if basket[o, 0] == 0 else (p1, r1)
        low, high = price_band(ref, factor)
        if not price_sane(price, low, high):
            return False
    reduce_only = True
    seen0 = seen1 = False
    for o in range(no):
        d = basket[o, 1]
        if basket[o, 0] == 0:
            if seen0 or not reduces(q0, d, abs(d)):
                reduce_only = False
            seen0 = True
        else:
            if seen1 or not reduces(q1, d, abs(d)):
                reduce_only = False
            seen1 = True
    if reduce_only:
        return True
    for o in range(no):
        price = p0 if basket[o, 0] == 0 else p1
        if order_size_verdict(abs(basket[o, 1]), price, max_notional, max_qty) != 0:
            return False
    opening = 0.0
    post0, post1 = q0, q1
    for o in range(no):
        d = basket[o, 1]
        if basket[o, 0] == 0:
            opening += opened_qty(post0, d, abs(d)) * p0
            post0 = post0 + d
        else:
            opening += opened_qty(post1, d, abs(d)) * p1
            post1 = post1 + d
    gross = 0.0
    net = 0.0
    for leg in range(2):  # the long leg first, as the gate walks the positions
        post, price = (post0, p0) if leg == 0 else (post1, p1)
        if post != 0:
            notional = post * price
            if leg_over(abs(notional), max_leg):
                return False
            gross += abs(notional)
            net += notional
    if exposure_verdict(gross, net, max_gross, max_net) != 0:
        return False
    current = 0.0
    if q0 != 0:
        current += abs(q0 * p0)
    if q1 != 0:
        current += abs(q1 * p1)
    power = reg_t_buying_power(equity, margin, current)
    verdict = capital_verdict(equity, gross, opening, power, sod, max_leverage, daily_floor)
    return verdict == 0


def _fill(st, fills, j, leg, d, price, vol, adv, fee, purpose, signal_bar, parent, costs, carry_on):
    """`OrderExecutor._fill` + `Ledger.apply` + the venue's record for one order of `d` signed
    shares, carrying an unfilled remainder when `carry_on`: False when the cost model refuses
    the fill price, or the leg already carries a remainder (the caller restores the state)."""
    part_cap, per_share, bps, c_floor, c_cap, half_spread, impact_y = costs[:7]
    requested = abs(d)
    qty = float(fill_quantity(requested, part_cap, adv, False, False))
    status = 0 if qty == requested else 1
    if qty <= 0:
        status = 2
    sell = d < 0
    fill_price = price
    c = (0.0, 0.0, 0.0, 0.0, 0.0)
    if qty > 0:
        if not (adv > 0 and vol >= 0):
            return False
        sec_rate = fee[0] if sell else 0.0
        taf_rate = fee[1] if sell else 0.0
        taf_cap = fee[2] if sell else 0.0
        fill_price, c0, c1, c2, c3, c4 = fill_terms(
            sell, qty, price, vol, adv, per_share, bps, c_floor, c_cap, half_spread, impact_y,
            sec_rate, taf_rate, taf_cap,
        )  # fmt: skip
        if fill_price != fill_price:
            return False
        c = (c0, c1, c2, c3, c4)
    signed = -qty if sell else qty
    if signed != 0:
        q_col, avg_col = (Q0, AVG0) if leg == 0 else (Q1, AVG1)
        new_q, new_avg, realized = book_fill(
            st[q_col], st[avg_col], st[REALIZED], signed, fill_price
        )
        st[q_col] = new_q
        st[avg_col] = new_avg
        st[REALIZED] = realized
        st[CASH] += cash_change(signed, fill_price, c[0], c[3], c[4])
    st[COMMISSION] += c[0]
    st[SPREAD] += c[1]
    st[IMPACT] += c[2]
    st[SEC_FEE] += c[3]
    st[FINRA_TAF] += c[4]
    f = int(st[N_FILLS])
    row = fills[f]
    row[0] = j
    row[1] = leg
    row[2] = -1.0 if sell else 1.0
    row[3] = qty
    row[4] = requested
    row[5] = price
    row[6] = fill_price
    row[7] = c[0]
    row[8] = c[1]
    row[9] = c[2]
    row[10] = c[3]
    row[11] = c[4]
    row[12] = purpose
    row[13] = status
    row[14] = signal_bar
    row[15] = parent
    st[N_FILLS] += 1
    if carry_on and qty < requested:  # the remainder goes to the next bar (`_record`)
        no = int(st[PENDING])
        if no == MAX_PENDING:
            return False  # more remainders than the loop keeps
        slot = PENDING + 1 + 3 * no
        rest = requested - qty
        st[slot] = leg
        st[slot + 1] = -rest if sell else rest
        st[slot + 2] = f
        st[PENDING] = no + 1
    return True
