#!/usr/bin/env bash
# Installs everything the test suite needs into the virtual environment $1 (default .venv), plus the
# Debian packages (bubblewrap for the eval sandbox, those the editor tests drive) and npm packages.
# Idempotent: a second run only checks.
set -euo pipefail
VENV=${1:-.venv}
cd "$(dirname "$0")/.."
# torch==2.13.0 is a CPU build that lies on this machine's disk; any other version downloads GBs.
"$VENV/bin/pip" install --quiet -e '.[test]'

# bubblewrap: `codellama-lsp eval` runs model-written test programs inside it (lsp_server/sandbox.py), and
# tests/test_sandbox.py throws hostile programs at it. setpriv (util-linux) drops root to nobody there.
need_apt=()
command -v bwrap >/dev/null 2>&1 || need_apt+=(bubblewrap)
command -v setpriv >/dev/null 2>&1 || need_apt+=(util-linux)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup-test-env: missing Debian packages (${need_apt[*]}) and not root: install them, then run me again" >&2; exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
bwrap --unshare-all --unshare-user --ro-bind / / true 2>/dev/null \
  || echo "setup-test-env: warning: bwrap cannot create user namespaces here; tests/test_sandbox.py will fail (docs/eval.md, 'The sandbox')" >&2

# llama.cpp's llama-server (the remote-engine tests and bench/team.py run it on 127.0.0.1): built once from the
# llama.cpp sources vendored in the pinned llama-cpp-python sdist, cached under .cache/llama-server/<version>/.
bash scripts/build-llama-server.sh "$VENV" >/dev/null


# Editor test tools (Debian's Neovim 0.7 and chromium, code-server, playwright-core, vsce): their own script.
if [ -f vscode-client/scripts/setup-e2e.sh ]; then
  bash vscode-client/scripts/setup-e2e.sh
fi
