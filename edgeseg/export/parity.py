"""The parity gate every export passes: ONNX Runtime output vs a reference, on frames.

The candidate ONNX file runs in ONNX Runtime (CPU provider, errors-only log) on
BGR uint8 frames; the reference is the PyTorch module the graph was traced from
(`DeployWrapper` with ``output="logits"``), another ONNX file (fp32 vs its
fp16/int8 variant), or any frame -> logits callable. Two numbers decide:

- max |Δlogit| over all pixels and classes. Labels/probs models expose their
  logits by an in-memory copy of the graph in which the ArgMax/TopK/Softmax
  input is also a graph output, so no second export is needed.
- argmax agreement: the fraction of pixels whose class matches; for a labels
  model the candidate side is the graph's own labels output (cast included).

Default (fp32) gate: agreement >= 99.9 % and max |Δlogit| <= 1e-3. fp32 kernels
in PyTorch and ONNX Runtime differ only in summation order and in the exporter's
Conv+BN folding; measured on the tiny DeepLabv3+/MobileNet-v2 of the tests:
max |Δlogit| 1e-6..6e-6 (logits of magnitude 1..10), 100 % agreement. 1e-3
leaves >= 100x headroom for wider/deeper nets, while real graph errors (a
swapped channel order, wrong normalisation or resize mode, other weights) move
logits by orders of magnitude more (tests: a perturbed classifier gives > 1e-2). Agreement is not required to be 100 % because near-ties
may flip under those tiny differences. Reduced precisions pass
their own `metrics.Thresholds` (logit bound relaxed or off, agreement lower).

Image networks (translator, relighting: uint8 frame -> uint8 frame) pass `IMAGE_FP32`
instead, checked by `check_image_parity` on the same frames: max |Δ| <= 2 levels and mean
|Δ| <= 0.05 levels per value. Both sides round the network's float output to uint8, so a
float difference of 1e-5 can move a value across a .5 boundary: one level, rarely two
where the two roundings straddle (measured on the tests' ResNet generator, ngf 4: max 1
level, mean 2e-4, 0.02 % of values changed; their relighting net: 0). Wrong graphs fail
by far: swapped channels or another network's weights mean |Δ| ~80 levels; the relighting
net run in the translator's range instead of the segmenter's, mean 1.6, max 10.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import onnx

from edgeseg.contract.metadata import load_onnx, read_metadata
from edgeseg.errors import EdgesegError
from edgeseg.evaluate import PairScorer
from edgeseg.metrics import Thresholds
from edgeseg.runtime.backends.onnxruntime import create_session
from edgeseg.runtime.frames import open_frames
from edgeseg.runtime.stages import fit_frame, frame_to_input, output_to_labels

if TYPE_CHECKING:
    import torch

#: ops that end a segmenter graph; their first input is the logits tensor
_HEADS = ("ArgMax", "TopK", "Softmax")
#: shape/dtype-only ops that may sit between the head and the graph output
_PASS_THROUGH = ("Cast", "Squeeze", "Unsqueeze", "Reshape", "Identity")


class ParityError(EdgesegError):
    """An exported model that disagrees with its reference beyond the thresholds."""

    def __init__(self, report: ParityReport | ImageParityReport, path: str | Path) -> None:
        super().__init__(f"{path}: parity gate failed: {report.format()}")
        self.report = report


#: the fp32 export gate (reduced precisions pass their own `Thresholds`)
FP32 = Thresholds(min_agreement=0.999, max_abs_logit_diff=1e-3)


@dataclass(frozen=True)
class ImageThresholds:
    """The gate of an image network: uint8 levels its output may differ by."""

    max_abs_diff: float = 2.0  # levels, any value of any frame
    max_mean_abs_diff: float = 0.05  # levels, mean over every value of every frame

    def passes(self, max_diff: float, mean_diff: float) -> bool:
        return bool(max_diff <= self.max_abs_diff and mean_diff <= self.max_mean_abs_diff)

    def describe(self) -> str:
        return f"max |d| <= {self.max_abs_diff:g}, mean |d| <= {self.max_mean_abs_diff:g} levels"


#: the fp32 export gate of image networks (translator, relighting: uint8 out)
IMAGE_FP32 = ImageThresholds(max_abs_diff=2.0, max_mean_abs_diff=0.05)


@dataclass
class ParityReport:
    frames: int
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    agreement: float  # fraction of pixels with the same argmax, 0..1
    passed: bool
    thresholds: Thresholds
    reference: str = ""
    sizes: list[list[int]] = field(default_factory=list)  # (height, width) per frame

    def format(self) -> str:
        sizes = sorted({f"{w}x{h}" for h, w in self.sizes})
        return (f"parity vs {self.reference or 'reference'} on {self.frames} frames "
                f"({', '.join(sizes)} WxH): max |dlogit| {self.max_abs_logit_diff:.2e}, "
                f"mean {self.mean_abs_logit_diff:.2e}, argmax agreement "
                f"{100 * self.agreement:.3f}% (thresholds: {self.thresholds.describe()}): "
                f"{'PASS' if self.passed else 'FAIL'}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------- frames


def sample_frames(spec: str | None, size: tuple[int, int], count: int,
                  seed: int = 0) -> list[np.ndarray]:
    """``count`` BGR uint8 frames fitted to ``size`` (height, width) as the runtime fits
    them: spread over any frame spec (`open_frames`), or synthetic driving scenes when
    ``spec`` is None."""
    if count < 1:
        raise EdgesegError(f"parity frames: need at least 1, got {count}")
    images, _ = open_frames(spec, count, size=size, seed=seed).load()
    return [fit_frame(np.ascontiguousarray(rgb[..., ::-1]), size)[0] for rgb in images]


# ---------------------------------------------------------------------------- ONNX


def logits_tensor(model: onnx.ModelProto, output: str) -> str:
    """The tensor holding the logits behind graph output ``output``: the input of the
    ArgMax/TopK/Softmax it comes from (through casts/squeezes), else ``output`` itself."""
    producer = {o: n for n in model.graph.node for o in n.output}
    name = output
    while name in producer:
        node = producer[name]
        if node.op_type in _HEADS:
            return node.input[0]
        if node.op_type not in _PASS_THROUGH:
            break
        name = node.input[0]
    return output


class OnnxLogits:
    """Runs an ONNX segmenter on BGR frames; returns (logits, labels or None) per frame."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.meta = read_metadata(path)
        model = load_onnx(path)
        out = self.meta.output
        self.logits_name = logits_tensor(model, out.name)
        self.labels_name = out.name if out.format == "labels" else None
        if self.logits_name != out.name:
            model = onnx.shape_inference.infer_shapes(model)
            known = {v.name: v for v in model.graph.value_info}
            info = known.get(self.logits_name) or onnx.helper.make_tensor_value_info(
                self.logits_name, onnx.TensorProto.FLOAT, None)
            model.graph.output.append(info)
        self.session = create_session(model.SerializeToString(), source=self.path)

    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        x = frame_to_input(frame, self.meta)
        names = [self.logits_name] + ([self.labels_name] if self.labels_name else [])
        outs = self.session.run(names, {self.meta.input.name: x})
        return outs[0].astype(np.float32), (outs[1] if self.labels_name else None)


#: a torch module (fed the candidate's graph input), an ONNX file, or BGR frame -> logits
Reference = Union["torch.nn.Module", str, Path, Callable[[np.ndarray], np.ndarray]]


def _reference_fn(reference: Reference, candidate: OnnxLogits
                  ) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """A BGR frame -> float32 logits (N, C, H, W) function for any kind of reference."""
    if isinstance(reference, (str, Path)):
        other = OnnxLogits(reference)
        return (lambda f: other(f)[0]), Path(reference).name
    try:
        import torch
    except ImportError:  # a torch-free install can still compare two ONNX files
        torch = None
    if torch is not None and isinstance(reference, torch.nn.Module):
        module = reference.eval()

        @torch.no_grad()
        def run(frame: np.ndarray) -> np.ndarray:
            param = next(module.parameters(), None)
            x = torch.from_numpy(frame_to_input(frame, candidate.meta))
            if param is not None:
                x = x.to(param.device)
            return module(x).float().cpu().numpy()

        return run, f"torch {type(reference).__name__}"
    if callable(reference):
        return (lambda f: np.asarray(reference(f), np.float32)), getattr(
            reference, "__name__", "callable")
    raise TypeError(f"parity reference must be a torch module, an ONNX path or a callable, "
                    f"not {type(reference).__name__}")


def check_onnx_parity(onnx_path: str | Path, reference: Reference,
                      frames: Sequence[np.ndarray], thresholds: Thresholds = FP32
                      ) -> ParityReport:
    """Compare ``onnx_path`` with ``reference`` on BGR uint8 ``frames`` (any sizes its
    input accepts). A torch-module reference receives the candidate's graph input; a
    callable receives the BGR frame; both return logits (1, C, H, W)."""
    if not frames:
        raise EdgesegError("parity check needs at least one frame")
    candidate = OnnxLogits(onnx_path)
    ref_fn, ref_name = _reference_fn(reference, candidate)
    scorer = PairScorer(band=0)
    max_diff, abs_sum, values = 0.0, 0.0, 0
    for frame in frames:
        logits, labels = candidate(frame)
        ref = ref_fn(frame).reshape(logits.shape)
        diff = np.abs(logits - ref)
        worst = float(diff.max())
        max_diff = max(max_diff, worst if np.isfinite(worst) else float("inf"))  # NaN fails
        abs_sum += float(diff.sum(dtype=np.float64))
        values += diff.size
        mine = (output_to_labels(logits[0], "logits") if labels is None
                else output_to_labels(labels[0], "labels"))
        scorer.update(output_to_labels(ref[0], "logits"), mine)
    agreement = scorer.agreement
    passed = thresholds.passes(agreement, max_abs_logit_diff=max_diff)
    return ParityReport(len(frames), max_diff, abs_sum / values, agreement, passed, thresholds,
                        ref_name, [list(f.shape[:2]) for f in frames])


# ---------------------------------------------------------------------- image networks


@dataclass
class ImageParityReport:
    """An image network's uint8 output vs its reference, in levels (0..255)."""

    frames: int
    max_abs_diff: float
    mean_abs_diff: float
    changed: float  # fraction of values that differ at all, 0..1
    passed: bool
    thresholds: ImageThresholds
    reference: str = ""
    sizes: list[list[int]] = field(default_factory=list)  # (height, width) per frame

    def format(self) -> str:
        sizes = sorted({f"{w}x{h}" for h, w in self.sizes})
        return (f"parity vs {self.reference or 'reference'} on {self.frames} frames "
                f"({', '.join(sizes)} WxH): max |d| {self.max_abs_diff:g} levels, mean "
                f"{self.mean_abs_diff:.2e}, values changed {100 * self.changed:.3f}% "
                f"(thresholds: {self.thresholds.describe()}): "
                f"{'PASS' if self.passed else 'FAIL'}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_image_parity(onnx_path: str | Path,
                       reference: torch.nn.Module | Callable[[np.ndarray], np.ndarray],
                       frames: Sequence[np.ndarray],
                       thresholds: ImageThresholds = IMAGE_FP32) -> ImageParityReport:
    """Compare an image network's ONNX (uint8 BGR frame -> uint8 BGR frame, ONNX Runtime CPU)
    with ``reference`` on BGR uint8 ``frames``: a torch module fed the (1, H, W, 3) uint8
    frame (the `FrameToFrame` the graph was traced from) or a callable BGR frame -> frame."""
    if not frames:
        raise EdgesegError("parity check needs at least one frame")
    meta = read_metadata(onnx_path)
    session = create_session(onnx_path)
    ref_fn, ref_name = _image_reference(reference)
    max_diff, abs_sum, changed, values = 0.0, 0.0, 0, 0
    for frame in frames:
        x = frame_to_input(frame, meta)
        got = np.asarray(session.run(None, {meta.input.name: x})[0])
        want = np.asarray(ref_fn(x)).reshape(got.shape)
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        max_diff = max(max_diff, float(diff.max()))
        abs_sum += float(diff.sum())
        changed += int(np.count_nonzero(diff))
        values += diff.size
    mean = abs_sum / values
    return ImageParityReport(len(frames), max_diff, mean, changed / values,
                             thresholds.passes(max_diff, mean), thresholds, ref_name,
                             [list(f.shape[:2]) for f in frames])


def _image_reference(reference: Any) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """A (1, H, W, 3) uint8 -> (1, H, W, 3) uint8 function for a torch module or a callable
    on one BGR frame."""
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and isinstance(reference, torch.nn.Module):
        module = reference.eval()
        param = next(module.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")

        @torch.no_grad()
        def run(x: np.ndarray) -> np.ndarray:
            return module(torch.from_numpy(x).to(device)).cpu().numpy()

        return run, f"torch {type(reference).__name__}"
    if callable(reference):
        return (lambda x: np.asarray(reference(x[0]))[None]), getattr(
            reference, "__name__", "callable")
    raise TypeError(f"image parity reference must be a torch module or a callable, not "
                    f"{type(reference).__name__}")
