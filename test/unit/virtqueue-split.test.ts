import test from 'ava';
import type { ExecutionContext } from 'ava';
import {
  Chain,
  ChainReader,
  ChainWriter,
  FlatMemory,
  SplitDriver,
  RegionMemory,
  SplitQueue,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VirtqError,
  createSpan,
  readU16,
  writeBytes,
} from '../../virtqueue/index.ts';
import type { GuestMemory, Span, VirtqErrorCode } from '../../virtqueue/index.ts';
import { bytes, rig } from './virtqueue-fixtures.ts';

const R = 0;
const W = VIRTQ_DESC_F_WRITE;
const N = VIRTQ_DESC_F_NEXT;
const I = VIRTQ_DESC_F_INDIRECT;

function expectBroken(t: ExecutionContext, q: SplitQueue, code: VirtqErrorCode): void {
  const c = new Chain();
  t.false(q.pop(c), 'pop must refuse');
  t.truthy(q.broken, 'queue must be broken');
  t.is(q.broken?.code, code, q.broken?.message);
  // Sticky: later calls keep refusing, nothing throws.
  t.false(q.pop(c));
  t.is(q.availableCount(), 0);
  t.false(q.enableNotification());
  t.false(q.flushUsed());
  t.is(q.broken?.code, code);
}

test('simple chain round trip: driver adds, device reads/writes/pushes, driver sees len and data', (t) => {
  const { drv, q, chain, reader, writer } = rig(16);
  const req = bytes(20, 3);
  const head = drv.addChain([
    { byteLen: 20, write: false, data: req },
    { byteLen: 100, write: true },
  ]);
  t.is(q.availableCount(), 1);
  t.true(q.pop(chain));
  t.is(chain.head, head);
  t.is(chain.descCount, 2);
  t.false(chain.indirect);
  t.is(chain.readByteLen, 20);
  t.is(chain.writeByteLen, 100);
  t.deepEqual(
    chain.segments().map((s) => [s.byteLen, s.write]),
    [
      [20, false],
      [100, true],
    ],
  );
  reader.reset(chain);
  const got = new Uint8Array(64);
  t.is(reader.read(got), 20);
  t.deepEqual(got.subarray(0, 20), req);
  t.is(reader.remaining, 0);
  writer.reset(chain);
  const resp = bytes(50, 9);
  t.is(writer.write(resp), 50);
  t.is(writer.written, 50);
  t.is(writer.remaining, 50);
  q.pushUsed(chain.head, writer.written);
  t.true(q.flushUsed());
  const used = drv.readUsed();
  t.is(used.length, 1);
  t.is(used[0]!.id, head);
  t.is(used[0]!.len, 50);
  t.deepEqual(used[0]!.data, resp);
  t.false(q.pop(chain)); // empty now
  t.is(q.broken, null);
  t.is(q.lastAvailIdx, 1);
  t.is(q.usedIdx, 1);
  t.is(drv.freeDescCount, 16);
});

test('reader and writer cursors: partial reads, skip, seek, fill, nextSpan across segments', (t) => {
  const { drv, q, chain, reader, writer } = rig(16);
  const a = bytes(10, 1);
  const b = bytes(40, 2);
  drv.addChain([
    { byteLen: 10, write: false, data: a },
    { byteLen: 40, write: false, data: b },
    { byteLen: 8, write: true },
    { byteLen: 64, write: true },
  ]);
  t.true(q.pop(chain));
  reader.reset(chain);
  t.is(reader.skip(4), 4);
  const x = new Uint8Array(16);
  t.is(reader.read(x, 2, 12), 12);
  const expect = new Uint8Array([...a, ...b]);
  t.deepEqual(x.subarray(2, 14), expect.subarray(4, 16));
  const s: Span = createSpan();
  t.true(reader.nextSpan(1000, s));
  t.is(s.byteLen, 34); // rest of the second segment only
  t.deepEqual(s.bytes.subarray(s.offset, s.offset + s.byteLen), expect.subarray(16));
  t.false(reader.nextSpan(1000, s));

  writer.reset(chain);
  t.is(writer.skip(6), 6);
  t.is(writer.written, 0); // skipping is not writing
  t.is(writer.write(bytes(30, 5)), 30);
  t.is(writer.written, 36);
  writer.seek(0);
  t.is(writer.fill(6, 0xaa), 6);
  t.is(writer.written, 36);
  t.true(writer.nextSpan(4, s));
  t.is(s.byteLen, 2); // only what is left of the first writable segment
  s.bytes.fill(0x55, s.offset, s.offset + s.byteLen);
  t.is(writer.written, 36);
  t.throws(() => writer.seek(73), { instanceOf: RangeError });
  q.pushUsed(chain.head, writer.written);
  q.flushUsed();
  const [u] = drv.readUsed();
  const want = new Uint8Array(36);
  want.fill(0xaa, 0, 6);
  want.set(bytes(30, 5), 6);
  want.fill(0x55, 6, 8);
  t.deepEqual(u!.data, want);
});

function twoRegions(gap = 0) {
  const a = { gpa: 0, uva: 0x7000_0000, byteLen: 0x10000, bytes: new Uint8Array(0x10000) };
  const b = { gpa: 0x10000 + gap, uva: 0x9000_0000, byteLen: 0x10000, bytes: new Uint8Array(0x10000) };
  return { a, b, mem: new RegionMemory([a, b]) };
}

test('a chain crossing two memory regions is split into per-region segments and copied correctly', (t) => {
  const { a, b, mem } = twoRegions();
  const { drv, q, chain, reader, writer } = rig(8, { mem, heapAddr: 0x8000, heapByteLen: 0x4000 });
  const req = bytes(64, 4);
  drv.addChain([
    { byteLen: 64, write: false, data: req, addr: 0xffe0 },
    { byteLen: 0x40, write: true, addr: 0xffd0 },
  ]);
  t.true(q.pop(chain));
  t.deepEqual(
    chain.segments().map((s) => [s.addr, s.byteLen, s.write]),
    [
      [0xffe0, 0x20, false],
      [0x10000, 0x20, false],
      [0xffd0, 0x30, true],
      [0x10000, 0x10, true],
    ],
  );
  t.is(chain.segBytes[0], a.bytes);
  t.is(chain.segBytes[1], b.bytes);
  reader.reset(chain);
  const got = new Uint8Array(64);
  t.is(reader.read(got), 64);
  t.deepEqual(got, req);
  writer.reset(chain);
  const resp = bytes(0x40, 8);
  t.is(writer.write(resp), 0x40);
  t.deepEqual(a.bytes.subarray(0xffd0, 0x10000), resp.subarray(0, 0x30));
  t.deepEqual(b.bytes.subarray(0, 0x10), resp.subarray(0x30));
  q.pushUsed(chain.head, writer.written);
  q.flushUsed();
  t.deepEqual(drv.readUsed()[0]!.data, resp);
});

test('a buffer running into a hole between regions breaks the queue with VQ_UNMAPPED', (t) => {
  const { mem } = twoRegions(0x1000);
  const { drv, q } = rig(8, { mem, heapAddr: 0x8000, heapByteLen: 0x4000 });
  drv.addChain([{ byteLen: 0x40, write: false, addr: 0xffe0 }]);
  expectBroken(t, q, 'VQ_UNMAPPED');
});

test('writable buffer in a read-only region is refused', (t) => {
  const ro = { gpa: 0x100000, uva: 0, byteLen: 0x1000, bytes: new Uint8Array(0x1000), writable: false };
  const mem = new RegionMemory([{ gpa: 0, uva: 0x1000_0000, byteLen: 0x20000, bytes: new Uint8Array(0x20000) }, ro]);
  const { drv, q, chain } = rig(8, { mem, heapAddr: 0x10000, heapByteLen: 0x4000 });
  drv.addChain([{ byteLen: 0x10, write: false, addr: 0x100000 }]);
  t.true(q.pop(chain)); // reading it is fine
  drv.addChain([{ byteLen: 0x10, write: true, addr: 0x100000 }]);
  expectBroken(t, q, 'VQ_UNMAPPED');
});

test('indirect chain: one ring descriptor, table walked, data round trip', (t) => {
  const { drv, q, chain, reader, writer } = rig(4);
  const req = bytes(33, 6);
  const head = drv.addChain(
    [
      { byteLen: 33, write: false, data: req },
      { byteLen: 7, write: false, data: bytes(7, 1) },
      { byteLen: 128, write: true },
      { byteLen: 128, write: true },
      { byteLen: 128, write: true },
    ],
    { indirect: true },
  );
  t.is(drv.freeDescCount, 3); // five buffers, one ring descriptor
  t.true(q.pop(chain));
  t.is(chain.head, head);
  t.true(chain.indirect);
  t.is(chain.descCount, 1);
  t.is(chain.segCount, 5);
  t.is(chain.readByteLen, 40);
  t.is(chain.writeByteLen, 384);
  reader.reset(chain);
  const got = new Uint8Array(33);
  reader.read(got);
  t.deepEqual(got, req);
  writer.reset(chain);
  const resp = bytes(300, 2);
  t.is(writer.write(resp), 300);
  q.pushUsed(chain.head, writer.written);
  q.flushUsed();
  const [u] = drv.readUsed();
  t.is(u!.len, 300);
  t.deepEqual(u!.data, resp);
});

test('direct descriptors followed by a final indirect one (2.7.5.3.2) are one chain', (t) => {
  const { drv, q, chain } = rig(8);
  const table = drv.addTable([
    { addr: 0x20000, len: 16, flags: N, next: 1 },
    { addr: 0x21000, len: 32, flags: W, next: 0 },
  ]);
  const [d0, d1] = [drv.takeDesc(), drv.takeDesc()];
  drv.writeDesc(d0, { addr: 0x22000, len: 8, flags: N, next: d1 });
  // The WRITE flag on the descriptor that points to the table must be ignored.
  drv.writeDesc(d1, { addr: table, len: 32, flags: I | W, next: 0 });
  drv.pushHead(d0);
  t.true(q.pop(chain), q.broken?.message);
  t.is(chain.descCount, 2);
  t.deepEqual(
    chain.segments().map((s) => [s.addr, s.byteLen, s.write]),
    [
      [0x22000, 8, false],
      [0x20000, 16, false],
      [0x21000, 32, true],
    ],
  );
});

test('an indirect table that crosses a region boundary is still read correctly', (t) => {
  const { mem } = twoRegions();
  const { drv, q, chain } = rig(8, { mem, heapAddr: 0x8000, heapByteLen: 0x4000 });
  const tableAt = 0x10000 - 24; // 1.5 descriptors in the first region
  drv.writeTable(tableAt, [
    { addr: 0x9000, len: 10, flags: N, next: 1 },
    { addr: 0x9100, len: 20, flags: W, next: 0 },
  ]);
  const d = drv.takeDesc();
  drv.writeDesc(d, { addr: tableAt, len: 32, flags: I, next: 0 });
  drv.pushHead(d);
  t.true(q.pop(chain), q.broken?.message);
  t.deepEqual(
    chain.segments().map((s) => [s.addr, s.byteLen, s.write]),
    [
      [0x9000, 10, false],
      [0x9100, 20, true],
    ],
  );
});

test('nested indirect table breaks the queue with VQ_NESTED_INDIRECT', (t) => {
  const { drv, q } = rig(8);
  const inner = drv.addTable([{ addr: 0x20000, len: 16, flags: 0, next: 0 }]);
  const outer = drv.addTable([
    { addr: 0x20000, len: 16, flags: N, next: 1 },
    { addr: inner, len: 16, flags: I, next: 0 },
  ]);
  const d = drv.takeDesc();
  drv.writeDesc(d, { addr: outer, len: 32, flags: I, next: 0 });
  drv.pushHead(d);
  expectBroken(t, q, 'VQ_NESTED_INDIRECT');
});

test('malformed indirect descriptors: bad length, INDIRECT with NEXT, not negotiated', (t) => {
  const cases: [string, (drv: SplitDriver, d: number, table: number) => void, VirtqErrorCode, boolean][] = [
    ['zero length', (drv, d, tb) => drv.writeDesc(d, { addr: tb, len: 0, flags: I, next: 0 }), 'VQ_BAD_INDIRECT', true],
    ['not a multiple of 16', (drv, d, tb) => drv.writeDesc(d, { addr: tb, len: 24, flags: I, next: 0 }), 'VQ_BAD_INDIRECT', true],
    ['too big', (drv, d, tb) => drv.writeDesc(d, { addr: tb, len: 16 * 32769, flags: I, next: 0 }), 'VQ_BAD_INDIRECT', true],
    ['INDIRECT|NEXT', (drv, d, tb) => drv.writeDesc(d, { addr: tb, len: 16, flags: I | N, next: 0 }), 'VQ_BAD_INDIRECT', true],
    ['table unmapped', (drv, d) => drv.writeDesc(d, { addr: 0x7000_0000, len: 16, flags: I, next: 0 }), 'VQ_UNMAPPED', true],
    ['not negotiated', (drv, d, tb) => drv.writeDesc(d, { addr: tb, len: 16, flags: I, next: 0 }), 'VQ_INDIRECT_NOT_NEGOTIATED', false],
  ];
  for (const [name, build, code, indirect] of cases) {
    const { drv, q } = rig(8, { queue: { indirect } });
    const table = drv.addTable([{ addr: 0x20000, len: 16, flags: 0, next: 0 }]);
    const d = drv.takeDesc();
    build(drv, d, table);
    drv.pushHead(d);
    t.false(q.pop(new Chain()), name);
    t.is(q.broken?.code, code, name);
  }
});

test('a descriptor loop breaks that queue (VQ_LOOP), sticky, while another queue on the same memory works', (t) => {
  const mem = new FlatMemory(1 << 20);
  const bad = new SplitDriver(mem, { size: 8, base: 0 });
  const good = new SplitDriver(mem, { size: 8, base: 0x40000, heapAddr: 0x50000 });
  const qb = new SplitQueue(bad.queueConfig(), mem);
  const qg = new SplitQueue(good.queueConfig(), mem);
  bad.writeDesc(0, { addr: 0x20000, len: 16, flags: N, next: 1 });
  bad.writeDesc(1, { addr: 0x20000, len: 16, flags: N, next: 2 });
  bad.writeDesc(2, { addr: 0x20000, len: 16, flags: N, next: 0 });
  bad.pushHead(0);
  expectBroken(t, qb, 'VQ_LOOP');
  // Subsequent valid chains on the broken queue stay unprocessed.
  bad.addChain([{ byteLen: 4, write: false }]);
  t.false(qb.pop(new Chain()));
  t.is(qb.lastAvailIdx, 0);
  t.is(bad.usedIdx, 0);
  // The other queue is unaffected.
  good.addChain([{ byteLen: 4, write: true }]);
  const c = new Chain();
  t.true(qg.pop(c));
  qg.pushUsed(c.head, 4);
  t.true(qg.flushUsed());
  t.is(good.readUsed().length, 1);
  t.is(qg.broken, null);
});

test('a loop inside an indirect table is caught by the table ttl', (t) => {
  const { drv, q } = rig(8);
  const table = drv.addTable([
    { addr: 0x20000, len: 16, flags: N, next: 1 },
    { addr: 0x20000, len: 16, flags: N, next: 0 },
  ]);
  const d = drv.takeDesc();
  drv.writeDesc(d, { addr: table, len: 32, flags: I, next: 0 });
  drv.pushHead(d);
  expectBroken(t, q, 'VQ_LOOP');
});

test('a chain of exactly queue-size descriptors is fine; one more is a loop', (t) => {
  const { drv, q, chain } = rig(4);
  for (let i = 0; i < 4; i++) drv.writeDesc(i, { addr: 0x20000 + i * 16, len: 16, flags: i < 3 ? N : 0, next: i + 1 });
  drv.pushHead(0);
  t.true(q.pop(chain));
  t.is(chain.descCount, 4);
  drv.writeDesc(3, { addr: 0x20000, len: 16, flags: N, next: 0 });
  drv.pushHead(0);
  expectBroken(t, q, 'VQ_LOOP');
});

test('next index out of range: VQ_BAD_NEXT in the ring and in an indirect table', (t) => {
  {
    const { drv, q } = rig(8);
    drv.writeDesc(0, { addr: 0x20000, len: 16, flags: N, next: 8 });
    drv.pushHead(0);
    expectBroken(t, q, 'VQ_BAD_NEXT');
  }
  {
    const { drv, q } = rig(8);
    const table = drv.addTable([
      { addr: 0x20000, len: 16, flags: N, next: 2 },
      { addr: 0x20000, len: 16, flags: 0, next: 0 },
    ]);
    drv.writeDesc(0, { addr: table, len: 32, flags: I, next: 0 });
    drv.pushHead(0);
    expectBroken(t, q, 'VQ_BAD_NEXT');
  }
});

test('head index out of range: VQ_BAD_HEAD', (t) => {
  const { drv, q } = rig(8);
  drv.pushHead(8);
  expectBroken(t, q, 'VQ_BAD_HEAD');
});

test('unmapped buffer address and addresses >= 2^53: VQ_UNMAPPED', (t) => {
  for (const addr of [0x100000, 0x7fff_ffff_ffffn, 2n ** 53n, 0xffff_ffff_ffff_fff0n]) {
    const { drv, q } = rig(8, { byteLen: 0x100000 });
    drv.writeDesc(0, { addr, len: 16, flags: 0, next: 0 });
    drv.pushHead(0);
    expectBroken(t, q, 'VQ_UNMAPPED');
  }
});

test('zero-length descriptors add no segment and their address is not checked', (t) => {
  const { drv, q, chain } = rig(8);
  drv.writeDesc(0, { addr: 0xdead_0000_0000n, len: 0, flags: N, next: 1 });
  drv.writeDesc(1, { addr: 0x20000, len: 8, flags: W, next: 0 });
  drv.pushHead(0);
  t.true(q.pop(chain));
  t.is(chain.segCount, 1);
  t.is(chain.descCount, 2);
});

test('a readable descriptor after a writable one: VQ_WRITE_BEFORE_READ', (t) => {
  const { drv, q } = rig(8);
  drv.writeDesc(0, { addr: 0x20000, len: 8, flags: W | N, next: 1 });
  drv.writeDesc(1, { addr: 0x20000, len: 8, flags: R, next: 0 });
  drv.pushHead(0);
  expectBroken(t, q, 'VQ_WRITE_BEFORE_READ');
});

test('avail.idx jumping more than size ahead: VQ_AVAIL_JUMP', (t) => {
  const { drv, q } = rig(8);
  drv.setAvailIdx(8);
  t.is(q.availableCount(), 8); // exactly size is legal
  drv.setAvailIdx(9);
  t.is(q.availableCount(), 0);
  t.is(q.broken?.code, 'VQ_AVAIL_JUMP');
});

/** Maps the low MiB normally and pretends everything at >= 2^40 is mapped (to test the 2^32 cap). */
class HugeFake implements GuestMemory {
  readonly flat = new FlatMemory(1 << 20);
  private readonly dummy = new Uint8Array(1);
  translate(addr: number, byteLen: number, write: boolean, out: Span): boolean {
    if (addr < 2 ** 40) return this.flat.translate(addr, byteLen, write, out);
    out.bytes = this.dummy;
    out.offset = 0;
    out.byteLen = byteLen;
    return true;
  }
}

test('total chain length above 2^32 bytes: VQ_CHAIN_TOO_LONG (exactly 2^32 is fine)', (t) => {
  const mem = new HugeFake();
  const { drv, q, chain } = rig(8, { mem });
  drv.writeDesc(0, { addr: 2 ** 40, len: 0x80000000, flags: N, next: 1 });
  drv.writeDesc(1, { addr: 2 ** 41, len: 0x80000000, flags: W, next: 0 });
  drv.pushHead(0);
  t.true(q.pop(chain));
  t.is(chain.byteLen, 2 ** 32);
  drv.writeDesc(1, { addr: 2 ** 41, len: 0x80000000, flags: W | N, next: 2 });
  drv.writeDesc(2, { addr: 2 ** 42, len: 1, flags: W, next: 0 });
  drv.pushHead(0);
  expectBroken(t, q, 'VQ_CHAIN_TOO_LONG');
});

test('16-bit index wrap-around: processing across 65535 -> 0', (t) => {
  const mem = new FlatMemory(1 << 20);
  const drv = new SplitDriver(mem, { size: 8 });
  drv.startAt(65531);
  const q = new SplitQueue(drv.queueConfig({ lastAvailIdx: 65531 }), mem);
  t.is(q.usedIdx, 65531); // taken from the ring
  const c = new Chain();
  const w = new ChainWriter();
  const seen: number[] = [];
  for (let round = 0; round < 3; round++) {
    const heads = [0, 1, 2, 3].map(() => drv.addChain([{ byteLen: 8, write: true }]));
    t.is(q.availableCount(), 4);
    for (const h of heads) {
      t.true(q.pop(c));
      t.is(c.head, h);
      w.reset(c);
      w.write(new Uint8Array([round, h]));
      q.pushUsed(c.head, w.written);
    }
    q.flushUsed();
    for (const u of drv.readUsed()) {
      t.is(u.len, 2);
      t.deepEqual([...u.data!], [round, u.id]);
      seen.push(u.id);
    }
  }
  t.is(seen.length, 12);
  t.is(q.lastAvailIdx, (65531 + 12) & 0xffff);
  t.is(q.usedIdx, 7);
  t.is(drv.usedIdx, 7);
  t.is(q.broken, null);
});

test('unpop rewinds lastAvailIdx: the same chains come back in order', (t) => {
  const { drv, q, chain } = rig(8);
  const heads = [0, 1, 2].map(() => drv.addChain([{ byteLen: 4, write: true }]));
  const got: number[] = [];
  for (let i = 0; i < 3; i++) {
    t.true(q.pop(chain));
    got.push(chain.head);
  }
  t.deepEqual(got, heads);
  q.unpop(2);
  t.is(q.lastAvailIdx, 1);
  t.is(q.availableCount(), 2);
  t.true(q.pop(chain));
  t.is(chain.head, heads[1]!);
  t.true(q.pop(chain));
  t.is(chain.head, heads[2]!);
  t.throws(() => q.unpop(4), { instanceOf: RangeError });
  t.is(q.lastAvailIdx, 3);
});

test('a driver racing the drain: more completions than the ring holds before a flush are published in batches, never a throw (the notification is kept)', (t) => {
  const { mem, drv, q, chain } = rig(2);
  drv.addChain([{ byteLen: 4, write: true }]);
  // The driver re-offers head 0 again and again without waiting to see it used (a hostile or racing
  // driver: avail.idx moved while we drain), so five completions come before the device flushes.
  const put16 = (addr: number, v: number) => writeBytes(mem, addr, new Uint8Array(new Uint16Array([v]).buffer), false);
  let pushed = 0;
  for (let lap = 0; lap < 5; lap++) {
    if (lap > 0) {
      put16(drv.availAddr + 4 + 2 * (lap % 2), 0);
      put16(drv.availAddr + 2, lap + 1);
    }
    t.true(q.pop(chain), `pop ${lap}`);
    t.notThrows(() => q.pushUsed(chain.head, lap));
    pushed++;
    t.true(q.pendingUsed <= 2, 'never more pending than the used ring holds');
    t.is(q.usedIdx + q.pendingUsed, pushed, 'published plus pending is every completion');
  }
  t.true(q.usedIdx >= 4, 'full batches were published on the way');
  t.true(q.flushUsed(), 'a notification decided by an early publication is not lost');
  t.is(q.usedIdx, 5);
  t.is(q.broken, null);
});

test('batched pushUsed / flushUsed publishes used.idx once, elements first', (t) => {
  const { mem, drv, q, chain } = rig(8);
  const writes: [number, number][] = [];
  mem.onWrite = (gpa, n) => writes.push([gpa, n]);
  for (let i = 0; i < 5; i++) drv.addChain([{ byteLen: 4, write: true }]);
  for (let i = 0; i < 5; i++) {
    t.true(q.pop(chain));
    q.pushUsed(chain.head, i);
  }
  t.is(drv.usedIdx, 0, 'nothing visible before flush');
  t.is(q.pendingUsed, 5);
  t.deepEqual(writes, []);
  t.true(q.flushUsed());
  t.is(drv.usedIdx, 5);
  t.is(q.stats.flushes, 1);
  t.deepEqual(writes, [
    [drv.usedAddr + 4, 40],
    [drv.usedAddr + 2, 2],
  ]);
  t.deepEqual(
    drv.readUsed().map((u) => u.len),
    [0, 1, 2, 3, 4],
  );
  t.false(q.flushUsed(), 'nothing pending: no publication, no notification');
  t.is(q.stats.flushes, 1);
});

test('dirty logging: used elements wrapping the ring, used.idx, avail_event and device data writes', (t) => {
  const mem = new FlatMemory(1 << 20);
  const drv = new SplitDriver(mem, { size: 4, eventIdx: true });
  drv.startAt(2);
  const q2 = new SplitQueue(drv.queueConfig({ lastAvailIdx: 2 }), mem);
  const chain = new Chain();
  const writer = new ChainWriter();
  const writes: [number, number][] = [];
  mem.onWrite = (gpa, n) => writes.push([gpa, n]);
  const buf = drv.alloc(64);
  for (let i = 0; i < 3; i++) drv.addChain([{ byteLen: 16, write: true, addr: buf + 16 * i }]);
  for (let i = 0; i < 3; i++) {
    t.true(q2.pop(chain));
    writer.reset(chain);
    writer.write(bytes(10));
    q2.pushUsed(chain.head, writer.written);
  }
  q2.flushUsed();
  q2.enableNotification();
  t.deepEqual(writes, [
    [buf, 10],
    [buf + 16, 10],
    [buf + 32, 10],
    [drv.usedAddr + 4 + 2 * 8, 16], // slots 2, 3
    [drv.usedAddr + 4, 8], // slot 0 after the wrap
    [drv.usedAddr + 2, 2],
    [drv.usedAddr + 4 + 8 * 4, 2], // avail_event
  ]);
});

test('constructor validates size, alignment and ring placement', (t) => {
  const mem = new FlatMemory(1 << 16);
  const base = { descAddr: 0, availAddr: 0x1000, usedAddr: 0x2000, eventIdx: false, indirect: false };
  for (const size of [0, 3, 65536, 1.5]) {
    t.is(t.throws(() => new SplitQueue({ ...base, size }, mem), { instanceOf: VirtqError })?.code, 'VQ_BAD_SIZE');
  }
  t.truthy(new SplitQueue({ ...base, size: 32768, descAddr: 0, availAddr: 0, usedAddr: 0 }, new FlatMemory(1 << 19)));
  for (const bad of [{ descAddr: 8 }, { availAddr: 0x1001 }, { usedAddr: 0x2002 }]) {
    t.is(t.throws(() => new SplitQueue({ ...base, size: 8, ...bad }, mem), { instanceOf: VirtqError })?.code, 'VQ_RING_LAYOUT');
  }
  t.is(
    t.throws(() => new SplitQueue({ ...base, size: 8, usedAddr: 0x10000 }, mem), { instanceOf: VirtqError })?.code,
    'VQ_UNMAPPED',
  );
  t.is(
    t.throws(() => new SplitQueue({ ...base, size: 256, usedAddr: 0xfc00 }, mem), { instanceOf: VirtqError })?.code,
    'VQ_RING_LAYOUT', // runs past the end of the only region
  );
  const { mem: two } = twoRegions();
  t.is(
    t.throws(() => new SplitQueue({ ...base, size: 16, descAddr: 0xff80 }, two), { instanceOf: VirtqError })?.code,
    'VQ_RING_LAYOUT', // desc table straddles two regions
  );
  t.throws(() => new SplitQueue({ ...base, size: 8, lastAvailIdx: 70000 }, mem), { instanceOf: RangeError });
});

test('setMemory re-maps the rings; a table without them marks the queue broken', (t) => {
  const region = { gpa: 0, uva: 0x1000_0000, byteLen: 1 << 20, bytes: new Uint8Array(1 << 20) };
  const mem1 = new RegionMemory([region]);
  const { drv, q, chain } = rig(8, { mem: mem1 });
  drv.addChain([{ byteLen: 8, write: true }]);
  const mem2 = new RegionMemory([{ ...region, uva: 0x2000_0000 }]);
  t.true(q.setMemory(mem2));
  t.is(q.memory, mem2);
  t.true(q.pop(chain));
  t.is(chain.mem, mem2);
  t.false(q.setMemory(new RegionMemory([{ ...region, byteLen: 0x100, bytes: region.bytes.subarray(0, 0x100) }])));
  t.is(q.broken?.code, 'VQ_UNMAPPED'); // the used ring (at 0x1000) is gone
  t.false(q.pop(chain));
});

test('the driver can read the published used ring with plain helpers (layout check)', (t) => {
  const { mem, drv, q, chain } = rig(8);
  drv.addChain([{ byteLen: 8, write: true }]);
  q.pop(chain);
  q.pushUsed(chain.head, 0x1234);
  q.flushUsed();
  t.is(readU16(mem, drv.usedAddr + 2), 1);
  const reader = new ChainReader();
  t.is(reader.read(new Uint8Array(4)), 0); // unset reader reads nothing
});
