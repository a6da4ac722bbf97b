"""The incremental check against a real SQLite / PostgreSQL destination table: per key *and* fingerprint,
in bounded lookups, read-only, and refusing what it cannot check."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from airflow_gemini_batch.exceptions import GeminiBatchInputError
from airflow_gemini_batch.inputs import incremental
from airflow_gemini_batch.inputs.incremental import ReuseCheck, ReuseDestination
from airflow_gemini_batch.operators import GeminiBatchSubmitOperator


def _destination(wh, table: str, key_type: str = "INTEGER", fingerprints: bool = True) -> None:
    fp = ", request_fingerprint TEXT" if fingerprints else ""
    wh.execute(
        f'CREATE TABLE {table} ("key" {key_type} PRIMARY KEY, outcome TEXT NOT NULL, prompt_tokens INTEGER, '
        f"output_tokens INTEGER, thinking_tokens INTEGER, cached_tokens INTEGER, total_tokens INTEGER{fp})"
    )


def _batch(keys, fingerprints):
    lines = [b'{"key":%b}\n' % orjson.dumps(str(k)) for k in keys]
    return lines, [orjson.dumps(str(k)) for k in keys], list(fingerprints)


def _fp(name: str) -> str:
    """A request fingerprint (64 hex digits, like the real ones) standing for ``name``."""
    return hashlib.sha256(name.encode()).hexdigest()


def _check(wh, table: str) -> ReuseCheck:
    return ReuseCheck(ReuseDestination(wh.conn_id, table, destination_key_column="key"))


@pytest.mark.parametrize("key_type", ["INTEGER", "TEXT"])
def test_reused_only_for_a_succeeded_row_of_the_same_key_and_fingerprint(warehouse, monkeypatch, key_type):
    monkeypatch.setattr(incremental, "LOOKUP_BATCH", 7)  # many bounded lookups per batch
    table = warehouse.table("answers")
    _destination(warehouse, table, key_type)
    ph = warehouse.ph
    stored = [(i, "succeeded", 10, 20, 0, 0, 30, _fp(f"fp{i}")) for i in range(30)]
    stored[3] = (3, "failed", None, None, None, None, None, _fp("fp3"))  # failed last time: resent
    stored[4] = (4, "succeeded", 10, 20, 0, 0, 30, None)  # stored before fingerprints: resent
    warehouse.execute(f"INSERT INTO {table} VALUES ({', '.join([ph] * 8)})", stored, many=True)
    keys = list(range(40))
    fingerprints = [_fp(f"fp{i}") for i in keys]
    fingerprints[5] = _fp("changed")  # a changed request: resent
    fingerprints[6] = _fp("fp7")  # the fingerprint of another key: resent (reuse is per key)
    with _check(warehouse, table) as check:
        lines, sent_keys, sent_fps = check.filter(*_batch(keys, fingerprints))
    sent = [int(orjson.loads(k)) for k in sent_keys]
    assert sent == [3, 4, 5, 6, *range(30, 40)]
    assert [orjson.loads(line)["key"] for line in lines] == [str(k) for k in sent]
    assert sent_fps == [fingerprints[k] for k in sent]
    assert check.reused == 26
    assert check.tokens == {"prompt": 260, "output": 520, "thinking": 0, "cached": 0}

    # Keys that are not integers (sent: an integer key column cannot hold them) beside ones that are reused.
    with _check(warehouse, table) as check:
        mixed = ["x", 1, "-", 2, "1e3"]
        lines, sent_keys, _ = check.filter(*_batch(mixed, [_fp(f"fp{k}") for k in mixed]))
        assert sent_keys == [b'"x"', b'"-"', b'"1e3"']
        assert check.reused == 2
        # The fingerprints are cut by position: one that is not a sha256 hex digest is refused, not misread.
        with pytest.raises(ValueError, match="64 hex digits each"):
            check.filter(*_batch([1, 2], ["fp1", _fp("fp2")]))


def test_nothing_is_reused_from_a_missing_table_or_one_without_fingerprints(warehouse, caplog):
    table = warehouse.table("answers")
    with _check(warehouse, table) as check:
        assert check.filter(*_batch([1, 2], ["a", "b"]))[1] == [b'"1"', b'"2"']
    _destination(warehouse, table, fingerprints=False)
    warehouse.execute(f"INSERT INTO {table} (\"key\", outcome) VALUES (1, 'succeeded')")
    with _check(warehouse, table) as check:
        assert check.filter(*_batch([1, 2], ["a", "b"]))[1] == [b'"1"', b'"2"']
        assert check.reused == 0
    assert "has no request_fingerprint column yet" in caplog.text


def test_incremental_needs_a_table_destination(tmp_path):
    common = {"task_id": "s", "sql": "SELECT 1", "source_conn_id": "x", "incremental": True}
    with pytest.raises(GeminiBatchInputError, match=r"object-store output .* is rewritten whole"):
        GeminiBatchSubmitOperator(destination_path=str(tmp_path), **common)
    with pytest.raises(GeminiBatchInputError, match="destination_conn_id and destination_table"):
        GeminiBatchSubmitOperator(**common)
    # Templated destination names are checked once rendered, not at parse time.
    GeminiBatchSubmitOperator(destination_conn_id="w", destination_table="{{ params.t }}", **common)


def test_a_destination_name_with_sql_in_it_is_refused(sqlite_warehouse):
    with pytest.raises(GeminiBatchInputError, match="Invalid table name"):
        ReuseCheck(ReuseDestination(sqlite_warehouse.conn_id, "t; DROP TABLE x"))


def test_answers_of_the_task_instances_own_jobs_are_not_reused(warehouse):
    """A retry or clear must rebuild the shards its recorded jobs were made from: rows its own jobs answered
    (``exclude_jobs``) are sent, i.e. re-attached to, not reused."""
    table = warehouse.table("answers")
    warehouse.execute(
        f'CREATE TABLE {table} ("key" INTEGER PRIMARY KEY, outcome TEXT NOT NULL, prompt_tokens INTEGER, '
        "output_tokens INTEGER, thinking_tokens INTEGER, cached_tokens INTEGER, total_tokens INTEGER, "
        "job_name TEXT, request_fingerprint TEXT)"
    )
    ph = warehouse.ph
    stored = [
        (i, "succeeded", 1, 1, 0, 0, 2, f"batches/{'own' if i < 2 else 'old'}", _fp(f"fp{i}"))
        for i in range(4)
    ]
    stored.append((4, "succeeded", 1, 1, 0, 0, 2, None, _fp("fp4")))  # no job recorded: an earlier run's
    warehouse.execute(f"INSERT INTO {table} VALUES ({', '.join([ph] * 9)})", stored, many=True)
    destination = ReuseDestination(warehouse.conn_id, table, destination_key_column="key")
    with ReuseCheck(destination, exclude_jobs=["batches/own", "batches/other"]) as check:
        _, sent_keys, _ = check.filter(*_batch(range(5), [_fp(f"fp{i}") for i in range(5)]))
    assert [int(orjson.loads(k)) for k in sent_keys] == [0, 1] and check.reused == 3


def test_parts_of_dense_and_of_sparse_keys_are_decided_alike(warehouse, monkeypatch):
    """PostgreSQL looks up a part of dense integer keys by one range and a sparse part key by key (see the
    module): whichever plan a part gets, and however the parts alternate, the same rows are reused."""
    monkeypatch.setattr(incremental, "LOOKUP_BATCH", 4)
    plans: list[bool] = []  # the plan of each PostgreSQL part: True = by range
    steer = ReuseCheck._steer

    def noting(self: ReuseCheck, cur: object, by_range: bool) -> None:
        plans.append(by_range)
        steer(self, cur, by_range)

    monkeypatch.setattr(ReuseCheck, "_steer", noting)
    table = warehouse.table("answers")
    _destination(warehouse, table)
    sparse = [10_000 * i for i in range(1, 9)]
    stored = [(k, "succeeded", 1, 2, 3, 0, 6, _fp(f"fp{k}")) for k in [0, 1, 2, 4, 5, 6, 7, *sparse]]
    ph = warehouse.ph
    warehouse.execute(f"INSERT INTO {table} VALUES ({', '.join([ph] * 8)})", stored, many=True)
    # Parts of 4: dense, sparse, dense, sparse; each has a key not in the destination or a changed request.
    keys = [0, 1, 2, 3, 10_000, 20_000, 30_000, 99_999, 4, 5, 6, 7, 50_000, 60_000, 70_000, 80_000]
    fingerprints = [_fp(f"fp{k}") for k in keys]
    fingerprints[1] = fingerprints[9] = fingerprints[14] = _fp("changed")
    with _check(warehouse, table) as check:
        _, sent_keys, sent_fps = check.filter(*_batch(keys, fingerprints))
    assert [int(orjson.loads(k)) for k in sent_keys] == [1, 3, 99_999, 5, 70_000]
    assert sent_fps == [fingerprints[i] for i in (1, 3, 7, 9, 14)]
    assert check.reused == 11
    assert check.tokens == {"prompt": 11, "output": 22, "thinking": 33, "cached": 0}
    assert plans == ([True, False, True, False] if warehouse.kind == "postgres" else [])
