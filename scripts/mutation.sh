#!/usr/bin/env bash
# Mutation testing of the modules that carry the bridge's guarantees ([tool.mutmut] in
# pyproject.toml; docs/testing.md): runs mutmut with the fast tests, then prints the kill rate
# per module. Arguments go to the report (--survivors lists the mutants left alive).
# Needs .venv with the test extras and PostgreSQL as ./test.sh sets them up (run it once).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p mutants
.venv/bin/mutmut run --max-children "${MUTMUT_CHILDREN:-2}" >mutants/run.log 2>&1 \
    || { echo "mutmut run failed; see mutants/run.log" >&2; exit 1; }
.venv/bin/python scripts/mutation_report.py "$@"
