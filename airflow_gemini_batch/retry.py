"""One retry policy for every call this provider retries itself: create, upload, download, and the trigger.

Invariant: one backoff formula. After the n-th failure the wait is ``min(max_seconds, base_seconds * 2**(n-1))``
scaled by a random factor in ``[1 - jitter, 1]``: exponential, capped, jittered so that many workers hitting
the same quota spread out instead of retrying in lockstep. Sync calls run it through tenacity (which Airflow
and google-genai already ship), the trigger's async poll loop asks :meth:`RetryPolicy.delay` for the same
number. Calls the SDK can retry itself (get, list, cancel, delete, upload start) keep the SDK's
``HttpRetryOptions``: this policy is for what the SDK does not retry (upload chunks, downloads) and for what
needs a decision between attempts (an ambiguous create, see :mod:`airflow_gemini_batch.submit.submission`).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import tenacity

from airflow_gemini_batch.hooks.transport_errors import describe_error

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable

    from airflow.sdk.types import Logger

    #: What a retry logs its warnings to: a stdlib logger or an Airflow task/hook logger.
    AnyLogger = logging.Logger | logging.LoggerAdapter[Any] | Logger

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry.

    :param attempts: calls in all, the first one included.
    :param base_seconds: the wait after the first failure (before jitter); doubles after each further one.
    :param max_seconds: the cap on one wait.
    :param jitter: the share of each wait that is random: 1.0 is "full jitter" (anywhere from 0 to the wait),
        0.25 keeps every wait within 75 to 100 % of the exponential value.
    """

    attempts: int = 6
    base_seconds: float = 2.0
    max_seconds: float = 120.0
    jitter: float = 1.0

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` consecutive failures (1 for the first)."""
        ceiling = min(self.max_seconds, self.base_seconds * 2 ** max(0, failures - 1))
        return ceiling * (1.0 - self.jitter * random.random())

    def retrying(
        self,
        *,
        retry_on: Callable[[BaseException], bool],
        what: str,
        log: AnyLogger,
        wait: Callable[[tenacity.RetryCallState], float] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> tenacity.Retrying:
        """A tenacity ``Retrying`` of this policy: at most :attr:`attempts` calls, the last error re-raised.

        :param retry_on: which exceptions are worth another attempt; any other is raised at once.
        :param what: names the call in the warning logged before each wait ("Upload for <name>").
        :param wait: replaces :meth:`delay` (gets tenacity's call state), e.g. to wait at least a settle time.
        """

        def log_retry(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            log.warning(
                "%s failed (%s); attempt %d/%d, retrying in %.1fs",
                what,
                describe_error(error)[:300] if error else "?",
                state.attempt_number,
                self.attempts,
                state.upcoming_sleep,
            )

        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=wait or (lambda state: self.delay(state.attempt_number)),
            retry=tenacity.retry_if_exception(retry_on),
            before_sleep=log_retry,
            sleep=sleep,
            reraise=True,
        )

    def call(
        self,
        fn: Callable[[], T],
        *,
        retry_on: Callable[[BaseException], bool],
        what: str,
        log: AnyLogger,
    ) -> T:
        """``fn()`` under this policy; the last (or first non-retryable) error is raised as it was."""
        return self.retrying(retry_on=retry_on, what=what, log=log)(fn)
