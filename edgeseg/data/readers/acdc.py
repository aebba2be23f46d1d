"""ACDC (Sakaridis et al.): fog/night/rain/snow frames with labelIds and daytime
reference frames of the same places."""

from __future__ import annotations

import re
from pathlib import Path

from edgeseg.data.base import DatasetError
from edgeseg.data.readers._common import PairRule, Reader
from edgeseg.labels import CITYSCAPES19, CITYSCAPES_ID_TO_TRAINID, CITYSCAPES_MAX_ID

CONDITIONS = ("fog", "night", "rain", "snow")
SPLITS = ("train", "val", "test")


class ACDCDataset(Reader):
    """An ACDC split, optionally of one condition.

    The split is ``<cond>-<split>`` (``night-val``, ``fog-train``; ``/`` or ``_``
    also separate) or a bare ``<split>`` for all conditions present. ':' cannot
    be used because it separates the parts of a dataset spec. Each item's
    ``extras["reference"]`` is the daytime reference frame; it is loaded into the
    sample as ``reference`` only with ``load_reference=True``. The test split's
    labels are withheld, so it loads unlabelled.
    """

    label_space = CITYSCAPES19
    id_map = CITYSCAPES_ID_TO_TRAINID
    max_raw_id = CITYSCAPES_MAX_ID
    layout = (
        "ROOT/rgb_anon/<cond>/<split>/<seq>/<frame>_rgb_anon.png\n"
        "ROOT/gt/<cond>/<split>/<seq>/<frame>_gt_labelIds.png\n"
        "ROOT/rgb_anon/<cond>/<split>_ref/<seq>/<frame>_rgb_ref_anon.png  (reference)\n"
        f"cond: {', '.join(CONDITIONS)}; split: {', '.join(SPLITS)}; "
        "spec split '<cond>-<split>' (e.g. acdc:ROOT:night-val) or '<split>' for all"
    )

    def __init__(self, root: str | Path, split: str | None = None,
                 load_reference: bool = False) -> None:
        super().__init__(root, split)
        parts = re.split(r"[-/_]", split or "")
        if len(parts) == 1 and parts[0] in SPLITS:
            conds, which = None, parts[0]
        elif len(parts) == 2 and parts[0] in CONDITIONS and parts[1] in SPLITS:
            conds, which = [parts[0]], parts[1]
        else:
            raise DatasetError(
                f"acdc split {split!r}: expected '<cond>-<split>' or '<split>' with cond in "
                f"{CONDITIONS} and split in {SPLITS}, e.g. acdc:{self.root}:night-val"
            )
        rgb = self.require_dir(self.root / "rgb_anon", "image folder")
        if conds is None:
            conds = [c for c in CONDITIONS if (rgb / c / which).is_dir()]
            if not conds:
                raise self.missing(rgb / "<cond>" / which, f"image folder of split {which!r}")
        items = []
        for cond in conds:
            image_root = self.require_dir(rgb / cond / which, f"image folder of {cond}-{which}")
            rule = PairRule(
                image_root, "_rgb_anon.png",
                self.root / "gt" / cond / which, "_gt_labelIds.png",
                {"reference": (rgb / cond / f"{which}_ref", "_rgb_ref_anon.png")},
            )
            items += rule.scan()
        if load_reference:
            self.extra_keys = ("reference",)
        self.finish(items, rgb / conds[0] / which)
