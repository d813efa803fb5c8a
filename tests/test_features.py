"""Features: strictly causal (truncation invariance), equal to independent numpy code, any pair."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import constants as C
import process_stock_data as psd
from atomic_io import sha256_file


@pytest.fixture(scope="module")
def full(aapl_msft) -> pd.DataFrame:
    return psd.compute_features(aapl_msft, "AAPL", "MSFT")


def test_truncation_invariance_of_all_23_features(aapl_msft, full):
    """Lookahead guard: row t computed on prices[:t+1] equals row t computed on all history."""
    rng = np.random.default_rng(20261124)
    cut_points = sorted(
        {0, 1, 59, 77, 78, 79, len(aapl_msft) - 2, *rng.integers(0, len(aapl_msft), 60)}
    )
    assert len(full.columns) == 23
    for t in cut_points:
        truncated = psd.compute_features(aapl_msft.iloc[: t + 1], "AAPL", "MSFT")
        expected, got = full.iloc[t], truncated.iloc[-1]
        np.testing.assert_allclose(
            got.to_numpy(),
            expected.to_numpy(),
            rtol=1e-9,
            atol=1e-12,
            equal_nan=True,
            err_msg=f"row {t} ({aapl_msft.index[t].date()}) changed when later bars were removed",
        )


def test_truncation_invariance_with_volume(aapl_msft):
    rng = np.random.default_rng(7)
    volume = pd.DataFrame(
        rng.integers(1_000, 10_000, size=aapl_msft.shape),
        index=aapl_msft.index,
        columns=aapl_msft.columns,
    ).astype(float)
    prices = aapl_msft.iloc[:600]
    full = psd.compute_features(prices, "AAPL", "MSFT", volume.iloc[:600])
    assert list(full.columns) == C.feature_names("AAPL", "MSFT", with_volume=True)
    for t in rng.integers(0, 600, 20):
        part = psd.compute_features(prices.iloc[: t + 1], "AAPL", "MSFT", volume.iloc[: t + 1])
        np.testing.assert_allclose(
            part.iloc[-1].to_numpy(), full.iloc[t].to_numpy(), rtol=1e-9, equal_nan=True
        )


def test_a_future_shock_does_not_move_past_features(aapl_msft, full):
    """Multiply every close after t by 10: rows <= t must not change at all."""
    t = 5000
    shocked = aapl_msft.copy()
    shocked.iloc[t + 1 :] *= 10
    again = psd.compute_features(shocked, "AAPL", "MSFT")
    pd.testing.assert_frame_equal(again.iloc[: t + 1], full.iloc[: t + 1])


@pytest.mark.parametrize(
    "long,short", [("JPM", "BAC"), ("KO", "PEP"), ("XOM", "CVX"), ("RRC", "AMD")]
)
def test_any_bundled_pair_produces_the_named_columns(bundled, long, short):
    close = bundled.close[[long, short]]
    features = psd.compute_features(close, long, short)
    assert list(features.columns) == C.feature_names(long, short)
    first, _ = psd._warmup(features)
    assert first == 78  # the 60-bar hedge ratio then the 20-bar spread z-score
    assert not features.iloc[first:].isna().any().any()


# --- Independent re-implementations at a few bars ------------------------------------------------
T_CHECK = [100, 2500, 8000]


@pytest.mark.parametrize("t", T_CHECK)
def test_returns_volatility_momentum_match_numpy(aapl_msft, full, t):
    p = aapl_msft["AAPL"].to_numpy()
    lr = np.diff(np.log(p))
    row = full.iloc[t]
    assert row["AAPL_ret_1d"] == pytest.approx(np.log(p[t] / p[t - 1]))
    assert row["AAPL_ret_5d"] == pytest.approx(np.log(p[t] / p[t - 5]))
    assert row["AAPL_vol_20d"] == pytest.approx(np.std(lr[t - 20 : t], ddof=1) * np.sqrt(252))
    assert row["AAPL_mom_10"] == pytest.approx(p[t] / p[t - 10] - 1)
    assert row["AAPL_sma_ratio"] == pytest.approx(
        p[t - 9 : t + 1].mean() / p[t - 49 : t + 1].mean() - 1
    )
    w60 = p[t - 59 : t + 1]
    assert row["AAPL_price_z60"] == pytest.approx((p[t] - w60.mean()) / w60.std(ddof=1))
    w20 = p[t - 19 : t + 1]
    lower, upper = w20.mean() - 2 * w20.std(ddof=1), w20.mean() + 2 * w20.std(ddof=1)
    assert row["AAPL_bb_pctb"] == pytest.approx((p[t] - lower) / (upper - lower))


def _wilder_rsi(p: np.ndarray, n: int = 14) -> np.ndarray:
    """Plain-loop Wilder RSI, seeded the way pandas ewm(adjust=False) seeds (first change)."""
    d = np.diff(p)
    gain, loss = np.maximum(d, 0), np.maximum(-d, 0)
    ag, al = gain[0], loss[0]
    out = np.full(len(p), np.nan)
    for i in range(1, len(d)):
        ag = ag + (gain[i] - ag) / n
        al = al + (loss[i] - al) / n
        if i + 1 >= n:
            out[i + 1] = 100 - 100 / (1 + ag / al) if al > 0 else 100.0
    return out


def _ema(x: np.ndarray, span: int) -> np.ndarray:
    a = 2 / (span + 1)
    out = np.empty_like(x)
    out[0] = x[0]
    for i in range(1, len(x)):
        out[i] = a * x[i] + (1 - a) * out[i - 1]
    return out


@pytest.mark.parametrize("t", T_CHECK)
def test_rsi_and_macd_match_plain_loops(aapl_msft, full, t):
    p = aapl_msft["MSFT"].to_numpy()[: t + 1]
    assert full.iloc[t]["MSFT_rsi_14"] == pytest.approx(_wilder_rsi(p)[t])
    macd = (_ema(p, 12) - _ema(p, 26)) / p
    assert full.iloc[t]["MSFT_macd"] == pytest.approx(macd[t])
    signal = _ema(macd[25:], 9)  # pandas starts the signal EMA at the first valid MACD
    assert full.iloc[t]["MSFT_macd_signal"] == pytest.approx(signal[-1])


@pytest.mark.parametrize("t", T_CHECK)
def test_pair_features_match_numpy(aapl_msft, full, t):
    y, x = np.log(aapl_msft["AAPL"].to_numpy()), np.log(aapl_msft["MSFT"].to_numpy())

    def beta(s: int) -> float:
        return np.polyfit(x[s - 59 : s + 1], y[s - 59 : s + 1], 1)[0]

    row = full.iloc[t]
    assert row["spread_AAPL_MSFT"] == pytest.approx(y[t] - beta(t) * x[t], rel=1e-8)
    spreads = np.array([y[s] - beta(s) * x[s] for s in range(t - 19, t + 1)])
    assert row["spread_z_AAPL_MSFT"] == pytest.approx(
        (spreads[-1] - spreads.mean()) / spreads.std(ddof=1), rel=1e-6
    )
    ry, rx = np.diff(y)[t - 60 : t], np.diff(x)[t - 60 : t]
    assert row["corr_60d_AAPL_MSFT"] == pytest.approx(np.corrcoef(ry, rx)[0, 1])


def test_flat_windows_give_neutral_values_not_nan(bundled):
    """RRC sat on one price for weeks in 1990: z-scores are 0, %B is 0.5, RSI is 50."""
    close = bundled.close[["RRC", "XOM"]]
    f = psd.compute_features(close, "RRC", "XOM")
    day = pd.Timestamp("1990-04-09")  # RRC unchanged for the 20 sessions before
    assert close["RRC"].loc[:day].iloc[-20:].nunique() == 1
    assert f.loc[day, "RRC_bb_pctb"] == 0.5
    assert f.loc[day, "RRC_vol_20d"] == 0.0


def test_label_is_the_sign_of_the_next_spread_return(aapl_msft, full):
    labeled = psd.add_label(full, aapl_msft, "AAPL", "MSFT")
    p = aapl_msft.to_numpy()
    r = p[1:] / p[:-1] - 1
    nxt = r[:, 0] - r[:, 1]
    np.testing.assert_allclose(labeled[C.NEXT_SPREAD_RETURN_COLUMN].to_numpy()[:-1], nxt)
    np.testing.assert_array_equal(labeled[C.LABEL_COLUMN].to_numpy()[:-1], (nxt > 0).astype(float))
    assert np.isnan(labeled[C.LABEL_COLUMN].iloc[-1])
    assert 0.45 < labeled[C.LABEL_COLUMN].mean() < 0.55


def test_process_writes_parquet_and_metadata_with_hash(home):
    table, summary = psd.process("bundled", C.Pair("JPM", "BAC"), home=home)
    file = home.processed_file(C.Pair("JPM", "BAC"))
    meta = json.loads(file.with_suffix(".json").read_text())
    assert meta["sha256"] == sha256_file(file) == summary.sha256
    assert meta["source"] == "bundled" and (meta["long"], meta["short"]) == ("JPM", "BAC")
    assert summary.input_rows == 8313 and summary.rows == 8313 - 78 == len(table)
    assert summary.start == "1990-04-24" and summary.end == "2022-12-28"
    assert summary.unlabeled_rows == 1
    assert "spread_z_JPM_BAC" in summary.warmup_reason
    back, meta2 = psd.load_processed(C.Pair("JPM", "BAC"), home)
    pd.testing.assert_frame_equal(back, table, check_freq=False)
    assert [c for c in back.columns if c in meta2["features"]] == C.feature_names("JPM", "BAC")


def test_process_respects_start_and_end(home):
    _, s = psd.process(
        "bundled", C.Pair("AAPL", "MSFT"), start="2015-01-01", end="2015-12-31", home=home
    )
    assert s.input_rows == 252 and s.rows == 252 - 78
    assert s.end == "2015-12-31"


def test_too_little_history_is_a_clear_error(home):
    from error_handling import DataError

    with pytest.raises(DataError, match="not enough history"):
        psd.process(
            "bundled", C.Pair("AAPL", "MSFT"), start="2015-01-01", end="2015-02-15", home=home
        )
