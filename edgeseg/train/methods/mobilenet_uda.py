"""``method: mobilenet_uda``: CycleGAN + semantic consistency + feature discriminators,
trained end to end with the segmenter (../shared/papers/mobilenet-uda.txt, Sec. 3-4).

Networks: translators G_S->T (``gen_s2t``) and G_T->S (``gen_t2s``), image
discriminators D_S / D_T (``disc_img_s`` / ``disc_img_t``), feature discriminators
D'_S / D'_T (``disc_feat_s`` / ``disc_feat_t``) on the encoder output M_e, and the
segmenter M (the trainer's model, the only deployable artefact). Each iteration:

1. generator step, minimised by both generators and (after the warm-up) M:
   image adversarial (Eq. 1-2, generator side), cycle L1 (Eq. 3) x lambda_cycle,
   semantic consistency L_sem (Eq. 4: CE of M on a translated image against the
   argmax of M on its original) x lambda_sem, feature adversarial (Eq. 6-7:
   M_e(G_S->T(x_s)) must look like M_e(x_t) to D'_T, M_e(G_T->S(x_t)) like M_e(x_s)
   to D'_S) x lambda_feat, and supervised CE of M on G_S->T(x_s) with the source
   labels x lambda_ce. Every term reaches the generators; L_sem, L_feat and the CE
   reach them through M.
2. discriminator step: D_S, D_T on real images vs pooled fakes (``ImagePool``, 50),
   D'_S, D'_T on encoder features of originals vs translations (no pool: the
   paper pools nothing, CycleGAN pools images only). Inputs are detached, so this
   step changes no generator or segmenter weight.

Adversarial terms are LSGAN (the paper replaces the log-losses by L2); ``gan_mode:
vanilla`` gives BCE.

Schedule. M is frozen (no gradients, eval mode, LR 0 in the log) for the first
``freeze_model_fraction`` of the iterations (paper: 20K of 80K) while the GAN
networks learn from it, then everything trains jointly. M: the recipe's ``optim``
(Adam, beta1 0.9, weight decay 4e-5, LR 1e-5 GTA5 / 5e-6 SYNTHIA), poly 0.9 to 0. The
paper does not say whether the decay spans the warm-up. ``model_lr_decay: whole_run``
(default, the plain reading of "decreased to 0 from its initial value", and what the
CamVid result was measured with) starts M at (1 - 0.25)^0.9 = 0.77x its LR when it
unfreezes; ``after_warmup`` starts the poly decay at the unfreeze, from the full LR.
GAN networks: one Adam each from the ``gan`` optimiser group (beta1 0.5, LR 2e-4). The
paper gives no schedule for them, only the LR, so it is constant; ``method.optimizers:
{gan: {schedule: linear, decay_start: 0.5}}`` gives CycleGAN's constant-then-linear
decay. Weight decay: the recipe's ``optim.decay_norm_and_bias``; the paper-sized
recipes set it false (TF-slim's MobileNet regularises conv weights only), the CamVid
recipe keeps the decay on every tensor it was measured with.

Image ranges. Batches hold ``(x/255 - mean)/std`` (``data.mean``/``std``), the
segmenter's input; generators work in [-1, 1] (tanh, and what the translator
ONNX export assumes). `ImageRange` converts both ways; both maps are affine, so
gradients flow through them from M into the generators.

Batch size 1 (the paper's). BatchNorm of M is kept in eval mode by default
(``freeze_bn: true``): running statistics from the source-only stage, affine
parameters still trained, as most batch-1 UDA code does; batch-1 statistics of
a 600x600 patch are noisy and would also mix translated and real images. With
``freeze_bn: false`` BN trains on the batch; the ASPP image-pooling BN then uses
its running statistics for a one-value batch (`edgeseg.models.aspp.PooledBatchNorm2d`).

Source replay (not in the paper, off by default): ``lambda_ce_source > 0`` adds
a supervised CE of M on the raw source image. The paper trains M on translated
source only (its goal is the target domain); a vehicle model must keep working by
day as well. On CamVid at a segmenter LR of 5e-5, replay cut the day loss from 4.7 to
1.3 points and raised dusk (benchmarks/results/camvid/mobilenet_uda.md); at the
paper's 1e-5 the paper's loss alone stays within 1.4. The term reaches M only, never
the generators. The raw source also provides the L_sem pseudo-label and
D'_S's real features, so it costs one backward, no extra forward.

Ablations (paper Table 3): ``use_feature_loss`` and ``use_semantic_loss``.
Both false = image translation only (CycleGAN + CE on translated source); only
feature = "lambda_sem = 0"; only semantic = "lambda_feat = 0"; both = full. A
switched-off loss is not computed or logged, and its networks (the feature
discriminators) are not built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from edgeseg.config import OptimConfig
from edgeseg.labels import IGNORE_INDEX
from edgeseg.train.methods.base import (
    Method,
    build_optimizer,
    freeze_batchnorm,
    recipe_schedule,
    set_requires_grad,
)
from edgeseg.train.nets.cyclegan import (
    GENERATORS,
    CycleGAN,
    ImageRange,
    check_crops,
    cycle_loss,
)
from edgeseg.train.nets.gan_loss import GANMode
from edgeseg.train.nets.generator import Upsample
from edgeseg.train.nets.registry import net_spec


@dataclass(frozen=True)
class Params:
    lambda_cycle: float = 20.0
    lambda_sem: float = 0.1
    lambda_feat: float = 1e-4
    lambda_ce: float = 1.0
    lambda_ce_source: float = 0.0  # source replay, not in the paper (see the module doc)
    use_feature_loss: bool = True
    use_semantic_loss: bool = True
    freeze_model_fraction: float = 0.25  # M frozen for this share of train.iterations
    freeze_bn: bool = True  # M's BatchNorm layers in eval mode (batch-1 training)
    #: M's poly decay over the whole run (from iteration 0) or from the unfreeze on
    model_lr_decay: Literal["whole_run", "after_warmup"] = "whole_run"
    gan_mode: GANMode = "lsgan"
    ngf: int = 64
    n_blocks: int = 9
    upsample: Upsample = "transpose"
    ndf: int = 64
    feat_ndf: int = 64
    disc_layers: int = 5
    pool_size: int = 50

    def validate(self) -> None:
        for key in ("lambda_cycle", "lambda_sem", "lambda_feat", "lambda_ce", "lambda_ce_source"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0")
        for key, switch in (("lambda_feat", "use_feature_loss"), ("lambda_sem", "use_semantic_loss")):
            if getattr(self, switch) and getattr(self, key) == 0:
                raise ValueError(f"{key} is 0 with {switch}: true; set {switch}: false to turn "
                                 "the loss off (its networks are then not built)")
        if not 0.0 <= self.freeze_model_fraction < 1.0:
            raise ValueError("freeze_model_fraction must be in [0, 1)")
        if min(self.ngf, self.ndf, self.feat_ndf) < 1 or self.n_blocks < 0:
            raise ValueError("ngf, ndf, feat_ndf must be >= 1 and n_blocks >= 0")
        if self.disc_layers < 2 or self.pool_size < 0:
            raise ValueError("disc_layers must be >= 2 and pool_size >= 0")


def semantic_consistency_loss(logits_translated: torch.Tensor,
                              logits_original: torch.Tensor) -> torch.Tensor:
    """Eq. 4, one direction: CE of M on the translation against argmax of M on the original.

    The pseudo-label is an argmax, so no gradient flows through the original's branch;
    the loss pushes the translation (and M) towards the original's segmentation.
    """
    return F.cross_entropy(logits_translated.float(), logits_original.detach().argmax(1))


class MobileNetUDA(Method):
    name = "mobilenet_uda"
    Params = Params
    streams = ("source", "target")
    #: every GAN network (generators, image and feature discriminators) has its own Adam
    #: with this block: the paper gives beta1 0.5 and LR 2e-4 and no schedule (constant);
    #: ``{schedule: linear, decay_start: 0.5}`` is CycleGAN's constant-then-linear decay
    optimizer_defaults = {"gan": OptimConfig(name="adam", lr=2e-4, betas=(0.5, 0.999),
                                             weight_decay=0.0, schedule="constant")}
    find_unused_parameters = True

    # --- set-up ----------------------------------------------------------------------
    def build(self) -> None:
        p, r = self.params, self.ctx.recipe
        self._check_crop()
        self.images = ImageRange(r.data.mean, r.data.std, self.ctx.device)
        self.cyclegan = CycleGAN(self, ngf=p.ngf, n_blocks=p.n_blocks, upsample=p.upsample,
                                 ndf=p.ndf, disc_layers=p.disc_layers, pool_size=p.pool_size,
                                 gan_mode=p.gan_mode, seed=r.seed)
        self.gan_loss = self.cyclegan.gan_loss
        self.pools = self.cyclegan.pools
        if p.use_feature_loss:
            for name in ("disc_feat_s", "disc_feat_t"):
                net = self.add_network(name, net_spec(
                    "patch_discriminator", in_channels=self.ctx.model.encoder_channels,
                    ndf=p.feat_ndf, n_layers=p.disc_layers, stride=1))
                self.optimizer_for(name, "gan", net.parameters())
        total = r.train.iterations
        self.discriminators = tuple(n for n in self.networks if n.startswith("disc_"))
        self.warmup_iters = round(p.freeze_model_fraction * total)
        warm = self.warmup_iters if p.model_lr_decay == "after_warmup" else 0
        model_schedule = recipe_schedule(r.optim, total - warm)
        groups = self.ctx.model.param_groups(r.optim.lr, r.optim.head_lr_mult)
        self.add_optimizer("model", build_optimizer(r.optim, groups),
                           lambda it: 0.0 if it < self.warmup_iters else model_schedule(it - warm))
        self.weights = {
            "loss_adv_img_t": 1.0, "loss_adv_img_s": 1.0,
            "loss_cycle_s": p.lambda_cycle, "loss_cycle_t": p.lambda_cycle,
            "loss_sem_s": p.lambda_sem, "loss_sem_t": p.lambda_sem,
            "loss_feat_t": p.lambda_feat, "loss_feat_s": p.lambda_feat,
            "loss_seg_src_translated": p.lambda_ce,
            "loss_seg_src": p.lambda_ce_source,
        }

    def _check_crop(self) -> None:
        n = self.params.disc_layers
        check_crops(self, 2 ** n, f"{n}-layer image discriminators",
                    "; lower method.params.disc_layers or enlarge the crop")

    def model_frozen(self, iteration: int) -> bool:
        return iteration < self.warmup_iters

    def set_model_mode(self, frozen: bool) -> None:
        """Frozen: no gradients, eval mode. Else train mode, BN in eval if ``freeze_bn``."""
        model = self.net("model")
        set_requires_grad(model, not frozen)
        model.train(not frozen)
        if self.params.freeze_bn:
            freeze_batchnorm(model)

    # --- losses ------------------------------------------------------------------------
    def generator_losses(self, batch: dict[str, dict[str, torch.Tensor]]
                         ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Unweighted generator-side losses by log name, and the detached tensors the
        discriminator step needs."""
        p = self.params
        x_s, y_s = batch["source"]["image"], batch["source"]["label"]
        x_t = batch["target"]["image"]
        n_s = x_s.shape[0]
        with self.autocast():
            images = self.cyclegan.translate(self.images.to_gan(x_s), self.images.to_gan(x_t))
            fake_t, fake_s = images["fake_t"], images["fake_s"]
            losses = self.cyclegan.generator_losses(images)
            cache = {k: images[k].detach() for k in ("real_s", "real_t", "fake_t", "fake_s")}
            cross = p.use_semantic_loss or p.use_feature_loss  # need M on both translations
            replay = p.lambda_ce_source > 0
            # one M call with gradients: translations, then the raw source if replayed
            inputs = {"fake_t": self.images.to_seg(fake_t)}
            if cross:
                inputs["fake_s"] = self.images.to_seg(fake_s)
            if replay:
                inputs["src"] = x_s
            pred = self.net("model")(torch.cat(list(inputs.values())), features=True)
            sizes = [x.shape[0] for x in inputs.values()]
            logits = dict(zip(inputs, pred["logits"].split(sizes)))
            feats = dict(zip(inputs, pred["out"].split(sizes)))
            losses["loss_seg_src_translated"] = F.cross_entropy(
                logits["fake_t"].float(), y_s, ignore_index=IGNORE_INDEX)
            if replay:
                losses["loss_seg_src"] = F.cross_entropy(logits["src"].float(), y_s,
                                                         ignore_index=IGNORE_INDEX)
            if cross:
                with torch.no_grad():  # M on the originals: pseudo-labels and real features
                    if replay:
                        orig_t = self.net("model")(x_t, features=True)
                        orig_logits_s, orig_feat_s = logits["src"].detach(), feats["src"].detach()
                    else:
                        orig = self.net("model")(torch.cat([x_s, x_t]), features=True)
                        orig_t = {k: v[n_s:] for k, v in orig.items()}
                        orig_logits_s, orig_feat_s = orig["logits"][:n_s], orig["out"][:n_s]
                if p.use_semantic_loss:
                    losses["loss_sem_s"] = semantic_consistency_loss(logits["fake_t"], orig_logits_s)
                    losses["loss_sem_t"] = semantic_consistency_loss(logits["fake_s"],
                                                                     orig_t["logits"])
                if p.use_feature_loss:
                    feat_fake_t, feat_fake_s = feats["fake_t"], feats["fake_s"]
                    losses["loss_feat_t"] = self.gan_loss(self.net("disc_feat_t")(feat_fake_t), True)
                    losses["loss_feat_s"] = self.gan_loss(self.net("disc_feat_s")(feat_fake_s), True)
                    cache.update(feat_s=orig_feat_s, feat_t=orig_t["out"],
                                 feat_fake_t=feat_fake_t.detach(), feat_fake_s=feat_fake_s.detach())
        return losses, cache

    def discriminator_losses(self, cache: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Discriminator terms on detached inputs: real images vs pooled fakes (the CycleGAN
        core), encoder features of originals vs translations (no pool)."""
        with self.autocast():
            losses = self.cyclegan.discriminator_losses(cache)
            if self.params.use_feature_loss:
                losses["loss_disc_feat_t"] = self.cyclegan.disc_loss(
                    "disc_feat_t", cache["feat_t"], cache["feat_fake_t"])
                losses["loss_disc_feat_s"] = self.cyclegan.disc_loss(
                    "disc_feat_s", cache["feat_s"], cache["feat_fake_s"])
        return losses

    # --- the step ------------------------------------------------------------------------
    def generator_step(self, batch: dict[str, dict[str, torch.Tensor]], iteration: int
                       ) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        frozen = self.model_frozen(iteration)
        self.set_model_mode(frozen)
        set_requires_grad([self.net(n) for n in self.discriminators], False)
        losses, cache = self.generator_losses(batch)
        total = sum(self.weights[k] * v for k, v in losses.items())
        self.backward(total)
        self.step(*GENERATORS, *(() if frozen else ("model",)))
        logs = {k: v.item() for k, v in losses.items()}
        logs["loss_gen_total"] = float(total.item())
        return logs, cache

    def discriminator_step(self, cache: dict[str, torch.Tensor]) -> dict[str, float]:
        set_requires_grad([self.net(n) for n in self.discriminators], True)
        self.zero_grad()
        losses = self.discriminator_losses(cache)
        self.backward(sum(losses.values()))
        self.step(*self.discriminators)
        return {k: v.item() for k, v in losses.items()}

    def train_step(self, batch: dict[str, dict[str, torch.Tensor]], iteration: int) -> dict[str, float]:
        self.zero_grad()
        logs, cache = self.generator_step(batch, iteration)
        logs.update(self.discriminator_step(cache))
        return logs

    # --- state ------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return self.cyclegan.state_dict()

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.cyclegan.load_state_dict(state)


__all__ = ["ImageRange", "MobileNetUDA", "Params", "cycle_loss", "semantic_consistency_loss"]
