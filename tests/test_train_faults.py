"""Faults a user hits in training, each reproduced with real processes, signals and files.

SIGTERM to a process group with loader workers, kill -9 mid-run, resume with
overrides or from the wrong checkpoint, full and read-only disks, broken
datasets: each must end in a resumable checkpoint or one clear line.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from edgeseg.cli import main
from edgeseg.config import Recipe, from_dict
from edgeseg.data import DatasetError
from edgeseg.fileio import OutputError
from edgeseg.train.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from edgeseg.train.trainer import EXIT_INTERRUPTED, Trainer
from tests import dataset_fixtures as fx
from tests.conftest import cli_env, tiny_recipe


def _recipe(synth: Path, out: Path, **over: object) -> Recipe:
    return from_dict(Recipe, tiny_recipe(synth, out, **over))


def _write_recipe(path: Path, synth: Path, out: Path, **over: object) -> Path:
    path.write_text(yaml.safe_dump(tiny_recipe(synth, out, **over)))
    return path


def _train_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return _train_cli_all([args], cwd)[0]


def _train_cli_all(arg_lists: list[tuple[str, ...]], cwd: Path
                   ) -> list[subprocess.CompletedProcess]:
    """`edgeseg train ARGS --no-progress` for several argument lists at once (independent
    runs such as refusals spend most of their time starting an interpreter)."""
    procs = [subprocess.Popen(
        [sys.executable, "-m", "edgeseg.cli", "train", *args, "--no-progress"], env=cli_env(),
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for args in arg_lists]
    done = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def _one_line_error(res: subprocess.CompletedProcess) -> str:
    """The single error line of a CLI run that must fail cleanly (exit 2, no traceback)."""
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    return lines[0]


def _train_iters(run: Path) -> list[int]:
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["iter"] for r in records if r["type"] == "train"]


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120) -> None:  # noqa: ANN001
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"training ended early: {proc.communicate()[0]}")
        time.sleep(0.1)
    proc.kill()
    pytest.fail("training made no progress")


def _logged(run: Path, n: int) -> bool:
    log = run / "metrics.jsonl"
    return log.exists() and len(log.read_text().splitlines()) >= n


# --- signals and kills ------------------------------------------------------------


def _start_training(recipe: Path, cwd: Path, own_group: bool = False) -> subprocess.Popen:
    """`edgeseg train RECIPE` in the background (its own process group when ``own_group``)."""
    return subprocess.Popen(
        [sys.executable, "-m", "edgeseg.cli", "train", str(recipe), "--no-progress"],
        env=cli_env(), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=own_group)

def test_sigterm_to_process_group_with_loader_workers(tiny_synth: Path, tmp_path: Path) -> None:
    """`timeout`, systemd and SLURM signal the whole group: the workers must not die first."""
    run = tmp_path / "run"
    recipe = _write_recipe(tmp_path / "r.yaml", tiny_synth, run, train__iterations=10_000,
                           data__workers=2)
    proc = _start_training(recipe, tmp_path, own_group=True)
    _wait_for(lambda: _logged(run, 2), proc)
    os.killpg(proc.pid, signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, output
    assert "Traceback" not in output and "killed by signal" not in output, output
    stopped = load_checkpoint(run / "last.pt")["iteration"]
    assert stopped >= 2
    res = _train_cli("--resume", str(run / "last.pt"), "--set",
                     f"train.iterations={stopped + 2}", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"resumed from {run / 'last.pt'} at iteration {stopped}" in res.stdout
    assert load_checkpoint(run / "last.pt")["iteration"] == stopped + 2


def test_kill_9_then_resume_cleans_temps_and_metrics(tiny_synth: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    recipe = _write_recipe(tmp_path / "r.yaml", tiny_synth, run, train__iterations=10_000,
                           train__ckpt_every=3)
    proc = _start_training(recipe, tmp_path)

    def past_a_checkpoint() -> bool:
        if not (run / "last.pt").exists() or not _logged(run, 4):
            return False
        return _train_iters(run)[-1] % 3 != 0

    _wait_for(past_a_checkpoint, proc)
    proc.kill()
    proc.communicate(timeout=60)
    # what a writer killed inside torch.save leaves: a temp named with its pid
    stale = run / f".last.pt.tmp{proc.pid}-x1y2.pt"
    stale.write_bytes(b"\0" * 100)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"type": "train", "it')  # a line cut by the kill
    done = load_checkpoint(run / "last.pt")["iteration"]
    assert max(_train_iters_lenient(run)) > done  # iterations logged after the checkpoint

    res = _train_cli(str(recipe), "--resume", str(run / "last.pt"), "--set",
                     f"train.iterations={done + 2}", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert not stale.exists()
    assert _train_iters(run) == list(range(1, done + 3))


def _train_iters_lenient(run: Path) -> list[int]:
    iters = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        try:
            iters.append(json.loads(line)["iter"])
        except ValueError:
            pass
    return iters


# --- resume ------------------------------------------------------------------------

def test_resume_keeps_the_runs_overrides(tiny_synth: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    recipe = _write_recipe(tmp_path / "r.yaml", tiny_synth, run)
    res = _train_cli(str(recipe), "--set", "train.iterations=2", "--set", "optim.lr=0.005",
                     cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    # extend the run: the run's own optim.lr stays, the recipe file's differences are reported
    res = _train_cli(str(recipe), "--resume", str(run / "last.pt"), "--set",
                     "train.iterations=3", "--set", "train.log_every=2", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "resume: train.iterations 2 -> 3" in res.stdout
    assert "resume: train.log_every 1 -> 2" in res.stdout
    assert "differs from the run's recipe in optim.lr, train.iterations" in res.stdout
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["iteration"] == 3
    assert ckpt["recipe"]["optim"]["lr"] == 0.005
    assert yaml.safe_load((run / "recipe.yaml").read_text())["train"]["iterations"] == 3
    # keys that decide what an iteration computes are refused, in one line
    keys = ("data.batch_size=1", "optim.lr=0.1", "seed=5", "model.aspp_channels=16")
    resume = ("--resume", str(run / "last.pt"))
    results = _train_cli_all([(*resume, "--set", "train.iterations=4", "--set", key)
                              for key in keys]
                             + [(*resume, "--set", "train.iterations=2")], cwd=tmp_path)
    for key, res in zip(keys, results):
        line = _one_line_error(res)
        assert key.split("=")[0] in line, line
    assert "below the checkpoint's iteration 3" in _one_line_error(results[-1])
    assert load_checkpoint(run / "last.pt")["iteration"] == 3  # the refusals changed nothing


def test_resume_with_another_model_config_is_one_line(tiny_synth: Path, tmp_path: Path) -> None:
    assert Trainer(_recipe(tiny_synth, tmp_path, train__iterations=1), progress=False).run() == 0
    rec = tiny_recipe(tiny_synth, tmp_path, train__iterations=2)
    rec["model"]["aspp_channels"] = 64
    rec["model"]["width_mult"] = 0.5
    with pytest.raises(CheckpointError) as err:
        Trainer(from_dict(Recipe, rec), resume=str(tmp_path / "last.pt"), progress=False)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "last.pt") in msg
    assert "model.width_mult 0.25 (checkpoint) vs 0.5" in msg and "model.aspp_channels 32" in msg


def test_resume_refuses_weights_only_corrupt_and_foreign_method(
        tiny_synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert Trainer(_recipe(tiny_synth, run, train__iterations=1), progress=False).run() == 0
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert main(["strip", str(run / "last.pt"), "-o", str(tmp_path / "weights.pt")]) == 0
    stripped = load_checkpoint(tmp_path / "weights.pt")
    assert not {"streams", "rng", "method_state"} & set(stripped)
    assert (tmp_path / "weights.pt").stat().st_size < 0.6 * (run / "last.pt").stat().st_size
    line = _one_line_error(_train_cli("--resume", str(tmp_path / "weights.pt"), cwd=tmp_path))
    assert "weights only" in line and "model.init_from" in line
    # what it is for: the start of another run, weights as trained
    start = Trainer(_recipe(tiny_synth, tmp_path / "next", train__iterations=1,
                            model__init_from=str(tmp_path / "weights.pt")), progress=False)
    for name, value in start.model.state_dict().items():
        assert torch.equal(value, ckpt["model"][name]), name
    before = (run / "last.pt").read_bytes()
    assert main(["strip", str(run / "last.pt"), "-o", str(run / "last.pt")]) == 2
    assert "-o is the checkpoint itself" in capsys.readouterr().err
    assert (run / "last.pt").read_bytes() == before
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((run / "last.pt").read_bytes()[:50_000])
    line = _one_line_error(_train_cli("--resume", str(truncated), cwd=tmp_path))
    assert str(truncated) in line and "truncated" in line
    torch.save({**ckpt, "method": "mobilenet_uda"}, tmp_path / "uda.pt")
    with pytest.raises(CheckpointError, match="written by method 'mobilenet_uda'"):
        Trainer(_recipe(tiny_synth, run, train__iterations=2), resume=str(tmp_path / "uda.pt"),
                progress=False)


def test_label_space_contradicting_class_count(tiny_synth: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert Trainer(_recipe(tiny_synth, run, train__iterations=1), progress=False).run() == 0
    ckpt = torch.load(run / "last.pt", weights_only=True)
    bad = tmp_path / "bad.pt"
    torch.save({**ckpt, "model_cfg": {**ckpt["model_cfg"], "num_classes": 11}}, bad)
    with pytest.raises(CheckpointError, match=r"cityscapes19 has 19 classes .*num_classes=11"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match=str(bad)):
        load_model(bad)
    res = subprocess.run([sys.executable, "-m", "edgeseg.cli", "eval", str(bad), "--data",
                          f"synthetic:{tiny_synth}:night_val"], env=cli_env(), cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert "num_classes=11" in _one_line_error(res)


# --- recipes --------------------------------------------------------------------------

@pytest.mark.parametrize("override", ["train.log_every=0", "train.ckpt_every=-1",
                                      "train.val_every=-2", "data.workers=-1"])
def test_out_of_range_keys_fail_before_training(tiny_synth: Path, tmp_path: Path,
                                                override: str) -> None:
    recipe = _write_recipe(tmp_path / "r.yaml", tiny_synth, tmp_path / "run")
    line = _one_line_error(_train_cli(str(recipe), "--set", override, cwd=tmp_path))
    key, value = override.split("=")
    assert f"{key}={value} is out of range" in line
    assert not (tmp_path / "run").exists()


def test_unknown_method_is_one_line(tiny_synth: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    recipe = _write_recipe(tmp_path / "r.yaml", tiny_synth, tmp_path / "run")
    assert main(["train", str(recipe), "--set", "method.name=mutual_gann"]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "method.name: unknown method 'mutual_gann'" in lines[0], lines
    assert "mutual_gan," in lines[0]  # the names it could have been
    assert not (tmp_path / "run").exists()


def test_unknown_key_and_missing_val_folder(tiny_synth: Path, tmp_path: Path) -> None:
    recipe = _write_recipe(tmp_path / "r.yaml", tiny_synth, tmp_path / "run")
    line = _one_line_error(_train_cli(str(recipe), "--set", "train.iteratons=5", cwd=tmp_path))
    assert "unknown key(s) train.iteratons" in line
    rec = tiny_recipe(tiny_synth, tmp_path / "run")
    rec["data"]["val"] = [f"synthetic:{tmp_path / 'nowhere'}:night_val"]
    with pytest.raises(DatasetError, match="nowhere"):  # at start, not at the first validation
        Trainer(from_dict(Recipe, rec), progress=False)


# --- full and read-only disks ------------------------------------------------------

def test_checkpoint_on_full_disk_keeps_the_previous_one(small_disk) -> None:  # noqa: ANN001
    path = small_disk.path / "last.pt"
    save_checkpoint(path, {"iteration": 1, "w": torch.zeros(10)})
    before = path.read_bytes()
    small_disk.fill(leave=8192)
    with pytest.raises(OutputError, match=rf"cannot write {path}: the disk is full"):
        save_checkpoint(path, {"iteration": 2, "w": torch.zeros(200_000)})
    assert path.read_bytes() == before
    assert [p.name for p in small_disk.path.iterdir() if ".tmp" in p.name] == []


def test_training_on_full_disk_is_one_line(tiny_synth: Path, tmp_path: Path,
                                           small_disk) -> None:  # noqa: ANN001
    run = small_disk.path / "run"  # 1 MiB: the ~3 MB checkpoint cannot fit
    recipe = _write_recipe(tmp_path / "r.yaml", tiny_synth, run, train__iterations=1,
                           data__val=[])
    line = _one_line_error(_train_cli(str(recipe), cwd=tmp_path))
    assert f"cannot write {run / 'last.pt'}: the disk is full" in line
    assert not (run / "last.pt").exists()
    assert [p.name for p in run.iterdir() if ".tmp" in p.name] == []


def test_metrics_on_full_disk(tiny_synth: Path, small_disk) -> None:  # noqa: ANN001
    trainer = Trainer(_recipe(tiny_synth, small_disk.path / "run"), progress=False)
    small_disk.fill()
    with pytest.raises(OutputError, match=r"metrics\.jsonl: the disk is full"):
        trainer._append_jsonl({"type": "train", "iter": 1, "loss": 1.0, "pad": "x" * 8192})


def test_read_only_run_folder_fails_before_training(tiny_synth: Path, tmp_path: Path,
                                                    readonly_dir: Path) -> None:
    recipe = _write_recipe(tmp_path / "r.yaml", tiny_synth, readonly_dir / "run")
    line = _one_line_error(_train_cli(str(recipe), cwd=tmp_path))
    assert f"{readonly_dir / 'run'}" in line and "read-only" in line


# --- datasets ---------------------------------------------------------------------------

def _camvid_recipe(root: Path, out: Path) -> Recipe:
    rec = tiny_recipe(Path("unused"), out)
    rec["data"].update(source=f"camvid:{root}:day_train", val=[], label_space="camvid11",
                       crop=[16, 32])
    rec["model"]["num_classes"] = 11
    return from_dict(Recipe, rec)


def test_training_split_without_labels_fails_at_open(tmp_path: Path) -> None:
    root = fx.make_camvid(tmp_path / "camvid")
    first = root / "labels" / "train" / "0006R0_f00930.png"
    first.unlink()
    with pytest.raises(DatasetError, match=r"1 of 2 label files .* are missing") as err:
        Trainer(_camvid_recipe(root, tmp_path / "run"), progress=False)
    assert str(first) in str(err.value) and "\n" not in str(err.value)
    shutil.rmtree(root / "labels")
    with pytest.raises(DatasetError, match=rf"{root / 'labels' / 'train'}: no label files"):
        Trainer(_camvid_recipe(root, tmp_path / "run"), progress=False)


def test_dataset_smaller_than_a_batch(tiny_synth: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="fewer than one batch"):
        Trainer(_recipe(tiny_synth, tmp_path, data__batch_size=1000), progress=False)


def test_label_of_another_size_in_a_worker_is_one_line(tiny_synth: Path, tmp_path: Path) -> None:
    synth = tmp_path / "synth"
    shutil.copytree(tiny_synth, synth)
    for label in (synth / "labels").glob("*.png"):
        cv2.imwrite(str(label), np.zeros((10, 12), np.uint8))
    before = {p.pid for p in multiprocessing.active_children()}
    trainer = Trainer(_recipe(synth, tmp_path / "run", data__workers=2), progress=False)
    with pytest.raises(DatasetError) as err:
        trainer.run()
    msg = str(err.value)
    assert "label size 12x10 differs from image" in msg
    assert "\n" not in msg and "Traceback" not in msg
    # the failed run stopped its loader workers although the trainer is still referenced:
    # they ignore SIGTERM, so left alive they would hold the process at exit
    assert {p.pid for p in multiprocessing.active_children()} <= before


def test_a_finished_run_stops_its_loader_workers(tiny_synth: Path, tmp_path: Path) -> None:
    before = {p.pid for p in multiprocessing.active_children()}
    trainer = Trainer(_recipe(tiny_synth, tmp_path / "run", data__workers=2,
                              train__iterations=2, train__val_every=0), progress=False)
    assert trainer.run() == 0
    assert {p.pid for p in multiprocessing.active_children()} <= before


#: a stream on 2 workers in a process of its own; argv[1] says how it ends
STREAM_SCRIPT = textwrap.dedent("""
    import gc, multiprocessing, sys
    import numpy as np
    from edgeseg.data import DatasetError
    from edgeseg.train.loader import AugmentedDataset, Stream

    class Reader:
        root = "memory"
        def __len__(self):
            return 4
        def __getitem__(self, index):
            if sys.argv[1] == "error":
                raise DatasetError(f"frame {index} is broken")
            return {"image": np.zeros((8, 8, 3), np.uint8)}

    def same(sample, rng):
        return sample

    if __name__ == "__main__":
        stream = Stream(AugmentedDataset(Reader(), same, (0.0,) * 3, (1.0,) * 3, seed=0),
                        batch_size=1, workers=2, rank=0, world_size=1, seed=0)
        if sys.argv[1] == "error":
            try:
                next(stream)
            except DatasetError as exc:
                print(exc, len(multiprocessing.active_children()), flush=True)
            sys.exit(0)
        print(tuple(next(stream)["image"].shape), flush=True)
        if sys.argv[1] == "collected":  # torch's shutdown, as it fails from the garbage collector
            stream._it._shutdown_workers = lambda: None
            del stream
            gc.collect()
            print(len(multiprocessing.active_children()), flush=True)
""")


@pytest.mark.parametrize(("how", "printed"), [
    ("open", "(1, 3, 8, 8)"),       # the stream is still referenced at exit
    ("collected", "(1, 3, 8, 8)\n2"),  # its iterator is gone, its 2 workers are not
    ("error", "frame 0 is broken 0"),  # a worker's error stops the stream's workers at once
])
def test_a_process_with_loader_workers_exits(tmp_path: Path, how: str, printed: str) -> None:
    """However a stream ends, the process must exit: its workers ignore SIGTERM, which is all
    multiprocessing's exit hook and torch's own fallback send them."""
    script = tmp_path / "stream.py"
    script.write_text(STREAM_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), how], cwd=tmp_path, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own group: one kill takes the workers
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the process did not exit: its loader workers were never stopped")
    assert proc.returncode == 0, err
    assert out.strip() == printed
    assert "Traceback" not in err and "Exception ignored" not in err, err  # a clean exit
