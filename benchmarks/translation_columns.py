"""The same source frames translated by several runs, side by side: source | run 1 | run 2 ...

    python benchmarks/translation_columns.py OUT.png \\
        --column full=runs/sait_synth_full/round1/translated \\
        --column "SPADE off=runs/sait_synth_spade_off/round1/translated" --frames 4

Each column is a folder written by ``edgeseg derive translate``: the frames the segmenter
of that run was trained on. Its manifest names the source dataset and the frames, so the
first column is the untranslated source frame. Why: ablation rows differ in what the
translator keeps of the scene (objects, layout, colours). The mIoU table says how much they
differ, and this grid shows where.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from edgeseg.data import open_dataset
from edgeseg.fileio import write_image
from edgeseg.viz import side_by_side, text_bar


def translated_frame(folder: Path, name: str) -> np.ndarray:
    """``name``'s translation (RGB) in a derive folder of any output layout."""
    found = sorted(folder.glob(f"leftImg8bit/*/*/{name}_leftImg8bit.png")) or sorted(
        folder.glob(f"images/*/{name}.png"))
    if not found:
        raise SystemExit(f"{folder}: no translation of {name}; is it an `edgeseg derive "
                         "translate` output of the same source dataset?")
    return cv2.cvtColor(cv2.imread(str(found[0])), cv2.COLOR_BGR2RGB)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="PNG to write")
    parser.add_argument("--column", action="append", required=True, metavar="TITLE=FOLDER",
                        help="an `edgeseg derive translate` folder and its column title")
    parser.add_argument("--frames", type=int, default=4, help="rows, spread over the set")
    args = parser.parse_args()
    columns = [tuple(c.split("=", 1)) for c in args.column]
    if any(len(c) != 2 for c in columns):
        raise SystemExit("--column takes TITLE=FOLDER")
    manifest = json.loads((Path(columns[0][1]) / "manifest.json").read_text())
    source = open_dataset(manifest["data"])
    picks = np.linspace(0, len(source) - 1, args.frames).round().astype(int)
    rows = []
    for i in picks:
        sample = source[int(i)]
        cells = [sample["image"], *(translated_frame(Path(f), sample["name"]) for _, f in columns)]
        rows.append(side_by_side(*cells, gap=4))
    grid = np.concatenate([np.concatenate([r, np.full((4, r.shape[1], 3), 255, np.uint8)])
                           for r in rows])
    width = source[int(picks[0])]["image"].shape[1]
    header = side_by_side(*(text_bar(t, width) for t in ["source", *(t for t, _ in columns)]),
                          gap=4)
    write_image(args.out, np.concatenate([header, grid]))
    print(f"wrote {args.out}: {len(picks)} frames x {len(columns)} runs")


if __name__ == "__main__":
    main()
