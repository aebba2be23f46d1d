"""Every file edgeseg writes goes through here: temp name, fsync, rename, the user's umask.

A crash, Ctrl-C, power loss or full disk never leaves a truncated checkpoint,
ONNX file, engine, video or report under the final name, and never replaces a
good earlier file with a broken one. Disk-full, read-only and permission
errors become one line that names the path and the fix (``OutputError``), and
``check_writable`` lets a long job prove its outputs can be written before it
starts rather than after an hour of work.

Temp files carry the writer's pid (``.NAME.tmpPID-XXXX.EXT``) so the next
writer of the same file can remove what a killed one left behind without
touching a live writer's file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgeseg.errors import EdgesegError

#: errno values that mean "this output cannot be written here", with the fix a user needs
_OUTPUT_ERRNOS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("the disk is full", "free space there or write to another disk"),
    errno.EDQUOT: ("the disk quota is exhausted", "free space there or write to another disk"),
    errno.EROFS: ("the filesystem is read-only", "write to a writable folder"),
    errno.EACCES: ("permission denied", "fix the folder's permissions or write elsewhere"),
    errno.EPERM: ("operation not permitted", "fix the folder's permissions or write elsewhere"),
    errno.EFBIG: ("the file is too large for this filesystem", "write to another filesystem"),
    errno.ENOTDIR: ("a parent of it is a file, not a folder", "pick another path"),
}
OUTPUT_ERRNOS = frozenset(_OUTPUT_ERRNOS)
#: the output path that means standard output (``--json -``)
STDOUT = "-"


class OutputError(EdgesegError):
    """An output that cannot be written (disk full, read-only, permissions)."""


def describe_os_error(path: str | Path, exc: OSError) -> str:
    """One line for an OSError while writing ``path``: what happened and what to do."""
    reason, fix = _OUTPUT_ERRNOS.get(exc.errno or 0, (exc.strerror or str(exc), "check the path"))
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        free = free_bytes(Path(path))
        if free is not None:
            reason += f" ({free / 2**20:.1f} MiB free there)"
    return f"cannot write {path}: {reason}; {fix}"


def output_error(path: str | Path, exc: OSError) -> OutputError:
    return OutputError(describe_os_error(path, exc))


def free_bytes(path: Path) -> int | None:
    """Free bytes on the filesystem holding ``path`` (or its nearest existing parent)."""
    for p in (path, *path.parents):
        with contextlib.suppress(OSError):
            if p.exists():
                return shutil.disk_usage(p).free
    return None


def is_disk_full(path: str | Path, reserve: int = 256 << 10) -> bool:
    """True when the filesystem of ``path`` has less than ``reserve`` bytes free.

    For writers that hide ENOSPC behind their own errors (torch.save's
    "unexpected pos", OpenCV's silent VideoWriter).
    """
    free = free_bytes(Path(path))
    return free is not None and free < reserve


@contextlib.contextmanager
def output_errors(path: str | Path) -> Iterator[None]:
    """Turn disk-full/read-only/permission OSErrors in the block into one-line OutputErrors."""
    try:
        yield
    except OSError as exc:
        if exc.errno in OUTPUT_ERRNOS:
            raise output_error(path, exc) from None
        raise


def file_mode() -> int:
    """The mode a plain ``open()`` would give a new file under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def fsync_path(path: str | Path) -> None:
    """Flush a file's (or a folder's) data to the disk: survives power loss after return."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_prefix(final: Path) -> str:
    return f".{final.name}.tmp{os.getpid()}-"


def make_temp(final: Path) -> Path:
    """A new empty temp file beside ``final`` with the user's umask (mkstemp makes 0600)."""
    with output_errors(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(final)
        fd, name = tempfile.mkstemp(prefix=temp_prefix(final), suffix=final.suffix, dir=final.parent)
        os.close(fd)
        os.chmod(name, file_mode())
    return Path(name)


def commit_temp(tmp: Path, final: Path) -> None:
    """fsync ``tmp``, rename it to ``final`` and fsync the folder (the rename is durable)."""
    with output_errors(final):
        fsync_path(tmp)
        os.replace(tmp, final)
        with contextlib.suppress(OSError):  # some filesystems cannot fsync a folder
            fsync_path(final.parent)


#: per folder, the dead writers' temp files found by its one scan in this process, by final name
_STALE: dict[Path, dict[str, list[Path]]] = {}
_TEMP_NAME = re.compile(r"\.(?P<final>.+)\.tmp(?P<pid>\d+)-")


def remove_stale_temps(final: str | Path) -> list[Path]:
    """Remove temp files of ``final`` left by writers that no longer run (kill -9, power loss).

    A folder is listed once per process (a label sink writes thousands of files into
    one folder: listing it per file would cost O(N) a frame); writers that die later
    leave theirs for the next process.
    """
    final = Path(final)
    folder = final.parent.resolve()
    if folder not in _STALE:
        found: dict[str, list[Path]] = {}
        with contextlib.suppress(OSError):
            for p in folder.iterdir():
                m = _TEMP_NAME.match(p.name)
                if m and not _alive(int(m.group("pid"))):
                    found.setdefault(m.group("final"), []).append(p)
        _STALE[folder] = found
    removed = []
    for p in _STALE[folder].pop(final.name, []):
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(final.parent / p.name)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it is fsynced and renamed to ``path``.

    On any error the temp file is removed and an earlier ``path`` is kept as it was.
    """
    final = Path(path)
    tmp = make_temp(final)
    try:
        with output_errors(final):
            yield tmp
        commit_temp(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def check_writable(path: str | Path) -> None:
    """Prove that ``path`` (a file to be written later) can be created, before a long job.

    Creates missing parent folders and a probe file beside ``path`` and checks
    that the disk is not full; raises OutputError (one line, the path and the
    fix) when it cannot, leaving no folder it made behind.
    """
    final = Path(path)
    if final.is_dir():
        raise OutputError(f"cannot write {final}: it is a folder; give a file name inside it")
    made = [p for p in final.parents if not p.exists()]  # innermost first
    try:
        make_temp(final).unlink()
        if is_disk_full(final):
            raise output_error(final, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    except OutputError:
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def check_outputs(paths: Iterable[str | Path | None]) -> None:
    """`check_writable` for each output a command will write (None: an output not asked for;
    ``-``: standard output, as ``--json -``)."""
    for path in paths:
        if path is not None and str(path) != STDOUT:
            check_writable(path)


def check_writable_dir(folder: str | Path) -> None:
    """Create ``folder`` if needed and prove files can be written into it."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"cannot write to {folder}: it is a file, not a folder; give a "
                          "folder name")
    check_writable(folder / ".edgeseg-write-check")


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, streamed (checkpoints, ONNX files and engines are large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON; ``path`` ``-`` prints it (``--json -`` everywhere)."""
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    if str(path) == STDOUT:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    write_text(path, text)


def append_line(path: str | Path, line: str) -> None:
    """Append one line and fsync it (logs that must survive a power cut line by line)."""
    with output_errors(path), open(path, "a") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_image(path: str | Path, image: np.ndarray, rgb: bool = True) -> None:
    """Write a PNG/JPEG atomically; ``rgb`` images are converted to OpenCV's BGR."""
    if rgb and image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ext = Path(path).suffix or ".png"
    try:
        ok, buf = cv2.imencode(ext, image)
    except cv2.error:
        ok = False
    if not ok:
        raise OutputError(f"cannot write {path}: OpenCV could not encode a {ext} image; "
                          "use a .png or .jpg name")
    write_bytes(path, buf.tobytes())
