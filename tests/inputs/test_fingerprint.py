"""Request fingerprints: the encoder's fast path gives exactly the canonical definition's digest, and a digest
changes with what is sent (prompt, model, job-wide config, schema) and nothing else (not the key)."""

from __future__ import annotations

import hashlib
import io

import orjson
import pytest

from airflow_gemini_batch.inputs.fingerprint import canonical_json, request_fingerprint
from airflow_gemini_batch.inputs.requests import RequestEncoder, RequestSpec
from airflow_gemini_batch.inputs.validation import InvalidRows

PROMPTS = [
    "plain",
    'quote " and \\ backslash',
    "naïve ünïcode ✓ 🚀",
    "line\nbreak\ttab",
    "{x} {{y}}",
    "\u2028",
]
WIDE = {
    "system_instruction": 'Be brief. "Quoted" {braces}',
    "generation_config": {"temperature": 0.2, "max_output_tokens": 50, "top_k": 3},
    "response_schema": {"type": "object", "properties": {"b": {"type": "string"}, "a": {"type": "number"}}},
    "tools": [{"googleSearch": {}}],
    "cached_content": "cachedContents/abc",
}


def _encode(spec: RequestSpec, rows, columns, model="gemini-2.5-flash", prebuilt=False):
    invalid = InvalidRows(False, io.BytesIO(), spec.max_request_bytes)
    encoder = RequestEncoder(spec, columns, invalid, prebuilt=prebuilt, model=model)
    return encoder.encode_with_fingerprints(rows)


@pytest.mark.parametrize("task", ["generate", "embed"])
@pytest.mark.parametrize("wide", [{}, WIDE], ids=["bare", "job-wide"])
def test_fast_path_equals_the_canonical_definition(task, wide):
    if task == "embed":
        wide = {"embedding_task_type": "RETRIEVAL_DOCUMENT", "output_dimensionality": 8} if wide else {}
    spec = RequestSpec(task=task, prompt_column="prompt", **wide)
    rows = [(i, p) for i, p in enumerate(PROMPTS)]
    lines, _, fingerprints = _encode(spec, rows, ["id", "prompt"])
    for line, fingerprint in zip(lines, fingerprints, strict=True):
        request = orjson.loads(line)["request"]
        assert fingerprint == request_fingerprint("gemini-2.5-flash", task, request)
        assert fingerprint == hashlib.sha256(canonical_json("gemini-2.5-flash", task, request)).hexdigest()


def test_canonical_json_sorts_keys_at_every_level_without_whitespace():
    assert canonical_json("m", "generate", {"b": {"z": 1, "a": 2}, "a": [{"y": 1, "x": 2}]}) == (
        b'{"model":"m","request":{"a":[{"x":2,"y":1}],"b":{"a":2,"z":1}},"task":"generate"}'
    )


def test_template_builder_and_prebuilt_paths_agree_for_the_same_request():
    template = RequestSpec(prompt_template="Describe {name}.", system_instruction="Be brief.")
    _, _, (from_template,) = _encode(template, [(1, "kettle")], ["id", "name"])
    builder = RequestSpec(
        request_builder=lambda row: {
            "contents": [{"role": "user", "parts": [{"text": f"Describe {row['name']}."}]}]
        },
        system_instruction="Be brief.",
    )
    _, _, (from_builder,) = _encode(builder, [(1, "kettle")], ["id", "name"])
    request = {
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [{"parts": [{"text": "Describe kettle."}], "role": "user"}],
    }
    _, _, (from_prebuilt,) = _encode(RequestSpec(), [("k", request)], ["key", "request"], prebuilt=True)
    assert from_template == from_builder == from_prebuilt


def test_what_changes_a_fingerprint():
    rows = [(1, "kettle"), (2, "kettle"), (3, "spade")]
    spec = RequestSpec(prompt_template="Describe {name}.")
    _, _, base = _encode(spec, rows, ["id", "name"])
    assert base[0] == base[1] != base[2]  # the key is not part of it; the prompt is
    _, _, other_model = _encode(spec, rows, ["id", "name"], model="gemini-2.5-pro")
    _, _, other_config = _encode(
        RequestSpec(prompt_template="Describe {name}.", generation_config={"temperature": 0}),
        rows,
        ["id", "name"],
    )
    _, _, other_schema = _encode(
        RequestSpec(prompt_template="Describe {name}.", response_schema={"type": "object"}),
        rows,
        ["id", "name"],
    )
    assert len({base[0], other_model[0], other_config[0], other_schema[0]}) == 4
    _, _, again = _encode(RequestSpec(prompt_template="Describe {name}."), rows, ["id", "name"])
    assert again == base  # deterministic across encoders (the slot is not part of the digest)


def test_a_runs_cache_placeholder_does_not_change_the_fingerprint_its_context_does():
    """shared_context: each run names its own cache, so fingerprints name the cached context's digest."""

    def fps(placeholder: str, stable: str) -> list[str]:
        spec = RequestSpec(
            prompt_template="Q: {name}", cached_content=placeholder, cache_slot=True,
            fingerprint_cached_content=stable,
        )  # fmt: skip
        return _encode(spec, [(1, "a"), (2, "b")], ["id", "name"])[2]

    run1 = fps("cachedContents/agb-slot-run1-abc", "shared-context:abc")
    assert run1 == fps("cachedContents/agb-slot-run2-abc", "shared-context:abc")
    assert run1 != fps("cachedContents/agb-slot-run2-def", "shared-context:def")
