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

EPILOG = """\
examples:
  python main.py process                         features for AAPL/MSFT from the bundled data
  python main.py process --long JPM --short BAC  any bundled pair
  python main.py process --source csv:my.csv     your own prices (a date + a close per ticker)
  python main.py train                           walk-forward validate, fit and register models
  python main.py models                          registered versions, status, integrity
  python main.py drift                           latest data vs the active models' training data
  python main.py check                           which install profiles are present

configuration: TICKER_LONG, TICKER_SHORT, DATA_SOURCE, TRADING_HOME, LOG_LEVEL (environment or .env;
command-line flags win).
exit codes: 0 ok, 1 unexpected, 2 usage/configuration, 3 data, 4 validation.
"""


def _common_options() -> argparse.ArgumentParser:
    """Options accepted by every command (after the command name)."""
    common = argparse.ArgumentParser(add_help=False)
    pair = common.add_argument_group("pair")
    pair.add_argument(
        "--long", metavar="SYMBOL", help="ticker to buy on an entry (default: $TICKER_LONG or AAPL)"
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


def build_parser() -> argparse.ArgumentParser:
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
    p.add_argument("--start", metavar="YYYY-MM-DD", help="first date to load (default: all)")
    p.add_argument("--end", metavar="YYYY-MM-DD", help="last date to load (default: all)")
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
    t.add_argument("--epochs", type=int, default=15, metavar="N", help="LSTM epochs at most (15)")
    t.add_argument("--folds", type=int, default=4, metavar="K", help="walk-forward folds (4)")
    t.add_argument("--lookback", type=int, default=20, metavar="BARS", help="LSTM window (20)")
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
    return parser


# --- Commands -------------------------------------------------------------------------------------
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
    for col in ("model", "accuracy", "log-loss", "AUC", "rule return"):
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
    for col in ("name", "version", "status", "created", "pair", "holdout acc", "AUC", "integrity"):
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
            f"{metrics.get('roc_auc', float('nan')):.3f}",
            "[green]OK" if not broken else f"[red]FAILED ({', '.join(broken)})",
        )
    console.print(table)
    return 0


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
                pins[name.strip()] = version.strip()
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
    """Load .env from the project directory (never overriding variables already set)."""
    try:
        from dotenv import load_dotenv
    except ImportError:  # core profile not installed yet: `check` must still run
        return
    load_dotenv(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".env"), override=False)


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
    try:
        from logging_config import known_secrets, redact
    except ImportError:
        return line
    return redact(line, known_secrets())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _load_env()
    debug = bool(getattr(args, "debug", False))
    if args.func is cmd_check:  # needs nothing installed
        return cmd_check(args)
    try:
        from error_handling import TradingError
    except ImportError as exc:  # the environment is not installed
        print(f"error: {exc}; run ./install.sh (see `python main.py check`)", file=sys.stderr)
        return 2
    try:
        _setup_logging(debug)
        return int(args.func(args))
    except TradingError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            traceback.print_exc()
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
