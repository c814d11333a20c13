#!/usr/bin/env bash
# Install everything the project needs on a fresh Debian machine, idempotently:
#   Debian packages (Docker engine, debootstrap; PostgreSQL with --postgres),
#   a virtual environment in .venv with the pinned CPU torch and the project (editable, dev extras),
#   a running Docker daemon, and the sandbox image; with --llamacpp (or SELFINSTRUCT_WITH_LLAMACPP=1)
#   llama-cpp-python and its server, from a wheel built once per machine into the wheel cache
#   (SELFINSTRUCT_WHEEL_CACHE, default $HOME/.cache/selfinstruct/wheels): the build takes minutes.
# Usage: scripts/setup.sh [--postgres] [--no-docker] [--llamacpp]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WITH_PG=0; WITH_DOCKER=1; WITH_LLAMACPP="${SELFINSTRUCT_WITH_LLAMACPP:-0}"
WHEELS="${SELFINSTRUCT_WHEEL_CACHE:-$HOME/.cache/selfinstruct/wheels}"
for arg in "$@"; do
  case "$arg" in
    --postgres) WITH_PG=1 ;;
    --no-docker) WITH_DOCKER=0 ;;
    --llamacpp) WITH_LLAMACPP=1 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done
log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
as_postgres() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi; }

# --- Debian packages -----------------------------------------------------------------------------
pkgs=()
if [ "$WITH_DOCKER" = 1 ]; then
  command -v dockerd >/dev/null 2>&1 || pkgs+=(docker.io)
  command -v debootstrap >/dev/null 2>&1 || pkgs+=(debootstrap)
  command -v runsc >/dev/null 2>&1 || pkgs+=(runsc)   # gVisor, for sandbox.runtime: runsc
fi
if [ "$WITH_PG" = 1 ] && ! command -v pg_ctlcluster >/dev/null 2>&1; then pkgs+=(postgresql); fi
if [ "$WITH_LLAMACPP" = 1 ]; then  # building llama.cpp's wheel needs CMake and a C/C++ compiler
  command -v cmake >/dev/null 2>&1 || pkgs+=(cmake)
  command -v g++ >/dev/null 2>&1 || pkgs+=(g++)
fi
if [ "${#pkgs[@]}" -gt 0 ]; then
  log "installing Debian packages: ${pkgs[*]}"
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${pkgs[@]}" >/dev/null
fi

# --- Python environment --------------------------------------------------------------------------
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  log "installing Python packages (torch 2.13.0 CPU build first, so nothing pulls a CUDA build)"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q torch==2.13.0
  .venv/bin/pip install -q -e ".[dev]"
  touch "$stamp"
fi

# --- llama.cpp (llama-cpp-python and its OpenAI-compatible server) ---------------------------------
if [ "$WITH_LLAMACPP" = 1 ] && ! .venv/bin/python -c "import llama_cpp.server.app" >/dev/null 2>&1; then
  mkdir -p "$WHEELS"
  wheel_in_cache() { ls "$WHEELS"/llama_cpp_python-*-linux_"$(uname -m)".whl 2>/dev/null | sort -V | tail -n1; }
  if [ -z "$(wheel_in_cache)" ]; then
    log "building llama-cpp-python into $WHEELS (about 5 minutes on 2 cores; once per machine)"
    SELFINSTRUCT_WHEEL_CACHE="$WHEELS" scripts/build_llamacpp_wheel.sh .venv/bin/python  # waits for one under way
  fi
  wheel="$(wheel_in_cache)"
  [ -n "$wheel" ] || { echo "setup.sh: no llama-cpp-python wheel in $WHEELS after building" >&2; exit 1; }
  version="$(basename "$wheel" | cut -d- -f2)"
  log "installing llama-cpp-python $version from $wheel"
  # pinned to the cached wheel's version, so pip takes the wheel instead of building a newer sdist
  .venv/bin/pip install -q --find-links "$WHEELS" "llama-cpp-python[server]==$version"
fi

# --- Docker engine and sandbox image -------------------------------------------------------------
if [ "$WITH_DOCKER" = 1 ]; then
  # gVisor's runsc as a Docker runtime: added to daemon.json (other keys and an existing runsc entry kept)
  runsc_path="$(command -v runsc)"
  $SUDO "$PY" - "$runsc_path" <<'PYEOF'
import json, os, sys
path = "/etc/docker/daemon.json"
config = json.load(open(path)) if os.path.exists(path) and os.path.getsize(path) else {}
runtimes = config.setdefault("runtimes", {})
if "runsc" not in runtimes:
    # ptrace: works without KVM; no network stack at all; --oci-seccomp: Docker's seccomp profile is
    # enforced inside the sandbox as well, as under runc
    runtimes["runsc"] = {"path": sys.argv[1], "runtimeArgs": ["--platform=ptrace", "--network=none", "--oci-seccomp"]}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as handle:
        json.dump(config, handle, indent=2)
    os.replace(path + ".tmp", path)
    print("[setup] registered runsc in " + path, file=sys.stderr)
PYEOF
  if docker info >/dev/null 2>&1 && ! docker info --format '{{json .Runtimes}}' | grep -q '"runsc"'; then
    # reload the running daemon's configuration (SIGHUP): running containers are not touched
    log "reloading dockerd's configuration for runsc"
    $SUDO kill -HUP "$(pidof dockerd)"
    for _ in $(seq 1 20); do docker info --format '{{json .Runtimes}}' | grep -q '"runsc"' && break; sleep 0.5; done
    docker info --format '{{json .Runtimes}}' | grep -q '"runsc"' \
      || { echo "setup.sh: dockerd did not pick up runsc from /etc/docker/daemon.json" >&2; exit 1; }
  fi
  if ! docker info >/dev/null 2>&1; then
    log "starting dockerd (log: /var/log/selfinstruct-dockerd.log)"
    nohup $SUDO dockerd >/var/log/selfinstruct-dockerd.log 2>&1 &
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { echo "setup.sh: dockerd did not start; see /var/log/selfinstruct-dockerd.log" >&2; exit 1; }
  fi
  log "sandbox image"
  $SUDO .venv/bin/selfinstruct sandbox build   # debootstrap needs root; quick no-op when the image exists
fi

# --- PostgreSQL ----------------------------------------------------------------------------------
if [ "$WITH_PG" = 1 ]; then
  ver="$(ls /etc/postgresql 2>/dev/null | sort -n | tail -n1)"
  [ -n "$ver" ] || { echo "setup.sh: no PostgreSQL cluster found under /etc/postgresql" >&2; exit 1; }
  $SUDO pg_ctlcluster "$ver" main start 2>/dev/null || true
  for _ in $(seq 1 30); do as_postgres psql -qAtc 'select 1' >/dev/null 2>&1 && break; sleep 1; done
  as_postgres psql -qAtc "select 1 from pg_roles where rolname='selfinstruct'" | grep -q 1 \
    || as_postgres psql -qc "create role selfinstruct login superuser password 'selfinstruct'"
  as_postgres psql -qAtc "select 1 from pg_database where datname='selfinstruct_test'" | grep -q 1 \
    || as_postgres createdb -O selfinstruct selfinstruct_test
  log "PostgreSQL $ver running (postgresql://selfinstruct:selfinstruct@127.0.0.1:5432/selfinstruct_test)"
fi
log "ready"
