#!/bin/sh
# Bind a PCI device to vfio-pci so vhost-user-ts can drive it (--port vfio:ADDRESS).
#
#   vfio-bind.sh [--unbind] ADDRESS        ADDRESS = 0000:00:03.0 (or 00:03.0)
#
# Uses driver_override (Documentation/ABI/testing/sysfs-bus-pci): unbind from the current driver, then
# ask the PCI core to probe again, which now only matches vfio-pci. --unbind reverses it (override
# cleared, the device re-probed by its normal driver). POSIX sh: runs in the test guest's busybox too.
# Checks and says clearly what is missing: the device, the vfio-pci module, an IOMMU (group).
# Exit: 0 bound (prints "vfio-bind: ADDRESS bound to vfio-pci, group N, /dev/vfio/N"), 1 otherwise.
set -eu

die() { echo "vfio-bind: $*" >&2; exit 1; }

UNBIND=0
if [ "${1:-}" = "--unbind" ]; then UNBIND=1; shift; fi
[ $# -eq 1 ] || { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
ADDR=$1
case $ADDR in
  [0-9a-fA-F][0-9a-fA-F]:[0-9a-fA-F][0-9a-fA-F].[0-7]) ADDR=0000:$ADDR ;;
  [0-9a-fA-F][0-9a-fA-F][0-9a-fA-F][0-9a-fA-F]:[0-9a-fA-F][0-9a-fA-F]:[0-9a-fA-F][0-9a-fA-F].[0-7]) ;;
  *) die "bad PCI address '$ADDR' (expected DDDD:BB:DD.F)" ;;
esac
DEV=/sys/bus/pci/devices/$ADDR
[ -e "$DEV" ] || die "no PCI device $ADDR ($DEV missing)"

driver() { if [ -e "$DEV/driver" ]; then basename "$(readlink "$DEV/driver")"; fi; }

if [ $UNBIND = 1 ]; then
  cur=$(driver)
  [ -n "$cur" ] && echo "$ADDR" > "$DEV/driver/unbind"
  # An empty write clears the override (a lone newline is what the kernel expects).
  echo > "$DEV/driver_override"
  echo "$ADDR" > /sys/bus/pci/drivers_probe 2>/dev/null || true
  echo "vfio-bind: $ADDR now bound to $(driver || true)"
  exit 0
fi

# IOMMU first: without a group vfio-pci's probe fails with EINVAL ("probe ... failed with error -22").
if [ ! -e "$DEV/iommu_group" ]; then
  die "$ADDR has no IOMMU group: enable an IOMMU (kernel: intel_iommu=on; QEMU: -device intel-iommu before the NIC). VFIO no-IOMMU mode is not supported"
fi
GROUP=$(basename "$(readlink "$DEV/iommu_group")")

if [ ! -d /sys/bus/pci/drivers/vfio-pci ]; then
  modprobe vfio-pci 2>/dev/null || true
  [ -d /sys/bus/pci/drivers/vfio-pci ] || die "the vfio-pci driver is not loaded (modprobe vfio-pci)"
fi

cur=$(driver)
if [ "$cur" != vfio-pci ]; then
  echo vfio-pci > "$DEV/driver_override"
  [ -n "$cur" ] && echo "$ADDR" > "$DEV/driver/unbind"
  echo "$ADDR" > /sys/bus/pci/drivers_probe
fi
cur=$(driver)
[ "$cur" = vfio-pci ] || die "$ADDR did not bind to vfio-pci (driver now: ${cur:-none}); see dmesg"

# Every device of the group must be unbound or on vfio-pci for the group to be viable.
for d in /sys/kernel/iommu_groups/$GROUP/devices/*; do
  b=$(basename "$d")
  [ "$b" = "$ADDR" ] && continue
  if [ -e "$d/driver" ]; then
    dn=$(basename "$(readlink "$d/driver")")
    case $dn in
      vfio-pci|pcieport) ;;
      *) echo "vfio-bind: warning: $b in IOMMU group $GROUP is bound to $dn: the group is not viable until it is unbound or bound to vfio-pci" >&2 ;;
    esac
  fi
done

i=0
while [ ! -e "/dev/vfio/$GROUP" ] && [ $i -lt 20 ]; do sleep 0.1; i=$((i + 1)); done
[ -e "/dev/vfio/$GROUP" ] || die "/dev/vfio/$GROUP did not appear"
echo "vfio-bind: $ADDR bound to vfio-pci, group $GROUP, /dev/vfio/$GROUP"
