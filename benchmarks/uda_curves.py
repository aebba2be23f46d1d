"""Validation mIoU over iterations for UDA runs (one metrics.jsonl each), one panel per
dataset, with the starting model as a dashed line and the source-domain budget shaded.

    python benchmarks/uda_curves.py \\
        --run "paper, LR 5e-5=runs/mobilenet_uda_camvid/metrics.jsonl" \\
        --run "paper, LR 1e-5=runs/mobilenet_uda_camvid_lr1e-5/metrics.jsonl" \\
        --start benchmarks/results/camvid/source_only-eval.json --source day_val --budget 2 \\
        --out benchmarks/results/camvid/mobilenet_uda-curves.png

Why: the end point of a short run hides whether the source domain is still falling or the
target still rising; the curve shows both, and where a day_val-selected checkpoint sits.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from uda_report import mious, validations  # benchmarks/, beside this script

from edgeseg.fileio import atomic_path, write_text


def val_curves(metrics: Path) -> dict[str, list[tuple[int, float]]]:
    """dataset (last ':' field of its spec) -> [(iteration, mIoU %)] from a trainer log."""
    curves: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for record in validations(metrics):
        curves[record["data"].rsplit(":", 1)[-1]].append((record["iter"], 100 * record["miou"]))
    return dict(curves)


def table(runs: dict[str, dict[str, list[tuple[int, float]]]], start: dict[str, float],
          source: str) -> str:
    """Markdown: each run's last validation, with the change from the start in brackets."""
    datasets = sorted({d for curves in runs.values() for d in curves}, key=lambda d: d != source)
    lines = ["| run | iteration | " + " | ".join(datasets) + " |",
             "|---|---|" + "---|" * len(datasets)]
    if start:
        lines.append("| start | 0 | " + " | ".join(f"{start.get(d, float('nan')):.2f}"
                                                   for d in datasets) + " |")
    for name, curves in runs.items():
        last_it = max(it for points in curves.values() for it, _ in points)
        cells = []
        for d in datasets:
            value = dict(curves.get(d, [])).get(last_it)
            delta = f" ({value - start[d]:+.2f})" if value is not None and d in start else ""
            cells.append("-" if value is None else f"{value:.2f}{delta}")
        lines.append(f"| {name} | {last_it} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(runs: dict[str, dict[str, list[tuple[int, float]]]], start: dict[str, float],
         source: str, budget: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({d for curves in runs.values() for d in curves}, key=lambda d: d != source)
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        if dataset in start:
            ax.axhline(start[dataset], color="gray", ls="--", label="start (source-only)")
            if dataset == source and budget > 0:
                ax.axhspan(start[dataset] - budget, start[dataset], color="green", alpha=0.12,
                           label=f"within {budget:g} of start")
        for name, curves in runs.items():
            if dataset in curves:
                points = curves[dataset]
                if dataset in start and points[0][0] > 0:  # every run starts from that model
                    points = [(0, start[dataset]), *points]
                its, values = zip(*points)
                ax.plot(its, values, marker="o", label=name)
        ax.set_title(dataset + (" (source)" if dataset == source else " (target)"))
        ax.set_xlabel("iteration")
        ax.set_ylabel("mIoU %")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", action="append", required=True, metavar="NAME=METRICS.jsonl")
    p.add_argument("--start", type=Path, help="`edgeseg eval --json` of the starting model")
    p.add_argument("--source", default="day_val", help="the source-domain dataset")
    p.add_argument("--budget", type=float, default=2.0, help="allowed source mIoU loss")
    p.add_argument("--out", type=Path, required=True, help="the PNG")
    p.add_argument("--table", type=Path, help="also write the last validations as Markdown")
    args = p.parse_args()
    runs = {}
    for item in args.run:
        name, sep, path = item.rpartition("=")
        if not sep:
            p.error(f"--run {item!r}: expected NAME=METRICS.jsonl")
        runs[name] = val_curves(Path(path))
    start = mious(args.start) if args.start else {}
    plot(runs, start, args.source, args.budget, args.out)
    text = table(runs, start, args.source)
    if args.table:
        write_text(args.table, text)
    print(text + f"wrote {args.out}")


if __name__ == "__main__":
    main()
