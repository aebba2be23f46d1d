"""Recipes: strict typing, unknown keys, overrides, and every shipped recipe loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeseg.config import ConfigError, Recipe, apply_overrides, from_dict, load_recipe, to_dict
from tests.conftest import REPO

BASE = {"name": "x", "data": {"source": "synthetic:/tmp/s:day_train"}}


@pytest.mark.parametrize("path", sorted((REPO / "train").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_load(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    assert from_dict(Recipe, to_dict(recipe)) == recipe  # the saved form reloads identically
    # the method's own blocks load too: its params, optimiser groups and stream names
    from edgeseg.train.methods import get_method

    method = get_method(recipe.method.name)
    from_dict(method.Params, recipe.method.params, "method.params")
    assert set(recipe.method.optimizers) <= set(method.optimizer_defaults)
    assert set(recipe.data.streams) <= set(method.streams)


def test_unknown_key_names_its_path() -> None:
    with pytest.raises(ConfigError, match=r"optim\.lrr.*valid keys of optim"):
        from_dict(Recipe, {**BASE, "optim": {"lrr": 0.1}})


@pytest.mark.parametrize(
    ("section", "value", "message"),
    [
        ({"train": {"iterations": "many"}}, None, r"train\.iterations: expected an integer"),
        ({"train": {"amp": "yes"}}, None, r"train\.amp: expected true/false"),
        ({"model": {"output_stride": 32}}, None, r"model\.output_stride: 32 is not one of"),
        ({"data": {**BASE["data"], "crop": [256]}}, None, r"data\.crop: expected 2 items"),
        ({"model": {"head": "deeplabv2"}}, None, r"deeplabv2 head is built for ResNet"),
    ],
)
def test_type_and_value_errors(section: dict, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(Recipe, {**BASE, **section})


def test_missing_required_key() -> None:
    with pytest.raises(ConfigError, match="data: required key is missing"):
        from_dict(Recipe, {"name": "x"})


def test_overrides_parse_yaml_values_and_are_validated(tmp_path: Path) -> None:
    data = apply_overrides({"optim": {"lr": 0.1}}, ["optim.lr=0.001", "train.amp=false",
                                                     "data.crop=[64, 128]"])
    assert data == {"optim": {"lr": 1e-3}, "train": {"amp": False}, "data": {"crop": [64, 128]}}
    path = tmp_path / "r.yaml"
    path.write_text("name: r\ndata:\n  source: synthetic:/tmp/s:day_train\n")
    recipe = load_recipe(path, ["optim.lr=1e-3", "data.crop=[64,128]"])
    assert recipe.optim.lr == 1e-3 and recipe.data.crop == (64, 128)
    with pytest.raises(ConfigError, match=str(path)):
        load_recipe(path, ["optim.nesterov=true"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["optim.lr"])


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_recipe(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("override", "allowed"),
    [
        ("train.iterations=0", ">= 1"),
        ("train.log_every=0", ">= 1"),
        ("train.ckpt_every=-1", ">= 0"),
        ("train.val_every=-500", ">= 0"),
        ("train.threads=-1", ">= 0"),
        ("train.val_max_images=-3", ">= 0"),
        ("data.batch_size=0", ">= 1"),
        ("data.val_batch_size=0", ">= 1"),
        ("data.workers=-2", ">= 0"),
        ("data.crop=[0, 64]", ">= 16"),
        ("data.resize=[8, 64]", ">= 16"),
        ("data.std=[0.2, 0.0, 0.2]", "> 0"),
        ("data.color_jitter=2", "<= 1"),
        ("model.aspp_channels=0", ">= 1"),
        ("model.num_classes=300", "<= 255"),
        ("optim.lr=-0.1", ">= 0"),
        ("optim.momentum=1.0", "< 1"),
        ("optim.warmup_iters=-1", ">= 0"),
        ("seed=-1", ">= 0"),
    ],
)
def test_numeric_ranges_name_key_value_and_range(tmp_path: Path, override: str,
                                                 allowed: str) -> None:
    """Through the real recipe loader and --set: a bad number fails at load, in one line."""
    path = tmp_path / "r.yaml"
    path.write_text("name: r\ndata:\n  source: synthetic:/tmp/s:day_train\n")
    key = override.split("=")[0]
    with pytest.raises(ConfigError) as err:
        load_recipe(path, [override])
    msg = str(err.value)
    assert msg.startswith(f"{path}: {key}=") and "out of range" in msg and allowed in msg, msg
    assert "\n" not in msg


def test_step_schedule_needs_a_step_size(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("name: r\ndata:\n  source: synthetic:/tmp/s:day_train\n")
    with pytest.raises(ConfigError, match=r"optim\.step_size=0 is out of range; allowed: >= 1"):
        load_recipe(path, ["optim.schedule=step"])
    assert load_recipe(path, ["optim.schedule=step", "optim.step_size=100"]).optim.step_size == 100


def test_output_dir_placeholders(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("name: r\ndata:\n  source: synthetic:/tmp/s:day_train\n")
    with pytest.raises(ConfigError, match=r"output_dir='runs/\{run\}': only \{name\}"):
        load_recipe(path, ["output_dir=runs/{run}"])
