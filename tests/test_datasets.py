"""Readers for the official layouts, the registry and label-space conversion."""

from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeseg.data import DatasetError, DatasetSpec, open_dataset
from edgeseg.data.readers import (
    ACDCDataset,
    CamVidDataset,
    CityscapesDataset,
    DarkZurichDataset,
    DarkZurichPairs,
    GTA5Dataset,
    SynthiaDataset,
)
from edgeseg.labels import cityscapes_to, get_label_space
from tests import dataset_fixtures as fx

CAMVID_REAL = Path("/work/shared/data/camvid")


# --- Cityscapes -----------------------------------------------------------------

def test_cityscapes_maps_label_ids_and_selects_split(tmp_path):
    root = fx.make_cityscapes(tmp_path / "cs")
    train = CityscapesDataset(root)  # default split: train
    assert len(train) == 3 and train.has_labels
    sample = train[0]
    assert sample["name"] == "aachen_000000_000019"
    assert sample["image"].shape == (fx.H, fx.W, 3) and sample["image"].dtype == np.uint8
    assert fx.stripes(sample["label"]) == fx.CS_TRAIN
    val = open_dataset(f"cityscapes:{root}:val")
    assert [it.name for it in val.items] == ["frankfurt_000000_000294"]


def test_image_is_rgb(tmp_path):
    root = fx.make_cityscapes(tmp_path / "cs")
    rgb = fx.write_image(root / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png",
                         colour=(255, 0, 0))
    assert np.array_equal(CityscapesDataset(root)[0]["image"], rgb)


def test_missing_root_names_path_and_layout(tmp_path):
    with pytest.raises(DatasetError, match="nowhere") as err:
        open_dataset(f"cityscapes:{tmp_path / 'nowhere'}")
    assert "leftImg8bit/<split>" in str(err.value)


def test_missing_split_names_folder(tmp_path):
    root = fx.make_cityscapes(tmp_path / "cs")
    with pytest.raises(DatasetError, match=r"leftImg8bit/test.*not found"):
        CityscapesDataset(root, "test")


def test_missing_label_file_names_file(tmp_path):
    root = fx.make_cityscapes(tmp_path / "cs")
    missing = root / "gtFine/train/bochum/bochum_000000_000313_gtFine_labelIds.png"
    missing.unlink()
    ds = CityscapesDataset(root)
    assert ds.has_labels and ds.missing_labels == 1
    ds[0]  # other items still load
    with pytest.raises(DatasetError, match=str(missing)):
        ds[2]


def test_missing_image_file_names_file(tmp_path):
    root = fx.make_camvid(tmp_path / "camvid")
    (root / "splits/day_train.txt").write_text("train/0006R0_f00930\ntrain/nope\n")
    ds = CamVidDataset(root, "day_train")
    with pytest.raises(DatasetError, match=r"images/train/nope\.png: image file not found"):
        ds[1]


def test_out_of_space_label_id_names_file(tmp_path):
    root = fx.make_cityscapes(tmp_path / "cs")
    bad = root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"
    fx.write_label(bad, fx.stripe_label((7, 34, 7, 7)))
    with pytest.raises(DatasetError, match=rf"{bad}.*\[34\]"):
        CityscapesDataset(root)[0]


def test_split_without_label_folder_is_unlabelled(tmp_path):
    root = fx.make_cityscapes(tmp_path / "cs")
    for p in (root / "gtFine/val").rglob("*.png"):
        p.unlink()
    ds = CityscapesDataset(root, "val")
    assert not ds.has_labels and ds[0]["label"] is None


def test_label_size_mismatch_is_an_error(tmp_path):
    root = fx.make_cityscapes(tmp_path / "cs")
    path = root / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png"
    fx.write_label(path, fx.stripe_label(fx.CS_RAW, h=8, w=16))
    with pytest.raises(DatasetError, match="label size 16x8 differs"):
        CityscapesDataset(root, "val")[0]


# --- GTA5 -------------------------------------------------------------------------

def test_gta5_palette_and_grey_labels_and_split_lists(tmp_path):
    root = fx.make_gta5(tmp_path / "gta5")
    assert len(GTA5Dataset(root)) == 3
    train = open_dataset(f"gta5:{root}:train")
    assert [it.name for it in train.items] == ["00001", "00002"]
    # 00001 is a palette png: ids must be the palette indices, not grey values
    assert fx.stripes(train[0]["label"]) == fx.CS_TRAIN
    assert fx.stripes(train[1]["label"]) == fx.CS_TRAIN


def test_gta5_resizes_label_with_same_aspect(tmp_path):
    root = fx.make_gta5(tmp_path / "gta5")
    sample = GTA5Dataset(root, "val")[0]
    assert sample["label"].shape == (fx.H, fx.W)
    assert set(np.unique(sample["label"]).tolist()) == set(fx.CS_TRAIN)
    assert fx.stripes(sample["label"]) == fx.CS_TRAIN


def test_gta5_rejects_label_with_other_aspect(tmp_path):
    root = fx.make_gta5(tmp_path / "gta5")
    fx.write_label(root / "labels/00003.png", fx.stripe_label(fx.CS_RAW, h=fx.H, w=fx.W // 2))
    with pytest.raises(DatasetError, match="00003.png.*aspect ratio"):
        GTA5Dataset(root, "val")[0]


def test_gta5_missing_split_list(tmp_path):
    root = fx.make_gta5(tmp_path / "gta5")
    with pytest.raises(DatasetError, match=r"test\.txt: split list file not found"):
        GTA5Dataset(root, "test")


# --- SYNTHIA ----------------------------------------------------------------------

def test_synthia_reads_class_channel_of_16bit_labels(tmp_path):
    root = fx.make_synthia(tmp_path / "synthia")
    raw = cv2.imread(str(root / "GT/LABELS/0000000.png"), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.shape == (fx.H, fx.W, 3)
    ds = SynthiaDataset(root)
    assert len(ds) == 2
    assert fx.stripes(ds[0]["label"]) == fx.SYN_TRAIN


def test_synthia_out_of_space_id(tmp_path):
    root = fx.make_synthia(tmp_path / "synthia")
    lab = np.zeros((fx.H, fx.W, 3), np.uint16)
    lab[:, :, 2] = 23
    path = root / "GT/LABELS/0000001.png"
    fx.write_label(path, lab)
    with pytest.raises(DatasetError, match=rf"{path}.*\[23\]"):
        SynthiaDataset(root)[1]


def test_synthia_without_labels_is_an_error(tmp_path):
    root = fx.make_synthia(tmp_path / "synthia")
    for p in (root / "GT/LABELS").iterdir():
        p.unlink()
    with pytest.raises(DatasetError, match="needs labels"):
        SynthiaDataset(root)


# --- Dark Zurich --------------------------------------------------------------------

def test_darkzurich_train_lists_are_unlabelled(tmp_path):
    root = fx.make_darkzurich(tmp_path / "dz")
    night = open_dataset(f"darkzurich:{root}:train_night")
    assert len(night) == 2 and not night.has_labels
    assert night[0]["label"] is None
    assert night[0]["name"] == "GOPR0351_frame_000001"
    assert np.all(night[0]["image"] == fx.DZ_NIGHT_COLOURS[0])
    assert len(DarkZurichDataset(root, "train_day")) == 2
    assert len(DarkZurichDataset(root, "train_twilight")) == 1


def test_darkzurich_val_is_labelled(tmp_path):
    root = fx.make_darkzurich(tmp_path / "dz")
    val = DarkZurichDataset(root, "val")
    assert len(val) == 1 and val.has_labels
    assert fx.stripes(val[0]["label"]) == fx.DZ_TRAIN


def test_darkzurich_missing_list_names_it(tmp_path):
    root = fx.make_darkzurich(tmp_path / "dz")
    with pytest.raises(DatasetError, match=r"lists_file_names/train_dusk_filenames\.txt"):
        DarkZurichDataset(root, "train_dusk")
    with pytest.raises(DatasetError, match="needs a split.*train_night"):
        DarkZurichDataset(root)


def test_darkzurich_pairs_follow_correspondences(tmp_path):
    root = fx.make_darkzurich(tmp_path / "dz")
    pairs = open_dataset(f"darkzurich_pairs:{root}")
    assert isinstance(pairs, DarkZurichPairs)
    assert len(pairs) == 2 and not pairs.has_labels
    for i in range(2):
        s = pairs[i]
        assert np.all(s["image"] == fx.DZ_DAY_COLOURS[i])
        assert np.all(s["night"] == fx.DZ_NIGHT_COLOURS[i])
        assert s["label"] is None
    assert pairs[1]["name"] == "GOPR0351_frame_000002"


def test_darkzurich_pairs_bad_line_and_missing_folder(tmp_path):
    root = fx.make_darkzurich(tmp_path / "dz")
    with pytest.raises(DatasetError, match=r"corresp/train/twilight"):
        DarkZurichPairs(root, "twilight")
    bad = root / "corresp/train/night/GOPR0351.csv"
    bad.write_text("only_one_field\n")
    with pytest.raises(DatasetError, match=rf"{bad}:1"):
        DarkZurichPairs(root)


# --- ACDC, Nighttime Driving, BDD100K ------------------------------------------------

def test_acdc_condition_split_and_reference(tmp_path):
    root = fx.make_acdc(tmp_path / "acdc")
    night = open_dataset(f"acdc:{root}:night-val", load_reference=True)
    assert len(night) == 1 and night.has_labels
    s = night[0]
    assert s["name"] == "GOPR0376_frame_000851"
    assert fx.stripes(s["label"]) == fx.DZ_TRAIN
    assert np.all(s["reference"] == fx.ACDC_REF_COLOUR)
    assert "reference" not in ACDCDataset(root, "night-val")[0]
    assert night.items[0].extras["reference"].name == "GOPR0376_frame_000851_rgb_ref_anon.png"
    assert len(ACDCDataset(root, "val")) == 2  # all conditions
    test = ACDCDataset(root, "night/test")
    assert not test.has_labels and test[0]["label"] is None


def test_acdc_bad_split(tmp_path):
    root = fx.make_acdc(tmp_path / "acdc")
    with pytest.raises(DatasetError, match="cond"):
        ACDCDataset(root, "dusk-val")
    with pytest.raises(DatasetError, match=r"rgb_anon/fog/test"):
        ACDCDataset(root, "fog-test")


def test_nighttime_driving(tmp_path):
    root = fx.make_nighttime_driving(tmp_path / "ntd")
    ds = open_dataset(f"nighttime_driving:{root}")
    assert len(ds) == 1 and fx.stripes(ds[0]["label"]) == fx.DZ_TRAIN


def test_bdd100k_is_unlabelled(tmp_path):
    root = fx.make_bdd100k(tmp_path / "bdd")
    ds = open_dataset(f"bdd100k:{root}:train")
    assert len(ds) == 2 and not ds.has_labels
    s = ds[1]
    assert s["label"] is None and s["name"] == "0a0b16e2-93f8c456"
    assert len(open_dataset(f"bdd100k:{root}:val")) == 1


# --- CamVid ----------------------------------------------------------------------------

def test_camvid_fixture_ids_and_unlabelled_split(tmp_path):
    root = fx.make_camvid(tmp_path / "camvid")
    day = CamVidDataset(root, "day_train")
    assert day.has_labels and fx.stripes(day[0]["label"]) == fx.CAMVID_TRAIN
    dusk = CamVidDataset(root, "dusk_test")
    assert not dusk.has_labels and dusk[0]["label"] is None
    assert len(CamVidDataset(root, "train")) == 2  # plain folder split


def test_camvid_id_above_11_is_an_error(tmp_path):
    root = fx.make_camvid(tmp_path / "camvid")
    path = root / "labels/train/0016E5_00390.png"
    fx.write_label(path, fx.stripe_label((0, 12, 0, 0)))
    with pytest.raises(DatasetError, match=rf"{path}.*\[12\]"):
        CamVidDataset(root, "day_train")[1]


def test_camvid_unknown_split_lists_available(tmp_path):
    root = fx.make_camvid(tmp_path / "camvid")
    with pytest.raises(DatasetError, match=r"splits/night\.txt.*day_train.*dusk_test"):
        CamVidDataset(root, "night")
    with pytest.raises(DatasetError, match="needs a split"):
        open_dataset(f"camvid:{root}")


@pytest.fixture
def camvid_real() -> Path:
    if not CAMVID_REAL.is_dir():
        pytest.skip(f"real CamVid data not found at {CAMVID_REAL}")
    return CAMVID_REAL


def test_camvid_real_splits(camvid_real):
    day = open_dataset(f"camvid:{camvid_real}:day_train")
    assert len(day) == 406 and day.has_labels
    for i in (0, 200, 405):
        s = day[i]
        assert s["image"].shape == (360, 480, 3)
        assert s["label"].shape == (360, 480)
        values = set(np.unique(s["label"]).tolist())
        assert values <= set(range(11)) | {255} and len(values - {255}) >= 3
    assert len(open_dataset(f"camvid:{camvid_real}:day_val")) == 171
    assert len(open_dataset(f"camvid:{camvid_real}:dusk_train")) == 62
    dusk = open_dataset(f"camvid:{camvid_real}:dusk_test")
    assert len(dusk) == 62 and not dusk.has_labels and dusk[0]["label"] is None


# --- registry, conversion ---------------------------------------------------------------

def test_unknown_dataset_lists_names(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'kitti'.*cityscapes.*camvid"):
        open_dataset(f"kitti:{tmp_path}")


def test_open_dataset_accepts_spec_object(tmp_path):
    root = fx.make_camvid(tmp_path / "camvid")
    assert len(open_dataset(DatasetSpec("camvid", root, "day_train"))) == 2


@pytest.mark.parametrize("space", ["synthia16", "synthia13", "camvid11"])
def test_label_space_conversion_from_cityscapes(tmp_path, space):
    root = fx.make_cityscapes(tmp_path / "cs")
    ds = open_dataset(f"cityscapes:{root}:val", label_space=space)
    assert ds.label_space.name == space and ds.has_labels and len(ds) == 1
    mapping = cityscapes_to(get_label_space(space))
    expected = tuple(mapping.get(t, 255) for t in fx.CS_TRAIN)
    assert fx.stripes(ds[0]["label"]) == expected
    assert ds.missing_labels == 0  # reader attributes stay reachable
    pickle.loads(pickle.dumps(ds))  # loader workers pickle datasets


def test_known_conversion_values(tmp_path):
    root = fx.make_synthia(tmp_path / "synthia")
    # trainIds (0 road, 11 person, 255, 3 wall): wall is not a SYNTHIA-13 class
    ds = open_dataset(f"synthia:{root}", label_space="synthia13")
    assert fx.stripes(ds[0]["label"]) == (0, 7, 255, 255)
    same = open_dataset(f"synthia:{root}", label_space="cityscapes19")
    assert isinstance(same, SynthiaDataset)


def test_camvid_cannot_convert(tmp_path):
    root = fx.make_camvid(tmp_path / "camvid")
    with pytest.raises(DatasetError, match="cannot convert camvid11 labels to cityscapes19"):
        open_dataset(f"camvid:{root}:day_train", label_space="cityscapes19")
    with pytest.raises(DatasetError, match="unknown label space"):
        open_dataset(f"camvid:{root}:day_train", label_space="ade20k")


def test_synthetic_registered_lazily(tmp_path, monkeypatch):
    created = {}

    class FakeSynthetic:
        def __init__(self, root, split=None):
            created["args"] = (root, split)

    module = types.ModuleType("edgeseg.data.synth.dataset")
    module.SyntheticDataset = FakeSynthetic
    module.SyntheticPairs = FakeSynthetic
    monkeypatch.setitem(sys.modules, "edgeseg.data.synth.dataset", module)
    assert isinstance(open_dataset(f"synthetic:{tmp_path}:train"), FakeSynthetic)
    assert created["args"] == (tmp_path, "train")
    open_dataset(f"synthetic_pairs:{tmp_path}")
    assert created["args"] == (tmp_path, None)


def test_synthetic_missing_module_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "edgeseg.data.synth.dataset", None)
    with pytest.raises(DatasetError, match="edgeseg.data.synth.dataset"):
        open_dataset(f"synthetic:{tmp_path}:train")


def test_colour_label_png_is_refused_grey_as_rgb_is_read(tmp_path):
    """A colour label image must not be turned into grey 'class ids' silently."""
    root = fx.make_camvid(tmp_path / "camvid")
    label = root / "labels" / "train" / "0006R0_f00930.png"
    ids = fx.stripe_label(fx.CAMVID_RAW)
    cv2.imwrite(str(label), np.dstack([ids, ids, ids]))  # grey stored as RGB
    assert fx.stripes(CamVidDataset(root, "day_train")[0]["label"]) == fx.stripes(
        CamVidDataset(root, "day_train")[1]["label"])
    cv2.imwrite(str(label), np.dstack([ids, ids + 1, ids]))
    with pytest.raises(DatasetError, match=r"single-channel label id map, got a 3-channel"):
        CamVidDataset(root, "day_train")[0]


def test_synthetic_splits_join_with_plus_in_another_label_space(tiny_synth: Path) -> None:
    """All weathers in one source stream (synthetic pretraining in CamVid's classes)."""
    day = open_dataset(f"synthetic:{tiny_synth}:day_train")
    night = open_dataset(f"synthetic:{tiny_synth}:night_train")
    both = open_dataset(f"synthetic:{tiny_synth}:day_train+night_train", "camvid11")
    assert len(both) == len(day) + len(night)
    names = [both.items[i].name for i in range(len(both))]
    assert len(set(names)) == len(names) and names[0].startswith("day_")
    assert names[len(day)] == f"night_{night.items[0].name}"
    first_night = both[len(day)]
    assert np.array_equal(first_night["image"], night[0]["image"])
    mapping = cityscapes_to(get_label_space("camvid11"))
    lut = np.full(256, 255, np.uint8)
    for cs, cv in mapping.items():
        lut[cs] = cv
    want = lut[night[0]["label"]]
    assert np.array_equal(first_night["label"], want)
    assert set(np.unique(first_night["label"])) <= set(range(11)) | {255}
    with pytest.raises(DatasetError, match="fog_train"):
        open_dataset(f"synthetic:{tiny_synth}:day_train+fog_train")
    with pytest.raises(DatasetError, match="SPLIT\\+SPLIT"):
        open_dataset(f"synthetic:{tiny_synth}:day_train+")
