"""Shared fixtures: a temporary TRADING_HOME per test and the bundled prices loaded once."""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
import pytest

import alert_dispatch
import constants as C
import process_stock_data as psd


@pytest.fixture(autouse=True)
def _alerts_delivered_within_the_test() -> Iterator[None]:
    """A test's process-wide alert dispatchers finish (or give up) before the next test starts,
    so no background delivery or its log lines leak into another test."""
    yield
    alert_dispatch.close_all(timeout_s=10)


@pytest.fixture
def home(tmp_path, monkeypatch) -> C.Paths:
    """An empty TRADING_HOME so no test touches the project's data/, logs/ or models/."""
    monkeypatch.setenv(C.ENV_TRADING_HOME, str(tmp_path))
    for var in (C.ENV_TICKER_LONG, C.ENV_TICKER_SHORT, C.ENV_DATA_SOURCE):
        monkeypatch.delenv(var, raising=False)
    return C.paths()


@pytest.fixture(scope="session")
def bundled() -> psd.PriceData:
    """All 20 bundled tickers (real adjusted closes 1990-2022)."""
    return psd.load_bundled()


@pytest.fixture(scope="session")
def aapl_msft(bundled) -> pd.DataFrame:
    return bundled.close[["AAPL", "MSFT"]]
