"""Feature throughput: the bundled AAPL/MSFT history (8,313 rows) and 1,000,000 rows.

The 1,000,000-row series tiles the real AAPL and MSFT daily log returns (demeaned so prices stay
finite) from 100: deterministic, realistic volatility. Target: 1,000,000 rows in under 2 s on one
core. Run: .venv/bin/python bench/bench_features.py [--rows N] [--repeat R]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# One core, as the target says: keep numpy/BLAS single-threaded.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import process_stock_data as psd  # noqa: E402


def tiled_prices(base: pd.DataFrame, rows: int) -> pd.DataFrame:
    """`rows` bars of prices whose log returns repeat `base`'s (demeaned), starting at 100."""
    log_ret = np.log(base).diff().dropna()
    log_ret = log_ret - log_ret.mean()
    reps = -(-rows // len(log_ret))
    tiled = np.tile(log_ret.to_numpy(), (reps, 1))[: rows - 1]
    levels = 100 * np.exp(np.vstack([np.zeros((1, base.shape[1])), np.cumsum(tiled, axis=0)]))
    index = pd.bdate_range("1900-01-01", periods=rows, name="date")
    return pd.DataFrame(levels, index=index, columns=base.columns)


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    base = psd.load_bundled().close[["AAPL", "MSFT"]]
    big = tiled_prices(base, args.rows)
    print(f"numpy {np.__version__}, pandas {pd.__version__}, best of {args.repeat}")
    for name, prices in (("bundled AAPL/MSFT", base), (f"tiled {args.rows:,}", big)):
        seconds = best_of(lambda p=prices: psd.compute_features(p, "AAPL", "MSFT"), args.repeat)
        print(
            f"{name:>22}: {len(prices):>9,} rows  {seconds:7.3f} s  "
            f"{len(prices) / seconds:>12,.0f} rows/s"
        )
    labeled = best_of(
        lambda: psd.add_label(psd.compute_features(big, "AAPL", "MSFT"), big, "AAPL", "MSFT"),
        args.repeat,
    )
    print(
        f"{'features + label':>22}: {len(big):>9,} rows  {labeled:7.3f} s  "
        f"{len(big) / labeled:>12,.0f} rows/s"
    )


if __name__ == "__main__":
    main()
