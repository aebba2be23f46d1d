"""A translator's reduced precision, measured: `edgeseg quantize` on a translator ONNX (fp16,
int8 calibrated through the uint8 frame input) and `edgeseg compare` of two image networks
(PSNR / SSIM of the translated frames, the gate, and a segmenter's mIoU after each).

Everything is real files: the tiny checkpoint of `tiny_checkpoint` gets a CycleGAN ResNet
generator (instance norm, transposed convs, tanh) fitted for a few seconds to brighten the
synthetic night frames (an untrained generator's near-constant or saturated output says
nothing about rounding), exported with `edgeseg export --network gen_t2s`, quantised with
`edgeseg quantize`, and compared with `edgeseg compare`, all through `edgeseg.cli.main`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgeseg.cli import main
from edgeseg.contract.metadata import read_metadata
from edgeseg.data import open_dataset
from edgeseg.errors import EdgesegError
from edgeseg.export.compare import compare_models
from edgeseg.export.fp16 import output_stage
from edgeseg.export.int8 import Int8Quantizer, prepost_nodes, validate_trt_qdq
from edgeseg.metrics import psnr, ssim
from edgeseg.runtime.backends.onnxruntime import OrtBackend, create_session
from edgeseg.runtime.sources import SourceFrame
from edgeseg.runtime.stages import Packet, TranslateStage
from edgeseg.train.checkpoint import load_checkpoint, save_checkpoint
from edgeseg.train.nets.registry import build_net, net_spec

SIZE = "64x32"  # WxH of the tiny synthetic set


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compare_images")


@pytest.fixture(scope="module")
def spec(tiny_synth: Path) -> str:
    return f"synthetic:{tiny_synth}:night_val"


@pytest.fixture(scope="module")
def calib(tiny_synth: Path) -> str:
    return f"synthetic:{tiny_synth}:night_train"


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint: Path, tiny_synth: Path, work: Path) -> Path:
    """The tiny checkpoint plus translator ``gen_t2s``: a ResNet generator fitted (L1, 150
    Adam steps, ~2 s) to map night frames to brighter ones."""
    torch.manual_seed(0)
    spec = net_spec("resnet_generator", "translator", ngf=8, n_blocks=2)
    gen = build_net(spec).train()
    data = open_dataset(f"synthetic:{tiny_synth}:night_train")
    rgb = np.stack([data[i]["image"] for i in range(len(data))]).astype(np.float32) / 255
    x = torch.from_numpy(rgb).permute(0, 3, 1, 2) * 2 - 1
    y = torch.from_numpy(np.clip(rgb * 2.0 + 0.08, 0, 1) ** 0.8).permute(0, 3, 1, 2) * 2 - 1
    opt = torch.optim.Adam(gen.parameters(), 2e-3)
    order = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(0, len(x), (4,), generator=order)
        loss = (gen(x[idx]) - y[idx]).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    ck = load_checkpoint(tiny_checkpoint)
    ck["networks"] = {**(ck.get("networks") or {}), "gen_t2s": spec.to_dict()}
    ck.setdefault("method_state", {})["networks"] = {"gen_t2s": gen.eval().state_dict()}
    out = work / "with_translator.pt"
    save_checkpoint(out, ck)
    return out


@pytest.fixture(scope="module")
def fp32(ckpt: Path, work: Path, spec: str) -> Path:
    out = work / "t2s.onnx"
    assert main(["export", str(ckpt), "-o", str(out), "--network", "gen_t2s", "--size", SIZE,
                 "--parity-data", spec, "--parity-frames", "2"]) == 0
    return out


@pytest.fixture(scope="module")
def segmenter(ckpt: Path, work: Path, spec: str) -> Path:
    out = work / "model.onnx"
    assert main(["export", str(ckpt), "-o", str(out), "--network", "model", "--size", SIZE,
                 "--parity-data", spec, "--parity-frames", "2"]) == 0
    return out


@pytest.fixture(scope="module")
def fp16(fp32: Path, work: Path) -> Path:
    out = work / "t2s.fp16.onnx"
    assert main(["quantize", str(fp32), "-o", str(out), "--precision", "fp16"]) == 0
    return out


@pytest.fixture(scope="module")
def int8(fp32: Path, work: Path, calib: str) -> Path:
    out = work / "t2s.int8.onnx"
    assert main(["quantize", str(fp32), "-o", str(out), "--precision", "int8", "--calib", calib,
                 "--calib-frames", "16"]) == 0
    return out


def _compare(argv: list[str], out: Path) -> tuple[int, dict]:
    rc = main(["compare", *argv, "--json", str(out)])
    return rc, json.loads(out.read_text())


def _translated(path: Path, spec: str) -> list[np.ndarray]:
    """The model's translated frames of ``spec``, by hand: the runtime's stage on each frame."""
    stage = TranslateStage(OrtBackend.from_onnx(path, intra_op_threads=1))
    data, out = open_dataset(spec), []
    for i in range(len(data)):
        bgr = np.ascontiguousarray(data[i]["image"][..., ::-1])
        out.append(stage.process(Packet(SourceFrame(i, bgr, 0.0), bgr)).frame)
    stage.backend.close()
    return out


# --- quantize --------------------------------------------------------------------------------


def test_quantize_keeps_the_frame_contract_of_a_translator(fp32: Path, fp16: Path, int8: Path,
                                                           calib: str) -> None:
    for path, precision in ((fp16, "fp16"), (int8, "int8")):
        meta = read_metadata(path)
        assert meta.network == "translator" and meta.precision == precision
        session = create_session(path)
        assert [t.type for t in (*session.get_inputs(), *session.get_outputs())] == \
            ["tensor(uint8)", "tensor(uint8)"]
    calibration = read_metadata(int8).extra["calibration"]
    assert calibration["source"] == calib and calibration["frames"] == 16


def test_int8_leaves_pre_post_processing_and_the_output_layer_in_float(fp32: Path,
                                                                       int8: Path) -> None:
    """Q/DQ on the generator's inner convs only: not the transposed convs, not the conv
    that makes the image, nothing of the uint8 pre/post-processing or the tanh."""
    excluded = set(read_metadata(int8).extra["excluded_nodes"])
    with Int8Quantizer(fp32) as q:
        last, after = output_stage(q.model)
        assert excluded == {*prepost_nodes(q.model), *last, *after}
    assert [n.split("/")[-1] for n in last] == ["Conv"]
    assert {"Tanh", "Round", "Clip", "Cast"} <= {n.split("/")[-1].split("_")[0] for n in after}
    proto = onnx.load(str(int8))
    assert validate_trt_qdq(proto) == []
    produced = {o: n for n in proto.graph.node for o in n.output}
    quantised = {n.name: n.op_type for n in proto.graph.node
                 if any(produced.get(i) is not None and produced[i].op_type == "DequantizeLinear"
                        for i in n.input)}
    assert quantised and set(quantised.values()) == {"Conv"}
    assert not set(quantised) & excluded
    assert sum(n.op_type == "ConvTranspose" for n in proto.graph.node) == 2


def test_fp16_keeps_the_output_conversion_in_fp32(fp16: Path) -> None:
    kept = read_metadata(fp16).extra["output_fp32"]
    assert {"Tanh", "Round", "Clip"} <= {n.split("/")[-1].split("_")[0] for n in kept}


def test_segmenter_exclusions_are_unchanged(segmenter: Path) -> None:
    with Int8Quantizer(segmenter) as q:
        assert q.auto_excluded == prepost_nodes(q.model)


# --- compare ---------------------------------------------------------------------------------


def test_compare_reports_psnr_and_ssim_of_each_frame(fp32: Path, fp16: Path, int8: Path,
                                                     spec: str, work: Path) -> None:
    rc, half = _compare([str(fp32), str(fp16), "--data", spec], work / "fp16.json")
    assert rc == 0 and half["passed"] and half["min_psnr"] == 30.0
    assert half["network_a"] == half["network_b"] == "translator"
    assert half["frames"] == len(half["per_frame"]) == 4 and half["data"] == spec
    rc, quant = _compare([str(fp32), str(int8), "--data", spec], work / "int8.json")
    assert rc == 0 and quant["passed"]
    want_a, want_b = _translated(fp32, spec), _translated(int8, spec)
    for row, a, b in zip(quant["per_frame"], want_a, want_b, strict=True):
        assert row["psnr_db"] == pytest.approx(psnr(a, b), rel=1e-3)  # int8 kernels differ in rounding by ISA and threads
        assert row["ssim"] == pytest.approx(ssim(a, b), abs=1e-4)
    for summary, floor in ((half, 55.0), (quant, 35.0)):
        values = [r["psnr_db"] for r in summary["per_frame"]]
        assert all(v is not None and math.isfinite(v) for v in values)
        assert summary["psnr_min_db"] == min(values) > floor
        assert summary["psnr_mean_db"] == pytest.approx(np.mean(values), abs=1e-9)
        assert 0.99 < summary["ssim_min"] <= summary["ssim_mean"] < 1.0
        assert summary["identical_frames"] == 0 and "miou_a" not in summary
    assert quant["psnr_mean_db"] < half["psnr_mean_db"] - 5  # int8 rounds far more than fp16


def test_min_psnr_gate_fails_above_the_measured_value(fp32: Path, int8: Path, spec: str,
                                                      work: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    _, measured = _compare([str(fp32), str(int8), "--data", spec], work / "m.json")
    bar = math.ceil(measured["psnr_min_db"]) + 1
    rc, gated = _compare([str(fp32), str(int8), "--data", spec, "--min-psnr", str(bar)],
                         work / "gated.json")
    assert rc == 1 and not gated["passed"] and gated["min_psnr"] == bar
    assert gated["psnr_min_db"] == measured["psnr_min_db"]  # still reported
    assert f"FAILED: PSNR >= {bar} dB on every frame does not hold" in capsys.readouterr().out


def test_identical_outputs_have_inf_psnr_and_pass(fp32: Path, spec: str, work: Path) -> None:
    rc, same = _compare([str(fp32), str(fp32), "--data", spec, "--min-psnr", "1000"],
                        work / "same.json")
    assert rc == 0 and same["passed"]
    assert same["psnr_mean_db"] is None and same["psnr_min_db"] is None
    assert same["identical_frames"] == same["frames"] == 4
    assert all(r["psnr_db"] is None for r in same["per_frame"])
    assert same["ssim_mean"] == pytest.approx(1.0, abs=1e-12)


def test_segmenter_miou_after_each_translator_is_evals(fp32: Path, int8: Path, segmenter: Path,
                                                       spec: str, work: Path) -> None:
    rc, summary = _compare([str(fp32), str(int8), "--data", spec, "--segmenter", str(segmenter),
                            "--max-frames", "4"], work / "seg.json")
    assert rc == 0 and summary["segmenter"] == str(segmenter)
    for key in ("miou_a", "miou_b", "miou_drop", "per_class_a", "per_class_b",
                "pixel_agreement", "boundary_agreement", "psnr_mean_db", "ssim_mean"):
        assert key in summary, key
    assert 0.5 < summary["pixel_agreement"] <= 1.0
    for translator, key in ((fp32, "miou_a"), (int8, "miou_b")):
        out = work / f"eval_{key}.json"
        assert main(["eval", str(segmenter), "--data", spec, "--translator", str(translator),
                     "--max-frames", "4", "--json", str(out)]) == 0
        miou = json.loads(out.read_text())["results"][spec]["miou"]
        assert summary[key] == pytest.approx(miou, abs=1e-12), key
    assert summary["miou_drop"] == pytest.approx(100 * (summary["miou_a"] - summary["miou_b"]),
                                                 abs=1e-9)


def test_an_image_network_and_a_segmenter_are_not_compared(
        fp32: Path, segmenter: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for a, b in ((fp32, segmenter), (segmenter, fp32)):
        assert main(["compare", str(a), str(b)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0
        assert f"{fp32} is an image network (translator), {segmenter} a segmenter" in err
    with pytest.raises(EdgesegError, match="apply to two image networks"):
        compare_models(segmenter, segmenter, segmenter=fp32)
    with pytest.raises(EdgesegError, match="apply to two image networks"):
        compare_models(segmenter, segmenter, min_psnr=30.0)
