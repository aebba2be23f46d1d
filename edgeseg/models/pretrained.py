"""Load a local torchvision-format ImageNet state dict into a backbone.

Weights are never downloaded: training machines and vehicles may be offline, and
a run must not depend on what a URL served that day. Every file is matched key by
key, and what did not load is reported instead of silently skipped, because a
backbone that quietly trains from scratch costs days of GPU time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

NO_DOWNLOAD = (
    "edgeseg never downloads weights: provide a local torchvision-format ImageNet state "
    "dict (e.g. saved with torch.save(torchvision_model.state_dict(), path))"
)
DROPPED_PREFIXES = ("fc.", "classifier.")  # ImageNet classifiers, unused by segmenters
WRAPPER_KEYS = ("state_dict", "model")
_MAX_LISTED = 5


class PretrainedWeightsError(RuntimeError):
    """A pretrained-weights file that cannot be read or is not a state dict."""


def _is_counter(key: str) -> bool:
    # BN step counters: absent from old torchvision files and never worth reporting.
    return key.endswith("num_batches_tracked")


def _listed(keys: list[str]) -> str:
    head = ", ".join(keys[:_MAX_LISTED])
    return head + (f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")


@dataclass
class LoadReport:
    """What ``load_pretrained_backbone`` did, key by key (BN step counters excluded)."""

    path: str
    total: int
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.mismatched)

    def summary(self) -> str:
        parts = [f"loaded {len(self.loaded)}/{self.total} tensors from {self.path}"]
        if self.missing:
            parts.append(f"missing: {_listed(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected: {_listed(self.unexpected)}")
        if self.mismatched:
            key = self.mismatched[0]
            file_shape, model_shape = self.shapes[key]
            parts.append(
                f"shape mismatch: {_listed(self.mismatched)} (e.g. {key}: file "
                f"{list(file_shape)} vs model {list(model_shape)}; another width_mult?)"
            )
        if self.dropped:
            parts.append(f"dropped {len(self.dropped)} classifier tensors")
        return "; ".join(parts)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict file, unwrapping {'state_dict': ...}/{'model': ...} and 'module.'."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"pretrained weights {p}: no such file. {NO_DOWNLOAD}")
    try:
        obj: Any = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, pickled module, not a torch file...
        reason = (str(exc).strip().splitlines() or [""])[0]
        reason = reason if len(reason) <= 160 else reason[:157] + "..."
        raise PretrainedWeightsError(
            f"pretrained weights {p}: cannot be read as a torch state dict "
            f"({type(exc).__name__}: {reason}). {NO_DOWNLOAD}"
        ) from exc
    while isinstance(obj, Mapping):
        wrapped = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if wrapped is None:
            break
        obj = wrapped
    if not isinstance(obj, Mapping) or not obj:
        raise PretrainedWeightsError(
            f"pretrained weights {p}: expected a non-empty state dict, got {type(obj).__name__}. "
            f"{NO_DOWNLOAD}"
        )
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise PretrainedWeightsError(
            f"pretrained weights {p}: not a state dict, non-tensor entries {_listed(bad)}"
        )
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        while key.startswith("module."):
            key = key[len("module."):]
        state[key] = value
    return state


def load_pretrained_backbone(model: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Load ImageNet weights into ``model.backbone`` (or ``model`` itself if it has none).

    Keys use torchvision names; ``fc.*``/``classifier.*`` are dropped, keys the
    backbone lacks (e.g. MobileNet's ``features.18``) are reported unexpected, and
    tensors whose shape differs are reported mismatched and left untouched.
    """
    backbone: nn.Module = getattr(model, "backbone", model)
    state = read_state_dict(path)
    target = backbone.state_dict()
    report = LoadReport(path=str(path), total=sum(not _is_counter(k) for k in target))
    to_load: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(DROPPED_PREFIXES):
            report.dropped.append(key)
        elif key not in target:
            report.unexpected.append(key)
        elif value.shape != target[key].shape:
            report.mismatched.append(key)
            report.shapes[key] = (tuple(value.shape), tuple(target[key].shape))
        else:
            to_load[key] = value
    backbone.load_state_dict(to_load, strict=False)
    report.loaded = [k for k in to_load if not _is_counter(k)]
    report.missing = [
        k for k in target if k not in to_load and k not in report.shapes and not _is_counter(k)
    ]
    return report
