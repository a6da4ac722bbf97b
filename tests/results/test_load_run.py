"""LoadRun: the order of one load, checked where no other test looks (the operator tests run it end to end)."""

from __future__ import annotations

import inspect
from dataclasses import fields

import pytest

from airflow_gemini_batch.exceptions import GeminiBatchInputError
from airflow_gemini_batch.manifest import MANIFEST_KIND
from airflow_gemini_batch.operators.results import GeminiBatchLoadResultsOperator
from airflow_gemini_batch.results.load_run import LoadRun, LoadSettings

MANIFEST = {
    "kind": MANIFEST_KIND,
    "gemini_conn_id": "no_such_connection",  # any API call (even making the client) would fail on it
    "shards": [{"index": 0, "job_name": "batches/one", "keys_path": "/nowhere/keys-00000.jsonl"}],
}


def test_settings_are_the_operator_arguments_with_the_same_defaults() -> None:
    params = inspect.signature(GeminiBatchLoadResultsOperator.__init__).parameters
    for field in fields(LoadSettings):
        assert field.name in params, field.name
        assert params[field.name].default == field.default, field.name
    assert set(params) - set(LoadSettings.names()) - {"self", "kwargs"} == {"manifest", "gemini_conn_id"}


def test_operator_validates_once_and_keeps_each_argument_as_an_attribute() -> None:
    op = GeminiBatchLoadResultsOperator(task_id="t", manifest=MANIFEST, destination_path="/tmp/out")
    assert op.output_columns == {} and isinstance(op.max_failed_fraction, float)
    assert all(hasattr(op, name) for name in op.template_fields)
    with pytest.raises(GeminiBatchInputError, match="exactly one of destination_table and destination_path"):
        GeminiBatchLoadResultsOperator(task_id="t", manifest=MANIFEST)
    with pytest.raises(GeminiBatchInputError, match="max_failed_fraction"):
        GeminiBatchLoadResultsOperator(
            task_id="t", manifest=MANIFEST, destination_path="/o", max_failed_fraction=2
        )


def test_the_manifest_is_checked_when_the_run_is_made() -> None:
    settings = LoadSettings(destination_path="/tmp/out").validated()
    with pytest.raises(GeminiBatchInputError, match="submit operator's manifest"):
        LoadRun(["not", "a", "manifest"], settings)
    broken = {**MANIFEST, "shards": [{"index": 0, "keys_path": "/k"}]}
    with pytest.raises(GeminiBatchInputError, match="lacks job_name"):
        LoadRun(broken, settings)
    assert LoadRun(MANIFEST, settings).gemini_conn_id == "no_such_connection"
    assert LoadRun(MANIFEST, settings, gemini_conn_id="mine").gemini_conn_id == "mine"


def test_the_destination_is_validated_before_any_job_is_read(tmp_path) -> None:
    run = LoadRun(MANIFEST, LoadSettings(destination_path=str(tmp_path), output_format="xml").validated())
    with pytest.raises(ValueError, match="output_format"):
        run.execute()  # the sink refuses before the hook (whose connection does not exist) is ever used
    assert "hook" not in vars(run)
