"""One command from a checkpoint to measured, quantized builds.

In: a checkpoint folder (anything ``model_export.convert`` reads), an output folder and a set of types
(``--types Q4_K_M,Q8_0``, ``--target cpu|metal|cuda`` or ``--all``). Out, in the output folder:

- ``<name>.F16.gguf`` - the export (``model_export.convert.convert``), the reference for everything else;
- ``<name>.imatrix.gguf`` - with ``--imatrix auto``: an importance matrix computed on code
  (:mod:`quantize.imatrix`), used for every build; or ``--imatrix FILE`` to use an existing one;
- ``<name>.<TYPE>.gguf`` per type (:func:`quantize.quantize.quantize_file`);
- ``manifest.json`` - the source checkpoint's SHA-256 and, per file: type, size, bits per weight, tensor
  type mix, rope settings and context length read back from the file, and the quality figures of
  :mod:`quantize.report` against the f16 reference (unless ``--no-report``).

    python -m quantize.pipeline CKPT_DIR -o OUT_DIR --types Q4_K_M,Q8_0

Every file is written atomically; an existing output is refused unless ``--force``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from codellama_core.outfile import atomic_output
from codellama_core.tool import run_tool
from quantize.errors import QuantizeError
from quantize.gguf_info import read_info
from quantize.quantize import TARGETS, TYPES, default_name, interrupt_status, make_folder, parse_types, quantize_file
from quantize.report import DEFAULT_CHUNKS, DEFAULT_CTX, compare_many

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1


def _file_entry(path: Path, qtype: str, imatrix: Path | None) -> dict[str, Any]:
    info = read_info(path)
    return {
        "file": path.name,
        "type": qtype,
        "size_bytes": info.file_size,
        "n_params": info.n_params,
        "bits_per_weight": round(info.bits_per_weight, 4),
        "tensor_types": info.type_counts,
        # llama.cpp assumes 10000 when the key is missing; record what a loader will actually use
        "rope": {"freq_base": 10000.0, **info.rope},
        "context_length": info.context_length,
        "imatrix": imatrix.name if imatrix is not None else None,
        "quality": None,
    }


def run_pipeline(
    ckpt_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    types: list[str],
    *,
    imatrix: str | None = None,
    report: bool = True,
    corpus: str | None = None,
    n_ctx: int = DEFAULT_CTX,
    n_chunks: int = DEFAULT_CHUNKS,
    imatrix_chunks: int = 32,
    threads: int | None = None,
    force: bool = False,
    name: str | None = None,
) -> dict[str, Any]:
    """Convert, (optionally) compute an imatrix, quantize, measure; returns the manifest it wrote."""
    from model_export.convert import convert
    from model_export.errors import ExportError

    ckpt = Path(ckpt_dir)
    out = Path(out_dir)
    make_folder(out)
    stem = name or ckpt.resolve().name
    f16 = out / default_name(stem, "F16")
    manifest_path = out / "manifest.json"
    planned = [f16, manifest_path] + [out / default_name(stem, t) for t in types if t != "F16"]
    if not force:
        existing = [p.name for p in planned if p.exists()]
        if existing:
            raise QuantizeError(f"expected no existing outputs in {out}, got {', '.join(existing)} (pass --force)")
    t0 = time.perf_counter()
    if f16.exists():
        f16.unlink()  # --force: convert refuses to overwrite on its own
    try:
        summary = convert(ckpt, f16, outtype="f16")
    except ExportError as exc:
        raise QuantizeError(f"expected a convertible checkpoint in {ckpt}, got: {exc}") from None
    log.info("converted %s -> %s in %.1f s", ckpt, f16.name, summary.seconds)

    imatrix_path: Path | None = None
    if imatrix == "auto":
        from quantize.corpus import corpus_text
        from quantize.imatrix import compute_imatrix, save_imatrix

        text, ds = corpus_text(None, role="imatrix")
        data = compute_imatrix(f16, text, n_ctx=n_ctx, max_tokens=imatrix_chunks * (n_ctx - 1), threads=threads, dataset=ds)
        imatrix_path = save_imatrix(data, out / f"{stem}.imatrix.gguf")
    elif imatrix:
        imatrix_path = Path(imatrix)

    entries = [_file_entry(f16, "F16", None)]
    builds: list[Path] = []
    for qtype in types:
        if qtype == "F16":
            continue
        dst = out / default_name(stem, qtype)
        use_imatrix = imatrix_path if qtype not in ("BF16", "F32") else None
        quantize_file(f16, dst, qtype, threads=threads, force=force, imatrix=use_imatrix)
        builds.append(dst)
        entries.append(_file_entry(dst, qtype, use_imatrix))

    if report and builds:
        qualities = compare_many(f16, builds, corpus=corpus, n_ctx=n_ctx, n_chunks=n_chunks, threads=threads)
        for entry, q in zip(entries[1:], qualities, strict=True):
            d = asdict(q)
            for k in ("reference", "candidate", "candidate_type", "reference_size", "candidate_size", "candidate_bpw"):
                d.pop(k)
            entry["quality"] = d
        entries[0]["quality"] = {"ppl": qualities[0].ppl_reference, "corpus": qualities[0].corpus,
                                 "tokens": qualities[0].tokens}  # fmt: skip

    manifest: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "source": {
            "checkpoint": str(ckpt.resolve()),
            "sha256": summary.source_sha256,
            "layout": summary.layout,
            "rope_theta": summary.rope_theta,
            "context_length": summary.context_length,
        },
        "imatrix": imatrix_path.name if imatrix_path is not None else None,
        "reference": f16.name,
        "files": entries,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    with atomic_output(manifest_path, QuantizeError) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m quantize.pipeline",
        description="Checkpoint -> f16 GGUF -> quantized builds + manifest.json with quality figures.",
    )
    ap.add_argument("ckpt_dir", help="checkpoint folder (Meta or Hugging Face layout)")
    ap.add_argument("-o", "--output", required=True, help="output folder")
    sel = ap.add_mutually_exclusive_group()
    sel.add_argument("--types", help="comma-separated types, e.g. Q4_K_M,Q8_0")
    sel.add_argument("--target", choices=sorted(TARGETS), help="the default set for this hardware")
    sel.add_argument("--all", action="store_true", help="every supported type")
    ap.add_argument("--imatrix", default=None, help="'auto' to compute one on code, or an imatrix file")
    ap.add_argument("--no-report", action="store_true", help="skip the quality report")
    ap.add_argument("--corpus", help="held-out code for the report (default: Python stdlib modules)")
    ap.add_argument("--ctx", type=int, default=DEFAULT_CTX)
    ap.add_argument("--chunks", type=int, default=DEFAULT_CHUNKS, help="report chunks (default 40: 20,440 tokens)")
    ap.add_argument("--imatrix-chunks", type=int, default=32, help="imatrix chunks of --ctx tokens (default 32)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--name", help="file name stem (default: the checkpoint folder's name)")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr, format="%(message)s")

    def body() -> None:
        if args.types:
            types = parse_types(args.types)
        elif args.all:
            types = list(TYPES)
        else:
            types = list(TARGETS[args.target or "cpu"])
        m = run_pipeline(
            args.ckpt_dir, args.output, types, imatrix=args.imatrix, report=not args.no_report, corpus=args.corpus,
            n_ctx=args.ctx, n_chunks=args.chunks, imatrix_chunks=args.imatrix_chunks, threads=args.threads,
            force=args.force, name=args.name,
        )  # fmt: skip
        for e in m["files"]:
            q = e["quality"] or {}
            kld = f"KLD {q['kld_mean']:.5f} top-1 {100 * q['top1_agreement']:.2f} %" if "kld_mean" in q else ""
            print(f"{e['type']:7s} {e['file']}  {e['size_bytes'] / 2**20:.2f} MiB  {e['bits_per_weight']:.2f} bpw  {kld}")
        print(f"manifest: {Path(args.output) / 'manifest.json'}")

    return run_tool(ap.prog, body, (QuantizeError,), interrupted=interrupt_status)


if __name__ == "__main__":
    sys.exit(main())
