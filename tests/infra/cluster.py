"""A real multi-host SSH cluster on this machine, for tests.

Each host is a network namespace (``mpb-<run>-<i>``) with a veth into a bridge in the root namespace, an address
in a private /24 (``10.213.X.0/24``, X picked per run and reserved with a lock file so parallel runs don't clash;
the root namespace holds ``.254`` so the test process reaches every host), its own UTS namespace (hostname
``node-<i>``), its own mount namespace and its own ``sshd`` (own config, ed25519 host key, pid file, log).

In each node's mount namespace:

* ``/etc/hosts`` lists every node by name and address (MPI launchers resolve each other's names);
* ``/root/.ssh`` is a per-cluster directory: ``id_ed25519`` (the cluster's client key, trusted by every sshd),
  ``known_hosts`` (every node's host key under its name and address), ``config`` (``StrictHostKeyChecking yes``,
  ``BatchMode yes``), so ``ssh <other node>`` works without prompts and with host keys checked;
* ``/tmp`` and ``/var/tmp`` are private tmpfs mounts by default (``private_dirs``): like real hosts, nodes share
  no scratch space, so a file reaches another node only by SFTP/scp/sshfs. The rest of the filesystem is the
  machine's, shared by all nodes and the test process, like software baked into a pool image: ``/work`` (the
  venvs), and also ``/root`` apart from ``/root/.ssh`` (the venvs' python lives under ``/root/.pyenv``).
  ``node_path(i, path)`` reads a node-private path from the test process (through ``/proc/<sshd pid>/root``).

Nothing here touches the machine's real ssh setup: the only change outside the cluster's own state directory
is an empty ``/root/.ssh`` created if missing (a bind mount needs a target); sshd reads its authorized keys
from the state directory.

Teardown kills, by pid, the sshd of every node and every pid ``ip netns pids`` lists in the cluster's
namespaces, then deletes the namespaces, veths, bridge and state directory. It is idempotent and also runs at
interpreter exit and on SIGTERM. ``cleanup_stale()`` removes what a killed (SIGKILL) run left behind, recognised
by its run lock no longer being held.
"""

from __future__ import annotations

import atexit
import fcntl
import ipaddress
import logging
import os
import random
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
SSHD = "/usr/sbin/sshd"
STATE_ROOT = Path(os.environ.get("MPIBATCH_CLUSTER_STATE", "/run/mpibatch-clusters"))
NS_PREFIX = "mpb-"
SUBNET_FIRST_OCTETS = "10.213"
ROOT_HOST_OCTET = 254
MAX_HOSTS = 200
NODE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "USER": "root",
    "LOGNAME": "root",
    "SHELL": "/bin/bash",
    "LANG": "C.UTF-8",
}
_RUN_ID_RE = re.compile(r"^[0-9a-f]{6}$")
_NS_RE = re.compile(r"^mpb-([0-9a-f]{6})-(\d+)$")


class ClusterError(RuntimeError):
    """The cluster could not be started or a node could not be reached."""


def requirements_missing(*, sshfs: bool = False) -> list[str]:
    """What this machine lacks to run an SshCluster (empty list: all there)."""
    missing: list[str] = []
    if os.geteuid() != 0:
        missing.append("not running as root (network namespaces and sshd need root)")
    tools = ["ip", "nsenter", "unshare", "ssh-keygen", "ssh"]
    if sshfs:
        tools.append("sshfs")
    for tool in tools:
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            missing.append(f"`{tool}` not found")
    if not os.access(SSHD, os.X_OK):
        missing.append(f"{SSHD} not found (apt-get install openssh-server)")
    if sshfs and not Path("/dev/fuse").exists():
        missing.append("/dev/fuse missing (FUSE not available)")
    if not missing:
        probe = subprocess.run(["unshare", "--net", "--uts", "--mount", "true"], capture_output=True, text=True)
        if probe.returncode != 0:
            missing.append(f"cannot create namespaces: {probe.stderr.strip() or probe.returncode}")
    return missing


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise ClusterError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _netns_pids(ns: str) -> list[int]:
    proc = _run(["ip", "netns", "pids", ns], check=False)
    if proc.returncode != 0:
        return []
    return [int(tok) for tok in proc.stdout.split() if tok.isdigit()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def _kill_pids(pids: Iterable[int], *, grace: float = 1.0) -> None:
    """SIGTERM the pids, wait up to `grace` seconds, SIGKILL the survivors, wait up to 2 s more."""
    me = os.getpid()
    pids = {p for p in pids if p > 1 and p != me}
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        alive = set()
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.add(pid)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while alive and time.monotonic() < deadline:
            alive = {p for p in alive if _pid_alive(p)}
            if alive:
                time.sleep(0.02)
        pids = alive
        if not pids:
            return
    if pids:
        log.warning("processes still alive after SIGKILL: %s", sorted(pids))


def _kill_namespace_processes(ns: str, extra: Iterable[int] = (), rounds: int = 10) -> None:
    """Kill every process in netns `ns` (plus `extra` pids), re-listing until none is left (bounded)."""
    extra = set(extra)
    for _ in range(rounds):
        pids = set(_netns_pids(ns)) | {p for p in extra if _pid_alive(p)}
        if not pids:
            return
        _kill_pids(pids, grace=0.5)
        extra = set()
    left = _netns_pids(ns)
    if left:
        log.warning("namespace %s still has processes %s", ns, left)


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def _used_subnet_octets() -> set[int]:
    """Third octets of 10.213.X.0/24 addresses in use in the root namespace or any named namespace."""
    used: set[int] = set()
    outputs = [_run(["ip", "-4", "-o", "addr", "show"], check=False).stdout]
    outputs.append(_run(["ip", "-4", "route", "show"], check=False).stdout)
    for ns in _run(["ip", "netns", "list"], check=False).stdout.splitlines():
        name = ns.split()[0] if ns.split() else ""
        if name:
            outputs.append(_run(["ip", "-n", name, "-4", "-o", "addr", "show"], check=False).stdout)
    pattern = re.compile(r"\b10\.213\.(\d{1,3})\.\d{1,3}")
    for text in outputs:
        used.update(int(m) for m in pattern.findall(text))
    return used


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@dataclass
class _Node:
    index: int
    name: str
    ns: str
    ip: str
    host_veth: str
    dir: Path
    port: int = 22
    proc: subprocess.Popen | None = None
    down: bool = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


@dataclass(eq=False)  # identity semantics: a cluster is a live resource
class SshCluster:
    """K hosts, each a network + UTS + mount namespace running its own sshd on <ip>:22.

    Use as a context manager or call start()/stop(). Attributes after start(): ``hosts`` (IPs, node 0
    first), ``names`` (``node-0``...), ``client_key_path``, ``known_hosts_path``, ``subnet``, ``gateway``
    (the root namespace's address on the bridge), ``user`` (``root``), ``port`` (node 0's sshd port).

    Options for first-contact faults: ``ports`` (node i's sshd listens on ``ports[i]`` instead of 22; the nodes'
    own ssh config then names each node's port, so MPI launchers still reach them), ``extra_ports`` (every sshd
    also listens on these: one machine under several ``host:port`` entries) and ``no_sftp`` (the indices of
    nodes whose sshd has no ``Subsystem sftp`` line).
    """

    k: int
    name_prefix: str = "node-"
    private_dirs: Sequence[str] = ("/tmp", "/var/tmp")
    start_timeout: float = 15.0
    ports: Sequence[int] = ()
    extra_ports: Sequence[int] = ()
    no_sftp: Sequence[int] = ()
    hosts: list[str] = field(default_factory=list, init=False)
    names: list[str] = field(default_factory=list, init=False)
    user: str = field(default="root", init=False)
    port: int = field(default=22, init=False)

    def __post_init__(self) -> None:
        if not 1 <= self.k <= MAX_HOSTS:
            raise ValueError(f"k must be between 1 and {MAX_HOSTS}, got {self.k}")
        if self.ports and (len(self.ports) != self.k or not all(1 <= p <= 65535 for p in self.ports)):
            raise ValueError(f"ports must hold one TCP port per host, got {self.ports!r}")
        if not all(0 <= i < self.k for i in self.no_sftp):
            raise ValueError(f"no_sftp must hold host indices below {self.k}, got {self.no_sftp!r}")
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,30}", self.name_prefix):
            raise ValueError(f"bad name_prefix {self.name_prefix!r}")
        for d in self.private_dirs:
            # Not /root: the venvs' python lives under /root/.pyenv here; not system directories.
            reserved = ("", "/root", "/root/.ssh", "/etc", "/proc", "/sys", "/dev", "/run", "/usr", "/work")
            if not re.fullmatch(r"/[A-Za-z0-9_./-]+", d) or ".." in d or d.rstrip("/") in reserved:
                raise ValueError(f"bad private dir {d!r}")
        self.run_id = secrets.token_hex(3)
        self._nodes: list[_Node] = []
        self._bridge = f"mpb{self.run_id}br"
        self._state: Path | None = None
        self._lock_fds: list[int] = []
        self._started = False
        self._stopped = False
        self._lock = threading.Lock()
        self.subnet: ipaddress.IPv4Network | None = None
        self.gateway: str | None = None

    # ---------------------------------------------------------------------------------------------- paths
    @property
    def state_dir(self) -> Path:
        if self._state is None:
            raise ClusterError("cluster not started")
        return self._state

    @property
    def client_key_path(self) -> Path:
        """Private key (ed25519, OpenSSH format) that every node's sshd accepts for root."""
        return self.state_dir / "ssh" / "id_ed25519"

    @property
    def known_hosts_path(self) -> Path:
        """known_hosts for the test process: every host key, under the node's name and its IP."""
        return self.state_dir / "known_hosts"

    @property
    def namespaces(self) -> list[str]:
        return [n.ns for n in self._nodes]

    def sshd_pid(self, i: int) -> int | None:
        return self._node(i).pid

    def ssh_options(self) -> list[str]:
        """OpenSSH client options for reaching the hosts from the test process (host keys checked)."""
        return [
            "-i", str(self.client_key_path), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts_path}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
            "-l", self.user,
        ]

    def ssh_client(self, i: int, timeout: float = 10):
        """A connected paramiko.SSHClient to node i as root: RejectPolicy + the cluster's known_hosts."""
        import paramiko

        client = paramiko.SSHClient()
        client.load_host_keys(str(self.known_hosts_path))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                self._node(i).ip, port=self._node(i).port, username=self.user, key_filename=str(self.client_key_path),
                allow_agent=False, look_for_keys=False, timeout=timeout, banner_timeout=timeout,
                auth_timeout=timeout,
            )
        except BaseException:
            client.close()
            raise
        return client

    def node_path(self, i: int, path: str | os.PathLike[str]) -> Path:
        """Where the test process can read node i's `path` (absolute, as the node sees it)."""
        node = self._node(i)
        p = str(path)
        if not p.startswith("/"):
            raise ValueError(f"node paths are absolute, got {p!r}")
        if node.pid is None or not _pid_alive(node.pid):
            raise ClusterError(f"{node.name}: sshd is not running (killed?), its mount namespace is gone")
        return Path(f"/proc/{node.pid}/root{p}")

    # ---------------------------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> SshCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> SshCluster:
        with self._lock:
            if self._started:
                raise ClusterError("cluster already started")
            self._started = True
        missing = requirements_missing()
        if missing:
            raise ClusterError("cannot start an SSH cluster: " + "; ".join(missing))
        _register(self)
        t0 = time.monotonic()
        try:
            self._prepare_state()
            self._make_keys_and_configs()
            self._make_network()
            self._start_sshds()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        log.info("cluster %s: %d hosts up in %.2f s (%s)", self.run_id, self.k, time.monotonic() - t0, self.subnet)
        return self

    def _prepare_state(self) -> None:
        STATE_ROOT.mkdir(mode=0o700, parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        Path("/root/.ssh").mkdir(mode=0o700, exist_ok=True)
        cleanup_stale()
        # The run lock first: cleanup_stale() in other processes leaves locked runs alone.
        fd = _try_lock(STATE_ROOT / f"{self.run_id}.lock")
        if fd is None:
            raise ClusterError(f"run id {self.run_id} is locked by another run")
        self._lock_fds.append(fd)
        state = STATE_ROOT / self.run_id
        state.mkdir(mode=0o700)
        self._state = state
        # Reserve a /24: a lock file per third octet, and no address or route already in it.
        used = _used_subnet_octets()
        candidates = [x for x in range(1, 255) if x not in used]
        random.shuffle(candidates)
        for x in candidates[:64]:
            fd = _try_lock(STATE_ROOT / f"subnet-{x}.lock")
            if fd is None:
                continue
            self._lock_fds.append(fd)
            self.subnet = ipaddress.IPv4Network(f"{SUBNET_FIRST_OCTETS}.{x}.0/24")
            break
        else:
            raise ClusterError("no free 10.213.X.0/24 subnet")
        (state / "owner").write_text(f"{os.getpid()}\n{self.subnet}\n")
        base = self.subnet.network_address
        self.gateway = str(base + ROOT_HOST_OCTET)
        for i in range(self.k):
            d = state / f"node-{i}"
            d.mkdir()
            self._nodes.append(
                _Node(
                    index=i,
                    name=f"{self.name_prefix}{i}",
                    ns=f"{NS_PREFIX}{self.run_id}-{i}",
                    ip=str(base + 1 + i),
                    host_veth=f"mpb{self.run_id}h{i}",
                    dir=d,
                    port=self.ports[i] if self.ports else 22,
                )
            )
        self.hosts = [n.ip for n in self._nodes]
        self.names = [n.name for n in self._nodes]
        self.port = self._nodes[0].port

    def _make_keys_and_configs(self) -> None:
        state = self.state_dir
        ssh_dir = state / "ssh"
        ssh_dir.mkdir(mode=0o700)

        def keygen(path: Path, comment: str) -> subprocess.Popen:
            return subprocess.Popen(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            )

        jobs = [keygen(ssh_dir / "id_ed25519", f"mpibatch-cluster-{self.run_id}")]
        jobs += [keygen(n.dir / "ssh_host_ed25519_key", n.name) for n in self._nodes]
        for job in jobs:
            _, err = job.communicate(timeout=30)
            if job.returncode != 0:
                raise ClusterError(f"ssh-keygen failed: {err.decode(errors='replace').strip()}")

        client_pub = (ssh_dir / "id_ed25519.pub").read_text().strip()
        (state / "authorized_keys").write_text(client_pub + "\n")
        lines = []
        for n in self._nodes:
            keytype, key = (n.dir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
            names = [n.name, n.ip] + [f"[{a}]:{p}" for p in {n.port, *self.extra_ports} - {22} for a in (n.ip, n.name)]
            lines.append(f"{','.join(names)} {keytype} {key}\n")
        known = "".join(lines)
        self.known_hosts_path.write_text(known)
        (ssh_dir / "known_hosts").write_text(known)
        # A node whose sshd is not on 22: the nodes' ssh (MPI launchers) finds its port here, as in ~/.ssh/config.
        ports = "".join(f"Host {n.name} {n.ip}\n    Port {n.port}\n" for n in self._nodes if n.port != 22)
        (ssh_dir / "config").write_text(
            ports + "Host *\n"
            "    User root\n"
            "    IdentityFile /root/.ssh/id_ed25519\n"
            "    IdentitiesOnly yes\n"
            "    UserKnownHostsFile /root/.ssh/known_hosts\n"
            "    GlobalKnownHostsFile /dev/null\n"
            "    StrictHostKeyChecking yes\n"
            "    BatchMode yes\n"
            "    ConnectTimeout 10\n"
            "    LogLevel ERROR\n"
        )
        for f in ssh_dir.iterdir():
            f.chmod(0o600)

        hosts = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
        hosts += [f"{n.ip} {n.name}" for n in self._nodes]
        for n in self._nodes:
            (n.dir / "hosts").write_text("\n".join(hosts) + "\n")
            (n.dir / "sshd_config").write_text(
                "".join(f"ListenAddress {n.ip}:{p}\n" for p in (n.port, *self.extra_ports)) +
                f"HostKey {n.dir / 'ssh_host_ed25519_key'}\n"
                f"PidFile {n.dir / 'sshd.pid'}\n"
                f"AuthorizedKeysFile {state / 'authorized_keys'}\n"
                "PermitRootLogin prohibit-password\n"
                "PubkeyAuthentication yes\n"
                "PasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\n"
                "UsePAM no\n"
                "StrictModes no\n"
                "UseDNS no\n"
                "PrintMotd no\n"
                "PrintLastLog no\n"
                "X11Forwarding no\n"
                "MaxStartups 100\n"
                "MaxSessions 100\n"
                "LoginGraceTime 30\n"
                + ("" if n.index in self.no_sftp else "Subsystem sftp internal-sftp\n") +
                "LogLevel INFO\n"
            )

    def _make_network(self) -> None:
        br = self._bridge
        _run(["ip", "link", "add", br, "type", "bridge"])
        _run(["ip", "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", br])
        _run(["ip", "link", "set", br, "up"])
        for n in self._nodes:
            _run(["ip", "netns", "add", n.ns])
            _run(["ip", "link", "add", n.host_veth, "type", "veth", "peer", "name", "eth0", "netns", n.ns])
            _run(["ip", "link", "set", n.host_veth, "master", br, "up"])
            _run(["ip", "-n", n.ns, "addr", "add", f"{n.ip}/{self.subnet.prefixlen}", "dev", "eth0"])
            _run(["ip", "-n", n.ns, "link", "set", "eth0", "up"])
            _run(["ip", "-n", n.ns, "link", "set", "lo", "up"])

    def _start_sshds(self) -> None:
        for n in self._nodes:
            mounts = [f"mount --bind {n.dir / 'hosts'} /etc/hosts", f"mount --bind {self.state_dir / 'ssh'} /root/.ssh"]
            # The checkout (its .venvs hold the MPI runtimes the hosts run) stays visible even when it lives
            # under a private dir, e.g. a CI clone in /tmp: park it, mount the tmpfs, move it back.
            keep = [d for d in self.private_dirs if REPO_ROOT == Path(d) or Path(d) in REPO_ROOT.parents]
            if keep:
                repo = n.dir / 'repo'
                mounts.append(f"mkdir -p {repo} && mount --bind {shlex.quote(str(REPO_ROOT))} {repo}")
            mounts += [f"mkdir -p {d} && mount -t tmpfs -o mode=1777 tmpfs {d}" for d in self.private_dirs]
            if keep:
                repo = shlex.quote(str(REPO_ROOT))
                mounts.append(f"mkdir -p {repo} && mount --move {n.dir / 'repo'} {repo}")
            script = "set -e; hostname {name}; {mounts}; exec {sshd} -D -f {cfg} -E {log}".format(
                name=n.name,
                mounts="; ".join(mounts),
                sshd=SSHD,
                cfg=n.dir / "sshd_config",
                log=n.dir / "sshd.log",
            )
            # ip netns exec and unshare (no --fork) exec in place: the Popen pid is sshd's.
            with open(n.dir / "start.out", "wb") as out:
                n.proc = subprocess.Popen(
                    ["ip", "netns", "exec", n.ns, "unshare", "--uts", "--mount", "--propagation", "private",
                     "sh", "-c", script],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd="/",
                    env=NODE_ENV,
                    close_fds=True,
                )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        pending = list(self._nodes)
        while pending:
            still = []
            for n in pending:
                if n.proc.poll() is not None:
                    raise ClusterError(f"{n.name}: sshd exited ({n.proc.returncode}): {self._node_log(n)}")
                try:
                    with socket.create_connection((n.ip, n.port), timeout=0.5) as s:
                        s.settimeout(2)
                        banner = s.recv(64)
                    if not banner.startswith(b"SSH-"):
                        still.append(n)
                except OSError:
                    still.append(n)
            pending = still
            if pending:
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"sshd not ready after {self.start_timeout} s on "
                        + ", ".join(f"{n.name} ({self._node_log(n)})" for n in pending)
                    )
                time.sleep(0.02)
        # The exec'd pid must be sshd itself, in the node's namespaces.
        for n in self._nodes:
            exe = os.readlink(f"/proc/{n.pid}/exe")
            if not exe.endswith("sshd"):
                raise ClusterError(f"{n.name}: pid {n.pid} is {exe}, not sshd")

    def _node_log(self, n: _Node) -> str:
        text = ""
        for f in ("start.out", "sshd.log"):
            p = n.dir / f
            if p.exists():
                text += p.read_text(errors="replace")[-2000:]
        return text.strip() or "(no output)"

    def stop(self) -> None:
        """Kill every process of the cluster, delete namespaces, veths, bridge and state. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            # All nodes at once first (one grace period), then each namespace until it is empty.
            pids = {p for n in self._nodes for p in _netns_pids(n.ns)}
            pids |= {n.pid for n in self._nodes if n.pid and _pid_alive(n.pid)}
            _kill_pids(pids, grace=0.5)
            for n in self._nodes:
                _kill_namespace_processes(n.ns, extra=[n.pid] if n.pid else [])
                if n.proc is not None:
                    try:
                        n.proc.wait(timeout=2)
                    except subprocess.TimeoutExpired:
                        log.warning("%s: sshd pid %s did not exit", n.name, n.pid)
            _teardown_network(
                self.run_id, [n.ns for n in self._nodes], [n.host_veth for n in self._nodes], self._bridge
            )
            if self._state is not None:
                shutil.rmtree(self._state, ignore_errors=True)
        finally:
            # Unlink the run lock while holding it, then release. Subnet lock files stay (at most 254 of them):
            # unlinking one could let two later runs lock two different files for the same subnet.
            if self._lock_fds:
                _unlink_quiet(STATE_ROOT / f"{self.run_id}.lock")
            for fd in self._lock_fds:
                os.close(fd)
            self._lock_fds = []
            _unregister(self)

    # ---------------------------------------------------------------------------------------------- nodes
    def _node(self, i: int) -> _Node:
        if not self._nodes:
            raise ClusterError("cluster not started")
        if not 0 <= i < len(self._nodes):
            raise IndexError(f"node {i} out of range 0..{len(self._nodes) - 1}")
        return self._nodes[i]

    def exec(
        self,
        i: int,
        argv: Sequence[str],
        timeout: float = 60,
        *,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside node i (its network, UTS and mount namespaces), cwd ``/``, an ssh-login-like env.

        Output is captured as text. Raises subprocess.TimeoutExpired after `timeout` seconds (the command is
        killed). Mind daemons that keep stdout/stderr open (e.g. sshfs's ssh child): redirect them.
        """
        node = self._node(i)
        if node.pid is None or not _pid_alive(node.pid):
            raise ClusterError(f"{node.name}: sshd is not running (killed?), cannot enter its namespaces")
        full_env = dict(NODE_ENV)
        if env:
            full_env.update(env)
        return subprocess.run(
            ["nsenter", "-t", str(node.pid), "-n", "-u", "-m", "--", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            env=full_env,
            check=check,
        )

    def kill_sshd(self, i: int, *, all_processes: bool = False) -> None:
        """Simulate node i dropping: SIGKILL its sshd and take its link down (root side of the veth).

        Established SSH sessions keep their own processes but lose the network; with all_processes=True every
        process in the node's namespace is killed too. exec() on the node is no longer possible afterwards.
        """
        node = self._node(i)
        if node.pid is not None and _pid_alive(node.pid):
            os.kill(node.pid, signal.SIGKILL)
            try:
                node.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                raise ClusterError(f"{node.name}: sshd pid {node.pid} survived SIGKILL") from None
        _run(["ip", "link", "set", node.host_veth, "down"])
        node.down = True
        if all_processes:
            _kill_namespace_processes(node.ns)

    def is_down(self, i: int) -> bool:
        return self._node(i).down

    def processes(self, i: int) -> list[int]:
        """Pids in node i's network namespace other than its sshd listener."""
        node = self._node(i)
        return sorted(p for p in _netns_pids(node.ns) if p != node.pid and _pid_alive(p))

    def process_table(self, i: int) -> list[tuple[int, str]]:
        """(pid, command line) for processes(i) - for assertion messages."""
        out = []
        for pid in self.processes(i):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            out.append((pid, cmd))
        return out

    def wait_idle(self, i: int | None = None, timeout: float = 10.0) -> dict[int, list[tuple[int, str]]]:
        """Wait (bounded) until node i (or every up node) has no process besides sshd.

        Returns what is still running, by node index: empty dict when idle. Closing an SSH connection
        leaves its sshd session process for a moment, hence the wait.
        """
        indices = [i] if i is not None else [n.index for n in self._nodes if not n.down]
        deadline = time.monotonic() + timeout
        while True:
            left = {j: t for j in indices if (t := self.process_table(j))}
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.05)

    def describe(self) -> str:
        return ", ".join(f"{n.name}={n.ip} (ns {n.ns}, sshd {n.pid})" for n in self._nodes)


def _unlink_quiet(p: Path) -> None:
    try:
        p.unlink()
    except FileNotFoundError:
        pass


def _teardown_network(run_id: str, namespaces: Iterable[str], veths: Iterable[str], bridge: str) -> None:
    for ns in namespaces:
        if Path("/run/netns", ns).exists():
            _kill_namespace_processes(ns)
            _run(["ip", "netns", "del", ns], check=False)
    for veth in veths:
        if _link_exists(veth):
            _run(["ip", "link", "del", veth], check=False)
    if _link_exists(bridge):
        _run(["ip", "link", "del", bridge], check=False)


def cleanup_stale() -> list[str]:
    """Tear down clusters whose owning process died without cleaning up (its run lock is free).

    Only touches names this module creates (``mpb-<6 hex>-<i>`` namespaces, ``mpb<6 hex>*`` links) and only
    for runs whose lock nobody holds; live parallel runs hold theirs. Returns the run ids cleaned.
    """
    if not STATE_ROOT.is_dir():
        return []
    runs: set[str] = set()
    for p in STATE_ROOT.iterdir():
        if p.is_dir() and _RUN_ID_RE.match(p.name):
            runs.add(p.name)
    netns_dir = Path("/run/netns")
    ns_by_run: dict[str, list[str]] = {}
    if netns_dir.is_dir():
        for p in netns_dir.iterdir():
            m = _NS_RE.match(p.name)
            if m:
                ns_by_run.setdefault(m.group(1), []).append(p.name)
                runs.add(m.group(1))
    cleaned = []
    for run in sorted(runs):
        lock_path = STATE_ROOT / f"{run}.lock"
        fd = _try_lock(lock_path)
        if fd is None:
            continue  # a live run holds it
        try:
            if (STATE_ROOT / run).is_dir() or run in ns_by_run:
                veths = [p.name for p in Path("/sys/class/net").iterdir() if p.name.startswith(f"mpb{run}h")]
                _teardown_network(run, ns_by_run.get(run, []), veths, f"mpb{run}br")
                shutil.rmtree(STATE_ROOT / run, ignore_errors=True)
                cleaned.append(run)
                log.warning("cleaned up stale SSH cluster %s", run)
        finally:
            _unlink_quiet(lock_path)
            os.close(fd)
    return cleaned


# -------------------------------------------------------------------------------------------------- registry
# Clusters still running are stopped at interpreter exit and on SIGTERM (then the signal is re-delivered).
_live: dict[int, SshCluster] = {}
_live_lock = threading.Lock()
_handlers_installed = False
_prev_sigterm: object = None


def _register(c: SshCluster) -> None:
    global _handlers_installed, _prev_sigterm
    with _live_lock:
        _live[id(c)] = c
        if _handlers_installed:
            return
        _handlers_installed = True
    atexit.register(stop_all)
    if threading.current_thread() is threading.main_thread():
        _prev_sigterm = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _on_sigterm)


def _unregister(c: SshCluster) -> None:
    with _live_lock:
        _live.pop(id(c), None)


def stop_all() -> None:
    with _live_lock:
        clusters = list(_live.values())
    for c in clusters:
        try:
            c.stop()
        except Exception:  # noqa: BLE001 - keep stopping the others
            log.exception("stopping cluster %s failed", c.run_id)


def _on_sigterm(signum: int, frame: object) -> None:
    stop_all()
    prev = _prev_sigterm
    if callable(prev):
        prev(signum, frame)
        return
    signal.signal(signal.SIGTERM, prev if prev is not None else signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
