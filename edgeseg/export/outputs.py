"""Output paths of export / quantize / build-engine: who wrote a file, and may we replace it.

Each stage writes a file a user keeps (design.md), so a later stage must never
silently replace an earlier stage's file: ``build-engine model.onnx`` once
wrote its int8 variant over the ``model.int8.onnx`` the user had made with
``edgeseg quantize``. `guard_output` refuses to overwrite the input or a file
another stage wrote unless ``--force`` is given. Torch-free.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from edgeseg.contract.manifest import manifest_path
from edgeseg.errors import EdgesegError
from edgeseg.fileio import OutputError

#: the stages that write model files, by their command name
STAGES = ("export", "quantize", "build-engine")
#: engine files that are not ONNX (TensorRT plans)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


class OverwriteError(EdgesegError):
    """An output path that names the input or a file another stage wrote."""


def stage_of(path: str | Path) -> str | None:
    """The stage that wrote ``path``: ``export``, ``quantize``, ``build-engine`` or None.

    An engine is known by its manifest (or a plan suffix); an ONNX file by its
    edgeseg metadata (``extra.made_by`` when recorded, else fp32 = export and
    fp16/int8 = quantize). None for a file edgeseg did not write.
    """
    path = Path(path)
    if manifest_path(path).is_file() or path.suffix in ENGINE_SUFFIXES:
        return "build-engine"
    if path.suffix != ".onnx":
        return None
    from edgeseg.contract.metadata import load_onnx, metadata_or_none

    try:
        meta = metadata_or_none(load_onnx(path, external_data=False))
    except EdgesegError:
        return None
    if meta is None:
        return None
    made_by = meta.extra.get("made_by")
    if made_by in STAGES:
        return str(made_by)
    return "export" if meta.precision == "fp32" else "quantize"


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when ``a`` and ``b`` name one file (symlinks and ``./`` spellings included)."""
    a, b = Path(a), Path(b)
    try:
        return a.samefile(b)
    except OSError:
        return a.resolve() == b.resolve()


def guard_output(path: str | Path, stage: str, inputs: Iterable[str | Path] = (), *,
                 force: bool = False, input_force: bool = True) -> None:
    """Refuse to write ``path`` over an input or over another stage's file without ``force``.

    Rewriting this stage's own earlier output (a rebuild) is allowed. With
    ``input_force=False`` the input is never replaced, even with ``force``
    (an engine cannot be rebuilt once its ONNX is gone).
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder; give a file name inside it")
    for source in inputs:
        if Path(source).exists() and path.exists() and same_file(path, source):
            if not input_force:
                raise OverwriteError(f"{path} is the input of edgeseg {stage}; writing the "
                                     "output over it would destroy it: pick another -o")
            if not force:
                raise OverwriteError(f"{path} is the input of edgeseg {stage}; pick another "
                                     "-o, or add --force to replace the input")
            return
    if force or not path.is_file():
        return
    found = stage_of(path)
    if found == stage:
        return
    what = (f"was written by `edgeseg {found}`" if found else
            f"is not an edgeseg {stage} output")
    raise OverwriteError(f"{path} exists and {what}; pick another -o, or add --force to "
                         "overwrite it")
