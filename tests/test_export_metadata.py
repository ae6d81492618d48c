"""What the converter writes besides weights: hyper-parameters, vocabulary, FIM/EOT ids, tensor types.

In: tiny fixture checkpoints converted with ``model_export.convert``. Out: pass/fail, read back two ways:
gguf-py's ``GGUFReader`` (keys and token types as stored) and llama.cpp itself (what the runtime makes of
them: FIM/EOT ids, control-token handling of file text that spells ``<PRE>`` or ``▁<EOT>``).
"""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import gguf
import pytest
import torch

from model_export.convert import convert, default_context_length
from model_train.tokenizer import fim_ids
from tests.fixtures.checkpoints import TINY
from tests.fixtures.gguf_fields import field

ARCH = "llama"


def llama_key(key: str) -> str:
    return key.format(arch=ARCH)


@pytest.fixture(scope="module")
def llama_cpp():
    import llama_cpp

    return llama_cpp


def load_vocab_only(llama_cpp, path: Path):
    return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)


def test_hyperparameters_read_back(checkpoint_factory, tmp_path):
    ckpt, model = checkpoint_factory("meta", shards=2, dtype=torch.bfloat16)
    s = convert(ckpt, tmp_path / "m.gguf", outtype="f16")
    r = gguf.GGUFReader(s.out_path)
    a = model.args
    assert field(r, gguf.Keys.General.ARCHITECTURE) == ARCH
    assert field(r, llama_key(gguf.Keys.Rope.FREQ_BASE)) == pytest.approx(1e6)
    assert field(r, llama_key(gguf.Keys.LLM.CONTEXT_LENGTH)) == 16384  # theta 1e6, nothing else said
    assert field(r, llama_key(gguf.Keys.LLM.EMBEDDING_LENGTH)) == a.dim
    assert field(r, llama_key(gguf.Keys.LLM.BLOCK_COUNT)) == a.n_layers
    assert field(r, llama_key(gguf.Keys.Attention.HEAD_COUNT)) == a.n_heads
    assert field(r, llama_key(gguf.Keys.Attention.HEAD_COUNT_KV)) == a.kv_heads
    assert field(r, llama_key(gguf.Keys.Rope.DIMENSION_COUNT)) == a.head_dim
    assert field(r, llama_key(gguf.Keys.Attention.LAYERNORM_RMS_EPS)) == pytest.approx(a.norm_eps)
    assert field(r, llama_key(gguf.Keys.LLM.FEED_FORWARD_LENGTH)) == model.layers[0].feed_forward.w1.weight.shape[0]
    assert field(r, gguf.Keys.General.FILE_TYPE) == gguf.LlamaFileType.MOSTLY_F16
    types = {t.name: t.tensor_type for t in r.tensors}
    assert len(types) == 3 + 9 * a.n_layers  # rope.freqs in the Meta shards is skipped
    for name, qtype in types.items():
        want = gguf.GGMLQuantizationType.F32 if "norm" in name else gguf.GGMLQuantizationType.F16
        assert qtype == want, f"expected {name} in {want.name}, got {qtype.name}"


@pytest.mark.parametrize(
    "theta, config_ctx, ctx, expected",
    [(1e6, None, None, 16384), (1e4, None, None, 4096), (1e6, None, 100_000, 100_000), (1e4, 2048, None, 2048)],
)
def test_context_length_rules(checkpoint_factory, tmp_path, theta, config_ctx, ctx, expected):
    if config_ctx is None:  # Meta layout: params.json has no length
        ckpt, _ = checkpoint_factory("meta", args=replace(TINY, rope_theta=theta))
    else:  # HF layout: max_position_embeddings decides
        ckpt, _ = checkpoint_factory("hf", args=replace(TINY, rope_theta=theta, max_seq_len=config_ctx))
    s = convert(ckpt, tmp_path / "m.gguf", outtype="f32", ctx=ctx)
    r = gguf.GGUFReader(s.out_path)
    assert s.context_length == expected == field(r, llama_key(gguf.Keys.LLM.CONTEXT_LENGTH))
    assert field(r, llama_key(gguf.Keys.Rope.FREQ_BASE)) == pytest.approx(theta)
    assert default_context_length(None, 1e6) == 16384 and default_context_length(None, 1e4) == 4096


def test_missing_rope_theta_is_written_as_llama2_default(checkpoint_factory, tmp_path):
    ckpt, _ = checkpoint_factory("meta", args=replace(TINY, rope_theta=10000.0), extra_params={"rope_theta": None})
    s = convert(ckpt, tmp_path / "m.gguf", outtype="f32")
    r = gguf.GGUFReader(s.out_path)
    assert field(r, llama_key(gguf.Keys.Rope.FREQ_BASE)) == pytest.approx(1e4)  # written explicitly
    assert s.context_length == 4096


def test_fim_and_eot_ids_from_tokenizer(checkpoint_factory, fixture_tokenizer, tmp_path, llama_cpp):
    ckpt, _ = checkpoint_factory("meta")
    ids = fim_ids(fixture_tokenizer)
    s = convert(ckpt, tmp_path / "m.gguf", outtype="f16")
    assert (s.fim_pre, s.fim_suf, s.fim_mid, s.eot) == (ids["pre"], ids["suf"], ids["mid"], ids["eot"])
    r = gguf.GGUFReader(s.out_path)
    assert field(r, gguf.Keys.Tokenizer.FIM_PRE_ID) == ids["pre"]
    assert field(r, gguf.Keys.Tokenizer.FIM_SUF_ID) == ids["suf"]
    assert field(r, gguf.Keys.Tokenizer.FIM_MID_ID) == ids["mid"]
    assert field(r, gguf.Keys.Tokenizer.EOT_ID) == ids["eot"]
    types = field(r, gguf.Keys.Tokenizer.TOKEN_TYPE)
    tokens = field(r, gguf.Keys.Tokenizer.LIST)
    for key, i in ids.items():
        assert types[i] == gguf.TokenType.CONTROL, f"expected {key} id {i} typed CONTROL, got {types[i]}"
    assert [tokens[i] for i in ids.values()] == ["▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"]
    assert field(r, gguf.Keys.Tokenizer.MODEL) == "llama"
    assert types[field(r, gguf.Keys.Tokenizer.BOS_ID)] == gguf.TokenType.CONTROL

    llm = load_vocab_only(llama_cpp, s.out_path)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    assert llama_cpp.llama_vocab_fim_pre(vocab) == ids["pre"]
    assert llama_cpp.llama_vocab_fim_suf(vocab) == ids["suf"]
    assert llama_cpp.llama_vocab_fim_mid(vocab) == ids["mid"]
    assert llama_cpp.llama_vocab_eot(vocab) == ids["eot"]
    assert llama_cpp.llama_vocab_is_eog(vocab, ids["eot"])
    llm.close()


def test_codellama_layout_ids_and_padding(checkpoint_factory, codellama_tokenizer_32011, tmp_path, llama_cpp):
    """Code Llama's ids 32007..32010, and [PAD] rows typed UNUSED where the embedding outgrows the tokenizer."""
    args = replace(TINY, vocab_size=32016)
    ckpt, _ = checkpoint_factory("hf", n_files=1, args=args, tokenizer=codellama_tokenizer_32011)
    s = convert(ckpt, tmp_path / "cl.gguf", outtype="q8_0")
    r = gguf.GGUFReader(s.out_path)
    tokens, types = field(r, gguf.Keys.Tokenizer.LIST), field(r, gguf.Keys.Tokenizer.TOKEN_TYPE)
    assert len(tokens) == 32016 and s.n_padding_tokens == 5
    assert tokens[32011:] == [f"[PAD{i}]" for i in range(32011, 32016)]
    assert all(t == gguf.TokenType.UNUSED for t in types[32011:])
    assert [types[i] for i in range(32007, 32011)] == [gguf.TokenType.CONTROL] * 4
    llm = load_vocab_only(llama_cpp, s.out_path)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    assert llama_cpp.llama_vocab_n_tokens(vocab) == 32016
    got = [
        f(vocab)
        for f in (
            llama_cpp.llama_vocab_fim_pre,
            llama_cpp.llama_vocab_fim_suf,
            llama_cpp.llama_vocab_fim_mid,
            llama_cpp.llama_vocab_eot,
        )
    ]
    assert got == [32007, 32008, 32009, 32010]
    llm.close()


@pytest.mark.parametrize(
    "text",
    ["x = '<PRE>'", "<PRE> <SUF> <MID> <EOT>", "# ▁<EOT> and ▁<PRE>", "▁<PRE>▁<SUF>▁<MID>▁<EOT>", " <EOT>"],
)
def test_file_text_never_becomes_control_tokens(checkpoint_factory, tmp_path, llama_cpp, text):
    ckpt, _ = checkpoint_factory("meta")
    s = convert(ckpt, tmp_path / "m.gguf", outtype="f16")
    control = {s.fim_pre, s.fim_suf, s.fim_mid, s.eot}
    llm = load_vocab_only(llama_cpp, s.out_path)
    ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    assert not control & set(ids), f"expected no FIM/EOT ids in the tokens of {text!r}, got {ids}"
    # the text survives as text (SentencePiece reads a literal "▁" as the space it stands for)
    assert llm.detokenize(ids).decode("utf-8").strip() == text.replace("▁", " ").strip()
    # ... while the runtime still knows those ids as control tokens
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    for i in control:
        assert llama_cpp.llama_vocab_get_attr(vocab, i) & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL
    llm.close()


def test_tokenizer_without_fim_pieces(checkpoint_factory, tmp_path):
    """Llama 2 / Code Llama 34B tokenizers have no FIM pieces: no FIM keys, no error."""
    from model_train.tokenizer import train_tokenizer
    from tests.fixtures.checkpoints import sample_code_text

    tok = train_tokenizer([sample_code_text()], tmp_path / "tokenizer.model", 600, fim_pieces=False)
    ckpt, _ = checkpoint_factory("meta", args=replace(TINY, vocab_size=600), tokenizer=tok)
    s = convert(ckpt, tmp_path / "m.gguf", outtype="f16")
    assert s.fim is None
    r = gguf.GGUFReader(s.out_path)
    assert r.get_field(gguf.Keys.Tokenizer.FIM_PRE_ID) is None


def test_summary_and_progress(checkpoint_factory, tmp_path):
    """The Python API other tools call: what ConvertSummary reports, and the progress callback."""
    import hashlib

    ckpt, model = checkpoint_factory("meta", shards=2)
    calls: list[tuple[str, int, int]] = []
    s = convert(ckpt, tmp_path / "m.gguf", outtype="bf16", progress=lambda *a: calls.append(a))
    assert s.n_tensors == len(calls) == 3 + 9 * model.args.n_layers
    assert [c[1] for c in calls] == sorted(c[1] for c in calls) and calls[-1][1] == calls[-1][2]
    assert s.bytes == s.out_path.stat().st_size > calls[-1][2]  # data plus header, metadata, vocabulary
    assert s.n_params == sum(p.numel() for p in model.parameters())
    assert s.layout == "meta" and s.outtype == "bf16" and s.rope_theta == 1e6 and s.context_length == 16384
    # the digest of a sha256sum listing of the source files, hashed while they were read
    names = [*sorted(p.name for p in ckpt.glob("consolidated.*.pth")), "params.json", "tokenizer.model"]
    listing = "".join(f"{hashlib.sha256((ckpt / n).read_bytes()).hexdigest()}  {n}\n" for n in names)
    assert s.source_sha256 == hashlib.sha256(listing.encode()).hexdigest()
    shell = subprocess.run(f"sha256sum {' '.join(names)} | sha256sum", shell=True, cwd=ckpt, capture_output=True, text=True)
    assert shell.stdout.split()[0] == s.source_sha256
    assert s.line().startswith(f"wrote {s.out_path} (bf16, {s.n_tensors} tensors")
    r = gguf.GGUFReader(s.out_path)
    assert field(r, gguf.Keys.General.FILE_TYPE) == gguf.LlamaFileType.MOSTLY_BF16
    assert {t.tensor_type for t in r.tensors} == {gguf.GGMLQuantizationType.BF16, gguf.GGMLQuantizationType.F32}
