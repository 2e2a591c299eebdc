"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (``apt-get install dataset-fashion-mnist``).

The package installs the original gzip'd IDX files under ``/usr/share/datasets/fashion-mnist``. No download
happens here: if the files are missing, the error says how to install them.
"""

from __future__ import annotations

import gzip
import os
import pathlib

import numpy as np

__all__ = ["DEFAULT_DIR", "CLASSES", "load_fashion_mnist"]

DEFAULT_DIR = pathlib.Path(os.environ.get("JQ_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _read_idx(path: pathlib.Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\x00\x00" or data[2] != 8:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(split: str = "train", data_dir: str | os.PathLike | None = None):
    """``(images, labels)``: images float32 in [0, 1] of shape ``(n, 28, 28, 1)``, labels int32.

    Example:
      >>> x, y = load_fashion_mnist("test")   # doctest: +SKIP
      >>> x.shape, y[:3]
      ((10000, 28, 28, 1), array([9, 2, 1], dtype=int32))
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = pathlib.Path(data_dir) if data_dir is not None else DEFAULT_DIR
    img_name, lbl_name = _FILES[split]
    if not (root / img_name).exists():
        raise FileNotFoundError(f"Fashion-MNIST not found in {root}: install it with "
                                f"`apt-get install dataset-fashion-mnist` or set JQ_FASHION_MNIST_DIR")
    images = _read_idx(root / img_name).astype(np.float32)[..., None] / 255.0
    labels = _read_idx(root / lbl_name).astype(np.int32)
    return images, labels
