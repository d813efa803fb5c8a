"""Walk-forward parameter sweep of one pair: choose on the past, trade the next window, report only
what was traded out of sample.

A sweep tries a grid of parameter sets ("candidates") on one pair: z-score rule sets
(`pair_scan.RuleParameters`: entry z, exit z, look-back) or, for a trained model, signal
thresholds and the Kelly fraction (`ModelParameters`). Every candidate is traded on every
walk-forward trading window through the backtest engine, exactly as `main.py scan` trades a
window (`pair_scan.scan_window`, or `model_window` for a model: the same engine, costs, risk gate,
and flat at each window's end). Then, per window i from `train_windows` on:

- **Choice** (in sample): each candidate's score is the annualised Sharpe of its daily returns
  over the `train_windows` trading windows before i (each of them traded out of sample of its own
  formation window; non-finite, e.g. never traded, counts as 0); the highest score wins, ties to the
  earlier candidate in grid order.
- **Trading** (out of sample): the chosen candidate's returns on window i. Those windows' returns,
  chained in date order, are the sweep's reported returns and equity: a window used to choose is
  never reported as the result of that choice, and windows 0 .. train_windows-1 are training only.

**No lookahead.** Window i's choice reads results of windows whose trading rows end at or before
window i's first trading row; each of those reads rows before its own trading stop only
(`pair_scan.scan_window`). A model's probabilities are scored only on bars after the model's
training and validation range (`backtest_strategy.model_probabilities`).

**Deflation.** Every candidate is one trial (kind "sweep") in the trial ledger, with its Sharpe as
a fixed choice over the same reported windows; the walk-forward returns' DSR deflates by the
distinct sweep trials on the pair and those dates (on a fresh ledger: the grid's size) and the
variance of their Sharpes.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import performance_stats as pst
from atomic_io import json_safe, write_folder
from backtest_strategy import run_backtest
from error_handling import ConfigurationError
from pair_engine import TradingConfig, model_weights
from pair_scan import STATISTICS_METHOD as SCAN_STATISTICS
from pair_scan import (
    Mapper,
    RuleParameters,
    WindowResult,
    end_flat,
    requested_dates,
    scan_window,
    serial_map,
    window_result,
)
from pair_selection import TRADING_BARS, WalkForwardWindow, pair_statistics, walk_forward_windows
from signals import Thresholds
from trial_ledger import Trial, TrialCount, TrialLedger, config_hash

TRIAL_KIND = "sweep"
#: Trading windows whose results choose the next window's candidate (4 x 63 bars: one year).
TRAIN_WINDOWS = 4
STATISTICS_METHOD: dict[str, Any] = {
    **SCAN_STATISTICS,
    "dsr": "Bailey & Lopez de Prado 2014, over the sweep trials in trials.jsonl on the pair and "
    "the same out-of-sample dates (one per candidate parameter set)",
}
#: Grid keys of a rule sweep and of a model sweep, with their command-line names.
RULE_KEYS = {"entry_z": "entry_z", "exit_z": "exit_z", "lookback": "zscore_bars"}
MODEL_KEYS = {"buy": "buy", "sell": "sell", "kelly": "kelly_fraction"}
DEFAULT_RULE_GRID = {"entry_z": "1.5,2,2.5", "exit_z": "0,0.5", "lookback": "40,60"}
DEFAULT_MODEL_GRID = {"buy": "0.55,0.6", "sell": "0.4,0.45", "kelly": "0.25,0.5,1"}


@dataclass(frozen=True)
class GridRange:
    """The values one grid key may take on its own: low..high, each end open or closed; `whole`
    for a count of bars. Rules between keys (exit_z < entry_z, sell <= buy) are the sets' own."""

    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = True
    whole: bool = False

    def allows(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below and (not self.whole or value == int(value))

    def describe(self, name: str) -> str:
        """``0 < kelly <= 1``, ``lookback a whole number >= 3``."""
        if self.whole:
            return f"{name} a whole number >= {self.low:g}"
        low = f"{self.low:g} {'<' if self.low_open else '<='} "
        high = "" if math.isinf(self.high) else f" {'<' if self.high_open else '<='} {self.high:g}"
        return f"{low}{name}{high}"


#: Per grid key, what each of its values may be (the sets' own rules: `RuleParameters`,
#: `ModelParameters` and `signals.Thresholds`).
GRID_RANGES: dict[str, GridRange] = {
    "entry_z": GridRange(0.0, low_open=True),
    "exit_z": GridRange(0.0),
    "lookback": GridRange(3, whole=True),
    "buy": GridRange(0.0, 1.0, low_open=True),
    "sell": GridRange(0.0, 1.0, low_open=True),
    "kelly": GridRange(0.0, 1.0, low_open=True, high_open=False),
}


@dataclass(frozen=True)
class ModelParameters:
    """One parameter set of a model's signals: thresholds on P(long beats short) and the Kelly
    fraction that sizes each leg (`pair_engine.signal_weights`)."""

    #: Buy the spread when the probability is at or above this.
    buy: float = 0.55
    #: Sell the spread when it is at or below this.
    sell: float = 0.45
    #: Fraction of the full Kelly bet per leg (capped by the sizing's max leg fraction).
    kelly_fraction: float = 0.5

    def __post_init__(self) -> None:
        Thresholds(buy=self.buy, sell=self.sell)  # refuses sell > buy or values outside (0, 1)
        if not (math.isfinite(self.kelly_fraction) and 0 < self.kelly_fraction <= 1):
            raise ConfigurationError(f"kelly must be in (0, 1], got {self.kelly_fraction}")

    @property
    def label(self) -> str:
        """Short text for tables: ``buy 0.55 sell 0.45 kelly 0.5``."""
        return f"buy {self.buy:g} sell {self.sell:g} kelly {self.kelly_fraction:g}"


Candidate = RuleParameters | ModelParameters


@dataclass(frozen=True)
class SweepSettings:
    """The grid and the walk-forward windows of a sweep."""

    candidates: tuple[Candidate, ...]
    formation_bars: int = 252
    trading_bars: int = TRADING_BARS
    train_windows: int = TRAIN_WINDOWS

    def __post_init__(self) -> None:
        if not self.candidates:
            raise ConfigurationError("a sweep needs at least one parameter set")
        if len({type(c) for c in self.candidates}) > 1:
            raise ConfigurationError("a grid is either rule sets or model sets, not both")
        if len(set(self.candidates)) != len(self.candidates):
            raise ConfigurationError("the same parameter set is given twice")
        if isinstance(self.train_windows, bool) or not (
            isinstance(self.train_windows, int) and self.train_windows >= 1
        ):
            raise ConfigurationError(
                f"train windows must be a whole number >= 1: {self.train_windows}"
            )
        rules = [c for c in self.candidates if isinstance(c, RuleParameters)]
        need = max((r.warmup_bars for r in rules), default=0)
        if self.formation_bars < need:
            raise ConfigurationError(
                f"formation_bars={self.formation_bars} is too short: a look-back of "
                f"{max(r.zscore_bars for r in rules)} needs {need} bars of warm-up"
            )

    @property
    def is_model(self) -> bool:
        return isinstance(self.candidates[0], ModelParameters)


# --- The grid -------------------------------------------------------------------------------------
def parse_grid(
    items: Sequence[str] | None, *, model: bool, rule: str = "current"
) -> tuple[tuple[Candidate, ...], int]:
    """(candidates in grid order, combinations skipped as invalid) from ``KEY=V1,V2`` items; keys
    missing from `items` take the default grid's values. Rule keys: entry_z, exit_z, lookback;
    model keys: buy, sell, kelly. A value outside its key's GRID_RANGES is refused, naming it; a
    combination that breaks a set's own rule (exit_z >= entry_z, sell > buy) is skipped;
    ConfigurationError if nothing is left or on a malformed item."""
    keys, defaults = (MODEL_KEYS, DEFAULT_MODEL_GRID) if model else (RULE_KEYS, DEFAULT_RULE_GRID)
    given: dict[str, str] = {}
    for item in items or ():
        name, sep, values = item.partition("=")
        name = name.strip().lower().replace("-", "_")
        if not sep or not values.strip():
            raise ConfigurationError(f"--grid takes KEY=V1,V2,...; got {item!r}")
        if name not in keys:
            other = RULE_KEYS if model else MODEL_KEYS
            hint = " (a model key: pass --model)" if name in other and not model else ""
            hint = " (a rule key: drop --model)" if name in other and model else hint
            raise ConfigurationError(f"--grid: unknown key {name!r}{hint}; keys: {', '.join(keys)}")
        if name in given:
            raise ConfigurationError(f"--grid: {name} is given twice")
        given[name] = values
    axes: dict[str, list[float | int]] = {}
    for name, field_name in keys.items():
        axes[field_name] = _values(name, given.get(name, defaults[name]))
    out: list[Candidate] = []
    skipped = 0
    for combo in itertools.product(*axes.values()):
        values = dict(zip(axes, combo, strict=True))
        try:
            out.append(ModelParameters(**values) if model else RuleParameters(**values, rule=rule))
        except ConfigurationError:
            skipped += 1
    if not out:
        raise ConfigurationError(
            "--grid: no valid parameter set (each needs "
            + ("sell <= buy)" if model else "exit_z < entry_z)")
        )
    return tuple(dict.fromkeys(out)), skipped


def _values(name: str, text: str) -> list[float | int]:
    """The values of grid key `name`, each checked against GRID_RANGES; ConfigurationError naming
    the first value that is not a number, out of its range or given twice."""
    allowed = GRID_RANGES[name]
    out: list[float | int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            value = float(part)
        except ValueError:
            raise ConfigurationError(f"--grid {name}: {part!r} is not a number") from None
        if not math.isfinite(value):
            raise ConfigurationError(f"--grid {name}: {part!r} is not a finite number")
        if not allowed.allows(value):
            raise ConfigurationError(
                f"--grid {name}: {part} is out of range; allowed: {allowed.describe(name)}"
            )
        if value in out:
            raise ConfigurationError(f"--grid {name}: {part} is given twice")
        out.append(int(value) if allowed.whole else value)
    return out


# --- Tasks ----------------------------------------------------------------------------------------
def model_window(
    table: pd.DataFrame,
    long: str,
    short: str,
    index: int,
    params: ModelParameters,
    window_index: int,
    window: WalkForwardWindow,
    config: TradingConfig,
) -> WindowResult:
    """One model parameter set on one window. `table`: closes of `long` and `short` and the
    model's out-of-sample ``probability`` per bar (decided on that bar's close); only rows
    ``[window.formation_start, window.trading_stop)`` are read. The engine, costs and the
    window-end flat rule are the scan's (`pair_scan.scan_window`)."""
    rows = table.iloc[window.formation_start : window.trading_stop]
    f = window.formation_bars
    closes = rows[[long, short]]
    logs = np.log(closes.to_numpy("float64"))
    stats = pair_statistics(logs[:f, 0], logs[:f, 1])
    thresholds = Thresholds(buy=params.buy, sell=params.sell)
    prob = rows["probability"].to_numpy("float64")[f:]
    signals = pd.DataFrame(
        {"action": [thresholds.action(float(p)).value for p in prob], "probability": prob}
    )
    sizing = replace(config.sizing, kelly_fraction=params.kelly_fraction)
    weights = end_flat(model_weights(signals, sizing), config.fill_delay_bars)
    result = run_backtest(
        closes.iloc[f:],
        weights,
        replace(config, sizing=sizing),
        label="sweep",
        history=closes.iloc[:f],
        log_rejections=False,
        engine="compiled",  # thousands of short runs: load the compiled loop once per process
    )
    return window_result(
        long, short, index, window_index, window, stats, result, config.initial_capital
    )


# --- Choice on the past, result on the next window ------------------------------------------------
@dataclass(frozen=True)
class WindowChoice:
    """The candidate chosen for one trading window and what it did there (out of sample)."""

    window_index: int
    trading_start: str  # first trading bar, YYYY-MM-DD
    trading_end: str  # last trading bar
    chosen: int  # index into the grid
    label: str
    #: Its annualised Sharpe over the training windows (what it was chosen on).
    in_sample_sharpe: float
    #: Its compounded return on this window, fraction (what it then did).
    oos_return: float
    fills: int


def in_sample_scores(
    returns: Sequence[Sequence[np.ndarray]], window: int, train: int
) -> np.ndarray:
    """Per candidate, the annualised Sharpe of its returns on windows ``window-train .. window-1``
    chained (`returns[k][i]`: candidate k's daily returns on window i); non-finite -> 0."""
    scores = np.array(
        [pst.sharpe_ratio(np.concatenate(list(r[window - train : window]))) for r in returns]
    )
    return np.where(np.isfinite(scores), scores, 0.0)


def choose(scores: np.ndarray) -> int:
    """The best score's index; the earliest on a tie."""
    return int(np.argmax(scores))


def walk_forward_choices(
    returns: Sequence[Sequence[np.ndarray]], train: int
) -> list[tuple[int, float]]:
    """(chosen candidate, its in-sample score) for each window from `train` on."""
    windows = len(returns[0])
    out = []
    for i in range(train, windows):
        scores = in_sample_scores(returns, i, train)
        k = choose(scores)
        out.append((k, float(scores[k])))
    return out


def out_of_sample_returns(
    returns: Sequence[Sequence[np.ndarray]], picks: Sequence[tuple[int, float]], train: int
) -> list[np.ndarray]:
    """The reported path: for window ``train + j``, the returns of the candidate picked for it
    (``picks[j]``) on that window, never those of the windows it was chosen on."""
    return [returns[k][train + j] for j, (k, _) in enumerate(picks)]


# --- The sweep ------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    """A finished sweep: the per-window choices, the walk-forward out-of-sample returns, every
    candidate's own out-of-sample Sharpe over the same windows, and the deflated Sharpe."""

    long: str
    short: str
    settings: SweepSettings
    source: str  # "rule:<name>" or "model:<version>"
    dates: pd.DatetimeIndex  # the reported (out-of-sample) bars
    returns: np.ndarray = field(repr=False)  # walk-forward daily returns on `dates`
    #: Per reported bar: the window it belongs to and the candidate traded there.
    bar_window: np.ndarray = field(repr=False)
    bar_choice: np.ndarray = field(repr=False)
    choices: list[WindowChoice]
    #: Per candidate: its returns as a fixed choice over the same windows, annualised Sharpe.
    candidate_oos: list[np.ndarray] = field(repr=False)
    candidate_sharpes: list[float]
    candidate_returns: list[float]
    estimate: pst.SharpeEstimate
    trial_count: TrialCount
    dsr: float
    fills: int
    total_costs: float
    traded_notional: float

    @property
    def pair(self) -> str:
        return f"{self.long}/{self.short}"

    @property
    def oos_start(self) -> str:
        return str(self.dates[0].date())

    @property
    def oos_end(self) -> str:
        return str(self.dates[-1].date())

    @property
    def total_return(self) -> float:
        return float(np.prod(1.0 + self.returns) - 1.0)

    def equity(self, initial_capital: float) -> pd.Series:
        """Equity compounding the walk-forward returns from `initial_capital` (USD, bar closes)."""
        return pd.Series(initial_capital * np.cumprod(1.0 + self.returns), index=self.dates)


def run_sweep(
    table: pd.DataFrame,
    long: str,
    short: str,
    settings: SweepSettings,
    config: TradingConfig | None = None,
    *,
    source: str | None = None,
    mapper: Mapper = serial_map,
    progress: Callable[[int, int], None] | None = None,
    trial_count: TrialCount | None = None,
) -> SweepResult:
    """Sweep `settings`' grid on the pair. `table`: closes in columns `long` and `short` (and
    ``probability`` for a model grid), oldest first. The DSR deflates by `trial_count` (default:
    this sweep's own candidates)."""
    config = config or TradingConfig()
    windows = walk_forward_windows(len(table), settings.formation_bars, settings.trading_bars)
    if len(windows) <= settings.train_windows:
        raise ConfigurationError(
            f"{len(table):,} bars give {len(windows)} walk-forward window(s) of "
            f"{settings.formation_bars} + {settings.trading_bars} bars; a sweep needs more than "
            f"--train-windows {settings.train_windows} (shorter windows or a longer range)"
        )
    fn = model_window if settings.is_model else scan_window
    columns = [long, short, "probability"] if settings.is_model else [long, short]
    tasks = [
        (long, short, k, c, i, w, config)
        for k, c in enumerate(settings.candidates)
        for i, w in enumerate(windows)
    ]
    results = mapper(functools.partial(fn, table[columns]), tasks, progress=progress)
    grid: list[list[WindowResult]] = [[] for _ in settings.candidates]
    for r in sorted(results, key=lambda r: (r.rule_index, r.window_index)):
        grid[r.rule_index].append(r)
    returns = [[w.returns for w in row] for row in grid]
    picks = walk_forward_choices(returns, settings.train_windows)
    reported = range(settings.train_windows, len(windows))
    chained = out_of_sample_returns(returns, picks, settings.train_windows)
    choices = []
    for i, (k, score) in zip(reported, picks, strict=True):
        w = grid[k][i]
        choices.append(
            WindowChoice(
                window_index=i,
                trading_start=str(table.index[windows[i].trading_start].date()),
                trading_end=str(table.index[windows[i].trading_stop - 1].date()),
                chosen=k,
                label=settings.candidates[k].label,
                in_sample_sharpe=score,
                oos_return=float(np.prod(1.0 + w.returns) - 1.0),
                fills=w.fills,
            )
        )
    oos = np.concatenate(chained)
    lengths = [len(x) for x in chained]
    fixed = [np.concatenate([row[i] for i in reported]) for row in returns]
    candidate_sharpes = [pst.sharpe_ratio(x) for x in fixed]
    count = trial_count or TrialCount.of(candidate_sharpes)
    level, reps, seed = (STATISTICS_METHOD[k] for k in ("level", "reps", "seed"))
    lo = windows[settings.train_windows].trading_start
    hi = windows[-1].trading_stop
    chosen = [grid[c.chosen][c.window_index] for c in choices]
    if source is None:
        first = settings.candidates[0]
        source = "model" if isinstance(first, ModelParameters) else f"rule:{first.rule}"
    return SweepResult(
        long=long,
        short=short,
        settings=settings,
        source=source,
        dates=pd.DatetimeIndex(table.index[lo:hi]),
        returns=oos,
        bar_window=np.repeat([c.window_index for c in choices], lengths),
        bar_choice=np.repeat([c.chosen for c in choices], lengths),
        choices=choices,
        candidate_oos=fixed,
        candidate_sharpes=candidate_sharpes,
        candidate_returns=[float(np.prod(1.0 + x) - 1.0) for x in fixed],
        estimate=pst.estimate_sharpe(oos, level=level, reps=reps, seed=seed),
        trial_count=count,
        dsr=pst.deflated_sharpe_ratio(oos, count.trials, count.sharpe_variance),
        fills=sum(w.fills for w in chosen),
        total_costs=sum(w.total_costs for w in chosen),
        traded_notional=sum(w.traded_notional for w in chosen),
    )


def deflate(result: SweepResult, count: TrialCount) -> SweepResult:
    """The same result with its DSR over `count` (e.g. the ledger's trials)."""
    result.trial_count = count
    result.dsr = pst.deflated_sharpe_ratio(result.returns, count.trials, count.sharpe_variance)
    return result


# --- The `main.py sweep` job ----------------------------------------------------------------------
@dataclass(frozen=True)
class SweepRequest:
    """What the user asked for on the command line."""

    pair: Any  # constants.Pair
    settings: SweepSettings
    config: TradingConfig = field(default_factory=TradingConfig)
    start: str | None = None
    end: str | None = None
    #: "xgb" or "lstm" for a model sweep (its active model), None for a rule sweep.
    model: str | None = None
    model_version: str | None = None


def sweep_table(
    request: SweepRequest, home: Any, notes: list[str], progress: Any = None
) -> tuple[pd.DataFrame, str]:
    """(closes, and probabilities for a model sweep, over the requested bars; the source text):
    the pair's processed data (processed first when missing), as `main.py backtest` reads it."""
    import backtest_strategy as bs

    pair = request.pair
    table = bs.processed_table(pair, home, notes)
    close_cols = [f"{pair.long}_close", f"{pair.short}_close"]
    name = f"the processed {pair.long}/{pair.short} data"
    in_range = requested_dates(table, request.start, request.end, name)
    if request.model is None:
        closes = in_range[close_cols].set_axis([pair.long, pair.short], axis=1)
        return closes, f"rule:{request.settings.candidates[0].rule}"
    prob, version = bs.model_probabilities(
        pair,
        table,
        home,
        kind=request.model,
        version=request.model_version,
        start=request.start,
        end=request.end,
        notes=notes,
        progress=progress,
    )
    # Closes before the first scored bar are the first window's formation rows (vol history).
    closes = table[close_cols].set_axis([pair.long, pair.short], axis=1)
    first = closes.index.get_loc(prob.index[0])
    pre = closes.iloc[max(first - request.settings.formation_bars, 0) : first]
    both = closes.loc[prob.index].assign(probability=prob.to_numpy("float64"))
    if len(pre) == request.settings.formation_bars:
        # The first formation window needs no probability: only its closes are read.
        both = pd.concat([pre.assign(probability=np.nan), both])
    return both, f"model:{version}"


def trial_settings(request: SweepRequest, candidate: Candidate) -> dict[str, Any]:
    s = request.settings
    return {
        "config": request.config.to_dict(),
        "candidate": {"type": type(candidate).__name__, **asdict(candidate)},
        "formation_bars": s.formation_bars,
        "trading_bars": s.trading_bars,
        "train_windows": s.train_windows,
    }


def sweep(
    request: SweepRequest,
    *,
    home: Any,
    mapper: Mapper = serial_map,
    progress: Callable[[int, int], None] | None = None,
    train_progress: Any = None,
    now: datetime | None = None,
) -> tuple[SweepResult, dict[str, Any], Path, list[str]]:
    """Load the pair, sweep it, record one trial per candidate, deflate by the ledger's count,
    write ``results/sweep-<UTC stamp>/``; (result, summary, folder, notes)."""
    notes: list[str] = []
    table, source = sweep_table(request, home, notes, train_progress)
    result = run_sweep(
        table,
        request.pair.long,
        request.pair.short,
        request.settings,
        request.config,
        source=source,
        mapper=mapper,
        progress=progress,
    )
    now = now or datetime.now(UTC)
    sweep_id = "sweep-" + now.strftime("%Y%m%d-%H%M%S")
    ledger = TrialLedger(home.results_dir)
    pair = (result.long, result.short)
    recorded_at = now.isoformat(timespec="seconds")
    for c, oos in zip(request.settings.candidates, result.candidate_oos, strict=True):
        ledger.record(
            Trial.of_returns(
                oos,
                run_id=sweep_id,
                recorded_at=recorded_at,
                pair=pair,
                start=result.oos_start,
                end=result.oos_end,
                kind=TRIAL_KIND,
                source=source,
                config_hash=config_hash(trial_settings(request, c)),
            )
        )
    count = ledger.count(pair, result.oos_start, result.oos_end, TRIAL_KIND, now=recorded_at)
    deflate(result, count)
    summary = sweep_summary(request, result, sweep_id, str(ledger.path), notes)
    folder = write_sweep_results(home.results_dir, sweep_id, result, summary)
    summary["run"]["folder"] = str(folder)
    return result, summary, folder, notes


def sweep_summary(
    request: SweepRequest, result: SweepResult, sweep_id: str, trials_file: str, notes: list[str]
) -> dict[str, Any]:
    """summary.json: the run, the walk-forward figures, the per-window choices and the grid."""
    s, est = result.settings, result.estimate
    sharpes = np.asarray(result.candidate_sharpes, dtype="float64")
    best = int(np.argmax(np.where(np.isfinite(sharpes), sharpes, -np.inf)))
    return json_safe(
        {
            "run": {
                "sweep_id": sweep_id,
                "pair": [result.long, result.short],
                "source": result.source,
                "oos_start": result.oos_start,
                "oos_end": result.oos_end,
                "bars": len(result.dates),
                "windows": len(result.choices),
                "formation_bars": s.formation_bars,
                "trading_bars": s.trading_bars,
                "train_windows": s.train_windows,
                "choice": "highest annualised Sharpe over the previous train_windows trading "
                "windows (non-finite = 0; ties to the earlier set); traded on the next window",
                "windows_end": "flat: a position is closed at each trading window's last close",
                "statistics": {**STATISTICS_METHOD, "trials_file": trials_file},
                "notes": notes,
            },
            "walk_forward": {
                "sharpe": est.sharpe,
                "sharpe_ci_95": [est.ci_low, est.ci_high],
                "psr": est.psr,
                "dsr": result.dsr,
                "trials": result.trial_count.trials,
                "trials_as_of": result.trial_count.as_of,
                "trial_sharpe_variance": result.trial_count.sharpe_variance,
                "total_return": result.total_return,
                "fills": result.fills,
                "total_costs": result.total_costs,
                "traded_notional": result.traded_notional,
            },
            "best_fixed_in_hindsight": {
                "index": best,
                "label": s.candidates[best].label,
                "sharpe": result.candidate_sharpes[best],
                "total_return": result.candidate_returns[best],
                "note": "chosen after seeing the out-of-sample windows: not a tradable result",
            },
            "config": request.config.to_dict(),
            "candidates": [
                {
                    "index": k,
                    "label": c.label,
                    **asdict(c),
                    "oos_sharpe_fixed": sh,
                    "oos_return_fixed": r,
                    "times_chosen": sum(ch.chosen == k for ch in result.choices),
                }
                for k, (c, sh, r) in enumerate(
                    zip(
                        s.candidates,
                        result.candidate_sharpes,
                        result.candidate_returns,
                        strict=True,
                    )
                )
            ],
            "choices": [asdict(c) for c in result.choices],
        }
    )


def write_sweep_results(
    results_dir: str | os.PathLike[str], sweep_id: str, result: SweepResult, summary: dict[str, Any]
) -> Path:
    """results/<sweep-id>/: summary.json, windows.csv (the choice per window), candidates.csv and
    equity.csv (the walk-forward equity, out-of-sample bars only), written whole or not at all."""
    capital = summary["config"]["initial_capital"]

    def write(folder: Path, name: str) -> None:
        summary["run"]["sweep_id"] = name
        pd.DataFrame(summary["choices"]).to_csv(
            folder / "windows.csv", index=False, float_format="%.6g"
        )
        pd.DataFrame(summary["candidates"]).to_csv(
            folder / "candidates.csv", index=False, float_format="%.6g"
        )
        frame = pd.DataFrame(
            {
                "equity": result.equity(capital),
                "return": result.returns,
                "window": result.bar_window,
                "chosen": result.bar_choice,
            }
        )
        frame.index.name = "date"
        frame.to_csv(folder / "equity.csv", float_format="%.6f")
        (folder / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")

    return write_folder(results_dir, sweep_id, write)
