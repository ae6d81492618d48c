"""Checkpoint folder -> GGUF file: the converter's orchestration, Python API and command line.

In: a Llama / Code Llama checkpoint folder (Meta ``consolidated.NN.pth`` + ``params.json`` or Hugging Face
safetensors / ``pytorch_model.bin`` + ``config.json``) with its ``tokenizer.model``.
Out: one GGUF file for llama.cpp's ``llama`` architecture, and a ``ConvertSummary``.

    python -m model_export.convert CKPT_DIR -o OUT.gguf [--outtype f32|f16|bf16|q8_0] [--ctx N] [--rope-theta X]

Steps: open the checkpoint (``checkpoints``: tensor tables only, nothing loaded) -> hyper-parameters ->
vocabulary (``vocab``) -> declare every tensor to gguf-py's ``GGUFWriter`` (name, shape, type) -> write the
header, metadata and tensor table -> stream the tensors (``_write_tensors``): in the order their bytes lie
in the checkpoint files, chunks of rows are assembled from the shards straight into their output
encoding by a few threads and written at their place in the file, while the source is hashed right
behind the reads (one pass over it) and its mapped pages are handed back every few dozen MB, so peak
memory is a few chunks whatever the model size -> fsync -> atomic rename onto the requested path
(``outfile.atomic_output``). No torch: the readers are ``checkpoints`` / ``weightfiles`` and numpy.

Hyper-parameters written (gguf-py's named keys for the llama architecture):
- ``llama.rope.freq_base``: ``--rope-theta``, else the config's ``rope_theta``, else 10000 (Llama 2's
  value, which is also what llama.cpp assumes when the key is missing, so it is always written). Code
  Llama is trained with 1e6; a wrong value silently ruins every position beyond the first few.
- ``llama.context_length``: ``--ctx``, else the config's ``max_position_embeddings`` (HF), else 16384 for
  theta >= 1e6 (Code Llama's fine-tuning length; it extrapolates to ~100k) and 4096 otherwise (Llama 2).
- head counts (query and kv), ``rope.dimension_count`` = head size, ``attention.layer_norm_rms_epsilon``,
  ``feed_forward_length`` read from the w1 tensor (params.json only implies it through multiple_of and
  ffn_dim_multiplier), ``general.file_type``.

Types: norms stay f32 (1-D, tiny, and llama.cpp adds them in f32); 2-D weights are written in ``outtype``
(f32, f16, bf16 or q8_0 through ``gguf.quants``; a row length that is not a multiple of q8_0's block of 32
falls back to f16).

Failure: bad input raises ``ExportError``; the output path is never touched unless everything succeeded.
``codellama_core.outfile`` owns the output file: it refuses a path that is one of the checkpoint's files,
writes a temporary file beside the target and removes it on any error, Ctrl-C or SIGTERM (the CLI then
exits 130 / 143), and sweeps up temporary files a killed run left behind.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from codellama_core.outfile import atomic_output, check_output
from codellama_core.tool import run_tool
from model_export import tensors as tn
from model_export.checkpoints import FLOAT32_MAX, Checkpoint, TensorSpec, iter_row_chunks, open_checkpoint, to_float32
from model_export.errors import ExportError
from model_export.vocab import FimIds, Vocab, load_vocab, write_vocab

log = logging.getLogger("model_export.convert")

Q = gguf.GGMLQuantizationType
ProgressFn = Callable[[str, int, int], None]  # (tensor name, bytes written so far, total bytes)

# Drop the checkpoint's file mappings after this many source bytes have been paged in, so that resident
# memory tracks the tensor being converted, not everything read so far.
RELEASE_AFTER_BYTES = 32 << 20
WORKERS = 4  # threads that encode and write chunks (at most the number of cores)
CODE_LLAMA_THETA = 1e6
MAX_CONTEXT = 1 << 20


@dataclass(frozen=True)
class ConvertSummary:
    """What ``convert`` wrote."""

    out_path: Path
    layout: str
    outtype: str
    n_tensors: int
    n_params: int
    bytes: int  # size of the GGUF file
    seconds: float
    rope_theta: float
    context_length: int
    n_vocab: int  # embedding rows = GGUF tokens
    n_padding_tokens: int  # [PAD<id>] tokens added beyond the tokenizer's pieces
    fim: FimIds | None  # FIM prefix/suffix/middle and EOT ids (None: the tokenizer has no FIM pieces)
    source_sha256: str | None  # of the sha256sum listing of weights, config, tokenizer (Checkpoint.source_sha256)

    @property
    def fim_pre(self) -> int | None:
        return self.fim.pre if self.fim else None

    @property
    def fim_suf(self) -> int | None:
        return self.fim.suf if self.fim else None

    @property
    def fim_mid(self) -> int | None:
        return self.fim.mid if self.fim else None

    @property
    def eot(self) -> int | None:
        return self.fim.eot if self.fim else None

    def line(self) -> str:
        """The one-line summary the CLI prints."""
        fim = f"fim pre/suf/mid/eot={self.fim.pre}/{self.fim.suf}/{self.fim.mid}/{self.fim.eot}" if self.fim else "no FIM tokens"
        mb = self.bytes / 1e6
        return (
            f"wrote {self.out_path} ({self.outtype}, {self.n_tensors} tensors, {self.n_params / 1e6:.1f}M params, "
            f"{mb:.1f} MB) from {self.layout} in {self.seconds:.1f} s ({mb / max(self.seconds, 1e-9):.0f} MB/s); "
            f"rope_theta={self.rope_theta:g} context_length={self.context_length} vocab={self.n_vocab} "
            f"(+{self.n_padding_tokens} pad) {fim}"
        )


def default_context_length(config_value: int | None, rope_theta: float) -> int:
    """The config's declared length, else Code Llama's 16384 for theta >= 1e6, else Llama 2's 4096."""
    if config_value:
        return config_value
    return 16384 if rope_theta >= CODE_LLAMA_THETA else 4096


def encode_rows(ckpt: Checkpoint, spec: TensorSpec, qtype: gguf.GGMLQuantizationType, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of a tensor in its stored encoding: a C-contiguous array ready to be written.

    f32/f16 (and bf16 from bf16, a bit copy) are converted by numpy straight into the output array, one
    shard's column block at a time (bf16 -> f32 is a 16-bit shift; -> f16 goes through f32); bf16 from
    other types and q8_0 go through gguf-py's quantizers on whole float32 rows.
    """
    shape = (stop - start, *spec.shape[1:])
    if qtype in (Q.F32, Q.F16) or (qtype == Q.BF16 and spec.dtype == "BF16"):
        out = np.empty(shape, dtype={Q.F32: np.float32, Q.F16: np.float16, Q.BF16: np.uint16}[qtype])
        for col, block in ckpt.read_row_blocks(spec.name, start, stop):
            dst = out if block.ndim == 1 else out[:, col : col + block.shape[1]]
            with np.errstate(over="ignore"):  # values beyond f16's range become inf, caught just below
                if spec.dtype == "BF16" and qtype != Q.BF16:
                    if qtype == Q.F32:
                        np.left_shift(block, 16, out=dst.view(np.uint32), dtype=np.uint32)
                    else:
                        np.copyto(dst, to_float32(block, "BF16"), casting="same_kind")
                else:
                    np.copyto(dst, block, casting="same_kind")
        if qtype == Q.F16 and spec.dtype != "F16" and _has_inf_f16(out):
            raise ExportError(
                f"expected weights within float16 range (|x| <= 65504), got overflow in {spec.name}: use --outtype bf16 or f32"
            )
        return out
    return gguf.quants.quantize(to_float32(ckpt.read_rows(spec.name, start, stop), spec.dtype), qtype)


def _has_inf_f16(a: np.ndarray) -> bool:
    """Any inf/nan in a float16 array: exponent bits all ones (integer ops; numpy's f16 math is slow)."""
    return bool(np.any((a.view(np.uint16) & 0x7C00) == 0x7C00))


def _write_tensors(
    fd: int,
    ckpt: Checkpoint,
    plan: list[tuple[TensorSpec, gguf.GGMLQuantizationType]],
    data_start: int,
    alignment: int,
    progress: ProgressFn | None,
) -> None:
    """Every tensor's data into the GGUF's data section, which starts at byte ``data_start`` of ``fd``.

    The file lists tensors in ``plan`` order (each at the next ``alignment`` boundary), but they are read
    in the order their bytes lie in the checkpoint files and each chunk of rows is written at its place
    with ``pwrite``: the source is read front to back - and hashed right behind the reads
    (``Checkpoint.note_read``), so it is read once - and only a few chunks are in memory at a time.
    Chunks are encoded and written by ``WORKERS`` threads (numpy's casts and ``pwrite`` release the GIL);
    this thread hands them out in order, hashes, releases mapped pages and reports progress.
    """
    offsets, end = {}, 0
    for spec, qtype in plan:
        offsets[spec.name] = end
        end += gguf.GGUFWriter.ggml_pad(tn.stored_nbytes(spec.shape, qtype), alignment)
    total, done = sum(tn.stored_nbytes(s.shape, q) for s, q in plan), 0  # progress counts data bytes

    def work(spec: TensorSpec, qtype: gguf.GGMLQuantizationType, start: int, stop: int, at: int) -> int:
        data = encode_rows(ckpt, spec, qtype, start, stop)
        _pwrite_all(fd, data, at)
        return data.nbytes

    workers = max(1, min(WORKERS, os.cpu_count() or 1))
    pending: deque[tuple[Future[int], str | None]] = deque()  # (chunk, tensor name when it is its last)
    with ThreadPoolExecutor(workers, thread_name_prefix="convert") as pool:
        try:
            for spec, qtype in sorted(plan, key=lambda p: ckpt.position(p[0].name)):
                one_row = (1, *spec.shape[1:]) if len(spec.shape) > 1 else spec.shape
                src_row = spec.nbytes // math.prod(spec.shape) * math.prod(one_row)
                out_row = tn.stored_nbytes(one_row, qtype)
                chunks = list(iter_row_chunks(spec))
                for start, stop in chunks:
                    at = data_start + offsets[spec.name] + start * out_row
                    last = spec.name if stop == chunks[-1][1] else None
                    pending.append((pool.submit(work, spec, qtype, start, stop, at), last))
                    while len(pending) > 2 * workers:
                        done += _finish_chunk(pending.popleft(), done, total, progress)
                    ckpt.note_read((stop - start) * src_row if len(spec.shape) > 1 else src_row, RELEASE_AFTER_BYTES)
            while pending:
                done += _finish_chunk(pending.popleft(), done, total, progress)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # no worker writes into the file once it is removed
            raise
    os.ftruncate(fd, data_start + end)  # the padding after the last tensor


def _finish_chunk(item: tuple[Future[int], str | None], done: int, total: int, progress: ProgressFn | None) -> int:
    """Wait for one chunk (its error, if any, is raised here); report a finished tensor; its byte count."""
    future, last = item
    n = future.result()
    if last is not None and progress is not None:
        progress(last, done + n, total)
    return n


def _pwrite_all(fd: int, data: np.ndarray, pos: int) -> None:
    view = np.ascontiguousarray(data).data.cast("B")
    while view:
        n = os.pwrite(fd, view, pos)
        view, pos = view[n:], pos + n


def _declare(writer: gguf.GGUFWriter, spec: TensorSpec, qtype: gguf.GGMLQuantizationType) -> None:
    nbytes = tn.stored_nbytes(spec.shape, qtype)
    if qtype == Q.F32:
        writer.add_tensor_info(spec.name, spec.shape, np.dtype(np.float32), nbytes)
    elif qtype == Q.F16:
        writer.add_tensor_info(spec.name, spec.shape, np.dtype(np.float16), nbytes)
    else:  # logical shape with a raw GGML type (a float dtype here tells gguf-py the shape is not in bytes)
        writer.add_tensor_info(spec.name, spec.shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)


def convert(
    ckpt_dir: str | Path,
    out_path: str | Path,
    *,
    outtype: str = "f16",
    ctx: int | None = None,
    rope_theta: float | None = None,
    progress: ProgressFn | None = None,
    hash_source: bool = True,
) -> ConvertSummary:
    """Convert a checkpoint folder to a GGUF file at ``out_path`` (atomically); see the module docstring.

    The steps: check the options -> open the checkpoint and its tokenizer -> settle the hyper-parameters ->
    declare the header (metadata, vocabulary, tensor table) -> stream the tensors into a temporary file that is
    renamed into place.
    """
    t0 = time.perf_counter()
    _check_options(outtype, ctx, rope_theta)
    out = Path(out_path).absolute()
    check_output(out, (), ExportError)  # before the checkpoint is read: a bad -o fails fast

    with open_checkpoint(ckpt_dir) as ckpt:
        if ckpt.tokenizer_path is None:
            raise ExportError(f"expected tokenizer.model in {ckpt.root}, got none")
        vocab = load_vocab(ckpt.tokenizer_path, ckpt.n_vocab)
        check_output(out, ckpt.input_files, ExportError)
        theta = rope_theta if rope_theta is not None else (ckpt.hparams.rope_theta or 10000.0)
        context_length = _context_length(ckpt, ctx, theta)
        writer = _header(ckpt, vocab, outtype, theta, context_length)
        plan = [(spec, tn.tensor_qtype(spec.role.kind, spec.shape, outtype)) for spec in ckpt.tensors.values()]
        for spec, qtype in plan:
            _declare(writer, spec, qtype)
        ckpt.hash_while_reading(hash_source)
        _write_file(writer, out, ckpt, plan, progress)
        digest = ckpt.source_sha256() if hash_source else None
        n_params = ckpt.n_params

    return ConvertSummary(
        out_path=out,
        layout=ckpt.layout,
        outtype=outtype,
        n_tensors=len(plan),
        n_params=n_params,
        bytes=out.stat().st_size,
        seconds=time.perf_counter() - t0,
        rope_theta=theta,
        context_length=context_length,
        n_vocab=ckpt.n_vocab,
        n_padding_tokens=vocab.n_padding,
        fim=vocab.fim,
        source_sha256=digest,
    )


def _check_options(outtype: str, ctx: int | None, rope_theta: float | None) -> None:
    """Refuse options no checkpoint can make right, before anything is read."""
    if outtype not in tn.OUTTYPES:
        raise ExportError(f"expected outtype one of {sorted(tn.OUTTYPES)}, got {outtype!r}")
    if ctx is not None and not 0 < ctx <= MAX_CONTEXT:
        raise ExportError(f"expected --ctx between 1 and {MAX_CONTEXT}, got {ctx}")
    if rope_theta is not None and not (math.isfinite(rope_theta) and 0 < rope_theta <= FLOAT32_MAX):
        raise ExportError(f"expected --rope-theta a finite number in (0, 3.4e38], got {rope_theta}")


def _context_length(ckpt: Checkpoint, ctx: int | None, theta: float) -> int:
    """``llama.context_length``: ``--ctx``, else the checkpoint's, else what its RoPE base implies."""
    context_length = ctx or default_context_length(ckpt.hparams.context_length, theta)
    if context_length > MAX_CONTEXT:
        raise ExportError(
            f"expected a context length of at most {MAX_CONTEXT} in {ckpt.config_file}, got {context_length} "
            f"(pass --ctx N to write another)"
        )
    return context_length


def _header(ckpt: Checkpoint, vocab: Vocab, outtype: str, theta: float, context_length: int) -> gguf.GGUFWriter:
    """A writer holding the GGUF metadata and vocabulary (the tensor table is declared next, by ``_declare``)."""
    hp = ckpt.hparams
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_name(ckpt.root.name)
    writer.add_context_length(context_length)
    writer.add_embedding_length(hp.dim)
    writer.add_block_count(hp.n_layers)
    writer.add_feed_forward_length(ckpt.n_ff)
    writer.add_head_count(hp.n_heads)
    writer.add_head_count_kv(hp.n_kv_heads)
    writer.add_rope_dimension_count(hp.head_dim)
    writer.add_rope_freq_base(theta)
    writer.add_layer_norm_rms_eps(hp.norm_eps)
    writer.add_vocab_size(ckpt.n_vocab)
    writer.add_file_type(tn.FILE_TYPES[outtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    write_vocab(writer, vocab)
    return writer


def _write_file(
    writer: gguf.GGUFWriter, out: Path, ckpt: Checkpoint, plan: list[tuple[TensorSpec, Q]], progress: ProgressFn | None
) -> None:
    """Header, metadata and tensor table through gguf-py, then the tensor data by ``_write_tensors``, into a
    temporary file beside ``out`` that replaces ``out`` only when complete."""
    with atomic_output(out, ExportError) as tmp:
        try:
            writer.write_header_to_file(path=tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            writer.flush()
            assert writer.fout is not None  # write_header_to_file opened it
            data_start = gguf.GGUFWriter.ggml_pad(writer.fout[0].tell(), writer.data_alignment)
            with open(tmp, "r+b") as f:
                _write_tensors(f.fileno(), ckpt, plan, data_start, writer.data_alignment, progress)
        except OSError as e:
            raise ExportError(f"expected to write {out}, got {type(e).__name__}: {e.strerror or e}") from None
        finally:
            writer.close()


# ---------------------------------------------------------------------------- command line


def _tqdm_progress() -> tuple[ProgressFn | None, Callable[[], None]]:
    """A byte-counting tqdm bar on stderr when it is a terminal; nothing otherwise (logs, CI)."""
    if not sys.stderr.isatty():
        return None, lambda: None
    from tqdm import tqdm

    bar: list[Any] = []  # the tqdm bar, made on the first update (its total is known then)

    def update(name: str, done: int, total: int) -> None:
        if not bar:
            bar.append(tqdm(total=total, unit="B", unit_scale=True, desc="writing", file=sys.stderr, leave=False))
        bar[0].set_postfix_str(name, refresh=False)
        bar[0].update(done - bar[0].n)

    def close() -> None:
        if bar:
            bar[0].close()

    return update, close


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="codellama-convert",
        description="Convert a Llama / Code Llama checkpoint (Meta consolidated.NN.pth or Hugging Face) to GGUF.",
    )
    p.add_argument(
        "ckpt_dir", type=Path, help="checkpoint folder (params.json + consolidated.NN.pth, or config.json + safetensors/bin)"
    )
    p.add_argument("-o", "--outfile", type=Path, help="output .gguf path (default: CKPT_DIR/ggml-model-OUTTYPE.gguf)")
    p.add_argument(
        "--outtype", choices=sorted(tn.OUTTYPES), default="f16", help="type of 2-D weights (default f16); norms stay f32"
    )
    p.add_argument("--ctx", type=int, help="llama.context_length to write (default: config, else 16384 for theta 1e6, else 4096)")
    p.add_argument("--rope-theta", type=float, help="override the config's rope_theta (llama.rope.freq_base)")
    p.add_argument("--no-hash", action="store_true", help="skip the SHA-256 of the source files in the summary")
    p.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s"
    )
    out = args.outfile or args.ckpt_dir / f"ggml-model-{args.outtype}.gguf"

    def body() -> None:
        progress, close_bar = _tqdm_progress()
        try:
            summary = convert(
                args.ckpt_dir,
                out,
                outtype=args.outtype,
                ctx=args.ctx,
                rope_theta=args.rope_theta,
                progress=progress,
                hash_source=not args.no_hash,
            )
        finally:
            close_bar()  # before any message: the bar shares stderr
        print(summary.line())
        if summary.source_sha256:
            log.info("source sha256 %s", summary.source_sha256)

    return run_tool("codellama-convert", body, (ExportError,))


if __name__ == "__main__":
    sys.exit(main())
