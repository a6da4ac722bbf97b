"""The deterministic responder: structured output honours the schema (through the real SDK), plain text is
predictable, truncation follows maxOutputTokens, and usage follows the documented ~4 chars/token rule."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from emulator_test_helpers import MODEL, wait_done
from pydantic import BaseModel

from airflow_gemini_batch.emulator.responder import expected_text, schema_value, usage_for

if TYPE_CHECKING:
    from google import genai

SCHEMA: dict[str, Any] = {
    "type": "OBJECT",
    "properties": {
        "sentiment": {"type": "STRING", "enum": ["positive", "negative", "neutral"]},
        "score": {"type": "NUMBER", "minimum": 0, "maximum": 1},
        "stars": {"type": "INTEGER", "minimum": 1, "maximum": 5},
        "spam": {"type": "BOOLEAN"},
        "tags": {"type": "ARRAY", "items": {"type": "STRING"}, "minItems": 3},
        "author": {"type": "OBJECT", "properties": {"name": {"type": "STRING"}}, "required": ["name"]},
    },
    "required": ["sentiment", "score", "stars", "spam", "tags", "author"],
}


def _check(value: dict[str, Any]) -> None:
    assert set(SCHEMA["required"]) <= set(value)
    assert value["sentiment"] in ("positive", "negative", "neutral")
    assert 0 <= value["score"] <= 1 and isinstance(value["score"], float)
    assert 1 <= value["stars"] <= 5 and isinstance(value["stars"], int)
    assert isinstance(value["spam"], bool)
    assert len(value["tags"]) >= 3 and all(isinstance(t, str) for t in value["tags"])
    assert isinstance(value["author"]["name"], str)


class Review(BaseModel):
    sentiment: str
    stars: int


def test_structured_output_through_sdk(client: genai.Client) -> None:
    src = [
        {
            "contents": f"review {i}",
            "config": {"response_mime_type": "application/json", "response_schema": SCHEMA},
            "metadata": {"key": f"r{i}"},
        }
        for i in range(6)
    ]
    src.append(
        {
            "contents": "pydantic",
            "config": {"response_mime_type": "application/json", "response_schema": Review},
            "metadata": {"key": "pyd"},
        }
    )
    src.append(
        {
            "contents": "json schema",
            "config": {
                "response_mime_type": "application/json",
                "response_json_schema": {
                    "type": "object",
                    "properties": {"label": {"enum": ["a", "b"]}, "n": {"type": ["integer", "null"]}},
                    "required": ["label", "n"],
                },
            },
            "metadata": {"key": "js"},
        }
    )
    done = wait_done(client, client.batches.create(model=MODEL, src=src).name or "")
    assert done.dest and done.dest.inlined_responses
    by_key = {(r.metadata or {})["key"]: r for r in done.dest.inlined_responses}
    sentiments = set()
    for i in range(6):
        response = by_key[f"r{i}"].response
        assert response is not None and response.text is not None
        value = json.loads(response.text)
        _check(value)
        sentiments.add(value["sentiment"])
    assert len(sentiments) > 1  # enum choice depends on the prompt
    pyd = by_key["pyd"].response
    assert pyd is not None and pyd.text is not None
    Review.model_validate_json(pyd.text)
    js = by_key["js"].response
    assert js is not None and js.text is not None
    js_value = json.loads(js.text)
    assert js_value["label"] in ("a", "b") and isinstance(js_value["n"], int)


def test_expected_text_and_usage_are_predictable() -> None:
    request = {
        "contents": [{"parts": [{"text": "hello"}, {"text": "world"}]}],
        "system_instruction": {"parts": [{"text": "sys"}]},
    }
    assert expected_text(request) == "echo: hello\nworld"
    usage = usage_for(request, expected_text(request))
    assert usage["promptTokenCount"] == math.ceil(len("sys\nhello\nworld") / 4)
    assert usage["candidatesTokenCount"] == math.ceil(len("echo: hello\nworld") / 4)
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"]
    assert "thoughtsTokenCount" not in usage
    truncated = {"contents": [{"parts": [{"text": "a" * 100}]}], "generationConfig": {"maxOutputTokens": 3}}
    assert expected_text(truncated) == ("echo: " + "a" * 100)[:12]


def test_schema_value_refs_and_bounds() -> None:
    schema = {
        "$defs": {
            "Item": {"type": "object", "properties": {"id": {"type": "integer", "exclusiveMinimum": 10}}}
        },
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}, "maxItems": 1},
            "code": {"type": "string", "maxLength": 3},
            "when": {"type": "string", "format": "date-time"},
            "maybe": {"anyOf": [{"type": "null"}, {"type": "boolean"}]},
        },
    }
    value = schema_value(schema, "prompt")
    assert len(value["items"]) == 1 and value["items"][0]["id"] > 10
    assert len(value["code"]) <= 3 and value["when"].endswith("Z") and isinstance(value["maybe"], bool)
    assert schema_value(schema, "prompt") == value
