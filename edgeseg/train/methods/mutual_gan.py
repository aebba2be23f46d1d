"""``method: mutual_gan``: CycleGAN + content-feature disentanglement + a mutual-information
constraint, trained to translate adverse-weather frames into the day domain of a fixed
day-trained segmenter (../shared/papers/mutual-gan.txt, Sec. 3-4).

Domains. The paper's domain A is the standard scenario (sunny / daytime: what the
segmenter was trained on), domain B the adverse one (cloudy / dusk / night; Sec. 4: "trained
with standard scenario images (domain A)", "changeable weathers (domain B)"). Here A = S
(``source`` stream, e.g. CamVid day_train) and B = T (``target`` stream, e.g. CamVid
dusk_train), so G_AB = ``gen_s2t``, G_BA = ``gen_t2s``, D_A = ``disc_img_s``, D_B =
``disc_img_t``, Enc_A / Enc_B = ``enc_s`` / ``enc_t``, Dec_A / Dec_B = ``dec_s`` / ``dec_t``.
No labels are used (``labelled_streams = ()``): the trainer strips them from both streams.

Deployment. What a vehicle runs is G_BA = ``gen_t2s`` in front of the FROZEN day-trained
segmenter (the trainer's model: ``model.init_from`` a source-only checkpoint, or random
weights when none is given; the translation training never uses it). ``deploy()`` is
``Deploy("model", ("gen_t2s",))``, so validation, ``best.pt``, the default export and
``eval`` of the checkpoint all score translate-then-segment; ``edgeseg export CKPT
--network gen_t2s`` exports the translator alone for ``run`` / ``eval --translator``.

Networks and losses (each ||.||_1 is a mean absolute error, CycleGAN's normalisation of
its L1 terms; the paper writes norms without saying):

- the CycleGAN core (`edgeseg.train.nets.cyclegan`): LSGAN adversarial terms (Eq. 1) of
  both translations, ``loss_adv_img_t`` (D_T on G_S->T(x_s)) and ``loss_adv_img_s`` (D_S on
  G_T->S(x_t)), and the cycle L1 (Eq. 2) ``loss_cycle_s`` / ``loss_cycle_t``, weighted
  alpha = ``lambda_cycle``;
- content-feature distillation (Sec. 3.2, Eq. 4-7): z_s = Enc_S(x_s), the X-shaped
  decodings I'_s = Dec_S(z_s), I'_st = Dec_T(z_s), and ``loss_dis_s`` = ||G_S->T(x_s) -
  I'_st||_1 + ||x_s - I'_s||_1 = L_dis(G_AB, Enc_A, Dec_A, Dec_B); ``loss_dis_t``
  symmetric (||G_T->S(x_t) - Dec_S(z_t)||_1 + ||x_t - Dec_T(z_t)||_1);
- the mutual-information constraint (Sec. 3.3, Eq. 11): ``loss_mi_s`` = ||z_s -
  Enc_T(G_S->T(x_s))||_1 = L_MI(G_AB, Enc_A, Enc_B); ``loss_mi_t`` = ||z_t -
  Enc_S(G_T->S(x_t))||_1 (Sec. 4.5: "between EncB(Ib) (zb) and EncA(GBA(Ib)) (zba)").

Full objective (Eq. 12): L = L_adv(G_BA, D_A) + L_adv(G_AB, D_B) + alpha L_cyc + L_dis(A) +
L_dis(B) + L_MI(A) + L_MI(B). The paper's weights of L_dis and L_MI are 1: ``lambda_dis``
and ``lambda_mi`` (defaults 1) scale them for experiments.

Alternating optimisation (Sec. 3.4: L_dis and L_MI "in the same manner of L_adv"): each
iteration

1. generator phase: Enc/Dec and both discriminators fixed (no gradients), both
   generators minimise Eq. 12; L_dis reaches a generator only through its translation
   (its reconstruction half is a constant here: logged, so ``loss_gen_total`` is the
   value of Eq. 12), L_MI through Enc_T(G_S->T(x_s)) / Enc_S(G_T->S(x_t)), its target z
   fixed;
2. phase 2, generators fixed (their outputs of step 1, detached, as CycleGAN's
   discriminator step uses them): both discriminators (real vs pooled fakes, CycleGAN's
   halved LSGAN, ``loss_disc_img_t`` / ``loss_disc_img_s``) and Enc/Dec minimising
   lambda_dis L_dis + lambda_mi L_MI (the terms of Eq. 12 that depend on them; logged as
   ``loss_ae_total``, its terms equal to the logged ``loss_dis_*`` / ``loss_mi_*``: the
   same networks on the same images). Both are one backward over disjoint networks.

Choices where the paper is silent, with CycleGAN's published defaults (Zhu et al. 2017)
as the rule: alpha = 10; LSGAN (Eq. 1 is least squares); ResNet generators (ngf 64, 9
blocks, transposed convs); 70x70 PatchGAN discriminators (``disc_strides`` 2, 2, 2, 1, 1,
ndf 64); image pools of 50; no identity loss (Eq. 12 has none); every network its own
Adam, LR 2e-4, betas (0.5, 0.999), constant for the first half of the run and linearly to
0 over the second (the paper's "200 epochs" with Adam is CycleGAN's 100 + 100). The
encoder / decoder layout is not given either: each is a half of CycleGAN's ResNet
generator (`edgeseg.train.nets.autoencoder`: Enc = stem, two stride-2 convs and
``enc_blocks`` (4) residual blocks; Dec = ``dec_blocks`` (5) residual blocks, two
upsampling stages and a tanh output conv), so Dec o Enc has the generator's exact
layout and z is the generator's bottleneck (4 ngf channels at 1/4 of the side); their
optimisers are the ``autoencoder`` group (same defaults as ``gan``). The paper's
"Siamese network" (Sec. 4.2) is read as these encoder/decoder pairs.

Ablations (Table 1 / Table 2): ``use_mi_loss: false`` is "Ours w/o L_MI";
``use_mi_loss: false, use_distillation_loss: false`` is plain CycleGAN (the Table 1
"CycleGAN" row): the switched-off terms are not computed or logged and their networks
not built (no encoders without either term, no decoders without L_dis).
``use_distillation_loss: false`` with L_MI on is not a row of the paper: the encoders
then have nothing but L_MI to learn from, which a constant embedding minimises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from edgeseg.config import OptimConfig
from edgeseg.models.compose import Deploy
from edgeseg.train.methods.base import Method, set_requires_grad
from edgeseg.train.nets.cyclegan import (
    GENERATORS,
    IMAGE_DISCRIMINATORS,
    CycleGAN,
    ImageRange,
    check_crops,
)
from edgeseg.train.nets.gan_loss import GANMode
from edgeseg.train.nets.generator import Upsample
from edgeseg.train.nets.losses import mean_l1
from edgeseg.train.nets.registry import net_spec

ENCODERS = ("enc_s", "enc_t")
DECODERS = ("dec_s", "dec_t")
#: CycleGAN's 70x70 PatchGAN: 4x4 convs at these strides (64, 128, 256, 512, 1 channels)
PATCHGAN_70 = (2, 2, 2, 1, 1)
#: CycleGAN's optimiser: Adam(0.5, 0.999), LR 2e-4, constant for half the run, then linear
CYCLEGAN_ADAM = OptimConfig(name="adam", lr=2e-4, betas=(0.5, 0.999), weight_decay=0.0,
                            schedule="linear", decay_start=0.5)


@dataclass(frozen=True)
class Params:
    lambda_cycle: float = 10.0  # alpha of Eq. 12 (not given: CycleGAN's 10)
    lambda_dis: float = 1.0  # Eq. 12: L_dis unweighted
    lambda_mi: float = 1.0  # Eq. 12: L_MI unweighted
    use_distillation_loss: bool = True  # L_dis (Eq. 7) and the decoders
    use_mi_loss: bool = True  # L_MI (Eq. 11); both false = plain CycleGAN
    gan_mode: GANMode = "lsgan"  # Eq. 1
    ngf: int = 64  # generators: CycleGAN's resnet_9blocks
    n_blocks: int = 9
    upsample: Upsample = "transpose"
    ndf: int = 64  # image discriminators: the 70x70 PatchGAN
    disc_strides: tuple[int, ...] = PATCHGAN_70
    pool_size: int = 50
    ae_ngf: int = 64  # encoders/decoders: halves of a resnet_9blocks generator
    enc_blocks: int = 4
    dec_blocks: int = 5

    def validate(self) -> None:
        for key in ("lambda_cycle", "lambda_dis", "lambda_mi"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0")
        for key, switch in (("lambda_dis", "use_distillation_loss"), ("lambda_mi", "use_mi_loss")):
            if getattr(self, switch) and getattr(self, key) == 0:
                raise ValueError(f"{key} is 0 with {switch}: true; set {switch}: false to turn "
                                 "the loss off (its networks are then not built)")
        if min(self.ngf, self.ndf, self.ae_ngf) < 1 or min(self.n_blocks, self.enc_blocks,
                                                           self.dec_blocks) < 0:
            raise ValueError("ngf, ndf, ae_ngf must be >= 1 and n_blocks, enc_blocks, "
                             "dec_blocks >= 0")
        if len(self.disc_strides) < 2 or any(s not in (1, 2) for s in self.disc_strides):
            raise ValueError(f"disc_strides {list(self.disc_strides)}: at least 2 convs, each "
                             "of stride 1 or 2")
        if self.pool_size < 0:
            raise ValueError("pool_size must be >= 0")


class MutualGAN(Method):
    name = "mutual_gan"
    Params = Params
    streams = ("source", "target")
    labelled_streams = ()  # unpaired image translation: no labels at all
    #: each generator and discriminator (``gan``, the CycleGAN core's group) and each
    #: encoder and decoder (``autoencoder``) has its own Adam from its group's block
    optimizer_defaults = {"gan": CYCLEGAN_ADAM, "autoencoder": CYCLEGAN_ADAM}
    find_unused_parameters = True

    # --- set-up ----------------------------------------------------------------------
    def build(self) -> None:
        p, r = self.params, self.ctx.recipe
        self._check_crop()
        self.freeze("model")  # the day segmenter behind the translator is never trained
        self.images = ImageRange(r.data.mean, r.data.std, self.ctx.device)
        self.cyclegan = CycleGAN(self, ngf=p.ngf, n_blocks=p.n_blocks, upsample=p.upsample,
                                 ndf=p.ndf, disc_layers=len(p.disc_strides),
                                 disc_strides=p.disc_strides, pool_size=p.pool_size,
                                 gan_mode=p.gan_mode, seed=r.seed)
        self.pools = self.cyclegan.pools
        self.encoders = ENCODERS if p.use_mi_loss or p.use_distillation_loss else ()
        self.decoders = DECODERS if p.use_distillation_loss else ()
        for name in self.encoders:
            net = self.add_network(name, net_spec("content_encoder", ngf=p.ae_ngf,
                                                  n_blocks=p.enc_blocks))
            self.optimizer_for(name, "autoencoder", net.parameters())
        for name in self.decoders:
            net = self.add_network(name, net_spec("domain_decoder", ngf=p.ae_ngf,
                                                  n_blocks=p.dec_blocks, upsample=p.upsample))
            self.optimizer_for(name, "autoencoder", net.parameters())
        self.weights = {
            "loss_adv_img_t": 1.0, "loss_adv_img_s": 1.0,
            "loss_cycle_s": p.lambda_cycle, "loss_cycle_t": p.lambda_cycle,
            "loss_dis_s": p.lambda_dis, "loss_dis_t": p.lambda_dis,
            "loss_mi_s": p.lambda_mi, "loss_mi_t": p.lambda_mi,
        }

    def _check_crop(self) -> None:
        strides = list(self.params.disc_strides)
        check_crops(self, 2 ** sum(s == 2 for s in strides),
                    f"image discriminators (strides {strides})")

    def deploy(self) -> Deploy:
        return Deploy("model", ("gen_t2s",))  # target -> day, then the day segmenter

    # --- losses ------------------------------------------------------------------------
    def content_losses(self, real_s: torch.Tensor, real_t: torch.Tensor, fake_t: torch.Tensor,
                       fake_s: torch.Tensor) -> dict[str, torch.Tensor]:
        """L_dis (Eq. 7) and L_MI (Eq. 11) of both directions, unweighted, in the generator
        range [-1, 1]. Which side learns is the caller's: in the generator phase the
        encoders and decoders are frozen and the translations carry gradients, in phase 2
        the translations are detached and the encoders and decoders learn."""
        n_s, n_t = real_s.shape[0], real_t.shape[0]
        # one call per network (one DDP forward each; instance norm is per image)
        z_s, z_ts = self.net("enc_s")(torch.cat([real_s, fake_s])).split([n_s, n_t])
        z_t, z_st = self.net("enc_t")(torch.cat([real_t, fake_t])).split([n_t, n_s])
        losses: dict[str, torch.Tensor] = {}
        if self.params.use_distillation_loss:
            z = torch.cat([z_s, z_t])
            ae_s, ae_ts = self.net("dec_s")(z).split([n_s, n_t])  # I'_s, I'_ts
            ae_st, ae_t = self.net("dec_t")(z).split([n_s, n_t])  # I'_st, I'_t
            losses["loss_dis_s"] = mean_l1(fake_t, ae_st) + mean_l1(real_s, ae_s)
            losses["loss_dis_t"] = mean_l1(fake_s, ae_ts) + mean_l1(real_t, ae_t)
        if self.params.use_mi_loss:
            losses["loss_mi_s"] = mean_l1(z_s, z_st)
            losses["loss_mi_t"] = mean_l1(z_t, z_ts)
        return losses

    def generator_losses(self, batch: dict[str, dict[str, torch.Tensor]]
                         ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Unweighted terms of Eq. 12 by log name, and the detached images phase 2 needs."""
        x_s, x_t = batch["source"]["image"], batch["target"]["image"]
        with self.autocast():
            images = self.cyclegan.translate(self.images.to_gan(x_s), self.images.to_gan(x_t))
            losses = self.cyclegan.generator_losses(images)
            if self.encoders:
                losses.update(self.content_losses(images["real_s"], images["real_t"],
                                                  images["fake_t"], images["fake_s"]))
        cache = {k: images[k].detach() for k in ("real_s", "real_t", "fake_t", "fake_s")}
        return losses, cache

    def phase_two_losses(self, cache: dict[str, torch.Tensor]
                         ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Discriminator terms (real vs pooled fakes) and the encoder/decoder terms, both on
        the generator phase's detached images."""
        with self.autocast():
            disc = self.cyclegan.discriminator_losses(cache)
            content = (self.content_losses(cache["real_s"], cache["real_t"], cache["fake_t"],
                                           cache["fake_s"]) if self.encoders else {})
        return disc, content

    # --- the step ------------------------------------------------------------------------
    def phase_one_networks(self) -> tuple[str, ...]:
        """Networks fixed while the generators learn."""
        return (*IMAGE_DISCRIMINATORS, *self.encoders, *self.decoders)

    def generator_step(self, batch: dict[str, dict[str, torch.Tensor]]
                       ) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """Phase 1: the generators minimise Eq. 12; D, Enc and Dec are fixed."""
        set_requires_grad([self.net(n) for n in self.phase_one_networks()], False)
        losses, cache = self.generator_losses(batch)
        total = sum(self.weights[k] * v for k, v in losses.items())
        self.backward(total)
        self.step(*GENERATORS)
        logs = {k: v.item() for k, v in losses.items()}
        logs["loss_gen_total"] = float(total.item())
        return logs, cache

    def phase_two_step(self, cache: dict[str, torch.Tensor]) -> dict[str, float]:
        """Phase 2: D, Enc and Dec learn on the detached translations; the generators are
        fixed (nothing reaches them)."""
        set_requires_grad([self.net(n) for n in self.phase_one_networks()], True)
        self.zero_grad()
        disc, content = self.phase_two_losses(cache)
        total = sum(disc.values())
        logs = {k: v.item() for k, v in disc.items()}
        if content:
            ae_total = sum(self.weights[k] * v for k, v in content.items())
            total = total + ae_total
            logs["loss_ae_total"] = float(ae_total.item())
        self.backward(total)
        self.step(*self.phase_one_networks())
        return logs

    def train_step(self, batch: dict[str, dict[str, torch.Tensor]], iteration: int
                   ) -> dict[str, float]:
        del iteration  # no ramps or warm-ups: the LR schedules are the optimisers'
        self.zero_grad()
        logs, cache = self.generator_step(batch)
        logs.update(self.phase_two_step(cache))
        return logs

    # --- state ------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return self.cyclegan.state_dict()

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.cyclegan.load_state_dict(state)


__all__ = ["DECODERS", "ENCODERS", "MutualGAN", "PATCHGAN_70", "Params", "mean_l1"]
