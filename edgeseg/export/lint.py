"""Check an ONNX file against what TensorRT's ONNX parser (and DLA) accept, before a build.

A TensorRT build fails late (on the target, minutes in) and with terse parser
messages; most failures and silent slow paths are visible in the graph: an
opset the parser does not know, an op without an importer, a cubic or
antialiased Resize, asymmetric or INT32-bias Q/DQ nodes, INT64 outputs, dynamic
dims without a profile, layers DLA cannot run. ``lint`` reports each as a
`Finding` naming the node and the fix. Torch-free and onnxruntime-free.

The op list follows onnx-tensorrt's docs/operators.md (TensorRT 8.5 table) plus
the importers added in TensorRT 10 (LayerNormalization, GroupNormalization,
Gelu, IsInf, Hardmax); it is an allow-list, so an op missing from it is
reported as an error even if a newer parser has learned it: check the
parser's release notes before silencing one.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeseg.contract.metadata import PREFIX, load_onnx
from edgeseg.errors import EdgesegError

Severity = Literal["error", "warning"]

#: highest default-domain opset TensorRT's ONNX parser reads, by TensorRT major version
MAX_OPSET = {10: 20, 11: 25}
MIN_OPSET = 9

TRT_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast
CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor
Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater
GreaterOrEqual GridSample GroupNormalization GRU HardSigmoid HardSwish Hardmax Identity If
ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log
LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
MeanVarianceNormalization Min Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN
RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign
Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh
ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

#: ops with a DLA layer (TensorRT DLA docs); the rest run on the GPU with GPU_FALLBACK
DLA_OPS = frozenset("""
Conv ConvTranspose Gemm MatMul Relu Sigmoid Tanh Clip LeakyRelu PRelu Add Sub Mul Div Max Min Pow
Equal Greater Less BatchNormalization LRN Concat Resize Abs Sin Cos Atan Slice Softmax Transpose
Reshape Flatten Squeeze Unsqueeze MaxPool AveragePool GlobalAveragePool GlobalMaxPool ReduceMax
Constant Identity QuantizeLinear DequantizeLinear
""".split())

#: ops that only read shapes: resolved at build time for static shapes
SHAPE_OPS = ("Shape", "Size")
RESIZE_MODES = ("nearest", "linear")
RESIZE_COORD_MODES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric",
                      "tf_half_pixel_for_nn")
DLA_COORD_MODES = ("half_pixel", "pytorch_half_pixel")  # equal unless an output dim is 1
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)
SMALL_INT_TYPES = (TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32)


@dataclass(frozen=True)
class Finding:
    """One problem: ``node`` is a node name (or ``model``/an input name for graph-level ones)."""

    severity: Severity
    node: str
    op: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        text = f"{self.severity.upper()} {self.node or '?'} ({self.op}): {self.message}"
        return text + (f" -> {self.fix}" if self.fix else "")


def format_findings(findings: Iterable[Finding]) -> str:
    """One line per finding (errors first), then a count line."""
    items = sorted(findings, key=lambda f: f.severity != "error")
    errors = sum(f.severity == "error" for f in items)
    lines = [str(f) for f in items]
    lines.append(f"{errors} error(s), {len(items) - errors} warning(s)")
    return "\n".join(lines)


def exit_code(findings: Iterable[Finding]) -> int:
    """1 if any finding is an error (the build would fail), else 0."""
    return int(any(f.severity == "error" for f in findings))


def iter_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node, including those in If/Loop/Scan bodies."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from iter_nodes(sub)


class GraphIndex:
    """Producers, consumers, element types, shapes and constant values of a graph's tensors."""

    def __init__(self, model: onnx.ModelProto) -> None:
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        except Exception:  # noqa: BLE001 - custom ops or broken graphs: lint what we can
            inferred = model
        graph = inferred.graph
        self.graph = graph
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for out in node.output:
                self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers[inp].append(node)
        self.types: dict[str, int] = {}
        self.shapes: dict[str, list[int | str | None]] = {}
        for vi in [*graph.input, *graph.output, *graph.value_info]:
            tt = vi.type.tensor_type
            self.types[vi.name] = tt.elem_type
            if tt.HasField("shape"):
                self.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else
                                        (d.dim_param or None) for d in tt.shape.dim]
        self.constants: dict[str, np.ndarray] = {}
        for init in graph.initializer:
            self.types[init.name] = init.data_type
            self.constants[init.name] = numpy_helper.to_array(init)
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                tensor = node.attribute[0].t
                self.types[node.output[0]] = tensor.data_type
                self.constants[node.output[0]] = numpy_helper.to_array(tensor)
        initializers = {init.name for init in graph.initializer}
        self.inputs = [vi for vi in graph.input if vi.name not in initializers]

    def dtype(self, name: str) -> int:
        return self.types.get(name, TensorProto.UNDEFINED)

    def is_float(self, name: str) -> bool:
        return self.dtype(name) in FLOAT_TYPES


def attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """A node attribute as a Python value (bytes decoded), or ``default``."""
    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _type_name(elem: int) -> str:
    return TensorProto.DataType.Name(elem) if elem else "unknown"


def validate_trt_qdq(model: str | Path | onnx.ModelProto) -> list[Finding]:
    """Q/DQ nodes TensorRT rejects: a zero point that is not int8 0, or an INT32 DequantizeLinear.

    TensorRT implements only symmetric int8 quantisation; a missing zero point
    means uint8 by the ONNX spec, so it is reported too. An INT32 DQ is how
    onnxruntime quantises biases (QuantizeBias); the parser cannot import it.
    """
    proto = load_onnx(model)
    return _check_qdq(proto, GraphIndex(proto))


def _check_qdq(proto: onnx.ModelProto, index: GraphIndex) -> list[Finding]:
    findings = []
    for node in iter_nodes(proto.graph):
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if node.op_type == "DequantizeLinear" and index.dtype(node.input[0]) == TensorProto.INT32:
            findings.append(Finding(
                "error", node.name, node.op_type,
                f"INT32 input {node.input[0]!r} (a quantised bias): TensorRT cannot parse INT32 DQ",
                "quantise with QuantizeBias=False (edgeseg quantize --flavour tensorrt)"))
            continue
        zp = node.input[2] if len(node.input) > 2 and node.input[2] else ""
        if not zp:
            findings.append(Finding(
                "error", node.name, node.op_type, "no zero point: the ONNX default is uint8",
                "use int8 zero points (symmetric quantisation, --flavour tensorrt)"))
            continue
        elem = index.dtype(zp)
        if elem != TensorProto.INT8:
            findings.append(Finding(
                "error", node.name, node.op_type,
                f"zero point {zp!r} is {_type_name(elem)}; TensorRT needs INT8",
                "quantise with QInt8 activations and weights (--flavour tensorrt)"))
        value = index.constants.get(zp)
        if value is None:
            findings.append(Finding("error", node.name, node.op_type,
                                    f"zero point {zp!r} is not a constant", "fold it to 0"))
        elif np.any(value != 0):
            findings.append(Finding(
                "error", node.name, node.op_type,
                f"zero point {zp!r} is {value.ravel()[:4].tolist()}, not 0 (asymmetric)",
                "quantise symmetrically (ActivationSymmetric/WeightSymmetric, --flavour tensorrt)"))
    return findings


def _check_opset(proto: onnx.ModelProto, trt_major: int) -> list[Finding]:
    max_opset = MAX_OPSET.get(trt_major)
    if max_opset is None:
        raise EdgesegError(f"--trt {trt_major}: unknown TensorRT major; use one of "
                           f"{list(MAX_OPSET)}")
    findings = []
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx") and not MIN_OPSET <= imp.version <= max_opset:
            findings.append(Finding(
                "error", "model", "opset",
                f"opset {imp.version}; the TensorRT {trt_major} parser reads "
                f"{MIN_OPSET}-{max_opset}",
                "export with opset_version=17 (edgeseg export --opset 17)"))
    return findings


def _check_ops(proto: onnx.ModelProto) -> list[Finding]:
    findings = []
    for node in iter_nodes(proto.graph):
        if node.domain not in ("", "ai.onnx"):
            findings.append(Finding(
                "error", node.name, f"{node.domain}::{node.op_type}",
                f"custom-domain op {node.domain!r}: the parser needs a TensorRT plugin of "
                "that name",
                "rewrite it with standard ONNX ops or load a plugin library that implements it"))
        elif node.op_type not in TRT_OPS:
            findings.append(Finding(
                "error", node.name, node.op_type,
                f"{node.op_type} has no TensorRT ONNX importer",
                "replace it in the model (or move it out of the graph into pre/post-processing)"))
    return findings


def _resize_scale(node: onnx.NodeProto, index: GraphIndex) -> list[float] | None:
    """Spatial (H, W) upsample factors of a 4-D Resize, from shapes or constant scales."""
    src, dst = index.shapes.get(node.input[0]), index.shapes.get(node.output[0])
    if src and dst and len(src) == len(dst) == 4 and all(isinstance(d, int) and d > 0
                                                         for d in (*src[2:], *dst[2:])):
        return [dst[2] / src[2], dst[3] / src[3]]
    scales = index.constants.get(node.input[2]) if len(node.input) > 2 else None
    if scales is not None and scales.size == 4:
        return [float(scales[2]), float(scales[3])]
    return None


def _check_resize(node: onnx.NodeProto, index: GraphIndex, dla: bool) -> list[Finding]:
    name, findings = node.name, []
    mode = attr(node, "mode", "nearest")
    coord = attr(node, "coordinate_transformation_mode", "half_pixel")
    if mode not in RESIZE_MODES:
        findings.append(Finding("error", name, "Resize", f"mode {mode!r}; TensorRT has "
                                f"{'/'.join(RESIZE_MODES)}", "upsample with mode='bilinear'"))
    if coord not in RESIZE_COORD_MODES:
        findings.append(Finding("error", name, "Resize", f"coordinate_transformation_mode "
                                f"{coord!r} is not supported",
                                "use half_pixel (align_corners=False)"))
    if attr(node, "antialias", 0):
        findings.append(Finding("error", name, "Resize", "antialias=1 is not supported",
                                "resize without antialias (F.interpolate(antialias=False))"))
    if attr(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
        findings.append(Finding("error", name, "Resize", "keep_aspect_ratio_policy is not "
                                "supported", "pass explicit sizes"))
    has_sizes = len(node.input) > 3 and node.input[3]
    if not has_sizes and len(node.input) > 2 and node.input[2]:
        findings.append(Finding(
            "warning", name, "Resize", "uses scales, not sizes: the output size is rounded "
            "from scale x input and can miss the skip connection's size at odd input sizes",
            "upsample with size=skip.shape[-2:] instead of scale_factor"))
    if not dla:
        return findings
    scale = _resize_scale(node, index)
    if mode == "linear" and coord not in DLA_COORD_MODES:
        findings.append(Finding("warning", name, "Resize", f"DLA runs linear Resize only with "
                                f"half_pixel, not {coord!r}: falls back to GPU",
                                "use align_corners=False"))
    elif scale is None:
        findings.append(Finding("warning", name, "Resize", "scale unknown (dynamic shapes): "
                                "DLA needs integer scales 1-4, may fall back to GPU",
                                "export with static input sizes"))
    elif not all(float(s).is_integer() and 1 <= s <= 4 for s in scale):
        src = index.shapes.get(node.input[0]) or []
        pool = len(src) == 4 and src[2:] == [1, 1]
        what = "image-pool upsample (1x1 -> HxW)" if pool else f"scale {scale}"
        findings.append(Finding("warning", name, "Resize", f"{what}: DLA needs integer scales "
                                "1-4, falls back to GPU", "expected for the ASPP image pool; "
                                "otherwise resize in integer steps"))
    return findings


def _check_outputs(proto: onnx.ModelProto, index: GraphIndex) -> list[Finding]:
    findings = []
    for node in iter_nodes(proto.graph):
        if node.op_type not in ("ArgMax", "ArgMin"):
            continue
        users = index.consumers.get(node.output[0], [])
        cast_small = users and all(u.op_type == "Cast" and attr(u, "to") in SMALL_INT_TYPES
                                   for u in users)
        if not cast_small:
            findings.append(Finding(
                "warning", node.name, node.op_type, "lowers to TopK(k=1) with INT64 indices "
                "(8 bytes per pixel to copy back)",
                "cast the indices in the graph: to uint8 (<= 255 classes) or int32"))
    for out in proto.graph.output:
        if out.type.tensor_type.elem_type == TensorProto.INT64:
            findings.append(Finding(
                "warning", out.name, "output", "INT64 graph output: TensorRT computes int32 and "
                "widens, doubling the device-to-host copy", "Cast to int32 or uint8 before it"))
    return findings


def _dims(vi: onnx.ValueInfoProto) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None
            for d in vi.type.tensor_type.shape.dim]


def profile_from_metadata(proto: onnx.ModelProto) -> dict[str, dict[str, list[int]]]:
    """``{input: {"min", "opt", "max"}}`` from the edgeseg metadata's input TensorSpecs."""
    props = {p.key: p.value for p in proto.metadata_props}
    try:
        inputs = json.loads(props.get(PREFIX + "inputs", "[]"))
    except ValueError:
        return {}
    return {t["name"]: t["profile"] for t in inputs if isinstance(t, dict) and t.get("profile")}


def _check_shapes(index: GraphIndex, profile: dict[str, dict[str, list[int]]],
                  dla: bool) -> list[Finding]:
    findings = []
    by_name = {vi.name: vi for vi in index.inputs}
    for name in profile:
        if name not in by_name:
            findings.append(Finding("error", name, "profile", "profile for an input the model "
                                    f"does not have (inputs: {sorted(by_name)})",
                                    "fix the input name in the build profile"))
    for name, vi in by_name.items():
        dims = _dims(vi)
        dynamic = [i for i, d in enumerate(dims) if d is None]
        ranges = profile.get(name)
        if not ranges:
            if dynamic:
                findings.append(Finding(
                    "error", name, "input", f"dynamic dim(s) {dynamic} of shape "
                    f"{['?' if d is None else d for d in dims]} have no profile range",
                    "give min/opt/max shapes in the build profile, or export a static size"))
            continue
        findings += _check_profile(name, dims, ranges)
        if dla and dynamic and not ranges.get("min") == ranges.get("opt") == ranges.get("max"):
            findings.append(Finding("error", name, "input", "DLA needs static shapes but the "
                                    "profile spans a range", "use min = opt = max for DLA"))
    return findings


def _check_profile(name: str, dims: list[int | None],
                   ranges: dict[str, list[int]]) -> list[Finding]:
    def bad(message: str) -> Finding:
        return Finding("error", name, "profile", message, "fix the min/opt/max shapes")

    missing = [k for k in ("min", "opt", "max") if k not in ranges]
    if missing:
        return [bad(f"profile lacks {missing}")]
    shapes = {k: list(ranges[k]) for k in ("min", "opt", "max")}
    findings = []
    for key, shape in shapes.items():
        if len(shape) != len(dims):
            findings.append(bad(f"{key} shape {shape} has rank {len(shape)}, "
                                f"input has {len(dims)}"))
        elif any(d is not None and s != d for s, d in zip(shape, dims, strict=True)):
            findings.append(bad(f"{key} shape {shape} differs from the static dims {dims}"))
        elif any(s < 1 for s in shape):
            findings.append(bad(f"{key} shape {shape} has a dim < 1"))
    if not findings and not all(a <= b <= c for a, b, c in zip(*shapes.values(), strict=True)):
        findings.append(bad(f"needs min <= opt <= max per dim, got {list(shapes.values())}"))
    return findings


def _check_dla_ops(proto: onnx.ModelProto, index: GraphIndex) -> list[Finding]:
    findings = []
    has_low_precision = any(
        n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node
    ) or any(t == TensorProto.FLOAT16 for t in index.types.values())
    if not has_low_precision:
        findings.append(Finding("warning", "model", "precision", "fp32 graph: DLA runs fp16 or "
                                "int8 only, so every layer falls back to GPU",
                                "edgeseg quantize MODEL -o OUT --precision fp16 (or int8)"))
    for node in iter_nodes(proto.graph):
        if node.op_type in DLA_OPS or node.op_type not in TRT_OPS or node.op_type in SHAPE_OPS:
            continue
        tensors = [t for t in (*node.input, *node.output) if t]
        if not any(index.is_float(t) for t in tensors):
            continue  # shape arithmetic: resolved at build time for static shapes
        findings.append(Finding("warning", node.name, node.op_type, "no DLA layer: falls back "
                                "to GPU", "fine for pre/post-processing; keep it out of the "
                                "backbone for a DLA-only build"))
    return findings


def lint(onnx_path: str | Path | onnx.ModelProto, dla: bool = False, trt_major: int = 10,
         profile: dict[str, dict[str, list[int]]] | None = None) -> list[Finding]:
    """All findings for building ``onnx_path`` with TensorRT ``trt_major`` (and DLA).

    ``profile`` maps input names to {"min", "opt", "max"} shapes; by default the
    ranges recorded in the edgeseg metadata are used.
    """
    proto = load_onnx(onnx_path)
    index = GraphIndex(proto)
    findings = _check_opset(proto, trt_major) + _check_ops(proto)
    for node in iter_nodes(proto.graph):
        if node.op_type == "Resize" and node.domain in ("", "ai.onnx"):
            findings += _check_resize(node, index, dla)
    findings += _check_qdq(proto, index)
    findings += _check_outputs(proto, index)
    findings += _check_shapes(index, profile_from_metadata(proto) if profile is None else profile,
                              dla)
    if dla:
        findings += _check_dla_ops(proto, index)
    return findings
