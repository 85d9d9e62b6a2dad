/**
 * Checksums against known answers (issue 21 item 2), not against our own code: RFC 1071's worked
 * example, a textbook IPv4 header, and frames whose IPv4 header, TCP and UDP checksums the Linux
 * kernel computed (test/fixtures/kernel-frames.json, captured from a TAP device without offloads by
 * test/fixtures/capture-kernel-frames.py). Both the production code (backend/net/frame/offload.ts:
 * sum16/fold, completeChecksum, segmentTcp) and the tests' oracle (test/helpers/frames.ts, which
 * tcpValid uses) must reproduce them.
 */
import test from 'ava';
import { readFileSync } from 'node:fs';
import { completeChecksum, fold, segmentTcp, sum16 } from '../../backend/net/frame/offload.ts';
import { internetChecksum, ipv4HeaderValid, l4Valid, onesSum, tcpValid } from '../helpers/frames.ts';

const hex = (s: string): Uint8Array => Uint8Array.from(s.replace(/\s+/g, '').match(/../g)!.map((b) => parseInt(b, 16)));

interface KernelFrame {
  ethertype: string;
  proto: 'tcp' | 'udp';
  hex: string;
}
const KERNEL: KernelFrame[] = JSON.parse(readFileSync(new URL('../fixtures/kernel-frames.json', import.meta.url), 'utf8')).frames;

test('RFC 1071 section 3 example: 00 01 f2 03 f4 f5 f6 f7 sums to dd f2 (checksum 22 0d)', (t) => {
  const b = hex('0001f203f4f5f6f7');
  t.is(fold(sum16(b, 0, b.length)), 0xddf2, 'production');
  t.is(onesSum(b, 0, b.length), 0xddf2, 'oracle');
  t.is(internetChecksum(b, 0, b.length), 0x220d);
  t.is(~fold(sum16(b, 0, b.length)) & 0xffff, 0x220d);
  // An odd byte count pads with a zero byte (RFC 1071 "if the total length is odd").
  t.is(fold(sum16(b, 0, 7)), onesSum(b, 0, 7));
  t.is(onesSum(b, 0, 7), fold(0x0001 + 0xf203 + 0xf4f5 + 0xf600));
});

test('a textbook IPv4 header: checksum b861', (t) => {
  const h = hex('450000730000400040110000c0a80001c0a800c7');
  t.is(~fold(sum16(h, 0, 20)) & 0xffff, 0xb861, 'production');
  t.is(internetChecksum(h, 0, 20), 0xb861, 'oracle');
  h[10] = 0xb8;
  h[11] = 0x61;
  t.true(ipv4HeaderValid(h, 0));
});

test('kernel frames: the fixture covers IPv4 and IPv6, TCP and UDP, odd and even lengths', (t) => {
  const kinds = new Set(KERNEL.map((f) => `${f.ethertype} ${f.proto} ${hex(f.hex).length % 2}`));
  for (const k of ['0x800 tcp 0', '0x800 udp 0', '0x800 udp 1', '0x86dd tcp 0', '0x86dd udp 0', '0x86dd udp 1']) t.true(kinds.has(k), k);
});

for (const [i, f] of KERNEL.entries()) {
  const ipv6 = f.ethertype === '0x86dd';
  const name = `kernel frame ${i} (${ipv6 ? 'IPv6' : 'IPv4'} ${f.proto}, ${f.hex.length / 2} bytes)`;
  test(`${name}: the oracle accepts it; completeChecksum from the pseudo-header sum rebuilds the kernel's checksum exactly`, (t) => {
    const frame = hex(f.hex);
    const proto = f.proto === 'tcp' ? 6 : 17;
    t.true(l4Valid(frame, ipv6, proto), 'the oracle agrees with the kernel');
    if (!ipv6) t.true(ipv4HeaderValid(frame));
    if (f.proto === 'tcp') t.true(tcpValid(frame, ipv6));
    // What a virtio driver sends with NEEDS_CSUM: the checksum field holds the folded pseudo-header sum.
    const l4 = ipv6 ? 54 : 14 + (frame[14]! & 0x0f) * 4;
    const off = f.proto === 'tcp' ? 16 : 6;
    const partial = frame.slice();
    const len = frame.length - l4;
    const pseudo = (ipv6 ? sum16(frame, 22, 54) : sum16(frame, 26, 34)) + proto + len;
    partial[l4 + off] = (fold(pseudo) >> 8) & 0xff;
    partial[l4 + off + 1] = fold(pseudo) & 0xff;
    t.true(completeChecksum(partial, partial.length, l4, off));
    t.deepEqual(partial, frame, 'production checksum = the kernel’s');
    // One bit flipped anywhere in the segment: the oracle rejects it.
    const bad = frame.slice();
    bad[bad.length - 1] = bad[bad.length - 1]! ^ 0x01;
    t.false(l4Valid(bad, ipv6, proto));
  });
  if (f.proto === 'tcp') {
    test(`${name}: segmentTcp (one segment) rewrites every checksum as the kernel computed it`, (t) => {
      const frame = hex(f.hex);
      const zeroed = frame.slice();
      const l4 = ipv6 ? 54 : 34;
      zeroed[l4 + 16] = zeroed[l4 + 17] = 0;
      if (!ipv6) zeroed[24] = zeroed[25] = 0;
      const out: Uint8Array[] = [];
      const n = segmentTcp(zeroed, zeroed.length, 1448, new Uint8Array(2048), (seg, segLen) => (out.push(seg.slice(0, segLen)), true));
      t.is(n, 1);
      t.deepEqual(out[0], frame);
    });
  }
}
