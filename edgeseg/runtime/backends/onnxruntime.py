"""ONNX Runtime backend: the CPU target (and CUDA/TensorRT execution providers when asked).

An ONNX Runtime "engine" is the model `build-engine` optimised offline for the
build CPU (``optimized_model_filepath``), so it is loaded with graph
optimisations off: startup is faster and what runs is exactly what was built
and verified. `OrtBackend.from_onnx` runs a plain exported ONNX file (fp32,
fp16 or int8 Q/DQ) without an engine, for parity checks and quick CPU runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgeseg.contract.manifest import EngineLoadError, EngineManifest, manifest_path
from edgeseg.contract.metadata import ModelMetadata
from edgeseg.errors import EdgesegError
from edgeseg.runtime.backends.base import Backend, BackendUnavailableError

GraphOptimization = Literal["disable", "basic", "extended", "layout", "all"]
#: short provider names accepted from users -> ONNX Runtime execution provider names
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider"}
_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
           "extended": "ORT_ENABLE_EXTENDED", "layout": "ORT_ENABLE_LAYOUT",
           "all": "ORT_ENABLE_ALL"}


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError(
            f"ONNX Runtime is not installed ({exc}); pip install onnxruntime") from None
    return onnxruntime


def session_options(graph_optimization: GraphOptimization = "all", *, intra_op_threads: int = 0,
                    inter_op_threads: int = 0, verbose: bool = False,
                    optimized_model_path: str | Path | None = None, spin: bool = True) -> Any:
    """SessionOptions shared by the runtime and the engine builder (errors-only log by default).

    ``spin=False`` stops idle intra-op threads from busy-waiting between ops: slower alone, but
    on a small CPU it leaves cycles for the stream's decode, overlay and encode threads."""
    ort = import_onnxruntime()
    opts = ort.SessionOptions()
    level = getattr(ort.GraphOptimizationLevel, _LEVELS[graph_optimization], None)
    if level is None:  # ORT_ENABLE_LAYOUT is recent
        raise BackendUnavailableError(f"graph optimisation {graph_optimization!r} needs a newer "
                                      f"onnxruntime than {ort.__version__}")
    opts.graph_optimization_level = level
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = inter_op_threads
    opts.log_severity_level = 0 if verbose else 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if optimized_model_path is not None:
        opts.optimized_model_filepath = str(optimized_model_path)
    return opts


def resolve_providers(names: Sequence[str] | None, device: int = 0) -> list[Any]:
    """User provider names (cpu, cuda, tensorrt or full EP names) -> ORT's list, CPU last."""
    ort = import_onnxruntime()
    available = ort.get_available_providers()
    result: list[Any] = []
    for name in names or ["cpu"]:
        full = PROVIDERS.get(name.lower(), name)
        if full not in available:
            raise BackendUnavailableError(
                f"execution provider {name!r} ({full}) is not in this onnxruntime build "
                f"(available: {', '.join(available)}); GPU providers need onnxruntime-gpu")
        result.append(full if full == PROVIDERS["cpu"] else (full, {"device_id": device}))
    if PROVIDERS["cpu"] not in result:
        result.append(PROVIDERS["cpu"])  # fallback for ops the GPU provider lacks
    return result


def create_session(model: str | Path | bytes, options: Any | None = None,
                   providers: list[Any] | None = None, *, source: str | Path | None = None
                   ) -> Any:
    """The one place an ONNX Runtime InferenceSession is made, so every caller gets the same
    options (errors-only log, `session_options` defaults), CPU as the fallback provider and
    loader errors as one line naming the file.

    ``model`` is a path or a serialised ModelProto (``source`` then names it in errors).
    """
    ort = import_onnxruntime()
    name = source or ("in-memory model" if isinstance(model, bytes) else model)
    data = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(data, options if options is not None else session_options(),
                                    providers=providers or [PROVIDERS["cpu"]])
    except Exception as exc:  # ORT raises Fail/InvalidProtobuf/NotImplemented/... from pybind
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EngineLoadError(f"{name}: ONNX Runtime {ort.__version__} cannot load it: "
                              f"{first}") from None


class OrtBackend(Backend):
    name = "onnxruntime"

    def __init__(self, engine_path: Path | None, manifest: EngineManifest | None,
                 metadata: ModelMetadata, session: Any) -> None:
        inputs, outputs = session.get_inputs(), session.get_outputs()
        spec_in = metadata.input if manifest is None else manifest.inputs[0]
        spec_out = metadata.output if manifest is None else manifest.outputs[0]
        if (inputs[0].name, outputs[0].name) != (spec_in.name, spec_out.name):
            raise EngineLoadError(
                f"{engine_path or 'model'}: graph I/O {inputs[0].name} -> {outputs[0].name} "
                f"does not match its metadata {spec_in.name} -> {spec_out.name}")
        # ONNX Runtime runs any size: an optimisation profile is TensorRT's limit, not ours
        super().__init__(engine_path, manifest, metadata, replace(spec_in, profile={}), spec_out)
        self.session = session
        self.providers: list[str] = session.get_providers()

    @classmethod
    def _open(cls, engine_path: Path, manifest: EngineManifest, *, device: int = 0,
              providers: Sequence[str] | None = None, intra_op_threads: int | None = None,
              inter_op_threads: int = 0, verbose: bool = False, spin: bool = True
              ) -> OrtBackend:
        threads = manifest.build.threads if intra_op_threads is None else intra_op_threads
        opts = session_options("disable", intra_op_threads=threads,
                               inter_op_threads=inter_op_threads, verbose=verbose, spin=spin)
        try:
            session = create_session(engine_path, opts, resolve_providers(providers, device))
        except EngineLoadError as exc:
            raise EngineLoadError(f"{exc}. Rebuild: {manifest.build_command}") from None
        metadata = manifest.model_metadata(str(manifest_path(engine_path)))
        return cls(engine_path, manifest, metadata, session)

    @classmethod
    def from_onnx(cls, onnx_path: str | Path, *, providers: Sequence[str] | None = None,
                  graph_optimization: GraphOptimization = "all", intra_op_threads: int = 0,
                  inter_op_threads: int = 0, verbose: bool = False, device: int = 0,
                  spin: bool = True) -> OrtBackend:
        """Run an exported ONNX file directly (no engine, no manifest; its metadata is used)."""
        path = Path(onnx_path)
        if not path.is_file():
            raise EdgesegError(f"{path}: no such ONNX file")
        opts = session_options(graph_optimization, intra_op_threads=intra_op_threads,
                               inter_op_threads=inter_op_threads, verbose=verbose, spin=spin)
        session = create_session(path, opts, resolve_providers(providers, device))
        props = session.get_modelmeta().custom_metadata_map
        return cls(None, None, ModelMetadata.from_props(props, str(path)), session)

    def _infer(self, frames: np.ndarray) -> np.ndarray:
        if self.session is None:
            raise EdgesegError(f"{self!r} is closed")
        return self.session.run([self.output_spec.name], {self.input_spec.name: frames})[0]

    def close(self) -> None:
        self.session = None
