"""onnx_toolbox needs no JAX: imported and used in a process where jax cannot be imported."""

from tests.onnx_toolbox.blocked_imports import run_without


def test_the_blocker_really_blocks_jax():
    res = run_without("import jax")
    assert res.returncode != 0 and "blocked by the test" in res.stderr


def test_onnx_toolbox_imports_and_folds_without_jax():
    res = run_without("""
        import numpy as np
        import onnx_ir as ir
        from onnx import helper, numpy_helper, TensorProto
        import onnx_toolbox as tb
        import onnx_toolbox.tensorrt as trt_tools

        g = helper.make_graph(
            [helper.make_node("Gemm", ["x", "w", "c"], ["g"], beta=0.0), helper.make_node("Add", ["g", "b"], ["y"])],
            "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 3])],
            [numpy_helper.from_array(np.ones((4, 3), np.float32), "w"), numpy_helper.from_array(np.zeros(3, np.float32), "c"),
             numpy_helper.from_array(np.full(3, 0.5, np.float32), "b")])
        proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)], ir_version=tb.ir_version_for_opset(19))
        m = ir.serde.deserialize_model(proto)
        assert (tb.drop_zero_gemm_c(m), tb.fold_bias(m)) == (1, 1)
        assert [n.op_type for n in m.graph] == ["Gemm"]
        assert tb.profile_shapes(proto) == {"x": ((1, 4), (8, 4), (32, 4))}  # dim_value -1 is dynamic
        assert isinstance(trt_tools.tensorrt_available(), bool)
    """)
    assert res.returncode == 0, res.stderr
    assert "NO_BLOCKED_IMPORTS" in res.stdout
