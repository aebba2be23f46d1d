"""GPU checks of everything edgeseg runs on a GPU without TensorRT (marker ``gpu``).

The CUDA layer (`edgeseg.runtime.backends.cuda_memory`, through cuda-python and pycuda
where installed): pinned host memory, device buffers, asynchronous copies both ways, events
and their timing, blocking-sync events, ordering across streams, graph capture and replay.
Then the runtime's double-buffered stage (`CudaStage`) end to end, CUDA graphs and input-
shape changes included. Every CUDA call is real; the one stand-in is the engine: a CuPy
kernel enqueued where TensorRT's ``execute_async_v3`` would be, so its outputs have a
NumPy reference.

Skipped without a CUDA GPU. ``bash benchmarks/gpu_check.sh`` installs what these need
(cuda-python, CuPy, pycuda if it builds), runs them and prints a summary; with
``EDGESEG_GPU_REPORT=FILE`` the measured numbers are written there as JSON.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from edgeseg.contract.manifest import EngineLoadError
from edgeseg.runtime.backends.cuda_memory import (
    CudaApi,
    CudaUnavailableError,
    GraphCaptureUnsupported,
    get_api,
)
from edgeseg.runtime.backends.tensorrt import CudaStage

pytestmark = pytest.mark.gpu

#: numbers the checks measured, written to $EDGESEG_GPU_REPORT at the end
MEASURED: dict[str, Any] = {}

#: the stand-in engine: labels = (B + G + R) % 19 per pixel; thread 0 first spins ``spin``
#: GPU clock cycles so a test can make the GPU busy for a known time
STAND_IN = r"""
extern "C" __global__ void stand_in(const unsigned char* frame, unsigned char* labels,
                                    long long pixels, long long spin) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (spin > 0 && i == 0) {
        long long start = clock64();
        while (clock64() - start < spin) {}
    }
    if (i < pixels) {
        int s = frame[3 * i] + frame[3 * i + 1] + frame[3 * i + 2];
        labels[i] = (unsigned char)(s % 19);
    }
}
"""
MAX_SHAPE = (4, 64, 96, 3)


def expected_labels(frames: np.ndarray) -> np.ndarray:
    return (frames.astype(np.int32).sum(-1) % 19).astype(np.uint8)


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    path = os.environ.get("EDGESEG_GPU_REPORT")
    if path and MEASURED:
        old = json.loads(open(path).read()) if os.path.isfile(path) else {}
        with open(path, "w") as f:
            json.dump({**old, **MEASURED}, f, indent=2, sort_keys=True)


@pytest.fixture(scope="module", params=["cuda-python", "pycuda"])
def api(request: pytest.FixtureRequest) -> CudaApi:
    try:
        binding = get_api(request.param)
    except CudaUnavailableError as exc:
        pytest.skip(f"no CUDA GPU through {request.param}: {exc}")
    binding.set_device(0)
    return binding


@pytest.fixture(scope="module")
def cp(api: CudaApi) -> Any:
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed (gpu_check.sh installs it)")
    try:
        cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - a CuPy wheel for another CUDA major
        pytest.skip(f"CuPy cannot reach the GPU: {exc}")
    return cupy


class Buffers:
    """Pinned in/out and device buffers of one size, freed by `close`."""

    def __init__(self, api: CudaApi, nbytes: int) -> None:
        self.api, self.nbytes = api, nbytes
        self.host_in, self.host_out = api.alloc_host(nbytes), api.alloc_host(nbytes)
        self.dev_in, self.dev_out = api.alloc_device(nbytes), api.alloc_device(nbytes)

    def close(self) -> None:
        for dev in (self.dev_in, self.dev_out):
            self.api.free_device(dev)
        for host in (self.host_in, self.host_out):
            self.api.free_host(host)


def device_array(cp: Any, ptr: int, nbytes: int, owner: object) -> Any:
    """A CuPy uint8 view of memory edgeseg allocated (no copy, no CuPy allocation)."""
    memory = cp.cuda.UnownedMemory(ptr, nbytes, owner)
    return cp.ndarray((nbytes,), dtype=cp.uint8, memptr=cp.cuda.MemoryPointer(memory, 0))


class KernelStandIn:
    """An `Executor` whose enqueue is one CuPy kernel on the stage's compute stream."""

    def __init__(self, cp: Any, sizes: dict[str, int], spin_cycles: int = 0) -> None:
        self.cp, self.sizes, self.spin = cp, sizes, spin_cycles
        self.kernel = cp.RawKernel(STAND_IN, "stand_in")
        self.shape: tuple[int, ...] = MAX_SHAPE
        self.arrays: dict[str, Any] = {}
        self.addresses: dict[str, int] = {}
        self.shape_changes = 0

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> None:
        self.shape, self.shape_changes = shape, self.shape_changes + 1

    def set_address(self, name: str, ptr: int) -> None:
        if self.addresses.get(name) != ptr:  # wrap outside any capture: CuPy queries the pointer
            self.arrays[name] = device_array(self.cp, ptr, self.sizes[name], self)
            self.addresses[name] = ptr

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shape if name == "frame" else self.shape[:-1]

    def enqueue(self, stream_handle: int) -> None:
        pixels = int(np.prod(self.shape[:-1]))
        with self.cp.cuda.ExternalStream(stream_handle):
            self.kernel(((pixels + 255) // 256,), (256,),
                        (self.arrays["frame"], self.arrays["labels"], np.int64(pixels),
                         np.int64(self.spin)))


def make_stage(api: CudaApi, cp: Any, *, cuda_graphs: bool = False, sync: str = "blocking",
               spin_cycles: int = 0) -> tuple[CudaStage, KernelStandIn]:
    tensors = {"frame": (np.dtype(np.uint8), MAX_SHAPE), "labels": (np.dtype(np.uint8),
                                                                    MAX_SHAPE[:-1])}
    sizes = {name: int(np.prod(shape)) for name, (_, shape) in tensors.items()}
    stand_in = KernelStandIn(cp, sizes, spin_cycles)
    stage = CudaStage(api, stand_in, tensors, "frame", "labels", MAX_SHAPE, dynamic=True,
                      cuda_graphs=cuda_graphs, sync=sync,  # type: ignore[arg-type]
                      label="stand-in")
    return stage, stand_in


def frames_of(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, *MAX_SHAPE[1:]), np.uint8)


def spin_cycles(cp: Any, seconds: float) -> int:
    khz = cp.cuda.Device(0).attributes.get("ClockRate") or 2_000_000  # kHz; 2 GHz if unknown
    return int(khz * 1000 * seconds)


# ------------------------------------------------------------------ the CUDA layer


def test_gpu_is_visible(api: CudaApi) -> None:
    gpu = api.device_info(0)
    assert api.device_count() >= 1 and gpu.compute_capability.startswith("sm_")
    MEASURED[f"{api.name}.gpu"] = f"{gpu.name} ({gpu.compute_capability})"
    if api.name == "cuda-python":
        assert get_api().name == "cuda-python"  # the first usable binding is preferred


def test_pinned_copies_both_ways(api: CudaApi) -> None:
    nbytes = 32 << 20
    buf = Buffers(api, nbytes)
    stream = api.create_stream()
    try:
        assert api.stream_handle(stream) != 0  # never the default stream
        data = np.random.default_rng(0).integers(0, 256, nbytes, np.uint8)
        buf.host_in.array[:] = data
        api.copy_to_device(buf.dev_in, buf.host_in, nbytes, stream)
        api.copy_to_host(buf.host_out, buf.dev_in, nbytes, stream)
        api.synchronize(stream)
        np.testing.assert_array_equal(buf.host_out.array, data)
        buf.host_out.array[:] = 0  # a partial copy moves exactly the bytes asked for
        api.copy_to_host(buf.host_out, buf.dev_in, 1000, stream)
        api.synchronize(stream)
        np.testing.assert_array_equal(buf.host_out.array[:1000], data[:1000])
        assert not buf.host_out.array[1000:].any()
    finally:
        api.destroy_stream(stream)
        buf.close()


def test_events_time_the_copies(api: CudaApi) -> None:
    nbytes = 64 << 20
    buf = Buffers(api, nbytes)
    stream = api.create_stream()
    start, end = api.create_event(), api.create_event(blocking=True)
    try:
        api.record_event(start, stream)
        for _ in range(4):
            api.copy_to_device(buf.dev_in, buf.host_in, nbytes, stream)
        api.record_event(end, stream)
        api.event_synchronize(end)
        ms = api.elapsed_ms(start, end)
        gbps = 4 * nbytes / (ms / 1e3) / 1e9
        MEASURED[f"{api.name}.h2d_GBps"] = round(gbps, 1)
        assert ms > 0 and gbps > 0.5, f"pinned H2D at {gbps:.2f} GB/s"
    finally:
        for event in (start, end):
            api.destroy_event(event)
        api.destroy_stream(stream)
        buf.close()


@pytest.mark.parametrize("blocking", [True, False], ids=["blocking", "spin"])
def test_blocking_sync_sleeps_while_the_gpu_works(api: CudaApi, cp: Any,
                                                  blocking: bool) -> None:
    stage, _ = make_stage(api, cp, sync="blocking" if blocking else "spin",
                          spin_cycles=spin_cycles(cp, 0.3))
    try:
        frames = frames_of(1, 0)
        stage.submit(frames)
        wall, cpu = time.perf_counter(), time.process_time()
        result = stage.collect()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        np.testing.assert_array_equal(result.output, expected_labels(frames))
        MEASURED[f"{api.name}.wait_cpu_share.{'blocking' if blocking else 'spin'}"] = \
            round(cpu / wall, 2)
        assert wall > 0.15, f"the GPU was busy for {wall:.3f} s only"
        if blocking:  # the waiting thread sleeps; a spinning one burns ~100 % of a core
            assert cpu < 0.5 * wall, f"blocking wait used {cpu:.3f} s CPU in {wall:.3f} s"
    finally:
        stage.close()


def test_stream_ordering_across_streams(api: CudaApi, cp: Any) -> None:
    """A kernel on the compute stream sees the copy stream's data only through the event."""
    nbytes = 64 << 20
    buf = Buffers(api, nbytes)
    copy, compute = api.create_stream(), api.create_stream()
    copied = api.create_event()
    try:
        data = np.random.default_rng(1).integers(0, 255, nbytes, np.uint8)
        buf.host_in.array[:] = data
        src = device_array(cp, buf.dev_in.ptr, nbytes, buf)
        dst = device_array(cp, buf.dev_out.ptr, nbytes, buf)
        src.fill(0)
        cp.cuda.Device(0).synchronize()
        api.copy_to_device(buf.dev_in, buf.host_in, nbytes, copy)
        api.record_event(copied, copy)
        api.stream_wait_event(compute, copied)
        with cp.cuda.ExternalStream(api.stream_handle(compute)):
            cp.add(src, 1, out=dst)
        api.copy_to_host(buf.host_out, buf.dev_out, nbytes, compute)
        api.synchronize(compute)
        np.testing.assert_array_equal(buf.host_out.array, data + 1)
    finally:
        api.destroy_event(copied)
        for stream in (copy, compute):
            api.destroy_stream(stream)
        buf.close()


def test_graph_capture_and_replay(api: CudaApi, cp: Any) -> None:
    """Copy in, kernel, copy out captured once and replayed on new host data."""
    nbytes = 1 << 20
    buf = Buffers(api, nbytes)
    stream = api.create_stream()
    graph = None
    try:
        src = device_array(cp, buf.dev_in.ptr, nbytes, buf)
        dst = device_array(cp, buf.dev_out.ptr, nbytes, buf)
        with cp.cuda.ExternalStream(api.stream_handle(stream)):
            cp.add(src, 1, out=dst)  # compile and load the kernel before capturing
        api.synchronize(stream)
        try:
            api.begin_capture(stream)
        except GraphCaptureUnsupported:
            pytest.skip(f"{api.name} has no CUDA graphs here (the stage falls back to a "
                        "plain enqueue, checked below)")
        api.copy_to_device(buf.dev_in, buf.host_in, nbytes, stream)
        with cp.cuda.ExternalStream(api.stream_handle(stream)):
            cp.add(src, 1, out=dst)
        api.copy_to_host(buf.host_out, buf.dev_out, nbytes, stream)
        graph = api.end_capture(stream)
        for seed in range(3):
            data = np.random.default_rng(seed).integers(0, 255, nbytes, np.uint8)
            buf.host_in.array[:] = data
            api.launch_graph(graph, stream)
            api.synchronize(stream)
            np.testing.assert_array_equal(buf.host_out.array, data + 1)
    finally:
        if graph is not None:
            api.destroy_graph(graph)
        api.destroy_stream(stream)
        buf.close()


# ------------------------------------------------------------------ the double-buffered stage


@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["enqueue", "graphs"])
def test_stage_streams_batches_in_order(api: CudaApi, cp: Any, cuda_graphs: bool) -> None:
    stage, _ = make_stage(api, cp, cuda_graphs=cuda_graphs)
    try:
        batches = [frames_of(2, seed) for seed in range(8)]
        outputs, timings = [], []
        stage.submit(batches[0])
        for nxt in batches[1:]:
            stage.submit(nxt)  # frame k+1 copies in while frame k runs
            assert stage.in_flight == 2
            with pytest.raises(EngineLoadError, match="in flight"):
                stage.submit(nxt)
            result = stage.collect()
            outputs.append(result.output)
            timings.append(result.timings)
        result = stage.collect()
        outputs.append(result.output)
        timings.append(result.timings)
        for frames, labels in zip(batches, outputs, strict=True):
            np.testing.assert_array_equal(labels, expected_labels(frames))
        assert all(t["h2d"] > 0 and t["infer"] > 0 and t["d2h"] >= 0 for t in timings)
        mode = "graphs" if cuda_graphs else "enqueue"
        MEASURED[f"{api.name}.stage.{mode}.infer_ms"] = round(
            float(np.median([t["infer"] for t in timings])), 3)
        if cuda_graphs and api.name == "cuda-python":
            assert stage.captures == 2  # one graph per slot, replayed afterwards
    finally:
        stage.close()


def test_stage_recaptures_graphs_after_a_shape_change(api: CudaApi, cp: Any) -> None:
    """A graph replays the kernel arguments of its shape: a stale one would label only the
    first batch of a larger input. Each shape change must drop the graphs and capture again."""
    stage, stand_in = make_stage(api, cp, cuda_graphs=True)
    try:
        sequence = [1, 1, 1, 3, 3, 3, 1, 1, 4, 2]
        for i, batch in enumerate(sequence):
            frames = frames_of(batch, 100 + i)
            stage.submit(frames)
            labels = stage.collect().output
            assert labels.shape == (batch, *MAX_SHAPE[1:-1])
            np.testing.assert_array_equal(labels, expected_labels(frames), err_msg=f"#{i}")
        if api.name == "cuda-python":
            # shapes 1, 3, 1: both slots used -> 2 captures each; 4 and 2: one batch each
            assert stage.captures == 2 + 2 + 2 + 1 + 1
        interleaved = [frames_of(2, 7), frames_of(3, 8)]  # a shape change with a batch in flight
        for frames in interleaved:
            stage.submit(frames)
        for frames in interleaved:
            np.testing.assert_array_equal(stage.collect().output, expected_labels(frames))
        assert stand_in.shape_changes >= 6
    finally:
        stage.close()
    assert stage.slots == [] and stage.graphs.graphs == {}
