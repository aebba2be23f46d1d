"""Learning-rate schedules as pure functions of the iteration.

The LR is recomputed from (base LR, iteration) every step instead of being
carried as scheduler state, so a resumed run gets exactly the same LRs and
methods can give each network its own schedule (e.g. the segmenter on poly
decay, the GAN networks constant) by calling ``set_lr`` with their own
parameters.
"""

from __future__ import annotations

from torch.optim import Optimizer


def lr_factor(iteration: int, total: int, schedule: str = "poly", power: float = 0.9,
              warmup_iters: int = 0, step_size: int = 0, gamma: float = 0.1) -> float:
    """Multiplier of the base LR at ``iteration`` (0-based) of ``total``."""
    if warmup_iters > 0 and iteration < warmup_iters:
        return (iteration + 1) / warmup_iters
    if schedule == "constant":
        return 1.0
    if schedule == "poly":
        return max(0.0, 1.0 - iteration / max(1, total)) ** power
    if schedule == "step":
        return gamma ** (iteration // step_size) if step_size > 0 else 1.0
    raise ValueError(f"unknown LR schedule {schedule!r}; use poly, constant or step")


def set_lr(optimizer: Optimizer, factor: float) -> None:
    """Set every param group's LR to its ``base_lr`` times ``factor``."""
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
        group["lr"] = group["base_lr"] * factor
