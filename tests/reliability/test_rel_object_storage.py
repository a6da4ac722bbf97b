"""Reliability: loads onto object storage (``destination_path``) that fail halfway.

The rule under test: a load that fails leaves the destination folder exactly as the previous load left it -
the same bytes in ``results.<fmt>`` and ``errors.jsonl``, and no temporary file beside them - on every backend:
the local disk, an object store through ``ObjectStoragePath`` (fsspec's in-memory store), and ``gs://`` against
the GCS emulator (staging on the same store, so the key lists are read from it too). The failures are real ones: a job of the manifest still PENDING (held by the
emulator, released for the other job, so the first shard is loaded before the second fails), and a key that
is no integer under ``key_column_type="INTEGER"``.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from airflow_gemini_batch.exceptions import GeminiBatchError, GeminiBatchInputError
from airflow_gemini_batch.operators.results import GeminiBatchLoadResultsOperator
from airflow_gemini_batch.sensors.job import GeminiBatchJobSensor
from airflow_gemini_batch.storage import object_path
from tests.reliability.helpers import StateStore, context, submit_op


@pytest.fixture(params=["local", "memory", "gcs"])
def store(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A folder for staging and results: the local disk, an object store (fsspec's in-memory one), or
    ``gs://`` through the Google provider's gcsfs file system against the GCS emulator."""
    if request.param == "local":
        return str(tmp_path)
    if request.param == "gcs":
        from tests.gcp_emulators import BUCKET

        return f"gs://{request.getfixturevalue('gcs_conn')}@{BUCKET}/rel-{uuid.uuid4().hex[:8]}"
    from airflow.sdk.io import attach
    from fsspec.implementations.memory import MemoryFileSystem

    attach(protocol="memory", fs=MemoryFileSystem())
    return f"memory://rel-{uuid.uuid4().hex[:8]}"


def snapshot(folder: str) -> dict[str, bytes]:
    """Every file of the folder (hidden ones too) and its bytes."""
    return {p.name: p.read_bytes() for p in object_path(folder).iterdir()}


def load(manifest: dict[str, Any], folder: str, **kw: Any) -> dict[str, Any]:
    op = GeminiBatchLoadResultsOperator(
        task_id="load",
        manifest=manifest,
        destination_path=folder,
        output_format="parquet",
        key_column_type="INTEGER",
        chunk_size=2,  # many writes before the failure
        **kw,
    )
    return op.execute(context(task_id="load"))  # type: ignore[arg-type]


def submit_and_wait(wh: Any, sql: str, staging: str, task_id: str) -> dict[str, Any]:
    manifest = submit_op(
        wh.conn_id,
        sql,
        staging,
        task_id=task_id,
        max_requests_per_job=5,  # type: ignore[arg-type]
    ).execute(context(StateStore(), task_id=task_id))
    GeminiBatchJobSensor(task_id="wait", manifest=manifest, poll_interval=0.05, timeout=60).execute(
        context(task_id="wait")
    )
    return manifest


def assert_previous_load_intact(folder: str, before: dict[str, bytes]) -> None:
    import pyarrow.parquet as pq

    after = snapshot(folder)
    assert sorted(after) == ["errors.jsonl", "results.parquet"], sorted(after)  # no temporary file
    assert after == before
    with (object_path(folder) / "results.parquet").open("rb") as fh:
        assert sorted(pq.read_table(fh).column("key").to_pylist()) == list(range(10))


def test_R75_a_load_that_fails_halfway_keeps_the_previous_files(
    sqlite_warehouse, gemini_conn, emulator, store
):
    wh = sqlite_warehouse
    src = wh.table("src")
    wh.create_prompts_table(src, 20)
    folder = f"{store}/results"
    first = submit_and_wait(wh, f"SELECT id, name, category FROM {src} WHERE id < 10", f"{store}/st1", "one")
    assert load(first, folder)["counts"]["succeeded"] == 10
    before = snapshot(folder)

    # The second run's jobs are held PENDING; the first one is let go, so shard 0 loads and shard 1 fails.
    emulator.control.hold_state("PENDING")
    second = submit_op(
        wh.conn_id, f"SELECT id, name, category FROM {src}", f"{store}/st2",  # type: ignore[arg-type]
        task_id="two", max_requests_per_job=10,
    ).execute(context(StateStore(), task_id="two"))  # fmt: skip
    shard0, shard1 = (s["job_name"] for s in second["shards"])
    emulator.control.release(shard0)

    with pytest.raises(GeminiBatchError, match=f"{shard1} is PENDING, not finished"):
        load(second, folder)
    assert (
        emulator.control.job(shard0)["reads"] >= 1
    )  # the first shard was read (and loaded) before the failure
    assert_previous_load_intact(folder, before)


def test_R76_a_key_that_is_no_integer_fails_the_load_and_keeps_the_previous_files(
    sqlite_warehouse, gemini_conn, emulator, store
):
    wh = sqlite_warehouse
    src = wh.table("mixed")
    wh.execute(f"CREATE TABLE {src} (id, name TEXT, category TEXT)")  # no type: SQLite keeps each value's own
    rows = [(i, f"product {i}", "tools") for i in range(10)]
    wh.execute(f"INSERT INTO {src} VALUES (?, ?, ?)", [*rows, ("sku-10", "odd one", "tools")], many=True)
    folder = f"{store}/results"
    first = submit_and_wait(
        wh, f"SELECT id, name, category FROM {src} WHERE rowid <= 10", f"{store}/st1", "one"
    )
    load(first, folder)
    before = snapshot(folder)

    second = submit_and_wait(
        wh, f"SELECT id, name, category FROM {src} ORDER BY rowid", f"{store}/st2", "two"
    )
    with pytest.raises(
        GeminiBatchInputError, match=r"Key 'sku-10' is not a 64-bit integer.*Fix: key_column_type='TEXT'"
    ):
        load(second, folder)
    assert_previous_load_intact(folder, before)


def test_R77_staging_on_gcs_reaches_a_load_on_another_worker(
    sqlite_warehouse, gemini_conn, emulator, gcs_conn, tmp_path, monkeypatch
):
    """CeleryExecutor with ``staging_path`` on ``gs://``: the submit is accepted (a temp folder would be refused,
    R-staging tests), its worker's temp dir is then gone, and the load - as on another machine - reconciles
    every key against the key lists in the bucket."""
    import shutil
    import tempfile

    from tests.gcp_emulators import BUCKET

    wh = sqlite_warehouse
    src = wh.table("src")
    wh.create_prompts_table(src, 12)
    worker_tmp = tmp_path / "submit-worker-tmp"
    worker_tmp.mkdir()
    own_tmp = tempfile.gettempdir()
    monkeypatch.setattr(tempfile, "tempdir", str(worker_tmp))  # the submit worker's own temp dir
    base = f"gs://{gcs_conn}@{BUCKET}/rel77-{uuid.uuid4().hex[:8]}"
    op = submit_op(
        wh.conn_id, f"SELECT id, name, category FROM {src}", f"{base}/staging",  # type: ignore[arg-type]
        executor="CeleryExecutor", max_requests_per_job=5,
    )  # fmt: skip
    ctx = context(StateStore())
    ctx["task"] = op
    manifest = op.execute(ctx)
    assert all(s["keys_path"].startswith(f"{base}/staging/") for s in manifest["shards"])
    assert (worker_tmp / "gemini-batch").is_dir()  # the submit worked in it
    shutil.rmtree(worker_tmp)  # another machine: nothing of the submit's local files
    monkeypatch.setattr(tempfile, "tempdir", own_tmp)

    GeminiBatchJobSensor(task_id="wait", manifest=manifest, poll_interval=0.05, timeout=60).execute(
        context(task_id="wait")
    )
    summary = load(manifest, f"{base}/results")
    assert summary["counts"] == {"succeeded": 12, "failed": 0, "invalid_output": 0, "missing": 0, "reused": 0}
    assert len(emulator.control.jobs()) == 3
