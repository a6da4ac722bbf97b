"""Idempotent submission against the emulator, through the real SDK: at most one job per shard."""

from __future__ import annotations

import json

import pytest

from airflow_gemini_batch.exceptions import GeminiBatchChangedInputError, GeminiBatchSubmitError
from airflow_gemini_batch.hooks.gemini import GeminiBatchHook
from airflow_gemini_batch.submit.ledger import RunIdentity, SubmissionLedger, display_name
from airflow_gemini_batch.submit.submission import CreateRetry, create_once, submit_shard, upload_with_retry
from tests.task_state import DictStateStore

FAST = CreateRetry(attempts=4, base_seconds=0.01)
IDENTITY = RunIdentity("dag", "submit", "manual__2026-01-01", -1)


@pytest.fixture
def hook(gemini_conn):
    return GeminiBatchHook(gemini_conn)


@pytest.fixture
def shard_file(tmp_path):
    path = tmp_path / "shard.jsonl"
    path.write_text(
        "".join(
            json.dumps({"key": str(i), "request": {"contents": [{"parts": [{"text": f"p{i}"}]}]}}) + "\n"
            for i in range(5)
        )
    )
    return path


def _create(hook, file_name, name="agb-test-00000", retry=FAST):
    return create_once(
        hook,
        display_name=name,
        model="gemini-2.5-flash",
        embeddings=False,
        file_name=file_name,
        inline_requests=None,
        retry=retry,
    )


def test_429_then_success_creates_exactly_one_job(hook, emulator, shard_file):
    file_name = hook.upload_jsonl(shard_file, display_name="in")
    emulator.control.inject_fault("batches.create", status=429, count=2)
    job = _create(hook, file_name)
    jobs = emulator.control.jobs()
    assert [j["name"] for j in jobs] == [job.name]
    assert jobs[0]["request_count"] == 5
    assert emulator.control.calls()["batches.create"] == 3
    assert emulator.control.calls()["batches.list"] == 0  # a 429 is a certain rejection: no lookup needed


def test_429_exhausted_is_a_clear_error(hook, emulator, shard_file):
    file_name = hook.upload_jsonl(shard_file, display_name="in")
    emulator.control.inject_fault("batches.create", status=429, count=10)
    with pytest.raises(GeminiBatchSubmitError) as e:
        _create(hook, file_name, retry=CreateRetry(attempts=3, base_seconds=0.01))
    msg = str(e.value)
    assert "failed 3 times" in msg and "429" in msg and "RESOURCE_EXHAUSTED" in msg
    assert "a retry of the task submits only the rest" in msg
    assert emulator.control.jobs() == []


def test_5xx_is_ambiguous_and_looked_up_before_retry(hook, emulator, shard_file):
    file_name = hook.upload_jsonl(shard_file, display_name="in")
    emulator.control.inject_fault("batches.create", status=503, count=1)
    job = _create(hook, file_name)
    assert [j["name"] for j in emulator.control.jobs()] == [job.name]
    assert emulator.control.calls()["batches.list"] >= 1


def test_lost_create_reply_and_a_lagging_list_still_make_one_job(hook, emulator, shard_file):
    """The service made the job but the reply was a 503, and ``batches.list`` shows new jobs only after a lag:
    the lookup waits the settle time (five backoff bases) before it trusts a miss, so it finds the job."""
    file_name = hook.upload_jsonl(shard_file, display_name="in")
    emulator.control.configure(list_lag_seconds=0.3)
    emulator.control.inject_fault("batches.create", status=503, after=True)
    job = _create(hook, file_name, retry=CreateRetry(attempts=3, base_seconds=0.1))  # settles 0.5 s
    assert [j["name"] for j in emulator.control.jobs()] == [job.name]
    assert emulator.control.calls()["batches.create"] == 1


def test_a_list_lagging_longer_than_the_settle_time_is_the_limit(hook, emulator, shard_file):
    """What the settle time guards against, shown by setting it below the lag: the lookup misses the job and
    a second one is made. (Documented limit: a list lagging longer than the settle time.)"""
    file_name = hook.upload_jsonl(shard_file, display_name="in")
    emulator.control.configure(list_lag_seconds=5.0)  # far longer than the lookup can take, however slow
    emulator.control.inject_fault("batches.create", status=503, after=True)
    _create(hook, file_name, retry=CreateRetry(attempts=3, base_seconds=0.01))  # settles 0.05 s
    assert len(emulator.control.jobs()) == 2


def test_4xx_fails_at_once(hook, emulator, shard_file):
    file_name = hook.upload_jsonl(shard_file, display_name="in")
    emulator.control.inject_fault("batches.create", status=400, count=1)
    with pytest.raises(GeminiBatchSubmitError, match="400"):
        _create(hook, file_name)
    assert emulator.control.calls()["batches.create"] == 1


def _submit(hook, ledger, shard_file, index=0, fingerprint="a" * 64, generation=0, on_created=None):
    return submit_shard(
        hook,
        ledger,
        index=index,
        display_name=display_name(IDENTITY.hash, fingerprint, index, generation),
        fingerprint=fingerprint,
        generation=generation,
        model="gemini-2.5-flash",
        embeddings=False,
        shard_path=shard_file,
        inline_requests=None,
        retry=FAST,
        on_created=on_created,
    )


def test_reattach_to_recorded_job(hook, emulator, shard_file):
    store = DictStateStore()
    first = _submit(hook, SubmissionLedger(store), shard_file)
    assert first.created_now
    again = _submit(hook, SubmissionLedger(store), shard_file)
    assert (again.job_name, again.created_now) == (first.job_name, False)
    assert len(emulator.control.jobs()) == 1
    assert emulator.control.calls()["files.upload_start"] == 1


def test_orphan_found_when_name_was_not_recorded(hook, emulator, shard_file, monkeypatch):
    """The worker dies between create and recording the job name: the next try finds the job by name."""
    store = DictStateStore()
    ledger = SubmissionLedger(store)

    def crash(*args, **kwargs):
        raise SystemExit("worker killed right after create")

    monkeypatch.setattr(ledger, "record_job", crash)
    created: list[str] = []
    with pytest.raises(SystemExit):
        _submit(hook, ledger, shard_file, on_created=created.append)
    assert len(emulator.control.jobs()) == 1

    rerun = _submit(hook, SubmissionLedger(store), shard_file)
    assert rerun.job_name == created[0] and not rerun.created_now
    assert len(emulator.control.jobs()) == 1
    assert json.loads(store.data["gemini_batch_submit.shard.0"])["job_name"] == created[0]


def test_upload_reused_when_create_failed(hook, emulator, shard_file):
    store = DictStateStore()
    emulator.control.inject_fault("batches.create", status=400, count=1)
    with pytest.raises(GeminiBatchSubmitError):
        _submit(hook, SubmissionLedger(store), shard_file)
    result = _submit(hook, SubmissionLedger(store), shard_file)
    assert result.created_now and len(emulator.control.jobs()) == 1
    assert emulator.control.calls()["files.upload_start"] == 1


def test_no_state_store_falls_back_to_lookup(hook, emulator, shard_file):
    first = _submit(hook, SubmissionLedger(None), shard_file)
    again = _submit(hook, SubmissionLedger(None), shard_file)
    assert again.job_name == first.job_name and not again.created_now
    assert len(emulator.control.jobs()) == 1


def test_changed_input_policy(hook, emulator, shard_file):
    store = DictStateStore()
    ledger = SubmissionLedger(store)
    begin = dict(identity=IDENTITY, shard_count=1, force_resubmit=False)
    assert ledger.begin(fingerprint="a" * 64, on_changed_input="fail", **begin) == 0
    job = _submit(hook, ledger, shard_file)

    with pytest.raises(GeminiBatchChangedInputError) as e:
        ledger.begin(fingerprint="b" * 64, on_changed_input="fail", **begin)
    assert job.job_name in str(e.value) and "on_changed_input='resubmit'" in str(e.value)

    assert ledger.begin(fingerprint="b" * 64, on_changed_input="resubmit", **begin) == 0
    new = _submit(hook, ledger, shard_file, fingerprint="b" * 64)
    assert new.created_now and new.job_name != job.job_name
    assert len(emulator.control.jobs()) == 2

    forced = ledger.begin(
        fingerprint="b" * 64, on_changed_input="fail", identity=IDENTITY, shard_count=1, force_resubmit=True
    )
    assert forced == 1
    third = _submit(hook, ledger, shard_file, fingerprint="b" * 64, generation=forced)
    assert third.created_now and len(emulator.control.jobs()) == 3


def test_upload_retries_run_out_into_a_clear_error(hook, emulator, shard_file):
    """Every chunk fails: the upload is retried ``attempts`` times by the one retry policy, then the error says
    how often and that nothing was created."""
    emulator.control.inject_fault("files.upload_chunk", status=503, count=10)
    with pytest.raises(GeminiBatchSubmitError) as e:
        upload_with_retry(hook, shard_file, "agb-test-00000", CreateRetry(attempts=3, base_seconds=0.01))
    assert "after 3 attempts" in str(e.value) and "Nothing was created" in str(e.value)
    assert emulator.control.calls()["files.upload_chunk"] == 3
    assert emulator.control.jobs() == []


def test_an_upload_rejected_for_good_is_not_retried(hook, emulator, shard_file):
    emulator.control.inject_fault("files.upload_chunk", status=400, count=10)
    with pytest.raises(GeminiBatchSubmitError) as e:
        upload_with_retry(hook, shard_file, "agb-test-00000", FAST)
    assert "attempts" not in str(e.value) and "400" in str(e.value)
    assert emulator.control.calls()["files.upload_chunk"] == 1


def _recorded(store, index=0):
    return json.loads(store.data[f"gemini_batch_submit.shard.{index}"])


@pytest.mark.parametrize("final_state", ["FAILED", "EXPIRED", "CANCELLED"])
def test_a_job_that_ended_badly_is_followed_by_the_shards_next_generation(
    hook, emulator, shard_file, final_state
):
    store = DictStateStore()
    if final_state == "CANCELLED":
        emulator.control.hold_state("PENDING", count=1)
    else:
        emulator.control.set_job_behaviour(final_state=final_state, count=1)
    first = _submit(hook, SubmissionLedger(store), shard_file)
    if final_state == "CANCELLED":
        hook.cancel_job(first.job_name)
    again = _submit(hook, SubmissionLedger(store), shard_file)
    assert again.created_now and again.job_name != first.job_name
    assert (again.recovery, again.previous_jobs) == (1, [first.job_name])
    assert again.display_name == first.display_name.replace("-00000", "-r1-00000")
    assert _recorded(store)["job_name"] == again.job_name and _recorded(store)["recovery"] == 1
    assert emulator.control.calls()["files.upload_start"] == 2  # uploaded again: the first file may be gone
    third = _submit(hook, SubmissionLedger(store), shard_file)
    assert (third.job_name, third.created_now) == (again.job_name, False)
    assert len(emulator.control.jobs()) == 2


def test_a_crash_during_the_next_generations_create_finds_it_by_its_own_name(
    hook, emulator, shard_file, monkeypatch
):
    store = DictStateStore()
    emulator.control.set_job_behaviour(final_state="EXPIRED", count=1)
    first = _submit(hook, SubmissionLedger(store), shard_file)
    ledger = SubmissionLedger(store)
    real = ledger.record_job

    def crash(index, rec, job_name):
        if rec.get("recovery"):
            raise SystemExit("worker killed right after the next generation's create")
        real(index, rec, job_name)

    monkeypatch.setattr(ledger, "record_job", crash)
    with pytest.raises(SystemExit):
        _submit(hook, ledger, shard_file)
    rerun = _submit(hook, SubmissionLedger(store), shard_file)
    assert not rerun.created_now and rerun.previous_jobs == [first.job_name] and rerun.recovery == 1
    assert len(emulator.control.jobs()) == 2 and emulator.control.calls()["batches.create"] == 2


def test_without_a_store_the_newest_generation_is_found(hook, emulator, shard_file):
    emulator.control.set_job_behaviour(final_state="EXPIRED", count=1)
    first = _submit(hook, SubmissionLedger(None), shard_file)
    again = _submit(hook, SubmissionLedger(None), shard_file)
    assert again.created_now and again.recovery == 1
    third = _submit(hook, SubmissionLedger(None), shard_file)
    assert (third.job_name, third.created_now, third.recovery) == (again.job_name, False, 1)
    assert len(emulator.control.jobs()) == 2 and first.job_name != again.job_name
