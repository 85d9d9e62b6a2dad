#!/bin/bash
# Build the tiny test guest: Debian's stock kernel + a busybox initramfs whose /init is
# qemu-scripts/guest-init.sh. Everything comes from Debian packages (no kernel build).
#
# Outputs (in $RIG_DIR, default <repo>/.rig/guest, gitignored):
#   vmlinuz         the kernel image
#   initramfs.gz    busybox-static + the modules below (+ deps) + /init + /bin/seqnet
#   seqnet          guest-tools/seqnet.c built static (the copy in the initramfs)
#   kernel-release  e.g. 6.1.0-56-amd64
#   debs/           the downloaded .debs (kept so a rebuild needs no network)
#
# Idempotent: does nothing if the outputs exist and are newer than guest-init.sh,
# guest-tools/seqnet.c and this script. RIG_FORCE=1 rebuilds. RIG_KEEP_KROOT=1 keeps the 400 MB extracted kernel tree.
#
# Needs: apt-get (download only, no root needed for that), dpkg-deb, gzip, busybox (host
# copy of busybox-static is not required: the one from the .deb is used for cpio/depmod).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
RIG_DIR=${RIG_DIR:-$REPO/.rig/guest}
INIT_SRC=$HERE/guest-init.sh
# Guest-side test tools, compiled on the host (static, so they need no libc in the initramfs).
SEQNET_SRC=$HERE/guest-tools/seqnet.c

# Modules the guest may need (test-rig-facts §4.2, §5): virtio-net for vhost-user, virtio
# console/9p for host access, e1000e + vfio for the VFIO scenario, tun/veth for in-guest
# plumbing. Dependencies are resolved below from each module's own "depends=" modinfo.
MODULES=${RIG_MODULES:-"virtio_pci virtio_net virtio_console 9pnet_virtio 9p e1000e e1000 vfio vfio_iommu_type1 vfio-pci uio_pci_generic tun veth af_packet"}

t0=$(date +%s.%N)
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
say() { echo "build-guest: $*" >&2; }

up_to_date() {
  local f
  for f in vmlinuz initramfs.gz kernel-release; do [[ -s $RIG_DIR/$f ]] || return 1; done
  [[ $RIG_DIR/initramfs.gz -nt $INIT_SRC && $RIG_DIR/initramfs.gz -nt ${BASH_SOURCE[0]} ]] || return 1
  [[ $RIG_DIR/initramfs.gz -nt $SEQNET_SRC ]] || return 1
}

if [[ ${RIG_FORCE:-0} != 1 ]] && up_to_date; then
  say "up to date in $RIG_DIR (kernel $(cat "$RIG_DIR/kernel-release")); RIG_FORCE=1 to rebuild ($(elapsed) s)"
  exit 0
fi

mkdir -p "$RIG_DIR/debs"
DEBS=$RIG_DIR/debs

# --- 1. the .debs -----------------------------------------------------------------------
# The kernel is whatever linux-image-amd64 depends on *now* (one package). Never glob
# linux-image-6.1.0-*-amd64: apt expands that to ~30 kernels, 1.6 GB (test-rig-facts §2).
# Once downloaded, the chosen kernel deb is reused (reproducible rig) unless RIG_FORCE=1
# with an emptied debs/ dir.
kdeb=$(ls "$DEBS"/linux-image-*-amd64_*.deb 2>/dev/null | head -n1 || true)
if [[ -z $kdeb ]]; then
  kpkg=$(apt-cache depends linux-image-amd64 | awk '$1=="Depends:" && $2 ~ /^linux-image-[0-9]/ {print $2; exit}')
  [[ -n $kpkg ]] || { say "cannot resolve the kernel package of linux-image-amd64 (apt-get update?)"; exit 1; }
  say "downloading $kpkg"
  # apt-get download as root warns that _apt cannot write here; harmless.
  (cd "$DEBS" && apt-get download "$kpkg" 2> >(grep -v 'unsandboxed' >&2))
  kdeb=$(ls "$DEBS"/"$kpkg"_*.deb | head -n1)
fi
bdeb=$(ls "$DEBS"/busybox-static_*.deb 2>/dev/null | head -n1 || true)
if [[ -z $bdeb ]]; then
  say "downloading busybox-static"
  (cd "$DEBS" && apt-get download busybox-static 2> >(grep -v 'unsandboxed' >&2))
  bdeb=$(ls "$DEBS"/busybox-static_*.deb | head -n1)
fi
say "kernel deb $(basename "$kdeb"), busybox deb $(basename "$bdeb") ($(elapsed) s)"

# --- 2. extract -------------------------------------------------------------------------
WORK=$RIG_DIR/work
rm -rf "$WORK"
mkdir -p "$WORK/kroot" "$WORK/bb" "$WORK/root"
dpkg-deb -x "$kdeb" "$WORK/kroot"
dpkg-deb -x "$bdeb" "$WORK/bb"
BB=$WORK/bb/bin/busybox
[[ -x $BB ]] || { say "no bin/busybox in $bdeb"; exit 1; }
KREL=$(ls "$WORK/kroot/lib/modules" | head -n1)
MODDIR=$WORK/kroot/lib/modules/$KREL
say "extracted kernel $KREL ($(elapsed) s)"

# --- 3. modules + dependencies ----------------------------------------------------------
# Debian's .deb ships no modules.dep (its postinst runs depmod), and running busybox depmod
# over all ~4000 modules takes ~7 s (test-rig-facts §2). Each .ko carries its hard deps in
# the .modinfo section as "depends=a,b" (what depmod itself uses), so resolve just our
# closure from that. Module names treat '-' and '_' as the same.
declare -A KO=()      # normalised name -> path
while IFS= read -r p; do
  n=${p##*/}; n=${n%.ko}; n=${n//-/_}
  KO[$n]=$p
done < <(find "$MODDIR/kernel" -name '*.ko')

declare -A SEEN=()
ORDER=()              # dependencies before dependants (insmod order)
visit() {
  local n=${1//-/_} dep deps
  [[ -n ${SEEN[$n]:-} ]] && return 0
  SEEN[$n]=1
  local p=${KO[$n]:-}
  if [[ -z $p ]]; then
    # Built into this kernel (e.g. af_packet on some configs): nothing to ship.
    if grep -q "/${n}.ko\$\|/${1}.ko\$" "$MODDIR/modules.builtin" 2>/dev/null; then return 0; fi
    say "module $1 not found in $KREL"; return 1
  fi
  deps=$(tr '\0' '\n' < "$p" | sed -n 's/^depends=//p' | head -n1)
  for dep in ${deps//,/ }; do visit "$dep"; done
  ORDER+=("$n")
}
for m in $MODULES; do visit "$m"; done

R=$WORK/root
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,host,mnt,root,var/run} "$R/lib/modules/$KREL"
for n in "${ORDER[@]}"; do
  p=${KO[$n]}
  rel=${p#"$MODDIR"/}
  mkdir -p "$R/lib/modules/$KREL/$(dirname "$rel")"
  cp "$p" "$R/lib/modules/$KREL/$rel"
  echo "$rel"
done > "$R/lib/modules/$KREL/vut-load-order"
cp "$MODDIR"/modules.builtin "$MODDIR"/modules.order "$R/lib/modules/$KREL/" 2>/dev/null || true
# modules.dep for the few shipped modules, so `modprobe vfio-pci` works inside the guest too.
"$BB" depmod -b "$R" "$KREL"
say "${#ORDER[@]} modules: ${ORDER[*]} ($(elapsed) s)"

# --- 4. busybox + /init -----------------------------------------------------------------
cp "$BB" "$R/bin/busybox"
# Applet links: relative symlinks so the tree is relocatable.
for a in $("$BB" --list-full); do
  [[ $a == bin/busybox ]] && continue
  d=${a%/*}; slashes=${d//[^\/]/}; up=..
  for ((i = 0; i < ${#slashes}; i++)); do up=$up/..; done
  ln -sf "$up/bin/busybox" "$R/$a"
done
install -m 0755 "$INIT_SRC" "$R/init"
# /bin/seqnet: sequence-numbered UDP sender/receiver (loss/duplication tests; host twin:
# test/helpers/seqnet.ts). Built static with the host's gcc + libc.a (libc6-dev).
if command -v gcc >/dev/null; then
  gcc -static -Os -s -Wall -Werror -o "$RIG_DIR/seqnet" "$SEQNET_SRC"
  install -m 0755 "$RIG_DIR/seqnet" "$R/bin/seqnet"
else
  say "WARNING: no gcc on the host: the guest has no /bin/seqnet (apt-get install gcc libc6-dev)"
fi
echo "root:x:0:0:root:/root:/bin/sh" > "$R/etc/passwd"
echo "root:x:0:" > "$R/etc/group"
echo "vut-guest" > "$R/etc/hostname"
# Minimal udhcpc hook for vut.dhcp=1 (busybox's default script path).
mkdir -p "$R/usr/share/udhcpc"
cat > "$R/usr/share/udhcpc/default.script" <<'EOF'
#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface"
    echo "VUT-DHCP $ip/${mask:-24}" ;;
esac
exit 0
EOF
chmod 0755 "$R/usr/share/udhcpc/default.script"
# /dev/console so the kernel can hand /init a console before devtmpfs is mounted (needs
# CAP_MKNOD; guest-init.sh reopens /dev/console after mounting devtmpfs anyway).
mknod -m 600 "$R/dev/console" c 5 1 2>/dev/null || true
mknod -m 666 "$R/dev/null" c 1 3 2>/dev/null || true

# --- 5. cpio + gzip ---------------------------------------------------------------------
cp "$WORK/kroot/boot/vmlinuz-$KREL" "$RIG_DIR/vmlinuz.tmp"
(cd "$R" && find . | LC_ALL=C sort | "$BB" cpio -o -H newc 2>/dev/null) | gzip -1 > "$RIG_DIR/initramfs.gz.tmp"
mv "$RIG_DIR/vmlinuz.tmp" "$RIG_DIR/vmlinuz"
mv "$RIG_DIR/initramfs.gz.tmp" "$RIG_DIR/initramfs.gz"
echo "$KREL" > "$RIG_DIR/kernel-release"
printf '%s\n' "${ORDER[@]}" > "$RIG_DIR/modules.txt"

[[ ${RIG_KEEP_KROOT:-0} == 1 ]] || rm -rf "$WORK"
say "built $RIG_DIR/vmlinuz ($(du -h "$RIG_DIR/vmlinuz" | cut -f1)) + initramfs.gz ($(du -h "$RIG_DIR/initramfs.gz" | cut -f1)) in $(elapsed) s"
