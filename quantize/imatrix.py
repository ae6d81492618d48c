"""Importance matrix: which input columns of every weight matrix matter, measured on a code corpus.

In: a GGUF model (normally the f16 export) and code text. Out: for every matrix-multiplication weight
``blk.N.*.weight`` the sum over all evaluated tokens of the squared input activation of each column
(``in_sum2``, shape (n_cols,)) and the number of tokens (``counts``) - saved in llama.cpp's GGUF imatrix
format (``general.type = "imatrix"``, tensors ``<weight>.in_sum2`` / ``<weight>.counts``, keys
``imatrix.datasets`` / ``imatrix.chunk_count`` / ``imatrix.chunk_size``) or, for a ``.dat`` path, its legacy
binary format. llama.cpp's quantizer then minimises the error weighted by ``in_sum2 / counts`` per column,
so the columns that see large activations on code are rounded most carefully.

How it is measured: llama.cpp itself evaluates the model chunk by chunk (``n_ctx`` tokens, BOS first, as
llama-imatrix does), and a ``cb_eval`` scheduler callback - the same hook llama-imatrix uses - is asked
about every graph node; we ask to see each ``MUL_MAT`` whose weight is a ``blk.`` tensor and read its
float32 input (``src[1]``: ne[0] = columns, ne[1] = tokens) back from the backend. ``output.weight`` is
left out, as llama-imatrix does by default. The callback reads ``struct ggml_tensor`` through ctypes; the
layout is checked against ``ggml_tensor_overhead()`` and ``ggml_get_name()`` before any data is trusted.

The mean per column (``in_sum2 / counts``) is what :func:`ImatrixData.means` returns and what
``llama_model_quantize_params.imatrix`` (an array of ``{name, data, size}``) takes.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp
import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFType, GGUFWriter, Keys

from codellama_core import llama
from codellama_core.gguf_check import GGUF_MAGIC, file_magic
from codellama_core.outfile import atomic_output, check_output
from codellama_core.tool import run_tool
from quantize.errors import QuantizeError, llama_session

log = logging.getLogger(__name__)

GGML_MAX_DIMS = 4
GGML_MAX_SRC = 10
GGML_MAX_OP_PARAMS = 64
GGML_MAX_NAME = 64
GGML_TYPE_F32 = 0


class GgmlTensor(ctypes.Structure):
    """``struct ggml_tensor`` of the ggml vendored in llama-cpp-python 0.3.36 (ggml.h)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
        ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * GGML_MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * GGML_MAX_NAME),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


# struct ggml_object {size_t offs, size; ggml_object * next; enum type; char padding[4];}: 32 bytes on LP64.
_GGML_OBJECT_SIZE = 32


def _ggml_lib() -> ctypes.CDLL:
    """ggml's shared library (the adapter's handle), with the signatures of the functions used here."""
    lib = llama.ggml_library()
    lib.ggml_op_name.restype = ctypes.c_char_p
    lib.ggml_op_name.argtypes = [ctypes.c_int]
    lib.ggml_get_name.restype = ctypes.c_char_p
    lib.ggml_get_name.argtypes = [ctypes.c_void_p]
    lib.ggml_tensor_overhead.restype = ctypes.c_size_t
    lib.ggml_tensor_overhead.argtypes = []
    lib.ggml_nbytes.restype = ctypes.c_size_t
    lib.ggml_nbytes.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_tensor_get.restype = None
    lib.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    return lib


def _op_id(lib: ctypes.CDLL, name: str) -> int:
    # Enum values below MUL_MAT are all valid, so walking up from 0 until the name matches is safe.
    for i in range(256):
        if lib.ggml_op_name(i) == name.encode():
            return i
    raise QuantizeError(f"expected ggml to know the op {name}, got no such op")


@dataclass
class ImatrixData:
    """Per weight: sum of squared inputs per column (float64 while collecting) and the token count."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0

    def means(self) -> dict[str, np.ndarray]:
        """``in_sum2 / counts`` per weight as float32: what llama.cpp's quantizer consumes."""
        out: dict[str, np.ndarray] = {}
        for name, s in self.sums.items():
            c = self.counts.get(name, 0)
            out[name] = (s / c).astype(np.float32) if c > 0 else np.ones_like(s, dtype=np.float32)
        return out

    def add(self, name: str, x: np.ndarray) -> None:
        """x: float32 activations of shape (tokens, columns)."""
        sq = np.einsum("ij,ij->j", x, x, dtype=np.float64)
        if name in self.sums:
            if self.sums[name].shape != sq.shape:
                raise QuantizeError(f"expected {self.sums[name].shape[0]} columns for {name}, got {sq.shape[0]}")
            self.sums[name] += sq
            self.counts[name] += x.shape[0]
        else:
            self.sums[name] = sq
            self.counts[name] = x.shape[0]


class _Collector:
    """The ``cb_eval`` callback: see the module docstring."""

    def __init__(self, data: ImatrixData) -> None:
        self.data = data
        self.lib = _ggml_lib()
        overhead = int(self.lib.ggml_tensor_overhead())
        if overhead != ctypes.sizeof(GgmlTensor) + _GGML_OBJECT_SIZE:
            raise QuantizeError(
                f"expected ggml_tensor_overhead() = {ctypes.sizeof(GgmlTensor) + _GGML_OBJECT_SIZE} for the "
                f"struct ggml_tensor layout this code reads, got {overhead} (llama-cpp-python version mismatch)"
            )
        self.mul_mat = _op_id(self.lib, "MUL_MAT")
        self.error: BaseException | None = None
        self.checked_names = False
        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._on_node)

    @staticmethod
    def weight_name(raw: bytes) -> str:
        # The scheduler names copies of a weight on another backend "BACKEND#name#n"; keep "name".
        s = raw.decode("utf-8", errors="replace")
        if "#" in s:
            s = s.split("#")[1]
        return s

    def _wanted(self, t: GgmlTensor) -> tuple[str, GgmlTensor] | None:
        if t.op != self.mul_mat or not t.src[0] or not t.src[1]:
            return None
        w = GgmlTensor.from_address(t.src[0])
        x = GgmlTensor.from_address(t.src[1])
        name = self.weight_name(w.name)
        if not name.startswith("blk.") or x.type != GGML_TYPE_F32:
            return None
        return name, x

    def _on_node(self, t_ptr: int, ask: bool, _user: int) -> bool:
        try:
            t = GgmlTensor.from_address(t_ptr)
            if not self.checked_names:
                # Layout check on real data: the name field must be where ggml says it is.
                if self.lib.ggml_get_name(t_ptr) != t.name:
                    raise QuantizeError("expected ctypes' ggml_tensor.name to match ggml_get_name(), got a mismatch")
                self.checked_names = True
            hit = self._wanted(t)
            if ask:
                return hit is not None
            if hit is None:
                return True
            name, x = hit
            x_ptr = t.src[1]
            nbytes = int(self.lib.ggml_nbytes(x_ptr))
            buf = np.empty(nbytes, dtype=np.uint8)
            self.lib.ggml_backend_tensor_get(x_ptr, buf.ctypes.data, 0, nbytes)
            ne = [int(v) for v in x.ne]
            nb = [int(v) for v in x.nb]
            # View the bytes with ggml's strides: (ne3, ne2, ne1, ne0), then flatten to (tokens, columns).
            arr = np.lib.stride_tricks.as_strided(
                buf.view(np.float32),
                shape=(ne[3], ne[2], ne[1], ne[0]),
                strides=(nb[3], nb[2], nb[1], nb[0]),
            )
            self.data.add(name, np.ascontiguousarray(arr, dtype=np.float32).reshape(-1, ne[0]))
            return True
        except BaseException as exc:  # a ctypes callback must not raise; keep it and stop the graph
            self.error = exc
            return False


def compute_imatrix(
    model_path: str | os.PathLike[str],
    text: str,
    *,
    n_ctx: int = 512,
    max_tokens: int | None = None,
    threads: int | None = None,
    dataset: str = "",
) -> ImatrixData:
    """Run ``model_path`` over ``text`` in chunks of ``n_ctx`` and collect the importance matrix."""
    data = ImatrixData(chunk_size=n_ctx, datasets=[dataset] if dataset else [])
    collector = _Collector(data)
    with llama_session(model_path, n_ctx=n_ctx, threads=threads, cb_eval=collector.callback) as s:
        tokens = s.model.tokenize(text)
        if max_tokens is not None:
            tokens = tokens[:max_tokens]
        bos = s.model.bos
        assert bos is not None  # llama_session checked
        step = n_ctx - 1  # BOS takes the first slot of every chunk
        if len(tokens) < step:
            raise QuantizeError(f"expected at least {step} tokens of corpus for n_ctx={n_ctx}, got {len(tokens)}")
        t0 = time.perf_counter()
        for start in range(0, len(tokens) - step + 1, step):  # whole chunks only, like llama-imatrix
            # Logits for every position, as llama-imatrix asks: otherwise llama.cpp drops all but the last
            # token after the final layer's attention, and that layer's weights would see one token per chunk.
            s.truncate(0)
            s.decode([bos, *tokens[start : start + step]])
            if collector.error is not None:
                raise QuantizeError(f"expected the imatrix callback to succeed, got {collector.error!r}")
            data.chunk_count += 1
        log.info("imatrix: %d chunks of %d tokens in %.1f s", data.chunk_count, n_ctx, time.perf_counter() - t0)
    if not data.sums:
        raise QuantizeError(f"expected matrix multiplications with blk.* weights in {model_path}, got none")
    return data


def save_imatrix(data: ImatrixData, path: str | os.PathLike[str]) -> Path:
    """Write llama.cpp's GGUF imatrix format (or the legacy binary one for a ``.dat`` path), atomically."""
    p = Path(path)
    with atomic_output(p, QuantizeError) as tmp:
        if p.suffix == ".dat":
            _save_legacy(data, tmp)
        else:
            w = GGUFWriter(tmp, arch="imatrix")  # gguf-py always writes general.architecture; llama.cpp ignores it
            w.add_type(GGUFType.IMATRIX)
            w.add_array(Keys.IMatrix.DATASETS, data.datasets or [""])
            w.add_uint32(Keys.IMatrix.CHUNK_COUNT, data.chunk_count)
            w.add_uint32(Keys.IMatrix.CHUNK_SIZE, data.chunk_size)
            for name in sorted(data.sums):
                # ggml shapes [ncols, nmat] and [1, nmat] with nmat = 1 (dense weights) -> numpy (1, ncols), (1, 1)
                w.add_tensor(f"{name}.in_sum2", data.sums[name].astype(np.float32).reshape(1, -1))
                w.add_tensor(f"{name}.counts", np.array([[data.counts[name]]], dtype=np.float32))
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
            w.close()
    return p


def _save_legacy(data: ImatrixData, path: Path) -> None:
    # Legacy layout: n_entries, then per entry {len, name, ncall, nval, float[nval]} with the values scaled
    # so that value / ncall is the per-column mean; then the chunk count and the dataset name.
    ncall = max(data.chunk_count, 1)
    with path.open("wb") as fh:
        fh.write(struct.pack("<i", len(data.sums)))
        for name in sorted(data.sums):
            b = name.encode()
            mean = data.sums[name] / max(data.counts[name], 1)
            fh.write(struct.pack("<i", len(b)) + b + struct.pack("<ii", ncall, mean.size))
            fh.write((mean * ncall).astype("<f4").tobytes())
        fh.write(struct.pack("<i", data.chunk_count))
        ds = (data.datasets[0] if data.datasets else "").encode()
        fh.write(struct.pack("<i", len(ds)) + ds)


def load_imatrix(path: str | os.PathLike[str]) -> ImatrixData:
    """Read either imatrix format (GGUF first, then legacy), as llama.cpp's loader does."""
    p = Path(path)
    if not p.is_file():
        raise QuantizeError(f"expected an imatrix file, got no file at {p}")
    try:
        data = _load_gguf(p) if file_magic(p) == GGUF_MAGIC else _load_legacy(p)
    except (ValueError, IndexError, KeyError, struct.error, UnicodeDecodeError) as exc:
        raise QuantizeError(f"expected an imatrix file (GGUF or legacy .dat) at {p}, got an unreadable one ({exc})") from exc
    for name, s in data.sums.items():
        if not np.all(np.isfinite(s)):
            raise QuantizeError(f"expected finite imatrix values, got NaN/inf for {name} in {p}")
    if not data.sums:
        raise QuantizeError(f"expected imatrix entries in {p}, got none")
    return data


def _load_gguf(p: Path) -> ImatrixData:
    r = GGUFReader(p)
    f = r.get_field(Keys.General.TYPE)
    if f is None or f.contents() != GGUFType.IMATRIX:
        got = f.contents() if f is not None else "no general.type"
        raise QuantizeError(f"expected a GGUF with general.type = imatrix at {p}, got {got!r}")
    data = ImatrixData()
    ds = r.get_field(Keys.IMatrix.DATASETS)
    data.datasets = [d for d in (ds.contents() if ds is not None else []) if d]
    for key, attr in ((Keys.IMatrix.CHUNK_COUNT, "chunk_count"), (Keys.IMatrix.CHUNK_SIZE, "chunk_size")):
        fld = r.get_field(key)
        if fld is not None:
            setattr(data, attr, int(fld.contents()))
    tensors = {t.name: t for t in r.tensors}
    for tname, t in tensors.items():
        if not tname.endswith(".in_sum2"):
            continue
        name = tname.removesuffix(".in_sum2")
        c = tensors.get(f"{name}.counts")
        if c is None or t.tensor_type != GGMLQuantizationType.F32:
            raise QuantizeError(f"expected F32 {name}.in_sum2 and {name}.counts in {p}, got an incomplete pair")
        counts = np.asarray(c.data, dtype=np.float64).reshape(-1)
        if counts.size != 1:
            raise QuantizeError(f"expected one count per dense weight for {name} in {p}, got {counts.size}")
        data.sums[name] = np.asarray(t.data, dtype=np.float64).reshape(-1).copy()
        data.counts[name] = round(counts[0])
    return data


def _load_legacy(p: Path) -> ImatrixData:
    raw = p.read_bytes()
    off = 0

    def take(fmt: str) -> tuple:
        nonlocal off
        vals = struct.unpack_from(fmt, raw, off)
        off += struct.calcsize(fmt)
        return vals

    (n,) = take("<i")
    if n < 1:
        raise QuantizeError(f"expected imatrix entries in {p}, got {n}")
    data = ImatrixData()
    for _ in range(n):
        (ln,) = take("<i")
        name = raw[off : off + ln].decode()
        off += ln
        ncall, nval = take("<ii")
        if nval < 1 or off + 4 * nval > len(raw):
            raise QuantizeError(f"expected {nval} values for {name} in {p}, got a truncated file")
        vals = np.frombuffer(raw, dtype="<f4", count=nval, offset=off).astype(np.float64)
        off += 4 * nval
        # stored = mean * ncall; keep it as sums with count = ncall so that means() = stored / ncall
        data.sums[name] = vals
        data.counts[name] = ncall if ncall > 0 else 1
    if off + 4 <= len(raw):
        (data.chunk_count,) = take("<i")
        if off + 4 <= len(raw):
            (ln,) = take("<i")
            if ln > 0:
                data.datasets = [raw[off : off + ln].decode(errors="replace")]
    return data


def main(argv: list[str] | None = None) -> int:
    from quantize.corpus import corpus_text

    ap = argparse.ArgumentParser(
        prog="python -m quantize.imatrix",
        description="Compute an importance matrix of a GGUF model on a code corpus (llama.cpp imatrix format).",
    )
    ap.add_argument("model", help="the GGUF to measure (normally the f16 export)")
    ap.add_argument("-o", "--output", required=True, help="imatrix file to write (.gguf, or .dat for the legacy format)")
    ap.add_argument("--corpus", help="file or directory of code (default: a fixed set of Python stdlib modules)")
    ap.add_argument("--tokens", type=int, default=None, help="use at most this many corpus tokens")
    ap.add_argument("--ctx", type=int, default=512, help="chunk size in tokens (default 512)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--force", action="store_true", help="overwrite an existing output")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr, format="%(message)s")

    def body() -> None:
        out = Path(args.output)
        check_output(out, [Path(args.model)], QuantizeError)
        if out.exists() and not args.force:
            raise QuantizeError(f"expected no file at {out}, got an existing one (pass --force to overwrite)")
        text, name = corpus_text(args.corpus, role="imatrix")
        data = compute_imatrix(args.model, text, n_ctx=args.ctx, max_tokens=args.tokens, threads=args.threads, dataset=name)
        save_imatrix(data, out)
        print(f"wrote {out}: {len(data.sums)} weights, {data.chunk_count} chunks of {data.chunk_size} tokens")

    return run_tool(ap.prog, body, (QuantizeError,))


if __name__ == "__main__":
    sys.exit(main())
