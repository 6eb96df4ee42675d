# Sourced by run.sh and test.sh (always with an argument: a sourced script sees the caller's
# otherwise): make .venv (Python 3.11+) and install the package into it,
# with the extras given in $1 (e.g. "[test]"), again only when pyproject.toml changed.
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=".venv/.installed${1:-}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".${1:-}"
    touch "$stamp"
fi
