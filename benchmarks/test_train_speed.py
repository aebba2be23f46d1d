"""Training throughput (images/s) of DeepLabv3+/MobileNet-v2 at 512x256 on this machine.

One SGD step (forward, cross-entropy, backward, update) on a batch of 4 random
frames; images/s = 4 / mean step time. Run with `make bench`.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edgeseg.config import ModelConfig
from edgeseg.models import build_model

BATCH = 4


@pytest.mark.parametrize("separable", [True, False], ids=["separable", "standard"])
def test_train_step_512x256(benchmark, separable: bool) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = build_model(ModelConfig(separable=separable, num_classes=19)).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(BATCH, 3, 256, 512)
    y = torch.randint(0, 19, (BATCH, 256, 512))

    def step() -> float:
        loss = F.cross_entropy(model(x), y, ignore_index=255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    step()  # warm-up
    benchmark.pedantic(step, rounds=3, iterations=1)
    benchmark.extra_info["images_per_sec"] = BATCH / benchmark.stats.stats.mean
    benchmark.extra_info["threads"] = torch.get_num_threads()
