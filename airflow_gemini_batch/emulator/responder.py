"""Deterministic "model": answers derived only from the request, so tests can predict every byte.

Public, pure functions (no I/O, no clock, no randomness beyond hashes of the request):

* ``expected_text(request)`` - the answer text for one GenerateContentRequest dict:
  - plain mode: ``"echo: " + prompt_text(request)``, cut to ``4 * maxOutputTokens`` characters
    (finishReason then becomes ``MAX_TOKENS``, otherwise ``STOP``);
  - ``responseMimeType == "application/json"`` with ``responseSchema``/``responseJsonSchema`` (any casing):
    ``json.dumps(value)`` where ``value`` is valid against the schema (every declared property present,
    enums chosen by hash of prompt+path, numbers/ints within min/max, arrays within minItems/maxItems);
    JSON output is never truncated so it always parses; without a schema: ``{"text": "echo: ..."}``;
  - ``responseMimeType == "text/x.enum"`` with an enum schema: one of the enum values.
* ``usage_for(request, text)`` - ``usageMetadata``: promptTokenCount = ceil(len(all_prompt_text)/4) where
  ``all_prompt_text`` joins the system-instruction and contents text parts with ``"\\n"``;
  candidatesTokenCount = ceil(len(text)/4); totalTokenCount = their sum. No thoughtsTokenCount.
* ``expected_embedding(text, dim)`` - a unit vector of ``dim`` floats seeded by sha256(text).
* A request whose prompt (contents or system instruction) contains ``PLEASE_FAIL`` fails with
  ``{"code": 400, "message": ...}``; one containing ``PLEASE_BLOCK`` is answered as a prompt blocked by the
  safety filters (no candidates, ``promptFeedback.blockReason = SAFETY``), as the service does.

Field names are accepted in camelCase and snake_case, like the real service (proto JSON).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
from collections.abc import Mapping
from typing import Any

from airflow_gemini_batch.emulator.common import pick

FAIL_MARKER = "PLEASE_FAIL"
BLOCK_MARKER = "PLEASE_BLOCK"
DEFAULT_EMBEDDING_DIM = 3072
CHARS_PER_TOKEN = 4


# ---- prompt extraction ----


def _texts(content: Any) -> list[str]:
    """Text parts of a Content, a list of Contents, or a bare string."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        out: list[str] = []
        for item in content:
            out.extend(_texts(item))
        return out
    if isinstance(content, Mapping):
        parts = content.get("parts")
        if parts is None and "text" in content:
            return [str(content["text"])]
        out = []
        for part in parts or []:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, Mapping) and part.get("text") is not None:
                out.append(str(part["text"]))
        return out
    return []


def content_texts(content: Any) -> list[str]:
    """Text parts of a Content, a list of Contents, or a bare string (what a token count counts)."""
    return _texts(content)


def prompt_text(request: Mapping[str, Any]) -> str:
    """The user-visible prompt: all text parts of ``contents`` joined with newlines."""
    return "\n".join(_texts(request.get("contents")))


def all_prompt_text(request: Mapping[str, Any]) -> str:
    return "\n".join(
        _texts(pick(request, "systemInstruction", "system_instruction")) + _texts(request.get("contents"))
    )


def _generation_config(request: Mapping[str, Any]) -> Mapping[str, Any]:
    cfg = pick(request, "generationConfig", "generation_config")
    return cfg if isinstance(cfg, Mapping) else {}


# ---- schema-driven JSON ----


def _hash_int(*parts: str) -> int:
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    seen = 0
    while isinstance(schema, Mapping) and "$ref" in schema and seen < 32:
        ref = str(schema["$ref"])
        node: Any = root
        if ref.startswith("#"):
            for token in [t for t in ref[1:].split("/") if t]:
                node = node.get(token, {}) if isinstance(node, Mapping) else {}
        schema = node if isinstance(node, Mapping) else {}
        seen += 1
    return schema


def _schema_type(schema: Mapping[str, Any]) -> str:
    raw = schema.get("type")
    if isinstance(raw, list):
        raw = next((t for t in raw if str(t).lower() != "null"), raw[0] if raw else None)
    if raw is None or str(raw).upper() == "TYPE_UNSPECIFIED":
        if "properties" in schema:
            return "object"
        if "items" in schema:
            return "array"
        return "string"
    return str(raw).lower()


def _num(schema: Mapping[str, Any], *names: str) -> float | None:
    value = pick(schema, *names)
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _string_value(schema: Mapping[str, Any], prompt: str, path: str) -> str:
    fmt = str(schema.get("format") or "").lower()
    fixed = {
        "date-time": "2025-01-01T00:00:00Z",
        "date": "2025-01-01",
        "time": "00:00:00",
        "email": "user@example.com",
        "uri": "https://example.com/",
        "uuid": "00000000-0000-4000-8000-000000000000",
    }
    if fmt in fixed:
        return fixed[fmt]
    label = path.rsplit("/", 1)[-1] or "value"
    text = f"{label}: {prompt[:40]}"
    max_len = _num(schema, "maxLength", "max_length")
    min_len = _num(schema, "minLength", "min_length")
    if max_len is not None:
        text = text[: int(max_len)]
    if min_len is not None and len(text) < int(min_len):
        text = text + "x" * (int(min_len) - len(text))
    return text


def schema_value(
    schema: Mapping[str, Any], prompt: str, path: str = "", root: Any = None, depth: int = 0
) -> Any:
    """A deterministic value valid against an OpenAPI (Gemini ``Schema``) or JSON-Schema ``schema``."""
    root = schema if root is None else root
    schema = _resolve(schema, root)
    if depth > 12:
        return None
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if enum:
        return list(enum)[_hash_int(prompt, path) % len(enum)]
    for combinator in ("anyOf", "any_of", "oneOf", "one_of", "allOf", "all_of"):
        options = schema.get(combinator)
        if options:
            non_null = [o for o in options if _schema_type(_resolve(o, root)) != "null"] or list(options)
            return schema_value(non_null[0], prompt, path, root, depth + 1)
    kind = _schema_type(schema)
    h = _hash_int(prompt, path)
    if kind == "object":
        props: Mapping[str, Any] = schema.get("properties") or {}
        order = list(pick(schema, "propertyOrdering", "property_ordering") or [])
        names = [n for n in order if n in props] + [n for n in props if n not in order]
        return {n: schema_value(props[n], prompt, f"{path}/{n}", root, depth + 1) for n in names}
    if kind == "array":
        items = schema.get("items") or {"type": "string"}
        count = 2
        lo, hi = _num(schema, "minItems", "min_items"), _num(schema, "maxItems", "max_items")
        if lo is not None:
            count = max(count, int(lo))
        if hi is not None:
            count = min(count, int(hi))
        return [schema_value(items, prompt, f"{path}/{i}", root, depth + 1) for i in range(count)]
    if kind == "integer":
        lo_f = _num(schema, "minimum")
        hi_f = _num(schema, "maximum")
        ex_lo, ex_hi = _num(schema, "exclusiveMinimum"), _num(schema, "exclusiveMaximum")
        lo_i = math.ceil(lo_f) if lo_f is not None else (math.floor(ex_lo) + 1 if ex_lo is not None else 0)
        hi_i = (
            math.floor(hi_f)
            if hi_f is not None
            else (math.ceil(ex_hi) - 1 if ex_hi is not None else lo_i + 100)
        )
        return lo_i + h % (max(hi_i - lo_i, 0) + 1)
    if kind == "number":
        lo_n = _num(schema, "minimum", "exclusiveMinimum") or 0.0
        hi_n = _num(schema, "maximum", "exclusiveMaximum")
        hi_n = lo_n + 100.0 if hi_n is None else hi_n
        value = lo_n + (h % 9999 + 1) / 10000.0 * (hi_n - lo_n)
        return round(value, 4) if lo_n < round(value, 4) < hi_n else value
    if kind == "boolean":
        return h % 2 == 0
    if kind == "null":
        return None
    return _string_value(schema, prompt, path)


# ---- answers ----


def _schema_of(cfg: Mapping[str, Any]) -> Any:
    return pick(cfg, "responseJsonSchema", "response_json_schema", "responseSchema", "response_schema")


def generate(request: Mapping[str, Any]) -> tuple[str, str]:
    """``(text, finishReason)`` for a GenerateContentRequest dict."""
    cfg = _generation_config(request)
    prompt = prompt_text(request)
    mime = str(pick(cfg, "responseMimeType", "response_mime_type") or "").lower()
    schema = _schema_of(cfg)
    if mime == "application/json":
        value = schema_value(schema, prompt) if isinstance(schema, Mapping) else {"text": f"echo: {prompt}"}
        return json.dumps(value), "STOP"
    if mime == "text/x.enum" and isinstance(schema, Mapping) and schema.get("enum"):
        return str(schema_value(schema, prompt)), "STOP"
    text = f"echo: {prompt}"
    max_tokens = pick(cfg, "maxOutputTokens", "max_output_tokens")
    if max_tokens is not None and len(text) > int(max_tokens) * CHARS_PER_TOKEN:
        return text[: int(max_tokens) * CHARS_PER_TOKEN], "MAX_TOKENS"
    return text, "STOP"


def expected_text(request: Mapping[str, Any]) -> str:
    return generate(request)[0]


def _tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def usage_for(request: Mapping[str, Any], text: str) -> dict[str, int]:
    prompt_tokens = _tokens(len(all_prompt_text(request)))
    answer_tokens = _tokens(len(text))
    return {
        "promptTokenCount": prompt_tokens,
        "candidatesTokenCount": answer_tokens,
        "totalTokenCount": prompt_tokens + answer_tokens,
    }


def response_id(model: str, request: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(f"{model}\x00{all_prompt_text(request)}".encode()).digest()
    return base64.urlsafe_b64encode(digest[:15]).decode("ascii")


def generate_response(request: Mapping[str, Any], model: str) -> dict[str, Any]:
    """A GenerateContentResponse dict (camelCase, as on the wire)."""
    text, finish = generate(request)
    model_id = model.split("/", 1)[1] if model.startswith(("models/", "tunedModels/")) else model
    return {
        "candidates": [
            {"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": finish, "index": 0}
        ],
        "usageMetadata": usage_for(request, text),
        "modelVersion": model_id,
        "responseId": response_id(model_id, request),
    }


def fail_error() -> dict[str, Any]:
    return {
        "code": 400,
        "message": f"Request contains an invalid argument (the prompt contains {FAIL_MARKER}).",
    }


# ---- embeddings ----


def embedding_text(request: Mapping[str, Any]) -> str:
    return "\n".join(_texts(request.get("content")))


def embedding_dim(request: Mapping[str, Any]) -> int:
    dim = pick(request, "outputDimensionality", "output_dimensionality")
    return int(dim) if dim else DEFAULT_EMBEDDING_DIM


def expected_embedding(text: str, dim: int = DEFAULT_EMBEDDING_DIM) -> list[float]:
    """Unit vector of ``dim`` floats, seeded by sha256(text) (stable across processes and Python versions)."""
    rng = random.Random(int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest(), "big"))
    values = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def embed_response(request: Mapping[str, Any]) -> dict[str, Any]:
    return {"embedding": {"values": expected_embedding(embedding_text(request), embedding_dim(request))}}


def answer(request: Mapping[str, Any], model: str, kind: str) -> tuple[str, dict[str, Any]]:
    """``("response", body)`` or ``("error", {"code", "message"})`` for one request of a ``kind`` job."""
    text_for_fail = embedding_text(request) if kind == "embed" else all_prompt_text(request)
    if FAIL_MARKER in text_for_fail:
        return "error", fail_error()
    if kind == "embed":
        return "response", embed_response(request)
    if BLOCK_MARKER in text_for_fail:
        return "response", blocked_response(request, model)
    return "response", generate_response(request, model)


def blocked_response(request: Mapping[str, Any], model: str) -> dict[str, Any]:
    """A prompt the safety filters blocked: no candidates, the reason in ``promptFeedback``."""
    prompt_tokens = math.ceil(len(all_prompt_text(request)) / CHARS_PER_TOKEN)
    return {
        "promptFeedback": {"blockReason": "SAFETY"},
        "usageMetadata": {"promptTokenCount": prompt_tokens, "totalTokenCount": prompt_tokens},
        "modelVersion": model.removeprefix("models/"),
    }
