import dataclasses, jax, jax.numpy as jnp, numpy as np
import jq, jq.models as jm
from jq import deploy
from jq.models import serve, layer_scan
from jq_zoo import shakespeare, smollm2
config, params, tok = smollm2.load(dtype=jnp.float32)
L=4
config = dataclasses.replace(config, num_hidden_layers=L)
params = dict(params, model=dict(params["model"], layers=params["model"]["layers"][:L]))
ids = jm.encode(shakespeare.eval_text(), tok)
prompt = jnp.asarray(np.asarray(ids[:32])[None], jnp.int32)
calib = jm.calibration_batches(jm.encode(shakespeare.calib_text(), tok), n_batches=2, batch_size=2, seq_len=256)
cfg = jq.FP8_DEFAULT_CFG
for how in ("unrolled_calib", "scanned_calib"):
    if how == "unrolled_calib":
        qm = jq.quantize(params, jm.make_forward(config), cfg, calib_data=calib, progress=False)
    else:
        qm = layer_scan.quantize_scanned(params, config, cfg, calib_data=calib, progress=False)
    rm = deploy.realize(qm)
    ref = np.asarray(qm.apply(qm.params, prompt))[0, -1]
    real_un = np.asarray(rm(prompt))[0, -1]
    n=4
    outs = {}
    for scan in (False, True):
        outs[f"real scan={scan}"] = serve.real_quant_lm(rm, config, kv_cache=False, scan_layers=scan).generate(prompt, n)
        outs[f"fake scan={scan}"] = serve.fake_quant_lm(qm, config, scan_layers=scan).generate(prompt, n)
    sc = np.abs(ref).max()
    print(how, "rm.apply vs qm.apply (last prompt logit)", np.abs(real_un-ref).max()/sc)
    for k, (t, l) in outs.items():
        print(how, k, np.asarray(t)[0], "first-step err vs qm.apply", np.abs(np.asarray(l)[0,0]-ref).max()/sc)
