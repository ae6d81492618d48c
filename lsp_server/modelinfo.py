"""What a model needs and offers, for the editors' model pickers (the ``codellama/models`` request).

In: GGUF files (the shipped demo, the Hugging Face cache, folders the client names), the context size and KV
cache type the server runs with, and this machine's memory. Out: ``ModelsReport`` - every GGUF found, read from
its header with gguf-py (never loaded): size, quantization, trained context, FIM tokens found or not (by the
same rules the engine uses, ``vocab.resolve_sentinels``), the memory it needs at the configured context and
whether that fits; and ``known_models()``, a short list of Code Llama GGUFs on the Hub (7B/13B/34B x Q4_K_M/Q5_K_M/Q8_0)
with their download size and memory need computed from parameter counts, bits per weight and the KV cache size.

Memory estimate (what llama.cpp allocates on a CPU): the weights (the file, memory-mapped) + the KV cache
(2 x layers x context x KV heads x head size x bytes per element: f16 2, q8_0 34/32) + a compute buffer
(``COMPUTE_BYTES_PER_CTX`` x context: llama.cpp reported 64 MiB at 16k for the 16k test model; larger models
need somewhat more, not measured here) + ``OVERHEAD_BYTES``. It is an estimate: the picker
warns when it exceeds the memory available now, it does not refuse.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codellama_core.gguf_check import GGUFCheckError, check_gguf

from .vocab import resolve_sentinels

KV_BYTES_PER_ELEMENT = {"f16": 2.0, "q8_0": 34 / 32, "f32": 4.0}  # q8_0: 32 int8 + one f16 scale per block
COMPUTE_BYTES_PER_CTX = 4096  # llama.cpp's compute buffer grows with the context: 64 MiB at 16k on the test model
OVERHEAD_BYTES = 256 << 20  # the process itself: Python, the server, tree-sitter, llama.cpp's own tables


def kv_cache_bytes(n_layer: int, n_ctx: int, n_head_kv: int, head_dim: int, kv_type: str = "f16") -> int:
    """Bytes of llama.cpp's KV cache: K and V, per layer, per position, ``n_head_kv * head_dim`` elements each."""
    if kv_type not in KV_BYTES_PER_ELEMENT:
        raise ValueError(f"expected a KV type in {', '.join(KV_BYTES_PER_ELEMENT)}, got {kv_type!r}")
    return int(2 * n_layer * n_ctx * n_head_kv * head_dim * KV_BYTES_PER_ELEMENT[kv_type])


def memory_needed(weights_bytes: int, kv_bytes: int, n_ctx: int) -> int:
    return weights_bytes + kv_bytes + COMPUTE_BYTES_PER_CTX * n_ctx + OVERHEAD_BYTES


def available_memory() -> int | None:
    """Bytes of memory available now (Linux ``MemAvailable``), else the physical memory, else None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


# ---- known Code Llama GGUFs on the Hub --------------------------------------------------------------------

# bits per weight of llama.cpp's mixes on Llama shapes, about: file size x 8 / parameters of TheBloke's Code Llama
# files (7B: Q4_K_M 4.08 GB, Q5_K_M 4.78 GB, Q8_0 7.16 GB as listed on the model card)
BITS_PER_WEIGHT = {"Q4_K_M": 4.85, "Q5_K_M": 5.69, "Q8_0": 8.5}


@dataclass(frozen=True)
class Shape:
    params: float  # parameters
    n_layer: int
    n_head_kv: int
    head_dim: int
    fim: bool  # trained with the infilling objective (Code Llama paper: 7B and 13B, not 34B)


# Code Llama (Rozière et al. 2023, table of model shapes): trained at 16,384 tokens, rope theta 1e6
CODE_LLAMA = {
    "7B": Shape(6.74e9, 32, 32, 128, True),
    "13B": Shape(13.02e9, 40, 40, 128, True),
    "34B": Shape(33.74e9, 48, 8, 128, False),  # grouped-query attention: 8 KV heads
}
CODE_LLAMA_CTX = 16384


@dataclass(frozen=True)
class KnownModel:
    spec: str  # what the ``model`` setting takes
    size: str  # "7B"
    quantization: str
    download_bytes: int
    memory_bytes: int  # at the configured context and KV type
    n_ctx_train: int
    fim: bool
    fits: bool | None  # None: this machine's memory is unknown
    cached: bool


def known_models(n_ctx: int, kv_type: str, memory: int | None, cached: frozenset[str] = frozenset()) -> list[KnownModel]:
    out = []
    for size, shape in CODE_LLAMA.items():
        for quant, bpw in BITS_PER_WEIGHT.items():
            spec = f"TheBloke/CodeLlama-{size}-GGUF:codellama-{size.lower()}.{quant}.gguf"
            download = int(shape.params * bpw / 8)
            ctx = min(n_ctx, CODE_LLAMA_CTX)
            need = memory_needed(download, kv_cache_bytes(shape.n_layer, ctx, shape.n_head_kv, shape.head_dim, kv_type), ctx)
            fits = None if memory is None else need <= memory
            out.append(KnownModel(spec, size, quant, download, need, CODE_LLAMA_CTX, shape.fim, fits, spec in cached))
    return out


# ---- GGUF files found on this machine ---------------------------------------------------------------------


@dataclass(frozen=True)
class LocalModel:
    spec: str
    path: str
    source: str  # "demo" | "huggingface" | "folder"
    size_bytes: int
    quantization: str | None  # "Q4_K_M", "F16", ... from general.file_type
    parameters: int | None
    n_ctx_train: int | None
    fim: bool
    fim_family: str | None  # "codellama" | "psm" (StarCoder, Qwen, DeepSeek, CodeGemma) | None
    memory_bytes: int | None
    fits: bool | None
    error: str | None = None  # the file is not a usable GGUF (gguf_check's one line)


def _file_type_name(value: int | None) -> str | None:
    if value is None:
        return None
    import gguf

    try:
        name = gguf.LlamaFileType(value).name  # MOSTLY_Q4_K_M
    except ValueError:
        return f"type {value}"
    return name.removeprefix("MOSTLY_").replace("ALL_", "")


def describe(path: Path, spec: str, source: str, n_ctx: int, kv_type: str, memory: int | None) -> LocalModel:
    """One GGUF read from its header (gguf-py, memory-mapped: no tensor data is read)."""
    import gguf

    try:
        summary = check_gguf(path)
    except GGUFCheckError as exc:
        size = path.stat().st_size if path.exists() else 0
        return LocalModel(spec, str(path), source, size, None, None, None, False, None, None, None, str(exc))
    reader = gguf.GGUFReader(path)

    def value(key: str) -> Any:
        f = reader.get_field(key)
        return None if f is None else f.contents()

    texts = value(gguf.Keys.Tokenizer.LIST) or []
    metadata = {k: int(v) for k in _SENTINEL_KEYS if isinstance(v := value(k), int)}
    sentinels = resolve_sentinels(texts, metadata, None, None)
    params = sum(int(t.n_elements) for t in reader.tensors)
    ctx = min(n_ctx, summary.n_ctx_train or n_ctx)
    head_dim = (summary.n_embd or 0) // max(1, summary.n_head or 1)
    kv = kv_cache_bytes(summary.n_layer, ctx, summary.n_head_kv or summary.n_head or 0, head_dim, kv_type)
    need = memory_needed(summary.file_size, kv, ctx)
    return LocalModel(
        spec=spec,
        path=str(path),
        source=source,
        size_bytes=summary.file_size,
        quantization=_file_type_name(value(gguf.Keys.General.FILE_TYPE)),
        parameters=params,
        n_ctx_train=summary.n_ctx_train,
        fim=sentinels.has_fim,
        fim_family=sentinels.style if sentinels.has_fim else None,
        memory_bytes=need,
        fits=None if memory is None else need <= memory,
    )


_SENTINEL_KEYS = (
    "tokenizer.ggml.fim_pre_token_id",
    "tokenizer.ggml.prefix_token_id",
    "tokenizer.ggml.fim_suf_token_id",
    "tokenizer.ggml.suffix_token_id",
    "tokenizer.ggml.fim_mid_token_id",
    "tokenizer.ggml.middle_token_id",
    "tokenizer.ggml.eot_token_id",
)


def hf_cache_ggufs() -> list[tuple[str, Path]]:
    """(``REPO:FILE``, path) of every GGUF in the Hugging Face cache (the newest snapshot of each repository)."""
    from huggingface_hub import constants

    root = Path(constants.HF_HUB_CACHE)
    found: list[tuple[str, Path]] = []
    for repo_dir in sorted(root.glob("models--*")) if root.is_dir() else []:
        repo = repo_dir.name.removeprefix("models--").replace("--", "/", 1)
        snapshots = sorted((repo_dir / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime, reverse=True)
        seen: set[str] = set()
        for snap in snapshots:
            for f in sorted(snap.rglob("*.gguf")):
                name = f.relative_to(snap).as_posix()
                if name not in seen and f.exists():  # a dangling link: the blob was deleted
                    seen.add(name)
                    found.append((f"{repo}:{name}", f))
    return found


def folder_ggufs(folders: list[str]) -> list[Path]:
    """GGUF files in ``folders`` and their direct subfolders (a models folder is rarely deeper)."""
    out: list[Path] = []
    for folder in folders:
        base = Path(folder).expanduser()
        if base.is_dir():
            out += sorted(p for p in [*base.glob("*.gguf"), *base.glob("*/*.gguf")] if p.is_file())
        elif base.is_file() and base.suffix == ".gguf":
            out.append(base)
    return out


@dataclass(frozen=True)
class ModelsReport:
    n_ctx: int
    kv_type: str
    memory_bytes: int | None
    local: list[LocalModel] = field(default_factory=list)
    known: list[KnownModel] = field(default_factory=list)


_SHARD = re.compile(r"-(\d{5})-of-\d{5}\.gguf$")  # a split GGUF: only its first shard is a model to pick


def report(n_ctx: int, kv_type: str, folders: list[str], demo: Path | None) -> ModelsReport:
    memory = available_memory()
    local: list[LocalModel] = []
    if demo is not None:
        local.append(describe(demo, "demo", "demo", n_ctx, kv_type, memory))
    cached = hf_cache_ggufs()
    for spec, path in cached:
        local.append(describe(path, spec, "huggingface", n_ctx, kv_type, memory))
    for path in folder_ggufs(folders):
        shard = _SHARD.search(path.name)
        if shard is None or shard[1] == "00001":
            local.append(describe(path, str(path), "folder", n_ctx, kv_type, memory))
    known = known_models(n_ctx, kv_type, memory, frozenset(spec for spec, _ in cached))
    return ModelsReport(n_ctx, kv_type, memory, local, known)
