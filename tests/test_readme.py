"""The README stays true: its operator reference is what the docstrings say, and every parameter is documented."""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import operator_reference  # noqa: E402


def test_readme_operator_reference_matches_the_docstrings():
    readme = (REPO / "README.md").read_text()
    assert operator_reference.current(readme) == operator_reference.render(), (
        "README operator reference is stale: run `python scripts/operator_reference.py --write`"
    )


def test_every_operator_parameter_is_documented():
    for path in operator_reference.CLASSES:
        module, name = path.rsplit(".", 1)
        cls = getattr(importlib.import_module(module), name)
        documented = {p for p, _ in operator_reference._params(cls.__doc__ or "")}
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
        assert accepted <= documented, f"{name}: undocumented parameters {sorted(accepted - documented)}"


def test_readme_shows_the_two_commands_first():
    readme = (REPO / "README.md").read_text()
    head = readme[:1500]
    assert "make demo" in head and "make test" in head


def test_the_module_map_matches_the_tree():
    """Every module of the package is on the README's map (folders ending in ``/`` stand for all their
    modules), and every entry on the map exists."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- module-map:start -->")[1].split("<!-- module-map:end -->")[0]
    entries = [line.split()[0] for line in block.splitlines() if line.startswith("  ")]
    package = REPO / "airflow_gemini_batch"
    modules = {str(p.relative_to(package)) for p in package.rglob("*.py") if p.name != "__init__.py"}
    folders = [e for e in entries if e.endswith("/")]
    files = {e for e in entries if not e.endswith("/")}
    assert all((package / e).exists() for e in entries), [e for e in entries if not (package / e).exists()]
    unlisted = sorted(m for m in modules if m not in files and not any(m.startswith(f) for f in folders))
    assert not unlisted, f"modules missing from the README's module map: {unlisted}"
