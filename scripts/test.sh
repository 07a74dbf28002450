#!/usr/bin/env bash
# The tests, with what they need: installs what is missing (scripts/test-deps.sh), then runs every test target.
# Arguments go to cargo test (e.g. `scripts/test.sh --test it switch::`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-deps.sh
exec cargo test --all-targets "$@"
