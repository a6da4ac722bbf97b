"""The context cache's parts: the size check before any call, the slot filled in place (whatever the block
boundaries), the deterministic display name, and the ledger-driven create / re-use against the emulator."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
import pytest

from airflow_gemini_batch.exceptions import GeminiBatchInputError
from airflow_gemini_batch.hooks.gemini import GeminiBatchHook
from airflow_gemini_batch.inputs.requests import (
    CACHE_SLOT_WIDTH,
    RequestEncoder,
    RequestSpec,
    cache_slot_field,
)
from airflow_gemini_batch.inputs.validation import InvalidRows
from airflow_gemini_batch.submit import context_cache
from airflow_gemini_batch.submit.context_cache import (
    SharedContext,
    ensure_cache,
    fill_cache_slots,
    min_cache_tokens,
    needs_renewal,
    placeholder_name,
)
from airflow_gemini_batch.submit.ledger import SubmissionLedger
from airflow_gemini_batch.submit.run import SubmitSettings
from tests.reliability.helpers import StateStore

if TYPE_CHECKING:
    from pathlib import Path

DOCUMENT = "Shared instructions for every request. " * 120  # ~1 170 tokens


def _shared(text: Any = DOCUMENT, model: str = "gemini-2.5-flash", **kw: Any) -> SharedContext:
    return SharedContext.of(
        text, model=model, system_instruction=kw.get("si"), tools=kw.get("tools"), ttl_seconds=None
    )


@pytest.mark.parametrize(
    ("model", "minimum"),
    [
        ("gemini-2.5-flash", 1024),
        ("models/gemini-2.5-pro", 4096),
        ("gemini-2.5-flash-lite", 1024),
        ("gemini-3-pro-preview", 4096),
    ],
)
def test_minimum_cacheable_size_per_model(model: str, minimum: int) -> None:
    assert min_cache_tokens(model) == minimum


def test_a_small_prefix_is_refused_naming_size_minimum_and_fix() -> None:
    with pytest.raises(GeminiBatchInputError) as err:
        _shared("x" * 4000, model="gemini-2.5-pro").check_size()
    text = str(err.value)
    assert "about 1,000 tokens" in text and "gemini-2.5-pro (4,096 tokens)" in text and "Fix:" in text
    _shared(["a" * 2000, {"parts": [{"text": "b" * 2100}]}]).check_size()  # 1 025 tokens: enough for Flash
    _shared([{"parts": [{"fileData": {"fileUri": "files/x"}}]}]).check_size()  # not text: the service judges


def test_bad_shared_context_and_combinations_are_refused() -> None:
    with pytest.raises(GeminiBatchInputError, match="Content dict"):
        _shared(42)
    with pytest.raises(ValueError, match="one of shared_context and cached_content"):
        SubmitSettings(requests=["a"], shared_context=DOCUMENT, cached_content="cachedContents/x").validated()
    with pytest.raises(ValueError, match="system_instruction or tools"):
        SubmitSettings(
            requests=["a"], cached_content="cachedContents/x", system_instruction="be brief"
        ).validated()


def test_display_name_is_deterministic_and_follows_the_content() -> None:
    assert _shared().display_name("abc") == _shared().display_name("abc")
    assert _shared().display_name("abc") != _shared(DOCUMENT + "!").display_name("abc")
    assert _shared(si="be brief").system_instruction == {"parts": [{"text": "be brief"}]}


def test_renewal_when_less_than_half_the_ttl_is_left() -> None:
    assert not needs_renewal(1000.0 + 600, 1000.0, now=1000.0)
    assert needs_renewal(1000.0 + 400, 1000.0, now=1000.0)
    assert not needs_renewal(None, 1000.0, now=1000.0)


def test_encoded_lines_carry_a_fixed_width_slot_that_fills_in_place(tmp_path: Path, monkeypatch: Any) -> None:
    placeholder = placeholder_name("0123456789ab", _shared())
    assert placeholder != placeholder_name("0123456789ab", _shared(DOCUMENT + "!"))
    spec = RequestSpec(prompt_column="p", cached_content=placeholder, cache_slot=True)
    encoder = RequestEncoder(spec, ["id", "p"], InvalidRows(False, None, 10_000))
    lines, _ = encoder.encode([(i, f"prompt {i}") for i in range(50)])
    builder = RequestSpec(
        request_builder=lambda r: {"contents": [{"parts": [{"text": r["p"]}]}]},
        cached_content=placeholder,
        cache_slot=True,
    )
    more, _ = RequestEncoder(builder, ["id", "p"], InvalidRows(False, None, 10_000)).encode([(99, "built")])
    assert all(cache_slot_field(placeholder) in line for line in [*lines, *more])
    path = tmp_path / "shard.jsonl"
    path.write_bytes(b"".join([*lines, *more]))
    size = path.stat().st_size
    monkeypatch.setattr(context_cache, "_SCAN_BLOCK", 97)  # slots straddle block boundaries
    assert fill_cache_slots(path, placeholder, "cachedContents/real-name") == 51
    assert path.stat().st_size == size
    parsed = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert {p["request"]["cachedContent"] for p in parsed} == {"cachedContents/real-name"}
    assert parsed[0]["request"]["contents"][0]["parts"][0]["text"] == "prompt 0"
    assert len(cache_slot_field("cachedContents/x")) == CACHE_SLOT_WIDTH


def test_ensure_creates_once_then_reuses_and_recreates_a_gone_cache(gemini_conn: str, emulator: Any) -> None:
    hook, store = GeminiBatchHook(gemini_conn), StateStore()
    ledger = SubmissionLedger(store)
    first = ensure_cache(hook, ledger, _shared(), "abc")
    assert first.created and ledger.cache()["name"] == first.name
    again = ensure_cache(hook, ledger, _shared(), "abc")
    assert (again.name, again.created) == (first.name, False)
    hook.delete_cache(first.name)
    ledger.record_upload(0, {"display_name": "s0"}, "files/old")
    third = ensure_cache(hook, ledger, _shared(), "abc")
    assert third.created and third.replaced and third.name != first.name
    assert ledger.forget_uploads(1) == [0] and "file_name" not in ledger.shard(0)
    # Without a state store, the display name finds the live cache.
    found = ensure_cache(hook, SubmissionLedger(None), _shared(), "abc")
    assert (found.name, found.created) == (third.name, False)
    assert emulator.control.calls()["caches.create"] == 2
    assert hook.delete_cache(third.name) is True and hook.delete_cache(third.name) is False
