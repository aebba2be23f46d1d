"""edgeseg.models: shapes, strides, torchvision key compatibility, ONNX export, gradients."""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeseg.config import ModelConfig
from edgeseg.models import (
    PretrainedWeightsError,
    SegmentationModel,
    build_model,
    load_pretrained_backbone,
)

NUM_CLASSES = 5
# Ops the TorchScript exporter emits for these nets; all are supported by TensorRT 10.
TRT_FRIENDLY_OPS = {
    "Conv", "Relu", "Clip", "Add", "Concat", "Resize", "GlobalAveragePool", "MaxPool",
    "Shape", "Gather", "Slice", "Unsqueeze", "Cast", "Constant", "Identity",
}
# Known torchvision names/shapes (ImageNet checkpoints) that must exist unchanged.
TV_MOBILENET_SHAPES = {
    "features.0.0.weight": (32, 3, 3, 3),
    "features.1.conv.0.0.weight": (32, 1, 3, 3),
    "features.1.conv.1.weight": (16, 32, 1, 1),
    "features.2.conv.0.0.weight": (96, 16, 1, 1),
    "features.17.conv.2.weight": (320, 960, 1, 1),
    "features.17.conv.3.running_var": (320,),
}
TV_RESNET50_SHAPES = {
    "conv1.weight": (64, 3, 7, 7),
    "layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "layer3.5.bn3.running_var": (1024,),
    "layer4.2.conv3.weight": (2048, 512, 1, 1),
}


def make(backbone: str = "mobilenet_v2", head: str = "deeplabv3plus", **kw) -> SegmentationModel:
    torch.manual_seed(0)
    return build_model(ModelConfig(backbone=backbone, head=head, num_classes=NUM_CLASSES, **kw))


def down(n: int, times: int) -> int:
    """Size after ``times`` stride-2 stages with 'same' padding (ceil division)."""
    for _ in range(times):
        n = (n + 1) // 2
    return n


def params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- shapes and strides ------------------------------------------------------------


@pytest.mark.parametrize(
    ("backbone", "head", "os_", "extra"),
    [
        ("mobilenet_v2", "deeplabv3plus", 16, {}),
        ("mobilenet_v2", "deeplabv3plus", 8, {}),
        ("mobilenet_v2", "deeplabv3plus", 16, {"separable": True}),
        ("mobilenet_v2", "deeplabv3plus", 8, {"width_mult": 0.5, "separable": True}),
        ("resnet50", "deeplabv3plus", 16, {}),
        ("resnet50", "deeplabv3plus", 8, {"separable": True}),
        ("resnet50", "deeplabv2", 16, {}),
    ],
)
@torch.no_grad()
def test_shapes_at_odd_input_size(backbone: str, head: str, os_: int, extra: dict) -> None:
    model = make(backbone, head, output_stride=os_, **extra).eval()
    h, w = 72, 100
    feats = model.forward_features(torch.randn(1, 3, h, w))
    assert set(feats) == {"low_level", "out", "decoder", "logits"}
    assert feats["logits"].shape == (1, NUM_CLASSES, h, w)
    steps = int(math.log2(os_))
    assert feats["out"].shape == (1, model.encoder_channels, down(h, steps), down(w, steps))
    assert feats["low_level"].shape[-2:] == (down(h, 2), down(w, 2))
    dec_size = feats["out"].shape[-2:] if head == "deeplabv2" else feats["low_level"].shape[-2:]
    assert feats["decoder"].shape[-2:] == dec_size
    assert torch.equal(model(torch.zeros(1, 3, h, w)), model.forward_features(
        torch.zeros(1, 3, h, w))["logits"])


@torch.no_grad()
def test_resnet101_deeplabv2_tiny() -> None:
    model = make("resnet101", "deeplabv2", output_stride=8).eval()
    # torchvision resnet101 has 44,549,160 params, 2,049,000 of them in fc.
    assert params(model.backbone) == 44_549_160 - 2_049_000
    feats = model.forward_features(torch.randn(1, 3, 33, 41))
    assert feats["logits"].shape == (1, NUM_CLASSES, 33, 41)
    assert feats["out"].shape == (1, 2048, down(33, 3), down(41, 3))
    assert model.encoder_channels == 2048 and model.backbone.low_level_channels == 256


def test_encoder_channels_and_torchvision_param_counts() -> None:
    m = make()
    assert (m.backbone.low_level_channels, m.encoder_channels) == (24, 320)
    # torchvision mobilenet_v2: 3,504,872 params; minus features.18 (1x1 320->1280 + BN)
    # and the classifier (1280->1000) that the segmenter drops.
    assert params(m.backbone) == 3_504_872 - (320 * 1280 + 2 * 1280) - (1280 * 1000 + 1000)
    assert len(m.backbone.features) == 18
    half = make(width_mult=0.5)
    assert (half.backbone.low_level_channels, half.encoder_channels) == (16, 160)
    assert half.head.aspp.branches[0][0].in_channels == 160
    r50 = make("resnet50")
    assert (r50.backbone.low_level_channels, r50.encoder_channels) == (256, 2048)
    assert params(r50.backbone) == 25_557_032 - 2_049_000


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "resnet50"])
@torch.no_grad()
def test_output_stride_is_real(backbone: str) -> None:
    x = torch.randn(1, 3, 64, 64)
    for os_ in (16, 8):
        out = make(backbone, output_stride=os_).eval().forward_features(x)["out"]
        assert out.shape[-2:] == (64 // os_, 64 // os_)


def test_dilation_layout_matches_reference() -> None:
    def dw(model: SegmentationModel, i: int) -> tuple[int, int]:
        return model.backbone.features[i].conv[1][0].dilation

    m16, m8 = make(output_stride=16), make(output_stride=8)
    # First block of a dilated stage keeps the previous dilation (VainF / torchvision).
    assert [dw(m16, i) for i in (13, 14, 15, 17)] == [(1, 1), (1, 1), (2, 2), (2, 2)]
    assert [dw(m8, i) for i in (6, 7, 8, 14, 15)] == [(1, 1), (1, 1), (2, 2), (2, 2), (4, 4)]
    assert m8.backbone.features[14].conv[1][0].stride == (1, 1)
    assert [b[0].dilation for b in list(m16.head.aspp.branches)[1:4]] == [(6, 6), (12, 12),
                                                                          (18, 18)]
    assert m8.head.aspp.branches[3][0].dilation == (36, 36)
    r8 = make("resnet50", output_stride=8).backbone
    assert (r8.layer3[0].conv2.stride, r8.layer3[1].conv2.dilation) == ((1, 1), (2, 2))
    assert (r8.layer4[0].conv2.dilation, r8.layer4[1].conv2.dilation) == ((2, 2), (4, 4))


def test_separable_head_is_much_smaller() -> None:
    standard, separable = make(), make(separable=True)
    assert params(separable.backbone) == params(standard.backbone)
    assert params(separable.head) < 0.3 * params(standard.head)
    assert separable.head.decoder[0][0].groups == separable.head.decoder[0][0].in_channels


def test_param_groups_cover_every_parameter_once() -> None:
    model = make()
    groups = model.param_groups(0.01, 10.0)
    assert [(g["name"], g["lr"]) for g in groups] == [("backbone", 0.01), ("head", 0.1)]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    torch.optim.SGD(groups, lr=0.01, momentum=0.9)


def test_init_and_config_errors() -> None:
    model = make()
    bn = model.backbone.features[0][1]
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    assert model.head.classifier.weight.std() < 0.02  # small-normal logit layer
    with pytest.raises(ValueError, match="width_mult"):
        make("resnet50", width_mult=0.5)


@pytest.mark.parametrize(
    ("backbone", "head", "extra"),
    [
        ("mobilenet_v2", "deeplabv3plus", {}),
        ("mobilenet_v2", "deeplabv3plus", {"separable": True, "output_stride": 8}),
        ("resnet50", "deeplabv2", {}),
    ],
)
def test_gradient_reaches_every_parameter(backbone: str, head: str, extra: dict) -> None:
    """No unused parameters: DDP would fail (or need find_unused_parameters) otherwise."""
    model = make(backbone, head, **extra).train()
    x = torch.randn(2, 3, 64, 64)
    target = torch.randint(0, NUM_CLASSES, (2, 64, 64))
    feats = model.forward_features(x)
    loss = nn.functional.cross_entropy(feats["logits"], target) + feats["out"].mean()
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad
    zero = [n for n, p in model.named_parameters() if not torch.any(p.grad != 0)]
    assert not zero


# --- pretrained weights ------------------------------------------------------------


def torchvision_like(model: SegmentationModel, extra: dict[str, tuple[int, ...]]) -> dict:
    """A state dict with torchvision's keys: our backbone's (random values) plus ``extra``."""
    gen = torch.Generator().manual_seed(1)
    state = {}
    for key, value in model.backbone.state_dict().items():
        if value.is_floating_point():
            state[key] = torch.randn(value.shape, generator=gen).abs() + 0.5
        else:
            state[key] = torch.full_like(value, 7)
    for key, shape in extra.items():
        state[key] = torch.randn(shape, generator=gen) if shape else torch.tensor(7)
    return state


def assert_loaded(model: SegmentationModel, state: dict, prefix: str = "") -> None:
    own = model.backbone.state_dict()
    for key, value in own.items():
        assert torch.equal(value, state[prefix + key]), key


def test_torchvision_mobilenet_state_dict_loads(tmp_path: Path) -> None:
    model = make()
    extra = {
        "features.18.0.weight": (1280, 320, 1, 1),
        **{f"features.18.1.{n}": (1280,) for n in ("weight", "bias", "running_mean",
                                                  "running_var")},
        "features.18.1.num_batches_tracked": (),
        "classifier.1.weight": (1000, 1280),
        "classifier.1.bias": (1000,),
    }
    state = torchvision_like(model, extra)
    assert len(state) == 314  # entries of torchvision's mobilenet_v2().state_dict()
    for key, shape in TV_MOBILENET_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    path = tmp_path / "mnv2.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    before = model.head.classifier.weight.clone()
    report = load_pretrained_backbone(model, path)
    assert_loaded(model, {f"module.{k}": v for k, v in state.items()}, "module.")
    assert torch.equal(model.head.classifier.weight, before)  # head untouched
    assert len(report.loaded) == report.total == 255  # 306 minus 51 BN step counters
    assert not report.missing and not report.mismatched and report.complete
    assert sorted(report.unexpected) == sorted(k for k in extra if k.startswith("features.18"))
    assert report.dropped == ["classifier.1.weight", "classifier.1.bias"]
    summary = report.summary()
    assert summary.startswith("loaded 255/255 tensors") and "unexpected: features.18" in summary


def test_torchvision_resnet_state_dict_via_build_model(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    reference = make("resnet50")
    state = torchvision_like(reference, {"fc.weight": (1000, 2048), "fc.bias": (1000,)})
    assert len(state) == 320  # entries of torchvision's resnet50().state_dict()
    for key, shape in TV_RESNET50_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    path = tmp_path / "r50.pth"
    torch.save({"model": state}, path)
    caplog.set_level(logging.INFO, logger="edgeseg.models")
    model = make("resnet50", pretrained=str(path))
    assert_loaded(model, state)
    assert "loaded 265/265 tensors" in caplog.text and "dropped 2 classifier" in caplog.text


def test_shape_mismatch_and_missing_are_reported(tmp_path: Path) -> None:
    state = torchvision_like(make(), {})
    del state["features.3.conv.2.weight"]
    path = tmp_path / "w1.pth"
    torch.save(state, path)

    half = make(width_mult=0.5)
    before = half.backbone.features[0][0].weight.clone()
    report = load_pretrained_backbone(half, path)
    assert not report.loaded and "features.0.0.weight" in report.mismatched
    assert torch.equal(half.backbone.features[0][0].weight, before)
    assert "shape mismatch" in report.summary() and "[32, 3, 3, 3]" in report.summary()
    with pytest.raises(PretrainedWeightsError, match="wrong file"):
        make(width_mult=0.5, pretrained=str(path))

    full = make()
    report = load_pretrained_backbone(full, path)
    assert report.missing == ["features.3.conv.2.weight"] and not report.complete
    assert report.summary().startswith("loaded 254/255 tensors")
    assert "missing: features.3.conv.2.weight" in report.summary()


def test_missing_corrupt_and_non_state_dict_files(tmp_path: Path) -> None:
    model = make()
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth.*never downloads"):
        load_pretrained_backbone(model, missing)
    corrupt = tmp_path / "corrupt.pth"
    torch.save(model.backbone.state_dict(), corrupt)
    corrupt.write_bytes(corrupt.read_bytes()[:4096])  # truncated download/copy
    with pytest.raises(PretrainedWeightsError, match="corrupt.pth.*never downloads"):
        load_pretrained_backbone(model, corrupt)
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(PretrainedWeightsError, match="tensor.pth: expected a non-empty state"):
        load_pretrained_backbone(model, tensor)


# --- ONNX --------------------------------------------------------------------------


def calibrated(**kw) -> SegmentationModel:
    """Eval model with non-trivial BN statistics and O(1) logits, so parity is meaningful."""
    model = make(**kw).eval()
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                for t, lo, hi in ((m.weight, 0.5, 1.5), (m.running_var, 0.5, 1.5),
                                  (m.bias, -0.1, 0.1), (m.running_mean, -0.1, 0.1)):
                    t.copy_(torch.rand(t.shape, generator=gen) * (hi - lo) + lo)
        decoder = model.forward_features(torch.randn(1, 3, 64, 64))["decoder"]
        rms = decoder.square().mean().sqrt() * decoder.shape[1] ** 0.5
        nn.init.normal_(model.head.classifier.weight, std=3.0 / float(rms))
    return model


def export(model: nn.Module, path: Path, dynamic: bool) -> None:
    # torch 2.13: the default dynamo exporter needs onnxscript (not installed); the
    # TorchScript exporter (dynamo=False) works and emits two DeprecationWarnings.
    axes = {"input": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n", 2: "h", 3: "w"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.randn(1, 3, 72, 100),), str(path), dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["logits"],
                          dynamic_axes=axes if dynamic else None)


def check_graph(path: Path) -> None:
    import onnx

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {17}
    ops = {n.op_type for n in proto.graph.node}
    assert ops <= TRT_FRIENDLY_OPS, ops - TRT_FRIENDLY_OPS
    resizes = [n for n in proto.graph.node if n.op_type == "Resize"]
    assert len(resizes) == 3  # image pool, ASPP -> stride 4, logits -> input size
    for node in resizes:  # inputs: X, roi, scales, sizes
        assert len(node.input) == 4 and node.input[2] == "" and node.input[3], node.input


def run_ort(path: Path, x: torch.Tensor) -> np.ndarray:
    from edgeseg.runtime.backends.onnxruntime import create_session

    sess = create_session(path)
    return sess.run(None, {"input": x.numpy()})[0]


def assert_parity(model: nn.Module, path: Path, x: torch.Tensor) -> None:
    with torch.no_grad():
        ref = model(x).numpy()
    got = run_ort(path, x)
    assert got.shape == ref.shape == (x.shape[0], NUM_CLASSES, *x.shape[-2:])
    assert np.abs(ref).max() > 0.1  # logits are not trivially tiny
    assert np.abs(got - ref).max() < 1e-4
    assert np.array_equal(got.argmax(1), ref.argmax(1))


@pytest.mark.parametrize("separable", [False, True])
def test_onnx_export_parity(tmp_path: Path, separable: bool) -> None:
    pytest.importorskip("onnxruntime")
    model = calibrated(separable=separable)
    path = tmp_path / "model.onnx"
    export(model, path, dynamic=False)
    check_graph(path)
    assert_parity(model, path, torch.randn(1, 3, 72, 100))


def test_onnx_dynamic_height_width(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    model = calibrated(separable=True)
    path = tmp_path / "dynamic.onnx"
    export(model, path, dynamic=True)
    check_graph(path)
    for shape in [(1, 3, 72, 100), (2, 3, 96, 64)]:
        assert_parity(model, path, torch.randn(*shape))


def test_forward_with_features_matches_forward_features() -> None:
    from edgeseg.config import ModelConfig
    from edgeseg.models import build_model

    model = build_model(ModelConfig(width_mult=0.25, aspp_channels=32, separable=True)).eval()
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        feats = model(x, features=True)
        assert set(feats) == {"low_level", "out", "decoder", "logits"}
        assert torch.equal(feats["logits"], model(x))
        assert feats["out"].shape[1] == model.encoder_channels
