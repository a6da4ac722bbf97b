"""The remainder of a load: which rows a row-retry round sends again, written beside a real sink."""

from __future__ import annotations

import orjson
import pytest

from airflow_gemini_batch.results.remainder import RemainderRecorder, is_retryable
from airflow_gemini_batch.results.rows import FAILED, INVALID_OUTPUT, MISSING, SUCCEEDED, ResultRow
from airflow_gemini_batch.sinks import ObjectStorageSink


@pytest.mark.parametrize(
    ("outcome", "code", "message", "retry"),
    [
        (MISSING, None, "no result line for this key", True),
        (FAILED, 503, "UNAVAILABLE: overloaded", True),
        (FAILED, 429, None, True),
        (FAILED, 500, "Internal error", True),
        (FAILED, 504, None, True),
        (FAILED, None, "job FAILED: 13 INTERNAL", True),
        (FAILED, None, "RESOURCE_EXHAUSTED", True),
        (FAILED, 400, "INVALID_ARGUMENT: bad request", False),
        (FAILED, None, "prompt blocked: SAFETY", False),
        (FAILED, None, "job EXPIRED", False),
        (FAILED, None, "no answer (finish reason SAFETY)", False),
        (INVALID_OUTPUT, None, "not valid JSON", False),
        (SUCCEEDED, None, None, False),
    ],
)
def test_what_is_retryable(outcome, code, message, retry):
    assert is_retryable(outcome, code, message) is retry


def _rows() -> list[ResultRow]:
    return [
        ResultRow(1, SUCCEEDED, "a"),
        ResultRow(2, FAILED, error_code=503, error_message="UNAVAILABLE"),
        ResultRow("x", MISSING, error_message="no result line for this key"),
        ResultRow(4, FAILED, error_code=400, error_message="INVALID_ARGUMENT"),
    ]


def test_the_recorder_passes_every_row_on_and_lists_the_retryable_keys(tmp_path):
    sink = ObjectStorageSink(str(tmp_path / "out"))
    recorder = RemainderRecorder(sink, str(tmp_path / "staging" / "remainder.jsonl"))
    recorder.open()
    recorder.write(_rows()[:2])
    recorder.write(_rows()[2:])
    recorder.close()
    assert recorder.rows_written == 4 and sink.rows_written == 4
    keys = [orjson.loads(x) for x in (tmp_path / "staging" / "remainder.jsonl").read_bytes().splitlines()]
    assert keys == [2, "x"]
    assert recorder.counts == {SUCCEEDED: 0, FAILED: 1, INVALID_OUTPUT: 0, MISSING: 1}
    assert recorder.key_count == 2 and recorder.describe() == sink.describe()


def test_an_aborted_load_publishes_no_remainder(tmp_path):
    recorder = RemainderRecorder(ObjectStorageSink(str(tmp_path / "out")), str(tmp_path / "remainder.jsonl"))
    recorder.open()
    recorder.write(_rows())
    recorder.abort()
    assert not (tmp_path / "remainder.jsonl").exists()
