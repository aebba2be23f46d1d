"""Learning-rate schedules as pure functions of the iteration.

The LR is recomputed from (base LR, iteration) every step instead of being
carried as scheduler state, so a resumed run gets exactly the same LRs and
methods can give each network its own schedule (e.g. the segmenter on poly
decay, the GAN networks constant) by calling ``set_lr`` with their own
parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch.optim import Optimizer


def lr_factor(iteration: int, total: int, schedule: str = "poly", power: float = 0.9,
              warmup_iters: int = 0, step_size: int = 0, gamma: float = 0.1,
              decay_start: float = 0.5, milestones: tuple[int, ...] = ()) -> float:
    """Multiplier of the base LR at ``iteration`` (0-based) of ``total``."""
    if warmup_iters > 0 and iteration < warmup_iters:
        return (iteration + 1) / warmup_iters
    if schedule == "constant":
        return 1.0
    if schedule == "poly":
        return max(0.0, 1.0 - iteration / max(1, total)) ** power
    if schedule == "step":
        return gamma ** (iteration // step_size) if step_size > 0 else 1.0
    if schedule == "multistep":
        return gamma ** sum(iteration >= m for m in milestones)
    if schedule == "linear":
        start = round(decay_start * total)
        return 1.0 if iteration < start else max(0.0, 1.0 - (iteration - start) / max(1, total - start))
    raise ValueError(f"unknown LR schedule {schedule!r}; use poly, constant, step, linear or multistep")


def set_lr(optimizer: Optimizer, factor: float) -> None:
    """Set every param group's LR to its ``base_lr`` times ``factor``."""
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
        group["lr"] = group["base_lr"] * factor


@dataclass(frozen=True)
class Ramp:
    """A loss weight or threshold that moves linearly from ``start`` to ``end`` between
    iterations ``begin`` and ``until`` and holds outside them (two of the papers ramp a
    weight up over the first iterations). In a recipe: ``{start: 0, end: 1, until: 5000}``."""

    start: float = 0.0
    end: float = 1.0
    begin: int = 0
    until: int = 0

    def validate(self) -> None:
        if self.begin < 0 or self.until < self.begin:
            raise ValueError(f"ramp begin={self.begin}, until={self.until}: need 0 <= begin <= until")

    def at(self, iteration: int) -> float:
        if iteration >= self.until:
            return self.end
        if iteration <= self.begin:
            return self.start
        return self.start + (self.end - self.start) * (iteration - self.begin) / (self.until - self.begin)


def value_at(value: float | Ramp, iteration: int) -> float:
    """A recipe value that is either a constant or a `Ramp`, at ``iteration``."""
    return value.at(iteration) if isinstance(value, Ramp) else float(value)
