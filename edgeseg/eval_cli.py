"""``edgeseg eval``: score a model on one or more dataset specs.

Prints a per-class table per dataset (and the gap between the first two, e.g.
day vs night), optionally writes JSON, an overlay grid and IoU bars. With
``--translator ENGINE`` every frame goes through that image-to-image engine first,
chained exactly as ``edgeseg run --translator`` chains it (`TranslatedPredictor`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgeseg.argtypes import Device
from edgeseg.errors import EdgesegError
from edgeseg.evaluate import Predictor, evaluate, open_eval_dataset
from edgeseg.fileio import write_json
from edgeseg.labels import get_label_space
from edgeseg.metrics import compare_summaries, format_table


def load_predictor(model: str, device: Device | str = "auto", translator: str | None = None,
                   translate_below: float | None = None) -> tuple[Predictor, str, dict]:
    """(predictor, label-space name, info) for a checkpoint, an ONNX file or an engine,
    opened by `open_predictor` as compare and bench open it.

    ``device`` (``cpu``, ``cuda[:N]``, ``auto``) goes to PyTorch for a checkpoint and, as
    the GPU index, to the backend for an ONNX file or engine. ``translator``: an
    image-to-image engine run on every frame first (`TranslatedPredictor`, the chain of
    ``edgeseg run --translator``), gated on ``translate_below`` as ``run --translate-below``
    (None: the gate the translator's metadata records, if any).
    """
    from edgeseg.export.predictors import open_predictor
    from edgeseg.runtime.predictor import open_translator
    from edgeseg.runtime.stages import TranslatedPredictor

    if translate_below is not None and not translator:
        raise EdgesegError("--translate-below gates a translator: give --translator ENGINE")
    predictor = open_predictor(model, device)
    info = dict(predictor.info)
    if translator:
        try:
            stage = open_translator(translator, device, below=translate_below)
        except BaseException:
            predictor.close()
            raise
        predictor = TranslatedPredictor(stage, predictor)
        info["translator"] = str(translator)
        if stage.below is not None:  # the flag's, else the translator's recorded gate
            info["translate_below"] = stage.below
            info["gate_source"] = stage.gate_source
    return predictor, str(predictor.label_space), info


def run_eval(args: argparse.Namespace) -> int:
    from edgeseg.fileio import check_outputs

    check_outputs([args.json, args.overlays, args.plot])  # before minutes of scoring
    text = sys.stderr if args.json == "-" else sys.stdout  # stdout carries only the JSON then
    translator = getattr(args, "translator", None)
    predict, space_name, info = load_predictor(args.model, args.device, translator,
                                               getattr(args, "translate_below", None))
    name = f"{args.model} behind {translator}" if translator else args.model
    below = info.get("translate_below")
    if below is not None:
        name += f" (frames darker than luma {below:g}" + (
            ", the translator's recorded gate)" if info["gate_source"] == "metadata" else ")")
    model_space = get_label_space(space_name)
    results, samples, space_of, bands = {}, [], {}, {}
    band = getattr(args, "band", 0)
    stage = predict.translator if below is not None else None  # the gated TranslateStage
    gated: dict[str, dict[str, int]] = {}
    for spec in args.data:
        dataset = open_eval_dataset(spec, model_space)
        if not dataset.has_labels:
            print(f"skip {spec}: its labels are absent (nothing to score)", file=sys.stderr)
            continue
        before = (stage.translated, stage.passed) if stage is not None else (0, 0)
        res = evaluate(predict, dataset, model_space, max_images=args.max_frames,
                       keep_samples=2, desc=spec, band=band)
        results[spec] = res.metrics
        if res.band_metrics is not None:
            bands[spec] = res.band_metrics
        if stage is not None:
            gated[spec] = {"translated": stage.translated - before[0],
                           "passed": stage.passed - before[1]}
            print(f"{spec}: translated {gated[spec]['translated']} frames, passed "
                  f"{gated[spec]['passed']} through (mean luma >= {below:g})", file=text)
        space_of[spec] = dataset.label_space
        samples += [(f"{spec} {n}", img, p, g) for n, img, p, g in res.samples]
        print(format_table(res.metrics, title=f"{name} on {spec}"), file=text)
        if res.band_metrics is not None:
            print(f"within {band} px of a label boundary: mIoU "
                  f"{100 * res.band_metrics.miou:.2f}, pixel acc "
                  f"{100 * res.band_metrics.pixel_acc:.2f} ({res.band_metrics.num_pixels} px)",
                  file=text)
        print(file=text)
    if len(results) >= 2:
        (a, ma), (b, mb) = list(results.items())[:2]
        print(compare_summaries(ma, mb, a.split(":")[-1], b.split(":")[-1],
                                title=f"gap {a} -> {b}"), file=text)
    if args.json:
        write_json(args.json, {"model": args.model, **info,
                               "results": {k: v.to_dict() for k, v in results.items()},
                               **({"gate": gated} if gated else {}),
                               **({"band_px": band, "band_results": {
                                   k: v.to_dict() for k, v in bands.items()}} if bands else {})})
    if results and args.overlays:
        from edgeseg.viz import save_overlay_grid

        save_overlay_grid(args.overlays, samples, next(iter(space_of.values())))
        print(f"overlays: {args.overlays}", file=text)
    if results and args.plot:
        from edgeseg.viz import plot_iou_bars

        plot_iou_bars(args.plot, {k.split(":")[-1]: v for k, v in results.items()},
                      title=f"per-class IoU: {Path(args.model).name}")
        print(f"per-class IoU plot: {args.plot}", file=text)
    return 0 if results else 1
