"""The training-recipe benchmark scripts run end to end in their --smoke mode (tiny models, CPU)."""

import json
import math

import pytest

pytest.importorskip("optax")


def test_convergence_smoke_trains_every_run_on_the_same_batches(tmp_path):
    from benchmarks.training import convergence

    rec = convergence.main(["--smoke", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "convergence.json").read_text())
    assert list(saved["runs"]) == list(convergence.SMOKE_RUNS) == list(rec["runs"])
    steps = saved["config"]["steps"]
    for name, r in saved["runs"].items():
        assert [s for s, _ in r["train_curve"]] == list(range(1, steps + 1)), name
        assert math.isfinite(r["val_loss"]) and r["val_curve"][-1][0] == steps
    first = {name: r["train_curve"][0][1] for name, r in saved["runs"].items()}
    # step 1 of every run sees the same init and batch: losses agree to the recipes' quantization error
    assert max(first.values()) - min(first.values()) < 0.1
    assert saved["runs"]["nvfp4"]["val_loss"] != saved["runs"]["bf16"]["val_loss"]  # the recipe ran
    # the precision-switch run is the nvfp4 run up to its switch (same key and batches), then bf16
    tail, plain = saved["runs"]["nvfp4_bf16_tail"], saved["runs"]["nvfp4"]
    switch = tail["tail_from_step"]
    assert 0 < switch < steps and switch == steps - saved["run_specs"]["nvfp4_bf16_tail"]["tail_steps"]
    assert [v for s, v in tail["val_curve"] if s <= switch] == [v for s, v in plain["val_curve"] if s <= switch]
    assert tail["val_loss"] != plain["val_loss"] and tail["val_loss"] == tail["val_loss_bf16_forward"]


def test_step_time_smoke_times_bf16_and_a_recipe(tmp_path):
    from benchmarks.training import step_time

    # bf16 (always run first, the baseline) and one recipe: the timing code is the same for every recipe, and
    # the stateful fp8_delayed recipe is trained in the convergence smoke above (its state carried over steps)
    rec = step_time.main(["--smoke", "--runs", "nvfp4", "--out", str(tmp_path)])
    runs = json.loads((tmp_path / "step_time.json").read_text())["runs"]
    assert list(runs) == ["bf16", "nvfp4"] == list(rec["runs"])
    assert all(r["step_ms"] > 0 and math.isfinite(r["loss"]) for r in runs.values())
    assert runs["nvfp4"]["breakdown_mlp_up"]["quantize_ms"] > 0 and "quantize_ms" not in runs["bf16"]["breakdown_mlp_up"]
    assert runs["bf16"]["hlo"]["cublaslt_f8"] == 0  # no FP8 GEMM on CPU, nor in the bf16 baseline


def test_qat_recovery_smoke_reports_fixed_and_learnable_amax(tmp_path):
    from benchmarks.training import qat_recovery

    rec = qat_recovery.main(["--smoke", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "qat_recovery.json").read_text())
    for k in ("ppl_pretrained", "ppl_ptq", "ppl_float_finetune", "ppl_qat"):
        assert math.isfinite(saved[k]) and saved[k] > 1.0, k
    assert saved["ppl_ptq"] != saved["ppl_pretrained"]  # NVFP4 PTQ changed the model
    assert list(saved["qat"]) == ["fixed", "learnable", "qad"]
    gap = saved["ppl_ptq"] - saved["ppl_float_finetune"]
    for mode, r in saved["qat"].items():
        assert len(r["losses"]) == len(saved["float_losses"]) == saved["config"]["steps"], mode
        assert r["recovery"] == pytest.approx((saved["ppl_ptq"] - r["ppl"]) / gap), mode
    assert rec["recovery"] == saved["qat"]["fixed"]["recovery"]
    assert max(saved["qat"]["learnable"]["amax_relative_change_max"].values()) > 0  # the amaxes were trained
    assert saved["qat"]["learnable"]["ppl"] != saved["qat"]["fixed"]["ppl"]
    # QAD trains on the KL to the float model (>= 0, unlike the label cross-entropy it replaces)
    assert all(v >= -1e-6 for v in saved["qat"]["qad"]["losses"])
    assert saved["qat"]["qad"]["losses"] != saved["qat"]["fixed"]["losses"]


def test_qat_recovery_schedules_start_at_the_peak_and_decay_to_zero():
    from benchmarks.training.qat_recovery import SCHEDULES

    assert SCHEDULES["constant"](1e-4, 100) == 1e-4
    for name in ("cosine", "linear"):
        sched = SCHEDULES[name](1e-4, 100)
        assert float(sched(0)) == pytest.approx(1e-4), name
        assert float(sched(50)) == pytest.approx(5e-5), name  # both are at half the peak halfway
        assert float(sched(100)) == pytest.approx(0.0, abs=1e-12), name


def test_fprop_operand_diagnostics_quantize_exactly_their_one_slot():
    from benchmarks.training import fprop_operands
    from jq.recipes import GemmPlan, NVFP4BlockScaling, NVFP4Operand

    fprop_operands.register()
    for name, slots in fprop_operands.RUN_SLOTS.items():
        plan = fprop_operands.common.RUNS[name].recipe.plan()
        assert {s for s in GemmPlan.SLOTS if isinstance(getattr(plan, s), NVFP4Operand)} == set(slots)
    spec = fprop_operands.QuantizedSlots(recipe=NVFP4BlockScaling(), slots=("fprop_x",))
    assert not hasattr(spec, "gemms")  # no inherited field it would ignore
    assert spec.needs_key == NVFP4BlockScaling().needs_key and spec.stateful == NVFP4BlockScaling().stateful
    with pytest.raises(ValueError, match="fprop_q"):
        fprop_operands.QuantizedSlots(recipe=NVFP4BlockScaling(), slots=("fprop_q",))
