"""The one training loop every method plugs into.

It owns devices, DDP, data streams, AMP, logging (JSONL + tqdm), periodic
validation and checkpoints; the method (`edgeseg.train.methods`) owns the
networks beyond the segmenter, their optimisers and the step itself.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from edgeseg import __version__
from edgeseg.config import (
    ConfigError,
    NetInit,
    Recipe,
    apply_overrides,
    from_dict,
    load_recipe,
    to_dict,
)
from edgeseg.evaluate import evaluate, metrics_of, open_eval_dataset
from edgeseg.fileio import append_line, check_writable_dir, remove_stale_temps, write_text
from edgeseg.labels import get_label_space
from edgeseg.models import build_model
from edgeseg.runtime.stages import fit_frame
from edgeseg.train import checkpoint as ckpt_io
from edgeseg.train.cpu_malloc import keep_freed_memory
from edgeseg.train.distributed import (
    DistInfo,
    all_reduce_array,
    barrier,
    broadcast_flag,
    cleanup_distributed,
    init_distributed,
    unwrap,
)
from edgeseg.train.methods import Method, MethodContext, get_method
from edgeseg.train.nets.registry import spec_differences
from edgeseg.train.predict import TorchPredictor
from edgeseg.train.streams import build_streams

#: exit status after Ctrl-C / SIGTERM: a checkpoint was saved, resume with --resume
EXIT_INTERRUPTED = 130

#: recipe keys ``--resume`` may change (each change is printed): they decide how long the
#: run goes, what it logs, scores and where it writes, never what one iteration computes.
#: Every other key (model, data streams and augmentation, batch, method, optimiser,
#: schedule shape, seed, device, AMP) is refused, because the resumed run would no
#: longer be the run its checkpoint belongs to.
RESUME_CHANGEABLE = (
    "train.iterations", "train.log_every", "train.val_every", "train.ckpt_every",
    "train.val_max_images", "train.select_on", "train.select_classes", "train.val_size",
    "train.threads", "train.keep_freed_memory",
    "data.workers", "data.val", "data.val_batch_size", "output_dir", "model.pretrained",
    "model.init_from", "method.init_from",
)

def describe_best(best: dict[str, Any]) -> str:
    """What chose best.pt, for logs (older checkpoints record mIoU only)."""
    if best.get("criterion") == "entropy":
        return f"lowest entropy {best['value']:.4f} on {best['data']} at iteration {best['iter']}"
    value = best.get("value", best.get("miou", 0.0))
    over = f" over {', '.join(best['classes'])}" if best.get("classes") else ""
    return f"{best['data']} mIoU{over} {100 * value:.2f} at iteration {best['iter']}"


#: files the trainer writes into a run folder (temp files of killed writers are removed)
RUN_FILES = ("last.pt", "best.pt", "recipe.yaml", "metrics.jsonl")


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and (data or not prefix):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def recipe_changes(old: Recipe | dict, new: Recipe | dict) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose value differs between two recipes: ``{key: (old, new)}``."""
    a = _flatten(to_dict(old) if not isinstance(old, dict) else old)
    b = _flatten(to_dict(new) if not isinstance(new, dict) else new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def resume_changeable(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUME_CHANGEABLE)


def _print_main(msg: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(msg, flush=True)


def resume_recipe(path: str | Path, overrides: list[str] | None = None,
                  recipe_file: str | Path | None = None) -> Recipe:
    """The recipe a run continues with: the one saved in its checkpoint plus ``overrides``.

    The run's own resolved recipe is the truth (the recipe file may have been
    edited since, and the run may have been started with ``--set``); a given
    ``recipe_file`` that differs from it is reported, not used.
    """
    ckpt = ckpt_io.load_checkpoint(path)
    saved = ckpt.get("recipe")
    if not isinstance(saved, dict):
        raise ckpt_io.CheckpointError(
            f"{path}: holds no training recipe, so it cannot be resumed; start a new run with "
            f"--set model.init_from={path}")
    try:
        run = from_dict(Recipe, saved)
    except ConfigError as exc:
        raise ckpt_io.CheckpointError(f"{path}: its saved recipe no longer loads: {exc}") from None
    if recipe_file is not None:
        diff = recipe_changes(run, load_recipe(recipe_file))
        if diff:
            _print_main(f"note: {recipe_file} differs from the run's recipe in "
                        f"{', '.join(diff)}; resuming with the run's own recipe saved in {path} "
                        "(change what may change with --set)")
    try:
        return from_dict(Recipe, apply_overrides(to_dict(run), list(overrides or [])))
    except ConfigError as exc:
        raise ConfigError(f"--set with --resume {path}: {exc}") from None


def resolve_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but no CUDA GPU is visible; use train.device=cpu")
        return torch.device("cuda")
    return torch.device("cpu")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX), where bf16 autocast
    pays; elsewhere oneDNN emulates it, slower than fp32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def use_cpu_bf16(recipe: Recipe, device: torch.device) -> bool:
    """``train.cpu_bf16`` on the device the run got; a one-line refusal on a CPU without
    native bf16 (the recipe asked for speed that this machine cannot give)."""
    if not recipe.train.cpu_bf16 or device.type != "cpu":
        return False
    if not cpu_has_native_bf16():
        raise ConfigError("train.cpu_bf16: this CPU has no native bf16 (AVX512-BF16 or AMX), "
                          "where bf16 autocast is slower than fp32; start the run with "
                          "--set train.cpu_bf16=false (a run trained in bf16 resumes only on "
                          "a CPU with bf16)")
    return True


def load_init_weights(model: torch.nn.Module, recipe: Recipe) -> None:
    """Load the segmenter of ``model.init_from`` (e.g. the source-only stage of a UDA
    method); its model spec, label space and normalisation must be the recipe's."""
    path = recipe.model.init_from
    ckpt = ckpt_io.load_checkpoint(path)
    skip = ckpt_io.INIT_KEYS
    theirs = to_dict(ckpt_io.model_config_of(ckpt, path))
    ours = to_dict(recipe.model)
    diff = [f"{k} {theirs[k]!r} (checkpoint) vs {ours[k]!r} (recipe)"
            for k in ours if k not in skip and theirs[k] != ours[k]]
    if ckpt["label_space"] != recipe.data.label_space:
        diff.append(f"label space {ckpt['label_space']} vs {recipe.data.label_space}")
    if not np.allclose(ckpt["mean"], recipe.data.mean) or not np.allclose(ckpt["std"], recipe.data.std):
        diff.append(f"mean/std {ckpt['mean']}/{ckpt['std']} vs {list(recipe.data.mean)}/"
                    f"{list(recipe.data.std)}")
    if diff:
        raise ckpt_io.CheckpointError(
            f"{path} (model.init_from) does not fit this recipe: {'; '.join(diff)}; "
            "set the recipe's model/data keys to the checkpoint's or pick another checkpoint")
    ckpt_io.load_weights(model, ckpt["model"], f"{path} (model.init_from)",
                         "weights (of its model spec)")


def init_network(method: Method, name: str, init: NetInit) -> str:
    """Load network ``name`` of ``method`` from another run's checkpoint (``method.init_from``);
    the stored spec must equal the one this recipe builds. Returns a log line."""
    where = f"method.init_from.{name}"
    if name not in method.specs:
        known = sorted(method.specs)
        raise ConfigError(f"{where}: method {method.name} has no network {name!r} "
                          f"(it has {known})")
    ckpt = ckpt_io.load_checkpoint(init.checkpoint)
    source = init.network or name
    theirs = ckpt_io.network_spec(ckpt, source, init.checkpoint)
    diff = spec_differences(method.specs[name], theirs)
    if diff:
        raise ckpt_io.CheckpointError(
            f"{init.checkpoint} ({where}): network {source!r} is built differently: "
            f"{'; '.join(diff)} (checkpoint vs recipe); make the recipe's network match")
    net = ckpt_io.load_network(ckpt, source, init.checkpoint)[0]
    ckpt_io.load_weights(unwrap(method.networks[name]), net.state_dict(),
                         f"{init.checkpoint} ({where})", f"weights of {source!r}")
    return f"network {name} initialised from {init.checkpoint} ({source})"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, recipe: Recipe, resume: str | None = None, progress: bool = True) -> None:
        self.progress = progress
        self.device = resolve_device(recipe.train.device)
        self.cpu_bf16 = use_cpu_bf16(recipe, self.device)
        if recipe.train.threads > 0 and self.device.type == "cpu":
            torch.set_num_threads(recipe.train.threads)
        #: whether glibc keeps freed buffers for this CPU run (False: not asked, or not glibc)
        self.kept_freed_memory = (self.device.type == "cpu" and recipe.train.keep_freed_memory
                                  and keep_freed_memory())
        self.dist: DistInfo = init_distributed(self.device.type)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        ckpt = self._check_resume(resume, recipe) if resume is not None else None
        self.recipe = recipe
        self.run_dir = Path(recipe.output_dir.format(name=recipe.name))
        self.label_space = get_label_space(recipe.data.label_space)
        if recipe.model.num_classes != self.label_space.num_classes:
            raise ConfigError(
                f"model.num_classes={recipe.model.num_classes} but data.label_space "
                f"{self.label_space.name} has {self.label_space.num_classes} classes"
            )
        # a mistyped method or parameter fails before the run folder exists
        method_cls = get_method(recipe.method.name)
        params = from_dict(method_cls.Params, recipe.method.params, "method.params")
        if resume is None and (self.run_dir / "last.pt").exists():
            raise ConfigError(
                f"{self.run_dir} already holds a run (last.pt); continue it with --resume "
                f"{self.run_dir / 'last.pt'} or set output_dir to a new folder"
            )
        if self.dist.is_main:
            check_writable_dir(self.run_dir)  # before any work, not at the first checkpoint
        unknown = [c for c in recipe.train.select_classes if c not in self.label_space.names]
        if unknown:
            raise ConfigError(f"train.select_classes: {unknown} are not classes of "
                              f"{self.label_space.name} ({', '.join(self.label_space.names)})")
        select = recipe.train.select_on
        for spec in [*recipe.data.val, *([select[len("entropy:"):]]
                                          if select.startswith("entropy:") else [])]:
            open_eval_dataset(spec, self.label_space)  # a typo fails now, not at validation
        seed_everything(recipe.seed)
        # on resume the weights come from the checkpoint: never re-read an ImageNet file
        model_cfg = recipe.model if ckpt is None else dataclasses.replace(
            recipe.model, pretrained=None)
        self.model = build_model(model_cfg)
        if resume is None and recipe.model.init_from:
            load_init_weights(self.model, recipe)
            self._log_main(f"segmenter initialised from {recipe.model.init_from}")
        if recipe.train.sync_bn and self.dist.enabled:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model.to(self.device)
        amp = recipe.train.amp and self.device.type == "cuda"
        ctx = MethodContext(recipe, self.model, self.device, self.dist, amp, self.cpu_bf16)
        self.method: Method = method_cls(ctx, params)
        if resume is None:
            self.init_networks()
        self.streams = build_streams(recipe, self.method, self.label_space, self.dist)
        self.iteration = 0
        self.best: dict[str, Any] = {}
        self.val_summaries: dict[str, Any] = {}  # the latest validation of each spec
        if ckpt is not None:
            self._resume(str(resume), ckpt)
        self.notes = self.method.run_notes()
        if self.notes:
            self._log_main("method: " + "; ".join(f"{k} = {v}" for k, v in self.notes.items()))
        if self.dist.enabled:
            self.method.wrap_networks(self._ddp)
        self._stop = False

    def _check_resume(self, path: str, recipe: Recipe) -> dict[str, Any]:
        """Load the checkpoint to resume and refuse, in one line each, what cannot continue
        it exactly: weights only, another model, another method, a changed recipe key that
        is not in RESUME_CHANGEABLE. Allowed changes are printed."""
        ckpt = ckpt_io.load_checkpoint(path)
        if "method_state" not in ckpt or "streams" not in ckpt or "rng" not in ckpt:
            raise ckpt_io.CheckpointError(
                f"{path}: holds weights only (no optimiser, data-stream and RNG state), so it "
                f"cannot be resumed; resume from the run's last.pt, or start a new run with "
                f"--set model.init_from={path}")
        ckpt_io.check_model_spec(ckpt, recipe.model, path)
        if ckpt.get("method") != recipe.method.name:
            raise ckpt_io.CheckpointError(
                f"{path}: written by method {ckpt.get('method')!r}, recipe uses "
                f"{recipe.method.name!r}; resume with the run's own recipe (edgeseg train "
                f"--resume {path}) or start a new run with --set model.init_from={path}")
        saved = ckpt.get("recipe")
        if isinstance(saved, dict):
            try:  # with today's defaults for keys added since the run started
                saved = to_dict(from_dict(Recipe, saved))
            except ConfigError as exc:
                raise ckpt_io.CheckpointError(
                    f"{path}: its saved recipe no longer loads: {exc}") from None
        changes = recipe_changes(saved, recipe) if isinstance(saved, dict) else {}
        refused = {k: v for k, v in changes.items() if not resume_changeable(k)}
        if refused:
            what = "; ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in refused.items())
            raise ConfigError(
                f"--resume {path}: cannot change {what}: the resumed run would no longer "
                f"continue its checkpoint exactly; on resume only {', '.join(RESUME_CHANGEABLE)} "
                f"may change. Start a new run (another output_dir) with "
                f"--set model.init_from={path} instead")
        done = int(ckpt["iteration"])
        if recipe.train.iterations < done:
            raise ConfigError(
                f"--resume {path}: train.iterations={recipe.train.iterations} is below the "
                f"checkpoint's iteration {done}; set train.iterations >= {done}")
        for key, (a, b) in changes.items():
            note = " (the LR schedule follows the new length)" if key == "train.iterations" else ""
            self._log_main(f"resume: {key} {a!r} -> {b!r}{note}")
        return ckpt

    # --- set-up -------------------------------------------------------------------
    def init_networks(self) -> None:
        """Start the networks named in ``method.init_from`` from their checkpoints, once the
        method has built them (the dry run overrides it to write those files first)."""
        for name, init in self.recipe.method.init_from.items():
            self._log_main(init_network(self.method, name, init))

    def _ddp(self, name: str, net: torch.nn.Module) -> torch.nn.Module:
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(
            net, device_ids=ids, find_unused_parameters=self.method.find_unused_parameters)

    def _resume(self, path: str, ckpt: dict[str, Any]) -> None:
        ckpt_io.load_weights(unwrap(self.model), ckpt["model"], path)
        try:
            self.method.load_state_dict(ckpt["method_state"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise ckpt_io.CheckpointError(
                f"{path}: its training state does not fit method {self.recipe.method.name} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
        self.streams.load_state_dict(ckpt["streams"])
        ckpt_io.restore_rng(ckpt["rng"])
        self.iteration = int(ckpt["iteration"])
        self.best = dict(ckpt.get("best", {}))
        self._log_main(f"resumed from {path} at iteration {self.iteration}")

    # --- helpers --------------------------------------------------------------------
    def _log_main(self, msg: str) -> None:
        if self.dist.is_main:
            tqdm.write(msg) if self.progress else print(msg, flush=True)

    def _append_jsonl(self, record: dict[str, Any]) -> None:
        if self.dist.is_main:
            append_line(self.run_dir / "metrics.jsonl", json.dumps(record))

    def _trim_metrics(self) -> None:
        """Drop log records newer than the iteration the run continues from (and a line cut
        by a kill): a run killed after its last checkpoint logged iterations it will redo."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        lines = path.read_text().splitlines()
        keep = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and int(record.get("iter", 0)) <= self.iteration:
                keep.append(line)
        if len(keep) != len(lines):
            write_text(path, "".join(line + "\n" for line in keep))
            self._log_main(f"{path}: dropped {len(lines) - len(keep)} records after iteration "
                           f"{self.iteration} (logged after the checkpoint)")

    def _prepare_run_dir(self) -> None:
        """Clean what a killed earlier process left in the run folder and save the recipe."""
        import yaml

        self.run_dir.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            for stale in remove_stale_temps(self.run_dir / name):
                self._log_main(f"removed {stale} (left by a killed run)")
        self._trim_metrics()
        write_text(self.run_dir / "recipe.yaml", yaml.safe_dump(to_dict(self.recipe), sort_keys=False))

    def payload(self) -> dict[str, Any]:
        r = self.recipe
        return {
            "format": ckpt_io.FORMAT,
            "edgeseg_version": __version__,
            "model_cfg": to_dict(r.model),
            "model": unwrap(self.model).state_dict(),
            "label_space": self.label_space.name,
            "mean": list(r.data.mean),
            "std": list(r.data.std),
            "method": r.method.name,
            "datasets": {name: p["data"] for name, p in self.streams.provenance.items()},
            "data_provenance": self.streams.provenance,
            "iteration": self.iteration,
            "best": self.best,
            "recipe": to_dict(r),
            "method_state": self.method.state_dict(),
            "networks": {n: spec.to_dict() for n, spec in self.method.specs.items()},
            "deploy": self.method.deploy().to_dict(),
            "streams": self.streams.state_dict(),
            "rng": ckpt_io.capture_rng(),
        }

    def save(self, name: str = "last.pt") -> Path:
        path = self.run_dir / name
        if self.dist.is_main:
            ckpt_io.save_checkpoint(path, self.payload())
        barrier(self.dist)
        return path

    def _batch_to_device(self, batch: dict[str, dict[str, torch.Tensor]]) -> dict:
        nb = self.device.type == "cuda"
        return {k: {n: t.to(self.device, non_blocking=nb) for n, t in v.items()}
                for k, v in batch.items()}

    # --- validation -------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """mIoU on every labelled val spec; DDP ranks score shards and sum matrices."""
        d = self.recipe.data
        predictor = TorchPredictor(self.method.deployed(), d.mean, d.std, self.device,
                                   size=self.recipe.train.val_size)
        results: dict[str, float] = {}
        for spec in d.val:
            dataset = open_eval_dataset(spec, self.label_space)
            if not dataset.has_labels:
                self._log_main(f"skip val {spec}: its labels are absent")
                continue
            n = len(dataset) if not self.recipe.train.val_max_images else min(
                len(dataset), self.recipe.train.val_max_images)
            shard = list(range(self.dist.rank, n, self.dist.world_size))
            res = evaluate(predictor, dataset, self.label_space, indices=shard,
                           progress=self.progress and self.dist.is_main, desc=f"val {spec}")
            matrix = all_reduce_array(res.confusion.matrix, self.dist, self.device)
            cm = res.confusion.copy()
            cm.matrix[:] = matrix
            summary = metrics_of(cm, dataset.label_space)
            results[spec] = summary.miou
            self.val_summaries[spec] = summary
            self._append_jsonl({"type": "val", "iter": self.iteration, "data": spec,
                                **summary.to_dict()})
        self.method.train_mode()
        return results

    @property
    def validates(self) -> bool:
        """There is something to validate on: a val set, or a label-free selection split."""
        return bool(self.recipe.data.val) or self.recipe.train.select_on.startswith("entropy:")

    def _track_best(self, results: dict[str, float]) -> None:
        """Keep best.pt by ``train.select_on`` (higher mIoU, or lower target entropy) and
        record in it which criterion chose it."""
        select = self.recipe.train.select_on
        if select.startswith("entropy:"):
            spec = select[len("entropy:"):]
            entropy = self.mean_entropy(spec)
            self._append_jsonl({"type": "val", "iter": self.iteration, "data": spec,
                                "entropy": entropy})
            key, value, score = select, entropy, -entropy
        else:
            key = select or next(iter(results), "")
            if key not in results:
                return
            value = score = results[key]
            classes = self.recipe.train.select_classes
            if classes:  # mIoU over the chosen classes only (absent ones do not count)
                ious = [self.val_summaries[key].per_class[c] for c in classes]
                with np.errstate(invalid="ignore"):
                    value = score = float(np.nanmean(np.asarray(ious, np.float64)))
                if np.isnan(score):
                    return
        previous = self.best.get("score", self.best.get("miou", -float("inf")))
        if score > previous:
            self.best = {"criterion": "entropy" if select.startswith("entropy:") else "miou",
                         "data": key, "value": value, "score": score,
                         "iter": self.iteration, "all": results}
            if self.recipe.train.select_classes and not select.startswith("entropy:"):
                self.best["classes"] = list(self.recipe.train.select_classes)
            self.save("best.pt")

    def mean_entropy(self, spec: str) -> float:
        """Mean per-pixel softmax entropy (nats) of the segmenter on ``spec``: a label-free
        selection signal on a target split. Uses val_max_images; DDP ranks score shards."""
        d, t = self.recipe.data, self.recipe.train
        predictor = TorchPredictor(self.method.deployed(), d.mean, d.std, self.device,
                                   size=self.recipe.train.val_size)
        dataset = open_eval_dataset(spec, self.label_space)
        n = len(dataset) if not t.val_max_images else min(len(dataset), t.val_max_images)
        totals = np.zeros(2, np.float64)  # entropy sum, pixel count
        for i in range(self.dist.rank, n, self.dist.world_size):
            frame = fit_frame(dataset[i]["image"], predictor.size)[0]
            prob = torch.softmax(predictor.logits(frame).float(), dim=1)
            ent = -(prob * torch.log(prob.clamp_min(1e-12))).sum(1)
            totals += (float(ent.sum()), ent.numel())
        totals = all_reduce_array(totals, self.dist, self.device)
        self.method.train_mode()
        return float(totals[0] / max(totals[1], 1))

    # --- the loop -------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop:  # a second Ctrl-C: give up immediately
            raise KeyboardInterrupt
        self._stop = True
        self._log_main(f"{signal.Signals(signum).name}: finishing this iteration, saving a checkpoint")

    def run(self, until: int | None = None) -> int:
        """Train to ``train.iterations`` (or stop early at ``until``, saving a resumable
        checkpoint); returns 0, or EXIT_INTERRUPTED after Ctrl-C / SIGTERM."""
        r = self.recipe
        t = r.train
        if self.dist.is_main:
            self._prepare_run_dir()
        if self.notes:
            self._append_jsonl({"type": "method", "iter": self.iteration, **self.notes})
        old_int = signal.signal(signal.SIGINT, self._on_signal)
        old_term = signal.signal(signal.SIGTERM, self._on_signal)
        bar = tqdm(total=t.iterations, initial=self.iteration, desc=r.name, dynamic_ncols=True,
                   disable=not (self.progress and self.dist.is_main))
        # images of the first stream (the labelled source) per iteration, all ranks
        first = next(iter(self.streams.streams.values()))
        images_per_iter = first.batch_size * self.dist.world_size
        interrupted = False
        try:
            self.method.train_mode()
            tic = time.perf_counter()
            stop_at = t.iterations if until is None else min(until, t.iterations)
            while self.iteration < stop_at:
                if broadcast_flag(self._stop, self.dist, self.device):
                    interrupted = True
                    break
                it = self.iteration
                self.method.begin_iteration(it)
                batch = self._batch_to_device(next(self.streams))
                losses = self.method.train_step(batch, it)
                self.iteration = it + 1
                bar.update(1)
                if self.iteration % t.log_every == 0 or self.iteration == t.iterations:
                    elapsed = time.perf_counter() - tic
                    n = t.log_every if self.iteration % t.log_every == 0 else self.iteration % t.log_every
                    lrs = {f"lr_{k}": o.param_groups[0]["lr"] for k, o in self.method.optimizers.items()}
                    rec = {"type": "train", "iter": self.iteration, **losses, **lrs,
                           "sec_per_iter": elapsed / n, "images_per_sec": images_per_iter * n / elapsed}
                    self._append_jsonl(rec)
                    bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})
                    tic = time.perf_counter()
                if t.val_every and self.iteration % t.val_every == 0 and self.validates:
                    self._track_best(self.validate())
                    tic = time.perf_counter()
                if t.ckpt_every and self.iteration % t.ckpt_every == 0:
                    self.save()
        finally:
            bar.close()
            self.streams.close()  # workers ignore SIGTERM: left running, they outlive an error
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
        if interrupted:
            path = self.save()
            self._log_main(f"interrupted at iteration {self.iteration}; resume with: edgeseg train "
                           f"RECIPE --resume {path}")
            cleanup_distributed()
            return EXIT_INTERRUPTED
        finished = self.iteration >= t.iterations
        if finished and self.validates and (not t.val_every or self.iteration % t.val_every):
            self._track_best(self.validate())
        path = self.save()
        if not finished:
            self._log_main(f"stopped at iteration {self.iteration}; continue with --resume {path}")
        self._log_main(f"{'done' if finished else 'saved'}: {path}" + (
            f" (best.pt: {describe_best(self.best)})" if self.best else ""))
        cleanup_distributed()
        return 0

