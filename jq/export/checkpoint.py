"""Orbax checkpoints of a :class:`~jq.QuantizedModel`: params and quantizer state, bit for bit.

A checkpoint directory holds::

    state/               orbax (OCDBT) checkpoint of {"params": qm.params, "qstate": qm.qstate}
    jq_quantized.json    {"format": "jq.QuantizedModel", "version": 1, "jq_version": ..., "config": cfg.to_dict()}

Functions are not serialised: :func:`load` takes the ``apply_fn`` again (the same function the model was
quantized with), rebuilds the :class:`~jq.QuantizedModel` and re-traces lazily on the first call (or at once
with ``example_args``). Arrays come back with their dtypes and bits unchanged. Params are restored as nested
dicts unless ``params_like`` (a pytree of the same structure, e.g. an ``nnx.State`` or abstract arrays) is
given.

Example:
  >>> jq.export.save(qm, "/tmp/ckpt")
  >>> qm2 = jq.export.load("/tmp/ckpt", model.apply)
  >>> y = qm2.apply(qm2.params, x)
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import jax
import orbax.checkpoint as ocp

import jq
from jq.config import QuantConfig
from jq.model import QuantizedModel

__all__ = ["save", "load", "METADATA_FILE"]

METADATA_FILE = "jq_quantized.json"
_FORMAT, _VERSION = "jq.QuantizedModel", 1


def save(qm: QuantizedModel, path: str | os.PathLike, *, force: bool = False) -> Path:
    """Write ``qm``'s params, quantizer state and config to the directory ``path``.

    Args:
      qm: the model.
      path: a directory (created; must not exist unless ``force``).
      force: replace an existing directory.

    Returns:
      The absolute path written.

    Example:
      >>> jq.export.save(qm, "/tmp/ckpt", force=True)
    """
    path = Path(path).absolute()
    if path.exists():
        if not force:
            raise FileExistsError(f"{path} exists; pass force=True to overwrite it")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(path / "state", {"params": qm.params, "qstate": qm.qstate})
    ckpt.wait_until_finished()
    meta = {"format": _FORMAT, "version": _VERSION, "jq_version": jq.__version__, "config": qm.config.to_dict(),
            "apply_fn": getattr(qm.apply_fn, "__qualname__", repr(qm.apply_fn))}
    (path / METADATA_FILE).write_text(json.dumps(meta, indent=2))
    return path


def load(path: str | os.PathLike, apply_fn: Callable, *, params_like=None,
         example_args: tuple | None = None) -> QuantizedModel:
    """Read a checkpoint written by :func:`save` into a usable :class:`~jq.QuantizedModel`.

    Args:
      path: the checkpoint directory.
      apply_fn: the model function (functions are not stored in checkpoints).
      params_like: optional pytree with the params' structure to restore into (default: nested dicts).
      example_args: optional inputs to trace the model with now (otherwise it is traced on first use).

    Example:
      >>> qm = jq.export.load("/tmp/ckpt", model.apply)   # the same apply_fn the model was quantized with
    """
    path = Path(path).absolute()
    meta_file = path / METADATA_FILE
    if not meta_file.exists():
        raise FileNotFoundError(f"{path} is not a jq checkpoint (no {METADATA_FILE})")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
        raise ValueError(f"{meta_file}: unsupported checkpoint format {meta.get('format')!r} "
                         f"version {meta.get('version')!r}")
    restored = ocp.StandardCheckpointer().restore(path / "state")
    params = restored["params"]
    if params_like is not None:
        params = _restore_into(params, params_like)
    config = QuantConfig.from_dict(meta["config"])
    qm = QuantizedModel.create(params, apply_fn, config, restored.get("qstate") or {})
    if example_args is not None:
        qm.trace(*example_args)
    return qm


def _restore_into(restored, like):
    """Put restored leaves into ``like``'s structure, matching them by key path."""
    by_path = {jax.tree_util.keystr(_normalise(p)): v for p, v in jax.tree_util.tree_leaves_with_path(restored)}
    out = []
    for p, _ in jax.tree_util.tree_leaves_with_path(like):
        key = jax.tree_util.keystr(_normalise(p))
        if key not in by_path:
            raise ValueError(f"params_like leaf {key} is not in the checkpoint")
        out.append(by_path[key])
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), out)


def _normalise(path):
    """Key paths as dict keys (orbax restores every node as a dict), so structures compare by names."""
    return tuple(jax.tree_util.DictKey(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))))
                 for k in path)
