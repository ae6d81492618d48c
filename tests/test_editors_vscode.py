"""The VS Code extension (vscode-client/): its own checks, its package, and a real VS Code end to end.

In: the extension's sources, Node.js, and what vscode-client/scripts/setup-e2e.sh installs (npm
dependencies, code-server 4.99.4 = VS Code 1.99, Debian's Chromium); the micro Code Llama
(``micro_model``) served by the real ``codellama-lsp``. Out: pass/fail of

- ``npm run lint`` and ``npm test`` (ESLint; the extension's unit tests under Node's test runner);
- ``npm run package``: a ``.vsix`` built by @vscode/vsce;
- the end-to-end run (vscode-client/e2e/run-e2e.mjs): the ``.vsix`` installed into a fresh code-server,
  a memorised file opened with one line blanked, the start of that line typed, ghost text equal to the
  rest of the line on screen, <Tab>, Ctrl+S, and the saved file equal to the memorised one.

Screenshots and logs land in artifacts/editors/vscode/ (ghost.png always, failure.png when it fails);
with CODELLAMA_UPDATE_DOCS=1 (or when it is missing) ghost.png also becomes docs/vscode-ghost-text.png.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.micro_model import micro_model  # noqa: F401
from tests.test_editors_nvim import ARTIFACTS, REPO, SERVER_SETTINGS, blank_case, server_command, server_env

CLIENT = REPO / "vscode-client"
TOOLS = Path(os.environ.get("CODELLAMA_E2E_TOOLS", CLIENT / ".e2e-tools"))
CODE_SERVER = TOOLS / "node_modules" / ".bin" / "code-server"
DOC_SHOT = REPO / "docs" / "vscode-ghost-text.png"


def npm(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    npm_bin = shutil.which("npm")
    assert npm_bin, "expected npm (Node.js >= 20) on PATH"
    return subprocess.run([npm_bin, *args], cwd=CLIENT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def e2e_tools() -> None:
    """Everything the extension's build and the e2e run need; idempotent, a second run only checks."""
    proc = subprocess.run(["bash", str(CLIENT / "scripts" / "setup-e2e.sh")], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"setup-e2e.sh failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="session")
def vsix(e2e_tools: None) -> Path:
    proc = npm("run", "package")
    assert proc.returncode == 0, f"npm run package failed:\n{proc.stdout}\n{proc.stderr}"
    path = CLIENT / "codellama-lsp.vsix"
    assert path.is_file() and path.stat().st_size > 10_000
    return path


def test_vscode_lint(e2e_tools: None) -> None:
    proc = npm("run", "lint")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_vscode_unit_tests(e2e_tools: None) -> None:
    proc = npm("test")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "# fail 0" in proc.stdout and "# pass " in proc.stdout


def test_vscode_package_contents(vsix: Path) -> None:
    import zipfile

    names = zipfile.ZipFile(vsix).namelist()
    manifest = json.loads(zipfile.ZipFile(vsix).read("extension/package.json"))
    assert "extension/out/extension.js" in names
    assert any(n.startswith("extension/node_modules/vscode-languageclient/") for n in names)
    assert not any("/src/" in n and n.endswith(".ts") for n in names), "sources stay out of the package"
    assert not any(n.startswith("extension/node_modules/playwright-core/") for n in names), "dev tools stay out"
    props = manifest["contributes"]["configuration"]["properties"]
    for key in ("model", "nCtx", "maxTokens", "temperature", "timeBudgetMs", "enabledLanguages", "nGpuLayers", "fimOrder"):
        assert f"codellama.{key}" in props and props[f"codellama.{key}"].get("description", props[f"codellama.{key}"].get("markdownDescription"))
    commands = {c["command"] for c in manifest["contributes"]["commands"]}
    assert {"codellama.toggle", "codellama.restart", "codellama.selectModel", "codellama.showLogs"} <= commands


@pytest.mark.slow
def test_vscode_ghost_text_end_to_end(micro_model, vsix: Path, tmp_path: Path) -> None:  # noqa: F811
    case = blank_case(micro_model.files)
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / case.name).write_text(case.blanked)
    out = ARTIFACTS / "vscode"
    shutil.rmtree(out, ignore_errors=True)
    cmd = server_command()
    cfg = {
        "codeServer": str(CODE_SERVER),
        "vsix": str(vsix),
        "workspace": str(workspace),
        "file": case.name,
        "line": case.line,
        "typed": case.typed,
        "outDir": str(out),
        "tmpDir": str(tmp_path),
        "readyTimeoutMs": 90000,
        "ghostTimeoutMs": 30000,
        "settings": {
            "codellama.server.command": cmd[:-1] if cmd[-1] == "--stdio" else cmd,
            "codellama.server.env": {"PYTHONPATH": server_env()["PYTHONPATH"], "HF_HUB_OFFLINE": "1"},
            "codellama.model": str(micro_model.gguf),
            "codellama.maxTokens": SERVER_SETTINGS["maxTokens"],
            "codellama.timeBudgetMs": SERVER_SETTINGS["timeBudgetMs"],
        },
    }
    cfg_path = tmp_path / "e2e.json"
    cfg_path.write_text(json.dumps(cfg))
    node = shutil.which("node")
    assert node, "expected node on PATH"
    proc = subprocess.run([node, str(CLIENT / "e2e" / "run-e2e.mjs"), str(cfg_path)], cwd=CLIENT, capture_output=True, text=True, timeout=400)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no result from the e2e run (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(lines[-1])
    (out / "result.json").write_text(json.dumps(result, indent=2))
    if (out / "ghost.png").exists() and (os.environ.get("CODELLAMA_UPDATE_DOCS") == "1" or not DOC_SHOT.exists()):
        DOC_SHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(out / "ghost.png", DOC_SHOT)
    assert result["ok"], f"{result.get('error')}\nscreenshot: {out / 'failure.png'}\n{proc.stderr[-4000:]}"
    # The ghost text on screen is the memorised rest of the line (its first line: VS Code may show more).
    assert result["ghostText"].split("\n")[0] == case.expected
    assert result["savedText"] == case.original
    assert result["toggled"] is True and result["restarted"] is True and result["recoveredFromCrash"] is True
