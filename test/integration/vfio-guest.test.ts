/**
 * The VFIO port end to end, inside a QEMU 7.2 guest (test-rig-facts §5, §6): q35 + intel-iommu
 * (run-guest.sh --iommu: intel_iommu=on), an e1000e whose host side is `-netdev dgram` on 127.0.0.1, the
 * host root over 9p. In the guest, qemu-scripts/guest-tools/vfio-guest.sh binds the e1000e to vfio-pci
 * (qemu-scripts/vfio-bind.sh), starts `vhost-user-ts net --port vfio:<addr>` and a scripted vhost-user
 * frontend (vfio-frontend.ts) that sends N frames; this test receives them on the dgram socket (count,
 * order, length and every byte checked), then injects M frames that the frontend must receive intact.
 * The same with a modern virtio-net-pci (disable-legacy=on, iommu_platform=on: test-rig-facts §5) in place of
 * the e1000e, driven by backend/net/ports/vfio/virtio-net.ts in poll mode, with split and with packed rings.
 */
import test, { type ExecutionContext } from 'ava';
import dgram from 'node:dgram';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { guestAvailable, startGuest } from '../helpers/qemu.ts';
import { checkFrame, makeFrame } from '../../qemu-scripts/guest-tools/vfio-frames.ts';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const N_OUT = 50;
const N_IN = 50;

async function bindUdp(): Promise<dgram.Socket> {
  const s = dgram.createSocket('udp4');
  await new Promise<void>((resolve, reject) => {
    s.once('error', reject);
    s.bind(0, '127.0.0.1', () => resolve());
  });
  return s;
}

/** A UDP port that was free a moment ago (QEMU binds it as the netdev's local end). */
async function freeUdpPort(): Promise<number> {
  const s = await bindUdp();
  const p = s.address().port;
  await new Promise<void>((r) => s.close(() => r()));
  return p;
}

const hasGuest = guestAvailable();
// Serial: two TCG guests pinned to the same core at once slow each other past the guest kernel's timer check.
const vfioTest = hasGuest ? test.serial : test.skip;

type Nic = { kind: 'e1000e'; mode: 'irq' | 'poll' } | { kind: 'virtio'; packed: boolean };

async function runE1000e(t: ExecutionContext, mode: 'irq' | 'poll'): Promise<void> {
  return runNic(t, { kind: 'e1000e', mode });
}

async function runNic(t: ExecutionContext, nic: Nic): Promise<void> {
  const mode = nic.kind === 'e1000e' ? nic.mode : 'poll';
  t.timeout(150_000);
  const host = await bindUdp();
  t.teardown(() => host.close());
  const qemuPort = await freeUdpPort();
  const hostPort = host.address().port;

  const got: number[] = [];
  const errors: string[] = [];
  let injected = false;
  const allOut = new Promise<void>((resolve) => {
    host.on('message', (msg) => {
      const r = checkFrame('o', new Uint8Array(msg.buffer, msg.byteOffset, msg.length));
      if (typeof r === 'string') errors.push(r);
      else got.push(r);
      if (got.length + errors.length === N_OUT) resolve();
    });
  });

  const g = startGuest({
    iommu: true,
    hostRoot: true,
    cpus: '0',
    // With intel-iommu's interrupt remapping the kernel panics ("timer doesn't work through Interrupt-remapped
    // IO-APIC") when TCG is too slow for its boot-time timer check (a loaded host): skip that check.
    append: 'no_timer_check',
    // The repository is bound at /mnt in the guest (guest-init vut.repo): a checkout under /tmp would
    // otherwise be hidden by the guest's tmpfs on /host/tmp.
    vut: { hostbind: 1, repo: REPO, if: 'none0', run: `sh,/host/mnt/qemu-scripts/guest-tools/vfio-guest.sh,${nic.kind},${N_OUT},${N_IN},${mode}` },
    extraQemuArgs: [
      '-netdev',
      `dgram,id=ne,local.type=inet,local.host=127.0.0.1,local.port=${qemuPort},` +
        `remote.type=inet,remote.host=127.0.0.1,remote.port=${hostPort}`,
      '-device',
      nic.kind === 'e1000e'
        ? 'e1000e,netdev=ne,mac=52:54:00:00:e1:0e,romfile='
        : // The device sits behind the vIOMMU (iommu_platform=on): our DMA addresses are IOVAs. No MSI-X
          // vectors (poll mode), no option ROM; packed=on offers RING_PACKED, which the driver then takes.
          `virtio-net-pci,netdev=ne,mac=52:54:00:00:e1:0f,disable-legacy=on,iommu_platform=on,vectors=0,romfile=${nic.packed ? ',packed=on' : ''}`,
    ],
    maxLifetimeMs: 140_000,
    teardown: t.teardown,
  });

  const bdf = await g.waitFor(/VFIO-GUEST-BDF (\S+)/, 40_000);
  t.log(`${nic.kind} at ${bdf[1]}`);
  // Before vfio-bind.sh: the CLI names the problem and the fix.
  const nb = await g.waitFor(/VFIO-GUEST-NOTBOUND rc=(\d+) (.*)\n/, 40_000);
  t.is(nb[1], '1', nb[0]);
  const kernelDriver = nic.kind === 'e1000e' ? 'e1000e' : 'virtio-pci';
  t.regex(nb[2]!, new RegExp(`\\[VFIO_NOT_BOUND\\] 0000:00:0\\S+ is bound to ${kernelDriver}, not vfio-pci: run qemu-scripts/vfio-bind\\.sh`));
  await g.waitFor(/VFIO-FE-READY/, 60_000);
  await Promise.race([
    allOut,
    g.waitFor(/VFIO-GUEST-RESULT \d+/, 90_000).then((m) => {
      throw new Error(`guest finished before the host got its frames: ${m[0]}\n${g.tail()}`);
    }),
  ]);
  t.deepEqual(errors, [], 'every frame out of the e1000e is a well-formed test frame');
  t.deepEqual(got, Array.from({ length: N_OUT }, (_, i) => i), 'all frames, in order, none duplicated');

  // Host -> e1000e -> vhost-user-ts -> frontend.
  for (let i = 0; i < N_IN; i++) host.send(makeFrame('i', i), qemuPort, '127.0.0.1');
  injected = true;
  const fe = await g.waitFor(/VFIO-FE-RX (\d+) bad=(\d+) extra=(\d+)(.*)/, 60_000);
  t.true(injected);
  t.is(Number(fe[1]), N_IN, `frontend received all ${N_IN} frames: ${fe[0]}`);
  t.is(Number(fe[2]), 0, `no bad frames: ${fe[0]}`);
  t.is(Number(fe[3]), 0, 'no extra frames');
  const res = await g.waitFor(/VFIO-GUEST-RESULT (\d+)/, 30_000);
  t.is(res[1], '0', g.tail());
  // The backend's port stats (printed at SIGTERM) count what went through the NIC.
  const stats = /port vfio:\S+: (\{.*\})/.exec(g.output);
  t.truthy(stats, 'backend printed its port stats');
  const s = JSON.parse(stats![1]!) as { txFrames: number; rxFrames: number };
  t.is(s.txFrames, N_OUT);
  t.is(s.rxFrames, N_IN);
  t.is(got.length, N_OUT, 'no frame arrived at the host after the count was taken');
  if (nic.kind === 'e1000e') {
    t.regex(g.output, new RegExp(`e1000e mac 52:54:00:00:e1:0e, link up, ${mode} mode`), 'MAC read from the NIC, link up, mode as asked');
  } else {
    // MAC from the device cfg, link from VIRTIO_NET_F_STATUS, the ring layout negotiated.
    t.regex(g.output, new RegExp(`virtio-net mac 52:54:00:00:e1:0f, link up, poll mode, ${nic.packed ? 'packed' : 'split'} rings`));
  }
}

vfioTest('e1000e via VFIO (MSI interrupts): frontend frames reach the host, host frames reach the frontend', (t) =>
  runE1000e(t, 'irq'));
vfioTest('e1000e via VFIO (poll mode): frontend frames reach the host, host frames reach the frontend', (t) =>
  runE1000e(t, 'poll'));
vfioTest('virtio-net-pci via VFIO (split rings, poll): frontend frames reach the host, host frames reach the frontend', (t) =>
  runNic(t, { kind: 'virtio', packed: false }));
vfioTest('virtio-net-pci via VFIO (packed rings, poll): frontend frames reach the host, host frames reach the frontend', (t) =>
  runNic(t, { kind: 'virtio', packed: true }));
