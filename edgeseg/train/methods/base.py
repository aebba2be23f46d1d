"""The plug-in interface every training method implements.

The trainer owns data, devices, DDP, AMP, logging, checkpoints and
evaluation; a method owns its extra networks, their optimisers and LR
schedules, and ``train_step``. What the five UDA methods need maps onto it:

- batches from several domains: declare ``streams`` (``source`` labelled,
  ``target`` unlabelled — its labels are stripped before they reach the
  method —, ``pairs`` aligned day/night);
- several networks with their own optimisers and schedules: ``add_network``,
  ``add_optimizer(name, opt, schedule)``;
- alternating update phases and frozen phases: ``train_step`` decides what to
  step; ``set_requires_grad`` freezes; ``find_unused_parameters`` tells DDP;
- teachers that are not trained by gradients: ``add_network(..., trainable=False)``;
- offline rounds (regenerate pseudo-labels or translated data):
  ``round_boundaries`` + ``on_round``;
- extra exportable networks (a translator, a relighting net): ``exportable``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.optim import Optimizer

from edgeseg.config import OptimConfig, Recipe
from edgeseg.train.distributed import DistInfo, unwrap
from edgeseg.train.schedule import lr_factor, set_lr

Schedule = Callable[[int], float]


@dataclass(frozen=True)
class NoParams:
    """Methods without parameters accept an empty ``method.params`` only."""


@dataclass
class MethodContext:
    recipe: Recipe
    model: nn.Module  # the segmenter, unwrapped
    device: torch.device
    dist: DistInfo
    amp: bool


def set_requires_grad(modules: nn.Module | Iterable[nn.Module], flag: bool) -> None:
    """Freeze or unfreeze whole networks (e.g. discriminators during the generator step)."""
    for m in [modules] if isinstance(modules, nn.Module) else modules:
        for p in m.parameters():
            p.requires_grad_(flag)


def freeze_batchnorm(model: nn.Module) -> None:
    """Put every BatchNorm layer in eval mode: running statistics stay as they are (batch-1
    fine-tuning), affine parameters still train. Call after ``model.train()``."""
    for m in unwrap(model).modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def build_optimizer(cfg: OptimConfig, params: Any) -> Optimizer:
    """SGD/Adam/AdamW from the recipe; ``params`` may be param groups with own LRs."""
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def recipe_schedule(cfg: OptimConfig, total: int) -> Schedule:
    return lambda it: lr_factor(it, total, cfg.schedule, cfg.power, cfg.warmup_iters,
                                cfg.step_size, cfg.gamma)


class Method:
    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    streams: ClassVar[tuple[str, ...]] = ("source",)
    #: DDP must tolerate parameters without gradients (frozen phases, alternating steps)
    find_unused_parameters: ClassVar[bool] = False

    def __init__(self, ctx: MethodContext, params: Any) -> None:
        self.ctx = ctx
        self.params = params
        self.networks: dict[str, nn.Module] = {}
        self.trainable: dict[str, bool] = {}
        self.optimizers: dict[str, Optimizer] = {}
        self.schedules: dict[str, Schedule] = {}
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=ctx.amp)
        self.add_network("model", ctx.model)
        self.build()

    # --- set-up --------------------------------------------------------------
    def build(self) -> None:
        """Create extra networks and every optimiser (override)."""
        raise NotImplementedError

    def add_network(self, name: str, module: nn.Module, trainable: bool = True) -> nn.Module:
        self.networks[name] = module.to(self.ctx.device)
        self.trainable[name] = trainable
        return self.networks[name]

    def add_optimizer(self, name: str, optimizer: Optimizer, schedule: Schedule) -> None:
        self.optimizers[name] = optimizer
        self.schedules[name] = schedule

    def wrap_networks(self, wrap: Callable[[str, nn.Module], nn.Module]) -> None:
        """Let the trainer wrap trainable networks (DDP); optimisers keep the same params."""
        for name, net in self.networks.items():
            if self.trainable[name]:
                self.networks[name] = wrap(name, net)

    def net(self, name: str) -> nn.Module:
        """The network to call in ``train_step`` (DDP-wrapped when distributed)."""
        return self.networks[name]

    # --- the step ------------------------------------------------------------
    def begin_iteration(self, iteration: int) -> None:
        for name, opt in self.optimizers.items():
            set_lr(opt, self.schedules[name](iteration))

    def train_step(self, batch: dict[str, dict[str, torch.Tensor]], iteration: int) -> dict[str, float]:
        """One iteration; returns named scalar losses for logging (override)."""
        raise NotImplementedError

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.ctx.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=torch.float16)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, *names: str) -> None:
        """Step the named optimisers and clear their gradients."""
        for name in names:
            self.scaler.step(self.optimizers[name])
            self.optimizers[name].zero_grad(set_to_none=True)
        self.scaler.update()

    def zero_grad(self) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)

    # --- rounds and export -----------------------------------------------------
    def round_boundaries(self) -> list[int]:
        """Iterations at which ``on_round`` runs (offline pseudo-labels / translation)."""
        return []

    def on_round(self, round_index: int, iteration: int) -> None:  # pragma: no cover - hook
        """Run offline work between rounds (override with ``round_boundaries``)."""

    def exportable(self) -> dict[str, nn.Module]:
        """Extra networks a user may export besides the segmenter (translator, relighting)."""
        return {}

    # --- state -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "networks": {n: unwrap(m).state_dict() for n, m in self.networks.items() if n != "model"},
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "scaler": self.scaler.state_dict(),
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, sd in state["networks"].items():
            if name not in self.networks:
                raise KeyError(f"checkpoint has network {name!r} that method {self.name} lacks")
            unwrap(self.networks[name]).load_state_dict(sd)
        for name, sd in state["optimizers"].items():
            self.optimizers[name].load_state_dict(sd)
        self.scaler.load_state_dict(state["scaler"])
        self.load_extra_state(state.get("extra", {}))

    def extra_state(self) -> dict[str, Any]:
        """Method-specific state to checkpoint (image pools, round counters...)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        del state
