"""The provider's one retry policy: the backoff formula, and the tenacity loop the sync calls run through.

The sleeps are recorded instead of slept (tenacity's ``sleep`` hook), so these tests check the exact waits
without taking them. The policy's use against the emulator is in tests/hooks (download), tests/submit
(create, upload) and tests/triggers (the poll loop).
"""

from __future__ import annotations

import logging
import random

import pytest

from airflow_gemini_batch.retry import RetryPolicy
from airflow_gemini_batch.submit.submission import CreateRetry
from airflow_gemini_batch.triggers.job import BACKOFF_JITTER, MAX_BACKOFF_FACTOR, GeminiBatchJobTrigger


class Flaky:
    """Raises ``errors`` one by one, then returns ``"ok"``."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def _policy_loop(policy: RetryPolicy, fn: Flaky, sleeps: list[float]) -> str:
    retrying = policy.retrying(
        retry_on=lambda e: isinstance(e, ConnectionError),
        what="Test call",
        log=logging.getLogger("test_retry"),
        sleep=sleeps.append,
    )
    return retrying(fn)


@pytest.mark.parametrize("jitter", [0.0, 0.25, 1.0])
def test_delay_is_capped_exponential_with_jitter(jitter: float) -> None:
    policy = RetryPolicy(base_seconds=2.0, max_seconds=20.0, jitter=jitter)
    random.seed(12)
    for failures, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (5, 20.0), (9, 20.0)]:
        for _ in range(200):
            assert (1 - jitter) * ceiling <= policy.delay(failures) <= ceiling
    assert RetryPolicy(base_seconds=3.0, jitter=0.0).delay(1) == 3.0


def test_transient_errors_are_retried_with_the_policy_waits(caplog: pytest.LogCaptureFixture) -> None:
    sleeps: list[float] = []
    fn = Flaky(ConnectionError("reset"), ConnectionError("reset again"))
    policy = RetryPolicy(attempts=4, base_seconds=1.0, jitter=0.0)
    with caplog.at_level(logging.WARNING, logger="test_retry"):
        assert _policy_loop(policy, fn, sleeps) == "ok"
    assert fn.calls == 3 and sleeps == [1.0, 2.0]
    assert "Test call failed (ConnectionError: reset); attempt 1/4, retrying in 1.0s" in caplog.text


def test_the_last_error_is_raised_as_it_was_after_the_attempts() -> None:
    sleeps: list[float] = []
    last = ConnectionError("third")
    fn = Flaky(ConnectionError("first"), ConnectionError("second"), last, ConnectionError("never"))
    with pytest.raises(ConnectionError) as info:
        _policy_loop(RetryPolicy(attempts=3, base_seconds=0.5, jitter=0.0), fn, sleeps)
    assert info.value is last and fn.calls == 3 and sleeps == [0.5, 1.0]


def test_an_error_not_worth_retrying_is_raised_at_once() -> None:
    sleeps: list[float] = []
    fn = Flaky(ValueError("permanent"))
    with pytest.raises(ValueError, match="permanent"):
        _policy_loop(RetryPolicy(attempts=5), fn, sleeps)
    assert fn.calls == 1 and sleeps == []


def test_create_retry_keeps_its_constructor_and_settle_time() -> None:
    retry = CreateRetry(3, 0.5)  # what the submit operator builds from its create_retry_* parameters
    assert (retry.attempts, retry.base_seconds, retry.max_seconds, retry.jitter) == (3, 0.5, 120.0, 1.0)
    assert isinstance(retry, RetryPolicy)
    assert retry.settle_seconds == 2.5
    assert CreateRetry().settle_seconds == 10.0
    assert CreateRetry(base_seconds=60.0, max_seconds=100.0).settle_seconds == 100.0


def test_the_trigger_backs_off_by_the_same_policy_within_its_deadline() -> None:
    trigger = GeminiBatchJobTrigger(job_names=["batches/a"], deadline=1_000_000.0, poll_interval=10.0)
    assert trigger.backoff == RetryPolicy(
        base_seconds=10.0, max_seconds=10.0 * MAX_BACKOFF_FACTOR, jitter=BACKOFF_JITTER
    )
    now = 0.0
    assert trigger._next_delay(0, now) == 10.0  # a healthy round waits the poll interval
    for failing_rounds, ceiling in [(1, 10.0), (2, 20.0), (4, 80.0), (10, 80.0)]:
        for _ in range(50):
            assert (1 - BACKOFF_JITTER) * ceiling <= trigger._next_delay(failing_rounds, now) <= ceiling
    assert trigger._next_delay(5, now=1_000_000.0 - 3.0) == 3.0  # never past the deadline
