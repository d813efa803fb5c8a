"""Encrypted credential store: broker keys and tokens in `<TRADING_HOME>/credentials.enc`.

Why: API keys in `.env` are plaintext on disk and in backups. This store keeps `name -> secret`
encrypted with AES-256-GCM under a key derived from a master password (scrypt), and hands the
values to other modules through `lookup` (the environment still wins, so CI and containers need
no store).

Invariants:
- The file never holds a secret, a name or the master password in any encoding: the whole
  `{name: value}` dict is one ciphertext; the header (version, kdf, kdf_params, salt) is
  authenticated as associated data, so changing any byte of the file fails decryption.
- A new random 96-bit nonce on every write (never a nonce twice under one key); a new random salt,
  hence a new key, on `change_password`.
- Writes are atomic (`atomic_io`: temp file created 0600 before any byte is written, fsync,
  rename, fsync of the directory); the file is always mode 0600.
- No plaintext fallback: without `cryptography` every operation raises CredentialError.
- Every decrypted value and the master password are registered with the log redaction.
- Every change (set, delete, change-password, the first write of a new store) is one critical
  section under an inter-process lock on `credentials.enc.lock` (empty, mode 0600): inside it the
  file is read and decrypted again and the change is applied to what is on disk, so concurrent
  writers never lose each other's entries. A lock not obtained within `lock_timeout_s` raises
  CredentialError naming the lock file. Readers take no lock: the file is replaced atomically.

A foundation module: imports only the standard library and `constants`, `error_handling`,
`atomic_io` at import time (`cryptography` and `filelock` inside functions), so `main.py --help`
stays fast.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import getpass
import importlib
import json
import logging
import os
import re
import stat
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from atomic_io import atomic_write_bytes
from constants import paths
from error_handling import CredentialError

__all__ = [
    "ENV_MASTER_PASSWORD",
    "ENV_NEW_MASTER_PASSWORD",
    "LOCK_TIMEOUT_S",
    "MIN_PASSWORD_LENGTH",
    "STORE_VERSION",
    "CredentialStore",
    "ScryptParams",
    "lookup",
    "master_password",
    "register_cli",
]

ENV_MASTER_PASSWORD = "TRADING_MASTER_PASSWORD"  # noqa: S105 (a variable name, not a password)
#: Read by `credentials change-password` for the new password (else it prompts).
ENV_NEW_MASTER_PASSWORD = "TRADING_NEW_MASTER_PASSWORD"  # noqa: S105
STORE_VERSION = 1
KDF_NAME = "scrypt"
#: Shortest master password accepted when a store is created or its password changed.
MIN_PASSWORD_LENGTH = 12
SALT_BYTES = 16
NONCE_BYTES = 12
_GCM_TAG_BYTES = 16
#: Stored names: what an environment variable name looks like, plus '.' and '-'.
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
#: File mode of the store: owner read/write only.
STORE_MODE = 0o600
#: Seconds a change of the store waits for another process's change to finish before it fails.
LOCK_TIMEOUT_S = 10.0

_SET_HINT = "python main.py credentials set NAME"
_LIST_HINT = "python main.py credentials list"
_MISSING_CRYPTOGRAPHY = (
    "the credential store needs the `cryptography` package: run ./install.sh (any profile "
    "includes it) or `pip install -c constraints.txt cryptography`; "
    "`python main.py check` shows what is missing"
)

_CRYPTOGRAPHY_MODULES = (
    "cryptography.exceptions",
    "cryptography.hazmat.primitives.ciphers.aead",
    "cryptography.hazmat.primitives.kdf.scrypt",
)

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScryptParams:
    """scrypt cost: `n` CPU/memory cost (power of 2), `r` block size, `p` parallelism; `length`
    is the derived key in bytes (32: AES-256). Memory used is about 128 * n * r bytes."""

    n: int = 2**15
    r: int = 8
    p: int = 1
    length: int = 32

    def check(self) -> str | None:
        """Why a file's parameters are refused (they must not make us allocate GiBs), or None."""
        if any(type(v) is not int for v in (self.n, self.r, self.p, self.length)):
            return "kdf_params must be integers"
        if not (2**14 <= self.n <= 2**20 and self.n & (self.n - 1) == 0):
            return f"scrypt n={self.n} is not a power of 2 between 2**14 and 2**20"
        if not (1 <= self.r <= 32 and 1 <= self.p <= 16) or 128 * self.n * self.r > 2**30:
            return f"scrypt r={self.r}, p={self.p} are out of range"
        if self.length != 32:
            return f"key length {self.length} is not 32 bytes (AES-256)"
        return None


#: What new stores and `change_password` use (about 0.1 s and 32 MiB per derivation).
DEFAULT_KDF_PARAMS = ScryptParams()


# --- cryptography, imported lazily ----------------------------------------------------------------
def _require_cryptography() -> None:
    """Raise CredentialError unless `cryptography` (AES-GCM and scrypt) can be imported."""
    try:
        for module in _CRYPTOGRAPHY_MODULES:
            importlib.import_module(module)
    except ImportError as exc:
        raise CredentialError(f"{_MISSING_CRYPTOGRAPHY} (import failed: {exc})") from exc


def _derive_key(password: str, salt: bytes, params: ScryptParams) -> bytes:
    _require_cryptography()
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    try:
        kdf = Scrypt(salt=salt, length=params.length, n=params.n, r=params.r, p=params.p)
        return kdf.derive(password.encode("utf-8"))
    except UnsupportedAlgorithm as exc:
        raise CredentialError(
            "this build of `cryptography`/OpenSSL has no scrypt, which the credential store "
            "needs: reinstall with ./install.sh"
        ) from exc


# --- The file -------------------------------------------------------------------------------------
def _aad(params: ScryptParams, salt: bytes) -> bytes:
    """Canonical JSON of the header: authenticated by GCM, so no header field can change."""
    header = {
        "version": STORE_VERSION,
        "kdf": KDF_NAME,
        "kdf_params": asdict(params),
        "salt": _b64(salt),
    }
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True)
class _Envelope:
    """One store file: the authenticated header, the nonce and the sealed `{name: value}` JSON."""

    params: ScryptParams
    salt: bytes
    nonce: bytes
    ciphertext: bytes

    def to_bytes(self) -> bytes:
        document = {
            "version": STORE_VERSION,
            "kdf": KDF_NAME,
            "kdf_params": asdict(self.params),
            "salt": _b64(self.salt),
            "nonce": _b64(self.nonce),
            "ciphertext": _b64(self.ciphertext),
        }
        return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _damaged(path: Path, why: str) -> CredentialError:
    return CredentialError(
        f"{path} is not a credential store or is damaged ({why}): restore it from a backup, or "
        f"move it away and store the secrets again with `{_SET_HINT}`"
    )


def _parse(path: Path, raw: bytes) -> _Envelope:
    """The envelope in `raw`; CredentialError naming what is wrong when it is not one."""
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _damaged(path, "not JSON") from None
    if not isinstance(document, dict):
        raise _damaged(path, "not a JSON object")
    version = document.get("version")
    if type(version) is not int or version != STORE_VERSION:
        raise _damaged(path, f"format version {version!r}; this program reads {STORE_VERSION}")
    if document.get("kdf") != KDF_NAME:
        raise _damaged(path, f"key derivation {document.get('kdf')!r}; expected {KDF_NAME!r}")
    raw_params = document.get("kdf_params")
    if not isinstance(raw_params, dict) or set(raw_params) != {"n", "r", "p", "length"}:
        raise _damaged(path, "kdf_params must have exactly n, r, p and length")
    params = ScryptParams(**raw_params)
    if problem := params.check():
        raise _damaged(path, problem)
    fields: dict[str, bytes] = {}
    for field, size in (("salt", SALT_BYTES), ("nonce", NONCE_BYTES), ("ciphertext", None)):
        text = document.get(field)
        if not isinstance(text, str):
            raise _damaged(path, f"no {field}")
        try:
            fields[field] = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise _damaged(path, f"{field} is not base64") from None
        if size is not None and len(fields[field]) != size:
            raise _damaged(path, f"{field} is not {size} bytes")
    if len(fields["ciphertext"]) < _GCM_TAG_BYTES:
        raise _damaged(path, "ciphertext is too short")
    return _Envelope(params, fields["salt"], fields["nonce"], fields["ciphertext"])


def _register_secrets(*values: str) -> None:
    """Have every log handler redact these values from now on."""
    from logging_config import RedactingFilter  # lazily: keeps this module's import light

    for value in values:
        RedactingFilter.add_secret(value)


def _validate_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise CredentialError(
            f"invalid credential name {name!r}: use 1-64 characters, a letter or '_' first, then "
            "letters, digits, '_', '.' or '-' (e.g. ALPACA_API_KEY)"
        )
    return name


# --- The store ------------------------------------------------------------------------------------
class _WrongPassword(CredentialError):
    """The file is a store, but this password's key does not decrypt it."""


class CredentialStore:
    """AES-256-GCM encrypted name -> secret store in one file.

    `CredentialStore(path, password)` is a new, empty store (nothing read or written); `open`
    reads an existing one. Every change takes the lock file, re-reads the file, applies the change
    to what it holds and rewrites the whole file atomically with a new nonce. `lock_timeout_s`:
    seconds a change waits for another process's change before it raises CredentialError.
    """

    def __init__(
        self, path: Path, password: str, *, lock_timeout_s: float = LOCK_TIMEOUT_S
    ) -> None:
        _require_cryptography()
        if not isinstance(password, str) or not password:
            raise CredentialError("the master password is empty")
        self._path = Path(path)
        self._password = password
        self._lock_timeout_s = float(lock_timeout_s)
        self._params = DEFAULT_KDF_PARAMS
        self._salt = os.urandom(SALT_BYTES)
        self._key: bytes | None = None  # derived on first use: scrypt costs ~0.1 s
        self._entries: dict[str, str] = {}
        self._on_disk = False  # False: a new store, which must not overwrite an existing file
        _register_secrets(password)

    def __repr__(self) -> str:  # never the password or a value
        return f"CredentialStore({str(self._path)!r}, {len(self._entries)} names)"

    @classmethod
    def open(
        cls,
        path: Path,
        password: str,
        *,
        create: bool = False,
        lock_timeout_s: float = LOCK_TIMEOUT_S,
    ) -> CredentialStore:
        """The store at `path` decrypted with `password`; with `create`, an empty store when there
        is no file yet (nothing is written until the first `set`)."""
        store = cls(path, password, lock_timeout_s=lock_timeout_s)
        try:
            raw = store._path.read_bytes()
        except FileNotFoundError:
            if create:
                return store
            raise CredentialError(
                f"no credential store at {store._path}: create it by storing a first secret "
                f"with `{_SET_HINT}`"
            ) from None
        except OSError as exc:
            raise CredentialError(f"cannot read {store._path}: {exc.strerror}") from exc
        store._load(raw)
        return store

    @property
    def path(self) -> Path:
        """The store's file."""
        return self._path

    @property
    def lock_path(self) -> Path:
        """The lock file every change holds: the store's name plus `.lock`, in its directory."""
        return self._path.with_name(self._path.name + ".lock")

    def names(self) -> list[str]:
        """Stored names, sorted."""
        return sorted(self._entries)

    def get(self, name: str) -> str:
        """The secret stored under `name`."""
        try:
            return self._entries[_validate_name(name)]
        except KeyError:
            raise CredentialError(
                f"no credential named {name!r} in {self._path}: `{_LIST_HINT}` shows the "
                f"stored names, `{_SET_HINT}` adds one"
            ) from None

    def set(self, name: str, value: str) -> None:
        """Store `value` under `name` (replacing any previous value) and write the file."""
        _validate_name(name)
        if not isinstance(value, str) or not value:
            raise CredentialError(f"the value for {name} is empty: nothing stored")
        _register_secrets(value)
        with self._locked():
            self._reload()
            self._write({**self._entries, name: value}, self._salt, self._params, self._password)

    def delete(self, name: str) -> None:
        """Remove `name` and write the file."""
        _validate_name(name)
        with self._locked():
            self._reload()
            if name not in self._entries:
                raise CredentialError(
                    f"no credential named {name!r} in {self._path}: `{_LIST_HINT}` shows the "
                    "stored names"
                )
            entries = {k: v for k, v in self._entries.items() if k != name}
            self._write(entries, self._salt, self._params, self._password)

    def change_password(self, new_password: str) -> None:
        """Re-encrypt everything under `new_password` with a new random salt (so a new key)."""
        if not isinstance(new_password, str) or not new_password:
            raise CredentialError("the new master password is empty")
        _register_secrets(new_password)
        with self._locked():
            self._reload()
            self._write(self._entries, os.urandom(SALT_BYTES), DEFAULT_KDF_PARAMS, new_password)

    # --- internals --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the inter-process lock on `lock_path` for one read-modify-write of the file."""
        import filelock  # lazily: keeps this module's import light

        lock = filelock.FileLock(self.lock_path, timeout=self._lock_timeout_s, mode=STORE_MODE)
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except filelock.Timeout:
            raise CredentialError(
                f"could not lock {self.lock_path} within {self._lock_timeout_s:g} s: another "
                f"process is changing {self._path} (or hung holding the lock); try again when it "
                "has finished"
            ) from None
        except OSError as exc:
            raise CredentialError(f"cannot lock {self.lock_path}: {exc.strerror or exc}") from exc
        try:
            yield
        finally:
            lock.release()

    def _reload(self) -> None:
        """Under the lock: make the file's current content the base of the change, so a change
        another process wrote since `open` is kept. No file: the in-memory entries are the base."""
        try:
            raw = self._path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise CredentialError(f"cannot read {self._path}: {exc.strerror}") from exc
        if self._on_disk:
            self._load(raw)
            return
        try:  # a new store, and another process created the file since: join it if ours opens it
            self._load(raw)
        except _WrongPassword:
            raise CredentialError(
                f"{self._path} already exists: open it with its master password instead of "
                "creating a new store over it"
            ) from None

    def _load(self, raw: bytes) -> None:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        envelope = _parse(self._path, raw)
        key = self._key_for(envelope.salt, envelope.params, self._password)
        try:
            aad = _aad(envelope.params, envelope.salt)
            plaintext = AESGCM(key).decrypt(envelope.nonce, envelope.ciphertext, aad)
        except InvalidTag:
            raise _WrongPassword(
                f"cannot decrypt {self._path}: wrong master password or the file was modified"
            ) from None
        try:
            entries = json.loads(plaintext.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _damaged(self._path, "the decrypted content is not JSON") from None
        if not isinstance(entries, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in entries.items()
        ):
            raise _damaged(self._path, "the decrypted content is not a name -> secret map")
        _register_secrets(*entries.values())
        self._warn_if_readable_by_others()
        self._params, self._salt, self._key = envelope.params, envelope.salt, key
        self._entries, self._on_disk = entries, True

    def _write(
        self, entries: dict[str, str], salt: bytes, params: ScryptParams, password: str
    ) -> None:
        """Seal `entries` and replace the file; the in-memory state changes only on success."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if not self._on_disk and self._path.exists():
            raise CredentialError(
                f"{self._path} already exists: open it with its master password instead of "
                "creating a new store over it"
            )
        key = self._key_for(salt, params, password)
        plaintext = json.dumps(entries, sort_keys=True, ensure_ascii=False).encode("utf-8")
        nonce = os.urandom(NONCE_BYTES)  # fresh for every write: GCM must never reuse one
        sealed = AESGCM(key).encrypt(nonce, plaintext, _aad(params, salt))
        envelope = _Envelope(params, salt, nonce, sealed)
        try:
            atomic_write_bytes(self._path, envelope.to_bytes(), mode=STORE_MODE)
        except OSError as exc:
            raise CredentialError(f"cannot write {self._path}: {exc.strerror or exc}") from exc
        self._entries, self._salt, self._params = dict(entries), salt, params
        self._password, self._key, self._on_disk = password, key, True

    def _key_for(self, salt: bytes, params: ScryptParams, password: str) -> bytes:
        """The cached key when nothing it depends on changed, else a fresh derivation."""
        if self._key is not None and (salt, params, password) == (
            self._salt,
            self._params,
            self._password,
        ):
            return self._key
        return _derive_key(password, salt, params)

    def _warn_if_readable_by_others(self) -> None:
        try:
            mode = stat.S_IMODE(self._path.stat().st_mode)
        except OSError:
            return
        if mode & 0o077:
            _log.warning(
                "%s has mode %o: other users may read it; run `chmod 600 %s`",
                self._path,
                mode,
                self._path,
            )


# --- Passwords and look-ups -----------------------------------------------------------------------
def _is_tty(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _ask_password(
    env_var: str,
    what: str,
    *,
    confirm: bool,
    environ: Mapping[str, str] | None,
    stdin: Any,
    prompt: Callable[[str], str],
) -> str:
    env = os.environ if environ is None else environ
    password = env.get(env_var) or ""
    if not password:
        if not _is_tty(sys.stdin if stdin is None else stdin):
            raise CredentialError(
                f"no {what}: set {env_var} or run in a terminal to be asked for it"
            )
        at_least = f" (at least {MIN_PASSWORD_LENGTH} characters)" if confirm else ""
        password = prompt(f"{what.capitalize()}{at_least}: ")
        if confirm and password and prompt(f"Repeat the {what}: ") != password:
            raise CredentialError(f"the two {what}s differ: nothing changed")
    if not password:
        raise CredentialError(f"the {what} is empty")
    if confirm and len(password) < MIN_PASSWORD_LENGTH:
        raise CredentialError(
            f"the {what} is {len(password)} characters; use at least {MIN_PASSWORD_LENGTH} "
            "(a passphrase of several words is easy to type and hard to guess)"
        )
    _register_secrets(password)
    return password


def master_password(
    *,
    confirm: bool = False,
    environ: Mapping[str, str] | None = None,
    stdin: IO[str] | None = None,
    prompt: Callable[[str], str] = getpass.getpass,
) -> str:
    """The master password: TRADING_MASTER_PASSWORD when set, else asked at the terminal.

    `confirm` (creating a store): asked twice, and at least MIN_PASSWORD_LENGTH characters.
    Without the variable and without a terminal on `stdin` (default sys.stdin) it raises.
    """
    return _ask_password(
        ENV_MASTER_PASSWORD,
        "master password",
        confirm=confirm,
        environ=environ,
        stdin=stdin,
        prompt=prompt,
    )


def lookup(
    name: str,
    *,
    home: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """The secret `name` for other modules (broker keys); never prompts.

    The environment variable `name` wins when set; else the store under `home` (default
    `TRADING_HOME`) when it exists and TRADING_MASTER_PASSWORD is set; else None. A store that
    exists but cannot be opened raises CredentialError rather than silently answering None.
    """
    env = os.environ if environ is None else environ
    if value := env.get(_validate_name(name)):
        return value
    path = paths(home).credentials_file
    password = env.get(ENV_MASTER_PASSWORD)
    if not password or not path.exists():
        return None
    store = CredentialStore.open(path, password)
    return store.get(name) if name in store.names() else None


# --- Command line ---------------------------------------------------------------------------------
_DESCRIPTION = "\n\n".join(
    textwrap.fill(paragraph, 96)
    for paragraph in (
        "Keep broker keys and other secrets encrypted (AES-256-GCM, key derived from a master "
        "password with scrypt) in $TRADING_HOME/credentials.enc, mode 600, instead of in "
        "plaintext in .env.",
        f"The master password comes from {ENV_MASTER_PASSWORD}, or is asked for at a terminal "
        f"(twice, and at least {MIN_PASSWORD_LENGTH} characters, when the store is created). A "
        "value is never taken from the command line, where it would stay in the shell history: "
        "`set` asks for it hidden at a terminal, or reads one line from stdin. `change-password` "
        f"takes the new password from {ENV_NEW_MASTER_PASSWORD} or asks for it twice.",
        f"The application reads a stored secret only when {ENV_MASTER_PASSWORD} is set; an "
        "environment variable of the same name (ALPACA_API_KEY) wins over the store.",
    )
)
_EPILOG = f"""\
examples:
  python main.py credentials set ALPACA_API_KEY     asks for the master password and the value
  {ENV_MASTER_PASSWORD}=... python main.py credentials set ALPACA_API_KEY
  echo "$KEY" | python main.py credentials set ALPACA_SECRET_KEY
  python main.py credentials list                   names only, never values
  python main.py credentials delete ALPACA_API_KEY
  python main.py credentials change-password        then update {ENV_MASTER_PASSWORD}

a forgotten master password cannot be recovered: delete credentials.enc and store the keys again.
"""
_ACTIONS = ("set", "list", "delete", "change-password")


def register_cli(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add the `credentials` command to main.py's sub-parsers."""
    parser = commands.add_parser(
        "credentials",
        parents=[common],
        help="store broker keys encrypted: set, list, delete, change-password",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "action",
        choices=_ACTIONS,
        help="set NAME: store a value; list: stored names; delete NAME; change-password",
    )
    parser.add_argument(
        "name", nargs="?", metavar="NAME", help="credential name for set/delete (ALPACA_API_KEY)"
    )

    def run(args: argparse.Namespace) -> int:
        needs_name = args.action in ("set", "delete")
        if needs_name and args.name is None:
            parser.error(f"`credentials {args.action}` needs a NAME, e.g. ALPACA_API_KEY")
        if not needs_name and args.name is not None:
            parser.error(f"`credentials {args.action}` takes no NAME")
        return _run_action(args.action, args.name, paths().credentials_file)

    parser.set_defaults(func=run)


def _run_action(action: str, name: str | None, path: Path) -> int:
    if action == "set":
        assert name is not None  # the parser checked it
        _validate_name(name)
        creating = not path.exists()
        store = CredentialStore.open(path, master_password(confirm=creating), create=creating)
        value = _read_value(name, sys.stdin)
        store.set(name, value)
        _log.info("stored credential %s in %s", name, path)
        print(f"stored {name} in {path}")
    elif action == "list":
        names = CredentialStore.open(path, master_password()).names() if path.exists() else []
        print("\n".join(names) if names else "(no credentials stored)")
    elif action == "delete":
        assert name is not None
        CredentialStore.open(path, master_password()).delete(name)
        _log.info("deleted credential %s from %s", name, path)
        print(f"deleted {name}")
    else:  # change-password
        store = CredentialStore.open(path, master_password())
        new_password = _ask_password(
            ENV_NEW_MASTER_PASSWORD,
            "new master password",
            confirm=True,
            environ=None,
            stdin=None,
            prompt=getpass.getpass,
        )
        store.change_password(new_password)
        _log.info("changed the master password of %s", path)
        print(
            f"master password changed for {path}; if you set {ENV_MASTER_PASSWORD} "
            "(.env, a service's environment), update it to the new password"
        )
    return 0


def _read_value(name: str, stdin: IO[str] | None) -> str:
    """The value to store: hidden prompt at a terminal, else the first line of stdin."""
    if _is_tty(stdin):
        value = getpass.getpass(f"Value for {name} (input hidden): ")
    else:
        line = stdin.readline() if stdin is not None else ""
        value = line.rstrip("\r\n")
    if not value:
        raise CredentialError(
            f"no value for {name}: type it at the prompt, or pipe it: "
            f'echo "$VALUE" | python main.py credentials set {name}'
        )
    return value
