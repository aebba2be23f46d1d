"""Source-only supervised training: the baseline every UDA method must beat."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from edgeseg.labels import IGNORE_INDEX
from edgeseg.train.methods.base import Method, build_optimizer, freeze_batchnorm, recipe_schedule


@dataclass(frozen=True)
class Params:
    #: keep BatchNorm statistics fixed (fine-tuning at batch size 1, the control run of
    #: batch-1 UDA methods that do the same)
    freeze_bn: bool = False


class SourceOnly(Method):
    name = "source_only"
    Params = Params
    streams = ("source",)

    def build(self) -> None:
        r = self.ctx.recipe
        groups = self.ctx.model.param_groups(r.optim.lr, r.optim.head_lr_mult)
        self.add_optimizer("model", build_optimizer(r.optim, groups),
                           recipe_schedule(r.optim, r.train.iterations))

    def train_step(self, batch: dict[str, dict[str, torch.Tensor]], iteration: int) -> dict[str, float]:
        src = batch["source"]
        if self.params.freeze_bn:
            freeze_batchnorm(self.net("model"))
        with self.autocast():
            pred_src = self.net("model")(src["image"])
            loss_seg_src = F.cross_entropy(pred_src.float(), src["label"], ignore_index=IGNORE_INDEX)
        self.backward(loss_seg_src)
        self.step("model")
        return {"loss_seg_src": loss_seg_src.item()}
