"""signals: thresholds, ensemble, and signals from real registered models (A/B, in-sample guard)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import constants as C
import process_stock_data as psd
import signals as S
import train_model as tm
from error_handling import ConfigurationError
from tests.helpers import trained_copy

PAIR = C.Pair("AAPL", "MSFT")
TINY = tm.TrainConfig(folds=2, epochs=2, lstm_units=4, xgb_trees=20, batch_size=256, patience=1)


# --- Pure parts -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "p,action",
    [
        (0.70, S.Action.BUY_SPREAD),
        (0.55, S.Action.BUY_SPREAD),
        (0.5, S.Action.HOLD),
        (0.45, S.Action.SELL_SPREAD),
        (0.1, S.Action.SELL_SPREAD),
    ],
)
def test_thresholds_with_a_dead_zone(p, action):
    assert S.Thresholds(buy=0.55, sell=0.45).action(p) is action


@pytest.mark.parametrize("buy,sell", [(0.4, 0.6), (1.0, 0.5), (0.5, 0.0)])
def test_inconsistent_thresholds_are_refused(buy, sell):
    with pytest.raises(ConfigurationError, match="thresholds"):
        S.Thresholds(buy=buy, sell=sell)


def test_signal_text_and_legs_come_from_the_pair():
    pair = C.Pair("JPM", "BAC")
    th, t = S.Thresholds(), pd.Timestamp("2022-01-03")
    buy = S.make_signal(pair, 0.9, "v1", t, th)
    sell = S.make_signal(pair, 0.1, "v1", t, th)
    hold = S.make_signal(pair, 0.5, "v1", t, th)
    assert (buy.text, buy.buy_leg, buy.sell_leg) == ("Buy JPM, Sell BAC", "JPM", "BAC")
    assert (sell.text, sell.buy_leg, sell.sell_leg) == ("Sell JPM, Buy BAC", "BAC", "JPM")
    assert (hold.text, hold.buy_leg) == (C.HOLD_SIGNAL, None)


def test_ensemble_default_weights_are_60_40():
    out = S.ensemble_predict(np.array([1.0, 0.0, 0.5]), np.array([0.0, 1.0, 0.5]))
    np.testing.assert_allclose(out, [0.6, 0.4, 0.5])


def test_ensemble_weights_are_normalized_and_validated():
    np.testing.assert_allclose(S.ensemble_predict(0.8, 0.2, (3, 1)), 0.65)
    with pytest.raises(ConfigurationError):
        S.ensemble_predict(0.8, 0.2, (-1, 2))
    with pytest.raises(ConfigurationError, match="shape"):
        S.ensemble_predict(np.zeros(3), np.zeros(4))


@pytest.mark.parametrize(
    "value,on", [("1", True), ("true", True), ("ON", True), ("0", False), ("", False)]
)
def test_ensemble_mode_flag(monkeypatch, value, on):
    monkeypatch.setenv("ENSEMBLE_MODE", value)
    assert S.ensemble_enabled() is on


def test_tuning_prefers_the_informative_model():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 2000)
    informative = np.where(y == 1, 0.7, 0.3)
    noise = rng.uniform(0.3, 0.7, 2000)
    assert S.tune_ensemble_weights(y, informative, noise) == (1.0, 0.0)
    assert S.tune_ensemble_weights(y, noise, informative) == (0.0, 1.0)


# --- With real registered models ------------------------------------------------------------------
@pytest.fixture(scope="module")
def home(tmp_path_factory) -> C.Paths:
    pytest.importorskip("tensorflow", reason="the lstm profile is not installed")
    return C.paths(trained_copy(tmp_path_factory, "signals-home", TINY, PAIR))


@pytest.fixture(scope="module")
def table(home) -> pd.DataFrame:
    return psd.load_processed(PAIR, home)[0]


def test_latest_signal_comes_from_the_active_model(home, table):
    from model_management import ModelRegistry

    signal = S.get_latest_signal(table, PAIR, home=home, ensemble=False)
    active = ModelRegistry(home.models_dir).get_active_model("xgb", PAIR)
    assert signal.model_version == active.version
    assert signal.bar_time == table.index[-1] == pd.Timestamp("2022-12-28")
    assert 0 < signal.probability < 1 and signal.text in PAIR.signals


def test_series_refuses_bars_the_model_saw_unless_asked(home, table):
    gen = S.SignalGenerator(PAIR, home=home, ensemble=False)
    with pytest.raises(ConfigurationError, match="--allow-in-sample"):
        gen.series(table, start="2015-01-01")
    labeled = gen.series(table, start="2017-12-01", end="2018-03-01", allow_in_sample=True)
    assert labeled.loc[:"2018-01-30", "in_sample"].all()
    assert not labeled.loc["2018-02-01":, "in_sample"].any()


def test_series_agrees_with_latest_on_the_last_bar(home, table):
    gen = S.SignalGenerator(PAIR, home=home, ensemble=False)
    series = gen.series(table, start="2018-02-01")
    latest = gen.latest(table)
    assert series.index[-1] == latest.bar_time
    assert series["probability"].iloc[-1] == pytest.approx(latest.probability)
    assert set(series["action"]) <= {"buy", "sell", "hold"}


def test_check_warms_up_the_lstm_so_the_first_bar_pays_no_tracing(home, table):
    """`check` scores the last row once with every loaded model: the LSTM's inference function
    is traced before the first live bar, and scoring that row again gives the same number."""
    import model_artifacts

    gen = S.SignalGenerator(PAIR, home=home, ensemble=False, kind="lstm")
    gen.check(table)
    (loaded,) = gen._loaded.values()
    assert loaded.kind == "lstm"
    assert loaded.model in model_artifacts._compiled  # traced at check, not at the first bar
    again = loaded.probabilities(table, slice(len(table) - 1, len(table)))
    assert again[0] == pytest.approx(gen.latest(table).probability)


def test_ensemble_signal_is_the_weighted_mean_of_both_models(home, table):
    single = {
        k: S.SignalGenerator(PAIR, home=home, ensemble=False, kind=k) for k in ("xgb", "lstm")
    }
    p = {k: g.series(table, start="2022-06-01")["probability"] for k, g in single.items()}
    ens = S.SignalGenerator(PAIR, home=home, ensemble=True).series(table, start="2022-06-01")
    np.testing.assert_allclose(ens["probability"], 0.6 * p["lstm"] + 0.4 * p["xgb"], rtol=1e-6)
    assert ens["model_version"].iloc[0].startswith("ensemble(lstm-")


def test_a_canary_gets_its_share_of_bars(home, table, tmp_path):
    """Register a second XGBoost: it becomes the canary and decides about 10 % of bars."""
    import shutil

    from model_management import ModelRegistry

    canary_home = C.paths(tmp_path)
    shutil.copytree(home.home, canary_home.home, dirs_exist_ok=True)
    tm.train(PAIR, tm.TrainConfig(models=("xgb",), folds=2, xgb_trees=10, seed=7), home=canary_home)
    registry = ModelRegistry(canary_home.models_dir)
    canary = registry.get_canary("xgb", PAIR)
    assert canary is not None and canary.traffic_fraction == pytest.approx(0.1)
    series = S.SignalGenerator(PAIR, home=canary_home, ensemble=False).series(
        table, start="2018-02-01"
    )
    share = (series["model_version"] == canary.version).mean()
    assert 0.06 < share < 0.14
    again = S.SignalGenerator(PAIR, home=canary_home, ensemble=False).series(
        table, start="2018-02-01"
    )
    pd.testing.assert_series_equal(series["model_version"], again["model_version"])


def test_tuned_ensemble_weights_are_stored_and_used(home, table, tmp_path):
    """`train --tune-ensemble` stores validation-tuned weights; the ensemble signal uses them."""
    import dataclasses

    from model_management import ModelRegistry

    tuned_home = C.paths(tmp_path)
    tm.train(PAIR, dataclasses.replace(TINY, tune_ensemble=True), home=tuned_home)
    registry = ModelRegistry(tuned_home.models_dir)
    weights = [
        registry.get_active_model(k, PAIR).metadata["ensemble_weights"] for k in ("lstm", "xgb")
    ]
    assert weights[0] == weights[1] and sum(weights[0]) == pytest.approx(1.0)
    ens = S.SignalGenerator(PAIR, home=tuned_home, ensemble=True).latest(table)
    assert f"w={weights[0][0]:.2f}/{weights[0][1]:.2f}" in ens.model_version


def test_tune_ensemble_needs_both_models(tmp_path):
    import dataclasses

    with pytest.raises(ConfigurationError, match="--tune-ensemble needs both models"):
        tm.train(
            PAIR,
            dataclasses.replace(TINY, models=("xgb",), tune_ensemble=True),
            home=C.paths(tmp_path),
        )


@pytest.mark.parametrize("canary_hit_rate,expected", [(0.40, "rollback"), (0.70, "promote")])
def test_recorded_outcomes_roll_back_or_promote_the_canary_automatically(
    home, tmp_path, canary_hit_rate, expected
):
    import shutil

    from model_management import ModelRegistry, ModelStatus

    ab_home = C.paths(tmp_path)
    shutil.copytree(home.home, ab_home.home, dirs_exist_ok=True)
    tm.train(PAIR, tm.TrainConfig(models=("xgb",), folds=2, xgb_trees=10, seed=9), home=ab_home)
    registry = ModelRegistry(ab_home.models_dir)
    champion = registry.get_active_model("xgb", PAIR).version
    canary = registry.get_canary("xgb", PAIR).version
    gen = S.SignalGenerator(PAIR, home=ab_home, ensemble=False)
    rng = np.random.default_rng(1)
    applied = []
    bar = pd.Timestamp("2022-01-03")
    for i in range(400):
        for version, rate in ((champion, 0.55), (canary, canary_hit_rate)):
            sig = S.make_signal(PAIR, 0.9, version, bar + pd.Timedelta(days=i), S.Thresholds())
            applied += gen.record_outcome(sig, 0.01 if rng.random() < rate else -0.01)
        if applied:
            break
    assert [d.action.value for d in applied] == [expected]
    if expected == "rollback":
        assert registry.get(canary).status is ModelStatus.RETIRED
        assert registry.get_active_model("xgb", PAIR).version == champion
    else:
        assert registry.get_active_model("xgb", PAIR).version == canary
    hold = S.make_signal(PAIR, 0.5, champion, bar, S.Thresholds())
    assert gen.record_outcome(hold, 0.05) == []  # holds are not scored
