"""Model specification -> a GGUF file on disk.

In: the ``model`` setting / ``--model`` argument, one of

- ``demo``: the tiny Code Llama shipped inside the package (``lsp_server/models/demo/*.gguf``);
- ``REPO:FILE``: a GGUF file of a Hugging Face repository (``TheBloke/CodeLlama-7B-GGUF:codellama-7b.Q4_K_M.gguf``),
  fetched by ``huggingface_hub`` into its usual cache, so a second start is offline. ``HF_HUB_OFFLINE=1``
  is honoured: then only the cache is used;
- anything else: a path to a GGUF file.

Out: the path of a file that at least starts like a GGUF file, or a ``ModelError`` whose message says
what was expected and what was found (the server shows it as an error status; the CLI prints it).
Nothing is downloaded at import time or by the tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEMO_DIR = Path(__file__).resolve().parent / "models" / "demo"
GGUF_MAGIC = b"GGUF"
_HF_SPEC = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+):(?P<file>[^:]+\.gguf)$")

Progress = Callable[[str, int | None], None]  # (message, percent or None)


class ModelError(Exception):
    """The model could not be found, fetched or recognised; the message is for the user."""


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    name: str  # what status messages show


def resolve(spec: str, progress: Progress | None = None) -> ResolvedModel:
    spec = spec.strip()
    if not spec:
        raise ModelError("expected a model (a GGUF path, 'demo' or REPO:FILE), got an empty string")
    if spec == "demo":
        found = sorted(DEMO_DIR.glob("*.gguf")) if DEMO_DIR.is_dir() else []
        if not found:
            raise ModelError(f"expected the demo model in {DEMO_DIR}/*.gguf, got no such file (reinstall the package)")
        return ResolvedModel(check_gguf(found[0]), "demo")
    path = Path(spec).expanduser()
    if not path.exists() and (m := _HF_SPEC.match(spec)):
        return ResolvedModel(check_gguf(_download(m["repo"], m["file"], progress)), spec)
    return ResolvedModel(check_gguf(path), path.name)


def check_gguf(path: Path) -> Path:
    """``path`` if it is a readable file starting with the GGUF magic; llama.cpp checks the rest."""
    if not path.is_file():
        raise ModelError(f"expected a GGUF model file at {path}, got {'a directory' if path.is_dir() else 'no such file'}")
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise ModelError(f"expected a readable GGUF file at {path}, got {exc.strerror}") from None
    if head[:4] != GGUF_MAGIC:
        raise ModelError(f"expected a GGUF file (starting with {GGUF_MAGIC!r}) at {path}, got {head[:4]!r}")
    return path


def _download(repo: str, filename: str, progress: Progress | None) -> Path:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
    from tqdm.auto import tqdm

    class _Report(tqdm):  # huggingface_hub drives a tqdm; forward its percentage to $/progress
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = False
            kwargs["file"] = _NullFile()
            super().__init__(*args, **kwargs)
            self._last = -1

        def update(self, n: float | None = 1) -> bool | None:
            out = super().update(n)
            if progress and self.total:
                pct = int(100 * self.n / self.total)
                if pct != self._last:
                    self._last = pct
                    progress(f"downloading {filename}", pct)
            return out

    if progress:
        progress(f"fetching {repo}:{filename}", None)
    try:
        return Path(hf_hub_download(repo, filename, tqdm_class=_Report))
    except LocalEntryNotFoundError:
        hint = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else " (no network?)"
        raise ModelError(
            f"expected {repo}:{filename} in the Hugging Face cache or downloadable, got neither{hint}"
        ) from None
    except (RepositoryNotFoundError, EntryNotFoundError) as exc:
        raise ModelError(f"expected {filename} in the Hugging Face repository {repo}, got: {type(exc).__name__}") from None
    except OSError as exc:
        raise ModelError(f"expected to download {repo}:{filename}, got {exc}") from None


class _NullFile:
    def write(self, _s: str) -> int:
        return 0

    def flush(self) -> None:
        pass
