"""SYNTHIA-RAND-CITYSCAPES: 16-bit multi-channel labels -> Cityscapes-19 trainIds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeseg.data.readers._common import PairRule, Reader, read_palette_aware
from edgeseg.labels import CITYSCAPES19, SYNTHIA_ID_TO_TRAINID, SYNTHIA_MAX_ID


class SynthiaDataset(Reader):
    """SYNTHIA-RAND-CITYSCAPES frames; labels come out in Cityscapes trainIds
    (convert to synthia16/13 with ``open_dataset(..., label_space=...)``)."""

    label_space = CITYSCAPES19
    id_map = SYNTHIA_ID_TO_TRAINID
    max_raw_id = SYNTHIA_MAX_ID
    labels_required = True
    layout = (
        "ROOT/RGB/<id>.png\n"
        "ROOT/GT/LABELS/<id>.png       (16-bit, 3 channels; class id in the first\n"
        "                               channel, instance id in the second)\n"
        "ROOT/<split>.txt              (optional: one id or file name per line)"
    )

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        super().__init__(root, split)
        rule = PairRule(self.require_dir(self.root / "RGB", "image folder"), ".png",
                        self.require_dir(self.root / "GT" / "LABELS", "label folder"), ".png")
        self.finish(*self.id_list_items(rule))

    def read_raw_label(self, path: Path) -> np.ndarray:
        """The class channel of the LABELS png.

        SYNTHIA writes the class id into the file's first (R) channel, which is
        what loaders reading in RGB order take as ``[..., 0]``. OpenCV returns
        channels in BGR order, so the same channel is index 2 here. Single-channel
        files (converted releases) are used as they are.
        """
        raw = read_palette_aware(path, unchanged=True)
        return raw[:, :, 2] if raw.ndim == 3 else raw
