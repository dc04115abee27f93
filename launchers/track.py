#!/usr/bin/env python3
"""mpibatch tracker: one process per node while the application runs, started by the application
command beside the MPI program (through the same MPI launcher, one rank per node) when
MPIBATCH_PERSIST_URL is set; the node's persist step stops it when the program has exited.

What it keeps in the job's container while the task runs (docs/file-conventions.md#live):
- the instance's stdout.txt / stderr.txt, as append blobs ``{task}/$TaskLog/{i}/live/std*.txt``,
  refreshed every interval (only appended bytes, as the .NET library's tracked saves);
- on subtasks, every declared output under its final name, once it has stayed unchanged for a whole
  outputs interval, and an instance.json marked not final that says what was saved and when.
So a timeout, a crash or a lost node still leaves the logs and outputs of the last interval. The
primary's outputs need none of this: Batch uploads them when the task ends, whatever the reason.
Standard library only: it runs on the node, beside persist.py, outputnames.py and blobio.py.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from datetime import datetime, timezone

try:  # as the package mpibatch.launchers (client side, tests)
    from . import checkpoint, protocol
    from .blobio import BlobError, ContainerClient, b64
    from .outputnames import instance_info_blob, instance_output_blob, live_log_blob, match_outputs
except ImportError:  # as a script on the node: the modules are shipped beside it
    import checkpoint  # type: ignore[no-redef]
    import protocol  # type: ignore[no-redef]
    from blobio import BlobError, ContainerClient, b64  # type: ignore[no-redef]
    from outputnames import (  # type: ignore[no-redef]
                instance_info_blob,
        instance_output_blob,
        live_log_blob,
        match_outputs,
    )

InstanceRecord = protocol.InstanceRecord
PID_FILE = protocol.TRACKER_PID_FILE  # in the instance's task directory: how persist.py finds the tracker
PERSIST_MARK = protocol.PERSIST_MARK  # written by persist.py before it looks for the tracker
STATE_FILE = protocol.TRACKER_STATE_FILE  # what the tracker saved, so the persist step skips unchanged files
LOG_INTERVAL = 15.0  # seconds between log refreshes (the .NET library's default for tracked files is 1 min)
INTERVAL_VAR = "MPIBATCH_TRACK_INTERVAL"  # a task environment setting that changes it
OUTPUT_TICKS = 4  # outputs are looked at every 4th refresh (60 s by default)
MAX_APPEND_READ = 4 * 1024 * 1024
MAX_LIFETIME = 400 * 24 * 3600  # a bound on the loop; Batch's longest wall clock is far below it


class AppendFollower:
    """Keeps the append blob `blob` equal to a prefix of the local file `path`: each flush appends what
    was added to the file since the last one. Bytes rewritten in place, or a file that shrinks, are
    not sent again (only appends are persisted). Shared by the tracker and TrackedFile. `resume`
    (it needs read permission) continues an append blob that holds the start of the file."""

    def __init__(self, client: ContainerClient, path: str, blob: str, *, resume: bool = False) -> None:
        self.client, self.path, self.blob, self.resume = client, path, blob, resume
        self.sent = 0
        self.ready = False
        self._lock = threading.Lock()

    def start(self) -> None:
        """Resume an append blob that holds the start of this file; else (re)create it."""
        try:
            info = self.client.properties(self.blob) if self.resume else None
            if info and info.blob_type == "AppendBlob" and info.size <= _size(self.path):
                self.sent, self.ready = info.size, True
                return
        except BlobError as e:
            if e.status != 404:
                raise
        self.client.create_append_blob(self.blob)
        self.sent, self.ready = 0, True

    def flush(self) -> int:
        """Send what was appended since the last flush; returns the bytes sent. A file that does not
        exist yet sends nothing (and creates no blob)."""
        with self._lock:
            try:
                f = open(self.path, "rb")
            except FileNotFoundError:
                return 0
            with f:
                if not self.ready:
                    self.start()
                if os.fstat(f.fileno()).st_size < self.sent:  # truncated or rewritten in place: start the copy
                    self.client.create_append_blob(self.blob)  # again, so a follower sees it shrink (and reprints)
                    self.sent = 0
                f.seek(self.sent)
                sent = 0
                while data := f.read(MAX_APPEND_READ):
                    self.client.append(self.blob, data, self.sent)
                    self.sent += len(data)
                    sent += len(data)
                return sent


class OutputSaver:
    """A subtask's declared outputs, saved while the program runs: a file is sent once it has been
    unchanged for a whole outputs interval (a file still being written is never stored half-done)
    and differs from what was sent last."""

    def __init__(self, client: ContainerClient, task: str, index: int, wd: str,
                 outputs: list[tuple[str, str]], identity: protocol.Identity) -> None:
        self.client, self.task, self.index, self.wd, self.outputs = client, task, index, wd, outputs
        self.seen: dict[str, tuple[int, int]] = {}  # blob -> (size, mtime_ns) at the previous look
        self.sent: dict[str, dict] = {}  # blob -> {"size", "md5", "mtime_ns"}
        self.failed: dict[str, str] = {}
        self.identity = identity
        self.saved_at = ""

    def look(self) -> int:
        """One pass over the declared patterns; returns the files sent."""
        sent = 0
        for kind, pattern in self.outputs:
            for rel in match_outputs(self.wd, [pattern]):
                try:
                    blob = instance_output_blob(self.task, kind, self.index, rel)
                except ValueError:  # a name no blob can have: the persist step reports it
                    continue
                path = os.path.join(self.wd, rel)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                key = (st.st_size, st.st_mtime_ns)
                quiet, self.seen[blob] = self.seen.get(blob) == key, key
                done = self.sent.get(blob)
                if not quiet or (done and (done["size"], done["mtime_ns"]) == key):
                    continue
                try:
                    size, md5 = self.client.upload_file(path, blob)
                except (BlobError, OSError) as e:  # changed meanwhile, throttled...: the next look tries again
                    self.failed[blob] = str(e)
                    continue
                self.failed.pop(blob, None)
                self.sent[blob] = {"size": size, "md5": b64(md5), "mtime_ns": st.st_mtime_ns}
                sent += 1
        if sent:
            self.saved_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
            self.record()
        return sent

    def record(self) -> None:
        """instance.json, not final: what a task that never reaches its persist step still has."""
        record = InstanceRecord.new(self.identity, final=False, declared=self.outputs)
        record.saved_at = self.saved_at
        record.files = {b: {"size": v["size"], "md5": v["md5"]} for b, v in self.sent.items()}
        record.failed = dict(self.failed)
        upload_instance_info(self.client, self.task, self.index, record, os.path.dirname(self.wd))


def run(client: ContainerClient, task: str, index: int, task_dir: str, wd: str, outputs: list[tuple[str, str]],
        identity: protocol.Identity, *, interval: float = LOG_INTERVAL, stop: threading.Event | None = None) -> int:
    """Track until `stop` is set (SIGTERM from the persist step) or the launcher that started us is
    gone; a last refresh then. Returns 0, or 1 when the last refresh could not be sent."""
    stop = stop or threading.Event()
    logs = [AppendFollower(client, os.path.join(task_dir, n), live_log_blob(task, index, n))
            for n in protocol.LOG_FILES]
    saver = OutputSaver(client, task, index, wd, outputs, identity) if index > 0 and outputs else None
    parent = os.getppid()
    complained: set[str] = set()
    if saver is not None and not stop.is_set():
        # A first record says what this node was told to keep, so a task that ends before any output
        # was saved (and before the persist step) still names each declared output in collect's result.
        # Not when the persist step already began: its final record must not be replaced.
        try:
            saver.record()
        except (BlobError, OSError) as e:
            complained.add(str(e))
            print(f"mpibatch track: {e}", file=sys.stderr)
    deadline = time.monotonic() + MAX_LIFETIME
    tick = 0
    while not stop.wait(interval) and os.getppid() == parent and time.monotonic() < deadline:
        tick += 1
        steps = [f.flush for f in logs]
        if saver is not None and tick % OUTPUT_TICKS == 0:
            steps.append(saver.look)
        for step in steps:
            try:
                step()
            except (BlobError, OSError) as e:  # storage down for a while: try again next time, say it once
                if str(e) not in complained:
                    complained.add(str(e))
                    print(f"mpibatch track: {e}", file=sys.stderr)
    failures = 0
    for f in logs:
        try:
            f.flush()
        except (BlobError, OSError) as e:
            failures += 1
            print(f"mpibatch track: {f.path}: {e}", file=sys.stderr)
    if saver is not None:
        _write_json(os.path.join(task_dir, STATE_FILE), {"sent": saver.sent})
    return 1 if failures else 0


def checkpoints(saver: checkpoint.Saver, every: float, stop: threading.Event) -> None:
    """Look for a new checkpoint every `every` seconds until `stop` (the tracker's own thread)."""
    complained: set[str] = set()
    deadline = time.monotonic() + MAX_LIFETIME
    while not stop.wait(every) and time.monotonic() < deadline:
        try:
            g = saver.look()
            if g is not None:
                print(f"mpibatch track: checkpoint generation {g} saved", file=sys.stderr)
        except (OSError, ValueError, BlobError) as e:  # the store full or away for a while: the next look tries again
            if str(e) not in complained:
                complained.add(str(e))
                print(f"mpibatch track: checkpoint: {e}", file=sys.stderr)


def _checkpoint_saver(args: argparse.Namespace, identity: protocol.Identity) -> checkpoint.Saver | None:
    """The saver of this node's checkpoints, if the task has them, a store is given and this node's
    files are part of a generation (every node with `from: all`, else the primary)."""
    store = checkpoint.open_store()
    if not args.checkpoint or store is None or (args.checkpoint_from == "primary" and identity.index != 0):
        return None
    instances = len([h for h in os.environ.get("AZ_BATCH_HOST_LIST", "").split(",") if h]) or 1
    return checkpoint.Saver(store, args.task, identity.index, instances, identity.wd,
                            args.checkpoint, args.checkpoint_keep, identity.node_id,
                            restored=checkpoint.restored_signature(identity.task_dir), every=args.checkpoint_every)


def _wait_only(stop: threading.Event) -> int:
    """No storage for logs and outputs (a rehearsal's checkpoints only): wait for the end."""
    parent, deadline = os.getppid(), time.monotonic() + MAX_LIFETIME
    while not stop.wait(1.0) and os.getppid() == parent and time.monotonic() < deadline:
        pass
    return 0


def _interval(text: str) -> float:
    try:
        value = float(text)
        if 0.1 <= value <= 86400:
            return value
    except ValueError:
        pass
    if text:
        print(f"mpibatch track: {INTERVAL_VAR}={text!r} is not a number of seconds from 0.1 to 86400; "
              f"using {LOG_INTERVAL:g}", file=sys.stderr)
    return LOG_INTERVAL


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def upload_instance_info(client: ContainerClient, task: str, index: int, record: InstanceRecord,
                         task_dir: str) -> None:
    """Store `record` as instance `index`'s instance.json (the tracker's, then the persist step's)."""
    tmp = os.path.join(task_dir, f"{protocol.NODE_FILE_PREFIX}instance.{os.getpid()}.json")
    try:
        with open(tmp, "w") as f:
            f.write(record.to_json())
        client.upload_file(tmp, instance_info_blob(task, index), content_type="application/json")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_json(path: str, data: dict) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", required=True)
    ap.add_argument("--output", action="append", default=[], help="Kind=pattern")
    ap.add_argument("--rank-vars", default=",".join(protocol.RANK_VARS))
    ap.add_argument("--interval", type=float, default=None, help=f"seconds (default: ${INTERVAL_VAR} or 15)")
    ap.add_argument("--checkpoint", default="", help="task.checkpoint.pattern")
    ap.add_argument("--checkpoint-from", choices=["primary", "all"], default="primary")
    ap.add_argument("--checkpoint-every", type=float, default=600.0)
    ap.add_argument("--checkpoint-keep", type=int, default=2)
    args = ap.parse_args(argv)
    interval = args.interval or _interval(os.environ.get(INTERVAL_VAR, ""))
    url = os.environ.get("MPIBATCH_PERSIST_URL", "")
    if not url and not any(os.environ.get(v) for v in (protocol.CHECKPOINT_STORE_VAR, protocol.CHECKPOINT_URL_VAR)):
        return 0
    identity = protocol.whoami(args.rank_vars)
    task_dir = identity.task_dir
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    pid_file = os.path.join(task_dir, PID_FILE)
    with open(f"{pid_file}.tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(f"{pid_file}.tmp", pid_file)
    # Started after the persist step looked for us (a program that ended at once): one flush, then end.
    # Each side writes its file before reading the other's, so at least one of them sees the other.
    if os.path.exists(os.path.join(task_dir, PERSIST_MARK)):
        stop.set()
    try:
        saver = _checkpoint_saver(args, identity)
    except (OSError, ValueError, BlobError) as e:  # the store unreachable at the start: no checkpoints this time
        print(f"mpibatch track: checkpoint: {e}", file=sys.stderr)
        saver = None
    saving = threading.Thread(target=checkpoints, args=(saver, args.checkpoint_every, stop), daemon=True) \
        if saver else None
    try:
        if saving:
            saving.start()
        if not url:
            return _wait_only(stop)
        outputs = protocol.decode_outputs(args.output)
        return run(ContainerClient(url), args.task, identity.index, task_dir, identity.wd, outputs, identity,
                   interval=interval, stop=stop)
    finally:
        stop.set()
        if saving:
            saving.join(timeout=60)
        try:
            os.unlink(pid_file)
        except OSError:
            pass


if __name__ == "__main__":
    sys.exit(main())
