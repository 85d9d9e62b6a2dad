#!/bin/sh
# Inside the test guest (vut.run=sh,/host<repo>/qemu-scripts/guest-tools/vfio-guest.sh,KIND,SEND,EXPECT[,PORTOPT]):
# bind the NIC of KIND (e1000e or virtio) to vfio-pci, start vhost-user-ts with --port vfio:<its address>, then run
# the scripted frontend (vfio-frontend.ts) that sends SEND frames out through the NIC and expects EXPECT
# frames back from the host. Needs vut.hostbind=1 (chroot /host node ...). PORTOPT: e.g. poll.
# Markers: VFIO-GUEST-BDF <addr>, VFIO-GUEST-NOTBOUND rc=<rc> <the CLI's error before binding>, the frontend's VFIO-FE-* lines, VFIO-GUEST-RESULT <rc>.
KIND=${1:-e1000e}
SEND=${2:-50}
EXPECT=${3:-50}
PORTOPT=${4:-}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=${HERE%/qemu-scripts/guest-tools}
REPO=${REPO#/host}

case $KIND in
  e1000e) VID=0x8086; DID=0x10d3 ;;
  virtio) VID=0x1af4; DID=0x1041 ;;   # modern virtio-net-pci (disable-legacy=on), split or packed rings
  *) echo "VFIO-GUEST-RESULT 2 unknown kind $KIND"; exit 2 ;;
esac
BDF=
for d in /sys/bus/pci/devices/*; do
  if [ "$(cat "$d/vendor")" = $VID ] && [ "$(cat "$d/device")" = $DID ]; then BDF=$(basename "$d"); break; fi
done
[ -n "$BDF" ] || { echo "VFIO-GUEST-RESULT 2 no $KIND device"; exit 2; }
echo "VFIO-GUEST-BDF $BDF"
# Still on the kernel's driver (e1000e / virtio-pci): the CLI must refuse with a clear error (and exit 1).
OUT=$(chroot /host /bin/sh -c "cd $REPO && exec node bin/vhost-user-ts.js net --socket /tmp/nb.sock --port vfio:$BDF" 2>&1)
echo "VFIO-GUEST-NOTBOUND rc=$? $(echo "$OUT" | head -n1)"
sh "$HERE/../vfio-bind.sh" "$BDF" || { echo "VFIO-GUEST-RESULT 3 bind failed"; exit 3; }

SPEC=vfio:$BDF${PORTOPT:+,$PORTOPT}
chroot /host /bin/sh -c "cd $REPO && DEBUG=\${DEBUG:-vhost:vfio*} exec node bin/vhost-user-ts.js net --socket /tmp/vut.sock --port $SPEC" &
BE=$!
chroot /host /bin/sh -c "cd $REPO && exec node --import tsx qemu-scripts/guest-tools/vfio-frontend.ts --socket /tmp/vut.sock --send $SEND --expect $EXPECT"
RC=$?
kill -TERM $BE 2>/dev/null
i=0
while kill -0 $BE 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
kill -KILL $BE 2>/dev/null
echo "VFIO-GUEST-RESULT $RC"
