"""Pinned host buffers, device buffers, streams and GPU queries over the installed CUDA binding.

TensorRT's Python API owns no memory: it takes raw device pointers and a stream
handle. The targets have one of two bindings: cuda-python (wheels for x86_64 and
aarch64; ``from cuda.bindings import runtime``, every call returns ``(err, ...)``)
or pycuda (built from source on JetPack). `CudaApi` hides which one is present, so
the TensorRT backend is written once. pycuda is used through its *primary*
context (``pycuda.autoprimaryctx``), never ``autoinit``, whose private context
breaks TensorRT in the same process. Nothing is imported at module import time.
"""

from __future__ import annotations

import ctypes
import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeseg.errors import EdgesegError

INSTALL_HINT = ("install cuda-python (`pip install 'cuda-python>=12,<13'` on CUDA 12 drivers, "
                "13.x needs driver >= 580) or pycuda (JetPack: `pip install pycuda`)")


class CudaUnavailableError(EdgesegError):
    """No CUDA binding installed, or no CUDA GPU visible to it."""


class CudaError(RuntimeError):
    """A CUDA call that failed on a machine that has a GPU (a bug or a broken driver)."""


class GraphCaptureUnsupported(CudaError):
    """This binding cannot capture CUDA graphs; callers run the work normally instead."""


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    major: int
    minor: int

    @property
    def compute_capability(self) -> str:
        """TensorRT's way of naming a plan's target, e.g. ``sm_87`` (Orin) or ``sm_90`` (H100)."""
        return f"sm_{self.major}{self.minor}"


@dataclass
class HostBuffer:
    """Page-locked host memory (fast, asynchronous copies) with a uint8 numpy view."""

    array: np.ndarray
    ptr: int
    handle: Any = None  # what keeps the allocation alive (pycuda)


@dataclass
class DeviceBuffer:
    ptr: int
    nbytes: int
    handle: Any = None


class CudaApi(ABC):
    """The few CUDA runtime calls the TensorRT backend needs."""

    name: str

    @abstractmethod
    def device_count(self) -> int: ...

    @abstractmethod
    def device_info(self, index: int) -> GpuInfo: ...

    @abstractmethod
    def set_device(self, index: int) -> None: ...

    @abstractmethod
    def alloc_host(self, nbytes: int) -> HostBuffer: ...

    @abstractmethod
    def alloc_device(self, nbytes: int) -> DeviceBuffer: ...

    @abstractmethod
    def free_host(self, buf: HostBuffer) -> None: ...

    @abstractmethod
    def free_device(self, buf: DeviceBuffer) -> None: ...

    @abstractmethod
    def create_stream(self) -> Any:
        """A new (non-default) stream; TensorRT must never run on the default stream."""

    @abstractmethod
    def stream_handle(self, stream: Any) -> int: ...

    @abstractmethod
    def destroy_stream(self, stream: Any) -> None: ...

    @abstractmethod
    def copy_to_device(self, dst: DeviceBuffer, src: HostBuffer, nbytes: int,
                       stream: Any) -> None: ...

    @abstractmethod
    def copy_to_host(self, dst: HostBuffer, src: DeviceBuffer, nbytes: int,
                     stream: Any) -> None: ...

    @abstractmethod
    def synchronize(self, stream: Any) -> None: ...

    # events: cross-stream ordering (double buffering) and GPU-side stage timing
    @abstractmethod
    def create_event(self) -> Any: ...

    @abstractmethod
    def record_event(self, event: Any, stream: Any) -> None: ...

    @abstractmethod
    def stream_wait_event(self, stream: Any, event: Any) -> None:
        """Work queued on ``stream`` after this call waits for ``event`` (no host block)."""

    @abstractmethod
    def event_synchronize(self, event: Any) -> None: ...

    @abstractmethod
    def elapsed_ms(self, start: Any, end: Any) -> float: ...

    @abstractmethod
    def destroy_event(self, event: Any) -> None: ...

    # CUDA graphs (trtexec's recipe); bindings without them raise GraphCaptureUnsupported
    def begin_capture(self, stream: Any) -> None:
        raise GraphCaptureUnsupported(f"{self.name} cannot capture CUDA graphs")

    def end_capture(self, stream: Any) -> Any:
        """Stop capturing; returns an instantiated graph ready to launch."""
        raise GraphCaptureUnsupported(f"{self.name} cannot capture CUDA graphs")

    def launch_graph(self, graph: Any, stream: Any) -> None:
        raise GraphCaptureUnsupported(f"{self.name} cannot launch CUDA graphs")

    def destroy_graph(self, graph: Any) -> None:
        del graph


class CudaPythonApi(CudaApi):
    """cuda-python (``cuda.bindings.runtime``; ``cuda.cudart`` on old 12.x wheels)."""

    name = "cuda-python"

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # cuda-python < 12.6 only
        self.rt = cudart

    def _call(self, what: str, result: Any) -> Any:
        """Check the ``(err, ...)`` tuple every cuda-python call returns; return the rest."""
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            text = self.rt.cudaGetErrorString(err)
            text = text[1] if isinstance(text, tuple) else text
            text = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
            raise CudaError(f"{what} failed: {text} ({err!r})")
        return rest[0] if len(rest) == 1 else tuple(rest)

    def device_count(self) -> int:
        err, count = self.rt.cudaGetDeviceCount()
        return int(count) if err == self.rt.cudaError_t.cudaSuccess else 0

    def device_info(self, index: int) -> GpuInfo:
        prop = self._call("cudaGetDeviceProperties", self.rt.cudaGetDeviceProperties(index))
        name = prop.name
        name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
        return GpuInfo(index, name.rstrip("\x00").strip(), int(prop.major), int(prop.minor))

    def set_device(self, index: int) -> None:
        self._call("cudaSetDevice", self.rt.cudaSetDevice(index))

    def alloc_host(self, nbytes: int) -> HostBuffer:
        ptr = int(self._call("cudaMallocHost", self.rt.cudaMallocHost(nbytes)))
        view = np.ctypeslib.as_array((ctypes.c_ubyte * nbytes).from_address(ptr))
        return HostBuffer(view, ptr)

    def alloc_device(self, nbytes: int) -> DeviceBuffer:
        return DeviceBuffer(int(self._call("cudaMalloc", self.rt.cudaMalloc(nbytes))), nbytes)

    def free_host(self, buf: HostBuffer) -> None:
        self._call("cudaFreeHost", self.rt.cudaFreeHost(buf.ptr))

    def free_device(self, buf: DeviceBuffer) -> None:
        self._call("cudaFree", self.rt.cudaFree(buf.ptr))

    def create_stream(self) -> Any:
        return self._call("cudaStreamCreate", self.rt.cudaStreamCreate())

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def destroy_stream(self, stream: Any) -> None:
        self._call("cudaStreamDestroy", self.rt.cudaStreamDestroy(stream))

    def copy_to_device(self, dst: DeviceBuffer, src: HostBuffer, nbytes: int,
                       stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call("cudaMemcpyAsync(H2D)",
                   self.rt.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kind, stream))

    def copy_to_host(self, dst: HostBuffer, src: DeviceBuffer, nbytes: int,
                     stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call("cudaMemcpyAsync(D2H)",
                   self.rt.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kind, stream))

    def synchronize(self, stream: Any) -> None:
        self._call("cudaStreamSynchronize", self.rt.cudaStreamSynchronize(stream))

    def create_event(self) -> Any:
        return self._call("cudaEventCreate", self.rt.cudaEventCreate())

    def record_event(self, event: Any, stream: Any) -> None:
        self._call("cudaEventRecord", self.rt.cudaEventRecord(event, stream))

    def stream_wait_event(self, stream: Any, event: Any) -> None:
        self._call("cudaStreamWaitEvent", self.rt.cudaStreamWaitEvent(stream, event, 0))

    def event_synchronize(self, event: Any) -> None:
        self._call("cudaEventSynchronize", self.rt.cudaEventSynchronize(event))

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return float(self._call("cudaEventElapsedTime", self.rt.cudaEventElapsedTime(start, end)))

    def destroy_event(self, event: Any) -> None:
        self._call("cudaEventDestroy", self.rt.cudaEventDestroy(event))

    def begin_capture(self, stream: Any) -> None:
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._call("cudaStreamBeginCapture", self.rt.cudaStreamBeginCapture(stream, mode))

    def end_capture(self, stream: Any) -> Any:
        graph = self._call("cudaStreamEndCapture", self.rt.cudaStreamEndCapture(stream))
        try:
            instance = self._call("cudaGraphInstantiate", self.rt.cudaGraphInstantiate(graph, 0))
        finally:
            self.rt.cudaGraphDestroy(graph)  # the executable instance keeps what it needs
        return instance

    def launch_graph(self, graph: Any, stream: Any) -> None:
        self._call("cudaGraphLaunch", self.rt.cudaGraphLaunch(graph, stream))

    def destroy_graph(self, graph: Any) -> None:
        self._call("cudaGraphExecDestroy", self.rt.cudaGraphExecDestroy(graph))


class PyCudaApi(CudaApi):
    """pycuda on the device's primary context (shared with TensorRT)."""

    name = "pycuda"

    def __init__(self) -> None:
        import pycuda.driver as drv

        drv.init()
        self.drv = drv
        self._context_ready = False

    def _context(self) -> None:
        if not self._context_ready:
            import pycuda.autoprimaryctx  # noqa: F401  (retains and pushes the primary context)

            self._context_ready = True

    def device_count(self) -> int:
        return int(self.drv.Device.count())

    def device_info(self, index: int) -> GpuInfo:
        dev = self.drv.Device(index)
        major, minor = dev.compute_capability()
        return GpuInfo(index, str(dev.name()), int(major), int(minor))

    def set_device(self, index: int) -> None:
        if index != 0:  # autoprimaryctx binds device 0 (or CUDA_DEVICE)
            raise CudaUnavailableError(
                f"pycuda uses GPU 0 only here; run with CUDA_VISIBLE_DEVICES={index} instead")
        self._context()

    def alloc_host(self, nbytes: int) -> HostBuffer:
        self._context()
        array = self.drv.pagelocked_empty(nbytes, np.uint8)
        return HostBuffer(array, int(array.ctypes.data), array)

    def alloc_device(self, nbytes: int) -> DeviceBuffer:
        self._context()
        mem = self.drv.mem_alloc(nbytes)
        return DeviceBuffer(int(mem), nbytes, mem)

    def free_host(self, buf: HostBuffer) -> None:
        base = getattr(buf.handle, "base", None)
        if hasattr(base, "free"):
            base.free()
        buf.handle = None

    def free_device(self, buf: DeviceBuffer) -> None:
        if buf.handle is not None:
            buf.handle.free()
            buf.handle = None

    def create_stream(self) -> Any:
        self._context()
        return self.drv.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def destroy_stream(self, stream: Any) -> None:
        """pycuda destroys a stream when the object is collected."""

    def copy_to_device(self, dst: DeviceBuffer, src: HostBuffer, nbytes: int,
                       stream: Any) -> None:
        self.drv.memcpy_htod_async(dst.handle, src.array[:nbytes], stream)

    def copy_to_host(self, dst: HostBuffer, src: DeviceBuffer, nbytes: int,
                     stream: Any) -> None:
        self.drv.memcpy_dtoh_async(dst.array[:nbytes], src.handle, stream)

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def create_event(self) -> Any:
        self._context()
        return self.drv.Event()

    def record_event(self, event: Any, stream: Any) -> None:
        event.record(stream)

    def stream_wait_event(self, stream: Any, event: Any) -> None:
        stream.wait_for_event(event)

    def event_synchronize(self, event: Any) -> None:
        event.synchronize()

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return float(end.time_since(start))

    def destroy_event(self, event: Any) -> None:
        """pycuda destroys an event when the object is collected."""


BINDINGS: dict[str, type[CudaApi]] = {"cuda-python": CudaPythonApi, "pycuda": PyCudaApi}


@functools.cache
def get_api(prefer: str | None = None) -> CudaApi:
    """The first binding that imports (cuda-python, then pycuda), or ``prefer`` only."""
    names = [prefer] if prefer else list(BINDINGS)
    errors = []
    for name in names:
        if name not in BINDINGS:
            raise CudaUnavailableError(f"unknown CUDA binding {name!r}; use one of {list(BINDINGS)}")
        try:
            return BINDINGS[name]()
        except Exception as exc:  # ImportError, or a driver that fails cuInit
            errors.append(f"{name}: {exc}")
    raise CudaUnavailableError(f"no usable CUDA binding ({'; '.join(errors)}); {INSTALL_HINT}")


def find_gpu(index: int = 0) -> GpuInfo:
    """GPU ``index`` as the installed binding sees it; raises saying why there is none."""
    api = get_api()
    count = api.device_count()
    if count <= index:
        raise CudaUnavailableError(
            f"no CUDA GPU {index} visible ({count} found through {api.name}; "
            "check the driver and CUDA_VISIBLE_DEVICES)")
    return api.device_info(index)
