"""mIoU parity of every precision variant against fp32, on labelled sets; fails over budget.

Two models, each scored on the data it was made for:

- synthetic night val, always: a small DeepLabv3+/MobileNet-v2 trained here on
  the generator's night scenes (module fixture, about a minute), so its
  predictions are confident enough for precision losses to mean something;
- CamVid day_val and dusk_train, when ../shared/data/camvid exists (skipped with
  the reason otherwise): the committed CamVid model
  (``results/camvid/source_only.fp32.onnx``) and its committed int8.

Variants of each fp32 ONNX: fp16 and int8 in both flavours (TensorRT Q/DQ, the
file a GPU builds, and ONNX Runtime's Q/DQ), made with the project's converters
and calibrated on the model's target domain (synthetic night train; CamVid
dusk_train, as the committed int8 was). Each data set is scored once by
`edgeseg.bench.parity.check_bench_parity`, the code behind `edgeseg bench --data`:
mIoU, per-class IoU deltas, pixel and boundary-band agreement with fp32. A
variant fails when it loses more mIoU than its precision's budget (fp16 0.1,
int8 1.0 points; ``--max-drop int8=0.5`` or ``EDGESEG_MAX_DROP="fp16=0.2,int8=1.0"``).
Frames per set: EDGESEG_PARITY_FRAMES (default 0 = all). Run:
``pytest benchmarks/test_parity.py``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgeseg.bench.parity import ParityResult, check_bench_parity
from edgeseg.bench.targets import open_target

COMMITTED = Path(__file__).resolve().parent / "results" / "camvid"
VARIANTS = ("fp16", "int8-trtqdq", "int8-ortqdq")
DATA = ("synthetic:night_val", "camvid:day_val", "camvid:dusk_train")
FRAMES = int(os.environ.get("EDGESEG_PARITY_FRAMES", "0"))
THREADS = int(os.environ.get("EDGESEG_BENCH_THREADS", "0"))
SYNTH_SIZE = (128, 256)  # (H, W) of the generator's frames and of the exported model
#: a small night model (about a minute on one core; 21 mIoU on night val, road/building/
#: vegetation/sky/car 50-80 IoU): confident enough that precision losses mean something
SYNTH_RECIPE: dict[str, Any] = {
    "name": "bench_parity_night", "seed": 0,
    "data": {"label_space": "cityscapes19", "crop": [64, 128], "scale_range": [0.5, 1.0],
             "color_jitter": 0.2, "batch_size": 8, "workers": 0},
    "model": {"backbone": "mobilenet_v2", "head": "deeplabv3plus", "separable": True,
              "num_classes": 19, "output_stride": 16, "width_mult": 0.25, "aspp_channels": 32},
    "optim": {"name": "adam", "lr": 0.005, "weight_decay": 0.0001, "schedule": "poly",
              "warmup_iters": 10},
    "train": {"iterations": 400, "val_every": 0, "ckpt_every": 0, "log_every": 100,
              "threads": 1},  # one thread: a shared machine's cores thrash torch's OpenMP
}


def _variants(fp32: Path, out: Path, calib: str, frames: int,
              committed_int8: Path | None = None) -> dict[str, Path]:
    """fp32 and its fp16 / int8 (both flavours) files; a committed int8 is used as is."""
    from edgeseg.export.variants import make_variant

    stem = out / fp32.name.split(".")[0]
    cache = f"{stem}.calib.json"  # one calibration serves both int8 flavours

    def int8(flavour: str, suffix: str) -> Path:
        return make_variant(fp32, f"{stem}.{suffix}.onnx", "int8", calib=calib,
                            calib_frames=frames, flavour=flavour, cache=cache)

    return {"fp32": fp32, "fp16": make_variant(fp32, f"{stem}.fp16.onnx", "fp16"),
            "int8-trtqdq": committed_int8 or int8("tensorrt", "int8"),
            "int8-ortqdq": int8("onnxruntime", "int8-ort")}


@pytest.fixture(scope="module")
def synthetic_model(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The night model, trained and exported (fp32 ONNX at the generator's size)."""
    from edgeseg.config import Recipe, from_dict
    from edgeseg.export.onnx_export import ExportOptions, export_checkpoint
    from edgeseg.train.trainer import Trainer

    out = tmp_path_factory.mktemp("parity-night-model")
    recipe = {**SYNTH_RECIPE, "output_dir": str(out / "run"),
              "data": {**SYNTH_RECIPE["data"], "source": f"synthetic:{synth_root}:night_train",
                       "val": []}}
    import torch

    threads = torch.get_num_threads()
    try:
        assert Trainer(from_dict(Recipe, recipe), progress=False).run() == 0
    finally:
        torch.set_num_threads(threads)  # the recipe's one thread must not leak into later suites
    h, w = SYNTH_SIZE
    fp32 = out / "night.fp32.onnx"
    export_checkpoint(out / "run" / "last.pt", fp32, ExportOptions(height=h, width=w))
    return fp32


@pytest.fixture(scope="module")
def model_files(request: pytest.FixtureRequest, synth_root: Path, camvid_root: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], dict[str, Path]]:
    """Model family ("synthetic" or "camvid") -> its variant files, made on first use."""
    made: dict[str, dict[str, Path]] = {}

    def get(family: str) -> dict[str, Path]:
        if family not in made:
            out = tmp_path_factory.mktemp(f"parity-{family}")
            if family == "camvid":
                if not (camvid_root / "splits" / "dusk_train.txt").is_file():
                    pytest.skip(f"CamVid not found at {camvid_root} (../shared/data/camvid)")
                made[family] = _variants(COMMITTED / "source_only.fp32.onnx", out,
                                         f"camvid:{camvid_root}:dusk_train", 62,
                                         COMMITTED / "source_only.int8.onnx")
            else:
                fp32 = request.getfixturevalue("synthetic_model")
                made[family] = _variants(fp32, out, f"synthetic:{synth_root}:night_train", 64)
        return made[family]

    return get


@pytest.fixture(scope="module")
def parity(model_files: Callable[[str], dict[str, Path]], synth_root: Path, camvid_root: Path,
           max_drop: dict[str, float]) -> Callable[[str], tuple[ParityResult, dict[str, Path]]]:
    """Data name -> (ParityResult, variant files); each data set is scored once."""
    cache: dict[str, tuple[ParityResult, dict[str, Path]]] = {}

    def score(data: str) -> tuple[ParityResult, dict[str, Path]]:
        if data not in cache:
            family, split = data.split(":")
            files = model_files(family)
            root = camvid_root if family == "camvid" else synth_root
            with contextlib.ExitStack() as stack:
                ref, *others = (stack.enter_context(open_target(files[v], threads=THREADS))
                                for v in ("fp32", *VARIANTS))
                result = check_bench_parity(ref, others, f"{family}:{root}:{split}", FRAMES,
                                      max_drop, keep=0)
            cache[data] = (result, files)
        return cache[data]

    return score


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("variant", VARIANTS)
def test_parity(parity: Callable[[str], tuple[ParityResult, dict[str, Path]]], data: str,
                variant: str, bench_rows: dict[str, list[dict[str, Any]]]) -> None:
    result, files = parity(data)
    name = files[variant].name
    row = next(v for v in result.variants if v.name == name)
    ref = result.reference_metrics
    assert ref is not None and row.metrics is not None, f"{data} has no labels"
    band = "n/a" if row.boundary_agreement is None else f"{100 * row.boundary_agreement:.3f}"
    bench_rows["parity"].append({
        "data": data, "variant": variant, "file": name, "frames": result.frames,
        "fp32 mIoU": f"{100 * ref.miou:.2f}", "mIoU": f"{100 * row.metrics.miou:.2f}",
        "drop": f"{row.miou_drop:+.3f}", "budget": row.max_drop,
        "pixel agree %": f"{100 * row.pixel_agreement:.3f}", "boundary agree %": band,
        "verdict": row.verdict})
    worst = sorted((d, c) for c, d in row.iou_delta.items() if d is not None)[:3]
    print(f"\n{variant} on {data} ({result.frames} frames): mIoU {100 * ref.miou:.2f} -> "
          f"{100 * row.metrics.miou:.2f} (drop {row.miou_drop:+.3f}), agreement "
          f"{100 * row.pixel_agreement:.3f} %, boundary {band} %; worst classes "
          + ", ".join(f"{c} {d:+.2f}" for d, c in worst))
    assert row.passed, (f"{variant} ({name}) loses {row.miou_drop:.3f} mIoU points against "
                        f"fp32 on {data}, over its budget of {row.max_drop}")
