"""Parsers for the spec's fields: each takes the raw YAML value and the field's name, returns a model
value or raises a SpecError that names the field and says how to fix it. Pure: no I/O."""
from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from .errors import SpecError, SpecErrors, shown
from .launchers.protocol import KIND_RULE_TEXT, KINDS, TASK_OUTPUT, is_kind, near_standard_kind
from .spec_model import IMAGE_ALIASES, Command, FileRef, Image, NodeTask, Output, Setup

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A word of task.mpi.setup goes into the coordination line as it is: only characters no shell treats
# specially (so it never needs quoting, and means the same on every node).
SETUP_WORD_RE = re.compile(r"^[A-Za-z0-9_./+:,=@%-]+$")
SETUP_KINDS = ("module", "source")


class Collector:
    """Gathers SpecErrors so the user sees every problem at once."""

    def __init__(self) -> None:
        self.errors: list[SpecError] = []

    def run(self, fn: Callable[[], Any], default: Any = None) -> Any:
        try:
            return fn()
        except SpecErrors as e:
            self.errors.extend(e.errors)
        except SpecError as e:
            self.errors.append(e)
        return default

    def raise_if_any(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise SpecErrors(self.errors)


def check_keys(data: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    """Every unknown key of `data` at once (callers go on checking the known ones)."""
    c = Collector()
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(allowed)}"
            c.errors.append(SpecError(f"{where}.{key}" if where else str(key), "unknown key", hint))
    c.raise_if_any()


def as_mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError(where, f"expected a mapping, got {type(value).__name__}",
                        "write it as 'key: value' lines")
    return value


def as_int(value: Any, where: str, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(where, f"{shown(value)} is not a whole number", f"write a number >= {lo}")
    if value < lo or (hi is not None and value > hi):
        rng = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise SpecError(where, f"{shown(value)} is out of range", f"use a number {rng}")
    return value


def as_str(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise SpecError(where, f"{shown(value)} is not a string", "quote it")
    text = str(value)
    if "\x00" in text:
        raise SpecError(where, "contains a NUL byte", "remove it")
    return text


def validate_id(value: Any, where: str) -> str:
    from .conventions import validate_batch_id  # the one id rule

    return validate_batch_id(as_str(value, where), where, "id", "run-1")


def as_choice(value: Any, where: str, choices: tuple[str, ...]) -> str:
    text = as_str(value, where).lower()
    if text not in choices:
        close = difflib.get_close_matches(text, choices, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise SpecError(where, f"unknown value {shown(value)}", f"{hint}choose one of: {', '.join(choices)}")
    return text


def check_node_path(value: Any, where: str) -> str:
    """A destination path on the node: relative, no '..', no drive letter; normalised to '/'."""
    text = as_str(value, where).strip()
    fix = "give a relative path inside the task directory, e.g. input/data.bin"
    if not text:
        raise SpecError(where, "is empty", fix)
    if PureWindowsPath(text).drive or text.startswith(("/", "\\")) or PureWindowsPath(text).root:
        raise SpecError(where, f"{shown(text)} is absolute", fix)
    parts = PurePosixPath(text.replace("\\", "/")).parts
    if ".." in parts:
        raise SpecError(where, f"{shown(text)} escapes the task directory with '..'", fix)
    if any(c in text for c in "\n\r\t"):
        raise SpecError(where, f"{shown(text)} contains a control character", fix)
    clean = "/".join(p for p in parts if p != ".")
    if not clean:
        raise SpecError(where, f"{shown(text)} names no file", fix)
    return clean


def parse_command(value: Any, where: str) -> Command:
    if isinstance(value, str):
        if not value.strip():
            raise SpecError(where, "is empty", "give the program to run, e.g. [python, app.py]")
        return Command(shell=value)
    if isinstance(value, list):
        if not value:
            raise SpecError(where, "is an empty list", "give the program to run, e.g. [python, app.py]")
        argv = tuple(as_str(v, f"{where}[{i}]") for i, v in enumerate(value))
        if not argv[0]:
            raise SpecError(f"{where}[0]", "program name is empty", "name the program to run")
        return Command(argv=argv)
    raise SpecError(where, f"expected a list (argv) or a string (shell line), got {type(value).__name__}",
                    "write e.g. [python, app.py] or \"python app.py > out.txt\"")


# Checks that a local source can be read: (absolute path, field) -> None or SpecError. Injected by
# load_spec for commands that run or upload the files, so this module stays free of I/O.
SourceCheck = Callable[[str, str], None]


def parse_files(value: Any, where: str, base_dir: Path, check: SourceCheck | None = None) -> tuple[FileRef, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise SpecError(where, "expected a list of {source, path}", "write - {source: ./x, path: x}")
    out: list[FileRef] = []
    seen: dict[str, int] = {}
    c = Collector()
    for i, item in enumerate(value):
        w = f"{where}[{i}]"

        def one(item: Any = item, w: str = w) -> FileRef:
            if isinstance(item, str):
                item = {"source": item}
            m = as_mapping(item, w)
            check_keys(m, ("source", "path"), w)
            if "source" not in m:
                raise SpecError(f"{w}.source", "is missing", "name a local file or an http(s) URL")
            source = as_str(m["source"], f"{w}.source").strip()
            if not source:
                raise SpecError(f"{w}.source", "is empty", "name a local file or an http(s) URL")
            is_url = source.startswith(("http://", "https://"))
            if "://" in source and not is_url:
                raise SpecError(f"{w}.source", f"unsupported URL scheme in {shown(source)}",
                                "use a local path or an http(s) URL")
            default_path = PurePosixPath(source.split("?")[0]).name if is_url else Path(source).name
            path = check_node_path(m.get("path", default_path), f"{w}.path")
            if not is_url:
                source = str((base_dir / source).resolve()) if not Path(source).is_absolute() else source
                if check is not None:
                    check(source, f"{w}.source")
            return FileRef(source=source, path=path)

        ref = c.run(one)
        if ref is None:
            continue
        key = ref.path.lower()  # Windows nodes and many tools are case-insensitive
        if key in seen:
            c.errors.append(SpecError(f"{w}.path", f"{shown(ref.path)} is also the destination of "
                                      f"{where}[{seen[key]}]", "give each file its own path"))
            continue
        seen[key] = i
        out.append(ref)
    c.raise_if_any()
    return tuple(out)


def parse_environment(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    m = as_mapping(value, where)
    env: dict[str, str] = {}
    c = Collector()
    for k, v in m.items():
        name = str(k)
        if not ENV_NAME_RE.fullmatch(name):
            c.errors.append(SpecError(f"{where}.{name}", "is not a valid environment variable name",
                                      "use letters, digits and '_', not starting with a digit"))
        elif name.upper().startswith("AZ_BATCH_") or name.upper() == "CCP_NODES":
            c.errors.append(SpecError(f"{where}.{name}", "is set by Batch on every node",
                                      "pick another name; Batch would override it"))
        elif v is None:
            c.errors.append(SpecError(f"{where}.{name}", "has no value", "give a value, quoted if needed"))
        else:
            env[name] = c.run(partial(as_str, v, f"{where}.{name}"), "")
    c.raise_if_any()
    return env


def parse_outputs(value: Any, where: str) -> tuple[Output, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise SpecError(where, "expected a list of {pattern, kind}", "write - {pattern: 'results/**'}")
    out = []
    for i, item in enumerate(value):
        w = f"{where}[{i}]"
        if isinstance(item, str):
            item = {"pattern": item}
        m = as_mapping(item, w)
        check_keys(m, ("pattern", "kind"), w)
        if "pattern" not in m:
            raise SpecError(f"{w}.pattern", "is missing", "write a glob such as results/**")
        pattern = check_node_path(m["pattern"], f"{w}.pattern")
        kind = check_kind(as_str(m.get("kind", TASK_OUTPUT), f"{w}.kind"), f"{w}.kind")
        out.append(Output(pattern=pattern, kind=kind))
    return tuple(out)


def check_kind(kind: str, where: str) -> str:
    """A standard kind, or a custom one that follows the kind rule and is no near miss of a standard
    one (docs/file-conventions.md#kinds)."""
    if not is_kind(kind):
        raise SpecError(where, f"{shown(kind)} is not a File Conventions kind",
                        f"use one of {', '.join(KINDS)} or a custom kind: {KIND_RULE_TEXT}")
    near = near_standard_kind(kind)
    if near is not None:
        raise SpecError(where, f"{shown(kind)} is not a standard kind: did you mean {near}?",
                        f"write {near}; a custom kind on purpose must differ from every standard kind by more "
                        "than a letter or two, e.g. Checkpoints")
    return kind


def parse_node_task(value: Any, where: str, base_dir: Path, check: SourceCheck | None = None) -> NodeTask | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = {"command": value}
    m = as_mapping(value, where)
    c = Collector()
    c.run(lambda: check_keys(m, ("command", "files"), where))
    if "command" not in m:
        c.errors.append(SpecError(f"{where}.command", "is missing", "give the command to run on each node"))
    cmd = c.run(lambda: parse_command(m["command"], f"{where}.command")) if "command" in m else None
    files = c.run(lambda: parse_files(m.get("files"), f"{where}.files", base_dir, check), ())
    c.raise_if_any()
    assert cmd is not None  # for mypy: a missing one was an error above
    return NodeTask(command=cmd, files=files)


def parse_image(value: Any, where: str) -> Image | None:
    if value is None:
        return None
    if isinstance(value, str):
        key = value.lower()
        if key not in IMAGE_ALIASES:
            raise SpecError(where, f"unknown image {shown(value)}",
                            f"use one of {', '.join(IMAGE_ALIASES)} or a mapping with "
                            "publisher, offer, sku, version, node_agent")
        return IMAGE_ALIASES[key]
    m = as_mapping(value, where)
    keys = ("publisher", "offer", "sku", "version", "node_agent")
    check_keys(m, keys, where)
    missing = [k for k in keys if k not in m and k != "version"]
    if missing:
        raise SpecError(where, f"missing {', '.join(missing)}",
                        "give publisher, offer, sku and node_agent (version defaults to latest)")
    return Image(*(as_str(m.get(k, "latest"), f"{where}.{k}") for k in keys))



def parse_setup(value: Any, where: str) -> Setup | None:
    """task.mpi.setup: {module: mpi/impi-2021}, {source: /opt/x/vars.sh [args]}, none, or absent. A relative
    source is one of the task's common files (spec_checks: it must be listed there)."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() == "none":
        return Setup("none")
    example = "write {module: mpi/impi-2021} or {source: /opt/intel/oneapi/mpi/latest/env/vars.sh}"
    if not isinstance(value, Mapping):
        raise SpecError(where, f"expected a mapping, got {type(value).__name__}", example)
    check_keys(value, SETUP_KINDS, where)
    if len(value) != 1:
        raise SpecError(where, "needs exactly one of module or source", example)
    kind, raw = next(iter(value.items()))
    field_ = f"{where}.{kind}"
    words = tuple(as_str(raw, field_).split())
    if not words:
        raise SpecError(field_, "is empty", example)
    for w in words:
        if not SETUP_WORD_RE.fullmatch(w):
            raise SpecError(field_, f"{w!r} would need quoting on the node's command line",
                            "use names and paths of letters, digits and . _ / + : , = @ % - only")
    if kind == "module" and any(w.startswith("-") for w in words):
        raise SpecError(field_, "holds an option, not a module name", "give module names only")
    return Setup(kind, words)
