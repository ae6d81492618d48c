"""llama.cpp's quantizer, as llama-cpp-python exposes it, with checked inputs and atomic output.

In: an f16/bf16/f32 GGUF, a type name (``Q4_K_M``, ``Q8_0``, ...) and options. Out: a GGUF of that type at
the requested path - written to a temporary file beside it and renamed into place only when llama.cpp
reports success, so a failure at any point leaves no partial file - and a :class:`QuantizeResult`
(size, bits per weight, per-type tensor counts, seconds).

The work is llama.cpp's: ``llama_model_quantize`` with ``llama_model_quantize_default_params()`` and then
every field we care about set explicitly. Mixed "K-quant" types (``Q4_K_M`` etc.) are llama.cpp's recipes:
they keep sensitive tensors (``output.weight``, half of ``attn_v``/``ffn_down``) at higher precision, which
is visible in the output file (see :func:`quantize.gguf_info.read_info`).

K-quants pack 256 weights per super-block (QK_K), so a tensor whose rows are not a multiple of 256 falls
back to a legacy type of similar size (Q4_K -> Q5_0, Q6_K -> Q8_0 ...); tiny test models with dim 64 are
therefore not K-quantized at all.

What we check before calling llama.cpp (because some malformed inputs make it abort the process): the
input is a complete GGUF whose header passes ``codellama_core.gguf_check`` (block count matching the ``blk.N``
tensors, finite epsilon and rope base, sane head counts and context length, tensor extents), not already quantized (unless ``allow_requantize``), the type is known, the
output is not one of the inputs (same path, symlink or hard link), sits in a writable folder and does not
exist (unless ``force``), and the thread count is clamped to the usable cores. The output file is
``codellama_core.outfile``'s: written beside the target, given normal permissions (0644 under the usual
umask), renamed into place on success and removed on any failure, Ctrl-C or SIGTERM (``run_native``).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import llama_cpp
import numpy as np
from gguf import GGMLQuantizationType

from codellama_core import llama
from codellama_core.gguf_check import GGUFCheckError, check_gguf
from codellama_core.outfile import atomic_output, check_output
from codellama_core.tool import exit_code
from quantize.errors import QuantizeError
from quantize.gguf_info import GGUFInfo, read_info

T = TypeVar("T")

# Type name -> llama_ftype id. The order is the one tables use: legacy, K-quants, then floats.
TYPES: dict[str, int] = {
    "Q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
    "Q4_1": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1,
    "Q5_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_0,
    "Q5_1": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_1,
    "Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
    "Q2_K": llama_cpp.LLAMA_FTYPE_MOSTLY_Q2_K,
    "Q3_K_S": llama_cpp.LLAMA_FTYPE_MOSTLY_Q3_K_S,
    "Q3_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q3_K_M,
    "Q3_K_L": llama_cpp.LLAMA_FTYPE_MOSTLY_Q3_K_L,
    "Q4_K_S": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_S,
    "Q4_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    "Q5_K_S": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_S,
    "Q5_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M,
    "Q6_K": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K,
    "F16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16,
    "BF16": llama_cpp.LLAMA_FTYPE_MOSTLY_BF16,
    "F32": llama_cpp.LLAMA_FTYPE_ALL_F32,
}

# GGML tensor type names accepted by --output-tensor-type / --token-embedding-type -> ggml_type id.
# (gguf-py's GGMLQuantizationType mirrors ggml's enum ggml_type value for value.)
TENSOR_TYPES: dict[str, int] = {
    name: int(GGMLQuantizationType[name])
    for name in ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
}

# Default builds per target; the reasoning is in the README ("Which file for which machine").
# cpu: generation is memory-bandwidth bound, so bytes per weight is speed; Q4_K_M is the sweet spot,
#      Q5_K_M for more RAM, Q8_0 when memory is plentiful and quality is all that matters.
# metal: unified memory shared with the OS; Q4_K_M for 8-16 GB Macs, Q6_K (near-lossless) and Q8_0 above.
# cuda: VRAM decides; everything offloaded is fast, so pick the largest that fits: Q4_K_M, Q5_K_M, Q8_0.
TARGETS: dict[str, tuple[str, ...]] = {
    "cpu": ("Q4_K_M", "Q5_K_M", "Q8_0"),
    "metal": ("Q4_K_M", "Q6_K", "Q8_0"),
    "cuda": ("Q4_K_M", "Q5_K_M", "Q8_0"),
}


@dataclass(frozen=True)
class QuantizeResult:
    path: Path
    type: str
    size: int
    bits_per_weight: float
    n_params: int
    tensor_types: dict[str, int]
    seconds: float
    imatrix: str | None


def parse_type(name: str) -> str:
    """Canonical type name or an error that lists the known ones."""
    key = name.strip().upper()
    if key not in TYPES:
        raise QuantizeError(f"expected a type among {', '.join(TYPES)}, got {name!r}")
    return key


def parse_types(spec: str) -> list[str]:
    """``"Q4_K_M,Q8_0"`` -> ``["Q4_K_M", "Q8_0"]`` (each checked, duplicates dropped)."""
    out: list[str] = []
    for part in spec.split(","):
        if part.strip():
            t = parse_type(part)
            if t not in out:
                out.append(t)
    if not out:
        raise QuantizeError(f"expected a comma-separated list of types, got {spec!r}")
    return out


def _tensor_type(name: str | None, what: str) -> int | None:
    if name is None:
        return None  # keep llama.cpp's default (GGML_TYPE_COUNT, "use the recipe")
    key = name.strip().upper()
    if key not in TENSOR_TYPES:
        raise QuantizeError(f"expected {what} among {', '.join(TENSOR_TYPES)}, got {name!r}")
    return TENSOR_TYPES[key]


def _imatrix_array(imatrix: dict[str, np.ndarray]) -> tuple[ctypes.Array, list[object]]:
    """A NULL-terminated ``llama_model_imatrix_data[]`` over float32 arrays; the list keeps them alive."""
    keep: list[object] = []
    arr = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
    for i, (name, values) in enumerate(sorted(imatrix.items())):
        v = np.ascontiguousarray(values, dtype=np.float32)
        b = name.encode()
        keep += [v, b]
        arr[i].name = b
        arr[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        arr[i].size = v.size
    arr[len(imatrix)].name = None
    return arr, keep


def quantize_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    qtype: str,
    *,
    threads: int | None = None,
    force: bool = False,
    allow_requantize: bool = False,
    imatrix: str | os.PathLike[str] | None = None,
    output_tensor_type: str | None = None,
    token_embedding_type: str | None = None,
) -> QuantizeResult:
    """Quantize ``src`` into ``dst`` as ``qtype``; see the module docstring for what is checked."""
    qtype = parse_type(qtype)
    src_p, dst_p = Path(src), Path(dst)
    out_type = _tensor_type(output_tensor_type, "an output tensor type")
    emb_type = _tensor_type(token_embedding_type, "a token embedding type")
    try:
        nthread = llama.clamp_threads(threads)
    except llama.LlamaError as exc:
        raise QuantizeError(str(exc)) from None
    inputs = [src_p] + ([Path(imatrix)] if imatrix is not None else [])
    check_output(dst_p, inputs, QuantizeError)
    info = read_info(src_p)
    try:  # the header facts llama.cpp trusts (it aborts or stalls on a bad block count, eps, heads, context)
        check_gguf(src_p)
    except GGUFCheckError as e:
        raise QuantizeError(str(e)) from None
    if info.is_quantized and not allow_requantize:
        quantized = sorted({t.type for t in info.tensors} - {"F32", "F16", "BF16"})
        raise QuantizeError(
            f"expected an unquantized (F32/F16/BF16) GGUF in {src_p}, got one with {'/'.join(quantized)} tensors "
            "(requantizing loses quality; pass --allow-requantize to do it anyway)"
        )
    if dst_p.exists() and not force:
        raise QuantizeError(f"expected no file at {dst_p}, got an existing one (pass --force to overwrite)")

    imatrix_data = None
    if imatrix is not None:
        from quantize.imatrix import load_imatrix

        imatrix_data = load_imatrix(imatrix).means()
        names = {t.name for t in info.tensors}
        if not names & imatrix_data.keys():
            raise QuantizeError(
                f"expected an imatrix with entries for this model's tensors (e.g. blk.0.attn_q.weight), got "
                f"{len(imatrix_data)} entries none of which match ({next(iter(imatrix_data))!r}, ...)"
            )

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = nthread
    params.ftype = TYPES[qtype]
    if out_type is not None:
        params.output_tensor_type = out_type
    if emb_type is not None:
        params.token_embedding_type = emb_type
    params.allow_requantize = allow_requantize
    params.quantize_output_tensor = True
    params.only_copy = False
    params.pure = False  # keep llama.cpp's per-tensor mix (the "_M"/"_S" recipes)
    params.keep_split = False
    params.dry_run = False
    keep: list[object] = []
    if imatrix_data:
        arr, keep = _imatrix_array(imatrix_data)
        keep.append(arr)
        params.imatrix = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))

    t0 = time.perf_counter()
    with atomic_output(dst_p, QuantizeError) as tmp:
        try:
            run_native(lambda: llama.model_quantize(src_p, tmp, params))
        except llama.LlamaError as exc:
            raise QuantizeError(f"expected llama.cpp to quantize {src_p} to {qtype}, got: {exc}") from None
        out_info: GGUFInfo = read_info(tmp)
    del keep
    return QuantizeResult(
        path=dst_p,
        type=qtype,
        size=out_info.file_size,
        bits_per_weight=out_info.bits_per_weight,
        n_params=out_info.n_params,
        tensor_types=out_info.type_counts,
        seconds=time.perf_counter() - t0,
        imatrix=str(imatrix) if imatrix is not None else None,
    )


_abandoned = threading.Event()  # set when an interrupt left a native call running (see run_native)


def run_native(fn: Callable[[], T]) -> T:
    """``fn()`` (a long llama.cpp call through ctypes) in a worker thread, the main thread waiting.

    Python runs signal handlers only in the main thread and only between bytecodes, so during a call into
    C that takes minutes Ctrl-C and SIGTERM would do nothing until it returns (and the exception would then
    land in llama.cpp's log callback, be printed and ignored). Waiting on a thread is interruptible: the
    ``KeyboardInterrupt``/``Terminated`` propagates at once, ``atomic_output`` removes the temporary file,
    and the CLI ends the process (``interrupt_status``) while the worker is still in C.
    """
    result: list[T] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            result.append(fn())
        except BaseException as e:  # handed to the waiting thread as is
            failure.append(e)

    worker = threading.Thread(target=work, name="llama.cpp", daemon=True)
    worker.start()
    try:
        worker.join()
    except BaseException:
        _abandoned.set()
        raise
    if failure:
        raise failure[0]
    return result[0]


def interrupt_status(exc: BaseException) -> int:
    """For a CLI that caught Ctrl-C / SIGTERM (and said so): the exit status, 130 / 143.

    If an interrupted ``run_native`` call may still be running in C, the process ends here with that status
    (``os._exit``): a normal interpreter exit would tear llama.cpp down under its own running threads.
    """
    code = exit_code(exc)
    if _abandoned.is_set():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def make_folder(path: Path) -> None:
    """Create an output folder (and its parents) or say in one line why not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise QuantizeError(f"expected to create the output folder {path}, got {type(e).__name__}: {e.strerror or e}") from None


def default_name(stem: str, qtype: str) -> str:
    """File name of one build: ``<stem>.<TYPE>.gguf`` (llama.cpp's and Hugging Face's usual spelling)."""
    return f"{stem}.{qtype}.gguf"


def model_stem(path: Path) -> str:
    """``model.F16.gguf`` / ``model-f16.gguf`` -> ``model``: the part shared by all builds of one model."""
    stem = path.name.removesuffix(".gguf")
    for suffix in ("F16", "f16", "BF16", "bf16", "F32", "f32"):
        for sep in (".", "-", "_"):
            if stem.endswith(sep + suffix):
                return stem[: -len(sep + suffix)]
    return stem
