"""Procedural driving scenes with pixel-exact Cityscapes-19 labels (numpy + OpenCV only).

A persistent street world (`world`) is sampled per scene, drawn far to near
into an id buffer (`render`) and lit as day, night, dusk, fog or rain
(`domains`), in a textured or a flat style. `generate` renders scenes and
day/night pairs in memory, `video` streams driving sequences, `writer` and
`dataset` write and read the on-disk layout, `cli` is ``edgeseg synth``.
"""

from edgeseg.data.synth.dataset import LAYOUT, SyntheticDataset, SyntheticPairs
from edgeseg.data.synth.domains import DOMAINS
from edgeseg.data.synth.generate import (
    DEFAULT_SIZE,
    PairRender,
    SceneRender,
    keep_freed_memory,
    render_pair,
    render_scene,
)
from edgeseg.data.synth.render import STYLES
from edgeseg.data.synth.video import iter_video_frames, write_video

__all__ = [
    "DEFAULT_SIZE",
    "DOMAINS",
    "LAYOUT",
    "STYLES",
    "PairRender",
    "SceneRender",
    "SyntheticDataset",
    "SyntheticPairs",
    "iter_video_frames",
    "keep_freed_memory",
    "render_pair",
    "render_scene",
    "write_video",
]
