"""Frozen feature networks for feature (perceptual) losses.

Domain extension (domain-extension.txt Sec. 3.2, Eq. 10-11, Sec. 4.2) keeps a
translation's content by the L2 distance of ImageNet VGG-19 activations at
``block5_conv2`` (Keras naming: the output of conv5_2 *after* its ReLU, as a Keras
conv layer includes its activation). `VGG19Features` builds torchvision's
``vgg19().features`` layout itself (same ``features.N.*`` keys, so a torchvision
state dict loads) up to the requested layer and never downloads: `load_vgg19` reads
a local file only.

Without such a file, `SegmenterEncoderFeatures` stands in: the encoder output
(``out``) of a frozen copy of a trained segmenter. It is a content representation
too (deep, low resolution, trained on the same street scenes) but not the paper's
and not comparable across segmenters; ``describe()`` says which network a run used,
so it can be recorded next to the results.

Input of both: RGB in [-1, 1] (the translators' range, `generator.ResnetGenerator`),
normalised inside to what the network was trained on (ImageNet mean/std on [0, 1]
for VGG; the segmenter's own mean/std). Both are frozen (no parameter gradients,
eval mode) but differentiable with respect to their input.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from edgeseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from edgeseg.errors import EdgesegError
from edgeseg.models.pretrained import PretrainedWeightsError, read_state_dict
from edgeseg.train.distributed import unwrap

#: torchvision's VGG-19 ("E") configuration: conv widths, "M" = 2x2 max pool
VGG19_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                                    512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
HOW_TO_GET = ("save torchvision.models.vgg19(weights='IMAGENET1K_V1').features.state_dict() "
              "or the whole model's state_dict() with torch.save on a machine with internet "
              "and pass that file (edgeseg never downloads weights)")


class FeatureNetError(EdgesegError):
    """A feature-network weights file that is missing, unreadable or not VGG-19."""


def _layer_indices() -> dict[str, int]:
    """Keras layer names -> index in ``features`` of the module that outputs them."""
    names: dict[str, int] = {}
    block, conv, index = 1, 0, 0
    for item in VGG19_CFG:
        if item == "M":
            names[f"block{block}_pool"] = index
            block, conv, index = block + 1, 0, index + 1
        else:
            conv += 1
            names[f"block{block}_conv{conv}"] = index + 1  # conv, then its ReLU
            index += 2
    return names


#: e.g. ``block5_conv2`` -> 31 (ReLU after conv5_2, ``features.30``), ``block1_pool`` -> 4
VGG19_LAYERS: dict[str, int] = _layer_indices()


def _vgg19_features(last: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = 3
    for item in VGG19_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(in_ch, int(item), 3, padding=1), nn.ReLU(inplace=True)]
            in_ch = int(item)
    return nn.Sequential(*layers[:last + 1])


class Normalise(nn.Module):
    """RGB in [-1, 1] -> ``(x01 - mean) / std``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x + 1.0) * 0.5 - self.mean) / self.std


def _freeze(net: nn.Module) -> None:
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)


class VGG19Features(nn.Module):
    """ImageNet VGG-19 up to ``layer`` (a `VGG19_LAYERS` name); ``forward(rgb in [-1, 1])``
    returns that layer's activation. Load weights with `load_vgg19`; a bare instance
    has random weights. Stays in eval mode."""

    def __init__(self, layer: str = "block5_conv2") -> None:
        super().__init__()
        if layer not in VGG19_LAYERS:
            raise ValueError(f"unknown VGG-19 layer {layer!r}; use one of {list(VGG19_LAYERS)}")
        self.layer = layer
        self.source = "random weights"
        self.normalise = Normalise(IMAGENET_MEAN, IMAGENET_STD)
        self.features = _vgg19_features(VGG19_LAYERS[layer])
        _freeze(self)

    def train(self, mode: bool = True) -> VGG19Features:
        return super().train(False)

    def describe(self) -> str:
        return f"vgg19 {self.layer} ({self.source})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.normalise(x))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_vgg19(path: str | os.PathLike, layer: str = "block5_conv2") -> VGG19Features:
    """`VGG19Features` with the weights of a local torchvision VGG-19 state dict (keys
    ``features.N.weight``/``bias``, or a bare ``features`` state dict with ``N.*``;
    the classifier and layers past ``layer`` are ignored). Never downloads; a missing,
    unreadable or non-VGG-19 file raises `FeatureNetError` naming the file and the fix."""
    p = Path(path)
    if not p.is_file():
        raise FeatureNetError(f"VGG-19 weights {p}: no such file; {HOW_TO_GET}")
    try:
        state = read_state_dict(p)
    except (PretrainedWeightsError, OSError) as exc:
        cause = exc.__cause__ or exc
        text = (str(cause).strip().splitlines() or [""])[0]
        if isinstance(cause, PretrainedWeightsError):  # read, but not a state dict
            text = text.split(": ", 1)[-1].split(". edgeseg never")[0]
        elif text.startswith("Weights only load failed"):  # torch's advice does not apply
            text = "not a torch file of tensors"
        text = text if len(text) <= 120 else text[:117] + "..."
        raise FeatureNetError(f"VGG-19 weights {p}: cannot be read as a state dict "
                              f"({type(cause).__name__}: {text}); {HOW_TO_GET}") from None
    net = VGG19Features(layer)
    wanted = net.features.state_dict()
    if not any(k.startswith("features.") for k in state):
        state = {f"features.{k}": v for k, v in state.items()}
    missing = [k for k in wanted if f"features.{k}" not in state]
    wrong = [k for k in wanted if f"features.{k}" in state
             and tuple(state[f"features.{k}"].shape) != tuple(wanted[k].shape)]
    if missing or wrong:
        what = (f"missing {['features.' + k for k in missing[:3]]}" if missing else
                f"shape of features.{wrong[0]} is {list(state['features.' + wrong[0]].shape)}, "
                f"VGG-19 has {list(wanted[wrong[0]].shape)}")
        raise FeatureNetError(f"VGG-19 weights {p}: not a torchvision VGG-19 state dict "
                              f"({what}); {HOW_TO_GET}")
    net.features.load_state_dict({k: state[f"features.{k}"] for k in wanted})
    net.source = f"{p}, sha256 {_sha256(p)[:12]}"
    return net


class SegmenterEncoderFeatures(nn.Module):
    """Stand-in for VGG-19 when no VGG file is given: the encoder output (``out`` of
    ``forward_features``) of a frozen copy of ``segmenter`` (a `SegmentationModel`,
    DDP-wrapped or not; the copy is frozen, so training the segmenter later does not
    change the loss). ``mean``/``std``: the segmenter's input normalisation."""

    def __init__(self, segmenter: nn.Module, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, name: str = "segmenter") -> None:
        super().__init__()
        self.segmenter = copy.deepcopy(unwrap(segmenter))
        if not hasattr(self.segmenter, "forward_features"):
            raise TypeError(f"{type(self.segmenter).__name__} has no forward_features; "
                            "pass a SegmentationModel")
        self.normalise = Normalise(mean, std)
        self.name = name
        _freeze(self)

    def train(self, mode: bool = True) -> SegmenterEncoderFeatures:
        return super().train(False)

    def describe(self) -> str:
        return f"{self.name} encoder 'out' (frozen stand-in for VGG-19 block5_conv2)"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segmenter.forward_features(self.normalise(x))["out"]


def build_feature_net(vgg19_path: str | os.PathLike | None, segmenter: nn.Module | None = None,
                      layer: str = "block5_conv2", mean: Sequence[float] = IMAGENET_MEAN,
                      std: Sequence[float] = IMAGENET_STD) -> VGG19Features | SegmenterEncoderFeatures:
    """VGG-19 from ``vgg19_path`` if given, else the segmenter stand-in; log ``describe()``."""
    if vgg19_path:
        return load_vgg19(vgg19_path, layer)
    if segmenter is None:
        raise FeatureNetError("feature loss: no VGG-19 weights file and no segmenter to stand "
                              f"in for it; {HOW_TO_GET}")
    return SegmenterEncoderFeatures(segmenter, mean, std)

