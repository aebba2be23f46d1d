"""`edgeseg export --network`, the composed deploy graph, and translator chains in
`edgeseg run / eval / bench --translator`.

A checkpoint with every kind of network is built from the `tiny_checkpoint` fixture: a
CycleGAN ResNet generator (translator ``gen_s2t``), DANIA's relighting net (prenet
``relight``, kind ``relight_net``, a small one), a PatchGAN (training-only ``disc``), and
a deploy of ``relight -> model -> class bias``. Everything runs for real in ONNX Runtime
on files; one subprocess runs the real `edgeseg export --network` CLI.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgeseg.cli import main
from edgeseg.contract.metadata import metadata_of, read_metadata, set_metadata
from edgeseg.errors import EdgesegError
from edgeseg.evaluate import FrameScorer
from edgeseg.export import export_cli
from edgeseg.export.onnx_export import ExportError
from edgeseg.export.parity import IMAGE_FP32, ParityError, check_image_parity, sample_frames
from edgeseg.fileio import sha256_file
from edgeseg.runtime.backends.onnxruntime import OrtBackend
from edgeseg.runtime.predictor import BackendPredictor, open_engine
from edgeseg.runtime.sources import SourceFrame, open_source
from edgeseg.runtime.stages import Packet, SegmentStage, TranslateStage, mean_luma
from edgeseg.train.checkpoint import load_checkpoint, load_network, save_checkpoint
from edgeseg.train.nets.registry import build_net, net_spec
from edgeseg.train.predict import TorchTranslator
from tests.conftest import REPO, cli_env

H, W = 64, 96
SIZE = f"{W}x{H}"
CAR = 13  # cityscapes19 train id


pytestmark = pytest.mark.usefixtures("one_thread")


def _composed(src: Path, dst: Path, class_bias: list[float] | None) -> Path:
    """``src`` plus a translator, a prenet, a discriminator, and a deploy of
    prenet -> model -> ``class_bias`` (the same network weights for every ``dst``)."""
    ck = load_checkpoint(src)
    torch.manual_seed(0)
    specs = {
        "gen_s2t": net_spec("resnet_generator", "translator", ngf=4, n_blocks=1),
        "relight": net_spec("relight_net", "prenet", ngf=4, n_blocks=1),
        "disc": net_spec("patch_discriminator", in_channels=3, ndf=4, n_layers=2),
    }
    nets = {name: build_net(spec) for name, spec in specs.items()}
    with torch.no_grad():  # outputs with structure: not tanh(~0) = grey, not the identity
        nets["gen_s2t"].model[-2].weight.mul_(40.0)
        convs = [m for m in nets["relight"].modules()
                 if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        for conv in convs:  # N(0, 0.1): batch norm at its initial statistics passes it on
            conv.weight.mul_(5.0)
        convs[-1].weight.normal_(0.0, 0.3)  # it starts as the identity (last conv zero)
    ck["networks"] = {**(ck.get("networks") or {}), **{k: v.to_dict() for k, v in specs.items()}}
    ck.setdefault("method_state", {})["networks"] = {k: n.state_dict() for k, n in nets.items()}
    ck["deploy"] = {"segmenter": "model", "pre": ["relight"], "class_bias": class_bias}
    save_checkpoint(dst, ck)
    return dst


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export_network")


@pytest.fixture(scope="module")
def spec(tiny_synth: Path) -> str:
    return f"synthetic:{tiny_synth}:night_val"


@pytest.fixture(scope="module")
def bias() -> list[float]:
    b = [0.0] * 19
    b[0] = 0.5  # road a little more likely
    return b


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint: Path, work: Path, bias: list[float]) -> Path:
    return _composed(tiny_checkpoint, work / "composed.pt", bias)


def _export(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    export_cli.add_arguments(parser)
    return export_cli.run(parser.parse_args(argv))


@pytest.fixture(scope="module")
def translator(ckpt: Path, work: Path, spec: str) -> Path:
    """The real CLI, in a subprocess: `edgeseg export CKPT --network gen_s2t`."""
    out = work / "gen_s2t.onnx"
    res = subprocess.run([sys.executable, "-m", "edgeseg.cli", "export", str(ckpt), "-o",
                          str(out), "--network", "gen_s2t", "--size", SIZE, "--parity-data",
                          spec, "--parity-frames", "4"],
                         env=cli_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "parity vs torch FrameToFrame" in res.stdout and "PASS" in res.stdout, res.stdout
    return out


@pytest.fixture(scope="module")
def segmenter(ckpt: Path, work: Path, spec: str) -> Path:
    """The student segmenter alone (``--network model``)."""
    out = work / "model.onnx"
    assert _export([str(ckpt), "-o", str(out), "--network", "model", "--size", SIZE,
                    "--parity-data", spec, "--parity-frames", "2"]) == 0
    return out


@pytest.fixture(scope="module")
def composed(ckpt: Path, work: Path, spec: str) -> Path:
    """The default export: what the checkpoint deploys, prenet -> model -> class bias."""
    out = work / "composed.onnx"
    assert _export([str(ckpt), "-o", str(out), "--size", SIZE, "--parity-data", spec,
                    "--parity-frames", "4"]) == 0
    return out


def _bgr(frames: list[np.ndarray]) -> list[np.ndarray]:
    return [np.ascontiguousarray(f) for f in frames]


# ---------------------------------------------------------------- image networks


def test_translator_export_metadata_and_parity(translator: Path, ckpt: Path, spec: str
                                               ) -> None:
    meta = read_metadata(translator)
    assert meta.network == "translator" and meta.mean == meta.std == [0.5] * 3
    assert (meta.input.name, meta.input.dtype, meta.input.shape) == ("frame", "uint8",
                                                                    [1, H, W, 3])
    assert (meta.output.name, meta.output.dtype, meta.output.format) == ("image", "uint8",
                                                                        "uint8-nhwc-bgr")
    assert meta.extra["network"] == "gen_s2t" and meta.extra["spec"]["kind"] == "resnet_generator"
    assert meta.extra["deploy"]["pre"] == ["relight"]
    # the engine computes what TorchTranslator (derived data, uda_translations) computes
    torch_t, _ = TorchTranslator.from_checkpoint(str(ckpt), "gen_s2t")
    frames = sample_frames(spec, (H, W), 4, seed=5)
    report = check_image_parity(translator, lambda f: torch_t(f), frames)
    assert report.passed and report.max_abs_diff <= IMAGE_FP32.max_abs_diff
    assert report.mean_abs_diff < 1e-2, report.format()
    out = OrtBackend.from_onnx(translator).infer(frames[0][None])[0]
    assert out.std() > 5 and np.abs(out.astype(int) - frames[0]).mean() > 5  # it translates
    from edgeseg.export.lint import lint

    assert [f for f in lint(translator) if f.severity == "error"] == []


def test_prenet_exports_as_a_relighting_engine(ckpt: Path, work: Path, spec: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = work / "relight.onnx"
    assert _export([str(ckpt), "-o", str(out), "--network", "relight", "--size", SIZE,
                    "--dynamic", "--parity-data", spec, "--parity-frames", "2"]) == 0
    text = capsys.readouterr().out
    assert "max |d|" in text and "PASS" in text
    meta = read_metadata(out)
    ck = load_checkpoint(ckpt)
    assert meta.network == "relighting" and meta.extra["spec"]["kind"] == "relight_net"
    assert meta.mean == list(ck["mean"]) and meta.std == list(ck["std"])  # the segmenter's range
    assert meta.input.shape == [None, None, None, 3] and meta.input.profile["max"] == \
        [1, 2 * H, 2 * W, 3]
    # frame -> prenet in the segmenter's range -> frame, by hand
    frame = sample_frames(spec, (40, 56), 1)[0]
    net, _ = load_network(ck, "relight", ckpt)
    mean = torch.tensor(ck["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(ck["std"]).view(1, 3, 1, 1)
    x = (torch.from_numpy(frame[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255 - mean) \
        / std
    with torch.no_grad():
        y = ((net(x) * std + mean) * 255).round().clamp(0, 255)
    want = y[0].permute(1, 2, 0).numpy()[..., ::-1].astype(np.uint8)
    got = OrtBackend.from_onnx(out).infer(frame[None])[0]
    assert np.abs(got.astype(int) - want).max() <= 1
    assert np.abs(got.astype(int) - frame).mean() > 2  # it relights
    # a TranslateStage runs it before a segmenter, as it runs a translator
    assert TranslateStage(OrtBackend.from_onnx(out)).meta.network == "relighting"


def test_segmenter_flags_and_network_names_fail_in_one_line(
        ckpt: Path, work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["--network", "nope"], "has no network 'nope'; exportable networks: model (segmenter), "
                                "gen_s2t (translator), relight (prenet)"),
        (["--network", "disc"], "network 'disc' (patch_discriminator) is training-only"),
        (["--network", "gen_s2t", "--output-kind", "logits"],
         "--output-kind logits: segmenter flags; network 'gen_s2t' (translator) is an image "
         "network"),
        (["--network", "relight", "--labels-dtype", "int32", "--input-format", "float-nchw"],
         "--input-format float-nchw, --labels-dtype int32: segmenter flags"),
        (["--network", "gen_s2t", "--size", "98x64"], "multiples of 4"),
        (["--network", "model", "--translate-below", "69"],
         "--translate-below 69: a flag of translators and relighting nets; network 'model' "
         "(segmenter) is a segmenter"),
    ]
    for extra, message in cases:
        out = work / "bad.onnx"
        assert main(["export", str(ckpt), "-o", str(out), "--skip-parity", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and err.count("\n") == 0, err
        assert not out.exists()
    assert "exportable networks: model (segmenter), disc" not in err  # training-only not listed


def test_image_parity_gate_refuses_a_wrong_graph(translator: Path, ckpt: Path, spec: str,
                                                 work: Path, monkeypatch: pytest.MonkeyPatch
                                                 ) -> None:
    """A channel swap, or the prenet's graph held to another network, fails the gate, and
    the gated export publishes nothing."""
    from edgeseg.export.onnx_export import ExportOptions, ExportSource, FrameToFrame

    frames = sample_frames(spec, (H, W), 2)
    backend = OrtBackend.from_onnx(translator)
    swapped = check_image_parity(translator, lambda f: backend.infer(f[None])[0][..., ::-1],
                                 frames)
    assert not swapped.passed and swapped.mean_abs_diff > 1

    def wrong(self: ExportSource, module: nn.Module, options: ExportOptions) -> nn.Module:
        return FrameToFrame(load_network(self.ckpt, "gen_s2t", self.path)[0], (0.5,) * 3,
                            (0.5,) * 3)

    monkeypatch.setattr(ExportSource, "reference", wrong)
    out = work / "gated.onnx"
    with pytest.raises(ParityError, match="FAIL"):
        export_cli.export_gated(ckpt, out, ExportOptions(height=H, width=W), spec, 2,
                                network="relight")
    assert not out.exists()


# ---------------------------------------------------------------- the composed graph


def _by_hand(ckpt_path: Path, frames: list[np.ndarray], bias: list[float]) -> np.ndarray:
    """argmax(segmenter(prenet(x)) + bias) in torch, x normalised from the BGR frame."""
    ck = load_checkpoint(ckpt_path)
    seg, _ = load_network(ck, "model", ckpt_path)
    pre, _ = load_network(ck, "relight", ckpt_path)
    mean = torch.tensor(ck["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(ck["std"]).view(1, 3, 1, 1)
    out = []
    with torch.no_grad():
        for f in frames:
            x = torch.from_numpy(f[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255
            logits = seg(pre((x - mean) / std)) + torch.tensor(bias).view(1, -1, 1, 1)
            out.append(logits.argmax(1)[0].numpy())
    return np.stack(out)


def test_composed_graph_labels_metadata_and_lint(composed: Path, ckpt: Path, bias: list[float],
                                                 spec: str, tiny_checkpoint: Path, work: Path
                                                 ) -> None:
    from edgeseg.export.lint import lint

    meta = read_metadata(composed)
    assert meta.network == "segmenter" and meta.extra["network"] == "deploy"
    assert meta.extra["deploy"] == {"segmenter": "model", "pre": ["relight"], "class_bias": bias}
    frames = sample_frames(spec, (H, W), 4, seed=9)
    got = np.stack([OrtBackend.from_onnx(composed).infer(f[None])[0] for f in frames])
    assert (got == _by_hand(ckpt, frames, bias)).mean() > 0.999
    assert [f for f in lint(composed) if f.severity == "error"] == []
    assert main(["inspect", str(composed), "--json", str(work / "inspect.json")]) == 0
    extra = json.loads((work / "inspect.json").read_text())
    assert "relight" in json.dumps(extra)
    # a bias that favours cars: every pixel becomes a car, in the engine as by hand
    heavy = [0.0] * 19
    heavy[CAR] = 100.0
    car_ckpt = _composed(tiny_checkpoint, work / "cars.pt", heavy)
    cars = work / "cars.onnx"
    assert _export([str(car_ckpt), "-o", str(cars), "--size", SIZE, "--parity-data", spec,
                    "--parity-frames", "1"]) == 0
    labels = OrtBackend.from_onnx(cars).infer(frames[0][None])[0]
    assert (labels == CAR).all() and (got[0] != CAR).mean() > 0.5
    assert (_by_hand(car_ckpt, frames[:1], heavy) == CAR).all()


def test_network_model_is_the_student_where_the_method_deploys_a_teacher(
        tiny_checkpoint: Path, work: Path, spec: str) -> None:
    from edgeseg.export.onnx_export import ExportOptions, deploy_module, export_checkpoint

    ck = load_checkpoint(tiny_checkpoint)
    teacher = {k: v.clone() for k, v in ck["model"].items()}
    w = teacher["head.classifier.weight"]
    teacher["head.classifier.weight"] = torch.randn(w.shape, generator=torch.Generator()
                                                    .manual_seed(1))
    ck["networks"] = {**ck["networks"], "teacher": dict(ck["networks"]["model"])}
    ck.setdefault("method_state", {})["networks"] = {"teacher": teacher}
    ck["deploy"] = {"segmenter": "teacher", "pre": [], "class_bias": None}
    save_checkpoint(work / "ema.pt", ck)
    options = ExportOptions(height=H, width=W)
    deployed = export_checkpoint(work / "ema.pt", work / "teacher.onnx", options)
    student = export_checkpoint(work / "ema.pt", work / "student.onnx", options, network="model")
    assert deployed.metadata.extra["deploy"]["segmenter"] == "teacher"
    assert student.metadata.extra["network"] == "model"
    frames = sample_frames(spec, (H, W), 2)
    for path, name in ((deployed.path, "teacher"), (student.path, "model")):
        net, _ = load_network(ck, name, work / "ema.pt")
        wrapper = deploy_module(net, ck, options, output="logits")
        backend = OrtBackend.from_onnx(path)
        for f in frames:
            with torch.no_grad():
                want = wrapper(torch.from_numpy(f[None])).argmax(1)[0].numpy()
            assert (backend.infer(f[None])[0] == want).mean() > 0.999, name
    a, b = (OrtBackend.from_onnx(p).infer(frames[0][None])[0] for p in (deployed.path,
                                                                         student.path))
    assert (a != b).mean() > 0.1  # two different segmenters


def test_checkpoint_without_networks_exports_as_before(tiny_checkpoint: Path, work: Path
                                                       ) -> None:
    """An older file (no ``networks``/``deploy``) exports the same graph and the same metadata
    keys as before; the new keys only appear for checkpoints that store networks."""
    from edgeseg.export.onnx_export import ExportOptions, export_checkpoint

    ck = load_checkpoint(tiny_checkpoint)
    old = {k: v for k, v in ck.items() if k not in ("networks", "deploy")}
    save_checkpoint(work / "old.pt", old)
    options = ExportOptions(height=H, width=W)
    a = export_checkpoint(work / "old.pt", work / "old.onnx", options)
    b = export_checkpoint(tiny_checkpoint, work / "new.onnx", options)
    assert set(a.metadata.extra) == {"opset", "iteration", "exporter"}
    assert b.metadata.extra["network"] == "deploy" and b.metadata.extra["deploy"]["pre"] == []
    assert onnx.load(str(a.path)).graph == onnx.load(str(b.path)).graph
    with pytest.raises(ExportError, match="written before networks were stored"):
        export_checkpoint(work / "old.pt", work / "x.onnx", options, network="gen_s2t")


def test_int8_variant_of_the_composed_graph(composed: Path, work: Path, spec: str,
                                            tiny_synth: Path) -> None:
    """build-engine --precision int8 on ONNX Runtime: the int8 Q/DQ variant of the composed
    graph (prenet, segmenter, bias) is made, built, and agrees with fp32 on most pixels."""
    from edgeseg.evaluate import agreement
    from edgeseg.export.int8 import predict_labels
    from edgeseg.export.lint import lint
    from edgeseg.export.variants import make_variant

    engine = work / "composed.ort.onnx"
    calib = f"synthetic:{tiny_synth}:day_val"
    assert main(["build-engine", str(composed), "-o", str(engine), "--backend", "onnxruntime",
                 "--precision", "int8", "--calib", calib, "--calib-frames", "4"]) == 0
    variant = work / "composed.ort.int8.onnx"
    assert read_metadata(variant).precision == "int8"
    assert read_metadata(variant).extra["deploy"]["pre"] == ["relight"]
    frames = [f[None] for f in sample_frames(spec, (H, W), 4, seed=2)]
    fp32 = predict_labels(composed, frames, "frame")
    predict = BackendPredictor(open_engine(engine, "cpu"))  # manifest checked, as eval runs it
    int8 = [predict(np.ascontiguousarray(f[0][..., ::-1])) for f in frames]
    agree = float(np.mean([(a[0] == b).mean() for a, b in zip(fp32, int8)]))
    print(f"composed int8 (onnxruntime flavour, ONNX Runtime engine) agreement: {agree:.4f}")
    assert agree > 0.9  # the 60-iteration tiny model has near-ties; see the report
    # TensorRT's flavour of the same graph: symmetric Q/DQ that lint passes, agreeing too
    trt = make_variant(composed, work / "composed.int8.onnx", "int8", calib=calib,
                       calib_frames=4, flavour="tensorrt")
    assert [f for f in lint(trt) if f.severity == "error"] == []
    agree_trt = agreement(fp32, predict_labels(trt, frames, "frame"))
    print(f"composed int8 (tensorrt flavour, ONNX Runtime) agreement: {agree_trt:.4f}")
    assert agree_trt > 0.9


# ---------------------------------------------------------------- chains


def test_run_chains_the_exported_translator(translator: Path, segmenter: Path, work: Path
                                            ) -> None:
    labels = work / "run_labels"
    summary_path = work / "run.json"
    source = "synthetic:night:96x64:3"
    assert main(["run", str(segmenter), "--translator", str(translator), "--source", source,
                 "--sink", f"labels:{labels}", "--summary", str(summary_path), "--threads", "1",
                 "--no-progress"]) == 0
    summary = json.loads(summary_path.read_text())
    assert summary["translator"] == str(translator) and "translate" in summary["stages_ms"]
    t = TranslateStage(OrtBackend.from_onnx(translator, intra_op_threads=1))
    s = SegmentStage(OrtBackend.from_onnx(segmenter, intra_op_threads=1))
    src = open_source(source)
    plain_differs = []
    for i in range(3):
        frame = src.read()
        translated = t.process(Packet(frame, frame.image)).frame
        want = s.process(Packet(frame, translated)).labels
        got = cv2.imread(str(labels / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        assert (got == want).all()
        plain_differs.append((s.process(Packet(frame, frame.image)).labels != got).mean())
    assert max(plain_differs) > 0.05  # the translator changed what the segmenter saw


def test_eval_with_translator_scores_the_chain(translator: Path, segmenter: Path, spec: str,
                                               work: Path) -> None:
    from edgeseg.data import open_dataset

    out_plain, out_chain = work / "eval_plain.json", work / "eval_chain.json"
    assert main(["eval", str(segmenter), "--data", spec, "--json", str(out_plain)]) == 0
    assert main(["eval", str(segmenter), "--data", spec, "--translator", str(translator),
                 "--json", str(out_chain)]) == 0
    plain = json.loads(out_plain.read_text())["results"][spec]["miou"]
    chain = json.loads(out_chain.read_text())
    assert chain["translator"] == str(translator)
    # by hand: each frame through the runtime's two stages, one after the other
    t = TranslateStage(OrtBackend.from_onnx(translator))
    s = SegmentStage(OrtBackend.from_onnx(segmenter))
    data = open_dataset(spec)
    scorer = FrameScorer("cityscapes19", data.label_space)
    for i in range(len(data)):
        sample = data[i]
        bgr = np.ascontiguousarray(sample["image"][..., ::-1])
        frame = SourceFrame(i, bgr, 0.0)
        translated = t.process(Packet(frame, bgr)).frame
        scorer.update(s.process(Packet(frame, translated)).labels, sample["label"])
    assert chain["results"][spec]["miou"] == pytest.approx(scorer.metrics().miou, abs=1e-12)
    assert chain["results"][spec]["miou"] != pytest.approx(plain, abs=1e-6)


def test_eval_translate_below_scores_the_gated_chain(
        translator: Path, segmenter: Path, spec: str, work: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`eval --translate-below`: frames darker than the threshold through the translator,
    the others straight to the segmenter, as `run --translate-below` routes them."""
    from edgeseg.data import open_dataset

    data = open_dataset(spec)
    frames = [np.ascontiguousarray(data[i]["image"][..., ::-1]) for i in range(len(data))]
    lumas = sorted({mean_luma(f) for f in frames})
    assert len(lumas) >= 2
    mid = len(lumas) // 2
    below = (lumas[mid - 1] + lumas[mid]) / 2  # some frames each way
    out = work / "eval_gated.json"
    assert main(["eval", str(segmenter), "--data", spec, "--translator", str(translator),
                 "--translate-below", str(below), "--json", str(out)]) == 0
    gated = json.loads(out.read_text())
    dark = [mean_luma(f) < below for f in frames]
    assert gated["translate_below"] == below
    assert gated["gate"][spec] == {"translated": sum(dark), "passed": len(dark) - sum(dark)}
    t = TranslateStage(OrtBackend.from_onnx(translator))
    s = SegmentStage(OrtBackend.from_onnx(segmenter))
    scorer = FrameScorer("cityscapes19", data.label_space)
    for i, (bgr, translate) in enumerate(zip(frames, dark, strict=True)):
        frame = SourceFrame(i, bgr, 0.0)
        seen = t.process(Packet(frame, bgr)).frame if translate else bgr
        scorer.update(s.process(Packet(frame, seen)).labels, data[i]["label"])
    assert gated["results"][spec]["miou"] == pytest.approx(scorer.metrics().miou, abs=1e-12)
    assert main(["eval", str(segmenter), "--data", spec, "--translate-below", "80"]) == 2
    assert "--translate-below gates a translator" in capsys.readouterr().err


def test_export_records_the_gate_and_eval_applies_it(
        ckpt: Path, segmenter: Path, spec: str, work: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`export --network gen_s2t --translate-below L` writes the gate into the translator;
    `eval --translator` then gates on it with no flag, and the flag overrides it."""
    from edgeseg.data import open_dataset
    from edgeseg.export.onnx_export import ExportOptions

    data = open_dataset(spec)
    frame_lumas = [mean_luma(np.ascontiguousarray(data[i]["image"][..., ::-1]))
                   for i in range(len(data))]
    lumas = sorted(set(frame_lumas))
    mid = len(lumas) // 2
    below = round((lumas[mid - 1] + lumas[mid]) / 2, 2)  # some frames each way
    dark = sum(luma < below for luma in frame_lumas)
    gated = work / "gen_s2t.gated.onnx"
    assert _export([str(ckpt), "-o", str(gated), "--network", "gen_s2t", "--size", SIZE,
                    "--parity-data", spec, "--parity-frames", "1", "--translate-below",
                    str(below)]) == 0
    meta = read_metadata(gated)
    assert meta.translate_below == below and meta.extra["translate_below"] == below
    # the summary describes the published file: its hash and its recorded gate
    printed = capsys.readouterr().out
    assert f"sha256 {sha256_file(gated)}" in printed
    assert f"mean luma below {below:g} are translated" in printed
    # the API writes the gate before the file is published; a bad value leaves no file
    direct = work / "gen_s2t.direct.onnx"
    export_cli.export_gated(ckpt, direct, ExportOptions(height=H, width=W), spec, 0,
                            network="gen_s2t", translate_below=below)
    assert read_metadata(direct).translate_below == below
    with pytest.raises(EdgesegError, match=r"translate-below luma 300: use a value in \(0, 256\]"):
        export_cli.export_gated(ckpt, work / "no.onnx", ExportOptions(height=H, width=W), spec,
                                0, network="gen_s2t", translate_below=300.0)
    assert not (work / "no.onnx").exists()
    out = work / "eval_recorded.json"
    assert main(["eval", str(segmenter), "--data", spec, "--translator", str(gated),
                 "--json", str(out)]) == 0
    recorded = json.loads(out.read_text())
    assert recorded["translate_below"] == below and recorded["gate_source"] == "metadata"
    assert recorded["gate"][spec] == {"translated": dark, "passed": len(data) - dark}
    assert 0 < dark < len(data)
    assert main(["eval", str(segmenter), "--data", spec, "--translator", str(gated),
                 "--translate-below", "256", "--json", str(out)]) == 0
    every = json.loads(out.read_text())
    assert every["gate_source"] == "flag"
    assert every["gate"][spec] == {"translated": len(data), "passed": 0}


def test_bench_with_translator_reports_each_stage_and_the_chain(
        translator: Path, segmenter: Path, spec: str, work: Path) -> None:
    variant = work / "model.int8.onnx"
    proto = onnx.load(str(segmenter))
    meta = metadata_of(proto)
    meta.precision = "int8"  # the same graph labelled int8: a variant that passes parity
    set_metadata(proto, meta)
    onnx.save(proto, str(variant))
    report = work / "bench"
    assert main(["bench", str(segmenter), str(variant), "--translator", str(translator),
                 "--data", spec, "--iterations", "3", "--warmup", "1", "--threads", "1",
                 "--latency-frames", "2", "--report", str(report)]) == 0
    result = json.loads((report / "bench.json").read_text())
    rows = {r["target"]: r for r in result["latency"]}
    chain = f"{translator.name}+{segmenter.name}"
    assert {translator.name, segmenter.name, variant.name, chain} <= set(rows)
    assert "translate" in rows[translator.name]["stats"]
    assert "infer" in rows[segmenter.name]["stats"] and "translate" not in \
        rows[segmenter.name]["stats"]
    assert {"translate", "infer"} <= set(rows[chain]["stats"])
    # within one row (the same runs): the chain's end to end holds its translate and infer
    chain_ms = rows[chain]["stats"]["end_to_end"]["mean_ms"]
    assert chain_ms >= (rows[chain]["stats"]["translate"]["mean_ms"]
                        + rows[chain]["stats"]["infer"]["mean_ms"])
    assert result["settings"]["translator"] == str(translator)
    assert "--translator" in result["command"]
    parity = result["parity"][0]
    assert parity["reference"] == chain and parity["variants"][0]["passed"] is True
    # translated mIoU: the number `edgeseg eval --translator` gives
    from edgeseg.data import open_dataset
    from edgeseg.eval_cli import load_predictor
    from edgeseg.evaluate import evaluate

    predict, space, info = load_predictor(str(segmenter), "cpu", str(translator))
    assert info["translator"] == str(translator)
    evaluated = evaluate(predict, open_dataset(spec), space, progress=False).metrics
    assert parity["reference_metrics"]["miou"] == pytest.approx(evaluated.miou, abs=1e-12)
    predict.close()
    assert "translate ms" in (report / "bench.md").read_text()


def test_bench_chain_follows_the_gate_and_the_translator_row_does_not(
        translator: Path, segmenter: Path, spec: str, work: Path) -> None:
    """A translator whose recorded gate passes every frame (luma below 1): the chain row is
    the segmenter alone (no translate stage), the translator's own row still
    times the engine on every frame; `--translate-below 256` translates them again."""
    from edgeseg.export.gate import record_translate_below

    gated = work / "gen_s2t.dark-only.onnx"
    gated.write_bytes(translator.read_bytes())
    record_translate_below(gated, 1.0)
    chain = f"{gated.name}+{segmenter.name}"

    def bench(name: str, *flags: str) -> dict:
        report = work / name
        assert main(["bench", str(segmenter), "--translator", str(gated), "--data", spec,
                     "--iterations", "2", "--warmup", "1", "--threads", "1",
                     "--latency-frames", "2", "--report", str(report), *flags]) == 0
        return json.loads((report / "bench.json").read_text())

    result = bench("bench_gated")
    rows = {r["target"]: r for r in result["latency"]}
    assert "translate" in rows[gated.name]["stats"]
    assert "translate" not in rows[chain]["stats"] and "gate" in rows[chain]["stats"]
    described = {t["name"]: t for t in result["targets"]}
    assert described[chain]["translate_below"] == 1.0
    assert "recorded gate" in described[chain]["stages"]
    forced = bench("bench_forced", "--translate-below", "256")
    rows = {r["target"]: r for r in forced["latency"]}
    assert "translate" in rows[chain]["stats"]
    assert "--translate-below 256" in forced["command"]


def test_translate_stage_error_says_how_to_export(segmenter: Path) -> None:
    with pytest.raises(EdgesegError, match=r"edgeseg export CKPT --network NAME"):
        TranslateStage(OrtBackend.from_onnx(segmenter))
