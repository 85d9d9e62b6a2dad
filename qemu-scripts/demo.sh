#!/usr/bin/env bash
# The demo: everything from a fresh Debian machine (as root) to a guest passing traffic.
#   1. installs QEMU 7.2, DPDK, busybox (qemu-scripts/setup.sh) and the npm deps + native addon,
#   2. starts vhost-user-ts in a network namespace with a TAP port (vutdemo0, 10.0.2.1/24),
#   3. boots a QEMU guest (TCG) whose virtio-net is served by vhost-user-ts,
#   4. the guest pings 10.0.2.1, the namespace pings the guest, and the backend's port counters
#      and the recorded protocol trace are printed.
# Options (env): PINGS=5, TRACE=1 (print the vhost-user trace), DEBUG=vhost:* (backend debug log).
set -euo pipefail
cd "$(dirname "$0")/.."
PINGS=${PINGS:-5}
NS=vutdemo
TAP=vutdemo0
WORK=$(mktemp -d /tmp/vut-demo.XXXXXX)
SOCK=$WORK/vhost-user.sock
bepid=""

cleanup() {
  [[ -n "$bepid" ]] && kill -TERM "$bepid" 2>/dev/null && wait "$bepid" 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== setup (packages, guest kernel + initramfs, npm deps, native addon)"
bash qemu-scripts/setup.sh
if [[ ! -f native/build/Release/vhost_native.node || ! -d node_modules ]]; then
  npm install --no-audit --no-fund
fi

echo "== vhost-user-ts on $SOCK, uplink tap:$TAP in netns $NS"
ip netns del "$NS" 2>/dev/null || true
ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
ip netns exec "$NS" taskset -c 1 node bin/vhost-user-ts.js net --socket "$SOCK" --port "tap:$TAP" --trace "$WORK/demo.vutrace" \
  2> >(sed 's/^/[backend] /' >&2) &
bepid=$!
for _ in $(seq 100); do
  [[ -S "$SOCK" ]] && ip netns exec "$NS" ip link show "$TAP" >/dev/null 2>&1 && break
  sleep 0.1
done
ip netns exec "$NS" ip addr add 10.0.2.1/24 dev "$TAP"

echo "== booting the guest (QEMU 7.2, TCG, virtio-net-pci on vhost-user): the guest pings 10.0.2.1"
CPUS=0 bash qemu-scripts/run-guest.sh --sock "$SOCK" --vut ip=10.0.2.15/24 --vut "ping=10.0.2.1,$PINGS" --vut hold=8 \
  > "$WORK/console.log" 2>&1 &
qpid=$!
ok=""
for _ in $(seq 900); do
  if grep -q "VUT-HOLD" "$WORK/console.log"; then ok=1; break; fi
  kill -0 "$qpid" 2>/dev/null || break
  sleep 0.1
done
grep -aE "PING|bytes from|packets|VUT-" "$WORK/console.log" | sed "s/\x1b\[[0-9;?]*[a-zA-Z]//g; s/\x1bc//g" | sed 's/^/[guest] /' || true
if [[ -z "$ok" ]]; then
  echo "demo: the guest did not reach the hold point; console:"; tail -40 "$WORK/console.log"; exit 1
fi
echo "== the namespace pings the guest"
ip netns exec "$NS" busybox ping -c 3 10.0.2.15 | sed 's/^/[netns] /'
wait "$qpid" || true
kill -TERM "$bepid"; wait "$bepid" || true; bepid=""
if [[ "${TRACE:-0}" == 1 ]]; then
  echo "== the vhost-user conversation (vhost-user-ts trace print)"
  node bin/vhost-user-ts.js trace print "$WORK/demo.vutrace"
else
  echo "== vhost-user trace: $(node bin/vhost-user-ts.js trace print "$WORK/demo.vutrace" | wc -l) messages recorded (TRACE=1 prints them)"
fi
grep -q "VUT-PING-OK" "$WORK/console.log" && echo "demo: PASS" || { echo "demo: FAIL"; exit 1; }
