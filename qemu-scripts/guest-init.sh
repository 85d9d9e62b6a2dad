#!/bin/sh
# /init of the vhost-user-ts test guest (busybox initramfs built by build-guest.sh).
#
# Configured only by kernel command-line keys (dotted "vut.*" keys: the kernel treats them as
# parameters of an unknown module "vut", ignores them and does not turn them into init
# arguments/env; we read them back from /proc/cmdline):
#
#   vut.if=eth0              interface to configure (default eth0)
#   vut.ip=10.0.2.15/24      static IPv4 address/prefix on it
#   vut.mac=02:..            set the interface MAC before bringing it up (default: QEMU's mac=)
#   vut.mtu=1500             interface MTU
#   vut.peer=10.0.2.2        the peer's IPv4 address ...
#   vut.peermac=02:..:02     ... and its MAC: installs a permanent ARP entry (no ARP on the wire)
#   vut.gw=10.0.2.1          default route
#   vut.dhcp=1               udhcpc on the interface instead of vut.ip
#   vut.ipv6=1               keep IPv6 on the interface (default: disabled so the wire stays
#                            silent: no DAD/RS/MLD frames to confuse frame-counting tests)
#   vut.modules=a,b          extra modules to modprobe (shipped: see /lib/modules/*/modules.dep)
#   vut.9p=0                 do not mount the host root even if a "hostroot" 9p tag exists
#   vut.repo=/path           with vut.hostbind: bind the host's /path (our repository) at /host/mnt
#                            before /host/tmp is covered (the chroot sees it at /mnt)
#   vut.hostbind=1           bind /proc,/sys,/dev into /host and put a tmpfs on /host/tmp so that
#                            `chroot /host node ...` works (test-rig-facts §6)
#   vut.ping=ADDR,COUNT[,MIN[,INTERVAL]]
#                            busybox ping; prints "VUT-PING-OK <received>" if received >= MIN
#                            (default MIN = COUNT) else "VUT-PING-FAIL <received>/<count>"
#   vut.run=CMD,ARG,...      run a command (commas become spaces, e.g. a script under /host);
#                            prints "VUT-RUN-EXIT <rc>"
#   vut.shell=1              interactive shell on the console (after ping/run); poweroff on exit
#   vut.hold=SECS            stay up SECS seconds (or "inf") before powering off, e.g. while the
#                            host side sends traffic
#
# Console markers (one per line): VUT-READY init=<uptime> ready=<uptime> (network configured), VUT-NET ..., VUT-PING-OK n,
# VUT-PING-FAIL n/c, VUT-RUN-EXIT rc, VUT-SHELL, VUT-DONE, VUT-ERROR <what>.
# Ends with `poweroff -f`; run QEMU with -no-reboot and the kernel with panic=-1 so that an
# init crash also terminates QEMU instead of hanging a test.

export PATH=/sbin:/bin:/usr/sbin:/usr/bin
export HOME=/root

# devtmpfs first: without it there may be no /dev/console to talk to (if the initramfs was
# built without CAP_MKNOD).
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec 0</dev/console 1>/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
hostname vut-guest
read -r up_init _ < /proc/uptime

err() { echo "VUT-ERROR $*"; }

finish() {
  echo "VUT-DONE"
  sync
  poweroff -f
  sleep 5   # poweroff -f does not return; belt and braces
}

# --- kernel command line -> VUT_<key> shell variables ---------------------------------------
set -f   # no globbing of cmdline words
for w in $(cat /proc/cmdline); do
  case "$w" in
    vut.*)
      kv=${w#vut.}
      case "$kv" in
        *=*) k=${kv%%=*}; v=${kv#*=} ;;
        *) k=$kv; v=1 ;;
      esac
      case "$k" in
        *[!a-z0-9_]*|'') err "bad key vut.$k" ;;
        *) eval "VUT_$k=\$v"; export "VUT_$k" ;;
      esac
      ;;
  esac
done
set +f

# --- modules --------------------------------------------------------------------------------
# All shipped modules are loaded in dependency order (build-guest.sh wrote the order): that
# costs well under a second under TCG and every scenario (virtio-net, 9p, e1000e+vfio) finds
# its drivers ready.
KREL=$(uname -r)
while read -r ko; do
  insmod "/lib/modules/$KREL/$ko" 2>/dev/null
done < "/lib/modules/$KREL/vut-load-order"
if [ -n "$VUT_modules" ]; then
  for m in $(echo "$VUT_modules" | tr , ' '); do modprobe "$m" || err "modprobe $m"; done
fi

ip link set lo up

# --- optional 9p host root (QEMU: -virtfs local,path=/,mount_tag=hostroot,readonly=on) ----
if [ "${VUT_9p:-1}" != 0 ] && cat /sys/bus/virtio/drivers/9pnet_virtio/*/mount_tag 2>/dev/null | tr '\0' '\n' | grep -qx hostroot; then
  if mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000 hostroot /host; then
    if [ "${VUT_hostbind:-0}" = 1 ]; then
      # The tmpfs on /host/tmp would hide a repository checked out under /tmp: vut.repo binds it at
      # /host/mnt first, so `chroot /host` sees it at /mnt wherever it lives.
      if [ -n "$VUT_repo" ]; then mount --bind "/host$VUT_repo" /host/mnt || err "repo bind"; fi
      mount --bind /proc /host/proc && mount --bind /sys /host/sys && mount --bind /dev /host/dev \
        && mount -t tmpfs tmpfs /host/tmp || err "hostbind"
    fi
  else
    err "9p mount"
  fi
fi

# --- network --------------------------------------------------------------------------------
IF=${VUT_if:-eth0}
if [ -n "$VUT_ip$VUT_dhcp$VUT_mac$VUT_mtu" ] || [ -e "/sys/class/net/$IF" ]; then
  # virtio_net probes synchronously on insmod, but give slow devices a moment.
  i=0
  while [ ! -e "/sys/class/net/$IF" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
fi
if [ -e "/sys/class/net/$IF" ]; then
  if [ "${VUT_ipv6:-0}" != 1 ]; then
    echo 1 > "/proc/sys/net/ipv6/conf/$IF/disable_ipv6" 2>/dev/null
  fi
  [ -n "$VUT_mac" ] && { ip link set "$IF" address "$VUT_mac" || err "mac"; }
  [ -n "$VUT_mtu" ] && { ip link set "$IF" mtu "$VUT_mtu" || err "mtu"; }
  ip link set "$IF" up || err "link up"
  [ -n "$VUT_ip" ] && { ip addr add "$VUT_ip" dev "$IF" || err "addr"; }
  if [ -n "$VUT_peer" ] && [ -n "$VUT_peermac" ]; then
    # busybox `ip neigh` cannot add entries; busybox arp can (permanent unless "temp").
    arp -i "$IF" -s "$VUT_peer" "$VUT_peermac" || err "arp"
  fi
  [ "${VUT_dhcp:-0}" = 1 ] && { udhcpc -i "$IF" -n -q -t 5 -T 1 || err "dhcp"; }
  [ -n "$VUT_gw" ] && { ip route add default via "$VUT_gw" dev "$IF" || err "route"; }
  echo "VUT-NET $IF mac=$(cat /sys/class/net/$IF/address) ip=$(ip -4 -o addr show dev "$IF" | awk '{print $4}' | head -n1) mtu=$(cat /sys/class/net/$IF/mtu)"
elif [ -n "$VUT_ip$VUT_dhcp$VUT_ping" ]; then
  err "no interface $IF"
fi

# uptime: kernel clock (starts ~3-4 s after QEMU under TCG: firmware + decompression).
read -r up_ready _ < /proc/uptime
echo "VUT-READY init=$up_init ready=$up_ready"

# --- actions --------------------------------------------------------------------------------
if [ -n "$VUT_ping" ]; then
  set -- $(echo "$VUT_ping" | tr , ' ')
  addr=$1; count=${2:-3}; min=${3:-$count}; ival=${4:-0.2}
  # -W 3: wait up to 3 s for the last reply after the last request (TCG is slow).
  out=$(ping -c "$count" -i "$ival" -W 3 "$addr" 2>&1)
  echo "$out"
  rx=$(echo "$out" | sed -n 's/.* \([0-9][0-9]*\) packets received.*/\1/p')
  rx=${rx:-0}
  if [ "$rx" -ge "$min" ] && [ "$rx" -gt 0 ]; then echo "VUT-PING-OK $rx"; else echo "VUT-PING-FAIL $rx/$count"; fi
fi

if [ -n "$VUT_run" ]; then
  cmd=$(echo "$VUT_run" | tr , ' ')
  sh -c "$cmd"
  echo "VUT-RUN-EXIT $?"
fi

if [ "${VUT_shell:-0}" = 1 ]; then
  echo "VUT-SHELL"
  # cttyhack gives the shell a real controlling tty (job control, ^C); setsid detaches it
  # from init's session.
  setsid cttyhack sh -l
fi

case "${VUT_hold:-}" in
  '') ;;
  inf) echo "VUT-HOLD"; while :; do sleep 3600; done ;;
  *) echo "VUT-HOLD"; sleep "$VUT_hold" ;;
esac

finish
