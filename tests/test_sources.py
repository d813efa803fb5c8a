"""Offline sources: the bundled dataset and a user's CSV (wide or long format)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import constants as C
import process_stock_data as psd
from error_handling import ConfigurationError, DataError, ValidationError


def test_bundled_dataset_is_the_real_20_ticker_history(bundled):
    close = bundled.close
    assert close.shape == (8313, 20)
    assert {"AAPL", "MSFT", "JPM", "BAC", "RRC"} <= set(close.columns)
    assert close.index[0] == pd.Timestamp("1990-01-02") and close.index[-1] == pd.Timestamp(
        "2022-12-28"
    )
    assert bundled.volume is None  # closes only: no volume features
    # AAPL's 2000-09-29 drop, split-adjusted history near $0.26 in 1990
    day = close.index.get_loc(pd.Timestamp("2000-09-29"))
    assert close["AAPL"].iloc[day] / close["AAPL"].iloc[day - 1] == pytest.approx(0.4815, abs=1e-3)
    assert close["AAPL"].iloc[0] < 1.0


def test_unknown_ticker_lists_the_available_ones(home):
    with pytest.raises(DataError) as info:
        psd.load_prices("bundled", ["AAPL", "TSLA"], home=home)
    msg = str(info.value)
    assert "TSLA not in source 'bundled'" in msg and "AAPL, AMD, BAC" in msg


def test_unknown_source_is_a_configuration_error(home):
    with pytest.raises(ConfigurationError, match="unknown data source 'quandl'"):
        psd.load_prices("quandl", ["AAPL", "MSFT"], home=home)


def _write_wide(path, close: pd.DataFrame) -> None:
    close.rename_axis("Date").to_csv(path)


def test_csv_wide_format_round_trips(tmp_path, aapl_msft):
    file = tmp_path / "prices.csv"
    _write_wide(file, aapl_msft.iloc[:300])
    data = psd.load_prices(f"csv:{file}", ["AAPL", "MSFT"])
    np.testing.assert_allclose(data.close.astype(float).to_numpy(), aapl_msft.iloc[:300].to_numpy())
    assert data.close.index.equals(aapl_msft.index[:300])


def test_csv_long_ohlcv_format_gives_volume_features(tmp_path, aapl_msft, home):
    rows = []
    for ticker in ("AAPL", "MSFT"):
        s = aapl_msft[ticker].iloc[:400]
        rows.append(
            pd.DataFrame(
                {
                    "date": s.index.strftime("%Y-%m-%d"),
                    "symbol": ticker.lower(),
                    "open": s,
                    "high": s,
                    "low": s,
                    "close": s,
                    "volume": 1e6 + np.arange(400),
                }
            )
        )
    file = tmp_path / "long.csv"
    pd.concat(rows).to_csv(file, index=False)
    table, summary = psd.process(f"csv:{file}", C.Pair("AAPL", "MSFT"), home=home)
    assert summary.has_volume and len(summary.features) == 25
    assert "AAPL_volume_ratio" in table.columns


def test_csv_missing_file(home):
    with pytest.raises(DataError, match="CSV file not found"):
        psd.load_prices("csv:/nonexistent/prices.csv", ["AAPL", "MSFT"])


def test_csv_without_date_column(tmp_path):
    file = tmp_path / "nodate.csv"
    file.write_text("AAPL,MSFT\n1,2\n")
    with pytest.raises(ValidationError, match=r"\[missing_column\].*no date column"):
        psd.load_csv(file)


def test_csv_bad_date_names_the_row(tmp_path):
    file = tmp_path / "baddate.csv"
    file.write_text("date,AAPL,MSFT\n2020-01-02,1,2\nnot-a-date,1,2\n")
    with pytest.raises(ValidationError, match=r"\[bad_date\].*row 3.*'not-a-date'"):
        psd.load_csv(file)


def test_csv_non_numeric_value_names_ticker_and_date(tmp_path, home, aapl_msft):
    file = tmp_path / "text.csv"
    frame = aapl_msft.iloc[:200].astype(object)
    frame.iloc[150, 1] = "12,5O"
    _write_wide(file, frame)
    day = str(aapl_msft.index[150].date())
    with pytest.raises(
        ValidationError, match=rf"\[non_numeric\] MSFT {day}: close '12,5O' is not a number"
    ):
        psd.process(f"csv:{file}", C.Pair("AAPL", "MSFT"), home=home)
    assert not home.processed_file(C.Pair("AAPL", "MSFT")).exists()  # nothing half-written


def test_csv_source_needs_a_path():
    with pytest.raises(ConfigurationError, match="needs a path"):
        psd.load_prices("csv:", ["AAPL", "MSFT"])
