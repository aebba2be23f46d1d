"""Record a translator's mean-luma gate in its ONNX file, so the gate travels with it.

A dusk->day translator costs day frames accuracy, so it is deployed behind a mean-luma gate
(``edgeseg run --translate-below``). The threshold belongs to the translator (it was picked
for the footage that translator was trained on), so it is stored in the file's metadata
(``edgeseg.extra.translate_below``) and applied by ``run``, ``eval`` and ``bench``'s chains
whenever no flag overrides it; ``quantize`` and ``build-engine`` carry it into every variant.
"""

from __future__ import annotations

from pathlib import Path

from edgeseg.contract.metadata import TRANSLATE_BELOW, load_onnx, metadata_of, set_metadata
from edgeseg.errors import EdgesegError
from edgeseg.export.fp16 import save_model
from edgeseg.export.onnx_export import IMAGE_NETWORKS


def check_translate_below(below: float, path: str | Path) -> float:
    """``below`` rounded to 0.01 as it is recorded; a value outside (0, 256] is refused."""
    if not 0 < below <= 256:
        raise EdgesegError(f"{path}: translate-below luma {below:g}: use a value in (0, 256]")
    return round(float(below), 2)


def record_translate_below(path: str | Path, below: float) -> float:
    """Write ``below`` (rounded to 0.01) into the translator or relighting ONNX ``path``,
    atomically; returns the recorded value. A segmenter is refused: it has no gate."""
    value = check_translate_below(below, path)
    proto = load_onnx(path)
    meta = metadata_of(proto, str(path))
    if meta.network not in IMAGE_NETWORKS.values():
        raise EdgesegError(f"{path}: a {meta.network}, not a translator or relighting net; "
                           "the luma gate belongs to the image network run before it (export "
                           "one with `edgeseg export CKPT --network NAME`)")
    meta.extra = {**meta.extra, TRANSLATE_BELOW: value}
    set_metadata(proto, meta)
    save_model(proto, path)
    return value
