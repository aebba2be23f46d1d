"""GTA5 (Playing for Data): Cityscapes labelIds -> Cityscapes-19 trainIds."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edgeseg.data.base import DatasetError
from edgeseg.data.readers._common import Item, PairRule, Reader
from edgeseg.labels import CITYSCAPES19, CITYSCAPES_ID_TO_TRAINID, CITYSCAPES_MAX_ID

#: relative aspect-ratio difference still treated as "the same frame, other size"
_ASPECT_TOLERANCE = 0.01


class GTA5Dataset(Reader):
    """GTA5 images and palette label pngs; split lists are optional."""

    label_space = CITYSCAPES19
    id_map = CITYSCAPES_ID_TO_TRAINID
    max_raw_id = CITYSCAPES_MAX_ID
    labels_required = True
    layout = (
        "ROOT/images/<id>.png\n"
        "ROOT/labels/<id>.png          (Cityscapes labelIds, palette or grey png)\n"
        "ROOT/<split>.txt              (optional: one id or file name per line;\n"
        "                               without a split every image is used)"
    )

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        super().__init__(root, split)
        rule = PairRule(self.require_dir(self.root / "images", "image folder"), ".png",
                        self.require_dir(self.root / "labels", "label folder"), ".png")
        self.finish(*self.id_list_items(rule))

    def fit_label(self, raw: np.ndarray, image: np.ndarray, item: Item) -> np.ndarray:
        """A few GTA5 labels are stored at another resolution than their frame:
        resize those (nearest, pixel-centre aligned) when the aspect ratio
        agrees, else fail."""
        (ih, iw), (lh, lw) = image.shape[:2], raw.shape[:2]
        if (ih, iw) == (lh, lw):
            return raw
        if abs(lw / lh - iw / ih) > _ASPECT_TOLERANCE * (iw / ih):
            raise DatasetError(
                f"{item.label}: label size {lw}x{lh} has another aspect ratio than image "
                f"{item.image} size {iw}x{ih}; the files do not belong together"
            )
        return cv2.resize(raw, (iw, ih), interpolation=cv2.INTER_NEAREST_EXACT)
