"""Export a checkpoint, make its fp16 and int8 variants, and measure mIoU and CPU latency.

    python benchmarks/precision_report.py CKPT --out benchmarks/results/camvid \\
        --name source_only --size 480x360 --calib camvid:../shared/data/camvid:dusk_train \\
        --data camvid:../shared/data/camvid:day_val --data camvid:../shared/data/camvid:dusk_train

Writes NAME.fp32.onnx and NAME.int8.onnx (TensorRT-compatible Q/DQ, the files
TensorRT builds) plus NAME.fp16.onnx and NAME.int8-ort.onnx (ONNX Runtime's
fastest flavour) into --out, and a report NAME-precision.md/.json with mIoU per
dataset, the drop against fp32, and ONNX Runtime CPU latency (p50/mean over
--iterations runs of one frame, pre/post-processing in the graph).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import onnxruntime

from edgeseg.argtypes import parse_hw
from edgeseg.data import open_dataset
from edgeseg.evaluate import evaluate
from edgeseg.export.export_cli import export_gated
from edgeseg.export.onnx_export import ExportOptions
from edgeseg.export.variants import make_variant
from edgeseg.fileio import write_json, write_text
from edgeseg.runtime.latency import measure_latency
from edgeseg.runtime.predictor import BackendPredictor, load_backend


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--size", default="480x360", help="export size WxH")
    p.add_argument("--calib", required=True, help="int8 calibration spec (target domain)")
    p.add_argument("--calib-frames", type=int, default=64)
    p.add_argument("--data", action="append", required=True, help="labelled eval specs")
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--keep-fp32", nargs="*", default=[], help="int8: nodes kept in fp32")
    args = p.parse_args(argv)

    out = Path(args.out)
    h, w = parse_hw(args.size)
    fp32 = out / f"{args.name}.fp32.onnx"
    t0 = time.perf_counter()
    _, parity = export_gated(args.checkpoint, fp32, ExportOptions(height=h, width=w),
                             parity_data=args.data[0])
    variants = {
        "fp32": fp32,
        "fp16": make_variant(fp32, out / f"{args.name}.fp16.onnx", "fp16"),
        "int8 (TensorRT Q/DQ)": make_variant(fp32, out / f"{args.name}.int8.onnx", "int8",
                                             calib=args.calib, calib_frames=args.calib_frames,
                                             flavour="tensorrt", keep_fp32=args.keep_fp32),
        "int8 (ORT Q/DQ)": make_variant(fp32, out / f"{args.name}.int8-ort.onnx", "int8",
                                        calib=args.calib, calib_frames=args.calib_frames,
                                        flavour="onnxruntime", keep_fp32=args.keep_fp32),
    }
    datasets = {spec: open_dataset(spec) for spec in args.data}
    rows = {}
    for label, path in variants.items():
        backend = load_backend(path, intra_op_threads=args.threads)
        predict = BackendPredictor(backend)
        row = {"file": path.name, "size_mb": path.stat().st_size / 1e6}
        for spec, data in datasets.items():
            row[spec] = evaluate(predict, data, predict.label_space, desc=f"{label} {spec}"
                                 ).metrics.to_dict()
        first = next(iter(datasets.values()))[0]["image"]
        row["latency_ms_p50"], row["latency_ms_mean"] = measure_latency(
            predict, first, iterations=args.iterations)
        rows[label] = row
        backend.close()
        print(f"{label:22s} " + "  ".join(f"{s.split(':')[-1]} {100 * row[s]['miou']:.2f}"
                                        for s in datasets) + f"  {row['latency_ms_p50']:.1f} ms",
              flush=True)

    base = rows["fp32"]
    lines = [f"# {args.name}: precision variants ({w}x{h}, uint8 BGR in, uint8 labels out)", "",
             f"Checkpoint `{args.checkpoint}`; int8 calibrated on `{args.calib}` "
             f"({args.calib_frames} frames, minmax). Machine: {cpu_name()}, "
             f"ONNX Runtime {onnxruntime.__version__}, {args.threads} intra-op threads, CPU "
             "execution provider. Latency = one frame end to end through the graph (pre/post "
             f"included), p50 of {args.iterations} runs after warm-up.", "",
             f"Export parity vs PyTorch: agreement {100 * parity.agreement:.3f} %, "
             f"max |dlogit| {parity.max_abs_logit_diff:.2e}.", "",
             "| variant | " + " | ".join(f"{s.split(':')[-1]} mIoU (drop)" for s in datasets)
             + " | p50 ms | mean ms | MB |",
             "|---|" + "---|" * (len(datasets) + 3)]
    for label, row in rows.items():
        cells = [f"{100 * row[s]['miou']:.2f} ({100 * (base[s]['miou'] - row[s]['miou']):+.2f})"
                 for s in datasets]
        lines.append(f"| {label} | " + " | ".join(cells)
                     + f" | {row['latency_ms_p50']:.1f} | {row['latency_ms_mean']:.1f} "
                       f"| {row['size_mb']:.1f} |")
    lines += ["", "Command:", "", "    python " + " ".join(sys.argv), "",
              f"({time.perf_counter() - t0:.0f} s)"]
    from edgeseg.metrics import SegMetrics
    from edgeseg.viz import plot_iou_delta_bars

    for spec in datasets:
        split = spec.split(":")[-1]
        png = out / f"{args.name}-int8-delta-{split}.png"
        plot_iou_delta_bars(png, SegMetrics.from_dict(base[spec]),
                            SegMetrics.from_dict(rows["int8 (TensorRT Q/DQ)"][spec]),
                            title=f"{args.name} on {split}: int8 (TensorRT Q/DQ) - fp32",
                            base_name="fp32", other_name="int8")
        lines.insert(lines.index("Command:"), f"![int8 vs fp32 per-class IoU on {split}]"
                                              f"({png.name})\n")
    write_text(out / f"{args.name}-precision.md", "\n".join(lines) + "\n")
    write_json(out / f"{args.name}-precision.json",
               {"checkpoint": args.checkpoint, "size": [h, w], "calib": args.calib,
                "cpu": cpu_name(), "onnxruntime": onnxruntime.__version__,
                "threads": args.threads, "parity": parity.to_dict(), "variants": rows})
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
