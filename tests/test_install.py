"""install.sh refuses bad input with a clear message, before touching .venv."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _install(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / "install.sh"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_unknown_profile_is_refused():
    proc = _install("gpu")
    assert proc.returncode == 1
    assert "unknown profile 'gpu' (choose core, lstm, live, advanced or full)" in proc.stderr


def test_missing_interpreter_is_named():
    proc = _install("core", env={"PYTHON": "python3.99-missing"})
    assert proc.returncode == 1
    assert "'python3.99-missing' not found" in proc.stderr


def test_too_old_interpreter_is_refused(tmp_path):
    fake = tmp_path / "python-old"
    fake.write_text(
        "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'Python 3.9.2'; exit 0; fi\nexit 1\n"
    )
    fake.chmod(0o755)
    proc = _install("core", env={"PYTHON": str(fake)})
    assert proc.returncode == 1
    assert "Python 3.11+ required, found Python 3.9.2" in proc.stderr


def test_help_lists_the_profiles():
    proc = _install("--help")
    assert proc.returncode == 0
    assert all(p in proc.stdout for p in ("core", "lstm", "live", "advanced", "full"))


def test_pyproject_installs_every_root_module():
    """install.sh's `pip install -e .` installs what pyproject.toml lists: a root module left out
    would be missing on a Dask worker started from the venv."""
    import tomllib

    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert sorted(listed["py-modules"]) == sorted(p.stem for p in ROOT.glob("*.py"))
