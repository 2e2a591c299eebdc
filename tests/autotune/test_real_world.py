"""Real-world graph features: Constant weights, external data, dynamic dims, opsets, BN."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fakes import CostModelBenchmark
from graphs import residual_cnn

from jq_autotune.config import Config
from jq_autotune.model_io import ModelError, parse_input_shapes, resolve_input_shapes
from jq_autotune.workflow import autotune

CFG = Config(schemes_per_region=6, warmup_runs=1, timing_runs=3)
X = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)


def tune(model, tmp_path, name="m.onnx", **kw):
    path = tmp_path / name
    if model is not None:
        onnx.save(model, path)
    kw.setdefault("input_shapes", {"x": (1, 3, 16, 16)})
    report = autotune(path, tmp_path / "out", CFG, benchmark=CostModelBenchmark(), progress=False, echo=lambda s: None, **kw)
    return report, onnx.load(tmp_path / "out" / "optimized_final.onnx")


def run(model_or_path, x=X):
    src = model_or_path if isinstance(model_or_path, str) else model_or_path.SerializeToString()
    return ort.InferenceSession(src, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_constant_node_weights_are_quantized(tmp_path):
    model = residual_cnn(blocks=1, constant_weights=True)
    report, final = tune(model, tmp_path)
    assert report.final_ms < report.baseline_ms
    inits = {t.name: t for t in final.graph.initializer}
    int8_weights = [n for n in final.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].data_type == onnx.TensorProto.INT8]
    assert int8_weights, "weights stored in Constant nodes were not quantized"
    run(final)


def test_external_data_model(tmp_path):
    model = residual_cnn(blocks=1, channels=16)
    ref = run(model)  # before saving: saving with external data moves the weights out
    src = tmp_path / "ext" / "m.onnx"
    src.parent.mkdir()
    onnx.save(model, src, save_as_external_data=True, all_tensors_to_one_file=True, location="m.weights", size_threshold=0)
    assert (src.parent / "m.weights").exists()
    report, _ = tune(None, tmp_path, name="ext/m.onnx")
    out = tmp_path / "out"
    assert report.final_ms < report.baseline_ms
    # the baseline written next to the results still reads the original external weights
    assert (out / "m.weights").exists()
    np.testing.assert_allclose(run(str(out / "baseline.onnx")), ref, rtol=1e-5, atol=1e-5)
    run(str(out / "optimized_final.onnx"))


def test_folds_on_an_external_data_model_leave_the_other_weights_on_disk(tmp_path):
    """The onnx-ir folds read the BN/Conv values from the external file; untouched weights keep referring to it."""
    from onnx.external_data_helper import uses_external_data

    model = residual_cnn(blocks=1, channels=16, bn=True)
    ref = run(model)
    src = tmp_path / "ext" / "m.onnx"
    src.parent.mkdir()
    onnx.save(model, src, save_as_external_data=True, all_tensors_to_one_file=True, location="m.weights", size_threshold=0)
    report, _ = tune(None, tmp_path, name="ext/m.onnx")
    assert any("folded 2 BatchNormalization" in n for n in report.notes)
    baseline = onnx.load(tmp_path / "out" / "baseline.onnx", load_external_data=False)
    assert not any(n.op_type == "BatchNormalization" for n in baseline.graph.node)
    assert any(uses_external_data(t) for t in baseline.graph.initializer)  # e.g. the Gemm weight
    np.testing.assert_allclose(run(str(tmp_path / "out" / "baseline.onnx")), ref, rtol=1e-4, atol=1e-4)


def test_large_models_spill_new_tensors_to_external_data(tmp_path):
    from jq_autotune.model_io import ModelWriter

    model = residual_cnn(blocks=1, channels=16)
    writer = ModelWriter(tmp_path, "", model, inline_limit=1000)  # pretend the protobuf limit is 1 kB
    path = writer.save(model, "big.onnx")
    assert (tmp_path / "big.onnx.data").stat().st_size > 1000
    np.testing.assert_allclose(run(str(path)), run(model), rtol=1e-6)


def test_dynamic_dims_need_input_shapes(tmp_path):
    model = residual_cnn(blocks=1, batch="batch")
    with pytest.raises(ValueError, match=r"dynamic dimensions \['batch'\]; pass --input-shapes x:Nx3x16x16"):
        resolve_input_shapes(model, {})
    assert resolve_input_shapes(model, parse_input_shapes("x:4x3x16x16")) == {"x": (4, 3, 16, 16)}
    with pytest.raises(ValueError, match="fixes it to 3"):
        resolve_input_shapes(model, {"x": (1, 4, 16, 16)})
    with pytest.raises(ValueError, match="not model inputs"):
        resolve_input_shapes(model, {"y": (1,)})
    report, final = tune(model, tmp_path, input_shapes=parse_input_shapes("x:4x3x16x16"))
    assert final.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # stays dynamic
    run(final, np.repeat(X, 4, axis=0))


@pytest.mark.parametrize("text", ["x", "x:", "x:1x3xA", ":1x2", "x:1x0"])
def test_malformed_input_shapes(text):
    with pytest.raises(ValueError, match="malformed --input-shapes"):
        parse_input_shapes(text)


def test_shapes_taken_from_the_graph_when_static():
    assert resolve_input_shapes(residual_cnn(blocks=1, batch=2), {}) == {"x": (2, 3, 16, 16)}


@pytest.mark.parametrize("opset", [11, 21])
def test_opset_11_and_21_inputs(tmp_path, opset):
    model = residual_cnn(blocks=1, opset=opset)
    report, final = tune(model, tmp_path)
    version = next(o.version for o in final.opset_import if o.domain in ("", "ai.onnx"))
    assert version == max(opset, 13)  # INT8 per-channel Q/DQ needs 13
    if opset == 11:
        assert any("opset 11 -> 13" in n for n in report.notes)
    assert report.final_ms < report.baseline_ms
    run(final)


def test_unfolded_batchnorm_is_folded_first(tmp_path):
    model = residual_cnn(blocks=2, bn=True)
    report, final = tune(model, tmp_path)
    assert any("folded 4 BatchNormalization" in n for n in report.notes)
    baseline = onnx.load(tmp_path / "out" / "baseline.onnx")
    assert not any(n.op_type == "BatchNormalization" for n in baseline.graph.node)
    np.testing.assert_allclose(run(baseline), run(model), rtol=1e-4, atol=1e-4)
    assert report.final_ms < report.baseline_ms


def test_missing_and_invalid_models(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        tune(None, tmp_path, name="nope.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="cannot read"):
        tune(None, tmp_path, name="junk.onnx")


def test_exporter_style_bias_adds_and_zero_gemm_c_are_folded(tmp_path):
    """jax2onnx writes Conv without bias + Add, and Gemm(beta=0, C=0) + Add."""
    from graphs import Builder, fvi

    from jq_autotune.model_io import preprocess

    b = Builder()
    c = b.op("Add", [b.conv("x", 3, 8, bias=False), b.weight((1, 8, 1, 1), 0.5)])
    r = b.op("Relu", [c])
    f = b.op("Flatten", [b.op("GlobalAveragePool", [r])], axis=1)
    zero = b.weight((1, 4), value=np.zeros((1, 4)))
    gemm = b.op("Gemm", [f, b.weight((8, 4)), zero], beta=0.0)
    b.op("Add", [gemm, b.weight((1, 4), 0.5)])
    b.nodes[-1].output[0] = "y"
    model = b.model([fvi("x", [1, 3, 16, 16])], [fvi("y", [1, 4])])
    pre, notes = preprocess(model, "", 13, clean_gemm=True)
    assert "removed the all-zero C input of 1 Gemm node(s)" in notes
    assert "folded 2 constant bias Add node(s) into Conv/Gemm" in notes
    assert [n.op_type for n in pre.graph.node] == ["Conv", "Relu", "GlobalAveragePool", "Flatten", "Gemm"]
    np.testing.assert_allclose(run(pre), run(model), rtol=1e-5, atol=1e-6)
