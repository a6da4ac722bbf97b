"""Typed errors, so that DAG code and callbacks can catch exactly the failure they care about.

Every message names the jobs or keys involved and, where there is one, the fix. None of them ever carries the
API key: they are built from job names, states and the API's own error messages only.
"""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowException


class GeminiBatchError(AirflowException):
    """Base class for everything this provider raises on purpose."""


class GeminiBatchInputError(GeminiBatchError):
    """Input rows or parameters are invalid; raised before any paid API call is made."""


class GeminiBatchSubmitError(GeminiBatchError):
    """A batch job could not be created (e.g. quota exhausted after bounded retries).

    Jobs created before the failure stay recorded in the task state store, so a retry submits only the rest.
    """


class GeminiBatchChangedInputError(GeminiBatchError):
    """A retry saw different input than the recorded jobs were built from, and ``on_changed_input='fail'``."""


class GeminiBatchJobFailedError(GeminiBatchError):
    """One or more jobs ended FAILED."""


class GeminiBatchJobCancelledError(GeminiBatchJobFailedError):
    """One or more jobs ended CANCELLED.

    Kept separate from a failure because a cancel is usually a person's decision (or ``cancel_on_kill``), and a
    DAG may want to treat it differently from the service rejecting the job.
    """


class GeminiBatchJobExpiredError(GeminiBatchJobFailedError):
    """One or more jobs ended EXPIRED: the service did not finish them within 48 hours.

    Separate because the usual remedy differs: resubmit smaller shards rather than fix the input.
    """


class GeminiBatchTimeoutError(GeminiBatchError):
    """The wait reached its absolute deadline while jobs were still pending."""


class GeminiBatchTriggerEventError(GeminiBatchError):
    """A trigger event was missing or malformed; the wait's outcome is unknown, so the task must not pass."""


class GeminiBatchResultsError(GeminiBatchError):
    """Results were loaded, but more rows failed than ``max_failed_fraction`` allows."""
