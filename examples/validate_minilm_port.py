"""Check jq_zoo.minilm (plain JAX) against Hugging Face transformers' BertModel on real sentences.

The reference needs torch and transformers, which are not jq dependencies, so the check runs in three
steps that can use two environments:

    python examples/validate_minilm_port.py inputs /tmp/minilm.npz        # jq env: tokenise real sentences
    python examples/validate_minilm_port.py reference /tmp/minilm.npz     # torch env: BertModel embeddings
    python examples/validate_minilm_port.py check /tmp/minilm.npz         # jq env: compare

The reference is sentence-transformers' recipe: last hidden state, mean pooling over the mask, L2 norm.
"""

import pathlib
import sys

import numpy as np


def inputs(path):
    from jq_zoo.minilm import model_dir, real_sentences, tokenize

    ids, mask = tokenize(real_sentences(limit=64))
    np.savez(path, ids=ids, mask=mask, model_dir=str(model_dir()))


def reference(path):
    import torch
    from transformers import BertModel

    d = dict(np.load(path))
    model = BertModel.from_pretrained(str(d["model_dir"])).eval()
    with torch.no_grad():
        mask = torch.tensor(d["mask"])
        h = model(input_ids=torch.tensor(d["ids"], dtype=torch.long), attention_mask=mask).last_hidden_state
        m = mask[..., None].float()
        d["reference"] = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1).numpy()
    np.savez(path, **d)


def check(path):
    import jax.numpy as jnp

    from jq_zoo.minilm import load_minilm, minilm_apply

    d = dict(np.load(path))
    ours = np.asarray(minilm_apply(load_minilm(), jnp.asarray(d["ids"]), jnp.asarray(d["mask"])))
    diff = np.abs(ours - d["reference"]).max()
    cos = (ours * d["reference"]).sum(-1)
    print(f"{len(ours)} sentences: max |diff| {diff:.2e}, min cosine {cos.min():.7f}")
    assert diff < 1e-4, diff


if __name__ == "__main__":
    {"inputs": inputs, "reference": reference, "check": check}[sys.argv[1]](pathlib.Path(sys.argv[2]))
