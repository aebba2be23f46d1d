"""glibc's malloc for CPU training (edgeseg.train.cpu_malloc): a 64 MiB block, above glibc's
own largest mmap threshold (32 MiB), comes from the heap and stays there once freed, both
when the function is called and when a CPU Trainer calls it for its recipe. Each case is a
fresh Python process: the allocator's settings are per process and cannot be undone."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_recipe

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the allocator settings are glibc's; other C libraries are left as they are")

PROBE = """
import ctypes, json, sys
FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
          "uordblks", "fordblks", "keepcost")
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
mode, recipe = sys.argv[1], sys.argv[2]
kept = None
if mode == "call":
    from edgeseg.train.cpu_malloc import keep_freed_memory
    kept = keep_freed_memory()
elif mode == "trainer":
    from edgeseg.config import Recipe, from_dict
    from edgeseg.train.trainer import Trainer
    kept = Trainer(from_dict(Recipe, json.loads(recipe)), progress=False).kept_freed_memory
before = libc.mallinfo2()
block = libc.malloc(64 << 20)
during = libc.mallinfo2()
libc.free(block)
after = libc.mallinfo2()
print(json.dumps({"kept": kept, "mmapped": during.hblkhd - before.hblkhd,
                  "from_heap": during.uordblks - before.uordblks,
                  "trimmed": during.arena - after.arena}))
"""

MIB64 = 64 << 20


def probe(mode: str, recipe: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode, json.dumps(recipe or {})],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_glibc_as_it_comes_maps_a_64mib_block_and_unmaps_it() -> None:
    """The control: without the settings the block is mmapped, the heap does not grow."""
    got = probe("none")
    assert got["mmapped"] >= MIB64 and got["from_heap"] < MIB64


def test_keep_freed_memory_serves_the_block_from_the_heap_and_keeps_it() -> None:
    got = probe("call")
    assert got["kept"] is True
    assert got["mmapped"] == 0 and got["from_heap"] >= MIB64  # the mmap threshold
    assert got["trimmed"] == 0  # the trim threshold: the heap keeps it after free


@pytest.mark.parametrize("keep", [True, False])
def test_a_cpu_trainer_sets_glibc_up_as_its_recipe_says(
        tiny_synth: Path, tmp_path: Path, keep: bool) -> None:
    recipe = tiny_recipe(tiny_synth, tmp_path / "run", train__keep_freed_memory=keep,
                         train__device="cpu")
    got = probe("trainer", recipe)
    assert got["kept"] is keep
    if keep:
        assert got["mmapped"] == 0 and got["from_heap"] >= MIB64 and got["trimmed"] == 0
    else:
        assert got["mmapped"] >= MIB64 and got["from_heap"] < MIB64
