"""Run Python code in a fresh interpreter where some top-level packages cannot be imported.

A meta-path finder placed first on ``sys.meta_path`` raises ``ModuleNotFoundError`` for the blocked packages
and their submodules, as if they were not installed; at exit the code checks that none of them got into
``sys.modules`` by another route. Used to prove that ``onnx_toolbox`` and ``jq_autotune`` need no JAX.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: JAX and everything that is only installed for it
JAX_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax", "jax2onnx", "chex")

_PRELUDE = """
import importlib.abc, sys
BLOCKED = {blocked!r}

class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, _Blocked())
"""

_EPILOGUE = """
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not leaked, f"blocked packages were imported: {leaked}"
print("NO_BLOCKED_IMPORTS")
"""


def run_without(code: str, blocked=JAX_PACKAGES, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    """Run ``code`` with ``blocked`` unimportable (the worktree root first on ``sys.path``); returns the process."""
    script = _PRELUDE.format(blocked=tuple(blocked)) + textwrap.dedent(code) + _EPILOGUE
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd or ROOT,
                          env=env, timeout=timeout)
