"""fp16 / int8 ONNX variants: load in ONNX Runtime, keep the I/O contract, agree with fp32,
carry their metadata, produce TensorRT-parsable Q/DQ, and reuse the calibration cache."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from edgeseg.contract.metadata import metadata_of as read_metadata
from edgeseg.errors import EdgesegError
from edgeseg.evaluate import agreement
from edgeseg.export import precision_cli
from edgeseg.export.calibration import CalibrationError, input_contract, load_frames
from edgeseg.export.fp16 import convert_fp16
from edgeseg.export.int8 import (
    predict_labels,
    prepost_nodes,
    quantize_int8,
    quantize_with_budget,
    sensitive_layers,
    validate_trt_qdq,
)
from edgeseg.export.lint import lint
from edgeseg.runtime.backends.onnxruntime import create_session
from tests.conftest import CAMVID
from tests.onnx_models import SIZE, block_scene, export_tiny, scene_frames


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("precision")


@pytest.fixture(scope="module")
def fp32(work: Path) -> Path:
    """The tiny DeepLabv3+ trained ~30 steps on block scenes: confident, non-trivial argmax."""
    return export_tiny(work / "fp32.onnx", train_steps=30)


@pytest.fixture(scope="module")
def calib() -> np.ndarray:
    return scene_frames(8, seed=1)


@pytest.fixture(scope="module")
def held_out() -> np.ndarray:
    return scene_frames(6, seed=9)


@pytest.fixture(scope="module")
def reference(fp32: Path, held_out: np.ndarray) -> list[np.ndarray]:
    return predict_labels(fp32, held_out, "frame")


@pytest.fixture(scope="module")
def int8_trt(fp32: Path, work: Path, calib: np.ndarray) -> Path:
    return quantize_int8(fp32, work / "int8_trt.onnx", calib, cache=work / "calib.json",
                         source="block scenes")


def initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def io_types(path: Path) -> list[str]:
    session = create_session(path)
    return [t.type for t in (*session.get_inputs(), *session.get_outputs())]


# --- fp16 ------------------------------------------------------------------------------------


def test_fp16_loads_keeps_uint8_io_and_agrees(fp32: Path, work: Path, held_out: np.ndarray,
                                              reference: list[np.ndarray]) -> None:
    out = convert_fp16(fp32, work / "fp16.onnx")
    assert io_types(out) == ["tensor(uint8)", "tensor(uint8)"]
    proto = onnx.load(str(out))
    weights = {t.name: t.data_type for t in proto.graph.initializer}
    conv_w = [n.input[1] for n in proto.graph.node if n.op_type == "Conv"]
    assert conv_w and all(weights[w] == TensorProto.FLOAT16 for w in conv_w)
    assert TensorProto.FLOAT not in weights.values()
    assert agreement(reference, predict_labels(out, held_out, "frame")) >= 0.99
    meta = read_metadata(proto)
    assert meta.precision == "fp16" and meta.extra["keep_fp32"] == []
    assert meta.labels[0] == "road" and meta.input.format == "uint8-nhwc-bgr"
    assert [f for f in lint(out) if f.severity == "error"] == []


def test_fp16_keep_fp32_by_op_type_and_bad_names(fp32: Path, work: Path) -> None:
    out = convert_fp16(fp32, work / "fp16_keep.onnx", keep_fp32=["Resize"])
    proto = onnx.load(str(out))
    producers = {o: n for n in proto.graph.node for o in n.output}
    for node in (n for n in proto.graph.node if n.op_type == "Resize"):
        feeding = producers[node.input[0]]
        assert feeding.op_type == "Cast" and feeding.attribute[0].i == TensorProto.FLOAT
    assert read_metadata(proto).extra["keep_fp32"] == ["Resize"]
    with pytest.raises(EdgesegError, match="NoSuchNode"):
        convert_fp16(fp32, work / "x.onnx", keep_fp32=["NoSuchNode"])
    with pytest.raises(EdgesegError, match="already fp16"):
        convert_fp16(out, work / "x.onnx")


# --- int8 ------------------------------------------------------------------------------------


def qdq_nodes(proto: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


def test_int8_tensorrt_flavour_is_symmetric_per_channel_and_agrees(
        int8_trt: Path, held_out: np.ndarray, reference: list[np.ndarray]) -> None:
    proto = onnx.load(str(int8_trt))
    inits = initializers(int8_trt)
    nodes = qdq_nodes(proto)
    assert nodes
    for node in nodes:
        zp = inits[node.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), node.name
        assert inits.get(node.input[0], np.zeros(0, np.float32)).dtype != np.int32, node.name
    assert validate_trt_qdq(proto) == []
    producers = {o: n for n in proto.graph.node for o in n.output}
    for conv in (n for n in proto.graph.node if n.op_type == "Conv"):
        dq = producers[conv.input[1]]  # float weight -> Q -> DQ (AddQDQPairToWeight)
        weight = inits[producers[dq.input[0]].input[0]]
        assert dq.op_type == "DequantizeLinear" and weight.dtype == np.float32, conv.name
        axis = {a.name: a.i for a in dq.attribute}.get("axis", 1)
        assert axis == 0 and inits[dq.input[1]].shape == (weight.shape[0],), conv.name
    # pre/post-processing stays float: uint8 in -> Transpose, argmax over float logits
    assert producers["labels"].op_type == "Cast"
    assert producers[producers["labels"].input[0]].op_type == "ArgMax"
    resize = producers[producers[producers["labels"].input[0]].input[0]]
    assert resize.op_type == "Resize"
    assert io_types(int8_trt) == ["tensor(uint8)", "tensor(uint8)"]
    assert agreement(reference, predict_labels(int8_trt, held_out, "frame")) >= 0.95
    meta = read_metadata(proto)
    assert meta.precision == "int8"
    cal = meta.extra["calibration"]
    assert (cal["flavour"], cal["method"], cal["frames"], cal["source"]) == (
        "tensorrt", "minmax", 8, "block scenes")
    assert len(cal["cache_sha256"]) == 64
    assert {"/ArgMax", "/Cast", "/Cast_1", "/net/Resize"} <= set(meta.extra["excluded_nodes"])
    assert [f for f in lint(int8_trt) if f.severity == "error"] == []


def test_int8_onnxruntime_flavour_has_uint8_activations(
        fp32: Path, work: Path, held_out: np.ndarray, reference: list[np.ndarray]) -> None:
    out = quantize_int8(fp32, work / "int8_ort.onnx", cache=work / "calib.json",
                        flavour="onnxruntime")  # ranges from the int8_trt cache
    proto = onnx.load(str(out))
    inits = initializers(out)
    act_zps = {inits[n.input[2]].dtype for n in qdq_nodes(proto)
               if n.op_type == "QuantizeLinear" and n.input[0] not in inits}
    assert act_zps == {np.dtype(np.uint8)}
    assert agreement(reference, predict_labels(out, held_out, "frame")) >= 0.95
    assert validate_trt_qdq(proto)  # asymmetric uint8: TensorRT would reject it
    assert read_metadata(proto).extra["calibration"]["flavour"] == "onnxruntime"


def _scales(path: Path) -> dict[str, np.ndarray]:
    return {k: v for k, v in initializers(path).items() if k.endswith("_scale")}


def test_cache_skips_calibration_and_rejects_other_models(
        fp32: Path, int8_trt: Path, work: Path) -> None:
    cache = work / "calib.json"
    header = json.loads(cache.read_text())["edgeseg"]
    assert header["frames"] == 8 and header["method"] == "minmax"
    again = quantize_int8(fp32, work / "int8_again.onnx", None, cache=cache)  # no frames at all
    first, second = _scales(int8_trt), _scales(again)
    assert first.keys() == second.keys() and all(np.array_equal(first[k], second[k])
                                                 for k in first)
    assert read_metadata(onnx.load(str(again))).extra["calibration"]["frames"] == 8
    other = onnx.load(str(fp32))
    other.metadata_props.add(key="note", value="retrained")  # same tensors, other file
    onnx.save(other, str(work / "other.onnx"))
    with pytest.raises(CalibrationError, match="another model"):
        quantize_int8(work / "other.onnx", work / "x.onnx", None, cache=cache)
    with pytest.raises(CalibrationError, match="method"):
        quantize_int8(fp32, work / "x.onnx", None, cache=cache, method="percentile")
    assert not (work / "x.onnx").exists()


def test_empty_calibration_data_names_the_source(fp32: Path, work: Path, calib: np.ndarray) -> None:
    with pytest.raises(CalibrationError, match="my-frames: no calibration frames"):
        quantize_int8(fp32, work / "x.onnx", calib[:0], source="my-frames")
    with pytest.raises(CalibrationError, match="no calibration frames"):
        quantize_int8(fp32, work / "x.onnx", None)
    with pytest.raises(CalibrationError, match="wants"):
        quantize_int8(fp32, work / "x.onnx", calib[:, 0])  # batch dim missing
    contract = input_contract(fp32)
    junk = work / "junk.mp4"
    junk.write_bytes(b"not a video")
    with pytest.raises(CalibrationError, match="junk.mp4"):
        load_frames(junk, contract)
    with pytest.raises(CalibrationError, match="neither a video"):
        load_frames(work / "missing.mp4", contract)
    (work / "empty_split" / "images" / "val").mkdir(parents=True)
    with pytest.raises(EdgesegError, match="empty_split"):
        load_frames(f"camvid:{work / 'empty_split'}:val", contract)


def _write_video(path: Path, n: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (160, 120))
    rng = np.random.default_rng(0)
    for _ in range(n):
        writer.write(cv2.cvtColor(block_scene(rng, (120, 160))[0], cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def test_input_contract_and_frame_sources(fp32: Path, work: Path) -> None:
    contract = input_contract(fp32)
    assert (contract.name, contract.format, contract.batch) == ("frame", "uint8-nhwc-bgr", 1)
    assert (contract.height, contract.width) == SIZE
    frames = load_frames(_write_video(work / "drive.mp4", 12), contract, count=3, every=4)
    assert frames.shape == (3, 1, *SIZE, 3) and frames.dtype == np.uint8
    if CAMVID.is_dir():
        spec = f"camvid:{CAMVID}:dusk_train"
        assert load_frames(spec, contract, count=2).shape == (2, 1, *SIZE, 3)


def test_float_input_contract_and_prepost(work: Path) -> None:
    path = export_tiny(work / "float.onnx", fmt="float-nchw", size=(32, 48))
    contract = input_contract(path)
    assert (contract.format, contract.height, contract.width) == ("float-nchw", 32, 48)
    rgb = np.full((20, 30, 3), 255, np.uint8)
    x = contract.prepare(rgb)
    assert x.shape == (3, 32, 48) and x.dtype == np.float32
    assert np.allclose(x[:, 0, 0], (1 - np.array(contract.mean)) / np.array(contract.std))
    assert prepost_nodes(path) == ["/Resize"]


# --- sensitivity search ----------------------------------------------------------------------


def test_sensitivity_ranking_and_budget(fp32: Path, int8_trt: Path, work: Path,
                                        calib: np.ndarray) -> None:
    graph = onnx.load(str(fp32)).graph
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    candidates = [convs[0], convs[-1]]  # stem conv and classifier
    cache = work / "calib.json"
    ranking = sensitive_layers(fp32, calib, candidates=candidates, cache=cache)
    assert sorted(n for n, _ in ranking) == sorted(candidates)
    assert ranking[0][1] >= ranking[1][1]
    reference = predict_labels(fp32, calib, "frame")
    baseline = agreement(reference, predict_labels(int8_trt, calib, "frame"))
    top, gain = ranking[0]
    target = baseline + gain  # reachable by excluding exactly the top layer

    def accurate(path: Path) -> bool:
        return agreement(reference, predict_labels(path, calib, "frame")) >= target - 1e-9

    result = quantize_with_budget(fp32, work / "budget.onnx", calib, accurate,
                                  candidates=candidates, cache=cache)
    assert result.passed and result.excluded == ([top] if gain > 0 else [])
    meta = read_metadata(onnx.load(str(result.path)))
    assert set(result.excluded) <= set(meta.extra["excluded_nodes"])
    never = quantize_with_budget(fp32, work / "never.onnx", calib, lambda p: False,
                                 ranking=ranking, cache=cache, max_excluded=1)
    assert not never.passed and never.excluded == [top] and never.attempts == 2


# --- CLI -------------------------------------------------------------------------------------


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    precision_cli.add_arguments(parser)
    return precision_cli.run(parser.parse_args(list(argv)))


def test_quantize_cli(fp32: Path, work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(str(fp32), "-o", str(work / "cli16.onnx"), "--precision", "fp16") == 0
    video = _write_video(work / "calib.mp4", 8)
    assert _cli(str(fp32), "-o", str(work / "cli8.onnx"), "--precision", "int8", "--calib",
                str(video), "--calib-frames", "4", "--calib-every", "2",
                "--calib-cache", str(work / "cli_cache.json")) == 0
    cal = read_metadata(onnx.load(str(work / "cli8.onnx"))).extra["calibration"]
    assert cal["frames"] == 4 and cal["source"] == str(video)
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(EdgesegError, match="calibration frames"):
        _cli(str(fp32), "-o", str(work / "x.onnx"), "--precision", "int8")
    # one --keep-fp32 for both precisions; the calibration flags stay int8-only
    assert _cli(str(fp32), "-o", str(work / "keep8.onnx"), "--precision", "int8", "--calib",
                str(video), "--calib-frames", "4", "--keep-fp32", "Resize") == 0
    with pytest.raises(EdgesegError, match="--calib-cache apply to --precision int8"):
        _cli(str(fp32), "-o", str(work / "x.onnx"), "--precision", "fp16", "--calib-cache",
             str(work / "c.json"))
