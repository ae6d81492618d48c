#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` from the llama.cpp sources vendored in the llama-cpp-python sdist that
# pyproject.toml pins, so the remote-engine tests and bench/team.py run the same llama.cpp as the in-process engine.
#
# In:  $1 = a virtual environment whose pip downloads the sdist (default .venv; falls back to python3 -m pip).
#      LLAMA_SERVER_JOBS (default: number of cores) parallel compile jobs.
# Out: .cache/llama-server/<version>/bin/llama-server (prints its path on stdout). A second run finds it and only
#      prints the path; an interrupted build leaves no binary (it is copied into place with an atomic rename) and
#      resumes from the cached build directory. A file lock lets several checkouts sharing .cache build it once.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
VERSION=$(grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml | head -1 | cut -d= -f3)
mkdir -p .cache/llama-server/"$VERSION"
# the real path: checkouts that share .cache through a link then agree on the build directory's paths
ROOT=$(realpath .cache/llama-server/"$VERSION")
BIN=$ROOT/bin/llama-server
exec 9>"$ROOT/.lock"
flock 9
if [ -x "$BIN" ]; then
  echo "$BIN"
  exit 0
fi

SRC=$ROOT/src/llama_cpp_python-$VERSION/vendor/llama.cpp
if [ ! -f "$SRC/CMakeLists.txt" ]; then
  if [ -x "$VENV/bin/pip" ]; then PIP=("$VENV/bin/pip"); else PIP=(python3 -m pip); fi
  rm -rf "$ROOT/src" && mkdir -p "$ROOT/src"
  # --no-binary for this one package only: --no-binary :all: would also rebuild pip's build backends from source.
  "${PIP[@]}" download --quiet --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -d "$ROOT/src" >&2
  tar -xzf "$ROOT/src/llama_cpp_python-$VERSION.tar.gz" -C "$ROOT/src"
  rm "$ROOT/src/llama_cpp_python-$VERSION.tar.gz"
fi

# Only what llama-server needs: no tests/examples/unified app; no web UI (LLAMA_USE_PREBUILT_UI would download it
# from the Hugging Face Hub at build time, and the tests talk to the HTTP API only); no OpenSSL (plain HTTP on
# 127.0.0.1 - a team deployment puts TLS in front, see docs/deployment.md); static, so the binary stands alone.
# GGML_NATIVE: tuned for this machine's CPU (the cache lives in the checkout, on the machine that built it).
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
nice cmake -S "$SRC" -B "$ROOT/build" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF >&2
nice cmake --build "$ROOT/build" --target llama-server -j "${LLAMA_SERVER_JOBS:-$(nproc)}" >&2

mkdir -p "$ROOT/bin"
cp "$ROOT/build/bin/llama-server" "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
echo "$BIN"
