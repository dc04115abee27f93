#!/usr/bin/env python3
"""mpibatch persist step: one process per node, started by the application command after the MPI
program (through the same MPI launcher, one rank per node) when MPIBATCH_PERSIST_URL is set.

Subtasks have no Batch output files and their node files vanish with retention or reimage, so each
node uploads its own outputs and logs to the job container through a write-only SAS, under File
Conventions names with the instance in the path: {task}/${Kind}/{instance}/{path}. The primary's
outputs go through Batch output files (uploaded on completion), so the primary only records
instance.json. Standard library only: this runs on the node.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import socket
import sys
import urllib.parse
import urllib.request

# Where the rank number is, when the command line does not say (--rank-vars, from the flavour).
RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MPI_LOCALRANKID")


def _pattern_regex(pattern: str) -> "re.Pattern[str]":
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def glob_match(rel_path: str, pattern: str) -> bool:
    """Glob semantics for output patterns: '*' and '?' stay within a directory, '**' spans
    directories. The one rule used by persist.py on Batch nodes and by the local/SSH collectors."""
    return _pattern_regex(pattern).match(rel_path) is not None


def match_outputs(root: str, pattern: str) -> list[str]:
    """Files under `root` matching `pattern`, as sorted relative paths (symlinks not followed)."""
    rx = _pattern_regex(pattern)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if rx.match(rel) and os.path.isfile(os.path.join(dirpath, name)) \
                    and not os.path.islink(os.path.join(dirpath, name)):
                found.append(rel)
    return sorted(found)


def instance_index(position: int, hosts: list[str], master: str) -> int:
    """Instance numbers: the primary (on the master node) is 0, subtasks follow in host-list order."""
    m = hosts.index(master) if master in hosts else 0
    if position == m:
        return 0
    return position + 1 if position < m else position


def _put(container_url: str, blob: str, path: str) -> None:
    base, _, sas = container_url.partition("?")
    url = f"{base.rstrip('/')}/{urllib.parse.quote(blob)}?{sas}"
    with open(path, "rb") as f:
        data = f.read()
    req = urllib.request.Request(url, data=data, method="PUT", headers={
        "x-ms-blob-type": "BlockBlob", "x-ms-version": "2021-08-06",
        "Content-MD5": base64.b64encode(hashlib.md5(data).digest()).decode()})
    for attempt in range(4):
        try:
            with urllib.request.urlopen(req, timeout=120):
                return
        except OSError as e:  # includes HTTPError; retry throttling and transient faults
            code = getattr(e, "code", None)
            if attempt == 3 or (code is not None and code < 500 and code != 429):
                raise RuntimeError(f"upload of {blob} failed: {getattr(e, 'reason', e)}") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", required=True)
    ap.add_argument("--output", action="append", default=[], help="Kind=pattern")
    ap.add_argument("--rank-vars", default=",".join(RANK_VARS), help="NAME,NAME: where the rank number is")
    args = ap.parse_args(argv)
    rank_vars = [v for v in args.rank_vars.split(",") if v] or list(RANK_VARS)
    url = os.environ.get("MPIBATCH_PERSIST_URL", "")
    if not url:
        return 0
    hosts = [h for h in os.environ.get("AZ_BATCH_HOST_LIST", "").split(",") if h]
    master = os.environ.get("AZ_BATCH_MASTER_NODE", "").rsplit(":", 1)[0]
    pos = next((int(os.environ[v]) for v in rank_vars if os.environ.get(v, "").isdigit()), 0)
    index = instance_index(pos, hosts, master)
    wd = os.path.realpath(os.getcwd())
    task_dir = os.path.dirname(wd)
    prefix = f"{args.task}/$TaskLog/{index}"
    info = {"index": index, "host": hosts[pos] if pos < len(hosts) else None,
            "hostname": socket.gethostname(), "node_id": _node_id(wd), "files": {}}
    uploads: list[tuple[str, str]] = []
    if index != 0:  # the primary's files are Batch output files
        for name in ("stdout.txt", "stderr.txt"):
            if os.path.isfile(os.path.join(task_dir, name)):
                uploads.append((f"{prefix}/{name}", os.path.join(task_dir, name)))
        for spec in args.output:
            kind, _, pattern = spec.partition("=")
            for rel in match_outputs(wd, pattern):
                uploads.append((f"{args.task}/${kind}/{index}/{rel}", os.path.join(wd, rel)))
    failures = 0
    for blob, path in uploads:
        try:
            _put(url, blob, path)
            info["files"][blob] = os.path.getsize(path)
        except (RuntimeError, OSError) as e:
            failures += 1
            print(f"mpibatch persist: {e}", file=sys.stderr)
    tmp = os.path.join(task_dir, "mpibatch-instance.json")
    with open(tmp, "w") as f:
        json.dump(info, f)
    _put(url, f"{prefix}/instance.json", tmp)
    return 1 if failures else 0


def _node_id(wd: str) -> str | None:
    try:
        with open(os.path.join(wd, ".mpibatch-node")) as f:
            return f.read().strip().partition("=")[2] or None
    except OSError:
        return os.environ.get("AZ_BATCH_NODE_ID")


if __name__ == "__main__":
    sys.exit(main())
