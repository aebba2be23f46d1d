"""TensorRT backend (TensorRT 10/11 named-tensor API, see docs/tensorrt.md).

`CudaStage` keeps two buffer sets ("slots") of page-locked host and device memory,
sized for the profile's largest input and allocated once, so frame k+1's
host-to-device copy (on a copy stream) overlaps frame k's enqueue (on a compute
stream); events order the two streams and time H2D, inference and D2H on the GPU,
so the runtime reports them apart. The host waits only on each slot's last event,
created with blocking sync by default so the waiting thread sleeps instead of
spinning a core (``sync="spin"`` trades that core for a few microseconds).

The stage runs whatever `Executor` it is given: TensorRT's execution context
here (`TrtExecutor`), a stand-in kernel in the GPU tests. Optional CUDA graphs
replay the enqueue per slot, captured after a normal run; a graph is valid only
for the input shape it was captured with (TensorRT replans an execution context
on a shape change), so `GraphCache` drops every graph when the shape changes
and captures again, with a plain enqueue as the fallback when capture fails.

TensorRT keeps a single logger pointer per process (the one the first builder
or runtime got), so every builder, parser and runtime here shares `trt_logger`,
and each operation collects its own errors (`trt_errors`): a failure quotes what
TensorRT logged during that operation, never an earlier one's messages.

TensorRT and the CUDA binding are imported inside the functions, so importing
this module never needs them.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Protocol

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

SyncMode = Literal["blocking", "spin"]
#: set to 1 to load version-compatible plans (they run code embedded in the file)
TRUST_ENV = "EDGESEG_TRUST_ENGINE_CODE"


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailableError(
            f"TensorRT is not installed ({exc}); on a Jetson it comes with JetPack, on a "
            "desktop `pip install 'edgeseg[trt-cu12]'` (CUDA-12 driver) or "
            "'edgeseg[trt-cu13]' (driver >= 580), or use --backend onnxruntime") from None
    return tensorrt


# ------------------------------------------------------------------ one logger per process

#: ILogger.Severity values (INTERNAL_ERROR 0, ERROR 1, WARNING 2, INFO 3, VERBOSE 4)
ERROR, WARNING, VERBOSE = 1, 2, 4


class ErrorCapture:
    """The errors TensorRT logged while one operation (parse, build, load, enqueue) ran."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def text(self, count: int = 3) -> str:
        return "; ".join(self.errors[-count:]) if self.errors else \
            "no error logged (run with -v for TensorRT's log)"


class LogSink:
    """Where the process's TensorRT logger sends each message: printed at or above the
    current verbosity, and errors into every capture open at that moment."""

    def __init__(self) -> None:
        self.limit = WARNING
        self._captures: list[ErrorCapture] = []
        self._lock = threading.Lock()  # TensorRT may log from its own threads

    def handle(self, severity: int, name: str, message: str) -> None:
        if severity <= ERROR:
            with self._lock:
                for capture in self._captures:
                    capture.errors.append(message)
        if severity <= self.limit:
            print(f"[TensorRT] {name}: {message}", file=sys.stderr, flush=True)

    @contextmanager
    def capture(self) -> Iterator[ErrorCapture]:
        capture = ErrorCapture()
        with self._lock:
            self._captures.append(capture)
        try:
            yield capture
        finally:
            with self._lock:
                self._captures.remove(capture)


_SINK = LogSink()
_LOGGER: Any = None


def trt_logger(trt: Any, verbose: bool = False) -> Any:
    """The process's one TensorRT logger (created on first use, never released, so TensorRT's
    global pointer to it stays valid); ``verbose`` prints TensorRT's whole log from now on."""
    global _LOGGER
    if _LOGGER is None:
        class Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity: Any, msg: str) -> None:
                _SINK.handle(int(severity), getattr(severity, "name", str(severity)), msg)

        _LOGGER = Logger()
    _SINK.limit = VERBOSE if verbose else WARNING
    return _LOGGER


def trt_errors() -> Any:
    """``with trt_errors() as log:`` ... ``log.text()``: the errors of that block only."""
    return _SINK.capture()


# ------------------------------------------------------------------ trusting a plan's code


def allow_engine_host_code(engine_path: Path, manifest: EngineManifest, trust: bool | None,
                           environ: Mapping[str, str] = os.environ) -> bool:
    """Whether to set ``runtime.engine_host_code_allowed`` for this plan.

    A version-compatible plan carries TensorRT's lean runtime: loading it runs code
    from the file in this process, so NVIDIA says to deserialise only trusted plans
    this way. The manifest alone (a file beside the plan) cannot vouch for that: the
    user must (``trust`` / ``EDGESEG_TRUST_ENGINE_CODE=1``). Raises when not trusted.
    """
    if not manifest.build.version_compatible:
        return False
    if trust is None:
        trust = environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")
    if not trust:
        raise EngineLoadError(
            f"{engine_path}: a version-compatible plan runs TensorRT code embedded in the "
            f"file when it loads; load only plans you built or trust: pass "
            f"trust_engine_code=True (or set {TRUST_ENV}=1), or rebuild it without "
            f"--version-compatible: {manifest.build_command}")
    return True


# ------------------------------------------------------------------ CUDA graph bookkeeping

GraphPlan = Literal["plain", "capture", "launch"]


class GraphCache:
    """CUDA graphs of one execution context, one per slot, all for the current input shape.

    A graph bakes in the kernels and parameters TensorRT chose for the shape the
    context had at capture; after ``set_input_shape`` to another shape the context
    is replanned and the old graphs replay stale work. So `use_shape` drops them all
    when the shape changes (the caller destroys them once the stream is idle) and
    the next frame of each slot captures again. A shape whose capture failed runs
    without graphs from then on.
    """

    def __init__(self) -> None:
        self.shape: tuple[int, ...] | None = None
        self.graphs: dict[int, Any] = {}
        self.failures: dict[tuple[int, ...], str] = {}

    def use_shape(self, shape: tuple[int, ...]) -> list[Any]:
        """Switch to ``shape``; returns the graphs that became stale (to destroy)."""
        if shape == self.shape:
            return []
        stale, self.graphs, self.shape = list(self.graphs.values()), {}, shape
        return stale

    def plan(self, slot: int) -> GraphPlan:
        if self.shape in self.failures:
            return "plain"
        return "launch" if slot in self.graphs else "capture"

    def store(self, slot: int, graph: Any) -> None:
        self.graphs[slot] = graph

    def fail(self, reason: str) -> None:
        if self.shape is not None:
            self.failures[self.shape] = reason

    def clear(self) -> list[Any]:
        stale, self.graphs = list(self.graphs.values()), {}
        return stale


# ------------------------------------------------------------------ the double-buffered stage


class Executor(Protocol):
    """What `CudaStage` needs from an engine: set the input shape, bind addresses, enqueue."""

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> None: ...

    def set_address(self, name: str, ptr: int) -> None: ...

    def tensor_shape(self, name: str) -> tuple[int, ...]: ...

    def enqueue(self, stream_handle: int) -> None:
        """Queue the inference on the stream; raise (saying why) when it cannot."""


class TrtExecutor:
    """A TensorRT execution context as an `Executor`."""

    def __init__(self, context: Any, label: str) -> None:
        self.context, self.label = context, label

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> None:
        with trt_errors() as log:
            if not self.context.set_input_shape(name, shape):
                raise InputShapeError(f"TensorRT refused input shape {describe_shape(shape)} "
                                      f"for '{name}' ({log.text()})")
            unresolved = self.context.infer_shapes()
        if unresolved:
            raise InputShapeError(f"TensorRT could not infer the shapes of {list(unresolved)} "
                                  f"from input {describe_shape(shape)}")

    def set_address(self, name: str, ptr: int) -> None:
        self.context.set_tensor_address(name, ptr)

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.context.get_tensor_shape(name))

    def enqueue(self, stream_handle: int) -> None:
        with trt_errors() as log:
            ok = self.context.execute_async_v3(stream_handle)
        if not ok:
            raise RuntimeError(f"{self.label}: execute_async_v3 failed ({log.text()})")


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

    def __init__(self, index: int, api: CudaApi, blocking: bool) -> None:
        self.index = index
        self.tensors: dict[str, _Tensor] = {}
        # the host waits on d2h_end only: that one sleeps instead of spinning when blocking
        self.events = {name: api.create_event(blocking=blocking and name == "d2h_end")
                       for name in self.EVENTS}
        self.out_shape: tuple[int, ...] = ()

    def free(self, api: CudaApi) -> None:
        for tensor in self.tensors.values():
            tensor.free(api)
        for event in self.events.values():
            api.destroy_event(event)
        self.tensors, self.events = {}, {}


class CudaStage:
    """Double-buffered copy in -> enqueue -> copy out over any `Executor`.

    ``tensors`` maps every I/O tensor to (dtype, largest shape); ``shape`` is the
    input shape the executor is set to now; ``dynamic`` says whether the input shape
    may change per batch.
    """

    def __init__(self, api: CudaApi, executor: Executor,
                 tensors: Mapping[str, tuple[np.dtype, tuple[int, ...]]], input_name: str,
                 output_name: str, shape: tuple[int, ...], *, dynamic: bool,
                 cuda_graphs: bool = False, sync: SyncMode = "blocking", slots: int = 2,
                 label: str = "engine") -> None:
        if sync not in ("blocking", "spin"):
            raise ValueError(f"sync={sync!r}: use 'blocking' (sleep while waiting for the GPU) "
                             "or 'spin' (busy-wait a core, a few microseconds sooner)")
        self.api, self.executor, self.label = api, executor, label
        self.input_name, self.output_name = input_name, output_name
        self.dynamic, self.cuda_graphs, self.sync = dynamic, cuda_graphs, sync
        self.shape = shape
        self.graphs = GraphCache()
        self.graphs.use_shape(shape)
        self.captures = 0  # graphs captured so far (a shape change captures again)
        self.slots: list[_Slot] = []
        self.queue: deque[_Slot] = deque()
        self.submitted = 0
        self.copy_stream: Any = None
        self.compute_stream: Any = None
        try:
            self.copy_stream = api.create_stream()
            self.compute_stream = api.create_stream()
            for index in range(slots):
                slot = _Slot(index, api, blocking=sync == "blocking")
                self.slots.append(slot)
                for name, (dtype, max_shape) in tensors.items():
                    slot.tensors[name] = _Tensor(name, np.dtype(dtype), max_shape, api)
        except Exception:
            self.close()
            raise

    @property
    def max_in_flight(self) -> int:
        return len(self.slots)

    @property
    def in_flight(self) -> int:
        return len(self.queue)

    def _set_shape(self, shape: tuple[int, ...]) -> None:
        if shape == self.shape:
            return
        stale = self.graphs.use_shape(shape)
        if stale:  # a graph may still be replaying on the compute stream
            self.api.synchronize(self.compute_stream)
            for graph in stale:
                self.api.destroy_graph(graph)
        if self.dynamic:
            self.executor.set_input_shape(self.input_name, shape)
        self.shape = shape

    def submit(self, frames: np.ndarray) -> None:
        """Copy the batch in on the copy stream and enqueue inference and the copy back on the
        compute stream; returns without waiting. At most ``max_in_flight`` batches queue."""
        if not self.slots:
            raise EngineLoadError(f"{self.label} is closed")
        if len(self.queue) >= len(self.slots):
            raise EngineLoadError(f"{len(self.slots)} batches in flight; collect() first")
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
            self.executor.set_address(name, tensor.device.ptr)
        api.record_event(ev["exec_start"], self.compute_stream)
        self._enqueue(slot)
        api.record_event(ev["exec_end"], self.compute_stream)
        out = slot.tensors[self.output_name]
        slot.out_shape = self.executor.tensor_shape(self.output_name)
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
        out = slot.tensors[self.output_name]
        nbytes = int(np.prod(slot.out_shape)) * out.dtype.itemsize
        output = out.host.array[:nbytes].view(out.dtype).reshape(slot.out_shape).copy()
        timings = {"h2d": api.elapsed_ms(ev["h2d_start"], ev["h2d_end"]),
                   "infer": api.elapsed_ms(ev["exec_start"], ev["exec_end"]),
                   "d2h": api.elapsed_ms(ev["exec_end"], ev["d2h_end"])}
        return InferResult(output, timings)

    def _execute(self) -> None:
        self.executor.enqueue(self.api.stream_handle(self.compute_stream))

    def _enqueue(self, slot: _Slot) -> None:
        """Replay this slot's CUDA graph, capturing it on first use; else enqueue."""
        plan = self.graphs.plan(slot.index) if self.cuda_graphs else "plain"
        if plan == "launch":
            self.api.launch_graph(self.graphs.graphs[slot.index], self.compute_stream)
        elif plan == "capture":
            self._capture(slot)
        else:
            self._execute()

    def _capture(self, slot: _Slot) -> None:
        """trtexec's recipe: one normal run (this batch's result; TensorRT allocates lazily),
        wait for it, then capture the same enqueue into a graph for the next batches."""
        api, stream = self.api, self.compute_stream
        self._execute()
        api.synchronize(stream)
        try:
            api.begin_capture(stream)
        except CudaError as exc:
            self._capture_failed(str(exc))
            return
        reason = ""
        try:
            self._execute()
        except Exception as exc:  # noqa: BLE001 - any enqueue failure ends the capture
            reason = str(exc)
        try:
            graph = api.end_capture(stream)
        except CudaError as exc:
            graph, reason = None, reason or str(exc)
        if reason or graph is None:
            if graph is not None:
                api.destroy_graph(graph)
            self._capture_failed(reason or "no graph")
            return
        self.graphs.store(slot.index, graph)
        self.captures += 1

    def _capture_failed(self, reason: str) -> None:
        self.graphs.fail(reason)
        print(f"[edgeseg] CUDA graph capture failed for input {describe_shape(self.shape)} "
              f"({reason}); running without a graph", file=sys.stderr)

    def close(self) -> None:
        for stream in (self.copy_stream, self.compute_stream):
            if stream is not None:
                self.api.synchronize(stream)
        for graph in self.graphs.clear():
            self.api.destroy_graph(graph)
        for slot in self.slots:
            slot.free(self.api)
        self.slots, self.queue = [], deque()
        for stream in (self.copy_stream, self.compute_stream):
            if stream is not None:
                self.api.destroy_stream(stream)
        self.copy_stream = self.compute_stream = None


# ------------------------------------------------------------------ the backend


class TrtBackend(Backend):
    name = "tensorrt"
    max_in_flight = 2

    def __init__(self, engine_path: Path, manifest: EngineManifest, metadata: ModelMetadata,
                 trt: Any, api: CudaApi, runtime: Any, engine: Any, context: Any, *,
                 cuda_graphs: bool = False, sync: SyncMode = "blocking") -> None:
        super().__init__(engine_path, manifest, metadata, manifest.inputs[0],
                         manifest.outputs[0])
        self.trt, self.api = trt, api
        self.runtime, self.engine, self.context = runtime, engine, context
        self.stage: CudaStage | None = None
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        expected = {t.name for t in manifest.inputs + manifest.outputs}
        if len(inputs) != 1 or set(names) != expected:
            raise EngineLoadError(f"{engine_path}: engine tensors {names} do not match its "
                                  f"manifest ({sorted(expected)}); rebuild: "
                                  f"{manifest.build_command}")
        self.input_name = inputs[0]
        dynamic = any(d < 0 for d in engine.get_tensor_shape(self.input_name))
        max_in = tuple(engine.get_tensor_profile_shape(self.input_name, 0)[2]) if dynamic \
            else tuple(engine.get_tensor_shape(self.input_name))
        executor = TrtExecutor(context, str(engine_path))
        if dynamic:  # the largest shape sizes every buffer, outputs included
            executor.set_input_shape(self.input_name, max_in)
        tensors = {name: (np.dtype(trt.nptype(engine.get_tensor_dtype(name))),
                          max_in if name == self.input_name else executor.tensor_shape(name))
                   for name in names}
        self.stage = CudaStage(api, executor, tensors, self.input_name, self.output_spec.name,
                               max_in, dynamic=dynamic, cuda_graphs=cuda_graphs, sync=sync,
                               slots=self.max_in_flight, label=str(engine_path))

    @classmethod
    def _open(cls, engine_path: Path, manifest: EngineManifest, *, device: int = 0,
              verbose: bool = False, cuda: str | None = None, cuda_graphs: bool = False,
              sync: SyncMode = "blocking", trust_engine_code: bool | None = None
              ) -> TrtBackend:
        """``cuda`` picks the binding (cuda-python or pycuda; default: the first usable);
        ``cuda_graphs`` replays each slot's enqueue as a captured graph; ``sync`` is how the
        host waits for a batch; ``trust_engine_code`` allows a version-compatible plan's
        embedded runtime (else ``EDGESEG_TRUST_ENGINE_CODE=1``)."""
        trt = import_tensorrt()
        host_code = allow_engine_host_code(engine_path, manifest, trust_engine_code)
        api = get_api(cuda)
        api.set_device(device)
        runtime = trt.Runtime(trt_logger(trt, verbose))
        rebuild = f"Rebuild: {manifest.build_command}"
        if host_code:
            print(f"[edgeseg] {engine_path}: version-compatible plan: running the TensorRT "
                  "runtime embedded in it (trusted by the user)", file=sys.stderr)
            runtime.engine_host_code_allowed = True
        core = manifest.build.dla_core
        if core is not None:
            if runtime.num_DLA_cores <= core:
                raise EngineMismatchError(
                    f"{engine_path}: built for DLA core {core}, this machine has "
                    f"{runtime.num_DLA_cores} DLA core(s). {rebuild}", ["DLA core"])
            runtime.DLA_core = core
        with trt_errors() as log:
            engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise EngineLoadError(f"{engine_path}: TensorRT {trt.__version__} could not "
                                  f"deserialise it ({log.text()}). {rebuild}")
        with trt_errors() as log:
            context = engine.create_execution_context()
        if context is None:
            raise EngineLoadError(f"{engine_path}: no execution context ({log.text()}; "
                                  "out of GPU memory?)")
        metadata = manifest.model_metadata(str(manifest_path(engine_path)))
        backend = cls(engine_path, manifest, metadata, trt, api, runtime, engine, context,
                      cuda_graphs=cuda_graphs, sync=sync)
        return backend

    # --- streaming: submit / collect ---------------------------------------------------
    def submit(self, frames: np.ndarray) -> None:
        """Copy the batch in on the copy stream and enqueue inference and the copy back on the
        compute stream; returns without waiting. At most two batches are in flight."""
        if self.stage is None or self.context is None:
            raise EngineLoadError(f"{self!r} is closed")
        self.stage.submit(check_frames(frames, self.input_spec))

    def collect(self) -> InferResult:
        if self.stage is None:
            raise EngineLoadError("collect() without a submitted batch")
        return self.stage.collect()

    @property
    def in_flight(self) -> int:
        return self.stage.in_flight if self.stage is not None else 0

    def _infer(self, frames: np.ndarray) -> np.ndarray:
        while self.in_flight:  # a synchronous call after streaming: finish what is queued first
            self.collect()
        self.submit(frames)
        return self.collect().output

    def infer(self, frames: np.ndarray) -> np.ndarray:
        return self._infer(frames)

    def close(self) -> None:
        if self.stage is not None:
            self.stage.close()
            self.stage = None
        # TensorRT objects go in dependency order: context, engine, runtime
        self.context = None
        self.engine = None
        self.runtime = None
