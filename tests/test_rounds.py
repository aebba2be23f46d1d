"""``edgeseg rounds``: translator and segmenter trainings alternated with derived data, as
the semantically adaptive I2I paper's outer loop; chaining, stopping and resuming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from edgeseg.config import ConfigError
from edgeseg.train import rounds
from edgeseg.train.checkpoint import load_checkpoint
from tests.conftest import tiny_recipe

pytestmark = pytest.mark.usefixtures("one_thread")

TRANSLATOR = {"ngf": 4, "enc_blocks": 1, "gen_blocks": 1, "spade_hidden": 8, "ndf": 4,
              "disc_layers": 2, "disc_scales": 2}
D_SEG = {"disc_channels": [4, 4, 4, 4, 1], "disc_strides": [2, 2, 2, 2, 2]}


def _recipes(synth: Path, start: Path, folder: Path) -> tuple[Path, Path]:
    """A 1-iteration translate recipe and a 2-iteration segment recipe (tiny nets) whose
    best.pt is chosen by the label-free entropy on night_val."""
    t = tiny_recipe(synth, folder / "unused", data__crop=[32, 64], train__iterations=1)
    t["data"]["target"] = f"synthetic:{synth}:night_train"
    t["data"]["val"] = []
    t["model"]["init_from"] = str(start)
    t["method"] = {"name": "sait_translate", "params": TRANSLATOR}
    s = tiny_recipe(synth, folder / "unused", data__crop=[32, 64], train__iterations=2)
    s["data"]["source"] = "set by the rounds"
    s["data"]["target"] = f"synthetic:{synth}:night_train"
    s["data"]["val"] = []
    s["data"]["streams"] = {"target": {"pseudo_labels": "set by the rounds"}}
    s["train"]["select_on"] = f"entropy:synthetic:{synth}:night_val"
    s["train"]["val_every"] = 2
    s["method"] = {"name": "sait_segment", "params": D_SEG}
    paths = folder / "translate.yaml", folder / "segment.yaml"
    for path, recipe in zip(paths, (t, s)):
        path.write_text(yaml.safe_dump(recipe))
    return paths


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def two_rounds(tiny_synth: Path, tiny_checkpoint: Path,
               tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("rounds")
    translate, segment = _recipes(tiny_synth, tiny_checkpoint, folder)
    scores = iter([-0.9, -0.5])  # round 2 improves: both rounds run
    real_best = rounds._best

    def scripted(run: Path) -> dict:
        return {**real_best(run), "score": next(scores)}

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rounds, "_best", scripted)
        state = rounds.run_rounds(str(translate), str(segment), folder / "out", 2,
                                  progress=False)
    return folder / "out", state


def test_each_round_chains_the_previous_segmenter_and_translator(
        two_rounds: tuple[Path, dict], tiny_checkpoint: Path) -> None:
    out, state = two_rounds
    r1, r2 = out / "round1", out / "round2"
    # round 1: M_0 is the translate recipe's model.init_from, frozen in the translate run
    t1 = load_checkpoint(r1 / "translate" / "last.pt")
    assert _same_weights(t1["model"], load_checkpoint(tiny_checkpoint)["model"])
    # the translated source is the composite S->T translator's, labels copied
    manifest = json.loads((r1 / "translated" / "manifest.json").read_text())
    assert manifest["network"] == "translator_s2t" and manifest["labelled"]
    pseudo = json.loads((r1 / "pseudo" / "manifest.json").read_text())
    assert pseudo["checkpoint"] == str(tiny_checkpoint.resolve()) and pseudo["threshold"] == 0.9
    s1 = yaml.safe_load((r1 / "segment" / "recipe.yaml").read_text())
    assert s1["data"]["source"] == manifest["output_spec"]
    assert s1["data"]["streams"]["target"]["pseudo_labels"] == str(r1 / "pseudo")
    assert s1["model"]["init_from"] == str(tiny_checkpoint)
    # round 2: the round-1 segmenter guides the translator, labels the target, starts M
    best1 = str(r1 / "segment" / "best.pt")
    t2 = yaml.safe_load((r2 / "translate" / "recipe.yaml").read_text())
    assert t2["model"]["init_from"] == best1
    assert set(t2["method"]["init_from"]) == set(rounds.CONTINUED)
    assert all(v["checkpoint"] == str(r1 / "translate" / "last.pt")
               for v in t2["method"]["init_from"].values())
    assert _same_weights(load_checkpoint(r2 / "translate" / "last.pt")["model"],
                         load_checkpoint(best1)["model"])
    pseudo2 = json.loads((r2 / "pseudo" / "manifest.json").read_text())
    assert pseudo2["checkpoint"] == str(Path(best1).resolve())
    assert yaml.safe_load((r2 / "segment" / "recipe.yaml").read_text())["model"][
        "init_from"] == best1
    # the record
    saved = json.loads((out / rounds.STATE).read_text())
    assert saved == state
    assert [e["round"] for e in state["rounds"]] == [1, 2]
    assert all(e["improved"] for e in state["rounds"])
    assert state["result"] == str(r2 / "segment" / "best.pt")
    assert state["criterion"].startswith("entropy on synthetic:")
    assert state["criterion"].endswith("(label-free)")


def test_a_finished_round_is_not_trained_again(two_rounds: tuple[Path, dict],
                                              tiny_synth: Path, tiny_checkpoint: Path) -> None:
    out, _ = two_rounds
    folder = out.parent
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("last.pt")}
    images = {p: p.stat().st_mtime_ns for p in (out / "round1" / "translated").rglob("*.png")}
    scores = iter([-0.9, -0.5])
    real_best = rounds._best
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rounds, "_best", lambda run: {**real_best(run), "score": next(scores)})
        rounds.run_rounds(str(folder / "translate.yaml"), str(folder / "segment.yaml"), out, 2,
                          progress=False)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("last.pt")} == stamps
    assert {p: p.stat().st_mtime_ns
            for p in (out / "round1" / "translated").rglob("*.png")} == images


def test_the_loop_stops_when_a_round_does_not_improve(tiny_synth: Path, tiny_checkpoint: Path,
                                                    tmp_path: Path) -> None:
    translate, segment = _recipes(tiny_synth, tiny_checkpoint, tmp_path)
    scores = iter([-0.5, -0.9, -0.1])  # round 2 is worse: no round 3
    real_best = rounds._best
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rounds, "_best", lambda run: {**real_best(run), "score": next(scores)})
        state = rounds.run_rounds(str(translate), str(segment), tmp_path / "out", 3,
                                  progress=False)
    assert [(e["round"], e["improved"]) for e in state["rounds"]] == [(1, True), (2, False)]
    assert state["result"] == str(tmp_path / "out" / "round1" / "segment" / "best.pt")
    assert not (tmp_path / "out" / "round3").exists()


def test_best_reads_what_chose_the_checkpoint(two_rounds: tuple[Path, dict]) -> None:
    out, _ = two_rounds
    best = rounds._best(out / "round1" / "segment")
    stored = load_checkpoint(out / "round1" / "segment" / "best.pt")["best"]
    assert best["criterion"] == "entropy" and best["score"] == stored["score"] == -stored["value"]


def test_bad_arguments_are_one_line(tiny_synth: Path, tiny_checkpoint: Path,
                                    tmp_path: Path) -> None:
    translate, segment = _recipes(tiny_synth, tiny_checkpoint, tmp_path)
    with pytest.raises(ConfigError, match="--rounds 0: need at least 1"):
        rounds.run_rounds(str(translate), str(segment), tmp_path / "o", 0)
    recipe = yaml.safe_load(translate.read_text())
    del recipe["model"]["init_from"]
    translate.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError, match="model.init_from is not set and no --start"):
        rounds.run_rounds(str(translate), str(segment), tmp_path / "o", 1)
