/**
 * `vhost-user-ts conform` against DPDK 22.11 virtio-user (dpdk-testpmd): the frontend connects, sets
 * the device up, sends 4 bursts of frames (txonly frames land on our TX ring; the device has no port,
 * so they are consumed and dropped), quits; the report's rule outcomes must equal the expected file
 * test/expected/conform/dpdk-<variant>.json. Backend on cpu 1, testpmd's forwarding lcore on cpu 0.
 */
import test from 'ava';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { quitAll, startTestpmd, type Testpmd } from '../helpers/testpmd.ts';
import { startBackend } from '../helpers/backend.ts';
import { compareExpected, readReport } from '../helpers/conform-expected.ts';

const HAVE_TESTPMD = existsSync('/usr/bin/dpdk-testpmd');
const dpdkTest = HAVE_TESTPMD ? test.serial : test.serial.skip;
const dir = mkdtempSync(join(tmpdir(), 'vut-conform-dpdk-'));
test.after.always(() => process.env['KEEP_CONFORM'] ? undefined : rmSync(dir, { recursive: true, force: true }));

for (const v of [
  { name: 'split', packed: false, queues: 1 },
  { name: 'packed', packed: true, queues: 1 },
  { name: 'mq', packed: false, queues: 2 },
]) {
  dpdkTest(`conform: DPDK 22.11 virtio-user, ${v.name}`, async (t) => {
    t.timeout(60_000);
    const sock = join(dir, `${v.name}.sock`);
    const json = join(dir, `${v.name}.json`);
    const html = join(dir, `${v.name}.html`);
    const be = await startBackend(
      ['conform', '--socket', sock, '--queues', String(v.queues), '--report', json, '--report', html, '--frontend', `DPDK 22.11 virtio-user ${v.name}`],
      { core: 1, waitSockets: [sock] },
    );
    let tp: Testpmd | undefined;
    t.teardown(async () => {
      await quitAll(tp);
      await be.stop();
    });
    tp = await startTestpmd({ role: 'virtio-user', socket: sock, packed: v.packed, queues: v.queues, fwdMode: 'io', fwdCore: 0, mainCore: 1 });
    await tp.waitForLinkUp(10_000);
    await tp.sendBursts(4);
    await new Promise((r) => setTimeout(r, 300)); // a few ring samples while the rings are up
    await quitAll(tp);
    tp = undefined;
    await be.waitForLog(/frontend gone/, 5000);
    t.is(await be.stop(), 0);
    const rep = readReport(json);
    t.is(rep.connections, 1);
    t.regex(readFileSync(html, 'utf8'), /<h1>vhost-user conformance report<\/h1>/);
    const got = compareExpected(t, `dpdk-${v.name}`, rep);
    // What the protocol itself must show for any run of this frontend: the negotiation and ring rules applied.
    for (const id of ['VU-NEG-001', 'VU-MEM-001', 'VU-RING-001', 'VU-RING-005']) t.is(got.rules[id], 'pass', id);
  });
}
