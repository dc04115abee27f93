"""Application packages: `mpibatch emulate --application NAME[:VERSION]=PATH` gives the account the package
(a .zip file or a directory; VERSION defaults to 1.0; the first version given of NAME is its default), which
`GET /applications` lists. A task's `applicationPackageReferences` are installed on its node before it starts
- once per node and version, under `<node root>/applications/<name>_<version>` - and named in the environment
as on a Linux node ("Deploy applications to compute nodes with Batch application packages": the application
id's case kept, `.`, `-` and `#` flattened to `_`): `AZ_BATCH_APP_PACKAGE_<name>_<version>`, and
`AZ_BATCH_APP_PACKAGE_<name>` for a reference without a version. A reference to a package the account does
not have fails the task when it would start, as the REST reference says ("If a referenced Package cannot be
installed ... the Task fails"); a pool's are installed as each node joins (pools.py), where one missing
makes the node unusable. On the service packages are uploaded through Azure Resource Manager, which
the emulator does not have: the command line is where they come from."""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SpecError
from .errors import not_found

NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
VERSION_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
DEFAULT_VERSION = "1.0"


@dataclass(frozen=True)
class Package:
    app_id: str
    version: str
    source: Path  # a .zip file or a directory


def parse_option(text: str) -> Package:
    """NAME[:VERSION]=PATH (of --application), checked before the emulator starts."""
    where = "--application"
    name_version, sep, path = text.partition("=")
    if not sep or not path:
        raise SpecError(where, f"{text!r} is not NAME[:VERSION]=PATH", "e.g. --application blender:2.7=./blender.zip")
    app_id, _, version = name_version.partition(":")
    version = version or DEFAULT_VERSION
    if not NAME_RE.fullmatch(app_id):
        raise SpecError(where, f"{app_id!r} is not an application id", "1-64 letters, digits, '-' and '_'")
    if not VERSION_RE.fullmatch(version):
        raise SpecError(where, f"{version!r} is not a version", "1-64 letters, digits, '-', '_' and '.'")
    source = Path(path).expanduser().resolve()
    if source.is_file() and zipfile.is_zipfile(source):
        return Package(app_id, version, source)
    if source.is_dir():
        return Package(app_id, version, source)
    raise SpecError(where, f"{path!r} is not a .zip file or a directory", "give the package's .zip file")


def catalogue(packages: list[Package]) -> dict[str, dict[str, Package]]:
    """Application id (lower case) -> version -> package; a repeated NAME:VERSION is bad input."""
    out: dict[str, dict[str, Package]] = {}
    for p in packages:
        versions = out.setdefault(p.app_id.lower(), {})
        if p.version in versions:
            raise SpecError("--application", f"{p.app_id}:{p.version} is given twice", "give each version once")
        versions[p.version] = p
    return out


def summary(versions: dict[str, Package]) -> dict[str, Any]:
    first = next(iter(versions.values()))
    return {"id": first.app_id, "displayName": first.app_id, "versions": list(versions)}


def get(apps: dict[str, dict[str, Package]], app_id: str) -> dict[str, Any]:
    if app_id.lower() not in apps:
        raise not_found("Application")
    return summary(apps[app_id.lower()])


def env_name(app_id: str, version: str | None) -> str:
    flat = re.sub(r"[.#-]", "_", app_id + (f"_{version}" if version else ""))
    return f"AZ_BATCH_APP_PACKAGE_{flat}"


def install(apps: dict[str, dict[str, Package]], node_root: Path,
            refs: list[dict[str, Any]] | None) -> tuple[dict[str, str], dict[str, Any] | None]:
    """Install a task's referenced packages on its node: (environment, failureInfo or None)."""
    env: dict[str, str] = {}
    for ref in refs or []:
        app_id, version = ref.get("applicationId") or "", ref.get("version")
        versions = apps.get(app_id.lower()) or {}
        package = versions.get(version) if version else next(iter(versions.values()), None)
        if package is None:
            return env, {"category": "UserError", "code": "ApplicationPackageNotFound", "message": (
                f"application package {app_id}" + (f" version {version}" if version else "") + " is not in the "
                "account (mpibatch emulate --application NAME[:VERSION]=PATH gives it one)")}
        target = node_root / "applications" / f"{package.app_id}_{package.version}"
        try:
            _unpack(package.source, target)
        except (OSError, zipfile.BadZipFile) as e:
            return env, {"category": "ServerError", "code": "ApplicationPackageInstallFailed",
                         "message": f"application package {app_id} could not be installed: {e}"}
        env[env_name(package.app_id, version)] = str(target)
    return env, None


def _unpack(source: Path, target: Path) -> None:
    """`source` into `target`, whole or not at all (a temporary directory renamed); kept once there."""
    if target.is_dir():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        if source.is_dir():
            shutil.copytree(source, tmp, dirs_exist_ok=True, symlinks=True)
        else:
            with zipfile.ZipFile(source) as z:
                z.extractall(tmp)  # zipfile drops absolute paths and '..': nothing lands outside tmp
        for dirpath, dirnames, _ in os.walk(tmp):  # readable by the node's users, as the service's
            for d in dirnames:
                os.chmod(os.path.join(dirpath, d), 0o755)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another task on the node installed it meanwhile, whole
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
