"""Pre-flight check of a GGUF file, before llama.cpp sees it.

In: a path. Out: a ``GGUFSummary`` (architecture, layer/head counts, training context, ...) or a
``GGUFCheckError`` whose one-line message says what was expected and what was found.

llama.cpp trusts a GGUF header: a ``block_count`` that does not match the ``blk.N`` tensors present
aborts the process (SIGABRT takes an editor's language server down with it), a NaN epsilon or rope base
loads and produces nothing, a context length of 2^32-1 makes it allocate for minutes. This module reads
the header with gguf-py's ``GGUFReader`` (memory-mapped: tensor data is never read, only its extent is
checked) and refuses such files. It checks what every transformer llama.cpp runs shares; architecture
specific details stay llama.cpp's job.

Messages never quote bytes of the file (a server reachable over TCP must not become a way to read the
first bytes of arbitrary files): they name keys, tensors, counts and offsets only.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from .errors import CoreError as ServerError

GGUF_MAGIC = gguf.GGUF_MAGIC.to_bytes(4, "little")  # b"GGUF": the first four bytes of every GGUF file
MAX_CONTEXT = 1 << 24  # 16M tokens: far above any released model; 2^32-1 in a header is damage, not a model
MAX_LAYERS = 4096
MAX_HEADS = 1 << 16
MAX_EMBD = 1 << 20
DEFAULT_ROPE_FREQ_BASE = 10000.0  # what llama.cpp assumes when the key is missing

_BLOCK = re.compile(r"^blk\.(\d+)\.")
_TOKEN_EMBD = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_EMBD] + ".weight"
_ATTN_Q = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ATTN_Q] + ".weight"
_ATTN_K = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ATTN_K] + ".weight"


class GGUFCheckError(ServerError, ValueError):
    """The file is not a GGUF llama.cpp can load safely; the message is one line for the user."""


@dataclass(frozen=True)
class GGUFSummary:
    path: Path
    architecture: str
    n_layer: int
    n_ctx_train: int | None  # None: the file does not say
    n_embd: int | None
    n_head: int | None
    n_head_kv: int | None
    n_vocab: int | None  # entries of tokenizer.ggml.tokens
    rope_freq_base: float  # DEFAULT_ROPE_FREQ_BASE when the file does not say
    n_tensors: int
    file_size: int


class _Truncated(Exception):
    def __init__(self, end: int, size: int) -> None:
        super().__init__(end, size)
        self.end, self.size = end, size


class _Reader(gguf.GGUFReader):
    """``GGUFReader`` whose every read is bounds-checked.

    The stock reader slices its memory map past the end of a truncated file and then fails somewhere
    later with an unrelated ``IndexError`` or reshape error; ``_get`` is its one read primitive, so a
    check here turns a truncation at any structural boundary (header, key/value, tensor info, tensor
    data) into one clear message.
    """

    def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> Any:
        end = int(offset) + np.dtype(dtype).itemsize * int(count)
        if end > self.data.nbytes:
            raise _Truncated(end, int(self.data.nbytes))
        return super()._get(offset, dtype, count, override_order)


def file_magic(path: Path) -> bytes:
    """The first four bytes of ``path`` (fewer for a shorter file), to compare with ``GGUF_MAGIC``; ``OSError`` as
    ``open`` raises it."""
    with Path(path).open("rb") as f:
        return f.read(4)


def check_gguf(path: str | Path) -> GGUFSummary:
    """Read ``path``'s GGUF header and check it is consistent and within sane limits (see module doc)."""
    path = Path(path)
    if not path.is_file():
        raise GGUFCheckError(f"expected a GGUF model file at {path}, got {'a directory' if path.is_dir() else 'no such file'}")
    try:
        size = path.stat().st_size
        magic = file_magic(path)
    except OSError as exc:
        raise GGUFCheckError(f"expected a readable GGUF file at {path}, got {exc.strerror}") from None
    if magic != GGUF_MAGIC:
        raise GGUFCheckError(f"expected a GGUF file (starting with 'GGUF') at {path}, got a file that does not start so")
    try:
        reader = _Reader(path)
    except _Truncated as exc:
        raise GGUFCheckError(
            f"expected a complete GGUF file at {path}, got one that ends at byte {exc.size} where its header "
            f"needs at least {exc.end} (truncated?)"
        ) from None
    except (ValueError, KeyError, IndexError, OverflowError, TypeError, MemoryError) as exc:
        # the reader's own checks: bad version, unknown value/tensor type, duplicate keys or tensors, ...
        raise GGUFCheckError(f"expected a well-formed GGUF file at {path}, got: {_one_line(exc)}") from None
    except OSError as exc:
        raise GGUFCheckError(f"expected a readable GGUF file at {path}, got {exc.strerror or exc}") from None
    return _check(reader, path, size)


def _check(reader: gguf.GGUFReader, path: Path, size: int) -> GGUFSummary:
    where = f"in {path}"

    def fail(what: str) -> GGUFCheckError:
        return GGUFCheckError(f"expected {what} {where}")

    arch = _value(reader, gguf.Keys.General.ARCHITECTURE, str)
    if not arch:
        got = "none" if reader.get_field(gguf.Keys.General.ARCHITECTURE) is None else "an empty or non-string value"
        raise fail(f"a string {gguf.Keys.General.ARCHITECTURE}, got {got}")

    def key(template: str) -> str:
        return template.format(arch=arch)

    # tensors: data within the file (the reader checked the extents) and aligned as llama.cpp demands
    blocks: set[int] = set()
    tensors = {t.name: t for t in reader.tensors}
    for t in reader.tensors:
        if (t.data_offset - reader.data_offset) % reader.alignment:
            raise fail(f"tensor {t.name} at an offset aligned to {reader.alignment} bytes, got offset {t.data_offset}")
        if (m := _BLOCK.match(t.name)) is not None:
            blocks.add(int(m[1]))

    n_layer = _int(reader, key(gguf.Keys.LLM.BLOCK_COUNT), where)
    if n_layer is None:
        raise fail(f"{key(gguf.Keys.LLM.BLOCK_COUNT)}, got none")
    if not 1 <= n_layer <= MAX_LAYERS:
        raise fail(f"{key(gguf.Keys.LLM.BLOCK_COUNT)} between 1 and {MAX_LAYERS}, got {n_layer}")
    if blocks != set(range(n_layer)):
        missing = sorted(set(range(n_layer)) - blocks)
        extra = sorted(blocks - set(range(n_layer)))
        got = f"tensors for {len(blocks)} blocks" + (f", none for blk.{missing[0]}" if missing else "")
        got += f", tensors for blk.{extra[0]}" if extra else ""
        raise fail(f"blk.0 .. blk.{n_layer - 1} tensors ({key(gguf.Keys.LLM.BLOCK_COUNT)} = {n_layer}), got {got}")

    n_ctx = _int(reader, key(gguf.Keys.LLM.CONTEXT_LENGTH), where)
    if n_ctx is not None and not 1 <= n_ctx <= MAX_CONTEXT:
        raise fail(f"{key(gguf.Keys.LLM.CONTEXT_LENGTH)} between 1 and {MAX_CONTEXT}, got {n_ctx}")
    n_embd = _int(reader, key(gguf.Keys.LLM.EMBEDDING_LENGTH), where)
    if n_embd is not None and not 1 <= n_embd <= MAX_EMBD:
        raise fail(f"{key(gguf.Keys.LLM.EMBEDDING_LENGTH)} between 1 and {MAX_EMBD}, got {n_embd}")
    n_head = _int(reader, key(gguf.Keys.Attention.HEAD_COUNT), where)
    n_head_kv = _int(reader, key(gguf.Keys.Attention.HEAD_COUNT_KV), where)
    for k, v in ((gguf.Keys.Attention.HEAD_COUNT, n_head), (gguf.Keys.Attention.HEAD_COUNT_KV, n_head_kv)):
        if v is not None and not 1 <= v <= MAX_HEADS:
            raise fail(f"{key(k)} between 1 and {MAX_HEADS}, got {v}")
    if n_head is not None and n_head_kv is not None and n_head % n_head_kv:
        raise fail(
            f"{key(gguf.Keys.Attention.HEAD_COUNT)} a multiple of {key(gguf.Keys.Attention.HEAD_COUNT_KV)}, "
            f"got {n_head} and {n_head_kv}"
        )
    for k in (gguf.Keys.Attention.LAYERNORM_RMS_EPS, gguf.Keys.Attention.LAYERNORM_EPS):
        eps = _float(reader, key(k), where)
        if eps is not None and not (math.isfinite(eps) and 0.0 < eps < 1.0):
            raise fail(f"{key(k)} a finite number in (0, 1), got {eps}")
    freq_base = _float(reader, key(gguf.Keys.Rope.FREQ_BASE), where)
    if freq_base is not None and not (math.isfinite(freq_base) and freq_base > 0.0):
        raise fail(f"{key(gguf.Keys.Rope.FREQ_BASE)} a finite positive number, got {freq_base}")
    scale = _float(reader, key(gguf.Keys.Rope.SCALING_FACTOR), where)
    if scale is not None and not (math.isfinite(scale) and scale >= 0.0):
        raise fail(f"{key(gguf.Keys.Rope.SCALING_FACTOR)} a finite number >= 0, got {scale}")

    tokens = reader.get_field(gguf.Keys.Tokenizer.LIST)
    n_vocab = len(tokens.data) if tokens is not None else None
    if tokens is not None:
        # llama.cpp maps each token's text to its id and asserts that no two share one (the process aborts)
        seen: dict[bytes, int] = {}
        for i, part in enumerate(tokens.data):
            text = bytes(tokens.parts[part])
            if text in seen:
                raise fail(
                    f"{gguf.Keys.Tokenizer.LIST} with distinct token texts (llama.cpp aborts on a repeat), "
                    f"got token {i} equal to token {seen[text]} ({text[:40]!r})"
                )
            seen[text] = i

    # shapes (GGUF lists dimensions innermost first: token_embd is [n_embd, n_vocab])
    embd = tensors.get(_TOKEN_EMBD)
    if embd is not None:
        shape = [int(d) for d in embd.shape]
        if n_embd is not None and shape[0] != n_embd:
            raise fail(f"{_TOKEN_EMBD} with {n_embd} rows ({key(gguf.Keys.LLM.EMBEDDING_LENGTH)}), got shape {shape}")
        if n_vocab is not None and len(shape) > 1 and shape[1] != n_vocab:
            raise fail(f"{_TOKEN_EMBD} with {n_vocab} tokens ({gguf.Keys.Tokenizer.LIST}), got shape {shape}")
    if n_embd is not None and n_head is not None:
        head_dim = _int(reader, key(gguf.Keys.Attention.KEY_LENGTH), where)
        if head_dim is None:
            if n_embd % n_head:
                raise fail(
                    f"{key(gguf.Keys.LLM.EMBEDDING_LENGTH)} a multiple of {key(gguf.Keys.Attention.HEAD_COUNT)}, "
                    f"got {n_embd} and {n_head}"
                )
            head_dim = n_embd // n_head
        for name, heads in ((_ATTN_Q, n_head), (_ATTN_K, n_head_kv)):
            proj = tensors.get(name.format(bid=0))
            if proj is None or heads is None:
                continue
            shape = [int(d) for d in proj.shape]
            if shape != [n_embd, heads * head_dim]:
                raise fail(f"{name.format(bid=0)} of shape {[n_embd, heads * head_dim]}, got {shape}")

    return GGUFSummary(
        path=path,
        architecture=arch,
        n_layer=n_layer,
        n_ctx_train=n_ctx,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        n_vocab=n_vocab,
        rope_freq_base=DEFAULT_ROPE_FREQ_BASE if freq_base is None else freq_base,
        n_tensors=len(reader.tensors),
        file_size=size,
    )


def _value(reader: gguf.GGUFReader, key: str, kind: type) -> Any:
    f = reader.get_field(key)
    if f is None:
        return None
    try:
        v = f.contents()
    except (UnicodeDecodeError, ValueError, IndexError):
        return None
    return v if isinstance(v, kind) else None


def _int(reader: gguf.GGUFReader, key: str, where: str) -> int | None:
    """An integer key; per-layer arrays (some architectures store head counts per layer) give their max."""
    f = reader.get_field(key)
    if f is None:
        return None
    v = f.contents()
    values = v if isinstance(v, list) else [v]
    if not values or not all(isinstance(x, int) and not isinstance(x, bool) for x in values):
        raise GGUFCheckError(f"expected an integer {key} {where}, got {_describe(f)}")
    return int(max(values))


def _float(reader: gguf.GGUFReader, key: str, where: str) -> float | None:
    f = reader.get_field(key)
    if f is None:
        return None
    v = f.contents()
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise GGUFCheckError(f"expected a number {key} {where}, got {_describe(f)}")
    return float(v)


def _describe(f: Any) -> str:
    return f"a value of type {'/'.join(t.name for t in f.types) or 'unknown'}"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:200] + "...") if len(text) > 200 else text or type(exc).__name__


__all__ = ["GGUF_MAGIC", "MAX_CONTEXT", "GGUFCheckError", "GGUFSummary", "check_gguf", "file_magic"]
