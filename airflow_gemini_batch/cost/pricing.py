"""Token prices per model, date-stamped, and the cost of a batch at the batch and at the standard price.

Invariant: a cost is only ever computed from a price the table (or the user's override) actually has; an
unknown model gives ``None`` and a warning, never a guess and never a failed task - the rows are what matter.

Prices are USD per 1 M tokens, **standard (interactive) price**, Gemini Developer API paid tier, as published
on https://ai.google.dev/gemini-api/docs/pricing (read mid-2025 to early 2026; see :data:`PRICES_AS_OF`):

=========================  ========  =========  =====================  ============================
model                      input     output     cached input (hits)    note
=========================  ========  =========  =====================  ============================
gemini-2.5-flash           0.30      2.50       0.03
gemini-2.5-flash-lite      0.10      0.40       0.01
gemini-2.5-pro             1.25      10.00      0.125                  prompts ≤ 200 k tokens
gemini-2.0-flash           0.10      0.40       0.025
gemini-embedding-001       0.15      -          -                      batch price 0.075 (published)
=========================  ========  =========  =====================  ============================

Rules applied (Batch doc https://ai.google.dev/gemini-api/docs/batch-mode, Google blog 2025-07-07):

* Batch price = 50 % of the standard price, unless an entry gives ``batch_input`` / ``batch_output``.
* Context-cache hits are priced "the same as for non-batch mode traffic": cached prompt tokens are charged at
  ``cached_input`` in both columns, the rest of the prompt at the (batch) input price. ``promptTokenCount``
  already includes the cached tokens, so they are subtracted first. Cache storage (per hour) is not counted.
* Thinking tokens (``thoughtsTokenCount``) are billed as output tokens.
* Embeddings are billed on input tokens only.

Prices change: pass ``prices={model: {...}}`` to the operator to override or add entries (partial entries are
merged over the built-in one).
"""

from __future__ import annotations

import logging
import re
from typing import Any

log = logging.getLogger(__name__)

PRICES_AS_OF = "2026-01-15"
BATCH_DISCOUNT = 0.5

#: Standard prices, USD per 1 M tokens (see the module docstring for sources and rules).
PRICES: dict[str, dict[str, float]] = {
    "gemini-2.5-flash": {"input": 0.30, "output": 2.50, "cached_input": 0.03},
    "gemini-2.5-flash-lite": {"input": 0.10, "output": 0.40, "cached_input": 0.01},
    "gemini-2.5-pro": {"input": 1.25, "output": 10.00, "cached_input": 0.125},
    "gemini-2.0-flash": {"input": 0.10, "output": 0.40, "cached_input": 0.025},
    "gemini-embedding-001": {"input": 0.15, "output": 0.0, "batch_input": 0.075},
}

_PRICE_FIELDS = ("input", "output", "cached_input", "batch_input", "batch_output")
_VERSION_SUFFIX = re.compile(r"-\d{3}$")


def normalize_model(model: str) -> str:
    """``models/gemini-2.5-flash-001`` → ``gemini-2.5-flash`` (the table is keyed by family name)."""
    name = model.rsplit("/", 1)[-1]
    return name if name in PRICES else _VERSION_SUFFIX.sub("", name)


def price_for(model: str, overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, float] | None:
    """The merged price entry for a model, or None when neither the table nor the overrides know it."""
    overrides = overrides or {}
    name = normalize_model(model)
    base = PRICES.get(name)
    extra = overrides.get(model) or overrides.get(name)
    if base is None and extra is None:
        return None
    entry = {**(base or {}), **(extra or {})}
    unknown = set(entry) - set(_PRICE_FIELDS)
    if unknown or "input" not in entry:
        raise ValueError(
            f"Price entry for {model!r} must have 'input' (USD per 1M tokens) and only {_PRICE_FIELDS}; "
            f"got {sorted(entry)}"
        )
    return {k: float(v) for k, v in entry.items()}


def compute_cost(
    model: str,
    tokens: dict[str, int],
    *,
    embeddings: bool = False,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Cost of ``tokens`` (``prompt``, ``output``, ``thinking``, ``cached``) at batch and at standard price.

    Returns ``{"currency", "batch", "standard", "savings", "prices_as_of", "model", "price"}``; the three
    amounts are None for a model without a price (with a warning in the log).
    """
    result: dict[str, Any] = {
        "currency": "USD",
        "model": normalize_model(model),
        "prices_as_of": PRICES_AS_OF if not overrides else f"{PRICES_AS_OF} (with user overrides)",
        "batch": None,
        "standard": None,
        "savings": None,
        "price": None,
    }
    price = price_for(model, overrides)
    if price is None:
        log.warning(
            "No price known for model %r (table as of %s); cost not computed. "
            "Pass prices={%r: {...}} to add it.",
            model,
            PRICES_AS_OF,
            normalize_model(model),
        )
        return result
    per_token = 1_000_000
    prompt = int(tokens.get("prompt") or 0)
    cached = min(int(tokens.get("cached") or 0), prompt)
    uncached = prompt - cached
    billed_output = 0 if embeddings else int(tokens.get("output") or 0) + int(tokens.get("thinking") or 0)
    in_std = price["input"]
    out_std = price.get("output", 0.0)
    cached_price = price.get("cached_input", in_std)
    in_batch = price.get("batch_input", in_std * BATCH_DISCOUNT)
    out_batch = price.get("batch_output", out_std * BATCH_DISCOUNT)
    standard = (uncached * in_std + cached * cached_price + billed_output * out_std) / per_token
    batch = (uncached * in_batch + cached * cached_price + billed_output * out_batch) / per_token
    result.update(
        batch=round(batch, 6),
        standard=round(standard, 6),
        savings=round(standard - batch, 6),
        price={
            "input": in_std,
            "output": out_std,
            "cached_input": cached_price,
            "batch_input": in_batch,
            "batch_output": out_batch,
        },
    )
    return result
