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

Models (`--models N`, `run_models`): for the top N pairs by rank, one `pair_models` task each
builds the pair's features from the shared closes (`process_stock_data.compute_features`, causal)
and scores XGBoost walk-forward over the out-of-sample span, cut into `ModelSettings.folds` test
blocks at trading-window boundaries; block k's model trains only on rows before its first row less
the label's one bar (`train_model.score_test_blocks`), so no scored bar was trained on, and
cutting the data after a block's last label leaves that block's scores unchanged. XGBoost is
seeded and single-threaded inside a task: scores are bit-identical on every backend.

The seam for a task runner: `run_scan(..., mapper=...)` calls ``mapper(fn, tasks, progress=cb)``
once (and `run_models` once more), where `fn` is ``functools.partial(<task function>, <shared
table>)`` (`fn.func` and `fn.args` give both; `scan_pair`: one task per pair x rule set, all its
windows and its row) and `tasks` a list of argument tuples; it must return
``[fn(*t) for t in tasks]`` in the same order and call ``cb(done, total)`` as tasks finish.
`serial_map` is the in-process default.
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
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

import performance_stats as pst
from atomic_io import json_safe, write_folder
from backtest_strategy import STATISTICS_METHOD as BACKTEST_STATISTICS
from backtest_strategy import ZSCORE_RULES, run_backtest
from error_handling import ConfigurationError, DataError
from pair_engine import TradingConfig, rule_instructions
from pair_selection import (
    COINT_LAGS,
    FORMATION_BARS,
    TRADING_BARS,
    PairStatistics,
    WalkForwardWindow,
    pair_statistics,
    walk_forward_windows,
)
from trial_ledger import Trial, TrialCount, TrialLedger, config_hash, count_trials

if TYPE_CHECKING:
    from train_model import TrainConfig

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
    #: The Engle–Granger test's ADF lags (`pair_selection.coint_pvalue`): fixed1 or aic. Only
    #: the formation statistics (the coint column) depend on it, never the trades.
    coint_lags: str = "fixed1"

    def __post_init__(self) -> None:
        if self.coint_lags not in COINT_LAGS:
            raise ConfigurationError(
                f"--coint-lags must be one of {', '.join(COINT_LAGS)}, not {self.coint_lags!r}"
            )
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
    #: Filled by `run_models` (`--models N`): the top pairs' walk-forward model scores.
    models: dict[tuple[str, str], PairModelResult] = field(default_factory=dict)
    model_settings: ModelSettings | None = None
    #: The models' test blocks ``[start, stop)`` (row positions of `dates`), oldest first.
    model_blocks: tuple[tuple[int, int], ...] = ()

    @property
    def oos_start(self) -> str:
        return str(self.dates[self.windows[0].trading_start].date())

    @property
    def oos_end(self) -> str:
        return str(self.dates[self.windows[-1].trading_stop - 1].date())


# --- Models on the top pairs (`--models N`) -------------------------------------------------------
#: The model kinds `--models` can train (the LSTM is `main.py train`'s only).
SCAN_MODEL_KINDS = ("xgb",)


def _default_train_config() -> TrainConfig:
    import train_model as tm

    return tm.TrainConfig(models=("xgb",))


@dataclass(frozen=True)
class ModelSettings:
    """How `--models` trains and scores each top pair: expanding-window walk-forward over the
    scan's out-of-sample span cut into `folds` test blocks at trading-window boundaries."""

    kind: str = "xgb"
    #: Test blocks (each a run of consecutive trading windows); one fit per block.
    folds: int = 10
    #: A block whose model would see fewer training rows is not scored.
    min_train_rows: int = 100
    #: XGBoost's trees, depth, learning rate and seed: `main.py train`'s defaults.
    train: TrainConfig = field(default_factory=_default_train_config)

    def __post_init__(self) -> None:
        if self.kind not in SCAN_MODEL_KINDS:
            raise ConfigurationError(
                f"scan models must be one of {', '.join(SCAN_MODEL_KINDS)}: {self.kind}"
            )
        if isinstance(self.folds, bool) or not (isinstance(self.folds, int) and self.folds >= 1):
            raise ConfigurationError(f"model folds must be a whole number >= 1: {self.folds}")

    def describe(self) -> dict[str, Any]:
        """summary.json's text of the method."""
        t = self.train
        return {
            "method": "walk-forward, expanding window: each test block's model trains only on "
            "rows before the block less one label bar (the label is the next bar's spread "
            "return sign); pooled out-of-sample AUC with its DeLong 95 % interval, accuracy "
            "with its one-sided binomial p against the scored rows' majority rate",
            "kind": self.kind,
            "features": "23 causal features of the pair's closes (process_stock_data, no volume)",
            "min_train_rows": self.min_train_rows,
            "xgb": {
                "trees": t.xgb_trees,
                "depth": t.xgb_depth,
                "learning_rate": t.xgb_learning_rate,
                "seed": t.seed,
                "n_jobs": 1,
            },
        }


@dataclass(frozen=True)
class ModelFold:
    """One scored test block: training rows (all dated <= train_end) and the scored bars."""

    number: int
    train_rows: int
    train_end: str
    test_start: str
    test_end: str
    bars: int


@dataclass(frozen=True)
class PairModelResult:
    """A pair's walk-forward model scores over the scan's out-of-sample span, pooled over folds.
    Probabilities are P(long leg beats short leg over the next bar)."""

    long: str
    short: str
    kind: str
    folds: tuple[ModelFold, ...]
    auc: float
    auc_ci_low: float
    auc_ci_high: float
    accuracy: float
    accuracy_p: float
    majority_rate: float
    scored_bars: int
    dates: np.ndarray = field(repr=False, compare=False)
    prob: np.ndarray = field(repr=False, compare=False)

    @property
    def pair(self) -> str:
        return f"{self.long}/{self.short}"

    def same_as(self, other: PairModelResult) -> bool:
        """Equal in every field, dates and probabilities included (bit for bit)."""
        return (
            self == other
            and np.array_equal(self.dates, other.dates)
            and np.array_equal(self.prob, other.prob)
        )

    def columns(self) -> dict[str, float]:
        """The pairs table's model columns (`MODEL_COLUMNS`)."""
        return {
            f"{self.kind}_auc": self.auc,
            f"{self.kind}_auc_ci_low": self.auc_ci_low,
            f"{self.kind}_auc_ci_high": self.auc_ci_high,
            f"{self.kind}_accuracy": self.accuracy,
            f"{self.kind}_accuracy_p": self.accuracy_p,
            f"{self.kind}_scored_bars": self.scored_bars,
        }


#: Columns `--models` adds to pairs.csv/parquet (NaN on pairs it did not score).
MODEL_COLUMNS = (
    "xgb_auc",
    "xgb_auc_ci_low",
    "xgb_auc_ci_high",
    "xgb_accuracy",
    "xgb_accuracy_p",
    "xgb_scored_bars",
)


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
TASK_VERSION = "scan-2"


def _table_task(shared: dict[str, Any], name: str, *args: Any) -> Any:
    """``fn(table, *args)`` with the price table from the runner's shared inputs (sent once a
    worker); `name` (``module:function``) names a top-level task function."""
    import importlib

    module, _, function = name.partition(":")
    fn = functools.reduce(getattr, function.split("."), importlib.import_module(module))
    return fn(shared["prices"], *args)


def runner_mapper(runner: Any, cache: Any = None) -> Mapper:
    """A Mapper over a `task_runner` runner (serial, joblib or Dask). A task function given as
    ``functools.partial(fn, table)`` (`scan_window`, `pair_models`,
    `parameter_sweep.model_window`: top-level functions whose first argument is the price table)
    gets its table once per worker as a shared input; every other argument is the task's.
    `cache` (a `task_runner.TaskCache`) keeps finished tasks, so an interrupted run resumes.
    Results come back in task order, as `serial_map`'s."""
    import task_runner as tr

    def mapper(
        fn: Callable[..., Any],
        tasks: Sequence[tuple],
        progress: Callable[[int, int], None] | None = None,
    ) -> list:
        if isinstance(fn, functools.partial) and len(fn.args) == 1 and not fn.keywords:
            tr.function_name(fn.func)  # refuses a lambda or a nested function
            name = f"{fn.func.__module__}:{fn.func.__qualname__}"
            jobs = [tr.task(_table_task, name, *t, version=TASK_VERSION) for t in tasks]
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
    coint_lags: str = "fixed1",
) -> WindowResult:
    """One pair on one window. `prices`: the shared closes (date index, one column per ticker);
    only rows ``[window.formation_start, window.trading_stop)`` are read."""
    rows = prices[[long, short]].iloc[window.formation_start : window.trading_stop]
    logs = np.log(rows.to_numpy("float64"))
    f = window.formation_bars
    stats = pair_statistics(logs[:f, 0], logs[:f, 1], coint_lags)
    spec = ZSCORE_RULES[rule.rule]
    z = spec.zscore(logs[:, 0], logs[:, 1], rule.zscore_bars)[f:]
    states = end_flat(spec.states(z, rule.entry_z, rule.exit_z), config.fill_delay_bars)
    instructions = rule_instructions(states, config.sizing)
    result = run_backtest(
        rows.iloc[f:],
        instructions.weights,
        config,
        label="scan",
        history=rows.iloc[:f],
        log_rejections=False,
        weight_unit="usd" if instructions.per_usd else "equity",
        engine="compiled",  # thousands of short runs: load the compiled loop once per process
    )
    return window_result(
        long, short, rule_index, window_index, window, stats, result, config.initial_capital
    )


def end_flat(instructions: np.ndarray, fill_delay_bars: int) -> np.ndarray:
    """`instructions` (states or weights, one row per trading bar) set to flat from the bar
    whose instruction fills on the window's last bar, so every window ends flat (in place)."""
    instructions[max(len(instructions) - 1 - fill_delay_bars, 0) :] = 0.0
    return instructions


def window_result(
    long: str,
    short: str,
    index: int,
    window_index: int,
    window: WalkForwardWindow,
    statistics: PairStatistics,
    result: Any,
    initial_capital: float,
) -> WindowResult:
    """The record of one window from its engine run (`backtest_strategy.BacktestResult`)."""
    return WindowResult(
        long=long,
        short=short,
        rule_index=index,
        window_index=window_index,
        window=window,
        statistics=statistics,
        returns=result.returns.to_numpy("float64"),
        fills=result.fill_count,
        traded_notional=result.traded_notional(),
        total_costs=float(sum(result.costs.values())),
        net_pnl=float(result.equity["equity"].iloc[-1] - initial_capital),
    )


def scan_pair(
    prices: pd.DataFrame,
    long: str,
    short: str,
    rule_index: int,
    rule: RuleParameters,
    windows: tuple[WalkForwardWindow, ...],
    config: TradingConfig,
    coint_lags: str = "fixed1",
) -> tuple[PairResult, tuple[WindowResult, ...]]:
    """One pair under one rule set: every window (`scan_window`, window i = ``windows[i]``), then
    its row (`summarize_pair`). The scan's task: one per pair x rule set, so a task is about a
    second of work and the runner's per-task cost (keys, pickling, scheduling) stays small."""
    results = tuple(
        scan_window(prices, long, short, rule_index, rule, i, w, config, coint_lags)
        for i, w in enumerate(windows)
    )
    return summarize_pair(rule, results), results


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


def pair_models(
    prices: pd.DataFrame,
    long: str,
    short: str,
    blocks: tuple[tuple[int, int], ...],
    settings: ModelSettings,
) -> PairModelResult:
    """Walk-forward model scores of one pair. `prices`: the shared closes; `blocks`: test blocks
    ``[start, stop)`` of row positions, oldest first. Features (`process_stock_data`, closes only)
    at bar t use rows <= t; the label of bar t is the sign of the next bar's spread return, so
    rows up to the last block's stop (inclusive, for that label) are read and nothing later.
    Block k's model trains on rows < start_k - 1 only (`train_model.score_test_blocks`)."""
    import constants as C
    import process_stock_data as psd
    import train_model as tm

    stop = min(len(prices), blocks[-1][1] + tm.LABEL_HORIZON_BARS)
    close = prices[[long, short]].iloc[:stop].astype("float64")
    features = psd.compute_features(close, long, short)
    labeled = psd.add_label(features, close, long, short)
    label = labeled[C.LABEL_COLUMN].to_numpy("float64")
    usable = features.notna().all(axis=1).to_numpy() & np.isfinite(label)
    x = features.to_numpy("float64")
    y = np.where(np.isfinite(label), label, 0).astype("int64")
    scored = tm.score_test_blocks(
        x,
        y,
        usable,
        [tm.Split(a, b) for a, b in blocks],
        settings.train,
        min_train_rows=settings.min_train_rows,
        n_jobs=1,
    )
    dates = close.index
    folds = tuple(
        ModelFold(
            number=b.number,
            train_rows=b.train_rows,
            train_end=str(dates[np.flatnonzero(usable[: b.train_stop])[-1]].date()),
            test_start=str(dates[b.rows[0]].date()),
            test_end=str(dates[b.rows[-1]].date()),
            bars=len(b.rows),
        )
        for b in scored
    )
    rows = np.concatenate([b.rows for b in scored]) if scored else np.empty(0, "int64")
    prob = np.concatenate([b.prob for b in scored]) if scored else np.empty(0)
    nan = math.nan
    m: dict[str, Any] = {}
    if rows.size:
        m = tm.classification_metrics(
            y[rows], prob, labeled[C.NEXT_SPREAD_RETURN_COLUMN].to_numpy("float64")[rows]
        )
    ci = m.get("roc_auc_ci_95", [nan, nan])
    return PairModelResult(
        long=long,
        short=short,
        kind=settings.kind,
        folds=folds,
        auc=float(m.get("roc_auc", nan)),
        auc_ci_low=float(ci[0]),
        auc_ci_high=float(ci[1]),
        accuracy=float(m.get("accuracy", nan)),
        accuracy_p=float(m.get("accuracy_p_value", nan)),
        majority_rate=float(m.get("majority_rate", nan)),
        scored_bars=int(rows.size),
        dates=dates[rows].to_numpy(),
        prob=prob,
    )


def model_blocks(windows: Sequence[WalkForwardWindow], folds: int) -> tuple[tuple[int, int], ...]:
    """The scan's trading windows cut into `folds` runs of consecutive windows (fewer when there
    are fewer windows), each one test block ``(first trading_start, last trading_stop)``."""
    groups = np.array_split(np.arange(len(windows)), min(folds, len(windows)))
    return tuple(
        (windows[int(g[0])].trading_start, windows[int(g[-1])].trading_stop) for g in groups
    )


def top_pairs(result: ScanResult, n: int) -> list[tuple[str, str]]:
    """The first `n` distinct (long, short) pairs in rank order."""
    out: list[tuple[str, str]] = []
    for p in result.pairs:
        if (p.long, p.short) not in out:
            out.append((p.long, p.short))
    return out[:n]


def run_models(
    prices: pd.DataFrame,
    result: ScanResult,
    n: int,
    settings: ModelSettings | None = None,
    *,
    mapper: Mapper = serial_map,
    progress: Callable[[str, int, int], None] | None = None,
) -> ScanResult:
    """Train and walk-forward-score models for the top `n` pairs of `result` (one `pair_models`
    task per pair, through `mapper`); fills and returns `result.models`. `prices`: the closes
    the scan ran on (`checked_universe` is applied again)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigurationError(f"--models must be a whole number >= 1, not {n!r}")
    settings = settings or ModelSettings()
    closes = checked_universe(prices)
    if not closes.index.equals(result.dates):
        raise ConfigurationError("the prices are not the ones this scan ran on")
    blocks = model_blocks(result.windows, settings.folds)
    tasks = [(a, b, blocks, settings) for a, b in top_pairs(result, n)]
    cb = None if progress is None else functools.partial(progress, "models")
    scores = mapper(functools.partial(pair_models, closes), tasks, progress=cb)
    result.models = {(m.long, m.short): m for m in scores}
    result.model_settings = settings
    result.model_blocks = blocks
    return result


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
    import constants as C

    closes = prices.sort_index().astype("float64").dropna(how="any")
    values = closes.to_numpy()
    bad = ~np.isfinite(values) | (values <= 0)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ConfigurationError(
            f"{name}: {closes.columns[j]} on {closes.index[i].date()} is {values[i, j]!r}; "
            "prices must be positive"
        )
    absurd = (values < C.MIN_CLOSE_USD) | (values > C.MAX_CLOSE_USD)
    if absurd.any():
        i, j = np.argwhere(absurd)[0]
        raise ConfigurationError(
            f"{name}: {closes.columns[j]} on {closes.index[i].date()} is {values[i, j]:g}, "
            f"outside the sane range {C.MIN_CLOSE_USD:g}-{C.MAX_CLOSE_USD:g} USD"
        )
    return closes


def requested_dates(
    frame: pd.DataFrame, start: str | None, end: str | None, name: str
) -> pd.DataFrame:
    """The rows of `frame` (a date index, oldest first) from `start` to `end` inclusive;
    ConfigurationError naming the date when the range lies wholly outside the data, rather
    than "0 bars" further down."""
    first, last = frame.index[0].date(), frame.index[-1].date()
    if start and pd.Timestamp(start) > frame.index[-1]:
        raise ConfigurationError(f"--start {start} is after the last date of {name} ({last})")
    if end and pd.Timestamp(end) < frame.index[0]:
        raise ConfigurationError(f"--end {end} is before the first date of {name} ({first})")
    lo = frame.index.searchsorted(pd.Timestamp(start)) if start else 0
    hi = frame.index.searchsorted(pd.Timestamp(end), side="right") if end else len(frame)
    return frame.iloc[lo:hi]


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
    pairs: Sequence[tuple[str, str]] | None = None,
) -> ScanResult:
    """Scan every pair of `prices`' columns (or only `pairs`) under every rule set of
    `settings`; pairs ranked by a DSR over this scan's own trials (pairs x rule sets; `rank`
    again to deflate by more). One task per pair x rule set (`scan_pair`); progress("pairs",
    done, total) as they finish."""
    settings = settings or ScanSettings()
    config = config or TradingConfig()
    closes = checked_universe(prices)
    windows = walk_forward_windows(len(closes), settings.formation_bars, settings.trading_bars)
    pairs = universe_pairs(list(closes.columns)) if pairs is None else list(pairs)
    tasks = [
        (a, b, k, rule, tuple(windows), config, settings.coint_lags)
        for a, b in pairs
        for k, rule in enumerate(settings.rules)
    ]
    cb = None if progress is None else functools.partial(progress, "pairs")
    done = mapper(functools.partial(scan_pair, closes), tasks, progress=cb)
    # In (pair, rule set) order whatever order a mapper hands them back in.
    order = {pair: i for i, pair in enumerate(pairs)}
    done = sorted(done, key=lambda d: (order[(d[0].long, d[0].short)], d[0].rule_index))
    rows = [row for row, _ in done]
    results = [w for _, windows_of_pair in done for w in windows_of_pair]
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
    #: Train and walk-forward-score models for this many top pairs (0: none).
    models: int = 0
    model_settings: ModelSettings = field(default_factory=ModelSettings)


def load_universe(spec: str) -> pd.DataFrame:
    """Closes of `bundled` (the 20 bundled tickers) or `csv:PATH` (a wide CSV: a date column and
    one close column per ticker); ConfigurationError with one line on anything else."""
    import constants as C

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
    for ticker in closes.columns:
        try:
            C.validate_symbol(ticker)
        except ConfigurationError as exc:
            raise ConfigurationError(f"universe file {file}, column {ticker!r}: {exc}") from None
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
    ledger: TrialLedger,
    pairs: Sequence[tuple[str, str]],
    start: str,
    end: str,
    *,
    now: str | None = None,
) -> TrialCount:
    """Distinct scan trials in the ledger on these pairs over exactly start..end (the last record
    of a key wins), with the variance of their Sharpes, as of `now`."""
    return count_trials(ledger, pairs, start, end, TRIAL_KIND, now=now)


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
    prices = requested_dates(prices, request.start, request.end, f"{request.universe} universe")
    result = run_scan(prices, request.settings, request.config, mapper=mapper, progress=progress)
    now = now or datetime.now(UTC)
    scan_id = "scan-" + now.strftime("%Y%m%d-%H%M%S")
    ledger = TrialLedger(results_dir)
    recorded_at = now.isoformat(timespec="seconds")
    for p in sorted(result.pairs, key=lambda p: (p.pair, p.rule_index)):
        ledger.record(
            Trial.of_returns(
                p.returns,
                run_id=scan_id,
                recorded_at=recorded_at,
                pair=(p.long, p.short),
                start=result.oos_start,
                end=result.oos_end,
                kind=TRIAL_KIND,
                source=f"rule:{p.rule.rule}",
                config_hash=config_hash(trial_settings(result, p.rule, request.config)),
            )
        )
    count = universe_trials(
        ledger, universe_pairs(result.tickers), result.oos_start, result.oos_end, now=recorded_at
    )
    result.pairs = rank(result.pairs, count)
    result.trial_count = count
    if request.models:
        run_models(
            prices,
            result,
            request.models,
            request.model_settings,
            mapper=mapper,
            progress=progress,
        )
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
    return json_safe(
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
                "coint_lags": s.coint_lags,
                "statistics": {**STATISTICS_METHOD, "trials_file": trials_file},
            },
            "trials": {
                "count": result.trial_count.trials,
                "as_of": result.trial_count.as_of,
                "sharpe_variance": result.trial_count.sharpe_variance,
                "this_scan": len(result.pairs),
            },
            "config": request.config.to_dict(),
            "top": [_row_with_models(result, p) for p in result.pairs[: request.top]],
            **({"models": models_summary(result)} if result.model_settings else {}),
        }
    )


def models_summary(result: ScanResult) -> dict[str, Any]:
    """summary.json's `models`: the method, its folds, and each scored pair's figures."""
    assert result.model_settings is not None
    dates = result.dates
    return {
        **result.model_settings.describe(),
        "folds_requested": result.model_settings.folds,
        "folds": len(result.model_blocks),
        "test_blocks": [
            {"start": str(dates[a].date()), "end": str(dates[b - 1].date())}
            for a, b in result.model_blocks
        ],
        "oos_start": result.oos_start,
        "oos_end": result.oos_end,
        "pairs_scored": len(result.models),
        "pairs": [
            {
                "pair": m.pair,
                **m.columns(),
                "majority_rate": m.majority_rate,
                "folds": [asdict(f) for f in m.folds],
            }
            for m in result.models.values()
        ],
    }


def _row_with_models(result: ScanResult, p: PairResult) -> dict[str, Any]:
    """`p.to_row()`, with the MODEL_COLUMNS (NaN when the pair was not scored) after `--models`."""
    row = p.to_row()
    if result.model_settings is not None:
        m = result.models.get((p.long, p.short))
        row.update(m.columns() if m else dict.fromkeys(MODEL_COLUMNS, math.nan))
    return row


def pairs_table(result: ScanResult) -> pd.DataFrame:
    """One row per pair x rule set, ranked (pairs.csv, pairs.parquet)."""
    frame = pd.DataFrame([_row_with_models(result, p) for p in result.pairs])
    frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    if "xgb_scored_bars" in frame:  # a count, empty where no model scored the pair
        frame["xgb_scored_bars"] = frame["xgb_scored_bars"].astype("Int64")
    return frame


def write_scan_results(
    results_dir: str | os.PathLike[str],
    scan_id: str,
    result: ScanResult,
    summary: dict[str, Any],
    charts: bool = True,
) -> Path:
    """results/<scan-id>/ (pairs.csv, pairs.parquet, summary.json, heatmap.png, heatmap.html),
    written whole or not at all (`atomic_io.write_folder`)."""

    def write(folder: Path, name: str) -> None:
        summary["run"]["scan_id"] = name
        table = pairs_table(result)
        table.to_csv(folder / "pairs.csv", index=False, float_format="%.6g")
        table.to_parquet(folder / "pairs.parquet", index=False)
        text = json.dumps(summary, indent=2, allow_nan=False)
        (folder / "summary.json").write_text(text + "\n")
        if charts:
            _heatmaps(folder, result)

    return write_folder(results_dir, scan_id, write)


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
    #: When those trials were counted (UTC ISO; the scan's own time, from its folder's name).
    trials_as_of: str | None = None


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
        trials_as_of=_scan_time(folder.name),
    )


def _scan_time(scan_id: str) -> str | None:
    """The UTC time in a `scan-YYYYmmdd-HHMMSS` folder name, ISO 8601; None for another name."""
    try:
        stamp = datetime.strptime(scan_id[len("scan-") :][:15], "%Y%m%d-%H%M%S")
    except ValueError:
        return None
    return stamp.replace(tzinfo=UTC).isoformat(timespec="seconds")


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
