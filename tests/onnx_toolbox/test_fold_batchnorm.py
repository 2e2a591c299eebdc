"""fold_batchnorm: Conv -> BatchNormalization (inference) becomes one Conv with the same outputs."""

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper, numpy_helper

from onnx_toolbox import FoldBatchNormPass, fold_batchnorm
from tests.onnx_toolbox.specimens import model, run, vi

RNG = np.random.default_rng(0)


def _conv_bn(*, group=1, conv_bias=True, extra_reader=False, epsilon=1e-3):
    c_in, c_out = 4, 6
    w = RNG.standard_normal((c_out, c_in // group, 3, 3)).astype(np.float32)
    params = {"s": RNG.uniform(0.5, 1.5, c_out), "bb": RNG.uniform(-0.2, 0.2, c_out),
              "mean": RNG.uniform(-0.1, 0.1, c_out), "var": RNG.uniform(0.5, 1.5, c_out)}
    inits = [numpy_helper.from_array(w, "w")] + [numpy_helper.from_array(v.astype(np.float32), k) for k, v in params.items()]
    conv_in = ["x", "w"]
    if conv_bias:
        inits.append(numpy_helper.from_array(RNG.standard_normal(c_out).astype(np.float32), "cb"))
        conv_in.append("cb")
    nodes = [helper.make_node("Conv", conv_in, ["c"], pads=[1, 1, 1, 1], group=group),
             helper.make_node("BatchNormalization", ["c", "s", "bb", "mean", "var"], ["y"], epsilon=epsilon)]
    outputs = [vi("y", [1, c_out, 5, 5])]
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["c"], ["z"]))
        outputs.append(vi("z", [1, c_out, 5, 5]))
    return model(nodes, [vi("x", [1, c_in, 5, 5])], outputs, inits, opset=17)


@pytest.mark.parametrize("group, conv_bias", [(1, True), (1, False), (2, True)])
def test_fold_batchnorm_keeps_the_outputs(group, conv_bias):
    m = _conv_bn(group=group, conv_bias=conv_bias)
    x = RNG.standard_normal((1, 4, 5, 5)).astype(np.float32)
    before = run(m, [x])[0]
    assert FoldBatchNormPass()(m).modified
    (conv,) = list(m.graph)
    assert conv.op_type == "Conv" and conv.outputs[0].name == "y" and len(conv.inputs) == 3
    assert set(m.graph.initializers) == {conv.inputs[1].name, conv.inputs[2].name}  # BN params and old W/B gone
    np.testing.assert_allclose(run(m, [x])[0], before, rtol=1e-5, atol=1e-5)


def test_conv_output_read_elsewhere_is_not_folded():
    m = _conv_bn(extra_reader=True)
    assert fold_batchnorm(m) == 0
    assert [n.op_type for n in m.graph] == ["Conv", "BatchNormalization", "Relu"]


def test_training_mode_is_not_folded():
    m = _conv_bn()
    bn = m.graph.node(1)
    bn.attributes["training_mode"] = ir.AttrInt64("training_mode", 1)
    assert fold_batchnorm(m) == 0
