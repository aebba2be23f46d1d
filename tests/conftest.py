"""Shared fixtures: a tiny synthetic day/night set written by the real generator."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "data" / "camvid"


def benchmark_script(name: str) -> ModuleType:
    """benchmarks/NAME.py as a module, its directory on sys.path as when it is run."""
    if str(REPO / "benchmarks") not in sys.path:
        sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def cli_env() -> dict[str, str]:
    """Environment for a subprocess running this checkout (torchrun, the CLI): one thread."""
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 day + 16 night training scenes and 4 val scenes per domain at 64x32."""
    from edgeseg.data.synth.cli import add_arguments, run

    out = tmp_path_factory.mktemp("synth")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--out",
            str(out),
            "--train",
            "32",
            "--val",
            "4",
            "--size",
            "64x32",
            "--domains",
            "day,night",
            "--seed",
            "3",
        ]
    )
    assert run(args) == 0
    return out


def tiny_recipe(synth: Path, out: Path, **over: object) -> dict:
    """A recipe dict small enough for a CPU test: ~0.1 s per iteration."""
    recipe = {
        "name": "tiny",
        "seed": 1,
        "output_dir": str(out),
        "data": {
            "source": f"synthetic:{synth}:day_train",
            "val": [f"synthetic:{synth}:night_val"],
            "crop": [32, 48],
            "scale_range": [0.8, 1.2],
            "color_jitter": 0.1,
            "batch_size": 2,
            "workers": 0,
        },
        "model": {
            "backbone": "mobilenet_v2",
            "width_mult": 0.25,
            "separable": True,
            "aspp_channels": 32,
            "num_classes": 19,
        },
        "optim": {"name": "sgd", "lr": 0.01},
        "train": {"iterations": 4, "val_every": 0, "ckpt_every": 0, "log_every": 1, "threads": 1},
    }
    for key, value in over.items():
        section, name = key.split("__")
        recipe[section][name] = value
    return recipe


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A briefly trained tiny DeepLabv3+/MobileNet-v2 checkpoint (19 classes, non-trivial argmax)."""
    from edgeseg.config import Recipe, from_dict
    from edgeseg.train.trainer import Trainer

    out = tmp_path_factory.mktemp("tiny_run")
    recipe = tiny_recipe(tiny_synth, out, train__iterations=60)
    recipe["optim"] = {"name": "adam", "lr": 0.01}  # ~10 s; predicts road, sky, car, ...
    assert Trainer(from_dict(Recipe, recipe), progress=False).run() == 0
    return out / "last.pt"


def _mount_tmpfs(where: Path, options: str) -> None:
    import subprocess

    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): "
                    f"{done.stderr.strip()}")


def _umount(where: Path) -> None:
    import subprocess

    subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 1 MiB filesystem (tmpfs) mounted at a fresh folder: fill it to test ENOSPC.

    ``fill(leave=0)`` fills it up, leaving ``leave`` bytes free.
    """
    where = tmp_path / "small_disk"
    _mount_tmpfs(where, "size=1m,mode=0777")

    class Disk:
        path = where

        @staticmethod
        def fill(leave: int = 0) -> None:
            import shutil

            free = shutil.disk_usage(where).free - leave
            with open(where / ".filler", "ab") as f:
                try:
                    f.write(b"\0" * max(free, 0))
                    f.flush()
                except OSError:
                    pass
            while shutil.disk_usage(where).free > leave + 4096:  # page-granular accounting
                with open(where / ".filler", "ab") as f:
                    f.write(b"\0" * 4096)

        @staticmethod
        def free_up() -> None:
            (where / ".filler").unlink(missing_ok=True)

    yield Disk
    _umount(where)


@pytest.fixture
def readonly_dir(tmp_path: Path):
    """A real read-only filesystem (EROFS) with one file ``existing.txt`` in it."""
    where = tmp_path / "readonly"
    _mount_tmpfs(where, "size=1m")
    (where / "existing.txt").write_text("keep me\n")
    import subprocess

    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
    yield where
    _umount(where)


def unprivileged(cmd: list[str]) -> list[str]:
    """``cmd`` run without root's permission override (a user namespace mapping root to uid 1000).

    As root, chmod'ed folders are still writable; inside this namespace the
    process is an ordinary owner, so a 0555 folder gives EACCES as it would
    for a vehicle's service user.
    """
    import shutil
    import subprocess

    if os.geteuid() != 0:
        return cmd
    probe = subprocess.run(["unshare", "--user", "--map-user=1000", "true"], capture_output=True)
    if shutil.which("unshare") is None or probe.returncode:
        pytest.skip("running as root and cannot drop root's permission override (unshare --user)")
    return ["unshare", "--user", "--map-user=1000", *cmd]


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core machine: intra-op threads only add spin-wait. A module
    opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
