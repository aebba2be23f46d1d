"""INT8 Q/DQ ONNX from an fp32 model: calibration, cache, flavours, sensitivity search.

TensorRT 10/11 builds int8 only from explicit Q/DQ nodes (docs/tensorrt.md), so
the int8 model is an ONNX file that ONNX Runtime can run and score on CPU
before any engine exists. Two flavours:

* ``tensorrt``: symmetric int8 activations and per-channel weights (Conv axis
  0), no quantised bias: the only Q/DQ TensorRT parses (`validate_trt_qdq`
  checks every output); Q/DQ only on Conv inputs, TensorRT's recommended
  placement (see TRT_EXTRA_OPTIONS for the measured reason).
* ``onnxruntime``: uint8 asymmetric activations, int8 per-channel weights,
  int32 bias: what ONNX Runtime's CPU kernels (QLinearConv, U8S8) run fastest.

``high_precision="fp16"`` (``--high-precision-dtype fp16``, tensorrt flavour) is the file
a strongly typed TensorRT engine needs: it keeps every tensor's ONNX type, so the
tensorrt-flavour file runs fp32 outside the Conv Q/DQ pairs. `quantize_fp16_qdq` places
Q/DQ by TensorRT's explicit-quantization rules (`plan_qdq`: Conv inputs and weights,
residual Add inputs, pooling, Conv-fed Resizes, shared Concat scales, as NVIDIA's
ModelOpt places them), stores int8 weights, and converts the rest to fp16 (opset 19 for
the fp16 scales); on the CamVid model it matched ModelOpt's accuracy and placement
(benchmarks/results/camvid/source_only-int8fp16.md).

Only the network is quantised: the in-graph pre-processing (uint8 Cast,
transpose, channel swap, normalisation) and post-processing (final Resize,
ArgMax/TopK, output Cast) stay float, found by `prepost_nodes`; argmax over
int8 logits would create ties.

An image network (translator, relighting: uint8 frame out) also keeps the layer that
makes the image and everything after it in float (`output_stage`: the last conv, tanh,
scaling, rounding). PSNR against fp32 on small ResNet generators (instance norm,
transposed convs, tanh; ngf 8 / 16 / the tests' 8 with 2 blocks, fitted to brighten
synthetic night frames; minmax, 16 night frames), tensorrt flavour: 43.7 / 45.8 / 45.9 dB
with that conv in int8, 46.8 / 50.9 / 52.4 dB with it in float, for ~1% of a
resnet_9blocks generator's MACs. The transposed convs stay float in that flavour
(`TRT_OPS_TO_QUANTIZE`): quantising them too took ngf 8 from 43.7 to 33.2 dB. The
pre/post-processing of image networks costs nothing measurable either way (0..255 values
quantise exactly at scale 1); it stays float as for segmenters. The onnxruntime flavour
quantises every op's output, instance norm included, and measured 36-40 dB. Entropy
calibration clips highlights (ngf 8: 28.9 dB, single values off by 122 levels):
calibrate image networks with minmax or percentile.

Calibration cache: a JSON file holding onnxruntime's own calibration cache
(``TensorsData``, as written by ``save_tensors_data``) plus an ``edgeseg``
header (source ONNX sha256, method, pre-processing, frame count/hash). It is
fed back through ``quantize_static(calibration_cache_path=...)``, the
supported way in onnxruntime >= 1.31 to quantise from precomputed ranges, so a
rebuild skips calibration. Ranges do not depend on the flavour or the
excluded nodes, so one cache serves both flavours and the sensitivity search.
A cache whose ONNX hash, method or pre-processing differs is *rejected*
(`CalibrationError`): a retrained checkpoint with the same architecture has
the same tensor names, and silently reusing its ranges would be wrong.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeseg.contract.metadata import load_onnx
from edgeseg.errors import EdgesegError
from edgeseg.evaluate import agreement
from edgeseg.export.calibration import CalibrationError, FrameReader, input_contract
from edgeseg.export.fp16 import (
    ANCHOR_OPS,
    check_loads,
    is_image_network,
    output_stage,
    require_fp32,
    resolve_nodes,
    save_model,
    update_metadata,
)
from edgeseg.export.lint import (
    FUSED_INTO_CONV,
    SHAPE_OPS,
    GraphIndex,
    iter_nodes,
    validate_trt_qdq,
)
from edgeseg.fileio import (
    OUTPUT_ERRNOS,
    OutputError,
    describe_os_error,
    is_disk_full,
    output_errors,
    sha256_file,
    write_json,
)
from edgeseg.runtime.backends.onnxruntime import create_session
from edgeseg.runtime.stages import output_to_labels

__all__ = [
    "BudgetResult",
    "Int8Quantizer",
    "QdqPlan",
    "agreement",
    "insert_fp16_qdq",
    "plan_qdq",
    "predict_labels",
    "prepost_nodes",
    "quantize_int8",
    "quantize_with_budget",
    "sensitive_layers",
    "validate_trt_qdq",
]

logger = logging.getLogger("edgeseg.export")

FLAVOURS = ("tensorrt", "onnxruntime")
#: types of everything outside the Q/DQ pairs (ModelOpt's ``high_precision_dtype``)
HIGH_PRECISION = ("fp32", "fp16")
#: QuantizeLinear/DequantizeLinear take fp16 scales (and give fp16 outputs) from opset 19 on
FP16_QDQ_OPSET = 19
METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
CACHE_FORMAT = "edgeseg-calibration/1"
#: docs/tensorrt.md: the settings that give zero zero-points and no INT32 bias DQ ...
TRT_EXTRA_OPTIONS = {
    "ActivationSymmetric": True,
    "WeightSymmetric": True,
    "QuantizeBias": False,
    "AddQDQPairToWeight": True,
    "DedicatedQDQPair": False,
    "QDQOpTypePerChannelSupportToAxis": {"Conv": 0},
    # ... plus TensorRT's recommended placement: Q/DQ on the inputs of weighted ops only.
    # Quantising Conv outputs too (before the ReLU6/Clip) spends the symmetric int8 range on
    # negative values the Clip discards: argmax agreement with fp32 fell from 99.5% to 93.7%
    # on the tiny DeepLabv3+ (minmax, 8 frames). TensorRT fuses Conv+Clip+next Q itself.
    "OpTypesToExcludeOutputQuantization": ["Conv"],
}
TRT_OPS_TO_QUANTIZE = ["Conv"]
#: calibrator options: onnxruntime's default entropy histogram (128 bins = 128 quantised
#: bins) leaves the KL threshold search a single candidate, i.e. plain minmax
CALIBRATOR_OPTIONS = {"entropy": {"num_bins": 512, "num_quantized_bins": 128}}


def _flavour_options(flavour: str) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType

    if flavour == "tensorrt":
        return {"activation_type": QuantType.QInt8, "weight_type": QuantType.QInt8,
                "per_channel": True, "op_types_to_quantize": TRT_OPS_TO_QUANTIZE,
                "extra_options": dict(TRT_EXTRA_OPTIONS)}
    if flavour == "onnxruntime":
        # reduce_range (7-bit weights): u8s8 kernels on x86 without VNNI (AVX2) saturate the
        # 16-bit intermediate sums; measured on the CamVid model at 480x360, day_val mIoU drop
        # 14.3 points without it, 0.06 with it (benchmarks/results/camvid).
        return {"activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8,
                "per_channel": True, "reduce_range": True, "extra_options": {}}
    raise EdgesegError(f"int8 flavour {flavour!r}: use one of {list(FLAVOURS)}")


def _method(method: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    if method not in METHODS:
        raise EdgesegError(f"calibration method {method!r}: use one of {list(METHODS)}")
    return CalibrationMethod[METHODS[method]]


def check_high_precision(flavour: str, high_precision: str) -> None:
    """fp16 outside the Q/DQ pairs is for TensorRT's strong typing: the tensorrt flavour."""
    if high_precision not in HIGH_PRECISION:
        raise EdgesegError(f"high-precision type {high_precision!r}: use one of "
                           f"{list(HIGH_PRECISION)}")
    if high_precision == "fp16" and flavour != "tensorrt":
        raise EdgesegError(f"--high-precision-dtype fp16 needs --flavour tensorrt (the "
                           f"{flavour} flavour is for ONNX Runtime's CPU kernels, which run "
                           "fp16 through casts)")


def prepost_nodes(model: str | Path | onnx.ModelProto) -> list[str]:
    """Nodes between the graph inputs and the first Conv/MatMul/Gemm, and after the last one.

    Walks forward from the inputs and backward (along each node's data input)
    from the outputs, stopping at those ops and at Shape (whose int64 output
    only sizes later Resizes). These are the casts, layout changes,
    normalisation, final upsample and argmax that must stay float.
    """
    proto = load_onnx(model)
    index = GraphIndex(proto)
    found: dict[str, None] = {}

    def stop(node: onnx.NodeProto) -> bool:
        return node.op_type in ANCHOR_OPS or node.op_type in SHAPE_OPS

    queue = [n for vi in index.inputs for n in index.consumers.get(vi.name, [])]
    while queue:
        node = queue.pop()
        if stop(node) or node.name in found:
            continue
        found[node.name] = None
        queue += [c for out in node.output for c in index.consumers.get(out, [])]
    queue = [index.producer[o.name] for o in proto.graph.output if o.name in index.producer]
    while queue:
        node = queue.pop()
        if stop(node) or node.name in found:
            continue
        found[node.name] = None
        if node.input and node.input[0] in index.producer:
            queue.append(index.producer[node.input[0]])
    return list(found)


def predict_labels(model: str | Path | onnx.ModelProto, frames: Sequence[np.ndarray],
                   input_name: str) -> list[np.ndarray]:
    """Class maps of ``model`` (ONNX Runtime CPU) for each input in ``frames``."""
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else Path(model)
    session = create_session(data)
    return [np.stack([output_to_labels(o, "logits" if o.ndim == 3 else "labels") for o in out])
            for out in (session.run(None, {input_name: f})[0] for f in frames)]


class Int8Quantizer:
    """One fp32 model prepared for repeated quantisation: pre-processed once, calibrated once.

    Use as a context manager (it owns a temp folder): `calibrate` loads the
    cache or computes ranges; `quantize` then builds a Q/DQ model for any
    flavour/exclusion from those ranges without another calibration pass.
    """

    def __init__(self, src: str | Path, *, method: str = "minmax", preprocess: bool = True,
                 cache: str | Path | None = None) -> None:
        _method(method)
        self.src = Path(src)
        proto = load_onnx(self.src)
        require_fp32(proto, self.src, "int8")
        self.contract = input_contract(proto)
        self.method = method
        self.preprocess = preprocess
        self.cache = Path(cache) if cache else None
        self.src_sha256 = sha256_file(self.src)
        self.header: dict[str, Any] = {}
        with output_errors(tempfile.gettempdir()):
            self._tmp = Path(tempfile.mkdtemp(prefix="edgeseg-int8-"))
        self.ranges = self._tmp / "ranges.json"
        try:
            with self._temp_files():
                self.model = self._prepare()
            prepared = load_onnx(self.model)
            self.graph = prepared.graph
            self.auto_excluded = prepost_nodes(prepared)
            self.output_fp32: list[str] = []
            if is_image_network(proto):
                last, after = output_stage(prepared)
                self.auto_excluded = list(dict.fromkeys([*self.auto_excluded, *last, *after]))
                self.output_fp32 = after
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise

    def __enter__(self) -> Int8Quantizer:
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

    @contextlib.contextmanager
    def _temp_files(self) -> Iterator[None]:
        """Disk-full/read-only errors while writing the temp models (onnxruntime's quantiser
        hides some behind its own exceptions) become one OutputError naming the temp folder."""
        try:
            yield
        except EdgesegError:
            raise
        except Exception as exc:
            os_error = isinstance(exc, OSError) and exc.errno in OUTPUT_ERRNOS
            if not os_error and not is_disk_full(self._tmp):
                raise
            cause = exc if os_error else OSError(errno.ENOSPC, "No space left on device")
            raise OutputError(describe_os_error(self._tmp.parent, cause)  # type: ignore[arg-type]
                              + " (int8 calibration's temp files; TMPDIR=DIR moves them)"
                              ) from None

    def _prepare(self) -> Path:
        """quant_pre_process (ORT optimisation + shape inference) on a temp copy."""
        out = self._tmp / "pre.onnx"
        if not self.preprocess:
            shutil.copyfile(self.src, out)
            return out
        from onnxruntime.quantization.shape_inference import quant_pre_process

        try:
            quant_pre_process(str(self.src), str(out))
        except Exception as exc:  # noqa: BLE001 - symbolic shape inference (sympy) is fragile
            if isinstance(exc, OSError) and exc.errno in OUTPUT_ERRNOS or is_disk_full(self._tmp):
                raise  # no space for temp files: a retry only truncates them differently
            logger.warning("symbolic shape inference failed (%s); retrying without it", exc)
            quant_pre_process(str(self.src), str(out), skip_symbolic_shape=True)
        return out

    def _key(self) -> dict[str, Any]:
        return {"format": CACHE_FORMAT, "onnx_sha256": self.src_sha256, "method": self.method,
                "preprocess": self.preprocess}

    def _load_cache(self) -> bool:
        """True if the cache exists and fits this model; raises if it belongs to another."""
        if self.cache is None or not self.cache.is_file():
            return False
        try:
            header = dict(json.loads(self.cache.read_text())["edgeseg"])
        except (ValueError, KeyError, TypeError):
            raise CalibrationError(f"{self.cache}: not an edgeseg calibration cache; delete it "
                                   "or pass another --calib-cache") from None
        mismatch = {k: (header.get(k), want) for k, want in self._key().items()
                    if header.get(k) != want}
        if "onnx_sha256" in mismatch:
            what = (f"another model ({header.get('onnx')}, sha256 "
                    f"{str(header.get('onnx_sha256'))[:12]}) than {self.src.name} "
                    f"(sha256 {self.src_sha256[:12]})")
        else:
            what = ", ".join(f"{k}={have!r} (this run: {want!r})"
                             for k, (have, want) in mismatch.items())
        if mismatch:
            raise CalibrationError(f"{self.cache}: calibration cache is for {what}; delete it "
                                   "or pass another --calib-cache to recalibrate")
        self.header = header
        self.ranges = self.cache
        return True

    def calibrate(self, frames: np.ndarray | Sequence[np.ndarray] | FrameReader | None,
                  source: str = "calibration frames") -> dict[str, Any]:
        """Ranges from the cache if it fits, else from ``frames`` (then saved to the cache)."""
        if self.header:
            return self.header
        if self._load_cache():
            logger.info("%s: calibration ranges from the cache (%s frames of %s)", self.cache,
                        self.header.get("frames"), self.header.get("source"))
            return self.header
        reader = self._reader(frames, source)
        from onnxruntime.quantization import create_calibrator, save_tensors_data

        with self._temp_files():
            calibrator = create_calibrator(self.model, None, str(self._tmp / "augmented.onnx"),
                                           calibrate_method=_method(self.method),
                                           extra_options=CALIBRATOR_OPTIONS.get(self.method, {}))
            try:
                calibrator.collect_data(reader)
            except ValueError as exc:
                if reader.count == 0:
                    raise CalibrationError(f"{reader.source}: no calibration frames") from None
                raise CalibrationError(f"{reader.source}: calibration failed: {exc}") from None
            save_tensors_data(calibrator.compute_data(), self.ranges)
        self.header = {**self._key(), "onnx": self.src.name, "frames": reader.count,
                       "frames_sha256": reader.sha256, "source": reader.source,
                       "onnxruntime": _ort_version()}
        if self.cache is not None:
            write_json(self.cache, {"edgeseg": self.header, **json.loads(self.ranges.read_text())})
            self.ranges = self.cache
        return self.header

    def _reader(self, frames: Any, source: str) -> FrameReader:
        if isinstance(frames, FrameReader):
            frames.rewind()
            return frames
        if frames is None or len(frames) == 0:
            where = f"cache {self.cache} does not exist yet" if self.cache else "no --calib-cache"
            raise CalibrationError(f"{source}: no calibration frames ({where}); pass --calib "
                                   "VIDEO|DATASET_SPEC")
        shape = tuple(np.shape(frames[0]))
        c = self.contract
        expect = ((c.batch, c.height, c.width, 3) if c.format == "uint8-nhwc-bgr"
                  else (c.batch, 3, c.height, c.width))
        if shape != expect:
            raise CalibrationError(f"{source}: frames have shape {shape}, the model input "
                                   f"{c.name!r} wants {expect} ({c.format}); prepare them "
                                   "with edgeseg.export.calibration.load_frames")
        return FrameReader(c.name, frames, source)

    def exclusions(self, exclude: Sequence[str] = ()) -> list[str]:
        """Pre/post-processing nodes plus ``exclude`` (node names or op types) as node names."""
        ops, names = resolve_nodes(self.graph, exclude, "--keep-fp32")
        names += [n.name for n in self.graph.node if n.op_type in ops]
        return list(dict.fromkeys([*self.auto_excluded, *names]))

    def quantize(self, flavour: str = "tensorrt", exclude: Sequence[str] = (),
                 made_by: str = "quantize", high_precision: str = "fp32") -> onnx.ModelProto:
        """A Q/DQ model (with metadata) from the calibrated ranges; `calibrate` first.

        ``high_precision`` is the type of everything outside the Q/DQ pairs: ``fp16`` (the
        tensorrt flavour only) is what a strongly typed TensorRT engine needs to run those
        layers in fp16, as TensorRT 10's ``--int8 --fp16`` did (`quantize_fp16_qdq`).
        """
        from onnxruntime.quantization import QuantFormat, quantize_static

        if not self.header:
            raise RuntimeError("Int8Quantizer.quantize before calibrate")
        check_high_precision(flavour, high_precision)
        if high_precision == "fp16":
            return self.quantize_fp16_qdq(exclude, made_by)
        options = _flavour_options(flavour)
        excluded = self.exclusions(exclude)
        out = self._tmp / "int8.onnx"
        with self._temp_files():
            quantize_static(str(self.model), str(out), None, quant_format=QuantFormat.QDQ,
                            calibrate_method=_method(self.method), nodes_to_exclude=excluded,
                            calibration_cache_path=str(self.ranges), **options)
        proto = load_onnx(out)
        if flavour == "tensorrt":
            problems = validate_trt_qdq(proto)
            if problems:  # the settings above guarantee none: a changed onnxruntime
                raise RuntimeError("tensorrt-flavour Q/DQ that TensorRT rejects:\n"
                                   + "\n".join(map(str, problems[:5])))
        calibration = self._calibration_record(flavour, "fp32")
        update_metadata(proto, "int8", {"calibration": calibration, "excluded_nodes": excluded,
                                        "exclude_requested": list(exclude),
                                        "made_by": made_by})
        return proto

    def _calibration_record(self, flavour: str, high_precision: str) -> dict[str, Any]:
        return {**{k: self.header.get(k) for k in ("method", "frames", "frames_sha256",
                                                   "source", "onnx_sha256")},
                "flavour": flavour, "high_precision": high_precision,
                "cache_sha256": sha256_file(self.cache) if self.cache else ""}

    def quantize_fp16_qdq(self, exclude: Sequence[str] = (),
                          made_by: str = "quantize") -> onnx.ModelProto:
        """The tensorrt-flavour int8 model with fp16 everywhere outside the Q/DQ pairs.

        Q/DQ go where TensorRT's explicit-quantization guide places them (`plan_qdq`); the
        rest of the graph, pre- and post-processing included, is converted to fp16 as
        `convert_fp16` converts it (uint8 frames cast to fp16 exactly; graph inputs and
        outputs keep their types). ``exclude`` (--keep-fp32) stays unquantised and fp32, as
        does an image network's output conversion. Opset 19 for the fp16 scales.
        """
        from onnxruntime.quantization import TensorsData

        from edgeseg.export.fp16 import to_float16

        if not self.header:
            raise RuntimeError("Int8Quantizer.quantize before calibrate")
        ops, names = resolve_nodes(self.graph, exclude, "--keep-fp32")
        keep_fp32 = list(dict.fromkeys([*names, *self.output_fp32]))
        excluded = self.exclusions(exclude)
        fp32 = _set_opset(load_onnx(self.model), FP16_QDQ_OPSET, self.src)
        plan = plan_qdq(fp32, excluded)
        weights = {t.name: onnx.numpy_helper.to_array(t) for t in fp32.graph.initializer}
        ranges = TensorsData.from_dict(json.loads(Path(self.ranges).read_text()))
        proto = to_float16(fp32, ops, keep_fp32)
        counts = insert_fp16_qdq(proto, plan, ranges, weights)
        _drop_unused_domains(proto)
        problems = validate_trt_qdq(proto)
        if problems:
            raise RuntimeError("fp16 Q/DQ that TensorRT rejects:\n"
                               + "\n".join(map(str, problems[:5])))
        update_metadata(proto, "int8", {
            "calibration": self._calibration_record("tensorrt", "fp16"),
            "high_precision": "fp16", "excluded_nodes": excluded, "fp32_nodes": keep_fp32,
            "exclude_requested": list(exclude), "qdq": {**plan.summary(), **counts},
            "opset": next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
            "made_by": made_by})
        return proto


# ------------------------------------------------- int8 with an fp16 high-precision type

#: ops whose input TensorRT runs in int8 when it is quantised: pooling is a quantisable
#: (AveragePool) or commuting (MaxPool) layer in its "Explicit Quantization" guide
POOLING_OPS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"})
#: the weighted ops quantised (as in the fp32 tensorrt flavour: ConvTranspose stays float)
MIXED_WEIGHTED_OPS = frozenset(TRT_OPS_TO_QUANTIZE)
#: upsampling that reads a convolution's output: quantising its input lets TensorRT write the
#: convolution's output in int8 (Q fused into its epilogue) and dequantise inside the resize
#: kernel (ModelOpt's "KGEN" partitions: Conv-[epilogue]-Resize)
UPSAMPLE_OPS = frozenset({"Resize", "Upsample"})


@dataclass
class QdqPlan:
    """Where an int8 model with an fp16 high-precision type gets Q/DQ, by TensorRT's rules.

    ``activations`` maps a tensor to the (node, input index) pairs that read its
    DequantizeLinear output; other readers keep the float tensor. ``weights`` lists the
    (node, input index) of per-channel weights. ``shared`` maps a tensor to the tensor whose
    scale it takes (Concat inputs take their output's); ``residual`` names the Adds whose
    skip input is quantised, so TensorRT fuses Conv+Add and writes int8.
    """

    activations: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    weights: list[tuple[str, int]] = field(default_factory=list)
    shared: dict[str, str] = field(default_factory=dict)
    residual: list[str] = field(default_factory=list)
    pooling: list[str] = field(default_factory=list)
    upsample: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        return {"weights": len(self.weights), "activations": len(self.activations),
                "residual_adds": len(self.residual), "pooling": len(self.pooling),
                "upsample": len(self.upsample), "concat_shared_scales": len(self.shared)}


def _conv_behind(tensor: str, index: GraphIndex) -> onnx.NodeProto | None:
    """The convolution whose output reaches ``tensor`` through ops TensorRT fuses into it."""
    node = index.producer.get(tensor)
    while node is not None and node.op_type in FUSED_INTO_CONV and \
            len(index.consumers.get(node.input[0], [])) == 1:
        node = index.producer.get(node.input[0])
    return node if node is not None and node.op_type in MIXED_WEIGHTED_OPS else None


def _distances(tensor: str, index: GraphIndex) -> dict[str, int]:
    """Node name -> steps back from ``tensor`` to that node (breadth first over data inputs)."""
    found: dict[str, int] = {}
    frontier = deque([(tensor, 0)])
    while frontier:
        name, depth = frontier.popleft()
        node = index.producer.get(name)
        if node is None or node.name in found:
            continue
        found[node.name] = depth
        frontier += [(i, depth + 1) for i in node.input if i and i not in index.constants]
    return found


def _residual_input(add: onnx.NodeProto, index: GraphIndex) -> int | None:
    """Which input of ``add`` is the skip connection (None: not a residual Add).

    A residual Add sums a convolution's output with a tensor from an earlier layer. The
    input on the longer path back to the branches' common ancestor is the convolution's
    (TensorRT fuses the Add into that convolution); the other one is the residual input.
    """
    if len(add.input) != 2 or any(i in index.constants or i not in index.producer
                                  for i in add.input):
        return None
    convs = [_conv_behind(i, index) for i in add.input]
    if convs[0] is None and convs[1] is None:
        return None
    back = [_distances(i, index) for i in add.input]
    common = set(back[0]) & set(back[1])
    if not common:
        return None
    lca = min(common, key=lambda n: back[0][n] + back[1][n])
    if convs[0] is None or convs[1] is None:
        conv = 0 if convs[0] is not None else 1
        if convs[conv].name == lca:  # both inputs come from the same convolution
            return None
        return 1 - conv
    if convs[0].name == convs[1].name or back[0][lca] == back[1][lca]:
        return None
    return 1 if back[0][lca] > back[1][lca] else 0


def plan_qdq(model: onnx.ModelProto, excluded: Sequence[str] = ()) -> QdqPlan:
    """Q/DQ placement for an int8 model whose other layers run fp16 (TensorRT's rules).

    * every Conv's data input (per-tensor) and weights (per output channel, axis 0);
      outputs are not quantised: TensorRT fuses Conv+bias+activation and the next Q;
    * the residual input of each residual Add, so Conv+Add fuses and writes int8;
    * the input of pooling layers (GlobalAveragePool, AveragePool, MaxPool);
    * the input of a Resize that reads a convolution's output (`UPSAMPLE_OPS`);
    * a Concat whose output is quantised gives its scale to its inputs that are quantised
      too, so TensorRT moves the Q in front of the Concat without a requantisation.

    Nodes in ``excluded`` (pre/post-processing, --keep-fp32) read float tensors.
    """
    index = GraphIndex(model)
    skip = set(excluded)
    plan = QdqPlan()

    def quantise(tensor: str, node: onnx.NodeProto, i: int) -> None:
        if index.is_float(tensor) and tensor not in index.constants:
            plan.activations.setdefault(tensor, []).append((node.name, i))

    for node in model.graph.node:
        if node.name in skip:
            continue
        if node.op_type in MIXED_WEIGHTED_OPS:
            quantise(node.input[0], node, 0)
            if len(node.input) > 1 and node.input[1] in index.constants:
                plan.weights.append((node.name, 1))
        elif node.op_type == "Add":
            i = _residual_input(node, index)
            if i is not None and node.input[i] in index.producer:
                quantise(node.input[i], node, i)
                plan.residual.append(node.name)
        elif node.op_type in POOLING_OPS:
            quantise(node.input[0], node, 0)
            plan.pooling.append(node.name)
        elif node.op_type in UPSAMPLE_OPS and _conv_behind(node.input[0], index) is not None:
            quantise(node.input[0], node, 0)
            plan.upsample.append(node.name)
    for node in model.graph.node:
        if node.op_type == "Concat" and node.output[0] in plan.activations:
            for name in node.input:
                if name in plan.activations and name != node.output[0]:
                    plan.shared[name] = plan.shared.get(node.output[0], node.output[0])
    return plan


def _amax(ranges: Any, tensor: str) -> float:
    data = ranges.data.get(tensor) if hasattr(ranges, "data") else None
    if data is None:
        raise RuntimeError(f"no calibration range for {tensor!r}: recalibrate (delete the "
                           "--calib-cache file)")
    low, high = data.range_value
    return float(max(abs(float(np.max(low))), abs(float(np.max(high)))))


def fp16_scale(amax: np.ndarray | float) -> np.ndarray:
    """Symmetric int8 scale amax/127 as fp16, rounded up (no value inside the calibrated range
    saturates); 1 where amax is 0 (an all-zero channel quantises exactly with any scale)."""
    amax = np.asarray(amax, np.float32)
    scale = np.where(amax > 0, amax / np.float32(127), np.float32(1))
    half = scale.astype(np.float16)
    low = half.astype(np.float32) < scale
    half[low] = np.nextafter(half[low], np.float16(np.inf))
    return half


class _QdqWriter:
    """Inserts Q/DQ nodes into an fp16 graph, each pair in front of its first reader."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.names = {n.name for n in model.graph.node} | {i.name for i in model.graph.initializer}
        self.before: dict[str, list[onnx.NodeProto]] = {}  # node name -> nodes to put before it

    def unique(self, name: str) -> str:
        out, k = name, 1
        while out in self.names:
            out, k = f"{name}_{k}", k + 1
        self.names.add(out)
        return out

    def add_init(self, name: str, array: np.ndarray) -> str:
        name = self.unique(name)
        self.model.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
        return name

    def pair(self, tensor: str, scale: np.ndarray, first_reader: str, weights: bool = False
             ) -> str:
        """Q (or, for weights already int8, nothing) + DQ of ``tensor``; the DQ output's name."""
        from onnx import helper

        zero = np.zeros(scale.shape, np.int8)
        s, z = self.add_init(f"{tensor}_scale", scale), self.add_init(f"{tensor}_zero_point", zero)
        axis = {"axis": 0} if scale.ndim else {}
        nodes = []
        source = tensor
        if not weights:
            source = self.unique(f"{tensor}_quantized")
            nodes.append(helper.make_node("QuantizeLinear", [tensor, s, z], [source],
                                          self.unique(f"{tensor}_QuantizeLinear"), **axis))
        out = self.unique(f"{tensor}_dequantized")
        nodes.append(helper.make_node("DequantizeLinear", [source, s, z], [out],
                                      self.unique(f"{tensor}_DequantizeLinear"), **axis))
        self.before.setdefault(first_reader, []).extend(nodes)
        return out

    def finish(self) -> None:
        order: list[onnx.NodeProto] = []
        for node in self.model.graph.node:
            order += self.before.pop(node.name, [])
            order.append(node)
        del self.model.graph.node[:]
        self.model.graph.node.extend(order)


def insert_fp16_qdq(model: onnx.ModelProto, plan: QdqPlan, ranges: Any,
                    fp32_weights: dict[str, np.ndarray]) -> dict[str, int]:
    """Put ``plan``'s Q/DQ pairs into ``model`` (the fp16 graph of the calibrated one), in place.

    Activation scales are fp16 (amax/127 from ``ranges``, concat groups sharing the largest);
    weights become int8 initializers quantised per output channel from ``fp32_weights`` with
    a DequantizeLinear to fp16 in front of their node (TensorRT reads them as they are). A
    reader the fp16 conversion put behind a Cast keeps its scale's float type.
    """
    nodes = {n.name: n for n in model.graph.node}
    order = {name: k for k, name in enumerate(nodes)}
    index = GraphIndex(model)
    writer = _QdqWriter(model)
    groups: dict[str, float] = {}
    for tensor in plan.activations:
        leader = plan.shared.get(tensor, tensor)
        groups[leader] = max(groups.get(leader, 0.0), _amax(ranges, tensor))
    counts = {"activation_qdq_pairs": 0, "weight_dq": 0, "skipped_zero_range": 0}
    for tensor, readers in plan.activations.items():
        amax = groups[plan.shared.get(tensor, tensor)]
        if amax == 0:  # constant 0 on every frame: TensorRT rejects a zero scale
            counts["skipped_zero_range"] += 1
            continue
        by_name: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for node_name, i in readers:
            node = nodes[node_name]
            by_name.setdefault(node.input[i], []).append((node, i))
        for name, uses in by_name.items():
            half = index.dtype(name) == onnx.TensorProto.FLOAT16
            scale = fp16_scale(amax) if half else np.float32(max(amax, 1e-30) / 127)
            first = min((n for n, _ in uses), key=lambda n: order[n.name])
            out = writer.pair(name, np.asarray(scale), first.name)
            for node, i in uses:
                node.input[i] = out
            counts["activation_qdq_pairs"] += 1
    users = {i for n in model.graph.node for i in n.input}
    quantised: dict[str, str] = {}
    for node_name, i in plan.weights:
        node = nodes[node_name]
        name = node.input[i]
        if name not in quantised:
            weights = fp32_weights[name]
            amax = np.abs(weights.reshape(weights.shape[0], -1)).max(axis=1)
            scale = fp16_scale(amax)
            shape = (-1,) + (1,) * (weights.ndim - 1)
            q = np.clip(np.rint(weights / scale.astype(np.float32).reshape(shape)), -127, 127)
            qname = writer.add_init(f"{name}_quantized", q.astype(np.int8))
            quantised[name] = writer.pair(qname, scale, node.name, weights=True)
            counts["weight_dq"] += 1
        node.input[i] = quantised[name]
    writer.finish()
    still_used = {i for n in model.graph.node for i in n.input}
    keep = [t for t in model.graph.initializer if t.name in still_used or t.name not in users]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return counts


def _drop_unused_domains(model: onnx.ModelProto) -> None:
    """Remove opset imports no node uses (quant_pre_process adds onnxruntime's own domains)."""
    used = {n.domain for n in iter_nodes(model.graph)} | {"", "ai.onnx"}
    keep = [o for o in model.opset_import if o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def _set_opset(model: onnx.ModelProto, version: int, source: str | Path) -> onnx.ModelProto:
    """``model`` at default-domain opset >= ``version`` (onnx's version converter)."""
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if current >= version:
        return model
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, version)
    except Exception as exc:  # noqa: BLE001 - the converter raises bare RuntimeErrors
        raise EdgesegError(f"{source}: opset {current} -> {version} (fp16 Q/DQ scales need opset "
                           f"{version}) failed: {str(exc)[:200]}; re-export with "
                           f"edgeseg export --opset {version}") from None


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def quantize_int8(src: str | Path, dst: str | Path,
                  frames: np.ndarray | Sequence[np.ndarray] | FrameReader | None = None, *,
                  method: str = "minmax", flavour: str = "tensorrt", exclude: Sequence[str] = (),
                  cache: str | Path | None = None, preprocess: bool = True,
                  source: str = "calibration frames", made_by: str = "quantize",
                  high_precision: str = "fp32") -> Path:
    """Write an int8 Q/DQ copy of fp32 ``src`` to ``dst``.

    ``frames``: model inputs as (N, *input shape) (see calibration.load_frames)
    or a FrameReader; may be None when ``cache`` holds ranges for this model.
    ``exclude``: node names or op types kept in float besides pre/post-processing.
    ``high_precision``: ``fp16`` makes everything outside the Q/DQ pairs fp16 (tensorrt
    flavour; `Int8Quantizer.quantize_fp16_qdq`), ``fp32`` leaves it as it was.
    """
    _flavour_options(flavour)
    check_high_precision(flavour, high_precision)
    with Int8Quantizer(src, method=method, preprocess=preprocess, cache=cache) as q:
        q.calibrate(frames, source)
        proto = q.quantize(flavour, exclude, made_by, high_precision)
    check_loads(proto, src, "keep the failing node in fp32 with --keep-fp32 NAME")
    return save_model(proto, dst)


def _frames_list(frames: np.ndarray | Sequence[np.ndarray] | FrameReader) -> Sequence[np.ndarray]:
    return frames.frames if isinstance(frames, FrameReader) else frames


def _rank(q: Int8Quantizer, frames: Sequence[np.ndarray], reference: list[np.ndarray],
          flavour: str, candidates: Sequence[str] | None,
          exclude: Sequence[str], high_precision: str = "fp32") -> list[tuple[str, float]]:
    name = q.contract.name
    base = agreement(reference, predict_labels(
        q.quantize(flavour, exclude, high_precision=high_precision), frames, name))
    excluded = set(q.exclusions(exclude))
    if candidates is None:
        candidates = [n.name for n in q.graph.node if n.op_type == "Conv"]
    scores = []
    for node in candidates:
        if node in excluded:
            continue
        proto = q.quantize(flavour, [*exclude, node], high_precision=high_precision)
        scores.append((node, agreement(reference, predict_labels(proto, frames, name)) - base))
    return sorted(scores, key=lambda s: -s[1])


def sensitive_layers(fp32: str | Path, frames: np.ndarray | Sequence[np.ndarray] | FrameReader,
                     *, flavour: str = "tensorrt", method: str = "minmax",
                     candidates: Sequence[str] | None = None, exclude: Sequence[str] = (),
                     cache: str | Path | None = None, preprocess: bool = True,
                     high_precision: str = "fp32") -> list[tuple[str, float]]:
    """Rank nodes by how much keeping each one alone in float raises fp32 agreement.

    Calibrates once (or uses ``cache``), then quantises once per candidate
    (default: every Conv) and scores the argmax agreement with fp32 on
    ``frames``; returns (node, agreement gain) pairs, most sensitive first.
    Costs one quantisation + len(frames) inferences per candidate.
    """
    frames_list = _frames_list(frames)
    with Int8Quantizer(fp32, method=method, preprocess=preprocess, cache=cache) as q:
        q.calibrate(frames)
        reference = predict_labels(fp32, frames_list, q.contract.name)
        return _rank(q, frames_list, reference, flavour, candidates, exclude, high_precision)


@dataclass
class BudgetResult:
    path: Path
    passed: bool
    excluded: list[str] = field(default_factory=list)  # sensitivity exclusions added
    attempts: int = 0


def quantize_with_budget(src: str | Path, dst: str | Path,
                         frames: np.ndarray | Sequence[np.ndarray] | FrameReader,
                         accuracy: Callable[[Path], bool], *, flavour: str = "tensorrt",
                         method: str = "minmax", exclude: Sequence[str] = (),
                         cache: str | Path | None = None, max_excluded: int = 8,
                         candidates: Sequence[str] | None = None,
                         ranking: Sequence[tuple[str, float]] | None = None,
                         preprocess: bool = True, high_precision: str = "fp32") -> BudgetResult:
    """Quantise, then keep the most sensitive layers in float one by one until ``accuracy``
    (called with the candidate int8 file) passes or ``max_excluded`` layers are out.

    ``ranking`` reuses a `sensitive_layers` result (else it is computed when the
    first attempt fails). ``dst`` gets the first passing model, or the last
    attempt with ``passed=False``.
    """
    frames_list = _frames_list(frames)
    with Int8Quantizer(src, method=method, preprocess=preprocess, cache=cache) as q:
        q.calibrate(frames)
        added: list[str] = []
        attempts = 0
        while True:
            attempts += 1
            save_model(q.quantize(flavour, [*exclude, *added], high_precision=high_precision),
                       dst)
            if accuracy(Path(dst)):
                return BudgetResult(Path(dst), True, added, attempts)
            if ranking is None:
                reference = predict_labels(src, frames_list, q.contract.name)
                ranking = _rank(q, frames_list, reference, flavour, candidates, exclude,
                                high_precision)
            if len(added) >= min(max_excluded, len(ranking)):
                logger.warning("int8 target not met with %d layers in float", len(added))
                return BudgetResult(Path(dst), False, added, attempts)
            added.append(ranking[len(added)][0])
