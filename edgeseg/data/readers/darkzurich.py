"""Dark Zurich (Sakaridis et al.): day/twilight/night frames, night val labels and
GPS-matched night->day correspondences."""

from __future__ import annotations

import re
from pathlib import Path

from edgeseg.data.base import DatasetError
from edgeseg.data.readers._common import Item, PairRule, Reader, strip_suffixes
from edgeseg.labels import CITYSCAPES19, CITYSCAPES_ID_TO_TRAINID, CITYSCAPES_MAX_ID

_IMAGE_SUFFIX = "_rgb_anon.png"
_LABEL_SUFFIX = "_gt_labelIds.png"
_LAYOUT = (
    "ROOT/rgb_anon/<split>/<cond>/<seq>/<frame>_rgb_anon.png\n"
    "ROOT/gt/<split>/<cond>/<seq>/<frame>_gt_labelIds.png     (val only)\n"
    "ROOT/lists_file_names/<name>_filenames.txt  lines like train/night/GOPR0351/"
    "GOPR0351_frame_000159\n"
    "      (relative to rgb_anon, without _rgb_anon.png)\n"
    "ROOT/corresp/train/<cond>/**/*.csv|*.txt   lines '<night>,<day>' in the same form\n"
    "      (the matched daytime frame of each night frame)\n"
    "the train, val and test archives may be unpacked into one ROOT"
)


def _rule(root: Path) -> PairRule:
    return PairRule(root / "rgb_anon", _IMAGE_SUFFIX, root / "gt", _LABEL_SUFFIX)


def _rel(entry: str) -> str:
    return strip_suffixes(entry.strip().strip("/"), (_IMAGE_SUFFIX, ".png"))


class DarkZurichDataset(Reader):
    """One Dark Zurich split: a list ``lists_file_names/<split>_filenames.txt``
    (train_day, train_twilight, train_night, val, val_ref, test, ...) or, for
    val/test without a list, every frame under ``rgb_anon/<split>``. Train splits
    have no gt and load unlabelled."""

    label_space = CITYSCAPES19
    id_map = CITYSCAPES_ID_TO_TRAINID
    max_raw_id = CITYSCAPES_MAX_ID
    layout = _LAYOUT + "\nsplits: train_day, train_twilight, train_night, val, test, ..."

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        super().__init__(root, split)
        lists = self.root / "lists_file_names"
        if split is None:
            known = sorted(p.name[: -len("_filenames.txt")] for p in lists.glob("*_filenames.txt"))
            raise DatasetError(
                f"{self.root}: darkzurich needs a split (available: {known or 'none'}). "
                f"Expected layout:\n{self.layout}"
            )
        rule = _rule(self.root)
        list_file = lists / f"{split}_filenames.txt"
        folder = rule.image_root / split
        if not list_file.is_file() and folder.is_dir():
            scan = PairRule(folder, _IMAGE_SUFFIX, rule.label_root / split, _LABEL_SUFFIX)
            self.finish(scan.scan(), folder)
            return
        self.finish([rule.item(_rel(ln)) for ln in self.read_list(list_file)], list_file)


class DarkZurichPairs(Reader):
    """Night (or twilight) training frames with their matched daytime frame.

    Samples are ``{"image": day, "night": night, "label": None, "name": night
    frame}``: the day frame is the easy view a teacher predicts on, the night
    frame the one to adapt to. The two are only roughly aligned (GPS match), so
    apply the same geometry to both but do not expect pixel correspondence.
    """

    label_space = CITYSCAPES19
    extra_keys = ("night",)
    layout = _LAYOUT + "\nsplit: the condition paired with day, night (default) or twilight"

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        super().__init__(root, split or "night")
        corresp = self.require_dir(
            self.root / "corresp" / "train" / self.split,
            f"correspondence folder for {self.split!r} frames",
        )
        files = sorted(p for p in corresp.rglob("*") if p.suffix in (".csv", ".txt"))
        if not files:
            raise self.missing(corresp / "*.csv", "correspondence file")
        rgb = self.root / "rgb_anon"
        items = []
        for path in files:
            for lineno, line in enumerate(path.read_text().splitlines(), 1):
                if not line.strip() or line.startswith("#"):
                    continue
                fields = [f for f in re.split(r"[,\s]+", line.strip()) if f]
                if len(fields) != 2:
                    raise DatasetError(
                        f"{path}:{lineno}: expected '<night frame>,<day frame>', got {line!r}"
                    )
                night, day = (_rel(f) for f in fields)
                items.append(Item(Path(night).name, rgb / f"{day}{_IMAGE_SUFFIX}", None,
                                  {"night": rgb / f"{night}{_IMAGE_SUFFIX}"}))
        self.finish(items, corresp)
