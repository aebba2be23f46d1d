"""MACs and parameters of ONNX graphs: hand-built graphs whose counts are worked out here by
hand, and the committed CamVid source_only files (fp32, int8 Q/DQ, int8+fp16) through
`count_macs` and `edgeseg inspect`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeseg.cli import main
from edgeseg.export.macs import MacCountError, count_macs, count_parameters

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO / "benchmarks" / "results" / "camvid"
SOURCE_ONLY = {p: CAMVID / f"source_only.{p}.onnx" for p in ("fp32", "int8", "int8fp16")}


def _model(nodes: list[onnx.NodeProto], inputs: dict[str, tuple[Sequence[int | str], int]],
           output: str, weights: dict[str, np.ndarray] | None = None,
           out_type: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """One-output graph: ``inputs`` name -> (shape, dtype), ``weights`` as initializers."""
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, dtype, list(shape))
         for n, (shape, dtype) in inputs.items()],
        [helper.make_tensor_value_info(output, out_type, None)],
        initializer=[numpy_helper.from_array(a, n) for n, a in (weights or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(onnx.shape_inference.infer_shapes(model, strict_mode=True))
    return model


def _f32(*shape: int) -> np.ndarray:
    return np.random.default_rng(0).normal(size=shape).astype(np.float32)


def _conv(w_shape: tuple[int, ...], x_shape: tuple[int, ...], weight_nodes: Sequence[
        onnx.NodeProto] = (), weight: str = "w", weights: dict[str, np.ndarray] | None = None,
          **attrs: object) -> onnx.ModelProto:
    """x -> Conv(w, b) -> y; the weight ``weight`` is made by ``weight_nodes`` if given."""
    weights = {"w": _f32(*w_shape), **(weights or {})} if not weight_nodes else dict(weights or {})
    weights["b"] = _f32(w_shape[0])
    conv = helper.make_node("Conv", ["x", weight, "b"], ["y"], name="conv",
                            kernel_shape=list(w_shape[2:]), **attrs)
    return _model([*weight_nodes, conv], {"x": (x_shape, TensorProto.FLOAT)}, "y", weights)


# ------------------------------------------------------------------ Conv


def test_conv_3x3_padded() -> None:
    """3x3 Conv 4->8 on 1x4x10x12, pads 1: output 1x8x10x12, each output 4*3*3 MACs."""
    count = count_macs(_conv((8, 4, 3, 3), (1, 4, 10, 12), pads=[1, 1, 1, 1]))
    assert count.total == 1 * 8 * 10 * 12 * 4 * 3 * 3 == 34560
    assert count.by_op == {"Conv": 34560}
    assert count.params == 8 * 4 * 3 * 3 + 8  # weight + bias
    assert count.inputs == {"x": (1, 4, 10, 12)}
    assert count.gmacs == pytest.approx(34560e-9)


def test_conv_strided_batched_rectangular_kernel() -> None:
    """Batch 2, 3->5, kernel 3x5, stride 2, no pads on 11x17: H_out (11-3)/2+1 = 5,
    W_out (17-5)/2+1 = 7."""
    count = count_macs(_conv((5, 3, 3, 5), (2, 3, 11, 17), strides=[2, 2]))
    assert count.total == 2 * 5 * 5 * 7 * 3 * 3 * 5 == 15750


@pytest.mark.parametrize(("channels_out", "group", "macs"), [
    (6, 6, 1 * 6 * 8 * 8 * (6 // 6) * 3 * 3),  # depthwise: one input channel per output
    (6, 2, 1 * 6 * 8 * 8 * (6 // 2) * 3 * 3),  # two groups of 3 input channels
    (12, 3, 1 * 12 * 8 * 8 * (6 // 3) * 3 * 3),  # channel multiplier 4 over 3 groups
])
def test_grouped_and_depthwise_conv(channels_out: int, group: int, macs: int) -> None:
    """1x6x8x8, 3x3, pads 1; the weight is (C_out, C_in/group, 3, 3)."""
    model = _conv((channels_out, 6 // group, 3, 3), (1, 6, 8, 8), pads=[1, 1, 1, 1], group=group)
    assert count_macs(model).total == macs


def test_conv_weight_through_dequantize_linear_from_int8() -> None:
    """An int8 Q/DQ Conv: the weight is DequantizeLinear(int8 initializer, per-channel scale,
    zero point), the activation goes through Q/DQ too; MACs as in fp32 (34560), parameters
    are the int8 weights and the bias, not the scales and zero points."""
    weights = {"w_q": np.random.default_rng(1).integers(-127, 128, (8, 4, 3, 3)).astype(np.int8),
               "w_scale": np.full(8, 0.01, np.float32), "w_zp": np.zeros(8, np.int8),
               "x_scale": np.array(0.02, np.float32), "x_zp": np.array(0, np.int8)}
    nodes = [helper.make_node("QuantizeLinear", ["x_in", "x_scale", "x_zp"], ["x_q"]),
             helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_dq"], axis=0)]
    weights["b"] = _f32(8)
    conv = helper.make_node("Conv", ["x", "w_dq", "b"], ["y"], kernel_shape=[3, 3],
                            pads=[1, 1, 1, 1])
    model = _model([*nodes, conv], {"x_in": ((1, 4, 10, 12), TensorProto.FLOAT)}, "y", weights)
    count = count_macs(model)
    assert count.total == 1 * 8 * 10 * 12 * 4 * 3 * 3
    assert count.params == 8 * 4 * 3 * 3 + 8
    assert count.inputs == {"x_in": (1, 4, 10, 12)}


def test_conv_weight_through_quantize_then_dequantize_from_fp32() -> None:
    """A Q/DQ graph that quantises its fp32 weight in the graph (Q then DQ): the fp32
    weight is the parameter, once."""
    weights = {"w": _f32(8, 4, 3, 3), "s": np.full(8, 0.01, np.float32),
               "zp": np.zeros(8, np.int8)}
    nodes = [helper.make_node("QuantizeLinear", ["w", "s", "zp"], ["w_q"], axis=0),
             helper.make_node("DequantizeLinear", ["w_q", "s", "zp"], ["w_dq"], axis=0)]
    model = _conv((8, 4, 3, 3), (1, 4, 10, 12), nodes, "w_dq", weights, pads=[1, 1, 1, 1])
    count = count_macs(model)
    assert count.total == 1 * 8 * 10 * 12 * 4 * 3 * 3
    assert count.params == 8 * 4 * 3 * 3 + 8


def test_conv_weight_through_cast_from_fp16() -> None:
    """An fp16 weight cast to fp32 before the Conv: same MACs and parameters as fp32."""
    weights = {"w16": _f32(8, 4, 3, 3).astype(np.float16)}
    nodes = [helper.make_node("Cast", ["w16"], ["w32"], to=TensorProto.FLOAT)]
    model = _conv((8, 4, 3, 3), (1, 4, 10, 12), nodes, "w32", weights, pads=[1, 1, 1, 1])
    count = count_macs(model)
    assert count.total == 1 * 8 * 10 * 12 * 4 * 3 * 3
    assert count.params == 8 * 4 * 3 * 3 + 8


def test_qlinear_conv_reads_its_weight_at_input_3() -> None:
    """QLinearConv (QOperator int8): 4->8, 3x3, pads 1 on 1x4x10x12, as Conv."""
    weights = {"xs": np.array(0.02, np.float32), "xz": np.array(0, np.uint8),
               "w": np.ones((8, 4, 3, 3), np.int8), "ws": np.full(8, 0.01, np.float32),
               "wz": np.zeros(8, np.int8), "ys": np.array(0.1, np.float32),
               "yz": np.array(0, np.uint8), "b": np.zeros(8, np.int32)}
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"],
                            ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    model = _model([node], {"x": ((1, 4, 10, 12), TensorProto.UINT8)}, "y", weights,
                   TensorProto.UINT8)
    count = count_macs(model)
    assert count.by_op == {"QLinearConv": 1 * 8 * 10 * 12 * 4 * 3 * 3}
    assert count.params == 8 * 4 * 3 * 3 + 8  # int8 weight + int32 bias


# ------------------------------------------------------------------ ConvTranspose


def test_conv_transpose_strided() -> None:
    """ConvTranspose 8->4, kernel 4, stride 2, pads 1 on 1x8x5x6 -> 1x4x10x12: every input
    pixel of every input channel is multiplied into (C_out/group) * 4 * 4 outputs."""
    w = _f32(8, 4, 4, 4)  # (C_in, C_out/group, kH, kW)
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], kernel_shape=[4, 4],
                            strides=[2, 2], pads=[1, 1, 1, 1])
    model = _model([node], {"x": ((1, 8, 5, 6), TensorProto.FLOAT)}, "y", {"w": w})
    count = count_macs(model)
    assert count.total == 1 * 8 * 5 * 6 * 4 * 4 * 4 == 15360
    assert count.by_op == {"ConvTranspose": 15360} and count.params == 8 * 4 * 4 * 4


def test_conv_transpose_grouped_batched() -> None:
    """Batch 3, group 2, 8->4 channels (2 per group), kernel 2x3, stride 2 on 5x6."""
    w = _f32(8, 4 // 2, 2, 3)
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], kernel_shape=[2, 3],
                            strides=[2, 2], group=2)
    model = _model([node], {"x": ((3, 8, 5, 6), TensorProto.FLOAT)}, "y", {"w": w})
    assert count_macs(model).total == 3 * 8 * 5 * 6 * (4 // 2) * 2 * 3 == 8640


# ------------------------------------------------------------------ MatMul and Gemm


def test_batched_matmul() -> None:
    """(2,3,5,7) @ (7,4) -> (2,3,5,4): 2*3 batches of M=5, K=7, N=4."""
    node = helper.make_node("MatMul", ["a", "b"], ["y"])
    model = _model([node], {"a": ((2, 3, 5, 7), TensorProto.FLOAT)}, "y", {"b": _f32(7, 4)})
    count = count_macs(model)
    assert count.total == 2 * 3 * 5 * 7 * 4 == 840
    assert count.by_op == {"MatMul": 840} and count.params == 7 * 4


def test_matmul_integer() -> None:
    """MatMulInteger (3,5) @ (5,2): M=3, K=5, N=2."""
    node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
    b = np.ones((5, 2), np.uint8)
    model = _model([node], {"a": ((3, 5), TensorProto.UINT8)}, "y", {"b": b}, TensorProto.INT32)
    assert count_macs(model).by_op == {"MatMulInteger": 3 * 5 * 2}


@pytest.mark.parametrize(("trans_a", "a_shape"), [(0, (5, 7)), (1, (7, 5))])
def test_gemm_trans_b(trans_a: int, a_shape: tuple[int, int]) -> None:
    """Gemm with transB (B stored as N x K = 4x7) and a bias: M=5, K=7, N=4 either way
    round A is stored; the bias add is not a MAC."""
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], transA=trans_a, transB=1)
    model = _model([node], {"a": (a_shape, TensorProto.FLOAT)}, "y",
                   {"b": _f32(4, 7), "c": _f32(4)})
    count = count_macs(model)
    assert count.total == 5 * 7 * 4 == 140
    assert count.params == 4 * 7 + 4


# ------------------------------------------------------------------ what is not counted


def test_memory_bound_ops_count_zero_and_shapes_are_not_parameters() -> None:
    """Relu, Clip, Add, Resize add no MACs; scalars, int64 shapes and resize scales are not
    parameters. Conv 3->4 1x1 on 1x3x6x8, then x2 resize and a reshape."""
    weights = {"w": _f32(4, 3, 1, 1), "lo": np.array(0, np.float32),
               "hi": np.array(6, np.float32), "shift": _f32(1, 4, 1, 1),
               "scales": np.array([1, 1, 2, 2], np.float32),
               "shape": np.array([1, 4, -1], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]),
             helper.make_node("Clip", ["c", "lo", "hi"], ["r"]),
             helper.make_node("Add", ["r", "shift"], ["a"]),
             helper.make_node("Resize", ["a", "", "scales"], ["z"], mode="linear"),
             helper.make_node("Relu", ["z"], ["u"]),
             helper.make_node("Reshape", ["u", "shape"], ["y"])]
    model = _model(nodes, {"x": ((1, 3, 6, 8), TensorProto.FLOAT)}, "y", weights)
    count = count_macs(model)
    assert count.by_op == {"Conv": 1 * 4 * 6 * 8 * 3 * 1 * 1} and count.total == 576
    assert count.params == 4 * 3 + 4  # conv weight + the per-channel shift
    assert count_parameters(model) == count.params


def test_a_dynamic_input_is_a_clear_error_naming_the_node_or_fixed_by_input_shapes() -> None:
    model = _conv((8, 4, 3, 3), (1, 4, "H", "W"), pads=[1, 1, 1, 1])
    with pytest.raises(ValueError, match=r"Conv node 'conv'.*output 'y'.*x\[1,4,\?,\?\]"):
        count_macs(model)
    with pytest.raises(MacCountError):
        count_macs(model)
    fixed = count_macs(model, {"x": (1, 4, 10, 12)})
    assert fixed.total == 1 * 8 * 10 * 12 * 4 * 3 * 3 and fixed.inputs == {"x": (1, 4, 10, 12)}
    with pytest.raises(MacCountError, match="not a graph input"):
        count_macs(model, {"frame": (1, 4, 10, 12)})


# ------------------------------------------------------------------ the committed files


@pytest.fixture(scope="module")
def source_only() -> dict[str, object]:
    return {p: count_macs(onnx.load(str(f), load_external_data=False))
            for p, f in SOURCE_ONLY.items()}


def test_source_only_fp32_int8_int8fp16_count_alike(source_only: dict) -> None:
    """The same network in three precisions: the same MACs, parameters within 1 %.

    Order of magnitude: MobileNet-v2 is about 0.3 GMACs at 224x224, so about
    0.3 * (480*360)/(224*224) = 1.0 GMACs at 480x360; the DeepLabv3+ ASPP (256 channels at
    stride 16) and decoder (at stride 4) add one to a few more: between 1 and 20 GMACs.
    """
    fp32 = source_only["fp32"]
    for precision, count in source_only.items():
        print(f"source_only {precision}: {count.total:,} MACs ({count.gmacs:.3f} G), "
              f"{count.params:,} parameters, by op {count.by_op}")
        assert count.total == fp32.total and count.by_op == fp32.by_op
        assert abs(count.params - fp32.params) <= 0.01 * fp32.params
        assert count.inputs == {"frame": (1, 360, 480, 3)}
    assert 1e9 < fp32.total < 20e9
    assert 2e6 < fp32.params < 5e6  # MobileNet-v2 features 2.2 M + a separable head


def test_inspect_prints_compute_and_json_has_macs(source_only: dict,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = SOURCE_ONLY["fp32"]
    fp32 = source_only["fp32"]
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    gmacs = f"{fp32.total / 1e9:.2f}"
    assert f"  compute     {gmacs} GMACs at 1x360x480x3 (Conv {gmacs})" in text
    assert f"{fp32.params:,} parameters" in text
    assert main(["inspect", str(path), "--json", "-"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["macs"] == {"total": fp32.total, "by_op": {"Conv": fp32.total},
                            "inputs": {"frame": [1, 360, 480, 3]}}
    assert info["parameters"] == fp32.params


def test_inspect_of_a_dynamic_graph_counts_parameters_not_macs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "dynamic.onnx"
    onnx.save(_conv((8, 4, 3, 3), (1, 4, "H", "W"), pads=[1, 1, 1, 1]), str(path))
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "  compute     not counted: Conv node 'conv'" in text and "296 parameters" in text
    assert main(["inspect", str(path), "--json", "-"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["macs"] is None and info["parameters"] == 8 * 4 * 3 * 3 + 8


def test_inspect_of_the_committed_translator_counts_transposed_convs_and_no_labels(
        capsys: pytest.CaptureFixture[str]) -> None:
    """The Mutual-GAN translator is an image network: its compute includes the fractionally
    strided convolutions, and it has no label line (the segmenter's has one)."""
    path = SOURCE_ONLY["fp32"].parent / "mutual_gan.translator.fp32.onnx"
    assert main(["inspect", str(path), "--json", "-"]) == 0
    info = json.loads(capsys.readouterr().out)
    by_op = info["macs"]["by_op"]
    assert set(by_op) == {"Conv", "ConvTranspose"} and by_op["ConvTranspose"] > 0
    assert info["macs"]["total"] == by_op["Conv"] + by_op["ConvTranspose"]
    assert info["macs"]["total"] > 20 * 3.0e9  # far more than the 3.7-GMAC segmenter
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "  network     translator" in text and "  labels" not in text
    assert main(["inspect", str(SOURCE_ONLY["fp32"])]) == 0
    assert "  labels      camvid11 (11): sky, building" in capsys.readouterr().out
