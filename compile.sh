#!/usr/bin/env bash
# Builds ./pgnet, one executable with the SQL and all code inside (no Node, Bun or node_modules needed to run it).
#   ./compile.sh                      Bun (the pinned npm dev dependency; works offline)
#   PGNET_COMPILER=deno ./compile.sh  deno compile (needs Deno installed and internet to fetch its runtime)
#   PGNET_OUT=path ./compile.sh       write the executable elsewhere
set -euo pipefail
cd "$(dirname "$0")"
out="${PGNET_OUT:-./pgnet}"
case "${PGNET_COMPILER:-bun}" in
  bun)
    bun="./node_modules/.bin/bun"
    [ -x "$bun" ] || { echo "compile.sh: $bun is missing; run npm ci first" >&2; exit 1; }
    # no implicit .env or bunfig.toml from the directory pgnet happens to run in
    "$bun" build --compile --minify-syntax --sourcemap=none --no-compile-autoload-dotenv --no-compile-autoload-bunfig \
      main.ts --outfile "$out"
    ;;
  deno)
    command -v deno >/dev/null || { echo "compile.sh: deno is not installed" >&2; exit 1; }
    deno compile --allow-all --unstable-raw-imports --output "$out" main.ts
    ;;
  *)
    echo "compile.sh: PGNET_COMPILER must be bun or deno, got '${PGNET_COMPILER}'" >&2
    exit 2
    ;;
esac
echo "built $out"
