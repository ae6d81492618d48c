"""Logit parity: does a GGUF file compute what its source checkpoint computes?

In: a checkpoint folder (either layout, read through ``checkpoints``) and the GGUF converted from it.
Out: ``VerifyReport`` - max absolute and relative logit difference and top-1 agreement over every position
of a few hundred tokens - and, from the CLI, one line per figure and exit status 0 (within tolerance),
1 (outside it) or 2 (bad input):

    python -m model_export.verify CKPT_DIR OUT.gguf [--tokens N] [--rel-tol X] [--min-top1 Y]

The reference is an independent NumPy implementation of Meta's Llama forward pass (``reference_logits``):
RMSNorm, rotary embedding on interleaved pairs with the checkpoint's own theta, grouped-query attention
with a causal mask, SwiGLU feed-forward, all in float32 from the checkpoint's weights. The candidate is
llama.cpp (through llama-cpp-python) evaluating the GGUF with ``logits_all`` so every position's logits
come back. Comparing logits at all positions, not only the last, is what catches a wrong rope theta or a
q/k permutation error: both leave position 0 untouched.

Relative error is ``max |llama - ref| / max |ref|`` over all positions and vocabulary entries: one number
that scales with the logits and is not inflated by logits near zero. Default tolerances depend on how
the weights were stored (read from the file's ``general.file_type``) because llama.cpp's CPU kernels
round activations to the weight type's companion format (f16 weights multiply f16-rounded activations,
bf16 bf16-rounded ones, q8_0 per-block 8-bit ones); measured values on the test fixtures in brackets:

    file type   rel. error          top-1 agreement
    f32         2e-3  [6e-6]        99.5%  [100%]
    f16         3e-3  [6e-4]        99%    [100%]
    bf16        2e-2  [5e-3]        98%    [99.4%]
    q8_0        6e-2  [2.3e-2]      95%    [97.7%]

Other (quantized) file types get the q8_0 bounds, which 4-bit types exceed: pass ``--rel-tol`` and
``--min-top1`` for those (``quantize.report`` measures them properly). Top-1 agreement allows a few flips
because near-tied logits (a gap below the rounding noise) may swap. A wrong rope theta gives a relative error of ~0.6 and ~30% top-1 agreement on the same fixtures.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from codellama_core.tool import FAILURE, run_tool
from model_export import tensors as tn
from model_export.checkpoints import Checkpoint, open_checkpoint
from model_export.errors import ExportError

T = gguf.MODEL_TENSOR

# (max relative error, min top-1 agreement) by general.file_type; see the module docstring.
TOLERANCES: dict[int, tuple[float, float]] = {
    int(gguf.LlamaFileType.ALL_F32): (2e-3, 0.995),
    int(gguf.LlamaFileType.MOSTLY_F16): (3e-3, 0.99),
    int(gguf.LlamaFileType.MOSTLY_BF16): (2e-2, 0.98),
    int(gguf.LlamaFileType.MOSTLY_Q8_0): (6e-2, 0.95),
}
DEFAULT_TOKENS = 256


@dataclass(frozen=True)
class VerifyReport:
    n_tokens: int
    max_abs: float  # max |llama - ref|
    max_ref: float  # max |ref|
    rel: float  # max_abs / max_ref
    top1: float  # fraction of positions whose argmax agrees
    rel_tol: float
    min_top1: float
    file_type: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.rel <= self.rel_tol and self.top1 >= self.min_top1

    def lines(self) -> list[str]:
        verdict = "PASS" if self.passed else "FAIL"
        return [
            f"tokens compared:     {self.n_tokens} (all positions, {self.file_type})",
            f"max abs difference:  {self.max_abs:.3g} (max |ref logit| {self.max_ref:.3g})",
            f"max rel difference:  {self.rel:.3g} (tolerance {self.rel_tol:g})",
            f"top-1 agreement:     {100 * self.top1:.2f}% (tolerance {100 * self.min_top1:g}%)",
            f"{verdict} in {self.seconds:.1f} s",
        ]


# ---------------------------------------------------------------------------- NumPy reference


def _rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    out: np.ndarray = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w
    return out


def _rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate interleaved pairs (x0,x1), (x2,x3).. of each head. x: (seq, heads, hd); cos/sin: (seq, hd/2)."""
    a, b = x[..., 0::2], x[..., 1::2]
    c, s = cos[:, None, :], sin[:, None, :]
    out = np.empty_like(x)
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = a * s + b * c
    return out


def reference_logits(ckpt: Checkpoint, tokens: Sequence[int], rope_theta: float | None = None) -> np.ndarray:
    """Meta's Llama forward pass in NumPy float32: token ids (n,) -> logits (n, n_vocab).

    Weights are read one layer at a time through the checkpoint reader (merged, HF q/k un-permuted).
    """
    hp = ckpt.hparams
    theta = rope_theta or hp.rope_theta or 10000.0
    n, hd = len(tokens), hp.head_dim
    rep = hp.n_heads // hp.n_kv_heads

    def w(kind: gguf.MODEL_TENSOR, bid: int | None = None) -> np.ndarray:
        return ckpt.read(tn.gguf_name(kind, bid))

    ids = np.asarray(tokens, dtype=np.int64)
    if ids.min() < 0 or ids.max() >= ckpt.n_vocab:
        raise ExportError(f"expected token ids in [0, {ckpt.n_vocab}), got {ids.min()}..{ids.max()}")
    h = w(T.TOKEN_EMBD)[ids]  # (n, dim)
    # angle of pair i at position t: t * theta^(-2i/hd), computed in float64 like the PyTorch model
    inv = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.outer(np.arange(n, dtype=np.float64), inv)
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    mask = np.triu(np.full((n, n), -np.inf, dtype=np.float32), k=1)
    for bid in range(hp.n_layers):
        x = _rmsnorm(h, w(T.ATTN_NORM, bid), hp.norm_eps)
        q = (x @ w(T.ATTN_Q, bid).T).reshape(n, hp.n_heads, hd)
        k = (x @ w(T.ATTN_K, bid).T).reshape(n, hp.n_kv_heads, hd)
        v = (x @ w(T.ATTN_V, bid).T).reshape(n, hp.n_kv_heads, hd)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        # GQA: kv head j serves query heads j*rep .. j*rep+rep-1
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        q, k, v = (t.transpose(1, 0, 2) for t in (q, k, v))  # (heads, n, hd)
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(hd) + mask
        scores -= scores.max(axis=-1, keepdims=True)
        p = np.exp(scores)
        p /= p.sum(axis=-1, keepdims=True)
        att = (p @ v).transpose(1, 0, 2).reshape(n, hp.n_heads * hd)
        h = h + att @ w(T.ATTN_OUT, bid).T
        x = _rmsnorm(h, w(T.FFN_NORM, bid), hp.norm_eps)
        g = x @ w(T.FFN_GATE, bid).T
        h = h + ((g / (1.0 + np.exp(-g))) * (x @ w(T.FFN_UP, bid).T)) @ w(T.FFN_DOWN, bid).T
        ckpt.release()
    logits: np.ndarray = (_rmsnorm(h, w(T.OUTPUT_NORM), hp.norm_eps) @ w(T.OUTPUT).T).astype(np.float32)
    return logits


# ---------------------------------------------------------------------------- llama.cpp side


def llama_logits(gguf_path: str | Path, tokens: Sequence[int], n_threads: int | None = None) -> np.ndarray:
    """llama.cpp's logits (n, n_vocab) for every position of ``tokens`` evaluated as one sequence.

    Through the project's llama.cpp adapter (``codellama_core.llama``), which loads without llama.cpp's
    repacked CPU weights (its AMX kernels crash on q8_0 matrices this small, ggml-org/llama.cpp#20824, and
    repacked kernels differ by CPU; the plain kernels make the check the same on every machine), with an
    f32 KV cache: the default f16 cache would add its own rounding to what is measured here, which is the
    file, not the cache.
    """
    from codellama_core import llama

    n = len(tokens)
    options = llama.ContextOptions(
        n_ctx=max(256, -(-n // 256) * 256), n_batch=min(512, max(32, n)), kv_type="f32", all_logits=True,
        threads=n_threads or max(1, min(8, os.cpu_count() or 1)),
    )  # fmt: skip
    try:
        with llama.open_context(gguf_path, options) as ctx:
            return ctx.evaluate(tokens)
    except llama.LlamaError as exc:
        raise ExportError(f"expected llama.cpp to evaluate {gguf_path}, got: {exc}") from None


def default_tokens(ckpt: Checkpoint, n: int) -> list[int]:
    """BOS + this package's own source code as tokenized by the checkpoint's tokenizer (code, like the use)."""
    import sentencepiece as spm

    if ckpt.tokenizer_path is None:
        rng = np.random.default_rng(0)
        return [int(i) for i in rng.integers(0, ckpt.n_vocab, size=n)]
    sp = spm.SentencePieceProcessor(model_file=str(ckpt.tokenizer_path))
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted(Path(__file__).parent.glob("*.py")))
    ids: list[int] = [sp.bos_id(), *sp.encode(text)]
    while len(ids) < n:
        ids += ids[1:]
    return ids[:n]


def compare(ref: np.ndarray, got: np.ndarray) -> tuple[float, float, float, float]:
    """(max abs diff, max |ref|, relative error, top-1 agreement) of two (n, vocab) logit arrays."""
    if ref.shape != got.shape:
        raise ExportError(f"expected logits of shape {ref.shape} from the GGUF, got {got.shape}")
    max_abs = float(np.max(np.abs(got - ref)))
    max_ref = float(np.max(np.abs(ref)))
    top1 = float(np.mean(np.argmax(got, axis=-1) == np.argmax(ref, axis=-1)))
    return max_abs, max_ref, max_abs / max_ref if max_ref else math.inf, top1


def gguf_file_type(gguf_path: str | Path) -> int:
    try:
        reader = gguf.GGUFReader(str(gguf_path))
    except (OSError, ValueError) as e:
        raise ExportError(f"expected a readable GGUF file at {gguf_path}, got {type(e).__name__}: {e}") from None
    field = reader.get_field(gguf.Keys.General.FILE_TYPE)
    return int(field.contents()) if field is not None else int(gguf.LlamaFileType.ALL_F32)


def verify(
    ckpt_dir: str | Path,
    gguf_path: str | Path,
    tokens: Sequence[int] | None = None,
    *,
    n_tokens: int = DEFAULT_TOKENS,
    rel_tol: float | None = None,
    min_top1: float | None = None,
    n_threads: int | None = None,
) -> VerifyReport:
    """Reference (NumPy, from the checkpoint) vs llama.cpp (from the GGUF) logits; see the module docstring."""
    t0 = time.perf_counter()
    if not Path(gguf_path).is_file():
        raise ExportError(f"expected a GGUF file, got {gguf_path} (no such file)")
    ftype = gguf_file_type(gguf_path)
    d_rel, d_top1 = TOLERANCES.get(ftype, TOLERANCES[int(gguf.LlamaFileType.MOSTLY_Q8_0)])
    with open_checkpoint(ckpt_dir) as ckpt:
        toks = list(tokens) if tokens is not None else default_tokens(ckpt, n_tokens)
        if not toks:
            raise ExportError("expected at least one token to compare, got none")
        ref = reference_logits(ckpt, toks)
    got = llama_logits(gguf_path, toks, n_threads=n_threads)
    max_abs, max_ref, rel, top1 = compare(ref, got)
    try:
        ftype_name = gguf.LlamaFileType(ftype).name
    except ValueError:
        ftype_name = f"file type {ftype}"
    return VerifyReport(
        n_tokens=len(toks),
        max_abs=max_abs,
        max_ref=max_ref,
        rel=rel,
        top1=top1,
        rel_tol=rel_tol if rel_tol is not None else d_rel,
        min_top1=min_top1 if min_top1 is not None else d_top1,
        file_type=ftype_name,
        seconds=time.perf_counter() - t0,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="codellama-verify",
        description="Compare a GGUF's llama.cpp logits with a NumPy forward pass of its source checkpoint.",
    )
    p.add_argument("ckpt_dir", type=Path, help="the checkpoint folder the GGUF was converted from")
    p.add_argument("gguf", type=Path, help="the converted .gguf file")
    p.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help=f"tokens to evaluate (default {DEFAULT_TOKENS})")
    p.add_argument("--rel-tol", type=float, help="max relative logit error (default: by file type)")
    p.add_argument("--min-top1", type=float, help="min top-1 agreement, 0..1 (default: by file type)")
    p.add_argument("--threads", type=int, help="llama.cpp threads")
    args = p.parse_args(argv)

    def body() -> int:
        report = verify(
            args.ckpt_dir,
            args.gguf,
            n_tokens=args.tokens,
            rel_tol=args.rel_tol,
            min_top1=args.min_top1,
            n_threads=args.threads,
        )
        for line in report.lines():
            print(line)
        return 0 if report.passed else FAILURE

    return run_tool(p.prog, body, (ExportError,))


if __name__ == "__main__":
    sys.exit(main())
