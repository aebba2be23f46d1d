"""OpenVINO backend: the compiled model `build-engine --backend openvino` exported, run with
asynchronous infer requests.

An OpenVINO engine is the bytes of ``CompiledModel.export_model()`` for one device
(``CPU``; ``GPU``/``NPU`` on Intel hardware). OpenVINO keeps the transformed graph in
it but applies the performance hint, stream count, thread count and the precision of
the layers outside the Q/DQ pairs again at every ``import_model``, so those come from
the manifest (`load_properties`, shared with the builder): what runs is what the build
compiled and verified. OpenVINO's CPU default for those layers is bf16 on CPUs with
AVX512_BF16/AMX, which changes an fp32 model's numbers; edgeseg pins ``f32`` unless the
profile asks otherwise (precision lives in the ONNX file).

Streaming: `max_in_flight` infer requests, each started with ``start_async`` and
collected first in, first out, so frame k+1's preprocessing (and, with the THROUGHPUT
hint, its inference on a second stream) overlaps frame k's inference. ``infer`` in the
timings is the request's compute time (OpenVINO's own start-to-completion time of the
request, less the wait behind the previous request on a single stream); `infer()` is a
plain synchronous request, as raw OpenVINO code calls it.
OpenVINO is imported inside the functions, so importing this module never needs it.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.contract.manifest import EngineLoadError, EngineManifest, manifest_path
from edgeseg.contract.metadata import ModelMetadata, TensorSpec
from edgeseg.errors import EdgesegError
from edgeseg.runtime.backends.base import (
    Backend,
    BackendUnavailableError,
    InferResult,
    check_frames,
)
from edgeseg.runtime.ov_core import openvino_core

#: OpenVINO device names `build-engine --ov-device` accepts (GPU.N picks an Intel GPU)
OV_DEVICES = ("CPU", "GPU", "NPU", "AUTO")
HINTS = ("LATENCY", "THROUGHPUT")
INFERENCE_PRECISIONS = ("f32", "bf16", "f16")


def import_openvino() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailableError(
            f"OpenVINO is not installed ({exc}); pip install 'edgeseg[openvino]' "
            "(or build with --backend onnxruntime)") from None
    return openvino


def ov_error(exc: BaseException) -> str:
    """The informative line of an OpenVINO exception (they start with source locations)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith("Exception from ")]
    return (useful or lines or [type(exc).__name__])[0][:300]


def load_properties(device: str, *, hint: str | None, threads: int = 0,
                    streams: int | None = None, precision: str | None = None
                    ) -> dict[str, Any]:
    """The properties a build compiles with and every load passes again (a compiled blob
    does not keep them). Threads apply to the CPU only; ``None``/0 leaves OpenVINO's choice."""
    props: dict[str, Any] = {}
    if hint:
        props["PERFORMANCE_HINT"] = hint
    if precision:
        props["INFERENCE_PRECISION_HINT"] = precision
    if streams:
        props["NUM_STREAMS"] = int(streams)
    if threads and device.split(".")[0].upper() == "CPU":
        props["INFERENCE_NUM_THREADS"] = int(threads)
    return props


def port_spec(port: Any) -> TensorSpec:
    """A compiled model's input/output port as a TensorSpec (dynamic dims -> None)."""
    dtype = np.dtype(port.get_element_type().to_dtype()).name
    dims = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
    return TensorSpec(port.get_any_name(), dtype, dims)


@dataclass
class _Slot:
    """An infer request and when its current batch was started (perf_counter)."""

    request: Any
    started: float = 0.0


class OvBackend(Backend):
    name = "openvino"

    def __init__(self, engine_path: Path | None, manifest: EngineManifest | None,
                 metadata: ModelMetadata, compiled: Any, infer_requests: int = 2,
                 device: str = "CPU") -> None:
        spec_in = metadata.input if manifest is None else manifest.inputs[0]
        spec_out = metadata.output if manifest is None else manifest.outputs[0]
        names_in = [p.get_any_name() for p in compiled.inputs]
        names_out = [p.get_any_name() for p in compiled.outputs]
        if len(names_in) != 1 or names_in[0] != spec_in.name or spec_out.name not in names_out:
            where = engine_path or "model"
            raise EngineLoadError(f"{where}: graph I/O {names_in} -> {names_out} does not match "
                                  f"its {'manifest' if manifest else 'metadata'} "
                                  f"{spec_in.name} -> {spec_out.name}; rebuild it")
        # OpenVINO runs any size a dynamic dim allows: an optimisation profile is TensorRT's
        super().__init__(engine_path, manifest, metadata, replace(spec_in, profile={}), spec_out)
        self.compiled = compiled
        self.device = device
        self.output_port = compiled.outputs[names_out.index(spec_out.name)]
        self.max_in_flight = max(1, int(infer_requests))  # type: ignore[misc]
        # the streaming requests, and one for synchronous calls (no Python callback anywhere:
        # OpenVINO's own wrapper times each request, `InferRequest.latency`)
        self.requests = [compiled.create_infer_request() for _ in range(self.max_in_flight)]
        self.sync_request = compiled.create_infer_request()
        self.slots = [_Slot(r) for r in self.requests]
        self.idle: deque[_Slot] = deque(self.slots)
        self.queue: deque[_Slot] = deque()
        try:
            self.streams = int(compiled.get_property("NUM_STREAMS"))
        except Exception:  # noqa: BLE001 - a device without streams (NPU)
            self.streams = 1
        self.last_done = 0.0
        #: what this load runs with, as strings (precision as a profile spells it: f32)
        self.properties = {k: _property_text(compiled.get_property(k)) for k in
                           ("PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_PRECISION_HINT",
                            "INFERENCE_NUM_THREADS") if _has_property(compiled, k)}

    # --- opening -------------------------------------------------------------------------
    @classmethod
    def _open(cls, engine_path: Path, manifest: EngineManifest, *, device: int = 0,
              threads: int | None = None, infer_requests: int | None = None,
              verbose: bool = False) -> OvBackend:
        """``threads`` (INFERENCE_NUM_THREADS) and ``infer_requests`` override the manifest's
        (both are applied at load; the rest of the compiled settings are the build's)."""
        ov = import_openvino()
        build = manifest.build
        target = build.ov_device or "CPU"
        props = load_properties(target, hint=build.performance_hint, streams=build.streams,
                                threads=build.threads if threads is None else threads,
                                precision=build.inference_precision)
        if verbose:
            props["LOG_LEVEL"] = "LOG_INFO"
        try:
            compiled = openvino_core().import_model(engine_path.read_bytes(), target, props)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError with C++ traces
            raise EngineLoadError(f"{engine_path}: OpenVINO {ov.__version__} cannot load it on "
                                  f"{target} ({ov_error(exc)}). Rebuild: "
                                  f"{manifest.build_command}") from None
        wanted = build.inference_precision
        if wanted and _has_property(compiled, "INFERENCE_PRECISION_HINT"):
            got = _precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
            if got != wanted:
                raise EngineLoadError(f"{engine_path}: OpenVINO {target} runs it in {got}, the "
                                      f"build verified {wanted}. Rebuild: "
                                      f"{manifest.build_command}")
        metadata = manifest.model_metadata(str(manifest_path(engine_path)))
        requests = infer_requests if infer_requests else (build.infer_requests or 2)
        return cls(engine_path, manifest, metadata, compiled, requests, target)

    @classmethod
    def from_onnx(cls, onnx_path: str | Path, *, device: str = "CPU",
                  hint: str = "LATENCY", threads: int = 0, streams: int | None = None,
                  precision: str | None = "f32", infer_requests: int = 2) -> OvBackend:
        """Compile an exported ONNX file directly (no engine, no manifest; its metadata is
        used): quick checks and benchmarks."""
        ov = import_openvino()
        path = Path(onnx_path)
        if not path.is_file():
            raise EdgesegError(f"{path}: no such ONNX file")
        props = load_properties(device, hint=hint, threads=threads, streams=streams,
                                precision=precision)
        core = openvino_core()
        try:
            model = core.read_model(str(path))
            compiled = core.compile_model(model, device, props)
        except Exception as exc:  # noqa: BLE001
            raise EngineLoadError(f"{path}: OpenVINO {ov.__version__} cannot compile it for "
                                  f"{device} ({ov_error(exc)})") from None
        # OpenVINO's ONNX reader keeps metadata_props in rt_info: no onnx package needed
        info = model.get_rt_info()
        framework = info["framework"] if "framework" in info else {}
        framework = getattr(framework, "value", framework)  # an OVAny in some versions
        props_text = {k: str(getattr(v, "value", v)) for k, v in dict(framework).items()}
        metadata = ModelMetadata.from_props(props_text, str(path))
        return cls(None, None, metadata, compiled, infer_requests, device)

    # --- synchronous ---------------------------------------------------------------------
    def _infer(self, frames: np.ndarray) -> np.ndarray:
        if self.compiled is None:
            raise EdgesegError(f"{self!r} is closed")
        while self.queue:  # a synchronous call after streaming: finish what is queued first
            self.collect()
        return self.sync_request.infer({0: frames})[self.output_port]

    # --- streaming: submit / collect -----------------------------------------------------
    def submit(self, frames: np.ndarray) -> None:
        """Start an infer request on the batch (the frames are copied into it) and return."""
        if self.compiled is None:
            raise EdgesegError(f"{self!r} is closed")
        frames = check_frames(frames, self.input_spec)
        if not self.idle:
            raise EdgesegError(f"{self.max_in_flight} batches in flight; collect() first")
        slot = self.idle.popleft()
        request = slot.request
        try:
            tensor = request.get_input_tensor(0)
            if tuple(tensor.shape) == frames.shape:  # copy into the request's own buffer
                tensor.data[...] = frames
                slot.started = time.perf_counter()
                request.start_async()
            else:  # another batch/size (dynamic input): OpenVINO reshapes the request
                slot.started = time.perf_counter()
                request.start_async({0: frames}, share_inputs=False)
        except Exception as exc:  # noqa: BLE001
            self.idle.appendleft(slot)
            raise EdgesegError(f"{self.engine_path or 'model'}: OpenVINO could not start "
                               f"the request ({ov_error(exc)})") from None
        self.queue.append(slot)

    def collect(self) -> InferResult:
        if not self.queue:
            raise EdgesegError("collect() without a submitted batch")
        slot = self.queue.popleft()
        request = slot.request
        try:
            request.wait()
            output = np.array(request.get_tensor(self.output_port).data, copy=True)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError with C++ traces
            raise EdgesegError(f"{self.engine_path or 'model'}: OpenVINO inference failed "
                               f"({ov_error(exc)})") from None
        finally:
            self.idle.append(slot)
        # start_async -> completion, as OpenVINO's wrapper measured it (ms)
        latency = float(request.latency) / 1e3
        done = slot.started + latency
        # one stream runs requests one after another: a request's compute starts when the
        # previous one ends, so the wait in OpenVINO's queue is not counted as inference;
        # completions stamped out of order (a loaded host) fall back to the whole latency
        began = max(slot.started, self.last_done) if self.streams <= 1 else slot.started
        self.last_done = max(done, self.last_done)
        return InferResult(output, {"infer": (done - began if done > began else latency) * 1e3})

    @property
    def in_flight(self) -> int:
        return len(self.queue)

    def close(self) -> None:
        for slot in list(getattr(self, "queue", ())):
            try:
                slot.request.wait()
            except Exception:  # noqa: BLE001, S110 - closing: nothing to report to
                pass
        self.queue = deque()
        self.idle = deque()
        self.requests, self.slots = [], []
        self.sync_request = None
        self.compiled = None

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", {self.device}, {self.max_in_flight} requests)"


def _has_property(compiled: Any, name: str) -> bool:
    try:
        return name in compiled.get_property("SUPPORTED_PROPERTIES")
    except Exception:  # noqa: BLE001
        return False


def _property_text(value: Any) -> str:
    if hasattr(value, "get_type_name"):  # an element type
        return _precision_name(value)
    return str(getattr(value, "name", value))  # enums (PerformanceMode.LATENCY) by name


def _precision_name(value: Any) -> str:
    """OpenVINO's element type (``<Type: 'float32'>``, ``bf16``) as a profile spells it."""
    text = str(getattr(value, "get_type_name", lambda: value)()).lower()
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(text, text)
