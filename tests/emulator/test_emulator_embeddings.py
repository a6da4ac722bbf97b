"""Embedding batches (``batches.create_embeddings``): inline and file input, requested dimension honoured,
vectors equal to ``expected_embedding`` (deterministic unit vectors)."""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import pytest
from emulator_test_helpers import parse_jsonl, wait_done, write_jsonl
from google.genai import types

from airflow_gemini_batch.emulator.responder import expected_embedding

if TYPE_CHECKING:
    from pathlib import Path

    from google import genai

    from airflow_gemini_batch.emulator import EmulatorServer

EMBED_MODEL = "gemini-embedding-001"


@pytest.fixture(autouse=True)
def _quiet_experimental() -> None:
    warnings.filterwarnings("ignore", message=".*experimental.*")


def test_inline_embeddings(emu: EmulatorServer, client: genai.Client) -> None:
    job = client.batches.create_embeddings(
        model=EMBED_MODEL,
        src={"inlined_requests": {"contents": ["alpha", "beta"], "config": {"output_dimensionality": 8}}},
        config={"display_name": "emb-inline"},
    )
    assert job.name
    done = wait_done(client, job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    assert done.dest is not None and done.dest.inlined_embed_content_responses
    vectors = [r.response.embedding.values for r in done.dest.inlined_embed_content_responses]  # type: ignore[union-attr]
    assert vectors == [
        pytest.approx(expected_embedding("alpha", 8)),
        pytest.approx(expected_embedding("beta", 8)),
    ]
    assert all(math.isclose(sum(v * v for v in vec), 1.0) for vec in vectors if vec)
    [emu_job] = emu.control.jobs()
    assert emu_job["kind"] == "embed" and emu_job["input"] == "inline" and emu_job["request_count"] == 2


def test_file_embeddings_default_and_custom_dimension(client: genai.Client, tmp_path: Path) -> None:
    lines = [
        {"key": "e1", "request": {"content": {"parts": [{"text": "first"}]}, "output_dimensionality": 16}},
        {"key": "e2", "request": {"content": {"parts": [{"text": "second"}]}, "outputDimensionality": 4}},
        {"key": "e3", "request": {"content": {"parts": [{"text": "default dim"}]}}},
        {"key": "e4", "request": {"content": {"parts": [{"text": "PLEASE_FAIL"}]}}},
    ]
    uploaded = client.files.upload(
        file=str(write_jsonl(tmp_path / "emb.jsonl", lines)), config={"mime_type": "jsonl"}
    )
    assert uploaded.name
    job = client.batches.create_embeddings(model=EMBED_MODEL, src={"file_name": uploaded.name})
    assert job.name
    done = wait_done(client, job.name)
    assert done.dest is not None and done.dest.file_name
    out = {o["key"]: o for o in parse_jsonl(client.files.download(file=done.dest.file_name))}
    assert out["e1"]["response"]["embedding"]["values"] == pytest.approx(expected_embedding("first", 16))
    assert out["e2"]["response"]["embedding"]["values"] == pytest.approx(expected_embedding("second", 4))
    assert len(out["e3"]["response"]["embedding"]["values"]) == 3072
    assert out["e4"]["error"]["code"] == 400


def test_expected_embedding_is_deterministic_unit_vector() -> None:
    a, b = expected_embedding("same", 32), expected_embedding("same", 32)
    assert a == b and len(a) == 32 and math.isclose(sum(x * x for x in a), 1.0)
    assert expected_embedding("other", 32) != a
