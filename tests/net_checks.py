"""Checks on networks the method tests share: weight snapshots and where gradients went."""

from __future__ import annotations

import torch
from torch import nn


def snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def no_grad(net: nn.Module) -> bool:
    return all(p.grad is None or not p.grad.any() for p in net.parameters())


def has_grad(net: nn.Module) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
