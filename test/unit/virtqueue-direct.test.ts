/**
 * popDirect (queue.ts DirectBuffer): the one-descriptor fast path of both ring formats. It must pop
 * exactly what pop() would for a plain single descriptor, and leave everything else to pop() without
 * consuming it, so a hostile descriptor is still judged by the one walker: chains, indirect tables,
 * the wrong direction, zero length, a buffer crossing regions, unmapped or >= 2^53 addresses, a bad
 * head (split) or an id already in flight (packed), an inflight journal, a legacy big-endian ring.
 * An IOTLB miss parks the queue exactly as pop() does. Also drain()'s direct handler: ring order kept across direct and chain buffers.
 */
import test from 'ava';
import {
  Chain,
  ChainReader,
  DIRECT_CHAIN,
  DIRECT_EMPTY,
  DIRECT_OK,
  FlatMemory,
  SplitDriver,
  RegionMemory,
  SplitQueue,
  createDirectBuffer,
  createDrainPlan,
  readBytes,
} from '../../virtqueue/index.ts';
import { IotlbCache, IotlbMemory } from '../../virtqueue/iotlb.ts';
import { SplitInflight, inflightQueueSize } from '../../virtqueue/inflight.ts';
import { VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_WRITE } from '../../virtqueue/defs.ts';
import { bytes, formatRig } from './virtqueue-fixtures.ts';

const SIZE = 16;
const rig = formatRig;

for (const kind of ['split', 'packed'] as const) {
  test(`${kind}: a single readable descriptor pops in place: bytes, offset, len, id and address as the driver wrote them`, (t) => {
    const r = rig(kind);
    const data = bytes(76, 3);
    const id = r.add([{ byteLen: 76, write: false, data }]);
    const b = createDirectBuffer(false);
    t.is(r.q.popDirect(b), DIRECT_OK);
    t.is(b.id, id);
    t.is(b.byteLen, 76);
    t.deepEqual(b.bytes.subarray(b.offset, b.offset + 76), data);
    const seen = new Uint8Array(76);
    readBytes(r.mem, b.addr, seen);
    t.deepEqual(seen, data, 'addr is the guest address of those bytes');
    t.is(r.q.stats.popped, 1);
    t.is(r.q.stats.poppedDirect, 1);
    t.is(r.q.popDirect(b), DIRECT_EMPTY);
    r.q.pushUsed(b.id, 0);
    t.true(r.q.flushUsed());
    t.deepEqual(r.used().map((u) => [u.id, u.len]), [[id, 0]]);
  });

  test(`${kind}: a writable buffer pops only for a writable DirectBuffer; the device's bytes reach the driver`, (t) => {
    const r = rig(kind);
    const id = r.add([{ byteLen: 64, write: true }]);
    const rd = createDirectBuffer(false);
    t.is(r.q.popDirect(rd), DIRECT_CHAIN, 'wrong direction: left to pop()');
    t.is(r.q.stats.popped, 0, 'nothing consumed');
    const wb = createDirectBuffer(true);
    t.is(r.q.popDirect(wb), DIRECT_OK);
    wb.bytes.set(bytes(10, 9), wb.offset);
    r.q.pushUsed(wb.id, 10);
    r.q.flushUsed();
    const [u] = r.used();
    t.is(u!.id, id);
    t.is(u!.len, 10);
    t.deepEqual(u!.data, bytes(10, 9));
  });

  test(`${kind}: chains, indirect tables and zero-length descriptors answer DIRECT_CHAIN and pop() takes them, in ring order`, (t) => {
    const r = rig(kind);
    const ids = [
      r.add([{ byteLen: 12, write: false }, { byteLen: 64, write: false }]),
      r.add([{ byteLen: 40, write: false }], { indirect: true }),
      r.add([{ byteLen: 0, write: false }]),
      r.add([{ byteLen: 30, write: false }]),
    ];
    const b = createDirectBuffer(false);
    const c = new Chain();
    const order: string[] = [];
    for (;;) {
      const d = r.q.popDirect(b);
      if (d === DIRECT_EMPTY) break;
      if (d === DIRECT_OK) order.push(`direct ${b.id}`);
      else {
        t.true(r.q.pop(c));
        order.push(`chain ${c.head}`);
      }
    }
    t.deepEqual(order, [`chain ${ids[0]}`, `chain ${ids[1]}`, `chain ${ids[2]}`, `direct ${ids[3]}`]);
    t.is(r.q.broken, null);
  });

  test(`${kind}: a buffer crossing a region boundary, or unmapped, is left to the walker (which splits it, or breaks the queue)`, (t) => {
    const half = 1 << 19;
    const mem = new RegionMemory([
      { gpa: 0, uva: 0x1000_0000, byteLen: half, bytes: new Uint8Array(half) },
      { gpa: half, uva: 0x2000_0000, byteLen: half, bytes: new Uint8Array(half) },
    ]);
    const r = rig(kind, mem);
    r.add([{ byteLen: 100, write: false, addr: half - 40 }]);
    const b = createDirectBuffer(false);
    const c = new Chain();
    t.is(r.q.popDirect(b), DIRECT_CHAIN);
    t.true(r.q.pop(c));
    t.is(c.segCount, 2, 'the walker split it at the boundary');
    t.is(new ChainReader().reset(c).remaining, 100);
    r.add([{ byteLen: 100, write: false, addr: 2 * half + 0x1000 }]);
    t.is(r.q.popDirect(b), DIRECT_CHAIN);
    t.false(r.q.pop(c));
    t.is(r.q.broken?.code, 'VQ_UNMAPPED');
    t.is(r.q.popDirect(b), DIRECT_EMPTY, 'a broken queue pops nothing');
  });

  test(`${kind}: unpop after popDirect hands the same buffer out again (mixed with chains)`, (t) => {
    const r = rig(kind);
    const a = r.add([{ byteLen: 20, write: false }]);
    const ch = r.add([{ byteLen: 8, write: false }, { byteLen: 8, write: false }]);
    const z = r.add([{ byteLen: 20, write: false }]);
    const b = createDirectBuffer(false);
    const c = new Chain();
    t.is(r.q.popDirect(b), DIRECT_OK);
    t.is(b.id, a);
    t.is(r.q.popDirect(b), DIRECT_CHAIN);
    t.true(r.q.pop(c));
    t.is(c.head, ch);
    t.is(r.q.popDirect(b), DIRECT_OK);
    t.is(b.id, z);
    r.q.unpop(3);
    t.is(r.q.popDirect(b), DIRECT_OK);
    t.is(b.id, a, 'from the first again');
    r.q.pushUsed(a, 0);
    t.true(r.q.pop(c));
    r.q.pushUsed(c.head, 0);
    t.is(r.q.popDirect(b), DIRECT_OK);
    r.q.pushUsed(b.id, 0);
    r.q.flushUsed();
    t.deepEqual(r.used().map((u) => u.id), [a, ch, z]);
  });

  test(`${kind}: drain() with a direct handler keeps ring order across direct and chain buffers; false gives the buffer back`, (t) => {
    const r = rig(kind);
    const ids = [
      r.add([{ byteLen: 20, write: false }]),
      r.add([{ byteLen: 8, write: false }, { byteLen: 8, write: false }]),
      r.add([{ byteLen: 20, write: false }]),
      r.add([{ byteLen: 20, write: false }]),
    ];
    const seen: string[] = [];
    const res = r.q.drain(
      createDrainPlan((c) => (seen.push(`chain ${c.head}`), 0), 64, {
        onDirect: (b) => {
          if (b.id === ids[3] && !seen.includes('refused')) {
            seen.push('refused');
            return false;
          }
          seen.push(`direct ${b.id}`);
          return 0;
        },
        directBuf: createDirectBuffer(false),
      }),
    );
    t.deepEqual(seen, [`direct ${ids[0]}`, `chain ${ids[1]}`, `direct ${ids[2]}`, 'refused']);
    t.true(res.stopped);
    t.is(res.processed, 3);
    t.true(r.q.hasAvailable(), 'the refused buffer is available again');
    t.is(r.q.stats.poppedDirect, 3, 'the refused pop counted too (unpops are not subtracted)');
  });

  test(`${kind}: an IOTLB miss parks the queue as pop() does (nothing consumed, not broken); the entry resumes it`, (t) => {
    const UVA = 0x7f00_0000_0000;
    const region = { gpa: 0, uva: UVA, byteLen: 1 << 20, bytes: new Uint8Array(1 << 20) };
    const cache = new IotlbCache();
    const IOVA = 0x1_0000_0000;
    cache.update(IOVA, 0x20000, UVA, 'rw'); // rings and the driver's heap, not the buffer below
    const mem = new IotlbMemory(cache, new RegionMemory([region]));
    const r = rig(kind, mem, IOVA);
    r.add([{ byteLen: 64, write: false, addr: 0x2_0000_0000 }]);
    const b = createDirectBuffer(false);
    t.is(r.q.popDirect(b), DIRECT_EMPTY, 'parked on the miss');
    t.is(r.q.iotlbMisses, 1);
    t.is(r.q.broken, null, 'a miss is not an error');
    t.is(r.q.stats.popped, 0);
    t.false(r.q.pop(new Chain()), 'pop() sees the same miss');
    cache.update(0x2_0000_0000, 0x1000, UVA + 0x30000, 'ro');
    t.is(r.q.popDirect(b), DIRECT_OK, 'resumes once the entry arrived');
    t.is(b.bytes, region.bytes);
    t.is(b.offset, 0x30000);
  });
}

test('split: a head outside the ring is left to pop(), which breaks the queue with VQ_BAD_HEAD', (t) => {
  const r = rig('split');
  r.split!.pushHead(SIZE + 3);
  const b = createDirectBuffer(false);
  t.is(r.q.popDirect(b), DIRECT_CHAIN);
  t.false(r.q.pop(new Chain()));
  t.is(r.q.broken?.code, 'VQ_BAD_HEAD');
});

test('split: addresses >= 2^53 are left to the walker (VQ_UNMAPPED), a legacy big-endian ring always takes pop()', (t) => {
  const r = rig('split');
  const d = r.split!.takeDesc();
  r.split!.writeDesc(d, { addr: 2 ** 60, len: 64, flags: 0, next: 0 });
  r.split!.pushHead(d);
  t.is(r.q.popDirect(createDirectBuffer(false)), DIRECT_CHAIN);
  t.false(r.q.pop(new Chain()));
  t.is(r.q.broken?.code, 'VQ_UNMAPPED');

  const mem = new FlatMemory(1 << 20);
  const drv = new SplitDriver(mem, { size: SIZE, bigEndian: true });
  const q = new SplitQueue(drv.queueConfig({ bigEndian: true }), mem);
  drv.addChain([{ byteLen: 64, write: false }]);
  t.is(q.popDirect(createDirectBuffer(false)), DIRECT_CHAIN);
  t.true(q.pop(new Chain()));
});

test('split: with an inflight journal every buffer takes pop() (it records what is in flight)', (t) => {
  const r = rig('split');
  r.q.attachInflight(new SplitInflight(new Uint8Array(inflightQueueSize('split', SIZE)), SIZE));
  r.add([{ byteLen: 64, write: false }]);
  t.is(r.q.popDirect(createDirectBuffer(false)), DIRECT_CHAIN);
  t.true(r.q.pop(new Chain()));
});

test('packed: an id already in flight is left to pop(), which breaks the queue with VQ_BAD_ID', (t) => {
  const r = rig('packed');
  const id = r.add([{ byteLen: 20, write: false }]);
  const b = createDirectBuffer(false);
  t.is(r.q.popDirect(b), DIRECT_OK);
  // A second descriptor reusing the same id while the first is still in flight.
  r.packed!.writeDesc(1, { addr: 0x9000, len: 20, id, flags: VIRTQ_DESC_F_AVAIL });
  t.is(r.q.popDirect(b), DIRECT_CHAIN);
  t.false(r.q.pop(new Chain()));
  t.is(r.q.broken?.code, 'VQ_BAD_ID');
});

test('packed: a descriptor of the wrong direction is not popped directly, the right DirectBuffer takes it', (t) => {
  const r = rig('packed');
  r.packed!.writeDesc(0, { addr: 0x9000, len: 20, id: 0, flags: VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_WRITE });
  const b = createDirectBuffer(false);
  t.is(r.q.popDirect(b), DIRECT_CHAIN);
  t.is(r.q.popDirect(createDirectBuffer(true)), DIRECT_OK);
  t.is(r.q.stats.popped, 1);
});
