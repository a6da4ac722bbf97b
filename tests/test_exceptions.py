"""The exceptions' Airflow semantics, as Airflow 3.3's real task runner applies them in ``dag.test()``.

Deterministic errors (input, validation, changed input, results contract, a changed SDK) fail at once whatever
``retries`` says; the wait's timeout is an ``AirflowSensorTimeout`` (not retried either); everything else is
retried. All of them are still caught by ``except GeminiBatchError``.
"""

from __future__ import annotations

import datetime
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSensorTimeout

from airflow_gemini_batch import exceptions
from airflow_gemini_batch.exceptions import (
    GeminiBatchBudgetError,
    GeminiBatchChangedInputError,
    GeminiBatchError,
    GeminiBatchInputError,
    GeminiBatchJobCancelledError,
    GeminiBatchJobExpiredError,
    GeminiBatchJobFailedError,
    GeminiBatchQuotaError,
    GeminiBatchResultsError,
    GeminiBatchSdkChangedError,
    GeminiBatchStagingError,
    GeminiBatchSubmitError,
    GeminiBatchTimeoutError,
    GeminiBatchTriggerEventError,
)

if TYPE_CHECKING:
    from collections.abc import Callable

FAIL_AT_ONCE = [
    GeminiBatchInputError,
    GeminiBatchChangedInputError,
    GeminiBatchResultsError,
    GeminiBatchSdkChangedError,
    GeminiBatchStagingError,
    GeminiBatchBudgetError,
]
RETRIED = [
    GeminiBatchError,
    GeminiBatchSubmitError,
    GeminiBatchQuotaError,
    GeminiBatchJobFailedError,
    GeminiBatchJobCancelledError,
    GeminiBatchJobExpiredError,
    GeminiBatchTriggerEventError,
]


def test_every_class_is_classified_and_says_why() -> None:
    ours = {
        obj
        for obj in vars(exceptions).values()
        if isinstance(obj, type)
        and issubclass(obj, GeminiBatchError)
        and obj.__module__ == exceptions.__name__
    }
    assert ours == {*FAIL_AT_ONCE, *RETRIED, GeminiBatchTimeoutError}
    for cls in ours - {GeminiBatchError, GeminiBatchJobCancelledError, GeminiBatchJobExpiredError}:
        doc = cls.__doc__ or ""
        assert "retries" in doc or "Retried" in doc, (
            f"{cls.__name__}'s docstring must say why it (is not) retried"
        )


@pytest.mark.parametrize("cls", FAIL_AT_ONCE)
def test_deterministic_errors_are_fail_exceptions(cls: type[Exception]) -> None:
    assert issubclass(cls, GeminiBatchError) and issubclass(cls, AirflowFailException)


@pytest.mark.parametrize("cls", RETRIED)
def test_other_errors_are_plain_airflow_exceptions(cls: type[Exception]) -> None:
    assert issubclass(cls, AirflowException)
    assert not issubclass(cls, (AirflowFailException, AirflowSensorTimeout))


def test_the_timeout_is_a_sensor_timeout() -> None:
    assert issubclass(GeminiBatchTimeoutError, GeminiBatchError)
    assert issubclass(GeminiBatchTimeoutError, AirflowSensorTimeout)


def _tries(register_dag: Callable[[Any], Any], error: type[Exception]) -> tuple[str, int]:
    """``dag.test()`` one task that raises ``error`` with ``retries=2``: its final state and try number."""
    from airflow.models import TaskInstance
    from airflow.sdk import DAG, task
    from airflow.utils.session import create_session
    from sqlalchemy import select

    dag_id = f"exceptions_{error.__name__}_{uuid.uuid4().hex[:6]}"
    with DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
        default_args={"retries": 2, "retry_delay": datetime.timedelta(0)},
    ) as dag:

        @task
        def fails() -> None:
            raise error("raised on purpose by the test")

        fails()

    register_dag(dag)
    run = dag.test()
    with create_session() as session:
        ti = session.scalars(
            select(TaskInstance).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run.run_id)
        ).one()
        return str(ti.state), ti.try_number


@pytest.mark.parametrize(
    ("error", "tries"),
    [
        (GeminiBatchInputError, 1),
        (GeminiBatchChangedInputError, 1),
        (GeminiBatchResultsError, 1),
        (GeminiBatchTimeoutError, 1),
        (GeminiBatchSubmitError, 3),
        (GeminiBatchJobFailedError, 3),
    ],
)
def test_the_task_runner_retries_only_what_a_retry_can_fix(
    register_dag: Callable[[Any], Any], error: type[Exception], tries: int
) -> None:
    assert _tries(register_dag, error) == ("failed", tries)
