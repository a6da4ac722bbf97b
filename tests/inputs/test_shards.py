"""Shards: exact boundaries under every limit, max_jobs refusal, duplicate keys, fingerprint."""

from __future__ import annotations

import orjson
import pytest

from airflow_gemini_batch.exceptions import GeminiBatchInputError
from airflow_gemini_batch.inputs.requests import RequestEncoder, RequestSpec
from airflow_gemini_batch.inputs.shards import ShardLimits, build_shards
from airflow_gemini_batch.inputs.validation import InvalidRows
from airflow_gemini_batch.submit.staging import Staging

COLUMNS = ["id", "prompt"]


def _batches(n: int, batch: int = 1000, start: int = 0, key=lambda i: i):
    for s in range(start, start + n, batch):
        yield [(key(i), f"prompt number {i} " + "x" * (i % 37)) for i in range(s, min(s + batch, start + n))]


def _build(tmp_path, batches, limits=None, skip=False, model="m", spec=None):
    limits = limits or ShardLimits()
    staging = Staging(str(tmp_path / "staging"), "test")
    staging.clear_stale()
    spec = spec or RequestSpec()
    with staging.local_skipped_path.open("wb") as skipped:
        invalid = InvalidRows(skip, skipped, spec.max_request_bytes)
        plan = build_shards(
            batches,
            lambda: RequestEncoder(spec, COLUMNS, invalid),
            staging,
            limits,
            invalid,
            task="generate",
            model=model,
        )
    return plan, staging


def _shard_keys(plan):
    out = []
    for shard in plan.shards:
        keys = [orjson.loads(k) for k in shard.keys_path.read_bytes().splitlines()]
        lines = [orjson.loads(x)["key"] for x in shard.path.read_bytes().splitlines()]
        assert keys == lines, "key list and shard must be in the same order"
        assert len(keys) == shard.request_count
        assert shard.path.stat().st_size == shard.bytes
        out.append(keys)
    return out


@pytest.mark.parametrize("batch", [1, 7, 1000, 3001])
def test_count_boundaries_exact(tmp_path, batch):
    plan, _ = _build(tmp_path, _batches(10_000, batch), ShardLimits(max_requests=3000))
    per_shard = _shard_keys(plan)
    assert [len(k) for k in per_shard] == [3000, 3000, 3000, 1000]
    flat = [k for keys in per_shard for k in keys]
    assert flat == [str(i) for i in range(10_000)]  # nothing lost, doubled or reordered


def test_byte_and_token_boundaries(tmp_path):
    plan, _ = _build(tmp_path, _batches(5000, 999), ShardLimits(max_bytes=50_000))
    assert all(s.bytes <= 50_000 for s in plan.shards)
    # every shard but the last is full: the next line would not have fitted
    assert all(s.bytes > 50_000 - 200 for s in plan.shards[:-1])
    assert [k for keys in _shard_keys(plan) for k in keys] == [str(i) for i in range(5000)]

    plan_t, _ = _build(tmp_path / "t", _batches(5000, 999), ShardLimits(max_tokens=10_000))
    assert all(s.estimated_tokens <= 10_000 for s in plan_t.shards)
    assert len(plan_t.shards) > 1
    assert sum(s.request_count for s in plan_t.shards) == 5000


def test_max_jobs_refused_before_upload(tmp_path):
    with pytest.raises(GeminiBatchInputError) as e:
        _build(tmp_path, _batches(1000), ShardLimits(max_requests=100, max_jobs=5))
    assert "more than max_jobs=5" in str(e.value)
    assert "Nothing was uploaded" in str(e.value)


def test_duplicate_keys_fail(tmp_path):
    # 3 keys repeated (one of them three times), spread over different shards and batches.
    batches = list(
        _batches(5000, 700, key=lambda i: i if i not in (4000, 4500, 4999) else (7 if i < 4999 else 8))
    )
    batches[-1].append((7, "once more"))
    with pytest.raises(GeminiBatchInputError) as e:
        _build(tmp_path, iter(batches), ShardLimits(max_requests=1500))
    msg = str(e.value)
    assert "4 row(s): key appears more than once" in msg
    assert "first keys: " in msg and '"7"' in msg and '"8"' in msg
    assert "make key_column unique" in msg


def test_duplicate_keys_skip_keeps_first(tmp_path):
    batches = [[(1, "a"), (2, "b"), (1, "again")], [(3, "c"), (2, "again")], [(1, "thrice")]]
    plan, staging = _build(tmp_path, iter(batches), ShardLimits(max_requests=2), skip=True)
    per_shard = _shard_keys(plan)
    assert [k for keys in per_shard for k in keys] == ["1", "2", "3"]
    texts = [
        orjson.loads(x)["request"]["contents"][0]["parts"][0]["text"]
        for s in plan.shards
        for x in s.path.read_bytes().splitlines()
    ]
    assert texts == ["a", "b", "c"]
    assert plan.skipped_count == 3 and plan.request_count == 3
    assert [s.index for s in plan.shards] == list(range(len(plan.shards)))
    skipped = [orjson.loads(x) for x in staging.local_skipped_path.read_bytes().splitlines()]
    assert sorted((r["key"], r["reason"]) for r in skipped) == [
        ("1", "duplicate_key"),
        ("1", "duplicate_key"),
        ("2", "duplicate_key"),
    ]


def test_fingerprint_stable_and_sensitive(tmp_path):
    a, _ = _build(tmp_path / "a", _batches(2000, 300))
    b, _ = _build(tmp_path / "b", _batches(2000, 1000))  # batching does not matter
    c, _ = _build(tmp_path / "c", _batches(2000, 300, start=1))  # different rows
    d, _ = _build(tmp_path / "d", _batches(2000, 300), model="other-model")  # different model
    assert a.fingerprint == b.fingerprint
    assert len({a.fingerprint, c.fingerprint, d.fingerprint}) == 3


def test_empty_input(tmp_path):
    plan, _ = _build(tmp_path, iter([]))
    assert plan.shards == [] and plan.request_count == 0
