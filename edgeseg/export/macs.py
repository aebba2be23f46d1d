"""Multiply-accumulates (MACs) and parameters of an ONNX graph, read from the graph alone.

A network's cost is quoted as GMACs and parameters in papers and datasheets; this
module gives the same two figures for any exported file (fp32, fp16 or int8 Q/DQ)
without torch and without running it, so `edgeseg inspect` can print them.

MACs are counted for the ops that dominate a segmentation network's arithmetic:

- ``Conv`` (also grouped/depthwise, ``ConvInteger``, ``QLinearConv``):
  ``N * C_out * H_out * W_out * (C_in / group) * kH * kW``; the bias add is not a MAC.
- ``ConvTranspose``: ``N * C_in * H_in * W_in * (C_out / group) * kH * kW``.
- ``MatMul`` (also ``MatMulInteger``, ``QLinearMatMul``): ``M * K * N`` per batch.
- ``Gemm``: ``M * K * N`` (the ``C`` add and the alpha/beta scaling are not MACs).

Every other op counts 0: element-wise ops, activations, normalisations, pooling and
resize are memory-bound, and leaving them out is how papers' GMAC figures are counted.
Only the main graph is counted, not the bodies of ``If``/``Loop``/``Scan``.

Shapes come from ONNX shape inference at the graph's input shapes, so those must be
fixed (or fixed with ``input_shapes``). A weight may be an initializer, a ``Constant``,
or reach its node through ``DequantizeLinear`` (int8 Q/DQ), ``QuantizeLinear``,
``Cast`` (fp16) or ``Identity``: its shape is read at the source.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx
from onnx import TensorProto

from edgeseg.errors import EdgesegError

#: ops whose output has the shape of input 0: a weight's shape is read through them
_SHAPE_PRESERVING = frozenset({"DequantizeLinear", "QuantizeLinear", "Cast", "CastLike",
                               "Identity"})
#: convolution op -> its weight input
_CONVS = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}
#: matrix products, A is input 0
_MATMULS = frozenset({"MatMul", "MatMulInteger", "QLinearMatMul"})
#: op -> inputs that hold no weights (quantisation scales and zero points, resize targets)
_NOT_WEIGHTS = {"QuantizeLinear": {1, 2}, "DequantizeLinear": {1, 2},
                "QLinearConv": {1, 2, 4, 5, 6, 7}, "QLinearMatMul": {1, 2, 4, 5, 6, 7},
                "ConvInteger": {2, 3}, "MatMulInteger": {2, 3},
                "Resize": {1, 2, 3}, "Upsample": {1}}
_FLOATS = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16,
                     TensorProto.DOUBLE})
#: quantised weights; int32/int64 are shapes and indices unless `_INT32_WEIGHTS` says so
_SMALL_INTS = frozenset({TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16,
                         TensorProto.UINT16, TensorProto.INT4, TensorProto.UINT4})
#: op -> inputs where an int32 tensor is a quantised bias
_INT32_WEIGHTS = {"DequantizeLinear": {0}, "QLinearConv": {8}}


class MacCountError(EdgesegError):
    """The graph's MACs cannot be counted (an unknown shape); the message names the node."""


@dataclass(frozen=True)
class MacCount:
    """MACs of one forward pass at ``inputs`` and the graph's parameter count."""

    total: int
    by_op: dict[str, int] = field(default_factory=dict)  # op type -> MACs, largest first
    params: int = 0
    inputs: dict[str, tuple[int | None, ...]] = field(default_factory=dict)  # None: dynamic

    @property
    def gmacs(self) -> float:
        """``total`` in billions, the unit papers quote."""
        return self.total / 1e9


def _iter_graphs(graph: Any) -> Iterator[Any]:
    """``graph`` and the ``If``/``Loop``/``Scan`` bodies inside it, at any depth."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _iter_graphs(sub)


def iter_nodes(graph: Any) -> Iterator[Any]:
    """Every node of ``graph`` and of its subgraphs."""
    for g in _iter_graphs(graph):
        yield from g.node


def _prod(dims: Sequence[int]) -> int:
    out = 1
    for d in dims:
        out *= int(d)
    return out


def _tensors(model: onnx.ModelProto) -> dict[str, Any]:
    """name -> TensorProto of every initializer and ``Constant`` tensor (subgraphs too)."""
    out: dict[str, Any] = {}
    for graph in _iter_graphs(model.graph):
        out.update((t.name, t) for t in graph.initializer)
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                value = next((a.t for a in node.attribute if a.name == "value"), None)
                if value is not None:
                    out[node.output[0]] = value
    return out


def count_parameters(model: onnx.ModelProto) -> int:
    """Elements of the graph's weights, each counted once, the same for fp32, fp16 and int8.

    A weight is a floating-point initializer or ``Constant`` (fp32 or fp16), or a small
    integer one (the int8 weight of a Q/DQ graph; an int32 quantised bias) that a node
    reads. Not weights: 1-element tensors, quantisation scales and zero points (per
    channel too), int64/int32 shapes and indices, resize targets, and tensors no node
    reads. So an int8 file counts its int8 weights, not their scales, and matches fp32.
    """
    tensors = _tensors(model)
    uses: dict[str, list[tuple[str, int]]] = {}
    for node in iter_nodes(model.graph):
        for i, name in enumerate(node.input):
            if name in tensors:
                uses.setdefault(name, []).append((node.op_type, i))
    total = 0
    for name, used_at in uses.items():
        t = tensors[name]
        size = _prod(t.dims)
        if size <= 1 or any(i in _NOT_WEIGHTS.get(op, ()) for op, i in used_at):
            continue
        if (t.data_type in _FLOATS or t.data_type in _SMALL_INTS
                or (t.data_type == TensorProto.INT32
                    and all(i in _INT32_WEIGHTS.get(op, ()) for op, i in used_at))):
            total += size
    return total


def _static_shape(value_info: Any) -> tuple[int | None, ...] | None:
    t = value_info.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None
                 for d in t.tensor_type.shape.dim)


def _fix_inputs(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> onnx.ModelProto:
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    inputs = {vi.name: vi for vi in fixed.graph.input}
    for name, dims in shapes.items():
        if name not in inputs:
            raise MacCountError(f"input_shapes names '{name}', not a graph input "
                                f"(inputs: {', '.join(inputs)})")
        shape = inputs[name].type.tensor_type.shape
        if len(shape.dim) != len(dims):
            raise MacCountError(f"input '{name}' has rank {len(shape.dim)}, "
                                f"input_shapes gives {list(dims)}")
        del shape.dim[:]
        for d in dims:
            shape.dim.add().dim_value = int(d)
    return fixed


class _Shapes:
    """Static shapes of a graph's tensors: sources first, then shape inference."""

    def __init__(self, model: onnx.ModelProto, inferred: onnx.ModelProto) -> None:
        self.sources = {name: tuple(int(d) for d in t.dims)
                        for name, t in _tensors(model).items()}
        self.producers = {out: n for n in model.graph.node for out in n.output}
        self.inferred: dict[str, tuple[int | None, ...]] = {}
        g = inferred.graph
        for vi in [*g.input, *g.value_info, *g.output]:
            shape = _static_shape(vi)
            if shape is not None:
                self.inferred[vi.name] = shape
        initializers = {t.name for t in model.graph.initializer}
        self.inputs = {vi.name: self.inferred.get(vi.name, ()) for vi in g.input
                       if vi.name not in initializers}
        self.dynamic = [f"{name}[{','.join('?' if d is None else str(d) for d in shape)}]"
                        for name, shape in self.inputs.items() if None in shape]

    def get(self, name: str) -> tuple[int, ...] | None:
        """The shape of ``name``, read at its source through shape-preserving ops."""
        step = name
        for _ in range(len(self.producers) + 1):
            if step in self.sources:
                return self.sources[step]
            node = self.producers.get(step)
            if node is None or node.op_type not in _SHAPE_PRESERVING or not node.input:
                break
            step = node.input[0]
        shape = self.inferred.get(name)
        if shape is None or None in shape:
            return None
        return shape  # type: ignore[return-value]

    def need(self, node: Any, name: str, what: str) -> tuple[int, ...]:
        shape = self.get(name)
        if shape is None:
            hint = (f"; the graph inputs have dynamic dims ({', '.join(self.dynamic)}): "
                    "fix them with input_shapes" if self.dynamic else "")
            raise MacCountError(f"{node.op_type} node '{node.name or node.output[0]}': the shape "
                                f"of its {what} '{name}' is unknown after shape inference"
                                f"{hint}")
        return shape


def _node_macs(node: Any, shapes: _Shapes) -> int | None:
    """MACs of one node, None for ops that are not counted."""
    op = node.op_type
    if op in _CONVS:
        out = shapes.need(node, node.output[0], "output")
        weight = shapes.need(node, node.input[_CONVS[op]], "weight")  # (C_out, C_in/group, k...)
        return _prod(out) * _prod(weight[1:])
    if op == "ConvTranspose":
        x = shapes.need(node, node.input[0], "input")
        weight = shapes.need(node, node.input[1], "weight")  # (C_in, C_out/group, k...)
        return _prod(x) * _prod(weight[1:])
    if op in _MATMULS:
        out = shapes.need(node, node.output[0], "output")  # (..., M, N)
        return _prod(out) * shapes.need(node, node.input[0], "input A")[-1]  # A: (..., M, K)
    if op == "Gemm":
        trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
        out = shapes.need(node, node.output[0], "output")  # (M, N)
        a_shape = shapes.need(node, node.input[0], "input A")  # (M, K), or (K, M) if transA
        return _prod(out) * a_shape[0 if trans_a else 1]
    return None


def count_macs(model: onnx.ModelProto,
               input_shapes: Mapping[str, Sequence[int]] | None = None) -> MacCount:
    """MACs of one forward pass (see the module docstring for what counts) and parameters.

    ``input_shapes`` (input name -> dims) fixes dynamic inputs first; without it the
    graph's own input shapes are used. Raises `MacCountError` (a ValueError) naming the
    node whose shape shape inference could not fix.
    """
    if input_shapes:
        model = _fix_inputs(model, input_shapes)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=False,
                                                     strict_mode=False, data_prop=True)
    except Exception as exc:  # onnx raises InferenceError and C++-side errors alike
        raise MacCountError(f"shape inference failed: {exc}") from exc
    shapes = _Shapes(model, inferred)
    by_op: dict[str, int] = {}
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        macs = _node_macs(node, shapes)
        if macs is not None:
            by_op[node.op_type] = by_op.get(node.op_type, 0) + macs
    return MacCount(total=sum(by_op.values()),
                    by_op=dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
                    params=count_parameters(model), inputs=shapes.inputs)
