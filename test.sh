#!/usr/bin/env bash
# Set up everything the test suite needs and run it: a virtualenv with the package and its test
# extras (pytest, a real Synapse from PyPI), PostgreSQL started if it is not running, Debian's
# docker-compose for the compose-file check. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/venv.sh "[test]"
# PostgreSQL: storage tests run on it as well as on SQLite.
. scripts/postgres.sh
# Compose validation needs a real Compose implementation; Debian's works without an engine.
if ! command -v docker-compose >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ]; then
    (apt-get install -y -qq docker-compose >/dev/null 2>&1 \
        || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq docker-compose >/dev/null)) \
        || echo "warning: could not install docker-compose; the compose test will fail" >&2
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
    echo "pytest collected no tests: treating that as a failure" >&2
    exit 1
fi
exit "$rc"
