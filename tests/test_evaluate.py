"""Evaluation loop: label-space mapping, the 'other' column, and `edgeseg eval`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeseg.cli import main
from edgeseg.config import Recipe, from_dict
from edgeseg.data.base import SegDataset
from edgeseg.evaluate import evaluate
from edgeseg.labels import CAMVID11, CITYSCAPES19
from tests.conftest import CAMVID, tiny_recipe


class _InMemory(SegDataset):
    label_space = CAMVID11

    def __init__(self, labels: list[np.ndarray]) -> None:
        self.root = Path("memory")
        self.split = "test"
        self.items = labels

    def load(self, item: np.ndarray) -> dict:
        return {"image": np.zeros((*item.shape, 3), np.uint8), "label": item, "name": "x"}


def test_cityscapes_model_scored_on_camvid_counts_foreign_classes_as_misses() -> None:
    # ground truth: left half road (camvid 3), right half car (camvid 8)
    gt = np.full((4, 8), 3, np.uint8)
    gt[:, 4:] = 8
    # prediction in cityscapes ids: road (0) left, right half split car (13) / terrain (9)
    pred = np.zeros((4, 8), np.uint8)
    pred[:, 4:6] = 13
    pred[:, 6:] = 9  # terrain has no CamVid class

    res = evaluate(lambda image: pred, _InMemory([gt]), CITYSCAPES19, progress=False)
    per = res.metrics.per_class
    assert per["road"] == 1.0
    assert per["car"] == pytest.approx(0.5)  # 8 of 16 car pixels found, no false positives
    assert np.isnan(per["sky"])
    assert res.metrics.miou == pytest.approx(0.75)
    assert res.metrics.pixel_acc == pytest.approx(24 / 32)


def test_boundary_band_scores_only_the_pixels_near_a_label_edge() -> None:
    # ground truth: road (3) in columns 0-3, car (8) in 4-7; the prediction puts the edge
    # one column right (column 4 called road)
    gt = np.full((4, 8), 3, np.uint8)
    gt[:, 4:] = 8
    pred = np.full((4, 8), 3, np.uint8)
    pred[:, 5:] = 8
    res = evaluate(lambda image: pred, _InMemory([gt]), CAMVID11, progress=False, band=1)
    # whole frame: road 16 / (16 + 4), car 12 / 16
    assert res.metrics.miou == pytest.approx((0.8 + 0.75) / 2)
    # band 1: columns 3 (road, right) and 4 (car, called road): road 4 / 8, car 0 / 4
    band = res.band_metrics
    assert band.num_pixels == 8 and band.pixel_acc == pytest.approx(0.5)
    assert band.per_class["road"] == pytest.approx(0.5) and band.per_class["car"] == 0.0
    assert band.miou == pytest.approx(0.25)
    # band 2: columns 2-5: road 8 / (8 + 4), car 4 / 8
    res = evaluate(lambda image: pred, _InMemory([gt]), CAMVID11, progress=False, band=2)
    assert res.band_metrics.miou == pytest.approx((8 / 12 + 0.5) / 2)
    assert evaluate(lambda image: pred, _InMemory([gt]), CAMVID11,
                    progress=False).band_metrics is None


def test_same_space_perfect_prediction() -> None:
    gt = np.array([[0, 1], [2, 255]], np.uint8)
    res = evaluate(lambda image: np.where(gt == 255, 0, gt).astype(np.uint8), _InMemory([gt]),
                   CAMVID11, progress=False)
    assert res.metrics.miou == 1.0 and res.metrics.num_pixels == 3


def test_eval_cli_writes_reports(tiny_synth: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from edgeseg.train.trainer import Trainer

    Trainer(from_dict(Recipe, tiny_recipe(tiny_synth, tmp_path / "run", train__iterations=1)),
            progress=False).run()
    out = tmp_path / "report"
    status = main(["eval", str(tmp_path / "run" / "last.pt"),
                   "--data", f"synthetic:{tiny_synth}:day_val",
                   "--data", f"synthetic:{tiny_synth}:night_val",
                   "--json", str(out / "eval.json"), "--overlays", str(out / "ov.png"),
                   "--plot", str(out / "bars.png"), "--band", "2"])
    assert status == 0
    text = capsys.readouterr().out
    assert "mIoU" in text and "gap" in text and "within 2 px of a label boundary" in text
    report = json.loads((out / "eval.json").read_text())
    assert report["band_px"] == 2 and set(report["band_results"]) == set(report["results"])
    for spec, whole in report["results"].items():
        assert 0 < report["band_results"][spec]["num_pixels"] < whole["num_pixels"]
    assert set(report["results"]) == {f"synthetic:{tiny_synth}:day_val",
                                      f"synthetic:{tiny_synth}:night_val"}
    assert (out / "ov.png").stat().st_size > 0 and (out / "bars.png").stat().st_size > 0


def test_eval_cli_clear_error_for_missing_checkpoint(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    status = main(["eval", str(tmp_path / "nope.pt"), "--data", "camvid:/nowhere:day_val"])
    assert status == 2
    assert "nope.pt" in capsys.readouterr().err


def test_eval_scores_onnx_like_the_checkpoint(tiny_checkpoint: Path, tiny_synth: Path,
                                              tmp_path: Path) -> None:
    """The same model scored as checkpoint and as uint8-in/labels-out ONNX agrees."""
    from edgeseg.data import open_dataset
    from edgeseg.eval_cli import load_predictor
    from edgeseg.export.onnx_export import ExportOptions, export_checkpoint

    onnx_path = tmp_path / "m.onnx"
    export_checkpoint(tiny_checkpoint, onnx_path, ExportOptions(height=32, width=64))
    data = open_dataset(f"synthetic:{tiny_synth}:night_val")
    scores = {}
    for model in (tiny_checkpoint, onnx_path):
        predict, space, info = load_predictor(str(model), "cpu")
        assert space == "cityscapes19"
        scores[info["kind"]] = evaluate(predict, data, space, progress=False).metrics
    torch_m, onnx_m = scores["checkpoint"], scores["onnx/engine"]
    assert onnx_m.num_pixels == torch_m.num_pixels
    assert abs(onnx_m.miou - torch_m.miou) < 0.005


@pytest.mark.skipif(not (CAMVID / "splits").is_dir(), reason="../shared/data/camvid is absent")
def test_eval_skips_a_split_without_labels(tiny_checkpoint: Path, capsys) -> None:  # noqa: ANN001
    """CamVid's dusk_test labels are withheld: the split is skipped with a message. (The
    Cityscapes-19 model is scored on CamVid-11 classes through the class mapping.)"""
    status = main(["eval", str(tiny_checkpoint), "--max-frames", "2",
                   "--data", f"camvid:{CAMVID}:dusk_test", "--data", f"camvid:{CAMVID}:day_val"])
    captured = capsys.readouterr()
    assert status == 0
    assert "skip camvid" in captured.err and "dusk_test" in captured.err
    assert "day_val" in captured.out and "sidewalk" in captured.out


def test_demo_end_to_end(tmp_path: Path, capsys, monkeypatch) -> None:  # noqa: ANN001
    """`make demo`'s code path: synth -> train -> eval day/night -> pictures -> export ->
    engine (--precision auto) -> night drive streamed into demo.mp4 (2 iterations, 12
    frames, a smaller scene set), then a second run reuses the cached model and engine."""
    import json

    import cv2

    from edgeseg import demo

    small = ["--train", "40", "--val", "8"]  # the demo's own set is 320 + 24 per domain
    synth_args = list(demo.SYNTH_ARGS)
    for flag, value in zip(small[::2], small[1::2]):
        synth_args[synth_args.index(flag) + 1] = value
    monkeypatch.setattr(demo, "SYNTH_ARGS", synth_args)
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--iterations", "2", "--max-frames", "12"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "gap" in text and "night_val" in text
    assert "[1/5] generating" in text and (out / "synth" / "meta.json").exists()
    # no TensorRT here: an OpenVINO engine where openvino is installed, else ONNX Runtime's
    from edgeseg.export.build_engine import cpu_backend

    engine = "model.ov.blob" if cpu_backend() == "openvino" else "model.ort.onnx"
    for name in ("eval.json", "overlays.png", "iou_bars.png", "run/last.pt", "model.onnx",
                 f"{engine}.json"):
        assert (out / name).stat().st_size > 0
    manifest = json.loads((out / f"{engine}.json").read_text())
    chosen = min((c for c in manifest["selection"] if c["passed"]),
                 key=lambda c: c["latency_ms_p50"])
    assert chosen["precision"] == manifest["precision"]
    cap = cv2.VideoCapture(str(out / "demo.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    summary = json.loads((out / "stream.json").read_text())
    assert summary["frames"]["processed"] == 12 and summary["fps"] > 0
    assert 0 <= summary["miou"] <= 100
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "reusing the trained demo model" in text and "reusing" in text.split("[4/5]")[1]
