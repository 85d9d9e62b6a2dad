/**
 * struct virtio_net_hdr byte order: little-endian (virtio 1.x) and, for a legacy device in a
 * big-endian guest, big-endian (virtio v1.2 5.1.6.1; vhost-user.rst SET_VRING_ENDIAN).
 */
import test from 'ava';
import { GSO_TCPV4, NET_HDR_F_NEEDS_CSUM, NET_HDR_LEGACY_BYTES, NET_HDR_MRG_BYTES, NetHdr, PLAIN_HDR } from '../../backend/net/frame/net-hdr.ts';

function sample(): NetHdr {
  const h = new NetHdr();
  h.flags = NET_HDR_F_NEEDS_CSUM;
  h.gsoType = GSO_TCPV4;
  h.hdrLen = 0x0036; // 54
  h.gsoSize = 0x05a8; // 1448
  h.csumStart = 0x0022; // 34
  h.csumOffset = 0x0010; // 16
  return h;
}

test('NetHdr.write: little-endian by default, big-endian fields (num_buffers included) with the flag', (t) => {
  const h = sample();
  const le = new Uint8Array(NET_HDR_MRG_BYTES);
  h.write(le, 0, NET_HDR_MRG_BYTES, 0x0102);
  t.deepEqual(Array.from(le), [1, 1, 0x36, 0, 0xa8, 0x05, 0x22, 0, 0x10, 0, 0x02, 0x01]);
  const be = new Uint8Array(NET_HDR_MRG_BYTES + 3);
  h.write(be, 3, NET_HDR_MRG_BYTES, 0x0102, true);
  t.deepEqual(Array.from(be.subarray(3)), [1, 1, 0, 0x36, 0x05, 0xa8, 0, 0x22, 0, 0x10, 0x01, 0x02]);
  // The 10-byte legacy header has no num_buffers: nothing written past it.
  const short = new Uint8Array(NET_HDR_MRG_BYTES).fill(0xee);
  h.write(short, 0, NET_HDR_LEGACY_BYTES, 7, true);
  t.deepEqual(Array.from(short), [1, 1, 0, 0x36, 0x05, 0xa8, 0, 0x22, 0, 0x10, 0xee, 0xee]);
});

test('NetHdr.read: the flag selects the byte order; a round trip in either order keeps the values', (t) => {
  const be = Uint8Array.from([1, 4, 0, 0x36, 0x05, 0xa8, 0, 0x22, 0, 0x10]);
  const h = new NetHdr().read(be, 0, true);
  t.deepEqual([h.flags, h.gsoType, h.hdrLen, h.gsoSize, h.csumStart, h.csumOffset], [1, 4, 54, 1448, 34, 16]);
  const asLe = new NetHdr().read(be, 0);
  t.deepEqual([asLe.hdrLen, asLe.gsoSize], [0x3600, 0xa805]);
  for (const bigEndian of [false, true]) {
    const buf = new Uint8Array(NET_HDR_MRG_BYTES);
    sample().write(buf, 0, NET_HDR_MRG_BYTES, 1, bigEndian);
    t.deepEqual(new NetHdr().read(buf, 0, bigEndian), sample());
  }
});

test('NetHdr.writeWords: the same 12 little-endian bytes as write(), at a buffer offset; refuses an unaligned one', (t) => {
  const h = sample();
  h.hdrLen = 0xfe36; // a high bit in the top half-word: the Int32 store must keep it
  const want = new Uint8Array(NET_HDR_MRG_BYTES);
  h.write(want, 0, NET_HDR_MRG_BYTES, 0x0102);
  const ab = new ArrayBuffer(64);
  const words = new Int32Array(ab);
  t.true(h.writeWords(words, 20, 0x0102));
  t.deepEqual(Array.from(new Uint8Array(ab, 20, NET_HDR_MRG_BYTES)), Array.from(want));
  t.deepEqual(Array.from(new Uint8Array(ab, 0, 20)), new Array<number>(20).fill(0), 'nothing before it');
  t.deepEqual(Array.from(new Uint8Array(ab, 32)), new Array<number>(32).fill(0), 'nothing after it');
  t.false(h.writeWords(words, 22, 1), 'unaligned: write() is the way');
  t.deepEqual(Array.from(new Uint8Array(ab, 22, 2)), Array.from(want.subarray(2, 4)), 'and nothing was written');
});

test('PLAIN_HDR: the shared plain header is all zero and cannot be changed by a receiver', (t) => {
  t.true(PLAIN_HDR.plain);
  const b = new Uint8Array(NET_HDR_MRG_BYTES).fill(0xff);
  PLAIN_HDR.write(b, 0, NET_HDR_MRG_BYTES, 1, false);
  t.deepEqual([...b], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
  t.throws(() => {
    PLAIN_HDR.flags |= NET_HDR_F_NEEDS_CSUM;
  }, { instanceOf: TypeError });
  t.throws(() => PLAIN_HDR.clear(), { instanceOf: TypeError });
  t.is(PLAIN_HDR.flags, 0);
});
