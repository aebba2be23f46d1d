"""Opening any model file (checkpoint, ONNX file, engine with manifest) as a predictor.

The one opener of `edgeseg eval`, `edgeseg compare` and `edgeseg bench`: ONNX files and
engines through the runtime's `open_engine` (its frame fitting, device placement and
machine check), checkpoints in PyTorch (imported only for them) behind the same
interface: RGB uint8 frame -> uint8 class ids at the frame's size, ``label_space``,
``size``, ``precision``, ``kind``, ``info``, ``close``. So the same two files score the
same in every command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgeseg.argtypes import Device, parse_device, torch_device
from edgeseg.runtime.backends.base import BackendUnavailableError
from edgeseg.runtime.predictor import BackendPredictor, is_checkpoint, open_engine


class ModelPredictor(Protocol):
    """What every opened model offers."""

    label_space: Any
    size: Any
    precision: Any
    kind: Any
    info: Any

    def __call__(self, image: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


def open_predictor(path: str | Path, device: Device | str = "auto", *, threads: int = 0,
                   size: tuple[int, int] | None = None,
                   cuda_graphs: bool = False) -> ModelPredictor:
    """``path`` by what it is, on ``device`` (``cpu``, ``cuda[:N]``, ``auto``: PyTorch's device
    for a checkpoint, the GPU index for engines and ONNX files).

    ``threads`` sets ONNX Runtime's intra-op threads or PyTorch's (0: the default or the
    manifest's); ``size`` (H, W) is the frame size a checkpoint runs at (engines have
    their own); ``cuda_graphs`` replays TensorRT enqueues as CUDA graphs. Raises
    `BackendUnavailableError` for what this machine cannot run (no TensorRT or GPU, no
    PyTorch), `EdgesegError` for what is wrong with the file.
    """
    dev = device if isinstance(device, Device) else parse_device(str(device))
    p = Path(path)
    if not is_checkpoint(p):
        return BackendPredictor(open_engine(p, dev, threads=threads, cuda_graphs=cuda_graphs))
    if not p.is_file():
        open_engine(p, dev)  # raises: the same message as for a missing engine
    try:
        import torch
    except ImportError as exc:
        raise BackendUnavailableError(f"{p}: PyTorch is not installed here ({exc}); checkpoints "
                                      "run in PyTorch (pip install 'edgeseg[train]')") from None
    from edgeseg.train.predict import TorchPredictor

    where = torch_device(dev)
    if where.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailableError(f"{p}: --device {where} but PyTorch sees no CUDA GPU here")
    if threads > 0:
        torch.set_num_threads(threads)
    predictor, _ = TorchPredictor.from_checkpoint(str(p), where)
    predictor.size = size
    return predictor
