"""A catalogue of bad inputs, each run as a user runs it (`python main.py ...` in a subprocess with
a private TRADING_HOME): every command, every data source, every state file corrupted, signal
files, configuration files, environment variables, dates, tickers, credentials and the audit log.

Each case must be refused the documented way:
- the exit code of its error class (README; `error_handling`: 2 configuration or user input,
  3 data, 4 validation, 5 risk state, 7 model integrity, 8 credentials, 9 alert delivery,
  11 audit chain), never 0;
- the last stderr line names the problem and the offending file, variable, ticker or date;
- no traceback and no "unexpected error";
- nothing written: every file under the case's folder (the home and the case's input files) has
  the same SHA-256 before and after, except logs/trading.log* and logs/alerts.log, which may
  record the refusal.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import constants as C
from tests.helpers import built_once, run, trained_template

PAIR = C.Pair("AAPL", "MSFT")
PASSWORD = "correct horse battery staple"
REPLAY = ("live", "--replay", "2022-01-10", "2022-01-14")
SIGNALS_BT = ("backtest", "--start", "2022-01-03", "--end", "2022-03-31", "--allow-in-sample")
SIGNALS_BT = (*SIGNALS_BT, "--no-charts")

Setup = Callable[[Path, Path], None]  # (home, case folder) -> writes the bad input


@dataclass(frozen=True)
class Case:
    """One bad input: `args` after `main.py` ("{tmp}" is the case folder), the home it runs in
    (empty, processed, trained, live or creds), the environment, what `setup` writes first, and
    the expected exit code and substrings of the last stderr line."""

    id: str
    args: tuple[str, ...]
    code: int
    says: tuple[str, ...]
    home: str = "empty"
    env: tuple[tuple[str, str], ...] = ()
    setup: Setup | None = field(default=None, compare=False)


def case(
    id: str,
    *args: str,
    code: int,
    says: str | tuple[str, ...],
    home: str = "empty",
    env: dict[str, str] | None = None,
    setup: Setup | None = None,
) -> Case:
    says = (says,) if isinstance(says, str) else says
    return Case(id, args, code, says, home, tuple((env or {}).items()), setup)


# --- What a setup writes ------------------------------------------------------------------------
def put(rel: str, content: str | bytes) -> Setup:
    """Write `content` to `rel` under the home."""

    def setup(home: Path, tmp: Path) -> None:
        path = home / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)

    return setup


def file(name: str, content: str | bytes) -> Setup:
    """Write `content` to `name` in the case folder (beside the home)."""

    def setup(home: Path, tmp: Path) -> None:
        path = tmp / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)

    return setup


def edit(rel: str, change: Callable[[list[str]], list[str]]) -> Setup:
    """Rewrite the lines (with their ends) of the home's `rel` through `change`."""

    def setup(home: Path, tmp: Path) -> None:
        path = home / rel
        path.write_text("".join(change(path.read_text().splitlines(keepends=True))))

    return setup


def edit_json(rel: str, change: Callable[[dict], object]) -> Setup:
    """Replace the home's JSON file `rel` by `change(its content)`."""

    def setup(home: Path, tmp: Path) -> None:
        path = home / rel
        path.write_text(json.dumps(change(json.loads(path.read_text()))))

    return setup


def both(*setups: Setup) -> Setup:
    def setup(home: Path, tmp: Path) -> None:
        for one in setups:
            one(home, tmp)

    return setup


def tamper_model(home: Path, tmp: Path) -> None:
    """Flip one byte of the registered model's largest artefact."""
    files = [p for p in (home / "models").rglob("*") if p.is_file() and p.name != "registry.json"]
    target = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))


def first_model_version(home: Path) -> str:
    return json.loads((home / "models" / "registry.json").read_text())["models"][0]["version"]


# --- Price files: real bundled closes, then one thing broken ----------------------------------
@functools.cache
def price_rows() -> tuple[str, ...]:
    """AAPL and MSFT closes 2021-01-04 .. 2022-06-30 as `date,AAPL,MSFT` lines (no header)."""
    import process_stock_data as psd

    close = psd.load_bundled().close[["AAPL", "MSFT"]].loc["2021-01-04":"2022-06-30"]
    return tuple(f"{d.date()},{a:.6f},{m:.6f}" for d, (a, m) in close.iterrows())


def day(i: int) -> str:
    return price_rows()[i].split(",")[0]


def prices(change: Callable[[list[str]], list[str]], header: str = "date,AAPL,MSFT") -> Setup:
    """prices.csv in the case folder: the wide bundled rows after `change`."""

    def setup(home: Path, tmp: Path) -> None:
        (tmp / "prices.csv").write_text("\n".join([header, *change(list(price_rows()))]) + "\n")

    return setup


def cell(i: int, col: int, value: str) -> Callable[[list[str]], list[str]]:
    def change(rows: list[str]) -> list[str]:
        parts = rows[i].split(",")
        parts[col] = value
        rows[i] = ",".join(parts)
        return rows

    return change


def long_format(change: Callable[[list[str]], list[str]]) -> Setup:
    """prices.csv as long rows `date,symbol,close`, after `change`."""

    def setup(home: Path, tmp: Path) -> None:
        rows = []
        for line in price_rows():
            d, a, m = line.split(",")
            rows += [f"{d},AAPL,{a}", f"{d},MSFT,{m}"]
        (tmp / "prices.csv").write_text("\n".join(["date,symbol,close", *change(rows)]) + "\n")

    return setup


def split_aapl(rows: list[str]) -> list[str]:
    """An unadjusted 4:1 split of AAPL from row 200 on."""
    out = []
    for i, row in enumerate(rows):
        d, a, m = row.split(",")
        out.append(f"{d},{float(a) / 4 if i >= 200 else float(a):.6f},{m}")
    return out


def future(rows: list[str]) -> list[str]:
    return [*rows, "2030-01-02,150.0,300.0", "2030-01-03,151.0,301.0"]


def swap(i: int) -> Callable[[list[str]], list[str]]:
    def change(rows: list[str]) -> list[str]:
        rows[i], rows[i + 1] = rows[i + 1], rows[i]
        return rows

    return change


CSV = ("process", "--source", "csv:{tmp}/prices.csv")
BINARY = bytes(range(256)) * 8


# --- Audit log edits ----------------------------------------------------------------------------
AUDIT = "logs/audit.jsonl"


def modify_line(lines: list[str]) -> list[str]:
    lines[5] = lines[5].replace("2022", "2021", 1)
    return lines


def drop_tail(lines: list[str]) -> list[str]:
    return lines[:-3]


def garbage_line(lines: list[str]) -> list[str]:
    return [*lines[:4], "this is not json\n", *lines[4:]]


def duplicate_line(lines: list[str]) -> list[str]:
    return [*lines[:4], lines[3], *lines[4:]]


def reorder(lines: list[str]) -> list[str]:
    lines[3], lines[4] = lines[4], lines[3]
    return lines


def remove_middle(lines: list[str]) -> list[str]:
    return [*lines[:5], *lines[6:]]


# --- Equity log and universe edits ---------------------------------------------------------------
EQUITY = "data/equity_paper.csv"
UNIVERSE = ("--universe", "csv:{tmp}/prices.csv")


def equity_cell(i: int, value: str, col: int = 1) -> Callable[[list[str]], list[str]]:
    """Line `i` (0 is the header) of the equity log with field `col` set to `value`."""

    def change(lines: list[str]) -> list[str]:
        parts = lines[i].rstrip("\n").split(",")
        parts[col] = value
        lines[i] = ",".join(parts) + "\n"
        return lines

    return change


def reorder_rows(lines: list[str]) -> list[str]:
    lines[1], lines[2] = lines[2], lines[1]
    return lines


# --- Signal and configuration files ---------------------------------------------------------------
def signals(text: str | bytes, name: str = "signals.csv") -> Setup:
    return file(name, text)


SIG = "{tmp}/signals.csv"
CFG = "{tmp}/trading.toml"


def toml(text: str | bytes) -> Setup:
    return file("trading.toml", text)


ENV_BAD = {
    "ENSEMBLE_MODE": "maybe",
    "SIGNAL_MODEL": "gpt",
    "ALERT_FLUSH_TIMEOUT_S": "abc",
    "TRADING_INTERVAL_S": "-1",
    "LOG_LEVEL": "LOUD",
    "DATA_SOURCE": "bloomberg",
    "TICKER_LONG": "??",
    "ALPACA_DATA_FEED": "nasdaq",
    "ALERT_WEBHOOK_URL": "not-a-url",
    "DASHBOARD_REFRESH_S": "x",
}

# Every command refuses a bad variable before doing anything (constants.check_environment).
ENV_BY_COMMAND = [
    ("process", ("process",), "ENSEMBLE_MODE", "maybe", "empty"),
    ("train", ("train", "--model", "xgb"), "SIGNAL_MODEL", "gpt", "processed"),
    ("backtest", ("backtest", "--no-charts"), "LOG_LEVEL", "LOUD", "trained"),
    ("live", REPLAY, "TRADING_INTERVAL_S", "-1", "live"),
    ("live-once", ("live", "--once"), "ALPACA_DATA_FEED", "nasdaq", "trained"),
    ("models", ("models",), "DATA_SOURCE", "bloomberg", "trained"),
    ("status", ("status",), "TICKER_LONG", "??", "live"),
    ("risk", ("risk", "status"), "ALERT_FLUSH_TIMEOUT_S", "abc", "live"),
    ("risk-reset", ("risk", "reset"), "ENSEMBLE_MODE", "maybe", "live"),
    ("audit-verify", ("audit", "verify"), "LOG_LEVEL", "LOUD", "live"),
    ("audit-tail", ("audit", "tail"), "SIGNAL_MODEL", "gpt", "live"),
    ("audit-repair", ("audit", "repair"), "DASHBOARD_REFRESH_S", "x", "live"),
    ("credentials", ("credentials", "list"), "LOG_LEVEL", "LOUD", "creds"),
    ("alerts", ("alerts", "test"), "ALERT_WEBHOOK_URL", "not-a-url", "empty"),
    ("dashboard", ("dashboard",), "DASHBOARD_REFRESH_S", "x", "live"),
    ("check", ("check",), "LOG_LEVEL", "LOUD", "empty"),
    ("drift", ("drift",), "ENSEMBLE_MODE", "maybe", "trained"),
]


def named(var: str, value: str) -> tuple[str, ...]:
    """The variable, and its value unless the value is a secret (the webhook URL is redacted)."""
    return (var,) if var == "ALERT_WEBHOOK_URL" else (var, value)


CASES: list[Case] = [
    # Environment variables, one command each and every command once.
    *[case(f"env-{k}", "status", code=2, says=named(k, v), env={k: v}) for k, v in ENV_BAD.items()],
    *[
        case(f"env-{name}-{var}", *args, code=2, says=named(var, value), home=home,
             env={var: value})
        for name, args, var, value, home in ENV_BY_COMMAND
    ],
    case("env-TRADING_INTERVAL_S-zero", *REPLAY, code=2, says="TRADING_INTERVAL_S",
         home="trained", env={"TRADING_INTERVAL_S": "0"}),
    case("env-TRADING_INTERVAL_S-word", "status", code=2, says="TRADING_INTERVAL_S",
         env={"TRADING_INTERVAL_S": "five"}),
    case("env-ALERT_FLUSH_TIMEOUT_S-negative", "alerts", "test", code=2,
         says="ALERT_FLUSH_TIMEOUT_S", env={"ALERT_FLUSH_TIMEOUT_S": "-3"}),
    case("env-DASHBOARD_REFRESH_S-negative", "dashboard", code=2, says="DASHBOARD_REFRESH_S",
         env={"DASHBOARD_REFRESH_S": "-5"}),
    case("env-ALERT_WEBHOOK_URL-ftp", "alerts", "test", code=2, says="ALERT_WEBHOOK_URL",
         env={"ALERT_WEBHOOK_URL": "ftp://example.com/hook"}),
    case("env-ALPACA_TRADING_URL-no-scheme", "status", code=2, says="ALPACA_TRADING_URL",
         env={"ALPACA_TRADING_URL": "localhost:8765"}),
    case("env-ALPACA_DATA_URL-garbage", "status", code=2, says="ALPACA_DATA_URL",
         env={"ALPACA_DATA_URL": "http//nowhere"}),
    case("env-ENSEMBLE_MODE-two", "status", code=2, says="ENSEMBLE_MODE",
         env={"ENSEMBLE_MODE": "2"}),
    case("env-TICKER_SHORT-space", "process", code=2, says="TICKER_SHORT",
         env={"TICKER_SHORT": "MS FT"}),
    case("env-DATA_SOURCE-empty-csv", "process", code=2, says="DATA_SOURCE",
         env={"DATA_SOURCE": "csv:"}),
    case("env-TRADING_HOME-is-a-file", "status", code=2, says="TRADING_HOME",
         setup=file("not-a-dir", "x"), env={"TRADING_HOME": "{tmp}/not-a-dir"}),
    case("env-TRADING_HOME-file-process", "process", code=2, says="TRADING_HOME",
         setup=file("not-a-dir", "x"), env={"TRADING_HOME": "{tmp}/not-a-dir"}),
    case("env-DATA_SOURCE-bad-csv", "process", code=4, says=("non_positive", day(100)),
         setup=prices(cell(100, 1, "-5")), env={"DATA_SOURCE": "csv:{tmp}/prices.csv"}),
    # Dates.
    case("process-start-not-a-date", "process", "--start", "2020-13-45", code=2, says="2020-13-45"),
    case("process-end-yesterday", "process", "--end", "yesterday", code=2, says="yesterday"),
    case("process-start-feb-30", "process", "--start", "2021-02-30", code=2, says="2021-02-30"),
    case("process-end-before-start", "process", "--start", "2022-01-10", "--end", "2022-01-03",
         code=2, says="2022-01-03"),
    case("process-range-without-bars", "process", "--start", "2030-01-02", code=3,
         says="2030-01-02"),
    case("backtest-start-not-a-date", "backtest", "--start", "2020-13-45", code=2,
         says="2020-13-45", home="trained"),
    case("backtest-end-yesterday", "backtest", "--end", "yesterday", code=2, says="yesterday",
         home="trained"),
    case("backtest-end-before-start", "backtest", "--start", "2022-06-01", "--end",
         "2022-01-03", "--allow-in-sample", code=2, says="2022-01-03", home="trained"),
    case("backtest-start-after-data", "backtest", "--start", "2030-01-02", "--allow-in-sample",
         code=2, says="2030-01-02", home="trained"),
    case("live-replay-end-tomorrow", "live", "--replay", "2022-01-03", "tomorrow", code=2,
         says="tomorrow", home="trained"),
    case("live-replay-start-not-a-date", "live", "--replay", "2022-13-01", "2022-02-01", code=2,
         says="2022-13-01", home="trained"),
    case("live-replay-end-before-start", "live", "--replay", "2022-03-01", "2022-01-03",
         code=2, says="2022-01-03", home="trained"),
    case("live-replay-one-date", "live", "--replay", "2022-01-03", code=2, says="--replay",
         home="trained"),
    case("live-replay-after-data", "live", "--replay", "2030-01-02", "2030-02-01", code=2,
         says="2030-01-02", home="trained"),
    case("backtest-recall-bad-date", "backtest", "--recall", "MSFT:2021-02-30", "--no-charts",
         code=2, says="2021-02-30", home="trained"),
    case("backtest-recall-no-date", "backtest", "--recall", "MSFT", "--no-charts", code=2,
         says="--recall", home="trained"),
    case("backtest-recall-not-a-leg", "backtest", "--recall", "XOM:2021-03-01", "--no-charts",
         code=2, says="XOM", home="trained"),
    # Tickers and pairs.
    case("process-same-leg-twice", "process", "--long", "AAPL", "--short", "AAPL", code=2,
         says="AAPL"),
    case("process-long-question-marks", "process", "--long", "??", code=2, says="??"),
    case("process-short-with-space", "process", "--short", "MS FT", code=2, says="MS FT"),
    case("process-long-too-long", "process", "--long", "ABCDEFGHIJKLMNOP", code=2,
         says="ABCDEFGHIJKLMNOP"),
    case("process-unknown-ticker", "process", "--long", "ZZZZ", code=3, says="ZZZZ"),
    case("train-same-leg-twice", "train", "--long", "MSFT", "--short", "MSFT", code=2,
         says="MSFT"),
    case("backtest-same-leg-twice", "backtest", "--long", "MSFT", "--short", "MSFT", code=2,
         says="MSFT", home="trained"),
    case("live-same-leg-twice", "live", "--replay", "2022-01-03", "2022-01-07", "--long", "XOM",
         "--short", "XOM", code=2, says="XOM", home="trained"),
    case("status-long-question-marks", "status", "--long", "??", code=2, says="??", home="live"),
    case("models-short-bad-symbol", "models", "--short", "M$FT", code=2, says="M$FT",
         home="trained"),
    # Data sources: csv files broken one way each.
    case("source-unknown", "process", "--source", "bloomberg", code=2, says="bloomberg"),
    case("source-csv-no-path", "process", "--source", "csv:", code=2, says="csv:"),
    case("source-csv-missing-file", "process", "--source", "csv:{tmp}/missing.csv", code=3,
         says="missing.csv"),
    case("source-csv-is-a-directory", "process", "--source", "csv:{tmp}", code=3,
         says="CSV"),
    case("csv-missing-column", *CSV, code=3, says=("MSFT", "prices.csv"),
         setup=prices(lambda rows: [r.rsplit(",", 1)[0] for r in rows], header="date,AAPL")),
    case("csv-no-date-column", *CSV, code=4, says=("missing_column", "date"),
         setup=prices(lambda rows: rows, header="day,AAPL,MSFT")),
    case("csv-non-numeric-price", *CSV, code=4, says=("non_numeric", "AAPL", day(100)),
         setup=prices(cell(100, 1, "abc"))),
    case("csv-negative-price", *CSV, code=4, says=("non_positive", "AAPL", day(100)),
         setup=prices(cell(100, 1, "-5"))),
    case("csv-zero-price", *CSV, code=4, says=("non_positive", "MSFT", day(120)),
         setup=prices(cell(120, 2, "0"))),
    case("csv-empty-cell", *CSV, code=4, says=("AAPL", day(100)),
         setup=prices(cell(100, 1, ""))),
    case("csv-infinite-price", *CSV, code=4, says=("nan_or_inf", "MSFT", day(130)),
         setup=prices(cell(130, 2, "inf"))),
    case("csv-duplicate-date", *CSV, code=4, says=("duplicate_date", day(100)),
         setup=prices(lambda rows: [*rows[:101], rows[100], *rows[101:]])),
    case("csv-unsorted-dates", *CSV, code=4, says=("non_increasing_date", day(100)),
         setup=prices(swap(100))),
    case("csv-future-dates", *CSV, code=4, says="2030-01-02", setup=prices(future)),
    case("csv-bad-date", *CSV, code=4, says=("bad_date", "2021-13-45"),
         setup=prices(cell(100, 0, "2021-13-45"))),
    case("csv-session-gap", *CSV, code=4, says=("session_gap", day(116)),
         setup=prices(lambda rows: [*rows[:100], *rows[116:]])),
    case("csv-split-artefact", *CSV, code=4, says=("split_artefact", "AAPL", day(200)),
         setup=prices(split_aapl)),
    case("csv-too-few-rows", *CSV, code=3, says=("20 bars", "prices.csv"),
         setup=prices(lambda rows: rows[:20])),
    case("csv-header-only", *CSV, code=3, says="prices.csv", setup=prices(lambda rows: [])),
    case("csv-empty-file", *CSV, code=3, says="prices.csv", setup=file("prices.csv", "")),
    case("csv-binary-file", *CSV, code=3, says="prices.csv", setup=file("prices.csv", BINARY)),
    case("csv-semicolons", *CSV, code=4, says="missing_column",
         setup=prices(lambda rows: [r.replace(",", ";") for r in rows], header="date;AAPL;MSFT")),
    case("csv-long-negative-close", *CSV, code=4, says=("non_positive", "MSFT", day(50)),
         setup=long_format(lambda rows: [*rows[:101], f"{day(50)},MSFT,-1", *rows[102:]])),
    case("csv-long-without-short-leg", *CSV, code=3, says=("MSFT", "prices.csv"),
         setup=long_format(lambda rows: [r for r in rows if ",MSFT," not in r])),
    case("train-source-unknown", "train", "--source", "bloomberg", code=2, says="bloomberg"),
    case("train-source-bad-csv", "train", "--source", "csv:{tmp}/prices.csv", code=4,
         says=("duplicate_date", day(100)),
         setup=prices(lambda rows: [*rows[:101], rows[100], *rows[101:]])),
    # Training options.
    case("train-epochs-zero", "train", "--epochs", "0", code=2, says="epochs", home="processed"),
    case("train-folds-word", "train", "--folds", "four", code=2, says="four"),
    case("train-model-gpt", "train", "--model", "gpt", code=2, says="gpt"),
    case("train-lookback-zero", "train", "--lookback", "0", code=2, says="lookback",
         home="processed"),
    # Signal files, through backtest.
    case("signals-bad-date", *SIGNALS_BT, "--signals", SIG, code=2, says="2022-13-01",
         home="trained", setup=signals("date,action\n2022-01-04,buy\n2022-13-01,sell\n")),
    case("signals-date-not-a-bar-saturday", *SIGNALS_BT, "--signals", SIG, code=2,
         says="2022-01-08", home="trained", setup=signals("date,action\n2022-01-08,buy\n")),
    case("signals-date-not-a-bar-holiday", *SIGNALS_BT, "--signals", SIG, code=2,
         says="2022-01-17", home="trained", setup=signals("date,action\n2022-01-17,buy\n")),
    case("signals-date-after-data", *SIGNALS_BT, "--signals", SIG, code=2, says="2030-01-02",
         home="trained", setup=signals("date,action\n2022-01-04,buy\n2030-01-02,sell\n")),
    case("signals-unknown-action", *SIGNALS_BT, "--signals", SIG, code=2, says="moon",
         home="trained", setup=signals("date,action\n2022-01-04,buy\n2022-01-05,moon\n")),
    case("signals-empty-action", *SIGNALS_BT, "--signals", SIG, code=2, says="line 3",
         home="trained", setup=signals("date,action\n2022-01-04,buy\n2022-01-05,\n")),
    case("signals-weight-out-of-range", *SIGNALS_BT, "--signals", SIG, code=2, says="7.5",
         home="trained", setup=signals("date,AAPL,MSFT\n2022-01-04,7.5,-0.3\n")),
    case("signals-weight-not-a-number", *SIGNALS_BT, "--signals", SIG, code=2, says="lots",
         home="trained", setup=signals("date,AAPL,MSFT\n2022-01-04,lots,-0.3\n")),
    case("signals-weights-of-other-tickers", *SIGNALS_BT, "--signals", SIG, code=2,
         says="signals.csv", home="trained", setup=signals("date,XOM,CVX\n2022-01-04,0.2,-0.2\n")),
    case("signals-short-weight-out-of-range", *SIGNALS_BT, "--signals", SIG, code=2,
         says="-7.5", home="trained",
         setup=signals("date,long_weight,short_weight\n2022-01-04,0.2,-7.5\n")),
    case("signals-missing-action-column", *SIGNALS_BT, "--signals", SIG, code=2,
         says="signals.csv", home="trained", setup=signals("date\n2022-01-04\n")),
    case("signals-missing-date-column", *SIGNALS_BT, "--signals", SIG, code=2, says="date",
         home="trained", setup=signals("day,action\n2022-01-04,buy\n")),
    case("signals-empty-file", *SIGNALS_BT, "--signals", SIG, code=2, says="signals.csv",
         home="trained", setup=signals("")),
    case("signals-binary", *SIGNALS_BT, "--signals", SIG, code=2, says="signals.csv",
         home="trained", setup=signals(BINARY)),
    case("signals-missing-file", *SIGNALS_BT, "--signals", "{tmp}/nope.csv", code=2,
         says="nope.csv", home="trained"),
    case("signals-duplicate-date", *SIGNALS_BT, "--signals", SIG, code=2, says="2022-01-04",
         home="trained", setup=signals("date,action\n2022-01-04,buy\n2022-01-04,sell\n")),
    # Signal files, through the live loop.
    case("live-signals-unknown-action", *REPLAY, "--signals", SIG, code=2, says="moon",
         home="trained", setup=signals("date,action\n2022-01-10,moon\n")),
    case("live-signals-date-not-a-bar", *REPLAY, "--signals", SIG, code=2, says="2022-01-09",
         home="trained", setup=signals("date,action\n2022-01-09,buy\n")),
    case("live-signals-weight-out-of-range", *REPLAY, "--signals", SIG, code=2, says="7.5",
         home="trained", setup=signals("date,AAPL,MSFT\n2022-01-10,7.5,-0.3\n")),
    case("live-signals-missing-file", *REPLAY, "--signals", "{tmp}/nope.csv", code=2,
         says="nope.csv", home="trained"),
    case("live-signals-empty", *REPLAY, "--signals", SIG, code=2, says="signals.csv",
         home="live", setup=signals("")),
    # Configuration files.
    case("config-missing", *SIGNALS_BT, "--config", "{tmp}/none.toml", code=2,
         says="none.toml", home="trained"),
    case("config-not-toml", *SIGNALS_BT, "--config", CFG, code=2, says="trading.toml",
         home="trained", setup=toml("{{{")),
    case("config-binary", *SIGNALS_BT, "--config", CFG, code=2, says="trading.toml",
         home="trained", setup=toml(BINARY)),
    case("config-unknown-setting", *SIGNALS_BT, "--config", CFG, code=2, says="frobnicate",
         home="trained", setup=toml("frobnicate = 1\n")),
    case("config-wrong-type", *SIGNALS_BT, "--config", CFG, code=2, says="rebalance_band",
         home="trained", setup=toml("rebalance_band = 'wide'\n")),
    case("config-negative-fill-delay", *SIGNALS_BT, "--config", CFG, code=2, says="fill",
         home="trained", setup=toml("fill_delay_bars = -1\n")),
    case("config-table-is-a-number", *SIGNALS_BT, "--config", CFG, code=2, says="sizing",
         home="trained", setup=toml("sizing = 3\n")),
    case("config-unknown-limit", *SIGNALS_BT, "--config", CFG, code=2, says="bogus",
         home="trained", setup=toml("[limits]\nbogus = 1\n")),
    case("config-negative-drawdown", *SIGNALS_BT, "--config", CFG, code=2, says="drawdown",
         home="trained", setup=toml("[limits]\nmax_drawdown_pct = -0.5\n")),
    case("config-cost-not-a-number", *SIGNALS_BT, "--config", CFG, code=2,
         says="half_spread_bps", home="trained",
         setup=toml("[execution.costs]\nhalf_spread_bps = 'x'\n")),
    case("config-hold-maybe", *SIGNALS_BT, "--config", CFG, code=2, says="hold",
         home="trained", setup=toml("hold = 'maybe'\n")),
    case("live-config-not-toml", *REPLAY, "--config", CFG, code=2, says="trading.toml",
         home="live", setup=toml("{{{")),
    case("live-config-unknown-setting", *REPLAY, "--config", CFG, code=2, says="frobnicate",
         home="live", setup=toml("frobnicate = 1\n")),
    case("live-config-missing", *REPLAY, "--config", "{tmp}/none.toml", code=2,
         says="none.toml", home="live"),
    case("live-config-wrong-type", *REPLAY, "--config", CFG, code=2, says="kelly_fraction",
         home="live", setup=toml("[sizing]\nkelly_fraction = 'half'\n")),
    # Trading options.
    case("opt-capital-negative", *SIGNALS_BT, "--capital", "-5", code=2, says="capital",
         home="trained"),
    case("opt-capital-word", *SIGNALS_BT, "--capital", "lots", code=2, says="lots",
         home="trained"),
    case("opt-capital-nan", *SIGNALS_BT, "--capital", "nan", code=2, says="capital",
         home="trained"),
    case("opt-capital-inf", *SIGNALS_BT, "--capital", "inf", code=2, says="capital",
         home="trained"),
    case("opt-fill-delay-negative", *SIGNALS_BT, "--fill-delay", "-1", code=2, says="fill delay",
         home="trained"),
    case("opt-rebalance-band-two", *SIGNALS_BT, "--rebalance-band", "2", code=2, says="band",
         home="trained"),
    case("opt-kelly-fraction-zero", *SIGNALS_BT, "--kelly-fraction", "0", code=2, says="kelly",
         home="trained"),
    case("opt-kelly-cap-nine", *SIGNALS_BT, "--kelly-cap", "9", code=2, says="kelly",
         home="trained"),
    case("opt-payoff-ratio-zero", *SIGNALS_BT, "--payoff-ratio", "0", code=2, says="payoff",
         home="trained"),
    case("opt-hold-maybe", *SIGNALS_BT, "--hold", "maybe", code=2, says="maybe",
         home="trained"),
    case("opt-remainder-never", *SIGNALS_BT, "--remainder", "never", code=2, says="never",
         home="trained"),
    case("opt-max-gross-negative", *SIGNALS_BT, "--max-gross", "-1", code=2, says="gross",
         home="trained"),
    case("opt-max-drawdown-above-one", *SIGNALS_BT, "--max-drawdown", "1.5", code=2,
         says="drawdown", home="trained"),
    case("opt-daily-loss-negative", *SIGNALS_BT, "--daily-loss-limit", "-0.1", code=2,
         says="daily", home="trained"),
    case("opt-max-leverage-zero", *SIGNALS_BT, "--max-leverage", "0", code=2, says="leverage",
         home="trained"),
    case("opt-participation-cap-zero", *SIGNALS_BT, "--participation-cap", "0", code=2,
         says="participation", home="trained"),
    case("opt-borrow-rate-negative", *SIGNALS_BT, "--borrow-rate", "-1", code=2, says="borrow",
         home="trained"),
    case("opt-half-spread-negative", *SIGNALS_BT, "--half-spread-bps", "-3", code=2,
         says="spread", home="trained"),
    case("opt-commission-min-negative", *SIGNALS_BT, "--commission-min", "-1", code=2,
         says="commission", home="trained"),
    case("opt-flat-commission-negative", *SIGNALS_BT, "--flat-commission", "-1", code=2,
         says="commission", home="trained"),
    case("opt-seed-word", *SIGNALS_BT, "--seed", "abc", code=2, says="abc", home="trained"),
    case("backtest-unknown-model", "backtest", "--model", "no-such-version", "--no-charts",
         code=2, says="no-such-version", home="trained"),
    case("live-speed-negative", *REPLAY, "--speed", "-1", code=2, says="speed", home="live"),
    case("live-interval-zero", "live", "--once", "--interval", "0", code=2, says="interval",
         home="trained"),
    case("live-fill-timeout-negative", *REPLAY, "--fill-timeout", "-1", code=2,
         says="fill", home="live"),
    case("live-broker-unknown", *REPLAY, "--broker", "ib", code=2, says="ib", home="live"),
    case("live-capital-negative", *REPLAY, "--capital", "-5", code=2, says="capital",
         home="live"),
    case("live-real-money-without-stored-keys", "live", "--live", "--once", code=2,
         says="ALPACA_API_KEY", home="trained",
         env={"TRADING_LIVE_CONFIRM": "yes please"}),
    # Models and the registry.
    case("models-promote-unknown", "models", "promote", "no-such-version", code=2,
         says="no-such-version", home="trained"),
    case("models-retire-unknown", "models", "retire", "no-such-version", code=2,
         says="no-such-version", home="trained"),
    case("models-rollback-without-canary", "models", "rollback", code=2, says="canary",
         home="trained"),
    case("models-kind-gpt", "models", "rollback", "--kind", "gpt", code=2, says="gpt",
         home="trained"),
    case("models-unknown-action", "models", "frobnicate", code=2, says="frobnicate",
         home="trained"),
    case("registry-not-json", "models", code=7, says="registry.json", home="trained",
         setup=put("models/registry.json", "{{{")),
    case("registry-a-list", "models", code=7, says="registry.json", home="trained",
         setup=put("models/registry.json", "[]")),
    case("registry-future-schema", "models", code=7, says=("registry.json", "schema_version"),
         home="trained", setup=edit_json("models/registry.json",
                                         lambda d: {**d, "schema_version": 99})),
    case("registry-models-not-a-list", "models", code=7, says="registry.json", home="trained",
         setup=edit_json("models/registry.json", lambda d: {**d, "models": "x"})),
    case("registry-not-json-backtest", "backtest", "--no-charts", code=7, says="registry.json",
         home="trained", setup=put("models/registry.json", "{{{")),
    case("registry-not-json-live", *REPLAY, code=7, says="registry.json", home="live",
         setup=put("models/registry.json", "{{{")),
    case("registry-not-json-drift", "drift", code=7, says="registry.json", home="trained",
         setup=put("models/registry.json", "{{{")),
    case("model-artefact-tampered-backtest", "backtest", "--no-charts", code=7, says="models",
         home="trained", setup=tamper_model),
    case("model-artefact-tampered-live", *REPLAY, code=7, says="models", home="live",
         setup=tamper_model),
    # Live state files, read by status, risk, the loop and audit.
    case("status-heartbeat-not-json", "status", code=2, says="heartbeat.json", home="live",
         setup=put("data/heartbeat.json", "{{{")),
    case("status-heartbeat-a-list", "status", code=2, says="heartbeat.json", home="live",
         setup=put("data/heartbeat.json", "[]")),
    case("status-positions-not-json", "status", code=2, says="positions.json", home="live",
         setup=put("positions.json", "{{{")),
    case("status-positions-a-list", "status", code=2, says="positions.json", home="live",
         setup=put("positions.json", "[1, 2]")),
    case("status-positions-wrong-field", "status", code=2, says="positions.json", home="live",
         setup=edit_json("positions.json", lambda d: {**d, "positions": "x"})),
    case("status-risk-state-not-json", "status", code=5, says="risk_state.json", home="live",
         setup=put("data/risk_state.json", "{{{")),
    case("risk-status-not-json", "risk", "status", code=5, says="risk_state.json", home="live",
         setup=put("data/risk_state.json", "{{{")),
    case("risk-status-a-list", "risk", "status", code=5, says="risk_state.json", home="live",
         setup=put("data/risk_state.json", "[]")),
    case("risk-status-halted-a-string", "risk", code=5, says=("risk_state.json", "halted"),
         home="live", setup=put("data/risk_state.json", '{"halted": "yes"}')),
    case("risk-status-negative-peak", "risk", code=5, says=("risk_state.json", "equity_peak"),
         home="live", setup=put("data/risk_state.json", '{"halted": false, "equity_peak": -1}')),
    case("risk-reset-negative-equity", "risk", "reset", "--equity", "-5", code=2,
         says="equity", home="live"),
    case("risk-reset-equity-word", "risk", "reset", "--equity", "lots", code=2, says="lots",
         home="live"),
    case("risk-unknown-action", "risk", "frobnicate", code=2, says="frobnicate", home="live"),
    case("live-positions-not-json", *REPLAY, code=2, says="positions.json", home="live",
         setup=put("positions.json", "{{{")),
    # Not a case: a torn heartbeat (it is written without fsync, by design) must not stop a
    # restart; the loop rewrites it (tests/test_live_trading.py).
    case("live-risk-state-not-json", *REPLAY, code=5, says="risk_state.json", home="live",
         setup=put("data/risk_state.json", "{{{")),
    case("live-paper-broker-not-json", *REPLAY, code=2, says="paper_broker.json", home="live",
         setup=put("data/paper_broker.json", "{{{")),
    case("live-paper-broker-a-list", *REPLAY, code=2, says="paper_broker.json", home="live",
         setup=put("data/paper_broker.json", "[]")),
    case("live-paper-broker-future-version", *REPLAY, code=2, says="paper_broker.json",
         home="live", setup=edit_json("data/paper_broker.json", lambda d: {**d, "version": 99})),
    case("live-paper-broker-no-ledger", *REPLAY, code=2, says=("paper_broker.json", "ledger"),
         home="live", setup=edit_json("data/paper_broker.json",
                                      lambda d: {k: v for k, v in d.items() if k != "ledger"})),
    case("live-order-tag-garbage", *REPLAY, code=2, says="order_tag", home="live",
         setup=put("data/order_tag", "zzz\n")),
    case("live-order-tag-binary", *REPLAY, code=2, says="order_tag", home="live",
         setup=put("data/order_tag", BINARY)),
    case("live-audit-modified-line", *REPLAY, code=11, says=("line 6", "audit repair"),
         home="live", setup=edit(AUDIT, modify_line)),
    case("live-audit-truncated-tail", *REPLAY, code=11, says="truncated", home="live",
         setup=edit(AUDIT, drop_tail)),
    case("live-audit-garbage-line", *REPLAY, code=11, says="line 5", home="live",
         setup=edit(AUDIT, garbage_line)),
    # The audit log.
    case("audit-verify-missing-file", "audit", "verify", "--file", "{tmp}/missing.jsonl",
         code=2, says="missing.jsonl", home="live"),
    case("audit-verify-modified-line", "audit", "verify", code=11, says="line 6", home="live",
         setup=edit(AUDIT, modify_line)),
    case("audit-verify-truncated-tail", "audit", "verify", code=11, says="truncated",
         home="live", setup=edit(AUDIT, drop_tail)),
    case("audit-verify-garbage-line", "audit", "verify", code=11, says="line 5", home="live",
         setup=edit(AUDIT, garbage_line)),
    case("audit-verify-duplicated-line", "audit", "verify", code=11, says="line 5", home="live",
         setup=edit(AUDIT, duplicate_line)),
    case("audit-verify-reordered-lines", "audit", "verify", code=11, says="line 4",
         home="live", setup=edit(AUDIT, reorder)),
    case("audit-verify-removed-line", "audit", "verify", code=11, says="line 6", home="live",
         setup=edit(AUDIT, remove_middle)),
    case("audit-verify-file-garbage", "audit", "verify", "--file", "{tmp}/copy.jsonl",
         code=11, says="line 1", home="live", setup=file("copy.jsonl", "not json\n")),
    case("audit-verify-file-binary", "audit", "verify", "--file", "{tmp}/copy.jsonl",
         code=11, says="copy.jsonl", home="live", setup=file("copy.jsonl", BINARY)),
    case("audit-verify-heartbeat-not-json", "audit", "verify", code=2, says="heartbeat.json",
         home="live", setup=put("data/heartbeat.json", "{{{")),
    case("audit-verify-positions-not-json", "audit", "verify", code=2, says="positions.json",
         home="live", setup=put("positions.json", "{{{")),
    case("audit-tail-negative", "audit", "tail", "-n", "-3", code=2, says="-3", home="live"),
    case("audit-tail-word", "audit", "tail", "-n", "many", code=2, says="many", home="live"),
    case("audit-repair-positions-not-json", "audit", "repair", code=2, says="positions.json",
         home="live", setup=both(edit(AUDIT, modify_line), put("positions.json", "{{{"))),
    case("audit-repair-heartbeat-not-json", "audit", "repair", code=2, says="heartbeat.json",
         home="live", setup=both(edit(AUDIT, modify_line), put("data/heartbeat.json", "{{{"))),
    case("audit-unknown-action", "audit", "frobnicate", code=2, says="frobnicate", home="live"),
    # Credentials.
    case("credentials-wrong-password-list", "credentials", "list", code=8,
         says="credentials.enc", home="creds", env={"TRADING_MASTER_PASSWORD": "wrong password!"}),
    case("credentials-wrong-password-delete", "credentials", "delete", "ALPACA_API_KEY",
         code=8, says="credentials.enc", home="creds",
         env={"TRADING_MASTER_PASSWORD": "wrong password!"}),
    case("credentials-delete-missing-name", "credentials", "delete", "NO_SUCH_KEY", code=8,
         says="NO_SUCH_KEY", home="creds", env={"TRADING_MASTER_PASSWORD": PASSWORD}),
    case("credentials-set-without-password", "credentials", "set", "ALPACA_SECRET_KEY", code=8,
         says="TRADING_MASTER_PASSWORD", home="creds", env={"TRADING_MASTER_PASSWORD": ""}),
    case("credentials-set-without-name", "credentials", "set", code=2, says="NAME",
         home="creds", env={"TRADING_MASTER_PASSWORD": PASSWORD}),
    case("credentials-set-bad-name", "credentials", "set", "bad name!", code=8,
         says="bad name!", home="creds", env={"TRADING_MASTER_PASSWORD": PASSWORD}),
    case("credentials-set-empty-value", "credentials", "set", "ALPACA_SECRET_KEY", code=8,
         says="ALPACA_SECRET_KEY", home="creds", env={"TRADING_MASTER_PASSWORD": PASSWORD}),
    case("credentials-new-store-short-password", "credentials", "set", "ALPACA_API_KEY",
         code=8, says="12", env={"TRADING_MASTER_PASSWORD": "short"}),
    case("credentials-change-to-short-password", "credentials", "change-password", code=8,
         says="12", home="creds",
         env={"TRADING_MASTER_PASSWORD": PASSWORD, "TRADING_NEW_MASTER_PASSWORD": "short"}),
    case("credentials-store-garbage", "credentials", "list", code=8, says="credentials.enc",
         home="creds", env={"TRADING_MASTER_PASSWORD": PASSWORD},
         setup=put("credentials.enc", "garbage")),
    case("credentials-store-truncated", "credentials", "list", code=8,
         says="credentials.enc", home="creds", env={"TRADING_MASTER_PASSWORD": PASSWORD},
         setup=edit("credentials.enc", lambda lines: ["".join(lines)[:40]])),
    case("credentials-list-no-store", "credentials", "delete", "ALPACA_API_KEY", code=8,
         says="credentials.enc", env={"TRADING_MASTER_PASSWORD": PASSWORD}),
    case("credentials-unknown-action", "credentials", "frobnicate", code=2, says="frobnicate",
         home="creds"),
    case("live-alpaca-wrong-master-password", "live", "--once", "--broker", "alpaca", code=8,
         says="credentials.enc", home="creds",
         env={"TRADING_MASTER_PASSWORD": "wrong password!",
              "ALPACA_TRADING_URL": "http://127.0.0.1:9", "ALPACA_DATA_URL": "http://127.0.0.1:9"}),
    # Alerts.
    case("alerts-severity-loud", "alerts", "test", "--severity", "LOUD", code=2, says="LOUD"),
    case("alerts-timeout-negative", "alerts", "test", "--timeout", "-1", code=2,
         says="timeout"),
    case("alerts-timeout-word", "alerts", "test", "--timeout", "soon", code=2, says="soon"),
    case("alerts-webhook-refuses", "alerts", "test", "--timeout", "3", code=9,
         says="127.0.0.1", env={"ALERT_WEBHOOK_URL": "http://127.0.0.1:9/hook"}),
    case("alerts-unknown-action", "alerts", "frobnicate", code=2, says="frobnicate"),
    # Dashboard, check, drift and the command line itself.
    case("dashboard-port-word", "dashboard", "--port", "abc", code=2, says="abc", home="live"),
    case("dashboard-port-too-high", "dashboard", "--port", "70000", code=2, says="70000",
         home="live"),
    case("dashboard-port-negative", "dashboard", "--port", "-1", code=2, says="-1",
         home="live"),
    case("check-unknown-option", "check", "--frobnicate", code=2, says="--frobnicate"),
    case("drift-window-zero", "drift", "--window", "0", code=2, says="window", home="trained"),
    case("drift-window-word", "drift", "--window", "wide", code=2, says="wide",
         home="trained"),
    case("unknown-command", "frobnicate", code=2, says="frobnicate"),
    # --- Issue 23 items 18 and 19; scan, sweep, --scheduler and the equity log --------------------
    # Item 18: an equity log that does not parse is refused, never appended under.
    case("equity-log-overwritten-with-garbage", *REPLAY, code=2, says="equity_paper.csv",
         home="live", setup=put(EQUITY, "garbage\nmore garbage\n")),
    case("equity-log-binary", *REPLAY, code=2, says=("equity_paper.csv", "unreadable"),
         home="live", setup=put(EQUITY, BINARY)),
    case("equity-log-wrong-columns", *REPLAY, code=2, says=("equity_paper.csv", "line 1"),
         home="live", setup=edit(EQUITY, lambda lines: ["date,value\n", *lines[1:]])),
    case("equity-log-other-pair", *REPLAY, code=2, says=("equity_paper.csv", "XOM/CVX"),
         home="live", setup=edit(EQUITY, lambda lines: [
             "date,equity,cash,borrow_paid,qty_XOM,qty_CVX\n", *lines[1:]])),
    case("equity-log-non-numeric-equity", *REPLAY, code=2, says=("equity_paper.csv", "line 3"),
         home="live", setup=edit(EQUITY, equity_cell(2, "lots"))),
    case("equity-log-nan-equity", *REPLAY, code=2, says=("equity_paper.csv", "line 2"),
         home="live", setup=edit(EQUITY, equity_cell(1, "nan"))),
    case("equity-log-infinite-cash", *REPLAY, code=2, says=("equity_paper.csv", "line 4"),
         home="live", setup=edit(EQUITY, equity_cell(3, "inf", col=2))),
    case("equity-log-missing-field", *REPLAY, code=2, says=("equity_paper.csv", "line 5"),
         home="live", setup=edit(EQUITY, lambda lines: [
             *lines[:4], lines[4].rsplit(",", 1)[0] + "\n", *lines[5:]])),
    case("equity-log-dates-out-of-order", *REPLAY, code=2, says=("equity_paper.csv", "line 3"),
         home="live", setup=edit(EQUITY, reorder_rows)),
    case("equity-log-date-twice", *REPLAY, code=2, says=("equity_paper.csv", "line 4"),
         home="live", setup=edit(EQUITY, lambda lines: [*lines[:3], lines[2], *lines[3:]])),
    case("equity-log-bad-date", *REPLAY, code=2, says=("equity_paper.csv", "line 2"),
         home="live", setup=edit(EQUITY, equity_cell(1, "2022-13-45", col=0))),
    case("equity-log-cut-last-line", *REPLAY, code=2, says=("equity_paper.csv", "cut short"),
         home="live", setup=edit(EQUITY, lambda lines: [*lines[:-1], lines[-1][:15]])),
    # Item 19.
    case("env-TRADING_HOME-under-a-file", "status", code=2, says=("TRADING_HOME", "prices.csv"),
         setup=file("prices.csv", "x"), env={"TRADING_HOME": "{tmp}/prices.csv/sub"}),
    case("env-TRADING_HOME-under-a-file-process", "process", code=2, says="TRADING_HOME",
         setup=file("prices.csv", "x"), env={"TRADING_HOME": "{tmp}/prices.csv/sub"}),
    case("csv-price-1e308", *CSV, code=4, says=("price_range", "AAPL", day(100), "1e+308"),
         setup=prices(cell(100, 1, "1e308"))),
    case("csv-price-below-a-hundredth-of-a-cent", *CSV, code=4,
         says=("price_range", "MSFT", day(90), "1e-09"), setup=prices(cell(90, 2, "1e-9"))),
    case("sweep-grid-kelly-negative", "sweep", "--model", "xgb", "--grid", "kelly=-1", code=2,
         says=("kelly", "-1", "0 < kelly <= 1")),
    case("sweep-grid-buy-above-one", "sweep", "--model", "xgb", "--grid", "buy=1.5", code=2,
         says=("buy", "1.5", "0 < buy < 1")),
    case("sweep-grid-sell-zero", "sweep", "--model", "xgb", "--grid", "sell=0", code=2,
         says=("sell", "0 < sell < 1")),
    case("sweep-grid-exit-negative", "sweep", "--grid", "exit_z=-1", code=2,
         says=("exit_z", "-1", "0 <= exit_z")),
    # scan: the universe, its dates, the options.
    case("scan-universe-unknown", "scan", "--universe", "bloomberg", code=2, says="bloomberg"),
    case("scan-universe-missing-file", "scan", "--universe", "csv:{tmp}/missing.csv", code=2,
         says="missing.csv"),
    case("scan-universe-bad-symbol", "scan", *UNIVERSE, code=2, says=("prices.csv", "A$PL"),
         setup=prices(lambda rows: rows, header="date,A$PL,MSFT")),
    case("scan-universe-one-ticker", "scan", *UNIVERSE, code=2, says=("prices.csv", "2 tickers"),
         setup=prices(lambda rows: [r.rsplit(",", 1)[0] for r in rows], header="date,AAPL")),
    case("scan-universe-price-1e308", "scan", *UNIVERSE, code=2, says=("AAPL", "1e+308"),
         setup=prices(cell(100, 1, "1e308"))),
    case("scan-universe-word-for-a-price", "scan", *UNIVERSE, code=2,
         says=("prices.csv", "MSFT", "'lots'"), setup=prices(cell(100, 2, "lots"))),
    case("scan-universe-empty-file", "scan", *UNIVERSE, code=2, says="prices.csv",
         setup=file("prices.csv", "")),
    case("scan-start-after-end", "scan", "--start", "2022-06-01", "--end", "2022-01-03",
         code=2, says="2022-01-03"),
    case("scan-start-after-data", "scan", "--start", "2030-01-02", code=2,
         says=("2030-01-02", "2022-12-28")),
    case("scan-end-before-data", "scan", "--end", "1985-01-02", code=2,
         says=("1985-01-02", "1990-01-02")),
    case("scan-range-shorter-than-a-window", "scan", "--start", "2022-01-03", "--end",
         "2022-03-01", code=2, says="walk-forward window"),
    case("scan-jobs-zero", "scan", "--jobs", "0", code=2, says="--jobs"),
    case("scan-jobs-minus-two", "scan", "--jobs", "-2", code=2, says="-2"),
    case("scan-jobs-word", "scan", "--jobs", "abc", code=2, says="abc"),
    case("scan-top-zero", "scan", "--top", "0", code=2, says="--top"),
    case("scan-formation-bars-below-warm-up", "scan", "--formation-bars", "2", code=2,
         says="formation_bars=2"),
    case("scan-entry-below-exit", "scan", "--entry-z", "0.5", "--exit-z", "1", code=2,
         says="exit z"),
    case("scan-entry-z-nan", "scan", "--entry-z", "nan", code=2, says="finite"),
    case("scan-grid-and-entry-z", "scan", "--grid", "entry_z=2", "--entry-z", "2", code=2,
         says="--grid"),
    case("scan-grid-model-key", "scan", "--grid", "buy=0.6", code=2, says="buy"),
    case("scan-grid-lookback-two", "scan", "--grid", "lookback=2", code=2,
         says=("lookback", "whole number >= 3")),
    case("scan-models-zero", "scan", "--models", "0", code=2, says="--models"),
    case("scan-adopt-not-a-pair", "scan", "--adopt", "AAPL", code=2, says="AAPL"),
    case("scan-adopt-bad-symbol", "scan", "--adopt", "??/MSFT", code=2, says="??"),
    case("scan-adopt-without-a-scan", "scan", "--adopt", "AAPL/MSFT", code=2,
         says="no scan"),
    # --scheduler (and its variable): malformed, or nobody listening (fails in seconds).
    case("scan-scheduler-malformed", "scan", "--scheduler", "foo", code=2, says="'foo'"),
    case("scan-scheduler-without-port", "scan", "--scheduler", "tcp://127.0.0.1", code=2,
         says="tcp://127.0.0.1"),
    case("scan-scheduler-port-out-of-range", "scan", "--scheduler", "tcp://127.0.0.1:99999",
         code=2, says=("99999", "1-65535")),
    case("scan-scheduler-closed-port", "scan", "--scheduler", "tcp://127.0.0.1:9", code=2,
         says=("cannot reach", "tcp://127.0.0.1:9")),
    case("scan-scheduler-variable-garbage", "scan", code=2, says="DASK_SCHEDULER_ADDRESS",
         env={"DASK_SCHEDULER_ADDRESS": "garbage"}),
    case("sweep-scheduler-closed-port", "sweep", "--scheduler", "tcp://127.0.0.1:9", code=2,
         says=("cannot reach", "tcp://127.0.0.1:9"), home="processed"),
    # sweep: the grid, the windows, the pair and the dates.
    case("sweep-grid-unknown-key", "sweep", "--grid", "frobnicate=1", code=2,
         says="frobnicate"),
    case("sweep-grid-empty-values", "sweep", "--grid", "entry_z=", code=2, says="entry_z="),
    case("sweep-grid-without-equals", "sweep", "--grid", "entry_z", code=2, says="KEY=V1"),
    case("sweep-grid-duplicate-value", "sweep", "--grid", "entry_z=2,2.0", code=2,
         says="2.0 is given twice"),
    case("sweep-grid-key-twice", "sweep", "--grid", "entry_z=1.5", "entry_z=2", code=2,
         says="entry_z is given twice"),
    case("sweep-grid-empty-item", "sweep", "--grid", "entry_z=1,,2", code=2,
         says="entry_z"),
    case("sweep-grid-lookback-fraction", "sweep", "--grid", "lookback=40.5", code=2,
         says="40.5"),
    case("sweep-grid-infinite", "sweep", "--grid", "entry_z=inf", code=2, says="inf"),
    case("sweep-grid-no-valid-set", "sweep", "--grid", "entry_z=0.2", "exit_z=0.5", code=2,
         says="no valid parameter set"),
    case("sweep-train-windows-zero", "sweep", "--train-windows", "0", code=2,
         says="--train-windows"),
    case("sweep-model-version-without-model", "sweep", "--model-version", "x", code=2,
         says="--model"),
    case("sweep-same-leg-twice", "sweep", "--long", "MSFT", "--short", "MSFT", code=2,
         says="MSFT"),
    case("sweep-unknown-ticker", "sweep", "--long", "ZZZZ", code=3, says="ZZZZ"),
    case("sweep-start-after-data", "sweep", "--start", "2030-01-02", code=2,
         says=("2030-01-02", "2022-12-28"), home="processed"),
    case("sweep-end-before-data", "sweep", "--end", "1985-01-02", code=2,
         says="1985-01-02", home="processed"),
    case("sweep-too-few-windows", "sweep", "--start", "2021-01-04", code=2,
         says="--train-windows", home="processed"),
    # A live run on the bundled data (ends 2022-12-28) refuses it as stale: nothing processed.
    case("live-once-stale-bundled-data", "live", "--once", code=2,
         says=("bundled data of AAPL/MSFT end on 2022-12-28", "live --replay")),
]  # fmt: skip


# --- `trials` (issue 23 items 2, 3): the ledger listed and pruned; a refusal appends nothing -----
LEDGER = "results/trials.jsonl"
LEDGER_LINE = json.dumps({"run_id": "r1", "recorded_at": "2026-01-05T10:00:00+00:00",
                          "pair": ["AAPL", "MSFT"], "start": "2021-01-04", "end": "2021-12-31",
                          "bars": 251, "kind": "strategy", "source": "rule:x",
                          "config_hash": "h", "sharpe": 0.4}) + "\n"  # fmt: skip


def folder(rel: str) -> Setup:
    """A directory where the home expects a file."""

    def setup(home: Path, tmp: Path) -> None:
        (home / rel).mkdir(parents=True)

    return setup


CASES += [
    case("trials-prune-without-since-or-all", "trials", "prune", "--reason", "x", code=2,
         says=("--since", "--all"), setup=put(LEDGER, LEDGER_LINE)),
    case("trials-prune-since-and-all", "trials", "prune", "--since", "2026-01-06", "--all",
         "--reason", "x", code=2, says="exactly one", setup=put(LEDGER, LEDGER_LINE)),
    case("trials-prune-without-reason", "trials", "prune", "--all", code=2, says="--reason",
         setup=put(LEDGER, LEDGER_LINE)),
    case("trials-prune-blank-reason", "trials", "prune", "--all", "--reason", "   ", code=2,
         says="--reason", setup=put(LEDGER, LEDGER_LINE)),
    case("trials-since-not-a-date", "trials", "--since", "2026-13-01", code=2,
         says="2026-13-01"),
    case("trials-prune-since-in-the-future", "trials", "prune", "--since", "2999-01-01",
         "--reason", "x", code=2, says="2999-01-01", setup=put(LEDGER, LEDGER_LINE)),
    case("trials-list-with-reason", "trials", "list", "--reason", "x", code=2, says="--reason"),
    case("trials-pair-one-leg", "trials", "--pair", "AAPL", code=2, says="AAPL"),
    case("trials-prune-one-pair", "trials", "prune", "--all", "--reason", "x", "--pair",
         "AAPL/MSFT", code=2, says="--pair", setup=put(LEDGER, LEDGER_LINE)),
    case("trials-unknown-action", "trials", "frobnicate", code=2, says="frobnicate"),
    case("trials-ledger-is-a-directory", "trials", code=3, says="trials.jsonl",
         setup=folder(LEDGER)),
    case("trials-prune-ledger-is-a-directory", "trials", "prune", "--all", "--reason", "x",
         code=3, says="trials.jsonl", setup=folder(LEDGER)),
]  # fmt: skip


# --- Homes, prepared once and copied per case ---------------------------------------------------
@pytest.fixture(scope="session")
def homes(tmp_path_factory) -> dict[str, Path]:
    """Template homes: empty; processed (bundled AAPL/MSFT features); trained (plus one XGBoost
    model); live (plus a week of paper replay: positions, heartbeat, risk state, broker, audit
    log, order tag); creds (an encrypted store holding one key)."""
    import train_model as tm

    def build(root: Path) -> None:
        _homes(root, trained_template(tmp_path_factory, tm.TrainConfig(models=("xgb",))))

    root = built_once(tmp_path_factory, "test_bad_inputs homes", build)
    return {path.name: path for path in root.iterdir()}


def _homes(root: Path, trained: Path) -> None:
    import credential_manager as cm
    import process_stock_data as psd

    made = {name: root / name for name in ("empty", "processed", "trained", "live", "creds")}
    for path in made.values():
        path.mkdir()
    psd.process("bundled", PAIR, home=C.paths(made["processed"]))
    shutil.copytree(trained, made["trained"], dirs_exist_ok=True)
    shutil.copytree(made["trained"], made["live"], dirs_exist_ok=True)
    done = run(
        "main.py", "live", "--replay", "2022-01-03", "2022-01-07", home=made["live"],
        extra_env={"ALERT_WEBHOOK_URL": ""},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (made["live"] / AUDIT).exists() and (made["live"] / "positions.json").exists()
    store = cm.CredentialStore(C.paths(made["creds"]).credentials_file, PASSWORD)
    store.set("ALPACA_API_KEY", "PKTEST1234567890")


def snapshot(folder: Path, home: Path) -> dict[str, str]:
    """SHA-256 of every file under `folder`, but the logs that may record a refusal and the lock
    files (`*.lock`, `data/live.pid`: which process holds a home, not state; `status` reads the
    lock to tell a running loop from a dead one)."""
    logs = home / "logs"
    out = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        if path.parent == logs and (
            path.name.startswith("trading.log") or path.name == "alerts.log"
        ):
            continue
        if path.suffix == ".lock" or path == home / "data" / "live.pid":
            continue
        out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def test_the_catalogue_is_large_and_its_ids_unique():
    assert len(CASES) >= 120
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("bad", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_with_its_exit_code_and_a_named_cause(bad, homes, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(homes[bad.home], home)
    if bad.setup is not None:
        bad.setup(home, tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in bad.args]
    env = {"ALERT_WEBHOOK_URL": ""}
    env.update({k: v.replace("{tmp}", str(tmp_path)) for k, v in bad.env})
    before = snapshot(tmp_path, home)

    proc = run("main.py", *args, home=home, extra_env=env)

    lines = proc.stderr.strip().splitlines()
    last = lines[-1] if lines else ""
    after = snapshot(tmp_path, home)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert (proc.returncode, changed) == (bad.code, []), (
        f"exit {proc.returncode}, last stderr line: {last!r}; changed: {changed}"
    )
    assert "Traceback" not in proc.stderr and "unexpected error" not in proc.stderr, proc.stderr
    for needle in bad.says:
        assert needle in last, f"{needle!r} not in the last stderr line {last!r}"
