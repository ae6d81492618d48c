#!/usr/bin/env bash
# Installs everything the test suite needs into the virtual environment $1 (default .venv), plus the
# Debian and npm packages the editor tests drive. Idempotent: a second run only checks.
set -euo pipefail
VENV=${1:-.venv}
cd "$(dirname "$0")/.."
# torch==2.13.0 is a CPU build that lies on this machine's disk; any other version downloads GBs.
"$VENV/bin/pip" install --quiet -e '.[test]'

# llama.cpp's llama-server (the remote-engine tests and bench/team.py run it on 127.0.0.1): built once from the
# llama.cpp sources vendored in the pinned llama-cpp-python sdist, cached under .cache/llama-server/<version>/.
bash scripts/build-llama-server.sh "$VENV" >/dev/null


# Editor test tools (Debian's Neovim 0.7 and chromium, code-server, playwright-core, vsce): their own script.
if [ -f vscode-client/scripts/setup-e2e.sh ]; then
  bash vscode-client/scripts/setup-e2e.sh
fi
