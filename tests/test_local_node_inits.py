"""The inits of a local run's emulated nodes: one process forks them all (launchers/local_nodes.py), each in its
own mount and UTS namespaces; a node that cannot be made fails the run naming it and leaves no process; a node
whose init ends is reported lost at once, and only that node; a node process starts in its directory as the
node sees it."""
from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest

from mpibatch.errors import InfraError
from mpibatch.executors import nodeinits, userns
from mpibatch.executors.local import LocalTransport
from mpibatch.executors.transport import Node, Proc
from mpibatch.executors.userns import check_namespaces

pytestmark = pytest.mark.mpi


def processes_in(namespaces: set[str]) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/ns/pid") in namespaces:
                found.append(int(pid))
        except OSError:
            continue
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").replace(b"\0", b" ").decode()
    except OSError:
        return ""


def wait_until_none_in(namespaces: set[str]) -> list[int]:
    deadline = time.monotonic() + 5
    while (left := processes_in(namespaces)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def test_one_process_makes_every_node_in_its_own_namespaces(tmp_path: Path) -> None:
    check_namespaces()
    t = LocalTransport(workdir=str(tmp_path / "run"))
    try:
        nodes = t.open(3)
        t._nodes_up()
        inits = [t.holder_pid(n.index) for n in nodes]
        parents = {Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1] for pid in inits}
        assert len(parents) == 1  # forked by one maker
        for kind in ("mnt", "uts"):
            spaces = {os.readlink(f"/proc/{pid}/ns/{kind}") for pid in inits}
            assert len(spaces) == 3 and os.readlink(f"/proc/{t.run_init_pid}/ns/{kind}") not in spaces
        # The agent's address table: each node's init by its PID in the run's namespace.
        for n, pid in zip(nodes, inits):
            status = Path(f"/proc/{pid}/status").read_text()
            ns_pid = next(line.split()[-1] for line in status.splitlines() if line.startswith("NSpid:"))
            assert (t.nodes_dir / n.host).read_text() == ns_pid
        assert [t.lost(n) for n in nodes] == [None, None, None]
        os.kill(inits[1], signal.SIGKILL)
        deadline = time.monotonic() + 5
        while t.lost(nodes[1]) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "node-1 went down" in (t.lost(nodes[1]) or "")
        assert t.lost(nodes[0]) is None and t.lost(nodes[2]) is None
    finally:
        t.close()
    assert not wait_until_none_in(t.pid_namespaces)


def test_a_node_that_cannot_be_made_fails_naming_it_and_leaves_nothing(tmp_path: Path) -> None:
    check_namespaces()

    def bad_hostname(node: Node, root: Path) -> None:
        if node.index == 1:
            node.node_id = "n" * 100  # longer than a hostname may be: sethostname(2) refuses it

    t = LocalTransport(workdir=str(tmp_path / "run"), node_setup=bad_hostname)
    try:
        t.open(3)
        with pytest.raises(InfraError, match=r"could not create emulated node 1: sethostname: Invalid argument"):
            t._nodes_up()
    finally:
        t.close()
    assert t.pid_namespaces and not wait_until_none_in(t.pid_namespaces)
    assert not (tmp_path / "run").exists()



def wait_proc(proc: Proc, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while (rc := proc.poll()) is None:  # bounded: timeout
        assert time.monotonic() < deadline, "the node process did not end"
        time.sleep(0.02)
    return rc


def test_a_node_process_starts_in_its_directory_as_the_node_sees_it(tmp_path: Path) -> None:
    """Started by the run's agent: the directory is the node's (inside its mount namespace, where the node root
    shows that node's own files), the hostname the node's, its own session."""
    check_namespaces()
    t = LocalTransport(workdir=str(tmp_path / "run"))
    try:
        nodes = t.open(2)
        for n in nodes:  # the same node path, each node's own directory behind it
            t.host_path(n, f"{t.mount_point}/here").mkdir()
            (t.host_path(n, f"{t.mount_point}/here") / "mark").write_text(n.node_id + "\n")
        line = "/bin/sh -c 'pwd; cat mark; hostname; read -r a b c d e sid f < /proc/$$/stat; echo $sid $$'"
        procs = [t.start(n, line, dict(t.helper_env), f"{t.mount_point}/here", f"{t.mount_point}/out.txt",
                         f"{t.mount_point}/err.txt") for n in nodes]
        for proc, n in zip(procs, nodes):
            assert wait_proc(proc) == 0, t.host_path(n, f"{t.mount_point}/err.txt").read_text()
            here, mark, host, sid, pid = t.host_path(n, f"{t.mount_point}/out.txt").read_text().split()
            assert (here, mark, host, sid) == (f"{t.mount_point}/here", n.node_id, n.node_id, pid)
    finally:
        t.close()


@pytest.mark.parametrize("wdns", [True, False], ids=["nsenter --wdns", "env --chdir"])
def test_in_directory_enters_the_node_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wdns: bool) -> None:
    """The emulator's task processes enter a node by nsenter: into its directory as the node sees it, by nsenter
    itself where it can, else by env."""
    check_namespaces()
    monkeypatch.setattr(userns, "_nsenter_wdns", lambda: wdns)
    assert (userns.in_directory("/x")[1] == []) == wdns
    t = LocalTransport(workdir=str(tmp_path / "run"))
    try:
        nodes = t.open(2)
        t._nodes_up()
        for n in nodes:
            t.host_path(n, f"{t.mount_point}/here").mkdir()
            (t.host_path(n, f"{t.mount_point}/here") / "mark").write_text(n.node_id)
            opts, before = userns.in_directory(f"{t.mount_point}/here")
            out = subprocess.run([*t._enter(t.holder_pid(n.index), "-m", *opts), *before, "cat", "mark"],
                                 capture_output=True, text=True, timeout=30)
            assert out.stdout == n.node_id, out.stderr
    finally:
        t.close()


def test_the_agent_kills_reports_and_refuses_as_popen_would(tmp_path: Path) -> None:
    """kill() ends the process's whole group (-9); a program that is not there ends 127 with a line on its stderr
    (as a shell's would); exec's E2BIG is an OSError here, which the lifecycle turns into its message."""
    check_namespaces()
    t = LocalTransport(workdir=str(tmp_path / "run"))
    try:
        n = t.open(1)[0]
        out, err = f"{t.mount_point}/out.txt", f"{t.mount_point}/err.txt"
        proc = t.start(n, "/bin/sh -c 'sleep 299 & echo $!; wait'", dict(t.helper_env), t.mount_point, out, err)
        child = t.host_path(n, out)
        deadline = time.monotonic() + 10
        while not child.read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert child.read_text().strip(), "the process did not start"
        proc.kill()
        assert proc.poll() == -signal.SIGKILL
        assert not [p for p in processes_in(t.pid_namespaces) if cmdline(p) == "sleep 299"], "its child lives on"
        missing = t.start(n, "no-such-program-here", dict(t.helper_env), t.mount_point, out, err)
        assert wait_proc(missing) == 127
        assert (f"mpibatch: cannot run no-such-program-here in {t.mount_point}: No such file or directory"
                in t.host_path(n, err).read_text())
        with pytest.raises(OSError) as e:
            t.start(n, "/bin/true", {**t.helper_env, "BIG": "x" * 200_000}, t.mount_point, out, err)
        assert e.value.errno == errno.E2BIG
    finally:
        t.close()
    assert wait_until_none_in(t.pid_namespaces) == []


def test_node_processes_ended_with_the_run_count_in_its_cpu_time(tmp_path: Path) -> None:
    """The agent reaps what it started when the run ends, so a busy node process killed then still shows in the
    CPU time of the process that ran the run (the benchmarks' CPU columns), not lost with an orphan."""
    check_namespaces()
    t = LocalTransport(workdir=str(tmp_path / "run"))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        n = t.open(1)[0]
        t.start(n, "/bin/sh -c 'while :; do :; done'", dict(t.helper_env), t.mount_point,
                f"{t.mount_point}/out.txt", f"{t.mount_point}/err.txt")
        time.sleep(1.0)
    finally:
        t.close()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    assert used > 0.3, f"{used:.2f} s of CPU accounted for a second of a busy loop"


def test_a_dead_agent_makes_every_node_lost(tmp_path: Path) -> None:
    """The maker hands each request to its node's init: without it no node can start anything, so each init ends
    what it started and itself, and every node is lost."""
    check_namespaces()
    t = LocalTransport(workdir=str(tmp_path / "run"))
    try:
        nodes = t.open(2)
        proc = t.start(nodes[1], "sleep 300", dict(t.helper_env), t.mount_point, f"{t.mount_point}/out.txt",
                       f"{t.mount_point}/err.txt")
        assert t.lost(nodes[0]) is None and proc.poll() is None
        assert t.inits is not None and t.inits.maker is not None
        os.kill(userns.child_pid(t.inits.maker.pid), signal.SIGKILL)  # the maker, inside the run's namespaces
        assert wait_proc(proc) == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while not all(t.lost(n) for n in nodes) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [t.lost(n) for n in nodes] == [f"emulated node {n.node_id} went down (its init process ended)"
                                              for n in nodes]
    finally:
        t.close()
    assert wait_until_none_in(t.pid_namespaces) == []


def test_a_maker_that_dies_or_hangs_is_reported_and_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    """The executor waits for the inits' lines a bounded time: a maker that exits without a word, or that never
    writes, is named, stopped, and every later wait is told the same."""
    died = nodeinits.NodeInits([], "/bin/false", "/nonexistent", "/nonexistent", ["node-0"], {})
    with pytest.raises(InfraError, match="could not create the emulated nodes"):
        died.await_ready()
    monkeypatch.setattr(nodeinits, "READY_S", 1.0)
    hung = nodeinits.NodeInits(["/bin/sh", "-c", "sleep 60", "sh"], "python3", "/x", "/y", ["node-0"], {})
    pid = hung.maker.pid if hung.maker else 0
    t0 = time.monotonic()
    with pytest.raises(InfraError, match="did not come up within 1 s"):
        hung.await_ready()
    assert time.monotonic() - t0 < 10 and not Path(f"/proc/{pid}").exists()
    with pytest.raises(InfraError, match="did not come up within 1 s"):
        hung.await_ready()


def test_ready_lines() -> None:
    r, w = os.pipe()
    os.write(w, b"ready 1 12\nready 0 11\n")
    t0 = time.monotonic()
    assert nodeinits.read_lines(r, 3, time.monotonic() + 0.3) == ["ready 1 12", "ready 0 11"]
    assert 0.25 < time.monotonic() - t0 < 5  # waited for the third line until the deadline
    os.write(w, b"ready 2 13\nextra\n")
    assert nodeinits.read_lines(r, 1, time.monotonic() + 5) == ["ready 2 13"]
    os.close(w)
    assert nodeinits.read_lines(r, 5, time.monotonic() + 5) == []  # end of file (the rest of the chunk read before)
    os.close(r)
    assert nodeinits.parse_ready(["ready 1 12", "ready 0 11"]) == ({1: "12", 0: "11"}, "")
    assert nodeinits.parse_ready(["ready 0 11", "failed 1 sethostname: Invalid argument"]) == (
        {0: "11"}, "could not create emulated node 1: sethostname: Invalid argument")
    assert nodeinits.parse_ready(["ready 0 11", ""]) == ({0: "11"}, "")

