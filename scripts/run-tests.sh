#!/usr/bin/env bash
# Start the real services, run the whole suite, always stop the services.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/velo services up || exit 1
.venv/bin/python -m pytest "$@"
status=$?
.venv/bin/velo services down
exit $status
