"""KeyReconciler: the streaming merge, its on-disk fallback, and the memory bound, on real key-list files."""

from __future__ import annotations

import random
import tracemalloc
from pathlib import Path

import orjson

from airflow_gemini_batch.results.reconcile import DUPLICATE, MATCHED, UNKNOWN, KeyReconciler


def write_keys(path: Path, keys: list) -> str:
    path.write_bytes(b"".join(orjson.dumps(k) + b"\n" for k in keys))
    return str(path)


def test_in_order_results_never_touch_the_index(tmp_path):
    keys = KeyReconciler(
        write_keys(tmp_path / "k.jsonl", [f"k{i}" for i in range(1000)]), work_dir=str(tmp_path)
    )
    assert all(keys.resolve(f"k{i}") == (MATCHED, f"k{i}") for i in range(1000))
    assert keys.lookups == 0 and list(keys.iter_unmatched()) == [] and keys.key_count == 1000


def test_missing_unknown_duplicate_and_reordered(tmp_path):
    keys = KeyReconciler(write_keys(tmp_path / "k.jsonl", ["a", "b", "c", "d", "e"]), work_dir=str(tmp_path))
    assert keys.resolve("b") == (MATCHED, "b")  # "a" skipped over: dropped line
    assert keys.resolve("c") == (MATCHED, "c")
    assert keys.resolve("c") == (DUPLICATE, None)
    assert keys.resolve("zzz") == (UNKNOWN, None)
    assert keys.resolve("e") == (MATCHED, "e")
    assert keys.resolve("d") == (MATCHED, "d")  # backwards: found through the index
    assert list(keys.iter_unmatched()) == ["a"]
    assert not list(tmp_path.glob("gemini-keys-*")), "the index file is removed on close"


def test_int_keys_match_their_string_echo_and_stay_ints(tmp_path):
    keys = KeyReconciler(write_keys(tmp_path / "k.jsonl", [1, 2, 3]), work_dir=str(tmp_path))
    assert keys.resolve("1") == (MATCHED, 1)
    assert keys.resolve(3) == (MATCHED, 3)
    assert list(keys.iter_unmatched()) == [2]


def test_take_next_for_keyless_inline_items(tmp_path):
    keys = KeyReconciler(write_keys(tmp_path / "k.jsonl", ["x", "y"]), work_dir=str(tmp_path))
    assert keys.take_next() == (MATCHED, "x")
    assert keys.take_next() == (MATCHED, "y")
    assert keys.take_next() == (UNKNOWN, None)


def test_shuffled_results_over_many_keys_stay_memory_bounded(tmp_path):
    n = 100_000
    path = write_keys(tmp_path / "k.jsonl", [f"key-{i:08d}" for i in range(n)])
    order = list(range(n))
    random.Random(7).shuffle(order)
    wanted = [f"key-{i:08d}" for i in order[: n - 3]]
    del order
    tracemalloc.start()
    keys = KeyReconciler(path, work_dir=str(tmp_path))
    assert all(keys.resolve(k)[0] == MATCHED for k in wanted)
    unmatched = list(keys.iter_unmatched())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(unmatched) == 3
    # A dict of 100 k keys alone would take ~12 MB; the merge + on-disk index stays a few MB.
    assert peak < 8 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"


def test_a_key_list_on_gcs(gcs_conn, tmp_path):
    """A key list on ``gs://`` (the Google provider's gcsfs, against the GCS emulator): read in blocks through
    one buffer (tests/test_storage.py shows its memory stays flat), matched in order, the rest unmatched."""
    import uuid

    from airflow_gemini_batch.storage import copy_file
    from tests.gcp_emulators import BUCKET

    n = 200_000
    local = Path(write_keys(tmp_path / "k.jsonl", [f"key-{i:08d}" for i in range(n)]))
    uri = f"gs://{gcs_conn}@{BUCKET}/reconcile-{uuid.uuid4().hex[:8]}/keys-00000.jsonl"
    copy_file(local, uri)
    local.unlink()

    keys = KeyReconciler(uri, work_dir=str(tmp_path))
    assert all(keys.resolve(f"key-{i:08d}") == (MATCHED, f"key-{i:08d}") for i in range(0, n - 2))
    assert keys.resolve("key-x") == (UNKNOWN, None)
    assert list(keys.iter_unmatched()) == [f"key-{n - 2:08d}", f"key-{n - 1:08d}"]
    assert keys.lookups == 1 and keys.key_count == n  # one lookup: the unknown key
    keys.close()


def test_each_match_tells_the_fingerprint_its_key_was_sent_with(tmp_path, monkeypatch):
    """In order, out of order (the index), by runs, across key blocks, blank lines, and for the unmatched."""
    from airflow_gemini_batch.results import reconcile

    monkeypatch.setattr(reconcile, "KEY_BLOCK_BYTES", 64)  # many blocks
    keys = [f"k{i}" for i in range(200)]
    fingerprints = [f"{i:064x}" for i in range(200)]
    path = tmp_path / "keys.jsonl"
    path.write_bytes(b"".join(orjson.dumps(k) + b"\n" for k in keys))
    fps = tmp_path / "fingerprints.txt"
    fps.write_text("".join(f + "\n" for f in fingerprints))
    with KeyReconciler(str(path), fingerprints_path=str(fps)) as rec:
        assert rec.match_in_order(keys[:50]) == 50 and rec.run_fingerprints == fingerprints[:50]
        assert rec.resolve("k50") == (MATCHED, "k50") and rec.fingerprint == fingerprints[50]
        assert rec.resolve("k150") == (MATCHED, "k150") and rec.fingerprint == fingerprints[150]  # a jump
        assert rec.resolve("k60") == (MATCHED, "k60") and rec.fingerprint == fingerprints[60]  # the index
        unmatched = dict(rec.iter_unmatched_entries())
    assert len(unmatched) == 200 - 53 and all(unmatched[k] == fingerprints[int(k[1:])] for k in unmatched)
    # Without a fingerprints file (a manifest from before them): None, and nothing else changes.
    with KeyReconciler(str(path)) as rec:
        assert rec.match_in_order(keys[:3]) == 3 and rec.run_fingerprints is None
        assert rec.resolve("k9") == (MATCHED, "k9") and rec.fingerprint is None
