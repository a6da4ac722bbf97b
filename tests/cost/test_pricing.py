"""Pricing: the date-stamped table, the batch / standard / cached / thinking rules, overrides, unknown models."""

from __future__ import annotations

import math

import pytest

from airflow_gemini_batch.cost.pricing import PRICES_AS_OF, compute_cost, normalize_model, price_for


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
