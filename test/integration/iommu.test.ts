/**
 * vIOMMU (VIRTIO_F_ACCESS_PLATFORM, vhost-user.rst "IOMMU support") through the session with our
 * scripted frontend playing QEMU: ring and buffer addresses are IOVAs; the backend asks for missing
 * translations with IOTLB_MSG MISS on the back-end channel, the frontend answers with IOTLB_MSG UPDATE
 * on the main channel, and the queue resumes. IOVA = guest physical address here, mapped to the
 * frontend's user address UVA_BASE + iova.
 */
import test, { type ExecutionContext } from 'ava';
import { native } from '../../native/index.ts';
import { FrontendReq as R, IotlbType, ProtoF, VirtioF, bit, type IotlbMsg, type ScriptedFrontend } from '../../protocol/index.ts';
import { NetHdr } from '../../backend/net/frame/net-hdr.ts';
import { BackendPeer, PendingRequests } from '../helpers/backend-peer.ts';
import { MEM_BYTES, UVA_BASE, frameOf, setupLoopback, until } from '../helpers/loopback.ts';

const FEATURES = bit(VirtioF.VERSION_1) | bit(VirtioF.NET_F_MRG_RXBUF) | bit(VirtioF.ACCESS_PLATFORM);
const PROTO = bit(ProtoF.BACKEND_REQ);
const PAGE = 4096;
const RW = 3;
const RO = 1;

function update(fe: ScriptedFrontend, iova: number, size: number, perm = RW) {
  const msg: IotlbMsg = { iova: BigInt(iova), size: BigInt(size), userAddr: BigInt(UVA_BASE + iova), perm, type: IotlbType.UPDATE };
  return fe.request(R.IOTLB_MSG, msg, { needReply: true });
}

/** The rings' IOVA window [0, 0x100000) is mapped up front; the buffer heaps (0x100000..) are not. */
async function rig(t: ExecutionContext, opts: { serveMisses?: boolean; heapPerm?: number } = {}) {
  const peer = new BackendPeer();
  t.teardown(() => peer.close());
  let frontend: ScriptedFrontend | null = null;
  const served: number[] = [];
  /** UPDATEs sent for misses, answered while the test goes on; awaited before the connection closes. */
  const pendingUpdates = new PendingRequests();
  // QEMU's vhost_device_iotlb_miss: translate, send the UPDATE on the main channel, then ack the miss.
  peer.answer = (msg) => {
    const m = msg.payload as IotlbMsg;
    if (msg.name === 'IOTLB_MSG' && m.type === IotlbType.MISS && opts.serveMisses !== false) {
      const page = Number(m.iova) & ~(PAGE - 1);
      served.push(page);
      pendingUpdates.add(update(frontend!, page, PAGE, opts.heapPerm ?? RW));
    }
    return 0n;
  };
  const lb = await setupLoopback(t, FEATURES, {
    protocolFeatures: PROTO,
    ringAddr: (gpa) => BigInt(gpa),
    beforeRings: async (fe) => {
      frontend = fe;
      await fe.request(R.SET_BACKEND_REQ_FD, undefined, { fds: [peer.remote], needReply: true });
      native.close(peer.remote);
    },
    // QEMU's order too: the memory table, then IOTLB updates of its user addresses.
    afterMemory: async (fe) => {
      const ack = await update(fe, 0, 0x100000);
      t.is((ack!.payload as { value: bigint }).value, 0n, "the rings' IOVA window is mapped");
    },
  });
  // Registered after setupLoopback's, so it runs first (ava runs teardowns in reverse): a miss served
  // just as the test ended gets its reply before the frontend closes; a failed UPDATE fails the test.
  t.teardown(() => pendingUpdates.settled());
  return { ...lb, peer, served };
}

test('IOTLB: rings at IOVAs start from the UPDATEs; a buffer miss is sent on the back-end channel, answered with an UPDATE, and the frame flows', async (t) => {
  const { dev, rx, tx, port, peer, served, session } = await rig(t);
  t.truthy(session.iommu);
  t.truthy(session.rings[0]!.queue, 'RX ring started (its IOVAs were mapped)');
  // Guest TX: the buffers are in the unmapped heap.
  tx.drv.addChain([
    { byteLen: 12, write: false, data: new Uint8Array(12) },
    { byteLen: 80, write: false, data: frameOf(80, 3) },
  ]);
  native.eventfdWrite(tx.kick, 1n);
  await until('frame after the miss is served', () => port.sent.length === 1, 5000);
  t.deepEqual(port.sent[0], frameOf(80, 3));
  const misses = peer.named('IOTLB_MSG').map((m) => m.payload as IotlbMsg);
  t.true(misses.length >= 1);
  t.true(misses.every((m) => m.type === IotlbType.MISS));
  t.is(misses[0]!.perm, RO, 'a device read asks for read access');
  t.is(Number(misses[0]!.iova) & ~(PAGE - 1), served[0]!);
  // Guest RX into an unmapped buffer: the miss asks for write access.
  rx.drv.addChain([{ byteLen: 2048, write: true }]);
  native.eventfdWrite(rx.kick, 1n);
  const first = dev.deliver(frameOf(100, 4), new NetHdr());
  t.true(first === 'busy' || first === 'ok');
  await until('RX delivered after its miss', () => {
    if (rx.drv.usedIdx === 0) dev.deliver(frameOf(100, 4), new NetHdr());
    return rx.drv.usedIdx === 1;
  }, 5000);
  // The buffer the guest got holds the frame (after the virtio-net header), written through the IOVA
  // mapping the UPDATE installed: not just a used index that moved.
  const used = rx.drv.readUsed();
  t.is(used.length, 1);
  const hdrLen = used[0]!.len - 100;
  t.true(hdrLen === 10 || hdrLen === 12, `used length ${used[0]!.len}: a 100-byte frame and a virtio-net header`);
  t.deepEqual(used[0]!.data!.subarray(hdrLen, hdrLen + 100), frameOf(100, 4), 'the RX bytes are the frame delivered');
  t.true(peer.named('IOTLB_MSG').some((m) => (m.payload as IotlbMsg).perm === 2 || (m.payload as IotlbMsg).perm === RW), 'write miss');
  t.is(session.rings[0]!.broken, null);
  t.is(session.rings[1]!.broken, null);
});

test('IOTLB: a device write to a read-only mapping is an ACCESS_FAIL: reported, and only that ring breaks', async (t) => {
  const { dev, rx, tx, port, peer, session } = await rig(t, { heapPerm: RO });
  rx.drv.addChain([{ byteLen: 2048, write: true }]);
  native.eventfdWrite(rx.kick, 1n);
  await until('ACCESS_FAIL', () => {
    dev.deliver(frameOf(100, 5), new NetHdr());
    return peer.named('IOTLB_MSG').some((m) => (m.payload as IotlbMsg).type === IotlbType.ACCESS_FAIL);
  }, 5000);
  t.is((session.rings[0]!.broken as { code?: string } | null)?.code, 'VQ_IOTLB_PERM');
  // TX (device reads: RO is enough) still works.
  tx.drv.addChain([
    { byteLen: 12, write: false, data: new Uint8Array(12) },
    { byteLen: 60, write: false, data: frameOf(60, 6) },
  ]);
  native.eventfdWrite(tx.kick, 1n);
  await until('TX still flows', () => port.sent.length === 1, 5000);
  t.pass();
});

test('IOTLB: INVALIDATE of a ring page stops that ring; the next UPDATE brings it back at the same position', async (t) => {
  const { fe, tx, port, session } = await rig(t);
  const inval: IotlbMsg = { iova: 0x40000n, size: BigInt(PAGE), userAddr: 0n, perm: 0, type: IotlbType.INVALIDATE };
  await fe.request(R.IOTLB_MSG, inval, { needReply: true });
  t.is(session.rings[1]!.queue, null, 'TX ring (at IOVA 0x40000) stopped');
  t.truthy(session.rings[0]!.queue, 'RX ring untouched');
  await update(fe, 0x40000, PAGE);
  t.truthy(session.rings[1]!.queue, 'TX ring back');
  tx.drv.addChain([
    { byteLen: 12, write: false, data: new Uint8Array(12) },
    { byteLen: 60, write: false, data: frameOf(60, 7) },
  ]);
  native.eventfdWrite(tx.kick, 1n);
  await until('TX after the remap', () => port.sent.length === 1, 5000);
  t.pass();
});

test('IOTLB_MSG without ACCESS_PLATFORM negotiated is refused', async (t) => {
  const { fe } = await setupLoopback(t, bit(VirtioF.VERSION_1));
  const r = await update(fe, 0, PAGE);
  t.is((r!.payload as { value: bigint }).value, 1n);
});

test('IOTLB: an UPDATE whose user addresses are not (all) in the memory table gets a non-zero reply and is not applied', async (t) => {
  const { fe, session } = await rig(t);
  const entries = () => session.iommu!.cache.entries().length;
  const before = entries();
  const nack = async (iova: number, size: number, uaddr: bigint) => {
    const msg: IotlbMsg = { iova: BigInt(iova), size: BigInt(size), userAddr: uaddr, perm: RW, type: IotlbType.UPDATE };
    return ((await fe.request(R.IOTLB_MSG, msg, { needReply: true }))!.payload as { value: bigint }).value;
  };
  t.not(await nack(0x800000, PAGE, 0x1000n), 0n, 'nowhere near the table');
  t.not(await nack(0x800000, 2 * PAGE, BigInt(UVA_BASE + MEM_BYTES - PAGE)), 0n, 'runs past the end of the region');
  t.not(await nack(0x800000, 0, BigInt(UVA_BASE)), 0n, 'size 0');
  t.is(entries(), before, 'nothing applied');
  t.is(await nack(0x800000, PAGE, BigInt(UVA_BASE + 0x200000)), 0n, 'inside the table: applied');
});
