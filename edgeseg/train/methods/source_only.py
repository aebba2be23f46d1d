"""Source-only supervised training: the baseline every UDA method must beat.

``class_weights: median_frequency`` weights the cross-entropy by median frequency
balancing, w_k = median(freq) / freq_k with SegNet's freq_k (class k's pixels over the
pixels of the source images that contain k), counted once from the source labels: the
thin classes of a street scene (pole, sign, pedestrian, bicyclist) cover a few per cent
of the pixels and a plain cross-entropy trades them away for road and sky.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from edgeseg.data import open_dataset
from edgeseg.labels import IGNORE_INDEX, get_label_space
from edgeseg.train.methods.base import Method, build_optimizer, freeze_batchnorm, recipe_schedule
from edgeseg.train.nets.losses import class_frequencies, median_frequency_weights


@dataclass(frozen=True)
class Params:
    #: keep BatchNorm statistics fixed (fine-tuning at batch size 1, the control run of
    #: batch-1 UDA methods that do the same)
    freeze_bn: bool = False
    #: cross-entropy class weights: none, or median frequency balancing (module docstring)
    class_weights: Literal["none", "median_frequency"] = "none"
    #: source images counted for the frequencies, spread over the split (None: all)
    frequency_images: int | None = None


class SourceOnly(Method):
    name = "source_only"
    Params = Params
    streams = ("source",)

    def build(self) -> None:
        r = self.ctx.recipe
        groups = self.ctx.model.param_groups(r.optim.lr, r.optim.head_lr_mult)
        self.add_optimizer("model", build_optimizer(r.optim, groups),
                           recipe_schedule(r.optim, r.train.iterations))
        self.class_weights: torch.Tensor | None = None
        if self.params.class_weights == "median_frequency":
            space = get_label_space(r.data.label_space)
            freq = class_frequencies(open_dataset(r.data.stream("source").data, space.name),
                                     space.num_classes, max_images=self.params.frequency_images,
                                     per_present_image=True)
            self.class_weights = median_frequency_weights(freq).to(self.ctx.device)

    def run_notes(self) -> dict[str, Any]:
        if self.class_weights is None:
            return {}
        names = get_label_space(self.ctx.recipe.data.label_space).names
        return {"class_weights": {n: round(float(w), 4)
                                  for n, w in zip(names, self.class_weights.tolist())}}

    def train_step(self, batch: dict[str, dict[str, torch.Tensor]], iteration: int) -> dict[str, float]:
        src = batch["source"]
        if self.params.freeze_bn:
            freeze_batchnorm(self.net("model"))
        with self.autocast():
            pred_src = self.net("model")(src["image"])
            loss_seg_src = F.cross_entropy(pred_src.float(), src["label"], weight=self.class_weights,
                                           ignore_index=IGNORE_INDEX)
        self.backward(loss_seg_src)
        self.step("model")
        return {"loss_seg_src": loss_seg_src.item()}
