/**
 * Legacy big-endian rings through the session (vhost-user.rst SET_VRING_ENDIAN, protocol feature
 * CROSS_ENDIAN): a legacy (no VERSION_1) frontend of a big-endian guest. setupLoopback starts both
 * rings little-endian; the frontend then restarts them the way QEMU's vhost_virtqueue_start does for
 * a cross-endian guest (GET_VRING_BASE, then NUM, BASE, ENDIAN 1, ADDR, KICK), over a big-endian
 * SplitDriver on the same ring addresses. Frames go both ways and the guest memory is checked:
 * ring fields and the legacy virtio-net header (hdr_len, gso_size, csum_start, csum_offset,
 * num_buffers) big-endian.
 */
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { native } from '../../native/index.ts';
import { FrontendReq as R, ProtoF, VirtioF, bit, type VhostMessage } from '../../protocol/index.ts';
import { SplitDriver, SplitQueueBE, type FlatMemory } from '../../virtqueue/index.ts';
import { GSO_TCPV4, NET_HDR_F_NEEDS_CSUM, NetHdr } from '../../backend/net/frame/net-hdr.ts';
import { QSIZE, UVA_BASE, frameOf, setupLoopback, until, type Ring } from '../helpers/loopback.ts';

const value = (m: VhostMessage | null) => (m!.payload as { value: bigint }).value;

/** Legacy: no VERSION_1. Offloads both ways so a non-trivial header reaches the guest unchanged. */
const LEGACY =
  bit(VirtioF.NET_F_MRG_RXBUF) |
  bit(VirtioF.NET_F_CSUM) |
  bit(VirtioF.NET_F_GUEST_CSUM) |
  bit(VirtioF.NET_F_HOST_TSO4) |
  bit(VirtioF.NET_F_GUEST_TSO4) |
  bit(VirtioF.RING_EVENT_IDX) |
  bit(VirtioF.RING_INDIRECT_DESC);

const be16 = (mem: FlatMemory, gpa: number) => new DataView(mem.bytes.buffer, mem.bytes.byteOffset).getUint16(gpa, false);
const be32 = (mem: FlatMemory, gpa: number) => new DataView(mem.bytes.buffer, mem.bytes.byteOffset).getUint32(gpa, false);

/** A TSO header with every u16 field distinct when byte-swapped. */
function tsoHdr(): NetHdr {
  const h = new NetHdr();
  h.flags = NET_HDR_F_NEEDS_CSUM;
  h.gsoType = GSO_TCPV4;
  h.hdrLen = 54;
  h.gsoSize = 1448;
  h.csumStart = 34;
  h.csumOffset = 16;
  return h;
}
/** Its big-endian bytes (10; num_buffers appended by the caller). */
const TSO_BE = [1, 1, 0, 54, 0x05, 0xa8, 0, 34, 0, 16];

type Lb = Awaited<ReturnType<typeof setupLoopback>>;

/**
 * Stops ring `index` (GET_VRING_BASE) and restarts it with SET_VRING_ENDIAN `num` in QEMU's order
 * (after SET_VRING_BASE, before SET_VRING_ADDR). Returns the ENDIAN ack and a fresh driver of that
 * byte order on the ring's addresses (the layout setupLoopback uses).
 */
async function restartRing(t: ExecutionContext, lb: Lb, ring: Ring, index: number, num: number, features: bigint) {
  const { fe, mem } = lb;
  const opt = { needReply: true };
  const base = await fe.request(R.GET_VRING_BASE, { index, num: 0 });
  t.is((base!.payload as { num: number }).num, 0);
  t.is(value(await fe.request(R.SET_VRING_NUM, { index, num: QSIZE }, opt)), 0n);
  t.is(value(await fe.request(R.SET_VRING_BASE, { index, num: 0 }, opt)), 0n);
  const endianAck = value(await fe.request(R.SET_VRING_ENDIAN, { index, num }, opt));
  const drv = new SplitDriver(mem, {
    size: QSIZE,
    base: index * 0x40000,
    heapAddr: 0x100000 + index * 0x100000,
    heapByteLen: 0x100000,
    eventIdx: (features & bit(VirtioF.RING_EVENT_IDX)) !== 0n,
    bigEndian: num === 1,
  });
  const addr = (gpa: number) => BigInt(UVA_BASE + gpa);
  const ringAddr = { index, flags: 0, descUserAddr: addr(drv.descAddr), usedUserAddr: addr(drv.usedAddr), availUserAddr: addr(drv.availAddr), logGuestAddr: 0n };
  t.is(value(await fe.request(R.SET_VRING_ADDR, ringAddr, opt)), 0n);
  t.is(value(await fe.request(R.SET_VRING_KICK, { index, noFd: false }, { ...opt, fds: [ring.kick] })), 0n);
  return { endianAck, ring: { ...ring, drv } };
}

async function bigEndianLoopback(t: ExecutionContext, features: bigint) {
  const lb = await setupLoopback(t, features, { protocolFeatures: bit(ProtoF.CROSS_ENDIAN) });
  const rx = await restartRing(t, lb, lb.rx, 0, 1, features);
  const tx = await restartRing(t, lb, lb.tx, 1, 1, features);
  t.is(rx.endianAck, 0n, 'SET_VRING_ENDIAN 1 acked on RX');
  t.is(tx.endianAck, 0n, 'SET_VRING_ENDIAN 1 acked on TX');
  t.true(lb.session.rings[0]!.queue instanceof SplitQueueBE, 'RX ring runs big-endian');
  t.true(lb.session.rings[1]!.queue instanceof SplitQueueBE, 'TX ring runs big-endian');
  return { ...lb, rx: rx.ring, tx: tx.ring };
}

test('legacy big-endian frontend: SET_VRING_ENDIAN 1 on both rings, frames both ways, big-endian header fields and rings in guest memory', async (t) => {
  const { dev, port, rx, tx, mem } = await bigEndianLoopback(t, LEGACY);

  // Guest TX: a 12-byte big-endian header (MRG_RXBUF) and the frame, direct and indirect.
  const frames = [frameOf(300, 1), frameOf(80, 2)];
  const hdr = Uint8Array.from([...TSO_BE, 0, 0]);
  const heads = frames.map((f, i) =>
    tx.drv.addChain(
      [
        { byteLen: 12, write: false, data: hdr },
        { byteLen: f.length, write: false, data: f },
      ],
      { indirect: i === 1 },
    ),
  );
  native.eventfdWrite(tx.kick, 1n);
  await until('two frames on the uplink', () => port.sent.length === 2);
  t.deepEqual(port.sent, frames);
  for (const h of port.hdrs) t.deepEqual(h, tsoHdr(), 'header fields read big-endian');
  await until('TX used entries', () => tx.drv.usedIdx === 2);
  t.is(be16(mem, tx.drv.usedAddr + 2), 2, 'TX used.idx big-endian');
  t.deepEqual(tx.drv.readUsed().map((u) => [u.id, u.len]), heads.map((h) => [h, 0]));
  await until('TX call', () => native.eventfdRead(tx.call) !== null);

  // Guest RX: a TSO frame the guest accepts as is (GUEST_CSUM, GUEST_TSO4): header verbatim, big-endian.
  const rxHeads = [0, 1, 2, 3, 4].map(() => rx.drv.addChain([{ byteLen: 1024, write: true }]));
  native.eventfdWrite(rx.kick, 1n);
  const small = frameOf(100, 3);
  t.is(dev.deliver(small, tsoHdr()), 'ok');
  let used = rx.drv.readUsed();
  t.deepEqual(used.map((u) => [u.id, u.len]), [[rxHeads[0], 112]]);
  t.deepEqual(Array.from(used[0]!.data!.subarray(0, 12)), [...TSO_BE, 0, 1], 'header and num_buffers 1, big-endian');
  t.deepEqual(used[0]!.data!.subarray(12), small);
  t.is(be16(mem, rx.drv.usedAddr + 2), 1, 'RX used.idx big-endian');
  t.is(be32(mem, rx.drv.usedAddr + 4), rxHeads[0]!, 'used.ring[0].id big-endian');
  t.is(be32(mem, rx.drv.usedAddr + 8), 112, 'used.ring[0].len big-endian');

  // Mergeable: a 3000-byte frame over three buffers, num_buffers = 3 big-endian.
  const big = frameOf(3000, 4);
  t.is(dev.deliver(big, new NetHdr()), 'ok');
  used = rx.drv.readUsed();
  t.deepEqual(used.map((u) => [u.id, u.len]), [
    [rxHeads[1], 1024],
    [rxHeads[2], 1024],
    [rxHeads[3], 3012 - 2048],
  ]);
  const bytes = Buffer.concat(used.map((u) => u.data!));
  t.deepEqual(Array.from(bytes.subarray(0, 12)), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3], 'num_buffers 3, big-endian');
  t.deepEqual(new Uint8Array(bytes.subarray(12)), big);
  t.is(be16(mem, rx.drv.usedAddr + 2), 4);
  t.not(native.eventfdRead(rx.call), null, 'guest notified');
  t.is(dev.stats.rxFrames, 2);
});

test('legacy big-endian frontend without MRG_RXBUF: the 10-byte header is big-endian both ways', async (t) => {
  const features = LEGACY & ~bit(VirtioF.NET_F_MRG_RXBUF);
  const { dev, port, rx, tx } = await bigEndianLoopback(t, features);
  const frame = frameOf(200, 5);
  tx.drv.addChain([
    { byteLen: 10, write: false, data: Uint8Array.from(TSO_BE) },
    { byteLen: frame.length, write: false, data: frame },
  ]);
  native.eventfdWrite(tx.kick, 1n);
  await until('frame on the uplink', () => port.sent.length === 1);
  t.deepEqual(port.sent[0], frame);
  t.deepEqual(port.hdrs[0], tsoHdr());

  rx.drv.addChain([{ byteLen: 2048, write: true }]);
  t.is(dev.deliver(frame, tsoHdr()), 'ok');
  const [u] = rx.drv.readUsed();
  t.is(u!.len, 210);
  t.deepEqual(Array.from(u!.data!.subarray(0, 10)), TSO_BE);
  t.deepEqual(u!.data!.subarray(10), frame);
});

test('SET_VRING_ENDIAN refusals: num 2, big-endian with VERSION_1 or RING_PACKED, on a started ring, without CROSS_ENDIAN', async (t) => {
  const opt = { needReply: true };
  {
    // A modern frontend (VERSION_1) with CROSS_ENDIAN: its rings are little-endian.
    const modern = bit(VirtioF.VERSION_1) | bit(VirtioF.NET_F_MRG_RXBUF) | bit(VirtioF.RING_EVENT_IDX);
    const lb = await setupLoopback(t, modern, { protocolFeatures: bit(ProtoF.CROSS_ENDIAN) });
    const { fe, session } = lb;
    t.not(value(await fe.request(R.SET_VRING_ENDIAN, { index: 1, num: 0 }, opt)), 0n, 'refused on a started ring');
    await fe.request(R.GET_VRING_BASE, { index: 1, num: 0 });
    t.not(value(await fe.request(R.SET_VRING_ENDIAN, { index: 1, num: 1 }, opt)), 0n, 'big-endian refused with VERSION_1');
    t.not(value(await fe.request(R.SET_VRING_ENDIAN, { index: 1, num: 2 }, { ...opt, unchecked: true })), 0n, 'num 2 refused');
    t.is(value(await fe.request(R.SET_VRING_ENDIAN, { index: 1, num: 0 }, opt)), 0n, 'little-endian is fine');
    t.not(value(await fe.request(R.SET_VRING_ENDIAN, { index: 7, num: 0 }, opt)), 0n, 'no ring 7');
    t.is(session.vringBigEndian[1], false);
    // The ring comes back little-endian and works.
    t.is(value(await fe.request(R.SET_VRING_KICK, { index: 1, noFd: false }, { ...opt, fds: [lb.tx.kick] })), 0n);
    t.truthy(session.rings[1]!.queue);
    t.false(session.rings[1]!.queue instanceof SplitQueueBE);
    const frame = frameOf(64, 6);
    lb.tx.drv.addChain([
      { byteLen: 12, write: false, data: new Uint8Array(12) },
      { byteLen: 64, write: false, data: frame },
    ]);
    native.eventfdWrite(lb.tx.kick, 1n);
    await until('frame on the uplink', () => lb.port.sent.length === 1);
    t.deepEqual(lb.port.sent[0], frame);
  }
  {
    // Legacy frontend: RING_PACKED acked (packed rings need VERSION_1, hence little-endian) is refused
    // too; VERSION_1 acked after a big-endian SET_VRING_ENDIAN wins (the ring starts little-endian).
    const lb = await setupLoopback(t, LEGACY, { protocolFeatures: bit(ProtoF.CROSS_ENDIAN) });
    const { fe, session } = lb;
    // Both rings stopped: ring features may not change while any ring is started (D44).
    await fe.request(R.GET_VRING_BASE, { index: 0, num: 0 });
    await fe.request(R.GET_VRING_BASE, { index: 1, num: 0 });
    const ack = (features: bigint) => fe.request(R.SET_FEATURES, features | bit(VirtioF.PROTOCOL_FEATURES), opt);
    t.is(value(await ack(LEGACY | bit(VirtioF.RING_PACKED))), 0n);
    t.not(value(await fe.request(R.SET_VRING_ENDIAN, { index: 1, num: 1 }, opt)), 0n, 'big-endian refused with RING_PACKED');
    t.is(value(await ack(LEGACY)), 0n);
    t.is(value(await fe.request(R.SET_VRING_ENDIAN, { index: 1, num: 1 }, opt)), 0n, 'legacy: big-endian taken');
    t.is(session.vringBigEndian[1], true);
    t.is(value(await ack(LEGACY | bit(VirtioF.VERSION_1))), 0n);
    t.is(value(await fe.request(R.SET_VRING_KICK, { index: 1, noFd: false }, { ...opt, fds: [lb.tx.kick] })), 0n);
    t.truthy(session.rings[1]!.queue);
    t.false(session.rings[1]!.queue instanceof SplitQueueBE, 'VERSION_1 rings are little-endian');
    // RESET_OWNER returns the rings to their initial state: little-endian.
    await fe.request(R.RESET_OWNER, undefined, opt);
    t.deepEqual(session.vringBigEndian, []);
  }
  {
    // Without CROSS_ENDIAN negotiated the request is not legal (the table's requires).
    const lb = await setupLoopback(t, LEGACY);
    await lb.fe.request(R.GET_VRING_BASE, { index: 0, num: 0 });
    t.not(value(await lb.fe.request(R.SET_VRING_ENDIAN, { index: 0, num: 1 }, opt)), 0n, 'refused without CROSS_ENDIAN');
    t.is(lb.session.vringBigEndian[0], undefined);
  }
});
