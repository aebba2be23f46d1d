"""Checks on networks the method tests share: weight snapshots, where gradients went,
checkpoint trees and what each optimiser stepped on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn


def snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def no_grad(net: nn.Module) -> bool:
    return all(p.grad is None or not p.grad.any() for p in net.parameters())


def has_grad(net: nn.Module) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def assert_same_tree(a: Any, b: Any, path: str = "") -> None:
    """Checkpoint trees (tensors, dicts, lists, scalars) equal bit for bit; names the path."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same_tree(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def record_steps(method: Any, monkeypatch: Any) -> dict[str, list[torch.Tensor | None]]:
    """Wrap ``method.step`` so each stepped network's gradients are copied first: what
    each optimiser actually stepped on, for comparison with autograd's gradient."""
    seen: dict[str, list[torch.Tensor | None]] = {}
    step = method.step

    def recording(*names: str) -> None:
        for name in names:
            seen[name] = [None if p.grad is None else p.grad.clone()
                          for p in method.networks[name].parameters()]
        step(*names)

    monkeypatch.setattr(method, "step", recording)
    return seen


def record_phases(method: Any, monkeypatch: Any
                  ) -> list[tuple[tuple[str, ...], set[str], set[str]]]:
    """Wrap ``method.step``: before each step, (the stepped networks, the networks holding
    gradients, the networks with trainable parameters), to check each phase's routing."""
    calls: list[tuple[tuple[str, ...], set[str], set[str]]] = []
    step = method.step

    def recording(*names: str) -> None:
        grads = {n for n, net in method.networks.items()
                 if any(p.grad is not None for p in net.parameters())}
        trainable = {n for n, net in method.networks.items()
                     if any(p.requires_grad for p in net.parameters())}
        calls.append((names, grads, trainable))
        step(*names)

    monkeypatch.setattr(method, "step", recording)
    return calls


def assert_resumes_exactly(recipe: dict, straight: Path) -> tuple[dict, dict]:
    """Train ``recipe`` (its output_dir) for 2 iterations, resume it to the end, and check
    its last.pt equals the uninterrupted run's in ``straight`` (the segmenter and every
    method state); returns both checkpoints (straight, resumed) for further checks."""
    from edgeseg.config import Recipe, from_dict
    from edgeseg.train.checkpoint import load_checkpoint
    from edgeseg.train.trainer import Trainer

    out = Path(recipe["output_dir"])
    assert Trainer(from_dict(Recipe, recipe), progress=False).run(until=2) == 0
    resumed = Trainer(from_dict(Recipe, recipe), resume=str(out / "last.pt"), progress=False)
    assert resumed.iteration == 2 and resumed.run() == 0
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(out / "last.pt")
    assert a["iteration"] == b["iteration"] == recipe["train"]["iterations"]
    assert_same_tree(a["model"], b["model"], "model")
    assert_same_tree(a["method_state"], b["method_state"], "method_state")
    return a, b


DDP_WORKER = """
import sys, torch
from edgeseg.config import Recipe, from_dict
from edgeseg.train.trainer import Trainer
import yaml
trainer = Trainer(from_dict(Recipe, yaml.safe_load(open(sys.argv[1]))), progress=False)
assert trainer.run() == 0
nets = {"model": trainer.model, **trainer.method.networks}
state = {name: {k: v.detach().clone() for k, v in getattr(net, "module", net).state_dict().items()}
         for name, net in nets.items()}
torch.save(state, sys.argv[2] + f"/rank{trainer.dist.rank}.pt")
"""


def run_ddp(recipe: dict, folder: Path, env: dict[str, str]) -> tuple[dict, dict]:
    """Train ``recipe`` with torchrun on 2 CPU processes (gloo); each rank's networks after
    the run (rank 0, rank 1), for checks that DDP kept them in sync."""
    import subprocess
    import sys

    import yaml

    (folder / "r.yaml").write_text(yaml.safe_dump(recipe))
    (folder / "worker.py").write_text(DDP_WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(folder / "worker.py"), str(folder / "r.yaml"), str(folder)]
    res = subprocess.run(cmd, env=env, cwd=folder, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return tuple(torch.load(folder / f"rank{r}.pt") for r in (0, 1))  # type: ignore[return-value]


class ConstantD(nn.Module):
    """A discriminator stand-in: scores every patch ``value`` on a map ``downsample`` times
    smaller than its input, and records its inputs (what each discriminator saw)."""

    def __init__(self, value: float, downsample: int = 1) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.tensor(value))
        self.downsample = downsample
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        h, w = (s // self.downsample for s in x.shape[-2:])
        return self.value * torch.ones(x.shape[0], 1, h, w)
