"""The model pickers' data: ``lsp_server.modelinfo`` and the ``codellama/models`` request.

In: GGUFs the tests build (the shipped demo, a tiny model without FIM tokens, the 16k Code-Llama-shaped one),
a Hugging Face cache laid out as huggingface_hub lays it out, a broken file, and a memory size. Out: pass/fail of

- the KV cache and memory arithmetic (7B f16 at 16k is 8 GiB of KV cache, q8_0 17/32 of it, 34B's grouped-query
  attention a quarter of a multi-head model's per layer), the known Code Llama files (sizes from parameters
  and bits per weight: 7B Q4_K_M about 4.1 GB; 34B not trained for infilling) and whether they fit;
- a GGUF's header read into size, quantization, trained context, parameters and FIM found or not;
- the server's ``codellama/models`` answer over stdio: the demo, the HF cache's GGUFs as ``REPO:FILE``, a
  client's folder (with a file that is not a GGUF reported, not fatal), the known files, sized for the ``nCtx``
  asked; bad params answered with InvalidParams.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lsp_server import modelinfo, models
from tests.fixtures.checkpoints import checkpoint_factory, fixture_tokenizer  # noqa: F401
from tests.fixtures.hub_server import hub_gguf  # noqa: F401
from tests.fixtures.lsp_models import lsp_no_fim_gguf  # noqa: F401
from tests.fixtures.raw_lsp import RawServer

GiB = 2**30


def test_kv_cache_arithmetic() -> None:
    assert modelinfo.kv_cache_bytes(32, 16384, 32, 128, "f16") == 8 * GiB  # Code Llama 7B at its trained length
    assert modelinfo.kv_cache_bytes(32, 16384, 32, 128, "q8_0") == 8 * GiB * 17 // 32
    assert modelinfo.kv_cache_bytes(48, 4096, 8, 128, "f16") == 768 * 2**20  # 34B: 8 KV heads
    with pytest.raises(ValueError, match="expected a KV type in f16, q8_0, f32, got 'q4_0'"):
        modelinfo.kv_cache_bytes(1, 1, 1, 1, "q4_0")


def test_known_code_llama_files() -> None:
    known = modelinfo.known_models(4096, "f16", memory=16 * GiB)
    by_spec = {k.spec: k for k in known}
    assert len(known) == 9 and {k.size for k in known} == {"7B", "13B", "34B"}
    q4 = by_spec["TheBloke/CodeLlama-7B-GGUF:codellama-7b.Q4_K_M.gguf"]
    assert 4.0e9 < q4.download_bytes < 4.2e9  # TheBloke's file: 4.08 GB
    assert q4.memory_bytes == modelinfo.memory_needed(q4.download_bytes, 2 * GiB, 4096) and q4.fits
    assert q4.fim and q4.n_ctx_train == 16384 and not q4.cached
    assert not any(k.fim for k in known if k.size == "34B"), "34B was not trained to fill in the middle"
    assert not by_spec["TheBloke/CodeLlama-34B-GGUF:codellama-34b.Q8_0.gguf"].fits
    sizes = [by_spec[f"TheBloke/CodeLlama-13B-GGUF:codellama-13b.{q}.gguf"].download_bytes for q in ("Q4_K_M", "Q5_K_M", "Q8_0")]
    assert sizes == sorted(sizes)
    # a longer context costs KV memory: 7B at 16k needs 6 GiB more than at 4k
    long = {k.spec: k for k in modelinfo.known_models(16384, "f16", memory=None)}
    assert long[q4.spec].memory_bytes - q4.memory_bytes == 6 * GiB + modelinfo.COMPUTE_BYTES_PER_CTX * 12288
    assert long[q4.spec].fits is None


def test_describe_reads_the_header(hub_gguf: Path, lsp_no_fim_gguf: Path) -> None:
    demo = models.demo_path()
    assert demo is not None
    d = modelinfo.describe(demo, "demo", "demo", 4096, "f16", memory=64 * GiB)
    assert (d.quantization, d.n_ctx_train, d.fim, d.fim_family, d.fits, d.error) == ("F16", 4096, True, "codellama", True, None)
    assert d.size_bytes == demo.stat().st_size and 4_000_000 < (d.parameters or 0) < 4_400_000  # 4.2 M
    long = modelinfo.describe(hub_gguf, "x", "folder", 65536, "q8_0", memory=1)
    assert long.n_ctx_train == 16384 and long.fim and long.fits is False
    # sized at the trained length even when a longer context is asked (the server caps it there)
    assert long.memory_bytes == modelinfo.memory_needed(long.size_bytes, modelinfo.kv_cache_bytes(2, 16384, 2, 64, "q8_0"), 16384)
    nofim = modelinfo.describe(lsp_no_fim_gguf, "n", "folder", 4096, "f16", memory=None)
    assert nofim.fim is False and nofim.fim_family is None and nofim.fits is None


def test_the_models_request(hub_gguf: Path, lsp_no_fim_gguf: Path, tmp_path: Path) -> None:
    # a Hugging Face cache as huggingface_hub writes it: blobs/<sha256>, snapshots/<commit>/<file> -> the blob
    repo_dir = tmp_path / "hf" / "hub" / "models--codellama--CodeLlama-16k-GGUF"
    (repo_dir / "blobs").mkdir(parents=True)
    blob = repo_dir / "blobs" / ("ab" * 32)
    blob.symlink_to(hub_gguf)
    snap = repo_dir / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (snap / "codellama-16k.f16.gguf").symlink_to(os.path.relpath(blob, snap))
    folder = tmp_path / "models"
    (folder / "nofim").mkdir(parents=True)
    (folder / "nofim" / "tiny-nofim.gguf").symlink_to(lsp_no_fim_gguf)
    (folder / "broken.gguf").write_bytes(b"GGUF" + b"\0" * 20)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with RawServer(env=env) as s:
        s.initialize("demo")
        reply = s.request("codellama/models", {"folders": [str(folder)], "nCtx": 16384})
        bad = s.request("codellama/models", {"folders": "not a list"})
    assert bad["error"]["code"] == -32602, bad
    m = reply["result"]
    assert m["nCtx"] == 16384 and m["kvType"] == "f16" and m["memoryBytes"] > 0
    local = {e["spec"]: e for e in m["local"]}
    assert local["demo"]["source"] == "demo" and local["demo"]["fim"] is True
    hub = local["codellama/CodeLlama-16k-GGUF:codellama-16k.f16.gguf"]
    assert hub["source"] == "huggingface" and hub["nCtxTrain"] == 16384 and hub["quantization"] == "F16"
    nofim = local[str(folder / "nofim" / "tiny-nofim.gguf")]
    assert nofim["fim"] is False and "error" not in nofim
    broken = local[str(folder / "broken.gguf")]
    assert broken["error"] and broken["fim"] is False
    assert len(m["known"]) == 9 and all(k["nCtxTrain"] == 16384 for k in m["known"])
    assert {k["spec"] for k in m["known"] if not k["fim"]} == {
        f"TheBloke/CodeLlama-34B-GGUF:codellama-34b.{q}.gguf" for q in ("Q4_K_M", "Q5_K_M", "Q8_0")
    }
