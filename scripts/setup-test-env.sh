#!/usr/bin/env bash
# Installs everything the test suite needs into the virtual environment $1 (default .venv), plus the
# Debian and npm packages the editor tests drive. Idempotent: a second run only checks.
set -euo pipefail
VENV=${1:-.venv}
cd "$(dirname "$0")/.."
# torch==2.13.0 is a CPU build that lies on this machine's disk; any other version downloads GBs.
"$VENV/bin/pip" install --quiet -e '.[test]'
