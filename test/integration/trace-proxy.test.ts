/**
 * Tracing tools end to end, with no QEMU or DPDK: a scripted frontend (real socket, memfd guest
 * memory, eventfd kicks, a back-end channel) talks to our backend THROUGH the proxy; the backend
 * records ring events. Then: both traces hold what happened (both directions, fd kinds, the relayed
 * back-end channel, chains with frame bytes), pcapng export reads back (and in tshark when
 * installed), replay against a fresh backend reproduces every reply, and replay against a backend
 * that differs reports the divergences. Filters and the diagram are checked on the recorded file.
 */
import test from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { Packr } from 'msgpackr';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { native } from '../../native/index.ts';
import {
  FrontendReq as R,
  ProtoF,
  TraceRecorder,
  VirtioF,
  bit,
  chainDetail,
  readTraceFile,
  readTraceHeader,
  type TraceMessageRecord,
  type TraceRecord,
  type VhostMessage,
} from '../../protocol/index.ts';
import { FlatMemory, SplitDriver } from '../../virtqueue/index.ts';
import { startNet, type RunningNet } from '../../backend/tools/app.ts';
import { VhostUserProxy } from '../../backend/tools/proxy.ts';
import { NetHdr } from '../../backend/net/frame/net-hdr.ts';
import { emptyStats, type Delivery, type FrameSink, type Port } from '../../backend/net/ports/port.ts';
import { replayTrace } from '../../backend/tools/trace/replay.ts';
import { parsePcapng, tracePcapng } from '../../backend/tools/trace/pcapng.ts';
import { connectFrontend } from '../helpers/frontend-socket.ts';
import { BackendPeer } from '../helpers/backend-peer.ts';
import { frameOf, until } from '../helpers/loopback.ts';

const BIN = fileURLToPath(new URL('../../bin/vhost-user-ts.js', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'vut-trace-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));
const cli = (...args: string[]) => spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 20000 });
const HAVE_TSHARK = spawnSync('tshark', ['--version'], { encoding: 'utf8' }).status === 0;

const MEM = 4 << 20;
const UVA = 0x7f3400000000;
const QSIZE = 64;
const FEATURES = bit(VirtioF.VERSION_1) | bit(VirtioF.NET_F_MRG_RXBUF) | bit(VirtioF.PROTOCOL_FEATURES);
const PROTO = bit(ProtoF.REPLY_ACK) | bit(ProtoF.MQ) | bit(ProtoF.BACKEND_REQ) | bit(ProtoF.INBAND_NOTIFICATIONS);

/** Uplink that sends every frame straight back to the guest (so one TX frame makes one RX frame). */
class EchoPort implements Port {
  readonly name = 'echo';
  readonly stats = emptyStats();
  private dev: FrameSink | null = null;
  connect(d: FrameSink): void {
    this.dev = d;
  }
  deliver(frame: Uint8Array, hdr: NetHdr, byteLen = frame.length): Delivery {
    return this.dev!.deliver(frame.slice(0, byteLen), new NetHdr().copyFrom(hdr), byteLen);
  }
  onSpace(cb: () => void): void {
    queueMicrotask(cb);
  }
  close(): void {}
}

function backend(name: string, extra: { protocolFeatures?: bigint; trace?: boolean } = {}): { app: RunningNet; sock: string; trace: string } {
  const sock = join(dir, `${name}.sock`);
  const trace = join(dir, `${name}.vutrace`);
  const app = startNet(native, {
    socket: sock,
    client: false,
    queuePairs: 1,
    port: null,
    trace: extra.trace === false ? null : trace,
    traceRings: true,
    snaplen: 64,
    busyPollUs: 0,
    ...(extra.protocolFeatures !== undefined ? { protocolFeatures: extra.protocolFeatures } : {}),
  });
  app.devices[0]!.attachPort(new EchoPort());
  return { app, sock, trace };
}

interface Recorded {
  proxyTrace: string;
  backendTrace: string;
  frames: Uint8Array[];
  calls: number;
}

/** One session through the proxy: handshake, back-end channel, rings, 3 frames out and back. */
async function recordSession(): Promise<Recorded> {
  const be = backend('be');
  const proxySock = join(dir, 'proxy.sock');
  const proxyTrace = join(dir, 'proxy.vutrace');
  const tracer = new TraceRecorder(proxyTrace, { source: 'proxy' });
  const proxy = new VhostUserProxy({ native, frontend: proxySock, backend: be.sock, trace: (r) => tracer.record(r), label: 'px' });
  proxy.start();
  const sf = connectFrontend(native, { path: proxySock }, { timeoutMs: 3000 });
  const peer = new BackendPeer();
  const memfd = native.memfdCreate('guest', false);
  native.ftruncate(memfd, MEM);
  const ab = native.mmap(memfd, 0, MEM, true);
  const mem = new FlatMemory(ab, 0);
  const mine: number[] = [memfd];
  const frames = [frameOf(60, 1), frameOf(200, 2), frameOf(1000, 3)];
  try {
    const fe = sf.fe;
    const ack = (m: VhostMessage | null) => (m!.payload as { value: bigint }).value;
    await fe.request(R.GET_FEATURES);
    await fe.request(R.GET_PROTOCOL_FEATURES);
    await fe.request(R.SET_PROTOCOL_FEATURES, PROTO);
    await fe.request(R.SET_OWNER);
    await fe.request(R.GET_QUEUE_NUM);
    await fe.request(R.SET_BACKEND_REQ_FD, null, { needReply: true, fds: [peer.remote] });
    if (ack(await fe.request(R.SET_FEATURES, FEATURES, { needReply: true })) !== 0n) throw new Error('SET_FEATURES refused');
    const region = { guestPhysAddr: 0n, memorySize: BigInt(MEM), userspaceAddr: BigInt(UVA), mmapOffset: 0n };
    await fe.request(R.SET_MEM_TABLE, { nregions: 1, padding: 0, regions: [region] }, { needReply: true, fds: [memfd] });
    const drvs: { drv: SplitDriver; kick: number }[] = [];
    for (const index of [0, 1]) {
      const drv = new SplitDriver(mem, { size: QSIZE, base: index * 0x40000, heapAddr: 0x100000 + index * 0x100000, heapByteLen: 0x100000 });
      const [kick, err] = [native.eventfd(0), native.eventfd(0)];
      mine.push(kick, err);
      const opt = { needReply: true };
      await fe.request(R.SET_VRING_NUM, { index, num: QSIZE }, opt);
      await fe.request(R.SET_VRING_BASE, { index, num: 0 }, opt);
      const a = (gpa: number) => BigInt(UVA + gpa);
      await fe.request(R.SET_VRING_ADDR, { index, flags: 0, descUserAddr: a(drv.descAddr), usedUserAddr: a(drv.usedAddr), availUserAddr: a(drv.availAddr), logGuestAddr: 0n }, opt);
      // Calls in band (VRING_CALL on the back-end channel), so the relayed channel carries traffic.
      await fe.request(R.SET_VRING_CALL, { index, noFd: true }, opt);
      await fe.request(R.SET_VRING_ERR, { index, noFd: false }, { ...opt, fds: [err] });
      await fe.request(R.SET_VRING_KICK, { index, noFd: false }, { ...opt, fds: [kick] });
      await fe.request(R.SET_VRING_ENABLE, { index, num: 1 }, opt);
      drvs.push({ drv, kick });
    }
    const [rx, tx] = drvs as [(typeof drvs)[0], (typeof drvs)[0]];
    for (let i = 0; i < 4; i++) rx.drv.addChain([{ byteLen: 2048, write: true }]);
    native.eventfdWrite(rx.kick, 1n);
    for (const f of frames) tx.drv.addChain([{ byteLen: 12, write: false, data: new Uint8Array(12) }, { byteLen: f.length, write: false, data: f }]);
    native.eventfdWrite(tx.kick, 1n);
    await until('frames echoed into RX', () => rx.drv.usedIdx === frames.length);
    await until('in-band calls relayed', () => peer.named('VRING_CALL').length >= 2);
    const calls = peer.named('VRING_CALL').length;
    await fe.request(R.GET_VRING_BASE, { index: 0, num: 0 });
    await fe.request(R.GET_VRING_BASE, { index: 1, num: 0 });
    return { proxyTrace, backendTrace: be.trace, frames, calls };
  } finally {
    sf.close();
    await until('proxy pair closed', () => proxy.active === 0).catch(() => undefined);
    proxy.close();
    peer.close();
    native.munmap(ab);
    for (const fd of mine) native.close(fd);
    await be.app.close();
    await tracer.close();
  }
}

let recorded: Promise<Recorded> | null = null;
const session = () => (recorded ??= recordSession());

const msgs = (recs: TraceRecord[]) => recs.filter((r): r is TraceMessageRecord => r.kind !== 'ring');

test.serial('the proxy forwards a whole session and records both directions, fd kinds and the back-end channel', async (t) => {
  const s = await session();
  t.true(s.calls >= 2, 'the backend reached the frontend through the relayed back-end channel');
  const px = msgs(await readTraceFile(s.proxyTrace));
  const be = msgs(await readTraceFile(s.backendTrace));
  // Everything the backend saw went through the proxy, in the same order, with the same fd counts.
  const sig = (r: TraceMessageRecord) => `${r.channel} ${r.dir} ${r.name} ${r.flags} fds=${r.fdCount}`;
  t.deepEqual(px.filter((r) => r.channel === 'frontend').map(sig), be.filter((r) => r.channel === 'frontend').map(sig));
  t.true(px.some((r) => r.dir === 'rx') && px.some((r) => r.dir === 'tx'));
  t.true(px.every((r) => r.endpoint === 'px#1'));
  const kinds = (name: string) => px.find((r) => r.name === name && r.dir === 'rx')?.fdKinds;
  t.deepEqual(kinds('SET_MEM_TABLE'), ['memfd']);
  t.deepEqual(kinds('SET_VRING_KICK'), ['eventfd']);
  t.deepEqual(kinds('SET_BACKEND_REQ_FD'), ['socket']);
  // The back-end channel: the backend's VRING_CALL requests (tx) and the frontend's acks (rx).
  const chan = px.filter((r) => r.channel === 'backend');
  t.true(chan.filter((r) => r.dir === 'tx' && r.name === 'VRING_CALL').length >= 2);
  t.true(chan.filter((r) => r.dir === 'rx' && (r.flags & 0x4) !== 0).length >= 2);
  t.false(px.some((r) => r.error !== undefined), 'everything decoded');
});

test.serial('the backend records kicks, calls and every chain with its frame bytes (capped by the snap length)', async (t) => {
  const s = await session();
  const recs = await readTraceFile(s.backendTrace);
  const chains = recs.map(chainDetail).filter((c) => c !== null);
  const txs = chains.filter((c) => c.dir === 'tx');
  const rxs = chains.filter((c) => c.dir === 'rx');
  t.deepEqual(txs.map((c) => c.frameLen), s.frames.map((f) => f.length));
  t.deepEqual(rxs.map((c) => c.frameLen), s.frames.map((f) => f.length));
  t.deepEqual(txs.map((c) => c.len), s.frames.map((f) => f.length + 12));
  t.deepEqual(txs.map((c) => c.descs), [2, 2, 2]);
  const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
  for (const [i, c] of txs.entries()) t.is(hex(c.frame), hex(s.frames[i]!.subarray(0, 64)), `tx frame ${i} snapped at 64`);
  for (const [i, c] of rxs.entries()) t.is(hex(c.frame), hex(s.frames[i]!.subarray(0, 64)), `rx frame ${i}`);
  t.true(recs.some((r) => r.kind === 'ring' && r.event === 'kick' && r.queue === 1));
  t.true(recs.some((r) => r.kind === 'ring' && r.event === 'call' && r.queue === 0));
});

test.serial('pcapng export: one interface per ring and direction, every frame with its original length', async (t) => {
  const s = await session();
  const recs = await readTraceFile(s.backendTrace);
  const res = tracePcapng(recs, await readTraceHeader(s.backendTrace));
  t.is(res.packets, 6);
  t.is(res.interfaces.length, 2);
  const blocks = parsePcapng(res.bytes);
  t.is(blocks[0]!.type, 0x0a0d0d0a);
  t.deepEqual(blocks.filter((b) => b.type === 1).map((b) => b.linktype), [1, 1]);
  const epbs = blocks.filter((b) => b.type === 6);
  t.deepEqual(epbs.map((b) => b.origLen).sort((a, b) => a! - b!), [60, 60, 200, 200, 1000, 1000]);
  t.deepEqual(epbs.map((b) => b.capLen).sort((a, b) => a! - b!), [60, 60, 64, 64, 64, 64]);
  const out = join(dir, 'loop.pcapng');
  const r = cli('trace', 'export', s.backendTrace, '--pcapng', out);
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, /wrote 6 frame\(s\) on 2 interface\(s\)/);
});

// tshark reads what we wrote. qemu-scripts/setup.sh installs tshark; where it is missing this test is
// skipped (reported as skipped, not passed).
if (!HAVE_TSHARK) console.log('trace-proxy: tshark not installed: the tshark read-back test is skipped');
(HAVE_TSHARK ? test.serial : test.serial.skip)('pcapng export read back by tshark: every frame with its original and captured length', async (t) => {
  const s = await session();
  const out = join(dir, 'loop-tshark.pcapng');
  const r = cli('trace', 'export', s.backendTrace, '--pcapng', out);
  t.is(r.status, 0, r.stderr);
  const lens = execFileSync('tshark', ['-r', out, '-T', 'fields', '-e', 'frame.len', '-e', 'frame.cap_len'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  t.deepEqual(lens.trim().split('\n').map((l) => l.trim().split(/\s+/).join('/')).sort(), ['1000/64', '1000/64', '200/64', '200/64', '60/60', '60/60']);
});

test.serial('replay against a fresh backend reproduces every reply of the recorded session', async (t) => {
  const s = await session();
  const fresh = backend('fresh', { trace: false });
  t.teardown(() => fresh.app.close());
  const records = await readTraceFile(s.proxyTrace);
  // Guest memory is fresh (zeroed) in a replay: the traffic is not replayed, so the only replies that
  // may differ are the ring positions GET_VRING_BASE reports (3 frames went through each ring).
  const strict = await replayTrace(records, { native, socket: fresh.sock, timeoutMs: 2000 });
  t.deepEqual(
    strict.divergences.map((d) => `${d.name} ${d.kind} ${d.expected} / ${d.got}`),
    ['GET_VRING_BASE payload index=0 num=3 / index=0 num=0', 'GET_VRING_BASE payload index=1 num=3 / index=1 num=0'],
  );
  const fresh1 = backend('fresh1', { trace: false });
  t.teardown(() => fresh1.app.close());
  const res = await replayTrace(records, { native, socket: fresh1.sock, timeoutMs: 2000, ignore: ['GET_VRING_BASE'] });
  t.deepEqual(res.divergences, []);
  t.is(res.endpoint, 'px#1');
  const recorded = msgs(await readTraceFile(s.proxyTrace)).filter((r) => r.channel === 'frontend');
  t.is(res.sent, recorded.filter((r) => r.dir === 'rx').length);
  t.is(res.compared, recorded.filter((r) => r.dir === 'tx').length);
  t.true(res.compared >= 20, `${res.compared} replies compared`);
  // The CLI says the same, exit 0.
  const fresh2 = backend('fresh2', { trace: false });
  t.teardown(() => fresh2.app.close());
  // The in-process backend serves on this process's loop while the child replays: run it async.
  const r = await new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
    const p = execFileAsync(['trace', 'replay', s.proxyTrace, '--socket', fresh2.sock, '--ignore', 'GET_VRING_BASE']);
    p.then(resolve);
  });
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, /0 divergence\(s\)/);
});

test.serial('replay reports divergences: a backend offering other protocol features refuses what the recording negotiated', async (t) => {
  const s = await session();
  const other = backend('other', { trace: false, protocolFeatures: bit(ProtoF.REPLY_ACK) | bit(ProtoF.MQ) });
  t.teardown(() => other.app.close());
  // Without REPLY_ACK negotiated the acks the recording had do not come: short timeouts.
  const res = await replayTrace(await readTraceFile(s.proxyTrace), { native, socket: other.sock, timeoutMs: 100, ignore: ['GET_VRING_BASE'] });
  const byName = (n: string) => res.divergences.filter((d) => d.name === n);
  t.is(byName('GET_PROTOCOL_FEATURES')[0]?.kind, 'payload');
  t.regex(byName('GET_PROTOCOL_FEATURES')[0]!.got!, /REPLY_ACK\|MQ>|MQ\|REPLY_ACK>/);
  t.log(res.divergences.map((d) => `${d.name} ${d.kind}`).join(', '));
  // SET_PROTOCOL_FEATURES asked for bits not offered and was refused: MQ is then not negotiated, so
  // GET_QUEUE_NUM gets an error reply, and without REPLY_ACK the acks the recording had never come.
  t.is(byName('GET_QUEUE_NUM')[0]?.kind, 'refused');
  t.true(res.divergences.some((d) => d.name === 'SET_FEATURES' && d.kind === 'timeout'));
});

test.serial('trace print filters, the text diagram and the HTML diagram on the recorded file', async (t) => {
  const s = await session();
  const lines = (r: { stdout: string }) => r.stdout.trim().split('\n').filter(Boolean);
  const kick = cli('trace', 'print', s.proxyTrace, '--message', 'SET_VRING_KICK,vhost_user_set_vring_call');
  t.is(kick.status, 0, kick.stderr);
  t.is(lines(kick).length, 8, kick.stdout); // 2 rings x (KICK + CALL) x (request + ack)
  t.true(lines(kick).every((l) => /SET_VRING_(KICK|CALL)/.test(l)));
  const ring1 = lines(cli('trace', 'print', s.proxyTrace, '--ring', '1'));
  // Requests naming ring 1, and their acks (which name no ring): 7 acked set-up requests, GET_VRING_BASE,
  // and the in-band calls of ring 1 with their acks.
  t.true(ring1.filter((l) => / rx → SET_VRING_\w+ need_reply index=1 /.test(l)).length === 7, ring1.join('\n'));
  t.is(ring1.filter((l) => /tx ← SET_VRING_\w+ reply 0x0 /.test(l)).length, 7, ring1.join('\n'));
  t.true(ring1.every((l) => /index=1\b|reply 0x0 fds=0/.test(l)), ring1.join('\n'));
  t.false(ring1.some((l) => /index=0\b/.test(l)));
  const tx = lines(cli('trace', 'print', s.proxyTrace, '--direction', 'tx'));
  t.true(tx.length > 0 && tx.every((l) => l.includes('tx ←')));
  const ringTx = lines(cli('trace', 'print', s.backendTrace, '--kind', 'ring', '--direction', 'tx', '--message', '', '--ring', '1'));
  t.true(ringTx.some((l) => / ring q1 chain tx head=\d+ descs=2 len=72 frame=60 /.test(l)), ringTx.join('\n'));
  const all = lines(cli('trace', 'print', s.proxyTrace));
  const lastMs = Number(/\+\s*([\d.]+)ms/.exec(all[all.length - 1]!)![1]);
  const early = lines(cli('trace', 'print', s.proxyTrace, '--to', '0'));
  t.is(early.length, 1, 'only the first record is at +0');
  // The printed time is rounded to the µs: start just below it so the last record is always in.
  const late = lines(cli('trace', 'print', s.proxyTrace, '--from', String(lastMs - 0.001)));
  t.true(late.length >= 1 && late.length < all.length);
  t.is(cli('trace', 'print', s.proxyTrace, '--direction', 'up').status, 2);

  const diag = cli('trace', 'diagram', s.proxyTrace, '--message', 'GET_FEATURES');
  t.is(diag.status, 0, diag.stderr);
  t.regex(diag.stdout, /frontend ── GET_FEATURES ─+▶ backend/);
  t.regex(diag.stdout, /frontend ◀── GET_FEATURES \(reply\) ─+ backend {2}0x[0-9a-f]+ </);
  const html = join(dir, 'd.html');
  const h = cli('trace', 'diagram', s.proxyTrace, '--html', html);
  t.is(h.status, 0, h.stderr);
  const page = readFileSync(html, 'utf8');
  t.regex(page, /^<!doctype html>/);
  t.regex(page, /<tr class="right"><td class="t">\+0\.000 ms<\/td>/);
  t.regex(page, /BACKEND_VRING_CALL/);
  t.notRegex(page, /<script|https?:\/\//, 'self-contained');
  t.regex(page, /&lt;[A-Z_|]+&gt;/, 'feature names escaped');
});

function execFileAsync(args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return import('node:child_process').then(
    ({ execFile }) =>
      new Promise((resolve) => {
        execFile(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 20000 }, (err, stdout, stderr) => {
          resolve({ status: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
        });
      }),
  );
}

test.serial('a file in the older layout (header without wallNs, no fdKinds, no chains) still prints and exports', async (t) => {
  const old = join(dir, 'old.vutrace');
  const packr = new Packr({ useRecords: false, useBigIntExtension: true });
  const parts = [
    packr.pack({ kind: 'header', format: 'vutrace', version: 1, t: 1000n }),
    packr.pack({ kind: 'msg', t: 2000n, dir: 'rx', channel: 'frontend', id: 1, name: 'GET_FEATURES', flags: 1, payload: null, fdCount: 0 }),
    packr.pack({ kind: 'ring', t: 3000n, queue: 1, event: 'kick' }),
  ];
  writeFileSync(old, Buffer.concat(parts));
  const p = cli('trace', 'print', old);
  t.is(p.status, 0, p.stderr);
  t.regex(p.stdout, /rx → GET_FEATURES fds=0\n.*ring q1 kick/);
  const e = cli('trace', 'export', old, '--pcapng', join(dir, 'old.pcapng'));
  t.is(e.status, 0, e.stderr);
  t.regex(e.stdout, /wrote 0 frame\(s\)/);
});

test.serial('a frontend that reconnects gets a new upstream connection; with no backend the frontend sees the close', async (t) => {
  const be = backend('recon', { trace: false });
  t.teardown(() => be.app.close());
  const sock = join(dir, 'recon-proxy.sock');
  const seen: TraceMessageRecord[] = [];
  const proxy = new VhostUserProxy({ native, frontend: sock, backend: be.sock, trace: (r) => seen.push(r), label: 'rc' });
  proxy.start();
  t.teardown(() => proxy.close());
  for (const n of [1, 2]) {
    const sf = connectFrontend(native, { path: sock }, { timeoutMs: 3000 });
    const f = await sf.fe.request(R.GET_FEATURES);
    t.true((f!.payload as { value: bigint }).value > 0n);
    t.is(be.app.endpoints[0]!.sessions, n, `backend session ${n}`);
    sf.close();
    await until('backend saw the frontend go', () => be.app.endpoints[0]!.session === null);
  }
  t.is(proxy.connections, 2);
  t.deepEqual([...new Set(seen.map((r) => r.endpoint))], ['rc#1', 'rc#2']);
  // Backend gone: a new frontend connection is closed at once (as without the proxy).
  await be.app.close();
  const sf = connectFrontend(native, { path: sock }, { timeoutMs: 3000 });
  await sf.closed;
  t.is(proxy.connections, 2);
});
