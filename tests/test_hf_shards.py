"""jq.hf_shards: transformers' sharded safetensors layout (one file, or shards and an index)."""

import json

import numpy as np
from safetensors.numpy import load_file, save_file

from jq.hf_shards import INDEX_FILE, SINGLE_FILE, shard_file_names, split_shards, write_shards


def _t(n_float32):
    return np.arange(n_float32, dtype=np.float32)


def test_split_keeps_order_and_closes_a_shard_before_the_tensor_that_would_pass_the_limit():
    tensors = {"a": _t(2), "b": _t(2), "c": _t(3), "d": _t(1)}  # 8, 8, 12, 4 bytes
    assert [list(s) for s in split_shards(tensors, 16)] == [["a", "b"], ["c", "d"]]


def test_a_tensor_larger_than_the_limit_gets_a_shard_of_its_own():
    tensors = {"a": _t(1), "big": _t(100), "b": _t(1)}
    assert [list(s) for s in split_shards(tensors, 8)] == [["a"], ["big"], ["b"]]


def test_no_limit_or_an_exact_fit_is_one_shard():
    tensors = {"a": _t(2), "b": _t(2)}
    assert [list(s) for s in split_shards(tensors, None)] == [["a", "b"]]
    assert [list(s) for s in split_shards(tensors, 16)] == [["a", "b"]]


def test_an_empty_dict_is_one_empty_shard():
    assert split_shards({}, 16) == [{}]


def test_shard_file_names_follow_transformers():
    assert shard_file_names(1) == [SINGLE_FILE]
    assert shard_file_names(3)[1] == "model-00002-of-00003.safetensors"


def _save(shard, f):
    save_file(shard, f, metadata={"format": "pt"})


def test_write_shards_single_file_has_no_index(tmp_path):
    tensors = {"a": _t(2), "b": _t(3)}
    assert write_shards(tmp_path, tensors, None, _save) == [SINGLE_FILE]
    assert not (tmp_path / INDEX_FILE).exists()
    back = load_file(str(tmp_path / SINGLE_FILE))
    assert list(back) == ["a", "b"] and np.array_equal(back["b"], tensors["b"])


def test_write_shards_writes_the_index_with_total_size_and_weight_map(tmp_path):
    tensors = {"a": _t(2), "b": _t(2), "c": _t(3)}
    files = write_shards(tmp_path, tensors, 16, _save)
    assert files == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert index["metadata"]["total_size"] == 28
    assert index["weight_map"] == {"a": files[0], "b": files[0], "c": files[1]}
    assert np.array_equal(load_file(str(tmp_path / files[1]))["c"], tensors["c"])
