"""auto_quantize: the exact solver, monotone scores, the gradient score's definition (and per layer in a layer
scan), KL scores, siblings choosing together, the budget, the resulting model, the report and the score file."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jq
from jq.presets import with_output_head
from jq.calib.auto_quantize import solve
from jq.calib.auto_quantize.scores import monotone

INT4 = with_output_head(jq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG)  # 4.125 bits (blocks of 128 with a 16-bit scale)
INT4_G16 = jq.merge_presets(INT4, {"quant_cfg": {"*weight_quantizer": {"num_bits": 4, "block_sizes": {-1: 16},
                                                                       "enable": True}}})  # 5 bits
INT8 = with_output_head(jq.INT8_WEIGHT_ONLY_CFG)  # 8 bits


# -- the solver ----------------------------------------------------------------------------------------------
def brute_force(costs, scores, budget):
    best = None
    for ks in itertools.product(*[range(len(c)) for c in costs]):
        c = sum(cs[k] for cs, k in zip(costs, ks))
        s = sum(ss[k] for ss, k in zip(scores, ks))
        if c <= budget and (best is None or (s, c) < best[:2]):
            best = (s, c, ks)
    return best


def test_solver_is_exact_on_small_cases():
    rng = np.random.default_rng(0)
    for _ in range(300):
        g, k = int(rng.integers(1, 6)), int(rng.integers(1, 4))
        costs = [rng.integers(1, 6, k).astype(float) for _ in range(g)]
        scores = [np.round(rng.random(k), 1) for _ in range(g)]  # rounded: ties happen
        lo, hi = sum(c.min() for c in costs), sum(c.max() for c in costs)
        budget = float(rng.uniform(lo, hi))
        picks = solve(costs, scores, budget)
        s, c, _ = brute_force(costs, scores, budget)
        got_s = sum(ss[p] for ss, p in zip(scores, picks))
        got_c = sum(cs[p] for cs, p in zip(costs, picks))
        assert got_s == pytest.approx(s, abs=1e-12) and got_c <= budget
        assert got_c == pytest.approx(c)  # among equal scores, the cheapest


def test_solver_budget_below_the_cheapest_choice_raises():
    with pytest.raises(ValueError, match="budget 1.5 is below the cheapest choice 2.0"):
        solve([np.array([1.0, 2.0])] * 2, [np.array([1.0, 0.0])] * 2, 1.5)


def test_monotone_scores_never_increase_with_cost():
    costs = np.array([4.5, 8.0, 4.125, 16.0, 8.0])
    raw = np.array([1.0, 2.0, 3.0, 0.5, 0.1])
    got = monotone(costs, raw)
    np.testing.assert_array_equal(got, [1.0, 1.0, 3.0, 0.1, 0.1])  # 8-bit options capped by the 4.5-bit one
    order = np.argsort(costs, kind="stable")
    assert all(got[order[j]] <= got[order[i]] for i in range(5) for j in range(i, 5) if costs[order[j]] > costs[order[i]])


# -- models ---------------------------------------------------------------------------------------------------
class QKVMLP(nn.Module):
    """Two siblings reading one input (``q``, ``k``) and a projection after them."""

    @nn.compact
    def __call__(self, x):
        h = jnp.tanh(nn.Dense(32, name="q")(x)) * nn.Dense(32, name="k")(x)
        return nn.Dense(16, name="o")(h)


@pytest.fixture(scope="module")
def qkv():
    rng = np.random.default_rng(0)
    x = [jnp.asarray(rng.standard_normal((8, 32)), jnp.float32) for _ in range(2)]
    m = QKVMLP()
    params = m.init(jax.random.key(0), x[0])
    t = [m.apply(params, xi) + 0.1 for xi in x]
    data = list(zip(x, t))
    return params, m.apply, data


def mse_loss(out, batch):
    return jnp.mean((out - batch[1]) ** 2)


def first(b):
    return (b[0],)


@pytest.fixture(scope="module")
def searched(qkv):
    params, apply, data = qkv
    return jq.auto_quantize(params, apply, [INT4, INT8], 6.0, data, mse_loss, inputs_fn=first, progress=False)


# -- the search -----------------------------------------------------------------------------------------------
def test_siblings_choose_together_and_scores_are_monotone(searched):
    qm, report = searched
    assert [g.sites for g in report.groups] == [("q", "k"), ("o",)]
    for g in report.groups:
        assert g.bits == (4.125, 8.0) and all(s > 0 for s in g.raw_scores)
        assert g.scores[1] <= g.scores[0]  # the 8-bit option never scores worse than the 4-bit one
    desc = {qm.spec(f"{n}.weight_quantizer").describe() for n in ("q", "k")}
    assert len(desc) == 1  # one format for the fused pair
    # 6 bits between INT4 (4.125) and INT8 (8): one group each way, the costlier q/k pair (2 x 1024) stays 4-bit
    assert report.effective_bits <= 6.0 and report.counts() == {report.formats[0]: 1, report.formats[1]: 1}


def test_result_is_a_normal_model_under_jit(searched, qkv):
    qm, report = searched
    _, _, data = qkv
    x = data[0][0]
    np.testing.assert_allclose(jax.jit(qm.apply)(qm.params, x), qm(x), rtol=1e-6, atol=1e-6)
    bits = {n: qm.spec(f"{n}.weight_quantizer").bits_per_element for n in ("q", "k", "o")}
    assert bits == {n: (4.125, 8.0)[report.formats.index(report.choices[n])] for n in bits}
    assert "o.weight_quantizer" in jq.quant_summary(qm)


def test_gradient_score_is_the_definition(qkv, searched):
    """score = sum over batches of sum((dL/dy * (y_q - y))^2) at site ``o``, quantized alone with INT4."""
    params, apply, data = qkv
    _, report = searched
    cand = jq.quantize(params, apply, INT4, calib_data=[first(b) for b in data], progress=False)
    w, b = params["params"]["o"]["kernel"], params["params"]["o"]["bias"]
    single = jq.QuantizedModel.create({"w": w}, lambda p, h: h @ p["w"], INT4,
                                      {"w.weight_quantizer": cand.qstate["o.weight_quantizer"]})
    want = 0.0
    for x, t in data:
        p = params["params"]
        h = jnp.tanh(x @ p["q"]["kernel"] + p["q"]["bias"]) * (x @ p["k"]["kernel"] + p["k"]["bias"])
        y = h @ w
        g = jax.grad(lambda y: mse_loss(y + b, (x, t)))(y)
        want += float(jnp.sum((g * (single(h) - y)) ** 2))
    assert report.groups[1].raw_scores[0] == pytest.approx(want, rel=1e-4)


def test_budget_outside_the_candidate_range_is_an_error(qkv):
    params, apply, data = qkv
    for bits in (4.0, 8.5):
        with pytest.raises(ValueError, match=r"effective_bits=.* outside .* \[4\.1250, 8\.0000\]"):
            jq.auto_quantize(params, apply, [INT4, INT8], bits, data, mse_loss, inputs_fn=first, progress=False)
    with pytest.raises(ValueError, match="score must be 'gradient' or 'kl'"):
        jq.auto_quantize(params, apply, [INT4, INT8], 6.0, data, mse_loss, score="hessian", progress=False)
    with pytest.raises(ValueError, match="gradient score needs loss_fn"):
        jq.auto_quantize(params, apply, [INT4, INT8], 6.0, data, progress=False)


def test_the_extremes_of_the_range(qkv, searched, tmp_path):
    params, apply, data = qkv
    _, report = searched
    path = tmp_path / "scores.json"
    kw = dict(inputs_fn=first, progress=False, state_path=path)
    _, lo = jq.auto_quantize(params, apply, [INT4, INT8], 4.125, data, mse_loss, **kw)
    assert {g.choice for g in lo.groups} == {0} and lo.effective_bits == pytest.approx(4.125)

    def no_scoring(out, batch):
        raise AssertionError("the saved scores should have been reused")

    _, hi = jq.auto_quantize(params, apply, [INT4, INT8], 8.0, data, no_scoring, **kw)  # scores from the file
    assert {g.choice for g in hi.groups} == {1} and hi.effective_bits == pytest.approx(8.0)
    assert [g.raw_scores for g in hi.groups] == [g.raw_scores for g in report.groups]
    with pytest.raises(AssertionError, match="should have been reused"):  # another search: scored anew
        jq.auto_quantize(params, apply, [INT4, INT8], 8.0, data, no_scoring, num_score_steps=1, **kw)


def test_kl_score_needs_no_labels(qkv):
    params, apply, data = qkv
    xs = [(b[0],) for b in data]
    qm, report = jq.auto_quantize(params, apply, {"int4": INT4, "bf16": None}, 10.0, xs, score="kl",
                                  progress=False)
    assert report.formats == ("int4", "bf16")
    for g in report.groups:
        assert g.bits == (4.125, 16.0) and g.raw_scores[0] > 0 and g.raw_scores[1] == 0.0
    chosen = {n for g in report.groups if g.choice == 1 for n in g.sites}
    for n in ("q", "k", "o"):
        assert (qm.spec(f"{n}.weight_quantizer") is None) == (n in chosen)  # float groups are off
    assert report.effective_bits <= 10.0


def test_per_layer_probes_in_a_layer_scan_match_the_unrolled_model():
    """The score of a site in a layer scan is the sum of the scores of its layers, each with its own gradient."""
    rng = np.random.default_rng(1)
    ws = jnp.asarray(rng.standard_normal((3, 16, 16)) * 0.3, jnp.float32)
    out = jnp.asarray(rng.standard_normal((16, 4)), jnp.float32)
    data = [(jnp.asarray(rng.standard_normal((8, 16)), jnp.float32), jnp.zeros((8, 4), jnp.float32))]

    def scanned(p, x):
        h, _ = jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), x, p["w"])
        return h @ p["out"]

    def unrolled(p, x):
        for i in range(3):
            x = jnp.tanh(x @ p[f"w{i}"])
        return x @ p["out"]

    kw = dict(inputs_fn=first, progress=False)
    _, rs = jq.auto_quantize({"w": ws, "out": out}, scanned, [INT4_G16, INT8], 6.0, data, mse_loss, **kw)
    _, ru = jq.auto_quantize({**{f"w{i}": ws[i] for i in range(3)}, "out": out}, unrolled, [INT4_G16, INT8], 6.0,
                             data, mse_loss, **kw)
    scan_score = next(g.raw_scores for g in rs.groups if g.sites == ("w",))
    per_layer = [next(g.raw_scores for g in ru.groups if g.sites == (f"w{i}",)) for i in range(3)]
    np.testing.assert_allclose(scan_score, np.sum(per_layer, axis=0), rtol=1e-4)
    assert next(g.numel for g in rs.groups if g.sites == ("w",)) == 3 * 16 * 16


def test_report_table_and_plot(searched, tmp_path):
    _, report = searched
    text = str(report)
    assert "q, k" in text and "effective bits" in text and "groups per format" in text
    pytest.importorskip("matplotlib")
    png = report.plot(tmp_path / "choices.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_weight_changing_candidate_is_scored_on_its_own_weights(qkv):
    """SVDQuant keeps the residual in the params: its scores and the result use the candidate's weights."""
    params, apply, data = qkv
    svd = {**INT4, "algorithm": {"method": "svdquant", "lowrank": 4, "smooth": False}}
    qm, report = jq.auto_quantize(params, apply, {"int4": INT4, "int4_svd": svd}, 4.125, data, mse_loss,
                                  inputs_fn=first, progress=False)
    for g in report.groups:  # same cost: the low-rank branch only helps
        assert g.bits[0] == g.bits[1] and g.raw_scores[1] < g.raw_scores[0]  # without the residual: >> int4
    assert set(report.choices.values()) == {"int4_svd"}
    ref = jq.quantize(params, apply, svd, calib_data=[first(b) for b in data], progress=False)
    x = data[0][0]
    np.testing.assert_allclose(qm(x), ref(x), rtol=1e-6, atol=1e-6)
    assert "svdquant_lora_a" in qm.qstate["o.weight_quantizer"]
