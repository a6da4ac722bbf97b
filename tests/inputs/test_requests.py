"""Row → request line: row text stays literal, job-wide options in REST camelCase, validation reasons."""

from __future__ import annotations

import io

import orjson
import pytest
from pydantic import BaseModel

from airflow_gemini_batch.emulator.responder import expected_text, prompt_text
from airflow_gemini_batch.exceptions import GeminiBatchInputError
from airflow_gemini_batch.inputs.requests import RequestEncoder, RequestSpec, parse_template
from airflow_gemini_batch.inputs.validation import InvalidRows

COLUMNS = ["id", "name", "category"]


def _encode(spec: RequestSpec, rows, columns=COLUMNS, skip=False, prebuilt=False):
    skipped = io.BytesIO()
    invalid = InvalidRows(skip, skipped, spec.max_request_bytes)
    lines, keys = RequestEncoder(spec, columns, invalid, prebuilt=prebuilt).encode(rows)
    return [orjson.loads(line) for line in lines], [orjson.loads(k) for k in keys], invalid, skipped


def test_parse_template_literal_braces():
    literals, columns = parse_template("Hi {name}, {{not a column}} and {{{category}}}")
    assert columns == ["name", "category"]
    assert literals == ["Hi ", ", {not a column} and {", "}"]


@pytest.mark.parametrize("bad", ["a } b", "a { b", "{}"])
def test_parse_template_rejects_stray_braces(bad):
    with pytest.raises(GeminiBatchInputError, match="stray"):
        parse_template(bad)


def test_row_values_with_braces_stay_literal():
    """A value that looks like a template ({x}, {{ }}, {0.__class__}) is copied verbatim, never evaluated."""
    rows = [
        (1, "{category}", "tools"),
        (2, "{{ ds }}", "garden"),
        (3, "{0.__class__}", "{name}"),
        (4, "%(x)s {{{{", "}}"),
    ]
    spec = RequestSpec(prompt_template="Describe {name} in {category}. {{literal}}")
    lines, keys, invalid, _ = _encode(spec, rows)
    assert invalid.total == 0
    assert keys == ["1", "2", "3", "4"]
    texts = [prompt_text(line["request"]) for line in lines]
    assert texts == [
        "Describe {category} in tools. {literal}",
        "Describe {{ ds }} in garden. {literal}",
        "Describe {0.__class__} in {name}. {literal}",
        "Describe %(x)s {{{{ in }}. {literal}",
    ]
    # The emulator's deterministic model echoes the literal text back, braces included.
    assert expected_text(lines[1]["request"]) == "echo: Describe {{ ds }} in garden. {literal}"


def test_unknown_placeholder_names_columns():
    spec = RequestSpec(prompt_template="{name} {colour} {size}")
    with pytest.raises(GeminiBatchInputError) as e:
        _encode(spec, [(1, "a", "b")])
    assert "['colour', 'size']" in str(e.value)
    assert "available columns: ['id', 'name', 'category']" in str(e.value)


def test_missing_key_or_prompt_column():
    with pytest.raises(GeminiBatchInputError, match="key_column='sku' is not a column"):
        _encode(RequestSpec(key_column="sku", prompt_column="name"), [(1, "a", "b")])
    with pytest.raises(GeminiBatchInputError, match="prompt_column='prompt' is not a column"):
        _encode(RequestSpec(), [(1, "a", "b")])


def test_job_wide_options_camel_case_and_schema():
    class Answer(BaseModel):
        label: str
        score: int

    spec = RequestSpec(
        prompt_column="name",
        system_instruction="Be brief.",
        generation_config={"temperature": 0.1, "max_output_tokens": 64},
        response_schema=Answer,
        tools=[{"googleSearch": {}}],
        safety_settings=[{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
        cached_content="cachedContents/abc",
    )
    lines, _, _, _ = _encode(spec, [(7, "hammer", "tools")])
    request = lines[0]["request"]
    assert request["contents"] == [{"role": "user", "parts": [{"text": "hammer"}]}]
    assert request["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    config = request["generationConfig"]
    assert config["temperature"] == 0.1 and config["maxOutputTokens"] == 64
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"] == Answer.model_json_schema()
    assert request["tools"] == [{"googleSearch": {}}]
    assert request["safetySettings"][0]["threshold"] == "BLOCK_NONE"
    assert request["cachedContent"] == "cachedContents/abc"
    # The emulator answers with JSON valid against the schema.
    Answer.model_validate_json(expected_text(request))


def test_embedding_line_shape():
    spec = RequestSpec(
        task="embed", prompt_column="name", embedding_task_type="RETRIEVAL_DOCUMENT", output_dimensionality=8
    )
    lines, _, _, _ = _encode(spec, [(1, "a hammer", "tools")])
    assert lines == [
        {
            "key": "1",
            "request": {
                "content": {"parts": [{"text": "a hammer"}]},
                "taskType": "RETRIEVAL_DOCUMENT",
                "outputDimensionality": 8,
            },
        }
    ]


def test_invalid_rows_message_names_keys_count_and_fix():
    rows = [(i, None if i % 2 else "   ", "x") for i in range(25)] + [(None, "ok", "x"), (99, "fine", "x")]
    spec = RequestSpec(prompt_column="name")
    lines, _, invalid, _ = _encode(spec, rows)
    assert [line["key"] for line in lines] == ["99"]
    assert invalid.counts == {"empty_prompt": 25, "missing_key": 1}
    with pytest.raises(GeminiBatchInputError) as e:
        invalid.raise_if_any()
    msg = str(e.value)
    assert "26 input row(s) are invalid; nothing was submitted" in msg
    assert "25 row(s): prompt is NULL, empty or only whitespace" in msg
    assert 'first keys: "0", "1", "2", "3", "4", "5", "6", "7", "8", "9" and 15 more' in msg
    assert "Fix: filter them in the query" in msg
    assert "1 row(s): key is missing or NULL" in msg
    assert "on_invalid_row='skip'" in msg


def test_too_large_and_non_utf8():
    spec = RequestSpec(prompt_column="name", max_request_bytes=200)
    bad_utf8 = b"caf\xe9".decode("utf-8", "surrogateescape")
    rows = [(1, "x" * 500, "a"), (2, bad_utf8, "a"), (3, b"\xff\xfe", "a"), (4, b"bytes ok", "a")]
    lines, _, invalid, _ = _encode(spec, rows)
    assert [line["request"]["contents"][0]["parts"][0]["text"] for line in lines] == ["bytes ok"]
    assert invalid.counts == {"too_large": 1, "non_utf8": 2}
    msg = invalid.message()
    assert "over the per-request limit of 200 bytes" in msg
    assert "text is not valid UTF-8" in msg and 'first keys: "2", "3"' in msg


def test_skip_writes_skipped_keys():
    spec = RequestSpec(prompt_template="{name}")
    _, keys, invalid, skipped = _encode(spec, [(1, None, "a"), (2, "ok", "a"), ("", "x", "a")], skip=True)
    assert keys == ["2"]
    invalid.raise_if_any()  # skip mode does not raise
    records = [orjson.loads(line) for line in skipped.getvalue().splitlines()]
    assert records == [{"key": "1", "reason": "null_value"}, {"key": None, "reason": "missing_key"}]


def test_request_builder_and_prebuilt():
    def build(row):
        if row["id"] == 3:
            raise ValueError("no 3")
        return {"contents": [{"parts": [{"text": f"{row['name']}!"}]}]}

    spec = RequestSpec(request_builder=build, system_instruction="sys")
    lines, keys, invalid, _ = _encode(spec, [(1, "a", "t"), (3, "b", "t")])
    assert keys == ["1"]
    assert lines[0]["request"]["systemInstruction"] == {"parts": [{"text": "sys"}]}
    assert invalid.counts == {"builder_error": 1}
    assert "ValueError: no 3" in invalid.message()

    prebuilt = [("a", {"contents": [{"parts": [{"text": "hi"}]}]}), ("b", {}), ("c", "nope")]
    lines, keys, invalid, _ = _encode(RequestSpec(), prebuilt, columns=["key", "request"], prebuilt=True)
    assert keys == ["a"]
    assert invalid.counts == {"empty_prompt": 1, "bad_request": 1}


def test_only_one_prompt_mode():
    with pytest.raises(GeminiBatchInputError, match="only one of"):
        RequestSpec(prompt_column="a", prompt_template="{a}")
