"""constants.py: the pair, signal strings, feature names, sanity ranges and paths."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import constants as C
from error_handling import ConfigurationError


def test_default_pair_is_aapl_msft(home):
    pair = C.resolve_pair()
    assert pair.tickers == ("AAPL", "MSFT")


def test_env_overrides_default_and_flags_override_env(home, monkeypatch):
    monkeypatch.setenv("TICKER_LONG", "jpm")
    monkeypatch.setenv("TICKER_SHORT", "BAC")
    assert C.resolve_pair().tickers == ("JPM", "BAC")
    assert C.resolve_pair("KO", None).tickers == ("KO", "BAC")


@pytest.mark.parametrize("bad", ["", "1ABC", "AA PL", "TOOLONGSYMBOL", "AAPL;rm", "$X"])
def test_invalid_symbols_are_rejected_with_a_message(bad):
    with pytest.raises(ConfigurationError, match="invalid ticker symbol"):
        C.validate_symbol(bad)


@pytest.mark.parametrize("good", ["AAPL", "brk.b", "BF-B", "X"])
def test_valid_symbols_are_upper_cased(good):
    assert C.validate_symbol(good) == good.upper()


def test_pair_legs_must_differ():
    with pytest.raises(ConfigurationError, match="must differ"):
        C.Pair("AAPL", "aapl")


def test_signal_strings_are_built_from_the_tickers():
    pair = C.Pair("JPM", "BAC")
    assert pair.buy_signal == "Buy JPM, Sell BAC"
    assert pair.sell_signal == "Sell JPM, Buy BAC"
    assert pair.signals == ("Buy JPM, Sell BAC", "Sell JPM, Buy BAC", C.HOLD_SIGNAL)


def test_feature_names_are_23_unique_and_name_the_pair():
    names = C.feature_names("JPM", "BAC")
    assert len(names) == 23 == len(set(names))
    assert sum(n.startswith("JPM_") for n in names) == 10
    assert sum(n.startswith("BAC_") for n in names) == 10
    assert {n for n in names if n.endswith("_JPM_BAC")} == {
        "spread_JPM_BAC",
        "spread_z_JPM_BAC",
        "corr_60d_JPM_BAC",
    }


def test_volume_adds_one_feature_per_leg():
    names = C.feature_names("AAPL", "MSFT", with_volume=True)
    assert len(names) == 25
    assert names[-2:] == ["AAPL_volume_ratio", "MSFT_volume_ratio"]


def test_price_sanity_known_symbol_uses_its_range():
    assert C.price_sanity_range("AAPL") == C.PRICE_SANITY_RANGES["AAPL"]


def test_price_sanity_unknown_symbol_is_relative_to_reference_else_generic():
    assert C.price_sanity_range("ZZZ", reference_price=30.0) == pytest.approx((10.0, 90.0))
    assert C.price_sanity_range("ZZZ") == C.GENERIC_PRICE_RANGE


def test_paths_live_under_trading_home(home, tmp_path):
    p = C.paths()
    assert p.home == tmp_path.resolve()
    assert p.alerts_log == tmp_path.resolve() / "logs" / "alerts.log"
    assert p.positions_file == tmp_path.resolve() / "positions.json"
    assert p.processed_file(C.Pair("AAPL", "MSFT")).name == "processed_AAPL_MSFT.parquet"


def test_paths_default_to_the_project_directory(monkeypatch):
    monkeypatch.delenv("TRADING_HOME", raising=False)
    assert C.paths().home == Path(C.__file__).resolve().parent


def test_data_source_flag_beats_env(monkeypatch):
    monkeypatch.setenv("DATA_SOURCE", "yfinance")
    assert C.data_source_name() == "yfinance"
    assert C.data_source_name("csv:x.csv") == "csv:x.csv"
    monkeypatch.delenv("DATA_SOURCE")
    assert C.data_source_name() == "bundled"


def test_no_module_spells_a_signal_string_literally():
    """Signal strings come from constants.Pair; a literal 'Buy AAPL' elsewhere would drift."""
    root = Path(C.__file__).resolve().parent
    offenders = [
        f.name
        for f in root.glob("*.py")
        if f.name != "constants.py"
        and ('"Buy AAPL' in f.read_text() or "'Buy AAPL" in f.read_text())
    ]
    assert offenders == []


# --- The environment, checked before any work ---------------------------------------------------
#: Variables whose values are secrets or free text: nothing to check but their presence.
FREE_FORM = {
    "ALERT_WEBHOOK_SECRET",
    "ALPACA_API_KEY",
    "ALPACA_SECRET_KEY",
    "TRADING_LIVE_CONFIRM",
    "TRADING_MASTER_PASSWORD",
    "TRADING_NEW_MASTER_PASSWORD",
}


def test_every_environment_variable_the_code_reads_has_a_rule():
    import re
    from pathlib import Path

    root = Path(C.__file__).parent
    text = "\n".join(p.read_text() for p in root.glob("*.py"))
    read = set(
        re.findall(r'ENV_[A-Z_0-9]+\s*=\s*"([A-Z_0-9]+)"', text)
        + re.findall(r'os\.environ\.get\("([A-Z_0-9]+)"', text)
    )
    assert len(read) >= 15
    assert read - FREE_FORM == set(C.ENV_RULES)


@pytest.mark.parametrize(
    ("name", "value", "wanted"),
    [
        ("SIGNAL_MODEL", "gpt", "one of xgb, lstm"),
        ("SIGNAL_MODEL", "XGB", "one of xgb, lstm"),
        ("ENSEMBLE_MODE", "maybe", "one of 1, true"),
        ("ALERT_FLUSH_TIMEOUT_S", "abc", "a number of seconds >= 0"),
        ("ALERT_FLUSH_TIMEOUT_S", "-1", "a number of seconds >= 0"),
        ("TRADING_INTERVAL_S", "0", "a number of seconds > 0"),
        ("DASHBOARD_REFRESH_S", "nan", "a number of seconds >= 0"),
        ("LOG_LEVEL", "LOUD", "one of debug"),
        ("TICKER_LONG", "??", "a ticker"),
        ("DATA_SOURCE", "csv:", "csv:PATH"),
        ("DATA_SOURCE", "bloomberg", "bundled, yfinance, alpaca or csv:PATH"),
        ("ALERT_WEBHOOK_URL", "hooks.example.com/x", "an http:// or https:// URL"),
        ("ALPACA_TRADING_URL", "ftp://x", "an http:// or https:// URL"),
        ("ALPACA_DATA_FEED", "nasdaq", "one of iex, sip"),
        ("TRADING_ENV_FILE", "/", "a file, but it is a directory"),
    ],
)
def test_a_bad_environment_value_is_refused_naming_it(name, value, wanted):
    with pytest.raises(ConfigurationError, match=re.escape(f"{name}={value!r}")) as raised:
        C.check_environment({name: value})
    assert wanted in str(raised.value)


def test_good_and_empty_values_pass():
    C.check_environment(
        {
            "SIGNAL_MODEL": "lstm",
            "ENSEMBLE_MODE": "On",
            "ALERT_FLUSH_TIMEOUT_S": "0",
            "TRADING_INTERVAL_S": "0.5",
            "LOG_LEVEL": "debug",
            "TICKER_LONG": "brk.b",
            "DATA_SOURCE": "csv:/tmp/prices.csv",
            "ALERT_WEBHOOK_URL": "https://hooks.example.com/x",
            "ALPACA_DATA_FEED": "SIP",
            "DASHBOARD_REFRESH_S": "",  # empty: unset, the default applies
        }
    )


def test_a_trading_home_that_is_a_file_or_read_only_is_refused(tmp_path):
    file = tmp_path / "home"
    file.write_text("")
    with pytest.raises(ConfigurationError, match="it is a file"):
        C.check_environment({"TRADING_HOME": str(file)})
    read_only = tmp_path / "ro"
    read_only.mkdir(mode=0o555)
    if os.access(read_only, os.W_OK):  # root ignores permissions: nothing to check there
        return
    with pytest.raises(ConfigurationError, match="read-only"):
        C.check_environment({"TRADING_HOME": str(read_only)})


def test_a_trading_home_under_a_regular_file_is_refused(tmp_path):
    """`.../prices.csv/sub` does not exist, and cannot be made: its ancestor is a file."""
    (tmp_path / "prices.csv").write_text("x")
    with pytest.raises(ConfigurationError, match=r"TRADING_HOME=.*prices.csv is a file"):
        C.check_environment({"TRADING_HOME": str(tmp_path / "prices.csv" / "sub" / "deeper")})
    C.check_environment({"TRADING_HOME": str(tmp_path / "new" / "home")})  # made later: fine


def test_main_refuses_a_bad_variable_before_any_work(tmp_path):
    from tests.helpers import run

    proc = run("main.py", "backtest", home=tmp_path, extra_env={"SIGNAL_MODEL": "gpt"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: SIGNAL_MODEL='gpt' is not allowed: it must be one of xgb, lstm"
    )
    assert list(tmp_path.iterdir()) == []  # nothing trained, processed or logged


@pytest.mark.parametrize(
    "args",
    [
        ("backtest", "--start", "2020-13-45"),
        ("backtest", "--end", "yesterday"),
        ("process", "--start", "2020-02-30"),
        ("live", "--replay", "2022-01-03", "tomorrow"),
    ],
)
def test_a_date_that_is_not_yyyy_mm_dd_is_exit_2_naming_it(tmp_path, args):
    from tests.helpers import run

    proc = run("main.py", *args, home=tmp_path)
    assert proc.returncode == 2
    assert f"{args[-1]!r} is not a date YYYY-MM-DD" in proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr
