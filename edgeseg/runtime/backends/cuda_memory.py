"""Pinned host buffers, device buffers, streams and GPU queries over the installed CUDA binding.

TensorRT's Python API owns no memory: it takes raw device pointers and a stream
handle. The targets have one of two bindings: cuda-python (wheels for x86_64 and
aarch64; ``from cuda.bindings import runtime``, every call returns ``(err, ...)``)
or pycuda (built from source on JetPack). `CudaApi` hides which one is present, so
the TensorRT backend is written once. pycuda is used through its *primary*
context (``pycuda.autoprimaryctx``), never ``autoinit``, whose private context
breaks TensorRT in the same process. Nothing is imported at module import time.

A binding counts as usable only when it can talk to a driver and sees a GPU
(`CudaApi.probe`): cuda-python imports fine on a machine whose driver is too old
for it (a CUDA-13 wheel on a CUDA-12 driver) and then fails every call, so
`get_api` probes each binding in turn and reports the CUDA error name and code of
each one that failed, instead of a bare "no GPU".
"""

from __future__ import annotations

import ctypes
import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeseg.errors import EdgesegError

INSTALL_HINT = ("install a CUDA binding that matches the driver: `pip install "
                "'edgeseg[trt-cu12]'` (cuda-python 12.x, any driver from CUDA 12 on) or "
                "'edgeseg[trt-cu13]' (cuda-python 13.x, driver >= 580); on a Jetson use "
                "JetPack's TensorRT with `pip install pycuda` or the cuda-python of JetPack's "
                "CUDA")


def cuda_version_text(version: int) -> str:
    """CUDA's integer version (1000 * major + 10 * minor, as cudaDriverGetVersion returns
    it) as ``12.4``."""
    return f"{version // 1000}.{version % 1000 // 10}"


def cuda_error_text(name: str, code: int, description: str = "") -> str:
    """One CUDA error as ``cudaErrorInsufficientDriver (35): <what CUDA says>``: the name and
    code are what search engines and NVIDIA's docs know it by."""
    return f"{name} ({code})" + (f": {description}" if description else "")


def driver_hint(driver: int | None, runtime: int | None, binding: str = "cuda-python") -> str:
    """Why the driver cannot serve ``binding`` and what to install, or '' when it can.

    A CUDA runtime of major version M needs a driver that supports CUDA M.x
    (minor-version compatibility covers the minors), so only the majors compare.
    """
    if driver is None or runtime is None:
        return ""
    if driver == 0:
        return "; no NVIDIA driver is installed (install the GPU driver, or run on the CPU)"
    if driver // 1000 >= runtime // 1000:
        return ""
    major = driver // 1000
    extra = f"'edgeseg[trt-cu{major}]'" if major in (12, 13) else "a CUDA binding for it"
    return (f"; the driver supports CUDA {cuda_version_text(driver)} but {binding} is built "
            f"for CUDA {cuda_version_text(runtime)}: install {extra} (cuda-python {major}.x, "
            f"tensorrt-cu{major}) or update the driver (CUDA 13 needs driver >= 580)")


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

    def probe(self) -> None:
        """Raise `CudaUnavailableError` (saying why) unless a driver answers and sees a GPU;
        `get_api` moves on to the next binding then."""
        if self.device_count() < 1:
            raise CudaUnavailableError(f"{self.name}: the driver sees no CUDA GPU")

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
    def create_event(self, blocking: bool = False) -> Any:
        """A timing event. ``blocking``: a host thread waiting on it (`event_synchronize`)
        sleeps until the GPU signals it instead of spinning on a CPU core (the default
        event's busy-wait costs a whole core on a Jetson for the length of the inference)."""

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

    def error_text(self, err: Any) -> str:
        """``cudaErrorNoDevice (100): no CUDA-capable device is detected``."""
        def text(result: Any) -> str:
            value = result[1] if isinstance(result, tuple) else result
            return value.decode(errors="replace") if isinstance(value, bytes) else str(value)

        name = getattr(err, "name", "") or text(self.rt.cudaGetErrorName(err))
        return cuda_error_text(name, int(err), text(self.rt.cudaGetErrorString(err)))

    def _versions(self) -> tuple[int | None, int | None]:
        """(the driver's CUDA version, the one this cuda-python is built for)."""
        def version(result: Any) -> int | None:
            err, *rest = result
            return int(rest[0]) if err == self.rt.cudaError_t.cudaSuccess and rest else None

        try:
            return (version(self.rt.cudaDriverGetVersion()),
                    version(self.rt.cudaRuntimeGetVersion()))
        except Exception:  # noqa: BLE001 - only a hint: never hide the error it explains
            return None, None

    def _call(self, what: str, result: Any) -> Any:
        """Check the ``(err, ...)`` tuple every cuda-python call returns; return the rest."""
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            raise CudaError(f"{what} failed: {self.error_text(err)}")
        return rest[0] if len(rest) == 1 else tuple(rest)

    def device_count(self) -> int:
        """The GPUs the driver sees; a failed query (no driver, a driver too old for this
        cuda-python) raises `CudaUnavailableError` with the CUDA error and the fix."""
        err, count = self.rt.cudaGetDeviceCount()
        if err != self.rt.cudaError_t.cudaSuccess:
            raise CudaUnavailableError(f"cuda-python: cudaGetDeviceCount failed: "
                                       f"{self.error_text(err)}{driver_hint(*self._versions())}")
        return int(count)

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

    def create_event(self, blocking: bool = False) -> Any:
        flags = self.rt.cudaEventBlockingSync if blocking else self.rt.cudaEventDefault
        return self._call("cudaEventCreateWithFlags", self.rt.cudaEventCreateWithFlags(flags))

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

    def create_event(self, blocking: bool = False) -> Any:
        self._context()
        return self.drv.Event(self.drv.event_flags.BLOCKING_SYNC if blocking else 0)

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


def first_usable(candidates: Sequence[tuple[str, Callable[[], CudaApi]]]) -> CudaApi:
    """The first candidate that constructs *and* probes (a driver answers, a GPU is seen).

    An import that works is not enough: cuda-python imports on a driver too old for
    it and only fails at the first call, which must not hide a pycuda that works.
    Every failure is kept, with its CUDA error name and code, for the final message.
    """
    errors = []
    for name, factory in candidates:
        try:
            api = factory()
            api.probe()
            return api
        except Exception as exc:  # ImportError, cuInit failing, a driver/runtime mismatch
            text = str(exc)
            errors.append(text if text.startswith(name) else f"{name}: {text}")
    raise CudaUnavailableError(f"no usable CUDA binding ({'; '.join(errors)}); {INSTALL_HINT}")


@functools.cache
def get_api(prefer: str | None = None) -> CudaApi:
    """The first usable binding (cuda-python, then pycuda), or ``prefer`` only."""
    names = [prefer] if prefer else list(BINDINGS)
    for name in names:
        if name not in BINDINGS:
            raise CudaUnavailableError(f"unknown CUDA binding {name!r}; use one of {list(BINDINGS)}")
    return first_usable([(name, BINDINGS[name]) for name in names])


def find_gpu(index: int = 0) -> GpuInfo:
    """GPU ``index`` as the installed binding sees it; raises saying why there is none."""
    api = get_api()
    count = api.device_count()
    if count <= index:
        raise CudaUnavailableError(
            f"no CUDA GPU {index} visible ({count} found through {api.name}; "
            "check CUDA_VISIBLE_DEVICES)")
    return api.device_info(index)
