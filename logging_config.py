"""Logging for the whole application: JSON lines on disk, readable lines on stderr, no secrets.

Why: the file log (`logs/trading.log`) is read by machines (dashboard, post-mortems), so every line
is one JSON object with a UTC timestamp; the console is read by people. Both carry broker keys,
webhook URLs and tokens only as `***REDACTED***`: the redacting filter sits on every handler this
module installs, because a filter on a logger does not see records propagated from child loggers.
Alerts go to their own append-only file (`logs/alerts.log`), one whole JSON line per write,
so that concurrent writers (trainer, live loop, dashboard) never interleave partial lines.

A foundation module: imports only `constants` and `error_handling`, and nothing heavy (no rich).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import numbers
import os
import re
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote, quote_plus

from constants import paths
from error_handling import ConfigurationError

__all__ = [
    "REDACTED",
    "RedactingFilter",
    "append_alert",
    "known_secrets",
    "redact",
    "secrets_from_env",
    "setup_logging",
]

#: What every secret is replaced with, in the file log, on the console and in alerts.
REDACTED = "***REDACTED***"
#: An environment variable whose NAME contains one of these holds a secret.
SECRET_ENV_MARKERS: tuple[str, ...] = ("KEY", "SECRET", "TOKEN", "PASSWORD", "WEBHOOK")
#: Host of Slack's incoming webhooks, whose URL path is a bearer token (redacted, host kept).
SLACK_WEBHOOK_HOST = "hooks.slack.com"
#: Shorter env values are not treated as secrets: redacting "1" or "true" would wreck every line.
MIN_ENV_SECRET_LENGTH = 8

_log = logging.getLogger(__name__)

# --- Redaction ------------------------------------------------------------------------------------
# Names whose value is a secret; an arbitrary prefix is allowed (ALPACA_SECRET_KEY, x-api-key,
# client_secret, access_token), but the name must end the key (token_count is not a secret).
_SECRET_NAME = r"(?:api[_-]?key|secret[_-]?key|secret|password|passwd|token|authorization)"  # noqa: S105
_SECRET_KEY_RE = re.compile(rf"[A-Za-z0-9_\-]*?{_SECRET_NAME}", re.IGNORECASE)
_QUERY_PARAMS = r"(?:token|key|apikey|api_key|api-key|secret|signature|sig)"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Slack incoming webhook / workflow URLs: keep the host, hide the path tokens.
    (
        re.compile(
            rf"(?P<keep>https?://{re.escape(SLACK_WEBHOOK_HOST)}/(?:services|workflows|triggers)/)"
            r"[A-Za-z0-9_\-/]+",
            re.IGNORECASE,
        ),
        rf"\g<keep>{REDACTED}",
    ),
    # Discord webhook URLs: the numeric id is harmless, the token after it is the secret.
    (
        re.compile(
            r"(?P<keep>https?://(?:(?:ptb|canary)\.)?discord(?:app)?\.com/api/(?:v\d+/)?"
            r"webhooks/\d+/)[A-Za-z0-9_\-.]+",
            re.IGNORECASE,
        ),
        rf"\g<keep>{REDACTED}",
    ),
    # Password in a URL's user-info: scheme://user:password@host.
    (
        re.compile(r"(?P<keep>\b[a-z][a-z0-9+.\-]*://[^\s/:@]+:)[^\s/@]+(?=@)", re.IGNORECASE),
        rf"\g<keep>{REDACTED}",
    ),
    # Credentials in a URL query string (?token=..., &sig=...).
    (
        re.compile(rf"(?P<keep>[?&]{_QUERY_PARAMS}=)[^&#\s\"'<>]+", re.IGNORECASE),
        rf"\g<keep>{REDACTED}",
    ),
    # HTTP bearer tokens anywhere (headers, curl lines, exception text).
    (
        re.compile(r"(?P<keep>\bBearer\s+)[A-Za-z0-9\-._~+/]{8,}=*", re.IGNORECASE),
        rf"\g<keep>{REDACTED}",
    ),
)
# key=value, key: value, "key": "value", 'key': 'value', Authorization: Basic xyz.
_KEY_VALUE_RE = re.compile(
    rf"(?P<keep>(?<![A-Za-z0-9]){_SECRET_KEY_RE.pattern}[\"']?\s*[:=]\s*"
    r"(?:(?:bearer|basic|token)\s+)?)"
    r"(?P<value>\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|[^\s,;&'\"}\])]+)",
    re.IGNORECASE,
)


#: `name: value` is also how prose reads ("ALPACA_SECRET_KEY: set both in .env"): after a colon an
#: unquoted value counts as a secret when it has a digit or this many characters (words in prose
#: have neither; env values are redacted literally anyway).
MIN_COLON_WORD_SECRET_LENGTH = 16
_AUTH_SCHEME_END_RE = re.compile(r"(?:bearer|basic|token)\s+$", re.IGNORECASE)


def _replace_key_value(match: re.Match[str]) -> str:
    value = match.group("value")
    quote_char = value[0] if value[0] in "\"'" else ""
    keep = match.group("keep")
    prose_word = len(value) < MIN_COLON_WORD_SECRET_LENGTH and not any(c.isdigit() for c in value)
    after_scheme = _AUTH_SCHEME_END_RE.search(keep) is not None  # "Authorization: Basic <creds>"
    if not quote_char and "=" not in keep and prose_word and not after_scheme:
        return match.group(0)
    return f"{match.group('keep')}{quote_char}{REDACTED}{quote_char}"


@lru_cache(maxsize=64)
def _literal_pattern(secrets: frozenset[str]) -> re.Pattern[str] | None:
    variants = set(secrets)
    # The same secret inside a URL appears percent-encoded.
    variants |= {quote(s, safe="") for s in secrets} | {quote_plus(s) for s in secrets}
    variants.discard("")
    if not variants:
        return None
    # Longest first, so a secret that contains another is replaced whole.
    ordered = sorted(variants, key=lambda s: (-len(s), s))
    return re.compile("|".join(re.escape(s) for s in ordered))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every value in `secrets` and every recognised credential replaced by REDACTED.

    Pure and idempotent. Recognised without being told: key=value / key: value / JSON pairs whose
    key names an api key, secret, password, token or authorization; `Bearer <token>`; Slack and
    Discord webhook URLs; URL passwords; token/key/secret/signature URL query parameters.
    Empty strings in `secrets` are ignored.
    """
    pattern = _literal_pattern(frozenset(s for s in secrets if s))
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    for regex, replacement in _PATTERNS:
        text = regex.sub(replacement, text)
    return _KEY_VALUE_RE.sub(_replace_key_value, text)


def secrets_from_env(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """Values (>= MIN_ENV_SECRET_LENGTH chars) of env vars whose name contains a secret marker."""
    env = os.environ if environ is None else environ
    return frozenset(
        value.strip()
        for name, value in env.items()
        if any(marker in name.upper() for marker in SECRET_ENV_MARKERS)
        and len(value.strip()) >= MIN_ENV_SECRET_LENGTH
    )


def known_secrets() -> frozenset[str]:
    """Secrets in force now: those in the environment plus those given to `add_secret`.

    For other modules' text: `redact(message, known_secrets())`.
    """
    return secrets_from_env() | RedactingFilter.added_secrets()


def _is_secret_key(key: str) -> bool:
    return _SECRET_KEY_RE.fullmatch(key) is not None


_MAX_DEPTH = 16


def _redact_value(key: str, value: Any, secrets: frozenset[str], depth: int = 0) -> Any:
    """A redacted copy of an `extra` value; never mutates the caller's containers."""
    if value is None or isinstance(value, bool | numbers.Number):
        return value
    if isinstance(value, str):
        return REDACTED if value and _is_secret_key(key) else redact(value, secrets)
    if depth < _MAX_DEPTH:
        if isinstance(value, Mapping):
            return {k: _redact_value(str(k), v, secrets, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple):
            items = [_redact_value(key, v, secrets, depth + 1) for v in value]
            return items if isinstance(value, list) else tuple(items)
    # Any other object would be str()-ed by a formatter, secrets and all: do it here, redacted.
    return redact(str(value), secrets)


# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_REDACTED_BY = "_redacted_by"


class RedactingFilter(logging.Filter):
    """Rewrites each record so that no handler it is attached to can emit a known secret.

    The message is formatted (msg % args) and redacted, `args` dropped; string `extra` fields,
    exception and stack text are redacted too. Secrets are the env values found when the filter is
    created, `secrets` passed here, and every value given to `add_secret` (process-wide).
    """

    _added: ClassVar[set[str]] = set()
    _added_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        name: str = "",
        *,
        secrets: Iterable[str] = (),
        environ: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(name)
        self._own_secrets = secrets_from_env(environ) | frozenset(s for s in secrets if s)

    @classmethod
    def add_secret(cls, value: str) -> None:
        """Redact `value` from now on in every RedactingFilter (a secret is secret everywhere).

        For secrets that are not in the environment: a password typed at a prompt, a token
        fetched at run time. Values shorter than MIN_ENV_SECRET_LENGTH are ignored, as for the
        environment: redacting "1" or "abc" everywhere would wreck every line, and no real
        secret is that short.
        """
        if value and len(value.strip()) >= MIN_ENV_SECRET_LENGTH:
            with cls._added_lock:
                cls._added.add(value)

    @classmethod
    def added_secrets(cls) -> frozenset[str]:
        """Values given to `add_secret` so far."""
        with cls._added_lock:
            return frozenset(cls._added)

    @property
    def secrets(self) -> frozenset[str]:
        """Every literal value this filter redacts."""
        return self._own_secrets | self.added_secrets()

    def filter(self, record: logging.LogRecord) -> bool:
        # One filter is shared by all handlers setup_logging installs: redact each record once.
        if getattr(record, _REDACTED_BY, None) is self:
            return True
        secrets = self.secrets
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not leak its args via logging's error dump
            message = f"{record.msg} (unformattable log arguments: {record.args!r})"
        record.msg, record.args = redact(message, secrets), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, secrets)
        for key, value in list(vars(record).items()):
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                setattr(record, key, _redact_value(key, value, secrets))
        setattr(record, _REDACTED_BY, self)
        return True


# --- Formatters -----------------------------------------------------------------------------------
def _utc_iso(timestamp: float | None = None) -> str:
    """ISO-8601 UTC with milliseconds and a 'Z', e.g. 2024-05-01T13:30:00.123Z."""
    moment = datetime.now(UTC) if timestamp is None else datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json_safe(value: Any, depth: int = 0) -> Any:
    """`value` as plain JSON types: non-finite floats and unknown objects become strings."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        as_float = float(value)
        return as_float if as_float == as_float and abs(as_float) != float("inf") else str(value)
    if depth < _MAX_DEPTH:
        if isinstance(value, Mapping):
            return {str(k): _json_safe(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [_json_safe(v, depth + 1) for v in value]
    return str(value)


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, 'Z'), level, logger, message, exc_info, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc_iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        for key, value in vars(record).items():
            if key in _RECORD_ATTRS or key.startswith("_"):
                continue
            # An extra named like a core field (time, level, logger) must not overwrite it.
            entry[f"extra_{key}" if key in entry else key] = _json_safe(value)
        return json.dumps(entry, ensure_ascii=False, allow_nan=False)


class ConsoleFormatter(logging.Formatter):
    """`2024-05-01T13:30:00.123Z WARNING name: message` in UTC, for people reading stderr."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s.%(msecs)03dZ %(levelname)-7s %(name)s: %(message)s",
            datefmt="%Y-%m-%dT%H:%M:%S",
        )
        self.converter = time.gmtime


# --- Setup ----------------------------------------------------------------------------------------
# Marks the handlers setup_logging installed, so a second call replaces exactly those.
_INSTALLED_MARK = "_installed_by_logging_config"


def _level(value: str | int, what: str) -> int:
    if isinstance(value, int):
        return value
    levels = logging.getLevelNamesMapping()
    name = str(value).strip().upper()
    if name not in levels:
        raise ConfigurationError(
            f"unknown {what} {value!r}: use one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
        )
    return levels[name]


def setup_logging(
    level: str | int = "INFO",
    *,
    home: Path | None = None,
    console: bool = True,
    json_file: bool = True,
    max_bytes: int = 10_000_000,
    backup_count: int = 5,
    console_level: str | int | None = None,
) -> logging.Logger:
    """Configure the root logger and return it; calling again replaces what the last call installed.

    `level` applies to the JSON file `paths(home).app_log` (rotated at `max_bytes` bytes, keeping
    `backup_count` old files: trading.log.1 is the newest), `console_level` (default: `level`) to
    stderr. Handlers installed by others (pytest, a host application) are left alone.
    Rotation is per process: two processes rotating the same file can lose lines.
    """
    file_level = _level(level, "log level")
    stderr_level = file_level if console_level is None else _level(console_level, "console level")
    if max_bytes < 0 or backup_count < 0:
        raise ConfigurationError("log max_bytes and backup_count must be >= 0")

    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _INSTALLED_MARK, False):
            root.removeHandler(handler)
            handler.close()

    redacting = RedactingFilter()
    installed: list[logging.Handler] = []
    if json_file:
        app_log = paths(home).app_log
        app_log.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.RotatingFileHandler(
            app_log, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8"
        )
        file_handler.setLevel(file_level)
        file_handler.setFormatter(JsonLineFormatter())
        installed.append(file_handler)
    if console:
        console_handler = logging.StreamHandler(sys.stderr)
        console_handler.setLevel(stderr_level)
        console_handler.setFormatter(ConsoleFormatter())
        console_handler.addFilter(_quiet_libraries)
        installed.append(console_handler)

    for handler in installed:
        handler.addFilter(redacting)
        setattr(handler, _INSTALLED_MARK, True)
        root.addHandler(handler)
    # The root must let through the most verbose level any of its handlers wants.
    root.setLevel(min((h.level for h in installed), default=file_level))
    return root


#: Libraries whose warnings we turn into our own one-line errors (yfinance offline says "Cookie
#: fetch failed" before we say "could not reach Yahoo Finance"): below ERROR, to the file only.
QUIET_ON_CONSOLE: tuple[str, ...] = (
    "yfinance",
    "alpaca",
    "urllib3",
    "curl_cffi",
    "peewee",
    "tensorflow",
    "absl",
    "keras",
)


def _quiet_libraries(record: logging.LogRecord) -> bool:
    """Console filter: drop a QUIET_ON_CONSOLE library's records below ERROR."""
    top = record.name.split(".", 1)[0]
    return record.levelno >= logging.ERROR or top not in QUIET_ON_CONSOLE


# --- Alerts -------------------------------------------------------------------------------------
def append_alert(
    severity: str,
    source: str,
    title: str,
    message: str,
    details: dict[str, Any] | None = None,
    *,
    home: Path | None = None,
) -> dict[str, Any]:
    """Append one redacted JSON alert line to `paths(home).alerts_log` and return it as written.

    The file sink of `alert_dispatch` (producers call `alert_dispatch.send`, which also pages):
    fields time (UTC, 'Z'), severity (upper-case), source, title, message, details. The line is
    written with a single write on an O_APPEND descriptor and fsync-ed, so concurrent writers
    never interleave partial lines. Also logged at WARNING.
    """
    record: dict[str, Any] = {
        "time": _utc_iso(),
        "severity": str(severity).upper(),
        "source": source,
        "title": title,
        "message": message,
        "details": dict(details or {}),
    }
    # Redact the structure, not the JSON text, so the line stays valid JSON whatever is hidden.
    written = _json_safe(_redact_value("alert", record, known_secrets()))
    line = (json.dumps(written, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")

    alerts_log = paths(home).alerts_log
    alerts_log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(alerts_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        sent = os.write(fd, line)
        # A regular file takes the whole line at once; a short write means ENOSPC or a signal,
        # and finishing the line beats leaving a fragment.
        while sent < len(line):
            sent += os.write(fd, line[sent:])
        os.fsync(fd)
    finally:
        os.close(fd)

    _log.warning("%s", written["message"], extra={"alert": written})
    return written
