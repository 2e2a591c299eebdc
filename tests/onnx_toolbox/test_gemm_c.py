"""drop_zero_gemm_c: the all-zero C of Gemm goes, any other C stays."""

import numpy as np
from onnx import helper, numpy_helper

from onnx_toolbox import DropZeroGemmCPass, drop_zero_gemm_c
from tests.onnx_toolbox.specimens import model, run, vi


def _gemm(c: np.ndarray, as_constant_node=False):
    w = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w", "c"], ["y"])]
    inits = [numpy_helper.from_array(w, "w")]
    if as_constant_node:
        nodes.insert(0, helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(c, "c_value")))
    else:
        inits.append(numpy_helper.from_array(c, "c"))
    return model(nodes, [vi("x", [2, 4])], [vi("y", [2, 3])], inits)


def test_drop_zero_gemm_c():
    m = _gemm(np.float32(0))
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    before = run(m, [x])[0]
    assert DropZeroGemmCPass()(m).modified
    (gemm,) = list(m.graph)
    assert len(gemm.inputs) == 2
    assert "c" not in m.graph.initializers  # the dead zero initializer is removed too
    np.testing.assert_array_equal(run(m, [x])[0], before)
    m2 = _gemm(np.float32(1))
    assert not DropZeroGemmCPass()(m2).modified  # a non-zero C stays


def test_zero_c_from_a_constant_node_is_dropped_with_the_node():
    m = _gemm(np.zeros(3, np.float32), as_constant_node=True)
    assert drop_zero_gemm_c(m) == 1
    assert [n.op_type for n in m.graph] == ["Gemm"]


def test_a_c_with_nan_is_not_zero():
    assert drop_zero_gemm_c(_gemm(np.array([0, np.nan, 0], np.float32))) == 0
