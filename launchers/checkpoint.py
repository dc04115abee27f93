#!/usr/bin/env python3
"""mpibatch checkpoints (docs/checkpoints.md): saved by the tracker while the program runs, restored on every
new attempt before the program starts (``python3 checkpoint.py restore ...``, one process per node).

A generation is one instance's checkpoint files at one moment, under the names of launchers/protocol.py:
the files first, then the manifest. It counts only when complete: every file unchanged for a whole interval
before it was copied, unchanged while it was copied, and its manifest written last. With ``from: all`` a
generation counts only when every instance has its manifest for that number. A checkpoint that was being
written when the node died has no manifest and is never restored.

With ``from: all`` the parts of one generation must also belong together: each manifest says when its files
were last written, and parts written `every` or more apart are different checkpoints (``mismatch``); restore
skips such a generation, and a tracker numbers a checkpoint as the other instances did (``aligned_number``).

The stores (checkpoint_store.py) are the job's container or a directory that stands in for it: the same names,
and the same rules above either. Standard library only: it runs on the nodes beside track.py.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable
from datetime import datetime, timezone

try:  # as the package mpibatch.launchers (client side, tests)
    from . import checkpoint_store, fileio, protocol
    from .blobio import BlobError
    from .outputnames import match_outputs
except ImportError:  # as a script on the node: the modules are shipped beside it
    import checkpoint_store  # type: ignore[no-redef]
    import fileio  # type: ignore[no-redef]
    import protocol  # type: ignore[no-redef]
    from blobio import BlobError  # type: ignore[no-redef]
    from outputnames import match_outputs  # type: ignore[no-redef]

# The names and stores, as callers have always found them here (ck.DirStore, ck.manifest_name...).
Store = checkpoint_store.Store
DirStore = checkpoint_store.DirStore
BlobStore = checkpoint_store.BlobStore
open_store = checkpoint_store.open_store
checkpoint_prefix, generation_prefix = checkpoint_store.checkpoint_prefix, checkpoint_store.generation_prefix
manifest_name, restore_record_prefix = checkpoint_store.manifest_name, checkpoint_store.restore_record_prefix
Manifest = protocol.CheckpointManifest
Signature = tuple[tuple[str, int, int], ...]  # (path, size, mtime_ns) of every matching file, sorted
Stamp = tuple["int | None", "float | None"]  # a part's newest file (mtime_ns) and its tracker's `every` (seconds)
SUFFIX = protocol.CHECKPOINT_MANIFEST_SUFFIX


# ---------------------------------------------------------------------------------------------- the rules (pure)
def scan(names: Iterable[str], task: str, index: int) -> tuple[set[int], set[int]]:
    """(every generation with something stored, the complete ones: those with a manifest) of instance
    `index`, from store names relative to the container."""
    head = checkpoint_prefix(task, index) + "/"
    present: set[int] = set()
    complete: set[int] = set()
    for name in names:
        if not name.startswith(head):
            continue
        first = name[len(head):].split("/", 1)[0]
        stem = first[:-len(SUFFIX)] if first.endswith(SUFFIX) and "/" not in name[len(head):] else first
        if not stem.isdigit():
            continue
        present.add(int(stem))
        if stem != first:
            complete.add(int(stem))
    return present, complete


def restorable(complete: dict[int, set[int]], instances: int, from_: str) -> int | None:
    """The newest generation to restore: the primary's newest complete one (``from: primary``), or the
    newest number every instance completed (``from: all``); None when there is none."""
    if from_ == "primary":
        gens = complete.get(0, set())
    else:
        sets = [complete.get(i, set()) for i in range(instances)]
        gens = set.intersection(*sets) if sets else set()
    return max(gens) if gens else None


def next_generation(present: Iterable[int]) -> int:
    """After the highest number any instance used: every node of an attempt starts from the same one."""
    return max(present, default=0) + 1


def to_prune(present: set[int], complete: set[int], keep: int) -> set[int]:
    """What goes once a generation completed: everything older than the `keep` newest complete ones
    (an incomplete generation newer than those may still be being written: it stays)."""
    kept = sorted(complete)[-keep:]
    return {g for g in present if kept and g < kept[0]}


def safe_rel(rel: str) -> bool:
    """A manifest's path stays inside the working directory (and is never one of mpibatch's own files)."""
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and ".." not in parts and not protocol.is_node_file(parts[-1])


def should_save(previous: Signature | None, current: Signature, saved: Signature | None) -> bool:
    """Save when the files are there, unchanged since the last look (a whole interval), and not the
    generation saved (or restored) last."""
    return bool(current) and current == previous and current != saved


def mismatch(parts: dict[int, Stamp]) -> str | None:
    """Why the parts of one generation (instance -> stamp) cannot be one checkpoint; None when they can be.
    A tracker saves files only once two looks, at least `every` apart, found them unchanged: the checkpoint after
    a saved one was written more than `every` later. The parts of one checkpoint are written at the same step,
    so within the nodes' clock skew of each other. Parts whose newest files are `every` or more apart are
    therefore parts of different checkpoints. A part without a stamp (an older manifest) is not checked."""
    known = {i: (t, e) for i, (t, e) in parts.items() if t is not None and e is not None}
    if len(known) < 2:
        return None
    every = min(e for _, e in known.values())
    old = min(known, key=lambda i: (known[i][0], i))
    new = max(known, key=lambda i: (known[i][0], -i))
    apart = (known[new][0] - known[old][0]) / 1e9
    if apart < every:
        return None
    return (f"instance {new}'s files were written {apart:.3g}s after instance {old}'s (the trackers look every "
            f"{every:g}s): parts of different checkpoints")


def aligned_number(mine: int, newest_ns: int, every: float, others: Iterable[tuple[int, Stamp]]) -> int:
    """The number of a new generation whose newest file was written at `newest_ns`, when this tracker would
    number it `mine`, given other instances' generations numbered `mine` or more (number, stamp): another
    instance's part of the same checkpoint (written within `every`) gives its number; one of an older
    checkpoint (`every` or more earlier: this tracker missed it) makes this one the next. Never below `mine`."""
    same: list[int] = []
    older: list[int] = []
    for g, (t, _) in others:
        if t is not None and abs(t - newest_ns) < every * 1e9:
            same.append(g)
        elif t is not None and t < newest_ns:
            older.append(g)
    if same:
        return max([mine, *same])
    return max([mine, *(g + 1 for g in older)])


def stamp(m: Manifest) -> Stamp:
    return m.newest_mtime_ns, m.every


def signature(wd: str, pattern: str) -> Signature:
    files = []
    for rel in match_outputs(wd, [pattern]):
        if protocol.is_node_file(os.path.basename(rel)):
            continue
        try:
            st = os.stat(os.path.join(wd, rel))
        except OSError:
            continue
        files.append((rel, st.st_size, st.st_mtime_ns))
    return tuple(sorted(files))


def complete_generations(store: Store, task: str, instances: int) -> tuple[dict[int, set[int]], set[int]]:
    """Per instance its complete generations, and every generation number used by any instance."""
    names = store.names(f"{task}/${protocol.TASK_INTERMEDIATE}")
    complete: dict[int, set[int]] = {}
    used: set[int] = set()
    for i in range(instances):
        present, done = scan(names, task, i)
        complete[i], used = done, used | present
    return complete, used


# ---------------------------------------------------------------------------------------------- saving
class Saver:
    """Instance `index`'s checkpoints, saved by its tracker: one look every `every` seconds."""

    def __init__(self, store: Store, task: str, index: int, instances: int, wd: str, pattern: str, keep: int,
                 node_id: str | None, restored: Signature | None = None, every: float | None = None) -> None:
        self.store, self.task, self.index, self.wd, self.pattern, self.keep = store, task, index, wd, pattern, keep
        self.node_id, self.instances, self.every = node_id, instances, every
        _, used = complete_generations(store, task, instances)
        self.generation = next_generation(used)  # read before any node of this attempt saved one
        self.previous: Signature | None = None
        self.saved = restored  # what the restore step put back is not saved again

    def look(self) -> int | None:
        """Save a generation if the files are quiet and new; returns its number."""
        current = signature(self.wd, self.pattern)
        previous, self.previous = self.previous, current
        if not should_save(previous, current, self.saved):
            return None
        newest = max(m for _, _, m in current)
        g = self.aligned(newest)
        files: dict[str, dict[str, object]] = {}
        for rel, size, mtime_ns in current:
            path = os.path.join(self.wd, rel)
            files[rel] = self.store.put(path, f"{generation_prefix(self.task, self.index, g)}/{rel}")
            st = os.stat(path)
            if (st.st_size, st.st_mtime_ns) != (size, mtime_ns) or files[rel]["size"] != size:
                self.store.delete_generation(self.task, self.index, g)  # changed while copied: next look
                self.previous = None
                return None
        manifest = Manifest(generation=g, index=self.index, node_id=self.node_id, files=files,
                            saved_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            newest_mtime_ns=newest if self.every else None, every=self.every)
        self.store.put_bytes(manifest_name(self.task, self.index, g), manifest.to_json().encode())
        self.saved, self.generation = current, g + 1
        present, complete = scan(self.store.names(checkpoint_prefix(self.task, self.index)), self.task, self.index)
        for old in to_prune(present, complete, self.keep):
            self.store.delete_generation(self.task, self.index, old)
        return g

    def aligned(self, newest: int) -> int:
        """This checkpoint's number, as the other instances numbered theirs (``aligned_number``): a tracker
        that missed a checkpoint the others saved numbers its later ones as they do again."""
        if self.instances < 2 or not self.every:
            return self.generation
        names = self.store.names(f"{self.task}/${protocol.TASK_INTERMEDIATE}")
        others: list[tuple[int, Stamp]] = []
        for i in range(self.instances):
            for g in sorted(scan(names, self.task, i)[1]) if i != self.index else ():
                if g >= self.generation:
                    try:
                        others.append((g, stamp(Manifest.from_json(self.store.read(manifest_name(self.task, i, g))))))
                    except (OSError, ValueError, BlobError):  # pruned meanwhile, or unreadable: not a clue
                        pass
        return aligned_number(self.generation, newest, self.every, others)


# ---------------------------------------------------------------------------------------------- restoring
def newest_restorable(store: Store, task: str, instances: int, from_: str) -> tuple[int | None, list[str]]:
    """The generation to restore (None: none), and a line for each newer complete one skipped because its
    parts are not one checkpoint (``mismatch``, ``from: all``). Every node, and the client, decide the same."""
    complete, _ = complete_generations(store, task, instances)
    skipped: list[str] = []
    while (g := restorable(complete, instances, from_)) is not None and from_ == "all":
        why = mismatch({i: stamp(Manifest.from_json(store.read(manifest_name(task, i, g)))) for i in range(instances)})
        if why is None:
            break
        skipped.append(f"checkpoint generation {g} skipped: {why}")
        for done in complete.values():
            done.discard(g)
    return g, skipped


def restore(store: Store, task: str, index: int, instances: int, from_: str, wd: str) -> tuple[int | None, str]:
    """Put instance `index`'s part of the newest complete generation into `wd`, verified. Returns the
    generation (None: none complete) and a line for the log. The primary records what it restored."""
    t0 = time.monotonic()
    g, skipped = newest_restorable(store, task, instances, from_)
    files = size = 0
    if g is None:
        line = "no complete checkpoint generation: the program starts fresh"
    elif from_ == "all" or index == 0:
        manifest = Manifest.from_json(store.read(manifest_name(task, index, g)))
        for rel, info in sorted(manifest.files.items()):
            if safe_rel(rel):
                store.get(f"{generation_prefix(task, index, g)}/{rel}", os.path.join(wd, rel),
                          int(info["size"]), str(info["md5"]))
                files, size = files + 1, size + int(info["size"])
        line = f"restored checkpoint generation {g}: {files} files"
    else:
        line = f"checkpoint generation {g} restored on the primary"
    line = "\n".join([*skipped, line])
    if index == 0:
        try:  # only what `status` shows: the program starts all the same
            store.record_restore(task, {"generation": g, "files": files, "bytes": size,
                                        "seconds": round(time.monotonic() - t0, 3)})
        except (OSError, BlobError) as e:
            line += f" (not recorded for status: {e})"
    return g, line


def export_lines(generation: int | None) -> str:
    """What the node's environment file gets: the program sees whether it restarts, and from what."""
    if generation is None:
        return f"unset {protocol.RESTART_VAR} {protocol.CHECKPOINT_VAR}\n"
    return f"export {protocol.RESTART_VAR}=1\nexport {protocol.CHECKPOINT_VAR}={generation}\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("action", choices=["restore"])
    ap.add_argument("--task", required=True)
    ap.add_argument("--checkpoint", required=True, help="the pattern of the checkpoint files")
    ap.add_argument("--checkpoint-from", choices=["primary", "all"], default="primary")
    ap.add_argument("--rank-vars", default=",".join(protocol.RANK_VARS))
    args, _ = ap.parse_known_args(argv)  # the tracker's other arguments are not ours
    store = open_store()
    if store is None:
        return 0
    who = protocol.whoami(args.rank_vars)
    instances = len([h for h in os.environ.get("AZ_BATCH_HOST_LIST", "").split(",") if h]) or 1
    try:
        g, line = restore(store, args.task, who.index, instances, args.checkpoint_from, who.wd)
    except (OSError, BlobError, protocol.RecordError) as e:
        print(f"mpibatch checkpoint [{who.index}]: restoring failed: {e}", file=sys.stderr)
        return 1
    for text in line.splitlines():
        print(f"mpibatch checkpoint [{who.index}]: {text}", file=sys.stderr)
    env_file = os.path.join(who.wd, protocol.NODE_ENV_FILE)
    with fileio.open_regular(env_file) as f:
        before = f.read(1024 * 1024)
    fileio.write_bytes(env_file, before + export_lines(g).encode())
    state = signature(who.wd, args.checkpoint) if g is not None else ()
    fileio.write_bytes(os.path.join(who.task_dir, protocol.CHECKPOINT_STATE_FILE),
                       json.dumps({"generation": g, "files": state}).encode())
    return 0


def restored_signature(task_dir: str) -> Signature | None:
    """What the restore step of this attempt put back (the tracker does not save it again)."""
    try:
        data = json.loads(fileio.read_range(os.path.join(task_dir, protocol.CHECKPOINT_STATE_FILE), 0, 1 << 20))
        return tuple((str(r), int(s), int(m)) for r, s, m in data["files"]) or None
    except (OSError, ValueError, KeyError, TypeError):
        return None


if __name__ == "__main__":
    sys.exit(main())
