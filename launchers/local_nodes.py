"""The inits of a local run's emulated nodes, made by one process: started once per run inside the run's user,
PID and mount namespaces (`python3 -I -S local_nodes.py NODES_DIR NODE_ROOT HOSTNAME...`), it forks one init
per HOSTNAME, i.e. per node, in its own mount and UTS namespaces:
- node i's directory (NODES_DIR/i) appears at NODE_ROOT, the path every node shares (as /mnt/batch/tasks on
  Batch); the other nodes' directories, beside it under NODES_DIR, are covered (not this node's to see or write);
- its hostname is HOSTNAME;
- /dev/shm is its own (POSIX shared-memory segments never reach the host's, nor another node's or run's; System V
  ones are the run's, and UCX, seeing one kernel boot id, treats the nodes as one machine).
/etc/hosts comes from the run (local_run_init.sh). Each init writes `ready INDEX PID` (its PID in the run's PID
namespace) or `failed INDEX REASON` on stdout, then sleeps until the executor ends the run.

One fork per node instead of a chain of programs (nsenter, unshare, a shell, mount three times, hostname,
sleep): at 64 nodes that chain was most of a run's start-up CPU. Standard library only; the system calls through
ctypes (os.unshare is Python 3.12+).

Then it is the run's agent: the executor starts each node process (a coordination command, the application) by
a request on stdin - `LENGTH\n` then LENGTH bytes of NUL-separated fields (no argument, variable or path holds a
NUL; any may hold a newline): `spawn TAG INDEX CWD STDOUT STDERR ARGC ARGV... NAME=VALUE...` - and this process
forks it into node INDEX's mount and UTS namespaces, in its own session (`started TAG PID`; `error TAG ERRNO` when
exec refused it, E2BIG: the executor says why); `kill TAG` kills its process group; each one's end is
`exit TAG CODE` (negative: the signal that ended it). No `nsenter` and no fork of the executor per node process.
No json either: its import alone (re, enum) was most of this process's start-up.
"""
from __future__ import annotations

import ctypes
import errno
import os
import select
import signal
import sys

CLONE_NEWNS, CLONE_NEWUTS = 0x00020000, 0x04000000
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x1000, 0x4000, 0x40000

libc = ctypes.CDLL(None, use_errno=True)


def _call(what: str, rc: int) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def b(s: str | None) -> bytes | None:
        return s.encode() if s is not None else None
    _call(f"mount {source} on {target}", libc.mount(b(source), b(target), b(fstype), ctypes.c_ulong(flags), b(data)))


def become_node(nodes_dir: str, node_root: str, index: int, hostname: str) -> None:
    """This process becomes node `index`'s init (see the module's text)."""
    _call("unshare", libc.unshare(CLONE_NEWNS | CLONE_NEWUTS))
    mount("none", "/", None, MS_REC | MS_PRIVATE)  # nothing of this node's mounts reaches the run, nor back
    mount(f"{nodes_dir}/{index}", node_root, None, MS_BIND)
    mount("tmpfs", nodes_dir, "tmpfs", 0, "mode=755,size=64k")  # over the others: this node's stays at node_root
    mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    name = hostname.encode()
    _call("sethostname", libc.sethostname(name, len(name)))


def node_init(nodes_dir: str, node_root: str, index: int, hostname: str) -> None:
    """The forked child: one line on stdout (each under PIPE_BUF: lines of different nodes never mix), then
    sleep until killed (SIGKILL with the run; the kernel ends it with the run's PID 1 in any case)."""
    try:
        become_node(nodes_dir, node_root, index, hostname)
        line = f"ready {index} {os.getpid()}\n"
    except OSError as e:
        line = f"failed {index} {e.strerror or e}\n"
    os.write(1, line.encode())
    if not line.startswith("ready"):
        os._exit(1)
    fd = os.open(os.devnull, os.O_RDWR)  # no pipe of the executor stays open in a node's init
    for n in (0, 1, 2):
        os.dup2(fd, n)
    os.close(fd)
    while True:
        signal.pause()


class Request:
    """One `spawn` request (see the module's text)."""

    def __init__(self, fields: list[str]) -> None:
        self.tag, self.node, self.cwd, self.stdout, self.stderr = fields[1], int(fields[2]), *fields[3:6]
        argc = int(fields[6])
        self.argv = fields[7:7 + argc]
        self.env = dict(kv.split("=", 1) for kv in fields[7 + argc:])


def spawn(inits: dict[int, int], req: Request) -> tuple[int, int]:
    """Fork req's process into its node's namespaces: (its PID, 0), or (0, errno) when exec refused it with
    E2BIG (other exec errors end it with 127 or 126 and a line on its stderr, as a shell would)."""
    status_r, status_w = os.pipe()  # close-on-exec: end of file here once the program runs
    pid = os.fork()
    if pid == 0:
        code, err = 127, 2
        try:
            os.close(status_r)
            os.setsid()
            for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD):  # Python ignores the first two
                signal.signal(sig, signal.SIG_DFL)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
            out = os.open(req.stdout, flags, 0o666)  # paths as the run sees them: before entering the node
            err = os.open(req.stderr, flags, 0o666)
            for ns in ("mnt", "uts"):
                fd = os.open(f"/proc/{inits[req.node]}/ns/{ns}", os.O_RDONLY)
                _call(f"setns {ns}", libc.setns(fd, 0))
                os.close(fd)
            os.chdir(req.cwd)
            null = os.open(os.devnull, os.O_RDONLY)
            for fd, n in ((null, 0), (out, 1), (err, 2)):
                os.dup2(fd, n)
        except OSError as e:
            os.write(err, f"mpibatch: node {req.node}: {e}\n".encode())
            os._exit(code)
        try:
            os.execvpe(req.argv[0], req.argv, req.env)
        except OSError as e:
            if e.errno == errno.E2BIG:
                os.write(status_w, str(e.errno).encode())
            else:
                os.write(2, f"mpibatch: cannot run {req.argv[0]}: {e.strerror or e}\n".encode())
                code = 127 if e.errno == errno.ENOENT else 126
        finally:
            os._exit(code)
    os.close(status_w)
    with os.fdopen(status_r, "rb") as f:
        refused = f.read()
    if refused:
        os.waitpid(pid, 0)
        return 0, int(refused)
    return pid, 0


def reply(line: str) -> None:
    os.write(1, (line + "\n").encode())


def reap(tags: dict[int, str]) -> None:
    """Every child that has ended: a node process's end is reported; an init's is not (the executor watches
    each init itself: a lost node)."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in tags:
            reply(f"exit {tags.pop(pid)} {os.waitstatus_to_exitcode(status)}")


def handle(fields: list[str], inits: dict[int, int], tags: dict[int, str]) -> None:
    if fields[0] == "kill":
        pid = next((p for p, t in tags.items() if t == fields[1]), 0)
        if pid:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return
    req = Request(fields)
    pid, refused = spawn(inits, req)
    if pid:
        tags[pid] = req.tag
        reply(f"started {req.tag} {pid}")
    else:
        reply(f"error {req.tag} {refused}")


def serve(inits: dict[int, int]) -> None:
    """Requests on stdin, replies on stdout (see the module's text), until the executor closes stdin - or the run
    ends, and this process with it."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the select below
    tags: dict[int, str] = {}  # PID -> tag of each running node process
    pending = b""
    while True:
        ready = select.select([0, wake_r], [], [])[0]
        if wake_r in ready:
            os.read(wake_r, 4096)
        reap(tags)
        if 0 not in ready:
            continue
        chunk = os.read(0, 1 << 20)
        if not chunk:
            break
        pending += chunk
        while b"\n" in pending:  # every whole request
            head, _, rest = pending.partition(b"\n")
            if len(rest) < int(head):
                break
            handle([os.fsdecode(f) for f in rest[:int(head)].split(b"\0")], inits, tags)
            pending = rest[int(head):]
    # The executor closed stdin: the run ends. Everything this process started is killed and reaped here, so
    # the CPU time of every node process reaches the executor's accounting (a SIGKILL of the whole run orphans
    # them first: their time was lost).
    for pid in [*tags, *inits.values()]:
        try:
            os.killpg(pid, signal.SIGKILL) if pid in tags else os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    while True:  # bounded: every child was sent SIGKILL
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return
        if pid in tags:
            reply(f"exit {tags.pop(pid)} {os.waitstatus_to_exitcode(status)}")


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print("usage: local_nodes.py NODES_DIR NODE_ROOT HOSTNAME...", file=sys.stderr)
        return 2
    nodes_dir, node_root, hostnames = argv[0], argv[1], argv[2:]
    inits: dict[int, int] = {}
    for index, hostname in enumerate(hostnames):
        pid = os.fork()
        if pid == 0:
            try:
                node_init(nodes_dir, node_root, index, hostname)
            finally:
                os._exit(1)
        inits[index] = pid
    serve(inits)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
