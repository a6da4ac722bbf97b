"""CPU per poll round over 1 000 pending jobs: our trigger's polling path vs a new client per poll per job.

(a) ``GeminiBatchJobTrigger.poll_round`` + ``evaluate``: one async client for every job, concurrent reads.
(b) the Google provider's pattern: a new ``genai.Client`` for every read of every job (then closed).
    Its cost is linear in the job count (no shared state between reads) and high (each ``genai.Client`` loads
    the CA bundle three times, ~60 ms here), so (b) reads a sample of the jobs per round and is scaled to the
    full count; (a) always reads every job.

Both run on one event loop with the same concurrency bound. The emulator runs in its own process (its CLI), so
``time.process_time()`` here counts only the client side. Goal: (a) costs at most half of (b) per round.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from airflow_gemini_batch.emulator.process import start_emulator_process

API_KEY = "bench-key-not-a-secret"
CONCURRENCY = 32
GOAL = 0.5


async def create_jobs(base_url: str, n: int) -> list[str]:
    from google import genai
    from google.genai import types

    client = genai.Client(api_key=API_KEY, http_options=types.HttpOptions(base_url=base_url)).aio
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> str:
        async with sem:
            job = await client.batches.create(
                model="models/gemini-2.5-flash",
                src=[
                    {
                        "contents": [{"role": "user", "parts": [{"text": f"q{i}"}]}],
                        "metadata": {"key": str(i)},
                    }
                ],
                config=types.CreateBatchJobConfig(display_name=f"bench-{i}"),
            )
            return job.name or ""

    try:
        return list(await asyncio.gather(*(one(i) for i in range(n))))
    finally:
        await client.aclose()


async def ours(names: list[str], rounds: int) -> list[float]:
    from airflow_gemini_batch.triggers.job import GeminiBatchJobTrigger
    from airflow_gemini_batch.wait.verdict import evaluate

    trigger = GeminiBatchJobTrigger(job_names=names, deadline=time.time() + 3600, max_concurrency=CONCURRENCY)
    client = await trigger._hook().aget_client()
    sem = asyncio.Semaphore(CONCURRENCY)
    per_round = []
    try:
        await trigger.poll_round(client, sem)  # warm-up: connection pool, imports
        for _ in range(rounds):
            start = time.process_time()
            transient, error = await trigger.poll_round(client, sem)
            statuses = [trigger._statuses[n] for n in names]
            decision = evaluate(statuses, trigger.policy, now=time.time(), deadline=trigger.deadline)
            per_round.append(time.process_time() - start)
            assert not transient and error is None and not decision.done, (transient, error)
    finally:
        await client.aclose()
    return per_round


async def baseline(base_url: str, names: list[str], rounds: int, sample: int) -> list[float]:
    """CPU per round for *all* ``names``, measured on the first ``sample`` of them and scaled linearly."""
    from google import genai
    from google.genai import types

    sem = asyncio.Semaphore(CONCURRENCY)

    async def read(name: str) -> Any:
        async with sem:
            client = genai.Client(api_key=API_KEY, http_options=types.HttpOptions(base_url=base_url)).aio
            try:
                return await client.batches.get(name=name)
            finally:
                await client.aclose()

    await asyncio.gather(*(read(n) for n in names[:CONCURRENCY]))  # warm-up
    measured = names[:sample]
    per_round = []
    for _ in range(rounds):
        start = time.process_time()
        jobs = await asyncio.gather(*(read(n) for n in measured))
        per_round.append((time.process_time() - start) * len(names) / len(measured))
        assert all(j.name in measured for j in jobs)
    return per_round


def main(jobs: int = 1000, rounds: int = 3, baseline_sample: int = 100) -> dict[str, float]:
    log = Path(tempfile.mkdtemp(prefix="bench-trigger-")) / "emulator.log"
    proc, base_url = start_emulator_process(log)
    try:
        from airflow_gemini_batch.emulator.control import EmulatorControl

        EmulatorControl(base_url).set_job_behaviour(stay_pending=True)
        conn = {"conn_type": "gemini_batch", "host": base_url, "password": API_KEY}
        os.environ["AIRFLOW_CONN_GEMINI_BATCH_DEFAULT"] = json.dumps(conn)
        names = asyncio.run(create_jobs(base_url, jobs))
        print(f"  {len(names)} pending jobs at {base_url}; {rounds} round(s) each", flush=True)
        a = asyncio.run(ours(names, rounds))
        b = asyncio.run(baseline(base_url, names, rounds, min(baseline_sample, len(names))))
    except Exception:
        print(f"  emulator exit code {proc.poll()}; its log: {log}", flush=True)
        raise
    finally:
        proc.terminate()
        proc.wait(10)
    a_mean, b_mean = sum(a) / len(a), sum(b) / len(b)
    ratio = a_mean / b_mean
    print(f"  (a) trigger poll_round, one client      {a_mean:7.3f} s CPU/round  {[round(x, 3) for x in a]}")
    print(
        f"  (b) new genai.Client per poll per job   {b_mean:7.3f} s CPU/round  {[round(x, 3) for x in b]}"
        f"  (measured on {min(baseline_sample, jobs)} jobs/round, scaled to {jobs})"
    )
    verdict = "OK" if ratio <= GOAL else "ABOVE GOAL"
    print(f"  ratio (a)/(b) = {ratio:.2f}x   (goal <= {GOAL}x: {verdict})")
    return {"ours_cpu_per_round": a_mean, "baseline_cpu_per_round": b_mean, "ratio": ratio}


if __name__ == "__main__":
    main()
