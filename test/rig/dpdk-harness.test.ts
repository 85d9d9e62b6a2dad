/**
 * Validates test/helpers/testpmd.ts against DPDK itself (DPDK ⇄ DPDK, the harness on both sides), so that
 * later failures against our backend can be blamed on the backend and not on the harness.
 *
 * - pair: net_vhost (io fwd, fwd lcore on cpu 1) ⇄ virtio-user (fwd lcore on cpu 0), split ring, mrg on/off;
 *   bounded echo with exact counts, then a timed txonly window with the accounting identities checked.
 *   Both sides use `--no-huge -m 512`: frames crossing proves net_vhost can map virtio-user's memfd memory.
 * - server mode: virtio-user `server=1` (packed ring) ⇄ net_vhost `client=1`, then the backend quits and a new
 *   one reconnects.
 * - the two-socket topology the backend tests use: frontend A (s0) → backend (port0→port1 io) → frontend B (s1).
 */
import test, { type ExecutionContext } from 'ava';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseFwdStats, parseNicStats, quitAll, startTestpmd, type PortStats, type Testpmd } from '../helpers/testpmd.ts';

const HAVE_TESTPMD = existsSync('/usr/bin/dpdk-testpmd');
const dpdkTest = HAVE_TESTPMD ? test.serial : test.serial.skip;

const dir = mkdtempSync(join(tmpdir(), 'vut-dpdk-'));
const started: Testpmd[] = [];

test.after.always(async () => {
  await quitAll(...started);
  rmSync(dir, { recursive: true, force: true });
});

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function track(t: ExecutionContext, ...tps: Testpmd[]): void {
  started.push(...tps);
  t.teardown(() => quitAll(...tps));
}

function port(stats: PortStats[], n: number): PortStats {
  const s = stats.find((p) => p.port === n);
  if (!s) throw new Error(`no stats for port ${n} in ${JSON.stringify(stats)}`);
  return s;
}

test('parsers: stop forward statistics and show port stats', (t) => {
  const stop = `Telling cores to stop...
Waiting for lcores to finish...

  ---------------------- Forward statistics for port 0  ----------------------
  RX-packets: 18720          RX-dropped: 0             RX-total: 18720
  TX-packets: 0              TX-dropped: 0             TX-total: 0
  ----------------------------------------------------------------------------

  ---------------------- Forward statistics for port 1  ----------------------
  RX-packets: 0              RX-dropped: 3             RX-total: 3
  RX-error: 2
  RX-nombufs:  5
  TX-packets: 99040          TX-dropped: 11015648      TX-total: 11114688
  ----------------------------------------------------------------------------

  +++++++++++++++ Accumulated forward statistics for all ports+++++++++++++++
  RX-packets: 18720          RX-dropped: 3             RX-total: 18723
  TX-packets: 99040          TX-dropped: 11015648      TX-total: 11114688
  ++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++

Done.
`;
  const s = parseFwdStats(stop);
  t.deepEqual(s, [
    { port: 0, rxPackets: 18720, rxDropped: 0, rxTotal: 18720, txPackets: 0, txDropped: 0, txTotal: 0, rxErrors: 0, rxNombufs: 0 },
    { port: 1, rxPackets: 0, rxDropped: 3, rxTotal: 3, txPackets: 99040, txDropped: 11015648, txTotal: 11114688, rxErrors: 2, rxNombufs: 5 },
  ]);
  const nic = parseNicStats(`
  ######################## NIC statistics for port 1  ########################
  RX-packets: 128        RX-missed: 7          RX-bytes:  8192
  RX-errors: 1
  RX-nombuf:  2         
  TX-packets: 64         TX-errors: 3          TX-bytes:  4096

  Throughput (since last show)
  Rx-pps:      3787374          Rx-bps:   1939135488
  Tx-pps:      3787182          Tx-bps:   1939037184
  ############################################################################
`);
  t.deepEqual(nic, {
    port: 1, rxPackets: 128, rxMissed: 7, rxBytes: 8192, rxErrors: 1, rxNombuf: 2, txPackets: 64, txErrors: 3,
    txBytes: 4096, rxPps: 3787374, rxBps: 1939135488, txPps: 3787182, txBps: 1939037184,
  });
  t.throws(() => parseNicStats('Invalid port 7'), { code: 'TESTPMD_PARSE' });
});

const pair = async (t: ExecutionContext, mrg: boolean) => {
  t.timeout(20_000);
  const t0 = Date.now();
  const sock = join(dir, `pair-${mrg ? 'mrg' : 'nomrg'}.sock`);
  // net_vhost listens (default): start it first. Forwarding lcores on different cpus.
  const vh = await startTestpmd({ role: 'vhost', socket: sock, fwdMode: 'io', fwdCore: 1 });
  track(t, vh);
  const vu = await startTestpmd({ role: 'virtio-user', socket: sock, mrg, fwdMode: 'rxonly', fwdCore: 0 });
  track(t, vu);
  await Promise.all([vh.waitForLinkUp(5000), vu.waitForLinkUp(5000)]);
  t.log(`both up, links up after ${Date.now() - t0} ms`);
  t.is(await vh.linkStatus(), 'up');

  // 1. Bounded echo: 4 bursts × 32 = 128 frames; vhost io-forwards them back; virtio-user (rxonly) counts.
  await vh.start();
  await vu.startTxFirst(4);
  await vu.waitForRxPackets(128, { timeoutMs: 5000 });
  const vuEcho = port(await vu.stop(), 0);
  const vhEcho = port(await vh.stop(), 0);
  t.is(vuEcho.txPackets, 128);
  t.is(vuEcho.txDropped, 0);
  t.is(vhEcho.rxPackets, 128);
  t.is(vhEcho.txPackets, 128);
  t.is(vuEcho.rxPackets, 128);
  const vhNic = await vh.portStats(0);
  t.is(vhNic.rxPackets, 128);
  t.is(vhNic.rxBytes, 128 * 64); // --txpkts=64; net_vhost counts frame bytes without the virtio-net header

  // 2. Timed txonly window (1.5 s). Everything the virtio-user put on its ring must reach net_vhost once the
  // sender stopped and the receiver drained: vh.rx == vu.tx exactly; net_vhost's echo toward the (not
  // receiving) txonly side is either delivered or counted as TX-dropped.
  await vh.start();
  await vu.cmd('set fwd txonly');
  await vu.start();
  await vh.portStats(0); // reset the "since last show" window
  await sleep(1000);
  const mid = await vh.portStats(0);
  await sleep(500);
  const vuTx = port(await vu.stop(), 0);
  await vh.waitForRxPackets(vhNic.rxPackets + vuTx.txPackets, { timeoutMs: 3000 });
  const vhRx = port(await vh.stop(), 0);
  t.true(vuTx.txPackets > 10_000, `only ${vuTx.txPackets} frames sent in 1.5 s`);
  t.is(vhRx.rxPackets, vuTx.txPackets);
  t.is(vhRx.txPackets + vhRx.txDropped, vhRx.rxPackets);
  t.true(mid.rxPps > 0);
  t.log(
    `mrg=${mrg}: txonly ${vuTx.txPackets} frames in 1.5 s (vu TX-dropped ${vuTx.txDropped}), ` +
      `vhost Rx-pps ${(mid.rxPps / 1e6).toFixed(2)} M; total ${Date.now() - t0} ms`,
  );
  await quitAll(vu, vh);
  t.is((await vh.exited).code, 0);
  t.is((await vu.exited).code, 0);
};

dpdkTest('pair: net_vhost ⇄ virtio-user, split ring, mrg_rxbuf on', pair, true);
dpdkTest('pair: net_vhost ⇄ virtio-user, split ring, mrg_rxbuf off', pair, false);

dpdkTest('server mode: virtio-user server=1 (packed) ⇄ net_vhost client=1, backend reconnect', async (t) => {
  t.timeout(20_000);
  const t0 = Date.now();
  const sock = join(dir, 'server.sock');
  // virtio-user's probe blocks in accept() until the backend connects: no prompt before that.
  const vuP = startTestpmd({ role: 'virtio-user', server: true, packed: true, socket: sock, fwdMode: 'rxonly', fwdCore: 0 });
  vuP.then((vu) => track(t, vu), () => undefined);
  await sleep(300);
  const vh = await startTestpmd({ role: 'vhost', server: false, socket: sock, fwdMode: 'io', fwdCore: 1 });
  track(t, vh);
  const vu = await vuP;
  t.regex(vu.log, /waiting for client connection/);
  await Promise.all([vh.waitForLinkUp(5000), vu.waitForLinkUp(5000)]);
  await vh.start();
  await vu.startTxFirst(4);
  await vu.waitForRxPackets(128, { timeoutMs: 5000 });
  const vuS = port(await vu.stop(), 0);
  const vhS = port(await vh.stop(), 0);
  t.is(vuS.txPackets, 128);
  t.is(vhS.rxPackets, 128);
  t.is(vuS.rxPackets, 128);

  // Backend goes away first: virtio-user survives (SIGPIPE ignored), its link goes down, and a new backend
  // can connect to the same listening virtio-user (what a backend-restart test needs).
  t.is((await vh.quit()).code, 0);
  await vu.waitForLink('down', 3000);
  const vh2 = await startTestpmd({ role: 'vhost', server: false, socket: sock, fwdMode: 'io', fwdCore: 1 });
  track(t, vh2);
  await Promise.all([vh2.waitForLinkUp(5000), vu.waitForLinkUp(5000)]);
  await vh2.start();
  await vu.startTxFirst(2);
  await vu.waitForRxPackets(128 + 64, { timeoutMs: 5000 });
  const vuS2 = port(await vu.stop(), 0);
  const vhS2 = port(await vh2.stop(), 0);
  t.is(vuS2.txPackets, 64);
  t.is(vhS2.rxPackets, 64);
  t.is(vuS2.rxPackets, 64);
  await quitAll(vu, vh2);
  t.false(vu.hasExited && (await vu.exited).code !== 0);
  t.log(`server mode + reconnect: ${Date.now() - t0} ms`);
});

dpdkTest('two-socket topology: A (s0) → backend port0→port1 → B (s1) on 2 cores', async (t) => {
  t.timeout(20_000);
  const t0 = Date.now();
  const s0 = join(dir, 's0.sock');
  const s1 = join(dir, 's1.sock');
  // Backend: one testpmd, two net_vhost ports, io fwd (paired: port0 <-> port1), poller on cpu 1.
  const be = await startTestpmd({ role: 'vhost', socket: [s0, s1], fwdMode: 'io', fwdCore: 1 });
  track(t, be);
  // Both frontends have their poller on cpu 0 (main lcores on cpu 1, asleep). They never spin at the same time
  // below except in phase 3, where A's tx_first yields between bursts.
  const [a, b] = await Promise.all([
    startTestpmd({ role: 'virtio-user', socket: s0, fwdMode: 'io', fwdCore: 0, mainCore: 1 }),
    startTestpmd({ role: 'virtio-user', socket: s1, fwdMode: 'rxonly', fwdCore: 0, mainCore: 1, noFlushRx: true }),
  ]);
  track(t, a, b);
  await Promise.all([be.waitForLinkUp(5000, 0), be.waitForLinkUp(5000, 1), a.waitForLinkUp(5000), b.waitForLinkUp(5000)]);
  t.log(`3 processes up, links up after ${Date.now() - t0} ms`);
  await be.start();

  // Phase 1, store-and-drain: B is stopped, frames wait in its RX ring (256 slots), then B starts and drains.
  // --no-flush-rx is what keeps them: testpmd's `start` otherwise frees what is already queued.
  let aS = port(await a.sendBursts(4), 0);
  t.is(aS.txPackets, 128);
  await be.waitForStat(128, { stat: 'txPackets', port: 1, timeoutMs: 3000 });
  let bBase = (await b.portStats(0)).rxPackets;
  await b.start();
  await b.waitForRxPackets(bBase + 128, { timeoutMs: 3000 });
  let bS = port(await b.stop(), 0);
  t.is(bS.rxPackets, 128);
  let beS = await be.stop();
  t.is(port(beS, 0).rxPackets, 128);
  t.is(port(beS, 1).txPackets, 128);
  t.is(port(beS, 1).txDropped, 0);

  // Phase 2, overflow of B's ring: 512 frames while B is stopped; exactly its 256 ring slots are kept, the
  // backend counts the rest as TX-dropped on port 1.
  await be.start();
  aS = port(await a.sendBursts(16), 0);
  t.is(aS.txPackets + aS.txDropped, 512);
  await be.waitForStat(aS.txPackets, { port: 0, timeoutMs: 3000 });
  await sleep(50);
  bBase = (await b.portStats(0)).rxPackets;
  await b.start();
  await b.waitForRxPackets(bBase + aS.txPackets, { timeoutMs: 3000, quietMs: 200 });
  bS = port(await b.stop(), 0);
  beS = await be.stop();
  t.is(port(beS, 0).rxPackets, aS.txPackets);
  t.is(bS.rxPackets, 256);
  t.is(port(beS, 1).txPackets, 256);
  t.is(port(beS, 1).txDropped, aS.txPackets - 256);

  // Phase 3, live: B polls on cpu 0 while A sends 64 bursts (2048 frames) from the same cpu.
  await be.start();
  bBase = (await b.portStats(0)).rxPackets;
  await b.start();
  const t1 = Date.now();
  aS = port(await a.sendBursts(64), 0);
  await b.waitForRxPackets(bBase + aS.txPackets, { timeoutMs: 5000, quietMs: 300 });
  const live = Date.now() - t1;
  bS = port(await b.stop(), 0);
  beS = await be.stop();
  t.is(aS.txPackets + aS.txDropped, 2048);
  t.is(port(beS, 0).rxPackets, aS.txPackets);
  t.is(port(beS, 1).txPackets + port(beS, 1).txDropped, aS.txPackets);
  t.is(bS.rxPackets, port(beS, 1).txPackets);
  t.true(bS.rxPackets > 0);
  t.log(
    `live: A sent ${aS.txPackets} (dropped ${aS.txDropped}), backend dropped ${port(beS, 1).txDropped}, ` +
      `B got ${bS.rxPackets} in ${live} ms; total ${Date.now() - t0} ms`,
  );
  await quitAll(a, b, be);
  for (const p of [a, b, be]) t.true(p.hasExited);
});
