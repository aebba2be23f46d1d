"""PyTorch predictors on uint8 frames: a segmenter (-> class ids) for evaluation and demos,
and an image network (translator, relighting) frame -> frame for deriving data."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgeseg.runtime.stages import fit_frame, unfit_labels
from edgeseg.train.checkpoint import load_checkpoint, load_model, load_network


class TorchPredictor:
    """Normalises like training, runs the segmenter, returns argmax labels (uint8).

    The same interface as the runtime's `BackendPredictor` (``label_space``, ``size``,
    ``precision``, ``kind``, ``info``, ``close``), so a checkpoint scores like an engine.
    ``size`` (H, W) fits frames as an engine of that size would (`fit_frame`); None runs
    each frame at its own size."""

    kind = "torch"
    precision = "fp32"

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...],
                 device: torch.device | str = "cpu", label_space: str = "",
                 size: tuple[int, int] | None = None) -> None:
        self.model = model
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1) * 255.0
        self.label_space = label_space
        self.size = size
        self.info: dict[str, object] = {"kind": "checkpoint"}

    @classmethod
    def from_checkpoint(cls, path: str, device: str = "cpu") -> tuple[TorchPredictor, dict]:
        model, ckpt = load_model(path, device)
        predictor = cls(model, tuple(ckpt["mean"]), tuple(ckpt["std"]), device,
                        str(ckpt["label_space"]))
        predictor.info.update(method=ckpt.get("method"), iteration=ckpt.get("iteration"))
        return predictor, ckpt

    @torch.no_grad()
    def logits(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(image)).to(self.device)
        x = (x.permute(2, 0, 1).unsqueeze(0).float() - self.mean) / self.std
        was_training = self.model.training
        self.model.eval()
        try:
            return self.model(x)
        finally:
            self.model.train(was_training)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        fitted, box = fit_frame(image, self.size)
        labels = self.logits(fitted).argmax(1)[0].to(torch.uint8).cpu().numpy()
        return unfit_labels(labels, box, image.shape[:2])

    def close(self) -> None:
        """Nothing to release (the interface `BackendPredictor` offers)."""


#: the range each image-network role works in, as (mean, std) of (x / 255 - mean) / std;
#: a prenet works in the segmenter's range (the checkpoint's mean/std)
TRANSLATOR_RANGE = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # [-1, 1], tanh generators


class FrameToFrame(nn.Module):
    """uint8 NHWC BGR frame -> an image network in its own range -> uint8 NHWC BGR frame.

    The one frame-level wrapper of image networks: the translator/prenet ONNX export
    traces it and `TorchTranslator` runs it, so derived data and engines agree."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.net = net
        m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * s))
        self.register_buffer("bias", -m / s)
        self.register_buffer("out_scale", 255.0 * s)
        self.register_buffer("out_bias", 255.0 * m)
        self.register_buffer("flip", torch.tensor([2, 1, 0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().permute(0, 3, 1, 2).index_select(1, self.flip) * self.scale + self.bias
        y = self.net(x) * self.out_scale + self.out_bias
        # Round before the cast: ONNX and torch both truncate float -> uint8.
        y = torch.clamp(torch.round(y), 0.0, 255.0)
        return y.index_select(1, self.flip).permute(0, 2, 3, 1).to(torch.uint8)


def image_range(role: str, ckpt: dict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the range an image network of ``role`` works in."""
    if role == "translator":
        return TRANSLATOR_RANGE
    if role == "prenet":
        return tuple(ckpt["mean"]), tuple(ckpt["std"])
    raise ValueError(f"a {role or 'training-only'} network does not map images to images")


class TorchTranslator:
    """An image network of a checkpoint on uint8 BGR frames of any size: reflect-padded to
    the network's size multiple, run, cropped back."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...],
                 device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.module = FrameToFrame(net, mean, std).to(self.device).eval()
        self.multiple = int(getattr(net, "size_multiple", 1))

    @classmethod
    def from_checkpoint(cls, path: str, network: str, device: str = "cpu"
                        ) -> tuple[TorchTranslator, dict]:
        ckpt = load_checkpoint(path)
        net, spec = load_network(ckpt, network, path)
        try:
            mean, std = image_range(spec.role, ckpt)
        except ValueError as exc:
            raise ValueError(f"{path}: network {network!r}: {exc}") from None
        return cls(net, mean, std, device), ckpt

    @torch.no_grad()
    def __call__(self, bgr: np.ndarray) -> np.ndarray:
        h, w = bgr.shape[:2]
        m = self.multiple
        ph, pw = (-h) % m, (-w) % m
        x = torch.from_numpy(np.ascontiguousarray(bgr))[None].to(self.device)
        if ph or pw:
            x = torch.nn.functional.pad(x.permute(0, 3, 1, 2).float(), (0, pw, 0, ph),
                                        mode="reflect").to(torch.uint8).permute(0, 2, 3, 1)
        y = self.module(x)[0, :h, :w]
        return np.ascontiguousarray(y.cpu().numpy())
