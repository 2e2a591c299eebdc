"""The ``jq`` command, on a tiny synthetic Fashion-MNIST-format dataset (the real run is in the README)."""

import gzip
import struct

import numpy as np
import pytest

from jq.cli import main
from jq_zoo.fashion_mnist import load_fashion_mnist


def _write_idx(path, array):
    header = b"\x00\x00\x08" + bytes([array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_dataset(tmp_path, rng):
    for split, n in (("train", 512), ("t10k", 256)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 50, (n, 28, 28))
        images[np.arange(n), labels * 2, :] = 255  # a learnable stripe per class
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", images)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", labels)
    return tmp_path


def test_idx_loader(tiny_dataset):
    x, y = load_fashion_mnist("test", tiny_dataset)
    assert x.shape == (256, 28, 28, 1) and x.dtype == np.float32 and x.max() == 1.0
    assert y.shape == (256,) and y.dtype == np.int32


def test_missing_dataset_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", tmp_path)


def test_quantize_command_trains_caches_and_reports(tiny_dataset, tmp_path, capsys):
    argv = ["quantize", "--data-dir", str(tiny_dataset), "--cache-dir", str(tmp_path / "cache"), "--epochs", "1",
            "--calib-batches", "2", "--calib-batch-size", "64", "--preset", "INT8_DEFAULT_CFG",
            "--preset", "NVFP4_DEFAULT_CFG"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "conv1.weight_quantizer" in out and "nvfp4 b16" in out
    table = out.split("results")[1]
    accs = {line.split()[0]: float(line.split()[2].rstrip("%")) for line in table.splitlines()[2:] if line.strip()}
    assert set(accs) == {"float32", "INT8_DEFAULT_CFG", "NVFP4_DEFAULT_CFG"}
    assert accs["float32"] > 50  # the stripe is learnable
    assert abs(accs["INT8_DEFAULT_CFG"] - accs["float32"]) < 5
    assert list((tmp_path / "cache").glob("fashion_cnn_*.msgpack"))  # trained once, cached


def test_presets_command(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "NVFP4_DEFAULT_CFG" in out and "nvfp4 b16" in out and "awq_lite" in out


def test_missing_data_exit_code(tmp_path, capsys):
    assert main(["quantize", "--data-dir", str(tmp_path), "--cache-dir", str(tmp_path)]) == 1
    assert "dataset-fashion-mnist" in capsys.readouterr().err


# -- output hygiene (issue 11 item 9) -------------------------------------------------------------------------

def test_help_lists_each_subcommand_with_its_description(capsys):
    from jq.cli import _COMMANDS

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    for name, description in _COMMANDS:
        assert any(line.split() == [name] + description.split() for line in lines), name


def test_every_option_of_every_subcommand_has_help_text():
    import argparse

    from jq.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and action.help.strip(), f"{name} {action.option_strings[0]} has no help"
