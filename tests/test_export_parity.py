"""Exported GGUFs compute what the PyTorch model computes: every fixture variant, every position.

In: tiny random Code-Llama-shaped checkpoints from ``tests/fixtures/checkpoints.py`` (Meta 1/2/4 shards,
bf16/f16/f32 weights, params vocab_size -1, GQA and MHA, HF safetensors shards, HF ``pytorch_model.bin``,
Code Llama's 32016-piece tokenizer layout and a 32011-piece tokenizer under 32016 embedding rows).
Out: pass/fail. Each test converts the checkpoint with ``model_export.convert``, evaluates 1100 tokens of
held-out source code in llama.cpp (llama-cpp-python, ``logits_all``) and compares the logits at ALL
positions with the fixture's ``model_train.model.Transformer`` (the weights exactly as written, float32).

Error measure: rel = max|llama - torch| / max|torch| over all positions and vocabulary entries, and
top-1 agreement = fraction of positions whose argmax matches.

llama.cpp runs with its plain CPU kernels (no weight repacking) and an f32 KV cache (see
``model_export.verify.llama_logits``), so what is measured is the file, not the runtime's cache format.

Tolerances and why (measured on this repo's CI machine in brackets):
- f32 output: rel <= 2e-3 and top-1 >= 99.5% (the issue's bar) [rel ~6e-6, top-1 100%]. Only float32
  summation order differs.
- f16 output: rel <= 3e-3, top-1 >= 99% [5.9e-4, 100%]. The weights are exact in f16 (the fixtures'
  bf16/f16/f32 weights of this scale are representable), but llama.cpp multiplies f16 weights with
  activations rounded to f16 (11-bit mantissa: ~2.4e-4 relative per value), over 2 layers x 7 matmuls.
- bf16 output: rel <= 2e-2, top-1 >= 98% [5.4e-3, 99.4%]: activations are rounded to bf16 (8-bit
  mantissa: ~2e-3 relative per value), 8x coarser than f16, hence the 4x wider bound at the same margin.
- q8_0 output: rel <= 6e-2, top-1 >= 95% [2.3e-2, 97.7%]: every weight is rounded to one of 255 levels
  of its block of 32 (error up to max|block|/254, ~0.4% of the block's largest value) and activations are
  quantized the same way; 2.5x margin. Near-tied top-1 logits (a gap below that noise) may flip.
The margins leave room for other CPUs' SIMD summation orders.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from model_export.convert import convert
from model_export.verify import llama_logits
from tests.fixtures.checkpoints import TINY_GQA4, TINY_MHA, sample_code_tokens, tokenizer_size

N_TOKENS = 1100
TOLERANCES = {"f32": (2e-3, 0.995), "f16": (3e-3, 0.99), "bf16": (2e-2, 0.98), "q8_0": (6e-2, 0.95)}


def parity(model: torch.nn.Module, gguf_path: Path, tokens: list[int]) -> tuple[float, float]:
    """(relative error, top-1 agreement) of llama.cpp on ``gguf_path`` vs the PyTorch ``model``."""
    with torch.no_grad():
        ref = model(torch.tensor([tokens]))[0].float().numpy()
    got = llama_logits(gguf_path, tokens)
    assert got.shape == ref.shape, f"expected logits {ref.shape}, got {got.shape}"
    rel = float(np.abs(got - ref).max() / np.abs(ref).max())
    top1 = float((got.argmax(-1) == ref.argmax(-1)).mean())
    return rel, top1


def check(model: torch.nn.Module, ckpt: Path, out: Path, outtype: str, tokenizer: Path | None = None) -> None:
    summary = convert(ckpt, out, outtype=outtype)
    assert summary.out_path == out.absolute() and out.is_file()
    tokens = sample_code_tokens(tokenizer or ckpt / "tokenizer.model", N_TOKENS)
    rel, top1 = parity(model, out, tokens)
    max_rel, min_top1 = TOLERANCES[outtype]
    print(f"{ckpt.name} {outtype}: rel={rel:.2e} top1={top1:.4f}")
    assert rel <= max_rel, f"expected rel error <= {max_rel} for {outtype}, got {rel:.3e}"
    assert top1 >= min_top1, f"expected top-1 agreement >= {min_top1} for {outtype}, got {top1:.4f}"


# (id, factory kwargs). args=None means the fixtures' TINY (GQA: 4 query heads, 2 kv heads).
VARIANTS = [
    ("meta-1shard-bf16-gqa", dict(kind="meta", shards=1, dtype=torch.bfloat16)),
    ("meta-2shards-f16-gqa", dict(kind="meta", shards=2, dtype=torch.float16)),
    ("meta-4shards-f32-gqa", dict(kind="meta", shards=4, dtype=torch.float32, args="gqa4")),
    ("meta-4shards-bf16-mha", dict(kind="meta", shards=4, dtype=torch.bfloat16, args="mha")),
    ("meta-1shard-f32-mha", dict(kind="meta", shards=1, dtype=torch.float32, args="mha")),
    ("meta-2shards-vocab-minus1", dict(kind="meta", shards=2, dtype=torch.bfloat16, params_vocab_size=-1)),
    ("hf-safetensors-3files", dict(kind="hf", fmt="safetensors", n_files=3, dtype=torch.bfloat16)),
    ("hf-safetensors-1file-f16-mha", dict(kind="hf", fmt="safetensors", n_files=1, dtype=torch.float16, args="mha")),
    ("hf-bin-1file", dict(kind="hf", fmt="bin", n_files=1, dtype=torch.bfloat16)),
    ("hf-bin-2files-f32", dict(kind="hf", fmt="bin", n_files=2, dtype=torch.float32)),
]


def _args(name: str | None, vocab: int):
    if name is None:
        return None
    return replace({"gqa4": TINY_GQA4, "mha": TINY_MHA}[name], vocab_size=vocab)


@pytest.mark.parametrize("kwargs", [v for _, v in VARIANTS], ids=[k for k, _ in VARIANTS])
def test_variant_f32_parity(checkpoint_factory, fixture_tokenizer, tmp_path, kwargs):
    kwargs = dict(kwargs)
    kwargs["args"] = _args(kwargs.pop("args", None), tokenizer_size(fixture_tokenizer))
    ckpt, model = checkpoint_factory(**kwargs)
    check(model, ckpt, tmp_path / "out.gguf", "f32")


@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0"])
@pytest.mark.parametrize("kind", ["meta", "hf"])
def test_outtype_parity(checkpoint_factory, tmp_path, kind, outtype):
    ckpt, model = checkpoint_factory(kind, shards=2, dtype=torch.bfloat16, seed=3)
    check(model, ckpt, tmp_path / f"out-{outtype}.gguf", outtype)


@pytest.mark.parametrize("which", ["32016", "32011+pad"])
def test_codellama_vocab_layout_parity(checkpoint_factory, codellama_tokenizer, codellama_tokenizer_32011, tmp_path, which):
    """Code Llama's real layout: 32016 embedding rows, FIM ids 32007..32010; also a 32011-piece tokenizer."""
    tok = codellama_tokenizer if which == "32016" else codellama_tokenizer_32011
    args = replace(TINY_MHA, vocab_size=32016)
    ckpt, model = checkpoint_factory("meta", shards=2, dtype=torch.bfloat16, args=args, tokenizer=tok)
    out = tmp_path / "cl.gguf"
    check(model, ckpt, out, "f32")
    summary = convert(ckpt, tmp_path / "cl-f16.gguf", outtype="f16")
    assert (summary.fim_pre, summary.fim_suf, summary.fim_mid, summary.eot) == (32007, 32008, 32009, 32010)
    assert summary.n_vocab == 32016
    assert summary.n_padding_tokens == (0 if which == "32016" else 5)


def test_wrong_rope_theta_fails_parity(checkpoint_factory, tmp_path):
    """The same checkpoint converted with Llama 2's theta instead of Code Llama's 1e6 is caught."""
    ckpt, model = checkpoint_factory("meta", shards=1, dtype=torch.float32)
    assert model.args.rope_theta == 1e6
    tokens = sample_code_tokens(ckpt / "tokenizer.model", N_TOKENS)
    good = convert(ckpt, tmp_path / "good.gguf", outtype="f32")
    bad = convert(ckpt, tmp_path / "bad.gguf", outtype="f32", rope_theta=10000.0)
    assert good.rope_theta == 1e6 and bad.rope_theta == 1e4
    rel_good, top1_good = parity(model, good.out_path, tokens)
    rel_bad, top1_bad = parity(model, bad.out_path, tokens)
    print(f"theta 1e6: rel={rel_good:.2e} top1={top1_good:.4f}; theta 1e4: rel={rel_bad:.2e} top1={top1_bad:.4f}")
    assert rel_good <= 2e-3 and top1_good >= 0.995
    assert rel_bad > 2e-3 * 10, f"expected a wrong theta to break parity clearly, got rel={rel_bad:.3e}"
    assert top1_bad < 0.995
