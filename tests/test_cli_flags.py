"""The command line's flag names: each one parses and reaches the code, old spellings fail.

Flags follow trtexec, polygraphy, ultralytics and jetson-inference users' habits:
``-o/--output`` for every output path, ``--device cpu|cuda[:N]|auto`` everywhere a model
runs, ``--max-frames`` / ``--calib-frames`` / ``--parity-frames`` for frame counts,
``--json OUT`` (``-`` = stdout) as a path in every command.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import cv2
import numpy as np
import pytest

from edgeseg.argtypes import Device, parse_alpha, parse_device
from edgeseg.cli import build_parser
from tests.conftest import cli_env
from tests.onnx_models import SIZE, block_scene, export_tiny


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def rejected(*argv: str) -> str:
    """The usage error argparse prints for ``argv`` (exit status 2)."""
    with pytest.raises(SystemExit) as exc, mock.patch("sys.stderr") as err:
        parse(*argv)
    assert exc.value.code == 2
    return "".join(str(c.args[0]) for c in err.write.call_args_list)


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", *argv], env=cli_env(),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def seg_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("flags") / "seg.onnx")


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("video") / "drive.mp4"
    h, w = SIZE
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 10, (w, h))
    rng = np.random.default_rng(0)
    for _ in range(4):
        rgb, _ = block_scene(rng, SIZE)
        writer.write(np.ascontiguousarray(rgb[..., ::-1]))
    writer.release()
    return path


# ------------------------------------------------------------------ value types


@pytest.mark.parametrize("text, kind, index, torch", [
    ("cpu", "cpu", 0, "cpu"), ("cuda", "cuda", 0, "cuda:0"), ("cuda:1", "cuda", 1, "cuda:1"),
    ("CUDA:3", "cuda", 3, "cuda:3"), ("auto", "auto", 0, "auto")])
def test_device_parses(text: str, kind: str, index: int, torch: str) -> None:
    device = parse_device(text)
    assert (device.kind, device.index, device.torch) == (kind, index, torch)


@pytest.mark.parametrize("text", ["gpu", "cuda:", "cuda:x", "cpu:1", "1", ""])
def test_device_refuses_other_spellings(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="cpu, cuda, cuda:N"):
        parse_device(text)


def test_alpha_takes_both_scales() -> None:
    assert parse_alpha("150") == pytest.approx(150 / 255)
    assert parse_alpha("255") == 1.0 and parse_alpha("1") == 1.0
    assert parse_alpha("0.6") == pytest.approx(0.6) and parse_alpha("0") == 0.0
    for bad in ("256", "-0.1", "half"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_alpha(bad)
    assert parse("run", "e.onnx", "--source", "0", "--alpha", "150").alpha == \
        pytest.approx(150 / 255)


# ------------------------------------------------------------------ every renamed flag parses


def test_new_flags_parse_in_every_command() -> None:
    a = parse("export", "c.pt", "-o", "m.onnx", "--output-kind", "logits", "--input-format",
              "float-nchw", "--parity-frames", "3", "--device", "cuda:1")
    assert (a.output, a.output_kind, a.input_format, a.parity_frames) == \
        ("m.onnx", "logits", "float-nchw", 3)
    assert a.device == Device("cuda", 1)
    a = parse("export", "c.pt", "--output", "m.onnx")
    assert a.output == "m.onnx"
    a = parse("quantize", "m.onnx", "--output", "q.onnx", "--precision", "int8", "--calib-method",
              "entropy", "--calib-cache", "c.json", "--keep-fp32", "Resize", "conv1",
              "--calib-frames", "4")
    assert (a.calib_method, a.calib_cache, a.keep_fp32, a.calib_frames) == \
        ("entropy", "c.json", ["Resize", "conv1"], 4)
    assert a.high_precision_dtype == "fp32"
    a = parse("quantize", "m.onnx", "-o", "q.onnx", "--precision", "int8",
              "--high-precision-dtype", "fp16")
    assert a.high_precision_dtype == "fp16"
    a = parse("build-engine", "m.onnx", "-o", "m.engine", "--precision", "auto",
              "--calib-method", "percentile", "--calib-frames", "8", "--device", "cuda:2",
              "--hardware-compatibility", "ampere+", "--no-gpu-fallback",
              "--min-shapes", "frame:1x360x480x3", "--opt-shapes", "frame:1x360x480x3",
              "--max-shapes", "frame:4x360x480x3")
    assert (a.precision, a.calib_method, a.hardware_compatibility, a.gpu_fallback) == \
        ("auto", "percentile", "ampere+", False)
    assert a.device.index == 2 and a.max_shapes == "frame:4x360x480x3"
    assert parse("inspect", "m.onnx", "--json", "-").json == "-"
    assert parse("inspect", "m.onnx", "--json", "i.json").json == "i.json"
    a = parse("eval", "m.onnx", "--data", "x:y", "--max-frames", "5", "--device", "cuda:1",
              "--json", "e.json")
    assert (a.max_frames, a.device.torch, a.json) == (5, "cuda:1", "e.json")
    a = parse("compare", "a.onnx", "b.onnx", "--max-frames", "4", "--device", "cpu",
              "--json", "-")
    assert (a.max_frames, a.device.kind, a.json) == (4, "cpu", "-")
    a = parse("bench", "a.onnx", "--latency-frames", "2", "--max-frames", "3", "--device",
              "cuda:1")
    assert (a.latency_frames, a.max_frames, a.device.index) == (2, 3, 1)
    a = parse("run", "e.onnx", "--source", "csi://0", "--sink", "display://0", "--max-frames",
              "9", "--device", "cuda:1")
    assert (a.max_frames, a.sink, a.device.index) == (9, ["display://0"], 1)
    assert parse("demo", "--max-frames", "12").max_frames == 12


@pytest.mark.parametrize("argv, flag", [
    (("export", "c.pt", "-o", "m.onnx", "--onnx", "m.onnx"), "--onnx"),
    (("export", "c.pt", "-o", "m.onnx", "--input", "uint8-nhwc-bgr"), "--input"),
    (("export", "c.pt", "-o", "m.onnx", "--output", "logits", "--output-k", "labels"),
     "--output-k"),
    (("quantize", "m.onnx", "-o", "q.onnx", "--precision", "int8", "--method", "minmax"),
     "--method"),
    (("quantize", "m.onnx", "-o", "q.onnx", "--precision", "int8", "--cache", "c"), "--cache"),
    (("quantize", "m.onnx", "-o", "q.onnx", "--precision", "int8", "--exclude", "Conv"),
     "--exclude"),
    (("quantize", "m.onnx", "-o", "q.onnx", "--precision", "int8-fp16"), "int8-fp16"),
    (("quantize", "m.onnx", "-o", "q.onnx", "--precision", "int8", "--high-precision-dtype",
      "bf16"), "bf16"),
    (("build-engine", "m.onnx", "--precision", "best"), "best"),
    (("build-engine", "m.onnx", "--method", "minmax"), "--method"),
    (("build-engine", "m.onnx", "--hardware-compatibility", "ampere_plus"), "ampere_plus"),
    (("eval", "m.onnx", "--data", "x", "--max-images", "2"), "--max-images"),
    (("compare", "a.onnx", "b.onnx", "--frames", "2"), "--frames"),
    (("bench", "a.onnx", "--frames", "2"), "--frames"),
    (("bench", "a.onnx", "--max-images", "2"), "--max-images"),
    (("demo", "--frames", "2"), "--frames"),
    (("eval", "m.onnx", "--data", "x", "--device", "gpu"), "gpu"),
    (("run", "e.onnx", "--source", "0", "--trust-engine-code", "yes"), "yes"),
])
def test_old_spellings_are_rejected(argv: tuple[str, ...], flag: str) -> None:
    assert flag in rejected(*argv)


def test_inspect_json_needs_a_path() -> None:
    assert "expected one argument" in rejected("inspect", "m.onnx", "--json")


# ------------------------------------------------------------------ --device reaches the backend


def test_device_options_route_the_gpu_index(seg_onnx: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeseg.contract import manifest as manifest_module
    from edgeseg.runtime.predictor import device_options
    from edgeseg.runtime.run_cli import StreamConfig, backend_options

    assert device_options(seg_onnx, parse_device("cuda:1")) == {"device": 1,
                                                                "providers": ["cuda"]}
    assert device_options(seg_onnx, "cpu") == {} and device_options(seg_onnx, "auto") == {}
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    (tmp_path / "m.engine.json").write_text("{}")
    monkeypatch.setattr(manifest_module, "read_manifest",
                        lambda path: SimpleNamespace(backend="tensorrt"))
    assert device_options(engine, "cuda:1") == {"device": 1}
    assert device_options(engine, "auto") == {"device": 0}
    with pytest.raises(Exception, match="TensorRT engine runs on a GPU"):
        device_options(engine, "cpu")
    options = backend_options(engine, StreamConfig(source="0", device="cuda:1"))
    assert options == {"device": 1, "cuda_graphs": False, "sync": "blocking",
                       "trust_engine_code": None}


def _fake_trt_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list]:
    """A plan whose manifest says TensorRT, and a TrtBackend.load that records its options."""
    from edgeseg.contract import manifest as manifest_module
    from edgeseg.runtime.backends import base
    from edgeseg.runtime.backends.tensorrt import TrtBackend

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    (tmp_path / "m.engine.json").write_text("{}")
    fake_manifest = SimpleNamespace(backend="tensorrt")
    monkeypatch.setattr(manifest_module, "read_manifest", lambda path: fake_manifest)
    monkeypatch.setattr(base, "read_manifest", lambda path: fake_manifest)
    seen: list[dict] = []

    def fake_load(cls: type, path: object, **options: object) -> object:
        seen.append(options)
        return SimpleNamespace(close=lambda: None)

    monkeypatch.setattr(TrtBackend, "load", classmethod(fake_load))
    return engine, seen


def test_run_spin_and_trust_engine_code_reach_the_tensorrt_backend(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`edgeseg run --spin --trust-engine-code` loads a plan with sync="spin" and consent to its
    embedded runtime; without them: blocking sync, and the environment decides (None)."""
    from edgeseg.runtime.run_cli import config_from_args, open_engine

    engine, seen = _fake_trt_engine(tmp_path, monkeypatch)
    flags = config_from_args(parse("run", str(engine), "--source", "0", "--sink", "null",
                                   "--spin", "--trust-engine-code", "--device", "cuda:1"))
    assert (flags.spin, flags.trust_engine_code) == (True, True)
    open_engine(engine, flags)
    plain = config_from_args(parse("run", str(engine), "--source", "0", "--sink", "null"))
    assert (plain.spin, plain.trust_engine_code) == (False, None)
    open_engine(engine, plain)
    assert [(o["sync"], o["trust_engine_code"], o["device"]) for o in seen] == [
        ("spin", True, 1), ("blocking", None, 0)]


def test_open_engine_passes_sync_and_trust_to_tensorrt(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """eval/compare/bench's opener forwards the same two TensorRT options."""
    from edgeseg.runtime import compat
    from edgeseg.runtime.predictor import open_engine

    engine, seen = _fake_trt_engine(tmp_path, monkeypatch)
    machine = SimpleNamespace(backend_version="11.4.1", device="GPU", note="")
    monkeypatch.setattr(compat.MachineInfo, "detect", classmethod(lambda cls, *a: machine))
    open_engine(engine, "cuda:0", sync="spin", trust_engine_code=True)
    open_engine(engine, "cuda:0")
    assert [(o["sync"], o["trust_engine_code"]) for o in seen] == [("spin", True),
                                                                   ("blocking", None)]


def test_trust_engine_code_flag_is_consent_and_its_absence_defers_to_the_environment(
        tmp_path: Path) -> None:
    from edgeseg.contract.manifest import EngineLoadError
    from edgeseg.runtime.backends.tensorrt import TRUST_ENV, allow_engine_host_code

    manifest = SimpleNamespace(build=SimpleNamespace(version_compatible=True),
                               build_command="edgeseg build-engine m.onnx --version-compatible")
    plan = tmp_path / "m.engine"
    assert allow_engine_host_code(plan, manifest, True, environ={})
    assert allow_engine_host_code(plan, manifest, None, environ={TRUST_ENV: "1"})
    with pytest.raises(EngineLoadError, match="trust_engine_code=True"):
        allow_engine_host_code(plan, manifest, None, environ={})


def test_eval_and_compare_pass_the_device(seg_onnx: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeseg import eval_cli
    from edgeseg.errors import EdgesegError
    from edgeseg.export import compare, predictors
    from edgeseg.runtime import frames, predictor

    seen: list[dict] = []

    def fake_load(path: object, **options: object) -> object:
        seen.append(options)
        return object()

    fake = SimpleNamespace(label_space="cityscapes19", size=None, kind="onnxruntime",
                           info={}, close=lambda: None)
    monkeypatch.setattr(predictor, "load_backend", fake_load)
    monkeypatch.setattr(predictors, "BackendPredictor", lambda backend: fake)
    eval_cli.load_predictor(str(seg_onnx), parse_device("cuda:1"))
    assert seen == [{"device": 1, "providers": ["cuda"], "intra_op_threads": 0}]
    seen.clear()
    monkeypatch.setattr(frames, "open_frames", lambda *a, **k: frames.FrameSample(
        "none", 0, None, []))
    with pytest.raises(EdgesegError, match="no frames"):
        compare.compare_models(seg_onnx, seg_onnx, "x:y:z", device="cuda:1")
    assert seen == [{"device": 1, "providers": ["cuda"], "intra_op_threads": 0}] * 2


def test_build_engine_routes_device_and_hardware_level(seg_onnx: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeseg.export import build_cli

    seen: dict = {}

    def fake_build(model: object, out: object, profile: object, command: str, **kw: object
                   ) -> object:
        seen.update(kw, profile=profile, command=command)
        return SimpleNamespace(precision="fp32", describe=lambda: "fake")

    def fake_resolve(choice: str, device: int = 0) -> str:
        seen["resolve_device"] = device
        return "tensorrt"

    monkeypatch.setattr(build_cli, "build_engine", fake_build)
    monkeypatch.setattr(build_cli, "resolve_backend", fake_resolve)
    args = parse("build-engine", str(seg_onnx), "-o", str(tmp_path / "m.engine"), "--device",
                 "cuda:1", "--hardware-compatibility", "ampere+", "--no-gpu-fallback",
                 "--dla-core", "0", "--opt-shapes", "frame:1x32x64x3")
    assert build_cli.run(args) == 0
    assert seen["device"] == 1 and seen["resolve_device"] == 1
    profile = seen["profile"]
    assert profile.hardware_compatibility == "ampere_plus" and profile.gpu_fallback is False
    assert profile.shapes.opt == [1, 32, 64, 3]
    assert "--device cuda:1" in seen["command"] and "--hardware-compatibility ampere+" in \
        seen["command"] and "--no-gpu-fallback" in seen["command"]
    wrong = parse("build-engine", str(seg_onnx), "--opt-shapes", "input:1x32x64x3")
    with pytest.raises(Exception, match="no input 'input'"):
        build_cli.run(wrong)
    cpu = parse("build-engine", str(seg_onnx), "--device", "cpu", "--backend", "tensorrt")
    with pytest.raises(Exception, match="--device cpu with --backend tensorrt"):
        build_cli.run(cpu)


def test_hardware_compatibility_sets_the_documented_tensorrt_level() -> None:
    from edgeseg.export.build_engine import BuildProfile
    from edgeseg.export.trt_builder import _configure

    trt = SimpleNamespace(MemoryPoolType=SimpleNamespace(WORKSPACE="ws"),
                          ProfilingVerbosity=SimpleNamespace(DETAILED="detailed"),
                          HardwareCompatibilityLevel=SimpleNamespace(AMPERE_PLUS="AMPERE+"),
                          BuilderFlag=SimpleNamespace(GPU_FALLBACK="fallback"))
    config = mock.MagicMock()
    _configure(trt, mock.MagicMock(), config, BuildProfile(hardware_compatibility="ampere_plus"))
    assert config.hardware_compatibility_level == "AMPERE+"


# ------------------------------------------------------------------ sources and sinks


def test_jetson_inference_uris_map_to_sources(tmp_path: Path) -> None:
    from edgeseg.runtime.sinks import WindowSink, open_sink
    from edgeseg.runtime.sources import SourceError, resolve_uri

    csi = resolve_uri("csi://1")
    assert "nvarguscamerasrc sensor-id=1 " in csi and csi.rstrip().endswith("sync=false")
    assert "sensor-id=0" in resolve_uri("csi://0")
    assert resolve_uri("v4l2:///dev/video2") == "/dev/video2"
    assert resolve_uri("file:///data/drive.mp4") == "/data/drive.mp4"
    assert resolve_uri("file://rel/drive.mp4") == "rel/drive.mp4"
    assert resolve_uri("rtsp://cam/stream") == "rtsp://cam/stream"
    for bad in ("csi://x", "v4l2://video0", "file://"):
        with pytest.raises(SourceError):
            resolve_uri(bad)
    assert isinstance(open_sink("display://0"), WindowSink)


# ------------------------------------------------------------------ real command lines


def test_cli_inspect_json_is_a_path(seg_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "info.json"
    done = cli("inspect", str(seg_onnx), "--json", str(out))
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["kind"] == "onnx" and "cityscapes19" in done.stdout
    done = cli("inspect", str(seg_onnx), "--json", "-")
    assert done.returncode == 0 and json.loads(done.stdout)["kind"] == "onnx"


def test_cli_eval_and_compare_json_to_stdout_is_only_json(seg_onnx: Path, tiny_synth: Path
                                                          ) -> None:
    data = f"synthetic:{tiny_synth}:night_val"
    done = cli("eval", str(seg_onnx), "--data", data, "--json", "-")
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)["results"]) == {data}
    assert "mIoU" in done.stderr  # the table went to stderr
    done = cli("compare", str(seg_onnx), str(seg_onnx), "--data", data, "--json", "-")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["passed"] and summary["pixel_agreement"] == 1.0
    assert "PASSED" in done.stderr


def test_cli_quantize_keep_fp32_and_old_flags(seg_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "seg.fp16.onnx"
    done = cli("quantize", str(seg_onnx), "--output", str(out), "--precision", "fp16",
               "--keep-fp32", "Resize")
    assert done.returncode == 0, done.stderr
    assert out.is_file()
    done = cli("quantize", str(seg_onnx), "-o", str(tmp_path / "q.onnx"), "--precision", "int8",
               "--exclude", "Resize")
    assert done.returncode == 2 and "unrecognized arguments: --exclude" in done.stderr


def test_cli_run_takes_uris_alpha_and_device(seg_onnx: Path, video: Path,
                                             tmp_path: Path) -> None:
    summary = tmp_path / "run.json"
    done = cli("run", str(seg_onnx), "--source", f"file://{video}", "--sink", "null",
               "--alpha", "150", "--max-frames", "3", "--device", "cpu", "--no-progress",
               "--summary", str(summary))
    assert done.returncode == 0, done.stderr
    info = json.loads(summary.read_text())
    assert f"file://{video}" in json.dumps(info) and "3 frames" in done.stdout


# ------------------------------------------------------------------ start-up imports


_LOADED = ("import json, sys; from edgeseg.cli import main, MODULE_COMMANDS\n"
           "try:\n    rc = main(sys.argv[1:])\nexcept SystemExit as exc:\n    rc = exc.code\n"
           "mods = {m for _, m, _ in MODULE_COMMANDS} | {'edgeseg.eval_cli'}\n"
           "print(json.dumps([rc, sorted(m for m in sys.modules if m in mods), 'torch' in sys.modules]))")


def loaded_by(*argv: str) -> tuple[int, list[str], bool]:
    """``edgeseg ARGV`` in a fresh interpreter: its exit status, the command modules it had
    imported at the end, and whether torch was imported."""
    done = subprocess.run([sys.executable, "-c", _LOADED, *argv], env=cli_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.stdout.strip(), done.stderr
    rc, modules, torch = json.loads(done.stdout.strip().splitlines()[-1])
    return rc, modules, torch


def test_a_command_loads_its_own_module_and_no_torch(seg_onnx: Path, video: Path,
                                                     tmp_path: Path) -> None:
    """A command imports its own module only (`--help` none), and the torch-free paths (an
    ONNX file through inspect, run and eval) never torch: each start costs what it uses."""
    assert loaded_by("--help") == (0, [], False)
    assert loaded_by("inspect", str(seg_onnx)) == (0, ["edgeseg.export.inspect_cli"], False)
    assert loaded_by("run", str(seg_onnx), "--source", str(video), "--sink", "null",
                     "--max-frames", "2") == (0, ["edgeseg.runtime.run_cli"], False)
    root = tmp_path / "camvid"
    for sub in ("images", "labels"):
        (root / sub / "day").mkdir(parents=True)
    rgb, label = block_scene(np.random.default_rng(0))
    cv2.imwrite(str(root / "images" / "day" / "a.png"), rgb[..., ::-1])
    cv2.imwrite(str(root / "labels" / "day" / "a.png"), np.zeros_like(label))
    assert loaded_by("eval", str(seg_onnx), "--data", f"camvid:{root}:day") == (
        0, ["edgeseg.eval_cli"], False)
    assert loaded_by("build-engine", "--help")[:2] == (0, ["edgeseg.export.build_cli"])
