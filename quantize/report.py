"""Quality of a quantized build against its reference, measured on held-out code.

In: a reference GGUF (the f16 export), one or more candidate GGUFs (its quantized builds) and a corpus
(default: Python standard-library modules not used for training nor for the importance matrix). Out: per
candidate a :class:`Quality` - KL divergence of the candidate's next-token distribution from the
reference's (mean, standard error, median, 99th percentile, max), perplexity of both and their ratio, top-1
agreement, file size and bits per weight - printed as a table and written as JSON.

Method (the same as ``llama-perplexity --kl-divergence``, except that every position of a chunk is scored):
the corpus is tokenized once with the reference's vocab (special-token parsing off), cut into chunks of
``n_ctx`` tokens that each start with BOS, and every chunk is evaluated from an empty cache with logits
for all positions. Position i's distribution is compared on the token at i+1, so a chunk scores n_ctx-1
predictions; the default 40 chunks of 512 score 20,440 tokens. Log-softmax is computed in float64 after
subtracting the row maximum, so neither large logits nor tiny probabilities overflow or vanish.

The reference's raw float32 logits are kept in a memory-mapped temporary file, so a sweep over many
candidates evaluates the reference once and holds one model in memory at a time; a model compared with
itself therefore gives exactly KLD 0 and 100 % agreement (llama.cpp's CPU backend is deterministic).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from codellama_core.outfile import atomic_output
from codellama_core.tool import run_tool
from quantize.corpus import corpus_text
from quantize.errors import QuantizeError, llama_session
from quantize.gguf_info import GGUFInfo, read_info

log = logging.getLogger(__name__)

DEFAULT_CTX = 512
DEFAULT_CHUNKS = 40  # 40 * 511 = 20,440 scored tokens
# A position whose reference top-1 and top-2 log-probabilities are closer than this is a near-tie: any
# rounding may swap them, so agreement is also reported on the positions the reference is decided about.
NEAR_TIE_NATS = 0.05


@dataclass(frozen=True)
class Quality:
    reference: str
    candidate: str
    candidate_type: str
    corpus: str
    n_ctx: int
    chunks: int
    tokens: int  # scored predictions
    kld_mean: float
    kld_stderr: float
    kld_median: float
    kld_p99: float
    kld_max: float
    ppl_reference: float
    ppl_candidate: float
    ppl_ratio: float
    top1_agreement: float  # fraction in [0, 1]
    near_tie_share: float  # fraction of positions where the reference's top-2 margin < NEAR_TIE_NATS
    top1_agreement_decided: float  # agreement on the other positions
    reference_size: int
    candidate_size: int
    reference_bpw: float
    candidate_bpw: float
    seconds: float


def type_label(info: GGUFInfo) -> str:
    """The build's type: general.file_type when it names one we know, else the most common tensor type."""
    from quantize.quantize import TYPES

    by_id = {v: k for k, v in TYPES.items()}
    if info.file_type is not None and int(info.file_type) in by_id:
        return by_id[int(info.file_type)]
    weights = [t for t in info.tensors if len(t.shape) > 1]
    if not weights:
        return "unknown"
    counts: dict[str, int] = {}
    for t in weights:
        counts[t.type] = counts.get(t.type, 0) + t.n_elements
    return max(counts, key=counts.__getitem__)


def log_softmax64(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64: x - max - log(sum(exp(x - max)))."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return x


class Reference:
    """The reference model's logits over the corpus chunks (see :func:`reference_run`)."""

    def __init__(
        self, path: Path, info: GGUFInfo, chunks: list[list[int]], logits: np.memmap, corpus: str, n_ctx: int, decided: np.ndarray
    ):
        self.path = path
        self.info = info
        self.chunks = chunks
        self.logits = logits  # (n_chunks, n_ctx, n_vocab) float32
        self.corpus = corpus
        self.n_ctx = n_ctx
        self.n_vocab = logits.shape[-1]
        self.decided = decided  # (n_chunks, n_ctx) bool: top-2 margin >= NEAR_TIE_NATS (not a near-tie)


def _chunks(tokens: list[int], bos: int, n_ctx: int, n_chunks: int) -> list[list[int]]:
    step = n_ctx - 1
    available = len(tokens) // step
    if available < n_chunks:
        raise QuantizeError(
            f"expected a corpus of at least {n_chunks * step} tokens ({n_chunks} chunks of {n_ctx}), got {len(tokens)}"
        )
    return [[bos] + tokens[i * step : (i + 1) * step] for i in range(n_chunks)]


@contextmanager
def reference_run(
    ref_path: str | os.PathLike[str],
    *,
    corpus: str | os.PathLike[str] | None = None,
    n_ctx: int = DEFAULT_CTX,
    n_chunks: int = DEFAULT_CHUNKS,
    threads: int | None = None,
) -> Iterator[Reference]:
    """Evaluate the reference once; yields a :class:`Reference` backed by a temporary memory-mapped file."""
    ref = Path(ref_path)
    info = read_info(ref)
    text, corpus_name = corpus_text(corpus, role="eval")
    with tempfile.TemporaryDirectory(prefix="quantize-report-") as tmpdir:
        with llama_session(ref, n_ctx=n_ctx, threads=threads) as s:
            assert s.model.bos is not None  # llama_session checked
            chunks = _chunks(s.model.tokenize(text), s.model.bos, n_ctx, n_chunks)
            store = np.lib.format.open_memmap(
                Path(tmpdir) / "ref.npy", mode="w+", dtype=np.float32, shape=(len(chunks), n_ctx, s.model.n_vocab)
            )
            decided = np.empty((len(chunks), n_ctx), dtype=bool)
            t0 = time.perf_counter()
            for i, chunk in enumerate(chunks):
                store[i] = logits = s.evaluate(chunk)
                # A property of the reference alone, so computed once here; logit differences equal
                # log-probability differences (the softmax normaliser cancels).
                top2 = np.partition(logits, -2, axis=1)[:, -2:].astype(np.float64)
                decided[i] = (top2[:, 1] - top2[:, 0]) >= NEAR_TIE_NATS
            log.info("reference %s: %d chunks in %.1f s", ref.name, len(chunks), time.perf_counter() - t0)
        yield Reference(ref, info, chunks, store, corpus_name, n_ctx, decided)
        del store


def compare(reference: Reference, candidate_path: str | os.PathLike[str], *, threads: int | None = None) -> Quality:
    """Evaluate one candidate on the reference's chunks and compute every figure of :class:`Quality`."""
    cand = Path(candidate_path)
    info = read_info(cand)
    kld_parts: list[np.ndarray] = []
    nll_ref = nll_cand = 0.0
    agree = total = ties = agree_decided = 0
    t0 = time.perf_counter()
    with llama_session(cand, n_ctx=reference.n_ctx, threads=threads) as s:
        if s.model.n_vocab != reference.n_vocab:
            raise QuantizeError(f"expected a candidate with the reference's {reference.n_vocab} tokens, got {s.model.n_vocab}")
        for i, chunk in enumerate(reference.chunks):
            targets = np.asarray(chunk[1:])
            rows = np.arange(len(targets))
            lp_r = log_softmax64(reference.logits[i, : len(targets)])
            lp_c = log_softmax64(s.evaluate(chunk)[: len(targets)])
            # KL(P_ref || P_cand) per position; the difference is exactly 0 where the logits are equal.
            kld_parts.append(np.einsum("ij,ij->i", np.exp(lp_r), lp_r - lp_c))
            nll_ref -= float(lp_r[rows, targets].sum())
            nll_cand -= float(lp_c[rows, targets].sum())
            same = lp_r.argmax(axis=1) == lp_c.argmax(axis=1)
            decided = reference.decided[i, : len(targets)]
            agree += int(same.sum())
            ties += int((~decided).sum())
            agree_decided += int((same & decided).sum())
            total += len(targets)
    kld = np.concatenate(kld_parts)
    ppl_r = math.exp(nll_ref / total)
    ppl_c = math.exp(nll_cand / total)
    return Quality(
        reference=str(reference.path),
        candidate=str(cand),
        candidate_type=type_label(info),
        corpus=reference.corpus,
        n_ctx=reference.n_ctx,
        chunks=len(reference.chunks),
        tokens=total,
        kld_mean=float(kld.mean()),
        kld_stderr=float(kld.std(ddof=1) / math.sqrt(len(kld))) if len(kld) > 1 else 0.0,
        kld_median=float(np.median(kld)),
        kld_p99=float(np.percentile(kld, 99)),
        kld_max=float(kld.max()),
        ppl_reference=ppl_r,
        ppl_candidate=ppl_c,
        ppl_ratio=ppl_c / ppl_r,
        top1_agreement=agree / total,
        near_tie_share=ties / total,
        top1_agreement_decided=agree_decided / (total - ties) if total > ties else 1.0,
        reference_size=reference.info.file_size,
        candidate_size=info.file_size,
        reference_bpw=reference.info.bits_per_weight,
        candidate_bpw=info.bits_per_weight,
        seconds=time.perf_counter() - t0,
    )


def compare_many(
    ref_path: str | os.PathLike[str],
    candidates: Iterable[str | os.PathLike[str]],
    *,
    corpus: str | os.PathLike[str] | None = None,
    n_ctx: int = DEFAULT_CTX,
    n_chunks: int = DEFAULT_CHUNKS,
    threads: int | None = None,
) -> list[Quality]:
    with reference_run(ref_path, corpus=corpus, n_ctx=n_ctx, n_chunks=n_chunks, threads=threads) as ref:
        return [compare(ref, c, threads=threads) for c in candidates]


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def format_table(results: list[Quality]) -> str:
    """Markdown table, one row per candidate (what the README carries)."""
    if not results:
        return ""
    q0 = results[0]
    head = (
        f"reference: {Path(q0.reference).name} ({_mib(q0.reference_size)}, {q0.reference_bpw:.2f} bpw, "
        f"PPL {q0.ppl_reference:.4f})\n"
        f"corpus: {q0.corpus}\nscored: {q0.tokens} tokens ({q0.chunks} chunks of {q0.n_ctx})\n\n"
    )
    lines = [
        "| type | size | bpw | KLD mean | KLD p99 | KLD max | PPL | PPL ratio | top-1 agree | top-1, no near-tie |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for q in results:
        lines.append(
            f"| {q.candidate_type} | {_mib(q.candidate_size)} | {q.candidate_bpw:.2f} | "
            f"{q.kld_mean:.6f} ± {q.kld_stderr:.6f} | {q.kld_p99:.5f} | {q.kld_max:.4f} | {q.ppl_candidate:.4f} | "
            f"{q.ppl_ratio:.4f} | {100 * q.top1_agreement:.2f} % | {100 * q.top1_agreement_decided:.2f} % |"
        )
    tie = f"\nnear-ties (reference top-2 margin < {NEAR_TIE_NATS} nats): {100 * q0.near_tie_share:.2f} % of positions\n"
    return head + "\n".join(lines) + "\n" + tie


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m quantize.report",
        description="KL divergence, perplexity and top-1 agreement of quantized GGUFs against a reference GGUF.",
    )
    ap.add_argument("reference", help="reference GGUF (the f16 export)")
    ap.add_argument("candidates", nargs="+", help="candidate GGUF(s) to measure")
    ap.add_argument("--corpus", help="held-out code: file or directory (default: Python stdlib modules)")
    ap.add_argument("--ctx", type=int, default=DEFAULT_CTX, help=f"chunk size in tokens (default {DEFAULT_CTX})")
    ap.add_argument("--chunks", type=int, default=DEFAULT_CHUNKS, help=f"number of chunks (default {DEFAULT_CHUNKS})")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", dest="json_out", help="write the figures as JSON to this file")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr, format="%(message)s")

    def body() -> None:
        results = compare_many(
            args.reference, args.candidates, corpus=args.corpus, n_ctx=args.ctx, n_chunks=args.chunks, threads=args.threads
        )
        print(format_table(results), end="")
        if args.json_out:
            with atomic_output(Path(args.json_out), QuantizeError) as tmp:
                tmp.write_text(json.dumps([asdict(q) for q in results], indent=2) + "\n")

    return run_tool(ap.prog, body, (QuantizeError,))


if __name__ == "__main__":
    sys.exit(main())
