"""The ``edgeseg`` command.

Sub-commands import their modules lazily so ``edgeseg --help`` and the
torch-free commands start fast and work where torch is not installed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path

Handler = Callable[[argparse.Namespace], int]


#: commands implemented by a module with ``add_arguments(parser)`` and ``run(args) -> int``
MODULE_COMMANDS: list[tuple[str, str, str]] = [
    ("synth", "edgeseg.data.synth.cli",
     "generate synthetic driving scenes (day/night/dusk/fog/rain, pairs, videos)"),
    ("derive", "edgeseg.train.derive",
     "derive a dataset from a checkpoint: translated images or pseudo-labels"),
    ("rounds", "edgeseg.train.rounds",
     "alternate translator and segmenter trainings with derived data (bidirectional rounds)"),
    ("strip", "edgeseg.train.strip",
     "a checkpoint without optimiser/RNG state, to share or start from (not to resume)"),
    ("export", "edgeseg.export.export_cli", "export a checkpoint to ONNX with a parity gate"),
    ("quantize", "edgeseg.export.precision_cli", "make the fp16 or int8 (Q/DQ) variant of an ONNX"),
    ("lint", "edgeseg.export.lint_cli", "TensorRT pre-flight check of an ONNX (no GPU needed)"),
    ("build-engine", "edgeseg.export.build_cli",
     "build a TensorRT engine or an ONNX Runtime model for CPU targets"),
    ("inspect", "edgeseg.export.inspect_cli", "print the metadata of an ONNX file or engine"),
    ("compare", "edgeseg.export.compare",
     "compare two of checkpoint / ONNX / engine (segmentation-aware, scored as bench scores)"),
    ("run", "edgeseg.runtime.run_cli",
     "stream a camera, video or image folder through an engine (overlay, video, labels)"),
    ("bench", "edgeseg.bench.cli",
     "latency, frame rate and mIoU parity of engines; JSON, Markdown and plots"),
]


def _cmd_train(args: argparse.Namespace) -> int:
    from edgeseg.config import ConfigError, load_recipe

    if args.dry_run:
        if args.resume:
            raise ConfigError("--dry-run checks a recipe before a new run; it cannot be "
                              "combined with --resume")
        if not args.recipe:
            raise ConfigError("--dry-run needs a recipe, e.g. edgeseg train "
                              "train/source_only_synthetic.yaml --dry-run")
        from edgeseg.train.dry_run import dry_run

        dry_run(args.recipe, args.set)
        return 0
    from edgeseg.train.trainer import Trainer, resume_recipe

    if args.resume:
        recipe = resume_recipe(args.resume, args.set, args.recipe)
    elif args.recipe:
        recipe = load_recipe(args.recipe, args.set)
    else:
        raise ConfigError("give a recipe (e.g. train/source_only_synthetic.yaml) or "
                          "--resume RUN/last.pt")
    return Trainer(recipe, resume=args.resume, progress=not args.no_progress).run()


def _cmd_eval(args: argparse.Namespace) -> int:
    from edgeseg.eval_cli import run_eval

    return run_eval(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from edgeseg.demo import run_demo

    return run_demo(args, edgeseg=main)


def _add_module_commands(sub: argparse._SubParsersAction, only: str | None) -> None:
    for name, module_name, help_text in MODULE_COMMANDS:
        if only is not None and name != only:  # listed by name, its module not imported
            sub.add_parser(name, help=help_text, allow_abbrev=False)
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # an optional extra is not installed
            p = sub.add_parser(name, help=f"{help_text} (unavailable: {exc})",
                               allow_abbrev=False)
            p.set_defaults(func=_unavailable(name, exc))
            continue
        p = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        module.add_arguments(p)
        p.set_defaults(func=module.run)


def _unavailable(name: str, exc: ImportError) -> Handler:
    def fail(args: argparse.Namespace) -> int:
        print(f"edgeseg {name}: unavailable here ({exc}); install edgeseg[export]",
              file=sys.stderr)
        return 2

    return fail


def package_version() -> str:
    """The installed distribution's version, else the one in the source tree's pyproject.toml
    (a checkout run without ``pip install``), so a report names the code that actually ran."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edgeseg")
    except PackageNotFoundError:
        pass
    try:
        text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    except OSError:
        text = ""
    project = text.partition("[project]")[2].split("\n[", 1)[0]
    found = re.search(r'^version\s*=\s*"([^"]+)"', project, re.MULTILINE)
    if found:
        return found.group(1)
    from edgeseg import __version__

    return __version__


def selected_command(argv: list[str]) -> str | None:
    """The sub-command ``argv`` names: its first word that is not a flag (the top-level
    flags take no value), or None (``--help``, ``--version``, nothing)."""
    return next((word for word in argv if not word.startswith("-")), None)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``only`` (a command's name, or "" for none), the other module
    commands are listed without importing their modules, so a command starts in the time its
    own imports take (no torch for the torch-free ones) and ``edgeseg --help`` in none."""
    from edgeseg.argtypes import add_device_argument, non_negative_int, parse_luma, positive_int

    parser = argparse.ArgumentParser(
        prog="edgeseg",
        description="Train domain-adaptive segmentation, export it, run it on a vehicle.",
        allow_abbrev=False,  # a removed flag must fail, not match a longer one by its prefix
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    parser.add_argument("--version", action="version", version=f"edgeseg {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_module_commands(sub, only)

    p = sub.add_parser("train", help="train a recipe (train/*.yaml); torchrun for DDP",
                       allow_abbrev=False)
    p.add_argument("recipe", nargs="?",
                   help="recipe YAML, e.g. train/source_only_synthetic.yaml (optional with "
                        "--resume: the run continues its own saved recipe)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set optim.lr=0.005 (repeatable; with "
                        "--resume only the keys listed in train/README.md)")
    p.add_argument("--resume", metavar="CKPT",
                   help="continue a run from its last.pt with the recipe saved in it")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.add_argument("--dry-run", action="store_true",
                   help="build everything the recipe builds and run 2 iterations on a few "
                        "generated synthetic scenes in a temp folder (no dataset, start "
                        "checkpoint or output_dir is touched); see train/README.md")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="mIoU / per-class IoU of a checkpoint, ONNX file or engine",
                       allow_abbrev=False)
    p.add_argument("model", help="checkpoint (.pt), ONNX file (.onnx) or engine (with manifest)")
    p.add_argument("--data", action="append", required=True, metavar="SPEC",
                   help="NAME:ROOT[:SPLIT], repeatable, e.g. camvid:../shared/data/camvid:day_val")
    p.add_argument("--json", metavar="OUT", help="write the results as JSON to OUT (- = stdout)")
    p.add_argument("--overlays", metavar="PNG", help="write an overlay grid of a few samples")
    p.add_argument("--plot", metavar="PNG", help="write a per-class IoU bar chart")
    p.add_argument("--max-frames", type=non_negative_int, default=0, metavar="N",
                   help="stop after the first N frames of each dataset (default 0 = all)")
    p.add_argument("--band", type=non_negative_int, default=0, metavar="PX",
                   help="also score only the pixels within PX of a ground-truth class boundary "
                        "(boundary-band mIoU; default 0 = off)")
    add_device_argument(p, "where the model runs: a checkpoint in PyTorch on it, an ONNX file or "
                        "engine on that GPU's provider/context (default auto)")
    p.add_argument("--translator", metavar="ENGINE",
                   help="image-to-image engine (translator or relighting net, from `edgeseg "
                        "export CKPT --network NAME`) run on every frame before the model, "
                        "chained as `edgeseg run --translator` chains it")
    p.add_argument("--translate-below", metavar="LUMA", type=parse_luma,
                   help="translate only frames whose mean luma (0-255) is below LUMA, as "
                        "`edgeseg run --translate-below` gates it; brighter frames go straight "
                        "to the model. Default: the translator's recorded gate, if any; 256 "
                        "translates every frame")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("demo", help="the whole path on built-in synthetic data (make demo)",
                       allow_abbrev=False)
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--iterations", type=int, default=0, help="training iterations (default: recipe)")
    p.add_argument("--retrain", action="store_true", help="ignore a cached demo model")
    p.add_argument("--max-frames", type=positive_int, default=200, metavar="N",
                   help="frames of the synthetic night drive streamed into demo.mp4 (default 200)")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(selected_command(argv) or "")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from edgeseg.errors import USER_ERRORS

    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        print(f"edgeseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, read-only, permissions: one line, not a traceback
        from edgeseg.fileio import OUTPUT_ERRNOS, describe_os_error

        if exc.errno not in OUTPUT_ERRNOS:
            raise
        where = exc.filename or "an output file"
        print(f"edgeseg {args.command}: error: {describe_os_error(where, exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"edgeseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
