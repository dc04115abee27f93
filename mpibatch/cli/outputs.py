"""`mpibatch outputs list | get`: File Conventions outputs of any job, saved by mpibatch or by code that used
the .NET library (docs/file-conventions.md). Storage credentials come from the environment, as for `submit`:
AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_KEY (+ AZURE_STORAGE_BLOB_ENDPOINT)
or with DefaultAzureCredential."""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from ..conventions import is_safe_relative
from ..errors import SpecError
from ..executors.collection import check_runs_dir
from ..fileconventions import JobOutputStorage, TaskOutputStorage, download_outputs
from ..launchers.protocol import TASK_KINDS
from .common import EXIT_INFRA, EXIT_INTERRUPTED, EXIT_OK, Stop, echo_json, output_option, report_errors
from .transfer_progress import transfer_progress


def storage_options(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """How to reach storage, from the environment (never from arguments: keys stay out of `ps`)."""
    env = os.environ if env is None else env
    conn = env.get("AZURE_STORAGE_CONNECTION_STRING", "").strip()
    if conn:
        return {"connection_string": conn}
    account = env.get("AZURE_STORAGE_ACCOUNT", "").strip()
    if not account:
        raise SpecError("AZURE_STORAGE_CONNECTION_STRING", "no storage account configured",
                        "export AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT (+ AZURE_STORAGE_KEY)")
    endpoint = env.get("AZURE_STORAGE_BLOB_ENDPOINT", "").strip() or f"https://{account}.blob.core.windows.net"
    key = env.get("AZURE_STORAGE_KEY", "").strip()
    if key:
        return {"connection_string": f"AccountName={account};AccountKey={key};BlobEndpoint={endpoint}"}
    from azure.identity import DefaultAzureCredential

    return {"credential": DefaultAzureCredential(), "account_url": endpoint}


def _storage(job_id: str, task_id: str | None) -> JobOutputStorage | TaskOutputStorage:
    how = storage_options()
    return TaskOutputStorage(job_id, task_id, **how) if task_id else JobOutputStorage(job_id, **how)


@click.group()
def outputs() -> None:
    """List and download File Conventions outputs of a job or task."""


@outputs.command("list")
@click.argument("job_id", metavar="JOB")
@click.argument("task_id", metavar="[TASK]", required=False)
@click.option("--kind", default=None, help=f"only this kind ({', '.join(TASK_KINDS[:2])}, ..., or a custom kind)")
@output_option
@report_errors
def list_outputs(job_id: str, task_id: str | None, kind: str | None, output: str) -> None:
    """The outputs of TASK, or without TASK those of JOB itself and of every task of JOB (a TASK column says
    whose): kind, size, MD5 and path. For multi-instance tasks run by mpibatch, a path starts with the
    instance number (0 the primary)."""
    storage = _storage(job_id, task_id)
    found = storage.list_every_output(kind) if isinstance(storage, JobOutputStorage) else storage.list_outputs(kind)
    if output == "json":
        echo_json([{"kind": o.kind, "path": o.path, "size": o.size, "md5": o.md5.hex() if o.md5 else None,
                    "blob": o.blob_name, **({} if task_id else {"task": o.task_id})} for o in found])
        return
    if not found:
        click.echo(f"no outputs{f' of kind {kind}' if kind else ''} for {job_id}{'/' + task_id if task_id else ''}")
        return
    width = max(len(o.kind) for o in found)
    tasks = max(len(o.task_id or "-") for o in found)
    for o in found:
        path = o.path if o.path.isprintable() else repr(o.path)  # a newline in a name stays on one line
        whose = "" if task_id else f"{o.task_id or '-':<{tasks}}  "
        click.echo(f"{whose}{o.kind:<{width}}  {o.size:>14,}  {o.md5.hex() if o.md5 else '-':<32}  {path}")


@outputs.command("get")
@click.argument("job_id", metavar="JOB")
@click.argument("task_id", metavar="TASK")
@click.option("--kind", default=None, help="only this kind")
@click.option("--to", "to", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="directory (default mpibatch-outputs/JOB/TASK); files land at DIR/$<Kind>/<path>, as in storage")
@output_option
@report_errors
def get_outputs(job_id: str, task_id: str, kind: str | None, to: Path | None, output: str) -> None:
    """Download TASK's outputs, verified (size, MD5), written under a temporary name and renamed when
    complete. A rerun keeps files already there and verified, and fetches the rest."""
    dest = to or Path("mpibatch-outputs") / job_id / task_id
    storage = _storage(job_id, task_id)
    check_runs_dir(dest, "--to", "./mpibatch-outputs")  # bad input (exit 2) before anything is fetched
    found = storage.list_outputs(kind)
    results: dict[str, str] = {}
    todo = []
    for o in found:
        if is_safe_relative(o.path):
            todo.append(o)
        else:
            results[o.blob_name] = "unsafe name, not downloaded"
    try:
        with transfer_progress("outputs", output) as bar:
            if bar is not None:
                bar.planned(len(todo), sum(o.size for o in todo))
            outcomes = download_outputs(todo, [dest / f"${o.kind}" / o.path for o in todo],
                                        on_bytes=bar.moved if bar else None,
                                        on_done=(lambda _o, _r: bar.file_done()) if bar else None)
    except KeyboardInterrupt:
        raise Stop(EXIT_INTERRUPTED, f"interrupted: no partial file was left; rerun the same command to resume "
                   f"into {dest}") from None
    for o, outcome in zip(todo, outcomes):
        results[o.blob_name] = outcome if isinstance(outcome, str) else f"failed: {outcome}"
    failed = {b: r for b, r in results.items() if r not in ("downloaded", "kept")}
    if output == "json":
        echo_json({"dir": str(dest), "files": results, "failed": sorted(failed)})
    else:
        got = sum(1 for r in results.values() if r == "downloaded")
        kept = sum(1 for r in results.values() if r == "kept")
        click.echo(f"{got} downloaded, {kept} already there and verified, {len(failed)} failed -> {dest}")
        for b, r in failed.items():
            click.echo(f"  {b}: {r}", err=True)
    sys.exit(EXIT_INFRA if failed else EXIT_OK)


COMMANDS = [outputs]
