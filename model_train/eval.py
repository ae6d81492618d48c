"""Held-out evaluation of a trained tiny Code Llama: line infilling, next-line completion, long-context perplexity.

In: a Meta-layout checkpoint folder (after LCFT), its GGUF export, optionally the stage-1 (pre-LCFT)
checkpoint, and the held-out split of the data manifest. Out: a JSON report and a Markdown table on stdout.

Line-level tasks (greedy decoding by the language server's llama.cpp engine on the exported GGUF, so the
export is exercised too). A case is one non-blank line (at most 120 characters) of a held-out file, drawn with a
fixed seed. The line is removed; the prefix is up to 1,500 characters of whole lines before it, the
suffix "\\n" + up to 600 characters after it (about 700 tokens together, inside the 1,024-token LCFT
window).
- ``fim_psm`` / ``fim_spm``: Meta's infilling prompt (``model_train.fim.prompt_tokens``) in each order;
  generate until EOT or the first newline (at most 64 tokens); the prediction is the decoded middle up
  to its first newline.
- ``next_line``: no suffix; ``[BOS] + enc(prefix)``; generate until the first newline.
A prediction scores when it equals the removed line exactly (indentation included); a softer score,
edit similarity (``difflib.SequenceMatcher`` ratio of prediction and line, 0..1, averaged), shows progress
below exact match. Baselines on the same cases: ``empty`` (predict nothing - always wrong, since the lines are non-blank) and
``previous_line`` (repeat the closest non-blank line above).

Long context (PyTorch forward pass on the checkpoints): windows of 4 x L tokens (L = the stage-1
sequence length) from held-out files. The same target tokens are scored twice: with the full 4L
context, and cut into four independent L-token windows. Reported as perplexity before LCFT (stage 1,
rope_theta 1e4) and after LCFT (rope_theta 1e6).
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import math
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from codellama_core.outfile import atomic_output
from codellama_core.tool import run_tool
from model_train.data import SourceFile, load_corpus
from model_train.errors import TrainError
from model_train.fim import Codec, prompt_tokens

log = logging.getLogger(__name__)

MAX_LINE = 120
PREFIX_CHARS = 1500
SUFFIX_CHARS = 600
MAX_NEW = 64


@dataclass(frozen=True)
class Case:
    path: str
    line_no: int
    prefix: str
    line: str
    suffix: str
    previous_line: str


def make_cases(files: list[SourceFile], n: int, seed: int = 0) -> list[Case]:
    """``n`` single-line cases drawn uniformly from the eligible lines of ``files``."""
    pool = []
    for fi, f in enumerate(files):
        lines = f.text.split("\n")
        pool += [(fi, i) for i, ln in enumerate(lines) if ln.strip() and len(ln) <= MAX_LINE]
    if len(pool) < n:
        raise TrainError(f"expected at least {n} eligible held-out lines, got {len(pool)}")
    cases = []
    for fi, i in sorted(random.Random(seed).sample(pool, n)):
        lines = files[fi].text.split("\n")
        before, after = lines[:i], lines[i + 1 :]
        k = len(before)
        while k > 0 and sum(len(x) + 1 for x in before[k - 1 :]) <= PREFIX_CHARS:
            k -= 1
        prefix = "".join(x + "\n" for x in before[k:])
        suffix, size = "", 0
        for x in after:
            if size + len(x) + 1 > SUFFIX_CHARS:
                break
            suffix += "\n" + x
            size += len(x) + 1
        prev = next((x for x in reversed(before) if x.strip()), "")
        cases.append(Case(files[fi].path, i, prefix, lines[i], suffix or "\n", prev))
    return cases


class Generator:
    """Greedy decoding from token ids on a GGUF: the language server's in-process llama.cpp engine (the
    same adapter, stop handling and KV prefix reuse as in the editor)."""

    def __init__(self, gguf: Path, n_ctx: int = 2048, n_threads: int = 2):
        from lsp_server.engines.llama_cpp import EngineOptions, LlamaCppEngine

        self.engine = LlamaCppEngine(Path(gguf), Path(gguf).name, EngineOptions(n_ctx=n_ctx, threads=n_threads))

    def greedy(self, tokens: list[int], stop_ids: set[int], *, stop_at_newline: bool, max_new: int = MAX_NEW) -> list[int]:
        """The generated ids, without the stop token; with ``stop_at_newline`` up to the first token that
        contains a newline."""
        from lsp_server.engines import GenerationRequest

        request = GenerationRequest(
            prompt=tokens, max_tokens=max_new, time_budget_s=3600.0, stop_tokens=frozenset(stop_ids),
            stop_text=(lambda text: "\n" in text) if stop_at_newline else None,
        )  # fmt: skip
        result = self.engine.submit(request).future.result()
        return result.candidates[0].tokens if result.candidates else []

    def close(self) -> None:
        self.engine.close()


def line_tasks(cases: list[Case], codec: Codec, gen: Generator) -> dict:
    """Exact-match rates of FIM (PSM, SPM) and next-line completion, with the two baselines."""
    stop = {codec.eot_id, codec.eos_id}
    hits = {"fim_psm": 0, "fim_spm": 0, "next_line": 0, "empty": 0, "previous_line": 0}
    sims = dict.fromkeys(hits, 0.0)
    examples = []
    t0 = time.time()
    for n, c in enumerate(cases):
        preds = {}
        for name, suffix_first in (("fim_psm", False), ("fim_spm", True)):
            # Only the first line is scored, so generation may stop at the first newline as well as at EOT.
            ids = gen.greedy(prompt_tokens(codec, c.prefix, c.suffix, suffix_first=suffix_first), stop, stop_at_newline=True)
            preds[name] = codec.decode_nls(ids).split("\n", 1)[0]
        ids = gen.greedy([codec.bos_id] + codec.enc(c.prefix), stop, stop_at_newline=True)
        preds["next_line"] = codec.decode_nls(ids).split("\n", 1)[0]
        preds["empty"] = ""
        preds["previous_line"] = c.previous_line
        for k, v in preds.items():
            hits[k] += v == c.line
            sims[k] += difflib.SequenceMatcher(None, v, c.line, autojunk=False).ratio()
        if n < 12:
            examples.append({"path": c.path, "line_no": c.line_no, "line": c.line} | preds)
        if (n + 1) % 100 == 0:
            log.info("%d/%d cases, %.0f s; so far %s", n + 1, len(cases), time.time() - t0, hits)
    return {
        "cases": len(cases),
        "exact_match": {k: round(v / len(cases), 4) for k, v in hits.items()},
        "edit_similarity": {k: round(v / len(cases), 4) for k, v in sims.items()},
        "seconds": round(time.time() - t0, 1),
        "examples": examples,
    }


@torch.no_grad()
def long_context_ppl(ckpt_dir: Path, files: list[SourceFile], codec: Codec, L: int, n_windows: int = 24) -> dict:
    """Perplexity of the same tokens with 4L context vs four separate L-token windows."""
    from model_train.train import load_checkpoint

    model = load_checkpoint(ckpt_dir)
    windows = []
    for f in files:
        ids = [codec.bos_id] + codec.enc(f.text) + [codec.eos_id]
        for s in range(0, len(ids) - 4 * L, 4 * L):
            windows.append(ids[s : s + 4 * L + 1])
    windows = windows[:: max(1, len(windows) // n_windows)][:n_windows]
    if not windows:
        raise TrainError(f"expected held-out files longer than {4 * L} tokens, got none")
    x = torch.tensor(windows)
    out = {}
    for name, span in (("ctx_L", L), ("ctx_4L", 4 * L)):
        nll, count = 0.0, 0
        for s in range(0, 4 * L, span):
            inp, tgt = x[:, s : s + span], x[:, s + 1 : s + span + 1]
            for b in range(0, len(x), 4):  # 4 windows at a time keeps memory small
                logits = model(inp[b : b + 4])
                nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt[b : b + 4].reshape(-1), reduction="sum").item()
                count += tgt[b : b + 4].numel()
        out[name] = round(math.exp(nll / count), 3)
    return {"L": L, "windows": len(windows), "rope_theta": model.args.rope_theta} | out


def evaluate(ckpt: Path, gguf: Path | None, stage1: Path | None, n_cases: int, seed: int, manifest: Path | None = None) -> dict:
    corpus = load_corpus(manifest) if manifest else load_corpus()
    codec = Codec(ckpt / "tokenizer.model")
    report: dict = {"checkpoint": str(ckpt), "heldout_files": len(corpus.heldout)}
    params = json.loads((ckpt / "params.json").read_text())
    L = (
        json.loads((ckpt / "train_log.json").read_text())["config"]["stage1"]["seq_len"]
        if (ckpt / "train_log.json").is_file()
        else 256
    )
    report["long_context"] = {"after_lcft": long_context_ppl(ckpt, corpus.heldout, codec, L)}
    if stage1 is not None:
        report["long_context"]["before_lcft"] = long_context_ppl(stage1, corpus.heldout, codec, L)
    log.info("long context: %s", report["long_context"])
    with tempfile.TemporaryDirectory() as tmp:
        if gguf is None:
            from model_export.convert import convert

            gguf = Path(tmp) / "model.f32.gguf"
            convert(ckpt, gguf, outtype="f32")
        report["gguf"] = str(gguf)
        cases = make_cases(corpus.heldout, n_cases, seed)
        gen = Generator(gguf)
        try:
            report["line_tasks"] = line_tasks(cases, codec, gen)
        finally:
            gen.close()
    report["rope_theta"] = params.get("rope_theta")
    return report


def markdown(report: dict) -> str:
    em = report["line_tasks"]["exact_match"]
    n = report["line_tasks"]["cases"]
    es = report["line_tasks"]["edit_similarity"]
    rows = [f"| task ({n} held-out lines) | exact match | edit similarity |", "| --- | --- | --- |"]
    names = {
        "fim_psm": "infilling, PSM",
        "fim_spm": "infilling, SPM",
        "next_line": "next line, no suffix",
        "empty": "baseline: empty completion",
        "previous_line": "baseline: previous line repeated",
    }
    rows += [f"| {names[k]} | {100 * em[k]:.1f}% | {es[k]:.3f} |" for k in names]
    lc = report["long_context"]
    rows += ["", "| held-out perplexity | context L | context 4L |", "| --- | --- | --- |"]
    for k in ("before_lcft", "after_lcft"):
        if k in lc:
            r = lc[k]
            rows.append(
                f"| {k.replace('_', ' ')} (rope_theta {r['rope_theta']:g}, L={r['L']}) | {r['ctx_L']:.2f} | {r['ctx_4L']:.2f} |"
            )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m model_train.eval", description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", type=Path, required=True, help="Meta-layout checkpoint folder (after LCFT)")
    ap.add_argument("--gguf", type=Path, help="its GGUF export (default: export to a temporary f32 file)")
    ap.add_argument("--stage1", type=Path, help="the pre-LCFT checkpoint (default: CKPT/stage1 if present)")
    ap.add_argument("--cases", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the full report here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    torch.set_num_threads(2)
    stage1 = args.stage1 or (args.ckpt / "stage1" if (args.ckpt / "stage1").is_dir() else None)

    def body() -> None:
        report = evaluate(args.ckpt, args.gguf, stage1, args.cases, args.seed)
        if args.json:
            with atomic_output(args.json, TrainError) as tmp:
                tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
        print(markdown(report))

    return run_tool(ap.prog, body, (TrainError,))


if __name__ == "__main__":
    sys.exit(main())
