#!/usr/bin/env bash
# Set up everything the test suite needs and run it: a virtualenv with the package and its test
# extras (pytest, a real Synapse from PyPI), PostgreSQL (installed from Debian's packages when
# missing), Debian's docker-compose and debootstrap for the deployment tests. Arguments go to
# pytest.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/venv.sh "[test]"
# PostgreSQL: storage tests run on it as well as on SQLite.
. scripts/postgres.sh
# Debian packages: docker-compose validates the compose file (no engine needed); debootstrap
# makes the Docker tests' base image (the engine may have no registry to pull one from).
missing=""
command -v docker-compose >/dev/null 2>&1 || missing="$missing docker-compose"
[ -x /usr/sbin/debootstrap ] || command -v debootstrap >/dev/null 2>&1 \
    || missing="$missing debootstrap"
if [ -n "$missing" ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get install -y -qq $missing >/dev/null 2>&1 \
        || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq $missing >/dev/null)) \
        || echo "warning: could not install$missing; the compose and Docker tests will fail" >&2
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
