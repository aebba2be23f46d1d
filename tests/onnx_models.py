"""Small real ONNX models for export/precision/lint/runtime tests.

``export_tiny`` exports a width-0.25 DeepLabv3+/MobileNet-v2 with the deploy
contract (uint8 NHWC BGR ``frame`` in, uint8 ``labels`` out, pre- and
post-processing inside the graph) or the float contract (``image`` NCHW in,
``logits`` out), with edgeseg metadata, so tests need not wait for (or depend
on) the checkpoint exporter. ``train_tiny`` fits it for a few seconds on
``block_scene`` images so that its argmax is confident: an untrained network
has near-tied logits whose argmax flips under any rounding, which would make
fp16/int8 agreement tests meaningless. ``make_graph_model`` builds hand-made
graphs for lint tests.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgeseg.contract.metadata import ModelMetadata, TensorSpec, set_metadata
from edgeseg.labels import CITYSCAPES19

SIZE = (64, 96)  # (height, width)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
#: block_scene classes (Cityscapes-19 train ids): sky, building, vegetation, road, car
SKY, BUILDING, VEGETATION, ROAD, CAR = 10, 2, 8, 0, 13
_COLOURS = {SKY: (90, 140, 210), BUILDING: (110, 100, 95), VEGETATION: (60, 120, 40),
            ROAD: (128, 64, 128), CAR: (20, 30, 160)}


def block_scene(rng: np.random.Generator, size: tuple[int, int] = SIZE,
                dark: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A toy driving scene (RGB uint8, labels uint8): sky / building|vegetation / road + a car.

    Random band heights, textures and brightness make it a real (if easy) task;
    ``dark`` < 1 scales brightness (a night-ish frame).
    """
    h, w = size
    label = np.full((h, w), ROAD, np.uint8)
    horizon = int(rng.uniform(0.3, 0.5) * h)
    label[:horizon] = SKY
    split = int(rng.uniform(0.2, 0.8) * w)
    top = int(rng.uniform(0.1, 0.25) * h)
    label[top:horizon, :split] = BUILDING
    label[top + 3:horizon, split:] = VEGETATION
    cw, ch = int(rng.uniform(0.2, 0.35) * w), int(rng.uniform(0.15, 0.3) * h)
    cx, cy = int(rng.uniform(0, w - cw)), int(rng.uniform(horizon, h - ch))
    label[cy:cy + ch, cx:cx + cw] = CAR
    lut = np.zeros((256, 3), np.float32)
    for cls, colour in _COLOURS.items():
        lut[cls] = colour
    image = lut[label] * rng.uniform(0.8, 1.2, 3) * dark
    image += rng.normal(0, 10, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), label


def scene_frames(n: int, seed: int = 0, size: tuple[int, int] = SIZE,
                 fmt: str = "uint8-nhwc-bgr") -> np.ndarray:
    """``n`` block scenes as one model-input batch per frame: (n, 1, ...) in ``fmt``."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        rgb, _ = block_scene(rng, size)
        if fmt == "uint8-nhwc-bgr":
            frames.append(rgb[None, :, :, ::-1].copy())
        else:
            x = (rgb.astype(np.float32) / 255 - np.float32(MEAN)) / np.float32(STD)
            frames.append(x.transpose(2, 0, 1)[None].astype(np.float32))
    return np.stack(frames)


def tiny_network(seed: int = 0):  # -> SegmentationModel (torch is imported lazily)
    import torch

    from edgeseg.config import ModelConfig
    from edgeseg.models import build_model

    torch.manual_seed(seed)
    cfg = ModelConfig(backbone="mobilenet_v2", width_mult=0.25, separable=True,
                      aspp_channels=32, num_classes=19)
    return build_model(cfg)


#: what "fitted" means for ``train_tiny``: eval-mode argmax on held-out block scenes
MIN_ACCURACY, MIN_CLASSES, MAX_STEPS = 0.75, 4, 300


def train_tiny(model, steps: int = 30, seed: int = 0, size: tuple[int, int] = SIZE):
    """Fit ``model`` on block scenes (Adam, batch 4); returns it in eval mode.

    ``steps`` is a minimum: training continues in rounds of 10 steps until the
    eval-mode argmax on held-out scenes is right on ``MIN_ACCURACY`` of the
    pixels and names ``MIN_CLASSES`` classes. A fixed step count is not enough:
    how far 15 steps get depends on the CPU's float rounding, and a fixture
    that predicts one class everywhere makes every agreement test vacuous.
    """
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed + 100)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs: extra threads only fight the shared cores
    mean = torch.tensor(MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD).view(1, 3, 1, 1) * 255

    def batch(pairs: list) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.stack([p[0] for p in pairs])).permute(0, 3, 1, 2).float()
        return (x - mean) / std, torch.from_numpy(np.stack([p[1] for p in pairs])).long()

    check_rng = np.random.default_rng(seed + 999)
    held_out = batch([block_scene(check_rng, size) for _ in range(4)])
    done, accuracy, classes = 0, 0.0, 0
    try:
        while done < MAX_STEPS:
            model.train()
            for _ in range(steps if done == 0 else 10):
                x, y = batch([block_scene(rng, size, dark=rng.uniform(0.5, 1.0)) for _ in range(4)])
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                done += 1
            model.eval()
            with torch.no_grad():
                pred = model(held_out[0]).argmax(1)
            accuracy = float((pred == held_out[1]).float().mean())
            classes = len(torch.unique(pred))
            if accuracy >= MIN_ACCURACY and classes >= MIN_CLASSES:
                return model
    finally:
        torch.set_num_threads(threads)
    raise AssertionError(f"tiny fixture model did not fit block scenes in {done} steps "
                         f"(accuracy {accuracy:.2f}, {classes} classes predicted)")


def _wrap(model, fmt: str):
    """The deploy wrapper: uint8 NHWC BGR -> normalised NCHW RGB -> net -> uint8 argmax."""
    import torch
    from torch import nn

    class FrameToLabels(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model
            self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) * 255)
            self.register_buffer("inv_std", 1 / (torch.tensor(STD).view(1, 3, 1, 1) * 255))

        def forward(self, frame: torch.Tensor) -> torch.Tensor:
            x = frame.permute(0, 3, 1, 2).float()[:, [2, 1, 0]]
            logits = self.net((x - self.mean) * self.inv_std)
            return logits.argmax(1).to(torch.uint8)

    return FrameToLabels().eval() if fmt == "uint8-nhwc-bgr" else model.eval()


def metadata(fmt: str = "uint8-nhwc-bgr", size: tuple[int, int] = SIZE,
             batch: int | None = 1) -> ModelMetadata:
    h, w = size
    if fmt == "uint8-nhwc-bgr":
        inp = TensorSpec("frame", "uint8", [batch, h, w, 3], fmt)
        out = TensorSpec("labels", "uint8", [batch, h, w], "labels")
    else:
        inp = TensorSpec("image", "float32", [batch, 3, h, w], fmt)
        out = TensorSpec("logits", "float32", [batch, 19, h, w], "logits")
    if batch is None:
        inp.profile = {k: [n, *inp.shape[1:]] for k, n in (("min", 1), ("opt", 1), ("max", 4))}
    return ModelMetadata(
        labels=list(CITYSCAPES19.names), palette=[list(c) for c in CITYSCAPES19.palette],
        label_space="cityscapes19", mean=list(MEAN), std=list(STD), inputs=[inp],
        outputs=[out], model={"backbone": "mobilenet_v2", "width_mult": 0.25},
    )


def export_tiny(path: str | Path, *, train_steps: int = 0, fmt: str = "uint8-nhwc-bgr",
                size: tuple[int, int] = SIZE, seed: int = 0, dynamic_batch: bool = False,
                opset: int = 17) -> Path:
    """Export the tiny segmenter (optionally trained) to ``path`` with edgeseg metadata."""
    import torch

    model = tiny_network(seed)
    if train_steps:
        train_tiny(model, train_steps, seed, size)
    model.eval()
    wrapped = _wrap(model, fmt)
    h, w = size
    if fmt == "uint8-nhwc-bgr":
        example = torch.zeros(1, h, w, 3, dtype=torch.uint8)
        names = (["frame"], ["labels"])
    else:
        example = torch.zeros(1, 3, h, w)
        names = (["image"], ["logits"])
    dynamic = {names[0][0]: {0: "batch"}, names[1][0]: {0: "batch"}} if dynamic_batch else None
    path = Path(path)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # dynamo=False is deliberate
        torch.onnx.export(wrapped, (example,), str(path), input_names=names[0],
                          output_names=names[1], opset_version=opset, dynamo=False,
                          dynamic_axes=dynamic)
    proto = onnx.load(str(path))
    meta = metadata(fmt, size, None if dynamic_batch else 1)
    set_metadata(proto, meta)
    onnx.save(proto, str(path))
    return path


def make_graph_model(nodes: Sequence[onnx.NodeProto], inputs: Sequence[onnx.ValueInfoProto],
                     outputs: Sequence[onnx.ValueInfoProto],
                     initializers: Sequence[onnx.TensorProto] = (), opset: int = 17,
                     extra_opsets: Sequence[tuple[str, int]] = ()) -> onnx.ModelProto:
    """A hand-made graph (for lint tests); not checked, so it may be deliberately invalid."""
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(initializers))
    imports = [helper.make_opsetid("", opset)]
    imports += [helper.make_opsetid(d, v) for d, v in extra_opsets]
    return helper.make_model(graph, opset_imports=imports)


def value(name: str, elem: int = TensorProto.FLOAT,
          shape: Sequence[int | str | None] = (1, 3, 8, 8)) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(shape))
