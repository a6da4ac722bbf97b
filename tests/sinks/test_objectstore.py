"""The object-storage sink: files written whole or not at all, on the local disk and on an object store, and
integer keys as they really travel (strings on the wire and in the key lists).

Each backend test runs on the local disk, on fsspec's in-memory store attached as an Airflow object store,
and on ``gs://`` through the Google provider's gcsfs file system against the GCS emulator
(``gs://google_cloud_default@test-bucket/...``, the ``gcs_conn`` fixture of ``tests/gcp_emulators.py``).
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import orjson
import pytest

from airflow_gemini_batch.exceptions import GeminiBatchInputError
from airflow_gemini_batch.results.parsing import FAILED, SUCCEEDED, ResultRow
from airflow_gemini_batch.sinks import ObjectStorageSink
from airflow_gemini_batch.sinks.objectstore import integer_key
from airflow_gemini_batch.storage import object_path


def ok(key: Any, text: str = "t", **kw: Any) -> ResultRow:
    return ResultRow(key, SUCCEEDED, text, total_tokens=3, job_name="batches/1", **kw)


def bad(key: Any) -> ResultRow:
    return ResultRow(key, FAILED, error_code=500, error_message=f"no {key}", job_name="batches/1")


def load(sink: ObjectStorageSink, *chunks: list[ResultRow]) -> None:
    sink.open()
    for chunk in chunks:
        sink.write(chunk)
    sink.close()


@pytest.fixture
def memory_folder() -> str:
    from airflow.sdk.io import attach
    from fsspec.implementations.memory import MemoryFileSystem

    attach(protocol="memory", fs=MemoryFileSystem())
    return f"memory://bucket-{uuid.uuid4().hex[:8]}/out"


@pytest.fixture
def gcs_folder(gcs_conn: str) -> str:
    from tests.gcp_emulators import BUCKET

    return f"gs://{gcs_conn}@{BUCKET}/sink-{uuid.uuid4().hex[:8]}/out"


@pytest.fixture(params=["local", "memory", "gcs"])
def folder(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "local":
        return str(tmp_path / "out")
    return request.getfixturevalue(f"{request.param}_folder")


def names_in(folder: str) -> list[str]:
    """Every file in the folder, hidden ones included (a temporary file must not hide from this)."""
    return sorted(p.name for p in object_path(folder).iterdir())


def read(folder: str, name: str) -> bytes:
    return (object_path(folder) / name).read_bytes()


def test_object_storage_overwrites_on_rerun(folder):
    for _ in range(2):
        load(ObjectStorageSink(folder, "jsonl"), [ok("a"), bad("b")], [ok("c")])
    assert [orjson.loads(line)["key"] for line in read(folder, "results.jsonl").splitlines()] == [
        "a",
        "b",
        "c",
    ]
    assert [orjson.loads(line)["key"] for line in read(folder, "errors.jsonl").splitlines()] == ["b"]
    assert names_in(folder) == ["errors.jsonl", "results.jsonl"]


def test_parquet_row_groups_per_chunk(tmp_path):
    import pyarrow.parquet as pq

    sink = ObjectStorageSink(str(tmp_path), "parquet", {"label": "TEXT"}, integer_keys=True)
    load(sink, [ok("1", value={"label": "x"}), ok(2)], [ResultRow("3", SUCCEEDED, embedding=[1.0, 2.0])])
    parquet = pq.ParquetFile(tmp_path / "results.parquet")
    assert parquet.metadata.num_row_groups == 2
    rows = parquet.read().to_pylist()
    assert [(r["key"], r["label"], r["embedding"]) for r in rows] == [
        (1, "x", None),
        (2, None, None),
        (3, None, [1.0, 2.0]),
    ]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_an_aborted_load_keeps_the_previous_files_and_leaves_no_temporary_file(folder, fmt):
    """Today's failure: an aborted load used to leave an empty results file where the previous one was."""
    load(ObjectStorageSink(folder, fmt), [ok("a"), bad("b")])
    before = {name: read(folder, name) for name in names_in(folder)}
    assert set(before) == {f"results.{fmt}", "errors.jsonl"} and all(before.values())

    sink = ObjectStorageSink(folder, fmt)
    sink.open()
    sink.write([ok("x"), bad("y")] * 100)
    if not folder.startswith("gs://"):  # a GCS object exists only once its upload completes
        assert names_in(folder) != sorted(before)  # the new files exist, under temporary names, while writing
    sink.abort()

    assert {name: read(folder, name) for name in names_in(folder)} == before


def test_an_abort_after_part_of_the_file_was_uploaded_leaves_no_object(gcs_folder):
    """More than one upload block (gcsfs: 5 MiB) written: the resumable upload has begun when the abort comes;
    it is cancelled (or its object removed), and the folder stays empty."""
    sink = ObjectStorageSink(gcs_folder, "jsonl")
    sink.open()
    for start in range(0, 8_000, 1_000):
        sink.write([ok(str(i), text="x" * 1_000) for i in range(start, start + 1_000)])
    sink.abort()
    assert not object_path(gcs_folder).exists() or names_in(gcs_folder) == []


def test_a_failed_move_is_followed_by_an_abort_that_leaves_no_temporary_file(tmp_path):
    """close() publishes errors, then results; when a move fails (here ``results.jsonl`` is a folder), the
    abort that follows still removes what was not moved, and what was in place stays."""
    folder = tmp_path / "out"
    (folder / "results.jsonl").mkdir(parents=True)
    (folder / "results.jsonl" / "keep").write_bytes(b"x")
    sink = ObjectStorageSink(str(folder), "jsonl")
    sink.open()
    sink.write([ok("b"), bad("c")])
    with pytest.raises(IsADirectoryError):
        sink.close()
    sink.abort()
    assert names_in(str(folder)) == ["errors.jsonl", "results.jsonl"]  # errors moved first, no .tmp left
    assert (folder / "results.jsonl" / "keep").read_bytes() == b"x"


def test_integer_keys_from_the_wire_are_parsed_strictly():
    assert [integer_key(k) for k in ("0", "17", "-3", 5, str(2**63 - 1))] == [0, 17, -3, 5, 2**63 - 1]
    for key in (" 7", "1_000", "٣", "7.0", "", "-", "x1", str(2**63), 1.5, None):
        with pytest.raises(
            GeminiBatchInputError, match=r"is not a 64-bit integer.*Fix: key_column_type='TEXT'"
        ):
            integer_key(key)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_a_key_that_is_no_integer_fails_the_load_and_keeps_the_previous_files(folder, fmt):
    load(ObjectStorageSink(folder, fmt, integer_keys=True), [ok("1"), bad("2")])
    before = {name: read(folder, name) for name in names_in(folder)}

    sink = ObjectStorageSink(folder, fmt, integer_keys=True)
    sink.open()
    with pytest.raises(GeminiBatchInputError, match=r"Key 'sku-9' is not a 64-bit integer"):
        sink.write([ok("3"), ok("sku-9")])
    sink.abort()
    assert {name: read(folder, name) for name in names_in(folder)} == before


# ---- through the real path: a submit and a load in one dag.test() ------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_integer_keys_through_a_real_dag_run(
    sqlite_warehouse, gemini_conn, emulator, register_dag, tmp_path, fmt
):
    """INTEGER ids from a SQL table travel as strings (request lines, key lists) and land as integers.

    The unit test above passes ints straight into the sink; this run goes through the submit, the real key
    lists, the real responses file and the reconciler, where Parquet used to raise ArrowInvalid."""
    from airflow.sdk import DAG

    from airflow_gemini_batch.operators.results import GeminiBatchLoadResultsOperator
    from airflow_gemini_batch.operators.submit import GeminiBatchSubmitOperator

    table = sqlite_warehouse.table("int_keys")
    sqlite_warehouse.create_prompts_table(table, 12)
    dest = tmp_path / "out"
    with DAG(f"objectstore_int_keys_{fmt}", schedule=None, start_date=datetime.datetime(2026, 1, 1)) as dag:
        submit = GeminiBatchSubmitOperator(
            task_id="submit",
            source_conn_id=sqlite_warehouse.conn_id,
            sql=f"SELECT id, name FROM {table}",
            prompt_template="Describe {name}",
            max_requests_per_job=5,
            staging_path=str(tmp_path / "staging"),
            wait_for_completion=True,
            poll_interval=0.1,
        )
        GeminiBatchLoadResultsOperator(
            task_id="load",
            manifest=submit.output,
            destination_path=str(dest),
            output_format=fmt,
            key_column_type="INTEGER",
        )
    register_dag(dag)
    assert dag.test().state == "success"

    # The keys really travelled as strings: that is what the sink was given.
    assert (tmp_path / "staging" / "keys-00000.jsonl").read_bytes().splitlines()[0] == b'"0"'
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        result = pq.read_table(dest / "results.parquet")
        assert result.schema.field("key").type == pa.int64()
        keys = result.column("key").to_pylist()
    else:
        keys = [orjson.loads(line)["key"] for line in (dest / "results.jsonl").read_bytes().splitlines()]
    assert sorted(keys) == list(range(12)) and all(type(k) is int for k in keys)
    assert sorted(p.name for p in dest.iterdir()) == ["errors.jsonl", f"results.{fmt}"]
