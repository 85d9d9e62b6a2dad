/**
 * The pure trace tools on synthetic records: filters (names, ring incl. replies inheriting the
 * request's ring, time window, direction, endpoint), pcapng block layout, diagrams.
 */
import test from 'ava';
import { chainRecord, ringRecord, type TraceMessageRecord, type TraceRecord } from '../../protocol/index.ts';
import { filterFromArgs, filterRecords } from '../../backend/tools/trace/filters.ts';
import { parsePcapng, tracePcapng } from '../../backend/tools/trace/pcapng.ts';
import { htmlDiagram, textDiagram } from '../../backend/tools/trace/diagram.ts';

const msg = (t: bigint, dir: 'rx' | 'tx', name: string, id: number, flags: number, payload: unknown, endpoint = 'a'): TraceMessageRecord => ({
  kind: 'msg', t, dir, channel: 'frontend', id, name, flags, payload, fdCount: 0, endpoint,
});
const MS = 1_000_000n;
const recs: TraceRecord[] = [
  msg(0n, 'rx', 'GET_FEATURES', 1, 1, null),
  msg(1n * MS, 'tx', 'GET_FEATURES', 1, 5, { value: 0x100000000n }),
  msg(2n * MS, 'rx', 'SET_VRING_NUM', 8, 9, { index: 1, num: 256 }),
  msg(3n * MS, 'tx', 'SET_VRING_NUM', 8, 5, { value: 0n }),
  msg(4n * MS, 'rx', 'SET_VRING_NUM', 8, 9, { index: 0, num: 256 }, 'b'),
  { ...ringRecord(1, 'kick', undefined, 5n * MS), endpoint: 'a' },
  { ...chainRecord(1, { dir: 'tx', head: 3, descs: 2, len: 76, frameLen: 64, frame: new Uint8Array(64).fill(0xaa) }, 6n * MS), endpoint: 'a' },
  { ...chainRecord(0, { dir: 'rx', head: 0, descs: 1, len: 1526, frameLen: 1514, frame: new Uint8Array(128).fill(0xbb) }, 7n * MS), endpoint: 'a' },
];
const names = (rs: TraceRecord[]) => rs.map((r) => (r.kind === 'ring' ? `ring:${r.event}` : `${r.dir}:${r.name}`));

test('filters: message names (prefix and case ignored), ring (replies follow their request), time, direction, endpoint', (t) => {
  t.deepEqual(names(filterRecords(recs, { messages: ['vhost_user_get_features'] })), ['rx:GET_FEATURES', 'tx:GET_FEATURES']);
  t.deepEqual(names(filterRecords(recs, { ring: 1 })), ['rx:SET_VRING_NUM', 'tx:SET_VRING_NUM', 'ring:kick', 'ring:chain']);
  t.deepEqual(names(filterRecords(recs, { fromMs: 2, toMs: 4 })), ['rx:SET_VRING_NUM', 'tx:SET_VRING_NUM', 'rx:SET_VRING_NUM']);
  t.deepEqual(names(filterRecords(recs, { direction: 'tx' })), ['tx:GET_FEATURES', 'tx:SET_VRING_NUM', 'ring:chain']);
  t.deepEqual(names(filterRecords(recs, { endpoint: 'b' })), ['rx:SET_VRING_NUM']);
  t.deepEqual(names(filterRecords(recs, { kind: 'ring', direction: 'rx' })), ['ring:kick', 'ring:chain']);
  t.throws(() => filterFromArgs({ ring: 'x' }), { message: /--ring must be a number/ });
  t.throws(() => filterFromArgs({ direction: 'up' }), { message: /--direction must be rx or tx/ });
  t.deepEqual(filterFromArgs({ message: 'A,B', ring: '2', from: '1.5' }), { messages: ['A', 'B'], ring: 2, fromMs: 1.5 });
});

test('pcapng: SHB, one Ethernet IDB per ring and direction, EPBs with snapped and original lengths, nanosecond times', (t) => {
  const res = tracePcapng(recs, { t: 0n, wallNs: 1_700_000_000_000_000_000n });
  t.is(res.packets, 2);
  t.deepEqual(res.interfaces, ['q1-tx@a', 'q0-rx@a']);
  const blocks = parsePcapng(res.bytes);
  t.deepEqual(blocks.map((b) => b.type), [0x0a0d0d0a, 1, 6, 1, 6]);
  t.deepEqual(blocks.filter((b) => b.type === 1).map((b) => b.linktype), [1, 1]);
  const [a, b] = blocks.filter((x) => x.type === 6);
  t.deepEqual([a!.ifId, a!.capLen, a!.origLen], [0, 64, 64]);
  t.deepEqual([b!.ifId, b!.capLen, b!.origLen], [1, 128, 1514]);
  t.true(b!.data!.every((x) => x === 0xbb));
  // Timestamp of the first packet: wall origin + 6 ms, in ns (if_tsresol 9).
  const dv = new DataView(res.bytes.buffer, res.bytes.byteOffset);
  const epbOff = findBlock(res.bytes, 6);
  const ts = (BigInt(dv.getUint32(epbOff + 12, true)) << 32n) | BigInt(dv.getUint32(epbOff + 16, true));
  t.is(ts, 1_700_000_000_000_000_000n + 6n * MS);
  // Files with no chains still make a valid (empty) capture.
  t.deepEqual(parsePcapng(tracePcapng(recs.slice(0, 3), null).bytes).map((x) => x.type), [0x0a0d0d0a]);
});

function findBlock(bytes: Uint8Array, type: number): number {
  const dv = new DataView(bytes.buffer, bytes.byteOffset);
  for (let off = 0; off < bytes.length; off += dv.getUint32(off + 4, true)) if (dv.getUint32(off, true) === type) return off;
  return -1;
}

test('diagrams: arrows by direction, ring events as notes, HTML escaped and self-contained', (t) => {
  const text = textDiagram(recs);
  const lines = text.split('\n');
  t.regex(lines[1]!, /^\s+\+0\.000ms {2}frontend ── GET_FEATURES ─+▶ backend$/);
  t.regex(lines[2]!, /frontend ◀── GET_FEATURES \(reply\) ─+ backend {2}0x100000000 <VERSION_1>/);
  t.regex(lines[3]!, /── SET_VRING_NUM \[need_reply\] ─+▶ backend {2}index=1 num=256/);
  t.regex(lines[6]!, /\[ring 1 kick\] backend/);
  t.regex(lines[7]!, /\[ring 1 chain\] backend {2}tx head=3 descs=2 len=76/);
  const html = htmlDiagram(recs, 'a <test>');
  t.regex(html, /<title>a &lt;test&gt;<\/title>/);
  t.regex(html, /0x100000000 &lt;VERSION_1&gt;/);
  t.is((html.match(/<tr class="right/g) ?? []).length, 3);
  t.is((html.match(/<tr class="left/g) ?? []).length, 2);
  t.is((html.match(/<tr class="note/g) ?? []).length, 3);
  t.notRegex(html, /<script|src=|href=/);
});
