"""Choosing the next token from the logits: greedy, or temperature with top-k / top-p (pure).

In: one position's logits (float32, shape (n_vocab,)), the sampling settings, a numpy random generator
and optionally the ids allowed at this step (token healing). Out: a token id.
"""

from __future__ import annotations

import numpy as np


def sample(
    logits: np.ndarray,
    temperature: float,
    rng: np.random.Generator,
    *,
    top_k: int = 40,
    top_p: float = 1.0,
    allowed: np.ndarray | None = None,
) -> int:
    """Greedy (``temperature <= 0``: the argmax, ties to the lowest id) or a draw from the softmax of
    ``logits / temperature`` over the ``top_k`` best ids, cut to the smallest set whose probability
    reaches ``top_p``. ``allowed``: only these ids may be chosen."""
    if allowed is not None:
        masked = np.full(logits.shape, -np.inf, dtype=np.float32)
        masked[allowed] = logits[allowed]
        logits = masked
    if temperature <= 0.0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    k = min(top_k, z.size) if top_k > 0 else z.size
    top = np.argpartition(z, -k)[-k:] if k < z.size else np.arange(z.size)
    top = top[np.isfinite(z[top])]
    top = top[np.argsort(-z[top], kind="stable")]
    p = np.exp(z[top] - z[top[0]])
    p /= p.sum()
    if top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(p), top_p) + 1)
        top, p = top[:keep], p[:keep] / p[:keep].sum()
    return int(top[rng.choice(top.size, p=p)])
