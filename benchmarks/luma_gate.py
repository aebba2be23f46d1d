"""Pick the mean-luma threshold of ``edgeseg run/eval --translate-below`` from footage of the
two conditions, and draw both luma histograms with it.

    python benchmarks/luma_gate.py --day camvid:../shared/data/camvid:day_train \\
        --dusk camvid:../shared/data/camvid:dusk_train \\
        --also camvid:../shared/data/camvid:day_val --also camvid:../shared/data/camvid:dusk_test \\
        --plot benchmarks/results/camvid/luma-gate.png --json benchmarks/results/camvid/luma-gate.json

Only images are read (no labels): the threshold is the one that misclassifies the fewest
frames of the two training conditions (balanced: each condition weighs the same however
many frames it has), placed in the middle of the widest luma gap that achieves it. Each
``--also`` spec is reported with the fraction of its frames the gate would translate.

Why: a dusk->day translator in front of a day segmenter helps dusk frames and hurts day
ones (Mutual-GAN on CamVid: dusk 20.9 -> 27.2 mIoU, day 43.7 -> 29.8), so a vehicle that
drives through both gates it on the light, with a threshold chosen from its own cameras.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

from edgeseg.export.gate import record_translate_below
from edgeseg.fileio import write_json
from edgeseg.runtime.frames import open_frames
from edgeseg.runtime.stages import mean_luma
from edgeseg.viz import new_figure, save_figure


def spec_lumas(spec: str, count: int = 0) -> np.ndarray:
    """`mean_luma` of each frame of ``spec`` (``count`` spread evenly; 0: all)."""
    return np.array([mean_luma(np.ascontiguousarray(f.image[..., ::-1]))
                     for f in open_frames(spec, count)])


def balanced_error(day: np.ndarray, dusk: np.ndarray, below: float) -> float:
    """Mean of the day frames' translated fraction and the dusk frames' passed fraction."""
    return 0.5 * (float(np.mean(day < below)) + float(np.mean(dusk >= below)))


def pick_threshold(day: Sequence[float], dusk: Sequence[float]) -> tuple[float, float]:
    """(threshold, balanced error): the lowest-error threshold, in the middle of the widest
    gap between consecutive observed lumas among those with that error."""
    day_a, dusk_a = np.asarray(day, float), np.asarray(dusk, float)
    if not len(day_a) or not len(dusk_a):
        raise ValueError("both conditions need frames")
    values = np.unique(np.concatenate([day_a, dusk_a]))
    best: tuple[float, float, float] | None = None  # (error, -gap width, threshold)
    for lo, hi in zip(values[:-1], values[1:], strict=True):
        t = float(lo + hi) / 2  # every threshold in (lo, hi] splits the frames alike
        key = (balanced_error(day_a, dusk_a, t), -float(hi - lo), t)
        if best is None or key < best:
            best = key
    if best is None:  # one distinct luma in all frames: nothing separates them
        return float(values[0]), 0.5
    return best[2], best[0]


def plot(path: str, lumas: dict[str, np.ndarray], below: float) -> None:
    fig = new_figure(7.0, 3.2)
    ax = fig.add_subplot()
    bins = np.linspace(0, 255, 52)
    for name, v in lumas.items():
        ax.hist(v, bins=bins, alpha=0.55, label=f"{name} ({len(v)})")
    ax.axvline(below, color="k", ls="--", lw=1.2, label=f"translate below {below:.1f}")
    ax.set_xlabel("mean luma of the frame (BT.601, 0-255)")
    ax.set_ylabel("frames")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--day", required=True, help="frames the translator must leave alone")
    ap.add_argument("--dusk", required=True, help="frames the translator is for")
    ap.add_argument("--also", action="append", default=[], metavar="SPEC",
                    help="further footage: report the fraction the gate translates")
    ap.add_argument("--max-frames", type=int, default=0, metavar="N",
                    help="N frames spread over each spec (default 0: all)")
    ap.add_argument("--plot", metavar="PNG")
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("--record", action="append", default=[], metavar="ONNX",
                    help="write the threshold into this translator ONNX (repeatable: its fp32 "
                         "and int8 files), where `edgeseg run/eval` find it")
    args = ap.parse_args(argv)
    lumas = {spec: spec_lumas(spec, args.max_frames) for spec in [args.day, args.dusk,
                                                                  *args.also]}
    below, error = pick_threshold(lumas[args.day], lumas[args.dusk])
    rows = {spec: {"frames": len(v), "luma_min": round(float(v.min()), 2),
                   "luma_median": round(float(np.median(v)), 2),
                   "luma_max": round(float(v.max()), 2),
                   "translated": round(float(np.mean(v < below)), 4)}
            for spec, v in lumas.items()}
    print(f"--translate-below {below:.1f}  (balanced error {100 * error:.1f} % on "
          f"{args.day} vs {args.dusk})")
    for spec, r in rows.items():
        print(f"  {spec}: {r['frames']} frames, luma {r['luma_min']}-{r['luma_max']} "
              f"(median {r['luma_median']}), translated {100 * r['translated']:.1f} %")
    if args.json:
        write_json(args.json, {"translate_below": round(below, 2),
                               "balanced_error": round(error, 4), "day": args.day,
                               "dusk": args.dusk, "specs": rows})
    if args.plot:
        plot(args.plot, {s.split(":")[-1]: v for s, v in lumas.items()}, below)
        print(f"plot: {args.plot}")
    for path in args.record:
        print(f"recorded in {path}: translate_below {record_translate_below(path, below):g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
