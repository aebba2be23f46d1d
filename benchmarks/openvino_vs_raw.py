"""edgeseg's OpenVINO engine against raw OpenVINO, benchmark_app and ONNX Runtime, on this CPU.

One interleaved run on the same ONNX file (default: the committed CamVid int8 model, 480x360,
uint8 BGR frame in, labels out):

- **latency**: raw OpenVINO (the ``openvino`` Python API and nothing of edgeseg, f32 as the
  engines are built, and OpenVINO's own default precision), OpenVINO's ``benchmark_app`` (when
  installed), raw ONNX Runtime, and edgeseg's engines built by ``edgeseg build-engine``
  (OpenVINO and ONNX Runtime backends), timed as ``edgeseg bench`` times them (frame in,
  labels out, pre/post-processing included). Each round runs every contender in a rotated
  order, so a neighbour's load on the shared CPU hits all of them alike; p50/p99 over all
  rounds, and each one's ratio to raw OpenVINO;
- **throughput**: ``edgeseg run`` video -> overlay -> mp4 at 480x360 against the raw engine's
  frames/s (raw OpenVINO with the engine's hint, threads and number of infer requests,
  AsyncInferQueue), interleaved raw / run / raw;
- **accuracy** (``--miou``): ``edgeseg eval`` of the OpenVINO engines of the committed fp32
  and int8 files of both CamVid models on day_val and dusk_train;
- **compute bound**: the model's multiply-accumulates counted from the ONNX graph, the
  cores' int8 peak from the ISA (VNNI: 64 int8 MACs per 512-bit VPDPBUSD) and clock, and the
  int8 rate OpenVINO reaches on a large int8 1x1 convolution on the same cores.

    .venv/bin/python benchmarks/openvino_vs_raw.py --threads 2 --rounds 6 --miou \\
        --json benchmarks/results/openvino.json

The CPU model, its flags and the thread count come from /proc/cpuinfo and go into the JSON.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "data" / "camvid"
RESULTS = REPO / "benchmarks" / "results" / "camvid"
EDGESEG = [sys.executable, "-m", "edgeseg.cli"]
FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
                     "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "avx512_vp2intersect")


# ----------------------------------------------------------------------------- machine


def cpu_info(threads: int) -> dict[str, Any]:
    """Model, flags of interest, clock and cores from /proc/cpuinfo (the machine of record)."""
    model, flags, mhz = "", [], []
    for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
        key, _, value = (s.strip() for s in line.partition(":"))
        if key == "model name" and not model:
            model = value
        elif key == "flags" and not flags:
            flags = value.split()
        elif key == "cpu MHz":
            mhz.append(float(value))
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 0
    return {"model": model, "arch": platform.machine(), "logical_cores": os.cpu_count(),
            "usable_cores": usable, "threads_used": threads,
            "mhz": round(max(mhz), 1) if mhz else None,
            "flags": [f for f in FLAGS_OF_INTEREST if f in flags],
            "load_1min": round(os.getloadavg()[0], 2)}


def versions() -> dict[str, str]:
    import onnxruntime
    import openvino

    return {"python": platform.python_version(), "openvino": openvino.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
            "opencv": cv2.__version__}


@functools.cache
def ov_core() -> Any:
    """One Core for the raw OpenVINO side, as an application keeps one (a Core per model
    loads a CPU plugin each, and freeing them out of order leaves a dangling signal stack)."""
    import openvino as ov

    return ov.Core()


# ----------------------------------------------------------------------------- compute bound


def count_macs(onnx_path: Path) -> dict[str, float]:
    """Multiply-accumulates of every Conv/MatMul/Gemm, from ONNX shape inference: total,
    and the part in depthwise convolutions (one input channel per group: memory-bound, far
    from any MAC peak)."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(model.graph.value_info) + list(model.graph.output)
              + list(model.graph.input)}
    inits = {i.name: numpy_helper.to_array(i).shape for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}

    def weight_shape(name: str) -> tuple[int, ...] | None:
        seen = 0
        while name not in inits and name in producers and seen < 4:  # through Q/DQ
            name = producers[name].input[0]
            seen += 1
        return inits.get(name)

    total = depthwise = 0.0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm"):
            continue
        out = shapes.get(node.output[0])
        w = weight_shape(node.input[1])
        if not out or w is None:
            continue
        if node.op_type == "Conv":  # out N,Cout,H,W; weight Cout, Cin/group, kh, kw
            macs = float(np.prod(out)) * float(np.prod(w[1:]))
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            if group > 1 and w[1] == 1:
                depthwise += macs
        else:
            macs = float(np.prod(out)) * float(w[0])
        total += macs
    return {"total": total, "depthwise": depthwise}


def int8_peak_model(path: Path, channels: int = 512, size: int = 64) -> float:
    """A 1x1 convolution in int8 Q/DQ (symmetric, as the TensorRT flavour): MACs it does."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (channels, channels, 1, 1)).astype(np.int8)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "z"], ["wd"]),
        helper.make_node("Conv", ["xd", "wd"], ["y"]),
        helper.make_node("QuantizeLinear", ["y", "s2", "z"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "s2", "z"], ["yd"]),
        helper.make_node("Conv", ["yd", "wd"], ["out"]),
    ]
    inits = [numpy_helper.from_array(np.float32(0.05), "s"),
             numpy_helper.from_array(np.float32(2.0), "s2"),
             numpy_helper.from_array(np.int8(0), "z"),
             numpy_helper.from_array(np.float32(0.01), "ws"),
             numpy_helper.from_array(w, "wq")]
    shape = [1, channels, size, size]
    graph = helper.make_graph(nodes, "int8peak",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, shape)],
                              inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return 2.0 * channels * channels * size * size


def measure_int8_peak(workdir: Path, threads: int, iterations: int = 40) -> dict[str, Any]:
    path = workdir / "int8peak.onnx"
    macs = int8_peak_model(path)
    compiled = ov_core().compile_model(str(path), "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    x = np.random.default_rng(1).normal(0, 2, compiled.inputs[0].shape).astype(np.float32)
    for _ in range(5):
        request.infer({0: x})
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        request.infer({0: x})
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {"macs": macs, "best_ms": best * 1e3, "gmac_per_s": macs / best / 1e9,
            "what": "two int8 1x1 convolutions 512->512 at 64x64 (Q/DQ, OpenVINO CPU)"}


def theoretical_int8_peak(cpu: dict[str, Any], threads: int) -> dict[str, Any]:
    """cores x clock x int8 MACs per cycle. VPDPBUSD on a 512-bit register does 64 int8
    multiply-accumulates (16 int32 lanes x 4 bytes). How many a core issues per cycle depends
    on the microarchitecture, which a VM's /proc/cpuinfo does not name: 1 (Zen 4 runs 512-bit
    ops as two 256-bit halves; Intel cores with one 512-bit FMA port) or 2 (Zen 5, whose
    AVX512_VP2INTERSECT flag a Zen 4 lacks; Intel Xeons with two FMA ports). The bound uses 2,
    the stricter. AVX-VNNI only (256-bit): 32 MACs per instruction. AVX2 without VNNI:
    VPMADDUBSW + VPMADDWD + VPADDD, 32 MACs per 3 instructions, about 16 per cycle. The clock is
    /proc/cpuinfo's (a VM reports the nominal clock; boost makes the real peak higher)."""
    flags = cpu["flags"]
    if "avx512_vnni" in flags:
        per_instr, isa = 64, "AVX-512 VNNI (VPDPBUSD zmm: 64 int8 MACs)"
    elif "avx_vnni" in flags:
        per_instr, isa = 32, "AVX-VNNI (VPDPBUSD ymm: 32 int8 MACs)"
    else:
        per_instr, isa = 16, "AVX2 (VPMADDUBSW/VPMADDWD/VPADDD: ~16 int8 MACs/cycle)"
    ghz = (cpu["mhz"] or 2000.0) / 1000.0
    issue = 2 if per_instr > 16 else 1
    peak = {"isa": isa, "macs_per_instruction": per_instr, "issue_per_cycle": issue,
            "ghz": ghz, "cores": threads,
            "gmac_per_s_1_per_cycle": threads * ghz * per_instr,
            "gmac_per_s": threads * ghz * per_instr * issue}
    if "amx_int8" in flags:
        # AMX's TDPBUSD: a 16x64 by 64x16 int8 tile product (16,384 MACs) per 16 cycles per
        # core, 1024 MACs per cycle. Only large, dense convolutions approach it; reported
        # beside the VNNI peak (which the goal names), not instead of it
        peak["amx_gmac_per_s"] = threads * ghz * 1024
    return peak


# ----------------------------------------------------------------------------- frames, engines


def camvid_frames(count: int) -> list[np.ndarray]:
    """BGR 480x360 frames of CamVid dusk_train (else the generator's night drive)."""
    if CAMVID.is_dir():
        names = (CAMVID / "splits" / "dusk_train.txt").read_text().split()
        step = max(1, len(names) // count)
        return [cv2.resize(cv2.imread(str(CAMVID / "images" / f"{n}.png")), (480, 360))
                for n in names[::step][:count]]
    from edgeseg.data.synth.video import iter_video_frames

    return [cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
            for rgb, _ in iter_video_frames("night", (480, 360), 0, count)]


def write_video(path: Path) -> int:
    """CamVid dusk_train + dusk_test + day_val as a 30 fps mp4 at 480x360 (295 frames)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 30, (480, 360))
    n = 0
    if CAMVID.is_dir():
        for split in ("dusk_train", "dusk_test", "day_val"):
            for name in (CAMVID / "splits" / f"{split}.txt").read_text().split():
                writer.write(cv2.resize(cv2.imread(str(CAMVID / "images" / f"{name}.png")),
                                        (480, 360)))
                n += 1
    else:
        for frame in camvid_frames(240):
            writer.write(frame)
            n += 1
    writer.release()
    return n


def sh(cmd: list[str], log: list[str], **kw: Any) -> subprocess.CompletedProcess:
    """Run an edgeseg command (recorded with its exact argv), fail loudly."""
    printable = " ".join(["edgeseg", *cmd[len(EDGESEG):]]) if cmd[:len(EDGESEG)] == EDGESEG \
        else " ".join(cmd)
    log.append(printable)
    print(f"$ {printable}", flush=True)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, **kw)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {printable}\n{done.stderr[-3000:]}")
    return done


def build(model: Path, out: Path, backend: str, threads: int, log: list[str],
          *extra: str) -> Path:
    if not Path(str(out) + ".json").is_file():
        sh([*EDGESEG, "build-engine", str(model), "-o", str(out), "--backend", backend,
            "--threads", str(threads), *extra], log)
    return out


# ----------------------------------------------------------------------------- contenders


class Contender:
    def __init__(self, name: str, run: Callable[[np.ndarray], Any], what: str) -> None:
        self.name, self.run, self.what = name, run, what
        self.times: list[float] = []

    def round(self, frames: list[np.ndarray], warmup: int, iters: int) -> None:
        for i in range(warmup):
            self.run(frames[i % len(frames)])
        for i in range(iters):
            frame = frames[i % len(frames)]
            t0 = time.perf_counter()
            self.run(frame)
            self.times.append((time.perf_counter() - t0) * 1e3)

    def stats(self) -> dict[str, Any]:
        a = np.asarray(self.times)
        return {"name": self.name, "what": self.what, "count": int(a.size),
                "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
                "mean_ms": float(a.mean()), "min_ms": float(a.min())}


def raw_openvino(model: Path, threads: int, precision: str | None) -> Callable[[np.ndarray], Any]:
    props: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    if precision:
        props["INFERENCE_PRECISION_HINT"] = precision
    compiled = ov_core().compile_model(str(model), "CPU", props)
    request = compiled.create_infer_request()
    output = compiled.outputs[0]
    return lambda frame: request.infer({0: frame[None]})[output]


def raw_openvino_async(model: Path, threads: int) -> Callable[[np.ndarray], Any]:
    """The same request through the asynchronous API (start_async + wait), as benchmark_app
    and `edgeseg run` drive it."""
    compiled = ov_core().compile_model(str(model), "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    output = compiled.outputs[0]

    def run(frame: np.ndarray) -> Any:
        request.start_async({0: frame[None]})
        request.wait()
        return request.get_tensor(output).data.copy()

    return run


def raw_onnxruntime(model: Path, threads: int) -> Callable[[np.ndarray], Any]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda frame: session.run(None, {name: frame[None]})[0]


def edgeseg_engine(engine: Path) -> Callable[[np.ndarray], Any]:
    """The engine as `edgeseg bench` times it: SegmentStage.process, frame in, labels out."""
    from edgeseg.bench.targets import open_target
    from edgeseg.runtime.sources import SourceFrame
    from edgeseg.runtime.stages import Packet

    stage = open_target(engine, device="cpu").stage  # type: ignore[attr-defined]

    def run(frame: np.ndarray) -> Any:  # a BGR camera frame, as BackendTarget.runner feeds
        return stage.process(Packet(SourceFrame(0, frame, 0.0), frame)).labels

    return run


def benchmark_app(model: Path, threads: int, iters: int, percentile: int) -> float | None:
    """benchmark_app's latency at ``percentile`` (ms) with one stream and request, as the
    LATENCY engines run (its UI needs -hint none to take -nthreads/-nstreams)."""
    exe = shutil.which("benchmark_app") or str(Path(sys.executable).with_name("benchmark_app"))
    if not Path(exe).is_file():
        return None
    done = subprocess.run([exe, "-m", str(model), "-d", "CPU", "-hint", "none", "-nstreams", "1",
                           "-nthreads", str(threads), "-nireq", "1", "-niter", str(iters),
                           "-infer_precision", "f32", "-latency_percentile", str(percentile)],
                          capture_output=True, text=True, timeout=600)
    pattern = r"Median:\s+([\d.]+) ms" if percentile == 50 else \
        rf"{percentile} percentile:\s+([\d.]+) ms"
    found = re.search(pattern, done.stdout)
    return float(found.group(1)) if found else None


# ----------------------------------------------------------------------------- throughput


def raw_async_fps(engine_manifest: dict[str, Any], model: Path, frames: list[np.ndarray],
                  count: int) -> float:
    """Raw OpenVINO with the engine's settings (hint, streams, threads, precision, requests):
    an AsyncInferQueue kept full, ``count`` frames, frames/s."""
    import openvino as ov

    b = engine_manifest["build"]
    props: dict[str, Any] = {"PERFORMANCE_HINT": b["performance_hint"],
                             "INFERENCE_PRECISION_HINT": b["inference_precision"],
                             "NUM_STREAMS": b["streams"]}
    if b["threads"]:
        props["INFERENCE_NUM_THREADS"] = b["threads"]
    compiled = ov_core().compile_model(str(model), "CPU", props)
    queue = ov.AsyncInferQueue(compiled, b["infer_requests"])
    for i in range(2 * b["infer_requests"]):
        queue.start_async({0: frames[i % len(frames)][None]})
    queue.wait_all()
    t0 = time.perf_counter()
    for i in range(count):
        queue.start_async({0: frames[i % len(frames)][None]})
    queue.wait_all()
    return count / (time.perf_counter() - t0)


def stream_fps(engine: Path, video: Path, out: Path, log: list[str], sink: str
               ) -> dict[str, Any]:
    """``edgeseg run`` of the video; ``sink``: pyav (H.264 fragmented MP4, the default
    writer, at the default ultrafast preset), pyav-veryfast (H.264 at x264's veryfast:
    smaller files, more CPU), opencv (mp4v) or null (no render, no encode)."""
    summary = out.with_suffix(".json")
    writer, _, preset = sink.partition("-")
    target = ["--sink", "null"] if sink == "null" else \
        ["--sink", str(out), "--video-writer", writer] + \
        (["--video-preset", preset] if preset else [])
    sh([*EDGESEG, "run", str(engine), "--source", str(video), *target,
        "--summary", str(summary), "--no-progress"], log)
    data = json.loads(summary.read_text())
    return {"fps": data["fps"], "frames": data["frames"]["processed"],
            "stages_ms": {k: {s: round(v[f"{s}_ms"], 2) for s in ("p50", "p90", "p99")}
                          for k, v in data["stages_ms"].items()},
            "video": data.get("video")}


# ----------------------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=RESULTS / "source_only.int8.onnx",
                   help="ONNX file every contender runs (default: committed CamVid int8)")
    p.add_argument("--fp32", type=Path, default=RESULTS / "source_only.fp32.onnx",
                   help="fp32 file also timed (raw OpenVINO / ORT / edgeseg OpenVINO)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--iters", type=int, default=30, help="timed calls per contender per round")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--stream-sinks", nargs="+", metavar="SINK",
                   default=["pyav", "pyav-veryfast", "opencv", "null", "tput-pyav"],
                   help="stream cases: pyav (H.264, the default ultrafast preset), "
                        "pyav-veryfast, opencv (mp4v), null; tput-pyav: the THROUGHPUT engine")
    p.add_argument("--stream-rounds", type=int, default=2,
                   help="interleaved raw / edgeseg run rounds per case (0: no stream runs)")
    p.add_argument("--only", metavar="TEXT", action="append", default=[],
                   help="time only the contenders whose name contains TEXT (repeatable; the "
                        "raw OpenVINO references are always kept); e.g. --only edgeseg")
    p.add_argument("--miou", action="store_true", help="also edgeseg eval the OpenVINO engines "
                                                       "of the committed CamVid files")
    p.add_argument("--workdir", type=Path, help="engines and videos (default: a temp folder)")
    p.add_argument("--json", type=Path, help="write everything here")
    args = p.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="edgeseg-ov-"))
    work.mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    cpu = cpu_info(args.threads)
    result: dict[str, Any] = {"cpu": cpu, "versions": versions(), "model": str(args.model),
                              "threads": args.threads, "rounds": args.rounds,
                              "iters_per_round": args.iters, "commands": log,
                              "created": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    print(json.dumps(cpu), flush=True)

    # engines (built once; the same ONNX file for every contender)
    stem = args.model.stem
    t = args.threads
    ov_engine = build(args.model, work / f"{stem}.ov.blob", "openvino", t, log)
    ov_bf16 = build(args.model, work / f"{stem}.bf16.ov.blob", "openvino", t, log,
                    "--inference-precision", "bf16")
    ov_tput = build(args.model, work / f"{stem}.tput.ov.blob", "openvino", t, log,
                    "--performance-hint", "THROUGHPUT", "--infer-requests", "4")
    ort_engine = build(args.model, work / f"{stem}.ort.onnx", "onnxruntime", t, log)
    fp32_ov = build(args.fp32, work / f"{args.fp32.stem}.ov.blob", "openvino", t, log)

    frames = camvid_frames(8)
    contenders = [
        Contender("raw OpenVINO (f32)", raw_openvino(args.model, t, "f32"),
                  "openvino API: compile_model(LATENCY, threads, INFERENCE_PRECISION_HINT f32); "
                  "InferRequest.infer"),
        Contender("edgeseg OpenVINO engine", edgeseg_engine(ov_engine),
                  "edgeseg build-engine --backend openvino; timed as edgeseg bench"),
        Contender("raw OpenVINO async (f32)", raw_openvino_async(args.model, t),
                  "as raw OpenVINO (f32), through start_async + wait"),
        Contender("raw OpenVINO (default precision)", raw_openvino(args.model, t, None),
                  "as above without INFERENCE_PRECISION_HINT (bf16 on AVX512_BF16/AMX CPUs)"),
        Contender("edgeseg OpenVINO engine, bf16", edgeseg_engine(ov_bf16),
                  "build-engine --inference-precision bf16"),
        Contender("raw ONNX Runtime", raw_onnxruntime(args.model, t),
                  "InferenceSession(intra_op_num_threads), default options; session.run"),
        Contender("edgeseg ONNX Runtime engine", edgeseg_engine(ort_engine),
                  "edgeseg build-engine --backend onnxruntime; timed as edgeseg bench"),
        Contender("raw OpenVINO fp32 file (f32)", raw_openvino(args.fp32, t, "f32"),
                  f"{args.fp32.name}, same settings"),
        Contender("edgeseg OpenVINO engine, fp32 file", edgeseg_engine(fp32_ov),
                  f"{args.fp32.name}"),
        Contender("raw ONNX Runtime fp32 file", raw_onnxruntime(args.fp32, t),
                  f"{args.fp32.name}"),
    ]
    if args.only:
        contenders = [c for c in contenders if c.name.startswith("raw OpenVINO")
                      or any(text in c.name for text in args.only)]
    bapp: dict[str, list[float]] = {"p50_ms": [], "p99_ms": []}
    for r in range(args.rounds):
        order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
        for c in order:
            c.round(frames, args.warmup, args.iters)
        for pct, key in ((50, "p50_ms"), (99, "p99_ms")):
            value = benchmark_app(args.model, t, args.iters, pct)
            if value is not None:
                bapp[key].append(value)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{c.name} {np.median(c.times[-args.iters:]):.1f}" for c in contenders), flush=True)
    rows = [c.stats() for c in contenders]
    if bapp["p50_ms"]:
        rows.append({"name": "benchmark_app", "what": "benchmark_app -hint none -nstreams 1 "
                     f"-nthreads {t} -nireq 1 -infer_precision f32, median of per-round values",
                     "count": len(bapp["p50_ms"]), "p50_ms": float(np.median(bapp["p50_ms"])),
                     "p99_ms": float(np.median(bapp["p99_ms"])) if bapp["p99_ms"] else None})
    ref = {r["name"]: r for r in rows}
    for row in rows:
        base = ref["raw OpenVINO fp32 file (f32)"] if "fp32 file" in row["name"] else \
            ref["raw OpenVINO (default precision)"] if "bf16" in row["name"] or \
            "default" in row["name"] else ref["raw OpenVINO (f32)"]
        row["vs_raw_openvino_p50"] = row["p50_ms"] / base["p50_ms"]
        row["vs"] = base["name"]
    result["latency"] = rows

    # compute bound
    counted = count_macs(args.model)
    macs = counted["total"]
    peak = theoretical_int8_peak(cpu, t)
    measured = measure_int8_peak(work, t)
    engine_p50 = ref["edgeseg OpenVINO engine"]["p50_ms"]
    result["compute"] = {
        "model_gmac": macs / 1e9, "depthwise_gmac": counted["depthwise"] / 1e9,
        "theoretical": peak, "measured_int8": measured,
        "bound_ms_theoretical": macs / (peak["gmac_per_s"] * 1e9) * 1e3,
        "bound_ms_amx": macs / (peak["amx_gmac_per_s"] * 1e9) * 1e3
        if "amx_gmac_per_s" in peak else None,
        "bound_ms_theoretical_1_per_cycle": macs / (peak["gmac_per_s_1_per_cycle"] * 1e9) * 1e3,
        "bound_ms_measured": macs / (measured["gmac_per_s"] * 1e9) * 1e3,
        "engine_p50_ms": engine_p50}
    result["compute"]["engine_over_bound_theoretical"] = \
        engine_p50 / result["compute"]["bound_ms_theoretical"]
    result["compute"]["engine_over_bound_measured"] = \
        engine_p50 / result["compute"]["bound_ms_measured"]

    # throughput: edgeseg run video -> overlay -> mp4 against the raw engine, interleaved
    video = work / "drive.mp4"
    n = write_video(video) if args.stream_rounds else 0
    result["video"] = {"path": str(video), "frames": n, "size": "480x360"}
    streams = []
    cases = [(ov_tput, sink[5:]) if sink.startswith("tput-") else (ov_engine, sink)
             for sink in args.stream_sinks]
    for r in range(args.stream_rounds):
        for engine, sink in cases[r % len(cases):] + cases[:r % len(cases)]:
            manifest = json.loads(Path(str(engine) + ".json").read_text())
            # the raw engine over as many frames as the run, right before and right after it:
            # their mean is the raw rate while the run ran (a VM's speed drifts over seconds)
            before = raw_async_fps(manifest, args.model, frames, n)
            run = stream_fps(engine, video, work / f"{engine.stem}-{sink}-{r}.mp4", log, sink)
            after = raw_async_fps(manifest, args.model, frames, n)
            raw = (before + after) / 2
            streams.append({"engine": engine.name, "hint": manifest["build"]["performance_hint"],
                            "infer_requests": manifest["build"]["infer_requests"],
                            "sink": sink, "round": r, "run_fps": run["fps"],
                            "raw_fps_before": before, "raw_fps_after": after,
                            "ratio": run["fps"] / raw,
                            "ratio_vs_faster_raw": run["fps"] / max(before, after),
                            "stages_ms": run["stages_ms"], "writer": run["video"]})
            print(f"stream {engine.name} -> {sink}: {run['fps']:.1f} fps vs raw {raw:.1f} "
                  f"({run['fps'] / raw:.0%})", flush=True)
    result["stream_summary"] = [
        {"engine": e.name, "sink": sink, "rounds": len(ratios),
         "median_ratio": float(np.median(ratios)), "min_ratio": float(min(ratios)),
         "max_ratio": float(max(ratios))}
        for e, sink in cases
        if (ratios := [s["ratio"] for s in streams if s["engine"] == e.name and s["sink"] == sink])]
    result["stream"] = streams

    # accuracy of the OpenVINO engines of the committed files
    if args.miou and CAMVID.is_dir():
        result["miou"] = {}
        specs = [f"camvid:{CAMVID}:day_val", f"camvid:{CAMVID}:dusk_train"]
        for name in ("source_only", "mobilenet_uda"):
            for precision in ("fp32", "int8"):
                onnx_path = RESULTS / f"{name}.{precision}.onnx"
                engine = build(onnx_path, work / f"{name}.{precision}.ov.blob", "openvino", t,
                               log)
                out = work / f"{name}.{precision}.eval.json"
                sh([*EDGESEG, "eval", str(engine), "--data", specs[0], "--data", specs[1],
                    "--json", str(out)], log)
                result["miou"][f"{name}.{precision}"] = _mious(json.loads(out.read_text()))
    _print(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _mious(data: dict[str, Any]) -> dict[str, float]:
    """{split: mIoU %} from `edgeseg eval --json` output."""
    return {spec.rsplit(":", 1)[-1]: 100 * r["miou"] for spec, r in data["results"].items()}


def _print(result: dict[str, Any]) -> None:
    print(f"\nCPU: {result['cpu']['model']} {result['cpu']['flags']}, "
          f"{result['cpu']['threads_used']} threads; {result['versions']}")
    print(f"{'contender':40s} {'p50 ms':>8s} {'p99 ms':>8s} {'/ raw OV':>9s}")
    for row in result["latency"]:
        p99 = f"{row['p99_ms']:8.2f}" if row.get("p99_ms") is not None else "     n/a"
        print(f"{row['name']:40s} {row['p50_ms']:8.2f} {p99} {row['vs_raw_openvino_p50']:9.3f}")
    c = result["compute"]
    print(f"model {c['model_gmac']:.2f} GMAC ({c['depthwise_gmac']:.2f} depthwise); int8 peak {c['theoretical']['gmac_per_s']:.0f} "
          f"GMAC/s (ISA x clock) / {c['measured_int8']['gmac_per_s']:.0f} GMAC/s (measured); "
          f"bound {c['bound_ms_theoretical']:.2f} / {c['bound_ms_measured']:.2f} ms; engine "
          f"{c['engine_p50_ms']:.2f} ms = {c['engine_over_bound_theoretical']:.2f}x / "
          f"{c['engine_over_bound_measured']:.2f}x")
    for s in result["stream"]:
        print(f"run {s['engine']} ({s['hint']}, {s['infer_requests']} requests) -> "
              f"{s['sink']}: "
              f"{s['run_fps']:.1f} fps, raw {s['raw_fps_before']:.1f}/{s['raw_fps_after']:.1f} "
              f"-> {s['ratio']:.2f}")
    for s in result.get("stream_summary", []):
        print(f"stream {s['engine']} -> {s['sink']}: median run/raw {s['median_ratio']:.2f} "
              f"over {s['rounds']} rounds ({s['min_ratio']:.2f}-{s['max_ratio']:.2f})")
    for name, mious in result.get("miou", {}).items():
        print(f"mIoU {name}: {mious}")


if __name__ == "__main__":
    sys.exit(main())
