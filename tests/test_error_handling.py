"""error_handling.py: exception messages and exit codes, the circuit breaker, retry with backoff."""

from __future__ import annotations

import datetime as dt
import threading
import warnings

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from error_handling import (
    BreakerState,
    BreakerTransition,
    BrokerError,
    CircuitBreaker,
    CircuitOpenError,
    ConfigurationError,
    DataError,
    DataSourceUnavailable,
    KeysRejected,
    ModelIntegrityError,
    RiskStateError,
    RiskViolation,
    TradingError,
    ValidationError,
    retry_with_backoff,
)


class FakeClock:
    """Seconds that only move when a test moves them."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Flaky(Exception):
    """A retryable failure of a dependency."""


class Rejected(Exception):
    """A business rejection: the dependency works, the request was refused."""


class Counter:
    """A callable that records how often it ran and fails while `failing` is set."""

    def __init__(self, failing: bool = False) -> None:
        self.calls = 0
        self.failing = failing

    def __call__(self) -> str:
        self.calls += 1
        if self.failing:
            raise Flaky(f"failure {self.calls}")
        return "ok"


# --- Exceptions -----------------------------------------------------------------------------------
def all_subclasses(cls: type) -> list[type]:
    return [c for sub in cls.__subclasses__() for c in (sub, *all_subclasses(sub))]


@pytest.mark.parametrize(
    "date",
    [
        pd.Timestamp("2020-01-02 16:00", tz="America/New_York"),
        dt.datetime(2020, 1, 2, 16, 0),
        dt.date(2020, 1, 2),
        "2020-01-02",
    ],
)
def test_validation_error_message_names_rule_ticker_and_date(date):
    err = ValidationError("non_positive", "close must be > 0", ticker="AAPL", date=date)
    assert str(err) == "[non_positive] AAPL 2020-01-02: close must be > 0"
    assert (err.rule, err.ticker, err.date) == ("non_positive", "AAPL", date)


def test_validation_error_without_ticker_or_date_names_only_the_rule():
    assert str(ValidationError("empty", "no rows")) == "[empty] no rows"
    assert str(ValidationError("gap", "6 sessions", ticker="MSFT")) == "[gap] MSFT: 6 sessions"


def test_validation_error_is_a_data_error():
    assert issubclass(ValidationError, DataError)
    assert issubclass(DataSourceUnavailable, DataError)


def test_risk_violation_message_names_the_reason():
    err = RiskViolation("leg_notional", "AAPL leg 60000 > 50000")
    assert err.reason == "leg_notional"
    assert str(err) == "risk check failed [leg_notional]: AAPL leg 60000 > 50000"


def test_each_error_kind_has_its_own_nonzero_exit_code():
    own = {
        c: c.exit_code
        for c in [TradingError, *all_subclasses(TradingError)]
        if "exit_code" in vars(c)
    }
    assert set(own) >= {
        TradingError,
        ConfigurationError,
        DataError,
        ValidationError,
        RiskViolation,
        BrokerError,
        ModelIntegrityError,
    }
    assert all(code != 0 for code in own.values())
    assert len(set(own.values())) == len(own)


def test_only_the_intended_subclasses_inherit_their_parents_exit_code():
    from credential_manager import _WrongPassword  # a wrong master password: exit 8
    from trading_api import (  # broker errors defined there
        BrokerUnavailable,
        OrderIdConflict,
        OrderRejected,
    )

    inheriting = {c for c in all_subclasses(TradingError) if "exit_code" not in vars(c)}
    assert inheriting == {
        DataSourceUnavailable,
        KeysRejected,  # rejected API keys: a configuration error, exit 2
        CircuitOpenError,
        OrderRejected,
        OrderIdConflict,  # an order id found for another order: a broker error
        BrokerUnavailable,
        RiskStateError,
        _WrongPassword,
    }
    assert RiskStateError.exit_code == RiskViolation.exit_code
    assert _WrongPassword.exit_code == 8
    assert OrderRejected.exit_code == BrokerUnavailable.exit_code == BrokerError.exit_code
    assert DataSourceUnavailable.exit_code == DataError.exit_code
    assert CircuitOpenError.exit_code == BrokerError.exit_code


# --- Circuit breaker ------------------------------------------------------------------------------
def make_breaker(clock: FakeClock, **kwargs) -> CircuitBreaker:
    kwargs = {"failure_threshold": 3, "reset_timeout_s": 30.0, **kwargs}
    return CircuitBreaker("broker", clock=clock, **kwargs)


def fail_times(breaker: CircuitBreaker, n: int) -> None:
    failing = Counter(failing=True)
    for _ in range(n):
        with pytest.raises(Flaky):
            breaker.call(failing)


def open_breaker(breaker: CircuitBreaker) -> None:
    fail_times(breaker, breaker.failure_threshold)
    assert breaker.state is BreakerState.OPEN


def test_breaker_stays_closed_below_the_failure_threshold():
    breaker = make_breaker(FakeClock())
    fail_times(breaker, 2)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.failures == 2


def test_breaker_opens_after_failure_threshold_consecutive_failures():
    breaker = make_breaker(FakeClock())
    fail_times(breaker, 3)
    assert breaker.state is BreakerState.OPEN


def test_open_breaker_refuses_calls_without_calling_the_function():
    breaker = make_breaker(FakeClock())
    open_breaker(breaker)
    fn = Counter()

    with pytest.raises(CircuitOpenError, match="circuit 'broker' is open after 3 failures"):
        breaker.call(fn)
    assert fn.calls == 0


def test_circuit_open_error_is_a_broker_error():
    assert issubclass(CircuitOpenError, BrokerError)


def test_breaker_becomes_half_open_after_reset_timeout():
    clock = FakeClock()
    breaker = make_breaker(clock)
    open_breaker(breaker)

    clock.now += 29.999
    assert breaker.state is BreakerState.OPEN
    clock.now += 0.001
    assert breaker.state is BreakerState.HALF_OPEN


def test_successful_trial_closes_the_breaker():
    clock = FakeClock()
    breaker = make_breaker(clock)
    open_breaker(breaker)
    clock.now += 30

    assert breaker.call(Counter()) == "ok"
    assert breaker.state is BreakerState.CLOSED
    assert breaker.failures == 0


def test_failed_trial_reopens_the_breaker_immediately_for_a_full_timeout():
    clock = FakeClock()
    breaker = make_breaker(clock)
    open_breaker(breaker)
    clock.now += 30

    fail_times(breaker, 1)
    assert breaker.state is BreakerState.OPEN
    clock.now += 29
    assert breaker.state is BreakerState.OPEN
    clock.now += 1
    assert breaker.state is BreakerState.HALF_OPEN


def test_a_success_resets_the_failure_count():
    breaker = make_breaker(FakeClock())
    fail_times(breaker, 2)
    breaker.call(Counter())
    assert breaker.failures == 0

    fail_times(breaker, 2)
    assert breaker.state is BreakerState.CLOSED


def test_excluded_exceptions_pass_through_uncounted():
    breaker = make_breaker(FakeClock(), excluded=(Rejected,))

    def reject() -> None:
        raise Rejected("insufficient buying power")

    for _ in range(5):
        with pytest.raises(Rejected):
            breaker.call(reject)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.failures == 0


def test_excluded_exception_in_a_trial_frees_the_trial_without_deciding():
    clock = FakeClock()
    breaker = make_breaker(clock, excluded=(Rejected,))
    open_breaker(breaker)
    clock.now += 30

    def reject() -> None:
        raise Rejected("refused")

    with pytest.raises(Rejected):
        breaker.call(reject)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.call(Counter()) == "ok"
    assert breaker.state is BreakerState.CLOSED


def test_an_interrupted_trial_does_not_leave_the_breaker_refusing_forever():
    class Interrupted(BaseException):
        pass

    clock = FakeClock()
    breaker = make_breaker(clock)
    open_breaker(breaker)
    clock.now += 30

    def interrupted() -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        breaker.call(interrupted)
    assert breaker.call(Counter()) == "ok"


def test_state_changes_are_reported_in_order():
    clock = FakeClock()
    seen: list[BreakerTransition] = []
    breaker = make_breaker(clock, on_state_change=seen.append)

    open_breaker(breaker)
    clock.now += 30
    breaker.call(Counter())

    assert [(t.old, t.new) for t in seen] == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]
    assert all(t.name == "broker" for t in seen)
    assert seen[0].failures == 3
    assert seen[0].last_error == "Flaky: failure 3"  # the failure that opened it


def test_a_failing_state_change_callback_does_not_hide_the_calls_result():
    clock = FakeClock()

    def broken_alert(_: BreakerTransition) -> None:
        raise ConnectionError("webhook down")

    breaker = make_breaker(clock, on_state_change=broken_alert)
    fail_times(breaker, 3)  # the third failure raises Flaky, not ConnectionError
    clock.now += 30
    assert breaker.call(Counter()) == "ok"
    assert breaker.state is BreakerState.CLOSED


def test_only_one_trial_call_runs_while_half_open():
    clock = FakeClock()
    breaker = make_breaker(clock)
    open_breaker(breaker)
    clock.now += 30

    entered, release = threading.Event(), threading.Event()
    trial_calls = 0

    def slow_trial() -> str:
        nonlocal trial_calls
        trial_calls += 1
        entered.set()
        assert release.wait(5)
        return "ok"

    trial = threading.Thread(target=breaker.call, args=(slow_trial,))
    trial.start()
    assert entered.wait(5)

    refused: list[BaseException] = []
    others = Counter()

    def attempt() -> None:
        try:
            breaker.call(others)
        except CircuitOpenError as exc:
            refused.append(exc)

    contenders = [threading.Thread(target=attempt) for _ in range(8)]
    for t in contenders:
        t.start()
    for t in contenders:
        t.join(5)
    release.set()
    trial.join(5)

    assert trial_calls == 1
    assert others.calls == 0
    assert len(refused) == 8
    assert breaker.state is BreakerState.CLOSED


@pytest.mark.parametrize(
    "kwargs", [{"failure_threshold": 0}, {"reset_timeout_s": 0}, {"reset_timeout_s": -1}]
)
def test_breaker_rejects_nonsense_settings(kwargs):
    with pytest.raises(ConfigurationError):
        CircuitBreaker("x", **kwargs)


# --- Retry with backoff ---------------------------------------------------------------------------
def always_failing(sleeps: list[float], **kwargs) -> tuple[Counter, object]:
    fn = Counter(failing=True)
    return fn, retry_with_backoff(sleep=sleeps.append, **kwargs)(fn)


def test_retries_up_to_attempts_and_reraises_the_last_exception():
    sleeps: list[float] = []
    fn, wrapped = always_failing(sleeps, attempts=4, retry_on=(Flaky,))

    with pytest.raises(Flaky, match="failure 4"):
        wrapped()
    assert fn.calls == 4
    assert len(sleeps) == 3


def test_returns_the_first_success():
    outcomes = iter([Flaky("a"), Flaky("b"), "filled"])

    def sometimes() -> str:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    sleeps: list[float] = []
    assert retry_with_backoff(attempts=5, sleep=sleeps.append)(sometimes)() == "filled"
    assert len(sleeps) == 2


def test_does_not_retry_exceptions_of_other_types():
    sleeps: list[float] = []
    calls = 0

    @retry_with_backoff(attempts=5, retry_on=(Flaky,), sleep=sleeps.append)
    def rejected() -> None:
        nonlocal calls
        calls += 1
        raise Rejected("no")

    with pytest.raises(Rejected):
        rejected()
    assert calls == 1
    assert sleeps == []


def test_does_not_retry_when_retry_if_says_no():
    sleeps: list[float] = []
    fn, wrapped = always_failing(
        sleeps, attempts=5, retry_on=(Flaky,), retry_if=lambda exc: "failure 1" not in str(exc)
    )
    with pytest.raises(Flaky, match="failure 1"):
        wrapped()
    assert fn.calls == 1


def test_retry_if_true_retries():
    sleeps: list[float] = []
    fn, wrapped = always_failing(sleeps, attempts=3, retry_if=lambda exc: True)
    with pytest.raises(Flaky):
        wrapped()
    assert fn.calls == 3


def test_waits_double_from_initial_s_without_jitter():
    sleeps: list[float] = []
    _, wrapped = always_failing(sleeps, attempts=5, initial_s=0.5, max_s=30.0, jitter_s=0.0)
    with pytest.raises(Flaky):
        wrapped()
    assert sleeps == [0.5, 1.0, 2.0, 4.0]


def test_waits_with_jitter_stay_within_the_exponential_bounds():
    sleeps: list[float] = []
    _, wrapped = always_failing(sleeps, attempts=6, initial_s=0.5, max_s=30.0, jitter_s=0.25)
    with pytest.raises(Flaky):
        wrapped()
    for n, wait in enumerate(sleeps):
        assert 0.5 * 2**n <= wait <= min(30.0, 0.5 * 2**n + 0.25)


def test_wait_is_capped_at_max_s_jitter_included():
    sleeps: list[float] = []
    _, wrapped = always_failing(sleeps, attempts=4, initial_s=10.0, max_s=15.0, jitter_s=5.0)
    with pytest.raises(Flaky):
        wrapped()
    assert 10.0 <= sleeps[0] <= 15.0
    assert sleeps[1:] == [15.0, 15.0]


# tenacity 9.2.1 wait_exponential_jitter: max(min=0, min(initial * 2**n + uniform(0, jitter), max)).
# So the wait never exceeds max_s (jitter included), and is at least initial * 2**n unless capped.
@given(
    attempts=st.integers(1, 8),
    initial_s=st.floats(0.001, 10.0),
    max_s=st.floats(0.001, 100.0),
    jitter_s=st.floats(0.0, 5.0),
)
def test_every_wait_is_exponential_plus_jitter_capped_at_max(attempts, initial_s, max_s, jitter_s):
    sleeps: list[float] = []
    fn, wrapped = always_failing(
        sleeps, attempts=attempts, initial_s=initial_s, max_s=max_s, jitter_s=jitter_s
    )
    with pytest.raises(Flaky):
        wrapped()

    assert fn.calls == attempts
    assert len(sleeps) == attempts - 1
    for n, wait in enumerate(sleeps):
        base = initial_s * 2**n
        assert min(base, max_s) <= wait <= min(base + jitter_s, max_s)


def test_building_a_retry_decorator_emits_no_deprecation_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        retry_with_backoff(initial_s=0.25)


def test_retry_rejects_zero_attempts():
    with pytest.raises(ConfigurationError):
        retry_with_backoff(attempts=0)


def test_errors_with_extra_fields_survive_pickling():
    """A ValidationError or RiskViolation raised in a worker process reaches the parent intact."""
    import pickle

    from error_handling import RiskViolation, ValidationError

    err = pickle.loads(  # noqa: S301 - our own bytes
        pickle.dumps(ValidationError("non_positive", "close is -1", "AAPL", "2020-01-02"))
    )
    assert (err.rule, err.ticker, str(err)) == (
        "non_positive",
        "AAPL",
        "[non_positive] AAPL 2020-01-02: close is -1",
    )
    risk = pickle.loads(  # noqa: S301 - our own bytes
        pickle.dumps(RiskViolation("leg_notional", "AAPL leg $60,000 > $50,000"))
    )
    assert risk.reason == "leg_notional" and str(risk).startswith(
        "risk check failed [leg_notional]"
    )
