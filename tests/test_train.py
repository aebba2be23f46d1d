"""Trainer: exact resume, Ctrl-C, DDP with gloo, checkpoints, method plumbing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from edgeseg.config import ConfigError, Recipe, from_dict, to_dict
from edgeseg.train.checkpoint import CheckpointError, load_checkpoint, load_model
from edgeseg.train.schedule import lr_factor
from edgeseg.train.trainer import EXIT_INTERRUPTED, Trainer
from tests.conftest import cli_env, tiny_recipe


def _recipe(synth: Path, out: Path, **over: object) -> Recipe:
    return from_dict(Recipe, tiny_recipe(synth, out, **over))


def _write_recipe(path: Path, synth: Path, out: Path, **over: object) -> Path:
    path.write_text(yaml.safe_dump(tiny_recipe(synth, out, **over)))
    return path


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("workers", [0, 1])
def test_resume_is_bit_exact(tiny_synth: Path, tmp_path: Path, workers: int) -> None:
    """N+M iterations in one run == N iterations, resume, M iterations."""
    one = Trainer(_recipe(tiny_synth, tmp_path / "one", train__iterations=5,
                          data__workers=workers), progress=False)
    assert one.run() == 0
    first = Trainer(_recipe(tiny_synth, tmp_path / "two", train__iterations=5,
                            data__workers=workers), progress=False)
    assert first.run(until=3) == 0
    resumed = Trainer(_recipe(tiny_synth, tmp_path / "two", train__iterations=5,
                              data__workers=workers),
                      resume=str(tmp_path / "two" / "last.pt"), progress=False)
    assert resumed.iteration == 3
    assert resumed.run() == 0
    a = load_checkpoint(tmp_path / "one" / "last.pt")
    b = load_checkpoint(tmp_path / "two" / "last.pt")
    assert a["iteration"] == b["iteration"] == 5
    _assert_same_state(a["model"], b["model"])
    opt_a = a["method_state"]["optimizers"]["model"]["state"]
    opt_b = b["method_state"]["optimizers"]["model"]["state"]
    for k in opt_a:
        assert torch.equal(opt_a[k]["momentum_buffer"], opt_b[k]["momentum_buffer"])
    assert a["streams"] == b["streams"]
    # and the run really trained: weights moved away from the initialisation
    init = Trainer(_recipe(tiny_synth, tmp_path / "init"), progress=False).model.state_dict()
    assert any(not torch.equal(init[k], a["model"][k]) for k in init if init[k].is_floating_point())


def test_existing_run_needs_resume(tiny_synth: Path, tmp_path: Path) -> None:
    assert Trainer(_recipe(tiny_synth, tmp_path, train__iterations=1), progress=False).run() == 0
    with pytest.raises(ValueError, match="--resume"):
        Trainer(_recipe(tiny_synth, tmp_path), progress=False)


def test_num_classes_must_match_label_space(tiny_synth: Path, tmp_path: Path) -> None:
    rec = tiny_recipe(tiny_synth, tmp_path)
    rec["model"]["num_classes"] = 11
    with pytest.raises(ValueError, match="num_classes=11"):
        Trainer(from_dict(Recipe, rec), progress=False)


def test_validation_and_best_checkpoint(tiny_synth: Path, tmp_path: Path) -> None:
    trainer = Trainer(_recipe(tiny_synth, tmp_path, train__iterations=2, train__val_every=2),
                      progress=False)
    assert trainer.run() == 0
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    val = [x for x in lines if x["type"] == "val"]
    assert len(val) == 1 and 0.0 <= val[0]["miou"] <= 1.0
    train = [x for x in lines if x["type"] == "train"]
    assert [x["iter"] for x in train] == [1, 2] and all(x["images_per_sec"] > 0 for x in train)
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["best"]["value"] == pytest.approx(val[0]["miou"])
    assert (best["best"]["criterion"], best["best"]["data"]) == ("miou", val[0]["data"])
    assert (tmp_path / "recipe.yaml").exists()


def test_select_on_must_name_a_val_split_or_entropy(tiny_synth: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not one of data.val"):
        _recipe(tiny_synth, tmp_path, train__select_on=f"synthetic:{tiny_synth}:day_val")
    with pytest.raises(ValueError, match="needs a dataset spec"):
        _recipe(tiny_synth, tmp_path, train__select_on="entropy:")
    with pytest.raises(ValueError, match="select_classes applies to an mIoU criterion"):
        _recipe(tiny_synth, tmp_path, train__select_on=f"entropy:{tiny_synth}",
                train__select_classes=["car"])
    with pytest.raises(ConfigError, match=r"select_classes: \['cat'\] are not classes of "
                                          "cityscapes19"):
        Trainer(_recipe(tiny_synth, tmp_path, train__select_classes=["car", "cat"]),
                progress=False)


def test_mean_entropy_by_hand(tiny_synth: Path, tmp_path: Path) -> None:
    """A segmenter whose classifier ignores its features predicts softmax(bias) everywhere:
    the mean entropy is -sum p log p of that bias, computed here by hand."""
    trainer = Trainer(_recipe(tiny_synth, tmp_path, train__val_max_images=2), progress=False)
    head = trainer.model.head.classifier
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
    spec = f"synthetic:{tiny_synth}:night_train"  # unlabelled use: no labels are read
    assert trainer.mean_entropy(spec) == pytest.approx(float(np.log(19)), rel=1e-5)
    bias = np.full(19, -4.0)
    bias[0], bias[1] = 2.0, 1.0
    with torch.no_grad():
        head.bias.copy_(torch.from_numpy(bias))
    p = np.exp(bias) / np.exp(bias).sum()
    assert trainer.mean_entropy(spec) == pytest.approx(float(-(p * np.log(p)).sum()), rel=1e-5)


@pytest.mark.parametrize("select", ["second", "entropy", "classes"])
def test_best_checkpoint_follows_select_on(tiny_synth: Path, tmp_path: Path,
                                           select: str) -> None:
    day, night = f"synthetic:{tiny_synth}:day_val", f"synthetic:{tiny_synth}:night_val"
    target = f"synthetic:{tiny_synth}:night_train"
    choice = f"entropy:{target}" if select == "entropy" else night
    classes = ["road", "sky", "car"] if select == "classes" else []
    recipe = _recipe(tiny_synth, tmp_path, train__iterations=6, train__val_every=2,
                     train__val_max_images=2, train__select_on=choice,
                     train__select_classes=classes)
    recipe = from_dict(Recipe, {**to_dict(recipe),
                                "data": {**to_dict(recipe.data), "val": [day, night]}})
    assert Trainer(recipe, progress=False).run() == 0
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    best = load_checkpoint(tmp_path / "best.pt")
    if select == "classes":  # the mean IoU of three classes, recomputed from the log
        scored = [(float(np.nanmean([np.nan if x["per_class"][c] is None else x["per_class"][c]
                                     for c in classes])), x["iter"])
                  for x in lines if x["type"] == "val" and x["data"] == night]
        want = max(scored, key=lambda v: (v[0], -v[1]))
        assert best["best"]["classes"] == classes
        assert best["best"]["value"] == pytest.approx(want[0])
    elif select == "second":
        scored = [(x["miou"], x["iter"]) for x in lines if x["type"] == "val" and x["data"] == night]
        want = max(scored, key=lambda v: (v[0], -v[1]))  # the first of equal scores is kept
        assert (best["best"]["criterion"], best["best"]["data"]) == ("miou", night)
    else:
        scored = [(-x["entropy"], x["iter"]) for x in lines if "entropy" in x]
        want = max(scored, key=lambda v: (v[0], -v[1]))
        assert (best["best"]["criterion"], best["best"]["data"]) == ("entropy", choice)
    assert [it for _, it in scored] == [2, 4, 6]
    assert best["iteration"] == best["best"]["iter"] == want[1]


def test_checkpoint_rebuilds_model_without_recipe(tiny_synth: Path, tmp_path: Path) -> None:
    trainer = Trainer(_recipe(tiny_synth, tmp_path, train__iterations=1), progress=False)
    trainer.run()
    model, ckpt = load_model(tmp_path / "last.pt")
    assert ckpt["label_space"] == "cityscapes19" and ckpt["method"] == "source_only"
    out = model(torch.zeros(1, 3, 40, 56))
    assert out.shape == (1, 19, 40, 56)


def test_corrupt_and_foreign_checkpoints(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=str(bad)):
        load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not an edgeseg checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_ctrl_c_saves_resumable_checkpoint(tiny_synth: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    recipe = _write_recipe(tmp_path / "r.yaml", tiny_synth, out, train__iterations=10_000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeseg.cli", "train", str(recipe), "--no-progress"],
        env=cli_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, output
    assert "Traceback" not in output
    ckpt = load_checkpoint(out / "last.pt")
    stopped = ckpt["iteration"]
    assert 3 <= stopped < 10_000
    assert "--resume" in output
    # resume and finish a few more iterations
    resumed = Trainer(_recipe(tiny_synth, out, train__iterations=stopped + 2),
                      resume=str(out / "last.pt"), progress=False)
    assert resumed.run() == 0
    assert load_checkpoint(out / "last.pt")["iteration"] == stopped + 2


def test_ddp_two_processes_gloo(tiny_synth: Path, tmp_path: Path) -> None:
    """torchrun with 2 CPU processes: trains, rank 0 writes one checkpoint, and the
    sharded validation (confusion matrices summed over ranks) equals a single-process
    evaluation of the saved model."""
    out = tmp_path / "ddp"
    recipe = _write_recipe(tmp_path / "r.yaml", tiny_synth, out, train__iterations=3,
                           train__val_every=3)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "edgeseg.cli", "train", str(recipe), "--no-progress"]
    res = subprocess.run(cmd, env=cli_env(), cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["iteration"] == 3
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["type"] == "train" for r in records) == 3  # rank 0 logs once per iteration
    val = [r for r in records if r["type"] == "val"][0]

    from edgeseg.data import open_dataset
    from edgeseg.evaluate import evaluate
    from edgeseg.train.predict import TorchPredictor

    predictor, _ = TorchPredictor.from_checkpoint(str(out / "best.pt"))
    single = evaluate(predictor, open_dataset(f"synthetic:{tiny_synth}:night_val"),
                      "cityscapes19", progress=False)
    assert single.metrics.num_pixels == val["num_pixels"]
    assert single.metrics.miou == pytest.approx(val["miou"], abs=1e-6)


def test_target_labels_never_reach_the_method(tiny_synth: Path, tmp_path: Path) -> None:
    from edgeseg.train.methods import METHODS
    from edgeseg.train.methods.source_only import SourceOnly

    seen: list[dict] = []

    class Probe(SourceOnly):
        name = "probe"
        streams = ("source", "target")

        def train_step(self, batch, iteration):  # noqa: ANN001, ANN202
            seen.append({k: sorted(v) for k, v in batch.items()})
            return super().train_step(batch, iteration)

    METHODS["probe"] = Probe
    try:
        rec = tiny_recipe(tiny_synth, tmp_path, train__iterations=1)
        rec["method"] = {"name": "probe"}
        rec["data"]["target"] = f"synthetic:{tiny_synth}:night_train"
        assert Trainer(from_dict(Recipe, rec), progress=False).run() == 0
    finally:
        del METHODS["probe"]
    assert seen == [{"source": ["image", "label"], "target": ["image"]}]


def test_unknown_method_params_are_errors(tiny_synth: Path, tmp_path: Path) -> None:
    rec = tiny_recipe(tiny_synth, tmp_path)
    rec["method"] = {"name": "source_only", "params": {"lambda_sem": 0.1}}
    with pytest.raises(ValueError, match="method.params.lambda_sem"):
        Trainer(from_dict(Recipe, rec), progress=False)


def test_poly_schedule_and_warmup() -> None:
    assert lr_factor(0, 100) == 1.0
    assert lr_factor(50, 100, power=1.0) == pytest.approx(0.5)
    assert lr_factor(100, 100) == 0.0
    assert lr_factor(4, 100, warmup_iters=10) == pytest.approx(0.5)
    assert lr_factor(25, 100, "step", step_size=10, gamma=0.5) == pytest.approx(0.25)


@pytest.mark.parametrize("freeze_bn", [False, True])
def test_source_only_freeze_bn_keeps_running_statistics(tiny_synth: Path, tmp_path: Path,
                                                        freeze_bn: bool) -> None:
    """Batch-1 fine-tuning control: BN statistics fixed, weights still trained."""
    recipe = from_dict(Recipe, tiny_recipe(tiny_synth, tmp_path / "run", data__batch_size=1,
                                           train__iterations=3)
                       | {"method": {"name": "source_only", "params": {"freeze_bn": freeze_bn}}})
    trainer = Trainer(recipe, progress=False)
    bn = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    stats, weight = bn.running_mean.clone(), bn.weight.detach().clone()
    assert trainer.run() == 0
    assert torch.equal(bn.running_mean, stats) == freeze_bn
    assert not torch.equal(bn.weight, weight)


def test_source_only_median_frequency_weights_by_hand(tiny_synth: Path, tmp_path: Path) -> None:
    """SegNet's balancing: w_k = median(freq) / freq_k, freq_k = class k's pixels over the
    pixels of the images containing k; the weighted CE is sum w_y * nll / sum w_y."""
    from edgeseg.data import open_dataset

    recipe = from_dict(Recipe, tiny_recipe(tiny_synth, tmp_path / "run", train__iterations=1)
                       | {"method": {"name": "source_only",
                                     "params": {"class_weights": "median_frequency"}}})
    trainer = Trainer(recipe, progress=False)
    pixels, image_pixels = np.zeros(19), np.zeros(19)
    for sample in open_dataset(f"synthetic:{tiny_synth}:day_train", "cityscapes19"):
        ids = np.asarray(sample["label"]).ravel()
        ids = ids[ids != 255]
        for k in np.unique(ids):
            pixels[k] += (ids == k).sum()
            image_pixels[k] += ids.size
    present = pixels > 0
    assert 2 < present.sum() < 19  # some classes absent: they keep weight 1
    freq = np.where(present, pixels / np.maximum(image_pixels, 1), 0.0)
    want = np.ones(19)
    want[present] = np.median(freq[present]) / freq[present]
    method = trainer.method
    assert method.class_weights.tolist() == pytest.approx(want.tolist(), rel=1e-5)

    # inside the method: the logged loss is the weighted CE of the model's own output
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 48, generator=gen)
    y = torch.randint(0, 19, (2, 32, 48), generator=gen)
    y[0, :4] = 255
    model = method.net("model")
    torch.manual_seed(5)  # the same dropout masks in both forwards
    with torch.no_grad():
        logp = torch.log_softmax(model(x).float(), 1)
    valid = y != 255
    ys = y[valid]
    nll = -logp.permute(0, 2, 3, 1)[valid].gather(1, ys[:, None])[:, 0]
    w = torch.tensor(want, dtype=torch.float32)[ys]
    torch.manual_seed(5)
    logged = method.train_step({"source": {"image": x, "label": y}}, 0)
    assert logged["loss_seg_src"] == pytest.approx(float((w * nll).sum() / w.sum()), rel=1e-4)
    assert logged["loss_seg_src"] != pytest.approx(float(nll.mean()), rel=1e-3)
    assert trainer.run() == 0
    notes = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    note = next(n for n in notes if n.get("type") == "method")
    assert note["class_weights"]["road"] == pytest.approx(want[0], rel=1e-3)


def test_low_light_reaches_the_streams_it_is_set_for(tiny_synth: Path, tmp_path: Path) -> None:
    rec = tiny_recipe(tiny_synth, tmp_path / "run", train__iterations=1)
    rec["method"] = {"name": "mobilenet_uda"}
    rec["data"]["target"] = f"synthetic:{tiny_synth}:night_train"
    rec["data"]["low_light"] = {"p": 0.5, "gamma": [1.2, 2.0]}
    rec["data"]["streams"] = {"target": {"low_light": {"p": 0.0}}}
    trainer = Trainer(from_dict(Recipe, rec), progress=False)
    source = trainer.streams.streams["source"].loader.dataset.transform.low_light
    assert (source.p, source.gamma) == (0.5, (1.2, 2.0))
    assert trainer.streams.streams["target"].loader.dataset.transform.low_light is None


def test_median_frequency_counts_in_the_recipes_label_space_and_image_budget(
        tiny_synth: Path, tmp_path: Path) -> None:
    from edgeseg.data import open_dataset
    from edgeseg.train.nets.losses import class_frequencies, median_frequency_weights

    def weights(**params: object) -> list[float]:
        rec = tiny_recipe(tiny_synth, tmp_path / "run", model__num_classes=11)
        rec["data"]["label_space"] = "camvid11"
        rec["data"]["val"] = []
        rec["method"] = {"name": "source_only",
                         "params": {"class_weights": "median_frequency", **params}}
        return Trainer(from_dict(Recipe, rec), progress=False).method.class_weights.tolist()

    source = open_dataset(f"synthetic:{tiny_synth}:day_train", "camvid11")  # mapped labels
    for budget in (None, 3):
        want = median_frequency_weights(class_frequencies(
            source, 11, max_images=budget, per_present_image=True)).tolist()
        assert weights(frequency_images=budget) == pytest.approx(want, rel=1e-6)
    assert weights(frequency_images=3) != pytest.approx(weights(), rel=1e-3)
