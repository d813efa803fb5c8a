"""Hash-chained audit log (placeholder: being written)."""

from __future__ import annotations

import argparse
from typing import Any


def register_cli(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add the `audit` command to main.py's sub-parsers."""
