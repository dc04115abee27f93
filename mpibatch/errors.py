"""Errors that map to the CLI's exit codes: 2 bad input, 3 infrastructure."""
from __future__ import annotations

import reprlib


class MpibatchError(Exception):
    """Base class. `exit_code` is what the CLI exits with."""

    exit_code = 3


MAX_PROBLEM_CHARS = 1000
MAX_FIELD_CHARS = 300


def cut(text: str, limit: int = MAX_PROBLEM_CHARS) -> str:
    """`text`, its middle cut out when longer than `limit`: a message never echoes a whole input. Pure."""
    if len(text) <= limit:
        return text
    keep = limit // 2
    return f"{text[:keep]}...[{len(text) - 2 * keep} characters cut]...{text[-keep:]}"


class SpecError(MpibatchError, ValueError):
    """Bad user input (spec field, host list, path, VM size...). Nothing was submitted or run.

    `field` names the input (dotted path such as ``task.mpi.flavor``), `problem` says what is
    wrong, `fix` says how to fix it.
    """

    exit_code = 2

    def __init__(self, field: str, problem: str, fix: str | None = None):
        self.field = cut(field, MAX_FIELD_CHARS)  # a field may name a path or a key the user wrote
        self.problem = cut(problem)
        self.fix = fix
        text = f"{self.field}: {self.problem}" if field else self.problem
        if fix:
            text += f" ({fix})"
        super().__init__(text)


class SpecErrors(SpecError):
    """Several SpecErrors found at once; reported together so the user fixes them in one go."""

    def __init__(self, errors: list[SpecError]):
        self.errors = errors
        MpibatchError.__init__(self, "\n".join(str(e) for e in errors))
        self.field, self.problem, self.fix = errors[0].field, errors[0].problem, errors[0].fix


class InfraError(MpibatchError):
    """Something outside the user's input failed (a host, a service, a process)."""

    exit_code = 3


class _Shown(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        # repr() of a huge int is slow (and refused past 4300 digits): say how big it is instead.
        return super().repr_int(x, level) if x.bit_length() <= 200 else f"<a {x.bit_length()}-bit number>"


_SHOWN = _Shown()
_SHOWN.maxstring = _SHOWN.maxother = 60
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = _SHOWN.maxset = 4
_SHOWN.maxlevel = 2


def shown(value: object) -> str:
    """A rejected value as messages show it: repr, cut short. Bounded in time and size whatever the
    value holds (a 1 MiB string, a deeply nested list), so a message never echoes a whole input."""
    return _SHOWN.repr(value)


class LogShrank(MpibatchError):
    """A log read from `offset` is now only `size` bytes: it was truncated (or rewritten) in place while it
    was followed. Readers raise it; `mpibatch logs --follow` then prints the log again from its start."""

    def __init__(self, name: str, offset: int, size: int):
        self.name, self.offset, self.size = name, offset, size
        super().__init__(f"{name} shrank from at least {offset} to {size} bytes (truncated or rewritten in place)")
