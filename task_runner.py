"""The one task runner for `scan` and `sweep`: run pure tasks in-process, on local processes
(joblib, loky) or on a Dask cluster, and get the same results in the same order.

Invariants:
- **Order.** `map` returns results in the order of its tasks, whatever order they finish in.
- **Backend-independence.** Tasks are pure, deterministic, top-level functions; a runner only
  calls them and returns their results untouched (it never reduces, sums or sorts), so results are
  bit-for-bit equal with every backend and worker count.
- **One key per computation.** `Task.key` is the SHA-256 of the function's qualified name, a code
  version string and the canonical bytes of the arguments (`canonical_bytes`: not pickle, whose
  bytes may differ between processes). Tasks with equal keys run once per `map`.
- **Shared inputs travel once per worker.** `shared` (the price table) is sent once to each worker
  process, never with each task; a task then receives it as its first argument: `fn(shared, *args)`
  where `shared` is a dict of the same names and values; without `shared`, `fn(*args)`.
  Dask: a worker plugin carrying the mapping, unpickled once by every worker process (restarted
  ones too) and dropped after the map. joblib: the parent pickles the mapping once to a temp file;
  each worker process loads it on its first task and keeps it in a module-level cache keyed by the
  file's SHA-256.
- **Resumable.** `cached_map` stores each result as soon as it arrives (one file per key, written
  atomically) and, on the next run, runs only the tasks without a stored result. A stored result is
  keyed by the task's key and the content of `shared`, so changed prices never reuse old results.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin

from atomic_io import atomic_write_bytes
from child_processes import exit_with_parent
from error_handling import ConfigurationError

if TYPE_CHECKING:
    import distributed

#: Environment variable naming the Dask scheduler (`tcp://HOST:8786`) when no address is given.
ENV_SCHEDULER = "DASK_SCHEDULER_ADDRESS"
#: Seconds to wait for a Dask scheduler before refusing with a ConfigurationError.
CONNECT_TIMEOUT_S = 3.0
#: Pickle protocol of the cache files and of the joblib shared file.
PICKLE_PROTOCOL = 5


# --- Tasks and their keys -------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    """One unit of work: a pure, top-level (picklable) function and its arguments; `key` is the
    SHA-256 of (function's qualified name, a code version string, the arguments' canonical
    bytes)."""

    fn: Callable[..., Any]
    args: tuple
    key: str


def task(fn: Callable[..., Any], *args: Any, version: str = "1") -> Task:
    """A Task calling `fn(*args)` (or `fn(shared, *args)` under a `shared` mapping). Bump `version`
    when `fn`'s code changes its results, so cached results of the old code are not reused.
    Refuses (TypeError) a lambda, a nested function, or an argument without a canonical encoding."""
    name = function_name(fn)
    # The encoding is prefix-free (tagged, length-prefixed), so the concatenation is unambiguous.
    encoded = canonical_bytes_at((name, str(version)), "task") + canonical_bytes_at(args, "args")
    return Task(fn=fn, args=tuple(args), key=hashlib.sha256(encoded).hexdigest())


def function_name(fn: Callable[..., Any]) -> str:
    """`module.qualname` of a top-level function; TypeError for what a worker could not import."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not module or not qualname:
        raise TypeError(
            f"task function {fn!r} has no module and qualified name (a functools.partial or a "
            "callable object?); pass a top-level function and its arguments"
        )
    if "<lambda>" in qualname or "<locals>" in qualname:
        raise TypeError(
            f"task function {module}.{qualname} is a lambda or defined inside a function; worker "
            "processes cannot import it: define it at the top level of a module"
        )
    return f"{module}.{qualname}"


def canonical_bytes(obj: Any) -> bytes:
    """Bytes that depend only on the value of `obj`, equal across processes, runs and hash seeds.

    Encoding (tagged, length-prefixed, so no two values share bytes): None, bool, int (decimal),
    float (`float.hex`, exact), str (UTF-8), bytes, tuple and list (kept distinct), dict and set
    (entries sorted by their own encoding, so insertion order does not matter), numpy arrays and
    scalars (dtype, shape, C-order bytes; object arrays by their items), pandas Index, Series and
    DataFrame (dtype, names, index and values), dates and timestamps (type, ISO text, zone),
    enums and dataclasses (class name and value or fields). Anything else is a TypeError."""
    out: list[bytes] = []
    _encode(obj, out, "args")
    return b"".join(out)


def canonical_digest(obj: Any) -> str:
    """Hex SHA-256 of `canonical_bytes(obj)`."""
    return hashlib.sha256(canonical_bytes(obj)).hexdigest()


def _sized(tag: bytes, payload: bytes) -> bytes:
    return tag + str(len(payload)).encode() + b":" + payload


def _class_name(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _encode(obj: Any, out: list[bytes], path: str) -> None:
    import pandas as pd

    if obj is None:
        out.append(b"N")
    elif isinstance(obj, bool):  # before int: bool is an int
        out.append(b"T" if obj else b"F")
    elif isinstance(obj, enum.Enum):  # before int/str: IntEnum and StrEnum are ints and strs
        out.append(_sized(b"e", _class_name(obj).encode()))
        _encode(obj.value, out, f"{path}.value")
    elif isinstance(obj, np.ndarray):
        _encode_array(obj, out, path)
    elif isinstance(obj, np.generic):  # before float: np.float64 is a float
        _encode_array(np.asarray(obj), out, path)
    elif isinstance(obj, int):
        out.append(_sized(b"i", str(int(obj)).encode()))
    elif isinstance(obj, float):
        out.append(_sized(b"f", float(obj).hex().encode()))
    elif isinstance(obj, str):
        out.append(_sized(b"s", obj.encode("utf-8")))
    elif isinstance(obj, bytes | bytearray):
        out.append(_sized(b"b", bytes(obj)))
    elif isinstance(obj, tuple | list):
        out.append(_sized(b"t" if isinstance(obj, tuple) else b"l", b""))
        out.append(str(len(obj)).encode() + b";")
        for i, item in enumerate(obj):
            _encode(item, out, f"{path}[{i}]")
    elif isinstance(obj, dict):
        pairs = sorted(
            (canonical_bytes_at(k, f"{path} key"), canonical_bytes_at(v, f"{path}[{k!r}]"))
            for k, v in obj.items()
        )
        out.append(_sized(b"d", str(len(pairs)).encode()))
        for k, v in pairs:
            out.append(k + v)
    elif isinstance(obj, set | frozenset):
        items = sorted(canonical_bytes_at(v, f"{path} item") for v in obj)
        out.append(_sized(b"S", str(len(items)).encode()))
        out.extend(items)
    elif isinstance(obj, pd.DataFrame):
        out.append(_sized(b"P", _class_name(obj).encode()))
        _encode_index(obj.columns, out, f"{path}.columns")
        _encode_index(obj.index, out, f"{path}.index")
        for i in range(obj.shape[1]):
            col = obj.iloc[:, i]
            out.append(_sized(b"y", str(col.dtype).encode()))
            _encode_values(col.to_numpy(), out, f"{path}.iloc[:, {i}]")
    elif isinstance(obj, pd.Series):
        out.append(_sized(b"Q", str(obj.dtype).encode()))
        _encode(obj.name, out, f"{path}.name")
        _encode_index(obj.index, out, f"{path}.index")
        _encode_values(obj.to_numpy(), out, path)
    elif isinstance(obj, pd.Index):
        _encode_index(obj, out, path)
    elif isinstance(obj, dt.date | dt.time | dt.timedelta | pd.Timestamp | pd.Timedelta):
        text = obj.isoformat() if hasattr(obj, "isoformat") else repr(obj)
        zone = str(getattr(obj, "tzinfo", None))
        out.append(_sized(b"D", f"{_class_name(obj)}|{text}|{zone}".encode()))
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out.append(_sized(b"c", _class_name(obj).encode()))
        fields = [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)]
        _encode(tuple(fields), out, path)
    else:
        raise TypeError(
            f"task argument {path} of type {_class_name(obj)} has no canonical encoding for its "
            "key; pass plain data (None, bool, int, float, str, bytes, tuple, list, dict, set), "
            "numpy arrays, pandas objects, dates, enums or dataclasses of these, or put a large "
            "input in `shared`"
        )


def canonical_bytes_at(obj: Any, path: str) -> bytes:
    """`canonical_bytes(obj)`, naming `path` in the error."""
    out: list[bytes] = []
    _encode(obj, out, path)
    return b"".join(out)


def _encode_array(arr: np.ndarray, out: list[bytes], path: str) -> None:
    shape = ",".join(str(n) for n in arr.shape)
    out.append(_sized(b"a", f"{arr.dtype.str}|{shape}".encode()))
    if arr.dtype.hasobject:
        _encode(arr.ravel(order="C").tolist(), out, path)
    else:
        out.append(_sized(b"", np.ascontiguousarray(arr).tobytes()))


def _encode_values(values: np.ndarray, out: list[bytes], path: str) -> None:
    _encode_array(np.asarray(values), out, path)


def _encode_index(index: Any, out: list[bytes], path: str) -> None:
    out.append(_sized(b"I", f"{_class_name(index)}|{index.dtype}".encode()))
    _encode(list(index.names), out, f"{path}.names")
    _encode_values(index.to_numpy(), out, path)


# --- Runners --------------------------------------------------------------------------------------
@runtime_checkable
class Runner(Protocol):
    """Runs tasks and returns their results in task order."""

    def map(
        self,
        tasks: Sequence[Task],
        *,
        shared: Mapping[str, Any] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Any]:
        """Results in the order of `tasks`; `progress(done, total)` after each finished task."""
        ...


def _invoke(fn: Callable[..., Any], args: tuple, shared: Mapping[str, Any] | None) -> Any:
    """The one call convention: `fn(shared, *args)` under shared inputs, else `fn(*args)`."""
    return fn(*args) if shared is None else fn(shared, *args)


class _BaseRunner:
    """`map` and `as_completed` over a backend's `_run`; a repeated key runs once."""

    def map(
        self,
        tasks: Sequence[Task],
        *,
        shared: Mapping[str, Any] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Any]:
        """Results in the order of `tasks`; `progress(done, total)` after each finished task."""
        tasks = list(tasks)
        results: list[Any] = [None] * len(tasks)
        arrivals = self.as_completed(tasks, shared=shared)
        for done, (i, value) in enumerate(arrivals, start=1):
            results[i] = value
            if progress is not None:
                progress(done, len(tasks))
        return results

    def as_completed(
        self, tasks: Sequence[Task], *, shared: Mapping[str, Any] | None = None
    ) -> Iterator[tuple[int, Any]]:
        """(index in `tasks`, result) pairs as tasks finish, in finishing order. `cached_map`
        uses it to store each result as soon as it arrives."""
        tasks = list(tasks)
        for t in tasks:
            if not isinstance(t, Task):
                raise TypeError(f"expected Task objects (build them with task()), got {t!r}")
        positions: dict[str, list[int]] = {}
        for i, t in enumerate(tasks):
            positions.setdefault(t.key, []).append(i)
        unique = [tasks[ix[0]] for ix in positions.values()]
        where = list(positions.values())
        if not unique:
            return
        shared_dict = None if shared is None else dict(shared)
        for j, value in self._run(unique, shared_dict):
            for i in where[j]:
                yield i, value

    def _run(
        self, tasks: list[Task], shared: dict[str, Any] | None
    ) -> Iterator[tuple[int, Any]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Release what the runner holds (a Dask client it opened); a no-op for the others."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SerialRunner(_BaseRunner):
    """Runs every task in this process, one after the other (tests and `--jobs 1`)."""

    def _run(self, tasks: list[Task], shared: dict[str, Any] | None) -> Iterator[tuple[int, Any]]:
        for j, t in enumerate(tasks):
            yield j, _invoke(t.fn, t.args, shared)


# A joblib worker process keeps the shared inputs it loaded, by the SHA-256 of their file, so a
# process that runs many tasks of one map reads them once. Only the latest few are kept.
_SHARED_CACHE: dict[str, dict[str, Any]] = {}
_SHARED_CACHE_SIZE = 2


def _load_shared(path: str, digest: str) -> dict[str, Any]:
    """The shared mapping in `path` (pickled by this module's parent process), loaded once per
    worker process."""
    if digest not in _SHARED_CACHE:
        with open(path, "rb") as fh:
            value = pickle.load(fh)  # noqa: S301 - written by our own parent process just now
        while len(_SHARED_CACHE) >= _SHARED_CACHE_SIZE:
            _SHARED_CACHE.pop(next(iter(_SHARED_CACHE)))
        _SHARED_CACHE[digest] = value
    return _SHARED_CACHE[digest]


def _invoke_with_shared_file(
    j: int, fn: Callable[..., Any], args: tuple, shared_ref: tuple[str, str] | None
) -> tuple[int, Any]:
    shared = None if shared_ref is None else _load_shared(*shared_ref)
    return j, _invoke(fn, args, shared)


class LocalRunner(_BaseRunner):
    """Runs tasks on `jobs` local worker processes (joblib, loky backend); -1: every core.
    `shared` is pickled once to a temp file that each worker process loads once (module cache).
    The worker processes end when this process dies, however it dies."""

    def __init__(self, jobs: int = -1) -> None:
        if jobs == 0 or jobs < -1:
            raise ConfigurationError(f"jobs must be -1 (every core) or at least 1, got {jobs}")
        self.jobs = jobs

    def _run(self, tasks: list[Task], shared: dict[str, Any] | None) -> Iterator[tuple[int, Any]]:
        from joblib import Parallel, delayed

        folder = tempfile.mkdtemp(prefix="task-runner-shared-")
        try:
            shared_ref = None
            if shared is not None:
                data = pickle.dumps(shared, protocol=PICKLE_PROTOCOL)
                path = os.path.join(folder, "shared.pkl")
                atomic_write_bytes(path, data, mode=0o600)
                shared_ref = (path, hashlib.sha256(data).hexdigest())
            # Each worker process asks the kernel to end it when this process dies: a killed
            # scan leaves no worker computing for nobody (child_processes).
            parallel = Parallel(
                n_jobs=self.jobs,
                backend="loky",
                return_as="generator_unordered",
                initializer=exit_with_parent,
                initargs=(os.getpid(),),
            )
            calls = (
                delayed(_invoke_with_shared_file)(j, t.fn, t.args, shared_ref)
                for j, t in enumerate(tasks)
            )
            yield from parallel(calls)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


class DaskRunner(_BaseRunner):
    """Runs tasks on a Dask cluster: the scheduler at `address` (`tcp://HOST:8786`, else
    $DASK_SCHEDULER_ADDRESS), or an existing `distributed.Client` (not closed by `close`).
    A task whose worker dies is rescheduled on another worker (Dask's allowed-failures); a
    restarted or new worker receives the shared inputs too (the scheduler keeps the plugin)."""

    def __init__(
        self,
        address: str | None = None,
        *,
        client: distributed.Client | None = None,
        timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        if client is not None:
            self.client, self._owns_client = client, False
            return
        address = address or os.environ.get(ENV_SCHEDULER)
        if not address:
            raise ConfigurationError(
                f"no Dask scheduler: pass --scheduler tcp://HOST:8786 or set {ENV_SCHEDULER}"
            )
        self.client, self._owns_client = _connect(address, timeout_s), True

    def close(self) -> None:
        """Close the client this runner opened (not one it was given)."""
        if self._owns_client:
            self.client.close()

    def _run(self, tasks: list[Task], shared: dict[str, Any] | None) -> Iterator[tuple[int, Any]]:
        import uuid

        from distributed import as_completed

        client = self.client
        run_id = uuid.uuid4().hex
        plugin_name = None
        if shared is not None:
            # A worker plugin, not scattered data: Dask's memory manager may drop a scattered
            # replica that no waiting task needs (later re-sent), and a restarted worker would have
            # to fetch it again; a plugin is unpickled once per worker process, on every current
            # and future (restarted) worker, and the scheduler keeps its bytes.
            plugin_name = f"task-runner-shared-{run_id}"
            try:
                client.register_plugin(_SharedInputs(plugin_name, shared), name=plugin_name)
            except Exception as exc:
                _raise_if_worker_cannot_import(exc, client)
                raise
        futures = [
            client.submit(
                _invoke_with_worker_shared,
                t.fn,
                t.args,
                plugin_name,
                key=f"{getattr(t.fn, '__name__', 'task')}-{t.key[:16]}-{run_id[:8]}",
                pure=False,
            )
            for t in tasks
        ]
        index = {f.key: j for j, f in enumerate(futures)}
        try:
            for future in as_completed(futures, loop=client.loop):
                try:
                    value = future.result()
                except Exception as exc:
                    _raise_if_worker_cannot_import(exc, client)
                    raise
                yield index[future.key], value
        finally:
            client.cancel([f for f in futures if not f.done()])
            del futures
            if plugin_name is not None:
                client.unregister_worker_plugin(plugin_name)


#: How Dask reports a worker's failed import: the exception itself (a task's result) or, from a
#: plugin broadcast, a plain Exception whose text is its repr (`ModuleNotFoundError("No ...")`).
_IMPORT_FAILURE = re.compile(r"\b(ModuleNotFoundError|ImportError)\b")
_MISSING_MODULE = re.compile(r"No module named '([^']+)'")


def _raise_if_worker_cannot_import(exc: BaseException, client: distributed.Client) -> None:
    """A worker that cannot import a module of a task (typically one started outside this project's
    venv, or from a venv without the project installed): a ConfigurationError that names the
    module and the fix, instead of Dask's bare exception. Anything else: nothing."""
    text = str(exc)
    if not (isinstance(exc, ImportError) or _IMPORT_FAILURE.search(text)):
        return
    found = _MISSING_MODULE.search(text)
    what = f"the module {found.group(1)!r}" if found else "a module a task needs"
    address = getattr(client.scheduler, "address", None) or "tcp://SCHEDULER_HOST:8786"
    detail = text.strip().splitlines()[-1] if text.strip() else type(exc).__name__
    raise ConfigurationError(
        f"a Dask worker cannot import {what} ({detail}); run ./install.sh on each worker "
        "machine (it installs the project's modules into .venv; again after a pull that adds "
        f"one) and start the workers from that venv: `.venv/bin/dask worker {address}` "
        "(DEPLOYMENT.md, Scans on a Dask cluster)"
    ) from None


# A Dask worker process's shared inputs, by plugin name (one per map), set by _SharedInputs.
_WORKER_SHARED: dict[str, dict[str, Any]] = {}


class _SharedInputs(WorkerPlugin):
    """A Dask worker plugin carrying one map's shared inputs to every worker process once."""

    def __init__(self, name: str, shared: dict[str, Any]) -> None:
        self.name, self.shared = name, shared

    def setup(self, worker: Any) -> None:
        _WORKER_SHARED[self.name] = self.shared

    def teardown(self, worker: Any) -> None:
        _WORKER_SHARED.pop(self.name, None)


def _invoke_with_worker_shared(fn: Callable[..., Any], args: tuple, name: str | None) -> Any:
    return _invoke(fn, args, None if name is None else _WORKER_SHARED[name])


#: A scheduler address: scheme://host:port (Dask's own schemes).
_ADDRESS = re.compile(r"^(tcp|tls|ucx|ws|wss)://[^\s/:]+(:\d{1,5})$|^inproc://\S+$")


def _connect(address: str, timeout_s: float) -> distributed.Client:
    import dask
    from distributed import Client

    match = _ADDRESS.match(address.strip())
    if not match or (match.group(2) and not 1 <= int(match.group(2)[1:]) <= 65535):
        # Checked before a Client exists: a half-made one fails again, noisily, at exit.
        raise ConfigurationError(
            f"{address!r} is not a Dask scheduler address; use tcp://HOST:PORT with a port in "
            "1-65535 (e.g. tcp://10.0.0.5:8786)"
        )
    try:
        with dask.config.set({"distributed.comm.timeouts.connect": f"{timeout_s}s"}):
            return Client(address, timeout=timeout_s, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ConfigurationError(
            f"cannot reach the Dask scheduler at {address} within {timeout_s:g} s ({exc}); start "
            f"one with `dask scheduler` and `dask worker {address}`, or run without --scheduler"
        ) from None


def runner_from_options(
    jobs: int | None, scheduler: str | None
) -> SerialRunner | LocalRunner | DaskRunner:
    """The CLI's choice: a scheduler address (or $DASK_SCHEDULER_ADDRESS) -> DaskRunner (the
    cluster's workers decide, `jobs` is ignored); else `jobs` 1 -> SerialRunner; None or -1 -> every
    core; N -> N local processes. ConfigurationError when the scheduler cannot be reached. Use it in
    a `with` block: a Dask client it opens is closed at the end."""
    address = scheduler or os.environ.get(ENV_SCHEDULER)
    if address:
        return DaskRunner(address)
    if jobs == 1:
        return SerialRunner()
    return LocalRunner(-1 if jobs is None else jobs)


# --- Resumable runs -------------------------------------------------------------------------------
_MISSING = object()


class TaskCache:
    """Finished tasks' results under `folder` (e.g. <home>/cache/tasks), one pickle per key
    (`<key>.pkl`, written atomically). Trusted: the folder is the user's own, and loading a
    pickle runs code. A file that cannot be read counts as missing and is recomputed."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        """The file of `key`."""
        return self.folder / f"{key}.pkl"

    def get(self, key: str, default: Any = None) -> Any:
        """The stored result of `key`, or `default`."""
        try:
            data = self.path(key).read_bytes()
        except FileNotFoundError:
            return default
        try:
            return pickle.loads(data)  # noqa: S301 - our own cache folder (see the class docstring)
        except Exception:  # a file from an incompatible version: recompute it
            return default

    def put(self, key: str, value: Any) -> None:
        """Store `value` as the result of `key` (atomic: old file or new, never partial)."""
        atomic_write_bytes(self.path(key), pickle.dumps(value, protocol=PICKLE_PROTOCOL))

    def __contains__(self, key: str) -> bool:
        return self.path(key).exists()

    def keys(self) -> list[str]:
        """Keys with a stored result, sorted."""
        return sorted(p.stem for p in self.folder.glob("*.pkl"))

    def __len__(self) -> int:
        return len(self.keys())


def cache_key(task_key: str, shared_digest: str | None) -> str:
    """The key a result is stored under: the task's key, with `canonical_digest(shared)` if the
    tasks take shared inputs."""
    if shared_digest is None:
        return task_key
    return hashlib.sha256(f"{task_key}|{shared_digest}".encode()).hexdigest()


def cached_map(
    runner: Runner,
    tasks: Sequence[Task],
    cache: TaskCache | None,
    *,
    shared: Mapping[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Any]:
    """`runner.map` that returns stored results without running their tasks and stores each new
    result as soon as it arrives, so an interrupted run resumes where it stopped. `shared` must
    have a canonical encoding (its content is part of each stored result's key)."""
    tasks = list(tasks)
    if cache is None:
        return runner.map(tasks, shared=shared, progress=progress)
    shared_digest = None if shared is None else canonical_digest(dict(shared))
    keys = [cache_key(t.key, shared_digest) for t in tasks]
    results: list[Any] = [cache.get(k, _MISSING) for k in keys]
    todo = [i for i, r in enumerate(results) if r is _MISSING]
    done = len(tasks) - len(todo)
    if progress is not None and done:
        progress(done, len(tasks))
    if not todo:
        return results
    todo_tasks = [tasks[i] for i in todo]
    if isinstance(runner, _BaseRunner):
        arrivals: Iterator[tuple[int, Any]] = runner.as_completed(todo_tasks, shared=shared)
    else:  # a foreign Runner: results arrive (and are stored) together at the end
        arrivals = iter(enumerate(runner.map(todo_tasks, shared=shared)))
    for j, value in arrivals:
        i = todo[j]
        cache.put(keys[i], value)
        results[i] = value
        done += 1
        if progress is not None:
            progress(done, len(tasks))
    return results
