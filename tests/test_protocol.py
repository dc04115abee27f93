"""The node protocol (launchers/protocol.py) is the one home of every name the nodes and the client share:
each appears as a literal in exactly one Python module of mpibatch/ and launchers/, coordinate.sh holds
none of them, the instance.json record is read strictly, and the node modules import one way."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from mpibatch.launchers import protocol
from mpibatch.launchers.protocol import InstanceRecord, RecordError

from mpibatch.render import render
from tests.test_render import FULL, make_spec

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "mpibatch").rglob("*.py"), *(ROOT / "launchers").glob("*.py")])

# Each shared name, and how it is recognised inside a string literal (not inside a longer name).
SHARED_NAMES = {
    **{kind: rf"(?<![A-Za-z0-9]){kind}(?![A-Za-z0-9])" for kind in protocol.KINDS},
    "instance.json": r"(?<![\w.-])instance\.json(?![\w.-])",
    "live/": r"^live(/|$)",
    ".mpibatch-persisting": r"\.mpibatch-persisting(?![\w.-])",
    ".mpibatch-track.pid": r"\.mpibatch-track\.pid(?![\w.-])",
    ".mpibatch-track.json": r"\.mpibatch-track\.json(?![\w.-])",
    ".mpibatch-node": r"\.mpibatch-node(?![\w.-])",
    ".mpibatch-node.env": r"\.mpibatch-node\.env(?![\w.-])",
    ".mpibatch-rank": r"\.mpibatch-rank(?![\w.-])",
    "workitems": r"(?<![\w-])workitems(?![\w-])",
    "job-1": r"(?<![\w-])job-1(?![\w-])",
    "MPIBATCH_RESTART": r"MPIBATCH_RESTART(?![\w])",
    "MPIBATCH_CHECKPOINT": r"MPIBATCH_CHECKPOINT(?![\w])",
    "MPIBATCH_CHECKPOINT_DIR": r"MPIBATCH_CHECKPOINT_DIR(?![\w])",
    "MPIBATCH_CHECKPOINT_URL": r"MPIBATCH_CHECKPOINT_URL(?![\w])",
    "checkpoint-restores": r"(?<![\w-])checkpoint-restores(?![\w-])",
    ".mpibatch-checkpoint.json": r"\.mpibatch-checkpoint\.json(?![\w.-])",
}


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _string_literals(path: Path) -> list[str]:
    """Every string constant of a module (f-string parts included), docstrings left out."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _docstrings(tree)
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip]


def test_every_shared_name_is_a_literal_in_exactly_one_module() -> None:
    literals = {p: _string_literals(p) for p in SOURCES}
    for name, pattern in SHARED_NAMES.items():
        rx = re.compile(pattern)
        holders = sorted(str(p.relative_to(ROOT)) for p, values in literals.items()
                         if any(rx.search(v) for v in values))
        assert holders == ["launchers/protocol.py"], f"{name!r} is written in {holders}"


def test_coordinate_sh_holds_no_shared_name_and_render_passes_them() -> None:
    script = (ROOT / "launchers" / "coordinate.sh").read_text()
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
    for name in (protocol.NODE_ID_FILE, protocol.NODE_ENV_FILE, protocol.RANK_WRAPPER, *protocol.HANDSHAKE_FILES,
                 protocol.WORKITEMS, protocol.INSTANCE_INFO):
        assert name not in code, name
    line = render(make_spec(**FULL)).coordination_command_line
    for name in (protocol.NODE_ID_FILE, protocol.NODE_ENV_FILE, protocol.RANK_WRAPPER, *protocol.HANDSHAKE_FILES):
        assert name in line, name


def test_the_output_encoding_round_trips_patterns_with_an_equals_sign() -> None:
    outputs = [("TaskOutput", "results/a=b/**"), ("Checkpoints", "ck=*.h5")]
    args = [protocol.encode_output(k, p) for k, p in outputs]
    assert protocol.decode_outputs(args) == outputs
    line = render(make_spec(outputs=[{"pattern": "results/a=b/**"}])).command_line
    assert "TaskOutput=results/a=b/**" in line


def _record(**changes: object) -> str:
    who = protocol.Identity(index=2, host="10.0.0.6", hostname="n2", node_id="tvm-2", task_dir="/t", wd="/t/wd")
    record = InstanceRecord.new(who, final=True, declared=[("TaskOutput", "results/**")])
    record.files = {"t/$TaskOutput/2/a": {"size": 3, "md5": "x"}}
    data = json.loads(record.to_json())
    data.update(changes)
    return json.dumps({k: v for k, v in data.items() if v is not ...})


def test_the_instance_record_round_trips() -> None:
    record = InstanceRecord.from_json(_record())
    assert record.index == 2 and record.node_id == "tvm-2" and record.final
    assert record.declared == [("TaskOutput", "results/**")]
    assert InstanceRecord.from_json(record.to_json()) == record


@pytest.mark.parametrize(("changes", "words"), [
    ({"schema": 2}, "schema version 2; this mpibatch reads version 1"),
    ({"schema": ...}, "schema version None"),
    ({"extra": 1}, "unknown fields extra"),
    ({"final": "yes"}, "field 'final' is a str"),
    ({"index": True}, "field 'index' is a bool"),
    ({"declared": [["TaskOutput"]]}, "not a list of [kind, pattern]"),
    ({"node_id": ...}, "lacks the field 'node_id'"),
])
def test_a_record_of_another_shape_is_refused_by_name(changes: dict, words: str) -> None:
    with pytest.raises(RecordError, match=re.escape(words)):
        InstanceRecord.from_json(_record(**changes))


def test_a_record_that_is_not_an_object_is_refused() -> None:
    for text, words in (("[1]", "holds a list"), ("{", "is not JSON")):
        with pytest.raises(RecordError, match=re.escape(words)):
            InstanceRecord.from_json(text)


@pytest.mark.parametrize(("kind", "near"), [("TaskOuput", "TaskOutput"), ("taskoutput", "TaskOutput"),
                                            ("TaskLogs", "TaskLog"), ("JobOutpt", "JobOutput"),
                                            ("Checkpoints", None), ("Results", None), ("TaskOutput", None)])
def test_near_misses_of_standard_kinds(kind: str, near: str | None) -> None:
    assert protocol.near_standard_kind(kind) == near


def _node_imports(path: Path) -> set[str]:
    """Sibling modules a launchers/ module imports, at any depth (inside functions too)."""
    siblings = {p.stem for p in (ROOT / "launchers").glob("*.py")}
    found = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.ImportFrom):
            names = [n.module or ""] + ([a.name for a in n.names] if n.level and not n.module else [])
        elif isinstance(n, ast.Import):
            names = [a.name for a in n.names]
        else:
            continue
        found |= {name for name in names if name in siblings}
    return found - {path.stem}


def test_the_node_modules_import_one_way() -> None:
    graph = {p.stem: _node_imports(p) for p in (ROOT / "launchers").glob("*.py")}
    assert graph["protocol"] == set()  # the bottom: standard library only
    assert "persist" not in graph["track"]

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph.get(start, ()))

    cycles = sorted(m for m in graph if reaches(m, m, set()))
    # blobio <-> blobdownload is another engineer's (issue 18 item 6); every other module imports one way.
    assert set(cycles) <= {"blobio", "blobdownload"}, cycles
