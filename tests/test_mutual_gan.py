"""method: mutual_gan — Eq. 1-12 by hand, the alternating phases, ablations, resume, DDP, and
the exported translator chained by `edgeseg run / eval --translator`."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
import yaml
from torch import nn

from edgeseg.config import ConfigError, Recipe, from_dict
from edgeseg.models import build_model
from edgeseg.models.compose import Deploy
from edgeseg.train.checkpoint import load_checkpoint
from edgeseg.train.distributed import DistInfo
from edgeseg.train.methods import MethodContext, get_method
from edgeseg.train.methods.mutual_gan import (
    DECODERS,
    ENCODERS,
    PATCHGAN_70,
    MutualGAN,
    Params,
    mean_l1,
)
from edgeseg.train.nets.registry import build_net, net_spec
from edgeseg.train.trainer import Trainer
from tests.conftest import cli_env, tiny_recipe
from tests.net_checks import ConstantD, assert_same_tree, record_steps
from tests.net_checks import has_grad as _has_grad
from tests.net_checks import same as _same
from tests.net_checks import snapshot as _snapshot

TINY = {"ngf": 8, "n_blocks": 1, "ndf": 8, "ae_ngf": 8, "enc_blocks": 1, "dec_blocks": 1,
        "pool_size": 3}
GENERATORS = ("gen_s2t", "gen_t2s")
DISCRIMINATORS = ("disc_img_s", "disc_img_t")
AUTOENCODER = (*ENCODERS, *DECODERS)
GEN_TERMS = ("loss_adv_img_t", "loss_adv_img_s", "loss_cycle_s", "loss_cycle_t",
             "loss_dis_s", "loss_dis_t", "loss_mi_s", "loss_mi_t")


pytestmark = pytest.mark.usefixtures("one_thread")


def _recipe(synth: Path, out: Path, iterations: int = 4, **params: Any) -> dict:
    rec = tiny_recipe(synth, out, data__crop=[32, 48], train__iterations=iterations)
    rec["data"]["target"] = f"synthetic:{synth}:night_train"
    rec["method"] = {"name": "mutual_gan", "params": {**TINY, **params}}
    return rec


def _method(optimizers: dict | None = None, **params: Any) -> MutualGAN:
    """The method without a trainer (no data needed): 4 iterations, batches of 2."""
    torch.manual_seed(0)
    rec = _recipe(Path("/nonexistent"), Path("/nonexistent"), **params)
    rec["method"]["optimizers"] = optimizers or {}
    recipe = from_dict(Recipe, rec)
    ctx = MethodContext(recipe, build_model(recipe.model), torch.device("cpu"), DistInfo(), False)
    method = MutualGAN(ctx, from_dict(Params, recipe.method.params, "method.params"))
    method.train_mode()
    return method


def _batch(seed: int = 0, n: int = 2) -> dict[str, dict[str, torch.Tensor]]:
    """What the trainer hands the method: images only (both streams are unlabelled)."""
    g = torch.Generator().manual_seed(seed)
    return {"source": {"image": torch.randn(n, 3, 32, 48, generator=g)},
            "target": {"image": torch.randn(n, 3, 32, 48, generator=g)}}


def _to_gan(m: MutualGAN, x: torch.Tensor) -> torch.Tensor:
    """Trainer batches (x/255 - mean)/std -> [-1, 1], by hand."""
    mean = torch.tensor(m.ctx.recipe.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(m.ctx.recipe.data.std).view(1, 3, 1, 1)
    return (x * std + mean) * 2 - 1


# --- the networks ------------------------------------------------------------------------


def test_mean_l1_by_hand() -> None:
    a = torch.tensor([[[[0.0, 1.0], [2.0, -3.0]]]])
    b = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    assert mean_l1(a, b).item() == pytest.approx((1 + 0 + 2 + 3) / 4)
    assert mean_l1(a.half(), b.half()).dtype == torch.float32  # fp32 under AMP


@pytest.mark.parametrize("upsample", ["transpose", "bilinear"])
def test_encoder_then_decoder_is_the_resnet_generator(upsample: str) -> None:
    """Enc (stem, downsampling, a blocks) + Dec (b blocks, upsampling, output) carry exactly
    the layers of a ResNet generator with a + b blocks: the generator's weights load into
    the pair and the pair computes the generator."""
    torch.manual_seed(0)
    gen = build_net(net_spec("resnet_generator", "translator", ngf=4, n_blocks=3,
                             upsample=upsample))
    enc = build_net(net_spec("content_encoder", ngf=4, n_blocks=1))
    dec = build_net(net_spec("domain_decoder", ngf=4, n_blocks=2, upsample=upsample))
    pair = nn.Sequential(*enc.model, *dec.model)
    pair.load_state_dict(gen.model.state_dict())  # strict: same names and shapes
    assert [type(a) for a in pair] == [type(b) for b in gen.model]
    x = torch.rand(2, 3, 16, 24) * 2 - 1
    z = enc(x)
    assert z.shape == (2, 16, 4, 6) and enc.out_channels == dec.in_channels == 16
    out = dec(z)
    assert torch.allclose(out, gen(x), atol=1e-6) and out.abs().max() <= 1  # tanh output
    with pytest.raises(ValueError, match="multiples of 4"):
        enc(torch.rand(1, 3, 18, 24))
    # defaults: the two halves of CycleGAN's resnet_9blocks, and the generator's init
    e, d = net_spec("content_encoder").args, net_spec("domain_decoder").args
    g = net_spec("resnet_generator").args
    assert (e["ngf"], d["ngf"], e["n_blocks"] + d["n_blocks"]) == (g["ngf"], g["ngf"],
                                                                   g["n_blocks"])
    assert (e["n_blocks"], d["n_blocks"], d["upsample"], e["norm"], d["norm"]) == (
        4, 5, "transpose", "instance", "instance")
    big = build_net(net_spec("content_encoder", ngf=32, n_blocks=1))
    conv = big.model[4]  # the first stride-2 conv: 64 x 32 x 3 x 3 weights
    assert conv.stride == (2, 2) and 0.018 < conv.weight.std().item() < 0.022
    assert all(m.bias is None or not m.bias.any() for m in big.modules()
               if isinstance(m, nn.Conv2d))
    with pytest.raises(ValueError, match="ngf must be >= 1"):
        build_net(net_spec("domain_decoder", ngf=0))
    with pytest.raises(ValueError, match="n_blocks >= 0"):
        build_net(net_spec("content_encoder", n_blocks=-1))


def test_networks_are_built_as_configured() -> None:
    m = _method(upsample="bilinear", disc_strides=[2, 2, 1, 1])
    assert set(m.networks) == {"model", *GENERATORS, *DISCRIMINATORS, *AUTOENCODER}
    for name in GENERATORS:
        spec = m.specs[name]
        assert (spec.role, spec.args["ngf"], spec.args["n_blocks"], spec.args["upsample"]) == (
            "translator", 8, 1, "bilinear")
    for name in DISCRIMINATORS:
        spec = m.specs[name]
        assert (spec.role, spec.args["ndf"], spec.args["n_layers"], spec.args["strides"]) == (
            "", 8, 4, [2, 2, 1, 1])
        assert m.networks[name].strides == (2, 2, 1, 1)
    for name in ENCODERS:
        spec = m.specs[name]
        assert (spec.kind, spec.role, spec.args["ngf"], spec.args["n_blocks"]) == (
            "content_encoder", "", 8, 1)
    for name in DECODERS:
        spec = m.specs[name]
        assert (spec.kind, spec.role, spec.args["ngf"], spec.args["n_blocks"],
                spec.args["upsample"]) == ("domain_decoder", "", 8, 1, "bilinear")
    m = _method(enc_blocks=2, dec_blocks=3, ae_ngf=4)
    assert [m.specs[n].args["n_blocks"] for n in AUTOENCODER] == [2, 2, 3, 3]
    assert {m.specs[n].args["ngf"] for n in AUTOENCODER} == {4}
    seed = m.ctx.recipe.seed
    for domain, offset in (("s", 0), ("t", 1)):
        want = torch.Generator().manual_seed(seed + offset).get_state()
        assert torch.equal(m.pools[domain].generator.get_state(), want), domain


def test_defaults_are_the_papers_and_cyclegans() -> None:
    p = Params()
    assert (p.lambda_cycle, p.lambda_dis, p.lambda_mi) == (10.0, 1.0, 1.0)
    assert p.use_distillation_loss and p.use_mi_loss and p.gan_mode == "lsgan"
    assert (p.ngf, p.n_blocks, p.upsample, p.ndf, p.pool_size) == (64, 9, "transpose", 64, 50)
    assert p.disc_strides == PATCHGAN_70 == (2, 2, 2, 1, 1)  # the 70x70 PatchGAN
    assert (p.ae_ngf, p.enc_blocks, p.dec_blocks) == (64, 4, 5)
    m = _method(pool_size=50)
    assert m.pools["s"].size == m.pools["t"].size == 50
    assert m.networks["disc_img_t"].channels == (8, 16, 32, 64, 1)
    for group in ("gan", "autoencoder"):
        cfg = m.optim_config(group)
        assert (cfg.name, cfg.lr, cfg.betas, cfg.weight_decay, cfg.schedule, cfg.decay_start) == (
            "adam", 2e-4, (0.5, 0.999), 0.0, "linear", 0.5), group
    for name in (*GENERATORS, *DISCRIMINATORS, *AUTOENCODER):
        group = m.optimizers[name].param_groups[0]
        assert (group["lr"], group["betas"]) == (2e-4, (0.5, 0.999)), name
        # 4 iterations: constant for 2, then linearly to 0
        assert [m.schedules[name](i) for i in range(4)] == [1.0, 1.0, 1.0, 0.5], name
    # a recipe overrides single keys of one group
    m = _method(optimizers={"autoencoder": {"lr": 1e-3}, "gan": {"betas": [0.0, 0.9]}})
    assert m.optimizers["enc_t"].param_groups[0]["lr"] == 1e-3
    assert m.optimizers["dec_s"].param_groups[0]["betas"] == (0.5, 0.999)
    assert m.optimizers["gen_t2s"].param_groups[0]["lr"] == 2e-4
    assert m.optimizers["disc_img_s"].param_groups[0]["betas"] == (0.0, 0.9)


def test_deploys_the_translator_in_front_of_the_frozen_segmenter() -> None:
    m = _method()
    assert get_method("mutual_gan") is MutualGAN
    assert m.deploy() == Deploy("model", ("gen_t2s",))
    assert MutualGAN.streams == ("source", "target") and MutualGAN.labelled_streams == ()
    model = m.networks["model"]
    assert not m.trainable["model"] and "model" not in m.optimizers and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    # the deployed graph: normalised image -> [-1, 1] -> G_T->S -> back -> segmenter
    x = torch.randn(1, 3, 32, 48)
    mean = torch.tensor(m.ctx.recipe.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(m.ctx.recipe.data.std).view(1, 3, 1, 1)
    with torch.no_grad():
        translated = ((m.networks["gen_t2s"]((x * std + mean) * 2 - 1) + 1) / 2 - mean) / std
        want, got = model(translated), m.deployed()(x)
        via_s2t = model(((m.networks["gen_s2t"]((x * std + mean) * 2 - 1) + 1) / 2 - mean) / std)
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got, via_s2t, atol=1e-6)


# --- every term by hand, inside the method ------------------------------------------------


class Affine(nn.Module):
    """A generator / encoder / decoder stand-in: ``scale * x + shift``; records its inputs."""

    def __init__(self, scale: float, shift: float) -> None:
        super().__init__()
        self.scale, self.shift = scale, shift
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return self.scale * x + self.shift


def _gen_term(score: float, mode: str) -> float:
    return (score - 1) ** 2 if mode == "lsgan" else math.log1p(math.exp(-score))


def _disc_term(score: float, mode: str) -> float:
    if mode == "lsgan":
        return 0.5 * ((score - 1) ** 2 + score**2)
    return 0.5 * (math.log1p(math.exp(-score)) + math.log1p(math.exp(score)))


def _l1(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().mean().item()


@pytest.mark.parametrize("mode", ["lsgan", "vanilla"])
def test_every_term_by_hand_with_stand_in_networks(mode: str) -> None:
    """G_S->T(x) = x + 0.5, G_T->S(x) = -x/2, Enc_S(x) = 2x - 0.3, Enc_T(x) = x - 0.25,
    Dec_S(z) = z/2 + 0.1, Dec_T(z) = -z, D_T = 0.3, D_S = -0.2 everywhere: each term of
    Eq. 12 recomputed from the images each network must see, and what each one saw."""
    m = _method(gan_mode=mode)
    nets = {"gen_s2t": Affine(1.0, 0.5), "gen_t2s": Affine(-0.5, 0.0),
            "enc_s": Affine(2.0, -0.3), "enc_t": Affine(1.0, -0.25),
            "dec_s": Affine(0.5, 0.1), "dec_t": Affine(-1.0, 0.0),
            "disc_img_t": ConstantD(0.3), "disc_img_s": ConstantD(-0.2)}
    m.networks.update(nets)
    batch = _batch()
    losses, cache = m.generator_losses(batch)
    assert set(losses) == set(GEN_TERMS)

    real_s, real_t = _to_gan(m, batch["source"]["image"]), _to_gan(m, batch["target"]["image"])
    fake_t, fake_s = real_s + 0.5, -0.5 * real_t
    rec_s, rec_t = -0.5 * fake_t, fake_s + 0.5
    z_s, z_ts = 2 * real_s - 0.3, 2 * fake_s - 0.3  # Enc_S(x_s), Enc_S(G_T->S(x_t))
    z_t, z_st = real_t - 0.25, fake_t - 0.25  # Enc_T(x_t), Enc_T(G_S->T(x_s))
    ae_s, ae_ts = 0.5 * z_s + 0.1, 0.5 * z_t + 0.1  # Dec_S(z_s) = I'_s, Dec_S(z_t) = I'_ts
    ae_st, ae_t = -z_s, -z_t  # Dec_T(z_s) = I'_st, Dec_T(z_t) = I'_t

    def close(a: torch.Tensor, b: torch.Tensor) -> bool:
        return a.shape == b.shape and torch.allclose(a, b, atol=1e-5)

    def value(key: str) -> float:
        return losses[key].item()

    # Eq. 1 (generator side) and Eq. 2
    assert value("loss_adv_img_t") == pytest.approx(_gen_term(0.3, mode), rel=1e-5)
    assert value("loss_adv_img_s") == pytest.approx(_gen_term(-0.2, mode), rel=1e-5)
    assert close(nets["disc_img_t"].inputs[0], fake_t) and close(nets["disc_img_s"].inputs[0],
                                                                   fake_s)
    assert value("loss_cycle_s") == pytest.approx(_l1(rec_s, real_s), rel=1e-5)
    assert value("loss_cycle_t") == pytest.approx(_l1(rec_t, real_t), rel=1e-5)
    # Eq. 7: ||G_S->T(I_s) - Dec_T(Enc_S(I_s))|| + ||I_s - Dec_S(Enc_S(I_s))||, and for T
    dis_s = _l1(fake_t, ae_st) + _l1(real_s, ae_s)
    dis_t = _l1(fake_s, ae_ts) + _l1(real_t, ae_t)
    assert value("loss_dis_s") == pytest.approx(dis_s, rel=1e-5)
    assert value("loss_dis_t") == pytest.approx(dis_t, rel=1e-5)
    # Eq. 11: ||z_s - Enc_T(G_S->T(I_s))||, ||z_t - Enc_S(G_T->S(I_t))||
    assert value("loss_mi_s") == pytest.approx(_l1(z_s, z_st), rel=1e-5)
    assert value("loss_mi_t") == pytest.approx(_l1(z_t, z_ts), rel=1e-5)
    # the hand values tell every plausible mix-up apart
    wrong = {
        "loss_dis_s": [_l1(fake_t, ae_ts) + _l1(real_s, ae_s), _l1(fake_t, ae_st)
                       + _l1(real_s, ae_st), _l1(real_s, ae_st) + _l1(fake_t, ae_s),
                       _l1(fake_t, ae_st), _l1(real_s, ae_s), _l1(fake_s, ae_st) + _l1(real_s, ae_s)],
        "loss_dis_t": [_l1(fake_s, ae_st) + _l1(real_t, ae_t), _l1(fake_s, ae_ts)
                       + _l1(real_t, ae_s), _l1(fake_s, ae_ts), _l1(real_t, ae_t),
                       _l1(fake_t, ae_ts) + _l1(real_t, ae_t)],
        "loss_mi_s": [_l1(z_s, z_ts), _l1(z_t, z_st), _l1(z_s, z_t), _l1(z_ts, z_st)],
        "loss_mi_t": [_l1(z_t, z_st), _l1(z_s, z_ts), _l1(z_s, z_t), _l1(z_ts, z_st)],
    }
    for key, values in wrong.items():
        assert all(abs(v - value(key)) > 1e-2 for v in values), key
    # what each network saw: one call per network and phase, the batch's own images
    assert close(torch.cat(nets["gen_s2t"].inputs), torch.cat([real_s, fake_s]))
    assert close(torch.cat(nets["gen_t2s"].inputs), torch.cat([real_t, fake_t]))
    assert len(nets["enc_s"].inputs) == len(nets["enc_t"].inputs) == 1
    assert close(nets["enc_s"].inputs[0], torch.cat([real_s, fake_s]))
    assert close(nets["enc_t"].inputs[0], torch.cat([real_t, fake_t]))
    for dec in ("dec_s", "dec_t"):
        assert len(nets[dec].inputs) == 1 and close(nets[dec].inputs[0], torch.cat([z_s, z_t]))

    # phase 2: the same content terms on the detached translations, and the discriminators
    # on real vs (pooled) fake images of their own domain
    for name, want in (("real_s", real_s), ("real_t", real_t), ("fake_t", fake_t),
                       ("fake_s", fake_s)):
        assert close(cache[name], want) and not cache[name].requires_grad, name
    disc, content = m.phase_two_losses(cache)
    assert set(content) == set(GEN_TERMS[4:])
    for key, term in content.items():
        assert term.item() == pytest.approx(value(key), rel=1e-6), key
    assert close(nets["enc_s"].inputs[1], torch.cat([real_s, fake_s]))
    assert close(nets["enc_t"].inputs[1], torch.cat([real_t, fake_t]))
    for dec in ("dec_s", "dec_t"):
        assert len(nets[dec].inputs) == 2 and close(nets[dec].inputs[1], torch.cat([z_s, z_t]))
    assert set(disc) == {"loss_disc_img_t", "loss_disc_img_s"}
    assert close(nets["disc_img_t"].inputs[1], torch.cat([real_t, fake_t]))
    assert close(nets["disc_img_s"].inputs[1], torch.cat([real_s, fake_s]))
    assert disc["loss_disc_img_t"].item() == pytest.approx(_disc_term(0.3, mode), rel=1e-5)
    assert disc["loss_disc_img_s"].item() == pytest.approx(_disc_term(-0.2, mode), rel=1e-5)


def _gen_total(logs: dict[str, float], w: dict[str, float]) -> float:
    """Eq. 12 from the logged terms: unit adversarial weights, alpha, lambda_dis, lambda_mi."""
    return (logs["loss_adv_img_t"] + logs["loss_adv_img_s"]
            + w["lambda_cycle"] * (logs["loss_cycle_s"] + logs["loss_cycle_t"])
            + w["lambda_dis"] * (logs.get("loss_dis_s", 0.0) + logs.get("loss_dis_t", 0.0))
            + w["lambda_mi"] * (logs.get("loss_mi_s", 0.0) + logs.get("loss_mi_t", 0.0)))


def _ae_total(logs: dict[str, float], w: dict[str, float]) -> float:
    """What the encoders and decoders minimise: the Eq. 12 terms that depend on them."""
    return (w["lambda_dis"] * (logs.get("loss_dis_s", 0.0) + logs.get("loss_dis_t", 0.0))
            + w["lambda_mi"] * (logs.get("loss_mi_s", 0.0) + logs.get("loss_mi_t", 0.0)))


PAPER = {"lambda_cycle": 10.0, "lambda_dis": 1.0, "lambda_mi": 1.0}


def test_paper_weights_make_the_totals() -> None:
    m = _method()
    logs = m.train_step(_batch(), 0)
    assert all(logs[k] > 0 for k in GEN_TERMS), logs  # every term can move the total
    assert logs["loss_gen_total"] == pytest.approx(_gen_total(logs, PAPER), rel=1e-6)
    assert logs["loss_ae_total"] == pytest.approx(_ae_total(logs, PAPER), rel=1e-6)
    assert set(logs) == {*GEN_TERMS, "loss_gen_total", "loss_disc_img_t", "loss_disc_img_s",
                         "loss_ae_total"}


def test_totals_use_each_configured_weight() -> None:
    weights = {"lambda_cycle": 0.3, "lambda_dis": 1.7, "lambda_mi": 2.9}
    m = _method(**weights)
    logs = m.train_step(_batch(), 0)
    assert logs["loss_gen_total"] == pytest.approx(_gen_total(logs, weights), rel=1e-6)
    assert logs["loss_ae_total"] == pytest.approx(_ae_total(logs, weights), rel=1e-6)
    for a, b in (("lambda_cycle", "lambda_dis"), ("lambda_dis", "lambda_mi"),
                 ("lambda_cycle", "lambda_mi")):
        swapped = {**weights, a: weights[b], b: weights[a]}
        assert abs(_gen_total(logs, swapped) - logs["loss_gen_total"]) > 1e-2, (a, b)
    assert abs(_ae_total(logs, {**weights, "lambda_dis": 2.9, "lambda_mi": 1.7})
               - logs["loss_ae_total"]) > 1e-2


def _params_of(m: MutualGAN, names: tuple[str, ...]) -> list[torch.nn.Parameter]:
    return [p for n in names for p in m.networks[n].parameters()]


def test_each_phase_steps_the_gradient_of_its_weighted_objective(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The gradients each optimiser steps on are those of Eq. 12 (generators) and of
    lambda_dis L_dis + lambda_mi L_MI (encoders, decoders) with the configured weights,
    recomputed here; stale gradients from before the iteration do not leak in."""
    weights = {"lambda_cycle": 0.3, "lambda_dis": 1.7, "lambda_mi": 2.9}
    m = _method(**weights)
    batch = _batch(3)
    gens, ae = _params_of(m, GENERATORS), _params_of(m, AUTOENCODER)
    # expected generator gradient: Eq. 12 with D/Enc/Dec fixed
    losses, cache = m.generator_losses(batch)
    w = {"loss_adv_img_t": 1.0, "loss_adv_img_s": 1.0,
         "loss_cycle_s": weights["lambda_cycle"], "loss_cycle_t": weights["lambda_cycle"],
         "loss_dis_s": weights["lambda_dis"], "loss_dis_t": weights["lambda_dis"],
         "loss_mi_s": weights["lambda_mi"], "loss_mi_t": weights["lambda_mi"]}
    want_gen = torch.autograd.grad(sum(w[k] * v for k, v in losses.items()), gens)
    # expected encoder/decoder gradient: their terms on the detached translations
    content = m.content_losses(cache["real_s"], cache["real_t"], cache["fake_t"],
                               cache["fake_s"])
    want_ae = torch.autograd.grad(sum(w[k] * v for k, v in content.items()), ae)
    m.zero_grad()
    seen = record_steps(m, monkeypatch)
    for p in gens:
        p.grad = torch.full_like(p, 100.0)  # stale gradients must be cleared
    m.train_step(batch, 0)
    got_gen = [g for n in GENERATORS for g in seen[n]]
    got_ae = [g for n in AUTOENCODER for g in seen[n]]
    assert all(g is not None for g in got_gen + got_ae)
    for got, want in zip(got_gen + got_ae, list(want_gen) + list(want_ae)):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-7)
    assert all(seen[n] for n in DISCRIMINATORS) and set(seen) == {*GENERATORS,
                                                                  *DISCRIMINATORS, *AUTOENCODER}


# --- gradient routing ---------------------------------------------------------------------


def test_each_term_reaches_its_networks_only() -> None:
    m = _method()
    losses, _ = m.generator_losses(_batch())  # nothing frozen: every path shows
    everything = ("model", *GENERATORS, *DISCRIMINATORS, *AUTOENCODER)
    reaches = {
        "loss_adv_img_t": {"gen_s2t", "disc_img_t"},
        "loss_adv_img_s": {"gen_t2s", "disc_img_s"},
        "loss_cycle_s": {"gen_s2t", "gen_t2s"},
        "loss_cycle_t": {"gen_s2t", "gen_t2s"},
        # G_S->T(x_s) vs Dec_T(Enc_S(x_s)), x_s vs Dec_S(Enc_S(x_s))
        "loss_dis_s": {"gen_s2t", "enc_s", "dec_s", "dec_t"},
        "loss_dis_t": {"gen_t2s", "enc_t", "dec_s", "dec_t"},
        # Enc_S(x_s) vs Enc_T(G_S->T(x_s))
        "loss_mi_s": {"gen_s2t", "enc_s", "enc_t"},
        "loss_mi_t": {"gen_t2s", "enc_s", "enc_t"},
    }
    for key, nets in reaches.items():
        m.zero_grad()
        for d in DISCRIMINATORS:
            m.networks[d].zero_grad(set_to_none=True)
        losses[key].backward(retain_graph=True)
        for name in everything:
            assert _has_grad(m.networks[name]) == (name in nets), (key, name)


def test_alternating_phases_update_only_their_networks() -> None:
    """Phase 1 moves the generators only (D, Enc, Dec fixed: no gradient reaches them);
    phase 2 moves D, Enc and Dec only (generators fixed); the segmenter never moves."""
    m = _method()
    before = {n: _snapshot(net) for n, net in m.networks.items()}
    fixed_in_one = (*DISCRIMINATORS, *AUTOENCODER)
    logs, cache = m.generator_step(_batch())
    after_one = {n: _snapshot(net) for n, net in m.networks.items()}
    for name in GENERATORS:
        assert not _same(before[name], after_one[name]), name
    for name in (*fixed_in_one, "model"):
        assert _same(before[name], after_one[name]), name
        assert all(p.grad is None for p in m.networks[name].parameters()), name
        assert not any(p.requires_grad for p in m.networks[name].parameters()), name
    m.phase_two_step(cache)
    after_two = {n: _snapshot(net) for n, net in m.networks.items()}
    for name in (*GENERATORS, "model"):
        assert _same(after_one[name], after_two[name]), name
        assert all(p.grad is None for p in m.networks[name].parameters()), name
    for name in fixed_in_one:
        assert not _same(after_one[name], after_two[name]), name
        assert all(p.requires_grad for p in m.networks[name].parameters()), name
    assert not any(p.requires_grad for p in m.networks["model"].parameters())


def test_one_step_steps_every_optimiser_and_network() -> None:
    m = _method()
    assert set(m.optimizers) == {*GENERATORS, *DISCRIMINATORS, *AUTOENCODER}
    before = {name: _snapshot(net) for name, net in m.networks.items()}
    m.train_step(_batch(), 0)
    for name, opt in m.optimizers.items():
        assert opt.state, name
        assert not _same(before[name], _snapshot(m.networks[name])), name
        assert all(p.grad is None for group in opt.param_groups for p in group["params"]), name
    assert _same(before["model"], _snapshot(m.networks["model"]))  # BN statistics too


# --- ablations and config -------------------------------------------------------------------


@pytest.mark.parametrize("mi,dis", [(True, True), (False, True), (True, False), (False, False)])
def test_ablation_switches(mi: bool, dis: bool) -> None:
    """Table 1: w/o L_MI = (False, True); plain CycleGAN = (False, False)."""
    m = _method(use_mi_loss=mi, use_distillation_loss=dis)
    encoders, decoders = mi or dis, dis
    want = {"model", *GENERATORS, *DISCRIMINATORS, *(ENCODERS if encoders else ()),
            *(DECODERS if decoders else ())}
    assert set(m.networks) == want and set(m.optimizers) == want - {"model"}
    before = {name: _snapshot(net) for name, net in m.networks.items()}
    logs = m.train_step(_batch(), 0)
    for key in ("loss_mi_s", "loss_mi_t"):
        assert (key in logs) == mi, key
    for key in ("loss_dis_s", "loss_dis_t"):
        assert (key in logs) == dis, key
    assert ("loss_ae_total" in logs) == encoders
    for key in ("loss_adv_img_t", "loss_adv_img_s", "loss_cycle_s", "loss_cycle_t",
                "loss_disc_img_t", "loss_disc_img_s"):
        assert key in logs, key
    assert logs["loss_gen_total"] == pytest.approx(_gen_total(logs, PAPER), rel=1e-6)
    if encoders:
        assert logs["loss_ae_total"] == pytest.approx(_ae_total(logs, PAPER), rel=1e-6)
    for name in want - {"model"}:  # every built network learns, whichever terms are on
        assert not _same(before[name], _snapshot(m.networks[name])), name


def test_params_and_crop_are_validated() -> None:
    ngf = r"ngf, ndf, ae_ngf must be >= 1 and n_blocks, enc_blocks, dec_blocks >= 0"
    cases = [
        ({"lambda_dis": 0}, r"lambda_dis is 0 with use_distillation_loss: true; set "
                            r"use_distillation_loss: false to turn the loss off \(its networks "
                            r"are then not built\)"),
        ({"lambda_mi": 0.0}, r"lambda_mi is 0 with use_mi_loss: true; set use_mi_loss: false "
                             r"to turn the loss off \(its networks are then not built\)"),
        ({"lambda_cycle": -1.0}, r"lambda_cycle must be >= 0"),
        ({"lambda_dis": -1.0, "use_distillation_loss": False}, r"lambda_dis must be >= 0"),
        ({"lambda_mi": -0.5, "use_mi_loss": False}, r"lambda_mi must be >= 0"),
        ({"disc_strides": [2]}, r"disc_strides \[2\]: at least 2 convs, each of stride 1 or 2"),
        ({"disc_strides": [2, 3]}, r"disc_strides \[2, 3\]: at least 2 convs, each of stride "
                                   r"1 or 2"),
        ({"ngf": 0}, ngf),
        ({"ndf": 0}, ngf),
        ({"ae_ngf": 0}, ngf),
        ({"n_blocks": -1}, ngf),
        ({"enc_blocks": -1}, ngf),
        ({"dec_blocks": -1}, ngf),
        ({"pool_size": -1}, r"pool_size must be >= 0"),
    ]
    for params, message in cases:  # the whole one-line message
        with pytest.raises(ConfigError, match=f"^method.params: {message}$"):
            from_dict(Params, params, "method.params")
    with pytest.raises(ConfigError, match="method.params.lambda_mi_typo"):
        from_dict(Params, {"lambda_mi_typo": 1}, "method.params")
    # off with a zero weight is fine; so are the edge values
    from_dict(Params, {"lambda_dis": 0, "use_distillation_loss": False, "lambda_mi": 0,
                       "use_mi_loss": False, "lambda_cycle": 0, "disc_strides": [1, 1],
                       "ngf": 1, "ndf": 1, "ae_ngf": 1, "n_blocks": 0, "enc_blocks": 0,
                       "dec_blocks": 0, "pool_size": 0}, "method.params")
    four = r"needs sides that are multiples of 4 \(the generators downsample twice\)$"
    with pytest.raises(ConfigError, match=r"^data.crop 30x48: mutual_gan " + four):
        _method_with_data(crop=[30, 48])
    with pytest.raises(ConfigError, match=r"^data.crop 32x46: mutual_gan " + four):
        _method_with_data(crop=[32, 46])
    with pytest.raises(ConfigError, match=r"^data.streams.target.crop 36x50: mutual_gan " + four):
        _method_with_data(streams={"target": {"crop": [36, 50]}})
    small = r": the image discriminators \(strides \[2, 2, 2, 2, 2, 2\]\) need sides >= 64$"
    with pytest.raises(ConfigError, match=r"^data.crop 32x48" + small):
        _method_with_data(disc_strides=[2] * 6)
    with pytest.raises(ConfigError, match=r"^data.crop 32x64" + small):
        _method_with_data(crop=[32, 64], disc_strides=[2] * 6)
    with pytest.raises(ConfigError, match=r"^data.crop 64x32" + small):
        _method_with_data(crop=[64, 32], disc_strides=[2] * 6)
    with pytest.raises(ConfigError, match=r"^data.streams.source.crop 60x64" + small):
        _method_with_data(crop=[64, 64], disc_strides=[2] * 6,
                          streams={"source": {"crop": [60, 64]}})
    _method_with_data(crop=[64, 64], disc_strides=[2] * 6)  # exactly large enough


def _method_with_data(crop: list[int] | None = None, streams: dict | None = None,
                      **params: Any) -> MutualGAN:
    rec = _recipe(Path("/x"), Path("/x"), **params)
    if crop:
        rec["data"]["crop"] = crop
    rec["data"]["streams"] = streams or {}
    recipe = from_dict(Recipe, rec)
    ctx = MethodContext(recipe, build_model(recipe.model), torch.device("cpu"), DistInfo(), False)
    return MutualGAN(ctx, from_dict(Params, recipe.method.params, "method.params"))


# --- through the trainer ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tiny_synth: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
        ) -> Path:
    """6 iterations from the tiny source-only checkpoint (the frozen day segmenter),
    validated at the end through the deployed graph; records what each batch held."""
    out = tmp_path_factory.mktemp("mutual_gan") / "run"
    rec = _recipe(tiny_synth, out, iterations=6)
    rec["model"]["init_from"] = str(tiny_checkpoint)
    seen: list[dict[str, set[str]]] = []
    step = MutualGAN.train_step

    def spy(self: MutualGAN, batch: dict, iteration: int) -> dict[str, float]:
        seen.append({k: set(v) for k, v in batch.items()})
        return step(self, batch, iteration)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(MutualGAN, "train_step", spy)
        assert Trainer(from_dict(Recipe, rec), progress=False).run() == 0
    (out / "batches.json").write_text(json.dumps([{k: sorted(v) for k, v in b.items()}
                                                  for b in seen]))
    return out


def test_trainer_run_trains_without_labels_and_keeps_the_segmenter(
        run: Path, tiny_checkpoint: Path) -> None:
    batches = json.loads((run / "batches.json").read_text())
    assert len(batches) == 6
    for b in batches:  # no label of either stream reaches the method
        assert set(b) == {"source", "target"} and "label" not in b["source"] + b["target"]
    logs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in logs if r["type"] == "train"]
    assert len(train) == 6
    for r in train:
        for key in (*GEN_TERMS, "loss_gen_total", "loss_disc_img_t", "loss_disc_img_s",
                    "loss_ae_total"):
            assert math.isfinite(r[key]), key
        assert "lr_model" not in r and r["lr_enc_s"] == r["lr_gen_t2s"] > 0
    assert [r["lr_dec_t"] for r in train][-1] < train[0]["lr_dec_t"]  # linear decay
    assert any(r["type"] == "val" and math.isfinite(r["miou"]) for r in logs)
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["method"] == "mutual_gan"
    assert ckpt["deploy"] == {"segmenter": "model", "pre": ["gen_t2s"], "class_bias": None}
    roles = {n: s["role"] for n, s in ckpt["networks"].items()}
    assert roles == {"model": "segmenter", "gen_s2t": "translator", "gen_t2s": "translator",
                     "disc_img_s": "", "disc_img_t": "", "enc_s": "", "enc_t": "",
                     "dec_s": "", "dec_t": ""}
    assert_same_tree(load_checkpoint(tiny_checkpoint)["model"], ckpt["model"], "model")


def test_resume_is_exact_for_every_network_optimiser_and_pool(
        run: Path, tiny_synth: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    rec = _recipe(tiny_synth, tmp_path / "two", iterations=6)
    rec["model"]["init_from"] = str(tiny_checkpoint)
    assert Trainer(from_dict(Recipe, rec), progress=False).run(until=3) == 0
    resumed = Trainer(from_dict(Recipe, rec), resume=str(tmp_path / "two" / "last.pt"),
                      progress=False)
    assert resumed.iteration == 3 and resumed.run() == 0
    a, b = load_checkpoint(run / "last.pt"), load_checkpoint(tmp_path / "two" / "last.pt")
    assert a["iteration"] == b["iteration"] == 6
    assert_same_tree(a["model"], b["model"], "model")
    assert_same_tree(a["method_state"], b["method_state"], "method_state")
    state = a["method_state"]
    assert set(state["networks"]) == {*GENERATORS, *DISCRIMINATORS, *AUTOENCODER}
    assert set(state["optimizers"]) == {*GENERATORS, *DISCRIMINATORS, *AUTOENCODER}
    assert all(opt["state"] for opt in state["optimizers"].values())
    assert {len(p["images"]) for p in state["extra"]["pools"].values()} == {3}  # full pools


# --- the exported translator in front of the source-only engine ---------------------------


def test_exported_translator_chains_in_run_and_eval(run: Path, tiny_synth: Path,
                                                    tmp_path: Path) -> None:
    """`edgeseg export CKPT --network gen_t2s` (parity-gated) -> `edgeseg run --translator`
    and `edgeseg eval --translator`, each checked against the two engines run by hand."""
    from edgeseg.cli import main
    from edgeseg.contract.metadata import read_metadata
    from edgeseg.data import open_dataset
    from edgeseg.evaluate import FrameScorer
    from edgeseg.runtime.backends.onnxruntime import OrtBackend
    from edgeseg.runtime.sources import SourceFrame, open_source
    from edgeseg.runtime.stages import Packet, SegmentStage, TranslateStage

    ckpt = run / "last.pt"
    spec = f"synthetic:{tiny_synth}:night_val"
    translator, segmenter = tmp_path / "translator.onnx", tmp_path / "model.onnx"
    for network, out in (("gen_t2s", translator), ("model", segmenter)):
        assert main(["export", str(ckpt), "-o", str(out), "--network", network, "--size",
                     "64x32", "--parity-data", spec, "--parity-frames", "2"]) == 0
    meta = read_metadata(translator)
    assert meta.network == "translator" and meta.extra["network"] == "gen_t2s"
    assert meta.extra["deploy"]["pre"] == ["gen_t2s"]
    t = TranslateStage(OrtBackend.from_onnx(translator, intra_op_threads=1))
    s = SegmentStage(OrtBackend.from_onnx(segmenter, intra_op_threads=1))

    # edgeseg run --translator: labels of translate-then-segment
    labels, source = tmp_path / "labels", "synthetic:night:64x32:3"
    assert main(["run", str(segmenter), "--translator", str(translator), "--source", source,
                 "--sink", f"labels:{labels}", "--threads", "1", "--no-progress"]) == 0
    src, differs = open_source(source), []
    for i in range(3):
        frame = src.read()
        want = s.process(Packet(frame, t.process(Packet(frame, frame.image)).frame)).labels
        got = cv2.imread(str(labels / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        assert (got == want).all(), i
        differs.append((s.process(Packet(frame, frame.image)).labels != got).mean())
    assert max(differs) > 0.01  # the translator changed what the segmenter saw

    # edgeseg eval --translator: the mIoU of the same chain
    out = tmp_path / "eval.json"
    assert main(["eval", str(segmenter), "--data", spec, "--translator", str(translator),
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["translator"] == str(translator)
    data = open_dataset(spec)
    scorer = FrameScorer("cityscapes19", data.label_space)
    for i in range(len(data)):
        sample = data[i]
        bgr = np.ascontiguousarray(sample["image"][..., ::-1])
        frame = SourceFrame(i, bgr, 0.0)
        scorer.update(s.process(Packet(frame, t.process(Packet(frame, bgr)).frame)).labels,
                      sample["label"])
    assert result["results"][spec]["miou"] == pytest.approx(scorer.metrics().miou, abs=1e-12)


# --- DDP ---------------------------------------------------------------------------------------

DDP_WORKER = """
import sys, torch
from edgeseg.config import Recipe, from_dict
from edgeseg.train.trainer import Trainer
import yaml
trainer = Trainer(from_dict(Recipe, yaml.safe_load(open(sys.argv[1]))), progress=False)
start = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
assert trainer.run() == 0
nets = {"model": trainer.model, **trainer.method.networks}
state = {name: {k: v.detach().clone() for k, v in getattr(net, "module", net).state_dict().items()}
         for name, net in nets.items()}
state["model_start"] = start
torch.save(state, sys.argv[2] + f"/rank{trainer.dist.rank}.pt")
"""


def test_ddp_gloo_keeps_every_network_in_sync(tiny_synth: Path, tmp_path: Path) -> None:
    """torchrun, 2 CPU processes, different data per rank: both generators, both
    discriminators, both encoders and both decoders end bit-identical on both ranks (every
    gradient all-reduced, in both phases) and trained; the frozen segmenter is untouched."""
    out = tmp_path / "ddp"
    rec = _recipe(tiny_synth, out, iterations=2)
    rec["data"]["val"] = []
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(rec))
    (tmp_path / "worker.py").write_text(DDP_WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(tmp_path / "worker.py"), str(tmp_path / "r.yaml"), str(tmp_path)]
    res = subprocess.run(cmd, env=cli_env(), cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert set(rank0) == {"model", "model_start", *GENERATORS, *DISCRIMINATORS, *AUTOENCODER}
    assert_same_tree(rank0, rank1)
    assert_same_tree(rank0["model"], rank0["model_start"], "model")
    ckpt = load_checkpoint(out / "last.pt")
    assert_same_tree(ckpt["method_state"]["networks"]["enc_t"], rank0["enc_t"], "enc_t")
    assert all(opt["state"] for opt in ckpt["method_state"]["optimizers"].values())
    logs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss_ae_total"]) for r in logs if r["type"] == "train")
