"""benchmarks/deploy_parts.py: a deployed chain's parts bypassed by rewiring its ONNX graph,
checked on a hand-built graph named as `edgeseg export` names a method's deployed chain."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import benchmark_script

X = np.array([[1.0, 2.0, 3.0]], np.float32)
BIAS = np.array([10.0, 0.0, -10.0], np.float32)


def chain() -> onnx.ModelProto:
    """frame -> normalise -> pre-network (x + tanh x) -> segmenter (x 2) -> class bias."""
    nodes = [
        helper.make_node("Mul", ["frame", "one"], ["/Mul_output_0"], name="/Mul"),
        helper.make_node("Tanh", ["/Mul_output_0"], ["t"], name="/model/pre.0/body/Tanh"),
        helper.make_node("Add", ["/Mul_output_0", "t"], ["p"], name="/model/pre.0/Add"),
        helper.make_node("Mul", ["p", "two"], ["logits"], name="/model/segmenter/Mul"),
        helper.make_node("Add", ["logits", "bias"], ["b"], name="/model/Add"),
        helper.make_node("Identity", ["b"], ["scores"], name="/Identity"),
    ]
    inits = [numpy_helper.from_array(np.float32(1.0), "one"),
             numpy_helper.from_array(np.float32(2.0), "two"),
             numpy_helper.from_array(BIAS, "bias")]
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("frame", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model: onnx.ModelProto) -> np.ndarray:
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"frame": X})[0]


@pytest.mark.parametrize("variant,want", [
    ("deployed", 2 * (X + np.tanh(X)) + BIAS),
    ("no_pre", 2 * X + BIAS),
    ("no_bias", 2 * (X + np.tanh(X))),
    ("segmenter", 2 * X),
])
def test_each_variant_computes_the_chain_without_its_bypassed_parts(
        variant: str, want: np.ndarray) -> None:
    parts = benchmark_script("deploy_parts")
    model = parts.rewire(chain(), *parts.VARIANTS[variant])
    np.testing.assert_allclose(run(model), want, rtol=1e-6)
    names = [n.name for n in model.graph.node]
    assert any(n.startswith("/model/pre.") for n in names) == (variant in ("deployed", "no_bias"))
    assert ("/model/Add" in names) == (variant in ("deployed", "no_pre"))
    assert ("bias" in {i.name for i in model.graph.initializer}) == ("/model/Add" in names)


def test_a_graph_without_the_part_to_bypass_is_one_line() -> None:
    parts = benchmark_script("deploy_parts")
    plain = parts.rewire(chain(), True, True)  # a segmenter alone
    for no_pre, no_bias, what in ((True, False, "pre-network"), (False, True, "class bias")):
        with pytest.raises(SystemExit, match=what):
            parts.rewire(plain, no_pre, no_bias)
