"""Which dimensions are fixed: only a positive dim_value."""

import pytest
from onnx import TensorProto, helper

from onnx_toolbox import dim_size, static_dims


@pytest.mark.parametrize("dim, size", [("batch", None), (-1, None), (0, None), (7, 7)])
def test_dim_size(dim, size):
    vi = helper.make_tensor_value_info("x", TensorProto.FLOAT, [dim, 3])
    assert dim_size(vi.type.tensor_type.shape.dim[0]) == size
    assert static_dims(vi.type) == [size, 3]


def test_unset_dimension_and_unknown_rank():
    vi = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])
    assert static_dims(vi.type) == [None, 3]
    assert static_dims(helper.make_tensor_value_info("x", TensorProto.FLOAT, None).type) is None
