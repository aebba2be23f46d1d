"""Precision variants of an fp32 ONNX, and choosing the one to ship (``--precision best``).

TensorRT 10/11 and ONNX Runtime build whatever precision the graph has, so
``build-engine --precision int8`` on an fp32 file first makes the int8 Q/DQ
file (the backend's flavour) and then builds it. ``best`` builds every
candidate, scores its accuracy against fp32 (mIoU on a labelled set, pixel
agreement with the fp32 predictions always) and its latency on this machine,
and keeps the fastest that passes: int8 is not automatically faster on a CPU
(measured: symmetric TensorRT-style Q/DQ ran 2x slower than fp32 in ONNX
Runtime), so the choice has to be measured, and the table goes into the
manifest.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.bench.latency import measure_latency
from edgeseg.errors import EdgesegError
from edgeseg.export.metadata import read_metadata


def make_variant(src: str | Path, dst: str | Path, precision: str, *, calib: str | None = None,
                 calib_frames: int = 64, calib_every: int = 10, method: str = "minmax",
                 flavour: str = "tensorrt", exclude: Sequence[str] = (),
                 keep_fp32: Sequence[str] = (), cache: str | Path | None = None) -> Path:
    """Write the fp16 or int8 variant of fp32 ``src`` to ``dst`` (``edgeseg quantize``)."""
    if precision == "fp16":
        if calib or exclude or cache:
            raise EdgesegError("--calib/--exclude/--cache apply to --precision int8 only")
        from edgeseg.export.fp16 import convert_fp16

        return convert_fp16(src, dst, keep_fp32=keep_fp32)
    if precision != "int8":
        raise EdgesegError(f"precision {precision!r}: variants are fp16 or int8")
    if keep_fp32:
        raise EdgesegError("--keep-fp32 applies to --precision fp16; use --exclude for int8")
    cached = cache is not None and Path(cache).is_file()
    if not calib and not cached:
        raise EdgesegError("int8 needs calibration frames: --calib VIDEO|NAME:ROOT[:SPLIT] "
                           "(frames of the target domain), or --cache FILE with ranges for "
                           "this model")
    from edgeseg.export.calibration import input_contract, load_frames
    from edgeseg.export.int8 import quantize_int8

    frames = None if cached else load_frames(calib, input_contract(src), calib_frames, calib_every)
    return quantize_int8(src, dst, frames, method=method, flavour=flavour, exclude=exclude,
                         cache=cache, source=calib or "")


# --------------------------------------------------------------- choosing the best precision


@dataclass
class Candidate:
    precision: str
    onnx: str
    latency_ms_p50: float = float("nan")
    latency_ms_mean: float = float("nan")
    agreement: float = float("nan")  # pixel agreement with the fp32 engine's labels
    miou: float | None = None  # on the labelled accuracy set, if it has labels
    miou_drop: float | None = None  # fp32 mIoU - this mIoU, in points
    passed: bool = False
    note: str = ""

    def row(self) -> str:
        miou = "   n/a" if self.miou is None else f"{100 * self.miou:6.2f}"
        drop = "   n/a" if self.miou_drop is None else f"{self.miou_drop:+6.2f}"
        verdict = "pass" if self.passed else "FAIL"
        return (f"{self.precision:6s} {self.latency_ms_p50:9.2f} {self.latency_ms_mean:9.2f} "
                f"{100 * self.agreement:9.3f} {miou} {drop}  {verdict} {self.note}")


TABLE_HEADER = "precision   p50 ms   mean ms  agree %   mIoU   drop  verdict"


def scoring_frames(spec: str | None, count: int,
                  fallback_size: tuple[int, int]) -> tuple[list[np.ndarray], list[Any]]:
    """(RGB images, labels or None) to score models on: a dataset spec (labelled or not),
    a video (pseudo-labelled by the reference), or synthetic scenes when nothing is given
    (at ``fallback_size``, height and width)."""
    if spec and Path(spec).is_file():
        from edgeseg.export.calibration import read_video_frames

        images = list(read_video_frames(Path(spec), count, every=10))
        return images, [None] * len(images)
    if spec:
        from edgeseg.data import spread_samples

        samples = spread_samples(spec, count)
        return [s["image"] for s in samples], [s.get("label") for s in samples]
    from edgeseg.export.parity import sample_frames

    frames = sample_frames(None, fallback_size, count)
    return [np.ascontiguousarray(f[..., ::-1]) for f in frames], [None] * len(frames)


def _score(engine: Path, images: list[np.ndarray], labels: list[Any],
           reference: list[np.ndarray] | None, iterations: int
           ) -> tuple[Candidate, list[np.ndarray]]:
    from edgeseg.metrics import ConfusionMatrix
    from edgeseg.runtime.predictor import BackendPredictor, load_backend

    with contextlib.closing(load_backend(engine)) as backend:
        predict = BackendPredictor(backend)
        preds = [predict(img) for img in images]
        p50, mean = measure_latency(predict, images[0], iterations=iterations)
        space = predict.meta.label_space
    cand = Candidate(precision="", onnx="", latency_ms_p50=p50, latency_ms_mean=mean)
    if reference is not None:
        same = sum(int((a == b).sum()) for a, b in zip(preds, reference))
        cand.agreement = same / sum(p.size for p in preds)
    else:
        cand.agreement = 1.0
    if all(lab is not None for lab in labels):
        from edgeseg.labels import get_label_space

        n = get_label_space(space).num_classes
        cm = ConfusionMatrix(n)
        for p, lab in zip(preds, labels):
            cm.update(p, lab)
        cand.miou = cm.miou()
    return cand, preds


def choose_precision(fp32_onnx: str | Path, out: str | Path, profile: Any, command: str,
                     candidates: Sequence[str] | None = None) -> Any:
    """Build every candidate precision, keep the fastest that passes the accuracy gate.

    Variant ONNX files are kept beside ``out`` (``<stem>.fp16.onnx``,
    ``<stem>.int8.onnx``); the winner is built to ``out`` and its manifest
    carries the whole comparison table in ``selection``.
    """
    from edgeseg.export.build_engine import build_engine, resolve_backend

    fp32_onnx, out = Path(fp32_onnx), Path(out)
    meta = read_metadata(fp32_onnx)
    if meta.precision != "fp32":
        raise EdgesegError(f"{fp32_onnx}: --precision best starts from the fp32 ONNX "
                           f"(this file is {meta.precision})")
    backend = resolve_backend(profile.backend)
    if candidates is None:
        # ONNX Runtime's CPU kernels run fp16 through casts (slower than fp32): skip it there.
        candidates = ["fp32", "int8"] if backend == "onnxruntime" else ["fp32", "fp16", "int8"]
    cal, gate = profile.calibration, profile.parity
    flavour = cal.flavour or backend
    spec = meta.input
    hw = spec.shape[1:3] if spec.format == "uint8-nhwc-bgr" else spec.shape[2:4]
    fallback = (int(hw[0] or 256), int(hw[1] or 512))
    images, labels = scoring_frames(gate.data or cal.data, gate.frames, fallback)
    stem = out.name.split(".")[0]
    results: list[Candidate] = []
    reference: list[np.ndarray] | None = None
    print(f"choosing the precision on this machine ({backend}), accuracy on "
          f"{gate.data or cal.data or 'synthetic scenes'}:\n  {TABLE_HEADER}")
    with tempfile.TemporaryDirectory(prefix="edgeseg-best-") as tmp:
        for precision in candidates:
            onnx_path = fp32_onnx if precision == "fp32" else out.with_name(
                f"{stem}.{precision}.onnx")
            note = ""
            try:
                if precision != "fp32":
                    make_variant(fp32_onnx, onnx_path, precision, calib=cal.data,
                                 calib_frames=cal.frames, method=cal.method, flavour=flavour,
                                 cache=out.with_name(f"{stem}.calib.json") if precision == "int8"
                                 else None)
                suffix = ".ort.onnx" if backend == "onnxruntime" else ".engine"
                engine = Path(tmp) / f"{precision}{suffix}"
                build_engine(onnx_path, engine, replace(profile, precision=None), command)
                cand, preds = _score(engine, images, labels, reference, gate.iterations)
            except EdgesegError as exc:
                cand, preds, note = Candidate(precision, str(onnx_path)), None, f"({exc})"
            cand.precision, cand.onnx, cand.note = precision, str(onnx_path), note
            if precision == "fp32":
                if preds is None:
                    raise EdgesegError(f"{fp32_onnx}: the fp32 reference failed to build: {note}")
                reference = preds
                cand.passed = True
            elif preds is not None:
                base = results[0].miou
                if cand.miou is not None and base is not None:
                    cand.miou_drop = 100 * (base - cand.miou)
                cand.passed = cand.agreement >= gate.min_agreement and (
                    cand.miou_drop is None or cand.miou_drop <= gate.max_miou_drop)
            cand.note = cand.note[:300]
            results.append(cand)
            print(f"  {cand.row()}", flush=True)
    winner = min((c for c in results if c.passed), key=lambda c: c.latency_ms_p50)
    print(f"best on this machine: {winner.precision} ({winner.latency_ms_p50:.2f} ms p50)")
    manifest = build_engine(winner.onnx, out, replace(profile, precision=None), command,
                            selection=[_json_safe(asdict(c)) for c in results])
    return manifest



def _json_safe(row: dict[str, Any]) -> dict[str, Any]:
    """NaN (a candidate that failed before it was measured) becomes null in the manifest."""
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
