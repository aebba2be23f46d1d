"""``edgeseg inspect FILE``: what an ONNX file or an engine is, without running it.

For an ONNX file: its edgeseg metadata (precision, labels, normalisation, I/O
contract), opset, size, parameter count, compute (GMACs at the graph's input shape, by
op; `edgeseg.export.macs`) and op counts. For an engine (any file
with a manifest beside it, or the manifest itself): backend and version,
device, precision, I/O and profiles, hashes, the rebuild command, the model
metadata, and whether it would load on this machine.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

from edgeseg.contract.manifest import MANIFEST_SUFFIX, EngineManifest, manifest_path, read_manifest
from edgeseg.contract.metadata import MetadataError, ModelMetadata, TensorSpec, load_onnx
from edgeseg.errors import EdgesegError
from edgeseg.runtime.compat import MachineInfo, compare


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="model.onnx, an engine (model.engine, model.ort.onnx) "
                                     "or its manifest (.json)")
    parser.add_argument("--json", metavar="OUT",
                        help="write the description as one JSON object to OUT (`-` for stdout, "
                             "instead of the text); --json is a path in every command")


def _spec(t: TensorSpec) -> str:
    shape = "[" + ",".join("?" if d is None else str(d) for d in t.shape) + "]"
    text = f"{t.name} {t.dtype}{shape} {t.format}".rstrip()
    if t.profile:
        text += "  profile " + " ".join(f"{k} {v}" for k, v in t.profile.items())
    return text


def _metadata_lines(meta: ModelMetadata) -> list[str]:
    labels = ", ".join(meta.labels[:8]) + (", ..." if len(meta.labels) > 8 else "")
    lines = [f"  network     {meta.network} {meta.model or ''}".rstrip(),
             f"  precision   {meta.precision}"]
    if meta.labels:  # an image network (translator, relighting) has no classes
        lines.append(f"  labels      {meta.label_space} ({len(meta.labels)}): {labels}")
    lines.append(f"  mean/std    {meta.mean} / {meta.std} (RGB, 0..1)")
    lines += [f"  input       {_spec(t)}" for t in meta.inputs]
    lines += [f"  output      {_spec(t)}" for t in meta.outputs]
    if meta.method or meta.datasets:
        lines.append(f"  trained     {meta.method or '?'} on {meta.datasets}")
    if meta.checkpoint_sha256:
        lines.append(f"  checkpoint  sha256 {meta.checkpoint_sha256}")
    if meta.extra:
        lines.append(f"  extra       {json.dumps(meta.extra)}")
    return lines


def describe_onnx(path: Path) -> dict[str, Any]:
    from edgeseg.export.macs import MacCountError, count_macs, count_parameters, iter_nodes

    model = load_onnx(path, external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    try:
        meta: ModelMetadata | None = ModelMetadata.from_props(props, str(path))
    except MetadataError:
        meta = None
    macs: dict[str, Any] | None = None
    try:
        count = count_macs(model)
        params, macs_error = count.params, None
        macs = {"total": count.total, "by_op": count.by_op,
                "inputs": {k: list(v) for k, v in count.inputs.items()}}
    except MacCountError as exc:  # a dynamic input shape: parameters still count
        params, macs_error = count_parameters(model), str(exc)
    return {
        "file": str(path), "kind": "onnx", "bytes": path.stat().st_size,
        "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "parameters": params, "macs": macs,
        "ops": dict(Counter(n.op_type for n in iter_nodes(model.graph)).most_common()),
        "metadata": props, "_meta": meta, "_macs_error": macs_error,
    }


def _compute_line(info: dict[str, Any]) -> str:
    """``2.35 GMACs at 1x3x360x480 (Conv 2.30, ConvTranspose 0.05)``, or why not counted."""
    macs = info["macs"]
    if macs is None:
        return f"  compute     not counted: {info['_macs_error']}"
    shapes = {name: "x".join("?" if d is None else str(d) for d in dims)
              for name, dims in macs["inputs"].items()}
    at = (next(iter(shapes.values())) if len(shapes) == 1
          else ", ".join(f"{name} {dims}" for name, dims in shapes.items()))
    ops = ", ".join(f"{op} {n / 1e9:.2f}" for op, n in macs["by_op"].items())
    return (f"  compute     {macs['total'] / 1e9:.2f} GMACs at {at}"
            + (f" ({ops})" if ops else " (no Conv, ConvTranspose, MatMul or Gemm)"))


def describe_engine(engine: Path) -> dict[str, Any]:
    manifest = read_manifest(engine)
    machine = MachineInfo.detect(manifest.backend, target=manifest.build.ov_device)
    errors, warnings = compare(manifest, machine)
    return {"file": str(engine), "kind": "engine", "bytes": engine.stat().st_size,
            "manifest": manifest.to_dict(), "loads_here": not errors,
            "mismatch": errors, "warnings": warnings, "_manifest": manifest}


def _print_onnx(info: dict[str, Any]) -> None:
    opsets = ", ".join(f"{d} {v}" for d, v in info["opsets"].items())
    print(f"{info['file']}: ONNX ({opsets}), {info['bytes'] / 1e6:.2f} MB, "
          f"{info['parameters']:,} parameters")
    meta = info["_meta"]
    if meta is None:
        print("  no edgeseg metadata (not exported by `edgeseg export`)")
    else:
        print("\n".join(_metadata_lines(meta)))
    print(_compute_line(info))
    print("  ops         " + ", ".join(f"{op} {n}" for op, n in info["ops"].items()))


def _print_engine(info: dict[str, Any]) -> None:
    m: EngineManifest = info["_manifest"]
    print(f"{info['file']}: {m.describe()} engine, {info['bytes'] / 1e6:.2f} MB")
    print(f"  precision   {m.precision}")
    print(f"  built       {m.created} by edgeseg {m.edgeseg_version}")
    print("  options     " + ", ".join(f"{k}={v}" for k, v in vars(m.build).items()
                                        if v not in (None, False, "none", 0)))
    print("\n".join([f"  input       {_spec(t)}" for t in m.inputs]
                    + [f"  output      {_spec(t)}" for t in m.outputs]))
    print(f"  onnx        {m.onnx_path} sha256 {m.onnx_sha256}")
    print(f"  engine      sha256 {m.engine_sha256}")
    for name in ("timing_cache_sha256", "calibration_sha256"):
        if getattr(m, name):
            print(f"  {name.removesuffix('_sha256').replace('_', ' '):11} sha256 {getattr(m, name)}")
    for note in m.notes:
        print(f"  note        {note}")
    print(f"  rebuild     {m.build_command}")
    status = "yes" if info["loads_here"] else "NO: " + "; ".join(info["mismatch"])
    print(f"  loads here  {status}")
    for warning in info["warnings"]:
        print(f"  warning     {warning}")
    try:
        print("  model:\n" + "\n".join("  " + line for line in _metadata_lines(
            m.model_metadata())))
    except MetadataError as exc:
        print(f"  model       {exc}")


def run(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if path.suffix == MANIFEST_SUFFIX and path.is_file() and path.name != MANIFEST_SUFFIX:
        path = path.with_name(path.name.removesuffix(MANIFEST_SUFFIX))  # given the manifest
    if manifest_path(path).is_file():
        info = describe_engine(path)
    elif path.suffix == ".onnx" and path.is_file():
        info = describe_onnx(path)
    elif not path.exists():
        raise EdgesegError(f"{path}: no such file")
    else:
        raise EdgesegError(f"{path}: neither an ONNX file nor an engine with a manifest "
                           f"({manifest_path(path)}) beside it")
    if args.json:
        from edgeseg.fileio import STDOUT, write_json

        write_json(args.json, {k: v for k, v in info.items() if not k.startswith("_")})
        if args.json == STDOUT:
            return 0
    if info["kind"] == "engine":
        _print_engine(info)
    else:
        _print_onnx(info)
    return 0
