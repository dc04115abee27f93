"""Reading a spec file: a small UTF-8 file, parsed by a YAML loader whose cost stays proportional to
the file's size (no aliases, bounded nesting; docs/limits.md). Every failure is a SpecError naming the line."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import SpecError, shown
from .inputfiles import read_text_file

# What a spec may cost (docs/limits.md): a spec is a page of YAML, not a data file.
MAX_SPEC_BYTES = 1024 * 1024
MAX_YAML_DEPTH = 32


def read_spec_text(p: Path) -> str:
    """The spec's text: a small regular UTF-8 file (a huge one would cost its size many times over
    in YAML objects)."""
    return read_text_file(p, field=str(p), limit=MAX_SPEC_BYTES,
                          fix="give a UTF-8 YAML file of at most 1 MiB; put data in files named in common_files")


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and deep nesting: the cost of a spec stays proportional to its size."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise _Refused(mark, "YAML aliases (*name) are not accepted in a spec",
                           "write the value out where it is used")
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _Refused(self.peek_event().start_mark, f"nested deeper than {MAX_YAML_DEPTH} levels",
                               "a spec needs only a few levels of mappings and lists")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        # YAML lets a later key silently replace an earlier one; in a spec that hides a mistake.
        first: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node, deep=False)
            try:
                earlier: Any = first.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: SafeLoader refuses it itself
                continue
            if earlier is not key_node.start_mark:
                again: Any = key_node.start_mark
                raise _Refused(None, f"the key {shown(key)} is given twice in one mapping: at line "
                               f"{earlier.line + 1}, column {earlier.column + 1} and at line {again.line + 1}, "
                               f"column {again.column + 1}",
                               "keep one of them: YAML would silently use the later one")
        return super().construct_mapping(node, deep=deep)


class _Refused(Exception):
    def __init__(self, mark: Any, problem: str, fix: str) -> None:
        self.mark, self.problem, self.fix = mark, problem, fix


def parse_yaml(text: str, name: str) -> Any:
    """YAML text -> plain data, every failure a SpecError naming the line."""
    try:
        return yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader subclass
    except _Refused as e:
        where = f" (line {e.mark.line + 1}, column {e.mark.column + 1})" if e.mark is not None else ""
        raise SpecError(name, e.problem + where, e.fix) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(name, f"is not valid YAML{where}: {getattr(e, 'problem', e)}",
                        "fix the YAML syntax") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise SpecError(name, f"holds a value YAML cannot convert: {str(e)[:120]}", "fix the value") from None
