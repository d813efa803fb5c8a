"""atomic_io: a reader sees the old file or the whole new one, never a partial write."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest

from atomic_io import atomic_write_bytes, atomic_write_json, sha256_file


def test_write_replaces_content_and_sets_mode(tmp_path):
    target = tmp_path / "state" / "positions.json"
    atomic_write_json(target, {"cash": 100_000.0})
    atomic_write_bytes(target, b'{"cash": 1.0}', mode=0o600)
    assert json.loads(target.read_text()) == {"cash": 1.0}
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "positions.json"
    target.write_text("old")
    real_fsync = os.fsync

    def failing_fsync(fd):
        real_fsync(fd)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(target, b"new content")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["positions.json"]


def test_sha256_file_matches_hashlib(tmp_path):
    data = os.urandom(3_000_000)
    f = tmp_path / "blob"
    f.write_bytes(data)
    assert sha256_file(f, chunk_size=65_536) == hashlib.sha256(data).hexdigest()
