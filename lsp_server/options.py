"""The command line's shared options, read once: ``codellama-lsp`` (serve, ``complete``) and ``codellama-lsp eval``.

In: an ``argparse`` parser to fill, or the parsed ``Namespace``. Out: the engine's options, the remote engine's options,
the settings given on the command line (wire names, which the client's settings override) and the logging set-up.
``cli`` and ``eval`` both import this module; neither imports the other's private helpers.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .config import ENGINES
from .engines.llama_cpp import KV_TYPES, EngineOptions
from .engines.remote import RemoteOptions


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="demo", help="GGUF path, 'demo' (shipped) or REPO:FILE (Hugging Face)")
    p.add_argument("--n-ctx", type=int, default=None, help="context size (default: the model's, at most 4096)")
    p.add_argument("--kv-type", choices=sorted(KV_TYPES), default="f16", help="KV cache type (q8_0 halves its memory)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for llama.cpp (default: the physical cores)")
    p.add_argument(
        "--prompt-lookup",
        type=int,
        default=8,
        metavar="N",
        help="greedy decoding drafts up to N tokens from the prompt and verifies them in one batch (0: off)",
    )
    p.add_argument(
        "--kept-prompts-mib",
        type=int,
        default=None,
        metavar="MIB",
        help="host memory for the evaluated prompts of recent places (default: 8 full contexts, at most 1/8 of RAM; 0: off)",
    )
    p.add_argument(
        "--reuse-min",
        type=int,
        default=64,
        metavar="N",
        help="shortest run of moved prompt tokens whose KV cache is shifted instead of evaluated again (0: prefix only)",
    )
    p.add_argument(
        "--reuse-gap",
        type=int,
        default=512,
        metavar="N",
        help="most new prompt tokens evaluated between two reused runs, the run after them moved (0: off)",
    )
    p.add_argument("--n-gpu-layers", type=int, default=0, help="layers to offload (CUDA/Metal builds)")
    p.add_argument(
        "--cpu-repack",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="llama.cpp's repacked CPU weights (default: on unless the CPU has AMX, where some Q4_1 files crash)",
    )
    r = p.add_argument_group("remote engines (a model on a server; see docs/deployment.md)")
    r.add_argument("--engine", choices=ENGINES, default=None, help="where the model runs (default: llama.cpp, in this process)")
    r.add_argument("--url", default=None, help="the server's base URL, e.g. https://gpu-box:8080 (no /v1)")
    r.add_argument("--api-key-env", default=None, help="environment variable holding the API key (default CODELLAMA_API_KEY)")
    r.add_argument("--request-timeout", type=float, default=None, help="seconds to connect / get an answer (default 10)")
    r.add_argument("--no-tls-verify", action="store_true", help="do not verify https certificates (test servers only)")
    r.add_argument("--remote-model", default=None, help="model name for OpenAI-compatible servers (default: the first)")
    r.add_argument(
        "--slot", type=int, default=None, help="llama-server: always use slot N (default: the server picks by prompt similarity)"
    )
    r.add_argument(
        "--cache-reuse",
        type=int,
        default=64,
        metavar="N",
        help="llama-server: reuse runs of at least N cached tokens that moved in the prompt (KV shifting; 0: the server's setting)",
    )
    r.add_argument(
        "--prompt-format",
        choices=["auto", "tokens", "text"],
        default="auto",
        help="OpenAI servers: prompt as token ids, as text, or ids falling back to text (default)",
    )
    p.add_argument("--log-file", type=Path, default=None, help="write logs here instead of stderr")
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v: info, -vv: debug (and llama.cpp logs)")


def setup_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING - 10 * min(args.verbose, 2)
    handler: logging.Handler = logging.FileHandler(args.log_file) if args.log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if args.verbose < 2:
        logging.getLogger("pygls").setLevel(max(level, logging.WARNING))


def engine_options(args: argparse.Namespace) -> EngineOptions:
    return EngineOptions(
        n_ctx=args.n_ctx,
        kv_type=args.kv_type,
        threads=args.threads,
        n_gpu_layers=args.n_gpu_layers,
        cpu_repack=args.cpu_repack,
        prompt_lookup=args.prompt_lookup,
        kept_prompts_mib=args.kept_prompts_mib,
        reuse_min=args.reuse_min,
        reuse_gap=args.reuse_gap,
    )


def settings_from_args(args: argparse.Namespace) -> dict[str, object]:
    """The settings given on the command line (wire names): defaults that the client's settings override."""
    raw: dict[str, object] = {"model": args.model}
    given = {"engine": args.engine, "url": args.url, "apiKeyEnv": args.api_key_env, "remoteModel": args.remote_model}
    raw.update({k: v for k, v in given.items() if v is not None})
    if args.request_timeout is not None:
        raw["requestTimeoutMs"] = int(args.request_timeout * 1000)
    if args.no_tls_verify:
        raw["tlsVerify"] = False
    return raw


def remote_options(args: argparse.Namespace) -> RemoteOptions:
    if args.cache_reuse < 0:
        raise SystemExit(f"--cache-reuse: expected a number of tokens >= 0, got {args.cache_reuse}")
    return RemoteOptions(url="", slot=args.slot, prompt_format=args.prompt_format, cache_reuse=args.cache_reuse)
