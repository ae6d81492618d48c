"""``codellama-lsp``: start the language server, or print one completion.

In: command-line arguments. Out: a server on stdio (the default) or TCP, or, for
``codellama-lsp complete FILE --line L --character C``, one completion printed to stdout, produced by
exactly the pipeline the server uses (context -> FIM prompt -> llama.cpp -> post-processing).

Logs go to stderr or ``--log-file``; in a stdio server stdout carries JSON-RPC only. Errors the user can
fix (a missing model, a bad position) end the process with a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from .engines.llama_cpp import KV_TYPES, EngineOptions

log = logging.getLogger("lsp_server")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="demo", help="GGUF path, 'demo' (shipped) or REPO:FILE (Hugging Face)")
    p.add_argument("--n-ctx", type=int, default=None, help="context size (default: the model's, at most 4096)")
    p.add_argument("--kv-type", choices=sorted(KV_TYPES), default="f16", help="KV cache type (q8_0 halves its memory)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for llama.cpp (default: the physical cores)")
    p.add_argument("--prompt-lookup", type=int, default=8, metavar="N",
                   help="greedy decoding drafts up to N tokens from the prompt and verifies them in one batch (0: off)")
    p.add_argument("--n-gpu-layers", type=int, default=0, help="layers to offload (CUDA/Metal builds)")
    p.add_argument("--cpu-repack", action=argparse.BooleanOptionalAction, default=None,
                   help="llama.cpp's repacked CPU weights (default: on unless the CPU has AMX, where some Q4_1 files crash)")
    p.add_argument("--log-file", type=Path, default=None, help="write logs here instead of stderr")
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v: info, -vv: debug (and llama.cpp logs)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="codellama-lsp", description="Code Llama inline completion language server")
    _common(p)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--stdio", action="store_true", help="serve over stdin/stdout (default)")
    mode.add_argument("--tcp", action="store_true", help="serve over TCP")
    p.add_argument("--host", default="127.0.0.1", help="TCP host (loopback by default)")
    p.add_argument("--port", type=int, default=2087, help="TCP port")
    sub = p.add_subparsers(dest="command")
    c = sub.add_parser("complete", help="print one completion for FILE at a position")
    c.add_argument("file", type=Path)
    c.add_argument("--line", type=int, required=True, help="0-based line")
    c.add_argument("--character", type=int, required=True, help="0-based column in UTF-16 code units (as LSP)")
    c.add_argument("--max-tokens", type=int, default=None)
    c.add_argument("--fim-order", choices=["spm", "psm"], default=None)
    _common(c)
    return p


def _logging(args: argparse.Namespace) -> None:
    level = logging.WARNING - 10 * min(args.verbose, 2)
    handler: logging.Handler = logging.FileHandler(args.log_file) if args.log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if args.verbose < 2:
        logging.getLogger("pygls").setLevel(max(level, logging.WARNING))


def _engine_options(args: argparse.Namespace) -> EngineOptions:
    return EngineOptions(
        n_ctx=args.n_ctx, kv_type=args.kv_type, threads=args.threads, n_gpu_layers=args.n_gpu_layers, cpu_repack=args.cpu_repack,
        prompt_lookup=args.prompt_lookup,
    )


def complete_file(args: argparse.Namespace) -> int:
    from . import config, context, models, pipeline
    from .cache import TypeThroughCache
    from .engines import EngineError
    from .engines.llama_cpp import LlamaCppEngine

    raw: dict[str, object] = {"model": args.model}
    if args.max_tokens is not None:
        raw["maxTokens"] = args.max_tokens
    if args.fim_order is not None:
        raw["fimOrder"] = args.fim_order
    settings, problems = config.parse(raw)
    for p in problems:
        print(f"codellama-lsp: {p}", file=sys.stderr)
    try:
        source = args.file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"codellama-lsp: expected a readable UTF-8 file at {args.file}, got: {exc}", file=sys.stderr)
        return 2
    try:
        resolved = models.resolve(settings.model)
        engine = LlamaCppEngine(resolved.path, resolved.name, _engine_options(args))
    except (models.ModelError, EngineError) as exc:
        print(f"codellama-lsp: {exc}", file=sys.stderr)
        return 2
    try:
        text = context.lf_text(source)
        offset = context.offset_at(text, args.line, args.character)
        result = asyncio.run(pipeline.complete(engine, TypeThroughCache(), str(args.file), text, offset, settings))
    except (context.ContextError, EngineError) as exc:
        print(f"codellama-lsp: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.close()
    r = result.result
    if r is not None:
        log.info(
            "prompt %d tokens, generated %d, %.0f ms, stop=%s", r.prompt_tokens, r.generated_tokens, r.total_ms, r.stop
        )
    if result.texts:
        print(context.to_document_newlines(result.texts[0], context.document_newline(source)))
    else:
        print("codellama-lsp: the model returned no completion here", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _logging(args)
    if args.command == "complete":
        return complete_file(args)
    from .server import ServerOptions, create_server

    server = create_server(ServerOptions(model=args.model, engine=_engine_options(args)))
    if args.tcp:
        server.start_tcp(args.host, args.port)
    else:
        server.start_io()
    return 0


if __name__ == "__main__":
    sys.exit(main())
