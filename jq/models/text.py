"""Text to token windows for calibration and held-out evaluation of language models.

Token windows are consecutive and non-overlapping, taken from the start of the text: window ``i`` holds
tokens ``[i * L, (i + 1) * L]`` (``L + 1`` tokens: ``L`` inputs and the ``L`` next-token targets), so
``n_tokens = n_windows * L`` tokens are scored.

Example:
  >>> ids = encode(text, tokenizer)
  >>> inputs, targets = token_windows(ids, seq_len=512, n_tokens=4096)      # [8, 512] each
"""

from __future__ import annotations

import numpy as np

__all__ = ["encode", "token_windows", "calibration_batches"]

def encode(text: str, tokenizer) -> np.ndarray:
    """Token ids (int32) of ``text`` with a ``tokenizers.Tokenizer`` (no special tokens added)."""
    return np.asarray(tokenizer.encode(text, add_special_tokens=False).ids, np.int32)


def token_windows(ids: np.ndarray, seq_len: int, n_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """``(inputs, targets)``, each ``[n_tokens // seq_len, seq_len]``: consecutive non-overlapping windows
    from the start of ``ids``, targets shifted by one."""
    if n_tokens % seq_len:
        raise ValueError(f"n_tokens={n_tokens} must be a multiple of seq_len={seq_len}")
    n = n_tokens // seq_len
    if len(ids) < n_tokens + 1:
        raise ValueError(f"{n_tokens} scored tokens need {n_tokens + 1} ids, the text has {len(ids)}")
    x = np.asarray(ids[:n_tokens], np.int32).reshape(n, seq_len)
    y = np.asarray(ids[1:n_tokens + 1], np.int32).reshape(n, seq_len)
    return x, y


def calibration_batches(ids: np.ndarray, *, n_batches: int, batch_size: int, seq_len: int) -> list:
    """``n_batches`` calibration batches ``(tokens[batch_size, seq_len],)`` of consecutive windows (the
    argument tuples ``jq.quantize(..., calib_data=...)`` takes)."""
    x, _ = token_windows(ids, seq_len, n_batches * batch_size * seq_len)
    return [(x[i * batch_size:(i + 1) * batch_size],) for i in range(n_batches)]
