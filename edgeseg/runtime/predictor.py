"""Frames of any size -> class maps, through any backend (ONNX file or engine).

Adapts a frame to the engine's input contract (size, uint8 BGR NHWC or
normalised float NCHW) and the output back to class ids at the frame's size,
so evaluation, benchmarks and the runtime score every precision and backend
the same way. Torch-free.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from edgeseg.argtypes import Device
from edgeseg.contract.metadata import ModelMetadata
from edgeseg.errors import EdgesegError
from edgeseg.runtime.backends.base import Backend, open_backend
from edgeseg.runtime.sources import SourceFrame
from edgeseg.runtime.stages import AspectPolicy, Packet, SegmentStage, TranslateStage

__all__ = ["AspectPolicy", "BackendPredictor", "is_checkpoint", "load_backend", "open_engine"]

#: what a training checkpoint is called (opened in PyTorch by `export.predictors`)
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


#: names `build-engine` gives ONNX Runtime engines (optimised for the build CPU)
ORT_ENGINE_SUFFIXES = (".ort.onnx", ".ort")


def is_ort_engine_name(path: str | Path) -> bool:
    return Path(path).name.endswith(ORT_ENGINE_SUFFIXES)


def is_checkpoint(path: str | Path) -> bool:
    return Path(path).suffix.lower() in CHECKPOINT_SUFFIXES


def open_engine(path: str | Path, device: Device | str | None = "auto", *, threads: int = 0,
                cuda_graphs: bool = False, sync: str = "blocking",
                trust_engine_code: bool | None = None) -> Backend:
    """Any ONNX file or engine placed on ``device`` (``cpu``, ``cuda[:N]``, ``auto``): the one
    opener eval, compare, bench and ``--precision auto`` share, so a file scores the same in
    each. ``threads`` > 0 sets ONNX Runtime's intra-op threads or OpenVINO's inference
    threads (0: the manifest's or the library's default). TensorRT only: ``sync`` ("spin"
    busy-waits for results, "blocking" sleeps) and ``trust_engine_code`` (a
    version-compatible plan's embedded runtime; None: ``EDGESEG_TRUST_ENGINE_CODE``).
    Raises `BackendUnavailableError` where this machine cannot run it (a TensorRT plan
    without TensorRT or a GPU), `EdgesegError` for what is wrong with the file (an engine
    built for another machine included: rebuild it)."""
    from edgeseg.contract.manifest import manifest_path, read_manifest
    from edgeseg.runtime.backends.base import BackendUnavailableError
    from edgeseg.runtime.compat import MachineInfo

    p = Path(path)
    if not p.exists():
        raise EdgesegError(f"{p}: no such engine, ONNX file or checkpoint")
    if p.is_dir():
        raise EdgesegError(f"{p}: is a folder; give an engine, an ONNX file or a checkpoint")
    placed = device_options(p, device)
    if manifest_path(p).is_file():
        kind = read_manifest(p).backend
        if kind == "openvino":
            return load_backend(p, **({"threads": threads} if threads > 0 else {}), **placed)
        if kind == "tensorrt":
            machine = MachineInfo.detect("tensorrt", int(placed.get("device", 0)))
            if machine.backend_version is None or machine.device is None:
                raise BackendUnavailableError(f"{p}: TensorRT engine not run here: "
                                              f"{machine.note}")
            return load_backend(p, machine=machine, cuda_graphs=cuda_graphs, sync=sync,
                                trust_engine_code=trust_engine_code, **placed)
        return load_backend(p, **({"intra_op_threads": threads} if threads > 0 else {}),
                            **placed)
    if p.suffix != ".onnx":
        read_manifest(p)  # raises: an engine without its manifest, saying how to rebuild
    return load_backend(p, intra_op_threads=threads, **placed)


def load_backend(path: str | Path, backend: str = "auto", *, manifest_check: bool = True,
                 **options: object) -> Backend:
    """A plain exported ``.onnx`` runs in ONNX Runtime directly (``backend="openvino"``:
    compiled by OpenVINO for the CPU at load); anything with a manifest beside it (TensorRT
    plan, optimised ONNX Runtime model, OpenVINO compiled model) goes through the engine
    loader.

    An engine (``.ort.onnx``) whose manifest is missing is refused: without it nothing says
    which CPU its fused kernels were built for. ``manifest_check=False`` runs it anyway as a
    plain ONNX file, with a warning.
    """
    from edgeseg.contract.manifest import manifest_path, read_manifest

    p = Path(path)
    if not manifest_path(p).exists():
        if is_ort_engine_name(p):
            if manifest_check:
                read_manifest(p)  # raises: names the missing manifest and the rebuild command
            warnings.warn(f"{p}: running an ONNX Runtime engine WITHOUT its manifest "
                          f"{manifest_path(p)}: nothing checks that it was built for this CPU, "
                          "results may be wrong or it may crash; rebuild it with "
                          f"`edgeseg build-engine MODEL.onnx -o {p} --backend onnxruntime`",
                          EngineWithoutManifestWarning, stacklevel=2)
        if p.suffix == ".onnx" and backend == "openvino":  # compiled here, on the CPU
            from edgeseg.runtime.backends.openvino import OvBackend

            threads = options.get("threads") or options.get("intra_op_threads") or 0
            requests = options.get("infer_requests") or 2
            return OvBackend.from_onnx(p, threads=int(str(threads)),
                                       infer_requests=int(str(requests)))
        if p.suffix == ".onnx":
            from edgeseg.runtime.backends.onnxruntime import OrtBackend

            return OrtBackend.from_onnx(p, **options)
    return open_backend(p, backend, **options)


class EngineWithoutManifestWarning(UserWarning):
    """An engine loaded with its compatibility check skipped (--no-manifest-check)."""


class BackendPredictor:
    """RGB uint8 (H, W, 3) -> uint8 (H, W) class ids of ``metadata.label_space``."""

    def __init__(self, backend: Backend, aspect: AspectPolicy = "stretch") -> None:
        self.stage = SegmentStage(backend, aspect)
        self.backend = backend
        self.meta: ModelMetadata = backend.metadata

    @property
    def label_space(self) -> str:
        return self.meta.label_space

    @property
    def size(self) -> tuple[int, int] | None:
        """(H, W) the engine takes; None when dynamic."""
        return self.stage.size

    @property
    def kind(self) -> str:
        """The backend that runs it: ``onnxruntime``, ``tensorrt`` or ``openvino``."""
        return self.backend.name

    @property
    def precision(self) -> str:
        manifest = self.backend.manifest
        return manifest.precision if manifest else self.meta.precision

    @property
    def info(self) -> dict[str, object]:
        return {"kind": "onnx/engine", "precision": self.precision, "method": self.meta.method}

    def __call__(self, image: np.ndarray) -> np.ndarray:
        bgr = np.ascontiguousarray(image[..., ::-1])
        packet = Packet(SourceFrame(0, bgr, 0.0), bgr)
        return self.stage.process(packet).labels

    def close(self) -> None:
        self.backend.close()


def device_options(path: str | Path, device: Device | str | None) -> dict[str, object]:
    """The `load_backend` options that put ``path`` on ``device`` (``--device``).

    A TensorRT plan gets the GPU index (its CUDA context); a plain ONNX file on
    ``cuda[:N]`` gets ONNX Runtime's CUDA provider with ``device_id`` N; an ONNX
    Runtime engine (``.ort.onnx``, built for this CPU) and ``cpu``/``auto`` ONNX files
    run on the CPU provider. A TensorRT plan cannot run on ``cpu``; an OpenVINO engine
    runs on the OpenVINO device it was compiled for (``auto``/``cpu`` for a CPU one).
    """
    from edgeseg.argtypes import parse_device
    from edgeseg.contract.manifest import manifest_path, read_manifest

    if device is None:
        return {}
    dev = device if isinstance(device, Device) else parse_device(str(device))
    p = Path(path)
    kind = read_manifest(p).backend if manifest_path(p).is_file() else "onnxruntime"
    if kind == "tensorrt":
        if dev.kind == "cpu":
            raise EdgesegError(f"{p}: a TensorRT engine runs on a GPU, not --device cpu "
                               "(build an ONNX Runtime engine for the CPU)")
        return {"device": dev.index}
    if kind == "openvino":
        if dev.is_cuda:
            raise EdgesegError(f"{p}: an OpenVINO engine runs on the OpenVINO device it was "
                               f"compiled for ({read_manifest(p).build.ov_device or 'CPU'}), "
                               f"not --device {dev}; build a TensorRT engine for a CUDA GPU")
        return {}
    if dev.is_cuda and not manifest_path(p).is_file():
        return {"device": dev.index, "providers": ["cuda"]}
    return {}


def open_translator(path: str | Path, device: Device | str = "auto", threads: int = 0,
                    below: float | None = None) -> TranslateStage:
    """A translator / relighting engine (ONNX or engine) as the runtime's `TranslateStage`,
    opened by `open_engine` as every model is (``edgeseg eval`` and ``bench --translator``);
    ``below``: its mean-luma gate (``--translate-below``)."""
    backend = open_engine(path, device, threads=threads)
    try:
        return TranslateStage(backend, below=below)
    except BaseException:
        backend.close()
        raise
