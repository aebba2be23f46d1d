"""Value types shared by the sub-commands' flags, so every command reads them alike.

Sizes are ``WxH`` as users write them (width first, like cameras and video
files); callers that work in (height, width), as tensors do, use `parse_hw`.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass


def parse_wxh(text: str, min_side: int = 1) -> tuple[int, int]:
    """``"480x360"`` -> (480, 360) as (width, height); an argparse-friendly error otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected WIDTHxHEIGHT, e.g. 480x360")
    w, h = int(match.group(1)), int(match.group(2))
    if min(w, h) < min_side:
        raise argparse.ArgumentTypeError(f"size {text!r}: both sides must be >= {min_side}")
    return w, h


def parse_hw(text: str, min_side: int = 1) -> tuple[int, int]:
    """``"480x360"`` -> (360, 480) as (height, width)."""
    w, h = parse_wxh(text, min_side)
    return h, w


def parse_hw_16(text: str) -> tuple[int, int]:
    """`parse_hw` for networks that need at least 16 pixels a side."""
    return parse_hw(text, 16)


def parse_wxh_16(text: str) -> tuple[int, int]:
    return parse_wxh(text, 16)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def parse_luma(text: str) -> float:
    """A mean-luma threshold on the 0-255 scale (``--translate-below``)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 256:
        raise argparse.ArgumentTypeError(f"{text!r}: give a mean luma in (0, 256], e.g. 80")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


@dataclass(frozen=True)
class Device:
    """Where a model runs: ``cpu``, ``cuda`` with a GPU index, or ``auto`` (CUDA when present).

    One spelling for every command, as PyTorch and ``trtexec --device=N`` users write it;
    `torch` is the string PyTorch takes, `index` the GPU ordinal backends take.
    """

    kind: str  # "auto", "cpu" or "cuda"
    index: int = 0

    @property
    def torch(self) -> str:
        """``cpu``, ``cuda:N``, or ``auto`` (left to the caller to resolve)."""
        return f"cuda:{self.index}" if self.kind == "cuda" else self.kind

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    def __str__(self) -> str:
        return self.torch


def parse_device(text: str) -> Device:
    """``cpu`` | ``cuda`` | ``cuda:N`` | ``auto`` -> `Device`; an argparse-friendly error otherwise."""
    match = re.fullmatch(r"\s*(auto|cpu|cuda)(?::(\d+))?\s*", text.lower())
    if not match or (match.group(2) is not None and match.group(1) != "cuda"):
        raise argparse.ArgumentTypeError(
            f"device {text!r}: expected cpu, cuda, cuda:N (GPU index) or auto")
    return Device(match.group(1), int(match.group(2) or 0))


def add_device_argument(parser: argparse.ArgumentParser, help: str,
                        default: str | None = "auto") -> None:
    """``--device cpu|cuda[:N]|auto``, spelled and parsed the same in every command."""
    parser.add_argument("--device", type=parse_device, metavar="cpu|cuda[:N]|auto",
                        default=parse_device(default) if default else None, help=help)


def parse_alpha(text: str) -> float:
    """Overlay opacity in [0, 1]: ``0.6`` as a fraction, or ``150`` on segnet.py's 0-255 scale.

    Values above 1 are read as 0-255 (so ``150`` -> 150/255); ``1`` is fully opaque.
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"alpha {text!r}: expected a number") from None
    if value > 1.0:
        if value > 255.0:
            raise argparse.ArgumentTypeError(
                f"alpha {text!r}: expected 0-1 (fraction) or 1-255 (segnet.py's scale)")
        value /= 255.0
    if value < 0.0:
        raise argparse.ArgumentTypeError(f"alpha {text!r}: must not be negative")
    return value


def torch_device(device: Device | str) -> str:
    """The PyTorch device string; ``auto`` becomes ``cuda:0`` when PyTorch sees a GPU, else cpu."""
    dev = device if isinstance(device, Device) else parse_device(str(device))
    if dev.kind != "auto":
        return dev.torch
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"
