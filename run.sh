#!/usr/bin/env bash
# Set up (a virtualenv in .venv beside this script, with letta-appservice installed) and run the
# appservice in the current directory: relative paths (config.yaml, -c, -r, sqlite:) mean what
# they mean where you are. Arguments go to `letta-appservice`: e.g. `./run.sh -g`,
# `./run.sh -c /etc/letta/config.yaml`. The first run writes config.yaml from the commented
# example and tells you what to edit.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
(cd "$here" && . scripts/venv.sh "")  # an argument, or it would see ours
# The program's hints name the command that works from here: this script as you called it.
LETTA_APPSERVICE_COMMAND="$(printf '%q' "$0")"
export LETTA_APPSERVICE_COMMAND
exec "$here/.venv/bin/letta-appservice" "$@"
