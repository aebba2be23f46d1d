"""`edgeseg strip CKPT -o OUT.pt`: a checkpoint to share, commit or start from.

A run's ``last.pt``/``best.pt`` carries what only resuming needs: the optimisers'
moments (two tensors per weight for Adam), the data streams' positions and every
RNG state, about three times the weights. The stripped file keeps the weights of
the segmenter and of every method network, the model spec, label space,
normalisation, deploy settings, provenance and the run's recipe, so it loads as
``model.init_from``, ``method.init_from``, and in `export`, `eval` and `derive`;
``--resume`` refuses it in one line.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgeseg.train import checkpoint as ckpt_io

#: what only an exact resume reads
RESUME_ONLY = ("streams", "rng")


def strip_checkpoint(ckpt: dict[str, Any]) -> dict[str, Any]:
    """``ckpt`` without optimiser, stream and RNG state (method networks' weights kept)."""
    out = {k: v for k, v in ckpt.items() if k not in RESUME_ONLY and k != "method_state"}
    networks = (ckpt.get("method_state") or {}).get("networks")
    if networks:
        out["method_state"] = {"networks": networks}
    out["stripped"] = {"iteration": ckpt.get("iteration"), "dropped": [
        k for k in (*RESUME_ONLY, "method_state") if k in ckpt]}
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a run's last.pt or best.pt")
    p.add_argument("-o", "--output", required=True, help="the stripped checkpoint (.pt)")


def run(args: argparse.Namespace) -> int:
    src, dst = Path(args.checkpoint), Path(args.output)
    if src.resolve() == dst.resolve():
        raise ckpt_io.CheckpointError(f"{dst}: -o is the checkpoint itself; write the stripped "
                                      "copy to another file (the original is what resumes)")
    ckpt_io.save_checkpoint(dst, strip_checkpoint(ckpt_io.load_checkpoint(src)))
    before, after = src.stat().st_size, dst.stat().st_size
    print(f"strip: {dst} ({after / 2**20:.1f} MiB, {before / 2**20:.1f} MiB before): weights "
          f"of iteration {ckpt_io.load_checkpoint(dst).get('iteration')}; use it as "
          f"--set model.init_from={dst}, not with --resume")
    return 0
