"""IR version per opset and the trt domain import."""

import pytest
from onnx import helper

from onnx_toolbox import FixIrVersionPass, TrtDomainPass, ir_version_for_opset, set_trt_domain
from tests.onnx_toolbox.specimens import model, vi


@pytest.mark.parametrize("opset, ir_version", [(13, 7), (17, 8), (19, 9), (21, 10), (23, 11)])
def test_ir_version_for_opset(opset, ir_version):
    m = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2])], [vi("y", [2])], opset=opset, ir_version=10)
    FixIrVersionPass()(m)
    assert m.ir_version == ir_version == ir_version_for_opset(opset)


def test_trt_domain_import():
    m = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2])], [vi("y", [2])], opset=23)
    assert "trt" not in m.opset_imports
    m.graph.node(0).domain = "trt"
    assert TrtDomainPass()(m).modified and m.opset_imports["trt"] == 1
    assert not set_trt_domain(m)  # already right: nothing changes
    m.graph.node(0).domain = ""
    assert TrtDomainPass()(m).modified and "trt" not in m.opset_imports
