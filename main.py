"""Command-line entry point: `python main.py COMMAND [options]`.

Dispatches to the modules; imports them (and pandas, TensorFlow, ...) only inside the command that
needs them, so `--help` and light commands start fast. Every user error ends as one line on stderr
and a non-zero exit code (see error_handling); `--debug` adds the traceback.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

EPILOG = """\
examples:
  python main.py process                         features for AAPL/MSFT from the bundled data
  python main.py process --long JPM --short BAC  any bundled pair
  python main.py process --source csv:my.csv     your own prices (a date + a close per ticker)
  python main.py train                           walk-forward validate, fit and register models
  python main.py models                          registered versions, status, integrity
  python main.py drift                           latest data vs the active models' training data
  python main.py backtest                        out-of-sample backtest with costs and risk gate
  python main.py backtest --signals my.csv       your own signals through the same engine
  python main.py scan --top 10                   every bundled pair, walk-forward, out of sample
  python main.py scan --adopt AMD/BAC            trade a pair of the latest scan from now on
  python main.py sweep --long AMD --short BAC    a parameter grid, walk-forward, with its DSR
  python main.py trials                          every run's Sharpe, its DSR over the trials now
  python main.py live --replay 2022-01-03 2022-03-31   the trading loop on history (paper)
  python main.py backtest --config trading.toml  backtest and live take the same settings
  python main.py live --once                     one live iteration (cron); paper by default
  python main.py status                          is the loop running, positions, halted?
  python main.py audit verify                    check the audit log's hash chain
  python main.py risk status                     drawdown halt state; `risk reset` to resume
  python main.py alerts test                     send a test alert (logs/alerts.log + webhook)
  python main.py dashboard                       the Streamlit dashboard on 127.0.0.1:8501
  python main.py credentials set ALPACA_API_KEY  store a broker key encrypted (AES-256-GCM)
  python main.py check                           which install profiles are present

configuration: TICKER_LONG, TICKER_SHORT, DATA_SOURCE, TRADING_HOME, LOG_LEVEL, ALERT_WEBHOOK_URL,
ALERT_WEBHOOK_SECRET, TRADING_MASTER_PASSWORD (environment or .env; command-line flags win);
TRADING_ENV_FILE names another .env. `scan --adopt LONG/SHORT` writes the pair into .env.
exit codes: 0 ok, 1 unexpected, 2 usage/configuration, 3 data, 4 validation, 5 risk,
6 broker, 7 model integrity, 8 credentials, 9 alert delivery, 10 signature,
11 audit chain broken.
"""


def _common_options() -> argparse.ArgumentParser:
    """Options accepted by every command (after the command name)."""
    common = argparse.ArgumentParser(add_help=False)
    pair = common.add_argument_group("pair")
    pair.add_argument(
        "--long",
        metavar="SYMBOL",
        help="ticker to buy on an entry (default: $TICKER_LONG or AAPL)",
    )
    pair.add_argument(
        "--short",
        metavar="SYMBOL",
        help="ticker to sell on an entry (default: $TICKER_SHORT or MSFT)",
    )
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    return common


def build_parser(*, trading: bool = True) -> argparse.ArgumentParser:
    """The whole command line. `trading=False` leaves out the trading-configuration options of
    `backtest` and `live` (their defaults come from pair_engine, which needs pandas), so commands
    such as `check` parse in a bare Python."""
    parser = argparse.ArgumentParser(
        prog="main.py",
        description="Pair trading with LSTM and XGBoost signals: long one stock, short another.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--debug", action="store_true", default=False, help="show tracebacks on errors"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _common_options()

    p = commands.add_parser(
        "process",
        parents=[common],
        help="load prices, validate them, write features to data/",
        description="Load prices, validate them, compute the 23 causal features and the next-bar "
        "label, and write data/processed_<LONG>_<SHORT>.parquet with its metadata (.json).",
    )
    p.add_argument(
        "--source",
        metavar="S",
        help="bundled (default, offline, 1990-2022), yfinance, alpaca, or csv:PATH "
        "(default: $DATA_SOURCE or bundled)",
    )
    p.add_argument(
        "--start", type=_iso_date, metavar="YYYY-MM-DD", help="first date to load (default: all)"
    )
    p.add_argument(
        "--end", type=_iso_date, metavar="YYYY-MM-DD", help="last date to load (default: all)"
    )
    p.set_defaults(func=cmd_process)

    t = commands.add_parser(
        "train",
        parents=[common],
        help="train XGBoost and the LSTM, validate walk-forward, register the models",
        description="Process the data, run expanding-window walk-forward validation, fit the "
        "final models on the training part (LSTM: early stopping on the validation part), score "
        "the holdout once beside two baselines, and register the models under models/. Splits "
        "are chronological; nothing is shuffled across time.",
    )
    t.add_argument("--model", default="all", choices=["lstm", "xgb", "all"], help="default: all")
    t.add_argument(
        "--epochs",
        type=_number(1, integer=True),
        default=15,
        metavar="N",
        help="LSTM epochs at most (15)",
    )
    t.add_argument(
        "--folds",
        type=_number(2, integer=True),
        default=4,
        metavar="K",
        help="walk-forward folds (4)",
    )
    t.add_argument(
        "--lookback",
        type=_number(2, integer=True),
        default=20,
        metavar="BARS",
        help="LSTM window (20)",
    )
    t.add_argument("--seed", type=int, default=42, help="random seed (42)")
    t.add_argument("--source", metavar="S", help="data source, as for `process`")
    t.add_argument(
        "--tune-ensemble",
        action="store_true",
        help="pick the LSTM/XGBoost ensemble weights on the validation part (default 0.6/0.4)",
    )
    t.set_defaults(func=cmd_train)

    m = commands.add_parser(
        "models",
        parents=[common],
        help="list registered model versions, or promote/rollback/retire one",
        description="List model versions (status, holdout metrics, artifact integrity). "
        "`models promote VERSION` makes a version active; `models rollback` withdraws the "
        "canary (or the active model, restoring the previous one); `models retire VERSION`.",
    )
    m.add_argument(
        "action", nargs="?", default="list", choices=["list", "promote", "rollback", "retire"]
    )
    m.add_argument("version", nargs="?", help="model version (promote, retire)")
    m.add_argument("--kind", default="xgb", choices=["xgb", "lstm"], help="for rollback (xgb)")
    m.set_defaults(func=cmd_models)

    d = commands.add_parser(
        "drift",
        parents=[common],
        help="drift of the latest processed data against the active models",
        description="Compare the last WINDOW rows of data/processed_<LONG>_<SHORT>.parquet with "
        "the training-part statistics stored with each active model: PSI per feature (0.1 "
        "moderate, 0.25 significant) with a KS test, and prediction drift. Drifted features are "
        "written to logs/alerts.log. Run `python main.py process` first for fresh data. Exits 1 "
        "when anything drifted.",
    )
    d.add_argument("--window", type=int, default=60, metavar="BARS", help="latest bars (60)")
    d.add_argument("--no-alerts", action="store_true", help="report only, write no alert lines")
    d.set_defaults(func=cmd_drift)

    _backtest_parser(commands, common, trading)
    _scan_parser(commands, trading)
    _sweep_parser(commands, common, trading)
    _trials_parser(commands)

    r = commands.add_parser(
        "risk",
        parents=[common],
        help="show the drawdown halt, or reset it to resume trading",
        description="The live/paper risk state (data/risk_state.json): whether new entries are "
        "halted after the drawdown limit was hit, and the equity peak. `risk reset` clears the "
        "halt (and, with --equity, restarts the peak from that equity); it is logged as an alert.",
    )
    r.add_argument("action", nargs="?", default="status", choices=["status", "reset"])
    r.add_argument(
        "--equity",
        type=_number(0, inclusive=False),
        metavar="USD",
        help="reset: new equity peak (default: keep)",
    )
    r.set_defaults(func=cmd_risk)

    lv = commands.add_parser(
        "live",
        parents=[common],
        help="run the trading loop (paper by default; --replay to replay history)",
        description="The trading loop: inside NYSE hours, every --interval seconds: latest closed "
        "bars -> signal -> RiskManager.pre_trade_check -> broker -> positions.json, audit log, "
        "heartbeat. Outside market hours it sleeps until the open. Paper trading with the "
        "simulated broker is the default; --broker alpaca uses Alpaca's paper account; --live "
        "trades real money (needs stored credentials and a typed confirmation). Ctrl-C or "
        "SIGTERM stop it at a safe point. One instance per TRADING_HOME.",
        epilog="examples:\n"
        "  python main.py live --replay 2022-01-03 2022-03-31   replay history, no keys needed\n"
        "  python main.py live --once                           one iteration (for cron)\n"
        "  python main.py live --broker alpaca                  Alpaca paper account\n"
        "  python main.py status                                what the loop is doing\n"
        + CONFIG_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lv.add_argument(
        "--replay",
        nargs=2,
        type=_iso_date,
        metavar=("START", "END"),
        help="replay bundled history from START to END (YYYY-MM-DD) with a simulated clock",
    )
    lv.add_argument(
        "--speed",
        type=float,
        default=0.0,
        metavar="X",
        help="replay: simulated seconds per real second (0: as fast as possible)",
    )
    lv.add_argument(
        "--interval",
        type=float,
        default=None,
        metavar="S",
        help="seconds between iterations (default: $TRADING_INTERVAL_S or 300)",
    )
    lv.add_argument("--once", action="store_true", help="one iteration, then exit (cron)")
    lv.add_argument(
        "--broker",
        choices=["simulated", "alpaca"],
        default="simulated",
        help="simulated (local paper account, default) or alpaca",
    )
    lv.add_argument(
        "--live",
        action="store_true",
        help="REAL MONEY through Alpaca's live endpoint (asks for confirmation)",
    )
    lv.add_argument(
        "--signals",
        metavar="FILE",
        help="trade a signal CSV (as for `backtest --signals`) instead of the model",
    )
    lv.add_argument(
        "--flatten-on-deadman",
        action="store_true",
        help="close both legs when the dead man's switch trips",
    )
    lv.add_argument(
        "--fill-timeout",
        type=_number(0),
        default=30.0,
        metavar="S",
        help="Alpaca: seconds to wait for asynchronous fills (a flip's opening orders wait for "
        "its closing orders to fill; default 30)",
    )
    lv.add_argument(
        "--unfilled-reduce",
        choices=["cancel", "leave"],
        default="cancel",
        help="Alpaca: a closing order still unfilled at --fill-timeout is cancelled (default) or "
        "left open; either way the opening orders are withheld until the next bar",
    )
    if trading:
        _add_trading_options(lv)
    lv.set_defaults(func=cmd_live)

    _home_parsers(commands, common)

    st = commands.add_parser(
        "status",
        parents=[common],
        help="is the loop running, what it holds, halted or not, market open or not",
        description="Reads the heartbeat, positions.json and the risk state written by "
        "`python main.py live`; changes nothing.",
    )
    st.set_defaults(func=cmd_status)

    db = commands.add_parser(
        "dashboard",
        parents=[common],
        help="open the Streamlit dashboard (same as `streamlit run dashboard.py`)",
        description="Starts the read-only Streamlit dashboard on 127.0.0.1 (see README, "
        "Dashboard, for reaching it safely from another machine).",
    )
    db.add_argument(
        "--port", type=_number(1, integer=True, high=65535), default=8501, help="(8501)"
    )
    db.add_argument(
        "--address",
        default="127.0.0.1",
        help="interface to bind (127.0.0.1; anything else exposes it: put auth in front)",
    )
    db.set_defaults(func=cmd_dashboard)

    al = commands.add_parser(
        "alerts",
        parents=[common],
        help="send a test alert and report where it went",
        description="Alerts go to logs/alerts.log always, and to ALERT_WEBHOOK_URL (Slack, Discord "
        "or any JSON receiver) when set, signed with HMAC-SHA256 when ALERT_WEBHOOK_SECRET is set. "
        "`alerts test` sends one test alert through the same path as a real one and waits for "
        "the delivery (exit 9 if the webhook refuses it or cannot be reached).",
        epilog="examples:\n"
        "  python main.py alerts test\n"
        "  ALERT_WEBHOOK_URL=https://hooks.slack.com/services/... python main.py alerts test\n"
        "  python main.py alerts test --severity CRITICAL",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    al.add_argument("action", choices=["test"], help="test: send a test alert")
    al.add_argument(
        "--severity",
        default="HIGH",
        type=str.upper,
        choices=["INFO", "WARNING", "MEDIUM", "HIGH", "CRITICAL"],
        help="severity of the test alert (HIGH: what a real page uses)",
    )
    al.add_argument(
        "--timeout",
        type=_number(0, inclusive=False),
        default=30.0,
        metavar="S",
        help="seconds to wait for the webhook, retries included (30)",
    )
    al.set_defaults(func=cmd_alerts)

    c = commands.add_parser(
        "check",
        parents=[common],
        help="report which install profiles are present and what is missing",
        description="Compare installed packages with the pinned requirements of each profile "
        "(core, lstm, live, advanced, full). Interactively offers to install a missing profile; "
        "otherwise prints the command. Exits 1 when the core profile is incomplete.",
    )
    c.add_argument("--yes", action="store_true", help="install the missing profile without asking")
    c.set_defaults(func=cmd_check)

    import credential_manager  # stdlib-only at import time: --help stays fast

    credential_manager.register_cli(commands, common)

    import audit_logging  # stdlib-only at import time

    audit_logging.register_cli(commands, common)
    return parser


CONFIG_EPILOG = """\
configuration: defaults < --config FILE (TOML) < the options below. A TOML file holds top-level
initial_capital, fill_delay_bars, rebalance_band and tables [sizing], [execution],
[execution.costs], [limits] with the field names of pair_engine.TradingConfig, e.g.
  rebalance_band = 0.25
  [limits]
  max_drawdown_pct = 0.10
The effective configuration is written to summary.json (backtest) and the audit start record
(live); `backtest` and `live` take the same options, so what was tested is what trades."""

#: Trading options shared by `backtest` and `live`: (flag, TradingConfig field path, metavar,
#: help). Defaults and types come from the dataclasses, never from here.
TRADING_OPTIONS: tuple[tuple[str, str, str, str], ...] = (
    ("--capital", "initial_capital", "USD", "starting cash (backtest, new paper account)"),
    ("--fill-delay", "fill_delay_bars", "BARS", "bars from the signal's close to the fill's"),
    (
        "--rebalance-band",
        "rebalance_band",
        "F",
        "re-size a held direction only when a leg's target differs from the holding by more "
        "than this fraction of the leg; a direction change always trades",
    ),
    ("--hold", "sizing.hold", "", "on a Hold signal"),
    ("--kelly-fraction", "sizing.kelly_fraction", "F", "of full Kelly"),
    ("--kelly-cap", "sizing.max_leg_fraction", "F", "per leg, fraction of equity"),
    ("--payoff-ratio", "sizing.payoff_ratio", "B", "win/loss assumed by Kelly"),
    (
        "--rule-fraction",
        "sizing.rule_leg_fraction",
        "F",
        "per-leg size of rules, action and state files, fraction of equity",
    ),
    (
        "--leg-usd",
        "sizing.leg_usd",
        "USD",
        "fixed USD per leg, instead of --rule-fraction x equity, for rule-sized positions: action "
        "and state files and the z-score benchmark (Kelly-sized model signals and weight-column "
        "files, fractions of equity, are unchanged)",
    ),
    (
        "--fractional-shares",
        "sizing.fractional_shares",
        "",
        "size legs in fractional shares instead of truncating to whole shares (backtest and the "
        "simulated broker; refused with Alpaca)",
    ),
    ("--commission-per-share", "execution.costs.commission_per_share", "USD", ""),
    ("--commission-min", "execution.costs.commission_min", "USD", "per order"),
    ("--commission-bps", "execution.costs.commission_bps", "BPS", "of notional"),
    ("--half-spread-bps", "execution.costs.half_spread_bps", "BPS", "per side"),
    ("--impact-coef", "execution.costs.impact_coefficient", "Y", "square-root impact"),
    ("--borrow-rate", "execution.costs.borrow_rate_annual", "RATE", "annual short borrow"),
    (
        "--fees",
        "execution.costs.regulatory_fees",
        "",
        "SEC Section 31 fee and FINRA TAF: the dated tables or none",
    ),
    ("--adv-usd", "execution.default_adv_usd", "USD", "daily dollar volume if none in source"),
    ("--participation-cap", "execution.participation_cap", "F", "largest fill / ADV"),
    ("--remainder", "execution.remainder", "", "of a capped order"),
    ("--seed", "execution.seed", "N", "recalls and slippage"),
    ("--max-leg-notional", "limits.max_leg_notional", "USD", ""),
    ("--max-gross", "limits.max_gross_exposure", "USD", "exposure"),
    ("--max-net", "limits.max_net_exposure", "USD", "exposure"),
    ("--max-order-notional", "limits.max_order_notional", "USD", ""),
    ("--max-leverage", "limits.max_leverage", "X", "gross/equity"),
    ("--daily-loss-limit", "limits.daily_loss_limit_pct", "F", "of equity, per day"),
    ("--max-drawdown", "limits.max_drawdown_pct", "F", "liquidate and halt at this drawdown"),
)


def _option_dest(path: str) -> str:
    return "cfg__" + path.replace(".", "__")


def _field_type(defaults: Any, path: str) -> type:
    """The value type of an optional (`X | None`) TradingConfig field, from its annotation: its
    default None says nothing about what a value is."""
    import dataclasses
    import functools
    import types
    import typing

    *parents, leaf = path.split(".")
    owner = functools.reduce(getattr, parents, defaults)
    hint = typing.get_type_hints(type(owner))[leaf]
    field = next(f for f in dataclasses.fields(owner) if f.name == leaf)
    args = [a for a in typing.get_args(hint) if a is not types.NoneType]
    if isinstance(hint, types.UnionType) and len(args) == 1 and isinstance(args[0], type):
        return args[0]
    raise TypeError(f"TRADING_OPTIONS: no command-line type for {path} ({field.type})")


def _add_trading_options(parser: argparse.ArgumentParser) -> None:
    """--config and the TRADING_OPTIONS, typed and documented from TradingConfig's defaults."""
    import enum
    import functools

    from pair_engine import TradingConfig

    defaults = TradingConfig()
    g = parser.add_argument_group("trading configuration (shared by backtest and live)")
    g.add_argument("--config", metavar="FILE", help="TOML file of trading settings (see below)")
    for flag, path, metavar, text in TRADING_OPTIONS:
        default = functools.reduce(getattr, path.split("."), defaults)
        shown = str(default)
        if isinstance(default, float):
            shown = (
                f"{default:,.0f}" if default >= 1000 and default.is_integer() else f"{default:g}"
            )
        kw: dict[str, Any] = {"dest": _option_dest(path), "default": None}
        if isinstance(default, enum.Enum):
            kw["choices"] = [m.value for m in type(default)]
            shown = default.value
        elif path == "sizing.hold":
            kw["choices"] = ["keep", "flat"]
        elif isinstance(default, bool):  # a flag: given means True (the default is False)
            kw["action"] = "store_true"
            shown = "on" if default else "off"
        else:
            kw["type"] = _field_type(defaults, path) if default is None else type(default)
            kw["metavar"] = metavar
            if default is None:
                shown = "off"
        g.add_argument(flag, help=f"{text} ({shown})".lstrip(), **kw)
    g.add_argument(
        "--flat-commission",
        type=float,
        metavar="USD",
        help="only this commission per order: no spread, impact, fees or borrow (off)",
    )
    g.add_argument(
        "--hard-to-borrow",
        metavar="SYM,...",
        default="",
        help="symbols whose shorts may be recalled at random (backtest only; none)",
    )
    g.add_argument(
        "--recall",
        action="append",
        default=[],
        metavar="SYM:DATE",
        help="a short in SYM is bought in on DATE (backtest only; repeatable)",
    )


def _backtest_parser(commands: Any, common: argparse.ArgumentParser, trading: bool) -> None:
    b = commands.add_parser(
        "backtest",
        parents=[common],
        help="backtest the model's signals out of sample, with costs and the risk gate",
        description="Run the pair through the backtest engine: model signals (or --signals FILE) "
        "-> Kelly sizing -> RiskManager.pre_trade_check -> simulated fills with commission, "
        "spread, square-root impact, SEC/FINRA fees and short borrow -> accounting -> drawdown "
        "control. By default it covers the bars after the model's validation range (its "
        "holdout), and trains a model first if there is none. Prints the report beside two "
        "benchmarks (buy-and-hold of the long leg; the spread z-score rule under the same costs "
        "and gate), each Sharpe with its 95 % bootstrap interval, P(Sharpe > 0), the deflated "
        "Sharpe over the trials counted in results/trials.jsonl and paired tests against the "
        "benchmarks, "
        "then a one-line verdict, and writes results/<run-id>/ (equity.csv, trades.csv, "
        "summary.json, equity.png, equity.html).",
        epilog="--signals FILE: a CSV with `date,action` (buy, sell, hold, flat), `date,state`\n"
        "(1 long the spread, -1 short it, 0 flat, blank keep) or `date,<LONG>,<SHORT>` target\n"
        "weights (signed fractions of equity per leg). Actions and states trade where the\n"
        "state changes, sized by --rule-fraction of equity or --leg-usd USD per leg. Rows\n"
        "before the first bar are skipped: those before the data (the feature warm-up) must\n"
        "be flat, those before --start must leave the file flat by then. Rows after --end\n"
        "are ignored; any other date must be a bar of the data.\n\n" + CONFIG_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument(
        "--start",
        type=_iso_date,
        metavar="YYYY-MM-DD",
        help="first bar (default: after validation)",
    )
    b.add_argument(
        "--end", type=_iso_date, metavar="YYYY-MM-DD", help="last bar (default: the last processed)"
    )
    b.add_argument("--model", metavar="VERSION", help="score with this model version")
    b.add_argument(
        "--allow-in-sample",
        action="store_true",
        help="allow bars the model trained or validated on (the result is labeled IN-SAMPLE)",
    )
    b.add_argument("--signals", metavar="FILE", help="backtest a signal CSV instead of the model")
    b.add_argument("--no-charts", action="store_true", help="skip equity.png and equity.html")
    b.add_argument(
        "--engine",
        choices=("auto", "compiled", "interpreted"),
        default="auto",
        help="compiled: the numba event loop (fast on long runs; ~0.5 s to load, ~10 s to compile "
        "after an upgrade); interpreted: plain Python; auto: compiled from 5,000 instructions. "
        "Every engine gives the same fills and equity to the last bit (auto)",
    )
    g = b.add_argument_group("benchmark")
    g.add_argument("--zscore-entry", type=float, default=2.0, metavar="Z", help="(2.0)")
    g.add_argument("--zscore-exit", type=float, default=0.5, metavar="Z", help="(0.5)")
    g.add_argument(
        "--benchmark-rule",
        choices=("current", "textbook"),
        default="current",
        help="the z-score rule: current (reverses long<->short directly on an opposite signal) "
        "or textbook (goes flat on an opposite signal, re-enters on a later bar); the same "
        "z-score, see README 'The z-score benchmark' (current)",
    )
    if trading:
        _add_trading_options(b)
    b.set_defaults(func=cmd_backtest)


#: Top pairs a bare `scan --models` trains models for.
SCAN_MODEL_PAIRS = 5


def _model_pairs(text: str | None) -> int:
    """--models N: a whole number >= 1 (ConfigurationError in one line otherwise); 0 if absent."""
    from error_handling import ConfigurationError

    if text is None:
        return 0
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigurationError(f"--models must be a whole number of top pairs >= 1, not {text!r}")
    return n


def _scan_parser(commands: Any, trading: bool) -> None:
    import textwrap

    sc = commands.add_parser(
        "scan",
        help="every pair of a universe, walk-forward, the z-score rule out of sample",
        description=textwrap.fill(
            "For every pair of the universe and every walk-forward window: formation "
            "statistics (correlation, hedge ratio, Engle-Granger p-value, half-life, hedge-ratio "
            "stability), then the z-score rule traded on the next trading window through the "
            "backtest engine with its costs and risk gate (flat at each window's end). Ranks the "
            "pairs by the deflated Sharpe of their chained out-of-sample returns (deflated over "
            "pairs x parameter sets, counted in results/trials.jsonl), then Sharpe, and writes "
            "results/scan-<UTC stamp>/ (pairs.csv, pairs.parquet, summary.json, heatmap.png, "
            "heatmap.html). Runs on every local core (joblib) or on a Dask cluster (--scheduler); "
            "finished tasks are cached under the home, so an interrupted scan resumes. --models N "
            "then trains XGBoost for the top N pairs, walk-forward over the scan's out-of-sample "
            "span (each fold trains only on earlier bars), and adds its pooled out-of-sample AUC "
            "(DeLong 95 % CI), accuracy and p against the majority rate to the table and files. "
            "--adopt LONG/SHORT runs no scan: it makes a pair of the latest scan the traded pair "
            "(TICKER_LONG/TICKER_SHORT in .env) and trains its models if it has none.",
            width=96,
        ),
        epilog=CONFIG_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sc.add_argument(
        "--universe",
        default="bundled",
        metavar="U",
        help="bundled (the 20 bundled tickers, 190 pairs) or csv:PATH (a date column and one "
        "close column per ticker) (bundled)",
    )
    _add_runner_options(sc, "data/cache/scan")
    sc.add_argument(
        "--top", type=_number(1, integer=True), default=20, metavar="N", help="rows shown (20)"
    )
    _add_window_options(sc, 252, "formation window in bars (252)")
    sc.add_argument("--entry-z", type=float, metavar="Z", help="one parameter set: entry (2.0)")
    sc.add_argument("--exit-z", type=float, metavar="Z", help="one parameter set: exit (0.5)")
    sc.add_argument(
        "--grid",
        nargs="+",
        metavar="KEY=V1,V2",
        help="several parameter sets instead, as sweep's: entry_z, exit_z, lookback (a key left "
        "out takes sweep's default values); each pair x set is a row and a trial",
    )
    sc.add_argument(
        "--rule",
        choices=("current", "textbook"),
        default="current",
        help="the z-score rule, as backtest's --benchmark-rule (current)",
    )
    sc.add_argument(
        "--models",
        nargs="?",
        const=str(SCAN_MODEL_PAIRS),
        metavar="N",
        help="after the ranking, train and walk-forward-score XGBoost for the top N pairs "
        f"(bare --models: {SCAN_MODEL_PAIRS}; off)",
    )
    sc.add_argument(
        "--coint-lags",
        choices=("fixed1", "aic"),  # pair_selection.COINT_LAGS (statsmodels not imported here)
        help="the Engle-Granger test's ADF lags (the coint column only, never the trades): fixed1 "
        "one lagged difference, aic the lag AIC picks up to statsmodels' maximum (its default; "
        "~10x the test's cost, p-values can differ by up to ~0.6) (fixed1)",
    )
    sc.add_argument("--no-charts", action="store_true", help="skip heatmap.png and heatmap.html")
    sc.add_argument(
        "--adopt",
        metavar="LONG/SHORT",
        help="scan nothing: make this pair of the latest results/scan-*/ the traded pair: process "
        "its data, write TICKER_LONG and TICKER_SHORT into .env (its other lines kept), train its "
        "models if it has no active one, print its scan figures. For one run only, give any other "
        "command --long/--short instead (off)",
    )
    sc.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    if trading:
        _add_trading_options(sc)
    sc.set_defaults(func=cmd_scan, long=None, short=None)


def _trials_parser(commands: Any) -> None:
    tr = commands.add_parser(
        "trials",
        help="the trial ledger: every run's Sharpe and its DSR over the trials counted now",
        description="List results/trials.jsonl by pair, dates and kind: each run's Sharpe and "
        "its deflated Sharpe recomputed over the trials on record now (a run's own report froze "
        "the count of its day). Runs whose returns are identical bar for bar are one trial. "
        "`trials prune --since DATE|--all --reason TEXT` starts counting again: it appends a "
        "restart record naming the runs it stops counting and why; nothing is deleted.",
    )
    tr.add_argument("action", nargs="?", default="list", choices=["list", "prune"])
    tr.add_argument(
        "--since",
        type=_iso_date,
        metavar="YYYY-MM-DD",
        help="list: only runs recorded on or after this UTC date; prune: stop counting the runs "
        "recorded before it",
    )
    tr.add_argument(
        "--all",
        action="store_true",
        dest="everything",
        help="list: also the runs no longer counted and the restart records; prune: stop "
        "counting every run so far",
    )
    tr.add_argument("--reason", metavar="TEXT", help="prune: why counting restarts (required)")
    tr.add_argument("--pair", metavar="LONG/SHORT", help="list: only this pair (all)")
    tr.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    tr.set_defaults(func=cmd_trials)


def cmd_trials(args: argparse.Namespace) -> int:
    import constants as C
    from trial_ledger import TrialLedger, trials_command

    ledger = TrialLedger(C.paths().results_dir)
    lines = trials_command(
        ledger,
        args.action,
        since=args.since,
        everything=args.everything,
        reason=args.reason,
        pair=args.pair,
    )
    print("\n".join(lines))
    return 0


def _add_runner_options(parser: argparse.ArgumentParser, cache: str) -> None:
    """--jobs, --scheduler and --no-cache: where the tasks of `scan` and `sweep` run."""
    parser.add_argument(
        "--jobs",
        type=_number(-1, integer=True),
        default=-1,
        metavar="N",
        help="local worker processes; -1 all cores, 1 in this process (-1)",
    )
    parser.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on a Dask cluster, e.g. tcp://HOST:8786 (or $DASK_SCHEDULER_ADDRESS); "
        "DEPLOYMENT.md says how to start one (off)",
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help=f"recompute every task instead of reusing finished ones from {cache}",
    )


def _add_window_options(
    parser: argparse.ArgumentParser, formation_bars: int | None, formation_help: str
) -> None:
    """--start, --end, --formation-bars and --trading-bars: the walk-forward windows of `scan`
    and `sweep`."""
    parser.add_argument("--start", type=_iso_date, metavar="YYYY-MM-DD", help="first date (all)")
    parser.add_argument("--end", type=_iso_date, metavar="YYYY-MM-DD", help="last date (all)")
    parser.add_argument(
        "--formation-bars",
        type=_number(1, integer=True),
        default=formation_bars,
        metavar="N",
        help=formation_help,
    )
    parser.add_argument(
        "--trading-bars",
        type=_number(1, integer=True),
        default=63,
        metavar="N",
        help="trading window in bars, also the step (63)",
    )


def _sweep_parser(commands: Any, common: argparse.ArgumentParser, trading: bool) -> None:
    import textwrap

    sw = commands.add_parser(
        "sweep",
        parents=[common],
        help="a parameter grid, walk-forward: choose on the past, report only the next window",
        description=textwrap.fill(
            "Trade every parameter set of a grid on every walk-forward trading window of "
            "the pair (the backtest engine with its costs and risk gate; flat at each window's "
            "end). For each window, choose the set with the best Sharpe over the previous "
            "--train-windows windows and trade it on that window: only those out-of-sample windows "
            "form the reported equity, whose deflated Sharpe counts every set tried (trials in "
            "results/trials.jsonl). Rule grids (default) sweep the z-score rule; --model xgb|lstm "
            "sweeps a trained model's signal thresholds and Kelly fraction on the bars after its "
            "training range (training it first if the pair has no active model). Writes "
            "results/sweep-<UTC stamp>/ (summary.json, windows.csv, candidates.csv, equity.csv).",
            width=96,
        )
        + "\n\n"
        "grids (KEY=V1,V2,...; a key left out keeps its default values):\n"
        "  rule:  entry_z=1.5,2,2.5 exit_z=0,0.5 lookback=40,60        (12 sets, the default)\n"
        "  model: buy=0.55,0.6 sell=0.4,0.45 kelly=0.25,0.5,1           (12 sets, with --model)\n"
        "  each value: 0 < entry_z, 0 <= exit_z, lookback a whole number >= 3, 0 < buy < 1,\n"
        "  0 < sell < 1, 0 < kelly <= 1; a set that breaks its own rule (exit_z >= entry_z,\n"
        "  sell > buy) is skipped.\n\n"
        "examples:\n"
        "  python main.py sweep --long AMD --short BAC\n"
        "  python main.py sweep --grid entry_z=1.5,2,2.5 exit_z=0,0.5 lookback=40,60,120\n"
        "  python main.py sweep --model xgb --grid buy=0.52,0.55,0.6 kelly=0.5",
        epilog=CONFIG_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sw.add_argument(
        "--grid",
        nargs="+",
        metavar="KEY=V1,V2",
        help="the parameter grid (default: the 12-set grid above)",
    )
    sw.add_argument(
        "--model",
        choices=("xgb", "lstm"),
        help="sweep this model's thresholds and Kelly fraction instead of the z-score rule (off)",
    )
    sw.add_argument(
        "--model-version", metavar="VERSION", help="with --model: this registered version"
    )
    sw.add_argument(
        "--rule",
        choices=("current", "textbook"),
        default="current",
        help="rule grids: the z-score rule, as backtest's --benchmark-rule (current)",
    )
    _add_window_options(
        sw,
        None,
        "bars before the first trading window (the z-score's warm-up); 252 for rule grids, "
        "--trading-bars for a model",
    )
    sw.add_argument(
        "--train-windows",
        type=_number(1, integer=True),
        default=4,
        metavar="N",
        help="trading windows that choose the next window's set (4: one year)",
    )
    sw.add_argument(
        "--show",
        type=_number(1, integer=True),
        default=20,
        metavar="N",
        help="latest windows shown (20; all are in windows.csv)",
    )
    _add_runner_options(sw, "data/cache/sweep")
    if trading:
        _add_trading_options(sw)
    sw.set_defaults(func=cmd_sweep)


# --- Commands -------------------------------------------------------------------------------------
def _home_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """`home show|claim` and `positions adopt`: which account a home trades (home_identity)."""
    venue = argparse.ArgumentParser(add_help=False)
    venue.add_argument(
        "--broker",
        choices=["simulated", "alpaca"],
        default="simulated",
        help="the broker whose account is meant (as for `live`)",
    )
    venue.add_argument("--live", action="store_true", help="Alpaca's live (real-money) account")
    h = commands.add_parser(
        "home",
        parents=[common, venue],
        help="which broker account this home trades; claim it for a copied or moved home",
        description="A home records the venue and account it trades at its first `live` start "
        "(data/home.json) and refuses any other. A copied or moved home on Alpaca does not "
        "trade until `home claim`: it then takes a new order tag (a copy never sends its "
        "original's client order ids) and trades the account from here; stop the other home.",
    )
    h.add_argument("action", nargs="?", default="show", choices=["show", "claim"])
    h.set_defaults(func=cmd_home)
    ps = commands.add_parser(
        "positions",
        parents=[common, venue],
        help="adopt the pair's shares the account held before this home's first start",
        description="Shares of the pair's symbols that the account held before the home's first "
        "start are not the home's: the loop never trades them. `positions adopt` makes them "
        "its own (traded from the next start).",
    )
    ps.add_argument("action", choices=["adopt"])
    ps.set_defaults(func=cmd_positions)


def _home_broker(args: argparse.Namespace, home: Any) -> Any:
    """The broker `args` name, to read its account (no order is sent)."""
    import trading_api as ta

    if args.live or args.broker == "alpaca":
        if args.live:
            api_key, secret_key = _live_keys(home)
            return ta.AlpacaBroker(
                api_key,
                secret_key,
                paper=False,
                trading_url=os.environ.get("ALPACA_TRADING_URL") or None,
                data_url=os.environ.get("ALPACA_DATA_URL") or None,
            )
        return ta.AlpacaBroker.from_environment(paper=True, home=home.home)
    if not home.paper_broker_file.exists():
        from error_handling import ConfigurationError

        raise ConfigurationError(
            f"{home.home} has no paper account yet ({home.paper_broker_file.name}): its first "
            "`python main.py live` start creates it; use --broker alpaca for an Alpaca account"
        )
    return ta.SimulatedBroker(home.paper_broker_file)


def cmd_home(args: argparse.Namespace) -> int:
    import constants as C
    import home_identity as hi
    import live_state

    home = C.paths().ensure()
    if args.action == "claim":
        pair = C.resolve_pair(args.long, args.short)
        saved = live_state.read_positions(home.positions_file)
        identity = hi.claim(home, _home_broker(args, home), pair.tickers, saved)
        print(f"claimed: this home trades the {identity.describe()}")
        print(f"new order tag {identity.order_tag}: stop any other home that trades this account")
    else:
        identity = hi.read_identity(home)
        if identity is None:
            print(f"{home.home} has not traded yet: its first `live` start records its account")
            return 0
        print(f"this home trades the {identity.describe()}; order tag {identity.order_tag}")
    for line in hi.unowned_lines(identity):
        print(line)
    return 0


def cmd_positions(args: argparse.Namespace) -> int:
    import constants as C
    import home_identity as hi
    import live_state

    home = C.paths().ensure()
    pair = C.resolve_pair(args.long, args.short)
    saved = live_state.read_positions(home.positions_file)
    adopted = hi.adopt(home, _home_broker(args, home), pair.tickers, saved)
    text = ", ".join(f"{s} {q:+,}" for s, q in adopted.items()) or "nothing held apart"
    print(f"adopted: {text}; this home trades all of {pair.long}/{pair.short} from its next start")
    return 0


def cmd_process(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    import constants as C
    import process_stock_data as psd

    pair = C.resolve_pair(args.long, args.short)
    source = C.data_source_name(args.source)
    err = Console(stderr=True)
    with err.status(f"processing {pair.long}/{pair.short} from {source} ..."):
        _, s = psd.process(source, pair, start=args.start, end=args.end)
    table = Table(title=f"Processed {s.long}/{s.short}", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")  # keep the full path and SHA-256 visible
    table.add_row("source", s.source)
    table.add_row("rows", f"{s.rows:,} (of {s.input_rows:,} bars loaded)")
    table.add_row("date range", f"{s.start} .. {s.end}")
    table.add_row(
        "features",
        f"{len(s.features)}{' (with volume)' if s.has_volume else ' (no volume in source)'}",
    )
    table.add_row("warm-up dropped", f"{s.warmup_rows} rows: {s.warmup_reason}")
    table.add_row("unlabeled", f"{s.unlabeled_rows} row (the last bar; its next bar is unknown)")
    table.add_row("validation", ", ".join(s.rules))
    table.add_row("written", s.path)
    table.add_row("sha256", s.sha256)
    Console().print(table)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    import constants as C
    import train_model as tm

    pair = C.resolve_pair(args.long, args.short)
    config = tm.TrainConfig(
        models=tm.parse_models(args.model),
        epochs=args.epochs,
        folds=args.folds,
        lookback=args.lookback,
        seed=args.seed,
        tune_ensemble=args.tune_ensemble,
    )
    console = Console()
    if "lstm" in config.models and not tm.tensorflow_available():
        console.print(f"[yellow]{tm.LSTM_PROFILE_HINT}; training XGBoost only[/yellow]")
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"training {pair.long}/{pair.short}", total=None)

        def progress(what: str, done: int, total: int) -> None:
            bar.update(task, description=what, completed=done, total=total)

        report = tm.train(pair, config, source=args.source, progress=progress)

    folds = Table(title="Walk-forward validation (out of sample, gross rule return)")
    for col in (
        "model",
        "fold",
        "trained to",
        "tested",
        "accuracy",
        "log-loss",
        "AUC",
        "rule return",
    ):
        folds.add_column(col)
    for r in report.models:
        for f in r.folds:
            folds.add_row(
                r.kind,
                str(f["fold"]),
                f["train_end"],
                f"{f['test_start']} .. {f['test_end']}",
                f"{f['accuracy']:.3f}",
                f"{f['log_loss']:.4f}",
                f"{f['roc_auc']:.3f}",
                f"{f['rule_return']:+.3f}",
            )
    console.print(folds)
    start, end = report.ranges["holdout"]
    holdout = Table(title=f"Holdout {start} .. {end} (never seen in training or model selection)")
    for col in ("model", *tm.SUMMARY_COLUMNS):
        holdout.add_column(col)
    for row in tm.summary_rows(report):
        holdout.add_row(*row)
    console.print(holdout)
    tr, va = report.ranges["train"], report.ranges["validation"]
    console.print(f"train {tr[0]} .. {tr[1]}, validation {va[0]} .. {va[1]}")
    for note in report.skipped:
        console.print(f"[yellow]skipped {note}[/yellow]")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    import constants as C
    from error_handling import ConfigurationError
    from model_management import ModelRegistry

    registry = ModelRegistry()
    console = Console()
    if args.action in ("promote", "retire"):
        if not args.version:
            raise ConfigurationError(
                f"`models {args.action}` needs a VERSION (see `python main.py models`)"
            )
        getattr(registry, args.action)(args.version)
        console.print(f"{args.action}d {args.version}")
        return 0
    if args.action == "rollback":
        registry.rollback(args.kind, C.resolve_pair(args.long, args.short))
        console.print(f"rolled back {args.kind}")
        return 0
    records = registry.list()
    if not records:
        console.print("No models registered yet: run `python main.py train`.")
        return 0
    table = Table(title=f"Models in {registry.root}")
    columns = ("name", "version", "status", "created", "pair", "holdout acc", "AUC (95 % CI)")
    for col in (*columns, "integrity"):
        table.add_column(col, overflow="fold")
    for rec in records:
        metrics = rec.metadata.get("holdout_metrics", {})
        broken = registry.verify(rec.version)
        table.add_row(
            rec.name,
            rec.version,
            rec.status.value,
            rec.created[:19],
            f"{rec.long}/{rec.short}",
            f"{metrics.get('accuracy', float('nan')):.3f}",
            _auc_cell(metrics),
            "[green]OK" if not broken else f"[red]FAILED ({', '.join(broken)})",
        )
    console.print(table)
    return 0


def _auc_cell(metrics: dict[str, Any]) -> str:
    """'0.538 (0.506 .. 0.570)' from registry metadata, without importing numpy."""
    import math

    def ok(v: Any) -> bool:
        return isinstance(v, int | float) and math.isfinite(v)

    auc, ci = metrics.get("roc_auc"), metrics.get("roc_auc_ci_95") or []
    if not ok(auc):
        return "n/a"
    if len(ci) == 2 and all(ok(v) for v in ci):
        return f"{auc:.3f} ({ci[0]:.3f} .. {ci[1]:.3f})"
    return f"{auc:.3f}"


def cmd_drift(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    import constants as C
    from model_drift_detection import MODEL_TABLE_HEADER, drift_report

    pair = C.resolve_pair(args.long, args.short)
    report = drift_report(pair, window=args.window, emit=not args.no_alerts)
    table = Table(title=f"Drift of the last {args.window} bars, {pair.long}/{pair.short}")
    for col in MODEL_TABLE_HEADER:
        table.add_column(col, overflow="fold")
    for row in report.to_table_rows():
        table.add_row(*row)
    console = Console()
    console.print(table)
    n = len(report.drifted)
    console.print(
        f"{n} drifted result{'s' if n != 1 else ''}; {report.alerts_written} alert line(s) written"
        if n
        else "No drift."
    )
    return 1 if n else 0


def _trading_config(args: argparse.Namespace) -> Any:
    """TradingConfig from the defaults, --config FILE, then the options given (validated by the
    dataclasses)."""
    import dataclasses

    import constants as C
    import transaction_costs as tc
    from error_handling import ConfigurationError
    from pair_engine import TradingConfig

    config = TradingConfig.from_toml(args.config) if args.config else TradingConfig()
    for flag, path, _, _ in TRADING_OPTIONS:  # one at a time: an error names its option
        value = getattr(args, _option_dest(path))
        if value is None:
            continue
        try:
            config = config.with_values({path: value})
        except ConfigurationError as exc:
            raise ConfigurationError(f"{flag} {value}: {exc}") from None
    execution = config.execution
    if args.flat_commission is not None:
        execution = dataclasses.replace(execution, costs=tc.CostModel.flat(args.flat_commission))
    recalls: dict[str, list[str]] = {}
    pair = C.resolve_pair(args.long, args.short)
    for item in args.recall:
        sym, _, day = item.partition(":")
        if not day:
            raise ConfigurationError(f"--recall wants SYM:YYYY-MM-DD, got {item!r}")
        symbol = C.validate_symbol(sym.strip().upper())
        if symbol not in pair.tickers:
            raise ConfigurationError(
                f"--recall {item}: {symbol} is not a leg of {pair.long}/{pair.short}"
            )
        try:
            _iso_date(day)
        except argparse.ArgumentTypeError as exc:
            raise ConfigurationError(f"--recall {item}: {exc}") from None
        recalls.setdefault(symbol, []).append(day.strip())
    if recalls:
        execution = dataclasses.replace(
            execution, recall_dates={k: tuple(v) for k, v in recalls.items()}
        )
    htb = {
        C.validate_symbol(s.strip().upper()) for s in args.hard_to_borrow.split(",") if s.strip()
    }
    if htb:
        execution = dataclasses.replace(execution, hard_to_borrow=frozenset(htb))
    return dataclasses.replace(config, execution=execution)


def _backtest_request(args: argparse.Namespace) -> Any:
    """The command line as a BacktestRequest (every value validated by the dataclasses)."""
    import backtest_strategy as bt
    import constants as C

    pair = C.resolve_pair(args.long, args.short)
    config = _trading_config(args)
    return bt.BacktestRequest(
        pair=pair,
        start=args.start,
        end=args.end,
        model_version=args.model,
        allow_in_sample=args.allow_in_sample,
        signal_file=args.signals,
        zscore_entry=args.zscore_entry,
        zscore_exit=args.zscore_exit,
        benchmark_rule=args.benchmark_rule,
        config=config,
        write_charts=not args.no_charts,
        engine=args.engine,
    )


def _fmt(value: Any, kind: str) -> str:
    """A report cell: pct, ratio, usd or int; n/a for missing or non-finite values."""
    import math

    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if kind == "pct":
        return f"{value:+.2%}"
    if kind == "pct0":
        return f"{value:.2%}"
    if kind == "usd":
        return f"${value:,.2f}"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "ci":
        low, high = value
        if low is None or high is None:
            return "n/a"
        return f"{low:.2f} .. {high:.2f}"
    if kind == "p":
        return "<0.001" if value < 0.001 else f"{value:.3f}"
    return f"{value:.2f}"


REPORT_ROWS = (
    ("total return", "total_return", "pct"),
    ("CAGR", "cagr", "pct"),
    ("Sharpe", "sharpe", "ratio"),
    ("Sharpe 95 % CI", "sharpe_ci_95", "ci"),
    ("P(Sharpe > 0)", "psr", "p"),
    ("deflated Sharpe (N trials)", "dsr", "dsr"),
    ("vs z-score rule: p", "p_vs_zscore", "p"),
    ("vs buy & hold: p", "p_vs_buy_hold", "p"),
    ("Sortino", "sortino", "ratio"),
    ("max drawdown", "max_drawdown", "pct"),
    ("Calmar", "calmar", "ratio"),
    ("VaR 95% (1 day)", "var_95", "pct0"),
    ("CVaR 95% (1 day)", "cvar_95", "pct0"),
    ("VaR 99% (1 day)", "var_99", "pct0"),
    ("CVaR 99% (1 day)", "cvar_99", "pct0"),
    ("final equity", "final_equity", "usd"),
    ("round trips", "round_trips", "int"),
    ("win rate", "win_rate", "pct0"),
    ("fills", "fills", "int"),
    ("turnover (x equity / yr)", "turnover_per_year", "ratio"),
    ("total costs", "total_costs", "usd"),
)


def cmd_backtest(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    import backtest_strategy as bt
    from trial_ledger import deflated_over

    request = _backtest_request(args)
    console = Console()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("backtest: loading data and signals", total=None)

        def progress(what: str, done: int, total: int) -> None:
            bar.update(
                task, description=f"no model yet, training: {what}", completed=done, total=total
            )

        report = bt.backtest(request, progress=progress)
    s = report.summary
    run = s["run"]
    strat, zs, bh = s["strategy"], s["benchmarks"]["zscore_rule"], s["benchmarks"]["buy_hold_long"]
    long, short = run["pair"]
    sample = "[bold red]IN-SAMPLE[/bold red]" if run.get("in_sample") else "out of sample"
    title = (
        f"Backtest {long}/{short} {run['start']} .. {run['end']} ({run['bars']:,} bars, {sample})"
    )
    table = Table(title=title)
    table.add_column("")
    table.add_column(f"strategy ({run['strategy']})", justify="right")
    table.add_column("z-score rule", justify="right")
    table.add_column(f"buy & hold {long}", justify="right")
    columns = (strat, zs, bh)
    for name, key, kind in REPORT_ROWS:
        if kind == "dsr":  # the deflated Sharpe names how many trials it deflates by, and when
            name = "DSR " + deflated_over(strat.get("trials", 1), strat.get("trials_as_of"))
            cells = [
                _fmt(c.get(key), "p")
                + ("" if c.get("trials") == strat.get("trials") else f" ({c.get('trials')})")
                for c in columns
            ]
        else:
            # "-": a figure that does not apply (a benchmark against itself, trades of buy & hold)
            cells = [
                "-" if key not in c or (kind == "p" and c[key] is None) else _fmt(c[key], kind)
                for c in columns
            ]
        table.add_row(name, *cells)
    console.print(table)
    if strat.get("verdict"):
        console.print(f"[bold]verdict:[/bold] {strat['verdict']}")
    costs = Table(title="Costs by kind (USD)")
    costs.add_column("kind")
    costs.add_column("strategy", justify="right")
    costs.add_column("z-score rule", justify="right")
    for kind in bt.COST_KINDS:
        costs.add_row(kind, _fmt(strat["costs"][kind], "usd"), _fmt(zs["costs"][kind], "usd"))
    console.print(costs)
    rejected = strat["rejections"]
    if rejected or zs["rejections"]:
        rej = Table(title="Orders refused by the risk gate")
        rej.add_column("reason")
        rej.add_column("strategy", justify="right")
        rej.add_column("z-score rule", justify="right")
        for reason in sorted(set(rejected) | set(zs["rejections"])):
            rej.add_row(reason, str(rejected.get(reason, 0)), str(zs["rejections"].get(reason, 0)))
        console.print(rej)
    else:
        console.print("Risk gate: no order refused.")
    if strat.get("halted_at"):
        liquidated = strat.get("liquidated_at")
        console.print(
            f"[bold red]drawdown limit hit on the {strat['halted_at']} close: no entries after "
            + (
                f"it; positions liquidated on {liquidated}"
                if liquidated
                else "it; the liquidation was due after the last bar (positions still held)"
            )
            + "[/bold red]"
        )
    if run.get("versions"):
        console.print(
            f"model: {', '.join(run['versions'])} (validated to {run['in_sample_until']})"
        )
    for note in report.notes:
        console.print(f"note: {note}")
    console.print(f"results: {report.run_dir}")
    return 0


def _scan_rules(args: argparse.Namespace) -> tuple[Any, ...]:
    """The scan's rule parameter sets: --grid's, or the one set of --entry-z/--exit-z."""
    import pair_scan as ps
    import parameter_sweep as psw
    from error_handling import ConfigurationError

    if args.grid:
        if args.entry_z is not None or args.exit_z is not None:
            raise ConfigurationError("give either --grid or --entry-z/--exit-z, not both")
        return psw.parse_grid(args.grid, model=False, rule=args.rule)[0]
    default = ps.RuleParameters()
    entry = default.entry_z if args.entry_z is None else args.entry_z
    exit_z = default.exit_z if args.exit_z is None else args.exit_z
    return (ps.RuleParameters(entry, exit_z, rule=args.rule),)


def cmd_scan(args: argparse.Namespace) -> int:
    import time

    from rich.table import Table

    import constants as C
    import pair_scan as ps
    import task_runner as tr
    from error_handling import ConfigurationError

    if args.adopt is not None:
        return _adopt(args.adopt)
    if args.jobs == 0:
        raise ConfigurationError("--jobs must be -1 (all cores) or a positive number: 0")
    if args.recall or args.hard_to_borrow:
        raise ConfigurationError("scan does not take --recall or --hard-to-borrow (pair-specific)")
    models = _model_pairs(args.models)
    request = ps.ScanRequest(
        universe=args.universe,
        start=args.start,
        end=args.end,
        settings=ps.ScanSettings(
            formation_bars=args.formation_bars,
            trading_bars=args.trading_bars,
            rules=_scan_rules(args),
            **({"coint_lags": args.coint_lags} if args.coint_lags else {}),
        ),
        config=_trading_config(args),
        top=args.top,
        write_charts=not args.no_charts,
        models=models,
    )
    several = len(request.settings.rules) > 1
    console = _wide_console(132 + 36 * bool(models) + 24 * several)
    started = time.perf_counter()
    with _task_progress() as bar:
        task = bar.add_task("scan: loading the universe", total=None)

        def progress(stage: str, done: int, total: int) -> None:
            bar.update(task, description=f"scan: {stage}", completed=done, total=total)

        home = C.paths().ensure()
        cache = None if args.no_cache else tr.TaskCache(home.data_dir / "cache" / "scan")
        with tr.runner_from_options(args.jobs, args.scheduler) as runner:
            where = _runner_where(runner)
            result, summary, folder = ps.scan(
                request,
                results_dir=home.results_dir,
                mapper=ps.runner_mapper(runner, cache),
                progress=progress,
            )
    elapsed = time.perf_counter() - started
    run = summary["run"]
    title = (
        f"Scan {run['universe']}: {run['pairs']:,} pairs, {run['windows']} windows "
        f"({run['formation_bars']} + {run['trading_bars']} bars), out of sample "
        f"{run['oos_start']} .. {run['oos_end']}"
    )
    table = Table(title=title)
    headers = ("#", "pair", *(("set",) if several else ()), "OOS Sharpe", "95 % CI", "PSR", "DSR")
    headers = (*headers, "total return", "trades")
    model_headers = ("xgb AUC (95 % CI)", "acc p") if result.model_settings else ()
    for name in (*headers, "cost bps", "half-life", "coint", *model_headers):
        justify = "left" if name in ("pair", "set") else "right"
        table.add_column(name, justify=justify, no_wrap=True)
    for i, p in enumerate(result.pairs[: args.top], 1):
        m = result.models.get((p.long, p.short))
        model_cells = (
            ("", "")
            if m is None
            else (
                _auc_cell({"roc_auc": m.auc, "roc_auc_ci_95": [m.auc_ci_low, m.auc_ci_high]}),
                _fmt(m.accuracy_p, "p"),
            )
        )
        table.add_row(
            str(i),
            p.pair,
            *((p.rule.label,) if several else ()),
            _fmt(p.sharpe, "ratio"),
            _fmt((p.sharpe_ci_low, p.sharpe_ci_high), "ci"),
            _fmt(p.psr, "p"),
            _fmt(p.dsr, "p"),
            _fmt(p.total_return, "pct"),
            _fmt(p.fills, "int"),
            _fmt(p.cost_share * 1e4, "ratio"),
            _fmt(p.median_half_life_bars, "ratio"),
            f"{p.share_cointegrated:.0%}",
            *(model_cells if model_headers else ()),
        )
    console.print(table)
    console.print(
        f"{len(result.pairs):,} trials in this scan; DSR {result.trial_count.describe()} (scan "
        f"trials in {run['statistics']['trials_file']}, Sharpe variance "
        f"{result.trial_count.sharpe_variance:.3f}); cost = total costs / traded notional; "
        "half-life: median over formation windows, bars; coint: share of formation windows with "
        f"Engle-Granger p < {run['coint_level']} (ADF lags: {run['coint_lags']})"
    )
    if result.model_settings is not None:
        bars = [m.scored_bars for m in result.models.values()]
        console.print(
            f"models: XGBoost on the top {len(result.models)} pairs, walk-forward in "
            f"{len(result.model_blocks)} folds over the out-of-sample span (each trains only "
            "on earlier bars); "
            f"AUC pooled over {min(bars, default=0):,}..{max(bars, default=0):,} scored bars per "
            "pair with its DeLong 95 % CI; acc p: one-sided binomial p of the accuracy against "
            "the scored bars' majority rate"
        )
    console.print(f"time: {elapsed:,.1f} s ({where})")
    console.print(f"results: {folder}")
    return 0


def _task_progress() -> Any:
    """The progress bar of a task run (stderr, gone when done): description, bar, done/total,
    elapsed, eta."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )


def _runner_where(runner: Any) -> str:
    """Where a task runner runs, for the time line."""
    import task_runner as tr

    if isinstance(runner, tr.SerialRunner):
        return "in this process"
    if isinstance(runner, tr.LocalRunner):
        return f"{runner.jobs if runner.jobs > 0 else os.cpu_count()} local processes"
    return "on the Dask cluster"


def _wide_console(width: int = 132) -> Any:
    """A console for tables: a pipe or a file gets the whole table (at least `width` columns),
    not an 80-column squeeze."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=max(console.width, width))


def cmd_sweep(args: argparse.Namespace) -> int:
    import time

    from rich.table import Table

    import constants as C
    import pair_scan as pscan
    import parameter_sweep as psw
    import task_runner as tr
    from error_handling import ConfigurationError

    if args.jobs == 0:
        raise ConfigurationError("--jobs must be -1 (all cores) or a positive number: 0")
    if args.recall or args.hard_to_borrow:
        raise ConfigurationError("sweep does not take --recall or --hard-to-borrow")
    if args.model_version and not args.model:
        raise ConfigurationError("--model-version needs --model xgb|lstm")
    candidates, skipped = psw.parse_grid(args.grid, model=args.model is not None, rule=args.rule)
    formation = args.formation_bars or (args.trading_bars if args.model else 252)
    request = psw.SweepRequest(
        pair=C.resolve_pair(args.long, args.short),
        settings=psw.SweepSettings(candidates, formation, args.trading_bars, args.train_windows),
        config=_trading_config(args),
        start=args.start,
        end=args.end,
        model=args.model,
        model_version=args.model_version,
    )
    started = time.perf_counter()
    with _task_progress() as bar:
        task = bar.add_task("sweep: loading the pair", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, description="sweep: windows", completed=done, total=total)

        def train_progress(step: str, done: int = 0, total: int = 0) -> None:
            bar.update(task, description=f"sweep: training {step}")

        home = C.paths().ensure()
        cache = None if args.no_cache else tr.TaskCache(home.data_dir / "cache" / "sweep")
        with tr.runner_from_options(args.jobs, args.scheduler) as runner:
            result, summary, folder, notes = psw.sweep(
                request,
                home=home,
                mapper=pscan.runner_mapper(runner, cache),
                progress=progress,
                train_progress=train_progress,
            )
            where = _runner_where(runner)
    elapsed = time.perf_counter() - started
    console = _wide_console()
    run, wf, hind = summary["run"], summary["walk_forward"], summary["best_fixed_in_hindsight"]
    n_sets = len(request.settings.candidates)
    head = Table(
        title=f"Sweep {result.pair} ({result.source}): {n_sets} parameter sets, "
        f"{run['windows']} out-of-sample windows, {run['oos_start']} .. {run['oos_end']}"
    )
    for name in ("", "Sharpe", "95 % CI", "PSR", "DSR", "total return", "trades", "costs"):
        head.add_column(name, justify="left" if not name else "right", no_wrap=True)
    head.add_row(
        "walk-forward (out of sample)",
        _fmt(wf["sharpe"], "ratio"),
        _fmt(wf["sharpe_ci_95"], "ci"),
        _fmt(wf["psr"], "p"),
        _fmt(wf["dsr"], "p") + f" ({wf['trials']:,})",
        _fmt(wf["total_return"], "pct"),
        _fmt(wf["fills"], "int"),
        _fmt(wf["total_costs"], "usd"),
    )
    head.add_row(
        f"best fixed set in hindsight (#{hind['index']})",
        _fmt(hind["sharpe"], "ratio"),
        "",
        "",
        "",
        _fmt(hind["total_return"], "pct"),
        "",
        "",
    )
    console.print(head)
    shown = result.choices[-args.show :]
    per = Table(title=f"Chosen set per window (latest {len(shown)} of {len(result.choices)})")
    for name in ("window", "trading dates", "chosen set", "in-sample Sharpe", "OOS return"):
        per.add_column(name, justify="right" if name not in ("chosen set",) else "left")
    for c in shown:
        per.add_row(
            str(c.window_index),
            f"{c.trading_start} .. {c.trading_end}",
            c.label,
            _fmt(c.in_sample_sharpe, "ratio"),
            _fmt(c.oos_return, "pct"),
        )
    console.print(per)
    grid = Table(title="The grid: each set as a fixed choice over the same windows (hindsight)")
    for name in ("#", "set", "times chosen", "OOS Sharpe", "total return"):
        grid.add_column(name, justify="left" if name == "set" else "right")
    for row in summary["candidates"]:
        grid.add_row(
            str(row["index"]),
            row["label"],
            str(row["times_chosen"]),
            _fmt(row["oos_sharpe_fixed"], "ratio"),
            _fmt(row["oos_return_fixed"], "pct"),
        )
    console.print(grid)
    for note in notes:
        console.print(f"note: {note}")
    if skipped:
        console.print(
            f"note: {skipped} grid combination(s) skipped (exit_z >= entry_z or sell > buy)"
        )
    console.print(
        f"DSR {result.trial_count.describe()} (sweep trials on {result.pair} over these dates in "
        f"{run['statistics']['trials_file']}, Sharpe variance {wf['trial_sharpe_variance']:.3f}); "
        f"choice: best Sharpe over the previous {run['train_windows']} windows"
    )
    console.print(f"time: {elapsed:,.1f} s ({where})")
    console.print(f"results: {folder}")
    return 0


def _adopt(text: str) -> int:
    """`scan --adopt LONG/SHORT`: check the pair is in the latest scan, process its data, write it
    into .env, train its models when it has no active one, and say what was done. A refusal
    (malformed pair, not in the scan, prices missing or invalid) leaves .env unchanged."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    import constants as C
    import pair_scan as ps
    import process_stock_data as psd
    import train_model as tm
    from error_handling import ConfigurationError
    from trial_ledger import deflated_over

    legs = text.strip().split("/")
    if len(legs) != 2 or not all(leg.strip() for leg in legs):
        raise ConfigurationError(f"--adopt {text!r} is not a pair LONG/SHORT, e.g. AMD/BAC")
    pair = C.Pair(legs[0], legs[1])
    home = C.paths()
    scans = ps.scan_folders(home.results_dir)
    if not scans:
        raise ConfigurationError(
            f"--adopt: no scan in {home.results_dir}: run `python main.py scan` first"
        )
    found = ps.scanned_pair(scans[0], pair.long, pair.short)
    if found is None:
        raise ConfigurationError(
            f"--adopt: {pair.long}/{pair.short} is not in the latest scan {scans[0].name} "
            f"({home.results_dir}); pick a pair from its pairs.csv or scan a universe with both"
        )
    # Process before anything is adopted: a pair whose prices the data source lacks or that break
    # a validation rule is refused here, with .env unchanged.
    home = home.ensure()
    source = C.data_source_name()
    with Console(stderr=True).status(f"processing {pair.long}/{pair.short} from {source} ..."):
        _, processed = psd.process(source, pair, home=home)
    env_file = C.env_file()
    before = _read_env_keys(env_file)
    _set_env_keys(env_file, {C.ENV_TICKER_LONG: pair.long, C.ENV_TICKER_SHORT: pair.short})
    # Whole lines, also in a pipe; no markup: a path or a value may hold "[".
    console = Console(soft_wrap=True, markup=False)
    scanned_as = "" if found.pair.upper() == f"{pair.long}/{pair.short}" else f" as {found.pair}"
    console.print(
        f"adopted {pair.long}/{pair.short}: TICKER_LONG and TICKER_SHORT set in {env_file}"
    )
    ci = _fmt((found.sharpe_ci_low, found.sharpe_ci_high), "ci")
    console.print(
        f"scan {found.scan_id}{scanned_as}: rank {found.rank} of {found.pairs_scanned}, OOS Sharpe "
        f"{_fmt(found.sharpe, 'ratio')} (95 % CI {ci}), PSR {_fmt(found.psr, 'p')}, "
        f"DSR {_fmt(found.dsr, 'p')} ({deflated_over(found.trials, found.trials_as_of)})"
    )
    console.print(
        f"data: {processed.rows:,} rows {processed.start} .. {processed.end} from "
        f"{processed.source} in {processed.path}"
    )
    for key, value in ((C.ENV_TICKER_LONG, pair.long), (C.ENV_TICKER_SHORT, pair.short)):
        shell = os.environ.get(key, "")
        if shell.strip() and shell != before.get(key) and shell.upper() != value:
            console.print(
                f"{key}={shell} is set in the environment and wins over .env: unset it "
                "(or pass --long/--short) to trade the adopted pair",
                style="yellow",
            )
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"{pair.long}/{pair.short}: checking its models", total=None)

        def progress(what: str, done: int, total: int) -> None:
            bar.update(task, description=what, completed=done, total=total)

        trained = tm.ensure_active_model(pair, home, progress=progress)
    console.print(trained or f"models: an active model for {pair.long}/{pair.short} is present")
    console.print("next: python main.py backtest")
    return 0


def _read_env_keys(path: Any) -> dict[str, str]:
    """KEY=value pairs of a .env file (empty when absent); the last of a repeated key wins."""
    try:
        from dotenv import dotenv_values
    except ImportError:
        return {}
    if not path.is_file():
        return {}
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def _set_env_keys(path: Any, values: dict[str, str]) -> None:
    """Set `values` in the .env file at `path` atomically: each `KEY=` line (also `export KEY=`)
    of those keys is rewritten in place, every other line and comment kept byte for byte, keys
    not there yet appended; the file is created (0600: a .env may hold secrets) when absent."""
    import re

    from atomic_io import atomic_write_text

    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    mode = path.stat().st_mode & 0o777 if path.is_file() else 0o600
    lines = text.splitlines(keepends=True)
    seen: set[str] = set()
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*(?:export\s+)?)([A-Za-z_][A-Za-z0-9_]*)\s*=", line)
        if match and match.group(2) in values:
            key = match.group(2)
            end = "\n" if line.endswith("\n") else ""
            lines[i] = f"{match.group(1)}{key}={values[key]}{end}"
            seen.add(key)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    lines += [f"{key}={value}\n" for key, value in values.items() if key not in seen]
    atomic_write_text(path, "".join(lines), mode=mode)


def cmd_risk(args: argparse.Namespace) -> int:
    from rich.console import Console

    import constants as C
    import risk_management as rm
    from error_handling import RiskStateError

    home = C.paths().ensure()
    console = Console()
    if args.action == "reset":
        try:
            manager = rm.RiskManager(state_path=home.risk_state_file, home=home.home)
            manager.reset(args.equity)
        except RiskStateError:  # a corrupt state file: start it again
            manager = rm.RiskManager.reset_file(home.risk_state_file, args.equity, home=home.home)
        console.print("halt cleared; new entries allowed")
    else:
        manager = rm.RiskManager(state_path=home.risk_state_file, home=home.home)
    peak = manager.equity_peak
    state = (
        f"[bold red]HALTED[/bold red] ({manager.halt_reason})"
        if manager.halted
        else "trading allowed"
    )
    console.print(f"risk state: {state}")
    if manager.drawdown_bar is not None:
        console.print(
            f"liquidation due: the breach was seen on the {manager.drawdown_bar.date()} close; "
            "the loop liquidates --fill-delay bars after it"
        )
    console.print(f"equity peak: {'n/a' if not peak else f'${peak:,.2f}'}")
    console.print(f"file: {home.risk_state_file}")
    return 0


LIVE_CONFIRMATION = "TRADE REAL MONEY"
ENV_LIVE_CONFIRM = "TRADING_LIVE_CONFIRM"


def _confirm_live() -> None:
    """--live: an explicit typed confirmation, or TRADING_LIVE_CONFIRM for unattended runs."""
    from error_handling import ConfigurationError

    if os.environ.get(ENV_LIVE_CONFIRM, "") == LIVE_CONFIRMATION:
        return
    if not sys.stdin.isatty():
        raise ConfigurationError(
            f"--live trades real money: run it in a terminal to confirm, or set "
            f'{ENV_LIVE_CONFIRM}="{LIVE_CONFIRMATION}" for unattended runs'
        )
    answer = input(f'Real money will be traded. Type "{LIVE_CONFIRMATION}" to go on: ')
    if answer.strip() != LIVE_CONFIRMATION:
        raise ConfigurationError("live trading not confirmed; nothing was done")


def _live_keys(home: Any) -> tuple[str, str]:
    """Real money: the Alpaca keys must come from the encrypted store, not the environment."""
    import credential_manager as cm
    from error_handling import ConfigurationError

    if not home.credentials_file.exists():
        raise ConfigurationError(
            "--live needs ALPACA_API_KEY and ALPACA_SECRET_KEY in the encrypted credential store "
            "(keys in the environment are not enough for real money): run `python main.py "
            "credentials set ALPACA_API_KEY` and `... ALPACA_SECRET_KEY`"
        )
    store = cm.CredentialStore.open(home.credentials_file, cm.master_password())
    missing = [n for n in ("ALPACA_API_KEY", "ALPACA_SECRET_KEY") if n not in store.names()]
    if missing:
        raise ConfigurationError(
            f"--live needs {' and '.join(missing)} in the encrypted credential store: run "
            f"`python main.py credentials set {missing[0]}`"
        )
    return store.get("ALPACA_API_KEY"), store.get("ALPACA_SECRET_KEY")


def cmd_live(args: argparse.Namespace) -> int:
    import pandas as pd

    import constants as C
    import live_trading as lt
    from error_handling import ConfigurationError

    home = C.paths().ensure()
    pair = C.resolve_pair(args.long, args.short)
    interval = args.interval
    if interval is None:
        try:
            interval = float(os.environ.get("TRADING_INTERVAL_S", "300"))
        except ValueError:
            raise ConfigurationError("TRADING_INTERVAL_S must be a number of seconds") from None
    start = end = None
    if args.replay:
        try:
            start, end = (pd.Timestamp(d) for d in args.replay)
        except ValueError:
            raise ConfigurationError(
                f"--replay wants two dates YYYY-MM-DD, got {' '.join(args.replay)}"
            ) from None
        if args.live or args.broker != "simulated":
            raise ConfigurationError("--replay runs with the simulated broker only")
        # The replay starts before the first session and ends after the last one.
        start = start.tz_localize("America/New_York").tz_convert("UTC")
        end = (end + pd.Timedelta(days=1)).tz_localize("America/New_York").tz_convert("UTC")
    config = lt.LiveConfig(
        interval_s=interval,
        once=args.once,
        live=args.live,
        replay_start=start,
        replay_end=end,
        speed=args.speed,
        flatten_on_deadman=args.flatten_on_deadman,
        trading=_trading_config(args),
        signal_file=args.signals,
    )
    broker = None
    if args.live or args.broker == "alpaca":
        import alert_dispatch
        import trading_api as ta

        # Before credentials or a confirmation are asked for: the sizing cannot trade there.
        lt.refuse_unsupported_sizing(config.trading, ta.AlpacaBroker)

        options: dict[str, Any] = {
            "on_breaker_change": alert_dispatch.breaker_alert_hook(home.home),
            "fill_policy": ta.FillPolicy(
                timeout_s=args.fill_timeout, unfilled_reduce=args.unfilled_reduce
            ),
        }
        if args.live:
            api_key, secret_key = _live_keys(home)
            _confirm_live()
            broker = ta.AlpacaBroker(
                api_key,
                secret_key,
                paper=False,
                trading_url=os.environ.get("ALPACA_TRADING_URL") or None,
                data_url=os.environ.get("ALPACA_DATA_URL") or None,
                **options,
            )
        else:
            broker = ta.AlpacaBroker.from_environment(paper=True, home=home.home, **options)
    print(
        f"live loop: {'LIVE (real money)' if args.live else 'paper'}, "
        f"{broker.name if broker else 'simulated'} broker, {pair.long}/{pair.short}"
        + (f", replay {args.replay[0]}..{args.replay[1]}" if args.replay else "")
        + "; Ctrl-C stops it",
        flush=True,
    )
    summary = lt.run_trading_loop(
        paper_trading=not args.live, config=config, pair=pair, home=home, broker=broker
    )
    equity = "n/a" if summary.equity is None else f"${summary.equity:,.2f}"
    print(
        f"stopped ({summary.stopped_by}): {summary.iterations} iterations, "
        f"{summary.predictions} predictions on {summary.bars} new bars, {summary.orders} orders, "
        f"{summary.rejections} refused by the risk gate; equity {equity}"
    )
    if summary.orders == 0 and summary.idle_reasons:
        print("no order: " + "; ".join(summary.idle_reasons))
    print(f"positions: {home.positions_file}; audit: {home.audit_log}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    # live_state, not live_trading: status imports no pandas, numpy or calendar (fast start).
    import constants as C
    import live_state

    home = C.paths()
    st = live_state.status(home)
    beat = st.get("heartbeat")
    pid = st.get("loop_pid")
    # No process holds the lock, yet the last run wrote no `stop` record: it was killed.
    died = pid is None and st.get("last_audit_event") not in (None, "stop")
    if beat is None and pid is None and st.get("last_audit_event") is None:
        print("loop: not started yet: run `python main.py live` (or --replay to try it)")
    else:
        if pid is not None:
            state = f"RUNNING (pid {pid}; {beat.status if beat else 'no heartbeat yet'})"
        elif died:
            said = f"its last heartbeat said {beat.status!r}" if beat else "no heartbeat"
            state = f"STOPPED (not running: it died without a `stop` record; {said})"
        else:
            state = "STOPPED" if beat else "STOPPED (no iteration completed; see `audit tail`)"
        if beat is None:
            print(f"loop: {state}")
    if beat is not None:
        age = st["heartbeat_age_s"]
        print(
            f"loop: {state}; last heartbeat {age:,.0f} s ago; mode {beat.mode.upper()}, broker "
            f"{beat.broker}"
        )
        breakers = beat.circuit_breakers
        print(
            "circuit breakers (as the loop last recorded them): "
            + (", ".join(f"{k} {v}" for k, v in breakers.items()) or "none in use")
        )
        if beat.broker_error:
            print(f"broker: last failure: {beat.broker_error}")
    if beat is not None and beat.clock_source and pid is not None:
        # The running loop decides by its broker's clock: show that, and where it came from.
        print(
            f"market: {'OPEN' if beat.market_open else 'closed'} by {beat.clock_source} at "
            f"{beat.loop_time} (the loop's last heartbeat); next open {beat.next_open}"
        )
        print(
            f"local NYSE calendar now: {'open' if st['market_open_now'] else 'closed'}; next "
            f"open {st['next_open']}"
        )
    else:
        print(
            f"market: {'OPEN' if st['market_open_now'] else 'closed'} now by the local NYSE "
            f"calendar; next open {st['next_open']}"
        )
        if beat is not None and beat.clock_source:
            print(
                f"the loop last saw the market {'open' if beat.market_open else 'closed'} by "
                f"{beat.clock_source} at {beat.loop_time}"
            )
    print(
        f"risk: {'HALTED (' + str(st['halt_reason']) + ')' if st['halted'] else 'trading allowed'}"
    )
    positions = st.get("positions")
    if positions is None:
        print("positions: none yet (run `python main.py live` to create positions.json)")
    else:
        legs = ", ".join(
            f"{sym} {p.qty:+,} @ {p.avg_entry_price:,.2f}" for sym, p in positions.positions.items()
        )
        print(
            f"positions: {legs or 'flat'}; equity ${positions.equity:,.2f}, cash "
            f"${positions.cash:,.2f}; last bar {positions.last_processed_bar}"
        )
        if positions.open_orders:
            print(
                "open orders: "
                + ", ".join(
                    f"{o['side']} {o['qty']} {o['symbol']} ({o['filled_qty']} filled, "
                    f"{o['status']})"
                    for o in positions.open_orders
                )
            )
        if positions.foreign:
            print(
                "outside the pair (never traded by the loop, kept out of its limits): "
                + ", ".join(
                    f"{sym} {p.qty:+,} @ {p.market_price:,.2f} (${p.qty * p.market_price:,.2f})"
                    for sym, p in positions.foreign.items()
                )
            )
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    import importlib.util
    import signal
    from pathlib import Path

    from child_processes import run_child
    from error_handling import ConfigurationError

    if importlib.util.find_spec("streamlit") is None:
        raise ConfigurationError("the dashboard needs streamlit: run ./install.sh (full profile)")
    script = Path(__file__).resolve().parent / "dashboard.py"
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(script),
        "--server.address",
        args.address,
        "--server.port",
        str(args.port),
    ]
    print(f"dashboard on http://{args.address}:{args.port} (Ctrl-C stops it)", flush=True)
    # A child that dies with this process (SIGKILL included) and gets its stop signals, so no
    # Streamlit server keeps the port after the launcher is gone. cwd: Streamlit reads
    # .streamlit/config.toml (127.0.0.1, headless) from there.
    code = run_child(command, cwd=script.parent)
    return 0 if code in (0, 128 + signal.SIGINT, 128 + signal.SIGTERM) else code


def cmd_alerts(args: argparse.Namespace) -> int:
    import socket
    from datetime import UTC, datetime

    import alert_dispatch as ad
    import constants as C
    from error_handling import AlertDeliveryError, ConfigurationError

    home = C.paths().ensure()
    try:
        webhook = ad.WebhookConfig.from_env()
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    dispatcher = ad.AlertDispatcher(home.home, webhook=webhook, coalesce_window_s=0)
    now = datetime.now(UTC)
    alert = ad.Alert(
        ad.Severity.parse(args.severity),
        "alerts_test",
        "Test alert",
        f"test alert from `python main.py alerts test` on {socket.gethostname()} at "
        f"{now:%Y-%m-%d %H:%M:%S} UTC; no action needed",
        {"test": True},
        now,
    )
    result = dispatcher.dispatch(alert)
    print(f"file:    {home.alerts_log}")
    if webhook is None:
        print(
            f"webhook: not configured: nobody is paged. Set {ad.ENV_WEBHOOK_URL} in .env (a Slack "
            "or Discord webhook URL, or any receiver that accepts a JSON POST)",
            file=sys.stderr,
        )
        return 0
    delivered = dispatcher.flush(args.timeout)
    dispatcher.close(timeout_s=0)
    target = ad.display_url(webhook.url)
    signed = " (signed)" if webhook.secret else " (unsigned: set ALERT_WEBHOOK_SECRET to sign)"
    if not delivered or not dispatcher.deliveries:
        raise AlertDeliveryError(
            f"webhook {target}: no answer within {args.timeout:g} s ({result.webhook})"
        )
    outcome = dispatcher.deliveries[-1]
    if not outcome.ok:
        raise AlertDeliveryError(
            f"webhook {target}: delivery failed after {outcome.attempts} attempt(s) in "
            f"{outcome.elapsed_s:.1f} s: {outcome.error}"
        )
    print(
        f"webhook: delivered to {target}: HTTP {outcome.status} in "
        f"{outcome.elapsed_s * 1000:.0f} ms{signed}"
    )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Plain text on purpose: this must run before anything (rich included) is installed."""
    statuses = check_profiles()
    print(f"{'profile':<10} {'status':<11} what is missing")
    core_gaps = set(statuses[0].missing) | {n for n, _, _ in statuses[0].mismatched}
    for st in statuses:
        missing = st.missing + [f"{n} (have {h}, want {w})" for n, h, w in st.mismatched]
        if st.profile != "core" and core_gaps:
            missing = ["what core lacks"] + [m for m in missing if m.split(" ")[0] not in core_gaps]
        state = "installed" if st.complete else "incomplete"
        print(f"{st.profile:<10} {state:<11} {', '.join(missing) or '-'}")
    incomplete = [st for st in statuses if not st.complete]
    if not incomplete:
        print("All profiles are installed.")
        return 0
    target = covering_profile(incomplete)
    command = f"./install.sh {target}"
    if args.yes or (
        sys.stdin.isatty() and _confirm(f"Install profile '{target}' now ({command})? [y/N] ")
    ):
        installer = [os.path.join(PROJECT_DIR, "install.sh"), target]  # fixed path, known profile
        return subprocess.run(installer, check=False).returncode  # noqa: S603
    print(f"To install what is missing, run: {command}")
    core_ok = next(st for st in statuses if st.profile == "core").complete
    return 0 if core_ok else 1


PROJECT_DIR = os.path.dirname(os.path.abspath(__file__))
PROFILE_FILES = {
    "core": "requirements.txt",
    "lstm": "requirements-lstm.txt",
    "live": "requirements-live.txt",
    "advanced": "requirements-advanced.txt",
    "full": "requirements-full.txt",
}


@dataclass(frozen=True)
class ProfileStatus:
    """One install profile compared with what is installed."""

    profile: str
    missing: list[str]
    mismatched: list[tuple[str, str, str]]  # (package, installed, pinned)

    @property
    def complete(self) -> bool:
        return not self.missing and not self.mismatched


def pinned_requirements(file: str) -> dict[str, str]:
    """{package: pinned version} of a requirements file, following `-r` includes."""
    pins: dict[str, str] = {}
    with open(os.path.join(PROJECT_DIR, file)) as fh:
        for raw in fh:
            line = raw.split("#", 1)[0].strip()
            if line.startswith("-r"):
                pins.update(pinned_requirements(line[2:].strip()))
            elif "==" in line:
                name, version = line.split("==", 1)
                # `dask[distributed]` is installed as `dask`: the extra is not a package name.
                pins[name.split("[", 1)[0].strip()] = version.strip()
    return pins


def check_profiles(installed: Callable[[str], str | None] | None = None) -> list[ProfileStatus]:
    """Status of every profile; `installed(name)` gives an installed version or None."""
    from importlib import metadata

    def _version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    lookup = installed or _version
    out = []
    for profile, file in PROFILE_FILES.items():
        missing, mismatched = [], []
        for name, want in pinned_requirements(file).items():
            have = lookup(name)
            if have is None:
                missing.append(name)
            elif have != want:
                mismatched.append((name, have, want))
        out.append(ProfileStatus(profile, missing, mismatched))
    return out


def covering_profile(incomplete: list[ProfileStatus]) -> str:
    """The one profile whose install fixes everything listed (full when several are incomplete)."""
    names = {st.profile for st in incomplete} - {"full"}
    return names.pop() if len(names) == 1 else "full"


def _confirm(prompt: str) -> bool:
    try:
        return input(prompt).strip().lower() in ("y", "yes")
    except EOFError:
        return False


# --- Entry point ----------------------------------------------------------------------------------
def _load_env() -> None:
    """Load .env from the project directory, or $TRADING_ENV_FILE (never overriding variables
    already set)."""
    try:
        from dotenv import load_dotenv
    except ImportError:  # core profile not installed yet: `check` must still run
        return
    import constants

    load_dotenv(constants.env_file(), override=False)


def _redacted(text: str) -> str:
    try:
        from logging_config import known_secrets, redact
    except ImportError:
        return text
    return redact(text, known_secrets())


def _number(
    low: float, *, integer: bool = False, inclusive: bool = True, high: float | None = None
):
    """argparse type: a finite number >= low (or > low), <= high when given."""
    import math

    def parse(text: str) -> float | int:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            value = math.nan
        ok = math.isfinite(value) and (value >= low if inclusive else value > low)
        if ok and high is not None:
            ok = value <= high
        if not ok:
            bound = f"{'>=' if inclusive else '>'} {low:g}" + (f" and <= {high:g}" if high else "")
            kind = "a whole number" if integer else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind} {bound}")
        return value

    return parse


def _iso_date(text: str) -> str:
    """argparse type: a calendar date, YYYY-MM-DD (anything else: exit 2 naming the value)."""
    import datetime
    import re

    value = text.strip()
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            raise ValueError(value)
        datetime.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD") from None
    return value


def _one_line(text: str) -> str:
    return _redacted(" ".join(str(text).split()))


def _print_traceback() -> None:
    """--debug: the traceback, with secrets redacted (an error message may quote a key)."""
    print(_redacted(traceback.format_exc()), end="", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        # The trading options take their defaults from pair_engine (pandas): only when needed.
        parser = build_parser(trading=bool({"backtest", "live", "scan", "sweep"} & set(argv)))
    except ImportError as exc:  # the environment is not installed
        print(f"error: {exc}; run ./install.sh (see `python main.py check`)", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    start, end = getattr(args, "start", None), getattr(args, "end", None)
    if getattr(args, "replay", None):
        start, end = args.replay
    if start and end and start > end:  # both YYYY-MM-DD: text order is date order
        flag = "--replay" if getattr(args, "replay", None) else "--start/--end"
        parser.exit(2, f"error: {flag}: the end {end} is before the start {start}\n")
    _load_env()
    debug = bool(getattr(args, "debug", False))
    if args.func is cmd_check:  # needs nothing installed (constants is plain Python)
        import constants
        from error_handling import ConfigurationError

        try:
            constants.check_environment()
        except ConfigurationError as exc:
            print(f"error: {_one_line(str(exc))}", file=sys.stderr)
            return exc.exit_code
        return cmd_check(args)
    try:
        from error_handling import TradingError
    except ImportError as exc:  # the environment is not installed
        print(f"error: {exc}; run ./install.sh (see `python main.py check`)", file=sys.stderr)
        return 2
    try:
        import constants

        constants.check_environment()  # every variable, before any work
        for symbol in (getattr(args, "long", None), getattr(args, "short", None)):
            if symbol is not None:  # every command, also those that do not trade the pair
                constants.validate_symbol(symbol)
        _setup_logging(debug)
        return int(args.func(args))
    except TradingError as exc:
        if debug:
            _print_traceback()
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            _print_traceback()
        else:
            print(
                f"unexpected error: {type(exc).__name__}: {_one_line(str(exc))} "
                "(run again with --debug for the traceback)",
                file=sys.stderr,
            )
        return 1


def _setup_logging(debug: bool) -> None:
    from logging_config import setup_logging

    level = "DEBUG" if debug else os.environ.get("LOG_LEVEL", "INFO")
    setup_logging(level, console_level="DEBUG" if debug else "WARNING")


if __name__ == "__main__":
    sys.exit(main())
