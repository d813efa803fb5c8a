"""Model registry (versions, SHA-256-verified artifacts, champion/canary status) and A/B testing.

Why: a live loop must never trade on a model file that changed on disk, that was trained for
another pair, or that expects other features; and a new model should earn its traffic against the
current one before it replaces it. The registry stores files only (no TensorFlow/XGBoost imports):
turning artifacts into model objects is the trainer's job.

Layout under the models root (`paths().models_dir`):
    registry.json                index: schema_version and every ModelRecord ever registered
    registry.lock                FileLock held for every read-modify-write of a state file
    <version>/                   the artifacts of one model, copied in by `register`
    ab_<name>_<LONG>_<SHORT>.json  A/B outcome counts per version (ABTestController)

Invariants:
- Per (name, pair) at most one ACTIVE model (the champion, traffic 1.0) and at most one CANARY
  (the challenger, traffic `canary_fraction`); STAGING and RETIRED models get no traffic.
- A version's directory appears whole or not at all (copied into a temp dir, then renamed), and
  the index is rewritten atomically under the lock, re-read inside it, so concurrent registrations
  from threads or processes are never lost.
- Readers (`list`, `get`, `load`) do not take the lock: atomic writes mean they see either the old
  or the new index, never a torn one.
- A registered model that is replaced by a newer canary is RETIRED, not put back to STAGING: a
  superseded challenger should never be served again by accident; `promote` still accepts only
  CANARY or STAGING, so bringing a retired model back is an explicit `rollback`.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import enum
import hashlib
import json
import logging
import math
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import alert_dispatch
from atomic_io import atomic_write_json, sha256_file
from constants import Pair, paths
from error_handling import ConfigurationError, ModelIntegrityError

__all__ = [
    "ABState",
    "ABTestController",
    "ModelRecord",
    "ModelRegistry",
    "ModelStatus",
    "PromotionAction",
    "PromotionDecision",
    "two_proportion_ztest",
]

_log = logging.getLogger(__name__)

REGISTRY_SCHEMA_VERSION = 1
OUTCOMES_SCHEMA_VERSION = 1
REGISTRY_FILE = "registry.json"
LOCK_FILE = "registry.lock"
#: `source` of the alerts this module writes.
ALERT_SOURCE = "model_registry"
#: Seconds to wait for registry.lock before giving up with a ConfigurationError.
DEFAULT_LOCK_TIMEOUT_S = 60.0
#: An artifact verified in this process is hashed again when its size or modification time
#: changes, or once this many seconds have passed (a change that keeps both is still found).
REHASH_AFTER_S = 6 * 3600.0

# (resolved path, size, mtime_ns, expected SHA-256) -> time.monotonic() of its last full hash.
_VERIFIED: dict[tuple[str, int, int, str], float] = {}


def artifact_matches(path: Path, expected: str, *, max_age_s: float = REHASH_AFTER_S) -> bool:
    """Whether `path` is a file whose SHA-256 is `expected`. The file is hashed unless this
    process verified the same (path, size, mtime) less than `max_age_s` ago: the live loop
    re-checks its models every few bars, and hashing them each time cost it tens of ms."""
    try:
        info = path.stat()
    except OSError:
        return False
    if not stat.S_ISREG(info.st_mode):
        return False
    key = (str(path.resolve()), info.st_size, info.st_mtime_ns, expected)
    now = time.monotonic()
    seen = _VERIFIED.get(key)
    if seen is not None and now - seen < max_age_s:
        return True
    if sha256_file(path) != expected:
        _VERIFIED.pop(key, None)
        return False
    _VERIFIED[key] = now
    return True


# A model kind becomes part of a directory name: no separators, no leading dot.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


class ModelStatus(enum.StrEnum):
    """Lifecycle of a registered model; only ACTIVE and CANARY receive traffic."""

    STAGING = "staging"
    CANARY = "canary"
    ACTIVE = "active"
    RETIRED = "retired"


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    """ISO-8601 UTC with microseconds and a 'Z'."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ModelRecord:
    """One registered model version and everything needed to check it before use.

    `artifacts` maps file name (inside models/<version>/) to its SHA-256 hex digest;
    `traffic_fraction` is the share of decisions it serves (1.0 champion, 0..1 canary, 0 otherwise);
    `replaces` is the champion this one replaced when it became ACTIVE (what `rollback` restores);
    `created` and `updated` (last status change) are UTC ISO strings.
    """

    name: str
    version: str
    status: ModelStatus
    created: str
    long: str
    short: str
    feature_names: tuple[str, ...]
    lookback: int | None
    artifacts: dict[str, str]
    traffic_fraction: float
    metadata: dict[str, Any] = field(default_factory=dict)
    replaces: str | None = None
    updated: str | None = None

    @property
    def pair(self) -> Pair:
        """The pair this model was trained for."""
        return Pair(self.long, self.short)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (status as its string value, tuples as lists)."""
        return {
            "name": self.name,
            "version": self.version,
            "status": self.status.value,
            "created": self.created,
            "long": self.long,
            "short": self.short,
            "feature_names": list(self.feature_names),
            "lookback": self.lookback,
            "artifacts": dict(self.artifacts),
            "traffic_fraction": self.traffic_fraction,
            "metadata": self.metadata,
            "replaces": self.replaces,
            "updated": self.updated,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelRecord:
        """Inverse of `to_dict`; KeyError/ValueError on a malformed record."""
        lookback = data.get("lookback")
        return cls(
            name=str(data["name"]),
            version=str(data["version"]),
            status=ModelStatus(data["status"]),
            created=str(data["created"]),
            long=str(data["long"]),
            short=str(data["short"]),
            feature_names=tuple(str(f) for f in data["feature_names"]),
            lookback=None if lookback is None else int(lookback),
            artifacts={str(k): str(v) for k, v in data["artifacts"].items()},
            traffic_fraction=float(data["traffic_fraction"]),
            metadata=dict(data.get("metadata") or {}),
            replaces=data.get("replaces"),
            updated=data.get("updated"),
        )

    def is_for(self, name: str, pair: Pair) -> bool:
        """True when this record is a `name` model of `pair`."""
        return self.name == name and (self.long, self.short) == (pair.long, pair.short)


def _pair_text(pair: Pair) -> str:
    return f"{pair.long}/{pair.short}"


def _train_hint(pair: Pair) -> str:
    """How to get a usable model back: train, then promote (while a champion exists a newly
    trained model is only a canary, and the champion is the one that failed)."""
    return (
        f"`python main.py train --long {pair.long} --short {pair.short}`, then make the new "
        "version active with `python main.py models promote VERSION` (a new model starts as a "
        "canary; `python main.py models` lists the versions)"
    )


_LOCK_MADE = threading.Lock()  # one FileLock per registry, also when threads race for it


class ModelRegistry:
    """Versioned model store under `root` (default `paths(home).models_dir`).

    `canary_fraction` is the traffic share a newly registered challenger gets; `home` is the
    TRADING_HOME whose alerts.log receives integrity alerts; `clock` returns the current UTC time
    (versions and timestamps come from it).
    """

    def __init__(
        self,
        root: Path | None = None,
        *,
        canary_fraction: float = 0.1,
        home: Path | None = None,
        clock: Callable[[], datetime] = _utc_now,
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    ) -> None:
        if not 0.0 < canary_fraction < 1.0:
            raise ConfigurationError(
                f"canary_fraction must be between 0 and 1 (exclusive), got {canary_fraction}"
            )
        self.root = Path(root) if root is not None else paths(home).models_dir
        self.canary_fraction = float(canary_fraction)
        self.home = home
        self._clock = clock
        self._lock_timeout_s = lock_timeout_s
        self._lock: Any = None  # the FileLock, made on first use (filelock costs `models` 12 ms)

    # --- Files and locking ------------------------------------------------------------------------
    @property
    def index_file(self) -> Path:
        """The JSON index of every registered model."""
        return self.root / REGISTRY_FILE

    def model_dir(self, version: str) -> Path:
        """Directory holding the artifacts of `version` (not checked for existence)."""
        return self.root / version

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold registry.lock (re-entrant within a thread): for read-modify-write of state files."""
        import filelock

        with _LOCK_MADE:
            if self._lock is None:
                self._lock = filelock.FileLock(self.root / LOCK_FILE, timeout=self._lock_timeout_s)
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            with self._lock:
                yield
        except filelock.Timeout as exc:
            raise ConfigurationError(
                f"could not lock {self._lock.lock_file} within {self._lock.timeout:g} s; "
                "another trainer or live loop is holding it"
            ) from exc

    def _read(self) -> builtins.list[ModelRecord]:
        try:
            raw = self.index_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        try:
            data = json.loads(raw)
            schema = data.get("schema_version")
            if schema != REGISTRY_SCHEMA_VERSION:
                raise ModelIntegrityError(
                    f"{self.index_file} has schema_version {schema!r}; this program reads "
                    f"{REGISTRY_SCHEMA_VERSION}"
                )
            return [ModelRecord.from_dict(r) for r in data["models"]]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelIntegrityError(
                f"model registry {self.index_file} is unreadable: {exc}"
            ) from exc

    def _write(self, records: Sequence[ModelRecord]) -> None:
        atomic_write_json(
            self.index_file,
            {"schema_version": REGISTRY_SCHEMA_VERSION, "models": [r.to_dict() for r in records]},
        )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[_Changes]:
        """Lock, re-read the index, let the caller change it, write it, then log the changes."""
        with self.locked():
            changes = _Changes(self._read(), self._iso_now())
            yield changes
            if changes.transitions:
                self._write(changes.records)
        for version, old, new in changes.transitions:
            _log.info(
                "model %s: %s -> %s",
                version,
                old.value if old else "new",
                new.value,
                extra={
                    "model_version": version,
                    "old_status": old.value if old else None,
                    "new_status": new.value,
                },
            )

    def _iso_now(self) -> str:
        return _iso(self._clock())

    # --- Registration -----------------------------------------------------------------------------
    def register(
        self,
        name: str,
        artifact_dir: Path,
        *,
        pair: Pair,
        feature_names: Sequence[str],
        lookback: int | None,
        metadata: dict[str, Any] | None = None,
    ) -> ModelRecord:
        """Copy every regular file of `artifact_dir` into models/<version>/ and index it.

        The first model of (name, pair) becomes ACTIVE (traffic 1.0); a later one becomes the
        CANARY (traffic `canary_fraction`) and any previous canary of (name, pair) is RETIRED.
        """
        if not _NAME_RE.match(name):
            raise ConfigurationError(
                f"invalid model name {name!r}: use letters, digits, '_', '-' or '.' (e.g. xgb)"
            )
        source = Path(artifact_dir)
        files = sorted(p for p in source.iterdir() if p.is_file()) if source.is_dir() else []
        if not files:
            raise ConfigurationError(f"no model files to register in {source}")
        if lookback is not None and lookback < 1:
            raise ConfigurationError(f"lookback must be a positive number of bars, got {lookback}")
        features = tuple(str(f) for f in feature_names)
        # Normalised through JSON so the returned record equals what a reader gets back.
        plain_metadata = json.loads(json.dumps(metadata or {}, default=str))

        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.root))
        try:
            artifacts = _copy_files(files, staging)
            with self._transaction() as tx:
                now = self._clock()
                version = _unique_version(
                    f"{name}-{pair.key}-{now.astimezone(UTC):%Y%m%dT%H%M%S%fZ}",
                    {r.version for r in tx.records},
                    self.root,
                )
                os.replace(staging, self.model_dir(version))
                _fsync_dir(self.root)
                has_active = any(
                    r.is_for(name, pair) and r.status is ModelStatus.ACTIVE for r in tx.records
                )
                if has_active:
                    for old in tx.find(name, pair, ModelStatus.CANARY):
                        tx.set_status(old, ModelStatus.RETIRED)
                status = ModelStatus.CANARY if has_active else ModelStatus.ACTIVE
                record = ModelRecord(
                    name=name,
                    version=version,
                    status=status,
                    created=_iso(now),
                    long=pair.long,
                    short=pair.short,
                    feature_names=features,
                    lookback=lookback,
                    artifacts=artifacts,
                    traffic_fraction=self.canary_fraction if has_active else 1.0,
                    metadata=plain_metadata,
                    updated=_iso(now),
                )
                tx.add(record)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone already unless something failed
        return record

    # --- Queries ----------------------------------------------------------------------------------
    def list(self, name: str | None = None, pair: Pair | None = None) -> builtins.list[ModelRecord]:
        """Registered models, newest first, optionally only those of `name` and/or `pair`."""
        records = [
            r
            for r in self._read()
            if (name is None or r.name == name)
            and (pair is None or (r.long, r.short) == (pair.long, pair.short))
        ]
        # Index order breaks ties between equal `created` stamps: later registered is newer.
        ordered = sorted(enumerate(records), key=lambda ir: (ir[1].created, ir[0]), reverse=True)
        return [r for _, r in ordered]

    def get(self, version: str) -> ModelRecord:
        """The record of `version`; ConfigurationError if there is none."""
        return _find_version(self._read(), version)

    def get_active_model(self, name: str, pair: Pair) -> ModelRecord | None:
        """The champion of (name, pair), or None before the first registration."""
        return _first(self.list(name, pair), ModelStatus.ACTIVE)

    def get_canary(self, name: str, pair: Pair) -> ModelRecord | None:
        """The challenger of (name, pair), or None."""
        return _first(self.list(name, pair), ModelStatus.CANARY)

    # --- Integrity and loading --------------------------------------------------------------------
    def verify(self, version: str) -> builtins.list[str]:
        """Names of the artifacts of `version` that are missing or whose SHA-256 differs."""
        record = self.get(version)
        directory = self.model_dir(version)
        bad = []
        for file_name, expected in sorted(record.artifacts.items()):
            path = directory / file_name
            if not artifact_matches(path, expected):
                bad.append(file_name)
        return bad

    def load(self, version: str, *, pair: Pair, feature_names: Sequence[str]) -> Path:
        """The verified artifact directory of `version`, for a caller trading `pair` on `features`.

        Integrity first: a missing or altered artifact raises ModelIntegrityError and writes a
        CRITICAL alert. Then compatibility: the model's pair and feature list must match.
        """
        record = self.get(version)
        bad = self.verify(version)
        if bad:
            message = (
                f"model {version} failed its integrity check: {', '.join(bad)} "
                f"missing or changed since registration (SHA-256 mismatch in "
                f"{self.model_dir(version)}); retrain with {_train_hint(record.pair)}"
            )
            alert_dispatch.send(
                "CRITICAL",
                ALERT_SOURCE,
                f"Model integrity failure: {version}",
                message,
                {"version": version, "files": bad, "directory": str(self.model_dir(version))},
                home=self.home,
            )
            raise ModelIntegrityError(message)
        if (record.long, record.short) != (pair.long, pair.short):
            raise ModelIntegrityError(
                f"model {version} was trained for {record.long}/{record.short}, not "
                f"{pair.long}/{pair.short}; retrain with {_train_hint(pair)}"
            )
        wanted = tuple(str(f) for f in feature_names)
        if record.feature_names != wanted:
            missing = [f for f in record.feature_names if f not in wanted]
            extra = [f for f in wanted if f not in record.feature_names]
            parts = []
            if missing:
                parts.append(f"missing from the data: {', '.join(missing)}")
            if extra:
                parts.append(f"not known to the model: {', '.join(extra)}")
            if not parts:
                parts.append("same features in a different order")
            raise ModelIntegrityError(
                f"model {version} was trained on other features ({'; '.join(parts)}); "
                f"retrain with {_train_hint(pair)}"
            )
        return self.model_dir(version)

    # --- Status transitions -----------------------------------------------------------------------
    def promote(self, version: str) -> ModelRecord:
        """CANARY or STAGING -> ACTIVE (traffic 1.0); the previous champion becomes RETIRED."""
        with self._transaction() as tx:
            record = _find_version(tx.records, version)
            if record.status not in (ModelStatus.CANARY, ModelStatus.STAGING):
                raise ConfigurationError(
                    f"cannot promote model {version}: it is {record.status.value}, "
                    "only a canary or staging model can be promoted"
                )
            previous = tx.find(record.name, record.pair, ModelStatus.ACTIVE)
            for old in previous:
                tx.set_status(old, ModelStatus.RETIRED)
            replaces = previous[0].version if previous else None
            promoted = tx.set_status(record, ModelStatus.ACTIVE, replaces=replaces)
        return promoted

    def rollback(self, name: str, pair: Pair) -> ModelRecord:
        """Undo the last step of (name, pair); returns the champion in force afterwards.

        With a canary: the canary is RETIRED and the champion stays. Without one: the champion is
        RETIRED and the champion it replaced becomes ACTIVE again.
        """
        with self._transaction() as tx:
            active = next(iter(tx.find(name, pair, ModelStatus.ACTIVE)), None)
            canaries = tx.find(name, pair, ModelStatus.CANARY)
            if canaries and active is not None:
                for canary in canaries:
                    tx.set_status(canary, ModelStatus.RETIRED)
                return active
            previous = None
            if active is not None and active.replaces is not None:
                previous = next((r for r in tx.records if r.version == active.replaces), None)
            if active is None or previous is None or previous.status is not ModelStatus.RETIRED:
                raise ConfigurationError(
                    f"nothing to roll back to for {name} {_pair_text(pair)}: no canary and no "
                    "retired previous champion; see `python main.py models`"
                )
            tx.set_status(active, ModelStatus.RETIRED)
            restored = tx.set_status(previous, ModelStatus.ACTIVE)
        return restored

    def retire(self, version: str) -> ModelRecord:
        """STAGING or CANARY -> RETIRED. The champion cannot be retired: promote or roll back."""
        with self._transaction() as tx:
            record = _find_version(tx.records, version)
            if record.status is ModelStatus.RETIRED:
                raise ConfigurationError(f"model {version} is already retired")
            if record.status is ModelStatus.ACTIVE:
                raise ConfigurationError(
                    f"cannot retire model {version}: it is the active {record.name} model of "
                    f"{_pair_text(record.pair)}; promote another or use rollback"
                )
            retired = tx.set_status(record, ModelStatus.RETIRED)
        return retired


class _Changes:
    """The index being edited inside one locked transaction, plus the status changes made."""

    def __init__(self, records: list[ModelRecord], now: str) -> None:
        self.records = records
        self.now = now
        self.transitions: list[tuple[str, ModelStatus | None, ModelStatus]] = []

    def find(self, name: str, pair: Pair, status: ModelStatus) -> list[ModelRecord]:
        return [r for r in self.records if r.is_for(name, pair) and r.status is status]

    def add(self, record: ModelRecord) -> None:
        self.records.append(record)
        self.transitions.append((record.version, None, record.status))

    def set_status(self, record: ModelRecord, status: ModelStatus, **changes: Any) -> ModelRecord:
        traffic = {ModelStatus.ACTIVE: 1.0, ModelStatus.CANARY: record.traffic_fraction}
        new = dataclasses.replace(
            record,
            status=status,
            traffic_fraction=traffic.get(status, 0.0),
            updated=self.now,
            **changes,
        )
        self.records[self.records.index(record)] = new
        self.transitions.append((record.version, record.status, status))
        return new


def _find_version(records: Sequence[ModelRecord], version: str) -> ModelRecord:
    for record in records:
        if record.version == version:
            return record
    raise ConfigurationError(f"unknown model version {version}; see `python main.py models`")


def _first(records: Sequence[ModelRecord], status: ModelStatus) -> ModelRecord | None:
    return next((r for r in records if r.status is status), None)


def _unique_version(base: str, taken: set[str], root: Path) -> str:
    """`base`, or `base-2`, `base-3`... when a version or directory of that name already exists."""
    candidate, n = base, 1
    while candidate in taken or (root / candidate).exists():
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def _copy_files(files: Sequence[Path], target: Path) -> dict[str, str]:
    """Copy `files` into `target`, fsync them, and return {file name: SHA-256 of the copy}."""
    artifacts = {}
    for source in files:
        destination = target / source.name
        shutil.copyfile(source, destination)
        with open(destination, "rb") as fh:
            os.fsync(fh.fileno())
        artifacts[source.name] = sha256_file(destination)
    _fsync_dir(target)
    return artifacts


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --- A/B testing ----------------------------------------------------------------------------------
class PromotionAction(enum.StrEnum):
    """What an A/B evaluation recommends for the challenger."""

    PROMOTE = "promote"
    ROLLBACK = "rollback"
    CONTINUE = "continue"


@dataclass(frozen=True)
class PromotionDecision:
    """Outcome of `ABTestController.evaluate`.

    `z` is positive when the challenger's hit rate is higher; `p_value` is two-sided. Hit rates are
    fractions in [0, 1] (NaN with no samples).
    """

    action: PromotionAction
    reason: str
    z: float
    p_value: float
    n_champion: int
    n_challenger: int
    champion_hit_rate: float
    challenger_hit_rate: float
    champion_version: str | None = None
    challenger_version: str | None = None


@dataclass(frozen=True)
class ABState:
    """Champion (ACTIVE) and challenger (CANARY) of one (name, pair) after a change."""

    champion: ModelRecord | None
    challenger: ModelRecord | None


def two_proportion_ztest(hits_a: int, n_a: int, hits_b: int, n_b: int) -> tuple[float, float]:
    """(z, two-sided p-value) for rate_b - rate_a, pooled standard error.

    Same statistic as statsmodels' proportions_ztest; z = 0, p = 1 when the pooled rate is 0 or 1.
    """
    if n_a <= 0 or n_b <= 0:
        raise ValueError("both samples need at least one observation")
    pooled = (hits_a + hits_b) / (n_a + n_b)
    variance = pooled * (1.0 - pooled) * (1.0 / n_a + 1.0 / n_b)
    if variance <= 0.0:
        return 0.0, 1.0
    z = (hits_b / n_b - hits_a / n_a) / math.sqrt(variance)
    return z, math.erfc(abs(z) / math.sqrt(2.0))


def _bucket(key: str) -> float:
    """A stable number in [0, 1) for `key` (first 64 bits of its SHA-256)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


class ABTestController:
    """Champion/challenger split and promotion decisions for one (name, pair).

    `min_samples` outcomes per side are needed before any decision; `alpha` is the significance
    level of the two-sided z-test; the challenger is rolled back when its hit rate is more than
    `rollback_margin` (a fraction, 0.05 = 5 points) below the champion's, or significantly below.
    Outcome counts live in models/ab_<name>_<pair.key>.json so restarts keep them.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        name: str,
        pair: Pair,
        *,
        min_samples: int = 100,
        alpha: float = 0.05,
        rollback_margin: float = 0.05,
    ) -> None:
        if min_samples < 1:
            raise ConfigurationError(f"min_samples must be at least 1, got {min_samples}")
        if not 0.0 < alpha < 1.0:
            raise ConfigurationError(f"alpha must be between 0 and 1, got {alpha}")
        if rollback_margin < 0.0:
            raise ConfigurationError(f"rollback_margin must be >= 0, got {rollback_margin}")
        self.registry = registry
        self.name = name
        self.pair = pair
        self.min_samples = min_samples
        self.alpha = alpha
        self.rollback_margin = rollback_margin

    @property
    def outcomes_file(self) -> Path:
        """Where the hit counts of this (name, pair) are kept."""
        return self.registry.root / f"ab_{self.name}_{self.pair.key}.json"

    def state(self) -> ABState:
        """The current champion and challenger."""
        return ABState(
            self.registry.get_active_model(self.name, self.pair),
            self.registry.get_canary(self.name, self.pair),
        )

    def _champion(self) -> ModelRecord:
        champion = self.registry.get_active_model(self.name, self.pair)
        if champion is None:
            raise ConfigurationError(
                f"no active {self.name} model for {_pair_text(self.pair)}; run "
                f"{_train_hint(self.pair)}"
            )
        return champion

    def select_model(self, key: str) -> ModelRecord:
        """The model that serves `key` (e.g. a bar timestamp or order id); stable per key.

        The challenger serves the keys whose hash of f"{challenger.version}:{key}" falls below its
        traffic fraction, so a new challenger gets a fresh sample of keys.
        """
        champion = self._champion()
        challenger = self.registry.get_canary(self.name, self.pair)
        if challenger is None:
            return champion
        if _bucket(f"{challenger.version}:{key}") < challenger.traffic_fraction:
            return challenger
        return champion

    # --- Outcomes ---------------------------------------------------------------------------------
    def _read_outcomes(self) -> dict[str, dict[str, int]]:
        try:
            data = json.loads(self.outcomes_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise ModelIntegrityError(
                f"A/B outcomes {self.outcomes_file} unreadable: {exc}"
            ) from exc
        return {
            str(v): {"n": int(c["n"]), "hits": int(c["hits"])}
            for v, c in data.get("outcomes", {}).items()
        }

    def record_outcome(self, version: str, hit: bool, *, count: int = 1) -> None:
        """Count `count` outcomes (`hit`: the prediction was right) for `version`, persisted."""
        if count < 1:
            raise ConfigurationError(f"count must be at least 1, got {count}")
        record = self.registry.get(version)
        if not record.is_for(self.name, self.pair):
            raise ConfigurationError(
                f"model {version} is a {record.name} model of {_pair_text(record.pair)}, not of "
                f"this A/B test ({self.name} {_pair_text(self.pair)})"
            )
        with self.registry.locked():
            outcomes = self._read_outcomes()
            counts = outcomes.setdefault(version, {"n": 0, "hits": 0})
            counts["n"] += count
            counts["hits"] += count if hit else 0
            atomic_write_json(
                self.outcomes_file,
                {"schema_version": OUTCOMES_SCHEMA_VERSION, "outcomes": outcomes},
            )

    def counts(self, version: str) -> tuple[int, int]:
        """(hits, n) recorded so far for `version`."""
        counts = self._read_outcomes().get(version, {"n": 0, "hits": 0})
        return counts["hits"], counts["n"]

    # --- Decisions --------------------------------------------------------------------------------
    def evaluate(self) -> PromotionDecision:
        """Compare the hit rates of champion and challenger with a two-proportion z-test."""
        champion = self._champion()
        challenger = self.registry.get_canary(self.name, self.pair)
        hits_a, n_a = self.counts(champion.version)
        rate_a = hits_a / n_a if n_a else math.nan
        if challenger is None:
            return PromotionDecision(
                PromotionAction.CONTINUE,
                f"no challenger for {self.name} {_pair_text(self.pair)}",
                0.0,
                1.0,
                n_a,
                0,
                rate_a,
                math.nan,
                champion.version,
                None,
            )
        hits_b, n_b = self.counts(challenger.version)
        rate_b = hits_b / n_b if n_b else math.nan

        def decide(action: PromotionAction, reason: str, z: float, p: float) -> PromotionDecision:
            return PromotionDecision(
                action, reason, z, p, n_a, n_b, rate_a, rate_b, champion.version, challenger.version
            )

        if n_a < self.min_samples or n_b < self.min_samples:
            return decide(
                PromotionAction.CONTINUE,
                f"need {self.min_samples} outcomes per model, have {n_a} (champion) and "
                f"{n_b} (challenger)",
                0.0,
                1.0,
            )
        z, p = two_proportion_ztest(hits_a, n_a, hits_b, n_b)
        rates = f"challenger {rate_b:.1%} vs champion {rate_a:.1%} (z={z:.2f}, p={p:.3g})"
        if rate_b > rate_a and p < self.alpha:
            return decide(
                PromotionAction.PROMOTE, f"challenger significantly better: {rates}", z, p
            )
        if rate_a - rate_b > self.rollback_margin:
            return decide(
                PromotionAction.ROLLBACK,
                f"challenger more than {self.rollback_margin:.1%} worse: {rates}",
                z,
                p,
            )
        if rate_b < rate_a and p < self.alpha:
            return decide(
                PromotionAction.ROLLBACK, f"challenger significantly worse: {rates}", z, p
            )
        return decide(PromotionAction.CONTINUE, f"no significant difference yet: {rates}", z, p)

    def apply(self, decision: PromotionDecision) -> ABState:
        """Carry out `decision` in the registry and return the new champion and challenger.

        Refuses (ConfigurationError) a decision about a challenger that is no longer the canary.
        """
        if decision.action is not PromotionAction.CONTINUE:
            current = self.registry.get_canary(self.name, self.pair)
            if current is None or current.version != decision.challenger_version:
                raise ConfigurationError(
                    f"stale A/B decision: it concerns {decision.challenger_version}, the canary "
                    f"now is {current.version if current else 'none'}; evaluate again"
                )
            if decision.action is PromotionAction.PROMOTE:
                self.registry.promote(current.version)
            else:
                self.registry.rollback(self.name, self.pair)
        _log.info(
            "A/B %s %s: %s (%s)",
            self.name,
            _pair_text(self.pair),
            decision.action.value,
            decision.reason,
            extra={
                "ab_action": decision.action.value,
                "model_version": decision.challenger_version,
            },
        )
        return self.state()
