"""Fixtures of the reliability suite; the builders they share with the tests live in ``helpers.py``."""

from __future__ import annotations

import datetime
import logging
from typing import TYPE_CHECKING, Any

import pytest

from tests.reliability.helpers import LogCapture

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


@pytest.fixture
def all_logs(capfd: pytest.CaptureFixture[str]) -> Iterator[LogCapture]:
    handler = LogCapture(capfd)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


@pytest.fixture
def run_dag(register_dag: Callable[[Any], Any]) -> Callable[..., Any]:
    """``run_dag(dag, logical_date=None)``: register the in-test DAG and ``dag.test()`` it; returns the run."""

    def _run(dag: Any, logical_date: datetime.datetime | None = None) -> Any:
        register_dag(dag)
        if logical_date is None:
            return dag.test()
        return dag.test(logical_date=logical_date, run_after=logical_date)

    return _run


@pytest.fixture
def tables(sqlite_warehouse: Any, request: pytest.FixtureRequest) -> tuple[Any, str, str]:
    """A SQLite source table of ``N`` rows (the test module's ``N``) and a fresh destination table name."""
    wh = sqlite_warehouse
    src = wh.table("src")
    wh.create_prompts_table(src, request.module.N)
    return wh, src, wh.table("dst")
