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
