"""The load run: one execution of the results stage, from a submit manifest to loaded rows and a summary.

:class:`LoadRun` is the one place that knows the *order* of a load; every stage is a method: the manifest
check (when the run is made) → the sink (:meth:`~LoadRun.sink`) → per shard, the job read, the download (or
the inline answers, or the job's failure), then parse + reconcile + ``stream_to_sink``
(:meth:`~LoadRun.load_shard`) → the summary with tokens and cost (:meth:`~LoadRun.summary`) → the failure
check (:meth:`~LoadRun.raise_for_failures`). It is longer than most modules because the whole order, with the
per-shard log lines and the summary it ends in, reads best in one place. The order keeps the invariants:

* No API call before the manifest and the destination are validated: the manifest is checked when the run is
  made, the sink (identifiers, types) built before the first job read.
* A job that is not finished is refused, never loaded: its keys would all be recorded as failed and its paid
  answers left behind. Rows of the shards loaded before it stay (upserts make the retry safe).
* Every key of every shard ends in exactly one outcome - ``succeeded``, ``failed``, ``invalid_output`` or
  ``missing`` - and ``succeeded + failed + invalid_output + missing`` equals the keys submitted; the rows an
  incremental submit left out are counted as ``reused`` beside them (their rows are not touched), so
  ``succeeded + failed + invalid_output + missing + reused`` equals the valid input rows. Keys of a job
  that did not succeed (FAILED / EXPIRED / CANCELLED) are all ``failed`` with ``job <STATE>`` in the error.
* A finished job's uploaded input file (and its shard's earlier generations' files) is deleted right after
  the read that shows it finished, unless the manifest says ``keep_uploaded_files``
  (:mod:`airflow_gemini_batch.results.uploaded_files`); a file already gone is fine.
* Results never go through XCom: they stream from the downloaded file to the sink in chunks, one responses
  file on disk at a time; the summary carries counts, tokens and cost (``kind = RESULTS_SUMMARY_KIND``), for
  the task and for each job (``jobs[i]["tokens"]`` / ``["cost"]``); the task's ``tokens`` are exactly the sum
  of its jobs'.
* The run's context cache (manifest ``context_cache``, made for ``shared_context``) is deleted when the load
  ends, loaded or failed — every job is finished by then, so no request needs it any more — except when a job
  was refused as not finished: it may still read the cache. A delete that fails is logged; the TTL ends it.
  It is deleted before the summary is made, so the task's cost includes its storage as it was: the cached
  tokens times the hours from its create time (the service's, in the manifest) to its delete (summary
  ``context_cache``), at the model's ``cache_storage`` price. A cache already gone ended by then (billed to
  the delete attempt: an upper bound); one whose delete failed lives until its TTL ends it (billed to its
  recorded expiry, or the attempt if later). Storage is a cost of the task, not of a job: the task's cost is
  its jobs' plus storage.
* ``max_failed_fraction`` is checked **after** everything is written (and after the caller recorded the
  summary), so good rows are loaded and bad ones are queryable even when the task then fails.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_gemini_batch.cost.prices import price_for, price_overrides
from airflow_gemini_batch.cost.pricing import compute_cost, describe_cost
from airflow_gemini_batch.exceptions import GeminiBatchError, GeminiBatchInputError, GeminiBatchResultsError
from airflow_gemini_batch.hooks.backend import batch_hook
from airflow_gemini_batch.hooks.gemini import GeminiBatchHook
from airflow_gemini_batch.hooks.job_status import SUCCEEDED as JOB_SUCCEEDED
from airflow_gemini_batch.manifest import MANIFEST_KIND, RESULTS_SUMMARY_KIND
from airflow_gemini_batch.results.loading import LoadTotals, stream_to_sink
from airflow_gemini_batch.results.parsing import (
    ResultParser,
    iter_file_rows,
    iter_inline_rows,
    iter_job_failed_rows,
)
from airflow_gemini_batch.results.reconcile import KeyReconciler
from airflow_gemini_batch.results.rows import EXAMPLES, REUSED, SUCCEEDED, ShardReport
from airflow_gemini_batch.results.uploaded_files import delete_finished_shard_files
from airflow_gemini_batch.sinks import ObjectStorageSink, table_sink
from airflow_gemini_batch.submit.context_cache import delete_cache

if TYPE_CHECKING:
    from collections.abc import Iterable

    from airflow.sdk.types import Logger

    from airflow_gemini_batch.results.rows import ResultRow
    from airflow_gemini_batch.sinks import Sink

INTEGER_KEY_TYPES = ("INTEGER", "BIGINT", "SMALLINT")


@dataclass
class LoadSettings:
    """Where and how a load writes: the load operator's arguments of the same names (see its docstring),
    except the manifest and the connection. :meth:`validated` checks them once, when the operator is built."""

    destination_conn_id: str | None = None
    destination_table: str | None = None
    errors_table: str | None = None
    destination_path: str | None = None
    output_format: str = "jsonl"
    key_column: str = "key"
    key_column_type: str = "TEXT"
    output_columns: dict[str, str] | None = None
    create_table: bool = True
    time_partitioning: dict[str, Any] | None = None
    cluster_fields: list[str] | None = None
    max_failed_fraction: float = 0.0
    prices: dict[str, dict[str, float]] | None = None
    chunk_size: int = 5_000
    download_dir: str | None = None

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def of(cls, values: dict[str, Any] | object) -> LoadSettings:
        """The settings named like :meth:`names` in a dict (an operator's arguments) or an object."""
        if isinstance(values, dict):
            return cls(**{name: values[name] for name in cls.names() if name in values})
        return cls(**{name: getattr(values, name) for name in cls.names()})

    def validated(self) -> LoadSettings:
        """Check the destination arguments (:class:`GeminiBatchInputError`) and normalise their types."""
        if (self.destination_table is None) == (self.destination_path is None):
            raise GeminiBatchInputError("Give exactly one of destination_table and destination_path.")
        if self.destination_table is not None and not self.destination_conn_id:
            raise GeminiBatchInputError(
                "destination_table needs destination_conn_id (a common-sql or google_cloud_platform connection)."
            )
        if not 0.0 <= float(self.max_failed_fraction) <= 1.0:
            raise GeminiBatchInputError(
                f"max_failed_fraction must be within [0, 1], not {self.max_failed_fraction}"
            )
        self.output_columns = dict(self.output_columns or {})
        self.max_failed_fraction = float(self.max_failed_fraction)
        return self


def checked_manifest(manifest: Any) -> dict[str, Any]:
    """The submit manifest; :class:`GeminiBatchInputError` if it is not one or a shard was never created."""
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


class LoadRun:
    """One execution of the results stage over the jobs of one submit manifest.

    :param manifest: the submit operator's manifest; checked here, before anything else happens.
    :param settings: validated settings (:meth:`LoadSettings.validated`).
    :param log: where progress goes (the operator's task log).
    :param gemini_conn_id: the connection to read jobs with; default: the manifest's.
    :param attempts: how many times these rows' requests have been sent (the ``attempts`` column): 1, or the
        row-retry round of :class:`~airflow_gemini_batch.operators.batch.GeminiBatchOperator`.
    """

    def __init__(
        self,
        manifest: Any,
        settings: LoadSettings,
        log: Logger | logging.Logger | None = None,
        gemini_conn_id: str | None = None,
        attempts: int = 1,
    ) -> None:
        self.manifest = checked_manifest(manifest)
        self.attempts = attempts
        self.settings = settings
        self.log = log or logging.getLogger(__name__)
        self.gemini_conn_id = (
            gemini_conn_id or self.manifest.get("gemini_conn_id") or GeminiBatchHook.default_conn_name
        )
        #: a job was found not finished: it may still need the run's context cache
        self._unfinished = False
        #: when the run's context cache ended (epoch seconds) and whether this load deleted it; None: not yet
        self._cache_end: tuple[float, bool | None] | None = None

    @cached_property
    def hook(self) -> GeminiBatchHook:
        return batch_hook(
            self.gemini_conn_id, [s["job_name"] for s in self.manifest.get("shards", []) if s.get("job_name")]
        )

    def execute(self) -> dict[str, Any]:
        """Load every shard into the sink, in manifest order; return the summary (see the module docstring)."""
        sink = self.sink()  # validates identifiers and types before any API call
        try:
            return self._load(sink)
        finally:
            self.release_cache()

    def _load(self, sink: Sink) -> dict[str, Any]:
        parser = self.parser()
        work_dir = tempfile.mkdtemp(prefix="gemini-results-", dir=self.settings.download_dir)
        totals = LoadTotals(self.long_context_threshold)
        reports: list[ShardReport] = []
        started = time.monotonic()
        try:
            sink.open()
            for shard in self.manifest.get("shards") or []:
                reports.append(self.load_shard(shard, parser, sink, work_dir, totals))
            sink.close()
        except BaseException:
            sink.abort()
            raise
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
        seconds = time.monotonic() - started
        self.release_cache()  # before the summary: its storage cost runs to the delete
        summary = self.summary(reports, totals, sink, seconds)
        self.log.info(
            "Loaded %d rows in %.1f s (%.0f rows/s): %s; tokens %s; cost: %s",
            totals.rows, seconds, totals.rows / max(seconds, 1e-9), summary["counts"], summary["tokens"],
            describe_cost(summary["cost"], summary["reuse_saved"]),
        )  # fmt: skip
        return summary

    # ---- stages -------------------------------------------------------------------------------------------

    def sink(self) -> Sink:
        """The destination: a table (upsert on key) or files on object storage; validated, not yet opened."""
        s = self.settings
        if s.destination_path is not None:
            return ObjectStorageSink(
                s.destination_path,
                s.output_format,
                s.output_columns,
                integer_keys=s.key_column_type.upper() in INTEGER_KEY_TYPES,
                attempts=self.attempts,
            )
        assert s.destination_table is not None and s.destination_conn_id is not None
        return table_sink(
            s.destination_conn_id,
            s.destination_table,
            key_column=s.key_column,
            key_column_type=s.key_column_type,
            output_columns=s.output_columns,
            errors_table=s.errors_table,
            create_table=s.create_table,
            attempts=self.attempts,
            time_partitioning=s.time_partitioning,
            cluster_fields=s.cluster_fields,
        )

    def parser(self) -> ResultParser:
        return ResultParser(
            task=self.manifest.get("task") or "generate",
            response_schema=self.manifest.get("response_schema"),
            parse_json=bool(self.settings.output_columns),
        )

    def load_shard(
        self, shard: dict[str, Any], parser: ResultParser, sink: Sink, work_dir: str, totals: LoadTotals
    ) -> ShardReport:
        """One job: read it, then stream its answers (or its failure) key by key into the sink."""
        name = shard["job_name"]
        job = self.hook.get_job(name)
        if not job.done:
            self._unfinished = True
            raise GeminiBatchError(
                f"Gemini batch job {name} is {job.state}, not finished: wait for it (GeminiBatchJobSensor) "
                "and retry this task; rows of jobs loaded before it are kept (upserts make the retry safe)."
            )
        delete_finished_shard_files(self.hook, self.manifest, shard, job, self.log)  # finished: not needed
        report = ShardReport(job_name=name, state=job.state)
        keys = KeyReconciler(
            shard["keys_path"], work_dir=work_dir, fingerprints_path=shard.get("fingerprints_path")
        )
        path = Path(work_dir) / (name.replace("/", "_") + ".jsonl")
        try:
            rows: Iterable[ResultRow]
            if job.state != JOB_SUCCEEDED:
                self.log.warning("Job %s ended %s: all its keys are loaded as failed", name, job.state)
                rows = iter_job_failed_rows(keys, name, job.state, job.error)
            elif job.responses_file:
                self.log.info("Downloading %s (results of %s) to %s", job.responses_file, name, path)
                self.hook.download_file(job.responses_file, path)
                rows = iter_file_rows(path, parser, keys, report)
            elif job.has_inline_responses:
                op = self.hook.get_job_operation(name)
                output = (op.get("metadata") or {}).get("output") or op.get("response") or {}
                items = (output.get("inlinedResponses") or {}).get("inlinedResponses") or []
                rows = iter_inline_rows(items, parser, keys, report)
            else:
                raise GeminiBatchError(
                    f"Job {name} is SUCCEEDED but its output is not available yet (the service publishes it "
                    "a little later); retry this task in a few minutes."
                )
            # stream_to_sink is typed for a stdlib logger; the task's logger takes the same %-style calls.
            stream_to_sink(rows, sink, totals, report, self.settings.chunk_size, self.log)  # type: ignore[arg-type]
            report.key_count = keys.key_count
        finally:
            keys.close()
            path.unlink(missing_ok=True)  # disk use stays one responses file, however many shards
        self.log_report(report, shard)
        return report

    def log_report(self, report: ShardReport, shard: dict[str, Any]) -> None:
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

    def release_cache(self) -> None:
        """Delete the run's context cache (once), unless a job was found still running (see the module
        docstring), and note when it ended."""
        cache = self.manifest.get("context_cache") or {}
        if not cache.get("name") or self._unfinished or self._cache_end is not None:
            return
        deleted = delete_cache(self.hook, cache["name"], "the load is over", self.log)
        now = time.time()
        if deleted is None:  # the delete failed: the TTL ends it
            now = max(now, float(cache.get("expire_time") or now))
        self._cache_end = (now, deleted)

    def cache_lifetime(self) -> dict[str, Any] | None:
        """The run's context cache as billed: tokens, create and end time (epoch seconds), hours stored;
        None for a run without one. ``hours`` is None when the manifest lacks the create time or size."""
        cache = self.manifest.get("context_cache") or {}
        if not cache.get("name") or self._cache_end is None:
            return None
        end, deleted = self._cache_end
        created, tokens = cache.get("create_time"), cache.get("token_count")
        hours = max(0.0, end - float(created)) / 3600 if created is not None and tokens is not None else None
        return {
            "name": cache["name"],
            "token_count": tokens,
            "create_time": created,
            "end_time": end,
            "deleted": deleted,
            "hours": hours,
        }

    # ---- summary and cost ---------------------------------------------------------------------------------

    def summary(
        self, reports: list[ShardReport], totals: LoadTotals, sink: Sink, seconds: float
    ) -> dict[str, Any]:
        manifest = self.manifest
        keys_total = sum(totals.counts.values())
        not_ok = keys_total - totals.counts[SUCCEEDED]
        request_count = manifest.get("request_count")
        if request_count is not None and request_count != keys_total:
            self.log.warning(
                "Manifest request_count %s != %d keys in the key lists", request_count, keys_total
            )
        reused = int(manifest.get("reused") or 0)
        lifetime = self.cache_lifetime()
        token_hours = (lifetime["token_count"] * lifetime["hours"]) if lifetime and lifetime["hours"] else 0.0
        cost = self.cost(totals.tokens, totals.long_context_tokens, cache_token_hours=token_hours)
        jobs = [r.to_dict() for r in reports]
        for job in jobs:
            # Same model, embeddings flag and overrides as the task. An unpriced model was warned about once
            # already (just above): its per-job cost is the same "no price" answer, without a warning per job.
            job["cost"] = (
                self.cost(job["tokens"], job["long_context_tokens"])
                if cost["batch"] is not None
                else dict(cost)
            )
        failed_fraction = not_ok / keys_total if keys_total else 0.0
        max_failed_fraction = self.settings.max_failed_fraction
        return {
            "kind": RESULTS_SUMMARY_KIND,
            "version": 1,
            "status": "ok" if failed_fraction <= max_failed_fraction else "too_many_failures",
            "task": manifest.get("task") or "generate",
            "model": manifest.get("model"),
            "request_count": keys_total,
            "manifest_request_count": request_count,
            "skipped_count": int(manifest.get("skipped_count") or 0),
            # inputs = the outcomes of the keys sent + reused (not sent: answered already) + skipped (invalid)
            "counts": {**totals.counts, REUSED: reused},
            "reused": reused,
            "reused_cost_usd": manifest.get("reused_cost_usd", 0.0 if not reused else None),
            "failed_fraction": round(failed_fraction, 6),
            "max_failed_fraction": max_failed_fraction,
            "first_failed_keys": totals.first_failed_keys,
            "unknown_keys": sum(r.unknown_keys for r in reports),
            "unknown_key_examples": [k for r in reports for k in r.unknown_key_examples][:EXAMPLES],
            "duplicate_keys": sum(r.duplicate_keys for r in reports),
            "duplicate_key_examples": [k for r in reports for k in r.duplicate_key_examples][:EXAMPLES],
            "malformed_lines": sum(r.malformed_lines for r in reports),
            "jobs": jobs,
            "tokens": dict(totals.tokens),
            "cost": cost,
            "context_cache": lifetime,
            "reuse_saved": self.reuse_saved(),
            "estimate": self.estimate_summary(),
            "destination": sink.describe(),
            "rows_loaded": totals.rows,
            "seconds": round(seconds, 3),
        }

    @cached_property
    def price_overrides(self) -> dict[str, dict[str, Any]]:
        """``[gemini_batch] prices`` and this task's ``prices=``, read once per load."""
        return price_overrides(self.settings.prices)

    @cached_property
    def long_context_threshold(self) -> int | None:
        price = price_for(self.manifest.get("model") or "", self.price_overrides)
        threshold = (price or {}).get("long_context_threshold")
        return int(threshold) if threshold else None

    def cost(
        self,
        tokens: dict[str, int],
        long_context: dict[str, int] | None = None,
        cache_token_hours: float = 0.0,
    ) -> dict[str, Any]:
        return compute_cost(
            self.manifest.get("model") or "",
            tokens,
            embeddings=self.manifest.get("task") == "embed",
            overrides=self.price_overrides,
            long_context=long_context,
            cache_token_hours=cache_token_hours,
        )

    def estimate_summary(self) -> dict[str, Any] | None:
        """The submit's estimate beside the actuals (its cost and tokens), None for an older manifest."""
        estimate = self.manifest.get("estimate")
        if not isinstance(estimate, dict):
            return None
        return {k: estimate.get(k) for k in ("cost_usd", "input_tokens", "output_tokens")}

    def reuse_saved(self) -> float | None:
        """What re-sending the rows an incremental run reused would have cost (the manifest's
        ``reused_cost_usd``, estimated at submit); None when the run reused nothing or did not say."""
        value = self.manifest.get("reused_cost_usd")
        return round(float(value), 6) if value is not None else None

    def raise_for_failures(self, summary: dict[str, Any]) -> None:
        """:class:`GeminiBatchResultsError` when more keys failed than ``max_failed_fraction`` allows."""
        if summary["status"] == "ok":
            return
        counts = summary["counts"]
        bad = summary["request_count"] - counts[SUCCEEDED]
        where = summary["destination"].get("errors_table") or summary["destination"].get("errors_path")
        raise GeminiBatchResultsError(
            f"{bad} of {summary['request_count']} keys did not succeed ({counts['failed']} failed, "
            f"{counts['invalid_output']} invalid_output, {counts['missing']} missing): fraction "
            f"{summary['failed_fraction']:.4f} > max_failed_fraction={self.settings.max_failed_fraction}. "
            f"First keys: {summary['first_failed_keys']}. All rows were loaded; "
            f"the failed keys are in {where}."
        )
