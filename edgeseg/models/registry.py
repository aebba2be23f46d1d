"""``build_model(cfg)``: backbone + head from a ``ModelConfig``, as a ``SegmentationModel``."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from edgeseg.config import ModelConfig

from .aspp import resize_to
from .deeplabv2 import DeepLabV2Head
from .deeplabv3plus import DeepLabV3PlusHead
from .mobilenetv2 import MobileNetV2Backbone
from .pretrained import PretrainedWeightsError, load_pretrained_backbone
from .resnet import resnet50, resnet101

logger = logging.getLogger("edgeseg.models")


class SegmentationModel(nn.Module):
    """Backbone + head; ``forward`` returns logits at the input size.

    ``forward_features`` exposes the intermediate maps that UDA methods need
    (``out`` for feature-level discriminators, ``decoder`` for output-space or
    prototype losses); ``forward`` is just its ``logits`` entry, so the exported
    graph is exactly what is trained.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.num_classes = num_classes
        self.encoder_channels: int = backbone.out_channels

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """{'low_level', 'out' (encoder M_e), 'decoder' (pre-classifier), 'logits' (input size)}."""
        low_level, out = self.backbone(x)
        decoder, logits = self.head(low_level, out)
        # size= (never scale_factor) so ONNX/TensorRT Resize follows the real input size.
        logits = resize_to(logits, x.shape[-2:])
        return {"low_level": low_level, "out": out, "decoder": decoder, "logits": logits}

    def forward(self, x: torch.Tensor, features: bool = False
                ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Logits; with ``features=True`` the `forward_features` dict. Methods under DDP must
        call the wrapped module (``net(x, features=True)``), never ``forward_features``
        directly: DDP only syncs gradients of what goes through its own forward."""
        out = self.forward_features(x)
        return out if features else out["logits"]

    def param_groups(self, lr: float, head_lr_mult: float = 1.0) -> list[dict]:
        """Optimizer groups: backbone at ``lr``, head at ``lr * head_lr_mult``.

        Each group also carries ``lr_mult`` so schedules can rescale per group.
        """
        def trainable(module: nn.Module) -> list[nn.Parameter]:
            return [p for p in module.parameters() if p.requires_grad]

        return [
            {"params": trainable(self.backbone), "lr": lr, "lr_mult": 1.0, "name": "backbone"},
            {"params": trainable(self.head), "lr": lr * head_lr_mult, "lr_mult": head_lr_mult,
             "name": "head"},
        ]


BACKBONES: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "mobilenet_v2": lambda cfg: MobileNetV2Backbone(cfg.width_mult, cfg.output_stride),
    "resnet50": lambda cfg: resnet50(cfg.output_stride),
    "resnet101": lambda cfg: resnet101(cfg.output_stride),
}

HEADS: dict[str, Callable[[ModelConfig, nn.Module], nn.Module]] = {
    "deeplabv3plus": lambda cfg, bb: DeepLabV3PlusHead(
        bb.low_level_channels, bb.out_channels, cfg.num_classes, cfg.output_stride,
        cfg.aspp_channels, separable=cfg.separable),
    "deeplabv2": lambda cfg, bb: DeepLabV2Head(bb.out_channels, cfg.num_classes),
}


def build_model(cfg: ModelConfig) -> SegmentationModel:
    """Build the segmenter of ``cfg``; loads ``cfg.pretrained`` into the backbone if set."""
    if cfg.backbone not in BACKBONES:
        raise ValueError(f"model.backbone: unknown {cfg.backbone!r}; use one of {list(BACKBONES)}")
    if cfg.head not in HEADS:
        raise ValueError(f"model.head: unknown {cfg.head!r}; use one of {list(HEADS)}")
    if cfg.width_mult != 1.0 and cfg.backbone != "mobilenet_v2":
        raise ValueError(f"model.width_mult applies to mobilenet_v2 only, not {cfg.backbone}")
    backbone = BACKBONES[cfg.backbone](cfg)
    model = SegmentationModel(backbone, HEADS[cfg.head](cfg, backbone), cfg.num_classes)
    if cfg.pretrained:
        report = load_pretrained_backbone(model, cfg.pretrained)
        if not report.loaded:
            raise PretrainedWeightsError(
                f"model.pretrained: no tensor of {cfg.pretrained} fits the {cfg.backbone} "
                f"backbone (width_mult {cfg.width_mult}); wrong file? {report.summary()}"
            )
        log = logger.info if report.complete else logger.warning
        log("pretrained %s: %s", cfg.backbone, report.summary())
    return model
