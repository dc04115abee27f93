"""`mpibatch init [EXAMPLE] [DIR]`: write a runnable copy of one of the examples that ship with the
package (the repository's examples/ folder, installed as mpibatch/examples/), so a pip user can start
from a working spec."""
from __future__ import annotations

import difflib
import os
from pathlib import Path

import click

from ..errors import SpecError
from .common import report_errors

DEFAULT_EXAMPLE = "hello"
_SKIP = {"__pycache__", ".pytest_cache"}


def examples_dir() -> Path:
    """Where the examples are: inside the installed package, or the checkout's examples/ folder (an
    editable install made before they were package data maps only mpibatch/ itself)."""
    pkg = Path(__file__).resolve().parents[1]
    for candidate in (pkg / "examples", pkg.parent / "examples"):
        if (candidate / DEFAULT_EXAMPLE / "spec.yaml").is_file():
            return candidate
    raise SpecError("mpibatch init", f"no examples found next to {pkg}", "reinstall mpibatch (pip install mpibatch)")


def available() -> dict[str, str]:
    """Example name -> its one-line summary (the title of its README)."""
    out = {}
    for d in sorted(examples_dir().iterdir()):
        if d.is_dir() and d.name not in _SKIP and (d / "README.md").is_file():
            title = d.joinpath("README.md").read_text(encoding="utf-8").split("\n", 1)[0]
            out[d.name] = title.lstrip("# ").split(": ", 1)[-1]
    return out


def _files(src: Path) -> list[Path]:
    return sorted(p for p in src.rglob("*") if p.is_file() and not _SKIP & set(p.relative_to(src).parts)
                  and p.suffix != ".pyc")


def copy_example(name: str, dest: Path) -> int:
    """Copy example `name` into `dest` (absent or empty); returns the number of files written."""
    from ..launchers import fileio

    names = available()
    if name not in names:
        close = difflib.get_close_matches(name, list(names), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise SpecError("EXAMPLE", f"no example named {name!r}", f"{hint}choose one of: {', '.join(names)}")
    if dest.exists() and not dest.is_dir():
        raise SpecError("DIR", f"{dest} is a file", "name a new or empty directory")
    if dest.is_dir() and any(dest.iterdir()):
        raise SpecError("DIR", f"{dest} is not empty; init never overwrites files",
                        f"name a new directory, e.g. mpibatch init {name} {name}-2")
    src = examples_dir() / name
    files = _files(src)
    for f in files:
        target = dest / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        fileio.copy_file(f, target, mode=0o755 if os.access(f, os.X_OK) else 0o644)
    return len(files)


def _listing(names: dict[str, str]) -> str:
    width = max(map(len, names))
    return "\n".join(f"  {n:<{width}}  {summary}" for n, summary in names.items())


@click.command()
@click.argument("example", required=False)
@click.argument("directory", metavar="DIR", required=False)
@click.option("--list", "list_only", is_flag=True, help="list the examples and write nothing")
@report_errors
def init(example: str | None, directory: str | None, list_only: bool) -> None:
    """Write a runnable copy of EXAMPLE (default: hello) into DIR (default: ./EXAMPLE), then
    `mpibatch run DIR/spec.yaml`. A DIR that holds anything is refused."""
    names = available()
    if list_only:
        click.echo("examples (mpibatch init NAME [DIR]):\n" + _listing(names))
        return
    name = example or DEFAULT_EXAMPLE
    dest = Path(directory or name)
    count = copy_example(name, dest)
    click.echo(f"wrote the {name} example to {dest}/ ({count} files); run it with:\n"
               f"  mpibatch run {dest / 'spec.yaml'}")
    if example is None:
        others = {n: s for n, s in names.items() if n != name}
        click.echo("other examples (mpibatch init NAME [DIR]):\n" + _listing(others))


COMMANDS = [init]
