"""FP16 ONNX: the form TensorRT 10/11 builds as an fp16 engine (strong typing, no builder flag).

Precision lives in the graph (docs/tensorrt.md), so fp16 means fp16 weights and
activations in the ONNX itself, with graph inputs/outputs kept in their
original types (uint8 frame in, uint8 labels out). onnxconverter-common does
the conversion; two of its defaults do not fit segmentation and are changed:

* its default op block list keeps every Resize in fp32 behind Cast pairs,
  which for DeepLabv3+ means the decoder and the full-resolution logits
  upsample run in fp32. TensorRT and ONNX Runtime both run fp16 Resize, and on
  the tiny DeepLabv3+/MobileNet-v2 the fp16-Resize argmax matched fp32 on
  99.998% of pixels (same as with fp32 Resize), so Resize is converted.
  ``keep_fp32=["Resize"]`` (or a node name) restores the old behaviour.
* it converts an in-graph ``Cast(to=FLOAT)`` (the uint8 -> float
  preprocessing cast) in the value types but not in the ``to`` attribute,
  which ONNX Runtime rejects; `_retarget_casts` repairs that.

An image network (translator, relighting: uint8 frame out) keeps its output conversion
(tanh, scale to 0..255, round, clip: `output_stage`) in fp32: in fp16, values above 128
are spaced 0.125 apart, so rounding to uint8 moved 4x more values by one level (PSNR
against fp32 62.7 -> 68.9 dB on small ResNet generators, ngf 8 and 16, fitted to brighten
synthetic night frames).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto

from edgeseg.contract.metadata import load_onnx, metadata_or_none, set_metadata
from edgeseg.errors import EdgesegError
from edgeseg.export.lint import SHAPE_OPS, GraphIndex, iter_nodes
from edgeseg.fileio import atomic_path
from edgeseg.runtime.backends.onnxruntime import create_session
from edgeseg.runtime.stages import IMAGE_NETWORKS

logger = logging.getLogger("edgeseg.export")

#: ops onnxconverter-common keeps in fp32 by default that segmentation wants in fp16
FP16_OK = frozenset({"Resize", "Upsample"})
#: ops that start/end "the network": pre/post-processing is what lies outside them
ANCHOR_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})


def is_image_network(proto: onnx.ModelProto) -> bool:
    """The model's metadata says translator or relighting (uint8 frame in and out)."""
    meta = metadata_or_none(proto)
    return meta is not None and meta.network in IMAGE_NETWORKS


def output_stage(model: str | Path | onnx.ModelProto) -> tuple[list[str], list[str]]:
    """(the last weighted layers, the nodes after them up to the graph outputs).

    Walks back from the outputs along every data input to the first Conv/ConvTranspose/
    MatMul/Gemm met (the layers that make the output), then forward from those to the
    outputs: for an image network the tanh, scaling, rounding and uint8 cast, and a
    relighting net's residual add. Shape ops only size tensors and are skipped.
    """
    proto = load_onnx(model)
    index = GraphIndex(proto)
    last: dict[str, onnx.NodeProto] = {}
    seen: set[str] = set()
    queue = [index.producer[o.name] for o in proto.graph.output if o.name in index.producer]
    while queue:
        node = queue.pop()
        if node.name in seen or node.op_type in SHAPE_OPS:
            continue
        seen.add(node.name)
        if node.op_type in ANCHOR_OPS:
            last[node.name] = node
            continue
        queue += [index.producer[i] for i in node.input if i in index.producer]
    after: dict[str, None] = {}
    queue = [c for node in last.values() for out in node.output
             for c in index.consumers.get(out, [])]
    while queue:
        node = queue.pop()
        if node.name in after or node.op_type in ANCHOR_OPS or node.op_type in SHAPE_OPS:
            continue
        after[node.name] = None
        queue += [c for out in node.output for c in index.consumers.get(out, [])]
    order = {n.name: i for i, n in enumerate(proto.graph.node)}
    return (sorted(last, key=order.__getitem__), sorted(after, key=order.__getitem__))


def update_metadata(proto: onnx.ModelProto, precision: str, extra: dict[str, Any]) -> None:
    """Carry the source metadata into a converted model with its new precision and details.

    A model without edgeseg metadata stays without (a warning says so): the
    runtime will then refuse it with a message pointing at ``edgeseg export``.
    """
    meta = metadata_or_none(proto)
    if meta is None:
        logger.warning("model has no edgeseg metadata; the %s model will not either", precision)
        return
    meta.precision = precision
    meta.extra = {**meta.extra, **extra}
    set_metadata(proto, meta)


def model_precision(proto: onnx.ModelProto) -> str:
    """"int8" (Q/DQ nodes), "fp16" (fp16 initializers) or "fp32", read from the graph itself."""
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in iter_nodes(proto.graph)):
        return "int8"
    if any(t.data_type == TensorProto.FLOAT16 for t in proto.graph.initializer):
        return "fp16"
    return "fp32"


def require_fp32(proto: onnx.ModelProto, source: str | Path, target: str) -> None:
    """Refuse to convert an already converted model (its rounding would compound)."""
    precision = model_precision(proto)
    if precision != "fp32":
        raise EdgesegError(f"{source}: this model is already {precision}; convert the fp32 "
                           f"export to {target} instead")


def resolve_nodes(graph: onnx.GraphProto, names: Iterable[str],
                  what: str) -> tuple[list[str], list[str]]:
    """Split user entries into (op types, node names) present in the graph; unknown -> error."""
    nodes = list(iter_nodes(graph))
    op_types = {n.op_type for n in nodes}
    node_names = {n.name for n in nodes}
    ops, found, unknown = [], [], []
    for name in names:
        if name in op_types:
            ops.append(name)
        elif name in node_names:
            found.append(name)
        else:
            unknown.append(name)
    if unknown:
        sample = ", ".join(sorted(n.name for n in nodes if n.op_type == "Conv")[:3])
        raise EdgesegError(
            f"{what}: {unknown} match no op type or node name in the model (op types: "
            f"{sorted(op_types)}; node names look like {sample}; list them with "
            "`polygraphy inspect model MODEL.onnx --show layers`)")
    return ops, found


def _retarget_casts(proto: onnx.ModelProto) -> None:
    """Make Cast targets and value_info agree after conversion.

    The graph's own Cast(to=FLOAT) (uint8 frame -> float) feeds fp16 ops now: retarget it
    to FLOAT16. The converter's inserted casts around blocked nodes (``*_input_cast*``,
    ``*_output_cast*``) keep their target, but their outputs' value_info is left stale
    (e.g. a kept-fp32 Resize feeding an fp16 Concat): ORT rejects that, so fix the info.
    """
    infos = {vi.name: vi for vi in proto.graph.value_info}
    for node in proto.graph.node:
        info = infos.get(node.output[0]) if node.op_type == "Cast" else None
        if info is None:
            continue
        to = next(a for a in node.attribute if a.name == "to")
        declared = info.type.tensor_type
        if "_input_cast" in node.name or "_output_cast" in node.name:
            declared.elem_type = to.i
        elif to.i == TensorProto.FLOAT and declared.elem_type == TensorProto.FLOAT16:
            to.i = TensorProto.FLOAT16


def check_loads(proto: onnx.ModelProto, source: str | Path, hint: str) -> None:
    """onnx.checker plus an ONNX Runtime CPU session: a converted model must at least load."""
    try:
        onnx.checker.check_model(proto)
        create_session(proto.SerializeToString(), source=source)
    except Exception as exc:  # noqa: BLE001 - checker and ORT raise many types
        raise EdgesegError(f"{source}: the converted model does not load "
                           f"({type(exc).__name__}: {str(exc)[:300]}); {hint}") from None


def save_model(proto: onnx.ModelProto, dst: str | Path) -> Path:
    """Write atomically (temp name + rename): no truncated ONNX under the final name."""
    dst = Path(dst)
    with atomic_path(dst) as tmp:
        onnx.save(proto, str(tmp))
    return dst


def to_float16(proto: onnx.ModelProto, keep_ops: Iterable[str] = (),
               keep_nodes: Iterable[str] = (), keep_io_types: bool = True) -> onnx.ModelProto:
    """The fp16 graph of fp32 ``proto`` (no metadata, no load check): ``keep_ops`` op types and
    ``keep_nodes`` node names stay fp32 behind Cast pairs, besides onnxconverter-common's
    default block list less Resize (`FP16_OK`). Shared by the fp16 variant and by int8 with an
    fp16 high-precision type, so both keep the same layers in fp32."""
    from onnxconverter_common.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    block_ops = sorted((set(DEFAULT_OP_BLOCK_LIST) - FP16_OK) | set(keep_ops))
    with warnings.catch_warnings(record=True) as caught:  # one warning per clamped value
        warnings.simplefilter("always")
        converted = convert_float_to_float16(proto, keep_io_types=keep_io_types,
                                             op_block_list=block_ops,
                                             node_block_list=list(keep_nodes))
    clamped = sum("truncated" in str(w.message) for w in caught)
    if clamped:
        logger.info("%d weights outside fp16's range were clamped (to 1e-7 .. 1e4)", clamped)
    _retarget_casts(converted)
    return converted


def convert_fp16(src: str | Path, dst: str | Path, keep_fp32: Sequence[str] = (),
                 keep_io_types: bool = True, made_by: str = "quantize") -> Path:
    """Write an fp16 copy of ``src`` to ``dst``; ``keep_fp32`` lists op types or node names
    to leave in fp32 (e.g. ``["ArgMax"]`` or a sensitive Conv's name). An image network's
    `output_stage` stays in fp32 too (metadata ``output_fp32``). ``made_by`` (the command)
    goes into the metadata so no other stage overwrites the file unasked."""
    proto = load_onnx(src)
    require_fp32(proto, src, "fp16")
    ops, nodes = resolve_nodes(proto.graph, keep_fp32, "--keep-fp32")
    extra: dict[str, Any] = {"keep_fp32": list(keep_fp32), "made_by": made_by}
    if is_image_network(proto):
        output_fp32 = output_stage(proto)[1]
        nodes = list(dict.fromkeys([*nodes, *output_fp32]))
        extra["output_fp32"] = output_fp32
    converted = to_float16(proto, ops, nodes, keep_io_types)
    update_metadata(converted, "fp16", extra)
    check_loads(converted, src, "keep the failing node in fp32 with --keep-fp32 NAME")
    return save_model(converted, dst)
