"""What no Vertex AI path does, refused before any call: one list, so both paths say the same.

Embeddings batches are Developer-API only in google-genai, and on Vertex the cache discount replaces the batch
discount instead of stacking, so a context cache would make a batch cost more, not less.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_gemini_batch.exceptions import GeminiBatchInputError

if TYPE_CHECKING:
    from airflow_gemini_batch.submit.run import SubmitSettings


def refuse_on_vertex(settings: SubmitSettings, path_problems: list[str]) -> None:
    """Raise :class:`GeminiBatchInputError` naming every problem: the common ones, then the path's own."""
    problems = []
    if settings.task == "embed":
        problems.append("embeddings batches are Developer-API only (use a gemini_batch connection)")
    if settings.shared_context is not None or settings.cached_content:
        problems.append(
            "context caches: on Vertex the cache discount replaces the batch discount (they do not stack)"
        )
    problems += path_problems
    if problems:
        raise GeminiBatchInputError("Not available with a Vertex AI connection: " + "; ".join(problems) + ".")
