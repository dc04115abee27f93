"""A multi-instance task's rehearsal nodes run as a node's user, as every other task of `mpibatch emulate`
does when it runs as root (identity.py): never as the emulator's own user.

The local executor's run (one user and PID namespace, a mount and UTS namespace per node) is started by the
primary pool node's host user instead of root, so all of it is that unprivileged user to the host. Four
namespace levels, each made by the one above:
- P, the run's user namespace (root in it is the node's host user), and the run's mount namespace, where the
  emulator (root) first makes /tmp and /var/tmp private and exposes the nodes' image read-only (`exposure`);
- X, the task's user namespace, made by root of P: the task's user is root in X (elevated) or NONADMIN_UID;
- M, the nodes' user namespace, made by the task's user in X; node i's mount and UTS namespaces (made in M
  by launchers/local_nodes.py) hold node i. The mounts copied from P's mount namespace are locked there: not
  even an elevated task can unmount its private /tmp or the image to reach what is underneath.
The task's processes live in X and in node i's mount namespace. An elevated task is root of X and of every
node below it; a non-admin one has no capability at all, yet owns M (it made it): the remote-shell
agent enters node j through M, as the same non-root user (launchers/local_rsh.sh). Nothing they write
outside their node's directory reaches the host: the rest of the host is not that user's to write.
"""
from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import InfraError
from ..executors.local import LocalTransport
from ..executors.transport import GroupProc, Node, split_command_line
from ..executors.userns import child_pid, in_directory, ns_pid, tool
from ..launchers import fileio, script_path
from . import identity

PRIVATE_DIRS = ("/tmp", "/var/tmp")  # the run's own (tmpfs), as every other task's are (identity.INIT_SCRIPT)
FIRST_FD = 3


def can_enter(st: os.stat_result, uid: int) -> bool:
    """May `uid` (in no group but its own) pass through a directory with this stat? Pure."""
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == uid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def first_closed(path: str, uid: int, stat_of: Callable[[str], os.stat_result]) -> str | None:
    """The first directory on the way to `path` (itself included) that `uid` may not pass; None if all open."""
    parts = PurePosixPath(path).parts
    for n in range(1, len(parts) + 1):
        d = str(PurePosixPath(*parts[:n]))
        try:
            if not can_enter(stat_of(d), uid):
                return d
        except OSError:
            return None  # not there: nothing to expose
    return None


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def exposure(uid: int, image: Iterable[str], writable: Iterable[str], private: Sequence[str],
             stat_of: Callable[[str], os.stat_result] = os.stat) -> tuple[list[str], list[tuple[str, bool]]]:
    """What the run's mount namespace needs so that `uid` reaches the image (read-only) and `writable`: the
    directories to hide under a tmpfs (`private` ones, and the first closed one on the way to each path),
    and the paths to bind back at their place ((path, writable), outer ones first). Pure but for stat_of."""
    wanted = [(p, False) for p in image] + [(p, True) for p in writable]
    covers = {d for d in private}
    for p, _ in wanted:
        closed = first_closed(p, uid, stat_of)
        if closed is not None and closed != p:  # a closed path itself cannot be helped by a bind
            covers.add(closed)
    outer = sorted(c for c in covers if not any(o != c and _under(c, o) for o in covers))
    binds: dict[str, bool] = {}
    for p, rw in wanted:
        if any(_under(p, c) and p != c for c in outer):  # the bind passes every closed directory on the way
            binds[p] = binds.get(p, False) or rw
    return outer, sorted(binds.items(), key=lambda b: (len(PurePosixPath(b[0]).parts), b[0]))


def image_paths(env: Mapping[str, str]) -> list[str]:
    """What a node's image is made of: the directories of PATH and LD_LIBRARY_PATH (a venv's bin directory: the
    whole venv, whose pyvenv.cfg and site-packages its Python needs), the Python installations the venvs were
    made from, this Python's, and the node-side scripts. Real paths, no repeats."""
    found: list[str] = []
    dirs = [d for var in ("PATH", "LD_LIBRARY_PATH") for d in env.get(var, "").split(os.pathsep) if d]
    for d in [*dirs, sys.base_prefix, os.path.dirname(script_path("local_rsh.sh"))]:
        cfg = Path(d).parent / "pyvenv.cfg"
        try:
            home = next(line.split("=", 1)[1].strip() for line in cfg.read_text().splitlines()
                        if line.split("=", 1)[0].strip() == "home")
        except (OSError, StopIteration):
            found.append(os.path.realpath(d))
            continue
        found += [os.path.realpath(cfg.parent), os.path.dirname(os.path.realpath(home))]
    return [p for i, p in enumerate(found) if p not in found[:i] and os.path.isdir(p)]


def mask_script(covers: Sequence[str], binds: Sequence[tuple[str, bool]], private: Sequence[str]) -> str:
    """The bash lines that make the exposure: every source opened first (while still reachable), then the
    tmpfs covers, then each source bound back at its place (read-only unless writable)."""
    lines = ["set -e"]
    for n, (path, _) in enumerate(binds):
        lines.append(f"exec {FIRST_FD + n}<{shlex.quote(path)}")
    for c in covers:
        mode = "mode=1777,nosuid,nodev,size=50%" if c in private else "mode=755,size=1m"
        lines.append(shlex.join(["mount", "-t", "tmpfs", "-o", mode, "tmpfs", c]))
    if binds:  # every bind's place on the covers, in one process
        lines.append(shlex.join(["mkdir", "-p", *(path for path, _ in binds)]))
    for n, (path, rw) in enumerate(binds):
        how = ["--rbind"] if rw else ["--bind", "-o", "ro"]
        lines.append(shlex.join(["mount", "--no-canonicalize", *how, f"/proc/self/fd/{FIRST_FD + n}", path]))
    return "\n".join(lines)


class NodeUserTransport(LocalTransport):
    """The local executor's transport, every node process run as `user` (see the module's text)."""

    def __init__(self, user: identity.TaskUser, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.user = user
        self.spawn_as = user.popen_args()
        self.anchor_pid = 0
        self.owned = False

    def node_user(self, node: Node) -> identity.TaskUser:
        """The user, with node i's tree (as this machine sees it) as the root of its files."""
        return identity.TaskUser(self.user.uid, self.user.elevated, str(self.workdir / "nodes" / str(node.index)))

    def _start_run_init(self) -> None:
        if not self.owned:  # made by the emulator just now: open to the node user, who gets each node's TMPDIR
            self.workdir.chmod(0o755)
            for nd in self.nodes:
                identity.chown_tree(self.host_path(nd, self.node_tmp), self.user.uid)
            self.owned = True
        super()._start_run_init()
        self._expose()
        self._start_anchor()

    def _expose(self) -> None:
        """Private /tmp and /var/tmp, and the image, in the run's mount namespace (done as root: the image
        may be under a directory only root may enter, e.g. a 0700 /root)."""
        private = [d for d in PRIVATE_DIRS if os.path.isdir(d)]
        covers, binds = exposure(self.user.uid, image_paths(self.helper_env), [str(self.workdir)], private)
        r = subprocess.run(["nsenter", "-t", str(self.run_init_pid), "-m", "-p", "--", "/bin/bash", "-c",
                            mask_script(covers, binds, private)], env=self.helper_env, stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=60)
        if r.returncode != 0:
            raise InfraError("could not expose the node image to the node's user: "
                             + r.stderr.decode(errors="replace").strip()[-500:])

    def _start_anchor(self) -> None:
        """X, the task's user namespace, held by one sleeping process of the run (ended with it)."""
        who = (["--map-root-user"] if self.user.elevated else
               [f"--map-user={identity.NONADMIN_UID}", f"--map-group={identity.NONADMIN_UID}"])
        p = subprocess.Popen([*super()._enter(self.run_init_pid, "-p", "-m"), "unshare", "--user", *who, "--",
                              "sleep", "infinity"], env=self.helper_env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                             **self.user.popen_args())
        self.procs.append(GroupProc(p))
        self.anchor_pid = child_pid(p.pid)
        run_ns = os.readlink(f"/proc/{self.run_init_pid}/ns/user")
        for _ in range(400):  # its namespace exists once unshare has exec'd sleep (2 s at most)
            try:
                if os.readlink(f"/proc/{self.anchor_pid}/ns/user") != run_ns:
                    return
            except OSError:
                break  # it died
            if p.poll() is not None:
                break
            time.sleep(0.005)
        raise InfraError("could not create the task's user namespace on the emulated nodes")

    def _enter(self, pid: int, *namespaces: str) -> list[str]:
        """The nodes' inits are made by the task's user in X, in a user namespace of their own (M)."""
        base = super()._enter(pid, *namespaces)
        if pid != self.run_init_pid:
            return base
        return [*base, tool("nsenter"), "-t", ns_pid(self.anchor_pid), "-U", "--preserve-credentials", "--",
                tool("unshare"), "--user", "--map-current-user", "--keep-caps", "--"]

    def start(self, node: Node, command_line: str, env: dict[str, str], cwd: str, stdout: str,
              stderr: str) -> GroupProc:
        """A task process: into the run's PID namespace (as root of P), then X and node i's mount and UTS
        namespaces as the task's user; its logs opened by the emulator, never through a symlink."""
        self._nodes_up()  # fresh nodes after a failed attempt, every node's init awaited
        holder = self.holder_pid(node.index)
        enter_opts, before = in_directory(cwd)
        argv = [*super()._enter(self.run_init_pid, "-p"), tool("nsenter"), f"--user=/proc/{self.anchor_pid}/ns/user",
                "--preserve-credentials", f"--mount=/proc/{holder}/ns/mnt", f"--uts=/proc/{holder}/ns/uts",
                *enter_opts, "--", *before, *split_command_line(command_line)]
        user = self.node_user(node)
        out = identity.open_append(user, self.host_path(node, stdout))
        try:
            err = identity.open_append(user, self.host_path(node, stderr))
            try:
                p = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                     start_new_session=True, **self.user.popen_args())
            finally:
                os.close(err)
        finally:
            os.close(out)
        proc = GroupProc(p)
        self.procs.append(proc)
        return proc

    def make_dirs(self, node: Node, dirs: Sequence[str], clean: Sequence[str] = ()) -> None:
        """As for every task's directories (identity.stays_root: the node's root and the directories above
        task directories stay root's; the shared, startup and task directories are the node user's)."""
        user = self.node_user(node)
        for d in clean:
            identity.remove_tree(user, self.host_path(node, d))
        for d in dirs:
            identity.make_dirs(user, self.host_path(node, d))

    def _no_link_on_the_way(self, node: Node, node_path: str) -> Path:
        """The host path of `node_path`, read as root: OSError if a directory on the way is a symlink (a task
        may have planted one; the final component is never followed either, by the readers)."""
        path = self.host_path(node, node_path)
        top = self.workdir / "nodes" / str(node.index)
        for d in reversed(path.relative_to(top).parents):  # ".", then each directory down to the last
            if (top / d).is_symlink():
                raise OSError(f"{node_path}: {d} is a symlink; not followed")
        return path

    def fetch(self, node: Node, node_path: str, dest: Path) -> bool:
        self._no_link_on_the_way(node, node_path)
        return super().fetch(node, node_path, dest)

    def read_tail(self, node: Node, path: str, limit: int) -> str:
        try:
            self._no_link_on_the_way(node, path)
        except OSError:
            return ""
        return super().read_tail(node, path, limit)

    def collect(self, node: Node, node_dir: str, patterns: Sequence[str], dest: Path) -> list[str]:
        self._no_link_on_the_way(node, node_dir)
        return super().collect(node, node_dir, patterns, dest)

    def put(self, node: Node, local: Path, node_path: str) -> None:
        dest = self.host_path(node, node_path)
        identity.make_dirs(self.node_user(node), dest.parent)  # no link on the way
        fileio.copy_file(local, dest, mode=os.stat(local).st_mode & 0o7777, exact_mode=True)
        os.lchown(dest, self.user.uid, self.user.uid)
