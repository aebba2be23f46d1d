"""Typed recipes and profiles: YAML -> frozen dataclasses, strictly.

Unknown keys, wrong types and bad values are errors that name the key path and
the file, because a silently ignored typo in a training recipe costs a day of
GPU time. ``--set a.b=c`` overrides are parsed as YAML scalars and validated
like the file itself.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from edgeseg.errors import EdgesegError


class ConfigError(EdgesegError):
    """A recipe or profile that does not match its schema."""


class RangeError(ValueError):
    """A value outside its allowed range; `from_dict` names the full key path."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        super().__init__(f"{key}={value!r} is out of range; allowed: {allowed}")
        self.key, self.value, self.allowed = key, value, allowed


def check_range(obj: Any, key: str, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> None:
    """Raise RangeError when ``obj.key`` (a number or a list of numbers) leaves [low, high].

    Every numeric recipe key is checked where it is declared, so a bad value
    fails when the recipe loads, not as a ZeroDivisionError an hour later.
    """
    value = getattr(obj, key)
    if value is None:
        return
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high}")
    for v in value if isinstance(value, (list, tuple)) else (value,):
        bad = (low is not None and (v <= low if low_open else v < low)) or (
            high is not None and (v >= high if high_open else v > high))
        if bad:
            raise RangeError(key, value, " and ".join(parts))


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} matches none of {tp}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        kt, vt = args or (Any, Any)
        return {_convert(kt, k, path): _convert(vt, v, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML reads 1e-4 (no dot) as a string; accept numeric strings.
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported schema type {_type_name(tp)}")


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and bad types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or '<root>'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(
            f"unknown key(s) {', '.join(where + k for k in unknown)}; "
            f"valid keys{' of ' + path if path else ''}: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, f in fields.items():
        key_path = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], key_path)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key_path}: required key is missing")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except RangeError as exc:
            key = f"{path}.{exc.key}" if path else exc.key
            raise ConfigError(f"{key}={exc.value!r} is out of range; allowed: {exc.allowed}") from None
        except ValueError as exc:
            raise ConfigError(f"{path or '<root>'}: {exc}") from None
    return obj


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain YAML/JSON-friendly structures (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=c`` strings (values parsed as YAML) to a nested mapping."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. optim.lr=0.01")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return data


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such file; recipes live in train/, build profiles in export/")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return data


def load_config(cls: type, path: str | Path, overrides: list[str] | None = None) -> Any:
    """Load ``path`` into dataclass ``cls`` with overrides; errors name the file."""
    data = apply_overrides(load_yaml(path), overrides or [])
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


# --- the training recipe --------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network (stored in every checkpoint)."""

    backbone: Literal["mobilenet_v2", "resnet50", "resnet101"] = "mobilenet_v2"
    head: Literal["deeplabv3plus", "deeplabv2"] = "deeplabv3plus"
    num_classes: int = 19
    output_stride: Literal[8, 16] = 16
    width_mult: float = 1.0
    separable: bool = False
    aspp_channels: int = 256
    pretrained: str | None = None  # local torchvision-format ImageNet state dict
    # checkpoint whose segmenter weights start training (e.g. the source-only stage of a
    # UDA method); its model spec must equal this one; ignored on --resume
    init_from: str | None = None

    def validate(self) -> None:
        check_range(self, "num_classes", 1, 255)  # class ids stay below 255, the ignore index
        check_range(self, "width_mult", 0, low_open=True)
        check_range(self, "aspp_channels", 1)
        if self.head == "deeplabv2" and self.backbone == "mobilenet_v2":
            raise ValueError("the deeplabv2 head is built for ResNet backbones")


#: streams whose dataset a top-level ``data.NAME`` key may name (shorthands of
#: ``data.streams.NAME.data``)
SHORTHAND_STREAMS = ("source", "target", "pairs")


@dataclass(frozen=True)
class LowLight:
    """Photometric augmentation that imitates dusk and night on day frames (``data.low_light``;
    applied by `edgeseg.data.transforms.low_light`).

    With probability ``p`` an image becomes ``exposure * 255 * (x / 255) ** gamma`` plus
    Gaussian sensor noise of standard deviation ``noise`` (in 0..255 levels), each value
    drawn uniformly from its range per image: gamma > 1 crushes the mid-tones as a dark
    exposure does, the exposure factor dims the whole frame, and the noise is what a
    sensor adds at high gain. ``p`` 0 (the default) draws nothing from the generator.
    """

    p: float = 0.0
    gamma: tuple[float, float] = (1.0, 2.5)
    exposure: tuple[float, float] = (0.35, 1.0)
    noise: tuple[float, float] = (0.0, 6.0)

    def validate(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"low_light.p={self.p}: expected a probability in [0, 1]")
        for key, positive in (("gamma", True), ("exposure", True), ("noise", False)):
            lo, hi = getattr(self, key)
            if not ((lo > 0) if positive else (lo >= 0)) or lo > hi:
                raise ValueError(f"low_light.{key}={[lo, hi]}: expected "
                                 f"{'0 <' if positive else '0 <='} min <= max")


@dataclass(frozen=True)
class StreamConfig:
    """One data stream's own settings (``data.streams.NAME``, NAME one of the method's
    streams: source, target, pairs, ...); an unset key takes the global ``data.*`` value.

    Which streams keep labels is the method's decision (``labelled_streams``), not the
    recipe's: labels of every other stream are removed before they reach the method,
    except ``pseudo_labels``, which a model made from the images alone.
    """

    data: str | None = None  # dataset spec NAME:ROOT[:SPLIT]; data.source/target/pairs alike
    crop: tuple[int, int] | None = None  # (height, width)
    resize: tuple[int, int] | None = None  # (height, width) before augmentation
    scale_range: tuple[float, float] | None = None
    flip: bool | None = None
    color_jitter: float | None = None
    low_light: LowLight | None = None
    batch_size: int | None = None
    #: a folder written by ``edgeseg derive pseudo-label`` for this stream's dataset: the
    #: stream's ``label`` (255 below the threshold) and ``confidence`` come from it
    pseudo_labels: str | None = None
    #: ``homography``: each day/night pair gets ``homography`` (night -> day pixel
    #: coordinates, from feature matches with RANSAC; identity where that fails), carried
    #: through augmentation; ``none`` (or unset): no alignment. Per stream only.
    align: Literal["homography", "none"] | None = None
    #: the features the homography is estimated from (default orb)
    align_features: Literal["orb", "sift"] | None = None
    #: the JSON cache of the alignments (default ``<output_dir>/alignment-<stream>.json``)
    align_cache: str | None = None

    def validate(self) -> None:
        if self.align != "homography":
            for key in ("align_features", "align_cache"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key}={getattr(self, key)!r} applies only with "
                                     "align: homography; set align or remove it")
        check_range(self, "crop", 16)
        check_range(self, "resize", 16)
        check_range(self, "scale_range", 0, low_open=True)
        if self.scale_range is not None and self.scale_range[0] > self.scale_range[1]:
            raise ValueError(f"scale_range={list(self.scale_range)}: expected min <= max")
        check_range(self, "color_jitter", 0, 1)
        check_range(self, "batch_size", 1)


@dataclass(frozen=True)
class DataConfig:
    source: str | None = None  # labelled source spec NAME:ROOT[:SPLIT]
    val: list[str] = field(default_factory=list)
    target: str | None = None  # unlabelled target spec (labels never used)
    pairs: str | None = None  # aligned day/night pairs spec (labels never used)
    label_space: str = "cityscapes19"
    crop: tuple[int, int] = (256, 512)  # (height, width)
    resize: tuple[int, int] | None = None  # (height, width) before augmentation
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    color_jitter: float = 0.0
    #: dusk/night imitation on the training images (`edgeseg.data.transforms.LowLight`)
    low_light: LowLight = field(default_factory=LowLight)
    batch_size: int = 8
    val_batch_size: int = 1
    workers: int = 2
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    #: per-stream settings over the global ones above, by the method's stream names
    streams: dict[str, StreamConfig] = field(default_factory=dict)

    def validate(self) -> None:
        check_range(self, "crop", 16)
        check_range(self, "resize", 16)
        check_range(self, "scale_range", 0, low_open=True)
        lo, hi = self.scale_range
        if lo > hi:
            raise ValueError(f"data.scale_range={list(self.scale_range)}: expected min <= max")
        check_range(self, "color_jitter", 0, 1)
        check_range(self, "batch_size", 1)
        check_range(self, "val_batch_size", 1)
        check_range(self, "workers", 0)
        check_range(self, "mean", 0, 1)
        check_range(self, "std", 0, low_open=True)
        for name in SHORTHAND_STREAMS:
            short, own = getattr(self, name), self.streams.get(name, StreamConfig()).data
            if short is not None and own is not None and short != own:
                raise ValueError(f"data.{name}={short!r} and data.streams.{name}.data={own!r} "
                                 "name different datasets; keep one of them")

    def stream(self, name: str) -> StreamConfig:
        """The settings of stream ``name``, every unset key filled from the global ones
        (``data`` from ``data.NAME`` for source, target and pairs)."""
        own = self.streams.get(name, StreamConfig())
        short = getattr(self, name) if name in SHORTHAND_STREAMS else None

        def pick(value: Any, default: Any) -> Any:
            return default if value is None else value

        return StreamConfig(
            data=pick(own.data, short), crop=pick(own.crop, self.crop),
            resize=pick(own.resize, self.resize),
            scale_range=pick(own.scale_range, self.scale_range), flip=pick(own.flip, self.flip),
            color_jitter=pick(own.color_jitter, self.color_jitter),
            low_light=pick(own.low_light, self.low_light),
            batch_size=pick(own.batch_size, self.batch_size), pseudo_labels=own.pseudo_labels)


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    head_lr_mult: float = 1.0  # LR multiplier of the decoder/head (10x option)
    #: poly: (1 - t/T)^power; constant; step: gamma^(t // step_size); linear: constant
    #: until decay_start x T, then linearly to 0 at T (CycleGAN); multistep: times gamma
    #: at each of ``milestones`` (torch's MultiStepLR)
    schedule: Literal["poly", "constant", "step", "linear", "multistep"] = "poly"
    power: float = 0.9
    warmup_iters: int = 0
    step_size: int = 0
    gamma: float = 0.1
    decay_start: float = 0.5  # schedule linear: share of the run before the decay starts
    milestones: tuple[int, ...] = ()  # schedule multistep: iterations where the LR drops
    #: false: no weight decay on BatchNorm/LayerNorm weights and on biases (TF-slim and
    #: most detection/segmentation codebases regularise conv/linear weights only)
    decay_norm_and_bias: bool = True
    clip_grad_norm: float = 0.0  # > 0: clip the global gradient norm of this optimiser's params

    def validate(self) -> None:
        check_range(self, "decay_start", 0, 1)
        check_range(self, "clip_grad_norm", 0)
        check_range(self, "lr", 0)
        check_range(self, "momentum", 0, 1, high_open=True)
        check_range(self, "betas", 0, 1, high_open=True)
        check_range(self, "weight_decay", 0)
        check_range(self, "head_lr_mult", 0)
        check_range(self, "power", 0)
        check_range(self, "warmup_iters", 0)
        check_range(self, "step_size", 1 if self.schedule == "step" else 0)
        check_range(self, "gamma", 0, low_open=True)
        if self.schedule == "multistep" and not self.milestones:
            raise ValueError("schedule multistep needs milestones, e.g. [100000]")
        if list(self.milestones) != sorted(set(self.milestones)) or any(
                m < 1 for m in self.milestones):
            raise ValueError(f"milestones {list(self.milestones)}: need increasing "
                             "iterations >= 1")


@dataclass(frozen=True)
class NetInit:
    """Where a method's network starts from: a network of another run's checkpoint."""

    checkpoint: str
    network: str = ""  # the network's name in that checkpoint; "" = the same name


@dataclass(frozen=True)
class MethodConfig:
    name: str = "source_only"
    params: dict[str, Any] = field(default_factory=dict)  # validated by the method
    #: per-group optimiser blocks over the method's defaults (keys of OptimConfig), e.g.
    #: {gan: {lr: 1e-4}}; the segmenter's optimiser is the recipe's ``optim``
    optimizers: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: start networks from other runs (a stage-1 translator, an EMA generator); ignored
    #: on --resume. The segmenter's own start is ``model.init_from``.
    init_from: dict[str, NetInit] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainConfig:
    iterations: int = 1000
    val_every: int = 500
    ckpt_every: int = 500
    log_every: int = 10
    amp: bool = True  # CUDA only (fp16 autocast + grad scaling); ignored on CPU
    #: bf16 autocast on a CPU with native bf16 (AMX or AVX512-BF16): about 2x on the GAN
    #: translators' convolutions. Off by default (fp32, the same on every CPU); refused on
    #: a CPU without native bf16, where emulated bf16 is slower than fp32
    cpu_bf16: bool = False
    sync_bn: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0  # torch intra-op threads on CPU; 0 = torch default
    #: on a CPU under glibc, keep freed tensor buffers in the heap for reuse instead of
    #: returning them to the kernel (edgeseg.train.cpu_malloc): about 2x faster CPU
    #: iterations, at the price of keeping the peak memory; the same arithmetic
    keep_freed_memory: bool = True
    val_max_images: int = 0  # 0 = the whole validation split
    #: what chooses best.pt: "" = mIoU on the first data.val spec; a data.val spec = mIoU
    #: there; "entropy:SPEC" = the lowest mean prediction entropy on SPEC (label-free, for
    #: an unlabelled target split)
    select_on: str = ""
    #: with an mIoU criterion: the mean IoU over these classes only (names of
    #: data.label_space, e.g. the thin classes a deployment cares about); [] = all classes
    select_classes: list[str] = field(default_factory=list)
    #: (height, width) validation frames are resized to (stretched, as an engine built at
    #: that size would see them) before the model, predictions scored at full resolution;
    #: None = each frame at its own size. Validate at the training scale: a model trained
    #: on 1280-wide images loses accuracy on 2048-wide ones.
    val_size: tuple[int, int] | None = None

    def validate(self) -> None:
        check_range(self, "val_size", 16)
        if self.select_on.startswith("entropy:") and not self.select_on[len("entropy:"):]:
            raise ValueError("train.select_on='entropy:' needs a dataset spec after the colon")
        check_range(self, "iterations", 1)
        check_range(self, "val_every", 0)  # 0 = only at the end
        check_range(self, "ckpt_every", 0)  # 0 = only at the end and on Ctrl-C
        check_range(self, "log_every", 1)
        check_range(self, "threads", 0)
        check_range(self, "val_max_images", 0)


@dataclass(frozen=True)
class Recipe:
    name: str
    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    output_dir: str = "runs/{name}"

    def validate(self) -> None:
        if not self.name.strip():
            raise ValueError("name: must not be empty")
        select = self.train.select_on
        if self.train.select_classes and select.startswith("entropy:"):
            raise ValueError("train.select_classes applies to an mIoU criterion, not to "
                             f"train.select_on={select!r}")
        if select and not select.startswith("entropy:") and select not in self.data.val:
            raise ValueError(f"train.select_on={select!r}: not one of data.val "
                             f"{list(self.data.val)}; name one of them or entropy:SPEC")
        check_range(self, "seed", 0, 2**32 - 1)
        try:
            self.output_dir.format(name=self.name)
        except (KeyError, IndexError, ValueError):
            raise ValueError(f"output_dir={self.output_dir!r}: only {{name}} may be replaced "
                             "in it") from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    return load_config(Recipe, path, overrides)
