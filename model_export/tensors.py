"""Tensor names, model-parallel split axes and the HF q/k permutation: the facts of the Llama layout, once.

In: a tensor name as a checkpoint spells it (Meta ``layers.3.attention.wq.weight`` or Hugging Face
``model.layers.3.self_attn.q_proj.weight``). Out: its role (a ``gguf.MODEL_TENSOR``), block index and GGUF
name (``blk.3.attn_q.weight``), how Meta's model-parallel shards split it, the shape ``params.json`` implies
for it, and the GGML type it is written in.

Both naming schemes are resolved by gguf-py's own ``TensorNameMap`` for ``MODEL_ARCH.LLAMA`` (it knows the
Meta ``llama-pth`` names and the HF names), so no tensor name is spelled here except through gguf-py.

Orientation: every 2-D weight is ``(out_features, in_features)`` as ``torch.nn.Linear`` stores it, and the
embedding is ``(n_vocab, dim)``. GGUF lists dimensions innermost first, so numpy's C-order row-major arrays
are written unchanged and llama.cpp sees ``ne = (in_features, out_features)``, the layout it expects.

Rotary embedding layout. Meta (and llama.cpp's ``llama`` architecture, ``LLAMA_ROPE_TYPE_NORM``) rotate
*interleaved* pairs of each head: (x0, x1), (x2, x3), ... Hugging Face's ``rotate_half`` rotates the halves
(x_i, x_{i+d/2}) instead, so ``convert_llama_weights_to_hf.py`` permutes the rows of ``wq`` and ``wk``
per head: Meta row ``2i + j`` of a head (pair i, member j) becomes HF row ``j * d/2 + i``. A GGUF must hold
Meta's order, so HF q/k rows are permuted back (``hf_unpermute``); Meta checkpoints are written as they are.
``wk`` has ``n_kv_heads`` heads under grouped-query attention, so it is un-permuted with that count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

import gguf
import numpy as np

from model_export.errors import ExportError

T = gguf.MODEL_TENSOR
ArrayT = TypeVar("ArrayT", bound=Any)  # a numpy array or a torch tensor: only reshape/swapaxes are used

# The roles a llama GGUF holds, in the order they are written (llama.cpp does not care; people reading
# ``gguf-dump`` output do). Per-block roles repeat for every layer.
GLOBAL_FIRST = (T.TOKEN_EMBD,)
BLOCK_ROLES = (
    T.ATTN_NORM,
    T.ATTN_Q,
    T.ATTN_K,
    T.ATTN_V,
    T.ATTN_OUT,
    T.FFN_NORM,
    T.FFN_GATE,
    T.FFN_DOWN,
    T.FFN_UP,
)
GLOBAL_LAST = (T.OUTPUT_NORM, T.OUTPUT)

# Tensors some checkpoints carry that are derived from hyper-parameters and not weights: Meta's
# ``rope.freqs`` (replicated on every shard) and old HF ``rotary_emb.inv_freq`` buffers. llama.cpp
# recomputes them from ``llama.rope.freq_base``, so they are skipped.
SKIPPED_ROLES = frozenset({T.ROPE_FREQS, T.ATTN_ROT_EMBD})

# How Meta's fairscale layers split a tensor over model-parallel ranks (``consolidated.NN.pth``), and so
# the axis along which the shards are concatenated back. ParallelEmbedding and RowParallelLinear split
# the input features (dim 1); ColumnParallelLinear splits the output features (dim 0); norms are
# replicated on every rank (None).
META_SPLIT_AXIS: dict[gguf.MODEL_TENSOR, int | None] = {
    T.TOKEN_EMBD: 1,
    T.ATTN_Q: 0,
    T.ATTN_K: 0,
    T.ATTN_V: 0,
    T.ATTN_OUT: 1,
    T.FFN_GATE: 0,  # w1
    T.FFN_DOWN: 1,  # w2
    T.FFN_UP: 0,  # w3
    T.OUTPUT: 0,
    T.ATTN_NORM: None,
    T.FFN_NORM: None,
    T.OUTPUT_NORM: None,
}

NORM_ROLES = frozenset({T.ATTN_NORM, T.FFN_NORM, T.OUTPUT_NORM})

OUTTYPES: dict[str, gguf.GGMLQuantizationType] = {
    "f32": gguf.GGMLQuantizationType.F32,
    "f16": gguf.GGMLQuantizationType.F16,
    "bf16": gguf.GGMLQuantizationType.BF16,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
}
FILE_TYPES: dict[str, gguf.LlamaFileType] = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}

_BLOCK_RE = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class Role:
    """What a checkpoint tensor is: its GGUF role, block index (None for global tensors) and GGUF name."""

    kind: gguf.MODEL_TENSOR
    bid: int | None
    gguf_name: str


@lru_cache(maxsize=8)
def _name_map(n_blocks: int) -> gguf.TensorNameMap:
    return gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_blocks)


def classify(source_name: str, n_blocks: int) -> Role | None:
    """The role of a Meta- or HF-named tensor; None for tensors to skip (rotary frequency buffers).

    Raises ExportError for a name gguf-py does not know for the llama architecture: that is not a Llama
    checkpoint (or one with extra parts this exporter would silently drop).
    """
    found = _name_map(n_blocks).get_type_and_name(source_name, try_suffixes=(".weight", ".bias"))
    if found is None:
        raise ExportError(
            f"expected Llama tensor names for {n_blocks} layers, got {source_name!r} (not a Llama checkpoint, "
            f"or n_layers in the config is wrong)"
        )
    kind, name = found
    if kind in SKIPPED_ROLES:
        return None
    if kind not in META_SPLIT_AXIS or source_name.endswith(".bias"):
        raise ExportError(
            f"expected only Llama weights, got {source_name!r} ({name}), which llama.cpp's llama architecture has no slot for"
        )
    m = _BLOCK_RE.match(name)
    bid = int(m.group(1)) if m else None
    return Role(kind, bid, name)


def gguf_name(kind: gguf.MODEL_TENSOR, bid: int | None = None) -> str:
    """GGUF tensor name of a role, e.g. (ATTN_Q, 3) -> ``blk.3.attn_q.weight``."""
    base = gguf.TENSOR_NAMES[kind]
    return (base.format(bid=bid) if bid is not None else base) + ".weight"


def write_order(n_layers: int) -> list[tuple[gguf.MODEL_TENSOR, int | None]]:
    """Every (role, block) a complete Llama checkpoint has, in the order they are written."""
    order: list[tuple[gguf.MODEL_TENSOR, int | None]] = [(k, None) for k in GLOBAL_FIRST]
    for bid in range(n_layers):
        order += [(k, bid) for k in BLOCK_ROLES]
    order += [(k, None) for k in GLOBAL_LAST]
    return order


def expected_shape(
    kind: gguf.MODEL_TENSOR, *, dim: int, n_heads: int, n_kv_heads: int, n_vocab: int, n_ff: int
) -> tuple[int, ...]:
    """The (out, in) shape the hyper-parameters imply for a role (``n_vocab``/``n_ff`` come from the tensors)."""
    head_dim = dim // n_heads
    return {
        T.TOKEN_EMBD: (n_vocab, dim),
        T.ATTN_NORM: (dim,),
        T.ATTN_Q: (n_heads * head_dim, dim),
        T.ATTN_K: (n_kv_heads * head_dim, dim),
        T.ATTN_V: (n_kv_heads * head_dim, dim),
        T.ATTN_OUT: (dim, n_heads * head_dim),
        T.FFN_NORM: (dim,),
        T.FFN_GATE: (n_ff, dim),
        T.FFN_DOWN: (dim, n_ff),
        T.FFN_UP: (n_ff, dim),
        T.OUTPUT_NORM: (dim,),
        T.OUTPUT: (n_vocab, dim),
    }[kind]


def hf_unpermute(w: ArrayT, n_heads: int) -> ArrayT:
    """HF q/k rows -> Meta's interleaved rotary layout. ``w``: (n_heads * head_dim, in) for whole heads.

    Per head, HF row ``j * d/2 + i`` goes back to row ``2i + j``: view the head as (2, d/2), swap the two
    axes to (d/2, 2), flatten. Works on numpy arrays and torch tensors alike (reshape/swapaxes only).
    """
    rows, cols = w.shape
    if rows % (2 * n_heads):
        raise ExportError(f"expected q/k rows divisible by 2 * n_heads ({2 * n_heads}), got {rows}")
    out: ArrayT = w.reshape(n_heads, 2, rows // n_heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)
    return out


def tensor_qtype(kind: gguf.MODEL_TENSOR, shape: tuple[int, ...], outtype: str) -> gguf.GGMLQuantizationType:
    """The GGML type a tensor is stored in: norms (1-D) stay f32; 2-D weights take ``outtype``.

    Block formats (q8_0 packs rows in blocks of 32) need a row length divisible by the block size; a tensor
    whose rows are not falls back to f16, as llama.cpp's own converter does.
    """
    if kind in NORM_ROLES or len(shape) == 1:
        return gguf.GGMLQuantizationType.F32
    qtype = OUTTYPES[outtype]
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    if shape[-1] % block:
        return gguf.GGMLQuantizationType.F16
    return qtype


def stored_nbytes(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> int:
    """Bytes a tensor of ``shape`` occupies in ``qtype`` (blocks of ``block`` values take ``type_size`` bytes)."""
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    n = int(np.prod(shape))
    return n // block * type_size
