"""``edgeseg derive``: translated datasets and pseudo-labels from a checkpoint, on disk,
resumable, with manifests, and a training stream that reads the pseudo-labels."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import edgeseg
from edgeseg.config import Recipe, from_dict
from edgeseg.data import open_dataset
from edgeseg.fileio import OutputError
from edgeseg.labels import CITYSCAPES19
from edgeseg.train import derive
from edgeseg.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from edgeseg.train.derive import DeriveError
from edgeseg.train.distributed import DistInfo
from edgeseg.train.nets.registry import build_net, net_spec
from edgeseg.train.predict import TorchPredictor, TorchTranslator
from edgeseg.train.streams import build_streams
from tests.conftest import cli_env, tiny_recipe


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def translator_ckpt(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint plus a small random generator ``gen_s2t`` (translator) and a
    discriminator, stored as the trainer stores a method's networks."""
    ckpt = load_checkpoint(tiny_checkpoint)
    torch.manual_seed(0)
    gen = net_spec("resnet_generator", "translator", ngf=4, n_blocks=1)
    disc = net_spec("patch_discriminator", in_channels=3, ndf=4, n_layers=2)
    gen_net = build_net(gen)
    with torch.no_grad():  # far from CycleGAN's N(0, 0.02) init: a visible translation
        for p in gen_net.parameters():
            p.normal_(0.0, 0.3)
    ckpt["networks"] = {**ckpt.get("networks", {}), "gen_s2t": gen.to_dict(),
                        "disc_img_t": disc.to_dict()}
    ckpt["method_state"] = {**ckpt["method_state"], "networks": {
        "gen_s2t": gen_net.state_dict(), "disc_img_t": build_net(disc).state_dict()}}
    path = tmp_path_factory.mktemp("translator") / "gan.pt"
    save_checkpoint(path, ckpt)
    return path


def _bgr(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb[..., ::-1])


# --- translate ------------------------------------------------------------------------------


def test_translate_matches_the_translator_and_copies_labels(translator_ckpt: Path,
                                                            tiny_synth: Path,
                                                            tmp_path: Path) -> None:
    spec = f"synthetic:{tiny_synth}:night_val"
    out = tmp_path / "translated"
    manifest = derive.translate(translator_ckpt, "gen_s2t", spec, out, preview=2,
                                progress=False)
    original = open_dataset(spec)
    reference, _ = TorchTranslator.from_checkpoint(str(translator_ckpt), "gen_s2t")
    copy = open_dataset(manifest["output_spec"])
    assert manifest["output_spec"] == f"cityscapes:{out.resolve()}:night_val"
    assert len(copy) == len(original) == 4 and copy.has_labels
    by_name = {copy[i]["name"]: copy[i] for i in range(len(copy))}
    for i in range(len(original)):
        sample = original[i]
        derived = by_name[sample["name"]]
        expected = reference(_bgr(sample["image"]))  # BGR frame -> BGR frame
        assert np.array_equal(_bgr(derived["image"]), expected)
        assert np.abs(expected.astype(int) - _bgr(sample["image"])).mean() > 5  # it translated
        assert np.array_equal(derived["label"], sample["label"])  # the same class ids
    previews = sorted((out / "preview").iterdir())
    assert [p.name for p in previews] == [f"{n}.png" for n in sorted(manifest["names"][:2])]
    first = cv2.imread(str(out / "preview" / f"{manifest['names'][0]}.png"))
    image = original[0]["image"]
    assert first.shape == (32, 64 + 4 + 64, 3)
    assert np.array_equal(first[:, :64], _bgr(image))
    assert np.array_equal(first[:, 68:], reference(_bgr(image)))
    saved = json.loads((out / "manifest.json").read_text())
    assert saved["command"] == "translate" and saved["network"] == "gen_s2t"
    assert saved["checkpoint"] == str(translator_ckpt.resolve())
    assert saved["checkpoint_sha256"] == _sha256(translator_ckpt)
    assert saved["data"] == f"synthetic:{tiny_synth.resolve()}:night_val"
    assert saved["count"] == 4 and saved["edgeseg_version"] == edgeseg.__version__
    assert saved["names"] == [original[i]["name"] for i in range(4)]


def test_translate_resumes_writing_only_the_missing_files(translator_ckpt: Path,
                                                          tiny_synth: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    spec = f"synthetic:{tiny_synth}:day_val"
    out = tmp_path / "resume"
    calls: list[int] = []
    real = TorchTranslator.__call__

    def stop_at_third(self: TorchTranslator, bgr: np.ndarray) -> np.ndarray:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C part-way
        return real(self, bgr)

    monkeypatch.setattr(TorchTranslator, "__call__", stop_at_third)
    with pytest.raises(KeyboardInterrupt):
        derive.translate(translator_ckpt, "gen_s2t", spec, out, preview=0, progress=False)
    assert not (out / "manifest.json").exists()
    files = sorted(p for p in out.rglob("*.png"))
    assert len(files) == 4  # two images and their labels
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files}
    calls.clear()
    manifest = derive.translate(translator_ckpt, "gen_s2t", spec, out, preview=0,
                                progress=False)
    assert len(calls) == 2 and manifest["written"] == 4  # the two missing images + labels
    assert all((p.stat().st_ino, p.stat().st_mtime_ns) == before[p] for p in files)
    assert len(list(out.rglob("*.png"))) == 8 and manifest["count"] == 4
    assert len(open_dataset(manifest["output_spec"])) == 4
    # a re-run of a finished folder writes nothing; other settings are refused
    calls.clear()
    assert derive.translate(translator_ckpt, "gen_s2t", spec, out, preview=0,
                            progress=False)["written"] == 0 and not calls
    with pytest.raises(DeriveError, match=r"other settings \(data .*night_val"):
        derive.translate(translator_ckpt, "gen_s2t", f"synthetic:{tiny_synth}:night_val",
                         out, progress=False)


def test_translate_errors_name_the_file_and_the_fix(translator_ckpt: Path, tiny_synth: Path,
                                                    tmp_path: Path) -> None:
    spec = f"synthetic:{tiny_synth}:day_val"
    with pytest.raises(CheckpointError, match=r"has no network 'gen_t2s'; it has \['model', "
                                              r"'disc_img_t', 'gen_s2t'\]"):
        derive.translate(translator_ckpt, "gen_t2s", spec, tmp_path / "a", progress=False)
    with pytest.raises(DeriveError, match=r"gan.pt: network 'model' is a segmenter network.*"
                                          "use --network gen_s2t"):
        derive.translate(translator_ckpt, "model", spec, tmp_path / "a", progress=False)
    with pytest.raises(DeriveError, match="'disc_img_t' is a training-only network"):
        derive.translate(translator_ckpt, "disc_img_t", spec, tmp_path / "a", progress=False)
    with pytest.raises(CheckpointError, match="missing.pt: no such checkpoint"):
        derive.translate(tmp_path / "missing.pt", "gen_s2t", spec, tmp_path / "a",
                         progress=False)
    assert not (tmp_path / "a").exists()


def test_translate_into_a_read_only_folder(translator_ckpt: Path, tiny_synth: Path,
                                           readonly_dir: Path) -> None:
    with pytest.raises(OutputError, match=f"cannot write {readonly_dir}/out.*read-only") as err:
        derive.translate(translator_ckpt, "gen_s2t", f"synthetic:{tiny_synth}:day_val",
                         readonly_dir / "out", progress=False)
    assert "\n" not in str(err.value)


def test_pseudo_labels_onto_a_full_disk(tiny_checkpoint: Path, tiny_synth: Path,
                                        small_disk) -> None:  # noqa: ANN001
    small_disk.fill(leave=0)
    with pytest.raises(OutputError, match=f"cannot write {small_disk.path}/out.*disk is full"):
        derive.pseudo_label(tiny_checkpoint, f"synthetic:{tiny_synth}:day_val",
                            small_disk.path / "out", progress=False)


# --- pseudo-labels --------------------------------------------------------------------------


def _softmax(logits: torch.Tensor) -> np.ndarray:
    z = logits[0].double().numpy()
    e = np.exp(z - z.max(0, keepdims=True))
    return e / e.sum(0, keepdims=True)


def test_pseudo_labels_threshold_the_models_softmax_and_a_stream_reads_them(
        tiny_checkpoint: Path, tiny_synth: Path, tmp_path: Path) -> None:
    spec = f"synthetic:{tiny_synth}:night_train"
    data = open_dataset(spec)
    predictor, _ = TorchPredictor.from_checkpoint(str(tiny_checkpoint))
    image = data[1]["image"]
    prob = _softmax(predictor.logits(image))
    top = prob.max(0)
    threshold = float(np.round(np.median(top), 3))  # about half the pixels pass
    out = tmp_path / "pl"
    manifest = derive.pseudo_label(tiny_checkpoint, spec, out, threshold=threshold, preview=1,
                                   progress=False)
    name = data[1]["name"]
    label = cv2.imread(str(out / "labels" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
    confidence = cv2.imread(str(out / "confidence" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
    assert label.dtype == confidence.dtype == np.uint8 and label.shape == image.shape[:2]
    expected = np.where(top < threshold, 255, prob.argmax(0))
    clear = np.abs(top - threshold) > 1e-5  # float32 vs float64 at the threshold
    assert np.array_equal(label[clear], expected[clear])
    assert 0.2 < (label == 255).mean() < 0.8 and len(np.unique(label)) > 2
    assert np.abs(confidence.astype(int) - np.rint(255 * top)).max() <= 1
    assert (confidence.astype(int) == np.rint(255 * top)).mean() > 0.99
    preview = cv2.imread(str(out / "preview" / f"{data[0]['name']}.png"))[..., ::-1]
    first = cv2.imread(str(out / "labels" / f"{data[0]['name']}.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(preview[:, :64], data[0]["image"])
    assert np.array_equal(preview[:, 68:], CITYSCAPES19.palette_array()[first])
    assert manifest["threshold"] == threshold and manifest["count"] == len(data) == 16
    assert manifest["label_space"] == "cityscapes19"

    # a target stream trains on them: label and confidence from the folder
    rec = tiny_recipe(tiny_synth, tmp_path / "run")
    rec["data"]["target"] = spec
    rec["data"]["streams"] = {"target": {"pseudo_labels": str(out), "flip": False,
                                         "scale_range": [1.0, 1.0], "crop": [32, 64]}}

    class Probe:
        streams = ("source", "target")
        labelled_streams = ("source",)
        wants_crop_box = False

    recipe = from_dict(Recipe, rec)
    ms = build_streams(recipe, Probe(), CITYSCAPES19, DistInfo())  # type: ignore[arg-type]
    target = ms.streams["target"].loader.dataset
    got = target[(0, 1)]  # the whole image: no scale, no flip, a 32x64 crop
    assert np.array_equal(got["label"].numpy(), label)
    np.testing.assert_allclose(got["confidence"].numpy(), confidence / 255.0, atol=1e-7)
    batch = next(ms)
    assert sorted(batch["target"]) == ["confidence", "image", "label"]
    assert ms.provenance["target"] == {
        "data": spec, "pseudo_labels": str(out), "checkpoint": str(tiny_checkpoint.resolve()),
        "checkpoint_sha256": _sha256(tiny_checkpoint), "threshold": threshold}
    assert ms.provenance["source"]["pseudo_labels"] is None

    # a folder that does not match the stream's dataset is a one-line error naming it
    def stream_error(folder: Path, target_spec: str = spec) -> str:
        rec["data"]["target"] = target_spec
        rec["data"]["streams"]["target"]["pseudo_labels"] = str(folder)
        with pytest.raises(DeriveError) as err:
            build_streams(from_dict(Recipe, rec), Probe(),  # type: ignore[arg-type]
                          CITYSCAPES19, DistInfo())
        assert "\n" not in str(err.value) and str(folder) in str(err.value)
        return str(err.value)

    assert "but the stream reads" in stream_error(out, f"synthetic:{tiny_synth}:day_train")
    assert "edgeseg derive pseudo-label CKPT --data" in stream_error(
        out, f"synthetic:{tiny_synth}:day_train")
    part = tmp_path / "part"
    derive.pseudo_label(tiny_checkpoint, spec, part, max_images=3, preview=0, progress=False)
    assert "pseudo-labels of 3 images" in stream_error(part)
    (part / "manifest.json").unlink()
    assert "not a finished `edgeseg derive pseudo-label` output" in stream_error(part)


def test_pseudo_label_resume_and_settings(tiny_checkpoint: Path, tiny_synth: Path,
                                          tmp_path: Path) -> None:
    spec = f"synthetic:{tiny_synth}:day_val"
    out = tmp_path / "pl"
    full = derive.pseudo_label(tiny_checkpoint, spec, out, preview=0, progress=False)
    assert full["written"] == 8
    (out / "confidence" / f"{full['names'][2]}.png").unlink()
    label = out / "labels" / f"{full['names'][2]}.png"
    inode = label.stat().st_ino
    again = derive.pseudo_label(tiny_checkpoint, spec, out, preview=0, progress=False)
    assert again["written"] == 1 and label.stat().st_ino == inode
    with pytest.raises(DeriveError, match=r"other settings \(threshold 0.9 -> 0.5\)"):
        derive.pseudo_label(tiny_checkpoint, spec, out, threshold=0.5, progress=False)
    with pytest.raises(DeriveError, match=r"--threshold 1.5: expected a probability"):
        derive.pseudo_label(tiny_checkpoint, spec, tmp_path / "x", threshold=1.5,
                            progress=False)


# --- the command ---------------------------------------------------------------------------


def test_cli_derive(translator_ckpt: Path, tiny_synth: Path, tmp_path: Path,
                    capsys: pytest.CaptureFixture[str]) -> None:
    from edgeseg.cli import main

    out = tmp_path / "cli"
    done = subprocess.run(
        [sys.executable, "-m", "edgeseg.cli", "derive", "translate", str(translator_ckpt),
         "--network", "gen_s2t", "--data", f"synthetic:{tiny_synth}:day_val", "-o", str(out),
         "--max-frames", "2", "--preview", "1", "--device", "cpu"],
        capture_output=True, text=True, env=cli_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"read it as cityscapes:{out.resolve()}:day_val" in done.stdout
    assert "derive translate" in done.stderr  # the progress bar
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == 2 and len(list((out / "preview").iterdir())) == 1
    assert manifest["command_line"].startswith("edgeseg derive translate")
    # errors: one line, exit status 2
    assert main(["derive", "translate", str(translator_ckpt), "--network", "nope", "--data",
                 f"synthetic:{tiny_synth}:day_val", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgeseg derive: error:") and "has no network 'nope'" in err
    assert "\n" not in err
    with pytest.raises(SystemExit):
        main(["derive", "pseudo-label", str(translator_ckpt), "--data", "x:y", "-o", str(out),
              "--threshold", "2"])
    assert "expected a probability" in capsys.readouterr().err


# --- pairs by retrieval -----------------------------------------------------------------------


def _camvid_frames(root: Path, split: str, frames: dict[str, np.ndarray]) -> str:
    """A CamVid-layout split of unlabelled frames; returns its spec."""
    (root / "images" / "train").mkdir(parents=True, exist_ok=True)
    for name, image in frames.items():
        cv2.imwrite(str(root / "images" / "train" / f"{name}.png"), _bgr(image))
    (root / "splits").mkdir(exist_ok=True)
    (root / "splits" / f"{split}.txt").write_text("".join(f"train/{n}\n" for n in frames))
    return f"camvid:{root}:{split}"


def test_derive_pairs_finds_the_true_day_frames_and_a_stream_reads_them(
        tmp_path: Path, tiny_synth: Path, capsys: pytest.CaptureFixture) -> None:
    from edgeseg.data.align import AlignmentError
    from tests.test_align import SHIFT, corner_error, shifted_pair, texture

    root = tmp_path / "camvid"
    day = _camvid_frames(root, "day", {f"day_{s}": shifted_pair(seed=s)[0] for s in range(20, 26)})
    night = _camvid_frames(root, "night", {
        "dusk_a": shifted_pair(seed=22)[1], "dusk_b": shifted_pair(seed=24)[1],
        "dusk_c": (texture(240, 320, 99) * 0.3).astype(np.uint8)})  # no day view of it
    out = tmp_path / "pairs"
    manifest = derive.pairs(day, night, out, progress=False)
    by_night = {p["night"]: p for p in manifest["pairs"]}
    assert (by_night["dusk_a"]["day"], by_night["dusk_b"]["day"]) == ("day_22", "day_24")
    for name in ("dusk_a", "dusk_b"):
        pair = by_night[name]
        assert pair["passed"] and pair["ok"] and pair["inlier_rate"] >= 0.5
        assert corner_error(np.array(pair["matrix"]), SHIFT, 240, 320) < 1.5
        assert Path(pair["night_path"]).is_file() and Path(pair["day_path"]).is_file()
    assert not by_night["dusk_c"]["passed"] and by_night["dusk_c"]["matrix"] == np.eye(3).tolist()
    assert manifest["passed"] == manifest["summary"]["passed"] == 2
    assert len(manifest["control"]) == 3 and manifest["summary"]["control_passing"] == 0
    assert all(c["day"] not in ("day_22", "day_24") or c["night"] == "dusk_c"
               for c in manifest["control"])
    assert (out / "splits" / "pairs.txt").read_text() == "dusk_a\ndusk_b\n"
    assert (out / "splits" / "all.txt").read_text() == "dusk_a\ndusk_b\ndusk_c\n"
    assert "2 of 3 night frames paired" in derive.pairs_summary(manifest)

    pairs = open_dataset(f"derived_pairs:{out}")
    assert len(pairs) == 2 and pairs.label_space.name == "camvid11" and not pairs.has_labels
    sample = pairs[0]
    assert sorted(sample) == ["homography", "image", "label", "name", "night"]
    assert sample["name"] == "dusk_a" and sample["label"] is None
    assert sample["homography"].dtype == np.float32
    assert corner_error(sample["homography"].astype(float), SHIFT, 240, 320) < 1.5
    assert np.array_equal(open_dataset(f"derived_pairs:{out}:all")[2]["homography"],
                          np.eye(3, dtype=np.float32))

    # a pairs stream reads the folder: the homography reaches the batch without align
    rec = tiny_recipe(tiny_synth, tmp_path / "run")
    rec["data"]["pairs"] = f"derived_pairs:{out}"

    class Probe:
        streams = ("source", "pairs")
        labelled_streams = ("source",)
        wants_crop_box = False

    batch = next(build_streams(from_dict(Recipe, rec), Probe(), CITYSCAPES19,  # type: ignore[arg-type]
                               DistInfo()))
    assert sorted(batch["pairs"]) == ["homography", "image", "night"]
    assert batch["pairs"]["homography"].shape == (2, 3, 3)

    # the command line, a rerun with other settings, and a folder where nothing passed
    from argparse import ArgumentParser

    parser = ArgumentParser()
    derive.add_arguments(parser)
    assert derive.run(parser.parse_args(["pairs", "--day", day, "--night", night, "-o",
                                         str(out), "--no-progress"])) == 0
    assert "2 of 3 night frames paired" in capsys.readouterr().out
    with pytest.raises(DeriveError, match="min_inlier_rate 0.5 -> 0.9"):
        derive.pairs(day, night, out, min_inlier_rate=0.9, progress=False)
    strict = tmp_path / "strict"
    derive.pairs(day, night, strict, min_inliers=10_000, progress=False)
    with pytest.raises(AlignmentError, match=f"no pair of {strict} passed.*:all"):
        open_dataset(f"derived_pairs:{strict}")
    with pytest.raises(AlignmentError, match="not a finished `edgeseg derive pairs` output"):
        open_dataset(f"derived_pairs:{tmp_path}")
