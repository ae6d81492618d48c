"""Export benchmark: how fast, and in how much memory, a ~1 GB checkpoint becomes a GGUF.

In: nothing (a synthetic checkpoint is generated). Out: a table on stdout.

    .venv/bin/python bench/export.py [--dir /tmp/codellama-export-bench] [--layers 7] [--keep]

The checkpoint is Code-Llama-shaped and random: dim 2048, 16 heads, ``--layers`` layers (default 7, which
makes it ~1 GB), vocab 32016, bf16, split over 2 Meta model-parallel shards exactly as fairscale splits
them. Each measured step runs in its own child process so its peak resident set size (``ru_maxrss`` from
``os.wait4``) belongs to that step alone:

- ``copy``: ``shutil.copy`` of the shard files (the floor: reading and writing the same bytes);
- ``convert``: ``python -m model_export.convert --outtype f16`` (the real CLI, including the SHA-256 of
  the source it reports), and once more with ``--no-hash``.

Wall time is the child's whole life (interpreter start and ``import torch`` included, ~2-4 s here);
CPU is its user + system time (independent of other load on the machine); "work" is the converter's own
figure from its summary line (after imports). Files are in the page cache for every step
(they were just written), so the comparison is CPU- and write-bound, not disk-read-bound.

Goals from the issue: peak RSS <= 2 x the largest tensor + 300 MB; time within 2 x of the copy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPLIT_AXIS = {  # Meta's fairscale split per tensor-name suffix (None: replicated)
    "tok_embeddings.weight": 1, "output.weight": 0, "attention.wq.weight": 0, "attention.wk.weight": 0,
    "attention.wv.weight": 0, "attention.wo.weight": 1, "feed_forward.w1.weight": 0,
    "feed_forward.w2.weight": 1, "feed_forward.w3.weight": 0, "attention_norm.weight": None,
    "ffn_norm.weight": None, "norm.weight": None,
}  # fmt: skip


def shapes(args) -> dict[str, tuple[int, ...]]:
    from model_train.model import ffn_hidden_dim

    hidden = ffn_hidden_dim(args.dim, args.multiple_of, args.ffn_dim_multiplier)
    kv = args.kv_heads * args.head_dim
    out: dict[str, tuple[int, ...]] = {"tok_embeddings.weight": (args.vocab_size, args.dim)}
    for i in range(args.n_layers):
        p = f"layers.{i}."
        out |= {
            p + "attention.wq.weight": (args.dim, args.dim), p + "attention.wk.weight": (kv, args.dim),
            p + "attention.wv.weight": (kv, args.dim), p + "attention.wo.weight": (args.dim, args.dim),
            p + "feed_forward.w1.weight": (hidden, args.dim), p + "feed_forward.w2.weight": (args.dim, hidden),
            p + "feed_forward.w3.weight": (hidden, args.dim), p + "attention_norm.weight": (args.dim,),
            p + "ffn_norm.weight": (args.dim,),
        }  # fmt: skip
    out |= {"norm.weight": (args.dim,), "output.weight": (args.vocab_size, args.dim)}
    return out


def write_checkpoint(folder: Path, n_layers: int, shards: int) -> dict[str, int]:
    """Random bf16 shards, one rank at a time (each rank's slice drawn directly, ~0.5 GB in memory).

    Runs in its own child process (``--generate``); returns the figures the table needs.
    """
    import torch

    from model_train.model import ModelArgs
    from tests.fixtures.checkpoints import codellama_layout_tokenizer

    args = ModelArgs(dim=2048, n_layers=n_layers, n_heads=16, vocab_size=32016, multiple_of=256, rope_theta=1e6)
    tokenizer = codellama_layout_tokenizer(folder.parent / "tokenizer.model")  # cached under .cache/
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for rank in range(shards):
        part: dict[str, torch.Tensor] = {}
        for name, shape in shapes(args).items():
            axis = SPLIT_AXIS[next(s for s in SPLIT_AXIS if name == s or name.endswith("." + s))]
            local = list(shape)
            if axis is not None:
                local[axis] //= shards
            if len(shape) == 1:
                part[name] = torch.ones(local, dtype=torch.bfloat16)
            else:
                part[name] = (torch.randn(local, generator=g) * 0.02).to(torch.bfloat16)
        torch.save(part, folder / f"consolidated.{rank:02d}.pth")
        del part
    (folder / "params.json").write_text(json.dumps(args.to_params()))
    shutil.copyfile(tokenizer, folder / "tokenizer.model")
    sizes = [math.prod(s) for s in shapes(args).values()]
    return {"n_params": sum(sizes), "largest_bytes": max(sizes) * 2}


def measured(argv: list[str]) -> tuple[float, float, int, str]:
    """(wall s, CPU s, peak RSS bytes, stdout) of ``argv`` run as a direct child, from its own rusage
    (``os.wait4``; Linux reports ru_maxrss in KiB). CPU seconds do not depend on what else the machine runs."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    err = proc.stderr.read() if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"expected {' '.join(argv[:4])} to succeed, got exit {proc.returncode}: {err.strip()}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/codellama-export-bench"))
    ap.add_argument("--layers", type=int, default=7)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)  # child mode
    a = ap.parse_args()
    ckpt, copy_dir, out = a.dir / "ckpt", a.dir / "copy", a.dir / "out-f16.gguf"
    if a.generate:
        print(json.dumps(write_checkpoint(ckpt, a.layers, a.shards)))
        return 0

    # This process stays small (no torch): a child's ru_maxrss starts from its parent's resident size.
    shutil.rmtree(a.dir, ignore_errors=True)
    a.dir.mkdir(parents=True)
    t0 = time.perf_counter()
    gen = subprocess.run(
        [sys.executable, __file__, "--generate", "--dir", str(a.dir), "--layers", str(a.layers), "--shards", str(a.shards)],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    facts = json.loads(gen.stdout.strip().splitlines()[-1])
    gen_s = time.perf_counter() - t0
    shard_files = sorted(ckpt.glob("consolidated.*.pth"))
    src_bytes = sum(p.stat().st_size for p in shard_files)
    largest, n_params = facts["largest_bytes"], facts["n_params"]

    copy_dir.mkdir()
    copy_code = (
        "import shutil, sys\n"
        "for p in sys.argv[2:]: shutil.copy(p, sys.argv[1])\n"
    )
    rows = []
    wall, cpu, rss, _ = measured([sys.executable, "-c", copy_code, str(copy_dir), *map(str, shard_files)])
    rows.append(("copy (shutil.copy)", wall, cpu, None, rss))
    shutil.rmtree(copy_dir)
    for label, extra in (("convert f16", []), ("convert f16 --no-hash", ["--no-hash"])):
        wall, cpu, rss, line = measured(
            [sys.executable, "-m", "model_export.convert", str(ckpt), "-o", str(out), "--outtype", "f16", *extra]
        )
        m = re.search(r" in ([\d.]+) s ", line)
        rows.append((label, wall, cpu, float(m.group(1)) if m else None, rss))
        summary = line.strip()
        out.unlink()

    mb = 1e6
    print(f"synthetic checkpoint: dim 2048, {a.layers} layers, vocab 32016, bf16, {a.shards} Meta shards, "
          f"{n_params / 1e6:.0f}M params, {src_bytes / mb:.0f} MB (generated in {gen_s:.0f} s)")
    print(f"largest tensor: {largest / mb:.0f} MB (bf16); RSS goal 2 x largest + 300 MB = {(2 * largest + 300 * mb) / mb:.0f} MB")
    print()
    print(f"| {'step':<24} | {'wall s':>7} | {'CPU s':>7} | {'work s':>7} | {'MB/s (wall)':>11} | {'peak RSS MB':>11} |")
    print(f"|{'-' * 26}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 13}|{'-' * 13}|")
    for label, wall, cpu, work, rss in rows:
        work_s = f"{work:7.1f}" if work is not None else f"{'':>7}"
        print(f"| {label:<24} | {wall:7.1f} | {cpu:7.1f} | {work_s} | {src_bytes / mb / wall:11.0f} | {rss / mb:11.0f} |")
    print()
    copy_wall = rows[0][1]
    conv = rows[1]
    print(f"convert/copy wall ratio: {conv[1] / copy_wall:.2f} (goal <= 2); "
          f"peak RSS {conv[4] / mb:.0f} MB vs goal {(2 * largest + 300 * mb) / mb:.0f} MB")
    print(f"converter summary: {summary}")
    if not a.keep:
        shutil.rmtree(a.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
