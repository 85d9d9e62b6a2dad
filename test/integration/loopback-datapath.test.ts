/**
 * Loopback data path: guest memory is a memfd (mapped by the test and, via SET_MEM_TABLE with the fd
 * over SCM_RIGHTS, by the backend), the driver side is virtqueue/split-driver.ts, the notifications
 * are real eventfds, and the uplink is a capture port. This checks what a frontend cannot easily show:
 * exact bytes, used lengths, num_buffers, and that a hostile ring breaks only itself.
 */
import test from 'ava';
import { readFileSync } from 'node:fs';
import { native } from '../../native/index.ts';
import { FrontendReq as R, ProtoF, VirtioF, bit } from '../../protocol/index.ts';
import { SplitDriver, VIRTQ_DESC_F_NEXT } from '../../virtqueue/index.ts';
import { GSO_ECN, GSO_TCPV4, GSO_TCPV6, NET_HDR_F_NEEDS_CSUM, NetHdr } from '../../backend/net/frame/net-hdr.ts';
import { fold, sum16 } from '../../backend/net/frame/offload.ts';
import { ipv4Tcp, ipv6Tcp, tcpValid } from '../helpers/frames.ts';
import { countFds } from '../helpers/proc.ts';
import { UVA_BASE, frameOf, setupLoopback as setup, until } from '../helpers/loopback.ts';
import { ack } from '../helpers/frontend-socket.ts';

/** A frame with no offload work. */
const PLAIN = new NetHdr();
const FEATURES = bit(VirtioF.VERSION_1) | bit(VirtioF.NET_F_MRG_RXBUF) | bit(VirtioF.RING_EVENT_IDX) | bit(VirtioF.RING_INDIRECT_DESC);

test('guest TX: a chain split over header + two buffers leaves as one frame; used len 0; call signalled', async (t) => {
  const { port, tx } = await setup(t, FEATURES);
  const frame = frameOf(300, 1);
  const head = tx.drv.addChain([
    { byteLen: 12, write: false, data: new Uint8Array(12) },
    { byteLen: 100, write: false, data: frame.subarray(0, 100) },
    { byteLen: 200, write: false, data: frame.subarray(100) },
  ]);
  native.eventfdWrite(tx.kick, 1n);
  await until('frame on the uplink', () => port.sent.length === 1);
  t.deepEqual(port.sent[0], frame);
  await until('used entry', () => tx.drv.usedIdx === 1);
  t.deepEqual(tx.drv.readUsed().map((u) => [u.id, u.len]), [[head, 0]]);
  await until('call eventfd', () => native.eventfdRead(tx.call) !== null);
  t.pass();
});

test('SET_VRING_CALL after the ring ran without one: the notification owed meanwhile goes to the new call fd, and only then', async (t) => {
  const { port, tx, fe } = await setup(t, FEATURES);
  // The frontend takes the call fd away (NOFD: "polling will be used instead"), the ring keeps running.
  t.is(ack(await fe.request(R.SET_VRING_CALL, { index: 1, noFd: true }, { needReply: true })), 0n);
  native.eventfdRead(tx.call); // whatever the first fd got before is not this test's business
  tx.drv.addChain([{ byteLen: 12 + 60, write: false, data: new Uint8Array(72) }]);
  native.eventfdWrite(tx.kick, 1n);
  await until('used entry', () => tx.drv.usedIdx === 1);
  t.is(port.sent.length, 1);
  // A new call fd (e.g. QEMU's destination sends SET_VRING_CALL after SET_VRING_KICK started the ring).
  const call2 = native.eventfd(0);
  t.teardown(() => native.close(call2));
  t.is(ack(await fe.request(R.SET_VRING_CALL, { index: 1, noFd: false }, { needReply: true, fds: [call2] })), 0n);
  t.not(native.eventfdRead(call2), null, 'the owed notification arrives on the new fd');
  // Nothing owed: another new fd is not signalled.
  const call3 = native.eventfd(0);
  t.teardown(() => native.close(call3));
  t.is(ack(await fe.request(R.SET_VRING_CALL, { index: 1, noFd: false }, { needReply: true, fds: [call3] })), 0n);
  t.is(native.eventfdRead(call3), null, 'no notification when none was missed');
});

test('guest TX: indirect chains work and many frames are processed in order', async (t) => {
  const { port, tx } = await setup(t, FEATURES);
  const frames = Array.from({ length: 40 }, (_, i) => frameOf(60 + i, i));
  for (const [i, f] of frames.entries()) {
    tx.drv.addChain(
      [
        { byteLen: 12, write: false, data: new Uint8Array(12) },
        { byteLen: f.length, write: false, data: f },
      ],
      { indirect: i % 2 === 0 },
    );
  }
  native.eventfdWrite(tx.kick, 1n);
  await until('40 frames', () => port.sent.length === 40);
  t.deepEqual(port.sent, frames);
});

test('guest RX, mergeable: a 3000-byte frame spans three 1024-byte buffers with num_buffers = 3', async (t) => {
  const { dev, rx } = await setup(t, FEATURES);
  const heads = [0, 1, 2, 3].map(() => rx.drv.addChain([{ byteLen: 1024, write: true }]));
  native.eventfdWrite(rx.kick, 1n);
  const frame = frameOf(3000, 9);
  t.is(dev.deliver(frame, PLAIN), 'ok');
  const used = rx.drv.readUsed();
  t.deepEqual(used.map((u) => u.id), heads.slice(0, 3));
  t.deepEqual(used.map((u) => u.len), [1024, 1024, 3012 - 2048]);
  const bytes = Buffer.concat(used.map((u) => u.data!));
  t.is(bytes.readUInt16LE(10), 3, 'num_buffers');
  t.deepEqual(new Uint8Array(bytes.subarray(12)), frame);
  t.not(native.eventfdRead(rx.call), null, 'guest notified');
});

test('guest RX without mergeable buffers: header + frame in one buffer; too small a buffer drops the frame, keeps the buffer', async (t) => {
  const features = bit(VirtioF.VERSION_1) | bit(VirtioF.RING_EVENT_IDX);
  const { dev, rx } = await setup(t, features);
  rx.drv.addChain([{ byteLen: 100, write: true }]);
  t.is(dev.deliver(frameOf(200, 3), PLAIN), 'dropped', 'does not fit in 100 bytes');
  t.is(dev.stats.rxDroppedTooBig, 1);
  t.is(rx.drv.readUsed().length, 0, 'buffer not consumed');
  const small = frameOf(60, 4);
  t.is(dev.deliver(small, PLAIN), 'ok');
  const [u] = rx.drv.readUsed();
  t.is(u!.len, 72);
  t.deepEqual(u!.data!.subarray(12), small);
});

test('guest RX with no buffers answers busy, and the waiter runs when the guest posts buffers and kicks', async (t) => {
  const { dev, rx } = await setup(t, FEATURES);
  t.is(dev.deliver(frameOf(64, 5), PLAIN), 'busy');
  let woke = false;
  dev.onSpace(() => (woke = true));
  rx.drv.addChain([{ byteLen: 2048, write: true }]);
  native.eventfdWrite(rx.kick, 1n);
  await until('space waiter', () => woke);
  t.is(dev.deliver(frameOf(64, 5), PLAIN), 'ok');
});

test('a descriptor loop on the TX ring breaks that ring only: err eventfd signalled, RX keeps working (D13)', async (t) => {
  const { dev, rx, tx, session, port } = await setup(t, FEATURES);
  const a = tx.drv.takeDesc();
  const b = tx.drv.takeDesc();
  const buf = tx.drv.alloc(64);
  tx.drv.writeDesc(a, { addr: buf, len: 64, flags: VIRTQ_DESC_F_NEXT, next: b });
  tx.drv.writeDesc(b, { addr: buf, len: 64, flags: VIRTQ_DESC_F_NEXT, next: a });
  tx.drv.pushHead(a);
  native.eventfdWrite(tx.kick, 1n);
  await until('err eventfd', () => native.eventfdRead(tx.err) !== null);
  t.regex(session.rings[1]!.broken!.message, /loop|longer|ttl/i);
  t.is((session.rings[1]!.broken as { code?: string }).code, 'VQ_LOOP');
  t.is(session.rings[1]!.queue, null, 'TX ring stopped');
  t.is(port.sent.length, 0);
  rx.drv.addChain([{ byteLen: 2048, write: true }]);
  t.is(dev.deliver(frameOf(100, 6), PLAIN), 'ok', 'RX ring unaffected');
  t.truthy(session.rings[0]!.queue, 'RX ring still ready');
});

test('SEND_RARP (protocol feature RARP): a RARP announcement for the guest MAC goes out on the uplink', async (t) => {
  const { port, fe } = await setup(t, FEATURES);
  // setup() negotiated REPLY_ACK|MQ only: without RARP the request is refused.
  const mac = new Uint8Array([0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);
  const refused = await fe.request(R.SEND_RARP, { mac }, { needReply: true });
  t.not(ack(refused), 0n);
  await fe.request(R.SET_PROTOCOL_FEATURES, bit(ProtoF.REPLY_ACK) | bit(ProtoF.RARP));
  const ok = await fe.request(R.SEND_RARP, { mac }, { needReply: true });
  t.is(ack(ok), 0n);
  t.is(port.sent.length, 1);
  const f = port.sent[0]!;
  t.deepEqual(f.subarray(0, 6), new Uint8Array(6).fill(0xff), 'broadcast');
  t.deepEqual(f.subarray(6, 12), mac);
  t.is((f[12]! << 8) | f[13]!, 0x8035, 'ETH_P_RARP');
  t.is((f[20]! << 8) | f[21]!, 3, 'reverse request');
  t.deepEqual(f.subarray(22, 28), mac);
});

test('SET_VRING_KICK with NOFD: the ring is polled, frames leave without any kick', async (t) => {
  const { port, tx, session } = await setup(t, FEATURES, { txKickNoFd: true });
  t.is(session.rings[1]!.kickFd, null);
  const frame = frameOf(80, 11);
  tx.drv.addChain([
    { byteLen: 12, write: false, data: new Uint8Array(12) },
    { byteLen: 80, write: false, data: frame },
  ]);
  await until('polled frame on the uplink', () => port.sent.length === 1);
  t.deepEqual(port.sent[0], frame);
});

// Serial: counts process-wide mappings and fds, so no sibling test may run meanwhile.
test.serial('disconnect releases everything the session owned: guest memory mapping, kick/call/err eventfds', async (t) => {
  const guestMaps = () => readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes('memfd:guest')).length;
  const eventfds = () => countFds('eventfd');
  const { sf, ep, session } = await setup(t, FEATURES);
  t.is(session.memory.regionCount, 1);
  const mapsBefore = guestMaps();
  const fdsBefore = eventfds();
  const gone = new Promise<void>((r) => ep.once('disconnect', () => r()));
  sf.close();
  await gone;
  t.is(guestMaps(), mapsBefore - 1, "the backend's mapping of guest memory is gone (the test's own stays)");
  t.is(eventfds(), fdsBefore - 6, 'the backend closed its 6 eventfds (kick/call/err of 2 rings)');
  t.is(session.memory.regionCount, 0);
});

/** A 3000-byte TCP/IPv4 frame as a TSO sender leaves it: GSO TCPV4 mss 1000, partial checksum. */
function tsoFrame(): { frame: Uint8Array; hdr: NetHdr } {
  const frame = ipv4Tcp(3000);
  const pseudo = fold(sum16(frame, 26, 34) + 6 + (frame.length - 34));
  frame[50] = pseudo >> 8;
  frame[51] = pseudo & 0xff;
  const hdr = new NetHdr();
  hdr.flags = NET_HDR_F_NEEDS_CSUM;
  hdr.gsoType = GSO_TCPV4;
  hdr.gsoSize = 1000;
  hdr.hdrLen = 54;
  hdr.csumStart = 34;
  hdr.csumOffset = 16;
  return { frame, hdr };
}

test('offloads, guest without GUEST_CSUM/TSO: a TSO frame arrives as 3 segments with valid checksums and plain headers', async (t) => {
  const { dev, rx } = await setup(t, FEATURES);
  for (let i = 0; i < 8; i++) rx.drv.addChain([{ byteLen: 2048, write: true }]);
  const { frame, hdr } = tsoFrame();
  t.is(dev.deliver(frame, hdr), 'ok');
  const used = rx.drv.readUsed();
  t.is(used.length, 3);
  const payload: number[] = [];
  for (const u of used) {
    const b = u.data!;
    t.deepEqual([...b.subarray(0, 10)], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 'no offload flags for this guest');
    const seg = b.subarray(12);
    t.true(tcpValid(seg, false));
    payload.push(...seg.subarray(54));
  }
  t.deepEqual(Uint8Array.from(payload), frame.subarray(54));
  t.is(dev.stats.rxSwSegmented, 1);
  t.is(frame[50]! << 8 | frame[51]!, fold(sum16(frame, 26, 34) + 6 + (frame.length - 34)), "the sender's frame is untouched");
});

test('offloads, guest with GUEST_CSUM + GUEST_TSO4: the TSO frame passes whole with its header', async (t) => {
  const features = FEATURES | bit(VirtioF.NET_F_GUEST_CSUM) | bit(VirtioF.NET_F_GUEST_TSO4);
  const { dev, rx } = await setup(t, features);
  for (let i = 0; i < 4; i++) rx.drv.addChain([{ byteLen: 2048, write: true }]);
  const { frame, hdr } = tsoFrame();
  t.is(dev.deliver(frame, hdr), 'ok');
  const used = rx.drv.readUsed();
  t.is(used.length, 2, 'one 3054-byte frame in two mergeable buffers');
  const b = Buffer.concat(used.map((u) => u.data!));
  const got = new NetHdr().read(b, 0);
  t.deepEqual([got.flags, got.gsoType, got.gsoSize, got.csumStart, got.csumOffset], [1, GSO_TCPV4, 1000, 34, 16]);
  t.is(b.readUInt16LE(10), 2, 'num_buffers');
  t.deepEqual(new Uint8Array(b.subarray(12)), frame);
  t.is(dev.stats.rxSwSegmented, 0);
});

test('offloads, guest TX: the virtio header travels with the frame to the port', async (t) => {
  const features = FEATURES | bit(VirtioF.NET_F_CSUM) | bit(VirtioF.NET_F_HOST_TSO4);
  const { port, tx } = await setup(t, features);
  const { frame, hdr } = tsoFrame();
  const h = new Uint8Array(12);
  hdr.write(h, 0, 12, 0);
  tx.drv.addChain([
    { byteLen: 12, write: false, data: h },
    { byteLen: frame.length, write: false, data: frame },
  ]);
  native.eventfdWrite(tx.kick, 1n);
  await until('frame on the uplink', () => port.sent.length === 1);
  t.deepEqual(port.sent[0], frame);
  const got = port.hdrs[0]!;
  t.deepEqual([got.flags, got.gsoType, got.gsoSize, got.csumStart, got.csumOffset], [1, GSO_TCPV4, 1000, 34, 16]);
});

test('offloads, TCPV6 and ECN: passed whole only to a guest with GUEST_TSO6 (+GUEST_ECN for ECN), else segmented', async (t) => {
  const features = FEATURES | bit(VirtioF.NET_F_GUEST_CSUM) | bit(VirtioF.NET_F_GUEST_TSO6);
  const { dev, rx } = await setup(t, features);
  for (let i = 0; i < 16; i++) rx.drv.addChain([{ byteLen: 4096, write: true }]);
  const v6 = ipv6Tcp(2500);
  const hdr = new NetHdr();
  hdr.gsoType = GSO_TCPV6;
  hdr.gsoSize = 1200;
  t.is(dev.deliver(v6, hdr), 'ok');
  let used = rx.drv.readUsed();
  t.is(used.length, 1, 'TSO6 guest: one whole frame');
  t.is(used[0]!.data![1], GSO_TCPV6);
  hdr.gsoType = GSO_TCPV6 | GSO_ECN; // guest did not ack GUEST_ECN
  t.is(dev.deliver(v6, hdr), 'ok');
  used = rx.drv.readUsed();
  t.is(used.length, 3, 'ECN without GUEST_ECN: segmented in software');
  for (const u of used) t.true(tcpValid(u.data!.subarray(12), true));
  hdr.gsoType = GSO_TCPV4; // guest did not ack GUEST_TSO4
  const v4 = ipv4Tcp(2000);
  t.is(dev.deliver(v4, hdr), 'ok');
  t.is(rx.drv.readUsed().length, 2, 'TCPV4 without GUEST_TSO4: segmented');
});

test('one ring reset while the other runs (VIRTIO_F_RING_RESET): stop, resize, move and restart the TX ring', async (t) => {
  const features = FEATURES | bit(VirtioF.RING_RESET);
  const { dev, port, rx, tx, fe, session, mem } = await setup(t, features);
  tx.drv.addChain([
    { byteLen: 12, write: false, data: new Uint8Array(12) },
    { byteLen: 60, write: false, data: frameOf(60, 1) },
  ]);
  native.eventfdWrite(tx.kick, 1n);
  await until('first frame', () => port.sent.length === 1);
  const base = await fe.request(R.GET_VRING_BASE, { index: 1, num: 0 });
  t.deepEqual(base!.payload, { index: 1, num: 1 }, 'stopped after one chain');
  t.is(session.rings[1]!.queue, null);
  // Reconfigure: a new, smaller ring somewhere else, starting from index 0.
  const drv = new SplitDriver(mem, { size: 16, base: 0x80000, heapAddr: 0x300000, heapByteLen: 0x10000, eventIdx: true });
  const opt = { needReply: true };
  t.is(ack(await fe.request(R.SET_VRING_NUM, { index: 1, num: 16 }, opt)), 0n);
  t.is(ack(await fe.request(R.SET_VRING_BASE, { index: 1, num: 0 }, opt)), 0n);
  const addr = (a: number) => BigInt(UVA_BASE + a);
  await fe.request(R.SET_VRING_ADDR, { index: 1, flags: 0, descUserAddr: addr(drv.descAddr), usedUserAddr: addr(drv.usedAddr), availUserAddr: addr(drv.availAddr), logGuestAddr: 0n }, opt);
  // Meanwhile the RX ring still delivers.
  rx.drv.addChain([{ byteLen: 2048, write: true }]);
  t.is(dev.deliver(frameOf(70, 2), PLAIN), 'ok');
  const kick = native.eventfd(0);
  t.teardown(() => native.close(kick));
  t.is(ack(await fe.request(R.SET_VRING_KICK, { index: 1, noFd: false }, { ...opt, fds: [kick] })), 0n);
  t.truthy(session.rings[1]!.queue, 'TX ring running again');
  const f = frameOf(90, 3);
  drv.addChain([
    { byteLen: 12, write: false, data: new Uint8Array(12) },
    { byteLen: 90, write: false, data: f },
  ]);
  native.eventfdWrite(kick, 1n);
  await until('frame from the reset ring', () => port.sent.length === 2);
  t.deepEqual(port.sent[1], f);
  t.is(drv.readUsed().length, 1);
});
