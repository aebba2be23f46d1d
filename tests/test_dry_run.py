"""``edgeseg train RECIPE --dry-run`` on every shipped recipe, and its refusals.

Every ``train/*.yaml`` (found by glob, so a new recipe is covered) must build and step
2 iterations on the generated fixture with nothing written outside the dry run's temp
folder, which is gone afterwards. The recipes run in a pool of one process per core (one
torch start-up each, not one per recipe); one subprocess runs the real command line.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml

from edgeseg.cli import main
from edgeseg.train.dry_run import ITERATIONS, DryRunReport, dry_run
from tests.conftest import REPO, cli_env

RECIPES = sorted((REPO / "train").glob("*.yaml"))

pytestmark = pytest.mark.usefixtures("one_thread")


#: a RAM-backed folder for the dry runs' temp roots where one is big enough for a
#: paper-sized run's checkpoints: they are fsynced, which on a disk is a good part of the
#: time of a dry run (on a tmpfs it costs nothing)
RAM = Path("/dev/shm")


def _temp_parent(tmp_path: Path) -> Path:
    try:
        if shutil.disk_usage(RAM).free > 4 * 2**30:
            return Path(tempfile.mkdtemp(prefix="edgeseg-test-", dir=RAM))
    except OSError:
        pass
    return tmp_path


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    """An empty working folder (relative recipe paths, output_dir runs/{name}, resolve
    there) and an empty temp root; both must be empty again after the test. torch keeps
    its compiler cache in the temp root of whatever imports it first (any training does):
    that is sent elsewhere."""
    parent = _temp_parent(tmp_path)
    cwd, tmp = tmp_path / "cwd", parent / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "torch-cache"))
    try:
        yield cwd, tmp
        assert not list(cwd.iterdir()), "the dry run wrote outside its temp folder"
        assert not list(tmp.iterdir()), "the dry run left its temp folder behind"
    finally:
        if parent != tmp_path:
            shutil.rmtree(parent, ignore_errors=True)


def test_recipes_found() -> None:
    assert len(RECIPES) >= 30, RECIPES


def _dry_run_in_worker(recipe: str, root: str) -> tuple[DryRunReport, dict[str, object]]:
    """One recipe's dry run in a pool process: its own empty working folder and temp root
    under ``root`` (both must be empty again afterwards), one torch thread; returns the
    report and what the test checks beyond it."""
    torch.set_num_threads(1)
    cwd, tmp = Path(root) / "cwd", Path(root) / "tmp"
    cwd.mkdir(parents=True)
    tmp.mkdir()
    os.chdir(cwd)
    tempfile.tempdir = str(tmp)
    # torch keeps its compiler cache in the temp root of whatever imports it first
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(root) / "torch-cache")
    seen: dict[str, object] = {}

    def inspect(run_dir: Path) -> None:  # the run folder before the temp folder goes
        records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        seen["iters"] = [r["iter"] for r in records if r["type"] == "train"]
        ckpt = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True, mmap=True)
        seen["ckpt_iteration"] = ckpt["iteration"]
        seen["run_dir"] = str(run_dir)

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        report = dry_run(recipe, inspect=inspect)
    seen["out"] = out.getvalue()
    seen["left"] = sorted(p.name for p in [*cwd.iterdir(), *tmp.iterdir()])
    return report, seen


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future]]:
    """Every recipe's dry run, started at once on a pool of one process per core (each on
    one thread: the paper-sized recipes are compute, and 2 cores halve the wall time);
    each test waits for its own."""
    root = _temp_parent(tmp_path_factory.mktemp("dry"))
    workers = max(1, min(2, os.cpu_count() or 1))
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            yield {p.stem: pool.submit(_dry_run_in_worker, str(p), str(root / p.stem))
                   for p in RECIPES}
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_dry_runs(recipe: Path, dry_runs: dict[str, Future]) -> None:
    report, seen = dry_runs[recipe.stem].result(timeout=600)
    assert not seen["left"], f"the dry run left files behind: {seen['left']}"
    assert seen["iters"] == [1, 2]
    assert seen["ckpt_iteration"] == ITERATIONS == report.iterations
    assert [r["iter"] for r in report.train] == [1, 2]
    assert all(r["sec_per_iter"] > 0 for r in report.train)
    assert "last.pt" in report.files and "recipe.yaml" in report.files
    if report.recipe.data.val or report.recipe.train.select_on:
        assert report.val, "a recipe with validation specs validated nothing"
    assert report.networks[0] == "model" and report.optimizers
    assert not Path(str(seen["run_dir"])).exists()
    out = str(seen["out"])
    assert f"iteration 2/{ITERATIONS}:" in out and "builds and steps" in out
    original = yaml.safe_load(recipe.read_text())
    assert original["name"] == report.recipe.name  # the recipe's own model and method ran
    assert original["method"]["name"] == report.recipe.method.name


def test_command_line(isolated: tuple[Path, Path]) -> None:
    cwd, tmp = isolated
    res = subprocess.run(
        [sys.executable, "-m", "edgeseg.cli", "train", str(REPO / "train/source_only_camvid.yaml"),
         "--dry-run", "--set", "optim.lr=0.001"],
        env={**cli_env(), "TMPDIR": str(tmp)}, cwd=cwd, capture_output=True, text=True,
        timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert all(line.startswith("dry-run: ") for line in lines), res.stdout
    assert any("data.source camvid:../shared/data/camvid:day_train -> synthetic:" in line
               for line in lines)
    assert sum(f"/{ITERATIONS}: loss_seg_src" in line for line in lines) == 2
    assert "Traceback" not in res.stderr


def _one_line_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["train", *argv]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("edgeseg train: error: "), err
    return err[0]


def test_unknown_key_is_one_line(tmp_path: Path, isolated: tuple[Path, Path],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    data = yaml.safe_load((REPO / "train/source_only_synthetic.yaml").read_text())
    data["train"]["iteratons"] = 5
    recipe = tmp_path / "typo.yaml"
    recipe.write_text(yaml.safe_dump(data))
    assert "train.iteratons" in _one_line_error(capsys, str(recipe), "--dry-run")


def test_bad_set_is_one_line(isolated: tuple[Path, Path],
                             capsys: pytest.CaptureFixture[str]) -> None:
    recipe = str(REPO / "train/source_only_synthetic.yaml")
    assert "data.crop" in _one_line_error(capsys, recipe, "--dry-run", "--set", "data.crop=big")
    assert "KEY=VALUE" in _one_line_error(capsys, recipe, "--dry-run", "--set", "optim.lr")
    assert "method.params" in _one_line_error(capsys, recipe, "--dry-run", "--set",
                                              "method.params.lr=1")


def test_resume_is_refused(isolated: tuple[Path, Path],
                           capsys: pytest.CaptureFixture[str]) -> None:
    line = _one_line_error(capsys, str(REPO / "train/source_only_synthetic.yaml"), "--dry-run",
                           "--resume", "runs/source_only_synthetic/last.pt")
    assert "--resume" in line


def test_a_recipe_that_cannot_step_fails_in_one_line(isolated: tuple[Path, Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Discriminators no crop of the recipe can feed: every side cap and the recipe's own
    crop are refused, in one line naming the crop key; the temp folder is still removed."""
    line = _one_line_error(capsys, str(REPO / "train/sait_translate_synthetic.yaml"),
                           "--dry-run", "--set", "method.params.disc_layers=8")
    assert "dry run failed building: data.crop 128x128" in line and ">= 1024" in line
