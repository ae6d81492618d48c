"""Checkpoint readers: a Llama checkpoint folder in, hyper-parameters and Meta-layout tensors out, lazily.

In: a folder as Meta ships Code Llama (``consolidated.00.pth`` .. ``consolidated.NN.pth``, one per
model-parallel rank, with ``params.json``) or as Hugging Face ships it (``config.json`` with
``model.safetensors`` / ``model-0000N-of-0000M.safetensors`` + ``model.safetensors.index.json``, or
``pytorch_model.bin`` [+ index]), and a ``tokenizer.model`` beside it (or, for Meta downloads, one folder up).

Out: ``open_checkpoint(path) -> Checkpoint`` with
- ``hparams``: dim, layers, heads, kv heads, norm eps, rope theta, declared vocab size / context length;
- ``tensors``: every weight under its GGUF name with its *merged* shape in Meta orientation, in write order;
- ``read_rows(name, start, stop)``: rows ``start:stop`` of a merged tensor as numpy, in the stored dtype
  (bfloat16 as its raw uint16 bits), with Meta shards concatenated along their split axis and HF q/k rows
  un-permuted (see ``tensors``); ``read(name)``: a whole tensor as float32;
- ``position(name)``: where a tensor's bytes start, so a caller can read tensors in file order;
- ``source_sha256()``: the digest of the source files, hashed as the weights are read (one pass).

No torch. Weight files are opened by ``weightfiles``: PyTorch zip files through a restricted unpickler
that only records tensor shapes and offsets (a pickle naming any other global is refused before anything
is called), safetensors through their JSON header; the data is memory-mapped and paged in when a row is
read. Mapped pages count toward the process' resident set while mapped in, so ``note_read`` counts the
bytes read and every few dozen MB ``release()`` hands the pages back: peak memory stays near one chunk
of one tensor, not the whole model.

Every inconsistency (missing or truncated shard, params.json disagreeing with itself or with the
tensors, a non-Llama folder, a pickle that would run code) raises ``ExportError`` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from codellama_core.outfile import file_sha256
from model_export import tensors as tn
from model_export.errors import ExportError
from model_export.weightfiles import FLOAT_DTYPES, NUMPY_DTYPES, WeightFile, open_weights

Layout = Literal["meta", "hf-safetensors", "hf-bin"]

_SHARD_RE = re.compile(r"^consolidated\.(\d+)\.pth$")
_INDEX_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class HParams:
    """Hyper-parameters as the checkpoint's config declares them (None: the config does not say)."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    norm_eps: float
    rope_theta: float | None
    vocab_size: int | None  # None for absent or -1 (some Meta releases): the embedding decides
    context_length: int | None  # HF max_position_embeddings (Meta params.json has none)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


@dataclass(frozen=True)
class TensorSpec:
    """One weight: its role, merged shape (out, in) in Meta orientation, and source dtype ("F32", "F16", "BF16")."""

    role: tn.Role
    shape: tuple[int, ...]
    dtype: str

    @property
    def name(self) -> str:
        return self.role.gguf_name

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * NUMPY_DTYPES[self.dtype].itemsize


@dataclass
class Checkpoint:
    """An opened checkpoint folder. Use as a context manager (or call ``close()``) to drop file mappings."""

    layout: Layout
    root: Path
    weight_files: tuple[Path, ...]
    config_file: Path
    tokenizer_path: Path | None
    hparams: HParams
    tensors: dict[str, TensorSpec] = field(default_factory=dict)  # GGUF name -> spec, in write order
    _files: list[WeightFile] = field(default_factory=list, init=False, repr=False)  # open, weight_files order
    _read_since_release: int = field(default=0, init=False, repr=False)
    _hashing: bool = field(default=True, init=False, repr=False)

    # ------------------------------------------------------------------ derived facts

    @property
    def n_vocab(self) -> int:
        """Rows of the token embedding (may exceed the tokenizer's pieces: Code Llama pads to 32016)."""
        return self.tensors[tn.gguf_name(tn.T.TOKEN_EMBD)].shape[0]

    @property
    def n_ff(self) -> int:
        """Feed-forward hidden size, read from the w1 (ffn_gate) tensor: params.json only implies it."""
        return self.tensors[tn.gguf_name(tn.T.FFN_GATE, 0)].shape[0]

    @property
    def n_params(self) -> int:
        return sum(math.prod(s.shape) for s in self.tensors.values())

    @property
    def source_files(self) -> list[Path]:
        """Everything the output depends on: weights, config, tokenizer."""
        files = [*self.weight_files, self.config_file]
        if self.tokenizer_path is not None:
            files.append(self.tokenizer_path)
        return files

    @property
    def input_files(self) -> list[Path]:
        """Every file conversion reads (``source_files`` plus a Hugging Face index): what an output must not be."""
        index = [self.root / n for n in _INDEX_NAMES if (self.root / n).is_file()]
        return [*self.source_files, *index]

    def source_sha256(self) -> str:
        """One SHA-256 for the source: of the ``sha256sum``-style listing ``<hex>  <path>\\n`` of every file
        in ``source_files``, paths relative to the checkpoint folder, i.e. what
        ``cd CKPT && sha256sum FILES... | sha256sum`` prints. Weight files are hashed as they are read
        (``note_read``); whatever was not read yet is hashed now, the small config and tokenizer too."""
        if not self._hashing:
            raise ExportError("expected source hashing to be on, got it turned off for this checkpoint")
        digests = [f.finish_sha256() for f in self._weight_handles()]
        digests += [file_sha256(path) for path in self.source_files[len(digests) :]]
        listing = "".join(f"{d}  {os.path.relpath(p, self.root)}\n" for d, p in zip(digests, self.source_files, strict=True))
        return hashlib.sha256(listing.encode()).hexdigest()

    def hash_while_reading(self, on: bool) -> None:
        """Turn hashing of the weight files during reads off (``--no-hash``) or on (the default)."""
        self._hashing = on

    # ------------------------------------------------------------------ reading

    def _weight_handles(self) -> list[WeightFile]:
        if not self._files:
            self._files = [open_weights(p) for p in self.weight_files]
        return self._files

    def _file(self, index: int) -> WeightFile:
        return self._weight_handles()[index]

    def position(self, name: str) -> tuple[int, int]:
        """(index in ``weight_files``, byte offset) of the first bytes of ``name``: sort by it to read in file order."""
        raise NotImplementedError

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (first axis) of the merged tensor ``name``, in the stored dtype (BF16 as uint16)."""
        raise NotImplementedError

    def read_row_blocks(self, name: str, start: int, stop: int) -> list[tuple[int, np.ndarray]]:
        """Rows ``start:stop`` as (first column, block) pieces that tile them; saves a concatenation
        when the caller copies the pieces into place anyway. One piece unless shards split the columns."""
        return [(0, self.read_rows(name, start, stop))]

    def read(self, name: str) -> np.ndarray:
        """The whole merged tensor as float32 (a copy owned by the caller)."""
        spec = self.tensors[name]
        return to_float32(self.read_rows(name, 0, spec.shape[0]), spec.dtype)

    def release(self) -> None:
        """Hand back the resident pages of everything read so far; later reads page them in again."""
        for f in self._files:
            f.release()

    def note_read(self, nbytes: int, limit: int) -> None:
        """After a read of ``nbytes``: hash what was read (in file order), and past ``limit`` bytes paged in
        since the last release, ``release()``."""
        self._read_since_release += nbytes
        if self._hashing:
            self._read_since_release += sum(f.advance_hash() for f in self._files)
        if self._read_since_release >= limit:
            self.release()
            self._read_since_release = 0

    def close(self) -> None:
        """Drop every open file and mapping."""
        for f in self._files:
            f.close()
        self._files = []

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ shared validation

    def _finish(self, found: dict[str, tuple[tn.Role, tuple[int, ...], str]]) -> None:
        """Order the tensors, and check them against each other and the hyper-parameters."""
        hp = self.hparams
        missing = []
        for kind, bid in tn.write_order(hp.n_layers):
            name = tn.gguf_name(kind, bid)
            if name not in found:
                missing.append(name)
                continue
            role, shape, dtype = found[name]
            self.tensors[name] = TensorSpec(role, shape, dtype)
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise ExportError(
                f"expected all Llama weights for {hp.n_layers} layers in {self.root}, got none for "
                f"{', '.join(missing[:3])}{more} (a missing shard, or not a Llama checkpoint)"
            )
        n_vocab, n_ff = self.n_vocab, self.n_ff
        if hp.vocab_size is not None and hp.vocab_size != n_vocab:
            raise ExportError(
                f"expected vocab_size in {self.config_file.name} to match the embedding rows, got "
                f"vocab_size={hp.vocab_size} and {n_vocab} rows"
            )
        for name, spec in self.tensors.items():
            want = tn.expected_shape(
                spec.role.kind, dim=hp.dim, n_heads=hp.n_heads, n_kv_heads=hp.n_kv_heads, n_vocab=n_vocab, n_ff=n_ff
            )
            if spec.shape != want:
                raise ExportError(
                    f"expected {name} of shape {want} from {self.config_file.name} (dim={hp.dim}, "
                    f"n_heads={hp.n_heads}, n_kv_heads={hp.n_kv_heads}), got {spec.shape} in {self.root} "
                    f"(a missing shard, or a config that does not belong to these weights)"
                )
            if spec.dtype not in FLOAT_DTYPES:
                raise ExportError(f"expected float32, float16 or bfloat16 weights, got {spec.dtype} for {name}")


# ---------------------------------------------------------------------------- helpers


# Hyper-parameters in either config format: (HParams field, params.json key, config.json key, accepted
# values, test, default when absent or null in params.json / config.json). REQUIRED: no default.
# The bounds keep every value representable in the GGUF (uint32 counts, float32 eps/theta) and away from
# values llama.cpp aborts or stalls on; they are far beyond any released Llama (80 layers, dim 8192).
REQUIRED = object()
MAX_LAYERS = 1024
MAX_DIM = 1 << 20
FLOAT32_MAX = 3.4028234663852886e38
_HPARAMS: tuple[tuple[str, str, str, str, Callable[[Any], bool], Any, Any], ...] = (
    ("dim", "dim", "hidden_size", f"an integer in [1, {MAX_DIM}]", lambda v: 1 <= v <= MAX_DIM, REQUIRED, REQUIRED),
    ("n_layers", "n_layers", "num_hidden_layers", f"an integer in [1, {MAX_LAYERS}]",
     lambda v: 1 <= v <= MAX_LAYERS, REQUIRED, REQUIRED),
    ("n_heads", "n_heads", "num_attention_heads", f"an integer in [1, {MAX_DIM}]",
     lambda v: 1 <= v <= MAX_DIM, REQUIRED, REQUIRED),
    ("n_kv_heads", "n_kv_heads", "num_key_value_heads", f"an integer in [1, {MAX_DIM}]",
     lambda v: 1 <= v <= MAX_DIM, None, None),  # None: as many as query heads
    ("norm_eps", "norm_eps", "rms_norm_eps", "a finite number in (0, 1)", lambda v: 0 < v < 1, 1e-5, 1e-6),
    ("rope_theta", "rope_theta", "rope_theta", "a finite number in (0, 3.4e38] (a float32)",
     lambda v: 0 < v <= FLOAT32_MAX, None, 10000.0),
    ("vocab_size", "vocab_size", "vocab_size", "a positive integer (or -1 in params.json)",
     lambda v: v >= 1 or v == -1, None, None),  # -1 (some Meta releases): the embedding decides
    ("context_length", "max_seq_len", "max_position_embeddings", "a positive integer",
     lambda v: v >= 1, None, None),
)  # fmt: skip
_INT_FIELDS = frozenset({"dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "context_length"})


def read_hparams(data: dict[str, Any], source: Path, scheme: Literal["meta", "hf"]) -> HParams:
    """A params.json (``meta``) or config.json (``hf``) object -> checked ``HParams``.

    Every value must have the right type (integers for counts; ``true`` is not 1), be finite and lie in
    its range; the counts must fit each other (heads divide dim into an even head size, query heads are a
    multiple of kv heads). Anything else raises ``ExportError("expected <key> in <file> to be ..., got ...")``.
    """
    values: dict[str, Any] = {}
    for field_name, meta_key, hf_key, what, ok, meta_default, hf_default in _HPARAMS:
        key, default = (meta_key, meta_default) if scheme == "meta" else (hf_key, hf_default)
        value = data.get(key)
        if value is None:
            if default is REQUIRED:
                raise ExportError(f"expected {key!r} in {source}, got keys {sorted(data)}")
            values[field_name] = default
            continue
        integer = field_name in _INT_FIELDS
        typed = isinstance(value, int) if integer else isinstance(value, (int, float))
        # (a huge JSON integer has no float value: isfinite would overflow, so integers skip that test)
        if isinstance(value, bool) or not typed or not (integer or math.isfinite(value)) or not ok(value):
            raise ExportError(f"expected {key} in {source} to be {what}, got {value!r}")
        values[field_name] = value if integer else float(value)
    if values["n_kv_heads"] is None:
        values["n_kv_heads"] = values["n_heads"]
    if values["vocab_size"] == -1:
        values["vocab_size"] = None
    dim, n_heads, n_kv_heads = values["dim"], values["n_heads"], values["n_kv_heads"]
    if dim % n_heads:
        raise ExportError(f"expected dim divisible by n_heads in {source}, got dim={dim} n_heads={n_heads}")
    if (dim // n_heads) % 2:
        raise ExportError(f"expected an even head size (dim / n_heads) in {source}, got {dim // n_heads}")
    if n_heads % n_kv_heads:
        raise ExportError(f"expected n_heads divisible by n_kv_heads in {source}, got n_heads={n_heads} n_kv_heads={n_kv_heads}")
    return HParams(**values)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"expected a readable JSON file at {path}, got {type(e).__name__}: {e}") from None
    if not isinstance(data, dict):
        raise ExportError(f"expected a JSON object in {path}, got {type(data).__name__}")
    return data


def to_float32(a: np.ndarray, dtype: str) -> np.ndarray:
    """Stored values -> float32 (a new array). bfloat16 is the top half of a float32: shift its bits up."""
    out: np.ndarray = np.left_shift(a, 16, dtype=np.uint32).view(np.float32) if dtype == "BF16" else a.astype(np.float32)
    return out


def find_tokenizer(root: Path, layout: Layout) -> Path | None:
    """``tokenizer.model`` beside the weights, or (Meta downloads keep one at the top) one folder up."""
    candidates = [root / "tokenizer.model"]
    if layout == "meta":
        candidates.append(root.parent / "tokenizer.model")
    return next((p for p in candidates if p.is_file()), None)


# ---------------------------------------------------------------------------- Meta layout


class MetaCheckpoint(Checkpoint):
    """``consolidated.NN.pth`` model-parallel shards + ``params.json``."""

    _parts: dict[str, list[tuple[int, str]]]  # GGUF name -> [(shard index, source name)] in rank order

    @classmethod
    def open(cls, root: Path) -> MetaCheckpoint:
        params_path = root / "params.json"
        params = _read_json(params_path)
        hp = read_hparams(params, params_path, "meta")

        shards: dict[int, Path] = {}
        for p in root.iterdir():
            if m := _SHARD_RE.match(p.name):
                shards[int(m.group(1))] = p
        if not shards:
            raise ExportError(f"expected consolidated.00.pth beside {params_path}, got no shard files")
        for i in range(max(shards) + 1):
            if i not in shards:
                raise ExportError(
                    f"expected model-parallel shards consolidated.00..{max(shards):02d}.pth in {root}, "
                    f"got consolidated.{i:02d}.pth missing"
                )
        files = tuple(shards[i] for i in range(len(shards)))
        ckpt = cls(
            layout="meta",
            root=root,
            weight_files=files,
            config_file=params_path,
            tokenizer_path=find_tokenizer(root, "meta"),
            hparams=hp,
        )
        ckpt._parts = {}
        try:
            ckpt._merge_tables()
        except BaseException:
            ckpt.close()
            raise
        return ckpt

    def _merge_tables(self) -> None:
        """Merged shapes from the shards' tensor tables (no data is read)."""
        files = self.weight_files
        seen: dict[str, list[tuple[int, str, tuple[int, ...], str]]] = {}
        roles: dict[str, tn.Role] = {}
        for rank in range(len(files)):
            for src, t in self._file(rank).tensors.items():
                role = tn.classify(src, self.hparams.n_layers)
                if role is None:
                    continue
                roles[role.gguf_name] = role
                seen.setdefault(role.gguf_name, []).append((rank, src, t.shape, t.dtype))
        found: dict[str, tuple[tn.Role, tuple[int, ...], str]] = {}
        for name, parts in seen.items():
            role = roles[name]
            if len(parts) != len(files):
                have = ", ".join(files[r].name for r, *_ in parts)
                raise ExportError(f"expected {name} in every one of {len(files)} shards, got it only in {have}")
            shapes = [s for _, _, s, _ in parts]
            dtypes = {d for *_, d in parts}
            if len(dtypes) != 1:
                raise ExportError(f"expected one dtype for {name} across shards, got {sorted(dtypes)}")
            axis = tn.META_SPLIT_AXIS[role.kind]
            merged = list(shapes[0])
            for s in shapes[1:]:
                other_axes_equal = len(s) == len(merged) and all(
                    a == b for k, (a, b) in enumerate(zip(s, shapes[0], strict=True)) if k != axis
                )
                if not other_axes_equal or (axis is None and s != shapes[0]):
                    raise ExportError(f"expected the shards of {name} to agree outside split axis {axis}, got shapes {shapes}")
                if axis is not None:
                    merged[axis] += s[axis]
            self._parts[name] = [(r, src) for r, src, _, _ in parts]
            found[name] = (role, tuple(merged), dtypes.pop())
        self._finish(found)

    def position(self, name: str) -> tuple[int, int]:
        rank, src = self._parts[name][0]
        return rank, self._file(rank).position(src)

    def read_row_blocks(self, name: str, start: int, stop: int) -> list[tuple[int, np.ndarray]]:
        if tn.META_SPLIT_AXIS[self.tensors[name].role.kind] != 1:
            return [(0, self.read_rows(name, start, stop))]
        blocks, col = [], 0
        for r, src in self._parts[name]:
            part = self._file(r).rows(src, start, stop)
            blocks.append((col, part))
            col += part.shape[1]
        return blocks

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        spec = self.tensors[name]
        axis = tn.META_SPLIT_AXIS[spec.role.kind]
        parts = self._parts[name]
        if axis is None:  # replicated: rank 0's copy
            r, src = parts[0]
            return self._file(r).rows(src, start, stop)
        if axis == 1:  # every shard holds a column block of every row
            return np.concatenate([b for _, b in self.read_row_blocks(name, start, stop)], axis=1)
        pieces, offset = [], 0  # axis 0: shard k holds a consecutive block of rows
        for r, src in parts:
            f = self._file(r)
            n = f.tensors[src].shape[0]
            lo, hi = max(start, offset), min(stop, offset + n)
            if lo < hi:
                pieces.append(f.rows(src, lo - offset, hi - offset))
            offset += n
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=0)


# ---------------------------------------------------------------------------- Hugging Face layout


class HFCheckpoint(Checkpoint):
    """``config.json`` + safetensors shards (with index) or ``pytorch_model.bin`` (with or without index)."""

    _where: dict[str, tuple[int, str]]  # GGUF name -> (index in weight_files, HF tensor name)

    @classmethod
    def open(cls, root: Path) -> HFCheckpoint:
        config_path = root / "config.json"
        cfg = _read_json(config_path)
        model_type = cfg.get("model_type")
        archs = cfg.get("architectures") or []
        if model_type != "llama" and "LlamaForCausalLM" not in archs:
            raise ExportError(
                f"expected a Llama config (model_type 'llama', LlamaForCausalLM) in {config_path}, got "
                f"model_type={model_type!r} architectures={archs!r}"
            )
        if cfg.get("rope_scaling"):
            raise ExportError(f"expected no rope_scaling in {config_path} (Code Llama has none), got {cfg['rope_scaling']!r}")
        if cfg.get("hidden_act", "silu") != "silu":
            raise ExportError(f"expected hidden_act 'silu' in {config_path}, got {cfg['hidden_act']!r}")
        hp = read_hparams(cfg, config_path, "hf")

        weight_map, layout = cls._weight_map(root)
        files = tuple(sorted(set(weight_map.values())))
        for f in files:
            if not f.is_file():
                raise ExportError(f"expected the weight file {f} listed in the index, got no such file")
        ckpt = cls(
            layout=layout,
            root=root,
            weight_files=files,
            config_file=config_path,
            tokenizer_path=find_tokenizer(root, layout),
            hparams=hp,
        )
        ckpt._where = {}
        try:
            ckpt._locate(weight_map)
        except BaseException:
            ckpt.close()
            raise
        return ckpt

    def _locate(self, weight_map: dict[str, Path]) -> None:
        """Where each listed tensor is, checked against the files' own tables."""
        found: dict[str, tuple[tn.Role, tuple[int, ...], str]] = {}
        index = {f: i for i, f in enumerate(self.weight_files)}
        listed: dict[Path, set[str]] = {f: set() for f in self.weight_files}
        for src, f in weight_map.items():
            listed[f].add(src)
        for f in self.weight_files:
            actual = self._file(index[f]).tensors
            for src in sorted(listed[f]):
                if src not in actual:
                    raise ExportError(f"expected tensor {src!r} in {f.name} (as the index says), got no such tensor")
                role = tn.classify(src, self.hparams.n_layers)
                if role is None:
                    continue
                self._where[role.gguf_name] = (index[f], src)
                found[role.gguf_name] = (role, actual[src].shape, actual[src].dtype)
        self._finish(found)

    @staticmethod
    def _weight_map(root: Path) -> tuple[dict[str, Path], Layout]:
        """HF tensor name -> file, from the index when there is one, else from the single weight file."""
        for index_name, single, layout in (
            ("model.safetensors.index.json", "model.safetensors", "hf-safetensors"),
            ("pytorch_model.bin.index.json", "pytorch_model.bin", "hf-bin"),
        ):
            index = root / index_name
            if index.is_file():
                data = _read_json(index)
                wm = data.get("weight_map")
                if not isinstance(wm, dict) or not wm:
                    raise ExportError(f"expected a non-empty weight_map in {index}, got {type(wm).__name__}")
                return {k: _inside(root, v, index) for k, v in wm.items()}, layout  # type: ignore[return-value]
            if (root / single).is_file():
                f = open_weights(root / single)
                try:
                    return {k: root / single for k in f.tensors}, layout  # type: ignore[return-value]
                finally:
                    f.close()
        raise ExportError(f"expected model.safetensors[.index.json] or pytorch_model.bin[.index.json] in {root}, got none")

    def position(self, name: str) -> tuple[int, int]:
        i, src = self._where[name]
        return i, self._file(i).position(src)

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        i, src = self._where[name]
        f = self._file(i)
        kind = self.tensors[name].role.kind
        if kind not in (tn.T.ATTN_Q, tn.T.ATTN_K):
            return f.rows(src, start, stop)
        # q/k: un-permute whole heads, then cut the requested rows out of them
        hd = self.hparams.head_dim
        h0, h1 = start // hd, -(-stop // hd)
        meta = tn.hf_unpermute(f.rows(src, h0 * hd, h1 * hd), h1 - h0)
        return meta[start - h0 * hd : stop - h0 * hd]


def _inside(root: Path, name: object, index: Path) -> Path:
    """A weight file named by an index's ``weight_map``: a relative path that stays inside ``root``.

    Checked on the path as written, without resolving symlinks: Hugging Face's cache links every snapshot
    file to a blob outside the snapshot folder, and that is fine; an absolute name or a ``..`` that climbs
    out of the folder is not (it would make the converter read any file the user can read).
    """
    if not isinstance(name, str) or not name:
        raise ExportError(f"expected file names as weight_map values in {index}, got {name!r}")
    rel = os.path.normpath(name)
    if os.path.isabs(name) or rel == ".." or rel.startswith(".." + os.sep) or "\0" in name:
        raise ExportError(f"expected weight_map in {index} to name files inside {root}, got {name!r}")
    return root / rel


# ---------------------------------------------------------------------------- entry point


def detect_layout(root: Path) -> Layout:
    """Which reader a folder needs, from the files it holds."""
    if (root / "params.json").is_file() or any(_SHARD_RE.match(p.name) for p in root.iterdir()):
        return "meta"
    if (root / "config.json").is_file():
        if (root / "model.safetensors.index.json").is_file() or (root / "model.safetensors").is_file():
            return "hf-safetensors"
        if (root / "pytorch_model.bin.index.json").is_file() or (root / "pytorch_model.bin").is_file():
            return "hf-bin"
        raise ExportError(f"expected safetensors or pytorch_model.bin weights beside {root / 'config.json'}, got none")
    names = sorted(p.name for p in root.iterdir())[:8]
    raise ExportError(
        f"expected a Llama checkpoint in {root} (consolidated.NN.pth + params.json, or Hugging Face "
        f"config.json + safetensors / pytorch_model.bin), got {names or 'an empty folder'}"
    )


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open a checkpoint folder of either layout; see the module docstring for what comes back."""
    root = Path(path)
    if not root.is_dir():
        raise ExportError(f"expected a checkpoint folder, got {root} ({'a file' if root.exists() else 'no such folder'})")
    layout = detect_layout(root)
    if layout == "meta":
        if not (root / "params.json").is_file():
            raise ExportError(f"expected params.json beside the consolidated.NN.pth shards in {root}, got none")
        return MetaCheckpoint.open(root)
    return HFCheckpoint.open(root)


def iter_row_chunks(spec: TensorSpec, max_bytes: int = 8 << 20) -> Iterator[tuple[int, int]]:
    """(start, stop) row ranges of about ``max_bytes`` (in float32) covering a tensor's first axis."""
    rows = spec.shape[0]
    if len(spec.shape) == 1:
        yield 0, rows
        return
    per_row = spec.shape[1] * 4
    step = max(1, max_bytes // per_row)
    for start in range(0, rows, step):
        yield start, min(rows, start + step)


__all__ = ["Checkpoint", "HParams", "TensorSpec", "iter_row_chunks", "open_checkpoint", "to_float32"]
