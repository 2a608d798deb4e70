#!/usr/bin/env bash
# The whole check: type-check, then every test file against a real PostgreSQL. Ends with "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
bin=./node_modules/.bin
echo "== type check"
if ! "$bin/tsc" --noEmit -p .; then
  echo "0 passed, 1 failed"
  exit 1
fi
echo "== tests"
log=$(mktemp)
"$bin/bun" test --timeout 60000 "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
passed=$(grep -Eo '^ *[0-9]+ pass$' "$log" | tail -1 | grep -Eo '[0-9]+')
failed=$(grep -Eo '^ *[0-9]+ fail$' "$log" | tail -1 | grep -Eo '[0-9]+')
rm -f "$log"
echo "${passed:-0} passed, ${failed:-0} failed"
if [ "$status" -eq 0 ] && [ "${passed:-0}" -eq 0 ]; then exit 1; fi
exit "$status"
