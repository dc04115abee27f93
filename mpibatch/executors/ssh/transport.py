"""SshTransport: the lifecycle's Transport (mpibatch.executors.lifecycle) on real hosts, over the
connection layer in .connection. The first host is the primary; each host gets a Batch-like node root.
Connections, file copies and output collection run on all hosts in parallel.

Every process is started over its own channel as the leader of a new process group, with its
environment exported inline (sshd passes only what AcceptEnv lists) and a per-run marker variable,
so that end_processes can kill each process group and sweep whatever else carries the marker
(ranks started by MPI, sshfs daemons), on every host.
"""
from __future__ import annotations

import getpass
import logging
import os
import re
import secrets
import shlex
import stat
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paramiko

from ...errors import InfraError, SpecError
from ...hostlist import HostSpec, parse_host_spec, validate_host
from ...launchers.outputnames import select_outputs
from .. import collection
from ..transport import Node, split_command_line
from . import connection, roots
from .connection import CONNECT_TIMEOUT_S, LOST_AFTER_S, Host

log = logging.getLogger(__name__)

DEFAULT_NODE_ROOT = "/tmp/mpibatch"
CLEANUP_TIMEOUT_S = 8.0
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NODE_ROOT = re.compile(r"^(/[A-Za-z0-9._-]+)+$")


class _SshProc:
    """A process started over a channel; its pid (= process group) is the first line it prints."""

    def __init__(self, transport: SshTransport, node: Node, chan: paramiko.Channel) -> None:
        self.t, self.node, self.chan = transport, node, chan
        self._buf = b""
        self.pgid: int | None = None
        self.code: int | None = None

    def read_pgid(self, wait_s: float = 0.0) -> int | None:
        deadline = time.monotonic() + wait_s
        while self.pgid is None:
            while self.chan.recv_ready():
                self._buf += self.chan.recv(256)
            if b"\n" in self._buf:
                line = self._buf.split(b"\n", 1)[0].strip()
                self.pgid = int(line) if line.isdigit() and int(line) > 1 else -1
                break
            if self.chan.exit_status_ready() or self.chan.closed or time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        return self.pgid if self.pgid and self.pgid > 1 else None

    def poll(self) -> int | None:
        if self.code is not None:
            return self.code
        if self.chan.exit_status_ready():
            self.read_pgid()
            rc = self.chan.recv_exit_status()
            self.code = rc if rc >= 0 else 255  # -1: killed by a signal or no status sent
            return self.code
        tr = self.t.hosts[self.node.index].transport
        if self.chan.closed or tr is None or not tr.is_active() or self.t.lost(self.node):
            self.code = 255  # the connection is gone; lost() says which host and when
            return self.code
        return None

    def kill(self) -> None:
        self.t.kill_groups(self.node, [self])


class SshTransport:
    """lifecycle.Transport over SSH: paramiko channels for processes, SFTP for files."""

    name = "ssh"

    def __init__(self, hosts: Sequence[str | HostSpec], *, user: str | None = None, key: str | None = None,
                 known_hosts: str | None = None, port: int = 22, node_root: str = DEFAULT_NODE_ROOT,
                 insecure_accept_unknown_host_keys: bool = False, connect_timeout: float = CONNECT_TIMEOUT_S,
                 lost_after: float = LOST_AFTER_S) -> None:
        if not hosts:
            raise SpecError("hosts", "no hosts given", "give --hosts h1,h2,... or --hosts-file FILE")
        specs = [h if isinstance(h, HostSpec) else parse_host_spec(h, f"hosts[{i}]") for i, h in enumerate(hosts)]
        for i, s in enumerate(specs):
            validate_host(s.host, f"hosts[{i}]")
        if not (_NODE_ROOT.fullmatch(node_root) and ".." not in node_root.split("/")):
            raise SpecError("node_root", f"{node_root!r} is not a plain absolute directory",
                            "use e.g. /tmp/mpibatch or /mnt/batch/tasks (letters, digits, '.', '_', '-')")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise SpecError("port", f"{port!r} is not a TCP port", "use a number from 1 to 65535 (SSH: 22)")
        if key is not None and not Path(key).expanduser().is_file():
            raise SpecError("key", f"{key} does not exist or is not a file", "give the path of a private key file")
        default_user = user or getpass.getuser()
        self.hosts = [Host(spec=s, user=s.user or default_user, port=s.port or port) for s in specs]
        self.key = str(Path(key).expanduser()) if key else None
        self.known_hosts = str(Path(known_hosts or "~/.ssh/known_hosts").expanduser())
        self.insecure = insecure_accept_unknown_host_keys
        self.connect_timeout = connect_timeout
        self.lost_after = lost_after
        self.node_root = node_root
        self.run_id = secrets.token_hex(8)
        self.nodes: list[Node] = []
        self.procs: list[_SshProc] = []
        self._procs_lock = threading.Lock()
        self._closed = threading.Event()

    @property
    def users(self) -> set[str]:
        return {h.user for h in self.hosts}

    # ------------------------------------------------------------------ connections
    def open(self, n: int) -> list[Node]:
        connection.check_host_count(n, len(self.hosts))
        self.hosts = self.hosts[:n]
        if not self.insecure:
            connection.check_known_hosts_file(self.known_hosts, self.hosts)
        errors: list[BaseException | None] = [None] * n
        with ThreadPoolExecutor(max_workers=min(32, n)) as pool:
            futs = [pool.submit(connection.connect, h, known_hosts=self.known_hosts, key=self.key,
                                insecure=self.insecure, timeout=self.connect_timeout) for h in self.hosts]
            for i, f in enumerate(futs):
                errors[i] = f.exception()
        bad = [(h, e) for h, e in zip(self.hosts, errors) if e is not None]
        if bad:
            self.close()
            specs = [e for _, e in bad if isinstance(e, SpecError)]
            if specs:
                raise specs[0]
            raise InfraError("; ".join(str(e) for _, e in bad))
        try:
            self._check_own_roots()
        except BaseException:
            self.close()
            raise
        self.nodes = [Node(index=i, host=h.spec.host, node_id=f"node-{i}", root=self.node_root)
                      for i, h in enumerate(self.hosts)]
        for h in self.hosts:
            threading.Thread(target=connection.monitor, args=(h, self._closed),
                             name=f"mpibatch-keepalive-{h.spec.host}", daemon=True).start()
        return self.nodes

    def _check_own_roots(self) -> None:
        groups = roots.shared_roots(self.hosts, self.node_root, self.run_id,
                                    lambda h, sftp: self._mkdirs_sftp(h, sftp, self.node_root))
        if groups:
            raise SpecError("--hosts", "; ".join(roots.describe(self.hosts, g, self.node_root) for g in groups),
                            roots.FIX)

    def lost(self, node: Node) -> str | None:
        h = self.hosts[node.index]
        known = h.lost_reason
        why = connection.lost(h, self.lost_after)
        if why and not known:
            log.warning("instance %s: %s", node.index, why)
        return why

    # ------------------------------------------------------------------ commands
    def _exec(self, node: Node, command: str, timeout: float = 30.0) -> tuple[int, str, str]:
        return connection.run_command(self.hosts[node.index], command, timeout=timeout,
                                      open_timeout=self.connect_timeout)

    def _check(self, node: Node, command: str, what: str) -> str:
        rc, out, err = self._exec(node, command)
        if rc != 0:
            raise InfraError(f"{self.hosts[node.index].label}: {what} failed (exit {rc}): {err.strip()[-500:]}")
        return out

    def make_dirs(self, node: Node, dirs: Sequence[str], clean: Sequence[str] = ()) -> None:
        parts = []
        if clean:
            parts.append("rm -rf -- " + " ".join(shlex.quote(d) for d in clean))
        if dirs:
            parts.append("mkdir -p -- " + " ".join(shlex.quote(d) for d in dirs))
        if parts:
            self._check(node, " && ".join(parts), "creating directories")
        h = self.hosts[node.index]
        with h.sftp_lock:
            h.made_dirs = {d for d in h.made_dirs if not any(d == c or d.startswith(c + "/") for c in clean)}
            h.made_dirs.update(dirs)

    def _mkdirs_sftp(self, h: Host, sftp: paramiko.SFTPClient, d: str) -> None:
        made = h.made_dirs
        todo = []
        while d not in made and d not in ("", "/"):
            todo.append(d)
            d = os.path.dirname(d)
        for p in reversed(todo):
            try:
                sftp.mkdir(p)
            except OSError:
                try:
                    if not stat.S_ISDIR(sftp.stat(p).st_mode or 0):
                        raise InfraError(f"{h.label}: {p} exists and is not a directory") from None
                except FileNotFoundError:
                    raise InfraError(f"{h.label}: cannot create directory {p}") from None
            made.add(p)

    def put(self, node: Node, local: Path, node_path: str) -> None:
        h = self.hosts[node.index]
        with h.sftp_lock:
            sftp = h.sftp_client()
            self._mkdirs_sftp(h, sftp, os.path.dirname(node_path))
            sftp.put(str(local), node_path)
            sftp.chmod(node_path, stat.S_IMODE(os.stat(local).st_mode))

    def read_tail(self, node: Node, path: str, limit: int) -> str:
        h = self.hosts[node.index]
        try:
            with h.sftp_lock:
                if not stat.S_ISREG(h.sftp_client().lstat(path).st_mode or 0):
                    return ""  # a symlink (to /dev/zero...) or a device: never read
                with h.sftp_client().open(path, "rb") as f:
                    size = f.stat().st_size or 0
                    f.seek(max(0, size - limit))
                    data = f.read(limit)
        except (OSError, paramiko.SSHException, EOFError):
            return ""
        return data.decode(errors="replace")

    def fetch(self, node: Node, node_path: str, dest: Path) -> bool:
        h = self.hosts[node.index]
        try:
            with h.sftp_lock:
                self._get_regular(h, node_path, dest)
        except FileNotFoundError:
            return False
        return True

    def _get_regular(self, h: Host, node_path: str, dest: Path) -> None:
        """sftp get of a regular file (lstat first: a symlink is never followed), through the durable writer.
        Caller holds the host's sftp lock."""
        sftp = h.sftp_client()
        try:
            st = sftp.lstat(node_path)
            if not stat.S_ISREG(st.st_mode or 0):
                raise OSError(f"{h.label}: {node_path} is not a regular file (a symlink?); not collected")
            with sftp.open(node_path, "rb") as src:
                src.prefetch(st.st_size)
                collection.copy_stream(src.read, dest, st.st_size)  # durable, size verified
        except (TimeoutError, paramiko.SSHException, EOFError) as e:
            raise OSError(f"{h.label}: fetching {node_path} failed: {e}") from None

    def list_files(self, node: Node, node_dir: str) -> list[str]:
        """Regular files under node_dir (symlinks not followed, not listed), relative paths."""
        # A working directory replaced by a symlink is not entered (find -P never follows links below it).
        cmd = (f"[ -L {shlex.quote(node_dir)} ] && exit 0; cd {shlex.quote(node_dir)} 2>/dev/null || exit 0; "
               "find -P . -type f -print0")
        rc, out, err = self._exec(node, cmd, timeout=60)
        if rc != 0:
            raise OSError(f"{self.hosts[node.index].label}: listing {node_dir} failed: {err.strip()[-300:]}")
        return sorted(p[2:] if p.startswith("./") else p for p in out.split("\0") if p)

    def collect(self, node: Node, node_dir: str, patterns: Sequence[str], dest: Path) -> list[str]:
        files = self.list_files(node, node_dir)
        found = select_outputs(files, list(patterns))
        h = self.hosts[node.index]
        done: list[str] = []
        targets, problems = collection.collection_targets(found)  # two outputs, one collected name: a problem
        with h.sftp_lock:
            for rel, target in targets:
                try:
                    self._get_regular(h, f"{node_dir}/{rel}", dest / target)
                    done.append(target)
                except OSError as e:  # the others are still tried
                    problems.append(f"{rel}: {e.strerror or e}")
        if problems:
            raise collection.CollectError(done, problems)
        return done

    def keep_files(self) -> str:
        return f"{self.node_root} on each host (they are never removed)"

    # ------------------------------------------------------------------ processes
    def command(self, command_line: str, env: dict[str, str], cwd: str, stdout: str, stderr: str) -> str:
        """The remote shell line: a new session (process group) whose leader prints its pid, then
        runs the task's words with exactly `env` (plus the account's identity) - no shell parses
        the task's command line (Batch runs it without one)."""
        for name in env:
            if not _ENV_NAME.fullmatch(name):
                raise SpecError("environment", f"{name!r} is not a valid environment variable name",
                                "use letters, digits and '_', not starting with a digit")
        words = split_command_line(command_line)
        if not words:
            raise SpecError("command_line", "the command line is empty")
        return connection.session_line(words, env, cwd, stdout, stderr, self.run_id)

    def start(self, node: Node, command_line: str, env: dict[str, str], cwd: str, stdout: str,
              stderr: str) -> _SshProc:
        h = self.hosts[node.index]
        line = self.command(command_line, env, cwd, stdout, stderr)
        if h.transport is None or not h.transport.is_active():
            raise InfraError(f"{h.label}: the SSH connection is gone")
        chan = h.transport.open_session(timeout=self.connect_timeout)
        chan.exec_command(line)
        proc = _SshProc(self, node, chan)
        with self._procs_lock:
            self.procs.append(proc)
        return proc

    def kill_groups(self, node: Node, procs: Sequence[_SshProc]) -> None:
        pgids = [g for p in procs if (g := p.read_pgid(wait_s=1.0))]
        try:
            self._exec(node, connection.cleanup_line(pgids, self.node_root, self.run_id), timeout=CLEANUP_TIMEOUT_S)
        except (InfraError, paramiko.SSHException, OSError, EOFError) as e:
            log.warning("cleanup on %s: %s", self.hosts[node.index].label, e)

    def end_processes(self) -> None:
        with self._procs_lock:
            procs, self.procs = list(self.procs), []
        if not self.nodes:
            return
        by_node: dict[int, list[_SshProc]] = {n.index: [] for n in self.nodes}
        for p in procs:
            by_node[p.node.index].append(p)
        threads = []
        for n in self.nodes:
            h = self.hosts[n.index]
            # Daemon threads, also on a host that dropped (best effort): a host that stopped answering
            # must not block the others or exit.
            th = threading.Thread(target=self.kill_groups, args=(n, by_node[n.index]), daemon=True,
                                  name=f"mpibatch-cleanup-{h.spec.host}")
            th.start()
            threads.append((n, th))
        deadline = time.monotonic() + CLEANUP_TIMEOUT_S
        for n, th in threads:
            th.join(max(0.0, deadline - time.monotonic()))
            if th.is_alive():
                log.warning("cleanup on %s did not finish within %ss (host lost?)",
                            self.hosts[n.index].label, CLEANUP_TIMEOUT_S)
        # Wait (bounded) for the channels of processes on hosts still there.
        for p in procs:
            h = self.hosts[p.node.index]
            while (time.monotonic() < deadline and not h.lost_reason and h.transport is not None
                   and h.transport.is_active() and not p.chan.exit_status_ready() and not p.chan.closed):
                time.sleep(0.02)
            p.chan.close()

    def close(self) -> None:
        self._closed.set()
        for h in self.hosts:
            h.close()
