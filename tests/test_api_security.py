"""api_security.py: signing, verification, freshness window, replay protection, the nonce cache."""

from __future__ import annotations

import hashlib
import hmac
import pickle
import secrets
import threading

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from api_security import (
    DEFAULT_MAX_SKEW_S,
    DEFAULT_NONCE_CACHE,
    DEFAULT_WINDOW_S,
    NONCE_HEADER,
    REASON_BAD_SIGNATURE,
    REASON_EXPIRED,
    REASON_FUTURE,
    REASON_MALFORMED,
    REASON_MISSING,
    REASON_REPLAYED,
    SIGNATURE_HEADER,
    SIGNATURE_VERSION,
    TIMESTAMP_HEADER,
    NonceCache,
    SignatureError,
    canonical_string,
    sign_request,
    verify_request,
)
from error_handling import TradingError

SECRET = "s3cr3t-shared-between-sender-and-receiver"
NOW = 1_700_000_000.0
METHOD = "POST"
PATH = "/hooks/fills?account=paper"
BODY = b'{"symbol": "AAPL", "qty": 10, "side": "buy"}'


class FakeClock:
    """Seconds that only move when a test moves them."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def signed(body: bytes | str = BODY, **kwargs) -> dict[str, str]:
    return sign_request(METHOD, PATH, body, SECRET, now=NOW, **kwargs)


def verify(headers, *, method=METHOD, path=PATH, body=BODY, secret=SECRET, now=NOW, cache=None):
    verify_request(
        method,
        path,
        body,
        headers,
        secret,
        nonce_cache=NonceCache() if cache is None else cache,
        now=now,
    )


def reason_of(headers, **kwargs) -> str:
    with pytest.raises(SignatureError) as excinfo:
        verify(headers, **kwargs)
    return excinfo.value.reason


def stdlib_signature(method: str, path: str, body: bytes, headers: dict[str, str]) -> str:
    """What a receiver computes from the README recipe, with only hmac and hashlib."""
    canonical = "\n".join(
        [
            "v1",
            headers["X-Signature-Timestamp"],
            headers["X-Signature-Nonce"],
            method.upper(),
            path,
            hashlib.sha256(body).hexdigest(),
        ]
    ).encode("utf-8")
    return "v1=" + hmac.new(SECRET.encode(), canonical, hashlib.sha256).hexdigest()


# --- Signing and round trips ----------------------------------------------------------------------
def test_signed_request_verifies() -> None:
    verify(signed())


def test_round_trip_with_str_body_signed_and_bytes_body_verified() -> None:
    text = '{"note": "café"}'
    verify(signed(text), body=text.encode("utf-8"))
    verify(signed(text.encode("utf-8")), body=text)


def test_empty_body_verifies() -> None:
    verify(signed(b""), body=b"")
    verify(signed(""), body="")


def test_headers_have_documented_names_and_formats() -> None:
    headers = signed()
    assert set(headers) == {TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER}
    assert headers[TIMESTAMP_HEADER] == "1700000000"
    assert len(headers[NONCE_HEADER]) == 32
    int(headers[NONCE_HEADER], 16)
    assert headers[SIGNATURE_HEADER].startswith(f"{SIGNATURE_VERSION}=")
    assert len(headers[SIGNATURE_HEADER]) == len("v1=") + 64


def test_each_request_gets_a_fresh_nonce() -> None:
    assert signed()[NONCE_HEADER] != signed()[NONCE_HEADER]


def test_canonical_string_has_the_documented_layout() -> None:
    got = canonical_string("post", "/p?q=1", b"body", "1700000000", "ab" * 16)
    body_hash = hashlib.sha256(b"body").hexdigest()
    assert got == f"v1\n1700000000\n{'ab' * 16}\nPOST\n/p?q=1\n{body_hash}".encode()


def test_receiver_using_only_stdlib_computes_the_same_signature() -> None:
    headers = signed()
    assert stdlib_signature(METHOD, PATH, BODY, headers) == headers[SIGNATURE_HEADER]


def test_empty_secret_is_refused_when_signing_and_verifying() -> None:
    with pytest.raises(ValueError, match="secret is empty"):
        sign_request(METHOD, PATH, BODY, "", now=NOW)
    with pytest.raises(ValueError, match="secret is empty"):
        verify(signed(), secret=b"")


def test_sign_request_refuses_a_nonce_the_verifier_would_reject() -> None:
    with pytest.raises(ValueError, match="nonce"):
        signed(nonce="NOT-HEX")


def test_method_case_does_not_matter() -> None:
    headers = sign_request("post", PATH, BODY, SECRET, now=NOW)
    verify(headers, method="POST")


# --- Replay ---------------------------------------------------------------------------------------
def test_replayed_request_is_refused_after_the_first_passes() -> None:
    cache, headers = NonceCache(), signed()
    verify(headers, cache=cache)
    assert reason_of(headers, cache=cache) == REASON_REPLAYED


def test_default_nonce_cache_is_used_when_none_is_given() -> None:
    headers = signed()
    verify_request(METHOD, PATH, BODY, headers, SECRET, now=NOW)
    with pytest.raises(SignatureError) as excinfo:
        verify_request(METHOD, PATH, BODY, headers, SECRET, now=NOW)
    assert excinfo.value.reason == REASON_REPLAYED
    assert DEFAULT_NONCE_CACHE.check_and_add(headers[NONCE_HEADER]) is False


@pytest.mark.parametrize(
    "failure",
    [
        {"body": b"tampered"},
        {"secret": "wrong"},
        {"now": NOW + DEFAULT_WINDOW_S + 1},
        {"now": NOW - DEFAULT_MAX_SKEW_S - 1},
    ],
    ids=["bad_signature", "wrong_secret", "expired", "future"],
)
def test_failed_verification_does_not_record_the_nonce(failure) -> None:
    cache, headers = NonceCache(), signed()
    with pytest.raises(SignatureError):
        verify(headers, cache=cache, **failure)
    assert len(cache) == 0
    verify(headers, cache=cache)


# --- Freshness window -----------------------------------------------------------------------------
def test_request_older_than_the_window_is_expired() -> None:
    assert reason_of(signed(), now=NOW + 301) == REASON_EXPIRED


def test_request_exactly_at_the_window_edge_passes() -> None:
    verify(signed(), now=NOW + 300)


def test_future_dated_request_is_refused() -> None:
    headers = sign_request(METHOD, PATH, BODY, SECRET, now=NOW + 60)
    assert reason_of(headers, now=NOW) == REASON_FUTURE


def test_small_clock_skew_into_the_future_passes() -> None:
    headers = sign_request(METHOD, PATH, BODY, SECRET, now=NOW + DEFAULT_MAX_SKEW_S)
    verify(headers, now=NOW)


# --- Bad signatures -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change",
    [
        {"body": BODY + b" "},
        {"path": "/hooks/fills?account=live"},
        {"method": "PUT"},
        {"secret": SECRET + "x"},
    ],
    ids=["body_tampered", "path_changed", "method_changed", "wrong_secret"],
)
def test_changed_request_has_bad_signature(change) -> None:
    assert reason_of(signed(), **change) == REASON_BAD_SIGNATURE


def test_changed_timestamp_inside_the_window_has_bad_signature() -> None:
    headers = {**signed(), TIMESTAMP_HEADER: str(int(NOW) + 1)}
    assert reason_of(headers) == REASON_BAD_SIGNATURE


# --- Missing and malformed headers ----------------------------------------------------------------
@pytest.mark.parametrize("header", [TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER])
def test_missing_header_is_refused(header) -> None:
    headers = signed()
    del headers[header]
    assert reason_of(headers) == REASON_MISSING


@pytest.mark.parametrize(
    ("header", "value"),
    [
        (TIMESTAMP_HEADER, "1700000000.5"),
        (TIMESTAMP_HEADER, "-1700000000"),
        (TIMESTAMP_HEADER, " 1700000000"),
        (TIMESTAMP_HEADER, "1700000000\n"),
        (TIMESTAMP_HEADER, "١٧٠٠٠٠٠٠٠٠"),  # Arabic-Indic digits: int() accepts them, we do not
        (TIMESTAMP_HEADER, ""),
        (NONCE_HEADER, "abc123"),
        (NONCE_HEADER, "A" * 32),
        (NONCE_HEADER, "g" * 32),
        (NONCE_HEADER, "a" * 65),
        (SIGNATURE_HEADER, "a" * 64),
        (SIGNATURE_HEADER, "v2=" + "a" * 64),
        (SIGNATURE_HEADER, "v1=" + "a" * 63),
        (SIGNATURE_HEADER, "v1=" + "A" * 64),
    ],
)
def test_malformed_header_is_refused(header, value) -> None:
    headers = {**signed(), header: value}
    assert reason_of(headers) == REASON_MALFORMED


def test_method_or_path_with_a_newline_is_malformed() -> None:
    headers = signed()
    assert reason_of(headers, method="POST\n") == REASON_MALFORMED
    assert reason_of(headers, path="/hooks\n/fills") == REASON_MALFORMED


@pytest.mark.parametrize("fold", [str.lower, str.upper, str.title])
def test_header_names_in_any_case_work(fold) -> None:
    headers = {fold(name): value for name, value in signed().items()}
    verify(headers)


def test_same_header_twice_with_different_values_is_malformed() -> None:
    headers = signed()
    headers[SIGNATURE_HEADER.lower()] = "v1=" + "0" * 64
    assert reason_of(headers) == REASON_MALFORMED


# --- Secrets stay out of messages and headers -----------------------------------------------------
@pytest.mark.parametrize(
    ("headers_change", "verify_change"),
    [
        ({SIGNATURE_HEADER: None}, {}),
        ({SIGNATURE_HEADER: "v1=zz"}, {}),
        ({}, {"now": NOW + 10_000}),
        ({}, {"now": NOW - 10_000}),
        ({}, {"body": b"tampered"}),
        ({}, {"secret": "other"}),
    ],
    ids=["missing", "malformed", "expired", "future", "bad_signature", "wrong_secret"],
)
def test_secret_and_signature_never_appear_in_error_messages(headers_change, verify_change) -> None:
    headers = signed()
    for name, value in headers_change.items():
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    with pytest.raises(SignatureError) as excinfo:
        verify(headers, **verify_change)
    text = f"{excinfo.value} {excinfo.value!r}"
    assert SECRET not in text
    assert signed()[SIGNATURE_HEADER][3:] not in text
    if SIGNATURE_HEADER in headers:
        assert headers[SIGNATURE_HEADER][3:] not in text


def test_replay_message_does_not_contain_secret_or_signature() -> None:
    cache, headers = NonceCache(), signed()
    verify(headers, cache=cache)
    with pytest.raises(SignatureError) as excinfo:
        verify(headers, cache=cache)
    assert SECRET not in str(excinfo.value)
    assert headers[SIGNATURE_HEADER][3:] not in str(excinfo.value)


def test_secret_never_appears_in_the_headers() -> None:
    headers = signed()
    assert all(SECRET not in value for value in headers.values())


# --- SignatureError -------------------------------------------------------------------------------
def test_signature_error_is_a_trading_error_with_its_own_exit_code_10() -> None:
    err = SignatureError(REASON_EXPIRED, "too old")
    assert isinstance(err, TradingError)
    assert err.exit_code == 10
    assert "[expired]" in str(err)


def test_pickled_signature_error_keeps_reason_and_message() -> None:
    err = SignatureError(REASON_REPLAYED, "nonce already accepted")
    copy = pickle.loads(pickle.dumps(err))  # noqa: S301 - our own object, just pickled
    assert type(copy) is SignatureError
    assert copy.reason == REASON_REPLAYED
    assert copy.detail == "nonce already accepted"
    assert str(copy) == str(err)


# --- NonceCache -----------------------------------------------------------------------------------
def test_nonce_cache_refuses_a_nonce_seen_within_ttl() -> None:
    cache = NonceCache(clock=FakeClock())
    assert cache.check_and_add("n1") is True
    assert cache.check_and_add("n1") is False
    assert len(cache) == 1


def test_nonce_cache_forgets_a_nonce_after_ttl() -> None:
    clock = FakeClock()
    cache = NonceCache(ttl_s=10.0, clock=clock)
    cache.check_and_add("n1")
    clock.now += 9.9
    cache.check_and_add("n2")
    assert cache.check_and_add("n1") is False
    clock.now += 0.1
    assert len(cache) == 1  # n1 expired, n2 still live
    assert cache.check_and_add("n1") is True


def test_nonce_cache_evicts_the_oldest_entry_when_full() -> None:
    cache = NonceCache(max_size=3, clock=FakeClock())
    for nonce in ("a", "b", "c", "d"):
        assert cache.check_and_add(nonce)
    assert len(cache) == 3
    assert cache.check_and_add("a") is True  # "a" was evicted to make room for "d"
    assert cache.check_and_add("c") is False


def test_nonce_cache_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="max_size"):
        NonceCache(max_size=0)
    with pytest.raises(ValueError, match="ttl_s"):
        NonceCache(ttl_s=0)


def test_nonce_cache_counts_distinct_nonces_added_from_many_threads() -> None:
    cache, n_threads, per_thread = NonceCache(), 8, 500
    barrier = threading.Barrier(n_threads)
    results: list[bool] = []

    def add(thread_id: int) -> None:
        barrier.wait()
        results.extend(cache.check_and_add(f"{thread_id}-{i}") for i in range(per_thread))

    threads = [threading.Thread(target=add, args=(t,)) for t in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(cache) == n_threads * per_thread
    assert all(results) and len(results) == n_threads * per_thread


def test_nonce_cache_accepts_a_nonce_raced_from_many_threads_exactly_once() -> None:
    cache, n_threads = NonceCache(), 16
    barrier = threading.Barrier(n_threads)
    results: list[bool] = []

    def add() -> None:
        barrier.wait()
        results.append(cache.check_and_add("same"))

    threads = [threading.Thread(target=add) for _ in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * (n_threads - 1) + [True]


# --- Property: any single-byte change is refused --------------------------------------------------
PROPERTY_PATH = "/hooks/fills?account=paper&note=café"  # a two-byte UTF-8 character to break
PARTS = ("method", "path", "body", TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER)


@settings(max_examples=300, deadline=None)
@given(part=st.sampled_from(PARTS), data=st.data())
def test_any_single_byte_change_is_refused(part: str, data: st.DataObject) -> None:
    headers = sign_request(
        METHOD, PROPERTY_PATH, BODY, SECRET, now=NOW, nonce=secrets.token_hex(16)
    )
    request = {"method": METHOD.encode(), "path": PROPERTY_PATH.encode(), "body": BODY}
    request.update({name: value.encode("ascii") for name, value in headers.items()})

    original = request[part]
    position = data.draw(st.integers(0, len(original) - 1), label="position")
    mask = data.draw(st.integers(1, 255), label="xor mask")
    mutated = bytearray(original)
    mutated[position] ^= mask
    request[part] = bytes(mutated)

    if part in headers:  # a header value that can be sent is printable ASCII
        assume(all(0x20 <= b <= 0x7E for b in request[part]))
    method = request["method"].decode("utf-8", errors="surrogateescape")
    path = request["path"].decode("utf-8", errors="surrogateescape")
    if part == "method":  # the method is signed upper-cased, so "pOST" is the same request
        assume(method.upper() != METHOD)

    new_headers = {name: request[name].decode("ascii") for name in headers}
    with pytest.raises(SignatureError):
        verify_request(
            method, path, request["body"], new_headers, SECRET, nonce_cache=NonceCache(), now=NOW
        )
