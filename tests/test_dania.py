"""method: dania — Eq. 1-17 inside the method by hand, gradient routing, ablations, the
deployed relight -> segmenter -> re-weighting graph, resume and DDP."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeseg.config import ConfigError, Recipe, from_dict
from edgeseg.models import build_model
from edgeseg.models.compose import Deploy
from edgeseg.train.checkpoint import load_checkpoint
from edgeseg.train.distributed import DistInfo
from edgeseg.train.methods import MethodContext, get_method
from edgeseg.train.methods.dania import DANIA, Params, class_weights, weighted_seg_loss
from edgeseg.train.nets.light_loss import LightWeights, light_terms, night_level
from edgeseg.train.nets.losses import class_frequency_weights
from edgeseg.train.nets.static_loss import static_focal_loss
from edgeseg.train.trainer import Trainer
from tests.conftest import cli_env, tiny_recipe
from tests.net_checks import (
    ConstantD,
    assert_same_tree,
    has_grad,
    record_steps,
    run_ddp,
    same,
    snapshot,
)

C = 19
STATIC = list(range(11))  # Cityscapes trainIds 0-10
#: a_k of the 19 classes: every class present, all different (distinct weights)
FREQ = [0.3, 0.15, 0.12, 0.01, 0.02, 0.03, 0.004, 0.006, 0.1, 0.02, 0.05, 0.03, 0.005,
        0.08, 0.01, 0.008, 0.002, 0.003, 0.009]
TINY = {"relight_ngf": 8, "relight_blocks": 1, "class_frequencies": FREQ}
GEN_TERMS = ("loss_light_tv", "loss_light_exp", "loss_light_style", "loss_light_ssim",
             "loss_light", "loss_seg", "loss_static", "loss_adv")
DISC_TERMS = ("loss_disc_d", "loss_disc_n")
H, W = 32, 48


pytestmark = pytest.mark.usefixtures("one_thread")


def _recipe(synth: Path, pairs: Path, out: Path, iterations: int = 4, **params: Any) -> dict:
    rec = tiny_recipe(synth, out, data__crop=[H, W], train__iterations=iterations)
    rec["data"]["scale_range"] = [1.0, 1.0]
    rec["data"]["target"] = f"synthetic_pairs:{pairs}"
    rec["data"]["streams"] = {"target": {"align": "homography"}}
    rec["method"] = {"name": "dania", "params": {**TINY, **params}}
    return rec


def _method(optimizers: dict | None = None, **params: Any) -> DANIA:
    """The method without a trainer (a_k given, so no data is read)."""
    torch.manual_seed(0)
    rec = _recipe(Path("/x"), Path("/x"), Path("/x"), **params)
    rec["method"]["optimizers"] = optimizers or {}
    recipe = from_dict(Recipe, rec)
    ctx = MethodContext(recipe, build_model(recipe.model), torch.device("cpu"), DistInfo(), False)
    method = DANIA(ctx, from_dict(Params, recipe.method.params, "method.params"))
    method.train_mode()
    if "relight" in method.networks:  # it starts as the identity: make every term non-zero
        last = [mod for mod in method.networks["relight"].modules()
                if isinstance(mod, nn.Conv2d)][-1]
        with torch.no_grad():
            last.weight.normal_(0.0, 0.02)
    return method


def _batch(seed: int = 0, n: int = 2, homography: torch.Tensor | None = None
           ) -> dict[str, dict[str, torch.Tensor]]:
    """What the trainer hands the method: a labelled source batch and unlabelled pairs."""
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, C, (n, H, W), generator=g)
    label[:, :3] = 255  # ignored rows
    target = {"image": torch.randn(n, 3, H, W, generator=g),
              "night": torch.randn(n, 3, H, W, generator=g) * 0.5 - 1.0}
    if homography is not None:
        target["homography"] = homography.expand(n, 3, 3).clone()
    return {"source": {"image": torch.randn(n, 3, H, W, generator=g), "label": label},
            "target": target}


def _unit(m: DANIA, x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(m.ctx.recipe.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(m.ctx.recipe.data.std).view(1, 3, 1, 1)
    return x * std + mean


class Affine(nn.Module):
    """A relighting stand-in: ``scale * x + shift``; records its inputs."""

    def __init__(self, scale: float, shift: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale))
        self.shift = shift
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return self.scale * x + self.shift


class PixelSegmenter(nn.Module):
    """A segmenter stand-in: a fixed 1x1 conv to 19 logits; records its inputs."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.conv = nn.Conv2d(3, C, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(C, 3, 1, 1, generator=g) * 2)
            self.conv.bias.copy_(torch.randn(C, generator=g))
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return self.conv(x)


def _stand_ins(m: DANIA) -> dict[str, nn.Module]:
    nets = {"relight": Affine(0.5, 0.1), "model": PixelSegmenter(),
            "disc_d": ConstantD(0.3, downsample=4), "disc_n": ConstantD(-0.2, downsample=4)}
    m.networks.update({k: v for k, v in nets.items() if k in m.networks})
    return nets


def _stand_in_logits(m: DANIA, batch: dict[str, dict[str, torch.Tensor]]
                     ) -> dict[str, torch.Tensor]:
    """The stand-in segmenter's logits on each domain's relit image (0.5 x + 0.1), by hand."""
    x = {"s": batch["source"]["image"], "td": batch["target"]["image"],
         "tn": batch["target"]["night"]}
    with torch.no_grad():
        return {d: m.networks["model"].conv(0.5 * v + 0.1) for d, v in x.items()}


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


def _weighted_ce(logits: torch.Tensor, label: torch.Tensor, w: torch.Tensor) -> float:
    """Eq. 8 with the authors' normalisation, pixel by pixel."""
    logp = torch.log_softmax(logits.double(), 1)
    num = den = 0.0
    for b, y, x in zip(*torch.nonzero(label != 255, as_tuple=True)):
        k = int(label[b, y, x])
        num -= float(w[k]) * float(logp[b, k, y, x].detach())
        den += float(w[k])
    return num / den


def _pseudo_by_hand(p_day: torch.Tensor, p_night: torch.Tensor, w: torch.Tensor,
                    shift: int = 0, fusion: bool = True, h1: float = 0.8, h2: float = 0.6,
                    u: float = 0.4) -> torch.Tensor:
    """Eq. 9-11 + Eq. 2: the day map moved ``shift`` columns right (a homography mapping
    night pixel x to day pixel x - shift), fused, re-weighted, argmax over static channels;
    255 where the day frame has no pixel."""
    warped = torch.zeros_like(p_day)
    valid = torch.zeros(p_day.shape[0], H, W, dtype=torch.bool)
    warped[..., shift:] = p_day[..., :W - shift]
    valid[..., shift:] = True
    if fusion:
        h = torch.where(warped > u, torch.tensor(h1), torch.tensor(h2))
        warped = h * warped + (1 - h) * p_night
    weighted = warped * w.view(1, -1, 1, 1)
    pseudo = weighted[:, STATIC].argmax(1)
    pseudo[~valid] = 255
    return pseudo


# --- construction ------------------------------------------------------------------------


def test_defaults_are_the_papers() -> None:
    p = Params()
    assert (p.beta_light, p.beta_seg, p.beta_static, p.beta_adv) == (0.01, 1.0, 1.0, 0.01)
    assert (p.alpha_tv, p.alpha_exp, p.alpha_style, p.alpha_ssim) == (10.0, 1.0, 10.0, 1.0)
    assert (p.h1, p.h2, p.u, p.gamma, p.exposure_patch) == (0.8, 0.6, 0.4, 1.0, 32)
    assert (p.reweight_std, p.reweight_avg, p.deploy_reweight_std) == (0.1, 1.0, 0.1)
    assert (p.relight_ngf, p.relight_blocks) == (64, 3)
    assert p.disc_channels == (64, 128, 256, 256, 1) and p.disc_strides == (2, 2, 1, 1, 1)
    assert p.static_loss == "focal" and p.seg_normalization == "weighted_mean"
    m = _method()
    assert get_method("dania") is DANIA
    assert DANIA.streams == ("source", "target") and DANIA.labelled_streams == ("source",)
    assert set(m.networks) == {"model", "relight", "disc_d", "disc_n"}
    assert set(m.optimizers) == {"model", "relight", "disc_d", "disc_n"}
    for name in ("disc_d", "disc_n"):
        spec = m.specs[name]
        assert (spec.role, spec.args["in_channels"], spec.args["channels"],
                spec.args["strides"], spec.args["norm"]) == (
            "", C, [64, 128, 256, 256, 1], [2, 2, 1, 1, 1], "none")
        opt = m.optimizers[name]
        assert isinstance(opt, torch.optim.Adam)
        assert (opt.param_groups[0]["lr"], opt.param_groups[0]["betas"]) == (2.5e-4, (0.9, 0.99))
    spec = m.specs["relight"]
    assert (spec.kind, spec.role, spec.args["ngf"], spec.args["n_blocks"]) == (
        "relight_net", "prenet", 8, 1)
    opt = m.optimizers["relight"]
    assert isinstance(opt, torch.optim.SGD)
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (2.5e-4, 0.9, 5e-4)
    # poly 0.9 over the run, for the relighting net and the discriminators
    for name in ("relight", "disc_d"):
        assert m.schedules[name](2) == pytest.approx(0.5 ** 0.9), name
    assert m.static_ids == STATIC
    assert torch.allclose(m.weights, class_frequency_weights(FREQ, std=0.1, avg=1.0))


def test_deploys_relight_segmenter_and_the_reweighting_bias() -> None:
    m = _method(deploy_reweight_std=0.14)
    w = class_frequency_weights(FREQ, std=0.14, avg=1.0)
    d = m.deploy()
    assert d.segmenter == "model" and d.pre == ("relight",)
    assert d.class_bias == pytest.approx([math.log(v) for v in w.tolist()], rel=1e-6)
    assert d.class_bias != pytest.approx(
        [math.log(v) for v in class_frequency_weights(FREQ, std=0.1).tolist()], rel=1e-3)
    x = torch.randn(1, 3, H, W)
    m.networks["relight"].eval()
    m.networks["model"].eval()
    with torch.no_grad():
        want = m.networks["model"](m.networks["relight"](x)) + torch.log(w).view(1, -1, 1, 1)
        got = m.deployed()(x)
    assert torch.allclose(got, want, atol=1e-5)
    # argmax of P * w is argmax of logits + log w (Sec. 3.3)
    probs = torch.softmax(m.networks["model"](m.networks["relight"](x)), 1)
    assert torch.equal((probs * w.view(1, -1, 1, 1)).argmax(1), got.argmax(1))
    assert _method(deploy_reweight_std=None).deploy() == Deploy("model", ("relight",))
    assert _method(use_reweighting=False).deploy() == Deploy("model", ("relight",))
    assert _method(use_relight=False, beta_light=0).deploy().pre == ()
    with pytest.raises(ConfigError, match="deploy_reweight_std 5.0: .*use a smaller std"):
        _method(deploy_reweight_std=5.0).deploy()


# --- every term by hand, inside the method ------------------------------------------------


@pytest.mark.parametrize("shift", [0, 2])
def test_every_generator_term_by_hand(shift: int) -> None:
    """Relight = 0.5 x + 0.1, G = a fixed 1x1 conv, D_d = 0.3, D_n = -0.2: each term of
    Eq. 15 from what each network must see; the pair's homography moves the day map."""
    m = _method()
    nets = _stand_ins(m)
    hom = torch.tensor([[1.0, 0.0, -shift], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    batch = _batch(homography=hom)
    losses, probs = m.generator_losses(batch)
    assert set(losses) == set(GEN_TERMS)
    x = {"s": batch["source"]["image"], "td": batch["target"]["image"],
         "tn": batch["target"]["night"]}
    r = {d: 0.5 * v + 0.1 for d, v in x.items()}
    # one call of each network on the three domains stacked
    assert len(nets["relight"].inputs) == 1 and _close(nets["relight"].inputs[0],
                                                       torch.cat([x["s"], x["td"], x["tn"]]))
    assert len(nets["model"].inputs) == 1 and _close(nets["model"].inputs[0],
                                                     torch.cat([r["s"], r["td"], r["tn"]]))
    with torch.no_grad():
        logits = {d: nets["model"].conv(v) for d, v in r.items()}
    p = {d: torch.softmax(v, 1) for d, v in logits.items()}
    # Eq. 3-7: each term summed over the three domains, night statistics as targets
    night = _unit(m, x["tn"])
    level = night_level(night)
    want = dict.fromkeys(("tv", "exp", "style", "ssim"), 0.0)
    for d in ("s", "td", "tn"):
        for k, v in light_terms(_unit(m, x[d]), _unit(m, r[d]), night, level).items():
            want[k] += v.item()
    for k, v in want.items():
        assert losses[f"loss_light_{k}"].item() == pytest.approx(v, rel=1e-5), k
    assert level.item() == pytest.approx(night.mean().item(), rel=1e-6)
    assert losses["loss_light"].item() == pytest.approx(
        10 * want["tv"] + want["exp"] + 10 * want["style"] + want["ssim"], rel=1e-5)
    # Eq. 8 on the source with Eq. 2 weights
    w = class_frequency_weights(FREQ, std=0.1, avg=1.0)
    seg = _weighted_ce(logits["s"], batch["source"]["label"], w)
    assert losses["loss_seg"].item() == pytest.approx(seg, rel=1e-5)
    # Eq. 9-13 with the pseudo-label built by hand
    pseudo = _pseudo_by_hand(p["td"], p["tn"], w, shift)
    assert (pseudo == 255).any() == (shift > 0)
    static = static_focal_loss(logits["tn"], pseudo, STATIC, 1.0).item()
    assert losses["loss_static"].item() == pytest.approx(static, rel=1e-5)
    wrong = [static_focal_loss(logits["tn"], _pseudo_by_hand(p["td"], p["tn"], w, 1 - min(
                 shift, 1)), STATIC, 1.0).item(),  # the other homography
             static_focal_loss(logits["tn"], _pseudo_by_hand(p["td"], p["tn"], w, shift,
                                                             fusion=False), STATIC, 1.0).item(),
             static_focal_loss(logits["tn"], _pseudo_by_hand(p["td"], p["tn"], torch.ones(C),
                                                             shift), STATIC, 1.0).item(),
             static_focal_loss(logits["td"], pseudo, STATIC, 1.0).item()]
    assert all(abs(v - static) > 1e-4 for v in wrong), (static, wrong)
    # Eq. 14: D_d on P_td, D_n on P_tn, least squares against the source label 1
    assert losses["loss_adv"].item() == pytest.approx((0.3 - 1) ** 2 + (-0.2 - 1) ** 2, rel=1e-6)
    assert _close(nets["disc_d"].inputs[0], p["td"]) and _close(nets["disc_n"].inputs[0], p["tn"])
    for d in ("s", "td", "tn"):
        assert _close(probs[d], p[d]) and not probs[d].requires_grad


def test_discriminator_terms_by_hand() -> None:
    """Eq. 16-17: 1/2 (D(P_s) - 1)^2 + 1/2 (D(P_t) - 0)^2, on the detached maps."""
    m = _method()
    nets = _stand_ins(m)
    _, probs = m.generator_losses(_batch())
    disc = m.discriminator_losses(probs)
    assert set(disc) == set(DISC_TERMS)
    assert disc["loss_disc_d"].item() == pytest.approx(0.5 * ((0.3 - 1) ** 2 + 0.3 ** 2))
    assert disc["loss_disc_n"].item() == pytest.approx(0.5 * ((-0.2 - 1) ** 2 + 0.2 ** 2))
    # D_d saw the source map and the target-day map, D_n the source map and the night map
    assert _close(nets["disc_d"].inputs[1], probs["s"]) and _close(nets["disc_d"].inputs[2],
                                                                   probs["td"])
    assert _close(nets["disc_n"].inputs[1], probs["s"]) and _close(nets["disc_n"].inputs[2],
                                                                   probs["tn"])


def test_seg_normalizations() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 4, 4, generator=g)
    label = torch.randint(0, 5, (2, 4, 4), generator=g)
    label[0, 0] = 255
    w = torch.tensor([0.5, 1.0, 1.5, 2.0, 0.7])
    ours = weighted_seg_loss(logits, label, w, "weighted_mean").item()
    assert ours == pytest.approx(_weighted_ce(logits, label, w), rel=1e-6)
    logp = torch.log_softmax(logits.double(), 1)
    valid = label != 255
    total = -sum(float(w[label[b, y, x]] * logp[b, label[b, y, x], y, x])
                 for b, y, x in zip(*torch.nonzero(valid, as_tuple=True)))
    eq8 = weighted_seg_loss(logits, label, w, "eq8").item()
    assert eq8 == pytest.approx(total / (int(valid.sum()) * 5), rel=1e-6)


def _total(logs: dict[str, float], beta: dict[str, float]) -> float:
    return sum(beta[k] * logs.get(k, 0.0) for k in beta)


PAPER = {"loss_light": 0.01, "loss_seg": 1.0, "loss_static": 1.0, "loss_adv": 0.01}


def test_totals_use_each_configured_weight() -> None:
    weights = {"beta_light": 0.3, "beta_seg": 1.7, "beta_static": 2.9, "beta_adv": 0.7,
               "alpha_tv": 3.0, "alpha_exp": 5.0, "alpha_style": 0.25, "alpha_ssim": 7.0}
    m = _method(**weights)
    logs = m.train_step(_batch(), 0)
    beta = {"loss_light": 0.3, "loss_seg": 1.7, "loss_static": 2.9, "loss_adv": 0.7}
    assert all(logs[k] > 0 for k in GEN_TERMS), logs
    assert logs["loss_gen_total"] == pytest.approx(_total(logs, beta), rel=1e-6)
    light = (3.0 * logs["loss_light_tv"] + 5.0 * logs["loss_light_exp"]
             + 0.25 * logs["loss_light_style"] + 7.0 * logs["loss_light_ssim"])
    assert logs["loss_light"] == pytest.approx(light, rel=1e-5)
    keys = list(beta)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            swapped = {**beta, a: beta[b], b: beta[a]}
            assert abs(_total(logs, swapped) - logs["loss_gen_total"]) > 1e-4, (a, b)
    assert set(logs) == {*GEN_TERMS, "loss_gen_total", *DISC_TERMS}
    m = _method()
    logs = m.train_step(_batch(), 0)
    assert logs["loss_gen_total"] == pytest.approx(_total(logs, PAPER), rel=1e-6)
    assert m.light_weights == LightWeights(tv=10.0, exp=1.0, style=10.0, ssim=1.0)


def test_each_step_uses_the_gradient_of_its_weighted_objective(
        monkeypatch: pytest.MonkeyPatch) -> None:
    weights = {"beta_light": 0.3, "beta_seg": 1.7, "beta_static": 2.9, "beta_adv": 0.7}
    m = _method(**weights)
    batch = _batch(3)
    beta = {"loss_light": 0.3, "loss_seg": 1.7, "loss_static": 2.9, "loss_adv": 0.7}
    gen = [p for n in ("model", "relight") for p in m.networks[n].parameters()]
    m.set_model_mode()
    torch.manual_seed(5)  # the ASPP's dropout draws the same mask in both passes
    losses, probs = m.generator_losses(batch)
    want = torch.autograd.grad(sum(beta[k] * losses[k] for k in beta), gen, allow_unused=True)
    disc = m.discriminator_losses(probs)
    discs = [p for n in ("disc_d", "disc_n") for p in m.networks[n].parameters()]
    want_disc = torch.autograd.grad(sum(disc.values()), discs)
    m.zero_grad()
    seen = record_steps(m, monkeypatch)
    for p in gen:
        p.grad = torch.full_like(p, 100.0)  # stale gradients must be cleared
    torch.manual_seed(5)
    m.train_step(batch, 0)
    got = seen["model"] + seen["relight"]
    for g, w in zip(got, want):
        if w is None:
            assert g is None or not g.any()
        else:
            assert torch.allclose(g, w, rtol=1e-4, atol=1e-7)
    for g, w in zip(seen["disc_d"] + seen["disc_n"], want_disc):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-7)


# --- gradient routing ---------------------------------------------------------------------


def test_each_term_reaches_its_networks_only() -> None:
    m = _method(freeze_bn=False)
    m.set_model_mode()
    losses, _ = m.generator_losses(_batch())
    everything = ("model", "relight", "disc_d", "disc_n")
    reaches = {
        "loss_light": {"relight"},
        "loss_seg": {"model", "relight"},
        "loss_static": {"model", "relight"},
        "loss_adv": {"model", "relight", "disc_d", "disc_n"},
    }
    for key, nets in reaches.items():
        for net in m.networks.values():
            net.zero_grad(set_to_none=True)
        losses[key].backward(retain_graph=True)
        for name in everything:
            assert has_grad(m.networks[name]) == (name in nets), (key, name)


def test_static_loss_flows_through_the_night_static_channels_only() -> None:
    """The pseudo-label is made without gradients from the day prediction; the loss
    reaches the night logits of the static classes and nothing else."""
    m = _method()
    _stand_ins(m)
    batch = _batch()
    x = {"s": batch["source"]["image"], "td": batch["target"]["image"],
         "tn": batch["target"]["night"]}
    logits = {d: m.networks["model"].conv(0.5 * v + 0.1).detach().requires_grad_()
              for d, v in x.items()}
    pseudo = m.static_target(logits["td"], logits["tn"], None)
    assert not pseudo.requires_grad
    loss = m.static_loss(logits["tn"], pseudo)
    loss.backward()
    assert logits["td"].grad is None
    grad = logits["tn"].grad
    assert grad[:, STATIC].abs().sum() > 0 and not grad[:, 11:].any()


def test_alternating_steps_update_only_their_networks() -> None:
    m = _method()
    before = {n: snapshot(net) for n, net in m.networks.items()}
    m.train_step(_batch(), 0)
    for name, opt in m.optimizers.items():
        assert opt.state, name
        assert not same(before[name], snapshot(m.networks[name])), name
    # the discriminators' update comes from their own step only: replay without it
    m2 = _method()
    set_d = {n: snapshot(m2.networks[n]) for n in ("disc_d", "disc_n")}
    m2.set_model_mode()
    for n in ("disc_d", "disc_n"):
        for p in m2.networks[n].parameters():
            p.requires_grad_(False)
    losses, _ = m2.generator_losses(_batch())
    sum(losses[k] for k in PAPER).backward()
    m2.step("model", "relight")
    for n in ("disc_d", "disc_n"):
        assert same(set_d[n], snapshot(m2.networks[n])), n


def test_frozen_batchnorm_keeps_the_segmenters_statistics() -> None:
    m = _method()
    bn = [mod for mod in m.networks["model"].modules() if isinstance(mod, nn.BatchNorm2d)]
    stats = [b.running_mean.clone() for b in bn]
    m.train_step(_batch(), 0)
    assert all(torch.equal(s, b.running_mean) for s, b in zip(stats, bn))
    relight_bn = [mod for mod in m.networks["relight"].modules()
                  if isinstance(mod, nn.BatchNorm2d)]
    assert relight_bn and all(b.training for b in relight_bn)
    m = _method(freeze_bn=False)
    bn = [mod for mod in m.networks["model"].modules() if isinstance(mod, nn.BatchNorm2d)]
    stats = [b.running_mean.clone() for b in bn]
    m.train_step(_batch(), 0)
    assert not all(torch.equal(s, b.running_mean) for s, b in zip(stats, bn))


# --- ablations and config -------------------------------------------------------------------


ABLATIONS = [
    ({}, {"model", "relight", "disc_d", "disc_n"}, set(GEN_TERMS)),
    ({"use_target_day": False, "use_static_loss": False}, {"model", "relight", "disc_n"},
     set(GEN_TERMS) - {"loss_static"}),
    ({"use_relight": False, "beta_light": 0.0}, {"model", "disc_d", "disc_n"},
     {"loss_seg", "loss_static", "loss_adv"}),
    ({"use_static_loss": False}, {"model", "relight", "disc_d", "disc_n"},
     set(GEN_TERMS) - {"loss_static"}),
    ({"use_light_loss": False}, {"model", "relight", "disc_d", "disc_n"},  # the net stays
     {"loss_seg", "loss_static", "loss_adv"}),
]


@pytest.mark.parametrize("params,nets,terms", ABLATIONS)
def test_ablation_switches(params: dict, nets: set[str], terms: set[str]) -> None:
    m = _method(**params)
    assert set(m.networks) == nets and set(m.optimizers) == nets
    before = {name: snapshot(net) for name, net in m.networks.items()}
    batch = _batch()
    if not params.get("use_target_day", True):
        batch["target"] = {"image": batch["target"]["night"]}  # a plain night reader
    logs = m.train_step(batch, 0)
    disc = {f"loss_{n}" for n in nets if n.startswith("disc_")}
    assert set(logs) == terms | disc | {"loss_gen_total"}
    assert logs["loss_gen_total"] == pytest.approx(_total(logs, PAPER), rel=1e-6)
    for name in nets:
        assert not same(before[name], snapshot(m.networks[name])), name


def test_without_target_day_the_night_comes_from_the_pair_or_the_image() -> None:
    m = _method(use_target_day=False, use_static_loss=False)
    nets = _stand_ins(m)
    batch = _batch()
    m.generator_losses(batch)
    assert _close(nets["relight"].inputs[-1], torch.cat([batch["source"]["image"],
                                                          batch["target"]["night"]]))
    m.generator_losses({"source": batch["source"], "target": {"image": batch["target"]["night"]}})
    assert _close(nets["relight"].inputs[-1], torch.cat([batch["source"]["image"],
                                                          batch["target"]["night"]]))


def test_ce_static_loss_and_no_fusion_and_no_reweighting() -> None:
    m = _method(static_loss="ce")
    _stand_ins(m)
    batch = _batch()
    losses, _ = m.generator_losses(batch)
    logits = _stand_in_logits(m, batch)
    w = class_frequency_weights(FREQ)
    pseudo = _pseudo_by_hand(torch.softmax(logits["td"], 1), torch.softmax(logits["tn"], 1), w)
    ce = F.cross_entropy(logits["tn"][:, STATIC], pseudo)
    assert losses["loss_static"].item() == pytest.approx(ce.item(), rel=1e-5)
    m = _method(use_fusion=False)
    _stand_ins(m)
    losses, _ = m.generator_losses(batch)
    pseudo = _pseudo_by_hand(torch.softmax(logits["td"], 1), None, w, fusion=False)
    assert losses["loss_static"].item() == pytest.approx(
        static_focal_loss(logits["tn"], pseudo, STATIC, 1.0).item(), rel=1e-5)
    m = _method(use_reweighting=False)
    _stand_ins(m)
    assert torch.equal(m.weights, torch.ones(C))
    losses, _ = m.generator_losses(batch)
    assert losses["loss_seg"].item() == pytest.approx(
        _weighted_ce(logits["s"], batch["source"]["label"], torch.ones(C)), rel=1e-5)


def _focal_by_hand(logits: torch.Tensor, pseudo: torch.Tensor, gamma: float) -> float:
    """Table 5's plain focal loss, pixel by pixel: -(1 - p_y)^gamma log p_y over the labelled
    pixels, p the softmax over the static channels, y the pixel's own pseudo-label."""
    logp = torch.log_softmax(logits[:, STATIC].double(), 1)
    terms = [-(1 - math.exp(float(logp[b, pseudo[b, y, x], y, x]))) ** gamma
             * float(logp[b, pseudo[b, y, x], y, x])
             for b, y, x in zip(*torch.nonzero(pseudo != 255, as_tuple=True))]
    return sum(terms) / len(terms)


@pytest.mark.parametrize("shift", [0, 2])
def test_weighted_ce_and_plain_focal_static_losses_by_hand(shift: int) -> None:
    """Table 5's other variants on the method's own pseudo-label (warp holes ignored)."""
    hom = torch.tensor([[1.0, 0.0, -float(shift)], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    batch = _batch(homography=hom)
    w = class_frequency_weights(FREQ)
    values = {}
    for kind in ("weighted_ce", "plain_focal", "focal"):
        m = _method(static_loss=kind, gamma=2.0)
        _stand_ins(m)
        losses, _ = m.generator_losses(batch)
        values[kind] = losses["loss_static"].item()
    logits = _stand_in_logits(m, batch)
    pseudo = _pseudo_by_hand(torch.softmax(logits["td"], 1), torch.softmax(logits["tn"], 1), w,
                             shift=shift)
    assert (pseudo == 255).any() == (shift > 0)
    assert values["weighted_ce"] == pytest.approx(
        _weighted_ce(logits["tn"][:, STATIC], pseudo, w[STATIC]), rel=1e-5)
    assert values["plain_focal"] == pytest.approx(_focal_by_hand(logits["tn"], pseudo, 2.0),
                                                  rel=1e-5)
    unweighted = F.cross_entropy(logits["tn"][:, STATIC], pseudo, ignore_index=255).item()
    assert abs(values["weighted_ce"] - unweighted) > 1e-3  # the weights matter
    assert abs(values["plain_focal"] - values["focal"]) > 1e-3  # the neighbourhood matters
    assert abs(_focal_by_hand(logits["tn"], pseudo, 1.0) - values["plain_focal"]) > 1e-3


def test_without_light_loss_the_relighting_net_learns_from_the_other_terms() -> None:
    m = _method(use_light_loss=False)
    nets = _stand_ins(m)
    batch = _batch()
    losses, _ = m.generator_losses(batch)
    assert not any(k.startswith("loss_light") for k in losses)
    total = sum(m.beta[k] * losses[k] for k in m.beta if k in losses)
    total.backward()
    assert nets["relight"].scale.grad is not None and nets["relight"].scale.grad != 0
    assert m.deploy().pre == ("relight",)


def test_custom_fusion_and_focusing_parameters_are_used() -> None:
    m = _method(h1=0.9, h2=0.3, u=0.2, gamma=2.0)
    _stand_ins(m)
    batch = _batch()
    losses, _ = m.generator_losses(batch)
    logits = _stand_in_logits(m, batch)
    w = class_frequency_weights(FREQ)
    pseudo = _pseudo_by_hand(torch.softmax(logits["td"], 1), torch.softmax(logits["tn"], 1), w,
                             h1=0.9, h2=0.3, u=0.2)
    want = static_focal_loss(logits["tn"], pseudo, STATIC, 2.0).item()
    assert losses["loss_static"].item() == pytest.approx(want, rel=1e-5)
    assert abs(static_focal_loss(logits["tn"], pseudo, STATIC, 1.0).item() - want) > 1e-4


def test_params_and_crops_are_validated() -> None:
    cases = [
        ({"beta_static": 0.0}, r"beta_static is 0 with use_static_loss: true; set "
                               r"use_static_loss: false to turn the loss off"),
        ({"beta_light": 0.0}, r"beta_light is 0 with use_relight: true; set use_relight: "
                              r"false to drop the relighting net and its loss, or "
                              r"use_light_loss: false to keep the net without its loss"),
        ({"use_target_day": False}, r"use_static_loss needs use_target_day \(the "
                                    r"pseudo-labels come from the target day frames\); set "
                                    r"use_static_loss: false"),
        ({"h1": 1.5}, r"h1 must be in \[0, 1\]"),
        ({"beta_adv": -1.0}, r"beta_adv must be >= 0"),
        ({"reweight_std": 0.0}, r"reweight_std and reweight_avg must be > 0"),
        ({"deploy_reweight_std": 0.0}, r"deploy_reweight_std must be > 0 \(null: no deployed "
                                       r"bias\)"),
        ({"disc_channels": [64, 2]}, r"disc_channels and disc_strides need one entry per "
                                     r"conv, the last channel count 1"),
    ]
    cases += [
        ({"h2": -0.1}, r"h2 must be in \[0, 1\]"),
        ({"reweight_avg": 0.0}, r"reweight_std and reweight_avg must be > 0"),
        ({"exposure_patch": 0}, r"exposure_patch and relight_ngf must be >= 1, relight_blocks >= 0"),
        ({"relight_ngf": 0}, r"exposure_patch and relight_ngf must be >= 1, relight_blocks >= 0"),
        ({"relight_blocks": -1}, r"exposure_patch and relight_ngf must be >= 1, relight_blocks >= 0"),
        ({"disc_channels": [64, 128, 256, 256, 2]}, r"disc_channels and disc_strides need one "
                                                    r"entry per conv, the last channel count 1"),
    ]
    for params, message in cases:
        with pytest.raises(ConfigError, match=f"^method.params: {message}$"):
            from_dict(Params, params, "method.params")
    # the edges of each range are allowed
    from_dict(Params, {"h1": 1.0, "h2": 0.0, "u": 1.0, "exposure_patch": 1, "relight_ngf": 1,
                       "relight_blocks": 0, "beta_adv": 0.0}, "method.params")
    from_dict(Params, {"beta_light": 0.0, "use_light_loss": False}, "method.params")
    with pytest.raises(ConfigError, match="static_loss"):
        from_dict(Params, {"static_loss": "dice"}, "method.params")
    with pytest.raises(ConfigError, match="class_frequencies has 3 values; the label space "
                                          "cityscapes19 has 19 classes"):
        _method(class_frequencies=[0.5, 0.3, 0.2])
    rec = _recipe(Path("/x"), Path("/x"), Path("/x"))
    rec["data"]["crop"] = [30, 48]
    with pytest.raises(ConfigError, match=r"^data.crop 30x48: dania needs sides that are "
                                          r"multiples of 4"):
        _from(rec)
    rec = _recipe(Path("/x"), Path("/x"), Path("/x"))
    rec["data"]["streams"]["target"]["crop"] = [32, 32]
    with pytest.raises(ConfigError, match=r"^data.streams.\*.crop: dania stacks the source and "
                                          r"target batches, so every stream needs the same crop"):
        _from(rec)
    rec["data"]["streams"]["target"]["crop"] = [32, 30]
    with pytest.raises(ConfigError, match=r"^data.streams.target.crop 32x30: dania needs sides "
                                          r"that are multiples of 4 \(the relighting net "
                                          r"downsamples twice\)$"):
        _from(rec)
    m = _method()
    with pytest.raises(ConfigError, match=r"^method dania: the target stream must be a day/night "
                       r"pair reader \(samples with a 'night' image: darkzurich_pairs, "
                       r"synthetic_pairs, derived_pairs\); or set "
                       r"method.params.use_target_day: false$"):
        m.generator_losses({"source": _batch()["source"], "target": {"image": torch.zeros(2, 3, H, W)}})


def _from(rec: dict) -> DANIA:
    recipe = from_dict(Recipe, rec)
    ctx = MethodContext(recipe, build_model(recipe.model), torch.device("cpu"), DistInfo(), False)
    return DANIA(ctx, from_dict(Params, recipe.method.params, "method.params"))


# --- through the trainer ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 coarsely aligned day/night pairs at 64x32 from the scene generator."""
    from edgeseg.data.synth.cli import add_arguments, run

    out = tmp_path_factory.mktemp("pairs")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args(["--out", str(out), "--train", "0", "--val", "0",
                                  "--pairs", "8", "--size", "64x32"])) == 0
    return out


def _run_recipe(tiny_synth: Path, pairs: Path, tiny_checkpoint: Path, out: Path,
                iterations: int) -> dict:
    rec = _recipe(tiny_synth, pairs, out, iterations=iterations)
    rec["method"]["params"] = {"relight_ngf": 8, "relight_blocks": 1}  # a_k from the labels
    rec["model"]["init_from"] = str(tiny_checkpoint)
    return rec


@pytest.fixture(scope="module")
def run(tiny_synth: Path, pairs: Path, tiny_checkpoint: Path,
        tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dania") / "run"
    rec = _run_recipe(tiny_synth, pairs, tiny_checkpoint, out, 6)
    seen: list[dict[str, list[str]]] = []
    step = DANIA.train_step

    def spy(self: DANIA, batch: dict, iteration: int) -> dict[str, float]:
        seen.append({k: sorted(v) for k, v in batch.items()})
        return step(self, batch, iteration)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DANIA, "train_step", spy)
        assert Trainer(from_dict(Recipe, rec), progress=False).run() == 0
    (out / "batches.json").write_text(json.dumps(seen))
    return out


def test_trainer_run_pairs_aligned_and_unlabelled(run: Path) -> None:
    batches = json.loads((run / "batches.json").read_text())
    assert len(batches) == 6
    for b in batches:
        assert b["source"] == ["image", "label"]
        assert b["target"] == ["homography", "image", "night"]  # no pair label
    logs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in logs if r["type"] == "train"]
    for r in train:
        for key in (*GEN_TERMS, "loss_gen_total", *DISC_TERMS):
            assert math.isfinite(r[key]), key
    assert any(r["type"] == "val" and math.isfinite(r["miou"]) for r in logs)
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["method"] == "dania"
    assert ckpt["deploy"]["pre"] == ["relight"] and len(ckpt["deploy"]["class_bias"]) == C
    roles = {n: s["role"] for n, s in ckpt["networks"].items()}
    assert roles == {"model": "segmenter", "relight": "prenet", "disc_d": "", "disc_n": ""}
    # a_k counted from the source stream's labels (all of them) and stored for re-tuning
    from edgeseg.data import open_dataset
    from edgeseg.train.nets.losses import class_frequencies

    source = ckpt["recipe"]["data"]["source"]
    want = class_frequencies(open_dataset(source, "cityscapes19"), C)
    stored = ckpt["method_state"]["extra"]["class_frequencies"]
    assert stored == pytest.approx(want.tolist(), rel=1e-12) and sum(stored) == pytest.approx(1)
    bias = torch.log(class_frequency_weights(want, std=0.1, avg=1.0))
    assert ckpt["deploy"]["class_bias"] == pytest.approx(bias.tolist(), rel=1e-6)


def test_resume_is_exact(run: Path, tiny_synth: Path, pairs: Path, tiny_checkpoint: Path,
                         tmp_path: Path) -> None:
    rec = _run_recipe(tiny_synth, pairs, tiny_checkpoint, tmp_path / "two", 6)
    assert Trainer(from_dict(Recipe, rec), progress=False).run(until=3) == 0
    resumed = Trainer(from_dict(Recipe, rec), resume=str(tmp_path / "two" / "last.pt"),
                      progress=False)
    assert resumed.iteration == 3 and resumed.run() == 0
    a, b = load_checkpoint(run / "last.pt"), load_checkpoint(tmp_path / "two" / "last.pt")
    for key in ("model", "method_state"):
        assert_same_tree(a[key], b[key], key)


def test_exported_graph_is_relight_segmenter_and_bias(run: Path, tiny_synth: Path,
                                                      tmp_path: Path) -> None:
    """`edgeseg export` of the checkpoint is the whole deployed graph: its labels equal
    argmax(G(L(x)) + log w) computed in PyTorch, and the metadata records the bias."""
    from edgeseg.cli import main
    from edgeseg.contract.metadata import read_metadata
    from edgeseg.runtime.backends.onnxruntime import OrtBackend
    from edgeseg.train.checkpoint import load_network

    spec = f"synthetic:{tiny_synth}:night_val"
    out = tmp_path / "dania.onnx"
    assert main(["export", str(run / "last.pt"), "-o", str(out), "--size", "64x32",
                 "--parity-data", spec, "--parity-frames", "2"]) == 0
    meta = read_metadata(out)
    assert meta.extra["deploy"]["pre"] == ["relight"]
    assert len(meta.extra["deploy"]["class_bias"]) == C
    # by hand from the checkpoint's own networks: BGR uint8 -> RGB -> (x/255 - mean)/std ->
    # relight -> segmenter -> + log w_k(deploy std, the stored a_k) -> argmax
    ckpt = load_checkpoint(run / "last.pt")
    relight, _ = load_network(ckpt, "relight", run / "last.pt")
    model, _ = load_network(ckpt, "model", run / "last.pt")
    freq = ckpt["method_state"]["extra"]["class_frequencies"]
    bias = torch.log(class_frequency_weights(freq, std=0.1, avg=1.0)).view(1, -1, 1, 1)
    assert meta.extra["deploy"]["class_bias"] == pytest.approx(bias.flatten().tolist(), rel=1e-6)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (1, 32, 64, 3), dtype=np.uint8)
    mean = torch.tensor(ckpt["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(ckpt["std"]).view(1, 3, 1, 1)
    x = (torch.from_numpy(frame[..., ::-1].copy()).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        logits = model(relight(x)) + bias
        without = model(x) + bias
        unbiased = model(relight(x))
    want = logits.argmax(1).numpy()
    with OrtBackend.from_onnx(out, intra_op_threads=1) as backend:
        got = np.asarray(backend.infer(frame)).reshape(want.shape)
    margin = logits.topk(2, 1).values
    sure = (margin[:, 0] - margin[:, 1] > 1e-3).numpy()  # not a near-tie under rounding
    assert sure.mean() > 0.9 and (got == want)[sure].all()
    assert (got != without.argmax(1).numpy()).any() or (got != unbiased.argmax(1).numpy()).any()


# --- DDP ---------------------------------------------------------------------------------------



def test_ddp_gloo_keeps_every_network_in_sync(tiny_synth: Path, pairs: Path,
                                              tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    rec = _run_recipe(tiny_synth, pairs, tiny_checkpoint, out, 2)
    rec["data"]["val"] = []
    rank0, rank1 = run_ddp(rec, tmp_path, cli_env())
    assert set(rank0) == {"model", "relight", "disc_d", "disc_n"}
    # every weight is all-reduced; the relighting net's BN statistics are each rank's own
    # between forwards (DDP broadcasts rank 0's at the next forward, SyncBN is not asked for)
    local = ("running_mean", "running_var", "num_batches_tracked")
    for tree in (rank0, rank1):
        tree["relight"] = {k: v for k, v in tree["relight"].items() if not k.endswith(local)}
    assert_same_tree(rank0, rank1)


def test_std_sweep_scores_the_deployed_bias_and_none(run: Path, tiny_synth: Path) -> None:
    """benchmarks/dania_std_sweep.py: at the deployed std it scores exactly what eval of the
    checkpoint scores; at std 0 the graph without the bias."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        from dania_std_sweep import sweep
    finally:
        sys.path.pop(0)
    from edgeseg.evaluate import evaluate, open_eval_dataset
    from edgeseg.train.predict import TorchPredictor

    spec = f"synthetic:{tiny_synth}:night_val"
    results = sweep(str(run / "last.pt"), [spec], [0.0, 0.1, 0.3])[spec]
    predictor, _ = TorchPredictor.from_checkpoint(str(run / "last.pt"))
    data = open_eval_dataset(spec, predictor.label_space)
    deployed = evaluate(predictor, data, predictor.label_space, progress=False).metrics.miou
    predictor.model.class_bias = None
    plain = evaluate(predictor, data, predictor.label_space, progress=False).metrics.miou
    assert results["0.1"] == pytest.approx(deployed, abs=1e-12)
    assert results["0.0"] == pytest.approx(plain, abs=1e-12)
    assert set(results) == {"0.0", "0.1", "0.3"}


def test_std_sweep_apply_writes_the_tuned_deployment(run: Path, tiny_synth: Path,
                                                     tmp_path: Path) -> None:
    """`dania_std_sweep.py --apply`: the written checkpoint deploys the chosen std's bias
    (what the sweep scored for it), std 0 deploys none; the weights are the run's."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        from dania_std_sweep import apply_std, sweep
    finally:
        sys.path.pop(0)
    from edgeseg.evaluate import evaluate, open_eval_dataset
    from edgeseg.train.predict import TorchPredictor

    spec = f"synthetic:{tiny_synth}:night_val"
    src = load_checkpoint(run / "last.pt")
    freq = src["method_state"]["extra"]["class_frequencies"]
    out = tmp_path / "tuned.pt"
    bias = apply_std(str(run / "last.pt"), 0.3, out)
    w = class_frequency_weights(freq, std=0.3, avg=1.0)
    assert bias == pytest.approx(torch.log(w).tolist(), rel=1e-6)
    tuned = load_checkpoint(out)
    assert tuned["deploy"]["class_bias"] == bias
    assert tuned["recipe"]["method"]["params"]["deploy_reweight_std"] == 0.3
    assert "optimizers" not in (tuned.get("method_state") or {})  # weights only
    assert_same_tree(src["model"], tuned["model"], "model")
    predictor, _ = TorchPredictor.from_checkpoint(str(out))
    data = open_eval_dataset(spec, predictor.label_space)
    scored = evaluate(predictor, data, predictor.label_space, progress=False).metrics.miou
    swept = sweep(str(run / "last.pt"), [spec], [0.3])[spec]["0.3"]
    assert scored == pytest.approx(swept, abs=1e-12)
    # the class frequencies stay (plain numbers), so the tuned file can be swept again; the
    # resume-only state goes
    assert tuned["method_state"]["extra"] == {"class_frequencies": freq}
    assert set(tuned["method_state"]) == {"networks", "extra"}
    assert sweep(str(out), [spec], [0.3])[spec]["0.3"] == pytest.approx(swept, abs=1e-12)
    assert apply_std(str(run / "last.pt"), 0.0, out) is None
    assert load_checkpoint(out)["deploy"]["class_bias"] is None


# --- each configured value reaches its use -------------------------------------------------


def test_reweighting_std_and_avg_reach_training_and_deployment() -> None:
    m = _method(reweight_std=0.2, reweight_avg=1.5, deploy_reweight_std=0.05)
    assert torch.allclose(m.weights, class_frequency_weights(FREQ, std=0.2, avg=1.5))
    w = class_frequency_weights(FREQ, std=0.05, avg=1.5)
    assert m.deploy().class_bias == pytest.approx(torch.log(w).tolist(), rel=1e-6)
    # the public helper: re-weighting on by default, ones when off
    assert torch.allclose(class_weights(FREQ, 0.1, 1.0), class_frequency_weights(FREQ))
    assert torch.equal(class_weights(FREQ, 0.1, 1.0, enabled=False), torch.ones(C))


def test_segmenter_optimiser_takes_the_recipe_lr_and_head_multiplier() -> None:
    m = _method()
    lrs = [g["lr"] for g in m.optimizers["model"].param_groups]
    assert set(lrs) == {m.ctx.recipe.optim.lr}
    rec = _recipe(Path("/x"), Path("/x"), Path("/x"))
    rec["optim"] = {"name": "sgd", "lr": 0.01, "head_lr_mult": 10.0}
    lrs = sorted(g["lr"] for g in _from(rec).optimizers["model"].param_groups)
    assert lrs[0] == pytest.approx(0.01) and lrs[-1] == pytest.approx(0.1)


def test_eq8_normalization_and_exposure_patch_reach_the_losses() -> None:
    batch = _batch()
    m = _method(seg_normalization="eq8", exposure_patch=16)
    nets = _stand_ins(m)
    losses, _ = m.generator_losses(batch)
    with torch.no_grad():
        logits_s = nets["model"].conv(0.5 * batch["source"]["image"] + 0.1)
    w = class_frequency_weights(FREQ)
    assert losses["loss_seg"].item() == pytest.approx(
        weighted_seg_loss(logits_s, batch["source"]["label"], w, "eq8").item(), rel=1e-6)
    assert losses["loss_seg"].item() != pytest.approx(
        weighted_seg_loss(logits_s, batch["source"]["label"], w).item(), rel=1e-3)
    x = {"s": batch["source"]["image"], "td": batch["target"]["image"],
         "tn": batch["target"]["night"]}
    night = _unit(m, x["tn"])
    want = sum(light_terms(_unit(m, v), _unit(m, 0.5 * v + 0.1), night, night_level(night),
                           patch=16)["exp"].item() for v in x.values())
    assert losses["loss_light_exp"].item() == pytest.approx(want, rel=1e-5)
    default = sum(light_terms(_unit(m, v), _unit(m, 0.5 * v + 0.1), night,
                              night_level(night))["exp"].item() for v in x.values())
    assert abs(default - want) > 1e-4
    # the default normalisation of the helper is the authors' weighted mean
    assert weighted_seg_loss(logits_s, batch["source"]["label"], w).item() == pytest.approx(
        _weighted_ce(logits_s, batch["source"]["label"], w), rel=1e-6)


def test_ce_static_loss_ignores_warp_holes() -> None:
    m = _method(static_loss="ce")
    _stand_ins(m)
    hom = torch.tensor([[1.0, 0.0, -2.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    batch = _batch(homography=hom)
    losses, _ = m.generator_losses(batch)
    logits = _stand_in_logits(m, batch)
    pseudo = _pseudo_by_hand(torch.softmax(logits["td"], 1), torch.softmax(logits["tn"], 1),
                             class_frequency_weights(FREQ), shift=2)
    assert (pseudo == 255).any()
    want = F.cross_entropy(logits["tn"][:, STATIC], pseudo, ignore_index=255)
    assert losses["loss_static"].item() == pytest.approx(want.item(), rel=1e-5)


def test_eq8_with_one_labelled_pixel() -> None:
    logits = torch.tensor([[[[2.0]], [[0.0]]]])
    label = torch.tensor([[[1]]])
    w = torch.tensor([1.0, 3.0])
    want = 3.0 * -math.log(math.exp(0.0) / (math.exp(2.0) + 1.0)) / (1 * 2)
    assert weighted_seg_loss(logits, label, w, "eq8").item() == pytest.approx(want, rel=1e-6)
    assert weighted_seg_loss(logits, torch.full_like(label, 255), w, "eq8").item() == 0.0
