"""TensorRT backend (TensorRT 10/11 named-tensor API, see docs/tensorrt.md).

Two buffer sets ("slots") of page-locked host and device memory, sized for
the profile's largest input and allocated once, so frame k+1's host-to-device
copy (on a copy stream) overlaps frame k's ``execute_async_v3`` (on a compute
stream); events order the two streams and time H2D, inference and D2H on
the GPU, so the runtime reports them apart. Optional CUDA graphs replay the
enqueue per (input shape, slot), captured after a normal warm-up run, with a
plain enqueue as the fallback when capture fails. TensorRT and the CUDA
binding are imported inside the functions, so importing this module never
needs them.
"""

from __future__ import annotations

import sys
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.contract.manifest import (
    EngineLoadError,
    EngineManifest,
    EngineMismatchError,
    manifest_path,
)
from edgeseg.contract.metadata import ModelMetadata
from edgeseg.runtime.backends.base import (
    Backend,
    BackendUnavailableError,
    InferResult,
    InputShapeError,
    check_frames,
    describe_shape,
)
from edgeseg.runtime.backends.cuda_memory import (
    CudaApi,
    CudaError,
    DeviceBuffer,
    HostBuffer,
    get_api,
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
    """One I/O tensor's buffers in one slot (sized for the largest shape the profile allows)."""

    def __init__(self, name: str, dtype: np.dtype, max_shape: tuple[int, ...],
                 api: CudaApi) -> None:
        self.name, self.dtype = name, dtype
        nbytes = max(int(np.prod(max_shape)) * dtype.itemsize, 1)
        self.host: HostBuffer = api.alloc_host(nbytes)
        self.device: DeviceBuffer = api.alloc_device(nbytes)

    def free(self, api: CudaApi) -> None:
        api.free_device(self.device)
        api.free_host(self.host)


class _Slot:
    """A buffer set and the events that order and time its copies and inference."""

    EVENTS = ("h2d_start", "h2d_end", "exec_start", "exec_end", "d2h_end")

    def __init__(self, index: int, api: CudaApi) -> None:
        self.index = index
        self.tensors: dict[str, _Tensor] = {}
        self.events = {name: api.create_event() for name in self.EVENTS}
        self.out_shape: tuple[int, ...] = ()

    def free(self, api: CudaApi) -> None:
        for tensor in self.tensors.values():
            tensor.free(api)
        for event in self.events.values():
            api.destroy_event(event)
        self.tensors, self.events = {}, {}


class TrtBackend(Backend):
    name = "tensorrt"
    max_in_flight = 2

    def __init__(self, engine_path: Path, manifest: EngineManifest, metadata: ModelMetadata,
                 trt: Any, api: CudaApi, logger: Any, runtime: Any, engine: Any,
                 context: Any, cuda_graphs: bool = False) -> None:
        super().__init__(engine_path, manifest, metadata, manifest.inputs[0],
                         manifest.outputs[0])
        self.trt, self.api, self.logger = trt, api, logger
        self.runtime, self.engine, self.context = runtime, engine, context
        self.copy_stream: Any = None
        self.compute_stream: Any = None
        self.slots: list[_Slot] = []
        self.queue: deque[_Slot] = deque()
        self.submitted = 0
        self.cuda_graphs = cuda_graphs
        self.graphs: dict[tuple[tuple[int, ...], int], Any] = {}
        self.graph_failures: dict[tuple[int, ...], str] = {}
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        expected = {t.name for t in manifest.inputs + manifest.outputs}
        if len(inputs) != 1 or set(names) != expected:
            raise EngineLoadError(f"{engine_path}: engine tensors {names} do not match its "
                                  f"manifest ({sorted(expected)}); rebuild: "
                                  f"{manifest.build_command}")
        self.input_name = inputs[0]
        self.output_names = [n for n in names if n != self.input_name]
        self.dynamic = any(d < 0 for d in engine.get_tensor_shape(self.input_name))
        max_in = tuple(engine.get_tensor_profile_shape(self.input_name, 0)[2]) if self.dynamic \
            else tuple(engine.get_tensor_shape(self.input_name))
        self.shape: tuple[int, ...] = ()
        self._set_shape(max_in)
        try:
            self.copy_stream = api.create_stream()
            self.compute_stream = api.create_stream()
            for index in range(self.max_in_flight):
                slot = _Slot(index, api)
                self.slots.append(slot)
                for name in names:
                    dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
                    shape = max_in if name == self.input_name \
                        else tuple(context.get_tensor_shape(name))
                    slot.tensors[name] = _Tensor(name, dtype, shape, api)
        except Exception:
            self.close()
            raise

    @classmethod
    def _open(cls, engine_path: Path, manifest: EngineManifest, *, device: int = 0,
              verbose: bool = False, cuda: str | None = None,
              cuda_graphs: bool = False) -> TrtBackend:
        """``cuda`` picks the binding (cuda-python or pycuda; default: whichever imports);
        ``cuda_graphs`` replays each input shape's enqueue as a captured graph."""
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
        return cls(engine_path, manifest, metadata, trt, api, logger, runtime, engine, context,
                   cuda_graphs=cuda_graphs)

    def _set_shape(self, shape: tuple[int, ...]) -> None:
        if not self.dynamic or shape == self.shape:
            self.shape = shape
            return
        if not self.context.set_input_shape(self.input_name, shape):
            raise InputShapeError(f"TensorRT refused input shape {describe_shape(shape)} for "
                                  f"'{self.input_name}' ({last_errors(self.logger)})")
        unresolved = self.context.infer_shapes()
        if unresolved:
            raise InputShapeError(f"TensorRT could not infer the shapes of {list(unresolved)} "
                                  f"from input {describe_shape(shape)}")
        self.shape = shape

    # --- streaming: submit / collect ---------------------------------------------------
    def submit(self, frames: np.ndarray) -> None:
        """Copy the batch in on the copy stream and enqueue inference and the copy back on the
        compute stream; returns without waiting. At most two batches are in flight."""
        if self.context is None:
            raise EngineLoadError(f"{self!r} is closed")
        frames = check_frames(frames, self.input_spec)
        if len(self.queue) >= self.max_in_flight:
            raise EngineLoadError(f"{self.max_in_flight} batches in flight; collect() first")
        slot = self.slots[self.submitted % len(self.slots)]
        self.submitted += 1
        api, ev = self.api, slot.events
        src = slot.tensors[self.input_name]
        src.host.array[:frames.nbytes] = frames.reshape(-1).view(np.uint8)
        api.record_event(ev["h2d_start"], self.copy_stream)
        api.copy_to_device(src.device, src.host, frames.nbytes, self.copy_stream)
        api.record_event(ev["h2d_end"], self.copy_stream)
        api.stream_wait_event(self.compute_stream, ev["h2d_end"])
        self._set_shape(tuple(frames.shape))
        for name, tensor in slot.tensors.items():  # TensorRT reads addresses at enqueue time
            self.context.set_tensor_address(name, tensor.device.ptr)
        api.record_event(ev["exec_start"], self.compute_stream)
        self._enqueue(slot)
        api.record_event(ev["exec_end"], self.compute_stream)
        out = slot.tensors[self.output_spec.name]
        slot.out_shape = tuple(self.context.get_tensor_shape(out.name))
        out_bytes = int(np.prod(slot.out_shape)) * out.dtype.itemsize
        api.copy_to_host(out.host, out.device, out_bytes, self.compute_stream)
        api.record_event(ev["d2h_end"], self.compute_stream)
        self.queue.append(slot)

    def collect(self) -> InferResult:
        if not self.queue:
            raise EngineLoadError("collect() without a submitted batch")
        slot = self.queue.popleft()
        api, ev = self.api, slot.events
        api.event_synchronize(ev["d2h_end"])
        out = slot.tensors[self.output_spec.name]
        nbytes = int(np.prod(slot.out_shape)) * out.dtype.itemsize
        output = out.host.array[:nbytes].view(out.dtype).reshape(slot.out_shape).copy()
        timings = {"h2d": api.elapsed_ms(ev["h2d_start"], ev["h2d_end"]),
                   "infer": api.elapsed_ms(ev["exec_start"], ev["exec_end"]),
                   "d2h": api.elapsed_ms(ev["exec_end"], ev["d2h_end"])}
        return InferResult(output, timings)

    @property
    def in_flight(self) -> int:
        return len(self.queue)

    def _infer(self, frames: np.ndarray) -> np.ndarray:
        while self.queue:  # a synchronous call after streaming: finish what is queued first
            self.collect()
        self.submit(frames)
        return self.collect().output

    def infer(self, frames: np.ndarray) -> np.ndarray:
        return self._infer(frames)

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.api.stream_handle(self.compute_stream)):
            raise RuntimeError(f"{self.engine_path}: execute_async_v3 failed "
                               f"({last_errors(self.logger)})")

    def _enqueue(self, slot: _Slot) -> None:
        """Launch this (shape, slot)'s CUDA graph, capturing it on first use; else enqueue."""
        if not self.cuda_graphs or self.shape in self.graph_failures:
            self._execute()
            return
        key = (self.shape, slot.index)
        graph = self.graphs.get(key)
        if graph is None:
            graph = self._capture(key)
        if graph is None:
            self._execute()
        else:
            self.api.launch_graph(graph, self.compute_stream)

    def _capture(self, key: tuple[tuple[int, ...], int]) -> Any:
        """trtexec's recipe: one normal run (TensorRT allocates lazily), then capture."""
        api, stream = self.api, self.compute_stream
        self._execute()
        api.synchronize(stream)
        try:
            api.begin_capture(stream)
        except CudaError as exc:
            self.graph_failures[key[0]] = str(exc)
            return None
        try:
            ok = self.context.execute_async_v3(api.stream_handle(stream))
        except Exception as exc:  # noqa: BLE001 - any enqueue failure ends the capture
            ok, reason = False, str(exc)
        else:
            reason = last_errors(self.logger)
        try:
            graph = api.end_capture(stream)
        except CudaError as exc:
            graph, reason = None, str(exc)
        if not ok or graph is None:
            if graph is not None:
                api.destroy_graph(graph)
            self.graph_failures[key[0]] = reason
            print(f"[edgeseg] CUDA graph capture failed for input {describe_shape(key[0])} "
                  f"({reason}); running without a graph", file=sys.stderr)
            return None
        self.graphs[key] = graph
        return graph

    def close(self) -> None:
        for stream in (self.copy_stream, self.compute_stream):
            if stream is not None:
                self.api.synchronize(stream)
        for graph in self.graphs.values():
            self.api.destroy_graph(graph)
        self.graphs = {}
        for slot in self.slots:
            slot.free(self.api)
        self.slots, self.queue = [], deque()
        for stream in (self.copy_stream, self.compute_stream):
            if stream is not None:
                self.api.destroy_stream(stream)
        self.copy_stream = self.compute_stream = None
        # TensorRT objects go in dependency order: context, engine, runtime
        self.context = None
        self.engine = None
        self.runtime = None
