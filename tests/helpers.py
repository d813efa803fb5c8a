"""Running the application as a user does: `python main.py ...` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
