"""Tune the deployed class re-weighting of a DANIA checkpoint (dania.txt Sec. 3.3, Eq. 2).

The deployed graph adds log w_k to the logits (argmax of P * w); w_k = z_k * std + avg
with z_k the standardised -log a_k of the source's class frequencies (stored in the
checkpoint). The paper tunes std in 0.10-0.14 on a labelled validation split; this runs
the segmenter once per frame and scores every std from the same logits (std 0: no bias).

    python benchmarks/dania_std_sweep.py runs/dania_synthetic/best.pt \\
        --data synthetic:demo_out/synth:night_val synthetic:demo_out/synth:day_val \\
        --std 0 0.04 0.08 0.10 0.12 0.14 0.2 --json sweep.json --png sweep.png

The first --data split chooses the std; the others show what that choice costs elsewhere.
``--apply OUT.pt`` writes the checkpoint's weights (as `edgeseg strip` does) with the
chosen std's bias as what it deploys, so ``edgeseg export OUT.pt`` exports the tuned graph
without retraining (the recipe's ``method.params.deploy_reweight_std`` is only the start).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm import tqdm

from edgeseg.data import spread_indices
from edgeseg.evaluate import FrameScorer, open_eval_dataset
from edgeseg.fileio import atomic_path, write_text
from edgeseg.models.compose import log_weights
from edgeseg.runtime.stages import fit_frame, unfit_labels
from edgeseg.train.checkpoint import load_checkpoint, save_checkpoint
from edgeseg.train.nets.losses import class_frequency_weights
from edgeseg.train.predict import TorchPredictor
from edgeseg.train.strip import strip_checkpoint


def sweep(checkpoint: str, specs: list[str], stds: list[float], max_images: int = 0,
          size: tuple[int, int] | None = None) -> dict[str, dict[str, float]]:
    """{spec: {std: mIoU}} for the deployed graph with each std's bias."""
    state = load_checkpoint(checkpoint)
    extra = (state.get("method_state") or {}).get("extra") or {}
    if state.get("method") != "dania" or "class_frequencies" not in extra:
        raise SystemExit(f"{checkpoint}: not a DANIA checkpoint with class frequencies")
    avg = float((state["recipe"]["method"]["params"] or {}).get("reweight_avg", 1.0))
    freq = extra["class_frequencies"]
    biases = {}
    for std in stds:
        w = class_frequency_weights(freq, std=std, avg=avg) if std > 0 else torch.ones(len(freq))
        if (w <= 0).any():
            raise SystemExit(f"std {std}: some weights are <= 0; use a smaller std")
        biases[std] = torch.log(w).view(1, -1, 1, 1)
    predictor, _ = TorchPredictor.from_checkpoint(checkpoint)
    predictor.size = size
    model = predictor.model
    own = model.class_bias
    model.class_bias = None  # raw logits; each std's bias is added below
    results: dict[str, dict[str, float]] = {}
    try:
        for spec in specs:
            data = open_eval_dataset(spec, predictor.label_space)
            scorers = {std: FrameScorer(predictor.label_space, data.label_space) for std in stds}
            indices = spread_indices(len(data), max_images)  # as eval samples --max-images
            for i in tqdm(indices, desc=spec.rsplit(":", 1)[-1], leave=False):
                sample = data[i]
                fitted, box = fit_frame(sample["image"], predictor.size)
                logits = predictor.logits(fitted)
                for std, bias in biases.items():
                    labels = (logits + bias).argmax(1)[0].to(torch.uint8).numpy()
                    scorers[std].update(unfit_labels(labels, box, sample["image"].shape[:2]),
                                        sample["label"], sample["name"])
            results[spec] = {str(std): scorers[std].metrics().miou for std in stds}
    finally:
        model.class_bias = own
    return results


def plot(results: dict[str, dict[str, float]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for spec, row in results.items():
        stds = [float(s) for s in row]
        ax.plot(stds, [100 * v for v in row.values()], marker="o", label=spec.rsplit(":", 1)[-1])
    ax.set_xlabel("std of Eq. 2 (0: no re-weighting)")
    ax.set_ylabel("mIoU %")
    ax.set_title("DANIA deployed class re-weighting")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def apply_std(checkpoint: str, std: float, out: Path) -> list[float] | None:
    """Write ``checkpoint``'s weights to ``out`` deploying std's bias (std 0: none); returns
    the bias log w_k."""
    state = load_checkpoint(checkpoint)
    freq = ((state.get("method_state") or {}).get("extra") or {}).get("class_frequencies")
    if state.get("method") != "dania" or freq is None:
        raise SystemExit(f"{checkpoint}: not a DANIA checkpoint with class frequencies")
    params = state["recipe"]["method"]["params"] or {}
    bias = None
    if std > 0:
        w = class_frequency_weights(freq, std=std, avg=float(params.get("reweight_avg", 1.0)))
        if (w <= 0).any():
            raise SystemExit(f"std {std}: some weights are <= 0; use a smaller std")
        bias = list(log_weights(w.tolist()))
    tuned = strip_checkpoint(state)
    tuned["deploy"] = {**tuned["deploy"], "class_bias": bias}
    tuned["recipe"]["method"]["params"] = {**params, "deploy_reweight_std": std or None}
    save_checkpoint(out, tuned)
    return bias


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", nargs="+", required=True, metavar="SPEC",
                        help="labelled splits; the first chooses the std")
    parser.add_argument("--std", nargs="+", type=float,
                        default=[0.0, 0.04, 0.08, 0.10, 0.12, 0.14, 0.2])
    parser.add_argument("--max-images", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--png", type=Path)
    parser.add_argument("--apply", type=Path, metavar="OUT.pt",
                        help="write the checkpoint deploying the chosen std (for edgeseg export)")
    args = parser.parse_args()
    results = sweep(args.checkpoint, args.data, args.std, args.max_images)
    first = results[args.data[0]]
    best = max(first, key=first.get)
    print("| split | " + " | ".join(f"std {s}" for s in first) + " |")
    print("|---|" + "---|" * len(first))
    for spec, row in results.items():
        print(f"| {spec.rsplit(':', 1)[-1]} | " + " | ".join(f"{100 * v:.2f}" for v in row.values())
              + " |")
    print(f"best on {args.data[0].rsplit(':', 1)[-1]}: std {best}")
    if args.json:
        write_text(args.json, json.dumps({"results": results, "best_std": float(best),
                                          "chosen_on": args.data[0]}, indent=1) + "\n")
    if args.png:
        plot(results, args.png)
    if args.apply:
        apply_std(args.checkpoint, float(best), args.apply)
        print(f"wrote {args.apply}: deploys std {best}; export it with `edgeseg export "
              f"{args.apply} -o model.onnx`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
