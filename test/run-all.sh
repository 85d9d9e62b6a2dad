#!/usr/bin/env bash
# The test command: installs everything the suite needs on a fresh Debian machine (as root), then runs
# every test: unit tests, loopback integration, and the real peers (DPDK 22.11 virtio-user, QEMU 7.2).
#   test/run-all.sh            # everything
#   test/run-all.sh --unit     # only the tests that need no QEMU/DPDK
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
if [[ "${1:-}" != "--unit" ]]; then
  bash qemu-scripts/setup.sh
fi
# npm install (not npm ci: this npm writes lock files its own `npm ci` rejects, see spec-notes) runs the install script, which builds native/ with node-gyp against /usr/include/node.
if [[ ! -d node_modules || package-lock.json -nt node_modules/.package-lock.json || ! -f native/build/Release/vhost_native.node ]]; then
  npm install --no-audit --no-fund
fi
if [[ "${1:-}" == "--unit" ]]; then
  npx tsc --noEmit -p .
  # product unit tests, the document checks, and the rig tests that need no peer
  npx ava 'test/unit/**/*.test.ts' 'test/docs/**/*.test.ts' test/rig/trace-check.test.ts test/rig/test-titles.test.ts
else
  npm test
fi
echo "test/run-all.sh: done in $(( $(date +%s) - t0 )) s"
