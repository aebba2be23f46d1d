"""method: sait_translate -- the SPADE-conditioned shared-latent translator (Sec. 3.1-3.2, 4 of
semantically-adaptive-i2i.txt): its networks and spectral norm, every term of Eq. 1-5 by hand
inside the method, which side of each term learns, the frozen segmenter, TTUR with the poly
schedule, the Table 3 ablations, exact resume and the composite translator exported and
used by ``derive translate``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm as SpectralNorm

from edgeseg.config import ConfigError, Recipe, from_dict
from edgeseg.models import build_model
from edgeseg.models.compose import Deploy
from edgeseg.train.checkpoint import load_checkpoint, load_network
from edgeseg.train.distributed import DistInfo
from edgeseg.train.methods import MethodContext, get_method
from edgeseg.train.methods.base import segmenter_spec
from edgeseg.train.methods.sait_translate import (
    SAIT_DISC_ADAM,
    SAIT_GEN_ADAM,
    TRANSLATORS,
    Params,
    SaitTranslate,
)
from edgeseg.train.nets.generator import ResidualBlock, Upsample2x
from edgeseg.train.nets.losses import symmetric_cross_entropy
from edgeseg.train.nets.registry import build_net, net_spec
from edgeseg.train.nets.sait import (
    ExportableSpectralNorm,
    SaitTranslator,
    build_sait_encoder,
    build_sait_generator,
    spectral_norm_all,
)
from edgeseg.train.nets.spade import SPADE, LayerNorm2d, SPADEResBlock
from edgeseg.train.trainer import Trainer
from tests.conftest import tiny_recipe
from tests.net_checks import assert_resumes_exactly, assert_same_tree, record_phases, record_steps
from tests.net_checks import same as _same
from tests.net_checks import snapshot as _snapshot

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"ngf": 4, "enc_blocks": 1, "gen_blocks": 1, "spade_hidden": 8, "ndf": 4,
        "disc_layers": 2, "disc_scales": 2}
ENCODERS = ("enc_s", "enc_t")
GENERATORS = ("gen_s", "gen_t")
DISCRIMINATORS = ("disc_s", "disc_t")
TRAINED = (*ENCODERS, *GENERATORS)
COMPOSITES = ("translator_s2t", "translator_t2s")
GEN_TERMS = ("loss_recon_s", "loss_recon_t", "loss_gan_s", "loss_gan_t", "loss_cc_i_s",
             "loss_cc_i_t", "loss_cc_h_s", "loss_cc_h_t", "loss_sce_s", "loss_sce_t")
DISC_TERMS = ("loss_disc_s", "loss_disc_t")
#: build() only checks that model.init_from is set; the trainer loads it
STAND_IN = "runs/source_only/last.pt"
#: a data normalisation other than ImageNet's, so M's input normalisation is checked
DATA = {"mean": [0.3, 0.4, 0.5], "std": [0.2, 0.25, 0.3]}
#: weights other than the paper's and each other
WEIGHTS = {"lambda_recon": 0.7, "lambda_gan": 1.3, "lambda_cc_i": 2.9, "lambda_cc_h": 0.4,
           "lambda_sce": 5.3}
TERM_WEIGHT = {"loss_recon": "lambda_recon", "loss_gan": "lambda_gan", "loss_cc_i": "lambda_cc_i",
               "loss_cc_h": "lambda_cc_h", "loss_sce": "lambda_sce"}


def _weight(term: str, params: dict[str, float]) -> float:
    return params[TERM_WEIGHT[term[:-2]]]


def _recipe(synth: Path, out: Path, iterations: int = 4, **params: Any) -> dict:
    rec = tiny_recipe(synth, out, data__crop=[32, 48], train__iterations=iterations)
    rec["data"]["target"] = f"synthetic:{synth}:night_train"
    rec["data"]["val"] = []
    rec["method"] = {"name": "sait_translate", "params": {**TINY, **params}}
    return rec


def _method(optimizers: dict | None = None, init_from: str | None = STAND_IN,
            data: dict | None = None, model: dict | None = None,
            **params: Any) -> SaitTranslate:
    """The method without a trainer: 4 iterations, the tiny random segmenter as M."""
    torch.manual_seed(0)
    rec = _recipe(Path("/nonexistent"), Path("/nonexistent"), **params)
    rec["model"]["init_from"] = init_from
    rec["model"].update(model or {})
    rec["method"]["optimizers"] = optimizers or {}
    rec["data"].update(data or {})
    recipe = from_dict(Recipe, rec)
    ctx = MethodContext(recipe, build_model(recipe.model), torch.device("cpu"), DistInfo(),
                        False)
    method = SaitTranslate(ctx, from_dict(Params, recipe.method.params, "method.params"))
    method.train_mode()
    return method


def _batch(seed: int = 0, n: int = 2) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {"source": {"image": torch.randn(n, 3, 32, 48, generator=g)},
            "target": {"image": torch.randn(n, 3, 32, 48, generator=g)}}


def _norm(m: SaitTranslate) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.tensor(m.ctx.recipe.data.mean).view(1, 3, 1, 1),
            torch.tensor(m.ctx.recipe.data.std).view(1, 3, 1, 1))


def _to_gan(m: SaitTranslate, x: torch.Tensor) -> torch.Tensor:
    mean, std = _norm(m)
    return (x * std + mean) * 2 - 1


def _to_seg(m: SaitTranslate, x: torch.Tensor) -> torch.Tensor:
    mean, std = _norm(m)
    return ((x + 1) / 2 - mean) / std


class FixedSegmenter(nn.Module):
    """A frozen stand-in for M: a 1x1 conv 3 -> 19 plus a fixed per-class spatial pattern
    (so the logits vary in space and resizing them matters); records its inputs."""

    num_classes = 19

    def __init__(self, seed: int = 7, scale: float = 2.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 19, 1)
        with torch.no_grad():
            self.conv.weight.copy_(scale * torch.randn(19, 3, 1, 1, generator=g))
            self.conv.bias.copy_(torch.randn(19, generator=g))
        self.register_buffer("pattern", torch.randn(1, 19, 4, 6, generator=g))
        self.requires_grad_(False)
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return self.conv(x) + F.interpolate(self.pattern, size=x.shape[-2:], mode="nearest")


class ConstantSegmenter(nn.Module):
    """M stand-in whose logits ignore the image: the same distribution everywhere."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits.view(1, -1, 1, 1))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.logits.expand(x.shape[0], -1, *x.shape[-2:]) + 0 * x.mean()


class ConstantScales(nn.Module):
    """A multi-scale discriminator stand-in: scale i scores every patch ``values[i]`` on a
    map 2^i times smaller; records its inputs."""

    def __init__(self, *values: float) -> None:
        super().__init__()
        self.values = nn.Parameter(torch.tensor(values))
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.inputs.append(x.detach().clone())
        h, w = x.shape[-2:]
        return [v * torch.ones(x.shape[0], 1, h // 2**i, w // 2**i)
                for i, v in enumerate(self.values)]


def _eval(m: SaitTranslate) -> None:
    """Every network in eval mode: spectral norm stops its power iteration, so the weights
    the method uses are the weights a hand computation uses."""
    for net in m.networks.values():
        net.eval()


def _l1(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().mean().item()


def _sce(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Eq. 5 by hand: -E[softmax(b) log softmax(a)] - E[softmax(a) log softmax(b)], each
    term's label side constant."""
    la, lb = F.log_softmax(a, 1), F.log_softmax(b, 1)
    return (-(lb.exp().detach() * la).sum(1).mean()
            - (la.exp().detach() * lb).sum(1).mean())


def _by_hand(m: SaitTranslate, batch: dict, grad: bool = False) -> dict[str, torch.Tensor]:
    """Every image, code and logit map of Eq. 2-5 from the method's own networks, one call
    per translation (the method batches them)."""
    n = m.networks
    real_s, real_t = _to_gan(m, batch["source"]["image"]), _to_gan(m, batch["target"]["image"])
    with torch.set_grad_enabled(grad):
        def seg(x: torch.Tensor) -> torch.Tensor:
            return n["model"](_to_seg(m, x))

        with torch.no_grad():
            m_s, m_t = seg(real_s), seg(real_t)
        z_s, z_t = n["enc_s"](real_s), n["enc_t"](real_t)
        fake_t, fake_s = n["gen_t"](z_s, m_s), n["gen_s"](z_t, m_t)
        m_ft, m_fs = seg(fake_t), seg(fake_s)
        z_st, z_ts = n["enc_t"](fake_t), n["enc_s"](fake_s)
        return {"real_s": real_s, "real_t": real_t, "m_s": m_s, "m_t": m_t, "z_s": z_s,
                "z_t": z_t, "rec_s": n["gen_s"](z_s, m_s), "rec_t": n["gen_t"](z_t, m_t),
                "fake_t": fake_t, "fake_s": fake_s, "m_ft": m_ft, "m_fs": m_fs,
                "z_st": z_st, "z_ts": z_ts, "cyc_s": n["gen_s"](z_st, m_ft),
                "cyc_t": n["gen_t"](z_ts, m_fs)}


# --- the networks ----------------------------------------------------------------------------


def test_encoder_and_spade_generator_shapes_and_conditioning() -> None:
    torch.manual_seed(0)
    enc = build_sait_encoder(ngf=4, n_blocks=2)
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    z = enc(x)
    assert z.shape == (2, 16, 8, 12) and enc.out_channels == 16
    assert sum(isinstance(b, ResidualBlock) for b in enc.modules()) == 2
    assert not any(isinstance(b, (SPADE, LayerNorm2d)) for b in enc.modules())
    with pytest.raises(ValueError, match=r"^encoder input 30x48: height and width must be "
                                         r"multiples of 4$"):
        enc(torch.zeros(1, 3, 30, 48))
    # MUNIT's layout: reflection pad 3 + 7x7 conv, two reflection pad 1 + 4x4 stride-2 convs,
    # each followed by instance norm without parameters or statistics, and ReLU
    layers = list(enc.model)
    pads, convs = layers[0:12:4], layers[1:12:4]
    norms, relus = layers[2:12:4], layers[3:12:4]
    assert [p.padding for p in pads] == [(3, 3, 3, 3), (1, 1, 1, 1), (1, 1, 1, 1)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] \
        == [(3, 4, (7, 7), (1, 1), (0, 0)), (4, 8, (4, 4), (2, 2), (0, 0)),
            (8, 16, (4, 4), (2, 2), (0, 0))]
    assert all(type(n) is nn.InstanceNorm2d for n in norms)
    assert [(n.num_features, n.affine, n.track_running_stats) for n in norms] == [
        (4, False, False), (8, False, False), (16, False, False)]
    assert all(type(r) is nn.ReLU for r in relus) and len(layers) == 12 + 2
    # eval: spectral norm's power iteration would change the weights between calls
    gen = build_sait_generator(ngf=4, n_blocks=2, label_channels=5, spade_hidden=8).eval()
    blocks = list(gen.blocks)
    assert len(blocks) == 2 and all(isinstance(b, SPADEResBlock) for b in blocks)
    assert blocks[0].norm_0.shared[0].in_channels == 5  # conditioned on 5 classes
    assert blocks[0].norm_0.shared[0].out_channels == 8  # SPADE's hidden width
    assert sum(isinstance(b, LayerNorm2d) for b in gen.up) == 2  # the upsampling blocks
    assert sum(isinstance(b, Upsample2x) for b in gen.up) == 2
    seg_a = torch.randn(2, 5, 32, 48)  # logits at image size: resized to 8x12 per layer
    out = gen(z, seg_a)
    assert out.shape == (2, 3, 32, 48) and out.abs().max() <= 1
    seg_b = seg_a.clone()
    seg_b[1] = torch.randn(5, 32, 48)  # another prediction for the second image only
    out_b = gen(z, seg_b)
    assert torch.equal(out_b[0], out[0])  # per image
    assert (out_b[1] - out[1]).abs().mean() > 1e-3  # M(x) changes the translation
    with pytest.raises(ValueError, match=r"^a SPADE generator needs the segmenter's logits "
                                         r"\(segmap\)$"):
        gen(z)
    plain = build_sait_generator(ngf=4, n_blocks=2, label_channels=5, use_spade=False).eval()
    assert all(isinstance(b, ResidualBlock) for b in plain.blocks) and len(plain.blocks) == 2
    assert not any(isinstance(b, SPADE) for b in plain.modules())
    assert plain(z).shape == (2, 3, 32, 48)
    with pytest.raises(ValueError, match=r"^a generator without SPADE takes no segmenter "
                                         r"logits \(segmap\)$"):
        plain(z, seg_a)


def test_builder_defaults_and_argument_checks() -> None:
    """The builders' defaults (what a spec records) are MUNIT's / SPADE's, and reach the
    modules; the classes check their arguments."""
    assert net_spec("sait_encoder").args == {"ngf": 64, "n_blocks": 4, "in_channels": 3,
                                             "use_spectral_norm": True}
    assert net_spec("sait_generator").args == {
        "ngf": 64, "n_blocks": 4, "label_channels": 19, "use_spade": True, "spade_hidden": 128,
        "spade_resize": "bilinear", "out_channels": 3, "use_spectral_norm": True}
    enc = build_sait_encoder()
    assert enc.out_channels == 256 and enc.model[1].in_channels == 3
    assert sum(isinstance(b, ResidualBlock) for b in enc.modules()) == 4
    assert all(parametrize.is_parametrized(c, "weight") for c in _convs(enc))
    gen = build_sait_generator()
    spades = [mod for mod in gen.modules() if isinstance(mod, SPADE)]
    assert len(gen.blocks) == 4 and len(spades) == 8
    assert {(s.shared[0].in_channels, s.shared[0].out_channels, s.resize) for s in spades} == {
        (19, 128, "bilinear")}
    assert gen.blocks[0].conv_0.in_channels == 256 and gen.up[-2].out_channels == 3
    assert all(parametrize.is_parametrized(c, "weight") for c in _convs(gen))
    for net in (build_sait_encoder(ngf=2, n_blocks=1, use_spectral_norm=False),
                build_sait_generator(ngf=2, n_blocks=1, spade_hidden=2,
                                     use_spectral_norm=False)):
        assert not any(parametrize.is_parametrized(c, "weight") for c in _convs(net))
    assert build_sait_generator(ngf=2, n_blocks=1, out_channels=1).up[-2].out_channels == 1
    assert build_sait_encoder(ngf=2, n_blocks=1, in_channels=1).model[1].in_channels == 1
    # twice: still one parametrisation per conv
    spectral_norm_all(enc)
    assert all(len(c.parametrizations.weight) == 1 for c in _convs(enc))
    widths = r"^ngf must be >= 1 and n_blocks >= 0, got {}, {}$"
    for ngf, blocks in ((0, 1), (1, -1)):
        with pytest.raises(ValueError, match=widths.format(ngf, blocks)):
            build_sait_encoder(ngf=ngf, n_blocks=blocks)
        with pytest.raises(ValueError, match=widths.format(ngf, blocks)):
            build_sait_generator(ngf=ngf, n_blocks=blocks)
    spade = r"^label_channels and spade_hidden must be >= 1, got {}, {}$"
    for label, hidden in ((0, 2), (2, 0)):
        with pytest.raises(ValueError, match=spade.format(label, hidden)):
            build_sait_generator(ngf=1, n_blocks=1, label_channels=label, spade_hidden=hidden)
        build_sait_generator(ngf=1, n_blocks=1, label_channels=label, spade_hidden=hidden,
                             use_spade=False)  # no SPADE: not used
    build_sait_encoder(ngf=1, n_blocks=0)
    build_sait_generator(ngf=1, n_blocks=0, label_channels=1, spade_hidden=1)


def _convs(net: nn.Module) -> list[nn.Module]:
    return [c for c in net.modules() if isinstance(c, nn.Conv2d)]


def test_spectral_norm_on_every_conv_of_translator_and_discriminators() -> None:
    m = _method()
    for name in (*TRAINED, *DISCRIMINATORS):
        convs = _convs(m.networks[name])
        assert convs, name
        assert all(parametrize.is_parametrized(c, "weight") for c in convs), name
        kind = SpectralNorm if name in DISCRIMINATORS else ExportableSpectralNorm
        assert all(type(c.parametrizations.weight[0]) is kind for c in convs), name
        for c in convs:  # sigma of the normalised weight is 1 (15 power iterations at init)
            w = c.weight.detach().flatten(1)
            assert torch.linalg.matrix_norm(w, 2).item() == pytest.approx(1.0, abs=0.05), name
    spade = [c for b in m.networks["gen_s"].blocks for c in _convs(b)]
    assert len(spade) == 2 + 2 * 3  # one block: its 2 convs + 2 SPADEs' shared, gamma, beta
    assert m.specs["disc_s"].args["spectral_norm"] is True
    assert m.specs["disc_s"].args["norm"] == "none"
    # the composite rebuilt from its spec: encoder and generator normalised, M untouched
    net = build_net(m.specs["translator_s2t"])
    assert all(parametrize.is_parametrized(c, "weight") for c in _convs(net.encoder))
    assert all(parametrize.is_parametrized(c, "weight") for c in _convs(net.generator))
    assert not any(parametrize.is_parametrized(c, "weight") for c in _convs(net.segmenter))


# --- set-up ----------------------------------------------------------------------------------


def test_defaults_are_the_papers() -> None:
    p = Params()
    assert (p.lambda_recon, p.lambda_gan, p.lambda_cc_i, p.lambda_cc_h, p.lambda_sce) == (
        10.0, 1.0, 10.0, 1.0, 10.0)
    assert (p.use_spade, p.use_sce) == (True, True)
    assert (p.ngf, p.enc_blocks, p.gen_blocks, p.spade_hidden, p.spade_resize) == (
        64, 4, 4, 128, "bilinear")
    assert (p.ndf, p.disc_layers, p.disc_scales) == (64, 4, 3)
    for cfg, lr in ((SAIT_GEN_ADAM, 1e-4), (SAIT_DISC_ADAM, 4e-4)):
        assert (cfg.name, cfg.lr, cfg.betas, cfg.weight_decay, cfg.schedule, cfg.power,
                cfg.clip_grad_norm, cfg.warmup_iters) == ("adam", lr, (0.9, 0.99), 0.0, "poly",
                                                          0.9, 0.0, 0)
    assert SaitTranslate.optimizer_defaults == {"gen": SAIT_GEN_ADAM, "disc": SAIT_DISC_ADAM}
    assert get_method("sait_translate") is SaitTranslate
    assert SaitTranslate.streams == ("source", "target") and SaitTranslate.labelled_streams == ()
    assert SaitTranslate.find_unused_parameters is True
    assert TRANSLATORS == {"translator_s2t": ("enc_s", "gen_t"),
                           "translator_t2s": ("enc_t", "gen_s")}


def test_networks_specs_and_the_composite_translators() -> None:
    m = _method(data=DATA)
    assert set(m.networks) == {"model", *TRAINED, *DISCRIMINATORS, *COMPOSITES}
    assert set(m.optimizers) == {*TRAINED, *DISCRIMINATORS}
    assert m.deploy() == Deploy()
    assert set(m.exportable()) == {"model", *COMPOSITES}
    for name in ENCODERS:
        s = m.specs[name]
        assert (s.kind, s.role, s.args["ngf"], s.args["n_blocks"]) == ("sait_encoder", "", 4, 1)
    for name in GENERATORS:
        s = m.specs[name]
        assert (s.kind, s.role, s.args["ngf"], s.args["n_blocks"], s.args["label_channels"],
                s.args["use_spade"], s.args["spade_hidden"], s.args["spade_resize"]) == (
            "sait_generator", "", 4, 1, 19, True, 8, "bilinear")
    for name in DISCRIMINATORS:
        s = m.specs[name]
        assert (s.kind, s.role, s.args["num_scales"], s.args["in_channels"], s.args["ndf"],
                s.args["n_layers"], s.args["stride"]) == ("multiscale_discriminator", "", 2, 3,
                                                          4, 2, 2)
        assert len(m.networks[name].scales) == 2
    seg_args = segmenter_spec(m.ctx.recipe).args
    assert "init_from" not in seg_args and seg_args["num_classes"] == 19
    for name, (enc, gen) in (("translator_s2t", ("enc_s", "gen_t")),
                             ("translator_t2s", ("enc_t", "gen_s"))):
        s, net = m.specs[name], m.networks[name]
        assert (s.kind, s.role) == ("sait_translator", "translator")
        assert s.args == {"encoder": m.specs[enc].args, "generator": m.specs[gen].args,
                          "segmenter": seg_args, "mean": DATA["mean"], "std": DATA["std"]}
        # the live modules: the checkpoint holds the trained weights
        assert net.encoder is m.networks[enc] and net.generator is m.networks[gen]
        assert net.segmenter is m.networks["model"] is m.ctx.model
        assert m.trainable[name] is False and net.size_multiple == 4
    for name in ("model", *COMPOSITES):
        assert not m.trainable[name]
    assert not any(p.requires_grad for p in m.networks["model"].parameters())
    # train mode: trained networks train (spectral norm iterates), M stays in eval
    for net in m.networks.values():
        net.eval()
    m.train_mode()
    assert all(m.networks[n].training for n in (*TRAINED, *DISCRIMINATORS))
    assert not any(mod.training for mod in m.networks["model"].modules())
    # M's classes condition SPADE; the logits' resizing is the recipe's
    m = _method(model={"num_classes": 11}, spade_resize="nearest")
    for name in GENERATORS:
        assert m.specs[name].args["label_channels"] == 11
        assert m.specs[name].args["spade_resize"] == "nearest"
        spades = [mod for mod in m.networks[name].modules() if isinstance(mod, SPADE)]
        assert spades and all(s.resize == "nearest" for s in spades)
        assert all(s.shared[0].in_channels == 11 for s in spades)
    assert m.specs["translator_s2t"].args["segmenter"]["num_classes"] == 11


def test_composite_translator_by_hand_and_rebuilt_from_its_spec(tiny_checkpoint: Path) -> None:
    """translator_s2t(x) = G_T(E_S(x), M(x in M's normalisation)); the spec alone rebuilds it,
    and its state dict is its parts' (the normalisation lives in the spec). M: the tiny
    source-only model (a random one barely depends on its input)."""
    m = _method(data=DATA)
    m.networks["model"].load_state_dict(load_checkpoint(tiny_checkpoint)["model"])
    _eval(m)
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    n = m.networks
    mean, std = _norm(m)
    with torch.no_grad():
        logits = n["model"](((x + 1) / 2 - mean) / std)
        want = {"translator_s2t": n["gen_t"](n["enc_s"](x), logits),
                "translator_t2s": n["gen_s"](n["enc_t"](x), logits)}
        wrong = n["gen_t"](n["enc_s"](x), n["model"](((x + 1) / 2 - 0.45) / 0.225))
        for name, value in want.items():
            live = n[name]
            assert torch.allclose(live(x), value, atol=1e-6), name
            state = live.state_dict()
            assert {k.split(".")[0] for k in state} == {"encoder", "generator", "segmenter"}
            rebuilt = build_net(m.specs[name])
            rebuilt.load_state_dict(state)
            assert torch.allclose(rebuilt.eval()(x), value, atol=1e-6), name
        assert (want["translator_s2t"] - wrong).abs().max() > 1e-4  # the normalisation counts
        assert (want["translator_s2t"] - want["translator_t2s"]).abs().max() > 1e-4
    msg = (r"^a SPADE generator needs the segmenter, a generator without SPADE takes "
           r"none$")
    with pytest.raises(ValueError, match=msg):
        SaitTranslator(n["enc_s"], n["gen_t"], None, DATA["mean"], DATA["std"])
    plain = build_sait_generator(ngf=4, n_blocks=1, use_spade=False)
    with pytest.raises(ValueError, match=msg):
        SaitTranslator(n["enc_s"], plain, n["model"], DATA["mean"], DATA["std"])
    assert SaitTranslator(n["enc_s"], plain, None, DATA["mean"], DATA["std"]).segment(x) is None


def test_params_and_crop_are_validated() -> None:
    widths = r"ngf, ndf and spade_hidden must be >= 1, enc_blocks and gen_blocks >= 0"
    cases = [
        ({"lambda_recon": -1.0}, r"lambda_recon must be >= 0"),
        ({"lambda_gan": -1.0}, r"lambda_gan must be >= 0"),
        ({"lambda_cc_i": -1.0}, r"lambda_cc_i must be >= 0"),
        ({"lambda_cc_h": -1.0}, r"lambda_cc_h must be >= 0"),
        ({"lambda_sce": -1.0}, r"lambda_sce must be >= 0"),
        ({"lambda_sce": 0.0}, r"lambda_sce is 0 with use_sce: true; set use_sce: false to "
                              r"turn the loss off"),
        ({"ngf": 0}, widths), ({"ndf": 0}, widths), ({"spade_hidden": 0}, widths),
        ({"enc_blocks": -1}, widths), ({"gen_blocks": -1}, widths),
        ({"disc_layers": 1}, r"disc_layers 1, disc_scales 3: need >= 2 convs per scale and "
                             r">= 1 scale"),
        ({"disc_scales": 0}, r"disc_layers 4, disc_scales 0: need >= 2 convs per scale and "
                             r">= 1 scale"),
    ]
    for params, message in cases:
        with pytest.raises(ConfigError, match=f"^method.params: {message}"):
            from_dict(Params, params, "method.params")
    with pytest.raises(ConfigError, match=r"^method.params.spade_resize"):
        from_dict(Params, {"spade_resize": "bicubic"}, "method.params")
    from_dict(Params, {"lambda_recon": 0, "lambda_gan": 0, "lambda_cc_i": 0, "lambda_cc_h": 0,
                       "lambda_sce": 0, "use_sce": False, "ngf": 1, "ndf": 1, "spade_hidden": 1,
                       "enc_blocks": 0, "gen_blocks": 0, "disc_layers": 2, "disc_scales": 1},
              "method.params")
    four = r"needs sides that are multiples of 4 \(the generators downsample twice\)$"
    with pytest.raises(ConfigError, match=r"^data.crop 30x48: sait_translate " + four):
        _method(data={"crop": [30, 48]})
    # 2 scales of 4 stride-2 convs: 2^4 * 2 = 32 pixels; 3 scales of 3: 2^3 * 4 = 32
    small = r": the discriminators \(2 scales of 5 stride-2 convs\) need sides >= 64$"
    with pytest.raises(ConfigError, match=r"^data.crop 32x48" + small):
        _method(disc_layers=5)
    with pytest.raises(ConfigError, match=r"^data.crop 64x60: the discriminators \(3 scales "
                                          r"of 4 stride-2 convs\) need sides >= 64$"):
        _method(disc_layers=4, disc_scales=3, data={"crop": [64, 60]})
    _method(disc_layers=4, disc_scales=2, data={"crop": [32, 32]})  # exactly large enough
    _method(disc_layers=3, disc_scales=3, data={"crop": [32, 32]})


def test_a_segmenter_is_needed_unless_both_ablations_are_off() -> None:
    msg = (r"^model.init_from is not set: sait_translate conditions the translator on "
           r"\(use_spade\) and aligns its predictions with \(use_sce\) a trained segmenter M; "
           r"set model.init_from=runs/source_only_.../best.pt \(or the previous round's "
           r"sait_segment checkpoint\)$")
    for params in ({}, {"use_spade": False}, {"use_sce": False}):
        with pytest.raises(ConfigError, match=msg):
            _method(init_from=None, **params)
    _method(init_from=None, use_spade=False, use_sce=False)


# --- Eq. 1-5 by hand, inside the method ---------------------------------------------------------


def test_every_term_the_total_and_what_each_network_saw_by_hand() -> None:
    """The method's own encoders and generators, a fixed segmenter M, D_S scoring 0.3 / 0.5
    and D_T -0.2 / 0.9 at its two scales: each term of Eq. 1 and the weighted total."""
    m = _method(data=DATA, **WEIGHTS)
    seg = FixedSegmenter()
    d_s, d_t = ConstantScales(0.3, 0.5), ConstantScales(-0.2, 0.9)
    m.networks.update({"model": seg, "disc_s": d_s, "disc_t": d_t})
    _eval(m)
    batch = _batch()
    h = _by_hand(m, batch)
    want = {
        "loss_recon_s": _l1(h["rec_s"], h["real_s"]),
        "loss_recon_t": _l1(h["rec_t"], h["real_t"]),
        # Eq. 3, generator side, halved and averaged over the scales
        "loss_gan_s": 0.5 * ((0.3 - 1) ** 2 + (0.5 - 1) ** 2) / 2,
        "loss_gan_t": 0.5 * ((-0.2 - 1) ** 2 + (0.9 - 1) ** 2) / 2,
        "loss_cc_i_s": _l1(h["cyc_s"], h["real_s"]),
        "loss_cc_i_t": _l1(h["cyc_t"], h["real_t"]),
        "loss_cc_h_s": _l1(h["z_st"], h["z_s"]),
        "loss_cc_h_t": _l1(h["z_ts"], h["z_t"]),
        "loss_sce_s": _sce(h["m_s"], h["m_ft"]).item(),
        "loss_sce_t": _sce(h["m_t"], h["m_fs"]).item(),
    }
    # the mix-ups these values tell apart: another image, code, domain or prediction
    wrong = {
        "loss_recon_s": [_l1(h["fake_s"], h["real_s"]), _l1(h["rec_t"], h["real_s"]),
                         _l1(h["cyc_s"], h["real_s"])],
        "loss_recon_t": [_l1(h["fake_t"], h["real_t"]), _l1(h["rec_s"], h["real_t"])],
        "loss_cc_i_s": [_l1(h["cyc_t"], h["real_s"]), _l1(h["rec_s"], h["real_s"]),
                        _l1(h["cyc_s"], h["real_t"])],
        "loss_cc_i_t": [_l1(h["cyc_s"], h["real_t"]), _l1(h["rec_t"], h["real_t"])],
        "loss_cc_h_s": [_l1(h["z_ts"], h["z_s"]), _l1(h["z_st"], h["z_t"]),
                        _l1(h["z_t"], h["z_s"])],
        "loss_cc_h_t": [_l1(h["z_st"], h["z_t"]), _l1(h["z_ts"], h["z_s"])],
        "loss_sce_s": [_sce(h["m_s"], h["m_fs"]).item(), _sce(h["m_t"], h["m_ft"]).item(),
                       _sce(h["m_s"], h["m_t"]).item()],
        "loss_sce_t": [_sce(h["m_t"], h["m_ft"]).item(), _sce(h["m_s"], h["m_fs"]).item()],
    }
    for key, values in wrong.items():
        assert all(abs(v - want[key]) > 2e-4 * want[key] for v in values), key
    seg.inputs.clear()
    logs = m.train_step(batch, 0)
    assert set(logs) == {*GEN_TERMS, "loss_gen_total", *DISC_TERMS}
    for key, value in want.items():
        assert logs[key] == pytest.approx(value, rel=2e-5), key
    total = sum(_weight(k, WEIGHTS) * v for k, v in want.items())
    assert logs["loss_gen_total"] == pytest.approx(total, rel=1e-5)
    # a changed weight, a dropped or doubled term, the paper's weights would all show
    others = [total - _weight(k, WEIGHTS) * v for k, v in want.items()]
    others += [total + _weight(k, WEIGHTS) * v for k, v in want.items()]
    others += [sum(_weight(k, {**WEIGHTS, w: 1.0}) * v for k, v in want.items())
               for w in WEIGHTS]
    others += [sum(_weight(k, Params().__dict__) * v for k, v in want.items())]
    assert all(abs(o - logs["loss_gen_total"]) > 1e-4 * total for o in others)
    # M saw the real images in its own normalisation (to_seg(to_gan(x)) = x), then the
    # translations S->T and T->S
    assert len(seg.inputs) == 2
    assert torch.allclose(seg.inputs[0], torch.cat([batch["source"]["image"],
                                                    batch["target"]["image"]]), atol=1e-5)
    assert torch.allclose(seg.inputs[1], _to_seg(m, torch.cat([h["fake_t"], h["fake_s"]])),
                          atol=1e-5)
    # each D: its domain's translation, then real vs that translation (no pool)
    assert len(d_s.inputs) == len(d_t.inputs) == 2
    assert torch.allclose(d_s.inputs[0], h["fake_s"], atol=1e-5)
    assert torch.allclose(d_t.inputs[0], h["fake_t"], atol=1e-5)
    assert torch.allclose(d_s.inputs[1], torch.cat([h["real_s"], h["fake_s"]]), atol=1e-5)
    assert torch.allclose(d_t.inputs[1], torch.cat([h["real_t"], h["fake_t"]]), atol=1e-5)
    # LSGAN, real -> 1 and fake -> 0, halved, averaged over scales
    assert logs["loss_disc_s"] == pytest.approx(
        0.5 * (((0.3 - 1) ** 2 + (0.5 - 1) ** 2) / 2 + (0.3**2 + 0.5**2) / 2), rel=1e-5)
    assert logs["loss_disc_t"] == pytest.approx(
        0.5 * (((-0.2 - 1) ** 2 + (0.9 - 1) ** 2) / 2 + (0.2**2 + 0.9**2) / 2), rel=1e-5)


def test_sce_of_identical_predictions_inside_the_method() -> None:
    """Eq. 5 of identical distributions is twice their entropy: zero for one-hot predictions
    (also inside the method, whatever the translation), 2 H(p) for soft ones."""
    one_hot = torch.full((19,), -50.0)
    one_hot[3] = 50.0
    a = one_hot.view(1, 19, 1, 1).expand(2, 19, 4, 5)
    assert symmetric_cross_entropy(a, a.clone()).item() == pytest.approx(0.0, abs=1e-12)
    soft = torch.linspace(-1.0, 2.0, 19)
    p = soft.softmax(0)
    entropy = -(p * p.log()).sum().item()
    b = soft.view(1, 19, 1, 1).expand(2, 19, 4, 5)
    assert symmetric_cross_entropy(b, b.clone()).item() == pytest.approx(2 * entropy, rel=1e-5)
    for logits, want in ((one_hot, 0.0), (soft, 2 * entropy)):
        m = _method()
        seg = ConstantSegmenter(logits)
        m.networks["model"] = seg
        logs = m.train_step(_batch(), 0)
        assert seg.calls == 2
        assert logs["loss_sce_s"] == pytest.approx(want, abs=1e-6)
        assert logs["loss_sce_t"] == pytest.approx(want, abs=1e-6)


def _params_of(m: SaitTranslate, names: tuple[str, ...]) -> list[nn.Parameter]:
    return [p for n in names for p in m.networks[n].parameters()]


def test_each_network_steps_the_gradient_of_its_objective(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The encoders and generators step on the gradient of Eq. 1 (real spectral-norm
    discriminators and a fixed M held fixed), recomputed here: L_SCE reaches them through
    M(x_{A->B}) only (its label side detached), the latent cycle through both codes, the
    image cycle through M(x_{A->B}) as well. The discriminators step on their LSGAN loss of
    the real image vs the detached translation. Stale gradients do not leak in."""
    m = _method(data=DATA, **WEIGHTS)
    m.networks["model"] = FixedSegmenter()
    _eval(m)
    batch = _batch(3)
    gens, discs = _params_of(m, TRAINED), _params_of(m, DISCRIMINATORS)
    h = _by_hand(m, batch, grad=True)
    d_s, d_t = m.networks["disc_s"], m.networks["disc_t"]

    def gen_gan(scores: list[torch.Tensor]) -> torch.Tensor:
        return 0.5 * torch.stack([((s - 1) ** 2).mean() for s in scores]).mean()

    w = WEIGHTS
    objective = (
        w["lambda_recon"] * ((h["rec_s"] - h["real_s"]).abs().mean()
                             + (h["rec_t"] - h["real_t"]).abs().mean())
        + w["lambda_gan"] * (gen_gan(d_s(h["fake_s"])) + gen_gan(d_t(h["fake_t"])))
        + w["lambda_cc_i"] * ((h["cyc_s"] - h["real_s"]).abs().mean()
                              + (h["cyc_t"] - h["real_t"]).abs().mean())
        + w["lambda_cc_h"] * ((h["z_st"] - h["z_s"]).abs().mean()
                              + (h["z_ts"] - h["z_t"]).abs().mean())
        + w["lambda_sce"] * (_sce(h["m_s"], h["m_ft"]) + _sce(h["m_t"], h["m_fs"])))
    want_gen = torch.autograd.grad(objective, gens)

    def disc_gan(d: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        real_scores, fake_scores = d(real), d(fake.detach())
        return 0.5 * (torch.stack([((s - 1) ** 2).mean() for s in real_scores]).mean()
                      + torch.stack([(s**2).mean() for s in fake_scores]).mean())

    disc = disc_gan(d_s, h["real_s"], h["fake_s"]) + disc_gan(d_t, h["real_t"], h["fake_t"])
    want_disc = torch.autograd.grad(disc, discs)
    m.zero_grad()
    seen = record_steps(m, monkeypatch)
    for p in gens + discs:
        p.grad = torch.full_like(p, 100.0)  # stale gradients must be cleared
    m.train_step(batch, 0)
    assert set(seen) == {*TRAINED, *DISCRIMINATORS}
    got_gen = [g for n in TRAINED for g in seen[n]]
    got_disc = [g for n in DISCRIMINATORS for g in seen[n]]
    assert all(g is not None for g in got_gen + got_disc)
    # biases in front of an instance norm have a zero gradient up to rounding: an absolute
    # tolerance relative to the largest gradient
    for gots, wants in ((got_gen, want_gen), (got_disc, want_disc)):
        scale = max(w.abs().max().item() for w in wants)
        for got, want in zip(gots, wants, strict=True):
            assert torch.allclose(got, want, rtol=1e-3, atol=1e-5 * scale)


def test_each_phase_has_its_own_gradients_and_m_is_frozen(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Step 1 (encoders, generators): no gradient on D or M; step 2 (discriminators): on D
    only. M never moves (BatchNorm statistics included) and stays in eval mode; every
    encoder, generator and discriminator moves."""
    m = _method()
    before = {n: _snapshot(net) for n, net in m.networks.items()}
    calls = record_phases(m, monkeypatch)
    m.train_step(_batch(), 0)
    # the composites are views of enc/gen (+ the frozen M): they show their parts' state
    assert calls == [(TRAINED, {*TRAINED, *COMPOSITES}, {*TRAINED, *COMPOSITES}),
                     (DISCRIMINATORS, set(DISCRIMINATORS),
                      {*TRAINED, *DISCRIMINATORS, *COMPOSITES})]
    after = {n: _snapshot(net) for n, net in m.networks.items()}
    assert _same(before["model"], after["model"])
    assert all(p.grad is None and not p.requires_grad for p in m.networks["model"].parameters())
    assert not any(mod.training for mod in m.networks["model"].modules())
    for name in (*TRAINED, *DISCRIMINATORS, *COMPOSITES):
        assert not _same(before[name], after[name]), name
    for name in (*TRAINED, *DISCRIMINATORS):
        assert all(p.grad is None and p.requires_grad
                   for p in m.networks[name].parameters()), name


# --- ablations (Table 3) -------------------------------------------------------------------------


@pytest.mark.parametrize("spade,sce", [(True, True), (False, True), (True, False),
                                       (False, False)])
def test_ablation_switches(spade: bool, sce: bool) -> None:
    m = _method(use_spade=spade, use_sce=sce, **WEIGHTS)
    for name in GENERATORS:
        assert m.specs[name].args["use_spade"] is spade
        assert any(isinstance(b, SPADE) for b in m.networks[name].modules()) is spade
    for name in COMPOSITES:
        assert (m.networks[name].segmenter is None) is not spade
        assert (m.specs[name].args["segmenter"] is None) is not spade
        if not spade:
            assert build_net(m.specs[name]).segmenter is None
    _eval(m)
    seg = ConstantSegmenter(torch.linspace(-2.0, 2.0, 19))
    m.networks["model"] = seg
    batch = _batch(4)
    fake = m.translate(_to_gan(m, batch["source"]["image"]),
                       _to_gan(m, batch["target"]["image"]))
    m.networks["model"] = ConstantSegmenter(torch.linspace(2.0, -2.0, 19))
    other = m.translate(_to_gan(m, batch["source"]["image"]),
                        _to_gan(m, batch["target"]["image"]))
    for key in ("fake_t", "fake_s", "rec_s", "cyc_t"):  # M(x) conditions the translation
        changed = (fake[key] - other[key]).abs().max().item() > 1e-5
        assert changed is spade, key
    m.networks["model"] = seg
    seg.calls = 0
    logs = m.train_step(batch, 0)
    assert seg.calls == (2 if spade or sce else 0)  # M is not run when nothing needs it
    terms = [k for k in GEN_TERMS if sce or not k.startswith("loss_sce")]
    assert set(logs) == {*terms, "loss_gen_total", *DISC_TERMS}
    total = sum(_weight(k, WEIGHTS) * logs[k] for k in terms)
    assert logs["loss_gen_total"] == pytest.approx(total, rel=1e-5)


# --- optimisers ---------------------------------------------------------------------------------


def test_ttur_adam_and_the_poly_schedule_to_zero() -> None:
    m = _method()
    poly = [(1 - i / 4) ** 0.9 for i in range(5)]
    for names, lr in ((TRAINED, 1e-4), (DISCRIMINATORS, 4e-4)):
        for name in names:
            opt = m.optimizers[name]
            assert isinstance(opt, torch.optim.Adam), name
            group = opt.param_groups[0]
            assert (group["lr"], group["betas"], group["weight_decay"]) == (lr, (0.9, 0.99), 0.0)
            assert [m.schedules[name](i) for i in range(5)] == pytest.approx(poly)
            assert m.schedules[name](4) == 0.0
            got = {id(p) for g in opt.param_groups for p in g["params"]}
            assert got == {id(p) for p in m.networks[name].parameters()}, name
    assert m.clip_norms == dict.fromkeys((*TRAINED, *DISCRIMINATORS), 0.0)
    lrs = []
    for it in range(4):
        m.begin_iteration(it)
        lrs += [m.optimizers["gen_t"].param_groups[0]["lr"],
                m.optimizers["disc_s"].param_groups[0]["lr"]]
    assert lrs == pytest.approx([lr * f for f in poly[:4] for lr in (1e-4, 4e-4)])
    # a recipe moves single keys of a group
    m = _method(optimizers={"disc": {"lr": 2e-4}, "gen": {"power": 1.0}})
    assert m.optimizers["disc_t"].param_groups[0]["lr"] == 2e-4
    assert m.optimizers["enc_s"].param_groups[0]["lr"] == 1e-4
    assert m.schedules["gen_s"](1) == pytest.approx(0.75)
    assert m.schedules["disc_s"](1) == pytest.approx(0.75**0.9)


# --- through the trainer, export and derive ----------------------------------------------------


def _run_recipe(synth: Path, out: Path, checkpoint: Path) -> dict:
    rec = _recipe(synth, out, iterations=4)
    rec["model"]["init_from"] = str(checkpoint)
    return rec


@pytest.fixture(scope="module")
def run(tiny_synth: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
        ) -> Path:
    """4 iterations with the tiny source-only checkpoint as M."""
    out = tmp_path_factory.mktemp("sait_translate") / "run"
    assert Trainer(from_dict(Recipe, _run_recipe(tiny_synth, out, tiny_checkpoint)),
                   progress=False).run() == 0
    return out


def _logs(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def test_trainer_run_keeps_m_and_stores_the_composites(run: Path, tiny_checkpoint: Path) -> None:
    train = [r for r in _logs(run) if r["type"] == "train"]
    assert [r["iter"] for r in train] == [1, 2, 3, 4]
    for r in train:
        for key in (*GEN_TERMS, "loss_gen_total", *DISC_TERMS):
            assert math.isfinite(r[key]), key
        assert not any(f"lr_{n}" in r for n in ("model", *COMPOSITES))
    poly = [(1 - i / 4) ** 0.9 for i in range(4)]
    for name in TRAINED:
        assert [r[f"lr_{name}"] for r in train] == pytest.approx([1e-4 * f for f in poly])
    for name in DISCRIMINATORS:
        assert [r[f"lr_{name}"] for r in train] == pytest.approx([4e-4 * f for f in poly])
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["method"] == "sait_translate"
    assert ckpt["deploy"] == {"segmenter": "model", "pre": [], "class_bias": None}
    roles = {n: s["role"] for n, s in ckpt["networks"].items()}
    assert roles == {"model": "segmenter", **dict.fromkeys((*TRAINED, *DISCRIMINATORS), ""),
                     **dict.fromkeys(COMPOSITES, "translator")}
    start = load_checkpoint(tiny_checkpoint)["model"]
    assert_same_tree(start, ckpt["model"], "model")  # M is not trained
    nets = ckpt["method_state"]["networks"]
    assert set(nets) == {*TRAINED, *DISCRIMINATORS, *COMPOSITES}
    assert set(ckpt["method_state"]["optimizers"]) == {*TRAINED, *DISCRIMINATORS}
    for name, (enc, gen) in TRANSLATORS.items():  # the composites hold the trained weights
        assert_same_tree(_strip(nets[name], "encoder."), nets[enc], enc)
        assert_same_tree(_strip(nets[name], "generator."), nets[gen], gen)
        assert_same_tree(_strip(nets[name], "segmenter."), start, "segmenter")


def test_resume_is_exact(run: Path, tiny_synth: Path, tiny_checkpoint: Path,
                         tmp_path: Path) -> None:
    rec = _run_recipe(tiny_synth, tmp_path / "two", tiny_checkpoint)
    a, b = assert_resumes_exactly(rec, run)


def test_export_and_derive_the_composite_translator(run: Path, tiny_synth: Path,
                                                    tmp_path: Path) -> None:
    """``edgeseg export --network translator_s2t`` (parity-gated) and ``derive translate``
    run G_T(E_S(x), M(x)) with the checkpoint's trained parts, recomputed here from them."""
    from edgeseg.cli import main
    from edgeseg.contract.metadata import read_metadata
    from edgeseg.data import open_dataset
    from edgeseg.train import derive

    ckpt_path = run / "last.pt"
    out = tmp_path / "s2t.onnx"
    assert main(["export", str(ckpt_path), "-o", str(out), "--network", "translator_s2t",
                 "--size", "64x32", "--parity-data", f"synthetic:{tiny_synth}:day_train",
                 "--parity-frames", "2"]) == 0
    meta = read_metadata(out)
    assert meta.network == "translator" and meta.extra["network"] == "translator_s2t"
    assert meta.extra["spec"]["kind"] == "sait_translator"

    spec = f"synthetic:{tiny_synth}:day_val"
    folder = tmp_path / "translated"
    manifest = derive.translate(ckpt_path, "translator_s2t", spec, folder, preview=0,
                                max_images=2, progress=False)
    assert manifest["count"] == 2 and manifest["network"] == "translator_s2t"
    ckpt = load_checkpoint(ckpt_path)
    enc = load_network(ckpt, "enc_s", ckpt_path)[0]
    gen = load_network(ckpt, "gen_t", ckpt_path)[0]
    seg = load_network(ckpt, "model", ckpt_path)[0]
    mean = torch.tensor(ckpt["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(ckpt["std"]).view(1, 3, 1, 1)
    original, copy = open_dataset(spec), open_dataset(manifest["output_spec"])
    by_name = {copy[i]["name"]: copy[i]["image"] for i in range(len(copy))}
    for i in range(2):
        sample = original[i]
        x = torch.from_numpy(sample["image"]).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            y = gen(enc(x), seg(((x + 1) / 2 - mean) / std))
        want = torch.clamp(torch.round((y + 1) * 127.5), 0, 255)[0].permute(1, 2, 0).numpy()
        got = by_name[sample["name"]].astype(np.float64)
        assert np.abs(got - want).max() <= 1, sample["name"]  # rounding at a .5 boundary
        assert np.abs(got - sample["image"]).mean() > 5  # it translated
