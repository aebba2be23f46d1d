"""``method: sait_segment``: the feature-level alignment stage of semantically adaptive
image-to-image translation (../shared/papers/semantically-adaptive-i2i.txt, Sec. 3.4 and
"Bidirectional learning" in Sec. 4): the segmenter M trained on translated source images,
pseudo-labelled target images and an output-space discriminator D_seg. The translator
itself is ``method: sait_translate``; this stage reads what it made, offline.

One round of the paper's outer loop (Sec. 4: "iteratively recreate X_S->T when M stops
improving on the target dataset. Before each training of the segmentation network, we
also generate new pseudo-labels Y_T^SSL"):

1. train the translator F_S->T (``sait_translate``, guided by the current M);
2. ``edgeseg derive translate ITS_CKPT --network translator_s2t --data SOURCE -o
   runs/.../roundK/translated``: X_S->T with the source labels Y_S copied unchanged;
3. ``edgeseg derive pseudo-label CURRENT_M_CKPT --data TARGET -o runs/.../roundK/pseudo
   --threshold 0.9``: Y_T^SSL of Eq. 9 (255 where the top probability is below th_SSL)
   and its confidence map;
4. this method, with the ``source`` stream on the translated folder and the ``target``
   stream on the target images with ``data.streams.target.pseudo_labels`` on step 3's
   folder; its ``best.pt``/``last.pt`` is the M of the next round (``model.init_from``).
   Round 1 may have no M worth pseudo-labelling with: ``use_ssl: false``.

Streams. ``source`` (labelled: X_S->T, Y_S) and ``target`` (X_T). Only ``source`` is in
``labelled_streams``: the target's own labels are stripped by the platform, and its
``label``/``confidence`` exist only when ``data.streams.target.pseudo_labels`` names an
``edgeseg derive pseudo-label`` folder (a model made them). ``use_ssl: true`` without
that key is a config error naming it.

Objective of M (Eq. 7): lambda_seg L_seg + lambda_SSL L_SSL + lambda_adv L_adv.

- ``loss_seg`` = L_seg (Eq. 8): pixel-mean cross-entropy of M(X_S->T) against Y_S, the
  ignore label excluded.
- ``loss_ssl`` = L_SSL (Eq. 10): cross-entropy of M(X_T) against Y_T^SSL, averaged over
  the pixels that count: label != 255 (Eq. 9's -1) and stored confidence >=
  ``ssl_threshold``. The derive step already wrote 255 below its ``--threshold``; the
  method re-checks the confidence so that the recipe's th_SSL is the one applied (a
  folder derived with a lower ``--threshold``, e.g. for a preview, still trains at 0.9)
  and th_SSL can be raised without deriving again. A folder derived with a *higher*
  threshold than ``ssl_threshold`` cannot be loosened and is refused at start (one line
  naming both values). Notes on the re-check: the stored confidence is round(255 p) / 255,
  so at th = 0.9 (229.5 / 255 exactly) it keeps exactly the pixels derive kept; the
  augmentation resizes confidence bilinearly and labels by nearest neighbour, so with
  ``scale_range`` != 1 a pixel next to an ignored one can lose a little confidence and
  drop out (conservative, a one-pixel erosion of the kept regions). A batch with no
  pixel left gives 0 (not NaN). ``ssl_fraction`` logs the share of target pixels kept.
- ``loss_adv`` = L_adv (Eq. 11), the segmenter's side: D_seg scores softmax maps;
  label 1 = target, 0 = source (AdaptSegNet / BDL: ``source_label = 0``,
  ``target_label = 1``), so D_seg(.) of Eq. 11 is the probability "target". D maximises
  Eq. 11 (target maps -> 1, translated-source maps -> 0); M minimises it through its
  first term, i.e. pushes D_seg(M(x_T)) towards 0, "source". We use the non-saturating
  form of that step, as BDL's code: BCE(D_seg(softmax M(x_T)), 0) = -log(1 - D_seg) (the
  minimax term log D_seg has the same minimiser and vanishing gradients when D wins).
  Only target maps enter M's term (the second term of Eq. 11 does not depend on M's
  target output and BDL drops it from M's loss).

D_seg step (alternating, after M's step): on detached maps, 1/2 BCE(D(p_src), 0) + 1/2
BCE(D(p_tgt), 1) (``loss_disc_seg``; BDL halves both terms), p_src = softmax M(X_S->T),
p_tgt = softmax M(X_T) from M's forward of this iteration. D_seg's parameters are frozen
during M's step (no gradient reaches it from L_adv), and M gets no gradient in D's step.
``gan_mode: lsgan`` swaps BCE for least squares (not the paper's).

Networks and optimisers ("the same optimization hyperparameters of [22]" = BDL, Li et
al. 2019, which follows AdaptSegNet; values from BDL's code):

- M: the recipe's ``optim``; the paper-sized recipes use BDL's SGD, LR 2.5e-4, momentum
  0.9, weight decay 5e-4, poly 0.9, classifier at 10x LR (``head_lr_mult: 10``), batch 1.
- D_seg (``disc_seg``, training only, group ``disc``): AdaptSegNet's FCDiscriminator as
  used by BDL: 5 convs 64-128-256-512-1, kernel 4, stride 2, pad 1, LeakyReLU 0.2, no
  normalisation (``patch_discriminator`` with ``channels``/``strides``); Adam, LR 1e-4,
  betas (0.9, 0.99), poly 0.9 (BDL decays D's LR with the same poly as M's).
- lambda_seg 1, lambda_SSL 1, lambda_adv 1e-3 (DeepLabV2; the paper's FCN8s value is
  1e-4).

Choices where the paper is silent (ours): BatchNorm of M keeps its running statistics
(``freeze_bn: true``; batch-1 training, as BDL's DeepLab whose BN layers are frozen;
here the affine parameters still train); M is called once per step on the translated
source and target batches stacked (one forward per network and backward, as DDP needs),
so both streams need the same crop, checked at start; with ``freeze_bn: false`` BN
statistics then mix the two domains. BDL's pseudo-labels use per-class thresholds (the
median confidence of each class, capped at 0.9); this paper states one fixed th_SSL =
0.9 (Eq. 9), which is what we do.

Switches (Eq. 7 term by term): ``use_ssl`` (round 1 without pseudo-labels) and
``use_adv``. A switched-off term is not computed or logged; without ``use_adv`` D_seg is
not built. With both off, M trains on X_S->T alone and the target stream is unused.

``deploy()``: the bare segmenter M (no pre-network, no bias): what ``best.pt``, export
and the next round's pseudo-labels use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from edgeseg.config import ConfigError, OptimConfig
from edgeseg.labels import IGNORE_INDEX
from edgeseg.models.compose import Deploy
from edgeseg.train.derive import DeriveError, read_manifest
from edgeseg.train.methods.base import Method, freeze_batchnorm, set_requires_grad
from edgeseg.train.nets.gan_loss import GANLoss, GANMode
from edgeseg.train.nets.registry import net_spec

#: D_seg's label for softmax maps of translated source images (AdaptSegNet, BDL)
SOURCE_LABEL = 0.0
#: D_seg's label for softmax maps of target images
TARGET_LABEL = 1.0
#: the terms of Eq. 7 by log name, with the parameter that weights each
WEIGHTS = {"loss_seg": "lambda_seg", "loss_ssl": "lambda_ssl", "loss_adv": "lambda_adv"}


@dataclass(frozen=True)
class Params:
    lambda_seg: float = 1.0     # Eq. 7
    lambda_ssl: float = 1.0     # Eq. 7
    lambda_adv: float = 1e-3    # Eq. 7, DeepLabV2 (FCN8s: 1e-4)
    use_ssl: bool = True        # L_SSL: needs data.streams.target.pseudo_labels
    use_adv: bool = True        # L_adv and D_seg
    ssl_threshold: float = 0.9  # th_SSL of Eq. 9, re-checked against the stored confidence
    gan_mode: GANMode = "vanilla"  # BCE, as Eq. 11 and BDL; lsgan is not the paper's
    freeze_bn: bool = True      # M's BatchNorm keeps its running statistics (batch 1)
    disc_channels: tuple[int, ...] = (64, 128, 256, 512, 1)  # AdaptSegNet/BDL D
    disc_strides: tuple[int, ...] = (2, 2, 2, 2, 2)

    def validate(self) -> None:
        for key in WEIGHTS.values():
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0")
        if self.lambda_seg == 0:
            raise ValueError("lambda_seg is 0: L_seg is the only supervised term of Eq. 7")
        for key, switch in (("lambda_ssl", "use_ssl"), ("lambda_adv", "use_adv")):
            if getattr(self, switch) and getattr(self, key) == 0:
                raise ValueError(f"{key} is 0 with {switch}: true; set {switch}: false to turn "
                                 "the term off")
        if not 0.0 <= self.ssl_threshold <= 1.0:
            raise ValueError(f"ssl_threshold {self.ssl_threshold}: expected a probability "
                             "in [0, 1]")
        if len(self.disc_channels) != len(self.disc_strides) or len(self.disc_channels) < 2:
            raise ValueError("disc_channels and disc_strides need one entry per conv (>= 2)")
        if self.disc_channels[-1] != 1:
            raise ValueError(f"disc_channels {list(self.disc_channels)}: the last conv must "
                             "have 1 channel (a logit map)")


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 8: pixel-mean cross-entropy over the labelled pixels (fp32)."""
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)


def ssl_mask(labels: torch.Tensor, confidence: torch.Tensor, threshold: float) -> torch.Tensor:
    """Pixels of Y_T^SSL that count (Eq. 9): a class id and confidence >= ``threshold``."""
    return (labels != IGNORE_INDEX) & (confidence >= threshold)


def ssl_loss(logits: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor,
             threshold: float) -> torch.Tensor:
    """Eq. 10: cross-entropy against the pseudo-labels, averaged over the pixels of
    `ssl_mask`; 0 (with a graph) when none is left."""
    keep = ssl_mask(labels, confidence, threshold)
    targets = torch.where(keep, labels, torch.full_like(labels, IGNORE_INDEX))
    total = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX,
                            reduction="sum")
    return total / keep.sum().clamp(min=1)


class SaitSegment(Method):
    name = "sait_segment"
    Params = Params
    streams = ("source", "target")
    labelled_streams = ("source",)  # target labels only ever come from pseudo_labels
    #: D_seg: BDL's discriminator optimiser (Adam 1e-4, betas 0.9/0.99, poly 0.9)
    optimizer_defaults = {"disc": OptimConfig(name="adam", lr=1e-4, betas=(0.9, 0.99),
                                              weight_decay=0.0, schedule="poly", power=0.9)}
    find_unused_parameters = True  # D_seg is frozen in M's step, M absent from D's

    # --- set-up ----------------------------------------------------------------------
    def build(self) -> None:
        p, r = self.params, self.ctx.recipe
        if p.use_ssl:
            self._check_pseudo_labels()
        self.uses_target = p.use_ssl or p.use_adv
        if self.uses_target:
            self._check_crops()
        self.optimizer_for("model", "model",
                           self.ctx.model.param_groups(r.optim.lr, r.optim.head_lr_mult))
        self.gan = GANLoss(p.gan_mode, real_label=TARGET_LABEL, fake_label=SOURCE_LABEL)
        if p.use_adv:
            net = self.add_network("disc_seg", net_spec(
                "patch_discriminator", in_channels=r.model.num_classes,
                n_layers=len(p.disc_channels), channels=list(p.disc_channels),
                strides=list(p.disc_strides), norm="none"))
            self.optimizer_for("disc_seg", "disc", net.parameters())
        self.weights = {k: getattr(p, v) for k, v in WEIGHTS.items()}

    def _check_pseudo_labels(self) -> None:
        """L_SSL needs a pseudo-label folder on the target stream, derived at a threshold
        no higher than ``ssl_threshold`` (a higher one cannot be loosened here)."""
        key = "data.streams.target.pseudo_labels"
        folder = self.ctx.recipe.data.stream("target").pseudo_labels
        if not folder:
            raise ConfigError(f"{key} is not set: method sait_segment with use_ssl: true "
                              "trains on target pseudo-labels (edgeseg derive pseudo-label CKPT "
                              "--data TARGET -o DIR --threshold 0.9); set it, or set "
                              "method.params.use_ssl: false")
        try:
            derived = read_manifest(folder, "pseudo-label").get("threshold")
        except DeriveError:
            return  # the stream reports a missing or unfinished folder with its fix
        threshold = self.params.ssl_threshold
        if derived is not None and float(derived) > threshold:
            raise ConfigError(f"{key}: {folder} was derived with --threshold {derived}, above "
                              f"method.params.ssl_threshold {threshold}: pixels in between are "
                              f"already ignored; derive with --threshold {threshold} or set "
                              f"ssl_threshold: {derived}")

    def _check_crops(self) -> None:
        """M sees both streams stacked (one crop for both); D_seg needs sides of at least
        2^(its stride-2 convs)."""
        d = self.ctx.recipe.data
        crops = {}
        for stream in self.streams:
            own = d.streams.get(stream)
            key = f"data.streams.{stream}.crop" if own and own.crop else "data.crop"
            crop = d.stream(stream).crop
            smallest = 2 ** sum(s == 2 for s in self.params.disc_strides)
            if self.params.use_adv and min(crop) < smallest:
                raise ConfigError(f"{key} {crop[0]}x{crop[1]}: D_seg (strides "
                                  f"{list(self.params.disc_strides)}) needs sides >= {smallest}")
            crops[stream] = tuple(crop)
        if crops["source"] != crops["target"]:
            raise ConfigError(f"data.streams.*.crop: sait_segment stacks the source and target "
                              f"batches, so both streams need the same crop, got {crops}")

    def deploy(self) -> Deploy:
        return Deploy("model")

    def set_model_mode(self) -> None:
        if self.params.freeze_bn:
            freeze_batchnorm(self.net("model"))

    # --- losses ------------------------------------------------------------------------
    def segmenter_losses(self, batch: dict[str, dict[str, torch.Tensor]]
                         ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The unweighted terms of Eq. 7 this configuration uses, by log name, and the
        detached softmax maps D_seg's step needs (``src``, ``tgt``; empty without L_adv)."""
        p = self.params
        src, tgt = batch["source"], batch["target"]
        x = torch.cat([src["image"], tgt["image"]]) if self.uses_target else src["image"]
        n_src = src["image"].shape[0]
        with self.autocast():
            logits = self.net("model")(x)
        logits_src, logits_tgt = logits[:n_src], logits[n_src:]
        losses = {"loss_seg": segmentation_loss(logits_src, src["label"])}
        if p.use_ssl:
            losses["loss_ssl"] = ssl_loss(logits_tgt, tgt["label"], tgt["confidence"],
                                          p.ssl_threshold)
        maps: dict[str, torch.Tensor] = {}
        if p.use_adv:
            prob_tgt = torch.softmax(logits_tgt.float(), 1)
            with self.autocast():
                score = self.net("disc_seg")(prob_tgt)
            losses["loss_adv"] = self.gan(score, real=False)  # target maps -> "source"
            maps = {"src": torch.softmax(logits_src.detach().float(), 1),
                    "tgt": prob_tgt.detach()}
        return losses, maps

    def discriminator_loss(self, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        """D_seg's side of Eq. 11 on detached maps: 1/2 (source -> 0) + 1/2 (target -> 1);
        one forward of D_seg on both batches stacked."""
        n_src = maps["src"].shape[0]
        with self.autocast():
            score = self.net("disc_seg")(torch.cat([maps["src"].detach(), maps["tgt"].detach()]))
        return self.gan.discriminator(score[n_src:], score[:n_src])

    def ssl_fraction(self, batch: dict[str, dict[str, torch.Tensor]]) -> float:
        """Share of the target batch's pixels that L_SSL trains on."""
        tgt = batch["target"]
        return ssl_mask(tgt["label"], tgt["confidence"], self.params.ssl_threshold
                        ).float().mean().item()

    # --- the step ------------------------------------------------------------------------
    def train_step(self, batch: dict[str, dict[str, torch.Tensor]], iteration: int
                   ) -> dict[str, float]:
        del iteration
        p = self.params
        self.zero_grad()
        self.set_model_mode()
        if p.use_adv:
            set_requires_grad(self.net("disc_seg"), False)
        losses, maps = self.segmenter_losses(batch)
        total = sum(self.weights[k] * v for k, v in losses.items())
        self.backward(total)
        self.step("model")
        logs = {k: v.item() for k, v in losses.items()}
        logs["loss_total"] = float(total.item())
        if p.use_ssl:
            logs["ssl_fraction"] = self.ssl_fraction(batch)
        if p.use_adv:
            set_requires_grad(self.net("disc_seg"), True)
            disc = self.discriminator_loss(maps)
            self.backward(disc)
            self.step("disc_seg")
            logs["loss_disc_seg"] = disc.item()
        return logs


__all__ = ["SOURCE_LABEL", "TARGET_LABEL", "Params", "SaitSegment", "segmentation_loss",
           "ssl_loss", "ssl_mask"]
