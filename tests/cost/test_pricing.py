"""Pricing: the date-stamped table, the batch / standard / cached / thinking rules, overrides, unknown models."""

from __future__ import annotations

import math

import pytest

from airflow_gemini_batch.cost.prices import PRICES_AS_OF, normalize_model, price_for
from airflow_gemini_batch.cost.pricing import compute_cost


def test_table_is_date_stamped_and_holds_the_published_prices():
    assert PRICES_AS_OF[:4].isdigit()
    assert price_for("gemini-2.5-flash")["input"] == 0.30
    assert price_for("models/gemini-2.5-pro")["output"] == 10.00
    assert normalize_model("models/gemini-2.0-flash-001") == "gemini-2.0-flash"


def test_batch_is_half_price_thinking_is_output_cached_is_not_discounted():
    tokens = {"prompt": 1_000_000, "output": 200_000, "thinking": 300_000, "cached": 400_000}
    cost = compute_cost("gemini-2.5-flash", tokens)
    standard = 0.6 * 0.30 + 0.4 * 0.03 + 0.5 * 2.50
    batch = 0.6 * 0.15 + 0.4 * 0.03 + 0.5 * 1.25
    assert math.isclose(cost["standard"], standard) and math.isclose(cost["batch"], batch)
    assert math.isclose(cost["savings"], standard - batch)


def test_embeddings_are_input_only_at_the_published_batch_price():
    cost = compute_cost("gemini-embedding-001", {"prompt": 2_000_000, "output": 99}, embeddings=True)
    assert math.isclose(cost["batch"], 0.15) and math.isclose(cost["standard"], 0.30)


def test_overrides_merge_and_add_models():
    cost = compute_cost(
        "gemini-2.5-flash", {"prompt": 1_000_000}, overrides={"gemini-2.5-flash": {"input": 1.0}}
    )
    assert math.isclose(cost["standard"], 1.0) and "overrides" in cost["prices_as_of"]
    assert (
        compute_cost("mine", {"output": 10**6}, overrides={"mine": {"input": 0, "output": 4}})["batch"] == 2.0
    )
    with pytest.raises(ValueError, match="must have 'input'"):
        price_for("mine", {"mine": {"outptu": 1}})


def test_unknown_model_gives_none_and_a_warning(caplog):
    cost = compute_cost("gemini-9-ultra", {"prompt": 10})
    assert (cost["batch"], cost["standard"]) == (None, None)
    assert "No price known for model 'gemini-9-ultra'" in caplog.text


def test_cached_tokens_are_priced_at_the_cache_price_in_batch_too_and_saving_is_reported():
    """Batch cache hits are billed at the normal (standard) cache price, not halved."""
    tokens = {"prompt": 1_000_000, "cached": 1_000_000, "output": 0}
    cost = compute_cost("gemini-2.5-flash", tokens)
    assert math.isclose(cost["batch"], 0.03) and math.isclose(cost["standard"], 0.03)
    # Without the cache those tokens would have cost the batch input price (0.15): 0.12 saved.
    assert math.isclose(cost["caching_saved"], 0.15 - 0.03)


def test_cache_storage_is_charged_per_token_hour_and_taken_off_the_saving():
    cost = compute_cost(
        "gemini-2.5-pro", {"prompt": 100_000, "cached": 100_000}, cache_token_hours=100_000 * 2.0
    )
    storage = 0.2 * 4.50
    assert math.isclose(cost["cache_storage"], storage)
    assert math.isclose(cost["batch"], 0.1 * 0.125 + storage)
    assert math.isclose(cost["caching_saved"], 0.1 * (0.625 - 0.125) - storage)


def test_the_2_5_pro_long_context_tier_prices_only_the_requests_above_200k():
    # Two requests: one of 100 k prompt tokens, one of 300 k (above the tier), 1 000 output tokens each.
    tokens = {"prompt": 400_000, "output": 2_000}
    long_part = {"prompt": 300_000, "output": 1_000}
    cost = compute_cost("gemini-2.5-pro", tokens, long_context=long_part)
    standard = 0.1 * 1.25 + 0.001 * 10.0 + 0.3 * 2.50 + 0.001 * 15.0
    assert math.isclose(cost["standard"], standard)
    assert math.isclose(cost["batch"], standard / 2)
    flat = compute_cost("gemini-2.5-pro", tokens)
    assert cost["batch"] > flat["batch"]


def test_the_load_sums_rows_above_the_tier_apart():
    from airflow_gemini_batch.results.loading import LoadTotals
    from airflow_gemini_batch.results.rows import ResultRow, ShardReport

    def row(key: int, prompt: int, output: int) -> ResultRow:
        return ResultRow(
            key, "succeeded", prompt_tokens=prompt, output_tokens=output, total_tokens=prompt + output
        )

    totals, report = LoadTotals(long_context_threshold=200_000), ShardReport("batches/x")
    totals.add([row(1, 100_000, 10), row(2, 300_000, 20), row(3, 200_000, 30)], report)
    assert totals.long_context_tokens["prompt"] == report.long_context_tokens["prompt"] == 300_000
    assert totals.long_context_tokens["output"] == 20 and totals.tokens["prompt"] == 600_000
    untiered = LoadTotals()
    untiered.add([row(1, 300_000, 10)], ShardReport("batches/y"))
    assert untiered.long_context_tokens["prompt"] == 0


def test_deployment_overrides_then_task_overrides_field_by_field(monkeypatch):
    from airflow_gemini_batch.cost.prices import price_overrides

    monkeypatch.setenv(
        "AIRFLOW__GEMINI_BATCH__PRICES",
        '{"gemini-2.5-flash": {"input": 0.5, "output": 3.0}, "my-tuned": {"input": 1, "output": 2}}',
    )
    merged = price_overrides({"gemini-2.5-flash": {"output": 4.0}})
    assert merged["gemini-2.5-flash"] == {"input": 0.5, "output": 4.0}
    cost = compute_cost("gemini-2.5-flash", {"prompt": 1_000_000, "output": 1_000_000}, overrides=merged)
    assert math.isclose(cost["standard"], 0.5 + 4.0) and "overrides" in cost["prices_as_of"]
    assert math.isclose(compute_cost("my-tuned", {"prompt": 10**6}, overrides=merged)["batch"], 0.5)
    monkeypatch.setenv("AIRFLOW__GEMINI_BATCH__PRICES", "{not json")
    with pytest.raises(ValueError, match=r"\[gemini_batch\] prices is not valid JSON"):
        price_overrides()


def test_the_table_covers_the_current_models_with_cache_prices():
    for model in ("gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite", "gemini-2.0-flash"):
        entry = price_for(model)
        assert entry is not None and entry["cached_input"] < entry["input"] and entry["cache_storage"] > 0
    assert price_for("gemini-2.5-pro")["long_context_threshold"] == 200_000
    assert price_for("gemini-embedding-001")["batch_input"] == 0.075
