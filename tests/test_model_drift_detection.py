"""model_drift_detection.py: PSI, KS, reference statistics, feature/prediction/performance drift."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

import constants as C
import model_drift_detection as D
import process_stock_data as psd

# --- Fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def features(aapl_msft) -> pd.DataFrame:
    """The real 23 AAPL/MSFT features, 1990-2022, warm-up rows dropped (8,235 rows)."""
    return psd.compute_features(aapl_msft, "AAPL", "MSFT").dropna()


@pytest.fixture(scope="module")
def early_reference(features) -> dict:
    """Reference statistics of the first 1,000 feature rows (1990-1994)."""
    return D.reference_statistics(features.iloc[:1000])


def normal(n: int, *, loc: float = 0.0, scale: float = 1.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(loc, scale, size=n)


def outcomes(hits: int, total: int, *, seed: int = 0) -> list[bool]:
    """`total` outcomes with exactly `hits` hits, in a seeded random order."""
    values = np.array([True] * hits + [False] * (total - hits))
    return list(np.random.default_rng(seed).permutation(values))


# --- Reference statistics -------------------------------------------------------------------------


def test_reference_statistics_hold_deciles_moments_and_a_sorted_sample(features):
    stats_ = D.reference_statistics(features)

    assert list(stats_) == C.feature_names("AAPL", "MSFT")
    vol = stats_["AAPL_vol_20d"]
    assert len(vol["edges"]) == 9 and vol["edges"] == sorted(vol["edges"])
    assert vol["proportions"] == pytest.approx([0.1] * 10, abs=1e-3)
    assert vol["count"] == len(features) == 8235
    assert vol["mean"] == pytest.approx(features["AAPL_vol_20d"].mean())
    assert vol["std"] == pytest.approx(features["AAPL_vol_20d"].std())
    assert len(vol["sample"]) == D.DEFAULT_SAMPLE_SIZE
    assert vol["sample"] == sorted(vol["sample"])
    assert set(vol["sample"]) <= set(features["AAPL_vol_20d"])


def test_reference_statistics_keep_every_value_when_fewer_than_sample_size():
    frame = pd.DataFrame({"x": [3.0, 1.0, 2.0]})

    assert D.reference_statistics(frame, sample_size=10)["x"]["sample"] == [1.0, 2.0, 3.0]


def test_reference_statistics_ignore_nan_and_infinity():
    frame = pd.DataFrame({"x": [1.0, np.nan, 2.0, np.inf, 3.0, -np.inf]})

    x = D.reference_statistics(frame)["x"]

    assert x["count"] == 3
    assert x["mean"] == pytest.approx(2.0)
    assert x["sample"] == [1.0, 2.0, 3.0]


def test_reference_statistics_of_an_all_nan_feature_are_empty_not_an_error():
    x = D.reference_statistics(pd.DataFrame({"x": [np.nan, np.nan]}))["x"]

    assert x["count"] == 0 and x["mean"] is None and x["sample"] == []
    assert x["proportions"] == [0.0]


def test_reference_statistics_subsample_is_deterministic_per_seed(features):
    first = D.reference_statistics(features, seed=7)
    again = D.reference_statistics(features, seed=7)
    other = D.reference_statistics(features, seed=8)

    assert first == again
    assert first["spread_AAPL_MSFT"]["sample"] != other["spread_AAPL_MSFT"]["sample"]


def test_reference_statistics_survive_a_json_round_trip_with_identical_results(
    features, early_reference
):
    text = json.dumps(early_reference, allow_nan=False)  # strict JSON: no NaN, no Infinity
    restored = json.loads(text)
    current = features.iloc[-1000:]

    assert restored == early_reference
    assert D.feature_drift(restored, current) == D.feature_drift(early_reference, current)


# --- PSI ------------------------------------------------------------------------------------------


def test_psi_formula_on_a_three_bin_example_matches_the_hand_computation():
    # (0.4 - 0.5) ln(0.4 / 0.5) + (0.4 - 0.3) ln(0.4 / 0.3) + (0.2 - 0.2) ln(1)
    by_hand = -0.1 * math.log(0.8) + 0.1 * math.log(4 / 3)

    value = D.population_stability_index([0.5, 0.3, 0.2], [0.4, 0.4, 0.2])

    assert value == pytest.approx(by_hand, rel=1e-12)
    assert value == pytest.approx(0.0510826, abs=1e-7)


def test_psi_clips_an_empty_bin_to_eps_so_it_stays_finite():
    value = D.population_stability_index([0.5, 0.5, 0.0], [0.5, 0.0, 0.5], eps=1e-4)

    by_hand = 2 * (0.5 - 1e-4) * math.log(0.5 / 1e-4)
    assert value == pytest.approx(by_hand)


def test_psi_rejects_proportions_with_different_bin_counts():
    with pytest.raises(ValueError, match="equal-length"):
        D.population_stability_index([0.5, 0.5], [0.2, 0.3, 0.5])


@given(
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12).flatmap(
        lambda e: st.tuples(
            st.just(e), st.lists(st.floats(0.0, 1.0), min_size=len(e), max_size=len(e))
        )
    )
)
def test_psi_is_non_negative_symmetric_and_zero_on_equal_proportions(pair):
    expected, actual = pair

    value = D.population_stability_index(expected, actual)

    assert value >= 0.0
    assert value == pytest.approx(D.population_stability_index(actual, expected))
    assert D.population_stability_index(expected, expected) == 0.0


def test_psi_is_zero_on_identical_samples():
    values = normal(5000)

    assert D.psi(values, values.copy()) < 0.01
    assert D.psi(values, values) == pytest.approx(0.0, abs=1e-12)


def test_psi_is_near_zero_on_two_halves_of_one_large_iid_sample():
    values = normal(200_000, seed=1)

    assert D.psi(values[:100_000], values[100_000:]) < 0.01


def test_psi_is_significant_when_the_mean_shifts_by_one_std():
    assert D.psi(normal(20_000, seed=2), normal(20_000, loc=1.0, seed=3)) > D.PSI_SIGNIFICANT


def test_psi_is_significant_when_the_scale_doubles():
    assert D.psi(normal(20_000, seed=4), normal(20_000, scale=2.0, seed=5)) > D.PSI_SIGNIFICANT


def test_psi_counts_values_beyond_the_reference_range_in_the_outer_bins():
    # Outer edges are -inf/+inf in use: a current sample entirely above the reference max lands
    # in the top bin instead of vanishing.
    value = D.psi(np.arange(100.0), np.full(50, 1e6))

    expected = D.population_stability_index([0.1] * 10, [0.0] * 9 + [1.0])
    assert value == pytest.approx(expected)


@pytest.mark.parametrize(
    ("value", "band"),
    [
        (0.0, D.DriftBand.STABLE),
        (0.0999, D.DriftBand.STABLE),
        (0.1, D.DriftBand.MODERATE),
        (0.2499, D.DriftBand.MODERATE),
        (0.25, D.DriftBand.SIGNIFICANT),
        (3.0, D.DriftBand.SIGNIFICANT),
    ],
)
def test_psi_bands_are_stable_below_0_1_moderate_below_0_25_else_significant(value, band):
    assert D.psi_band(value) == band


# --- Drift rule -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("psi_value", "p_value", "drifted"),
    [
        (0.30, 0.9, True),  # significant PSI is drift whatever KS says
        (0.15, 0.001, True),  # moderate PSI confirmed by KS
        (0.15, 0.2, False),  # moderate PSI that KS calls noise
        (0.05, 1e-12, False),  # KS-significant but small shift
    ],
)
def test_drift_rule_needs_significant_psi_or_moderate_psi_confirmed_by_ks(
    psi_value, p_value, drifted
):
    assert D.is_drifted(psi_value, p_value, ks_alpha=0.01) is drifted


# --- KS -------------------------------------------------------------------------------------------


def test_feature_ks_p_value_is_scipys_ks_2samp_against_the_stored_subsample(features):
    reference = D.reference_statistics(features.iloc[:3000], sample_size=1000)  # a real subsample
    current = features.iloc[-1000:]

    results = {r.name: r for r in D.feature_drift(reference, current)}

    for name in ("AAPL_vol_20d", "spread_z_AAPL_MSFT", "MSFT_rsi_14"):
        assert len(reference[name]["sample"]) == 1000
        expected = stats.ks_2samp(reference[name]["sample"], current[name].to_numpy())
        assert results[name].ks_statistic == float(expected.statistic)
        assert results[name].p_value == float(expected.pvalue)


@pytest.mark.parametrize(
    ("n_a", "n_b", "shift"),
    [(1000, 1000, 0.0), (1000, 500, 0.1), (200, 300, 0.2), (1000, 5000, 0.08), (1000, 60, 0.3)],
)
def test_numpy_ks_statistic_equals_scipys_exactly_and_p_value_approximately(n_a, n_b, shift):
    a, b = normal(n_a, seed=10), normal(n_b, loc=shift, seed=11)

    statistic, p_value = D.ks_2samp_numpy(a, b)
    expected = stats.ks_2samp(a, b)

    assert statistic == float(expected.statistic)
    assert p_value == pytest.approx(float(expected.pvalue), rel=0.1, abs=1e-3)


def test_numpy_ks_is_one_with_tiny_p_value_on_disjoint_samples():
    statistic, p_value = D.ks_2samp_numpy(np.arange(500.0), np.arange(500.0) + 1000)

    assert statistic == 1.0
    assert p_value < 1e-100


def test_numpy_ks_treats_ties_like_scipy():
    a = np.repeat([0.0, 1.0, 2.0], [300, 500, 200])
    b = np.repeat([0.0, 1.0, 2.0], [200, 500, 300])

    assert D.ks_2samp_numpy(a, b)[0] == float(stats.ks_2samp(a, b).statistic)


def test_feature_drift_works_without_scipy_using_the_numpy_ks():
    # The core profile has no scipy: run the same check in a fresh interpreter where importing
    # scipy fails, and compare with the numpy KS computed here.
    code = (
        "import sys; sys.modules['scipy'] = None\n"
        "import json, numpy as np, pandas as pd, model_drift_detection as D\n"
        "assert D._scipy_stats is None\n"
        "rng = np.random.default_rng(30)\n"
        "ref = D.reference_statistics(pd.DataFrame({'x': rng.normal(size=3000)}))\n"
        "cur = pd.DataFrame({'x': rng.normal(1.0, size=500)})\n"
        "r = D.feature_drift(ref, cur)[0]\n"
        "print(json.dumps([r.ks_statistic, r.p_value, r.drifted, str(r.band)]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=C.PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    ks_statistic, p_value, drifted, band = json.loads(done.stdout)

    rng = np.random.default_rng(30)
    ref = D.reference_statistics(pd.DataFrame({"x": rng.normal(size=3000)}))
    current = rng.normal(1.0, size=500)
    assert (ks_statistic, p_value) == D.ks_2samp_numpy(ref["x"]["sample"], current)
    assert drifted and band == "significant"


# --- Feature drift on real data -------------------------------------------------------------------


def test_1990s_reference_flags_drift_on_volatility_and_spread_in_2019_2022(
    features, early_reference
):
    results = {r.name: r for r in D.feature_drift(early_reference, features.iloc[-1000:])}

    assert len(results) == 23
    for name in ("AAPL_vol_20d", "MSFT_vol_20d", "spread_AAPL_MSFT"):
        assert results[name].drifted, name
        assert results[name].band == D.DriftBand.SIGNIFICANT
        assert results[name].statistic > D.PSI_SIGNIFICANT
        assert results[name].p_value < 1e-10


def test_reference_compared_with_its_own_data_flags_nothing(features, early_reference):
    results = D.feature_drift(early_reference, features.iloc[:1000])

    assert not any(r.drifted for r in results)
    assert all(r.band == D.DriftBand.STABLE for r in results)
    assert max(r.statistic for r in results) < 0.01


def test_feature_missing_from_current_data_is_reported_missing_not_raised(
    features, early_reference
):
    current = features.iloc[-1000:].drop(columns=["corr_60d_AAPL_MSFT"])

    results = {r.name: r for r in D.feature_drift(early_reference, current)}

    missing = results["corr_60d_AAPL_MSFT"]
    assert missing.band == D.DriftBand.MISSING
    assert not missing.drifted and math.isnan(missing.statistic)
    assert results["AAPL_vol_20d"].drifted


def test_feature_without_finite_current_values_is_insufficient_not_drifted(early_reference):
    current = pd.DataFrame({"spread_z_AAPL_MSFT": [np.nan] * 5})

    results = {r.name: r for r in D.feature_drift(early_reference, current)}

    assert results["spread_z_AAPL_MSFT"].band == D.DriftBand.INSUFFICIENT
    assert not results["spread_z_AAPL_MSFT"].drifted


def test_feature_drift_ignores_nan_rows_in_current_data(features, early_reference):
    current = features.iloc[:1000].copy()
    current.iloc[::3, :] = np.nan

    assert not any(r.drifted for r in D.feature_drift(early_reference, current))


# --- Prediction drift -----------------------------------------------------------------------------


def test_prediction_drift_flags_shifted_probabilities():
    rng = np.random.default_rng(20)
    reference, current = rng.beta(2, 5, size=5000), rng.beta(5, 2, size=1000)

    result = D.prediction_drift(reference, current)

    assert result.kind == D.DriftKind.PREDICTION
    assert result.drifted and result.band == D.DriftBand.SIGNIFICANT
    assert result.p_value < 1e-10


def test_prediction_drift_is_quiet_on_probabilities_from_the_same_distribution():
    rng = np.random.default_rng(21)
    reference, current = rng.beta(2, 5, size=5000), rng.beta(2, 5, size=1000)

    result = D.prediction_drift(reference, current)

    assert not result.drifted and result.band == D.DriftBand.STABLE
    assert result.p_value > 0.01


def test_prediction_drift_rejects_values_outside_zero_one():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        D.prediction_drift([0.2, 0.5], [0.3, 1.5])


# --- Performance drift ----------------------------------------------------------------------------


def test_performance_drift_flags_a_full_window_at_40_percent_vs_55():
    result = D.performance_drift(outcomes(20, 50), 0.55, window=50, margin=0.05)

    assert result.kind == D.DriftKind.PERFORMANCE
    assert result.statistic == pytest.approx(0.40)
    assert result.threshold == pytest.approx(0.50)
    assert result.drifted
    assert result.p_value == pytest.approx(stats.binom.cdf(20, 50, 0.55), rel=1e-9)
    assert result.band == D.DriftBand.SIGNIFICANT  # p ~ 0.02 < 0.05


def test_performance_drift_is_quiet_at_56_percent_vs_55():
    result = D.performance_drift(outcomes(28, 50), 0.55)

    assert result.statistic == pytest.approx(0.56)
    assert not result.drifted and result.band == D.DriftBand.STABLE


def test_performance_drift_waits_for_a_full_window():
    result = D.performance_drift(outcomes(5, 30), 0.55, window=50)

    assert not result.drifted
    assert result.band == D.DriftBand.INSUFFICIENT
    assert result.details["outcomes"] == 30


def test_performance_drift_judges_only_the_last_window_outcomes():
    old_bad, recent_good = outcomes(0, 100), outcomes(30, 50, seed=1)

    result = D.performance_drift(old_bad + recent_good, 0.55, window=50)

    assert result.statistic == pytest.approx(0.60) and not result.drifted


def test_performance_drift_just_below_margin_is_moderate_when_not_significant():
    # 24/50 = 0.48 < 0.50, but P(X <= 24 | 0.55) ~ 0.24: drifted, MEDIUM only.
    result = D.performance_drift(outcomes(24, 50), 0.55)

    assert result.drifted and result.band == D.DriftBand.MODERATE
    assert result.severity == "MEDIUM"


# --- Report and alerts ----------------------------------------------------------------------------


def test_report_lists_drifted_and_missing_results_and_table_rows(features, early_reference):
    current = features.iloc[-1000:].drop(columns=["spread_z_AAPL_MSFT"])
    report = D.DriftReport(tuple(D.feature_drift(early_reference, current)))

    rows = report.to_table_rows()

    assert report.drifted and all(r.drifted for r in report.drifted)
    assert report.missing == ("spread_z_AAPL_MSFT",)
    assert len(rows) == 23 and all(len(row) == len(D.TABLE_HEADER) for row in rows)
    assert all(isinstance(cell, str) for row in rows for cell in row)
    assert rows[0][-1] == "YES"  # drifted first
    assert ("feature", "spread_z_AAPL_MSFT", "-", "0.1000", "missing", "-", "-", "no") in rows


def test_report_of_stable_results_has_nothing_drifted(features, early_reference):
    report = D.DriftReport(tuple(D.feature_drift(early_reference, features.iloc[:1000])))

    assert not report.drifted


def test_drift_result_is_frozen():
    result = D.performance_drift(outcomes(20, 50), 0.55)

    with pytest.raises(dataclasses.FrozenInstanceError):
        result.drifted = False  # type: ignore[misc]


def test_emit_alerts_writes_one_json_line_per_drifted_result_with_its_severity(
    tmp_path, features, early_reference
):
    results = D.feature_drift(early_reference, features.iloc[-1000:])
    results.append(D.performance_drift(outcomes(20, 50), 0.55))
    results.append(D.performance_drift(outcomes(24, 50), 0.55))
    results.append(D.performance_drift(outcomes(30, 50), 0.55))  # not drifted
    drifted = [r for r in results if r.drifted]

    written = D.emit_alerts(results, model_version="xgb-20240501", home=tmp_path)

    lines = C.paths(tmp_path).alerts_log.read_text(encoding="utf-8").splitlines()
    assert written == len(lines) == len(drifted)
    records = [json.loads(line) for line in lines]
    for result, record in zip(drifted, records, strict=True):
        assert record["severity"] == (
            "HIGH" if result.band == D.DriftBand.SIGNIFICANT else "MEDIUM"
        )
        assert record["details"]["feature"] == result.name
        assert record["details"]["model"] == "xgb-20240501"
        assert record["details"]["band"] == result.band
        assert record["details"]["statistic"] == pytest.approx(result.statistic)
    assert {r["severity"] for r in records} == {"HIGH", "MEDIUM"}


def test_emit_alerts_writes_nothing_when_nothing_drifted(tmp_path, features, early_reference):
    results = D.feature_drift(early_reference, features.iloc[:1000])

    assert D.emit_alerts(results, home=tmp_path) == 0
    assert not C.paths(tmp_path).alerts_log.exists()


def test_reference_statistics_carry_the_in_training_psi_quantiles():
    rng = np.random.default_rng(5)
    trending = pd.DataFrame(
        {"slow": np.cumsum(rng.normal(size=3000)), "fast": rng.normal(size=3000)}
    )
    ref = D.reference_statistics(trending)
    for name in ("slow", "fast"):
        assert set(ref[name]["null_psi"]) == {"30", "60", "120", "250", "500", "1000"}
    # A random walk's windows differ far more from its whole history than white noise's do.
    assert ref["slow"]["null_psi"]["250"] > 1.0 > D.PSI_SIGNIFICANT > ref["fast"]["null_psi"]["250"]
    assert D.calibrated_threshold(ref["fast"], 250) == D.PSI_SIGNIFICANT  # the floor
    assert D.calibrated_threshold(ref["slow"], 70) == ref["slow"]["null_psi"]["60"]
    assert D.calibrated_threshold(ref["slow"], 10) == ref["slow"]["null_psi"]["30"]
    assert D.calibrated_threshold({"edges": []}, 60) is None
