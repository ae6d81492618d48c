"""Hugging Face downloads for real: ``models.resolve("REPO:FILE")`` and the server, with huggingface_hub (the
library the server uses, unpatched) against a local stand-in for the Hub (tests/fixtures/hub_server.py) on
127.0.0.1, found through ``HF_ENDPOINT`` as a mirror would be.

In: a 37 MB Code-Llama-shaped random GGUF (``hub_gguf``) served as ``codellama/CodeLlama-16k-GGUF``, and the
stand-in's faults. Each resolve runs in a fresh Python process (huggingface_hub reads ``HF_ENDPOINT``,
``HF_HOME`` and ``HF_HUB_OFFLINE`` when it is imported, and a killed download needs a process to kill), with
its own empty Hugging Face cache. Out: pass/fail of

- a first download with progress (several percentages, rising to 100, "x of y MB, z MB/s"), the file identical
  to the served one, then the cache reused with the network gone (the stand-in stopped) and with
  ``HF_HUB_OFFLINE=1``: no request at all;
- a connection dropped mid-file: huggingface_hub asks again with ``Range: bytes=N-`` and the file is complete
  and identical; a download whose process is killed mid-way: huggingface_hub 1.x would start it over (its
  partial files are per process since huggingface_hub PR 4228), ``models.py`` resumes the dead process's
  partial file with ``Range: bytes=N-`` (its own bytes kept, the file identical), and leaves a live download's
  partial file alone (the second start waits on huggingface_hub's lock);
- 404 (no repository, no file), 401 (a gated repository; the right ``HF_TOKEN`` opens it), a 5xx that
  passes (retried) and one that does not, offline with nothing cached, nothing listening: one-line errors
  that say what to do;
- bytes that differ from the ETag's SHA-256 (same size, past the header, so ``gguf_check`` alone cannot
  see it): caught before llama.cpp reads the file, and deleted, so the next try downloads again;
- two servers (two editors) asking for the same file at once: both get it, the bytes are sent once
  (huggingface_hub's file lock);
- an LSP session whose model is ``hf:REPO:FILE``: ``$/progress`` and ``codellama/status`` carry the
  download's percentages (what both editors' status items render) before "ready".
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.hub_server import HubFaults, HubServer, hub_factory, hub_gguf  # noqa: F401
from tests.fixtures.raw_lsp import RawServer

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
HUB_REPO = "codellama/CodeLlama-16k-GGUF"
FILE = "codellama-16k-random.f16.gguf"
SPEC = f"{HUB_REPO}:{FILE}"

RESOLVE = """
import json, sys
from lsp_server.models import ModelError, resolve
def report(message, pct):
    print(json.dumps({"progress": [message, pct]}), flush=True)
try:
    r = resolve(sys.argv[1], report)
except ModelError as exc:
    print(json.dumps({"error": str(exc)}), flush=True)
    sys.exit(1)
print(json.dumps({"path": str(r.path), "source": r.source}), flush=True)
"""


def hub_env(hf_home: Path, endpoint: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and k.lower() not in ("http_proxy", "https_proxy")}
    env.update(PYTHONPATH=str(REPO), HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY="1", NO_PROXY="127.0.0.1,localhost")
    if endpoint is not None:
        env["HF_ENDPOINT"] = endpoint
    env.update(extra)
    return env


def start_resolve(env: dict[str, str], spec: str = SPEC) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", RESOLVE, spec], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    result: dict[str, Any] = {"progress": [ln["progress"] for ln in lines if "progress" in ln], "stderr": err}
    for ln in lines:
        result.update({k: v for k, v in ln.items() if k != "progress"})
    assert ("path" in result) == (proc.returncode == 0), f"exit {proc.returncode}: {out}\n{err[-3000:]}"
    return result


def resolve_once(env: dict[str, str], spec: str = SPEC, timeout: float = 300) -> dict[str, Any]:
    return finish(start_resolve(env, spec), timeout)


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def blobs(hf_home: Path) -> Path:
    return hf_home / "hub" / f"models--{HUB_REPO.replace('/', '--')}" / "blobs"


@pytest.fixture(scope="module")
def gguf_bytes(hub_gguf: Path) -> bytes:
    return hub_gguf.read_bytes()


def test_first_download_with_progress_then_the_cache_offline(hub_factory, gguf_bytes: bytes, tmp_path: Path) -> None:
    hub: HubServer = hub_factory({HUB_REPO: {FILE: gguf_bytes}}, HubFaults(delay_s=0.02))
    first = resolve_once(hub_env(tmp_path, hub.url))
    assert "error" not in first, first
    assert sha256(first["path"]) == hub.sha256(FILE)
    assert first["source"] == f"the Hugging Face Hub ({SPEC})"
    pcts = [p for _, p in first["progress"] if p is not None]
    assert len(pcts) >= 3 and pcts == sorted(pcts) and pcts[-1] == 100, first["progress"]
    messages = [m for m, p in first["progress"] if p is not None]
    assert all(m.startswith(f"downloading {FILE}: ") and " of 36.9 MB" in m for m in messages), messages
    assert any("MB/s" in m for m in messages), messages
    assert any(m.startswith("checking ") for m, _ in first["progress"]), "a fresh download is hashed"
    heads = [s for s in hub.served if s.method == "HEAD"]
    assert heads and heads[0].path == f"/{HUB_REPO}/resolve/main/{FILE}"
    assert len(hub.gets(FILE)) == 1 and hub.gets(FILE)[0].range is None

    # the network gone: the endpoint stops answering, the cached file is used
    hub.stop()
    again = resolve_once(hub_env(tmp_path, hub.url))
    assert again.get("path") == first["path"], again
    assert not any(m.startswith(("downloading", "checking")) for m, _ in again["progress"]), "no download, no re-hash"
    offline = resolve_once(hub_env(tmp_path, hub.url, HF_HUB_OFFLINE="1"))
    assert offline.get("path") == first["path"], offline


def test_dropped_connection_resumes_with_a_range_request(hub_factory, gguf_bytes: bytes, tmp_path: Path) -> None:
    cut = 15 * 2**20
    hub: HubServer = hub_factory({HUB_REPO: {FILE: gguf_bytes}}, HubFaults(drop_after={FILE: cut}))
    got = resolve_once(hub_env(tmp_path, hub.url))
    assert "error" not in got, got
    assert sha256(got["path"]) == hub.sha256(FILE), "the resumed file is complete and identical"
    gets = hub.gets(FILE)
    assert len(gets) == 2 and gets[0].range is None, gets
    assert gets[1].range is not None and gets[1].range.startswith("bytes="), gets
    resumed_at = int(gets[1].range.removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= cut, f"expected a resume inside the first {cut} bytes, got {gets[1].range}"
    assert not list(blobs(tmp_path).glob("*.incomplete"))


def test_killed_download_is_resumed_by_the_next_start(hub_factory, gguf_bytes: bytes, tmp_path: Path) -> None:
    hub: HubServer = hub_factory({HUB_REPO: {FILE: gguf_bytes}}, HubFaults(chunk=1 << 20, delay_s=0.2))
    proc = start_resolve(hub_env(tmp_path, hub.url))
    assert proc.stdout is not None
    seen = 0
    for line in proc.stdout:  # killed at the second percentage (huggingface_hub reports a chunk before writing it)
        seen += '"progress"' in line and "downloading" in line
        if seen == 2:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    (left,) = blobs(tmp_path).glob("*.incomplete")  # huggingface_hub's per-process partial file, left by the dead one
    have = left.stat().st_size
    assert 0 < have < len(gguf_bytes)
    hub.faults.delay_s = 0
    got = resolve_once(hub_env(tmp_path, hub.url))
    assert sha256(got["path"]) == hub.sha256(FILE), "the resumed file is complete and identical"
    assert [g.range for g in hub.gets(FILE)] == [None, f"bytes={have}-"], "the next start asks only for the rest"
    pcts = [p for _, p in got["progress"] if p is not None]
    assert pcts[0] >= 100 * have // len(gguf_bytes) and pcts[-1] == 100, got["progress"]
    assert not list(blobs(tmp_path).glob("*.incomplete"))


def test_a_live_download_is_waited_for_not_resumed(hub_factory, gguf_bytes: bytes, tmp_path: Path) -> None:
    """A partial file of a download still running (another editor) is not touched: the second start waits on
    huggingface_hub's lock and finds the finished blob (see also the two-servers test)."""
    hub: HubServer = hub_factory({HUB_REPO: {FILE: gguf_bytes}}, HubFaults(delay_s=0.05))
    env = hub_env(tmp_path, hub.url)
    first = start_resolve(env)
    assert first.stdout is not None
    for line in first.stdout:
        if "downloading" in line:
            break
    assert list(blobs(tmp_path).glob("*.incomplete"))
    second = start_resolve(env)
    a, b = finish(first), finish(second)
    assert a["path"] == b["path"] and sha256(b["path"]) == hub.sha256(FILE)
    assert [g.range for g in hub.gets(FILE)] == [None], "one download, no resume of a live one"


@pytest.mark.parametrize(
    "spec, faults, extra_env, expected",
    [
        (
            "nobody/NoSuchRepo-GGUF:x.gguf",
            HubFaults(),
            {},
            "expected a Hugging Face repository nobody/NoSuchRepo-GGUF, got HTTP 404",
        ),
        (f"{HUB_REPO}:codellama-16k.Q9_K.gguf", HubFaults(), {}, "got HTTP 404 (no such file)"),
        (SPEC, HubFaults(gated={HUB_REPO: "hf_right"}), {}, "expected access to the gated repository"),
        (SPEC, HubFaults(gated={HUB_REPO: "hf_right"}), {"HF_TOKEN": "hf_wrong"}, "set HF_TOKEN"),
        (SPEC, HubFaults(statuses=[503] * 20), {}, "got HTTP 503 from http://127.0.0.1:"),
        (SPEC, HubFaults(), {"HF_HUB_OFFLINE": "1"}, "(HF_HUB_OFFLINE is set), got none"),
    ],
    ids=["404-repo", "404-file", "401-gated", "401-wrong-token", "503-persistent", "offline-empty-cache"],
)
def test_errors_are_one_line_and_say_what_to_do(
    hub_factory, gguf_bytes: bytes, tmp_path: Path, spec: str, faults: HubFaults, extra_env: dict[str, str], expected: str
) -> None:
    hub: HubServer = hub_factory({HUB_REPO: {FILE: gguf_bytes}}, faults)
    got = resolve_once(hub_env(tmp_path, hub.url, **extra_env), spec)
    assert expected in got.get("error", ""), got
    assert "\n" not in got["error"] and len(got["error"]) < 400
    assert not hub.gets(FILE), "nothing downloaded"
    if faults.statuses:  # 5xx: huggingface_hub retried (with backoff) before giving up
        assert len([s for s in hub.served if s.method == "HEAD"]) >= 3


def test_a_passing_5xx_is_retried_and_a_gated_repo_opens_with_the_token(hub_factory, gguf_bytes: bytes, tmp_path: Path) -> None:
    hub: HubServer = hub_factory({HUB_REPO: {FILE: gguf_bytes}}, HubFaults(statuses=[503, 502], gated={HUB_REPO: "hf_right"}))
    got = resolve_once(hub_env(tmp_path, hub.url, HF_TOKEN="hf_right"))
    assert sha256(got["path"]) == hub.sha256(FILE), got
    heads = [s for s in hub.served if s.method == "HEAD"]
    assert len(heads) == 3 and all(s.authorization for s in heads)
    assert not hub.gets(FILE)[0].authorization, "the token does not go to the CDN host"


def test_nothing_listening_is_one_line(tmp_path: Path) -> None:
    got = resolve_once(hub_env(tmp_path, "http://127.0.0.1:9"))  # the discard port: nothing answers
    assert "got no answer from http://127.0.0.1:9" in got.get("error", "") and "no cached copy" in got["error"], got


def test_corrupted_download_is_caught_before_llama_cpp_and_deleted(hub_factory, gguf_bytes: bytes, tmp_path: Path) -> None:
    bad: HubServer = hub_factory({HUB_REPO: {FILE: gguf_bytes}}, HubFaults(corrupt={FILE}))
    got = resolve_once(hub_env(tmp_path, bad.url))
    assert "to have the SHA-256 the Hub announced" in got.get("error", ""), got
    assert not [p for p in blobs(tmp_path).iterdir() if p.is_file()], "the corrupted blob is gone"
    bad.stop()
    good: HubServer = hub_factory({HUB_REPO: {FILE: gguf_bytes}})
    again = resolve_once(hub_env(tmp_path, good.url))
    assert sha256(again["path"]) == good.sha256(FILE), "the next try downloads again"


def test_two_servers_asking_at_once_download_once(hub_factory, gguf_bytes: bytes, tmp_path: Path) -> None:
    hub: HubServer = hub_factory({HUB_REPO: {FILE: gguf_bytes}}, HubFaults(delay_s=0.05))
    env = hub_env(tmp_path, hub.url)
    first = start_resolve(env)
    assert first.stdout is not None
    for line in first.stdout:  # the first one is downloading when the second asks
        if "downloading" in line:
            break
    second = start_resolve(env)
    a, b = finish(first), finish(second)
    assert a["path"] == b["path"] and sha256(a["path"]) == hub.sha256(FILE)
    assert len(hub.gets(FILE)) == 1, "the bytes are sent once"
    # one HEAD each, and once more when the second start saw the first's partial file (alive: waited for, not resumed)
    assert len([s for s in hub.served if s.method == "HEAD"]) in (2, 3)


def test_lsp_session_shows_the_download_progress(hub_factory, gguf_bytes: bytes, tmp_path: Path) -> None:
    hub: HubServer = hub_factory({HUB_REPO: {FILE: gguf_bytes}}, HubFaults(delay_s=0.02))
    caps = {"window": {"workDoneProgress": True}}
    with RawServer(env=hub_env(tmp_path, hub.url), answer_requests=True) as s:
        s.initialize(f"hf:{SPEC}", capabilities=caps, timeout=300)
        ready = s.wait_status({"ready", "error"}, timeout=300)
        assert ready["state"] == "ready", ready
        reports = [f["params"]["value"] for f in s.notifications("$/progress") if f["params"]["value"]["kind"] == "report"]
        downloading = [r for r in reports if r.get("message", "").startswith("downloading") and "percentage" in r]
        assert len(downloading) >= 3 and downloading[-1]["percentage"] == 100, reports
        assert all(" MB" in r["message"] for r in downloading)
        loading = [st for st in s.statuses() if st["state"] == "loading" and st.get("percentage") is not None]
        assert any((st.get("message") or "").startswith("downloading") for st in loading), s.statuses()
    assert len(hub.gets(FILE)) == 1


def test_the_stand_in_answers_the_hubs_model_api(hub_factory) -> None:
    """The stand-in's ``/api/models`` is what huggingface_hub's ``HfApi.model_info`` reads (the server does not call
    it today; a client or a later picker may), including the gated answer."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError

    from tests.fixtures.hub_server import COMMIT

    hub: HubServer = hub_factory({HUB_REPO: {FILE: b"GGUF"}, "o/gated": {"x.gguf": b"GGUF"}}, HubFaults(gated={"o/gated": "t"}))
    info = HfApi(endpoint=hub.url).model_info(HUB_REPO)
    assert info.sha == COMMIT and [s.rfilename for s in info.siblings or []] == [FILE]
    with pytest.raises(GatedRepoError):
        HfApi(endpoint=hub.url, token=False).model_info("o/gated")
    assert HfApi(endpoint=hub.url, token="t").model_info("o/gated").sha == COMMIT
