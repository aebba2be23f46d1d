"""Runtime: manifests checked before loading, ORT backend parity, errors that name files,
a torch-free import, and TensorRT/CUDA paths where the hardware exists."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeseg.contract.manifest import (
    BuildOptions,
    DeviceInfo,
    EngineLoadError,
    EngineManifest,
    EngineMismatchError,
    ManifestError,
    manifest_path,
)
from edgeseg.contract.metadata import TensorSpec
from edgeseg.export.build_engine import build_engine
from edgeseg.export.profile import BuildProfile
from edgeseg.runtime.backends import InputShapeError, OrtBackend, open_backend
from edgeseg.runtime.backends.base import check_frames
from edgeseg.runtime.compat import MachineInfo, check_compatible, ensure_compatible
from tests.conftest import REPO
from tests.onnx_models import scene_frames
from tests.test_engine import ort_labels, tiny_models, trt_with_gpu

REBUILD = "edgeseg build-engine tiny.onnx -o tiny.ort.onnx --backend onnxruntime"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_models(tmp_path_factory)


@pytest.fixture
def engine(models: dict[str, Path], tmp_path: Path) -> Path:
    """A fresh ORT engine per test (tests edit its manifest/bytes)."""
    out = tmp_path / "tiny.ort.onnx"
    build_engine(models["fp32"], out, BuildProfile(backend="onnxruntime", threads=1), REBUILD)
    return out


def edit_manifest(engine: Path, **changes: object) -> None:
    path = manifest_path(engine)
    data = json.loads(path.read_text())
    for key, value in changes.items():
        node = data
        *parents, last = key.split("__")
        for part in parents:
            node = node[part]
        node[last] = value
    path.write_text(json.dumps(data))


# ------------------------------------------------------------------ ONNX Runtime backend


def test_ort_backend_matches_the_onnx(models: dict[str, Path], engine: Path) -> None:
    frames = scene_frames(4, seed=9)
    expected = ort_labels(models["fp32"], frames)
    assert (expected > 0).any()  # a non-trivial class map
    with open_backend(engine) as backend:
        assert isinstance(backend, OrtBackend)
        assert backend.metadata.label_space == "cityscapes19"
        assert (backend.input_spec.name, backend.input_spec.dtype) == ("frame", "uint8")
        assert backend.output_spec.name == "labels"
        got = np.stack([backend.infer(f) for f in frames])
    np.testing.assert_array_equal(got, expected)
    direct = OrtBackend.from_onnx(models["fp32"], intra_op_threads=1)
    np.testing.assert_array_equal(direct.infer(frames[0]), expected[0])
    assert direct.manifest is None and direct.metadata.precision == "fp32"


def test_ort_backend_dynamic_batch(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "dyn.ort.onnx"
    build_engine(models["dynamic"], out, BuildProfile(backend="onnxruntime", threads=1), "cmd")
    frames = scene_frames(3, seed=2)[:, 0]  # one batch of 3
    with OrtBackend.load(out) as backend:
        assert backend.input_spec.shape == [None, 64, 96, 3]
        labels = backend.infer(frames)
    assert labels.shape == (3, 64, 96) and labels.dtype == np.uint8


def test_input_checks_say_what_is_wrong(engine: Path) -> None:
    backend = OrtBackend.load(engine)
    frame = scene_frames(1)[0]
    with pytest.raises(InputShapeError, match="dtype float32.*takes uint8"):
        backend.infer(frame.astype(np.float32))
    with pytest.raises(InputShapeError, match=r"add a batch axis: frames\[None\]"):
        backend.infer(frame[0])
    with pytest.raises(InputShapeError, match=r"\[1,32,96,3\] does not fit 'frame' \[1,64,96,3\]"):
        backend.infer(frame[:, :32])
    spec = TensorSpec("frame", "uint8", [1, None, None, 3], "uint8-nhwc-bgr",
                      {"min": [1, 64, 64, 3], "opt": [1, 64, 96, 3], "max": [1, 128, 128, 3]})
    check_frames(frame, spec)
    with pytest.raises(InputShapeError, match=r"outside .*min \[1,64,64,3\] \.\. max "
                                              r"\[1,128,128,3\]"):
        check_frames(np.zeros((1, 64, 256, 3), np.uint8), spec)
    backend.close()
    with pytest.raises(Exception, match="closed"):
        backend.infer(frame)


# ------------------------------------------------------------------ manifest checks


def test_machine_detect_onnxruntime() -> None:
    import platform

    import onnxruntime

    machine = MachineInfo.detect("onnxruntime")
    assert machine.backend_version == onnxruntime.__version__
    assert machine.device is not None and machine.device.kind == "cpu"
    assert machine.device.arch == platform.machine() and machine.device.name


def test_mismatched_cpu_is_refused_with_both_sides(engine: Path) -> None:
    edit_manifest(engine, device__cpu_isa=["avx512f"], device__name="Xeon 9999")
    with pytest.raises(EngineMismatchError) as info:
        OrtBackend.load(engine)
    text = str(info.value)
    assert str(engine) in text and "Xeon 9999" in text and "avx512f" in text
    assert "this machine has ONNX Runtime" in text and REBUILD in text
    edit_manifest(engine, build__graph_optimization="basic")  # portable level: loads anywhere
    OrtBackend.load(engine, verify_hash=True).close()


def test_onnxruntime_version_difference_only_warns(engine: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    edit_manifest(engine, backend_version="1.0.0")
    with caplog.at_level(logging.WARNING, "edgeseg.runtime"):
        OrtBackend.load(engine).close()
    assert "engine saved by 1.0.0" in caplog.text


def test_onnx_hash_mismatch_is_refused(models: dict[str, Path], engine: Path) -> None:
    OrtBackend.load(engine, onnx_path=models["fp32"]).close()
    with pytest.raises(EngineMismatchError, match=r"ONNX: engine built from sha256 .*"
                                                  r"tiny-dynamic\.onnx has"):
        OrtBackend.load(engine, onnx_path=models["dynamic"])


def test_tensorrt_engine_on_a_machine_without_tensorrt(engine: Path) -> None:
    if trt_with_gpu():
        pytest.skip("TensorRT and a CUDA GPU are present")
    edit_manifest(engine, backend="tensorrt", backend_version="10.8.0",
                  device={"kind": "gpu", "name": "Orin", "compute_capability": "sm_87"})
    with pytest.raises(EngineMismatchError, match=r"engine built for TensorRT 10\.8\.0 on sm_87 "
                                                  r"\(Orin\), this machine has no TensorRT"):
        open_backend(engine)
    with pytest.raises(Exception, match="says it is a TensorRT engine, not ONNX Runtime"):
        open_backend(engine, backend="onnxruntime")


def _trt_manifest(**build: object) -> EngineManifest:
    return EngineManifest(
        backend="tensorrt", backend_version="10.8.0",
        device=DeviceInfo("gpu", "Orin", "sm_87", "aarch64"), precision="int8",
        inputs=[], outputs=[], onnx_sha256="0" * 64, engine_sha256="1" * 64,
        build_command="edgeseg build-engine m-int8.onnx -o m.engine --backend tensorrt",
        build=BuildOptions(**build))  # type: ignore[arg-type]


def _gpu(version: str, cc: str, name: str = "H100", arch: str = "aarch64") -> MachineInfo:
    return MachineInfo("tensorrt", version, DeviceInfo("gpu", name, cc, arch))


def test_tensorrt_compatibility_rules() -> None:
    plain = _trt_manifest()
    with pytest.raises(EngineMismatchError) as info:
        ensure_compatible(plain, _gpu("11.4.0", "sm_90", arch="x86_64"), "m.engine")
    text = str(info.value)
    assert ("engine built for TensorRT 10.8.0 on sm_87 (Orin), this machine has TensorRT 11.4.0 "
            "on sm_90 (H100)") in text
    assert "Rebuild it on this machine: edgeseg build-engine m-int8.onnx" in text
    assert [d.split(":")[0] for d in info.value.differences] == \
        ["TensorRT version", "platform", "compute capability"]
    assert check_compatible(plain, _gpu("10.8.0.43", "sm_87", "Orin")) == []
    assert check_compatible(plain, _gpu("10.8.1", "sm_87", "Orin"))  # patch differs
    assert ensure_compatible(plain, _gpu("10.8.0", "sm_87", "Orin NX"), "m.engine")  # warning
    versioned = _trt_manifest(version_compatible=True)
    assert check_compatible(versioned, _gpu("10.9.0", "sm_87")) == []
    assert check_compatible(versioned, _gpu("10.7.0", "sm_87"))
    assert check_compatible(versioned, _gpu("11.0.0", "sm_87")) == []  # 10 -> 11 is documented
    ampere = _trt_manifest(hardware_compatibility="ampere_plus")
    assert check_compatible(ampere, _gpu("10.8.0", "sm_90")) == []
    assert check_compatible(ampere, _gpu("10.8.0", "sm_75"))
    no_gpu = MachineInfo("tensorrt", "10.8.0", None, "no CUDA GPU 0 visible")
    assert "this machine has none visible" in check_compatible(plain, no_gpu)[0]


# ------------------------------------------------------------------ files that are wrong


def test_missing_manifest_and_engine(engine: Path) -> None:
    manifest_path(engine).unlink()
    with pytest.raises(ManifestError) as info:
        OrtBackend.load(engine)
    text = str(info.value)
    assert str(engine) in text and str(manifest_path(engine)) in text
    assert "edgeseg build-engine" in text
    with pytest.raises(EngineLoadError, match="nothere.engine: no such engine file"):
        open_backend(engine.with_name("nothere.engine"))
    # an ORT engine is an .onnx file too: without its manifest it is refused, not run as a
    # plain ONNX model with the CPU check skipped
    from edgeseg.runtime.predictor import EngineWithoutManifestWarning, load_backend

    with pytest.raises(ManifestError, match="manifest .* is missing") as info:
        load_backend(engine)
    assert f"edgeseg build-engine MODEL.onnx -o {engine}" in str(info.value)
    with pytest.warns(EngineWithoutManifestWarning, match="WITHOUT its manifest"):
        load_backend(engine, manifest_check=False, intra_op_threads=1).close()


def test_corrupt_engine_and_manifest(engine: Path) -> None:
    engine.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(EngineLoadError, match="does not match its manifest") as info:
        OrtBackend.load(engine)
    assert REBUILD in str(info.value)
    with pytest.raises(EngineLoadError, match=f"{engine.name}: ONNX Runtime .* cannot load it"
                                              ".*Rebuild: edgeseg build-engine"):
        OrtBackend.load(engine, verify_hash=False)
    manifest_path(engine).write_text("{not json")
    with pytest.raises(ManifestError, match=r"tiny\.ort\.onnx\.json: not valid JSON"):
        OrtBackend.load(engine)
    manifest_path(engine).write_text(json.dumps({"backend": "onnxruntime"}))
    with pytest.raises(ManifestError, match="not a valid engine manifest.*required key"):
        OrtBackend.load(engine)
    manifest_path(engine).write_text(json.dumps({"format_version": 99}))
    with pytest.raises(ManifestError, match="newer than this edgeseg"):
        OrtBackend.load(engine)


# ------------------------------------------------------------------ torch-free runtime

BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "onnx", "tensorrt", "torchvision"}:
            raise ImportError(f"blocked in this test: {name}")
sys.meta_path.insert(0, Block())
"""


def test_runtime_works_where_torch_and_onnx_cannot_import(engine: Path) -> None:
    code = BLOCKER + textwrap.dedent(f"""
        import numpy as np
        import edgeseg.runtime, edgeseg.contract.manifest, edgeseg.runtime.backends
        import edgeseg.runtime.compat, edgeseg.contract.metadata
        import edgeseg.runtime.backends.onnxruntime, edgeseg.runtime.backends.tensorrt
        import edgeseg.runtime.backends.cuda_memory
        from edgeseg.runtime.backends import open_backend
        from edgeseg.contract.manifest import read_manifest
        from edgeseg.runtime.compat import MachineInfo
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("the blocker did not block torch")
        MachineInfo.detect("tensorrt")
        assert read_manifest({str(engine)!r}).backend == "onnxruntime"
        with open_backend({str(engine)!r}) as b:
            out = b.infer(np.zeros((1, 64, 96, 3), np.uint8))
        assert out.shape == (1, 64, 96), out.shape
        bad = [m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "tensorrt")]
        assert not bad, bad
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# ------------------------------------------------------------------ TensorRT / CUDA


def _cuda_api() -> Any:
    """The installed CUDA binding with a GPU behind it, or skip the test."""
    from edgeseg.runtime.backends.cuda_memory import CudaUnavailableError, get_api

    try:
        api = get_api()
    except CudaUnavailableError as exc:
        pytest.skip(f"no CUDA GPU: {exc}")
    if api.device_count() == 0:
        pytest.skip("no CUDA GPU")
    return api


def test_cuda_memory_round_trip() -> None:
    api = _cuda_api()
    api.set_device(0)
    data = np.arange(1000, dtype=np.uint8)
    host, back = api.alloc_host(data.nbytes), api.alloc_host(data.nbytes)
    dev = api.alloc_device(data.nbytes)
    stream = api.create_stream()
    try:
        host.array[:] = data
        api.copy_to_device(dev, host, data.nbytes, stream)
        api.copy_to_host(back, dev, data.nbytes, stream)
        api.synchronize(stream)
        np.testing.assert_array_equal(back.array, data)
        assert api.stream_handle(stream) != 0  # never the default stream
        assert api.device_info(0).compute_capability.startswith("sm_")
    finally:
        api.free_device(dev)
        api.free_host(host)
        api.free_host(back)
        api.destroy_stream(stream)


def test_tensorrt_backend_refuses_out_of_profile_shapes(models: dict[str, Path],
                                                        tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT not installed")
    _cuda_api()
    from edgeseg.export.profile import ShapeRange
    from edgeseg.runtime.backends.tensorrt import TrtBackend

    out = tmp_path / "dyn.engine"
    profile = BuildProfile(backend="tensorrt",
                           shapes=ShapeRange([1, 64, 96, 3], [2, 64, 96, 3], [3, 64, 96, 3]))
    build_engine(models["dynamic"], out, profile, "cmd")
    frames = scene_frames(4, seed=3)[:, 0]
    with TrtBackend.load(out) as backend:
        assert backend.input_spec.profile["max"] == [3, 64, 96, 3]
        for n in (1, 3, 2):
            assert backend.infer(frames[:n]).shape == (n, 64, 96)
        with pytest.raises(InputShapeError, match="max \\[3,64,96,3\\]"):
            backend.infer(frames)


def _trt_gpu() -> None:
    pytest.importorskip("tensorrt", reason="TensorRT not installed")
    _cuda_api()


def test_tensorrt_cuda_graphs_follow_shape_changes(models: dict[str, Path],
                                                   tmp_path: Path) -> None:
    """A graph captured for one batch size must not replay for another (the context is
    replanned on a shape change): outputs with graphs equal those without, shape by shape."""
    _trt_gpu()
    from edgeseg.export.profile import ShapeRange
    from edgeseg.runtime.backends.tensorrt import TrtBackend

    out = tmp_path / "dyn.engine"
    profile = BuildProfile(backend="tensorrt",
                           shapes=ShapeRange([1, 64, 96, 3], [2, 64, 96, 3], [3, 64, 96, 3]))
    build_engine(models["dynamic"], out, profile, "cmd")
    frames = scene_frames(3, seed=4)[:, 0]
    sizes = [1, 1, 3, 3, 2, 1, 3]
    with TrtBackend.load(out) as plain:
        expected = [plain.infer(frames[:n]) for n in sizes]
    with TrtBackend.load(out, cuda_graphs=True) as graphed:
        got = [graphed.infer(frames[:n]) for n in sizes]
        stage = graphed.stage
        assert stage is not None and (stage.captures > 2 or stage.graphs.failures)
    for n, a, b in zip(sizes, expected, got, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=f"batch {n}")


def test_tensorrt_version_compatible_plan_needs_trust(models: dict[str, Path], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _trt_gpu()
    from edgeseg.runtime.backends.tensorrt import TRUST_ENV, TrtBackend

    monkeypatch.delenv(TRUST_ENV, raising=False)
    out = tmp_path / "vc.engine"
    build_engine(models["fp32"], out, BuildProfile(backend="tensorrt", version_compatible=True),
                 "cmd")
    with pytest.raises(EngineLoadError, match=f"{TRUST_ENV}=1"):
        TrtBackend.load(out)
    with TrtBackend.load(out, trust_engine_code=True) as backend:
        assert backend.infer(scene_frames(1)[0]).shape == (1, 64, 96)
