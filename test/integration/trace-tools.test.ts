/**
 * Tracing tools against a real peer: DPDK 22.11 virtio-user (testpmd A) reaches vhost-user-ts through
 * `vhost-user-ts proxy`; a second testpmd (B) sits on the backend's other port. A sends 64 frames, B
 * receives them (and echoes them back to A). Then: the proxy's trace holds the whole conversation in both directions with the fds'
 * kinds and matches what the backend recorded; the backend's ring trace exports to pcapng that tshark
 * reads (64 UDP frames of 64 bytes); replay of the proxy's recording against a fresh backend gets the
 * same replies.
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { quitAll, startTestpmd, type Testpmd } from '../helpers/testpmd.ts';
import { startBackend, type Backend } from '../helpers/backend.ts';
import { chainDetail, readTraceFile, type TraceMessageRecord } from '../../protocol/index.ts';

const BIN = fileURLToPath(new URL('../../bin/vhost-user-ts.js', import.meta.url));
const HAVE_TESTPMD = existsSync('/usr/bin/dpdk-testpmd');
let HAVE_TSHARK = false;
try {
  execFileSync('tshark', ['--version'], { stdio: 'ignore' });
  HAVE_TSHARK = true;
} catch {
  /* not installed: qemu-scripts/setup.sh installs it */
}
const dpdkTest = HAVE_TESTPMD && HAVE_TSHARK ? test.serial : test.serial.skip;
const dir = mkdtempSync(join(tmpdir(), 'vut-trtools-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));
const cli = (...args: string[]) => execFileSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 30000 });

dpdkTest('DPDK virtio-user through the proxy: both directions recorded with fds, pcapng read by tshark, replay reproduces the replies', async (t) => {
  t.timeout(90_000);
  const s0 = join(dir, 's0.sock');
  const s1 = join(dir, 's1.sock');
  const p0 = join(dir, 'p0.sock');
  const beTrace = join(dir, 'be.vutrace');
  const pxTrace = join(dir, 'px.vutrace');
  const procs: Backend[] = [];
  const tps: Testpmd[] = [];
  t.teardown(async () => {
    await quitAll(...tps);
    for (const p of procs) await p.stop();
  });
  const be = await startBackend(['net', '--socket', s0, '--port', `vhost:${s1}`, '--trace', beTrace, '--trace-rings', '--snaplen', '128'], {
    core: 1,
    waitSockets: [s0, s1],
  });
  procs.push(be);
  const px = await startBackend(['proxy', '--listen', p0, '--connect', s0, '--trace', pxTrace], { core: 1, waitSockets: [p0] });
  procs.push(px);

  const common = { role: 'virtio-user' as const, fwdMode: 'io' as const, fwdCore: 0, mainCore: 1, noFlushRx: true, mrg: true };
  const a = await startTestpmd({ ...common, socket: p0 });
  tps.push(a);
  const b = await startTestpmd({ ...common, socket: s1 });
  tps.push(b);
  await Promise.all([a.waitForLinkUp(10000), b.waitForLinkUp(10000)]);
  await px.waitForLog(/proxy#1: frontend connected, backend connected/, 5000);

  const aTx = (await a.sendBursts(2)).find((p) => p.port === 0)!;
  t.is(aTx.txPackets, 64);
  await b.start();
  await b.waitForRxPackets(64, { timeoutMs: 5000, quietMs: 200 });
  const bS = (await b.stop()).find((p) => p.port === 0)!;
  t.is(bS.rxPackets, 64, 'every frame crossed proxy-negotiated rings and the backend');
  await quitAll(...tps);
  tps.length = 0;
  await px.waitForLog(/proxy#1: closed/, 5000);
  t.is(await px.stop(), 0);
  t.is(await be.stop(), 0);

  // The proxy saw the whole conversation, both directions, with fds and their kinds.
  const pxMsgs = (await readTraceFile(pxTrace)) as TraceMessageRecord[];
  const beMsgs = (await readTraceFile(beTrace)).filter((r): r is TraceMessageRecord => r.kind !== 'ring' && r.endpoint === s0);
  const sig = (r: TraceMessageRecord) => `${r.channel} ${r.dir} ${r.name} fds=${r.fdCount}`;
  t.deepEqual(pxMsgs.map(sig), beMsgs.map(sig), 'the backend got exactly what the frontend sent, and vice versa');
  t.true(pxMsgs.some((r) => r.dir === 'tx') && pxMsgs.some((r) => r.dir === 'rx'));
  t.deepEqual(pxMsgs.find((r) => r.name === 'SET_MEM_TABLE')?.fdKinds, ['memfd']);
  t.deepEqual(pxMsgs.find((r) => r.name === 'SET_VRING_KICK')?.fdKinds, ['eventfd']);
  t.deepEqual(pxMsgs.find((r) => r.name === 'SET_VRING_CALL')?.fdKinds, ['eventfd']);
  t.false(pxMsgs.some((r) => r.error !== undefined));
  const printed = cli('trace', 'print', pxTrace, '--message', 'SET_MEM_TABLE');
  t.regex(printed, /\[proxy#1\]\s+rx → SET_MEM_TABLE need_reply nregions=1 .* fds=1\(memfd\)/);

  // Ring events: A's TX chains on s0 ring 1, the same frames into B's RX ring on s1.
  const recs = await readTraceFile(beTrace);
  const chains = (ep: string, dir: 'tx' | 'rx') =>
    recs.filter((r) => r.endpoint === ep).map(chainDetail).filter((c) => c !== null && c.dir === dir);
  t.is(chains(s0, 'tx').length, 64);
  t.is(chains(s1, 'rx').length, 64);
  t.true(recs.some((r) => r.kind === 'ring' && r.event === 'kick' && r.endpoint === s0 && r.queue === 1));

  // pcapng, read by tshark: A's frames as sent (txonly: 64-byte IPv4/UDP).
  const pcap = join(dir, 'a-tx.pcapng');
  t.regex(cli('trace', 'export', beTrace, '--endpoint', s0, '--ring', '1', '--direction', 'tx', '--pcapng', pcap), /wrote 64 frame\(s\) on 1 interface/);
  const fields = execFileSync('tshark', ['-r', pcap, '-T', 'fields', '-e', 'frame.len', '-e', 'ip.proto', '-e', 'frame.interface_name'], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  const rows = fields.trim().split('\n');
  t.is(rows.length, 64);
  t.true(rows.every((r) => /^64\t17\tq1-tx@/.test(r)), rows.slice(0, 3).join('\n'));
  const both = join(dir, 'all.pcapng');
  // Everything: A TX, B RX, B's echo (io fwd) TX, A RX: four rings, 64 frames each.
  t.regex(cli('trace', 'export', beTrace, '--pcapng', both), /wrote 256 frame\(s\) on 4 interface/);
  const count = execFileSync('tshark', ['-r', both, '-q', '-z', 'io,stat,0'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  t.regex(count, /\|\s+256\s+\|/);

  // Replay the proxy's recording against a fresh backend: every reply as recorded (ring positions
  // excepted: replay does not reproduce the traffic).
  const s2 = join(dir, 's2.sock');
  const fresh = await startBackend(['net', '--socket', s2], { core: 1, waitSockets: [s2] });
  procs.push(fresh);
  const out = cli('trace', 'replay', pxTrace, '--socket', s2, '--ignore', 'GET_VRING_BASE');
  t.regex(out, /replayed \d+ request\(s\) of proxy#1; \d+ repl(y|ies) compared; .* 0 divergence\(s\)/);
  const compared = Number(/; (\d+) repl/.exec(out)![1]);
  t.is(compared, pxMsgs.filter((r) => r.dir === 'tx').length, 'every recorded reply was compared');
});
