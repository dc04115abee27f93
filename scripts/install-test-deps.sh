#!/usr/bin/env bash
# Install everything the test suite needs: system packages (sshd, sshfs, shellcheck, ...), the project venv
# (.venv), one venv per MPI runtime (.venvs/{mpich,openmpi,intelmpi}) and Azurite (.cache/azurite).
#
# Idempotent and fast when everything is already in place: apt runs only for missing packages, a venv is
# rebuilt only when its requirement list (or pyproject.toml, for .venv) changed, Azurite only when missing.
# Run from anywhere; paths are relative to the repository root. Debian 12; root, or a user with sudo.
# `--venvs-only`: just the Python venvs, as any user (scripts/test-unprivileged.sh runs it as one).
set -euo pipefail
VENVS_ONLY=0
[[ "${1:-}" == "--venvs-only" ]] && VENVS_ONLY=1

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

PYTHON="${PYTHON:-python3}"
AZURITE_VERSION="3.35.0" # newer releases need Node 22; Debian 12 / NodeSource 20 here
APT_PACKAGES=(openssh-server openssh-client sshfs fuse3 shellcheck iproute2 procps python3-venv npm nodejs
    openssl # openssl: scripts/storage_tls_front.py makes its certificate authority with it
    environment-modules # environment-modules: rehearsal nodes activate MPI runtimes with `module load`
    lammps) # lammps: examples/lammps-restart (Debian's build, with Debian's Open MPI)
MAIN_EXTRAS="test,plot,mpich"
# One MPI runtime per venv: two runtime wheels in one venv silently overwrite each other's files.
declare -A MPI_VENVS=(
    [mpich]="mpich mpi4py"
    [openmpi]="openmpi mpi4py"
    [intelmpi]="impi-rt==2021.18.1 mpi4py"
)
# The previous major of the Batch SDK (the API of most existing code): the emulator's tests run it from its
# own venv, unchanged, next to 15.1 in .venv.
BATCH14_REQS="azure-batch==14.2.0 azure-storage-blob>=12.19"
OLD_BATCH_SDKS="6.0.0 8.0.0 11.0.0"
MARKER=".mpibatch-installed"

SUDO=()
if [[ "$(id -u)" -ne 0 && "$VENVS_ONLY" -eq 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "install-test-deps: not root and sudo is missing" >&2
        exit 1
    fi
    SUDO=(sudo)
fi

log() { printf 'install-test-deps: %s\n' "$*" >&2; }

start_seconds=$SECONDS
summary=()

# --- system packages -------------------------------------------------------------------------------
system_packages() {
pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    case "$pkg" in
        nodejs | npm)
            # NodeSource's nodejs ships npm itself and conflicts with Debian's npm package: a working
            # node + npm on PATH counts as installed, whichever package provides it.
            if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
                continue
            fi
            ;;
    esac
    pkg_installed "$pkg" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    summary+=("apt: installed ${#missing[@]}")
else
    summary+=("apt: ok")
fi
"${SUDO[@]}" mkdir -p /run/sshd
"${SUDO[@]}" chmod 0755 /run/sshd

node_major="$(node -p 'process.versions.node.split(".")[0]')"
if ((node_major < 18)); then
    log "Node $(node --version) is too old for azurite@${AZURITE_VERSION} (needs >= 18)"
    exit 1
fi
}
((VENVS_ONLY)) || system_packages

# --- venvs -----------------------------------------------------------------------------------------
# ensure_venv DIR LABEL STAMP FRESH PIP_ARGS...: install PIP_ARGS into DIR unless its marker holds STAMP.
# FRESH=1 rebuilds the venv from scratch (MPI venvs: a changed runtime must not leave the old one's files).
ensure_venv() {
    local dir="$1" label="$2" stamp="$3" fresh="$4"
    shift 4
    if [[ -x "$dir/bin/python" && -f "$dir/$MARKER" ]] && [[ "$(cat "$dir/$MARKER")" == "$stamp" ]] &&
        "$dir/bin/python" -c '' 2>/dev/null; then
        summary+=("$label: ok")
        return
    fi
    log "installing into $dir: $*"
    if [[ "$fresh" == 1 ]] || ! "$dir/bin/python" -c '' 2>/dev/null; then
        rm -rf "$dir"
        "$PYTHON" -m venv "$dir"
    fi
    rm -f "$dir/$MARKER"
    "$dir/bin/python" -m pip install -q "$@" >&2
    printf '%s' "$stamp" >"$dir/$MARKER"
    summary+=("$label: installed")
}

pyproject_hash="$(sha256sum pyproject.toml | cut -d' ' -f1)"
ensure_venv .venv ".venv" "-e .[${MAIN_EXTRAS}] pyproject=${pyproject_hash}" 0 -e ".[${MAIN_EXTRAS}]"

mkdir -p .venvs
for name in mpich openmpi intelmpi; do
    # shellcheck disable=SC2206 # word splitting of the requirement list is intended
    reqs=(${MPI_VENVS[$name]})
    ensure_venv ".venvs/$name" "$name" "${reqs[*]}" 1 "${reqs[@]}"
done

# shellcheck disable=SC2206 # word splitting of the requirement list is intended
batch14_reqs=(${BATCH14_REQS})
ensure_venv .venvs/batch14 "batch14" "${batch14_reqs[*]}" 1 "${batch14_reqs[@]}"

# Older SDKs that existing Batch code pins (the public samples: 6.0, 8.0, 11.0), each in its own directory
# run by batch14's Python (the same msrest stack) with PYTHONPATH: tests/test_emulator_old_sdks.py.
for v in $OLD_BATCH_SDKS; do
    if [[ -f ".venvs/batch-sdks/$v/azure/batch/__init__.py" ]]; then
        summary+=("azure-batch $v: ok")
    else
        .venvs/batch14/bin/python -m pip install -q --no-deps --target ".venvs/batch-sdks/$v" "azure-batch==$v" >&2
        summary+=("azure-batch $v: installed")
    fi
done

# --- azure-batch's own tests -----------------------------------------------------------------------
# The source distribution of azure-batch 15.1.0 ships its tests/ (tests/test_sdk_suite.py runs them against
# the emulator); the wheel does not. Kept as downloaded: the test reads the four files it needs from it.
SDK_SDIST=".cache/sdk/azure_batch-15.1.0.tar.gz"
if [[ -f "$SDK_SDIST" ]]; then
    summary+=("azure-batch 15.1.0 sdist: ok")
else
    mkdir -p .cache/sdk
    .venv/bin/python -m pip download -q --no-deps --no-binary :all: azure-batch==15.1.0 -d .cache/sdk >&2
    summary+=("azure-batch 15.1.0 sdist: downloaded")
fi

# --- Azurite ---------------------------------------------------------------------------------------
azurite() {
azurite_dir=".cache/azurite"
azurite_pkg="$azurite_dir/node_modules/azurite/package.json"
installed_azurite=""
if [[ -f "$azurite_pkg" && -x "$azurite_dir/node_modules/.bin/azurite-blob" ]]; then
    installed_azurite="$(node -p "require('./$azurite_pkg').version")"
fi
if [[ "$installed_azurite" == "$AZURITE_VERSION" ]]; then
    summary+=("azurite $AZURITE_VERSION: ok")
else
    log "npm install azurite@${AZURITE_VERSION}"
    mkdir -p "$azurite_dir"
    npm install --prefix "$azurite_dir" --no-audit --no-fund --loglevel=error "azurite@${AZURITE_VERSION}" >&2
    summary+=("azurite $AZURITE_VERSION: installed")
fi
}
((VENVS_ONLY)) || azurite

# --- final check -----------------------------------------------------------------------------------
problems=()
[[ -x .venv/bin/pytest ]] || problems+=(".venv lacks pytest")
[[ -f "$SDK_SDIST" ]] || problems+=("$SDK_SDIST missing")
for name in mpich openmpi intelmpi; do
    .venvs/$name/bin/python -c 'import mpi4py' 2>/dev/null || problems+=(".venvs/$name lacks mpi4py")
done
.venvs/batch14/bin/python -c 'import azure.batch, azure.storage.blob' 2>/dev/null || problems+=(".venvs/batch14 lacks azure-batch 14.2")
for v in $OLD_BATCH_SDKS; do
    [[ -f ".venvs/batch-sdks/$v/azure/batch/__init__.py" ]] || problems+=(".venvs/batch-sdks lacks azure-batch $v")
done
[[ -x .venvs/mpich/bin/mpiexec ]] || problems+=(".venvs/mpich lacks mpiexec")
[[ -x .venvs/openmpi/bin/mpirun ]] || problems+=(".venvs/openmpi lacks mpirun")
[[ -x .venvs/intelmpi/bin/mpirun ]] || problems+=(".venvs/intelmpi lacks mpirun")
tools=(nsenter unshare)
((VENVS_ONLY)) || tools+=(sshd sshfs ip ssh-keygen shellcheck)
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || [[ -x "/usr/sbin/$tool" ]] || problems+=("$tool missing")
done
if ((${#problems[@]})); then
    log "FAILED: ${problems[*]}"
    exit 1
fi

summary_line="$(printf '%s, ' "${summary[@]}")"
echo "install-test-deps: ${summary_line%, } ($((SECONDS - start_seconds)) s)"
