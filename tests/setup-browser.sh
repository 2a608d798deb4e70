#!/usr/bin/env bash
# Makes sure Debian's chromium is installed, for tests/dashboard.test.ts (playwright-core drives it; no browser
# build is ever downloaded). PGNET_CHROMIUM names another executable to use instead.
set -euo pipefail
browser="${PGNET_CHROMIUM:-chromium}"
if command -v "$browser" >/dev/null; then exit 0; fi
if [ -n "${PGNET_CHROMIUM:-}" ]; then
  echo "setup-browser.sh: PGNET_CHROMIUM is \"$PGNET_CHROMIUM\", which is not an executable" >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "setup-browser.sh: chromium is not installed; the dashboard test needs it. Run:" >&2
  echo "  sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y chromium" >&2
  exit 1
fi
echo "== installing chromium (Debian's package) for the dashboard test"
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
command -v chromium >/dev/null
