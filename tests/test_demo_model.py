"""The shipped demo model (``lsp_server/models/demo``): what the README's main command runs.

In: the files in the package (GGUF, manifest.json, tokenizer.model). Out: pass/fail on
- the manifest describing exactly the file that ships (SHA-256, size within the 30 MB budget);
- the Code Llama metadata llama.cpp needs (rope theta 1e6, context, FIM/EOT ids from the tokenizer, typed CONTROL);
- ``make demo``'s command working offline and printing a completion;
- every weight row being a multiple of 256, so the quantizer writes real K-quants (no legacy fallback).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import pytest

from model_train.tokenizer import fim_ids
from quantize.quantize import quantize_file
from tests.fixtures.gguf_fields import field

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "lsp_server" / "models" / "demo"


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((DEMO / "manifest.json").read_text())


@pytest.fixture(scope="module")
def reader(manifest) -> gguf.GGUFReader:
    return gguf.GGUFReader(DEMO / manifest["gguf"])


def test_manifest_describes_the_shipped_file(manifest):
    path = DEMO / manifest["gguf"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == manifest["gguf_sha256"]
    assert path.stat().st_size <= 30 * 2**20
    assert manifest["training_command"].startswith("python -m model_train.train --config demo")
    assert manifest["seed"] == 0
    scores = manifest["heldout_scores"]
    assert scores["cases"] >= 500
    # The baselines the README compares against are recorded beside the model's scores.
    em = scores["exact_match"]
    assert em["fim_spm"] > max(em["empty"], em["previous_line"])


def test_code_llama_metadata(reader, manifest):
    assert field(reader, "llama.rope.freq_base") == pytest.approx(1e6)
    assert field(reader, "llama.context_length") == manifest["context_length"]
    ids = fim_ids(DEMO / "tokenizer.model")
    assert field(reader, "tokenizer.ggml.fim_pre_token_id") == ids["pre"]
    assert field(reader, "tokenizer.ggml.fim_suf_token_id") == ids["suf"]
    assert field(reader, "tokenizer.ggml.fim_mid_token_id") == ids["mid"]
    assert field(reader, "tokenizer.ggml.eot_token_id") == ids["eot"]
    types = field(reader, "tokenizer.ggml.token_type")
    assert all(types[i] == gguf.TokenType.CONTROL for i in ids.values())


def test_weight_rows_allow_k_quants(reader, tmp_path):
    row_len = {t.name: int(t.shape[0]) for t in reader.tensors if len(t.shape) == 2}  # GGUF shape: ne[0] first
    assert row_len and all(n % 256 == 0 for n in row_len.values()), row_len
    out = quantize_file(DEMO / "codellama-demo.gguf", tmp_path / "demo.Q4_K_M.gguf", "Q4_K_M").path
    kinds = {t.name: t.tensor_type.name for t in gguf.GGUFReader(out).tensors if len(t.shape) == 2}
    assert set(kinds.values()) == {"Q4_K", "Q6_K"}, kinds  # llama.cpp's real Q4_K_M mix, no fallback
    assert kinds["output.weight"] == "Q6_K"


def test_readme_main_command_runs_offline():
    """`make demo` runs exactly this (after installing the package)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "lsp_server", "complete", "examples/demo.py", "--line", "6", "--character", "0",
           "--model", "demo"]  # fmt: skip
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip(), "expected a completion on stdout"
