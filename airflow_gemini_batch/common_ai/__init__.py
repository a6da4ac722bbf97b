"""A Gemini backend for apache-airflow-providers-common-ai's ``@task.llm_batch`` / ``LLMBatchOperator``.

Invariant: nothing outside this package imports it, and only :mod:`.adapter` and :mod:`.result_items` import
common-ai at module level. common-ai loads the adapter through the ``airflow.providers.common.ai.batch_adapters``
entry point only when a ``google:`` / ``gemini:`` model id is dispatched, so the rest of airflow_gemini_batch
imports fine where common-ai is not installed (it needs Python 3.11+).
"""
