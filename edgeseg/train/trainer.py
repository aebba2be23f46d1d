"""The one training loop every method plugs into.

It owns devices, DDP, data streams, AMP, logging (JSONL + tqdm), periodic
validation and checkpoints; the method (`edgeseg.train.methods`) owns the
networks beyond the segmenter, their optimisers and the step itself.
"""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from edgeseg import __version__
from edgeseg.config import ConfigError, Recipe, from_dict, to_dict
from edgeseg.data import open_dataset
from edgeseg.data.transforms import TrainTransform
from edgeseg.evaluate import evaluate, metrics_of, open_eval_dataset
from edgeseg.fileio import write_text
from edgeseg.labels import get_label_space
from edgeseg.models import build_model
from edgeseg.train import checkpoint as ckpt_io
from edgeseg.train.distributed import (
    DistInfo,
    all_reduce_array,
    barrier,
    broadcast_flag,
    cleanup_distributed,
    init_distributed,
    unwrap,
)
from edgeseg.train.loader import AugmentedDataset, MultiStream, Stream
from edgeseg.train.methods import Method, MethodContext, get_method
from edgeseg.train.predict import TorchPredictor

#: exit status after Ctrl-C / SIGTERM: a checkpoint was saved, resume with --resume
EXIT_INTERRUPTED = 130


def resolve_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but no CUDA GPU is visible; use train.device=cpu")
        return torch.device("cuda")
    return torch.device("cpu")


def load_init_weights(model: torch.nn.Module, recipe: Recipe) -> None:
    """Load the segmenter of ``model.init_from`` (e.g. the source-only stage of a UDA
    method); its model spec, label space and normalisation must be the recipe's."""
    path = recipe.model.init_from
    ckpt = ckpt_io.load_checkpoint(path)
    skip = ("pretrained", "init_from")  # how the weights were started, not what they are
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
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise ckpt_io.CheckpointError(f"{path} (model.init_from): weights do not match its "
                                      f"model spec: {str(exc)[:300]}") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, recipe: Recipe, resume: str | None = None, progress: bool = True) -> None:
        self.recipe = recipe
        self.progress = progress
        self.device = resolve_device(recipe.train.device)
        if recipe.train.threads > 0 and self.device.type == "cpu":
            torch.set_num_threads(recipe.train.threads)
        self.dist: DistInfo = init_distributed(self.device.type)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        self.run_dir = Path(recipe.output_dir.format(name=recipe.name))
        self.label_space = get_label_space(recipe.data.label_space)
        if recipe.model.num_classes != self.label_space.num_classes:
            raise ConfigError(
                f"model.num_classes={recipe.model.num_classes} but data.label_space "
                f"{self.label_space.name} has {self.label_space.num_classes} classes"
            )
        if resume is None and (self.run_dir / "last.pt").exists():
            raise ConfigError(
                f"{self.run_dir} already holds a run (last.pt); continue it with --resume "
                f"{self.run_dir / 'last.pt'} or set output_dir to a new folder"
            )
        seed_everything(recipe.seed)
        self.model = build_model(recipe.model)
        if resume is None and recipe.model.init_from:
            load_init_weights(self.model, recipe)
            self._log_main(f"segmenter initialised from {recipe.model.init_from}")
        if recipe.train.sync_bn and self.dist.enabled:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model.to(self.device)
        method_cls = get_method(recipe.method.name)
        params = from_dict(method_cls.Params, recipe.method.params, "method.params")
        amp = recipe.train.amp and self.device.type == "cuda"
        ctx = MethodContext(recipe, self.model, self.device, self.dist, amp)
        self.method: Method = method_cls(ctx, params)
        self.streams = self._build_streams(method_cls.streams)
        self.iteration = 0
        self.best: dict[str, Any] = {}
        if resume is not None:
            self._resume(resume)
        if self.dist.enabled:
            self.method.wrap_networks(self._ddp)
        self._stop = False

    # --- set-up -------------------------------------------------------------------
    def _build_streams(self, names: tuple[str, ...]) -> MultiStream:
        d = self.recipe.data
        specs = {"source": d.source, "target": d.target, "pairs": d.pairs}
        transform = TrainTransform(crop=d.crop, scale_range=d.scale_range, flip=d.flip,
                                   color_jitter=d.color_jitter, resize=d.resize)
        streams = {}
        for i, name in enumerate(names):
            spec = specs[name]
            if spec is None:
                raise ConfigError(f"method {self.recipe.method.name} needs data.{name}")
            reader = open_dataset(spec, self.label_space.name if name == "source" else None)
            if name == "target":
                reader = _Unlabelled(reader)  # target labels never reach a loss
            dataset = AugmentedDataset(reader, transform, d.mean, d.std, self.recipe.seed + 1000 * i)
            streams[name] = Stream(dataset, d.batch_size, d.workers, self.dist.rank,
                                   self.dist.world_size, self.recipe.seed + 1000 * i)
        return MultiStream(streams)

    def _ddp(self, name: str, net: torch.nn.Module) -> torch.nn.Module:
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(
            net, device_ids=ids, find_unused_parameters=self.method.find_unused_parameters)

    def _resume(self, path: str) -> None:
        ckpt = ckpt_io.load_checkpoint(path)
        if "method_state" not in ckpt:
            raise ckpt_io.CheckpointError(f"{path}: holds weights only (no training state) to resume")
        if ckpt.get("method") != self.recipe.method.name:
            raise ckpt_io.CheckpointError(
                f"{path}: written by method {ckpt.get('method')!r}, recipe uses "
                f"{self.recipe.method.name!r}")
        self.model.load_state_dict(ckpt["model"])
        self.method.load_state_dict(ckpt["method_state"])
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
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

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
            "datasets": {"source": r.data.source, "target": r.data.target},
            "iteration": self.iteration,
            "best": self.best,
            "recipe": to_dict(r),
            "method_state": self.method.state_dict(),
            "exportable": sorted(self.method.exportable()),
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
        model = unwrap(self.model)
        d = self.recipe.data
        predictor = TorchPredictor(model, d.mean, d.std, self.device)
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
            self._append_jsonl({"type": "val", "iter": self.iteration, "data": spec,
                                **summary.to_dict()})
        for net in self.method.networks.values():
            net.train()
        return results

    def _track_best(self, results: dict[str, float]) -> None:
        if not results:
            return
        key = next(iter(results))  # the first val spec selects the best checkpoint
        if results[key] > self.best.get("miou", -1.0):
            self.best = {"miou": results[key], "data": key, "iter": self.iteration,
                         "all": results}
            self.save("best.pt")

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
            self.run_dir.mkdir(parents=True, exist_ok=True)
            import yaml

            write_text(self.run_dir / "recipe.yaml", yaml.safe_dump(to_dict(r), sort_keys=False))
        old_int = signal.signal(signal.SIGINT, self._on_signal)
        old_term = signal.signal(signal.SIGTERM, self._on_signal)
        bar = tqdm(total=t.iterations, initial=self.iteration, desc=r.name, dynamic_ncols=True,
                   disable=not (self.progress and self.dist.is_main))
        images_per_iter = r.data.batch_size * self.dist.world_size
        interrupted = False
        try:
            for net in self.method.networks.values():
                net.train()
            boundaries = set(self.method.round_boundaries())
            tic = time.perf_counter()
            stop_at = t.iterations if until is None else min(until, t.iterations)
            while self.iteration < stop_at:
                if broadcast_flag(self._stop, self.dist, self.device):
                    interrupted = True
                    break
                it = self.iteration
                if it in boundaries:
                    self.method.on_round(sorted(boundaries).index(it), it)
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
                if t.val_every and self.iteration % t.val_every == 0 and r.data.val:
                    self._track_best(self.validate())
                    tic = time.perf_counter()
                if t.ckpt_every and self.iteration % t.ckpt_every == 0:
                    self.save()
        finally:
            bar.close()
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
        if interrupted:
            path = self.save()
            self._log_main(f"interrupted at iteration {self.iteration}; resume with: edgeseg train "
                           f"RECIPE --resume {path}")
            cleanup_distributed()
            return EXIT_INTERRUPTED
        finished = self.iteration >= t.iterations
        if finished and r.data.val and (not t.val_every or self.iteration % t.val_every):
            self._track_best(self.validate())
        path = self.save()
        if not finished:
            self._log_main(f"stopped at iteration {self.iteration}; continue with --resume {path}")
        self._log_main(f"{'done' if finished else 'saved'}: {path}" + (
            f" (best {self.best['data']} mIoU {100 * self.best['miou']:.2f} at iteration "
            f"{self.best['iter']})" if self.best else ""))
        cleanup_distributed()
        return 0


class _Unlabelled:
    """View of a reader with labels removed: the target domain is unlabelled by contract."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.root = reader.root
        self.label_space = reader.label_space

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = dict(self.reader[index])
        sample["label"] = None
        return sample
