"""Ship a trained demo checkpoint: export it with ``model_export.convert`` and write its manifest.

In: a Meta-layout checkpoint folder written by ``python -m model_train.train --config demo`` and the JSON
report of ``python -m model_train.eval`` on it. Out, in ``lsp_server/models/demo/``:

    codellama-demo.gguf   the model (f16 by default), what ``--model demo`` loads
    tokenizer.model       its SentencePiece tokenizer (the GGUF carries the same vocabulary)
    manifest.json         how it was made: training command and seed, data manifest (path + sha256),
                          checkpoint sha256, GGUF sha256, parameters, timings, held-out scores

    python -m model_train.ship --ckpt .cache/demo/run1 --eval .cache/demo/eval.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from codellama_core.outfile import file_sha256, write_file
from codellama_core.tool import run_tool
from model_export.errors import ExportError
from model_train.data import DEFAULT_MANIFEST
from model_train.errors import TrainError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = REPO_ROOT / "lsp_server" / "models" / "demo"
GGUF_NAME = "codellama-demo.gguf"
MAX_BYTES = 30 * 1024 * 1024


def ship(ckpt: Path, eval_report: Path, out_dir: Path = DEMO_DIR, outtype: str = "f16", ctx: int | None = None) -> Path:
    from model_export.convert import convert

    log_path = ckpt / "train_log.json"
    if not log_path.is_file() or not eval_report.is_file():
        raise TrainError(
            f"expected {log_path} and {eval_report}, got {'no train log' if not log_path.is_file() else 'no eval report'}"
        )
    train_log = json.loads(log_path.read_text())
    report = json.loads(eval_report.read_text())
    cfg = train_log["config"]
    ctx = ctx or 4 * cfg["lcft"]["seq_len"]
    out_dir.mkdir(parents=True, exist_ok=True)
    gguf = out_dir / GGUF_NAME
    convert(ckpt, gguf, outtype=outtype, ctx=ctx)
    if gguf.stat().st_size > MAX_BYTES:
        raise TrainError(f"expected a GGUF of at most {MAX_BYTES} bytes, got {gguf.stat().st_size}")
    write_file(out_dir / "tokenizer.model", (ckpt / "tokenizer.model").read_bytes(), TrainError)
    manifest = {
        "name": "codellama-demo",
        "description": "A tiny Code Llama trained from scratch on the CPython standard library with the "
        "Code Llama recipe (FIM 0.9, PSM/SPM, AdamW, cosine, LCFT theta 1e4 -> 1e6). A demo, "
        "not a useful assistant.",
        "gguf": GGUF_NAME,
        "gguf_sha256": file_sha256(gguf),
        "outtype": outtype,
        "context_length": ctx,
        "training_command": f"python -m model_train.train --config {cfg['name']} --out CKPT "
        f"--seed {train_log['seed']} --threads {train_log['threads']}",
        "export_command": f"python -m model_export.convert CKPT -o {GGUF_NAME} --outtype {outtype} --ctx {ctx}",
        "eval_command": f"python -m model_train.eval --ckpt CKPT --cases {report['line_tasks']['cases']} --seed 0",
        "seed": train_log["seed"],
        "config": cfg,
        "parameters": train_log["parameters"],
        "timings_s": train_log["timings"],
        "data_manifest": str(DEFAULT_MANIFEST.relative_to(REPO_ROOT)),
        "data_manifest_sha256": file_sha256(DEFAULT_MANIFEST),
        "checkpoint_sha256": train_log["checkpoint_sha256"],
        "heldout_scores": {
            "exact_match": report["line_tasks"]["exact_match"],
            "edit_similarity": report["line_tasks"].get("edit_similarity"),
            "cases": report["line_tasks"]["cases"],
            "long_context_perplexity": report["long_context"],
        },
    }
    write_file(out_dir / "manifest.json", json.dumps(manifest, indent=1) + "\n", TrainError)
    log.info("shipped %s (%d bytes) and manifest.json to %s", GGUF_NAME, gguf.stat().st_size, out_dir)
    return gguf


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m model_train.ship", description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", type=Path, required=True)
    ap.add_argument("--eval", type=Path, required=True, help="JSON report of model_train.eval")
    ap.add_argument("--outtype", default="f16")
    ap.add_argument("--ctx", type=int, default=None, help="context length written to the GGUF (default 4x LCFT)")
    ap.add_argument("--out-dir", type=Path, default=DEMO_DIR)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")

    def body() -> None:
        ship(args.ckpt, args.eval, args.out_dir, args.outtype, args.ctx)

    return run_tool(ap.prog, body, (TrainError, ExportError))


if __name__ == "__main__":
    sys.exit(main())
