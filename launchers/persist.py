#!/usr/bin/env python3
"""mpibatch persist step: one process per node, started by the application command after the MPI
program (through the same MPI launcher, one rank per node) when MPIBATCH_PERSIST_URL is set.

Subtasks have no Batch output files and their node files vanish with retention or reimage, so each
node uploads its own outputs and logs to the job container through a write-only SAS, under File
Conventions names with the instance in the path: {task}/${Kind}/{instance}/{path}. The primary's
outputs go through Batch output files (uploaded on completion), so the primary only records
instance.json. It first stops the node's tracker (track.py), which kept the logs live and saved
outputs while the program ran, and skips the files the tracker saved that did not change since.
Standard library only: this runs on the node, with outputnames.py (the names, the same module the
client uses), blobio.py (block uploads) and track.py shipped beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor

try:  # as the package mpibatch.launchers (client side, tests)
    from . import protocol
    from .blobio import BlobError, ContainerClient, b64
    from .outputnames import (
        INSTANCE_INFO,
                NameRuleError,
        instance_output_blob,
        match_outputs,
    )
    from .track import upload_instance_info
except ImportError:  # as a script on the node: the modules are shipped beside it
    import protocol  # type: ignore[no-redef]
    from blobio import BlobError, ContainerClient, b64  # type: ignore[no-redef]
    from outputnames import (  # type: ignore[no-redef]
        INSTANCE_INFO,
                NameRuleError,
        instance_output_blob,
        match_outputs,
    )
    from track import upload_instance_info  # type: ignore[no-redef]

FILES_IN_FLIGHT = 4


def planned_uploads(task: str, index: int, task_dir: str, wd: str,
                    outputs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(blob, local path) for what instance `index` persists: its logs, then its outputs (the primary's
    go through Batch output files, so it persists nothing but its instance.json)."""
    if index == 0:
        return []
    uploads = [(instance_output_blob(task, protocol.TASK_LOG, index, name), os.path.join(task_dir, name))
               for name in protocol.LOG_FILES if os.path.isfile(os.path.join(task_dir, name))
               and not os.path.islink(os.path.join(task_dir, name))]
    for kind, pattern in outputs:
        for rel in match_outputs(wd, [pattern]):
            uploads.append((instance_output_blob(task, kind, index, rel), os.path.join(wd, rel)))
    return uploads


def stop_tracker(task_dir: str, timeout: float = 60) -> dict:
    """End this node's tracker (it sends its last log bytes) and return what it had saved."""
    with open(os.path.join(task_dir, protocol.PERSIST_MARK), "w"):
        pass  # a tracker that starts from now on ends by itself
    try:
        with open(os.path.join(task_dir, protocol.TRACKER_PID_FILE)) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"track.py" not in f.read():
                raise ProcessLookupError  # the PID is another process's now
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            with open(f"/proc/{pid}/stat") as f:  # a zombie has exited: its parent reaps it
                if f.read().rsplit(")", 1)[-1].split()[0] == "Z":
                    break
            time.sleep(0.05)
    except (OSError, ValueError):
        pass  # no tracker on this node (none started, or it already ended)
    try:
        with open(os.path.join(task_dir, protocol.TRACKER_STATE_FILE)) as f:
            return json.load(f).get("sent") or {}
    except (OSError, ValueError):
        return {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", required=True)
    ap.add_argument("--output", action="append", default=[], help="Kind=pattern")
    ap.add_argument("--rank-vars", default=",".join(protocol.RANK_VARS), help="NAME,NAME: where the rank number is")
    args, _ = ap.parse_known_args(argv)  # the tracker's checkpoint arguments are not the persist step's
    url = os.environ.get("MPIBATCH_PERSIST_URL", "")
    if not url:  # a rehearsal's tracker that saved checkpoints only: it ends, nothing to persist
        if os.environ.get(protocol.CHECKPOINT_STORE_VAR):
            stop_tracker(protocol.whoami(args.rank_vars).task_dir)
        return 0
    who = protocol.whoami(args.rank_vars)
    index, task_dir, wd = who.index, who.task_dir, who.wd
    saved = stop_tracker(task_dir)
    outputs = protocol.decode_outputs(args.output)
    record = protocol.InstanceRecord.new(who, final=True, declared=outputs)
    client = ContainerClient(url)
    failures = 0
    try:
        uploads = planned_uploads(args.task, index, task_dir, wd, outputs)
    except NameRuleError as e:
        print(f"mpibatch persist: {e}", file=sys.stderr)
        uploads, failures = [], 1

    def one(item: tuple[str, str]) -> tuple[str, str, object]:
        blob, path = item
        try:
            before = saved.get(blob)
            st = os.stat(path)
            if before and (before["size"], before["mtime_ns"]) == (st.st_size, st.st_mtime_ns):
                return blob, path, {"size": before["size"], "md5": before["md5"]}  # the tracker sent it
            size, md5 = client.upload_file(path, blob)
            return blob, path, {"size": size, "md5": b64(md5)}
        except (BlobError, OSError) as e:  # the message names the file; the other files still go
            return blob, path, e

    with ThreadPoolExecutor(max_workers=FILES_IN_FLIGHT) as pool:
        for blob, path, got in pool.map(one, uploads):
            if isinstance(got, Exception):
                failures += 1
                record.failed[blob] = str(got)
                print(f"mpibatch persist: {path}: {got}", file=sys.stderr)
            else:
                record.files[blob] = got  # type: ignore[assignment]
    try:
        upload_instance_info(client, args.task, index, record, task_dir)
    except (BlobError, OSError) as e:
        print(f"mpibatch persist: {INSTANCE_INFO}: {e}", file=sys.stderr)
        failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
