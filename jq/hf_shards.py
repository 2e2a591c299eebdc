"""Hugging Face's sharded safetensors layout: one ``model.safetensors``, or shards with an index.

A directory holds ``model.safetensors`` when every tensor fits in one shard, else
``model-0000k-of-0000n.safetensors`` files and ``model.safetensors.index.json``
(``{"metadata": {"total_size": bytes}, "weight_map": {tensor name: shard file}}``), as ``transformers``
writes it. Tensors keep their order; a shard closes when the next tensor would take it past ``max_bytes``
(a tensor larger than ``max_bytes`` gets a shard of its own). This module needs only the standard library:
the caller passes the function that writes one shard (``safetensors.numpy`` / ``safetensors.flax``).

Example:
  >>> import numpy as np
  >>> [list(s) for s in split_shards({"a": np.zeros(4, np.float32), "b": np.zeros(4, np.float32)}, 20)]
  [['a'], ['b']]
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = ["INDEX_FILE", "SINGLE_FILE", "split_shards", "shard_file_names", "write_shards"]

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def split_shards(tensors: Mapping, max_bytes: int | None) -> list[dict]:
    """``tensors`` (name -> array with ``nbytes``) in order, cut into shards of at most ``max_bytes`` each
    (``None``: one shard). A shard closes before the tensor that would make its size exceed ``max_bytes``.

    Example:
      >>> import numpy as np
      >>> [list(s) for s in split_shards({"a": np.zeros(2), "b": np.zeros(2), "c": np.zeros(8)}, 32)]
      [['a', 'b'], ['c']]
    """
    shards, current, size = [], {}, 0
    for name, v in tensors.items():
        if current and max_bytes is not None and size + v.nbytes > max_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = v
        size += v.nbytes
    shards.append(current)
    return shards


def shard_file_names(n: int) -> list[str]:
    """The file names of ``n`` shards: ``model.safetensors`` alone, else ``model-0000k-of-0000n.safetensors``.

    Example:
      >>> shard_file_names(2)
      ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']
    """
    if n == 1:
        return [SINGLE_FILE]
    return [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]


def write_shards(directory: str | Path, tensors: Mapping, max_bytes: int | None,
                 save: Callable[[dict, str], None]) -> list[str]:
    """Write ``tensors`` into ``directory`` in the layout above: ``save(shard, file_path)`` writes each shard,
    then the index is written when there is more than one. Returns the shard file names.

    Example:
      >>> from safetensors.numpy import save_file
      >>> write_shards("out", flat, 5 * 2 ** 30, lambda shard, f: save_file(shard, f, metadata={"format": "pt"}))
      ['model.safetensors']
    """
    directory = Path(directory)
    shards = split_shards(tensors, max_bytes)
    files = shard_file_names(len(shards))
    for f, shard in zip(files, shards):
        save(shard, str(directory / f))
    if len(shards) > 1:
        weight_map = {n: f for f, shard in zip(files, shards) for n in shard}
        index = {"metadata": {"total_size": int(sum(v.nbytes for v in tensors.values()))}, "weight_map": weight_map}
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return files
