#!/usr/bin/env bash
# Mutation testing of the modules that carry the bridge's guarantees ([tool.mutmut] in
# pyproject.toml; docs/testing.md): runs mutmut with the fast tests, then prints the kill rate
# per module. Arguments go to the report (--survivors lists the mutants left alive).
# MUTMUT_ONLY (space-separated mutant names or globs, e.g. "letta_appservice.inbox.worker*")
# runs only those mutants, checked ones included; without it mutmut runs what is not checked yet.
# Needs .venv with the test extras and PostgreSQL as ./test.sh sets them up (run it once).
set -euo pipefail
set -f  # MUTMUT_ONLY globs are for mutmut, not the shell
cd "$(dirname "$0")/.."
mkdir -p mutants
# shellcheck disable=SC2086 # MUTMUT_ONLY is a list of names
.venv/bin/mutmut run --max-children "${MUTMUT_CHILDREN:-2}" ${MUTMUT_ONLY:-} >mutants/run.log 2>&1 \
    || { echo "mutmut run failed; see mutants/run.log" >&2; exit 1; }
.venv/bin/python scripts/mutation_report.py "$@"
