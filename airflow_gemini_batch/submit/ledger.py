"""The submit run's identity, display names and records: what lets every try find the jobs of the ones before.

Invariants:

* The identity is run-stable: ``dag_id``, ``task_id``, ``run_id`` (its logical date when it has one),
  ``map_index`` — never the try number. That is the entire point: a retry, a clear or a rerun after a worker
  crash is the same identity, so it finds the jobs the earlier try created instead of paying for them twice.
* Every shard has a deterministic display name, ``agb-<sha256(identity)[:12]>-<fingerprint[:8]>-<index>``
  (``-g<n>`` before the index after ``force_resubmit``; ``-r<n>`` for a shard's n-th recovery after its job
  ended FAILED, EXPIRED or CANCELLED); 31 characters (up to ~55 with both), well under the 128 allowed. It is
  how an orphan — a job created while its name was never recorded — is found again via ``batches.list``.
* A row-retry round n ≥ 2 of ``GeminiBatchOperator`` is a submission of its own in the same task instance:
  its records live under their own keys (``gemini_batch_submit.round<n>``, see :class:`SubmissionLedger`) and
  its display names carry ``-a<n>`` after the identity hash, so rounds never mistake each other's jobs.
* Order of records in ``context["task_state_store"]`` (shared by all tries of a task instance): the header
  (identity, fingerprint, generation) before any upload; per shard the uploaded file name right after the
  upload, the *intent* right before ``create``, the job name right after. The run's context cache
  (``shared_context``) likewise: its display name and intent right before ``caches.create``, its name right
  after (:mod:`airflow_gemini_batch.submit.context_cache`).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from airflow_gemini_batch.exceptions import GeminiBatchChangedInputError

log = logging.getLogger(__name__)

HEADER_KEY = "gemini_batch_submit"
SHARD_KEY = "gemini_batch_submit.shard.{index}"
CACHE_KEY = "gemini_batch_submit.cache"
DISPLAY_NAME_PREFIX = "agb"


@dataclass(frozen=True)
class RunIdentity:
    """Which submission this is: DAG, task, run and map index — never the try number (that is the point).

    The run is named by its logical date when it has one, else by its run id. A DAG run deleted and created
    again for the same data interval (``airflow dags test``, a manual re-run of a day) is the same work on
    the same input, so it finds its earlier jobs by display name instead of paying again; ``force_resubmit``
    is the way to ask for fresh jobs on purpose.
    """

    dag_id: str
    task_id: str
    run_id: str
    map_index: int
    logical_date: str | None = None

    @classmethod
    def from_context(cls, context: Any) -> RunIdentity:
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        logical_date = context.get("logical_date") if hasattr(context, "get") else None
        return cls(
            ti.dag_id,
            ti.task_id,
            ti.run_id,
            -1 if map_index is None else int(map_index),
            logical_date.isoformat() if logical_date is not None else None,
        )

    @property
    def text(self) -> str:
        run = f"logical:{self.logical_date}" if self.logical_date else self.run_id
        return f"{self.dag_id}/{self.task_id}/{run}/{self.map_index}"

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:12]


def display_name(
    identity_hash: str, fingerprint: str, index: int, generation: int = 0, recovery: int = 0
) -> str:
    """The shard's display name; ``recovery`` counts the shard's own resubmissions after a failed job."""
    gen = f"-g{generation}" if generation else ""
    rec = f"-r{recovery}" if recovery else ""
    return f"{DISPLAY_NAME_PREFIX}-{identity_hash}-{fingerprint[:8]}{gen}{rec}-{index:05d}"


_RECOVERY = re.compile(r"^(?P<head>.+?)(?:-r(?P<recovery>\d+))?(?P<index>-\d{5})$")


def split_recovery(name: str) -> tuple[str, int]:
    """``agb-…-r2-00003`` → (``agb-…-00003``, 2): the shard's first display name and its recovery number."""
    m = _RECOVERY.match(name)
    if m is None:
        return name, 0
    return m["head"] + m["index"], int(m["recovery"] or 0)


class SubmissionLedger:
    """The submit run's records in the task state store (or nothing, when the context has none).

    :param store: ``context["task_state_store"]`` (``get(key, default)``, ``set(key, value)``) or None.
    :param round_number: the row-retry round (``GeminiBatchOperator``); round 1 uses the plain keys, so a
        first round is recorded exactly like the submit operator's run.
    """

    def __init__(self, store: Any | None, round_number: int = 1) -> None:
        self.store = store
        first = round_number <= 1
        self._header_key = HEADER_KEY if first else f"{HEADER_KEY}.round{round_number}"
        self._shard_key = SHARD_KEY if first else self._header_key + ".shard.{index}"
        if store is None:
            log.warning(
                "No task_state_store in the context: crash recovery relies on finding jobs by their display "
                "names (a batches.list scan)."
            )

    @property
    def durable(self) -> bool:
        return self.store is not None

    def header(self) -> dict[str, Any] | None:
        return self.store.get(self._header_key, None) if self.store is not None else None

    def shard(self, index: int) -> dict[str, Any]:
        if self.store is None:
            return {}
        return self.store.get(self._shard_key.format(index=index), None) or {}

    def _set(self, key: str, value: dict[str, Any]) -> None:
        if self.store is not None:
            self.store.set(key, value)

    def has_records(self) -> bool:
        """Whether earlier tries of this task instance left records (then they are authoritative)."""
        return self.header() is not None

    def begin(
        self,
        *,
        identity: RunIdentity,
        fingerprint: str,
        shard_count: int,
        on_changed_input: str,
        force_resubmit: bool,
        force_token: Any = None,
    ) -> int:
        """Decide the generation for this run and record the header; raise on a changed input if asked to.

        :param force_token: what tells a deliberate re-run from an automatic retry of the same forced run —
            the task instance's ``max_tries``, which a clear raises and a retry keeps. A retry of a forced run
            re-attaches to the generation that run started instead of paying for every shard again.
        :returns: the generation (0 normally; +1 per forced run).
        """
        header = self.header()
        generation = int(header.get("generation", 0)) if header else 0
        if force_resubmit and header and force_token is not None and header.get("force_token") == force_token:
            log.info("Automatic retry of a force_resubmit run: re-attaching to generation %d", generation)
        elif force_resubmit:
            # Without a store there is nothing to count from; a clock value keeps forced names fresh.
            generation = generation + 1 if self.durable else int(time.time())
            log.warning("force_resubmit=True: ignoring earlier records, submitting generation %d", generation)
        elif header and header.get("fingerprint") != fingerprint:
            recorded = self.recorded_jobs(header)
            if recorded and on_changed_input == "fail":
                raise GeminiBatchChangedInputError(
                    f"The input changed since an earlier try of this task instance submitted {len(recorded)} "
                    f"job(s) ({', '.join(recorded[:5])}{' ...' if len(recorded) > 5 else ''}); fingerprint "
                    f"{str(header.get('fingerprint'))[:12]} → {fingerprint[:12]}. Nothing new was submitted. "
                    "Fix: restore the input, or set on_changed_input='resubmit' (new jobs for the new input; "
                    "the old jobs keep running unless cancelled) or force_resubmit=True."
                )
            if recorded:
                log.warning(
                    "Input changed since jobs %s were submitted; on_changed_input=%r: submitting new jobs. "
                    "The old jobs are left as they are.",
                    recorded,
                    on_changed_input,
                )
        self._set(
            self._header_key,
            {
                "identity": identity.text,
                "fingerprint": fingerprint,
                "generation": generation,
                "shard_count": shard_count,
                "force_token": force_token if force_resubmit else None,
            },
        )
        return generation

    def recorded_jobs(self, header: dict[str, Any]) -> list[str]:
        """Job names (or display names of intents) recorded under an earlier header."""
        out = []
        for index in range(int(header.get("shard_count", 0))):
            rec = self.shard(index)
            if rec.get("fingerprint") == header.get("fingerprint") and (
                rec.get("job_name") or rec.get("intent")
            ):
                out.append(rec.get("job_name") or rec.get("display_name", f"shard {index}"))
        return out

    def record_upload(self, index: int, rec: dict[str, Any], file_name: str) -> None:
        rec["file_name"] = file_name
        self._set(self._shard_key.format(index=index), rec)

    def record_intent(self, index: int, rec: dict[str, Any]) -> None:
        rec["intent"] = True
        self._set(self._shard_key.format(index=index), rec)

    def clear_intent(self, index: int, rec: dict[str, Any]) -> None:
        """Every create attempt was refused (429): no job can exist, so no later try need look one up."""
        rec["intent"] = False
        self._set(self._shard_key.format(index=index), rec)

    def record_job(self, index: int, rec: dict[str, Any], job_name: str) -> None:
        rec["job_name"] = job_name
        self._set(self._shard_key.format(index=index), rec)

    def cache(self) -> dict[str, Any]:
        """The context cache record (``display_name``, ``intent``, ``name``), or {}."""
        return (self.store.get(CACHE_KEY, None) or {}) if self.store is not None else {}

    def record_cache_intent(self, display_name: str) -> None:
        self._set(CACHE_KEY, {"display_name": display_name, "intent": True})

    def record_cache(self, display_name: str, name: str) -> None:
        self._set(CACHE_KEY, {"display_name": display_name, "intent": True, "name": name})

    def forget_uploads(self, shard_count: int) -> list[int]:
        """Drop the recorded uploads of shards that have no job yet (their files name a cache that is gone);
        returns those shards."""
        forgotten = []
        for index in range(shard_count):
            rec = self.shard(index)
            if rec.get("file_name") and not rec.get("job_name"):
                rec.pop("file_name")
                self._set(self._shard_key.format(index=index), rec)
                forgotten.append(index)
        return forgotten

    def has_jobs(self, shard_count: int) -> bool:
        """Whether any shard records a job (or a create that may have made one)."""
        return any(self.shard(i).get("job_name") or self.shard(i).get("intent") for i in range(shard_count))

    def record_recovery(self, index: int, rec: dict[str, Any]) -> None:
        """The shard's next generation (no file, intent or job yet), before anything is uploaded for it."""
        self._set(self._shard_key.format(index=index), rec)

    def record_stuck(self, index: int, job_name: str) -> int | None:
        """Count one stuck resubmit of the shard whose recorded job is ``job_name``, before it is cancelled;
        the shard's count now, or None when its record names another job (nothing counted)."""
        rec = self.shard(index)
        if rec.get("job_name") != job_name:
            return None
        rec["stuck_resubmits"] = int(rec.get("stuck_resubmits", 0)) + 1
        self._set(self._shard_key.format(index=index), rec)
        return int(rec["stuck_resubmits"])


def recorded_job_names(store: Any | None) -> list[str]:
    """Every job the task instance's ledger recorded, in every row round and generation (none without a
    store): the jobs whose answers an incremental run of the same task instance must not count as reused."""
    names: list[str] = []
    if store is None:
        return names
    n = 1
    while (header := (ledger := SubmissionLedger(store, n)).header()) is not None:
        for index in range(int(header.get("shard_count", 0))):
            rec = ledger.shard(index)
            names += [*rec.get("previous_jobs", []), *([rec["job_name"]] if rec.get("job_name") else [])]
        n += 1
    return names
