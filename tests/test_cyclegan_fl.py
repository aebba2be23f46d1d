"""method: cyclegan_fl — the feature loss (Eq. 10) and the objective (Eq. 11) by hand on the
method's own networks, the frozen feature network, the EMA generators with TensorFlow's
warm-up, Adam with the multistep LR and per-network clipping, run notes, exact resume and the
exported EMA translator."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeseg.config import ConfigError, OptimConfig, Recipe, from_dict
from edgeseg.models import build_model
from edgeseg.models.compose import Deploy
from edgeseg.train.checkpoint import load_checkpoint
from edgeseg.train.distributed import DistInfo
from edgeseg.train.methods import MethodContext, get_method
from edgeseg.train.methods.cyclegan_fl import (
    DOMAIN_EXTENSION_ADAM,
    EMA_GENERATORS,
    CycleGANFL,
    Params,
    ema_decay_at,
    feature_loss,
)
from edgeseg.train.methods.mutual_gan import PATCHGAN_70
from edgeseg.train.nets.vgg import SegmenterEncoderFeatures, VGG19Features
from edgeseg.train.schedule import lr_factor
from edgeseg.train.trainer import Trainer
from tests.conftest import tiny_recipe
from tests.net_checks import (
    ConstantD,
    assert_resumes_exactly,
    assert_same_tree,
    record_phases,
    record_steps,
)
from tests.net_checks import same as _same
from tests.net_checks import snapshot as _snapshot

TINY = {"ngf": 8, "n_blocks": 1, "ndf": 8, "pool_size": 3}
GENERATORS = ("gen_s2t", "gen_t2s")
EMAS = ("gen_s2t_ema", "gen_t2s_ema")
DISCRIMINATORS = ("disc_img_s", "disc_img_t")
GEN_TERMS = ("loss_adv_img_t", "loss_adv_img_s", "loss_cycle_s", "loss_cycle_t",
             "loss_feature_s", "loss_feature_t")
DISC_TERMS = ("loss_disc_img_t", "loss_disc_img_s")
#: build() checks that model.init_from is set, the trainer loads it: any name will do here
STAND_IN = "runs/source_only/last.pt"
STAND_IN_NOTE = "segmenter encoder 'out' (frozen stand-in for VGG-19 block5_conv2)"
#: a data normalisation other than ImageNet's, so the [-1, 1] maps are checked
DATA = {"mean": [0.3, 0.4, 0.5], "std": [0.2, 0.25, 0.3]}


pytestmark = pytest.mark.usefixtures("one_thread")


def _recipe(synth: Path, out: Path, iterations: int = 4, **params: Any) -> dict:
    rec = tiny_recipe(synth, out, data__crop=[32, 48], train__iterations=iterations)
    rec["data"]["target"] = f"synthetic:{synth}:night_train"
    rec["method"] = {"name": "cyclegan_fl", "params": {**TINY, **params}}
    return rec


def _method(optimizers: dict | None = None, init_from: str | None = STAND_IN,
            data: dict | None = None, segmenter: Path | None = None,
            **params: Any) -> CycleGANFL:
    """The method without a trainer (no data needed): 4 iterations, batches of 2; the
    feature network is the stand-in copy of the segmenter, randomly initialised (its
    features are then ~1e-7: too small to weigh) or loaded from checkpoint ``segmenter``
    as the trainer does for model.init_from."""
    torch.manual_seed(0)
    rec = _recipe(Path("/nonexistent"), Path("/nonexistent"), **params)
    rec["model"]["init_from"] = init_from
    rec["method"]["optimizers"] = optimizers or {}
    rec["data"].update(data or {})
    recipe = from_dict(Recipe, rec)
    model = build_model(recipe.model)
    if segmenter is not None:
        model.load_state_dict(load_checkpoint(segmenter)["model"])
    ctx = MethodContext(recipe, model, torch.device("cpu"), DistInfo(), False)
    method = CycleGANFL(ctx, from_dict(Params, recipe.method.params, "method.params"))
    method.train_mode()
    return method


def _batch(seed: int = 0, n: int = 2) -> dict[str, dict[str, torch.Tensor]]:
    """What the trainer hands the method: images only (both streams are unlabelled)."""
    g = torch.Generator().manual_seed(seed)
    return {"source": {"image": torch.randn(n, 3, 32, 48, generator=g)},
            "target": {"image": torch.randn(n, 3, 32, 48, generator=g)}}


def _norm(m: CycleGANFL) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(m.ctx.recipe.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(m.ctx.recipe.data.std).view(1, 3, 1, 1)
    return mean, std


def _to_gan(m: CycleGANFL, x: torch.Tensor) -> torch.Tensor:
    """Trainer batches (x/255 - mean)/std -> [-1, 1], by hand."""
    mean, std = _norm(m)
    return (x * std + mean) * 2 - 1


def _stand_in_features(m: CycleGANFL, x: torch.Tensor) -> torch.Tensor:
    """The stand-in by hand: the (frozen) segmenter's encoder output on [-1, 1] images
    normalised with the recipe's mean/std."""
    mean, std = _norm(m)
    return m.networks["model"].forward_features(((x + 1) / 2 - mean) / std)["out"]


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b) ** 2).mean().item()


def _l1(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().mean().item()


def _gen_term(score: float, mode: str) -> float:
    return (score - 1) ** 2 if mode == "lsgan" else math.log1p(math.exp(-score))


def _disc_term(score: float, mode: str) -> float:
    if mode == "lsgan":
        return 0.5 * ((score - 1) ** 2 + score**2)
    return 0.5 * (math.log1p(math.exp(-score)) + math.log1p(math.exp(score)))


# --- the pure functions --------------------------------------------------------------------


def _linear_features() -> nn.Conv2d:
    """A frozen 1x1 conv 3 -> 2 channels: W = [[1, 0, -1], [2, 1, 0]], bias (0.5, -1)."""
    conv = nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 0.0, -1.0], [2.0, 1.0, 0.0]]).view(2, 3, 1, 1))
        conv.bias.copy_(torch.tensor([0.5, -1.0]))
    return conv.requires_grad_(False)


def test_feature_loss_by_hand_reaches_the_translation_only() -> None:
    f = _linear_features()
    # two pixels; original (0, 0, 0), (1, 1, 1); translated (1, 2, 3), (1, 0, 2)
    original = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]).view(1, 3, 1, 2)
    original.requires_grad_()
    translated = torch.tensor([[1.0, 1.0], [2.0, 0.0], [3.0, 2.0]]).view(1, 3, 1, 2)
    translated.requires_grad_()
    # W (t - a): pixel 0: (1 - 3, 2 + 2) = (-2, 4); pixel 1: t - a = (0, -1, 1) -> (-1, -1)
    loss = feature_loss(f, original, translated)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx((4 + 16 + 1 + 1) / 4, rel=1e-6)
    loss.backward()
    # d/dt = 2/4 W^T W (t - a): pixel 0: 0.5 (6, 4, 2); pixel 1: 0.5 (-3, -1, 1)
    want = torch.tensor([[3.0, -1.5], [2.0, -0.5], [1.0, 0.5]]).view(1, 3, 1, 2)
    assert torch.allclose(translated.grad, want, atol=1e-6)
    assert original.grad is None  # the features of the original are a constant target
    assert all(p.grad is None for p in f.parameters())
    # identical images: zero, whatever the network
    x = torch.randn(2, 3, 4, 5)
    assert feature_loss(f, x, x.clone()).item() == 0.0
    assert feature_loss(nn.Tanh(), x, x).item() == 0.0
    # nonlinear features: the loss is taken after the network, not on the images
    a, b = torch.tensor([[[[-1.0]]]]), torch.tensor([[[[-3.0]]]])
    assert feature_loss(nn.ReLU(), a, b).item() == 0.0
    assert feature_loss(nn.Identity(), a, b).item() == pytest.approx(4.0)


def test_feature_loss_target_carries_no_graph_into_a_trainable_net() -> None:
    """f(x) = w x + c with w = 2, c = 0, original 1, translated 3: loss (6 - 2)^2 = 16;
    with the target constant dL/dw = 2 * 4 * 3 = 24, dL/dc = 8 (a graph through the target
    would give 2 * 4 * (3 - 1) = 16 and 0), dL/dt = 2 * 4 * 2 = 16."""
    f = nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        f.weight.fill_(2.0)
        f.bias.fill_(0.0)
    original = torch.ones(1, 1, 1, 1, requires_grad=True)
    translated = torch.full((1, 1, 1, 1), 3.0, requires_grad=True)
    loss = feature_loss(f, original, translated)
    assert loss.item() == pytest.approx(16.0)
    loss.backward()
    assert f.weight.grad.item() == pytest.approx(24.0)
    assert f.bias.grad.item() == pytest.approx(8.0)
    assert translated.grad.item() == pytest.approx(16.0)
    assert original.grad is None


def test_feature_loss_is_fp32_for_half_features() -> None:
    class Half(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (3 * x).half()

    a, b = torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.5)
    loss = feature_loss(Half(), a, b)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(2.25)


def test_ema_decay_warm_up_by_hand() -> None:
    assert ema_decay_at(0.9999, 1, True) == pytest.approx(2 / 11)
    assert ema_decay_at(0.9999, 9, True) == pytest.approx(10 / 19)
    assert ema_decay_at(0.9999, 1000, True) == pytest.approx(1001 / 1010)
    assert ema_decay_at(0.9999, 10**6, True) == 0.9999  # capped: paper-sized runs
    assert ema_decay_at(0.9999, 1, False) == 0.9999
    assert ema_decay_at(0.9999, 10**6, False) == 0.9999
    assert ema_decay_at(0.5, 1, True) == pytest.approx(2 / 11)
    assert ema_decay_at(0.5, 20, True) == 0.5  # 21/30 > 0.5
    assert ema_decay_at(0.0, 5, True) == 0.0


def test_multistep_lr_factor_and_config() -> None:
    f = [lr_factor(i, 10, "multistep", gamma=0.5, milestones=(3, 6)) for i in range(8)]
    assert f == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]
    assert lr_factor(99_999, 700_000, "multistep", gamma=0.5, milestones=(100_000,)) == 1.0
    assert lr_factor(100_000, 700_000, "multistep", gamma=0.5, milestones=(100_000,)) == 0.5
    assert lr_factor(5, 10, "multistep", gamma=0.1, milestones=()) == 1.0
    cfg = from_dict(OptimConfig, {"schedule": "multistep", "milestones": [2, 5]}, "optim")
    assert cfg.milestones == (2, 5)
    with pytest.raises(ConfigError, match=r"^optim: schedule multistep needs milestones, "
                                          r"e\.g\. \[100000\]$"):
        from_dict(OptimConfig, {"schedule": "multistep"}, "optim")
    for bad in ([3, 3], [5, 2], [0, 2]):
        with pytest.raises(ConfigError, match=rf"^optim: milestones \[{bad[0]}, {bad[1]}\]: "
                                              r"need increasing iterations >= 1$"):
            from_dict(OptimConfig, {"schedule": "multistep", "milestones": bad}, "optim")


# --- set-up ---------------------------------------------------------------------------------


def test_defaults_are_the_papers() -> None:
    p = Params()
    assert (p.lambda_cycle, p.lambda_feature, p.vgg19_weights, p.feature_layer) == (
        10.0, 1.0, "", "block5_conv2")
    assert (p.gan_mode, p.ngf, p.n_blocks, p.upsample, p.ndf, p.pool_size) == (
        "lsgan", 64, 9, "bilinear", 64, 50)
    assert p.disc_strides == PATCHGAN_70 == (2, 2, 2, 1, 1)
    assert (p.ema_decay, p.ema_warmup) == (0.9999, True)
    a = DOMAIN_EXTENSION_ADAM
    assert (a.name, a.lr, a.betas, a.weight_decay, a.schedule, a.milestones, a.gamma,
            a.clip_grad_norm) == ("adam", 2e-4, (0.5, 0.999), 0.0, "multistep", (100_000,),
                                  0.5, 5.0)
    assert CycleGANFL.optimizer_defaults == {"gan": DOMAIN_EXTENSION_ADAM}
    assert get_method("cyclegan_fl") is CycleGANFL and CycleGANFL.name == "cyclegan_fl"
    assert CycleGANFL.streams == ("source", "target") and CycleGANFL.labelled_streams == ()
    assert CycleGANFL.find_unused_parameters is True
    assert EMA_GENERATORS == {"gen_s2t": "gen_s2t_ema", "gen_t2s": "gen_t2s_ema"}


def test_networks_are_built_as_configured() -> None:
    m = _method(disc_strides=[2, 2, 1, 1], upsample="transpose", data=DATA)
    assert set(m.networks) == {"model", *GENERATORS, *EMAS, *DISCRIMINATORS, "feature_net"}
    assert set(m.optimizers) == {*GENERATORS, *DISCRIMINATORS}
    for name in (*GENERATORS, *EMAS):
        spec = m.specs[name]
        assert (spec.kind, spec.role, spec.args["ngf"], spec.args["n_blocks"],
                spec.args["upsample"]) == ("resnet_generator", "translator", 8, 1, "transpose")
    for name in DISCRIMINATORS:
        spec = m.specs[name]
        assert (spec.role, spec.args["ndf"], spec.args["n_layers"], spec.args["strides"]) == (
            "", 8, 4, [2, 2, 1, 1])
    assert set(m.exportable()) == {"model", *GENERATORS, *EMAS}  # feature_net: no spec
    for gen, ema in EMA_GENERATORS.items():
        assert m.emas[ema][1] == gen
        assert _same(_snapshot(m.networks[gen]), _snapshot(m.networks[ema]))  # starts equal
        assert m.networks[ema] is not m.networks[gen]
        assert not m.trainable[ema] and not m.networks[ema].training
    # the frozen segmenter and its frozen copy, the feature network
    assert m.deploy() == Deploy()
    feat = m.networks["feature_net"]
    assert m.feature_net is feat and isinstance(feat, SegmenterEncoderFeatures)
    assert feat.segmenter is not m.networks["model"]
    assert _same(_snapshot(feat.segmenter), _snapshot(m.networks["model"]))
    assert torch.equal(feat.normalise.mean.flatten(), torch.tensor(DATA["mean"]))
    assert torch.equal(feat.normalise.std.flatten(), torch.tensor(DATA["std"]))
    for name in ("model", "feature_net"):
        assert m.trainable[name] is False and not m.networks[name].training, name
        assert not any(p.requires_grad for p in m.networks[name].parameters()), name
    assert m.run_notes() == {"feature_net": f"{STAND_IN_NOTE} of {STAND_IN}"}
    # image pools: CycleGAN's pool per domain, seeded from the recipe
    seed = m.ctx.recipe.seed
    for domain, offset in (("s", 0), ("t", 1)):
        pool = m.cyclegan.pools[domain]
        assert pool.size == 3
        want = torch.Generator().manual_seed(seed + offset).get_state()
        assert torch.equal(pool.generator.get_state(), want), domain
    m = _method(pool_size=50)  # PatchGAN 70 widths, CycleGAN's pool
    assert m.networks["disc_img_t"].channels == (8, 16, 32, 64, 1)
    assert m.networks["disc_img_s"].strides == PATCHGAN_70
    assert m.specs["gen_t2s"].args["upsample"] == "bilinear"
    assert m.cyclegan.pools["s"].size == m.cyclegan.pools["t"].size == 50


def test_params_and_crop_are_validated() -> None:
    ngf = r"ngf and ndf must be >= 1, n_blocks and pool_size >= 0"
    layers = r"use one of \['block1_conv1', "
    cases = [
        ({"lambda_cycle": -1.0}, r"lambda_cycle must be >= 0"),
        ({"lambda_feature": -0.5}, r"lambda_feature must be >= 0"),
        ({"feature_layer": "conv5_2"}, r"feature_layer 'conv5_2' is not a VGG-19 layer; "
                                       + layers + r".*'block5_pool'\]"),
        ({"ema_decay": 1.0}, r"ema_decay 1.0: need 0 <= decay < 1"),
        ({"ema_decay": -0.1}, r"ema_decay -0.1: need 0 <= decay < 1"),
        ({"ngf": 0}, ngf),
        ({"ndf": 0}, ngf),
        ({"n_blocks": -1}, ngf),
        ({"pool_size": -1}, ngf),
        ({"disc_strides": [2]}, r"disc_strides \[2\]: at least 2 convs, each of stride 1 or 2"),
        ({"disc_strides": [2, 3]}, r"disc_strides \[2, 3\]: at least 2 convs, each of stride "
                                   r"1 or 2"),
        ({"disc_strides": [0, 2]}, r"disc_strides \[0, 2\]: at least 2 convs, each of stride "
                                   r"1 or 2"),
    ]
    for params, message in cases:  # the whole one-line message
        with pytest.raises(ConfigError, match=f"^method.params: {message}$"):
            from_dict(Params, params, "method.params")
    # the edge values are fine
    from_dict(Params, {"lambda_cycle": 0, "lambda_feature": 0, "ema_decay": 0.0, "ngf": 1,
                       "ndf": 1, "n_blocks": 0, "pool_size": 0, "disc_strides": [1, 1],
                       "feature_layer": "block1_conv1"}, "method.params")
    four = r"needs sides that are multiples of 4 \(the generators downsample twice\)$"
    with pytest.raises(ConfigError, match=r"^data.crop 30x48: cyclegan_fl " + four):
        _method(data={"crop": [30, 48]})
    small = r": the image discriminators \(strides \[2, 2, 2, 2, 2, 2\]\) need sides >= 64$"
    with pytest.raises(ConfigError, match=r"^data.crop 32x48" + small):
        _method(disc_strides=[2] * 6)
    with pytest.raises(ConfigError, match=r"^data.crop 64x60" + small):
        _method(disc_strides=[2] * 6, data={"crop": [64, 60]})
    _method(disc_strides=[2] * 6, data={"crop": [64, 64]})  # exactly large enough
    _method(disc_strides=[2] * 5 + [1], data={"crop": [32, 36]})  # 5 stride-2 convs: 32


def test_feature_loss_needs_a_feature_network() -> None:
    msg = (r"^method.params.vgg19_weights is empty and model.init_from is not set: the feature "
           r"loss needs VGG-19 weights or a source-trained segmenter to stand in \(set "
           r"model.init_from=runs/source_only_.../best.pt or vgg19_weights=FILE\)$")
    with pytest.raises(ConfigError, match=msg):
        _method(init_from=None)
    with pytest.raises(ConfigError, match="model.init_from"):
        _method(init_from=None, lambda_feature=1e-6)


def test_lambda_feature_zero_is_plain_cyclegan() -> None:
    """No feature network is built (none needed: no model.init_from), none is logged, and
    the total is Eq. 8: lambda_cyc L_cyc + both adversarial terms."""
    m = _method(init_from=None, lambda_feature=0, lambda_cycle=0.3)
    assert m.feature_net is None and "feature_net" not in m.networks
    assert set(m.networks) == {"model", *GENERATORS, *EMAS, *DISCRIMINATORS}
    assert m.run_notes() == {"feature_net": "none (lambda_feature 0: plain CycleGAN)"}
    logs = m.train_step(_batch(), 0)
    assert set(logs) == {*GEN_TERMS[:4], "loss_gen_total", *DISC_TERMS}
    total = logs["loss_adv_img_t"] + logs["loss_adv_img_s"] + 0.3 * (logs["loss_cycle_s"]
                                                                      + logs["loss_cycle_t"])
    assert logs["loss_gen_total"] == pytest.approx(total, rel=1e-6)
    # and with a stand-in given, lambda_feature 0 still builds nothing
    m = _method(lambda_feature=0)
    assert m.feature_net is None and "feature_net" not in m.networks


# --- Eq. 10-11 by hand, inside the method ----------------------------------------------------


@pytest.mark.parametrize("mode", ["lsgan", "vanilla"])
def test_every_term_and_the_total_by_hand(mode: str, tiny_checkpoint: Path) -> None:
    """The method's own generators and feature network (the frozen segmenter copy,
    recomputed here from the segmenter), D_T = 0.3 and D_S = -0.2 everywhere: each term of
    Eq. 11 and the weighted total, and what each discriminator saw."""
    weights = {"lambda_cycle": 0.3, "lambda_feature": 2.9}
    m = _method(gan_mode=mode, data=DATA, segmenter=tiny_checkpoint, **weights)
    d_t, d_s = ConstantD(0.3), ConstantD(-0.2)
    m.networks.update({"disc_img_t": d_t, "disc_img_s": d_s})
    batch = _batch()
    real_s, real_t = _to_gan(m, batch["source"]["image"]), _to_gan(m, batch["target"]["image"])
    g_st, g_ts = m.networks["gen_s2t"], m.networks["gen_t2s"]
    with torch.no_grad():
        fake_t, fake_s = g_st(real_s), g_ts(real_t)
        rec_s, rec_t = g_ts(fake_t), g_st(fake_s)
        f = {k: _stand_in_features(m, v) for k, v in (
            ("real_s", real_s), ("real_t", real_t), ("fake_t", fake_t), ("fake_s", fake_s),
            ("rec_s", rec_s))}
    want = {
        "loss_adv_img_t": _gen_term(0.3, mode),
        "loss_adv_img_s": _gen_term(-0.2, mode),
        "loss_cycle_s": _l1(rec_s, real_s),
        "loss_cycle_t": _l1(rec_t, real_t),
        # L_feature(G_S->T): x_s vs G_S->T(x_s); L_feature(G_T->S): x_t vs G_T->S(x_t)
        "loss_feature_s": _mse(f["fake_t"], f["real_s"]),
        "loss_feature_t": _mse(f["fake_s"], f["real_t"]),
    }
    # mix-ups the hand values tell apart: the wrong translation, domain or image
    wrong = {
        "loss_feature_s": [_mse(f["fake_s"], f["real_s"]), _mse(f["fake_t"], f["real_t"]),
                           _mse(f["real_t"], f["real_s"]), _mse(f["rec_s"], f["real_s"]),
                           _mse(fake_t, real_s)],
        "loss_feature_t": [_mse(f["fake_t"], f["real_t"]), _mse(f["fake_s"], f["real_s"]),
                           _mse(f["real_s"], f["real_t"]), _mse(fake_s, real_t)],
    }
    for key, values in wrong.items():
        assert all(abs(v - want[key]) > 1e-3 * want[key] for v in values), key

    logs = m.train_step(batch, 0)
    assert set(logs) == {*GEN_TERMS, "loss_gen_total", *DISC_TERMS}
    for key, value in want.items():
        assert logs[key] == pytest.approx(value, rel=1e-4), key
    total = (want["loss_adv_img_t"] + want["loss_adv_img_s"]
             + 0.3 * (want["loss_cycle_s"] + want["loss_cycle_t"])
             + 2.9 * (want["loss_feature_s"] + want["loss_feature_t"]))
    assert logs["loss_gen_total"] == pytest.approx(total, rel=1e-5)
    # a changed weight or a dropped term would show
    others = [total - want[k] * w for k, w in (
        ("loss_adv_img_t", 1), ("loss_adv_img_s", 1), ("loss_cycle_s", 0.3),
        ("loss_cycle_t", 0.3), ("loss_feature_s", 2.9), ("loss_feature_t", 2.9))]
    cyc = want["loss_cycle_s"] + want["loss_cycle_t"]
    feat = want["loss_feature_s"] + want["loss_feature_t"]
    others += [total + (2.9 - 0.3) * cyc + (0.3 - 2.9) * feat,  # weights swapped
               total + (1 - 2.9) * feat, total + (10 - 0.3) * cyc]  # defaults
    assert all(abs(o - logs["loss_gen_total"]) > 1e-4 * total for o in others)

    # what each discriminator saw: the translation, then real vs (pooled, not yet full) fakes
    def close(a: torch.Tensor, b: torch.Tensor) -> bool:
        return a.shape == b.shape and torch.allclose(a, b, atol=1e-5)

    assert len(d_t.inputs) == len(d_s.inputs) == 2
    assert close(d_t.inputs[0], fake_t) and close(d_s.inputs[0], fake_s)
    assert close(d_t.inputs[1], torch.cat([real_t, fake_t]))
    assert close(d_s.inputs[1], torch.cat([real_s, fake_s]))
    assert logs["loss_disc_img_t"] == pytest.approx(_disc_term(0.3, mode), rel=1e-5)
    assert logs["loss_disc_img_s"] == pytest.approx(_disc_term(-0.2, mode), rel=1e-5)


def test_generator_losses_returns_detached_images() -> None:
    m = _method(data=DATA)
    batch = _batch(1)
    losses, cache = m.generator_losses(batch)
    assert set(losses) == set(GEN_TERMS)
    assert all(v.requires_grad for v in losses.values())
    real_s, real_t = _to_gan(m, batch["source"]["image"]), _to_gan(m, batch["target"]["image"])
    with torch.no_grad():
        want = {"real_s": real_s, "real_t": real_t, "fake_t": m.networks["gen_s2t"](real_s),
                "fake_s": m.networks["gen_t2s"](real_t)}
    assert set(cache) == set(want)
    for key, value in want.items():
        assert torch.allclose(cache[key], value, atol=1e-5), key
        assert not cache[key].requires_grad, key


def _params_of(m: CycleGANFL, names: tuple[str, ...]) -> list[nn.Parameter]:
    return [p for n in names for p in m.networks[n].parameters()]


def test_each_network_steps_the_gradient_of_its_objective(
        monkeypatch: pytest.MonkeyPatch, tiny_checkpoint: Path) -> None:
    """The generators step on the gradient of Eq. 11 with the configured weights (real
    PatchGAN discriminators held fixed), recomputed here; stale gradients do not leak in.
    The discriminators step on the halved LSGAN loss of real vs the detached translations."""
    m = _method(lambda_cycle=0.3, lambda_feature=2.9, data=DATA, segmenter=tiny_checkpoint)
    batch = _batch(3)
    real_s, real_t = _to_gan(m, batch["source"]["image"]), _to_gan(m, batch["target"]["image"])
    g_st, g_ts = m.networks["gen_s2t"], m.networks["gen_t2s"]
    d_s, d_t = m.networks["disc_img_s"], m.networks["disc_img_t"]
    gens, discs = _params_of(m, GENERATORS), _params_of(m, DISCRIMINATORS)
    fake_t, fake_s = g_st(real_s), g_ts(real_t)
    rec_s, rec_t = g_ts(fake_t), g_st(fake_s)
    with torch.no_grad():
        target_s, target_t = _stand_in_features(m, real_s), _stand_in_features(m, real_t)
    objective = (((d_t(fake_t) - 1) ** 2).mean() + ((d_s(fake_s) - 1) ** 2).mean()
                 + 0.3 * ((rec_s - real_s).abs().mean() + (rec_t - real_t).abs().mean())
                 + 2.9 * ((_stand_in_features(m, fake_t) - target_s) ** 2).mean()
                 + 2.9 * ((_stand_in_features(m, fake_s) - target_t) ** 2).mean())
    want_gen = torch.autograd.grad(objective, gens)
    ft, fs = fake_t.detach(), fake_s.detach()
    disc = (0.5 * (((d_t(real_t) - 1) ** 2).mean() + (d_t(ft) ** 2).mean())
            + 0.5 * (((d_s(real_s) - 1) ** 2).mean() + (d_s(fs) ** 2).mean()))
    want_disc = torch.autograd.grad(disc, discs)
    m.zero_grad()
    seen = record_steps(m, monkeypatch)
    for p in gens + discs:
        p.grad = torch.full_like(p, 100.0)  # stale gradients must be cleared
    m.train_step(batch, 0)
    assert set(seen) == {*GENERATORS, *DISCRIMINATORS}
    got_gen = [g for n in GENERATORS for g in seen[n]]
    got_disc = [g for n in DISCRIMINATORS for g in seen[n]]
    assert all(g is not None for g in got_gen + got_disc)
    for got, want in zip(got_gen, want_gen):
        assert torch.allclose(got, want, rtol=2e-3, atol=1e-5)
    for got, want in zip(got_disc, want_disc):
        assert torch.allclose(got, want, rtol=2e-3, atol=1e-5)


# --- what moves and what stays ------------------------------------------------------------


def test_feature_net_is_frozen_and_each_phase_has_its_own_gradients(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Step 1 (generators): no gradient on D, the feature network or the segmenter;
    step 2 (discriminators): gradients on D only. The feature network and the segmenter
    never move (BatchNorm statistics included); every generator and discriminator does."""
    m = _method()
    before = {n: _snapshot(net) for n, net in m.networks.items()}
    calls = record_phases(m, monkeypatch)
    m.train_step(_batch(), 0)
    assert calls == [(GENERATORS, set(GENERATORS), set(GENERATORS)),
                     (DISCRIMINATORS, set(DISCRIMINATORS), {*GENERATORS, *DISCRIMINATORS})]
    after = {n: _snapshot(net) for n, net in m.networks.items()}
    for name in ("model", "feature_net"):
        assert _same(before[name], after[name]), name
        assert all(p.grad is None and not p.requires_grad
                   for p in m.networks[name].parameters()), name
        assert not m.networks[name].training, name
    for name in (*GENERATORS, *DISCRIMINATORS, *EMAS):
        assert not _same(before[name], after[name]), name
    for name in (*GENERATORS, *DISCRIMINATORS):
        assert all(p.grad is None and p.requires_grad
                   for p in m.networks[name].parameters()), name


@pytest.mark.parametrize("warmup,decay,iteration,want", [
    (True, 0.9999, 0, 2 / 11),  # update 1: (1 + 1) / (10 + 1)
    (True, 0.9999, 5, 7 / 16),  # update 6
    (True, 0.3, 5, 0.3),  # capped by ema_decay
    (False, 0.75, 0, 0.75),
])
def test_ema_generators_average_after_the_step(warmup: bool, decay: float, iteration: int,
                                               want: float) -> None:
    """gen_*_ema = d * old EMA + (1 - d) * the generator just stepped, d by hand."""
    m = _method(lambda_feature=0, ema_warmup=warmup, ema_decay=decay)
    with torch.no_grad():  # an EMA that differs from its generator before the step
        for ema in EMAS:
            for p in m.networks[ema].parameters():
                p.add_(0.01 * torch.randn_like(p))
    old = {ema: _snapshot(m.networks[ema]) for ema in EMAS}
    m.train_step(_batch(), iteration)
    for gen, ema in EMA_GENERATORS.items():
        new = _snapshot(m.networks[gen])
        got = _snapshot(m.networks[ema])
        assert got.keys() == new.keys()
        for k in got:
            hand = want * old[ema][k] + (1 - want) * new[k]
            assert torch.allclose(got[k], hand, rtol=1e-5, atol=1e-7), (ema, k)
        assert m.emas[ema][0].decay == pytest.approx(want)
        assert not any(p.requires_grad for p in m.networks[ema].parameters())


def test_clipping_at_five_and_the_multistep_lr(monkeypatch: pytest.MonkeyPatch) -> None:
    m = _method()
    nets = (*GENERATORS, *DISCRIMINATORS)
    assert m.clip_norms == dict.fromkeys(nets, 5.0)
    for name in nets:
        group = m.optimizers[name].param_groups[0]
        assert isinstance(m.optimizers[name], torch.optim.Adam), name
        assert (group["lr"], group["betas"], group["weight_decay"]) == (2e-4, (0.5, 0.999), 0.0)
        assert [m.schedules[name](i) for i in (0, 99_999, 100_000, 699_999)] == [
            1.0, 1.0, 0.5, 0.5], name
    # every network's gradient is clipped to norm 5 before its step
    clipped: list[tuple[int, float]] = []
    clip = torch.nn.utils.clip_grad_norm_

    def spy(params: Any, max_norm: float, *args: Any, **kwargs: Any) -> torch.Tensor:
        params = list(params)
        clipped.append((len(params), max_norm))
        return clip(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    m.train_step(_batch(), 0)
    sizes = [len(list(m.networks[n].parameters())) for n in nets]
    assert clipped == [(s, 5.0) for s in sizes]
    # a recipe moves the milestone and the clip: 2e-4 before iteration 2, 1e-4 from it
    m = _method(optimizers={"gan": {"milestones": [2], "clip_grad_norm": 1.5}})
    assert m.clip_norms == dict.fromkeys(nets, 1.5)
    lrs = []
    for it in range(4):
        m.begin_iteration(it)
        lrs.append({m.optimizers[n].param_groups[0]["lr"] for n in nets})
    assert lrs == [{2e-4}, {2e-4}, {1e-4}, {1e-4}]
    with pytest.raises(ConfigError, match=r"^method.optimizers.gan: milestones \[2, 2\]"):
        _method(optimizers={"gan": {"milestones": [2, 2]}})


# --- the VGG-19 route ---------------------------------------------------------------------------


def _vgg_file(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(5)
    state = VGG19Features("block1_conv2").features.state_dict()  # bare: keys 0.*, 2.*
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    return path, state


def _vgg_by_hand(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """conv1_1, ReLU, conv1_2, ReLU on ImageNet-normalised [0, 1] RGB."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    h = F.relu(F.conv2d(((x + 1) / 2 - mean) / std, state["0.weight"], state["0.bias"],
                        padding=1))
    return F.relu(F.conv2d(h, state["2.weight"], state["2.bias"], padding=1))


@pytest.mark.parametrize("init_from", [None, STAND_IN])
def test_vgg19_file_is_the_feature_network(tmp_path: Path, init_from: str | None) -> None:
    """With vgg19_weights the loss uses VGG-19 at feature_layer (model.init_from or not),
    and the run notes name vgg19, the layer and the file."""
    path, state = _vgg_file(tmp_path)
    m = _method(init_from=init_from, vgg19_weights=str(path), feature_layer="block1_conv2")
    feat = m.feature_net
    assert isinstance(feat, VGG19Features) and feat.layer == "block1_conv2"
    assert len(feat.features) == 4 and not m.trainable["feature_net"]
    assert_same_tree(dict(feat.features.state_dict()), state)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert m.run_notes() == {"feature_net": f"vgg19 block1_conv2 ({path}, sha256 {digest})"}
    batch = _batch(2)
    real_s, real_t = _to_gan(m, batch["source"]["image"]), _to_gan(m, batch["target"]["image"])
    with torch.no_grad():
        fake_t, fake_s = m.networks["gen_s2t"](real_s), m.networks["gen_t2s"](real_t)
        want_s = _mse(_vgg_by_hand(state, fake_t), _vgg_by_hand(state, real_s))
        want_t = _mse(_vgg_by_hand(state, fake_s), _vgg_by_hand(state, real_t))
    logs = m.train_step(batch, 0)
    assert logs["loss_feature_s"] == pytest.approx(want_s, rel=1e-4)
    assert logs["loss_feature_t"] == pytest.approx(want_t, rel=1e-4)
    assert_same_tree(dict(feat.features.state_dict()), state)  # frozen


# --- through the trainer -------------------------------------------------------------------


def _run_recipe(synth: Path, out: Path, checkpoint: Path) -> dict:
    rec = _recipe(synth, out, iterations=4)
    rec["model"]["init_from"] = str(checkpoint)
    rec["method"]["optimizers"] = {"gan": {"milestones": [2]}}
    return rec


@pytest.fixture(scope="module")
def run(tiny_synth: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
        ) -> Path:
    """4 iterations from the tiny source-only checkpoint (the feature-network stand-in),
    the LR dropping at iteration 2."""
    out = tmp_path_factory.mktemp("cyclegan_fl") / "run"
    rec = _run_recipe(tiny_synth, out, tiny_checkpoint)
    assert Trainer(from_dict(Recipe, rec), progress=False).run() == 0
    return out


def _logs(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_trainer_run_logs_the_feature_network_and_keeps_the_segmenter(
        run: Path, tiny_checkpoint: Path) -> None:
    logs = _logs(run)
    notes = [r for r in logs if r["type"] == "method"]
    assert notes == [{"type": "method", "iter": 0,
                      "feature_net": f"{STAND_IN_NOTE} of {tiny_checkpoint}"}]
    train = [r for r in logs if r["type"] == "train"]
    assert [r["iter"] for r in train] == [1, 2, 3, 4]
    for r in train:
        for key in (*GEN_TERMS, "loss_gen_total", *DISC_TERMS):
            assert math.isfinite(r[key]), key
        assert "lr_model" not in r and "lr_feature_net" not in r and "lr_gen_s2t_ema" not in r
    for name in (*GENERATORS, *DISCRIMINATORS):
        assert [r[f"lr_{name}"] for r in train] == [2e-4, 2e-4, 1e-4, 1e-4], name
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["method"] == "cyclegan_fl"
    assert ckpt["deploy"] == {"segmenter": "model", "pre": [], "class_bias": None}
    roles = {n: s["role"] for n, s in ckpt["networks"].items()}
    assert roles == {"model": "segmenter", "gen_s2t": "translator", "gen_t2s": "translator",
                     "gen_s2t_ema": "translator", "gen_t2s_ema": "translator",
                     "disc_img_s": "", "disc_img_t": ""}
    start = load_checkpoint(tiny_checkpoint)["model"]
    assert_same_tree(start, ckpt["model"], "model")  # the segmenter is not trained
    # the stand-in is the source-only segmenter, not the random one the model started as
    feat = ckpt["method_state"]["networks"]["feature_net"]
    assert_same_tree(start, {k[len("segmenter."):]: v for k, v in feat.items()}, "feature_net")
    state = ckpt["method_state"]
    assert set(state["networks"]) == {*GENERATORS, *EMAS, *DISCRIMINATORS, "feature_net"}
    assert set(state["optimizers"]) == {*GENERATORS, *DISCRIMINATORS}
    assert {len(p["images"]) for p in state["extra"]["pools"].values()} == {3}  # full pools


def test_resume_is_exact_for_every_network_ema_and_pool(
        run: Path, tiny_synth: Path, tiny_checkpoint: Path, tmp_path: Path,
        capfd: pytest.CaptureFixture[str]) -> None:
    rec = _run_recipe(tiny_synth, tmp_path / "two", tiny_checkpoint)
    a, b = assert_resumes_exactly(rec, run)
    note = f"method: feature_net = {STAND_IN_NOTE} of {tiny_checkpoint}"
    assert capfd.readouterr().out.count(note) == 2  # printed by both trainers
    notes = [r for r in _logs(tmp_path / "two") if r["type"] == "method"]
    assert [r["iter"] for r in notes] == [0, 2]
    train = [r for r in _logs(tmp_path / "two") if r["type"] == "train"]
    assert [r["lr_gen_s2t"] for r in train] == [2e-4, 2e-4, 1e-4, 1e-4]


def test_export_the_ema_translator(run: Path, tiny_synth: Path, tmp_path: Path) -> None:
    """`edgeseg export CKPT --network gen_s2t_ema` (parity-gated against the EMA weights)."""
    from edgeseg.cli import main
    from edgeseg.contract.metadata import read_metadata

    out = tmp_path / "day2night.onnx"
    assert main(["export", str(run / "last.pt"), "-o", str(out), "--network", "gen_s2t_ema",
                 "--size", "64x32", "--parity-data", f"synthetic:{tiny_synth}:day_train",
                 "--parity-frames", "2"]) == 0
    meta = read_metadata(out)
    assert meta.network == "translator" and meta.extra["network"] == "gen_s2t_ema"



def test_strip_keeps_only_the_named_translator(
        run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`edgeseg strip --network gen_s2t_ema`: the file stage 2 reads, a fraction of the run's."""
    from edgeseg.cli import main
    from edgeseg.train.checkpoint import load_network, network_names

    full = load_checkpoint(run / "last.pt")
    out = tmp_path / "translator.pt"
    assert main(["strip", str(run / "last.pt"), "-o", str(out), "--network", "gen_s2t_ema"]) == 0
    assert (f"--set method.init_from.NAME={{checkpoint: {out}, network: gen_s2t_ema}}"
            in capsys.readouterr().out)
    slim = load_checkpoint(out)
    assert network_names(slim) == ["model", "gen_s2t_ema"]
    assert set(slim["method_state"]) == {"networks"}
    assert set(slim["method_state"]["networks"]) == {"gen_s2t_ema"}
    assert slim["stripped"]["kept_networks"] == ["gen_s2t_ema"]
    assert_same_tree(full["method_state"]["networks"]["gen_s2t_ema"],
                     slim["method_state"]["networks"]["gen_s2t_ema"], "gen_s2t_ema")
    assert_same_tree(full["model"], slim["model"], "model")
    net, spec = load_network(slim, "gen_s2t_ema", out)
    assert spec.role == "translator"
    for name, value in net.state_dict().items():
        assert torch.equal(value, full["method_state"]["networks"]["gen_s2t_ema"][name]), name
    # without --network every method network stays
    everything = tmp_path / "all.pt"
    assert main(["strip", str(run / "last.pt"), "-o", str(everything)]) == 0
    assert set(load_checkpoint(everything)["method_state"]["networks"]) == set(
        full["method_state"]["networks"])
    assert out.stat().st_size < 0.5 * everything.stat().st_size
    capsys.readouterr()
    # a name the checkpoint does not have: one line naming the file and the choices, no file
    assert main(["strip", str(run / "last.pt"), "-o", str(tmp_path / "no.pt"),
                 "--network", "gen_s2t_emma"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and str(run / "last.pt") in err[0] and "'gen_s2t_emma'" in err[0]
    assert "gen_s2t_ema" in err[0].split("it has")[1]
    assert not (tmp_path / "no.pt").exists()
