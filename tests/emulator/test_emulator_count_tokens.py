"""The emulator's ``models/*:countTokens``, through the real SDK: the documented, deterministic count."""

from __future__ import annotations

import math

import httpx
import pytest
from google import genai
from google.genai import errors, types

from airflow_gemini_batch.emulator.responder import usage_for
from tests.conftest import TEST_API_KEY


def _client(emulator) -> genai.Client:
    return genai.Client(api_key=TEST_API_KEY, http_options=types.HttpOptions(base_url=emulator.base_url))


def test_count_is_the_sum_of_ceil_chars_over_4_per_content(emulator) -> None:
    client = _client(emulator)
    contents = [
        types.Content(role="user", parts=[types.Part(text="abcde")]),  # 5 chars: 2 tokens
        types.Content(role="user", parts=[types.Part(text="ab"), types.Part(text="cd")]),  # "ab\ncd": 2
    ]
    assert client.models.count_tokens(model="gemini-2.5-flash", contents=contents).total_tokens == 4
    assert emulator.control.calls()["models.countTokens"] == 1


def test_one_request_counts_as_its_usage_says(emulator) -> None:
    """A request's contents counted alone give its usageMetadata.promptTokenCount (the rule is shared)."""
    prompt = "Describe product 7 (garden) in two sentences, please."
    request = {"contents": [{"role": "user", "parts": [{"text": prompt}]}]}
    client = _client(emulator)
    counted = client.models.count_tokens(model="gemini-2.5-flash", contents=prompt).total_tokens
    assert counted == usage_for(request, "x")["promptTokenCount"] == math.ceil(len(prompt) / 4)


def test_no_contents_is_invalid_argument_and_faults_apply(emulator) -> None:
    # The SDK refuses empty contents itself; the wire answer is the service's 400.
    reply = httpx.post(
        f"{emulator.base_url}/v1beta/models/gemini-2.5-flash:countTokens",
        json={"contents": []},
        headers={"x-goog-api-key": TEST_API_KEY},
    )
    assert reply.status_code == 400 and reply.json()["error"]["status"] == "INVALID_ARGUMENT"
    client = _client(emulator)
    emulator.control.inject_fault("models.countTokens", status=400)
    with pytest.raises(errors.ClientError):
        client.models.count_tokens(model="gemini-2.5-flash", contents="hello")
