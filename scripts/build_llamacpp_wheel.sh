#!/usr/bin/env bash
# Build llama-cpp-python's wheel into the wheel cache, once per machine (compiling llama.cpp takes about
# 5 minutes on 2 cores); a no-op when the cache already holds one. The build holds a lock, so
# scripts/setup.sh --llamacpp waits for a build that .ci/run started in the background instead of
# starting a second one. Any Python with pip builds it (the wheel is py3-none), so it needs no .venv.
# Usage: scripts/build_llamacpp_wheel.sh [PYTHON]
set -euo pipefail
PY="${1:-python3}"
WHEELS="${SELFINSTRUCT_WHEEL_CACHE:-$HOME/.cache/selfinstruct/wheels}"
mkdir -p "$WHEELS"
exec 9>"$WHEELS/.build.lock"
flock 9
if ! ls "$WHEELS"/llama_cpp_python-*-linux_"$(uname -m)".whl >/dev/null 2>&1; then
  started=$(date +%s)
  # without the multimodal (llava/mtmd) library, which nothing here uses: 8.1 instead of 9.9 CPU-minutes
  CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" "$PY" -m pip wheel -q --no-deps -w "$WHEELS" "llama-cpp-python>=0.3"
  echo "[build_llamacpp_wheel] built in $(( $(date +%s) - started )) s: $(ls "$WHEELS"/llama_cpp_python-*.whl)" >&2
fi
