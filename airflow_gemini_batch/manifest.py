"""The small JSON documents that travel between tasks in XCom: the submit manifest and the stage summaries.

Invariant: these carry names, counts and locations, never row data. Keys, prompts and answers stay in files
under the staging path and in the destination table; a manifest for a million rows is a few kilobytes.
The ``kind`` discriminator lets the UI page find them in the XCom table without knowing task ids.
"""

from __future__ import annotations

from typing import Any, TypedDict

MANIFEST_KIND = "gemini_batch_manifest"
WAIT_SUMMARY_KIND = "gemini_batch_wait_summary"
RESULTS_SUMMARY_KIND = "gemini_batch_results_summary"

#: XCom keys our operators push besides ``return_value``, so the UI and links can find them by key.
MANIFEST_XCOM_KEY = "gemini_batch_manifest"
WAIT_SUMMARY_XCOM_KEY = "gemini_batch_wait_summary"
RESULTS_SUMMARY_XCOM_KEY = "gemini_batch_results_summary"


class ShardInfo(TypedDict, total=False):
    index: int
    display_name: str  # deterministic: how an orphaned create is found again via list
    job_name: str | None  # batches/<id>; None only while not yet created
    file_name: str | None  # files/<id> of the uploaded JSONL; None for inline shards
    inline: bool
    request_count: int
    bytes: int
    estimated_tokens: int
    keys_path: str  # ObjectStoragePath URI: one JSON-encoded key per line, in shard order
    fingerprints_path: str  # its keys' request fingerprints, one sha256 hex per line, same order
    recovery: int  # the shard's resubmissions after a FAILED/EXPIRED/CANCELLED job (absent: 0)
    previous_jobs: list[str]  # the jobs of its earlier generations, oldest first (absent: none)
    previous_files: dict[str, str]  # earlier job → its uploaded file, deleted by the load (absent: none)
    stuck_resubmits: int  # its jobs cancelled for being stuck PENDING, then resubmitted (absent: 0)


class ContextCacheInfo(TypedDict, total=False):
    name: str  # cachedContents/<id>, referenced by every request of the run
    display_name: str  # deterministic: how a cache whose name was never recorded is found again
    ttl_seconds: float  # what the wait renews it to while jobs run
    expire_time: float | None  # epoch seconds, when the submit last set it
    token_count: int | None
    create_time: float | None  # epoch seconds, the service's: storage is billed from here to the delete


class Manifest(TypedDict, total=False):
    kind: str  # MANIFEST_KIND
    version: int
    gemini_conn_id: str
    task: str  # "generate" | "embed"
    model: str
    identity: str  # run-stable: dag, task, run, map index (never try number)
    fingerprint: str  # sha256 of the request lines: a changed input is detected on retry
    response_schema: dict[str, Any] | None  # JSON schema, for classifying invalid_output
    staging_path: str
    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    shards: list[ShardInfo]
    request_count: int  # valid rows submitted, all shards
    skipped_count: int  # invalid rows skipped with on_invalid_row="skip"
    skipped_keys_path: str | None
    keep_uploaded_files: bool  # True: the load leaves the uploaded input files (absent: False)
    #: present when the run made its own cache (shared_context): renewed by the wait, deleted after the load
    context_cache: ContextCacheInfo
    estimate: dict[str, Any] | None  # cost.estimate.RunEstimate: tokens and cost at the batch price, budget
    round: int  # GeminiBatchOperator's row-retry round (absent: 1, a first submission)
    key_filter: str | None  # a retry round's input: the previous round's remainder keys (absent: none)
    admission: dict[str, Any]  # the admission rounds under the quotas (submit.admission.AdmissionState)
    incremental: bool  # rows already answered in the destination were left out
    reused: int  # those rows: not sent, their destination row kept as it is
    reused_cost_usd: float | None  # what re-sending them would have cost (batch price; None: model unpriced)
    #: Vertex AI BigQuery runs: backend, bigquery_conn_id, request_table, prediction_table, key_column
    vertex: dict[str, Any]
    #: Vertex AI gs:// runs (vertex.gcs_run): row_label, the request label holding a line's shard index
    vertex_gcs: dict[str, Any]


def job_names(manifest: Manifest | dict[str, Any]) -> list[str]:
    """Job names of a manifest, in shard order; raises on a shard never created (a broken manifest)."""
    names: list[str] = []
    for shard in manifest.get("shards", []):
        name = shard.get("job_name")
        if not name:
            raise ValueError(
                f"Manifest shard {shard.get('index')} has no job name; was the submit interrupted?"
            )
        names.append(name)
    return names
