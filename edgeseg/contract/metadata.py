"""The contract an exported model carries inside its ONNX file (metadata_props).

Every stage after export (build-engine, the torch-free runtime, bench, eval)
reads what it needs from here, so an ONNX file or engine is usable without the
checkpoint or recipe that produced it. It sits in the lowest layer so the
torch-free runtime reads it without importing the export package. Keys are prefixed ``edgeseg.`` and values
are strings (JSON for structured ones) so Netron and ``polygraphy inspect`` show
them too. Torch-free.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgeseg.errors import EdgesegError

PREFIX = "edgeseg."
InputFormat = Literal["uint8-nhwc-bgr", "float-nchw"]
OutputKind = Literal["labels", "logits", "probs"]
Precision = Literal["fp32", "fp16", "int8"]


#: ``extra`` key of a translator or relighting net: the mean-luma gate it was tuned for
#: (frames at or above it skip the net); ``edgeseg run/eval`` apply it unless
#: ``--translate-below`` says otherwise
TRANSLATE_BELOW = "translate_below"


class MetadataError(EdgesegError):
    """An ONNX file or engine without (valid) edgeseg metadata."""


class OnnxFileError(MetadataError):
    """An ONNX file that is missing or unreadable (so it has no metadata either)."""


@dataclass
class TensorSpec:
    """One graph input/output: name, layout/dtype contract, shape (None = dynamic)."""

    name: str
    dtype: str  # numpy dtype name: uint8, int32, float32, float16
    shape: list[int | None]
    format: str = ""  # inputs: InputFormat; outputs: OutputKind
    #: dynamic inputs: {"min": [...], "opt": [...], "max": [...]} full shapes
    profile: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class ModelMetadata:
    labels: list[str]
    palette: list[list[int]]
    label_space: str
    mean: list[float]  # 0..1 scale, RGB
    std: list[float]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    precision: str = "fp32"
    network: str = "segmenter"  # or "translator", "relighting"
    method: str = ""
    datasets: dict[str, Any] = field(default_factory=dict)
    checkpoint_sha256: str = ""
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig as a dict
    version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. calibration, excluded nodes

    def to_props(self) -> dict[str, str]:
        out = {}
        for key, value in asdict(self).items():
            out[PREFIX + key] = value if isinstance(value, str) else json.dumps(value)
        return out

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "model") -> ModelMetadata:
        fields = cls.__dataclass_fields__
        values: dict[str, Any] = {}
        for key, raw in props.items():
            if not key.startswith(PREFIX) or key[len(PREFIX):] not in fields:
                continue
            name = key[len(PREFIX):]
            values[name] = raw if fields[name].type == "str" else json.loads(raw)
        missing = [k for k in ("labels", "palette", "label_space", "mean", "std", "inputs",
                               "outputs") if k not in values]
        if missing:
            raise MetadataError(
                f"{source}: no edgeseg metadata ({', '.join(PREFIX + m for m in missing)} "
                "missing); export it with `edgeseg export CKPT -o model.onnx`"
            )
        values["inputs"] = [TensorSpec(**t) for t in values["inputs"]]
        values["outputs"] = [TensorSpec(**t) for t in values["outputs"]]
        return cls(**values)

    @property
    def translate_below(self) -> float | None:
        """The recorded mean-luma gate (`TRANSLATE_BELOW`), or None: translate every frame."""
        value = self.extra.get(TRANSLATE_BELOW)
        return None if value is None else float(value)

    @property
    def input(self) -> TensorSpec:
        return self.inputs[0]

    @property
    def output(self) -> TensorSpec:
        return self.outputs[0]


def load_onnx(model: str | Path | Any, *, external_data: bool = True) -> Any:
    """Load an ONNX file (or pass a ModelProto through) with errors that name the file.

    Every stage opens ONNX files here so a missing, truncated or foreign file reads the same
    everywhere. ``external_data=False`` skips external weights: enough for the metadata and
    the graph, and fast. onnx is imported lazily, so the torch-free runtime can import this
    module without the onnx package.
    """
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    p = Path(model)
    if not p.is_file():
        raise OnnxFileError(f"{p}: no such ONNX file")
    try:
        proto = onnx.load(str(p), load_external_data=external_data)
    except Exception as exc:  # protobuf raises DecodeError and friends for foreign bytes
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise OnnxFileError(f"{p}: not a readable ONNX file ({type(exc).__name__}"
                            f"{': ' + detail if detail else ''}); the file is truncated or "
                            "not ONNX; export it again") from None
    if not proto.graph.node:
        raise OnnxFileError(f"{p}: not a readable ONNX file (no graph); truncated or not ONNX")
    return proto


def edgeseg_props(model: Any) -> dict[str, str]:
    """The raw ``edgeseg.*`` metadata_props of an ONNX ModelProto."""
    return {p.key: p.value for p in model.metadata_props if p.key.startswith(PREFIX)}


def metadata_of(model: Any, source: str = "model") -> ModelMetadata:
    """Parse the edgeseg metadata of a ModelProto; MetadataError if absent or corrupt."""
    try:
        return ModelMetadata.from_props(edgeseg_props(model), source=source)
    except MetadataError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise MetadataError(f"{source}: corrupt edgeseg metadata ({type(exc).__name__}: {exc})"
                            ) from None


def metadata_or_none(model: Any) -> ModelMetadata | None:
    """The edgeseg metadata of a ModelProto, or None for a foreign ONNX without it."""
    try:
        return metadata_of(model)
    except MetadataError:
        return None


def read_metadata(path: str | Path) -> ModelMetadata:
    """The edgeseg metadata of an ONNX file (weights are not loaded)."""
    return metadata_of(load_onnx(path, external_data=False), str(path))


def set_metadata(model: Any, meta: ModelMetadata) -> None:
    """Replace a ModelProto's edgeseg metadata_props with ``meta`` (other props are kept)."""
    kept = [p for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in meta.to_props().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def calibration_info(meta: ModelMetadata) -> dict[str, Any]:
    """What `edgeseg quantize` recorded about an int8 file (``extra.calibration``), or {}."""
    calibration = meta.extra.get("calibration")
    return calibration if isinstance(calibration, dict) else {}
