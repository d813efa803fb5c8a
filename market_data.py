"""Market data for the live loop under the broker's failure policy: one circuit breaker, retry
with exponential backoff (`error_handling.retry_with_backoff`, tenacity) while the source is
unavailable, no retry on rejected keys (`KeysRejected`) or after a stop (`StopRequested`).

Invariant: a stop (SIGTERM) never waits for another attempt, and a fetch in flight when it
arrives ends at once (the loop's signal handler raises `StopRequested` while `in_request`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from error_handling import (
    CircuitBreaker,
    CircuitOpenError,
    DataSourceUnavailable,
    KeysRejected,
    StopRequested,
    retry_with_backoff,
)

T = TypeVar("T")

#: Consecutive failed attempts that open the market-data breaker: the broker's market-data
#: breaker's (trading_api.BREAKER_THRESHOLDS), above one fetch's attempts, so one failed fetch
#: is retried at the loop's next interval rather than refused for BREAKER_RESET_S.
BREAKER_THRESHOLD = 5
BREAKER_RESET_S = 60.0


def data_breaker(on_change: Callable[..., None] | None = None) -> CircuitBreaker:
    """The market-data breaker: rejected keys say nothing about the source's health."""
    return CircuitBreaker(
        "market data",
        failure_threshold=BREAKER_THRESHOLD,
        reset_timeout_s=BREAKER_RESET_S,
        on_state_change=on_change,
        excluded=(KeysRejected,),
    )


@dataclass
class GuardedFetch(Generic[T]):
    """`fetch` (download and process the bars) through `breaker`, retried `attempts` times in
    all, `backoff_s` x 2^n seconds apart (no jitter: a test can bound it), on
    DataSourceUnavailable only. `stop_event` set: no further attempt, and the wait ends."""

    fetch: Callable[[], T]
    attempts: int = 3
    backoff_s: float = 0.5
    breaker: CircuitBreaker = field(default_factory=data_breaker)
    stop_event: threading.Event | None = None
    #: True while a fetch is in flight in the loop's thread (a stop signal may end it there).
    in_request: bool = False

    def stopping(self) -> bool:
        return self.stop_event is not None and self.stop_event.is_set()

    def failure_cause(self) -> str | None:
        """The first error of the breaker's run of failures, when it is not closed."""
        if self.breaker.state.value != "closed" and self.breaker.first_error:
            return f"{self.breaker.name}: {self.breaker.first_error}"
        return None

    def _pause(self, seconds: float) -> None:
        if self.stop_event is not None:
            self.stop_event.wait(seconds)
        else:
            threading.Event().wait(seconds)

    def _once(self) -> T:
        if self.stopping():
            raise StopRequested("market data: not fetched, stopping")
        self.in_request = True
        try:
            return self.breaker.call(self.fetch)
        except CircuitOpenError as exc:  # a data failure, whichever path reports it
            raise DataSourceUnavailable(str(exc)) from exc
        finally:
            self.in_request = False

    def __call__(self) -> T:
        retrying = retry_with_backoff(
            attempts=self.attempts,
            initial_s=self.backoff_s,
            jitter_s=0.0,
            retry_on=(DataSourceUnavailable,),
            retry_if=lambda _exc: not self.stopping() and self.breaker.state.value == "closed",
            sleep=self._pause,
        )
        return retrying(self._once)()


__all__ = ["BREAKER_THRESHOLD", "GuardedFetch", "data_breaker"]
