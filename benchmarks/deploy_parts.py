"""Score a deployed chain with parts of it bypassed: which part of what a method deploys
costs or gains accuracy, from the exported file alone (no checkpoint needed).

    python benchmarks/deploy_parts.py benchmarks/results/camvid/dania_lowlight.fp32.onnx \\
        --camvid ../shared/data/camvid --json benchmarks/results/camvid/dania_lowlight-parts.json

A method that deploys image networks in front of its segmenter and a per-class logit bias
behind it (DANIA: relighting net -> segmenter -> re-weighting) is exported as one graph by
``edgeseg export``; its nodes are named after the deployed modules (``/model/pre.N/...``,
``/model/segmenter/...``, ``/model/Add`` for the bias). Each variant rewires that graph:
``no_pre`` feeds the normalised frame straight to the segmenter, ``no_bias`` gives the
segmenter's logits straight to the ArgMax, ``segmenter`` does both; unused nodes are
dropped. Every variant is scored by ``edgeseg eval``'s code on every frame of CamVid
day_val and dusk_train. The segmenter was trained on what its pre-networks made of the
frames, so a bypassed pre-network asks whether the trained weights, or the network in
front of them, carry the result.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import onnx
from camvid_methods import DEFAULT_CAMVID, data_specs, score

from edgeseg.fileio import write_json

SEGMENTER = "/model/segmenter/"
BIAS_NODE = "/model/Add"


def prune(graph: onnx.GraphProto) -> None:
    """Drop nodes (and initialisers) no graph output depends on."""
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if needed & set(node.output):
            keep.append(node)
            needed |= set(node.input)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    inits = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def rewire(model: onnx.ModelProto, no_pre: bool, no_bias: bool) -> onnx.ModelProto:
    """A copy of ``model`` with its pre-networks and/or its class bias bypassed."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = list(out.graph.node)
    seg = [n for n in nodes if n.name.startswith(SEGMENTER)]
    if not seg:
        raise SystemExit(f"deploy_parts: error: no {SEGMENTER} nodes: not a chain from "
                         "`edgeseg export` of a method's deployed graph")
    produced = {o for n in seg for o in n.output}
    if no_pre:
        pre = [n for n in nodes if n.name.startswith("/model/pre.")]
        if not pre:
            raise SystemExit("deploy_parts: error: the graph has no pre-network (/model/pre.N)")
        pre_out = {o for n in pre for o in n.output}
        first_in = next(i for n in pre for i in n.input if i not in pre_out)  # the frame
        for node in seg:
            for k, name in enumerate(node.input):
                if name in pre_out:
                    node.input[k] = first_in
    if no_bias:
        bias = next((n for n in nodes if n.name == BIAS_NODE), None)
        if bias is None:
            raise SystemExit(f"deploy_parts: error: the graph has no class bias ({BIAS_NODE})")
        logits = next(i for i in bias.input if i in produced)
        for node in nodes:
            for k, name in enumerate(node.input):
                if name == bias.output[0]:
                    node.input[k] = logits
    prune(out.graph)
    return out


VARIANTS = {"deployed": (False, False), "no_pre": (True, False), "no_bias": (False, True),
            "segmenter": (True, True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("onnx", type=Path)
    ap.add_argument("--camvid", default=DEFAULT_CAMVID)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    model = onnx.load(str(args.onnx))
    report: dict = {"onnx": str(args.onnx), "variants": {}}
    with tempfile.TemporaryDirectory(prefix="deploy-parts-") as tmp:
        for name in args.variants.split(","):
            path = Path(tmp, f"{name}.onnx")
            onnx.save(rewire(model, *VARIANTS[name]), str(path))
            row = score(path, None, data_specs(args.camvid))
            print(name, "  ".join(f"{split} {100 * m['miou']:.2f}" for split, m in row.items()),
                  flush=True)
            report["variants"][name] = row
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    main()
