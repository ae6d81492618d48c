"""Checkpoint folder -> GGUF file: the converter's orchestration, Python API and command line.

In: a Llama / Code Llama checkpoint folder (Meta ``consolidated.NN.pth`` + ``params.json`` or Hugging Face
safetensors / ``pytorch_model.bin`` + ``config.json``) with its ``tokenizer.model``.
Out: one GGUF file for llama.cpp's ``llama`` architecture, and a ``ConvertSummary``.

    python -m model_export.convert CKPT_DIR -o OUT.gguf [--outtype f32|f16|bf16|q8_0] [--ctx N] [--rope-theta X]

Steps: open the checkpoint (``checkpoints``: tensor tables only, nothing loaded) -> hyper-parameters ->
vocabulary (``vocab``) -> declare every tensor to gguf-py's ``GGUFWriter`` (name, shape, type) -> write the
header, metadata and tensor table -> stream the tensors: each one is assembled from its shards in row
chunks straight into its output encoding, written, and dropped before the next is read, so peak memory is
about one tensor whatever the model size -> fsync -> atomic rename onto the requested path (``outfile.atomic_output``).

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
``model_export.outfile`` owns the output file: it refuses a path that is one of the checkpoint's files,
writes a temporary file beside the target and removes it on any error, Ctrl-C or SIGTERM (the CLI then
exits 130 / 143), and sweeps up temporary files a killed run left behind.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch

from model_export import tensors as tn
from model_export.checkpoints import FLOAT32_MAX, Checkpoint, TensorSpec, iter_row_chunks, open_checkpoint
from model_export.errors import ExportError
from model_export.outfile import Terminated, atomic_output, check_output, exit_code, sigterm_raises
from model_export.vocab import FimIds, load_vocab, write_vocab

log = logging.getLogger("model_export.convert")

Q = gguf.GGMLQuantizationType
ProgressFn = Callable[[str, int, int], None]  # (tensor name, bytes written so far, total bytes)

# Drop the checkpoint's file mappings after this many source bytes have been paged in, so that resident
# memory tracks the tensor being converted, not everything read so far.
RELEASE_AFTER_BYTES = 32 << 20
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
    source_sha256: str | None  # of the checkpoint files (weights, config, tokenizer), streamed

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
        fim = (
            f"fim pre/suf/mid/eot={self.fim.pre}/{self.fim.suf}/{self.fim.mid}/{self.fim.eot}"
            if self.fim
            else "no FIM tokens"
        )
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


def _encode_rows(rows: torch.Tensor, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """Whole source rows -> their blocks in a GGML block type (bf16 from non-bf16, q8_0) via gguf.quants."""
    return gguf.quants.quantize(rows.to(torch.float32).numpy(), qtype)


def encode_tensor(ckpt: Checkpoint, spec: TensorSpec, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """The whole tensor in its stored encoding, filled chunk by chunk (source rows never held twice).

    f32/f16 (and bf16 from bf16, a bit copy) are converted by torch straight into the output array, one
    shard's column block at a time; other types go through gguf-py's quantizers on whole rows.
    Source pages read through the checkpoint's file mappings stay resident until the mapping is dropped,
    so the mappings are released whenever ``RELEASE_AFTER_BYTES`` of source have been read, also in the
    middle of a tensor: resident memory is then about the output array plus one release window.
    """
    direct = qtype in (Q.F32, Q.F16) or (qtype == Q.BF16 and spec.dtype == torch.bfloat16)
    if qtype in (Q.F32, Q.F16):
        out = np.empty(spec.shape, dtype=np.float32 if qtype == Q.F32 else np.float16)
        target = torch.from_numpy(out)
    else:
        out = np.empty(gguf.quant_shape_to_byte_shape(spec.shape, qtype), dtype=np.uint8)
        target = torch.from_numpy(out).view(torch.int16) if direct else None  # bf16 bits as int16
    row_bytes = spec.nbytes // spec.shape[0] if len(spec.shape) > 1 else spec.nbytes
    for start, stop in iter_row_chunks(spec):
        if direct:
            assert target is not None
            for col, block in ckpt.read_row_blocks(spec.name, start, stop):
                if qtype == Q.BF16:
                    block = block.view(torch.int16)
                dst = target[start:stop] if block.dim() == 1 else target[start:stop, col : col + block.shape[1]]
                dst.copy_(block)
        else:
            out[start:stop] = _encode_rows(ckpt.read_rows(spec.name, start, stop), qtype)
        if qtype == Q.F16 and spec.dtype != torch.float16 and _has_inf_f16(out[start:stop]):
            raise ExportError(
                f"expected weights within float16 range (|x| <= 65504), got overflow in {spec.name}: "
                f"use --outtype bf16 or f32"
            )
        ckpt.note_read((stop - start) * row_bytes, RELEASE_AFTER_BYTES)
    return out


def _has_inf_f16(a: np.ndarray) -> bool:
    """Any inf/nan in a float16 array: exponent bits all ones (integer ops; numpy's f16 math is slow)."""
    return bool(np.any((a.view(np.uint16) & 0x7C00) == 0x7C00))


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
    """Convert a checkpoint folder to a GGUF file at ``out_path`` (atomically); see the module docstring."""
    t0 = time.perf_counter()
    if outtype not in tn.OUTTYPES:
        raise ExportError(f"expected outtype one of {sorted(tn.OUTTYPES)}, got {outtype!r}")
    if ctx is not None and not 0 < ctx <= MAX_CONTEXT:
        raise ExportError(f"expected --ctx between 1 and {MAX_CONTEXT}, got {ctx}")
    if rope_theta is not None and not (math.isfinite(rope_theta) and 0 < rope_theta <= FLOAT32_MAX):
        raise ExportError(f"expected --rope-theta a finite number in (0, 3.4e38], got {rope_theta}")
    out = Path(out_path).absolute()
    check_output(out, (), ExportError)  # before the checkpoint is read: a bad -o fails fast

    with open_checkpoint(ckpt_dir) as ckpt:
        hp = ckpt.hparams
        if ckpt.tokenizer_path is None:
            raise ExportError(f"expected tokenizer.model in {ckpt.root}, got none")
        vocab = load_vocab(ckpt.tokenizer_path, ckpt.n_vocab)
        check_output(out, ckpt.input_files, ExportError)
        theta = rope_theta if rope_theta is not None else (hp.rope_theta or 10000.0)
        context_length = ctx or default_context_length(hp.context_length, theta)
        if context_length > MAX_CONTEXT:
            raise ExportError(
                f"expected a context length of at most {MAX_CONTEXT} in {ckpt.config_file}, got {context_length} "
                f"(pass --ctx N to write another)"
            )

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

        plan = [(spec, tn.tensor_qtype(spec.role.kind, spec.shape, outtype)) for spec in ckpt.tensors.values()]
        for spec, qtype in plan:
            _declare(writer, spec, qtype)
        total = sum(tn.stored_nbytes(s.shape, q) for s, q in plan)

        with atomic_output(out, ExportError) as tmp:
            try:
                writer.write_header_to_file(path=tmp)
                writer.write_kv_data_to_file()
                writer.write_ti_data_to_file()
                done = 0
                for spec, qtype in plan:
                    data = encode_tensor(ckpt, spec, qtype)
                    writer.write_tensor_data(data)
                    done += data.nbytes
                    del data
                    if progress is not None:
                        progress(spec.name, done, total)
                writer.flush()
            except OSError as e:
                raise ExportError(f"expected to write {out}, got {type(e).__name__}: {e.strerror or e}") from None
            finally:
                writer.close()
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


# ---------------------------------------------------------------------------- command line


def _tqdm_progress() -> tuple[ProgressFn | None, Callable[[], None]]:
    """A byte-counting tqdm bar on stderr when it is a terminal; nothing otherwise (logs, CI)."""
    if not sys.stderr.isatty():
        return None, lambda: None
    from tqdm import tqdm

    bar: list = []

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
    p.add_argument("ckpt_dir", type=Path, help="checkpoint folder (params.json + consolidated.NN.pth, or config.json + safetensors/bin)")
    p.add_argument("-o", "--outfile", type=Path, help="output .gguf path (default: CKPT_DIR/ggml-model-OUTTYPE.gguf)")
    p.add_argument("--outtype", choices=sorted(tn.OUTTYPES), default="f16", help="type of 2-D weights (default f16); norms stay f32")
    p.add_argument("--ctx", type=int, help="llama.context_length to write (default: config, else 16384 for theta 1e6, else 4096)")
    p.add_argument("--rope-theta", type=float, help="override the config's rope_theta (llama.rope.freq_base)")
    p.add_argument("--no-hash", action="store_true", help="skip the SHA-256 of the source files in the summary")
    p.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    out = args.outfile or args.ckpt_dir / f"ggml-model-{args.outtype}.gguf"
    progress, close_bar = _tqdm_progress()
    try:
        with sigterm_raises():
            summary = convert(
                args.ckpt_dir, out, outtype=args.outtype, ctx=args.ctx, rope_theta=args.rope_theta,
                progress=progress, hash_source=not args.no_hash,
            )
    except ExportError as e:
        close_bar()
        print(f"codellama-convert: error: {e}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Terminated) as e:
        close_bar()
        print("codellama-convert: interrupted, no output written", file=sys.stderr)
        return exit_code(e)
    close_bar()
    print(summary.line())
    if summary.source_sha256:
        log.info("source sha256 %s", summary.source_sha256)
    return 0


if __name__ == "__main__":
    sys.exit(main())
