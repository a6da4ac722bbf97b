"""Row sources on real SQLite and PostgreSQL: bounded batches, every row once, a server-side cursor on PG."""

from __future__ import annotations

import orjson
import pytest

from airflow_gemini_batch.exceptions import GeminiBatchInputError
from airflow_gemini_batch.inputs.requests import RequestEncoder, RequestSpec
from airflow_gemini_batch.inputs.sources import JsonlRowSource, ListRowSource, MalformedLine, SqlRowSource
from airflow_gemini_batch.inputs.validation import InvalidRows


def test_sql_source_streams_bounded_batches(warehouse):
    table = warehouse.table("src")
    warehouse.create_prompts_table(table, 10_500)
    source = SqlRowSource(
        warehouse.conn_id, f"SELECT id, name, category FROM {table} ORDER BY id", batch_size=1000
    )
    sizes, ids = [], []
    for batch in source.batches():
        sizes.append(len(batch))
        ids.extend(r[0] for r in batch)
        assert all(type(r) is tuple for r in batch)
    assert source.columns == ["id", "name", "category"]
    assert max(sizes) == 1000 and len(sizes) == 11
    assert ids == list(range(10_500))


def test_sql_source_parameters(warehouse):
    table = warehouse.table("params")
    warehouse.create_prompts_table(table, 50)
    source = SqlRowSource(
        warehouse.conn_id, f"SELECT id FROM {table} WHERE category = {warehouse.ph} ORDER BY id", ("garden",)
    )
    assert [r[0] for b in source.batches() for r in b] == list(range(1, 50, 3))


def test_postgres_uses_server_side_cursor(postgres_warehouse):
    """While the source is paused between batches, the server is serving FETCHes from a named cursor."""
    wh = postgres_warehouse
    table = wh.table("cursor")
    wh.create_prompts_table(table, 5000)
    batches = SqlRowSource(wh.conn_id, f"SELECT id, name FROM {table}", batch_size=500).batches()
    first = next(batches)
    assert len(first) == 500
    activity = wh.query(
        "SELECT query FROM pg_stat_activity WHERE query LIKE 'FETCH FORWARD 500 FROM %%agb_%%'"
    )
    assert activity, "expected a FETCH from a server-side cursor"
    assert sum(len(b) for b in batches) == 4500


def test_sqlite_non_utf8_rows_are_named(sqlite_warehouse):
    wh = sqlite_warehouse
    table = wh.table("bad")
    wh.execute(f"CREATE TABLE {table} (id INTEGER, prompt TEXT)")
    rows = [(i, f"ok {i}".encode()) for i in range(2500)]
    rows[1700] = (1700, b"caf\xe9 au lait")
    rows[2200] = (2200, b"\xff")
    wh.execute(f"INSERT INTO {table} VALUES (?, CAST(? AS TEXT))", rows, many=True)
    source = SqlRowSource(wh.conn_id, f"SELECT id, prompt FROM {table} ORDER BY id", batch_size=1000)
    invalid = InvalidRows(False, None, 10_000)
    encoder = None
    good = []
    for batch in source.batches():
        encoder = encoder or RequestEncoder(RequestSpec(), source.columns, invalid)
        good.extend(orjson.loads(k) for k in encoder.encode(batch)[1])
    assert len(good) == 2498 and len(set(good)) == 2498  # no row read twice after the lenient re-read
    assert invalid.counts == {"non_utf8": 2}
    assert invalid.examples["non_utf8"] == ['"1700"', '"2200"']


def test_jsonl_source_local_and_uri(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        b'{"key": "a", "request": {"contents": [{"parts": [{"text": "hi"}]}]}}\n'
        b"\n"
        b"not json\n"
        b'{"key": "b"}\n'
        b'{"key": "c", "request": {"contents": [{"parts": [{"text": "caf\xe9"}]}]}}\n'
    )
    for where in (str(path), path.as_uri()):
        rows = [r for b in JsonlRowSource(where, batch_size=2).batches() for r in b]
        assert rows[0] == ("a", {"contents": [{"parts": [{"text": "hi"}]}]})
        bad = [(r[0].line_no, r[0].reason) for r in rows if isinstance(r[0], MalformedLine)]
        assert bad == [
            (3, "not valid JSON"),
            (4, 'not an object with "key" and "request"'),
            (5, "not valid UTF-8"),
        ]


def test_jsonl_source_on_gcs(gcs_conn, tmp_path):
    """``input_path`` on ``gs://`` (the provider's gcsfs, GCS emulator): read line by line, in batches."""
    import uuid

    from airflow_gemini_batch.storage import copy_file
    from tests.gcp_emulators import BUCKET

    local = tmp_path / "in.jsonl"
    local.write_bytes(
        b"".join(
            b'{"key": %d, "request": {"contents": [{"parts": [{"text": "p%d"}]}]}}\n' % (i, i)
            for i in range(25)
        )
    )
    uri = f"gs://{gcs_conn}@{BUCKET}/inputs-{uuid.uuid4().hex[:8]}/in.jsonl"
    copy_file(local, uri)
    batches = list(JsonlRowSource(uri, batch_size=10).batches())
    assert [len(b) for b in batches] == [10, 10, 5]
    assert batches[2][-1] == (24, {"contents": [{"parts": [{"text": "p24"}]}]})
    with pytest.raises(GeminiBatchInputError, match="does not exist"):
        list(JsonlRowSource(uri + ".missing").batches())


def test_jsonl_source_missing_file(tmp_path):
    with pytest.raises(GeminiBatchInputError, match="does not exist"):
        list(JsonlRowSource(str(tmp_path / "nope.jsonl")).batches())


def test_list_source_kinds():
    strings = ListRowSource(["a", "b"], batch_size=1)
    assert strings.columns == ("key", "prompt")
    assert [r for b in strings.batches() for r in b] == [(0, "a"), (1, "b")]

    dicts = ListRowSource([{"id": 1, "text": "x"}, {"id": 2}])
    assert dicts.columns == ["id", "text"]
    assert [r for b in dicts.batches() for r in b] == [(1, "x"), (2, None)]

    prebuilt = ListRowSource([{"key": "k", "request": {"contents": []}}])
    assert prebuilt.prebuilt and [r for b in prebuilt.batches() for r in b] == [("k", {"contents": []})]

    with pytest.raises(GeminiBatchInputError, match="one kind of item"):
        list(ListRowSource(["a", {"id": 1}]).batches())
    with pytest.raises(GeminiBatchInputError, match="must be a list"):
        ListRowSource("just a string")
