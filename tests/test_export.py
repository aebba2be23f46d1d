"""`edgeseg export`: graph contract, in-graph pre/post-processing, metadata, parity gate."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgeseg.contract.metadata import MetadataError, ModelMetadata, TensorSpec, read_metadata
from edgeseg.errors import EdgesegError
from edgeseg.export import export_cli
from edgeseg.export.onnx_export import (
    ExportError,
    ExportOptions,
    deploy_module,
    export_checkpoint,
    export_module,
    export_translator,
    onnx_sha256,
)
from edgeseg.export.parity import (
    OnnxLogits,
    check_onnx_parity,
    sample_frames,
)
from edgeseg.fileio import sha256_file
from edgeseg.metrics import Thresholds
from edgeseg.runtime.backends.onnxruntime import create_session
from edgeseg.train.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from edgeseg.train.predict import TRANSLATOR_RANGE, FrameToFrame

H, W = 64, 96
#: ops a TensorRT 10/11 parser takes for this network family (docs/tensorrt.md)
TRT_OPS = {"Add", "ArgMax", "Cast", "Clip", "Concat", "Conv", "Gather", "GlobalAveragePool",
           "Mul", "Relu", "Resize", "Shape", "Slice", "Softmax", "Transpose", "Unsqueeze",
           "TopK", "Squeeze", "Reshape", "Sub", "Div", "Round", "Tanh", "ReduceMean", "Max",
           "Min", "Constant", "Identity"}


pytestmark = pytest.mark.usefixtures("one_thread")


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    export_cli.add_arguments(parser)
    return export_cli.run(parser.parse_args(argv))


@pytest.fixture(scope="module")
def spec(tiny_synth: Path) -> str:
    return f"synthetic:{tiny_synth}:night_val"


@pytest.fixture(scope="module")
def frames(spec: str) -> list[np.ndarray]:
    return sample_frames(spec, (H, W), 4)


def _with_classifier(src: Path, dst: Path, weight: torch.Tensor, bias: torch.Tensor) -> Path:
    ck = load_checkpoint(src)
    ck["model"].update({"head.classifier.weight": weight, "head.classifier.bias": bias})
    save_checkpoint(dst, ck)
    return dst


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint: Path, frames: list[np.ndarray],
         tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_checkpoint with its classifier re-drawn around the mean decoder feature.

    The 30-iteration fixture predicts "road" on every pixel, and labels compared on
    a constant map prove little; centred random class directions make all classes
    appear (with near-ties, the hard case for argmax agreement).
    """
    model, ck = load_model(tiny_checkpoint)
    wrapper = deploy_module(model, ck, ExportOptions(), "logits")
    with torch.no_grad():
        feats = torch.cat([model.forward_features(wrapper.preprocess(torch.from_numpy(f[None])))
                           ["decoder"] for f in frames])
    shape = model.head.classifier.weight.shape
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    bias = -(weight[:, :, 0, 0] @ feats.mean((0, 2, 3)))
    return _with_classifier(tiny_checkpoint, tmp_path_factory.mktemp("ckpt") / "seg.pt", weight,
                            bias)


@pytest.fixture(scope="module")
def fixed_onnx(ckpt: Path, spec: str, tmp_path_factory: pytest.TempPathFactory
               ) -> Path:
    """The default contract through the CLI: uint8 NHWC BGR frame in, uint8 labels out."""
    out = tmp_path_factory.mktemp("fixed") / "model.onnx"
    assert _cli([str(ckpt), "-o", str(out), "--size", f"{W}x{H}",
                 "--parity-data", spec, "--parity-frames", "4"]) == 0
    return out


@pytest.fixture(scope="module")
def dynamic_onnx(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dynamic") / "dyn.onnx"
    options = ExportOptions(height=H, width=W, dynamic=True, min_size=(32, 48),
                            max_size=(96, 128), max_batch=2, labels_dtype="int32")
    export_checkpoint(ckpt, out, options)
    return out


def _torch_labels(ckpt: Path, frames: list[np.ndarray]) -> np.ndarray:
    model, ck = load_model(ckpt)
    wrapper = deploy_module(model, ck, ExportOptions(), output="logits")
    with torch.no_grad():
        return np.stack([wrapper(torch.from_numpy(f[None])).argmax(1)[0].numpy() for f in frames])


def _io(path: Path) -> dict[str, tuple[int, list]]:
    g = onnx.load(str(path)).graph
    return {v.name: (v.type.tensor_type.elem_type,
                     [d.dim_value if d.HasField("dim_value") else None
                      for d in v.type.tensor_type.shape.dim])
            for v in [*g.input, *g.output]}


def test_fixed_export_contract_and_metadata(fixed_onnx: Path, ckpt: Path,
                                            frames: list[np.ndarray]) -> None:
    onnx.checker.check_model(str(fixed_onnx), full_check=True)
    assert _io(fixed_onnx) == {"frame": (onnx.TensorProto.UINT8, [1, H, W, 3]),
                               "labels": (onnx.TensorProto.UINT8, [1, H, W])}
    meta = read_metadata(fixed_onnx)
    ck = load_checkpoint(ckpt)
    assert meta.checkpoint_sha256 == sha256_file(ckpt)
    assert meta.label_space == ck["label_space"] == "cityscapes19" and len(meta.labels) == 19
    assert meta.labels[0] == "road" and meta.palette[0] == [128, 64, 128]
    assert meta.mean == pytest.approx(ck["mean"]) and meta.std == pytest.approx(ck["std"])
    assert meta.input == TensorSpec("frame", "uint8", [1, H, W, 3], "uint8-nhwc-bgr")
    assert meta.output == TensorSpec("labels", "uint8", [1, H, W], "labels")
    assert meta.network == "segmenter" and meta.precision == "fp32" and meta.version
    assert meta.model["num_classes"] == 19 and meta.method == ck["method"]
    assert len(onnx_sha256(fixed_onnx)) == 64

    session = create_session(fixed_onnx)
    got = np.stack([session.run(None, {"frame": f[None]})[0][0] for f in frames])
    assert got.dtype == np.uint8
    want = _torch_labels(ckpt, frames)
    assert (got == want).mean() >= 0.999
    assert len(np.unique(want)) > 5  # the comparison is not trivial


def test_dynamic_export_runs_within_profile(dynamic_onnx: Path, ckpt: Path,
                                            spec: str) -> None:
    io = _io(dynamic_onnx)
    assert io["frame"] == (onnx.TensorProto.UINT8, [None, None, None, 3])
    assert io["labels"] == (onnx.TensorProto.INT32, [None, None, None])
    meta = read_metadata(dynamic_onnx)
    assert meta.input.profile == {"min": [1, 32, 48, 3], "opt": [1, H, W, 3],
                                  "max": [2, 96, 128, 3]}
    assert meta.input.shape == [None, None, None, 3] and meta.output.dtype == "int32"
    session = create_session(dynamic_onnx)
    for size, batch in (((32, 48), 2), ((96, 128), 1)):
        batch_frames = sample_frames(spec, size, batch)
        got = session.run(None, {"frame": np.stack(batch_frames)})[0]
        assert got.shape == (batch, *size) and got.dtype == np.int32
        assert (got == _torch_labels(ckpt, batch_frames)).mean() >= 0.999


def test_in_graph_bgr_to_rgb_and_normalisation(fixed_onnx: Path, ckpt: Path
                                               ) -> None:
    """Graph logits == manual numpy preprocessing (RGB, /255, -mean, /std) + torch model."""
    yy, xx = np.mgrid[0:H, 0:W]
    frame = np.stack([np.full((H, W), 10), 60 + xx, 250 - 3 * yy], -1).astype(np.uint8)  # BGR
    logits, labels = OnnxLogits(fixed_onnx)(frame)
    model, ck = load_model(ckpt)

    def manual(rgb: np.ndarray) -> np.ndarray:
        x = (rgb / 255.0 - np.asarray(ck["mean"])) / np.asarray(ck["std"])
        with torch.no_grad():
            return model(torch.from_numpy(x.transpose(2, 0, 1)[None]).float()).numpy()

    right = np.abs(logits - manual(frame[..., ::-1])).max()
    wrong = np.abs(logits - manual(frame)).max()  # channels not swapped
    assert right < 1e-4 and wrong > max(1e-3, 100 * right)
    assert np.array_equal(labels, logits.argmax(1))


def test_ops_are_tensorrt_friendly(fixed_onnx: Path, dynamic_onnx: Path) -> None:
    for path in (fixed_onnx, dynamic_onnx):
        model = onnx.load(str(path))
        graph = model.graph
        assert model.opset_import[0].version == 17
        assert {n.op_type for n in graph.node} <= TRT_OPS
        consts = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
        resizes = [n for n in graph.node if n.op_type == "Resize"]
        assert resizes
        for node in resizes:  # Resize(X, roi, scales, sizes): sizes only
            assert len(node.input) == 4 and node.input[2] == "" and node.input[3]
        for node in graph.node:
            if node.op_type == "Gather" and node.input[1] in consts:
                assert (consts[node.input[1]] >= 0).all()
        # uint8 only at graph I/O: the input is consumed by a Cast, the output made by one.
        first = [n for n in graph.node if graph.input[0].name in n.input]
        last = [n for n in graph.node if graph.output[0].name in n.output]
        assert [n.op_type for n in first] == ["Cast"] and [n.op_type for n in last] == ["Cast"]
        # and the TensorRT pre-flight check finds nothing to fix, for TRT 10 and 11
        from edgeseg.export.lint import lint

        for major in (10, 11):
            errors = [f for f in lint(path, trt_major=major) if f.severity == "error"]
            assert errors == [], errors


def test_float_nchw_logits_export(ckpt: Path, tmp_path: Path,
                                  frames: list[np.ndarray]) -> None:
    out = tmp_path / "logits.onnx"
    options = ExportOptions(height=H, width=W, input_format="float-nchw", output="logits",
                            simplify=False)
    result = export_checkpoint(ckpt, out, options)
    assert not result.simplified
    assert _io(out) == {"image": (onnx.TensorProto.FLOAT, [1, 3, H, W]),
                        "logits": (onnx.TensorProto.FLOAT, [1, 19, H, W])}
    model, ck = load_model(ckpt)
    report = check_onnx_parity(out, deploy_module(model, ck, options), frames)
    assert report.passed and report.max_abs_logit_diff < 1e-4


def test_parity_against_another_onnx(fixed_onnx: Path, dynamic_onnx: Path,
                                     frames: list[np.ndarray]) -> None:
    """fp32-vs-variant mode: labels and int32 graphs compared through their logits."""
    report = check_onnx_parity(dynamic_onnx, fixed_onnx, frames)
    assert report.passed and report.frames == 4 and report.max_abs_logit_diff < 1e-4
    assert "PASS" in report.format()


@pytest.fixture(scope="module")
def other_checkpoint(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ckpt`` with a perturbed classifier: a different but plausible model."""
    model, _ = load_model(ckpt)
    cls = model.head.classifier
    noise = torch.randn(cls.weight.shape, generator=torch.Generator().manual_seed(1))
    return _with_classifier(ckpt, tmp_path_factory.mktemp("other") / "other.pt",
                            cls.weight.detach() + 0.5 * noise, cls.bias.detach())


def test_parity_gate_fails_on_a_wrong_graph(fixed_onnx: Path, other_checkpoint: Path,
                                            frames: list[np.ndarray]) -> None:
    model, ck = load_model(other_checkpoint)
    report = check_onnx_parity(fixed_onnx, deploy_module(model, ck, ExportOptions(), "logits"), frames)
    assert not report.passed and report.max_abs_logit_diff > 1e-2
    assert "FAIL" in report.format()
    loose = check_onnx_parity(fixed_onnx, deploy_module(model, ck, ExportOptions(), "logits"), frames,
                         Thresholds(min_agreement=0.0, max_abs_logit_diff=None))
    assert loose.passed


def test_cli_gate_failure_publishes_nothing(ckpt: Path, other_checkpoint: Path,
                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """An exporter that traced the wrong weights: exit 1, no model.onnx, no temp files."""
    from edgeseg.export.onnx_export import ExportSource

    real = ExportSource.export
    monkeypatch.setattr(ExportSource, "export", lambda self, out, options, module=None: real(
        ExportSource.open(other_checkpoint, self.name), out, options))
    out = tmp_path / "out" / "model.onnx"
    assert _cli([str(ckpt), "-o", str(out), "--size", f"{W}x{H}",
                 "--parity-frames", "2"]) == 1
    assert "FAIL" in capsys.readouterr().err
    assert list(out.parent.iterdir()) == []


def test_bad_inputs_fail_clearly_without_output(tmp_path: Path, ckpt: Path) -> None:
    out = tmp_path / "m.onnx"
    broken = tmp_path / "broken.pt"
    broken.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="broken.pt"):
        export_checkpoint(broken, out, ExportOptions(height=H, width=W))
    with pytest.raises(CheckpointError, match="missing.pt"):
        export_checkpoint(tmp_path / "missing.pt", out, ExportOptions(height=H, width=W))
    with pytest.raises(ExportError, match=">= 32"):
        export_checkpoint(ckpt, out, ExportOptions(height=16, width=W))
    with pytest.raises(ExportError, match="min <= opt <= max"):
        ExportOptions(height=H, width=W, dynamic=True, max_size=(48, 48)).validate()

    class Exploding(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    meta = ModelMetadata([], [], "", [0.5] * 3, [0.5] * 3, [TensorSpec("x", "", [])],
                         [TensorSpec("y", "", [])])
    with pytest.raises(RuntimeError, match="boom"):
        export_module(Exploding(), torch.zeros(1, 3, 32, 32), out, ["x"], ["y"], None, 17, meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.pt"]


def test_read_metadata_rejects_bad_files(fixed_onnx: Path, tmp_path: Path) -> None:
    data = fixed_onnx.read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "notes.onnx"
    text.write_text("not a model\n")
    bare = tmp_path / "bare.onnx"
    model = onnx.load(str(fixed_onnx))
    del model.metadata_props[:]
    onnx.save(model, str(bare))
    for path in (truncated, text, bare, tmp_path / "missing.onnx"):
        with pytest.raises(MetadataError, match=path.name):
            read_metadata(path)
    assert issubclass(MetadataError, EdgesegError)


class TinyGenerator(nn.Module):
    """Stands in for a translation generator: conv, ReLU, conv, tanh."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(8, 3, 3, padding=1), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_translator_roundtrip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    gen = TinyGenerator().eval()
    out = tmp_path / "translator.onnx"
    export_translator(gen, out, (32, 48), dynamic=True, method="cyclegan")
    meta = read_metadata(out)
    assert meta.network == "translator" and meta.method == "cyclegan"
    assert meta.input.dtype == meta.output.dtype == "uint8"
    assert meta.output.name == "image" and meta.output.shape == [None, None, None, 3]

    frame = np.random.default_rng(0).integers(0, 256, (1, 40, 56, 3), dtype=np.uint8)
    got = create_session(out).run(None, {"frame": frame})[0]
    assert got.dtype == np.uint8 and got.shape == frame.shape
    with torch.no_grad():
        want = FrameToFrame(gen, *TRANSLATOR_RANGE)(torch.from_numpy(frame)).numpy()
        rgb = torch.from_numpy(frame[..., ::-1].transpose(0, 3, 1, 2) / 127.5 - 1.0).float()
        manual = ((gen(rgb).numpy() + 1.0) * 127.5).round().clip(0, 255)
    manual = manual.transpose(0, 2, 3, 1)[..., ::-1]
    assert np.abs(got.astype(int) - want).max() <= 1 and (got == want).mean() > 0.99
    assert np.abs(got - manual).max() <= 1
    assert got.std() > 1  # not a constant image


def test_slim_failure_keeps_the_checked_graph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    import onnxslim

    def broken(model: onnx.ModelProto) -> onnx.ModelProto:
        raise RuntimeError("slim bug")

    monkeypatch.setattr(onnxslim, "slim", broken)
    result = export_translator(TinyGenerator(), tmp_path / "t.onnx", (32, 32))
    assert not result.simplified and "slim bug" in caplog.text
    onnx.checker.check_model(str(result.path), full_check=True)
