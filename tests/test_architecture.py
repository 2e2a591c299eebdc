"""The architecture's rules, checked on the source (docs/architecture.md): dependencies point one way, formats are
objects, the core installs with jax, numpy and ml_dtypes only, and no library file grows into a god-file."""

import ast
import pathlib
import subprocess
import sys
import textwrap

import pytest

from jq import formats

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIBRARY = ("jq", "jq_kernels", "jq_autotune", "onnx_toolbox")
MAX_LINES = 560


def _py_files(*dirs):
    for d in dirs:
        base = ROOT / d
        if base.exists():
            yield from sorted(base.rglob("*.py"))


def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


def test_kernels_import_nothing_of_jq_but_numerics():
    bad = [(p.relative_to(ROOT), m) for p in _py_files("jq_kernels") for m in _imports(p)
           if (m == "jq" or m.startswith("jq.")) and not m.startswith("jq.numerics")]
    # "from jq import numerics" is the numerics package itself
    bad = [(p, m) for p, m in bad if m not in ("jq", "jq.numerics")]
    assert not bad, f"jq_kernels/ must import only jq.numerics from jq: {bad}"


def test_autotune_and_onnx_toolbox_never_import_jax_or_jq():
    bad = [(p.relative_to(ROOT), m) for p in _py_files("jq_autotune", "onnx_toolbox") for m in _imports(p)
           if m.split(".")[0] in ("jax", "jq", "jq_kernels", "flax")]
    assert not bad, bad


def _format_name_comparisons(path, names):
    tree = ast.parse(path.read_text())
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                consts = [side] if isinstance(side, ast.Constant) else (
                    list(side.elts) if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [])
                if any(isinstance(c, ast.Constant) and c.value in names for c in consts):
                    hits.append(node.lineno)
    return hits


def test_no_branch_on_a_format_name_outside_the_format_modules():
    names = {f.name for f in formats.FORMATS} | {"mxfp6", "e4m3", "e5m2"}
    hits = {str(p.relative_to(ROOT)): _format_name_comparisons(p, names) for p in _py_files("jq")
            if not str(p.relative_to(ROOT)).startswith(("jq/formats/", "jq/numerics/"))}
    hits = {k: v for k, v in hits.items() if v}
    assert not hits, f"compare with a format name outside jq/formats (use the format object): {hits}"


def test_no_library_file_is_a_god_file():
    big = {str(p.relative_to(ROOT)): n for p in _py_files(*LIBRARY) if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"split these along their ideas (limit {MAX_LINES} lines): {big}"


BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = {"onnx", "onnx_ir", "onnxruntime", "jax2onnx", "orbax", "safetensors", "flax", "optax", "tqdm",
               "yaml", "tokenizers", "matplotlib", "gguf", "tensorrt"}
    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: jq's core must not need it")
    sys.meta_path.insert(0, Blocker())
""")


def test_core_works_with_jax_numpy_and_ml_dtypes_only():
    """`pip install jq-quant` (no extras): import jq, quantize and run a plain JAX function, export lazily."""
    code = BLOCKER + textwrap.dedent("""
        import jax, jax.numpy as jnp, jq
        w = jax.random.normal(jax.random.key(0), (64, 32)); x = jax.random.normal(jax.random.key(1), (8, 64))
        for cfg in (jq.INT8_DEFAULT_CFG, jq.NVFP4_DEFAULT_CFG, jq.INT4_AWQ_CFG):
            qm = jq.quantize({"w": w}, lambda p, x: x @ p["w"], cfg, calib_data=[(x,)])
            y = jax.jit(qm.apply)(qm.params, x)
            assert float(jnp.abs(y - x @ w).max()) < 0.5 * float(jnp.abs(x @ w).max())
        jq.print_quant_summary(qm)
        try:
            jq.export.to_onnx
        except ImportError as e:
            print("export needs extras:", e)
        print("core ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "core ok" in r.stdout and "export needs extras" in r.stdout


@pytest.mark.parametrize("module", ["jq", "jq.calib.algorithms", "jq.formats", "jq.backends", "jq_kernels.w4a16"])
def test_every_module_imports_on_its_own(module):
    """No import cycle: each layer imports first in a fresh interpreter."""
    r = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, cwd=ROOT,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
