"""Resumable, seeded data streams for the trainer.

Every UDA method consumes several streams at once (labelled source, unlabelled
target, aligned pairs). Each stream is an endless sequence of batches whose
content depends only on (seed, epoch, position): augmentation uses a per-sample
numpy generator seeded from (seed, epoch, index) and the shuffle order comes
from (seed, epoch). So ``--resume`` restarts each stream at the exact batch
where it stopped, with any number of loader workers, and N+M iterations equal
N, resume, M.
"""

from __future__ import annotations

import atexit
import signal
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from edgeseg.data.base import DatasetError, SegDataset
from edgeseg.data.transforms import FLOAT_MAP, IMAGE, LABEL, kind_of, to_chw_float
from edgeseg.errors import EdgesegError

#: signals a user, ``timeout``, systemd or SLURM send to the whole process group
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """Loader worker init: ignore SIGINT/SIGTERM so only the trainer reacts (finishes
    the iteration and saves); torch's worker handler would die on a group SIGTERM
    and take the run down before the checkpoint is written."""
    del worker_id
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _start_workers(loader: DataLoader) -> Iterator:
    """``iter(loader)`` with stop signals held back while workers fork: a signal in the
    window before `ignore_stop_signals` runs stays pending and is then ignored there,
    and is delivered to the trainer once the workers are running."""
    if loader.num_workers == 0:
        return iter(loader)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        it = iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    _WORKERS.update(getattr(it, "_workers", ()))
    return it


def worker_error(exc: EdgesegError) -> EdgesegError:
    """The user's error a loader worker raised, as its own one line: torch re-raises it
    with the worker's whole traceback pasted into the message."""
    text = str(exc)
    if "Original Traceback" not in text:
        return exc
    cls = type(exc)
    marker = f"{cls.__module__}.{cls.__qualname__}: "
    if marker in text:
        text = text.rpartition(marker)[2].rstrip()
    return cls(text)


#: every loader worker process started here, for `_kill_workers_at_exit`
_WORKERS: weakref.WeakSet[Any] = weakref.WeakSet()


def _stop_workers(it: Iterator | None) -> None:
    """Stop a loader iterator's workers now, by torch's own path (as its ``__del__`` does,
    but at a known time: from the garbage collector that path can leave them running)."""
    shutdown = getattr(it, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def _kill_workers_at_exit() -> None:
    """At interpreter exit, kill the loader workers still running (a stream nobody closed,
    or an iterator the garbage collector freed). They ignore SIGTERM, which is all
    multiprocessing's exit hook sends before it waits for them forever; registered after
    that hook, this runs first. They hold nothing but prefetched batches."""
    left = [w for w in list(_WORKERS) if w.is_alive()]
    if not left:
        return
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler raises for a killed worker
    for w in left:
        w.kill()
    for w in left:
        w.join(timeout=5)


atexit.register(_kill_workers_at_exit)


class ResumableDistributedSampler(DistributedSampler):
    """A DistributedSampler that yields ``(epoch, index)`` and can start mid-epoch.

    The epoch travels with the index so the dataset can seed its augmentation
    per sample; ``start`` skips the samples this rank already consumed.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True,
                         seed=seed, drop_last=True)
        self.start = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())
        for index in indices[self.start:]:
            yield (self.epoch, index)

    def __len__(self) -> int:
        return self.num_samples - self.start


class AugmentedDataset(Dataset):
    """Wraps a reader: applies ``transform(sample, rng)`` and converts to tensors by kind
    (`edgeseg.data.transforms.kind_of`): images -> normalised (3, H, W) float32, labels
    and masks -> (H, W) int64, float maps -> (H, W) float32, other arrays -> tensors of
    their own dtype and shape; ``crop_box`` (float32, 6) only with ``crop_box=True``.
    Values that are not arrays (the name, a None label) are dropped: a batch holds
    tensors only, so an unlabelled stream's batch has no ``label`` at all."""

    def __init__(self, reader: SegDataset, transform: Callable[[dict, np.random.Generator], dict],
                 mean: tuple[float, ...], std: tuple[float, ...], seed: int,
                 crop_box: bool = False) -> None:
        self.reader = reader
        self.transform = transform
        self.mean = mean
        self.std = std
        self.seed = seed
        self.crop_box = crop_box

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        rng = np.random.default_rng([self.seed, epoch, index])
        sample = self.transform(self.reader[index], rng)
        out: dict[str, Any] = {}
        for name, value in sample.items():
            kind = kind_of(name, value)
            if kind is None or (name == "crop_box" and not self.crop_box):
                continue
            if kind == IMAGE:
                out[name] = torch.from_numpy(to_chw_float(value, self.mean, self.std))
            elif kind == LABEL:
                out[name] = torch.from_numpy(np.ascontiguousarray(value).astype(np.int64))
            elif kind == FLOAT_MAP:
                out[name] = torch.from_numpy(np.ascontiguousarray(value, np.float32))
            else:
                out[name] = torch.from_numpy(np.array(value))
        return out


class Stream:
    """An endless, resumable batch iterator over one dataset on this rank."""

    def __init__(self, dataset: AugmentedDataset, batch_size: int, workers: int, rank: int,
                 world_size: int, seed: int, name: str = "") -> None:
        if len(dataset) < batch_size * world_size:
            key = f"data.streams.{name}.batch_size or " if name else ""
            raise DatasetError(
                f"dataset {dataset.reader.root} has {len(dataset)} samples, fewer than one "
                f"batch ({batch_size} x {world_size} ranks); lower {key}data.batch_size"
            )
        self.sampler = ResumableDistributedSampler(dataset, world_size, rank, seed)
        self.loader = DataLoader(
            dataset, batch_size=batch_size, sampler=self.sampler, num_workers=workers,
            drop_last=True, pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
            worker_init_fn=ignore_stop_signals if workers > 0 else None,
            # A private generator: creating an iterator must not consume the
            # global torch RNG, or resuming would change dropout draws.
            generator=torch.Generator(),
        )
        self.batch_size = batch_size
        self.epoch = 0
        self.position = 0  # batches consumed in this epoch
        self._it: Iterator | None = None

    def _restart(self) -> None:
        self.sampler.set_epoch(self.epoch)
        self.sampler.start = self.position * self.batch_size
        self._it = _start_workers(self.loader)

    def close(self) -> None:
        """Stop the loader workers now (they ignore SIGTERM, so nothing else stops them
        while this process lives). Batches they prefetched are dropped; the next batch
        restarts them at the same position, so closing never changes what is drawn."""
        it, self._it = self._it, None
        _stop_workers(it)

    def __next__(self) -> dict[str, torch.Tensor]:
        try:
            return self._next()
        except EdgesegError as exc:
            self.close()  # the iterator is spent; its traceback would keep the workers alive
            raise worker_error(exc) from None

    def _next(self) -> dict[str, torch.Tensor]:
        if self._it is None:
            self._restart()
        try:
            batch = next(self._it)
        except StopIteration:
            self.epoch += 1
            self.position = 0
            self._restart()
            batch = next(self._it)
        self.position += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._it = None


class MultiStream:
    """Draws one batch from each named stream per iteration: ``{'source': ..., 'target': ...}``.

    ``provenance`` says where each stream's data came from: ``{name: {"data": spec,
    "pseudo_labels": folder or None, "checkpoint": the checkpoint that made them,
    "checkpoint_sha256": its hash}}`` (plain values, to store in a checkpoint)."""

    def __init__(self, streams: dict[str, Stream],
                 provenance: dict[str, dict[str, Any]] | None = None) -> None:
        self.streams = streams
        self.provenance = provenance or {}

    def __next__(self) -> dict[str, dict[str, torch.Tensor]]:
        return {name: next(s) for name, s in self.streams.items()}

    def state_dict(self) -> dict[str, dict[str, int]]:
        return {name: s.state_dict() for name, s in self.streams.items()}

    def close(self) -> None:
        """Stop every stream's loader workers (see `Stream.close`)."""
        for s in self.streams.values():
            s.close()

    def load_state_dict(self, state: dict[str, dict[str, int]]) -> None:
        for name, s in self.streams.items():
            if name in state:
                s.load_state_dict(state[name])
