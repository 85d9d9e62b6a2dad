/**
 * Software offload fallbacks (backend/net/frame/offload.ts) on hand-built frames: every checksum
 * is verified the receiver's way (the one's complement sum over the covered bytes plus the pseudo
 * header folds to 0xffff), and segmentation keeps payload bytes, sequence numbers and flags right.
 */
import test from 'ava';
import { completeChecksum, fold, segmentTcp, sum16 } from '../../backend/net/frame/offload.ts';
import { ipv4Tcp, ipv6Tcp, tcpValid } from '../helpers/frames.ts';

test('segmentTcp IPv4: 3000 bytes at mss 1000 -> 3 valid segments, payload, seq (across 2^32), id, flags', (t) => {
  const f = ipv4Tcp(3000);
  const segs: Uint8Array[] = [];
  const n = segmentTcp(f, f.length, 1000, new Uint8Array(65536), (s, len) => {
    segs.push(s.slice(0, len));
    return true;
  });
  t.is(n, 3);
  const payload: number[] = [];
  segs.forEach((s, i) => {
    const dv = new DataView(s.buffer);
    t.is(dv.getUint16(16), s.length - 14, 'IPv4 total length');
    t.is(dv.getUint16(18), 0x1234 + i, 'IPv4 id increments');
    t.is(fold(sum16(s, 14, 34)), 0xffff, 'IPv4 header checksum valid');
    t.true(tcpValid(s, false), `segment ${i} TCP checksum valid`);
    t.is(dv.getUint32(38), (0xfffffff0 + i * 1000) >>> 0, 'sequence number');
    const flags = s[47]!;
    t.is((flags & 0x09) !== 0, i === 2, 'FIN/PSH only on the last segment');
    payload.push(...s.subarray(54));
  });
  t.deepEqual(Uint8Array.from(payload), f.subarray(54));
});

test('segmentTcp IPv6: payload length and checksums; a frame that is not TCP is refused', (t) => {
  const f = ipv6Tcp(2500);
  const segs: Uint8Array[] = [];
  t.is(segmentTcp(f, f.length, 1200, new Uint8Array(65536), (s, len) => (segs.push(s.slice(0, len)), true)), 3);
  for (const s of segs) {
    t.is(new DataView(s.buffer).getUint16(18), s.length - 54);
    t.true(tcpValid(s, true));
  }
  t.deepEqual(segs.map((s) => s.length - 74), [1200, 1200, 100]);
  const udp = ipv4Tcp(100);
  udp[23] = 17;
  t.is(segmentTcp(udp, udp.length, 50, new Uint8Array(65536), () => true), -1);
  t.is(segmentTcp(f, 30, 100, new Uint8Array(65536), () => true), -1, 'truncated frame');
});

test('completeChecksum: a partial (pseudo-header) TCP checksum is completed to a valid one; bad offsets refused', (t) => {
  const f = ipv4Tcp(777);
  // What a driver with NEEDS_CSUM leaves: the pseudo-header sum (not complemented) in the field.
  const pseudo = fold(sum16(f, 26, 34) + 6 + (f.length - 34));
  f[50] = pseudo >> 8;
  f[51] = pseudo & 0xff;
  t.true(completeChecksum(f, f.length, 34, 16));
  t.true(tcpValid(f, false));
  const copy = f.slice();
  t.false(completeChecksum(f, f.length, f.length - 1, 16), 'checksum field outside the frame');
  t.false(completeChecksum(f, f.length, 70000, 0));
  t.deepEqual(f, copy, 'frame untouched when refused');
});
