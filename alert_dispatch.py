"""Alert dispatch: every alert goes to logs/alerts.log, and to a webhook when one is configured.

Nobody watches a terminal at 3 a.m., so a halt, an open circuit breaker, drift or an integrity
failure must reach a human, and the page must never take the trading loop down with it:

- the file sink always writes the alert (one redacted JSON line in logs/alerts.log, fsync-ed);
- the webhook sink (`ALERT_WEBHOOK_URL`) POSTs JSON that Slack (`text`), Discord (`content`) and
  generic receivers (structured fields) all accept, signed with HMAC-SHA256 when
  `ALERT_WEBHOOK_SECRET` is set (see api_security). Delivery runs on a background thread fed by a
  bounded queue, with a timeout and retries with backoff; a failure is logged, never raised; at
  exit pending alerts are flushed within `ALERT_FLUSH_TIMEOUT_S` (default 5 s);
- a HIGH or CRITICAL alert with no webhook configured prints a loud warning on stderr;
- identical alerts (severity, source, title, message) within `coalesce_window_s` (60 s) are sent
  once; the repeats are counted and reported with the next one sent, or at shutdown.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import enum
import json
import logging
import os
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from constants import paths
from error_handling import BreakerTransition
from logging_config import RedactingFilter, append_alert

log = logging.getLogger(__name__)

ENV_WEBHOOK_URL = "ALERT_WEBHOOK_URL"
ENV_WEBHOOK_SECRET = "ALERT_WEBHOOK_SECRET"  # noqa: S105 - a variable name, not a secret
ENV_FLUSH_TIMEOUT = "ALERT_FLUSH_TIMEOUT_S"
DISCORD_CONTENT_LIMIT = 2000  # characters Discord accepts in `content`


class Severity(enum.StrEnum):
    """How urgently a human must act. HIGH and CRITICAL page someone."""

    INFO = "INFO"
    WARNING = "WARNING"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    CRITICAL = "CRITICAL"

    @classmethod
    def parse(cls, value: str | Severity) -> Severity:
        try:
            return cls(str(value).upper())
        except ValueError:
            names = ", ".join(s.value for s in cls)
            raise ValueError(f"unknown alert severity {value!r}; use one of {names}") from None

    @property
    def pages(self) -> bool:
        """True for the severities that must reach a human now."""
        return self in (Severity.HIGH, Severity.CRITICAL)


@dataclass(frozen=True)
class Alert:
    """One alert; `time` is UTC. `details` must be JSON-like (it is redacted before it leaves)."""

    severity: Severity
    source: str
    title: str
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)
    time: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def key(self) -> tuple[str, str, str, str]:
        """What makes two alerts 'the same' for coalescing."""
        return (self.severity.value, self.source, self.title, self.message)


@dataclass(frozen=True)
class WebhookConfig:
    """Where and how the webhook sink delivers. Timeouts in seconds."""

    url: str
    secret: str | None = None
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 5.0
    attempts: int = 3  # first try included
    backoff_s: float = 0.5  # doubles per retry, capped at 4 s

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                f"{ENV_WEBHOOK_URL} must be an http(s) URL such as "
                f"https://hooks.slack.com/services/..., got {display_url(self.url)!r}"
            )
        if self.attempts < 1:
            raise ValueError("webhook attempts must be >= 1")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WebhookConfig | None:
        env = os.environ if environ is None else environ
        url = env.get(ENV_WEBHOOK_URL, "").strip()
        if not url:
            return None
        return cls(url=url, secret=env.get(ENV_WEBHOOK_SECRET, "").strip() or None)

    @property
    def signed_path(self) -> str:
        """The path (and query) the HMAC signature covers."""
        parts = urlsplit(self.url)
        return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


@dataclass(frozen=True)
class Delivery:
    """What became of one webhook delivery."""

    title: str
    ok: bool
    status: int | None  # HTTP status of the last attempt; None when no answer came
    attempts: int
    elapsed_s: float
    error: str | None = None


@dataclass(frozen=True)
class DispatchResult:
    """What `dispatch` did with an alert: `record` is the alerts.log line (None if coalesced)."""

    record: dict[str, Any] | None
    coalesced: bool
    webhook: str  # "queued", "not configured", "coalesced" or "queue full"


def display_url(url: str) -> str:
    """scheme://host[:port]/... : enough to recognise the receiver; the path often holds a token."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return "(not a URL)"
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/..."


def _register_url_secrets(url: str) -> None:
    """Redact the webhook URL's token-like parts from every log (a Slack or generic webhook URL is
    a bearer credential: whoever has it can post)."""
    parts = urlsplit(url)
    RedactingFilter.add_secret(url)
    path_qs = parts.path + (f"?{parts.query}" if parts.query else "")
    if len(path_qs) >= 8:
        RedactingFilter.add_secret(path_qs)
    pieces = parts.path.split("/") + [v for kv in parts.query.split("&") for v in kv.split("=")[1:]]
    for piece in pieces:
        if len(piece) >= 16 or (len(piece) >= 8 and any(c.isdigit() for c in piece)):
            RedactingFilter.add_secret(piece)
    if parts.password:
        RedactingFilter.add_secret(parts.password)


def webhook_payload(record: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON body: `text` for Slack, `content` for Discord, structured fields for the rest."""
    details = record.get("details") or {}
    repeats = details.get("repeats_suppressed", 0) if isinstance(details, Mapping) else 0
    summary = f"[{record['severity']}] {record['source']}: {record['title']}\n{record['message']}"
    if repeats:
        summary += f"\n(+{repeats} identical alerts suppressed)"
    content = summary
    if len(content) > DISCORD_CONTENT_LIMIT:
        content = content[: DISCORD_CONTENT_LIMIT - 1] + "…"
    return {
        "text": summary,
        "content": content,
        **{k: record[k] for k in ("time", "severity", "source", "title", "message", "details")},
        "repeats_suppressed": repeats,
        "host": socket.gethostname(),
    }


class _Coalescer:
    """Sends the first of identical alerts in a window; counts the rest."""

    def __init__(self, window_s: float, clock: Callable[[], float]):
        self.window_s = window_s
        self._clock = clock
        # key -> [time last sent, repeats suppressed since, the last suppressed alert]
        self._seen: dict[tuple[str, str, str, str], list[Any]] = {}

    def admit(self, alert: Alert) -> tuple[bool, int]:
        """(send it?, repeats suppressed before it to report with it)."""
        if self.window_s <= 0:
            return True, 0
        now = self._clock()
        entry = self._seen.get(alert.key)
        if entry is not None and now - entry[0] < self.window_s:
            entry[1] += 1
            entry[2] = alert
            return False, 0
        repeats = entry[1] if entry is not None else 0
        self._seen[alert.key] = [now, 0, None]
        return True, repeats

    def expired(self) -> list[tuple[Alert, int]]:
        """Drop entries whose window has passed; the suppressed ones come back to be reported."""
        now = self._clock()
        out = []
        for key, (sent_at, repeats, last) in list(self._seen.items()):
            if now - sent_at >= self.window_s:
                del self._seen[key]
                if repeats:
                    out.append((last, repeats))
        return out

    def pending(self) -> list[tuple[Alert, int]]:
        """Every suppressed count not yet reported (for shutdown)."""
        out = [(last, repeats) for _, repeats, last in self._seen.values() if repeats]
        self._seen.clear()
        return out


class AlertDispatcher:
    """Routes alerts to the file sink and, when configured, to the webhook sink.

    `webhook="env"` reads `ALERT_WEBHOOK_URL` / `ALERT_WEBHOOK_SECRET`; None disables the
    webhook. `clock` (monotonic seconds) drives coalescing; `stderr` receives the loud warnings.
    """

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        webhook: WebhookConfig | str | None = "env",
        coalesce_window_s: float = 60.0,
        queue_size: int = 1000,
        clock: Callable[[], float] = time.monotonic,
        stderr: TextIO | None = None,
    ):
        self.home = Path(home) if home is not None else None
        if webhook == "env":
            webhook = WebhookConfig.from_env()
        elif isinstance(webhook, str):
            webhook = WebhookConfig(url=webhook)
        self.webhook: WebhookConfig | None = webhook
        if self.webhook is not None:
            _register_url_secrets(self.webhook.url)
            if self.webhook.secret:
                RedactingFilter.add_secret(self.webhook.secret)
        self._stderr = stderr
        self._lock = threading.Lock()
        self._coalescer = _Coalescer(coalesce_window_s, clock)
        self._queue: queue.Queue[Mapping[str, Any] | None] = queue.Queue(maxsize=queue_size)
        self._worker: threading.Thread | None = None
        self._closed = False
        self.deliveries: collections.deque[Delivery] = collections.deque(maxlen=100)
        self.dropped = 0

    # --- The caller's side: fast, never raises for a sink failure ---------------------------
    def dispatch(self, alert: Alert) -> DispatchResult:
        """Write the alert to the file sink and queue it for the webhook; returns at once."""
        with self._lock:
            send, repeats = self._coalescer.admit(alert)
            overdue = self._coalescer.expired()
        for old, count in overdue:
            self._emit(old, count, summary=True)
        if not send:
            return DispatchResult(None, True, "coalesced")
        return self._emit(alert, repeats)

    def _emit(self, alert: Alert, repeats: int, *, summary: bool = False) -> DispatchResult:
        message = alert.message
        if summary:
            message = f"{message} (repeated {repeats} more times)"
        details = dict(alert.details)
        if repeats:
            details["repeats_suppressed"] = repeats
        try:
            record = append_alert(
                alert.severity.value, alert.source, alert.title, message, details, home=self.home
            )
        except OSError as exc:  # a full disk must not stop the page
            log.error("alerts.log write failed: %s", exc)
            record = {
                "time": alert.time.isoformat(),
                "severity": alert.severity.value,
                "source": alert.source,
                "title": alert.title,
                "message": message,
                "details": {},
            }
        if self.webhook is None:
            if alert.severity.pages:
                self._warn_unrouted(record)
            return DispatchResult(record, False, "not configured")
        return DispatchResult(record, False, self._enqueue(record))

    def _warn_unrouted(self, record: Mapping[str, Any]) -> None:
        where = paths(self.home).alerts_log
        stream = self._stderr if self._stderr is not None else sys.stderr
        print(
            f"!!! {record['severity']} ALERT with no webhook to page anyone: {record['title']}: "
            f"{record['message']} -- set {ENV_WEBHOOK_URL} (the alert is in {where})",
            file=stream,
            flush=True,
        )

    def _enqueue(self, record: Mapping[str, Any]) -> str:
        self._start_worker()
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            log.error(
                "alert queue full: webhook delivery of %r dropped (it is in alerts.log)",
                record["title"],
            )
            return "queue full"
        return "queued"

    def _start_worker(self) -> None:
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="alert-webhook", daemon=True)
                self._worker.start()

    # --- The worker's side -------------------------------------------------------------------
    def _run(self) -> None:
        import requests

        session = requests.Session()
        while True:
            record = self._queue.get()
            try:
                if record is None:
                    return
                self.deliveries.append(self._deliver(session, record))
            except Exception:  # the worker must survive anything a receiver does
                log.exception("alert webhook worker error")
            finally:
                self._queue.task_done()

    def _deliver(self, session: Any, record: Mapping[str, Any]) -> Delivery:
        """POST with retries on timeouts, connection errors, 429 and 5xx; not on other 4xx."""
        import requests
        from tenacity import (
            RetryError,
            Retrying,
            retry_if_exception_type,
            stop_after_attempt,
            wait_exponential,
        )

        cfg = self.webhook
        assert cfg is not None
        body = json.dumps(webhook_payload(record), ensure_ascii=False).encode("utf-8")
        started = time.monotonic()
        attempts = 0
        last_status: int | None = None

        class _Retryable(Exception):
            pass

        def post_once() -> int:
            nonlocal attempts, last_status
            attempts += 1
            headers = {"Content-Type": "application/json", "User-Agent": "pair-trader-alerts/1"}
            if cfg.secret:
                from api_security import sign_request

                headers.update(sign_request("POST", cfg.signed_path, body, cfg.secret))
            try:
                response = session.post(
                    cfg.url,
                    data=body,
                    headers=headers,
                    timeout=(cfg.connect_timeout_s, cfg.read_timeout_s),
                    allow_redirects=False,
                )
            except requests.RequestException as exc:
                last_status = None
                raise _Retryable(type(exc).__name__) from exc
            last_status = response.status_code
            if response.status_code == 429 or response.status_code >= 500:
                raise _Retryable(f"HTTP {response.status_code}")
            return response.status_code

        error: str | None = None
        status: int | None = None
        try:
            for attempt in Retrying(
                stop=stop_after_attempt(cfg.attempts),
                wait=wait_exponential(multiplier=cfg.backoff_s, max=4.0),
                retry=retry_if_exception_type(_Retryable),
                reraise=False,
            ):
                with attempt:
                    status = post_once()
        except RetryError as exc:
            cause = exc.last_attempt.exception()
            error = str(cause) if cause is not None else "failed"
        elapsed = time.monotonic() - started
        ok = status is not None and 200 <= status < 300
        if status is not None and not ok:
            error = f"HTTP {status}"
        if not ok:
            log.error(
                "alert webhook delivery to %s failed after %d attempt(s) in %.1f s: %s; "
                "the alert %r is in alerts.log",
                display_url(cfg.url),
                attempts,
                elapsed,
                error,
                record["title"],
            )
        return Delivery(str(record["title"]), ok, last_status, attempts, elapsed, error)

    # --- Shutdown ----------------------------------------------------------------------------
    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every queued alert was delivered or given up; False if `timeout_s` ran out."""
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout_s: float | None = None) -> bool:
        """Report suppressed repeats, deliver what is pending within `timeout_s` (default
        `ALERT_FLUSH_TIMEOUT_S` or 5 s) and stop the worker. True if nothing was left behind."""
        if self._closed:
            return True
        self._closed = True
        if timeout_s is None:
            timeout_s = _flush_timeout()
        with self._lock:
            pending = self._coalescer.pending()
        for old, count in pending:
            self._emit(old, count, summary=True)
        done = self.flush(timeout_s)
        if self._worker is not None and self._worker.is_alive():
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)
        if not done:
            log.error(
                "alert webhook: %d alert(s) not delivered within %.1f s at shutdown "
                "(they are in alerts.log)",
                self._queue.unfinished_tasks,
                timeout_s,
            )
        return done


def _flush_timeout() -> float:
    try:
        return max(float(os.environ.get(ENV_FLUSH_TIMEOUT, "5")), 0.0)
    except ValueError:
        return 5.0


# --- The process-wide dispatcher --------------------------------------------------------------
_dispatchers: dict[Path, AlertDispatcher] = {}
_dispatchers_lock = threading.Lock()


def get_dispatcher(home: str | os.PathLike[str] | None = None) -> AlertDispatcher:
    """The dispatcher for `home` (TRADING_HOME by default), created on first use and closed at
    exit; its webhook settings are read from the environment then."""
    root = paths(home).home.resolve()
    with _dispatchers_lock:
        dispatcher = _dispatchers.get(root)
        if dispatcher is None or dispatcher._closed:
            dispatcher = AlertDispatcher(root)
            _dispatchers[root] = dispatcher
            atexit.register(dispatcher.close)
        return dispatcher


def close_all(timeout_s: float | None = None) -> bool:
    """Close every process-wide dispatcher (a loop's orderly shutdown; also run at exit)."""
    with _dispatchers_lock:
        open_ones = list(_dispatchers.values())
        _dispatchers.clear()
    return all([d.close(timeout_s) for d in open_ones])


def dispatch(alert: Alert, *, home: str | os.PathLike[str] | None = None) -> DispatchResult:
    """Route `alert` through the process-wide dispatcher of `home`."""
    return get_dispatcher(home).dispatch(alert)


def send(
    severity: str | Severity,
    source: str,
    title: str,
    message: str,
    details: Mapping[str, Any] | None = None,
    *,
    home: str | os.PathLike[str] | None = None,
) -> DispatchResult:
    """Build an `Alert` and dispatch it: the one call every alert producer uses."""
    alert = Alert(Severity.parse(severity), source, title, message, dict(details or {}))
    return dispatch(alert, home=home)


def breaker_alert_hook(
    home: str | os.PathLike[str] | None = None,
) -> Callable[[BreakerTransition], None]:
    """`on_state_change` for an `error_handling.CircuitBreaker`: opening is CRITICAL (trading
    stops depending on it), half-open a WARNING, closing again INFO."""

    def on_change(transition: BreakerTransition) -> None:
        new = transition.new.value
        severity = {"open": Severity.CRITICAL, "half_open": Severity.WARNING}.get(
            new, Severity.INFO
        )
        send(
            severity,
            "circuit_breaker",
            f"Circuit breaker {transition.name}: {transition.old.value} -> {new}",
            f"circuit breaker {transition.name} is {new} after {transition.failures} "
            f"consecutive failure(s)"
            + (f"; last error: {transition.last_error}" if transition.last_error else ""),
            {
                "breaker": transition.name,
                "from": transition.old.value,
                "to": new,
                "failures": transition.failures,
            },
            home=home,
        )

    return on_change
