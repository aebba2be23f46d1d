"""edgeseg lint: a clean export passes; each known TensorRT/DLA violation is named by node."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeseg.export import lint_cli
from edgeseg.export.lint import (
    TrtTarget,
    dla_coverage,
    dla_support,
    exit_code,
    format_findings,
    lint,
    validate_trt_qdq,
)
from tests.onnx_models import export_tiny, make_graph_model, value

F, F16, I64 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT64


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("lint") / "tiny.onnx")  # 64x96: pool 1x1 -> 4x6


def errors(findings: list, node: str | None = None) -> list:
    return [f for f in findings if f.severity == "error" and (node is None or f.node == node)]


def warnings(findings: list, node: str | None = None) -> list:
    return [f for f in findings if f.severity == "warning" and (node is None or f.node == node)]


def test_clean_export_has_no_errors(exported: Path) -> None:
    findings = lint(exported)
    assert findings == [], format_findings(findings)
    assert errors(lint(exported, trt_major=11)) == []


def test_dla_reports_fallbacks_not_errors(exported: Path) -> None:
    findings = lint(exported, dla=True)
    assert errors(findings) == []
    text = format_findings(findings)
    assert "image-pool upsample" in text  # the ASPP 1x1 -> HxW resize
    assert "fp32 graph" in text
    assert any(f.op == "ArgMax" and "falls back to GPU" in f.message for f in findings)
    assert not any(f.op == "Conv" for f in findings)


def _qdq_model(zero_point: np.ndarray | None, scale: float | np.ndarray = 0.1,
               **q_attrs: object) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.asarray(scale, np.float32), "s")]
    args = ["s"]
    if zero_point is not None:
        inits.append(numpy_helper.from_array(zero_point, "zp"))
        args.append("zp")
    nodes = [helper.make_node("QuantizeLinear", ["x", *args], ["q"], name="q_x", **q_attrs),
             helper.make_node("DequantizeLinear", ["q", *args], ["y"], name="dq_x")]
    return make_graph_model(nodes, [value("x")], [value("y")], inits,
                            opset=21 if q_attrs else 17)


def test_zero_points_as_tensorrt_parses_them() -> None:
    bad = lint(_qdq_model(np.array(3, np.int8)))
    assert {f.node for f in errors(bad)} == {"q_x", "dq_x"}
    assert "not 0" in errors(bad, "q_x")[0].message
    assert validate_trt_qdq(_qdq_model(np.array(0, np.int8))) == []
    # TensorRT parses UINT8 or missing zero points as INT8: the build works, the numbers
    # differ from ONNX Runtime's (0..255 there), so warn instead of failing the build
    uint8 = validate_trt_qdq(_qdq_model(np.array(0, np.uint8)))
    assert {f.node for f in uint8} == {"q_x", "dq_x"} and "UINT8" in uint8[0].message
    assert {f.severity for f in uint8} == {"warning"}
    asym_uint8 = validate_trt_qdq(_qdq_model(np.array(128, np.uint8)))
    assert {f.node for f in asym_uint8 if f.severity == "error"} == {"q_x", "dq_x"}
    missing = validate_trt_qdq(_qdq_model(None))
    assert {(f.node, f.severity) for f in missing} == {("q_x", "warning"), ("dq_x", "warning")}
    assert "TensorRT as INT8" in missing[0].message and "int8 zero point of 0" in \
        missing[0].fix.lower()
    assert exit_code(lint(_qdq_model(None))) == 0
    # output_dtype INT8 (opset 21) says int8 without a zero point: nothing to report
    assert validate_trt_qdq(_qdq_model(None, output_dtype=TensorProto.INT8)) == []


def test_scales_must_be_positive_and_match_zero_points() -> None:
    for scale in (0.0, -0.1, np.nan):
        found = errors(lint(_qdq_model(np.array(0, np.int8), scale=scale)))
        assert {f.node for f in found} == {"q_x", "dq_x"}, scale
        assert "positive" in found[0].message and "--keep-fp32" in found[0].fix
    per_channel = _qdq_model(np.zeros(3, np.int8), scale=np.full(3, 0.1))
    assert errors(lint(per_channel)) == []
    mismatch = errors(lint(_qdq_model(np.zeros(3, np.int8), scale=0.1)))
    assert mismatch and "one zero point per scale" in mismatch[0].message


def test_int32_bias_dequantize_is_an_error() -> None:
    inits = [numpy_helper.from_array(np.arange(4, dtype=np.int32), "bias_q"),
             numpy_helper.from_array(np.array(0.01, np.float32), "bias_s"),
             numpy_helper.from_array(np.array(0, np.int32), "bias_zp")]
    node = helper.make_node("DequantizeLinear", ["bias_q", "bias_s", "bias_zp"], ["b"],
                            name="bias_dq")
    findings = lint(make_graph_model([node], [], [value("b", shape=[4])], inits))
    assert [f.node for f in errors(findings)] == ["bias_dq"]
    assert "INT32" in errors(findings)[0].message and "QuantizeBias" in errors(findings)[0].fix


def test_unsupported_and_custom_ops_are_errors() -> None:
    nodes = [helper.make_node("StringNormalizer", ["s"], ["t"], name="norm"),
             helper.make_node("MyPlugin", ["x"], ["y"], name="plugin", domain="acme")]
    model = make_graph_model(nodes, [value("s", TensorProto.STRING, [2]), value("x")],
                             [value("t", TensorProto.STRING, [2]), value("y")],
                             extra_opsets=[("acme", 1)])
    findings = lint(model)
    norm = errors(findings, "norm")
    assert norm and "no TensorRT ONNX importer" in norm[0].message
    assert errors(findings, "plugin") and "plugin" in errors(findings, "plugin")[0].message


def _single_op(op: str, inputs: list[str], opset: int, **attrs: object) -> onnx.ModelProto:
    node = helper.make_node(op, inputs, ["y"], name=op.lower(), **attrs)
    return make_graph_model([node], [value(i) for i in inputs], [value("y")], opset=opset)


def test_ops_and_the_tensorrt_release_that_imports_them() -> None:
    assert lint(_single_op("Mish", ["x"], 18), trt_major=10) == []  # in the 10.x table
    deform = _single_op("DeformConv", ["x", "w", "offset"], 19)
    assert errors(lint(deform, trt_version="10.1.0")) == []
    assert "from TensorRT 10.1" in errors(lint(deform, trt_version="10.0.1"), "deformconv")[0].message
    assert errors(lint(deform)) == [] and warnings(lint(deform), "deformconv")  # 10.x: which?
    assert errors(lint(deform, trt_major=11)) == [] and not warnings(lint(deform, trt_major=11))
    swish = _single_op("Swish", ["x"], 24)
    assert errors(lint(swish, trt_major=11)) == []
    assert "from TensorRT 11.0" in errors(lint(swish, trt_major=10), "swish")[0].message


def _resize(name: str, scales: bool = False, **attrs: object) -> onnx.ModelProto:
    if scales:
        inits = [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
        inputs = ["x", "", "scales"]
    else:
        inits = [numpy_helper.from_array(np.array([1, 3, 16, 16], np.int64), "sizes")]
        inputs = ["x", "", "", "sizes"]
    node = helper.make_node("Resize", inputs, ["y"], name=name, **attrs)
    return make_graph_model([node], [value("x")], [value("y", shape=[1, 3, 16, 16])], inits,
                            opset=19)


def test_resize_modes() -> None:
    assert errors(lint(_resize("up", mode="linear"))) == []
    cubic = errors(lint(_resize("up_cubic", mode="cubic")), "up_cubic")
    assert cubic and "cubic" in cubic[0].message
    aa = errors(lint(_resize("up_aa", mode="linear", antialias=1)), "up_aa")
    assert aa and "antialias" in aa[0].message
    crop = lint(_resize("up_crop", mode="linear",
                        coordinate_transformation_mode="tf_crop_and_resize"))
    assert errors(crop, "up_crop")
    scaled = lint(_resize("up_scales", scales=True, mode="linear"))
    assert errors(scaled) == [] and "scales" in warnings(scaled, "up_scales")[0].message


def test_opset_range_per_trt_version() -> None:
    model = _resize("up", mode="linear")
    model.opset_import[0].version = 26
    assert [f.op for f in errors(lint(model, trt_major=11))] == ["opset"]
    model.opset_import[0].version = 21
    assert [f.op for f in errors(lint(model, trt_major=10))] == ["opset"]
    assert errors(lint(model, trt_major=11)) == []


def test_opset_25_needs_the_11_5_parser() -> None:
    model = _resize("up", mode="linear")
    model.opset_import[0].version = 25
    assert [f.op for f in errors(lint(model, trt_major=10))] == ["opset"]
    assert "from 11.5" in errors(lint(model, trt_version="11.4.1"))[0].message
    assert errors(lint(model, trt_version="11.5.0.10+cu13")) == []
    assert errors(lint(model, trt_version="11.5")) == []
    unknown_minor = lint(model, trt_major=11)
    assert errors(unknown_minor) == []
    assert "only from TensorRT 11.5" in warnings(unknown_minor, "model")[0].message
    model.opset_import[0].version = 24
    assert [f for f in lint(model, trt_major=11) if f.op == "opset"] == []


def test_trt_versions_parse() -> None:
    assert TrtTarget.parse("10.8.0.43+cu12") == TrtTarget(10, 8, 0)
    assert TrtTarget.parse(11) == TrtTarget(11) and str(TrtTarget.parse("11.4")) == "11.4"
    assert TrtTarget.parse("11.4").at_least(11, 5) is False
    assert TrtTarget.parse("11").at_least(11, 5) is None
    assert TrtTarget.parse("11").at_least(10, 1) is True
    with pytest.raises(Exception, match="use a major"):
        TrtTarget.parse("9.2")


def test_argmax_int64_output_warns() -> None:
    node = helper.make_node("ArgMax", ["logits"], ["labels"], name="argmax", axis=1, keepdims=0)
    model = make_graph_model([node], [value("logits", shape=[1, 19, 8, 8])],
                             [value("labels", I64, [1, 8, 8])])
    findings = lint(model)
    assert errors(findings) == []
    assert "TopK" in warnings(findings, "argmax")[0].message
    assert "INT64" in warnings(findings, "labels")[0].message
    cast = helper.make_node("Cast", ["labels"], ["out"], name="cast", to=TensorProto.UINT8)
    fixed = make_graph_model([node, cast], [value("logits", shape=[1, 19, 8, 8])],
                             [value("out", TensorProto.UINT8, [1, 8, 8])])
    assert lint(fixed) == []


def _dynamic_model() -> onnx.ModelProto:
    node = helper.make_node("Relu", ["x"], ["y"], name="relu")
    return make_graph_model([node], [value("x", shape=["batch", 3, 8, 8])],
                            [value("y", shape=["batch", 3, 8, 8])])


def test_dynamic_dims_need_a_consistent_profile() -> None:
    model = _dynamic_model()
    missing = errors(lint(model), "x")
    assert missing and "no profile" in missing[0].message
    good = {"x": {"min": [1, 3, 8, 8], "opt": [2, 3, 8, 8], "max": [4, 3, 8, 8]}}
    assert lint(model, profile=good) == []
    static_clash = {"x": {"min": [1, 3, 8, 8], "opt": [2, 3, 9, 8], "max": [4, 3, 8, 8]}}
    assert "static dims" in errors(lint(model, profile=static_clash), "x")[0].message
    unordered = {"x": {"min": [4, 3, 8, 8], "opt": [2, 3, 8, 8], "max": [1, 3, 8, 8]}}
    assert "min <= opt <= max" in errors(lint(model, profile=unordered), "x")[0].message
    unknown = {"y": good["x"]}
    assert errors(lint(model, profile=unknown), "y")
    assert "DLA needs static" in errors(lint(model, dla=True, profile=good), "x")[0].message


def test_dla_align_corners_resize_falls_back() -> None:
    model = _resize("up_ac", mode="linear", coordinate_transformation_mode="align_corners")
    assert errors(lint(model)) == []
    found = warnings(lint(model, dla=True), "up_ac")
    assert found and "falls back to GPU" in found[0].message and "align_corners" in found[0].message
    assert warnings(lint(_resize("up", mode="linear"), dla=True), "up") == []


def _int8_conv_then_fp32(extra_fp16: bool = False) -> onnx.ModelProto:
    """Q/DQ around one convolution, then an fp32 residual Add and Sigmoid (the shape of a
    graph quantised only at its convolutions)."""
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "zp"),
             numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32), "w"),
             numpy_helper.from_array(np.array(0.05, np.float32), "ws")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q_x"),
             helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="dq_x"),
             helper.make_node("QuantizeLinear", ["w", "ws", "zp"], ["wq"], name="q_w"),
             helper.make_node("DequantizeLinear", ["wq", "ws", "zp"], ["wd"], name="dq_w"),
             helper.make_node("Conv", ["xd", "wd"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Add", ["r", "x"], ["a"], name="residual_add"),
             helper.make_node("Sigmoid", ["a"], ["y"], name="gate")]
    return make_graph_model(nodes, [value("x")], [value("y")], inits)


def test_dla_coverage_counts_fp32_layers_as_gpu() -> None:
    model = _int8_conv_then_fp32()
    coverage = dla_coverage(model)
    # conv (+ its fused Relu) runs int8 on DLA; the fp32 Add and Sigmoid fall back to the GPU
    assert (coverage.dla, coverage.layers) == (1, 3)
    assert [(n, why) for n, _, why in coverage.gpu] == [("residual_add", "fp32"),
                                                         ("gate", "fp32")]
    assert "1/3 layers (33%)" in str(coverage)
    found = warnings(lint(model, dla=True), "model")
    assert any("most of the graph runs on the GPU" in f.message and "residual_add (Add)"
               in f.message for f in found)
    assert not any("most of the graph" in f.message for f in lint(model, dla=False))
    node = helper.make_node("Conv", ["x", "w"], ["c"], name="conv")
    relu = helper.make_node("Relu", ["c"], ["y"], name="relu")
    fp16 = make_graph_model([node, relu], [value("x", F16)], [value("y", F16)],
                            [numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float16), "w")])
    assert (dla_coverage(fp16).dla, dla_coverage(fp16).layers) == (1, 1)
    assert not any("GPU" in f.message for f in lint(fp16, dla=True, trt_version="10.7"))


def test_dla_exists_only_in_some_tensorrt_releases() -> None:
    assert dla_support("10.7.0") == (None, "")
    assert dla_support("10.8")[0] == "error" and "10.7" in dla_support("10.8")[1]
    for version in ("11.0", "11.3.1", "11.4.0"):
        assert dla_support(version)[0] == "error", version
    assert dla_support("11.4.1") == (None, "") and dla_support("11.5") == (None, "")
    assert dla_support("11")[0] == dla_support("10")[0] == dla_support("11.4")[0] == "warning"
    assert "JetPack 7.2.2" in dla_support("11.2")[1]
    model = _resize("up", mode="linear")
    assert [f.op for f in errors(lint(model, dla=True, trt_version="11.2"))] == ["DLA"]
    assert [f.op for f in errors(lint(model, dla=True, trt_version="11.4.1"))] == []


def test_format_and_cli_exit_codes(exported: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    bad = _resize("up_cubic", mode="cubic")
    line = str(errors(lint(bad))[0])
    assert line.startswith("ERROR up_cubic (Resize): ") and " -> " in line
    assert exit_code(lint(bad)) == 1 and exit_code(lint(exported)) == 0
    bad_path = tmp_path / "bad.onnx"
    onnx.save(bad, str(bad_path))
    parser = argparse.ArgumentParser()
    lint_cli.add_arguments(parser)
    assert lint_cli.run(parser.parse_args([str(exported)])) == 0
    assert lint_cli.run(parser.parse_args([str(exported), "--dla", "--trt", "11"])) == 0
    assert "DLA can run 0/" in capsys.readouterr().out  # an fp32 export: all on the GPU
    assert lint_cli.run(parser.parse_args([str(exported), "--dla", "--trt", "11.2"])) == 1
    assert "ERROR model (DLA): TensorRT 11.2 has no DLA" in capsys.readouterr().out
    assert lint_cli.run(parser.parse_args([str(bad_path)])) == 1
    assert "ERROR up_cubic (Resize)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args([str(exported), "--trt", "8.6"])
    assert "use a major" in capsys.readouterr().err
