"""`python main.py scan --adopt LONG/SHORT`: a pair of the latest scan becomes the traded pair
(TICKER_LONG/TICKER_SHORT in .env), trained when it has no active model. Real scans of three
bundled tickers over 2017-2019 (three pairs, a second each); .env is a temporary file
(TRADING_ENV_FILE), never the project's."""

from __future__ import annotations

import shutil
import stat
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

import constants as C
import pair_scan as ps
import train_model as tm
from tests.helpers import run

TICKERS = ("AAPL", "MSFT", "KO")
#: A hand-written .env: comments, an `export`, other keys, a commented-out key, no final newline.
ENV_TEXT = (
    "# my settings\n"
    "export TICKER_LONG=AAPL\n"
    "LOG_LEVEL=INFO\n"
    "\n"
    "# TICKER_SHORT=XOM (an old idea)\n"
    "TICKER_SHORT=MSFT\n"
    "DATA_SOURCE=bundled"
)


def _universe(path: Path, bundled, tickers=TICKERS) -> Path:
    bundled.close[list(tickers)].loc["2017":"2019"].to_csv(path, index_label="date")
    return path


def _scan(universe: Path, home: Path, when: datetime) -> Path:
    request = ps.ScanRequest(universe=f"csv:{universe}", write_charts=False)
    _, _, folder = ps.scan(request, results_dir=home / "results", now=when)
    return folder


@pytest.fixture(scope="module")
def scanned_home(tmp_path_factory, bundled) -> tuple[Path, Path]:
    """(home, universe CSV): one scan of AAPL, MSFT, KO and an active XGBoost model for AAPL/KO
    (a small one, trained in-process on the same CSV) so adopting AAPL/KO trains nothing."""
    root = tmp_path_factory.mktemp("adopt")
    universe = _universe(root / "u.csv", bundled)
    home = root / "home"
    _scan(universe, home, datetime(2026, 1, 2, 12, 0, tzinfo=UTC))
    config = tm.TrainConfig(models=("xgb",), folds=2, xgb_trees=20)
    tm.train(C.Pair("AAPL", "KO"), config, source=f"csv:{universe}", home=C.paths(home))
    return home, universe


def adopt(text: str, home: Path, env_file: Path, universe: Path, **env: str):
    return run(
        "main.py",
        "scan",
        "--adopt",
        text,
        home=home,
        extra_env={
            C.ENV_ENV_FILE: str(env_file),
            "DATA_SOURCE": f"csv:{universe}",
            "ENSEMBLE_MODE": "0",
            "SIGNAL_MODEL": "xgb",
            **env,
        },
    )


def _snapshot(home: Path) -> dict[Path, int]:
    """Every path under the home but logs/ (a command's log lines are not results)."""
    return {
        p: p.stat().st_mtime_ns for p in home.rglob("*") if p.relative_to(home).parts[0] != "logs"
    }


def _models(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "models").iterdir() if p.is_dir())


def test_adopting_sets_both_keys_in_place_and_keeps_every_other_line(scanned_home, tmp_path):
    home, universe = scanned_home
    env_file = tmp_path / ".env"
    env_file.write_text(ENV_TEXT)
    env_file.chmod(0o640)
    models = _models(home)

    proc = adopt("AAPL/KO", home, env_file, universe)

    assert proc.returncode == 0, proc.stderr
    assert env_file.read_text() == (
        "# my settings\n"
        "export TICKER_LONG=AAPL\n"
        "LOG_LEVEL=INFO\n"
        "\n"
        "# TICKER_SHORT=XOM (an old idea)\n"
        "TICKER_SHORT=KO\n"
        "DATA_SOURCE=bundled\n"
    )
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o640
    assert _models(home) == models  # an active model was there: nothing trained
    assert "an active model for AAPL/KO is present" in proc.stdout
    assert "next: python main.py backtest" in proc.stdout


def test_the_scan_figures_of_the_pair_are_printed(scanned_home, tmp_path):
    home, universe = scanned_home
    (folder,) = ps.scan_folders(home / "results")
    row = pd.read_csv(folder / "pairs.csv").set_index("pair").loc["AAPL/KO"]

    proc = adopt("AAPL/KO", home, tmp_path / ".env", universe)

    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith(f"scan {folder.name}"))
    assert f"OOS Sharpe {row['sharpe']:.2f} " in line
    assert f"(95 % CI {row['sharpe_ci_low']:.2f} .. {row['sharpe_ci_high']:.2f})" in line
    assert f"PSR {row['psr']:.3f}" in line or "PSR <0.001" in line
    assert f"DSR {row['dsr']:.3f}" in line or "DSR <0.001" in line
    assert f"rank {int(row['rank'])} of 3" in line


def test_a_ticker_set_in_the_shell_is_named_since_it_wins_over_env(scanned_home, tmp_path):
    home, universe = scanned_home
    env_file = tmp_path / ".env"
    env_file.write_text(ENV_TEXT)

    proc = adopt("AAPL/KO", home, env_file, universe, TICKER_SHORT="PEP")

    assert proc.returncode == 0, proc.stderr
    assert "TICKER_SHORT=KO" in env_file.read_text()
    assert "TICKER_SHORT=PEP is set in the environment and wins over .env" in proc.stdout
    assert "TICKER_LONG=" not in proc.stdout  # the .env's own value is no warning


def test_a_missing_env_file_is_created_private_with_the_two_keys(scanned_home, tmp_path):
    home, universe = scanned_home
    env_file = tmp_path / "config" / ".env"
    env_file.parent.mkdir()

    proc = adopt("aapl/ko", home, env_file, universe)

    assert proc.returncode == 0, proc.stderr
    assert env_file.read_text() == "TICKER_LONG=AAPL\nTICKER_SHORT=KO\n"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600


def test_a_pair_not_in_the_latest_scan_is_refused_in_one_line_and_nothing_is_written(
    tmp_path, bundled
):
    """KO is in the older scan only: the newer one, without it, is the one that counts."""
    home = tmp_path / "home"
    _scan(_universe(tmp_path / "three.csv", bundled), home, datetime(2026, 1, 2, tzinfo=UTC))
    two = _universe(tmp_path / "two.csv", bundled, ("AAPL", "MSFT"))
    newer = _scan(two, home, datetime(2026, 1, 3, tzinfo=UTC))
    env_file = tmp_path / ".env"
    env_file.write_text(ENV_TEXT)
    before = _snapshot(home)

    proc = adopt("AAPL/KO", home, env_file, two)

    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and "AAPL/KO" in err and newer.name in err
    assert env_file.read_text() == ENV_TEXT
    assert _snapshot(home) == before
    assert not (home / "models").exists()


def test_a_pair_the_data_source_lacks_is_refused_before_env_is_touched(scanned_home, tmp_path):
    """KO is in the scan but not in DATA_SOURCE's file: processing refuses, nothing adopted."""
    home, _ = scanned_home
    env_file = tmp_path / ".env"
    env_file.write_text(ENV_TEXT)
    prices = tmp_path / "aapl_msft.csv"
    pd.read_csv(scanned_home[1])[["date", "AAPL", "MSFT"]].to_csv(prices, index=False)

    proc = adopt("AAPL/KO", home, env_file, prices)

    assert proc.returncode not in (0, 1), proc.stdout
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and "KO" in err, err
    assert env_file.read_text() == ENV_TEXT


@pytest.mark.parametrize(
    "text,needle",
    [
        ("AAPL-KO", "is not a pair LONG/SHORT"),
        ("AAPL/", "is not a pair LONG/SHORT"),
        ("AAPL/KO/MSFT", "is not a pair LONG/SHORT"),
        ("AAPL/K O", "invalid ticker symbol"),
        ("KO/ko", "must differ"),
    ],
)
def test_a_malformed_pair_is_refused_in_one_line(scanned_home, tmp_path, text, needle):
    home, universe = scanned_home
    env_file = tmp_path / ".env"

    proc = adopt(text, home, env_file, universe)

    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and needle in err, err
    assert not env_file.exists()


def test_without_any_scan_adopting_says_to_scan_first(tmp_path):
    proc = adopt("AAPL/KO", tmp_path, tmp_path / ".env", tmp_path / "none.csv")
    assert proc.returncode == 2
    assert "run `python main.py scan` first" in proc.stderr
    assert not (tmp_path / ".env").exists()


def test_a_pair_without_a_model_is_processed_and_trained(scanned_home, tmp_path):
    """MSFT/KO was scanned; asked the other way round, in lower case, it is adopted as KO/MSFT
    and trained for real (the active XGBoost model the backtest's signals need)."""
    from model_management import ModelRegistry

    home = tmp_path / "home"
    shutil.copytree(scanned_home[0], home)
    env_file = tmp_path / ".env"

    proc = adopt("ko/msft", home, env_file, scanned_home[1])

    assert proc.returncode == 0, proc.stderr
    assert env_file.read_text() == "TICKER_LONG=KO\nTICKER_SHORT=MSFT\n"
    assert "data: " in proc.stdout and "processed_KO_MSFT.parquet" in proc.stdout
    assert "adopted KO/MSFT" in proc.stdout and "as MSFT/KO" in proc.stdout
    assert "no active model for KO/MSFT" in proc.stdout
    registry = ModelRegistry(home / "models", home=home)
    assert registry.get_active_model("xgb", C.Pair("KO", "MSFT")) is not None
    assert (home / "data" / "processed_KO_MSFT.parquet").is_file()
