#!/bin/bash
# One-shot host setup for the QEMU/DPDK test rig on Debian 12 (run as root):
#   1. apt-get update + install the packages below (skipped if all are installed already)
#   2. build-guest.sh (skipped by itself if the guest is up to date)
# Safe to re-run; the second run takes well under a second.
#
# Env: RIG_DIR (guest output dir, see build-guest.sh), SETUP_SKIP_GUEST=1 (packages only).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# qemu-system-x86: QEMU 7.2 (Depends pull seabios + ipxe-qemu firmware; the GUI/gstreamer
#   Recommends are not needed with -nographic, hence --no-install-recommends).
# dpdk-dev: the only Debian package with /usr/bin/dpdk-testpmd, our reference vhost-user peer
#   (the `dpdk` package has no testpmd; test-rig-facts §2).
# busybox-static: host-side copy of the guest userland (build-guest.sh uses the .deb itself,
#   this one gives the host cpio/depmod/ping, which Debian's minimal image lacks).
# iproute2: host-side `ip` (netns/tap plumbing in tests).
# util-linux: taskset (CPU pinning of QEMU/backends). gzip: initramfs compression.
# tshark: reads the pcapng files `trace export` writes (test/integration/trace-tools.test.ts); with
#   DEBIAN_FRONTEND=noninteractive its debconf question (non-root capture group) takes the default.
PKGS=(qemu-system-x86 dpdk-dev busybox-static iproute2 util-linux gzip gcc libc6-dev tshark)

t0=$(date +%s.%N)
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
say() { echo "setup: $*" >&2; }

[[ $(id -u) == 0 ]] || { say "must run as root (apt-get install)"; exit 1; }

missing=()
for p in "${PKGS[@]}"; do
  st=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
  [[ $st == ii* ]] || missing+=("$p")
done

if ((${#missing[@]})); then
  say "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  say "packages installed ($(elapsed) s)"
else
  say "packages already installed: ${PKGS[*]} ($(elapsed) s)"
fi

for b in qemu-system-x86_64 dpdk-testpmd busybox taskset; do
  command -v "$b" >/dev/null || { say "$b not on PATH after install"; exit 1; }
done
say "$(qemu-system-x86_64 --version | head -n1)"

# apt-get download in build-guest.sh needs package lists; a fresh container may have none
# even if all packages above were pre-installed.
if ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
  say "no package lists for linux-image-amd64: apt-get update"
  apt-get update -q
fi

if [[ ${SETUP_SKIP_GUEST:-0} != 1 ]]; then
  "$HERE/build-guest.sh"
fi
say "done in $(elapsed) s"
