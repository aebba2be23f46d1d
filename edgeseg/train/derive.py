"""``edgeseg derive``: datasets made by a checkpoint's networks.

``edgeseg derive translate CKPT --network NAME --data SPEC -o DIR`` runs every image of
SPEC through an image network of CKPT (a translator or prenet, e.g. ``gen_s2t``) and
writes a translated copy of the dataset that ``open_dataset`` reads; labels are copied
unchanged (the same class ids), so a translated source stays a labelled dataset. The
layout follows the dataset's label space (the manifest's ``output_spec`` names it):

- Cityscapes-19 datasets -> the Cityscapes layout, ``cityscapes:DIR:SPLIT``:
  ``DIR/leftImg8bit/SPLIT/derived/<name>_leftImg8bit.png`` and
  ``DIR/gtFine/SPLIT/derived/<name>_gtFine_labelIds.png`` (trainIds written as the
  labelIds the reader maps back to them; ignore as labelId 0);
- CamVid-11 datasets -> the CamVid folder layout, ``camvid:DIR:SPLIT``:
  ``DIR/images/SPLIT/<name>.png`` and ``DIR/labels/SPLIT/<name>.png`` (ignore as 11).

SPLIT is the input spec's split (``train`` without one). Only ``image`` of each sample
is translated (the day image of a pairs dataset).

``edgeseg derive pseudo-label CKPT --data SPEC -o DIR [--threshold 0.9]`` runs the
checkpoint's deployed segmenter (what ``load_model`` rebuilds: an EMA teacher, pre-nets,
class bias included) on every image at its own size and writes, per image:

- ``DIR/labels/<name>.png``: uint8 argmax class ids in the checkpoint's label space,
  255 (ignore) where the top softmax probability p is below the threshold (compared
  in float, before any rounding);
- ``DIR/confidence/<name>.png``: uint8 ``round(255 * p)`` (round half to even), so
  ``confidence / 255`` is p to within 1/510.

A training stream reads them with ``data.streams.NAME.pseudo_labels: DIR`` (see
`open_pseudo_labels`). ``<name>`` is the sample's name (characters other than letters,
digits, ``.``, ``_``, ``-`` become ``_``; a repeated name gets ``_<index>``).

Both commands: ``DIR/preview/<name>.png`` for the first ``--preview`` images (original
| translated, or original | colourised pseudo-labels), ``DIR/params.json`` (what the
folder is being derived with, written first: a re-run with other settings is
refused) and ``DIR/manifest.json``, written last: format, command, the command line,
checkpoint path and sha256, network, dataset spec, label space, threshold, count,
sample names, output layout/spec and edgeseg version. Every file is written atomically,
so a file that exists is complete: a re-run after Ctrl-C, a kill or a full disk skips
what is there and writes only what is missing.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg import __version__
from edgeseg.data import DatasetError, SegDataset, open_dataset, parse_spec
from edgeseg.data.base import DatasetSpec, read_image, read_label
from edgeseg.errors import EdgesegError
from edgeseg.fileio import check_writable_dir, sha256_file, write_image, write_json
from edgeseg.labels import (
    CAMVID11,
    CAMVID_MAX_ID,
    CITYSCAPES19,
    CITYSCAPES_ID_TO_TRAINID,
    IGNORE_INDEX,
    colorize,
    get_label_space,
    palette_lut,
)

FORMAT = "edgeseg-derive/1"
MANIFEST = "manifest.json"
PARAMS = "params.json"
PREVIEW = "preview"
DEFAULT_THRESHOLD = 0.9
DEFAULT_PREVIEW = 8
#: roles of the networks ``translate`` runs (frame -> frame)
IMAGE_ROLES = ("translator", "prenet")


class DeriveError(EdgesegError):
    """A derive input or output folder that cannot be used as asked."""


# --- names, folders, manifests -----------------------------------------------------------


def normalise_spec(spec: str) -> str:
    """``spec`` with an absolute root, so a manifest names the same data from anywhere."""
    s = parse_spec(spec)
    return str(DatasetSpec(s.name, s.root.resolve(), s.split))


def dataset_names(dataset: SegDataset) -> list[str]:
    """Sample names in order: from the reader's items when it has them (no image read)."""
    items = getattr(dataset, "items", None)
    if items and len(items) == len(dataset) and all(hasattr(it, "name") for it in items):
        return [str(it.name) for it in items]
    return [str(dataset[i].get("name", i)) for i in range(len(dataset))]


def output_stems(names: list[str]) -> list[str]:
    """One file stem per sample: its name made file-safe, unique (``_<index>`` if repeated)."""
    stems: list[str] = []
    used: set[str] = set()
    for i, name in enumerate(names):
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".") or f"{i:06d}"
        if stem in used:
            stem = f"{stem}_{i:06d}"
        used.add(stem)
        stems.append(stem)
    return stems


def _claim(out: Path, params: dict[str, Any]) -> None:
    """Prove ``out`` writable, refuse it when it is being derived with other settings,
    and record these settings (first, so a resumed run is checked against them)."""
    check_writable_dir(out)
    path = out / PARAMS
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None
        if isinstance(old, dict) and old != params:
            diff = ", ".join(f"{k} {old.get(k)!r} -> {params.get(k)!r}"
                             for k in sorted(set(old) | set(params)) if old.get(k) != params.get(k))
            raise DeriveError(f"{out}: holds outputs derived with other settings ({diff}); "
                              "write to another -o folder or delete this one")
        if isinstance(old, dict):
            return
    write_json(path, params)


def read_manifest(folder: str | Path, command: str) -> dict[str, Any]:
    """The manifest of a finished ``edgeseg derive COMMAND`` folder, or a one-line error."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        what = "not found" if folder.is_dir() else "not found (no such folder)"
        raise DeriveError(f"{path}: {what}; {folder} is not a finished `edgeseg derive "
                          f"{command}` output: run it (again, to finish it) with -o {folder}")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise DeriveError(f"{path}: not valid JSON ({exc}); re-run edgeseg derive {command} "
                          f"-o {folder}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DeriveError(f"{path}: not an edgeseg derive manifest (expected format {FORMAT})")
    if manifest.get("command") != command:
        raise DeriveError(f"{path}: written by `edgeseg derive {manifest.get('command')}`, "
                          f"expected `edgeseg derive {command}` output")
    return manifest


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="image", dynamic_ncols=True, disable=not enabled)


def _side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Two RGB images of the same height, with a 4-pixel white gap."""
    gap = np.full((left.shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([left, gap, right], axis=1)


def _count(dataset: SegDataset, max_images: int) -> int:
    n = len(dataset)
    return n if max_images <= 0 else min(n, max_images)


# --- translate -----------------------------------------------------------------------------


class _Layout:
    """Where a translated sample's image and label go, in a layout a reader reads."""

    def __init__(self, out: Path, space_name: str, split: str) -> None:
        self.split = split
        if space_name == CITYSCAPES19.name:
            self.name = "cityscapes"
            self.images = out / "leftImg8bit" / split / "derived"
            self.labels = out / "gtFine" / split / "derived"
            self.image_suffix, self.label_suffix = "_leftImg8bit.png", "_gtFine_labelIds.png"
            lut = np.zeros(256, np.uint8)  # trainId -> labelId; ignore -> 0 (unlabeled)
            for label_id, train_id in CITYSCAPES_ID_TO_TRAINID.items():
                lut[train_id] = label_id
        elif space_name == CAMVID11.name:
            self.name = "camvid"
            self.images, self.labels = out / "images" / split, out / "labels" / split
            self.image_suffix = self.label_suffix = ".png"
            lut = np.full(256, CAMVID_MAX_ID, np.uint8)  # ignore -> 11 (unlabelled)
            lut[: CAMVID11.num_classes] = np.arange(CAMVID11.num_classes)
        else:
            raise DeriveError(f"translate writes cityscapes19 or camvid11 datasets; this one is "
                              f"in {space_name}")
        self.lut = lut
        self.spec = f"{self.name}:{out.resolve()}:{split}"

    def image(self, stem: str) -> Path:
        return self.images / f"{stem}{self.image_suffix}"

    def label(self, stem: str) -> Path:
        return self.labels / f"{stem}{self.label_suffix}"

    def encode(self, label: np.ndarray) -> np.ndarray:
        return self.lut[label]


def image_network(checkpoint: str | Path, network: str, device: str = "cpu") -> Any:
    """The `TorchTranslator` of image network ``network`` of ``checkpoint``, with errors
    naming the checkpoint and its image networks."""
    from edgeseg.train.checkpoint import load_checkpoint, load_network, network_names, network_spec
    from edgeseg.train.predict import TorchTranslator, image_range

    ckpt = load_checkpoint(checkpoint)
    spec = network_spec(ckpt, network, checkpoint)
    if spec.role not in IMAGE_ROLES:
        roles = {n: network_spec(ckpt, n, checkpoint).role for n in network_names(ckpt)}
        images = [n for n, r in roles.items() if r in IMAGE_ROLES]
        raise DeriveError(
            f"{checkpoint}: network {network!r} is a {spec.role or 'training-only'} network, "
            "not an image network; translate runs a translator or prenet: "
            + (f"use --network {' or '.join(images)}" if images else
               f"this checkpoint has none (its networks: {sorted(roles)})"))
    net, _ = load_network(ckpt, network, checkpoint)
    mean, std = image_range(spec.role, ckpt)
    return TorchTranslator(net, mean, std, device)


def translate(checkpoint: str | Path, network: str, data: str, out: str | Path, *,
              device: str = "cpu", max_images: int = 0, preview: int = DEFAULT_PREVIEW,
              progress: bool = True) -> dict[str, Any]:
    """Write the translated copy of dataset ``data`` into ``out``; returns the manifest."""
    out = Path(out)
    translator = image_network(checkpoint, network, device)
    dataset = open_dataset(data)
    split = parse_spec(data).split or "train"
    layout = _Layout(out, dataset.label_space.name, split)
    check_writable_dir(out)
    params = {"command": "translate", "checkpoint_sha256": sha256_file(checkpoint),
              "network": network, "data": normalise_spec(data)}
    _claim(out, params)
    n = _count(dataset, max_images)
    names = dataset_names(dataset)[:n]
    stems = output_stems(names)
    labelled = dataset.has_labels
    written = 0
    with _progress(n, "derive translate", progress) as bar:
        for i, stem in enumerate(stems):
            image_path, label_path = layout.image(stem), layout.label(stem)
            preview_path = out / PREVIEW / f"{stem}.png" if i < preview else None
            todo = [p for p in (image_path, label_path if labelled else None, preview_path)
                    if p is not None and not p.is_file()]
            if todo:
                sample = dataset[i]
                translated = None
                if not image_path.is_file():
                    translated = translator(np.ascontiguousarray(sample["image"][..., ::-1]))
                    write_image(image_path, translated, rgb=False)
                    written += 1
                if labelled and sample.get("label") is not None and not label_path.is_file():
                    write_image(label_path, layout.encode(sample["label"]), rgb=False)
                    written += 1
                if preview_path is not None and not preview_path.is_file():
                    rgb = (translated[..., ::-1] if translated is not None
                           else read_image(image_path))
                    write_image(preview_path, _side_by_side(sample["image"], rgb))
                    written += 1
            bar.update(1)
    manifest = _manifest(
        "translate", checkpoint, network, data, params, names,
        f"edgeseg derive translate {checkpoint} --network {network} --data {data} -o {out}",
        written, label_space=dataset.label_space.name, output_layout=layout.name,
        output_spec=layout.spec, labelled=labelled)
    write_json(out / MANIFEST, manifest)
    return manifest


def _manifest(command: str, checkpoint: str | Path, network: str, data: str,
              params: dict[str, Any], names: list[str], command_line: str, written: int,
              **extra: Any) -> dict[str, Any]:
    return {
        "format": FORMAT, "command": command, "command_line": command_line,
        "checkpoint": str(Path(checkpoint).resolve()),
        "checkpoint_sha256": params["checkpoint_sha256"], "network": network,
        "data": params["data"], "data_as_given": data, **extra,
        "threshold": params.get("threshold"), "count": len(names), "names": names,
        "written": written, "edgeseg_version": __version__,
    }


# --- pseudo-labels ------------------------------------------------------------------------


def pseudo_label_of(logits: Any, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(label, confidence) uint8 maps of (1, C, H, W) logits: argmax ids with 255 where the
    top softmax probability is below ``threshold``, and ``round(255 * p)``."""
    import torch

    prob = torch.softmax(logits.float(), dim=1)[0]
    p, cls = prob.max(0)
    label = cls.to(torch.uint8)
    label[p < threshold] = IGNORE_INDEX
    confidence = torch.round(p * 255.0).to(torch.uint8)
    return label.cpu().numpy(), confidence.cpu().numpy()


def pseudo_label(checkpoint: str | Path, data: str, out: str | Path, *,
                 threshold: float = DEFAULT_THRESHOLD, device: str = "cpu",
                 max_images: int = 0, preview: int = DEFAULT_PREVIEW,
                 progress: bool = True) -> dict[str, Any]:
    """Write pseudo-labels and confidences of dataset ``data`` into ``out``; returns the
    manifest."""
    from edgeseg.train.predict import TorchPredictor

    if not 0.0 <= threshold <= 1.0:
        raise DeriveError(f"--threshold {threshold}: expected a probability in [0, 1]")
    out = Path(out)
    predictor, ckpt = TorchPredictor.from_checkpoint(str(checkpoint), device)
    space = get_label_space(str(ckpt["label_space"]))
    dataset = open_dataset(data)
    check_writable_dir(out)
    params = {"command": "pseudo-label", "checkpoint_sha256": sha256_file(checkpoint),
              "network": "deployed", "data": normalise_spec(data), "threshold": threshold}
    _claim(out, params)
    n = _count(dataset, max_images)
    names = dataset_names(dataset)[:n]
    stems = output_stems(names)
    lut = palette_lut(space.palette)
    written = 0
    with _progress(n, "derive pseudo-label", progress) as bar:
        for i, stem in enumerate(stems):
            label_path, conf_path = pseudo_label_paths(out, stem)
            preview_path = out / PREVIEW / f"{stem}.png" if i < preview else None
            todo = [p for p in (label_path, conf_path, preview_path)
                    if p is not None and not p.is_file()]
            if todo:
                image = dataset[i]["image"]
                label = None
                if not label_path.is_file() or not conf_path.is_file():
                    logits = predictor.logits(image)
                    if tuple(logits.shape[-2:]) != image.shape[:2]:
                        raise DeriveError(f"{checkpoint}: logits of {tuple(logits.shape)} for "
                                          f"an image of {image.shape[:2]}; expected its size")
                    label, confidence = pseudo_label_of(logits, threshold)
                    for path, array in ((label_path, label), (conf_path, confidence)):
                        if not path.is_file():
                            write_image(path, array, rgb=False)
                            written += 1
                if preview_path is not None and not preview_path.is_file():
                    label = read_label(label_path) if label is None else label
                    write_image(preview_path, _side_by_side(image, colorize(label, lut)))
                    written += 1
            bar.update(1)
    manifest = _manifest(
        "pseudo-label", checkpoint, "deployed", data, params, names,
        f"edgeseg derive pseudo-label {checkpoint} --data {data} -o {out} --threshold {threshold}",
        written, label_space=space.name)
    write_json(out / MANIFEST, manifest)
    return manifest


def pseudo_label_paths(out: Path, stem: str) -> tuple[Path, Path]:
    """(label, confidence) files of one sample in a pseudo-label folder."""
    return out / "labels" / f"{stem}.png", out / "confidence" / f"{stem}.png"


class PseudoLabelled:
    """A reader whose ``label`` comes from a pseudo-label folder, with ``confidence``
    ((H, W) float32 in [0, 1]); its own labels are never read."""

    def __init__(self, reader: Any, folder: Path, manifest: dict[str, Any]) -> None:
        self.reader = reader
        self.root = reader.root
        self.label_space = get_label_space(manifest["label_space"])
        self.folder = folder
        self.names = list(manifest["names"])
        self.stems = output_stems(self.names)

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = dict(self.reader[index])
        name = str(sample.get("name", index))
        if name != self.names[index]:
            raise DatasetError(
                f"{self.folder}: pseudo-label {index} was made for image {self.names[index]!r}, "
                f"the dataset's image {index} is {name!r}; the dataset changed since: derive "
                f"the pseudo-labels again into another folder")
        label_path, conf_path = pseudo_label_paths(self.folder, self.stems[index])
        label = read_label(label_path)
        confidence = read_label(conf_path)
        size = sample["image"].shape[:2]
        for path, array in ((label_path, label), (conf_path, confidence)):
            if array.shape != size:
                raise DatasetError(f"{path}: size {array.shape[1]}x{array.shape[0]} differs from "
                                   f"its image {name} ({size[1]}x{size[0]}); derive again")
        sample["label"] = label
        sample["confidence"] = confidence.astype(np.float32) / 255.0
        return sample


def open_pseudo_labels(folder: str | Path, reader: Any, spec: str, label_space: str,
                       where: str) -> tuple[PseudoLabelled, dict[str, Any]]:
    """``reader`` (opened from ``spec``) with the labels of pseudo-label folder ``folder``;
    the folder must be a finished derive of the same dataset in ``label_space``. ``where``
    names the recipe key in errors. Returns the reader and the folder's manifest."""
    folder = Path(folder)
    manifest = read_manifest(folder, "pseudo-label")
    fix = (f"derive them for it: edgeseg derive pseudo-label CKPT --data {spec} -o "
           "ANOTHER_DIR, and name that folder")
    ours = normalise_spec(spec)
    if manifest.get("data") != ours:
        raise DeriveError(f"{folder} ({where}): pseudo-labels of {manifest.get('data')}, but the "
                          f"stream reads {ours}; {fix}")
    count = manifest.get("count")
    if count != len(reader):
        raise DeriveError(f"{folder} ({where}): pseudo-labels of {count} images, but "
                          f"{spec} has {len(reader)} (derived with --max-frames, or the "
                          f"dataset changed); {fix}")
    names = manifest.get("names")
    if not isinstance(names, list) or names != dataset_names(reader):
        raise DeriveError(f"{folder} ({where}): its image names differ from those of {spec} "
                          f"(the dataset changed since); {fix}")
    if manifest.get("label_space") != label_space:
        raise DeriveError(f"{folder} ({where}): pseudo-labels in {manifest.get('label_space')} "
                          f"(the checkpoint's label space), the recipe trains in {label_space}; "
                          f"derive them with a {label_space} checkpoint")
    return PseudoLabelled(reader, folder, manifest), manifest


# --- the command ---------------------------------------------------------------------------


def _threshold(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from edgeseg.argtypes import add_device_argument, non_negative_int

    sub = parser.add_subparsers(dest="what", required=True, metavar="WHAT")
    t = sub.add_parser("translate", allow_abbrev=False,
                       help="a translated copy of a dataset (labels copied unchanged)",
                       description="Run every image of a dataset through an image network "
                                   "(translator or prenet) of a checkpoint; labels are "
                                   "copied, so the copy trains like the original.")
    p = sub.add_parser("pseudo-label", allow_abbrev=False,
                       help="pseudo-labels and confidences of a dataset from a checkpoint",
                       description="Run the checkpoint's deployed segmenter on every image: "
                                   "label PNGs (255 where the top softmax probability is below "
                                   "--threshold) and confidence PNGs (round(255 p)); a stream "
                                   "reads them with data.streams.NAME.pseudo_labels: DIR.")
    for q in (t, p):
        q.add_argument("checkpoint", help="a training checkpoint (runs/<name>/last.pt, best.pt)")
        if q is t:
            q.add_argument("--network", required=True, metavar="NAME",
                           help="the image network to run, e.g. gen_s2t")
        q.add_argument("--data", required=True, metavar="SPEC",
                       help="dataset NAME:ROOT[:SPLIT], e.g. synthetic:data/synth:day_train")
        q.add_argument("-o", "--output", required=True, metavar="DIR",
                       help="output folder (a re-run finishes what is missing)")
        if q is p:
            q.add_argument("--threshold", type=_threshold, default=DEFAULT_THRESHOLD,
                           metavar="P", help="ignore (255) pixels whose top softmax probability "
                                             f"is below P (default {DEFAULT_THRESHOLD})")
        q.add_argument("--preview", type=non_negative_int, default=DEFAULT_PREVIEW, metavar="N",
                       help=f"side-by-side previews of the first N images in DIR/{PREVIEW} "
                            f"(default {DEFAULT_PREVIEW})")
        q.add_argument("--max-frames", type=non_negative_int, default=0, metavar="N",
                       help="only the first N images (default 0 = all)")
        add_device_argument(q, "where the network runs (default auto)")
        q.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from edgeseg.argtypes import torch_device

    device = torch_device(args.device)
    common = {"device": device, "max_images": args.max_frames, "preview": args.preview,
              "progress": not args.no_progress}
    if args.what == "translate":
        manifest = translate(args.checkpoint, args.network, args.data, args.output, **common)
        print(f"wrote {manifest['count']} translated images to {args.output} (read it as "
              f"{manifest['output_spec']})")
    else:
        manifest = pseudo_label(args.checkpoint, args.data, args.output,
                                threshold=args.threshold, **common)
        print(f"wrote pseudo-labels of {manifest['count']} images to {args.output} (train on "
              f"them with data.streams.NAME.pseudo_labels: {args.output})")
    return 0
