#!/usr/bin/env bash
# The whole test suite and the quality checks, as CI runs them.
# Uses .venv/bin/python unless PYTHON names another interpreter.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
failed=0

echo "== pytest (unit, integration, e2e; coverage of src/ >= 85%)"
"$PYTHON" -m pytest --cov=gemma_chat --cov-report=term --cov-fail-under=85 -p no:cacheprovider "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests (exit 5): nothing was tested"
elif [ "$rc" -ne 0 ]; then
    failed=1
fi

echo "== mypy --strict src"
"$PYTHON" -m mypy --strict src || failed=1
echo "== ruff check"
"$PYTHON" -m ruff check . || failed=1
echo "== black --check --line-length 100"
"$PYTHON" -m black --check --line-length 100 . || failed=1
echo "== lint-imports (the architecture contracts in pyproject.toml)"
"$PYTHON" -c 'import sys; from importlinter.cli import lint_imports_command as run; sys.exit(run())' \
    --no-cache || failed=1

if [ "$failed" -ne 0 ]; then
    echo "FAILED: see above"
    exit 1
fi
echo "All checks passed."
