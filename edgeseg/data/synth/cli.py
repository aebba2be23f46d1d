"""``edgeseg synth``: write procedural driving scenes, day/night pairs and videos."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tqdm import tqdm

from edgeseg.argtypes import non_negative_int, parse_wxh_16
from edgeseg.data.synth.dataset import LAYOUT
from edgeseg.data.synth.domains import DOMAINS
from edgeseg.data.synth.generate import DEFAULT_SIZE, keep_freed_memory
from edgeseg.data.synth.render import STYLES
from edgeseg.data.synth.video import DEFAULT_FPS
from edgeseg.data.synth.writer import VERSION, write_pairs, write_scenes, write_videos
from edgeseg.fileio import write_json


def _domains(text: str) -> tuple[str, ...]:
    names = tuple(d.strip() for d in text.split(",") if d.strip())
    bad = [d for d in names if d not in DOMAINS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown domain(s) {', '.join(bad) or text!r}; choose from {','.join(DOMAINS)}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"domain listed twice in {text!r}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Render procedural street scenes with pixel-exact Cityscapes-19 labels in several "
        "appearance domains (the same scenes, so the domain gap is measurable)."
    )
    parser.epilog = f"Layout written:\n{LAYOUT}"
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--out", type=Path, required=True, help="output root folder")
    parser.add_argument("--train", type=non_negative_int, default=100,
                        help="training scenes, spread round-robin over the domains (default 100)")
    parser.add_argument("--val", type=non_negative_int, default=20,
                        help="validation scenes, each rendered in every domain (default 20)")
    parser.add_argument("--size", type=parse_wxh_16, default=DEFAULT_SIZE, metavar="WxH",
                        help="frame size (default 512x256)")
    parser.add_argument("--domains", type=_domains, default=("day", "night"),
                        help=f"comma-separated, of {','.join(DOMAINS)} (default day,night)")
    parser.add_argument("--style", choices=STYLES, default="textured",
                        help="textured (noise, bricks, shading) or flat game-like colours")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--paired-train", action="store_true",
                        help="render every training scene in every domain")
    parser.add_argument("--pairs", type=non_negative_int, default=0,
                        help="coarsely aligned day/night pairs to write (default 0)")
    parser.add_argument("--videos", type=non_negative_int, default=0, help="videos to write (default 0)")
    parser.add_argument("--video-frames", type=non_negative_int, default=100, help="frames per video")
    parser.add_argument("--video-domain", choices=DOMAINS, default="night")
    parser.add_argument("--fps", type=float, default=DEFAULT_FPS, help="video frame rate")


def run(args: argparse.Namespace) -> int:
    if args.fps <= 0:
        print(f"edgeseg synth: --fps must be positive, got {args.fps}", file=sys.stderr)
        return 2
    root: Path = args.out
    root.mkdir(parents=True, exist_ok=True)
    keep_freed_memory()
    total = args.train + args.val + args.pairs + args.videos * args.video_frames
    start = time.perf_counter()
    with tqdm(total=total, unit="frame", desc="synth", disable=total == 0) as bar:
        splits = write_scenes(root, args.train, args.val, args.domains, args.size, args.style,
                              args.seed, args.paired_train, bar.update)
        pairs = write_pairs(root, args.pairs, args.size, args.style, args.seed, bar.update)
        videos = write_videos(root, args.videos, args.video_frames, args.video_domain,
                              args.size, args.style, args.seed, args.fps, bar.update)
    seconds = time.perf_counter() - start
    write_json(root / "meta.json", {
        "generator": "edgeseg.data.synth", "version": VERSION, "seed": args.seed,
        "size": list(args.size), "style": args.style, "domains": list(args.domains),
        "paired_train": args.paired_train,
        "counts": {"train_scenes": args.train, "val_scenes": args.val, "splits": splits,
                   "pairs": pairs, "videos": len(videos), "video_frames": args.video_frames},
        "videos": videos,
    })
    print(f"wrote {root} in {seconds:.1f} s ({args.size[0]}x{args.size[1]}, {args.style}, "
          f"seed {args.seed})")
    for name, count in splits.items():
        print(f"  splits/{name}.txt: {count} frames")
    if pairs:
        print(f"  pairs/: {pairs} day/night pairs (splits/pairs.txt)")
    for name in videos:
        print(f"  videos/{name}.mp4: {args.video_frames} frames at {args.fps:g} fps "
              f"({args.video_domain}), labels in videos/{name}_labels/")
    print(f"read with: synthetic:{root}:<split>" + (f", synthetic_pairs:{root}" if pairs else ""))
    return 0
