"""Mean teacher: a frozen copy of a network that follows the student by an exponential
moving average of its weights (Tarvainen & Valpola 2017; domain-extension.txt
Sec. 3.3, Eq. 13: ``w_t,i = alpha * w_t,i-1 + (1 - alpha) * w_s,i``; the paper uses
alpha 0.999 for the segmenter and 0.9999 for an averaged generator, Sec. 4.2).

Only parameters are averaged. Buffers (BatchNorm running statistics, step counters)
are copied from the student at every update: they are statistics of the student's
own activations, which the averaged weights approximate; averaging them too (as
timm's ModelEma does) is the other common choice, and letting the teacher's own
forward passes update them (Mean Teacher's code) would tie them to its batches.

The teacher never gets gradients (``requires_grad`` off, ``forward`` under
``torch.no_grad``) and runs in eval mode by default, so it has no dropout and uses
the running statistics: ``.train()`` on a parent module leaves it in eval unless
``eval_mode=False``. ``update`` takes the student as the trainer holds it, DDP
wrapper included.

Precision: parameters must be fp32 (or fp64). With alpha 0.999 each update moves a
weight by 0.1% of the gap to the student, below bf16's resolution and close to
fp16's, so half-precision weights would stop following. AMP keeps parameters in
fp32, so this holds in edgeseg's training.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from edgeseg.train.distributed import unwrap

_EMA_DTYPES = (torch.float32, torch.float64)


class EMATeacher(nn.Module):
    """``EMATeacher(student, decay)``: starts as a copy of ``student``; ``update(student)``
    after each optimiser step. ``teacher(x)`` runs the averaged network."""

    def __init__(self, student: nn.Module, decay: float = 0.999, eval_mode: bool = True) -> None:
        super().__init__()
        self.decay = decay
        self.eval_mode = eval_mode
        self.module = copy.deepcopy(unwrap(student))
        for name, param in self.module.named_parameters():
            if param.dtype not in _EMA_DTYPES:
                raise ValueError(f"EMA teacher parameter {name} is {param.dtype}: an average "
                                 "needs fp32 weights (keep the student in fp32, use AMP)")
            param.requires_grad_(False)
        self.train(self.training)

    @property
    def decay(self) -> float:
        return self._decay

    @decay.setter
    def decay(self, value: float) -> None:
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {value}")
        self._decay = float(value)

    def train(self, mode: bool = True) -> EMATeacher:
        """Sets ``training`` as usual; the averaged network stays in eval if ``eval_mode``."""
        super().train(mode)
        if self.eval_mode:
            self.module.eval()
        return self

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """teacher = decay * teacher + (1 - decay) * student (parameters); buffers copied."""
        student = unwrap(student)
        ours = dict(self.module.named_parameters())
        theirs = dict(student.named_parameters())
        if ours.keys() != theirs.keys():
            missing = sorted(ours.keys() ^ theirs.keys())[:5]
            raise ValueError(f"EMA teacher and student differ in parameters: {missing}")
        for name, param in ours.items():
            param.lerp_(theirs[name].detach().to(param.dtype), 1.0 - self.decay)
        our_buffers = dict(self.module.named_buffers())
        their_buffers = dict(student.named_buffers())
        if our_buffers.keys() != their_buffers.keys():
            missing = sorted(our_buffers.keys() ^ their_buffers.keys())[:5]
            raise ValueError(f"EMA teacher and student differ in buffers: {missing}")
        for name, buf in our_buffers.items():
            buf.copy_(their_buffers[name])

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            return self.module(*args, **kwargs)
