"""``method: sait_translate``: the pixel-level alignment stage of the semantically-adaptive
image-to-image translation UDA method (../shared/papers/semantically-adaptive-i2i.txt,
Sec. 3.1-3.3 and 4 "Translation network"). It trains the S -> T translator whose
translations of the labelled source the feature-level stage (``method: sait_segment``)
trains on: ``edgeseg derive translate CKPT --network translator_s2t --data SOURCE -o DIR``.

Domains: S = synthetic / day (``source`` stream), T = real / night (``target``); no labels
are used (``labelled_streams = ()``). M is the trainer's segmenter (``model.init_from``:
the source-only model in the first round, the previous round's ``sait_segment`` model in
the next ones, Sec. 4 "Bidirectional learning"); it is FROZEN here (no gradients, eval
mode, never stepped). Networks (`edgeseg.train.nets.sait`): encoders E_S = ``enc_s``,
E_T = ``enc_t``; generators G_S = ``gen_s``, G_T = ``gen_t``; multi-scale PatchGAN
discriminators D_S = ``disc_s``, D_T = ``disc_t``; spectral norm on all of them (Sec. 4).

Translation (Sec. 3.1): x_{A->B} = G_B(E_A(x_A), M(x_A)), with M(x) the segmenter's
unnormalised output (logits), resized by each SPADE layer to its activation (Sec. 3.2).
Objective (Eq. 1), each term the sum of its two domain components, logged separately:

- ``loss_recon_s`` / ``_t`` (Eq. 2): ||G_A(E_A(x_A), M(x_A)) - x_A||, lambda_recon 10;
- ``loss_gan_s`` / ``_t`` (Eq. 3): the generator side of LSGAN, 1/2 E[(D_S(x_{T->S}) - 1)^2]
  (``loss_gan_s``: D_S judges the T -> S translation) and 1/2 E[(D_T(x_{S->T}) - 1)^2],
  each averaged over the discriminator's scales (`MultiScaleGANLoss`), lambda_GAN 1. The
  1/2 is Eq. 3's (MUNIT's code has none and sums the scales);
- ``loss_cc_i_s`` / ``_t`` (Eq. 4): ||x_{S->T->S} - x_S|| with x_{S->T->S} =
  G_S(E_T(x_{S->T}), M(x_{S->T})), and the same from T, lambda_CC_I 10;
- ``loss_cc_h_s`` / ``_t`` (Eq. 4): ||E_T(x_{S->T}) - E_S(x_S)|| and ||E_S(x_{T->S}) -
  E_T(x_T)||, lambda_CC_H 1;
- ``loss_sce_s`` / ``_t`` (Eq. 5): `symmetric_cross_entropy` (M(x_S), M(x_{S->T})) and
  (M(x_T), M(x_{T->S})), lambda_SCE 10.

Which side of each term learns. Eq. 5 (the paper's text): each cross-entropy term treats
one prediction as the label (detached) and aligns the other with it (see
`symmetric_cross_entropy`); M is frozen and M(x_A) of a real image carries no
gradient, so the translator learns from the term that aligns M(x_{A->B}) with M(x_A),
through the frozen M into G_B and E_A. The paper detaches nothing else, so every other
term reaches every network it is computed from (as MUNIT's, which has the same terms):
the latent cycle reaches E_A through both E_A(x_A) and x_{A->B}, and E_B and G_B; the
image cycle's second pass is conditioned on M(x_{A->B}) with its gradient (the whole
translator F_{B->A}, M included, is applied to x_{A->B}). M(x_A) of the real images is
computed once without a graph.

Alternating updates (as CycleGAN / MUNIT; the paper says "adversarial fashion"): each
iteration 1. the encoders and generators minimise Eq. 1 with D_S, D_T and M fixed;
2. D_S and D_T minimise LSGAN on the real image vs the step-1 translation (detached):
``loss_disc_s`` = 1/2 E[(D_S(x_S) - 1)^2] + 1/2 E[D_S(x_{T->S})^2] (averaged over
scales), ``loss_disc_t`` likewise. Eq. 3 as printed labels the real image 0 and the
translation 1 and puts its real term in the generators' loss, where it is a constant;
the labels here are LSGAN's 1 (real) / 0 (fake), the same game with D mirrored.

Choices where the paper is silent (with the reason):

- ||.|| of Eq. 2 and 4 is a mean absolute error (L1, as UNIT / MUNIT and CycleGAN);
- the architecture (`edgeseg.train.nets.sait`): MUNIT's content encoder and decoder
  layout, ngf 64 (4 ngf = 256 latent channels at 1/4 of the side), 4 residual blocks in
  each encoder and generator, SPADE's hidden width 128, bilinear resizing of the logits,
  3 discriminator scales of 4 stride-2 4x4 convs (ndf 64, no norm but spectral norm:
  MUNIT's discriminator); no image pools (UNIT / MUNIT use none);
- TTUR (Heusel et al.): the generators' (and encoders') Adam at the paper's 1e-4, the
  discriminators' at 4e-4 (SAGAN's TTUR pair; the paper gives one initial LR only); both
  Adam(0.9, 0.99), no weight decay, 'poly' 0.9 to 0 over the run (Sec. 4). One Adam per
  network (groups ``gen`` and ``disc``), as every method here; Adam is per parameter,
  so this equals one Adam per group;
- the generator step comes first, the discriminators then learn on its translations.

Ablations (Table 3): ``use_spade: false``: the generators' residual blocks are plain
instance-norm blocks and take no M (the translation is "unrelated to" the segmenter);
``use_sce: false``: no L_SCE (not computed, not logged). With both off M is never run
and ``model.init_from`` is not needed.

Deployment. This stage deploys nothing new: ``deploy()`` is the bare frozen segmenter.
The translators F_{S->T} and F_{T->S} need M, so each is registered as one composite
image network (`SaitTranslator`, kind ``sait_translator``, role ``translator``):
``translator_s2t`` = G_T(E_S(x), M(x)) and ``translator_t2s`` = G_S(E_T(x), M(x)) on RGB
in [-1, 1], over the live ``enc_s`` / ``gen_t`` / ``model`` modules (shared, so each
checkpoint holds the trained weights), with M's input normalised by the recipe's
data mean/std (stored in the spec with the segmenter's model block, so it rebuilds from
the checkpoint alone): ``edgeseg export CKPT --network translator_s2t`` and ``edgeseg
derive translate CKPT --network translator_s2t``. A checkpoint therefore stores M's
weights three times (``model`` and inside both composites). Start the next round's
translator with ``method.init_from`` of ``enc_s``, ``enc_t``, ``gen_s``, ``gen_t``,
``disc_s``, ``disc_t``, never of a composite (that would also overwrite the new M).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from edgeseg.config import ConfigError, OptimConfig
from edgeseg.models.compose import Deploy
from edgeseg.train.methods.base import Method, segmenter_spec, set_requires_grad
from edgeseg.train.nets.cyclegan import ImageRange, check_crops
from edgeseg.train.nets.discriminator import MultiScaleGANLoss
from edgeseg.train.nets.losses import mean_l1, symmetric_cross_entropy
from edgeseg.train.nets.registry import net_spec
from edgeseg.train.nets.sait import SaitTranslator
from edgeseg.train.nets.spade import ResizeMode

ENCODERS = ("enc_s", "enc_t")
GENERATORS = ("gen_s", "gen_t")
DISCRIMINATORS = ("disc_s", "disc_t")
#: the deployable composites: (encoder, generator) of F_{S->T} and F_{T->S}
TRANSLATORS = {"translator_s2t": ("enc_s", "gen_t"), "translator_t2s": ("enc_t", "gen_s")}
#: Sec. 4: Adam(0.9, 0.99), initial LR 1e-4, 'poly' 0.9 to 0 over the run
SAIT_GEN_ADAM = OptimConfig(name="adam", lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0,
                            schedule="poly", power=0.9)
#: TTUR: the discriminators at 4e-4 (SAGAN's pair; the paper gives one LR)
SAIT_DISC_ADAM = replace(SAIT_GEN_ADAM, lr=4e-4)


@dataclass(frozen=True)
class Params:
    lambda_recon: float = 10.0  # Sec. 4
    lambda_gan: float = 1.0
    lambda_cc_i: float = 10.0
    lambda_cc_h: float = 1.0
    lambda_sce: float = 10.0
    use_spade: bool = True  # Table 3: false = instance-norm residual blocks, no M
    use_sce: bool = True  # Table 3: false = no L_SCE
    ngf: int = 64  # not given: MUNIT's widths and depths
    enc_blocks: int = 4
    gen_blocks: int = 4
    spade_hidden: int = 128  # SPADE's
    spade_resize: ResizeMode = "bilinear"  # logits are continuous (see nets/spade.py)
    ndf: int = 64  # MUNIT's multi-scale discriminator
    disc_layers: int = 4
    disc_scales: int = 3

    def validate(self) -> None:
        for key in ("lambda_recon", "lambda_gan", "lambda_cc_i", "lambda_cc_h", "lambda_sce"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0")
        if self.use_sce and self.lambda_sce == 0:
            raise ValueError("lambda_sce is 0 with use_sce: true; set use_sce: false to turn "
                             "the loss off")
        if min(self.ngf, self.ndf, self.spade_hidden) < 1 or min(self.enc_blocks,
                                                                 self.gen_blocks) < 0:
            raise ValueError("ngf, ndf and spade_hidden must be >= 1, enc_blocks and "
                             "gen_blocks >= 0")
        if self.disc_layers < 2 or self.disc_scales < 1:
            raise ValueError(f"disc_layers {self.disc_layers}, disc_scales {self.disc_scales}: "
                             "need >= 2 convs per scale and >= 1 scale")


class SaitTranslate(Method):
    name = "sait_translate"
    Params = Params
    streams = ("source", "target")
    labelled_streams = ()  # unpaired translation: no labels
    optimizer_defaults = {"gen": SAIT_GEN_ADAM, "disc": SAIT_DISC_ADAM}
    find_unused_parameters = True

    # --- set-up ----------------------------------------------------------------------
    def build(self) -> None:
        p, r = self.params, self.ctx.recipe
        smallest = 2 ** (p.disc_layers + p.disc_scales - 1)
        check_crops(self, smallest, f"discriminators ({p.disc_scales} scales of "
                                    f"{p.disc_layers} stride-2 convs)")
        self.uses_segmenter = p.use_spade or p.use_sce
        if self.uses_segmenter and not r.model.init_from:
            raise ConfigError(
                "model.init_from is not set: sait_translate conditions the translator on "
                "(use_spade) and aligns its predictions with (use_sce) a trained segmenter M; "
                "set model.init_from=runs/source_only_.../best.pt (or the previous round's "
                "sait_segment checkpoint)")
        self.freeze("model")  # M is never trained in this stage
        self.images = ImageRange(r.data.mean, r.data.std, self.ctx.device)
        self.gan_loss = MultiScaleGANLoss("lsgan")  # Eq. 3
        for name in ENCODERS:
            net = self.add_network(name, net_spec("sait_encoder", ngf=p.ngf,
                                                  n_blocks=p.enc_blocks))
            self.optimizer_for(name, "gen", net.parameters())
        for name in GENERATORS:
            net = self.add_network(name, net_spec(
                "sait_generator", ngf=p.ngf, n_blocks=p.gen_blocks,
                label_channels=r.model.num_classes, use_spade=p.use_spade,
                spade_hidden=p.spade_hidden, spade_resize=p.spade_resize))
            self.optimizer_for(name, "gen", net.parameters())
        for name in DISCRIMINATORS:
            net = self.add_network(name, net_spec(
                "multiscale_discriminator", num_scales=p.disc_scales, ndf=p.ndf,
                n_layers=p.disc_layers, norm="none", spectral_norm=True))  # RGB in, stride 2
            self.optimizer_for(name, "disc", net.parameters())
        segmenter = dict(segmenter_spec(r).args) if p.use_spade else None
        for name, (enc, gen) in TRANSLATORS.items():
            spec = net_spec("sait_translator", "translator", encoder=dict(self.specs[enc].args),
                            generator=dict(self.specs[gen].args), segmenter=segmenter,
                            mean=list(r.data.mean), std=list(r.data.std))
            net = SaitTranslator(self.networks[enc], self.networks[gen],
                                 self.ctx.model if p.use_spade else None, r.data.mean,
                                 r.data.std)
            # no optimiser and no DDP wrapper of its own: its parts are trained as themselves
            self.add_network(name, net, trainable=False, spec=spec)
        self.weights = {
            "loss_recon_s": p.lambda_recon, "loss_recon_t": p.lambda_recon,
            "loss_gan_s": p.lambda_gan, "loss_gan_t": p.lambda_gan,
            "loss_cc_i_s": p.lambda_cc_i, "loss_cc_i_t": p.lambda_cc_i,
            "loss_cc_h_s": p.lambda_cc_h, "loss_cc_h_t": p.lambda_cc_h,
            "loss_sce_s": p.lambda_sce, "loss_sce_t": p.lambda_sce,
        }

    def train_mode(self) -> None:
        """The trained networks in train mode (spectral norm's power iteration runs), M in
        eval mode; the composites are views of them and change nothing."""
        super().train_mode()
        for name in (*ENCODERS, *GENERATORS, *DISCRIMINATORS):
            self.networks[name].train()
        self.networks["model"].eval()

    def deploy(self) -> Deploy:
        return Deploy()  # the bare frozen segmenter: this stage trains a translator only

    # --- losses ----------------------------------------------------------------------
    def segment(self, image: torch.Tensor) -> torch.Tensor:
        """M's logits of generator-range images (the frozen segmenter, through its own
        input normalisation)."""
        return self.net("model")(self.images.to_seg(image))

    def translate(self, real_s: torch.Tensor, real_t: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every image, code and prediction of Eq. 2-5 (RGB in [-1, 1]); ``m_*`` are M's
        logits (absent when nothing uses M)."""
        n_s, n_t = real_s.shape[0], real_t.shape[0]
        out: dict[str, torch.Tensor] = {"real_s": real_s, "real_t": real_t}
        cond_s = cond_t = None
        if self.uses_segmenter:
            with torch.no_grad():  # real images through the frozen M: constants
                out["m_s"], out["m_t"] = self.segment(torch.cat([real_s, real_t])).split(
                    [n_s, n_t])
            if self.params.use_spade:
                cond_s, cond_t = out["m_s"], out["m_t"]
        z_s, z_t = self.net("enc_s")(real_s), self.net("enc_t")(real_t)
        # one call per generator: its own domain's reconstruction and the translation into it
        out["rec_s"], out["fake_s"] = self.net("gen_s")(
            torch.cat([z_s, z_t]), _cat(cond_s, cond_t)).split([n_s, n_t])
        out["rec_t"], out["fake_t"] = self.net("gen_t")(
            torch.cat([z_t, z_s]), _cat(cond_t, cond_s)).split([n_t, n_s])
        cond_fake_t = cond_fake_s = None
        if self.uses_segmenter:  # M(x_{S->T}), M(x_{T->S}): with their graph
            out["m_fake_t"], out["m_fake_s"] = self.segment(
                torch.cat([out["fake_t"], out["fake_s"]])).split([n_s, n_t])
            if self.params.use_spade:
                cond_fake_t, cond_fake_s = out["m_fake_t"], out["m_fake_s"]
        out["z_s"], out["z_t"] = z_s, z_t
        out["z_st"] = self.net("enc_t")(out["fake_t"])  # z_{S->T}
        out["z_ts"] = self.net("enc_s")(out["fake_s"])  # z_{T->S}
        out["cyc_s"] = self.net("gen_s")(out["z_st"], cond_fake_t)  # x_{S->T->S}
        out["cyc_t"] = self.net("gen_t")(out["z_ts"], cond_fake_s)  # x_{T->S->T}
        return out

    def generator_losses(self, batch: dict[str, dict[str, torch.Tensor]]
                         ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Unweighted terms of Eq. 1 by log name, and the detached images the
        discriminator step needs."""
        x_s, x_t = batch["source"]["image"], batch["target"]["image"]
        with self.autocast():
            im = self.translate(self.images.to_gan(x_s), self.images.to_gan(x_t))
            losses = {
                "loss_recon_s": mean_l1(im["rec_s"], im["real_s"]),
                "loss_recon_t": mean_l1(im["rec_t"], im["real_t"]),
                "loss_gan_s": 0.5 * self.gan_loss(self.net("disc_s")(im["fake_s"]), True),
                "loss_gan_t": 0.5 * self.gan_loss(self.net("disc_t")(im["fake_t"]), True),
                "loss_cc_i_s": mean_l1(im["cyc_s"], im["real_s"]),
                "loss_cc_i_t": mean_l1(im["cyc_t"], im["real_t"]),
                "loss_cc_h_s": mean_l1(im["z_st"], im["z_s"]),
                "loss_cc_h_t": mean_l1(im["z_ts"], im["z_t"]),
            }
            if self.params.use_sce:
                losses["loss_sce_s"] = symmetric_cross_entropy(im["m_s"], im["m_fake_t"])
                losses["loss_sce_t"] = symmetric_cross_entropy(im["m_t"], im["m_fake_s"])
        cache = {k: im[k].detach() for k in ("real_s", "real_t", "fake_s", "fake_t")}
        return losses, cache

    def disc_loss(self, name: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """LSGAN of discriminator ``name``: real -> 1, the detached translation -> 0, halved
        and averaged over scales; one call (no norm layers: the batch does not mix)."""
        n = real.shape[0]
        scores = self.net(name)(torch.cat([real, fake]))  # cat promotes an AMP fake
        return self.gan_loss.discriminator([s[:n] for s in scores], [s[n:] for s in scores])

    def discriminator_losses(self, cache: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """D_S: x_S vs x_{T->S}; D_T: x_T vs x_{S->T}."""
        with self.autocast():
            return {"loss_disc_s": self.disc_loss("disc_s", cache["real_s"], cache["fake_s"]),
                    "loss_disc_t": self.disc_loss("disc_t", cache["real_t"], cache["fake_t"])}

    # --- the step ----------------------------------------------------------------------
    def train_step(self, batch: dict[str, dict[str, torch.Tensor]], iteration: int
                   ) -> dict[str, float]:
        del iteration  # no ramps: the LR schedules are the optimisers'
        self.zero_grad()
        discs = [self.net(n) for n in DISCRIMINATORS]
        set_requires_grad(discs, False)
        losses, cache = self.generator_losses(batch)
        total = sum(self.weights[k] * v for k, v in losses.items())
        self.backward(total)
        self.step(*ENCODERS, *GENERATORS)
        logs = {k: v.item() for k, v in losses.items()}
        logs["loss_gen_total"] = float(total.item())
        set_requires_grad(discs, True)
        disc = self.discriminator_losses(cache)
        self.backward(sum(disc.values()))
        self.step(*DISCRIMINATORS)
        logs.update({k: v.item() for k, v in disc.items()})
        return logs


def _cat(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """Both conditioning maps in one batch, or None (no SPADE: both are None)."""
    return None if a is None else torch.cat([a, b])


__all__ = ["DISCRIMINATORS", "ENCODERS", "GENERATORS", "Params", "SAIT_DISC_ADAM",
           "SAIT_GEN_ADAM", "SaitTranslate", "TRANSLATORS", "mean_l1"]
