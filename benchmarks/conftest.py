"""Shared fixtures and options of the benchmark suites (each test file also runs alone).

Options (or environment variables, for `make bench`):

- ``--max-drop PRECISION=POINTS`` / ``EDGESEG_MAX_DROP="fp16=0.1,int8=1.0"``: the mIoU
  budget of test_parity.py (defaults: `edgeseg.bench.parity.DEFAULT_MAX_DROP`)
- ``--bench-report DIR`` / ``EDGESEG_BENCH_REPORT``: also write the latency and parity
  tables as Markdown (DIR/latency.md, DIR/parity.md) when the session ends
- ``EDGESEG_BENCH_ROUNDS`` (default 5): timed rounds per latency case;
  ``EDGESEG_BENCH_THREADS`` (default 0 = every core): ONNX Runtime / PyTorch threads
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest

from edgeseg.bench.parity import DEFAULT_MAX_DROP, parse_max_drop

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "data" / "camvid"

#: rows the suites add for the Markdown tables written at the end (--bench-report)
RESULTS: dict[str, list[dict[str, Any]]] = {"latency": [], "parity": []}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("edgeseg bench")
    group.addoption("--max-drop", action="append", default=[], metavar="PRECISION=POINTS",
                    help="mIoU points a variant may lose against fp32 (test_parity.py)")
    group.addoption("--bench-report", metavar="DIR", default=None,
                    help="write DIR/latency.md and DIR/parity.md tables at the end")


@pytest.fixture(scope="session")
def max_drop(pytestconfig: pytest.Config) -> dict[str, float]:
    """The parity budget: defaults, then EDGESEG_MAX_DROP, then --max-drop."""
    env = [s for s in os.environ.get("EDGESEG_MAX_DROP", "").split(",") if s.strip()]
    return parse_max_drop([*env, *pytestconfig.getoption("max_drop")], DEFAULT_MAX_DROP)


@pytest.fixture(scope="session")
def bench_rows() -> dict[str, list[dict[str, Any]]]:
    """Where the suites put their table rows for --bench-report."""
    return RESULTS


@pytest.fixture(scope="session")
def bench_threads() -> int:
    return int(os.environ.get("EDGESEG_BENCH_THREADS", "0"))


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    """Where CamVid is expected (the suites skip its cases, saying so, when it is not there)."""
    return CAMVID


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic day/night scenes at 256x128 from the project's generator (a few seconds):
    80 training scenes per domain (the parity suite's night model, int8 calibration) and
    16 validation scenes rendered in both domains."""
    from edgeseg.data.synth.cli import add_arguments, run

    out = tmp_path_factory.mktemp("synth")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--out", str(out), "--train", "160", "--val", "16",
                              "--size", "256x128", "--domains", "day,night", "--seed", "11"])
    assert run(args) == 0
    return out


@pytest.fixture(scope="session")
def calib_spec(synth_root: Path) -> str:
    """Target-domain frames for int8 calibration: CamVid dusk when present (as the committed
    int8 file was calibrated), else synthetic night."""
    if (CAMVID / "splits" / "dusk_train.txt").is_file():
        return f"camvid:{CAMVID}:dusk_train"
    return f"synthetic:{synth_root}:night_train"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    out = session.config.getoption("bench_report", None) or os.environ.get(
        "EDGESEG_BENCH_REPORT")
    if not out or not (RESULTS["latency"] or RESULTS["parity"]):
        return
    from edgeseg.bench.machine import describe_machine, detect_machine
    from edgeseg.bench.report import markdown_table
    from edgeseg.fileio import write_text

    command = "python -m pytest " + shlex.join(sys.argv[1:])
    machine = "\n".join(f"- {line}" for line in describe_machine(detect_machine()))
    for kind, rows in RESULTS.items():
        if not rows:
            continue
        header = list(rows[0])
        cells = [[str(r.get(h, "")) for h in header] for r in rows]
        title = {"latency": "Inference latency (benchmarks/test_inference_latency.py)",
                 "parity": "mIoU parity against fp32 (benchmarks/test_parity.py)"}[kind]
        text = (f"# {title}\n\nCommand:\n\n    {command}\n\n## Machine\n\n{machine}\n\n"
                f"{markdown_table(header, cells)}\n")
        write_text(Path(out) / f"{kind}.md", text)
