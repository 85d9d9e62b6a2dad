/**
 * The sequence-numbered UDP tool, both implementations (guest: qemu-scripts/guest-tools/seqnet.c, built
 * here with the host gcc exactly as build-guest.sh builds it; host: test/helpers/seqnet.ts and its CLI),
 * against each other on 127.0.0.1: counts, the wire format, and what a receiver calls bad/dup/ooo/missing.
 * Both receivers must print the same result line for the same datagrams.
 */
import test from 'ava';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import dgram from 'node:dgram';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  SEQNET_CLI,
  checkSeq,
  encodeSeq,
  formatSeqLine,
  parseSeqLine,
  recvSeq,
  sendSeq,
  type SeqReceived,
  type SeqSent,
} from '../helpers/seqnet.ts';

const SRC = fileURLToPath(new URL('../../qemu-scripts/guest-tools/seqnet.c', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'vut-seqnet-'));
const BIN = join(dir, 'seqnet');
let gccError = '';
try {
  execFileSync('gcc', ['-static', '-Os', '-Wall', '-Werror', '-o', BIN, SRC], { stdio: ['ignore', 'pipe', 'pipe'] });
} catch (e) {
  gccError = String((e as { stderr?: Buffer }).stderr ?? e);
}
const cTest = gccError ? test.serial.skip : test.serial;
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

/** A seqnet process (the C binary or the node CLI): its parsed output lines and exit code. */
function run(cmd: string, args: string[]): { p: ChildProcess; lines: string[]; line(kind: string): Promise<string>; code: Promise<number | null> } {
  const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: string[] = [];
  let buf = '';
  let err = '';
  const waiters: Array<() => void> = [];
  p.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      lines.push(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
    for (const w of waiters.splice(0)) w();
  });
  p.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const code = new Promise<number | null>((r) => p.on('close', (c) => r(c)));
  const timer = setTimeout(() => p.kill('SIGKILL'), 30_000);
  void code.then(() => {
    clearTimeout(timer);
    for (const w of waiters.splice(0)) w();
  });
  return {
    p,
    lines,
    code,
    line: (kind) =>
      new Promise<string>((resolve, reject) => {
        const check = () => {
          const l = lines.find((x) => parseSeqLine(x)?.kind === kind);
          if (l) return resolve(l);
          if (p.exitCode !== null || p.signalCode !== null) return reject(new Error(`${cmd} exited without a ${kind} line: ${lines.join('\n')}\n${err}`));
          waiters.push(check);
        };
        check();
      }),
  };
}

const cRecv = (count: number, idleMs: number) => run(BIN, ['recv', '0', String(count), String(idleMs)]);
const nodeCliRecv = (count: number, idleMs: number) =>
  run(process.execPath, ['--import', import.meta.resolve('tsx'), SEQNET_CLI, 'recv', '0', String(count), String(idleMs)]);

async function portOf(r: ReturnType<typeof run>): Promise<number> {
  const l = parseSeqLine(await r.line('listening'));
  if (l?.kind !== 'listening') throw new Error('no port');
  return l.port;
}

test('the datagram format: header, big-endian fields, payload pattern; the checker rejects any change', (t) => {
  const b = encodeSeq(0x01020304, 3000, 24);
  t.is(b.toString('hex', 0, 16), '56555453' + '01020304' + '00000bb8' + '00000018');
  const seq = 0x01020304;
  for (let i = 16; i < 24; i++) t.is(b[i], (seq * 31 + i * 7) & 0xff, `payload byte ${i}`);
  t.is(checkSeq(b, 0x01020305), seq);
  t.is(checkSeq(b, seq), -1, 'seq >= count is bad');
  for (let i = 0; i < b.length; i++) {
    if (i >= 8 && i < 12) continue; // total is informational
    const c = Buffer.from(b);
    c[i]! ^= 0x40;
    // The pattern depends on seq*31 mod 256 only, so a flip in seq's upper bytes is caught by the range
    // check (seq >= count), a flip in its low byte also by the pattern.
    t.is(checkSeq(c, seq + 1), -1, `flipped byte ${i}`);
  }
  const low = Buffer.from(b);
  low[7]! ^= 0x01; // seq - 1: in range, wrong pattern
  t.is(checkSeq(low, 0xffffffff), -1, 'seq off by one');
  t.is(checkSeq(b.subarray(0, 20), 0xffffffff), -1, 'truncated');
  t.is(checkSeq(encodeSeq(7, 1, 16), 8), 7, 'header-only datagram');
  t.throws(() => encodeSeq(0, 1, 15));
});

test('parseSeqLine reads both tools lines, console noise and truncated gaps included', (t) => {
  t.deepEqual(parseSeqLine('[  3.1] VUT-SEQ rx=5 dup=1 bad=2 ooo=3 missing=4 gaps=1-1,3-5,...\r'), {
    kind: 'recv',
    rx: 5,
    dup: 1,
    bad: 2,
    ooo: 3,
    missing: 4,
    gaps: [
      [1, 1],
      [3, 5],
    ],
    gapsTruncated: true,
  });
  t.deepEqual(parseSeqLine('VUT-SEQ rx=9 dup=0 bad=0 ooo=0 missing=0 gaps=-'), {
    kind: 'recv', rx: 9, dup: 0, bad: 0, ooo: 0, missing: 0, gaps: [], gapsTruncated: false,
  });
  t.deepEqual(parseSeqLine('VUT-SEQ-SENT n=10 err=1'), { kind: 'sent', sent: 10, err: 1, retry: 0, ms: 0 });
  t.deepEqual(parseSeqLine('VUT-SEQ-SENT n=10 err=0 retry=4 ms=33'), { kind: 'sent', sent: 10, err: 0, retry: 4, ms: 33 });
  t.deepEqual(parseSeqLine('VUT-SEQ-PROGRESS rx=77'), { kind: 'progress', rx: 77 });
  t.is(parseSeqLine('VUT-RUN-EXIT 0'), null);
  const r: SeqReceived = { kind: 'recv', rx: 1, dup: 2, bad: 3, ooo: 4, missing: 5, gaps: [[0, 4]], gapsTruncated: false };
  t.deepEqual(parseSeqLine(formatSeqLine(r)), r);
});

test.serial('node sender -> node receiver (in-process), paced', async (t) => {
  const r = recvSeq({ port: 0, count: 1500, idleMs: 1000 });
  const port = await r.listening;
  const t0 = Date.now();
  const s = await sendSeq({ host: '127.0.0.1', port, count: 1500, pps: 3000, size: 512 });
  t.like(s, { sent: 1500, err: 0 });
  const ms = Date.now() - t0;
  t.true(ms >= 450 && ms < 3000, `1500 datagrams at 3000/s took ${ms} ms`);
  t.deepEqual(await r.result, { kind: 'recv', rx: 1500, dup: 0, bad: 0, ooo: 0, missing: 0, gaps: [], gapsTruncated: false });
});

cTest('C sender -> node receiver (CLI), paced', async (t) => {
  const r = nodeCliRecv(2000, 1000);
  const port = await portOf(r);
  const s = run(BIN, ['send', '127.0.0.1', String(port), '2000', '4000', '1400']);
  const sent = parseSeqLine(await s.line('sent')) as SeqSent;
  t.like(sent, { sent: 2000, err: 0 });
  t.true(sent.ms >= 450 && sent.ms < 3000, `2000 at 4000/s took ${sent.ms} ms`);
  t.is(await s.code, 0);
  t.is(await r.line('recv'), 'VUT-SEQ rx=2000 dup=0 bad=0 ooo=0 missing=0 gaps=-');
  t.is(await r.code, 0);
});

cTest('node sender (CLI) -> C receiver, paced, header-only datagrams', async (t) => {
  const r = cRecv(2000, 1000);
  const port = await portOf(r);
  const s = run(process.execPath, ['--import', import.meta.resolve('tsx'), SEQNET_CLI, 'send', '127.0.0.1', String(port), '2000', '4000', '16']);
  t.like(parseSeqLine(await s.line('sent')), { sent: 2000, err: 0 });
  t.is(await s.code, 0);
  t.is(await r.line('recv'), 'VUT-SEQ rx=2000 dup=0 bad=0 ooo=0 missing=0 gaps=-');
  t.is(await r.code, 0);
});

cTest('C sender -> C receiver, unpaced; a receiver that misses datagrams exits 1 and says which', async (t) => {
  const r = cRecv(1000, 500);
  const port = await portOf(r);
  const s = run(BIN, ['send', '127.0.0.1', String(port), '1000', '0', '200']);
  t.is(await s.code, 0);
  t.is(await r.line('recv'), 'VUT-SEQ rx=1000 dup=0 bad=0 ooo=0 missing=0 gaps=-');
  t.is(await r.code, 0);
  // Only 600 of the 1000 it expects: missing 600-999, exit 1.
  const r2 = cRecv(1000, 300);
  const port2 = await portOf(r2);
  t.is(await run(BIN, ['send', '127.0.0.1', String(port2), '600', '0', '64']).code, 0);
  t.is(await r2.line('recv'), 'VUT-SEQ rx=600 dup=0 bad=0 ooo=0 missing=400 gaps=600-999');
  t.is(await r2.code, 1);
});

/** Hand-made traffic for a receiver that expects 10 seqs: every kind of fault once. */
function faultyTraffic(): Buffer[] {
  const d: Buffer[] = [];
  for (const s of [0, 1, 2, 4, 3, 6, 7, 8, 9]) d.push(encodeSeq(s, 10, 64)); // 3 after 4: ooo
  d.push(encodeSeq(3, 10, 64)); // dup
  const flipped = encodeSeq(5, 10, 64);
  flipped[40]! ^= 1; // corrupted payload: bad, and 5 stays missing
  d.push(flipped);
  const magic = encodeSeq(5, 10, 64);
  magic[0] = 0x58; // bad magic
  d.push(magic);
  d.push(encodeSeq(5, 10, 100).subarray(0, 50)); // size field 100, 50 bytes: bad
  d.push(encodeSeq(10, 10, 64)); // seq >= count: bad
  d.push(Buffer.from('VUTS1234')); // shorter than a header: bad
  return d;
}
const FAULTY_RESULT = 'VUT-SEQ rx=9 dup=1 bad=5 ooo=1 missing=1 gaps=5-5';

async function sendRaw(port: number, datagrams: Buffer[]): Promise<void> {
  const s = dgram.createSocket('udp4');
  for (const d of datagrams) await new Promise<void>((r, j) => s.send(d, port, '127.0.0.1', (e) => (e ? j(e) : r())));
  s.close();
}

test.serial('node receiver counts corrupted datagrams as bad, and dup / ooo / missing', async (t) => {
  const r = recvSeq({ port: 0, count: 10, idleMs: 300 });
  await sendRaw(await r.listening, faultyTraffic());
  t.is(formatSeqLine(await r.result), FAULTY_RESULT);
});

cTest('C receiver counts corrupted datagrams exactly as the node receiver does', async (t) => {
  const r = cRecv(10, 300);
  await sendRaw(await portOf(r), faultyTraffic());
  t.is(await r.line('recv'), FAULTY_RESULT);
  t.is(await r.code, 1);
});

cTest('both receivers list the first 8 gaps and mark the rest', async (t) => {
  const even = Array.from({ length: 50 }, (_, i) => encodeSeq(i * 2, 100, 32));
  const c = cRecv(100, 300);
  const n = nodeCliRecv(100, 300);
  await sendRaw(await portOf(c), even);
  await sendRaw(await portOf(n), even);
  const want = 'VUT-SEQ rx=50 dup=0 bad=0 ooo=0 missing=50 gaps=1-1,3-3,5-5,7-7,9-9,11-11,13-13,15-15,...';
  t.is(await c.line('recv'), want);
  t.is(await n.line('recv'), want);
  t.like(parseSeqLine(want), { missing: 50, gapsTruncated: true });
});

cTest('SIGTERM ends either receiver early with its result line', async (t) => {
  for (const r of [cRecv(10, 60_000), nodeCliRecv(10, 60_000)]) {
    const port = await portOf(r);
    await sendRaw(port, [encodeSeq(0, 10, 20), encodeSeq(1, 10, 20)]);
    await new Promise((res) => setTimeout(res, 200));
    r.p.kill('SIGTERM');
    t.is(await r.line('recv'), 'VUT-SEQ rx=2 dup=0 bad=0 ooo=0 missing=8 gaps=2-9');
    t.is(await r.code, 1);
  }
});

if (gccError) test('seqnet.c compiles', (t) => t.fail(`gcc -static failed: ${gccError}`));
