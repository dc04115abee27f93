"""SSH executor scaling, measured in one run on a real cluster of netns hosts (tests/infra/cluster.py).

1. End-to-end time of SshExecutor.run for 2, 4 and 8 hosts (a trivial MPICH program, 1 rank per host).
   Goal: 8 hosts at most 1.5x the time of 2.
2. Output collection of 3 hosts x 100 files x 1 MB: SshTransport.collect on all hosts in parallel against
   a sequential paramiko SFTP baseline (one host after the other, one file after the other), both on
   connections opened beforehand. Goal: faster than the baseline.

Prints a table with ratios and writes it into benchmarks/RESULTS.md under "## ssh_scaling".
Run as root:  .venv/bin/python benchmarks/ssh_scaling.py [--repeats N]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._results import RESULTS, write_section  # noqa: E402
import paramiko  # noqa: E402

from mpibatch.executors.ssh import SshExecutor, SshTransport  # noqa: E402
from mpibatch.spec import parse_spec  # noqa: E402
from tests.infra.cluster import SshCluster  # noqa: E402

FILES, FILE_MB = 100, 1
OUT_DIR = "/tmp/mpibatch-bench-out"


def e2e(cluster: SshCluster, k: int, repeats: int, tmp: Path, peer_check: bool = True) -> tuple[float, list[float]]:
    times = []
    env = {} if peer_check else {"MPIBATCH_PEER_CHECK": "0"}
    for r in range(repeats):
        spec = parse_spec({"job": {"id": f"scale{k}-{r}"},
                           "task": {"id": "t", "instances": k, "mpi": {"flavor": "mpich"}, "environment": env,
                                    "command": ["hostname"], "max_wall_clock": "2m"}}, tmp)
        ex = SshExecutor(cluster.hosts[:k], user="root", key=str(cluster.client_key_path),
                         known_hosts=str(cluster.known_hosts_path), runs_dir=str(tmp / "runs"),
                         remote_path_prepend=[str(REPO / ".venvs" / "mpich" / "bin")])
        t0 = time.perf_counter()
        res = ex.submit(spec).result()
        times.append(time.perf_counter() - t0)
        if not res.succeeded:
            raise SystemExit(f"{k} hosts: run failed: {res.failure} {res.instances[0].stderr}")
        names = sorted(set(res.instances[0].stdout.split()))
        if names != sorted(cluster.names[:k]):
            raise SystemExit(f"{k} hosts: ranks ran on {names}")
    return statistics.median(times), times


def make_outputs(cluster: SshCluster, hosts: int) -> None:
    script = (f"rm -rf {OUT_DIR} && mkdir -p {OUT_DIR} && for i in $(seq 1 {FILES}); do "
              f"head -c {FILE_MB * 1048576} /dev/urandom > {OUT_DIR}/out-$i.bin; done")
    with ThreadPoolExecutor(hosts) as pool:
        for r in pool.map(lambda i: cluster.exec(i, ["sh", "-c", script], timeout=120), range(hosts)):
            if r.returncode != 0:
                raise SystemExit(f"creating outputs failed: {r.stderr}")


def collect_parallel(cluster: SshCluster, hosts: int, dest: Path) -> float:
    t = SshTransport(cluster.hosts[:hosts], user="root", key=str(cluster.client_key_path),
                     known_hosts=str(cluster.known_hosts_path))
    try:
        nodes = t.open(hosts)
        for n in nodes:  # sessions up before the clock starts, as for the baseline
            t.read_tail(n, f"{OUT_DIR}/out-1.bin", 1)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(hosts) as pool:
            found = list(pool.map(lambda n: t.collect(n, OUT_DIR, ["*.bin"], _mk(dest / str(n.index))), nodes))
        elapsed = time.perf_counter() - t0
    finally:
        t.close()
    if any(len(f) != FILES for f in found):
        raise SystemExit(f"parallel collect found {[len(f) for f in found]} files")
    return elapsed


def collect_sequential(cluster: SshCluster, hosts: int, dest: Path) -> float:
    clients, sftps = [], []
    try:
        for h in cluster.hosts[:hosts]:
            c = paramiko.SSHClient()
            c.load_host_keys(str(cluster.known_hosts_path))
            c.set_missing_host_key_policy(paramiko.RejectPolicy())
            c.connect(h, username="root", key_filename=str(cluster.client_key_path), allow_agent=False,
                      look_for_keys=False, timeout=10)
            clients.append(c)
            sftps.append(c.open_sftp())
        t0 = time.perf_counter()
        for i, sftp in enumerate(sftps):
            d = _mk(dest / str(i))
            for name in sorted(sftp.listdir(OUT_DIR)):
                sftp.get(f"{OUT_DIR}/{name}", str(d / name))
        elapsed = time.perf_counter() - t0
    finally:
        for s in sftps:
            s.close()
        for c in clients:
            c.close()
    got = sum(1 for _ in dest.rglob("*.bin"))
    if got != FILES * hosts:
        raise SystemExit(f"sequential baseline got {got} files")
    return elapsed


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mpibatch-bench-ssh-"))
    rows: list[str] = []
    try:
        with SshCluster(8) as cluster:
            med = {}
            for k in (2, 4, 8):
                med[k], times = e2e(cluster, k, args.repeats, tmp)
                print(f"{k} hosts: median {med[k]:.2f}s ({', '.join(f'{x:.2f}' for x in times)})", flush=True)
            nopeer = {}
            for k in (2, 8):  # where the time goes: the reachability check of coordinate.sh
                nopeer[k], times = e2e(cluster, k, args.repeats, tmp, peer_check=False)
                print(f"{k} hosts, no peer check: median {nopeer[k]:.2f}s", flush=True)
            make_outputs(cluster, 3)
            seq = collect_sequential(cluster, 3, tmp / "seq")
            shutil.rmtree(tmp / "seq", ignore_errors=True)
            par = collect_parallel(cluster, 3, tmp / "par")
            seq2 = collect_sequential(cluster, 3, tmp / "seq2")  # again, so neither side gets a warm cache only
            par2 = collect_parallel(cluster, 3, tmp / "par2")
            seq_t, par_t = min(seq, seq2), min(par, par2)
        mb = 3 * FILES * FILE_MB
        r8 = med[8] / med[2]
        rows = [
            f"Measured {time.strftime('%Y-%m-%d %H:%M')} on this machine ({_cpus()} CPUs), hosts = network "
            f"namespaces with their own sshd (tests/infra/cluster.py); median of {args.repeats} runs.",
            "",
            "| measurement | time | ratio | goal | met |",
            "|---|---|---|---|---|",
            f"| SshExecutor.run, 2 hosts (MPICH, 1 rank/host) | {med[2]:.2f} s | 1.00 | | |",
            f"| SshExecutor.run, 4 hosts | {med[4]:.2f} s | {med[4] / med[2]:.2f} x 2 hosts | | |",
            f"| SshExecutor.run, 8 hosts | {med[8]:.2f} s | {r8:.2f} x 2 hosts | <= 1.5 | "
            f"{'yes' if r8 <= 1.5 else 'NO'} |",
            f"| same, 2 hosts, MPIBATCH_PEER_CHECK=0 (no reachability check) | {nopeer[2]:.2f} s | | | |",
            f"| same, 8 hosts, MPIBATCH_PEER_CHECK=0 | {nopeer[8]:.2f} s | {nopeer[8] / nopeer[2]:.2f} x | | |",
            f"| collect 3 hosts x {FILES} x {FILE_MB} MB, sequential paramiko SFTP baseline | {seq_t:.2f} s "
            f"({mb / seq_t:.0f} MB/s) | 1.00 | | |",
            f"| collect 3 hosts x {FILES} x {FILE_MB} MB, SshTransport.collect in parallel | {par_t:.2f} s "
            f"({mb / par_t:.0f} MB/s) | {seq_t / par_t:.2f} x faster | > 1 | "
            f"{'yes' if par_t < seq_t else 'NO'} |",
        ]
        rows += ["", "All hosts share this machine's CPUs, so every per-host cost (the primary's OpenSSH login to "
                 "each host in the reachability check, hydra's ssh launches, sshd, paramiko key "
                 "exchanges) lands on the same cores; load average during the run: "
                 f"{open('/proc/loadavg').read().split()[0]}."]
        text = "\n".join(rows)
        print(text)
        write_section("ssh_scaling", text)
        print(f"written to {RESULTS}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cpus() -> int:
    import os
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
