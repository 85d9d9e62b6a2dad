#!/bin/bash
# Boot the test guest (build-guest.sh) under QEMU 7.2 / TCG, optionally with a virtio-net-pci
# NIC whose device side is a vhost-user backend on a unix socket.
#
#   run-guest.sh [options] [-- extra qemu args]
#
# Every option also has an environment variable (the flag wins):
#   --sock PATH         SOCK        vhost-user socket; empty = no vhost-user NIC
#   --sock-mode M       SOCK_MODE   client (default: the backend listens, like DPDK's
#                                   net_vhost), server (QEMU listens and waits for the backend
#                                   before it starts the guest), reconnect (client that retries
#                                   every RECONNECT s, so the backend may start later/restart)
#   --reconnect S       RECONNECT   seconds between reconnect attempts (default 1)
#   --queues N          QUEUES      queue pairs (N>1 adds mq=on; the guest uses min(N, vCPUs))
#   --packed            PACKED=1    packed virtqueues (packed=on)
#   --no-mrg            MRG=0       mrg_rxbuf=off
#   --mac MAC           MAC         NIC MAC (default 52:54:00:12:34:56)
#   --dev-opts S        DEV_OPTS    extra ,key=val for -device virtio-net-pci (e.g.
#                                   "rx_queue_size=1024,event_idx=off")
#   --vut KEY=VAL       (repeatable) adds vut.KEY=VAL to the kernel command line (guest-init.sh)
#   --append S          APPEND      extra kernel command line text
#   --cpus LIST         CPUS        run QEMU under `taskset -c LIST`
#   --mem SIZE          MEM         guest RAM (default 512M; also the shared memfd size)
#   --smp N             SMP         vCPUs (default 1)
#   --hostroot          HOSTROOT=1  share the host / read-only over 9p (tag hostroot -> /host)
#   --iommu             IOMMU=1     vIOMMU: an Intel IOMMU (intremap, device-iotlb) in front of the
#                                   NIC, which gets iommu_platform=on,ats=on (so the vhost-user backend
#                                   sees IOVAs and IOTLB messages), and intel_iommu=on for the guest
#   --qmp PATH          QMP         QMP unix socket (server, nowait)
#   --incoming URI      INCOMING    migration destination: -incoming URI (e.g. unix:/tmp/m.sock,
#                                   or "defer": listen only after QMP migrate-incoming, so that
#                                   capabilities such as postcopy-ram can be set first). Give the
#                                   destination exactly the source's options otherwise (same
#                                   --mem/--mac/--queues/--packed/..., its own --sock and --qmp):
#                                   the device state only loads into an identical machine.
#   --dry-run           DRY_RUN=1   print the command instead of running it
#   RIG_DIR (env)                   where vmlinuz/initramfs.gz are (default <repo>/.rig/guest)
#   QEMU (env)                      QEMU binary (default qemu-system-x86_64)
#
# Serial console = stdio (-nographic: ^A x quits, ^A c = monitor). The guest powers off when
# done, and -no-reboot + panic=-1 make QEMU exit on power-off, reboot or guest panic.
# The script execs QEMU (through taskset if asked), so its PID is QEMU's PID.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RIG_DIR=${RIG_DIR:-$(dirname "$HERE")/.rig/guest}
SOCK=${SOCK:-}
SOCK_MODE=${SOCK_MODE:-client}
RECONNECT=${RECONNECT:-1}
QUEUES=${QUEUES:-1}
PACKED=${PACKED:-0}
MRG=${MRG:-1}
MAC=${MAC:-52:54:00:12:34:56}
DEV_OPTS=${DEV_OPTS:-}
APPEND=${APPEND:-}
CPUS=${CPUS:-}
MEM=${MEM:-512M}
SMP=${SMP:-1}
HOSTROOT=${HOSTROOT:-0}
IOMMU=${IOMMU:-0}
QMP=${QMP:-}
INCOMING=${INCOMING:-}
DRY_RUN=${DRY_RUN:-0}
QEMU=${QEMU:-qemu-system-x86_64}
VUT=()
EXTRA=()

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }

while (($#)); do
  case $1 in
    --sock) SOCK=$2; shift ;;
    --sock-mode) SOCK_MODE=$2; shift ;;
    --reconnect) RECONNECT=$2; shift ;;
    --queues) QUEUES=$2; shift ;;
    --packed) PACKED=1 ;;
    --no-mrg) MRG=0 ;;
    --mac) MAC=$2; shift ;;
    --dev-opts) DEV_OPTS=$2; shift ;;
    --vut) VUT+=("vut.$2"); shift ;;
    --append) APPEND="$APPEND $2"; shift ;;
    --cpus) CPUS=$2; shift ;;
    --mem) MEM=$2; shift ;;
    --smp) SMP=$2; shift ;;
    --hostroot) HOSTROOT=1 ;;
    --iommu) IOMMU=1 ;;
    --qmp) QMP=$2; shift ;;
    --incoming) INCOMING=$2; shift ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "run-guest: unknown option $1" >&2; usage 2 >&2 ;;
  esac
  shift
done

for f in vmlinuz initramfs.gz; do
  [[ -s $RIG_DIR/$f ]] || { echo "run-guest: $RIG_DIR/$f missing; run qemu-scripts/build-guest.sh" >&2; exit 1; }
done

args=(
  # No KVM: /dev/kvm exists but the host is PVM-based; kvm either asserts on MSR 0x10a
  # (-cpu host) or the stock Debian kernel hangs after "Probing EDD" (test-rig-facts §4.1).
  -accel tcg -machine q35 -cpu max -smp "$SMP" -m "$MEM"
  -nographic -no-reboot
  -kernel "$RIG_DIR/vmlinuz" -initrd "$RIG_DIR/initramfs.gz"
)
if [[ $IOMMU == 1 ]]; then
  # The IOMMU must exist before the PCI devices it translates for, so it goes first. device-iotlb
  # (ATS) is what makes QEMU's vhost send IOTLB messages to the backend instead of refusing.
  args+=(-device intel-iommu,intremap=on,device-iotlb=on)
  # no_timer_check: with interrupt remapping a guest booting on a loaded host can fail the IO-APIC
  # timer check and panic ("timer doesn't work through Interrupt-remapped IO-APIC").
  # iommu.strict=1: every DMA unmap is invalidated page by page, which QEMU 7.2 forwards to a vhost
  # backend as IOTLB INVALIDATE. In the default lazy mode the guest flushes in batches that never
  # reach the backend, so it translates re-used IOVAs with stale entries (spec-notes/decisions.md D39).
  APPEND="intel_iommu=on iommu.strict=1 no_timer_check $APPEND"
fi

if [[ -n $SOCK ]]; then
  # vhost-user needs guest RAM the backend can mmap: a shared memfd backend, made the RAM of
  # NUMA node 0 (its size must equal -m). Without share=on the backend would map a private
  # copy and never see the rings.
  args+=(
    -object "memory-backend-memfd,id=mem,size=$MEM,share=on"
    -numa node,memdev=mem
  )
  case $SOCK_MODE in
    client) chardev="socket,id=c0,path=$SOCK" ;;
    # server: QEMU creates the socket and blocks (wait=on is the default for server) until the
    # backend connects, so the backend sees the message sequence from the very start
    # (test-rig-facts §4.4: GET_FEATURES, GET_PROTOCOL_FEATURES, ...).
    server) chardev="socket,id=c0,path=$SOCK,server=on" ;;
    reconnect) chardev="socket,id=c0,path=$SOCK,reconnect=$RECONNECT" ;;
    *) echo "run-guest: bad SOCK_MODE $SOCK_MODE" >&2; exit 2 ;;
  esac
  netdev="vhost-user,id=n0,chardev=c0"
  # TRAP (test-rig-facts §4.3): Debian's QEMU 7.2.22 SIGSEGVs under TCG as soon as the guest
  # sets DRIVER_OK on a vhost-user virtio-net with MSI-X (vhost_net_start ->
  # msix_set_vector_notifiers: no KVM irqfds, the vector-notifier path crashes). vectors=0
  # makes the device use legacy INTx and avoids that path entirely. Never drop it here.
  # romfile= (empty): no iPXE option ROM. We boot with -kernel, so the ROM only costs boot
  # time (SeaBIOS runs iPXE's PCI init under TCG).
  device="virtio-net-pci,netdev=n0,vectors=0,romfile=,mac=$MAC"
  if ((QUEUES > 1)); then
    netdev+=",queues=$QUEUES"
    # mq=on only advertises VIRTIO_NET_F_MQ; Linux then enables min(QUEUES, online CPUs) pairs,
    # so use --smp to actually exercise more than one pair.
    device+=",mq=on"
  fi
  [[ $PACKED == 1 ]] && device+=",packed=on"
  [[ $MRG == 0 ]] && device+=",mrg_rxbuf=off"
  [[ -n $DEV_OPTS ]] && device+=",$DEV_OPTS"
  [[ $IOMMU == 1 ]] && device+=",disable-legacy=on,iommu_platform=on,ats=on"
  args+=(-chardev "$chardev" -netdev "$netdev" -device "$device")
else
  args+=(-nic none)
fi

if [[ $HOSTROOT == 1 ]]; then
  # multidevs=remap: / spans several host devices; without it 9p warns and inode numbers may
  # collide. readonly: the guest must never write the host tree.
  args+=(-virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
fi
[[ -n $QMP ]] && args+=(-qmp "unix:$QMP,server=on,wait=off")
# Migration destination: QEMU builds the machine (and connects its vhost-user chardev, so the
# backend sees the feature negotiation at once) but does not run it until the incoming state has
# loaded. Guest RAM stays the share=on memfd above: vhost-user migration needs it shared on both
# sides (the backend maps it; postcopy places pages into it with userfaultfd).
[[ -n $INCOMING ]] && args+=(-incoming "$INCOMING")

# console=ttyS0: -nographic wires the first serial port to stdio. panic=-1: reboot at once on
# a guest panic, which -no-reboot turns into a QEMU exit (no hung test). quiet: the kernel log
# over an emulated UART costs ~0.5 s under TCG (test-rig-facts §4.2).
append="console=ttyS0 panic=-1 quiet ${VUT[*]:-} $APPEND"
args+=(-append "$(echo $append)")
args+=("${EXTRA[@]}")

cmd=("$QEMU" "${args[@]}")
# Pinning: with 2 host cores, QEMU's TCG vCPU thread and a busy-polling backend must not share
# a core (test-rig-facts §3.2: same-core pollers collapse by >500x).
[[ -n $CPUS ]] && cmd=(taskset -c "$CPUS" "${cmd[@]}")

if [[ $DRY_RUN == 1 ]]; then
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
exec "${cmd[@]}"
