"""benchmarks/camvid_methods.py: the all-method CamVid table from hand-made rows (delta
arithmetic, "no ONNX yet" rows, the transductive mark on dusk numbers, MACs over a chain),
and runs on the committed source_only files."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import CAMVID, REPO, benchmark_script

RESULTS = REPO / "benchmarks" / "results" / "camvid"


cm = benchmark_script("camvid_methods")


def _metrics(miou: float, per_class: dict[str, float] | None = None) -> dict:
    return {"miou": miou, "pixel_acc": 0.5, "per_class": per_class or {}, "num_pixels": 10}


def _rows() -> dict[str, dict]:
    dusk_classes = {c: 0.01 * i for i, c in enumerate(cm.CLASSES)}
    measured = {
        "status": "measured", "prefix": "r/source_only", "note": "2 cores, 1500 it",
        "files": {"report": None, "int8": "r/source_only.int8.onnx"},
        "eval": {"fp32": {"day_val": _metrics(0.40), "dusk_train": _metrics(0.20, dusk_classes)},
                 "int8": {"day_val": _metrics(0.385), "dusk_train": _metrics(0.2125)}},
        "cost": {"params": 2_500_000, "macs": 3_700_000_000, "parts": []},
        "training": {"iterations": 1500, "logged_iterations": 1500, "seconds": 5400.0},
        "latency": {"p50_ms": 12.34},
    }
    return {"source_only": measured,
            "dania": {"status": cm.NOT_RUN, "prefix": "r/dania", "note": "", "files": {}}}


def test_assemble_computes_int8_minus_fp32_and_keeps_not_run_rows() -> None:
    table = cm.assemble(_rows())
    miou = table["source_only"]["miou_pct"]
    assert miou["day_val"]["fp32"] == pytest.approx(40.0)
    assert miou["day_val"]["int8_minus_fp32"] == pytest.approx(-1.5)
    assert miou["dusk_train"]["int8_minus_fp32"] == pytest.approx(1.25)
    assert table["source_only"]["per_class_iou_fp32_pct"]["dusk_train"]["road"] == \
        pytest.approx(3.0)
    assert table["source_only"]["gmacs"] == pytest.approx(3.7)
    assert table["source_only"]["mparams"] == pytest.approx(2.5)
    assert "miou_pct" not in table["dania"] and table["dania"]["status"] == cm.NOT_RUN


def test_markdown_marks_every_dusk_number_and_lists_not_run_rows() -> None:
    table = cm.assemble(_rows())
    text = cm.markdown_table(table)
    header, rule, measured, not_run = text.strip().splitlines()
    assert header.count("|") == rule.count("|") == measured.count("|") == not_run.count("|")
    cells = [c.strip() for c in measured.strip("|").split("|")]
    assert cells[:5] == ["source_only", "40.00", "38.50 (-1.50)", f"20.00{cm.DUSK_MARK}",
                         f"21.25 (+1.25){cm.DUSK_MARK}"]
    assert cells[5:] == ["2.50", "3.70", "12.3", "1500 it, 90 min", "2 cores, 1500 it"]
    assert not cells[1].endswith(cm.DUSK_MARK) and not cells[2].endswith(cm.DUSK_MARK)
    assert not_run.startswith(f"| dania | {cm.NOT_RUN} |")
    per_class = cm.markdown_per_class(table).strip().splitlines()
    assert len(per_class) == 3  # header, rule, source_only; the not-run row is left out
    numbers = [c.strip() for c in per_class[2].strip("|").split("|")][1:]
    assert len(numbers) == 11 and all(n.endswith(cm.DUSK_MARK) for n in numbers)
    context = {"latency": None, "max_frames": 0, "json_name": "m.json", "png_name": "m.png",
               "command": "python benchmarks/camvid_methods.py ...", "seconds": 1.0,
               "created": "now", "cpu": "x", "load_average": "0", "eval_runtime": "ORT"}
    report = cm.markdown(table, context)
    assert cm.DUSK_NOTE in report and "--skip-latency" in report


def test_latency_rounds_rotate_the_order_and_keep_each_rows_fastest_round() -> None:
    assert cm.round_order(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert cm.round_order(["a", "b", "c"], 1) == ["b", "c", "a"]
    assert cm.round_order(["a", "b", "c"], 5) == ["c", "a", "b"]
    assert cm.round_order([], 2) == []

    def timed(p50: float, part: float) -> dict:
        return {"p50_ms": p50, "mean_ms": p50 + 1, "p90_ms": p50 + 5, "iterations": 50,
                "parts_p50_ms": {"tr": part, "tr+seg": p50}}

    # two slow rounds (a noisy neighbour) do not set the row's number; the fastest round
    # is kept whole, its parts with it
    out = cm.fastest_round([timed(26.0, 20.0), timed(19.5, 13.0), timed(26.5, 15.0)])
    assert out["p50_ms"] == 19.5 and out["mean_ms"] == 20.5 and out["p90_ms"] == 24.5
    assert out["parts_p50_ms"] == {"tr": 13.0, "tr+seg": 19.5}
    assert out["rounds_p50_ms"] == [26.0, 19.5, 26.5] and out["iterations"] == 50
    with pytest.raises(ValueError, match="no rounds"):
        cm.fastest_round([])
    with pytest.raises(SystemExit):
        cm.main(["--row", "a=x", "--rounds", "0"])


def test_a_gated_translator_is_named_in_the_table_and_the_sources() -> None:
    rows = _rows()
    chain = {"fp32": ["r/m.translator.fp32.onnx", "r/m.fp32.onnx"],
             "int8": ["r/m.translator.int8.onnx", "r/m.int8.onnx"]}
    rows["source_only"].update(chain=chain, translate_below=69.0)
    rows["source_only"]["latency"].update(rounds=3)
    table = cm.assemble(rows)
    assert "(translator + segmenter, translator gated below mean luma 69)" in \
        cm.markdown_table(table)
    context = {"latency": {"iterations": 50, "rounds": 3, "backend_title": "OpenVINO",
                           "threads": 2}, "max_frames": 0, "json_name": "m.json",
               "png_name": "m.png", "command": "c", "seconds": 1.0, "created": "now",
               "cpu": "x", "load_average": "0", "eval_runtime": "ORT"}
    report = cm.markdown(table, context)
    assert "frames with mean luma below 69 are translated" in report
    assert "the fastest of 3 rounds" in report
    del rows["source_only"]["translate_below"]
    assert "(translator + segmenter) |" in cm.markdown_table(cm.assemble(rows))


def _conv_file(path: Path, c_in: int, c_out: int, hw: int) -> Path:
    """x(1, c_in, hw, hw) -> 3x3 Conv (pad 1) -> y: c_out*hw*hw*c_in*9 MACs,
    c_out*c_in*9 + c_out parameters."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(c_out, c_in, 3, 3)).astype(np.float32)
    b = rng.normal(size=(c_out,)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3],
                          pads=[1, 1, 1, 1])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c_in, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_graph_cost_sums_translator_and_segmenter(tmp_path: Path) -> None:
    translator = _conv_file(tmp_path / "m.translator.fp32.onnx", 3, 3, 8)
    segmenter = _conv_file(tmp_path / "m.fp32.onnx", 3, 11, 8)
    alone = cm.graph_cost([segmenter])
    chain = cm.graph_cost([translator, segmenter])
    assert alone["macs"] == 11 * 8 * 8 * 3 * 9 and alone["params"] == 11 * 3 * 9 + 11
    assert chain["macs"] == (3 + 11) * 8 * 8 * 3 * 9
    assert chain["params"] == (3 * 3 * 9 + 3) + (11 * 3 * 9 + 11)
    assert [p["file"] for p in chain["parts"]] == [str(translator), str(segmenter)]


def test_training_time_weights_each_record_by_its_window(tmp_path: Path) -> None:
    log = tmp_path / "m-train-metrics.jsonl"
    records = [{"type": "train", "iter": 10, "sec_per_iter": 2.0},
               {"type": "train", "iter": 20, "sec_per_iter": 9.0},  # replaced after a resume
               {"type": "val", "iter": 20, "miou": 0.1},
               {"type": "train", "iter": 20, "sec_per_iter": 3.0},
               {"type": "train", "iter": 25, "sec_per_iter": 4.0}]
    log.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    recipe = tmp_path / "m-recipe.yaml"
    recipe.write_text("train:\n  iterations: 25\n")
    assert cm.training_time(log, recipe) == {"iterations": 25, "logged_iterations": 25,
                                             "seconds": 10 * 2.0 + 10 * 3.0 + 5 * 4.0}
    assert cm.training_time(None, None) is None


def test_row_notes_must_name_a_row() -> None:
    rows = cm.parse_rows(["a=x/a", "b=x/b"], ["b=2 cores, 100 it"])
    assert [(r.name, r.note) for r in rows] == [("a", ""), ("b", "2 cores, 100 it")]
    with pytest.raises(SystemExit, match="--row-note"):
        cm.parse_rows(["a=x/a"], ["c=text"])


def test_skip_eval_reuses_the_committed_eval_json(tmp_path: Path) -> None:
    """No CamVid needed: fp32 numbers from source_only-eval.json, a not-run row, all outputs."""
    out = tmp_path / "methods"
    assert cm.main(["--row", f"source_only={RESULTS / 'source_only'}",
                    "--row", f"dania={tmp_path / 'dania'}", "--skip-eval", "--skip-latency",
                    "--camvid", str(tmp_path / "no-camvid"), "--out", str(out),
                    "--overlays", "0"]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    committed = json.loads((RESULTS / "source_only-eval.json").read_text())["results"]
    row = data["rows"]["source_only"]
    assert row["miou_pct"]["day_val"]["fp32"] == pytest.approx(
        100 * committed["camvid:../shared/data/camvid:day_val"]["miou"])
    assert row["miou_pct"]["dusk_train"]["int8"] is None
    assert data["rows"]["dania"]["status"] == cm.NOT_RUN
    assert cv2.imread(str(out.with_suffix(".png"))) is not None


@pytest.mark.skipif(not CAMVID.exists(),
                    reason=f"CamVid is not at {CAMVID} (the end-to-end run scores its frames)")
def test_end_to_end_on_the_committed_source_only_files(tmp_path: Path) -> None:
    out = tmp_path / "methods"
    assert cm.main(["--row", f"source_only={RESULTS / 'source_only'}",
                    "--row", f"dania={tmp_path / 'dania'}", "--camvid", str(CAMVID),
                    "--max-frames", "2", "--skip-latency", "--out", str(out)]) == 0
    row = json.loads(out.with_suffix(".json").read_text())["rows"]["source_only"]
    for split in cm.SPLITS:
        m = row["miou_pct"][split]
        assert m["int8_minus_fp32"] == pytest.approx(m["int8"] - m["fp32"])
        assert set(row["per_class_iou_fp32_pct"][split]) == set(cm.CLASSES)
    assert row["eval_from"]["int8"]["max_frames"] == 2
    assert row["cost"]["params"] == 2_697_857 and row["latency"] is None
    text = out.with_suffix(".md").read_text()
    assert f"| dania | {cm.NOT_RUN} |" in text and "**2 frames per split only**" in text


def test_reuse_scores_rescore_only_the_files_that_changed(tmp_path: Path) -> None:
    """`--reuse-scores`: unchanged files (sha256) on the same frames keep their scores; a
    changed int8 file is scored again, the fp32 one is not."""
    import shutil

    from tests.dataset_fixtures import make_camvid

    camvid = make_camvid(tmp_path / "camvid")
    (camvid / "splits" / "day_val.txt").write_text("train/0006R0_f00930\n")
    (camvid / "splits" / "dusk_train.txt").write_text("train/0016E5_00390\n")
    prefix, out = tmp_path / "m", tmp_path / "methods"
    for precision in ("fp32", "int8"):
        shutil.copy(RESULTS / f"source_only.{precision}.onnx", f"{prefix}.{precision}.onnx")
    argv = ["--row", f"m={prefix}", "--camvid", str(camvid), "--skip-latency", "--out", str(out),
            "--overlays", "0"]

    def row() -> dict:
        return json.loads(out.with_suffix(".json").read_text())["rows"]["m"]

    assert cm.main(argv + ["--reuse-scores"]) == 0  # no earlier run: everything scored
    first = row()
    assert not any(src.get("reused") for src in first["eval_from"].values())
    assert cm.main(argv + ["--reuse-scores"]) == 0
    second = row()
    assert second["eval_from"]["fp32"]["reused"] and second["eval_from"]["int8"]["reused"]
    assert second["eval"] == first["eval"]
    assert "scores kept from the previous run" in out.with_suffix(".md").read_text()
    earlier = json.loads(out.with_suffix(".json").read_text())
    for key in ("cpu", "eval_runtime"):  # scored on another machine kind: not kept
        out.with_suffix(".json").write_text(json.dumps({**earlier, key: "another"}))
        assert cm.main(argv + ["--reuse-scores"]) == 0
        assert not any(src.get("reused") for src in row()["eval_from"].values()), key
    shutil.copy(RESULTS / "mobilenet_uda.int8.onnx", f"{prefix}.int8.onnx")
    assert cm.main(argv + ["--reuse-scores"]) == 0
    third = row()
    assert third["eval_from"]["fp32"]["reused"] and "reused" not in third["eval_from"]["int8"]
    assert third["sha256"]["int8"] != first["sha256"]["int8"]
    specs = cm.data_specs(str(camvid))
    assert third["eval"]["int8"] == json.loads(json.dumps(
        cm.score(Path(f"{prefix}.int8.onnx"), None, specs)))
    assert cm.main(argv + ["--reuse-scores", "--max-frames", "1"]) == 0  # other frames
    assert not any(src.get("reused") for src in row()["eval_from"].values())
    other = shutil.copytree(camvid, tmp_path / "camvid2")  # same frames under another spec
    assert cm.main(argv + ["--reuse-scores", "--camvid", str(other)]) == 0
    assert not any(src.get("reused") for src in row()["eval_from"].values())
    assert cm.main(argv) == 0  # without the flag nothing is kept
    assert not any(src.get("reused") for src in row()["eval_from"].values())


def test_overlays_show_every_method_on_the_same_frames(tmp_path: Path) -> None:
    import shutil

    from edgeseg.eval_cli import load_predictor
    from edgeseg.runtime.frames import open_frames
    from tests.dataset_fixtures import make_camvid

    camvid = make_camvid(tmp_path / "camvid")
    (camvid / "splits" / "day_val.txt").write_text("train/0006R0_f00930\n")
    (camvid / "splits" / "dusk_train.txt").write_text("train/0016E5_00390\ntrain/0006R0_f00930\n")
    for name in ("a", "b"):
        shutil.copy(RESULTS / f"{'source_only' if name == 'a' else 'mobilenet_uda'}.fp32.onnx",
                    tmp_path / f"{name}.fp32.onnx")
    out = tmp_path / "methods"
    assert cm.main(["--row", f"a={tmp_path / 'a'}", "--row", f"b={tmp_path / 'b'}",
                    "--row", f"none={tmp_path / 'none'}", "--camvid", str(camvid),
                    "--skip-latency", "--out", str(out), "--overlays", "2"]) == 0
    assert cv2.imread(str(tmp_path / "methods-iou.png")) is not None
    assert "(methods-iou.png)" in out.with_suffix(".md").read_text()
    png = tmp_path / "methods-overlays.png"
    grid = cv2.imread(str(png))
    assert grid.shape[1] == 4 * 320 + 3 * 4  # image | a | b | ground truth ("none": no files)
    assert "![every method on the same dusk frames](methods-overlays.png)" in \
        out.with_suffix(".md").read_text()
    # the "b" panel of the first frame is b's prediction on it
    frame = next(iter(open_frames(f"camvid:{camvid}:dusk_train", 2)))
    predict, _, _ = load_predictor(str(tmp_path / "b.fp32.onnx"), "cpu")
    from edgeseg.labels import get_label_space
    from edgeseg.viz import overlay

    h = round(frame.image.shape[0] * 320 / frame.image.shape[1])
    small = cv2.resize(frame.image, (320, h), interpolation=cv2.INTER_AREA)
    labels = cv2.resize(predict(frame.image), (320, h), interpolation=cv2.INTER_NEAREST)
    want = overlay(small, labels, get_label_space("camvid11"))
    x = 2 * (320 + 4)
    got = cv2.cvtColor(grid[48:48 + h, x:x + 320], cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(got, want)
