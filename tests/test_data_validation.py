"""data_validation: bundled history passes; each rule rejects bad input naming rule, ticker, date"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import data_validation as dv
from error_handling import ValidationError


@pytest.fixture
def prices(aapl_msft) -> pd.DataFrame:
    """A year of real AAPL/MSFT closes to break in each test."""
    return aapl_msft.loc["2019-01-01":"2019-12-31"].copy()


def _expect(
    rule: str, ticker: str | None, date: str | None, fn, *args, **kwargs
) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        fn(*args, **kwargs)
    err = info.value
    msg = str(err)
    assert err.rule == rule and f"[{rule}]" in msg
    if ticker is not None:
        assert ticker in msg
    if date is not None:
        assert date in msg
    return err


def test_whole_bundled_history_passes_every_rule(bundled):
    report = dv.validate_prices(bundled.close, list(bundled.close.columns))
    assert report.rows == 8313
    assert report.start == pd.Timestamp("1990-01-02") and report.end == pd.Timestamp("2022-12-28")
    assert {"session_gap", "split_artefact"} <= set(report.rules)


def test_bundled_extreme_days_are_not_split_artefacts(bundled):
    """AAPL -52 % on 2000-09-29 and RRC to 1/3 on 1990-04-10 are real (or at least in the data)."""
    for ticker, day in [("AAPL", "2000-09-29"), ("RRC", "1990-04-10")]:
        series = bundled.close[ticker]
        i = series.index.get_loc(pd.Timestamp(day))
        assert abs(np.log(series.iloc[i] / series.iloc[i - 1])) > 0.7
        assert not dv.split_artefact_mask(series.to_numpy())[i]


def test_missing_column(prices):
    _expect("missing_column", "JPM", None, dv.validate_prices, prices, ["AAPL", "JPM"])


def test_non_numeric_names_the_cell(prices):
    bad = prices.astype(object)
    bad.loc["2019-03-04", "MSFT"] = "n/a"
    _expect("non_numeric", "MSFT", "2019-03-04", dv.validate_prices, bad, ["AAPL", "MSFT"])


def test_nan(prices):
    prices.loc["2019-05-06", "AAPL"] = np.nan
    _expect("nan_or_inf", "AAPL", "2019-05-06", dv.validate_prices, prices, ["AAPL", "MSFT"])


def test_inf(prices):
    prices.loc["2019-05-07", "MSFT"] = np.inf
    _expect("nan_or_inf", "MSFT", "2019-05-07", dv.validate_prices, prices, ["AAPL", "MSFT"])


@pytest.mark.parametrize("value", [0.0, -12.5])
def test_non_positive(prices, value):
    prices.loc["2019-07-01", "AAPL"] = value
    _expect("non_positive", "AAPL", "2019-07-01", dv.validate_prices, prices, ["AAPL", "MSFT"])


@pytest.mark.parametrize("value", [1e308, 2e7, 1e-9])
def test_a_close_outside_the_sane_bounds_is_refused_naming_it(prices, value):
    """An absurd but finite close is a data error here, not a missing feature later."""
    prices.loc["2019-07-02", "MSFT"] = value
    err = _expect("price_range", "MSFT", "2019-07-02", dv.validate_prices, prices, ["AAPL", "MSFT"])
    assert f"{value:g}" in str(err)


def test_duplicate_date(prices):
    dup = pd.concat([prices.iloc[:10], prices.iloc[9:10], prices.iloc[10:]])
    day = str(prices.index[9].date())
    _expect("duplicate_date", None, day, dv.validate_prices, dup, ["AAPL", "MSFT"])


def test_non_increasing_date(prices):
    swapped = prices.iloc[[*range(20), 21, 20, *range(22, len(prices))]]
    day = str(prices.index[20].date())
    _expect("non_increasing_date", None, day, dv.validate_prices, swapped, ["AAPL", "MSFT"])


def test_session_gap_against_the_nyse_calendar(prices):
    holed = prices.drop(prices.loc["2019-06-03":"2019-06-12"].index)  # 8 sessions missing
    err = _expect("session_gap", "AAPL", "2019-06-13", dv.validate_prices, holed, ["AAPL", "MSFT"])
    assert "8 sessions missing since 2019-05-31" in str(err)


def test_holidays_are_not_gaps(prices):
    """2019-07-04 and Good Friday 2019-04-19 are NYSE holidays: no bar expected, none missing."""
    assert pd.Timestamp("2019-07-04") not in prices.index
    dv.validate_prices(prices, ["AAPL", "MSFT"], max_gap_sessions=0)


def test_gap_within_the_allowed_number_passes(prices):
    holed = prices.drop(prices.loc["2019-06-03":"2019-06-05"].index)  # 3 sessions missing
    dv.validate_prices(holed, ["AAPL", "MSFT"], max_gap_sessions=3)
    _expect(
        "session_gap",
        None,
        "2019-06-06",
        dv.validate_prices,
        holed,
        ["AAPL", "MSFT"],
        max_gap_sessions=2,
    )


def test_weekday_fallback_calendar_counts_holidays_as_sessions(prices):
    weekdays = lambda a, b: pd.bdate_range(a, b)  # noqa: E731 - what nyse_sessions falls back to
    # 2019-07-04 is a holiday: against plain weekdays the 07-03 -> 07-05 step misses one session.
    summer = prices.loc["2019-06-01":"2019-07-31"]
    dv.validate_prices(summer, ["AAPL", "MSFT"], max_gap_sessions=0)
    _expect(
        "session_gap",
        None,
        "2019-07-05",
        dv.validate_prices,
        summer,
        ["AAPL", "MSFT"],
        max_gap_sessions=0,
        sessions=weekdays,
    )


@pytest.mark.parametrize("factor", [2.0, 3.0, 4.0, 0.5, 0.1])
def test_unadjusted_split_is_flagged(aapl_msft, factor):
    """An unadjusted split (prices after the date divided by the factor) is caught on its date."""
    prices = aapl_msft.loc["2018-01-01":"2019-12-31"].copy()
    prices.loc["2019-03-15":, "AAPL"] /= factor
    err = _expect(
        "split_artefact", "AAPL", "2019-03-15", dv.validate_prices, prices, ["AAPL", "MSFT"]
    )
    assert "unadjusted split" in str(err)


def test_crash_that_reverts_is_not_a_split(aapl_msft):
    """A one-day halving that is undone two days later is a bad print or a crash, not a split."""
    p = aapl_msft["AAPL"].loc["2018-01-01":"2019-12-31"].to_numpy().copy()
    p[300] = p[299] / 2
    assert not dv.split_artefact_mask(p)[300]


def test_price_sanity_applies_only_to_live_use(prices):
    old = prices.copy() / 100  # split-adjusted history can sit far below today's range
    dv.validate_prices(old, ["AAPL", "MSFT"])
    now = pd.Timestamp("2019-12-31 12:00", tz="America/New_York")
    day = str(prices.index[-1].date())
    _expect(
        "price_sanity", "AAPL", day, dv.validate_prices, old, ["AAPL", "MSFT"], live=True, now=now
    )


def test_price_sanity_unknown_symbol_uses_the_reference_price(prices):
    live = prices.rename(columns={"AAPL": "ZZZZ"})
    now = pd.Timestamp("2019-12-31 12:00", tz="America/New_York")
    last = float(live["ZZZZ"].iloc[-1])
    dv.validate_prices(live, ["ZZZZ", "MSFT"], live=True, now=now, reference_prices={"ZZZZ": last})
    _expect(
        "price_sanity",
        "ZZZZ",
        None,
        dv.validate_prices,
        live,
        ["ZZZZ", "MSFT"],
        live=True,
        now=now,
        reference_prices={"ZZZZ": last * 10},
    )


def test_stale_last_bar_in_live_use(prices):
    day = str(prices.index[-1].date())  # 2019-12-31, a Tuesday
    fresh = pd.Timestamp("2020-01-02 10:00", tz="America/New_York")  # one session (01-02) since
    dv.validate_prices(prices, ["AAPL", "MSFT"], live=True, now=fresh)
    stale = pd.Timestamp("2020-01-03 10:00", tz="America/New_York")  # two sessions since
    err = _expect(
        "stale_bar", "AAPL", day, dv.validate_prices, prices, ["AAPL", "MSFT"], live=True, now=stale
    )
    assert "2 sessions old" in str(err)
    before_open = pd.Timestamp("2020-01-03 08:00", tz="America/New_York")  # 01-03 not started yet
    dv.validate_prices(prices, ["AAPL", "MSFT"], live=True, now=before_open)


# --- future_bar: no daily bar may be dated after today in New York --------------------------------
def test_bar_after_today_is_refused_naming_the_first_date_the_count_and_the_source(prices):
    """Data through 2019-12-31 checked on 2019-12-20: 12-23, 24, 26, 27, 30 and 31 are future."""
    err = _expect(
        "future_bar",
        "AAPL,MSFT",
        "2019-12-23",
        dv.validate_prices,
        prices,
        ["AAPL", "MSFT"],
        today=pd.Timestamp("2019-12-20"),
        source="csv:/data/prices.csv",
    )
    assert "first of 6 bars dated after today (2019-12-20 New York)" in str(err)
    assert "csv:/data/prices.csv" in str(err) and "\n" not in str(err)
    assert "future_bar" in dv.validate_prices(prices, ["AAPL", "MSFT"], today="2019-12-31").rules


def test_future_bar_is_reported_before_the_missing_values_it_brings(prices):
    """A long-format file with one AAPL bar in 2030 leaves MSFT empty that day: the date is the
    problem, and only AAPL has it."""
    prices.loc[pd.Timestamp("2030-01-02")] = [123.0, np.nan]
    err = _expect(
        "future_bar",
        "AAPL",
        "2030-01-02",
        dv.validate_prices,
        prices,
        ["AAPL", "MSFT"],
        today=pd.Timestamp("2024-06-03"),
    )
    assert "MSFT" not in str(err) and "first of 1 bar dated" in str(err)


def test_future_bar_in_live_use_takes_today_from_now(prices):
    now = pd.Timestamp("2019-12-31 03:00", tz="UTC")  # 22:00 on 2019-12-30 in New York
    _expect("future_bar", None, "2019-12-31", dv.validate_prices, prices, ["AAPL", "MSFT"], now=now)


def test_process_with_future_bars_writes_nothing(tmp_path, home, prices):
    import constants as C
    import process_stock_data as psd

    file = tmp_path / "prices.csv"
    prices.rename_axis("date").to_csv(file)
    with pytest.raises(ValidationError, match=r"\[future_bar\]"):
        psd.process(
            f"csv:{file}", C.Pair("AAPL", "MSFT"), home=home, today=pd.Timestamp("2019-06-28")
        )
    assert not home.processed_file(C.Pair("AAPL", "MSFT")).exists()
    psd.process(f"csv:{file}", C.Pair("AAPL", "MSFT"), home=home, today=pd.Timestamp("2020-01-02"))
    assert home.processed_file(C.Pair("AAPL", "MSFT")).exists()


def test_cli_process_of_a_2030_csv_exits_4_in_one_line_and_keeps_the_processed_files(tmp_path):
    import hashlib

    from tests.helpers import run

    home = tmp_path / "home"
    assert run("main.py", "process", home=home).returncode == 0
    data = home / "data"
    before = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in data.iterdir()}
    assert len(before) == 2
    days = pd.bdate_range("2030-01-02", "2032-12-31")
    steps = np.exp(np.cumsum(np.random.default_rng(0).normal(0, 0.01, (len(days), 2)), axis=0))
    file = tmp_path / "future.csv"
    pd.DataFrame(steps * [100, 200], index=days, columns=["AAPL", "MSFT"]).rename_axis(
        "date"
    ).to_csv(file)

    res = run("main.py", "process", "--source", f"csv:{file}", home=home)

    assert res.returncode == 4, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "[future_bar]" in lines[0] and "2030-01-02" in lines[0] and str(file) in lines[0]
    assert f"first of {len(days)} bars dated after today" in lines[0]
    after = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in data.iterdir()}
    assert after == before
