"""The one durable writer and the one bounded reader (launchers/fileio.py)."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mpibatch.launchers import fileio


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_a_committed_file_has_its_bytes_and_no_temporary_is_left(tmp_path: Path) -> None:
    dest = tmp_path / "out.bin"
    data = os.urandom(3 * fileio.CHUNK + 5)
    with fileio.DurableFile(dest, size=len(data), md5=hashlib.md5(data).digest()) as f:
        f.write(data[:100])
        f.write(data[100:])
        f.commit()
    assert dest.read_bytes() == data
    assert leftovers(tmp_path) == ["out.bin"]


def test_positional_writes_out_of_order_are_verified(tmp_path: Path) -> None:
    dest = tmp_path / "ranged.bin"
    data = os.urandom(1000)
    with fileio.DurableFile(dest, size=1000, md5=hashlib.md5(data).digest()) as f:
        f.pwrite(data[500:], 500)
        f.pwrite(data[:500], 0)
        f.commit()
    assert dest.read_bytes() == data


@pytest.mark.parametrize("why", ["size", "md5"])
def test_a_file_that_does_not_verify_never_gets_its_name(tmp_path: Path, why: str) -> None:
    dest = tmp_path / "x.bin"
    dest.write_bytes(b"the old file")
    expect = {"size": 11} if why == "size" else {"size": 10, "md5": hashlib.md5(b"other").digest()}
    with pytest.raises(fileio.WriteError, match="x.bin.*mismatch"):
        with fileio.DurableFile(dest, **expect) as f:  # type: ignore[arg-type]
            f.write(b"0123456789")
            f.commit()
    assert dest.read_bytes() == b"the old file"
    assert leftovers(tmp_path) == ["x.bin"]


def test_an_interruption_removes_the_temporary_file(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        with fileio.DurableFile(tmp_path / "y.bin") as f:
            f.write(b"half")
            raise KeyboardInterrupt
    assert leftovers(tmp_path) == []


def test_the_temporary_name_is_short_for_a_name_of_255_bytes(tmp_path: Path) -> None:
    dest = tmp_path / ("n" * 255)
    fileio.write_bytes(dest, b"long name")
    assert dest.read_bytes() == b"long name"
    assert len(os.path.basename(fileio.temp_name(str(dest)))) < 40


def test_a_full_disk_leaves_nothing_and_names_the_file(tiny_fs: Path) -> None:
    dest = tiny_fs / "big.bin"
    with pytest.raises(fileio.WriteError, match="big.bin.*no space left"):
        with fileio.DurableFile(dest, size=3 * 1024 * 1024) as f:
            for _ in range(3):
                f.write(b"x" * 1024 * 1024)
            f.commit()
    assert leftovers(tiny_fs) == []


def test_copy_file_onto_a_full_disk(tiny_fs: Path, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(2 * 1024 * 1024))
    with pytest.raises(fileio.WriteError, match="no space left"):
        fileio.copy_file(src, tiny_fs / "copy.bin")
    assert leftovers(tiny_fs) == []


def test_ranges_and_tails(tmp_path: Path) -> None:
    p = tmp_path / "log.txt"
    p.write_bytes(b"0123456789")
    assert fileio.read_range(p, 2, 3) == b"234"
    assert fileio.read_range(p, 8, 100) == b"89"
    assert fileio.read_range(p, 20, 5) == b""
    assert fileio.read_tail(p, 4) == b"6789"
    assert fileio.read_tail(p, 100) == b"0123456789"
    assert b"".join(fileio.iter_range(p, 1, None, chunk=3)) == b"123456789"
    with pytest.raises(ValueError):
        fileio.read_range(p, 0, 10, limit=5)


def test_a_tail_of_a_4_gib_file_stays_small(tmp_path: Path) -> None:
    """A sparse 4 GiB file: reading its tail and a 100-byte range keeps the process under 100 MB."""
    p = tmp_path / "huge.txt"
    with open(p, "wb") as f:
        f.truncate(4 * 1024 ** 3)
        f.seek(4 * 1024 ** 3 - 6)
        f.write(b"\nlast\n")
    code = ("import sys; from mpibatch.launchers import fileio; p = sys.argv[1]; "
            "assert fileio.read_tail(p, 5) == b'last\\n'; assert len(fileio.read_range(p, 10, 100)) == 100; "
            "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])")
    out = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, check=True)
    assert int(out.stdout) < 100 * 1024, f"peak RSS {out.stdout.strip()} kB"


def test_downloads_build_on_blobio_and_never_the_other_way() -> None:
    """One direction between the node modules: blobdownload imports blobio and fileio at module level;
    blobio never imports blobdownload, and neither imports the other inside a function."""
    import ast

    from mpibatch import launchers

    root = Path(launchers.__file__).parent

    def imports(name: str) -> tuple[set[str], set[str]]:
        """(every module `name` imports, those imported inside a function)."""
        tree = ast.parse((root / name).read_text())
        every: set[str] = set()
        inside: set[str] = set()

        def names(node: ast.AST) -> set[str]:
            if isinstance(node, ast.ImportFrom):
                return {node.module or a.name for a in node.names}
            return {a.name for a in node.names} if isinstance(node, ast.Import) else set()

        for node in ast.walk(tree):
            every |= names(node)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for sub in ast.walk(node):
                    inside |= names(sub)
        return every, inside

    blobio_all, blobio_inside = imports("blobio.py")
    down_all, down_inside = imports("blobdownload.py")
    assert not {m for m in blobio_all if "blobdownload" in m}
    assert {"blobio", "fileio"} <= {m.rsplit(".", 1)[-1] for m in down_all}
    assert not {m for m in blobio_inside | down_inside if "blob" in m or "fileio" in m}
def test_the_reader_never_follows_a_symlink_nor_blocks_on_a_fifo(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    root = tmp_path / "root"
    (root / "wd" / "real").mkdir(parents=True)
    (root / "wd" / "real" / "ok.txt").write_bytes(b"0123456789")
    (root / "wd" / "leak").symlink_to(outside / "secret")
    (root / "wd" / "dir").symlink_to(outside)
    (root / "wd" / "inner").symlink_to("real")
    os.mkfifo(root / "wd" / "fifo")
    with fileio.open_regular("wd/real/ok.txt", beneath=root) as f:
        assert fileio.read_range(f, 2, 3) == b"234" and fileio.read_tail(f, 2) == b"89"
        assert b"".join(fileio.iter_range(f, 8)) == b"89" and f.tell() == 0  # pread: the position stays
    for rel in ("wd/leak", "wd/dir/secret", "wd/inner/ok.txt"):
        with pytest.raises(OSError) as e:
            fileio.open_regular(rel, beneath=root)
        assert e.value.errno == 40, rel  # ELOOP: refused, not followed
    for rel in ("wd/fifo", "wd/real"):
        with pytest.raises(fileio.NotRegularFile):
            fileio.open_regular(rel, beneath=root)
    for rel in ("../outside/secret", "/etc/hostname", "wd//real/ok.txt", "wd/./real/ok.txt", ""):
        with pytest.raises(FileNotFoundError):
            fileio.open_regular(rel, beneath=root)
    with pytest.raises(OSError):
        fileio.read_tail(root / "wd" / "leak", 10)  # a path's last component is not followed either
    with pytest.raises(fileio.NotRegularFile):
        fileio.read_range(root / "wd" / "fifo", 0, 10)  # refused at once: a FIFO would block the reader
