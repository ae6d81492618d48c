"""``codellama_core.gguf_check``: the pre-flight check that keeps bad GGUF headers away from llama.cpp.

The files are written with gguf-py's ``GGUFWriter`` (a tiny Llama-shaped header with real tensors), so
each test states exactly which key or tensor is wrong; one test runs the check on a GGUF built by the
project's own exporter.
"""

from __future__ import annotations

import math
from pathlib import Path

import gguf
import numpy as np
import pytest

from codellama_core.gguf_check import MAX_CONTEXT, GGUFCheckError, check_gguf
from tests.fixtures.lsp_models import lsp_random_gguf  # noqa: F401

ARCH = "llama"
N_EMBD, N_HEAD, N_HEAD_KV, N_LAYER, N_VOCAB = 8, 2, 1, 2, 5


def write_gguf(
    path: Path,
    *,
    meta: dict[str, object] | None = None,
    drop: set[str] = frozenset(),
    layers: int = N_LAYER,
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> Path:
    """A Llama-shaped GGUF: ``meta`` replaces or adds keys (``None`` drops one), ``drop`` leaves tensors
    out, ``layers`` is how many blocks get tensors, ``shapes`` overrides a tensor's numpy shape."""
    k = gguf.Keys
    fields: dict[str, object] = {
        k.LLM.BLOCK_COUNT.format(arch=ARCH): N_LAYER,
        k.LLM.CONTEXT_LENGTH.format(arch=ARCH): 64,
        k.LLM.EMBEDDING_LENGTH.format(arch=ARCH): N_EMBD,
        k.Attention.HEAD_COUNT.format(arch=ARCH): N_HEAD,
        k.Attention.HEAD_COUNT_KV.format(arch=ARCH): N_HEAD_KV,
        k.Attention.LAYERNORM_RMS_EPS.format(arch=ARCH): 1e-5,
        k.Rope.FREQ_BASE.format(arch=ARCH): 1e6,
    }
    fields.update(meta or {})
    w = gguf.GGUFWriter(path, ARCH)
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, float):
            w.add_float32(key, value)
        elif isinstance(value, str):
            w.add_string(key, value)
        elif value >= 1 << 32 or value < 0:
            w.add_int64(key, value)
        else:
            w.add_uint32(key, value)
    w.add_token_list([f"t{i}" for i in range(N_VOCAB)])
    head_dim = N_EMBD // N_HEAD
    tensors: dict[str, tuple[int, ...]] = {"token_embd.weight": (N_VOCAB, N_EMBD), "output_norm.weight": (N_EMBD,)}
    for b in range(layers):
        tensors[f"blk.{b}.attn_q.weight"] = (N_HEAD * head_dim, N_EMBD)
        tensors[f"blk.{b}.attn_k.weight"] = (N_HEAD_KV * head_dim, N_EMBD)
        tensors[f"blk.{b}.attn_norm.weight"] = (N_EMBD,)
    tensors.update(shapes or {})
    rng = np.random.default_rng(0)
    for name, shape in tensors.items():
        if name not in drop:
            w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def key(template: str) -> str:
    return template.format(arch=ARCH)


def test_a_good_file_is_summarised(tmp_path: Path) -> None:
    s = check_gguf(write_gguf(tmp_path / "ok.gguf"))
    assert (s.architecture, s.n_layer, s.n_ctx_train, s.n_embd, s.n_head, s.n_head_kv, s.n_vocab) == (
        ARCH,
        N_LAYER,
        64,
        N_EMBD,
        N_HEAD,
        N_HEAD_KV,
        N_VOCAB,
    )
    assert s.rope_freq_base == 1e6 and s.n_tensors == 2 + 3 * N_LAYER


def test_missing_rope_base_means_llama_cpp_default(tmp_path: Path) -> None:
    s = check_gguf(write_gguf(tmp_path / "m.gguf", meta={key(gguf.Keys.Rope.FREQ_BASE): None}))
    assert s.rope_freq_base == 10000.0


def test_the_exporters_gguf_passes(lsp_random_gguf: Path) -> None:
    s = check_gguf(lsp_random_gguf)
    assert s.architecture == "llama" and s.n_layer == 2 and s.n_vocab and s.n_ctx_train


@pytest.mark.parametrize(
    ("meta", "layers", "message"),
    [
        ({key(gguf.Keys.LLM.BLOCK_COUNT): 0}, N_LAYER, "block_count between 1 and 4096, got 0"),
        ({key(gguf.Keys.LLM.BLOCK_COUNT): 1000}, N_LAYER, "block_count = 1000), got tensors for 2 blocks, none for blk.2"),
        ({key(gguf.Keys.LLM.BLOCK_COUNT): 5000}, N_LAYER, "block_count between 1 and 4096, got 5000"),
        ({key(gguf.Keys.LLM.BLOCK_COUNT): 3}, N_LAYER, "got tensors for 2 blocks, none for blk.2"),
        ({key(gguf.Keys.LLM.BLOCK_COUNT): 1}, N_LAYER, "got tensors for 2 blocks, tensors for blk.1"),
        ({key(gguf.Keys.LLM.BLOCK_COUNT): None}, N_LAYER, "expected llama.block_count"),
        (
            {key(gguf.Keys.Attention.LAYERNORM_RMS_EPS): math.nan},
            N_LAYER,
            "layer_norm_rms_epsilon a finite number in (0, 1), got nan",
        ),
        ({key(gguf.Keys.Attention.LAYERNORM_RMS_EPS): math.inf}, N_LAYER, "got inf"),
        ({key(gguf.Keys.Attention.LAYERNORM_RMS_EPS): 0.0}, N_LAYER, "got 0.0"),
        ({key(gguf.Keys.Rope.FREQ_BASE): math.nan}, N_LAYER, "rope.freq_base a finite positive number, got nan"),
        ({key(gguf.Keys.Rope.FREQ_BASE): -1.0}, N_LAYER, "got -1.0"),
        ({key(gguf.Keys.LLM.CONTEXT_LENGTH): 2**32 - 1}, N_LAYER, f"context_length between 1 and {MAX_CONTEXT}, got 4294967295"),
        ({key(gguf.Keys.LLM.CONTEXT_LENGTH): 0}, N_LAYER, "got 0"),
        ({key(gguf.Keys.Attention.HEAD_COUNT): 0}, N_LAYER, "head_count between 1 and 65536, got 0"),
        ({key(gguf.Keys.Attention.HEAD_COUNT_KV): 0}, N_LAYER, "head_count_kv between 1 and 65536, got 0"),
        (
            {key(gguf.Keys.Attention.HEAD_COUNT_KV): 3},
            N_LAYER,
            "head_count a multiple of llama.attention.head_count_kv, got 2 and 3",
        ),
        (
            {key(gguf.Keys.Attention.HEAD_COUNT): 3},
            N_LAYER,
            "embedding_length a multiple of llama.attention.head_count, got 8 and 3",
        ),
        ({key(gguf.Keys.Attention.HEAD_COUNT_KV): 2}, N_LAYER, "blk.0.attn_k.weight of shape [8, 8], got [8, 4]"),
        ({key(gguf.Keys.LLM.EMBEDDING_LENGTH): 16}, N_LAYER, "token_embd.weight with 16 rows"),
        ({key(gguf.Keys.LLM.CONTEXT_LENGTH): "many"}, N_LAYER, "expected an integer llama.context_length"),
        ({gguf.Keys.General.ARCHITECTURE: None}, N_LAYER, "expected a string general.architecture"),
    ],
)
def test_bad_headers_are_refused_with_one_line(tmp_path: Path, meta: dict[str, object], layers: int, message: str) -> None:
    path = tmp_path / "bad.gguf"
    if meta.get(gguf.Keys.General.ARCHITECTURE, 1) is None:
        path = _without_architecture(path)
    else:
        write_gguf(path, meta=meta, layers=layers)
    with pytest.raises(GGUFCheckError) as err:
        check_gguf(path)
    text = str(err.value)
    assert message in text and "\n" not in text and str(path) in text


def _without_architecture(path: Path) -> Path:
    # GGUFWriter always writes general.architecture: rename the key in place (same length, so every
    # offset stays valid)
    write_gguf(path)
    data = path.read_bytes()
    assert data.count(b"general.architecture") == 1
    path.write_bytes(data.replace(b"general.architecture", b"general.architecturX"))
    return path


def test_token_embedding_must_match_the_vocabulary(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "v.gguf", shapes={"token_embd.weight": (N_VOCAB + 1, N_EMBD)})
    with pytest.raises(GGUFCheckError, match=r"token_embd.weight with 5 tokens \(tokenizer.ggml.tokens\), got shape \[8, 6\]"):
        check_gguf(path)


def test_not_a_gguf_never_quotes_the_files_bytes(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("password=hunter2\n")
    with pytest.raises(GGUFCheckError) as err:
        check_gguf(secret)
    assert "not start" in str(err.value) and "pass" not in str(err.value) and "hunter" not in str(err.value)


@pytest.mark.parametrize("what", ["missing", "directory", "empty"])
def test_missing_directory_and_empty(tmp_path: Path, what: str) -> None:
    path = tmp_path / "m.gguf"
    if what == "directory":
        path.mkdir()
    elif what == "empty":
        path.write_bytes(b"")
    with pytest.raises(GGUFCheckError, match={"missing": "no such file", "directory": "a directory", "empty": "not start"}[what]):
        check_gguf(path)


def test_unsupported_version(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "v.gguf")
    data = bytearray(path.read_bytes())
    data[4:8] = (99).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(GGUFCheckError, match=r"expected a well-formed GGUF file .*version 99"):
        check_gguf(path)


def _boundaries(path: Path) -> list[int]:
    """Byte offsets where one structure of the file ends and the next begins: after the magic, the
    version and the counts, each key/value pair, each tensor info, the start of the data and each
    tensor's data."""
    r = gguf.GGUFReader(path)
    cuts = {4, 8, 16, 24, r.data_offset}
    cuts |= {f.offset for f in r.fields.values() if f.offset > 0}
    cuts |= {t.field.offset for t in r.tensors}
    cuts |= {t.data_offset for t in r.tensors} | {t.data_offset + t.n_bytes - 1 for t in r.tensors}
    return sorted(c for c in cuts if 0 < c < path.stat().st_size)


def test_truncation_at_every_structural_boundary(tmp_path: Path) -> None:
    full = write_gguf(tmp_path / "full.gguf").read_bytes()
    cuts = _boundaries(tmp_path / "full.gguf")
    assert len(cuts) > 20
    for cut in sorted({c for c in cuts + [c + 1 for c in cuts] if c < len(full)}):
        part = tmp_path / f"cut{cut}.gguf"
        part.write_bytes(full[:cut])
        with pytest.raises(GGUFCheckError) as err:
            check_gguf(part)
        assert f"ends at byte {cut} " in str(err.value) and "truncated" in str(err.value), (cut, str(err.value))
        part.unlink()


def test_a_tensor_beyond_the_end_of_the_file(tmp_path: Path) -> None:
    # a tensor info whose offset points past the data: the same check as a truncation
    path = write_gguf(tmp_path / "off.gguf")
    r = gguf.GGUFReader(path)
    t = r.tensors[-1]
    at = t.field.offset + sum(int(p.nbytes) for p in t.field.parts[:-1])  # its uint64 data offset
    del r, t
    data = bytearray(path.read_bytes())
    data[at : at + 8] = (1 << 40).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(GGUFCheckError, match="truncated"):
        check_gguf(path)


def test_a_misaligned_tensor(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "align.gguf")
    r = gguf.GGUFReader(path)
    t = r.tensors[0]
    at = t.field.offset + sum(int(p.nbytes) for p in t.field.parts[:-1])
    offset = int(t.field.parts[-1][0])
    del r, t
    data = bytearray(path.read_bytes())
    data[at : at + 8] = (offset + 1).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(GGUFCheckError, match="at an offset aligned to 32 bytes"):
        check_gguf(path)
