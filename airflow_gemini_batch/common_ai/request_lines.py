"""common-ai ``BatchRequest`` dicts → Gemini batch JSONL lines (``{"key": ..., "request": GenerateContentRequest}``).

Invariants:

* The key of request ``i`` is ``f"{key16}-{i}"``: common-ai's ``custom_id`` form, so a result line's key
  rejoins its input by position (:func:`index_of_key`) and a foreign line cannot be mistaken for one of ours.
* The job-wide parts (system instruction, generation config, response schema) are built by the same
  :class:`~airflow_gemini_batch.inputs.requests.RequestSpec` our own operators use, so ``@task.llm_batch`` and
  ``GeminiBatchSubmitOperator`` put a schema or a token cap on the wire the same way.
* Lines are yielded one at a time, never collected: validation measures them and submit streams them to a file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from airflow_gemini_batch.inputs.requests import RequestSpec

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence


def request_key(key16: str, index: int) -> str:
    return f"{key16}-{index}"


def index_of_key(key: Any, key16: str) -> int | None:
    """The request index a result key names, or None when the key is not ``f"{key16}-<int>"``."""
    prefix, sep, index = str(key).rpartition("-")
    if not sep or prefix != key16 or not index.isdigit():
        return None
    return int(index)


def job_wide_parts(
    *,
    system_prompt: str,
    max_tokens: int,
    params: Mapping[str, Any] | None,
    response_schema: dict[str, Any] | None,
) -> dict[str, Any]:
    """``systemInstruction`` + ``generationConfig`` (params are generation-config fields, snake or camel case)."""
    config = {**(params or {}), "max_output_tokens": max_tokens}
    return RequestSpec(
        system_instruction=system_prompt or None, generation_config=config, response_schema=response_schema
    ).job_wide()


def iter_request_lines(
    requests: Sequence[Mapping[str, Any]],
    *,
    key16: str,
    system_prompt: str,
    max_tokens: int,
    request_params: Mapping[str, Any] | None,
    response_schema: dict[str, Any] | None,
) -> Iterator[bytes]:
    """One JSONL line (with newline) per request; a request's own overrides win over the batch's."""
    default = job_wide_parts(
        system_prompt=system_prompt,
        max_tokens=max_tokens,
        params=request_params,
        response_schema=response_schema,
    )
    for index, request in enumerate(requests):
        overrides = request.get("system_prompt") or request.get("max_tokens") or request.get("params")
        parts = (
            job_wide_parts(
                system_prompt=request.get("system_prompt") or system_prompt,
                max_tokens=request.get("max_tokens") or max_tokens,
                params={**(request_params or {}), **(request.get("params") or {})},
                response_schema=response_schema,
            )
            if overrides
            else default
        )
        body = {"contents": [{"role": "user", "parts": [{"text": request["prompt"]}]}], **parts}
        yield orjson.dumps({"key": request_key(key16, index), "request": body}) + b"\n"
