"""Backtest engine speed: our engine vs backtrader, backtesting.py and vectorbt, same strategy, one
process.

The strategy: AAPL (long leg) / MSFT (short leg); spread = log AAPL - beta log MSFT, beta the 60-bar
rolling OLS slope; z = (spread - 60-bar mean) / 60-bar std, all ending at t inclusive. Enter at
|z| > 2 (z > 2: sell AAPL, buy MSFT; z < -2: buy AAPL, sell MSFT), exit at |z| < 0.5; $10,000
notional per leg in whole shares (int(10000 / price)); 0.1 % commission on notional; fills at the
close of the signal bar. z is precomputed outside every timing: we time the engines, not indicators.

- ours: `backtest_strategy.run_backtest` (fill_delay_bars=0, weight_unit="usd", risk limits loose
  enough that nothing is refused), once with a 0.1 %-commission-only cost model and once with the
  default cost model (per-share commission, spread, impact, SEC/FINRA fees, borrow) to show its
  price. Every order still goes through the risk gate, the executor and the cost model.
- backtrader: two PandasData feeds (open=high=low=close), the precomputed z as an extra line of the
  AAPL feed, `set_coc(True)` (cheat-on-close), commission 0.001, `order_target_size` on a z change,
  `stdstats=False`; times `cerebro.run()` (which includes its data preload).
- backtesting.py: single instrument only, so it trades the spread's long leg, AAPL, on the same z
  signal and sizing (z passed with `self.I(lambda: z)`); `trade_on_close=True`,
  `finalize_trades=True`; times `Backtest(...).run()`. A synthetic spread instrument was rejected:
  its price (log spread) is not a positive tradable price, whole shares and a commission on notional
  have no meaning for it, and its P&L is not the two-leg P&L either. The AAPL leg keeps the real
  prices, sizing, commission and the same number of order events (one leg instead of two), and its
  P&L can be checked against the AAPL fills of our engine.
- vectorbt 1.2: `Portfolio.from_signals` (numba), two columns (AAPL, MSFT) in one group with shared
  cash (`cash_sharing=True, group_by=True`), init_cash = the capital, `fees=0.001`, fills at the
  close of the signal bar (`price` left at its default, the close). Per leg: long entries where the
  leg is bought (AAPL: z < -2; MSFT: z > 2), short entries on the mirror, long and short exits on
  |z| < 0.5; `size` = int(10000 / close) per bar, `size_type="amount"`; `accumulate=False` (an
  entry while already in that direction is ignored: the rule keeps the position) and
  `upon_opposite_entry="reverse"` (an opposite entry while in a position reverses it in one order
  of |position| + the new shares). That reproduces every fill of ours, reversals included, so
  `from_signals` is used rather than the `from_orders(size_type="targetamount")` fallback. The
  entry/exit arrays are built from z outside the timing (like our instructions); the size array
  is built inside it (our engine sizes inside its run). Times `from_signals(...)` +
  `final_value()` after one untimed warm-up run per size (the first call compiles with numba),
  best of the same number of runs as ours.
  Documented difference from ours: our commission is rounded to the cent per order, vectorbt's is
  not; whole shares and the same fill prices in both, so final value(ours) - final value(vectorbt)
  = sum over our fills of (rounded commission - 0.1 % of notional), and a reversal is one order per
  leg in vectorbt, two in ours (close, open): orders(vectorbt) = fills(ours) - reversal legs. The
  sanity section checks both on the bundled history, and every size checks the final values
  (0.1 % config); an unexplained difference above $1 (or other order counts) prints MISMATCH and
  the bench exits with status 1 at the end.

Sizes: the bundled history (8,313 real bars), the first 100,000 bars and all 1,000,000 bars of a
synthetic series (the real daily log returns of both stocks, demeaned, tiled, cumulated from 100;
consecutive business days from 1900 with a datetime64[s] index, since nanoseconds overflow after
2262). backtrader and backtesting.py run 1,000,000 bars only with --big-others (minutes);
vectorbt runs at every size. Timings: best of --repeat runs (at most 2 for backtrader and
backtesting.py at 100,000 bars, 1 at 1,000,000), each engine's runs back to back (`best_runs`: a
run reuses the memory the one before freed; taking turns with vectorbt made our run after its run
pay for the pages it gave back, up to 0.5 s per 100 MB on this VM). Ours: the
compiled event loop (loaded untimed first, as vectorbt compiles in its untimed warm-up run) with
every cost, with the 0.1 % commission, and with the participation cap and carried remainders;
and the interpreted engine for the before/after ratio. Single-threaded BLAS; machine load adds
noise. The last line gives ours (every cost, i.e. the default cost model) / vectorbt at the
largest size run (target >= 1.0 at 1,000,000 bars) and ours with the participation cap and carry
(target >= 0.6).

Install the bench-only packages, then run:
  .venv/bin/pip install -r requirements-bench.txt -c constraints.txt
  .venv/bin/python bench/bench_backtest.py [--quick] [--repeat N] [--big-others]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

# One core for every framework: keep numpy/BLAS single-threaded.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")
# No progress bars: backtesting.py draws one inside its timed run when tqdm is installed (vectorbt
# brings it in).
os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import backtest_strategy as bt  # noqa: E402
import fast_engine as fe  # noqa: E402
import process_stock_data as psd  # noqa: E402
import risk_management as rm  # noqa: E402
import trading_execution as te  # noqa: E402
import transaction_costs as tc  # noqa: E402

try:
    import backtrader

    BACKTRADER_SKIP = ""
except Exception as exc:  # any import failure: report it, run the rest
    backtrader = None
    BACKTRADER_SKIP = f"import backtrader failed: {type(exc).__name__}: {exc}"
try:
    import backtesting
    from backtesting import Backtest, Strategy

    BACKTESTING_SKIP = ""
except Exception as exc:
    backtesting = None
    BACKTESTING_SKIP = f"import backtesting failed: {type(exc).__name__}: {exc}"
try:
    import vectorbt

    VECTORBT_SKIP = ""
except Exception as exc:
    vectorbt = None
    VECTORBT_SKIP = f"import vectorbt failed: {type(exc).__name__}: {exc}"

LONG, SHORT = "AAPL", "MSFT"
BARS = 60
ENTRY, EXIT = 2.0, 0.5
LEG_USD = 10_000.0
COMMISSION = 0.001  # 0.1 % of notional
CAPITAL = 1_000_000.0
SLICE = 100_000
BIG = 1_000_000
OURS = "ours (0.1 % commission)"
EVERY = "ours (default costs)"  # every cost on
CARRY = "ours (0.1 %, cap + carry)"  # commission only, participation cap on, remainders carried
SLOW = "interpreted (default costs)"  # the same engine without its compiled event loop
VBT_TOLERANCE = 1.0  # $: the most an unexplained ours - vectorbt final value difference may be
MISMATCHES: list[str] = []
INSTALL_HINT = "pip install -r requirements-bench.txt -c constraints.txt"


# --- Data and signals -----------------------------------------------------------------------------
def tiled_prices(base: pd.DataFrame, rows: int) -> pd.DataFrame:
    """`rows` bars whose log returns repeat `base`'s (demeaned), from 100, on consecutive business
    days from 1900 (second resolution: a nanosecond index overflows after 2262)."""
    log_ret = np.log(base).diff().dropna()
    log_ret = log_ret - log_ret.mean()
    reps = -(-rows // len(log_ret))
    tiled = np.tile(log_ret.to_numpy(), (reps, 1))[: rows - 1]
    levels = 100 * np.exp(np.vstack([np.zeros((1, base.shape[1])), np.cumsum(tiled, axis=0)]))
    index = pd.date_range("1900-01-01", periods=rows, freq="B", unit="s", name="date")
    return pd.DataFrame(levels, index=index, columns=base.columns)


def zscore(prices: pd.DataFrame) -> np.ndarray:
    close = prices.to_numpy("float64")
    return bt.rolling_spread_zscore(np.log(close[:, 0]), np.log(close[:, 1]), bars=BARS)


def next_state(state: int, z: float) -> int:
    """The rule, bar by bar (what `bt.zscore_rule_states` + ffill do in vectorized form)."""
    if z > ENTRY:
        return -1
    if z < -ENTRY:
        return 1
    if abs(z) < EXIT:
        return 0
    return state  # in between, or NaN during warm-up: keep


# --- Our engine -----------------------------------------------------------------------------------
def loose_limits() -> rm.RiskLimits:
    """Limits nothing in this strategy can reach: no refusal, no drawdown halt."""
    big = 1e12
    return rm.RiskLimits(
        max_leg_notional=big,
        max_gross_exposure=big,
        max_net_exposure=big,
        max_order_notional=big,
        max_order_qty=10**12,
        max_leverage=1e6,
        daily_loss_limit_pct=0.99,
        max_drawdown_pct=0.99,
        price_band_factor=1e6,
    )


def our_configs() -> dict[str, tuple[bt.BacktestConfig, str]]:
    """Our runs: (configuration, engine) by name."""
    commission_only = dataclasses.replace(tc.CostModel.zero(), commission_bps=COMMISSION * 1e4)
    fixed = bt.BacktestConfig(
        initial_capital=CAPITAL,
        fill_delay_bars=0,
        execution=te.ExecutionConfig(costs=commission_only),
        limits=loose_limits(),
    )
    every = bt.BacktestConfig(initial_capital=CAPITAL, fill_delay_bars=0, limits=loose_limits())
    carry = dataclasses.replace(
        fixed,
        execution=te.ExecutionConfig(
            costs=commission_only, participation_cap=0.1, remainder=te.RemainderPolicy.CARRY
        ),
    )
    return {
        OURS: (fixed, "compiled"),
        EVERY: (every, "compiled"),
        CARRY: (carry, "compiled"),
        SLOW: (every, "interpreted"),
    }


def run_ours(
    prices: pd.DataFrame, weights: np.ndarray, cfg: bt.BacktestConfig, engine: str = "compiled"
) -> bt.BacktestResult:
    """One run of our engine: the equity frame (every bar) is built; the trades frame (fills with
    their client order ids) is built on its first read, as vectorbt builds its order records'
    frame on `orders.records_readable` -- `trades_frame_s` times that read."""
    return bt.run_backtest(
        prices, weights, cfg, label="bench", log_rejections=False, weight_unit="usd", engine=engine
    )


def warm_up(base: pd.DataFrame) -> float:
    """Load (or compile) our compiled loop once, untimed, as vectorbt's warm-up run compiles its
    own; returns the seconds it took."""
    t0 = time.perf_counter()
    z = zscore(base)
    w = bt.instructions_from_states(bt.zscore_rule_states(z, ENTRY, EXIT), LEG_USD)
    for cfg, engine in our_configs().values():
        run_ours(base, w, cfg, engine).trades  # noqa: B018
    big = tiled_prices(base, fe.COMPILE_FROM_BARS + 1)
    run_ours(big, bt.instructions_from_states(bt.zscore_rule_states(zscore(big), 2, 0.5), 1e4),
             our_configs()[OURS][0])  # fmt: skip
    return time.perf_counter() - t0


# --- backtrader -----------------------------------------------------------------------------------
if backtrader is not None:

    class ZFeed(backtrader.feeds.PandasData):
        """A PandasData feed with the precomputed z-score as an extra line (column "z")."""

        lines = ("z",)
        params = (("z", -1),)

    class PairStrategy(backtrader.Strategy):
        """Reads z from the AAPL feed, keeps the rule's state, orders the target shares per leg
        when the state changes; cheat-on-close fills them at this bar's close."""

        def __init__(self) -> None:
            self.long, self.short = self.datas[0], self.datas[1]
            self.z = self.long.z
            self.state = 0
            self.fills = 0
            self.closed_trades = {LONG: 0, SHORT: 0}

        def next(self) -> None:
            new = next_state(self.state, self.z[0])
            if new == self.state:
                return
            self.state = new
            self.order_target_size(data=self.long, target=new * int(LEG_USD / self.long.close[0]))
            self.order_target_size(
                data=self.short, target=-new * int(LEG_USD / self.short.close[0])
            )

        def notify_order(self, order: Any) -> None:
            if order.status == order.Completed:
                self.fills += 1

        def notify_trade(self, trade: Any) -> None:
            if trade.isclosed:
                self.closed_trades[trade.data._name] += 1


def backtrader_cerebro(prices: pd.DataFrame, z: np.ndarray) -> Any:
    cerebro = backtrader.Cerebro(stdstats=False)
    for sym in (LONG, SHORT):
        close = prices[sym]
        frame = pd.DataFrame(
            {"open": close, "high": close, "low": close, "close": close, "volume": 0.0},
            index=prices.index,
        )
        if sym == LONG:
            frame["z"] = z
        cerebro.adddata(ZFeed(dataname=frame), name=sym)
    cerebro.addstrategy(PairStrategy)
    cerebro.broker.setcash(CAPITAL)
    cerebro.broker.setcommission(commission=COMMISSION)
    cerebro.broker.set_coc(True)
    return cerebro


# --- backtesting.py -------------------------------------------------------------------------------
if backtesting is not None:

    class LongLegStrategy(Strategy):
        """AAPL only: buy on z < -2, sell short on z > 2, flat on |z| < 0.5; one order to the
        target shares on a state change; `trade_on_close` fills it at this bar's close."""

        zline: Any = None  # the precomputed z, set per run

        def init(self) -> None:
            z = self.zline
            self.z = self.I(lambda: z, name="z")
            self.state = 0

        def next(self) -> None:
            new = next_state(self.state, self.z[-1])
            if new == self.state:
                return
            self.state = new
            target = new * int(LEG_USD / self.data.Close[-1])
            delta = target - self.position.size
            if delta > 0:
                self.buy(size=delta)
            elif delta < 0:
                self.sell(size=-delta)


def backtesting_run(prices: pd.DataFrame, z: np.ndarray) -> pd.Series:
    close = prices[LONG]
    frame = pd.DataFrame(
        {"Open": close, "High": close, "Low": close, "Close": close}, index=prices.index
    )
    strategy = type("LongLeg", (LongLegStrategy,), {"zline": z})
    test = Backtest(
        frame,
        strategy,
        cash=CAPITAL,
        commission=COMMISSION,
        trade_on_close=True,
        finalize_trades=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its notes on the index/column conventions
        return test.run()


# --- vectorbt -------------------------------------------------------------------------------------
def vectorbt_signals(z: np.ndarray) -> dict[str, np.ndarray]:
    """Entry/exit arrays per column (AAPL, MSFT) for `from_signals`: the AAPL leg is bought below
    -entry and sold short above +entry, MSFT the mirror; both exit inside +-exit. NaN z: none."""
    low, high = z < -ENTRY, z > ENTRY
    flat = np.abs(z) < EXIT
    return {
        "entries": np.column_stack([low, high]),
        "exits": np.column_stack([flat, flat]),
        "short_entries": np.column_stack([high, low]),
        "short_exits": np.column_stack([flat, flat]),
    }


def vectorbt_run(prices: pd.DataFrame, signals: dict[str, np.ndarray]) -> tuple[float, Any]:
    """One two-leg shared-cash portfolio, whole shares int(10000 / close) per leg, 0.1 % fees,
    fills at the signal bar's close; returns (final value, portfolio)."""
    close = prices[[LONG, SHORT]]
    pf = vectorbt.Portfolio.from_signals(
        close,
        **signals,
        size=np.floor(LEG_USD / close.to_numpy()),
        size_type="amount",
        fees=COMMISSION,
        init_cash=CAPITAL,
        cash_sharing=True,
        group_by=True,
        accumulate=False,
        upon_opposite_entry="reverse",
    )
    return float(pf.final_value()), pf


def vectorbt_orders(pf: Any) -> int:
    return int(np.sum(pf.orders.count()))


def vectorbt_check(ours: bt.BacktestResult, vbt_final: float, vbt_orders: int) -> tuple[str, bool]:
    """ours (0.1 % config) vs vectorbt: the difference, its explained part (our commission
    rounded to the cent per order), the rest, and whether the rest and the order counts agree."""
    t = ours.trades
    ours_final = float(ours.equity["equity"].iloc[-1])
    rounding = float(t["commission"].sum() - (t["qty"] * t["fill_price"]).sum() * COMMISSION)
    reversal_legs = int((t.groupby(["date", "symbol"]).size() > 1).sum())
    diff = ours_final - vbt_final
    left = diff + rounding
    ok = abs(left) <= VBT_TOLERANCE and vbt_orders == len(t) - reversal_legs
    line = (
        f"ours - vectorbt = ${diff:+,.2f} (ours ${ours_final:,.2f}, vectorbt ${vbt_final:,.2f}): "
        f"our commission rounded to the cent per order ${-rounding:+,.2f}, left ${left:+,.2f} "
        f"(tolerance ${VBT_TOLERANCE:,.2f}); orders: vectorbt {vbt_orders:,}, ours {len(t):,} "
        f"fills - {reversal_legs} reversal legs = {len(t) - reversal_legs:,}"
    )
    return line + ("" if ok else "  MISMATCH"), ok


# --- Timing ---------------------------------------------------------------------------------------
def best_of(
    fn: Callable[[Any], Any], repeat: int, setup: Callable[[], Any] = lambda: None
) -> tuple[float, Any]:
    """Best wall time of `fn(setup())` over `repeat` runs (`setup` untimed), and the last result."""
    times, out = [], None
    for _ in range(max(1, repeat)):
        arg = setup()
        t0 = time.perf_counter()
        out = fn(arg)
        times.append(time.perf_counter() - t0)
    return min(times), out


def best_runs(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Best wall time of `repeat` runs of `fn` back to back, and the last result (or the
    exception it raised, after which it is not run again)."""
    times: list[float] = []
    out: Any = None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        try:
            out = fn()
        except Exception as exc:  # reported by the caller, with the rest still timed
            return math.nan, exc
        times.append(time.perf_counter() - t0)
    return min(times), out


def leg_pnl(result: bt.BacktestResult, sym: str, last_price: float) -> float:
    """P&L of one leg of our run: cash flows of its fills, commissions, final position marked."""
    t = result.trades[result.trades["symbol"] == sym]
    signed = np.where(t["side"].str.lower() == "buy", t["qty"], -t["qty"])
    qty = int(signed.sum())
    costs = t[["commission", "spread", "impact", "sec_fee", "finra_taf"]].to_numpy().sum()
    return float(-(signed * t["fill_price"]).sum() - costs + qty * last_price)


def sanity(base: pd.DataFrame) -> None:
    """Same strategy on the bundled history: trade counts and final equity of every framework."""
    z = zscore(base)
    w = bt.instructions_from_states(bt.zscore_rule_states(z, ENTRY, EXIT), LEG_USD)
    ours = run_ours(base, w, *our_configs()[OURS])
    ours_final = float(ours.equity["equity"].iloc[-1])
    last = base.iloc[-1]
    open_qty = int(ours.equity[f"qty_{LONG}"].iloc[-1])
    t = ours.trades
    # A reversal (long <-> short in one bar) is two orders per leg here (close, open), one in
    # backtrader (order_target_size) and backtesting.py (one order to the target).
    reversals = int((t.groupby(["date", "symbol"]).size() > 1).sum()) // 2
    print(f"sanity, bundled history ({len(base):,} bars, {LONG}/{SHORT}), our 0.1 % config:")
    print(
        f"  ours:           {len(ours.round_trips)} round trips closed + {int(open_qty != 0)} open "
        f"at the end, {len(t)} fills ({reversals} reversal(s): close + open per leg), "
        f"{len(ours.rejections)} rejections, halted: {ours.halted_at is not None}; "
        f"final equity ${ours_final:,.2f}"
    )
    # Our commission is rounded to the cent per order; the others' is not.
    rounding = float(t["commission"].sum() - (t["qty"] * t["fill_price"]).sum() * COMMISSION)
    if backtrader is not None:
        cerebro = backtrader_cerebro(base, z)
        strat = cerebro.run()[0]
        bt_final = cerebro.broker.getvalue()
        print(
            f"  backtrader:     {strat.closed_trades[LONG]} {LONG} + {strat.closed_trades[SHORT]} "
            f"{SHORT} trades closed, {strat.fills} fills "
            f"(= ours - {2 * reversals}: a reversal is one order per leg); "
            f"final value ${bt_final:,.2f}"
        )
        diff = ours_final - bt_final
        print(
            f"  ours - backtrader = ${diff:+,.2f}: our commission rounded to the cent per order "
            f"${-rounding:+,.2f}, left ${diff + rounding:+,.2f} (same shares, same fill prices)"
        )
    else:
        print(f"  backtrader:     skipped: {BACKTRADER_SKIP}")
    if backtesting is not None:
        stats = backtesting_run(base, z)
        bp_pnl = float(stats["Equity Final [$]"]) - CAPITAL
        ours_leg = leg_pnl(ours, LONG, float(last[LONG]))
        leg = t[t["symbol"] == LONG]
        leg_rounding = float(
            leg["commission"].sum() - (leg["qty"] * leg["fill_price"]).sum() * COMMISSION
        )
        print(
            f"  backtesting.py: {int(stats['# Trades'])} {LONG} trades "
            f"({int(open_qty != 0)} of them closed at the end by finalize_trades); "
            f"{LONG}-only final equity ${CAPITAL + bp_pnl:,.2f}"
        )
        # finalize_trades with trade_on_close re-runs the broker on the last bar, whose "previous
        # close" is the second-to-last close: the open trade exits there, paying commission.
        final_adj = 0.0
        if open_qty:
            exit_price = float(stats["_trades"]["ExitPrice"].iloc[-1])
            final_adj = (
                open_qty * (exit_price - float(last[LONG]))
                - abs(open_qty) * exit_price * COMMISSION
            )
        print(
            f"  {LONG} leg P&L: ours ${ours_leg:+,.2f} (open position marked at the last close), "
            f"backtesting.py ${bp_pnl:+,.2f}; its finalize exit at the second-to-last close "
            f"${exit_price if open_qty else float('nan'):,.3f} with commission: "
            f"${final_adj:+,.2f}, our cent rounding ${-leg_rounding:+,.2f}, "
            f"left ${bp_pnl - ours_leg - final_adj - leg_rounding:+,.2f}"
        )
    else:
        print(f"  backtesting.py: skipped: {BACKTESTING_SKIP}")
    if vectorbt is not None:
        vbt_final, pf = vectorbt_run(base, vectorbt_signals(z))  # also the numba compile
        print(
            f"  vectorbt:       {vectorbt_orders(pf)} orders (a reversal is one order per leg); "
            f"final value ${vbt_final:,.2f}"
        )
        line, ok = vectorbt_check(ours, vbt_final, vectorbt_orders(pf))
        print(f"  {line}")
        if not ok:
            MISMATCHES.append(f"bundled history: {line}")
    else:
        print(f"  vectorbt:       skipped: {VECTORBT_SKIP}")


def fmt(seconds: float, n: int, repeat: int) -> str:
    return f"{seconds:8.3f} s  {n / seconds:>11,.0f} bars/s  (best of {repeat})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="bundled history and 100,000 bars only"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="best of N runs (default 3); at 100,000 bars at most 2 for backtrader and "
        "backtesting.py, at 1,000,000 bars at most 2 for ours and 1 for the others",
    )
    parser.add_argument(
        "--big-others",
        action="store_true",
        help="also run backtrader and backtesting.py on 1,000,000 bars (minutes)",
    )
    args = parser.parse_args()
    t_start = time.perf_counter()

    versions = [f"numpy {np.__version__}", f"pandas {pd.__version__}"]
    versions.append(
        f"backtrader {backtrader.__version__}" if backtrader else "backtrader: not installed"
    )
    versions.append(
        f"backtesting {backtesting.__version__}" if backtesting else "backtesting: not installed"
    )
    if vectorbt is not None:
        import numba

        versions.append(f"vectorbt {vectorbt.__version__} (numba {numba.__version__})")
    else:
        versions.append("vectorbt: not installed")
    print(", ".join(versions) + f"; python {sys.version.split()[0]}")
    for skip in (BACKTRADER_SKIP, BACKTESTING_SKIP, VECTORBT_SKIP):
        if skip:
            print(f"  {skip} ({INSTALL_HINT})")

    base = psd.load_bundled().close[[LONG, SHORT]]
    big = tiled_prices(base, BIG)
    print(
        f"synthetic index: {big.index.dtype}, {big.index[0].date()} .. {big.index[-1].date()} "
        f"(the 100,000-bar slice ends {big.index[SLICE - 1].date()})"
    )
    sizes = [("bundled", base), (f"{SLICE:,} synthetic", big.iloc[:SLICE])]
    if not args.quick:
        sizes.append((f"{BIG:,} synthetic", big))

    print(
        "z precomputed outside the timings (backtrader: an extra line of the AAPL feed; "
        "backtesting.py: self.I(lambda: z)); fills at the signal bar's close everywhere.\n"
        f"backtesting.py is single-instrument: it trades the long leg {LONG} alone on the same "
        "z signal, sizing and commission (a synthetic spread instrument has no positive tradable "
        "price, so whole shares and a commission on notional would mean nothing), i.e. half the "
        "order work of the two-leg runs."
    )
    sanity(base)
    print(
        f"our compiled event loop loaded in {warm_up(base):.2f} s (untimed, like vectorbt's "
        "warm-up run; ~10 s when it compiles after a source change, then cached on disk)"
    )
    print()
    table: dict[str, dict[str, float | str]] = {}
    configs = our_configs()
    for size_name, prices in sizes:
        n = len(prices)
        z = zscore(prices)
        w = bt.instructions_from_states(bt.zscore_rule_states(z, ENTRY, EXIT), LEG_USD)
        ours_repeat = args.repeat
        others_repeat = args.repeat if n < SLICE else min(args.repeat, 2) if n == SLICE else 1
        row: dict[str, float | str] = {}
        ours_fixed: bt.BacktestResult | None = None
        # Each engine's runs back to back, best of `repeat`: a run reuses the memory its previous
        # run freed. (Taking turns run by run made the run after vectorbt's pay for the pages
        # vectorbt gave back: on this VM fresh pages cost up to 0.5 s per 100 MB.)
        timed: dict[str, Callable[[], Any]] = {
            name: (lambda p=prices, w=w, c=cfg, e=engine: run_ours(p, w, c, e))
            for name, (cfg, engine) in configs.items()
        }
        signals = None
        if vectorbt is not None:
            try:
                signals = vectorbt_signals(z)
                vectorbt_run(prices, signals)  # untimed warm-up (numba compile, caches)
                timed["vectorbt"] = lambda p=prices, s=signals: vectorbt_run(p, s)
            except Exception as exc:
                row["vectorbt"] = f"failed: {type(exc).__name__}: {exc}"
        best = {name: best_runs(fn, ours_repeat) for name, fn in timed.items()}
        for name in configs:
            try:
                seconds, result = best[name]
                if isinstance(result, Exception):
                    raise result
                row[name] = n / seconds
                if name == OURS:
                    ours_fixed = result
                t0 = time.perf_counter()
                fills = len(result.trades)  # built on first read (client order ids included)
                frame_s = time.perf_counter() - t0
                print(
                    f"{size_name:>19} {name:<28}{fmt(seconds, n, ours_repeat)}  "
                    f"{fills:,} fills, {result.event_bars:,} event bars, "
                    f"{result.compiled_bars:,} bars compiled; trades frame on first read "
                    f"{frame_s:.3f} s"
                )
            except Exception as exc:  # e.g. the index: report exactly what fails
                row[name] = f"failed: {type(exc).__name__}: {exc}"
                print(f"{size_name:>19} {name:<28}{row[name]}")
        run_others = n <= SLICE or args.big_others
        others: list[tuple[str, str, Any, Callable[[Any], Any], Callable[[], Any]]] = [
            (
                "backtrader",
                BACKTRADER_SKIP,
                backtrader,
                lambda c: c.run(),
                lambda p=prices, z=z: backtrader_cerebro(p, z),
            ),
            (
                "backtesting.py",
                BACKTESTING_SKIP,
                backtesting,
                lambda _, p=prices, z=z: backtesting_run(p, z),
                lambda: None,
            ),
        ]
        for name, skip, module, fn, setup in others:
            label = name if name == "backtrader" else f"{name} ({LONG} leg)"
            if module is None:
                row[name] = "not installed"
                print(f"{size_name:>19} {label:<28}skipped: {skip}")
                continue
            if not run_others:
                row[name] = "--big-others"  # not run without it
                continue
            try:
                seconds, _ = best_of(fn, others_repeat, setup)
                row[name] = n / seconds
                print(f"{size_name:>19} {label:<28}{fmt(seconds, n, others_repeat)}")
            except Exception as exc:
                row[name] = f"failed: {type(exc).__name__}: {exc}"
                print(f"{size_name:>19} {label:<28}{row[name]}")
        if vectorbt is None:
            row["vectorbt"] = "not installed"
            print(f"{size_name:>19} {'vectorbt':<28}skipped: {VECTORBT_SKIP}")
        elif "vectorbt" in best:
            try:
                seconds, outcome = best["vectorbt"]
                if isinstance(outcome, Exception):
                    raise outcome
                vbt_final, pf = outcome
                row["vectorbt"] = n / seconds
                print(
                    f"{size_name:>19} {'vectorbt':<28}{fmt(seconds, n, ours_repeat)}  "
                    f"{vectorbt_orders(pf):,} orders"
                )
                if ours_fixed is not None:
                    line, ok = vectorbt_check(ours_fixed, vbt_final, vectorbt_orders(pf))
                    print(f"{'':>19} {line}")
                    if not ok:
                        MISMATCHES.append(f"{size_name}: {line}")
            except Exception as exc:
                row["vectorbt"] = f"failed: {type(exc).__name__}: {exc}"
                print(f"{size_name:>19} {'vectorbt':<28}{row['vectorbt']}")
        table[f"{size_name} ({n:,} bars)"] = row

    print(
        f"\nbars/s per framework and size; ratios = {OURS} / other, and both of our configs "
        f"/ vectorbt ({EVERY} = every cost on)"
    )
    columns = [*configs, "backtrader", "backtesting.py", "vectorbt"]
    ratios = [
        ("ours/backtrader", OURS, "backtrader", 1),
        ("ours/backtesting.py", OURS, "backtesting.py", 1),
        ("ours (every cost)/vectorbt", EVERY, "vectorbt", 2),
        ("ours (0.1 %)/vectorbt", OURS, "vectorbt", 2),
        ("cap + carry/vectorbt", CARRY, "vectorbt", 2),
        ("compiled/interpreted", EVERY, SLOW, 1),
    ]
    head = [c.replace("ours ", "") for c in columns] + [r[0] for r in ratios]
    widths = [max(len(h), 13) + 2 for h in head]
    width = max(len(k) for k in table) + 1
    print(f"{'':<{width}}" + "".join(f"{h:>{w}}" for h, w in zip(head, widths, strict=True)))
    for size_name, row in table.items():
        cells = [
            f"{row[c]:,.0f}" if isinstance(row[c], float) else str(row[c])[: w - 2]
            for c, w in zip(columns, widths, strict=False)
        ]
        for _, num, den, digits in ratios:
            a, b = row[num], row[den]
            cells.append(
                f"{a / b:,.{digits}f}x" if isinstance(a, float) and isinstance(b, float) else "-"
            )
        print(
            f"{size_name:<{width}}"
            + "".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True))
        )
    bars, last = len(sizes[-1][1]), list(table.values())[-1]
    every, fixed, carry, theirs = last[EVERY], last[OURS], last[CARRY], last["vectorbt"]
    if all(isinstance(v, float) for v in (every, fixed, carry, theirs)):
        at = "" if bars == BIG else f" at {BIG:,} bars"
        print(
            f"\n{bars:,} bars: ours (every cost) / vectorbt = {every / theirs:.2f} "
            f"(target >= 1.0{at}); ours (0.1 %) / vectorbt = {fixed / theirs:.2f}; "
            f"ours (0.1 %, participation cap + carry) / vectorbt = {carry / theirs:.2f} "
            f"(target >= 0.6{at})"
        )
    print(f"\nwall time: {time.perf_counter() - t_start:,.1f} s")
    if MISMATCHES:
        print(f"\nMISMATCH: ours vs vectorbt beyond the documented difference ({len(MISMATCHES)}):")
        for line in MISMATCHES:
            print(f"  {line}")
        sys.exit(1)


if __name__ == "__main__":
    main()
