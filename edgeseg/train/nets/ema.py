"""Mean teacher: an exponential moving average of a student network.

Used by consistency-training methods (domain extension's mean teacher, MIC-style
pseudo-labelling). The teacher is never trained by gradients; it is checkpointed
like any other network of a method (``add_network(..., trainable=False)``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from edgeseg.train.distributed import unwrap


class EMATeacher(nn.Module):
    def __init__(self, student: nn.Module, alpha: float = 0.999) -> None:
        super().__init__()
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"EMA alpha must be in [0, 1), got {alpha}")
        self.alpha = alpha
        self.teacher = copy.deepcopy(unwrap(student)).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, student: nn.Module, iteration: int | None = None) -> None:
        """teacher = a * teacher + (1 - a) * student; buffers (BN stats) are copied.

        With ``iteration`` the rate ramps up as min(alpha, 1 - 1/(it + 1)), the
        usual warm start so the teacher does not lag a random initialisation.
        """
        a = self.alpha if iteration is None else min(self.alpha, 1.0 - 1.0 / (iteration + 1))
        src = unwrap(student)
        for t, s in zip(self.teacher.parameters(), src.parameters(), strict=True):
            t.mul_(a).add_(s.detach(), alpha=1.0 - a)
        for t, s in zip(self.teacher.buffers(), src.buffers(), strict=True):
            t.copy_(s)

    def forward(self, *args, **kwargs):  # noqa: ANN002, ANN003 - mirrors the student
        with torch.no_grad():
            return self.teacher(*args, **kwargs)

    def train(self, mode: bool = True) -> EMATeacher:
        super().train(mode)
        self.teacher.eval()  # the teacher always predicts in eval mode
        return self

