"""Seconds per CPU training iteration and peak memory with glibc's malloc as it comes and
with ``train.keep_freed_memory`` (freed buffers kept in the heap, edgeseg.train.cpu_malloc).

    python benchmarks/cpu_malloc_train.py train/source_only_plain_camvid.yaml \\
        --iterations 5 --rounds 2 --threads 2 --json benchmarks/results/cpu-malloc-train.json

glibc's settings are per process and stay once changed, so every timing is a fresh child
process (the same recipe, seed and data, no validation or checkpoints, data workers 0),
the two settings interleaved round by round so that a machine that speeds up or slows
down during the run affects both alike. Each child reports the median s/it past its first
iteration and its peak resident memory (``ru_maxrss``); the report gives the median over
rounds and the ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from cpu_bf16_train import time_recipe

from edgeseg.fileio import write_text
from edgeseg.runtime.compat import cpu_device

SETTINGS = {"glibc": "false", "kept": "true"}


def child(path: str, keep: str, iterations: int, threads: int) -> None:
    """One timing in this process; prints one JSON line."""
    row = time_recipe(path, False, iterations, threads, (f"train.keep_freed_memory={keep}",))
    row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(row), flush=True)


def run_child(path: str, keep: str, iterations: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, path, "--child", keep, "--iterations", str(iterations),
           "--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipes", nargs="+")
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", choices=sorted(SETTINGS.values()), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.recipes[0], args.child, args.iterations, args.threads)
        return
    report = {"cpu": dataclasses.asdict(cpu_device()), "threads": args.threads,
              "torch": torch.__version__, "iterations": args.iterations,
              "rounds": args.rounds, "recipes": {}}
    for path in args.recipes:
        runs: dict[str, list[dict]] = {name: [] for name in SETTINGS}
        for _ in range(args.rounds):
            for name, keep in SETTINGS.items():
                runs[name].append(run_child(path, keep, args.iterations, args.threads))
        row = {name: {"sec_per_iter": statistics.median(r["sec_per_iter"] for r in rs),
                      "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in rs),
                      "rounds": rs} for name, rs in runs.items()}
        row["speedup"] = row["glibc"]["sec_per_iter"] / row["kept"]["sec_per_iter"]
        report["recipes"][path] = row
        print(f"{path}: glibc as it comes {row['glibc']['sec_per_iter']:.2f} s/it "
              f"({row['glibc']['peak_rss_mib']:.0f} MiB peak), freed memory kept "
              f"{row['kept']['sec_per_iter']:.2f} s/it ({row['kept']['peak_rss_mib']:.0f} MiB): "
              f"{row['speedup']:.2f}x", flush=True)
    if args.json:
        write_text(args.json, json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
