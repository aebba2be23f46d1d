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

``edgeseg derive pairs --day SPEC --night SPEC -o DIR [--min-inlier-rate R]`` pairs each
night frame with a day frame of another dataset that has no aligned pairs (CamVid day
vs dusk): a cheap global descriptor (`edgeseg.data.align.global_descriptor`) retrieves
the ``--top-k`` most similar day frames, the one whose homography has the most RANSAC
inliers wins, and a pair passes when that homography is ok (enough inliers, not
degenerate) with an inlier rate >= R. A control pairs every night frame with a random
day frame outside its candidates: its inlier rates are what chance gives, so R should
lie above them (both distributions are in the manifest and printed). The folder holds
``DIR/manifest.json`` (each pair: night and day name and file, similarity, inliers,
inlier rate, ok, passed, matrix; the control; the summary), ``DIR/splits/pairs.txt``
(passed night names) and ``DIR/splits/all.txt``; a recipe reads it as
``derived_pairs:DIR`` (`edgeseg.data.align.DerivedPairs`). Images are not copied: the
manifest names the dataset files.

Both checkpoint commands: ``DIR/preview/<name>.png`` for the first ``--preview`` images (original
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
from edgeseg.data.align import (
    DERIVE_FORMAT,
    FEATURES,
    Alignment,
    AlignSettings,
    Features,
    detect_features,
    global_descriptor,
    match_features,
    work_size,
)
from edgeseg.data.base import DatasetSpec, read_image, read_label
from edgeseg.errors import EdgesegError
from edgeseg.fileio import check_writable_dir, sha256_file, write_image, write_json, write_text
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

FORMAT = DERIVE_FORMAT
MANIFEST = "manifest.json"
PARAMS = "params.json"
PREVIEW = "preview"
DEFAULT_THRESHOLD = 0.9
DEFAULT_PREVIEW = 8
#: derive pairs: the inlier rate a pair needs besides the homography's own checks (at least
#: AlignSettings.min_inliers inliers). On CamVid, random day frames (the control) reach
#: 4-6 inliers of 2-17 matches, so any rate up to 1.0, but never 15 inliers; true
#: neighbouring frames reach 19-716 inliers at rates 0.71-0.99. The count separates them;
#: the rate only drops large, loose fits.
DEFAULT_MIN_INLIER_RATE = 0.5
DEFAULT_TOP_K = 5
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


# --- pairs by retrieval --------------------------------------------------------------------


def _image_files(dataset: SegDataset, spec: str) -> list[tuple[str, Path]]:
    """(name, image file) of every sample: pairing reads images only, never labels."""
    items = getattr(dataset, "items", None)
    if not items or len(items) != len(dataset) or not all(hasattr(it, "image") for it in items):
        raise DeriveError(f"{spec}: derive pairs needs a dataset read from image files "
                          "(a NAME:ROOT[:SPLIT] of a folder reader)")
    return [(str(it.name), Path(it.image)) for it in items]


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    v = np.asarray(values, np.float64)
    return {k: round(float(np.quantile(v, q)), 4) for k, q in
            (("min", 0.0), ("p25", 0.25), ("median", 0.5), ("p75", 0.75), ("p95", 0.95),
             ("max", 1.0))}


def _entry(alignment: Alignment) -> dict[str, Any]:
    return {"ok": alignment.ok, "inliers": alignment.inliers, "matches": alignment.matches,
            "inlier_rate": round(alignment.inlier_rate, 4), "reason": alignment.reason}


def pairs(day: str, night: str, out: str | Path, *,
          min_inlier_rate: float = DEFAULT_MIN_INLIER_RATE, features: str = "orb",
          min_inliers: int = AlignSettings.min_inliers, top_k: int = DEFAULT_TOP_K,
          seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Pair every night frame of ``night`` with its most similar day frame of ``day`` and
    write the pairs folder ``out``; returns the manifest."""
    if not 0.0 <= min_inlier_rate <= 1.0:
        raise DeriveError(f"--min-inlier-rate {min_inlier_rate}: expected a rate in [0, 1]")
    if top_k < 1:
        raise DeriveError(f"--top-k {top_k}: expected at least 1")
    settings = AlignSettings(features=features, min_inliers=min_inliers)
    out = Path(out)
    day_set, night_set = open_dataset(day), open_dataset(night)
    day_files, night_files = _image_files(day_set, day), _image_files(night_set, night)
    if len(day_files) < 2:
        raise DeriveError(f"{day}: {len(day_files)} day frame(s); pairing needs at least 2 "
                          "(one candidate and one control)")
    params = {"command": "pairs", "day": normalise_spec(day), "night": normalise_spec(night),
              "min_inlier_rate": min_inlier_rate, "top_k": top_k, "seed": seed,
              "settings": settings.to_dict()}
    _claim(out, params)
    with _progress(len(day_files), "derive pairs: day descriptors", progress) as bar:
        descriptors = []
        for _, path in day_files:
            descriptors.append(global_descriptor(read_image(path), settings))
            bar.update(1)
    table = np.stack(descriptors)
    day_features: dict[tuple[int, tuple[int, int]], Features] = {}

    def features_of(index: int, size: tuple[int, int]) -> Features:
        key = (index, size)
        if key not in day_features:
            day_features[key] = detect_features(read_image(day_files[index][1]), size, settings)
        return day_features[key]

    rng = np.random.default_rng(seed)
    found, control = [], []
    with _progress(len(night_files), "derive pairs: matching", progress) as bar:
        for name, path in night_files:
            image = read_image(path)
            similarity = table @ global_descriptor(image, settings)
            candidates = [int(j) for j in np.argsort(-similarity, kind="stable")[:top_k]]
            size = work_size(image.shape[:2], settings.max_side)
            night_features = detect_features(image, size, settings)
            tried = [(match_features(night_features, features_of(j, size), settings), rank, j)
                     for rank, j in enumerate(candidates)]
            best, rank, j = max(tried, key=lambda t: (t[0].ok, t[0].inliers, -t[1]))
            passed = best.ok and best.inlier_rate >= min_inlier_rate
            found.append({"night": name, "day": day_files[j][0], "night_path": str(path.resolve()),
                          "day_path": str(day_files[j][1].resolve()),
                          "similarity": round(float(similarity[j]), 4), "rank": rank,
                          **_entry(best), "passed": passed,
                          "matrix": best.matrix.tolist()})
            others = [k for k in range(len(day_files)) if k not in candidates] or \
                [k for k in range(len(day_files)) if k != j]
            k = int(others[int(rng.integers(len(others)))])
            wrong = match_features(night_features, features_of(k, size), settings)
            control.append({"night": name, "day": day_files[k][0], **_entry(wrong)})
            bar.update(1)
    passed = [p["night"] for p in found if p["passed"]]
    write_text(out / "splits" / "pairs.txt", "".join(f"{n}\n" for n in passed))
    write_text(out / "splits" / "all.txt", "".join(f"{p['night']}\n" for p in found))
    summary = {
        "passed": len(passed), "count": len(found),
        "best_inlier_rate": _quantiles([p["inlier_rate"] for p in found]),
        "best_inliers": _quantiles([p["inliers"] for p in found]),
        "control_inlier_rate": _quantiles([c["inlier_rate"] for c in control]),
        "control_inliers": _quantiles([c["inliers"] for c in control]),
        "control_ok": sum(c["ok"] for c in control),
        "control_passing": sum(c["ok"] and c["inlier_rate"] >= min_inlier_rate
                               for c in control),
    }
    manifest = {
        "format": FORMAT, "command": "pairs",
        "command_line": f"edgeseg derive pairs --day {day} --night {night} -o {out} "
                        f"--min-inlier-rate {min_inlier_rate} --features {features} "
                        f"--min-inliers {min_inliers} --top-k {top_k}",
        **{k: v for k, v in params.items() if k != "command"},
        "label_space": day_set.label_space.name, "count": len(found), "passed": len(passed),
        "summary": summary, "pairs": found, "control": control,
        "edgeseg_version": __version__,
    }
    write_json(out / MANIFEST, manifest)
    return manifest


def pairs_summary(manifest: dict[str, Any]) -> str:
    """The printed summary of a pairs manifest: how many passed, both distributions."""
    s = manifest["summary"]

    def dist(q: dict[str, float], digits: int) -> str:
        return (f"median {q['median']:.{digits}f}, p95 {q['p95']:.{digits}f}, max "
                f"{q['max']:.{digits}f}" if q else "none")

    return (f"{s['passed']} of {s['count']} night frames paired with a day frame (homography "
            f"ok: >= {manifest['settings']['min_inliers']} inliers, not degenerate; inlier "
            f"rate >= {manifest['min_inlier_rate']}); best match: inliers "
            f"{dist(s['best_inliers'], 0)}, inlier rate {dist(s['best_inlier_rate'], 2)}; "
            f"control (random day frames): inliers {dist(s['control_inliers'], 0)}, inlier "
            f"rate {dist(s['control_inlier_rate'], 2)}; {s['control_passing']} of "
            f"{s['count']} control pairs would pass")


# --- the command ---------------------------------------------------------------------------


def _threshold(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from edgeseg.argtypes import add_device_argument, non_negative_int, positive_int

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
    r = sub.add_parser("pairs", allow_abbrev=False,
                       help="pair night frames with day frames of another dataset "
                            "(retrieval + homography)",
                       description="For each night frame retrieve the most similar day frames "
                                   "(global gradient descriptor), keep the one whose "
                                   "homography has the most RANSAC inliers, and write a "
                                   "folder a recipe reads as derived_pairs:DIR. A control "
                                   "with random day frames shows what chance gives.")
    r.add_argument("--day", required=True, metavar="SPEC",
                   help="day frames, e.g. camvid:/data/camvid:day_train")
    r.add_argument("--night", required=True, metavar="SPEC",
                   help="night/dusk frames, e.g. camvid:/data/camvid:dusk_train")
    r.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    r.add_argument("--min-inlier-rate", type=_threshold, default=DEFAULT_MIN_INLIER_RATE,
                   metavar="R", help="inlier rate a pair needs besides --min-inliers "
                                     f"(default {DEFAULT_MIN_INLIER_RATE}); the manifest's "
                                     "control shows what random day frames reach")
    r.add_argument("--features", choices=FEATURES, default="orb",
                   help="features the homography is estimated from (default orb)")
    r.add_argument("--min-inliers", type=positive_int, default=AlignSettings.min_inliers,
                   metavar="N", help="RANSAC inliers a homography needs (default "
                                     f"{AlignSettings.min_inliers}): with fewer, chance "
                                     "matches reach any inlier rate")
    r.add_argument("--top-k", type=positive_int, default=DEFAULT_TOP_K, metavar="K",
                   help=f"day candidates re-ranked by inliers (default {DEFAULT_TOP_K})")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from edgeseg.argtypes import torch_device

    if args.what == "pairs":
        manifest = pairs(args.day, args.night, args.output,
                         min_inlier_rate=args.min_inlier_rate, features=args.features,
                         min_inliers=args.min_inliers, top_k=args.top_k,
                         progress=not args.no_progress)
        print(f"{pairs_summary(manifest)}; wrote {args.output} (read it as "
              f"derived_pairs:{args.output})")
        return 0
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
