/**
 * popBurst / pushUsedBurst (queue.ts DirectBurst): popDirect over a run of buffers, both ring formats
 * (packed has its own loop, split the generic one in queue-core.ts). The run must hand out exactly
 * what popDirect would, one by one, and stop before anything popDirect leaves to pop() (a chain, an
 * indirect table, the wrong direction, an id in flight, an IOTLB miss) or that lies in another region;
 * pushUsedBurst must publish the same used elements as pushUsed. Also drain()'s burst handler.
 */
import test from 'ava';
import {
  Chain,
  DIRECT_CHAIN,
  DIRECT_OK,
  BURST_MAX,
  DirectBurst,
  FlatMemory,
  PackedDriver,
  PackedQueue,
  RegionMemory,
  createDirectBuffer,
  createDrainPlan,
  readBytes,
  type DriverBuffer,
} from '../../virtqueue/index.ts';
import { IotlbCache, IotlbMemory } from '../../virtqueue/iotlb.ts';
import { SplitInflight, PackedInflight, inflightQueueSize } from '../../virtqueue/inflight.ts';
import { VIRTQ_DESC_F_AVAIL } from '../../virtqueue/defs.ts';
import { bytes, formatRig, prng } from './virtqueue-fixtures.ts';

const SIZE = 16;
const rig = formatRig;

const one = (byteLen: number, write = false, data?: Uint8Array): DriverBuffer[] => [{ byteLen, write, ...(data ? { data } : {}) }];

for (const kind of ['split', 'packed'] as const) {
  test(`${kind}: a run of one-descriptor buffers pops together, each as popDirect would hand it out`, (t) => {
    const r = rig(kind);
    const datas = [0, 1, 2].map((i) => bytes(40 + i, i + 5));
    const ids = datas.map((d) => r.add(one(d.length, false, d)));
    const b = new DirectBurst(false);
    t.is(r.q.popBurst(b, 32), 3);
    t.is(b.count, 3);
    for (let k = 0; k < 3; k++) {
      t.is(b.id[k], ids[k]);
      t.is(b.byteLen[k], datas[k]!.length);
      t.deepEqual(b.bytes.subarray(b.offset[k], b.offset[k]! + b.byteLen[k]!), datas[k]);
      const seen = new Uint8Array(b.byteLen[k]!);
      readBytes(r.mem, b.addrBase + b.offset[k]!, seen);
      t.deepEqual(seen, datas[k], 'addrBase + offset is the guest address of those bytes');
    }
    t.is(r.q.stats.popped, 3);
    t.is(r.q.stats.poppedDirect, 3);
    t.is(r.q.popBurst(b, 32), 0, 'nothing left');
    b.usedLen.fill(0);
    r.q.pushUsedBurst(b, 3);
    t.is(r.q.pendingUsed, 3);
    r.q.flushUsed();
    t.deepEqual(r.used().map((u) => [u.id, u.len]), ids.map((id) => [id, 0]));
  });

  test(`${kind}: the run stops before a chain, an indirect table, a zero-length or wrong-direction buffer; pop() takes those in ring order`, (t) => {
    const r = rig(kind);
    const ids = [
      r.add(one(20)),
      r.add([{ byteLen: 12, write: false }, { byteLen: 64, write: false }]),
      r.add(one(20)),
      r.add(one(20)),
      r.add([{ byteLen: 40, write: false }], { indirect: true }),
      r.add(one(0)),
      r.add(one(30, true)),
      r.add(one(20)),
    ];
    const b = new DirectBurst(false);
    const c = new Chain();
    const order: string[] = [];
    for (let guard = 0; guard < 20; guard++) {
      const n = r.q.popBurst(b, 32);
      if (n > 0) {
        order.push(`burst ${Array.from(b.id.subarray(0, n)).join(',')}`);
        b.usedLen.fill(0);
        r.q.pushUsedBurst(b, n);
        continue;
      }
      if (!r.q.pop(c)) break;
      order.push(`chain ${c.head}`);
      r.q.pushUsed(c.head, 0);
    }
    t.deepEqual(order, [
      `burst ${ids[0]}`,
      `chain ${ids[1]}`,
      `burst ${ids[2]},${ids[3]}`,
      `chain ${ids[4]}`,
      `chain ${ids[5]}`,
      `chain ${ids[6]}`,
      `burst ${ids[7]}`,
    ]);
    t.is(r.q.broken, null);
    r.q.flushUsed();
    t.deepEqual(r.used().map((u) => u.id), ids, 'used in ring order');
  });

  test(`${kind}: max bounds the run, and a buffer in another region ends it (the next run starts there)`, (t) => {
    const half = 1 << 19;
    const lo = new Uint8Array(half);
    const hi = new Uint8Array(half);
    const mem = new RegionMemory([
      { gpa: 0, uva: 0x1000_0000, byteLen: half, bytes: lo },
      { gpa: half, uva: 0x2000_0000, byteLen: half, bytes: hi },
    ]);
    const r = rig(kind, mem);
    const ids = [
      r.add([{ byteLen: 30, write: false, addr: 0x40000 }]),
      r.add([{ byteLen: 30, write: false, addr: 0x41000 }]),
      r.add([{ byteLen: 30, write: false, addr: 0x42000 }]),
      r.add([{ byteLen: 30, write: false, addr: half + 0x1000 }]),
      r.add([{ byteLen: 30, write: false, addr: half + 0x2000 }]),
    ];
    const b = new DirectBurst(false);
    t.is(r.q.popBurst(b, 2), 2, 'max');
    // (max above BURST_MAX is taken as BURST_MAX: the burst's arrays hold that many.)
    t.deepEqual(Array.from(b.id.subarray(0, 2)), ids.slice(0, 2));
    t.is(r.q.popBurst(b, 32), 1, 'the last buffer of the low region');
    t.is(b.bytes, lo);
    t.is(b.offset[0], 0x42000);
    t.is(r.q.popBurst(b, 32), 2, 'the high region');
    t.is(b.bytes, hi);
    t.deepEqual(Array.from(b.offset.subarray(0, 2)), [0x1000, 0x2000]);
    t.deepEqual(Array.from(b.offset.subarray(0, 2), (o) => b.addrBase + o), [half + 0x1000, half + 0x2000]);
    t.is(r.q.stats.popped, 5);
  });

  test(`${kind}: unpop after popBurst gives back the tail; the same buffers come out again in order`, (t) => {
    const r = rig(kind);
    const ids = [0, 1, 2, 3, 4].map(() => r.add(one(24)));
    const b = new DirectBurst(false);
    t.is(r.q.popBurst(b, 32), 5);
    r.q.unpop(3);
    b.usedLen.fill(0);
    r.q.pushUsedBurst(b, 2);
    t.is(r.q.popBurst(b, 32), 3);
    t.deepEqual(Array.from(b.id.subarray(0, 3)), ids.slice(2));
    r.q.pushUsedBurst(b, 3);
    r.q.flushUsed();
    t.deepEqual(r.used().map((u) => u.id), ids);
    t.is(r.q.stats.popped, 5);
  });

  test(`${kind}: popBurst/pushUsedBurst and popDirect/pushUsed publish identical rings over many laps (random mixes, wrap-around)`, (t) => {
    // Two identical rigs, fed the same random buffers: one device pops one by one, the other in bursts.
    const rand = prng(kind === 'split' ? 11 : 12);
    const a = rig(kind);
    const z = rig(kind);
    const da = createDirectBuffer(true);
    const bz = new DirectBurst(true);
    const ca = new Chain();
    const cz = new Chain();
    let laps = 0;
    for (let round = 0; round < 300; round++) {
      const n = 1 + Math.floor(rand() * 5);
      for (let i = 0; i < n; i++) {
        const bufs: DriverBuffer[] =
          rand() < 0.2 ? [{ byteLen: 16, write: true }, { byteLen: 48, write: true }] : [{ byteLen: 16 + Math.floor(rand() * 64), write: true }];
        const ia = a.add(bufs);
        const iz = z.add(bufs);
        if (ia < 0 || iz < 0) break;
      }
      const fill = (bytesOut: Uint8Array, off: number, len: number, tag: number): number => {
        const w = Math.min(len, 8);
        for (let k = 0; k < w; k++) bytesOut[off + k] = (tag + k) & 0xff;
        return w;
      };
      // one by one
      for (;;) {
        const d = a.q.popDirect(da);
        if (d === DIRECT_OK) a.q.pushUsed(da.id, fill(da.bytes, da.offset, da.byteLen, da.id));
        else if (d === DIRECT_CHAIN && a.q.pop(ca)) a.q.pushUsed(ca.head, 0);
        else break;
      }
      // bursts
      for (;;) {
        const m = z.q.popBurst(bz, 1 + Math.floor(rand() * 4));
        if (m > 0) {
          for (let k = 0; k < m; k++) bz.usedLen[k] = fill(bz.bytes, bz.offset[k]!, bz.byteLen[k]!, bz.id[k]!);
          z.q.pushUsedBurst(bz, m);
        } else if (z.q.pop(cz)) z.q.pushUsed(cz.head, 0);
        else break;
      }
      t.is(a.q.flushUsed(), z.q.flushUsed());
      const ua = a.used();
      const uz = z.used();
      t.deepEqual(uz, ua);
      laps += ua.length;
    }
    t.true(laps > 20 * SIZE, `${laps} buffers: many laps of the ring`);
    t.is(a.q.broken, null);
    t.is(z.q.broken, null);
    t.is(a.q.lastAvailIdx, z.q.lastAvailIdx);
    t.is(a.q.usedIdx, z.q.usedIdx);
  });

  test(`${kind}: drain() with a burst handler keeps ring order with chains; a short answer gives the rest back and stops`, (t) => {
    const r = rig(kind);
    const ids = [
      r.add(one(20)),
      r.add(one(20)),
      r.add([{ byteLen: 8, write: false }, { byteLen: 8, write: false }]),
      r.add(one(20)),
      r.add(one(20)),
      r.add(one(20)),
    ];
    const seen: string[] = [];
    let refuse = true;
    const res = r.q.drain(
      createDrainPlan((c) => (seen.push(`chain ${c.head}`), 0), 64, {
        onDirect: (b) => (seen.push(`direct ${b.id}`), 0),
        directBuf: createDirectBuffer(false),
        onBurst: (b) => {
          seen.push(`burst ${Array.from(b.id.subarray(0, b.count)).join(',')}`);
          if (b.count === 3 && refuse) {
            refuse = false;
            b.usedLen[0] = 0;
            return 1; // the last two are given back
          }
          b.usedLen.fill(0);
          return b.count;
        },
        burstBuf: new DirectBurst(false),
      }),
    );
    t.deepEqual(seen, [`burst ${ids[0]},${ids[1]}`, `chain ${ids[2]}`, `burst ${ids[3]},${ids[4]},${ids[5]}`]);
    t.true(res.stopped);
    t.is(res.processed, 4);
    t.true(r.q.hasAvailable(), 'the two refused buffers are available again');
    const b = new DirectBurst(false);
    t.is(r.q.popBurst(b, 32), 2);
    t.deepEqual(Array.from(b.id.subarray(0, 2)), ids.slice(4));
    r.q.pushUsedBurst(b, 2);
    r.q.flushUsed();
    t.deepEqual(r.used().map((u) => u.id), ids);
  });

  test(`${kind}: an IOTLB miss is met by the run that reaches that buffer: nothing of it consumed, the queue parked; the entry resumes it`, (t) => {
    const UVA = 0x7f00_0000_0000;
    const region = { gpa: 0, uva: UVA, byteLen: 1 << 20, bytes: new Uint8Array(1 << 20) };
    const cache = new IotlbCache();
    const IOVA = 0x1_0000_0000;
    cache.update(IOVA, 0x20000, UVA, 'rw');
    const mem = new IotlbMemory(cache, new RegionMemory([region]));
    const r = rig(kind, mem, IOVA);
    r.add([{ byteLen: 64, write: false, addr: IOVA + 0x10000 }]);
    const missing = r.add([{ byteLen: 64, write: false, addr: 0x2_0000_0000 }]);
    const b = new DirectBurst(false);
    t.is(r.q.popBurst(b, 32), 1, 'the mapped one');
    t.is(r.q.popBurst(b, 32), 0, 'parked on the miss');
    // Split's generic run meets the miss in the first call already, packed's in the run that starts there.
    t.true(r.q.iotlbMisses >= 1);
    t.is(r.q.broken, null);
    t.is(r.q.popBurst(b, 32), 0, 'still parked');
    cache.update(0x2_0000_0000, 0x1000, UVA + 0x30000, 'ro');
    t.is(r.q.popBurst(b, 32), 1);
    t.is(b.id[0], missing);
    t.is(b.offset[0], 0x30000);
  });

  test(`${kind}: with an inflight journal popBurst pops nothing (pop() records what is in flight)`, (t) => {
    const r = rig(kind);
    const region =
      kind === 'split'
        ? new SplitInflight(new Uint8Array(inflightQueueSize('split', SIZE)), SIZE)
        : new PackedInflight(new Uint8Array(inflightQueueSize('packed', SIZE)), SIZE);
    r.q.attachInflight(region as never);
    r.add(one(64));
    t.is(r.q.popBurst(new DirectBurst(false), 32), 0);
    t.true(r.q.pop(new Chain()));
  });
}

test('packed: an id already in flight ends the run; pop() then breaks the queue with VQ_BAD_ID', (t) => {
  const r = rig('packed');
  const id = r.add(one(20));
  r.add(one(20));
  const b = new DirectBurst(false);
  t.is(r.q.popBurst(b, 1), 1);
  // The next position reuses the id still in flight.
  r.packed!.writeDesc(1, { addr: 0x9000, len: 20, id, flags: VIRTQ_DESC_F_AVAIL });
  t.is(r.q.popBurst(b, 32), 0);
  t.false(r.q.pop(new Chain()));
  t.is(r.q.broken?.code, 'VQ_BAD_ID');
  t.is(r.q.popBurst(b, 32), 0, 'a broken queue pops nothing');
});

test('packed: pushUsedBurst of an id that is not in flight is a device bug (RangeError); the entries before it are pushed', (t) => {
  const r = rig('packed');
  const ids = [r.add(one(20)), r.add(one(20))];
  const b = new DirectBurst(false);
  t.is(r.q.popBurst(b, 32), 2);
  const second = b.id[1]!;
  b.id[1] = 9;
  b.usedLen.fill(0);
  t.throws(() => r.q.pushUsedBurst(b, 2), { instanceOf: RangeError });
  t.is(r.q.pendingUsed, 1, 'the first entry was pushed, as pushUsed would have');
  b.id[0] = second;
  r.q.pushUsedBurst(b, 1);
  r.q.flushUsed();
  t.deepEqual(r.used().map((u) => u.id), ids, 'the good id was still in flight and could be pushed');
});

test('packed IN_ORDER: a burst of zero-length completions is one used element with the last id (2.8.23); the driver sees every buffer used, over many laps', (t) => {
  const mem = new FlatMemory(1 << 20);
  const d = new PackedDriver(mem, { size: SIZE, inOrder: true });
  const q = new PackedQueue(d.queueConfig(), mem);
  t.true(q.inOrder);
  const rand = prng(21);
  const b = new DirectBurst(false);
  let batched = 0;
  for (let round = 0; round < 200; round++) {
    const n = 1 + Math.floor(rand() * 6);
    const ids: number[] = [];
    for (let i = 0; i < n; i++) ids.push(d.addChain(one(20 + i)));
    t.is(q.popBurst(b, 32), n);
    b.usedLen.fill(0);
    const written = q.stats.pushed;
    q.pushUsedBurst(b, n);
    t.is(q.stats.pushed - written, n, 'every buffer counts as pushed');
    q.flushUsed();
    const used = d.readUsed();
    t.deepEqual(used.map((u) => u.id), ids, 'all used, in order');
    const own = used.filter((u) => u.skipped !== true);
    t.is(own.length, 1, 'one element of its own');
    t.is(own[0]!.id, ids[n - 1]!, 'the last id');
    if (n > 1) batched++;
  }
  t.true(batched > 100);
  t.is(q.broken, null);
  t.is(d.inFlightCount, 0);
});

test('packed IN_ORDER: written lengths (RX) and earlier buffers still in flight keep one element per buffer', (t) => {
  const mem = new FlatMemory(1 << 20);
  const d = new PackedDriver(mem, { size: SIZE, inOrder: true });
  const q = new PackedQueue(d.queueConfig(), mem);
  const rx = [0, 1, 2].map(() => d.addChain(one(64, true)));
  const wb = new DirectBurst(true);
  t.is(q.popBurst(wb, 32), 3);
  wb.usedLen.set([10, 20, 30]);
  q.pushUsedBurst(wb, 3);
  q.flushUsed();
  t.deepEqual(d.readUsed().map((u) => [u.id, u.len, u.skipped === true]), rx.map((id, i) => [id, 10 * (i + 1), false]));

  const tx = [0, 1, 2, 3].map(() => d.addChain(one(20)));
  const single = createDirectBuffer(false);
  t.is(q.popDirect(single), DIRECT_OK);
  t.is(single.id, tx[0]!);
  const b = new DirectBurst(false);
  t.is(q.popBurst(b, 32), 3);
  b.usedLen.fill(0);
  // The burst completes while an earlier buffer is still in flight: an element of the last id would
  // tell the driver that one is used too, so each buffer gets its own element.
  q.pushUsedBurst(b, 3);
  t.is(q.pendingUsed, 3, 'three elements, no batch');
  // Once the earlier one is complete, a later burst is alone in flight and batches again.
  q.pushUsed(single.id, 0);
  const more = [0, 1].map(() => d.addChain(one(20)));
  t.is(q.popBurst(b, 32), 2);
  b.usedLen.fill(0);
  q.pushUsedBurst(b, 2);
  t.is(q.pendingUsed, 5, 'one more element for two buffers');
  t.deepEqual(Array.from(b.id.subarray(0, 2)), more);
});

for (const kind of ['split', 'packed'] as const) {
  test(`${kind}: popBurst never hands out more than BURST_MAX, whatever max says`, (t) => {
    const mem = new FlatMemory(1 << 20);
    const r = formatRig(kind, mem, 0, 64);
    const ids = Array.from({ length: 40 }, () => r.add(one(16)));
    const b = new DirectBurst(false);
    t.is(r.q.popBurst(b, 1000), BURST_MAX);
    t.deepEqual(Array.from(b.id.subarray(0, BURST_MAX)), ids.slice(0, BURST_MAX));
    t.is(r.q.popBurst(b, 1000), 40 - BURST_MAX);
  });
}
