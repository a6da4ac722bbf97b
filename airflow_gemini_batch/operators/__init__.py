"""Operators of the Gemini Batch provider: thin Airflow classes over the submit and load runs."""

from __future__ import annotations

from airflow_gemini_batch.operators.results import GeminiBatchLoadResultsOperator
from airflow_gemini_batch.operators.submit import GeminiBatchSubmitOperator

__all__ = ["GeminiBatchLoadResultsOperator", "GeminiBatchSubmitOperator"]
