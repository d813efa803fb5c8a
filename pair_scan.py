"""Scan a universe of stocks for pairs: every pair, walk-forward, traded out of sample.

Per pair (a, b) -- a the long leg when "buying the spread" -- and per walk-forward window
(`pair_selection.walk_forward_windows` on the universe's common dates): the formation statistics
(`pair_selection.pair_statistics` on log closes of ``[formation_start, formation_stop)``), then the
spread z-score rule traded on ``[trading_start, trading_stop)`` through the backtest engine
(`backtest_strategy.run_backtest`, the command line's `TradingConfig`: the same sizing, costs and
risk gate as `main.py backtest`). The windows' daily returns chained in date order are the pair's
out-of-sample returns; their Sharpe, interval, PSR and DSR rank the pairs.

Conventions and invariants
--------------------------
- **Causal z-score.** `rolling_spread_zscore` (60-bar beta and z by default) runs on the closes of
  ``[formation_start, trading_stop)`` and bar t's value uses rows <= t only; the formation rows are
  its warm-up, so it is warm on the first trading bar (`ScanSettings` refuses a formation window
  shorter than ``2 * zscore_bars - 1``). The formation statistics are descriptive: they do not
  choose or size trades.
- **Independent windows.** Each trading window starts flat with `initial_capital` and ends flat:
  the rule's state is forced to flat `fill_delay_bars` bars before the window's last bar, so a
  carried position is closed at the window's last close (never carried into the next window).
  A window's returns are its equity's daily simple returns (the first bar against the initial
  capital); the pair's total return compounds them (capital reset each window).
- **No lookahead.** A window reads rows ``[formation_start, trading_stop)`` only; cutting the data
  after a window's trading_stop leaves its result unchanged (tests/test_pair_scan.py).
- **Order independence.** Tasks are pure top-level functions of their arguments and the shared,
  read-only price table; results are put back in (pair, rule, window) order whatever order a
  mapper runs them in.
- **Cost share** = total costs (commission, spread, impact, fees, borrow, buy-in) / gross traded
  notional (sum of |fill notional|), a fraction; shown in bps.
- **Deflation.** The DSR of each pair deflates by every scan trial in the trial ledger on the
  universe's pairs and the same out-of-sample dates (one trial per pair x rule parameter set;
  on a fresh ledger exactly pairs x parameter sets), against the variance of their annualised
  Sharpes.

The seam for a task runner: `run_scan(..., mapper=...)` calls ``mapper(fn, tasks, progress=cb)``
twice (windows, then per-pair statistics), where `fn` is ``functools.partial(<task function>,
<shared table>)`` (`fn.func` and `fn.args` give both) and `tasks` a list of argument tuples; it
must return ``[fn(*t) for t in tasks]`` in the same order and call ``cb(done, total)`` as tasks
finish. `serial_map` is the in-process default.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import performance_stats as pst
from backtest_strategy import STATISTICS_METHOD as BACKTEST_STATISTICS
from backtest_strategy import ZSCORE_RULES, run_backtest
from error_handling import ConfigurationError, DataError
from pair_engine import TradingConfig, rule_instructions
from pair_selection import (
    FORMATION_BARS,
    TRADING_BARS,
    PairStatistics,
    WalkForwardWindow,
    pair_statistics,
    walk_forward_windows,
)
from trial_ledger import Trial, TrialCount, TrialLedger, config_hash

#: A formation window is cointegrated when its Engle-Granger p-value is below this.
COINT_LEVEL = 0.05
#: Bootstrap settings of every pair's Sharpe interval: the backtest's, one definition.
STATISTICS_METHOD: dict[str, Any] = {
    **BACKTEST_STATISTICS,
    "dsr": "Bailey & Lopez de Prado 2014, over the scan trials in trials.jsonl on the "
    "universe's pairs and the same out-of-sample dates (pairs x parameter sets)",
}
TRIAL_KIND = "scan"


# --- Settings -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RuleParameters:
    """One parameter set of the z-score rule (`backtest_strategy.ZSCORE_RULES`)."""

    #: Enter beyond +-entry_z (sell the spread above, buy it below).
    entry_z: float = 2.0
    #: Go flat inside +-exit_z.
    exit_z: float = 0.5
    #: Bars of the rolling hedge ratio and of the z-score's mean and std.
    zscore_bars: int = 60
    #: "current" (direct reversal) or "textbook" (flat on the opposite signal).
    rule: str = "current"

    def __post_init__(self) -> None:
        if self.rule not in ZSCORE_RULES:
            raise ConfigurationError(f"rule must be one of {', '.join(ZSCORE_RULES)}: {self.rule}")
        if not (math.isfinite(self.entry_z) and math.isfinite(self.exit_z)):
            raise ConfigurationError("entry and exit z must be finite numbers")
        if not 0 <= self.exit_z < self.entry_z:
            raise ConfigurationError(
                f"need 0 <= exit z < entry z, got exit {self.exit_z:g}, entry {self.entry_z:g}"
            )
        if isinstance(self.zscore_bars, bool) or not (
            isinstance(self.zscore_bars, int) and self.zscore_bars >= 3
        ):
            raise ConfigurationError(f"zscore_bars must be a whole number >= 3: {self.zscore_bars}")

    @property
    def label(self) -> str:
        """Short text for tables: ``current z60 2/0.5``."""
        return f"{self.rule} z{self.zscore_bars} {self.entry_z:g}/{self.exit_z:g}"

    @property
    def warmup_bars(self) -> int:
        """Bars before the z-score's first value: beta over `zscore_bars`, then z over as many."""
        return 2 * self.zscore_bars - 1


@dataclass(frozen=True)
class ScanSettings:
    """Windows and the rule parameter sets a scan tries (each set is one trial per pair)."""

    formation_bars: int = FORMATION_BARS
    trading_bars: int = TRADING_BARS
    rules: tuple[RuleParameters, ...] = (RuleParameters(),)

    def __post_init__(self) -> None:
        if not self.rules:
            raise ConfigurationError("a scan needs at least one rule parameter set")
        if len(set(self.rules)) != len(self.rules):
            raise ConfigurationError("the same rule parameter set is given twice")
        need = max(r.warmup_bars for r in self.rules)
        if isinstance(self.formation_bars, int) and self.formation_bars < need:
            raise ConfigurationError(
                f"formation_bars={self.formation_bars} is too short: the z-score needs {need} "
                "bars of warm-up to be warm on the first trading bar"
            )


# --- Records --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WindowResult:
    """One pair, one rule set, one walk-forward window: formation statistics and the trading
    window's out-of-sample result (USD; returns as fractions, one per trading bar)."""

    long: str
    short: str
    rule_index: int
    window_index: int
    window: WalkForwardWindow
    statistics: PairStatistics
    returns: np.ndarray = field(repr=False, compare=False)
    fills: int
    traded_notional: float
    total_costs: float
    #: Final equity minus initial capital, net of every cost.
    net_pnl: float

    def same_as(self, other: WindowResult) -> bool:
        """Equal in every field, returns included (bit for bit)."""
        return self == other and np.array_equal(self.returns, other.returns)


@dataclass(frozen=True)
class PairResult:
    """A pair and rule set over all its windows (the scan's table row). Sharpes annualised."""

    long: str
    short: str
    rule_index: int
    rule: RuleParameters
    windows: int
    bars: int
    sharpe: float
    sharpe_ci_low: float
    sharpe_ci_high: float
    psr: float
    #: Compounded chained window returns (capital reset each window), fraction.
    total_return: float
    fills: int
    traded_notional: float
    total_costs: float
    #: total_costs / traded_notional (NaN without a fill), fraction.
    cost_share: float
    net_pnl: float
    median_half_life_bars: float
    #: Share of formation windows with Engle-Granger p < COINT_LEVEL.
    share_cointegrated: float
    median_hedge_ratio_stability: float
    #: The chained out-of-sample daily returns (`chained_returns`).
    returns: np.ndarray = field(repr=False, compare=False)
    #: Filled by `rank`: the deflated Sharpe and what it deflated by.
    dsr: float = math.nan
    trials: int = 0
    trial_sharpe_variance: float = math.nan

    @property
    def pair(self) -> str:
        return f"{self.long}/{self.short}"

    def to_row(self) -> dict[str, Any]:
        row = {k: v for k, v in asdict(self).items() if k != "returns"}
        rule = row.pop("rule")
        return {"pair": self.pair, **row, **{f"rule_{k}": v for k, v in rule.items()}}


@dataclass
class ScanResult:
    """Everything a scan computed, pairs ranked by DSR then Sharpe (best first)."""

    settings: ScanSettings
    tickers: tuple[str, ...]
    dates: pd.DatetimeIndex
    windows: list[WalkForwardWindow]
    window_results: list[WindowResult]
    pairs: list[PairResult]
    trial_count: TrialCount

    @property
    def oos_start(self) -> str:
        return str(self.dates[self.windows[0].trading_start].date())

    @property
    def oos_end(self) -> str:
        return str(self.dates[self.windows[-1].trading_stop - 1].date())


# --- The seam -------------------------------------------------------------------------------------
Mapper = Callable[..., list]


def serial_map(
    fn: Callable[..., Any],
    tasks: Sequence[tuple],
    progress: Callable[[int, int], None] | None = None,
) -> list:
    """``[fn(*t) for t in tasks]`` in this process, calling ``progress(done, total)`` after each."""
    out = []
    for i, args in enumerate(tasks):
        out.append(fn(*args))
        if progress is not None:
            progress(i + 1, len(tasks))
    return out


#: Bumped whenever a task function's result for the same inputs changes (the task cache's key).
TASK_VERSION = "scan-1"


def _scan_window_with_shared(shared: dict[str, Any], *args: Any) -> WindowResult:
    """`scan_window` with the price table from the runner's shared inputs (sent once a worker)."""
    return scan_window(shared["prices"], *args)


def runner_mapper(runner: Any, cache: Any = None) -> Mapper:
    """A Mapper over a `task_runner` runner (serial, joblib or Dask): `scan_window`'s price table
    (the partial's bound argument) goes once to each worker as a shared input, every other
    argument is the task's; `cache` (a `task_runner.TaskCache`) keeps finished tasks, so an
    interrupted scan resumes. Results come back in task order: the same as `serial_map`'s."""
    import task_runner as tr

    def mapper(
        fn: Callable[..., Any],
        tasks: Sequence[tuple],
        progress: Callable[[int, int], None] | None = None,
    ) -> list:
        if isinstance(fn, functools.partial) and fn.func is scan_window:
            jobs = [tr.task(_scan_window_with_shared, *t, version=TASK_VERSION) for t in tasks]
            shared: dict[str, Any] | None = {"prices": fn.args[0]}
        else:
            jobs = [tr.task(fn, *t, version=TASK_VERSION) for t in tasks]
            shared = None
        return tr.cached_map(runner, jobs, cache, shared=shared, progress=progress)

    return mapper


# --- Tasks (pure, top-level, picklable) -----------------------------------------------------------
def scan_window(
    prices: pd.DataFrame,
    long: str,
    short: str,
    rule_index: int,
    rule: RuleParameters,
    window_index: int,
    window: WalkForwardWindow,
    config: TradingConfig,
) -> WindowResult:
    """One pair on one window. `prices`: the shared closes (date index, one column per ticker);
    only rows ``[window.formation_start, window.trading_stop)`` are read."""
    rows = prices[[long, short]].iloc[window.formation_start : window.trading_stop]
    logs = np.log(rows.to_numpy("float64"))
    f = window.formation_bars
    stats = pair_statistics(logs[:f, 0], logs[:f, 1])
    spec = ZSCORE_RULES[rule.rule]
    z = spec.zscore(logs[:, 0], logs[:, 1], rule.zscore_bars)[f:]
    states = spec.states(z, rule.entry_z, rule.exit_z)
    # Flat from the bar whose instruction fills on the window's last bar: windows end flat.
    states[max(len(states) - 1 - config.fill_delay_bars, 0) :] = 0.0
    instructions = rule_instructions(states, config.sizing)
    result = run_backtest(
        rows.iloc[f:],
        instructions.weights,
        config,
        label="scan",
        history=rows.iloc[:f],
        log_rejections=False,
        weight_unit="usd" if instructions.per_usd else "equity",
    )
    traded = float(result.trades["notional"].abs().sum()) if len(result.trades) else 0.0
    return WindowResult(
        long=long,
        short=short,
        rule_index=rule_index,
        window_index=window_index,
        window=window,
        statistics=stats,
        returns=result.returns.to_numpy("float64"),
        fills=len(result.trades),
        traded_notional=traded,
        total_costs=float(sum(result.costs.values())),
        net_pnl=float(result.equity["equity"].iloc[-1] - config.initial_capital),
    )


def summarize_pair(rule: RuleParameters, window_results: Sequence[WindowResult]) -> PairResult:
    """A pair's row from its windows (any order; sorted by window here). DSR is left for
    `rank`, which needs every pair's Sharpe."""
    ws = sorted(window_results, key=lambda w: w.window_index)
    returns = chained_returns(ws)
    level, reps, seed = (STATISTICS_METHOD[k] for k in ("level", "reps", "seed"))
    est = pst.estimate_sharpe(returns, level=level, reps=reps, seed=seed)
    traded = sum(w.traded_notional for w in ws)
    costs = sum(w.total_costs for w in ws)
    half_lives = [w.statistics.half_life_bars for w in ws]
    return PairResult(
        long=ws[0].long,
        short=ws[0].short,
        rule_index=ws[0].rule_index,
        rule=rule,
        windows=len(ws),
        bars=int(returns.size),
        sharpe=est.sharpe,
        sharpe_ci_low=est.ci_low,
        sharpe_ci_high=est.ci_high,
        psr=est.psr,
        total_return=float(np.prod(1.0 + returns) - 1.0),
        fills=sum(w.fills for w in ws),
        traded_notional=traded,
        total_costs=costs,
        cost_share=costs / traded if traded > 0 else math.nan,
        net_pnl=sum(w.net_pnl for w in ws),
        median_half_life_bars=float(np.median(half_lives)),
        share_cointegrated=float(np.mean([w.statistics.coint_pvalue < COINT_LEVEL for w in ws])),
        median_hedge_ratio_stability=float(
            np.median([w.statistics.hedge_ratio_stability for w in ws])
        ),
        returns=returns,
    )


def chained_returns(window_results: Sequence[WindowResult]) -> np.ndarray:
    """The windows' daily returns concatenated in window order (the pair's OOS returns)."""
    ws = sorted(window_results, key=lambda w: w.window_index)
    return np.concatenate([w.returns for w in ws]) if ws else np.empty(0)


# --- The scan -------------------------------------------------------------------------------------
def checked_universe(prices: pd.DataFrame, name: str = "universe") -> pd.DataFrame:
    """Closes on the tickers' common dates (rows with any missing price dropped), oldest first;
    ConfigurationError on fewer than 2 tickers, duplicate tickers or dates, or a price that is not
    a positive finite number."""
    if prices.shape[1] < 2:
        raise ConfigurationError(f"{name}: a scan needs at least 2 tickers, got {prices.shape[1]}")
    if prices.columns.duplicated().any():
        dup = prices.columns[prices.columns.duplicated()][0]
        raise ConfigurationError(f"{name}: ticker {dup} appears twice")
    if prices.index.duplicated().any():
        raise ConfigurationError(f"{name}: date {prices.index[prices.index.duplicated()][0]} twice")
    closes = prices.sort_index().astype("float64").dropna(how="any")
    values = closes.to_numpy()
    bad = ~np.isfinite(values) | (values <= 0)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ConfigurationError(
            f"{name}: {closes.columns[j]} on {closes.index[i].date()} is {values[i, j]!r}; "
            "prices must be positive"
        )
    return closes


def universe_pairs(tickers: Sequence[str]) -> list[tuple[str, str]]:
    """Every unordered pair once, (earlier column, later column): n (n - 1) / 2 pairs."""
    return list(itertools.combinations(tickers, 2))


def run_scan(
    prices: pd.DataFrame,
    settings: ScanSettings | None = None,
    config: TradingConfig | None = None,
    *,
    mapper: Mapper = serial_map,
    progress: Callable[[str, int, int], None] | None = None,
) -> ScanResult:
    """Scan every pair of `prices`' columns under every rule set of `settings`; pairs ranked by
    a DSR over this scan's own trials (pairs x rule sets; `rank` again to deflate by more).
    progress(stage, done, total) as tasks finish."""
    settings = settings or ScanSettings()
    config = config or TradingConfig()
    closes = checked_universe(prices)
    windows = walk_forward_windows(len(closes), settings.formation_bars, settings.trading_bars)
    pairs = universe_pairs(list(closes.columns))
    order = {pair: i for i, pair in enumerate(pairs)}
    tasks = [
        (a, b, k, rule, i, w, config)
        for a, b in pairs
        for k, rule in enumerate(settings.rules)
        for i, w in enumerate(windows)
    ]

    def stage(name: str) -> Callable[[int, int], None] | None:
        return None if progress is None else functools.partial(progress, name)

    results = mapper(functools.partial(scan_window, closes), tasks, progress=stage("windows"))
    results = sorted(
        results, key=lambda r: (order[(r.long, r.short)], r.rule_index, r.window_index)
    )
    groups: dict[tuple[str, str, int], list[WindowResult]] = {}
    for r in results:
        groups.setdefault((r.long, r.short, r.rule_index), []).append(r)
    pair_tasks = [(settings.rules[k], groups[(a, b, k)]) for a, b, k in groups]
    rows = mapper(summarize_pair, pair_tasks, progress=stage("statistics"))
    rows = sorted(rows, key=lambda p: (order[(p.long, p.short)], p.rule_index))
    count = TrialCount.of([p.sharpe for p in rows])
    return ScanResult(
        settings=settings,
        tickers=tuple(closes.columns),
        dates=pd.DatetimeIndex(closes.index),
        windows=windows,
        window_results=results,
        pairs=rank(rows, count),
        trial_count=count,
    )


def rank(rows: Sequence[PairResult], count: TrialCount) -> list[PairResult]:
    """Rows with their DSR over `count` (the trials and the variance of their annualised
    Sharpes), best first: by DSR, then Sharpe, descending; NaN last; ties by pair, then rule."""
    import dataclasses

    deflated = [
        dataclasses.replace(
            p,
            dsr=pst.deflated_sharpe_ratio(p.returns, count.trials, count.sharpe_variance),
            trials=count.trials,
            trial_sharpe_variance=count.sharpe_variance,
        )
        for p in rows
    ]
    return sorted(
        deflated,
        key=lambda p: (
            -_finite_or(p.dsr, -math.inf),
            -_finite_or(p.sharpe, -math.inf),
            p.pair,
            p.rule_index,
        ),
    )


def _finite_or(x: float, default: float) -> float:
    return x if math.isfinite(x) else default


# --- The `main.py scan` job: universe in, ledger and results folder out ---------------------------
@dataclass(frozen=True)
class ScanRequest:
    """What the user asked for on the command line."""

    universe: str = "bundled"
    start: str | None = None
    end: str | None = None
    settings: ScanSettings = field(default_factory=ScanSettings)
    config: TradingConfig = field(default_factory=TradingConfig)
    top: int = 20
    write_charts: bool = True


def load_universe(spec: str) -> pd.DataFrame:
    """Closes of `bundled` (the 20 bundled tickers) or `csv:PATH` (a wide CSV: a date column and
    one close column per ticker); ConfigurationError with one line on anything else."""
    if spec == "bundled":
        import process_stock_data as psd

        return psd.load_bundled().close
    if not spec.startswith("csv:") or not spec[4:].strip():
        raise ConfigurationError(f"--universe must be bundled or csv:PATH, not {spec!r}")
    file = Path(spec[4:].strip()).expanduser()
    if not file.is_file():
        raise ConfigurationError(f"universe file {file} not found")
    try:
        raw = pd.read_csv(file)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigurationError(f"universe file {file} is not a readable CSV: {first}") from None
    date_col = next((c for c in raw.columns if str(c).strip().lower() == "date"), None)
    if date_col is None:
        raise ConfigurationError(
            f"universe file {file} has no date column; columns: {', '.join(map(str, raw.columns))}"
        )
    dates = pd.to_datetime(raw[date_col], errors="coerce", format="mixed")
    if dates.isna().any():
        i = int(np.argmax(dates.isna().to_numpy()))
        raise ConfigurationError(
            f"universe file {file}, line {i + 2}: {raw[date_col][i]!r} is not a date"
        )
    closes = raw.drop(columns=[date_col])
    closes.columns = [str(c).strip().upper() for c in closes.columns]
    numeric = closes.apply(pd.to_numeric, errors="coerce")
    bad = numeric.isna() & closes.notna()
    if bad.to_numpy().any():
        i, j = np.argwhere(bad.to_numpy())[0]
        raise ConfigurationError(
            f"universe file {file}, line {i + 2}: {closes.columns[j]} {closes.iat[i, j]!r} is not "
            "a number"
        )
    numeric.index = pd.DatetimeIndex(dates).normalize().rename("date")
    return checked_universe(numeric, f"universe file {file}")


def universe_trials(
    ledger: TrialLedger, pairs: Sequence[tuple[str, str]], start: str, end: str
) -> TrialCount:
    """Distinct scan trials in the ledger on these pairs over exactly start..end (the last record
    of a key wins), with the variance of their Sharpes."""
    wanted = {tuple(p) for p in pairs}
    latest: dict[tuple[Any, ...], float | None] = {}
    for t in ledger:
        if t.kind == TRIAL_KIND and t.pair in wanted and (t.start, t.end) == (start, end):
            latest[(t.pair, *t.key)] = t.sharpe
    return TrialCount.of([s if s is not None else math.nan for s in latest.values()])


def trial_settings(result: ScanResult, rule: RuleParameters, config: TradingConfig) -> dict:
    """Everything besides the pair and dates that decides a scan trial's trades."""
    s = result.settings
    return {
        "config": config.to_dict(),
        "rule": asdict(rule),
        "formation_bars": s.formation_bars,
        "trading_bars": s.trading_bars,
    }


def scan(
    request: ScanRequest,
    *,
    results_dir: str | os.PathLike[str],
    mapper: Mapper = serial_map,
    progress: Callable[[str, int, int], None] | None = None,
    now: datetime | None = None,
) -> tuple[ScanResult, dict[str, Any], Path]:
    """Load the universe, scan it, record one trial per pair x rule set in the trial ledger,
    deflate by the ledger's count, write ``results/scan-<UTC stamp>/``; return the result, the
    summary and the folder. Nothing is written when the input is refused."""
    prices = load_universe(request.universe)
    if request.start:
        prices = prices.loc[pd.Timestamp(request.start) :]
    if request.end:
        prices = prices.loc[: pd.Timestamp(request.end)]
    result = run_scan(prices, request.settings, request.config, mapper=mapper, progress=progress)
    now = now or datetime.now(UTC)
    scan_id = "scan-" + now.strftime("%Y%m%d-%H%M%S")
    ledger = TrialLedger(results_dir)
    bars = len(result.pairs[0].returns)
    for p in sorted(result.pairs, key=lambda p: (p.pair, p.rule_index)):
        ledger.record(
            Trial(
                run_id=scan_id,
                recorded_at=now.isoformat(timespec="seconds"),
                pair=(p.long, p.short),
                start=result.oos_start,
                end=result.oos_end,
                bars=bars,
                kind=TRIAL_KIND,
                source=f"rule:{p.rule.rule}",
                config_hash=config_hash(trial_settings(result, p.rule, request.config)),
                sharpe=p.sharpe if math.isfinite(p.sharpe) else None,
            )
        )
    count = universe_trials(
        ledger, universe_pairs(result.tickers), result.oos_start, result.oos_end
    )
    result.pairs = rank(result.pairs, count)
    result.trial_count = count
    summary = scan_summary(request, result, scan_id, str(ledger.path))
    folder = write_scan_results(results_dir, scan_id, result, summary, request.write_charts)
    summary["run"]["folder"] = str(folder)
    return result, summary, folder


def scan_summary(
    request: ScanRequest, result: ScanResult, scan_id: str, trials_file: str
) -> dict[str, Any]:
    """summary.json: the run, its windows and parameters, the configuration, the trials and the
    top table (JSON-safe: non-finite numbers become null)."""
    s = result.settings
    return _clean(
        {
            "run": {
                "scan_id": scan_id,
                "universe": request.universe,
                "tickers": list(result.tickers),
                "pairs": len(universe_pairs(result.tickers)),
                "first_bar": str(result.dates[0].date()),
                "last_bar": str(result.dates[-1].date()),
                "bars": len(result.dates),
                "oos_start": result.oos_start,
                "oos_end": result.oos_end,
                "windows": len(result.windows),
                "formation_bars": s.formation_bars,
                "trading_bars": s.trading_bars,
                "parameter_sets": [asdict(r) for r in s.rules],
                "windows_end": "flat: a position is closed at each trading window's last close",
                "cost_share": "total costs / gross traded notional",
                "coint_level": COINT_LEVEL,
                "statistics": {**STATISTICS_METHOD, "trials_file": trials_file},
            },
            "trials": {
                "count": result.trial_count.trials,
                "sharpe_variance": result.trial_count.sharpe_variance,
                "this_scan": len(result.pairs),
            },
            "config": request.config.to_dict(),
            "top": [p.to_row() for p in result.pairs[: request.top]],
        }
    )


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN and inf become None, numpy scalars plain numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def pairs_table(result: ScanResult) -> pd.DataFrame:
    """One row per pair x rule set, ranked (pairs.csv, pairs.parquet)."""
    frame = pd.DataFrame([p.to_row() for p in result.pairs])
    frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    return frame


def write_scan_results(
    results_dir: str | os.PathLike[str],
    scan_id: str,
    result: ScanResult,
    summary: dict[str, Any],
    charts: bool = True,
) -> Path:
    """results/<scan-id>/ (pairs.csv, pairs.parquet, summary.json, heatmap.png, heatmap.html),
    written in a hidden temporary folder and renamed when complete."""
    import shutil
    import tempfile

    root = Path(results_dir)
    root.mkdir(parents=True, exist_ok=True)
    name, n = scan_id, 1
    while (root / name).exists():
        n += 1
        name = f"{scan_id}-{n}"
    summary["run"]["scan_id"] = name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.{os.getpid()}.", dir=root))
    try:
        table = pairs_table(result)
        table.to_csv(tmp / "pairs.csv", index=False, float_format="%.6g")
        table.to_parquet(tmp / "pairs.parquet", index=False)
        text = json.dumps(summary, indent=2, allow_nan=False)
        (tmp / "summary.json").write_text(text + "\n")
        if charts:
            _heatmaps(tmp, result)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o755)  # noqa: S103 (mkdtemp makes it 0700; results are for reading)
        os.replace(tmp, root / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root / name


# --- Reading a finished scan back (`scan --adopt`) ------------------------------------------------
SCAN_PREFIX = "scan-"


def _scan_order(folder: Path) -> tuple[str, int]:
    """Sort key of a scan folder: its UTC stamp, then the collision suffix (scan-STAMP-2 after
    scan-STAMP)."""
    parts = folder.name[len(SCAN_PREFIX) :].split("-")
    suffix = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 1
    return ("-".join(parts[:2]), suffix)


def scan_folders(results_dir: str | os.PathLike[str]) -> list[Path]:
    """Finished scans under `results_dir` (``scan-*`` folders with a pairs.csv), newest first.
    Hidden temporary folders of a scan still being written are not finished."""
    root = Path(results_dir)
    if not root.is_dir():
        return []
    found = [
        d
        for d in root.iterdir()
        if d.is_dir() and d.name.startswith(SCAN_PREFIX) and (d / "pairs.csv").is_file()
    ]
    return sorted(found, key=_scan_order, reverse=True)


@dataclass(frozen=True)
class ScannedPair:
    """A pair's row of a finished scan (its best-ranked parameter set); Sharpes annualised."""

    scan_id: str
    rank: int
    #: As scanned, "A/B" (A the long leg when buying the spread); may be the reverse of the ask.
    pair: str
    sharpe: float
    sharpe_ci_low: float
    sharpe_ci_high: float
    psr: float
    dsr: float
    #: Scan trials the DSR is deflated by.
    trials: int
    pairs_scanned: int


def scanned_pair(folder: str | os.PathLike[str], long: str, short: str) -> ScannedPair | None:
    """`long`/`short`'s row in the scan at `folder` (or that of short/long, the same pair the
    other way round), None when the scan did not cover it; DataError if pairs.csv is unreadable."""
    folder = Path(folder)
    file = folder / "pairs.csv"
    try:
        table = pd.read_csv(file)
        keys = table["pair"].astype(str).str.upper()
    except (OSError, KeyError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(
            f"{file} is unreadable ({type(exc).__name__}): run the scan again"
        ) from None
    wanted = (f"{long}/{short}".upper(), f"{short}/{long}".upper())
    rows = table[keys.isin(wanted)]
    if rows.empty:
        return None
    row = rows.sort_values("rank").iloc[0] if "rank" in rows else rows.iloc[0]
    return ScannedPair(
        scan_id=folder.name,
        rank=int(row.get("rank", 0)),
        pair=str(row["pair"]),
        sharpe=float(row["sharpe"]),
        sharpe_ci_low=float(row["sharpe_ci_low"]),
        sharpe_ci_high=float(row["sharpe_ci_high"]),
        psr=float(row["psr"]),
        dsr=float(row["dsr"]),
        trials=int(row["trials"]),
        pairs_scanned=len(table),
    )


def sharpe_matrix(result: ScanResult) -> pd.DataFrame:
    """Ticker x ticker OOS Sharpe (symmetric; the best rule set's row by rank when several;
    NaN on the diagonal)."""
    tickers = list(result.tickers)
    m = pd.DataFrame(np.nan, index=tickers, columns=tickers)
    for p in reversed(result.pairs):  # best last: it wins
        m.loc[p.long, p.short] = m.loc[p.short, p.long] = p.sharpe
    return m


def _heatmaps(folder: Path, result: ScanResult) -> None:
    """heatmap.png (matplotlib) and heatmap.html (plotly) of `sharpe_matrix`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go

    m = sharpe_matrix(result)
    title = f"OOS Sharpe by pair, {result.oos_start} .. {result.oos_end}"
    values = m.to_numpy()
    finite = values[np.isfinite(values)]
    lim = max(float(np.abs(finite).max()) if finite.size else 1.0, 1e-9)
    size = max(5.0, 0.45 * len(m))
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(values, cmap="RdYlGn", vmin=-lim, vmax=lim)
    ax.set_xticks(range(len(m)), m.columns, rotation=90)
    ax.set_yticks(range(len(m)), m.index)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="annualised Sharpe (out of sample)")
    fig.tight_layout()
    fig.savefig(folder / "heatmap.png", dpi=110)
    plt.close(fig)
    pfig = go.Figure(
        go.Heatmap(
            z=values,
            x=list(m.columns),
            y=list(m.index),
            colorscale="RdYlGn",
            zmin=-lim,
            zmax=lim,
            colorbar={"title": "OOS Sharpe"},
        )
    )
    pfig.update_layout(title=title, yaxis={"autorange": "reversed"})
    pfig.write_html(folder / "heatmap.html", include_plotlyjs=True, full_html=True)
