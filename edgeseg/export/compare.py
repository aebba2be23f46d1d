"""``edgeseg compare A B [--data SPEC]``: two of checkpoint / ONNX / engine, segmentation-aware.

Runs both through polygraphy's Comparator (OnnxrtRunner for ONNX files and
ONNX Runtime engines, TrtRunner for TensorRT plans where TensorRT exists, a
small runner around the PyTorch predictor for checkpoints) and compares with
a segmentation compare function: pixel agreement, agreement inside a band
around object boundaries (where quantisation errors show first), and — with
a labelled ``--data`` — mIoU and per-class IoU deltas.
"""

from __future__ import annotations

import argparse
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgeseg.argtypes import Device, parse_device, positive_int, torch_device
from edgeseg.errors import EdgesegError
from edgeseg.labels import get_label_space
from edgeseg.metrics import ConfusionMatrix, boundary_agreement, compare_summaries

INPUT = "frame"


def _labels(output: np.ndarray) -> np.ndarray:
    """(1, H, W) labels, or (1, C, H, W) logits/probs -> (H, W) class ids."""
    out = np.asarray(output)[0]
    return out.argmax(0).astype(np.uint8) if out.ndim == 3 else out.astype(np.uint8)


def _model_io(path: Path, device: Device) -> tuple[str, tuple[int, int] | None, str, str]:
    """(label space, fixed (H, W) or None, output name, kind) of any model file."""
    if path.suffix in (".pt", ".pth", ".ckpt"):
        from edgeseg.train.checkpoint import load_checkpoint

        return load_checkpoint(path)["label_space"], None, "labels", "checkpoint"
    from edgeseg.runtime.predictor import BackendPredictor, device_options, load_backend

    backend = load_backend(path, **device_options(path, device))
    try:
        pred = BackendPredictor(backend)
        if backend.input_spec.format != "uint8-nhwc-bgr":
            raise EdgesegError(f"{path}: compare takes uint8-nhwc-bgr models (export default)")
        kind = "tensorrt" if backend.manifest and backend.manifest.backend == "tensorrt" else "onnx"
        return pred.meta.label_space, pred.size, backend.output_spec.name, kind
    finally:
        backend.close()


def runner_providers(path: Path, device: Device) -> list[Any]:
    """polygraphy's ONNX Runtime providers for ``path`` on ``device`` (as `edgeseg run`)."""
    from edgeseg.runtime.predictor import device_options

    if "providers" in device_options(path, device):
        return [("CUDAExecutionProvider", {"device_id": device.index}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _runner(path: Path, kind: str, output: str, device: Device) -> Any:
    from polygraphy.backend.base import BaseRunner
    from polygraphy.common import TensorMetadata

    if kind == "onnx":
        from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

        return OnnxrtRunner(SessionFromOnnx(str(path), providers=runner_providers(path, device)),
                            name=path.name)
    if kind == "tensorrt":
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        from edgeseg.runtime.backends.cuda_memory import get_api

        get_api().set_device(device.index)  # the plan deserialises on the current GPU
        return TrtRunner(EngineFromBytes(path.read_bytes()), name=path.name)
    torch_dev = torch_device(device)

    class CheckpointRunner(BaseRunner):
        """The PyTorch segmenter on uint8 BGR frames, with the same output name."""

        def activate_impl(self) -> None:
            from edgeseg.train.predict import TorchPredictor

            self.predict, _ = TorchPredictor.from_checkpoint(str(path), torch_dev)

        def get_input_metadata_impl(self) -> Any:
            return TensorMetadata().add(INPUT, np.uint8, (1, -1, -1, 3))

        def infer_impl(self, feed_dict: dict) -> OrderedDict:
            start = time.perf_counter()
            frame = feed_dict[INPUT][0]
            labels = self.predict(np.ascontiguousarray(frame[..., ::-1]))[None]
            self.inference_time = time.perf_counter() - start
            return OrderedDict({output: labels})

        def deactivate_impl(self) -> None:
            del self.predict

    return CheckpointRunner(name=path.name)


class SegmentationCompare:
    """polygraphy compare_func: pixel and boundary-band agreement, and IoU against labels."""

    def __init__(self, labels: list[np.ndarray | None], num_classes: int, min_agreement: float,
                 band: int = 3) -> None:
        self.labels, self.min_agreement, self.band = labels, min_agreement, band
        self.index = 0
        self.same = self.total = 0
        self.boundary: list[float] = []
        self.cms = [ConfusionMatrix(num_classes), ConfusionMatrix(num_classes)]

    def __call__(self, result0: Any, result1: Any) -> OrderedDict:
        verdict = OrderedDict()
        gt = self.labels[self.index] if self.index < len(self.labels) else None
        self.index += 1
        for name in result0.keys() & result1.keys():
            a, b = _labels(result0[name]), _labels(result1[name])
            same = int((a == b).sum())
            self.same += same
            self.total += a.size
            band = boundary_agreement(a, b, a if gt is None else gt, width=self.band)
            if band == band:  # nan: no boundary in this frame
                self.boundary.append(band)
            if gt is not None:
                self.cms[0].update(a, gt)
                self.cms[1].update(b, gt)
            verdict[name] = same / a.size >= self.min_agreement
        return verdict

    @property
    def agreement(self) -> float:
        return self.same / max(self.total, 1)


def compare_models(a: str | Path, b: str | Path, data: str | None = None, frames: int = 16,
                   min_agreement: float = 0.99, device: Device | str = "cpu") -> dict[str, Any]:
    """Compare two models on the same frames; returns a JSON-friendly summary.

    ``device`` (``cpu``, ``cuda[:N]``, ``auto``) places both models as ``--device`` does.
    """
    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.WARNING

    a, b = Path(a), Path(b)
    dev = device if isinstance(device, Device) else parse_device(device)
    (space_a, size_a, out_a, kind_a), (space_b, size_b, out_b, kind_b) = (
        _model_io(a, dev), _model_io(b, dev))
    if space_a != space_b:
        raise EdgesegError(f"{a} predicts {space_a}, {b} predicts {space_b}: not comparable")
    if size_a and size_b and size_a != size_b:
        raise EdgesegError(f"{a} takes {size_a[1]}x{size_a[0]} frames, {b} {size_b[1]}x"
                           f"{size_b[0]}: export both at the same size")
    size = size_a or size_b
    outputs = {o for o, k in ((out_a, kind_a), (out_b, kind_b)) if k != "checkpoint"}
    if len(outputs) > 1:
        raise EdgesegError(f"{a} outputs '{out_a}', {b} outputs '{out_b}': compare needs the same "
                           "output (export both with the same --output-kind)")
    output = outputs.pop() if outputs else "labels"
    images, labels = _frames(data, frames, size)
    feeds = [OrderedDict({INPUT: np.ascontiguousarray(img[..., ::-1])[None]}) for img in images]
    runners = [_runner(a, kind_a, output, dev), _runner(b, kind_b, output, dev)]
    results = Comparator.run(runners, data_loader=feeds)
    space = get_label_space(space_a)
    func = SegmentationCompare(labels, space.num_classes, min_agreement)
    passed = bool(Comparator.compare_accuracy(results, compare_func=func))
    summary: dict[str, Any] = {
        "a": str(a), "b": str(b), "frames": len(images), "data": data or "synthetic scenes",
        "pixel_agreement": func.agreement,
        "boundary_agreement": float(np.mean(func.boundary)) if func.boundary else None,
        "passed": passed, "min_agreement": min_agreement,
    }
    if any(lab is not None for lab in labels):
        ma, mb = (cm.summary(space.names) for cm in func.cms)
        summary.update(miou_a=ma.miou, miou_b=mb.miou, per_class_a=ma.per_class,
                       per_class_b=mb.per_class, table=compare_summaries(ma, mb, a.name, b.name))
    return summary


def _frames(data: str | None, count: int, size: tuple[int, int] | None
            ) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """RGB frames (resized to the models' input size) and labels resized alike; ``data``
    may be a dataset spec, a video, or None for synthetic scenes."""
    from edgeseg.export.variants import scoring_frames

    images, labels = scoring_frames(data, count, size or (256, 512))
    if size is None:
        return images, labels
    h, w = size
    images = [cv2.resize(i, (w, h), interpolation=cv2.INTER_LINEAR) for i in images]
    labels = [None if lab is None else
              cv2.resize(lab, (w, h), interpolation=cv2.INTER_NEAREST_EXACT) for lab in labels]
    return images, labels


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", help="checkpoint (.pt), ONNX file or engine")
    parser.add_argument("b", help="checkpoint (.pt), ONNX file or engine")
    parser.add_argument("--data", metavar="SPEC|VIDEO", help="frames (a labelled spec: mIoU "
                        "deltas too); default synthetic day/night scenes")
    parser.add_argument("--max-frames", type=positive_int, default=16, metavar="N",
                        help="frames to compare, spread over --data (default 16)")
    parser.add_argument("--min-agreement", type=float, default=0.99,
                        help="pixel agreement that passes (default 0.99)")
    parser.add_argument("--device", type=parse_device, default=parse_device("auto"),
                        metavar="cpu|cuda[:N]|auto",
                        help="a checkpoint runs in PyTorch there; a plain ONNX on ONNX Runtime's "
                             "CUDA provider for cuda[:N]; a TensorRT plan on GPU N (default auto)")
    parser.add_argument("--json", metavar="OUT", help="write the summary as JSON (- = stdout)")


def run(args: argparse.Namespace) -> int:
    summary = compare_models(args.a, args.b, args.data, args.max_frames, args.min_agreement,
                             args.device)
    band = summary["boundary_agreement"]
    print(f"{summary['a']} vs {summary['b']} on {summary['frames']} frames of {summary['data']}")
    print(f"pixel agreement     {100 * summary['pixel_agreement']:.3f} %")
    print("boundary agreement  " + ("n/a" if band is None else f"{100 * band:.3f} %")
          + " (3 px band around edges)")
    if "table" in summary:
        print(summary.pop("table"))
    print("PASSED" if summary["passed"] else
          f"FAILED: agreement below {100 * args.min_agreement:.2f} %")
    if args.json:
        from edgeseg.fileio import write_json

        write_json(args.json, summary)
    return 0 if summary["passed"] else 1
