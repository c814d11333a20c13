#!/usr/bin/env bash
# The whole test suite, services included: installs what is missing (scripts/setup.sh), starts the
# Docker engine and PostgreSQL, then runs pytest. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup.sh --postgres --llamacpp   # llama.cpp: the tests marked llamacpp run against it
export SELFINSTRUCT_TEST_PG_URL="${SELFINSTRUCT_TEST_PG_URL:-postgresql+psycopg2://selfinstruct:selfinstruct@127.0.0.1:5432/selfinstruct_test}"
export SELFINSTRUCT_REQUIRE_SERVICES=1   # a missing service fails its tests instead of skipping them
exec .venv/bin/python -m pytest -m "not gpu" "$@"
