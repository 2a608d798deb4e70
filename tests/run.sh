#!/usr/bin/env bash
# The whole check (npm run check, npm test): format, lint, type check, then every test file against a real
# PostgreSQL, the dashboard's in Debian's chromium (installed first when missing, by tests/setup-browser.sh).
# Ends with "N passed, N failed". Arguments go to bun test (e.g. a file, or -t "name").
set -uo pipefail
cd "$(dirname "$0")/.."
bin=./node_modules/.bin
deno=./node_modules/@deno/linux-x64-glibc/deno
fail() {
  echo "$1"
  echo "0 passed, 1 failed"
  exit 1
}
bash tests/setup-browser.sh || fail "chromium (Debian's package, for tests/dashboard.test.ts) is missing: see above"
[ -x "$deno" ] || fail "deno (npm package @deno/linux-x64-glibc, for deno fmt and deno lint) is missing: run npm ci"
echo "== format (deno fmt --check)"
"$deno" fmt --check --quiet || fail "formatting differs: run npm run fmt"
echo "== lint (deno lint)"
"$deno" lint --quiet || fail "lint found problems"
echo "== type check"
"$bin/tsc" --noEmit -p . || fail "type check failed"
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
