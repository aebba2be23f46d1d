"""method: domain_extension (stage 2 of unsupervised domain extension) — A_s and L_sup by hand,
Eq. 12-16 by hand inside the method, the ramps, the warm-up, the EMA teacher, dropout only in
the consistency forward, the Table 1 switches, a trainer run chained from a cyclegan_fl
translator (resume, deploy) and DDP."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from edgeseg.config import ConfigError, Recipe, from_dict
from edgeseg.models import build_model
from edgeseg.models.compose import Deploy, DeployedSegmenter
from edgeseg.train.checkpoint import CheckpointError, load_checkpoint, load_model
from edgeseg.train.distributed import DistInfo
from edgeseg.train.methods import MethodContext, get_method
from edgeseg.train.methods.base import freeze_batchnorm
from edgeseg.train.methods.domain_extension import (
    DomainExtension,
    Params,
    strong_photometric,
    supervised_loss,
)
from edgeseg.train.schedule import Ramp, value_at
from edgeseg.train.trainer import Trainer
from tests.conftest import cli_env, tiny_recipe
from tests.net_checks import assert_resumes_exactly, assert_same_tree, record_steps, run_ddp
from tests.net_checks import has_grad as _has_grad
from tests.net_checks import same as _same
from tests.net_checks import snapshot as _snapshot

TINY = {"translator_ngf": 8, "translator_blocks": 1}
TRANSLATOR = {"checkpoint": "/nonexistent/stage1/last.pt", "network": "gen_s2t_ema"}
SUP = ("loss_seg_day", "loss_seg_trans")
SSL = ("loss_ssl_night", "loss_ssl_trans")
SSL_LOGS = {*SSL, "lambda_ssl", "rho"}
C = 19  # cityscapes19

pytestmark = pytest.mark.usefixtures("one_thread")


def _recipe(synth: Path, out: Path, iterations: int = 4, translator: dict | None = TRANSLATOR,
            **params: Any) -> dict:
    rec = tiny_recipe(synth, out, data__crop=[32, 48], train__iterations=iterations)
    rec["data"]["target"] = f"synthetic:{synth}:night_train"
    rec["optim"] = {"name": "adam", "lr": 1e-4}  # Sec. 4.2
    rec["method"] = {"name": "domain_extension", "params": {**TINY, **params}}
    if translator is not None:
        rec["method"]["init_from"] = {"translator": dict(translator)}
    return rec


def _method(iterations: int = 4, translator: dict | None = TRANSLATOR,
            model_edit: Callable[[nn.Module], None] | None = None, optim: dict | None = None,
            **params: Any) -> DomainExtension:
    """The method without a trainer (no data, the translator keeps its random init)."""
    torch.manual_seed(0)
    rec = _recipe(Path("/nonexistent"), Path("/nonexistent"), iterations, translator, **params)
    rec["optim"].update(optim or {})
    recipe = from_dict(Recipe, rec)
    model = build_model(recipe.model)
    if model_edit is not None:
        model_edit(model)
    ctx = MethodContext(recipe, model, torch.device("cpu"), DistInfo(), False)
    method = DomainExtension(ctx, from_dict(Params, recipe.method.params, "method.params"))
    method.train_mode()
    return method


def _batch(seed: int = 0, n: int = 2) -> dict[str, dict[str, torch.Tensor]]:
    """What the trainer hands the method: labelled day crops, unlabelled night crops."""
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, C, (n, 32, 48), generator=g)
    label[:, :6] = 255  # unlabelled rows count in no cross-entropy
    return {"source": {"image": torch.randn(n, 3, 32, 48, generator=g), "label": label},
            "target": {"image": torch.randn(n, 3, 32, 48, generator=g)}}


def _stats(m: DomainExtension) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(m.ctx.recipe.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(m.ctx.recipe.data.std).view(1, 3, 1, 1)
    return mean, std


def _to_gan(m: DomainExtension, x: torch.Tensor) -> torch.Tensor:
    """Trainer batch (x/255 - mean)/std -> [-1, 1], by hand."""
    mean, std = _stats(m)
    return (x * std + mean) * 2 - 1


def _to_seg(m: DomainExtension, x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> trainer normalisation, by hand."""
    mean, std = _stats(m)
    return ((x + 1) / 2 - mean) / std


class Tanh(nn.Module):
    """A translator stand-in with outputs in [-1, 1]: tanh(0.7 x - 0.3); records its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return torch.tanh(0.7 * x - 0.3)


def _translated(m: DomainExtension, x_s: torch.Tensor) -> torch.Tensor:
    return _to_seg(m, torch.tanh(0.7 * _to_gan(m, x_s) - 0.3))


def _ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Pixel-mean cross-entropy over the labelled pixels, written out."""
    keep = labels != 255
    log_p = torch.log_softmax(logits.float(), dim=1)
    picked = log_p.gather(1, labels.clamp(max=C - 1)[:, None])[:, 0]
    return -picked[keep].sum() / keep.sum()


def _masked_mse(student: torch.Tensor, teacher: torch.Tensor, rho: float) -> torch.Tensor:
    """Eq. 14-15 written out: pixels where the teacher's top probability >= rho, squared
    softmax differences summed over them, divided by N*C*H*W."""
    t = torch.softmax(teacher.float(), dim=1).detach()
    s = torch.softmax(student.float(), dim=1)
    mask = (t.max(dim=1, keepdim=True).values >= rho).float()
    return (mask * (t - s) ** 2).sum() / t.numel()


def _confident(m: DomainExtension, scale: float = 2000.0) -> None:
    """A fresh tiny net predicts ~1/19 everywhere; large classifier weights make the top
    probabilities spread over (0.1, 1) (BN on running statistics: tiny activations), so a
    threshold of 0.6 keeps some pixels, drops others; the teacher gets other weights than
    the student. With BN on batch statistics a small ``scale`` does."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name in ("model", "teacher"):
            w = m.networks[name].head.classifier.weight
            w.copy_(torch.randn(w.shape, generator=g) * scale)


def _no_dropout(model: nn.Module) -> None:
    model.head.aspp.project[3] = nn.Identity()  # DeepLabv3+'s only dropout layer


def _dropouts(net: nn.Module) -> list[nn.Module]:
    return [mod for mod in net.modules() if isinstance(mod, nn.Dropout)]


def _norms(net: nn.Module) -> list[nn.Module]:
    return [mod for mod in net.modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)]


# --- A_s and L_sup by hand ---------------------------------------------------------------

# two pixels of one image: p1 = (0.2, 0.4, 0.6), p2 = (0.8, 0.6, 0.1)
# luma(p1) = 0.299*0.2 + 0.587*0.4 + 0.114*0.6 = 0.363
# luma(p2) = 0.299*0.8 + 0.587*0.6 + 0.114*0.1 = 0.6028; image mean luma 0.4829
PIXELS = [[0.2, 0.4, 0.6], [0.8, 0.6, 0.1]]


def _image(pixels: list[list[float]]) -> torch.Tensor:
    """(1, 3, 1, P) from a list of RGB pixels."""
    return torch.tensor(pixels, dtype=torch.float32).t().reshape(1, 3, 1, len(pixels))


def _pixels(x: torch.Tensor) -> list[list[float]]:
    return x.reshape(3, -1).t().tolist()


def _apply(x: torch.Tensor, b: float = 1.0, c: float = 1.0, s: float = 1.0,
           noise: torch.Tensor | None = None) -> torch.Tensor:
    one = torch.ones(x.shape[0])
    return strong_photometric(x, one * b, one * c, one * s,
                              torch.zeros_like(x) if noise is None else noise)


def _close_pixels(got: torch.Tensor, want: list[list[float]]) -> None:
    assert _pixels(got) == [pytest.approx(p, abs=1e-6) for p in want]


def test_strong_photometric_by_hand() -> None:
    x = _image(PIXELS)
    # identity: all factors 1, no noise (also on random images)
    rand = torch.rand(3, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(_apply(rand), rand, atol=1e-6)
    # brightness 1.5 scales, 1.2 clipped to 1
    _close_pixels(_apply(x, b=1.5), [[0.3, 0.6, 0.9], [1.0, 0.9, 0.15]])
    # contrast 2 about the image's mean luma 0.4829 (the channel mean 0.45 would differ):
    # p1: 0.4829 + 2*(0.2 - 0.4829) = -0.0829 -> 0, 0.3171, 0.7171
    # p2: 1.1171 -> 1, 0.7171, 0.4829 + 2*(0.1 - 0.4829) = -0.2829 -> 0
    _close_pixels(_apply(x, c=2.0), [[0.0, 0.3171, 0.7171], [1.0, 0.7171, 0.0]])
    _close_pixels(_apply(x, c=0.0), [[0.4829] * 3, [0.4829] * 3])
    # saturation about each pixel's own luma: 0 = grey, 2 = twice as far
    _close_pixels(_apply(x, s=0.0), [[0.363] * 3, [0.6028] * 3])
    # p1: 0.363 + 2*(0.2 - 0.363) = 0.037, 0.437, 0.837; p2: 0.9972, 0.5972, -0.4028 -> 0
    _close_pixels(_apply(x, s=2.0), [[0.037, 0.437, 0.837], [0.9972, 0.5972, 0.0]])
    # noise added, then clipped at both ends
    noise = _image([[0.5, -0.1, 0.0], [0.3, 0.0, -0.3]])
    _close_pixels(_apply(x, noise=noise), [[0.7, 0.3, 0.6], [1.0, 0.6, 0.0]])
    # in order: brightness 1.5, contrast 0.5, saturation 0.5, noise
    # after brightness: p1 (0.3, 0.6, 0.9), p2 (1.0, 0.9, 0.15)
    # lumas 0.5445 and 0.8444, mean m = 0.69445; contrast: m + 0.5*(v - m)
    # p1 (0.497225, 0.647225, 0.797225), p2 (0.847225, 0.797225, 0.422225)
    # saturation about their lumas 0.619475 and 0.769425: g + 0.5*(v - g)
    # p1 (0.55835, 0.63335, 0.70835), p2 (0.808325, 0.783325, 0.595825)
    # noise (0.5, 0, -0.8) and (0, 0.05, 0), clipped
    noise = _image([[0.5, 0.0, -0.8], [0.0, 0.05, 0.0]])
    _close_pixels(strong_photometric(x, torch.tensor([1.5]), torch.tensor([0.5]),
                                     torch.tensor([0.5]), noise),
                  [[1.0, 0.63335, 0.0], [0.808325, 0.833325, 0.595825]])
    # each step clips before the next: contrast 2 then saturation 0 greys the clipped
    # pixels p1 (0, 0.3171, 0.7171) and p2 (1, 0.7171, 0), lumas 0.2678871 and 0.7199377
    # (unclipped, -0.0829 and 1.1171 / -0.2829 would give 0.2431 and 0.7227)
    _close_pixels(_apply(x, c=2.0, s=0.0), [[0.2678871] * 3, [0.7199377] * 3])
    # saturation 3: p1 (-0.126 -> 0, 0.474, 1.074 -> 1), p2 (1.1944 -> 1, 0.5944,
    # -0.9056 -> 0), then noise (0, 0, 0) and (-0.5, 0, 0.5) moves the clipped values
    noise = _image([[0.0, 0.0, 0.0], [-0.5, 0.0, 0.5]])
    _close_pixels(_apply(x, s=3.0, noise=noise), [[0.0, 0.474, 1.0], [0.5, 0.5944, 0.5]])
    # per image: each image its own factors and its own mean luma
    other = _image([[0.0, 0.0, 0.0], [0.1, 0.1, 0.1]])
    both = strong_photometric(torch.cat([x, other]), torch.tensor([1.0, 2.0]),
                              torch.tensor([2.0, 3.0]), torch.tensor([1.0, 1.0]),
                              torch.zeros(2, 3, 1, 2))
    _close_pixels(both[:1], [[0.0, 0.3171, 0.7171], [1.0, 0.7171, 0.0]])
    # other: brightness 2 -> 0 and 0.2, mean luma 0.1, contrast 3 -> 0.1 + 3*(-0.1) -> 0, 0.4
    _close_pixels(both[1:], [[0.0, 0.0, 0.0], [0.4, 0.4, 0.4]])


def test_strong_augment_keeps_the_normalisation_and_uses_the_jitter_and_noise() -> None:
    m = _method(jitter=0.0, noise_std=0.0)
    x = torch.rand(2, 3, 32, 48) * 0.8 + 0.1  # 0..1 intensities, nothing clipped
    mean, std = _stats(m)
    batch = (x - mean) / std
    assert torch.allclose(m.strong_augment(batch), batch, atol=1e-5)  # no jitter, no noise
    m = _method(jitter=0.0, noise_std=0.05)
    diff = (m.strong_augment(batch) - batch) * std  # back on the 0..1 scale
    assert 0.045 < diff.std().item() < 0.055 and abs(diff.mean().item()) < 0.005
    m = _method(jitter=0.3, noise_std=0.0)
    ratio = (m.strong_augment(batch) * std + mean) / x
    # brightness only would be a constant ratio per image; here the three factors vary
    assert ratio.std().item() > 0.01
    torch.manual_seed(7)
    a = m.strong_augment(batch)
    torch.manual_seed(7)
    assert torch.equal(a, m.strong_augment(batch))  # the global RNG: resumes exactly
    assert not torch.equal(a, m.strong_augment(batch))


def test_supervised_loss_by_hand() -> None:
    # three pixels: logits (1, 2, 3) labelled 0; (0, 0, 0) labelled 2; (5, 0, 0) ignored
    logits = torch.tensor([[[[1.0, 0.0, 5.0]], [[2.0, 0.0, 0.0]], [[3.0, 0.0, 0.0]]]])
    labels = torch.tensor([[[0, 2, 255]]])
    pixel0 = -math.log(math.exp(1) / (math.exp(1) + math.exp(2) + math.exp(3)))
    pixel1 = math.log(3)
    assert supervised_loss(logits, labels).item() == pytest.approx((pixel0 + pixel1) / 2,
                                                                   rel=1e-6)
    assert supervised_loss(logits.half(), labels).dtype == torch.float32  # fp32 under AMP


# --- Eq. 12-16 inside the method ---------------------------------------------------------

LAM = {"start": 2.0, "end": 4.0, "begin": 0, "until": 4}  # 3.0 at iteration 2
RHO = {"start": 0.3, "end": 0.9, "begin": 0, "until": 4}  # 0.6 at iteration 2


def test_total_loss_and_its_gradient_at_an_ssl_iteration_by_hand(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Known translator, known A_s, dropout 0 and BN on running statistics (per-image
    outputs), teacher != student: every logged term, the total of Eq. 16 and the gradient
    the student's optimiser steps on, recomputed from what each network must see."""
    m = _method(student_dropout=0.0, warmup_iters=1, lambda_ssl=LAM, rho=RHO)
    student, teacher = m.networks["model"], m.networks["teacher"]
    freeze_batchnorm(student)
    _confident(m)
    m.networks["translator"] = translator = Tanh()
    strong_seen: list[torch.Tensor] = []

    def strong(x: torch.Tensor) -> torch.Tensor:
        strong_seen.append(x.clone())
        return 0.5 * x + 0.1

    monkeypatch.setattr(m, "strong_augment", strong)
    student_seen: list[torch.Tensor] = []
    student.register_forward_pre_hook(lambda mod, args: student_seen.append(args[0].clone()))
    batch = _batch()
    x_s, y_s, x_t = batch["source"]["image"], batch["source"]["label"], batch["target"]["image"]
    trans = _translated(m, x_s)
    strong_t = 0.5 * x_t + 0.1
    params = list(student.parameters())
    s_day, s_trans, s_night = student(x_s), student(trans), student(strong_t)
    with torch.no_grad():
        t_night, t_day = teacher(x_t), teacher(x_s)
        t_trans, t_strong, s_weak = teacher(trans), teacher(strong_t), student(x_t)
    student_seen.clear()
    for t in (t_night, t_day):  # the mask keeps some pixels and drops others
        top = torch.softmax(t, 1).amax(1)
        assert 0.1 < (top >= 0.6).float().mean().item() < 0.9
    want = {"loss_seg_day": _ce(s_day, y_s), "loss_seg_trans": _ce(s_trans, y_s),
            "loss_ssl_night": _masked_mse(s_night, t_night, 0.6),
            "loss_ssl_trans": _masked_mse(s_trans, t_day, 0.6)}
    total = want["loss_seg_day"] + want["loss_seg_trans"] + 3.0 * (
        want["loss_ssl_night"] + want["loss_ssl_trans"])
    want_grad = torch.autograd.grad(total, params, allow_unused=True)
    want = {k: v.item() for k, v in want.items()}

    seen = record_steps(m, monkeypatch)
    logs = m.train_step(batch, 2)
    assert set(logs) == {*SUP, *SSL_LOGS, "loss_total"}
    for key, value in want.items():
        assert logs[key] == pytest.approx(value, rel=1e-5), key
        assert value > 1e-3, key  # dropping any term moves the total
    assert logs["loss_total"] == pytest.approx(total.item(), rel=1e-5)
    assert logs["lambda_ssl"] == 3.0 and logs["rho"] == pytest.approx(0.6)

    # what each network saw: the translator x_s once; A_s the night batch; the student
    # day + translated day (supervised), then A_s(x_t) + translated day (consistency)
    assert len(translator.inputs) == 1
    assert torch.allclose(translator.inputs[0], _to_gan(m, x_s), atol=1e-6)
    assert len(strong_seen) == 1 and torch.equal(strong_seen[0], x_t)
    assert len(student_seen) == 2
    assert torch.allclose(student_seen[0], torch.cat([x_s, trans]), atol=1e-5)
    assert torch.allclose(student_seen[1], torch.cat([strong_t, trans]), atol=1e-5)

    # the hand values tell every plausible mix-up apart
    def far(value: float, *others: float) -> bool:
        return all(abs(o - value) > 1e-3 * max(abs(value), 1e-2) for o in others)

    with torch.no_grad():
        wrong = {
            "loss_ssl_trans": [
                _masked_mse(s_trans, t_trans, 0.6),  # teacher on G(x_s), not x_s
                _masked_mse(t_day, s_trans, 0.6),  # the student as the target
                _masked_mse(s_day, t_day, 0.6),  # the student on x_s
                _masked_mse(s_trans, t_day, 0.3), _masked_mse(s_trans, t_day, 0.9),
                _masked_mse(s_trans, t_day, 0.0),  # no mask
            ],
            "loss_ssl_night": [
                _masked_mse(s_weak, t_night, 0.6),  # the student on A_w
                _masked_mse(s_night, t_strong, 0.6),  # the teacher on A_s
                _masked_mse(t_night, s_night, 0.6),  # the student as the target
                _masked_mse(s_night, t_night, 0.3), _masked_mse(s_night, t_night, 0.9),
                _masked_mse(s_night, t_night, 0.0),
            ],
            "loss_seg_trans": [
                _ce(s_trans, y_s.flip(0)),  # the other image's labels
                _ce(s_trans, t_day.argmax(1)),  # the teacher's labels
                _ce(s_day, y_s),
            ],
            "loss_seg_day": [_ce(s_day, y_s.flip(0)), _ce(s_trans, y_s)],
        }
    for key, values in wrong.items():
        assert far(logs[key], *(v.item() for v in values)), key
    ssl = logs["loss_ssl_night"] + logs["loss_ssl_trans"]
    sup = logs["loss_seg_day"] + logs["loss_seg_trans"]
    assert far(logs["loss_total"], sup + 2.0 * ssl, sup + 4.0 * ssl, sup + ssl, sup,
               sup + 50.0 * ssl)

    # the optimiser stepped on the gradient of exactly that total
    got = seen["model"]
    assert set(seen) == {"model"} and len(got) == len(want_grad)
    for g, w in zip(got, want_grad):
        if w is None:
            assert g is None or not g.any()
        else:
            scale = w.abs().max().item()
            assert g is not None and torch.allclose(g, w, rtol=1e-4, atol=1e-5 * scale + 1e-12)
    assert any(w is not None and w.abs().sum() > 0 for w in want_grad)


def test_ssl_terms_train_the_student_only() -> None:
    m = _method(warmup_iters=0)
    _confident(m)
    translator = _snapshot(m.networks["translator"])
    losses = m.losses(_batch(), 0)
    assert set(losses) == {*SUP, *SSL}
    for key in SSL:
        m.zero_grad()
        losses[key].backward(retain_graph=True)
        assert _has_grad(m.networks["model"]), key
        assert all(p.grad is None for p in m.networks["teacher"].parameters()), key
        assert all(p.grad is None for p in m.networks["translator"].parameters()), key
    m.train_step(_batch(), 0)
    assert _same(translator, _snapshot(m.networks["translator"]))  # frozen, eval mode
    assert not m.networks["translator"].training and not m.trainable["translator"]
    assert set(m.optimizers) == {"model"}


# --- ramps --------------------------------------------------------------------------------


def _linear_until(values: list[float], start: int, first: float, last: float) -> int:
    """values[start] == first, then equal positive steps to ``last``, then held."""
    assert values[start] == pytest.approx(first)
    reach = next(i for i, v in enumerate(values) if v == pytest.approx(last))
    steps = [b - a for a, b in zip(values[start:reach], values[start + 1:reach + 1])]
    assert steps and all(s == pytest.approx(steps[0]) and s > 0 for s in steps), values
    assert all(v == pytest.approx(last) for v in values[reach:]), values
    return reach


def test_default_ramps_follow_the_run() -> None:
    """lambda_ssl: 50 through the warm-up, then linearly to 100; rho 0.5 -> 0.9 from
    iteration 0. (Which iteration reaches the end: see the next test.)"""
    m = _method(iterations=10, warmup_iters=4)
    lam = [value_at(m.lambda_ssl, it) for it in range(13)]
    assert lam[:5] == [50.0] * 5
    assert _linear_until(lam, 4, 50.0, 100.0) in (9, 10)
    rho = [value_at(m.rho, it) for it in range(13)]
    assert _linear_until(rho, 0, 0.5, 0.9) in (9, 10)
    # a warm-up longer than the run: SSL never starts, the weight never leaves 50
    m = _method(iterations=4, warmup_iters=10)
    assert [value_at(m.lambda_ssl, it) for it in range(4)] == [50.0] * 4


def test_default_ramps_reach_their_end_values_at_the_last_iteration() -> None:
    """Sec. 4.2: lambda_ssl "until it has doubled at the end of the training", rho
    "linearly increased to 0.9 during training": the last iteration (train.iterations - 1,
    0-based) uses 100 and 0.9."""
    m = _method(iterations=10, warmup_iters=4)
    assert value_at(m.lambda_ssl, 9) == pytest.approx(100.0)
    assert value_at(m.rho, 9) == pytest.approx(0.9)
    lam = [value_at(m.lambda_ssl, it) for it in range(4, 10)]
    assert lam == pytest.approx([50.0, 60.0, 70.0, 80.0, 90.0, 100.0])


def test_recipe_ramps_and_constants_are_used_and_logged() -> None:
    m = _method(lambda_ssl=7.5, rho=0.25)
    assert [value_at(m.lambda_ssl, it) for it in (0, 3)] == [7.5, 7.5]
    assert [value_at(m.rho, it) for it in (0, 3)] == [0.25, 0.25]
    lam = {"start": 10.0, "end": 20.0, "begin": 1, "until": 3}
    rho = {"start": 0.2, "end": 0.4, "begin": 0, "until": 2}
    m = _method(warmup_iters=1, lambda_ssl=lam, rho=rho)
    assert m.lambda_ssl == Ramp(10.0, 20.0, 1, 3) and m.rho == Ramp(0.2, 0.4, 0, 2)
    logs = [m.train_step(_batch(it), it) for it in range(4)]
    assert not SSL_LOGS & set(logs[0])  # warm-up
    assert [r["lambda_ssl"] for r in logs[1:]] == pytest.approx([10.0, 15.0, 20.0])
    assert [r["rho"] for r in logs[1:]] == pytest.approx([0.3, 0.4, 0.4])
    for r in logs[1:]:
        want = r["loss_seg_day"] + r["loss_seg_trans"] + r["lambda_ssl"] * (
            r["loss_ssl_night"] + r["loss_ssl_trans"])
        assert r["loss_total"] == pytest.approx(want, rel=1e-6)
    with pytest.raises(ConfigError, match="begin"):
        from_dict(Params, {"rho": {"begin": 5, "until": 4}}, "method.params")
    with pytest.raises(ConfigError, match="begin"):
        from_dict(Params, {"lambda_ssl": {"begin": 5, "until": 4}}, "method.params")


# --- warm-up ------------------------------------------------------------------------------


def test_warmup_computes_no_ssl_and_calls_no_teacher(monkeypatch: pytest.MonkeyPatch) -> None:
    m = _method(warmup_iters=2)
    calls = {"teacher": 0, "strong": 0}
    m.networks["teacher"].register_forward_hook(
        lambda *_: calls.__setitem__("teacher", calls["teacher"] + 1))
    strong = m.strong_augment

    def counting(x: torch.Tensor) -> torch.Tensor:
        calls["strong"] += 1
        return strong(x)

    monkeypatch.setattr(m, "strong_augment", counting)
    for it in (0, 1):
        logs = m.train_step(_batch(it), it)
        assert set(logs) == {*SUP, "loss_total"}, it
        assert logs["loss_total"] == pytest.approx(logs["loss_seg_day"] + logs["loss_seg_trans"],
                                                   rel=1e-6)
        assert calls == {"teacher": 0, "strong": 0}, it
        assert not m.ssl_active(it)
    logs = m.train_step(_batch(2), 2)
    assert set(logs) == {*SUP, *SSL_LOGS, "loss_total"}
    assert calls == {"teacher": 1, "strong": 1} and m.ssl_active(2)
    assert logs["lambda_ssl"] == 50.0  # the ramp starts where SSL starts
    # warmup_iters 0: SSL from the first iteration; ssl false: never
    assert _method(warmup_iters=0).ssl_active(0)
    m = _method(warmup_iters=0, ssl=False)
    m.networks["teacher"].register_forward_hook(
        lambda *_: calls.__setitem__("teacher", calls["teacher"] + 1))
    assert set(m.train_step(_batch(), 3)) == {*SUP, "loss_total"} and calls["teacher"] == 1


# --- the teacher --------------------------------------------------------------------------


@pytest.mark.parametrize("iteration", [0, 2])  # in the warm-up and with SSL
def test_teacher_is_the_ema_of_the_student_and_gets_no_gradient(iteration: int) -> None:
    m = _method(warmup_iters=1)
    student, teacher = m.networks["model"], m.networks["teacher"]
    assert m.specs["teacher"] == m.specs["model"] and not m.trainable["teacher"]
    assert not teacher.training and student.training
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a teacher away from the student: the average shows
        for p in teacher.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    before = _snapshot(teacher)
    m.train_step(_batch(), iteration)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    after_student, after = _snapshot(student), _snapshot(teacher)
    params = dict(teacher.named_parameters())
    moved = 0
    for name, value in after.items():
        if name in params:  # Eq. 13 with alpha = 0.999
            want = 0.999 * before[name] + 0.001 * after_student[name]
            assert torch.allclose(value, want, rtol=1e-6, atol=1e-7), name
            moved += not torch.equal(value, before[name])
        else:  # BN statistics: copied
            assert torch.equal(value, after_student[name]), name
    assert moved == len(params)
    assert Params().ema_decay == 0.999


def test_deploys_the_teacher() -> None:
    m = _method()
    assert get_method("domain_extension") is DomainExtension
    assert DomainExtension.streams == ("source", "target")
    assert DomainExtension.labelled_streams == ("source",)
    assert m.deploy() == Deploy(segmenter="teacher")
    assert m.deploy().segmenter == "teacher" and m.deploy().pre == ()
    m.train_step(_batch(), 0)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in m.networks["teacher"].parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    x = torch.randn(1, 3, 32, 48)
    student = copy.deepcopy(m.networks["model"]).eval()
    with torch.no_grad():
        got = m.deployed()(x)
        want = m.networks["teacher"](x)
        other = student(x)
    assert isinstance(m.deployed(), DeployedSegmenter)
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got, other, atol=1e-4)


def test_defaults_are_the_papers() -> None:
    p = Params()
    assert (p.ema_decay, p.day_loss, p.translated_loss, p.ssl) == (0.999, True, True, True)
    assert (p.warmup_iters, p.lambda_ssl, p.rho) == (10_000, None, None)
    assert (p.student_dropout, p.noise_std, p.jitter) == (0.1, 0.05, 0.3)
    assert (p.translator_ngf, p.translator_blocks, p.translator_upsample) == (64, 9, "bilinear")
    for upsample in ("bilinear", "transpose"):
        m = _method(translator_upsample=upsample)
        spec = m.specs["translator"]
        assert (spec.kind, spec.role, spec.args["ngf"], spec.args["n_blocks"],
                spec.args["upsample"]) == ("resnet_generator", "translator", 8, 1, upsample)
    assert _method().specs["translator"].args["upsample"] == "bilinear"
    assert set(m.networks) == {"model", "teacher", "translator"}
    assert m.emas["teacher"][0].decay == 0.999 and m.emas["teacher"][1] == "model"
    assert not any(p.requires_grad for p in m.networks["translator"].parameters())
    opt = m.optimizers["model"]
    assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["lr"] == 1e-4
    # the recipe's optim block: head LR multiplier, schedule
    m = _method(optim={"head_lr_mult": 10.0, "schedule": "constant"})
    lrs = {g["name"]: g["lr"] for g in m.optimizers["model"].param_groups}
    assert lrs == {"backbone": pytest.approx(1e-4), "head": pytest.approx(1e-3)}
    assert [m.schedules["model"](it) for it in (0, 3)] == [1.0, 1.0]
    assert _method().schedules["model"](2) == pytest.approx(0.5 ** 0.9)  # poly over 4


# --- dropout -------------------------------------------------------------------------------


def test_dropout_only_in_the_consistency_forward_at_student_dropout() -> None:
    m = _method(warmup_iters=1, student_dropout=0.5)
    student = m.networks["model"]
    drops = _dropouts(student)
    assert len(drops) == 1 and m.dropouts == drops and drops[0].p == 0.5
    assert all(d.p == 0.1 for d in _dropouts(m.networks["teacher"]))  # never used: eval
    calls: list[tuple[bool, torch.Tensor, torch.Tensor]] = []
    drops[0].register_forward_hook(
        lambda mod, args, out: calls.append((mod.training, args[0].clone(), out.clone())))
    bn_modes: list[bool] = []
    student.register_forward_pre_hook(
        lambda mod, args: bn_modes.append(all(b.training for b in _norms(mod))))
    _confident(m)
    m.train_step(_batch(), 0)  # warm-up: one forward, no dropout
    assert [c[0] for c in calls] == [False] and torch.equal(calls[0][1], calls[0][2])
    calls.clear()
    m.train_step(_batch(1), 1)
    assert [c[0] for c in calls] == [False, True]
    assert torch.equal(calls[0][1], calls[0][2])  # supervised: identity
    x, out = calls[1][1], calls[1][2]
    kept = out != 0
    assert torch.allclose(out[kept], x[kept] / 0.5)  # survivors scaled by 1 / (1 - p)
    dropped = ((out == 0) & (x != 0)).sum() / (x != 0).sum()
    assert 0.4 < dropped.item() < 0.6
    assert bn_modes == [True, True, True]  # BN in train mode in every student forward
    assert drops[0].training  # back to the model's mode
    # no dropout at the rate 0
    m = _method(warmup_iters=0, student_dropout=0.0)
    assert m.dropouts[0].p == 0.0


def test_student_dropout_context_restores_the_modes() -> None:
    m = _method()
    for d in m.dropouts:
        d.eval()
    with pytest.raises(RuntimeError, match="inside"):
        with m.student_dropout(True):
            assert all(d.training for d in m.dropouts)
            raise RuntimeError("inside")
    assert not any(d.training for d in m.dropouts)
    m.train_mode()
    with m.student_dropout(False):
        assert not any(d.training for d in m.dropouts)
        assert all(b.training for b in _norms(m.networks["model"]))
    assert all(d.training for d in m.dropouts)


def test_a_model_without_dropout_needs_student_dropout_zero() -> None:
    message = (r"^method.params.student_dropout > 0 but the model has no dropout layer; set "
               r"student_dropout: 0$")
    with pytest.raises(ConfigError, match=message):
        _method(model_edit=_no_dropout)
    with pytest.raises(ConfigError, match=message):
        _method(model_edit=_no_dropout, student_dropout=0.01)
    m = _method(model_edit=_no_dropout, student_dropout=0.0, warmup_iters=0)
    assert m.dropouts == [] and set(m.train_step(_batch(), 0)) >= set(SSL)
    _method(model_edit=_no_dropout, ssl=False)  # dropout is for the consistency terms only


# --- Table 1 switches and config ----------------------------------------------------------


def _supervised_by_hand(m: DomainExtension, images: torch.Tensor, labels: torch.Tensor
                        ) -> torch.Tensor:
    """CE of a copy of the student in train mode (batch statistics) without dropout."""
    net = copy.deepcopy(m.networks["model"])
    for d in _dropouts(net):
        d.eval()
    with torch.no_grad():
        return _ce(net(images), labels)


def test_baseline_row_needs_no_translator() -> None:
    m = _method(translated_loss=False, ssl=False, translator=None)
    assert set(m.networks) == {"model", "teacher"} and not m.uses_translator
    _confident(m, 3.0)
    batch = _batch()
    want = _supervised_by_hand(m, batch["source"]["image"], batch["source"]["label"])
    other = _supervised_by_hand(m, batch["target"]["image"], batch["source"]["label"])
    assert abs(other.item() - want.item()) > 0.05
    teacher_calls: list[int] = []
    m.networks["teacher"].register_forward_hook(lambda *_: teacher_calls.append(1))
    logs = m.train_step(batch, 3)
    assert set(logs) == {"loss_seg_day", "loss_total"} and not teacher_calls
    assert logs["loss_seg_day"] == pytest.approx(want.item(), rel=1e-5)
    assert logs["loss_total"] == pytest.approx(logs["loss_seg_day"], rel=1e-6)


@pytest.mark.parametrize("ssl", [False, True])
def test_day2night_row_logs_the_translated_term_only(ssl: bool) -> None:
    m = _method(day_loss=False, ssl=ssl, warmup_iters=0)
    m.networks["translator"] = Tanh()
    _confident(m, 3.0)
    batch = _batch()
    x_s, y_s = batch["source"]["image"], batch["source"]["label"]
    want = _supervised_by_hand(m, _translated(m, x_s), y_s)
    other = _supervised_by_hand(m, x_s, y_s)  # the day images would give another value
    assert abs(other.item() - want.item()) > 0.05
    logs = m.train_step(batch, 1)
    assert set(logs) == {"loss_seg_trans", "loss_total", *(SSL_LOGS if ssl else ())}
    assert logs["loss_seg_trans"] == pytest.approx(want.item(), rel=1e-5)


def test_day2night_plus_daytime_row() -> None:
    m = _method(ssl=False, warmup_iters=0)
    assert "translator" in m.networks and m.uses_translator
    logs = m.train_step(_batch(), 2)
    assert set(logs) == {*SUP, "loss_total"}
    m = _method(translated_loss=False, warmup_iters=0)  # SSL still needs G(x_s)
    assert "translator" in m.networks
    assert set(m.train_step(_batch(), 0)) == {"loss_seg_day", *SSL_LOGS, "loss_total"}


def test_config_errors() -> None:
    message = r"^method.params: day_loss and translated_loss are both false: no supervised loss$"
    with pytest.raises(ConfigError, match=message):
        from_dict(Params, {"day_loss": False, "translated_loss": False}, "method.params")
    missing = (r"^method.init_from.translator is not set: the translated-day terms need the "
               r"stage-1 translator, e.g. \{checkpoint: runs/cyclegan_fl_.../last.pt, network: "
               r"gen_s2t_ema\} \(or set translated_loss and ssl false\)$")
    for switches in ({}, {"ssl": False}, {"translated_loss": False},
                     {"day_loss": False, "ssl": False}):
        with pytest.raises(ConfigError, match=missing):
            _method(translator=None, **switches)
    cases = [
        ({"ema_decay": 1.0}, r"ema_decay 1.0: need 0 <= decay < 1"),
        ({"ema_decay": -0.1}, r"ema_decay -0.1: need 0 <= decay < 1"),
        ({"warmup_iters": -1}, r"warmup_iters must be >= 0"),
        ({"student_dropout": 1.0}, r"student_dropout 1.0: need 0 <= p < 1"),
        ({"student_dropout": -0.1}, r"student_dropout -0.1: need 0 <= p < 1"),
        ({"noise_std": -0.01}, r"noise_std must be >= 0 and jitter in \[0, 1\)"),
        ({"jitter": 1.0}, r"noise_std must be >= 0 and jitter in \[0, 1\)"),
        ({"jitter": -0.1}, r"noise_std must be >= 0 and jitter in \[0, 1\)"),
    ]
    for params, text in cases:
        with pytest.raises(ConfigError, match=f"^method.params: {text}$"):
            from_dict(Params, params, "method.params")
    for key in ("lambda_ssl", "rho"):  # a Ramp built in code is checked too
        with pytest.raises(ValueError, match=r"begin=5, until=4"):
            Params(**{key: Ramp(begin=5, until=4)}).validate()
    with pytest.raises(ConfigError, match="method.params.lambda_typo"):
        from_dict(Params, {"lambda_typo": 1}, "method.params")
    # the edge values are fine
    from_dict(Params, {"ema_decay": 0.0, "warmup_iters": 0, "student_dropout": 0.0,
                       "noise_std": 0.0, "jitter": 0.0, "day_loss": False}, "method.params")


# --- through the trainer --------------------------------------------------------------------


@pytest.fixture(scope="module")
def stage1(tiny_synth: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Path:
    """2 iterations of cyclegan_fl (the stage-1 translator), its last.pt."""
    out = tmp_path_factory.mktemp("cyclegan_fl") / "run"
    rec = tiny_recipe(tiny_synth, out, data__crop=[32, 48], train__iterations=2)
    rec["data"]["target"] = f"synthetic:{tiny_synth}:night_train"
    rec["data"]["val"] = []
    rec["model"]["init_from"] = str(tiny_checkpoint)
    rec["method"] = {"name": "cyclegan_fl",
                     "params": {"ngf": 8, "n_blocks": 1, "ndf": 8, "pool_size": 3}}
    assert Trainer(from_dict(Recipe, rec), progress=False).run() == 0
    return out / "last.pt"


def _stage2(synth: Path, out: Path, stage1: Path, checkpoint: Path, iterations: int = 4,
            **params: Any) -> dict:
    rec = _recipe(synth, out, iterations, {"checkpoint": str(stage1), "network": "gen_s2t_ema"},
                  **{"warmup_iters": 1, **params})
    rec["model"]["init_from"] = str(checkpoint)  # a trained day segmenter: confident pixels
    return rec


@pytest.fixture(scope="module")
def stage2(tiny_synth: Path, tiny_checkpoint: Path, stage1: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 iterations of domain_extension (warm-up 1) on the stage-1 EMA translator, validated
    at the end through the deployed graph; the run folder."""
    out = tmp_path_factory.mktemp("domain_extension") / "run"
    rec = _stage2(tiny_synth, out, stage1, tiny_checkpoint)
    trainer = Trainer(from_dict(Recipe, rec), progress=False)
    translator = _snapshot(trainer.method.networks["translator"])
    assert trainer.run() == 0
    torch.save(translator, out / "translator_at_start.pt")
    return out


def test_trainer_run_on_the_stage1_translator_deploys_the_teacher(
        stage1: Path, stage2: Path) -> None:
    first = load_checkpoint(stage1)
    gen = first["method_state"]["networks"]
    assert first["method"] == "cyclegan_fl"
    assert not _same(gen["gen_s2t_ema"], gen["gen_s2t"])  # the EMA, not the generator
    start = torch.load(stage2 / "translator_at_start.pt")
    assert_same_tree(gen["gen_s2t_ema"], start, "translator")
    ckpt = load_checkpoint(stage2 / "last.pt")
    assert ckpt["method"] == "domain_extension" and ckpt["iteration"] == 4
    assert_same_tree(gen["gen_s2t_ema"], ckpt["method_state"]["networks"]["translator"],
                     "translator")  # frozen
    assert ckpt["deploy"] == {"segmenter": "teacher", "pre": [], "class_bias": None}
    roles = {n: s["role"] for n, s in ckpt["networks"].items()}
    assert roles == {"model": "segmenter", "teacher": "segmenter", "translator": "translator"}
    assert ckpt["networks"]["translator"]["args"]["ngf"] == 8
    assert set(ckpt["method_state"]["optimizers"]) == {"model"}

    logs = [json.loads(x) for x in (stage2 / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in logs if r["type"] == "train"]
    assert [r["iter"] for r in train] == [1, 2, 3, 4]
    assert not SSL_LOGS & set(train[0])  # iteration 0: the warm-up
    for r in train[1:]:
        assert all(math.isfinite(r[k]) for k in (*SUP, *SSL)), r
        want = r["loss_seg_day"] + r["loss_seg_trans"] + r["lambda_ssl"] * (
            r["loss_ssl_night"] + r["loss_ssl_trans"])
        assert r["loss_total"] == pytest.approx(want, rel=1e-6)
    assert train[1]["lambda_ssl"] == 50.0
    lam, rho = [r["lambda_ssl"] for r in train[1:]], [r["rho"] for r in train[1:]]
    assert lam == sorted(lam) and lam[-1] > 50.0 and 0.5 < rho[0] < rho[-1] <= 0.9
    assert any(r["loss_ssl_trans"] > 0 for r in train[1:])  # the mask kept pixels
    assert any(r["type"] == "val" and math.isfinite(r["miou"]) for r in logs)

    # best.pt and last.pt deploy the teacher: load_model computes the stored teacher
    x = torch.randn(1, 3, 32, 48)
    for name in ("best.pt", "last.pt"):
        model, ck = load_model(stage2 / name)
        assert isinstance(model, DeployedSegmenter) and ck["deploy"]["segmenter"] == "teacher"
        assert_same_tree(model.segmenter.state_dict(), ck["method_state"]["networks"]["teacher"],
                         name)
        assert not _same(ck["model"], ck["method_state"]["networks"]["teacher"])
        student = build_model(from_dict(Recipe, ck["recipe"]).model)
        student.load_state_dict(ck["model"])
        with torch.no_grad():
            assert not torch.allclose(model(x), student.eval()(x), atol=1e-5), name


def test_resume_is_exact(stage1: Path, stage2: Path, tiny_synth: Path, tiny_checkpoint: Path,
                         tmp_path: Path) -> None:
    rec = _stage2(tiny_synth, tmp_path / "two", stage1, tiny_checkpoint)
    a, b = assert_resumes_exactly(rec, stage2)
    assert set(a["method_state"]["networks"]) == {"teacher", "translator"}
    assert a["method_state"]["optimizers"]["model"]["state"]


def test_a_translator_of_another_architecture_is_refused(
        stage1: Path, tiny_synth: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    rec = _stage2(tiny_synth, tmp_path, stage1, tiny_checkpoint, translator_ngf=16)
    with pytest.raises(CheckpointError, match=r"\(method.init_from.translator\): network "
                                              r"'gen_s2t_ema' is built differently: ngf 8 vs 16"):
        Trainer(from_dict(Recipe, rec), progress=False)


# --- DDP ---------------------------------------------------------------------------------------


def test_ddp_gloo_keeps_student_teacher_and_translator_in_sync(
        stage1: Path, tiny_synth: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """torchrun, 2 CPU processes, different data per rank, SSL from iteration 0: the run
    finishes and the student, its teacher and the translator are bit-identical on both
    ranks (every gradient all-reduced, both student forwards)."""
    out = tmp_path / "ddp"
    rec = _stage2(tiny_synth, out, stage1, tiny_checkpoint, iterations=2, warmup_iters=0)
    rec["data"]["val"] = []
    rank0, rank1 = run_ddp(rec, tmp_path, cli_env())
    assert set(rank0) == {"model", "teacher", "translator"}
    # BN running statistics are rank-local after the last forward (DDP broadcasts rank 0's
    # buffers at the start of each forward); every parameter and counter must agree
    local = ("running_mean", "running_var")
    assert_same_tree(*({n: {k: v for k, v in sd.items() if not k.endswith(local)}
                        for n, sd in rank.items()} for rank in (rank0, rank1)))
    for rank in (rank0, rank1):  # each rank's teacher copied its own student's statistics
        stats = [k for k in rank["model"] if k.endswith(local)]
        assert stats and all(torch.equal(rank["model"][k], rank["teacher"][k]) for k in stats)
    gen = load_checkpoint(stage1)["method_state"]["networks"]["gen_s2t_ema"]
    assert_same_tree(gen, rank0["translator"], "translator")
    ckpt = load_checkpoint(out / "last.pt")
    assert_same_tree(ckpt["model"], rank0["model"], "model")
    assert not _same(rank0["model"], rank0["teacher"])
    logs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in logs if r["type"] == "train"]
    assert len(train) == 2 and all(math.isfinite(r["loss_ssl_night"]) for r in train)
