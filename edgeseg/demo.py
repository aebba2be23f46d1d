"""``edgeseg demo`` / ``make demo``: the main job on built-in synthetic data.

Generates a small day/night set, trains a small DeepLabv3+/MobileNet-v2 on day
(source-only), evaluates on day and night, prints the per-class tables and the
day->night gap, and writes an overlay PNG and per-class IoU bars. Sized for
under 10 minutes on 2 CPU cores; a finished model is reused unless --retrain.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from edgeseg.config import Recipe, from_dict

SYNTH_ARGS = ["--train", "320", "--val", "24", "--size", "256x128", "--domains", "day,night",
              "--seed", "0"]

DEMO_RECIPE = {
    "name": "demo_source_only",
    "seed": 0,
    "data": {
        "label_space": "cityscapes19",
        "crop": [128, 256],
        "scale_range": [0.75, 1.5],
        "color_jitter": 0.2,
        "batch_size": 8,
        "workers": 1,
    },
    "model": {"backbone": "mobilenet_v2", "head": "deeplabv3plus", "separable": True,
              "num_classes": 19, "output_stride": 16, "width_mult": 0.5, "aspp_channels": 128},
    "method": {"name": "source_only"},
    "optim": {"name": "adam", "lr": 0.002, "weight_decay": 0.0001, "schedule": "poly",
              "warmup_iters": 20},
    "train": {"iterations": 600, "val_every": 0, "ckpt_every": 100, "log_every": 10},
}


def demo_recipe(out: Path, iterations: int = 0) -> Recipe:
    synth = out / "synth"
    data = dict(DEMO_RECIPE["data"], source=f"synthetic:{synth}:day_train",
                val=[f"synthetic:{synth}:day_val", f"synthetic:{synth}:night_val"])
    train = dict(DEMO_RECIPE["train"])
    if iterations:
        train["iterations"] = iterations
    return from_dict(Recipe, {**DEMO_RECIPE, "data": data, "train": train,
                              "output_dir": str(out / "run")})


def run_demo(args: argparse.Namespace) -> int:
    from edgeseg.data.synth.cli import add_arguments
    from edgeseg.data.synth.cli import run as run_synth
    from edgeseg.eval_cli import run_eval
    from edgeseg.train.checkpoint import load_checkpoint
    from edgeseg.train.trainer import Trainer

    out = Path(args.out)
    t0 = time.perf_counter()
    synth = out / "synth"
    if not (synth / "meta.json").exists():
        print(f"[1/3] generating synthetic day/night scenes in {synth}")
        p = argparse.ArgumentParser()
        add_arguments(p)
        if run_synth(p.parse_args(["--out", str(synth), *SYNTH_ARGS])):
            return 1
    else:
        print(f"[1/3] reusing synthetic scenes in {synth}")

    recipe = demo_recipe(out, args.iterations)
    run_dir = out / "run"
    last = run_dir / "last.pt"
    cached = (last.exists() and not args.retrain
              and load_checkpoint(last)["iteration"] >= recipe.train.iterations)
    if cached:
        print(f"[2/3] reusing the trained demo model {last} (--retrain to train again)")
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        print(f"[2/3] training {recipe.name}: DeepLabv3+/MobileNet-v2 on synthetic day, "
              f"{recipe.train.iterations} iterations")
        status = Trainer(recipe).run()
        if status:
            return status

    print("[3/3] evaluating on day and night")
    ns = argparse.Namespace(model=str(last), data=list(recipe.data.val), json=str(out / "eval.json"),
                            overlays=str(out / "overlays.png"), plot=str(out / "iou_bars.png"),
                            max_images=0, device="auto")
    status = run_eval(ns)
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; outputs in {out}/: "
          "eval.json, overlays.png, iou_bars.png, run/last.pt")
    return status
