"""pytest fixtures for the test infrastructure: SSH clusters in network namespaces, Azurite.

Wire them in with ``pytest_plugins = ["tests.infra.fixtures"]`` in the top-level ``tests/conftest.py``
(or import the fixture names into a test module).

Missing prerequisites (not root, no ``ip``/``sshd``, no Azurite) skip the test with the reason - unless the
``CI`` environment variable is set (to anything but ``""``, ``0``, ``false``, ``no``): then the test FAILS,
because CI runs as root and must run everything.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mpibatch.emulator.storage import AZURITE_ACCOUNT, AZURITE_KEY, find_azurite
from mpibatch.emulator.storage import Azurite as AzuriteProcess
from tests.infra.cluster import SshCluster, requirements_missing

REPO_ROOT = Path(__file__).resolve().parents[2]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require(missing: list[str], what: str) -> None:
    """Skip (locally) or fail (CI) when `missing` lists anything."""
    if not missing:
        return
    msg = f"{what} unavailable: " + "; ".join(missing)
    if in_ci():
        pytest.fail(msg + " [CI is set: refusing to skip; run scripts/install-test-deps.sh as root]", pytrace=False)
    pytest.skip(msg)


VENVS = REPO_ROOT / ".venvs"


def mpi_env(flavor: str) -> dict[str, str]:
    """The emulated nodes' "image": this environment with one MPI runtime's venv (scripts/install-test-deps.sh
    makes them, one runtime each) first on PATH. A missing venv fails the test: MPI tests never skip."""
    bindir = VENVS / flavor / "bin"
    if not (bindir / "python").exists():
        pytest.fail(f"{bindir} missing: run scripts/install-test-deps.sh", pytrace=False)
    return dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")


def require_cluster(*, sshfs: bool = False) -> None:
    require(requirements_missing(sshfs=sshfs), "SSH cluster")


# ------------------------------------------------------------------------------------------------ SSH clusters
@pytest.fixture
def ssh_cluster_factory() -> Iterator[Callable[..., SshCluster]]:
    """``make(k, **kwargs)`` starts a K-host SshCluster; every cluster made is torn down after the test."""
    require_cluster()
    made: list[SshCluster] = []

    def make(k: int = 3, **kwargs: object) -> SshCluster:
        cluster = SshCluster(k, **kwargs)  # type: ignore[arg-type]
        made.append(cluster)
        return cluster.start()

    try:
        yield make
    finally:
        for cluster in reversed(made):
            cluster.stop()


@pytest.fixture(scope="module")
def ssh_cluster3() -> Iterator[SshCluster]:
    """Three hosts shared by the tests of one module (node-0 first). Leave them as you found them."""
    require_cluster()
    with SshCluster(3) as cluster:
        yield cluster


# ------------------------------------------------------------------------------------------------ Azurite
@dataclass(frozen=True)
class Azurite:
    port: int
    location: Path
    pid: int
    host: str = "127.0.0.1"
    account: str = AZURITE_ACCOUNT
    key: str = AZURITE_KEY

    @property
    def blob_endpoint(self) -> str:
        return f"http://{self.host}:{self.port}/{self.account}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account};AccountKey={self.key};"
            f"BlobEndpoint={self.blob_endpoint};"
        )


def azurite_missing() -> list[str]:
    missing = []
    if find_azurite() is None:
        missing.append("azurite-blob not found (run scripts/install-test-deps.sh)")
    if shutil.which("node") is None:
        missing.append("`node` not found")
    return missing


def start_azurite(location: Path) -> tuple[Azurite, AzuriteProcess]:
    """Azurite on a free loopback port, started by the same code as `mpibatch emulate --storage auto`;
    stop it with `.stop()` on the second value."""
    process = AzuriteProcess(location).start()
    assert process.proc is not None
    return Azurite(port=process.port, location=location, pid=process.proc.pid), process


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """Azurite blob service on 127.0.0.1:<free port>, fresh storage, stopped (by pid) at session end."""
    require(azurite_missing(), "Azurite")
    tmp = Path(tempfile.mkdtemp(prefix="mpibatch-azurite-"))
    location = tmp / "data"
    location.mkdir()
    try:
        service, process = start_azurite(location)
        try:
            yield service
        finally:
            process.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A directory on a 1 MiB tmpfs: a disk that is full after 1 MiB (root mounts it; CI runs as root)."""
    require([] if os.geteuid() == 0 else ["root (to mount a tmpfs)"], "a tiny file system")
    d = tmp_path / "tiny"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=True)
