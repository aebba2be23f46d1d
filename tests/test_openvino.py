"""OpenVINO backend: build, manifest checks, parity with ONNX Runtime, asynchronous streaming.

Everything runs for real on the CPU with the tiny trained models of tests/onnx_models.py:
OpenVINO compiles and exports the engine, the runtime imports it, and labels are compared
with ONNX Runtime's on the same ONNX file. fp32 must match exactly (OpenVINO's CPU runs the
layers outside Q/DQ in f32 as built; measured 100 % on these frames); int8 files must pass
the project's int8 gate (>= 95 % pixel agreement, as tests/test_precision.py) against ONNX
Runtime on the same file and against fp32. The whole module skips where openvino does not
import.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

ov = pytest.importorskip("openvino", reason="openvino is not installed "
                                           "(pip install 'edgeseg[openvino]')")

from edgeseg.cli import main  # noqa: E402
from edgeseg.contract.manifest import (  # noqa: E402
    EngineLoadError,
    EngineMismatchError,
    ManifestError,
    manifest_path,
    read_manifest,
)
from edgeseg.errors import EdgesegError  # noqa: E402
from edgeseg.export.build_engine import build_engine  # noqa: E402
from edgeseg.export.profile import BuildProfile, EngineBuildError  # noqa: E402
from edgeseg.runtime.backends import InputShapeError, open_backend  # noqa: E402
from edgeseg.runtime.backends.openvino import OvBackend  # noqa: E402
from edgeseg.runtime.compat import INT8_DOT_ISA, cpu_device  # noqa: E402
from edgeseg.runtime.pipeline import StreamPipeline  # noqa: E402
from edgeseg.runtime.sinks import NullSink  # noqa: E402
from edgeseg.runtime.sources import open_source  # noqa: E402
from edgeseg.runtime.stages import SegmentStage, StageChain  # noqa: E402
from tests.conftest import REPO  # noqa: E402
from tests.onnx_models import scene_frames  # noqa: E402
from tests.test_engine import ort_labels, tiny_models, trt_with_gpu  # noqa: E402
from tests.test_runtime_backends import BLOCKER, edit_manifest  # noqa: E402

REBUILD = "edgeseg build-engine tiny.onnx -o tiny.ov.blob --backend openvino"
OV_CPU = BuildProfile(backend="openvino", threads=1)
INT8_GATE = 0.95  # pixel agreement an int8 file needs (tests/test_precision.py)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """fp32 (trained), int8 in the onnxruntime flavour, and int8 in the TensorRT flavour."""
    from edgeseg.export.int8 import quantize_int8

    found = dict(tiny_models(tmp_path_factory))
    root = found["fp32"].parent
    if not (root / "tiny-int8-trt.onnx").is_file():
        quantize_int8(found["fp32"], root / "tiny-int8-trt.onnx", scene_frames(8, seed=1),
                      flavour="tensorrt", source="block scenes")
    found["int8_trt"] = root / "tiny-int8-trt.onnx"
    return found


@pytest.fixture
def engine(models: dict[str, Path], tmp_path: Path) -> Path:
    """A fresh OpenVINO engine of the fp32 model per test (tests edit its manifest/bytes)."""
    out = tmp_path / "tiny.ov.blob"
    build_engine(models["fp32"], out, OV_CPU, REBUILD)
    return out


def ov_labels(engine: Path, frames: np.ndarray, **options: object) -> np.ndarray:
    with open_backend(engine, **options) as backend:
        return np.stack([backend.infer(f) for f in frames])


# ------------------------------------------------------------------ build and parity


def test_build_writes_the_compiled_model_and_its_manifest(models: dict[str, Path],
                                                          engine: Path) -> None:
    from edgeseg.fileio import sha256_file
    from edgeseg.runtime.compat import MachineInfo

    assert sorted(p.name for p in engine.parent.iterdir()) == ["tiny.ov.blob",
                                                               "tiny.ov.blob.json"]
    m = read_manifest(engine)
    here = MachineInfo.detect("openvino")
    assert (m.backend, m.backend_version, m.precision) == ("openvino", ov.__version__, "fp32")
    assert m.device.kind == "cpu" and m.device.cpu_isa == here.device.cpu_isa
    assert m.device.arch == here.device.arch and m.device.name == here.device.name
    b = m.build
    assert (b.ov_device, b.performance_hint, b.threads, b.inference_precision) == \
        ("CPU", "LATENCY", 1, "f32")
    assert b.streams == 1 and b.infer_requests == 2  # LATENCY: one stream; two in flight
    assert m.onnx_sha256 == sha256_file(models["fp32"])
    assert m.engine_sha256 == sha256_file(engine) and m.build_command == REBUILD
    assert [(t.name, t.dtype, t.shape) for t in m.inputs] == [("frame", "uint8", [1, 64, 96, 3])]
    assert any("stream(s)" in n for n in m.notes)
    # other backends' manifests do not carry OpenVINO's keys (older readers reject them)
    ort = build_engine(models["fp32"], engine.with_name("t.ort.onnx"),
                       BuildProfile(backend="onnxruntime", threads=1), "cmd")
    assert "ov_device" not in ort.to_dict()["build"]


def test_fp32_labels_match_onnxruntime_exactly(models: dict[str, Path], engine: Path) -> None:
    frames = scene_frames(4, seed=9)
    expected = ort_labels(models["fp32"], frames)
    assert len(np.unique(expected)) >= 3  # a non-trivial class map
    with open_backend(engine) as backend:
        assert isinstance(backend, OvBackend)
        assert backend.properties["INFERENCE_PRECISION_HINT"] == "f32"
        assert backend.properties["PERFORMANCE_HINT"] == "LATENCY"
        assert backend.metadata.label_space == "cityscapes19"
        got = np.stack([backend.infer(f) for f in frames])
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("flavour", ["int8_trt", "int8"])
def test_int8_files_pass_the_int8_gate(models: dict[str, Path], tmp_path: Path,
                                       flavour: str) -> None:
    """Both Q/DQ flavours: against ONNX Runtime on the same file and against fp32.

    On an x86 CPU without VNNI or AMX (AVX2 only), OpenVINO's engine of the TensorRT flavour
    file agrees 92 % with fp32 on these frames (ONNX Runtime on the same file: 99 %), below
    the gate: most likely the int16 saturation of AVX2's uint8 x int8 pair products
    (vpmaddubsw) that NNCF's "overflow fix" (7-bit weights) exists for. That case is skipped
    there, with the reason; the onnxruntime flavour is checked on every CPU."""
    if flavour == "int8_trt" and not INT8_DOT_ISA & set(cpu_device().cpu_isa):
        pytest.skip("this CPU has no VNNI/AMX int8 dot product: OpenVINO's AVX2 int8 engine of "
                    "the TensorRT flavour file is below the int8 gate here (92 % agreement "
                    "with fp32 on a 2-core AMD EPYC with AVX2; ONNX Runtime 99 %)")
    out = tmp_path / "tiny-int8.ov.blob"
    manifest = build_engine(models[flavour], out, OV_CPU, "cmd")
    assert manifest.precision == "int8"
    frames = scene_frames(6, seed=9)
    got = ov_labels(out, frames)
    assert (got == ort_labels(models[flavour], frames)).mean() >= INT8_GATE
    assert (got == ort_labels(models["fp32"], frames)).mean() >= INT8_GATE


def test_int8_saturation_notice_names_the_cpus_it_applies_to(models: dict[str, Path]) -> None:
    """Only a tensorrt-flavour int8 file, built for the CPU, on x86 with AVX2 and neither VNNI
    nor AMX; the notice names the flavour that avoids it."""
    from edgeseg.export.build_engine import read_onnx_metadata
    from edgeseg.export.ov_builder import int8_saturation_notice

    trt, _ = read_onnx_metadata(models["int8_trt"])
    ort, _ = read_onnx_metadata(models["int8"])
    fp32, _ = read_onnx_metadata(models["fp32"])
    avx2 = ["avx", "avx2", "fma", "f16c"]
    notice = int8_saturation_notice(trt, "CPU", avx2)
    assert notice and "--flavour onnxruntime" in notice
    for isa in (avx2 + ["avx512_vnni"], avx2 + ["avx_vnni"], avx2 + ["amx_int8"],
                ["avx", "fma"], ["asimd", "asimddp"]):
        assert int8_saturation_notice(trt, "CPU", isa) is None, isa
    assert int8_saturation_notice(trt, "GPU", avx2) is None
    assert int8_saturation_notice(ort, "CPU", avx2) is None
    assert int8_saturation_notice(fp32, "CPU", avx2) is None


@pytest.mark.parametrize("flavour", ["int8_trt", "int8"])
def test_build_warns_of_int8_saturation_on_this_cpu(models: dict[str, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    flavour: str) -> None:
    """The real build says it (stderr and manifest) exactly where the notice applies here."""
    isa = set(cpu_device().cpu_isa)
    expected = flavour == "int8_trt" and "avx2" in isa and not INT8_DOT_ISA & isa
    manifest = build_engine(models[flavour], tmp_path / "tiny.ov.blob", OV_CPU, "cmd")
    noted = any("no VNNI/AMX int8 dot product" in n for n in manifest.notes)
    warned = "warning: this CPU has no VNNI/AMX" in capsys.readouterr().err
    assert noted == warned == expected


# ------------------------------------------------------------------ asynchronous requests


def test_submit_collect_is_first_in_first_out(engine: Path) -> None:
    frames = scene_frames(5, seed=4)
    with open_backend(engine, infer_requests=3) as backend:
        assert backend.max_in_flight == 3
        want = [backend.infer(f) for f in frames]
        for f in frames[:3]:
            backend.submit(f)
        with pytest.raises(EdgesegError, match="3 batches in flight; collect"):
            backend.submit(frames[3])
        got = [backend.collect()]
        backend.submit(frames[3])
        got.append(backend.collect())
        backend.submit(frames[4])
        while backend.in_flight:
            got.append(backend.collect())
        backend.submit(frames[0])
        assert np.array_equal(backend.infer(frames[1]), want[1])  # drains the queue first
    assert all(r.timings["infer"] > 0 for r in got)
    for result, expected in zip(got, want, strict=True):
        np.testing.assert_array_equal(result.output, expected)


class Recorder(NullSink):
    """Keeps each emitted frame's index and labels; ``delay`` makes it a slow display."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__("recorder")
        self.delay, self.indices, self.labels = delay, [], []

    def write(self, index: int, rendered: np.ndarray | None, labels: np.ndarray) -> None:
        self.indices.append(index)
        self.labels.append(labels)
        time.sleep(self.delay)


def test_pipeline_keeps_frame_order_under_all(engine: Path) -> None:
    with open_backend(engine, infer_requests=3) as backend:
        sink = Recorder()
        pipeline = StreamPipeline(open_source("synthetic:night:96x64:24"),
                                  StageChain([SegmentStage(backend)]), [sink], policy="all",
                                  queue_size=2)
        summary = pipeline.run()
        assert summary.counts.processed == 24 and summary.counts.dropped == 0
        assert sink.indices == list(range(24))
        # each frame's labels are that frame's (not a neighbour's from another request)
        stage = SegmentStage(backend)
        from edgeseg.runtime.stages import Packet

        source = open_source("synthetic:night:96x64:24")
        for i in range(24):
            frame = source.read()
            if i % 6 == 0:
                want = stage.process(Packet(frame, frame.image)).labels
                np.testing.assert_array_equal(sink.labels[i], want)
        source.close()
    assert summary.stages["infer"].count == 24


def test_pipeline_drops_stale_frames_under_latest(engine: Path) -> None:
    with open_backend(engine) as backend:
        sink = Recorder(delay=0.04)
        pipeline = StreamPipeline(open_source("synthetic:night:96x64:100"),
                                  StageChain([SegmentStage(backend)]), [sink], policy="latest",
                                  queue_size=1)
        summary = pipeline.run()
    c = summary.counts
    assert c.captured == 100 and c.dropped > 20 and c.processed + c.dropped == c.captured
    assert sink.indices == sorted(sink.indices) and len(set(sink.indices)) == c.processed
    assert summary.stages["end_to_end"].p99 < 400, summary.stages["end_to_end"]


# ------------------------------------------------------------------ machine checks


@pytest.mark.parametrize(("changes", "says"), [
    ({"backend_version": "2023.0.0-1-abc"}, "OpenVINO version: engine compiled by 2023.0.0"),
    ({"device__cpu_isa": ["avx2", "fma"], "device__name": "Xeon 9999"}, "Xeon 9999"),
    ({"device__arch": "aarch64"}, "aarch64"),
    ({"build__ov_device": "GPU", "device": {"kind": "gpu", "name": "Arc A770"}},
     "OpenVINO device: engine compiled for GPU"),
])
def test_engine_for_another_machine_is_refused_in_one_line(engine: Path, changes: dict,
                                                           says: str) -> None:
    edit_manifest(engine, **changes)
    with pytest.raises(EngineMismatchError) as info:
        open_backend(engine)
    text = str(info.value)
    assert "\n" not in text and str(engine) in text and says in text
    assert text.endswith(f"Rebuild it on this machine: {REBUILD}")


def test_bad_files_fail_with_the_file_and_the_fix(models: dict[str, Path], engine: Path,
                                                  tmp_path: Path) -> None:
    with pytest.raises(InputShapeError, match="dtype float32, the engine's input 'frame' takes "
                                              "uint8"):
        with open_backend(engine) as backend:
            backend.infer(np.zeros((1, 64, 96, 3), np.float32))
    with pytest.raises(EngineBuildError, match=r"m\.onnx: an OpenVINO engine is a compiled "
                                               r"model.*name it \*\.ov\.blob"):
        build_engine(models["fp32"], tmp_path / "m.onnx", OV_CPU, "cmd")
    with pytest.raises(EngineBuildError, match="ov_device|GPU"):
        build_engine(models["fp32"], tmp_path / "g.ov.blob",
                     BuildProfile(backend="openvino", ov_device="GPU"), "cmd")
    assert not list(tmp_path.glob("[mg].*"))  # a failed build leaves nothing
    engine.write_bytes(engine.read_bytes()[:-64] + b"\0" * 64)
    with pytest.raises(EngineLoadError, match="does not match its manifest") as info:
        open_backend(engine)
    assert REBUILD in str(info.value)
    engine.write_bytes(b"not a compiled model" * 10)
    with pytest.raises(EngineLoadError, match=r"tiny\.ov\.blob: OpenVINO .* cannot load it on "
                                              r"CPU \(.+\)\. Rebuild: edgeseg build-engine"):
        OvBackend.load(engine, verify_hash=False)
    manifest_path(engine).unlink()
    with pytest.raises(ManifestError, match=r"manifest .* is missing.*--backend openvino"):
        open_backend(engine)


def test_runtime_without_openvino_says_how_to_install(engine: Path) -> None:
    """In a process where openvino cannot import: a clear error, and `auto` builds for the
    CPU with ONNX Runtime instead."""
    code = BLOCKER.replace('"torchvision"}', '"torchvision", "openvino"}') + textwrap.dedent(f"""
        from edgeseg.runtime.backends import open_backend
        from edgeseg.runtime.backends.base import BackendUnavailableError
        from edgeseg.export.build_engine import cpu_backend
        try:
            open_backend({str(engine)!r})
        except Exception as exc:
            print(type(exc).__name__, "|", exc)
        print("cpu backend:", cpu_backend())
    """).replace('"onnx", ', "")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "EngineMismatchError" in done.stdout and "OpenVINO is not installed" in done.stdout
    assert "pip install 'edgeseg[openvino]'" in done.stdout
    assert f"Rebuild it on this machine: {REBUILD}" in done.stdout
    assert "cpu backend: onnxruntime" in done.stdout


def test_openvino_runtime_needs_neither_torch_nor_onnx(models: dict[str, Path],
                                                       engine: Path) -> None:
    """The vehicle installs numpy, OpenCV and openvino: an engine and a plain ONNX file run
    where torch and onnx cannot import (the ONNX metadata comes from OpenVINO's reader)."""
    code = BLOCKER + textwrap.dedent(f"""
        import numpy as np
        from edgeseg.runtime.backends import open_backend
        from edgeseg.runtime.predictor import load_backend
        frame = np.zeros((1, 64, 96, 3), np.uint8)
        with open_backend({str(engine)!r}) as b:
            print("engine", b.name, b.infer(frame).shape)
        with load_backend({str(models["fp32"])!r}, "openvino", threads=1) as b:
            print("onnx", b.name, b.metadata.label_space, b.infer(frame).shape)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "engine openvino (1, 64, 96)" in done.stdout
    assert "onnx openvino cityscapes19 (1, 64, 96)" in done.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sigaltstack and /proc/self/maps")
def test_engines_closed_in_any_order_leave_the_signal_stack_mapped(models: dict[str, Path],
                                                                   engine: Path) -> None:
    """Two engines open, closed first-opened first (as a precision search or a user's code
    may): the thread's alternate signal stack must still be mapped memory afterwards. With a
    Core per engine, OpenVINO's CPU plugin restored the stack it found when its Core was
    freed, leaving it on the other plugin's unmapped stack (memory a later allocation
    reuses and the next signal overwrites: the crashes this guards against)."""
    code = textwrap.dedent(f"""
        import ctypes, faulthandler, gc
        import numpy as np
        from edgeseg.runtime.backends import open_backend
        from edgeseg.runtime.predictor import load_backend

        class Stack(ctypes.Structure):
            _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int),
                        ("size", ctypes.c_size_t)]

        def stack_mapped():
            s = Stack()
            assert ctypes.CDLL(None).sigaltstack(None, ctypes.byref(s)) == 0
            sp = s.sp or 0
            spans = (line.split()[0].split("-") for line in open("/proc/self/maps"))
            return sp == 0 or any(int(a, 16) <= sp < int(b, 16) for a, b in spans)

        faulthandler.enable()  # as pytest and most services do: a signal stack is in use
        frame = np.zeros((1, 64, 96, 3), np.uint8)
        first = open_backend({str(engine)!r})
        second = load_backend({str(models["fp32"])!r}, "openvino", threads=1)
        first.infer(frame), second.infer(frame)
        first.close(); del first; gc.collect()
        second.close(); del second; gc.collect()
        print("mapped", stack_mapped())
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "mapped True" in done.stdout


# ------------------------------------------------------------------ the commands


def test_backend_auto_builds_openvino_for_the_cpu(models: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    if trt_with_gpu():
        pytest.skip("TensorRT and a CUDA GPU are present: auto picks TensorRT here")
    model = tmp_path / "m.onnx"
    model.write_bytes(models["fp32"].read_bytes())
    assert main(["build-engine", str(model), "--threads", "1"]) == 0
    out = tmp_path / "m.ov.blob"  # the default name for the backend auto picked
    manifest = read_manifest(out)
    assert manifest.backend == "openvino" and "--backend openvino" in manifest.build_command
    assert "building an OpenVINO engine for this CPU" in capsys.readouterr().err
    assert main(["build-engine", str(model), "-o", str(tmp_path / "c.ov.blob"), "--device",
                 "cpu", "--threads", "1", "--performance-hint", "throughput",
                 "--infer-requests", "3"]) == 0
    built = read_manifest(tmp_path / "c.ov.blob").build
    assert (built.performance_hint, built.infer_requests) == ("THROUGHPUT", 3)
    assert built.streams == 1  # THROUGHPUT on one thread: one stream


def test_run_bench_and_compare_take_an_openvino_engine(models: dict[str, Path], engine: Path,
                                                        tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    summary = tmp_path / "run.json"
    assert main(["run", str(engine), "--source", "synthetic:night:96x64:10", "--sink", "null",
                 "--summary", str(summary), "--threads", "1", "--infer-requests", "3",
                 "--no-progress", "--backend", "openvino"]) == 0
    info = json.loads(summary.read_text())
    assert info["backend"] == "openvino" and info["frames"]["processed"] == 10
    assert info["miou"] is not None and info["stages_ms"]["infer"]["count"] == 10
    report = tmp_path / "bench"
    assert main(["bench", str(models["fp32"]), str(engine), "--iterations", "3", "--warmup",
                 "1", "--no-parity", "--threads", "1", "--latency-frames", "2", "--report",
                 str(report)]) == 0
    assert "(openvino fp32) batch 1" in capsys.readouterr().out
    bench = json.loads((report / "bench.json").read_text())
    runs_on = {t["kind"]: t["runs_on"] for t in bench["targets"]}
    assert "LATENCY hint, 1 stream(s), 1 threads, f32 outside Q/DQ, 2 infer requests" in \
        runs_on["openvino"]
    assert bench["machine"]["openvino"] == ov.__version__
    assert main(["compare", str(models["fp32"]), str(engine), "--data",
                 "synthetic:night:96x64:4", "--max-frames", "4"]) == 0
    capsys.readouterr()
    assert main(["run", str(engine), "--source", "synthetic:night:96x64:2", "--sink", "null",
                 "--backend", "onnxruntime", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "says it is an OpenVINO engine, not ONNX Runtime; use --backend openvino" in err


def test_bf16_detection_agrees_with_openvino() -> None:
    """`openvino_has_bf16` reads the CPU flags (no Core of its own); it must say what the
    CPU plugin says of itself, and never bf16 for a device that is not the CPU."""
    from edgeseg.export.ov_builder import openvino_has_bf16
    from edgeseg.runtime.ov_core import openvino_core

    caps = openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert openvino_has_bf16("CPU") == ("BF16" in caps)
    assert openvino_has_bf16("cpu") == ("BF16" in caps)
    assert not openvino_has_bf16("GPU.0") and not openvino_has_bf16("NPU")


def test_precision_auto_measures_the_openvino_candidates(models: dict[str, Path],
                                                         tmp_path: Path) -> None:
    from edgeseg.export.ov_builder import openvino_has_bf16
    from edgeseg.export.profile import CalibrationConfig, ParityConfig
    from edgeseg.export.variants import candidate_profile, choose_precision

    profile = BuildProfile(
        backend="openvino", threads=1, precision="auto",
        calibration=CalibrationConfig(data="synthetic:night:96x64:8", frames=8),
        parity=ParityConfig(frames=4, min_agreement=0.5, max_miou_drop=100.0, iterations=3))
    out = tmp_path / "auto.ov.blob"
    manifest = choose_precision(models["fp32"], out, profile, "cmd")
    rows = {r["label"]: r for r in manifest.selection}
    bf16 = {"int8-bf16"} if openvino_has_bf16() else set()
    assert set(rows) == {"fp32", "int8", "int8-ort"} | bf16
    assert (rows["int8"]["flavour"], rows["int8-ort"]["flavour"]) == ("tensorrt", "onnxruntime")
    assert all(r["passed"] and r["latency_ms_p50"] > 0 for r in rows.values())
    assert (tmp_path / "auto.ov.blob.int8.onnx").is_file()  # TensorRT style: Jetson's file too
    assert (tmp_path / "auto.ov.blob.int8-ort.onnx").is_file()
    assert {r["inference_precision"] for k, r in rows.items() if k != "int8-bf16"} == {"f32"}
    if bf16:  # the same int8 file, its layers outside Q/DQ in bf16
        assert rows["int8-bf16"]["inference_precision"] == "bf16"
        assert rows["int8-bf16"]["onnx"] == rows["int8"]["onnx"]
        assert not (tmp_path / "auto.ov.blob.int8-bf16.onnx").exists()
    assert manifest.backend == "openvino"
    winner = min(rows.values(), key=lambda r: r["latency_ms_p50"])
    assert (manifest.precision, manifest.build.inference_precision) == (
        winner["precision"], winner["inference_precision"])
    assert candidate_profile(profile, "int8-bf16").inference_precision == "bf16"
    assert candidate_profile(profile, "int8").inference_precision == "f32"
    assert candidate_profile(profile, "int8").precision is None


def test_shipped_openvino_profiles(models: dict[str, Path], tmp_path: Path) -> None:
    from edgeseg.export.profile import load_profile

    camera = load_profile(REPO / "export" / "cpu-openvino-int8-camera.yaml", {"threads": 1})
    files = load_profile(REPO / "export" / "cpu-openvino-int8-files.yaml", {"threads": 2})
    assert (camera.performance_hint, camera.calibration.flavour) == ("LATENCY", "tensorrt")
    assert files.performance_hint == "THROUGHPUT" and files.infer_requests >= 4
    out = tmp_path / "files.ov.blob"
    manifest = build_engine(models["int8_trt"], out, files, "cmd")
    assert manifest.build.performance_hint == "THROUGHPUT" and manifest.build.streams == 2
    with open_backend(out) as backend:
        assert backend.max_in_flight == files.infer_requests
        assert backend.properties["NUM_STREAMS"] == "2"
