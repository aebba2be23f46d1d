"""Inference latency per engine (backend x precision) x head x resolution x batch size.

Engines: PyTorch eager fp32 (the reference), ONNX Runtime fp32 / fp16 / int8
(both int8 flavours: TensorRT Q/DQ, the file a GPU builds, and ONNX Runtime's
own Q/DQ), TensorRT fp32 / fp16 / int8 where TensorRT and a GPU exist (else
skipped with the reason). Heads: DeepLabv3+/MobileNet-v2 with the standard
3x3 ASPP/decoder convs and with the separable-conv deploy variant
(``model.separable: true``, the committed CamVid model's head). Resolutions
480x360 (CamVid) and 1024x512; batch 1 and 4.

Latency does not depend on the weights, so the models are built from scratch
(random init, CamVid's 11 classes) and exported once per head and resolution
with a dynamic batch; every engine runs the full path of `edgeseg bench`
(`edgeseg.bench.targets`): uint8 RGB frame in, class map out, pre- and
post-processing included. pytest-benchmark times each run; ``extra_info`` holds
fps and the per-stage means (preprocess / h2d / infer / d2h / postprocess, as
far as the backend tells them apart). Run: ``pytest benchmarks/test_inference_latency.py``
(``-k "480x360 and batch1"`` for a subset; EDGESEG_BENCH_ROUNDS, EDGESEG_BENCH_THREADS).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import pytest

from edgeseg.bench.targets import TargetSkipped, open_target
from edgeseg.runtime.latency import summarize

RESOLUTIONS = {"480x360": (360, 480), "1024x512": (512, 1024)}  # WxH -> (H, W)
HEADS = ("standard", "separable")
BATCHES = (1, 4)
MAX_BATCH = max(BATCHES)
ENGINES = ("torch-fp32", "ort-fp32", "ort-fp16", "ort-int8-trtqdq", "ort-int8-ortqdq",
           "trt-fp32", "trt-fp16", "trt-int8")
ROUNDS = int(os.environ.get("EDGESEG_BENCH_ROUNDS", "5"))
CALIB_FRAMES = 16  # ranges do not change the speed; enough for a valid int8 graph


class Models:
    """Builds each (head, resolution)'s checkpoint, ONNX variants and engines on first use."""

    def __init__(self, root: Path, calib: str) -> None:
        self.root, self.calib = root, calib
        self.files: dict[tuple[str, str, str], Path] = {}
        self._trt_reason: str | None = None

    def checkpoint(self, head: str) -> Path:
        """A random-init camvid11 DeepLabv3+/MobileNet-v2 checkpoint (architecture only)."""
        key = ("ckpt", head, "")
        if key not in self.files:
            import torch

            from edgeseg.config import ModelConfig, to_dict
            from edgeseg.models import build_model
            from edgeseg.train.checkpoint import FORMAT, save_checkpoint

            cfg = ModelConfig(num_classes=11, separable=head == "separable")
            torch.manual_seed(0)
            path = self.root / f"{head}.pt"
            save_checkpoint(path, {"format": FORMAT, "model_cfg": to_dict(cfg),
                                   "model": build_model(cfg).eval().state_dict(),
                                   "label_space": "camvid11", "mean": [0.485, 0.456, 0.406],
                                   "std": [0.229, 0.224, 0.225], "iteration": 0,
                                   "method": "random-init (latency only)"})
            self.files[key] = path
        return self.files[key]

    def onnx(self, head: str, resolution: str, variant: str) -> Path:
        """fp32 / fp16 / int8-trtqdq / int8-ortqdq ONNX (dynamic batch 1..MAX_BATCH)."""
        key = ("onnx", head, f"{resolution}-{variant}")
        if key in self.files:
            return self.files[key]
        from edgeseg.export.variants import make_variant

        stem = self.root / f"{head}-{resolution}"
        if variant == "fp32":
            from edgeseg.export.onnx_export import ExportOptions, export_checkpoint

            h, w = RESOLUTIONS[resolution]
            path = Path(f"{stem}.fp32.onnx")
            export_checkpoint(self.checkpoint(head), path,
                              ExportOptions(height=h, width=w, dynamic=True,
                                            max_batch=MAX_BATCH))
        elif variant == "fp16":
            path = make_variant(self.onnx(head, resolution, "fp32"), f"{stem}.fp16.onnx", "fp16")
        else:
            flavour = {"int8-trtqdq": "tensorrt", "int8-ortqdq": "onnxruntime"}[variant]
            path = make_variant(self.onnx(head, resolution, "fp32"), f"{stem}.{variant}.onnx",
                                "int8", calib=self.calib, calib_frames=CALIB_FRAMES,
                                flavour=flavour, cache=f"{stem}.calib.json")
        self.files[key] = Path(path)
        return self.files[key]

    def tensorrt(self, head: str, resolution: str, precision: str) -> Path:
        """A TensorRT plan built here from the matching ONNX variant (skips without a GPU)."""
        from edgeseg.runtime.compat import MachineInfo

        if self._trt_reason is None:
            machine = MachineInfo.detect("tensorrt")
            ok = machine.backend_version and machine.device
            self._trt_reason = "" if ok else f"TensorRT not runnable here: {machine.note}"
        if self._trt_reason:
            pytest.skip(self._trt_reason)
        key = ("trt", head, f"{resolution}-{precision}")
        if key not in self.files:
            from edgeseg.export.build_engine import build_engine
            from edgeseg.export.profile import BuildProfile, ShapeRange

            h, w = RESOLUTIONS[resolution]
            onnx = self.onnx(head, resolution, "int8-trtqdq" if precision == "int8" else precision)
            engine = self.root / f"{head}-{resolution}-{precision}.engine"
            shapes = ShapeRange([1, h, w, 3], [1, h, w, 3], [MAX_BATCH, h, w, 3])
            build_engine(onnx, engine, BuildProfile(backend="tensorrt", shapes=shapes),
                         f"benchmarks/test_inference_latency.py ({head} {resolution})")
            self.files[key] = engine
        return self.files[key]

    def path(self, engine: str, head: str, resolution: str) -> Path:
        backend, _, variant = engine.partition("-")
        if backend == "torch":
            return self.checkpoint(head)
        if backend == "trt":
            return self.tensorrt(head, resolution, variant)
        return self.onnx(head, resolution, variant)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, calib_spec: str) -> Models:
    return Models(tmp_path_factory.mktemp("latency-models"), calib_spec)


@pytest.fixture(scope="module")
def frames() -> dict[str, list[Any]]:
    """Four synthetic street scenes per resolution (RGB), cycled through the runs."""
    from edgeseg.runtime.frames import open_frames

    return {res: open_frames(None, 4, size=hw).load()[0] for res, hw in RESOLUTIONS.items()}


@pytest.mark.parametrize("batch", BATCHES, ids=[f"batch{b}" for b in BATCHES])
@pytest.mark.parametrize("resolution", list(RESOLUTIONS))
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("engine", ENGINES)
def test_latency(benchmark: Any, models: Models, frames: dict[str, list[Any]],
                 bench_threads: int, bench_rows: dict[str, list[dict[str, Any]]], engine: str, head: str, resolution: str,
                 batch: int) -> None:
    path = models.path(engine, head, resolution)
    try:
        target = open_target(path, threads=bench_threads, size=RESOLUTIONS[resolution])
    except TargetSkipped as exc:
        pytest.skip(str(exc))
    with target:
        run = target.runner(frames[resolution], batch)
        counter = itertools.count()
        timings: list[dict[str, float]] = []

        def once() -> None:
            timings.append(run(next(counter)))

        benchmark.group = f"{resolution} batch {batch}"
        benchmark.pedantic(once, rounds=ROUNDS, warmup_rounds=1, iterations=1)
        runs_on = target.runs_on
    timed = timings[1:]  # the warm-up round calls once() too
    stages = {s: round(summarize([t[s] for t in timed], batch).mean_ms, 2)
              for s in timed[0] if all(s in t for t in timed)}
    mean_ms = 1e3 * benchmark.stats.stats.mean
    fps = batch * 1e3 / mean_ms
    benchmark.extra_info.update(engine=engine, head=head, resolution=resolution, batch=batch,
                                fps=round(fps, 2), stage_mean_ms=stages, runs_on=runs_on)
    bench_rows["latency"].append({
        "engine": engine, "head": head, "frame": resolution, "batch": batch,
        "mean ms": f"{mean_ms:.1f}", "p50 ms": f"{1e3 * benchmark.stats.stats.median:.1f}",
        "max ms": f"{1e3 * benchmark.stats.stats.max:.1f}", "fps": f"{fps:.2f}",
        "infer ms": stages.get("infer", ""), "runs on": runs_on})
    print(f"\n{engine} {head} {resolution} batch {batch}: {mean_ms:.1f} ms/run, {fps:.2f} fps, "
          f"stages {stages}")
