"""The VS Code extension (vscode-client/): its own checks, its package, and a real VS Code end to end.

In: the extension's sources, Node.js, and what vscode-client/scripts/setup-e2e.sh installs (npm
dependencies, code-server 4.99.4 = VS Code 1.99, Debian's Chromium); the micro Code Llama
(``micro_model``) served by the real ``codellama-lsp``. Out: pass/fail of

- ``npm run lint`` and ``npm test`` (ESLint; the extension's unit tests under Node's test runner);
- ``npm run package``: a ``.vsix`` built by @vscode/vsce;
- the end-to-end run (vscode-client/e2e/run-e2e.mjs) as a user has VS Code: the ``.vsix`` installed into
  a fresh code-server with VS Code's DEFAULT editor settings (quick suggestions on) and the extension's
  defaults (debounce, time budget, token limit; only the model is set), the server found in the
  workspace's ``.venv`` (not on PATH, no server setting). Six trials, three at 150 ms a key and three at
  50 ms: a memorised function body blanked, ``    if`` typed, the three-line rest of the body shown as
  ghost text by itself, <Tab>, Ctrl+S, and the saved file equal to the memorised one byte for byte.
  Then the toggle, a restart and a crash of the server.

Screenshots and logs land in artifacts/editors/vscode/ (ghost.png always, failure.png when it fails);
with CODELLAMA_UPDATE_DOCS=1 (or when it is missing) ghost.png also becomes docs/vscode-ghost-text.png.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.micro_model import micro_model  # noqa: F401
from tests.test_editors_nvim import ARTIFACTS, REPEATS, REPO, TYPING_DELAYS_MS, multiline_case, server_command

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
    for key in (
        "model",
        "contextWindow",
        "maxTokens",
        "temperature",
        "timeBudgetMs",
        "enabledLanguages",
        "gpuLayers",
        "fimOrder",
        "debounceMs",
        "adaptiveDebounce",
        "suggestList",
    ):
        assert f"codeLlama.{key}" in props and props[f"codeLlama.{key}"].get(
            "description", props[f"codeLlama.{key}"].get("markdownDescription")
        )
    # VS Code renders `description` as plain text: Markdown (backticks) belongs in markdownDescription
    assert not [k for k, v in props.items() if "`" in v.get("description", "")]
    # the suggestion list stays out of the way unless asked for
    assert props["codeLlama.suggestList"]["default"] is False
    # the server's debounce advice is followed unless turned off (it only ever lengthens debounceMs)
    assert props["codeLlama.adaptiveDebounce"]["default"] is True
    assert manifest["icon"] == "images/icon.png" and "extension/images/icon.png" in names
    # With VS Code's default quick suggestions a word item can be selected in the suggest widget while the
    # ghost text continues it: Tab then takes the ghost text (VS Code's own Tab would only take the word).
    tab = [k for k in manifest["contributes"]["keybindings"] if k["key"] == "tab"]
    assert [k["command"] for k in tab] == ["editor.action.inlineSuggest.commit"] and "suggestWidgetVisible" in tab[0]["when"]
    commands = {c["command"] for c in manifest["contributes"]["commands"]}
    assert {"codellama.toggle", "codellama.restart", "codellama.selectModel", "codellama.showLogs"} <= commands


# VS Code names of server settings that differ from the server's (lsp_server/config.py): the same setting.
VSCODE_NAMES = {"maxItems": "maxCandidates", "completionItems": "suggestList"}


def test_every_server_setting_reachable_from_both_editors() -> None:
    """Issue 24 item 12: each server setting has a ``codeLlama.*`` setting in VS Code with a description, and
    is documented in the Neovim plugin's README under the server's name (the plugin passes ``settings``
    through as they are)."""
    from lsp_server import config

    props = json.loads((CLIENT / "package.json").read_text())["contributes"]["configuration"]["properties"]
    nvim_readme = (REPO / "nvim-client" / "README.md").read_text()
    names = list(config.to_wire(config.Settings()))
    assert {"exclude", "extraContextTokens", "rules", "completionItems"} <= set(names)
    for name in names:
        key = f"codeLlama.{VSCODE_NAMES.get(name, name)}"
        assert key in props and (props[key].get("description") or props[key].get("markdownDescription")), key
        assert f"`{name}`" in nvim_readme, f"{name} missing from nvim-client/README.md"
    # the rules VS Code offers are the server's
    from lsp_server.postprocess import RULES

    assert set(props["codeLlama.rules"]["properties"]) == set(RULES)


def workspace_with_server(tmp_path: Path, hello: bool = False) -> tuple[Path, Path]:
    """A workspace folder holding the user's virtual environment with ``codellama-lsp`` in it (the extension finds the
    server there by itself), and ``hello.py`` when ``hello``: the folder and the console script pip installed."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    if hello:
        (workspace / "hello.py").write_text("def hello():\n    return 1\n")
    venv_bin = workspace / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    script = Path(server_command()[0])
    (venv_bin / "codellama-lsp").symlink_to(script)
    return workspace, script


@pytest.mark.slow
def test_vscode_ghost_text_end_to_end(micro_model, vsix: Path, tmp_path: Path) -> None:
    case = multiline_case(micro_model.files)
    workspace, script = workspace_with_server(tmp_path)
    assert script.name == "codellama-lsp", "expected the console script pip installs"
    trials = []
    for repeat in range(REPEATS):
        for delay in TYPING_DELAYS_MS:
            name = f"shapes_{delay}ms_{repeat + 1}.py"
            (workspace / name).write_bytes(case.blanked.encode())
            trials.append(
                {
                    "file": name,
                    "line": case.line,
                    "typed": case.typed,
                    "delayMs": delay,
                    "expectedGhost": case.expected,
                    "expectedSaved": case.original,
                    # Ctrl+Down (accept the next line) first, then Tab, in the fast trials (issue 24 item 14)
                    "acceptLine": delay == 50,
                }
            )
    # VS Code's word widget and the ghost, both orders of arrival (issue 24 item 13): " w" opens the widget
    # on "width" (a word of the file) before the ghost came, or after it was shown
    for order in ("widget-first", "ghost-first"):
        name = f"shapes_{order}.py"
        (workspace / name).write_bytes(case.blanked.encode())
        trials.append(
            {
                "file": name,
                "line": case.line,
                "typed": case.typed,
                "delayMs": 150,
                "expectedGhost": case.expected,
                "expectedSaved": case.original,
                "extra": " w",
                "extraWhen": order,
            }
        )
    manual = "shapes_manual.py"
    (workspace / manual).write_bytes(case.blanked.encode())
    manual_trial = {
        "file": manual,
        "line": case.line,
        "typed": case.typed,
        "delayMs": 150,
        "expectedGhost": case.expected,
        "expectedSaved": case.original,
    }
    out = ARTIFACTS / "vscode"
    shutil.rmtree(out, ignore_errors=True)
    cfg = {
        "vsix": str(vsix),
        "workspace": str(workspace),
        "trials": trials,
        "manualTrial": manual_trial,
        "readyTimeoutMs": 90000,
        "ghostTimeoutMs": 20000,
        # Only the model (and the server's info log, where the test counts the requests that reached it):
        # every other setting, VS Code's and the extension's, is the default.
        "settings": {"codeLlama.model": str(micro_model.gguf), "codeLlama.server.extraArgs": ["-v"]},
    }
    # not on PATH: the way VS Code started from a desktop launcher sees it
    result, proc = run_e2e(cfg, tmp_path, out, script)
    if (out / "ghost.png").exists() and (os.environ.get("CODELLAMA_UPDATE_DOCS") == "1" or not DOC_SHOT.exists()):
        DOC_SHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(out / "ghost.png", DOC_SHOT)
    summary = [
        (t["delayMs"], t["ok"], t.get("ghostLatencyMs"), t.get("requests"), t.get("error", "")[:200]) for t in result["trials"]
    ]
    print("vscode trials (ms/key, ok, ghost ms after the last key, requests reaching the server, error):", *summary, sep="\n  ")
    assert len(result["trials"]) == len(trials)
    for t in result["trials"]:
        assert t["ok"], f"{t}\nscreenshot: {out}\n{proc.stderr[-4000:]}"
        assert t["saved"].encode() == case.original.encode() and "\0" not in t["saved"]
    rest = case.expected.split("\n", 1)[1]
    for t in result["trials"]:
        if t.get("afterLineAccept") is not None:
            # Ctrl+Down took the first line, the rest stayed as ghost text; one Ctrl+Down a line took the rest
            assert t["afterLineAccept"].strip("\n").rstrip() == rest.rstrip()
            assert t["lineAccepts"] == 3, t
    assert sum(1 for t in result["trials"] if t.get("afterLineAccept") is not None) == REPEATS
    # the word widget: whichever came first, the ghost is shown with the widget open and Tab takes the ghost
    # (the saved file above is the memorised one, " width" typed by hand included)
    orders = {t["file"]: t for t in result["trials"] if "widget" in t["file"] or "ghost-first" in t["file"]}
    print("word widget trials:", json.dumps(orders, indent=2)[:3000])
    for t in orders.values():
        assert t["widgetWithGhost"] is True, t
    assert orders["shapes_ghost-first.py"]["ghostRightAfterExtra"].strip(), "the ghost stayed while typing it"
    # manual mode: nothing by itself during a 2 s pause, Suggest Completions completes, saved byte for byte
    manual = result.get("manual") or {}
    assert manual.get("ok"), manual
    assert manual["ghostWithoutAsking"] == "" and manual["requestsWithoutAsking"] == 0, manual
    assert manual["saved"].encode() == case.original.encode()
    assert result["ok"], f"{result.get('error')}\nscreenshot: {out / 'failure.png'}\n{proc.stderr[-4000:]}"
    assert result["toggled"] is True and result["restarted"] is True and result["recoveredFromCrash"] is True
    # issue 24 item 11: the status item keeps its width whatever its state (the words are in its tooltip)
    widths = result["statusWidths"]
    print("status item (tag, label, width px):", *[(w["tag"], w["label"], w["width"]) for w in widths], sep="\n  ")
    states = {w["label"].split(",")[0] for w in widths}
    assert {"Code Llama: ready", "Code Llama: disabled", "Code Llama: stopped"} <= states, states
    assert max(w["width"] for w in widths) - min(w["width"] for w in widths) < 0.5, widths
    assert result["cancelWarnings"] == [] and result["restartErrors"] == [], (result["cancelWarnings"], result["restartErrors"])


@pytest.mark.slow
def test_vscode_missing_server_open_setting(vsix: Path, tmp_path: Path) -> None:
    """Issue 24 items 9 and 11: no server anywhere (no .venv, not on PATH, no setting). One error
    notification (not two); its "Open Setting" opens the settings editor on a setting that takes effect -
    code-server is a remote window, where machine settings live in the Remote tab (the User tab said "No
    Settings Found"); setting it there restarts the server with a message, and the server gets ready
    (the shipped demo model: no model of the test needed)."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "hello.py").write_text("def hello():\n    return 1\n")
    out = ARTIFACTS / "vscode-missing"
    shutil.rmtree(out, ignore_errors=True)
    script = Path(server_command()[0])
    cfg = {
        "scenario": "missing-server",
        "vsix": str(vsix),
        "workspace": str(workspace),
        "openFile": "hello.py",
        "readyTimeoutMs": 120000,
        "pythonPath": sys.executable,
        "settings": {"codeLlama.model": "demo"},
    }
    result, proc = run_e2e(cfg, tmp_path, out, script, pythonpath=True)
    m = result.get("missing") or {}
    print("missing-server run:", json.dumps(m, indent=2))
    assert result.get("error") is None, f"{result['error']}\nscreenshot: {out / 'failure.png'}\n{proc.stderr[-3000:]}"
    assert len(m["errorToasts"]) == 1 and "codeLlama.server.pythonPath" in m["errorToasts"][0], m["errorToasts"]
    editor = m["settingsEditor"]
    assert editor["noResults"] == "" and "Remote" in editor["tab"], editor
    assert any("Python Path" in item for item in editor["items"]), editor
    assert m["restartToast"] is True and m["ready"] is True
    # the status item in the error state is as wide as when ready (item 11: no background colour padding it)
    widths = result["statusWidths"]
    print("status item (tag, label, width px):", *[(w["tag"], w["label"], w["width"]) for w in widths], sep="\n  ")
    assert [w["label"].split(",")[0] for w in widths] == ["Code Llama: error", "Code Llama: ready"]
    assert abs(widths[0]["width"] - widths[1]["width"]) < 0.5, widths
    # Issue 24 item 11: the titles lead with the extension's name. VS Code 1.99 derives a title's category from the
    # key ("codellama.server.pythonPath" read "Codellama › Server: Python Path", in the search and in the extension's
    # "@ext:" list alike; contributes.configuration's title changes nothing there), hence the keys' prefix "codeLlama.".
    print("setting titles:", editor["titles"], m.get("extensionSection"))
    assert "Code Llama › Server: Python Path" in editor["titles"], editor["titles"]
    section = m["extensionSection"]["titles"]
    assert section and all(t.startswith("Code Llama") for t in section), section


@pytest.mark.slow
def test_vscode_old_setting_names_are_moved_in_their_own_scope(micro_model, vsix: Path, tmp_path: Path) -> None:
    """Issue 24 item 11: settings written under the old names (``codellama.*``) before the rename to ``codeLlama.*``.
    The User file has ``codellama.enable: false``; the Remote (machine) file, where code-server reads machine
    settings, the model and the server's ``-v``; the workspace's ``.vscode/settings.json`` a resource setting
    (``codellama.maxTokens``) and, as a hostile repository ships them, machine settings under the old names: a server
    command that would leave a marker file, a URL, an engine. After start-up: one message; the old User value
    took effect (the status item says "disabled") and sits under the new name in the User file, the Remote values in
    the Remote file, the workspace's maxTokens in the workspace file (not lifted into User settings); the hostile
    values are untouched and not in effect (the server that started is the one in the .venv, the marker never
    appears). Turning completions on loads the model the migrated Remote setting names. The Settings editor titles
    the settings "Code Llama › ..." (searched by key, and the extension's own list)."""
    workspace, script = workspace_with_server(tmp_path, hello=True)
    marker = tmp_path / "hostile-command-ran"
    hostile = {
        "codellama.server.command": ["sh", "-c", f"touch {marker}"],
        "codellama.url": "http://attacker.example:8080",
        "codellama.engine": "openai",
    }
    (workspace / ".vscode").mkdir()
    (workspace / ".vscode" / "settings.json").write_text(json.dumps({**hostile, "codellama.maxTokens": 48}))
    out = ARTIFACTS / "vscode-rename"
    shutil.rmtree(out, ignore_errors=True)
    machine = {"codellama.model": str(micro_model.gguf), "codellama.server.extraArgs": ["-v"]}
    cfg = {
        "scenario": "rename",
        "vsix": str(vsix),
        "workspace": str(workspace),
        "openFile": "hello.py",
        "readyTimeoutMs": 90000,
        "userSettings": {"codellama.enable": False},
        "machineSettings": machine,
    }
    result, proc = run_e2e(cfg, tmp_path, out, script)
    r = result.get("rename") or {}
    print("rename run:", json.dumps(r, indent=2)[:5000])
    assert result.get("error") is None, f"{result['error']}\nscreenshot: {out / 'failure.png'}\n{proc.stderr[-3000:]}"
    assert r["ok"] and r["disabledAtStart"] is True
    # one message, naming what moved and where
    renames = [t for t in r["toasts"] if "settings are now named" in t]
    assert len(renames) == 1, r["toasts"]
    assert all(f"{k} (" in renames[0] for k in ("codellama.enable", "codellama.model", "codellama.maxTokens")), renames[0]
    files = r["files"]
    user = {k: v for k, v in files["user"].items() if "lama" in k}
    assert user == {"codeLlama.enable": False}, files["user"]
    assert files["machine"] == {"codeLlama.model": str(micro_model.gguf), "codeLlama.server.extraArgs": ["-v"]}
    assert files["workspace"] == {**hostile, "codeLlama.maxTokens": 48}, files["workspace"]
    assert not marker.exists(), "the hostile server command ran"
    starts = [line for line in r["startLines"] if "starting server:" in line]
    assert len(starts) == 1, starts  # moving the values did not restart the server
    assert all(str(workspace / ".venv" / "bin" / "codellama-lsp") in line and "attacker" not in line for line in starts), starts
    # the server was started with the migrated model, which loaded once completions were on
    assert all(f"(model {micro_model.gguf})" in line for line in starts), starts
    assert r["readyLabel"].startswith("Code Llama: ready"), r["readyLabel"]
    assert r["filesAfterToggle"]["user"].get("codeLlama.enable") is True
    assert "Code Llama › Server: Python Path" in r["searchTitles"], r["searchTitles"]
    assert r["extensionTitles"] and all(t.startswith("Code Llama") for t in r["extensionTitles"]), r["extensionTitles"]


@pytest.mark.slow
def test_vscode_untitled_buffer_gets_the_syntax_rules_of_its_language(micro_model, vsix: Path, tmp_path: Path) -> None:
    """Issue 24 item 15 in VS Code, as ``test_nvim_syntax_rules_follow_the_filetype_not_the_name`` in Neovim: an
    ``untitled:`` buffer (File: New Untitled Text File) set to Python with Change Language Mode, the memorised file's
    text pasted in with its function blanked to ``def add(a``; the cursor at the end of that line, ``, b`` typed at
    50 ms a key. There is no file name: the server takes the grammar from the languageId, and the cursor is in a
    parameter list, where the Python rules keep the completion to one line: the ghost is ``):`` alone. The control,
    another untitled buffer left as plain text (no grammar: indentation rules only; plain text switched on for the
    test, it is off by default), shows the body too, ``):\n    return a + b``. Each accepted with Tab and saved with
    Save As to a path in the workspace: the saved bytes."""
    original = micro_model.files["unicode_line.py"]
    lines = original.split("\n")
    index = lines.index("def add(a, b):")
    assert lines[index + 1] == "    return a + b" and lines[index + 2] == ""
    blanked = "\n".join([*lines[:index], "def add(a", *lines[index + 2 :]])
    one_line = "\n".join([*lines[:index], "def add(a, b):", *lines[index + 2 :]])
    workspace, script = workspace_with_server(tmp_path, hello=True)
    base = {"line": index + 1, "typed": ", b", "delayMs": 50}
    buffers = [
        {**base, "language": "python", "languageName": "Python", "text": blanked, "expectedGhost": "):", "saveAs": "add_py"},
        # one more line at its end: a text of its own (see the Neovim test: the store of recent places)
        {
            **base,
            "language": "plaintext",
            "languageName": "Plain Text",
            "text": blanked + "\n",
            "expectedGhost": "):\n    return a + b",
            "saveAs": "add_txt",
        },
    ]
    out = ARTIFACTS / "vscode-untitled"
    shutil.rmtree(out, ignore_errors=True)
    settings = {
        "codeLlama.model": str(micro_model.gguf),
        "codeLlama.server.extraArgs": ["-v"],
        # (VS Code merges an object setting with its default: plaintext must be switched on by name)
        "codeLlama.enabledLanguages": {"*": True, "plaintext": True},
    }
    cfg = {
        "scenario": "untitled",
        "vsix": str(vsix),
        "workspace": str(workspace),
        "openFile": "hello.py",
        "untitled": buffers,
        "readyTimeoutMs": 90000,
        "ghostTimeoutMs": 20000,
        "settings": settings,
    }
    result, proc = run_e2e(cfg, tmp_path, out, script)
    u = result.get("untitled") or {}
    print("untitled run:", json.dumps(u, indent=2)[:5000])
    assert result.get("error") is None, f"{result['error']}\nscreenshot: {out}\n{proc.stderr[-3000:]}"
    python, plain = u["buffers"]
    for t in u["buffers"]:
        assert t["ok"], t
    assert python["languageShown"] == "Python" and plain["languageShown"] == "Plain Text", (python, plain)
    assert python["ghostText"].rstrip() == "):" and plain["ghostText"].rstrip() == "):\n    return a + b"
    assert python["saved"] == one_line, python["saved"]
    assert plain["saved"] == original + "\n", plain["saved"]
    # saving an untitled buffer under a name is no error (the server was sent a change after the buffer closed)
    for t in u["buffers"]:
        assert not [m for m in t["toasts"] if "out of sync" in m or "codellama-lsp:" in m], t["toasts"]
        assert "add_" in t["savedTab"], t["savedTab"]  # the saved file is the editor now


def run_e2e(
    cfg: dict[str, object], tmp_path: Path, out: Path, script: Path, pythonpath: bool = False
) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    """``e2e/run-e2e.mjs`` with ``cfg`` (code-server, ``out``, ``tmp_path`` and no typing trials unless it says
    otherwise); its last JSON line (also saved as ``out/result.json``) and the process.
    ``codellama-lsp`` (in ``script``'s folder) is left off PATH: the way VS Code started from a desktop launcher sees it;
    ``pythonpath`` puts this checkout on PYTHONPATH (for a server started as ``python -m lsp_server``)."""
    cfg = {"codeServer": str(CODE_SERVER), "outDir": str(out), "tmpDir": str(tmp_path), "trials": [], **cfg}
    cfg_path = tmp_path / "e2e.json"
    cfg_path.write_text(json.dumps(cfg))
    node = shutil.which("node")
    assert node, "expected node on PATH"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV",)}
    env["PATH"] = os.pathsep.join(d for d in env.get("PATH", "").split(os.pathsep) if Path(d) != script.parent)
    if pythonpath:
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        assert shutil.which("codellama-lsp", path=env["PATH"]) is None, "expected no codellama-lsp on PATH for this test"
    proc = subprocess.run(
        [node, str(CLIENT / "e2e" / "run-e2e.mjs"), str(cfg_path)],
        cwd=CLIENT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no result from the e2e run (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    result: dict[str, Any] = json.loads(lines[-1])
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return result, proc


def notebook_cells(text: str) -> list[str]:
    """A memorised file cut into notebook cells at its double blank lines, each cell ending with its newline:
    joined the way the server joins cells (a blank line between two), they are the file again."""
    pieces = text.split("\n\n\n")
    return [p + "\n" for p in pieces[:-1]] + [pieces[-1]]


def ipynb(cells: list[tuple[str, str]]) -> str:
    """A Jupyter notebook (nbformat 4) of (cell type, text) pairs, as Jupyter writes it (source as lines)."""
    return json.dumps(
        {
            "cells": [
                {"cell_type": kind, "metadata": {}, "source": text.splitlines(keepends=True)}
                | ({"execution_count": None, "outputs": []} if kind == "code" else {})
                for kind, text in cells
            ],
            "metadata": {
                "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                "language_info": {"name": "python"},
            },
            "nbformat": 4,
            "nbformat_minor": 5,
        },
        indent=1,
    )


@pytest.mark.slow
def test_vscode_notebook_cell_completion(micro_model, vsix: Path, tmp_path: Path) -> None:
    """Issue 24 item 16: a Jupyter notebook in code-server (VS Code's built-in ipynb support, no Jupyter extension,
    no kernel): the memorised file in code cells (a markdown cell first), the function body blanked in its cell;
    "    if" typed at 150 ms a key in that cell, the rest of the body shown as ghost text in the cell by itself, Tab,
    Ctrl+S, and the saved notebook's cell is the memorised one. The server completed the cell with the cells
    above and below around it (its log line of the request; tests/test_lsp_context_speed.py reads that prompt)."""
    case = multiline_case(micro_model.files)
    cells = notebook_cells(case.original)
    target = next(i for i, c in enumerate(cells) if case.typed + case.expected in c)
    lines = cells[target].split("\n")
    first = lines.index(case.typed + case.expected.split("\n", 1)[0])
    blanked = "\n".join([*lines[:first], "", *lines[first + case.expected.count("\n") + 1 :]])
    assert (
        "".join(c + "\n\n" for c in cells[:target]) + blanked + "".join("\n\n" + c for c in cells[target + 1 :]) == case.blanked
    )
    workspace, script = workspace_with_server(tmp_path)
    nb_cells = [
        ("markdown", "# Shapes\nMeasured in Python."),
        *[("code", blanked if i == target else c) for i, c in enumerate(cells)],
    ]
    (workspace / "shapes.ipynb").write_text(ipynb(nb_cells))
    out = ARTIFACTS / "vscode-notebook"
    shutil.rmtree(out, ignore_errors=True)
    cfg = {
        "scenario": "notebook",
        "vsix": str(vsix),
        "workspace": str(workspace),
        "notebook": {
            "file": "shapes.ipynb",
            "codeCell": target,  # among the code cells
            "line": first + 1,
            "typed": case.typed,
            "delayMs": 150,
            "expectedGhost": case.expected,
        },
        "readyTimeoutMs": 90000,
        "ghostTimeoutMs": 20000,
        "settings": {"codeLlama.model": str(micro_model.gguf), "codeLlama.server.extraArgs": ["-v"]},
    }
    result, proc = run_e2e(cfg, tmp_path, out, script)
    n = result.get("notebook") or {}
    print("notebook run:", json.dumps({k: v for k, v in n.items() if k != "saved"}, indent=2)[:3000])
    assert result.get("error") is None, f"{result['error']}\nscreenshot: {out / 'failure.png'}\n{proc.stderr[-3000:]}"
    assert n["ok"] and n["ghostInCell"] is True
    saved = json.loads(n["saved"])
    sources = ["".join(c["source"]) for c in saved["cells"]]
    assert sources[1 + target] == cells[target], sources[1 + target]
    assert sources[1:] == cells and sources[0] == "# Shapes\nMeasured in Python."
    # the server had the cells above and below around the cell (their characters: the file around the cell)
    above = sum(len(c) + 2 for c in cells[:target])
    below = sum(len(c) + 2 for c in cells[target + 1 :])
    assert any(f"{above} chars above, {below} below" in line for line in n["cellLogLines"]), n["cellLogLines"]
