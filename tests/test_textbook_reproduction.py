"""Is the edge real? Other engines' conventions from the command line: the textbook z-score pair
rule ($10,000 per leg, fractional shares, 0.1 % commission, fills at the signal bar's close)
backtested by `main.py backtest --signals` equals a plain loop written here, to the cent, over the
whole bundled history; and the options that make it expressible (`--leg-usd`,
`--fractional-shares`, the `state` column, flat warm-up rows) each do what they say."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import backtest_strategy as bs
import constants as C
import live_trading as lt
import process_stock_data as psd
import trading_api as ta
import transaction_costs as tc
from error_handling import ConfigurationError
from tests.helpers import run
from trading_execution import ExecutionConfig

PAIR = C.Pair("AAPL", "MSFT")
LEG_USD = 10_000.0
COMMISSION = 0.001  # 0.1 % of each fill's notional
ENTRY, EXIT = 2.0, 0.5  # |z| thresholds of the textbook rule
WINDOW = 60  # bars of the hedge-ratio regression and of the z-score


def textbook_flags() -> list[str]:
    """The textbook conventions as `backtest` flags (README: "Reproduce the textbook z-score
    rule"). `--max-drawdown 0.5`: the rule's own drawdown passes 10 % of the $100,000 account
    (1997), where the default drawdown control would liquidate and halt it; every other limit
    of the risk gate stays at its default and refuses nothing (asserted below)."""
    return [
        "--start", "1990-01-02", "--leg-usd", "10000", "--fractional-shares",
        "--fees", "none",  # no SEC fee, no FINRA TAF
        "--commission-bps", "10", "--commission-per-share", "0", "--commission-min", "0",
        "--half-spread-bps", "0", "--impact-coef", "0", "--borrow-rate", "0",
        "--fill-delay", "0", "--max-drawdown", "0.5", "--no-charts",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def processed(tmp_path_factory) -> Path:
    """A TRADING_HOME holding only the processed bundled AAPL/MSFT table."""
    root = tmp_path_factory.mktemp("textbook")
    psd.process("bundled", PAIR, home=C.paths(root).ensure())
    return root


@pytest.fixture
def home(processed, tmp_path) -> Path:
    """A private copy of the processed home."""
    shutil.copytree(processed / "data", tmp_path / "home" / "data")
    return tmp_path / "home"


def only_run_dir(home: Path) -> Path:
    runs = [p for p in (home / "results").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(runs) == 1, runs
    return runs[0]


def textbook_states(close: pd.DataFrame) -> np.ndarray:
    """The textbook rule on every row of `close` (AAPL, MSFT):

    hedge ratio b_t = OLS slope of log(AAPL) on log(MSFT) over the 60 bars ending at t;
    spread s_t = log(AAPL_t) - b_t log(MSFT_t); z_t = (s_t - mean) / std of s over the 60 bars
    ending at t (causal; undefined, hence flat, for the first 118 bars).
    Flat -> long the spread (+1) when z < -2, short (-1) when z > +2. Long -> flat when |z| < 0.5
    or when z > +2 (no direct reversal: the opposite entry needs one more bar); short -> flat
    when |z| < 0.5 or z < -2."""
    log_a, log_m = np.log(close["AAPL"]), np.log(close["MSFT"])
    slope = log_a.rolling(WINDOW).cov(log_m) / log_m.rolling(WINDOW).var()
    spread = log_a - slope * log_m
    z = ((spread - spread.rolling(WINDOW).mean()) / spread.rolling(WINDOW).std()).to_numpy()
    states = np.zeros(len(z), dtype=int)
    state = 0
    for t, zt in enumerate(z):
        if math.isnan(zt):
            state = 0
        elif state == 0:
            state = 1 if zt < -ENTRY else -1 if zt > ENTRY else 0
        else:  # held: exit on reversion, or on the opposite signal (no direct reversal)
            opposite = zt > ENTRY if state == 1 else zt < -ENTRY
            if abs(zt) < EXIT or opposite:
                state = 0
        states[t] = state
    return states


def cash_loop(close: np.ndarray, states: np.ndarray, capital: float) -> tuple[np.ndarray, int]:
    """(equity per bar, fills) of the textbook conventions, written from scratch: on a bar whose
    state differs from the last, each leg trades to state x ±$10,000 / that bar's close in
    fractional shares, paying 0.1 % of the fill's notional; equity = cash + shares x close."""
    cash, shares, held, fills = capital, np.zeros(2), 0, 0
    equity = np.empty(len(close))
    for t, price in enumerate(close):
        if states[t] != held:
            for leg, sign in ((0, 1.0), (1, -1.0)):
                want = states[t] * sign * LEG_USD / price[leg]
                traded = want - shares[leg]
                if traded:
                    # Commissions are billed in cents: the engine rounds each one to the cent
                    # (transaction_costs.commission), a real property this loop mirrors.
                    fee = round(abs(traded) * price[leg] * COMMISSION * 100.0) / 100.0
                    cash -= traded * price[leg] + fee
                    shares[leg] = want
                    fills += 1
            held = states[t]
        equity[t] = cash + shares @ price
    return equity, fills


def test_textbook_zscore_rule_reproduced_to_the_cent_over_the_bundled_history(home, tmp_path):
    """`--leg-usd 10000 --fractional-shares`, no regulatory fees, a flat 0.1 % commission, fills
    at the signal bar's close: the engine's equity on every bar from 1990 to 2022 and its number
    of fills equal the plain loop above (prices loaded here, independently, from skfolio)."""
    from skfolio.datasets import load_sp500_dataset

    close = load_sp500_dataset()[["AAPL", "MSFT"]].astype("float64")
    close.index = pd.DatetimeIndex(close.index).normalize()
    states = textbook_states(close)
    signals = tmp_path / "textbook.csv"
    pd.DataFrame({"date": close.index.strftime("%Y-%m-%d"), "state": states}).to_csv(
        signals, index=False
    )
    res = run(
        "main.py", "backtest", "--signals", str(signals), *textbook_flags(),
        "--benchmark-rule", "textbook", home=home,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    folder = only_run_dir(home)
    got = pd.read_csv(folder / "equity.csv", index_col="date", parse_dates=True)
    trades = pd.read_csv(folder / "trades.csv")
    summary = json.loads((folder / "summary.json").read_text())

    # The engine trades from the first processed bar; the raw rows before it are the features'
    # warm-up, where the rule is still flat (its z-score needs 118 bars), so they are skipped.
    first = got.index[0]
    warm_up = int(close.index.get_loc(first))
    assert str(first.date()) == "1990-04-24" and warm_up == 78
    assert (states[:warm_up] == 0).all()
    assert summary["run"]["signal_rows_skipped_before"] == warm_up
    note = f"signal file: {warm_up} rows before the first processed bar 1990-04-24 skipped"
    assert any(n.startswith(note) for n in summary["run"]["notes"]), summary["run"]["notes"]

    equity, fills = cash_loop(close.loc[first:].to_numpy(), states[warm_up:], 100_000.0)
    assert list(got.index) == list(close.loc[first:].index)
    assert len(trades) == fills > 400
    assert not (trades["qty"] % 1 == 0).all()  # fractional shares indeed
    assert (trades["fill_price"] == trades["bar_price"]).all()
    difference = np.abs(got["equity"].to_numpy() - equity)
    assert difference.max() < 0.005, (difference.max(), got.index[difference.argmax()])
    assert abs(summary["strategy"]["final_equity"] - equity[-1]) < 0.005

    # The built-in `--benchmark-rule textbook` is the same rule: under the same conventions its
    # column equals the plain loop run from the first processed bar (where the benchmark starts
    # flat and computes its z-score from the processed closes only).
    processed = close.loc[first:]
    bench_equity, bench_fills = cash_loop(
        processed.to_numpy(), textbook_states(processed), 100_000.0
    )
    difference = np.abs(got["zscore_rule_equity"].to_numpy() - bench_equity)
    assert difference.max() < 0.005, (difference.max(), got.index[difference.argmax()])
    assert summary["benchmarks"]["zscore_rule"]["fills"] == bench_fills > 400

    # Nothing else touched it: no refusal, no halt, no fee but the commission. The default 10 %
    # drawdown limit would have liquidated it: the rule's own drawdown is deeper.
    strategy = summary["strategy"]
    assert strategy["rejections"] == {} and strategy["halted_at"] is None
    assert strategy["max_drawdown"] < -0.10
    assert strategy["total_costs"] == pytest.approx(trades["commission"].sum(), abs=0.01)


# --- The options one at a time --------------------------------------------------------------------
def test_fractional_and_whole_shares_differ_by_less_than_one_share_per_leg():
    """One round trip of $10,000 per leg without costs: whole shares are the fractional ones
    truncated, so the two equity curves differ on every bar by less than one share of each leg
    times its price move since the entry -- and do differ."""
    prices = psd.load_bundled().close[["AAPL", "MSFT"]].loc["2021-03-01":"2021-04-30"]
    weights = np.full((len(prices), 2), np.nan)
    weights[3] = (LEG_USD, -LEG_USD)
    weights[30] = (0.0, 0.0)
    curves = {}
    for fractional in (False, True):
        cfg = bs.TradingConfig(
            fill_delay_bars=0,
            sizing=bs.SizingConfig(fractional_shares=fractional),
            execution=ExecutionConfig(costs=tc.CostModel.zero()),
        )
        result = bs.run_backtest(prices, weights, cfg, weight_unit="usd")
        curves[fractional] = result
    whole, frac = curves[False], curves[True]
    entry = prices.iloc[3].to_numpy()
    assert frac.trades["qty"].tolist()[:2] == [LEG_USD / entry[0], LEG_USD / entry[1]]
    assert whole.trades["qty"].tolist()[:2] == [int(LEG_USD / entry[0]), int(LEG_USD / entry[1])]
    assert whole.trades["qty"].dtype == np.int64 and frac.trades["qty"].dtype == np.float64
    move = np.abs(prices.to_numpy() - entry).sum(axis=1)
    move[30:] = move[30]  # closed at bar 30: the difference stays what it was then
    gap = np.abs(frac.equity["equity"] - whole.equity["equity"]).to_numpy()
    assert gap[:4].max() < 1e-9 and gap[4:].max() > 1.0
    assert (gap <= move + 1e-9).all()


def test_leg_usd_sizes_each_leg_at_the_amount_whatever_the_equity(home, tmp_path):
    """--leg-usd 5000: the signal file's entries and the z-score benchmark's are $5,000 per leg
    with $1,000,000 or $50,000 of capital alike."""
    signals = tmp_path / "s.csv"
    signals.write_text("date,action\n2021-03-01,buy\n2021-03-15,flat\n2021-03-22,sell\n")
    sized = {}
    for capital in (1_000_000.0, 50_000.0):
        cfg = bs.TradingConfig(
            initial_capital=capital,
            sizing=bs.SizingConfig(leg_usd=5_000.0, fractional_shares=True),
        )
        request = bs.BacktestRequest(
            PAIR, start="2021-01-04", end="2021-06-30", signal_file=str(signals), config=cfg,
            write_charts=False,
        )  # fmt: skip
        report = bs.backtest(request, home=C.paths(home))
        for name, result in (("file", report.strategy), ("z-score", report.zscore)):
            entries = result.trades[result.trades["purpose"] == "entry"]
            assert len(entries) >= 2, name
            # Fractional shares at the bar's price plus the half-spread and impact it pays.
            assert np.allclose(entries["qty"] * entries["bar_price"], 5_000.0), name
            sized[capital, name] = entries["qty"].tolist()
    assert sized[1_000_000.0, "file"] == sized[50_000.0, "file"]
    assert sized[1_000_000.0, "z-score"] == sized[50_000.0, "z-score"]


def test_a_state_file_backtests_exactly_like_the_equivalent_action_file(home, tmp_path):
    days = ["2021-03-01", "2021-03-02", "2021-03-10", "2021-03-11", "2021-03-22", "2021-04-06"]
    states = ["1", "", "-1", "-1", "0", "-1"]
    actions = ["buy", "hold", "sell", "hold", "flat", "sell"]
    results = []
    for column, values in (("state", states), ("action", actions)):
        path = tmp_path / f"{column}.csv"
        path.write_text(
            f"date,{column}\n" + "".join(f"{d},{v}\n" for d, v in zip(days, values, strict=True))
        )
        request = bs.BacktestRequest(
            PAIR, start="2021-02-01", end="2021-05-28", signal_file=str(path), write_charts=False
        )
        results.append(bs.backtest(request, home=C.paths(home)).strategy)
    from_states, from_actions = results
    assert len(from_states.trades) == 10  # buy (2), sell as a flip (4), flat (2), sell (2)
    pd.testing.assert_frame_equal(from_states.trades, from_actions.trades)
    pd.testing.assert_frame_equal(from_states.equity, from_actions.equity)


def test_a_position_in_the_warm_up_rows_is_refused_with_its_line_and_the_first_bar(home, tmp_path):
    signals = tmp_path / "s.csv"
    signals.write_text("date,state\n1990-01-02,0\n1990-01-03,\n1990-03-01,1\n1990-05-01,0\n")
    res = run("main.py", "backtest", "--signals", str(signals), "--start", "1990-01-02", home=home)
    assert res.returncode == ConfigurationError.exit_code
    assert res.stderr.strip().count("\n") == 0 and "Traceback" not in res.stderr
    assert (
        f"signal file {signals} line 4: 1990-03-01 is before the first bar of the backtest "
        "1990-04-24 and is not flat" in res.stderr
    )


def test_a_whole_history_file_backtests_a_sub_range_that_starts_flat(home, tmp_path):
    """Rows before --start (flat) are skipped and rows after --end ignored, both counted in the
    notes and summary.json; the run trades only the rows inside the range."""
    signals = tmp_path / "s.csv"
    signals.write_text(
        "date,state\n2020-06-01,1\n2020-07-01,0\n2021-03-01,-1\n2021-03-15,0\n"
        "2021-06-01,1\n2021-07-01,0\n2021-08-02,1\n"
    )
    request = bs.BacktestRequest(
        PAIR, start="2021-01-04", end="2021-04-30", signal_file=str(signals), write_charts=False
    )
    report = bs.backtest(request, home=C.paths(home))
    assert report.summary["run"]["signal_rows_skipped_before"] == 2
    assert report.summary["run"]["signal_rows_ignored_after"] == 3
    assert (
        "signal file: 2 rows before the first bar of the backtest 2021-01-04 skipped (flat by then)"
        in (report.notes)
    )
    assert (
        "signal file: 3 rows after the last bar of the backtest 2021-04-30 ignored (outside --end)"
        in (report.notes)
    )
    assert report.strategy.trades["date"].dt.strftime("%Y-%m-%d").unique().tolist() == [
        "2021-03-02",
        "2021-03-16",
    ]


def test_a_bad_state_value_is_refused_on_the_command_line_naming_its_line(home, tmp_path):
    signals = tmp_path / "s.csv"
    signals.write_text("date,state\n2021-03-01,1\n2021-03-02,short\n")
    res = run("main.py", "backtest", "--signals", str(signals), "--start", "2021-03-01", home=home)
    assert res.returncode == ConfigurationError.exit_code
    assert res.stderr.strip().count("\n") == 0 and "Traceback" not in res.stderr
    assert f"signal file {signals} line 3: state 'short' must be 1" in res.stderr


@pytest.mark.parametrize("bad", ["0", "-5", "nan", "inf"])
def test_a_leg_usd_that_is_not_a_positive_amount_is_refused_in_one_line(tmp_path, bad):
    res = run("main.py", "backtest", f"--leg-usd={bad}", home=tmp_path / "home")
    assert res.returncode == ConfigurationError.exit_code
    assert "leg USD must be a positive, finite amount" in res.stderr
    assert res.stderr.strip().count("\n") == 0 and "Traceback" not in res.stderr


def test_the_sizing_settings_are_read_from_a_toml_file(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("[sizing]\nleg_usd = 10000\nfractional_shares = true\n")
    sizing = bs.TradingConfig.from_toml(config).sizing
    assert (sizing.leg_usd, sizing.fractional_shares) == (10_000.0, True)


# --- Alpaca takes no fractional shares ------------------------------------------------------------
@pytest.mark.parametrize("mode", [["--broker", "alpaca"], ["--live"]])
def test_alpaca_refuses_fractional_shares_at_start_up_before_asking_for_keys(tmp_path, mode):
    home = tmp_path / "home"
    res = run("main.py", "live", *mode, "--fractional-shares", "--once", home=home)
    assert res.returncode == ConfigurationError.exit_code
    assert "fractional shares cannot be traded with the alpaca broker" in res.stderr
    assert res.stderr.strip().count("\n") == 0 and "Traceback" not in res.stderr
    assert not (home / "logs" / "audit.jsonl").exists()


def test_the_trading_loop_refuses_an_alpaca_broker_for_fractional_sizing_writing_nothing(tmp_path):
    broker = ta.AlpacaBroker("key", "secret", trading_url="http://127.0.0.1:9")  # never called
    trading = bs.TradingConfig(sizing=bs.SizingConfig(fractional_shares=True))
    paths = C.paths(tmp_path)
    with pytest.raises(ConfigurationError, match="cannot be traded with the alpaca broker"):
        lt.run_trading_loop(config=lt.LiveConfig(trading=trading), home=paths, broker=broker)
    assert list(tmp_path.iterdir()) == []
    lt.refuse_unsupported_sizing(bs.TradingConfig(), broker)  # whole shares: fine
    lt.refuse_unsupported_sizing(trading, ta.SimulatedBroker)  # the paper broker: fine
