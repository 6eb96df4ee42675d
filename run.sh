#!/usr/bin/env bash
# Set up (a virtualenv in .venv with letta-appservice installed) and run the appservice.
# Arguments go to `letta-appservice`: e.g. `./run.sh -g`, `./run.sh -c /etc/letta/config.yaml`.
# The first run writes config.yaml from the commented example and tells you what to edit.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/venv.sh ""  # an argument, or it would see ours
exec .venv/bin/letta-appservice "$@"
