"""``edgeseg train RECIPE --dry-run``: build everything a recipe builds and step it twice.

A paper-sized recipe that fails on its first iteration (a crop its discriminators
cannot take, an optimiser group the method lacks, a label space its data cannot map
to, too little memory) fails after the datasets were copied and the machine was
booked. The dry run answers "does this recipe build and step on this machine?" in
seconds: it hands the recipe to the `Trainer` with its model, method, networks,
optimisers, schedules, label space, device and threads unchanged, and runs 2
iterations, one validation and one checkpoint on a few scenes that the synthetic
generator (`edgeseg.data.synth`) writes for it.

Nothing the recipe names is read. Every dataset spec becomes a fixture split of the
same role (labelled source -> ``day_train``, unlabelled target -> ``night_train``,
day/night pairs -> the fixture's pairs, each val spec -> a val split); the label space
stays (the synthetic reader maps its Cityscapes-19 labels into it). A start checkpoint
(``model.init_from``) becomes a freshly initialised one of the recipe's model, a
network start (``method.init_from``) a freshly initialised network of the spec the
method builds, pseudo-labels are derived from the fresh segmenter by
``edgeseg derive pseudo-label``'s code, a VGG-19 file is a random one, an ImageNet
backbone file is dropped. Crop, resize and val_size sides are capped at the smallest
of `SIDE_CAPS` the method's crop checks accept, batches at 2, loader workers at 0.
Each replacement is printed. Everything is written to one temp folder, removed
afterwards, also on failure.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import logging
import math
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeseg import __version__
from edgeseg.config import ConfigError, Recipe, from_dict, load_recipe, to_dict
from edgeseg.data import open_dataset
from edgeseg.errors import EdgesegError
from edgeseg.train import checkpoint as ckpt_io
from edgeseg.train.distributed import unwrap
from edgeseg.train.methods import get_method
from edgeseg.train.methods.base import segmenter_spec
from edgeseg.train.nets.registry import build_net
from edgeseg.train.trainer import Trainer

log = logging.getLogger(__name__)

#: fixture frame (width, height), on the generator's 16-pixel grid
FIXTURE_SIZE = (64, 32)
FIXTURE_DOMAINS = ("day", "night")
#: training scenes, round-robin over the domains (2 each: one batch of 2)
FIXTURE_TRAIN = 4
#: validation scenes, each rendered in every domain (one frame per val split)
FIXTURE_VAL = 1
FIXTURE_PAIRS = 2
ITERATIONS = 2
#: batches of 2 keep what batch statistics need (BatchNorm in train mode); a recipe's
#: batch of 1 stays 1
MAX_BATCH = 2
#: caps on crop, resize and val_size sides, tried in turn: a paper-sized network's compute
#: is its pixels, so the smallest cap the method's crop checks accept is taken (a method
#: refuses a crop its discriminators cannot take in one line that names the crop key, e.g.
#: sait_translate's 3 scales of 4 stride-2 convs need 64); after the last, the recipe's own
#: sizes. Each is a multiple of every size multiple of the networks (4, 16).
SIDE_CAPS = (32, 64, 128, 256)
#: the message of a method's crop check starts with the crop key
CROP_REFUSED = re.compile(r"data\.(streams\.[^.\s]+\.)?crop\b")
#: frames a validation (or an entropy selection) scores at most
MAX_VAL_IMAGES = 2
#: how the temp folder reads in printed lines
TMP_NAME = "<tmp>"


class DryRunError(EdgesegError):
    """A recipe that does not build or step in its dry run."""


@dataclass
class DryRunReport:
    """What a dry run did: the recipe it trained, its substitutions and records."""

    recipe: Recipe
    #: the lines it printed (substitutions, what was built, each iteration), without the
    #: ``dry-run:`` prefix
    lines: list[str]
    networks: list[str]
    optimizers: list[str]
    #: the ``train`` and ``val`` records of the run's metrics.jsonl
    train: list[dict[str, Any]] = field(default_factory=list)
    val: list[dict[str, Any]] = field(default_factory=list)
    #: the run folder's files before the temp folder was removed
    files: list[str] = field(default_factory=list)
    iterations: int = 0
    #: seconds of the whole dry run, of the trainer's set-up, of its run (2 iterations,
    #: validation, checkpoints)
    seconds: float = 0.0
    build_seconds: float = 0.0
    train_seconds: float = 0.0


# --- the fixture --------------------------------------------------------------------------


@dataclass(frozen=True)
class Fixture:
    """A synthetic dataset written once per dry run; its specs by role."""

    root: Path
    pairs: bool

    def split(self, name: str) -> str:
        return f"synthetic:{self.root}:{name}"

    @property
    def pairs_spec(self) -> str:
        return f"synthetic_pairs:{self.root}"


def write_fixture(root: Path, pairs: bool) -> Fixture:
    """A few scenes per domain (and day/night pairs) at `FIXTURE_SIZE`, written by the
    generator's own writer, so the dry run reads the layout a real synthetic set has."""
    from edgeseg.data.synth.writer import write_pairs, write_scenes

    write_scenes(root, FIXTURE_TRAIN, FIXTURE_VAL, FIXTURE_DOMAINS, FIXTURE_SIZE, "textured", 0)
    if pairs:
        write_pairs(root, FIXTURE_PAIRS, FIXTURE_SIZE, "textured", 0)
    return Fixture(root, pairs)


def is_pairs_spec(spec: str) -> bool:
    """Day/night pair datasets are the registry's ``*_pairs`` readers (darkzurich_pairs,
    synthetic_pairs, derived_pairs)."""
    return spec.split(":", 1)[0].lower().endswith("_pairs")


def needs_pairs(recipe: Recipe) -> bool:
    d = recipe.data
    specs = [d.source, d.target, d.pairs, *(s.data for s in d.streams.values())]
    return any(s and is_pairs_spec(s) for s in specs) or any(
        s.align == "homography" for s in d.streams.values())


# --- sizes ----------------------------------------------------------------------------------


def shrink(size: list[int] | tuple[int, int], cap: int | None) -> list[int]:
    """(h, w) ``size`` with each side capped at ``cap`` (None: as it is): equal sizes stay
    equal (methods that stack streams need one crop), multiples of 16 stay multiples, a
    side the recipe already keeps shorter stays."""
    return [side if cap is None else min(side, cap) for side in size]


# --- the dry run ------------------------------------------------------------------------------


class DryRun:
    """One dry run of ``recipe`` in the temp folder ``tmp`` (see the module doc)."""

    def __init__(self, recipe: Recipe, tmp: Path, source: str) -> None:
        self.original = recipe
        self.tmp = tmp
        self.source = source
        self.lines: list[str] = []
        try:
            self.method_cls = get_method(recipe.method.name)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        try:  # the trainer validates them too; here before any file is written for them
            self.params = from_dict(self.method_cls.Params, recipe.method.params,
                                    "method.params")
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        self.fixture: Fixture | None = None
        self._segmenter_ckpt: Path | None = None
        self.best_chosen = False

    def show(self, text: str) -> str:
        """``text`` with the temp folder's path shortened, for printing."""
        return text.replace(str(self.tmp), TMP_NAME)

    def note(self, line: str) -> None:
        text = self.show(line)
        self.lines.append(text)
        print(f"dry-run: {text}", flush=True)

    # --- data specs -----------------------------------------------------------------
    def stream_spec(self, stream: str, spec: str) -> str:
        """The fixture split of stream ``stream``'s dataset: pairs stay pairs, the labelled
        source reads day, every other stream another domain (night)."""
        assert self.fixture is not None
        if is_pairs_spec(spec):
            return self.fixture.pairs_spec
        day = stream == "source" or stream in self.method_cls.labelled_streams
        domains = FIXTURE_DOMAINS if day else FIXTURE_DOMAINS[::-1]
        if "+" in spec.rsplit(":", 1)[-1]:  # a joined split stays joined
            return self.fixture.split("+".join(f"{d}_train" for d in domains))
        return self.fixture.split(f"{domains[0]}_train")

    def rewrite_data(self, data: dict[str, Any]) -> dict[str, str]:
        """Every dataset spec of the recipe dict ``data`` -> a fixture spec of its role;
        returns the val mapping (``train.select_on`` names its specs)."""
        assert self.fixture is not None
        d = data["data"]
        changes: list[str] = []

        def swap(key: str, old: str, new: str) -> str:
            changes.append(f"{key} {old} -> {new}")
            return new

        for name in ("source", "target", "pairs"):
            if d[name]:
                d[name] = swap(f"data.{name}", d[name], self.stream_spec(name, d[name]))
        for name, own in d["streams"].items():
            if own["data"]:
                own["data"] = swap(f"data.streams.{name}.data", own["data"],
                                   self.stream_spec(name, own["data"]))
        val: dict[str, str] = {}
        for spec in d["val"]:
            if spec not in val:
                domain = FIXTURE_DOMAINS[len(val) % len(FIXTURE_DOMAINS)]
                val[spec] = self.fixture.split(f"{domain}_val")
        d["val"] = [val[s] for s in d["val"]]
        changes += [f"data.val {old} -> {new}" for old, new in val.items()]
        t = data["train"]
        select = t["select_on"]
        if select.startswith("entropy:"):
            spec = select[len("entropy:"):]
            new = val.get(spec) or self.stream_spec("target", spec)
            t["select_on"] = swap("train.select_on", select, f"entropy:{new}")
        elif select:
            t["select_on"] = swap("train.select_on", select, val[select])
        for line in changes:
            self.note(line)
        return val

    # --- sizes, batches, schedule -----------------------------------------------------------
    def rewrite_sizes(self, data: dict[str, Any], cap: int | None) -> list[str]:
        """Crops, resizes and val_size capped at ``cap``; batches <= 2; workers 0. Returns
        what changed."""
        d, t = data["data"], data["train"]
        changes: list[str] = []

        def fit(block: dict[str, Any], key: str, where: str) -> None:
            old = block.get(key)
            if old is not None:
                new = shrink(old, cap)
                if new != list(old):
                    block[key] = new
                    changes.append(f"{where}.{key} {_hw(old)} -> {_hw(new)}")

        def most(block: dict[str, Any], key: str, where: str, limit: int) -> None:
            old = block.get(key)
            if old is not None and old > limit:
                block[key] = limit
                changes.append(f"{where}.{key} {old} -> {limit}")

        for key in ("crop", "resize"):
            fit(d, key, "data")
        for name, own in d["streams"].items():
            for key in ("crop", "resize"):
                fit(own, key, f"data.streams.{name}")
            most(own, "batch_size", f"data.streams.{name}", MAX_BATCH)
        fit(t, "val_size", "train")
        most(d, "batch_size", "data", MAX_BATCH)
        most(d, "val_batch_size", "data", MAX_BATCH)
        most(d, "workers", "data", 0)
        return changes

    def rewrite_schedule(self, data: dict[str, Any]) -> None:
        """2 iterations, both logged, one validation and one checkpoint at the end."""
        t = data["train"]
        before = {k: t[k] for k in ("iterations", "val_every", "ckpt_every", "log_every",
                                    "val_max_images")}
        t.update(iterations=ITERATIONS, val_every=0, ckpt_every=0, log_every=1,
                 val_max_images=min(t["val_max_images"] or MAX_VAL_IMAGES, MAX_VAL_IMAGES))
        validates = bool(data["data"]["val"]) or t["select_on"].startswith("entropy:")
        self.note(", ".join(f"train.{k} {v} -> {t[k]}" for k, v in before.items() if v != t[k])
                  + f" ({'one validation and ' if validates else ''}last.pt at the end)")

    def build(self, data: dict[str, Any]) -> DryRunTrainer:
        """The trainer of the recipe dict ``data`` at the smallest side cap (`SIDE_CAPS`)
        the method's crop checks accept."""
        d = data["data"]
        sizes = [d["crop"], d["resize"], data["train"]["val_size"],
                 *(own[k] for own in d["streams"].values() for k in ("crop", "resize"))]
        longest = max(side for size in sizes if size for side in size)
        caps: list[int | None] = [c for c in SIDE_CAPS if c < longest]
        refused = ""
        for cap in [*caps, None]:
            sized = copy.deepcopy(data)
            changes = self.rewrite_sizes(sized, cap)
            try:
                with _quiet():  # its lines name temp files; the dry run prints its own
                    trainer = DryRunTrainer(from_dict(Recipe, sized), self)
            except ConfigError as exc:
                if cap is None or not CROP_REFUSED.match(str(exc)):
                    raise
                log.info("dry run: sides capped at %s refused (%s); trying larger", cap, exc)
                refused = f" (sides capped at {cap} were refused: {exc})"
                continue
            if changes:
                self.note("sizes and loaders: " + ", ".join(changes) + refused)
            return trainer
        raise AssertionError("unreachable: the last try keeps the recipe's sizes")

    # --- files the recipe starts from ----------------------------------------------------------
    def segmenter_checkpoint(self, recipe: Recipe) -> Path:
        """A freshly initialised checkpoint of the recipe's segmenter (its model spec, label
        space and normalisation), written once: what a start checkpoint or a pseudo-labelling
        model of this recipe must be."""
        if self._segmenter_ckpt is None:
            assert self.fixture is not None
            model = build_net(segmenter_spec(recipe))
            calibrate_batchnorm(model, self.fixture.split("day_train"), recipe)
            path = self.tmp / "start" / "segmenter.pt"
            save_fresh_checkpoint(path, recipe, model)
            self._segmenter_ckpt = path
        return self._segmenter_ckpt

    def rewrite_files(self, data: dict[str, Any]) -> None:
        """Start checkpoints, weight files, pseudo-label folders and caches of the recipe dict
        -> files of the right kind in the temp folder (none of the named files is read)."""
        m, d = data["model"], data["data"]
        if m["pretrained"]:
            self.note(f"model.pretrained {m['pretrained']} -> none: the backbone starts "
                      "random (file not read)")
            m["pretrained"] = None
        bare = from_dict(Recipe, {**data, "model": {**m, "init_from": None}})
        if m["init_from"]:
            path = self.segmenter_checkpoint(bare)
            self.note(f"model.init_from {m['init_from']} -> a freshly initialised checkpoint "
                      "of the recipe's model, BatchNorm statistics of the fixture (file not "
                      "read)")
            m["init_from"] = str(path)
        params = data["method"]["params"]
        if params.get("vgg19_weights"):
            path = self.tmp / "start" / "vgg19.pth"
            save_random_vgg19(path, params.get("feature_layer") or "block5_conv2")
            self.note(f"method.params.vgg19_weights {params['vgg19_weights']} -> a randomly "
                      "initialised VGG-19 file (file not read)")
            params["vgg19_weights"] = str(path)
        for name, own in d["streams"].items():
            if own["pseudo_labels"]:
                self.pseudo_labels(name, own, d, bare)
            if own["align_cache"]:
                new = self.tmp / "run" / f"alignment-{name}.json"
                self.note(f"data.streams.{name}.align_cache {own['align_cache']} -> the temp "
                          "run folder")
                own["align_cache"] = str(new)

    def pseudo_labels(self, name: str, own: dict[str, Any], d: dict[str, Any],
                      recipe: Recipe) -> None:
        """Pseudo-labels of the stream's fixture split, derived from a fresh segmenter of
        the recipe's model with ``edgeseg derive pseudo-label``'s code."""
        from edgeseg.train.derive import pseudo_label

        spec = own["data"] or (d[name] if name in ("source", "target", "pairs") else None)
        if spec is None:  # the trainer names the missing key
            return
        out = self.tmp / "pseudo" / name
        threshold = float(getattr(self.params, "ssl_threshold", 0.9))
        pseudo_label(self.segmenter_checkpoint(recipe), spec, out, threshold=threshold,
                     preview=0, progress=False)
        self.note(f"data.streams.{name}.pseudo_labels {own['pseudo_labels']} -> pseudo-labels "
                  f"of {spec} derived by a freshly initialised segmenter (folder not read)")
        own["pseudo_labels"] = str(out)

    def rewrite_network_starts(self, data: dict[str, Any]) -> None:
        """``method.init_from``: each network starts from a file in the temp folder that
        `DryRunTrainer` writes once the method has built the network's spec."""
        starts = data["method"]["init_from"]
        for name, init in starts.items():
            source = init["network"] or name
            self.note(f"method.init_from.{name} {init['checkpoint']} ({source}) -> a freshly "
                      f"initialised {name} of the spec this recipe builds (file not read)")
            init["checkpoint"] = str(self.tmp / "start" / f"{name}.pt")

    def write_network_starts(self, trainer: Trainer) -> None:
        """The checkpoints ``method.init_from`` names: each with a fresh network of the spec
        the method built, stored under the name the recipe reads, so the trainer's own
        `init_network` checks the spec and loads the weights as for a real start."""
        method = trainer.method
        for name, init in trainer.recipe.method.init_from.items():
            if name not in method.specs:  # `init_network` names the mistake
                continue
            source = init.network or name
            save_fresh_checkpoint(
                Path(init.checkpoint), trainer.recipe, unwrap(trainer.model),
                networks={source: method.specs[name].to_dict()},
                method_state={"networks": {source: unwrap(method.networks[name]).state_dict()}})

    # --- the whole run -------------------------------------------------------------------------
    def run(self) -> DryRunReport:
        """Fixture, substitutions, the trainer, 2 iterations; every failure one line."""
        stage = "writing the fixture data"
        trainer = None
        try:
            tic = time.perf_counter()
            self.fixture = write_fixture(self.tmp / "data", needs_pairs(self.original))
            self.note(f"data: {FIXTURE_TRAIN} training scenes ({', '.join(FIXTURE_DOMAINS)}), "
                      f"{FIXTURE_VAL} val scene per domain"
                      + (f", {FIXTURE_PAIRS} day/night pairs" if self.fixture.pairs else "")
                      + f" at {_hw(FIXTURE_SIZE)} from the synthetic generator "
                      f"({time.perf_counter() - tic:.1f} s), in {self.original.data.label_space}")
            stage = "preparing its inputs"
            data = to_dict(self.original)
            self.rewrite_data(data)
            self.rewrite_schedule(data)
            run_dir = self.tmp / "run"
            self.note(f"output_dir {self.original.output_dir} -> a temp folder, removed "
                      "afterwards")
            data["output_dir"] = str(run_dir)
            self.rewrite_files(data)
            self.rewrite_network_starts(data)
            stage = "building"
            tic = time.perf_counter()
            trainer = self.build(data)
            built = time.perf_counter() - tic
            method = trainer.method
            networks, optimizers = list(method.networks), list(method.optimizers)
            self.note(f"built {len(networks)} networks ({', '.join(networks)}) and "
                      f"{len(optimizers)} optimisers ({', '.join(optimizers)}) on "
                      f"{trainer.device}" + "".join(f"; {k}: {v}" for k, v in trainer.notes.items()))
            stage = "training"
            tic = time.perf_counter()
            with _quiet():
                status = trainer.run()
            if status:
                raise KeyboardInterrupt
            report = DryRunReport(trainer.recipe, self.lines, networks, optimizers,
                                  iterations=trainer.iteration, build_seconds=built,
                                  train_seconds=time.perf_counter() - tic)
            records = [json.loads(line) for line in
                       (run_dir / "metrics.jsonl").read_text().splitlines()]
            report.train = [r for r in records if r.get("type") == "train"]
            report.val = [r for r in records if r.get("type") == "val"]
            report.files = sorted(p.name for p in run_dir.iterdir())
            self.summarise(report)
            return report
        except (DryRunError, KeyboardInterrupt):
            raise
        except Exception as exc:  # one line, whatever broke; -v logs the traceback
            log.info("dry run traceback", exc_info=True)
            if stage == "training" and trainer is not None:
                stage = (f"at iteration {trainer.iteration + 1}" if trainer.iteration < ITERATIONS
                         else "validating or saving after the iterations")
            text = (str(exc).strip().splitlines() or [""])[0]
            if not isinstance(exc, EdgesegError):
                text = f"{type(exc).__name__}: {text}"
            raise DryRunError(f"{self.source}: dry run failed {stage}: {self.show(text)}") from exc

    def summarise(self, report: DryRunReport) -> None:
        for record in report.train:
            values = {k: v for k, v in record.items() if k not in ("type", "iter")
                      and not k.startswith("lr_") and k not in ("sec_per_iter", "images_per_sec")}
            bad = [k for k, v in values.items()
                   if isinstance(v, (int, float)) and not math.isfinite(v)]
            self.note(f"iteration {record['iter']}/{ITERATIONS}: "
                      + ", ".join(f"{k} {v:.4g}" for k, v in values.items())
                      + f" ({record['sec_per_iter']:.2f} s)")
            if bad:
                raise DryRunError(f"{self.source}: dry run: iteration {record['iter']} gave "
                                  f"non-finite {', '.join(bad)}")
        scores = [f"{self.show(r['data'])} "
                  + (f"mIoU {100 * r['miou']:.1f}" if "miou" in r else
                     f"entropy {r['entropy']:.3f}") for r in report.val]
        self.note(("validated " + ", ".join(scores) + "; " if scores else "")
                  + ("best.pt chosen (not written); " if self.best_chosen else "")
                  + f"wrote {', '.join(f for f in report.files if f.endswith('.pt'))}")


class DryRunTrainer(Trainer):
    """The trainer, with the files ``method.init_from`` names written by the dry run once
    the method has built the networks they start, and one checkpoint: best.pt is chosen
    (its criterion computed) but not written, as it is last.pt's payload by the same
    writer, and a paper-sized payload takes a second to write."""

    def __init__(self, recipe: Recipe, dry: DryRun) -> None:
        self.dry = dry
        super().__init__(recipe, progress=False)

    def init_networks(self) -> None:
        self.dry.write_network_starts(self)
        super().init_networks()

    def save(self, name: str = "last.pt") -> Path:
        if name == "best.pt":
            self.dry.best_chosen = True
            return self.run_dir / name
        return super().save(name)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hold back the trainer's own lines (they name temp files that are about to go)."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _hw(size: Any) -> str:
    """A size pair as printed, in its own order (crops are (h, w), frames (w, h))."""
    return f"{size[0]}x{size[1]}"


def calibrate_batchnorm(model: nn.Module, spec: str, recipe: Recipe) -> None:
    """Set every BatchNorm's running statistics to those of the images of ``spec``, as a
    trained start's are of its data: a recipe that keeps them frozen (``freeze_bn``) on
    an untrained network's unit statistics would blow a deep network's activations up
    within an iteration, a failure of the stand-in, not of the recipe."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    dataset = open_dataset(spec)
    mean, std = np.asarray(recipe.data.mean), np.asarray(recipe.data.std)
    images = np.stack([(dataset[i]["image"] / 255.0 - mean) / std for i in range(len(dataset))])
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: one pass gives the batch's statistics
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(images).permute(0, 3, 1, 2).float())
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


def save_fresh_checkpoint(path: Path, recipe: Recipe, model: nn.Module, **extra: Any) -> None:
    """A checkpoint of an untrained ``model`` of ``recipe`` with the keys every reader
    requires (`checkpoint.REQUIRED_KEYS`) and ``extra`` (method networks)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.replace(recipe.model, pretrained=None, init_from=None)
    ckpt_io.save_checkpoint(path, {
        "format": ckpt_io.FORMAT, "edgeseg_version": __version__, "model_cfg": to_dict(cfg),
        "model": model.state_dict(), "label_space": recipe.data.label_space,
        "mean": list(recipe.data.mean), "std": list(recipe.data.std), "iteration": 0, **extra})


def save_random_vgg19(path: Path, layer: str) -> None:
    """A torchvision-layout VGG-19 ``features`` state dict up to ``layer``, randomly
    initialised: what `load_vgg19` reads, without the ImageNet weights."""
    from edgeseg.train.nets.vgg import VGG19Features

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({f"features.{k}": v for k, v in VGG19Features(layer).features.state_dict().items()},
               path)


def dry_run(recipe_path: str | Path, overrides: list[str] | None = None, *,
            inspect: Callable[[Path], None] | None = None) -> DryRunReport:
    """Dry-run the recipe file ``recipe_path`` with ``--set`` ``overrides``; ``inspect`` is
    called with the temp run folder before it is removed. Raises `ConfigError` for a recipe
    that does not load, `DryRunError` for one that does not build or step."""
    recipe = load_recipe(recipe_path, overrides)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgeseg-dry-run-") as tmp:
        report = DryRun(recipe, Path(tmp), str(recipe_path)).run()
        if inspect is not None:
            inspect(Path(tmp) / "run")
    report.seconds = time.perf_counter() - start
    print(f"dry-run: {recipe_path} builds and steps ({report.iterations} iterations, "
          f"{report.seconds:.1f} s in all); the temp folder is removed", flush=True)
    return report
