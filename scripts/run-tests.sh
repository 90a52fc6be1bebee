#!/usr/bin/env bash
# Run the whole test suite from the venv that scripts/setup.sh made.
# Before: `make setup` has run. After: pytest's exit status; "no tests ran" (5) is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONDONTWRITEBYTECODE=1
.venv/bin/python -m pytest "$@"
rc=$?
if [ $rc = 5 ]; then echo "run-tests: pytest collected no tests" >&2; exit 1; fi
exit $rc
