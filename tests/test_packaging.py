"""The package as a pip user gets it: the built sdist and wheel hold the LICENSE and the examples, the
build warns about nothing in the metadata, and the wheel installed into a fresh venv outside the checkout
runs `mpibatch init hello DIR` and then `mpibatch run DIR/spec.yaml` (real MPICH ranks).

Offline: the build runs without isolation (build, setuptools>=77 and wheel come with the `test` extra);
the fresh venv gets the wheel alone (--no-deps --no-index) and finds its dependencies in this venv's
site-packages through a .pth line, so nothing is downloaded."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.infra.fixtures import VENVS
from tests.test_azure_executor import require_local_nodes

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "examples").rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    out = tmp_path_factory.mktemp("dist")
    p = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)],
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    (wheel,), (sdist,) = out.glob("*.whl"), out.glob("*.tar.gz")
    return wheel, sdist, p.stdout + p.stderr


def test_wheel_holds_license_metadata_and_every_example(dist: tuple[Path, Path, str]) -> None:
    wheel, _, _ = dist
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        license_text = z.read(next(n for n in names if n.endswith(".dist-info/licenses/LICENSE"))).decode()
    assert "MIT License" in license_text and "the mpibatch authors" in license_text
    assert "License-Expression: MIT" in meta and "License-File: LICENSE" in meta
    assert "Author: the mpibatch authors" in meta and "Classifier: Operating System :: POSIX :: Linux" in meta
    missing = [e for e in EXAMPLES if "mpibatch/" + e not in names]
    assert not missing and "mpibatch/examples/hello/spec.yaml" in names, missing
    assert not [n for n in names if n.endswith(".pyc")]
    shapes = Path(__file__).resolve().parents[1] / "mpibatch" / "emulator" / "shapes"
    missing = [p.name for p in shapes.glob("*.json") if f"mpibatch/emulator/shapes/{p.name}" not in names]
    assert not missing, f"the emulator's API-version tables are not in the wheel: {missing}"


def test_sdist_holds_license_and_examples(dist: tuple[Path, Path, str]) -> None:
    _, sdist, _ = dist
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert "LICENSE" in names
    assert not [e for e in EXAMPLES if e not in names]


def test_build_warns_about_nothing_in_the_metadata(dist: tuple[Path, Path, str]) -> None:
    _, _, log = dist
    lowered = log.lower()
    assert "deprecat" not in lowered and "absent from the `packages`" not in lowered, log


@pytest.mark.mpi
def test_installed_wheel_inits_and_runs_hello_outside_the_checkout(dist: tuple[Path, Path, str],
                                                                   tmp_path: Path) -> None:
    require_local_nodes()
    wheel, _, _ = dist
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, timeout=120, capture_output=True)
    site = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"
                           ], check=True, capture_output=True, text=True).stdout.strip()
    # The dependencies after the wheel's own files: MPICH's mpi4py from its runtime venv (as `pip install
    # mpibatch[mpich]` would put it beside mpibatch), the rest (click, PyYAML, azure-*) from this venv.
    mpich = VENVS / "mpich"
    mpich_site = next((mpich / "lib").glob("python3*/site-packages"))
    Path(site, "deps-from-test-venvs.pth").write_text(f"{mpich_site}\n{sysconfig.get_path('purelib')}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "MPIBATCH_", "PYTHON"))}
    env["PATH"] = os.pathsep.join([str(venv / "bin"), str(mpich / "bin"), env.get("PATH", "")])
    env["LD_LIBRARY_PATH"] = str(mpich / "lib")  # mpi4py looks for libmpi in its own prefix first
    work = tmp_path / "user"
    work.mkdir()

    def mpibatch(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(venv / "bin" / "mpibatch"), *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=120)

    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import mpibatch; print(mpibatch.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(site), where  # the installed copy, not the checkout
    init = mpibatch("init", "hello", "first")
    assert init.returncode == 0, init.stderr
    assert "mpibatch run first/spec.yaml" in init.stdout
    assert sorted(p.name for p in (work / "first").iterdir()) == ["README.md", "hello.py", "spec.yaml"]
    again = mpibatch("init", "hello", "first")
    assert again.returncode == 2 and "first is not empty" in again.stderr
    run = mpibatch("run", "first/spec.yaml")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "sum of ranks = 15 (expected 15)" in run.stdout
    assert (work / "mpibatch-runs" / "hello" / "hello-mpi").is_dir()
