"""Stage chaining on tiny data: a UDA stage, its translator deriving a translated source,
a second stage started from the first, its pseudo-labels on the target, and a
self-training round on them; each stage records what it was made from."""

from __future__ import annotations

from pathlib import Path

import torch

from edgeseg.config import Recipe, from_dict
from edgeseg.fileio import sha256_file
from edgeseg.train import checkpoint as ckpt_io
from edgeseg.train.derive import pseudo_label, read_manifest, translate
from edgeseg.train.trainer import Trainer
from tests.conftest import tiny_recipe


def _train(rec: dict) -> Path:
    assert Trainer(from_dict(Recipe, rec), progress=False).run() == 0
    return Path(rec["output_dir"]) / "last.pt"


def test_translate_then_train_then_pseudo_label_then_self_train(tiny_synth: Path,
                                                                tmp_path: Path) -> None:
    day, night = f"synthetic:{tiny_synth}:day_train", f"synthetic:{tiny_synth}:night_train"
    # stage 1: translators and a segmenter (mobilenet_uda)
    rec = tiny_recipe(tiny_synth, tmp_path / "s1", data__crop=[32, 64], train__iterations=2)
    rec["data"]["target"] = night
    rec["method"] = {"name": "mobilenet_uda", "params": {
        "ngf": 8, "n_blocks": 1, "ndf": 8, "feat_ndf": 8, "pool_size": 3}}
    stage1 = _train(rec)

    # the source translated by stage 1's G_S->T, labels kept
    translated = tmp_path / "day_as_night"
    manifest = translate(stage1, "gen_s2t", day, translated, preview=1, progress=False)
    assert manifest["checkpoint_sha256"] == sha256_file(stage1) and manifest["count"] == 16

    # stage 2: supervised on the translated source, segmenter started from stage 1
    rec = tiny_recipe(tiny_synth, tmp_path / "s2", train__iterations=2)
    rec["data"]["source"] = manifest["output_spec"]
    rec["model"]["init_from"] = str(stage1)
    trainer = Trainer(from_dict(Recipe, rec), progress=False)
    start = ckpt_io.load_checkpoint(stage1)["model"]
    assert all(torch.equal(trainer.model.state_dict()[k], v) for k, v in start.items())
    assert trainer.run() == 0
    stage2 = tmp_path / "s2" / "last.pt"
    assert ckpt_io.load_checkpoint(stage2)["datasets"] == {"source": manifest["output_spec"]}

    # pseudo-labels of the target by stage 2, then a self-training round on them
    labels = tmp_path / "night_pl"
    pseudo_label(stage2, night, labels, threshold=0.0, preview=0, progress=False)
    assert read_manifest(labels, "pseudo-label")["checkpoint_sha256"] == sha256_file(stage2)
    rec = tiny_recipe(tiny_synth, tmp_path / "s3", train__iterations=2)
    rec["data"]["source"] = night
    rec["data"]["streams"] = {"source": {"pseudo_labels": str(labels)}}
    rec["model"]["init_from"] = str(stage2)
    stage3 = _train(rec)
    made_by = ckpt_io.load_checkpoint(stage3)["data_provenance"]["source"]
    assert made_by["pseudo_labels"] == str(labels)
    assert made_by["checkpoint_sha256"] == sha256_file(stage2)
