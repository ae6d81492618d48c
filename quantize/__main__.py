"""``python -m quantize`` / ``codellama-quantize``: quantized builds of an exported GGUF.

In: an f16 (or bf16/f32) GGUF and either one or more types (``--type Q4_K_M`` or ``--type Q4_K_M,Q8_0``), a
hardware target's default set (``--target cpu|metal|cuda``) or every supported type (``--all``). Out: one
GGUF per type - at ``-o`` itself for a single ``--type``, else ``<stem>.<TYPE>.gguf`` in the ``-o``
directory - and a line per file on stdout (type, size, bits per weight, seconds).

Errors (not a GGUF, truncated file, already quantized input without ``--allow-requantize``, unknown type,
existing output without ``--force``, an output that is the input, an unwritable folder, llama.cpp failing
midway) print one ``error:`` line on stderr and exit with status 1; Ctrl-C / SIGTERM exit 130 / 143. No
partial output is left behind in any case.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from codellama_core.tool import run_tool
from quantize.errors import QuantizeError
from quantize.quantize import (
    TARGETS,
    TYPES,
    default_name,
    interrupt_status,
    make_folder,
    model_stem,
    parse_types,
    quantize_file,
)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="codellama-quantize",
        description="Quantize an exported GGUF with llama.cpp's quantizer.",
        epilog=f"types: {', '.join(TYPES)}. targets: " + "; ".join(f"{k} = {','.join(v)}" for k, v in TARGETS.items()),
    )
    ap.add_argument("input", help="GGUF to quantize (f16/bf16/f32)")
    ap.add_argument("-o", "--output", required=True, help="output file (one --type) or directory (several types)")
    sel = ap.add_mutually_exclusive_group()
    sel.add_argument("--type", help="a type or a comma-separated list, e.g. Q4_K_M or Q4_K_M,Q8_0")
    sel.add_argument("--all", action="store_true", help="build every supported type")
    ap.add_argument("--target", choices=sorted(TARGETS), help="build the default set for this hardware")
    ap.add_argument("--threads", type=int, default=None, help="quantization threads (default: all cores)")
    ap.add_argument("--force", action="store_true", help="overwrite existing outputs")
    ap.add_argument("--allow-requantize", action="store_true", help="accept an already quantized input")
    ap.add_argument("--imatrix", help="importance matrix file (llama.cpp GGUF or legacy .dat format)")
    ap.add_argument("--output-tensor-type", help="type for output.weight (e.g. Q8_0), overriding the recipe")
    ap.add_argument("--token-embedding-type", help="type for token_embd.weight, overriding the recipe")
    ap.add_argument("-v", "--verbose", action="store_true", help="show llama.cpp's log")
    return ap


def _plan(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """(type, output path) per build."""
    if args.type:
        types = parse_types(args.type)
    elif args.all:
        types = list(TYPES)
    elif args.target:
        types = list(TARGETS[args.target])
    else:
        raise QuantizeError("expected --type, --target or --all, got none of them")
    out = Path(args.output)
    if args.type and len(types) == 1 and not out.is_dir():
        return [(types[0], out)]
    if out.exists() and not out.is_dir():
        raise QuantizeError(f"expected a directory for {len(types)} builds at {out}, got a file")
    make_folder(out)
    stem = model_stem(Path(args.input))
    return [(t, out / default_name(stem, t)) for t in types]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr, format="%(message)s")
    return run_tool("codellama-quantize", lambda: _build(args), (QuantizeError,), interrupted=interrupt_status)


def _build(args: argparse.Namespace) -> None:
    """Every planned build, one line each on stdout."""
    for qtype, dst in _plan(args):
        r = quantize_file(
            args.input,
            dst,
            qtype,
            threads=args.threads,
            force=args.force,
            allow_requantize=args.allow_requantize,
            imatrix=args.imatrix,
            output_tensor_type=args.output_tensor_type,
            token_embedding_type=args.token_embedding_type,
        )
        mix = " ".join(f"{k}:{v}" for k, v in r.tensor_types.items())
        print(f"{r.type:7s} {r.path}  {r.size / 2**20:.2f} MiB  {r.bits_per_weight:.2f} bpw  {r.seconds:.1f} s  [{mix}]")


if __name__ == "__main__":
    sys.exit(main())
