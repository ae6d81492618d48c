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
and where it came from, or a ``ModelError`` whose message says, in one line, what was expected and what was
found (the server shows it as an error status; the CLI prints it). While a file downloads, ``progress`` gets
the percentage and "12.5 of 36.9 MB, 3.1 MB/s"; a download that a killed process left half done is resumed
(``_resume_dead_partial``); a fresh download is checked against the SHA-256 the Hub sent (its ETag) before
llama.cpp reads it. Nothing is downloaded at import time; the tests download from a local stand-in for the
Hub (tests/fixtures/hub_server.py, ``HF_ENDPOINT``), never from huggingface.co.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from codellama_core.gguf_check import GGUFCheckError, GGUFSummary, check_gguf

from .errors import ServerError

log = logging.getLogger(__name__)

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


def demo_path() -> Path | None:
    """The shipped demo GGUF, or None when the package lost it."""
    found = sorted(DEMO_DIR.glob("*.gguf")) if DEMO_DIR.is_dir() else []
    return found[0] if found else None


def resolve(spec: str, progress: Progress | None = None) -> ResolvedModel:
    spec = spec.strip()
    if not spec:
        raise ModelError("expected a model (a GGUF path, 'demo' or [hf:]REPO:FILE), got an empty string")
    if spec == "demo":
        demo = demo_path()
        if demo is None:
            raise ModelError(f"expected the demo model in {DEMO_DIR}/*.gguf, got no such file (reinstall the package)")
        return ResolvedModel(demo, "demo", "the shipped demo model", _checked(demo))
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
    """The file from the Hugging Face cache, downloaded first when it is not there (huggingface_hub does the HTTP:
    HEAD for the metadata, GET from the CDN, retries, Range requests to resume a connection that broke, a file lock
    so that two servers asking at once download once). A fresh download is checked against the SHA-256 that the Hub
    sent as its ETag before anything reads it; a mismatch deletes it (the next start downloads again)."""
    import httpx
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from tqdm.auto import tqdm

    # huggingface_hub drives a tqdm; forward its progress to $/progress and the status (tqdm has no type information)
    class _Report(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = False
            kwargs["file"] = _NullFile()
            super().__init__(*args, **kwargs)
            self._last = -1
            self._t0, self._n0 = time.monotonic(), self.n  # a resumed download starts at n > 0

        def update(self, n: float | None = 1) -> bool | None:
            out: bool | None = super().update(n)
            if progress and self.total:
                pct = int(100 * self.n / self.total)
                if pct != self._last:
                    self._last = pct
                    progress(
                        f"downloading {filename}: {_download_text(self.n, self.total, self.n - self._n0, time.monotonic() - self._t0)}",
                        pct,
                    )
            return out

    if progress:
        progress(f"fetching {repo}:{filename}", None)
    cached = try_to_load_from_cache(repo, filename)
    verified = False
    if not isinstance(cached, str) and not constants.HF_HUB_OFFLINE:
        verified = _resume_dead_partial(repo, filename, _Report, progress)
    try:
        path = Path(hf_hub_download(repo, filename, tqdm_class=_Report))
    except (OSError, httpx.HTTPError, ValueError) as exc:  # huggingface_hub's errors are OSErrors; a proxy's, httpx's
        raise ModelError(_hub_error(repo, filename, exc, constants.HF_HUB_OFFLINE, constants.ENDPOINT)) from None
    if not (isinstance(cached, str) and Path(cached) == path):
        if not verified:
            _verify_sha256(repo, filename, path, progress)
        _remove_dead_partials(path)
    return path


def _resume_dead_partial(repo: str, filename: str, tqdm_class: type[Any], progress: Progress | None) -> bool:
    """Finish the partial download a killed process left (an editor closed mid-download), with a Range request.

    huggingface_hub 1.x writes each download to ``blobs/<etag>.<random>.incomplete`` and starts every process's
    download from zero (huggingface_hub PR 4228). When such a file of this very blob is there and no live process
    holds the blob's lock (the lock is huggingface_hub's own, so a download in progress in another editor is waited
    for, not raced), its bytes are kept: the rest is fetched with huggingface_hub's ``http_get`` (``Range:
    bytes=N-``), checked against the SHA-256 the Hub announced, and moved into place as the blob, where
    ``hf_hub_download`` then finds it. True when it did so (and checked the hash). Anything that goes wrong here
    leaves the normal download to run."""
    import httpx
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get, repo_folder_name
    from huggingface_hub.utils._fixes import WeakFileLock  # huggingface_hub.utils re-exports both, untyped
    from huggingface_hub.utils._headers import build_hf_headers

    folder = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model")
    if not any((folder / "blobs").glob("*.incomplete")):
        return False  # the usual case: nothing to resume, no extra request
    try:
        meta = get_hf_file_metadata(hf_hub_url(repo, filename))
        etag, size = meta.etag, meta.size
        if not etag or not size or not re.fullmatch(r"[0-9a-f]{64}", etag):
            return False
        blob = folder / "blobs" / etag
        lock = Path(constants.HF_HUB_CACHE) / ".locks" / folder.name / f"{etag}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with WeakFileLock(str(lock)):
            partials = sorted(blob.parent.glob(f"{etag}.*.incomplete"), key=lambda q: q.stat().st_size, reverse=True)
            if blob.exists() or not partials or not 0 < partials[0].stat().st_size <= size:
                return False
            partial, have = partials[0], partials[0].stat().st_size
            log.info("%s:%s: resuming a partial download at %d of %d bytes", repo, filename, have, size)
            headers = build_hf_headers()
            if urlparse(meta.location).hostname != urlparse(constants.ENDPOINT).hostname:
                headers.pop("authorization", None)  # a CDN: the token stays with the Hub (as huggingface_hub does)
            with partial.open("ab") as f:
                http_get(meta.location, f, resume_size=have, headers=headers, expected_size=size, tqdm_class=tqdm_class)
            _verify_sha256(repo, filename, partial, progress, expected=etag)
            os.replace(partial, blob)
            return True
    except (OSError, httpx.HTTPError, ValueError) as exc:
        log.warning("%s:%s: could not resume the partial download (%s); downloading it whole", repo, filename, exc)
        return False


def _remove_dead_partials(path: Path) -> None:
    """huggingface_hub downloads into ``blobs/<etag>.<random>.incomplete`` and deletes it on failure, but a process
    that was killed (an editor closed mid-download) leaves it behind, possibly gigabytes. Once the blob is in place
    nobody writes another partial file of it (a later download finds the blob under the same lock and stops), so
    what is left belongs to dead processes."""
    blob = path.resolve()
    for partial in blob.parent.glob(f"{blob.name}.*.incomplete"):
        try:
            partial.unlink()
            log.info("removed %s, the partial download of a process that ended", partial.name)
        except OSError:
            pass


def _download_text(done: float, total: float, new: float, seconds: float) -> str:
    """``12.5 of 36.9 MB, 3.1 MB/s``: what the editors show beside the percentage."""
    speed = f", {new / seconds / 1e6:.1f} MB/s" if seconds > 0.2 and new > 0 else ""
    return f"{done / 1e6:.1f} of {total / 1e6:.1f} MB{speed}"


def _verify_sha256(repo: str, filename: str, path: Path, progress: Progress | None, expected: str | None = None) -> None:
    """A GGUF on the Hub is an LFS file: its cache blob is named by the SHA-256 that the Hub sent as the ETag.
    huggingface_hub checks only the size of a plain HTTP download, so a proxy or a disk that changed bytes would
    reach llama.cpp unnoticed; hashing once, right after the download, catches it."""
    blob = path.resolve()
    expected = expected or blob.name
    if not re.fullmatch(r"[0-9a-f]{64}", expected):  # not an LFS blob (a git file): no SHA-256 to compare with
        return
    if progress:
        progress(f"checking {filename} (SHA-256)", None)
    digest = hashlib.sha256()
    with blob.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    got = digest.hexdigest()
    if got != expected:
        for p in (path, blob):  # the snapshot's link, then the blob: the next start downloads again
            try:
                p.unlink()
            except OSError:
                pass
        raise ModelError(
            f"expected {repo}:{filename} to have the SHA-256 the Hub announced ({expected[:12]}...), got {got[:12]}...: "
            "the download was corrupted on the way and was deleted; try again"
        )


def _hub_error(repo: str, filename: str, exc: Exception, offline: bool, endpoint: str) -> str:
    """One line for the user from what huggingface_hub raised: what was expected, what came back, what to do."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    def status(e: BaseException | None) -> str:
        response = getattr(e, "response", None)
        return f"HTTP {response.status_code}" if response is not None else type(e).__name__

    if isinstance(exc, GatedRepoError):
        return (
            f"expected access to the gated repository {repo}, got {status(exc)}: accept its terms on "
            f"https://huggingface.co/{repo} and set HF_TOKEN (or run `hf auth login`)"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return f"expected a Hugging Face repository {repo}, got {status(exc)} (no such repository; a private one needs HF_TOKEN)"
    if isinstance(exc, RemoteEntryNotFoundError):
        return f"expected a file {filename} in the Hugging Face repository {repo}, got {status(exc)} (no such file)"
    if isinstance(exc, RevisionNotFoundError):
        return f"expected the main revision of {repo}, got {status(exc)}"
    if isinstance(exc, LocalEntryNotFoundError):
        cause = exc.__cause__
        if offline or isinstance(cause, OfflineModeIsEnabled):
            return (
                f"expected {repo}:{filename} in the Hugging Face cache (HF_HUB_OFFLINE is set), got none: download it once online"
            )
        if isinstance(cause, HfHubHTTPError):
            why = f"{status(cause)} from {endpoint} after retries (the Hub is down?)"
        else:
            why = f"no answer from {endpoint} ({type(cause).__name__ if cause else 'no network'})"
        return f"expected to download {repo}:{filename} or find it in the Hugging Face cache, got {why} and no cached copy"
    if isinstance(exc, HfHubHTTPError):
        return f"expected to download {repo}:{filename}, got {status(exc)}"
    if isinstance(exc, OSError):
        return f"expected to download {repo}:{filename}, got: {' '.join(str(exc).split())[:300]}"
    return f"expected to download {repo}:{filename}, got {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


class _NullFile:
    def write(self, _s: str) -> int:
        return 0

    def flush(self) -> None:
        pass
