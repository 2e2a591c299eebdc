"""The shared setup of the training benchmarks and the GPU suite's budget handling (no compiles)."""

import argparse
import json

import pytest

from benchmarks.training import common, gpu_suite


def test_fill_defaults_takes_the_smoke_or_full_table_and_keeps_given_values():
    args = argparse.Namespace(smoke=True, width=None, layers=3)
    common.fill_defaults(args, {"width": 32, "layers": 1}, {"width": 4096, "layers": 2})
    assert (args.width, args.layers) == (32, 3)
    args = argparse.Namespace(smoke=False, width=None, layers=None)
    common.fill_defaults(args, {"width": 32, "layers": 1}, {"width": 4096, "layers": 2})
    assert (args.width, args.layers) == (4096, 2)


def test_parse_runs_keeps_order_and_names_unknown_runs():
    assert common.parse_runs("nvfp4, bf16", ()) == ["nvfp4", "bf16"]
    assert common.parse_runs(None, ("bf16", "mxfp8")) == ["bf16", "mxfp8"]
    with pytest.raises(SystemExit, match="fp9"):
        common.parse_runs("bf16,fp9", ())


def test_budget_and_groups():
    assert common.Budget(None).allows(1e12)
    assert not common.Budget(1.0).allows(5.0) and common.Budget(10.0).allows(1.0)
    assert common.groups(["a", "b", "c", "d", "e"], 2) == [["a", "b"], ["c", "d"], ["e"]]
    assert common.groups(["a"], 0) == [["a"]]


def test_gpu_suite_skips_a_section_that_its_budget_cannot_hold(tmp_path):
    rec = gpu_suite.main(["--sections", "qat_recovery", "--budget-s", "10", "--out", str(tmp_path),
                          "--keep-xla-flags"])
    saved = json.loads((tmp_path / "training_suite.json").read_text())
    assert saved["sections"]["qat_recovery"] == rec["sections"]["qat_recovery"]
    assert saved["sections"]["qat_recovery"]["skipped"].startswith("budget")
    with pytest.raises(SystemExit):
        gpu_suite.main(["--sections", "nope", "--out", str(tmp_path)])


def test_skip_group_records_every_run_and_rewrites_the_json(tmp_path):
    import json

    from benchmarks.training.common import skip_group

    path = str(tmp_path / "r.json")
    record = {"runs": {"bf16": {}}, "skipped": {}}
    skip_group(record, ["nvfp4", "mxfp8"], "budget: 3 s left", path)
    assert record["skipped"] == {"nvfp4": "budget: 3 s left", "mxfp8": "budget: 3 s left"}
    assert json.loads(open(path).read())["skipped"] == record["skipped"]


def test_run_spec_excludes_the_last_blocks_and_lm_head():
    run = common.RunSpec(recipe=None, bf16_last_blocks=1)
    assert run.exclude(2) == ("lm_head", "h_1.*")
    assert common.RunSpec(recipe=None, bf16_last_blocks=3).exclude(2) == ("lm_head", "h_0.*", "h_1.*")
    assert common.RUNS["nvfp4"].exclude(4) == common.EXCLUDE


def test_run_spec_tail_is_whole_chunks_at_least_one_never_all():
    tail = common.RunSpec(recipe=None, tail_fraction=0.2)
    assert tail.tail_steps(1000, 100) == 200  # the paper's last ~18-20 % of the tokens
    assert tail.tail_steps(4, 2) == 2  # at least one chunk (smoke sizes)
    assert common.RunSpec(recipe=None, tail_fraction=0.99).tail_steps(300, 100) == 200  # one chunk before
    assert common.RunSpec(recipe=None).tail_steps(1000, 100) == 0


def test_lever_runs_keep_te_defaults_and_bars_name_them_nvfp4():
    from jq import recipes as R

    for name in ("nvfp4_bf16_tail", "nvfp4_fprop_tail", "nvfp4_bf16_last_block"):
        assert common.RUNS[name].recipe == R.NVFP4BlockScaling() and common.bar_of(name) == 3.0
    assert common.RUNS["nvfp4_bf16_tail"].tail_recipe is None
    assert common.RUNS["nvfp4_fprop_tail"].tail_recipe.gemms == ("fprop",)
    assert list(common.RECIPES) == list(common.RUNS)
