"""constants.py: the pair, signal strings, feature names, sanity ranges and paths."""

from __future__ import annotations

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
