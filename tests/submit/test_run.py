"""SubmitRun: the order of one submission, stage by stage, with real parts (the SDK over HTTP to the emulator,
real files, an in-memory object store for a remote ``staging_path``)."""

from __future__ import annotations

import inspect
import uuid
from dataclasses import fields
from typing import Any

import pytest
from airflow.sdk import ObjectStoragePath

from airflow_gemini_batch.exceptions import GeminiBatchChangedInputError
from airflow_gemini_batch.hooks.gemini import GeminiBatchHook
from airflow_gemini_batch.operators.submit import GeminiBatchSubmitOperator
from airflow_gemini_batch.submit.run import DEFAULT_EMBEDDING_MODEL, SubmitRun, SubmitSettings
from airflow_gemini_batch.submit.staging import Staging
from tests.task_state import DictStateStore

WAIT_ARGUMENTS = {
    "cancel_on_kill",
    "gemini_conn_id",
    "wait_for_completion",
    "deferrable",
    "wait_timeout",
    "allow_partial",
}


class RunTI:
    dag_id, task_id, run_id, map_index = "products", "submit", "manual__2026-01-01", -1

    def xcom_push(self, key: str, value: Any) -> None:  # the run itself pushes nothing
        raise AssertionError("SubmitRun must not push XCom; the operator does")


def _context(store: DictStateStore) -> dict[str, Any]:
    return {"ti": RunTI(), "task_state_store": store}


def test_settings_are_the_operator_arguments_with_the_same_defaults() -> None:
    params = inspect.signature(GeminiBatchSubmitOperator.__init__).parameters
    for field in fields(SubmitSettings):
        assert field.name in params, field.name
        assert params[field.name].default == field.default, field.name
    assert set(params) - set(SubmitSettings.names()) - {"self", "kwargs"} == WAIT_ARGUMENTS


def test_operator_validates_once_and_keeps_each_argument_as_an_attribute() -> None:
    op = GeminiBatchSubmitOperator(task_id="t", requests="{{ ti.xcom_pull('rows') }}", task="embed")
    assert op.model == DEFAULT_EMBEDDING_MODEL  # the task's default model, filled when the operator is built
    assert all(hasattr(op, name) for name in op.template_fields)
    op.requests = ["rendered"]  # what template rendering does before execute
    assert SubmitSettings.of(op).requests == ["rendered"]
    with pytest.raises(ValueError, match="exactly one of sql, source_table, requests, input_path"):
        GeminiBatchSubmitOperator(task_id="t", requests=["a"], input_path="rows.jsonl")
    with pytest.raises(ValueError, match="on_invalid_row"):
        GeminiBatchSubmitOperator(task_id="t", requests=["a"], on_invalid_row="ignore")
    with pytest.raises(ValueError, match="on_failed_job"):
        GeminiBatchSubmitOperator(task_id="t", requests=["a"], on_failed_job="retry")
    assert (
        GeminiBatchSubmitOperator(task_id="t", requests=["a"], on_failed_job="fail").on_failed_job == "fail"
    )


def test_build_reads_validates_and_shards_without_any_api_call(tmp_path) -> None:
    # No such connection: the first API call (even building the client) would fail.
    run = SubmitRun(
        GeminiBatchHook("no_such_connection"), SubmitSettings(requests=["a", "b", "c"]).validated()
    )
    plan = run.build(Staging(str(tmp_path), "identity"))
    assert plan.request_count == 3 and len(plan.shards) == 1
    assert plan.shards[0].path.parent == tmp_path


def test_a_refused_changed_input_leaves_the_published_key_lists(gemini_conn, emulator) -> None:
    """The key lists the recorded jobs are reconciled against are published only after the ledger accepted
    the input, so a retry refused for a changed input leaves them as they were."""
    from airflow.sdk.io import attach
    from fsspec.implementations.memory import MemoryFileSystem

    attach(protocol="memory", fs=MemoryFileSystem())  # stands in for a bucket: the gs:// / s3:// code path
    staging_path = f"memory://staging-{uuid.uuid4().hex}"
    store, hook = DictStateStore(), GeminiBatchHook(gemini_conn)

    def settings(rows: list[str]) -> SubmitSettings:
        return SubmitSettings(
            requests=rows, staging_path=staging_path, create_retry_base_seconds=0.01
        ).validated()

    manifest = SubmitRun(hook, settings(["a", "b"])).execute(_context(store))
    keys = ObjectStoragePath(manifest["shards"][0]["keys_path"])
    published = keys.read_bytes()

    with pytest.raises(GeminiBatchChangedInputError):
        SubmitRun(hook, settings(["a", "b", "c"])).execute(_context(store))
    assert keys.read_bytes() == published
    assert len(emulator.control.jobs()) == 1


def test_on_kill_cancels_only_the_jobs_this_run_created(gemini_conn, emulator, tmp_path) -> None:
    store, hook = DictStateStore(), GeminiBatchHook(gemini_conn)
    settings = SubmitSettings(requests=["a"], staging_path=str(tmp_path)).validated()
    first = SubmitRun(hook, settings)
    first.execute(_context(store))
    reattached = SubmitRun(hook, settings)
    reattached.execute(_context(store))
    assert len(first.created_jobs) == 1 and reattached.created_jobs == []
    reattached.cancel_created_jobs()
    assert emulator.control.calls().get("batches.cancel", 0) == 0
    first.cancel_created_jobs()
    assert emulator.control.calls()["batches.cancel"] == 1
