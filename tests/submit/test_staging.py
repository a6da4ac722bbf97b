"""Staging across workers: the deployment-wide default, the refusal of a machine-local folder on a
distributed executor (before any paid call), and the load's error when a key list is not where it looked."""

from __future__ import annotations

import tempfile

import pytest

from airflow_gemini_batch.exceptions import GeminiBatchStagingError
from airflow_gemini_batch.results.reconcile import iter_key_lines
from airflow_gemini_batch.submit.staging import (
    check_reachable_by_other_workers,
    default_staging_uri,
    staging_uri,
)
from tests.conftest import inline_requests  # noqa: F401  (conftest sets the Airflow home first)


def test_the_operator_setting_wins_then_the_deployment_default_then_the_temp_folder(monkeypatch):
    monkeypatch.delenv("AIRFLOW__GEMINI_BATCH__STAGING_PATH", raising=False)
    assert staging_uri("s3://b/p", "abc") == "s3://b/p"
    assert staging_uri(None, "abc") == default_staging_uri("abc")
    monkeypatch.setenv("AIRFLOW__GEMINI_BATCH__STAGING_PATH", "gs://shared/staging/")
    assert staging_uri(None, "abc") == "gs://shared/staging/abc"  # one folder per task instance
    assert staging_uri("file:///mnt/nfs/x", "abc") == "file:///mnt/nfs/x"


@pytest.mark.parametrize(
    "executor",
    [
        "CeleryExecutor",
        "KubernetesExecutor",
        "airflow.providers.celery.executors.celery_executor.CeleryExecutor",
    ],
)
def test_a_temp_folder_is_refused_on_a_distributed_executor(executor):
    with pytest.raises(GeminiBatchStagingError, match=r"Nothing was submitted.*staging_path") as err:
        check_reachable_by_other_workers(default_staging_uri("abc"), executor)
    assert "AIRFLOW__GEMINI_BATCH__STAGING_PATH" in str(err.value)


def test_what_every_worker_reaches_is_accepted(tmp_path):
    check_reachable_by_other_workers(default_staging_uri("abc"), "LocalExecutor")
    check_reachable_by_other_workers("s3://bucket/prefix", "CeleryExecutor")
    check_reachable_by_other_workers("gs://google_cloud_default@bucket/prefix", "CeleryExecutor")
    check_reachable_by_other_workers("gs://bucket/prefix", "KubernetesExecutor")
    check_reachable_by_other_workers("/mnt/nfs/gemini", "CeleryExecutor")  # a deliberate shared mount


def test_the_configured_executor_is_used_when_the_task_names_none(monkeypatch):
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor,LocalExecutor")
    with pytest.raises(GeminiBatchStagingError):
        check_reachable_by_other_workers(f"{tempfile.gettempdir()}/gemini-batch/x", None)
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
    check_reachable_by_other_workers(f"{tempfile.gettempdir()}/gemini-batch/x", None)


def test_a_missing_key_list_says_where_it_looked_and_why(tmp_path):
    missing = str(tmp_path / "keys-00000.jsonl")
    with pytest.raises(GeminiBatchStagingError) as err:
        list(iter_key_lines(missing))
    text = str(err.value)
    assert missing in text and "local disk" in text and "staging_path" in text and "clear the submit" in text


def test_a_celery_task_with_the_default_staging_is_refused_before_any_call(
    sqlite_warehouse, gemini_conn, emulator
):
    """The submit operator's own run, with ``executor="CeleryExecutor"`` on the task: refused, and the
    emulator saw no upload and no create."""
    from airflow_gemini_batch.operators import GeminiBatchSubmitOperator
    from tests.operators.test_submit import _context

    table = sqlite_warehouse.table("staging_refused")
    sqlite_warehouse.create_prompts_table(table, 5)
    op = GeminiBatchSubmitOperator(
        task_id="submit", sql=f"SELECT id, name FROM {table}", source_conn_id=sqlite_warehouse.conn_id,
        prompt_template="Describe {name}", executor="CeleryExecutor",
    )  # fmt: skip
    ctx = _context()
    ctx["task"] = op
    with pytest.raises(GeminiBatchStagingError, match="CeleryExecutor"):
        op.execute(ctx)  # type: ignore[arg-type]
    calls = emulator.control.calls()
    assert calls.get("files.upload_start", 0) == 0 and calls.get("batches.create", 0) == 0


def test_shard_files_go_and_key_lists_stay_with_local_staging(tmp_path):
    from airflow_gemini_batch.submit.staging import Staging

    staging = Staging(str(tmp_path), "abc123")
    for index in range(2):
        staging.shard_path(index).write_bytes(b"{}\n")
        staging.local_keys_path(index).write_bytes(b'"k"\n')
    staging.remove_shard(0)
    assert not staging.shard_path(0).exists() and staging.shard_path(1).exists()
    staging.remove_local_files()
    staging.remove_local_files()  # idempotent
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys-00000.jsonl", "keys-00001.jsonl"]


def test_with_remote_staging_the_local_folder_goes_and_the_create_marker_is_remote(tmp_path):
    import uuid

    from airflow.sdk.io import attach
    from fsspec.implementations.memory import MemoryFileSystem

    from airflow_gemini_batch.storage import is_file
    from airflow_gemini_batch.submit.staging import Staging

    attach(protocol="memory", fs=MemoryFileSystem())  # stands in for a bucket: the gs:// / s3:// code path

    remote = f"memory://staging-{uuid.uuid4().hex}/run"
    staging = Staging(remote, f"h{uuid.uuid4().hex[:8]}")
    staging.shard_path(0).write_bytes(b"{}\n")
    staging.local_keys_path(0).write_bytes(b'"k"\n')
    staging.publish(staging.local_keys_path(0), staging.keys_uri(0))
    assert not staging.creates_attempted()
    staging.record_create_attempt()
    staging.record_create_attempt()  # written once; a second try finds it
    assert staging.creates_attempted() and staging.create_marker_uri.startswith(remote)
    staging.remove_local_files()
    assert not staging.local_dir.exists()  # nothing of this run stays on the worker's disk
    assert is_file(staging.keys_uri(0))  # the published key list stays where the load reads it
    assert not Staging(remote, "another-task").creates_attempted()  # one marker per task instance


def test_key_lists_are_published_to_gcs_and_read_back_from_there(gcs_conn, tmp_path):
    """A ``gs://`` staging folder (the provider's gcsfs, GCS emulator): the key list is written locally next to
    its shard, published once, and the load reads it from the bucket; a missing one names the staging storage."""
    import uuid

    from airflow_gemini_batch.storage import is_file
    from airflow_gemini_batch.submit.staging import Staging
    from tests.gcp_emulators import BUCKET

    uri = f"gs://{gcs_conn}@{BUCKET}/staging-{uuid.uuid4().hex[:8]}"
    staging = Staging(uri, f"identity-{uuid.uuid4().hex[:8]}")
    assert staging.remote and staging.keys_uri(0) == f"{uri}/keys-00000.jsonl"
    staging.local_keys_path(0).write_bytes(b'"0"\n"1"\n"2"\n')
    assert staging.publish(staging.local_keys_path(0), staging.keys_uri(0)) == staging.keys_uri(0)
    assert is_file(staging.keys_uri(0))
    staging.local_keys_path(0).unlink()  # the load runs elsewhere: only the bucket has it
    assert [value for _, value in iter_key_lines(staging.keys_uri(0))] == ["0", "1", "2"]

    with pytest.raises(GeminiBatchStagingError, match="not on the staging storage") as err:
        list(iter_key_lines(staging.keys_uri(1)))
    assert staging.keys_uri(1) in str(err.value)
