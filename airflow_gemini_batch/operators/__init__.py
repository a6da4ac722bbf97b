"""Operators of the Gemini Batch provider."""

from __future__ import annotations

from airflow_gemini_batch.operators.submit import GeminiBatchSubmitOperator

__all__ = ["GeminiBatchSubmitOperator"]
