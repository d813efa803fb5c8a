"""Crash-safe file writes and content hashes.

Invariant: a reader sees either the old file or the complete new one, never a partial write. We
write a temp file in the same directory, fsync it, rename it over the target (atomic on POSIX), then
fsync the directory so the rename itself survives a power cut. Used for every state file: processed
data, the model registry, positions.json, the credential store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> Path:
    """Write `data` to `path` atomically with permissions `mode`; returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(target.parent)
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str, *, mode: int = 0o644) -> Path:
    """Write UTF-8 `text` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, mode: int = 0o644) -> Path:
    """Write `obj` as indented, key-sorted JSON atomically (non-JSON values via str())."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    return atomic_write_text(path, text, mode=mode)


def write_folder(
    root: str | os.PathLike[str], name: str, write: Callable[[Path, str], None]
) -> Path:
    """A results folder written whole or not at all: ``write(tmp, final_name)`` fills a hidden
    temporary folder in `root`, whose files are then fsynced and which is renamed to
    `final_name` (`name`, or ``name-2``, ``name-3``... when taken). Returns the final path."""
    base = Path(root)
    base.mkdir(parents=True, exist_ok=True)
    final, n = name, 1
    while (base / final).exists():
        n += 1
        final = f"{name}-{n}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final}.{os.getpid()}.", dir=base))
    try:
        write(tmp, final)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o755)  # noqa: S103 (mkdtemp makes it 0700; results are for reading)
        os.replace(tmp, base / final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(base)
    return base / final


def json_safe(obj: Any) -> Any:
    """A strict-JSON copy: NaN and inf become None, numpy scalars plain numbers, tuples lists."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "dtype") and hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()  # a numpy scalar (no numpy import here)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's content, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
