"""build-engine: profiles, precision checks, ORT engines + manifests, atomic failure, inspect.

TensorRT builds run only where TensorRT and a CUDA GPU exist; everything else
runs on CPU against small real ONNX models (tests/onnx_models.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeseg.config import ConfigError, from_dict, load_config, to_dict
from edgeseg.contract.manifest import manifest_path, read_manifest
from edgeseg.contract.metadata import MetadataError, metadata_of, set_metadata
from edgeseg.export import build_cli, inspect_cli
from edgeseg.export.build_engine import PrecisionMismatchError, build_engine
from edgeseg.export.profile import BuildProfile, EngineBuildError, load_profile
from edgeseg.runtime.backends.onnxruntime import create_session
from edgeseg.runtime.compat import MachineInfo
from tests.conftest import REPO

PROFILES = sorted((REPO / "export").glob("*.yaml"))
CPU = BuildProfile(backend="onnxruntime", threads=1)
_MODELS: dict[str, Path] = {}
CALIB_SHA = "ab" * 32


def tiny_models(factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Session-cached tiny ONNX files: ``fp32`` (trained, static 1x64x96), ``dynamic``
    (untrained, dynamic batch) and ``int8`` (Q/DQ of fp32, onnxruntime flavour)."""
    if not _MODELS:
        from tests.onnx_models import export_tiny

        root = factory.mktemp("tiny_onnx")
        _MODELS["fp32"] = export_tiny(root / "tiny.onnx", train_steps=15)
        _MODELS["dynamic"] = export_tiny(root / "tiny-dynamic.onnx", dynamic_batch=True)
        _MODELS["int8"] = quantize_ort_flavour(_MODELS["fp32"], root / "tiny-int8.onnx")
    return _MODELS


def quantize_ort_flavour(src: Path, dst: Path) -> Path:
    """u8-activation Q/DQ with ONNX Runtime's quantiser; metadata says int8."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from tests.onnx_models import scene_frames

    class Frames(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"frame": f} for f in scene_frames(4, seed=1)])

        def get_next(self) -> dict | None:
            return next(self.items, None)

    quantize_static(str(src), str(dst), Frames(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=True)
    model = onnx.load(str(dst))
    meta = metadata_of(model)
    meta.precision = "int8"  # and what `edgeseg quantize` records about the calibration
    meta.extra["calibration"] = {"method": "minmax", "flavour": "onnxruntime",
                                 "frames_sha256": CALIB_SHA}
    set_metadata(model, meta)
    onnx.save(model, str(dst))
    return dst


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_models(tmp_path_factory)


def ort_labels(model: Path, frames: np.ndarray) -> np.ndarray:
    sess = create_session(model)
    return np.stack([sess.run(None, {"frame": f})[0] for f in frames])


def trt_with_gpu() -> bool:
    machine = MachineInfo.detect("tensorrt")
    return bool(machine.backend_version and machine.device)


def run_cli(module: object, argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)  # type: ignore[attr-defined]
    return module.run(parser.parse_args(argv))  # type: ignore[attr-defined]


# ------------------------------------------------------------------ profiles


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.name)
def test_shipped_profiles_load(path: Path) -> None:
    profile = load_config(BuildProfile, path)
    assert profile.description
    assert from_dict(BuildProfile, to_dict(profile)) == profile
    if path.name.startswith("cpu-openvino"):
        assert profile.backend == "openvino" and profile.ov_device == "CPU"
    elif path.name.startswith("cpu-"):
        assert profile.backend == "onnxruntime"
    else:
        assert profile.backend == "tensorrt" and profile.shapes is not None
    assert profile.precision in path.stem


def test_profiles_folder_has_every_target() -> None:
    names = {p.stem for p in PROFILES}
    assert {"jetson-orin-int8", "jetson-orin-fp16", "jetson-orin-dla-int8", "desktop-fp16",
            "desktop-int8", "cpu-fp32", "cpu-int8", "cpu-auto"} <= names
    assert (REPO / "export" / "README.md").is_file()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("workspace: 512\n", r"unknown key\(s\) workspace; valid keys"),
        ("calibration:\n  frame: 10\n", r"calibration\.frame"),
        ("opt_level: 7\n", "opt_level must be in 0..5"),
        ("precision: int4\n", r"precision: 'int4' matches none|int4"),
        ("dla_core: 0\nshapes: {min: [1,8,8,3], opt: [1,8,8,3], max: [2,8,8,3]}\n",
         "DLA needs static shapes"),
        ("shapes: {min: [1,8,8,3], opt: [1,4,8,3], max: [1,8,8,3]}\n", "min <= opt <= max"),
    ],
)
def test_bad_profiles_are_rejected(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(BuildProfile, path)
    assert str(path) in str(info.value)


def test_flags_override_profile_keys() -> None:
    base = load_profile(REPO / "export" / "cpu-int8.yaml")
    over = load_profile(REPO / "export" / "cpu-int8.yaml", {"threads": 2, "precision": None,
                                                            "graph_optimization": "basic"})
    assert (base.threads, over.threads) == (0, 2)
    assert over.precision == base.precision == "int8"
    assert over.graph_optimization == "basic" and over.calibration == base.calibration
    with pytest.raises(ConfigError, match="opt_level"):
        load_profile(None, {"opt_level": 9})


# ------------------------------------------------------------------ ONNX Runtime engines


def test_ort_build_writes_engine_and_manifest(models: dict[str, Path], tmp_path: Path) -> None:
    import onnxruntime as ort

    out = tmp_path / "tiny.ort.onnx"
    manifest = build_engine(models["fp32"], out, CPU, "edgeseg build-engine X -o Y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.ort.onnx", "tiny.ort.onnx.json"]
    on_disk = read_manifest(out)
    assert on_disk == manifest
    assert manifest.backend == "onnxruntime" and manifest.backend_version == ort.__version__
    assert manifest.precision == "fp32" and manifest.device.kind == "cpu"
    assert manifest.onnx_sha256 == hashlib.sha256(models["fp32"].read_bytes()).hexdigest()
    assert manifest.engine_sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert manifest.build.graph_optimization == "all" and manifest.build.threads == 1
    assert manifest.build_command == "edgeseg build-engine X -o Y" and manifest.created
    spec = manifest.inputs[0]
    assert (spec.name, spec.dtype, spec.shape, spec.format) == \
        ("frame", "uint8", [1, 64, 96, 3], "uint8-nhwc-bgr")
    assert (manifest.outputs[0].name, manifest.outputs[0].dtype) == ("labels", "uint8")
    props = {p.key: p.value for p in onnx.load(str(models["fp32"])).metadata_props}
    assert manifest.metadata == {k: v for k, v in props.items() if k.startswith("edgeseg.")}
    assert manifest.model_metadata().label_space == "cityscapes19"
    assert json.loads(manifest_path(out).read_text())["format_version"] == 1


def test_ort_int8_engine_keeps_labels(models: dict[str, Path], tmp_path: Path) -> None:
    from edgeseg.runtime.backends.onnxruntime import OrtBackend
    from tests.onnx_models import scene_frames

    profile = load_profile(REPO / "export" / "cpu-int8.yaml", {"threads": 1})
    out = tmp_path / "tiny-int8.ort.onnx"
    manifest = build_engine(models["int8"], out, profile, "cmd")
    assert manifest.precision == "int8" and manifest.calibration_sha256 == CALIB_SHA
    frames = scene_frames(3, seed=5)
    with OrtBackend.load(out) as backend:
        got = np.stack([backend.infer(f) for f in frames])
    np.testing.assert_array_equal(got, ort_labels(models["int8"], frames))


def test_auto_backend_is_a_cpu_backend_with_notice(models: dict[str, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    if trt_with_gpu():
        pytest.skip("TensorRT and a CUDA GPU are present: auto picks TensorRT here")
    # OpenVINO when installed (tests/test_openvino.py builds with it), else ONNX Runtime
    expected = "openvino" if MachineInfo.detect("openvino").backend_version else "onnxruntime"
    out = tmp_path / ("m.ov.blob" if expected == "openvino" else "m.ort.onnx")
    manifest = build_engine(models["fp32"], out, BuildProfile(threads=1), "cmd")
    assert manifest.backend == expected
    notice = [line for line in capsys.readouterr().err.splitlines() if "notice" in line]
    title = "OpenVINO" if expected == "openvino" else "ONNX Runtime"
    assert len(notice) == 1 and f"building an {title} engine" in notice[0]


def test_precision_mismatch_and_best(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "m.ort.onnx"
    with pytest.raises(PrecisionMismatchError, match="edgeseg quantize") as info:
        build_engine(models["fp32"], out, BuildProfile(backend="onnxruntime", precision="int8"),
                     "cmd")
    assert (info.value.requested, info.value.found) == ("int8", "fp32")
    assert "--flavour onnxruntime" in str(info.value)  # the backend's Q/DQ flavour
    with pytest.raises(EngineBuildError, match="choose_precision"):
        build_engine(models["fp32"], out, BuildProfile(backend="onnxruntime", precision="auto"),
                     "cmd")
    with pytest.raises(EngineBuildError, match="onnxruntime flavour .* --flavour tensorrt"):
        build_engine(models["int8"], tmp_path / "m.engine", BuildProfile(backend="tensorrt"),
                     "cmd")
    assert list(tmp_path.iterdir()) == []


def test_failed_builds_leave_nothing(models: dict[str, Path], tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not an onnx model" * 10)
    out_dir = tmp_path / "out"
    with pytest.raises(MetadataError, match="garbage.onnx: not a readable ONNX"):
        build_engine(garbage, out_dir / "m.ort.onnx", CPU, "cmd")
    broken = tmp_path / "broken.onnx"  # valid protobuf and metadata, graph ORT cannot load
    model = onnx.load(str(models["fp32"]))
    next(n for n in model.graph.node if n.op_type == "Conv").op_type = "NoSuchConv"
    onnx.save(model, str(broken))
    with pytest.raises(EngineBuildError, match="broken.onnx: ONNX Runtime .* cannot load"):
        build_engine(broken, out_dir / "m.ort.onnx", CPU, "cmd")
    assert not out_dir.exists() or list(out_dir.iterdir()) == []
    with pytest.raises(EngineBuildError, match=r"name it \*\.ort\.onnx"):
        build_engine(models["fp32"], out_dir / "m.engine", CPU, "cmd")


def test_cli_build_records_rebuild_command_and_inspect(models: dict[str, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    out = tmp_path / "cli.ort.onnx"
    argv = [str(models["dynamic"]), "-o", str(out), "--profile",
            str(REPO / "export" / "cpu-fp32.yaml"), "--threads", "1"]
    assert run_cli(build_cli, argv) == 0
    manifest = read_manifest(out)
    assert manifest.build_command.startswith(f"edgeseg build-engine {models['dynamic']} -o {out}")
    assert "--backend onnxruntime" in manifest.build_command
    assert "--threads 1" in manifest.build_command and "cpu-fp32.yaml" in manifest.build_command
    assert manifest.build.threads == 1 and manifest.inputs[0].shape[0] is None
    capsys.readouterr()
    assert run_cli(inspect_cli, [str(out)]) == 0
    text = capsys.readouterr().out
    assert "ONNX Runtime" in text and "loads here  yes" in text and "rebuild" in text
    assert run_cli(inspect_cli, [str(manifest_path(out)), "--json", "-"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "engine" and info["manifest"]["precision"] == "fp32"
    assert run_cli(inspect_cli, [str(models["fp32"])]) == 0
    text = capsys.readouterr().out
    assert "ONNX (ai.onnx 17)" in text and "Conv" in text and "cityscapes19" in text


# ------------------------------------------------------------------ TensorRT


def test_tensorrt_build_and_load(models: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT not installed")
    if not trt_with_gpu():
        pytest.skip("no CUDA GPU")
    from edgeseg.runtime.backends.tensorrt import TrtBackend
    from tests.onnx_models import scene_frames

    out = tmp_path / "tiny.engine"
    manifest = build_engine(models["fp32"], out, BuildProfile(backend="tensorrt"), "cmd")
    assert manifest.backend == "tensorrt" and manifest.device.compute_capability.startswith("sm_")
    assert (tmp_path / "tiny.engine.layers.json").is_file()
    frames = scene_frames(3, seed=5)
    with TrtBackend.load(out) as backend:
        got = np.stack([backend.infer(f) for f in frames])
    agreement = (got == ort_labels(models["fp32"], frames)).mean()
    assert agreement > 0.99  # TF32 tactics may flip a few near-tied pixels


def test_tensorrt_build_survives_a_corrupt_timing_cache(models: dict[str, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT not installed")
    if not trt_with_gpu():
        pytest.skip("no CUDA GPU")
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"\x00not a timing cache" * 64)
    profile = BuildProfile(backend="tensorrt", timing_cache=str(cache))
    manifest = build_engine(models["fp32"], tmp_path / "t.engine", profile, "cmd")
    err = capsys.readouterr().err
    assert f"timing cache {cache}" in err and "fresh cache" in err
    assert cache.read_bytes()[:19] != b"\x00not a timing cache"  # replaced by a real one
    assert manifest.timing_cache_sha256 == hashlib.sha256(cache.read_bytes()).hexdigest()
    capsys.readouterr()
    build_engine(models["fp32"], tmp_path / "t2.engine", profile, "cmd")
    assert "fresh cache" not in capsys.readouterr().err  # the rewritten cache loads


def test_tensorrt_manifest_records_the_build(models: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT not installed")
    if not trt_with_gpu():
        pytest.skip("no CUDA GPU")
    import platform

    from edgeseg.runtime.compat import cuda_build_of, tensorrt_cuda_major

    manifest = build_engine(models["fp32"], tmp_path / "m.engine",
                            BuildProfile(backend="tensorrt"), "cmd")
    assert manifest.device.arch == platform.machine()
    assert cuda_build_of(manifest.backend_version) == tensorrt_cuda_major()
