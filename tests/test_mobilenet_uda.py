"""method: mobilenet_uda — losses, gradient routing, warm-up, ablations, resume, init_from."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from edgeseg.config import ConfigError, Recipe, from_dict
from edgeseg.models import build_model
from edgeseg.train.checkpoint import CheckpointError, load_checkpoint
from edgeseg.train.distributed import DistInfo
from edgeseg.train.methods import MethodContext, get_method
from edgeseg.train.methods.mobilenet_uda import MobileNetUDA, Params, semantic_consistency_loss
from edgeseg.train.nets.cyclegan import ImageRange, cycle_loss
from edgeseg.train.trainer import Trainer
from tests.conftest import cli_env, tiny_recipe
from tests.net_checks import ConstantD, assert_same_tree, run_ddp
from tests.net_checks import has_grad as _has_grad
from tests.net_checks import no_grad as _no_grad
from tests.net_checks import same as _same
from tests.net_checks import snapshot as _snapshot

TINY = {"ngf": 8, "n_blocks": 1, "ndf": 8, "feat_ndf": 8, "pool_size": 3}
GENERATORS = ("gen_s2t", "gen_t2s")


def _uda_recipe(synth: Path, out: Path, iterations: int = 4, **params: Any) -> dict:
    rec = tiny_recipe(synth, out, data__crop=[32, 64], train__iterations=iterations)
    rec["data"]["target"] = f"synthetic:{synth}:night_train"
    rec["method"] = {"name": "mobilenet_uda", "params": {**TINY, **params}}
    rec["optim"] = {"name": "adam", "lr": 1e-3, "weight_decay": 4e-5}
    return rec


def _method(**params: Any) -> MobileNetUDA:
    """The method without a trainer (no data needed): 4 iterations, batch of 2."""
    torch.set_num_threads(1)  # as the trainer tests (train.threads: 1): tiny ops, shared CPU
    torch.manual_seed(0)
    recipe = from_dict(Recipe, _uda_recipe(Path("/nonexistent"), Path("/nonexistent"), **params))
    ctx = MethodContext(recipe, build_model(recipe.model), torch.device("cpu"), DistInfo(), False)
    return MobileNetUDA(ctx, from_dict(Params, recipe.method.params, "method.params"))


def _batch(seed: int = 0, n: int = 2) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {"source": {"image": torch.randn(n, 3, 32, 64, generator=g),
                       "label": torch.randint(0, 19, (n, 32, 64), generator=g)},
            "target": {"image": torch.randn(n, 3, 32, 64, generator=g)}}


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float noise relative to ``b``'s scale (a fresh M's encoder features
    are ~1e-7, so an absolute tolerance would accept any two of them)."""
    scale = b.abs().max().item()
    return a.shape == b.shape and scale > 0 and torch.allclose(a, b, rtol=1e-4, atol=1e-5 * scale)


# --- losses against hand computations -----------------------------------------------


def test_cycle_loss_is_mean_l1() -> None:
    rec = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    assert cycle_loss(rec, torch.ones_like(rec)).item() == pytest.approx((1 + 0 + 1 + 2) / 4)


def test_semantic_loss_uses_argmax_pseudo_labels() -> None:
    # two pixels; M on the original says class 2, then class 0
    original = torch.tensor([[[[0.1, 5.0]], [[0.2, 1.0]], [[3.0, -1.0]]]], requires_grad=True)
    translated = torch.tensor([[[[1.0, 0.0]], [[2.0, 0.0]], [[3.0, 0.0]]]], requires_grad=True)
    loss = semantic_consistency_loss(translated, original)
    pixel0 = -math.log(math.exp(3) / (math.exp(1) + math.exp(2) + math.exp(3)))
    pixel1 = math.log(3)
    assert loss.item() == pytest.approx((pixel0 + pixel1) / 2, rel=1e-6)
    loss.backward()
    assert original.grad is None and translated.grad is not None  # argmax: no gradient


def test_image_range_conversion() -> None:
    from edgeseg.data.transforms import to_chw_float

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    conv = ImageRange(mean, std, torch.device("cpu"))
    pixels = torch.tensor([[[0, 255], [128, 64]]] * 3, dtype=torch.uint8).permute(1, 2, 0).numpy()
    x = torch.from_numpy(to_chw_float(pixels, mean, std))[None]  # what a batch holds
    gan = conv.to_gan(x)
    assert torch.allclose(gan[0, :, 0, 0], torch.full((3,), -1.0), atol=1e-6)  # black
    assert torch.allclose(gan[0, :, 0, 1], torch.full((3,), 1.0), atol=1e-6)  # white
    assert torch.allclose(conv.to_seg(gan), x, atol=1e-5)


def test_gan_lr_schedules() -> None:
    m = _method(freeze_model_fraction=0.5)  # 4 iterations: M frozen for 2
    gan = m.optim_config("gan")  # the paper's Adam: beta1 0.5, LR 2e-4, constant
    assert (gan.name, gan.lr, gan.betas, gan.schedule) == ("adam", 2e-4, (0.5, 0.999), "constant")
    assert m.optimizers["disc_img_t"].param_groups[0]["betas"] == (0.5, 0.999)
    assert m.schedules["model"](0) == m.schedules["model"](1) == 0.0
    assert 0 < m.schedules["model"](2) < 1.0  # poly over the whole run
    assert m.schedules["gen_s2t"](3) == 1.0


def test_feature_adversarial_losses_and_inputs() -> None:
    m = _method()
    d_t, d_s = ConstantD(0.3), ConstantD(-0.2)
    m.networks["disc_feat_t"], m.networks["disc_feat_s"] = d_t, d_s
    m.set_model_mode(frozen=True)  # eval mode: deterministic M
    batch = _batch()
    losses, cache = m.generator_losses(batch)
    assert losses["loss_feat_t"].item() == pytest.approx((0.3 - 1) ** 2)  # fakes scored as real
    assert losses["loss_feat_s"].item() == pytest.approx((-0.2 - 1) ** 2)
    disc = m.discriminator_losses(cache)
    assert disc["loss_disc_feat_t"].item() == pytest.approx(0.5 * ((0.3 - 1) ** 2 + 0.3**2))
    assert disc["loss_disc_feat_s"].item() == pytest.approx(0.5 * ((-0.2 - 1) ** 2 + 0.2**2))

    # what each discriminator saw: M_e of translations (fake) and of originals (real)
    x_s, x_t = batch["source"]["image"], batch["target"]["image"]
    gen_s2t, gen_t2s, model = (m.networks[k] for k in ("gen_s2t", "gen_t2s", "model"))
    with torch.no_grad():
        def encoder(x: torch.Tensor) -> torch.Tensor:
            return model(x, features=True)["out"]

        fake_t_feat = encoder(m.images.to_seg(gen_s2t(m.images.to_gan(x_s))))
        fake_s_feat = encoder(m.images.to_seg(gen_t2s(m.images.to_gan(x_t))))
        real_t_feat, real_s_feat = encoder(x_t), encoder(x_s)
    assert _close(d_t.inputs[0], fake_t_feat)
    assert _close(d_s.inputs[0], fake_s_feat)
    real, fake = d_t.inputs[1].split(2)
    assert _close(real, real_t_feat) and _close(fake, fake_t_feat)
    real, fake = d_s.inputs[1].split(2)
    assert _close(real, real_s_feat) and _close(fake, fake_s_feat)
    assert not _close(real_s_feat, real_t_feat)  # the features tell the images apart


# --- gradient routing -------------------------------------------------------------------


def test_discriminator_step_changes_no_generator_or_segmenter_weight() -> None:
    m = _method(freeze_model_fraction=0.0)
    discs = {n: _snapshot(m.networks[n]) for n in m.discriminators}
    _, cache = m.generator_step(_batch(), iteration=0)
    assert all(_same(discs[n], _snapshot(m.networks[n])) for n in discs)  # G step: D untouched
    others = {n: _snapshot(m.networks[n]) for n in ("model", *GENERATORS)}
    m.discriminator_step(cache)
    for name, before in others.items():
        assert _same(before, _snapshot(m.networks[name])), name
        assert _no_grad(m.networks[name]), name
    assert all(not _same(discs[n], _snapshot(m.networks[n])) for n in discs)


def test_losses_reach_the_right_networks() -> None:
    m = _method()
    m.set_model_mode(frozen=False)
    losses, _ = m.generator_losses(_batch())
    nets = m.networks

    def grads_of(name: str) -> None:
        m.zero_grad()
        losses[name].backward(retain_graph=True)

    grads_of("loss_sem_s")  # CE(M(G_S->T(x_s)), argmax M(x_s)): into G_S->T through M
    assert _has_grad(nets["gen_s2t"]) and _no_grad(nets["gen_t2s"]) and _has_grad(nets["model"])
    grads_of("loss_sem_t")
    assert _has_grad(nets["gen_t2s"]) and _no_grad(nets["gen_s2t"])
    grads_of("loss_feat_t")  # encoder output only: backbone yes, head no
    assert _has_grad(nets["gen_s2t"]) and _has_grad(nets["model"].backbone)
    assert _no_grad(nets["model"].head)
    grads_of("loss_seg_src_translated")
    assert _has_grad(nets["gen_s2t"]) and _has_grad(nets["model"].head)
    grads_of("loss_cycle_t")  # G_S->T(G_T->S(x_t)): both generators, not M
    assert _has_grad(nets["gen_s2t"]) and _has_grad(nets["gen_t2s"]) and _no_grad(nets["model"])


def test_model_frozen_during_warmup_then_trained() -> None:
    m = _method(freeze_model_fraction=0.5, freeze_bn=False)  # 4 iterations: frozen for 2
    model = m.networks["model"]
    start, gen_start = _snapshot(model), _snapshot(m.networks["gen_s2t"])
    for it in range(2):
        m.train_step(_batch(it), it)
    assert _same(start, _snapshot(model))  # weights and BN statistics
    assert not _same(gen_start, _snapshot(m.networks["gen_s2t"]))
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    m.train_step(_batch(2), 2)
    after = _snapshot(model)
    assert not torch.equal(start["head.classifier.weight"], after["head.classifier.weight"])
    assert not torch.equal(start["backbone.features.0.1.running_mean"],
                           after["backbone.features.0.1.running_mean"])  # freeze_bn: false


def test_freeze_bn_keeps_statistics_and_batch_one_trains() -> None:
    m = _method(freeze_model_fraction=0.0)  # freeze_bn defaults to true
    start = _snapshot(m.networks["model"])
    m.train_step(_batch(0, n=1), 0)
    after = _snapshot(m.networks["model"])
    stats = [k for k in start if "running_" in k]
    assert stats and all(torch.equal(start[k], after[k]) for k in stats)
    assert not torch.equal(start["head.classifier.weight"], after["head.classifier.weight"])


def test_batch_one_trains_the_aspp_pooling_branch_with_bn_in_train_mode() -> None:
    from edgeseg.config import ModelConfig

    torch.manual_seed(0)
    model = build_model(ModelConfig(width_mult=0.25, aspp_channels=32, separable=True)).train()
    pool_bn = model.head.aspp.branches[-1].proj[1]
    stem_bn = model.backbone.features[0][1]
    model(torch.randn(1, 3, 64, 64)).mean().backward()  # plain BN on a 1x1 map would raise
    assert torch.equal(pool_bn.running_mean, torch.zeros_like(pool_bn.running_mean))
    assert stem_bn.running_mean.abs().sum() > 0  # every other BN trains as before
    model(torch.randn(2, 3, 64, 64))  # batch 2: batch statistics, running stats move
    assert pool_bn.running_mean.abs().sum() > 0
    # the method at batch 1 with M's BN training (ablation without cross-domain M passes)
    m = _method(freeze_model_fraction=0.0, freeze_bn=False, use_feature_loss=False,
                use_semantic_loss=False)
    assert math.isfinite(m.train_step(_batch(0, n=1), 0)["loss_seg_src_translated"])


# --- source replay (an extension, off by default) ----------------------------------------


@pytest.mark.parametrize("feature,semantic", [(True, True), (False, False)])
def test_source_replay_is_ce_on_the_raw_source_and_leaves_the_paper_losses(
        feature: bool, semantic: bool) -> None:
    switches = {"use_feature_loss": feature, "use_semantic_loss": semantic}
    paper, replay = _method(**switches), _method(lambda_ce_source=0.5, **switches)
    batch = _batch()
    batch["source"]["label"][:, :8] = 255  # unlabelled pixels count in no CE
    for m in (paper, replay):
        m.set_model_mode(frozen=True)  # eval mode: no dropout, both see the same M
    paper_losses, paper_cache = paper.generator_losses(batch)
    replay_losses, replay_cache = replay.generator_losses(batch)
    with torch.no_grad():
        logits = replay.networks["model"](batch["source"]["image"])
    labels = batch["source"]["label"]
    keep = labels != 255
    per_pixel = -torch.log_softmax(logits, 1).gather(1, labels.clamp(max=18)[:, None])[:, 0]
    expected = per_pixel[keep].mean()  # mean over the labelled pixels only
    assert replay_losses["loss_seg_src"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(replay_losses) - set(paper_losses) == {"loss_seg_src"}
    for key, value in paper_losses.items():  # pseudo-labels and real features are unchanged
        assert replay_losses[key].item() == pytest.approx(value.item(), rel=1e-4, abs=1e-6), key
    assert paper_cache.keys() == replay_cache.keys()
    for key in paper_cache:
        assert torch.allclose(paper_cache[key], replay_cache[key], atol=1e-5), key
    assert replay.weights["loss_seg_src"] == 0.5


def test_source_replay_reaches_the_segmenter_only() -> None:
    m = _method(lambda_ce_source=1.0)
    m.set_model_mode(frozen=False)
    losses, _ = m.generator_losses(_batch())
    m.zero_grad()
    losses["loss_seg_src"].backward()
    assert _has_grad(m.networks["model"].head) and _has_grad(m.networks["model"].backbone)
    assert all(_no_grad(m.networks[name]) for name in GENERATORS)


# --- ablations and config ---------------------------------------------------------------


@pytest.mark.parametrize("feature,semantic", [(False, False), (True, False), (False, True)])
def test_ablation_switches(feature: bool, semantic: bool) -> None:
    m = _method(use_feature_loss=feature, use_semantic_loss=semantic, freeze_model_fraction=0.0)
    img_before = _snapshot(m.networks["disc_img_t"])
    logs = m.train_step(_batch(), 0)
    assert ("disc_feat_t" in m.networks) == feature and ("disc_feat_s" in m.networks) == feature
    for key in ("loss_feat_t", "loss_feat_s", "loss_disc_feat_t", "loss_disc_feat_s"):
        assert (key in logs) == feature, key
    for key in ("loss_sem_s", "loss_sem_t"):
        assert (key in logs) == semantic, key
    for key in ("loss_adv_img_t", "loss_cycle_s", "loss_seg_src_translated", "loss_disc_img_t"):
        assert key in logs
    assert "loss_seg_src" not in logs  # source replay is off unless asked for
    assert not _same(img_before, _snapshot(m.networks["disc_img_t"]))


def test_params_and_crop_are_validated() -> None:
    with pytest.raises(ConfigError, match="use_feature_loss: false"):
        from_dict(Params, {"lambda_feat": 0}, "method.params")
    with pytest.raises(ConfigError, match="freeze_model_fraction"):
        from_dict(Params, {"freeze_model_fraction": 1.0}, "method.params")
    with pytest.raises(ConfigError, match="lambda_ce_source"):
        from_dict(Params, {"lambda_ce_source": -1.0}, "method.params")
    with pytest.raises(ConfigError, match="method.params.lambda_sem_typo"):
        from_dict(Params, {"lambda_sem_typo": 1}, "method.params")
    with pytest.raises(ConfigError, match="multiples of 4"):
        torch.manual_seed(0)
        rec = _uda_recipe(Path("/x"), Path("/x"))
        rec["data"]["crop"] = [30, 64]
        recipe = from_dict(Recipe, rec)
        ctx = MethodContext(recipe, build_model(recipe.model), torch.device("cpu"), DistInfo(), False)
        MobileNetUDA(ctx, Params(**TINY))
    assert get_method("mobilenet_uda") is MobileNetUDA


@pytest.mark.parametrize(("key", "bad", "good"), [
    ("ngf", 0, 1), ("ndf", 0, 1), ("feat_ndf", 0, 1), ("n_blocks", -1, 0),
    ("disc_layers", 1, 2), ("pool_size", -1, 0)])
def test_architecture_params_bounds(key: str, bad: int, good: int) -> None:
    with pytest.raises(ConfigError, match=key.split("_")[0]):
        from_dict(Params, {key: bad}, "method.params")
    assert getattr(from_dict(Params, {key: good}, "method.params"), key) == good


def _method_with(recipe_edit: Any, **params: Any) -> MobileNetUDA:
    torch.manual_seed(0)
    rec = _uda_recipe(Path("/x"), Path("/x"), **params)
    recipe_edit(rec)
    recipe = from_dict(Recipe, rec)
    ctx = MethodContext(recipe, build_model(recipe.model), torch.device("cpu"), DistInfo(), False)
    return MobileNetUDA(ctx, from_dict(Params, recipe.method.params, "method.params"))


def test_crops_of_every_stream_fit_the_generators_and_discriminators() -> None:
    def crop(value: list[int], stream: str | None = None) -> Any:
        def edit(rec: dict) -> None:
            if stream:
                rec["data"]["streams"] = {stream: {"crop": value}}
            else:
                rec["data"]["crop"] = value
        return edit

    with pytest.raises(ConfigError, match=r"^data.streams.target.crop 30x64: .*multiples of 4"):
        _method_with(crop([30, 64], "target"))
    with pytest.raises(ConfigError, match=r"^data.crop 28x64: .*5-layer image discriminators "
                                          r"need sides >= 32"):
        _method_with(crop([28, 64]), disc_layers=5)
    _method_with(crop([16, 64]), disc_layers=4)  # 2^4 = 16 fits


def test_segmenter_lr_and_its_decay_over_the_run_or_after_the_warmup() -> None:
    def schedule(mode: str) -> tuple[list[float], MobileNetUDA]:
        def edit(rec: dict) -> None:
            rec["train"]["iterations"] = 10
            rec["optim"]["head_lr_mult"] = 10.0
        m = _method_with(edit, model_lr_decay=mode, freeze_model_fraction=0.5)
        return [m.schedules["model"](it) for it in (0, 4, 5, 9)], m

    whole, m = schedule("whole_run")
    lrs = {g["name"]: g["lr"] for g in m.optimizers["model"].param_groups}
    assert lrs == {"backbone": pytest.approx(1e-3), "head": pytest.approx(1e-2)}
    assert whole[:2] == [0.0, 0.0] and whole[2] == pytest.approx(0.5 ** 0.9)
    assert whole[3] == pytest.approx(0.1 ** 0.9)
    after, _ = schedule("after_warmup")  # poly over the 5 unfrozen iterations, from 1
    assert after[:3] == [0.0, 0.0, 1.0] and after[3] == pytest.approx(0.2 ** 0.9)


# --- through the trainer ------------------------------------------------------------------


def test_trainer_run_decreases_the_cycle_loss(tiny_synth: Path, tmp_path: Path) -> None:
    rec = _uda_recipe(tiny_synth, tmp_path, iterations=24)  # the paper's GAN LR
    assert Trainer(from_dict(Recipe, rec), progress=False).run() == 0
    logs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    cycle = [r["loss_cycle_s"] + r["loss_cycle_t"] for r in logs if r["type"] == "train"]
    assert len(cycle) == 24
    first, last = sum(cycle[:5]) / 5, sum(cycle[-5:]) / 5
    assert last < 0.8 * first, cycle
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["method"] == "mobilenet_uda" and sorted(
        n for n, spec in ckpt["networks"].items() if spec["role"] == "translator") == sorted(GENERATORS)
    assert ckpt["deploy"]["segmenter"] == "model" and not ckpt["deploy"]["pre"]


def test_resume_is_exact_for_every_network_optimiser_and_pool(tiny_synth: Path,
                                                              tmp_path: Path) -> None:
    def recipe(out: Path, **model: Any) -> Recipe:
        rec = _uda_recipe(tiny_synth, out, iterations=6, freeze_model_fraction=0.25)
        rec["model"].update(model)
        return from_dict(Recipe, rec)

    assert Trainer(recipe(tmp_path / "one"), progress=False).run() == 0
    assert Trainer(recipe(tmp_path / "two"), progress=False).run(until=3) == 0
    # resume restores everything: init_from is not read (here it does not even exist)
    resumed = Trainer(recipe(tmp_path / "two", init_from=str(tmp_path / "missing.pt")),
                      resume=str(tmp_path / "two" / "last.pt"), progress=False)
    assert resumed.iteration == 3 and resumed.run() == 0
    a, b = (load_checkpoint(tmp_path / d / "last.pt") for d in ("one", "two"))
    assert a["iteration"] == b["iteration"] == 6
    assert_same_tree(a["model"], b["model"], "model")
    assert_same_tree(a["method_state"], b["method_state"], "method_state")
    state = a["method_state"]
    assert set(state["networks"]) == {*GENERATORS, "disc_img_s", "disc_img_t", "disc_feat_s",
                                      "disc_feat_t"}
    assert len(state["extra"]["pools"]["t"]["images"]) == 3  # full pools were compared
    assert state["optimizers"]["model"]["state"]  # M trained after its warm-up
    assert a["streams"] == b["streams"]


def test_init_from_loads_the_source_only_weights(tiny_synth: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    source_only = from_dict(Recipe, tiny_recipe(tiny_synth, src, train__iterations=1))
    assert Trainer(source_only, progress=False).run() == 0
    ckpt = src / "last.pt"

    def uda(**model: Any) -> Trainer:
        rec = _uda_recipe(tiny_synth, tmp_path / "uda")
        rec["model"].update(model)
        return Trainer(from_dict(Recipe, rec), progress=False)

    trainer = uda(init_from=str(ckpt))
    assert_same_tree(load_checkpoint(ckpt)["model"], trainer.model.state_dict())
    with pytest.raises(CheckpointError, match=r"aspp_channels 32 \(checkpoint\) vs 16"):
        uda(init_from=str(ckpt), aspp_channels=16)
    with pytest.raises(CheckpointError, match="nope.pt"):
        uda(init_from=str(tmp_path / "nope.pt"))




def test_ddp_gloo_keeps_every_network_in_sync(tiny_synth: Path, tmp_path: Path) -> None:
    """torchrun, 2 CPU processes, different data per rank, M unfrozen, source replay on:
    the run completes and the segmenter, both generators and all four discriminators
    end bit-identical on both ranks (every gradient was all-reduced) and trained."""
    out = tmp_path / "ddp"
    rec = _uda_recipe(tiny_synth, out, iterations=3, freeze_model_fraction=0.0,
                      lambda_ce_source=1.0)
    rank0, rank1 = run_ddp(rec, tmp_path, cli_env())
    assert set(rank0) == {"model", *GENERATORS, "disc_img_s", "disc_img_t", "disc_feat_s",
                          "disc_feat_t"}
    assert_same_tree(rank0, rank1)
    ckpt = load_checkpoint(out / "last.pt")  # rank 0's checkpoint holds the same weights
    assert_same_tree(ckpt["model"], rank0["model"], "model")
    assert all(opt["state"] for opt in ckpt["method_state"]["optimizers"].values())  # all stepped
    logs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss_seg_src"]) for r in logs if r["type"] == "train")


# --- values inside the method: weighted total, discriminator inputs, cycle pairs ---------

PAPER_LAMBDAS = {"lambda_cycle": 20.0, "lambda_sem": 0.1, "lambda_feat": 1e-4, "lambda_ce": 1.0}


def _expected_total(logs: dict[str, float], lambdas: dict[str, float]) -> float:
    """L_tot of the paper (Sec. 4) from the logged terms, with the replay extension."""
    return ((logs["loss_adv_img_s"] + logs["loss_adv_img_t"])
            + lambdas["lambda_feat"] * (logs["loss_feat_s"] + logs["loss_feat_t"])
            + lambdas["lambda_cycle"] * (logs["loss_cycle_s"] + logs["loss_cycle_t"])
            + lambdas["lambda_sem"] * (logs["loss_sem_s"] + logs["loss_sem_t"])
            + lambdas["lambda_ce"] * logs["loss_seg_src_translated"]
            + lambdas.get("lambda_ce_source", 0.0) * logs.get("loss_seg_src", 0.0))


def test_paper_lambdas_are_the_defaults_and_weight_the_total() -> None:
    defaults = Params()
    assert {k: getattr(defaults, k) for k in PAPER_LAMBDAS} == PAPER_LAMBDAS
    assert defaults.lambda_ce_source == 0.0 and defaults.gan_mode == "lsgan"
    m = _method(freeze_model_fraction=0.0)
    logs = m.train_step(_batch(), 0)
    terms = [k for k in logs if k.startswith("loss_") and not k.startswith("loss_disc")
             and k != "loss_gen_total"]
    assert all(logs[k] > 0 for k in terms), logs  # every term can move the total
    assert logs["loss_gen_total"] == pytest.approx(_expected_total(logs, PAPER_LAMBDAS), rel=1e-5)


def test_total_uses_each_configured_lambda() -> None:
    # distinct weights of similar size: any swapped, dropped or constant weight shows
    lambdas = {"lambda_cycle": 0.3, "lambda_sem": 0.7, "lambda_feat": 1.9, "lambda_ce": 2.3,
               "lambda_ce_source": 0.5}
    m = _method(freeze_model_fraction=0.0, **lambdas)
    logs = m.train_step(_batch(), 0)
    assert logs["loss_seg_src"] > 0
    assert logs["loss_gen_total"] == pytest.approx(_expected_total(logs, lambdas), rel=1e-5)
    for a, b in (("lambda_sem", "lambda_feat"), ("lambda_cycle", "lambda_ce")):
        swapped = {**lambdas, a: lambdas[b], b: lambdas[a]}
        assert abs(_expected_total(logs, swapped) - logs["loss_gen_total"]) > 1e-3


class Affine(nn.Module):
    """A generator stand-in: ``scale * x + shift``; records its inputs."""

    def __init__(self, scale: float, shift: float) -> None:
        super().__init__()
        self.scale, self.shift = scale, shift
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return self.scale * x + self.shift


def _gen_term(score: float, mode: str) -> float:
    """Generator-side adversarial loss of a constant patch score (fakes labelled real)."""
    return (score - 1) ** 2 if mode == "lsgan" else math.log1p(math.exp(-score))


def _disc_term(score: float, mode: str) -> float:
    """Discriminator loss when reals and fakes both score ``score``."""
    if mode == "lsgan":
        return 0.5 * ((score - 1) ** 2 + score**2)
    return 0.5 * (math.log1p(math.exp(-score)) + math.log1p(math.exp(score)))


@pytest.mark.parametrize("mode", ["lsgan", "vanilla"])
def test_generator_and_discriminator_losses_by_hand(mode: str) -> None:
    """Stand-in generators (G_S->T(x) = x + 0.5, G_T->S(x) = -x / 2) and constant,
    recording discriminators: every loss is recomputed here from the images each
    network must see, with real M (eval mode) for the segmentation terms."""
    m = _method(gan_mode=mode)
    scores = {"disc_img_t": 0.3, "disc_img_s": -0.2, "disc_feat_t": 0.7, "disc_feat_s": -0.6}
    discs = {name: ConstantD(v) for name, v in scores.items()}
    m.networks.update(discs)
    m.networks["gen_s2t"], m.networks["gen_t2s"] = s2t, t2s = Affine(1.0, 0.5), Affine(-0.5, 0.0)
    m.set_model_mode(frozen=True)
    with torch.no_grad():  # a fresh M's logits are ~1e-5 (tiny activations, 0.01 classifier):
        m.networks["model"].head.classifier.weight.normal_(0.0, 1e3)  # make argmax labels count
    batch = _batch()
    batch["source"]["label"][:, :4] = 255  # ignored pixels
    losses, cache = m.generator_losses(batch)

    mean = torch.tensor(m.ctx.recipe.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(m.ctx.recipe.data.std).view(1, 3, 1, 1)
    x_s, y_s, x_t = batch["source"]["image"], batch["source"]["label"], batch["target"]["image"]
    real_s, real_t = (x_s * std + mean) * 2 - 1, (x_t * std + mean) * 2 - 1
    fake_t, fake_s = real_s + 0.5, -0.5 * real_t
    rec_s, rec_t = -0.5 * fake_t, fake_s + 0.5

    def seg(gan: torch.Tensor) -> torch.Tensor:
        return ((gan + 1) / 2 - mean) / std

    close = _close
    # cycle (Eq. 3): each round trip against its own original
    assert losses["loss_cycle_s"].item() == pytest.approx((rec_s - real_s).abs().mean().item(), rel=1e-5)
    assert losses["loss_cycle_t"].item() == pytest.approx((rec_t - real_t).abs().mean().item(), rel=1e-5)
    for wrong in (real_s, fake_t, fake_s):  # the hand values tell the pairs apart
        assert abs((rec_t - wrong).abs().mean() - (rec_t - real_t).abs().mean()) > 1e-2
    assert close(torch.cat(s2t.inputs), torch.cat([real_s, fake_s]))
    assert close(torch.cat(t2s.inputs), torch.cat([real_t, fake_t]))

    # image adversarial (Eq. 1-2): D_T scores G_S->T(x_s), D_S scores G_T->S(x_t)
    assert losses["loss_adv_img_t"].item() == pytest.approx(_gen_term(0.3, mode), rel=1e-5)
    assert losses["loss_adv_img_s"].item() == pytest.approx(_gen_term(-0.2, mode), rel=1e-5)
    assert close(discs["disc_img_t"].inputs[0], fake_t)
    assert close(discs["disc_img_s"].inputs[0], fake_s)

    # segmentation terms with M itself
    model = m.networks["model"]
    with torch.no_grad():
        on_fake_t, on_fake_s = model(seg(fake_t), features=True), model(seg(fake_s), features=True)
        on_s, on_t = model(x_s, features=True), model(x_t, features=True)
    ce = torch.nn.functional.cross_entropy
    assert losses["loss_seg_src_translated"].item() == pytest.approx(
        ce(on_fake_t["logits"], y_s, ignore_index=255).item(), rel=1e-5)
    # L_sem (Eq. 4): pseudo-label = argmax of M on the ORIGINAL image
    for key, translated, original in (("loss_sem_s", on_fake_t, on_s), ("loss_sem_t", on_fake_s, on_t)):
        expected = ce(translated["logits"], original["logits"].argmax(1)).item()
        assert losses[key].item() == pytest.approx(expected, rel=1e-5), key
        self_label = ce(translated["logits"], translated["logits"].argmax(1)).item()
        assert abs(expected - self_label) > 0.05, key  # the test can tell the labels apart

    # feature adversarial (Eq. 6-7) on M_e of the translations
    assert losses["loss_feat_t"].item() == pytest.approx(_gen_term(0.7, mode), rel=1e-5)
    assert losses["loss_feat_s"].item() == pytest.approx(_gen_term(-0.6, mode), rel=1e-5)
    assert close(discs["disc_feat_t"].inputs[0], on_fake_t["out"])
    assert close(discs["disc_feat_s"].inputs[0], on_fake_s["out"])

    # discriminator step: each D sees its own domain's reals, then its own fakes
    disc = m.discriminator_losses(cache)
    seen = {
        "disc_img_t": (real_t, fake_t), "disc_img_s": (real_s, fake_s),
        "disc_feat_t": (on_t["out"], on_fake_t["out"]), "disc_feat_s": (on_s["out"], on_fake_s["out"]),
    }
    for name, (real, fake) in seen.items():
        assert len(discs[name].inputs) == 2, name
        assert close(discs[name].inputs[1], torch.cat([real, fake])), name
        assert disc[name.replace("disc_", "loss_disc_")].item() == pytest.approx(
            _disc_term(scores[name], mode), rel=1e-5), name


def test_image_pools_hold_their_own_domain() -> None:
    """Over many steps (pools full, fakes swapped for stored ones) D_T only ever sees
    source->target fakes and D_S target->source fakes; feature fakes are not pooled."""
    m = _method()  # pool_size 3
    discs = {name: ConstantD(0.0) for name in m.discriminators}
    m.networks.update(discs)
    real = {"real_t": torch.full((2, 3, 4, 4), 5.0), "real_s": torch.full((2, 3, 4, 4), -5.0),
            "feat_t": torch.full((2, 2, 2, 2), 5.0), "feat_s": torch.full((2, 2, 2, 2), -5.0)}
    for step in range(1, 9):
        cache = {**real, "fake_t": torch.full((2, 3, 4, 4), float(step)),
                 "fake_s": torch.full((2, 3, 4, 4), -float(step)),
                 "feat_fake_t": torch.full((2, 2, 2, 2), float(step)),
                 "feat_fake_s": torch.full((2, 2, 2, 2), -float(step))}
        m.discriminator_losses(cache)
        for name, sign in (("disc_img_t", 1), ("disc_img_s", -1), ("disc_feat_t", 1),
                           ("disc_feat_s", -1)):
            seen = discs[name].inputs[-1]
            assert (seen[:2] == 5.0 * sign).all(), name
            fakes = seen[2:].flatten(1)[:, 0] * sign
            assert ((fakes >= 1) & (fakes <= step)).all(), (name, fakes)
            if name.startswith("disc_feat"):
                assert (fakes == step).all(), name
    assert {len(p) for p in m.pools.values()} == {3}


def test_one_unfrozen_step_steps_every_optimiser_and_network() -> None:
    m = _method(freeze_model_fraction=0.0)
    assert set(m.optimizers) == {"model", *GENERATORS, "disc_img_s", "disc_img_t",
                                 "disc_feat_s", "disc_feat_t"}
    before = {name: _snapshot(net) for name, net in m.networks.items()}
    m.train_step(_batch(), 0)
    for name, opt in m.optimizers.items():
        assert opt.state, name
        assert not _same(before[name], _snapshot(m.networks[name])), name
        assert all(p.grad is None for group in opt.param_groups for p in group["params"]), name
    # during the warm-up every network but M is stepped
    m = _method(freeze_model_fraction=0.5)
    m.train_step(_batch(), 0)
    assert not m.optimizers["model"].state
    assert all(opt.state for name, opt in m.optimizers.items() if name != "model")


def test_networks_are_built_as_configured_and_pools_seeded_per_domain() -> None:
    m = _method(upsample="bilinear", disc_layers=4)
    for name in GENERATORS:
        args = m.specs[name].args
        assert (m.specs[name].role, args["ngf"], args["n_blocks"], args["upsample"]) == (
            "translator", 8, 1, "bilinear")
    for name in ("disc_img_s", "disc_img_t"):
        args = m.specs[name].args
        assert (args["in_channels"], args["ndf"], args["n_layers"], args["stride"]) == (3, 8, 4, 2)
    for name in ("disc_feat_s", "disc_feat_t"):
        args = m.specs[name].args
        assert (args["in_channels"], args["ndf"], args["n_layers"], args["stride"]) == (
            m.ctx.model.encoder_channels, 8, 4, 1)
    seed = m.ctx.recipe.seed
    for domain, offset in (("s", 0), ("t", 1)):
        want = torch.Generator().manual_seed(seed + offset).get_state()
        assert torch.equal(m.pools[domain].generator.get_state(), want), domain
