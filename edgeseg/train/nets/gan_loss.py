"""Adversarial losses on discriminator logits: LSGAN (L2) or vanilla (BCE with logits).

Papers write the GAN game with log-losses; CycleGAN and the MobileNet-UDA paper
replace them by least squares, which does not saturate when the discriminator
wins. The game is split into a generator term (fakes scored as real) and a
discriminator term (reals as real, fakes as fake, halved as in CycleGAN so the
discriminator learns at half the generator's rate).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

GANMode = Literal["lsgan", "vanilla"]


class GANLoss:
    """``loss(logits, real)``: mean distance of every patch score to the real/fake label."""

    def __init__(self, mode: GANMode = "lsgan", real_label: float = 1.0,
                 fake_label: float = 0.0) -> None:
        if mode not in ("lsgan", "vanilla"):
            raise ValueError(f"unknown GAN loss {mode!r}; use lsgan or vanilla")
        self.mode = mode
        self.real_label = real_label
        self.fake_label = fake_label

    def __call__(self, logits: torch.Tensor, real: bool) -> torch.Tensor:
        logits = logits.float()  # losses in fp32 under AMP
        target = torch.full_like(logits, self.real_label if real else self.fake_label)
        if self.mode == "lsgan":
            return F.mse_loss(logits, target)
        return F.binary_cross_entropy_with_logits(logits, target)

    def discriminator(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
        """0.5 * (loss(real -> real) + loss(fake -> fake)); pass detached fakes."""
        return 0.5 * (self(logits_real, True) + self(logits_fake, False))
