"""The SSH connection layer under SshTransport: one paramiko client per host, its host-key check, the
keepalive that tells a lost host, remote commands over their own channels, and the shell lines that
start a task's process group (tied to the controller's session) and sweep a run's processes.

Host keys are checked against known_hosts with paramiko's RejectPolicy, unless the loudly named
opt-out is given. paramiko's own wire errors go to WIRE_LOG, quiet by default: connect() turns them
into one message each.
"""
from __future__ import annotations

import logging
import shlex
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from ...errors import InfraError, SpecError
from ...hostlist import HostSpec

log = logging.getLogger(__name__)

RUN_VAR = "MPIBATCH_RUN_ID"  # marker exported to every process a run starts (for the cleanup sweep)
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CONNECT_TIMEOUT_S = 5.0
KEEPALIVE_S = 1.0
LOST_AFTER_S = 4.0  # no keepalive reply for this long: the host is lost
SFTP_TIMEOUT_S = 30.0
# Named after the package (the CLI lowers this logger's level with -vv).
WIRE_LOG = "mpibatch.executors.ssh.wire"
logging.getLogger(WIRE_LOG).setLevel(logging.CRITICAL)
INSECURE_FLAG = "--insecure-accept-unknown-host-keys"


def check_host_count(needed: int, given: int) -> None:
    """One host per instance: bad input, found before anything starts."""
    if needed > given:
        raise SpecError("hosts", f"the task needs {needed} instances (one per host) but {given} "
                        f"host(s) were given", f"give at least {needed} hosts or lower task.instances")


def stamp(t: float | None = None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t if t is not None else time.time()))


@dataclass
class Host:
    spec: HostSpec
    user: str
    port: int
    client: paramiko.SSHClient | None = None
    transport: paramiko.Transport | None = None
    sftp: paramiko.SFTPClient | None = None
    sftp_lock: threading.Lock = field(default_factory=threading.Lock)  # one SFTP channel per host
    probe_since: float | None = None  # a keepalive request has been waiting since then
    lost_reason: str | None = None
    made_dirs: set[str] = field(default_factory=set)

    @property
    def label(self) -> str:
        return str(HostSpec(self.user, self.spec.host, self.port if self.port != 22 else None))

    def sftp_client(self) -> paramiko.SFTPClient:
        """The host's SFTP session, opened on first use. Caller holds sftp_lock."""
        if self.lost_reason:
            raise OSError(f"{self.label} was lost: {self.lost_reason}")
        if self.sftp is None:
            assert self.client is not None
            self.sftp = self.client.open_sftp()
            chan = self.sftp.get_channel()
            if chan is not None:
                chan.settimeout(SFTP_TIMEOUT_S)  # a host that stops answering fails, not hangs
        return self.sftp

    def close(self) -> None:
        for thing in (self.sftp, self.client):
            try:
                if thing is not None:
                    thing.close()
            except Exception:  # noqa: BLE001 - closing a dead connection
                pass
        self.sftp = None


def check_known_hosts_file(known_hosts: str, hosts: Sequence[Host]) -> None:
    if not Path(known_hosts).is_file():
        first = hosts[0]
        raise SpecError("known_hosts", f"{known_hosts} does not exist, so no host key of "
                        f"{', '.join(h.label for h in hosts)} can be checked",
                        f"add the hosts' keys after checking them, e.g. "
                        f"ssh-keyscan -p {first.port} {first.spec.host} >> {known_hosts}, or pass "
                        f"--known-hosts FILE (or, only for throwaway hosts, {INSECURE_FLAG})")


def connect(h: Host, *, known_hosts: str, key: str | None, insecure: bool, timeout: float) -> None:
    """Open h's client (host key checked unless `insecure`) and its SFTP session; one clear error otherwise."""
    client = paramiko.SSHClient()
    client.set_log_channel(WIRE_LOG)
    if insecure:
        log.warning("%s: host key NOT checked (%s): anyone on the network path can impersonate it",
                    h.label, INSECURE_FLAG)
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    else:
        try:
            client.load_host_keys(known_hosts)
        except (OSError, paramiko.SSHException) as e:
            raise SpecError("known_hosts", f"cannot read {known_hosts}: {e}",
                            "fix or replace the known_hosts file") from None
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    t = timeout
    keyscan = f"ssh-keyscan -p {h.port} {h.spec.host} >> {known_hosts}"
    try:
        client.connect(h.spec.host, port=h.port, username=h.user, key_filename=key,
                       allow_agent=key is None, look_for_keys=key is None, timeout=t,
                       banner_timeout=t, auth_timeout=t, channel_timeout=t)
    except paramiko.BadHostKeyException as e:
        client.close()
        raise SpecError("known_hosts", f"the host key of {h.label} has CHANGED: it offered "
                        f"{e.key.get_name()} {e.key.fingerprint} but {known_hosts} has "
                        f"{e.expected_key.fingerprint}. The host was reinstalled, or someone is "
                        "intercepting the connection; nothing was run",
                        f"if you know why it changed, remove the old entry (ssh-keygen -R {h.spec.host} "
                        f"-f {known_hosts}) and add the new one after checking it ({keyscan})") from None
    except paramiko.SSHException as e:
        handshake_done = getattr(client.get_transport(), "session_id", None) is not None
        client.close()
        if "not found in known_hosts" in str(e):
            raise SpecError("known_hosts", f"the host key of {h.label} is unknown: {known_hosts} "
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
    except TimeoutError:
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
    with h.sftp_lock:
        try:
            h.sftp_client()  # opened here, in parallel with the other hosts
        except (paramiko.SSHException, EOFError, OSError) as e:
            h.close()
            # paramiko says only "Channel closed.": sshd refuses the subsystem request when none is configured.
            raise InfraError(f"{h.label}: its SSH server refused an SFTP session ({str(e).strip() or type(e).__name__}"
                             "), most likely because it has no SFTP subsystem; mpibatch copies files over SFTP. "
                             "Enable it in the host's sshd_config with `Subsystem sftp internal-sftp` (or the path "
                             "of sftp-server) and reload sshd") from None


def monitor(h: Host, closed: threading.Event) -> None:
    """Keepalive round trips until `closed`; lost() reports a host whose reply is overdue or whose link closed."""
    while not closed.is_set():
        tr = h.transport
        if tr is None or not tr.is_active():
            return
        h.probe_since = time.monotonic()
        try:
            tr.global_request("keepalive@openssh.com", wait=True)
        except Exception:  # noqa: BLE001 - a failed write is a dead link; is_active() says so
            pass
        h.probe_since = None
        closed.wait(KEEPALIVE_S)


def lost(h: Host, lost_after: float) -> str | None:
    """Why h is gone (link closed, keepalive overdue), remembered once found; None while it answers."""
    if h.lost_reason:
        return h.lost_reason
    tr = h.transport
    if tr is None or not tr.is_active():
        h.lost_reason = f"the SSH connection to {h.label} closed at {stamp()}"
    elif h.probe_since is not None and time.monotonic() - h.probe_since > lost_after:
        since = time.time() - (time.monotonic() - h.probe_since)
        h.lost_reason = (f"{h.label} stopped answering at {stamp(since)} (no SSH keepalive reply for "
                         f"{lost_after:g}s)")
    return h.lost_reason


def run_command(h: Host, command: str, *, timeout: float, open_timeout: float) -> tuple[int, str, str]:
    """Run one shell line on h over its own channel: (exit code, stdout, stderr)."""
    if h.lost_reason:
        raise OSError(f"{h.label} was lost: {h.lost_reason}")
    if h.transport is None or not h.transport.is_active():
        raise InfraError(f"{h.label}: not connected")
    chan = h.transport.open_session(timeout=open_timeout)
    try:
        chan.settimeout(timeout)
        chan.exec_command(command)
        out, err = chan.makefile("rb").read(), chan.makefile_stderr("rb").read()
        return chan.recv_exit_status(), out.decode(errors="replace"), err.decode(errors="replace")
    except TimeoutError:
        raise InfraError(f"{h.label}: command did not finish within {timeout:g}s") from None
    finally:
        chan.close()


def session_line(words: Sequence[str], env: dict[str, str], cwd: str, stdout: str, stderr: str,
                 run_id: str) -> str:
    """The remote shell line for one process: a new session (process group) whose leader prints its
    pid, then runs `words` with exactly `env` (plus the account's identity and the run marker)."""
    assigns = ['HOME="$HOME"', 'USER="$USER"', 'LOGNAME="$LOGNAME"', 'SHELL="${SHELL:-/bin/sh}"',
               f'PATH="${{PATH:-{SYSTEM_PATH}}}"']
    assigns += [shlex.quote(f"{k}={v}") for k, v in env.items()]
    assigns.append(shlex.quote(f"{RUN_VAR}={run_id}"))
    inner = (f"echo $$; cd {shlex.quote(cwd)} || exit 127; exec env -i {' '.join(assigns)} "
             f"{' '.join(shlex.quote(w) for w in words)} < /dev/null >> {shlex.quote(stdout)} "
             f"2>> {shlex.quote(stderr)}")
    # The task's process group lives as long as the connection: when the controller dies (even
    # by SIGKILL) sshd closes the session's stdin, the watcher reads EOF and kills the group.
    return (f"export {RUN_VAR}={run_id}; exec 3<&0; "
            f"setsid -w /bin/bash -c {shlex.quote(inner)} & p=$!; "
            "{ while read -r _ <&3; do :; done; kill -KILL -- -$p; } 2> /dev/null & w=$!; "
            "wait $p; rc=$?; kill $w 2> /dev/null; exit $rc")


def cleanup_line(pgids: Iterable[int], node_root: str, run_id: str) -> str:
    """Kill the run's process groups, then every process carrying the run's marker (MPI ranks,
    sshfs daemons), then lazily unmount FUSE mounts left under the node root."""
    groups = " ".join(str(p) for p in sorted(set(pgids)))
    root = shlex.quote(node_root)
    marker = shlex.quote(f"{RUN_VAR}={run_id}")
    return (f"for g in {groups}; do kill -KILL -- -$g 2>/dev/null; done; "
            f"for f in $(grep -lsxzF {marker} /proc/[0-9]*/environ 2>/dev/null); do "
            f"p=${{f#/proc/}}; p=${{p%/environ}}; [ \"$p\" != $$ ] && kill -KILL \"$p\" 2>/dev/null; done; "
            f"awk -v r={root} '$3 ~ /^fuse/ && index($2, r \"/\") == 1 {{print $2}}' /proc/self/mounts "
            "| while read -r m; do fusermount -uz \"$m\" 2>/dev/null || umount -l \"$m\" 2>/dev/null; done; "
            "true")
