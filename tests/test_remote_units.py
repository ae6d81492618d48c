"""Remote engines' pure parts: settings, command-line flags, URLs without credentials, error bodies, text prompts."""

from __future__ import annotations

import pytest

from lsp_server import config, fim
from lsp_server.cli import build_parser
from lsp_server.engines.openai import text_prompt
from lsp_server.engines.remote import _error_message, local_vocab, public_url
from lsp_server.models import resolve
from lsp_server.options import remote_options as _remote_options
from lsp_server.options import settings_from_args as _settings


def test_remote_settings_parse_and_bad_values_fall_back() -> None:
    s, problems = config.parse(
        {"engine": "openai", "url": "https://gpu-box:8000", "apiKeyEnv": "TEAM_KEY", "requestTimeoutMs": 2500,
         "tlsVerify": False, "remoteModel": "codellama/CodeLlama-34b-hf"}
    )  # fmt: skip
    assert problems == []
    assert (s.engine, s.url, s.api_key_env, s.request_timeout_ms, s.tls_verify, s.remote_model) == (
        "openai",
        "https://gpu-box:8000",
        "TEAM_KEY",
        2500,
        False,
        "codellama/CodeLlama-34b-hf",
    )
    s, problems = config.parse({"engine": "vllm", "url": "gpu-box:8000", "tlsVerify": "no"})
    assert (s.engine, s.url, s.tls_verify) == ("llama.cpp", "", True)
    assert any("engine one of 'llama.cpp', 'llama-server', 'openai', got 'vllm'" in p for p in problems)
    assert any("url to start with http:// or https://" in p for p in problems)
    assert any("setting tlsVerify: expected true or false" in p for p in problems)


def test_command_line_flags_become_settings() -> None:
    args = build_parser().parse_args(
        ["--engine", "llama-server", "--url", "http://10.0.0.5:8080", "--request-timeout", "2.5", "--no-tls-verify",
         "--api-key-env", "K", "--slot", "3", "--prompt-format", "text", "--model", "m.gguf"]
    )  # fmt: skip
    raw = _settings(args)
    assert raw == {"model": "m.gguf", "engine": "llama-server", "url": "http://10.0.0.5:8080", "apiKeyEnv": "K",
                   "requestTimeoutMs": 2500, "tlsVerify": False}  # fmt: skip
    s, problems = config.parse(raw)
    assert problems == [] and s.engine == "llama-server"
    opts = _remote_options(args)
    assert (opts.slot, opts.prompt_format) == (3, "text")
    assert _settings(build_parser().parse_args([])) == {"model": "demo"}


def test_public_url_drops_credentials() -> None:
    assert public_url("https://alice:s3cret@gpu-box:8443/") == "https://gpu-box:8443"
    assert public_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080"


@pytest.mark.parametrize(
    "body,expected",
    [
        ('{"error": {"code": 401, "message": "Invalid API Key", "type": "authentication_error"}}', "Invalid API Key"),
        ('{"error": "model not loaded"}', "model not loaded"),
        ('{"detail": "prompt: expected a string"}', "prompt: expected a string"),
        ("<html>Bad Gateway</html>", "<html>Bad Gateway</html>"),
    ],
)
def test_error_bodies(body: str, expected: str) -> None:
    assert _error_message(body) == expected


def test_text_prompt_spells_the_sentinels_and_keeps_the_text() -> None:
    vocab = local_vocab(resolve("demo").path)
    s = vocab.sentinels
    assert vocab.token_text(s.pre) == "▁<PRE>" and vocab.n_vocab == 2052
    ctx = fim.FimContext(prefix="def add(a, b):\n    ret", suffix="\n\nprint(add(1, 2))\n")
    spm = fim.prompt_tokens(ctx, vocab, fim.FimOrder.SPM)
    assert text_prompt(vocab, spm) == "▁<PRE>▁<SUF>\n\nprint(add(1, 2))\n▁<MID>def add(a, b):\n    ret"
    psm = fim.prompt_tokens(ctx, vocab, fim.FimOrder.PSM)
    assert text_prompt(vocab, psm) == "▁<PRE>def add(a, b):\n    ret▁<SUF>\n\nprint(add(1, 2))\n▁<MID>"


def test_a_remote_engine_needs_a_url() -> None:
    from lsp_server.backend import open_engine
    from lsp_server.engines import EngineError

    settings, _ = config.parse({"engine": "openai"})
    with pytest.raises(EngineError, match="expected a server URL for the engine 'openai'"):
        open_engine(settings, resolve("demo").path, "demo")
