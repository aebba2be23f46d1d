"""Checkpoint -> ONNX with pre- and post-processing inside the graph.

The deploy contract (docs/design.md) is a uint8 NHWC BGR camera frame in and a
uint8/int32 class map out, so the vehicle side does no numpy work per frame:
cast, BGR->RGB, normalisation, transpose and argmax all run inside the engine.
The graph follows docs/tensorrt.md: opset 17, TorchScript exporter
(``dynamo=False``; the dynamo exporter needs onnxscript), Resize with ``sizes``,
uint8 only at graph I/O (the first op casts it, the last op produces it).

Which network (`ExportSource`): by default what the checkpoint's method deploys
(`load_model`: pre-networks -> segmenter -> class bias composed into one graph, or the
bare segmenter); its composition goes into ``extra.deploy`` and ``extra.network`` is
``"deploy"`` (a checkpoint written before networks were stored gets neither, so its
metadata is what it always was). ``network=NAME`` exports one stored network alone
(``extra.network`` NAME, ``extra.spec`` its spec): a segmenter with the same contract,
or an image network (role translator or prenet) as uint8 BGR frame -> uint8 BGR frame
(`export_image_network`, `FrameToFrame` traced; metadata ``network`` "translator" or
"relighting", mean/std the range it works in) that the runtime chains before a
segmenter (`TranslateStage`).

Every export is checked (full checker + shape inference), optionally slimmed
with onnxslim, and carries its `ModelMetadata` in ``metadata_props``, whose
tensor dtypes/shapes are read back from the final graph so they cannot disagree
with it. Files are written atomically.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch
from torch import nn

from edgeseg import __version__
from edgeseg.contract.metadata import (
    InputFormat,
    ModelMetadata,
    OutputKind,
    TensorSpec,
    load_onnx,
    set_metadata,
)
from edgeseg.errors import EdgesegError
from edgeseg.fileio import atomic_path, sha256_file
from edgeseg.labels import get_label_space
from edgeseg.train.checkpoint import (
    deploy_of,
    load_checkpoint,
    load_model,
    load_network,
    network_names,
    network_spec,
)
from edgeseg.train.nets.registry import NetSpec
from edgeseg.train.predict import TRANSLATOR_RANGE, FrameToFrame, image_range

logger = logging.getLogger("edgeseg.export")

LabelsDtype = Literal["uint8", "int32"]
INPUT_FORMATS: tuple[str, ...] = ("uint8-nhwc-bgr", "float-nchw")
OUTPUT_KINDS: tuple[str, ...] = ("labels", "logits", "probs")
LABELS_DTYPES: tuple[str, ...] = ("uint8", "int32")
#: input tensor name per format; output names are the output kinds themselves
INPUT_NAMES = {"uint8-nhwc-bgr": "frame", "float-nchw": "image"}
MIN_SIDE = 32
CHOICES = {"input_format": INPUT_FORMATS, "output": OUTPUT_KINDS, "labels_dtype": LABELS_DTYPES}
OPSETS = range(13, 21)  # Softmax(axis) semantics from 13; TensorRT 10 parses up to 20

Size = tuple[int, int]  # (height, width)


def wxh(size: Size) -> str:
    """(height, width) as the WxH text the CLI takes."""
    return f"{size[1]}x{size[0]}"


class ExportError(EdgesegError):
    """Impossible export options, or a graph that fails the ONNX checks."""


@dataclass
class ExportOptions:
    """How to export: input size (or shape ranges), I/O formats, opset.

    For ``dynamic`` exports, batch, height and width are dynamic; the profile
    defaults to min = half, opt = (height, width), max = twice the size, and
    batch 1..``max_batch`` (opt 1: one camera frame at a time).
    """

    height: int = 256
    width: int = 512
    dynamic: bool = False
    min_size: Size | None = None
    opt_size: Size | None = None
    max_size: Size | None = None
    max_batch: int = 1
    opset: int = 17
    input_format: InputFormat = "uint8-nhwc-bgr"
    output: OutputKind = "labels"
    labels_dtype: LabelsDtype = "uint8"
    simplify: bool = True

    def __post_init__(self) -> None:
        if self.dynamic:
            opt = self.opt_size or (self.height, self.width)
            self.opt_size = opt
            self.min_size = self.min_size or (max(MIN_SIDE, opt[0] // 2), max(MIN_SIDE, opt[1] // 2))
            self.max_size = self.max_size or (opt[0] * 2, opt[1] * 2)
            self.height, self.width = opt

    def validate(self) -> None:
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise ExportError(f"export {name} {getattr(self, name)!r}: use one of {choices}")
        if self.opset not in OPSETS:
            raise ExportError(f"export opset {self.opset}: use {OPSETS.start}..{OPSETS.stop - 1} "
                              "(17 is what TensorRT 10 and 11 both parse best)")
        sizes = {"size": (self.height, self.width)}
        if self.dynamic:
            sizes.update(min_size=self.min_size, opt_size=self.opt_size, max_size=self.max_size)
        for name, size in sizes.items():
            if min(size) < MIN_SIDE:
                raise ExportError(f"export {name} {wxh(size)} (WxH): both sides must be "
                                  f">= {MIN_SIDE}; the encoder downsamples 16-32x")
        if self.dynamic:
            lo, mid, hi = self.min_size, self.opt_size, self.max_size
            if not all(a <= b <= c for a, b, c in zip(lo, mid, hi)):
                raise ExportError(f"export dynamic sizes must satisfy min <= opt <= max per side, "
                                  f"got min {wxh(lo)}, opt {wxh(mid)}, max {wxh(hi)} (WxH)")
        elif self.min_size or self.opt_size or self.max_size:
            raise ExportError("export min/opt/max sizes describe a dynamic export: add --dynamic")
        if self.max_batch < 1:
            raise ExportError(f"export max_batch {self.max_batch}: must be >= 1")
        if self.max_batch > 1 and not self.dynamic:
            raise ExportError("export max_batch > 1 needs a dynamic export (--dynamic)")

    @property
    def input_name(self) -> str:
        return INPUT_NAMES[self.input_format]

    def input_shape(self, batch: int, size: Size) -> list[int]:
        h, w = size
        return [batch, h, w, 3] if self.input_format == "uint8-nhwc-bgr" else [batch, 3, h, w]

    def profile(self) -> dict[str, list[int]]:
        """Full input shapes {min, opt, max} (TensorRT optimisation profile); {} if fixed."""
        if not self.dynamic:
            return {}
        return {"min": self.input_shape(1, self.min_size), "opt": self.input_shape(1, self.opt_size),
                "max": self.input_shape(self.max_batch, self.max_size)}

    def dynamic_axes(self) -> dict[str, dict[int, str]] | None:
        if not self.dynamic:
            return None
        nhwc = self.input_format == "uint8-nhwc-bgr"
        spatial = {0: "batch", 1: "height", 2: "width"} if nhwc else {0: "batch", 2: "height",
                                                                       3: "width"}
        out = {0: "batch", 1: "height", 2: "width"} if self.output == "labels" else {
            0: "batch", 2: "height", 3: "width"}
        return {self.input_name: spatial, self.output: out}

    def example_input(self, seed: int = 0) -> torch.Tensor:
        """A traced example at the opt size (random: constants must not fold into the graph)."""
        g = torch.Generator().manual_seed(seed)
        shape = self.input_shape(1, (self.height, self.width))
        if self.input_format == "uint8-nhwc-bgr":
            return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
        return torch.randn(shape, generator=g)


class DeployWrapper(nn.Module):
    """A segmenter with the deploy pre/post-processing, so the ONNX graph holds all of it.

    ``uint8-nhwc-bgr``: Cast -> Transpose -> Gather([2, 1, 0]) (constant, non-negative
    indices: TensorRT-safe) -> x * scale + bias, with scale = 1 / (255 std) and
    bias = -mean / std, i.e. exactly ``(x / 255 - mean) / std`` of training.
    ``float-nchw``: the input is already normalised RGB NCHW (what the model sees
    in training; the runtime normalises with the metadata's mean/std).
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float],
                 input_format: InputFormat = "uint8-nhwc-bgr", output: OutputKind = "labels",
                 labels_dtype: LabelsDtype = "uint8") -> None:
        super().__init__()
        self.model = model
        self.input_format = input_format
        self.output = output
        self.labels_dtype = torch.uint8 if labels_dtype == "uint8" else torch.int32
        m, s = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        self.register_buffer("scale", torch.tensor(1.0 / (255.0 * s), dtype=torch.float32)
                             .view(1, 3, 1, 1))
        self.register_buffer("bias", torch.tensor(-m / s, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("bgr_to_rgb", torch.tensor([2, 1, 0]))

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_format == "float-nchw":
            return x
        # Cast first: TensorRT allows uint8 only at graph inputs/outputs.
        x = x.float().permute(0, 3, 1, 2)
        return x.index_select(1, self.bgr_to_rgb) * self.scale + self.bias

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.logits(x)
        if self.output == "logits":
            return logits
        if self.output == "probs":
            return torch.softmax(logits, dim=1)
        return logits.argmax(dim=1).to(self.labels_dtype)


@dataclass
class ExportResult:
    path: Path
    metadata: ModelMetadata
    sha256: str
    simplified: bool
    op_types: list[str] = field(default_factory=list)
    num_nodes: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        def spec(t: TensorSpec) -> str:
            shape = "x".join("?" if d is None else str(d) for d in t.shape)
            return f"{t.name} {t.dtype}[{shape}] {t.format}"

        lines = [f"wrote {self.path} ({self.num_nodes} nodes, "
                 f"{'slimmed' if self.simplified else 'not slimmed'}, {self.seconds:.1f} s)",
                 *(f"  input  {spec(t)}" for t in self.metadata.inputs),
                 *(f"  output {spec(t)}" for t in self.metadata.outputs),
                 f"  sha256 {self.sha256}"]
        profile = self.metadata.input.profile
        if profile:
            lines.insert(2, "  profile " + ", ".join(f"{k} {v}" for k, v in profile.items()))
        return "\n".join(lines)


def _pin_dims(values: Sequence[onnx.ValueInfoProto], given: Sequence[TensorSpec]) -> bool:
    """Write the caller's known dims (e.g. the class count, which the exporter loses behind a
    dynamic Resize) into symbolic graph I/O dims; returns whether anything changed."""
    by_name = {v.name: v for v in values}
    changed = False
    for spec in given:
        if spec.name not in by_name or not spec.shape:
            continue
        dims = by_name[spec.name].type.tensor_type.shape.dim
        if len(dims) != len(spec.shape):
            raise ExportError(f"graph tensor {spec.name!r} has rank {len(dims)}, metadata "
                              f"says {spec.shape}")
        for dim, want in zip(dims, spec.shape):
            if want is None or (dim.HasField("dim_value") and dim.dim_value == want):
                continue
            if dim.HasField("dim_value"):
                raise ExportError(f"graph tensor {spec.name!r} has shape {dims}, metadata "
                                  f"says {spec.shape}")
            dim.dim_value = want  # replaces the dim_param (a oneof)
            changed = True
    return changed


def _tensor_specs(values: Sequence[onnx.ValueInfoProto], given: Sequence[TensorSpec],
                  what: str) -> list[TensorSpec]:
    """Metadata specs with dtype/shape taken from the graph (the graph is the truth)."""
    by_name = {v.name: v for v in values}
    specs = []
    for spec in given:
        if spec.name not in by_name:
            raise ExportError(f"metadata {what} {spec.name!r} is not a graph {what} "
                              f"({sorted(by_name)})")
        tt = by_name[spec.name].type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
        shape = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        specs.append(replace(spec, dtype=dtype, shape=shape))
    return specs


def _check(model: onnx.ModelProto, what: str) -> onnx.ModelProto:
    try:
        onnx.checker.check_model(model, full_check=True)
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{what}: the ONNX checker rejects the graph: {exc}") from None


def _slim(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """onnxslim's graph, or None (logged) when it fails or breaks the checker."""
    try:
        import onnxslim

        slim = onnxslim.slim(model)
        if not isinstance(slim, onnx.ModelProto):
            raise TypeError(f"onnxslim returned {type(slim).__name__}")
        return _check(slim, "slimmed graph")
    except Exception as exc:  # any onnxslim failure only costs the optimisation
        logger.warning("onnxslim failed (%s: %s); keeping the unslimmed graph",
                       type(exc).__name__, str(exc)[:200])
        return None


def export_module(module: nn.Module, example_input: torch.Tensor | tuple[torch.Tensor, ...],
                  out_path: str | Path, input_names: Sequence[str], output_names: Sequence[str],
                  dynamic_axes: Mapping[str, Mapping[int, str]] | None, opset: int,
                  metadata: ModelMetadata, simplify: bool = True) -> ExportResult:
    """Export any network to a checked, (slimmed,) metadata-carrying ONNX file, atomically.

    ``metadata.inputs/outputs`` name the graph I/O (and their format/profile); their
    dtype and shape are read back from the final graph, after the ints given in their
    ``shape`` are pinned into symbolic graph dims.
    """
    start = time.perf_counter()
    out = Path(out_path)
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    was_training = module.training
    module.eval()
    try:
        with atomic_path(out) as tmp, torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo (needs onnxscript).
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # ReflectionPad2d (generators, the relighting net) exports a negative-step Slice the
            # exporter cannot fold: harmless (the graph is checked and parity-gated), but noisy
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
            torch.onnx.export(module, args, str(tmp), dynamo=False, opset_version=opset,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_axes={k: dict(v) for k, v in (dynamic_axes or {}).items()},
                              do_constant_folding=True)
            model = _check(load_onnx(tmp), str(out))
            slim = _slim(model) if simplify else None
            model = slim or model
            if _pin_dims(model.graph.input, metadata.inputs) | _pin_dims(model.graph.output,
                                                                         metadata.outputs):
                model = _check(model, str(out))
            meta = replace(metadata,
                           inputs=_tensor_specs(model.graph.input, metadata.inputs, "input"),
                           outputs=_tensor_specs(model.graph.output, metadata.outputs, "output"))
            model.producer_name, model.producer_version = "edgeseg", __version__
            set_metadata(model, meta)
            onnx.save(model, str(tmp))
            sha = sha256_file(tmp)
    finally:
        module.train(was_training)
    ops = sorted({n.op_type for n in model.graph.node})
    return ExportResult(out, meta, sha, slim is not None, ops, len(model.graph.node),
                        time.perf_counter() - start)


def segmenter_metadata(ckpt: dict[str, Any], ckpt_sha256: str, options: ExportOptions,
                       model_cfg: Mapping[str, Any] | None = None,
                       extra: Mapping[str, Any] | None = None) -> ModelMetadata:
    """The metadata of a segmenter export; `export_module` fills in dtype and shape
    from the graph (the class count given here is pinned into the logits/probs shape).

    ``model_cfg``: the exported segmenter's model block (default the checkpoint's ``model``);
    ``extra``: added to ``metadata.extra`` (which network, the deploy composition)."""
    space = get_label_space(ckpt["label_space"])
    cfg = dict(model_cfg if model_cfg is not None else ckpt["model_cfg"])
    classes = int(cfg.get("num_classes", ckpt["model_cfg"]["num_classes"]))
    output_shape = [None] * 3 if options.output == "labels" else [None, classes, None, None]
    return ModelMetadata(
        labels=list(space.names),
        palette=[list(c) for c in space.palette],
        label_space=space.name,
        mean=[float(v) for v in ckpt["mean"]],
        std=[float(v) for v in ckpt["std"]],
        inputs=[TensorSpec(options.input_name, "", [], options.input_format, options.profile())],
        outputs=[TensorSpec(options.output, "", output_shape, options.output)],
        precision="fp32",
        network="segmenter",
        method=str(ckpt.get("method") or ""),
        datasets=dict(ckpt.get("datasets") or {}),
        checkpoint_sha256=ckpt_sha256,
        model=cfg,
        version=__version__,
        extra={"opset": options.opset, "iteration": int(ckpt["iteration"]),
               "exporter": f"torch {torch.__version__} torchscript", **(extra or {})},
    )


def deploy_module(model: nn.Module, ckpt: Mapping[str, Any], options: ExportOptions,
                  output: OutputKind | None = None) -> DeployWrapper:
    """The `DeployWrapper` an export with ``options`` traces (``output`` overrides its kind)."""
    return DeployWrapper(model, ckpt["mean"], ckpt["std"], options.input_format,
                         output or options.output, options.labels_dtype).eval()


# ----------------------------------------------------------------- which network

#: the metadata ``network`` of an image-network export, by the checkpoint role it has: a
#: runtime `TranslateStage` runs either before the segmenter (uint8 frame in and out)
IMAGE_NETWORKS: dict[str, str] = {"translator": "translator", "prenet": "relighting"}
#: checkpoint roles `edgeseg export --network` can export ("" is training-only)
EXPORTABLE_ROLES: tuple[str, ...] = ("segmenter", *IMAGE_NETWORKS)
#: the ``extra.network`` of the default export: the graph the method deploys
DEPLOYED = "deploy"


def exportable_networks(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> list[str]:
    """The networks of ``ckpt`` with a deployable role, each as ``name (role)``."""
    out = []
    for name in network_names(ckpt):
        try:
            spec = network_spec(ckpt, name, path)
        except EdgesegError:  # an unreadable spec: not exportable
            continue
        if spec.role in EXPORTABLE_ROLES:
            out.append(f"{name} ({spec.role})")
    return out


@dataclass
class ExportSource:
    """What one export writes from a checkpoint: the graph its method deploys (``name`` None:
    pre-networks -> segmenter -> class bias, or the bare segmenter), one segmenter alone,
    or one image network (translator or prenet) as uint8 frame -> uint8 frame."""

    path: Path
    ckpt: dict[str, Any]
    name: str | None = None
    spec: NetSpec | None = None

    @classmethod
    def open(cls, ckpt_path: str | Path, network: str | None = None) -> ExportSource:
        """``network`` None: the deployed graph; else a network name, checked to exist and
        to be exportable (one-line errors listing the exportable networks)."""
        path = Path(ckpt_path)
        ckpt = load_checkpoint(path)
        if network is None:
            return cls(path, ckpt)
        exportable = exportable_networks(ckpt, path)
        listing = ", ".join(exportable) or "none"
        if network not in network_names(ckpt):
            stored = "" if ckpt.get("networks") else (
                " (written before networks were stored: only its segmenter `model`)")
            raise ExportError(f"{path}: has no network {network!r}; exportable networks: "
                              f"{listing}{stored}")
        spec = network_spec(ckpt, network, path)
        if spec.role not in EXPORTABLE_ROLES:
            raise ExportError(f"{path}: network {network!r} ({spec.kind}) is training-only, "
                              f"nothing deploys it; exportable networks: {listing}")
        return cls(path, ckpt, network, spec)

    @property
    def role(self) -> str:
        return self.spec.role if self.spec is not None else "segmenter"

    @property
    def is_image(self) -> bool:
        """An image network (uint8 frame -> uint8 frame), not a segmenter."""
        return self.role in IMAGE_NETWORKS

    @property
    def label(self) -> str:
        """How messages name it: ``the deployed graph`` or ``network 'gen_s2t' (translator)``."""
        if self.name is None:
            return "the deployed graph"
        return f"network {self.name!r} ({self.role})"

    def image_range(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) of the range an image network works in."""
        return image_range(self.role, self.ckpt)

    def load(self, device: str | torch.device = "cpu") -> nn.Module:
        """The network in eval mode: the deployed graph, a segmenter or an image network."""
        if self.name is None:
            return load_model(self.path, device)[0]
        return load_network(self.ckpt, self.name, self.path)[0].to(device).eval()

    def extra(self) -> dict[str, Any]:
        """``metadata.extra`` entries naming what was exported. A checkpoint written before
        networks were stored, exported whole, gets none (its metadata stays as it was)."""
        new = "deploy" in self.ckpt or "networks" in self.ckpt
        out: dict[str, Any] = {}
        if self.name is not None:
            out["network"] = self.name
            out["spec"] = self.spec.to_dict() if self.spec is not None else {}
        elif new:
            out["network"] = DEPLOYED
        if new:
            out["deploy"] = deploy_of(self.ckpt).to_dict()
        return out

    def reference(self, module: nn.Module, options: ExportOptions) -> nn.Module:
        """The torch module the parity gate compares the graph with (fed the graph input):
        the `DeployWrapper` with logits out, or the `FrameToFrame` of an image network."""
        if self.is_image:
            return FrameToFrame(module, *self.image_range()).to(_device_of(module)).eval()
        return deploy_module(module, self.ckpt, options, output="logits").to(_device_of(module))

    def export(self, out_path: str | Path, options: ExportOptions,
               module: nn.Module | None = None) -> ExportResult:
        """Trace ``module`` (default: `load` on the CPU) into ``out_path`` with ``options``."""
        options.validate()
        module = self.load() if module is None else module
        sha = sha256_file(self.path)
        if self.is_image:
            mean, std = self.image_range()
            return export_image_network(
                module, out_path, options, mean, std, network=IMAGE_NETWORKS[self.role],
                method=str(self.ckpt.get("method") or ""),
                datasets=dict(self.ckpt.get("datasets") or {}), checkpoint_sha256=sha,
                extra={"opset": options.opset, "iteration": int(self.ckpt["iteration"]),
                       "exporter": f"torch {torch.__version__} torchscript", **self.extra()})
        cfg = None  # the trainer's segmenter (and the deployed graph): the checkpoint's model
        if self.name not in (None, "model") and self.spec is not None \
                and self.spec.kind == "segmenter":
            cfg = dict(self.spec.args)  # e.g. an EMA teacher: its own stored spec
        wrapper = deploy_module(module, self.ckpt, options)
        metadata = segmenter_metadata(self.ckpt, sha, options, cfg, self.extra())
        return export_module(wrapper, options.example_input(), out_path, [options.input_name],
                             [options.output], options.dynamic_axes(), options.opset, metadata,
                             options.simplify)


def _device_of(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def export_checkpoint(ckpt_path: str | Path, out_path: str | Path, options: ExportOptions,
                      network: str | None = None) -> ExportResult:
    """Export what a training checkpoint deploys (its composed graph, or its segmenter) with
    the deploy contract of ``options``; ``network`` exports that network alone (a segmenter,
    or a translator/prenet as uint8 frame -> uint8 frame)."""
    options.validate()
    return ExportSource.open(ckpt_path, network).export(out_path, options)


# ----------------------------------------------------------------- image networks

#: graph I/O names of an image-network export (uint8 NHWC BGR both)
IMAGE_INPUT, IMAGE_OUTPUT = "frame", "image"


def check_image_sizes(net: nn.Module, options: ExportOptions, what: str = "image network"
                      ) -> None:
    """Every size the export traces or profiles must be a multiple of the network's
    ``size_multiple`` (a generator that downsamples twice needs multiples of 4)."""
    m = int(getattr(net, "size_multiple", 1) or 1)
    sizes = {"--size": (options.height, options.width)}
    if options.dynamic:
        sizes.update({"--min-size": options.min_size, "--max-size": options.max_size})
    for flag, size in sizes.items():
        if size is not None and (size[0] % m or size[1] % m):
            raise ExportError(f"{what} {flag} {wxh(size)} (WxH): both sides must be multiples "
                              f"of {m} (the network downsamples by {m}); e.g. "
                              f"{wxh((size[0] - size[0] % m, size[1] - size[1] % m))}")


def export_image_network(net: nn.Module, out_path: str | Path, options: ExportOptions,
                         mean: Sequence[float], std: Sequence[float], *,
                         network: str = "translator", method: str = "",
                         datasets: dict[str, Any] | None = None, checkpoint_sha256: str = "",
                         extra: dict[str, Any] | None = None) -> ExportResult:
    """Export an image-to-image network working in the range (mean, std) as uint8 BGR frame ->
    uint8 BGR frame (input ``frame``, output ``image``, `FrameToFrame` traced): a translator
    ([-1, 1]) or a prenet (the segmenter's range). ``options``: size, ``dynamic`` (batch,
    height and width free, the profile recorded as for segmenters), opset, slimming; its
    segmenter fields (input format, output kind, labels dtype) do not apply."""
    if network not in IMAGE_NETWORKS.values():
        raise ExportError(f"image network kind {network!r}: use one of "
                          f"{sorted(set(IMAGE_NETWORKS.values()))}")
    options = replace(options, input_format="uint8-nhwc-bgr")
    options.validate()
    check_image_sizes(net, options, network)
    nhwc = {0: "batch", 1: "height", 2: "width"}
    metadata = ModelMetadata(
        labels=[], palette=[], label_space="", mean=[float(v) for v in mean],
        std=[float(v) for v in std],
        inputs=[TensorSpec(IMAGE_INPUT, "", [], "uint8-nhwc-bgr", options.profile())],
        outputs=[TensorSpec(IMAGE_OUTPUT, "", [], "uint8-nhwc-bgr")],
        network=network, method=method, datasets=datasets or {},
        checkpoint_sha256=checkpoint_sha256, version=__version__, extra=extra or {})
    return export_module(FrameToFrame(net, tuple(mean), tuple(std)), options.example_input(),
                         out_path, [IMAGE_INPUT], [IMAGE_OUTPUT],
                         {IMAGE_INPUT: nhwc, IMAGE_OUTPUT: nhwc} if options.dynamic else None,
                         options.opset, metadata, options.simplify)


def export_translator(generator: nn.Module, out_path: str | Path, size: Size, *,
                      dynamic: bool = False, opset: int = 17, simplify: bool = True,
                      method: str = "", datasets: dict[str, Any] | None = None,
                      checkpoint_sha256: str = "", extra: dict[str, Any] | None = None
                      ) -> ExportResult:
    """Export an image-to-image generator ([-1, 1] RGB NCHW, tanh out) as uint8 BGR frame ->
    uint8 BGR frame (input ``frame``, output ``image``); ``dynamic`` frees batch/height/width.
    (`edgeseg export CKPT --network NAME` exports a checkpoint's translator this way.)"""
    h, w = size
    if h < MIN_SIDE or w < MIN_SIDE:
        raise ExportError(f"translator size {wxh(size)} (WxH): both sides must be >= {MIN_SIDE}")
    options = ExportOptions(height=h, width=w, dynamic=dynamic, opset=opset, simplify=simplify)
    return export_image_network(generator, out_path, options, *TRANSLATOR_RANGE,
                                network="translator", method=method, datasets=datasets,
                                checkpoint_sha256=checkpoint_sha256, extra=extra)


def onnx_sha256(path: str | Path) -> str:
    """sha256 of an ONNX file, as recorded in engine manifests."""
    return sha256_file(path)
