#!/usr/bin/env bash
# Set up (a virtualenv in .venv with letta-appservice installed) and run the appservice.
# Arguments go to `letta-appservice`: e.g. `./run.sh -g`, `./run.sh -c /etc/letta/config.yaml`.
# The first run writes config.yaml from the commented example and tells you what to edit.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-run
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e .
    touch "$stamp"
fi
exec .venv/bin/letta-appservice "$@"
