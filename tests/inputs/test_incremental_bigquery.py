"""The incremental check against a BigQuery destination on the BigQuery emulator (real REST and Storage Read
gRPC): the succeeded answers mirrored once into a temporary SQLite file, then the SQL path's lookup on it."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import orjson
import pytest

from airflow_gemini_batch.exceptions import GeminiBatchInputError
from airflow_gemini_batch.inputs import incremental_bigquery
from airflow_gemini_batch.inputs.incremental import ReuseDestination
from airflow_gemini_batch.inputs.incremental_bigquery import BigQueryReuseCheck
from tests.gcp_emulators import PROJECT
from tests.inputs.test_bigquery import _StorageReadRefused, storage_read_refused  # noqa: F401 - a fixture

pytestmark = pytest.mark.timeout(300)

_TOKENS = ("prompt_tokens", "output_tokens", "thinking_tokens", "cached_tokens", "total_tokens")


def _fp(name: str) -> str:
    """A request fingerprint (64 hex digits, like the real ones) standing for ``name``."""
    return hashlib.sha256(name.encode()).hexdigest()


def _batch(keys: Any, fingerprints: Any) -> tuple[list[bytes], list[bytes], list[str]]:
    lines = [b'{"key":%b}\n' % orjson.dumps(str(k)) for k in keys]
    return lines, [orjson.dumps(str(k)) for k in keys], list(fingerprints)


def _destination(
    client: Any, table: str, rows: list[dict[str, Any]], key_type: str = "INT64", fingerprints: bool = True
) -> None:
    """A destination table as the BigQuery sink makes one (the columns the check reads), by one load job."""
    from google.cloud import bigquery

    names = [
        ("key", key_type),
        ("outcome", "STRING"),
        *((t, "INT64") for t in _TOKENS),
        ("job_name", "STRING"),
    ]
    if fingerprints:
        names.append(("request_fingerprint", "STRING"))
    schema = [bigquery.SchemaField(n, t) for n, t in names]
    data = b"".join(orjson.dumps(r) + b"\n" for r in rows)
    config = bigquery.LoadJobConfig(schema=schema, source_format="NEWLINE_DELIMITED_JSON")
    client.load_table_from_file(io.BytesIO(data), table, job_config=config).result(timeout=60)


def _row(key: Any, outcome: str = "succeeded", fp: str | None = "", job: str | None = "batches/old") -> dict:
    tokens = dict(zip(_TOKENS, (10, 20, 0, 0, 30), strict=True)) if outcome == "succeeded" else {}
    return {
        "key": key,
        "outcome": outcome,
        "job_name": job,
        "request_fingerprint": _fp(f"fp{key}") if fp == "" else fp,
        **tokens,
    }


def _check(conn: str, table: str, **kw: Any) -> BigQueryReuseCheck:
    return BigQueryReuseCheck(ReuseDestination(conn, table, destination_key_column="key"), **kw)


@pytest.mark.parametrize("key_type", ["INT64", "STRING"])
def test_reused_only_for_a_succeeded_row_of_the_same_key_and_fingerprint(
    gcp_conn: str, bq_client: Any, bq_dataset: str, monkeypatch: pytest.MonkeyPatch, key_type: str
):
    monkeypatch.setattr(incremental_bigquery, "MIRROR_CHUNK", 7)  # many inserts per record batch
    table = f"{bq_dataset}.answers"
    key = int if key_type == "INT64" else str
    stored = [_row(key(i)) for i in range(30)]
    stored[3] = _row(key(3), outcome="failed")  # failed last time: resent
    stored[4] = _row(key(4), fp=None)  # stored before fingerprints: resent
    _destination(bq_client, f"{PROJECT}.{table}", stored, key_type)
    keys = list(range(40))
    fingerprints = [_fp(f"fp{i}") for i in keys]
    fingerprints[5] = _fp("changed")  # a changed request: resent
    fingerprints[6] = _fp("fp7")  # the fingerprint of another key: resent (reuse is per key)
    with _check(gcp_conn, table) as check:
        mirror = check._path
        assert mirror is not None and mirror.exists()
        lines, sent_keys, sent_fps = check.filter(*_batch(keys, fingerprints))
    assert mirror is not None and not mirror.exists(), "the mirror file is deleted on close"
    assert check.read_path == "storage"
    assert check.mirrored == 28, "only succeeded rows with a fingerprint are mirrored"
    sent = [int(orjson.loads(k)) for k in sent_keys]
    assert sent == [3, 4, 5, 6, *range(30, 40)]
    assert [orjson.loads(line)["key"] for line in lines] == [str(k) for k in sent]
    assert sent_fps == [fingerprints[k] for k in sent]
    assert check.reused == 26
    assert check.tokens == {"prompt": 260, "output": 520, "thinking": 0, "cached": 0}

    with _check(gcp_conn, table) as check:
        # Keys that are not integers beside ones that are reused (an INT64 key column cannot hold them).
        mixed = ["x", 1, "-", 2, "1e3"]
        _, sent_keys, _ = check.filter(*_batch(mixed, [_fp(f"fp{k}") for k in mixed]))
        assert sent_keys == [b'"x"', b'"-"', b'"1e3"'] and check.reused == 2


def test_nothing_is_reused_from_a_missing_table_or_one_without_fingerprints(
    gcp_conn: str, bq_client: Any, bq_dataset: str, caplog: pytest.LogCaptureFixture
):
    table = f"{bq_dataset}.answers"
    with _check(gcp_conn, table) as check:
        assert check.filter(*_batch([1, 2], [_fp("a"), _fp("b")]))[1] == [b'"1"', b'"2"']
    assert f"Incremental: {table} does not exist yet; every row is sent." in caplog.text
    _destination(bq_client, f"{PROJECT}.{table}", [_row(1)], fingerprints=False)
    with _check(gcp_conn, table) as check:
        assert check.filter(*_batch([1, 2], [_fp("fp1"), _fp("b")]))[1] == [b'"1"', b'"2"']
        assert check.reused == 0 and check.mirrored == 0 and check._path is None
    assert f"Incremental: {table} has no request_fingerprint column yet" in caplog.text
    # A table with no succeeded answer yet: an empty mirror.
    _destination(bq_client, f"{PROJECT}.{table}_failed", [_row(1, outcome="failed"), _row(2, fp=None)])
    with _check(gcp_conn, f"{table}_failed") as check:
        assert check.filter(*_batch([1, 2], [_fp("fp1"), _fp("fp2")]))[1] == [b'"1"', b'"2"']
        assert check.mirrored == 0 and check.read_path == "storage"


def test_answers_of_the_task_instances_own_jobs_are_not_reused(
    gcp_conn: str, bq_client: Any, bq_dataset: str
):
    table = f"{bq_dataset}.answers"
    stored = [_row(i, job=f"batches/{'own' if i < 2 else 'old'}") for i in range(4)]
    stored.append(_row(4, job=None))  # no job recorded: an earlier run's
    _destination(bq_client, f"{PROJECT}.{table}", stored)
    with _check(gcp_conn, table, exclude_jobs=["batches/own", "batches/other"]) as check:
        _, sent_keys, _ = check.filter(*_batch(range(5), [_fp(f"fp{i}") for i in range(5)]))
    assert [int(orjson.loads(k)) for k in sent_keys] == [0, 1] and check.reused == 3


def test_without_the_storage_api_the_answers_are_read_by_list_rows_and_filtered(
    storage_read_refused: _StorageReadRefused,  # noqa: F811 - the fixture
    gcp_conn: str,
    bq_client: Any,
    bq_dataset: str,
    caplog: pytest.LogCaptureFixture,
):
    table = f"{bq_dataset}.answers"
    stored = [_row(i) for i in range(10)]
    stored[2] = _row(2, outcome="missing")
    stored[3] = _row(3, fp=None)
    _destination(bq_client, f"{PROJECT}.{table}", stored)
    with _check(gcp_conn, table) as check:
        _, sent_keys, _ = check.filter(*_batch(range(12), [_fp(f"fp{i}") for i in range(12)]))
    assert storage_read_refused.calls == ["/google.cloud.bigquery.storage.v1.BigQueryRead/CreateReadSession"]
    assert check.read_path == "list_rows" and check.mirrored == 8
    assert [int(orjson.loads(k)) for k in sent_keys] == [2, 3, 10, 11] and check.reused == 8
    assert "reading the answers of" in caplog.text and "through paged list_rows" in caplog.text


def test_a_destination_it_cannot_check_is_refused(gcp_conn: str, bq_client: Any, bq_dataset: str):
    from google.cloud import bigquery

    with pytest.raises(GeminiBatchInputError, match="Invalid BigQuery destination_table"):
        _check(gcp_conn, "ds.t`; DROP TABLE x")
    table = f"{PROJECT}.{bq_dataset}.answers"
    _destination(bq_client, table, [{"key": 1.5, "outcome": "succeeded"}], key_type="FLOAT64")
    with pytest.raises(GeminiBatchInputError, match="BigQuery keys are STRING or INT64"):
        _check(gcp_conn, table).open()
    bq_client.create_table(
        bigquery.Table(f"{table}2", schema=[bigquery.SchemaField("request_fingerprint", "STRING")])
    )
    with pytest.raises(GeminiBatchInputError, match="has no column 'key'; set destination_key_column"):
        _check(gcp_conn, f"{table}2").open()


def test_a_read_that_fails_leaves_no_mirror_file(
    gcp_conn: str, bq_client: Any, bq_dataset: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
):
    from google.api_core.exceptions import GoogleAPICallError
    from google.cloud import bigquery

    monkeypatch.setattr(incremental_bigquery.tempfile, "tempdir", str(tmp_path))
    table = f"{PROJECT}.{bq_dataset}.answers"
    schema = [bigquery.SchemaField("key", "INT64"), bigquery.SchemaField("request_fingerprint", "STRING")]
    bq_client.create_table(bigquery.Table(table, schema=schema))  # no outcome column: the read is refused
    with pytest.raises(GoogleAPICallError, match="outcome"):
        _check(gcp_conn, table).open()
    assert list(tmp_path.iterdir()) == [], "the mirror file begun is deleted"
