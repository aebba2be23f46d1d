"""The contract an exported model carries inside its ONNX file (metadata_props).

Every stage after export (build-engine, the torch-free runtime, bench, eval)
reads what it needs from here, so an ONNX file or engine is usable without the
checkpoint or recipe that produced it. Keys are prefixed ``edgeseg.`` and values
are strings (JSON for structured ones) so Netron and ``polygraphy inspect`` show
them too. Torch-free.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from edgeseg.errors import EdgesegError

PREFIX = "edgeseg."
InputFormat = Literal["uint8-nhwc-bgr", "float-nchw"]
OutputKind = Literal["labels", "logits", "probs"]
Precision = Literal["fp32", "fp16", "int8"]


class MetadataError(EdgesegError):
    """An ONNX file or engine without (valid) edgeseg metadata."""


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
    def input(self) -> TensorSpec:
        return self.inputs[0]

    @property
    def output(self) -> TensorSpec:
        return self.outputs[0]
