"""RELIABILITY.md stays true: its table and the reliability suite name each other, and nothing is cited that
does not exist.

* every test cited in the table (``tests/....py::name``) is a test function that exists in that file;
* every row's id is proved by at least one test in ``tests/reliability/`` whose name carries that id;
* every reliability test carries an id (``test_R07_...``, several ids allowed: ``test_R20_R21_...``), and is
  cited on the row of each id it carries.

The files are read with ``ast``, not imported: a table check must not run the suite's fixtures.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TABLE = REPO / "RELIABILITY.md"
SUITE = REPO / "tests" / "reliability"

ROW = re.compile(r"^\|\s*(R\d{2,3})\s*\|(.*)\|\s*$")
REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")
TEST_IDS = re.compile(r"^test_((?:R\d{2,3}_)+)")


def table_rows() -> dict[str, list[tuple[str, str]]]:
    """``{id: [(path, test name), ...]}`` from the markdown table."""
    rows: dict[str, list[tuple[str, str]]] = {}
    for line in TABLE.read_text().splitlines():
        match = ROW.match(line)
        if match:
            row_id, rest = match.groups()
            assert row_id not in rows, f"{row_id} appears twice in RELIABILITY.md"
            rows[row_id] = REF.findall(rest)
    return rows


def functions_in(path: Path) -> set[str]:
    """Names of the test functions of a file (module level and in ``Test*`` classes)."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            names.add(node.name)
    return names


def ids_of(name: str) -> list[str]:
    match = TEST_IDS.match(name)
    return re.findall(r"R\d{2,3}", match.group(1)) if match else []


def suite_tests() -> dict[str, str]:
    """``{"tests/reliability/x.py::name": name}`` for every test function of the suite."""
    out = {}
    for path in sorted(SUITE.glob("test_*.py")):
        for name in functions_in(path):
            out[f"{path.relative_to(REPO).as_posix()}::{name}"] = name
    return out


def test_the_table_has_rows_and_every_row_cites_tests() -> None:
    rows = table_rows()
    assert len(rows) >= 30
    empty = [row_id for row_id, refs in rows.items() if not refs]
    assert not empty, f"rows citing no test: {empty}"


def test_every_cited_test_exists() -> None:
    missing = []
    for row_id, refs in table_rows().items():
        for path, name in refs:
            file = REPO / path
            if not file.is_file() or name not in functions_in(file):
                missing.append(f"{row_id}: {path}::{name}")
    assert not missing, "RELIABILITY.md cites tests that do not exist:\n" + "\n".join(missing)


def test_every_id_is_proved_by_a_reliability_test_carrying_it() -> None:
    unproved = []
    for row_id, refs in table_rows().items():
        if not any(path.startswith("tests/reliability/") and row_id in ids_of(name) for path, name in refs):
            unproved.append(row_id)
    assert not unproved, f"ids without a tests/reliability test named after them: {unproved}"


def test_every_reliability_test_has_an_id_and_is_cited_on_its_rows() -> None:
    rows = table_rows()
    problems = []
    for ref, name in suite_tests().items():
        ids = ids_of(name)
        if not ids:
            problems.append(f"{ref}: no id in the name (test_Rnn_...)")
        for row_id in ids:
            cited = {f"{p}::{n}" for p, n in rows.get(row_id, [])}
            if ref not in cited:
                problems.append(f"{ref}: not cited on row {row_id} of RELIABILITY.md")
    assert not problems, "\n".join(problems)
