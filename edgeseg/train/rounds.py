"""``edgeseg rounds``: the outer loop of semantically adaptive image-to-image translation
(../shared/papers/semantically-adaptive-i2i.txt, Sec. 3.4 and 4: "we iteratively recreate
X_S->T when M stops improving on the target dataset. Before each training of the
segmentation network, we also generate new pseudo-labels").

    edgeseg rounds --translate train/sait_translate_camvid.yaml \\
        --segment train/sait_segment_camvid.yaml --rounds 2 -o runs/sait_camvid

Round r (1-based), with M_0 = ``--start`` (default: the translate recipe's
``model.init_from``, the source-only segmenter) and M_{r-1} the previous round's
``segment/best.pt``:

1. ``OUT/round<r>/translate``: the translate recipe with M_{r-1} as its frozen segmenter
   (SPADE guidance and SCE); from round 2 on its trainable networks continue from the
   previous round's translator (``method.init_from``);
2. ``OUT/round<r>/translated``: ``edgeseg derive translate`` of the translate recipe's
   ``data.source`` by the composite S->T translator (``--network``), labels copied;
3. ``OUT/round<r>/pseudo``: ``edgeseg derive pseudo-label`` of its ``data.target`` by
   M_{r-1} at ``--threshold`` (0.9, th_SSL);
4. ``OUT/round<r>/segment``: the segment recipe, started from M_{r-1}, reading the
   translated source and the target with those pseudo-labels.

Stopping: after each round the segment run's ``best.pt`` records what chose it
(``train.select_on`` of the segment recipe: target mIoU where target labels may be used,
or the label-free mean prediction entropy on the target split). When a round does not
improve on the previous round's value the loop stops (``--rounds`` is the most it runs);
``OUT/rounds.json`` lists every round, the criterion and its value, and which round's
segmenter is the result. Every step is resumable: a finished step is skipped, a
training with a ``last.pt`` continues it, the derive steps write only missing files.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgeseg.config import ConfigError, load_recipe
from edgeseg.fileio import write_json
from edgeseg.train import derive
from edgeseg.train.checkpoint import load_checkpoint
from edgeseg.train.methods.sait_translate import DISCRIMINATORS, ENCODERS, GENERATORS

#: the translate method's trained networks, continued from round to round (the composite
#: translators are views of them and the segmenter comes from the previous round)
CONTINUED = (*ENCODERS, *GENERATORS, *DISCRIMINATORS)
STATE = "rounds.json"


def _train(recipe_path: str, overrides: list[str], out: Path, progress: bool) -> Path:
    """Run (or finish) one training; returns its folder."""
    from edgeseg.train.trainer import Trainer, resume_recipe

    last = out / "last.pt"
    if last.is_file():
        recipe = resume_recipe(str(last), [], None)
        if int(load_checkpoint(last).get("iteration", 0)) >= recipe.train.iterations:
            return out
        code = Trainer(recipe, resume=str(last), progress=progress).run()
    else:
        recipe = load_recipe(recipe_path, [*overrides, f"output_dir={out}"])
        code = Trainer(recipe, progress=progress).run()
    if code != 0:
        raise SystemExit(code)
    return out


def _best(run: Path) -> dict[str, Any]:
    """The criterion, split, value and score of the run's best.pt (higher score is better)."""
    best = load_checkpoint(run / "best.pt").get("best") or {}
    if "score" not in best:
        raise ConfigError(f"{run / 'best.pt'} records no selection criterion: give the segment "
                          "recipe data.val or train.select_on (e.g. entropy:TARGET_SPEC)")
    found = {k: best[k] for k in ("criterion", "data", "value", "score", "iter") if k in best}
    found["data"] = str(found.get("data", "")).removeprefix("entropy:")  # the split alone
    return found


def run_rounds(translate: str, segment: str, out: str | Path, rounds: int, *,
               start: str | None = None, network: str = "translator_s2t",
               threshold: float = derive.DEFAULT_THRESHOLD, set_translate: list[str] = (),
               set_segment: list[str] = (), progress: bool = True) -> dict[str, Any]:
    """Run up to ``rounds`` rounds (see the module doc); returns the state written to
    ``OUT/rounds.json``."""
    if rounds < 1:
        raise ConfigError(f"--rounds {rounds}: need at least 1")
    out = Path(out)
    t_recipe = load_recipe(translate, list(set_translate))
    segmenter = start or t_recipe.model.init_from
    if not segmenter:
        raise ConfigError(f"{translate}: model.init_from is not set and no --start given: the "
                          "first round needs a trained segmenter (e.g. a source-only best.pt)")
    if not t_recipe.data.source or not t_recipe.data.target:
        raise ConfigError(f"{translate}: data.source and data.target must be set")
    state: dict[str, Any] = {"translate": translate, "segment": segment, "start": segmenter,
                             "network": network, "threshold": threshold, "rounds": []}
    previous_translate: Path | None = None
    best_score: float | None = None
    for r in range(1, rounds + 1):
        folder = out / f"round{r}"
        t_over = [*set_translate, f"model.init_from={segmenter}"]
        if previous_translate is not None:
            t_over += [f"method.init_from.{n}={{checkpoint: {previous_translate / 'last.pt'}}}"
                       for n in CONTINUED]
        t_run = _train(translate, t_over, folder / "translate", progress)
        manifest = derive.translate(t_run / "last.pt", network, t_recipe.data.source,
                                    folder / "translated", progress=progress)
        derive.pseudo_label(segmenter, t_recipe.data.target, folder / "pseudo",
                            threshold=threshold, progress=progress)
        s_over = [*set_segment, f"model.init_from={segmenter}",
                  f"data.source={manifest['output_spec']}",
                  f"data.streams.target.pseudo_labels={folder / 'pseudo'}"]
        s_run = _train(segment, s_over, folder / "segment", progress)
        best = _best(s_run)
        improved = best_score is None or best["score"] > best_score
        state["rounds"].append({"round": r, "segmenter_in": segmenter,
                                "segmenter_out": str(s_run / "best.pt"),
                                "translated": manifest["output_spec"],
                                "pseudo_labels": str(folder / "pseudo"), "best": best,
                                "improved": improved})
        write_json(out / STATE, state)
        if not improved:
            break
        best_score = best["score"]
        segmenter, previous_translate = str(s_run / "best.pt"), t_run
    kept = [e for e in state["rounds"] if e["improved"]][-1]
    state["result"] = kept["segmenter_out"]
    state["criterion"] = (f"{kept['best']['criterion']} on {kept['best']['data']}"
                          + (" (label-free)" if kept["best"]["criterion"] == "entropy" else ""))
    write_json(out / STATE, state)
    return state


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--translate", required=True, metavar="RECIPE",
                        help="pixel-level alignment recipe (method: sait_translate)")
    parser.add_argument("--segment", required=True, metavar="RECIPE",
                        help="feature-level alignment recipe (method: sait_segment)")
    parser.add_argument("--rounds", type=int, default=2, help="most rounds to run (default 2)")
    parser.add_argument("-o", "--output", required=True, metavar="DIR",
                        help="one folder per round, and rounds.json")
    parser.add_argument("--start", metavar="CKPT",
                        help="segmenter of round 0 (default: the translate recipe's "
                             "model.init_from)")
    parser.add_argument("--network", default="translator_s2t",
                        help="the S->T translator network of the translate runs")
    parser.add_argument("--threshold", type=float, default=derive.DEFAULT_THRESHOLD,
                        help="pseudo-label confidence threshold (th_SSL, default 0.9)")
    parser.add_argument("--set-translate", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the translate recipe (repeatable)")
    parser.add_argument("--set-segment", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the segment recipe (repeatable)")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    state = run_rounds(args.translate, args.segment, args.output, args.rounds, start=args.start,
                       network=args.network, threshold=args.threshold,
                       set_translate=args.set_translate, set_segment=args.set_segment,
                       progress=not args.no_progress)
    for entry in state["rounds"]:
        b = entry["best"]
        print(f"round {entry['round']}: {b['criterion']} on {b['data']} = {b['value']:.4f}"
              f"{'' if entry['improved'] else ' (no improvement: stopped)'}")
    print(f"result: {state['result']} (chosen by {state['criterion']}); "
          f"{Path(args.output) / STATE}")
    return 0


__all__ = ["CONTINUED", "add_arguments", "run", "run_rounds"]
