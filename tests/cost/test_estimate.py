"""The estimate before a run: a bounded sample, one countTokens call (or the heuristic), the output bound,
the batch price; through the real SDK against the emulator's countTokens."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import orjson
import pytest

from airflow_gemini_batch.cost.budget import check_budget
from airflow_gemini_batch.cost.estimate import (
    DEFAULT_EXPECTED_OUTPUT_TOKENS,
    estimate_run,
    sample_requests,
)
from airflow_gemini_batch.exceptions import GeminiBatchBudgetError
from airflow_gemini_batch.hooks.gemini import GeminiBatchHook

if TYPE_CHECKING:
    from pathlib import Path


def _shard(path: Path, prompts: list[str], **config: object) -> tuple[Path, int, int]:
    lines = []
    for i, prompt in enumerate(prompts):
        request: dict[str, object] = {"contents": [{"role": "user", "parts": [{"text": prompt}]}]}
        if config:
            request["generationConfig"] = config
        lines.append(orjson.dumps({"key": str(i), "request": request}) + b"\n")
    path.write_bytes(b"".join(lines))
    return path, len(prompts), path.stat().st_size


def test_the_sample_is_bounded_and_spread_over_the_shards(tmp_path) -> None:
    shards = [_shard(tmp_path / f"s{i}.jsonl", [f"prompt {i}-{j}" for j in range(1000)]) for i in range(4)]
    sample = sample_requests([p for p, _, _ in shards], max_requests=10)
    assert len(sample) == 10  # 3 + 3 + 3 + 1: every shard is represented, none read whole
    big = _shard(tmp_path / "big.jsonl", ["x" * 10_000] * 50)
    assert len(sample_requests([big[0]], max_requests=64, max_bytes=25_000)) == 2
    assert len(sample_requests([big[0]], max_requests=64, max_bytes=10)) == 1  # at least one line


def test_the_service_counts_the_sample_in_one_call_scaled_to_the_run(tmp_path, gemini_conn, emulator) -> None:
    prompts = [f"Describe product {i} in two sentences." for i in range(500)]
    shard = _shard(tmp_path / "s.jsonl", prompts, maxOutputTokens=50)
    hook = GeminiBatchHook(gemini_conn)
    estimate, tokens = estimate_run(
        [shard], model="gemini-2.5-flash", embeddings=False,
        counter=lambda contents: hook.count_tokens("gemini-2.5-flash", contents),
    )  # fmt: skip
    assert emulator.control.calls()["models.countTokens"] == 1
    assert tokens.method == estimate.method == "count_tokens" and estimate.sample_requests == 64
    exact = sum(math.ceil(len(p) / 4) for p in prompts)
    assert abs(estimate.input_tokens - exact) / exact < 0.05
    assert estimate.output_tokens == 500 * 50 and estimate.output_basis == "max_output_tokens"
    assert math.isclose(
        estimate.cost_usd, round((estimate.input_tokens * 0.15 + 25_000 * 1.25) / 1e6, 6), abs_tol=1e-6
    )
    # The same ratio prices any part of the run (what an admission check per shard uses).
    assert tokens.tokens_for_bytes(shard[2]) == estimate.input_tokens


def test_count_tokens_errors_and_embeddings_use_the_heuristic(tmp_path, gemini_conn, emulator) -> None:
    shard = _shard(tmp_path / "s.jsonl", ["abcd" * 10] * 20)
    hook = GeminiBatchHook(gemini_conn)
    emulator.control.inject_fault("models.countTokens", status=400)
    estimate, _ = estimate_run(
        [shard], model="gemini-2.5-flash", embeddings=False,
        counter=lambda contents: hook.count_tokens("gemini-2.5-flash", contents),
    )  # fmt: skip
    assert estimate.method == "heuristic" and estimate.input_tokens == 20 * 10
    assert estimate.output_tokens == 20 * DEFAULT_EXPECTED_OUTPUT_TOKENS
    assert estimate.output_basis == "expected_output_tokens"
    calls = emulator.control.calls()["models.countTokens"]
    embed, _ = estimate_run(
        [shard], model="gemini-embedding-001", embeddings=True, counter=lambda c: pytest.fail("counted")
    )
    assert embed.method == "heuristic" and embed.output_tokens == 0 and embed.output_basis == "none"
    assert math.isclose(embed.cost_usd, 200 * 0.075 / 1e6, abs_tol=1e-9)
    assert emulator.control.calls()["models.countTokens"] == calls


def test_the_budget_refuses_with_the_estimate_the_budget_and_the_fix(tmp_path) -> None:
    shard = _shard(tmp_path / "s.jsonl", ["word " * 100] * 1000, maxOutputTokens=2000)
    estimate, _ = estimate_run(
        [shard], model="gemini-2.5-pro", embeddings=False, counter=None, max_cost_usd=0.01
    )
    with pytest.raises(GeminiBatchBudgetError) as e:
        check_budget(estimate)
    text = str(e.value)
    assert f"Estimated cost ${estimate.cost_usd:.4f} exceeds max_cost_usd=$0.0100" in text
    assert "nothing was uploaded" in text and "Fix: raise max_cost_usd" in text
    assert "≤2,000,000 output tokens (max_output_tokens)" in text
    fits, _ = estimate_run([shard], model="gemini-2.5-pro", embeddings=False, counter=None, max_cost_usd=100)
    check_budget(fits)
    unpriced, _ = estimate_run([shard], model="my-model", embeddings=False, counter=None, max_cost_usd=100)
    with pytest.raises(GeminiBatchBudgetError, match="has no price"):
        check_budget(unpriced)


def test_a_cached_prefix_is_estimated_at_the_cache_price_plus_its_storage(tmp_path) -> None:
    shard = _shard(tmp_path / "s.jsonl", ["abcd" * 10] * 100, maxOutputTokens=10)
    plain, _ = estimate_run([shard], model="gemini-2.5-flash", embeddings=False, counter=None)
    cached, _ = estimate_run(
        [shard], model="gemini-2.5-flash", embeddings=False, counter=None, cached_tokens=2000, cache_hours=6.0
    )
    assert cached.input_tokens == plain.input_tokens + 100 * 2000
    # 200 000 cached tokens at the (standard) cache price 0.03, plus 2 000 tokens stored 6 h at 1.00.
    extra = (200_000 * 0.03 + 2000 * 6.0 * 1.00) / 1e6
    assert math.isclose(cached.cost_usd, plain.cost_usd + extra, abs_tol=2e-6)
