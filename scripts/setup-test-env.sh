#!/usr/bin/env bash
# Installs everything the test suite needs into the virtual environment $1 (default .venv), plus the
# Debian and npm packages the editor tests drive. Idempotent: a second run only checks.
set -euo pipefail
VENV=${1:-.venv}
cd "$(dirname "$0")/.."
# torch==2.13.0 is a CPU build that lies on this machine's disk; any other version downloads GBs.
"$VENV/bin/pip" install --quiet -e '.[test]'


# Editor test tools (Debian's Neovim 0.7 and chromium, code-server, playwright-core, vsce): their own script.
if [ -f vscode-client/scripts/setup-e2e.sh ]; then
  bash vscode-client/scripts/setup-e2e.sh
fi
