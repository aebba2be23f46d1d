"""The one writer every output goes through: atomic, fsynced, umask, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeseg import fileio
from edgeseg.fileio import OutputError, atomic_path, check_writable, write_bytes, write_json
from tests.conftest import cli_env, unprivileged


def test_atomic_write_uses_the_umask_and_leaves_no_temp(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_write_fsyncs_file_then_folder(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    write_bytes(tmp_path / "f.bin", b"abc")
    assert len(synced) == 2
    assert Path(synced[0]).name.startswith(".f.bin.tmp")  # the data, before the rename
    assert synced[1] == str(tmp_path)  # the rename itself


def test_failed_write_keeps_the_earlier_file(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"good")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "m.onnx") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert (tmp_path / "m.onnx").read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_disk_full_is_one_line_naming_the_path_and_keeps_the_old_file(small_disk) -> None:
    target = small_disk.path / "report.json"
    write_json(target, {"old": True})
    small_disk.fill()
    with pytest.raises(OutputError) as err:
        write_bytes(target, b"x" * 200_000)
    msg = str(err.value)
    assert "\n" not in msg and str(target) in msg and "disk is full" in msg
    assert "MiB free" in msg
    assert target.read_text() == '{\n  "old": true\n}\n'
    assert not [p for p in small_disk.path.iterdir() if p.name.startswith(".report")]
    assert fileio.is_disk_full(target)
    small_disk.free_up()
    assert not fileio.is_disk_full(target)


def test_read_only_filesystem_is_named(readonly_dir: Path) -> None:
    with pytest.raises(OutputError, match="read-only.*writable folder"):
        write_json(readonly_dir / "out.json", {})
    with pytest.raises(OutputError, match=f"cannot write {readonly_dir}/x.json: the filesystem "
                                          "is read-only"):
        check_writable(readonly_dir / "x.json")
    assert (readonly_dir / "existing.txt").read_text() == "keep me\n"


def test_check_writable_refuses_a_folder_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="is a folder"):
        check_writable(tmp_path)
    check_writable(tmp_path / "sub" / "out.json")
    assert list((tmp_path / "sub").iterdir()) == []


def test_permission_denied_as_a_normal_user(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    code = ("import sys; from edgeseg.fileio import check_writable\n"
            "try: check_writable(sys.argv[1])\n"
            "except Exception as e: print(type(e).__name__, e)")
    out = subprocess.run(unprivileged([sys.executable, "-c", code, str(locked / "out.json")]),
                         env=cli_env(), capture_output=True, text=True)
    assert out.stdout.startswith(f"OutputError cannot write {locked}/out.json: permission denied")


def test_stale_temps_of_a_killed_writer_are_removed_live_ones_kept(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".last.pt.tmp{dead.pid}-abc.pt"
    live = tmp_path / f".last.pt.tmp{os.getppid()}-def.pt"
    other = tmp_path / f".best.pt.tmp{dead.pid}-abc.pt"
    for p in (stale, live, other):
        p.write_bytes(b"partial")
    assert fileio.remove_stale_temps(tmp_path / "last.pt") == [stale]
    assert live.exists() and other.exists() and not stale.exists()


def test_cli_maps_an_oserror_to_one_line(readonly_dir: Path, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "edgeseg.cli", "synth", "--out",
                          str(readonly_dir / "s"), "--train", "1", "--val", "0", "--size", "64x32"],
                         env=cli_env(), capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "read-only" in lines[0] and str(readonly_dir) in lines[0]


def test_write_image_refuses_an_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match=r"\.xyz"):
        fileio.write_image(tmp_path / "a.xyz", np.zeros((4, 4), np.uint8))


def test_a_folder_is_listed_once_however_many_files_go_into_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A label sink writes one file per frame into one folder: the stale-temp sweep must not
    list that folder per file (O(N) a frame)."""
    listed: list[Path] = []
    real = Path.iterdir

    def counting(self: Path):  # noqa: ANN202
        listed.append(self)
        return real(self)

    monkeypatch.setattr(Path, "iterdir", counting)
    for i in range(20):
        fileio.write_bytes(tmp_path / "labels" / f"{i:06d}.png", b"x")
    assert listed.count((tmp_path / "labels").resolve()) == 1
    assert len(list(real(tmp_path / "labels"))) == 20
