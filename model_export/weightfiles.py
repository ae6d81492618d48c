"""Weight files without torch: PyTorch checkpoints (``.pth``/``.bin``) and safetensors, memory-mapped.

In: a path. Out: ``open_weights(path) -> WeightFile`` - a table ``name -> TensorRef`` (dtype, shape, where
the bytes are) built from the file's pickle or header alone, and ``rows(name, start, stop)``: rows of a
tensor as a read-only numpy view of the mapped file (bfloat16 as its raw ``uint16`` bits; numpy has no
bfloat16), so reading a row pages in that row and nothing else.

PyTorch files (``torch.save`` since torch 1.6) are zip archives, stored without compression:
``<archive>/data.pkl`` is a pickle of the state dict whose tensors name their storages, and each storage
is the member ``<archive>/data/<key>``, raw little-endian values. The pickle is read by ``_StateDictUnpickler``,
which resolves only the handful of globals a state dict needs - ``collections.OrderedDict``,
``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter`` and the ``torch.*Storage`` type names - to
stand-ins defined here that record shapes and offsets. Any other global (``os.system``, ``builtins.open``,
a custom class: what a malicious ``__reduce__`` names) is refused before anything is called, and nothing
torch defines is ever imported or run. The pre-1.6 format (a bare pickle stream) is refused as well.

safetensors files are an 8-byte header length, a JSON header (``name -> dtype, shape, data_offsets``) and
the data; that format is simple enough to map directly, in the same way.

Memory. Mapped pages count toward the process' resident set while they are mapped in, so ``release()``
hands them back (``madvise(MADV_DONTNEED)``: a shared read-only mapping re-reads them from the page cache if
touched again). Hashing. ``sha256_so_far`` / ``finish_sha256`` hash the file in file order as the caller
reads it: ``advance_hash()`` after each read hashes the bytes up to the furthest byte read, so a caller that
reads tensors in file order (``position`` gives it) hashes every byte once, right after reading it.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from model_export.errors import ExportError

# dtype name (safetensors spelling) -> numpy dtype of the stored bits; BF16 is kept as raw uint16
NUMPY_DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "F64": np.dtype("<f8"), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}  # fmt: skip
FLOAT_DTYPES = ("F32", "F16", "BF16")

# torch.save names a storage by its legacy typed-storage class: torch.<Kind>Storage -> our dtype name
_STORAGE_DTYPES = {
    "FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16", "DoubleStorage": "F64",
    "LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16", "CharStorage": "I8",
    "ByteStorage": "U8", "BoolStorage": "BOOL",
}  # fmt: skip

_ZIP_MAGIC = b"PK\x03\x04"
_LOCAL_HEADER = struct.Struct("<4s5H3I2H")  # signature .. file name length, extra field length
_MAX_SAFETENSORS_HEADER = 100 << 20


@dataclass(frozen=True)
class TensorRef:
    """Where a tensor's values are: ``dtype`` name, ``shape``, ``strides`` (elements) from ``offset``
    (bytes from the start of the file)."""

    dtype: str
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    offset: int

    @property
    def itemsize(self) -> int:
        return NUMPY_DTYPES[self.dtype].itemsize

    @property
    def end(self) -> int:
        """One past the last byte of the tensor (its storage extent for this view)."""
        if 0 in self.shape:
            return self.offset
        last = sum((d - 1) * s for d, s in zip(self.shape, self.strides, strict=True))
        return self.offset + (last + 1) * self.itemsize


class _Refused(Exception):
    """A pickle names a global outside the state-dict allowlist (it was not imported, let alone called)."""


# ---------------------------------------------------------------------------- the restricted unpickler


class _StorageType(NamedTuple):
    """Stand-in for ``torch.<Kind>Storage`` (a name in the pickle; nothing of torch is touched)."""

    dtype: str


class _Storage(NamedTuple):
    """A storage the pickle refers to: dtype name, zip member key, element count."""

    dtype: str
    key: str
    numel: int


class _Tensor(NamedTuple):
    """What ``torch._utils._rebuild_tensor_v2`` would build, as numbers."""

    storage: _Storage
    storage_offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any, *_ignored: Any) -> _Tensor:
    """The stand-in for ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
    backward_hooks[, metadata])``: checks the numbers, builds nothing."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"expected a storage as the tensor's data, got {type(storage).__name__}")
    ints = (storage_offset, *size, *stride)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints) or len(size) != len(stride):
        raise pickle.UnpicklingError(f"expected non-negative integer offset, sizes and strides, got {size} / {stride}")
    return _Tensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data: Any, requires_grad: Any = None, backward_hooks: Any = None) -> Any:
    """``torch._utils._rebuild_parameter``: an ``nn.Parameter`` is its data here."""
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _StateDictUnpickler(pickle.Unpickler):
    """A pickle reader that knows a state dict's vocabulary and nothing else (see the module docstring)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise _Refused(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> _Storage:
        # torch.save: ("storage", storage type, key, location, number of elements)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"expected a storage reference, got {str(pid)[:80]}")
        _, kind, key, _location, numel = pid
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError(f"expected a storage key and size, got {key!r} / {numel!r}")
        return _Storage(kind.dtype, key, numel)


# ---------------------------------------------------------------------------- files


class WeightFile:
    """One mapped weight file: ``tensors`` (name -> ``TensorRef``), ``rows()``, ``release()``, hashing."""

    def __init__(self, path: Path, tensors: dict[str, TensorRef], fh: Any, mm: mmap.mmap):
        self.path = path
        self.tensors = tensors
        self._fh = fh
        self._mm = mm
        self._hash = hashlib.sha256()
        self._hashed = 0  # bytes [0, _hashed) are in _hash
        self._high = 0  # furthest byte handed out by rows()

    @property
    def size(self) -> int:
        return len(self._mm)

    def position(self, name: str) -> int:
        """Byte offset of a tensor in the file (to read tensors in file order)."""
        return self.tensors[name].offset

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of ``name`` (first axis; a 1-D tensor is its own single row block) as a
        read-only view of the mapping, in the stored dtype (BF16 as uint16 bits)."""
        t = self.tensors[name]
        if len(t.shape) == 0:
            start, stop = 0, 1
        dt = NUMPY_DTYPES[t.dtype]
        first = t.offset + start * (t.strides[0] if t.shape else 0) * dt.itemsize
        shape = (stop - start, *t.shape[1:]) if t.shape else ()
        end = TensorRef(t.dtype, shape, t.strides, first).end  # one past the last byte these rows touch
        base = np.frombuffer(self._mm, dtype=dt, count=(end - first) // dt.itemsize, offset=first)
        strides = tuple(s * dt.itemsize for s in t.strides)
        self._high = max(self._high, end)  # (threads race here harmlessly: the hash only ever moves forward)
        return np.lib.stride_tricks.as_strided(base, shape=shape, strides=strides, writeable=False)

    def advance_hash(self) -> int:
        """Hash the file up to the furthest byte read so far; returns how many bytes that hashed."""
        return self._hash_to(self._high)

    def finish_sha256(self) -> str:
        """SHA-256 of the whole file (what has not been hashed while reading is hashed now)."""
        self._hash_to(self.size)
        return self._hash.hexdigest()

    def _hash_to(self, end: int) -> int:
        n = end - self._hashed
        if n <= 0:
            return 0
        self._hash.update(np.frombuffer(self._mm, dtype=np.uint8, count=n, offset=self._hashed).data)
        self._hashed = end
        return n

    def release(self) -> None:
        """Hand the mapped pages back (they are re-read from the page cache if touched again)."""
        if hasattr(self._mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            self._mm.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        try:
            self._mm.close()
        except BufferError:  # a caller still holds a view; the mapping goes when that view does
            pass
        self._fh.close()


def _map(path: Path) -> tuple[Any, mmap.mmap]:
    try:
        fh = open(path, "rb")  # noqa: SIM115 - the object owns the handle and closes it in close()
    except FileNotFoundError:
        raise ExportError(f"expected the weight file {path}, got no such file") from None
    except OSError as e:
        raise ExportError(f"expected a readable weight file at {path}, got {type(e).__name__}: {e.strerror}") from None
    try:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as e:  # ValueError: an empty file cannot be mapped
        fh.close()
        raise ExportError(f"expected a complete weight file at {path}, got a truncated or corrupt file ({e})") from None
    return fh, mm


def open_weights(path: Path) -> WeightFile:
    """A ``.pth``/``.bin`` (PyTorch zip) or ``.safetensors`` file, by its content; ``ExportError`` otherwise."""
    fh, mm = _map(path)
    try:
        if mm[:4] == _ZIP_MAGIC:
            tensors = _torch_zip_tables(path, fh, mm)
        elif path.suffix == ".safetensors":
            tensors = _safetensors_tables(path, mm)
        elif path.suffix in (".pth", ".bin", ".pt"):
            raise ExportError(
                f"refusing to load {path}: expected a zip-format PyTorch checkpoint (torch.save since torch 1.6), "
                f"got an old-style pickle stream, which this reader does not unpickle (load it with "
                f"torch.load(weights_only=True) and torch.save it again)"
            )
        else:
            raise ExportError(f"expected a PyTorch (.pth/.bin) or .safetensors weight file, got {path}")
    except BaseException:
        mm.close()
        fh.close()
        raise
    return WeightFile(path, tensors, fh, mm)


def _torch_zip_tables(path: Path, fh: Any, mm: mmap.mmap) -> dict[str, TensorRef]:
    corrupt = f"expected a complete PyTorch checkpoint at {path}, got a truncated or corrupt file"
    try:
        zf = zipfile.ZipFile(fh)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ExportError(f"{corrupt} ({e})") from None
    with zf:
        pkls = [i for i in zf.infolist() if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
        if len(pkls) != 1:
            raise ExportError(f"expected one <archive>/data.pkl in the PyTorch zip {path}, got {len(pkls)}")
        prefix = pkls[0].filename[: -len("data.pkl")]
        byteorder = zf.NameToInfo.get(prefix + "byteorder")
        if byteorder is not None and zf.read(byteorder).strip() not in (b"little", b""):
            raise ExportError(f"expected little-endian storages in {path}, got {zf.read(byteorder)!r}")
        try:
            obj = _StateDictUnpickler(zf.open(pkls[0])).load()
        except _Refused as e:
            raise ExportError(
                f"refusing to load {path}: expected only tensors in the pickle, got a reference to {e}, "
                f"code that unpickling would run (it was not run)"
            ) from None
        except (pickle.UnpicklingError, TypeError, ValueError, AttributeError, KeyError, IndexError,
                EOFError, RecursionError, zipfile.BadZipFile, OSError) as e:  # fmt: skip
            raise ExportError(
                f"refusing to load {path}: expected a tensor-only pickle, got one this reader rejects "
                f"({type(e).__name__}: {str(e)[:120]})"
            ) from None
        state = _state_dict(obj, path)
        # each storage: a stored (uncompressed) member; its data starts after the member's local header
        where: dict[str, tuple[int, int]] = {}
        tensors: dict[str, TensorRef] = {}
        for name, t in state.items():
            st = t.storage
            if st.key not in where:
                info = zf.NameToInfo.get(f"{prefix}data/{st.key}")
                if info is None:
                    raise ExportError(f"{corrupt} (no storage data/{st.key} for {name})")
                if info.compress_type != zipfile.ZIP_STORED:
                    raise ExportError(
                        f"expected uncompressed storages in {path} (as torch.save writes them), got {name} compressed"
                    )
                header = mm[info.header_offset : info.header_offset + _LOCAL_HEADER.size]
                if len(header) < _LOCAL_HEADER.size or header[:4] != _ZIP_MAGIC:
                    raise ExportError(f"{corrupt} (bad zip entry for data/{st.key})")
                *_, name_len, extra_len = _LOCAL_HEADER.unpack(header)
                start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
                where[st.key] = (start, info.file_size)
            start, nbytes = where[st.key]
            itemsize = NUMPY_DTYPES[st.dtype].itemsize
            if st.numel * itemsize > nbytes or start + nbytes > len(mm):
                raise ExportError(f"{corrupt} (storage of {name} is cut short)")
            ref = TensorRef(st.dtype, t.shape, t.strides, start + t.storage_offset * itemsize)
            if ref.end > start + st.numel * itemsize:
                raise ExportError(f"{corrupt} ({name} reaches beyond its storage)")
            tensors[name] = ref
    return tensors


def _state_dict(obj: Any, path: Path) -> dict[str, _Tensor]:
    """The unpickled object as ``name -> tensor`` (training checkpoints nest the weights under "model")."""
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and not any(isinstance(v, _Tensor) for v in obj.values()):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, _Tensor) for k, v in obj.items()):
        raise ExportError(f"expected a dict of tensors in {path}, got {type(obj).__name__}")
    return obj


def _safetensors_tables(path: Path, mm: mmap.mmap) -> dict[str, TensorRef]:
    corrupt = f"expected a complete safetensors file at {path}, got a truncated or corrupt file"
    if len(mm) < 8:
        raise ExportError(f"{corrupt} ({len(mm)} bytes)")
    (n,) = struct.unpack("<Q", mm[:8])
    if n > _MAX_SAFETENSORS_HEADER or 8 + n > len(mm):
        raise ExportError(f"{corrupt} (header of {n} bytes in a file of {len(mm)})")
    try:
        header = json.loads(mm[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"{corrupt} (header: {e})") from None
    if not isinstance(header, dict):
        raise ExportError(f"{corrupt} (header is not a JSON object)")
    base = 8 + n
    tensors: dict[str, TensorRef] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise ExportError(f"{corrupt} (entry {name!r}: {str(entry)[:80]})") from None
        if dtype not in NUMPY_DTYPES:
            raise ExportError(f"expected F32, F16 or BF16 tensors in {path.name}, got {dtype} for {name!r}")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise ExportError(f"{corrupt} (shape of {name!r}: {shape!r})")
        nbytes = math.prod(shape) * NUMPY_DTYPES[dtype].itemsize
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end and end - begin == nbytes):
            raise ExportError(f"{corrupt} (offsets of {name!r}: {begin}..{end} for {nbytes} bytes)")
        if base + end > len(mm):
            raise ExportError(f"{corrupt} ({name!r} ends at byte {base + end}, the file at {len(mm)})")
        strides = tuple(math.prod(shape[k + 1 :]) for k in range(len(shape)))
        tensors[name] = TensorRef(dtype, tuple(shape), strides, base + begin)
    return tensors


__all__ = ["FLOAT_DTYPES", "NUMPY_DTYPES", "TensorRef", "WeightFile", "open_weights"]
