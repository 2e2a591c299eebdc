"""Cache files that concurrent processes (e.g. pytest-xdist workers) can fill at the same time.

Every writer works on a private temporary name in the target directory and ``os.replace``-s it into
place (atomic on one filesystem), so a reader sees either no file or a whole one; when two processes
race, the last complete copy wins and both are identical.

Example:
  >>> write_bytes_atomic(Path("~/.cache/jq/x.bin").expanduser(), b"...")
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Create ``path`` from ``write(f)`` on a private temporary file, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """``path.write_bytes(data)``, atomically (see the module doc)."""
    return write_atomic(path, lambda f: f.write(data))


def pip_download_atomic(pip_args: list[str], filename: str, dest: Path) -> Path:
    """``pip download <pip_args>`` into a private directory, then move ``filename`` to ``dest/filename``.

    Raises:
        FileNotFoundError: pip did not produce ``filename``.
        subprocess.CalledProcessError: pip failed.
    """
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".pip-download-", dir=dest))
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", *pip_args, "-d", str(tmp), "--quiet"], check=True)
        if not (tmp / filename).exists():
            raise FileNotFoundError(f"pip download {' '.join(pip_args)} did not produce {filename}")
        os.replace(tmp / filename, dest / filename)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest / filename
