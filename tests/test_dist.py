"""The artifacts users install (``make dist``), built and installed the way users install them.

In: this checkout. Out: pass/fail of

- ``python -m build`` (what ``make dist`` runs): an sdist, then a wheel built FROM that sdist, so a file the
  sdist forgets is missing from the wheel too; both carry the package data the server reads at run time
  (the demo GGUF, its manifest and tokenizer, model_train's data) and nothing of tests/ or the editors;
- the wheel installed with plain ``pip install <wheel>`` into a fresh virtual environment in a temporary
  folder OUTSIDE the checkout, pip resolving its dependencies as it does for a user (from the package index,
  pip's cache keeps it to seconds: ~21 s on 2 busy cores when measured, load 2.9), then, from another temporary
  folder, with ``HF_HUB_OFFLINE=1``, no ``PYTHONPATH`` and an empty Hugging Face cache:
  ``codellama-lsp complete`` on the README's demo file, and an LSP session over stdio with the installed
  console script (initialize -> didOpen -> inlineCompletion -> shutdown -> exit 0), which also runs the
  tree-sitter post-processing (the grammar packages come in as the wheel's dependencies);
- one version everywhere: pyproject.toml's version is the wheel's, the one ``codellama-lsp --version`` and
  the server's ``serverInfo`` tell, and the VS Code extension's (package.json, package-lock.json).

The code under test is the installed copy: the test checks ``lsp_server.__file__`` lies in the new
environment, so the checkout's sources cannot stand in for a file the wheel lacks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.raw_lsp import RawServer

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
# read by the server at run time; a wheel without them installs fine and fails on first use
PACKAGE_DATA = (
    "lsp_server/models/demo/codellama-demo.gguf",
    "lsp_server/models/demo/manifest.json",
    "lsp_server/models/demo/tokenizer.model",
    "model_train/data/stdlib-3.11.json",
)


@dataclass(frozen=True)
class Dist:
    wheel: Path
    sdist: Path


@dataclass(frozen=True)
class Installed:
    venv: Path
    env: dict[str, str]  # a user's environment: the venv's bin first, offline, no PYTHONPATH
    work: Path  # a folder outside the checkout with the demo file
    install_s: float

    @property
    def bin(self) -> Path:
        return self.venv / "bin"


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(REPO)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"python -m build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    wheels, sdists = sorted(out.glob("*.whl")), sorted(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, f"expected one wheel and one sdist, got {sorted(out.iterdir())}"
    return Dist(wheels[0], sdists[0])


@pytest.fixture(scope="module")
def installed(dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("user")
    assert REPO not in root.parents, f"expected the clean environment outside the checkout, got {root}"
    venv = root / "venv"
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    proc = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", str(dist.wheel)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=root,
        env=_user_env(venv, root),
    )
    install_s = time.monotonic() - started
    assert proc.returncode == 0, f"pip install {dist.wheel.name} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    print(f"fresh venv + pip install {dist.wheel.name} with its dependencies: {install_s:.1f} s")
    work = root / "project"
    work.mkdir()
    shutil.copyfile(REPO / "examples" / "demo.py", work / "demo.py")
    return Installed(venv, _user_env(venv, root), work, install_s)


def _user_env(venv: Path, root: Path) -> dict[str, str]:
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "HF_ENDPOINT")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("HF_HUB_")}
    env["PATH"] = str(venv / "bin") + os.pathsep + env.get("PATH", "")
    env["HF_HOME"] = str(root / "hf-home")  # an empty Hugging Face cache: nothing can come from a previous run
    env["HF_HUB_OFFLINE"] = "1"
    return env


def test_sdist_and_wheel_carry_the_package_data(dist: Dist) -> None:
    wheel = set(zipfile.ZipFile(dist.wheel).namelist())
    assert not [p for p in PACKAGE_DATA if p not in wheel], sorted(wheel)
    assert not [n for n in wheel if n.startswith(("tests/", "vscode-client/", "nvim-client/", "bench/"))]
    assert f"codellama_lsp-{VERSION}.dist-info/METADATA" in wheel
    with tarfile.open(dist.sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert not [p for p in PACKAGE_DATA if p not in names]
    # the demo model in the wheel is the one the manifest describes (not a truncated or LFS pointer file)
    manifest = json.loads(zipfile.ZipFile(dist.wheel).read("lsp_server/models/demo/manifest.json"))
    import hashlib

    gguf = zipfile.ZipFile(dist.wheel).read("lsp_server/models/demo/codellama-demo.gguf")
    assert hashlib.sha256(gguf).hexdigest() == manifest["gguf_sha256"]


def test_installed_wheel_is_what_runs(installed: Installed) -> None:
    proc = subprocess.run(
        [str(installed.bin / "python"), "-c", "import lsp_server, codellama_core; print(lsp_server.__file__)"],
        cwd=installed.work,
        env=installed.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).is_relative_to(installed.venv), f"expected the installed copy, got {proc.stdout}"
    version = subprocess.run(
        [str(installed.bin / "codellama-lsp"), "--version"], env=installed.env, capture_output=True, text=True, timeout=120
    )
    assert version.stdout.strip() == f"codellama-lsp {VERSION}", version.stdout + version.stderr


def test_installed_complete_on_the_demo_offline(installed: Installed) -> None:
    # a busy machine must not cut the answer: no time budget to speak of (the default 2 s is for typing)
    cmd = [str(installed.bin / "codellama-lsp"), "complete", "demo.py", "--line", "6", "--character", "0", "--model", "demo",
           "--time-budget-ms", "600000"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=installed.work, env=installed.env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip(), f"expected a completion on stdout, got none; stderr:\n{proc.stderr}"
    assert not (Path(installed.env["HF_HOME"]) / "hub").exists(), "the demo must not touch the Hugging Face cache"


def test_installed_lsp_session_over_stdio(installed: Installed) -> None:
    text = (installed.work / "demo.py").read_text()
    uri = (installed.work / "demo.py").as_uri()
    server = RawServer(command=[str(installed.bin / "codellama-lsp"), "--stdio", "-v"], env=installed.env, cwd=installed.work)
    with server as s:
        reply = s.initialize("demo", {"timeBudgetMs": 600000}, timeout=300)
        assert reply["result"]["serverInfo"]["version"] == VERSION
        ready = s.wait_status({"ready", "error"})
        assert ready["state"] == "ready", ready
        s.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": text}})
        answer = s.request(
            "textDocument/inlineCompletion",
            {"textDocument": {"uri": uri}, "position": {"line": 6, "character": 0}, "context": {"triggerKind": 1}},
            timeout=300,
        )
        result = answer.get("result")
        items = result["items"] if isinstance(result, dict) else result
        assert items and items[0]["insertText"].strip(), answer
        assert s.request("shutdown")["result"] is None
        s.notify("exit")
        assert s.exit_code() == 0, s.stderr()[-3000:]
        assert "Traceback" not in s.stderr(), s.stderr()[-3000:]


def test_one_version_everywhere() -> None:
    package = json.loads((REPO / "vscode-client" / "package.json").read_text())
    lock = json.loads((REPO / "vscode-client" / "package-lock.json").read_text())
    assert package["version"] == VERSION, (
        f"expected the extension's version to be pyproject's {VERSION}, got {package['version']}"
    )
    assert lock["version"] == lock["packages"][""]["version"] == VERSION
