"""Who a task runs as on an emulated node: never the emulator's own user.

On Batch a task runs as a user of its node - by default a non-admin auto-user; `userIdentity.autoUser.
elevationLevel: admin` (or a pool user account with `elevationLevel: admin`) makes it root of its node -
and nothing it does reaches beyond its VM. Here, when the emulator runs as root, every start, preparation,
release and ordinary task runs as its node's own unprivileged host user (NODE_UID_BASE + a number from the
node's id: no other node's files, no host file is its to change), in a user, mount and PID namespace of its
own:
- an elevated task is root *inside* that user namespace only (uid 0 mapped to the node's host user), so an
  `apt-get install` or a write to /etc fails instead of changing the machine;
- a non-admin task runs as NONADMIN_UID inside a nested user namespace (not root even there);
- /tmp, /var/tmp and /dev/shm are the task's own (tmpfs), so nothing it leaves there reaches the host; the
  command runs one user namespace below the one that mounted them, so it cannot unmount them either.
Its node directory belongs to the node's host user, but for the node's root and the directories above
task directories (stays_root). The emulator makes the task's directories and opens its
logs itself, one component at a time and never through a symlink (a task could plant one for a later task
of its node), and fetches resource files as the node's user.

Where the emulator is not root (it cannot switch users), tasks run as the emulator's user, as before."""
from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..launchers.protocol import TASK_DIR_DEPTH, WORKITEMS

log = logging.getLogger(__name__)
NODE_UID_BASE = 0x70000000  # far above any account's uid; one host uid per node from here
NODE_UID_SPAN = 1 << 20
NONADMIN_UID = 1000  # a non-admin task's uid inside its node (Batch's auto-user is an ordinary account)
# PID 1 of the task's namespaces (root of its user namespace only), given the node's root and the way up to it
# from the task's working directory (where it starts: entered by the emulator before the switch of user, so
# reachable whatever is above): private temporary directories; then, where the node's root cannot be reached
# by its path (a tmpfs above hides it, or a directory on the way is not the node user's to enter), a tmpfs
# on the first such directory and the node's root bound back at its path; then the command as its child,
# its status the task's (128+n for signal n).
INIT_SCRIPT = """root=$0; exec 3<"$1" || exit 125; shift
for d in /tmp /var/tmp /dev/shm; do mount -t tmpfs -o mode=1777,size=50% tmpfs "$d" || exit 125; done
if ! [ -d "$root" ] || ! [ -x "$root" ]; then
  top= rest=${root#/}
  while [ -n "$rest" ]; do
    part=${rest%%/*}; next=$top/$part
    if ! [ -d "$next" ] || ! [ -x "$next" ]; then break; fi
    top=$next; rest=${rest#"$part"}; rest=${rest#/}
  done
  if [ -d "$next" ]; then mount -t tmpfs -o mode=755 tmpfs "$next" || exit 125; fi
  mkdir -p "$root" && mount --no-canonicalize --bind /proc/self/fd/3 "$root" || exit 125
fi
exec 3<&-
"$@"; exit $?"""
NAMESPACES = ["unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork", "--kill-child=SIGKILL", "--"]
# The command runs one user (and mount) namespace further down: the private mounts made above are then locked
# (mount_namespaces(7)) - not even an elevated task can unmount its /tmp to reach the host's underneath.
AS_ADMIN = ["unshare", "--user", "--map-root-user", "--mount", "--"]
AS_NONADMIN = ["unshare", "--user", f"--map-user={NONADMIN_UID}", f"--map-group={NONADMIN_UID}", "--mount", "--"]
_usable: bool | None = None


@dataclass(frozen=True)
class TaskUser:
    uid: int  # the node's host user (also its group)
    elevated: bool
    root: str  # the node's root directory, which belongs to `uid`

    def prefix(self, wd: Path | str) -> list[str]:
        """The argv before the command line of a task that starts in `wd` (inside the node's root)."""
        return [*NAMESPACES, "/bin/sh", "-c", INIT_SCRIPT, self.root, os.path.relpath(self.root, wd),
                *(AS_ADMIN if self.elevated else AS_NONADMIN)]

    def popen_args(self) -> dict[str, Any]:
        return {"user": self.uid, "group": self.uid, "extra_groups": []}



def node_uid(node_id: str) -> int:
    digits = "".join(c for c in node_id if c in "0123456789abcdef")[:8] or "0"
    return NODE_UID_BASE + int(digits, 16) % NODE_UID_SPAN


def usable() -> bool:
    """Root, and user namespaces for an unprivileged user work here (probed once)."""
    global _usable
    if _usable is None:
        _usable = False
        if os.geteuid() == 0:
            try:
                probe = TaskUser(NODE_UID_BASE, False, "/").prefix("/")
                _usable = subprocess.run([*probe, "/bin/true"], user=NODE_UID_BASE,
                                         group=NODE_UID_BASE, extra_groups=[], cwd="/", stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         timeout=30).returncode == 0
            except (OSError, subprocess.SubprocessError):
                pass
            if not _usable:
                log.warning("tasks run as root: an unprivileged user cannot make user namespaces here")
    return _usable


def elevated(identity: dict[str, Any] | None, pool: dict[str, Any] | None) -> bool:
    """Batch's rule: a task is non-admin unless its auto-user, or the pool user account it names, is admin."""
    identity = identity or {}
    if identity.get("username"):
        accounts = (pool or {}).get("userAccounts") or []
        account: dict[str, Any] = next((a for a in accounts if a.get("name") == identity["username"]), {})
        return account.get("elevationLevel") == "admin"
    return (identity.get("autoUser") or {}).get("elevationLevel") == "admin"


def for_task(node: dict[str, Any], identity: dict[str, Any] | None, pool: dict[str, Any] | None) -> TaskUser | None:
    """Who a task with this userIdentity runs as on `node`; None where the emulator cannot switch users."""
    if not usable():
        return None
    return TaskUser(node_uid(node["id"]), elevated(identity, pool), node["_root"])


def own_node_root(root: Path, node_id: str) -> None:
    """A new node's directory tree (made by the emulator just now, nothing in it yet) becomes its user's,
    but for the node's root and `workitems` (stays_root)."""
    if usable():
        for sub in root.iterdir():
            if not stays_root((sub.name,)):
                chown_tree(sub, node_uid(node_id))


def own_tree(root: Path, node_id: str) -> None:
    """A directory tree the emulator just made in a node (a mount) becomes the node user's."""
    if usable():
        chown_tree(root, node_uid(node_id))


def stays_root(rel: tuple[str, ...]) -> bool:
    """The node's root and the directories above task directories (workitems/<job>/job-1) stay root's:
    a task can neither swap its own directory for a symlink (the emulator reads and serves what is below,
    as root) nor plant one where a later task's directory will be made."""
    return not rel or (rel[0] == WORKITEMS and len(rel) < TASK_DIR_DEPTH)


def chown_tree(root: Path, uid: int) -> None:
    """`root` and everything in it (made by the emulator, no task has run there yet) become `uid`'s."""
    for dirpath, dirs, names in os.walk(root):
        for name in [*dirs, *names]:
            os.lchown(os.path.join(dirpath, name), uid, uid)
    os.lchown(root, uid, uid)


def make_dirs(user: TaskUser, path: Path) -> None:
    """Make `path` (inside the node's root) and every directory on the way, owned by the node's user;
    never through a symlink (OSError when a component is one, or not a directory)."""
    os.close(_open_dirs(user, path))


def open_logs(user: TaskUser, task_dir: Path) -> tuple[int, int]:
    """Make task_dir/wd; open task_dir's stdout.txt and stderr.txt for appending (regular files only,
    never through a symlink), owned by the node's user. Returns the two descriptors."""
    os.close(_open_dirs(user, task_dir / "wd"))
    out = open_append(user, task_dir / "stdout.txt")
    try:
        return out, open_append(user, task_dir / "stderr.txt")
    except OSError:
        os.close(out)
        raise


def open_append(user: TaskUser, path: Path) -> int:
    """Open `path` (inside the node's root) for appending, made on the way and owned by the node's user;
    a regular file only, never through a symlink."""
    fd = _open_dirs(user, path.parent)
    try:
        f = os.open(path.name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK |
                    os.O_CLOEXEC, 0o644, dir_fd=fd)
    finally:
        os.close(fd)
    try:
        if not stat.S_ISREG(os.fstat(f).st_mode):
            raise OSError(f"{path} is not a regular file")
        os.fchown(f, user.uid, user.uid)
        return f
    except OSError:
        os.close(f)
        raise


def remove_tree(user: TaskUser, path: Path) -> None:
    """Remove `path` (inside the node's root) and what it holds, following no symlink on the way or in it."""
    fd = _open_dirs(user, path.parent)
    try:
        try:
            shutil.rmtree(f"/proc/self/fd/{fd}/{path.name}")  # through the opened directory
        except NotADirectoryError:
            os.unlink(path.name, dir_fd=fd)
        except FileNotFoundError:
            pass
        except OSError:  # a symlink (rmtree refuses it): the link goes, never what it names
            os.unlink(path.name, dir_fd=fd)
    finally:
        os.close(fd)


def _open_dirs(user: TaskUser, path: Path) -> int:
    rel = Path(path).relative_to(user.root)
    fd = os.open(user.root, os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for n, part in enumerate(rel.parts, 1):
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
                made = True
            except FileExistsError:
                made = False
            nxt = os.open(part, os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nxt
            if made and not stays_root(rel.parts[:n]):
                os.fchown(fd, user.uid, user.uid)
        return fd
    except BaseException:
        os.close(fd)
        raise
