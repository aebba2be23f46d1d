"""A grid of source images and their translations by a checkpoint's translator (default
G_S->T, ``gen_s2t``, of a mobilenet_uda run), optionally beside a target-domain image per
row.

    python benchmarks/uda_translations.py runs/uda_synth_1000/full_s0/last.pt OUT.png \\
        demo_out/synth/images/day/s000320.png:demo_out/synth/images/night/s000320.png ...
    python benchmarks/uda_translations.py RUN/last.pt OUT.png IMG... --network gen_t2s

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
    args = p.parse_args()
    translate = load_translator(args.checkpoint, args.network)
    rows = []
    for item in args.pairs:
        images = []
        for path in item.split(":"):
            image = cv2.imread(path)
            if image is None:
                raise SystemExit(f"{path}: not a readable image")
            images.append(image)
        images.insert(1, translate(images[0]))  # at the source's own resolution
        tiles = [cv2.resize(im, (args.width, round(im.shape[0] * args.width / im.shape[1])),
                            interpolation=cv2.INTER_AREA) for im in images]
        height = min(t.shape[0] for t in tiles)
        rows.append(np.hstack([t[:height] for t in tiles]))
    width = max(r.shape[1] for r in rows)
    grid = np.vstack([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows])
    write_image(args.out, grid, rgb=False)
    print(f"wrote {args.out} (source | {args.network}(source) | target)")


if __name__ == "__main__":
    main()
