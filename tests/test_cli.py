"""main.py as a user runs it: subprocess, temporary TRADING_HOME, exit codes, one-line errors."""

from __future__ import annotations

import os
import subprocess
import venv

import pytest

import main as cli
from tests.helpers import ROOT, run


def _assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    err = proc.stderr.strip()
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    for needle in needles:
        assert needle in err


HEAVY = {"tensorflow", "keras", "pandas", "xgboost"}


@pytest.mark.parametrize(
    "args,shown,heavy",
    [
        (["main.py", "--help"], ["process", "check", "examples:"], HEAVY),
        (["main.py", "process", "--help"], ["--long", "--source", "csv:PATH"], HEAVY),
        # The trading options read their defaults from pair_engine.TradingConfig (pandas).
        (
            ["main.py", "backtest", "--help"],
            ["--allow-in-sample", "--max-drawdown", "(0.1)", "--rebalance-band", "(0.25)"],
            HEAVY - {"pandas"},
        ),
        (
            ["main.py", "live", "--help"],
            ["--config", "--rebalance-band", "(0.25)"],
            HEAVY - {"pandas"},
        ),
        (["main.py", "risk", "--help"], ["reset"], HEAVY),
    ],
)
def test_help_imports_no_tensorflow(tmp_path, args, shown, heavy):
    proc = run("-X", "importtime", *args, home=tmp_path)
    assert proc.returncode == 0
    assert all(s in proc.stdout for s in shown)
    imported = {
        line.split("|")[-1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if "|" in line
    }
    assert "encodings" in imported  # the import log really was captured
    assert not heavy & imported


def test_unknown_command_prints_usage_and_exits_2(tmp_path):
    proc = run("main.py", "frobnicate", home=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: main.py")
    assert "invalid choice: 'frobnicate'" in proc.stderr


def test_no_command_prints_usage_and_exits_2(tmp_path):
    proc = run("main.py", home=tmp_path)
    assert proc.returncode == 2 and "usage:" in proc.stderr


def test_malformed_ticker_is_a_one_line_error(tmp_path):
    proc = run("main.py", "process", "--long", "AA PL", home=tmp_path)
    _assert_one_line_error(proc, "invalid ticker symbol 'AA PL'")
    assert proc.returncode == 2


def test_ticker_absent_from_source_lists_available(tmp_path):
    proc = run("main.py", "process", "--long", "TSLA", home=tmp_path)
    _assert_one_line_error(proc, "TSLA not in source 'bundled'", "AAPL, AMD")
    assert proc.returncode == 3


def test_malformed_csv_is_a_one_line_error_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text('date,AAPL,MSFT\n2020-01-02,300.1,160.2\n2020-01-03,"unterminated,1\n')
    proc = run("main.py", "process", "--source", f"csv:{bad}", home=tmp_path)
    _assert_one_line_error(proc)
    assert not list((tmp_path / "data").glob("processed_*"))


def test_csv_with_text_in_a_price_names_rule_ticker_date(tmp_path):
    csv = tmp_path / "prices.csv"
    csv.write_text("date,AAPL,MSFT\n2020-01-02,300.1,160.2\n2020-01-03,n/a,158.6\n")
    proc = run("main.py", "process", "--source", f"csv:{csv}", home=tmp_path)
    _assert_one_line_error(proc, "[non_numeric]", "AAPL", "2020-01-03")
    assert proc.returncode == 4


def test_error_messages_never_print_a_secret_from_the_environment(tmp_path):
    """A key that ends up in an error message (here: in a file path) is redacted on stderr."""
    secret = "PKTESTSECRETVALUE123"
    proc = run(
        "main.py",
        "process",
        "--source",
        f"csv:/no/such/{secret}.csv",
        home=tmp_path,
        extra_env={"ALPACA_SECRET_KEY": secret},
    )
    _assert_one_line_error(proc, "CSV file not found", "***REDACTED***")
    assert secret not in proc.stderr


def test_debug_shows_the_traceback(tmp_path):
    proc = run("main.py", "process", "--long", "TSLA", "--debug", home=tmp_path)
    assert proc.returncode == 3 and "Traceback" in proc.stderr


def test_process_offline_on_bundled_data_prints_summary(tmp_path):
    proc = run("main.py", "process", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "8,235 (of 8,313 bars loaded)" in out
    assert "1990-04-24 .. 2022-12-28" in out
    assert "78 rows" in out and "spread_z_AAPL_MSFT" in out
    assert (tmp_path / "data" / "processed_AAPL_MSFT.parquet").exists()
    assert (tmp_path / "logs" / "trading.log").exists()


def test_pair_from_env_and_flags(tmp_path):
    proc = run(
        "main.py",
        "process",
        "--short",
        "BAC",
        home=tmp_path,
        extra_env={"TICKER_LONG": "JPM", "TICKER_SHORT": "KO"},
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "data" / "processed_JPM_BAC.parquet").exists()


# --- check ----------------------------------------------------------------------------------------
def test_check_profiles_reports_what_each_profile_misses():
    pins = cli.pinned_requirements("requirements-full.txt")
    have = {name: version for name, version in pins.items() if name != "tensorflow-cpu"}
    have["yfinance"] = "0.0.1"
    statuses = {s.profile: s for s in cli.check_profiles(have.get)}
    assert statuses["core"].complete
    assert statuses["lstm"].missing == ["tensorflow-cpu"]
    assert statuses["live"].mismatched == [("yfinance", "0.0.1", pins["yfinance"])]
    assert statuses["advanced"].complete
    assert not statuses["full"].complete
    assert cli.covering_profile([s for s in statuses.values() if not s.complete]) == "full"
    assert cli.covering_profile([statuses["lstm"], statuses["full"]]) == "lstm"


def test_pinned_requirements_names_the_package_not_its_extra():
    assert cli.pinned_requirements("requirements.txt")["dask"] == "2026.8.0"


def test_every_requirement_is_pinned():
    for file in cli.PROFILE_FILES.values():
        for line in (ROOT / file).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line and not line.startswith("-r"):
                assert "==" in line, f"{file}: {line} is not pinned"


def test_check_in_a_bare_python_prints_the_install_command(tmp_path):
    """Before install: no rich, no pandas. `check` still runs and says what to do."""
    bare = tmp_path / "bare"
    venv.EnvBuilder(with_pip=False).create(bare)
    proc = run("main.py", "check", home=tmp_path, python=str(bare / "bin" / "python"))
    assert proc.returncode == 1
    assert "core       incomplete" in proc.stdout
    assert "To install what is missing, run: ./install.sh full" in proc.stdout


def test_check_interactive_asks_before_installing(tmp_path):
    """On a terminal it offers the install; answering no installs nothing and prints the command."""
    import pty

    bare = tmp_path / "bare"
    venv.EnvBuilder(with_pip=False).create(bare)
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [str(bare / "bin" / "python"), "main.py", "check"],
        cwd=ROOT,
        stdin=follower,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.write(leader, b"n\n")
    out, _ = proc.communicate(timeout=60)
    os.close(leader)
    os.close(follower)
    assert "Install profile 'full' now (./install.sh full)? [y/N]" in out
    assert "To install what is missing, run: ./install.sh full" in out


def test_check_with_everything_installed_exits_0(tmp_path):
    proc = run("main.py", "check", home=tmp_path)
    assert proc.returncode == 0 and "All profiles are installed." in proc.stdout
