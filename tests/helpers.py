"""Running the application as a user does (`python main.py ...` in a subprocess), and what the
live-loop tests share: a private copy of a trained home, a replay configuration."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run(
    *args: str, home: Path, extra_env: dict[str, str] | None = None, python: str = sys.executable
) -> subprocess.CompletedProcess:
    """Run `python *args` in the project directory with TRADING_HOME=home and no stdin; the pair
    and data source come from flags or `extra_env`, never from the caller's environment."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TICKER_LONG", "TICKER_SHORT", "DATA_SOURCE")
    }
    env.update({"TRADING_HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1", **(extra_env or {})})
    return subprocess.run(
        [python, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def copy_home(trained: Path, target: Path) -> Any:
    """A private copy of a trained TRADING_HOME (data and models; no live state yet)."""
    import constants as C

    for part in ("data", "models"):
        shutil.copytree(trained / part, target / part)
    return C.paths(target)


def replay_config(start: str, end: str, **kw: Any) -> Any:
    """A live_trading.LiveConfig replaying the sessions from `start` to `end` inclusive (New York
    dates); every bar dated in that range is decided."""
    import pandas as pd

    import live_trading as lt

    ny = "America/New_York"
    return lt.LiveConfig(
        replay_start=pd.Timestamp(start).tz_localize(ny).tz_convert("UTC"),
        replay_end=(pd.Timestamp(end) + pd.Timedelta(days=1)).tz_localize(ny).tz_convert("UTC"),
        **kw,
    )
