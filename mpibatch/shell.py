"""Quoting at the edge: every generated shell line is built from argv lists.

`Raw` marks a word that mpibatch itself wrote to expand at run time on the node (e.g.
"$AZ_BATCH_HOST_LIST"); it is never built from user input. Everything else is quoted.
"""
from __future__ import annotations

import re
import shlex
from collections.abc import Iterable


class Raw(str):
    """A shell word written by mpibatch, inserted unquoted (it quotes itself)."""


Word = str | Raw


def sh_join(argv: Iterable[Word]) -> str:
    """POSIX shell line from argv; Raw words kept as they are."""
    return " ".join(w if isinstance(w, Raw) else shlex.quote(w) for w in argv)


def bash_c(script: str) -> str:
    """Batch runs command lines without a shell (docs/batch-semantics.md#command-lines): wrap in /bin/bash -c."""
    return "/bin/bash -c " + shlex.quote(script)


CMD_SAFE_WORD = re.compile(r"^[A-Za-z0-9_@+=:,./\\-]+$")  # needs no quotes on a cmd /c line


def cmd_quote(word: str) -> str:
    """Quote one argument for a Windows command line run by cmd /c.

    Double quotes protect spaces and cmd's & | < > ^; '%' and '"' cannot be made safe inside
    cmd /c, so they are refused (the spec validation reports them)."""
    if isinstance(word, Raw):
        return word
    if '"' in word or "%" in word or "\n" in word:
        raise ValueError(f"argument {word!r} contains a character (\" % or newline) that cannot be "
                         "passed safely through cmd /c")
    if word and CMD_SAFE_WORD.match(word):
        return word
    return '"' + word.replace("\\", "\\\\") + '"' if word.endswith("\\") else f'"{word}"'


def cmd_join(argv: Iterable[Word]) -> str:
    return " ".join(cmd_quote(w) for w in argv)
