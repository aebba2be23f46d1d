"""Seconds per training iteration of real recipes in fp32 and with ``train.cpu_bf16`` (bf16
autocast), one after the other in one process on this CPU, from the same seed and data.

    python benchmarks/cpu_bf16_train.py train/mutual_gan_camvid.yaml \\
        train/source_only_camvid.yaml --iterations 6 --threads 2 \\
        --json benchmarks/results/cpu-bf16-train.json

Each recipe runs ``--iterations`` iterations per setting in a temporary folder (no
validation, no checkpoints, data workers 0); the first iteration (allocation, oneDNN
kernel choice) is left out of the median. The losses of the last iteration of both runs
are printed beside each other as a first check that bf16 computes the same thing; whether
it learns as well is a matter for a full run, not this benchmark. A CPU without native
bf16 is refused by the trainer (one line), so there the script reports fp32 only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
from pathlib import Path

import torch

from edgeseg.config import ConfigError, load_recipe
from edgeseg.fileio import write_text
from edgeseg.runtime.compat import cpu_device
from edgeseg.train.trainer import Trainer, cpu_has_native_bf16


def time_recipe(path: str, bf16: bool, iterations: int, threads: int,
                extra: tuple[str, ...] = ()) -> dict:
    """Run ``iterations`` of the recipe (with ``extra`` overrides); median s/it past the
    first, and the last losses."""
    with tempfile.TemporaryDirectory(prefix="edgeseg-bf16-") as tmp:
        overrides = [f"output_dir={tmp}/run", f"train.iterations={iterations}",
                     "train.val_every=0", "train.ckpt_every=0", "train.log_every=1",
                     f"train.threads={threads}", "data.workers=0", "data.val=[]",
                     f"train.cpu_bf16={str(bf16).lower()}", "train.device=cpu", *extra]
        recipe = load_recipe(path, overrides)
        assert Trainer(recipe, progress=False).run() == 0
        rows = [json.loads(x) for x in Path(tmp, "run", "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["type"] == "train"]
    losses = {k: v for k, v in train[-1].items() if k.startswith("loss_")}
    return {"sec_per_iter": statistics.median(r["sec_per_iter"] for r in train[1:]),
            "iterations": iterations, "last_losses": losses}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipes", nargs="+")
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    native = cpu_has_native_bf16()
    report = {"cpu": dataclasses.asdict(cpu_device()), "threads": args.threads,
              "torch": torch.__version__, "native_bf16": native, "recipes": {}}
    for path in args.recipes:
        row = {"fp32": time_recipe(path, False, args.iterations, args.threads)}
        if native:
            row["bf16"] = time_recipe(path, True, args.iterations, args.threads)
            row["speedup"] = row["fp32"]["sec_per_iter"] / row["bf16"]["sec_per_iter"]
        report["recipes"][path] = row
        line = f"{path}: fp32 {row['fp32']['sec_per_iter']:.2f} s/it"
        if native:
            line += f", bf16 {row['bf16']['sec_per_iter']:.2f} s/it ({row['speedup']:.2f}x)"
            for k, v in row["fp32"]["last_losses"].items():
                line += f"\n    {k}: fp32 {v:.4f} bf16 {row['bf16']['last_losses'][k]:.4f}"
        print(line, flush=True)
    if args.json:
        write_text(args.json, json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    try:
        main()
    except ConfigError as exc:
        raise SystemExit(f"cpu_bf16_train: error: {exc}") from None
