"""Writing synthetic data sets in the layout `dataset` reads (see `dataset.LAYOUT`).

Train scenes go round-robin to the requested domains, so day_train and
night_train hold different scenes (unpaired, as in real adaptation data)
unless ``paired_train``; every val scene is rendered in every domain, so the
gap between domains is measured on identical scenes. Every file is written
atomically.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from edgeseg.data.synth.generate import render_pair, render_scene
from edgeseg.data.synth.video import write_video
from edgeseg.fileio import write_image, write_text

VERSION = 1
Progress = Callable[[int], object]


def scene_id(index: int) -> str:
    return f"s{index:06d}"


def pair_id(index: int) -> str:
    return f"p{index:06d}"


def _noop(_: int) -> None:
    return None


def _write_split(root: Path, name: str, lines: list[str]) -> None:
    write_text(root / "splits" / f"{name}.txt", "".join(f"{line}\n" for line in lines))


def write_scenes(root: Path, train: int, val: int, domains: Sequence[str],
                 size: tuple[int, int], style: str, seed: int, paired_train: bool = False,
                 progress: Progress = _noop) -> dict[str, int]:
    """Scenes 0..train-1 for training, then ``val`` scenes; returns frames per split."""
    splits: dict[str, list[str]] = {}
    for index in range(train + val):
        part = "train" if index < train else "val"
        chosen = list(domains) if part == "val" or paired_train else [domains[index % len(domains)]]
        scene = render_scene(seed, index, chosen, size, style)
        sid = scene_id(index)
        write_image(root / "labels" / f"{sid}.png", scene.labels, rgb=False)
        for domain in chosen:
            write_image(root / "images" / domain / f"{sid}.png", scene.images[domain])
            splits.setdefault(f"{domain}_{part}", []).append(f"{domain}/{sid}")
        progress(1)
    for name, lines in splits.items():
        _write_split(root, name, lines)
    return {name: len(lines) for name, lines in sorted(splits.items())}


def write_pairs(root: Path, count: int, size: tuple[int, int], style: str, seed: int,
                progress: Progress = _noop) -> int:
    """Day/night pairs with a small camera offset, and ``splits/pairs.txt``."""
    ids = []
    for index in range(count):
        pair = render_pair(seed, index, size, style)
        pid = pair_id(index)
        write_image(root / "pairs" / "day" / f"{pid}.png", pair.day)
        write_image(root / "pairs" / "night" / f"{pid}.png", pair.night)
        write_image(root / "pairs" / "labels" / f"{pid}.png", pair.labels, rgb=False)
        ids.append(pid)
        progress(1)
    if ids:
        _write_split(root, "pairs", ids)
    return len(ids)


def write_videos(root: Path, count: int, frames: int, domain: str, size: tuple[int, int],
                 style: str, seed: int, fps: float, progress: Progress = _noop) -> list[str]:
    """``count`` videos of ``frames`` frames; returns their names."""
    names = []
    for index in range(count):
        name = f"{domain}_{index:03d}"
        write_video(root, name, domain, frames, size, seed, style, fps, index,
                    progress=progress)
        names.append(name)
    return names
