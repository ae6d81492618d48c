"""``codellama-lsp``: start the language server, or print one completion.

In: command-line arguments. Out: a server on stdio (the default) or TCP, or, for
``codellama-lsp complete FILE --line L --character C``, one completion printed to stdout, produced by
exactly the pipeline the server uses (context -> FIM prompt -> llama.cpp -> post-processing), or, for
``codellama-lsp eval``, HumanEval infilling scores through that pipeline (``lsp_server.eval``).

Logs go to stderr or ``--log-file``; in a stdio server stdout carries JSON-RPC only. Errors the user can
fix (a missing model, a bad position, a port in use) end the process with one ``codellama-lsp: error: ...``
line and exit status 1, bad usage with status 2 (``codellama_core.tool``, docs/cli.md). A server exits with 0 after ``shutdown`` + ``exit``, 1 when the client left without
``shutdown``, 128 + the signal number on SIGINT/SIGTERM.

A TCP server needs a token from its client (``initializationOptions.token``): ``--token-file``, else
``$CODELLAMA_LSP_TOKEN``, else a random one printed on stderr at start.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import stat
import sys
from pathlib import Path

from codellama_core.tool import UsageError, run_tool

from . import eval as eval_mod
from .engines import GenerationResult
from .errors import ServerError
from .options import add_common, engine_options, remote_options, settings_from_args, setup_logging

log = logging.getLogger("lsp_server")
PROG = "codellama-lsp"
TOKEN_ENV = "CODELLAMA_LSP_TOKEN"
NO_BUDGET_MS = 600_000  # `complete` without --time-budget-ms: the largest budget the settings allow (10 minutes)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="codellama-lsp", description="Code Llama inline completion language server")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    add_common(p)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--stdio", action="store_true", help="serve over stdin/stdout (default)")
    mode.add_argument("--tcp", action="store_true", help="serve over TCP")
    p.add_argument("--host", default="127.0.0.1", help="TCP host (loopback by default)")
    p.add_argument("--port", type=int, default=2087, help="TCP port")
    p.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help=f"TCP: the token clients must send (default ${TOKEN_ENV}, else a random one printed at start)",
    )
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="a server the client's url setting may name besides --url's (repeatable; see docs/deployment.md)",
    )
    p.add_argument(
        "--allow-remote-settings",
        action="store_true",
        help="let the client's settings choose the server (url), the API key variable (apiKeyEnv) and tlsVerify",
    )
    p.add_argument("--load-timeout", type=float, default=300.0, help="seconds llama.cpp may take to load a model")
    sub = p.add_subparsers(dest="command")
    c = sub.add_parser("complete", help="print one completion for FILE at a position")
    c.add_argument("file", type=Path)
    c.add_argument("--line", type=int, required=True, help="0-based line")
    c.add_argument("--character", type=int, required=True, help="0-based column in UTF-16 code units (as LSP)")
    c.add_argument("--max-tokens", type=int, default=None)
    c.add_argument("--fim-order", choices=["spm", "psm"], default=None)
    c.add_argument(
        "--time-budget-ms",
        type=int,
        default=None,
        metavar="MS",
        help="give up generating after MS milliseconds, as an editor does (default: wait for the model)",
    )
    add_common(c)
    e = sub.add_parser("eval", help="HumanEval infilling through the completion pipeline (pip install 'codellama-lsp[eval]')")
    eval_mod.add_arguments(e)
    add_common(e)
    return p


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("codellama-lsp")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def complete_file(args: argparse.Namespace) -> None:
    """``codellama-lsp complete``: one completion on stdout; a ``ServerError`` for what the user can fix."""
    from . import config, context, pipeline
    from .backend import open_engine
    from .cache import TypeThroughCache
    from .models import resolve

    raw = settings_from_args(args)
    if args.max_tokens is not None:
        raw["maxTokens"] = args.max_tokens
    if args.fim_order is not None:
        raw["fimOrder"] = args.fim_order
    # The time budget is the editor's (an answer after the user typed on is worthless); a command the user
    # runs and waits for waits for the model, however busy the machine, unless it is given a budget.
    if args.time_budget_ms is not None and not 10 <= args.time_budget_ms <= NO_BUDGET_MS:
        raise UsageError(f"expected --time-budget-ms between 10 and {NO_BUDGET_MS}, got {args.time_budget_ms}")
    raw["timeBudgetMs"] = args.time_budget_ms if args.time_budget_ms is not None else NO_BUDGET_MS
    settings, problems = config.parse(raw)
    for p in problems:
        print(f"codellama-lsp: {p}", file=sys.stderr)
    try:
        source = args.file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ServerError(f"expected a readable UTF-8 file at {args.file}, got: {exc}") from None
    resolved = resolve(settings.model)
    engine = open_engine(settings, resolved.path, resolved.name, engine_options(args), remote_options(args))
    try:
        text = context.lf_text(source)
        offset = context.offset_at(text, args.line, args.character)
        result = asyncio.run(pipeline.complete(engine, TypeThroughCache(), str(args.file), text, offset, settings))
    finally:
        engine.close()
    r = result.result
    if r is not None:
        log.info("prompt %d tokens, generated %d, %.0f ms, stop=%s", r.prompt_tokens, r.generated_tokens, r.total_ms, r.stop)
    if result.texts:
        print(context.to_document_newlines(result.texts[0], context.document_newline(source)))
    if r is not None and r.stop == "time":
        print(f"codellama-lsp: {budget_cut(r, settings.time_budget_ms, bool(result.texts))}", file=sys.stderr)
    elif not result.texts:
        print("codellama-lsp: the model returned no completion here", file=sys.stderr)


MAX_TOKEN_BYTES = 4096  # a token is a few dozen characters; more is not a token file


def read_token_file(path: Path) -> str:
    """The token in ``path``: a regular file (never a FIFO, which would block start-up, nor a device such as
    ``/dev/zero``, which never ends), at most ``MAX_TOKEN_BYTES``; a warning when others may read it."""
    try:
        # O_NONBLOCK: opening a FIFO with no writer would otherwise wait forever before fstat could tell
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise ServerError(f"expected a readable token file at {path}, got: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ServerError(f"expected a regular token file at {path}, got {_file_kind(st.st_mode)}")
        if st.st_mode & 0o077:
            log.warning("the token file %s can be read by others (mode %o): chmod 600 %s", path, stat.S_IMODE(st.st_mode), path)
        data = f.read(MAX_TOKEN_BYTES + 1)
    if len(data) > MAX_TOKEN_BYTES:
        raise ServerError(f"expected a token of at most {MAX_TOKEN_BYTES} bytes in {path}, got a longer file")
    try:
        token = data.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise ServerError(f"expected a UTF-8 token in {path}, got: {exc}") from None
    if not token:
        raise ServerError(f"expected a token in {path}, got an empty file")
    return token


def _file_kind(mode: int) -> str:
    kinds = {stat.S_ISFIFO: "a FIFO", stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device",
             stat.S_ISDIR: "a directory", stat.S_ISSOCK: "a socket"}  # fmt: skip
    return next((name for test, name in kinds.items() if test(mode)), "not a regular file")


def budget_cut(r: GenerationResult, budget_ms: int, kept: bool) -> str:
    """One line on a completion the time budget cut: what was generated, in how long, and which setting did it."""
    what = "kept its complete lines" if kept else "no complete line was left to show"
    return (
        f"the time budget cut the completion: {r.generated_tokens} token(s) generated in {r.total_ms:.0f} ms "
        f"(--time-budget-ms {budget_ms}); {what}. Leave --time-budget-ms out to wait for the model."
    )


def _token(args: argparse.Namespace) -> tuple[str, bool]:
    """(the TCP token, whether it was generated here and so must be shown)."""
    if args.token_file is not None:
        return read_token_file(args.token_file), False
    if os.environ.get(TOKEN_ENV, "").strip():
        return os.environ[TOKEN_ENV].strip(), False
    return secrets.token_urlsafe(24), True


def serve(args: argparse.Namespace) -> int:
    from . import rpc
    from .server import ServerOptions, create_server

    if not args.load_timeout > 0:
        raise UsageError(f"expected --load-timeout > 0, got {args.load_timeout}")
    server = create_server(
        ServerOptions(
            model=args.model,
            engine=engine_options(args),
            load_timeout_s=args.load_timeout,
            settings=settings_from_args(args),
            remote=remote_options(args),
            allow_hosts=tuple(args.allow_host),
            allow_remote_settings=args.allow_remote_settings,
        )
    )
    if not args.tcp:
        return asyncio.run(rpc.serve_stdio(server, server.close))
    token, generated = _token(args)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "listening on %s: other machines can reach this server (only the token keeps them out, and the "
            "connection is not encrypted); use --host 127.0.0.1 and an SSH tunnel unless this is what you want",
            args.host,
        )

    def listening(addr: str) -> None:
        shown = f"; token: {token}" if generated else f" (token from {args.token_file or '$' + TOKEN_ENV})"
        print(f"codellama-lsp: listening on {addr}{shown}", file=sys.stderr, flush=True)

    return asyncio.run(rpc.serve_tcp(server, args.host, args.port, token, server.close, listening))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    if args.command == "complete":
        return run_tool(PROG, lambda: complete_file(args), (ServerError,))
    if args.command == "eval":
        return run_tool(PROG, lambda: eval_mod.run(args), (ServerError,))
    code = run_tool(PROG, lambda: serve(args), (ServerError,))
    from .server import busy_threads

    if busy_threads():
        # a llama.cpp load cannot be interrupted and must not hold the exit up (Ctrl-C, SIGTERM)
        logging.shutdown()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
