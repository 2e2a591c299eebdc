"""fold_bias: a constant bias Add after Conv (through a Transpose) or Gemm moves into the op; anything that
is not a per-channel bias stays an Add."""

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper, numpy_helper

from onnx_toolbox import DropZeroGemmCPass, FoldBiasPass, fold_bias
from tests.onnx_toolbox.specimens import model, run, vi

RNG = np.random.default_rng(0)


def _f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _conv_add(bias: np.ndarray, *, transpose=False, conv_bias=None, shapes=True):
    """x[1,3,6,6] -> Conv(W[5,3,3,3]) [-> Transpose NHWC] -> Add(bias) -> y."""
    w = _f32(5, 3, 3, 3)
    conv_in = ["x", "w"] + (["cb"] if conv_bias is not None else [])
    nodes = [helper.make_node("Conv", conv_in, ["c"], pads=[1, 1, 1, 1])]
    if transpose:
        nodes.append(helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]))
    nodes.append(helper.make_node("Add", ["t" if transpose else "c", "b"], ["y"]))
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias.astype(np.float32), "b")]
    if conv_bias is not None:
        inits.append(numpy_helper.from_array(conv_bias, "cb"))
    out = [1, 6, 6, 5] if transpose else [1, 5, 6, 6]
    m = model(nodes, [vi("x", [1, 3, 6, 6])], [vi("y", out)], inits)
    if shapes:
        m.graph.node(0).outputs[0].shape = ir.Shape([1, 5, 6, 6])
        if transpose:
            m.graph.node(1).outputs[0].shape = ir.Shape(out)
    return m


def test_fold_bias_through_transpose_into_conv():
    b = _f32(5)
    m = _conv_add(b.reshape(1, 1, 1, 5), transpose=True)
    x = _f32(1, 3, 6, 6)
    before = run(m, [x])[0]
    assert FoldBiasPass()(m).modified
    ops = [n.op_type for n in m.graph]
    assert ops == ["Conv", "Transpose"] and len(m.graph.node(0).inputs) == 3
    np.testing.assert_allclose(run(m, [x])[0], before, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bias_shape", [(1, 5, 1, 1), (5, 1, 1), (1,), ()])
def test_per_channel_or_scalar_bias_folds_into_conv_without_shape_information(bias_shape):
    """Models from other exporters carry no value shapes: channels and rank come from the weight."""
    b = _f32(*bias_shape) if bias_shape else np.float32(0.3)
    m = _conv_add(np.asarray(b), shapes=False, conv_bias=_f32(5))
    x = _f32(1, 3, 6, 6)
    before = run(m, [x])[0]
    assert fold_bias(m) == 1
    (conv,) = list(m.graph)
    assert conv.op_type == "Conv" and conv.outputs[0].name == "y"  # the Conv now writes the Add's tensor
    assert "b" not in m.graph.initializers and "cb" not in m.graph.initializers  # old biases are dropped
    np.testing.assert_allclose(run(m, [x])[0], before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bias_shape", [(6,), (1, 1, 1, 6), (1, 5, 6, 1), (2, 5, 1, 1)])
def test_bias_that_is_not_per_channel_stays(bias_shape):
    """(6,) broadcasts along W of NCHW, not along the channels: it must not become the Conv's B."""
    m = _conv_add(_f32(*bias_shape), shapes=False)
    assert fold_bias(m) == 0
    assert [n.op_type for n in m.graph] == ["Conv", "Add"]


def test_conv_output_read_twice_is_not_folded():
    w, b = _f32(5, 3, 3, 3), _f32(1, 5, 1, 1)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "b"], ["y"]), helper.make_node("Relu", ["c"], ["z"])]
    m = model(nodes, [vi("x", [1, 3, 6, 6])], [vi("y", [1, 5, 6, 6]), vi("z", [1, 5, 6, 6])],
              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    assert fold_bias(m) == 0


def test_fold_bias_into_gemm_but_not_a_full_tensor():
    w = _f32(4, 3)
    for bias, folds in ((RNG.standard_normal((3,)), True), (RNG.standard_normal((2, 3)), False)):
        m = model([helper.make_node("Gemm", ["x", "w"], ["g"]), helper.make_node("Add", ["g", "b"], ["y"])],
                  [vi("x", [2, 4])], [vi("y", [2, 3])],
                  [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias.astype(np.float32), "b")])
        m.graph.node(0).outputs[0].shape = ir.Shape([2, 3])
        x = _f32(2, 4)
        before = run(m, [x])[0]
        assert FoldBiasPass()(m).modified == folds
        assert [n.op_type for n in m.graph] == (["Gemm"] if folds else ["Gemm", "Add"])
        np.testing.assert_allclose(run(m, [x])[0], before, rtol=1e-6, atol=1e-6)


def test_fold_bias_into_gemm_sets_beta():
    """jax2onnx writes ``Gemm(A, B, C=0, beta=0)``: the folded bias must come with ``beta=1``."""
    w, b = _f32(4, 3), _f32(1, 3)
    m = model([helper.make_node("Gemm", ["x", "w", "c"], ["g"], beta=0.0), helper.make_node("Add", ["g", "b"], ["y"])],
              [vi("x", [2, 4])], [vi("y", [2, 3])],
              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(3, np.float32), "c"),
               numpy_helper.from_array(b, "b")])
    m.graph.node(0).outputs[0].shape = ir.Shape([2, 3])
    x = _f32(2, 4)
    before = run(m, [x])[0]
    DropZeroGemmCPass()(m)
    assert FoldBiasPass()(m).modified
    (gemm,) = list(m.graph)
    assert gemm.attributes["beta"].value == 1.0 and np.array_equal(gemm.inputs[2].const_value.numpy(), b.reshape(-1))
    np.testing.assert_allclose(run(m, [x])[0], before, rtol=1e-6, atol=1e-6)


def test_gemm_with_a_scaled_c_and_trans_b_folds_into_beta_times_c():
    """Gemm(x, W^T, C, beta=0.5) + b  ->  Gemm(x, W^T, 0.5 * C + b, beta=1); N comes from W[N, K] (transB)."""
    w, c, b = _f32(3, 4), _f32(3), _f32(3)
    m = model([helper.make_node("Gemm", ["x", "w", "c"], ["g"], beta=0.5, transB=1),
               helper.make_node("Add", ["b", "g"], ["y"])],
              [vi("x", [2, 4])], [vi("y", [2, 3])],
              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(c, "c"), numpy_helper.from_array(b, "b")])
    x = _f32(2, 4)
    before = run(m, [x])[0]
    assert fold_bias(m) == 1
    (gemm,) = list(m.graph)
    np.testing.assert_allclose(gemm.inputs[2].const_value.numpy(), 0.5 * c + b, rtol=1e-6)
    np.testing.assert_allclose(run(m, [x])[0], before, rtol=1e-6, atol=1e-6)


def test_1d_bias_of_channel_length_broadcasts_along_width_and_stays():
    """Conv output [1, 5, 5, 5] + b[5]: numpy broadcasting adds b along W, not along the 5 channels, so folding
    it into the Conv's B would change the values (the protobuf fold autotune had before did exactly that)."""
    w, b = _f32(5, 3, 3, 3), _f32(5)
    m = model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Add", ["c", "b"], ["y"])],
              [vi("x", [1, 3, 5, 5])], [vi("y", [1, 5, 5, 5])],
              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    x = _f32(1, 3, 5, 5)
    before = run(m, [x])[0]
    assert fold_bias(m) == 0
    np.testing.assert_array_equal(run(m, [x])[0], before)
