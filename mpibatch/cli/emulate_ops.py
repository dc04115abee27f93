"""`mpibatch emulate preempt`: an operator's command to a running `mpibatch emulate` (found through its
--state-dir: the port, account and key it keeps there), sent over the emulator's own operator path - not
part of Batch's API - signed with the account's Shared Key as any client's request."""
from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import click

from ..errors import InfraError, SpecError
from .common import report_errors

API_VERSION = "2024-07-01.20.0"
TIMEOUT_S = 60
RUNNING = "give the --state-dir of a running `mpibatch emulate` (start it with `mpibatch emulate --state-dir DIR`)"


def _emulator(state_dir: str) -> tuple[int, str, str]:
    """(port, account, key) of the emulator that uses state_dir."""
    from ..emulator.journal import read_snapshot

    path = Path(state_dir) / "state.json"
    if not path.is_file():
        raise SpecError("--state-dir", f"{state_dir}: no emulator state here", RUNNING)
    meta = read_snapshot(path)["meta"]
    port, account, key = meta.get("port"), meta.get("account"), meta.get("key")
    if not (isinstance(port, int) and account and key):
        raise SpecError("--state-dir", f"{state_dir}: this emulator's state names no port", RUNNING)
    return port, account, key


def signed_post(port: int, account: str, key: str, path: str) -> tuple[int, dict[str, Any]]:
    """POST an empty body to the emulator; (status, JSON body or {})."""
    from ..emulator.auth import sign, string_to_sign
    from ..emulator.errors import rfc1123

    query = f"api-version={API_VERSION}"
    # every signed header set here (urllib would add a Content-Type of its own to a POST)
    headers = {"ocp-date": rfc1123(), "Content-Length": "0", "Content-Type": "application/json; odata=minimalmetadata"}
    headers["Authorization"] = f"SharedKey {account}:{sign(key, string_to_sign('POST', path, query, headers, account))}"
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}?{query}", data=b"", method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:  # noqa: S310 - loopback only
            return resp.status, {}
    except urllib.error.HTTPError as e:
        try:
            body = json.loads(e.read(64 * 1024) or b"{}")
        except ValueError:
            body = {}
        return e.code, body if isinstance(body, dict) else {}
    except OSError as e:
        raise SpecError("--state-dir", f"no emulator answers on 127.0.0.1:{port} ({e})", RUNNING) from None


@click.command()
@click.option("--state-dir", required=True, type=click.Path(file_okay=False),
              help="the --state-dir of the running `mpibatch emulate`")
@click.argument("pool")
@click.argument("node")
@report_errors
def preempt(state_dir: str, pool: str, node: str) -> None:
    """Preempt Spot node NODE of POOL now, as Azure evicts a Spot VM: its processes are killed, its tasks
    requeued (requeueCount), and a new node replaces it shortly. Emulator only: not part of Batch."""
    port, account, key = _emulator(state_dir)
    path = "/_emulator/pools/{}/nodes/{}/preempt".format(*(urllib.parse.quote(x, safe="") for x in (pool, node)))
    status, body = signed_post(port, account, key, path)
    if status == 202:
        click.echo(f"node {node} of pool {pool}: preempted; its tasks are requeued and a new node replaces it")
        return
    message = str((body.get("message") or {}).get("value", "")).split("\n", 1)[0]
    if status in (400, 404, 409):
        raise SpecError(f"{pool}/{node}", f"{body.get('code', status)}: {message}",
                        "list the pool's nodes (GET /pools/POOL/nodes) and pick a Spot node that is not preempted")
    raise InfraError(f"the emulator answered {status} {body.get('code', '')}: {message}")
