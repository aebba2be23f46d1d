"""Faults a user hits in export / quantize / build-engine / eval / bench, through the real CLI.

Real ONNX Runtime on the tiny models of tests/onnx_models.py, real files, a
real read-only filesystem, a real full tmpfs and a real permission-denied
folder (as an ordinary user inside a user namespace).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from edgeseg.cli import main
from edgeseg.contract.manifest import manifest_path, read_manifest
from edgeseg.contract.metadata import read_metadata
from edgeseg.errors import EdgesegError
from edgeseg.export import build_cli
from edgeseg.export.outputs import stage_of
from edgeseg.export.profile import BuildProfile, CalibrationConfig, ParityConfig
from edgeseg.fileio import OutputError
from edgeseg.labels import CAMVID11, cityscapes_to, remap_labels
from tests.conftest import REPO, cli_env, unprivileged
from tests.onnx_models import block_scene
from tests.test_engine import tiny_models


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_models(tmp_path_factory)


@pytest.fixture(scope="module")
def blocks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Labelled block scenes in CamVid's layout: ``day`` (full brightness) and ``dusk``
    (30 % brightness, outside the 50-100 % the tiny model was trained on)."""
    root = tmp_path_factory.mktemp("blocks")
    mapping = cityscapes_to(CAMVID11)
    for split, dark in (("day", 1.0), ("dusk", 0.3)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        rng = np.random.default_rng(7)
        for i in range(6):
            rgb, label = block_scene(rng, dark=dark)
            cv2.imwrite(str(root / "images" / split / f"b{i}.png"), rgb[..., ::-1])
            cv2.imwrite(str(root / "labels" / split / f"b{i}.png"), remap_labels(label, mapping))
    return root


@pytest.fixture
def model(models: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the fp32 model (tests overwrite files beside it)."""
    dst = tmp_path / "model.onnx"
    shutil.copyfile(models["fp32"], dst)
    return dst


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def cli(*argv: str, user: bool = False, cwd: Path | None = None
        ) -> subprocess.CompletedProcess[str]:
    """The real ``edgeseg`` command in a subprocess (``user``: without root's override)."""
    cmd = [sys.executable, "-m", "edgeseg.cli", *argv]
    return subprocess.run(unprivileged(cmd) if user else cmd, env=cli_env(), cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def one_line(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2 and exactly one stderr line (no traceback) holding every needle."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------ 1. no silent overwrites


def test_build_engine_never_replaces_the_quantize_output(model: Path, blocks: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    tmp = model.parent
    dusk = f"camvid:{blocks}:dusk"
    mine = tmp / "model.int8.onnx"
    assert main(["quantize", str(model), "-o", str(mine), "--precision", "int8",
                 "--calib", dusk, "--calib-frames", "3"]) == 0
    before = md5(mine)
    assert stage_of(mine) == "quantize" and stage_of(model) == "export"
    argv = ["build-engine", str(model), "--profile", str(REPO / "export" / "cpu-int8.yaml"),
            "--calib", dusk, "--calib-frames", "3", "--threads", "1"]
    assert main(argv) == 0
    assert md5(mine) == before  # the user's file is untouched
    variant = tmp / "model.ort.int8.onnx"  # named after the engine, model.ort.onnx
    assert read_metadata(variant).extra["made_by"] == "build-engine"
    assert stage_of(tmp / "model.ort.onnx") == "build-engine"
    assert main(argv) == 0  # rebuilding over its own outputs needs no flag
    capsys.readouterr()
    # -o naming the quantize output: refused, then allowed with --force
    over = ["build-engine", str(model), "-o", str(mine), "--backend", "onnxruntime",
            "--threads", "1"]
    assert main(over) == 2
    err = capsys.readouterr().err
    assert f"{mine} exists and was written by `edgeseg quantize`" in err and "--force" in err
    assert md5(mine) == before
    assert main([*over, "--force"]) == 0 and manifest_path(mine).is_file()
    # the input itself: never, even with --force
    assert main(["build-engine", str(mine), "-o", str(mine), "--backend", "onnxruntime",
                 "--force"]) == 2
    assert "is the input" in capsys.readouterr().err


def test_quantize_and_export_refuse_to_clobber_their_input(model: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    before = md5(model)
    assert main(["quantize", str(model), "-o", str(model), "--precision", "fp16"]) == 2
    assert "is the input of edgeseg quantize" in capsys.readouterr().err
    other = tmp_path / "other.onnx"  # another export's fp32 file
    shutil.copyfile(model, other)
    assert main(["quantize", str(model), "-o", str(other), "--precision", "fp16"]) == 2
    assert "written by `edgeseg export`" in capsys.readouterr().err
    assert md5(model) == md5(other) == before
    half = tmp_path / "model.fp16.onnx"
    assert main(["quantize", str(model), "-o", str(half), "--precision", "fp16"]) == 0
    assert main(["quantize", str(model), "-o", str(half), "--precision", "fp16"]) == 0
    notes = tmp_path / "notes.txt"  # not an edgeseg file at all
    notes.write_text("mine\n")
    assert main(["quantize", str(model), "-o", str(notes), "--precision", "fp16"]) == 2
    assert "is not an edgeseg quantize output" in capsys.readouterr().err
    assert main(["quantize", str(model), "-o", str(model), "--precision", "fp16",
                 "--force"]) == 0
    assert read_metadata(model).precision == "fp16"
    # export checks -o before it reads the checkpoint (a checkpoint-shaped file is enough)
    ckpt = tmp_path / "run.pt"
    ckpt.write_bytes(b"not read")
    assert main(["export", str(ckpt), "-o", str(half), "--skip-parity"]) == 2
    assert "written by `edgeseg quantize`" in capsys.readouterr().err
    assert main(["export", str(ckpt), "-o", str(ckpt), "--skip-parity"]) == 2
    assert "is the input of edgeseg export" in capsys.readouterr().err
    assert ckpt.read_bytes() == b"not read" and notes.read_text() == "mine\n"


def test_default_names_never_collide() -> None:
    from edgeseg.export.build_engine import default_engine_path
    from edgeseg.export.variants import calib_cache_path, variant_path

    for name in ("model.onnx", "model.int8.onnx", "model.fp16.onnx", "model.ort.int8.onnx"):
        src = Path("/x") / name
        taken = {src, src.with_name("model.int8.onnx"), src.with_name("model.fp16.onnx")}
        for backend in ("tensorrt", "onnxruntime"):
            engine = default_engine_path(src, backend)
            made = {engine, variant_path(engine, "int8"), variant_path(engine, "fp16"),
                    calib_cache_path(engine), manifest_path(engine)}
            assert len(made) == 5 and not made & taken, (name, backend, made)


# ------------------------------------------------------------ 2. best scores both domains


def test_best_applies_the_budget_to_calibration_and_accuracy_sets(
        model: Path, blocks: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """int8 calibrated on dusk frames (the onnxruntime flavour, which ONNX Runtime runs fast)
    is within budget on dusk but its ranges clip full-brightness day frames: scored on both
    sets it must fail, and fp32 ships; scored on dusk alone it would have passed."""
    out = tmp_path / "best.ort.onnx"
    dusk, day = f"camvid:{blocks}:dusk", f"camvid:{blocks}:day"
    assert main(["build-engine", str(model), "-o", str(out), "--backend", "onnxruntime",
                 "--precision", "auto", "--calib", dusk, "--calib-frames", "6",
                 "--accuracy-data", day, "--max-miou-drop", "1.5", "--min-agreement", "0",
                 "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "target" in printed and "source" in printed and "rejected int8" in printed
    manifest = read_manifest(out)
    rows = {r["precision"]: r for r in manifest.selection}
    scores = {s["set"]: s for s in rows["int8"]["scores"]}
    assert scores["target"]["data"] == dusk and scores["source"]["data"] == day
    assert scores["target"]["passed"] and scores["target"]["miou_drop"] <= 1.5
    assert not scores["source"]["passed"] and scores["source"]["miou_drop"] > 1.5
    assert not rows["int8"]["passed"] and rows["int8"]["miou_drop"] == \
        scores["source"]["miou_drop"]
    assert manifest.precision == "fp32" and rows["fp32"]["passed"]
    assert "--accuracy-data" in manifest.build_command and "--max-miou-drop 1.5" in \
        manifest.build_command


def test_judge_on_real_scores(models: dict[str, Path], blocks: Path, tmp_path: Path) -> None:
    """The selection rule on real predictions: each set is judged on its own."""
    from edgeseg.export.variants import judge, score_predictions, scoring_sets
    from edgeseg.runtime.predictor import BackendPredictor, load_backend

    sets = scoring_sets(f"camvid:{blocks}:dusk", f"camvid:{blocks}:day", 6, (64, 96))
    assert [s.set for s in sets] == ["target", "source"]
    assert [s.set for s in scoring_sets(sets[0].data, sets[0].data, 2, (64, 96))] == ["target"]
    preds = {}
    for name in ("fp32", "int8"):  # int8: u8 Q/DQ calibrated on 4 bright scenes
        predict = BackendPredictor(load_backend(models[name]))
        preds[name] = [[predict(img) for img in s.images] for s in sets]
    gate = ParityConfig(min_agreement=0.0, max_miou_drop=0.5)
    for i, s in enumerate(sets):
        ref = score_predictions(preds["fp32"][i], s, None, "cityscapes19")
        got = judge(score_predictions(preds["int8"][i], s, preds["fp32"][i], "cityscapes19"),
                    ref, gate)
        assert ref.miou is not None and got.miou is not None
        assert got.miou_drop == pytest.approx(100 * (ref.miou - got.miou))
        assert got.passed == (got.miou_drop <= 0.5)
    strict = judge(score_predictions(preds["int8"][0], sets[0], preds["fp32"][0],
                                     "cityscapes19"), None, ParityConfig(min_agreement=1.01))
    assert strict.miou_drop is None and not strict.passed  # agreement alone decides


# ------------------------------------------------------------ 3. read-only, denied, full


def _commands(model: Path, blocks: Path, out: Path) -> dict[str, list[str]]:
    day = f"camvid:{blocks}:day"
    ckpt = model.with_name("run.pt")
    ckpt.write_bytes(b"checked after -o")
    return {
        "build-engine": ["build-engine", str(model), "-o", str(out / "m.ort.onnx"),
                         "--backend", "onnxruntime", "--threads", "1"],
        "quantize": ["quantize", str(model), "-o", str(out / "m.fp16.onnx"),
                     "--precision", "fp16"],
        "export": ["export", str(ckpt), "-o", str(out / "m.onnx")],
        "eval": ["eval", str(model), "--data", day, "--json", str(out / "eval.json")],
        "bench": ["bench", str(model), "--report", str(out / "report"), "--iterations", "1",
                  "--warmup", "0", "--threads", "1"],
    }


@pytest.mark.parametrize("command", ["build-engine", "quantize", "export", "eval", "bench"])
def test_read_only_output_is_one_line_before_work(command: str, model: Path, blocks: Path,
                                                  readonly_dir: Path) -> None:
    argv = _commands(model, blocks, readonly_dir)[command]
    line = one_line(cli(*argv), str(readonly_dir), "read-only")
    assert line.startswith(f"edgeseg {command}: error: cannot write")
    assert sorted(p.name for p in readonly_dir.iterdir()) == ["existing.txt"]


@pytest.mark.parametrize("command", ["build-engine", "quantize", "eval", "bench"])
def test_permission_denied_output_is_one_line(command: str, model: Path, blocks: Path,
                                              tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    argv = _commands(model, blocks, locked)[command]
    one_line(cli(*argv, user=True), str(locked), "permission denied")
    assert list(locked.iterdir()) == []


def test_eval_overlays_and_plot_are_checked_first(model: Path, blocks: Path,
                                                  readonly_dir: Path) -> None:
    for flag in ("--overlays", "--plot"):
        done = cli("eval", str(model), "--data", f"camvid:{blocks}:day", flag,
                   str(readonly_dir / "x.png"))
        one_line(done, str(readonly_dir / "x.png"), "read-only")
        assert "mIoU" not in done.stdout  # refused before scoring


@pytest.mark.parametrize("command", ["build-engine", "quantize", "eval", "bench"])
def test_full_disk_output_is_one_line(command: str, model: Path, blocks: Path,
                                      small_disk: object) -> None:
    small_disk.fill()  # type: ignore[attr-defined]
    argv = _commands(model, blocks, small_disk.path)[command]  # type: ignore[attr-defined]
    one_line(cli(*argv), str(small_disk.path), "disk is full")  # type: ignore[attr-defined]
    assert [p.name for p in small_disk.path.iterdir()] == [".filler"]  # type: ignore


def test_disk_filling_during_the_build_names_the_engine(model: Path, small_disk: object
                                                        ) -> None:
    """Room for the pre-flight but not for the engine: ONNX Runtime reports a failed write
    as a protobuf error; the user reads a full disk."""
    small_disk.fill(leave=320 << 10)  # type: ignore[attr-defined]
    out = small_disk.path / "m.ort.onnx"  # type: ignore[attr-defined]
    done = cli("build-engine", str(model), "-o", str(out), "--backend", "onnxruntime",
               "--threads", "1")
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert f"cannot write {out}: the disk is full" in last and "Traceback" not in done.stderr
    assert [p.name for p in small_disk.path.iterdir()] == [".filler"]  # type: ignore


# ------------------------------------------------------------ 4. calibration cache and temps


def test_full_disk_during_the_calibration_cache_write(model: Path, blocks: Path,
                                                      small_disk: object) -> None:
    from edgeseg.export.calibration import input_contract, load_frames
    from edgeseg.export.int8 import Int8Quantizer

    frames = load_frames(f"camvid:{blocks}:dusk", input_contract(model), 2)
    small_disk.fill()  # type: ignore[attr-defined]
    cache = small_disk.path / "calib.json"  # type: ignore[attr-defined]
    made = set(Path(tempfile.gettempdir()).glob("edgeseg-int8-*"))
    with pytest.raises(OutputError, match=f"cannot write {cache}: the disk is full"), \
            Int8Quantizer(model, cache=cache) as q:
        q.calibrate(frames)
    assert [p.name for p in small_disk.path.iterdir()] == [".filler"]  # type: ignore
    assert set(Path(tempfile.gettempdir()).glob("edgeseg-int8-*")) == made  # temp folder gone


def test_full_temp_folder_during_calibration(model: Path, blocks: Path, small_disk: object,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeseg.export.variants import make_variant

    monkeypatch.setattr(tempfile, "tempdir", str(small_disk.path))  # type: ignore
    out = model.with_name("q.int8.onnx")
    with pytest.raises(OutputError, match=r"the disk is full .*TMPDIR") as info:
        make_variant(model, out, "int8", calib=f"camvid:{blocks}:dusk", calib_frames=2)
    assert str(small_disk.path) in str(info.value)  # type: ignore[attr-defined]
    assert "\n" not in str(info.value) and not out.exists()
    assert list(small_disk.path.iterdir()) == []  # type: ignore[attr-defined]


def test_quantize_cli_checks_the_cache_before_calibrating(model: Path, blocks: Path,
                                                          readonly_dir: Path) -> None:
    done = cli("quantize", str(model), "-o", str(model.with_name("q.onnx")), "--precision",
               "int8", "--calib", f"camvid:{blocks}:dusk", "--calib-cache",
               str(readonly_dir / "calib.json"))
    one_line(done, str(readonly_dir / "calib.json"), "read-only")
    assert not model.with_name("q.onnx").exists()


# ------------------------------------------------------------ 5. README vs flags


def test_readme_keys_and_flags_match_the_profile_and_parser() -> None:
    from dataclasses import fields, is_dataclass

    text = (REPO / "export" / "README.md").read_text()
    assert "../docs/" not in text  # not in a user's clone
    parser = argparse.ArgumentParser()
    build_cli.add_arguments(parser)
    options = {s for a in parser._actions for s in a.option_strings}
    rows = re.findall(r"^\| `([a-z_.]+)` \| ([^|]+) \|", text, re.M)
    table = dict(rows)
    keys = set()
    for f in fields(BuildProfile):
        sub = {CalibrationConfig: "calibration", ParityConfig: "parity"}
        nested = next((n for t, n in sub.items() if f.name == n), None)
        if nested is not None:
            inner = CalibrationConfig if nested == "calibration" else ParityConfig
            assert is_dataclass(inner)
            keys |= {f"{nested}.{g.name}" for g in fields(inner)}
        else:
            keys.add(f.name)
    assert set(table) == keys
    for key, flags in table.items():
        named = re.findall(r"`(--[a-z-]+)`", flags)
        assert named or "file only" in flags, key
        assert set(named) <= options, (key, named)


def test_gpu_fallback_and_shapes_flags_reach_the_profile(model: Path, tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    build_cli.add_arguments(parser)
    args = parser.parse_args([str(model), "--no-gpu-fallback", "--opt-shapes",
                              "frame:1x64x96x3", "--max-shapes", "4x64x96x3"])
    from edgeseg.export.profile import load_profile

    profile = build_cli._with_shapes(load_profile(None, {"gpu_fallback": args.gpu_fallback}),
                                     args)
    assert profile.gpu_fallback is False
    assert profile.shapes is not None and profile.shapes.as_profile() == {
        "min": [1, 64, 96, 3], "opt": [1, 64, 96, 3], "max": [4, 64, 96, 3]}
    cmd = build_cli.rebuild_command(model, "m.engine", None, {"gpu_fallback": False})
    assert cmd.endswith("--no-gpu-fallback")
    with pytest.raises(EdgesegError, match="four positive dims"):
        build_cli.parse_shape("1x0x3", "--opt-shapes")


# ------------------------------------------------------------ 6. more faults


def test_bad_inputs_are_one_line_each(model: Path, blocks: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(model.read_bytes()[:5000])
    for argv in (["build-engine", str(truncated), "--backend", "onnxruntime"],
                 ["quantize", str(truncated), "-o", str(tmp_path / "t.onnx"),
                  "--precision", "fp16"],
                 ["eval", str(truncated), "--data", f"camvid:{blocks}:day"]):
        one_line(cli(*argv), str(truncated))
    bare = tmp_path / "bare.onnx"  # an ONNX without edgeseg metadata
    proto = onnx.load(str(model))
    del proto.metadata_props[:]
    onnx.save(proto, str(bare))
    for argv in (["build-engine", str(bare), "--backend", "onnxruntime"],
                 ["eval", str(bare), "--data", f"camvid:{blocks}:day"]):
        one_line(cli(*argv), str(bare), "no edgeseg metadata", "edgeseg export")
    empty = tmp_path / "frames"  # --calib pointing at a folder without images
    empty.mkdir()
    one_line(cli("quantize", str(model), "-o", str(tmp_path / "q.onnx"), "--precision", "int8",
                 "--calib", str(empty)), f"{empty}: no images", f"camvid:{empty}:")
    (empty / "images" / "val").mkdir(parents=True)  # a dataset with no images
    one_line(cli("build-engine", str(model), "--backend", "onnxruntime", "--precision", "int8",
                 "--calib", f"camvid:{empty}:val"), "nothing to calibrate with")
    folder = tmp_path / "engine"  # -o naming an existing folder
    folder.mkdir()
    one_line(cli("build-engine", str(model), "-o", str(folder), "--backend", "onnxruntime"),
             f"cannot write {folder}: it is a folder")
    one_line(cli("eval", str(model), "--data", f"camvid:{blocks}:day", "--json", str(folder)),
             "it is a folder")
    one_line(cli("bench", str(model), "--report", str(model)), "it is a file, not a folder")
    bad = tmp_path / "bad.yaml"
    bad.write_text("threads: two\n")
    one_line(cli("build-engine", str(model), "--profile", str(bad)), str(bad), "threads")
    one_line(cli("build-engine", str(model), "--backend", "onnxruntime",
                 "--opt-shapes", "1x64"), "--opt-shapes", "NxHxWxC")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["model.onnx", "truncated.onnx", "bare.onnx", "frames", "engine", "bad.yaml"])


def test_engine_for_another_cpu_is_refused_by_eval(models: dict[str, Path], blocks: Path,
                                                   tmp_path: Path) -> None:
    out = tmp_path / "m.ort.onnx"
    assert main(["build-engine", str(models["fp32"]), "-o", str(out), "--backend",
                 "onnxruntime", "--threads", "1"]) == 0
    data = json.loads(manifest_path(out).read_text())
    data["device"]["arch"] = "aarch64"
    manifest_path(out).write_text(json.dumps(data))
    done = cli("eval", str(out), "--data", f"camvid:{blocks}:day")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "aarch64" in done.stderr and "edgeseg build-engine" in done.stderr
    assert os.path.getsize(out) > 0
