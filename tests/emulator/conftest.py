"""Fixtures for the emulator tests: one real uvicorn server per module, reset before every test, and real
google-genai clients pointed at it over HTTP (no mocks anywhere).

The clients are kept referenced by the fixture (a garbage-collected ``genai.Client`` closes its httpx pool).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from emulator_test_helpers import make_client

from airflow_gemini_batch.emulator import EmulatorServer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from google import genai


@pytest.fixture(scope="module")
def emu_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorServer]:
    with EmulatorServer(data_dir=tmp_path_factory.mktemp("gemini-emulator")) as server:
        yield server


@pytest.fixture
def emu(emu_server: EmulatorServer) -> EmulatorServer:
    emu_server.control.reset()
    return emu_server


@pytest.fixture
def client(emu: EmulatorServer) -> Iterator[genai.Client]:
    c = make_client(emu)
    yield c
    c.close()


@pytest.fixture
def client_factory(emu: EmulatorServer) -> Iterator[Callable[..., genai.Client]]:
    made: list[genai.Client] = []

    def factory(**http_kw: Any) -> genai.Client:
        made.append(make_client(emu, **http_kw))
        return made[-1]

    yield factory
    for c in made:
        c.close()
