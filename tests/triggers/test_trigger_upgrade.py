"""A trigger row written by another provider version still inflates: unknown kwargs are logged once, ignored.

The row goes through the triggerer's own path: ``Trigger.from_object`` encrypts the kwargs as the task's defer
does, the triggerer decrypts and decodes them and calls the class from its classpath with them.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from airflow_gemini_batch.triggers.job import GeminiBatchJobTrigger

if TYPE_CHECKING:
    from collections.abc import Callable

    import pytest


def _inflate_as_the_triggerer_does(row: Any) -> Any:
    from airflow._shared.module_loading import import_string
    from airflow.models.trigger import Trigger
    from airflow.serialization.decoders import smart_decode_trigger_kwargs

    kwargs = Trigger._decrypt_kwargs(row.encrypted_kwargs)
    return import_string(row.classpath)(**{k: smart_decode_trigger_kwargs(v) for k, v in kwargs.items()})


def test_a_trigger_row_with_an_unknown_kwarg_inflates_and_runs(
    emulator: Any,
    make_jobs: Callable[..., list[str]],
    gemini_conn: str,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from airflow.models.trigger import Trigger

    names = make_jobs(["upgrade"])
    written = GeminiBatchJobTrigger(
        job_names=names, deadline=time.time() + 60, gemini_conn_id=gemini_conn, poll_interval=0.05
    )
    row = Trigger.from_object(written)
    row.kwargs = {**row.kwargs, "added_in_a_later_version": {"x": 1}}  # what a newer provider wrote

    capfd.readouterr()
    trigger = _inflate_as_the_triggerer_does(row)
    assert isinstance(trigger, GeminiBatchJobTrigger)
    assert trigger.serialize() == written.serialize()  # the unknown kwarg is not carried on
    logged = capfd.readouterr().out  # the trigger logs through Airflow's structlog, to the process output
    assert logged.count("does not know: added_in_a_later_version") == 1

    async def first_event() -> dict[str, Any]:
        run = trigger.run()
        try:
            return (await asyncio.wait_for(anext(run), 60)).payload
        finally:
            await run.aclose()

    event = asyncio.run(first_event())
    assert event["status"] == "success", event
