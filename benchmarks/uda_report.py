"""Table of UDA runs (one eval.json per run, from `edgeseg eval --json`, or the trainer's
metrics.jsonl): mean and spread over seeds per row, and a bar chart.

    python benchmarks/uda_report.py runs/uda_synth --rows source_only_init=demo_out/eval.json \\
        --out benchmarks/results/synthetic/mobilenet_uda

Run folders are named ``ROW_sSEED`` and hold ``eval.json`` or, without one, the trainer's
``metrics.jsonl`` (its last validation is the row's score); ``--rows NAME=FILE`` adds one
eval.json or metrics.jsonl to row NAME (e.g. the starting checkpoint, or a committed log as
another seed of a row). Datasets are the last ``:`` field of each scored data spec.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from edgeseg.fileio import atomic_path, write_json, write_text


def scored_files(root: Path, extra: list[str], final: int | None = None
                 ) -> dict[str, list[Path]]:
    """row -> the file that scores each seed (``--rows`` files first, then the run folders).
    ``final``: a run folder scored from its log counts only once its last validation is at
    that iteration (a run still training, or stopped early, is left out and named on
    stderr)."""
    rows: dict[str, list[Path]] = defaultdict(list)
    for item in extra:
        name, _, path = item.partition("=")
        rows[name].append(Path(path))
    for run in sorted(root.glob("*_s[0-9]*")):
        match = re.fullmatch(r"(.+)_s(\d+)", run.name)
        scored = next((f for f in (run / "eval.json", run / "metrics.jsonl") if f.exists()), None)
        if not match or scored is None:
            continue
        if final is not None and scored.suffix == ".jsonl":
            last = last_validation(scored)
            if last != final:
                print(f"{run}: left out, its last validation is at iteration {last}, not "
                      f"{final}", file=sys.stderr)
                continue
        rows[match.group(1)].append(scored)
    return rows


def collect(root: Path, extra: list[str], final: int | None = None
            ) -> dict[str, list[dict[str, float]]]:
    """row -> one {dataset: mIoU %} per seed (the files `scored_files` picks)."""
    return row_mious(scored_files(root, extra, final))


def row_mious(files: dict[str, list[Path]]) -> dict[str, list[dict[str, float]]]:
    """row -> one {dataset: mIoU %} per scored file."""
    return {name: [mious(f) for f in paths] for name, paths in files.items()}


def validations(metrics: Path) -> list[dict]:
    """The scored validation records of a trainer's metrics.jsonl, in order (those with an
    mIoU: a label-free ``entropy`` record shares its split and iteration)."""
    return [r for r in map(json.loads, metrics.read_text().splitlines())
            if r.get("type") == "val" and "miou" in r]


def last_validation(metrics: Path) -> int | None:
    """The highest iteration with a validation record in a trainer's metrics.jsonl."""
    return max((r["iter"] for r in validations(metrics)), default=None)


def last_scores(path: Path) -> dict[str, dict]:
    """{dataset: score record (``miou``, ``per_class``, ...)} of an ``edgeseg eval --json``
    file, or of the last validation in a trainer's metrics.jsonl (the records at its highest
    validated iteration). Datasets are the last ``:`` field of each data spec."""
    if path.suffix == ".jsonl":
        vals = validations(path)
        if not vals:
            raise SystemExit(f"{path}: no validation records; train with train.val_every > 0 "
                             "or score the checkpoint with `edgeseg eval --json`")
        last = max(r["iter"] for r in vals)
        return {r["data"].rsplit(":", 1)[-1]: r for r in vals if r["iter"] == last}
    results = json.loads(path.read_text())["results"]
    return {spec.rsplit(":", 1)[-1]: r for spec, r in results.items()}


def mious(path: Path) -> dict[str, float]:
    """{dataset: mIoU %} of a run's scored file (`last_scores`)."""
    return {d: 100 * r["miou"] for d, r in last_scores(path).items()}


def class_ious(path: Path) -> dict[str, dict[str, float]]:
    """{dataset: {class: IoU %}} of a run's scored file (`last_scores`)."""
    out = {}
    for d, r in last_scores(path).items():
        if "per_class" not in r:
            raise SystemExit(f"{path}: {d} has no per-class IoU; score it with `edgeseg eval "
                             "--json` or a trainer that logs per_class")
        out[d] = {c: 100 * v for c, v in r["per_class"].items()}
    return out


def class_table(files: dict[str, list[Path]], order: list[str]) -> tuple[str, dict]:
    """Per dataset, a rows x classes table of IoU % (mean over each row's seeds)."""
    names = [n for n in order if n in files] + [n for n in files if n not in order]
    scores = {n: [class_ious(f) for f in files[n]] for n in names}
    data: dict[str, dict[str, dict[str, float]]] = {}
    blocks = []
    first = scores[names[0]][0]  # every file scores the same datasets and classes
    for d in first:
        classes = list(first[d])
        data[d] = {n: {c: float(np.mean([s[d][c] for s in scores[n]])) for c in classes}
                   for n in names}
        blocks.append("\n".join([f"{d} IoU % (mean over seeds)", "",
                                  "| row | " + " | ".join(classes) + " |",
                                  "|---|" + "---|" * len(classes),
                                  *(f"| {n} | " + " | ".join(f"{data[d][n][c]:.2f}"
                                                              for c in classes) + " |"
                                    for n in names)]))
    return "\n\n".join(blocks), data


def plot_classes(data: dict, out: Path) -> None:
    """One panel per dataset: per-class IoU bars, one bar per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows = len(next(iter(data.values())))
    colours = plt.get_cmap("tab10" if n_rows <= 10 else "tab20").colors  # one per row
    fig, axes = plt.subplots(len(data), 1, figsize=(12, 3.2 * len(data) + 0.25 * n_rows / 3),
                             squeeze=False)
    for ax, (d, rows) in zip(axes[:, 0], data.items(), strict=True):
        classes = list(next(iter(rows.values())))
        width = 0.8 / len(rows)
        for i, (name, ious) in enumerate(rows.items()):
            ax.bar(np.arange(len(classes)) + i * width, [ious[c] for c in classes], width,
                   label=name, color=colours[i % len(colours)])
        ax.set_xticks(np.arange(len(classes)) + width * (len(rows) - 1) / 2, classes)
        ax.set_ylabel(f"{d} IoU %")
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center",
               ncol=min(n_rows, 6), fontsize=8)  # below the panels: it hides no bar
    fig.tight_layout(rect=(0, 0.05 + 0.02 * (n_rows // 6), 1, 1))
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def table(rows: dict[str, list[dict[str, float]]], order: list[str]) -> tuple[str, dict]:
    datasets = list(next(iter(rows.values()))[0])
    names = [n for n in order if n in rows] + [n for n in rows if n not in order]
    lines = ["| row | seeds | " + " | ".join(f"{d} mIoU" for d in datasets) + " |",
             "|---|---|" + "---|" * len(datasets)]
    data = {}
    for name in names:
        runs = rows[name]
        cells = []
        data[name] = {}
        for d in datasets:
            values = np.array([r[d] for r in runs])
            data[name][d] = {"mean": float(values.mean()), "values": values.round(2).tolist()}
            spread = f" ({', '.join(f'{v:.2f}' for v in values)})" if len(values) > 1 else ""
            cells.append(f"{values.mean():.2f}{spread}")
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines), data


def plot(data: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(data)
    datasets = list(next(iter(data.values())))
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 4))
    width = 0.8 / len(datasets)
    for i, d in enumerate(datasets):
        means = [data[n][d]["mean"] for n in names]
        ax.bar(np.arange(len(names)) + i * width, means, width, label=d)
        for j, n in enumerate(names):
            vals = data[n][d]["values"]
            ax.scatter([j + i * width] * len(vals), vals, color="black", s=8, zorder=3)
    ax.set_xticks(np.arange(len(names)) + width * (len(datasets) - 1) / 2, names, rotation=20,
                  ha="right")
    ax.set_ylabel("mIoU %")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("root", type=Path)
    p.add_argument("--rows", action="append", default=[], metavar="NAME=FILE",
                   help="eval.json or metrics.jsonl added to row NAME (repeatable)")
    p.add_argument("--order", default="", help="comma-separated row order")
    p.add_argument("--final-iteration", type=int, metavar="N",
                   help="count a run scored from its metrics.jsonl only if it validated at N")
    p.add_argument("--per-class", action="store_true",
                   help="also OUT.classes.md / OUT-classes.png: per-class IoU of every row")
    p.add_argument("--out", type=Path, required=True, help="OUT.md, OUT.json, OUT.png")
    args = p.parse_args()
    order = [n for n in args.order.split(",") if n]
    files = scored_files(args.root, args.rows, args.final_iteration)
    text, data = table(row_mious(files), order)
    if args.per_class:
        classes_text, classes = class_table(files, order)
        write_text(args.out.with_suffix(".classes.md"), classes_text + "\n")
        plot_classes(classes, args.out.with_name(args.out.name + "-classes.png"))
        for name in data:
            for d in data[name]:
                data[name][d]["per_class"] = classes[d][name]
    write_text(args.out.with_suffix(".table.md"), text + "\n")
    write_json(args.out.with_suffix(".json"), data)
    plot(data, args.out.with_suffix(".png"))
    print(text)


if __name__ == "__main__":
    main()
