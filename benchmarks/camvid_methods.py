"""One table of every adaptation method's deployable CamVid day -> dusk model, built from the
committed files alone: mIoU of the fp32 and int8 ONNX files on day_val and dusk_train, per-class
IoU, parameters and GMACs of the deployed graph, int8 latency on this CPU, training time.

Run from the repository root (the final table, on a quiet machine):

    python benchmarks/camvid_methods.py \\
        --row source_only=benchmarks/results/camvid/source_only \\
        --row mobilenet_uda=benchmarks/results/camvid/mobilenet_uda \\
        --row mutual_gan=benchmarks/results/camvid/mutual_gan \\
        --row dania=benchmarks/results/camvid/dania \\
        --row domain_extension=benchmarks/results/camvid/domain_extension \\
        --row sait=benchmarks/results/camvid/sait \\
        --row-note "source_only=2-core AMD EPYC; 1500 it from scratch" \\
        --threads 2 --iterations 50

(one ``--row-note NAME=TEXT`` per row: the training hardware and budget). The committed
``methods.md`` names the command that wrote it, with every note, at its end.

Each ``--row NAME=PREFIX`` reads ``PREFIX.fp32.onnx`` and ``PREFIX.int8.onnx``, the translator
run in front of them where the method deploys one (``PREFIX.translator.fp32.onnx`` /
``.int8.onnx``, the ``edgeseg eval --translator`` chain), ``PREFIX-train-metrics.jsonl`` and
``PREFIX-recipe.yaml``. A row without its fp32 file is listed as "no ONNX yet" (not trained, or its files not committed). Writes
``OUT.md``, ``OUT.json`` and ``OUT.png`` (``--out``, default
``benchmarks/results/camvid/methods``), ``OUT-iou.png`` (per-class IoU of every row) and
``OUT-overlays.png`` (``--overlays N`` dusk frames through every method). ``--skip-eval``
reuses ``PREFIX-eval.json`` (fp32 only) and ``--skip-latency`` skips the engine builds and
timing, so the table can be redone cheaply.
``--reuse-scores`` takes a row's fp32 and int8 mIoU from the previous ``OUT.json`` when the
row's chain files have the same sha256 and were scored on the same frames, CPU model and
ONNX Runtime version, so adding a method rescores that method only; latency is always
measured again, in the same run.

Why one script: each method's report scores its own files on its own day; this table scores
every method's shipped files with the same code, frames and machine, so the rows compare.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm import tqdm

from edgeseg.fileio import atomic_path, write_json, write_text
from edgeseg.labels import get_label_space

SPLITS = ("day_val", "dusk_train")
TRANSDUCTIVE = "dusk_train"
#: appended to every dusk_train number in the markdown
DUSK_MARK = "†"
DUSK_NOTE = (f"{DUSK_MARK} dusk_train: its 62 frames are also the unlabelled target-domain "
             "training frames of the adaptation methods (transductive: the models saw these "
             "images, not their labels) and the int8 files' calibration frames. The dusk_test "
             "labels are withheld and not used here.")
NOT_RUN = "no ONNX yet"
#: the per-class columns: the CamVid label space every committed file predicts
CLASSES = get_label_space("camvid11").names
DEFAULT_CAMVID = "../shared/data/camvid"
DEFAULT_OUT = Path("benchmarks/results/camvid/methods")


@dataclass
class RowSpec:
    """One method's committed files, found from its prefix."""

    name: str
    prefix: Path
    note: str = ""

    def file(self, suffix: str) -> Path | None:
        """``PREFIX<suffix>`` when it exists, else None."""
        path = Path(f"{self.prefix}{suffix}")
        return path if path.is_file() else None

    def files(self) -> dict[str, str | None]:
        """Every file the row may use (None: absent)."""
        suffixes = {"fp32": ".fp32.onnx", "int8": ".int8.onnx",
                    "translator_fp32": ".translator.fp32.onnx",
                    "translator_int8": ".translator.int8.onnx",
                    "train_metrics": "-train-metrics.jsonl", "recipe": "-recipe.yaml",
                    "eval_json": "-eval.json", "report": ".md"}
        return {k: (str(p) if (p := self.file(s)) else None) for k, s in suffixes.items()}


def parse_rows(rows: list[str], notes: list[str]) -> list[RowSpec]:
    """``NAME=PREFIX`` rows with their ``NAME=TEXT`` notes; a note for no row is an error."""
    specs: list[RowSpec] = []
    for item in rows:
        name, sep, prefix = item.partition("=")
        if not sep or not name or not prefix:
            raise SystemExit(f"--row {item!r}: expected NAME=PREFIX")
        if any(s.name == name for s in specs):
            raise SystemExit(f"--row {name}: given twice")
        specs.append(RowSpec(name, Path(prefix)))
    by_name = {s.name: s for s in specs}
    for item in notes:
        name, sep, text = item.partition("=")
        if not sep or name not in by_name:
            raise SystemExit(f"--row-note {item!r}: expected NAME=TEXT with NAME one of the "
                             f"--row names ({', '.join(by_name)})")
        by_name[name].note = text
    return specs


# ------------------------------------------------------------------ measuring


def data_specs(camvid: str) -> dict[str, str]:
    """split -> dataset spec; only the two labelled splits this table scores."""
    return {split: f"camvid:{camvid}:{split}" for split in SPLITS}


def score(model: Path, translator: Path | None, specs: dict[str, str], max_frames: int = 0
          ) -> dict[str, dict[str, Any]]:
    """split -> metrics dict of ``model`` (behind ``translator``), through the loader and scoring
    loop of ``edgeseg eval`` so the numbers are the command's."""
    from edgeseg.eval_cli import load_predictor
    from edgeseg.evaluate import evaluate, open_eval_dataset

    predict, space, _ = load_predictor(str(model), "cpu", str(translator) if translator else None)
    try:
        out = {}
        for split, spec in specs.items():
            dataset = open_eval_dataset(spec, space)
            res = evaluate(predict, dataset, space, max_images=max_frames,
                           desc=f"{model.name} {split}")
            out[split] = res.metrics.to_dict()
        return out
    finally:
        close = getattr(predict, "close", None)
        if close is not None:
            close()


def reuse_eval_json(path: Path) -> dict[str, Any] | None:
    """The fp32 numbers of an ``edgeseg eval --json`` file: {"from", "model", "results":
    {split: metrics}}; None when it is in another format or lacks a split."""
    data = json.loads(path.read_text())
    results = data.get("results")
    if not isinstance(results, dict):
        return None
    by_split = {spec.rsplit(":", 1)[-1]: r for spec, r in results.items()}
    if any(split not in by_split for split in SPLITS):
        return None
    return {"from": str(path), "model": data.get("model"), "kind": data.get("kind"),
            "results": {split: by_split[split] for split in SPLITS}}


def chain_digests(chain: dict[str, list[str]]) -> dict[str, list[str]]:
    """precision -> sha256 of each file of that chain, in chain order."""
    from edgeseg.fileio import sha256_file

    return {precision: [sha256_file(p) for p in paths] for precision, paths in chain.items()}


def previous_scores(path: Path, cpu: str, eval_runtime: str) -> dict[str, dict[str, Any]]:
    """name -> row of an earlier run's ``OUT.json``; empty when there is none or when it
    scored on another CPU or runtime version: the table names one CPU and its int8 kernels
    round differently elsewhere, so kept scores must come from the same machine kind. The
    CPU is compared with its instruction sets (``cpu``), not by name: two "AMD EPYC" VMs
    with and without AVX-512 VNNI run different int8 kernels (CamVid source_only_lowlight
    int8 day_val: 42.65 with VNNI, 41.81 on AVX2 alone)."""
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    rows = earlier.get("rows")
    if not isinstance(rows, dict):
        return {}
    for key, now in (("cpu", cpu), ("eval_runtime", eval_runtime)):
        if earlier.get(key) != now:
            print(f"--reuse-scores: {path} was scored with {key} {earlier.get(key)!r}, this "
                  f"run has {now!r}; scoring every row again", file=sys.stderr)
            return {}
    return rows


def reusable(previous: dict[str, Any] | None, precision: str, digests: dict[str, list[str]],
             max_frames: int, specs: dict[str, str]) -> dict[str, Any] | None:
    """The earlier run's ``precision`` scores of a row when the same files (sha256) were scored
    on the same frames, else None."""
    if not previous or not digests.get(precision):
        return None
    scores = (previous.get("eval") or {}).get(precision)
    source = (previous.get("eval_from") or {}).get(precision) or {}
    if (scores is None or "scored" not in source
            or (previous.get("sha256") or {}).get(precision) != digests[precision]
            or source.get("max_frames") != max_frames or source.get("data") != specs):
        return None
    return {"scores": scores, "from": source}


def graph_cost(paths: list[Path]) -> dict[str, Any]:
    """Parameters and MACs summed over a deployed chain's ONNX files (translator + segmenter),
    counted by `edgeseg.export.macs.count_macs` as ``edgeseg inspect`` counts them."""
    import onnx

    from edgeseg.export.macs import count_macs

    parts = []
    for path in paths:
        count = count_macs(onnx.load(str(path)))
        parts.append({"file": str(path), "params": count.params, "macs": count.total,
                      "inputs": {k: list(v) for k, v in count.inputs.items()}})
    return {"params": sum(p["params"] for p in parts), "macs": sum(p["macs"] for p in parts),
            "parts": parts}


def training_time(metrics: Path | None, recipe: Path | None) -> dict[str, Any] | None:
    """Training-step seconds from a trainer log (each record's ``sec_per_iter`` times the
    iterations since the previous record; validation runs are outside those windows) and the
    recipe's iteration count. A resumed log keeps the last record of each iteration."""
    if metrics is None and recipe is None:
        return None
    out: dict[str, Any] = {"iterations": None, "logged_iterations": None, "seconds": None}
    if recipe is not None:
        train = (yaml.safe_load(recipe.read_text()) or {}).get("train") or {}
        out["iterations"] = train.get("iterations")
    if metrics is not None:
        by_iter: dict[int, float] = {}
        for line in metrics.read_text().splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            if record.get("type") == "train" and "sec_per_iter" in record:
                by_iter[int(record["iter"])] = float(record["sec_per_iter"])
        seconds, previous = 0.0, 0
        for it in sorted(by_iter):
            seconds += by_iter[it] * (it - previous)
            previous = it
        if by_iter:
            out["logged_iterations"], out["seconds"] = previous, seconds
    return out


def build_engines(name: str, chain: list[str], backend: str, threads: int, workdir: Path
                  ) -> list[Path]:
    """The int8 chain's ONNX files (translator first) built for ``backend`` into ``workdir``."""
    from edgeseg.export.build_engine import build_engine, default_engine_path
    from edgeseg.export.profile import load_profile

    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    profile = load_profile(None, {"backend": backend, "threads": threads})
    engines = []
    for onnx_path in map(Path, chain):
        out = folder / default_engine_path(onnx_path, backend).name
        command = shlex.join(["edgeseg", "build-engine", str(onnx_path), "-o", str(out),
                              "--backend", backend, "--threads", str(threads)])
        build_engine(onnx_path, out, profile, command)
        engines.append(out)
    return engines


def round_order(names: list[str], round_index: int) -> list[str]:
    """The rows' timing order in one round, rotated by one each round, so no row always runs
    first (after the engine builds) or last."""
    if not names:
        return []
    k = round_index % len(names)
    return names[k:] + names[:k]


def fastest_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One row's latency from its per-round `time_chain` results: the round with the lowest
    p50, whole (its p50, mean, p90 and parts, measured together), every round's p50 kept in
    ``rounds_p50_ms``. A shared host only ever adds time, and its slow spells last minutes:
    on a 2-core VM the same graph read 19.3 ms in one round and 26 ms in the next two, so a
    median over 3 rounds still caught the slow state, while every same-graph row had a
    round near 19.3 ms."""
    if not rounds:
        raise ValueError("fastest_round: no rounds")
    out = dict(min(rounds, key=lambda r: r["p50_ms"]))
    out["rounds_p50_ms"] = [r["p50_ms"] for r in rounds]
    return out


def time_chain(name: str, engines: list[Path], threads: int, iterations: int, frames_spec: str
               ) -> dict[str, Any]:
    """p50 of built engines (translator first) timed by ``edgeseg bench`` on ``frames_spec``
    (warm-up, then ``iterations`` runs, frame in to labels out, the translator's recorded
    gate applied as `edgeseg run` applies it)."""
    from edgeseg.bench.cli import add_arguments, run_bench

    translator = engines[0] if len(engines) > 1 else None
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = [str(engines[-1]), "--data", frames_spec, "--no-parity", "--iterations",
            str(iterations), "--threads", str(threads), "--device", "cpu"]
    if translator:
        argv += ["--translator", str(engines[0])]
    result = run_bench(parser.parse_args(argv))
    rows = {r.target: r for r in result.latency}
    want = f"{engines[0].name}+{engines[-1].name}" if translator else engines[-1].name
    if want not in rows:
        reasons = "; ".join(s["reason"] for s in result.skipped) or "no latency row"
        raise RuntimeError(f"{name}: {want} was not timed ({reasons})")
    stats = rows[want].result.total
    runs_on = {t["name"]: t.get("runs_on", "") for t in result.targets}
    return {"p50_ms": stats.p50_ms, "mean_ms": stats.mean_ms, "p90_ms": stats.p90_ms,
            "iterations": iterations, "warmup": result.settings["warmup"],
            "frames_from": result.settings.get("frames_from"), "size": rows[want].size,
            "parts_p50_ms": {r.target: r.result.total.p50_ms for r in result.latency},
            "runs_on": runs_on.get(want) or runs_on.get(engines[-1].name, "")}


def measure_latencies(rows: dict[str, dict[str, Any]], backend: str, threads: int,
                      iterations: int, rounds: int, frames_spec: str, workdir: Path) -> None:
    """Fill each measured row's ``latency``: its int8 chain built once, then timed once per
    round, every row in each round (`round_order`), each row's fastest round kept
    (`fastest_round`). Rows share the host's state in every round, so their ratios hold
    on a machine whose speed drifts."""
    engines = {name: build_engines(name, row["chain"]["int8"], backend, threads, workdir)
               for name, row in rows.items()
               if row.get("status") != NOT_RUN and row.get("chain", {}).get("int8")}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in engines}
    for r in tqdm(range(rounds), desc="latency rounds"):
        for name in round_order(list(engines), r):
            results[name].append(time_chain(name, engines[name], threads, iterations,
                                            frames_spec))
    for name, timed in results.items():
        rows[name]["latency"] = {**fastest_round(timed), "rounds": rounds}


def measure_row(spec: RowSpec, specs: dict[str, str], *, skip_eval: bool, max_frames: int,
                previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the table shows for one method; ``status`` "no ONNX yet" without fp32.
    ``previous``: this row in an earlier run's JSON, whose scores are kept where its files
    and frames are the same (`reusable`)."""
    files = spec.files()
    row: dict[str, Any] = {"prefix": str(spec.prefix), "files": files, "note": spec.note}
    if files["fp32"] is None:
        row["status"] = NOT_RUN
        return row
    row["status"] = "measured"
    fp32, int8 = Path(files["fp32"]), Path(files["int8"]) if files["int8"] else None
    tr32 = Path(files["translator_fp32"]) if files["translator_fp32"] else None
    tr8 = Path(files["translator_int8"]) if files["translator_int8"] else tr32
    row["chain"] = {"fp32": [str(p) for p in (tr32, fp32) if p],
                    "int8": [str(p) for p in (tr8, int8) if p] if int8 else []}
    row["sha256"] = chain_digests(row["chain"])
    row["eval"], row["eval_from"] = {}, {}
    reused = reuse_eval_json(Path(files["eval_json"])) if skip_eval and files["eval_json"] \
        else None
    if reused is not None:
        row["eval"]["fp32"] = reused["results"]
        row["eval_from"]["fp32"] = {k: reused[k] for k in ("from", "model", "kind")}
    for precision, model, translator in (("fp32", fp32, tr32), ("int8", int8, tr8)):
        if model is None or precision in row["eval"] or (precision == "int8" and skip_eval):
            continue
        kept = reusable(previous, precision, row["sha256"], max_frames, specs)
        if kept is not None:
            row["eval"][precision] = kept["scores"]
            row["eval_from"][precision] = {**kept["from"], "reused": True}
            continue
        row["eval"][precision] = score(model, translator, specs, max_frames)
        row["eval_from"][precision] = {"scored": row["chain"][precision],
                                       "max_frames": max_frames, "data": specs}
    if int8 is not None:
        from edgeseg.contract.metadata import calibration_info
        from edgeseg.export.build_engine import read_onnx_metadata

        calib = calibration_info(read_onnx_metadata(int8)[0])
        row["int8_calibration"] = {k: calib.get(k) for k in ("source", "frames", "method",
                                                              "flavour")}
    row["cost"] = graph_cost([p for p in (tr32, fp32) if p])
    row["training"] = training_time(spec.file("-train-metrics.jsonl"), spec.file("-recipe.yaml"))
    row["latency"] = None
    if tr8 is not None:
        from edgeseg.export.build_engine import read_onnx_metadata

        row["translate_below"] = read_onnx_metadata(tr8)[0].translate_below
    return row


def method_overlays(table: dict[str, dict[str, Any]], spec: str, count: int, out: Path
                    ) -> Path | None:
    """A grid of ``count`` frames of ``spec`` (spread evenly): image | each measured row's
    fp32 chain | ground truth; None when no row has files."""
    from edgeseg.eval_cli import load_predictor
    from edgeseg.runtime.frames import open_frames
    from edgeseg.viz import save_comparison_grid

    chains = {name: row["chain"]["fp32"] for name, row in table.items()
              if row.get("status") != NOT_RUN}
    if not chains:
        return None
    frames = list(open_frames(spec, count))
    preds: dict[str, list[np.ndarray]] = {}
    for name, files in chains.items():
        *translator, model = files
        predict, _, _ = load_predictor(model, "cpu", translator[0] if translator else None)
        try:
            preds[name] = [predict(f.image) for f in tqdm(frames, desc=f"overlays {name}")]
        finally:
            getattr(predict, "close", lambda: None)()
    rows = [(f.name, f.image, [preds[n][i] for n in chains], f.label)
            for i, f in enumerate(frames)]
    return save_comparison_grid(out, rows, list(chains), get_label_space("camvid11"),
                                panel_width=320)


def per_class_plot(table: dict[str, dict[str, Any]], out: Path,
                   split: str = TRANSDUCTIVE) -> Path | None:
    """Grouped per-class IoU bars of every measured row's fp32 chain on ``split``."""
    from edgeseg.metrics import SegMetrics
    from edgeseg.viz import plot_iou_bars

    results = {name: SegMetrics.from_dict(row["eval"]["fp32"][split])
               for name, row in table.items()
               if row.get("status") != NOT_RUN and split in row["eval"].get("fp32", {})}
    if not results:
        return None
    mark = f" ({DUSK_MARK} transductive)" if split == TRANSDUCTIVE else ""
    return plot_iou_bars(out, results, title=f"per-class IoU on {split}, fp32{mark}")


# ------------------------------------------------------------------ the table


def _pct(metrics: dict[str, Any] | None) -> float | None:
    value = None if metrics is None else metrics.get("miou")
    return None if value is None or math.isnan(value) else 100 * float(value)


def assemble(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each row with its table numbers added: mIoU % per split for fp32 and int8, their
    difference (int8 - fp32, points, from the unrounded values), per-class fp32 IoU %, MACs
    in G and parameters in M."""
    out = {}
    for name, row in rows.items():
        row = dict(row)
        if row.get("status") != NOT_RUN:
            evals = row.get("eval") or {}
            miou = {}
            for split in SPLITS:
                fp32 = _pct((evals.get("fp32") or {}).get(split))
                int8 = _pct((evals.get("int8") or {}).get(split))
                delta = int8 - fp32 if fp32 is not None and int8 is not None else None
                miou[split] = {"fp32": fp32, "int8": int8, "int8_minus_fp32": delta}
            row["miou_pct"] = miou
            row["per_class_iou_fp32_pct"] = {
                split: {c: (None if v is None or math.isnan(v) else 100 * v)
                        for c, v in ((evals.get("fp32") or {}).get(split) or {})
                        .get("per_class", {}).items()}
                for split in SPLITS}
            cost = row.get("cost")
            if cost:
                row["gmacs"], row["mparams"] = cost["macs"] / 1e9, cost["params"] / 1e6
        out[name] = row
    return out


def _num(value: float | None, dusk: bool = False, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" + (DUSK_MARK if dusk else "")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _training_cell(training: dict[str, Any] | None) -> str:
    if not training:
        return "-"
    its = training.get("iterations") or training.get("logged_iterations")
    parts = [f"{its} it" if its else "", _duration(training.get("seconds"))]
    return ", ".join(p for p in parts if p) or "-"


def _method_cell(name: str, row: dict[str, Any], md_dir: Path | None) -> str:
    report = (row.get("files") or {}).get("report")
    label = f"[{name}]({os.path.relpath(report, md_dir)})" if report and md_dir else name
    if row.get("chain") and len(row["chain"].get("fp32", [])) > 1:
        gate = row.get("translate_below")
        label += (f" (translator + segmenter, translator gated below mean luma {gate:g})"
                  if gate is not None else " (translator + segmenter)")
    return label


def markdown_table(table: dict[str, dict[str, Any]], md_dir: Path | None = None) -> str:
    """The main table: mIoU, int8 delta, cost, latency, training, note; dusk numbers marked."""
    lines = ["| method | day_val fp32 | day_val int8 (int8 - fp32) | dusk_train fp32 | "
             "dusk_train int8 (int8 - fp32) | params (M) | GMACs | int8 p50 (ms) | training "
             "| note |",
             "|---|" + "---:|" * 7 + "---|---|"]
    for name, row in table.items():
        method = _method_cell(name, row, md_dir)
        if row.get("status") == NOT_RUN:
            lines.append(f"| {method} | {NOT_RUN} |" + " |" * 7 + f" {row.get('note', '')} |")
            continue
        cells = []
        for split in SPLITS:
            m = row["miou_pct"][split]
            dusk = split == TRANSDUCTIVE
            cells.append(_num(m["fp32"], dusk))
            if m["int8"] is None:
                cells.append("-")
            else:
                delta = "" if m["int8_minus_fp32"] is None else f" ({m['int8_minus_fp32']:+.2f})"
                cells.append(f"{m['int8']:.2f}{delta}" + (DUSK_MARK if dusk else ""))
        latency = row.get("latency")
        cells += [_num(row.get("mparams")), _num(row.get("gmacs")),
                  _num(latency["p50_ms"], digits=1) if latency else "-",
                  _training_cell(row.get("training")), row.get("note", "")]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_per_class(table: dict[str, dict[str, Any]], split: str = TRANSDUCTIVE) -> str:
    """Rows = measured methods, columns = the 11 classes: fp32 IoU % on ``split``."""
    dusk = split == TRANSDUCTIVE
    lines = ["| method | " + " | ".join(CLASSES) + " |", "|---|" + "---:|" * len(CLASSES)]
    for name, row in table.items():
        if row.get("status") == NOT_RUN:
            continue
        ious = row["per_class_iou_fp32_pct"].get(split, {})
        lines.append(f"| {name} | " + " | ".join(_num(ious.get(c), dusk) for c in CLASSES)
                     + " |")
    return "\n".join(lines) + "\n"


def _sources(table: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for name, row in table.items():
        if row.get("status") == NOT_RUN:
            lines.append(f"- {name}: no `{row['prefix']}.fp32.onnx` yet.")
            continue
        what = []
        for precision, src in (row.get("eval_from") or {}).items():
            if "from" in src:
                what.append(f"{precision} from `{src['from']}` ({src.get('kind') or '?'} "
                            f"`{src.get('model')}`)")
            else:
                frames = f", {src['max_frames']} frames per split" if src.get("max_frames") \
                    else ", every frame"
                kept = " (scores kept from the previous run: same sha256)" \
                    if src.get("reused") else ""
                what.append(f"{precision} `" + "` -> `".join(src["scored"]) + f"`{frames}{kept}")
        files = row.get("files") or {}
        if "int8" not in (row.get("eval_from") or {}):
            what.append("int8 not scored" + (" (no int8 file)" if not files.get("int8")
                                             else " (--skip-eval)"))
        if row.get("translate_below") is not None:
            what.append(f"the translator's recorded gate applied (`edgeseg run` does the same): "
                        f"frames with mean luma below {row['translate_below']:g} are "
                        "translated, the rest go straight to the segmenter; the latency "
                        "frames are dusk_train's, so the translator is timed")
        calib = row.get("int8_calibration") or {}
        if calib.get("source"):
            what.append(f"int8 calibrated on `{calib['source']}` ({calib.get('frames')} frames, "
                        f"{calib.get('method')}, {calib.get('flavour')} Q/DQ)")
        training = row.get("training") or {}
        if training.get("seconds") is not None:
            log = f" in `{files['train_metrics']}`" if files.get("train_metrics") else ""
            what.append(f"training time = the training steps logged{log} up to iteration "
                        f"{training['logged_iterations']} (validation excluded)")
        lines.append(f"- {name}: " + "; ".join(what) + ".")
    return lines


def markdown(table: dict[str, dict[str, Any]], context: dict[str, Any],
             md_dir: Path | None = None) -> str:
    """The whole report: context, main table, per-class table, sources, the command."""
    lat = context.get("latency")
    if lat:
        rounds = (f", the fastest of {lat['rounds']} rounds (every row timed once per round, "
                  "the order rotated each round; a shared host only adds time; each round's "
                  "p50 is in the JSON)"
                  if lat.get("rounds", 1) > 1 else "")
        latency = (f"int8 latency: p50 of {lat['iterations']} runs after warm-up{rounds}, one "
                   f"480x360 frame in to labels out (`edgeseg bench`), {lat['backend_title']} "
                   f"{lat.get('backend_version') or ''} engines built here, {lat['threads']} "
                   f"threads, on {context['cpu']} (load average {context['load_average']} at "
                   "the start).")
    else:
        latency = ("int8 latency not measured in this run (`--skip-latency`): it needs a quiet "
                   "machine; rerun without the flag to fill the column.")
    frames = (f"**{context['max_frames']} frames per split only** (full 480x360)"
              if context.get("max_frames") else "every full 480x360 frame")
    text = [
        "# CamVid day -> dusk: every method's deployable model",
        "",
        "One row per adaptation method: its committed fp32 and int8 (Q/DQ) ONNX files "
        "(behind the method's translator where it deploys one), scored by `edgeseg eval`'s "
        f"code on {frames} of `day_val` (source domain) and `dusk_train` (target domain). "
        "mIoU in %; parameters and GMACs of the fp32 graph at 480x360, summed over the chain "
        "(`edgeseg inspect`'s count); training time from each run's log, on the hardware in the "
        "note.",
        "",
        f"Scored in {context['eval_runtime']} on {context['cpu']}. The int8 numbers depend on "
        "the runtime's int8 kernels on that CPU (another CPU or version rounds differently), "
        "so compare int8 rows within one run of this table.",
        "",
        latency,
        "",
        markdown_table(table, md_dir),
        DUSK_NOTE,
        "",
        "Per-class IoU of the fp32 files on dusk_train (%):",
        "",
        markdown_per_class(table),
        f"{DUSK_MARK} dusk_train numbers are transductive: see the note under the first table.",
        "",
        "Per-class IoU on day_val and the full metrics are in "
        f"[{context['json_name']}]({context['json_name']}).",
        "",
        f"![fp32 mIoU per method]({context['png_name']})",
        "",
        *([f"![per-class IoU per method on dusk_train]({context['iou_png_name']})", ""]
          if context.get("iou_png_name") else []),
        *([f"The same {context['overlays']['frames']} dusk_train frames through every "
           "method's fp32 chain (colours: the CamVid palette, legend at the bottom):", "",
           f"![every method on the same dusk frames]({context['overlays']['png_name']})", ""]
          if context.get("overlays") else []),
        "## Sources",
        "",
        *_sources(table),
        "",
        "## Command",
        "",
        f"    {context['command']}",
        "",
        f"({context['seconds']:.0f} s, {context['created']})",
        "",
    ]
    return "\n".join(text)


def plot(table: dict[str, dict[str, Any]], out: Path) -> None:
    """Grouped bars of fp32 day_val and dusk_train mIoU per method, source_only dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table)
    fig, ax = plt.subplots(figsize=(1.3 * len(names) + 4.5, 4.2))
    width = 0.8 / len(SPLITS)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, split in enumerate(SPLITS):
        label = split + (" (transductive)" if split == TRANSDUCTIVE else "")
        values = [(table[n].get("miou_pct") or {}).get(split, {}).get("fp32") for n in names]
        xs = np.arange(len(names)) + (i - (len(SPLITS) - 1) / 2) * width
        bars = ax.bar(xs, [np.nan if v is None else v for v in values], width, label=label,
                      color=colours[i])
        ax.bar_label(bars, labels=["" if v is None else f"{v:.1f}" for v in values],
                     fontsize=7)
        base = (table.get("source_only", {}).get("miou_pct") or {}).get(split, {}).get("fp32")
        if base is not None:
            ax.axhline(base, color=colours[i], ls="--", lw=1,
                       label=f"source_only {split} ({base:.1f})")
    for j, n in enumerate(names):
        if table[n].get("status") == NOT_RUN:
            ax.text(j, 1, NOT_RUN, rotation=90, ha="center", va="bottom", fontsize=8,
                    color="gray")
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.12)
    ax.set_xticks(np.arange(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("mIoU % (fp32)")
    ax.set_title("CamVid day -> dusk, deployable fp32 models")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


# ------------------------------------------------------------------ the command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--row", action="append", default=[], required=True, metavar="NAME=PREFIX",
                   help="a method's files PREFIX.fp32.onnx, PREFIX.int8.onnx, ... (repeatable)")
    p.add_argument("--row-note", action="append", default=[], metavar="NAME=TEXT",
                   help="text for the row's note column, e.g. the training hardware")
    p.add_argument("--camvid", default=DEFAULT_CAMVID, help=f"CamVid root ({DEFAULT_CAMVID})")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"writes OUT.md, OUT.json, OUT.png (default {DEFAULT_OUT})")
    p.add_argument("--threads", type=int, default=2, help="inference threads for latency (2)")
    p.add_argument("--iterations", type=int, default=50, help="timed latency runs (50)")
    p.add_argument("--rounds", type=int, default=3,
                   help="latency rounds: every row timed once per round, in a rotated order; "
                        "the table keeps each row's median over rounds (3)")
    p.add_argument("--max-frames", type=int, default=0,
                   help="frames per split, spread over it (default 0 = all)")
    p.add_argument("--skip-latency", action="store_true", help="no engine builds, no timing")
    p.add_argument("--skip-eval", action="store_true",
                   help="fp32 numbers from PREFIX-eval.json where it exists; int8 not scored")
    p.add_argument("--overlays", type=int, default=4, metavar="N",
                   help="OUT-overlays.png: N dusk_train frames through every method (default "
                        "4; 0: none)")
    p.add_argument("--reuse-scores", action="store_true",
                   help="keep a row's mIoU from the previous OUT.json when its files (sha256) "
                        "and frames are unchanged; latency is measured again")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: need at least 1")
    start, created = time.perf_counter(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    specs = parse_rows(args.row, args.row_note)
    camvid = data_specs(args.camvid)
    from edgeseg.contract.manifest import BACKEND_TITLES
    from edgeseg.export.build_engine import cpu_backend
    from edgeseg.runtime.compat import MachineInfo, cpu_device

    backend = cpu_backend()
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    rows: dict[str, dict[str, Any]] = {}
    cpu = cpu_device()
    eval_runtime = (f"ONNX Runtime {MachineInfo.detect('onnxruntime').backend_version} "
                    "(CPU execution provider, default threads)")
    before = previous_scores(args.out.with_suffix(".json"), cpu.describe(), eval_runtime) \
        if args.reuse_scores else {}
    with tempfile.TemporaryDirectory(prefix="camvid-methods-") as workdir:
        for spec in tqdm(specs, desc="methods"):
            rows[spec.name] = measure_row(spec, camvid, skip_eval=args.skip_eval,
                                          max_frames=args.max_frames,
                                          previous=before.get(spec.name))
        if not args.skip_latency:
            measure_latencies(rows, backend, args.threads, args.iterations, args.rounds,
                              camvid[TRANSDUCTIVE], Path(workdir))
    table = assemble(rows)
    iou_png = per_class_plot(table, args.out.with_name(args.out.name + "-iou.png"))
    overlays_png = args.out.with_name(args.out.name + "-overlays.png")
    overlays = method_overlays(table, camvid[TRANSDUCTIVE], args.overlays, overlays_png) \
        if args.overlays else None
    context: dict[str, Any] = {
        "command": "python benchmarks/camvid_methods.py " + shlex.join(argv),
        "created": created, "cpu": cpu.describe(), "cpu_name": cpu.name,
        "load_average": load, "max_frames": args.max_frames, "data": camvid,
        "eval_runtime": eval_runtime,
        "json_name": args.out.name + ".json", "png_name": args.out.name + ".png",
        "latency": None if args.skip_latency else {
            "backend": backend, "backend_title": BACKEND_TITLES[backend],
            "backend_version": MachineInfo.detect(backend).backend_version,
            "threads": args.threads, "iterations": args.iterations, "rounds": args.rounds},
        "iou_png_name": iou_png.name if iou_png else None,
        "overlays": {"png_name": overlays.name, "frames": args.overlays} if overlays else None,
        "seconds": time.perf_counter() - start,
    }
    md_path, json_path = args.out.with_suffix(".md"), args.out.with_suffix(".json")
    write_text(md_path, markdown(table, context, md_path.parent))
    write_json(json_path, {**context, "rows": table})
    plot(table, args.out.with_suffix(".png"))
    print(markdown_table(table, md_path.parent))
    print(f"wrote {md_path}, {json_path}, {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
