"""HMAC-SHA256 request signing and verification for webhooks and API calls.

What is signed, and why each part is there (the "canonical string", one field a line, UTF-8):

    v1 \\n timestamp \\n nonce \\n METHOD \\n path \\n sha256(body).hexdigest()

- `v1` (`SIGNATURE_VERSION`) lets a receiver refuse a scheme it does not understand.
- the timestamp (integer seconds since the epoch, UTC) bounds how long a captured request stays
  usable: a receiver accepts it for `DEFAULT_WINDOW_S` (5 minutes) after it was signed and at most
  `DEFAULT_MAX_SKEW_S` (30 s) before, to tolerate clock drift;
- the nonce (32 random hex chars) makes every request unique, so a replay *inside* the window is
  refused by remembering nonces for window + skew (`NonceCache`);
- the method and path stop a signature for one endpoint being reused on another; the path is
  signed exactly as given, so sign and verify the request target as sent (query string included,
  not URL-decoded);
- the body enters as its SHA-256 hex digest, so every field is a fixed shape and free of newlines
  (a body cannot shift text between fields) and a receiver can hash a streamed body.

The sender puts the timestamp, nonce and `"v1=" + hex HMAC` into three headers (`sign_request`).
`verify_request` checks, in this order: all headers present, well-formed, fresh, signature correct
(constant-time compare), and only then records the nonce, so requests that fail verification can
neither fill the nonce cache nor burn a nonce that a genuine request will use later.

Messages of `SignatureError` never contain the secret or a signature value. This module imports
only `error_handling` from the project.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from error_handling import TradingError

SIGNATURE_VERSION = "v1"
TIMESTAMP_HEADER = "X-Signature-Timestamp"  # integer seconds since the epoch (UTC), decimal string
NONCE_HEADER = "X-Signature-Nonce"  # 32 hex chars from secrets.token_hex(16)
SIGNATURE_HEADER = "X-Signature"  # "v1=" + hex HMAC-SHA256 of the canonical string
DEFAULT_WINDOW_S = 300.0  # how old (seconds) a signed request may be when it is verified
DEFAULT_MAX_SKEW_S = 30.0  # how far (seconds) in the future a timestamp may be

REASON_MISSING = "missing_header"
REASON_MALFORMED = "malformed"
REASON_EXPIRED = "expired"
REASON_FUTURE = "future_dated"
REASON_REPLAYED = "replayed"
REASON_BAD_SIGNATURE = "bad_signature"

_TIMESTAMP_RE = re.compile(r"[0-9]{1,20}")
_NONCE_RE = re.compile(r"[0-9a-f]{16,64}")
_SIGNATURE_RE = re.compile(re.escape(SIGNATURE_VERSION) + r"=[0-9a-f]{64}")


class SignatureError(TradingError):
    """A request failed signature verification; `reason` is one of the `REASON_*` codes."""

    exit_code = 10

    def __init__(self, reason: str, message: str):
        self.reason, self.detail = reason, message
        super().__init__(f"signature check failed [{reason}]: {message}")

    def __reduce__(self) -> tuple[Any, ...]:  # survive pickling (e.g. across worker processes)
        return (type(self), (self.reason, self.detail))


# --- Signing --------------------------------------------------------------------------------------
def canonical_string(method: str, path: str, body: bytes, timestamp: str, nonce: str) -> bytes:
    """The exact bytes that are HMAC'd: version, timestamp, nonce, METHOD, path, body SHA-256.

    Raises ValueError for a method or path that would make the newline-separated fields ambiguous
    (empty method, whitespace or control characters) or that is not encodable as UTF-8.
    """
    if not method or any(c.isspace() or not c.isprintable() for c in method):
        raise ValueError(
            f"HTTP method must be a non-empty token without whitespace; got {method!r}"
        )
    if not path.isprintable():  # also refuses lone surrogates, which UTF-8 cannot encode
        raise ValueError(f"path must not contain control characters; got {path[:80]!r}")
    body_hash = hashlib.sha256(body).hexdigest()
    text = f"{SIGNATURE_VERSION}\n{timestamp}\n{nonce}\n{method.upper()}\n{path}\n{body_hash}"
    return text.encode("utf-8")


def sign_request(
    method: str,
    path: str,
    body: bytes | str,
    secret: str | bytes,
    *,
    now: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """Headers that authenticate this request: timestamp, nonce and `v1=` HMAC-SHA256 signature.

    `now` is seconds since the epoch (default `time.time()`), truncated to whole seconds; `nonce`
    defaults to `secrets.token_hex(16)`. A str body or secret is encoded as UTF-8.
    """
    key = _key(secret)
    if nonce is None:
        nonce = secrets.token_hex(16)
    elif not _NONCE_RE.fullmatch(nonce):
        raise ValueError("nonce must be 16-64 lowercase hex characters, e.g. secrets.token_hex(16)")
    if now is None:
        now = time.time()
    if now < 0:
        raise ValueError(f"now must be seconds since the epoch (>= 0); got {now}")
    timestamp = str(int(now))
    message = canonical_string(method, path, _body_bytes(body), timestamp, nonce)
    return {
        TIMESTAMP_HEADER: timestamp,
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: f"{SIGNATURE_VERSION}={_hmac_hex(key, message)}",
    }


# --- Replay protection ----------------------------------------------------------------------------
class NonceCache:
    """Bounded, expiring, thread-safe set of the nonces of requests already accepted.

    An entry lives for `ttl_s` seconds of `clock` after it was added; keep `ttl_s` at least
    window + skew of the verifier, or a replay after the entry expired but inside the window would
    pass. Entries sit in insertion order, so expired ones are dropped from the front (O(1)
    amortised); when `max_size` live entries are held, the oldest is dropped to make room. Only
    verified requests are recorded, so filling the cache takes the secret.
    """

    def __init__(
        self,
        max_size: int = 100_000,
        ttl_s: float = DEFAULT_WINDOW_S + DEFAULT_MAX_SKEW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1; got {max_size}")
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be a positive number of seconds; got {ttl_s}")
        self.max_size, self.ttl_s = max_size, ttl_s
        self._clock = clock
        self._expiry: OrderedDict[str, float] = OrderedDict()  # nonce -> clock time it expires
        self._lock = threading.Lock()

    def check_and_add(self, nonce: str) -> bool:
        """True if `nonce` is new (it is now remembered); False if it was seen within `ttl_s`."""
        with self._lock:
            now = self._clock()
            self._evict_expired(now)
            if nonce in self._expiry:
                return False
            if len(self._expiry) >= self.max_size:
                self._expiry.popitem(last=False)
            self._expiry[nonce] = now + self.ttl_s
            return True

    def __len__(self) -> int:
        """Number of live (unexpired) entries."""
        with self._lock:
            self._evict_expired(self._clock())
            return len(self._expiry)

    def _evict_expired(self, now: float) -> None:
        while self._expiry:
            oldest_expiry = next(iter(self._expiry.values()))
            if oldest_expiry > now:
                break
            self._expiry.popitem(last=False)


# One cache per process, used when `verify_request` gets no `nonce_cache`. Several worker processes
# do not share it: a receiver with more than one process must pass a cache they share (or route all
# signed requests to one process), or a replay to another worker would pass.
DEFAULT_NONCE_CACHE = NonceCache()


# --- Verification ---------------------------------------------------------------------------------
def verify_request(
    method: str,
    path: str,
    body: bytes | str,
    headers: Mapping[str, str],
    secret: str | bytes,
    *,
    nonce_cache: NonceCache | None = None,
    now: float | None = None,
    window_s: float = DEFAULT_WINDOW_S,
    max_skew_s: float = DEFAULT_MAX_SKEW_S,
) -> None:
    """Return None if the request is authentic, fresh and new; raise SignatureError if it is not.

    Header names are matched case-insensitively. `now` is seconds since the epoch (default
    `time.time()`). The nonce is recorded in `nonce_cache` (default `DEFAULT_NONCE_CACHE`, one per
    process) only after the signature verifies. An empty secret is a ValueError (a setup mistake,
    not a bad request).
    """
    key = _key(secret)
    if window_s < 0 or max_skew_s < 0:
        raise ValueError(f"window_s and max_skew_s must be >= 0; got {window_s}, {max_skew_s}")
    timestamp, nonce, signature = _header_values(headers)

    if not _TIMESTAMP_RE.fullmatch(timestamp):
        raise SignatureError(
            REASON_MALFORMED,
            f"{TIMESTAMP_HEADER} must be integer seconds since the epoch as decimal digits; "
            f"got {timestamp[:40]!r}",
        )
    if not _NONCE_RE.fullmatch(nonce):
        raise SignatureError(
            REASON_MALFORMED,
            f"{NONCE_HEADER} must be 16-64 lowercase hex characters (got {len(nonce)} characters "
            "that do not match); the sender should use secrets.token_hex(16)",
        )
    if not _SIGNATURE_RE.fullmatch(signature):
        raise SignatureError(
            REASON_MALFORMED,
            f"{SIGNATURE_HEADER} must be '{SIGNATURE_VERSION}=' followed by 64 lowercase hex "
            "digits (HMAC-SHA256); the sender may use another signature scheme",
        )

    if now is None:
        now = time.time()
    ts = int(timestamp)
    if now - ts > window_s:
        raise SignatureError(
            REASON_EXPIRED,
            f"request signed at {ts} is {now - ts:.0f} s old, more than the {window_s:.0f} s "
            "window: re-sign and resend it, and check both clocks are synchronised (NTP)",
        )
    if ts - now > max_skew_s:
        raise SignatureError(
            REASON_FUTURE,
            f"request signed at {ts} is {ts - now:.0f} s in the future, more than the allowed "
            f"{max_skew_s:.0f} s of clock skew: check the sender's clock (NTP)",
        )

    try:
        message = canonical_string(method, path, _body_bytes(body), timestamp, nonce)
    except ValueError as exc:  # includes UnicodeEncodeError
        raise SignatureError(REASON_MALFORMED, f"request line cannot be signed: {exc}") from None
    expected = _hmac_hex(key, message)
    provided = signature[len(SIGNATURE_VERSION) + 1 :]
    if not hmac.compare_digest(expected.encode("ascii"), provided.encode("ascii")):
        raise SignatureError(
            REASON_BAD_SIGNATURE,
            "signature does not match: check that sender and receiver share the same secret and "
            "that the method, path and exact body bytes are verified as they were signed",
        )

    cache = DEFAULT_NONCE_CACHE if nonce_cache is None else nonce_cache
    if not cache.check_and_add(nonce):
        raise SignatureError(
            REASON_REPLAYED,
            f"nonce already accepted within the last {cache.ttl_s:.0f} s: this is a replay of an "
            "earlier request; a sender must sign every request with a fresh nonce",
        )


# --- Helpers --------------------------------------------------------------------------------------
def _key(secret: str | bytes) -> bytes:
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if not key:
        raise ValueError(
            "the signing secret is empty; configure a shared secret (32+ random bytes)"
        )
    return key


def _body_bytes(body: bytes | str) -> bytes:
    return body.encode("utf-8") if isinstance(body, str) else bytes(body)


def _hmac_hex(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _header_values(headers: Mapping[str, str]) -> tuple[str, str, str]:
    """The timestamp, nonce and signature header values, looked up case-insensitively."""
    wanted = {name.lower() for name in (TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER)}
    by_name: dict[str, str] = {}
    for name, value in headers.items():
        folded = name.lower()
        if folded not in wanted:
            continue
        if folded in by_name and by_name[folded] != value:  # e.g. "X-Signature" and "x-signature"
            raise SignatureError(
                REASON_MALFORMED,
                f"header {name} appears twice (in different case) with different values",
            )
        by_name[folded] = value
    for name in (TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER):
        if name.lower() not in by_name:
            raise SignatureError(
                REASON_MISSING,
                f"header {name} is missing: the request is not signed, or a proxy dropped it",
            )
    return (
        by_name[TIMESTAMP_HEADER.lower()],
        by_name[NONCE_HEADER.lower()],
        by_name[SIGNATURE_HEADER.lower()],
    )
