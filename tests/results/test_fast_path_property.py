"""The responses file's msgspec fast path is an optimisation only: over generated result lines of every shape,
it yields exactly the rows and the report of the general path (``ResultParser.object_row``).

Lines are generated, not listed: keys of both JSON types (in and out of the key list, echoed as strings, at and
beyond 64 bits, odd types, in metadata, absent), text / thought / tool-call parts, finish reasons, usage
metadata with and without thinking and cached tokens, errors, blocked prompts, odd types and missing fields
anywhere, answers that are schema-valid JSON, schema-invalid JSON or no JSON - serialized in several ways,
sometimes cut off, doubled keys or not JSON at all. A case where the general path raises must raise alike.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import airflow_gemini_batch.results.responses_file as responses_file
from airflow_gemini_batch.results.parsing import ResultParser, ShardReport, iter_file_rows
from airflow_gemini_batch.results.reconcile import KeyReconciler

#: The key list every generated file is loaded against: ints, strings, and ints at the 64-bit edges.
KEYS: list[Any] = [*range(12), "s0", "s1", "s2", 2**63 - 1, 2**63 + 1, 2**64 - 1, -(2**63)]
#: Keys of the common shape (the fast path leaves ints beyond int64 to the general path).
COMMON_KEYS = KEYS[:15]
SCHEMA = {"type": "OBJECT", "properties": {"n": {"type": "INTEGER"}}, "required": ["n"]}
PARSERS = {
    "text": ResultParser(),
    "json": ResultParser(parse_json=True),
    "schema": ResultParser(response_schema=SCHEMA),
}

scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
)
odd = st.one_of(
    scalar, st.lists(scalar, max_size=2), st.dictionaries(st.text(max_size=3), scalar, max_size=2)
)
# At and beyond the 64-bit edges (orjson reads an int beyond them as a float; msgspec keeps an int).
big_int = st.one_of(
    st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1]),
    st.integers(2**64, 2**80),
    st.integers(-(2**80), -(2**63) - 1),
)

key = st.one_of(
    st.sampled_from(KEYS),
    st.sampled_from([str(k) for k in range(12)]),  # an int key echoed back as a string
    st.integers(-3, 20),  # mostly in the list, some not
    big_int,
    odd,
)
token = st.one_of(st.none(), st.integers(0, 10**6), big_int, odd)
usage = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "promptTokenCount": token,
            "candidatesTokenCount": token,
            "thoughtsTokenCount": token,
            "cachedContentTokenCount": token,
            "totalTokenCount": token,
            "promptTokensDetails": st.just([{"modality": "TEXT", "tokenCount": 3}]),
        },
    ),
    odd,
)
answer = st.one_of(
    st.text(max_size=12),
    st.builds(lambda n: orjson.dumps({"n": n}).decode(), st.integers(-5, 5)),  # schema-valid JSON
    st.builds(lambda n: orjson.dumps({"n": n}).decode(), st.text(max_size=3)),  # valid JSON, wrong type
    st.sampled_from(['{"n": ', "[1, 2]", "null", '{"m": 1}', "", '"just a string"']),
    st.none(),
    odd,
)
part = st.fixed_dictionaries(
    {},
    optional={
        "text": answer,
        "thought": st.one_of(st.booleans(), odd),
        "functionCall": st.just({"name": "f", "args": {}}),
        "thoughtSignature": st.just("c2ln"),
    },
)
finish = st.one_of(
    st.sampled_from(["STOP", "MAX_TOKENS", "SAFETY", "RECITATION", "FINISH_REASON_UNSPECIFIED", "OTHER"]),
    odd,
)
content = st.one_of(
    st.fixed_dictionaries(
        {}, optional={"parts": st.one_of(st.lists(part, max_size=3), odd), "role": st.just("model")}
    ),
    odd,
)
candidate = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={"content": content, "finishReason": finish, "index": st.integers(0, 2), "avgLogprobs": odd},
    ),
    odd,
)
response = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "candidates": st.one_of(st.lists(candidate, max_size=2), odd),
            "usageMetadata": usage,
            "modelVersion": st.one_of(st.text(max_size=8), odd),
            "promptFeedback": st.one_of(
                st.fixed_dictionaries({}, optional={"blockReason": st.sampled_from(["SAFETY", "OTHER"])}), odd
            ),
            "responseId": st.text(max_size=4),
        },
    ),
    odd,
)
error = st.one_of(
    st.fixed_dictionaries({}, optional={"code": st.one_of(st.integers(0, 20), odd), "message": odd}), odd
)
any_line = st.fixed_dictionaries(
    {},
    optional={
        "key": key,
        "metadata": st.one_of(st.fixed_dictionaries({"key": key}), odd),
        "response": response,
        "error": error,
        "status": error,
        "extra": odd,
    },
)
# The line the fast path exists for (one candidate, one text part), with its variations, so that generated
# files mix long fast runs with lines that must be handed over.
common_line = st.fixed_dictionaries(
    {
        "key": st.one_of(st.sampled_from(KEYS), key),
        "response": st.fixed_dictionaries(
            {
                "candidates": st.tuples(
                    st.fixed_dictionaries(
                        {
                            "content": st.fixed_dictionaries(
                                {"parts": st.tuples(part), "role": st.just("model")}
                            )
                        },
                        optional={"finishReason": finish},
                    )
                ).map(list),
            },
            optional={"usageMetadata": usage, "modelVersion": st.sampled_from(["gemini-2.5-flash", "m"])},
        ),
    }
)


@st.composite
def raw_line(draw: st.DrawFn) -> bytes:
    shape = draw(st.sampled_from(["common", "common", "common", "any", "odd"]))
    obj = draw({"common": common_line, "any": any_line, "odd": odd}[shape])
    ensure_ascii = draw(st.booleans())
    separators = draw(st.sampled_from([(",", ":"), (", ", ": ")]))
    text = json.dumps(obj, ensure_ascii=ensure_ascii, separators=separators)
    raw = text.encode("utf-8", "surrogatepass")  # a lone surrogate becomes invalid UTF-8, as on a bad wire
    how = draw(st.sampled_from(["as is"] * 8 + ["cut", "doubled key", "blank", "not json", "bom"]))
    if how == "cut":
        return raw[: draw(st.integers(0, max(len(raw) - 1, 0)))]
    if how == "doubled key" and raw.startswith(b"{") and len(raw) > 2:
        return b'{"key":' + json.dumps(draw(key)).encode() + b"," + raw[1:]
    if how == "blank":
        return draw(st.sampled_from([b"", b"   ", b"\t"]))
    if how == "not json":
        return draw(st.sampled_from([b"{broken", b"[1, 2]", b"NaN", b'{"key": 1e400}', b"\xff\xfe"]))
    if how == "bom":
        return b"\xef\xbb\xbf" + raw
    return raw


def _load(path: Path, keys_path: Path, work: str, parser: ResultParser, *, general_only: bool) -> Any:
    report = ShardReport(job_name="batches/j")
    keys = KeyReconciler(str(keys_path), work_dir=work)
    decoder = None if general_only else responses_file._LINE_DECODER
    try:
        with mock.patch.object(responses_file, "_LINE_DECODER", decoder):
            rows = [tuple(r) for r in iter_file_rows(path, parser, keys, report)]
    except Exception as e:  # the comparison: the general path raising must be matched by the fast path
        return ("raised", type(e).__name__, str(e))
    finally:
        keys.close()
    return rows, report.to_dict()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(raw_line(), min_size=1, max_size=30),
    final_newline=st.booleans(),
    parser_name=st.sampled_from(sorted(PARSERS)),
    block=st.sampled_from([64, 1 << 18]),
)
def test_the_fast_path_yields_what_the_general_path_yields(lines, final_newline, parser_name, block):
    parser = PARSERS[parser_name]
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        keys_path = folder / "keys.jsonl"
        keys_path.write_bytes(b"".join(json.dumps(k).encode() + b"\n" for k in KEYS))
        path = folder / "responses.jsonl"
        path.write_bytes(b"\n".join(lines) + (b"\n" if final_newline and lines else b""))
        with mock.patch.object(responses_file, "READ_BLOCK_BYTES", block):
            fast = _load(path, keys_path, work, parser, general_only=False)
            general = _load(path, keys_path, work, parser, general_only=True)
    assert fast == general


class _CountingParser(ResultParser):
    """Counts the lines handed to the general path."""

    handed_over = 0

    def object_row(self, *args: Any, **kwargs: Any) -> Any:
        self.handed_over += 1
        return super().object_row(*args, **kwargs)


@settings(max_examples=50, deadline=None)
@given(
    texts=st.lists(st.text(max_size=20), min_size=1, max_size=len(COMMON_KEYS)),
    with_thinking=st.booleans(),
    parse_json=st.booleans(),
)
def test_the_common_line_takes_the_fast_path(texts, with_thinking, parse_json):
    """The property above would hold trivially if every line were handed over: the common line is not."""
    usage = {"promptTokenCount": 3, "candidatesTokenCount": 2, "totalTokenCount": 5}
    if with_thinking:
        usage |= {"thoughtsTokenCount": 7, "cachedContentTokenCount": 1}
    lines = [
        orjson.dumps(
            {
                "key": k,
                "response": {
                    "candidates": [
                        {"content": {"parts": [{"text": t}], "role": "model"}, "finishReason": "STOP"}
                    ],
                    "usageMetadata": usage,
                    "modelVersion": "gemini-2.5-flash",
                },
            }
        )
        for k, t in zip(COMMON_KEYS, texts, strict=False)
    ]
    parser = _CountingParser(parse_json=parse_json)
    with tempfile.TemporaryDirectory() as work:
        keys_path = Path(work) / "keys.jsonl"
        keys_path.write_bytes(b"".join(json.dumps(k).encode() + b"\n" for k in KEYS))
        path = Path(work) / "responses.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        rows, report = _load(path, keys_path, work, parser, general_only=False)
    assert parser.handed_over == 0
    assert [r[0] for r in rows[: len(texts)]] == COMMON_KEYS[: len(texts)] and report["lines"] == len(texts)
