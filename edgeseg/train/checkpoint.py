"""Checkpoints: one self-describing file per save, written atomically.

A checkpoint rebuilds its model without the recipe (model spec, label space
and normalisation are inside) and resumes training exactly (every network,
optimiser, data-stream position and RNG state is inside). It is loaded with
``weights_only=True``: only tensors and plain Python values are stored, so a
checkpoint from someone else cannot run code on load.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeseg.config import ConfigError, ModelConfig, from_dict, to_dict
from edgeseg.errors import EdgesegError
from edgeseg.fileio import OUTPUT_ERRNOS, OutputError, atomic_path, describe_os_error, is_disk_full
from edgeseg.labels import get_label_space
from edgeseg.models.compose import Deploy, DeployedSegmenter, as_prenet
from edgeseg.train.nets.registry import NetSpec, NetSpecError, build_net

FORMAT = "edgeseg-checkpoint/1"
REQUIRED_KEYS = ("format", "model_cfg", "model", "label_space", "mean", "std", "iteration")


class CheckpointError(EdgesegError):
    """A checkpoint file that is missing, corrupt or not an edgeseg checkpoint."""


#: model keys that say how the weights were started, not what the network is
INIT_KEYS = ("pretrained", "init_from")


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` via a temp file + rename; an earlier file stays intact.

    torch.save reports a full disk as "enforce fail ... unexpected pos", which
    never says why; the free space is checked while the partial temp file
    still holds it, and the error becomes one OutputError line naming ``path``.
    """
    import errno

    with atomic_path(path) as tmp:
        try:
            torch.save(payload, tmp)
        except OutputError:
            raise
        except (RuntimeError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno in OUTPUT_ERRNOS:
                raise OutputError(describe_os_error(path, exc)) from None
            if is_disk_full(tmp):
                raise OutputError(describe_os_error(
                    path, OSError(errno.ENOSPC, "No space left on device"))) from None
            raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate a checkpoint on the CPU, with errors that name the file."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint; training writes runs/<name>/last.pt and best.pt")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/foreign files
        raise CheckpointError(
            f"{p}: cannot be read as a checkpoint ({type(exc).__name__}: {str(exc)[:200]}); "
            "the file is truncated or not an edgeseg checkpoint"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not an edgeseg checkpoint (expected format {FORMAT})")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{p}: checkpoint lacks {missing}; it was written by another tool")
    check_label_space(ckpt, p)
    return ckpt


def check_label_space(ckpt: dict[str, Any], path: str | Path) -> None:
    """Refuse a checkpoint whose label space contradicts its class count: its scores and
    exported label names would silently be wrong."""
    try:
        space = get_label_space(str(ckpt["label_space"]))
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    model_cfg = ckpt["model_cfg"]
    classes = model_cfg.get("num_classes") if isinstance(model_cfg, dict) else None
    if classes != space.num_classes:
        raise CheckpointError(
            f"{path}: label space {space.name} has {space.num_classes} classes but the model "
            f"has num_classes={classes}; the checkpoint is inconsistent, retrain or fix its "
            "label_space")


def check_model_spec(ckpt: dict[str, Any], cfg: ModelConfig, path: str | Path,
                     what: str = "recipe") -> None:
    """One line naming the model keys where ``ckpt`` differs from ``cfg`` (instead of
    load_state_dict's hundreds of lines of mismatched tensor names)."""
    theirs = to_dict(model_config_of(ckpt, path))
    ours = to_dict(cfg)
    diff = [f"model.{k} {theirs[k]!r} (checkpoint) vs {ours[k]!r} ({what})"
            for k in ours if k not in INIT_KEYS and theirs.get(k) != ours[k]]
    if diff:
        raise CheckpointError(f"{path}: another model config: {'; '.join(diff)}")


def load_weights(model: torch.nn.Module, state: dict[str, Any], path: str | Path,
                 what: str = "weights") -> None:
    """``load_state_dict`` with a one-line error: counts and a few names, not every tensor."""
    try:
        model.load_state_dict(state)
        return
    except RuntimeError:
        pass
    ours = model.state_dict()
    missing = [k for k in ours if k not in state]
    unexpected = [k for k in state if k not in ours]
    shapes = [k for k, v in state.items()
              if k in ours and tuple(ours[k].shape) != tuple(getattr(v, "shape", ()))]
    if missing or unexpected or shapes:
        parts = []
        for name, keys in (("missing", missing), ("unexpected", unexpected),
                           ("of another shape", shapes)):
            if keys:
                parts.append(f"{len(keys)} tensors {name} (e.g. {', '.join(keys[:3])})")
    else:
        parts = ["tensors of another type"]
    raise CheckpointError(f"{path}: {what} do not fit the network: {'; '.join(parts)}")


def model_config_of(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> ModelConfig:
    try:
        return from_dict(ModelConfig, ckpt["model_cfg"], "model_cfg")
    except ConfigError as exc:
        raise CheckpointError(f"{path}: invalid model spec: {exc}") from None


def load_segmenter(ckpt: dict[str, Any], path: str | Path) -> torch.nn.Module:
    """The trainer's segmenter (``model``) of a loaded checkpoint, in eval mode on the CPU."""
    from edgeseg.models import build_model

    cfg = model_config_of(ckpt, path)
    # The weights come from the checkpoint: never re-read an ImageNet file here.
    cfg = from_dict(ModelConfig, {**to_dict(cfg), "pretrained": None})
    model = build_model(cfg)
    load_weights(model, ckpt["model"], path, "weights (of the stored model spec)")
    return model.eval()


def network_names(ckpt: dict[str, Any]) -> list[str]:
    """Networks of a checkpoint that can be rebuilt (``model`` and every stored spec)."""
    return ["model", *sorted(n for n in (ckpt.get("networks") or {}) if n != "model")]


def network_spec(ckpt: dict[str, Any], name: str, path: str | Path) -> NetSpec:
    """The stored spec of network ``name`` (``model``: the segmenter's model block)."""
    if name == "model":
        args = {k: v for k, v in dict(ckpt["model_cfg"]).items() if k not in INIT_KEYS}
        return NetSpec("segmenter", args, "segmenter")
    specs = ckpt.get("networks") or {}
    if name not in specs:
        raise CheckpointError(f"{path}: has no network {name!r}; it has {network_names(ckpt)}"
                              + ("" if specs else " (written before networks were stored: "
                                 "only its segmenter can be rebuilt)"))
    try:
        return NetSpec.from_dict(specs[name])
    except NetSpecError as exc:
        raise CheckpointError(f"{path}: network {name!r}: {exc}") from None


def load_network(ckpt: dict[str, Any], name: str, path: str | Path
                 ) -> tuple[torch.nn.Module, NetSpec]:
    """Rebuild network ``name`` of a loaded checkpoint with its weights, in eval mode."""
    spec = network_spec(ckpt, name, path)
    if name == "model":
        return load_segmenter(ckpt, path), spec
    state = (ckpt.get("method_state") or {}).get("networks", {}).get(name)
    if state is None:
        raise CheckpointError(f"{path}: holds the spec of network {name!r} but not its weights")
    try:
        net = build_net(spec)
    except (NetSpecError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: network {name!r} cannot be rebuilt: {exc}") from None
    load_weights(net, state, path, f"weights of network {name!r}")
    return net.eval(), spec


def deploy_of(ckpt: dict[str, Any]) -> Deploy:
    return Deploy.from_dict(ckpt.get("deploy"))


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild what a checkpoint deploys in eval mode: its segmenter, or the composed graph
    its method declared (pre-networks, an EMA teacher, a class bias); returns
    (model, checkpoint)."""
    ckpt = load_checkpoint(path)
    deploy = deploy_of(ckpt)
    if deploy.trivial:
        return load_segmenter(ckpt, path).to(device), ckpt
    segmenter = load_network(ckpt, deploy.segmenter, path)[0]
    pre = []
    for name in deploy.pre:
        net, spec = load_network(ckpt, name, path)
        pre.append(as_prenet(net, spec.role, ckpt["mean"], ckpt["std"]))
    model = DeployedSegmenter(segmenter, pre, deploy.class_bias)
    return model.to(device).eval(), ckpt


def capture_rng() -> dict[str, Any]:
    """All RNG states as tensors/plain values (safe for weights_only loading)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
