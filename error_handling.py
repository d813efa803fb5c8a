"""The project's exceptions, a circuit breaker and retry with backoff.

`main.py` maps every `TradingError` to a one-line message and its `exit_code`; anything else is a
bug and shows a traceback only with `--debug`. This module imports nothing from the project.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


# --- Exceptions -----------------------------------------------------------------------------------
class TradingError(Exception):
    """Base of every error a user can act on; `exit_code` is what `main.py` exits with."""

    exit_code = 1


class ConfigurationError(TradingError):
    """A setting, flag, symbol or environment variable is wrong or missing."""

    exit_code = 2


class KeysRejected(ConfigurationError):
    """The broker or the market-data API refused the API keys (HTTP 401/403): no retry helps,
    the operator must fix the keys."""


class DataError(TradingError):
    """Prices could not be obtained or read (missing file, offline source, unknown ticker)."""

    exit_code = 3


class DataSourceUnavailable(DataError):
    """An online source cannot be reached; the message says to use `bundled` or `csv:`."""


class ValidationError(DataError):
    """Data was obtained but breaks a validation rule; names the rule, ticker and date."""

    exit_code = 4

    def __init__(self, rule: str, message: str, ticker: str | None = None, date: Any = None):
        self.rule, self.ticker, self.date = rule, ticker, date
        self.detail = message
        where = " ".join(str(x) for x in (ticker, _fmt_date(date)) if x is not None)
        super().__init__(f"[{rule}] {where + ': ' if where else ''}{message}")

    def __reduce__(self) -> tuple[Any, ...]:  # survive pickling (e.g. across worker processes)
        return (type(self), (self.rule, self.detail, self.ticker, self.date))


class RiskViolation(TradingError):
    """An order was refused by the risk manager; `reason` is a stable code (e.g. 'leg_notional')."""

    exit_code = 5

    def __init__(self, reason: str, message: str):
        self.reason, self.detail = reason, message
        super().__init__(f"risk check failed [{reason}]: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.reason, self.detail))


class RiskStateError(RiskViolation):
    """The risk state file (halt flag, equity peak) is unreadable or invalid: nothing trades on
    an unknown halt state. Exit 5 with the risk manager's other refusals."""

    def __init__(self, message: str):
        self.reason, self.detail = "risk_state", message
        TradingError.__init__(self, message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.detail,))


class BrokerError(TradingError):
    """The broker refused or failed a request."""

    exit_code = 6


class CircuitOpenError(BrokerError):
    """A call was refused because its circuit breaker is open."""


class StopRequested(BaseException):
    """A stop (SIGTERM, Ctrl-C) arrived while the loop waited on the broker or a data source:
    raised from the signal handler to end that wait at once, and at the next attempt a retry
    would make. A BaseException, as KeyboardInterrupt: no `except Exception` takes it for a
    failure (no retry, no halt, no breaker count)."""


class ModelIntegrityError(TradingError):
    """A model artifact does not match its registered SHA-256, pair or feature list."""

    exit_code = 7


class CredentialError(TradingError):
    """The credential store cannot be opened or changed: wrong master password, a modified or
    unreadable file, a missing name, or `cryptography` not installed."""

    exit_code = 8


class AuditIntegrityError(TradingError):
    """The audit log's hash chain is broken: a record was changed, removed or inserted."""

    exit_code = 11


class AlertDeliveryError(TradingError):
    """An alert could not be delivered to a configured sink (only `alerts test` raises it: a
    running system logs delivery failures and goes on)."""

    exit_code = 9


def _fmt_date(date: Any) -> str | None:
    if date is None:
        return None
    if hasattr(date, "date") and callable(date.date):
        return str(date.date())
    return str(date)


# --- Circuit breaker ------------------------------------------------------------------------------
class BreakerState(enum.Enum):
    CLOSED = "closed"  # calls pass; failures are counted
    OPEN = "open"  # calls are refused until reset_timeout_s has passed
    HALF_OPEN = "half_open"  # one trial call decides: success closes, failure re-opens


@dataclass(frozen=True)
class BreakerTransition:
    """A state change, handed to the `on_state_change` callback (e.g. to raise an alert)."""

    name: str
    old: BreakerState
    new: BreakerState
    failures: int
    last_error: str | None


class CircuitBreaker:
    """Stops calling a failing dependency for `reset_timeout_s`, then lets one trial call through.

    `clock` returns seconds (monotonic by default); pass another callable in tests to move time.
    Thread-safe. Exceptions in `excluded` (e.g. a business rejection) pass through uncounted.
    """

    def __init__(
        self,
        name: str,
        failure_threshold: int = 5,
        reset_timeout_s: float = 60.0,
        on_state_change: Callable[[BreakerTransition], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        excluded: tuple[type[BaseException], ...] = (),
    ):
        if failure_threshold < 1:
            raise ConfigurationError("circuit breaker failure_threshold must be >= 1")
        if reset_timeout_s <= 0:
            raise ConfigurationError("circuit breaker reset_timeout_s must be > 0")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self.on_state_change = on_state_change
        self.excluded = excluded
        self._clock = clock
        self._lock = threading.RLock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False
        self._last_error: str | None = None
        self._first_error: str | None = None

    @property
    def first_error(self) -> str | None:
        """The first error of the current run of failures (the cause, where later ones are
        consequences); None after a success."""
        return self._first_error

    @property
    def state(self) -> BreakerState:
        """Current state; an open breaker whose timeout has passed reports HALF_OPEN."""
        with self._lock:
            if (
                self._state is BreakerState.OPEN
                and self._clock() - self._opened_at >= self.reset_timeout_s
            ):
                self._transition(BreakerState.HALF_OPEN)
            return self._state

    @property
    def failures(self) -> int:
        """Consecutive failures counted since the last success."""
        return self._failures

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn` through the breaker; raises CircuitOpenError without calling it when open."""
        with self._lock:
            state = self.state
            if state is BreakerState.OPEN or (
                state is BreakerState.HALF_OPEN and self._trial_in_flight
            ):
                wait = max(0.0, self.reset_timeout_s - (self._clock() - self._opened_at))
                raise CircuitOpenError(
                    f"circuit '{self.name}' is open after {self._failures} failures "
                    f"(last: {self._last_error}); next trial in {wait:.0f}s"
                )
            if state is BreakerState.HALF_OPEN:
                self._trial_in_flight = True
        try:
            result = fn(*args, **kwargs)
        except self.excluded:
            self._end_trial()
            raise
        except Exception as exc:
            self._record_failure(exc)
            raise
        except BaseException:  # KeyboardInterrupt etc.: not a verdict, but free the trial slot
            self._end_trial()
            raise
        self._record_success()
        return result

    def reset(self) -> None:
        """Close the breaker by hand (an operator's decision)."""
        with self._lock:
            self._failures = 0
            self._first_error = None
            self._trial_in_flight = False
            self._transition(BreakerState.CLOSED)

    def _end_trial(self) -> None:
        with self._lock:
            self._trial_in_flight = False

    def _record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._first_error = None
            self._trial_in_flight = False
            self._transition(BreakerState.CLOSED)

    def _record_failure(self, exc: BaseException) -> None:
        with self._lock:
            self._failures += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
            if self._first_error is None:
                self._first_error = str(exc)
            trial_failed = self._state is BreakerState.HALF_OPEN
            self._trial_in_flight = False
            if trial_failed or self._failures >= self.failure_threshold:
                self._opened_at = self._clock()
                self._transition(BreakerState.OPEN)

    def _transition(self, new: BreakerState) -> None:
        old = self._state
        if old is new:
            return
        self._state = new
        if self.on_state_change is not None:
            # A failing callback (e.g. an alert webhook) must not turn a call's success or
            # failure into its own exception: a placed order would look failed and be retried.
            try:
                self.on_state_change(
                    BreakerTransition(self.name, old, new, self._failures, self._last_error)
                )
            except Exception:
                logging.getLogger(__name__).exception(
                    "on_state_change of circuit %r failed", self.name
                )


# --- Retry ----------------------------------------------------------------------------------------
def retry_with_backoff(
    *,
    attempts: int = 4,
    initial_s: float = 0.5,
    max_s: float = 30.0,
    jitter_s: float = 0.5,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    retry_if: Callable[[BaseException], bool] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Decorator: retry on `retry_on` (and `retry_if(exc)` when given) with exponential backoff.

    Waits initial_s * 2**n plus up to jitter_s of random jitter, capped at max_s, between at most
    `attempts` calls; the last exception is re-raised unchanged. Built on tenacity.
    """
    import tenacity  # lazily: main.py's parser (and `check` in a bare Python) imports this module

    if attempts < 1:
        raise ConfigurationError("retry attempts must be >= 1")
    condition: tenacity.retry_base = tenacity.retry_if_exception_type(retry_on)
    if retry_if is not None:
        condition = condition & tenacity.retry_if_exception(retry_if)
    return tenacity.retry(
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential_jitter(multiplier=initial_s, max=max_s, jitter=jitter_s),
        retry=condition,
        reraise=True,
        sleep=sleep,
    )
