"""Networks by kind: a checkpoint stores each network's ``NetSpec`` so any of them can be
rebuilt (exported, chained into another run, used to derive data) without the recipe
or the method that trained it.

A spec is plain data (kind, keyword arguments, role); ``build_net`` turns it into a
module. The role says how the network is deployed on its own:

- ``segmenter``: image (the segmenter's normalised input) -> logits;
- ``translator``: RGB in [-1, 1] -> RGB in [-1, 1] (tanh generators), exported as
  uint8 BGR frame -> uint8 BGR frame;
- ``prenet``: the segmenter's normalised image -> the same range (a relighting net),
  also exported as frame -> frame, or composed in front of the segmenter;
- ``""``: training-only (discriminators, encoders).

Builders register with ``@register_net("kind")``; the modules that define them are
imported by the package ``edgeseg.train.nets``, which Python runs before this module, so
every kind is known wherever the registry is.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

Role = Literal["segmenter", "translator", "prenet", ""]
ROLES: tuple[str, ...] = ("segmenter", "translator", "prenet", "")

Builder = Callable[..., nn.Module]
NETS: dict[str, Builder] = {}


class NetSpecError(ValueError):
    """A network spec that names an unknown kind or arguments its builder lacks."""


@dataclass(frozen=True)
class NetSpec:
    kind: str
    args: dict[str, Any] = field(default_factory=dict)
    role: Role = ""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "args": dict(self.args), "role": self.role}

    @classmethod
    def from_dict(cls, data: Any) -> NetSpec:
        if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
            raise NetSpecError(f"not a network spec: {data!r}")
        role = data.get("role", "")
        if role not in ROLES:
            raise NetSpecError(f"network role {role!r}: use one of {list(ROLES)}")
        return cls(data["kind"], dict(data.get("args") or {}), role)


def register_net(kind: str) -> Callable[[Builder], Builder]:
    """Decorator: make ``builder(**args)`` buildable from a stored spec of ``kind``."""
    def register(builder: Builder) -> Builder:
        if kind in NETS and NETS[kind] is not builder:
            raise ValueError(f"network kind {kind!r} is registered twice")
        NETS[kind] = builder
        return builder
    return register


def build_net(spec: NetSpec | dict[str, Any]) -> nn.Module:
    """The module of ``spec`` with fresh weights (load a state dict into it)."""
    if isinstance(spec, dict):
        spec = NetSpec.from_dict(spec)
    builder = NETS.get(spec.kind)
    if builder is None:
        raise NetSpecError(f"unknown network kind {spec.kind!r}; known: {sorted(NETS)}")
    accepted = inspect.signature(builder).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(spec.args) - set(accepted))
        if unknown:
            raise NetSpecError(f"network kind {spec.kind!r} takes no argument(s) {unknown}; "
                               f"it takes {sorted(accepted)}")
    return builder(**spec.args)


def _plain(value: Any) -> Any:
    """Tuples as lists: a spec read back from a checkpoint or YAML holds lists."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _with_defaults(spec: NetSpec) -> dict[str, Any]:
    builder = NETS.get(spec.kind)
    if builder is None:
        return _plain(spec.args)
    defaults = {n: p.default for n, p in inspect.signature(builder).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return _plain({**defaults, **spec.args})


def spec_differences(ours: NetSpec, theirs: NetSpec) -> list[str]:
    """What differs between two specs (kind, then each argument), for one-line errors. An
    argument missing from one spec counts as its builder's default (specs stored before
    the builder gained it)."""
    if ours.kind != theirs.kind:
        return [f"kind {theirs.kind!r} vs {ours.kind!r}"]
    a, b = _with_defaults(theirs), _with_defaults(ours)
    return [f"{k} {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]


def net_spec(kind: str, role: Role = "", **args: Any) -> NetSpec:
    """A spec with every builder argument written out (defaults included), so a stored
    network rebuilds the same even after a builder's default changes."""
    if kind not in NETS:
        raise NetSpecError(f"unknown network kind {kind!r}; known: {sorted(NETS)}")
    params = inspect.signature(NETS[kind]).parameters
    full = {name: p.default for name, p in params.items()
            if p.default is not inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD}
    full.update(args)
    spec = NetSpec(kind, full, role)
    build_args = set(params)
    unknown = sorted(set(args) - build_args)
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise NetSpecError(f"network kind {kind!r} takes no argument(s) {unknown}")
    return spec


@register_net("segmenter")
def build_segmenter(**model_cfg: Any) -> nn.Module:
    """The segmenter of a ``model`` recipe block (weights come from the checkpoint: an
    ImageNet file named in it is never re-read)."""
    from edgeseg.config import ModelConfig, from_dict
    from edgeseg.models import build_model

    cfg = from_dict(ModelConfig, {**model_cfg, "pretrained": None, "init_from": None}, "model")
    return build_model(cfg)
