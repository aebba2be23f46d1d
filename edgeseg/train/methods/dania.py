"""``method: dania``: one-stage day -> night adaptation with a relighting network, a static
loss on coarsely aligned day/night pairs and class re-weighting (../shared/papers/dania.txt,
Sec. 3-4).

Streams. ``source`` (S, labelled: Cityscapes, synthetic day, CamVid day) and ``target``,
a pair reader whose ``image`` is the target-domain day frame T_d and ``night`` its night
counterpart T_n (``darkzurich_pairs``, ``synthetic_pairs``, ``derived_pairs`` from
``edgeseg derive pairs``); with ``data.streams.target.align: homography`` each pair also
carries the day <- night homography that Sec. 3.4 / Eq. 18 uses as the coarse flow, carried
through the crop and flip by the data layer. Target labels never arrive (the trainer strips
them). With ``use_target_day: false`` (the paper's "without Dark Zurich-D" row) the
target stream may be any unlabelled reader: its ``night`` image if it has one, else its
``image``, is T_n, and T_d, D_d and the static loss are gone.

Networks. The relighting net L (``relight``, Fig. 2, `edgeseg.train.nets.relight`) shared
by the three domains: R = L(I); the segmenter G (the trainer's model, shared weights) on
R_s, R_td, R_tn; output-space discriminators D_d (S vs T_d) and D_n (S vs T_n), 5 convs
64/128/256/256/1, kernel 4, strides 2, 2, 1, 1, 1, LeakyReLU 0.2, on softmax maps.

Generator objective (Eq. 15), minimised by L and G:
``b1 L_light + b2 L_seg + b3 L_static + b4 L_adv`` with b = 0.01, 1, 1, 0.01:

- L_light (Eq. 3-7) = 10 L_tv + 1 L_exp + 10 L_style + 1 L_ssim
  (`edgeseg.train.nets.light_loss`), each term summed over the three domains
  I in {I_s, I_td, I_tn} (the paper: "I in {Is, Itd, Itn}"); E of L_exp is the mean
  intensity of this batch's night images, the style target the night images' Gram
  matrix. Logged per term (``loss_light_tv`` ...) and weighted (``loss_light``).
- L_seg (Eq. 8): class-weighted CE on P_s, w_k from Eq. 1-2 (std 0.1, avg 1) over the
  source's class frequencies. ``seg_normalization``: ``weighted_mean`` (default) divides
  by the weights of the labelled pixels, as the authors' code (PyTorch's weighted
  CrossEntropyLoss) does; ``eq8`` divides by N |C| as Eq. 8 is printed, which is the same
  loss scaled by about 1/|C|.
- L_static (Eq. 9-13, `edgeseg.train.nets.static_loss`): P_td = softmax(G(R_td)) is
  detached, warped onto the night frame by the pair's homography (identity for pairs
  without one; warped holes ignored), fused with the detached P_tn (h1 0.8, h2 0.6,
  u 0.4), re-weighted by w_k, restricted to the static classes and argmaxed into the
  pseudo-label; the focal loss (gamma 1) with the 3x3 neighbourhood reaches G only
  through the night logits of the static classes. Table 5's variants replace the focal
  loss on the same pseudo-label and static channels, each without the neighbourhood:
  ``static_loss: ce`` (plain CE), ``weighted_ce`` (CE weighted by the w_k of Eq. 2, the
  paper does not say which weights; normalised by the weights of the labelled pixels, as
  L_seg) and ``plain_focal`` (the focal loss, gamma as above, on each pixel's own label).
- L_adv (Eq. 14) = (D_d(P_td) - r)^2 + (D_n(P_tn) - r)^2, least squares, means over
  the score map.

Discriminators (Eq. 16-17), alternately, on detached maps: L_d = 1/2 (D_d(P_s) - r)^2 +
1/2 (D_d(P_td) - f)^2, L_n the same with D_n and P_tn.

Static classes: `static_class_ids` by name (Cityscapes trainIds 0-10 as in the authors'
code; in CamVid's space sky, building, pole, road, sidewalk, tree, sign, fence).

Deployment (``deploy()``): relight -> segmenter -> the per-class re-weighting of Sec. 3.3
as a logit bias log w_k (argmax of P * w = argmax of logits + log w), with w_k from Eq. 2
at ``deploy_reweight_std`` (the paper evaluates with 0.10-0.14; tune it on a labelled
validation split with ``benchmarks/dania_std_sweep.py``; null deploys no bias). One ONNX
graph with the usual uint8-in / labels-out contract.

Optimisers (Sec. 4.2): G (the recipe's ``optim``) and L (group ``relight``): SGD, momentum
0.9, weight decay 5e-4, LR 2.5e-4, poly 0.9; D_d, D_n (group ``disc``): Adam (0.9, 0.99),
LR 2.5e-4, poly 0.9; batch 2.

Choices where the paper is silent: the BatchNorm layers of G keep their running
statistics (``freeze_bn``, default true: batches of 2 crops, and a source-only
checkpoint to start from); L's batch norm trains on the three domains' batches together
(L and G are each called once per step on the stacked batches, which DDP requires, so
every stream needs the same crop); the relighting net's range is the segmenter's
normalised input (`edgeseg.train.nets.relight`).

Ablations (Tables 4-5): ``use_target_day`` (without T_d), ``use_relight`` (without the
relighting net and L_light), ``use_light_loss`` (the relighting net kept, trained by the
other terms alone: "w/o L_light"), ``use_static_loss``,
``static_loss: focal|ce|weighted_ce|plain_focal``,
``use_fusion`` (pseudo-labels from the warped day prediction alone), ``use_reweighting``
(w = 1 in L_seg and the pseudo-labels, no deployed bias). A switched-off part is not
computed or logged and its networks are not built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from edgeseg.config import ConfigError, OptimConfig
from edgeseg.data import open_dataset
from edgeseg.labels import IGNORE_INDEX, get_label_space
from edgeseg.models.compose import Deploy, log_weights
from edgeseg.train.methods.base import Method, freeze_batchnorm, set_requires_grad
from edgeseg.train.nets.cyclegan import ImageRange
from edgeseg.train.nets.gan_loss import GANLoss
from edgeseg.train.nets.light_loss import LightWeights, light_loss, light_terms, night_level
from edgeseg.train.nets.losses import class_frequencies, class_frequency_weights
from edgeseg.train.nets.registry import net_spec
from edgeseg.train.nets.relight import RelightNet
from edgeseg.train.nets.static_loss import (
    fuse_day_night,
    static_class_ids,
    static_focal_loss,
    static_pseudo_label,
    warp_with_homography,
)

#: the three domains, in the order the light loss sums them
DOMAINS = ("s", "td", "tn")
LIGHT_TERMS = ("tv", "exp", "style", "ssim")
DISCRIMINATORS = {"td": "disc_d", "tn": "disc_n"}


@dataclass(frozen=True)
class Params:
    beta_light: float = 0.01   # b1 of Eq. 15
    beta_seg: float = 1.0      # b2
    beta_static: float = 1.0   # b3
    beta_adv: float = 0.01     # b4
    alpha_tv: float = 10.0     # Eq. 7
    alpha_exp: float = 1.0
    alpha_style: float = 10.0
    alpha_ssim: float = 1.0
    exposure_patch: int = 32   # Eq. 4: 32x32 average pooling
    h1: float = 0.8            # Eq. 11
    h2: float = 0.6
    u: float = 0.4
    gamma: float = 1.0         # Eq. 12 focusing parameter
    reweight_std: float = 0.1  # Eq. 2 during training (std; avg below)
    reweight_avg: float = 1.0
    #: Eq. 2's std of the deployed bias (paper: 0.10-0.14); null: no bias
    deploy_reweight_std: float | None = 0.1
    #: Eq. 1's a_k; null: counted from the source stream's labels at start
    class_frequencies: tuple[float, ...] | None = None
    frequency_images: int | None = None  # images counted for a_k (None: all)
    seg_normalization: Literal["weighted_mean", "eq8"] = "weighted_mean"
    static_loss: Literal["focal", "ce", "weighted_ce", "plain_focal"] = "focal"
    use_target_day: bool = True
    use_relight: bool = True
    use_light_loss: bool = True  # L_light; false keeps the relighting net without it
    use_static_loss: bool = True
    use_fusion: bool = True
    use_reweighting: bool = True
    freeze_bn: bool = True     # G's BatchNorm keeps its running statistics
    relight_ngf: int = 64      # Fig. 2 / the authors' LightNet
    relight_blocks: int = 3
    disc_channels: tuple[int, ...] = (64, 128, 256, 256, 1)
    disc_strides: tuple[int, ...] = (2, 2, 1, 1, 1)

    def validate(self) -> None:
        for key in ("beta_light", "beta_seg", "beta_static", "beta_adv", "alpha_tv",
                    "alpha_exp", "alpha_style", "alpha_ssim", "gamma"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0")
        for key in ("h1", "h2", "u"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"{key} must be in [0, 1]")
        if self.reweight_std <= 0 or self.reweight_avg <= 0:
            raise ValueError("reweight_std and reweight_avg must be > 0")
        if self.deploy_reweight_std is not None and self.deploy_reweight_std <= 0:
            raise ValueError("deploy_reweight_std must be > 0 (null: no deployed bias)")
        if self.exposure_patch < 1 or self.relight_ngf < 1 or self.relight_blocks < 0:
            raise ValueError("exposure_patch and relight_ngf must be >= 1, relight_blocks >= 0")
        if len(self.disc_channels) != len(self.disc_strides) or self.disc_channels[-1] != 1:
            raise ValueError("disc_channels and disc_strides need one entry per conv, the "
                             "last channel count 1")
        if self.use_static_loss and not self.use_target_day:
            raise ValueError("use_static_loss needs use_target_day (the pseudo-labels come "
                             "from the target day frames); set use_static_loss: false")
        if self.use_static_loss and self.beta_static == 0:
            raise ValueError("beta_static is 0 with use_static_loss: true; set "
                             "use_static_loss: false to turn the loss off")
        if self.use_relight and self.use_light_loss and self.beta_light == 0:
            raise ValueError("beta_light is 0 with use_relight: true; set use_relight: false "
                             "to drop the relighting net and its loss, or use_light_loss: "
                             "false to keep the net without its loss")


def class_weights(frequencies: torch.Tensor | np.ndarray | tuple[float, ...], std: float,
                  avg: float, enabled: bool = True) -> torch.Tensor:
    """Eq. 2 weights, or ones when re-weighting is switched off."""
    weights = class_frequency_weights(frequencies, std=std, avg=avg)
    return weights if enabled else torch.ones_like(weights)


def weighted_seg_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                      normalization: str = "weighted_mean") -> torch.Tensor:
    """Eq. 8, class-weighted CE. ``weighted_mean``: sum of w_y * (-log p_y) over labelled
    pixels divided by the sum of their w_y (the authors' code). ``eq8``: the same sum
    divided by N |C| (N labelled pixels, |C| classes), as printed."""
    logits = logits.float()
    weights = weights.to(logits.device)
    if normalization == "weighted_mean":
        return F.cross_entropy(logits, labels, weight=weights, ignore_index=IGNORE_INDEX)
    total = F.cross_entropy(logits, labels, weight=weights, ignore_index=IGNORE_INDEX,
                            reduction="sum")
    valid = (labels != IGNORE_INDEX).sum().clamp(min=1)
    return total / (valid * logits.shape[1])


class DANIA(Method):
    name = "dania"
    Params = Params
    streams = ("source", "target")
    optimizer_defaults = {
        "relight": OptimConfig(name="sgd", lr=2.5e-4, momentum=0.9, weight_decay=5e-4,
                               schedule="poly", power=0.9),
        "disc": OptimConfig(name="adam", lr=2.5e-4, betas=(0.9, 0.99), weight_decay=0.0,
                            schedule="poly", power=0.9),
    }
    find_unused_parameters = True

    # --- set-up ----------------------------------------------------------------------
    def build(self) -> None:
        p, r = self.params, self.ctx.recipe
        self._check_crops()
        space = get_label_space(r.data.label_space)
        self.static_ids = static_class_ids(space)
        self.images = ImageRange(r.data.mean, r.data.std, self.ctx.device)
        self.gan = GANLoss("lsgan")
        self.light_weights = LightWeights(tv=p.alpha_tv, exp=p.alpha_exp, style=p.alpha_style,
                                          ssim=p.alpha_ssim)
        self.frequencies = self._frequencies(space.num_classes)
        self.weights = class_weights(self.frequencies, p.reweight_std, p.reweight_avg,
                                     p.use_reweighting).to(self.ctx.device)
        if p.use_relight:
            net = self.add_network("relight", net_spec(
                "relight_net", "prenet", ngf=p.relight_ngf, n_blocks=p.relight_blocks))
            self.optimizer_for("relight", "relight", net.parameters())
        domains = ("td", "tn") if p.use_target_day else ("tn",)
        self.discriminators = tuple(DISCRIMINATORS[d] for d in domains)
        for name in self.discriminators:
            net = self.add_network(name, net_spec(
                "patch_discriminator", in_channels=r.model.num_classes,
                channels=list(p.disc_channels), strides=list(p.disc_strides), norm="none"))
            self.optimizer_for(name, "disc", net.parameters())
        self.optimizer_for("model", "model",
                           self.ctx.model.param_groups(r.optim.lr, r.optim.head_lr_mult))
        self.beta = {"loss_light": p.beta_light, "loss_seg": p.beta_seg,
                     "loss_static": p.beta_static, "loss_adv": p.beta_adv}

    def _check_crops(self) -> None:
        d = self.ctx.recipe.data
        multiple = RelightNet.size_multiple
        crops = {stream: d.stream(stream).crop for stream in self.streams}
        for stream, crop in crops.items():
            own = d.streams.get(stream)
            key = f"data.streams.{stream}.crop" if own and own.crop else "data.crop"
            if crop is None:
                raise ConfigError(f"{key}: method dania needs a crop (the domains' batches "
                                  "are stacked into one batch)")
            if crop[0] % multiple or crop[1] % multiple:
                raise ConfigError(f"{key} {crop[0]}x{crop[1]}: dania needs sides that are "
                                  f"multiples of {multiple} (the relighting net downsamples "
                                  "twice)")
        if len(set(crops.values())) > 1:
            raise ConfigError(f"data.streams.*.crop: dania stacks the source and target "
                              f"batches, so every stream needs the same crop, got {crops}")

    def _frequencies(self, num_classes: int) -> np.ndarray:
        """Eq. 1's a_k: the recipe's, or counted once from the source stream's labels."""
        p, r = self.params, self.ctx.recipe
        if p.class_frequencies is not None:
            if len(p.class_frequencies) != num_classes:
                raise ConfigError(f"method.params.class_frequencies has "
                                  f"{len(p.class_frequencies)} values; the label space "
                                  f"{r.data.label_space} has {num_classes} classes")
            return np.asarray(p.class_frequencies, np.float64)
        spec = r.data.stream("source").data
        return class_frequencies(open_dataset(spec, r.data.label_space), num_classes,
                                 max_images=p.frequency_images)

    def deploy(self) -> Deploy:
        p = self.params
        bias = None
        if p.use_reweighting and p.deploy_reweight_std is not None:
            weights = class_frequency_weights(self.frequencies, std=p.deploy_reweight_std,
                                              avg=p.reweight_avg)
            try:
                bias = log_weights(weights.tolist())
            except ValueError as err:
                raise ConfigError(f"method.params.deploy_reweight_std "
                                  f"{p.deploy_reweight_std}: {err}; use a smaller std") from None
        return Deploy("model", ("relight",) if p.use_relight else (), bias)

    def extra_state(self) -> dict[str, list[float]]:
        """a_k travels with the checkpoint, so the deployed bias can be re-tuned without the
        source data (``benchmarks/dania_std_sweep.py``); resume recomputes the same values."""
        return {"class_frequencies": [float(f) for f in self.frequencies]}

    def set_model_mode(self) -> None:
        if self.params.freeze_bn:
            freeze_batchnorm(self.net("model"))

    # --- losses ------------------------------------------------------------------------
    def domain_images(self, batch: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """I_s, I_td, I_tn in the segmenter's normalised range."""
        src, tgt = batch["source"], batch["target"]
        if self.params.use_target_day:
            if "night" not in tgt:
                raise ConfigError("method dania: the target stream must be a day/night pair "
                                  "reader (samples with a 'night' image: darkzurich_pairs, "
                                  "synthetic_pairs, derived_pairs); or set "
                                  "method.params.use_target_day: false")
            return {"s": src["image"], "td": tgt["image"], "tn": tgt["night"]}
        return {"s": src["image"], "tn": tgt.get("night", tgt["image"])}

    def forward_domains(self, images: dict[str, torch.Tensor]
                        ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """R = L(I) and G(R) for every domain, each network called once on the domains'
        batches stacked (DDP allows one forward per network and backward; L's batch norm
        sees the three domains together)."""
        names = list(images)
        sizes = [images[d].shape[0] for d in names]
        x = torch.cat([images[d] for d in names])
        relit = self.net("relight")(x) if self.params.use_relight else x
        logits = self.net("model")(relit)
        return dict(zip(names, relit.split(sizes))), dict(zip(names, logits.split(sizes)))

    def light_losses(self, images: dict[str, torch.Tensor], relit: dict[str, torch.Tensor]
                     ) -> dict[str, torch.Tensor]:
        """Eq. 3-6 per term, each summed over the domains, on 0..1 intensities."""
        night = self.images.to_unit(images["tn"])
        level = night_level(night)
        totals = dict.fromkeys(LIGHT_TERMS, 0.0)
        for d in images:
            terms = light_terms(self.images.to_unit(images[d]), self.images.to_unit(relit[d]),
                                night, level, patch=self.params.exposure_patch)
            for k in LIGHT_TERMS:
                totals[k] = totals[k] + terms[k]
        return {f"loss_light_{k}": v for k, v in totals.items()}

    def static_target(self, logits_td: torch.Tensor, logits_tn: torch.Tensor,
                      homography: torch.Tensor | None) -> torch.Tensor:
        """The static pseudo-label of the night frame (Eq. 9-11 + Eq. 2): no gradients."""
        p = self.params
        with torch.no_grad():
            day = torch.softmax(logits_td.detach().float(), 1)
            if homography is not None:
                day, valid = warp_with_homography(day, homography.float())
            else:
                valid = torch.ones_like(day[:, :1], dtype=torch.bool)
            if p.use_fusion:
                night = torch.softmax(logits_tn.detach().float(), 1)
                day = fuse_day_night(day, night, p.h1, p.h2, p.u)
            return static_pseudo_label(day, self.weights, self.static_ids, valid)

    def static_loss(self, logits_tn: torch.Tensor, pseudo: torch.Tensor) -> torch.Tensor:
        """Eq. 12-13, or the Table 5 variant ``static_loss`` names."""
        kind = self.params.static_loss
        if kind in ("ce", "weighted_ce"):
            weight = self.weights[self.static_ids] if kind == "weighted_ce" else None
            return F.cross_entropy(logits_tn[:, self.static_ids].float(), pseudo, weight=weight,
                                   ignore_index=IGNORE_INDEX)
        return static_focal_loss(logits_tn.float(), pseudo, self.static_ids, self.params.gamma,
                                 neighbourhood=1 if kind == "plain_focal" else 3)

    def generator_losses(self, batch: dict[str, dict[str, torch.Tensor]]
                         ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Unweighted terms of Eq. 15 by log name (light terms unweighted too, plus their
        Eq. 7 sum ``loss_light``), and the detached softmax maps the discriminators need."""
        p = self.params
        images = self.domain_images(batch)
        with self.autocast():
            relit, logits = self.forward_domains(images)
        losses: dict[str, torch.Tensor] = {}
        if p.use_relight and p.use_light_loss:
            terms = self.light_losses(images, relit)
            losses.update(terms)
            losses["loss_light"] = light_loss(
                {k: terms[f"loss_light_{k}"] for k in LIGHT_TERMS}, self.light_weights)
        losses["loss_seg"] = weighted_seg_loss(logits["s"], batch["source"]["label"],
                                               self.weights, p.seg_normalization)
        if p.use_static_loss:
            pseudo = self.static_target(logits["td"], logits["tn"],
                                        batch["target"].get("homography"))
            losses["loss_static"] = self.static_loss(logits["tn"], pseudo)
        probs = {d: torch.softmax(v.float(), 1) for d, v in logits.items()}
        losses["loss_adv"] = sum(self.gan(self.net(DISCRIMINATORS[d])(probs[d]), True)
                                 for d in DISCRIMINATORS if d in probs)
        return losses, {d: v.detach() for d, v in probs.items()}

    def discriminator_losses(self, probs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Eq. 16-17 on detached maps: source as real, the target domain as fake."""
        return {f"loss_{DISCRIMINATORS[d]}": self.gan.discriminator(
                    self.net(DISCRIMINATORS[d])(probs["s"]), self.net(DISCRIMINATORS[d])(probs[d]))
                for d in DISCRIMINATORS if d in probs}

    # --- the step ------------------------------------------------------------------------
    def train_step(self, batch: dict[str, dict[str, torch.Tensor]], iteration: int
                   ) -> dict[str, float]:
        del iteration
        self.zero_grad()
        self.set_model_mode()
        discs = [self.net(n) for n in self.discriminators]
        set_requires_grad(discs, False)
        losses, probs = self.generator_losses(batch)
        total = sum(self.beta[k] * losses[k] for k in self.beta if k in losses)
        self.backward(total)
        self.step("model", *(("relight",) if self.params.use_relight else ()))
        logs = {k: v.item() for k, v in losses.items()}
        logs["loss_gen_total"] = float(total.item())
        set_requires_grad(discs, True)
        disc = self.discriminator_losses(probs)
        self.backward(sum(disc.values()))
        self.step(*self.discriminators)
        logs.update({k: v.item() for k, v in disc.items()})
        return logs


__all__ = ["DANIA", "Params", "class_weights", "weighted_seg_loss"]
