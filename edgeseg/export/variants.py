"""Precision variants of an fp32 ONNX, and choosing the one to ship (``--precision auto``).

TensorRT 10/11 and ONNX Runtime build whatever precision the graph has, so
``build-engine --precision int8`` on an fp32 file first makes the int8 Q/DQ
file (the backend's flavour) and then builds it. ``auto`` builds every
candidate, scores its accuracy against fp32 (mIoU on a labelled set, pixel
agreement with the fp32 predictions always) and its latency on this machine,
and keeps the fastest that passes: int8 is not automatically faster on a CPU
(measured: symmetric TensorRT-style Q/DQ ran 2x slower than fp32 in ONNX
Runtime), so the choice has to be measured, and the table goes into the
manifest.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.contract.metadata import read_metadata
from edgeseg.errors import EdgesegError
from edgeseg.metrics import Thresholds
from edgeseg.runtime.latency import interleaved_latency


def make_variant(src: str | Path, dst: str | Path, precision: str, *, calib: str | None = None,
                 calib_frames: int = 64, calib_every: int = 10, method: str = "minmax",
                 flavour: str = "tensorrt", keep_fp32: Sequence[str] = (),
                 cache: str | Path | None = None, made_by: str = "quantize",
                 high_precision: str = "fp32") -> Path:
    """Write the fp16 or int8 variant of fp32 ``src`` to ``dst`` (``edgeseg quantize``).

    ``keep_fp32`` names nodes or op types left in fp32 in either precision (one list,
    as sensitive layers are the same whichever precision the rest of the graph gets).
    ``high_precision`` (int8, tensorrt flavour): ``fp16`` makes every layer outside the
    Q/DQ pairs fp16, what a strongly typed TensorRT engine needs to run them in fp16.

    ``dst`` (and a cache still to be written) are checked writable before the
    conversion; ``made_by`` is recorded so other stages never overwrite the file unasked.
    """
    from edgeseg.fileio import check_outputs

    if precision == "fp16":
        if calib or cache:
            raise EdgesegError("--calib/--calib-cache apply to --precision int8 only")
        if high_precision != "fp32":
            raise EdgesegError("--high-precision-dtype applies to --precision int8 only (an "
                               "fp16 file is fp16 throughout)")
        from edgeseg.export.fp16 import convert_fp16

        check_outputs([dst])
        return convert_fp16(src, dst, keep_fp32=keep_fp32, made_by=made_by)
    if precision != "int8":
        raise EdgesegError(f"precision {precision!r}: variants are fp16 or int8")
    from edgeseg.export.int8 import check_high_precision

    check_high_precision(flavour, high_precision)
    cached = cache is not None and Path(cache).is_file()
    if not calib and not cached:
        raise EdgesegError("int8 needs calibration frames: --calib VIDEO|NAME:ROOT[:SPLIT] "
                           "(frames of the target domain), or --calib-cache FILE with ranges for "
                           "this model")
    check_outputs([dst, None if cached else cache])
    from edgeseg.export.calibration import input_contract, load_frames
    from edgeseg.export.int8 import quantize_int8

    frames = None if cached else load_frames(calib, input_contract(src), calib_frames, calib_every)
    return quantize_int8(src, dst, frames, method=method, flavour=flavour, exclude=keep_fp32,
                         cache=cache, source=calib or "", made_by=made_by,
                         high_precision=high_precision)


# --------------------------------------------------------------- choosing the best precision


def variant_path(engine: str | Path, precision: str) -> Path:
    """The ONNX variant ``build-engine`` makes for ``engine``: ``model.ort.int8.onnx`` for
    ``model.ort.onnx``, ``model.engine.fp16.onnx`` for ``model.engine``. Never the
    ``model.int8.onnx`` a user writes with ``edgeseg quantize``, nor the input."""
    engine = Path(engine)
    base = engine.name[:-len(".onnx")] if engine.name.endswith(".onnx") else engine.name
    return engine.with_name(f"{base}.{precision}.onnx")


def calib_cache_path(engine: str | Path) -> Path:
    """The calibration cache ``--precision auto`` keeps beside ``engine`` (engine name +
    ``.calib.json``, like the manifest), so a rebuild skips calibration."""
    return Path(str(engine) + ".calib.json")


@dataclass
class SetScore:
    """A candidate's accuracy on one frame set, against the fp32 model on the same frames."""

    set: str  # "target" (the --calib frames), "source" (--accuracy-data) or "synthetic"
    data: str  # the spec or video, or "synthetic scenes"
    frames: int
    agreement: float  # pixel agreement with the fp32 engine's labels, 0..1
    miou: float | None = None  # on this set's labels, if it has them
    miou_drop: float | None = None  # fp32 mIoU - this mIoU, in points
    passed: bool = False


@dataclass
class Candidate:
    precision: str
    onnx: str
    flavour: str = ""  # int8: the Q/DQ flavour (tensorrt / onnxruntime)
    high_precision: str = ""  # int8: the type outside the Q/DQ pairs (fp32 / fp16)
    inference_precision: str = ""  # OpenVINO: the precision its layers outside Q/DQ run in
    label: str = ""  # the table's name for it (int8-ort: the onnxruntime flavour on OpenVINO)
    latency_ms_p50: float = float("nan")
    latency_ms_mean: float = float("nan")
    agreement: float = float("nan")  # the lowest pixel agreement over the sets
    miou: float | None = None  # on the set with the largest mIoU drop
    miou_drop: float | None = None  # the largest drop over the labelled sets, in points
    passed: bool = False  # within the budget on every set
    note: str = ""
    scores: list[SetScore] = field(default_factory=list)

    def rows(self) -> list[str]:
        """One table line per frame set (a candidate fails if any set fails)."""
        out = []
        name = self.label or self.precision
        for i, sc in enumerate(self.scores or [None]):
            lat = (f"{self.latency_ms_p50:9.2f} {self.latency_ms_mean:9.2f}" if i == 0
                   else " " * 19)
            if sc is None:
                out.append(f"{name:9s} {'-':8s} {lat} {'':9s} {'':6s} {'':6s}  "
                           f"FAIL {self.note}")
                continue
            miou = "   n/a" if sc.miou is None else f"{100 * sc.miou:6.2f}"
            drop = "   n/a" if sc.miou_drop is None else f"{sc.miou_drop:+6.2f}"
            verdict = "pass" if sc.passed else "FAIL"
            note = self.note if i == 0 else ""
            out.append(f"{name if i == 0 else '':9s} {sc.set:8s} {lat} "
                       f"{100 * sc.agreement:9.3f} {miou} {drop}  {verdict} {note}".rstrip())
        return out


TABLE_HEADER = "precision set           p50 ms   mean ms  agree %   mIoU   drop  verdict"


@dataclass
class ScoringSet:
    """Frames a candidate precision is scored on, with labels and their label space."""

    set: str
    data: str
    images: list[np.ndarray]
    labels: list[Any]
    label_space: str | None = None  # None: unlabelled (agreement with fp32 only)


def scoring_set(role: str, spec: str | None, count: int, fallback_size: tuple[int, int],
                model_space: str | None = None) -> ScoringSet:
    """``count`` frames of ``spec`` spread over the set (`open_frames`: a dataset spec, a
    video, a folder, ``synthetic:``, or synthetic scenes at ``fallback_size`` when None),
    labelled when the set is; ``model_space`` reads labels as `edgeseg eval` and bench do."""
    from edgeseg.runtime.frames import open_frames

    sample = open_frames(spec, count, model_space=model_space, size=fallback_size)
    images, labels = sample.load()
    if not images:
        raise EdgesegError(f"{spec}: no frames to score precisions on")
    if not spec:
        return ScoringSet("synthetic", sample.spec, images, labels)
    labelled = sample.label_space is not None and all(lab is not None for lab in labels)
    return ScoringSet(role, spec, images, labels, sample.label_space if labelled else None)


def scoring_sets(calibration: str | None, accuracy: str | None, count: int,
                 fallback_size: tuple[int, int], model_space: str | None = None
                 ) -> list[ScoringSet]:
    """The sets ``auto`` scores every candidate on: the target-domain frames it calibrates
    with (``--calib``) and the source/accuracy set (``--accuracy-data``), each once;
    synthetic scenes when neither is given. Ranking on one domain alone picked int8 models
    that were within budget on day frames and lost 2 mIoU on the dusk frames they ship for."""
    wanted = [("target", calibration), ("source", accuracy)]
    specs = [(role, spec) for i, (role, spec) in enumerate(wanted)
             if spec and spec not in [s for _, s in wanted[:i]]]
    if not specs:
        return [scoring_set("synthetic", None, count, fallback_size)]
    return [scoring_set(role, spec, count, fallback_size, model_space) for role, spec in specs]


def score_predictions(preds: Sequence[np.ndarray], frames: ScoringSet,
                      reference: Sequence[np.ndarray] | None, model_space: str) -> SetScore:
    """Agreement with the fp32 ``reference`` predictions and mIoU on the set's labels (the
    model's classes mapped into the dataset's), with `PairScorer` as compare and bench
    score; without a reference (fp32 itself) agreement is 1."""
    from edgeseg.evaluate import PairScorer

    try:
        scorer = PairScorer(model_space, frames.label_space, band=0)
    except ValueError as exc:
        raise EdgesegError(f"{frames.data}: {exc}") from None
    refs = reference if reference is not None else preds
    for p, ref, lab in zip(preds, refs, frames.labels, strict=True):
        scorer.update(ref, p, lab if frames.label_space is not None else None)
    both = scorer.metrics()
    return SetScore(frames.set, frames.data, len(preds), scorer.agreement,
                    both[1].miou if both is not None else None)


def judge(score: SetScore, fp32: SetScore | None, gate: Any) -> SetScore:
    """Apply the budget to one set: ``min_agreement`` with fp32, and at most
    ``max_miou_drop`` mIoU points lost where the set is labelled. Sets ``miou_drop``
    and ``passed`` on ``score`` and returns it."""
    if fp32 is not None and fp32.miou is not None and score.miou is not None:
        score.miou_drop = 100 * (fp32.miou - score.miou)
    score.passed = gate.thresholds.passes(score.agreement, score.miou_drop)
    return score


def _score(engine: Path, sets: list[ScoringSet], references: list[list[np.ndarray]] | None,
           device: int = 0) -> tuple[Candidate, list[list[np.ndarray]], Any]:
    """Predict every scoring frame with ``engine``; returns the candidate's scores, the
    predictions and the predictor, still open (`choose_precision` times them together)."""
    from edgeseg.argtypes import Device
    from edgeseg.contract.manifest import manifest_path, read_manifest
    from edgeseg.runtime.predictor import BackendPredictor, open_engine

    on_gpu = manifest_path(engine).is_file() and read_manifest(engine).backend == "tensorrt"
    where = Device("cuda", device) if on_gpu else Device("cpu")  # as build-engine built it
    predict = BackendPredictor(open_engine(engine, where))
    try:
        preds = [[predict(img) for img in s.images] for s in sets]
    except BaseException:
        predict.close()
        raise
    space = predict.meta.label_space
    cand = Candidate(precision="", onnx="")
    for i, s in enumerate(sets):
        ref = references[i] if references is not None else None
        cand.scores.append(score_predictions(preds[i], s, ref, space))
    return cand, preds, predict


def _summarise(cand: Candidate, fp32: Candidate | None, gate: Any) -> None:
    """Judge every set and fold the verdicts into the candidate's headline numbers."""
    base = {s.set: s for s in fp32.scores} if fp32 is not None else {}
    for sc in cand.scores:
        if fp32 is None:  # the reference passes by definition
            sc.passed = True
        else:
            judge(sc, base.get(sc.set), gate)
    cand.passed = bool(cand.scores) and all(sc.passed for sc in cand.scores)
    cand.agreement = min(sc.agreement for sc in cand.scores)
    drops = [sc for sc in cand.scores if sc.miou_drop is not None]
    worst = max(drops, key=lambda sc: sc.miou_drop) if drops else next(
        (sc for sc in cand.scores if sc.miou is not None), None)
    if worst is not None:
        cand.miou, cand.miou_drop = worst.miou, worst.miou_drop


#: the variant name of the onnxruntime-flavour int8 file an OpenVINO ``auto`` build also tries
INT8_ORT = "int8-ort"
#: the variant name of the int8 file that is fp16 outside its Q/DQ pairs (TensorRT)
INT8_FP16 = "int8-fp16"
#: OpenVINO on a CPU with bf16 (AVX512_BF16, AMX): the int8 file with bf16 layers outside its
#: Q/DQ pairs; the same file as ``int8``, built with ``inference_precision: bf16``
INT8_BF16 = "int8-bf16"
#: interleaved rounds `choose_precision` times its candidates in
TIMING_ROUNDS = 4


def candidate_kind(label: str, flavour: str) -> tuple[str, str, str]:
    """(precision, Q/DQ flavour, high-precision type) of an ``auto`` candidate label:
    ``int8-fp16`` is always the tensorrt flavour (the only one with fp16 outside Q/DQ)."""
    if label == INT8_FP16:
        return "int8", "tensorrt", "fp16"
    if label == INT8_ORT:
        return "int8", "onnxruntime", "fp32"
    if label == INT8_BF16:
        return "int8", flavour, "fp32"
    return label, flavour, "fp32"


def candidate_profile(profile: Any, label: str) -> Any:
    """The build profile of candidate ``label``: precision from its file, and OpenVINO's
    precision outside Q/DQ (bf16 for ``int8-bf16``, else the profile's)."""
    if label == INT8_BF16:
        return replace(profile, precision=None, inference_precision="bf16")
    return replace(profile, precision=None)


def default_candidates(backend: str, flavour: str | None, bf16: bool = False) -> list[str]:
    """What ``auto`` builds and measures for ``backend``: ONNX Runtime's CPU kernels run
    fp16 through casts (slower than fp32), so no fp16 there nor on OpenVINO's CPU (whose
    fp32 layers can run in bf16 instead, `inference_precision`). OpenVINO runs both int8
    flavours with its int8 kernels: the TensorRT-style file (the one a Jetson builds) is the
    default, and the onnxruntime flavour (uint8 activations) is also measured, unless the
    profile pins a flavour, so it is kept only where it still wins within the budget.
    TensorRT builds strongly typed (every tensor keeps its ONNX type), so its int8
    candidates are the int8 file as it is (fp32 outside the Q/DQ pairs) and ``int8-fp16``,
    fp16 outside them: the engine TensorRT 10's ``--int8 --fp16`` built. ``bf16``: OpenVINO
    on a CPU with bf16 arithmetic also measures ``int8-bf16`` (the int8 file with its
    layers outside Q/DQ in bf16, OpenVINO's own default there), judged by the same gate."""
    if backend == "onnxruntime":
        return ["fp32", "int8"]
    if backend == "openvino":
        return ["fp32", "int8"] + ([INT8_BF16] if bf16 else []) + \
            ([INT8_ORT] if flavour is None else [])
    return ["fp32", "fp16", "int8"] + ([INT8_FP16] if flavour in (None, "tensorrt") else [])


def choose_precision(fp32_onnx: str | Path, out: str | Path, profile: Any, command: str,
                     candidates: Sequence[str] | None = None, device: int = 0) -> Any:
    """Build every candidate precision, keep the fastest that passes the accuracy gate on
    every scoring set (target-domain calibration frames and the source/accuracy set).

    Variant ONNX files are kept beside ``out`` (`variant_path`); the winner is
    built to ``out`` and its manifest carries the whole comparison table, one
    score per set, in ``selection``. ``int8-ort`` (OpenVINO) is the int8 file in the
    onnxruntime flavour, measured beside the backend's TensorRT-style one; ``int8-fp16``
    (TensorRT) the int8 file with fp16 outside its Q/DQ pairs.
    """
    from edgeseg.export.build_engine import (
        ENGINE_SUFFIXES,
        build_engine,
        default_flavour,
        resolve_backend,
    )

    fp32_onnx, out = Path(fp32_onnx), Path(out)
    meta = read_metadata(fp32_onnx)
    if meta.precision != "fp32":
        raise EdgesegError(f"{fp32_onnx}: --precision auto starts from the fp32 ONNX "
                           f"(this file is {meta.precision})")
    backend = resolve_backend(profile.backend, device)
    cal, gate = profile.calibration, profile.parity
    if candidates is None:
        from edgeseg.export.ov_builder import openvino_has_bf16

        bf16 = backend == "openvino" and profile.inference_precision == "f32" and \
            openvino_has_bf16(profile.ov_device)
        candidates = default_candidates(backend, cal.flavour, bf16)
    flavour = cal.flavour or default_flavour(backend)
    spec = meta.input
    hw = spec.shape[1:3] if spec.format == "uint8-nhwc-bgr" else spec.shape[2:4]
    fallback = (int(hw[0] or 256), int(hw[1] or 512))
    sets = scoring_sets(cal.data, gate.data, gate.frames, fallback, meta.label_space)
    results: list[Candidate] = []
    references: list[list[np.ndarray]] | None = None
    where = "; ".join(f"{s.set} {s.data} ({len(s.images)} frames)" for s in sets)
    budget = Thresholds(gate.min_agreement, gate.max_miou_drop)
    print(f"choosing the precision on this machine ({backend}), accuracy on {where}; "
          f"thresholds per set: {budget.describe()}", flush=True)
    made: set[Path] = set()
    with tempfile.TemporaryDirectory(prefix="edgeseg-auto-") as tmp, \
            contextlib.ExitStack() as open_engines:
        timed: list[tuple[Candidate, Any]] = []
        for label in candidates:
            precision, kind, high = candidate_kind(label, flavour)
            file_label = "int8" if label == INT8_BF16 else label  # the same file, bf16 layers
            onnx_path = fp32_onnx if precision == "fp32" else variant_path(out, file_label)
            build = candidate_profile(profile, label)
            note = ""
            try:
                if precision != "fp32" and onnx_path not in made:
                    make_variant(fp32_onnx, onnx_path, precision, calib=cal.data,
                                 calib_frames=cal.frames, method=cal.method, flavour=kind,
                                 cache=calib_cache_path(out) if precision == "int8" else None,
                                 made_by="build-engine", high_precision=high)
                    made.add(onnx_path)
                engine = Path(tmp) / f"{label}{ENGINE_SUFFIXES[backend]}"
                build_engine(onnx_path, engine, build, command, device=device)
                cand, preds, predict = _score(engine, sets, references, device)
                open_engines.callback(predict.close)
                timed.append((cand, predict))
            except EdgesegError as exc:
                cand, preds, note = Candidate(precision, str(onnx_path)), None, f"({exc})"
            cand.precision, cand.onnx, cand.note = precision, str(onnx_path), note[:300]
            cand.flavour = kind if precision == "int8" else ""
            cand.high_precision = high if precision == "int8" else ""
            cand.inference_precision = build.inference_precision if backend == "openvino" \
                else ""
            cand.label = label
            if precision == "fp32":
                if preds is None:
                    raise EdgesegError(f"{fp32_onnx}: the fp32 reference failed to build: {note}")
                references = preds
                _summarise(cand, None, gate)
            elif preds is not None:
                _summarise(cand, results[0], gate)
            results.append(cand)
            print(f"  {label}: scored" + (f" {note}" if note else ""), flush=True)
        # every candidate timed in the same rounds, rotating: no order or drift favours one
        print(f"timing {len(timed)} candidates in {TIMING_ROUNDS} interleaved rounds, "
              f"{gate.iterations} calls each", flush=True)
        stats = interleaved_latency([p for _, p in timed], sets[0].images[0],
                                    gate.iterations, TIMING_ROUNDS)
        for (cand, _), (p50, mean) in zip(timed, stats):
            cand.latency_ms_p50, cand.latency_ms_mean = p50, mean
    print(f"  {TABLE_HEADER}")
    for cand in results:
        print("\n".join(f"  {row}" for row in cand.rows()), flush=True)
    winner = min((c for c in results if c.passed), key=lambda c: c.latency_ms_p50)
    rejected = [f"{c.label or c.precision} (over budget on "
                f"{', '.join(s.set for s in c.scores if not s.passed)})"
                for c in results if not c.passed and c.scores]
    print(f"auto: fastest within budget on this machine: {winner.label or winner.precision} "
          f"({winner.latency_ms_p50:.2f} ms p50)"
          + (f"; rejected {', '.join(rejected)}" if rejected else ""))
    manifest = build_engine(winner.onnx, out, candidate_profile(profile, winner.label), command,
                            selection=[_json_safe(asdict(c)) for c in results], device=device)
    return manifest


def _json_safe(row: Any) -> Any:
    """NaN (a candidate that failed before it was measured) becomes null in the manifest."""
    if isinstance(row, dict):
        return {k: _json_safe(v) for k, v in row.items()}
    if isinstance(row, list):
        return [_json_safe(v) for v in row]
    return None if isinstance(row, float) and row != row else row
