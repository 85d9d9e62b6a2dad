#!/bin/bash
# End-to-end smoke test of the QEMU rig against DPDK's vhost-user backend (known good here):
#   dpdk-testpmd (net_vhost, server, --forward-mode=5tswap, fwd lcore = cpu1)
#   <-> QEMU 7.2/TCG (taskset -c 0) running the test guest, which pings through it.
#
#   smoke-dpdk.sh [run-guest.sh options...]     e.g. smoke-dpdk.sh --packed --no-mrg
# Env: SOCK (default /tmp/vh.sock), PINGS (default 10), TIMEOUT (s, default 90),
#      QUEUES (queue pairs on both sides, default 1; add --smp N so the guest uses them),
#      KEEP_LOGS=1 keeps the log directory.
# Prints PASS or FAIL (exit 0 / 1).
#
# Why the ping works although nothing answers it: 5tswap swaps the Ethernet, IPv4 and L4
# addresses of every frame and sends it back. The guest's echo request 10.0.2.15 -> 10.0.2.2
# therefore returns as an echo *request* 10.0.2.2 -> 10.0.2.15 (to our own MAC), the guest
# kernel answers it, and that reply comes back swapped as a reply 10.0.2.2 -> 10.0.2.15 that
# matches ping's id/seq. Each successful ping = 2 frames each way. The peer MAC is a static ARP
# entry because nobody would answer an ARP request (test-rig-facts §4.5 did the same with
# IPv6 link-local + a static neighbour).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SOCK=${SOCK:-/tmp/vh.sock}
PINGS=${PINGS:-10}
QUEUES=${QUEUES:-1}
TIMEOUT=${TIMEOUT:-90}
LOGDIR=$(mktemp -d /tmp/vut-smoke.XXXXXX)
TP_PID=
QEMU_PID=

cleanup() {
  exec 3>&- 2>/dev/null || true
  [[ -n $QEMU_PID ]] && kill -9 "$QEMU_PID" 2>/dev/null || true
  if [[ -n $TP_PID ]]; then
    kill "$TP_PID" 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$TP_PID" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$TP_PID" 2>/dev/null || true
  fi
  rm -f "$SOCK"
  if [[ ${KEEP_LOGS:-0} == 1 ]]; then echo "logs: $LOGDIR" >&2; else rm -rf "$LOGDIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

command -v dpdk-testpmd >/dev/null || { echo "FAIL (no dpdk-testpmd; apt-get install dpdk-dev)"; exit 1; }
t0=$(date +%s.%N)
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }

rm -f "$SOCK"
mkfifo "$LOGDIR/tp.in"
# --no-huge -m 512: memfd-backed legacy memory, shareable, no hugepages needed; the default
# mbuf count does not fit in that, hence --total-num-mbufs (test-rig-facts §3.1).
# -l 0,1 --main-lcore 0: the forwarding lcore is cpu1; QEMU gets cpu0 below. Two busy
# threads on one core collapse throughput by >500x (test-rig-facts §3.2).
dpdk-testpmd -l 0,1 --main-lcore 0 --no-pci --no-huge -m 512 --file-prefix vutsmoke \
  --vdev "net_vhost0,iface=$SOCK,queues=$QUEUES" \
  -- -i --total-num-mbufs=32768 --nb-cores=1 --rxq="$QUEUES" --txq="$QUEUES" --forward-mode=5tswap \
  < "$LOGDIR/tp.in" > "$LOGDIR/testpmd.log" 2>&1 &
TP_PID=$!
exec 3> "$LOGDIR/tp.in"

for _ in $(seq 1 100); do
  [[ -S $SOCK ]] && grep -q 'testpmd>' "$LOGDIR/testpmd.log" 2>/dev/null && break
  kill -0 "$TP_PID" 2>/dev/null || { cat "$LOGDIR/testpmd.log" >&2; echo "FAIL (testpmd died)"; exit 1; }
  sleep 0.1
done
[[ -S $SOCK ]] || { tail -20 "$LOGDIR/testpmd.log" >&2; echo "FAIL (no socket $SOCK)"; exit 1; }
echo "start" >&3
echo "smoke: testpmd up ($(elapsed) s)" >&2

"$HERE/run-guest.sh" --sock "$SOCK" --cpus 0 --queues "$QUEUES" \
  --vut ip=10.0.2.15/24 --vut peer=10.0.2.2 --vut peermac=02:00:00:00:00:02 \
  --vut "ping=10.0.2.2,$PINGS" "$@" \
  < /dev/null > "$LOGDIR/console.log" 2>&1 &
QEMU_PID=$!

result=
deadline=$(( $(date +%s) + TIMEOUT ))
while (( $(date +%s) < deadline )); do
  if grep -aq 'VUT-READY' "$LOGDIR/console.log" && [[ -z ${ready_at:-} ]]; then
    ready_at=$(elapsed); echo "smoke: guest VUT-READY at $ready_at s" >&2
  fi
  if grep -aqE 'VUT-PING-(OK|FAIL)' "$LOGDIR/console.log"; then
    result=$(grep -aoE 'VUT-PING-(OK|FAIL) [0-9/]+' "$LOGDIR/console.log" | head -n1); break
  fi
  kill -0 "$QEMU_PID" 2>/dev/null || break
  sleep 0.2
done
echo "smoke: ${result:-no ping result} ($(elapsed) s)" >&2
# Let the guest power off by itself (clean vhost-user teardown: SET_STATUS 0, GET_VRING_BASE).
for _ in $(seq 1 50); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 0.1; done
if wait "$QEMU_PID"; then qemu_rc=0; else qemu_rc=$?; fi
QEMU_PID=

echo "stop" >&3
echo "quit" >&3
exec 3>&-
for _ in $(seq 1 50); do kill -0 "$TP_PID" 2>/dev/null || break; sleep 0.1; done
# testpmd's stdout is a file (block-buffered): read its stats only after it has exited.
# "Accumulated forward statistics" = what the 5tswap core received from / sent to the guest.
stats=$(grep -aA2 'Accumulated forward statistics' "$LOGDIR/testpmd.log" \
  | awk '/RX-packets/{rx=$2} /TX-packets/{tx=$2} END{printf "rx=%s tx=%s", rx, tx}' || true)
grep -aE '^(VUT-|PING|[0-9]+ bytes from|---|[0-9]+ packets|round-trip)' "$LOGDIR/console.log" | tr -d '\r' >&2 || true
echo "smoke: testpmd port stats: $stats; qemu exit $qemu_rc" >&2
if [[ $result == "VUT-PING-OK $PINGS" && $qemu_rc == 0 ]]; then
  echo "PASS"
else
  [[ ${KEEP_LOGS:-0} == 1 ]] || { tail -30 "$LOGDIR/console.log" >&2; tail -30 "$LOGDIR/testpmd.log" >&2; }
  echo "FAIL"
  exit 1
fi
