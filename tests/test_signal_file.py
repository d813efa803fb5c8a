"""backtest_strategy's instruction sources: a user's signal file (actions or target weights), the
state-to-instruction conversion, the z-score rule and Kelly-sized model weights."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import backtest_strategy as bs
import constants as C
import risk_management as rm
from error_handling import ConfigurationError

PAIR = C.Pair("AAPL", "MSFT")
#: Mon 2021-01-04 .. Fri 2021-01-15: ten business days, row i is DATES[i].
DATES = pd.bdate_range("2021-01-04", periods=10)
F = 0.3  # the rule leg fraction, distinct from the default so the test sees it is used
SIZING = bs.SizingConfig(rule_leg_fraction=F)
NAN_ROW = [np.nan, np.nan]


def write(tmp_path, text: str, name: str = "signals.csv") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def read(tmp_path, text: str) -> np.ndarray:
    return bs.read_signal_file(write(tmp_path, text), PAIR, DATES, SIZING).weights


def expected(rows: dict[int, tuple[float, float]]) -> np.ndarray:
    """(10, 2) NaN weights with `rows` filled in."""
    w = np.full((len(DATES), 2), np.nan)
    for i, pair_weights in rows.items():
        w[i] = pair_weights
    return w


def refused_at(path: str, line: int) -> str:
    """The message pattern of a refusal that names the file and the line."""
    return re.escape(f"signal file {path} line {line}:")


# --- Action files ---------------------------------------------------------------------------------
def test_action_file_buy_sell_flat_give_plus_minus_and_zero_leg_fractions(tmp_path):
    w = read(tmp_path, "date,action\n2021-01-04,buy\n2021-01-06,sell\n2021-01-08,flat\n")
    np.testing.assert_array_equal(w, expected({0: (F, -F), 2: (-F, F), 4: (0.0, 0.0)}))


def test_action_file_hold_keeps_the_position_and_emits_nothing(tmp_path):
    w = read(tmp_path, "date,action\n2021-01-04,sell\n2021-01-05,hold\n2021-01-06,hold\n")
    np.testing.assert_array_equal(w, expected({0: (-F, F)}))


def test_action_file_repeated_buy_emits_one_instruction(tmp_path):
    w = read(tmp_path, "date,action\n2021-01-04,buy\n2021-01-05,buy\n2021-01-07,buy\n")
    np.testing.assert_array_equal(w, expected({0: (F, -F)}))


def test_action_file_flat_while_flat_emits_nothing(tmp_path):
    w = read(tmp_path, "date,action\n2021-01-04,flat\n2021-01-05,hold\n")
    np.testing.assert_array_equal(w, expected({}))


def test_action_file_actions_are_case_insensitive_and_trimmed(tmp_path):
    w = read(tmp_path, "date,action\n2021-01-04, BUY \n2021-01-05,Sell\n2021-01-06,FLAT\n")
    np.testing.assert_array_equal(w, expected({0: (F, -F), 1: (-F, F), 2: (0.0, 0.0)}))


def test_action_file_accepts_the_pairs_signal_texts(tmp_path):
    text = (
        "date,action\n"
        f'2021-01-04,"{PAIR.buy_signal}"\n'
        f'2021-01-05,"{PAIR.sell_signal.upper()}"\n'
        f'2021-01-06,"{PAIR.buy_signal.lower()}"\n'
    )
    w = read(tmp_path, text)
    np.testing.assert_array_equal(w, expected({0: (F, -F), 1: (-F, F), 2: (F, -F)}))


def test_action_file_dates_with_a_time_of_day_match_their_bar(tmp_path):
    w = read(tmp_path, "date,action\n2021-01-05 16:00:00,buy\n")
    np.testing.assert_array_equal(w, expected({1: (F, -F)}))


# --- Weight files ---------------------------------------------------------------------------------
def test_weight_file_by_symbol_columns_gives_its_weights_on_its_rows(tmp_path):
    w = read(tmp_path, "date,AAPL,MSFT\n2021-01-05,0.4,-0.2\n2021-01-11,0,0\n")
    np.testing.assert_array_equal(w, expected({1: (0.4, -0.2), 5: (0.0, 0.0)}))


def test_weight_file_by_long_and_short_weight_columns_gives_its_weights_on_its_rows(tmp_path):
    w = read(tmp_path, "date,long_weight,short_weight\n2021-01-04,-0.5,0.25\n2021-01-15,1,-1\n")
    np.testing.assert_array_equal(w, expected({0: (-0.5, 0.25), 9: (1.0, -1.0)}))


def test_weight_file_accepts_weights_of_exactly_five(tmp_path):
    w = read(tmp_path, "date,AAPL,MSFT\n2021-01-04,5,-5\n")
    np.testing.assert_array_equal(w, expected({0: (5.0, -5.0)}))


# --- Refusals -------------------------------------------------------------------------------------
def test_missing_signal_file_is_refused_naming_the_file(tmp_path):
    path = str(tmp_path / "nowhere.csv")
    with pytest.raises(ConfigurationError, match=re.escape(f"signal file {path} not found")):
        bs.read_signal_file(path, PAIR, DATES, SIZING)


def test_signal_file_without_date_column_is_refused(tmp_path):
    path = write(tmp_path, "day,action\n2021-01-04,buy\n")
    with pytest.raises(ConfigurationError, match=re.escape(f"signal file {path} needs a 'date'")):
        bs.read_signal_file(path, PAIR, DATES, SIZING)


def test_signal_file_date_that_is_not_a_bar_is_refused_at_its_line(tmp_path):
    path = write(tmp_path, "date,action\n2021-01-04,buy\n2021-01-05,hold\n2021-01-09,sell\n")
    with pytest.raises(ConfigurationError, match=refused_at(path, 4) + " 2021-01-09 is not a bar"):
        bs.read_signal_file(path, PAIR, DATES, SIZING)


def test_signal_file_repeated_date_is_refused_at_the_repeat(tmp_path):
    path = write(tmp_path, "date,action\n2021-01-04,buy\n2021-01-05,hold\n2021-01-04,sell\n")
    with pytest.raises(ConfigurationError, match=refused_at(path, 4) + " date 2021-01-04 repeats"):
        bs.read_signal_file(path, PAIR, DATES, SIZING)


def test_signal_file_unknown_action_is_refused_at_its_line(tmp_path):
    path = write(tmp_path, "date,action\n2021-01-04,buy\n2021-01-05,short\n")
    with pytest.raises(ConfigurationError, match=refused_at(path, 3) + " unknown action 'short'"):
        bs.read_signal_file(path, PAIR, DATES, SIZING)


def test_signal_file_non_numeric_weight_is_refused_at_its_line(tmp_path):
    path = write(tmp_path, "date,AAPL,MSFT\n2021-01-04,0.1,-0.1\n2021-01-05,0.2,lots\n")
    with pytest.raises(ConfigurationError, match=refused_at(path, 3) + " weight 'lots' is not a"):
        bs.read_signal_file(path, PAIR, DATES, SIZING)


@pytest.mark.parametrize("weight", ["5.5", "-7"])
def test_signal_file_weight_beyond_five_is_refused_at_its_line(tmp_path, weight):
    path = write(tmp_path, f"date,AAPL,MSFT\n2021-01-04,0.1,-0.1\n2021-01-05,{weight},0\n")
    with pytest.raises(ConfigurationError, match=refused_at(path, 3) + ".*within ±5"):
        bs.read_signal_file(path, PAIR, DATES, SIZING)


def test_signal_file_without_action_or_weight_columns_is_refused(tmp_path):
    path = write(tmp_path, "date,AAPL,GOOG\n2021-01-04,0.1,-0.1\n")
    with pytest.raises(
        ConfigurationError, match=re.escape(f"signal file {path} needs an 'action' or 'state'")
    ):
        bs.read_signal_file(path, PAIR, DATES, SIZING)


@pytest.mark.parametrize("date", ["04/01/2021", "2021-13-45", "yesterday"])
def test_signal_file_unparseable_date_is_refused(tmp_path, date):
    path = write(tmp_path, f"date,action\n2021-01-04,buy\n{date},sell\n")
    with pytest.raises(ConfigurationError, match=re.escape(f"signal file {path} line 3: bad date")):
        bs.read_signal_file(path, PAIR, DATES, SIZING)


def test_signal_file_error_line_counts_blank_lines(tmp_path):
    path = write(tmp_path, "date,action\n2021-01-04,buy\n\n2021-01-09,sell\n")
    with pytest.raises(ConfigurationError, match=refused_at(path, 4)):
        bs.read_signal_file(path, PAIR, DATES, SIZING)


# --- instructions_from_states ---------------------------------------------------------------------
def test_nan_states_keep_the_previous_state():
    w = bs.instructions_from_states(np.array([1.0, np.nan, np.nan, -1.0, np.nan]), 0.5)
    np.testing.assert_array_equal(w, [[0.5, -0.5], NAN_ROW, NAN_ROW, [-0.5, 0.5], NAN_ROW])


def test_leading_nan_states_are_flat_and_emit_nothing():
    w = bs.instructions_from_states(np.array([np.nan, np.nan, 0.0, 1.0]), 0.5)
    np.testing.assert_array_equal(w, [NAN_ROW, NAN_ROW, NAN_ROW, [0.5, -0.5]])


def test_per_bar_leg_fraction_sizes_each_instruction():
    w = bs.instructions_from_states(np.array([1.0, 1.0, -1.0]), np.array([0.1, 0.2, 0.3]))
    np.testing.assert_array_equal(w, [[0.1, -0.1], NAN_ROW, [-0.3, 0.3]])


state_sequences = st.lists(st.sampled_from([1.0, -1.0, 0.0, np.nan]), min_size=1, max_size=60)
leg_fractions = st.floats(min_value=0.01, max_value=5.0)


@settings(max_examples=300)
@given(states=state_sequences, f=leg_fractions)
def test_applying_emitted_instructions_reproduces_the_forward_filled_states(states, f):
    w = bs.instructions_from_states(np.array(states), f)
    position = np.zeros(2)
    held = []
    for row in w:
        if not np.isnan(row).any():
            position = row
        held.append(position)
    target = pd.Series(states).ffill().fillna(0.0).to_numpy()
    np.testing.assert_allclose(np.array(held), np.column_stack([target * f, -target * f]))


@settings(max_examples=300)
@given(states=state_sequences, f=leg_fractions)
def test_no_two_consecutive_emitted_instructions_are_equal(states, f):
    w = bs.instructions_from_states(np.array(states), f)
    emitted = [tuple(row) for row in w if not np.isnan(row).any()]
    assert all(a != b for a, b in itertools.pairwise(emitted))


# --- zscore_rule_states ---------------------------------------------------------------------------
@pytest.mark.parametrize("z", [1.51, 3.0, 40.0])
def test_zscore_above_entry_sells_the_spread(z):
    assert bs.zscore_rule_states(np.array([z]), entry=1.5, exit=0.25)[0] == -1.0


@pytest.mark.parametrize("z", [-1.51, -3.0, -40.0])
def test_zscore_below_minus_entry_buys_the_spread(z):
    assert bs.zscore_rule_states(np.array([z]), entry=1.5, exit=0.25)[0] == 1.0


@pytest.mark.parametrize("z", [0.0, 0.24, -0.24])
def test_zscore_inside_exit_band_goes_flat(z):
    assert bs.zscore_rule_states(np.array([z]), entry=1.5, exit=0.25)[0] == 0.0


@pytest.mark.parametrize("z", [0.25, -0.25, 1.0, -1.0, 1.5, -1.5, np.nan])
def test_zscore_between_exit_and_entry_keeps_the_position(z):
    assert np.isnan(bs.zscore_rule_states(np.array([z]), entry=1.5, exit=0.25)[0])


# --- model_weights --------------------------------------------------------------------------------
KELLY = bs.SizingConfig(kelly_fraction=0.5, max_leg_fraction=0.5, payoff_ratio=1.5)


def signals(actions: list[str], probabilities: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        {"action": actions, "probability": probabilities}, index=DATES[: len(actions)]
    )


def kelly(p: float, sizing: bs.SizingConfig = KELLY) -> float:
    return rm.kelly_fraction(
        p, sizing.payoff_ratio, fraction=sizing.kelly_fraction, cap=sizing.max_leg_fraction
    )


def test_model_buy_is_sized_by_fractional_kelly_on_its_probability():
    w = bs.model_weights(signals(["buy"], [0.7]), KELLY)
    k = kelly(0.7)
    assert k > 0
    np.testing.assert_allclose(w, [[k, -k]])


def test_model_sell_is_sized_by_fractional_kelly_on_one_minus_its_probability():
    w = bs.model_weights(signals(["sell"], [0.2]), KELLY)
    k = kelly(0.8)
    assert k > 0
    np.testing.assert_allclose(w, [[-k, k]])


def test_model_hold_closes_the_position_when_hold_is_flat():
    flat = bs.SizingConfig(kelly_fraction=0.5, max_leg_fraction=0.5, payoff_ratio=1.5, hold="flat")
    w = bs.model_weights(signals(["buy", "hold"], [0.7, 0.5]), flat)
    np.testing.assert_array_equal(w[1], [0.0, 0.0])


def test_model_hold_keeps_the_position_by_default():
    w = bs.model_weights(signals(["buy", "hold"], [0.7, 0.5]), KELLY)
    np.testing.assert_array_equal(w[1], NAN_ROW)


def test_model_direction_without_kelly_edge_closes_the_position():
    # p = 0.3 with b = 1.5: 0.3 - 0.7 / 1.5 < 0, no edge.
    w = bs.model_weights(signals(["sell", "buy"], [0.1, 0.3]), KELLY)
    np.testing.assert_array_equal(w[1], [0.0, 0.0])


# --- State files ----------------------------------------------------------------------------------
def test_state_file_plus_minus_one_and_zero_give_leg_fractions_where_the_state_changes(tmp_path):
    text = "date,state\n2021-01-04,1\n2021-01-05,1\n2021-01-06,-1\n2021-01-07,\n2021-01-08,0\n"
    w = read(tmp_path, text)
    np.testing.assert_array_equal(w, expected({0: (F, -F), 2: (-F, F), 4: (0.0, 0.0)}))


def test_state_file_blank_and_nan_keep_the_position(tmp_path):
    w = read(tmp_path, "date,state\n2021-01-04,-1\n2021-01-05,NaN\n2021-01-06,\n2021-01-07,+1\n")
    np.testing.assert_array_equal(w, expected({0: (-F, F), 3: (F, -F)}))


def test_state_file_gives_the_same_instructions_as_the_equivalent_action_file(tmp_path):
    states = "date,state\n2021-01-04,1\n2021-01-05,\n2021-01-06,-1.0\n2021-01-08,0\n"
    actions = "date,action\n2021-01-04,buy\n2021-01-05,hold\n2021-01-06,sell\n2021-01-08,flat\n"
    np.testing.assert_array_equal(read(tmp_path, states), read(tmp_path, actions))


@pytest.mark.parametrize("value", ["2", "0.5", "long", "inf", "-"])
def test_state_file_value_other_than_plus_minus_one_zero_or_blank_is_refused_at_its_line(
    tmp_path, value
):
    path = write(tmp_path, f"date,state\n2021-01-04,1\n2021-01-05,{value}\n")
    with pytest.raises(ConfigurationError, match=refused_at(path, 3) + f" state '{value}' must"):
        bs.read_signal_file(path, PAIR, DATES, SIZING)


def test_signal_file_with_both_action_and_state_columns_is_refused(tmp_path):
    path = write(tmp_path, "date,action,state\n2021-01-04,buy,1\n")
    with pytest.raises(ConfigurationError, match="both an 'action' and a 'state' column"):
        bs.read_signal_file(path, PAIR, DATES, SIZING)


# --- Sizing: USD per leg --------------------------------------------------------------------------
def test_leg_usd_makes_action_and_state_instructions_usd_per_leg(tmp_path):
    sizing = bs.SizingConfig(rule_leg_fraction=F, leg_usd=10_000.0)
    for text in ("date,action\n2021-01-05,sell\n", "date,state\n2021-01-05,-1\n"):
        found = bs.read_signal_file(write(tmp_path, text), PAIR, DATES, sizing)
        assert found.per_usd is True
        np.testing.assert_array_equal(found.weights, expected({1: (-10_000.0, 10_000.0)}))


def test_leg_usd_leaves_a_weight_file_in_fractions_of_equity(tmp_path):
    sizing = bs.SizingConfig(leg_usd=10_000.0)
    path = write(tmp_path, "date,AAPL,MSFT\n2021-01-05,0.4,-0.2\n")
    found = bs.read_signal_file(path, PAIR, DATES, sizing)
    assert found.per_usd is False
    np.testing.assert_array_equal(found.weights, expected({1: (0.4, -0.2)}))


def test_without_leg_usd_rule_instructions_are_fractions_of_equity(tmp_path):
    found = bs.read_signal_file(write(tmp_path, "date,state\n2021-01-05,1\n"), PAIR, DATES, SIZING)
    assert found.per_usd is False


@pytest.mark.parametrize("leg_usd", [0.0, -10.0, math.nan, math.inf, True])
def test_leg_usd_must_be_a_positive_finite_amount(leg_usd):
    with pytest.raises(ConfigurationError, match="leg USD must be a positive, finite amount"):
        bs.SizingConfig(leg_usd=leg_usd)


def test_fractional_shares_must_be_true_or_false():
    with pytest.raises(ConfigurationError, match="fractional shares must be true or false"):
        bs.SizingConfig(fractional_shares=1)  # type: ignore[arg-type]


# --- Rows outside the backtest's bars -------------------------------------------------------------
WARM_UP = "2020-12-29,{}\n2020-12-30,{}\n2020-12-31,{}\n"  # before DATES[0] = 2021-01-04


@pytest.mark.parametrize(
    ("header", "flat"),
    [("action", "flat"), ("action", "hold"), ("state", "0"), ("state", ""), ("AAPL,MSFT", "0,0")],
)
def test_flat_rows_before_the_first_bar_are_skipped_and_counted(tmp_path, header, flat):
    row = "1,-1" if header == "AAPL,MSFT" else ("1" if header == "state" else "buy")
    path = write(
        tmp_path, f"date,{header}\n" + WARM_UP.format(flat, flat, flat) + f"2021-01-05,{row}\n"
    )
    found = bs.read_signal_file(path, PAIR, DATES, SIZING)
    assert (found.skipped_before, found.first_bar) == (3, DATES[0])
    assert np.isnan(found.weights[0]).all() and not np.isnan(found.weights[1]).any()


@pytest.mark.parametrize(
    ("header", "values", "line"),
    [
        ("action", ("flat", "buy", "flat"), 3),
        ("state", ("", "0", "-1"), 4),
        ("AAPL,MSFT", ("0,0", "0,0.1", "0,0"), 3),
    ],
)
def test_a_position_before_the_first_bar_is_refused_naming_its_line_and_the_first_bar(
    tmp_path, header, values, line
):
    path = write(
        tmp_path, f"date,{header}\n" + WARM_UP.format(*values) + f"2021-01-05,{values[0]}\n"
    )
    with pytest.raises(
        ConfigurationError,
        match=refused_at(path, line) + r" .* is before the first bar of the backtest 2021-01-04 "
        "and is not flat",
    ):
        bs.read_signal_file(path, PAIR, DATES, SIZING)


def test_rows_before_start_inside_the_data_are_skipped_when_the_file_is_flat_by_the_first_bar(
    tmp_path,
):
    text = "date,action\n2020-06-01,buy\n2020-12-30,hold\n2020-07-01,flat\n2021-01-05,sell\n"
    found = bs.read_signal_file(write(tmp_path, text), PAIR, DATES, SIZING, data_start="2020-01-02")
    assert found.skipped_before == 3
    np.testing.assert_array_equal(found.weights, expected({1: (-F, F)}))


@pytest.mark.parametrize(
    ("header", "rows", "line"),
    [
        ("action", ("2020-06-01,buy", "2020-07-01,flat", "2020-08-03,sell", "2020-12-30,hold"), 4),
        ("state", ("2020-06-01,-1", "2020-12-30,"), 2),
        ("AAPL,MSFT", ("2020-06-01,0,0", "2020-09-01,0.2,-0.2"), 3),
    ],
)
def test_a_position_held_into_the_first_bar_from_before_start_is_refused_naming_its_line(
    tmp_path, header, rows, line
):
    path = write(tmp_path, f"date,{header}\n" + "\n".join(rows) + "\n")
    with pytest.raises(
        ConfigurationError,
        match=refused_at(path, line) + r" the position of .* is still held at the first bar of "
        "the backtest 2021-01-04",
    ):
        bs.read_signal_file(path, PAIR, DATES, SIZING, data_start="2020-01-02")


def test_a_position_in_the_warm_up_before_the_data_is_refused_even_if_flat_later(tmp_path):
    text = "date,state\n2019-12-30,1\n2019-12-31,0\n2021-01-05,1\n"
    path = write(tmp_path, text)
    with pytest.raises(ConfigurationError, match=refused_at(path, 2) + ".* warm-up"):
        bs.read_signal_file(path, PAIR, DATES, SIZING, data_start="2020-01-02")


def test_rows_after_the_last_bar_inside_the_data_are_ignored_and_counted(tmp_path):
    path = write(tmp_path, "date,action\n2021-01-05,buy\n2021-01-18,sell\n2021-01-19,flat\n")
    found = bs.read_signal_file(path, PAIR, DATES, SIZING, data_end="2021-06-30")
    assert (found.ignored_after, found.last_bar) == (2, DATES[-1])
    np.testing.assert_array_equal(found.weights, expected({1: (F, -F)}))


@pytest.mark.parametrize("data_end", [None, "2021-01-15"])
def test_a_row_after_the_last_bar_of_the_data_is_refused(tmp_path, data_end):
    path = write(tmp_path, "date,action\n2021-01-05,buy\n2021-01-19,flat\n")
    with pytest.raises(
        ConfigurationError,
        match=refused_at(path, 3) + " 2021-01-19 is after the last bar of the data 2021-01-15",
    ):
        bs.read_signal_file(path, PAIR, DATES, SIZING, data_end=data_end)
