"""Value types shared by the sub-commands' flags, so every command reads them alike.

Sizes are ``WxH`` as users write them (width first, like cameras and video
files); callers that work in (height, width), as tensors do, use `parse_hw`.
"""

from __future__ import annotations

import argparse
import re


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


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value
