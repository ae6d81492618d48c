"""Read what a GGUF file is without loading it into llama.cpp.

In: a path. Out: :class:`GGUFInfo` - architecture, per-tensor storage types, parameter count, bits per
weight, rope settings and context length - or a :class:`QuantizeError` that says what is wrong with the
file (not a GGUF, truncated, unreadable).

llama.cpp aborts the whole process on some malformed inputs instead of returning an error, so every file
is checked here, with gguf-py's reader, before it is handed to llama.cpp. The reader memory-maps the file,
so this costs a header parse, not a read of the weights.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, Keys

from codellama_core.gguf_check import GGUF_MAGIC, file_magic
from quantize.errors import QuantizeError

# Storage types that are "not quantized": llama.cpp quantizes from these without --allow-requantize.
FLOAT_TYPES = frozenset({GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16})


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type: str  # GGML type name, e.g. "Q6_K"
    shape: tuple[int, ...]  # GGUF order: ne[0] (row length) first
    n_elements: int
    n_bytes: int


@dataclass(frozen=True)
class GGUFInfo:
    path: Path
    file_size: int
    architecture: str
    file_type: int | None  # general.file_type (a llama_ftype id) when the writer recorded it
    tensors: list[TensorInfo]
    context_length: int | None
    rope: dict[str, Any] = field(default_factory=dict)

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    @property
    def bits_per_weight(self) -> float:
        """Tensor storage bits over parameter count - llama.cpp's "BPW" (metadata and vocab excluded)."""
        return 8.0 * self.tensor_bytes / max(self.n_params, 1)

    @property
    def type_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(t.type for t in self.tensors).items()))

    @property
    def is_quantized(self) -> bool:
        """True when any tensor is stored in a block-quantized type (llama.cpp calls that requantizing)."""
        return any(t.type not in {x.name for x in FLOAT_TYPES} for t in self.tensors)

    def tensor(self, name: str) -> TensorInfo:
        for t in self.tensors:
            if t.name == name:
                return t
        raise QuantizeError(f"expected a tensor named {name!r} in {self.path}, got none")


def _scalar(reader: GGUFReader, key: str) -> Any:
    f = reader.get_field(key)
    if f is None:
        return None
    value = f.contents()
    if isinstance(value, (np.generic,)):
        return value.item()
    return value


def check_magic(path: Path) -> None:
    """Raise unless ``path`` exists, is a regular file and starts with the GGUF magic."""
    if not path.exists():
        raise QuantizeError(f"expected an existing GGUF file, got no file at {path}")
    if not path.is_file():
        raise QuantizeError(f"expected a GGUF file, got a directory or special file at {path}")
    head = file_magic(path)
    if head != GGUF_MAGIC:
        raise QuantizeError(f"expected a GGUF file (magic b'GGUF') at {path}, got {head!r}")


def read_info(path: str | os.PathLike[str]) -> GGUFInfo:
    """Parse the header and tensor table of a GGUF and check that all tensor data is present."""
    p = Path(path)
    check_magic(p)
    size = p.stat().st_size
    try:
        reader = GGUFReader(p)
    except (ValueError, IndexError, KeyError, OverflowError, UnicodeDecodeError) as exc:
        # gguf-py signals a header that runs past the end of the file (or garbage in it) this way.
        raise QuantizeError(f"expected a complete GGUF header in {p}, got a truncated or corrupt file ({exc})") from None
    tensors: list[TensorInfo] = []
    end = 0
    for t in reader.tensors:
        end = max(end, int(t.data_offset) + int(t.n_bytes))
        tensors.append(
            TensorInfo(
                name=t.name,
                type=GGMLQuantizationType(t.tensor_type).name,
                shape=tuple(int(x) for x in t.shape),
                n_elements=int(t.n_elements),
                n_bytes=int(t.n_bytes),
            )
        )
    if end > size:
        raise QuantizeError(f"expected {end} bytes of tensor data in {p}, got a truncated file of {size} bytes")
    arch = _scalar(reader, Keys.General.ARCHITECTURE) or "unknown"
    rope: dict[str, Any] = {}
    for key in (
        Keys.Rope.FREQ_BASE,
        Keys.Rope.DIMENSION_COUNT,
        Keys.Rope.SCALING_TYPE,
        Keys.Rope.SCALING_FACTOR,
        Keys.Rope.SCALING_ORIG_CTX_LEN,
    ):
        full = key.format(arch=arch)
        value = _scalar(reader, full)
        if value is not None:
            rope[full.removeprefix(f"{arch}.rope.")] = value  # "freq_base", "scaling.type", ...
    return GGUFInfo(
        path=p,
        file_size=size,
        architecture=str(arch),
        file_type=_scalar(reader, Keys.General.FILE_TYPE),
        tensors=tensors,
        context_length=_scalar(reader, Keys.LLM.CONTEXT_LENGTH.format(arch=arch)),
        rope=rope,
    )
