"""A grid of source images and their translations by a checkpoint's translator (default
G_S->T, ``gen_s2t``, of a mobilenet_uda run), optionally beside a target-domain image per
row.

    python benchmarks/uda_translations.py runs/uda_synth_1000/full_s0/last.pt OUT.png \\
        demo_out/synth/images/day/s000320.png:demo_out/synth/images/night/s000320.png ...
    python benchmarks/uda_translations.py RUN/last.pt OUT.png IMG... --network gen_t2s
    python benchmarks/uda_translations.py FULL/last.pt OUT.png IMG... --network gen_t2s \\
        --label full --also "CycleGAN=CYCLEGAN/last.pt" --also "w/o MI=NO_MI/last.pt"

With ``--also``, each further run's translation of the same frame gets its own column, and a
title strip names the columns (ablation rows side by side).

The translator is rebuilt from the spec stored in the checkpoint (kind, arguments, role)
by `TorchTranslator.from_checkpoint`, the frame wrapper the translator ONNX export traces
(`edgeseg export CKPT --network NAME`), so the grid shows what that engine computes.

Why: the segmenter's supervised signal is CE on these translations. When they lose the
objects (artefacts, erased cars), the CE teaches the segmenter labels that are not in the
image, and the source domain pays; the mIoU table alone cannot show that.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.fileio import write_image
from edgeseg.train.predict import TorchTranslator
from edgeseg.viz import text_bar


def load_translator(checkpoint: Path, network: str = "gen_s2t") -> TorchTranslator:
    """Network ``network`` of ``checkpoint`` as a BGR frame -> BGR frame translator, rebuilt
    from its stored spec; one line (SystemExit) when the checkpoint lacks it."""
    try:
        translator, _ = TorchTranslator.from_checkpoint(str(checkpoint), network)
    except (EdgesegError, ValueError) as exc:  # CheckpointError is an EdgesegError
        raise SystemExit(f"{exc}; pass a checkpoint with an image network (e.g. a "
                         "mobilenet_uda run's last.pt) or another --network") from None
    return translator


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("pairs", nargs="+", metavar="SOURCE[:TARGET]")
    p.add_argument("--network", default="gen_s2t",
                   help="the checkpoint's translator or prenet to run (default gen_s2t)")
    p.add_argument("--width", type=int, default=384, help="each tile's width in pixels")
    p.add_argument("--also", action="append", default=[], metavar="LABEL=CHECKPOINT",
                   help="another run's translator (same --network) as a further column")
    p.add_argument("--label", default="", help="the first checkpoint's column title")
    args = p.parse_args()
    columns = [(args.label or args.checkpoint.parent.name,
                load_translator(args.checkpoint, args.network))]
    for item in args.also:
        label, sep, path = item.rpartition("=")
        if not sep or not label:
            raise SystemExit(f"--also {item}: expected LABEL=CHECKPOINT")
        columns.append((label, load_translator(Path(path), args.network)))
    rows = []
    for item in args.pairs:
        images = []
        for path in item.split(":"):
            image = cv2.imread(path)
            if image is None:
                raise SystemExit(f"{path}: not a readable image")
            images.append(image)
        for i, (_, translate) in enumerate(columns):  # at the source's own resolution
            images.insert(1 + i, translate(images[0]))
        tiles = [cv2.resize(im, (args.width, round(im.shape[0] * args.width / im.shape[1])),
                            interpolation=cv2.INTER_AREA) for im in images]
        height = min(t.shape[0] for t in tiles)
        rows.append(np.hstack([t[:height] for t in tiles]))
    width = max(r.shape[1] for r in rows)
    grid = np.vstack([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows])
    titles = ["source"] + [label for label, _ in columns] + ["target"]
    if args.also:  # several translators: say which column is which
        header = np.hstack([text_bar(t, args.width) for t in titles])[:, :width]
        grid = np.vstack([np.pad(header, ((0, 0), (0, width - header.shape[1]), (0, 0))),
                          grid])
    write_image(args.out, grid, rgb=False)
    print(f"wrote {args.out} ({' | '.join(titles[:-1])} | target if given)")


if __name__ == "__main__":
    main()
