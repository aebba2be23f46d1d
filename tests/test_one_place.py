"""One place for each concept: every path that feeds a model sees the vehicle's pixels.

A 1280x720 camera frame goes through the calibrator, the export parity gate,
``build-engine --precision auto`` scoring, ``edgeseg bench`` (timing and parity) and
the runtime's engine stage; each records the input tensor it hands to the model, and
all of them must be byte-identical.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edgeseg.errors import EdgesegError
from tests.onnx_models import SIZE, export_tiny

FRAME_HW = (720, 1280)


def _camera_frame() -> np.ndarray:
    """RGB 1280x720 with fine detail (a resize rule that differs shows in the bytes)."""
    rng = np.random.default_rng(3)
    coarse = rng.integers(0, 256, (45, 80, 3), dtype=np.uint8)
    img = cv2.resize(coarse, FRAME_HW[::-1], interpolation=cv2.INTER_CUBIC)
    noise = rng.integers(0, 40, (*FRAME_HW, 3), dtype=np.uint8)
    return (img // 2 + noise).astype(np.uint8)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, np.ndarray]:
    """(tiny ONNX model, a CamVid spec with one 1280x720 frame, that frame as RGB)."""
    work = tmp_path_factory.mktemp("one_place")
    model = export_tiny(work / "tiny.onnx")
    root = work / "camvid"
    rgb = _camera_frame()
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "splits").mkdir()
    cv2.imwrite(str(root / "images" / "train" / "f0.png"), rgb[..., ::-1])
    label = np.zeros(FRAME_HW, np.uint8)
    label[FRAME_HW[0] // 2:] = 3
    cv2.imwrite(str(root / "labels" / "train" / "f0.png"), label)
    (root / "splits" / "day_train.txt").write_text("train/f0\n")
    return model, f"camvid:{root}:day_train", rgb


@pytest.fixture
def fed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[np.ndarray]]:
    """Every batch any backend or ONNX Runtime session of the parity gate is fed."""
    from edgeseg.export import parity
    from edgeseg.runtime.backends.base import Backend

    seen: list[np.ndarray] = []
    submit = Backend.submit

    def recording_submit(self: Backend, frames: np.ndarray) -> None:
        seen.append(np.array(frames))
        submit(self, frames)

    monkeypatch.setattr(Backend, "submit", recording_submit)
    create_session = parity.create_session

    class Recording:
        def __init__(self, session: Any) -> None:
            self.session = session

        def run(self, names: Any, feeds: dict[str, np.ndarray]) -> Any:
            seen.extend(np.array(x) for x in feeds.values())
            return self.session.run(names, feeds)

    monkeypatch.setattr(parity, "create_session",
                        lambda *a, **k: Recording(create_session(*a, **k)))
    yield seen


def test_every_path_feeds_the_same_input(setup: tuple[Path, str, np.ndarray],
                                         fed: list[np.ndarray]) -> None:
    from edgeseg.bench.cli import latency_frames
    from edgeseg.bench.parity import check_bench_parity
    from edgeseg.bench.targets import open_target
    from edgeseg.export.calibration import input_contract, load_frames
    from edgeseg.export.parity import check_onnx_parity, sample_frames
    from edgeseg.export.variants import _score, scoring_sets
    from edgeseg.runtime.predictor import load_backend
    from edgeseg.runtime.sources import open_source
    from edgeseg.runtime.stages import Packet, SegmentStage

    model, spec, rgb = setup
    calibrated = load_frames(spec, input_contract(model), count=1)
    assert calibrated.shape == (1, 1, *SIZE, 3)
    want = calibrated[0]
    feeds: dict[str, list[np.ndarray]] = {}

    def take(name: str) -> None:
        feeds[name] = list(fed)
        fed.clear()

    check_onnx_parity(model, model, sample_frames(spec, SIZE, 1))
    take("export parity gate")
    _score(model, scoring_sets(spec, None, 1, SIZE), None)[2].close()
    take("--precision auto")
    with open_target(model, device="cpu") as target:
        frames, _ = latency_frames(spec, 1, target.size)
        target.runner(frames, 1)(0)
        take("bench latency")
        check_bench_parity(target, [], spec)
        take("bench parity")
    with open_source(f"data:{spec}") as source, load_backend(model) as backend:
        frame = source.read()
        assert frame is not None and frame.image.shape[:2] == FRAME_HW
        SegmentStage(backend).process(Packet(frame, frame.image))
    take("runtime")
    for name, xs in feeds.items():
        assert xs, f"{name}: fed nothing"
        for x in xs:
            assert x.shape == want.shape and x.tobytes() == want.tobytes(), (
                f"{name} feeds other pixels than the calibrator")


def _write_video(path: Path, n: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for i in range(n):
        writer.write(np.full((48, 64, 3), 20 * i, np.uint8))
    writer.release()
    return path


def test_one_reader_for_every_spec_form(setup: tuple[Path, str, np.ndarray],
                                        tmp_path: Path) -> None:
    from edgeseg.data import spread_indices
    from edgeseg.runtime.frames import _thinned, open_frames
    from edgeseg.runtime.sources import open_source

    assert spread_indices(10, 3) == [0, 4, 9] and spread_indices(3, 0) == [0, 1, 2]
    _, spec, rgb = setup
    for form in (spec, f"data:{spec}"):
        sample = open_frames(form, 4)
        frames = list(sample)
        assert sample.count == len(frames) == 1 and sample.label_space == "camvid11"
        assert frames[0].image.tobytes() == rgb.tobytes() and frames[0].label is not None
    video = _write_video(tmp_path / "drive.mp4", 12)
    sample = open_frames(str(video), 3)
    frames = list(sample)
    assert sample.count == 3 and sample.label_space is None
    assert [round(float(np.median(f.image)) / 20) for f in frames] == [0, 6, 11]  # evenly spaced
    assert len(list(open_frames(str(video), 3, span=6))) == 3
    with open_source(str(video)) as source:  # a stream whose length is unknown
        kept = _thinned(source, 2, 0)
    assert 2 <= len(kept) <= 4 and round(float(np.median(kept[0].image)) / 20) == 0
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(5):
        cv2.imwrite(str(folder / f"{i:02d}.png"), np.full((8, 8, 3), 40 * i, np.uint8))
    assert [int(f.image[0, 0, 0]) for f in open_frames(str(folder), 2)] == [0, 160]
    drive = open_frames("synthetic:night:64x32:6", 2)
    frames = list(drive)
    assert drive.label_space == "cityscapes19" and len(frames) == 2
    assert frames[0].image.shape == (32, 64, 3) and frames[0].label is not None
    scenes = open_frames(None, 2, size=(32, 48))
    assert scenes.label_space is None and scenes.load()[0][0].shape == (32, 48, 3)
    with pytest.raises(EdgesegError, match="neither a video"):
        open_frames(str(tmp_path / "missing.mp4"), 2)


def test_compare_bench_and_auto_report_the_same_scores(setup: tuple[Path, str, np.ndarray],
                                                        tmp_path: Path) -> None:
    from edgeseg.bench.parity import check_bench_parity
    from edgeseg.bench.targets import open_target
    from edgeseg.export.compare import compare_models
    from edgeseg.export.variants import _score, scoring_sets

    model, spec, _ = setup
    root = tmp_path / "camvid"
    shutil.copytree(spec.split(":")[1], root)
    spec = f"camvid:{root}:day_train"
    for i in range(1, 4):  # more frames, of other sizes, spread over by every command
        rgb = np.random.default_rng(i).integers(0, 256, (90 * i, 160 * i, 3), dtype=np.uint8)
        cv2.imwrite(str(root / "images" / "train" / f"f{i}.png"), rgb)
        label = np.full(rgb.shape[:2], 3, np.uint8)
        label[: rgb.shape[0] // 3] = 10
        cv2.imwrite(str(root / "labels" / "train" / f"f{i}.png"), label)
    (root / "splits" / "day_train.txt").write_text("".join(f"train/f{i}\n" for i in range(4)))
    other = export_tiny(tmp_path / "other.onnx", seed=1)

    summary = compare_models(model, other, spec, frames=3, device="cpu")
    with open_target(model, device="cpu") as a, open_target(other, device="cpu") as b:
        bench = check_bench_parity(a, [b], spec, max_images=3)
    sets = scoring_sets(spec, None, 3, SIZE, "cityscapes19")
    fp32, refs, first = _score(model, sets, None)
    cand, _, second = _score(other, sets, refs)
    first.close()
    second.close()
    assert summary["frames"] == bench.frames == fp32.scores[0].frames == 3
    row = bench.variants[0]
    assert bench.reference_metrics is not None and row.metrics is not None
    miou_a = {summary["miou_a"], bench.reference_metrics.miou, fp32.scores[0].miou}
    miou_b = {summary["miou_b"], row.metrics.miou, cand.scores[0].miou}
    agreement = {summary["pixel_agreement"], row.pixel_agreement, cand.scores[0].agreement}
    assert len(miou_a) == len(miou_b) == len(agreement) == 1, (miou_a, miou_b, agreement)
    assert summary["boundary_agreement"] == row.boundary_agreement
