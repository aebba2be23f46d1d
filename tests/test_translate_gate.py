"""The mean-luma gate in front of a translator (`run/eval --translate-below`) and the script
that picks its threshold (benchmarks/luma_gate.py). Real ONNX Runtime engines, real PNG
folders streamed by the runtime."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeseg.argtypes import parse_luma
from edgeseg.errors import EdgesegError
from edgeseg.runtime.backends.onnxruntime import OrtBackend
from edgeseg.runtime.run_cli import StreamConfig, run_stream
from edgeseg.runtime.sources import open_source
from edgeseg.runtime.stages import Packet, SegmentStage, TranslateStage, mean_luma
from tests.conftest import benchmark_script
from tests.onnx_models import SIZE, block_scene, export_tiny

BELOW = 96.0


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A trained tiny segmenter and an image-inverting translator (so a translated frame's
    labels differ from the camera frame's)."""
    import torch

    from edgeseg.export.onnx_export import export_translator

    class Invert(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return -x

    root = tmp_path_factory.mktemp("gate")
    translator = root / "invert.onnx"
    export_translator(Invert(), translator, SIZE, simplify=False)
    return export_tiny(root / "seg.onnx", train_steps=30), translator


@pytest.fixture(scope="module")
def drive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[bool]]:
    """PNG frames alternating dusk-dark (luma < 64) and day-bright (luma >= 128)."""
    root = tmp_path_factory.mktemp("drive")
    rng = np.random.default_rng(3)
    dark = []
    for i in range(6):
        rgb, _ = block_scene(rng)
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        bgr = (bgr // 4) if i % 2 == 0 else (bgr // 2 + 128)
        cv2.imwrite(str(root / f"{i:03d}.png"), bgr.astype(np.uint8))
        dark.append(mean_luma(bgr.astype(np.uint8)) < BELOW)
    assert dark == [True, False] * 3
    return root, dark


def test_mean_luma_by_hand() -> None:
    # BT.601 on B, G, R = 10, 20, 30: 0.114*10 + 0.587*20 + 0.299*30 = 21.88 -> 22 per pixel
    assert mean_luma(np.full((4, 6, 3), (10, 20, 30), np.uint8)) == 22.0
    # half the rows black, half white (255): mean 127.5; channel order matters
    frame = np.zeros((4, 2, 3), np.uint8)
    frame[2:] = 255
    assert mean_luma(frame) == 127.5
    assert mean_luma(np.full((2, 2, 3), (255, 0, 0), np.uint8)) == 29.0  # blue: 0.114*255


def test_gated_stream_translates_only_dark_frames(engines: tuple[Path, Path],
                                                  drive: tuple[Path, list[bool]],
                                                  tmp_path: Path) -> None:
    seg_onnx, translator = engines
    folder, dark = drive
    labels = tmp_path / "labels"
    summary = run_stream(seg_onnx, StreamConfig(
        source=str(folder), sinks=[f"labels:{labels}"], translator=str(translator),
        translate_below=BELOW, progress=False, threads=1))
    assert summary.counts.processed == 6
    assert summary.gate == {"below": BELOW, "translated": 3, "passed": 3, "source": "flag"}
    assert summary.to_dict()["translate_gate"] == summary.gate
    assert "translated 3 frames (mean luma below 96), passed 3 through" in summary.format()
    assert summary.stages["gate"].count == 6  # every frame is measured ...
    assert summary.stages["translate"].count == 3  # ... and only the dark ones translated
    seg = SegmentStage(OrtBackend.from_onnx(seg_onnx, intra_op_threads=1))
    source = open_source(str(folder))
    differs = []
    for i, is_dark in enumerate(dark):
        frame = source.read()
        raw = seg.process(Packet(frame, frame.image)).labels
        inverted = seg.process(Packet(frame, 255 - frame.image)).labels
        got = cv2.imread(str(labels / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        assert (got == (inverted if is_dark else raw)).mean() > 0.999
        differs.append((raw != inverted).mean() > 0.01)
    assert any(differs)  # inverting changes the labels: the routing is visible


def test_gate_direct_on_the_stage(engines: tuple[Path, Path]) -> None:
    """A frame at exactly the threshold passes (strictly below translates)."""
    _, translator = engines
    stage = TranslateStage(OrtBackend.from_onnx(translator, intra_op_threads=1), below=22.0)
    from edgeseg.runtime.sources import SourceFrame

    at = np.full((SIZE[0], SIZE[1], 3), (10, 20, 30), np.uint8)  # luma 22
    packet = stage.process(Packet(SourceFrame(0, at, 0.0), at))
    assert packet.frame is at and "translate" not in packet.timings and "gate" in packet.timings
    darker = at - 1  # luma 21
    packet = stage.process(Packet(SourceFrame(1, darker, 0.0), darker))
    assert (packet.frame == 255 - darker).mean() > 0.99 and "translate" in packet.timings
    assert (stage.translated, stage.passed) == (1, 1)
    with pytest.raises(EdgesegError, match=r"use a value in \(0, 256\]"):
        TranslateStage(stage.backend, below=0.0)


def test_translate_below_needs_a_translator(engines: tuple[Path, Path]) -> None:
    seg_onnx, _ = engines
    with pytest.raises(EdgesegError, match="--translate-below gates a translator"):
        run_stream(seg_onnx, StreamConfig(source="synthetic:night:96x64:2", sinks=["null"],
                                          translate_below=80.0, progress=False, threads=1))
    assert parse_luma("69") == 69.0 and parse_luma("256") == 256.0
    for bad in ("0", "-5", "300", "dark"):
        with pytest.raises(argparse.ArgumentTypeError, match="mean luma in"):
            parse_luma(bad)


def test_recorded_gate_travels_with_the_translator(
        engines: tuple[Path, Path], drive: tuple[Path, list[bool]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`luma_gate.py --record` writes the threshold into the translator (and its fp16
    variant keeps it); `run` applies it with no flag; the flag overrides it."""
    from edgeseg.cli import main
    from edgeseg.contract.metadata import read_metadata
    from edgeseg.export.gate import record_translate_below

    seg_onnx, original = engines
    folder, dark = drive
    translator = tmp_path / "invert.onnx"
    translator.write_bytes(original.read_bytes())
    assert read_metadata(translator).translate_below is None
    day, dusk = tmp_path / "day", tmp_path / "dusk"
    for d in (day, dusk):
        d.mkdir()
    for f, is_dark in zip(sorted(folder.glob("*.png")), dark, strict=True):
        (dusk if is_dark else day).joinpath(f.name).write_bytes(f.read_bytes())
    assert benchmark_script("luma_gate").main(
        ["--day", str(day), "--dusk", str(dusk), "--record", str(translator)]) == 0
    below = read_metadata(translator).translate_below
    day_min = min(mean_luma(cv2.imread(str(f))) for f in day.glob("*.png"))
    dusk_max = max(mean_luma(cv2.imread(str(f))) for f in dusk.glob("*.png"))
    assert below == round((day_min + dusk_max) / 2, 2)
    assert f"recorded in {translator}: translate_below {below:g}" in capsys.readouterr().out
    half = tmp_path / "invert.fp16.onnx"
    assert main(["quantize", str(translator), "-o", str(half), "--precision", "fp16"]) == 0
    assert read_metadata(half).translate_below == below

    def stream(engine: Path, flag: float | None) -> dict:
        return run_stream(seg_onnx, StreamConfig(
            source=str(folder), sinks=["null"], translator=str(engine),
            translate_below=flag, progress=False, threads=1)).gate

    assert stream(translator, None) == {"below": below, "translated": 3, "passed": 3,
                                        "source": "metadata"}
    assert stream(half, None)["source"] == "metadata"
    assert stream(translator, 256.0) == {"below": 256.0, "translated": 6, "passed": 0,
                                         "source": "flag"}
    assert stream(original, None) is None  # nothing recorded: every frame, no gate
    # a segmenter has no gate: one line naming the file, the file untouched
    before = seg_onnx.read_bytes()
    with pytest.raises(EdgesegError, match=f"{seg_onnx}: a segmenter, not a translator"):
        record_translate_below(seg_onnx, 60.0)
    with pytest.raises(EdgesegError, match=r"use a value in \(0, 256\]"):
        record_translate_below(translator, 300.0)
    assert seg_onnx.read_bytes() == before and read_metadata(translator).translate_below == below


def test_threshold_pick_by_hand() -> None:
    pick = benchmark_script("luma_gate").pick_threshold
    # separable: every threshold in (60, 100] is error-free; the middle of that gap
    assert pick([100, 120], [50, 60]) == (80.0, 0.0)
    # overlap: t = 61 (error (0 + 1/3) / 2) ties t = 82.5 ((1/3 + 0) / 2); the wider gap wins
    below, error = pick([62, 100, 120], [50, 60, 65])
    assert below == 82.5 and error == pytest.approx(1 / 6)
    assert pick([70], [70]) == (70.0, 0.5)  # nothing separates one luma


def test_luma_gate_script_on_folders(drive: tuple[Path, list[bool]], tmp_path: Path) -> None:
    folder, _ = drive
    day, dusk = tmp_path / "day", tmp_path / "dusk"
    day.mkdir()
    dusk.mkdir()
    for f in sorted(folder.glob("*.png")):
        img = cv2.imread(str(f))
        (dusk if mean_luma(img) < BELOW else day).joinpath(f.name).write_bytes(f.read_bytes())
    lumas = {d: sorted(mean_luma(cv2.imread(str(f))) for f in d.glob("*.png"))
             for d in (day, dusk)}
    out, png = tmp_path / "gate.json", tmp_path / "gate.png"
    script = benchmark_script("luma_gate")
    assert script.main(["--day", str(day), "--dusk", str(dusk), "--also", str(folder),
                        "--json", str(out), "--plot", str(png)]) == 0
    res = json.loads(out.read_text())
    assert res["translate_below"] == round((lumas[dusk][-1] + lumas[day][0]) / 2, 2)
    assert res["balanced_error"] == 0.0
    assert res["specs"][str(folder)]["translated"] == 0.5
    assert res["specs"][str(dusk)]["luma_max"] == round(lumas[dusk][-1], 2)
    assert cv2.imread(str(png)) is not None


def test_hud_says_whether_the_frame_was_translated(engines: tuple[Path, Path],
                                                   drive: tuple[Path, list[bool]]) -> None:
    from edgeseg.runtime.overlay import OverlayRenderer, OverlayStyle
    from edgeseg.runtime.pipeline import StreamPipeline
    from edgeseg.runtime.sinks import NullSink
    from edgeseg.runtime.sources import SourceFrame
    from edgeseg.runtime.stages import StageChain

    seg_onnx, translator = engines
    folder, _ = drive
    seg = SegmentStage(OrtBackend.from_onnx(seg_onnx, intra_op_threads=1))
    gate = TranslateStage(OrtBackend.from_onnx(translator, intra_op_threads=1), below=BELOW)
    meta = seg.meta
    pipeline = StreamPipeline(open_source(str(folder)), StageChain([gate, seg]), [NullSink("n")],
                              OverlayRenderer(meta.labels, meta.palette, OverlayStyle()),
                              policy="all")
    pipeline.run()
    frame = SourceFrame(0, np.zeros((8, 8, 3), np.uint8), 0.0)

    def infer_ms(lines: list[str]) -> float:
        return float(lines[1].split("infer ")[1].split()[0])

    off = pipeline.hud_lines(Packet(frame, frame.image, timings={"gate": 0.1}))
    on = pipeline.hud_lines(Packet(frame, frame.image, timings={"gate": 0.1, "translate": 5.0}))
    plain = pipeline.hud_lines(Packet(frame, frame.image))  # no gate: nothing said
    assert off[-1].endswith("translator off") and on[-1].endswith("translator on")
    assert "translator" not in plain[-1]
    translate = pipeline.times.recent_mean("translate")
    assert translate > 0
    assert infer_ms(on) - infer_ms(off) == pytest.approx(translate, abs=0.11)
    assert infer_ms(plain) == infer_ms(on)
