"""The UDA report scripts in benchmarks/: validation curves/table and translator grids."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import REPO, benchmark_script


def _metrics(path: Path, points: list[tuple[int, str, float]]) -> Path:
    lines = [json.dumps({"type": "train", "iter": 1, "loss": 1.0})]
    lines += [json.dumps({"type": "val", "iter": it, "data": f"camvid:/x:{split}", "miou": m})
              for it, split, m in points]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_curves_table_reports_the_last_validation_against_the_start(tmp_path: Path) -> None:
    curves = benchmark_script("uda_curves")
    run = _metrics(tmp_path / "m.jsonl", [(500, "day_val", 0.40), (500, "dusk_train", 0.30),
                                          (1000, "day_val", 0.42), (1000, "dusk_train", 0.35)])
    start = tmp_path / "start.json"
    start.write_text(json.dumps({"results": {"camvid:/x:day_val": {"miou": 0.43},
                                             "camvid:/x:dusk_train": {"miou": 0.20}}}))
    parsed = curves.val_curves(run)
    assert parsed == {"day_val": [(500, 40.0), (1000, 42.0)],
                      "dusk_train": [(500, 30.0), (1000, 35.0)]}
    text = curves.table({"a": parsed}, curves.mious(start), "day_val")
    assert "| a | 1000 | 42.00 (-1.00) | 35.00 (+15.00) |" in text
    assert text.index("day_val") < text.index("dusk_train")  # the source column first
    out = tmp_path / "c.png"
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "uda_curves.py"), "--run",
                          f"a=b={run}", "--start", str(start), "--out", str(out)],
                         capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert cv2.imread(str(out)) is not None  # a name may contain '='; the path is after the last


def test_report_scores_runs_from_eval_json_or_the_last_validation_of_their_log(
        tmp_path: Path) -> None:
    report = benchmark_script("uda_report")
    root = tmp_path / "runs"
    (root / "full_s0").mkdir(parents=True)
    _metrics(root / "full_s0" / "metrics.jsonl", [(100, "night_val", 0.10),
                                                  (200, "night_val", 0.20),
                                                  (200, "day_val", 0.30)])
    (root / "full_s1").mkdir()  # eval.json wins over the log beside it
    (root / "full_s1" / "eval.json").write_text(json.dumps(
        {"results": {"synthetic:/x:night_val": {"miou": 0.24},
                     "synthetic:/x:day_val": {"miou": 0.34}}}))
    _metrics(root / "full_s1" / "metrics.jsonl", [(200, "night_val", 0.99),
                                                  (200, "day_val", 0.99)])
    committed = _metrics(tmp_path / "committed.jsonl", [(200, "night_val", 0.16),
                                                        (200, "day_val", 0.32),
                                                        (100, "day_val", 0.90)])
    rows = report.collect(root, [f"full={committed}"])
    text, data = report.table(rows, ["full"])
    assert data["full"]["night_val"]["values"] == [16.0, 20.0, 24.0]
    assert data["full"]["day_val"]["mean"] == pytest.approx(32.0)
    assert "| full | 3 |" in text
    (root / "full_s2").mkdir()  # still training: left out when the final iteration is given
    _metrics(root / "full_s2" / "metrics.jsonl", [(100, "night_val", 0.50),
                                                  (100, "day_val", 0.50)])
    assert report.collect(root, [])["full"][2]["night_val"] == 50.0
    assert [r["night_val"] for r in report.collect(root, [], final=200)["full"]] == [20.0, 24.0]
    assert report.last_validation(root / "full_s2" / "metrics.jsonl") == 100
    entropy = root / "full_s2" / "metrics.jsonl"  # train.select_on=entropy:SPEC logs beside it
    with entropy.open("a") as f:
        f.write(json.dumps({"type": "val", "iter": 100, "data": "camvid:/x:night_val",
                            "entropy": 0.7}) + "\n")
    assert report.mious(entropy) == {"night_val": 50.0, "day_val": 50.0}
    (tmp_path / "empty.jsonl").write_text(json.dumps({"type": "train", "iter": 1}) + "\n")
    with pytest.raises(SystemExit, match="no validation records"):
        report.mious(tmp_path / "empty.jsonl")


def test_report_per_class_table_means_each_class_over_seeds(tmp_path: Path) -> None:
    """``--per-class``: a row's class IoU is the mean of its seeds' last validations (a log)
    or eval.json, per dataset, in the table, the JSON and a chart."""
    report = benchmark_script("uda_report")
    root = tmp_path / "runs"

    def val(it: int, split: str, pole: float, road: float) -> str:
        return json.dumps({"type": "val", "iter": it, "data": f"camvid:/x:{split}",
                           "miou": (pole + road) / 2, "per_class": {"pole": pole, "road": road}})

    for seed, (pole, road) in enumerate([(0.10, 0.80), (0.30, 0.60)]):
        (root / f"mfw_s{seed}").mkdir(parents=True)
        (root / f"mfw_s{seed}" / "metrics.jsonl").write_text("\n".join(
            [val(100, "day_val", 0.9, 0.9), val(200, "day_val", pole, road),
             val(200, "dusk_train", pole / 2, road / 2)]) + "\n")
    start = tmp_path / "start.json"
    start.write_text(json.dumps({"results": {
        "camvid:/x:day_val": {"miou": 0.4, "per_class": {"pole": 0.05, "road": 0.75}},
        "camvid:/x:dusk_train": {"miou": 0.2, "per_class": {"pole": 0.01, "road": 0.39}}}}))
    files = report.scored_files(root, [f"start={start}"])
    text, data = report.class_table(files, ["start", "mfw"])
    assert data["day_val"]["mfw"] == pytest.approx({"pole": 20.0, "road": 70.0})
    assert data["dusk_train"]["mfw"] == pytest.approx({"pole": 10.0, "road": 35.0})
    assert data["dusk_train"]["start"] == pytest.approx({"pole": 1.0, "road": 39.0})
    assert "| start | 5.00 | 75.00 |" in text and "| mfw | 10.00 | 35.00 |" in text
    out = tmp_path / "rep"
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "uda_report.py"), str(root),
                          "--rows", f"start={start}", "--per-class", "--out", str(out)],
                         capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr
    saved = json.loads((tmp_path / "rep.json").read_text())
    assert saved["mfw"]["day_val"]["per_class"] == pytest.approx({"pole": 20.0, "road": 70.0})
    assert "| mfw | 20.00 | 70.00 |" in (tmp_path / "rep.classes.md").read_text()
    assert cv2.imread(str(tmp_path / "rep-classes.png")) is not None
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"results": {"camvid:/x:day_val": {"miou": 0.4}}}))
    with pytest.raises(SystemExit, match="day_val has no per-class IoU"):
        report.class_ious(bare)


def test_translations_grid_from_a_uda_checkpoint_and_a_clear_error_otherwise(
        tiny_synth: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    from edgeseg.config import Recipe, from_dict
    from edgeseg.train.trainer import Trainer
    from tests.test_mobilenet_uda import _uda_recipe

    grid = benchmark_script("uda_translations")
    out = tmp_path / "uda"
    assert Trainer(from_dict(Recipe, _uda_recipe(tiny_synth, out, iterations=1)),
                   progress=False).run() == 0
    translate = grid.load_translator(out / "last.pt")
    # rebuilt from the stored spec: the recipe's ngf, not the builder's default 64
    assert translate.module.net.model[1].out_channels == 8
    image = np.random.default_rng(0).integers(0, 255, (66, 130, 3), dtype=np.uint8)
    fake = translate(image)
    assert fake.dtype == np.uint8 and fake.shape == image.shape  # padded to 4s, cropped back
    assert np.abs(fake.astype(int) - image).mean() > 1  # it does translate

    paths = []
    for name in ("day", "night"):
        paths.append(tmp_path / f"{name}.png")
        cv2.imwrite(str(paths[-1]), image)
    png = tmp_path / "grid.png"
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "uda_translations.py"),
                          str(out / "last.pt"), str(png), f"{paths[0]}:{paths[1]}", str(paths[0]),
                          "--width", "64"], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert cv2.imread(str(png)).shape == (2 * 32, 3 * 64, 3)  # rows padded to the widest
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "uda_translations.py"),
                          str(out / "last.pt"), str(png), str(paths[0]), "--width", "64",
                          "--also", f"again={out / 'last.pt'}"],
                         capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr
    both = cv2.imread(str(png))
    assert both.shape == (24 + 32, 3 * 64, 3)  # title strip; source | run | --also run
    assert np.array_equal(both[24:, 64:128], both[24:, 128:])  # the same run, the same column
    assert not np.array_equal(both[24:, :64], both[24:, 64:128])
    with pytest.raises(SystemExit, match="has no network 'gen_s2t'") as err:
        grid.load_translator(tiny_checkpoint)  # a source-only checkpoint
    assert "\n" not in str(err.value)


def test_translator_sweep_measures_by_hand() -> None:
    sweep = benchmark_script("domain_extension_sweep")
    assert sweep.gap_closed(0.0, 0.25, 1.0) == pytest.approx(0.25)
    assert sweep.gap_closed(np.array([0.0, 0.0]), np.array([3.0, 4.0]), np.array([6.0, 8.0])) \
        == pytest.approx(0.5)  # |(3, 4) - (6, 8)| = 5 of |(0, 0) - (6, 8)| = 10
    assert sweep.gap_closed(1.0, 1.0, 0.0) == 0.0  # no change closes nothing
    image = np.zeros((2, 3, 3), np.uint8)
    image[...] = (10, 20, 30)  # RGB
    assert sweep.luma(image) == pytest.approx(0.299 * 10 + 0.587 * 20 + 0.114 * 30)


def test_translator_sweep_scores_the_source_labels_and_draws_a_grid(
        tiny_synth: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The identity row is the segmenter's own mIoU on the source split (the number
    `evaluate` gives); a translator's row scores the translated frames against the same
    labels; the grid has source | translators | target columns."""
    from edgeseg.config import Recipe, from_dict
    from edgeseg.evaluate import evaluate, open_eval_dataset
    from edgeseg.train.predict import TorchPredictor
    from edgeseg.train.trainer import Trainer
    from tests.test_mobilenet_uda import _uda_recipe

    sweep = benchmark_script("domain_extension_sweep")
    out = tmp_path / "uda"
    assert Trainer(from_dict(Recipe, _uda_recipe(tiny_synth, out, iterations=1)),
                   progress=False).run() == 0
    source, target = f"synthetic:{tiny_synth}:day_val", f"synthetic:{tiny_synth}:night_val"
    result, cols = sweep.sweep(str(tiny_checkpoint), {"t": f"{out / 'last.pt'}#gen_s2t"},
                               source, target, "gen_s2t_ema")
    predictor, ckpt = TorchPredictor.from_checkpoint(str(tiny_checkpoint))
    expected = evaluate(predictor, open_eval_dataset(source, ckpt["label_space"]),
                        ckpt["label_space"], progress=False).metrics.miou
    assert result["identity"]["content_miou"] == pytest.approx(100 * expected)
    assert result["identity"]["luma_gap_closed"] == 0.0
    assert result["t"]["network"] == "gen_s2t"  # the #NETWORK suffix wins over --network
    assert result["t"]["content_miou"] != result["identity"]["content_miou"]
    png = tmp_path / "grid.png"
    sweep.save_grid(cols, ["source", "t", "target"], png)
    assert len(cols) == 3 and cv2.imread(str(png)) is not None
