"""SSH executor: the same multi-instance lifecycle (mpibatch.lifecycle) on real hosts over paramiko.

The first host is the primary. Each host gets a Batch-like node root (default /tmp/mpibatch).
Connections, file copies and output collection run on all hosts in parallel. Host keys are checked
against known_hosts with paramiko's RejectPolicy, unless the loudly named opt-out is given.

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
import shutil
import socket
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import paramiko

from ..errors import InfraError, SpecError
from ..hostlist import HostSpec, parse_host_spec, validate_host
from ..launchers.outputnames import glob_match
from . import Progress
from . import collection
from .lifecycle import Node, RehearsalExecutor, split_command_line
from ..mpi import FLAVORS
from ..plan import TaskPlan

log = logging.getLogger(__name__)

RUN_VAR = "MPIBATCH_RUN_ID"  # marker exported to every process a run starts (for the cleanup sweep)
DEFAULT_NODE_ROOT = "/tmp/mpibatch"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CONNECT_TIMEOUT_S = 5.0
KEEPALIVE_S = 1.0
LOST_AFTER_S = 4.0  # no keepalive reply for this long: the host is lost
CLEANUP_TIMEOUT_S = 8.0
SFTP_TIMEOUT_S = 30.0
# paramiko's own log (wire errors, each with a traceback): _connect turns them into one message, so
# it stays quiet unless someone lowers this logger's level (the CLI does with -vv).
WIRE_LOG = f"{__name__}.wire"
logging.getLogger(WIRE_LOG).setLevel(logging.CRITICAL)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NODE_ROOT = re.compile(r"^(/[A-Za-z0-9._-]+)+$")
INSECURE_FLAG = "--insecure-accept-unknown-host-keys"


def rehearsal_env(*, is_root: bool) -> dict[str, str]:
    """Per-flavour flags for rehearsal hosts (docs/rehearsal-machine.md), without the local
    executor's agent: MPI launchers use the hosts' own ssh. Each flavour says what its ranks need
    there (UCX over TCP: across network namespaces, and on hosts without InfiniBand, UCX would pick
    shared memory or absent devices), and how PATH (where the hosts' MPI and Python are) and the run
    marker (for the cleanup sweep) reach ranks that start with a login environment."""
    env: dict[str, str] = {}
    for flavor in FLAVORS.values():
        env |= flavor.rehearsal_env(is_root=is_root) | flavor.ssh_rehearsal_env(["PATH", RUN_VAR])
    return env


def _stamp(t: float | None = None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t if t is not None else time.time()))


@dataclass
class _Host:
    spec: HostSpec
    user: str
    port: int
    client: paramiko.SSHClient | None = None
    transport: paramiko.Transport | None = None
    sftp: paramiko.SFTPClient | None = None
    sftp_lock: threading.Lock | None = None
    probe_since: float | None = None  # a keepalive request has been waiting since then
    lost_reason: str | None = None
    made_dirs: set[str] | None = None

    @property
    def label(self) -> str:
        return str(HostSpec(self.user, self.spec.host, self.port if self.port != 22 else None))


class _SshProc:
    """A process started over a channel; its pid (= process group) is the first line it prints."""

    def __init__(self, transport: "SshTransport", node: Node, chan: paramiko.Channel) -> None:
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
        self.hosts = [_Host(spec=s, user=s.user or default_user, port=s.port or port, sftp_lock=threading.Lock(),
                            made_dirs=set()) for s in specs]
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
        if n > len(self.hosts):
            raise SpecError("hosts", f"the task needs {n} instances (one per host) but {len(self.hosts)} "
                            f"host(s) were given", f"give at least {n} hosts or lower task.instances")
        self.hosts = self.hosts[:n]
        if not self.insecure:
            self._check_known_hosts_file()
        errors: list[BaseException | None] = [None] * n
        with ThreadPoolExecutor(max_workers=min(32, n)) as pool:
            futs = [pool.submit(self._connect, h) for h in self.hosts]
            for i, f in enumerate(futs):
                errors[i] = f.exception()
        bad = [(h, e) for h, e in zip(self.hosts, errors) if e is not None]
        if bad:
            self.close()
            specs = [e for _, e in bad if isinstance(e, SpecError)]
            if specs:
                raise specs[0]
            raise InfraError("; ".join(str(e) for _, e in bad))
        self.nodes = [Node(index=i, host=h.spec.host, node_id=f"node-{i}", root=self.node_root)
                      for i, h in enumerate(self.hosts)]
        for h in self.hosts:
            threading.Thread(target=self._monitor, args=(h,), name=f"mpibatch-keepalive-{h.spec.host}",
                             daemon=True).start()
        return self.nodes

    def _check_known_hosts_file(self) -> None:
        if not Path(self.known_hosts).is_file():
            first = self.hosts[0]
            raise SpecError("known_hosts", f"{self.known_hosts} does not exist, so no host key of "
                            f"{', '.join(h.label for h in self.hosts)} can be checked",
                            f"add the hosts' keys after checking them, e.g. "
                            f"ssh-keyscan -p {first.port} {first.spec.host} >> {self.known_hosts}, or pass "
                            f"--known-hosts FILE (or, only for throwaway hosts, {INSECURE_FLAG})")

    def _connect(self, h: _Host) -> None:
        client = paramiko.SSHClient()
        client.set_log_channel(WIRE_LOG)
        if self.insecure:
            log.warning("%s: host key NOT checked (%s): anyone on the network path can impersonate it",
                        h.label, INSECURE_FLAG)
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        else:
            try:
                client.load_host_keys(self.known_hosts)
            except (OSError, paramiko.SSHException) as e:
                raise SpecError("known_hosts", f"cannot read {self.known_hosts}: {e}",
                                "fix or replace the known_hosts file") from None
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        t = self.connect_timeout
        keyscan = f"ssh-keyscan -p {h.port} {h.spec.host} >> {self.known_hosts}"
        try:
            client.connect(h.spec.host, port=h.port, username=h.user, key_filename=self.key,
                           allow_agent=self.key is None, look_for_keys=self.key is None, timeout=t,
                           banner_timeout=t, auth_timeout=t, channel_timeout=t)
        except paramiko.BadHostKeyException as e:
            client.close()
            raise SpecError("known_hosts", f"the host key of {h.label} has CHANGED: it offered "
                            f"{e.key.get_name()} {e.key.fingerprint} but {self.known_hosts} has "
                            f"{e.expected_key.fingerprint}. The host was reinstalled, or someone is "
                            "intercepting the connection; nothing was run",
                            f"if you know why it changed, remove the old entry (ssh-keygen -R {h.spec.host} "
                            f"-f {self.known_hosts}) and add the new one after checking it ({keyscan})") from None
        except paramiko.SSHException as e:
            handshake_done = getattr(client.get_transport(), "session_id", None) is not None
            client.close()
            if "not found in known_hosts" in str(e):
                raise SpecError("known_hosts", f"the host key of {h.label} is unknown: {self.known_hosts} "
                                "has no entry for it, so its identity cannot be checked; nothing was run",
                                f"check the host's key and add it: {keyscan} (or pass --known-hosts FILE; "
                                f"only for throwaway hosts: {INSECURE_FLAG})") from None
            if isinstance(e, paramiko.AuthenticationException):
                raise InfraError(f"{h.label}: authentication as {h.user} failed ({e}); give the right "
                                 "--user and --key") from None
            if not handshake_done:
                raise InfraError(f"{h.label} accepted a TCP connection but did not answer as an SSH server "
                                 f"within {t:g}s ({e}); check the address and the port") from None
            raise InfraError(f"{h.label}: SSH connection failed: {e}") from None
        except (socket.timeout, TimeoutError):
            client.close()
            raise InfraError(f"{h.label} is unreachable: no SSH answer within {t:g}s (host down, wrong "
                             "address, or a firewall)") from None
        except OSError as e:
            client.close()
            raise InfraError(f"{h.label} is unreachable: {e.strerror or e}") from None
        tr = client.get_transport()
        assert tr is not None
        tr.set_keepalive(int(KEEPALIVE_S) or 1)
        h.client, h.transport = client, tr
        with h.sftp_lock:  # type: ignore[union-attr]
            self._sftp(h)  # opened here, in parallel with the other hosts

    def _monitor(self, h: _Host) -> None:
        """Keepalive round trips; lost() reports a host whose reply is overdue or whose link closed."""
        while not self._closed.is_set():
            tr = h.transport
            if tr is None or not tr.is_active():
                return
            h.probe_since = time.monotonic()
            try:
                tr.global_request("keepalive@openssh.com", wait=True)
            except Exception:  # noqa: BLE001 - a failed write is a dead link; is_active() says so
                pass
            h.probe_since = None
            self._closed.wait(KEEPALIVE_S)

    def lost(self, node: Node) -> str | None:
        h = self.hosts[node.index]
        if h.lost_reason:
            return h.lost_reason
        tr = h.transport
        if tr is None or not tr.is_active():
            h.lost_reason = f"the SSH connection to {h.label} closed at {_stamp()}"
        elif h.probe_since is not None and time.monotonic() - h.probe_since > self.lost_after:
            since = time.time() - (time.monotonic() - h.probe_since)
            h.lost_reason = (f"{h.label} stopped answering at {_stamp(since)} (no SSH keepalive reply for "
                             f"{self.lost_after:g}s)")
        if h.lost_reason:
            log.warning("instance %s: %s", node.index, h.lost_reason)
        return h.lost_reason

    # ------------------------------------------------------------------ commands
    def _exec(self, node: Node, command: str, timeout: float = 30.0) -> tuple[int, str, str]:
        h = self.hosts[node.index]
        if h.lost_reason:
            raise OSError(f"{h.label} was lost: {h.lost_reason}")
        if h.transport is None or not h.transport.is_active():
            raise InfraError(f"{h.label}: not connected")
        chan = h.transport.open_session(timeout=self.connect_timeout)
        try:
            chan.settimeout(timeout)
            chan.exec_command(command)
            out, err = chan.makefile("rb").read(), chan.makefile_stderr("rb").read()
            return chan.recv_exit_status(), out.decode(errors="replace"), err.decode(errors="replace")
        except socket.timeout:
            raise InfraError(f"{h.label}: command did not finish within {timeout:g}s") from None
        finally:
            chan.close()

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
        with h.sftp_lock:  # type: ignore[union-attr]
            h.made_dirs = {d for d in h.made_dirs or set() if not any(d == c or d.startswith(c + "/") for c in clean)}
            h.made_dirs.update(dirs)

    def _sftp(self, h: _Host) -> paramiko.SFTPClient:
        if h.lost_reason:
            raise OSError(f"{h.label} was lost: {h.lost_reason}")
        if h.sftp is None:
            assert h.client is not None
            h.sftp = h.client.open_sftp()
            h.sftp.get_channel().settimeout(SFTP_TIMEOUT_S)  # a host that stops answering fails, not hangs
        return h.sftp

    def _mkdirs_sftp(self, h: _Host, sftp: paramiko.SFTPClient, d: str) -> None:
        made = h.made_dirs if h.made_dirs is not None else set()
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
        with h.sftp_lock:  # type: ignore[union-attr]
            sftp = self._sftp(h)
            self._mkdirs_sftp(h, sftp, os.path.dirname(node_path))
            sftp.put(str(local), node_path)
            sftp.chmod(node_path, stat.S_IMODE(os.stat(local).st_mode))

    def read_tail(self, node: Node, path: str, limit: int) -> str:
        h = self.hosts[node.index]
        try:
            with h.sftp_lock:  # type: ignore[union-attr]
                if not stat.S_ISREG(self._sftp(h).lstat(path).st_mode or 0):
                    return ""  # a symlink (to /dev/zero...) or a device: never read
                with self._sftp(h).open(path, "rb") as f:
                    size = f.stat().st_size or 0
                    f.seek(max(0, size - limit))
                    data = f.read(limit)
        except (OSError, paramiko.SSHException, EOFError):
            return ""
        return data.decode(errors="replace")

    def fetch(self, node: Node, node_path: str, dest: Path) -> bool:
        h = self.hosts[node.index]
        try:
            with h.sftp_lock:  # type: ignore[union-attr]
                self._get_regular(h, node_path, dest)
        except FileNotFoundError:
            return False
        return True

    def _get_regular(self, h: "_Host", node_path: str, dest: Path) -> None:
        """sftp get of a regular file (lstat first: a symlink is never followed), atomically. Caller holds
        the host's sftp lock."""
        sftp = self._sftp(h)
        try:
            if not stat.S_ISREG(sftp.lstat(node_path).st_mode or 0):
                raise OSError(f"{h.label}: {node_path} is not a regular file (a symlink?); not collected")
            with sftp.open(node_path, "rb") as src:
                src.prefetch()
                collection.write_atomically(dest, lambda out: shutil.copyfileobj(src, out, collection.COPY_CHUNK))
        except (paramiko.SSHException, EOFError, socket.timeout) as e:
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
        found = [rel for rel in files if any(glob_match(rel, p) for p in patterns)]
        h = self.hosts[node.index]
        done: list[str] = []
        problems: list[str] = []
        with h.sftp_lock:  # type: ignore[union-attr]
            for rel in found:
                target = collection.collected_path(rel)
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
        assigns = ['HOME="$HOME"', 'USER="$USER"', 'LOGNAME="$LOGNAME"', 'SHELL="${SHELL:-/bin/sh}"',
                   f'PATH="${{PATH:-{SYSTEM_PATH}}}"']
        assigns += [shlex.quote(f"{k}={v}") for k, v in env.items()]
        assigns.append(shlex.quote(f"{RUN_VAR}={self.run_id}"))
        inner = (f"echo $$; cd {shlex.quote(cwd)} || exit 127; exec env -i {' '.join(assigns)} "
                 f"{' '.join(shlex.quote(w) for w in words)} < /dev/null >> {shlex.quote(stdout)} "
                 f"2>> {shlex.quote(stderr)}")
        # The task's process group lives as long as the connection: when the controller dies (even
        # by SIGKILL) sshd closes the session's stdin, the watcher reads EOF and kills the group.
        return (f"export {RUN_VAR}={self.run_id}; exec 3<&0; "
                f"setsid -w /bin/bash -c {shlex.quote(inner)} & p=$!; "
                "{ while read -r _ <&3; do :; done; kill -KILL -- -$p; } 2> /dev/null & w=$!; "
                "wait $p; rc=$?; kill $w 2> /dev/null; exit $rc")

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

    def _cleanup_script(self, pgids: Iterable[int]) -> str:
        """Kill the run's process groups, then every process carrying the run's marker (MPI ranks,
        sshfs daemons), then lazily unmount FUSE mounts left under the node root."""
        groups = " ".join(str(p) for p in sorted(set(pgids)))
        root = shlex.quote(self.node_root)
        marker = shlex.quote(f"{RUN_VAR}={self.run_id}")
        return (f"for g in {groups}; do kill -KILL -- -$g 2>/dev/null; done; "
                f"for f in $(grep -lsxzF {marker} /proc/[0-9]*/environ 2>/dev/null); do "
                f"p=${{f#/proc/}}; p=${{p%/environ}}; [ \"$p\" != $$ ] && kill -KILL \"$p\" 2>/dev/null; done; "
                f"awk -v r={root} '$3 ~ /^fuse/ && index($2, r \"/\") == 1 {{print $2}}' /proc/self/mounts "
                "| while read -r m; do fusermount -uz \"$m\" 2>/dev/null || umount -l \"$m\" 2>/dev/null; done; "
                "true")

    def kill_groups(self, node: Node, procs: Sequence[_SshProc]) -> None:
        pgids = [g for p in procs if (g := p.read_pgid(wait_s=1.0))]
        try:
            self._exec(node, self._cleanup_script(pgids), timeout=CLEANUP_TIMEOUT_S)
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
            if h.lost_reason or h.transport is None or not h.transport.is_active():
                # Best effort on a host that dropped: try, but never wait long for it.
                pass
            # Daemon threads: a host that stopped answering must not block the others or exit.
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
            for thing in (h.sftp, h.client):
                try:
                    if thing is not None:
                        thing.close()
                except Exception:  # noqa: BLE001 - closing a dead connection
                    pass
            h.sftp = None


class SshExecutor(RehearsalExecutor):
    """Runs a multi-instance task on SSH hosts with Batch semantics (the first host is the primary)."""

    name = "ssh"

    def __init__(self, hosts: Sequence[str | HostSpec], user: str | None = None, key: str | None = None,
                 known_hosts: str | None = None, port: int = 22, node_root: str = DEFAULT_NODE_ROOT,
                 insecure_accept_unknown_host_keys: bool = False, base_env: dict[str, str] | None = None,
                 runs_dir: str | Path = "mpibatch-runs", progress: Progress | None = None,
                 remote_path_prepend: Sequence[str] = ()) -> None:
        super().__init__(runs_dir=runs_dir, progress=progress)
        self.hosts = list(hosts)
        self.user, self.key, self.known_hosts, self.port = user, key, known_hosts, port
        self.node_root = node_root
        self.insecure = insecure_accept_unknown_host_keys
        self.base_env = dict(base_env) if base_env is not None else None
        self.remote_path_prepend = list(remote_path_prepend)
        self.transport: SshTransport | None = None  # the last run's, for inspection
        self._new_transport()  # bad input fails now, before any connection

    def _new_transport(self) -> SshTransport:
        return SshTransport(self.hosts, user=self.user, key=self.key, known_hosts=self.known_hosts, port=self.port,
                            node_root=self.node_root, insecure_accept_unknown_host_keys=self.insecure)

    def transport_for(self, plan: TaskPlan) -> tuple[SshTransport, dict[str, str]]:
        t = self.transport = self._new_transport()
        if self.base_env is not None:
            env = dict(self.base_env)
        else:
            env = rehearsal_env(is_root=t.users == {"root"})
        if "PATH" not in env or self.remote_path_prepend:
            path = env.get("PATH", SYSTEM_PATH)
            env["PATH"] = ":".join([*self.remote_path_prepend, path])
        return t, env
