"""A downloaded Gemini responses file → common-ai ``RawResultItem``s, one per usable line, streamed.

Invariants:

* Each line is classified by our own :class:`~airflow_gemini_batch.results.parsing.ResultParser` (the one the
  load operator uses): a ``response`` with an answer is ``success``; an ``error``/``status`` line, a blocked
  prompt or an answer cut off without text is ``errored``. There is no second Gemini parser here.
* The parser is built without a schema: ``invalid_output`` is common-ai's call, made by validating the
  answer text against the task's ``output_type`` (``extract_output`` hands it over as ``json_text``).
* A line that is not JSON, carries no result, or has a key that is not one of this batch's
  (:func:`~airflow_gemini_batch.common_ai.request_lines.index_of_key`) is logged and skipped, never guessed at:
  common-ai then reports its index as ``missing``, so the counts still add up. Duplicates and out-of-range
  indexes are common-ai's to drop and count (its merge keeps the first).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import orjson
from airflow.providers.common.ai.batch.base import RawResultItem

from airflow_gemini_batch.common_ai.request_lines import index_of_key
from airflow_gemini_batch.results.parsing import ResultParser
from airflow_gemini_batch.results.rows import SUCCEEDED, ResultRow

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

log = logging.getLogger(__name__)


def _usage(row: ResultRow) -> dict[str, int] | None:
    usage = {
        "input_tokens": row.prompt_tokens,
        "output_tokens": row.output_tokens,
        "thinking_tokens": row.thinking_tokens,
        "cached_tokens": row.cached_tokens,
        "total_tokens": row.total_tokens,
    }
    kept = {name: value for name, value in usage.items() if value is not None}
    return kept or None


def raw_item(row: ResultRow, custom_id: str, index: int) -> RawResultItem:
    """One classified row as common-ai's provider-native result (the answer text travels in ``raw``)."""
    if row.outcome == SUCCEEDED:
        return RawResultItem(
            custom_id=custom_id,
            index=index,
            provider_status="success",
            model=row.model_version,
            usage=_usage(row),
            finish_reason=row.finish_reason,
            error=None,
            raw=row.text,
        )
    code = row.error_code if row.error_code is not None else row.finish_reason
    return RawResultItem(
        custom_id=custom_id,
        index=index,
        provider_status="errored",
        model=row.model_version,
        usage=_usage(row),
        finish_reason=row.finish_reason,
        error={
            "type": "provider_error",
            "message": row.error_message,
            "provider_code": str(code) if code is not None else None,
            "stage": "provider",
        },
        raw=None,
    )


def iter_result_items(path: Path, *, key16: str, job_name: str) -> Iterator[RawResultItem]:
    """The items of one responses file, in file order (Gemini may reorder; common-ai rejoins by index)."""
    parser = ResultParser(task="generate")
    with path.open("rb") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            item = _item_of_line(line, parser, key16=key16, job_name=job_name)
            if item is None:
                log.warning("Skipping result line %d of %s: not a result of this batch", line_no, job_name)
                continue
            yield item


def _item_of_line(line: bytes, parser: ResultParser, *, key16: str, job_name: str) -> RawResultItem | None:
    try:
        obj: Any = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict or all(obj.get(k) is None for k in ("response", "error", "status")):
        return None
    key = obj.get("key")
    index = index_of_key(key, key16) if key is not None else None
    if index is None:
        return None
    return raw_item(parser.classify(obj, key, job_name), str(key), index)
