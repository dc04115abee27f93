"""docs/architecture.md stays true: its module table names every module of the package and the node side,
and nothing that is gone."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"


def modules() -> set[str]:
    found = {*(ROOT / "mpibatch").rglob("*.py"), *(ROOT / "launchers").glob("*.py"), *(ROOT / "launchers").glob("*.sh")}
    return {p.relative_to(ROOT).as_posix() for p in found if "__pycache__" not in p.parts}


def table() -> set[str]:
    named = re.findall(r"^\| `((?:mpibatch|launchers)/[^`]+)` \|", DOC.read_text(), flags=re.M)
    return {n for n in named if not n.endswith("/")}  # a folder row (generated data) names no module


def test_every_module_is_in_the_table() -> None:
    missing = sorted(modules() - table())
    assert not missing, f"add these modules to the table of docs/architecture.md: {missing}"


def test_the_table_names_no_module_that_is_gone() -> None:
    gone = sorted(table() - modules())
    assert not gone, f"docs/architecture.md names modules that do not exist: {gone}"
