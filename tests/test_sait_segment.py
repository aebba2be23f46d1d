"""method: sait_segment (feature-level alignment of semantically adaptive I2I, Sec. 3.4) —
L_seg, L_SSL and L_adv by hand alone and inside the method, D_seg's loss and what it saw,
the weighted total, pseudo-label thresholding, gradient routing, the switches, config
errors, and a trainer run on real derived data (a translated source folder and a
pseudo-label folder) with exact resume."""

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
from edgeseg.models.compose import Deploy, DeployedSegmenter
from edgeseg.train import derive
from edgeseg.train.checkpoint import load_checkpoint, load_model, save_checkpoint
from edgeseg.train.distributed import DistInfo
from edgeseg.train.methods import MethodContext, get_method
from edgeseg.train.methods.sait_segment import (
    SOURCE_LABEL,
    TARGET_LABEL,
    Params,
    SaitSegment,
    segmentation_loss,
    ssl_loss,
    ssl_mask,
)
from edgeseg.train.nets.discriminator import PatchDiscriminator
from edgeseg.train.nets.registry import build_net, net_spec
from edgeseg.train.trainer import Trainer
from tests.conftest import cli_env, tiny_recipe
from tests.net_checks import (
    ConstantD,
    assert_resumes_exactly,
    assert_same_tree,
    record_steps,
    run_ddp,
)
from tests.net_checks import has_grad as _has_grad
from tests.net_checks import no_grad as _no_grad
from tests.net_checks import same as _same
from tests.net_checks import snapshot as _snapshot

pytestmark = pytest.mark.usefixtures("one_thread")

C = 19  # cityscapes19
H, W = 32, 64
TINY_D = {"disc_channels": [4, 4, 4, 4, 1], "disc_strides": [2, 2, 2, 2, 2]}
PSEUDO = "/nonexistent/pseudo"  # a folder the method-only tests never read


def _recipe(synth: Path, out: Path, source: str, pseudo: str | None = PSEUDO,
            iterations: int = 4, **params: Any) -> dict:
    rec = tiny_recipe(synth, out, data__crop=[H, W], train__iterations=iterations)
    rec["data"]["source"] = source
    rec["data"]["target"] = f"synthetic:{synth}:night_train"
    if pseudo is not None:
        rec["data"]["streams"] = {"target": {"pseudo_labels": pseudo}}
    rec["optim"] = {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}
    rec["method"] = {"name": "sait_segment", "params": {**TINY_D, **params}}
    return rec


def _method(pseudo: str | None = PSEUDO, edit: Any = None, **params: Any) -> SaitSegment:
    """The method without a trainer (no data read): 4 iterations, batch of 2."""
    torch.manual_seed(0)
    rec = _recipe(Path("/nonexistent"), Path("/nonexistent"), "synthetic:/nonexistent:day_train",
                  pseudo, **params)
    if edit is not None:
        edit(rec)
    recipe = from_dict(Recipe, rec)
    ctx = MethodContext(recipe, build_model(recipe.model), torch.device("cpu"), DistInfo(), False)
    method = SaitSegment(ctx, from_dict(Params, recipe.method.params, "method.params"))
    method.train_mode()
    # a fresh tiny net predicts ~1/19 everywhere; large classifier weights (BN on running
    # statistics: tiny activations) give confident, varied predictions, so every term
    # depends on its labels and maps
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        w = method.networks["model"].head.classifier.weight
        w.copy_(torch.randn(w.shape, generator=g) * 2000.0)
    return method


def _batch(seed: int = 0, n: int = 2) -> dict[str, dict[str, torch.Tensor]]:
    """What the trainer hands the method: labelled translated-source crops, target crops
    with pseudo-labels as derived at --threshold 0.5 (255 below it) and their confidence
    (some labelled pixels lie between 0.5 and 0.9: only the re-check drops them)."""
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, C, (n, H, W), generator=g)
    label[:, :6] = 255
    confidence = torch.rand(n, H, W, generator=g)
    pseudo = torch.randint(0, C, (n, H, W), generator=g)
    pseudo[confidence < 0.5] = 255
    return {"source": {"image": torch.randn(n, 3, H, W, generator=g), "label": label},
            "target": {"image": torch.randn(n, 3, H, W, generator=g), "label": pseudo,
                       "confidence": confidence}}


def _ce(logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Cross-entropy written out, averaged over the ``keep`` pixels."""
    log_p = torch.log_softmax(logits.float(), dim=1)
    picked = log_p.gather(1, labels.clamp(max=C - 1)[:, None])[:, 0]
    return -picked[keep].sum() / keep.sum()


class LinearD(nn.Module):
    """A D_seg stand-in: score = w * p_0 + b per pixel (p_0 the class-0 probability), so
    source and target maps score differently; records its inputs."""

    def __init__(self, w: float, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))
        self.b = nn.Parameter(torch.tensor(b))
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return self.w * x[:, :1] + self.b


def _bce(score: torch.Tensor, label: float) -> torch.Tensor:
    """BCE with logits written out: -[y log s(x) + (1 - y) log(1 - s(x))], mean."""
    sig = torch.sigmoid(score)
    return -(label * torch.log(sig) + (1 - label) * torch.log(1 - sig)).mean()


def _hand(m: SaitSegment, batch: dict, mode: str = "vanilla", threshold: float = 0.9
          ) -> dict[str, torch.Tensor]:
    """Every term of Eq. 7 and D_seg's loss by hand, M in eval mode, D_seg = LinearD(3, -0.5)."""
    src, tgt = batch["source"], batch["target"]
    with torch.no_grad():
        model = m.networks["model"]
        l_src, l_tgt = model(src["image"]), model(tgt["image"])
    p_src, p_tgt = torch.softmax(l_src, 1), torch.softmax(l_tgt, 1)
    s_src, s_tgt = 3.0 * p_src[:, :1] - 0.5, 3.0 * p_tgt[:, :1] - 0.5

    def gan(score: torch.Tensor, label: float) -> torch.Tensor:
        return _bce(score, label) if mode == "vanilla" else ((score - label) ** 2).mean()

    keep = (tgt["label"] != 255) & (tgt["confidence"] >= threshold)
    return {"loss_seg": _ce(l_src, src["label"], src["label"] != 255),
            "loss_ssl": _ce(l_tgt, tgt["label"], keep),
            "loss_adv": gan(s_tgt, 0.0),  # target maps labelled "source"
            "disc": 0.5 * gan(s_src, 0.0) + 0.5 * gan(s_tgt, 1.0),
            "p_src": p_src, "p_tgt": p_tgt, "l_tgt": l_tgt, "keep": keep}


# --- losses alone ---------------------------------------------------------------------------


def test_segmentation_loss_by_hand() -> None:
    # 3 classes, 3 pixels: class 2, ignored, class 0
    logits = torch.tensor([[[[1.0, 9.0, 0.0]], [[2.0, -9.0, 0.0]], [[3.0, 5.0, 0.0]]]])
    labels = torch.tensor([[[2, 255, 0]]])
    pixel0 = -math.log(math.exp(3) / (math.exp(1) + math.exp(2) + math.exp(3)))
    pixel2 = math.log(3)
    assert segmentation_loss(logits, labels).item() == pytest.approx((pixel0 + pixel2) / 2)


def test_ssl_loss_counts_only_labelled_pixels_at_or_above_the_threshold() -> None:
    # 4 pixels: kept (0.95), label 255, below 0.9, exactly 0.9 (kept)
    logits = torch.tensor([[[[1.0, 0.0, 4.0, 0.0]], [[0.0, 0.0, 0.0, 2.0]],
                            [[2.0, 0.0, 0.0, 0.0]]]], requires_grad=True)
    labels = torch.tensor([[[2, 255, 0, 1]]])
    confidence = torch.tensor([[[0.95, 0.99, 0.89, 0.9]]])
    pixel0 = -math.log(math.exp(2) / (math.exp(1) + 1 + math.exp(2)))
    pixel3 = -math.log(math.exp(2) / (1 + math.exp(2) + 1))
    loss = ssl_loss(logits, labels, confidence, 0.9)
    assert loss.item() == pytest.approx((pixel0 + pixel3) / 2, rel=1e-6)
    loss.backward()
    grad = logits.grad[0, :, 0]
    assert not grad[:, 1].any() and not grad[:, 2].any()  # dropped pixels: no gradient
    assert grad[:, 0].abs().sum() > 0 and grad[:, 3].abs().sum() > 0
    assert ssl_mask(labels, confidence, 0.9).tolist() == [[[True, False, False, True]]]
    pixel2 = -math.log(math.exp(4) / (math.exp(4) + 1 + 1))  # class 0 at pixel 2
    assert ssl_loss(logits, labels, confidence, 0.5).item() == pytest.approx(
        (pixel0 + pixel2 + pixel3) / 3, rel=1e-6)  # a lower threshold keeps it
    # the stored confidence round(255 p) / 255 as the loader gives it: 230 passes 0.9, 229 not
    stored = torch.tensor([[[230, 229, 255, 0]]], dtype=torch.float32) / 255.0
    assert ssl_mask(torch.tensor([[[1, 1, 1, 1]]]), stored, 0.9).tolist() == [
        [[True, False, True, False]]]


def test_ssl_loss_without_a_kept_pixel_is_zero_not_nan() -> None:
    logits = torch.randn(1, C, 2, 3, requires_grad=True)
    labels = torch.full((1, 2, 3), 255)
    labels[0, 0, 0] = 4  # labelled but not confident enough
    confidence = torch.full((1, 2, 3), 0.5)
    loss = ssl_loss(logits, labels, confidence, 0.9)
    assert loss.item() == 0.0
    loss.backward()
    assert not logits.grad.any()
    confidence[0, 0, 0] = 0.95  # one pixel left: its own cross-entropy, not a fraction of it
    one = -torch.log_softmax(logits.detach()[0, :, 0, 0], 0)[4]
    assert ssl_loss(logits, labels, confidence, 0.9).item() == pytest.approx(one.item(), rel=1e-6)


# --- losses inside the method -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["vanilla", "lsgan"])
def test_every_term_and_the_discriminator_loss_by_hand(mode: str) -> None:
    m = _method(gan_mode=mode)
    d = LinearD(3.0, -0.5)
    m.networks["disc_seg"] = d
    m.networks["model"].eval()  # no dropout: the same logits as by hand
    batch = _batch()
    want = _hand(m, batch, mode)
    assert want["keep"].any() and not want["keep"].all()
    losses, maps = m.segmenter_losses(batch)
    assert set(losses) == {"loss_seg", "loss_ssl", "loss_adv"}
    for key in losses:
        assert losses[key].item() == pytest.approx(want[key].item(), rel=1e-5), key
    # D_seg saw the target maps (softmax) in M's step, then both maps detached in its own
    assert len(d.inputs) == 1 and torch.allclose(d.inputs[0], want["p_tgt"], atol=1e-6)
    assert torch.allclose(maps["src"], want["p_src"], atol=1e-6)
    assert torch.allclose(maps["tgt"], want["p_tgt"], atol=1e-6)
    assert not maps["src"].requires_grad and not maps["tgt"].requires_grad
    disc = m.discriminator_loss(maps)
    assert disc.item() == pytest.approx(want["disc"].item(), rel=1e-5)
    src, tgt = d.inputs[1].split(2)  # one forward on source then target
    assert torch.allclose(src, want["p_src"], atol=1e-6)
    assert torch.allclose(tgt, want["p_tgt"], atol=1e-6)
    # the labels: D says 1 for target, 0 for source; M wants its target maps called source
    assert (SOURCE_LABEL, TARGET_LABEL) == (0.0, 1.0)
    hand = _hand(m, batch, mode)
    s_tgt = 3.0 * hand["p_tgt"][:, :1] - 0.5
    wrong = _bce(s_tgt, 1.0) if mode == "vanilla" else ((s_tgt - 1) ** 2).mean()
    assert abs(wrong.item() - losses["loss_adv"].item()) > 1e-3  # the label matters


def test_the_ssl_term_uses_the_threshold_parameter() -> None:
    batch = _batch()
    for threshold in (0.9, 0.6):
        m = _method(ssl_threshold=threshold)
        m.networks["model"].eval()
        losses, _ = m.segmenter_losses(batch)
        want = _hand(m, batch, threshold=threshold)
        assert losses["loss_ssl"].item() == pytest.approx(want["loss_ssl"].item(), rel=1e-5)
        assert m.ssl_fraction(batch) == pytest.approx(want["keep"].float().mean().item())
    # an ignored pixel counts in neither, whatever its confidence (after resampling, a
    # nearest-neighbour 255 can sit on an interpolated confidence above the threshold)
    tgt = batch["target"]
    tgt["confidence"][:, :4] = 0.99
    tgt["label"][:, :4] = 255
    m = _method()
    keep = (tgt["label"] != 255) & (tgt["confidence"] >= 0.9)
    assert m.ssl_fraction(batch) == pytest.approx(keep.float().mean().item())
    m.networks["model"].eval()
    losses, _ = m.segmenter_losses(batch)
    assert losses["loss_ssl"].item() == pytest.approx(_hand(m, batch)["loss_ssl"].item(), rel=1e-5)
    batch = _batch()
    # pixels that do not count cannot move the loss: change their pseudo-labels
    m = _method()
    m.networks["model"].eval()
    before, _ = m.segmenter_losses(batch)
    tgt = batch["target"]
    dropped = (tgt["label"] != 255) & (tgt["confidence"] < 0.9)
    tgt["label"][dropped] = (tgt["label"][dropped] + 1) % C
    after, _ = m.segmenter_losses(batch)
    assert after["loss_ssl"].item() == pytest.approx(before["loss_ssl"].item(), rel=1e-6)
    tgt["label"][~dropped & (tgt["label"] != 255)] = 0
    again, _ = m.segmenter_losses(batch)
    assert abs(again["loss_ssl"].item() - before["loss_ssl"].item()) > 1e-3


def test_the_streams_feed_their_own_terms() -> None:
    """L_seg reads the source stream, L_SSL and L_adv the target stream: swapping them
    changes each term."""
    m = _method()
    m.networks["disc_seg"] = LinearD(3.0, -0.5)
    m.networks["model"].eval()
    batch = _batch()
    losses, _ = m.segmenter_losses(batch)
    hand = _hand(m, batch)
    with torch.no_grad():
        l_src = m.networks["model"](batch["source"]["image"])
    src_label = batch["source"]["label"]
    on_target = _ce(hand["l_tgt"], src_label, src_label != 255)
    assert abs(on_target.item() - losses["loss_seg"].item()) > 1e-3
    keep = hand["keep"]
    on_source = _ce(l_src, batch["target"]["label"], keep)
    assert abs(on_source.item() - losses["loss_ssl"].item()) > 1e-3
    adv_on_source = _bce(3.0 * hand["p_src"][:, :1] - 0.5, 0.0)
    assert abs(adv_on_source.item() - losses["loss_adv"].item()) > 1e-4


# --- the weighted total -------------------------------------------------------------------------

PAPER = {"lambda_seg": 1.0, "lambda_ssl": 1.0, "lambda_adv": 1e-3}


def _total(logs: dict[str, float], lambdas: dict[str, float]) -> float:
    return (lambdas["lambda_seg"] * logs["loss_seg"] + lambdas["lambda_ssl"] * logs["loss_ssl"]
            + lambdas["lambda_adv"] * logs["loss_adv"])


def test_defaults_are_the_papers() -> None:
    p = Params()
    assert {k: getattr(p, k) for k in PAPER} == PAPER
    assert (p.use_ssl, p.use_adv, p.ssl_threshold, p.gan_mode) == (True, True, 0.9, "vanilla")
    assert p.disc_channels == (64, 128, 256, 512, 1) and p.disc_strides == (2,) * 5
    disc = SaitSegment.optimizer_defaults["disc"]  # BDL's discriminator optimiser
    assert (disc.name, disc.lr, disc.betas, disc.weight_decay, disc.schedule, disc.power) == (
        "adam", 1e-4, (0.9, 0.99), 0.0, "poly", 0.9)
    assert SaitSegment.labelled_streams == ("source",)
    assert SaitSegment.streams == ("source", "target")
    assert get_method("sait_segment") is SaitSegment
    # the paper-sized D_seg: AdaptSegNet's 5 convs, kernel 4, stride 2, LeakyReLU 0.2, no norm
    m = _method(edit=lambda rec: rec["method"]["params"].update(
        disc_channels=[64, 128, 256, 512, 1], disc_strides=[2, 2, 2, 2, 2]))
    d = m.networks["disc_seg"]
    assert isinstance(d, PatchDiscriminator)
    convs = [x for x in d.modules() if isinstance(x, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (C, 64, (4, 4), (2, 2)), (64, 128, (4, 4), (2, 2)), (128, 256, (4, 4), (2, 2)),
        (256, 512, (4, 4), (2, 2)), (512, 1, (4, 4), (2, 2))]
    assert {x.negative_slope for x in d.modules() if isinstance(x, nn.LeakyReLU)} == {0.2}
    assert not [x for x in d.modules() if isinstance(x, (nn.InstanceNorm2d, nn.BatchNorm2d))]
    assert m.specs["disc_seg"].role == ""  # training only, never deployed
    opt = m.optimizers["disc_seg"]
    assert opt.param_groups[0]["betas"] == (0.9, 0.99) and opt.param_groups[0]["lr"] == 1e-4
    assert m.deploy() == Deploy("model")


def test_d_seg_and_the_segmenter_optimiser_follow_the_recipe() -> None:
    def edit(rec: dict) -> None:
        rec["optim"]["head_lr_mult"] = 10.0  # BDL: the classifier at 10x

    m = _method(edit=edit, disc_channels=[3, 5, 7, 1], disc_strides=[2, 1, 2, 1])
    convs = [x for x in m.networks["disc_seg"].modules() if isinstance(x, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in convs] == [
        (C, 3, (2, 2)), (3, 5, (1, 1)), (5, 7, (2, 2)), (7, 1, (1, 1))]
    assert m.specs["disc_seg"].args["channels"] == [3, 5, 7, 1]
    lrs = {g["name"]: g["lr"] for g in m.optimizers["model"].param_groups}
    assert lrs == {"backbone": pytest.approx(0.01), "head": pytest.approx(0.1)}
    assert m.optimizers["model"].param_groups[0]["momentum"] == 0.9


def test_total_uses_each_weight_and_each_term() -> None:
    lambdas = {"lambda_seg": 0.7, "lambda_ssl": 1.9, "lambda_adv": 0.3}
    m = _method(**lambdas)
    m.networks["disc_seg"] = ConstantD(0.4)
    logs = m.train_step(_batch(), 0)
    assert all(logs[k] > 0.1 for k in ("loss_seg", "loss_ssl", "loss_adv")), logs
    assert logs["loss_adv"] == pytest.approx(math.log1p(math.exp(0.4)), rel=1e-6)  # BCE(0.4, 0)
    assert logs["loss_disc_seg"] == pytest.approx(  # both maps score 0.4
        0.5 * math.log1p(math.exp(0.4)) + 0.5 * math.log1p(math.exp(-0.4)), rel=1e-6)
    assert logs["loss_total"] == pytest.approx(_total(logs, lambdas), rel=1e-6)
    for a, b in (("lambda_seg", "lambda_ssl"), ("lambda_ssl", "lambda_adv"),
                 ("lambda_seg", "lambda_adv")):
        swapped = {**lambdas, a: lambdas[b], b: lambdas[a]}
        assert abs(_total(logs, swapped) - logs["loss_total"]) > 1e-3
    for key in ("loss_seg", "loss_ssl", "loss_adv"):  # a dropped term shows
        assert abs(_total({**logs, key: 0.0}, lambdas) - logs["loss_total"]) > 1e-2
    wrong_label = {**logs, "loss_adv": math.log1p(math.exp(-0.4))}  # BCE(0.4, 1)
    assert abs(_total(wrong_label, lambdas) - logs["loss_total"]) > 1e-2
    assert m.weights == {"loss_seg": 0.7, "loss_ssl": 1.9, "loss_adv": 0.3}
    assert 0 < logs["ssl_fraction"] < 1


# --- gradient routing -------------------------------------------------------------------------


def test_each_optimiser_steps_the_gradient_of_its_own_objective(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """M steps on the gradient of Eq. 7 (D_seg frozen: none of L_adv's gradient is left on
    D_seg for its step); D_seg steps on the gradient of its own loss alone, on maps
    detached from M (M gets no gradient in D_seg's step)."""
    lambdas = {"lambda_seg": 0.7, "lambda_ssl": 1.9, "lambda_adv": 0.3}
    m, ref = _method(**lambdas), _method(**lambdas)  # same seed: same weights
    for method in (m, ref):
        monkeypatch.setattr(method, "set_model_mode", method.networks["model"].eval)
        method.networks["model"].eval()
    seen = record_steps(m, monkeypatch)
    batch = _batch()
    m.train_step(batch, 0)
    assert set(seen) == {"model", "disc_seg"}
    assert _no_grad(m.networks["model"]) and _no_grad(m.networks["disc_seg"])  # cleared

    model, disc = ref.networks["model"], ref.networks["disc_seg"]
    losses, maps = ref.segmenter_losses(batch)
    total = sum(lambdas[f"lambda_{k[5:]}"] * v for k, v in losses.items())
    want = torch.autograd.grad(total, list(model.parameters()), allow_unused=True,
                               retain_graph=True)
    for got, expected in zip(seen["model"], want):
        if expected is None:
            assert got is None or not got.any()
        else:
            assert torch.allclose(got, expected, rtol=1e-4, atol=1e-7)
    adv = torch.autograd.grad(losses["loss_adv"], list(disc.parameters()))
    assert any(g.abs().sum() > 0 for g in adv)  # L_adv does depend on D_seg ...
    want_d = torch.autograd.grad(ref.discriminator_loss(maps), list(disc.parameters()))
    for got, expected in zip(seen["disc_seg"], want_d):  # ... but D_seg's step ignores it
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-8)


def test_discriminator_step_changes_no_segmenter_weight() -> None:
    m = _method()
    losses, maps = m.segmenter_losses(_batch())
    # L_adv reaches M (backbone and head) through the target maps
    m.zero_grad()
    losses["loss_adv"].backward()
    assert _has_grad(m.networks["model"].backbone) and _has_grad(m.networks["model"].head)
    m.zero_grad()
    before = _snapshot(m.networks["model"])
    loss = m.discriminator_loss(maps)
    loss.backward()
    assert _no_grad(m.networks["model"]) and _has_grad(m.networks["disc_seg"])
    m.step("disc_seg")
    assert _same(before, _snapshot(m.networks["model"]))


def test_train_step_trains_both_and_keeps_batchnorm_statistics() -> None:
    m = _method()
    model_before = _snapshot(m.networks["model"])
    disc_before = _snapshot(m.networks["disc_seg"])
    logs = m.train_step(_batch(), 0)
    after = _snapshot(m.networks["model"])
    assert not torch.equal(model_before["head.classifier.weight"], after["head.classifier.weight"])
    stats = [k for k in after if "running_" in k]
    assert stats and all(torch.equal(model_before[k], after[k]) for k in stats)  # freeze_bn
    assert not _same(disc_before, _snapshot(m.networks["disc_seg"]))
    assert all(p.requires_grad for p in m.networks["disc_seg"].parameters())  # unfrozen again
    assert set(logs) == {"loss_seg", "loss_ssl", "loss_adv", "loss_total", "ssl_fraction",
                         "loss_disc_seg"}
    unfrozen = _method(freeze_bn=False)
    unfrozen.train_step(_batch(), 0)
    moved = _snapshot(unfrozen.networks["model"])
    assert not all(torch.equal(model_before[k], moved[k]) for k in stats)


# --- switches and config ----------------------------------------------------------------------


def _calls(m: SaitSegment) -> list[int]:
    """Batch sizes M is called with."""
    sizes: list[int] = []
    m.networks["model"].register_forward_hook(lambda mod, args, out: sizes.append(args[0].shape[0]))
    return sizes


@pytest.mark.parametrize("ssl,adv", [(False, True), (True, False), (False, False)])
def test_switches(ssl: bool, adv: bool) -> None:
    m = _method(pseudo=PSEUDO if ssl else None, use_ssl=ssl, use_adv=adv)
    assert ("disc_seg" in m.networks) == adv and ("disc_seg" in m.optimizers) == adv
    sizes = _calls(m)
    batch = _batch()
    if not ssl:  # round 1: an unlabelled target stream, as the platform delivers it
        del batch["target"]["label"], batch["target"]["confidence"]
    logs = m.train_step(batch, 0)
    assert ("loss_ssl" in logs) == ssl and ("ssl_fraction" in logs) == ssl
    assert ("loss_adv" in logs) == adv and ("loss_disc_seg" in logs) == adv
    assert sizes == [4 if (ssl or adv) else 2]  # the target is read only when a term needs it
    if not adv:
        assert m.segmenter_losses(batch)[1] == {}  # nothing for a discriminator step
    weights = {"lambda_seg": 1.0, "lambda_ssl": 1.0, "lambda_adv": 1e-3}
    assert logs["loss_total"] == pytest.approx(
        _total({"loss_ssl": 0.0, "loss_adv": 0.0, **logs}, weights), rel=1e-6)


def test_params_are_validated() -> None:
    cases = [({"lambda_ssl": 0}, "lambda_ssl is 0 with use_ssl: true; set use_ssl: false to "
                                 "turn the term off"),
             ({"lambda_adv": 0}, "lambda_adv is 0 with use_adv: true; set use_adv: false to "
                                 "turn the term off"),
             ({"lambda_seg": 0}, "lambda_seg is 0: L_seg is the only supervised term of Eq. 7"),
             ({"lambda_adv": -1.0}, "lambda_adv must be >= 0"),
             ({"lambda_ssl": -1.0}, "lambda_ssl must be >= 0"),
             ({"ssl_threshold": 1.5}, "ssl_threshold 1.5: expected a probability in [0, 1]"),
             ({"ssl_threshold": -0.1}, "ssl_threshold -0.1: expected a probability in [0, 1]"),
             ({"disc_channels": [4, 1], "disc_strides": [2]},
              "disc_channels and disc_strides need one entry per conv (>= 2)"),
             ({"disc_channels": [1], "disc_strides": [2]},
              "disc_channels and disc_strides need one entry per conv (>= 2)"),
             ({"disc_channels": [4, 2], "disc_strides": [2, 2]},
              "disc_channels [4, 2]: the last conv must have 1 channel (a logit map)")]
    for params, message in cases:
        with pytest.raises(ConfigError) as err:
            from_dict(Params, params, "method.params")
        assert _one_line(err).endswith(message), err.value
    with pytest.raises(ConfigError, match="gan_mode"):
        from_dict(Params, {"gan_mode": "wgan"}, "method.params")
    for params in ({"lambda_ssl": 0, "use_ssl": False}, {"lambda_adv": 0, "use_adv": False},
                   {"ssl_threshold": 0.0}, {"ssl_threshold": 1.0}):
        from_dict(Params, params, "method.params")  # switched off, or at the bounds


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_ssl_needs_a_pseudo_label_folder_on_the_target_stream() -> None:
    with pytest.raises(ConfigError) as err:
        _method(pseudo=None)
    assert _one_line(err) == (
        "data.streams.target.pseudo_labels is not set: method sait_segment with use_ssl: true "
        "trains on target pseudo-labels (edgeseg derive pseudo-label CKPT --data TARGET -o DIR "
        "--threshold 0.9); set it, or set method.params.use_ssl: false")
    _method(pseudo=None, use_ssl=False)  # round 1


def test_a_folder_derived_above_the_threshold_is_refused(tmp_path: Path) -> None:
    def folder(threshold: float) -> str:
        out = tmp_path / str(threshold)
        out.mkdir()
        (out / "manifest.json").write_text(json.dumps(
            {"format": derive.FORMAT, "command": "pseudo-label", "threshold": threshold}))
        return str(out)

    high = folder(0.95)
    with pytest.raises(ConfigError) as err:
        _method(pseudo=high)
    assert _one_line(err) == (
        f"data.streams.target.pseudo_labels: {high} was derived with --threshold 0.95, above "
        "method.params.ssl_threshold 0.9: pixels in between are already ignored; derive with "
        "--threshold 0.9 or set ssl_threshold: 0.95")
    _method(pseudo=high, ssl_threshold=0.95)
    _method(pseudo=folder(0.9))
    _method(pseudo=folder(0.5))  # a looser folder: the method applies 0.9 itself


def test_crops_are_checked() -> None:
    def crops(glob: list[int], **per_stream: list[int]) -> Any:
        def edit(rec: dict) -> None:
            rec["data"]["crop"] = glob
            for name, crop in per_stream.items():
                rec["data"].setdefault("streams", {}).setdefault(name, {})["crop"] = crop
        return edit

    with pytest.raises(ConfigError) as err:
        _method(edit=crops([32, 64], target=[32, 32]))
    assert _one_line(err).startswith("data.streams.*.crop: sait_segment stacks")
    with pytest.raises(ConfigError) as err:
        _method(edit=crops([16, 64]))  # 5 stride-2 convs need 32
    assert _one_line(err).startswith("data.crop 16x64: D_seg (strides [2, 2, 2, 2, 2]) needs "
                                     "sides >= 32")
    with pytest.raises(ConfigError) as err:
        _method(edit=crops([32, 64], source=[16, 64]))
    assert _one_line(err).startswith("data.streams.source.crop 16x64: D_seg")
    _method(edit=crops([16, 64]), use_adv=False)  # no D_seg: any common crop
    _method(edit=crops([16, 64]), disc_strides=[2, 2, 2, 2, 1])  # 4 stride-2 convs: 16
    _method(edit=crops([32, 64], target=[16, 16]), use_ssl=False, use_adv=False,
            pseudo=None)  # source only: the target stream is not read


# --- through the trainer, on derived data -----------------------------------------------------


@pytest.fixture(scope="module")
def derived(tiny_synth: Path, tiny_checkpoint: Path,
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Round 1's data as the CLI makes it: ``derive translate`` of day_train through a
    translator network of a checkpoint (the tiny checkpoint plus a random ``gen_s2t``) and
    ``derive pseudo-label`` of night_train by the tiny segmenter at threshold 0.5."""
    root = tmp_path_factory.mktemp("sait_round1")
    ckpt = load_checkpoint(tiny_checkpoint)
    torch.manual_seed(0)
    gen = net_spec("resnet_generator", "translator", ngf=4, n_blocks=1)
    gen_net = build_net(gen)
    with torch.no_grad():
        for p in gen_net.parameters():
            p.normal_(0.0, 0.3)
    ckpt["networks"] = {**ckpt.get("networks", {}), "gen_s2t": gen.to_dict()}
    ckpt["method_state"] = {**ckpt["method_state"],
                            "networks": {"gen_s2t": gen_net.state_dict()}}
    save_checkpoint(root / "translator.pt", ckpt)
    translated = derive.translate(root / "translator.pt", "gen_s2t",
                                  f"synthetic:{tiny_synth}:day_train", root / "translated",
                                  preview=0, progress=False)
    derive.pseudo_label(tiny_checkpoint, f"synthetic:{tiny_synth}:night_train", root / "pseudo",
                        threshold=0.5, preview=0, progress=False)
    return {"source": translated["output_spec"], "pseudo": str(root / "pseudo")}


def _run_recipe(synth: Path, out: Path, derived: dict[str, str], checkpoint: Path,
                **params: Any) -> dict:
    rec = _recipe(synth, out, derived["source"], derived["pseudo"],
                  **{"ssl_threshold": 0.5, **params})
    rec["model"]["init_from"] = str(checkpoint)
    return rec


@pytest.fixture(scope="module")
def run(tiny_synth: Path, tiny_checkpoint: Path, derived: dict[str, str],
        tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sait_segment") / "run"
    rec = _run_recipe(tiny_synth, out, derived, tiny_checkpoint)
    assert Trainer(from_dict(Recipe, rec), progress=False).run() == 0
    return out


def test_trainer_run_on_derived_data(run: Path) -> None:
    logs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in logs if r["type"] == "train"]
    assert [r["iter"] for r in train] == [1, 2, 3, 4]
    for r in train:
        for key in ("loss_seg", "loss_ssl", "loss_adv", "loss_disc_seg", "loss_total"):
            assert math.isfinite(r[key]), (key, r)
        assert 0 < r["ssl_fraction"] <= 1  # the pseudo-labels kept pixels
        assert r["loss_total"] == pytest.approx(
            _total(r, {"lambda_seg": 1.0, "lambda_ssl": 1.0, "lambda_adv": 1e-3}), rel=1e-6)
        assert r["lr_disc_seg"] < 1e-4 or r["iter"] == 1  # BDL's poly on D_seg
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["method"] == "sait_segment"
    assert ckpt["deploy"] == {"segmenter": "model", "pre": [], "class_bias": None}
    assert {n: s["role"] for n, s in ckpt["networks"].items()} == {
        "model": "segmenter", "disc_seg": ""}
    assert set(ckpt["method_state"]["optimizers"]) == {"model", "disc_seg"}


def test_the_target_stream_carries_pseudo_labels_only(tiny_synth: Path, tiny_checkpoint: Path,
                                                      derived: dict[str, str],
                                                      tmp_path: Path) -> None:
    rec = _run_recipe(tiny_synth, tmp_path / "a", derived, tiny_checkpoint)
    rec["data"]["streams"]["target"]["scale_range"] = [1.0, 1.0]  # no resampling
    trainer = Trainer(from_dict(Recipe, rec), progress=False)
    assert trainer.streams.provenance["target"]["pseudo_labels"] == derived["pseudo"]
    assert trainer.streams.provenance["target"]["threshold"] == 0.5
    batch = next(trainer.streams)
    assert sorted(batch["target"]) == ["confidence", "image", "label"]
    label, confidence = batch["target"]["label"], batch["target"]["confidence"]
    assert 0.2 < (label != 255).float().mean() < 1
    # derived at 0.5: every labelled pixel was stored with round(255 p) >= 127.5
    assert (confidence[label != 255] >= 128 / 255 - 1e-6).all()
    assert (confidence[label == 255] < 128 / 255 + 1e-6).all()
    # round 1: no pseudo-labels, no SSL: the dataset's own labels never arrive
    rec = _run_recipe(tiny_synth, tmp_path / "b", {**derived, "pseudo": None}, tiny_checkpoint,
                      use_ssl=False)
    assert "streams" not in rec["data"]
    batch = next(Trainer(from_dict(Recipe, rec), progress=False).streams)
    assert sorted(batch["target"]) == ["image"] and "label" in batch["source"]
    # with use_ssl the missing folder is one line naming the key
    rec["method"]["params"]["use_ssl"] = True
    with pytest.raises(ConfigError) as err:
        Trainer(from_dict(Recipe, rec), progress=False)
    assert _one_line(err).startswith("data.streams.target.pseudo_labels is not set")


def test_resume_is_exact(run: Path, tiny_synth: Path, tiny_checkpoint: Path,
                         derived: dict[str, str], tmp_path: Path) -> None:
    rec = _run_recipe(tiny_synth, tmp_path / "two", derived, tiny_checkpoint)
    a, b = assert_resumes_exactly(rec, run)
    assert a["method_state"]["optimizers"]["disc_seg"]["state"]
    start = load_checkpoint(tiny_checkpoint)["model"]
    assert not _same(start, a["model"])  # M trained from the init_from weights


def test_deployed_graph_is_the_bare_segmenter(run: Path) -> None:
    """best.pt/last.pt deploy M itself: load_model (export, eval, the next round's
    pseudo-labels) rebuilds the plain segmenter with the trained weights, D_seg is absent."""
    for name in ("best.pt", "last.pt"):
        model, ckpt = load_model(run / name)
        assert not isinstance(model, DeployedSegmenter)
        assert_same_tree({k: v for k, v in model.state_dict().items()}, ckpt["model"], name)


def test_ddp_gloo_keeps_the_segmenter_and_d_seg_in_sync(
        tiny_synth: Path, tiny_checkpoint: Path, derived: dict[str, str], tmp_path: Path) -> None:
    """torchrun, 2 CPU processes, different data per rank: D_seg is called with frozen
    parameters in M's step and on detached maps in its own; both networks end
    bit-identical on both ranks and trained."""
    out = tmp_path / "ddp"
    rec = _run_recipe(tiny_synth, out, derived, tiny_checkpoint, iterations=2)
    rec["data"]["val"] = []
    rank0, rank1 = run_ddp(rec, tmp_path, cli_env())
    assert set(rank0) == {"model", "disc_seg"}
    assert_same_tree(rank0, rank1)
    ckpt = load_checkpoint(out / "last.pt")
    assert_same_tree(ckpt["model"], rank0["model"], "model")
    assert not _same(load_checkpoint(tiny_checkpoint)["model"], rank0["model"])
    assert all(opt["state"] for opt in ckpt["method_state"]["optimizers"].values())
