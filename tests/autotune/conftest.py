"""Test setup: import this worktree's ``jq_autotune`` (not another installed copy)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
for p in (str(HERE), str(ROOT)):
    if p in sys.path:
        sys.path.remove(p)
    sys.path.insert(0, p)
for name in [m for m in sys.modules if m == "jq_autotune" or m.startswith("jq_autotune.")]:
    del sys.modules[name]
