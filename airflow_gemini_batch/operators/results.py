"""GeminiBatchLoadResultsOperator: batch results → a warehouse table (upsert on key) or object storage.

Thin by design: it reads the submit manifest, asks the hook for each job and its output, and wires
:mod:`~airflow_gemini_batch.results.parsing` (parse + classify), :mod:`~airflow_gemini_batch.results.reconcile` (key lists),
:mod:`~airflow_gemini_batch.sinks` (tables, files) and :mod:`~airflow_gemini_batch.cost.pricing` (cost).

Invariants:

* Every key of every shard ends in exactly one outcome - ``succeeded``, ``failed``, ``invalid_output`` or
  ``missing`` - and ``succeeded + failed + invalid_output + missing`` equals the keys submitted. Keys of a job
  that did not succeed (FAILED / EXPIRED / CANCELLED) are all ``failed`` with ``job <STATE>`` in the error.
* Results never go through XCom: they stream from the downloaded file to the sink in chunks; XCom gets a
  summary of counts, tokens and cost (``kind = RESULTS_SUMMARY_KIND``), for the task and for each job
  (``jobs[i]["tokens"]`` / ``["cost"]``); the task's ``tokens`` are exactly the sum of its jobs'.
* ``max_failed_fraction`` is checked **after** everything is written, so good rows are loaded and bad ones are
  queryable even when the task then fails.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_gemini_batch.cost.pricing import compute_cost
from airflow_gemini_batch.exceptions import GeminiBatchError, GeminiBatchInputError, GeminiBatchResultsError
from airflow_gemini_batch.hooks.gemini import GeminiBatchHook
from airflow_gemini_batch.hooks.job_status import SUCCEEDED as JOB_SUCCEEDED
from airflow_gemini_batch.links import GeminiBatchJobLink
from airflow_gemini_batch.manifest import MANIFEST_KIND, RESULTS_SUMMARY_KIND, RESULTS_SUMMARY_XCOM_KEY
from airflow_gemini_batch.results.loading import LoadTotals, stream_to_sink
from airflow_gemini_batch.results.parsing import (
    EXAMPLES,
    SUCCEEDED,
    ResultParser,
    ShardReport,
    iter_file_rows,
    iter_inline_rows,
    iter_job_failed_rows,
)
from airflow_gemini_batch.results.reconcile import KeyReconciler
from airflow_gemini_batch.sinks import ObjectStorageSink, split_table, table_sink

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from airflow.sdk import Context

    from airflow_gemini_batch.results.parsing import ResultRow


class GeminiBatchLoadResultsOperator(BaseOperator):
    """Load the results of the batch jobs in a submit manifest into a table or onto object storage.

    Exactly one of ``destination_table`` (with ``destination_conn_id``) and ``destination_path``.

    :param manifest: the submit operator's manifest (usually its XComArg). (templated)
    :param gemini_conn_id: Gemini connection; default: the manifest's. (templated)
    :param destination_conn_id: a common-sql connection (SQLite, PostgreSQL) for ``destination_table``.
        (templated)
    :param destination_table: ``table`` or ``schema.table``; created if missing; one row per input key,
        upserted on the key, every outcome (filter on ``outcome``). (templated)
    :param errors_table: where non-succeeded keys are mirrored; default ``<destination_table>_errors``.
        (templated)
    :param destination_path: a folder (ObjectStoragePath URI or local path) for ``results.jsonl`` /
        ``results.parquet`` and ``errors.jsonl``. (templated)
    :param output_format: ``jsonl`` or ``parquet`` for ``destination_path``.
    :param key_column: name of the key column in the destination.
    :param key_column_type: its SQL type (``INTEGER`` when the submitted keys are ints; keys keep their JSON
        type from the key list).
    :param output_columns: structured-output fields to copy into typed columns, e.g.
        ``{"sentiment": "TEXT", "score": "REAL"}`` (types from a per-dialect whitelist).
    :param create_table: create the tables when missing.
    :param max_failed_fraction: the largest share of non-succeeded keys that still passes (default 0: any
        failure fails the task, after loading).
    :param prices: price overrides ``{model: {"input": ..., "output": ..., ...}}`` (USD per 1M tokens).
    :param chunk_size: rows per write to the sink.
    :param download_dir: where responses files are downloaded (default: a temp dir, removed afterwards).
    """

    operator_extra_links = (GeminiBatchJobLink(),)
    template_fields: Sequence[str] = (
        "manifest",
        "gemini_conn_id",
        "destination_conn_id",
        "destination_table",
        "errors_table",
        "destination_path",
    )
    ui_color = "#c9e7f5"

    def __init__(
        self,
        *,
        manifest: Any,
        gemini_conn_id: str | None = None,
        destination_conn_id: str | None = None,
        destination_table: str | None = None,
        errors_table: str | None = None,
        destination_path: str | None = None,
        output_format: str = "jsonl",
        key_column: str = "key",
        key_column_type: str = "TEXT",
        output_columns: dict[str, str] | None = None,
        create_table: bool = True,
        max_failed_fraction: float = 0.0,
        prices: dict[str, dict[str, float]] | None = None,
        chunk_size: int = 5_000,
        download_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (destination_table is None) == (destination_path is None):
            raise GeminiBatchInputError("Give exactly one of destination_table and destination_path.")
        if destination_table is not None and not destination_conn_id:
            raise GeminiBatchInputError(
                "destination_table needs destination_conn_id (a common-sql connection)."
            )
        if not 0.0 <= float(max_failed_fraction) <= 1.0:
            raise GeminiBatchInputError(
                f"max_failed_fraction must be within [0, 1], not {max_failed_fraction}"
            )
        self.manifest = manifest
        self.gemini_conn_id = gemini_conn_id
        self.destination_conn_id = destination_conn_id
        self.destination_table = destination_table
        self.errors_table = errors_table
        self.destination_path = destination_path
        self.output_format = output_format
        self.key_column = key_column
        self.key_column_type = key_column_type
        self.output_columns = dict(output_columns or {})
        self.create_table = create_table
        self.max_failed_fraction = float(max_failed_fraction)
        self.prices = prices
        self.chunk_size = chunk_size
        self.download_dir = download_dir

    # ---- execute ------------------------------------------------------------------------------------------

    def _check_manifest(self) -> dict[str, Any]:
        manifest = self.manifest
        if not isinstance(manifest, dict) or manifest.get("kind", MANIFEST_KIND) != MANIFEST_KIND:
            raise GeminiBatchInputError(
                "manifest must be the submit operator's manifest (a dict with kind "
                f"{MANIFEST_KIND!r}); got {type(manifest).__name__}"
            )
        for shard in manifest.get("shards") or []:
            if not shard.get("job_name") or not shard.get("keys_path"):
                raise GeminiBatchInputError(
                    f"Manifest shard {shard.get('index')} lacks job_name or keys_path; "
                    "was the submit interrupted?"
                )
        return manifest

    def _make_sink(self, manifest: dict[str, Any]) -> Any:
        if self.destination_path is not None:
            return ObjectStorageSink(
                self.destination_path,
                self.output_format,
                self.output_columns,
                integer_keys=self.key_column_type.upper() in ("INTEGER", "BIGINT", "SMALLINT"),
            )
        assert self.destination_table is not None and self.destination_conn_id is not None
        split_table(self.destination_table)
        return table_sink(
            self.destination_conn_id,
            self.destination_table,
            key_column=self.key_column,
            key_column_type=self.key_column_type,
            output_columns=self.output_columns,
            errors_table=self.errors_table,
            create_table=self.create_table,
        )

    def execute(self, context: Context) -> dict[str, Any]:
        manifest = self._check_manifest()
        sink = self._make_sink(manifest)  # validates identifiers and types before any API call
        conn_id = self.gemini_conn_id or manifest.get("gemini_conn_id") or GeminiBatchHook.default_conn_name
        hook = GeminiBatchHook(gemini_conn_id=conn_id)
        parser = ResultParser(
            task=manifest.get("task") or "generate",
            response_schema=manifest.get("response_schema"),
            parse_json=bool(self.output_columns),
        )
        work_dir = tempfile.mkdtemp(prefix="gemini-results-", dir=self.download_dir)
        totals = LoadTotals()
        reports: list[ShardReport] = []
        started = time.monotonic()
        try:
            sink.open()
            for shard in manifest.get("shards") or []:
                reports.append(self._load_shard(hook, shard, parser, sink, work_dir, totals))
            sink.close()
        except BaseException:
            sink.abort()
            raise
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
        seconds = time.monotonic() - started
        summary = self._summary(manifest, reports, totals, sink, seconds)
        self.log.info(
            "Loaded %d rows in %.1f s (%.0f rows/s): %s; tokens %s; cost %s",
            totals.rows, seconds, totals.rows / max(seconds, 1e-9), summary["counts"], summary["tokens"],
            summary["cost"],
        )  # fmt: skip
        context["ti"].xcom_push(key=RESULTS_SUMMARY_XCOM_KEY, value=summary)
        self._check_failures(summary)
        return summary

    def _load_shard(
        self,
        hook: GeminiBatchHook,
        shard: dict[str, Any],
        parser: ResultParser,
        sink: Any,
        work_dir: str,
        totals: LoadTotals,
    ) -> ShardReport:
        name = shard["job_name"]
        job = hook.get_job(name)
        if not job.done:
            # Loading an unfinished job would record every key as failed and leave the paid answers behind.
            raise GeminiBatchError(
                f"Gemini batch job {name} is {job.state}, not finished: wait for it (GeminiBatchJobSensor) "
                "and retry this task; rows of jobs loaded before it are kept (upserts make the retry safe)."
            )
        report = ShardReport(job_name=name, state=job.state)
        keys = KeyReconciler(shard["keys_path"], work_dir=work_dir)
        path = Path(work_dir) / (name.replace("/", "_") + ".jsonl")
        try:
            rows: Iterable[ResultRow]
            if job.state != JOB_SUCCEEDED:
                self.log.warning("Job %s ended %s: all its keys are loaded as failed", name, job.state)
                rows = iter_job_failed_rows(keys, name, job.state, job.error)
            elif job.responses_file:
                self.log.info("Downloading %s (results of %s) to %s", job.responses_file, name, path)
                hook.download_file(job.responses_file, path)
                rows = iter_file_rows(path, parser, keys, report)
            elif job.has_inline_responses:
                op = hook.get_job_operation(name)
                output = (op.get("metadata") or {}).get("output") or op.get("response") or {}
                items = (output.get("inlinedResponses") or {}).get("inlinedResponses") or []
                rows = iter_inline_rows(items, parser, keys, report)
            else:
                raise GeminiBatchError(
                    f"Job {name} is SUCCEEDED but its output is not available yet (the service publishes it "
                    "a little later); retry this task in a few minutes."
                )
            stream_to_sink(rows, sink, totals, report, self.chunk_size, self.log)
            report.key_count = keys.key_count
        finally:
            keys.close()
            path.unlink(missing_ok=True)  # disk use stays one responses file, however many shards
        self._log_report(report, shard)
        return report

    def _log_report(self, report: ShardReport, shard: dict[str, Any]) -> None:
        self.log.info(
            "%s (%s): %d keys, %d lines: %s", report.job_name, report.state, report.key_count, report.lines,
            report.counts,
        )  # fmt: skip
        expected = shard.get("request_count")
        if expected is not None and expected != report.key_count:
            self.log.warning(
                "%s: the manifest says %s requests but its key list has %d keys; counting the key list",
                report.job_name, expected, report.key_count,
            )  # fmt: skip
        if report.malformed_lines:
            self.log.warning(
                "%s: %d malformed result line(s) not loaded (line numbers %s%s); their keys are 'missing'",
                report.job_name, report.malformed_lines, report.malformed_line_numbers,
                ", last line truncated" if report.truncated else "",
            )  # fmt: skip
        if report.unknown_keys:
            self.log.warning(
                "%s: %d result line(s) with keys never sent were not loaded, e.g. %s",
                report.job_name, report.unknown_keys, report.unknown_key_examples,
            )  # fmt: skip
        if report.duplicate_keys:
            self.log.warning(
                "%s: %d duplicate result line(s) ignored (first one loaded), e.g. %s",
                report.job_name, report.duplicate_keys, report.duplicate_key_examples,
            )  # fmt: skip

    # ---- summary ------------------------------------------------------------------------------------------

    def _summary(
        self,
        manifest: dict[str, Any],
        reports: list[ShardReport],
        totals: LoadTotals,
        sink: Any,
        seconds: float,
    ) -> dict[str, Any]:
        keys_total = sum(totals.counts.values())
        not_ok = keys_total - totals.counts[SUCCEEDED]
        request_count = manifest.get("request_count")
        if request_count is not None and request_count != keys_total:
            self.log.warning(
                "Manifest request_count %s != %d keys in the key lists", request_count, keys_total
            )
        cost = self._cost(manifest, totals.tokens)
        jobs = [r.to_dict() for r in reports]
        for job in jobs:
            # Same model, embeddings flag and overrides as the task. An unpriced model was warned about once
            # already (just above): its per-job cost is the same "no price" answer, without a warning per job.
            job["cost"] = self._cost(manifest, job["tokens"]) if cost["batch"] is not None else dict(cost)
        failed_fraction = not_ok / keys_total if keys_total else 0.0
        return {
            "kind": RESULTS_SUMMARY_KIND,
            "version": 1,
            "status": "ok" if failed_fraction <= self.max_failed_fraction else "too_many_failures",
            "task": manifest.get("task") or "generate",
            "model": manifest.get("model"),
            "request_count": keys_total,
            "manifest_request_count": request_count,
            "skipped_count": int(manifest.get("skipped_count") or 0),
            "counts": dict(totals.counts),
            "failed_fraction": round(failed_fraction, 6),
            "max_failed_fraction": self.max_failed_fraction,
            "first_failed_keys": totals.first_failed_keys,
            "unknown_keys": sum(r.unknown_keys for r in reports),
            "unknown_key_examples": [k for r in reports for k in r.unknown_key_examples][:EXAMPLES],
            "duplicate_keys": sum(r.duplicate_keys for r in reports),
            "duplicate_key_examples": [k for r in reports for k in r.duplicate_key_examples][:EXAMPLES],
            "malformed_lines": sum(r.malformed_lines for r in reports),
            "jobs": jobs,
            "tokens": dict(totals.tokens),
            "cost": cost,
            "destination": sink.describe(),
            "rows_loaded": totals.rows,
            "seconds": round(seconds, 3),
        }

    def _cost(self, manifest: dict[str, Any], tokens: dict[str, int]) -> dict[str, Any]:
        return compute_cost(
            manifest.get("model") or "",
            tokens,
            embeddings=manifest.get("task") == "embed",
            overrides=self.prices,
        )

    def _check_failures(self, summary: dict[str, Any]) -> None:
        if summary["status"] == "ok":
            return
        counts = summary["counts"]
        bad = summary["request_count"] - counts[SUCCEEDED]
        where = summary["destination"].get("errors_table") or summary["destination"].get("errors_path")
        raise GeminiBatchResultsError(
            f"{bad} of {summary['request_count']} keys did not succeed ({counts['failed']} failed, "
            f"{counts['invalid_output']} invalid_output, {counts['missing']} missing): fraction "
            f"{summary['failed_fraction']:.4f} > max_failed_fraction={self.max_failed_fraction}. "
            f"First keys: {summary['first_failed_keys']}. All rows were loaded; "
            f"the failed keys are in {where}."
        )
