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
from edgeseg.fileio import atomic_path

FORMAT = "edgeseg-checkpoint/1"
REQUIRED_KEYS = ("format", "model_cfg", "model", "label_space", "mean", "std", "iteration")


class CheckpointError(EdgesegError):
    """A checkpoint file that is missing, corrupt or not an edgeseg checkpoint."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (see `build_payload`) to ``path`` via a temp file + rename."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


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
    return ckpt


def model_config_of(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> ModelConfig:
    try:
        return from_dict(ModelConfig, ckpt["model_cfg"], "model_cfg")
    except ConfigError as exc:
        raise CheckpointError(f"{path}: invalid model spec: {exc}") from None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the segmenter of a checkpoint in eval mode; returns (model, checkpoint)."""
    from edgeseg.models import build_model

    ckpt = load_checkpoint(path)
    cfg = model_config_of(ckpt, path)
    # The weights come from the checkpoint: never re-read an ImageNet file here.
    cfg = from_dict(ModelConfig, {**to_dict(cfg), "pretrained": None})
    model = build_model(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the stored model spec: {exc}") from None
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
