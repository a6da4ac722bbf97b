"""A retry round's input: the source read again, only the rows whose keys are on the remainder list."""

from __future__ import annotations

import logging

import pytest

from airflow_gemini_batch.exceptions import GeminiBatchInputError
from airflow_gemini_batch.inputs.sources import ListRowSource, SqlRowSource
from airflow_gemini_batch.submit.round_input import KeyFilteredSource


def _keys(tmp_path, *lines: str) -> str:
    path = tmp_path / "remainder.jsonl"
    path.write_text("".join(f"{line}\n" for line in lines))
    return str(path)


def test_sql_rows_are_filtered_by_canonical_key(sqlite_warehouse, tmp_path, caplog):
    wh = sqlite_warehouse
    src = wh.table("src")
    wh.create_prompts_table(src, 50)
    # Keys as the key lists hold them: the JSON text of the source value ("7" is the int 7's text too).
    source = SqlRowSource(wh.conn_id, f"SELECT id, name FROM {src} ORDER BY id", batch_size=8)
    filtered = KeyFilteredSource(source, _keys(tmp_path, '"7"', "12", '"49"', '"999"'), "id")
    with caplog.at_level(logging.WARNING):
        rows = [row for batch in filtered.batches() for row in batch]
    assert [r[0] for r in rows] == [7, 12, 49] and filtered.columns == ["id", "name"]
    assert (filtered.wanted, filtered.found) == (4, 3)
    assert "1 of the 4 keys to send again are no longer in the source" in caplog.text


def test_prebuilt_rows_and_a_missing_key_column(tmp_path):
    items = [{"key": f"k{i}", "request": {"contents": []}} for i in range(5)]
    filtered = KeyFilteredSource(ListRowSource(items), _keys(tmp_path, '"k3"'), "key")
    assert [r[0] for b in filtered.batches() for r in b] == ["k3"] and filtered.prebuilt
    wrong = KeyFilteredSource(ListRowSource([{"id": 1, "t": "x"}]), _keys(tmp_path, "1"), "nope")
    with pytest.raises(GeminiBatchInputError, match="key column 'nope'"):
        list(wrong.batches())
