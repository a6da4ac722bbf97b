"""Request lines → JSONL shard files under the limits, one batch job per shard; plus duplicate-key detection.

It is one module, past the usual size, because the cut between shards, the key lists written beside
them and the duplicate-key check all run in the same streaming loop and share its invariants.

Invariants:

* Every shard is under ``max_bytes`` (file size), ``max_requests`` (lines) and, when set, ``max_tokens``
  (estimated at 4 bytes of request line per token, which slightly over-counts because JSON syntax is counted
  too). A line goes to exactly one shard: a batch is cut at the first line that would break a limit, and the
  rest continues in the next shard — no row is lost or doubled at a boundary.
* Each shard's key list (one JSON-encoded key per line, same order as the shard) is written alongside it, and
  so is its list of request fingerprints (one sha256 hex per line, same order; ``inputs.fingerprint``).
* With an incremental check (``reuse``), rows whose answer is already in the destination for the same
  fingerprint are left out of the shards before they are written, one fetched batch at a time, and counted.
* More than ``max_jobs`` shards is refused while building, before anything is uploaded.
* The fingerprint is sha256 over the job kind, the model and every shard's sha256 of its lines as written,
  so a retry detects a changed input (or a changed model or sharding) before it re-attaches to jobs.
* Duplicate keys are found with bounded memory, after the shards are written and before any API call: the
  key lists are read back, hashes spread over 256 bucket files and checked one bucket at a time (~0.3 MB of
  RAM per million rows), candidates confirmed against the real keys. When the keys arrived strictly
  increasing (``ORDER BY id``, a table read in rowid order) none can repeat and the pass is skipped.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import time
from array import array
from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import accumulate
from typing import IO, TYPE_CHECKING, Any

import orjson

from airflow_gemini_batch.exceptions import GeminiBatchInputError
from airflow_gemini_batch.streaming import paused_gc

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from pathlib import Path

    from airflow_gemini_batch.inputs.incremental import ReuseCheck
    from airflow_gemini_batch.inputs.requests import RequestEncoder
    from airflow_gemini_batch.inputs.validation import InvalidRows
    from airflow_gemini_batch.submit.staging import Staging

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES_PER_JOB = 1_900_000_000  # the File API takes 2 GB per file; keep a margin
DEFAULT_MAX_REQUESTS_PER_JOB = 100_000  # keeps each job's output file and retry unit moderate
DEFAULT_MAX_JOBS = 100  # the API's concurrent batch limit
BYTES_PER_TOKEN = 4
_BUCKETS = 256
_IO_BUFFER = 1024 * 1024


@dataclass(frozen=True)
class ShardLimits:
    max_bytes: int = DEFAULT_MAX_BYTES_PER_JOB
    max_requests: int = DEFAULT_MAX_REQUESTS_PER_JOB
    max_tokens: int | None = None
    max_jobs: int = DEFAULT_MAX_JOBS

    @property
    def byte_budget(self) -> int:
        """Bytes a shard may hold: the file limit, or the token budget converted at 4 bytes/token."""
        if self.max_tokens:
            return min(self.max_bytes, self.max_tokens * BYTES_PER_TOKEN)
        return self.max_bytes


@dataclass
class Shard:
    index: int
    path: Path
    keys_path: Path
    fingerprints_path: Path
    request_count: int = 0
    bytes: int = 0
    sha256: str = ""

    @property
    def estimated_tokens(self) -> int:
        return math.ceil(self.bytes / BYTES_PER_TOKEN)


class ShardWriter:
    """Appends batches of lines (and their keys) to shard files, starting a new shard at each limit."""

    def __init__(self, staging: Staging, limits: ShardLimits) -> None:
        self.staging = staging
        self.limits = limits
        self.shards: list[Shard] = []
        self._data: IO[bytes] | None = None
        self._keys: IO[bytes] | None = None
        self._fingerprints: IO[bytes] | None = None
        self._hash: Any = None
        self._current: Shard | None = None

    def _open(self) -> Shard:
        index = len(self.shards)
        if index >= self.limits.max_jobs:
            self.close()
            raise GeminiBatchInputError(
                f"The input needs more than max_jobs={self.limits.max_jobs} batch jobs (shards of at most "
                f"{self.limits.max_requests:,} requests / {self.limits.byte_budget:,} bytes; "
                f"{sum(s.request_count for s in self.shards):,} rows already placed). Nothing was uploaded. "
                "Fix: raise max_requests_per_job / max_bytes_per_job / max_tokens_per_job, split the input "
                "over several runs (e.g. a mapped task per partition), or raise max_jobs if the quota allows."
            )
        shard = Shard(
            index,
            self.staging.shard_path(index),
            self.staging.local_keys_path(index),
            self.staging.local_fingerprints_path(index),
        )
        self._data = shard.path.open("wb", buffering=_IO_BUFFER)
        self._keys = shard.keys_path.open("wb", buffering=_IO_BUFFER)
        self._fingerprints = shard.fingerprints_path.open("wb", buffering=_IO_BUFFER)
        self._hash = hashlib.sha256()
        self._current = shard
        self.shards.append(shard)
        return shard

    def _close_current(self) -> None:
        if self._current is not None:
            assert self._data is not None and self._keys is not None and self._fingerprints is not None
            self._data.close()
            self._keys.close()
            self._fingerprints.close()
            self._current.sha256 = self._hash.hexdigest()
            self._current = self._data = self._keys = self._fingerprints = None

    def write(self, lines: Sequence[bytes], keys: Sequence[bytes], fingerprints: Sequence[str]) -> None:
        n = len(lines)
        if not n:
            return
        cum = list(accumulate(map(len, lines)))
        budget, max_requests = self.limits.byte_budget, self.limits.max_requests
        i = 0
        while i < n:
            shard = self._current or self._open()
            base = cum[i - 1] if i else 0
            fit_bytes = bisect_right(cum, base + budget - shard.bytes, lo=i)
            j = min(fit_bytes, i + max_requests - shard.request_count)
            if j <= i:
                if shard.request_count == 0:  # guarded by max_request_bytes <= budget; never loop forever
                    self.close()
                    raise GeminiBatchInputError(
                        f"A request of {len(lines[i]):,} bytes does not fit in an empty shard of "
                        f"{budget:,} bytes; lower max_request_bytes or raise the shard limits."
                    )
                self._close_current()
                continue
            data = b"".join(lines[i:j])
            self._data.write(data)  # type: ignore[union-attr]
            self._hash.update(data)
            self._keys.write(b"\n".join(keys[i:j]) + b"\n")  # type: ignore[union-attr]
            self._fingerprints.write(("\n".join(fingerprints[i:j]) + "\n").encode())  # type: ignore[union-attr]
            shard.request_count += j - i
            shard.bytes += len(data)
            i = j

    def close(self) -> list[Shard]:
        self._close_current()
        return self.shards


def find_duplicate_keys(shards: Sequence[Shard], work_dir: Path) -> dict[bytes, int]:
    """Exact duplicate keys (JSON bytes) → occurrences, read back from the key lists with bounded memory.

    Pass 1 spreads each key's 64-bit hash over 256 bucket files (8 bytes per row on disk); pass 2 checks one
    bucket at a time for repeated hashes (~0.3 MB of RAM per million rows); pass 3 confirms the few candidate
    hashes against the actual keys, so a hash collision is never reported as a duplicate.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        candidates = _repeated_hashes(shards, work_dir)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    if not candidates:
        return {}
    counts: dict[bytes, int] = {}
    for shard in shards:
        with shard.keys_path.open("rb") as f:
            for line in f:
                key = line.rstrip(b"\n")
                if hash(key) in candidates:
                    counts[key] = counts.get(key, 0) + 1
    return {k: c for k, c in counts.items() if c > 1}


def _repeated_hashes(shards: Sequence[Shard], work_dir: Path) -> set[int]:
    buckets = [(work_dir / f"b{b:03d}.bin").open("wb", buffering=64 * 1024) for b in range(_BUCKETS)]
    mask = _BUCKETS - 1
    try:
        for shard in shards:
            with shard.keys_path.open("rb") as f:
                while chunk := f.readlines(_IO_BUFFER):
                    parts: list[array[int]] = [array("q") for _ in range(_BUCKETS)]
                    appends = [p.append for p in parts]
                    for line in chunk:
                        h = hash(line.rstrip(b"\n"))
                        appends[h & mask](h)
                    for part, out in zip(parts, buckets, strict=True):
                        part.tofile(out)
    finally:
        for out in buckets:
            out.close()
    candidates: set[int] = set()
    for b in range(_BUCKETS):
        values = array("q", (work_dir / f"b{b:03d}.bin").read_bytes())
        if len(set(values)) != len(values):
            seen: set[int] = set()
            for h in values:
                if h in seen:
                    candidates.add(h)
                seen.add(h)
    return candidates


def _drop_later_duplicates(shards: list[Shard], dups: dict[bytes, int]) -> list[Shard]:
    """Rewrite the shards that hold repeated keys, keeping each key's first occurrence (``skip`` mode)."""
    seen: set[bytes] = set()
    kept: list[Shard] = []
    for shard in shards:
        tmp_data, tmp_keys = shard.path.with_suffix(".tmp"), shard.keys_path.with_suffix(".keys.tmp")
        tmp_fingerprints = shard.fingerprints_path.with_suffix(".fingerprints.tmp")
        digest, count, size = hashlib.sha256(), 0, 0
        with (
            shard.path.open("rb") as data_in,
            shard.keys_path.open("rb") as keys_in,
            shard.fingerprints_path.open("rb") as fingerprints_in,
            tmp_data.open("wb") as data_out,
            tmp_keys.open("wb") as keys_out,
            tmp_fingerprints.open("wb") as fingerprints_out,
        ):
            for line, key_line, fingerprint_line in zip(data_in, keys_in, fingerprints_in, strict=True):
                key = key_line.rstrip(b"\n")
                if key in dups:
                    if key in seen:
                        continue
                    seen.add(key)
                data_out.write(line)
                keys_out.write(key_line)
                fingerprints_out.write(fingerprint_line)
                digest.update(line)
                count, size = count + 1, size + len(line)
        tmp_data.replace(shard.path)
        tmp_keys.replace(shard.keys_path)
        tmp_fingerprints.replace(shard.fingerprints_path)
        shard.request_count, shard.bytes, shard.sha256 = count, size, digest.hexdigest()
        if count:
            kept.append(shard)
        else:
            shard.path.unlink()
            shard.keys_path.unlink()
            shard.fingerprints_path.unlink()
    # Renumber so indexes stay 0..n-1 (files keep their names; the manifest records the paths).
    for new_index, shard in enumerate(kept):
        shard.index = new_index
    return kept


@dataclass
class ShardPlan:
    """What was built: the shards, counts and the fingerprint; no row data."""

    shards: list[Shard]
    request_count: int
    rows_read: int
    skipped_count: int
    fingerprint: str
    invalid: InvalidRows = field(repr=False)
    #: rows left out because the destination already holds their answer (incremental runs)
    reused_count: int = 0
    #: the token sums of those rows' stored answers (``TOKEN_FIELDS`` names): what re-sending would cost
    reused_tokens: dict[str, int] = field(default_factory=dict)


def fingerprint_of(shards: Iterable[Shard], task: str, model: str) -> str:
    digest = hashlib.sha256(f"{task}\n{model}\n".encode())
    for shard in shards:
        digest.update(f"{shard.request_count}:{shard.sha256}\n".encode())
    return digest.hexdigest()


@paused_gc()
def build_shards(
    batches: Iterable[Sequence[tuple[Any, ...]]],
    make_encoder: Callable[[], RequestEncoder],
    staging: Staging,
    limits: ShardLimits,
    invalid: InvalidRows,
    *,
    task: str,
    model: str,
    reuse: ReuseCheck | None = None,
    progress_every_seconds: float = 10.0,
) -> ShardPlan:
    """Stream ``batches`` of rows through the encoder into shards; validate everything before returning.

    Runs with the cyclic GC paused (``streaming.paused_gc``).

    :param make_encoder: ``() -> RequestEncoder``, called after the first batch (when the source's columns are
        known), so an unknown column or placeholder fails before more rows are read.
    :param reuse: the incremental check (``inputs.incremental``): drops each batch's rows already answered
        in the destination for the same fingerprint, before they are written.
    :raises GeminiBatchInputError: invalid rows with ``on_invalid_row="fail"``, or too many shards.
    """
    writer = ShardWriter(staging, limits)
    encoder: RequestEncoder | None = None
    rows_read = 0
    started = last_log = time.monotonic()
    for batch in batches:
        if encoder is None:
            encoder = make_encoder()
        rows_read += len(batch)
        lines, keys, fingerprints = encoder.encode_with_fingerprints(batch)
        if reuse is not None:
            lines, keys, fingerprints = reuse.filter(lines, keys, fingerprints)
        writer.write(lines, keys, fingerprints)
        now = time.monotonic()
        if now - last_log >= progress_every_seconds:
            last_log = now
            log.info(
                "Read %s rows (%s rows/s), %d shard(s) so far, %d invalid",
                f"{rows_read:,}",
                f"{rows_read / max(now - started, 1e-9):,.0f}",
                len(writer.shards),
                invalid.total,
            )
    shards = writer.close()
    dups = {}
    if encoder is not None and not encoder.monotonic:
        dups = find_duplicate_keys(shards, staging.local_dir / f"dedupe-{time.monotonic_ns()}")
    if dups:
        for key, count in dups.items():
            for _ in range(count - 1):
                invalid.add("duplicate_key", orjson.loads(key))
        if invalid.skip:
            shards = _drop_later_duplicates(shards, dups)
    invalid.raise_if_any()
    elapsed = max(time.monotonic() - started, 1e-9)
    request_count = sum(s.request_count for s in shards)
    log.info(
        "Read %s rows in %.1fs (%s rows/s): %s requests in %d shard(s), %d skipped",
        f"{rows_read:,}",
        elapsed,
        f"{rows_read / elapsed:,.0f}",
        f"{request_count:,}",
        len(shards),
        invalid.total,
    )
    return ShardPlan(
        shards=shards,
        request_count=request_count,
        rows_read=rows_read,
        skipped_count=invalid.total,
        fingerprint=fingerprint_of(shards, task, model),
        invalid=invalid,
        reused_count=reuse.reused if reuse is not None else 0,
        reused_tokens=dict(reuse.tokens) if reuse is not None else {},
    )
