"""The provider registers with Airflow: metadata valid against Airflow's own schema, visible in the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import jsonschema

from airflow_gemini_batch.get_provider_info import get_provider_info


def test_provider_info_validates_against_airflow_schema():
    schema = json.loads(files("airflow").joinpath("provider_info.schema.json").read_text())
    info = get_provider_info()
    jsonschema.validate(info, schema)
    assert info["package-name"] == "airflow-gemini-batch"
    conn = info["connection-types"][0]
    assert conn["connection-type"] == "gemini_batch"
    assert conn["ui-field-behaviour"]["relabeling"]["password"] == "API key"


def test_every_module_named_in_provider_info_imports():
    import importlib

    info = get_provider_info()
    modules = [
        m
        for section in ("hooks", "operators", "sensors", "triggers")
        for e in info[section]
        for m in e["python-modules"]
    ]
    for module in modules:
        importlib.import_module(module)
    hook_path = info["connection-types"][0]["hook-class-name"]
    mod, cls = hook_path.rsplit(".", 1)
    hook_cls = getattr(importlib.import_module(mod), cls)
    assert hook_cls.conn_type == "gemini_batch"
    for link in info["extra-links"]:
        mod, cls = link.rsplit(".", 1)
        assert getattr(importlib.import_module(mod), cls)


def test_airflow_cli_lists_the_provider_and_its_connection_type(airflow_db):
    airflow = str(Path(sys.executable).parent / "airflow")
    env = os.environ.copy()
    out = subprocess.run(
        [airflow, "providers", "list", "-o", "json"], capture_output=True, text=True, env=env, check=True
    ).stdout
    assert "airflow-gemini-batch" in {p["package_name"] for p in json.loads(out)}
    hooks = subprocess.run(
        [airflow, "providers", "hooks", "-o", "json"], capture_output=True, text=True, env=env, check=True
    ).stdout
    assert any(h.get("connection_type") == "gemini_batch" for h in json.loads(hooks))
