"""Check an ONNX file against what TensorRT's ONNX parser (and DLA) accept, before a build.

A TensorRT build fails late (on the target, minutes in) and with terse parser
messages; most failures and silent slow paths are visible in the graph: an
opset the parser does not know, an op without an importer, a cubic or
antialiased Resize, asymmetric or INT32-bias Q/DQ nodes, INT64 outputs, dynamic
dims without a profile, layers DLA cannot run. ``lint`` reports each as a
`Finding` naming the node and the fix. Torch-free and onnxruntime-free.

The op list follows onnx-tensorrt's docs/operators.md (the TensorRT 10 table,
Mish and DeformConv included) plus the importers added since (Swish in 11.0); it
is an allow-list, so an op missing from it is reported as an error even if a newer
parser has learned it: check the parser's release notes before silencing one.

The target TensorRT version may be a major (``10``, ``11``) or exact (``11.4.1``):
some limits depend on the minor release (opset 25 parses from 11.5 on, DeformConv
from 10.1, DLA is absent from 10.8-11.3); with a major only they are warnings that
say which version they need.

With ``dla=True`` the linter estimates how much of the graph DLA can run
(`dla_coverage`): DLA runs fp16 and int8 layers only, so in a strongly typed
network every fp32 layer falls back to the GPU, however many Q/DQ nodes the graph
has elsewhere.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeseg.contract.metadata import PREFIX, load_onnx
from edgeseg.errors import EdgesegError

Severity = Literal["error", "warning"]

#: highest default-domain opset TensorRT's ONNX parser reads, by TensorRT major version
#: (onnx-tensorrt docs/operators.md for 10.x; the TensorRT 11 ONNX opset guide for 11.x)
MAX_OPSET = {10: 20, 11: 25}
MIN_OPSET = 9
#: opsets a major's parser reads only from a minor release on (the 11.5 parser added 25)
OPSET_FROM = {25: (11, 5)}
#: ops whose importer arrived in a minor release: DeformConv in 10.1, Swish in 11.0
OPS_FROM = {"DeformConv": (10, 1), "Swish": (11, 0)}

TRT_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast
CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor
Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater
GreaterOrEqual GridSample GroupNormalization GRU HardSigmoid HardSwish Hardmax Identity If
ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log
LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN
RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign
Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Swish Tan
Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor DeformConv
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
#: zero-point types TensorRT quantises to (onnxOpImporters.cpp: INT8, FP8, INT4); UINT8 is
#: read as INT8 with a parser warning
QDQ_TYPES = (TensorProto.INT8, TensorProto.FLOAT8E4M3FN, TensorProto.INT4)


@dataclass(frozen=True)
class TrtTarget:
    """The TensorRT a graph is checked for: a major (``11``) or an exact version
    (``11.4.1``; ``trt.__version__`` strings such as ``10.8.0.43+cu12`` work too)."""

    major: int
    minor: int | None = None
    patch: int | None = None

    @classmethod
    def parse(cls, version: str | int) -> TrtTarget:
        match = re.fullmatch(r"\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:[.+].*)?\s*", str(version))
        if not match or int(match.group(1)) not in MAX_OPSET:
            raise EdgesegError(f"--trt {version}: unknown TensorRT version; use a major "
                               f"({', '.join(map(str, MAX_OPSET))}) or an exact version such "
                               "as 11.4.1")
        major, minor, patch = (int(g) if g is not None else None for g in match.groups())
        return cls(major, minor, patch)  # type: ignore[arg-type]

    def at_least(self, major: int, minor: int) -> bool | None:
        """Whether this TensorRT is ``major.minor`` or newer; None when the minor is unknown."""
        if self.major != major:
            return self.major > major
        return None if self.minor is None else self.minor >= minor

    def __str__(self) -> str:
        return ".".join(str(p) for p in (self.major, self.minor, self.patch) if p is not None)


def dla_support(version: str | int | TrtTarget) -> tuple[Severity | None, str]:
    """(severity, why) when TensorRT ``version`` has no DLA or may not: the last 10.x with DLA
    is 10.7; 11.0-11.3 have none; 11.4.0 only on Windows on ARM; 11.4.1 and later on Jetson
    AGX Orin with JetPack 7.2.2 or later (TensorRT's "Working with DLA", 11.4.1)."""
    t = version if isinstance(version, TrtTarget) else TrtTarget.parse(version)
    jetson = "Jetson AGX Orin has DLA with TensorRT <= 10.7, or 11.4.1+ on JetPack 7.2.2+"
    if t.major == 10:
        if t.minor is None:
            return "warning", f"DLA: TensorRT 10.7 was the last 10.x with DLA ({jetson})"
        return ("error", f"TensorRT {t} has no DLA ({jetson})") if t.minor > 7 else (None, "")
    if t.minor is None:
        return "warning", f"DLA: TensorRT 11.0-11.3 have none ({jetson})"
    if t.minor < 4 or (t.minor == 4 and t.patch == 0):
        return "error", f"TensorRT {t} has no DLA on Jetson ({jetson})"
    if t.minor == 4 and t.patch is None:
        return "warning", f"DLA: TensorRT 11.4.0 has it on Windows on ARM only ({jetson})"
    return None, ""


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
    """Q/DQ nodes TensorRT rejects (errors) or reads differently from ONNX (warnings).

    TensorRT implements only symmetric quantisation: every zero point must be 0,
    every constant scale positive, and an INT32 DQ (how onnxruntime quantises biases,
    QuantizeBias) does not import. A missing or UINT8 zero point parses, but as INT8
    (-128..127) where ONNX and ONNX Runtime use UINT8 (0..255), so every accuracy
    figure measured on the CPU would describe other numbers than TensorRT computes.
    """
    proto = load_onnx(model)
    return _check_qdq(proto, GraphIndex(proto))


def _check_qdq(proto: onnx.ModelProto, index: GraphIndex) -> list[Finding]:
    findings = []
    for node in iter_nodes(proto.graph):
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        name, op = node.name, node.op_type
        if op == "DequantizeLinear" and index.dtype(node.input[0]) == TensorProto.INT32:
            findings.append(Finding(
                "error", name, op,
                f"INT32 input {node.input[0]!r} (a quantised bias): TensorRT cannot parse INT32 DQ",
                "quantise with QuantizeBias=False (edgeseg quantize --flavour tensorrt)"))
            continue
        scale = index.constants.get(node.input[1]) if len(node.input) > 1 else None
        if scale is not None and not np.all(scale > 0):
            findings.append(Finding(
                "error", name, op, f"scale {node.input[1]!r} has values <= 0 or NaN "
                f"({scale.ravel()[:4].tolist()}): TensorRT needs every scale positive",
                "quantise again; a zero scale comes from a tensor that was constant 0 on the "
                "calibration frames: keep that node in float (--keep-fp32 NODE)"))
        zp = node.input[2] if len(node.input) > 2 and node.input[2] else ""
        int8_by_type = (attr(node, "output_dtype", 0) in QDQ_TYPES if op == "QuantizeLinear"
                        else index.dtype(node.input[0]) in QDQ_TYPES)
        if not zp:
            if not int8_by_type:
                findings.append(Finding(
                    "warning", name, op, "no zero point: ONNX reads it as UINT8 (0..255), "
                    "TensorRT as INT8 (-128..127), so ONNX Runtime's numbers (every CPU "
                    "accuracy check) do not predict TensorRT's",
                    "add an INT8 zero point of 0 (symmetric quantisation, --flavour tensorrt)"))
            continue
        elem = index.dtype(zp)
        if elem == TensorProto.UINT8:
            findings.append(Finding(
                "warning", name, op, f"zero point {zp!r} is UINT8: TensorRT reads it as INT8 "
                "(-128..127) where ONNX Runtime computes 0..255, so CPU accuracy checks do not "
                "predict TensorRT", "quantise with QInt8 activations and weights "
                "(--flavour tensorrt)"))
        elif elem not in QDQ_TYPES:
            findings.append(Finding(
                "error", name, op,
                f"zero point {zp!r} is {_type_name(elem)}; TensorRT quantises to INT8 "
                "(or FP8/INT4)", "quantise with QInt8 activations and weights "
                "(--flavour tensorrt)"))
        value = index.constants.get(zp)
        if value is None:
            findings.append(Finding("warning", name, op, f"zero point {zp!r} is not a constant: "
                                    "nothing can check it is 0 before the build",
                                    "fold it to a constant 0"))
        elif np.any(value != 0):
            findings.append(Finding(
                "error", name, op,
                f"zero point {zp!r} is {value.ravel()[:4].tolist()}, not 0 (asymmetric)",
                "quantise symmetrically (ActivationSymmetric/WeightSymmetric, --flavour tensorrt)"))
        elif scale is not None and value.size != scale.size:
            findings.append(Finding(
                "error", name, op, f"zero point {zp!r} has {value.size} values, scale "
                f"{node.input[1]!r} {scale.size}: TensorRT needs one zero point per scale",
                "give the zero point the scale's shape"))
    return findings


def _check_opset(proto: onnx.ModelProto, target: TrtTarget) -> list[Finding]:
    max_opset = MAX_OPSET[target.major]
    findings = []
    for imp in proto.opset_import:
        if imp.domain not in ("", "ai.onnx"):
            continue
        fix = "export with opset_version=17 (edgeseg export --opset 17)"
        if not MIN_OPSET <= imp.version <= max_opset:
            findings.append(Finding(
                "error", "model", "opset", f"opset {imp.version}; the TensorRT {target.major} "
                f"parser reads {MIN_OPSET}-{max_opset}", fix))
        elif imp.version in OPSET_FROM:
            first = OPSET_FROM[imp.version]
            since = f"{first[0]}.{first[1]}"
            new_enough = target.at_least(*first)
            if new_enough is False:
                findings.append(Finding(
                    "error", "model", "opset", f"opset {imp.version}: the TensorRT {target} "
                    f"parser reads up to {imp.version - 1} (opset {imp.version} from {since})",
                    fix))
            elif new_enough is None:
                findings.append(Finding(
                    "warning", "model", "opset", f"opset {imp.version} parses only from "
                    f"TensorRT {since} on; older {target.major}.x parsers reject it",
                    f"{fix}, or lint with --trt {since} or the target's exact version"))
    return findings


def _check_ops(proto: onnx.ModelProto, target: TrtTarget) -> list[Finding]:
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
        elif node.op_type in OPS_FROM:
            first = OPS_FROM[node.op_type]
            since = f"{first[0]}.{first[1]}"
            new_enough = target.at_least(*first)
            if new_enough is False:
                findings.append(Finding(
                    "error", node.name, node.op_type, f"{node.op_type} imports from TensorRT "
                    f"{since} on, not in {target}", "replace it with elementary ops, or target "
                    f"TensorRT {since} or newer"))
            elif new_enough is None:
                findings.append(Finding(
                    "warning", node.name, node.op_type, f"{node.op_type} imports from TensorRT "
                    f"{since} on", f"lint with the target's exact version (--trt {since})"))
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


#: ops TensorRT fuses into the convolution before them (one DLA layer together)
FUSED_INTO_CONV = frozenset({"Relu", "Clip", "LeakyRelu", "PRelu", "Sigmoid", "Tanh",
                             "BatchNormalization"})
#: nodes that are no layer of their own on DLA or GPU (folded, fused or shape arithmetic)
NOT_LAYERS = frozenset({"QuantizeLinear", "DequantizeLinear", "Constant", "Identity",
                        *SHAPE_OPS})
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


@dataclass
class DlaCoverage:
    """How many of a graph's layers DLA can run; ``gpu`` names the others and why."""

    layers: int = 0
    dla: int = 0
    gpu: list[tuple[str, str, str]] = field(default_factory=list)  # (node, op, why)

    @property
    def fraction(self) -> float:
        return self.dla / self.layers if self.layers else 0.0

    def __str__(self) -> str:
        fp32 = sum(why == "fp32" for _, _, why in self.gpu)
        return (f"DLA can run {self.dla}/{self.layers} layers ({self.fraction:.0%}); on the GPU: "
                f"{fp32} fp32, {len(self.gpu) - fp32} without a DLA layer")


def dla_coverage(model: str | Path | onnx.ModelProto) -> DlaCoverage:
    """Estimate which layers a DLA build keeps on DLA.

    A layer counts for DLA when its op has a DLA layer and it runs in fp16 or int8:
    in a strongly typed network that is when its data inputs (and weights) are fp16
    tensors or come out of a DequantizeLinear. Everything else falls back to the GPU
    (with GPU_FALLBACK), an fp32 layer included even if its op has a DLA layer.
    Activations and BatchNormalization right after a convolution count as fused.
    """
    proto = load_onnx(model)
    return _dla_coverage(proto, GraphIndex(proto))


def _low_precision(name: str, index: GraphIndex) -> bool:
    producer = index.producer.get(name)
    return index.dtype(name) in (TensorProto.FLOAT16, TensorProto.BFLOAT16) or (
        producer is not None and producer.op_type == "DequantizeLinear")


def _dla_coverage(proto: onnx.ModelProto, index: GraphIndex) -> DlaCoverage:
    coverage = DlaCoverage()
    on_dla: set[str] = set()  # output names of convolutions counted for DLA
    for node in iter_nodes(proto.graph):
        if node.op_type in NOT_LAYERS:
            continue
        data = [t for t in node.input if t and index.is_float(t) and t not in index.constants]
        if node.op_type in WEIGHTED_OPS and len(node.input) > 1 and \
                node.input[1] in index.constants and index.is_float(node.input[1]):
            data.append(node.input[1])  # float weights set the layer's precision too
        if not data:
            continue  # constant folding or shape arithmetic: no runtime layer
        first = node.input[0] if node.input else ""
        if node.op_type in FUSED_INTO_CONV and first in on_dla and \
                len(index.consumers.get(first, [])) == 1:
            on_dla.update(node.output)
            continue
        coverage.layers += 1
        if node.op_type not in DLA_OPS:
            coverage.gpu.append((node.name, node.op_type, "no DLA layer"))
        elif not all(_low_precision(t, index) for t in data):
            coverage.gpu.append((node.name, node.op_type, "fp32"))
        else:
            coverage.dla += 1
            if node.op_type in ("Conv", "ConvTranspose"):
                on_dla.update(node.output)
    return coverage


def _check_dla(proto: onnx.ModelProto, index: GraphIndex, target: TrtTarget) -> list[Finding]:
    findings = []
    severity, why = dla_support(target)
    if severity is not None:
        findings.append(Finding(severity, "model", "DLA", why,
                                "build for the GPU, or use a TensorRT with DLA"))
    coverage = _dla_coverage(proto, index)
    has_low_precision = any(
        n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in iter_nodes(proto.graph)
    ) or any(t in (TensorProto.FLOAT16, TensorProto.BFLOAT16) for t in index.types.values())
    if not has_low_precision:
        findings.append(Finding("warning", "model", "precision", "fp32 graph: DLA runs fp16 or "
                                f"int8 layers only, so all {coverage.layers} layers fall back to "
                                "the GPU", "edgeseg quantize MODEL -o OUT --precision fp16 "
                                "(or int8)"))
    elif coverage.layers and coverage.fraction < 0.5:
        examples = ", ".join([f"{n or '?'} ({op})" for n, op, why in coverage.gpu
                              if why == "fp32"][:3])
        findings.append(Finding(
            "warning", "model", "precision", f"most of the graph runs on the GPU: {coverage}"
            f"{f'; fp32 e.g. {examples}' if examples else ''}",
            "make the graph fp16 outside the Q/DQ pairs (int8 with an fp16 high-precision "
            "type), or build for the GPU"))
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
         profile: dict[str, dict[str, list[int]]] | None = None,
         trt_version: str | None = None) -> list[Finding]:
    """All findings for building ``onnx_path`` with TensorRT (and DLA).

    ``trt_version`` (e.g. ``11.4.1``, or ``trt.__version__``) overrides ``trt_major``:
    with an exact version the checks that depend on the minor release are exact too.
    ``profile`` maps input names to {"min", "opt", "max"} shapes; by default the
    ranges recorded in the edgeseg metadata are used.
    """
    target = TrtTarget.parse(trt_version if trt_version is not None else trt_major)
    proto = load_onnx(onnx_path)
    index = GraphIndex(proto)
    findings = _check_opset(proto, target) + _check_ops(proto, target)
    for node in iter_nodes(proto.graph):
        if node.op_type == "Resize" and node.domain in ("", "ai.onnx"):
            findings += _check_resize(node, index, dla)
    findings += _check_qdq(proto, index)
    findings += _check_outputs(proto, index)
    findings += _check_shapes(index, profile_from_metadata(proto) if profile is None else profile,
                              dla)
    if dla:
        findings += _check_dla(proto, index, target)
    return findings
