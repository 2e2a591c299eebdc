"""The fp8_decode GPU section's harness end to end on CPU (kernel in interpret mode; timings have no meaning)."""

import pytest

from jq_kernels import fp8_decode as D


def test_sweep_checks_every_method_against_w8a8_and_picks_a_best_config(tmp_path, monkeypatch):
    monkeypatch.setattr("benchmarks.kernel_bench.common.OUT", str(tmp_path))
    from benchmarks.kernel_bench import fp8_decode_sweep as S

    cfgs = D.parse_configs("fp8:32,64,0,4,2;bf16:32,64,2,4,2")
    wcfgs = (S.WG.FP8WgmmaConfig(), S.WG.FP8WgmmaConfig(rows=2))
    rec = S.fp8_decode_sweep(cfgs, batches=(3,), decode_shape=("decode", 64, 128),
                             layer_shapes=(("k_v", 32, 128),), iters=1, max_copies=2, wgmma_configs=wcfgs)
    rows = {(r["shape"], r["method"]): r for r in rec["rows"]}
    assert rec["harness_only"] and (tmp_path / "fp8_decode_sweep.json").exists()
    for c in cfgs:
        r = rows[("decode", f"kernel:{c.name}")]
        assert r["rel_err_vs_w8a8"] < 1e-6 and r["rel_err_vs_dequant"] < 1e-6
        assert r["finite"] and r["copies"] == 2 and "GBps" in r
    assert rows[("decode", "dequant")]["rel_err_vs_w8a8"] < 1e-6
    best = rec["best"][3]["config"]
    assert best in [c.name for c in cfgs]
    # the Mosaic kernel needs a GPU: its cells are listed as skipped, so it has no best and its default runs next
    assert all(rows[("decode", f"wgmma:{c.name}")]["skipped"] == "needs a GPU" for c in wcfgs)
    assert rec["best_wgmma_by_shape"]["decode"] == {}
    # the layer shape runs the decode shape's best config of each kernel
    assert {m for s, m in rows if s == "k_v"} == {"bf16", "w8a8", "dequant", f"kernel:{best}",
                                                  f"wgmma:{wcfgs[0].name}"}
    assert "best kernel config at the decode shape, B=3" in rec["summary"]


def test_budget_skips_cells_instead_of_starting_them(tmp_path, monkeypatch):
    monkeypatch.setattr("benchmarks.kernel_bench.common.OUT", str(tmp_path))
    from benchmarks.kernel_bench import fp8_decode_sweep as S

    rec = S.fp8_decode_sweep(D.parse_configs("fp8:32,64,0,4,2"), batches=(1,), decode_shape=("decode", 64, 128),
                             layer_shapes=(("k_v", 32, 128),), budget_s=-1, iters=1, max_copies=2)
    assert rec["rows"] and all("skipped" in r for r in rec["rows"])
    assert rec["best"] == {}


@pytest.mark.parametrize("spec", ["fp8:128,256", "fp8:48,256,0,4,4"])
def test_bad_sweep_configs_fail_before_any_work(spec):
    with pytest.raises(ValueError):
        D.parse_configs(spec)


def test_llm_fp8_kernel_variant_takes_the_sweeps_most_frequent_best_config(tmp_path, monkeypatch):
    import json

    from benchmarks import llm_decode

    monkeypatch.setattr("benchmarks.kernel_bench.common.OUT", str(tmp_path))
    monkeypatch.setenv("JQ_FP8_DECODE_CFG", "sweep")
    assert llm_decode._decode_cfg() is None  # no sweep record: the kernel's default
    best = {"1": {"config": "bf16/n64k512s2w8p3"}, "8": {"config": "bf16/n64k512s2w8p3"},
            "32": {"config": "fp8/n128k256s0w4p4"}}
    (tmp_path / "section_fp8_decode.json").write_text(json.dumps({"best": best}))
    assert llm_decode._decode_cfg() == D.FP8DecodeConfig.from_name("bf16/n64k512s2w8p3")
    monkeypatch.setenv("JQ_FP8_DECODE_CFG", "fp8:64,256,4,2,3")
    assert llm_decode._decode_cfg().name == "fp8/n64k256s4w2p3"


def test_llm_fp8_wgmma_variant_takes_the_sweeps_most_frequent_best_config(tmp_path, monkeypatch):
    import json

    from benchmarks import llm_decode
    from jq_kernels.fp8_wgmma import FP8WgmmaConfig

    monkeypatch.setattr("benchmarks.kernel_bench.common.OUT", str(tmp_path))
    monkeypatch.setenv("JQ_FP8_WGMMA_CFG", "sweep:sweep.json")
    assert llm_decode._wgmma_cfg() is None  # no record: the kernel's default
    best = {"qkv": {"1": {"config": "wgmma/r2k256p4s0"}, "8": {"config": "wgmma/r1k512p3s0"}},
            "o": {"1": {"config": "wgmma/r2k256p4s0"}}, "down": {}}
    (tmp_path / "sweep.json").write_text(json.dumps({"best_wgmma_by_shape": best}))
    assert llm_decode._wgmma_cfg() == FP8WgmmaConfig(rows=2)
    monkeypatch.setenv("JQ_FP8_WGMMA_CFG", "1,512,3,2")
    assert llm_decode._wgmma_cfg().name == "wgmma/r1k512p3s2"


def test_wgmma_config_names_round_trip():
    from benchmarks.kernel_bench import fp8_decode_sweep as S
    from jq_kernels.fp8_wgmma import FP8WgmmaConfig

    for c in S.WGMMA_CONFIGS + (FP8WgmmaConfig(min_steps=2, ctas_per_sm=3),):
        assert FP8WgmmaConfig.from_name(c.name) == c
    with pytest.raises(ValueError, match="not a config name"):
        FP8WgmmaConfig.from_name("wgmma-1-256")


def test_config_names_round_trip():
    for c in D.CONFIGS:
        assert D.FP8DecodeConfig.from_name(c.name) == c
    with pytest.raises(ValueError, match="not a config name"):
        D.FP8DecodeConfig.from_name("fp8-128-256")


def test_every_config_mode_times_each_config_at_each_layer_shape_and_picks_a_best_per_shape(tmp_path, monkeypatch):
    monkeypatch.setattr("benchmarks.kernel_bench.common.OUT", str(tmp_path))
    from benchmarks.kernel_bench import fp8_decode_sweep as S

    cfgs = D.parse_configs("fp8:32,64,0,4,2;bf16:32,64,2,4,2")
    rec = S.fp8_decode_sweep(cfgs, batches=(2,), decode_shape=None, layer_shapes=(("qkv", 48, 128), ("o", 32, 64)),
                             iters=1, max_copies=2, every_config=True, wgmma_configs=())
    methods = {(r["shape"], r["method"]) for r in rec["rows"]}
    assert not any(s == "decode" for s, _ in methods)  # decode_shape=None: skipped
    for shape in ("qkv", "o"):
        assert {m for s, m in methods if s == shape} == {"bf16", "w8a8", "dequant"} | {f"kernel:{c.name}" for c in cfgs}
        assert rec["best_by_shape"][shape][2]["config"] in [c.name for c in cfgs]
    assert "best at o, B=2" in rec["summary"]


def test_cli_sweeps_the_fused_8b_layer_shapes_under_its_budget(tmp_path, monkeypatch):
    monkeypatch.setattr("benchmarks.kernel_bench.common.OUT", str(tmp_path))
    from benchmarks.kernel_bench import fp8_decode_sweep as S

    rec = S.main(["--batches", "1", "--every-config", "--budget-s", "-1", "--configs", "fp8:32,64,0,4,2",
                  "--wgmma-configs", "2,256,4,0"])
    assert [r["shape"] for r in rec["rows"]] == [s[0] for s in S.FUSED_LAYER_SHAPES]
    assert rec["configs"] == ["kernel:fp8/n32k64s0w4p2", "wgmma:wgmma/r2k256p4s0"]
    assert all(r["skipped"] == "budget" for r in rec["rows"])
