"""A tiny OpenFOAM-style solver: every rank reads the case from the shared directory, solves its part.

The primary unpacked `case/` once into $AZ_BATCH_TASK_SHARED_DIR (see spec.yaml); with shared_dir
sshfs or nfs every node sees that one copy. Like `mpirun ... solver -parallel`, each rank takes a block
of cells (1-D heat conduction, explicit, halo exchange with its neighbours), writes its part to
case/processor<N>/<endTime>/T in the shared directory, and rank 0 puts the parts back together, as
reconstructPar would, into T.final in its working directory (collected as an output).
"""
from __future__ import annotations

import hashlib
import os
import re
import socket
import sys
from pathlib import Path


def read_dict(path: Path) -> dict[str, str]:
    """`key  value;` lines (the last word before ';'), comments skipped."""
    text = re.sub(r"/\*.*?\*/", "", path.read_text(), flags=re.S)
    out = {}
    for m in re.finditer(r"^\s*(\w+)\s+([^;]*);", text, flags=re.M):
        out[m.group(1)] = m.group(2).split()[-1]
    return out


def read_field(path: Path) -> list[float]:
    text = re.sub(r"/\*.*?\*/", "", path.read_text(), flags=re.S)
    m = re.search(r"List<scalar>\s*(\d+)\s*\((.*?)\)\s*;", text, flags=re.S)
    if not m:
        raise ValueError(f"{path}: no 'nonuniform List<scalar> N ( ... );' field")
    values = [float(v) for v in m.group(2).split()]
    if len(values) != int(m.group(1)):
        raise ValueError(f"{path}: {m.group(1)} values announced, {len(values)} found")
    return values


def case_digest(case: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in case.rglob("*") if p.is_file() and not p.relative_to(case).parts[0].startswith(
            ("processor", "postProcessing"))):
        if re.fullmatch(r"[0-9.]+", f.relative_to(case).parts[0]) and f.relative_to(case).parts[0] != "0":
            continue  # result time directories
        h.update(str(f.relative_to(case)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def settings(case: Path) -> tuple[float, int, list[float]]:
    control = read_dict(case / "system" / "controlDict")
    transport = read_dict(case / "constant" / "transportProperties")
    dt, end = float(control["deltaT"]), float(control["endTime"])
    r = float(transport["DT"]) * dt / float(transport["dx"]) ** 2  # must be <= 0.5 for stability
    if r > 0.5:
        raise ValueError(f"unstable: DT*deltaT/dx^2 = {r} > 0.5; lower deltaT in system/controlDict")
    return r, round(end / dt), read_field(case / "0" / "T")


def step(u: list[float], left: float, right: float, r: float) -> list[float]:
    ext = [left, *u, right]
    return [ext[i] + r * (ext[i - 1] - 2 * ext[i] + ext[i + 1]) for i in range(1, len(ext) - 1)]


def solve_serial(case: Path) -> list[float]:
    """The same computation on one process (the check in tests/test_examples.py)."""
    r, steps, u = settings(case)
    for _ in range(steps):
        u = step(u, 0.0, 0.0, r)
    return u


def main() -> int:
    from mpi4py import MPI  # here, so that solve_serial() needs no MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.rank, comm.size
    case = Path(os.environ["AZ_BATCH_TASK_SHARED_DIR"]) / "case"
    r, steps, field = settings(case)
    n = len(field)
    lo, hi = rank * n // size, (rank + 1) * n // size
    u = field[lo:hi]
    left_nb = rank - 1 if rank > 0 else MPI.PROC_NULL
    right_nb = rank + 1 if rank < size - 1 else MPI.PROC_NULL
    for _ in range(steps):
        # Halo exchange (the bar's ends are held at 0: PROC_NULL neighbours give None -> 0.0).
        from_left = comm.sendrecv(u[-1], dest=right_nb, source=left_nb)
        from_right = comm.sendrecv(u[0], dest=left_nb, source=right_nb)
        u = step(u, from_left or 0.0, from_right or 0.0, r)

    end = read_dict(case / "system" / "controlDict")["endTime"]
    part = case / f"processor{rank}" / end / "T"
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_text(f"// cells {lo}..{hi - 1}\n" + "".join(f"{v!r}\n" for v in u))
    host = socket.gethostname()
    digest = case_digest(case)
    with open(f"rank-{rank}.log", "w") as f:
        f.write(f"rank {rank}/{size} on {host}: read case {case} (digest {digest}), "
                f"cells {lo}..{hi - 1}, wrote {part.relative_to(case)}\n")
    digests = comm.gather((rank, host, digest), root=0)
    comm.Barrier()  # every part is written before rank 0 reconstructs

    if rank == 0:
        full: list[float] = []
        for p in range(size):
            lines = (case / f"processor{p}" / end / "T").read_text().splitlines()[1:]
            full += [float(v) for v in lines]
        Path("T.final").write_text("".join(f"{v!r}\n" for v in full))
        hosts = sorted({h for _, h, _ in digests})
        same = len({d for _, _, d in digests}) == 1
        print(f"case {case}: {n} cells, {steps} steps, {size} ranks on {len(hosts)} hosts ({', '.join(hosts)})")
        print(f"every rank read the same case: {same} (digest {digest})")
        print(f"reconstructed {len(full)} cells -> T.final; max T = {max(full):.6f}, mean T = {sum(full) / n:.6f}")
        if not same or len(full) != n:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
