"""ONNX -> ONNX Runtime "engine": the model optimised offline for this CPU, then verified.

ONNX Runtime optimises a graph at every session start; doing it once at build
time (``SessionOptions.optimized_model_filepath``) makes vehicle start-up fast
and freezes what runs, so it can be checked like a TensorRT plan. At levels
``layout``/``all`` the saved model holds CPU-specific fused kernels and layouts
(NCHWc blocks sized for AVX2 or AVX-512): that is the point of a CPU engine, and
why the manifest records the CPU's features and refuses another CPU. fp32 and
int8 Q/DQ graphs are handled alike (Q/DQ pairs fuse into quantised kernels).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeseg.contract.manifest import CPU_SPECIFIC_LEVELS, EngineLoadError
from edgeseg.contract.metadata import ModelMetadata, TensorSpec
from edgeseg.export.profile import (
    BuildProfile,
    BuiltEngine,
    EngineBuildError,
    say,
    verify_engine_io,
)
from edgeseg.runtime.backends.onnxruntime import (
    create_session,
    import_onnxruntime,
    session_options,
)
from edgeseg.runtime.compat import MachineInfo

CPU = ["CPUExecutionProvider"]
_ORT_TYPES = {"float": "float32", "double": "float64"}


def _spec(value: Any) -> TensorSpec:
    """An ORT NodeArg (``tensor(uint8)``, dims int/str/None) as a TensorSpec."""
    elem = value.type.removeprefix("tensor(").removesuffix(")")
    dims = [d if isinstance(d, int) and d >= 0 else None for d in value.shape]
    return TensorSpec(value.name, _ORT_TYPES.get(elem, elem), dims)


def build_onnxruntime(onnx_path: Path, engine_path: Path, meta: ModelMetadata,
                      profile: BuildProfile, verbose: bool = False, device: int = 0
                      ) -> BuiltEngine:
    """Save ``onnx_path`` optimised at ``profile.graph_optimization`` to ``engine_path``;
    reload the saved file and run one frame through it."""
    ort = import_onnxruntime()
    level = profile.graph_optimization
    say(f"optimising for this CPU with ONNX Runtime {ort.__version__} (level {level})")
    opts = session_options(level, intra_op_threads=profile.threads, verbose=verbose,
                           optimized_model_path=engine_path)
    try:
        create_session(onnx_path, opts, CPU)
        if not engine_path.is_file() or engine_path.stat().st_size == 0:
            raise EngineLoadError(f"{onnx_path}: ONNX Runtime saved no optimised model")
        session = create_session(engine_path, session_options(
            "disable", intra_op_threads=profile.threads, verbose=verbose), CPU)
    except EngineLoadError as exc:
        raise EngineBuildError(str(exc)) from None
    inputs = [_spec(v) for v in session.get_inputs()]
    outputs = [_spec(v) for v in session.get_outputs()]
    verify_engine_io(onnx_path, engine_path, meta, profile, inputs, outputs,
                     lambda frame: session.run([outputs[0].name], {inputs[0].name: frame})[0])
    notes = []
    if level in CPU_SPECIFIC_LEVELS:
        notes.append(f"ONNX Runtime level {level}: the saved model may hold fused kernels and "
                     "layouts specific to this CPU's features; it loads only on the same CPU "
                     "architecture and features (cpu_isa)")
    device = MachineInfo.detect("onnxruntime").device
    assert device is not None  # always set for a CPU backend
    return BuiltEngine(ort.__version__, device, inputs, outputs, notes=notes)
