"""`edgeseg strip CKPT -o OUT.pt`: a checkpoint to share, commit or start from.

A run's ``last.pt``/``best.pt`` carries what only resuming needs: the optimisers'
moments (two tensors per weight for Adam), the data streams' positions and every
RNG state, about three times the weights. The stripped file keeps the weights of
the segmenter and of every method network, the model spec, label space,
normalisation, deploy settings, provenance and the run's recipe, so it loads as
``model.init_from``, ``method.init_from``, and in `export`, `eval` and `derive`;
``--resume`` refuses it in one line. A method's extra state stays where it is plain
numbers and text (DANIA's class frequencies, which re-tune its deployed bias); tensors
there (CycleGAN's image pools) only serve a resume and go. ``--network NAME`` keeps only
the named method networks (the segmenter always stays): a stage-1 run's EMA translator
alone is a quarter of the file that holds both generators, their EMA copies and the
discriminators.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeseg.train import checkpoint as ckpt_io

#: what only an exact resume reads
RESUME_ONLY = ("streams", "rng")


def _plain(value: Any) -> bool:
    """True for numbers, text and containers of them: no tensors, nothing resume-only."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def strip_checkpoint(ckpt: dict[str, Any], keep: Sequence[str] = (),
                     path: str | Path = "checkpoint") -> dict[str, Any]:
    """``ckpt`` without optimiser, stream and RNG state; method networks' weights kept,
    all of them, or only those named in ``keep`` (the segmenter ``model`` always stays)."""
    out = {k: v for k, v in ckpt.items() if k not in RESUME_ONLY and k != "method_state"}
    networks = (ckpt.get("method_state") or {}).get("networks") or {}
    wanted = [n for n in keep if n != "model"]
    if wanted:
        unknown = [n for n in wanted if n not in networks]
        if unknown:
            raise ckpt_io.CheckpointError(
                f"{path}: has no network {', '.join(map(repr, unknown))}; it has "
                f"{ckpt_io.network_names(ckpt)} (--network takes those names)")
        networks = {n: networks[n] for n in wanted}
        out["networks"] = {n: s for n, s in (ckpt.get("networks") or {}).items()
                           if n == "model" or n in networks}
    extra = {k: v for k, v in ((ckpt.get("method_state") or {}).get("extra") or {}).items()
             if _plain(v)}
    if networks or extra:
        out["method_state"] = {"networks": networks} | ({"extra": extra} if extra else {})
    out["stripped"] = {"iteration": ckpt.get("iteration"), "dropped": [
        k for k in (*RESUME_ONLY, "method_state") if k in ckpt]}
    if wanted:
        out["stripped"]["kept_networks"] = list(networks)
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a run's last.pt or best.pt")
    p.add_argument("-o", "--output", required=True, help="the stripped checkpoint (.pt)")
    p.add_argument("--network", action="append", default=[], metavar="NAME",
                   help="keep only this method network (repeatable; default: all), e.g. "
                        "gen_s2t_ema of a translator run; the segmenter always stays")


def run(args: argparse.Namespace) -> int:
    src, dst = Path(args.checkpoint), Path(args.output)
    if src.resolve() == dst.resolve():
        raise ckpt_io.CheckpointError(f"{dst}: -o is the checkpoint itself; write the stripped "
                                      "copy to another file (the original is what resumes)")
    stripped = strip_checkpoint(ckpt_io.load_checkpoint(src), args.network, src)
    ckpt_io.save_checkpoint(dst, stripped)
    before, after = src.stat().st_size, dst.stat().st_size
    kept = [n for n in args.network if n != "model"]
    use = (f"method.init_from.NAME={{checkpoint: {dst}, network: {kept[0]}}}" if kept
           else f"model.init_from={dst}")
    print(f"strip: {dst} ({after / 2**20:.1f} MiB, {before / 2**20:.1f} MiB before): weights "
          f"of iteration {stripped.get('iteration')}; use it as --set {use}, not with --resume")
    return 0
