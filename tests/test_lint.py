"""edgeseg lint: a clean export passes; each known TensorRT/DLA violation is named by node."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeseg.export import lint_cli
from edgeseg.export.lint import exit_code, format_findings, lint, validate_trt_qdq
from tests.onnx_models import export_tiny, make_graph_model, value

F, I64 = TensorProto.FLOAT, TensorProto.INT64


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


def _qdq_model(zero_point: np.ndarray) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(zero_point, "zp")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q_x"),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dq_x")]
    return make_graph_model(nodes, [value("x")], [value("y")], inits)


def test_nonzero_and_uint8_zero_points_are_errors() -> None:
    bad = lint(_qdq_model(np.array(3, np.int8)))
    assert {f.node for f in errors(bad)} == {"q_x", "dq_x"}
    assert "not 0" in errors(bad, "q_x")[0].message
    uint8 = validate_trt_qdq(_qdq_model(np.array(0, np.uint8)))
    assert {f.node for f in uint8} == {"q_x", "dq_x"} and "UINT8" in uint8[0].message
    assert validate_trt_qdq(_qdq_model(np.array(0, np.int8))) == []


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
    assert lint_cli.run(parser.parse_args([str(bad_path)])) == 1
    assert "ERROR up_cubic (Resize)" in capsys.readouterr().out
