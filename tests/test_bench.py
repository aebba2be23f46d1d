"""`edgeseg bench`: latency statistics, targets, parity verdicts, reports, CLI errors.

Real ONNX Runtime on tiny exported models (tests/onnx_models.py), scored on a
small CamVid-layout set of block scenes written here, so parity has labels
and a model that is right about them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeseg.bench import cli as bench_cli
from edgeseg.bench.parity import DEFAULT_MAX_DROP, check_bench_parity, parse_max_drop
from edgeseg.bench.targets import TargetSkipped, open_target
from edgeseg.cli import main
from edgeseg.contract.metadata import metadata_of, set_metadata
from edgeseg.errors import EdgesegError
from edgeseg.labels import CAMVID11, cityscapes_to, remap_labels
from edgeseg.runtime.latency import (
    END_TO_END,
    interleaved_latency,
    measure,
    summarize,
    time_stages,
)
from tests.onnx_models import SIZE, block_scene, export_tiny

H, W = SIZE


# ------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained segmenter, dynamic batch: uint8 BGR frame in, uint8 labels out."""
    return export_tiny(tmp_path_factory.mktemp("bench") / "tiny.fp32.onnx", train_steps=30,
                       dynamic_batch=True)


def _variant(src: Path, dst: Path, precision: str, noise: float = 0.0) -> Path:
    """A copy of ``src`` labelled ``precision``; ``noise`` perturbs every conv weight
    (relative), which is what a badly quantised engine looks like from outside."""
    model = onnx.load(str(src))
    if noise:
        rng = np.random.default_rng(0)
        for init in model.graph.initializer:
            w = numpy_helper.to_array(init)
            if w.dtype == np.float32 and w.ndim == 4:
                w = w + rng.normal(0, noise * (float(w.std()) + 1e-6), w.shape).astype(np.float32)
                init.CopyFrom(numpy_helper.from_array(w, init.name))
    meta = metadata_of(model)
    meta.precision = precision
    set_metadata(model, meta)
    onnx.save(model, str(dst))
    return dst


@pytest.fixture(scope="module")
def same_int8(fp32: Path) -> Path:
    return _variant(fp32, fp32.with_name("same.int8.onnx"), "int8")


@pytest.fixture(scope="module")
def bad_int8(fp32: Path) -> Path:
    return _variant(fp32, fp32.with_name("bad.int8.onnx"), "int8", noise=1.0)


@pytest.fixture(scope="module")
def blocks(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Six labelled block scenes in CamVid's layout (the model's classes map into CamVid)."""
    root = tmp_path_factory.mktemp("blocks")
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    rng = np.random.default_rng(7)
    mapping = cityscapes_to(CAMVID11)
    for i in range(6):
        rgb, label = block_scene(rng, dark=rng.uniform(0.6, 1.0))
        cv2.imwrite(str(root / "images" / "val" / f"b{i}.png"), rgb[..., ::-1])
        cv2.imwrite(str(root / "labels" / "val" / f"b{i}.png"), remap_labels(label, mapping))
    return f"camvid:{root}:val"


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_cli.add_arguments(parser)
    return parser.parse_args(argv)


# ------------------------------------------------------------------- latency


def test_latency_stats_on_a_known_sequence() -> None:
    s = summarize([float(v) for v in range(1, 101)])
    assert (s.count, s.min_ms, s.max_ms) == (100, 1.0, 100.0)
    assert s.mean_ms == pytest.approx(50.5)
    assert s.p50_ms == pytest.approx(50.5)
    assert s.p90_ms == pytest.approx(90.1)
    assert s.p99_ms == pytest.approx(99.01)
    assert s.fps == pytest.approx(1000 / 50.5)
    assert summarize([10.0, 30.0], batch=4).fps == pytest.approx(200.0)  # 4 frames per 20 ms
    with pytest.raises(ValueError):
        summarize([])


def test_time_stages_keeps_reported_stages_and_drops_partial_ones() -> None:
    seen: list[int] = []

    def run(i: int) -> dict[str, float]:
        seen.append(i)
        return {"infer": float(i), **({"h2d": 1.0} if i % 2 else {})}

    result = time_stages(run, warmup=2, iterations=5)
    assert seen == list(range(7))  # warm-up runs happen, untimed
    assert result.stats["infer"].count == 5
    assert result.stats["infer"].mean_ms == pytest.approx(4.0)  # iterations 2..6
    assert "h2d" not in result.stats  # reported by some runs only
    assert len(result.times_ms) == 5 and result.total is result.stats[END_TO_END]


def test_interleaved_latency_rotates_and_is_shared_with_build_engine() -> None:
    from edgeseg.export import variants

    assert variants.interleaved_latency is interleaved_latency
    calls: list[int] = []
    fns = [lambda image, k=k: calls.append(k) for k in range(3)]
    stats = interleaved_latency(fns, np.ones((2, 2)), iterations=4, rounds=2, warmup=1)
    # round 1 in order, one warm-up call + 2 timed each; round 2 starts one further along
    assert calls == [0, 0, 0, 1, 1, 1, 2, 2, 2, 1, 1, 2, 2, 0, 0]
    assert len(stats) == 3 and all(p50 >= 0 and mean >= 0 for p50, mean in stats)
    calls.clear()
    interleaved_latency(fns[:2], np.ones((2, 2)), iterations=3, rounds=5, warmup=0)
    assert calls == [0, 1, 1, 0, 0, 1]  # rounds capped at the calls: one call per round


def test_onnx_target_splits_stages_and_runs_batches(fp32: Path) -> None:
    rng = np.random.default_rng(1)
    frames = [block_scene(rng)[0] for _ in range(3)]
    with open_target(fp32, threads=1) as target:
        assert (target.kind, target.precision, target.size) == ("onnxruntime", "fp32", SIZE)
        assert target.max_batch is None  # dynamic batch
        one = measure(target, frames, batch=1, warmup=1, iterations=3)
        two = measure(target, frames, batch=2, warmup=1, iterations=3)
        assert target.predict(frames[0]).shape == (H, W)
    for res in (one, two):
        assert {"preprocess", "infer", "postprocess", END_TO_END} <= set(res.stats)
        parts = sum(res.stats[s].mean_ms for s in ("preprocess", "infer", "postprocess"))
        assert parts <= res.total.mean_ms * 1.01  # the stages lie inside the wall clock
    assert two.total.batch == 2 and two.total.fps == pytest.approx(2000 / two.total.mean_ms)


def test_fixed_batch_model_skips_larger_batches(tmp_path: Path) -> None:
    model = export_tiny(tmp_path / "fixed.onnx")
    with open_target(model, threads=1) as target:
        assert target.max_batch == 1
        with pytest.raises(TargetSkipped, match="--dynamic --max-batch 4"):
            target.runner([np.zeros((H, W, 3), np.uint8)], 4)


def test_checkpoint_target_runs_torch_eager_with_stages(tmp_path: Path) -> None:
    import torch

    from edgeseg.config import ModelConfig, to_dict
    from edgeseg.models import build_model
    from edgeseg.train.checkpoint import FORMAT, save_checkpoint

    cfg = ModelConfig(width_mult=0.25, separable=True, aspp_channels=32, num_classes=19)
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(ckpt, {"format": FORMAT, "model_cfg": to_dict(cfg),
                           "model": build_model(cfg).state_dict(), "label_space": "cityscapes19",
                           "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                           "iteration": 0})
    frames = [np.zeros((48, 80, 3), np.uint8)]
    threads = torch.get_num_threads()
    try:
        with open_target(ckpt, threads=1, size=(32, 64)) as target:
            assert (target.kind, target.precision) == ("torch", "fp32")
            assert target.predict(frames[0]).shape == (48, 80)  # back at the frame's size
            for batch in (1, 2):
                res = measure(target, frames, batch, warmup=1, iterations=2)
                assert {"preprocess", "infer", "postprocess"} <= set(res.stats)
    finally:
        torch.set_num_threads(threads)


# -------------------------------------------------------------------- parity


def test_parse_max_drop() -> None:
    assert parse_max_drop([]) == DEFAULT_MAX_DROP
    assert parse_max_drop(["int8=0.5", "FP16=0"])["int8"] == 0.5
    for bad in ("int8", "int8=x", "=1", "int8=-1"):
        with pytest.raises(EdgesegError, match="PRECISION=POINTS"):
            parse_max_drop([bad])


def test_parity_passes_an_identical_variant_and_fails_a_degraded_one(
        fp32: Path, same_int8: Path, bad_int8: Path, blocks: str) -> None:
    with open_target(fp32, threads=1) as ref, open_target(same_int8, threads=1) as same, \
            open_target(bad_int8, threads=1) as bad:
        result = check_bench_parity(ref, [same, bad], blocks, keep=2)
    assert result.labelled and result.frames == 6 and len(result.samples) == 2
    assert result.reference_metrics is not None and result.reference_metrics.miou > 0.3
    ok, broken = result.variants
    assert ok.pixel_agreement == 1.0 and ok.boundary_agreement == 1.0
    assert ok.miou_drop == pytest.approx(0.0) and ok.passed is True
    assert all(d in (None, 0.0) for d in ok.iou_delta.values())
    assert broken.miou_drop > 1.0 and broken.passed is False and broken.max_drop == 1.0
    assert broken.pixel_agreement < 0.99
    assert not result.passed


def test_parity_threshold_is_configurable(fp32: Path, bad_int8: Path, blocks: str) -> None:
    with open_target(fp32, threads=1) as ref, open_target(bad_int8, threads=1) as bad:
        result = check_bench_parity(ref, [bad], blocks, max_images=3,
                              max_drop=parse_max_drop(["int8=100"]))
    assert result.frames == 3 and result.passed


# ----------------------------------------------------------------- CLI, report


def test_cli_writes_json_markdown_and_plots(fp32: Path, same_int8: Path, bad_int8: Path,
                                            blocks: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    status = bench_cli.run(_args([str(fp32), str(same_int8), str(bad_int8), "--data", blocks,
                                  "--report", str(out), "--iterations", "3", "--warmup", "1",
                                  "--batch", "1,2", "--threads", "1", "--latency-frames", "2"]))
    assert status == 1  # the degraded variant fails its budget
    printed = capsys.readouterr().out
    assert "PARITY FAILED" in printed and "p99" in printed and "bad.int8.onnx" in printed
    names = {p.name for p in out.iterdir()}
    assert {"bench.json", "bench.md", "latency-hist.png", "fps.png",
            "overlays-camvid-val.png", "iou-delta-camvid-val-bad.int8.onnx.png"} <= names
    assert not [n for n in names if n.startswith(".")]  # no temp files left behind
    data = json.loads((out / "bench.json").read_text())
    assert data["command"].startswith("edgeseg bench ") and "--batch 1,2" in data["command"]
    assert data["machine"]["cpu"]["logical_cores"] >= 1
    rows = {(r["target"], r["batch"]) for r in data["latency"]}
    assert rows == {(n, b) for n in ("tiny.fp32.onnx", "same.int8.onnx", "bad.int8.onnx")
                    for b in (1, 2)}
    stats = data["latency"][0]["stats"]
    assert {"end_to_end", "infer"} <= set(stats) and stats["end_to_end"]["count"] == 3
    verdicts = {v["name"]: v["passed"] for v in data["parity"][0]["variants"]}
    assert verdicts == {"same.int8.onnx": True, "bad.int8.onnx": False}
    md = (out / "bench.md").read_text()
    assert data["command"] in md and "| bad.int8.onnx | int8 |" in md and "FAIL" in md
    for png in ("latency-hist.png", "fps.png", "overlays-camvid-val.png"):
        assert cv2.imread(str(out / png)) is not None


def test_parity_only_report_and_same_named_engines(fp32: Path, same_int8: Path, blocks: str,
                                                   tmp_path: Path) -> None:
    twin = tmp_path / "twin" / same_int8.name  # another file with the same name
    twin.parent.mkdir()
    twin.write_bytes(same_int8.read_bytes())
    out = tmp_path / "report"
    assert bench_cli.run(_args([str(fp32), str(same_int8), str(twin), "--data", blocks,
                                "--report", str(out), "--no-latency", "--threads", "1",
                                "--max-frames", "2"])) == 0
    data = json.loads((out / "bench.json").read_text())
    assert data["latency"] == [] and data["parity_passed"] is True
    assert [v["name"] for v in data["parity"][0]["variants"]] == [same_int8.name, str(twin)]
    assert "latency-hist.png" not in {p.name for p in out.iterdir()}
    assert "## Parity" in (out / "bench.md").read_text()


def test_report_failure_keeps_the_previous_report(fp32: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeseg.bench import report

    out = tmp_path / "report"
    out.mkdir()
    (out / "bench.json").write_text("previous")

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(report, "plot_fps", broken)
    with pytest.raises(OSError):
        bench_cli.run(_args([str(fp32), "--report", str(out), "--iterations", "2",
                             "--warmup", "0", "--threads", "1", "--latency-frames", "1"]))
    assert (out / "bench.json").read_text() == "previous"
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "latency-hist.png"]


def test_cli_errors_name_the_missing_engine(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.onnx"
    assert main(["bench", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "no such engine" in err
    assert main(["bench", str(tmp_path), "--no-parity"]) == 2
    assert "folder" in capsys.readouterr().err


def test_cli_rejects_bad_options(fp32: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", str(fp32), "--batch", "0"])
    assert main(["bench", str(fp32), "--max-drop", "int8"]) == 2
    assert "PRECISION=POINTS" in capsys.readouterr().err
    assert main(["bench", str(fp32), "--data", "nosuchset:/x:val", "--iterations", "1"]) == 2


def _trt_engine(tmp_path: Path, fp32: Path) -> Path:
    """A TensorRT plan with its manifest, as build-engine writes them on a GPU machine."""
    from edgeseg.contract.manifest import DeviceInfo, EngineManifest, write_manifest
    from edgeseg.contract.metadata import read_metadata
    from edgeseg.fileio import sha256_file

    engine = tmp_path / "tiny.engine"
    engine.write_bytes(b"not a real plan: never deserialised on a machine without TensorRT")
    meta = read_metadata(fp32)
    manifest = EngineManifest(
        backend="tensorrt", backend_version="10.8.0",
        device=DeviceInfo("gpu", "Orin", "sm_87", "aarch64"), precision="fp16",
        inputs=meta.inputs, outputs=meta.outputs, onnx_sha256=sha256_file(fp32),
        engine_sha256=sha256_file(engine), build_command=f"edgeseg build-engine {fp32}",
        metadata=meta.to_props())
    write_manifest(manifest, engine)
    return engine


def test_tensorrt_engine_is_skipped_with_the_reason(fp32: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from edgeseg.runtime.compat import MachineInfo

    machine = MachineInfo.detect("tensorrt")
    if machine.backend_version and machine.device:
        pytest.skip(f"TensorRT and a GPU are here ({machine.describe()}): nothing to skip")
    engine = _trt_engine(tmp_path, fp32)
    with pytest.raises(TargetSkipped, match="TensorRT engine not run here"):
        open_target(engine)
    out = tmp_path / "report"
    status = bench_cli.run(_args([str(fp32), str(engine), "--report", str(out),
                                  "--iterations", "2", "--warmup", "0", "--threads", "1",
                                  "--latency-frames", "1"]))
    assert status == 0
    data = json.loads((out / "bench.json").read_text())
    assert [r["target"] for r in data["latency"]] == ["tiny.fp32.onnx"]  # no number for it
    assert data["skipped"][0]["target"] == "tiny.engine"
    assert "TensorRT" in data["skipped"][0]["reason"]
    assert "tiny.engine" in (out / "bench.md").read_text()
    assert main(["bench", str(engine)]) == 2  # nothing left to measure
    assert "every engine was skipped" in capsys.readouterr().err


def test_machine_description_is_complete() -> None:
    from edgeseg.bench.machine import describe_machine, detect_machine

    info = detect_machine()
    assert info["cpu"]["model"] and info["cpu"]["logical_cores"] >= 1
    assert info["versions"]["edgeseg"] and "onnxruntime" in info
    lines = describe_machine(info)
    assert lines[0].startswith("CPU: ") and any(line.startswith("GPU: ") for line in lines)
