import test from 'ava';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  FrontendReq,
  TraceRecorder,
  decode,
  encode,
  formatRecord,
  formatTrace,
  messageRecord,
  rawRecord,
  readTrace,
  readTraceFile,
  ringRecord,
  type TraceRecord,
} from '../../protocol/index.ts';

const dir = mkdtempSync(join(tmpdir(), 'vutrace-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

function decoded(id: number, payload: unknown, fds: number[] = [], needReply = false) {
  const e = encode('frontend', id, { payload, fds, needReply });
  return decode('frontend', { request: id, flags: e.bytes[4]! | (e.bytes[5]! << 8), payload: e.bytes.subarray(12), fds: e.fds });
}

test('bigints round-trip exactly through the trace file (0xffff_ffff_ffff_ffff)', async (t) => {
  const path = join(dir, 'bigint.vutrace');
  const rec = new TraceRecorder(path);
  const max = 0xffff_ffff_ffff_ffffn;
  const t0 = process.hrtime.bigint();
  const features = decoded(FrontendReq.SET_FEATURES, max);
  const region = { guestPhysAddr: max - 0x1000n, memorySize: 0x1000n, userspaceAddr: 0x7fff_ffff_f000n, mmapOffset: 0n };
  const add = decoded(FrontendReq.ADD_MEM_REG, { padding: 0n, region }, [3]);
  rec.record(messageRecord('rx', features, t0));
  rec.record(messageRecord('rx', add, t0 + 1_500_000n));
  rec.record({ ...messageRecord('tx', features, t0 + 2_000_000n), payload: { value: 5n } });
  rec.record(ringRecord(1, 'kick', { availIdx: 7, big: max }, t0 + 3_000_000n));
  rec.record(rawRecord('rx', 'frontend', { request: 99, flags: 1, payload: Uint8Array.of(1, 2, 3), fdCount: 0 }, 'PROTO_UNKNOWN_REQUEST: nope', t0 + 4_000_000n));
  await rec.close();

  const back = await readTraceFile(path);
  t.is(back.length, 5);
  const [a, b, c, d, e] = back as [TraceRecord, TraceRecord, TraceRecord, TraceRecord, TraceRecord];
  t.is(a.kind, 'msg');
  t.is(a.t, t0);
  t.is(typeof a.t, 'bigint');
  t.deepEqual(a.kind === 'msg' && a.payload, { value: max });
  t.is(b.kind === 'msg' && (b.payload as { region: { guestPhysAddr: bigint } }).region.guestPhysAddr, max - 0x1000n);
  t.is(b.kind === 'msg' && b.fdCount, 1);
  t.is(b.kind === 'msg' && b.name, 'ADD_MEM_REG');
  // small bigints stay bigints, numbers stay numbers
  t.deepEqual(c.kind === 'msg' && c.payload, { value: 5n });
  t.deepEqual(d.kind === 'ring' && d.detail, { availIdx: 7, big: max });
  t.is(e.kind === 'msg' && e.error, 'PROTO_UNKNOWN_REQUEST: nope');
  t.deepEqual(e.kind === 'msg' && Uint8Array.from(e.payload as Uint8Array), Uint8Array.of(1, 2, 3));
  // readTrace gives every record the first record's time, so formatRecord(rec) alone is relative
  const lines: string[] = [];
  for await (const r of readTrace(path)) lines.push(formatRecord(r));
  t.deepEqual(lines, formatTrace(back));
  t.regex(lines[0]!, /^\+\s+0\.000ms  rx → SET_FEATURES 0xffffffffffffffff <NET_F_CSUM\|.*\|bit31\|VERSION_1\|.*\|NET_F_SPEED_DUPLEX> fds=0$/);
  t.regex(lines[1]!, /^\+\s+1\.500ms  rx → ADD_MEM_REG region=\{guestPhysAddr=0xffffffffffffefff /);
  t.regex(lines[1]!, /fds=1$/);
  t.regex(lines[3]!, /^\+\s+3\.000ms  ring q1 kick availIdx=0x7 big=0xffffffffffffffff$/);
  t.regex(lines[4]!, /rx → UNKNOWN\(99\) <010203> fds=0 !! PROTO_UNKNOWN_REQUEST: nope$/);
});

test('formatRecord marks replies and need_reply, and the endpoint', (t) => {
  const r = messageRecord('tx', decoded(FrontendReq.SET_OWNER, null, [], true), 10n);
  t.is(formatRecord({ ...r, endpoint: 'sock0' }, 0n), '+     0.000ms [sock0]  tx ← SET_OWNER need_reply fds=0');
  t.is(formatRecord({ ...r, flags: 0x5, payload: { value: 0n } }, 10n), '+     0.000ms  tx ← SET_OWNER reply 0x0 fds=0');
});

test('readTrace refuses a file that is not a trace', async (t) => {
  const path = join(dir, 'junk.vutrace');
  writeFileSync(path, Uint8Array.of(0x93, 1, 2, 3));
  await t.throwsAsync(readTraceFile(path), { message: /not a vutrace file/ });
});
