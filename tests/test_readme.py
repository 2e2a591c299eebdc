"""The README's quick start runs as written."""

import pathlib

README = pathlib.Path(__file__).parents[1] / "README.md"


def test_quick_start_runs():
    text = README.read_text()
    code = text.split("## Quick start")[1].split("```python")[1].split("```")[0]
    namespace: dict = {}
    exec(compile(code, "README quick start", "exec"), namespace)
    qm = namespace["qm"]
    assert qm.spec("layers_2.weight_quantizer") is None and qm.spec("layers_0.weight_quantizer") is not None
    assert namespace["y"].shape == (32, 10)
