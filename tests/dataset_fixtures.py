"""Tiny dataset trees in each official layout, written as real PNG/JPG files.

Every image is 32x16 (w x h); labels are four 8-pixel-wide vertical stripes of
known raw ids, so a test reads the mapped ids back with `stripes`.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

H, W = 16, 32

# raw labelIds in the four stripes -> expected Cityscapes trainIds
CS_RAW = (7, 26, 0, 33)
CS_TRAIN = (0, 13, 255, 18)
# Dark Zurich / ACDC / Nighttime Driving labelIds (same id space)
DZ_RAW = (11, 23, 4, 24)
DZ_TRAIN = (2, 10, 255, 11)
# SYNTHIA class ids -> trainIds
SYN_RAW = (3, 10, 0, 21)
SYN_TRAIN = (0, 11, 255, 3)
# CamVid ids (11 = unlabelled)
CAMVID_RAW = (0, 10, 11, 3)
CAMVID_TRAIN = (0, 10, 255, 3)


def stripe_label(values: tuple[int, ...], dtype: type = np.uint8, h: int = H,
                 w: int = W) -> np.ndarray:
    lab = np.zeros((h, w), dtype)
    step = w // len(values)
    for i, v in enumerate(values):
        lab[:, i * step:(i + 1) * step] = v
    return lab


def stripes(label: np.ndarray) -> tuple[int, ...]:
    """The four stripe values of a (possibly mapped) stripe label."""
    step = label.shape[1] // 4
    return tuple(int(label[0, i * step]) for i in range(4))


def write_image(path: Path, seed: int = 0, colour: tuple[int, int, int] | None = None) -> np.ndarray:
    """Write an RGB image (random or one colour); returns the RGB array."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if colour is None:
        rgb = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    else:
        rgb = np.full((H, W, 3), colour, np.uint8)
    params = [cv2.IMWRITE_JPEG_QUALITY, 100] if path.suffix == ".jpg" else []
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    return rgb


def write_label(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), label)


def write_palette_label(path: Path, label: np.ndarray) -> None:
    """A palette png like GTA5's (OpenCV cannot write palette pngs; Pillow can)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.frombytes("P", (label.shape[1], label.shape[0]), label.tobytes())
    palette = np.random.default_rng(1).integers(0, 256, (256, 3), dtype=np.uint8)
    img.putpalette(palette.flatten().tolist())
    img.save(path)


def make_cityscapes(root: Path) -> Path:
    """train: 3 frames in 2 cities, val: 1 frame."""
    frames = {
        "train": ["aachen/aachen_000000_000019", "aachen/aachen_000001_000019",
                  "bochum/bochum_000000_000313"],
        "val": ["frankfurt/frankfurt_000000_000294"],
    }
    for i, (split, names) in enumerate(frames.items()):
        for j, rel in enumerate(names):
            write_image(root / "leftImg8bit" / split / f"{rel}_leftImg8bit.png", seed=10 * i + j)
            write_label(root / "gtFine" / split / f"{rel}_gtFine_labelIds.png",
                        stripe_label(CS_RAW))
    return root


def make_gta5(root: Path) -> Path:
    """00001: palette label; 00002: grey label; 00003: half-size label.
    train.txt lists ids and file names, val.txt an image path."""
    for i in (1, 2, 3):
        write_image(root / "images" / f"{i:05d}.png", seed=i)
    write_palette_label(root / "labels" / "00001.png", stripe_label(CS_RAW))
    write_label(root / "labels" / "00002.png", stripe_label(CS_RAW))
    write_label(root / "labels" / "00003.png", stripe_label(CS_RAW, h=H // 2, w=W // 2))
    (root / "train.txt").write_text("00001\n00002.png\n")
    (root / "val.txt").write_text("images/00003.png\n")
    return root


def make_synthia(root: Path) -> Path:
    """Two frames with 16-bit 3-channel labels: class id in the file's first (R)
    channel, an instance id > 255 in the second (G), zeros in B."""
    for i in range(2):
        name = f"{i:07d}.png"
        write_image(root / "RGB" / name, seed=i)
        lab = np.zeros((H, W, 3), np.uint16)
        lab[:, :, 2] = stripe_label(SYN_RAW, np.uint16)  # cv2 BGR index 2 == file R
        lab[:, :, 1] = 1000 + i
        write_label(root / "GT" / "LABELS" / name, lab)
    return root


DZ_NIGHT = ["train/night/GOPR0351/GOPR0351_frame_000001",
            "train/night/GOPR0351/GOPR0351_frame_000002"]
DZ_DAY = ["train/day/GOPR0345/GOPR0345_frame_000081",
          "train/day/GOPR0345/GOPR0345_frame_000077"]
DZ_TWILIGHT = ["train/twilight/GOPR0348/GOPR0348_frame_000010"]
DZ_VAL = "val/night/GOPR0356/GOPR0356_frame_000321"
DZ_DAY_COLOURS = [(200, 10, 10), (10, 200, 10)]
DZ_NIGHT_COLOURS = [(5, 5, 60), (60, 5, 5)]


def make_darkzurich(root: Path) -> Path:
    """Train lists for day/twilight/night, night->day correspondences (night frame
    i matches day frame i), and one labelled val frame (no val list file)."""
    rgb = root / "rgb_anon"
    for rel, colour in zip(DZ_NIGHT, DZ_NIGHT_COLOURS):
        write_image(rgb / f"{rel}_rgb_anon.png", colour=colour)
    for rel, colour in zip(DZ_DAY, DZ_DAY_COLOURS):
        write_image(rgb / f"{rel}_rgb_anon.png", colour=colour)
    for rel in DZ_TWILIGHT:
        write_image(rgb / f"{rel}_rgb_anon.png", seed=3)
    lists = root / "lists_file_names"
    lists.mkdir(parents=True)
    for name, rels in (("night", DZ_NIGHT), ("day", DZ_DAY), ("twilight", DZ_TWILIGHT)):
        (lists / f"train_{name}_filenames.txt").write_text("\n".join(rels) + "\n")
    corresp = root / "corresp" / "train" / "night"
    corresp.mkdir(parents=True)
    (corresp / "GOPR0351.csv").write_text(
        "".join(f"{n},{d}\n" for n, d in zip(DZ_NIGHT, DZ_DAY))
    )
    write_image(rgb / f"{DZ_VAL}_rgb_anon.png", seed=4)
    write_label(root / "gt" / f"{DZ_VAL}_gt_labelIds.png", stripe_label(DZ_RAW))
    return root


ACDC_FRAMES = {
    ("night", "val"): "GOPR0376/GOPR0376_frame_000851",
    ("fog", "val"): "GOPR0475/GOPR0475_frame_000247",
    ("night", "test"): "GOPR0355/GOPR0355_frame_000138",
}
ACDC_REF_COLOUR = (1, 2, 250)


def make_acdc(root: Path) -> Path:
    """night/val and fog/val labelled with references; night/test unlabelled."""
    for (cond, split), rel in ACDC_FRAMES.items():
        write_image(root / "rgb_anon" / cond / split / f"{rel}_rgb_anon.png", seed=5)
        write_image(root / "rgb_anon" / cond / f"{split}_ref" / f"{rel}_rgb_ref_anon.png",
                    colour=ACDC_REF_COLOUR)
        if split != "test":
            write_label(root / "gt" / cond / split / f"{rel}_gt_labelIds.png",
                        stripe_label(DZ_RAW))
    return root


def make_nighttime_driving(root: Path) -> Path:
    name = "0_frame_0001"
    write_image(root / "leftImg8bit" / "test" / "night" / f"{name}_leftImg8bit.png", seed=6)
    write_label(root / "gtCoarse_daytime_trainvaltest" / "test" / "night"
                / f"{name}_gtCoarse_labelIds.png", stripe_label(DZ_RAW))
    return root


def make_bdd100k(root: Path) -> Path:
    for split, names in (("train", ["0a0a0b1a-7c39d841", "0a0b16e2-93f8c456"]),
                         ("val", ["b1c66a42-6f7d68ca"])):
        for i, name in enumerate(names):
            write_image(root / "images" / "100k" / split / f"{name}.jpg", seed=i)
    return root


def make_camvid(root: Path) -> Path:
    """day_train: 2 labelled frames; dusk_test: 1 frame whose label is withheld."""
    for name in ("0006R0_f00930", "0016E5_00390"):
        write_image(root / "images" / "train" / f"{name}.png", seed=7)
        write_label(root / "labels" / "train" / f"{name}.png", stripe_label(CAMVID_RAW))
    write_image(root / "images" / "test" / "0001TP_008550.png", seed=8)
    splits = root / "splits"
    splits.mkdir(parents=True)
    (splits / "day_train.txt").write_text("train/0006R0_f00930\ntrain/0016E5_00390\n")
    (splits / "dusk_test.txt").write_text("test/0001TP_008550\n")
    return root
