"""PyTorch predictor: RGB uint8 frames -> class ids, for evaluation and demos."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgeseg.runtime.stages import fit_frame, unfit_labels
from edgeseg.train.checkpoint import load_model


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
