"""The plug-in interface every training method implements.

The trainer owns data, devices, DDP, AMP, logging, checkpoints and
evaluation; a method owns its extra networks, their optimisers and LR
schedules, and ``train_step``. What the five UDA methods need maps onto it:

- batches from several domains: ``streams`` names them (``source``, ``target``,
  ``pairs``...); only ``labelled_streams`` keep their labels, every other stream's
  labels are stripped before they reach the method (a stream configured with
  pseudo-labels keeps those: a model made them);
- several networks, each rebuildable from its checkpoint: ``add_network(name,
  net_spec(...))`` records the spec, so any network can be exported, chained into
  another run (``method.init_from``) or used to derive data;
- optimisers per network group as recipe blocks (``optimizer_defaults`` +
  ``method.optimizers``): LR, betas, schedule, weight decay, gradient clipping;
  ``add_optimizer`` / ``optimizer_for``;
- alternating update phases and frozen phases: ``train_step`` decides what to
  step; ``set_requires_grad`` freezes; ``find_unused_parameters`` tells DDP;
- teachers that are not trained by gradients: ``add_ema(name, of, decay)`` (an EMA copy,
  stepped by ``update_ema``) or ``add_network(..., trainable=False)``;
- what is deployed: ``deploy()`` names the segmenter network (the model or an EMA
  teacher), image networks in front of it and a per-class logit bias; validation,
  ``best.pt``, export and eval all use exactly that graph (``deployed()``);
- loss weights and thresholds that ramp: `edgeseg.train.schedule.Ramp`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.optim import Optimizer

from edgeseg.config import ConfigError, OptimConfig, Recipe, from_dict, to_dict
from edgeseg.models.compose import Deploy, DeployedSegmenter, as_prenet
from edgeseg.train.checkpoint import INIT_KEYS
from edgeseg.train.distributed import DistInfo, unwrap
from edgeseg.train.nets.ema import EMATeacher
from edgeseg.train.nets.registry import NetSpec, build_net
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
    amp: bool  # CUDA fp16 autocast with gradient scaling
    cpu_bf16: bool = False  # CPU bf16 autocast (no scaling: bf16 has fp32's exponent range)


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
    """SGD/Adam/AdamW from the recipe; ``params`` may be param groups with own LRs.

    With ``decay_norm_and_bias: false`` each group is split in two and the 1-D tensors
    (biases, norm weights) get no weight decay."""
    groups = list(params)
    if groups and not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    if not cfg.decay_norm_and_bias:
        split = []
        for g in groups:
            ps = list(g["params"])
            split.append({**g, "params": [p for p in ps if p.ndim > 1]})
            split.append({**g, "params": [p for p in ps if p.ndim <= 1], "weight_decay": 0.0})
        groups = [g for g in split if g["params"]]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return cls(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def recipe_schedule(cfg: OptimConfig, total: int) -> Schedule:
    return lambda it: lr_factor(it, total, cfg.schedule, cfg.power, cfg.warmup_iters,
                                cfg.step_size, cfg.gamma, cfg.decay_start, cfg.milestones)


def segmenter_spec(recipe: Recipe) -> NetSpec:
    """The spec of the trainer's segmenter: the recipe's model block without how its
    weights were started."""
    args = {k: v for k, v in to_dict(recipe.model).items() if k not in INIT_KEYS}
    return NetSpec("segmenter", args, "segmenter")


class Method:
    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    streams: ClassVar[tuple[str, ...]] = ("source",)
    #: streams whose labels reach the method; every other stream is unlabelled by contract
    labelled_streams: ClassVar[tuple[str, ...]] = ("source",)
    #: optimiser groups besides the segmenter's (``optim``), with their defaults; a
    #: recipe overrides single keys in ``method.optimizers.GROUP``
    optimizer_defaults: ClassVar[dict[str, OptimConfig]] = {}
    #: batches carry ``crop_box`` (top, left, height, width, scale, flipped) per sample, for
    #: methods that align crops of paired images
    wants_crop_box: ClassVar[bool] = False
    #: DDP must tolerate parameters without gradients (frozen phases, alternating steps)
    find_unused_parameters: ClassVar[bool] = False

    def __init__(self, ctx: MethodContext, params: Any) -> None:
        self.ctx = ctx
        self.params = params
        self.networks: dict[str, nn.Module] = {}
        self.specs: dict[str, NetSpec] = {}
        self.trainable: dict[str, bool] = {}
        self.optimizers: dict[str, Optimizer] = {}
        self.schedules: dict[str, Schedule] = {}
        self.clip_norms: dict[str, float] = {}
        self.emas: dict[str, tuple[EMATeacher, str]] = {}
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=ctx.amp)
        unknown = sorted(set(ctx.recipe.method.optimizers) - set(self.optimizer_defaults))
        if unknown:
            raise ConfigError(f"method.optimizers: unknown group(s) {unknown}; method "
                              f"{self.name} has {sorted(self.optimizer_defaults) or 'none'} "
                              "(the segmenter's optimiser is the recipe's optim block)")
        self.add_network("model", ctx.model, spec=segmenter_spec(ctx.recipe))
        self.build()
        self._check_deploy()

    # --- set-up --------------------------------------------------------------
    def build(self) -> None:
        """Create extra networks and every optimiser (override)."""
        raise NotImplementedError

    def add_network(self, name: str, net: nn.Module | NetSpec, trainable: bool = True,
                    spec: NetSpec | None = None) -> nn.Module:
        """Register a network. Given a `NetSpec` (or ``spec=`` beside a module built from
        it), the checkpoint can rebuild it; a bare module is training-only state."""
        if isinstance(net, NetSpec):
            spec, net = net, build_net(net)
        self.networks[name] = net.to(self.ctx.device)
        self.trainable[name] = trainable
        if spec is not None:
            self.specs[name] = spec
        return self.networks[name]

    def add_ema(self, name: str, of: str, decay: float) -> nn.Module:
        """An exponential-moving-average copy of network ``of`` (a mean teacher, an averaged
        generator): same spec, so it exports and chains like ``of``; no gradients, eval
        mode. Call ``update_ema(name)`` after each optimiser step of ``of``; deploy it
        with ``Deploy(segmenter=name)``."""
        ema = EMATeacher(self.networks[of], decay)
        self.emas[name] = (ema, of)
        return self.add_network(name, ema.module, trainable=False, spec=self.specs.get(of))

    def update_ema(self, *names: str) -> None:
        for name in names:
            ema, of = self.emas[name]
            ema.update(self.networks[of])

    def optim_config(self, group: str) -> OptimConfig:
        """The optimiser block of ``group``: ``model`` is the recipe's ``optim``; others are
        the method's defaults with the recipe's ``method.optimizers.GROUP`` keys applied."""
        if group == "model":
            return self.ctx.recipe.optim
        if group not in self.optimizer_defaults:
            raise KeyError(f"method {self.name} declares no optimiser group {group!r}")
        block = {**to_dict(self.optimizer_defaults[group]),
                 **self.ctx.recipe.method.optimizers.get(group, {})}
        return from_dict(OptimConfig, block, f"method.optimizers.{group}")

    def add_optimizer(self, name: str, optimizer: Optimizer, schedule: Schedule,
                      clip_grad_norm: float = 0.0) -> None:
        self.optimizers[name] = optimizer
        self.schedules[name] = schedule
        self.clip_norms[name] = clip_grad_norm

    def optimizer_for(self, name: str, group: str, params: Any) -> Optimizer:
        """Build, schedule and register optimiser ``name`` from the block of ``group``."""
        cfg = self.optim_config(group)
        opt = build_optimizer(cfg, params)
        self.add_optimizer(name, opt, recipe_schedule(cfg, self.ctx.recipe.train.iterations),
                           cfg.clip_grad_norm)
        return opt

    def wrap_networks(self, wrap: Callable[[str, nn.Module], nn.Module]) -> None:
        """Let the trainer wrap trainable networks (DDP); optimisers keep the same params."""
        for name, net in self.networks.items():
            if self.trainable[name]:
                self.networks[name] = wrap(name, net)

    def freeze(self, name: str) -> None:
        """Network ``name`` is not trained by this method (e.g. a fixed day segmenter behind
        a translator): no gradients, eval mode, not wrapped by DDP, no optimiser needed."""
        self.trainable[name] = False
        for p in self.networks[name].parameters():
            p.requires_grad_(False)
        self.networks[name].eval()

    def train_mode(self) -> None:
        """Trainable networks in train mode, teachers (``trainable=False``) in eval mode."""
        for name, net in self.networks.items():
            net.train(self.trainable[name])

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
        """The mixed-precision region of a forward: fp16 on CUDA (``train.amp``), bf16 on a
        CPU that has it (``train.cpu_bf16``), else fp32."""
        if self.ctx.amp:
            return torch.autocast(self.ctx.device.type, dtype=torch.float16)
        if self.ctx.cpu_bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, *names: str) -> None:
        """Step the named optimisers (clipping their gradient norm where configured) and
        clear their gradients."""
        for name in names:
            opt = self.optimizers[name]
            if self.clip_norms.get(name, 0.0) > 0:
                self.scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(
                    [p for g in opt.param_groups for p in g["params"]], self.clip_norms[name])
            self.scaler.step(opt)
            self.optimizers[name].zero_grad(set_to_none=True)
        self.scaler.update()

    def zero_grad(self) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)

    # --- deployment ---------------------------------------------------------------
    def deploy(self) -> Deploy:
        """What this method deploys (override): by default the bare segmenter."""
        return Deploy()

    def _check_deploy(self) -> None:
        d = self.deploy()
        for name in d.networks():
            if name not in self.specs:
                raise ValueError(f"method {self.name} deploys network {name!r}, which it did "
                                 "not add with a spec")
        for name in d.pre:
            if self.specs[name].role not in ("prenet", "translator"):
                raise ValueError(f"method {self.name} deploys {name!r} in front of the "
                                 "segmenter, but it is not an image network")
        if self.specs[d.segmenter].role != "segmenter":
            raise ValueError(f"method {self.name} deploys {d.segmenter!r} as its segmenter, "
                             f"but it is a {self.specs[d.segmenter].role or 'training-only'} net")

    def deployed(self) -> DeployedSegmenter:
        """The deployed graph over the live networks (validation scores exactly this)."""
        d, data = self.deploy(), self.ctx.recipe.data
        pre = [as_prenet(unwrap(self.networks[n]), self.specs[n].role, data.mean, data.std)
               for n in d.pre]
        return DeployedSegmenter(unwrap(self.networks[d.segmenter]), pre, d.class_bias)

    def exportable(self) -> dict[str, NetSpec]:
        """Networks a user may export on their own (``edgeseg export --network NAME``)."""
        return {n: s for n, s in self.specs.items() if s.role}

    def run_notes(self) -> dict[str, Any]:
        """Choices this run made that its recipe does not show (which network stood in for
        a missing weights file, a derived statistic); the trainer prints them and writes
        them to metrics.jsonl as a ``{"type": "method"}`` record."""
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
