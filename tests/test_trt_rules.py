"""The decisions around TensorRT that need no GPU: wheels per CUDA major, CUDA error reports,
binding fallback, CUDA-graph invalidation, timing-cache fallback, per-operation error capture,
engine-manifest rules and trusting a plan's embedded code.

Each rule is a plain function or class fed with plain values; what TensorRT or CUDA itself
does with them is checked where they exist (tests/test_gpu.py, the TensorRT tests that skip
here).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from packaging.requirements import Requirement

from edgeseg.contract.manifest import (
    BuildOptions,
    DeviceInfo,
    EngineLoadError,
    EngineManifest,
    EngineMismatchError,
)
from edgeseg.export.build_engine import tensorrt_unusable
from edgeseg.export.profile import EngineBuildError
from edgeseg.export.trt_builder import choose_timing_cache
from edgeseg.runtime.backends import cuda_memory
from edgeseg.runtime.backends.cuda_memory import (
    CudaUnavailableError,
    cuda_error_text,
    driver_hint,
    first_usable,
)
from edgeseg.runtime.backends.tensorrt import (
    TRUST_ENV,
    CudaStage,
    GraphCache,
    LogSink,
    allow_engine_host_code,
)
from edgeseg.runtime.compat import (
    MachineInfo,
    check_compatible,
    compare,
    cuda_build_of,
    cuda_major_from_distributions,
    ensure_compatible,
    tensorrt_build_label,
    tensorrt_version_rule,
)
from tests.conftest import REPO

INSUFFICIENT = ("no usable CUDA binding (cuda-python: cudaGetDeviceCount failed: "
                "cudaErrorInsufficientDriver (35): CUDA driver version is insufficient for CUDA "
                "runtime version; the driver supports CUDA 12.4 but cuda-python is built for "
                "CUDA 13.0: install 'edgeseg[trt-cu12]'; pycuda: No module named 'pycuda'); "
                f"{cuda_memory.INSTALL_HINT}")


# ------------------------------------------------------------------ wheels per CUDA major


def _extras() -> dict[str, list[Requirement]]:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in Python 3.11+")
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return {k: [Requirement(r) for r in v]
            for k, v in data["project"]["optional-dependencies"].items()}


def test_trt_extras_pin_one_cuda_major_each() -> None:
    extras = _extras()
    by_name = {k: {r.name: r for r in reqs} for k, reqs in extras.items()}
    cu12, cu13 = by_name["trt-cu12"], by_name["trt-cu13"]
    assert set(cu12) == {"tensorrt-cu12", "cuda-python"}
    assert set(cu13) == {"tensorrt-cu13", "cuda-python"}
    assert cu12["cuda-python"].specifier.contains("12.9.0")
    assert not cu12["cuda-python"].specifier.contains("13.0.0")  # 13.x needs driver >= 580
    assert cu13["cuda-python"].specifier.contains("13.4.4")
    assert not cu13["cuda-python"].specifier.contains("12.9.0")
    for name in ("tensorrt-cu12", "tensorrt-cu13"):  # edgeseg speaks TensorRT 10 and 11
        spec = (cu12 | cu13)[name].specifier
        assert spec.contains("11.4.0.106") and not spec.contains("12.0.0")
    # `trt` stays as the spelling that works on CUDA-12 and CUDA-13 drivers alike
    assert [str(r) for r in extras["trt"]] == ["edgeseg[trt-cu12]"]
    # the bare `tensorrt` meta-package resolves to the CUDA-13 build: no extra may name it
    assert not any(r.name == "tensorrt" for reqs in extras.values() for r in reqs)


def test_tensorrt_build_label_names_the_cuda_major() -> None:
    assert cuda_major_from_distributions(["tensorrt_cu12", "tensorrt-cu12-libs"]) == 12
    assert cuda_major_from_distributions(["tensorrt-cu13"]) == 13
    assert cuda_major_from_distributions(["tensorrt"]) is None  # JetPack/tar: unknown
    assert cuda_major_from_distributions(["tensorrt-cu12", "tensorrt-cu13"]) is None
    assert tensorrt_build_label("10.13.0.35", 12) == "10.13.0.35+cu12"
    assert tensorrt_build_label("10.3.0", None) == "10.3.0"
    assert cuda_build_of("10.13.0.35+cu12") == 12 and cuda_build_of("10.8.0") is None


# ------------------------------------------------------------------ CUDA errors and bindings


def test_cuda_errors_say_name_code_and_fix() -> None:
    assert cuda_error_text("cudaErrorNoDevice", 100, "no CUDA-capable device is detected") == \
        "cudaErrorNoDevice (100): no CUDA-capable device is detected"
    hint = driver_hint(12040, 13000)
    assert "CUDA 12.4" in hint and "CUDA 13.0" in hint and "edgeseg[trt-cu12]" in hint
    assert driver_hint(13000, 13000) == "" and driver_hint(12080, 12090) == ""  # minor compat
    assert driver_hint(13010, 12090) == ""  # a newer driver runs older runtimes
    assert "no NVIDIA driver" in driver_hint(0, 12090)
    assert driver_hint(None, 13000) == ""


class _Binding:
    """A binding whose probe fails the way a real one reports it, or passes."""

    def __init__(self, name: str, error: str = "") -> None:
        self.name, self.error = name, error

    def probe(self) -> None:
        if self.error:
            raise CudaUnavailableError(self.error)


def test_binding_fallback_probes_instead_of_trusting_an_import() -> None:
    broken = ("cuda-python: cudaGetDeviceCount failed: cudaErrorInsufficientDriver (35): CUDA "
              "driver version is insufficient for CUDA runtime version")
    chosen = first_usable([("cuda-python", lambda: _Binding("cuda-python", broken)),
                           ("pycuda", lambda: _Binding("pycuda"))])
    assert chosen.name == "pycuda"

    def missing() -> _Binding:
        raise ImportError("No module named 'pycuda'")

    with pytest.raises(CudaUnavailableError) as info:
        first_usable([("cuda-python", lambda: _Binding("cuda-python", broken)),
                      ("pycuda", missing)])
    text = str(info.value)
    assert "cudaErrorInsufficientDriver (35)" in text and "pycuda: No module named" in text
    assert "edgeseg[trt-cu12]" in text and "edgeseg[trt-cu13]" in text


def test_auto_backend_refuses_to_hide_a_broken_cuda_setup() -> None:
    broken = MachineInfo("tensorrt", "11.4.0.106+cu13", None, INSUFFICIENT)
    with pytest.raises(EngineBuildError, match=r"installed but CUDA fails: .*"
                                               r"cudaErrorInsufficientDriver \(35\).*--device cpu"):
        tensorrt_unusable(broken)
    assert "cudaErrorInsufficientDriver (35)" in broken.describe()
    no_gpu = MachineInfo("tensorrt", "10.8.0", None, "no usable CUDA binding (cuda-python: "
                         "cudaGetDeviceCount failed: cudaErrorNoDevice (100): no CUDA-capable "
                         "device is detected)")
    assert "cudaErrorNoDevice (100)" in tensorrt_unusable(no_gpu)
    assert tensorrt_unusable(MachineInfo("tensorrt", None, None, "")) == \
        "TensorRT is not installed"
    ok = MachineInfo("tensorrt", "10.8.0", DeviceInfo("gpu", "H100", "sm_90", "x86_64"))
    assert tensorrt_unusable(ok) == ""


# ------------------------------------------------------------------ CUDA graphs per shape


def test_graph_cache_drops_graphs_when_the_shape_changes() -> None:
    cache = GraphCache()
    assert cache.use_shape((1, 64, 96, 3)) == []
    assert cache.plan(0) == "capture"
    cache.store(0, "g0")
    cache.store(1, "g1")
    assert (cache.plan(0), cache.plan(1)) == ("launch", "launch")
    assert cache.use_shape((1, 64, 96, 3)) == []  # same shape: the graphs stay valid
    assert sorted(cache.use_shape((2, 64, 96, 3))) == ["g0", "g1"]  # stale: caller destroys
    assert cache.plan(0) == "capture" and cache.graphs == {}
    cache.store(0, "g2")
    assert cache.use_shape((1, 64, 96, 3)) == ["g2"]  # going back captures again too
    assert cache.plan(0) == "capture"


def test_graph_cache_remembers_failed_shapes() -> None:
    cache = GraphCache()
    cache.use_shape((1, 8, 8, 3))
    cache.fail("operation not permitted when stream is capturing")
    assert cache.plan(0) == cache.plan(1) == "plain"
    cache.use_shape((2, 8, 8, 3))
    assert cache.plan(0) == "capture"  # another shape may capture
    cache.store(0, "g")
    assert cache.clear() == ["g"] and cache.graphs == {}


def test_stage_rejects_an_unknown_sync_mode() -> None:
    with pytest.raises(ValueError, match="'blocking'.*'spin'"):
        CudaStage(None, None, {}, "frame", "labels", (1, 8, 8, 3),  # type: ignore[arg-type]
                  dynamic=False, sync="poll")  # type: ignore[arg-type]


# ------------------------------------------------------------------ timing cache


class _Config:
    """What `choose_timing_cache` is given by the builder: create/attach callables."""

    def __init__(self, readable: bool = True, matches: bool = True) -> None:
        self.readable, self.matches = readable, matches
        self.attached: list[object] = []

    def create(self, data: bytes) -> object:
        if data and not self.readable:
            return None
        return ("cache", bytes(data))

    def attach(self, cache: object) -> bool:
        ok = self.matches or cache == ("cache", b"")
        if ok:
            self.attached.append(cache)
        return ok


def test_timing_cache_fallbacks_name_the_file() -> None:
    good = _Config()
    assert choose_timing_cache(b"old", good.create, good.attach, "t.cache") == \
        (("cache", b"old"), "")
    corrupt = _Config(readable=False)
    cache, warning = choose_timing_cache(b"garbage", corrupt.create, corrupt.attach, "t.cache")
    assert cache == ("cache", b"") and corrupt.attached == [("cache", b"")]
    assert warning.startswith("warning: timing cache t.cache: TensorRT cannot read it")
    foreign = _Config(matches=False)
    cache, warning = choose_timing_cache(b"other", foreign.create, foreign.attach, "t.cache")
    assert cache == ("cache", b"") and "another GPU or TensorRT version" in warning

    def raises(data: bytes) -> object:
        if data:
            raise TypeError("incompatible function arguments")
        return ("cache", b"")

    cache, warning = choose_timing_cache(b"x", raises, good.attach, "t.cache")
    assert cache == ("cache", b"") and "TypeError" in warning
    assert choose_timing_cache(b"", good.create, good.attach, "t.cache") == (("cache", b""), "")
    with pytest.raises(EngineBuildError, match="t.cache: TensorRT could not create"):
        choose_timing_cache(b"", lambda data: None, good.attach, "t.cache")


# ------------------------------------------------------------------ one logger, errors per step


def test_log_sink_captures_errors_per_operation(capsys: pytest.CaptureFixture[str]) -> None:
    sink = LogSink()
    sink.handle(1, "ERROR", "before any operation")
    with sink.capture() as parse:
        sink.handle(1, "ERROR", "parse: node conv_1 failed")
        sink.handle(2, "WARNING", "a warning is no error")
    with sink.capture() as build:
        pass
    assert parse.errors == ["parse: node conv_1 failed"]
    assert build.errors == [] and "no error logged" in build.text()  # no stale quote
    with sink.capture() as outer, sink.capture() as inner:
        sink.handle(0, "INTERNAL_ERROR", "both see it")
    assert outer.errors == inner.errors == ["both see it"]
    err = capsys.readouterr().err
    assert "[TensorRT] WARNING: a warning is no error" in err
    sink.handle(3, "INFO", "quiet by default")
    sink.limit = 4
    sink.handle(3, "INFO", "printed when verbose")
    err = capsys.readouterr().err
    assert "quiet by default" not in err and "printed when verbose" in err


def test_one_trt_logger_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeseg.runtime.backends import tensorrt as backend

    class ILogger:  # stand-in base class: what is checked is that edgeseg makes one logger
        def __init__(self) -> None:
            pass

    monkeypatch.setattr(backend, "_LOGGER", None)
    trt = SimpleNamespace(ILogger=ILogger)
    first = backend.trt_logger(trt)
    assert backend.trt_logger(trt, verbose=True) is first and backend._SINK.limit == 4
    assert backend.trt_logger(trt) is first and backend._SINK.limit == 2


# ------------------------------------------------------------------ engine manifests


def _manifest(version: str = "10.8.0", arch: str = "aarch64", cc: str = "sm_87",
              **build: object) -> EngineManifest:
    return EngineManifest(
        backend="tensorrt", backend_version=version, device=DeviceInfo("gpu", "Orin", cc, arch),
        precision="int8", inputs=[], outputs=[], onnx_sha256="0" * 64, engine_sha256="1" * 64,
        build_command="edgeseg build-engine m.onnx -o m.engine --backend tensorrt",
        build=BuildOptions(**build))  # type: ignore[arg-type]


def _machine(version: str, arch: str = "aarch64", cc: str = "sm_87",
             name: str = "Orin") -> MachineInfo:
    return MachineInfo("tensorrt", version, DeviceInfo("gpu", name, cc, arch))


def test_version_compatible_plans_follow_nvidias_rules() -> None:
    assert tensorrt_version_rule("10.8.0", "10.8.0.43", False) == ""
    assert "only on the TensorRT version that built it" in \
        tensorrt_version_rule("10.8.0", "10.9.0", False)
    assert tensorrt_version_rule("10.8.0", "10.16.1", True) == ""
    assert tensorrt_version_rule("10.8.0", "11.4.0", True) == ""  # 10 -> 11: documented
    assert "older TensorRT" in tensorrt_version_rule("10.8.0", "10.7.0", True)
    assert "older TensorRT" in tensorrt_version_rule("11.1.0", "10.16.1", True)
    assert tensorrt_version_rule("10.8.0", "12.0.0", True)  # no other cross-major pair
    versioned = _manifest(version_compatible=True)
    assert check_compatible(versioned, _machine("11.4.1")) == []
    assert check_compatible(_manifest(), _machine("11.4.1"))


def test_platform_and_compute_capability_are_compared() -> None:
    plan = _manifest()
    errors = check_compatible(plan, _machine("10.8.0", arch="x86_64"))
    assert any("platform: engine built on aarch64, this machine is x86_64" in e for e in errors)
    assert check_compatible(_manifest(arch=""), _machine("10.8.0", arch="x86_64")) == []
    assert any("compute capability: engine sm_87, this machine sm_72" in e
               for e in check_compatible(plan, _machine("10.8.0", cc="sm_72")))
    ampere = _manifest(arch="x86_64", cc="sm_86", hardware_compatibility="ampere_plus")
    assert check_compatible(ampere, _machine("10.8.0", "x86_64", "sm_90", "H100")) == []
    assert check_compatible(ampere, _machine("10.8.0", "x86_64", "sm_75", "T4"))


def test_cuda_build_difference_warns() -> None:
    plan = _manifest("10.13.2.6+cu12")
    errors, warnings = compare(plan, _machine("10.13.2.6+cu13"))
    assert errors == [] and "CUDA-12 build" in warnings[0] and "CUDA-13 build" in warnings[0]
    assert compare(plan, _machine("10.13.2.6+cu12")) == ([], [])
    assert compare(_manifest("10.13.2.6"), _machine("10.13.2.6+cu13")) == ([], [])
    with pytest.raises(EngineMismatchError, match=r"TensorRT 10\.13\.2\.6\+cu12 on sm_87"):
        ensure_compatible(plan, _machine("10.14.1+cu12"), "m.engine")


def test_embedded_runtime_needs_the_users_trust() -> None:
    path = Path("m.engine")
    assert allow_engine_host_code(path, _manifest(), None, {}) is False  # nothing to trust
    versioned = _manifest(version_compatible=True)
    with pytest.raises(EngineLoadError) as info:
        allow_engine_host_code(path, versioned, None, {})
    text = str(info.value)
    assert text.startswith("m.engine: ") and TRUST_ENV in text and "\n" not in text
    assert "trust_engine_code=True" in text and "--version-compatible" in text
    assert allow_engine_host_code(path, versioned, True, {}) is True
    assert allow_engine_host_code(path, versioned, None, {TRUST_ENV: "1"}) is True
    with pytest.raises(EngineLoadError):  # an explicit no wins over the environment
        allow_engine_host_code(path, versioned, False, {TRUST_ENV: "1"})
