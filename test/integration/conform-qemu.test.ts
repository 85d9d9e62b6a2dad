/**
 * `vhost-user-ts conform` against QEMU 7.2 guests (issue 7): the conform backend serves the guest's
 * virtio-net with a TAP port in a network namespace; the guest pings the namespace, the namespace pings
 * the guest, QEMU is stopped; the report's rule outcomes must equal test/expected/conform/qemu-<variant>.json
 * (UPDATE_EXPECTED=1 rewrites them: review the diff). QEMU on cpu 0, the backend on cpu 1.
 *
 *   guest eth0 10.0.2.15 --virtio/vhost-user--> conform backend --tap--> netns 10.0.2.1
 *
 * Variants: split, packed, mq (2 queue pairs, 2 vCPUs), iommu (Intel vIOMMU, `--probe iotlb`: our IOTLB
 * miss for a mapped ring IOVA must be answered by an UPDATE and the ack) and reconnect (QEMU's chardev
 * reconnect=1 and `--probe reconnect`: the backend drops the first connection, QEMU must come back and set
 * the device up again; the namespace then pings the guest over the new connection).
 * Rules that fail against QEMU are QEMU deviations, listed in spec-notes/conformance.md "Findings".
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { guestAvailable, startGuest, type GuestOptions } from '../helpers/qemu.ts';
import { startBackend } from '../helpers/backend.ts';
import { compareExpected, readReport } from '../helpers/conform-expected.ts';

const canRun = guestAvailable() && existsSync('/dev/net/tun') && process.getuid?.() === 0;
const qemuTest = canRun ? test.serial : test.serial.skip;
const dir = mkdtempSync(join(tmpdir(), 'vut-conform-qemu-'));
const ns = `vutcq${process.pid}`;
const sh = (cmd: string, args: string[]) => execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
test.before(() => {
  if (!canRun) return;
  try {
    sh('ip', ['netns', 'del', ns]);
  } catch {
    /* none */
  }
  sh('ip', ['netns', 'add', ns]);
});
test.after.always(() => {
  try {
    sh('ip', ['netns', 'del', ns]);
  } catch {
    /* not created */
  }
  if (!process.env['KEEP_CONFORM']) rmSync(dir, { recursive: true, force: true });
});

async function until(what: string, ms: number, f: () => boolean): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error(`timeout: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

interface Variant {
  name: string;
  guest: GuestOptions;
  queues: number;
  probes: string;
  /** Rules that must pass whatever else the expected file says (what the variant is for). */
  mustPass: string[];
}

const VARIANTS: Variant[] = [
  { name: 'split', guest: {}, queues: 1, probes: 'none', mustPass: [] },
  { name: 'packed', guest: { packed: true }, queues: 1, probes: 'none', mustPass: ['VU-VQ-008'] },
  { name: 'iommu', guest: { iommu: true }, queues: 1, probes: 'iotlb', mustPass: ['VU-PRB-001', 'VU-BCH-001', 'VU-BCH-002'] },
  { name: 'mq', guest: { queues: 2, smp: 2 }, queues: 2, probes: 'none', mustPass: ['VU-RING-006'] },
  { name: 'reconnect', guest: { sockMode: 'reconnect', reconnect: 1 }, queues: 1, probes: 'reconnect', mustPass: ['VU-RCN-001'] },
];

VARIANTS.forEach((v, i) => {
  qemuTest(`conform: QEMU 7.2 guest, ${v.name}`, async (t) => {
    t.timeout(90_000);
    const tap = `vutc${i}`;
    const sock = join(dir, `${v.name}.sock`);
    const json = join(dir, `${v.name}.json`);
    const be = await startBackend(
      [
        'conform', '--socket', sock, '--queues', String(v.queues), '--port', `tap:${tap}`, '--report', json,
        '--probe', v.probes, '--frontend', `QEMU 7.2 ${v.name}`,
      ],
      { core: 1, netns: ns, waitSockets: [sock] },
    );
    t.teardown(() => be.stop().then(() => undefined));
    await until('tap device up in the netns', 5000, () => {
      try {
        return sh('ip', ['netns', 'exec', ns, 'ip', 'link', 'show', tap]).includes('UP');
      } catch {
        return false;
      }
    });
    sh('ip', ['netns', 'exec', ns, 'ip', 'addr', 'add', '10.0.2.1/24', 'dev', tap]);

    const g = startGuest({
      sock,
      cpus: '0',
      ...v.guest,
      // The reconnect probe may drop the connection while the guest pings: one reply is enough there.
      vut: { ip: '10.0.2.15/24', ping: v.name === 'reconnect' ? '10.0.2.1,5,1' : '10.0.2.1,3', hold: 'inf' },
      teardown: t.teardown,
      maxLifetimeMs: 85_000,
    });
    const ok = await g.waitFor(/VUT-PING-(OK|FAIL) (\S+)/, 60_000);
    t.is(ok[1], 'OK', `guest ping: ${ok[0]}\n${g.tail()}`);
    await g.waitFor(/VUT-HOLD/, 10_000);
    if (v.name === 'reconnect') {
      // The probe dropped connection 1; QEMU is back on connection 2 with a started ring.
      await be.waitForLog(/frontend connected \(connection 2\)/, 25_000);
    }
    // The namespace pings the guest (on the second connection for reconnect: the datapath is back).
    const pingBack = () => sh('ip', ['netns', 'exec', ns, 'busybox', 'ping', '-c', '3', '-W', '3', '10.0.2.15']);
    let out = '';
    for (let attempt = 0; attempt < 4 && !/3 packets received/.test(out); attempt++) {
      try {
        out = pingBack();
      } catch (e) {
        out = String((e as { stdout?: string }).stdout ?? e);
      }
    }
    t.regex(out, /3 packets received/);
    await g.kill();
    await be.waitForLog(/frontend gone/, 5000);
    t.is(await be.stop(), 0);
    const rep = readReport(json);
    t.is(rep.connections, v.name === 'reconnect' ? 2 : 1);
    const got = compareExpected(t, `qemu-${v.name}`, rep);
    for (const id of ['VU-NEG-001', 'VU-MEM-001', 'VU-RING-001', 'VU-RING-005', 'VU-VQ-003', ...v.mustPass]) t.is(got.rules[id], 'pass', id);
  });
});
