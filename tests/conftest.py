"""Shared fixtures: a tiny synthetic day/night set written by the real generator."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "data" / "camvid"


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
