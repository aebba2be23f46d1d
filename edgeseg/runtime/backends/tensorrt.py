"""TensorRT backend (TensorRT 10/11 named-tensor API, see docs/tensorrt.md).

One buffer set: page-locked host and device memory sized for the profile's
largest input, allocated once; every `infer` copies in, runs
``execute_async_v3`` on the backend's own (non-default) stream, copies out and
synchronises. Simple and correct; double buffering and CUDA graphs come later.
TensorRT and the CUDA binding are imported inside the functions, so importing
this module never needs them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.export.metadata import ModelMetadata
from edgeseg.runtime.backends.base import (
    Backend,
    BackendUnavailableError,
    InputShapeError,
    describe_shape,
)
from edgeseg.runtime.backends.cuda_memory import CudaApi, DeviceBuffer, HostBuffer, get_api
from edgeseg.runtime.manifest import (
    EngineLoadError,
    EngineManifest,
    EngineMismatchError,
    manifest_path,
)


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailableError(
            f"TensorRT is not installed ({exc}); on a Jetson it comes with JetPack, on a "
            "desktop `pip install tensorrt` (or use --backend onnxruntime)") from None
    return tensorrt


def make_logger(trt: Any, verbose: bool = False) -> Any:
    """A TensorRT logger that prints warnings (everything if ``verbose``) and keeps the errors,
    so a failed build/deserialisation can say why in its exception."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            limit = trt.ILogger.Severity.VERBOSE if verbose else trt.ILogger.Severity.WARNING
            self.limit = int(limit)

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
            if int(severity) <= self.limit:
                print(f"[TensorRT] {severity.name}: {msg}", file=sys.stderr, flush=True)

    return Logger()


def last_errors(logger: Any, count: int = 3) -> str:
    errors = getattr(logger, "errors", [])
    return "; ".join(errors[-count:]) if errors else "no error logged (run with -v)"


class _Tensor:
    """One I/O tensor and its buffers (sized for the largest shape the profile allows)."""

    def __init__(self, name: str, is_input: bool, dtype: np.dtype, max_shape: tuple[int, ...],
                 api: CudaApi) -> None:
        self.name, self.is_input, self.dtype = name, is_input, dtype
        nbytes = max(int(np.prod(max_shape)) * dtype.itemsize, 1)
        self.host: HostBuffer = api.alloc_host(nbytes)
        self.device: DeviceBuffer = api.alloc_device(nbytes)


class TrtBackend(Backend):
    name = "tensorrt"

    def __init__(self, engine_path: Path, manifest: EngineManifest, metadata: ModelMetadata,
                 trt: Any, api: CudaApi, logger: Any, runtime: Any, engine: Any,
                 context: Any) -> None:
        super().__init__(engine_path, manifest, metadata, manifest.inputs[0],
                         manifest.outputs[0])
        self.trt, self.api, self.logger = trt, api, logger
        self.runtime, self.engine, self.context = runtime, engine, context
        self.stream: Any = None
        self.tensors: dict[str, _Tensor] = {}
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        expected = {t.name for t in manifest.inputs + manifest.outputs}
        if len(inputs) != 1 or set(names) != expected:
            raise EngineLoadError(f"{engine_path}: engine tensors {names} do not match its "
                                  f"manifest ({sorted(expected)}); rebuild: "
                                  f"{manifest.build_command}")
        self.input_name = inputs[0]
        self.dynamic = any(d < 0 for d in engine.get_tensor_shape(self.input_name))
        max_in = tuple(engine.get_tensor_profile_shape(self.input_name, 0)[2]) if self.dynamic \
            else tuple(engine.get_tensor_shape(self.input_name))
        self._set_shape(max_in)
        try:
            self.stream = api.create_stream()
            for name in names:
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
                shape = max_in if name == self.input_name else tuple(context.get_tensor_shape(name))
                tensor = _Tensor(name, name == self.input_name, dtype, shape, api)
                self.tensors[name] = tensor
                context.set_tensor_address(name, tensor.device.ptr)
        except Exception:
            self.close()
            raise
        self.shape: tuple[int, ...] = max_in

    @classmethod
    def _open(cls, engine_path: Path, manifest: EngineManifest, *, device: int = 0,
              verbose: bool = False, cuda: str | None = None) -> TrtBackend:
        """``cuda`` picks the binding (cuda-python or pycuda; default: whichever imports)."""
        trt = import_tensorrt()
        api = get_api(cuda)
        api.set_device(device)
        logger = make_logger(trt, verbose)
        runtime = trt.Runtime(logger)
        rebuild = f"Rebuild: {manifest.build_command}"
        if manifest.build.version_compatible:
            runtime.engine_host_code_allowed = True  # a version-compatible plan embeds its runtime
        core = manifest.build.dla_core
        if core is not None:
            if runtime.num_DLA_cores <= core:
                raise EngineMismatchError(
                    f"{engine_path}: built for DLA core {core}, this machine has "
                    f"{runtime.num_DLA_cores} DLA core(s). {rebuild}", ["DLA core"])
            runtime.DLA_core = core
        engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise EngineLoadError(f"{engine_path}: TensorRT {trt.__version__} could not "
                                  f"deserialise it ({last_errors(logger)}). {rebuild}")
        context = engine.create_execution_context()
        if context is None:
            raise EngineLoadError(f"{engine_path}: no execution context ({last_errors(logger)}; "
                                  "out of GPU memory?)")
        metadata = manifest.model_metadata(str(manifest_path(engine_path)))
        return cls(engine_path, manifest, metadata, trt, api, logger, runtime, engine, context)

    def _set_shape(self, shape: tuple[int, ...]) -> None:
        if not self.dynamic:
            return
        if not self.context.set_input_shape(self.input_name, shape):
            raise InputShapeError(f"TensorRT refused input shape {describe_shape(shape)} for "
                                  f"'{self.input_name}' ({last_errors(self.logger)})")
        unresolved = self.context.infer_shapes()
        if unresolved:
            raise InputShapeError(f"TensorRT could not infer the shapes of {list(unresolved)} "
                                  f"from input {describe_shape(shape)}")
        self.shape = shape

    def _infer(self, frames: np.ndarray) -> np.ndarray:
        if self.context is None:
            raise EngineLoadError(f"{self!r} is closed")
        if tuple(frames.shape) != self.shape:
            self._set_shape(tuple(frames.shape))
        src = self.tensors[self.input_name]
        nbytes = frames.nbytes
        src.host.array[:nbytes] = frames.reshape(-1).view(np.uint8)
        self.api.copy_to_device(src.device, src.host, nbytes, self.stream)
        if not self.context.execute_async_v3(self.api.stream_handle(self.stream)):
            raise RuntimeError(f"{self.engine_path}: execute_async_v3 failed "
                               f"({last_errors(self.logger)})")
        out = self.tensors[self.output_spec.name]
        shape = tuple(self.context.get_tensor_shape(out.name))
        out_bytes = int(np.prod(shape)) * out.dtype.itemsize
        self.api.copy_to_host(out.host, out.device, out_bytes, self.stream)
        self.api.synchronize(self.stream)
        return out.host.array[:out_bytes].view(out.dtype).reshape(shape).copy()

    def close(self) -> None:
        if self.stream is not None:
            self.api.synchronize(self.stream)
        for tensor in self.tensors.values():
            self.api.free_device(tensor.device)
            self.api.free_host(tensor.host)
        self.tensors = {}
        if self.stream is not None:
            self.api.destroy_stream(self.stream)
            self.stream = None
        # TensorRT objects go in dependency order: context, engine, runtime
        self.context = None
        self.engine = None
        self.runtime = None
