"""The inits of a local run's emulated nodes, made by one process: started once per run inside the run's user,
PID and mount namespaces (`python3 -I -S local_nodes.py NODES_DIR NODE_ROOT HOSTNAME...`), it forks one init
per HOSTNAME, i.e. per node, in its own mount and UTS namespaces:
- node i's directory (NODES_DIR/i) appears at NODE_ROOT, the path every node shares (as /mnt/batch/tasks on
  Batch); the other nodes' directories, beside it under NODES_DIR, are covered (not this node's to see or write);
- its hostname is HOSTNAME;
- /dev/shm is its own (POSIX shared-memory segments never reach the host's, nor another node's or run's; System V
  ones are the run's, and UCX, seeing one kernel boot id, treats the nodes as one machine).
/etc/hosts comes from the run (local_run_init.sh). Each init writes `ready INDEX PID` (its PID in the run's PID
namespace) or `failed INDEX REASON` on stdout, then serves its node's requests (below) until the run ends.

One fork per node instead of a chain of programs (nsenter, unshare, a shell, mount three times, hostname,
sleep): at 64 nodes that chain was most of a run's start-up CPU. Standard library only; the system calls through
ctypes (os.unshare is Python 3.12+).

Then the inits are the run's agent: the executor starts each node process (a coordination command, the
application) by a request on this process's stdin - `LENGTH\n` then LENGTH bytes of NUL-separated fields (no
argument, variable or path holds a NUL; any may hold a newline): `spawn TAG INDEX CWD STDOUT STDERR ARGC ARGV...
NAME=VALUE...` (paths as the node sees them) - which this process hands to node INDEX's init. The init, already
in the node's namespaces, starts it with posix_spawn (a vfork: no copy of a Python process per node process) in
a session of its own, and says `started TAG PID`, or `error TAG ERRNO` when exec refused it with E2BIG (the
executor says why); a program that cannot be run ends with 127 or 126 and a line on its stderr, as under a
shell. `kill TAG INDEX` kills its process group; each one's end is `exit TAG CODE` (negative: the signal that
ended it); `lost TAG` when node INDEX's init is gone. Closing stdin ends the run: each init kills what it
started and reaps it (so its CPU time reaches the executor's accounting), then ends. No `nsenter` and no fork of
the executor per node process; no json either (its import was most of this process's start-up).
"""
from __future__ import annotations

import ctypes
import errno
import os
import select
import signal
import sys
from collections.abc import Iterator

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


def reply(fd: int, line: str) -> None:
    os.write(fd, (line + "\n").encode())  # under PIPE_BUF: the lines of different inits never mix


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:  # a signal may cut a write to a pipe short
        view = view[os.write(fd, view):]


def wake_on_sigchld() -> int:
    """A descriptor that becomes readable when a child ends (a select() on it wakes)."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    return wake_r


def each_request(fd: int, tags: dict[int, str], replies: int) -> Iterator[bytes]:
    """Every whole request read from `fd`, as framed, until it ends; meanwhile every child that ends is reaped
    (and said, when it is one of `tags`)."""
    wake = wake_on_sigchld()
    pending = bytearray()
    while True:
        ready = select.select([fd, wake], [], [])[0]
        if wake in ready:
            os.read(wake, 4096)
            reap(tags, replies)
        if fd not in ready:
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return
        pending += chunk
        while (nl := pending.find(b"\n")) >= 0 and len(pending) - nl - 1 >= (size := int(pending[:nl])):
            yield bytes(pending[:nl + 1 + size])
            del pending[:nl + 1 + size]


def fields_of(framed: bytes) -> list[str]:
    return [os.fsdecode(f) for f in framed.partition(b"\n")[2].split(b"\0")]


def program(name: str, path: str | None) -> str:
    """Where `name` is, by the request's PATH (posix_spawnp would search this process's own)."""
    if "/" in name:
        return name
    for d in (path if path is not None else os.defpath).split(os.pathsep):
        candidate = os.path.join(d or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))


def spawn(fields: list[str], tags: dict[int, str], replies: int) -> None:
    """One `spawn` request, in this node (see the module's text)."""
    tag, cwd, stdout, stderr, argc = fields[1], fields[3], fields[4], fields[5], int(fields[6])
    argv = fields[7:7 + argc]
    env = dict(kv.split("=", 1) for kv in fields[7 + argc:])
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    try:
        os.chdir(cwd)
        pid = os.posix_spawn(program(argv[0], env.get("PATH")), argv, env, setsid=True,
                             setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),  # Python ignores both; a program may not
                             file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                                           (os.POSIX_SPAWN_OPEN, 1, stdout, flags, 0o666),
                                           (os.POSIX_SPAWN_OPEN, 2, stderr, flags, 0o666)])
    except OSError as e:
        if e.errno == errno.E2BIG:
            reply(replies, f"error {tag} {e.errno}")
            return
        try:
            fd = os.open(stderr, flags, 0o666)
            os.write(fd, f"mpibatch: cannot run {argv[0]} in {cwd}: {e.strerror or e}\n".encode())
            os.close(fd)
        except OSError:
            pass
        reply(replies, f"started {tag} 0")
        reply(replies, f"exit {tag} {127 if e.errno == errno.ENOENT else 126}")
        return
    tags[pid] = tag
    reply(replies, f"started {tag} {pid}")


def reap(tags: dict[int, str], replies: int, block: bool = False) -> None:
    """Every child that has ended, each node process's end said; with `block`, until there is none left."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in tags:
            reply(replies, f"exit {tags.pop(pid)} {os.waitstatus_to_exitcode(status)}")


def serve_node(requests_fd: int, replies: int) -> None:
    """A node's init: its requests until the maker closes them, then every process it started is killed and
    reaped (bounded: SIGKILL)."""
    tags: dict[int, str] = {}  # PID -> tag of each running node process
    for framed in each_request(requests_fd, tags, replies):
        fields = fields_of(framed)
        if fields[0] == "spawn":
            spawn(fields, tags, replies)
        else:  # kill
            for pid in [p for p, t in tags.items() if t == fields[1]]:
                kill_group(pid)
    for pid in tags:
        kill_group(pid)
    reap(tags, replies, block=True)


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:  # ended already: its exit is reaped and said
        pass


def node_init(nodes_dir: str, node_root: str, index: int, hostname: str, requests_fd: int, replies: int) -> None:
    """The forked child: one line on stdout, then node INDEX's requests (see the module's text)."""
    try:
        become_node(nodes_dir, node_root, index, hostname)
        line = f"ready {index} {os.getpid()}"
    except OSError as e:
        line = f"failed {index} {e.strerror or e}"
    reply(1, line)
    if not line.startswith("ready"):
        os._exit(1)
    fd = os.open(os.devnull, os.O_RDWR)  # no pipe of the executor stays open as a node process's stdio
    for n in (0, 1, 2):
        os.dup2(fd, n)
    os.close(fd)
    serve_node(requests_fd, replies)


def relay(writers: dict[int, int], replies: int) -> None:
    """The maker: each request to its node's init, until stdin ends; then the inits end, and are reaped (an init
    that ends before is a lost node: the executor watches each init itself)."""
    for framed in each_request(0, {}, replies):
        tag, index = framed.partition(b"\n")[2].split(b"\0", 3)[1:3]  # the rest is the init's to read
        try:
            write_all(writers[int(index)], framed)  # blocks while the init reads: a pipe holds 64 KiB
        except OSError:  # its init is gone
            reply(replies, f"lost {tag.decode()}")
    for fd in writers.values():
        os.close(fd)
    reap({}, replies, block=True)


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print("usage: local_nodes.py NODES_DIR NODE_ROOT HOSTNAME...", file=sys.stderr)
        return 2
    nodes_dir, node_root, hostnames = argv[0], argv[1], argv[2:]
    replies = os.dup(1)  # kept by every init (its stdout becomes /dev/null)
    writers: dict[int, int] = {}  # each init's requests, by node index
    for index, hostname in enumerate(hostnames):
        r, w = os.pipe()
        if os.fork() == 0:
            try:
                for fd in (*writers.values(), w):  # only the maker writes requests: its end is their end
                    os.close(fd)
                node_init(nodes_dir, node_root, index, hostname, r, replies)
            finally:
                os._exit(0)
        os.close(r)
        writers[index] = w
    relay(writers, replies)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
