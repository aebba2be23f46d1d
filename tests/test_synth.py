"""The procedural scene generator: determinism, labels, domains, the on-disk layout."""

from __future__ import annotations

import argparse
import colorsys
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeseg.data.base import DatasetError
from edgeseg.data.synth import (
    DOMAINS,
    SyntheticDataset,
    SyntheticPairs,
    iter_video_frames,
    render_pair,
    render_scene,
)
from edgeseg.data.synth.cli import add_arguments, run
from edgeseg.data.synth.domains import apply_domain
from edgeseg.data.synth.generate import surface_of
from edgeseg.data.synth.render import _fill_ground_polygons, rasterize, shadow_prisms
from edgeseg.data.synth.scene import Draws
from edgeseg.data.synth.world import World
from edgeseg.fileio import write_image
from edgeseg.labels import CITYSCAPES19, IGNORE_INDEX

SIZE = (128, 64)
NAMES = CITYSCAPES19.names


def _cls(name: str) -> int:
    return NAMES.index(name)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def labels20() -> list[np.ndarray]:
    return [render_scene(11, i, (), SIZE).labels for i in range(20)]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    args = _parse(["--out", str(root), "--train", "6", "--val", "2", "--size", "64x32",
                   "--domains", "day,night,fog", "--seed", "5", "--pairs", "2", "--videos", "1",
                   "--video-frames", "8", "--fps", "5"])
    assert run(args) == 0
    return root


def test_same_seed_gives_identical_scenes_and_other_seeds_differ() -> None:
    a = render_scene(3, 4, ("day", "night"), SIZE)
    b = render_scene(3, 4, ("day", "night"), SIZE)
    assert np.array_equal(a.labels, b.labels)
    for domain in ("day", "night"):
        assert np.array_equal(a.images[domain], b.images[domain])
    c = render_scene(4, 4, ("day",), SIZE)
    assert not np.array_equal(a.labels, c.labels)
    assert not np.array_equal(a.images["day"], c.images["day"])


@pytest.mark.parametrize("style", ["textured", "flat"])
def test_renders_are_bit_identical_whatever_was_rendered_before(style: str) -> None:
    """Golden determinism: the same seed gives the same bytes in every output, also
    after other scenes and sizes went through the generator's caches."""
    first = render_scene(6, 2, DOMAINS, SIZE, style)
    render_scene(7, 0, DOMAINS, (96, 48), style)  # other worlds, another frame size
    render_pair(6, 2, SIZE, style)
    again = render_scene(6, 2, DOMAINS, SIZE, style)
    assert first.labels.tobytes() == again.labels.tobytes()
    assert first.depth.tobytes() == again.depth.tobytes()
    for domain in DOMAINS:
        assert first.images[domain].tobytes() == again.images[domain].tobytes(), domain
    one = render_pair(6, 2, SIZE, style)
    two = render_pair(6, 2, SIZE, style)
    for name in ("day", "night", "labels", "night_labels"):
        assert getattr(one, name).tobytes() == getattr(two, name).tobytes(), name
    video = [list(iter_video_frames(d, SIZE, seed=6, num_frames=3, style=style))
             for d in ("rain", "rain")]
    for (rgb, labels), (rgb2, labels2) in zip(*video):
        assert rgb.tobytes() == rgb2.tobytes() and labels.tobytes() == labels2.tobytes()


def test_things_keep_their_looks_along_a_video() -> None:
    """A thing's parameters come from its own seed: the static street is drawn the same
    in every frame of a video, whatever else comes into view (only the camera moves)."""
    world = World(8, "video", 0)
    first = world.visible(world.camera(*SIZE, 0.0), 0.0)
    later = world.visible(world.camera(*SIZE, 2.0), 2.0)
    for kind in ("buildings", "trees"):
        rows = {}
        for batch, _ in (first[kind], later[kind]):
            for i, key in enumerate(batch["seed"].tolist()):
                row = {k: np.asarray(v[i]).tolist() for k, v in batch.columns.items()}
                assert rows.setdefault(key, row) == row, kind


def test_overlapping_shadows_are_filled_not_cancelled() -> None:
    """Each shadow is filled on its own: where two overlap, the ground stays dark (one
    fill of overlapping polygons would leave the overlap lit, by the even-odd rule)."""
    world = World(2, "scene", 1)
    cam = world.camera(*SIZE)
    raster = rasterize(world.mesh(cam), cam)
    ground = np.full((SIZE[1], SIZE[0]), 255, np.uint8)
    square = np.array([[-2.0, 8.0], [2.0, 8.0], [2.0, 12.0], [-2.0, 12.0]])
    square[:, 0] += cam.x
    one = _fill_ground_polygons(raster, square[None], ground)
    two = _fill_ground_polygons(raster, np.stack([square, square + [1.0, 1.0]]), ground)
    assert one.sum() > 50 and (two >= one).all() and two.sum() > one.sum()
    # a prism's shadow is the footprint swept from its bottom's to its top's shadow
    prism = shadow_prisms(square[None], np.zeros((1, 2)), np.array([[3.0, 2.0]]))[0]
    hull = cv2.convexHull(np.concatenate([square, square + [3.0, 2.0]]).astype(np.float32))
    assert abs(cv2.contourArea(prism.astype(np.float32)) - cv2.contourArea(hull)) < 1e-3


def test_vectorised_draws_match_the_scalar_colour_rules() -> None:
    draws = Draws(np.arange(500, dtype=float), 8)
    h, s, v = (row.copy() for row in draws._u[:3])
    rgb = draws.hsv((0.2, 0.9), (0.1, 0.8))
    expected = [colorsys.hsv_to_rgb(a, 0.2 + 0.7 * b, 0.1 + 0.7 * c) for a, b, c in zip(h, s, v)]
    assert np.allclose(rgb, expected, atol=1e-12)
    assert (0 <= draws.index(7)).all() and (draws.index(7) < 7).all()
    # the same seeds always give the same draws, different seeds different ones
    assert np.array_equal(Draws(np.arange(5.0), 4).u(), Draws(np.arange(5.0), 4).u())
    assert len(set(Draws(np.arange(500.0), 4).u().tolist())) == 500


def test_labels_are_trainids_and_cover_the_street_classes(labels20: list[np.ndarray]) -> None:
    seen = set()
    for labels in labels20:
        assert labels.dtype == np.uint8 and labels.shape == (SIZE[1], SIZE[0])
        ids = set(np.unique(labels).tolist())
        assert ids <= set(range(19)) | {IGNORE_INDEX}
        seen |= ids
    for labels in labels20[:4]:  # every scene has a street
        present = set(np.unique(labels).tolist())
        assert {_cls("road"), _cls("sky")} <= present
    # the common classes in most scenes, the smaller ones somewhere in 20 scenes
    assert sum(_cls("building") in np.unique(lab) for lab in labels20) >= 12
    assert sum(_cls("car") in np.unique(lab) for lab in labels20) >= 12
    for name in ("sidewalk", "person", "vegetation", "pole", "traffic sign", "terrain"):
        assert _cls(name) in seen, name
    assert IGNORE_INDEX not in seen  # every pixel is something


def test_all_domains_share_the_label_map_and_differ_in_pixels() -> None:
    scene = render_scene(2, 1, DOMAINS, SIZE)
    assert set(scene.images) == set(DOMAINS)
    for image in scene.images.values():
        assert image.shape == (SIZE[1], SIZE[0], 3) and image.dtype == np.uint8
    for i, a in enumerate(DOMAINS):
        for b in DOMAINS[i + 1:]:
            diff = np.abs(scene.images[a].astype(int) - scene.images[b].astype(int)).mean()
            assert diff > 8, (a, b, diff)


def test_night_is_much_darker_than_day_but_not_black() -> None:
    day, night = [], []
    for i in range(6):
        scene = render_scene(7, i, ("day", "night"), SIZE)
        day.append(scene.images["day"].mean())
        night.append(scene.images["night"].mean())
    assert np.mean(night) < 0.6 * np.mean(day)
    assert min(night) > 8  # dark, yet the scene structure is there
    # structure survives: night luminance still follows the label boundaries somewhat
    scene = render_scene(7, 0, ("night",), SIZE)
    grey = cv2.cvtColor(scene.images["night"], cv2.COLOR_RGB2GRAY).astype(float)
    assert grey.std() > 5


def test_fog_contrast_decreases_with_depth() -> None:
    world = World(9, "scene", 3)
    surface = surface_of(world, world.camera(256, 128), "textured")
    day = apply_domain(surface, "day", np.random.default_rng(0)).astype(float).mean(-1)
    fog = apply_domain(surface, "fog", np.random.default_rng(0)).astype(float).mean(-1)
    near, far = surface.depth < 12, (surface.depth > 60) & ~surface.sky
    assert near.sum() > 100 and far.sum() > 100
    kept_near = fog[near].std() / day[near].std()
    kept_far = fog[far].std() / day[far].std()
    assert kept_near > 2 * kept_far


def test_flat_style_changes_looks_not_labels() -> None:
    textured = render_scene(5, 2, ("day",), SIZE, "textured")
    flat = render_scene(5, 2, ("day",), SIZE, "flat")
    assert np.array_equal(textured.labels, flat.labels)
    assert np.abs(textured.images["day"].astype(int) - flat.images["day"].astype(int)).mean() > 3


def test_unknown_domain_and_style_are_errors() -> None:
    with pytest.raises(ValueError, match="unknown domain"):
        render_scene(0, 0, ("snow",), SIZE)
    with pytest.raises(ValueError, match="unknown style"):
        render_scene(0, 0, ("day",), SIZE, "cartoon")


def test_pairs_are_the_same_scene_from_a_slightly_moved_camera() -> None:
    pair = render_pair(1, 0, SIZE)
    again = render_pair(1, 0, SIZE)
    assert np.array_equal(pair.night, again.night)
    agree = (pair.labels == pair.night_labels).mean()
    assert 0.6 < agree < 0.995  # mostly the same layout, yet not pixel-aligned
    assert pair.night.mean() < pair.day.mean()


def test_video_frames_are_coherent_and_move() -> None:
    frames = list(iter_video_frames("day", SIZE, seed=2, num_frames=4, fps=10))
    assert len(frames) == 4
    for rgb, labels in frames:
        assert rgb.shape == (SIZE[1], SIZE[0], 3) and labels.shape == (SIZE[1], SIZE[0])
    first, second, last = frames[0][1], frames[1][1], frames[-1][1]
    assert (first == second).mean() > 0.8  # a persistent world, not re-sampled
    assert not np.array_equal(first, last)  # the camera moves
    endless = iter_video_frames("night", SIZE, seed=2)
    rgb, labels = next(endless)
    assert np.array_equal(labels, first)  # same world, same start


def test_cli_layout_is_read_back(written: Path) -> None:
    meta = json.loads((written / "meta.json").read_text())
    assert meta["seed"] == 5 and meta["size"] == [64, 32] and meta["domains"] == ["day", "night", "fog"]
    for split in ("day_train", "night_train", "fog_train", "day_val", "night_val", "fog_val"):
        ds = SyntheticDataset(written, split)
        assert len(ds) == meta["counts"]["splits"][split]
        sample = ds[0]
        assert sample["image"].shape == (32, 64, 3) and sample["image"].dtype == np.uint8
        assert sample["label"].shape == (32, 64)
        stored = cv2.imread(str(written / "labels" / f"{sample['name']}.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(sample["label"], stored)
    # the labels on disk are what the generator renders
    assert np.array_equal(SyntheticDataset(written, "day_train")[0]["label"],
                          render_scene(5, 0, (), (64, 32)).labels)


def test_train_scenes_are_disjoint_across_domains_and_val_is_shared(written: Path) -> None:
    train = {d: {s["name"] for s in SyntheticDataset(written, f"{d}_train")}
             for d in ("day", "night", "fog")}
    assert sum(len(v) for v in train.values()) == 6
    assert not (train["day"] & train["night"] or train["day"] & train["fog"]
                or train["night"] & train["fog"])
    val = {d: SyntheticDataset(written, f"{d}_val") for d in ("day", "night")}
    assert [s["name"] for s in val["day"]] == [s["name"] for s in val["night"]]
    day, night = val["day"][0], val["night"][0]
    assert np.array_equal(day["label"], night["label"])
    assert day["image"].mean() > night["image"].mean()


def test_pairs_on_disk(written: Path) -> None:
    pairs = SyntheticPairs(written)
    assert len(pairs) == 2
    sample = pairs[1]
    assert set(sample) >= {"image", "label", "night", "name"}
    assert sample["image"].shape == sample["night"].shape == (32, 64, 3)
    assert sample["label"].shape == (32, 64)
    assert not np.array_equal(sample["image"], sample["night"])


def test_video_on_disk(written: Path) -> None:
    info = json.loads((written / "videos" / "night_000.json").read_text())
    assert info["frames"] == 8 and info["fps"] == 5 and info["domain"] == "night"
    capture = cv2.VideoCapture(str(written / "videos" / "night_000.mp4"))
    assert capture.isOpened()
    count = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        assert frame.shape == (32, 64, 3)
        count += 1
    capture.release()
    assert count == 8
    # written by the runtime's encoder: H.264 (plays in browsers) where PyAV is installed
    from edgeseg.videoio import pyav_h264

    if pyav_h264()[0] is not None:
        import av

        with av.open(str(written / "videos" / "night_000.mp4")) as container:
            assert container.streams.video[0].codec_context.name == "h264"
    labels = sorted((written / "videos" / "night_000_labels").glob("*.png"))
    assert [p.name for p in labels] == [f"{i:06d}.png" for i in range(8)]
    assert cv2.imread(str(labels[0]), cv2.IMREAD_UNCHANGED).shape == (32, 64)


def test_missing_root_split_and_bad_labels_are_clear_errors(written: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"rain_val\.txt.*not found"):
        SyntheticDataset(written, "rain_val")
    with pytest.raises(DatasetError, match="needs a split"):
        SyntheticDataset(written)
    with pytest.raises(DatasetError, match="does not exist"):
        SyntheticDataset(tmp_path / "nowhere", "day_val")
    with pytest.raises(DatasetError, match=r"pairs\.txt"):
        SyntheticPairs(tmp_path)
    # a copy whose label holds an id outside 0..18 and 255
    root = tmp_path / "bad"
    (root / "splits").mkdir(parents=True)
    (root / "splits" / "day_val.txt").write_text("day/s000000\n")
    write_image(root / "images" / "day" / "s000000.png", np.zeros((8, 8, 3), np.uint8))
    write_image(root / "labels" / "s000000.png", np.full((8, 8), 77, np.uint8), rgb=False)
    with pytest.raises(DatasetError, match="s000000.png"):
        SyntheticDataset(root, "day_val")[0]


@pytest.mark.parametrize("argv", [["--domains", "day,snow"], ["--size", "8x8"],
                                  ["--size", "wide"], ["--train", "-1"]])
def test_cli_rejects_bad_options(argv: list[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        _parse(["--out", str(tmp_path), *argv])
