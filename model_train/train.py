"""Train a tiny Code Llama the paper's way: FIM objective, AdamW + cosine, then long-context fine-tuning.

In: a named configuration (``demo`` or ``micro``), an output folder and a seed.
Out, in the output folder (Meta's checkpoint layout, read by ``model_export``'s Meta path):

    tokenizer.model          SentencePiece BPE, Llama settings, + ▁<PRE> ▁<SUF> ▁<MID> ▁<EOT>
    consolidated.00.pth      the final weights (after LCFT), a plain state_dict of float32 tensors
    params.json              Meta's hyper-parameters; rope_theta 1e6 after LCFT
    stage1/                  the same three files before LCFT (rope_theta 1e4), kept for the LCFT evaluation
    train_log.json           configuration, seed, corpus, per-step losses, timings

Recipe (Code Llama paper, sections 2.3-2.5, scaled down):
1. Stage 1: sequences of ``stage1.seq_len`` tokens, rope_theta 1e4. Every document is transformed by
   ``model_train.fim.transform`` (FIM with probability 0.9, half PSM, half SPM); whole documents are
   packed into training rows (never split across rows, so every FIM example is complete); the loss is
   next-token cross-entropy on every position but the padding.
2. LCFT: rope_theta raised to 1e6, longer sequences (``lcft.seq_len``), a short run from the stage-1
   weights with its own warm-up and cosine.
Both stages: AdamW (beta1 0.9, beta2 0.95, weight decay 0.1), gradient clipping at 1.0, linear warm-up,
then cosine decay to 1/30 of the peak learning rate.

Documents: the stdlib files of the train split (``model_train.data``), cut at line boundaries into
chunks of about ``chars_per_doc`` characters, so that one transformed document fits roughly one
training window and the model sees whole PRE/SUF/MID/EOT examples (the cut points move every epoch).
The micro configuration trains on the handful of files in ``tests/data/micro_corpus/`` instead, each
file one document, and memorises them on purpose.

Command line: ``python -m model_train.train --config demo --out DIR --seed 0``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from codellama_core.outfile import atomic_output, file_sha256, write_file
from codellama_core.tool import run_tool
from model_train.configs import CONFIGS, Stage, TrainConfig
from model_train.errors import TrainError
from model_train.fim import Codec, transform
from model_train.model import ModelArgs, Transformer
from model_train.tokenizer import train_tokenizer

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
MICRO_CORPUS = REPO_ROOT / "tests" / "data" / "micro_corpus"


def corpus_texts(cfg: TrainConfig) -> list[tuple[str, str]]:
    """(name, text) of the training files of a configuration, in a fixed order."""
    if cfg.corpus == "micro":
        files = sorted(MICRO_CORPUS.glob("*.py"))
        if not files:
            raise TrainError(f"expected .py files in {MICRO_CORPUS}, got none")
        return [(p.name, p.read_text(encoding="utf-8")) for p in files]
    if cfg.corpus == "stdlib":
        from model_train.data import load_corpus

        return [(f.path, f.text) for f in load_corpus().train]
    raise TrainError(f"expected corpus 'stdlib' or 'micro', got {cfg.corpus!r}")


def chunk_lines(text: str, max_chars: int, first_max: int) -> list[str]:
    """Cut ``text`` at line ends into pieces of at most ~max_chars (the first at most ~first_max)."""
    out: list[str] = []
    cur: list[str] = []
    size, limit = 0, first_max
    for line in text.splitlines(keepends=True):
        if cur and size + len(line) > limit:
            out.append("".join(cur))
            cur, size, limit = [], 0, max_chars
        cur.append(line)
        size += len(line)
    if cur:
        out.append("".join(cur))
    return out


def batches(texts: list[str], codec: Codec, cfg: TrainConfig, stage: Stage, rng: random.Random) -> Iterator[torch.Tensor]:
    """Endless (batch, seq_len + 1) rows of FIM-transformed documents; -1 marks padding.

    A row starts at a document start and holds whole documents only (packed while they fit; one longer
    than a row is cut at the row's end): a FIM example split across two rows would show the model a
    middle without its prefix and suffix, and it could never learn to infill.
    """
    width = stage.seq_len + 1
    chars = cfg.chars_per_doc * stage.seq_len // cfg.stage1.seq_len if cfg.chars_per_doc else 0
    rows: list[list[int]] = []
    row: list[int] = []
    while True:
        docs: list[str] = []
        for t in texts:
            docs += chunk_lines(t, chars, rng.randint(1, chars)) if chars else [t]
        rng.shuffle(docs)
        for d in docs:
            toks = transform(d, codec, rng, cfg.fim_rate, cfg.spm_rate).tokens
            if row and len(row) + len(toks) > width:
                rows.append(row + [-1] * (width - len(row)))
                row = []
            row += toks[:width]
            if len(row) == width:
                rows.append(row)
                row = []
            if len(rows) >= stage.batch_size:  # both appends above may land in one pass
                yield torch.tensor(rows[: stage.batch_size], dtype=torch.long)
                rows = rows[stage.batch_size :]


def lr_at(step: int, stage: Stage) -> float:
    """Linear warm-up to the peak, then cosine down to peak / 30 at the last step."""
    if step < stage.warmup:
        return stage.lr * (step + 1) / stage.warmup
    final = stage.lr / 30
    t = (step - stage.warmup) / max(1, stage.steps - 1 - stage.warmup)
    return final + 0.5 * (stage.lr - final) * (1 + math.cos(math.pi * min(1.0, t)))


def save_checkpoint(model: Transformer, tokenizer: Path, out: Path) -> None:
    """Meta's layout: consolidated.00.pth + params.json + tokenizer.model."""
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    with atomic_output(out / "consolidated.00.pth", TrainError) as tmp:
        torch.save(state, tmp)
    write_file(out / "params.json", json.dumps(model.args.to_params(), indent=2) + "\n", TrainError)
    if tokenizer.resolve() != (out / "tokenizer.model").resolve():
        write_file(out / "tokenizer.model", tokenizer.read_bytes(), TrainError)


def load_checkpoint(ckpt_dir: Path) -> Transformer:
    """A Transformer from a Meta-layout folder (weights_only, mmap: nothing in the file is executed)."""
    params = json.loads((ckpt_dir / "params.json").read_text())
    model = Transformer(ModelArgs.from_params(params))
    state = torch.load(ckpt_dir / "consolidated.00.pth", map_location="cpu", weights_only=True, mmap=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def run_stage(
    model: Transformer, stage: Stage, data: Iterator[torch.Tensor], cfg: TrainConfig, name: str, history: list[dict]
) -> None:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=stage.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    model.train()
    t0 = time.time()
    ema = None
    for step in range(stage.steps):
        lr = lr_at(step, stage)
        for g in opt.param_groups:
            g["lr"] = lr
        batch = next(data)
        # Padding (-1) is fed as token 0 and left out of the loss.
        logits = model(batch[:, :-1].clamp(min=0))  # (batch, seq, vocab)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), ignore_index=-1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        val = loss.item()
        ema = val if ema is None else 0.95 * ema + 0.05 * val
        history.append({"stage": name, "step": step, "loss": round(val, 4), "lr": lr})
        if step % 25 == 0 or step == stage.steps - 1:
            el = time.time() - t0
            log.info(
                "%s step %d/%d loss %.3f (ema %.3f) lr %.2e  %.1f s, %.0f tok/s",
                name,
                step + 1,
                stage.steps,
                val,
                ema,
                lr,
                el,
                (step + 1) * batch.numel() / max(el, 1e-9),
            )
    model.eval()


def train(cfg: TrainConfig, out: Path, seed: int = 0, threads: int = 2) -> Path:
    """Run the whole recipe into ``out``; returns ``out``."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    files = corpus_texts(cfg)
    texts = [t for _, t in files]
    tok_texts = texts
    if cfg.tokenizer_chars:  # a fixed, evenly spread sample keeps SentencePiece's training short
        step = max(1, sum(map(len, texts)) // cfg.tokenizer_chars)
        tok_texts = texts[::step] if step > 1 else texts
    tok_path = train_tokenizer(tok_texts, out / "tokenizer.model", cfg.vocab_size)
    codec = Codec(tok_path)
    log.info(
        "%s: %d files, %d chars; tokenizer %d pieces (%.1f s)",
        cfg.name,
        len(texts),
        sum(map(len, texts)),
        codec.vocab_size,
        time.time() - started,
    )

    model = Transformer(cfg.model_args(codec.vocab_size, cfg.stage1.rope_theta)).init_weights(seed)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %s, %.2fM parameters", cfg.model_args(codec.vocab_size, 1e4), n_params / 1e6)
    history: list[dict] = []
    timings = {}

    t = time.time()
    run_stage(model, cfg.stage1, batches(texts, codec, cfg, cfg.stage1, rng), cfg, "stage1", history)
    timings["stage1_s"] = round(time.time() - t, 1)
    save_checkpoint(model, tok_path, out / "stage1")

    # LCFT: same weights, rope base 1e4 -> 1e6 (the model reads args.rope_theta at every forward).
    model.args = dataclasses.replace(model.args, rope_theta=cfg.lcft.rope_theta)
    t = time.time()
    run_stage(model, cfg.lcft, batches(texts, codec, cfg, cfg.lcft, rng), cfg, "lcft", history)
    timings["lcft_s"] = round(time.time() - t, 1)
    save_checkpoint(model, tok_path, out)

    record = {
        "config": dataclasses.asdict(cfg),
        "seed": seed,
        "threads": threads,
        "files": [name for name, _ in files],
        "parameters": n_params,
        "timings": timings | {"total_s": round(time.time() - started, 1)},
        "checkpoint_sha256": file_sha256(out / "consolidated.00.pth"),
        "history": history,
    }
    write_file(out / "train_log.json", json.dumps(record, indent=1) + "\n", TrainError)
    log.info("%s done in %.0f s -> %s", cfg.name, time.time() - started, out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m model_train.train", description=__doc__.split("\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), required=True)
    ap.add_argument("--out", type=Path, required=True, help="folder for the Meta-layout checkpoint")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=None, help="override stage-1 steps (quick trials)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    cfg = CONFIGS[args.config]
    if args.steps is not None:
        cfg = dataclasses.replace(cfg, stage1=dataclasses.replace(cfg.stage1, steps=args.steps))

    def body() -> None:
        train(cfg, args.out, args.seed, args.threads)

    return run_tool(ap.prog, body, (TrainError,))


if __name__ == "__main__":
    sys.exit(main())
