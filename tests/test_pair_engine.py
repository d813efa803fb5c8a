"""The shared engine's parts: the trading configuration (defaults once, TOML, overrides), the
rebalance band, the ledger (fills, borrow once per day), causal volatility, and the typed state
files of the live loop (round trips)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

import live_trading as lt
import pair_engine as pe
import transaction_costs as tc
from error_handling import ConfigurationError
from tests.helpers import run
from trading_execution import Fill, OrderStatus, Purpose, RemainderPolicy, Side


# --- TradingConfig ------------------------------------------------------------------------------
def test_toml_sets_nested_fields_and_keeps_every_other_default(tmp_path):
    file = tmp_path / "trading.toml"
    file.write_text(
        "rebalance_band = 0.4\nfill_delay_bars = 2\n"
        "[sizing]\nkelly_fraction = 0.25\nhold = 'flat'\n"
        "[execution]\nremainder = 'carry'\nhard_to_borrow = ['gme']\n"
        "[execution.costs]\nhalf_spread_bps = 5\n"
        "[limits]\nmax_drawdown_pct = 0.2\n"
    )
    cfg = pe.TradingConfig.from_toml(file)
    default = pe.TradingConfig()
    assert (cfg.rebalance_band, cfg.fill_delay_bars) == (0.4, 2)
    assert (cfg.sizing.kelly_fraction, cfg.sizing.hold) == (0.25, "flat")
    assert cfg.execution.remainder is RemainderPolicy.CARRY
    assert cfg.execution.hard_to_borrow == frozenset({"GME"})
    assert cfg.execution.costs.half_spread_bps == 5.0
    assert cfg.limits.max_drawdown_pct == 0.2
    assert cfg.limits.max_leg_notional == default.limits.max_leg_notional
    assert cfg.execution.costs.commission_min == default.execution.costs.commission_min


@pytest.mark.parametrize(
    "text,message",
    [
        ("rebalance_bnad = 0.3\n", "unknown setting 'rebalance_bnad'"),
        ("[limits]\nmax_drawdown = 0.3\n", "unknown setting 'limits.max_drawdown'"),
        ("fill_delay_bars = 'one'\n", "fill_delay_bars must be a int"),
        ("[limits]\nmax_drawdown_pct = 1.5\n", "fraction in (0, 1)"),
        ("rebalance_band = 1.0\n", "rebalance band"),
        ("[execution]\nremainder = 'keep'\n", "must be one of cancel, carry"),
        ("sizing = 3\n", "sizing must be a table"),
        ("[limits\n", "not valid TOML"),
    ],
)
def test_a_bad_config_file_is_refused_naming_the_file_and_the_setting(tmp_path, text, message):
    file = tmp_path / "bad.toml"
    file.write_text(text)
    with pytest.raises(ConfigurationError, match=r"bad\.toml") as info:
        pe.TradingConfig.from_toml(file)
    assert message in str(info.value)


def test_dotted_overrides_replace_only_what_they_name():
    cfg = pe.TradingConfig().with_values({"limits.max_net_exposure": 1e4, "initial_capital": 5e4})
    assert cfg.limits.max_net_exposure == 1e4 and cfg.initial_capital == 5e4
    assert cfg.limits.max_gross_exposure == pe.TradingConfig().limits.max_gross_exposure


def test_backtest_and_live_take_the_config_file_and_refuse_a_bad_one_in_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[limits]\nmax_leverage = -1\n")
    for command in (["backtest", "--no-charts"], ["live", "--replay", "2022-01-03", "2022-01-05"]):
        proc = run("main.py", *command, "--config", str(bad), home=tmp_path)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "max_leverage" in lines[0] and "bad.toml" in lines[0]
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data" / "positions.json").exists()


# --- The rebalance band -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "held,target,band,trades",
    [
        ({"A": 100, "B": -50}, {"A": 100, "B": -50}, 0.25, False),  # nothing to do
        ({"A": 100, "B": -50}, {"A": 110, "B": -55}, 0.25, False),  # inside the band
        ({"A": 100, "B": -50}, {"A": 140, "B": -50}, 0.25, True),  # a leg beyond it
        ({"A": 100, "B": -50}, {"A": -100, "B": 50}, 0.9, True),  # a flip always trades
        ({"A": 100, "B": -50}, {"A": 0, "B": 0}, 0.9, True),  # closing always trades
        ({}, {"A": 1, "B": -1}, 0.9, True),  # opening always trades
        ({"A": 100, "B": -50}, {"A": 101, "B": -50}, 0.0, True),  # band 0: any difference
        ({"A": 4, "B": -3}, {"A": 5, "B": -3}, 0.25, False),  # 1 share of 5 is 20 %
    ],
)
def test_the_rebalance_rule(held, target, band, trades):
    assert pe.needs_rebalance(held, target, band) is trades


# --- The ledger ---------------------------------------------------------------------------------
def fill(sym: str, side: Side, qty: int, price: float, fees: float = 0.0) -> Fill:
    return Fill(
        f"id-{sym}-{qty}",
        sym,
        side,
        qty,
        qty,
        price,
        price,
        tc.TradeCosts(commission=fees),
        OrderStatus.FILLED,
        Purpose.ENTRY,
        pd.Timestamp("2022-01-03"),
    )


def test_ledger_books_average_price_realized_pnl_and_cash():
    book = pe.Ledger(10_000.0, ("A",))
    book.apply(fill("A", Side.BUY, 10, 100.0, fees=1.0))
    book.apply(fill("A", Side.BUY, 10, 110.0))
    assert book.qty["A"] == 20 and book.avg["A"] == pytest.approx(105.0)
    book.apply(fill("A", Side.SELL, 30, 120.0))  # closes 20 (+300), opens 10 short at 120
    assert book.qty["A"] == -10 and book.avg["A"] == 120.0
    assert book.realized == pytest.approx(300.0)
    assert book.cash == pytest.approx(10_000 - 1 - 1000 - 1100 + 3600)
    again = pe.Ledger.from_json(book.to_json())
    assert again.to_json() == book.to_json()


def test_borrow_is_charged_once_per_calendar_day():
    book = pe.Ledger(0.0, ("A",))
    book.apply(fill("A", Side.SELL, 100, 50.0))
    rates = {"A": 0.036}
    monday, friday = pe.day_number("2022-01-03"), pe.day_number("2022-01-07")
    assert book.charge_borrow(monday, 0.0)  # the first bar: nothing accrued before it
    fee = book.borrow_due(friday, {"A": 50.0}, rates, 360.0)
    assert fee == pytest.approx(100 * 50.0 * 0.036 * 4 / 360)
    assert book.charge_borrow(friday, fee)
    assert book.borrow_due(friday, {"A": 50.0}, rates, 360.0) == 0.0  # a resume: nothing due
    assert not book.charge_borrow(friday, fee)  # and a second charge is refused
    assert book.borrow_paid == pytest.approx(fee)


# --- Causal volatility --------------------------------------------------------------------------
def test_daily_vol_at_a_bar_does_not_depend_on_later_bars():
    rng = np.random.default_rng(3)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, size=(80, 2)), axis=0))
    full = pe.daily_vol(close)
    for t in (0, 3, 6, 25, 79):
        np.testing.assert_allclose(pe.daily_vol(close[: t + 1])[-1], full[t], rtol=1e-12)
    assert (full[:5] == pe.DEFAULT_DAILY_VOL).all()  # fewer than 5 returns: the default


def test_the_backtest_warms_volatility_up_on_history_before_its_first_bar():
    import backtest_strategy as bs

    rng = np.random.default_rng(5)
    dates = pd.bdate_range("2021-01-04", periods=90)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.03, size=(90, 2)), axis=0))
    prices = pd.DataFrame(close, index=dates, columns=["A", "B"])
    w = np.full((60, 2), np.nan)
    w[0] = [0.3, -0.3]
    cfg = dataclasses.replace(pe.TradingConfig(), fill_delay_bars=0)
    warm = bs.run_backtest(prices.iloc[30:], w, cfg, history=prices.iloc[:30])
    cold = bs.run_backtest(prices.iloc[30:], w, cfg)
    expected = pe.daily_vol(close)[30]  # the causal volatility of the first bar, from history
    impact = tc.impact_fraction(
        warm.trades["qty"].iloc[0], expected[0], 5e7 / close[30, 0], cfg.execution.costs
    )
    assert warm.trades["impact"].iloc[0] == pytest.approx(
        warm.trades["qty"].iloc[0] * close[30, 0] * impact, rel=1e-9
    )
    assert cold.trades["impact"].iloc[0] != warm.trades["impact"].iloc[0]  # default 2 % cold


# --- Typed state files --------------------------------------------------------------------------
def test_positions_state_round_trips_and_a_malformed_file_is_named(tmp_path):
    state = lt.PositionsState(
        mode="paper",
        broker="simulated",
        updated_at="2022-01-04T15:00:00+00:00",
        cash=1234.5,
        equity=99_000.25,
        positions={"AAPL": lt.HeldPosition(10, 180.5, 181.0)},
        last_processed_bar="2022-01-03T00:00:00",
        pending_decision=lt.PendingDecision("2022-01-04T00:00:00", {"AAPL": 12}, 99_100.0),
    )
    path = tmp_path / "positions.json"
    state.save(path)
    assert lt.read_positions(path) == state
    path.write_text('{"schema_version": 1, "mode": "paper"}')
    with pytest.raises(ConfigurationError, match=r"positions\.json is not a positions file"):
        lt.read_positions(path)


def test_positions_state_keeps_fractional_and_whole_quantities_exactly(tmp_path):
    """Fractional shares come back as the same floats, whole shares as ints."""
    aapl, msft = 10_000.0 / 0.276, -10_000.0 / 0.501
    state = lt.PositionsState(
        mode="paper",
        broker="simulated",
        updated_at="2022-01-04T15:00:00+00:00",
        cash=1234.5,
        equity=99_000.25,
        positions={"AAPL": lt.HeldPosition(aapl, 0.276, 0.3), "MSFT": lt.HeldPosition(-7, 1, 1)},
        pending_decision=lt.PendingDecision("2022-01-04T00:00:00", {"MSFT": msft}, 99_100.0),
    )
    path = tmp_path / "positions.json"
    state.save(path)
    again = lt.read_positions(path)
    assert again.positions["AAPL"].qty == aapl and type(again.positions["MSFT"].qty) is int
    assert again.pending_decision.target == {"MSFT": msft}


def test_heartbeat_round_trips_and_a_corrupt_one_is_named(tmp_path):
    beat = lt.Heartbeat(
        status="running",
        time="2022-01-04T15:00:00+00:00",
        loop_time="2022-01-04T15:00:00+00:00",
        pid=12,
        mode="paper",
        broker="simulated",
        market_open=True,
        next_open="2022-01-05T14:30:00+00:00",
        next_close="2022-01-04T21:00:00+00:00",
        equity=1.0,
        cash=2.0,
        positions={"AAPL": 3},
        halted=False,
        halt_reason=None,
        circuit_breakers={},
        last_bar=None,
        interval_s=300.0,
    )
    path = tmp_path / "heartbeat.json"
    lt.write_heartbeat(path, beat)
    assert lt.Heartbeat.read(path) == beat
    path.write_text("{{{")
    with pytest.raises(ConfigurationError, match=r"heartbeat\.json is not a readable heartbeat"):
        lt.Heartbeat.read(path)


def test_an_equity_row_is_written_once_per_bar(tmp_path):
    path = tmp_path / "equity_paper.csv"
    path.write_text("date,equity,cash,borrow_paid,qty_A,qty_B\n")  # a torn first append
    row = lt.EquityRow("2022-01-03", 100.0, 50.0, 0.0, {"A": 1, "B": -1})
    assert lt.append_equity_row(path, row, ("A", "B"))
    assert not lt.append_equity_row(path, row, ("A", "B"))  # a restart re-running the bar
    nxt = dataclasses.replace(row, date="2022-01-04", equity=101.0)
    assert lt.append_equity_row(path, nxt, ("A", "B"))
    frame = lt.read_equity_log(path)
    assert list(frame["equity"]) == [100.0, 101.0] and list(frame["qty_B"]) == [-1, -1]


EQUITY_HEADER = "date,equity,cash,borrow_paid,qty_A,qty_B\n"
EQUITY_ROW = "2022-01-03,100.000000,50.000000,0.000000,1,-1\n"


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("garbage\nmore garbage\n", "line 1"),
        ("date,equity\n2022-01-03,100\n", "line 1"),
        ("date,equity,cash,borrow_paid,qty_X,qty_Y\n", "the log of X/Y, not A/B"),
        (EQUITY_HEADER + "2022-01-03,lots,50,0,1,-1\n", "line 2"),
        (EQUITY_HEADER + "2022-01-03,nan,50,0,1,-1\n", "line 2"),
        (EQUITY_HEADER + "2022-01-03,inf,50,0,1,-1\n", "line 2"),
        (EQUITY_HEADER + "2022-01-03,100,50,0,1\n", "line 2"),
        (EQUITY_HEADER + "03/01/2022,100,50,0,1,-1\n", "line 2"),
        (EQUITY_HEADER + EQUITY_ROW + "2021-12-31,100,50,0,1,-1\n", "line 3: 2021-12-31"),
        (EQUITY_HEADER + EQUITY_ROW + EQUITY_ROW, "line 3: 2022-01-03"),
        (EQUITY_HEADER + EQUITY_ROW + "this is not a row\n" + EQUITY_ROW, "line 3"),
        (EQUITY_HEADER + EQUITY_ROW[:20], "cut short"),
        (bytes(range(256)), "unreadable"),
    ],
)
def test_an_equity_log_that_does_not_parse_is_refused_naming_the_file(tmp_path, content, needle):
    path = tmp_path / "equity_paper.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ConfigurationError) as info:
        lt.check_equity_log(path, ("A", "B"))
    assert str(path) in str(info.value) and needle in str(info.value)


def test_an_equity_log_ending_in_garbage_is_never_appended_under(tmp_path):
    """The overwritten log of issue 23 item 18: the append refuses it and leaves it as it was."""
    path = tmp_path / "equity_paper.csv"
    path.write_text(EQUITY_HEADER + EQUITY_ROW + "garbage written over the log\n")
    before = path.read_bytes()
    row = lt.EquityRow("2022-01-04", 100.0, 50.0, 0.0, {"A": 1, "B": -1})
    with pytest.raises(ConfigurationError, match=r"equity_paper\.csv"):
        lt.append_equity_row(path, row, ("A", "B"))
    assert path.read_bytes() == before


@pytest.mark.parametrize("content", ["", EQUITY_HEADER])
def test_an_equity_log_without_rows_is_rewritten_whole_with_its_first_row(tmp_path, content):
    """An empty file or a lone header (an older version's torn first append) has no row to
    lose: accepted, and replaced atomically by the header and the first row."""
    path = tmp_path / "equity_paper.csv"
    path.write_text(content)
    assert lt.check_equity_log(path, ("A", "B")) is None
    row = lt.EquityRow("2022-01-03", 100.0, 50.0, 0.0, {"A": 1, "B": -1})
    assert lt.append_equity_row(path, row, ("A", "B"))
    assert path.read_text() == EQUITY_HEADER + EQUITY_ROW
    assert lt.check_equity_log(path, ("A", "B")) == "2022-01-03"
    assert [p.name for p in tmp_path.iterdir()] == ["equity_paper.csv"]  # no temp file left


def test_daily_vol_is_pandas_rolling_std_to_the_bit():
    """`daily_vol` calls pandas' own rolling variance directly: every bit equals the public
    ``pct_change().rolling(20, min_periods=5).std().fillna(0.02)``, on random walks (calm and
    wild), flat stretches (variance 0, and float noise around it) and very short series."""
    rng = np.random.default_rng(5)
    for i in range(200):
        n = int(rng.integers(1, 300))
        close = np.exp(np.cumsum(rng.normal(0, rng.uniform(1e-4, 0.3), (n, 2)), axis=0)) * 50
        if i % 5 == 0:
            close[: n // 2] = 10.0
        want = (
            pd.DataFrame(close)
            .pct_change()
            .rolling(pe.VOL_BARS, min_periods=5)
            .std()
            .fillna(pe.DEFAULT_DAILY_VOL)
            .to_numpy()
        )
        assert np.array_equal(pe.daily_vol(close), want)
