"""``edgeseg demo`` / ``make demo``: the whole path on built-in synthetic data.

1. generate a small day/night set;
2. train a small DeepLabv3+/MobileNet-v2 on day (source-only; a finished model
   is reused unless --retrain);
3. evaluate on day and night: per-class tables, the day->night gap, an overlay
   PNG and per-class IoU bars;
4. export to ONNX (parity-gated) and build the engine with ``--precision auto``
   (ONNX Runtime on CPU; TensorRT where it and a GPU are installed);
5. stream the generator's night drive through the engine with `edgeseg run`:
   ``demo.mp4`` with overlays and HUD, and a JSON summary (fps, per-stage
   latency, online mIoU against the drive's ground truth).

Sized for under 10 minutes on 2 CPU cores. Step 4 runs the real ``edgeseg export``
and ``edgeseg build-engine`` commands through the `Command` the CLI hands in, so the
demo prints and runs exactly what a user would type (and does not import the CLI).
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from edgeseg.config import Recipe, from_dict
from edgeseg.errors import EdgesegError

#: the ``edgeseg`` command: argv in, exit status out (``edgeseg.cli.main``)
Command = Callable[[list[str]], int]

SYNTH_ARGS = ["--train", "320", "--val", "24", "--size", "256x128", "--domains", "day,night",
              "--seed", "0"]
DEMO_SIZE = "256x128"  # engine and video size (WxH), the training resolution

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


def run_demo(args: argparse.Namespace, edgeseg: Command) -> int:
    """The five steps; ``edgeseg`` runs the export and build-engine commands."""
    from edgeseg.argtypes import parse_device
    from edgeseg.data.synth.cli import add_arguments
    from edgeseg.data.synth.cli import run as run_synth
    from edgeseg.eval_cli import run_eval
    from edgeseg.train.checkpoint import load_checkpoint
    from edgeseg.train.trainer import Trainer

    out = Path(args.out)
    t0 = time.perf_counter()
    synth = out / "synth"
    if not (synth / "meta.json").exists():
        print(f"[1/5] generating synthetic day/night scenes in {synth}")
        p = argparse.ArgumentParser()
        add_arguments(p)
        if run_synth(p.parse_args(["--out", str(synth), *SYNTH_ARGS])):
            return 1
    else:
        print(f"[1/5] reusing synthetic scenes in {synth}")

    recipe = demo_recipe(out, args.iterations)
    run_dir = out / "run"
    last = run_dir / "last.pt"
    cached = (last.exists() and not args.retrain
              and load_checkpoint(last)["iteration"] >= recipe.train.iterations)
    if cached:
        print(f"[2/5] reusing the trained demo model {last} (--retrain to train again)")
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        print(f"[2/5] training {recipe.name}: DeepLabv3+/MobileNet-v2 on synthetic day, "
              f"{recipe.train.iterations} iterations")
        status = Trainer(recipe).run()
        if status:
            return status

    print("[3/5] evaluating on day and night")
    ns = argparse.Namespace(model=str(last), data=list(recipe.data.val), json=str(out / "eval.json"),
                            overlays=str(out / "overlays.png"), plot=str(out / "iou_bars.png"),
                            max_frames=0, device=parse_device("auto"))
    status = run_eval(ns)
    if status:
        return status
    engine = deploy(out, last, synth, fresh=not cached, edgeseg=edgeseg)
    status = stream_night_drive(out, engine, args.max_frames)
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; outputs in {out}/: "
          "demo.mp4, stream.json, eval.json, overlays.png, iou_bars.png, model.onnx, "
          f"{engine.name} (+ {engine.name}.json manifest), run/last.pt")
    return status


def deploy(out: Path, checkpoint: Path, synth: Path, fresh: bool, edgeseg: Command) -> Path:
    """Export (parity-gated) and build the fastest engine that keeps the accuracy."""
    from edgeseg.contract.manifest import manifest_path
    from edgeseg.export.build_engine import default_engine_path, resolve_backend

    onnx_path = out / "model.onnx"
    # .engine (TensorRT), else .ov.blob (OpenVINO) or .ort.onnx (ONNX Runtime) on the CPU
    engine = default_engine_path(onnx_path, resolve_backend("auto"))
    if fresh or not onnx_path.exists():
        print(f"[4/5] exporting {checkpoint} -> {onnx_path} and building the engine "
              "(--precision auto)")
        if edgeseg(["export", str(checkpoint), "-o", str(onnx_path), "--size", DEMO_SIZE,
                    "--parity-data", f"synthetic:{synth}:day_val"]):
            raise EdgesegError("demo: export failed (see above)")
    if fresh or not manifest_path(engine).exists():
        # calibration on unlabelled night frames (the deployment domain); accuracy budget
        # checked on labelled day frames (target labels are for reporting only)
        if edgeseg(["build-engine", str(onnx_path), "-o", str(engine), "--precision", "auto",
                    "--backend", "auto", "--calib", f"synthetic:{synth}:night_train",
                    "--calib-frames", "64", "--accuracy-data", f"synthetic:{synth}:day_val"]):
            raise EdgesegError("demo: build-engine failed (see above)")
    else:
        print(f"[4/5] reusing {engine}")
    return engine


def stream_night_drive(out: Path, engine: Path, frames: int) -> int:
    """The night drive through the engine into demo.mp4, like `edgeseg run` does it."""
    from edgeseg.fileio import write_json
    from edgeseg.runtime.run_cli import EXIT_INTERRUPTED, StreamConfig, run_stream

    source = f"synthetic:night:{DEMO_SIZE}:{frames}:7"
    video, summary_path = out / "demo.mp4", out / "stream.json"
    print(f"[5/5] streaming {source} through {engine} -> {video}\n"
          f"      (the same as: edgeseg run {engine} --source {source} --sink {video} "
          f"--summary {summary_path})")
    summary = run_stream(engine, StreamConfig(source=source, sinks=[str(video)]))
    print(summary.format())
    write_json(summary_path, summary.to_dict())
    return EXIT_INTERRUPTED if summary.interrupted else 0
