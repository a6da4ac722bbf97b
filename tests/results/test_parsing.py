"""Result parsing and classification, on real result lines (the shapes the service and the emulator write)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from airflow_gemini_batch.results.parsing import (
    FAILED,
    INVALID_OUTPUT,
    MISSING,
    SUCCEEDED,
    ResultParser,
    ShardReport,
    iter_file_rows,
    iter_inline_rows,
    to_json_schema,
)
from airflow_gemini_batch.results.reconcile import KeyReconciler


def response(text: str | None = "hi", finish: str = "STOP", **usage: int) -> dict[str, Any]:
    parts = [] if text is None else [{"text": text}]
    return {
        "candidates": [{"content": {"parts": parts, "role": "model"}, "finishReason": finish}],
        "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2, "totalTokenCount": 5, **usage},
        "modelVersion": "gemini-2.5-flash",
    }


def test_success_keeps_text_tokens_and_model_version():
    row = ResultParser().classify({"key": "a", "response": response("hello")}, "a", "batches/1")
    assert (row.outcome, row.text, row.finish_reason, row.model_version) == (
        SUCCEEDED,
        "hello",
        "STOP",
        "gemini-2.5-flash",
    )
    assert (row.prompt_tokens, row.output_tokens, row.total_tokens, row.job_name) == (3, 2, 5, "batches/1")


def test_thought_parts_are_not_the_answer_and_thinking_tokens_are_kept():
    resp = response(None, thoughtsTokenCount=7, cachedContentTokenCount=1)
    resp["candidates"][0]["content"]["parts"] = [
        {"text": "let me think", "thought": True},
        {"text": "4"},
        {"text": "2"},
    ]
    row = ResultParser().classify({"response": resp}, 1, None)
    assert (row.text, row.thinking_tokens, row.cached_tokens) == ("42", 7, 1)


@pytest.mark.parametrize(
    ("line", "code", "message"),
    [
        ({"error": {"code": 3, "message": "bad"}}, 3, "bad"),
        ({"status": {"code": 13, "message": "internal"}}, 13, "internal"),
        ({"response": {"promptFeedback": {"blockReason": "SAFETY"}}}, None, "prompt blocked: SAFETY"),
        ({"response": {"candidates": []}}, None, "response has no candidates"),
        ({"response": response(None, finish="SAFETY")}, None, "no answer (finish reason SAFETY)"),
    ],
)
def test_failures(line, code, message):
    row = ResultParser().classify(line, "k", None)
    assert (row.outcome, row.error_code, row.error_message) == (FAILED, code, message)


def test_json_output_is_parsed_and_validated_against_a_gemini_style_schema():
    schema = {"type": "OBJECT", "properties": {"n": {"type": "INTEGER", "nullable": True}}, "required": ["n"],
              "propertyOrdering": ["n"]}  # fmt: skip
    assert to_json_schema(schema)["properties"]["n"]["type"] == ["integer", "null"]
    parser = ResultParser(response_schema=schema)
    ok = parser.classify({"response": response('{"n": 4}')}, 1, None)
    assert (ok.outcome, ok.json_value, ok.value) == (SUCCEEDED, '{"n": 4}', {"n": 4})
    wrong = parser.classify({"response": response('{"n": "four"}')}, 1, None)
    assert wrong.outcome == INVALID_OUTPUT and "at n" in wrong.error_message and wrong.json_value is None
    broken = parser.classify({"response": response('{"n": ')}, 1, None)
    assert broken.outcome == INVALID_OUTPUT and broken.error_message.startswith("output is not valid JSON")


def test_embedding_lines():
    parser = ResultParser(task="embed")
    row = parser.classify({"response": {"embedding": {"values": [0.5, 0.25]}}}, "e", None)
    assert (row.outcome, row.embedding, row.text) == (SUCCEEDED, [0.5, 0.25], None)
    assert parser.classify({"response": {"embedding": {}}}, "e", None).outcome == FAILED


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_a_file_with_malformed_truncated_unknown_and_duplicate_lines(tmp_path):
    keys = KeyReconciler(write(tmp_path / "keys", b'"a"\n"b"\n"c"\n"d"\n"e"\n'), work_dir=str(tmp_path))
    good = [orjson.dumps({"key": k, "response": response(k)}) for k in "abcde"]
    lines = [good[0], b"{not json", good[2], good[2], orjson.dumps({"key": "zz", "response": response()}),
             good[3], b"\n", orjson.dumps({"key": "x"}), good[4][:20]]  # fmt: skip
    path = write(tmp_path / "out.jsonl", b"\n".join(lines))
    report = ShardReport(job_name="batches/j")
    rows = list(iter_file_rows(path, ResultParser(), keys, report))
    assert [(r.key, r.outcome) for r in rows] == [("a", SUCCEEDED), ("c", SUCCEEDED), ("d", SUCCEEDED),
                                                  ("b", MISSING), ("e", MISSING)]  # fmt: skip
    assert (report.malformed_lines, report.malformed_line_numbers, report.truncated) == (
        3,
        [2, 9, 10],
        True,
    )  # a blank line in between
    assert (report.unknown_keys, report.unknown_key_examples) == (1, ["zz"])
    assert (report.duplicate_keys, report.duplicate_key_examples) == (1, ["c"])


def test_inline_items_key_in_metadata_or_by_position(tmp_path):
    keys = KeyReconciler(write(tmp_path / "keys", b"1\n2\n3\n"), work_dir=str(tmp_path))
    items = [
        {"metadata": {"key": "2"}, "response": response("two")},
        {"metadata": {"key": "1"}, "error": {"code": 5}},
    ]
    rows = list(iter_inline_rows(items, ResultParser(), keys, ShardReport(job_name="j")))
    assert [(r.key, r.outcome, r.text) for r in rows] == [
        (2, SUCCEEDED, "two"),
        (1, FAILED, None),
        (3, MISSING, None),
    ]

    keys = KeyReconciler(write(tmp_path / "keys2", b'"p"\n"q"\n'), work_dir=str(tmp_path))
    items = [{"response": {"embedding": {"values": [1.0]}}}, {"response": {"embedding": {"values": [2.0]}}}]
    rows = list(iter_inline_rows(items, ResultParser(task="embed"), keys, ShardReport(job_name="j")))
    assert [(r.key, r.embedding) for r in rows] == [("p", [1.0]), ("q", [2.0])]


def _shapes() -> list[bytes]:
    """Result lines of every shape the fast path must accept or hand over, keys 0..n in (mostly) list order."""
    ok = response("fine")
    lines = [orjson.dumps({"key": i, "response": ok}) for i in range(5)]
    lines += [
        orjson.dumps({"response": response("meta key"), "key": 5, "extra": {"nested": [1, {"a": None}]}}),
        orjson.dumps({"key": "6", "response": response("int key echoed as a string")}),
        orjson.dumps({"key": 7, "response": {**ok, "usageMetadata": {}}}),
        orjson.dumps({"key": 8, "response": {k: v for k, v in ok.items() if k != "usageMetadata"}}),
        orjson.dumps({"key": 9, "response": response(None, finish="SAFETY")}),
        orjson.dumps({"key": 10, "response": response(None)}),
        orjson.dumps({"key": 11, "response": {"promptFeedback": {"blockReason": "OTHER"}}}),
        orjson.dumps({"key": 12, "error": {"code": 8, "message": "quota"}}),
        orjson.dumps(
            {
                "key": 13,
                "response": {
                    **ok,
                    "candidates": [
                        {
                            "content": {"parts": [{"text": "hmm", "thought": True}, {"text": "answer"}]},
                            "finishReason": "STOP",
                        }
                    ],
                },
            }
        ),
        orjson.dumps(
            {
                "key": 14,
                "response": {**ok, "candidates": [{"content": {"parts": [{"text": "a"}, {"text": "b"}]}}]},
            }
        ),
        orjson.dumps(
            {
                "key": 15,
                "response": {
                    **ok,
                    "candidates": [
                        {"content": {"parts": [{"functionCall": {"name": "f"}}]}, "finishReason": "STOP"}
                    ],
                },
            }
        ),
        orjson.dumps({"key": 16, "response": {**ok, "modelVersion": 3}}),  # odd type: general path
        orjson.dumps({"key": 17, "response": {**ok, "usageMetadata": {"totalTokenCount": 1.5}}}),
        orjson.dumps({"key": 18, "response": {**ok, "candidates": []}}),
        orjson.dumps({"key": 19, "response": {**ok, "candidates": [{"finishReason": "STOP"}]}}),
        orjson.dumps({"key": None, "response": ok}),
        orjson.dumps({"metadata": {"key": 20}, "response": response("key in metadata")}),
        orjson.dumps({"key": 21, "response": None, "status": {"code": 4}}),
        orjson.dumps({"key": 22, "response": response('\u00e9t\u00e9 \u2603 "quoted"\n\ttab')}),
        orjson.dumps({"key": True, "response": ok}),  # a bool is not the int 1
        orjson.dumps({"key": 1.0, "response": ok}),  # nor is a float
        orjson.dumps({"key": 24, "response": ok}),  # 23 skipped: missing
        orjson.dumps({"key": 3, "response": ok}),  # duplicate, out of order
        orjson.dumps({"key": 999, "response": ok}),  # unknown
        b"[1, 2]",
        b"   ",
        b"{broken",
        orjson.dumps({"key": 25, "response": ok}),
    ]
    return lines


def _load(path: str, keys_path: str, tmp_path: Path, parser: ResultParser) -> tuple[list, dict]:
    report = ShardReport(job_name="batches/j")
    keys = KeyReconciler(keys_path, work_dir=str(tmp_path))
    rows = [tuple(r) for r in iter_file_rows(path, parser, keys, report)]
    return rows, report.to_dict()


@pytest.mark.parametrize("parse_json", [False, True])
@pytest.mark.parametrize("block", [64, 1 << 18])
def test_the_fast_path_classifies_every_line_like_the_general_path(tmp_path, monkeypatch, parse_json, block):
    """The msgspec fast path is an optimisation only: rows and report equal the orjson general path's, for
    every line shape, whatever the block boundaries (64 bytes: a line or two per block)."""
    import airflow_gemini_batch.results.responses_file as results

    keys_path = write(tmp_path / "keys", b"".join(b"%d\n" % i for i in range(26)))
    lines = _shapes()
    path = write(tmp_path / "out.jsonl", b"\n".join(lines) + b"\n" + lines[0][:30])  # cut-off last line
    monkeypatch.setattr(results, "READ_BLOCK_BYTES", block)
    fast = _load(path, keys_path, tmp_path, ResultParser(parse_json=parse_json))
    monkeypatch.setattr(results, "_LINE_DECODER", None)
    general = _load(path, keys_path, tmp_path, ResultParser(parse_json=parse_json))
    assert fast == general
    rows, report = fast
    assert len(rows) == 26 and sorted(r[0] for r in rows) == list(range(26))
    assert report["truncated"] and report["duplicate_keys"] == 1 and report["unknown_keys"] == 3


def test_shard_report_dict_has_per_job_tokens_and_is_a_snapshot():
    """The summary's job entry carries the job's token sums; later changes to the report do not leak into it."""
    report = ShardReport(job_name="batches/j")
    report.tokens["prompt"] += 5
    report.counts["succeeded"] += 1
    snapshot = report.to_dict()
    assert snapshot["tokens"] == {"prompt": 5, "output": 0, "thinking": 0, "cached": 0, "total": 0}
    report.tokens["prompt"] += 1
    report.counts["succeeded"] += 1
    report.unknown("k")
    assert snapshot["tokens"]["prompt"] == 5 and snapshot["counts"]["succeeded"] == 1
    assert snapshot["unknown_key_examples"] == []
