"""Model specification -> a GGUF file on disk.

In: the ``model`` setting / ``--model`` argument, one of

- ``demo``: the tiny Code Llama shipped inside the package (``lsp_server/models/demo/*.gguf``);
- ``hf:REPO:FILE``, or ``REPO:FILE`` when it does not look like a local path: a GGUF file of a Hugging
  Face repository (``TheBloke/CodeLlama-7B-GGUF:codellama-7b.Q4_K_M.gguf``), fetched by ``huggingface_hub``
  into its usual cache, so a second start is offline. ``HF_HUB_OFFLINE=1`` is honoured: then only the
  cache is used. Path-like means: it exists, starts with ``/``, ``.`` or ``~``, has more than one
  ``/``, or its first component is an existing folder (``models/my-project:weights.gguf`` next to a
  ``models`` folder is a file, never a repository);
- anything else: a path to a GGUF file.

Out: the path of a file that passed ``gguf_check`` (a consistent, sane GGUF header), with its summary
and where it came from, or a ``ModelError`` whose message says what was expected and what was found
(the server shows it as an error status; the CLI prints it). Nothing is downloaded at import time or by
the tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codellama_core.gguf_check import GGUFCheckError, GGUFSummary, check_gguf

from .errors import ServerError

DEMO_DIR = Path(__file__).resolve().parent / "models" / "demo"
HF_PREFIX = "hf:"
_HF_SPEC = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+):(?P<file>[^:/\\]+\.gguf)$")

Progress = Callable[[str, int | None], None]  # (message, percent or None)


class ModelError(ServerError):
    """The model could not be found, fetched or recognised; the message is for the user."""


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    name: str  # what status messages show
    source: str  # "the shipped demo model", "a local file", "the Hugging Face Hub (REPO:FILE)"
    summary: GGUFSummary


def resolve(spec: str, progress: Progress | None = None) -> ResolvedModel:
    spec = spec.strip()
    if not spec:
        raise ModelError("expected a model (a GGUF path, 'demo' or [hf:]REPO:FILE), got an empty string")
    if spec == "demo":
        found = sorted(DEMO_DIR.glob("*.gguf")) if DEMO_DIR.is_dir() else []
        if not found:
            raise ModelError(f"expected the demo model in {DEMO_DIR}/*.gguf, got no such file (reinstall the package)")
        return ResolvedModel(found[0], "demo", "the shipped demo model", _checked(found[0]))
    hub = hub_spec(spec)
    if hub is not None:
        repo, filename = hub
        path = _download(repo, filename, progress)
        return ResolvedModel(path, f"{repo}:{filename}", f"the Hugging Face Hub ({repo}:{filename})", _checked(path))
    path = Path(spec).expanduser()
    return ResolvedModel(path, path.name, f"a local file ({path})", _checked(path, hint=_HF_SPEC.match(spec) is not None))


def hub_spec(spec: str) -> tuple[str, str] | None:
    """(repo, file) when ``spec`` names a Hugging Face file (see the module docstring), else None."""
    explicit = spec.startswith(HF_PREFIX)
    body = spec[len(HF_PREFIX) :] if explicit else spec
    m = _HF_SPEC.match(body)
    if m is None:
        if explicit:
            raise ModelError(f"expected hf:OWNER/REPO:FILE.gguf, got {spec!r}")
        return None
    if not explicit and _path_like(spec):
        return None
    return m["repo"], m["file"]


def _path_like(spec: str) -> bool:
    if spec.startswith(("/", ".", "~", "\\")) or spec.count("/") > 1 or "\\" in spec:
        return True
    path = Path(spec).expanduser()
    return path.exists() or Path(spec.split("/", 1)[0]).is_dir()


def _checked(path: Path, hint: bool = False) -> GGUFSummary:
    try:
        return check_gguf(path)
    except GGUFCheckError as exc:
        extra = " (for a Hugging Face file write hf:REPO:FILE)" if hint and not path.exists() else ""
        raise ModelError(f"{exc}{extra}") from None


def _download(repo: str, filename: str, progress: Progress | None) -> Path:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
    from tqdm.auto import tqdm

    # huggingface_hub drives a tqdm; forward its percentage to $/progress (tqdm has no type information)
    class _Report(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = False
            kwargs["file"] = _NullFile()
            super().__init__(*args, **kwargs)
            self._last = -1

        def update(self, n: float | None = 1) -> bool | None:
            out: bool | None = super().update(n)
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
        raise ModelError(f"expected {repo}:{filename} in the Hugging Face cache or downloadable, got neither{hint}") from None
    except (RepositoryNotFoundError, EntryNotFoundError) as exc:
        raise ModelError(f"expected {filename} in the Hugging Face repository {repo}, got: {type(exc).__name__}") from None
    except OSError as exc:
        raise ModelError(f"expected to download {repo}:{filename}, got {exc}") from None


class _NullFile:
    def write(self, _s: str) -> int:
        return 0

    def flush(self) -> None:
        pass
