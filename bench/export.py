"""Export benchmark: how fast, and in how much memory, a ~1 GB checkpoint becomes a GGUF - beside llama.cpp.

In: nothing (a synthetic checkpoint is generated); optionally ``--llama-cpp DIR``, a llama.cpp source tree
(``DIR/examples/convert_legacy_llama.py`` and ``DIR/gguf-py``; llama-cpp-python's sdist vendors one under
``vendor/llama.cpp``). Out: a table on stdout.

    .venv/bin/python bench/export.py [--llama-cpp DIR] [--runs 3] [--dir /tmp/codellama-export-bench] [--layers 7]

The checkpoint is Code-Llama-shaped and random: dim 2048, 16 heads, ``--layers`` layers (default 7, which
makes it ~1 GB), vocab 32016, bf16, split over 2 Meta model-parallel shards exactly as fairscale splits
them. Each measured step runs in its own child process so its peak resident set size (``ru_maxrss`` from
``os.wait4``) belongs to that step alone; the steps take turns, ``--runs`` rounds, and the table shows
medians (peak RSS: the largest):

- ``copy``: ``shutil.copy`` of the shard files (the floor: reading and writing the same bytes);
- ``convert``: ``python -m model_export.convert --outtype f16`` (the real CLI, including the SHA-256 of
  the source it reports), and once more with ``--no-hash``;
- ``llama.cpp``: ``convert_legacy_llama.py --outtype f16`` on the same folder, with its own gguf-py.

Wall time is the child's whole life (interpreter start and imports included); CPU is its user + system
time (less sensitive to other load on the machine); "work" is the converter's own figure from its
summary line (after imports). Files are in the page cache for every step (they were just written), so the
comparison is CPU- and write-bound, not disk-read-bound.

Goals (issue 17): wall time <= 1.0x llama.cpp's converter and peak RSS <= 0.4x of it; without the
llama.cpp sources, the copy is the yardstick.
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
import tempfile
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


def measured(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float, int, str]:
    """(wall s, CPU s, peak RSS bytes, stdout) of ``argv`` run as a direct child, from its own rusage
    (``os.wait4``; Linux reports ru_maxrss in KiB). CPU seconds do not depend on what else the machine runs."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:  # files: no pipe can fill up
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"expected {' '.join(argv[:4])} to succeed, got exit {proc.returncode}: {err.read()[-2000:]}")
        return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, out.read()


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/codellama-export-bench"))
    ap.add_argument("--layers", type=int, default=7)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3, help="rounds of every step (medians are shown)")
    ap.add_argument("--llama-cpp", type=Path, help="llama.cpp source tree, to run convert_legacy_llama.py beside ours")
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
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    facts = json.loads(gen.stdout.strip().splitlines()[-1])
    gen_s = time.perf_counter() - t0
    shard_files = sorted(ckpt.glob("consolidated.*.pth"))
    src_bytes = sum(p.stat().st_size for p in shard_files)
    largest, n_params = facts["largest_bytes"], facts["n_params"]

    copy_code = "import shutil, sys\nfor p in sys.argv[2:]: shutil.copy(p, sys.argv[1])\n"
    convert = [sys.executable, "-m", "model_export.convert", str(ckpt), "-o", str(out), "--outtype", "f16"]
    steps: dict[str, tuple[list[str], dict[str, str] | None]] = {
        "copy (shutil.copy)": ([sys.executable, "-c", copy_code, str(copy_dir), *map(str, shard_files)], None),
        "convert f16": (convert, None),
        "convert f16 --no-hash": ([*convert, "--no-hash"], None),
    }
    if a.llama_cpp:
        script = a.llama_cpp / "examples" / "convert_legacy_llama.py"
        if not script.is_file():
            raise SystemExit(f"expected {script}, got no such file")
        env = {**os.environ, "PYTHONPATH": str(a.llama_cpp / "gguf-py")}
        steps["llama.cpp convert_legacy_llama"] = (
            [sys.executable, str(script), str(ckpt), "--outfile", str(out), "--outtype", "f16"],
            env,
        )
    results: dict[str, list[tuple[float, float, int, float | None]]] = {k: [] for k in steps}
    summary = ""
    for _ in range(a.runs):
        for label, (argv, env) in steps.items():
            copy_dir.mkdir(exist_ok=True)
            wall, cpu, rss, line = measured(argv, env)
            m = re.search(r" in ([\d.]+) s ", line)
            results[label].append((wall, cpu, rss, float(m.group(1)) if m and label.startswith("convert") else None))
            if label == "convert f16":
                summary = line.strip()
            shutil.rmtree(copy_dir, ignore_errors=True)
            out.unlink(missing_ok=True)

    mb = 1e6
    print(
        f"synthetic checkpoint: dim 2048, {a.layers} layers, vocab 32016, bf16, {a.shards} Meta shards, "
        f"{n_params / 1e6:.0f}M params, {src_bytes / mb:.0f} MB, largest tensor {largest / mb:.0f} MB (generated in "
        f"{gen_s:.0f} s); {a.runs} runs each, "
        f"medians; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end"
    )
    print()
    print(f"| {'step':<30} | {'wall s':>7} | {'CPU s':>7} | {'work s':>7} | {'MB/s (wall)':>11} | {'peak RSS MB':>11} |")
    print(f"|{'-' * 32}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 13}|{'-' * 13}|")
    rows = {}
    for label, rs in results.items():
        wall, cpu = median([r[0] for r in rs]), median([r[1] for r in rs])
        rss = max(r[2] for r in rs)
        works = [r[3] for r in rs if r[3] is not None]
        work_s = f"{median(works):7.1f}" if works else f"{'':>7}"
        rows[label] = (wall, cpu, rss)
        print(f"| {label:<30} | {wall:7.2f} | {cpu:7.2f} | {work_s} | {src_bytes / mb / wall:11.0f} | {rss / mb:11.0f} |")
    print()
    ours = rows["convert f16"]
    if "llama.cpp convert_legacy_llama" in rows:
        ref = rows["llama.cpp convert_legacy_llama"]
        print(
            f"convert / llama.cpp: wall {ours[0] / ref[0]:.2f}x (goal <= 1.0), CPU {ours[1] / ref[1]:.2f}x, "
            f"peak RSS {ours[2] / ref[2]:.2f}x (goal <= 0.4)"
        )
    print(f"convert / copy wall ratio: {ours[0] / rows['copy (shutil.copy)'][0]:.2f}")
    print(f"converter summary: {summary}")
    if not a.keep:
        shutil.rmtree(a.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
