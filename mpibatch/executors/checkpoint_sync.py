"""Checkpoints on rehearsal nodes that do not see this machine's runs directory (SSH hosts).

Each node's tracker writes its generations into a store directory of its own, under the node's shared
directory (gone with the node when it is evicted, as a VM's disk is). The executor pulls every new complete
generation from there into the run's store (docs/checkpoints.md) every `every` seconds while the program runs,
and before each attempt pushes the newest complete generation to the nodes, where the restore step finds it.
Pulling from the controller keeps the hosts free of any credential or route back to this machine; what a node
saved after the last pull is lost with it, as a checkpoint a real node had not uploaded yet would be.
"""
from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..launchers import checkpoint as ck
from ..launchers import protocol
from ..spec_model import Checkpoint
from .collection import CollectError

if TYPE_CHECKING:
    from .transport import Node, Transport

log = logging.getLogger(__name__)
NODE_STORE = f"{protocol.NODE_FILE_PREFIX}checkpoints"  # under the node's shared directory


def newest_complete(store: Path, task_id: str, instances: int, checkpoint: Checkpoint) -> int | None:
    """The generation the nodes' restore step will put back from `store` (the same rule)."""
    return ck.newest_restorable(ck.DirStore(str(store)), task_id, instances, checkpoint.from_)[0]


class NodeStores:
    def __init__(self, t: Transport, store: Path, task_id: str, instances: int, checkpoint: Checkpoint) -> None:
        self.t, self.store, self.task, self.instances, self.c = t, store, task_id, instances, checkpoint
        self.client = ck.DirStore(str(store))
        self.next_pull = 0.0

    @staticmethod
    def node_dir(node: Node) -> str:
        return f"{node.root}/shared/{NODE_STORE}"

    def env(self, node: Node) -> dict[str, str]:
        return {protocol.CHECKPOINT_STORE_VAR: self.node_dir(node)}

    def _parts(self) -> Sequence[int]:
        return range(self.instances) if self.c.from_ == "all" else (0,)

    def push(self, nodes: Sequence[Node]) -> int | None:
        """Every node's store emptied, then given the newest complete generation: every manifest of it (the
        restore step decides from them) and the node's own files. Returns the generation."""
        for n in nodes:
            self.t.make_dirs(n, [self.node_dir(n)], clean=[self.node_dir(n)])
        g = newest_complete(self.store, self.task, self.instances, self.c)
        if g is None:
            return None
        for i in self._parts():
            manifest = ck.Manifest.from_json(self.client.read(ck.manifest_name(self.task, i, g)))
            for n in nodes:
                if n.index == i:
                    for rel in manifest.files:
                        name = f"{ck.generation_prefix(self.task, i, g)}/{rel}"
                        self.t.put(n, self.store / name, f"{self.node_dir(n)}/{name}")
            for n in nodes:  # the manifests last, as everywhere
                name = ck.manifest_name(self.task, i, g)
                self.t.put(n, self.store / name, f"{self.node_dir(n)}/{name}")
        return g

    def pull(self, nodes: Sequence[Node], *, force: bool = False) -> None:
        """Copy the nodes' new complete generations into the run's store (at most every `every` seconds)."""
        now = time.monotonic()
        if not force and now < self.next_pull:
            return
        self.next_pull = now + self.c.every
        for n in nodes:
            if n.index not in self._parts():
                continue
            try:
                self._pull_one(n)
            except (OSError, ValueError) as e:  # a node busy or gone: the next pull tries again
                log.warning("checkpoints of instance %s not pulled: %s", n.index, e)

    def _collect(self, n: Node, pattern: str, dest: Path) -> list[str]:
        try:
            return self.t.collect(n, self.node_dir(n), [pattern], dest)
        except CollectError as e:
            return e.files

    def _pull_one(self, n: Node) -> None:
        have = ck.scan(self.client.names(self.task), self.task, n.index)[1]
        prefix = ck.checkpoint_prefix(self.task, n.index)
        with tempfile.TemporaryDirectory(prefix=protocol.NODE_FILE_PREFIX) as tmp:
            got = ck.DirStore(tmp)
            listed = ck.scan(self._collect(n, f"{prefix}/*{ck.SUFFIX}", Path(tmp)), self.task, n.index)[1]
            for g in sorted(g for g in listed if g > max(have, default=0)):  # older ones were pulled (or pruned)
                manifest = ck.Manifest.from_json(got.read(ck.manifest_name(self.task, n.index, g)))
                gen = ck.generation_prefix(self.task, n.index, g)
                self._collect(n, f"{gen}/**", Path(tmp))
                for rel, info in manifest.files.items():  # verified against the manifest, then the manifest
                    if not ck.safe_rel(rel):
                        raise ValueError(f"generation {g} names {rel!r}, a path outside the working directory")
                    got.get(f"{gen}/{rel}", str(self.store / gen / rel), int(info["size"]), str(info["md5"]))
                self.client.put_bytes(ck.manifest_name(self.task, n.index, g), manifest.to_json().encode())
        present, complete = ck.scan(self.client.names(self.task), self.task, n.index)
        for old in ck.to_prune(present, complete, self.c.keep):
            self.client.delete_generation(self.task, n.index, old)
