"""The CLI starts without loading what the command does not use (issue 22 item 10): commands load lazily,
and the lazy table names every command of every module exactly once."""
from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

from click.testing import CliRunner

from mpibatch import cli
from mpibatch.cli import COMMAND_MODULES, main

PROBE = """
import sys
from mpibatch.cli import main
try:
    main(["run", "--help"])
except SystemExit:
    pass
# (importlib.metadata is not in the list: `run --help` names the installed executor plugins.)
heavy = ["mpibatch.cli.azure", "mpibatch.cli.preview", "mpibatch.cli.emulate", "mpibatch.fileconventions",
         "azure.batch", "azure.storage.blob", "urllib.request", "tqdm"]
print("LOADED:", *[m for m in heavy if m in sys.modules])
"""


def test_run_loads_no_azure_preview_or_storage_module() -> None:
    p = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True)
    assert "Run SPEC as a multi-instance task" in p.stdout
    loaded = p.stdout.strip().splitlines()[-1].split()
    assert loaded == ["LOADED:"], loaded


def test_the_lazy_table_names_every_command_once() -> None:
    seen: dict[str, str] = {}
    for info in pkgutil.iter_modules(cli.__path__):  # every module of mpibatch.cli: a new one is not missed
        if info.name == "__main__":  # runs the CLI when imported
            continue
        for command in getattr(importlib.import_module(f"mpibatch.cli.{info.name}"), "COMMANDS", []):
            module = info.name
            assert command.name not in seen, command.name
            seen[command.name] = module
    assert seen == COMMAND_MODULES


def test_help_lists_every_command_and_unknown_ones_are_usage_errors() -> None:
    res = CliRunner().invoke(main, ["--help"])
    assert res.exit_code == 0 and all(f"  {name} " in res.output for name in COMMAND_MODULES), res.output
    bad = CliRunner().invoke(main, ["rnu"])
    assert bad.exit_code == 2 and "No such command 'rnu'" in bad.output
