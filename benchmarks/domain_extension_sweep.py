"""Compare day -> night translators (``cyclegan_fl`` runs, e.g. one per lambda_feature) without
target labels: how much labelled content survives the translation, and how far it moves
the images towards the target domain.

    python benchmarks/domain_extension_sweep.py --segmenter demo_out/run/last.pt \\
        --run "0 (CycleGAN)=runs/cgfl_l0/last.pt" --run "1=runs/cgfl_l1/last.pt" \\
        --source synthetic:demo_out/synth:day_val --target synthetic:demo_out/synth:night_val \\
        --json sweep.json --png sweep.png

Per translator (``NAME=CKPT``, or ``NAME=CKPT#NETWORK``; by default network ``--network``,
the EMA generator ``gen_s2t_ema``):

- ``content_miou``: the day segmenter's mIoU on the translated source frames against the
  *source* labels (allowed: they are the labels stage 2 trains the translations with).
  A translation that erases or invents objects loses it; so does the domain gap itself,
  which is why the untranslated source (``identity``) and the gap numbers stand beside it.
- ``feature_gap_closed``: 1 - d(G(S), T) / d(S, T), d the distance between the mean
  globally pooled encoder features (the segmenter's ``out``, through the feature loss's
  own stand-in network, `SegmenterEncoderFeatures`) of two image sets; 1 = the
  translations look like the target to the segmenter's encoder, 0 = no change.
- ``luma_gap_closed``: the same with the mean luma (ITU-R 601) of each set: brightness
  alone, independent of any network.

Target images are only looked at, never their labels. The PNG is a translation grid:
source | each translator | a target frame.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from edgeseg.data import spread_indices
from edgeseg.evaluate import FrameScorer, open_eval_dataset
from edgeseg.fileio import atomic_path, write_text
from edgeseg.train.nets.vgg import SegmenterEncoderFeatures
from edgeseg.train.predict import TorchPredictor, TorchTranslator


def luma(rgb: np.ndarray) -> float:
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    return float((0.299 * r + 0.587 * g + 0.114 * b).mean())


def gap_closed(source: np.ndarray, translated: np.ndarray, target: np.ndarray) -> float:
    """1 - |translated - target| / |source - target| for vectors (or scalars) of set means."""
    before = float(np.linalg.norm(np.asarray(source) - np.asarray(target)))
    after = float(np.linalg.norm(np.asarray(translated) - np.asarray(target)))
    return 1.0 - after / before if before > 0 else float("nan")


def pooled_features(encoder: SegmenterEncoderFeatures, rgb: np.ndarray) -> np.ndarray:
    """The globally pooled encoder features of one uint8 RGB frame."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        return encoder(x).mean(dim=(0, 2, 3)).numpy()


def translate_rgb(translator: TorchTranslator, rgb: np.ndarray) -> np.ndarray:
    """TorchTranslator works on BGR frames (as engines do); datasets give RGB."""
    return translator(rgb[..., ::-1].copy())[..., ::-1].copy()


def sweep(segmenter: str, runs: dict[str, str], source: str, target: str, network: str,
          max_images: int = 0) -> tuple[dict, list[list[np.ndarray]]]:
    predictor, ckpt = TorchPredictor.from_checkpoint(segmenter)
    stand_in = SegmenterEncoderFeatures(getattr(predictor.model, "segmenter", predictor.model),
                                        tuple(ckpt["mean"]), tuple(ckpt["std"]))

    def encoder(rgb: np.ndarray) -> np.ndarray:
        return pooled_features(stand_in, rgb)

    src = open_eval_dataset(source, ckpt["label_space"])
    tgt = open_eval_dataset(target, ckpt["label_space"])
    s_idx = spread_indices(len(src), max_images or len(src))
    t_idx = spread_indices(len(tgt), max_images or len(tgt))
    tgt_images = [tgt[i]["image"] for i in t_idx]
    tgt_feat = np.mean([encoder(im) for im in tgt_images], axis=0)
    tgt_luma = np.mean([luma(im) for im in tgt_images])
    src_images = [src[i]["image"] for i in s_idx]
    labels = [src[i]["label"] for i in s_idx]
    src_feat = np.mean([encoder(im) for im in src_images], axis=0)
    src_luma = np.mean([luma(im) for im in src_images])

    def score(images: list[np.ndarray]) -> dict[str, float]:
        scorer = FrameScorer(ckpt["label_space"], src.label_space)
        for im, lab in zip(images, labels):
            scorer.update(predictor(im), lab)
        feat = np.mean([encoder(im) for im in images], axis=0)
        return {"content_miou": 100 * scorer.metrics().miou,
                "feature_gap_closed": gap_closed(src_feat, feat, tgt_feat),
                "luma_gap_closed": gap_closed(src_luma, np.mean([luma(im) for im in images]),
                                              tgt_luma)}

    result = {"identity": score(src_images)}
    grid_cols = [src_images[:4]]
    for name, where in runs.items():
        path, _, net = where.partition("#")
        translator, _ = TorchTranslator.from_checkpoint(path, net or network)
        translated = [translate_rgb(translator, im) for im in src_images]
        result[name] = {**score(translated), "checkpoint": path, "network": net or network}
        grid_cols.append(translated[:4])
    grid_cols.append(tgt_images[:4])
    return result, grid_cols


def save_grid(cols: list[list[np.ndarray]], titles: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(cols[0])
    fig, axes = plt.subplots(rows, len(cols), figsize=(2.6 * len(cols), 1.5 * rows),
                             squeeze=False)
    for c, (col, title) in enumerate(zip(cols, titles)):
        for r in range(rows):
            ax = axes[r][c]
            if r < len(col):
                ax.imshow(col[r])
            ax.axis("off")
            if r == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=72, format="png")
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--segmenter", required=True, help="day segmenter checkpoint")
    p.add_argument("--run", action="append", required=True, metavar="NAME=CKPT[#NETWORK]")
    p.add_argument("--source", required=True, help="labelled source split")
    p.add_argument("--target", required=True, help="target split (images only)")
    p.add_argument("--network", default="gen_s2t_ema")
    p.add_argument("--max-images", type=int, default=0)
    p.add_argument("--json", type=Path)
    p.add_argument("--png", type=Path)
    a = p.parse_args()
    runs = dict(item.split("=", 1) for item in a.run)
    torch.set_grad_enabled(False)
    result, cols = sweep(a.segmenter, runs, a.source, a.target, a.network, a.max_images)
    for name, row in result.items():
        print(f"{name:>16}: content mIoU {row['content_miou']:6.2f}  feature gap closed "
              f"{row['feature_gap_closed']:6.3f}  luma gap closed {row['luma_gap_closed']:6.3f}")
    if a.json:
        write_text(a.json, json.dumps(result, indent=2) + "\n")
    if a.png:
        save_grid(cols, ["source", *runs, "target"], a.png)


if __name__ == "__main__":
    main()
