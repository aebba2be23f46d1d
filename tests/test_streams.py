"""Data streams: per-stream settings over the global ones, labels only where the method
allows them, extra per-sample arrays (int maps, float maps, non-spatial arrays) and the
crop geometry through augmentation and the loader."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from edgeseg.config import ConfigError, Recipe, from_dict
from edgeseg.data import DatasetError, open_dataset
from edgeseg.data.transforms import TrainTransform
from edgeseg.labels import CITYSCAPES_TO_CAMVID, get_label_space
from edgeseg.train.distributed import DistInfo
from edgeseg.train.loader import AugmentedDataset, Stream
from edgeseg.train.streams import build_streams
from edgeseg.train.trainer import Trainer
from tests import dataset_fixtures as fx
from tests.conftest import tiny_recipe

CS19 = get_label_space("cityscapes19")


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 day/night training scenes, 2 val scenes per domain and 4 day/night pairs at 64x32."""
    from edgeseg.data.synth.cli import add_arguments, run

    out = tmp_path_factory.mktemp("synth_pairs")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args(["--out", str(out), "--train", "8", "--val", "2", "--pairs",
                                  "4", "--size", "64x32", "--domains", "day,night",
                                  "--seed", "5"])) == 0
    return out


class Probe:
    """What build_streams needs of a method: its streams and which of them are labelled."""

    def __init__(self, streams: tuple[str, ...], labelled: tuple[str, ...] = ("source",),
                 wants_crop_box: bool = False) -> None:
        self.streams = streams
        self.labelled_streams = labelled
        self.wants_crop_box = wants_crop_box


def _recipe(synth: Path, tmp: Path, **data: Any) -> Recipe:
    rec = tiny_recipe(synth, tmp)
    rec["data"].update(data)
    return from_dict(Recipe, rec)


def _build(recipe: Recipe, method: Probe, space: str = "cityscapes19"):  # noqa: ANN202
    return build_streams(recipe, method, get_label_space(space),  # type: ignore[arg-type]
                         DistInfo())


# --- per-stream settings ------------------------------------------------------------------


def test_per_stream_crop_and_batch_size_with_global_fallback(synth: Path, tmp_path: Path) -> None:
    recipe = _recipe(synth, tmp_path, target=f"synthetic:{synth}:night_train",
                     pairs=f"synthetic_pairs:{synth}", crop=[32, 48], batch_size=2, flip=False,
                     streams={"target": {"crop": [16, 24], "batch_size": 3, "flip": True},
                              "pairs": {"batch_size": 1, "color_jitter": 0.0}})
    ms = _build(recipe, Probe(("source", "target", "pairs")))
    batch = next(ms)
    assert batch["source"]["image"].shape == (2, 3, 32, 48)
    assert batch["source"]["label"].shape == (2, 32, 48)
    assert batch["target"]["image"].shape == (3, 3, 16, 24)
    assert batch["pairs"]["image"].shape == (1, 3, 32, 48)
    assert batch["pairs"]["night"].shape == (1, 3, 32, 48)
    transforms = {n: s.loader.dataset.transform for n, s in ms.streams.items()}
    assert (transforms["source"].crop, transforms["source"].flip) == ((32, 48), False)
    assert transforms["source"].color_jitter == transforms["target"].color_jitter == 0.1
    assert transforms["target"].scale_range == transforms["pairs"].scale_range == (0.8, 1.2)
    assert (transforms["target"].crop, transforms["target"].flip) == ((16, 24), True)
    assert (transforms["pairs"].crop, transforms["pairs"].color_jitter) == ((32, 48), 0.0)
    assert [s.batch_size for s in ms.streams.values()] == [2, 3, 1]
    # streams are seeded as before per-stream settings existed: seed + 1000 x position
    assert [s.loader.dataset.seed for s in ms.streams.values()] == [1, 1001, 2001]


def test_stream_data_key_and_shorthand(synth: Path, tmp_path: Path) -> None:
    night = f"synthetic:{synth}:night_train"
    recipe = _recipe(synth, tmp_path, streams={"target": {"data": night}})
    assert recipe.data.stream("target").data == night
    ms = _build(recipe, Probe(("source", "target")))
    assert ms.provenance["target"]["data"] == night
    with pytest.raises(ConfigError, match=r"data.target=.* and data.streams.target.data=.*keep"):
        _recipe(synth, tmp_path, target=night,
                streams={"target": {"data": f"synthetic:{synth}:day_train"}})
    with pytest.raises(ConfigError, match=r"data.streams.target.batch_size=0 is out of range"):
        _recipe(synth, tmp_path, streams={"target": {"batch_size": 0}})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) data.streams.target.crops"):
        _recipe(synth, tmp_path, streams={"target": {"crops": [16, 16]}})
    with pytest.raises(ConfigError, match="needs data.target or data.streams.target.data"):
        _build(_recipe(synth, tmp_path), Probe(("source", "target")))


def test_unknown_stream_name_is_a_one_line_error(synth: Path, tmp_path: Path) -> None:
    recipe = _recipe(synth, tmp_path, target=f"synthetic:{synth}:night_train",
                     streams={"tagret": {"crop": [16, 16]}})
    with pytest.raises(ConfigError) as err:
        _build(recipe, Probe(("source", "target")))
    text = str(err.value)
    assert "data.streams.tagret" in text and "source, target" in text and "\n" not in text


# --- labels -----------------------------------------------------------------------------


def test_target_and_pairs_labels_never_reach_the_method(synth: Path, tmp_path: Path) -> None:
    from edgeseg.train.methods import METHODS
    from edgeseg.train.methods.source_only import SourceOnly

    seen: list[dict] = []

    class ProbeMethod(SourceOnly):
        name = "probe_streams"
        streams = ("source", "target", "pairs")

        def train_step(self, batch, iteration):  # noqa: ANN001, ANN202
            seen.append({k: {n: (tuple(t.shape), t.dtype) for n, t in v.items()}
                         for k, v in batch.items()})
            return super().train_step(batch, iteration)

    METHODS[ProbeMethod.name] = ProbeMethod
    try:
        rec = tiny_recipe(synth, tmp_path, train__iterations=1)
        rec["method"] = {"name": ProbeMethod.name}
        rec["data"]["target"] = f"synthetic:{synth}:night_train"
        rec["data"]["pairs"] = f"synthetic_pairs:{synth}"  # labelled on disk
        assert Trainer(from_dict(Recipe, rec), progress=False).run() == 0
    finally:
        del METHODS[ProbeMethod.name]
    (step,) = seen
    assert sorted(step["source"]) == ["image", "label"]
    assert step["source"]["label"] == ((2, 32, 48), torch.int64)
    assert sorted(step["target"]) == ["image"]
    assert sorted(step["pairs"]) == ["image", "night"]  # both images, no label
    assert step["pairs"]["night"][0] == step["pairs"]["image"][0] == (2, 3, 32, 48)


def test_a_labelled_pairs_stream_keeps_its_labels(synth: Path, tmp_path: Path) -> None:
    recipe = _recipe(synth, tmp_path, pairs=f"synthetic_pairs:{synth}")
    batch = next(_build(recipe, Probe(("source", "pairs"), labelled=("source", "pairs"))))
    assert sorted(batch["pairs"]) == ["image", "label", "night"]
    batch = next(_build(recipe, Probe(("source", "pairs"))))
    assert sorted(batch["pairs"]) == ["image", "night"]


def test_source_labels_in_the_recipe_label_space(synth: Path, tmp_path: Path) -> None:
    spec = f"synthetic:{synth}:day_train"
    recipe = _recipe(synth, tmp_path, source=spec)
    ms = _build(recipe, Probe(("source",)), space="camvid11")
    dataset = ms.streams["source"].loader.dataset
    # the reference: the native Cityscapes-19 sample, the same augmentation, mapped by hand
    native = open_dataset(spec)
    transform = TrainTransform(crop=(32, 48), scale_range=(0.8, 1.2), color_jitter=0.1)
    lut = np.full(256, 255, np.uint8)
    for cs, camvid in CITYSCAPES_TO_CAMVID.items():
        lut[cs] = camvid
    for index in (0, 3):
        rng = np.random.default_rng([recipe.seed, 2, index])
        expected = lut[transform(native[index], rng)["label"]]
        got = dataset[(2, index)]["label"].numpy()
        assert np.array_equal(got, expected)
        assert set(np.unique(got).tolist()) <= set(range(11)) | {255}
    assert ms.provenance["source"] == {"data": spec, "pseudo_labels": None,
                                       "checkpoint": None, "checkpoint_sha256": None}


def test_a_labelled_stream_needs_labels(tmp_path: Path, synth: Path) -> None:
    root = fx.make_camvid(tmp_path / "camvid")
    recipe = _recipe(synth, tmp_path, source=f"camvid:{root}:dusk_test", label_space="camvid11")
    with pytest.raises(DatasetError, match="the source stream of method source_only needs "
                                           "labels") as err:
        _build(recipe, Probe(("source",)), space="camvid11")
    assert "\n" not in str(err.value)
    # the same unlabelled split is fine as an unlabelled stream
    recipe = _recipe(synth, tmp_path, target=f"camvid:{root}:dusk_test", batch_size=1)
    assert sorted(next(_build(recipe, Probe(("source", "target"))))["target"]) == ["image"]


# --- extra arrays and the crop geometry -----------------------------------------------------

H, W = 40, 64


def _sample() -> dict[str, Any]:
    rng = np.random.default_rng(1)
    label = np.kron(rng.integers(0, 19, (H // 8, W // 8)), np.ones((8, 8), int)).astype(np.uint8)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    return {"image": image, "label": label, "pseudo_label": label.copy(),
            "road_mask": (label == 0).astype(np.uint8),
            "confidence": (0.3 + 0.5 * np.sin(xx / 7.0) * np.cos(yy / 5.0)).astype(np.float32),
            "pose_matrix": np.array([[1.0, 0.1, 3.0], [0.0, 0.9, -2.0], [1e-4, 0.0, 1.0]]),
            "homography": np.array([[1.0, 0.02, 3.0], [0.0, 0.9, -2.0], [1e-4, 0.0, 1.0]],
                                   np.float32),
            "name": "x"}


def _geometry(seed: int, scale_range: tuple[float, float], crop: tuple[int, int]
              ) -> tuple[float, int, int, int, int, bool]:
    """The draws TrainTransform documents, replayed: scale, crop top/left, flip."""
    rng = np.random.default_rng(seed)
    factor = float(rng.uniform(*scale_range)) if scale_range != (1.0, 1.0) else 1.0
    hs, ws = max(1, round(H * factor)), max(1, round(W * factor))
    top = int(rng.integers(0, max(hs, crop[0]) - crop[0] + 1))
    left = int(rng.integers(0, max(ws, crop[1]) - crop[1] + 1))
    return factor, hs, ws, top, left, bool(rng.random() < 0.5)


def _by_hand(a: np.ndarray, hs: int, ws: int, top: int, left: int, crop: tuple[int, int],
             flipped: bool, interpolation: int, fill: float) -> np.ndarray:
    if a.shape[:2] != (hs, ws):
        a = cv2.resize(a, (ws, hs), interpolation=interpolation)
    canvas = np.full((max(hs, crop[0]), max(ws, crop[1]), *a.shape[2:]), fill, a.dtype)
    canvas[:hs, :ws] = a
    out = canvas[top:top + crop[0], left:left + crop[1]]
    return out[:, ::-1] if flipped else out


def test_crop_box_and_window_by_hand_for_a_known_crop_and_flip() -> None:
    crop = (16, 24)
    flips = set()
    for seed in range(6):
        _, _, _, top, left, flipped = _geometry(seed, (1.0, 1.0), crop)
        flips.add(flipped)
        sample = _sample()
        out = TrainTransform(crop=crop, scale_range=(1.0, 1.0), flip=True)(
            sample, np.random.default_rng(seed))
        window = sample["image"][top:top + 16, left:left + 24]
        assert np.array_equal(out["image"], window[:, ::-1] if flipped else window)
        assert out["crop_box"].dtype == np.float32
        assert out["crop_box"].tolist() == [top, left, 16, 24, 1.0, float(flipped)]
    assert flips == {True, False}
    # no crop: the window is the whole (scaled) image
    out = TrainTransform(crop=None, scale_range=(2.0, 2.0), flip=False)(
        _sample(), np.random.default_rng(0))
    assert out["crop_box"].tolist() == [0, 0, 80, 128, 2.0, 0.0]


@pytest.mark.parametrize("crop", [(24, 32), (56, 80)])  # inside, and larger (padded)
def test_extra_arrays_follow_the_label_and_image_geometry(crop: tuple[int, int]) -> None:
    scale_range = (0.75, 1.25)
    for seed in range(6):
        sample = _sample()
        out = TrainTransform(crop=crop, scale_range=scale_range, flip=True)(
            sample, np.random.default_rng(seed))
        factor, hs, ws, top, left, flipped = _geometry(seed, scale_range, crop)
        assert np.allclose(out["crop_box"], [top, left, *crop, factor, float(flipped)])
        geometry = (hs, ws, top, left, crop, flipped)
        assert np.array_equal(out["pseudo_label"], out["label"])
        assert np.array_equal(out["label"], _by_hand(sample["label"], *geometry,
                                                     cv2.INTER_NEAREST_EXACT, 255))
        assert np.array_equal(out["road_mask"], _by_hand(sample["road_mask"], *geometry,
                                                         cv2.INTER_NEAREST_EXACT, 255))
        assert out["confidence"].dtype == np.float32
        np.testing.assert_allclose(out["confidence"], _by_hand(
            sample["confidence"], *geometry, cv2.INTER_LINEAR, 0.0), atol=1e-6)
        assert np.array_equal(out["image"], _by_hand(sample["image"], *geometry,
                                                     cv2.INTER_LINEAR, 0))
        assert out["pose_matrix"] is sample["pose_matrix"]  # *_matrix: passed unchanged
        # the homography (no night here: image -> image) follows scale, crop and flip
        moved = np.array([[ws / W, 0, ws / W / 2 - 0.5], [0, hs / H, hs / H / 2 - 0.5], [0, 0, 1]])
        moved = np.array([[1, 0, -left], [0, 1, -top], [0, 0, 1]]) @ moved
        if flipped:
            moved = np.array([[-1, 0, crop[1] - 1], [0, 1, 0], [0, 0, 1]]) @ moved
        expected = moved @ sample["homography"].astype(np.float64) @ np.linalg.inv(moved)
        assert out["homography"].dtype == np.float32
        np.testing.assert_allclose(out["homography"], expected / expected[2, 2], rtol=1e-4,
                                   atol=1e-4)
        assert out["name"] == "x"
    if crop[0] > H * 1.25:  # padding: ignore for int maps, 0 for float maps
        assert np.all(out["pseudo_label"][-1] == 255) and np.all(out["road_mask"][-1] == 255)
        assert np.all(out["confidence"][-1] == 0.0)


def test_an_array_of_unknown_kind_is_an_error() -> None:
    sample = _sample()
    sample["depth"] = np.zeros((H, W), np.float32)
    with pytest.raises(ValueError, match="sample key 'depth'.*SAMPLE_KINDS.*_confidence"):
        TrainTransform(crop=(16, 16))(sample, np.random.default_rng(0))
    sample = _sample()
    sample["confidence"] = np.zeros((H, W, 1), np.float32)
    with pytest.raises(ValueError, match="'confidence': a float_map needs 2 dimensions"):
        TrainTransform(crop=(16, 16))(sample, np.random.default_rng(0))
    sample = _sample()
    sample["confidence"] = np.zeros((H // 2, W), np.float32)
    with pytest.raises(ValueError, match="confidence size"):
        TrainTransform(crop=(16, 16))(sample, np.random.default_rng(0))


class _Reader:
    root = Path("/nowhere")

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict[str, Any]:
        return _sample()


@pytest.mark.parametrize("crop_box", [False, True])
def test_loader_converts_each_kind(crop_box: bool) -> None:
    transform = TrainTransform(crop=(16, 24), scale_range=(1.0, 1.0), flip=True)
    dataset = AugmentedDataset(_Reader(), transform, (0.5,) * 3, (0.25,) * 3, seed=7,
                               crop_box=crop_box)
    out = dataset[(0, 2)]
    reference = transform(_sample(), np.random.default_rng([7, 0, 2]))
    assert sorted(out) == sorted(["image", "label", "pseudo_label", "road_mask", "confidence",
                                  "pose_matrix", "homography"]
                                 + (["crop_box"] if crop_box else []))
    assert out["image"].shape == (3, 16, 24) and out["image"].dtype == torch.float32
    expected = (reference["image"].astype(np.float32) / 255 - 0.5) / 0.25
    np.testing.assert_allclose(out["image"].numpy(), expected.transpose(2, 0, 1), atol=1e-5)
    for key in ("label", "pseudo_label", "road_mask"):
        assert out[key].dtype == torch.int64
        assert np.array_equal(out[key].numpy(), reference[key])
    assert out["confidence"].dtype == torch.float32 and out["confidence"].shape == (16, 24)
    assert np.array_equal(out["confidence"].numpy(), reference["confidence"])
    assert out["pose_matrix"].dtype == torch.float64
    assert np.array_equal(out["pose_matrix"].numpy(), _sample()["pose_matrix"])
    assert out["homography"].dtype == torch.float32 and out["homography"].shape == (3, 3)
    assert np.array_equal(out["homography"].numpy(), reference["homography"])
    if crop_box:
        assert out["crop_box"].dtype == torch.float32 and out["crop_box"].shape == (6,)
        assert out["crop_box"].tolist() == reference["crop_box"].tolist()


# --- day/night alignment ------------------------------------------------------------------


def test_a_pairs_stream_gets_homographies_from_a_cache_computed_once(synth: Path,
                                                                     tmp_path: Path) -> None:
    run = tmp_path / "run"
    recipe = _recipe(synth, run, pairs=f"synthetic_pairs:{synth}", batch_size=2,
                     streams={"pairs": {"align": "homography"}})
    ms = _build(recipe, Probe(("source", "pairs")))
    batch = next(ms)
    assert sorted(batch["pairs"]) == ["homography", "image", "night"]
    assert batch["pairs"]["homography"].shape == (2, 3, 3)
    assert batch["pairs"]["homography"].dtype == torch.float32
    cache = run / "alignment-pairs.json"  # the default: the run folder
    data = json.loads(cache.read_text())
    assert data["count"] == 4 and data["settings"]["features"] == "orb"
    assert ms.provenance["pairs"]["alignment"] == {
        "method": "homography", "features": "orb", "cache": str(cache), "ok": data["ok"],
        "pairs": 4}
    assert "alignment" not in ms.provenance["source"]
    stamp = (cache.stat().st_ino, cache.stat().st_mtime_ns)
    _build(recipe, Probe(("source", "pairs")))  # a second start reads the cache
    assert (cache.stat().st_ino, cache.stat().st_mtime_ns) == stamp
    sift = _recipe(synth, run, pairs=f"synthetic_pairs:{synth}", batch_size=2,
                   streams={"pairs": {"align": "homography", "align_features": "sift",
                                      "align_cache": str(tmp_path / "elsewhere.json")}})
    _build(sift, Probe(("source", "pairs")))
    assert json.loads((tmp_path / "elsewhere.json").read_text())["settings"]["features"] == "sift"
    moved = _recipe(synth, run, pairs=f"synthetic_pairs:{synth}", batch_size=2,
                    streams={"pairs": {"align": "homography", "align_features": "sift"}})
    _build(moved, Probe(("source", "pairs")))  # another setting: the default cache again
    assert (cache.stat().st_ino, cache.stat().st_mtime_ns) != stamp
    assert json.loads(cache.read_text())["settings"]["features"] == "sift"
    # without align the pairs stream has no homography
    plain = next(_build(_recipe(synth, run, pairs=f"synthetic_pairs:{synth}"),
                        Probe(("source", "pairs"))))
    assert sorted(plain["pairs"]) == ["image", "night"]


def test_the_batch_homography_follows_the_stream_augmentation(tmp_path: Path, synth: Path) -> None:
    from tests.test_align import SHIFT, corner_error, shifted_pair, write_pairs_folder

    root = write_pairs_folder(tmp_path / "pairs", [shifted_pair(seed=s) for s in (10, 11)])
    recipe = _recipe(synth, tmp_path / "run", pairs=f"synthetic_pairs:{root}",
                     streams={"pairs": {"align": "homography", "crop": [96, 128],
                                        "scale_range": [0.6, 1.5], "batch_size": 1}})
    ms = _build(recipe, Probe(("source", "pairs"), wants_crop_box=True))
    dataset = ms.streams["pairs"].loader.dataset
    flips = set()
    for epoch in range(6):
        out = dataset[(epoch, epoch % 2)]
        top, left, _, _, factor, flipped = out["crop_box"].tolist()
        flips.add(flipped)
        hs, ws = round(240 * factor), round(320 * factor)
        moved = np.array([[1, 0, -left], [0, 1, -top], [0, 0, 1]]) @ np.array(
            [[ws / 320, 0, ws / 640 - 0.5], [0, hs / 240, hs / 480 - 0.5], [0, 0, 1]])
        if flipped:
            moved = np.array([[-1, 0, 127], [0, 1, 0], [0, 0, 1]]) @ moved
        expected = moved @ SHIFT @ np.linalg.inv(moved)  # the true shift, augmented
        assert out["homography"].shape == (3, 3)
        assert corner_error(out["homography"].numpy().astype(float), expected, 96, 128) < 2.0
    assert flips == {0.0, 1.0}


def test_alignment_config_errors_name_the_key(synth: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data.streams.pairs.align: 'homograpy' is not one "
                                          r"of \['homography', 'none'\]"):
        _recipe(synth, tmp_path, streams={"pairs": {"align": "homograpy"}})
    with pytest.raises(ConfigError, match=r"data.streams.pairs.align_features: 'surf' is not "
                                          r"one of \['orb', 'sift'\]"):
        _recipe(synth, tmp_path, streams={"pairs": {"align": "homography",
                                                    "align_features": "surf"}})
    with pytest.raises(ConfigError, match="data.streams.pairs: align_features='sift' applies "
                                          "only with align: homography"):
        _recipe(synth, tmp_path, streams={"pairs": {"align_features": "sift"}})
    recipe = _recipe(synth, tmp_path, target=f"synthetic:{synth}:night_train",
                     streams={"target": {"align": "homography"}})
    with pytest.raises(ConfigError, match="data.streams.target.align: homography needs a "
                                          "day/night pairs dataset") as err:
        _build(recipe, Probe(("source", "target")))
    assert "\n" not in str(err.value)
    none = _recipe(synth, tmp_path, pairs=f"synthetic_pairs:{synth}",
                   streams={"pairs": {"align": "none"}})
    assert sorted(next(_build(none, Probe(("source", "pairs"))))["pairs"]) == ["image", "night"]


class _Numbered:
    """Frame ``index`` is filled with ``index``: a batch says which frames it holds."""

    root = Path("/nowhere")

    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": np.full((8, 8, 3), index, np.uint8)}


def test_closing_a_stream_mid_epoch_changes_nothing_it_draws() -> None:
    """`Stream.close` (a finished or failed run stops its workers) drops what the workers
    prefetched; the next batch restarts them at the same position."""
    def stream() -> Stream:
        dataset = AugmentedDataset(_Numbered(), lambda s, rng: s, (0.0,) * 3, (1.0,) * 3, seed=0)
        return Stream(dataset, batch_size=2, workers=2, rank=0, world_size=1, seed=5)

    def frames(batch: dict[str, torch.Tensor]) -> list[int]:
        return [round(float(x) * 255) for x in batch["image"][:, 0, 0, 0]]

    straight = stream()
    expected = [frames(next(straight)) for _ in range(5)]  # into the second epoch
    straight.close()
    closed = stream()
    drawn = []
    for _ in range(5):
        drawn.append(frames(next(closed)))
        closed.close()
    assert drawn == expected
    assert sorted(sum(expected[:3], [])) == list(range(6))  # one epoch: every frame once
