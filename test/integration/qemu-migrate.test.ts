/**
 * Live migration of a running QEMU 7.2 guest between two QEMU processes on this machine, each on its own
 * vhost-user backend, while sequence-numbered UDP flows to the guest (issue 4 item 5). Precopy and postcopy.
 *
 *   netns: seqnet send ──> br0 10.0.17.1/24 ─┬─ tap vutmA ── backend A ══ QEMU src  (guest 10.0.17.2, before)
 *                                            └─ tap vutmB ── backend B ══ QEMU dst  (same guest, after)
 *
 * The backend is a parameter: 'ours' (vhost-user-ts, the normal case) or 'dpdk' (DPDK 22.11 net_vhost +
 * net_tap with io forwarding in dpdk-testpmd; runs only with VUT_MIGRATE_DPDK=1, to validate the rig: DPDK's
 * backend supports LOG_SHMFD and postcopy). Both get the same topology, guest and checks.
 *
 * What is checked, per mode (everything is gathered first and logged, then asserted):
 * - QEMU reports the migration `completed` on both sides (postcopy: the source went through postcopy-active and
 *   the destination asked for pages out of order).
 * - The guest's receiver (seqnet in the guest, its final line printed by the destination QEMU's console): every
 *   datagram intact (bad=0: payload bytes, size and header checked), none twice (dup=0), none out of order
 *   (ooo=0). A backend that does not log its writes to guest memory during precopy (dirty log) leaves the
 *   destination with stale RX buffers / used ring: bad, dup or wrong ring state. One that loses its place at the
 *   switchover (GET_VRING_BASE / SET_VRING_BASE) replays or skips.
 * - Loss only at the switchover: at most ONE contiguous range of missing seqs, whose datagrams were sent (mapped
 *   through the sender's own pacing) inside the switchover window, and no more than the sender emits in that
 *   window (lossWindow / lossBound: the bound and why).
 * - Postcopy: backend B delivered datagrams while the destination was still postcopy-active (pages missing).
 * - The bridge learned the guest MAC on the destination tap (the guest's announce went out through the
 *   destination backend), and after the traffic the guest pings the namespace 5/5 through it.
 * - The source backend's session ended (QEMU src quit after the migration) and it had been given the dirty log;
 *   the destination backend delivered at least what the guest received after the switch.
 * Each case takes ≈30-37 s.
 *
 * Debugging: VUT_MIGRATE_KEEP=1 keeps the temp dir (our backends' --trace files: `vhost-user-ts trace print`);
 * VUT_MIGRATE_QTRACE=pattern,... adds QEMU trace events on the destination (e.g. 'vhost_user_postcopy*',
 * 'postcopy_*'), its stderr is then saved there too. DEBUG=vhost:* goes to our backends.
 *
 * Known rig flake (2026-11-23, precopy): with another CPU-bound process on cpu 0 (QEMU's core) the destination
 * guest sometimes oopses within ≈60 ms of RESUME, with OUR and with DPDK's backend alike (ours 1 in 14, DPDK 2
 * in 12 with a busy loop pinned to cpu 0; 0 in 40 idle). The oopses touch the sleeping receiver's kernel stack
 * (its poll wait-queue entry called through NULL from sock_def_readable, hrtimer rbtree nodes in
 * timerqueue_add / rb_next) while the ring state is consistent (the session's ring lines: the source stopped
 * with used == avail, the destination started at the same index and had popped nothing): a guest page written
 * by the guest itself seems to arrive stale: this points at QEMU 7.2 TCG (its own dirty tracking), not a backend.
 *
 * Cores: QEMU (both) on cpu 0, the backends on cpu 1 (DPDK: both forwarding lcores on cpu 1; at 250 pps two
 * pollers sharing a core is harmless, unlike a throughput test).
 */
import test, { type ExecutionContext } from 'ava';
import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { guestAvailable } from '../helpers/qemu.ts';
import { startBackend } from '../helpers/backend.ts';
import { startTestpmd, type Testpmd } from '../helpers/testpmd.ts';
import { bridgeNetns, type BridgeNetns } from '../helpers/bridge.ts';
import { describeMigration, migrate, startMigratable, type MigrationMode, type MigrationResult } from '../helpers/migration.ts';
import { formatSeqLine, parseSeqLine, seqnetCliArgs, type SeqReceived, type SeqSent } from '../helpers/seqnet.ts';
import { compareExpected, readReport } from '../helpers/conform-expected.ts';

/** ours: `vhost-user-ts net`; conform: `vhost-user-ts conform` (the same backend judging QEMU's migration messages). */
type BackendKind = 'ours' | 'dpdk' | 'conform';

const BIN = fileURLToPath(new URL('../../bin/vhost-user-ts.js', import.meta.url));
const TESTPMD = '/usr/bin/dpdk-testpmd';
const rigOk = guestAvailable() && existsSync('/dev/net/tun') && process.getuid?.() === 0;
const dpdkOk = rigOk && process.env['VUT_MIGRATE_DPDK'] === '1' && existsSync(TESTPMD);
const dir = mkdtempSync(join(tmpdir(), 'vut-migrate-'));
test.after.always(() => {
  if (process.env['VUT_MIGRATE_KEEP'] !== '1') rmSync(dir, { recursive: true, force: true });
});

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const formatSent = (s: SeqSent) => formatSeqLine(s);

const NET = '10.0.17';
const HOST_IP = `${NET}.1`;
const GUEST_IP = `${NET}.2`;
const MAC = '52:54:00:12:34:56';
const PORT = 5000;
/** Datagrams per second host -> guest; easy for the TCG guest, and 4 ms apart: loss maps to time precisely. */
const PPS = 250;
const SIZE = 1000;
/** Traffic before the migration starts, so the source really carries it (and the dirty log sees RX writes). */
const PRE_MS = 3000;
/** The guest's receiver stops this long after the last datagram. */
const IDLE_MS = 3000;
/**
 * Sender duration: PRE_MS + the migration (precopy ≈1.5 s, postcopy ≈6 s with the bandwidth caps below) + ≥4 s
 * of traffic through the destination. The test fails (not flakes silently) if the migration outlasts it.
 */
const SEND_S = 16;
const COUNT = PPS * SEND_S;

/**
 * The switchover window, where loss is expected: from LOSS_BEFORE_MS before the source VM stopped (STOP event,
 * QEMU's timestamp; datagrams already in tap A / backend A's burst when it stops) to ANNOUNCE_MS after the
 * destination VM runs (RESUME). Loss is bounded by what the sender emits in that window, and the one gap must lie
 * inside it (seqs mapped to send times through the sender's pacing).
 *
 * Why loss there is legitimate: once the source is stopped its backend must not touch guest memory
 * (GET_VRING_BASE answered), so frames the bridge still sends to tap A are dropped there; frames go to tap B only
 * once the bridge has seen the guest's MAC from B, i.e. after the destination guest runs and its announce
 * (gratuitous ARPs on VIRTIO_NET_S_ANNOUNCE; QEMU's announce timer fires 50 ms after the start) has gone out
 * through backend B. In postcopy that announce is slow: the guest faults in every page it touches on the way
 * (config interrupt, workqueue, ARP) and backend B faults in the TX ring and buffers, each a round trip to the
 * source. Measured with DPDK's backend (bridge FDB polled every 25 ms, 2-core host shared with other jobs):
 * precopy learns the MAC on tap B 20-35 ms after STOP (5-7 datagrams lost); postcopy 440-730 ms (105-180 lost)
 * with the background stream at 64 MiB/s, but ≈1.95 s at 16 MiB/s (QEMU 7.2 serves urgent page requests late
 * while it is rate-limited), hence 64 MiB/s. ANNOUNCE_MS leaves a 2x margin (more for precopy, where TCG
 * scheduling dominates) and is still far below what a backend that drops frames while running, or restarts its
 * rings at the wrong index, would lose.
 */
const LOSS_BEFORE_MS = 250;
const ANNOUNCE_MS: Record<MigrationMode, number> = { precopy: 500, postcopy: 1500 };
const lossWindow = (r: MigrationResult): [number, number] => [
  (r.t.srcStop ?? r.t.start) - LOSS_BEFORE_MS,
  (r.t.dstResume ?? r.t.dstDone) + ANNOUNCE_MS[r.mode],
];
const lossBound = (r: MigrationResult) => {
  const [lo, hi] = lossWindow(r);
  return Math.ceil((PPS * (hi - lo)) / 1000);
};

interface TapBackend {
  kind: BackendKind;
  name: string;
  sock: string;
  tap: string;
  /** ours: the vhost-user trace file (--trace). */
  trace?: string;
  /** conform: the JSON report. */
  report?: string;
  log(): string;
  /** Frames the backend delivered into the guest (tap -> guest). */
  toGuest(): Promise<number>;
  /** Stops it (idempotent). */
  stop(): Promise<void>;
}

/** DPDK testpmd in the namespace (it creates its net_tap device there): wrapper binary for testpmd.ts. */
function testpmdInNetns(ns: string): string {
  const w = join(dir, `testpmd-${ns}.sh`);
  writeFileSync(w, `#!/bin/sh\nexec ip netns exec ${ns} ${TESTPMD} "$@"\n`);
  chmodSync(w, 0o755);
  return w;
}

async function startTapBackend(t: ExecutionContext, kind: BackendKind, name: string, br: BridgeNetns, mode: MigrationMode): Promise<TapBackend> {
  const sock = join(dir, `${br.ns}-${name}.sock`);
  const tap = `vutm${name}`;
  if (kind === 'dpdk') {
    const tp: Testpmd = await startTestpmd({
      role: 'vhost',
      socket: sock,
      binary: testpmdInNetns(br.ns),
      fwdCore: 1,
      mainCore: 0,
      fwdMode: 'io',
      // postcopy-support=1: DPDK offers PAGEFAULT only when asked (QEMU refuses postcopy-ram otherwise).
      ...(mode === 'postcopy' ? { vdevArgs: 'postcopy-support=1' } : {}),
      // Port 0 = net_vhost0, port 1 = the tap: io forwarding connects them both ways.
      extraEal: ['--vdev', `net_tap0,iface=${tap}`],
      // --no-mlockall: testpmd otherwise mlockall(MCL_FUTURE)s, so its mmap of the guest memory at
      // SET_MEM_TABLE faults in every page of the destination's memfd, and QEMU's postcopy placement of those
      // pages then fails with EEXIST ("postcopy_place_page: File exists"): the migration pauses.
      extraArgs: ['--no-mlockall'],
      logLevel: 'lib.vhost.config:debug',
    });
    t.teardown(() => tp.quit().then(() => undefined));
    await br.attach(tap);
    await tp.cmd('start');
    let stopped: number | undefined;
    return {
      kind,
      name,
      sock,
      tap,
      log: () => tp.log,
      async toGuest() {
        if (stopped === undefined) {
          const st = await tp.stop();
          stopped = st.find((s) => s.port === 0)?.txPackets ?? -1;
        }
        return stopped;
      },
      stop: async () => {
        await tp.quit();
      },
    };
  }
  const trace = join(dir, `${br.ns}-${name}.vutrace`);
  const report = join(dir, `${br.ns}-${name}.json`);
  const args =
    kind === 'conform'
      ? ['conform', '--socket', sock, '--port', `tap:${tap}`, '--report', report, '--probe', 'none', '--frontend', `QEMU 7.2 ${mode} ${name === 'A' ? 'source' : 'destination'}`]
      : ['net', '--socket', sock, '--port', `tap:${tap}`, '--trace', trace];
  const be = await startBackend(args, {
    core: 1,
    netns: br.ns,
    waitSockets: [sock],
    debug: process.env['DEBUG'] ?? 'vhost:session,vhost:migration',
  });
  t.teardown(() => be.stop().then(() => undefined));
  await br.attach(tap);
  let code: number | null | undefined;
  const stop = async () => {
    if (code === undefined) code = await be.stop();
  };
  return {
    kind,
    name,
    sock,
    tap,
    ...(kind === 'conform' ? { report } : { trace }),
    log: () => be.log,
    async toGuest() {
      await stop();
      const m = new RegExp(`port ${tap}: (\\{.*\\})`).exec(be.log);
      return m ? (JSON.parse(m[1]!) as { rxFrames: number }).rxFrames : -1;
    },
    stop,
  };
}

/** The decoded vhost-user trace of one of our backends (for the log when something fails). */
function tracePrint(b: TapBackend): string {
  if (!b.trace) return '';
  try {
    return execFileSync(process.execPath, [BIN, 'trace', 'print', b.trace], { encoding: 'utf8' });
  } catch (e) {
    return `(trace print failed: ${(e as Error).message})`;
  }
}

const cases: Array<{ kind: BackendKind; mode: MigrationMode }> = [
  { kind: 'ours', mode: 'precopy' },
  { kind: 'ours', mode: 'postcopy' },
  // The conformance checker as both backends: QEMU's migration messages judged rule by rule.
  { kind: 'conform', mode: 'postcopy' },
  { kind: 'dpdk', mode: 'precopy' },
  { kind: 'dpdk', mode: 'postcopy' },
];

let nsCounter = 0;
for (const { kind, mode } of cases) {
  const run = (kind === 'dpdk' ? dpdkOk : rigOk) ? test.serial : test.serial.skip;
  run(`live ${mode} migration between two QEMU 7.2 guests on ${kind === 'ours' ? 'vhost-user-ts' : kind === 'conform' ? 'vhost-user-ts conform' : 'DPDK'} backends under UDP traffic: data intact, loss only at the switchover, the guest keeps networking`, async (t) => {
    t.timeout(120_000);
    const ns = `vutmig${process.pid % 100000}${nsCounter++}`;
    const br = bridgeNetns(ns, `${HOST_IP}/24`);
    t.teardown(() => br.remove());

    const A = await startTapBackend(t, kind, 'A', br, mode);
    const B = await startTapBackend(t, kind, 'B', br, mode);
    const failInfo = () =>
      `--- backend A (tail) ---\n${A.log().slice(-3000)}\n--- backend B (tail) ---\n${B.log().slice(-3000)}` +
      (kind === 'ours' ? `\n--- trace B (tail) ---\n${tracePrint(B).slice(-4000)}` : '');

    // Identical machines (run-guest.sh --incoming): same RAM (256M, memfd share=on), same NIC and MAC.
    // The guest pings the host first (so the bridge learns its MAC on tap A), then receives COUNT datagrams,
    // then pings again: that last ping runs on the destination.
    const guestOpts = {
      cpus: '0',
      mem: '256M',
      mac: MAC,
      maxLifetimeMs: 115_000,
      teardown: t.teardown,
      vut: {
        ip: `${GUEST_IP}/24`,
        ping: `${HOST_IP},3,1`,
        run: `seqnet,recv,${PORT},${COUNT},${IDLE_MS},60000;ping,-c,5,-i,0.3,-W,3,${HOST_IP}`,
      },
    };
    const src = await startMigratable({ ...guestOpts, sock: A.sock, qmp: join(dir, `${ns}-src.qmp`) });
    // The destination waits (-incoming defer) from the start: it connects to backend B at once (feature
    // negotiation only: no memory table before the state arrives) and costs no CPU until then.
    // QEMU trace (stderr): each fault of backend B on a missing page that QEMU's fault thread resolved
    // (vhost_user_postcopy_fault_handler_found) and each fault of the guest itself (..._thread_request).
    const dst = await startMigratable({
      ...guestOpts,
      sock: B.sock,
      qmp: join(dir, `${ns}-dst.qmp`),
      incoming: 'defer',
      extraQemuArgs: ['-trace', 'vhost_user_postcopy_fault_handler_found', '-trace', 'postcopy_ram_fault_thread_request', ...(process.env['VUT_MIGRATE_QTRACE'] ?? '').split(',').filter(Boolean).flatMap((p) => ['-trace', p])],
    });

    const ping0 = await src.guest.waitFor(/VUT-PING-(OK|FAIL) (\S+)/, 60_000);
    t.is(ping0[1], 'OK', `guest -> host ping before the migration: ${ping0[0]}\n${src.guest.tail()}\n${failInfo()}`);
    await src.guest.waitFor(/VUT-SEQ-LISTENING port=/, 20_000);
    t.is(br.fdbPort(MAC), A.tap, 'before: the bridge has the guest MAC on the source tap');

    // --- traffic: the sender in the namespace -------------------------------------------------------
    const sender = spawn('ip', seqnetCliArgs(ns, ['send', GUEST_IP, String(PORT), String(COUNT), String(PPS), String(SIZE)]), {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    t.teardown(() => void sender.kill('SIGKILL'));
    let senderOut = '';
    sender.stderr!.on('data', (d: Buffer) => (senderOut += d.toString()));
    const sent = new Promise<{ r: SeqSent; end: number }>((resolve, reject) => {
      sender.stdout!.on('data', (d: Buffer) => {
        senderOut += d.toString();
        const line = senderOut.split('\n').find((l) => l.startsWith('VUT-SEQ-SENT'));
        const r = line ? parseSeqLine(line) : null;
        if (r?.kind === 'sent') resolve({ r, end: Date.now() });
      });
      sender.on('exit', (code) => setTimeout(() => reject(new Error(`sender exited ${code}: ${senderOut}`)), 100));
    });
    sent.catch(() => undefined);

    // Traffic reaches the source guest before we migrate.
    await src.guest.waitFor(/VUT-SEQ-PROGRESS rx=[1-9]/, 15_000);
    await sleep(PRE_MS);

    // --- migrate ----------------------------------------------------------------------------------
    const fdb = br.watchFdb(MAC);
    t.teardown(() => fdb.stop());
    let r: MigrationResult;
    try {
      r = await migrate(src.qmp, dst.qmp, {
        mode,
        uri: `unix:${join(dir, `${ns}-mig.sock`)}`,
        // Postcopy: precopy throttled to 8 MiB/s for 1 s (cannot finish: ~87 MiB to send), then the switch;
        // the rest streams at 64 MiB/s, so for ~1.2 s the guest and backend B run on partly missing memory
        // while traffic arrives (slower makes the announce, hence the loss window, much longer: ANNOUNCE_MS).
        // Precopy: QEMU's defaults (128 MiB/s, downtime 300 ms).
        ...(mode === 'postcopy' ? { maxBandwidth: 8 << 20, maxPostcopyBandwidth: 64 << 20, postcopyAfterMs: 1000 } : {}),
        timeoutMs: 40_000,
      });
    } catch (e) {
      t.fail(`migration: ${(e as Error).message}\n--- src qemu ---\n${src.guest.tail(2000)}\n--- dst qemu ---\n${dst.guest.tail(2000)}\n${failInfo()}`);
      return;
    }
    t.log(describeMigration(r));
    const stopAt = r.t.srcStop ?? r.t.start;
    const ms = (x: number | undefined) => (x === undefined ? 'never' : `${Math.round(x - stopAt)}`);

    // Everything is gathered first and asserted at the end (a failed assertion ends the test: the log then
    // already holds the whole picture).
    let diag = '';
    try {
      // When the bridge learned the guest's MAC on tap B (its announce came through backend B).
      for (let i = 0; i < 100 && fdb.movedTo(B.tap) === undefined; i++) await sleep(50);
      const learned = fdb.movedTo(B.tap);
      fdb.stop();
      t.log(`from the source STOP: destination RESUME at ${ms(r.t.dstResume)} ms, bridge learned the MAC on ${B.tap} at ${ms(learned)} ms, migration completed at ${ms(r.t.dstCompleted ?? r.t.dstDone)} ms`);
      const backendFaults = (dst.guest.stderr.match(/vhost_user_postcopy_fault_handler_found/g) ?? []).length;
      const guestFaults = (dst.guest.stderr.match(/postcopy_ram_fault_thread_request/g) ?? []).length;
      t.log(`destination faults on missing pages resolved by QEMU: backend B ${backendFaults}, guest ${guestFaults}`);
      if (process.env['VUT_MIGRATE_QTRACE']) writeFileSync(join(dir, `${ns}-dst.stderr`), dst.guest.stderr);

      // The source stays paused ("postmigrate") until told: quit it, which closes its vhost-user connection.
      await src.qmp.execute('quit').catch(() => undefined);
      await src.guest.waitExit(10_000);

      const { r: s, end } = await sent;
      // The whole line (up to the whitespace after it): the console arrives in chunks, and a match on a chunk
      // that ended inside the gaps list read a truncated list ("gaps=1": seqnet: bad gap '1'); \d+ could as well
      // have matched a truncated number.
      const resLine = await dst.guest.waitFor(/VUT-SEQ rx=\d+ dup=\d+ bad=\d+ ooo=\d+ missing=\d+ gaps=\S+(?=\s)/, 30_000);
      const res = parseSeqLine(resLine[0]) as SeqReceived;
      t.log(`sender: ${formatSent(s)}; guest: ${resLine[0]}`);
      // The guest's last ping runs on the destination, after the traffic.
      const ping = await dst.guest.waitFor(/(\d+) packets transmitted, (\d+) packets received/, 20_000);
      await dst.guest.waitFor(/VUT-RUN-EXIT/, 10_000);
      // (Read while both backends still hold their taps: a port going down flushes its FDB entries.)
      const fdbAfter = br.fdbPort(MAC);
      // Progress lines: the source console shows the stream before the switch, the destination's after it.
      const dstProgress = [...dst.guest.output.matchAll(/VUT-SEQ-PROGRESS rx=(\d+)/g)].map((m) => Number(m[1]));
      const afterSwitch = res.rx - (dstProgress[0] ?? res.rx);
      // Backend logs: the source's session ended when QEMU src quit.
      // (conform prints 'vhost-user-ts conform: frontend gone (...)', net 'frontend gone'.)
      const ended = kind === 'dpdk' ? /vhost peer closed/ : /frontend gone/;
      for (let i = 0; i < 30 && !ended.test(A.log()); i++) await sleep(100);
      const toGuest = await B.toGuest();
      await A.stop();
      await B.stop();
      diag = `${failInfo()}\n--- dst console (tail) ---\n${dst.guest.tail(2500)}`;

      // --- assertions ---------------------------------------------------------------------------------
      t.is(r.status, 'completed');
      if (mode === 'postcopy') {
        t.true(r.statuses.includes('postcopy-active'), `went through postcopy: ${r.statuses.join(' → ')}`);
        t.true(r.postcopyRequests > 0, 'the destination requested pages it faulted on');
      } else {
        t.is(backendFaults + guestFaults, 0, 'precopy: no page faults');
      }
      t.is(s.sent, COUNT, `sender: ${senderOut}`);
      t.is(s.err, 0);
      t.true(end > (r.t.dstCompleted ?? r.t.dstDone), `traffic still flowed when the migration completed (sender ended ${end - r.t.dstDone} ms after; raise SEND_S)`);

      // Data: intact, once, in order.
      t.is(res.bad, 0, 'no corrupt datagram (payload, size, header)');
      t.is(res.dup, 0, 'no datagram twice');
      t.is(res.ooo, 0, 'none out of order');

      // Loss: one range, in the switchover window. Seq -> send time through the sender's pacing: seq i left
      // at start + i × (its duration / COUNT), start = its end minus its duration.
      const sendStart = end - s.ms;
      const seqTime = (seq: number) => sendStart + (seq * s.ms) / COUNT;
      const bound = lossBound(r);
      const [lo, hi] = lossWindow(r);
      t.true(res.missing <= bound, `missing ${res.missing} <= ${bound} (${PPS} pps over the window [${ms(lo)}, ${ms(hi)}] ms from STOP)`);
      t.true(res.gaps.length <= 1 && !res.gapsTruncated, `loss in one contiguous range: ${resLine[0]}`);
      let firstAfter = sendStart; // send time of the first datagram delivered through B
      if (res.gaps.length === 1) {
        const [a, b] = res.gaps[0]!;
        const from = seqTime(a);
        firstAfter = seqTime(b + 1);
        t.log(`lost ${a}-${b}: sent [${ms(from)}, ${ms(firstAfter)}] ms from STOP`);
        t.true(from >= lo && firstAfter <= hi, `the lost datagrams were sent in the switchover window: [${ms(from)}, ${ms(firstAfter)}] within [${ms(lo)}, ${ms(hi)}] ms from STOP`);
      }
      if (mode === 'postcopy') {
        // Backend B delivered datagrams while the destination still had missing pages, and they are intact
        // (bad=0 above): the destination ran on postcopy memory, not on memory that had fully arrived.
        const done = r.t.dstCompleted ?? r.t.dstDone;
        t.true(firstAfter < done, `traffic through backend B while postcopy was active: first datagram after the gap sent at ${ms(firstAfter)} ms, postcopy ended at ${ms(done)} ms`);
      }

      // The guest announced itself through backend B: the bridge moved the MAC to tap B.
      t.truthy(learned, `the bridge learned the guest MAC on ${B.tap}: ${JSON.stringify(fdb.changes)}`);
      t.is(fdbAfter, B.tap, 'after: the bridge has the guest MAC on the destination tap');
      // The guest keeps networking.
      t.is(ping[2], '5', `guest -> host ping after the migration: ${ping[0]}`);

      // Backends: the source's session ended; the destination carried everything the guest got after the switch.
      t.regex(A.log(), ended, 'source backend: session ended');
      if (kind === 'dpdk') {
        t.regex(A.log(), /read message VHOST_USER_SET_LOG_BASE/, 'source backend got the dirty log');
        t.regex(B.log(), /virtio is now ready for processing/, 'destination backend: device started');
        if (mode === 'postcopy') t.regex(B.log(), /VHOST_USER_POSTCOPY_ADVISE[\s\S]*POSTCOPY_LISTEN[\s\S]*userfaultfd registered[\s\S]*POSTCOPY_END/);
      } else if (kind === 'conform') {
        // Both reports: every rule QEMU's source and destination met or broke during the migration.
        // Ring contents are sampled every 20 ms: whether a sample catches a short-lived ring (the source's
        // after the stop, the destination's before postcopy ends) is chance. Those rules must not fail;
        // sampled or not is not part of the expected file.
        const judged = (path: string) => {
          const rep = readReport(path);
          const racy = rep.rules.filter((x) => x.id.startsWith('VU-VQ-') || x.id === 'VU-RING-008');
          t.deepEqual(racy.filter((x) => x.outcome === 'fail').map((x) => `${x.id}: ${x.violations.join('; ')}`), []);
          return { ...rep, rules: rep.rules.map((x) => (racy.includes(x) && x.outcome === 'pass' ? { ...x, outcome: 'not-applicable' as const } : x)) };
        };
        const src = compareExpected(t, `qemu-migration-${mode}-source`, judged(A.report!));
        const dst = compareExpected(t, `qemu-migration-${mode}-destination`, judged(B.report!));
        t.is(src.rules['VU-DIV-002'], 'divergence:log-description-with-reply', 'the source got the 16-byte log description and waited for the reply');
        for (const id of ['VU-NEG-001', 'VU-MSG-001']) {
          t.is(src.rules[id], 'pass', `source ${id}`);
          t.is(dst.rules[id], 'pass', `destination ${id}`);
        }
      } else {
        // vhost-user.rst "Migration": QEMU shared the log, turned LOG_ALL on and set the rings' log flag
        // (VHOST_VRING_F_LOG) on the source; the destination went through the postcopy handshake.
        const ta = tracePrint(A);
        t.regex(ta, /rx → SET_LOG_BASE [^\n]*fds=1\n[^\n]*tx ← SET_LOG_BASE reply/, 'source backend got (and acked) the dirty log');
        t.regex(ta, /rx → SET_FEATURES [^\n]*LOG_ALL/);
        t.regex(ta, /rx → SET_VRING_ADDR [^\n]*flags=0x1 /);
        t.regex(ta, /rx → GET_VRING_BASE index=0[^\n]*\n[^\n]*tx ← GET_VRING_BASE reply index=0/);
        if (mode === 'postcopy') t.regex(tracePrint(B), /POSTCOPY_ADVISE[\s\S]*POSTCOPY_LISTEN[\s\S]*POSTCOPY_END/);
      }
      t.true(dstProgress.length > 0, 'the destination guest reported progress');
      if (kind !== 'conform') t.true(toGuest >= afterSwitch && toGuest > 0, `destination backend delivered ${toGuest} frames to the guest (>= ${afterSwitch} received after the switch)`);
      // Leave nothing behind: the destination guest powers off after its run.
      await dst.guest.waitExit(15_000).catch(() => dst.guest.kill());
    } catch (e) {
      t.log(diag || `${failInfo()}\n--- src console (tail) ---\n${src.guest.tail(2000)}\n--- dst console (tail) ---\n${dst.guest.tail(2500)}`);
      throw e;
    }
  });
}
