"""``method: domain_extension``: stage 2 of unsupervised domain extension, a segmenter trained
on day images, their night translations and unlabelled night images with a mean teacher
(../shared/papers/domain-extension.txt, Sec. 3.3 and 4.2). The point is *extension*:
night accuracy rises while day accuracy stays, so recipes validate on both.

Streams: ``source`` (labelled day x_s, y_s) and ``target`` (unlabelled night x_t). The
stage-1 translator G_S->T is a frozen network ``translator`` started from the EMA
generator of a ``cyclegan_fl`` run (``method.init_from.translator: {checkpoint: ...,
network: gen_s2t_ema}``); each source crop is translated on the fly, so a day crop and
its translation are the same pixels (Eq. 15 compares them; an offline
``edgeseg derive translate`` copy is the same translator on whole frames).

Networks: the student (the trainer's ``model``: Adam, LR 1e-4 in the recipes' optim block)
and ``teacher``, its EMA (decay 0.999, Eq. 13), which validation, ``best.pt`` and export
use (``deploy()``: "we report results of our teacher model"). Without SSL the EMA is still
kept and deployed, as in the paper.

Losses:

- ``loss_seg_day`` + ``loss_seg_trans`` = L_sup (Eq. 12): cross-entropy of the student on
  x_s and on G_S->T(x_s), both against y_s, summed; the student runs without dropout
  here ("no dropout ... when the student receives an image for the supervised loss");
- ``loss_ssl_night`` and ``loss_ssl_trans`` = the two terms of L_ssl (Eq. 15,
  `edgeseg.train.nets.losses.confidence_masked_mse`): teacher on A_w(x_t) vs student on
  A_s(x_t), and teacher on x_s vs student on G_S->T(x_s); softmax outputs, squared
  error, pixels masked where the teacher's top probability is below rho (Eq. 14). The
  student runs with dropout for these terms only; the teacher gets no gradient.
- total (Eq. 16) = L_sup + lambda_ssl (loss_ssl_night + loss_ssl_trans), no SSL before
  ``warmup_iters`` (paper: 10K of 50K).

Ramps (Sec. 4.2): rho 0.5 -> 0.9 linearly over the run; lambda_ssl 50 -> 100, linearly
from the end of the warm-up to the last iteration ("an initial value of 50 ... until it
has doubled at the end of the training": initial = when SSL starts). Both are recipe
values: a number or ``{start, end, begin, until}``; unset, they follow the run length.

Augmentations (Sec. 3.3: "Gaussian noise and color jittering"; the paper gives no
strengths). A_w is the target stream's own augmentation (crop, scale, flip): the batch
as loaded. A_s = A_w followed, per image, by brightness, contrast and saturation factors
drawn from [1 - jitter, 1 + jitter] and Gaussian noise of std ``noise_std`` on the 0..1
intensity scale, clipped to [0, 1]: photometric only, so teacher and student see the
same pixels. Dropout: the model's own dropout layers (DeepLabv3+: one, after the ASPP
projection) at ``student_dropout`` (the paper gives no rate; DeepLabv2-VGG16's fc
dropout is 0.5, our layer's training default is 0.1, which we keep); a model without
dropout layers needs ``student_dropout: 0``.

Table 1 rows as switches (same pipeline, budget and EMA): baseline = ``translated_loss:
false, ssl: false``; "Day2Night" (translations only) = ``day_loss: false, ssl: false``
with a CycleGAN (``lambda_feature: 0``) or CycleGAN+FL translator; "Day2Night + Daytime" =
``ssl: false``; full = defaults.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgeseg.config import ConfigError
from edgeseg.labels import IGNORE_INDEX
from edgeseg.models.compose import Deploy
from edgeseg.train.distributed import unwrap
from edgeseg.train.methods.base import Method
from edgeseg.train.nets.cyclegan import ImageRange
from edgeseg.train.nets.generator import Upsample
from edgeseg.train.nets.losses import confidence_masked_mse
from edgeseg.train.nets.registry import net_spec
from edgeseg.train.schedule import Ramp, value_at


@dataclass(frozen=True)
class Params:
    ema_decay: float = 0.999  # Sec. 4.2, the teacher
    day_loss: bool = True  # Eq. 12, CE on x_s
    translated_loss: bool = True  # Eq. 12, CE on G_S->T(x_s)
    ssl: bool = True  # Eq. 15-16
    warmup_iters: int = 10_000  # Sec. 4.2: no SSL for 10K of 50K iterations
    lambda_ssl: float | Ramp | None = None  # None: 50 -> 100 from warmup_iters to the end
    rho: float | Ramp | None = None  # None: 0.5 -> 0.9 over the run
    student_dropout: float = 0.1  # rate of the model's dropout layers, consistency only
    noise_std: float = 0.05  # A_s: Gaussian noise std on the 0..1 scale (not given)
    jitter: float = 0.3  # A_s: brightness/contrast/saturation in [1 - j, 1 + j] (not given)
    translator_ngf: int = 64  # must match the stage-1 generator (checked on init_from)
    translator_blocks: int = 9
    translator_upsample: Upsample = "bilinear"

    def validate(self) -> None:
        if not (self.day_loss or self.translated_loss):
            raise ValueError("day_loss and translated_loss are both false: no supervised loss")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay {self.ema_decay}: need 0 <= decay < 1")
        if self.warmup_iters < 0:
            raise ValueError("warmup_iters must be >= 0")
        for key in ("lambda_ssl", "rho"):
            value = getattr(self, key)
            if isinstance(value, Ramp):
                value.validate()
        if not 0.0 <= self.student_dropout < 1.0:
            raise ValueError(f"student_dropout {self.student_dropout}: need 0 <= p < 1")
        if self.noise_std < 0 or not 0.0 <= self.jitter < 1.0:
            raise ValueError("noise_std must be >= 0 and jitter in [0, 1)")


def supervised_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One term of Eq. 12: pixel-mean cross-entropy, ignore label excluded (fp32)."""
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of RGB images in [0, 1], shape (N, 1, H, W)."""
    r, g, b = x.unbind(1)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def strong_photometric(x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
                       saturation: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """A_s of RGB images in [0, 1] with the given per-image factors (N,) and noise (like
    x): brightness scales, contrast moves each image about its mean luma, saturation about
    each pixel's luma (torchvision's ColorJitter order and formulas), then noise is added
    and the result clipped to [0, 1]."""
    view = (-1, 1, 1, 1)
    x = (x * brightness.view(view)).clamp(0, 1)
    mean = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (mean + (x - mean) * contrast.view(view)).clamp(0, 1)
    grey = _grey(x)
    x = (grey + (x - grey) * saturation.view(view)).clamp(0, 1)
    return (x + noise).clamp(0, 1)


class DomainExtension(Method):
    name = "domain_extension"
    Params = Params
    streams = ("source", "target")
    labelled_streams = ("source",)

    def build(self) -> None:
        p, r = self.params, self.ctx.recipe
        self.images = ImageRange(r.data.mean, r.data.std, self.ctx.device)
        self.optimizer_for("model", "model",
                           self.ctx.model.param_groups(r.optim.lr, r.optim.head_lr_mult))
        self.add_ema("teacher", "model", p.ema_decay)
        self.uses_translator = p.translated_loss or p.ssl
        if self.uses_translator:
            if "translator" not in r.method.init_from:
                raise ConfigError(
                    "method.init_from.translator is not set: the translated-day terms need "
                    "the stage-1 translator, e.g. {checkpoint: runs/cyclegan_fl_.../last.pt, "
                    "network: gen_s2t_ema} (or set translated_loss and ssl false)")
            self.add_network("translator", net_spec(
                "resnet_generator", "translator", ngf=p.translator_ngf,
                n_blocks=p.translator_blocks, upsample=p.translator_upsample))
            self.freeze("translator")
        self.dropouts = [m for m in unwrap(self.ctx.model).modules()
                         if isinstance(m, nn.modules.dropout._DropoutNd)]
        if p.ssl and p.student_dropout > 0 and not self.dropouts:
            raise ConfigError("method.params.student_dropout > 0 but the model has no dropout "
                              "layer; set student_dropout: 0")
        for m in self.dropouts:
            m.p = p.student_dropout
        last = r.train.iterations - 1  # iterations are 0-based: the end values apply here
        self.lambda_ssl = p.lambda_ssl if p.lambda_ssl is not None else Ramp(
            50.0, 100.0, p.warmup_iters, max(p.warmup_iters, last))
        self.rho = p.rho if p.rho is not None else Ramp(0.5, 0.9, 0, last)

    def deploy(self) -> Deploy:
        return Deploy(segmenter="teacher")

    # --- pieces ----------------------------------------------------------------------
    @contextlib.contextmanager
    def student_dropout(self, active: bool) -> Iterator[None]:
        """The student's dropout layers on (consistency terms) or off (supervised terms);
        the rest of the student stays in train mode."""
        before = [m.training for m in self.dropouts]
        for m in self.dropouts:
            m.train(active)
        try:
            yield
        finally:
            for m, mode in zip(self.dropouts, before):
                m.train(mode)

    @torch.no_grad()
    def translate(self, x_s: torch.Tensor) -> torch.Tensor:
        """G_S->T(x_s) in the trainer's normalisation (the frozen stage-1 translator)."""
        return self.images.to_seg(self.net("translator")(self.images.to_gan(x_s)))

    @torch.no_grad()
    def strong_augment(self, x: torch.Tensor) -> torch.Tensor:
        """A_s of a trainer batch: random per-image factors and noise (the global torch
        RNG, which checkpoints restore)."""
        n, j = x.shape[0], self.params.jitter

        def factors() -> torch.Tensor:
            return 1.0 + (torch.rand(n, device=x.device) * 2.0 - 1.0) * j

        unit = self.images.to_unit(x.float()).clamp(0, 1)
        noise = torch.randn_like(unit) * self.params.noise_std
        out = strong_photometric(unit, factors(), factors(), factors(), noise)
        return (out - self.images.mean) / self.images.std

    def ssl_active(self, iteration: int) -> bool:
        return self.params.ssl and iteration >= self.params.warmup_iters

    def losses(self, batch: dict[str, dict[str, torch.Tensor]], iteration: int
               ) -> dict[str, torch.Tensor]:
        """The unweighted terms of Eq. 12 and Eq. 15 that this configuration uses."""
        p = self.params
        x_s, y_s = batch["source"]["image"], batch["source"]["label"]
        trans = self.translate(x_s) if self.uses_translator else None
        sup = ([x_s] if p.day_loss else []) + ([trans] if p.translated_loss else [])
        out: dict[str, torch.Tensor] = {}
        with self.autocast():
            with self.student_dropout(False):
                logits = self.net("model")(torch.cat(sup)).split(x_s.shape[0])
            names = (["loss_seg_day"] if p.day_loss else []) + (
                ["loss_seg_trans"] if p.translated_loss else [])
            for name, lg in zip(names, logits):
                out[name] = supervised_loss(lg, y_s)
            if self.ssl_active(iteration):
                x_t = batch["target"]["image"]
                n_t = x_t.shape[0]
                with torch.no_grad():
                    t_night, t_day = self.net("teacher")(torch.cat([x_t, x_s])).split(
                        [n_t, x_s.shape[0]])
                with self.student_dropout(True):
                    s_night, s_trans = self.net("model")(
                        torch.cat([self.strong_augment(x_t), trans])).split([n_t, x_s.shape[0]])
                rho = value_at(self.rho, iteration)
                out["loss_ssl_night"] = confidence_masked_mse(s_night, t_night, rho)
                out["loss_ssl_trans"] = confidence_masked_mse(s_trans, t_day, rho)
        return out

    def train_step(self, batch: dict[str, dict[str, torch.Tensor]], iteration: int
                   ) -> dict[str, float]:
        self.zero_grad()
        losses = self.losses(batch, iteration)
        weight = value_at(self.lambda_ssl, iteration)
        total = sum((weight if k.startswith("loss_ssl") else 1.0) * v
                    for k, v in losses.items())
        self.backward(total)
        self.step("model")
        self.update_ema("teacher")
        logs = {k: v.item() for k, v in losses.items()}
        logs["loss_total"] = float(total.item())
        if self.ssl_active(iteration):
            logs["lambda_ssl"] = weight
            logs["rho"] = value_at(self.rho, iteration)
        return logs


__all__ = ["DomainExtension", "Params", "strong_photometric", "supervised_loss"]
