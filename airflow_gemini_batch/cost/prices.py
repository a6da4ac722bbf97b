"""The price table: USD per 1 M tokens per model, date-stamped, and how a deployment or a task overrides it.

Invariant: a price is only ever one the table (or an override) actually has; an unknown model has no price
(:func:`price_for` gives None), never a guess. Every other module reads prices through :func:`price_for`.

Source: https://ai.google.dev/gemini-api/docs/pricing (Gemini Developer API, paid tier, text / image / video
input), read on :data:`PRICES_AS_OF`; the batch rules from the Batch Mode doc
(https://ai.google.dev/gemini-api/docs/batch-mode, "Technical details") and the Google blog of 2025-07-07,
as summarised in ``reference/gemini-batch-facts.md`` §1.5 and §1.8. Standard (interactive) prices:

=========================  =======  ========  ============  ================  ===============================
model                      input    output    cache hits    cache storage     note
                                              (per 1 M)     (per 1 M · hour)
=========================  =======  ========  ============  ================  ===============================
gemini-2.5-pro             1.25     10.00     0.125         4.50              prompts ≤ 200 k tokens
gemini-2.5-pro (> 200 k)   2.50     15.00     0.25          4.50              prompts > 200 k tokens
gemini-2.5-flash           0.30     2.50      0.03          1.00
gemini-2.5-flash-lite      0.10     0.40      0.01          1.00
gemini-2.0-flash           0.10     0.40      0.025         1.00
gemini-embedding-001       0.15     -         -             -                 batch 0.075 (published)
=========================  =======  ========  ============  ================  ===============================

Rules (applied in :mod:`airflow_gemini_batch.cost.pricing`):

* The batch price is half the standard price (:data:`BATCH_DISCOUNT`), unless an entry gives
  ``batch_input`` / ``batch_output`` (embeddings publish their own).
* Context-cache hits in a batch are "priced the same as for non-batch mode traffic": ``cached_input`` in both
  the batch and the standard column, never halved. Cache storage is ``cache_storage`` per 1 M tokens per hour.
* A request whose prompt exceeds ``long_context_threshold`` tokens is priced at the ``long_*`` entries (the
  tier is per request, not per run).
* Audio input is priced higher than text by the service; the table prices text (the provider sends text).

Overrides, field by field over the table: ``[gemini_batch] prices`` in ``airflow.cfg`` (or
``AIRFLOW__GEMINI_BATCH__PRICES``), a JSON object ``{model: {field: USD, ...}}`` for the whole deployment,
then the operators' ``prices=`` argument for one task. A new model is added the same way.
"""

from __future__ import annotations

import json
import re
from typing import Any

from airflow.sdk import conf

PRICES_AS_OF = "2026-01-15"
PRICES_SOURCE = "https://ai.google.dev/gemini-api/docs/pricing"
BATCH_DISCOUNT = 0.5

#: Standard prices, USD per 1 M tokens (``cache_storage``: per 1 M tokens per hour); see the module docstring.
PRICES: dict[str, dict[str, float]] = {
    "gemini-2.5-pro": {
        "input": 1.25,
        "output": 10.00,
        "cached_input": 0.125,
        "cache_storage": 4.50,
        "long_context_threshold": 200_000,
        "long_input": 2.50,
        "long_output": 15.00,
        "long_cached_input": 0.25,
    },
    "gemini-2.5-flash": {"input": 0.30, "output": 2.50, "cached_input": 0.03, "cache_storage": 1.00},
    "gemini-2.5-flash-lite": {"input": 0.10, "output": 0.40, "cached_input": 0.01, "cache_storage": 1.00},
    "gemini-2.0-flash": {"input": 0.10, "output": 0.40, "cached_input": 0.025, "cache_storage": 1.00},
    "gemini-embedding-001": {"input": 0.15, "output": 0.0, "batch_input": 0.075},
}

PRICE_FIELDS = (
    "input",
    "output",
    "cached_input",
    "cache_storage",
    "batch_input",
    "batch_output",
    "long_context_threshold",
    "long_input",
    "long_output",
    "long_cached_input",
)
_VERSION_SUFFIX = re.compile(r"-\d{3}$")
CONFIG_SECTION, CONFIG_OPTION = "gemini_batch", "prices"


def normalize_model(model: str) -> str:
    """``models/gemini-2.5-flash-001`` → ``gemini-2.5-flash`` (the table is keyed by family name)."""
    name = model.rsplit("/", 1)[-1]
    return name if name in PRICES else _VERSION_SUFFIX.sub("", name)


def configured_prices() -> dict[str, dict[str, Any]]:
    """The deployment's overrides: ``[gemini_batch] prices`` as JSON (empty when unset).

    :raises ValueError: the option is not a JSON object of objects (named, with the fix).
    """
    raw = (conf.get(CONFIG_SECTION, CONFIG_OPTION, fallback="") or "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"[{CONFIG_SECTION}] {CONFIG_OPTION} is not valid JSON ({e}); expected e.g. "
                         '{"gemini-2.5-flash": {"input": 0.3, "output": 2.5}}') from None  # fmt: skip
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ValueError(
            f"[{CONFIG_SECTION}] {CONFIG_OPTION} must be a JSON object {{model: {{field: USD}}}}."
        )
    return value


def price_overrides(task_prices: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """The overrides in force for one task: the deployment's, then the task's ``prices=``, field by field."""
    merged: dict[str, dict[str, Any]] = {}
    for source in (configured_prices(), task_prices or {}):
        for model, entry in source.items():
            merged[model] = {**merged.get(model, {}), **entry}
    return merged


def price_for(model: str, overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, float] | None:
    """The merged price entry for a model, or None when neither the table nor the overrides know it.

    :raises ValueError: an entry without ``input`` or with an unknown field (a typo would price at zero).
    """
    overrides = overrides or {}
    name = normalize_model(model)
    base = PRICES.get(name)
    extra = {**overrides.get(name, {}), **overrides.get(model, {})} or None
    if base is None and extra is None:
        return None
    entry = {**(base or {}), **(extra or {})}
    unknown = set(entry) - set(PRICE_FIELDS)
    if unknown or "input" not in entry:
        raise ValueError(
            f"Price entry for {model!r} must have 'input' (USD per 1M tokens) and only fields of "
            f"{PRICE_FIELDS}; got {sorted(entry)}"
        )
    return {k: float(v) for k, v in entry.items()}


def prices_as_of(overrides: dict[str, dict[str, Any]] | None) -> str:
    return PRICES_AS_OF if not overrides else f"{PRICES_AS_OF} (with overrides)"
