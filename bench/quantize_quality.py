"""Quality of every quantized build of one model, with and without an importance matrix: a table.

In: a reference f16 GGUF (``--gguf``), a checkpoint folder to export first (``--checkpoint``), or
``--fixture d256|d64`` (a random Code-Llama-shaped model from the test fixtures). Out: on stdout the markdown
table that README's "Quantized builds" section carries (type, size, bits/weight, KLD mean/p99/max, PPL,
PPL ratio, top-1 agreement), one row per type, plus ``+imatrix`` rows for the types where llama.cpp's
importance-weighted rounding is meant to matter; ``--json`` writes every figure.

    python bench/quantize_quality.py --checkpoint model_train/out/demo -o /tmp/qbench --json demo.json
    python bench/quantize_quality.py --fixture d256 -o /tmp/qbench-fixture
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quantize.corpus import corpus_text
from quantize.imatrix import compute_imatrix, save_imatrix
from quantize.quantize import TYPES, quantize_file
from quantize.report import DEFAULT_CHUNKS, DEFAULT_CTX, compare, format_table, reference_run

IMATRIX_TYPES = ("Q2_K", "Q3_K_M", "Q4_K_M")


def fixture_f16(kind: str, out: Path) -> Path:
    import torch

    from model_export.convert import convert
    from tests.fixtures.checkpoints import TINY, random_model, train_fixture_tokenizer, write_meta_checkpoint

    args = TINY if kind == "d64" else replace(TINY, dim=256, n_heads=4, n_kv_heads=2, multiple_of=256)
    tok = train_fixture_tokenizer(out / "tokenizer.model")
    ckpt = write_meta_checkpoint(out / f"ckpt-{kind}", random_model(args, 1, torch.bfloat16), tok)
    f16 = out / f"fixture-{kind}.F16.gguf"
    f16.unlink(missing_ok=True)
    convert(ckpt, f16, outtype="f16")
    return f16


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--gguf", help="reference f16 GGUF")
    src.add_argument("--checkpoint", help="checkpoint folder, exported to f16 first")
    src.add_argument("--fixture", choices=["d256", "d64"], help="random fixture model")
    ap.add_argument("-o", "--out", default="/tmp/quantize-bench", help="work folder for the builds")
    ap.add_argument("--types", default=",".join(t for t in TYPES if t != "F32"))
    ap.add_argument("--imatrix-types", default=",".join(IMATRIX_TYPES), help="also build these with an imatrix ('' = none)")
    ap.add_argument("--ctx", type=int, default=DEFAULT_CTX)
    ap.add_argument("--chunks", type=int, default=DEFAULT_CHUNKS)
    ap.add_argument("--imatrix-chunks", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if args.gguf:
        f16 = Path(args.gguf)
    elif args.checkpoint:
        from model_export.convert import convert

        f16 = out / f"{Path(args.checkpoint).resolve().name}.F16.gguf"
        f16.unlink(missing_ok=True)
        convert(args.checkpoint, f16, outtype="f16")
    else:
        f16 = fixture_f16(args.fixture, out)

    t0 = time.perf_counter()
    stem = f16.name.removesuffix(".gguf").removesuffix(".F16")
    (out / "builds").mkdir(exist_ok=True)
    builds: list[tuple[str, Path]] = []
    for t in [x for x in args.types.split(",") if x]:
        dst = out / "builds" / f"{stem}.{t}.gguf"
        quantize_file(f16, dst, t, threads=args.threads, force=True)
        builds.append((t, dst))
    im_types = [x for x in args.imatrix_types.split(",") if x]
    imatrix_seconds = 0.0
    if im_types:
        t1 = time.perf_counter()
        text, ds = corpus_text(None, role="imatrix")
        data = compute_imatrix(f16, text, n_ctx=args.ctx, max_tokens=args.imatrix_chunks * (args.ctx - 1),
                               threads=args.threads, dataset=ds)  # fmt: skip
        im = save_imatrix(data, out / "imatrix.gguf")
        imatrix_seconds = time.perf_counter() - t1
        for t in im_types:
            dst = out / "builds" / f"{stem}.{t}.imatrix.gguf"
            quantize_file(f16, dst, t, threads=args.threads, force=True, imatrix=im)
            builds.append((f"{t}+imatrix", dst))
    quant_seconds = time.perf_counter() - t0

    results = []
    with reference_run(f16, n_ctx=args.ctx, n_chunks=args.chunks, threads=args.threads) as ref:
        for label, path in builds:
            q = compare(ref, path, threads=args.threads)
            results.append(replace(q, candidate_type=label))
    print(format_table(results), end="")
    print(f"\nquantization + imatrix: {quant_seconds:.1f} s (imatrix {imatrix_seconds:.1f} s); "
          f"report: {sum(q.seconds for q in results):.1f} s for {len(results)} builds")  # fmt: skip
    if args.json_out:
        Path(args.json_out).write_text(json.dumps([asdict(q) for q in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
