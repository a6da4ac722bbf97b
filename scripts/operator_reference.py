"""Generate the README's operator reference from the operators' own ``:param`` docstrings.

The README block between ``<!-- operator-reference:start -->`` and ``<!-- operator-reference:end -->`` is this
script's output; ``tests/test_readme.py`` fails when they drift, so the documented parameters stay true.
Run ``python scripts/operator_reference.py --write`` after changing a docstring.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
START, END = "<!-- operator-reference:start -->", "<!-- operator-reference:end -->"
CLASSES = (
    "airflow_gemini_batch.operators.submit.GeminiBatchSubmitOperator",
    "airflow_gemini_batch.sensors.job.GeminiBatchJobSensor",
    "airflow_gemini_batch.operators.results.GeminiBatchLoadResultsOperator",
    "airflow_gemini_batch.operators.batch.GeminiBatchOperator",
)
_PARAM = re.compile(r"^:param (\w+):\s*(.*)$")


def _params(doc: str) -> list[tuple[str, str]]:
    params: list[tuple[str, str]] = []
    for raw in inspect.cleandoc(doc).splitlines():
        line = raw.strip()
        match = _PARAM.match(line)
        if match:
            params.append((match.group(1), match.group(2)))
        elif params and line and not line.startswith(":"):
            name, text = params[-1]
            params[-1] = (name, f"{text} {line}")
    return params


def _default(cls: type, name: str) -> str:
    parameter = inspect.signature(cls.__init__).parameters.get(name)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return "required" if parameter is not None and name != "kwargs" else ""
    return f"`{parameter.default!r}`"


def render() -> str:
    import importlib

    out = [START, ""]
    for path in CLASSES:
        module, name = path.rsplit(".", 1)
        cls = getattr(importlib.import_module(module), name)
        summary = inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0].replace("\n", " ").replace("``", "`")
        out += [f"#### `{name}`", "", summary, "", "| parameter | default | meaning |", "|---|---|---|"]
        for pname, text in _params(cls.__doc__ or ""):
            text = text.replace("``", "`").replace("|", "\\|")
            out.append(f"| `{pname}` | {_default(cls, pname)} | {text} |")
        out.append("")
    out.append(END)
    return "\n".join(out)


def current(readme: str) -> str:
    return readme[readme.index(START) : readme.index(END) + len(END)]


def main() -> int:
    readme_path = REPO / "README.md"
    readme = readme_path.read_text()
    block = render()
    if "--write" in sys.argv:
        readme_path.write_text(readme.replace(current(readme), block))
        return 0
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
