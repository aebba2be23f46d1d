"""A grid of source images and their G_S->T translations from a mobilenet_uda checkpoint
(optionally beside a target-domain image per row).

    python benchmarks/uda_translations.py runs/uda_synth_1000/full_s0/last.pt OUT.png \\
        demo_out/synth/images/day/s000320.png:demo_out/synth/images/night/s000320.png ...

Why: the segmenter's supervised signal is CE on these translations. When they lose the
objects (artefacts, erased cars), the CE teaches the segmenter labels that are not in the
image, and the source domain pays; the mIoU table alone cannot show that.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch

from edgeseg.fileio import write_image
from edgeseg.train.checkpoint import load_checkpoint
from edgeseg.train.nets.generator import build_generator


def load_translator(checkpoint: Path) -> torch.nn.Module:
    """G_S->T with the architecture the checkpoint's recipe gave it."""
    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("method") != "mobilenet_uda":
        raise SystemExit(f"{checkpoint}: a {ckpt.get('method')} checkpoint has no G_S->T; "
                         "pass a mobilenet_uda run's last.pt")
    params = ckpt["recipe"]["method"].get("params", {})
    gen = build_generator(params.get("ngf", 64), params.get("n_blocks", 9),
                          upsample=params.get("upsample", "transpose"))
    gen.load_state_dict(ckpt["method_state"]["networks"]["gen_s2t"])
    return gen.eval()


def translate(gen: torch.nn.Module, bgr: np.ndarray) -> np.ndarray:
    """BGR uint8 -> BGR uint8 through the generator's [-1, 1] RGB range."""
    h, w = (s - s % 4 for s in bgr.shape[:2])  # the generator downsamples twice
    x = torch.from_numpy(np.ascontiguousarray(bgr[:h, :w, ::-1])).permute(2, 0, 1)[None]
    with torch.no_grad():
        y = gen(x.float() / 127.5 - 1.0)[0].permute(1, 2, 0).numpy()
    return np.ascontiguousarray(((y + 1.0) * 127.5).clip(0, 255).astype(np.uint8)[:, :, ::-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("pairs", nargs="+", metavar="SOURCE[:TARGET]")
    p.add_argument("--width", type=int, default=384, help="each tile's width in pixels")
    args = p.parse_args()
    gen = load_translator(args.checkpoint)
    rows = []
    for item in args.pairs:
        images = []
        for path in item.split(":"):
            image = cv2.imread(path)
            if image is None:
                raise SystemExit(f"{path}: not a readable image")
            images.append(image)
        images.insert(1, translate(gen, images[0]))  # at the source's own resolution
        tiles = [cv2.resize(im, (args.width, round(im.shape[0] * args.width / im.shape[1])),
                            interpolation=cv2.INTER_AREA) for im in images]
        height = min(t.shape[0] for t in tiles)
        rows.append(np.hstack([t[:height] for t in tiles]))
    width = max(r.shape[1] for r in rows)
    grid = np.vstack([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows])
    write_image(args.out, grid, rgb=False)
    print(f"wrote {args.out} (source | G_S->T(source) | target)")


if __name__ == "__main__":
    main()
