"""Typed errors, so that DAG code and callbacks can catch exactly the failure they care about.

Every class derives from :class:`GeminiBatchError`, so ``except GeminiBatchError`` still catches everything
this provider raises on purpose. Each class also carries its Airflow semantics, which the task runner acts on:

* an error a retry can only repeat (bad input, a changed input, the results breaking their contract, an SDK
  without the transport we need) is also an :class:`~airflow.sdk.exceptions.AirflowFailException`: the task
  fails at once, whatever its ``retries``;
* the wait's timeout is also an :class:`~airflow.sdk.exceptions.AirflowSensorTimeout`, in every waiting mode:
  the task fails without retries (a retry would restart the clock the user bounded), and a sensor's
  ``soft_fail=True`` turns it into a skip;
* everything else stays a plain :class:`~airflow.sdk.exceptions.AirflowException`, retried as configured.

Every message names the jobs or keys involved and, where there is one, the fix. None of them ever carries the
API key: they are built from job names, states and the API's own error messages only.
"""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSensorTimeout


class GeminiBatchError(AirflowException):
    """Base class for everything this provider raises on purpose; retried as the task's ``retries`` say."""


class GeminiBatchInputError(GeminiBatchError, AirflowFailException):
    """Input rows or parameters are invalid; raised before any paid API call is made.

    Fails without retries: the same rows and parameters fail the same way on every try.
    """


class GeminiBatchSubmitError(GeminiBatchError):
    """A batch job could not be created (e.g. quota exhausted after bounded retries).

    Retried by Airflow: a full quota frees up as running jobs finish, and jobs created before the failure stay
    recorded in the task state store, so a retry submits only the rest.
    """


class GeminiBatchQuotaError(GeminiBatchSubmitError):
    """``create`` kept answering 429 RESOURCE_EXHAUSTED through every in-process retry: no job was made.

    Separate from its base because it is *certain* that nothing was created, so the submit operator defers
    and submits the rest later (:mod:`airflow_gemini_batch.submit.admission`) instead of failing the task.
    Raised out of a submit only where no admission applies; then Airflow's retries submit the rest.
    """


class GeminiBatchChangedInputError(GeminiBatchError, AirflowFailException):
    """A retry saw different input than the recorded jobs were built from, and ``on_changed_input='fail'``.

    Fails without retries: the records do not change between tries, so every retry would refuse again; the
    fix is a decision (``on_changed_input='resubmit'`` or ``force_resubmit``).
    """


class GeminiBatchJobFailedError(GeminiBatchError):
    """One or more jobs ended FAILED.

    Retried by Airflow: a submit that waits gives the failed shards a new generation on its retry, and a
    sensor's retry re-reads the jobs (a person may have resubmitted meanwhile).
    """


class GeminiBatchJobCancelledError(GeminiBatchJobFailedError):
    """One or more jobs ended CANCELLED.

    Kept separate from a failure because a cancel is usually a person's decision (or ``cancel_on_kill``), and a
    DAG may want to treat it differently from the service rejecting the job.
    """


class GeminiBatchJobExpiredError(GeminiBatchJobFailedError):
    """One or more jobs ended EXPIRED: the service did not finish them within 48 hours.

    Separate because the usual remedy differs: resubmit smaller shards rather than fix the input.
    """


class GeminiBatchTimeoutError(GeminiBatchError, AirflowSensorTimeout):
    """The wait reached its absolute deadline while jobs were still pending.

    An ``AirflowSensorTimeout`` in every mode (poke, reschedule, deferrable, the submit operator's
    ``wait_for_completion``): it fails without retries, since a retry would wait past the timeout the user
    set, and the sensor's ``soft_fail=True`` makes it a skip. The jobs are left running, so a later run can
    still re-attach to them.
    """


class GeminiBatchTriggerEventError(GeminiBatchError):
    """A trigger event was missing or malformed; the wait's outcome is unknown, so the task must not pass.

    Retried by Airflow: a retry reads the jobs afresh instead of trusting the event.
    """


class GeminiBatchStagingError(GeminiBatchError, AirflowFailException):
    """The staging folder is not where every task of the run can reach it (key lists on one worker's disk).

    Fails without retries: a retry lands on the same deployment with the same setting; the fix is a shared
    ``staging_path``. Raised by the submit task before any paid call, or by the load when a key list is gone.
    """


class GeminiBatchResultsError(GeminiBatchError, AirflowFailException):
    """Results were loaded, but more rows failed than ``max_failed_fraction`` allows (the results contract).

    Fails without retries: every row is already loaded, and a retry reads the same responses to the same
    counts. The failed keys are in the errors table (or path).
    """


class GeminiBatchSdkChangedError(GeminiBatchError, AirflowFailException):
    """The installed google-genai no longer has the private transport this provider reads jobs through.

    Fails without retries: only another google-genai version (or a provider release) fixes it.
    """


class GeminiBatchBudgetError(GeminiBatchError, AirflowFailException):
    """The run's estimated cost exceeds ``max_cost_usd``; raised before any upload, so nothing was spent.

    Fails without retries: the same rows are estimated the same way on every try; the fix is a decision
    (a larger budget, a smaller output bound, fewer rows).
    """
