"""The method interface: optimiser blocks, clipping, schedules and ramps, network specs,
the deployed graph (validation, best.pt, load_model), and networks started from other runs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeseg.config import ConfigError, OptimConfig, Recipe, from_dict
from edgeseg.evaluate import evaluate, metrics_of, open_eval_dataset
from edgeseg.labels import get_label_space
from edgeseg.models import build_model
from edgeseg.models.compose import Deploy, DeployedSegmenter, log_weights
from edgeseg.train import checkpoint as ckpt_io
from edgeseg.train.distributed import DistInfo
from edgeseg.train.methods import METHODS, MethodContext
from edgeseg.train.methods.base import Method, build_optimizer, segmenter_spec
from edgeseg.train.nets.registry import NetSpec, build_net, net_spec, register_net
from edgeseg.train.predict import TorchPredictor
from edgeseg.train.schedule import Ramp, lr_factor, value_at
from edgeseg.train.trainer import Trainer
from tests.conftest import tiny_recipe


class GainPrenet(nn.Module):
    """A prenet whose effect is known: y = x * gain + shift per channel."""

    def __init__(self, gain: float = 1.0) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.full((1, 3, 1, 1), gain))
        self.shift = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain + self.shift


@register_net("test_gain_prenet")
def build_gain_prenet(gain: float = 1.0) -> nn.Module:
    return GainPrenet(gain)


@dataclass(frozen=True)
class DeployParams:
    bias_class: int = -1  # >= 0: deploy a large logit bias towards this class
    clip: float = 0.0


class TinyDeploy(Method):
    """Deploys prenet -> EMA-like teacher (a frozen copy of M) -> class bias."""

    name = "tiny_deploy"
    Params = DeployParams
    optimizer_defaults = {"aux": OptimConfig(name="sgd", lr=1.0, momentum=0.0,
                                             weight_decay=0.0, schedule="constant")}

    def build(self) -> None:
        self.add_network("prenet", net_spec("test_gain_prenet", "prenet", gain=0.5))
        self.add_ema("teacher", "model", decay=0.5)
        self.optimizer_for("model", "model", self.ctx.model.parameters())
        self.optimizer_for("prenet", "aux", self.networks["prenet"].parameters())

    def deploy(self) -> Deploy:
        bias = None
        if self.params.bias_class >= 0:
            weights = [1.0] * self.ctx.model.num_classes
            weights[self.params.bias_class] = 1e6
            bias = log_weights(weights)
        return Deploy("teacher", ("prenet",), bias)

    def train_step(self, batch: dict, iteration: int) -> dict[str, float]:
        src = batch["source"]
        x = self.net("prenet")(src["image"])
        loss = F.cross_entropy(self.net("model")(x), src["label"], ignore_index=255)
        self.backward(loss)
        self.step("model", "prenet")
        self.update_ema("teacher")
        return {"loss": loss.item()}


@pytest.fixture()
def tiny_deploy(monkeypatch: pytest.MonkeyPatch) -> type[Method]:
    monkeypatch.setitem(METHODS, TinyDeploy.name, TinyDeploy)
    return TinyDeploy


def _ctx(recipe: dict) -> MethodContext:
    torch.manual_seed(0)
    r = from_dict(Recipe, recipe)
    return MethodContext(r, build_model(r.model), torch.device("cpu"), DistInfo(), False)


def _deploy_method(tmp_path: Path, **method: Any) -> TinyDeploy:
    rec = tiny_recipe(tmp_path, tmp_path)
    rec["method"] = {"name": "tiny_deploy", **method}
    ctx = _ctx(rec)
    return TinyDeploy(ctx, from_dict(DeployParams, ctx.recipe.method.params))


# --- schedules, ramps, optimiser blocks ----------------------------------------------


def test_linear_schedule_holds_then_decays_to_zero() -> None:
    f = [lr_factor(it, 100, "linear", decay_start=0.5) for it in (0, 49, 50, 75, 99, 100)]
    assert f == [1.0, 1.0, 1.0, 0.5, pytest.approx(0.02), 0.0]
    assert lr_factor(30, 100, "linear", decay_start=0.0) == pytest.approx(0.7)


def test_ramp_values_by_hand() -> None:
    r = Ramp(start=0.0, end=2.0, begin=10, until=30)
    assert [r.at(i) for i in (0, 10, 15, 20, 30, 99)] == [0.0, 0.0, 0.5, 1.0, 2.0, 2.0]
    assert value_at(0.3, 5) == 0.3 and value_at(r, 25) == 1.5
    with pytest.raises(ConfigError, match="begin"):
        from_dict(Ramp, {"begin": 5, "until": 4}, "w")


def test_no_weight_decay_on_biases_and_norm_weights() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1.0)
    cfg = from_dict(OptimConfig, {"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 1.0,
                                  "decay_norm_and_bias": False})
    opt = build_optimizer(cfg, net.parameters())
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradient: only weight decay moves a tensor, p -= lr * wd * p
    conv, bn = net[0], net[1]
    assert torch.allclose(conv.weight, torch.full_like(conv.weight, 0.9))
    for p in (conv.bias, bn.weight, bn.bias):
        assert torch.equal(p, torch.ones_like(p))
    # the default decays everything (what the committed recipes were measured with)
    opt = build_optimizer(from_dict(OptimConfig, {"name": "sgd", "lr": 0.1, "momentum": 0.0,
                                                  "weight_decay": 1.0}), net.parameters())
    opt.step()
    assert torch.allclose(bn.bias, torch.full_like(bn.bias, 0.9))


def test_optimizer_blocks_merge_the_recipe_over_the_method_defaults(tmp_path: Path) -> None:
    m = _deploy_method(tmp_path, optimizers={"aux": {"lr": 0.25, "schedule": "linear",
                                                     "decay_start": 0.5}})
    cfg = m.optim_config("aux")
    assert (cfg.name, cfg.lr, cfg.momentum, cfg.schedule) == ("sgd", 0.25, 0.0, "linear")
    assert m.optimizers["prenet"].param_groups[0]["lr"] == 0.25
    assert m.schedules["prenet"](3) == pytest.approx(0.5)  # 4 iterations, decay from 2
    assert m.optim_config("model") is m.ctx.recipe.optim
    with pytest.raises(ConfigError, match=r"method.optimizers: unknown group\(s\) \['gan'\].*aux"):
        _deploy_method(tmp_path, optimizers={"gan": {"lr": 1.0}})
    with pytest.raises(ConfigError, match="method.optimizers.aux.lr"):
        _deploy_method(tmp_path, optimizers={"aux": {"lr": -1.0}})


def test_gradient_clipping_bounds_the_step_of_that_optimiser_only(tmp_path: Path) -> None:
    m = _deploy_method(tmp_path, optimizers={"aux": {"clip_grad_norm": 0.5}})
    prenet = m.networks["prenet"]
    before = [p.detach().clone() for p in prenet.parameters()]
    for p in prenet.parameters():
        p.grad = torch.full_like(p, 10.0)  # norm sqrt(6) * 10
    m.step("prenet")
    delta = torch.cat([(p.detach() - b).flatten() for p, b in zip(prenet.parameters(), before)])
    assert delta.norm().item() == pytest.approx(0.5, rel=1e-5)  # SGD lr 1: step = clipped grad
    assert m.clip_norms == {"model": 0.0, "prenet": 0.5}


# --- specs and the deployed graph ----------------------------------------------------


def test_specs_rebuild_every_network_and_deploy_is_checked(tmp_path: Path) -> None:
    m = _deploy_method(tmp_path)
    assert m.specs["model"] == segmenter_spec(m.ctx.recipe) and m.specs["model"].role == "segmenter"
    assert set(m.exportable()) == {"model", "prenet", "teacher"}
    rebuilt = build_net(NetSpec.from_dict(m.specs["prenet"].to_dict()))
    assert isinstance(rebuilt, GainPrenet) and (rebuilt.gain == 0.5).all()

    class BadDeploy(TinyDeploy):
        def deploy(self) -> Deploy:
            return Deploy("model", ("nothing",))

    class PrenetAsSegmenter(TinyDeploy):
        def deploy(self) -> Deploy:
            return Deploy("prenet")

    rec = tiny_recipe(tmp_path, tmp_path)
    rec["method"] = {"name": "tiny_deploy"}
    with pytest.raises(ValueError, match="'nothing'"):
        BadDeploy(_ctx(rec), DeployParams())
    with pytest.raises(ValueError, match="prenet.*prenet net"):
        PrenetAsSegmenter(_ctx(rec), DeployParams())


def test_deployed_graph_is_prenet_then_teacher_then_bias(tmp_path: Path) -> None:
    m = _deploy_method(tmp_path, params={"bias_class": 3})
    x = torch.randn(2, 3, 32, 48)
    teacher = m.networks["teacher"].eval()
    with torch.no_grad():
        want = teacher(x * 0.5)
        want[:, 3] += math.log(1e6)
        got = m.deployed().eval()(x)
    assert torch.allclose(got, want, atol=1e-5)
    assert (got.argmax(1) == 3).all()
    assert not m.trainable["teacher"]
    m.train_mode()
    assert m.networks["model"].training and not m.networks["teacher"].training


def test_ema_teacher_follows_the_student_by_hand(tmp_path: Path) -> None:
    m = _deploy_method(tmp_path)
    student, teacher = m.networks["model"], m.networks["teacher"]
    assert m.specs["teacher"] == m.specs["model"] and not m.trainable["teacher"]
    assert all(not p.requires_grad for p in teacher.parameters())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    batch = {"source": {"image": torch.randn(2, 3, 32, 48, generator=g),
                        "label": torch.randint(0, 19, (2, 32, 48), generator=g)}}
    m.train_step(batch, 0)
    after_student = student.state_dict()
    name = "backbone.features.0.0.weight"
    assert not torch.equal(after_student[name], before[name])  # the student moved
    want = 0.5 * before[name] + 0.5 * after_student[name]  # decay 0.5
    assert torch.allclose(teacher.state_dict()[name], want, atol=1e-7)
    bn = "backbone.features.0.1.running_mean"
    assert torch.equal(teacher.state_dict()[bn], after_student[bn])  # buffers copied


def test_validation_best_pt_and_load_model_use_the_deployed_graph(
        tiny_synth: Path, tmp_path: Path, tiny_deploy: type[Method]) -> None:
    rec = tiny_recipe(tiny_synth, tmp_path, train__iterations=2)
    rec["method"] = {"name": "tiny_deploy", "params": {"bias_class": 10}}  # 10 = sky
    trainer = Trainer(from_dict(Recipe, rec), progress=False)
    assert trainer.run() == 0
    ckpt = ckpt_io.load_checkpoint(tmp_path / "best.pt")
    assert ckpt["deploy"]["segmenter"] == "teacher" and ckpt["deploy"]["pre"] == ["prenet"]
    assert ckpt["networks"]["prenet"] == {"kind": "test_gain_prenet", "args": {"gain": 0.5},
                                          "role": "prenet"}
    model, _ = ckpt_io.load_model(tmp_path / "best.pt")
    assert isinstance(model, DeployedSegmenter)
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        assert (model(x).argmax(1) == 10).all()  # the bias decides every pixel
    # the val score is the deployed graph's: only sky is ever predicted
    space = get_label_space("cityscapes19")
    dataset = open_eval_dataset(rec["data"]["val"][0], space)
    res = evaluate(TorchPredictor(model, ckpt["mean"], ckpt["std"]), dataset, space)
    summary = metrics_of(res.confusion, space)
    assert ckpt["best"]["value"] == pytest.approx(summary.miou)
    assert summary.to_dict()["per_class"]["sky"] > 0
    assert sum(v for k, v in summary.to_dict()["per_class"].items() if k != "sky" and v) == 0


def test_load_model_of_a_checkpoint_without_deploy_is_the_bare_segmenter(
        tiny_checkpoint: Path) -> None:
    ckpt = ckpt_io.load_checkpoint(tiny_checkpoint)
    assert ckpt["deploy"] == Deploy().to_dict()
    model, _ = ckpt_io.load_model(tiny_checkpoint)
    assert not isinstance(model, DeployedSegmenter)
    with pytest.raises(ckpt_io.CheckpointError, match=r"no network 'gen_s2t'.*\['model'\]"):
        ckpt_io.load_network(ckpt, "gen_s2t", tiny_checkpoint)


def test_val_size_scores_frames_resized_like_an_engine(tiny_synth: Path, tmp_path: Path) -> None:
    rec = tiny_recipe(tiny_synth, tmp_path, train__iterations=2)
    rec["train"]["val_size"] = [16, 32]
    trainer = Trainer(from_dict(Recipe, rec), progress=False)
    got = trainer.validate()[rec["data"]["val"][0]]
    space = get_label_space("cityscapes19")
    dataset = open_eval_dataset(rec["data"]["val"][0], space)
    d = trainer.recipe.data
    small = TorchPredictor(trainer.model, d.mean, d.std, size=(16, 32))
    full = TorchPredictor(trainer.model, d.mean, d.std)
    want = metrics_of(evaluate(small, dataset, space).confusion, space).miou
    other = metrics_of(evaluate(full, dataset, space).confusion, space).miou
    assert got == pytest.approx(want) and want != pytest.approx(other)


# --- networks started from another run -------------------------------------------------

UDA = {"ngf": 8, "n_blocks": 1, "ndf": 8, "feat_ndf": 8, "pool_size": 3}


def _uda(synth: Path, out: Path, **method: Any) -> dict:
    rec = tiny_recipe(synth, out, data__crop=[32, 64], train__iterations=2)
    rec["data"]["target"] = f"synthetic:{synth}:night_train"
    rec["method"] = {"name": "mobilenet_uda", "params": dict(UDA), **method}
    return rec


def test_init_from_loads_a_named_network_of_another_run(tiny_synth: Path, tmp_path: Path) -> None:
    first = tmp_path / "stage1"
    assert Trainer(from_dict(Recipe, _uda(tiny_synth, first)), progress=False).run() == 0
    stage1 = ckpt_io.load_checkpoint(first / "last.pt")
    gen, spec = ckpt_io.load_network(stage1, "gen_s2t", first / "last.pt")
    assert spec.role == "translator" and spec.args["ngf"] == 8
    rec = _uda(tiny_synth, tmp_path / "stage2", init_from={
        "gen_s2t": {"checkpoint": str(first / "last.pt")},
        "gen_t2s": {"checkpoint": str(first / "last.pt"), "network": "gen_s2t"}})
    trainer = Trainer(from_dict(Recipe, rec), progress=False)
    for name in ("gen_s2t", "gen_t2s"):
        ours = trainer.method.networks[name].state_dict()
        assert all(torch.equal(ours[k], v) for k, v in gen.state_dict().items()), name
    fresh = Trainer(from_dict(Recipe, _uda(tiny_synth, tmp_path / "fresh")), progress=False)
    assert not torch.equal(fresh.method.networks["gen_t2s"].state_dict()["model.1.weight"],
                           gen.state_dict()["model.1.weight"])


def test_init_from_refuses_another_architecture_and_unknown_names(
        tiny_synth: Path, tmp_path: Path) -> None:
    first = tmp_path / "stage1"
    assert Trainer(from_dict(Recipe, _uda(tiny_synth, first)), progress=False).run() == 0
    init = {"gen_s2t": {"checkpoint": str(first / "last.pt")}}
    rec = _uda(tiny_synth, tmp_path / "b", init_from=init)
    rec["method"]["params"]["ngf"] = 16
    with pytest.raises(ckpt_io.CheckpointError, match=r"built differently: ngf 8 vs 16"):
        Trainer(from_dict(Recipe, rec), progress=False)
    rec = _uda(tiny_synth, tmp_path / "c", init_from={"gen_x": init["gen_s2t"]})
    with pytest.raises(ConfigError, match=r"init_from.gen_x: method mobilenet_uda has no network"):
        Trainer(from_dict(Recipe, rec), progress=False)
    rec = _uda(tiny_synth, tmp_path / "d", init_from={
        "gen_s2t": {"checkpoint": str(first / "last.pt"), "network": "nope"}})
    with pytest.raises(ckpt_io.CheckpointError, match="has no network 'nope'"):
        Trainer(from_dict(Recipe, rec), progress=False)


def test_runs_saved_before_new_recipe_keys_still_resume(tiny_synth: Path, tmp_path: Path) -> None:
    rec = _uda(tiny_synth, tmp_path)
    assert Trainer(from_dict(Recipe, rec), progress=False).run(until=1) == 0
    ckpt = ckpt_io.load_checkpoint(tmp_path / "last.pt")
    for section, key in (("data", "streams"), ("method", "optimizers"), ("method", "init_from"),
                         ("train", "val_size"), ("optim", "clip_grad_norm")):
        del ckpt["recipe"][section][key]  # what a run of the previous version saved
    ckpt_io.save_checkpoint(tmp_path / "last.pt", ckpt)
    trainer = Trainer(from_dict(Recipe, rec), resume=str(tmp_path / "last.pt"), progress=False)
    assert trainer.iteration == 1 and trainer.run() == 0


class TranslatorFirst(TinyDeploy):
    """A fixed segmenter behind a translator (the shape of test-time translation methods)."""

    name = "tiny_translate"

    def build(self) -> None:
        self.add_network("gen", net_spec("resnet_generator", "translator", ngf=4, n_blocks=0))
        self.freeze("model")
        self.optimizer_for("gen", "aux", self.networks["gen"].parameters())

    def deploy(self) -> Deploy:
        return Deploy("model", ("gen",))

    def train_step(self, batch: dict, iteration: int) -> dict[str, float]:
        loss = self.net("gen")(batch["source"]["image"]).abs().mean()
        self.backward(loss)
        self.step("gen")
        return {"loss": loss.item()}


def test_a_translator_in_front_of_a_frozen_segmenter(
        tiny_synth: Path, tiny_checkpoint: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(METHODS, TranslatorFirst.name, TranslatorFirst)
    rec = tiny_recipe(tiny_synth, tmp_path, train__iterations=2)
    rec["method"] = {"name": "tiny_translate"}
    rec["model"]["init_from"] = str(tiny_checkpoint)  # a trained segmenter: logits of size
    trainer = Trainer(from_dict(Recipe, rec), progress=False)
    m = trainer.method
    frozen = {k: v.clone() for k, v in m.networks["model"].state_dict().items()}
    assert not m.trainable["model"] and "model" not in m.optimizers
    assert trainer.run() == 0
    assert all(torch.equal(frozen[k], v) for k, v in m.networks["model"].state_dict().items())
    model, ckpt = ckpt_io.load_model(tmp_path / "last.pt")
    mean = torch.tensor(ckpt["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(ckpt["std"]).view(1, 3, 1, 1)
    gen = ckpt_io.load_network(ckpt, "gen", tmp_path / "last.pt")[0]
    seg = ckpt_io.load_segmenter(ckpt, tmp_path / "last.pt")
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():  # normalised -> [-1, 1] -> G -> back -> segmenter
        translated = ((gen((x * std + mean) * 2 - 1) + 1) / 2 - mean) / std
        got, want, plain = model(x), seg(translated), seg(x)
        scale = want.abs().max().item()
        assert scale > 0.1 and torch.allclose(got, want, atol=1e-5 * scale, rtol=1e-4)
        assert (got - plain).abs().max().item() > 1e-2 * scale  # the translator ran


# --- bf16 autocast on CPU --------------------------------------------------------------

def test_cpu_bf16_probe_reads_the_cpus_own_flags() -> None:
    from edgeseg.train.trainer import cpu_has_native_bf16

    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo to compare the probe with (not Linux)")
    flags = set(next(ln for ln in cpuinfo.read_text().splitlines()
                     if ln.startswith("flags")).split(":", 1)[1].split())
    if "avx512_bf16" in flags:
        assert cpu_has_native_bf16()
    elif not {"amx_tile", "amx_bf16"} & flags:
        assert not cpu_has_native_bf16()
    # AMX alone (no AVX512-BF16): usable only where the kernel grants AMX state; torch asks


def test_cpu_bf16_runs_the_forward_in_bf16_and_the_weights_in_fp32(
        tiny_synth: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train.cpu_bf16: the method's autocast region computes convolutions in bf16 with no
    gradient scaling; the weights, their gradients and the checkpoint stay fp32. Off, the
    same region is fp32. The probe is set both ways so every CPU runs both branches."""
    from edgeseg.train import trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "cpu_has_native_bf16", lambda: True)
    x = torch.randn(1, 3, 16, 16)
    conv = nn.Conv2d(3, 4, 3)
    runs = {}
    for flag in (True, False):
        rec = from_dict(Recipe, tiny_recipe(tiny_synth, tmp_path / str(flag),
                                            train__iterations=2, train__cpu_bf16=flag))
        t = Trainer(rec, progress=False)
        assert t.method.ctx.cpu_bf16 is flag and not t.method.scaler.is_enabled()
        with t.method.autocast():
            assert conv(x).dtype == (torch.bfloat16 if flag else torch.float32)
        before = {k: v.clone() for k, v in t.model.state_dict().items()}
        assert t.run() == 0
        state = ckpt_io.load_checkpoint(tmp_path / str(flag) / "last.pt")["model"]
        assert all(v.dtype == before[k].dtype for k, v in state.items())
        assert any(not torch.equal(v, before[k]) for k, v in state.items() if v.is_floating_point())
        runs[flag] = state
    # the two precisions took different steps from the same start (the flag reached the loss)
    assert any(not torch.equal(runs[True][k], runs[False][k]) for k in runs[True]
               if runs[True][k].is_floating_point())


def test_cpu_bf16_without_native_bf16_is_one_line_before_the_run_folder(
        tiny_synth: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeseg.train import trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "cpu_has_native_bf16", lambda: False)
    rec = from_dict(Recipe, tiny_recipe(tiny_synth, tmp_path / "run", train__cpu_bf16=True))
    with pytest.raises(ConfigError) as err:
        Trainer(rec, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "train.cpu_bf16=false" in msg and "native bf16" in msg
    assert not (tmp_path / "run").exists()
