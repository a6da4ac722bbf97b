"""Models API handlers: ``models/*:countTokens``, deterministic like every answer of the emulator.

Invariants (what the estimate before a run relies on):

* ``totalTokens`` is the sum over the given contents of ``ceil(characters / 4)`` of each content's text parts
  joined by newlines - per content, the rule the responder's ``usageMetadata.promptTokenCount`` applies to
  a request, so counting a request's system instruction and turns matches its usage within a token per
  content. Non-text parts count nothing.
* The body may be ``{"contents": [...]}`` (what google-genai sends for the Developer API) or
  ``{"generateContentRequest": {"contents": [...], "systemInstruction": ...}}`` (the REST alternative).
* No contents at all is 400 INVALID_ARGUMENT, as on the service.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from airflow_gemini_batch.emulator.common import ApiError, json_response, pick
from airflow_gemini_batch.emulator.responder import CHARS_PER_TOKEN, content_texts

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from airflow_gemini_batch.emulator.faults import Fault
    from airflow_gemini_batch.emulator.state import Emulator


def count_content_tokens(contents: list[Any]) -> int:
    """The emulator's token count of a list of contents (see the module docstring)."""
    return sum(math.ceil(len("\n".join(content_texts(c))) / CHARS_PER_TOKEN) for c in contents)


async def count_tokens(
    emu: Emulator, request: Request, params: dict[str, Any], fault: Fault | None
) -> Response:
    body: dict[str, Any] = params["json"] or {}
    inner = pick(body, "generateContentRequest", "generate_content_request")
    source = inner if isinstance(inner, dict) else body
    contents = pick(source, "contents") or []
    if not isinstance(contents, list):
        raise ApiError(400, "contents must be a list of Content objects.")
    system = pick(source, "systemInstruction", "system_instruction")
    if system is not None:
        contents = [system, *contents]
    if not contents:
        raise ApiError(400, "* CountTokensRequest.contents: contents is not specified")
    total = count_content_tokens(contents)
    return json_response(
        {"totalTokens": total, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": total}]}
    )
