"""The test checkpoints are what they claim to be, checked without the converter.

In: the fixtures of ``tests/fixtures/checkpoints.py``. Out: pass/fail. Each test re-derives a property
from the files on disk: Meta shards merged along the documented axes give back the model's state_dict;
HF q/k un-permuted give back Meta's wq/wk, and an independent HF-convention forward pass (rotate_half
rotary embedding on the permuted weights) reproduces the Meta model's logits; tokenizers round-trip source
code and carry the FIM pieces where promised; dtypes on disk are the requested ones; the random models
are decisive and sensitive to rope theta, so parity tests built on them mean something.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from sentencepiece import sentencepiece_model_pb2 as pb

from model_train.model import ModelArgs, Transformer, ffn_hidden_dim
from model_train.tokenizer import FIM_PIECES, fim_ids
from tests.fixtures.checkpoints import (
    CODELLAMA_FIM_AT,
    TINY,
    TINY_GQA4,
    TINY_MHA,
    codellama_layout_tokenizer,
    hf_permute,
    hf_unpermute,
    meta_split_axis,
    random_model,
    rope_freqs,
    sample_code_text,
    sample_code_tokens,
    tokenizer_size,
    train_fixture_tokenizer,
    write_meta_checkpoint,
)

DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def _load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def _merge_meta(ckpt: Path) -> dict[str, torch.Tensor]:
    shards = [_load(p) for p in sorted(ckpt.glob("consolidated.*.pth"))]
    merged = {}
    for name in shards[0]:
        axis = meta_split_axis(name)
        if axis is None:
            for s in shards[1:]:
                assert torch.equal(s[name], shards[0][name]), f"{name} is not replicated"
            merged[name] = shards[0][name]
        else:
            merged[name] = torch.cat([s[name] for s in shards], dim=axis)
    return merged


# ---------------------------------------------------------------- Meta layout


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize(
    ("shards", "args"), [(1, TINY), (2, TINY), (4, TINY_MHA), (4, TINY_GQA4)], ids=["1-gqa", "2-gqa", "4-mha", "4-gqa"]
)
def test_meta_shards_merge_back_to_the_model(checkpoint_factory, shards, args, dtype):
    ckpt, model = checkpoint_factory("meta", shards=shards, dtype=dtype, args=args, seed=3)
    files = sorted(p.name for p in ckpt.glob("consolidated.*.pth"))
    assert files == [f"consolidated.{i:02d}.pth" for i in range(shards)]
    parts = [_load(ckpt / f) for f in files]
    sd = model.state_dict()
    for part in parts:
        assert set(part) == set(sd) | {"rope.freqs"}
        for name, t in part.items():
            assert t.dtype == dtype, f"{name} stored as {t.dtype}"
            axis = meta_split_axis(name)
            full = sd[name].shape if name in sd else (args.head_dim // 2,)
            expected = list(full)
            if axis is not None:
                expected[axis] //= shards
            assert list(t.shape) == expected, name
    merged = _merge_meta(ckpt)
    for name, t in sd.items():
        assert torch.equal(merged[name].float(), t), name  # bit-exact: the model IS the checkpoint
    torch.testing.assert_close(merged["rope.freqs"].float(), rope_freqs(args).float().to(dtype).float())


def test_meta_split_axes_are_fairscales():
    column = ["wq", "wk", "wv"]
    for n in column:
        assert meta_split_axis(f"layers.0.attention.{n}.weight") == 0
    assert meta_split_axis("layers.1.attention.wo.weight") == 1
    assert [meta_split_axis(f"layers.0.feed_forward.w{i}.weight") for i in (1, 2, 3)] == [0, 1, 0]
    assert meta_split_axis("tok_embeddings.weight") == 1
    assert meta_split_axis("output.weight") == 0
    for n in ("norm.weight", "layers.0.attention_norm.weight", "layers.0.ffn_norm.weight", "rope.freqs"):
        assert meta_split_axis(n) is None
    with pytest.raises(KeyError):
        meta_split_axis("model.embed_tokens.weight")


def test_meta_params_json(checkpoint_factory, fixture_tokenizer):
    ckpt, _ = checkpoint_factory("meta", args=TINY)
    params = json.loads((ckpt / "params.json").read_text())
    assert params == TINY.to_params()
    assert params["n_kv_heads"] == 2 and params["rope_theta"] == 1e6 and params["vocab_size"] == 1004
    assert ModelArgs.from_params(params) == replace(TINY)
    assert (ckpt / "tokenizer.model").read_bytes() == fixture_tokenizer.read_bytes()


def test_meta_params_vocab_minus_one_and_extra_params(checkpoint_factory):
    ckpt, _ = checkpoint_factory(
        "meta", args=TINY_MHA, params_vocab_size=-1, extra_params={"ffn_dim_multiplier": 1.0, "rope_theta": None}
    )
    params = json.loads((ckpt / "params.json").read_text())
    assert params["vocab_size"] == -1
    assert params["ffn_dim_multiplier"] == 1.0
    assert "rope_theta" not in params and "n_kv_heads" not in params  # MHA: no n_kv_heads, as Llama 2 7B


def test_meta_writer_refuses_bad_requests(fixture_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="divisible by shards"):
        write_meta_checkpoint(tmp_path / "a", random_model(TINY, 0, torch.bfloat16), fixture_tokenizer, shards=4)
    with pytest.raises(ValueError, match="exactly representable in bfloat16"):
        write_meta_checkpoint(tmp_path / "b", random_model(TINY, 0, torch.float32), fixture_tokenizer)
    with pytest.raises(ValueError, match="exactly representable in float16"):
        write_meta_checkpoint(tmp_path / "c", random_model(TINY, 0, torch.bfloat16), fixture_tokenizer, dtype=torch.float16)


# ---------------------------------------------------------------- Hugging Face layout


def _hf_names(args: ModelArgs) -> set[str]:
    names = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(args.n_layers):
        p = f"model.layers.{i}."
        names |= {p + f"self_attn.{x}_proj.weight" for x in "qkvo"}
        names |= {p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")}
        names |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
    return names


def _load_hf(ckpt: Path) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        sd.update(load_file(f))
    for f in sorted(ckpt.glob("pytorch_model*.bin")):
        sd.update(_load(f))
    return sd


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def hf_forward(sd: dict[str, torch.Tensor], cfg: dict, tokens: torch.Tensor) -> torch.Tensor:
    """transformers' Llama forward in float32: rotary embedding by rotate_half on the HF (permuted) weights."""
    sd = {k: v.float() for k, v in sd.items()}
    nh, nkv, dim = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"]
    hd, eps, seq = dim // nh, cfg["rms_norm_eps"], tokens.shape[0]
    inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    ang = torch.outer(torch.arange(seq, dtype=torch.float64), inv)
    cos, sin = torch.cat((ang, ang), -1).cos().float(), torch.cat((ang, ang), -1).sin().float()  # (seq, hd)

    def rope(x: torch.Tensor) -> torch.Tensor:  # x: (heads, seq, hd); rotate_half pairs i with i + hd/2
        rotated = torch.cat((-x[..., hd // 2 :], x[..., : hd // 2]), -1)
        return x * cos + rotated * sin

    h = sd["model.embed_tokens.weight"][tokens]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        x = _rms(h, sd[p + "input_layernorm.weight"], eps)
        q = rope((x @ sd[p + "self_attn.q_proj.weight"].T).view(seq, nh, hd).transpose(0, 1))
        k = rope((x @ sd[p + "self_attn.k_proj.weight"].T).view(seq, nkv, hd).transpose(0, 1))
        v = (x @ sd[p + "self_attn.v_proj.weight"].T).view(seq, nkv, hd).transpose(0, 1)
        k, v = k.repeat_interleave(nh // nkv, 0), v.repeat_interleave(nh // nkv, 0)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(0, 1).reshape(seq, dim)
        h = h + att @ sd[p + "self_attn.o_proj.weight"].T
        x = _rms(h, sd[p + "post_attention_layernorm.weight"], eps)
        gate, up = x @ sd[p + "mlp.gate_proj.weight"].T, x @ sd[p + "mlp.up_proj.weight"].T
        h = h + (F.silu(gate) * up) @ sd[p + "mlp.down_proj.weight"].T
    return _rms(h, sd["model.norm.weight"], eps) @ sd["lm_head.weight"].T


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize(("fmt", "n_files"), [("safetensors", 2), ("safetensors", 1), ("bin", 1), ("bin", 2)])
def test_hf_files_index_config(checkpoint_factory, fmt, n_files, dtype):
    ckpt, model = checkpoint_factory("hf", fmt=fmt, n_files=n_files, dtype=dtype)
    stem, ext = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")
    weights = sorted(p.name for p in ckpt.glob(f"{stem}*.{ext}"))
    if n_files == 1:
        assert weights == [f"{stem}.{ext}"] and not list(ckpt.glob("*.index.json"))
    else:
        assert weights == [f"{stem}-{i:05d}-of-{n_files:05d}.{ext}" for i in range(1, n_files + 1)]
        index = json.loads((ckpt / f"{stem}.{ext}.index.json").read_text())
        assert set(index["weight_map"].values()) == set(weights)
        for f in weights:
            part = load_file(ckpt / f) if fmt == "safetensors" else _load(ckpt / f)
            assert {k for k, v in index["weight_map"].items() if v == f} == set(part)
        sd = _load_hf(ckpt)
        assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in sd.values())
    sd = _load_hf(ckpt)
    assert set(sd) == _hf_names(model.args)
    assert {t.dtype for t in sd.values()} == {dtype}
    cfg = json.loads((ckpt / "config.json").read_text())
    args = model.args
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (
        args.dim,
        args.n_layers,
        args.n_heads,
        args.kv_heads,
    )
    assert cfg["intermediate_size"] == ffn_hidden_dim(args.dim, args.multiple_of, args.ffn_dim_multiplier)
    assert cfg["intermediate_size"] == sd["model.layers.0.mlp.gate_proj.weight"].shape[0]
    assert cfg["rope_theta"] == 1e6 and cfg["rms_norm_eps"] == 1e-5 and cfg["vocab_size"] == args.vocab_size
    assert cfg["max_position_embeddings"] == 16384 and cfg["tie_word_embeddings"] is False
    assert cfg["torch_dtype"] == str(dtype).removeprefix("torch.")
    assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (1, 2)
    assert (ckpt / "tokenizer.model").is_file()


@pytest.mark.parametrize("args", [TINY, TINY_MHA, TINY_GQA4], ids=["gqa", "mha", "gqa4"])
def test_hf_unpermuted_qk_are_metas(checkpoint_factory, args):
    ckpt, model = checkpoint_factory("hf", args=args, dtype=torch.float32)
    sd, meta = _load_hf(ckpt), model.state_dict()
    for i in range(args.n_layers):
        p, m = f"model.layers.{i}.self_attn.", f"layers.{i}.attention."
        q, k = sd[p + "q_proj.weight"], sd[p + "k_proj.weight"]
        assert k.shape == (args.kv_heads * args.head_dim, args.dim)
        assert torch.equal(hf_unpermute(q, args.n_heads), meta[m + "wq.weight"])
        assert torch.equal(hf_unpermute(k, args.kv_heads), meta[m + "wk.weight"])
        assert not torch.equal(q, meta[m + "wq.weight"])  # the permutation is not the identity
        assert torch.equal(sd[p + "v_proj.weight"], meta[m + "wv.weight"])  # v and o are not permuted
        assert torch.equal(sd[p + "o_proj.weight"], meta[m + "wo.weight"])
    w = torch.arange(3 * 8 * 5, dtype=torch.float32).view(24, 5)
    assert torch.equal(hf_unpermute(hf_permute(w, 3), 3), w)
    # head 0, rows (0,1,2,3,4,5,6,7) interleaved pairs -> halves: (0,2,4,6, 1,3,5,7)
    assert hf_permute(w, 3)[:8, 0].tolist() == [0, 10, 20, 30, 5, 15, 25, 35]


@pytest.mark.parametrize("args", [TINY, TINY_MHA], ids=["gqa", "mha"])
def test_hf_forward_with_rotate_half_equals_meta_model(checkpoint_factory, fixture_tokenizer, args):
    ckpt, model = checkpoint_factory("hf", args=args, dtype=torch.float32, seed=5)
    sd, cfg = _load_hf(ckpt), json.loads((ckpt / "config.json").read_text())
    tokens = torch.tensor(sample_code_tokens(fixture_tokenizer, 300))
    ref = model(tokens[None])[0]
    torch.testing.assert_close(hf_forward(sd, cfg, tokens), ref, rtol=1e-4, atol=1e-4)
    # Discrimination: the same forward on Meta's (unpermuted) rows is wrong, so the match above is no accident.
    meta_rows = dict(sd)
    for i in range(args.n_layers):
        p = f"model.layers.{i}.self_attn."
        meta_rows[p + "q_proj.weight"] = hf_unpermute(sd[p + "q_proj.weight"], args.n_heads)
        meta_rows[p + "k_proj.weight"] = hf_unpermute(sd[p + "k_proj.weight"], args.kv_heads)
    assert (hf_forward(meta_rows, cfg, tokens) - ref).abs().max() > 0.1


# ---------------------------------------------------------------- tokenizers


ROUND_TRIP_CODE = (
    "class Node:\n"
    "    def __init__(self, value: int = 0x1F) -> None:\n"
    "        self.value = value  # keeps   runs of spaces\n"
    "\tif value:\n"
    "\t\treturn f'{value!r:>8}'  # tabs, too\n"
    "\n\n"
    "        \n"
    "    s = 'naïve café → 世界 🦙'\n"
    "  trailing   \n"
)


def test_fixture_tokenizer_round_trips_code_and_has_fim_pieces(fixture_tokenizer):
    sp = spm.SentencePieceProcessor(model_file=str(fixture_tokenizer))
    assert sp.get_piece_size() == TINY.vocab_size == 1004
    for text in (ROUND_TRIP_CODE, sample_code_text(), "    indented first line\n", " x"):
        assert sp.decode(sp.encode(text)) == text
    assert "▁▁▁▁" in {sp.id_to_piece(i) for i in range(sp.get_piece_size())}  # indentation pieces exist
    ids = fim_ids(fixture_tokenizer)
    assert ids == {name: sp.piece_to_id(p) for name, p in zip(("pre", "suf", "mid", "eot"), FIM_PIECES, strict=True)}
    assert sorted(ids.values()) == list(range(1000, 1004))
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2)
    proto = pb.ModelProto()
    proto.ParseFromString(fixture_tokenizer.read_bytes())
    assert proto.normalizer_spec.name == "identity" and not proto.normalizer_spec.remove_extra_whitespaces
    assert proto.trainer_spec.byte_fallback and proto.trainer_spec.model_type == pb.TrainerSpec.BPE


def test_fixture_tokenizer_is_deterministic_and_cached(fixture_tokenizer, tmp_path):
    again = train_fixture_tokenizer(tmp_path / "tokenizer.model")
    assert again.read_bytes() == fixture_tokenizer.read_bytes()
    smaller = train_fixture_tokenizer(tmp_path / "small.model", vocab_size=600)
    assert tokenizer_size(smaller) == 604 and sorted(fim_ids(smaller).values()) == [600, 601, 602, 603]


def test_codellama_layout(codellama_tokenizer, codellama_tokenizer_32011, fixture_tokenizer):
    assert tokenizer_size(codellama_tokenizer) == 32016
    assert tokenizer_size(codellama_tokenizer_32011) == 32011
    for tok in (codellama_tokenizer, codellama_tokenizer_32011):
        assert fim_ids(tok) == {"pre": 32007, "suf": 32008, "mid": 32009, "eot": 32010}
        sp = spm.SentencePieceProcessor(model_file=str(tok))
        assert [sp.id_to_piece(i) for i in range(CODELLAMA_FIM_AT, CODELLAMA_FIM_AT + 4)] == list(FIM_PIECES)
        assert sp.is_unused(1000) and sp.is_unused(32006) and not sp.is_unused(32007)
        assert sp.decode(sp.encode(ROUND_TRIP_CODE)) == ROUND_TRIP_CODE
    full = spm.SentencePieceProcessor(model_file=str(codellama_tokenizer))
    assert full.is_unused(32011) and full.is_unused(32015)
    # The trained pieces are the fixture tokenizer's: same encoding of ordinary code.
    small = spm.SentencePieceProcessor(model_file=str(fixture_tokenizer))
    assert full.encode(ROUND_TRIP_CODE) == small.encode(ROUND_TRIP_CODE)
    with pytest.raises(ValueError, match="n_pieces >= 32011"):
        codellama_layout_tokenizer(Path("unused.model"), 32010)


def test_embedding_rows_padded_beyond_the_tokenizer(checkpoint_factory, codellama_tokenizer_32011):
    args = replace(TINY, vocab_size=32016)
    ckpt, _model = checkpoint_factory("meta", shards=2, args=args, tokenizer=codellama_tokenizer_32011)
    merged = _merge_meta(ckpt)
    assert merged["tok_embeddings.weight"].shape == (32016, 64) and merged["output.weight"].shape == (32016, 64)
    assert tokenizer_size(ckpt / "tokenizer.model") == 32011
    assert json.loads((ckpt / "params.json").read_text())["vocab_size"] == 32016
    hf, _ = checkpoint_factory("hf", args=args, tokenizer=codellama_tokenizer_32011)
    assert json.loads((hf / "config.json").read_text())["vocab_size"] == 32016


def test_factory_defaults_follow_the_tokenizer(checkpoint_factory, codellama_tokenizer):
    ckpt, model = checkpoint_factory("meta", tokenizer=codellama_tokenizer)
    assert model.args == replace(TINY, vocab_size=32016)
    assert json.loads((ckpt / "params.json").read_text())["vocab_size"] == 32016
    a, _ = checkpoint_factory("meta")
    b, _ = checkpoint_factory("meta")
    assert a != b  # fresh folders: a test may damage its copy
    with pytest.raises(ValueError, match="expected kind"):
        checkpoint_factory("gguf")


def test_sample_code_tokens(fixture_tokenizer, codellama_tokenizer):
    ids = sample_code_tokens(fixture_tokenizer, 1100)
    assert len(ids) == 1100 and ids[0] == 1 and 1 not in ids[1:]
    assert ids == sample_code_tokens(fixture_tokenizer, 1100)
    assert not set(ids) & set(fim_ids(fixture_tokenizer).values())
    assert max(ids) < 1000
    cl = sample_code_tokens(codellama_tokenizer, 1100)
    assert cl == ids  # same trained pieces, same ids


# ---------------------------------------------------------------- the random models


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_random_model_is_seeded_and_exact_in_dtype(dtype):
    a, b, c = random_model(TINY, 7, dtype), random_model(TINY, 7, dtype), random_model(TINY, 8, dtype)
    for (name, p), q, r in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values(), strict=True):
        assert p.dtype == torch.float32
        assert torch.equal(p, q), name
        assert not torch.equal(p, r), name
        assert torch.equal(p.to(dtype).float(), p), name


def test_random_model_logits_are_decisive_and_theta_matters(fixture_tokenizer):
    """What the converter's parity tests rely on: clear top-1 winners, and attention that depends on theta."""
    tokens = torch.tensor([sample_code_tokens(fixture_tokenizer, 1100)])
    model = random_model(TINY, 0, torch.bfloat16)
    logits = model(tokens)[0]
    top2 = logits.topk(2, dim=-1).values
    gap = top2[:, 0] - top2[:, 1]
    assert logits.std(-1).mean() > 2.0  # far from uniform over 1004 tokens
    assert gap.median() > 0.3
    assert (gap < 1e-3).float().mean() < 0.005  # f32 rounding cannot flip more than 0.5% of positions
    wrong_theta = Transformer(replace(TINY, rope_theta=1e4))
    wrong_theta.load_state_dict(model.state_dict())
    other = wrong_theta(tokens)[0]
    assert (other.argmax(-1) == logits.argmax(-1)).float().mean() < 0.9
    assert (other - logits).abs().max() / logits.abs().max() > 0.05
