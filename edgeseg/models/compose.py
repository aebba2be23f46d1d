"""What a method deploys: pre-networks -> segmenter -> per-class bias, as one module.

Validation, ``best.pt`` selection, export and evaluation all call this module, so the
score of a run is the score of exactly the graph a vehicle runs. The class bias is the
per-class re-weighting of DANIA-like methods in logit form: argmax(softmax(z) * w) =
argmax(z + log w), so it costs one Add before the ArgMax and keeps probabilities
meaningful up to the weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Deploy:
    """A method's deployable graph, by network name (stored in every checkpoint)."""

    segmenter: str = "model"  # or e.g. "teacher" (an EMA copy of the segmenter)
    #: image -> image networks applied first, in order: prenets, or translators (adapted
    #: to the segmenter's input range by `as_prenet`)
    pre: tuple[str, ...] = ()
    class_bias: tuple[float, ...] | None = None  # added to the logits (log class weights)

    @property
    def trivial(self) -> bool:
        return self.segmenter == "model" and not self.pre and self.class_bias is None

    def networks(self) -> tuple[str, ...]:
        return (*self.pre, self.segmenter)

    def to_dict(self) -> dict:
        return {"segmenter": self.segmenter, "pre": list(self.pre),
                "class_bias": None if self.class_bias is None else list(self.class_bias)}

    @classmethod
    def from_dict(cls, data: dict | None) -> Deploy:
        data = data or {}
        bias = data.get("class_bias")
        return cls(str(data.get("segmenter", "model")), tuple(data.get("pre") or ()),
                   None if bias is None else tuple(float(b) for b in bias))


def log_weights(weights: Sequence[float]) -> tuple[float, ...]:
    """Class weights w_k > 0 as the logit bias log w_k."""
    if any(w <= 0 for w in weights):
        raise ValueError(f"class weights must be > 0 to become a logit bias, got {list(weights)}")
    return tuple(math.log(w) for w in weights)


class InSegmenterRange(nn.Module):
    """A translator (RGB in [-1, 1] -> [-1, 1]) used as a pre-network: the segmenter's
    normalised input ``(x/255 - mean)/std`` is mapped to [-1, 1], translated and mapped
    back, so a translator composes in front of the segmenter like a relighting net."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        self.size_multiple = getattr(net, "size_multiple", 1)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net((x * self.std + self.mean) * 2.0 - 1.0)
        return ((y + 1.0) * 0.5 - self.mean) / self.std


def as_prenet(net: nn.Module, role: str, mean: Sequence[float], std: Sequence[float]
              ) -> nn.Module:
    """``net`` as a pre-network in the segmenter's range (translators are adapted)."""
    return InSegmenterRange(net, mean, std) if role == "translator" else net


class DeployedSegmenter(nn.Module):
    """``forward(x)``: logits of ``segmenter(pre_n(...pre_1(x)))`` plus ``class_bias``."""

    def __init__(self, segmenter: nn.Module, pre: Sequence[nn.Module] = (),
                 class_bias: Sequence[float] | None = None) -> None:
        super().__init__()
        self.pre = nn.ModuleList(pre)
        self.segmenter = segmenter
        self.num_classes = getattr(segmenter, "num_classes", None)
        if class_bias is not None:
            if self.num_classes is not None and len(class_bias) != self.num_classes:
                raise ValueError(f"class_bias has {len(class_bias)} values for "
                                 f"{self.num_classes} classes")
            self.register_buffer("class_bias", torch.tensor(list(class_bias),
                                                            dtype=torch.float32).view(1, -1, 1, 1))
        else:
            self.class_bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for net in self.pre:
            x = net(x)
        logits = self.segmenter(x)
        if self.class_bias is not None:
            logits = logits + self.class_bias.to(logits.dtype)
        return logits
