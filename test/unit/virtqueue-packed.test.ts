import test from 'ava';
import type { ExecutionContext } from 'ava';
import {
  Chain,
  ChainReader,
  ChainWriter,
  FlatMemory,
  PackedDriver,
  PackedQueue,
  RING_EVENT_FLAGS_DESC,
  RING_EVENT_FLAGS_DISABLE,
  RING_EVENT_FLAGS_ENABLE,
  RegionMemory,
  SplitQueue,
  VIRTQ_DESC_F_AVAIL,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_USED,
  VIRTQ_DESC_F_WRITE,
  VirtqError,
  createDrainPlan,
  packedBaseFromVhost,
  packedBaseToVhost,
} from '../../virtqueue/index.ts';
import type {
  GuestMemory,
  DriverBuffer,
  PackedDriverOptions,
  PackedQueueConfig,
  Virtqueue,
  VirtqErrorCode,
} from '../../virtqueue/index.ts';
import { bytes, prng } from './virtqueue-fixtures.ts';

const W = VIRTQ_DESC_F_WRITE;
const N = VIRTQ_DESC_F_NEXT;
const I = VIRTQ_DESC_F_INDIRECT;
const AU = VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED;

interface PRig {
  mem: GuestMemory;
  drv: PackedDriver;
  q: PackedQueue;
  chain: Chain;
  reader: ChainReader;
  writer: ChainWriter;
}

function prig(
  size = 16,
  opts: Partial<PackedDriverOptions> & { byteLen?: number; mem?: GuestMemory; queue?: Partial<PackedQueueConfig> } = {},
): PRig {
  const mem = opts.mem ?? new FlatMemory(opts.byteLen ?? 1 << 20);
  const drv = new PackedDriver(mem, { size, ...opts });
  const q = new PackedQueue(drv.queueConfig(opts.queue), mem);
  return { mem, drv, q, chain: new Chain(), reader: new ChainReader(), writer: new ChainWriter() };
}

function expectBroken(t: ExecutionContext, q: PackedQueue, code: VirtqErrorCode): void {
  const c = new Chain();
  t.false(q.pop(c), 'pop must refuse');
  t.truthy(q.broken, 'queue must be broken');
  t.is(q.broken?.code, code, q.broken?.message);
  t.true(q.broken instanceof VirtqError);
  // Sticky: later calls keep refusing, nothing throws.
  t.false(q.pop(c));
  t.false(q.hasAvailable());
  t.false(q.enableNotification());
  t.false(q.flushUsed());
  t.deepEqual(q.drain(createDrainPlan(() => 0, 8)), { processed: 0, notify: false, more: false, stopped: false });
  t.is(q.broken?.code, code);
}

/** Pops, echoes the readable bytes into the writable ones (as much as fits), pushes; returns ids. */
function echo(q: PackedQueue, c: Chain, n: number): number[] {
  const r = new ChainReader();
  const w = new ChainWriter();
  const buf = new Uint8Array(1 << 16);
  const ids: number[] = [];
  while (ids.length < n && q.pop(c)) {
    r.reset(c);
    const k = r.read(buf);
    w.reset(c);
    w.write(buf, 0, k);
    q.pushUsed(c.head, w.written);
    ids.push(c.head);
  }
  return ids;
}

test('PackedQueue and SplitQueue are both Virtqueues (one interface for devices)', (t) => {
  const { q } = prig(8);
  const mem = new FlatMemory(1 << 16);
  const s = new SplitQueue({ size: 8, descAddr: 0, availAddr: 0x1000, usedAddr: 0x2000, eventIdx: false, indirect: false }, mem);
  const qs: Virtqueue[] = [q, s];
  for (const v of qs) {
    t.is(v.size, 8);
    t.is(v.broken, null);
    t.false(v.pop(new Chain()));
    t.false(v.flushUsed());
    t.is(v.pendingUsed, 0);
  }
});

test('round trip: list of two descriptors, device reads / writes, driver sees id, len, data and flags', (t) => {
  const { drv, q, chain, reader, writer } = prig(16);
  const req = bytes(20, 3);
  const id = drv.addChain([
    { byteLen: 20, write: false, data: req },
    { byteLen: 100, write: true },
  ]);
  t.true(q.hasAvailable());
  t.true(q.pop(chain));
  t.is(chain.head, id);
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
  writer.reset(chain);
  const resp = bytes(50, 9);
  t.is(writer.write(resp), 50);
  q.pushUsed(chain.head, writer.written);
  t.deepEqual(drv.readUsed(), [], 'nothing visible before flushUsed');
  t.true(q.flushUsed());
  const used = drv.readUsed();
  t.is(used.length, 1);
  t.is(used[0]!.id, id);
  t.is(used[0]!.len, 50);
  t.is(used[0]!.pos, 0);
  t.is(used[0]!.flags, AU | W);
  t.deepEqual(used[0]!.data, resp);
  t.false(q.pop(chain));
  t.is(q.broken, null);
  t.is(q.lastAvailIdx, 2);
  t.true(q.availWrapCounter);
  t.is(q.usedIdx, 2);
  t.true(q.usedWrapCounter);
  t.is(drv.freeDescCount, 16);
  t.is(drv.inFlightCount, 0);
});

test('used element: id and len written into the first descriptor of the list; WRITE only when len > 0', (t) => {
  const { drv, q, chain } = prig(8);
  drv.addChain([{ byteLen: 8, write: false }]);
  drv.addChain([{ byteLen: 8, write: false }, { byteLen: 8, write: true }]);
  t.true(q.pop(chain));
  const a = chain.head;
  t.true(q.pop(chain));
  const b = chain.head;
  q.pushUsed(a, 0);
  q.pushUsed(b, 7);
  q.flushUsed();
  const d0 = drv.readDesc(0);
  t.is(d0.id, a);
  t.is(d0.flags, AU, 'len 0: AVAIL|USED, no WRITE (2.8.3)');
  const d1 = drv.readDesc(1);
  t.is(d1.id, b);
  t.is(d1.len, 7);
  t.is(d1.flags, AU | W);
  t.is(drv.readDesc(2).flags, PackedDriver.availFlags(true) | W, 'position 2 (second descriptor of b) untouched');
  t.deepEqual(
    drv.readUsed().map((u) => [u.id, u.pos]),
    [
      [a, 0],
      [b, 1],
    ],
  );
});

test('batch publication: every element but the first is flagged at push; the first flag (release) exposes them', (t) => {
  const { drv, q, chain, mem } = prig(16);
  const logged: [number, number][] = [];
  mem.onWrite = (gpa, n) => logged.push([gpa, n]);
  for (let i = 0; i < 3; i++) drv.addChain([{ byteLen: 16, write: true }]);
  const ids = echo(q, chain, 3); // nothing readable: len 0, so no WRITE in the used flags
  t.is(ids.length, 3);
  t.is(drv.readDesc(0).flags, PackedDriver.availFlags(true) | W, 'first element still looks available to the driver');
  t.is(drv.readDesc(1).flags & AU, AU, 'later elements already carry USED');
  t.is(drv.readDesc(2).flags & AU, AU);
  t.deepEqual(drv.readUsed(), [], 'the driver polls position 0 only: nothing yet');
  logged.length = 0;
  t.true(q.flushUsed());
  t.is(drv.readDesc(0).flags, AU);
  // Dirty log after publication: len/id/flags of each element.
  t.deepEqual(logged, [0, 1, 2].map((p) => [drv.descAddr + 16 * p + 8, 8]));
  t.deepEqual(
    drv.readUsed().map((u) => u.id),
    ids,
  );
  t.is(q.stats.flushes, 1);
  t.is(q.stats.pushed, 3);
});

test('out-of-order completion: used elements in completion order, positions skip by each id\'s count', (t) => {
  const { drv, q } = prig(16);
  const a = drv.addChain([{ byteLen: 4, write: false, data: bytes(4, 1) }, { byteLen: 8, write: true }]);
  const b = drv.addChain([{ byteLen: 8, write: true }]);
  const c = drv.addChain([{ byteLen: 4, write: false }, { byteLen: 4, write: false }, { byteLen: 8, write: true }]);
  const cs = [new Chain(), new Chain(), new Chain()];
  for (const x of cs) t.true(q.pop(x));
  t.deepEqual(
    cs.map((x) => [x.head, x.descCount]),
    [
      [a, 2],
      [b, 1],
      [c, 3],
    ],
  );
  const w = new ChainWriter();
  const lens = new Map<number, number>();
  for (const x of [cs[2]!, cs[0]!, cs[1]!]) {
    w.reset(x);
    w.write(bytes(5, x.head));
    lens.set(x.head, w.written);
    q.pushUsed(x.head, w.written);
  }
  t.true(q.flushUsed());
  const used = drv.readUsed();
  t.deepEqual(
    used.map((u) => [u.id, u.pos, u.len]),
    [
      [c, 0, 5],
      [a, 3, 5],
      [b, 5, 5],
    ],
  );
  for (const u of used) t.deepEqual(u.data, bytes(5, u.id));
  t.is(q.usedIdx, 6);
  t.is(drv.freeDescCount, 16);
});

test('pushUsed of an id that is not in flight is a device bug (RangeError), the ring is untouched', (t) => {
  const { drv, q, chain } = prig(8);
  drv.addChain([{ byteLen: 4, write: true }]);
  t.true(q.pop(chain));
  t.throws(() => q.pushUsed(chain.head + 1, 0), { instanceOf: RangeError });
  t.throws(() => q.pushUsed(-1, 0), { instanceOf: RangeError });
  t.throws(() => q.pushUsed(70000, 0), { instanceOf: RangeError });
  q.pushUsed(chain.head, 0);
  t.throws(() => q.pushUsed(chain.head, 0), { instanceOf: RangeError }, 'pushed twice');
  t.true(q.flushUsed());
  t.is(drv.readUsed().length, 1);
  t.is(q.broken, null);
});

function lapTest(t: ExecutionContext, size: number, rounds: number, seed: number): void {
  const { drv, q, chain, reader, writer } = prig(size, { heapByteLen: 1 << 18 });
  const rnd = prng(seed);
  const buf = new Uint8Array(4096);
  let availFlips = 0;
  let usedFlips = 0;
  let lastA = q.availWrapCounter;
  let lastU = q.usedWrapCounter;
  let done = 0;
  for (let r = 0; r < rounds; r++) {
    // Fill with lists of 1..3 descriptors (sometimes indirect) while there is room.
    const expect = new Map<number, Uint8Array>();
    for (;;) {
      const nd = 1 + Math.floor(rnd() * 3);
      const indirect = rnd() < 0.2;
      if (drv.freeDescCount < (indirect ? 1 : nd)) break;
      const data = bytes(1 + Math.floor(rnd() * 64), r);
      const bufs: DriverBuffer[] = [{ byteLen: data.length, write: false, data }];
      for (let k = 1; k < nd; k++) bufs.push({ byteLen: 40, write: true });
      const id = drv.addChain(bufs, { indirect });
      expect.set(id, data.subarray(0, Math.min(data.length, 40 * (nd - 1))));
      if (rnd() < 0.3) break;
    }
    // Process each list as it is popped (echo its readable bytes), complete them in a random order,
    // publishing in one or more flushes.
    const popped: number[] = [];
    const lens = new Map<number, number>();
    while (q.pop(chain)) {
      popped.push(chain.head);
      reader.reset(chain);
      const k = reader.read(buf);
      writer.reset(chain);
      writer.write(buf, 0, k);
      lens.set(chain.head, writer.written);
    }
    popped.sort(() => rnd() - 0.5);
    for (const id of popped) {
      q.pushUsed(id, lens.get(id)!);
      if (rnd() < 0.3) q.flushUsed();
    }
    q.flushUsed();
    const used = drv.readUsed();
    t.is(used.length, popped.length);
    t.deepEqual(
      used.map((u) => u.id),
      popped,
    );
    for (const u of used) {
      t.is(u.len, expect.get(u.id)!.length);
      t.deepEqual(u.data, expect.get(u.id));
    }
    for (const id of popped) t.true(expect.has(id));
    done += used.length;
    if (q.availWrapCounter !== lastA) availFlips++;
    if (q.usedWrapCounter !== lastU) usedFlips++;
    lastA = q.availWrapCounter;
    lastU = q.usedWrapCounter;
    t.is(q.lastAvailIdx, drv.availPos);
    t.is(q.availWrapCounter, drv.availWrap);
    t.is(q.usedIdx, drv.usedPos);
    t.is(q.usedWrapCounter, drv.usedWrap);
  }
  t.is(q.broken, null);
  t.true(availFlips >= 6, `size ${size}: avail wrap counter flipped ${availFlips} times`);
  t.true(usedFlips >= 6, `size ${size}: used wrap counter flipped ${usedFlips} times`);
  t.true(done > rounds);
  t.is(drv.freeDescCount, size);
}

test('many laps: wrap counters flip repeatedly on both sides and stay in step (size 8)', (t) => {
  lapTest(t, 8, 300, 1);
});

test('non-power-of-two sizes 100 and 257 (2.8 allows any size), and size 1', (t) => {
  lapTest(t, 100, 400, 2);
  lapTest(t, 257, 800, 3);
  // Size 1: every list is one descriptor and every pop flips the wrap counter.
  const { drv, q, chain } = prig(1);
  for (let i = 0; i < 7; i++) {
    const data = bytes(9, i);
    const id = drv.addChain([{ byteLen: 9, write: false, data }]);
    t.true(q.pop(chain));
    t.is(chain.head, id);
    t.false(q.pop(chain));
    t.is(q.availWrapCounter, i % 2 === 1);
    q.pushUsed(id, 0);
    t.true(q.flushUsed());
    t.deepEqual(
      drv.readUsed().map((u) => u.id),
      [id],
    );
  }
  t.is(q.broken, null);
});

test('data round trip across many laps with lists crossing the ring end (size 5)', (t) => {
  const { drv, q, chain } = prig(5);
  let crossed = 0;
  for (let i = 0; i < 60; i++) {
    const start = drv.availPos;
    const data = bytes(30, i);
    const id = drv.addChain([
      { byteLen: 10, write: false, data: data.subarray(0, 10) },
      { byteLen: 20, write: false, data: data.subarray(10) },
      { byteLen: 16, write: true },
      { byteLen: 16, write: true },
    ]);
    if (start + 4 > 5) crossed++;
    t.is(echo(q, chain, 1)[0], id);
    t.is(chain.descCount, 4);
    t.true(q.flushUsed());
    const [u] = drv.readUsed();
    t.is(u!.id, id);
    t.is(u!.len, 30);
    t.deepEqual(u!.data, data);
  }
  t.true(crossed > 20);
  t.is(q.broken, null);
});

test('a list crossing the ring end: positions wrap to 0 and the wrap counter flips mid-list', (t) => {
  const { drv, chain } = prig(8);
  drv.startAt(6, true);
  const q2 = new PackedQueue(drv.queueConfig({ lastAvailIdx: 6, availWrapCounter: true }), drv.mem);
  const id = drv.addChain([
    { byteLen: 8, write: false, data: bytes(8, 1) },
    { byteLen: 8, write: false, data: bytes(8, 2) },
    { byteLen: 8, write: true },
  ]);
  t.is(drv.readDesc(0).flags & AU, VIRTQ_DESC_F_USED, 'third descriptor at position 0 under the flipped counter');
  t.true(q2.pop(chain));
  t.is(chain.head, id);
  t.is(chain.descCount, 3);
  t.is(q2.lastAvailIdx, 1);
  t.false(q2.availWrapCounter);
  q2.pushUsed(id, 4);
  t.true(q2.flushUsed());
  t.is(q2.usedIdx, 1);
  t.false(q2.usedWrapCounter);
  const [u] = drv.readUsed();
  t.is(u!.pos, 6);
  t.is(u!.flags, AU | W, 'written at position 6 under the old used wrap counter (1)');
});

test('indirect table: one ring descriptor, sequential entries, data round trip', (t) => {
  const { drv, q, chain, reader, writer } = prig(8);
  const a = bytes(12, 1);
  const b = bytes(30, 2);
  const id = drv.addChain(
    [
      { byteLen: 12, write: false, data: a },
      { byteLen: 30, write: false, data: b },
      { byteLen: 50, write: true },
    ],
    { indirect: true },
  );
  t.true(q.pop(chain));
  t.is(chain.head, id);
  t.true(chain.indirect);
  t.is(chain.descCount, 1);
  t.is(chain.segCount, 3);
  reader.reset(chain);
  const got = new Uint8Array(42);
  t.is(reader.read(got), 42);
  t.deepEqual(got, new Uint8Array([...a, ...b]));
  writer.reset(chain);
  writer.write(bytes(45, 7));
  q.pushUsed(chain.head, writer.written);
  t.true(q.flushUsed());
  const [u] = drv.readUsed();
  t.is(u!.len, 45);
  t.deepEqual(u!.data, bytes(45, 7));
  t.is(q.lastAvailIdx, 1);
  t.is(q.usedIdx, 1);
});

test('indirect table entries: NEXT and id are reserved (ignored), every entry is walked in order', (t) => {
  const { drv, q, chain } = prig(8);
  const x = drv.alloc(16);
  const y = drv.alloc(16);
  const table = drv.addTable([
    { addr: x, len: 16, id: 999, flags: N },
    { addr: y, len: 16, id: 5, flags: W }, // no NEXT before, NEXT absent here: still part of the table
    { addr: y, len: 8, id: 0, flags: W | N },
  ]);
  drv.pushRaw([{ addr: table, len: 48, id: 3, flags: I | W }]);
  t.true(q.pop(chain));
  t.is(chain.head, 3);
  t.deepEqual(
    chain.segments().map((s) => [s.addr, s.byteLen, s.write]),
    [
      [x, 16, false],
      [y, 16, true],
      [y, 8, true],
    ],
  );
});

test('indirect errors: not negotiated, with NEXT, after direct descriptors, bad length, nested, unmapped', (t) => {
  const cases: [string, VirtqErrorCode, (d: PackedDriver) => void, Partial<PackedQueueConfig>?][] = [
    [
      'not negotiated',
      'VQ_INDIRECT_NOT_NEGOTIATED',
      (d) => d.pushRaw([{ addr: d.addTable([{ addr: d.alloc(8), len: 8, id: 0, flags: 0 }]), len: 16, id: 0, flags: I }]),
      { indirect: false },
    ],
    [
      'INDIRECT with NEXT',
      'VQ_BAD_INDIRECT',
      (d) =>
        d.pushRaw([
          { addr: d.addTable([{ addr: d.alloc(8), len: 8, id: 0, flags: 0 }]), len: 16, id: 0, flags: I | N },
          { addr: d.alloc(8), len: 8, id: 0, flags: 0 },
        ]),
    ],
    [
      'INDIRECT after a direct descriptor (2.8.19)',
      'VQ_BAD_INDIRECT',
      (d) =>
        d.pushRaw([
          { addr: d.alloc(8), len: 8, id: 0, flags: N },
          { addr: d.addTable([{ addr: d.alloc(8), len: 8, id: 0, flags: 0 }]), len: 16, id: 0, flags: I },
        ]),
    ],
    ['length 0', 'VQ_BAD_INDIRECT', (d) => d.pushRaw([{ addr: d.alloc(16), len: 0, id: 0, flags: I }])],
    ['length 24', 'VQ_BAD_INDIRECT', (d) => d.pushRaw([{ addr: d.alloc(32), len: 24, id: 0, flags: I }])],
    [
      'nested INDIRECT',
      'VQ_NESTED_INDIRECT',
      (d) => {
        const inner = d.addTable([{ addr: d.alloc(8), len: 8, id: 0, flags: 0 }]);
        d.pushRaw([{ addr: d.addTable([{ addr: inner, len: 16, id: 0, flags: I }]), len: 16, id: 0, flags: I }]);
      },
    ],
    ['unmapped table', 'VQ_UNMAPPED', (d) => d.pushRaw([{ addr: 0x7000_0000, len: 32, id: 0, flags: I }])],
    [
      'table entry unmapped',
      'VQ_UNMAPPED',
      (d) => d.pushRaw([{ addr: d.addTable([{ addr: 2n ** 60n, len: 8, id: 0, flags: 0 }]), len: 16, id: 0, flags: I }]),
    ],
    [
      'readable after writable in the table',
      'VQ_WRITE_BEFORE_READ',
      (d) =>
        d.pushRaw([
          {
            addr: d.addTable([
              { addr: d.alloc(8), len: 8, id: 0, flags: W },
              { addr: d.alloc(8), len: 8, id: 0, flags: 0 },
            ]),
            len: 32,
            id: 0,
            flags: I,
          },
        ]),
    ],
  ];
  for (const [what, code, build, cfg] of cases) {
    const { drv, q } = prig(8, { queue: cfg ?? {} });
    build(drv);
    t.true(q.hasAvailable(), what);
    expectBroken(t, q, code);
  }
});

test('a list with NEXT on every descriptor is a loop (VQ_LOOP); sticky, never throws', (t) => {
  const { drv, q } = prig(8);
  const descs = Array.from({ length: 8 }, () => ({ addr: drv.alloc(8), len: 8, id: 0, flags: N }));
  drv.pushRaw(descs);
  expectBroken(t, q, 'VQ_LOOP');
});

test('exactly size descriptors in one list is fine (ttl = size)', (t) => {
  const { drv, q, chain } = prig(6);
  const bufs: DriverBuffer[] = Array.from({ length: 6 }, (_, i) => ({ byteLen: 4, write: i >= 3 }));
  const id = drv.addChain(bufs);
  t.true(q.pop(chain));
  t.is(chain.head, id);
  t.is(chain.descCount, 6);
  t.is(q.lastAvailIdx, 0);
  t.false(q.availWrapCounter);
});

test('guest errors in direct lists: unmapped, >= 2^53, readable after writable, too long -> broken', (t) => {
  const cases: [VirtqErrorCode, (d: PackedDriver) => void][] = [
    ['VQ_UNMAPPED', (d) => d.pushRaw([{ addr: 0x7fff_0000, len: 8, id: 0, flags: 0 }])],
    ['VQ_UNMAPPED', (d) => d.pushRaw([{ addr: 2n ** 60n, len: 8, id: 0, flags: 0 }])],
    [
      'VQ_WRITE_BEFORE_READ',
      (d) =>
        d.pushRaw([
          { addr: d.alloc(8), len: 8, id: 0, flags: W | N },
          { addr: d.alloc(8), len: 8, id: 0, flags: 0 },
        ]),
    ],
    [
      'VQ_CHAIN_TOO_LONG',
      (d) =>
        d.pushRaw([
          { addr: 0, len: 16, id: 0, flags: N },
          { addr: 0, len: 0xffffffff, id: 0, flags: 0 },
        ]),
    ],
  ];
  for (const [code, build] of cases) {
    // CHAIN_TOO_LONG needs no 4 GiB memory: the total is checked before the second buffer is translated.
    const { drv, q } = prig(8);
    build(drv);
    expectBroken(t, q, code);
  }
});

test('a buffer id reused while in flight is a driver error (VQ_BAD_ID)', (t) => {
  const { drv, q, chain } = prig(8);
  const id = drv.addChain([{ byteLen: 4, write: true }]);
  drv.addChain([{ byteLen: 4, write: true }], { id });
  t.true(q.pop(chain));
  expectBroken(t, q, 'VQ_BAD_ID');
  // The chain popped before the error still completes.
  q.pushUsed(id, 0);
  t.true(q.flushUsed());
  t.is(drv.readUsed()[0]!.id, id);
});

test('ids above the ring size are accepted (tables grow) and round-trip', (t) => {
  const { drv, q, chain } = prig(4);
  for (const id of [4, 1000, 65535]) {
    drv.addChain([{ byteLen: 4, write: true }], { id });
    t.true(q.pop(chain));
    t.is(chain.head, id);
    q.pushUsed(id, 0);
    q.flushUsed();
    t.deepEqual(
      drv.readUsed().map((u) => u.id),
      [id],
    );
  }
  t.is(q.broken, null);
});

test('the driver making more than size descriptors available (re-flipping in-flight slots) -> VQ_AVAIL_JUMP', (t) => {
  const { drv, q, chain } = prig(4);
  for (let i = 0; i < 4; i++) drv.addChain([{ byteLen: 4, write: true }]);
  for (let i = 0; i < 4; i++) t.true(q.pop(chain));
  t.false(q.pop(chain), 'position 0 is still marked for the previous lap');
  // A broken driver marks position 0 available for the next lap although the device never used it.
  drv.pushRaw([{ addr: drv.alloc(8), len: 8, id: 9, flags: 0 }]);
  expectBroken(t, q, 'VQ_AVAIL_JUMP');
});

test('broken state is sticky and pushes of chains popped before the error still reach the driver', (t) => {
  const { drv, q, chain } = prig(8);
  const a = drv.addChain([{ byteLen: 4, write: true }]);
  drv.pushRaw([{ addr: 2n ** 60n, len: 8, id: 7, flags: 0 }]);
  t.true(q.pop(chain));
  t.false(q.pop(new Chain()));
  t.is(q.broken?.code, 'VQ_UNMAPPED');
  q.pushUsed(a, 3);
  t.true(q.flushUsed());
  t.deepEqual(
    drv.readUsed().map((u) => [u.id, u.len]),
    [[a, 3]],
  );
});

test('driver event suppression: ENABLE notifies, DISABLE does not; DESC without EVENT_IDX counts as ENABLE', (t) => {
  const { drv, q, chain } = prig(8);
  for (let i = 0; i < 6; i++) drv.addChain([{ byteLen: 4, write: true }]);
  echo(q, chain, 1);
  t.true(q.flushUsed());
  drv.disableInterrupts();
  echo(q, chain, 2);
  t.false(q.flushUsed());
  drv.enableInterrupts();
  echo(q, chain, 1);
  t.true(q.flushUsed());
  drv.setUsedEvent(7, false); // not negotiated: reserved use of DESC, notify anyway
  echo(q, chain, 1);
  t.true(q.flushUsed());
  drv.setDriverEvent(3); // reserved value: notify
  echo(q, chain, 1);
  t.true(q.flushUsed());
  t.is(q.stats.notifies, 4);
  t.is(q.stats.suppressed, 1);
  t.false(q.flushUsed(), 'nothing pending: no notification');
});

test('EVENT_IDX, DESC: notify only when the flush covers the used position named by off_wrap', (t) => {
  const { drv, q, chain } = prig(8, { eventIdx: true });
  for (let i = 0; i < 8; i++) drv.addChain([{ byteLen: 4, write: true }]);
  drv.setUsedEvent(2, true); // tell me when the element at position 2 (lap 0) is used
  echo(q, chain, 2);
  t.false(q.flushUsed()); // [0, 2)
  echo(q, chain, 1);
  t.true(q.flushUsed()); // [2, 3)
  echo(q, chain, 2);
  t.false(q.flushUsed()); // [3, 5): event behind
  drv.setUsedEvent(6, false); // position 6 of the NEXT lap: not now
  echo(q, chain, 3);
  t.false(q.flushUsed()); // [5, 8)
  drv.setUsedEvent(6, true);
  t.is(drv.readUsed().length, 8);
  t.is(q.stats.notifies, 1);
});

test('EVENT_IDX, DESC across the wrap: event in the next lap fires when the batch crosses the ring end', (t) => {
  const { drv, q, chain } = prig(8, { eventIdx: true });
  // Move both sides to position 6 of lap 0.
  for (let i = 0; i < 6; i++) drv.addChain([{ byteLen: 4, write: true }]);
  echo(q, chain, 6);
  drv.disableInterrupts();
  t.false(q.flushUsed());
  t.is(drv.readUsed().length, 6);
  // Batch of 4 single-descriptor lists: used positions 6, 7, then 0, 1 of lap 1.
  for (let i = 0; i < 4; i++) drv.addChain([{ byteLen: 4, write: true }]);
  drv.setUsedEvent(1, false); // position 1 under wrap counter 0 (lap 1)
  echo(q, chain, 4);
  t.true(q.flushUsed());
  t.is(q.usedIdx, 2);
  t.false(q.usedWrapCounter);
  t.is(drv.readUsed().length, 4);
  // Same position under the old wrap counter (lap 0, long past): no notification.
  for (let i = 0; i < 3; i++) drv.addChain([{ byteLen: 4, write: true }]);
  drv.setUsedEvent(3, true);
  echo(q, chain, 3);
  t.false(q.flushUsed()); // [2, 5) of lap 1 does not contain lap 0's position 3
  drv.setUsedEvent(5, false);
  for (let i = 0; i < 1; i++) drv.addChain([{ byteLen: 4, write: true }]);
  echo(q, chain, 1);
  t.true(q.flushUsed()); // [5, 6) of lap 1
  // A multi-descriptor list covering the event position in its middle also fires.
  t.is(drv.readUsed().length, 4);
  drv.setUsedEvent(7, false);
  drv.addChain([{ byteLen: 4, write: false }, { byteLen: 4, write: true }, { byteLen: 4, write: true }]); // 6, 7, 0
  echo(q, chain, 1);
  t.true(q.flushUsed()); // [6, 9): 7 inside
  t.true(q.usedWrapCounter, 'lap 2: counter back to 1');
});

test('device event suppression: disable writes DISABLE; enable writes ENABLE (no EVENT_IDX); the driver honours it', (t) => {
  const { drv, q, chain } = prig(8);
  drv.addChain([{ byteLen: 4, write: true }]);
  t.true(drv.kick());
  q.disableNotification();
  t.is(drv.deviceEventFlags, RING_EVENT_FLAGS_DISABLE);
  drv.addChain([{ byteLen: 4, write: true }]);
  t.false(drv.kick());
  t.true(q.enableNotification(), 'two lists we have not popped');
  t.is(drv.deviceEventFlags, RING_EVENT_FLAGS_ENABLE);
  echo(q, chain, 2);
  t.false(q.enableNotification());
  drv.addChain([{ byteLen: 4, write: true }]);
  t.true(drv.kick());
});

test('EVENT_IDX: enableNotification writes off_wrap = next unseen position | wrap << 15, then DESC', (t) => {
  const { drv, q, chain } = prig(4, { eventIdx: true });
  for (let lap = 0; lap < 3; lap++) {
    for (let i = 0; i < 3; i++) drv.addChain([{ byteLen: 4, write: true }]);
    drv.kick();
    q.disableNotification();
    t.is(drv.deviceEventFlags, RING_EVENT_FLAGS_DISABLE);
    echo(q, chain, 3);
    q.flushUsed();
    drv.readUsed();
    t.false(q.enableNotification());
    t.is(drv.deviceEventFlags, RING_EVENT_FLAGS_DESC);
    t.is(drv.deviceEventOffWrap, q.lastAvailIdx | (q.availWrapCounter ? 0x8000 : 0));
    drv.addChain([{ byteLen: 4, write: true }]);
    t.true(drv.kick(), `lap ${lap}: the named descriptor was made available`);
    drv.addChain([{ byteLen: 4, write: true }]);
    t.false(drv.kick(), `lap ${lap}: event not moved, no further kick`);
    echo(q, chain, 2);
    q.flushUsed();
    drv.readUsed();
  }
  t.is(q.broken, null);
});

test('enableNotification reports lists that raced with it (2.8.21.2), both modes', (t) => {
  for (const eventIdx of [false, true]) {
    const { drv, q, chain } = prig(8, { eventIdx });
    q.disableNotification();
    t.false(q.pop(chain));
    drv.addChain([{ byteLen: 4, write: true }]); // lands while notifications are off
    t.true(q.enableNotification(), `eventIdx=${eventIdx}`);
    t.true(q.pop(chain));
    t.false(q.pop(chain));
    t.false(q.enableNotification());
  }
});

test('drain: budget, more, notifications off while work remains, re-enabled at the end', (t) => {
  const { drv, q } = prig(16);
  for (let i = 0; i < 10; i++) drv.addChain([{ byteLen: 4, write: true }]);
  const w = new ChainWriter();
  const fn = (c: Chain) => {
    w.reset(c);
    return w.write(new Uint8Array([c.head]));
  };
  const plan = createDrainPlan(fn, 4);
  let r = q.drain(plan);
  t.deepEqual(r, { processed: 4, notify: true, more: true, stopped: false });
  t.is(drv.deviceEventFlags, RING_EVENT_FLAGS_DISABLE);
  r = q.drain(plan);
  t.true(r.more);
  r = q.drain(plan);
  t.deepEqual(r, { processed: 2, notify: true, more: false, stopped: false });
  t.is(drv.deviceEventFlags, RING_EVENT_FLAGS_ENABLE);
  const used = drv.readUsed();
  t.is(used.length, 10);
  for (const u of used) t.deepEqual([...u.data!], [u.id]);
});

test('drain: fn returning false gives the list back; drain re-checks after enabling', (t) => {
  const { drv, q } = prig(8, { eventIdx: true });
  const ids = [0, 1, 2].map(() => drv.addChain([{ byteLen: 4, write: false }, { byteLen: 4, write: true }]));
  let calls = 0;
  const r = q.drain(createDrainPlan((c) => (++calls === 2 ? false : c.head), 64));
  t.deepEqual(r, { processed: 1, notify: true, more: false, stopped: true });
  t.is(q.lastAvailIdx, 2);
  const c = new Chain();
  t.true(q.pop(c));
  t.is(c.head, ids[1]!);
  q.unpop(1);
  // Race: the driver adds a list just before we re-enable.
  const orig = q.enableNotification.bind(q);
  let raced = false;
  q.enableNotification = () => {
    if (!raced) {
      raced = true;
      drv.addChain([{ byteLen: 4, write: true }]);
    }
    return orig();
  };
  const r2 = q.drain(createDrainPlan(() => 0, 64));
  t.is(r2.processed, 3);
  t.false(r2.more);
  t.false(q.hasAvailable());
  t.true(q.notificationsEnabled);
});

test('unpop rewinds the position AND the wrap counter across the ring end; the same lists pop again', (t) => {
  const { drv } = prig(8);
  drv.startAt(5, false); // lap 1
  const q = new PackedQueue(drv.queueConfig({ lastAvailIdx: 5, availWrapCounter: false }), drv.mem);
  const a = drv.addChain([{ byteLen: 4, write: false }, { byteLen: 4, write: true }]); // 5, 6
  const b = drv.addChain([{ byteLen: 4, write: true }, { byteLen: 4, write: true }, { byteLen: 4, write: true }]); // 7, 0, 1
  const c = drv.addChain([{ byteLen: 4, write: true }]); // 2
  const cs = [new Chain(), new Chain(), new Chain()];
  for (const x of cs) t.true(q.pop(x));
  t.is(q.lastAvailIdx, 3);
  t.true(q.availWrapCounter, 'crossed into lap 2');
  q.unpop(2); // b and c: back to position 7 of lap 1
  t.is(q.lastAvailIdx, 7);
  t.false(q.availWrapCounter);
  t.is(q.inFlight, 1);
  t.is(q.stats.popped, 1);
  const again = new Chain();
  t.true(q.pop(again));
  t.is(again.head, b);
  t.is(again.descCount, 3);
  t.true(q.pop(again));
  t.is(again.head, c);
  // Complete all three; the driver sees them at 5, 7, 2 (lap 2).
  q.pushUsed(a, 0);
  q.pushUsed(b, 0);
  q.pushUsed(c, 0);
  t.true(q.flushUsed());
  t.deepEqual(
    drv.readUsed().map((u) => [u.id, u.pos]),
    [
      [a, 5],
      [b, 7],
      [c, 2],
    ],
  );
  t.is(q.usedIdx, 3);
  t.true(q.usedWrapCounter);
});

test('unpop refuses pushed chains and more than popped (device bugs: RangeError)', (t) => {
  const { drv, q } = prig(8);
  for (let i = 0; i < 3; i++) drv.addChain([{ byteLen: 4, write: true }]);
  const cs = [new Chain(), new Chain(), new Chain()];
  for (const x of cs) t.true(q.pop(x));
  q.pushUsed(cs[2]!.head, 0); // the last popped is completed
  t.throws(() => q.unpop(1), { instanceOf: RangeError });
  t.throws(() => q.unpop(4), { instanceOf: RangeError });
  t.throws(() => q.unpop(-1), { instanceOf: RangeError });
  t.is(q.lastAvailIdx, 3, 'nothing rewound by the failed calls');
  q.pushUsed(cs[1]!.head, 0);
  q.pushUsed(cs[0]!.head, 0);
  t.throws(() => q.unpop(1), { instanceOf: RangeError });
  q.unpop(0);
  t.true(q.flushUsed());
  t.is(drv.readUsed().length, 3);
});

test('after unpop, enableNotification names the first UNSEEN position and does not report given-back lists', (t) => {
  const { drv } = prig(8, { eventIdx: true });
  drv.startAt(6, true);
  const q2 = new PackedQueue(drv.queueConfig({ lastAvailIdx: 6 }), drv.mem);
  drv.addChain([{ byteLen: 4, write: true }, { byteLen: 4, write: true }]); // 6, 7
  drv.addChain([{ byteLen: 4, write: true }]); // 0 (lap 1)
  const c = new Chain();
  t.true(q2.pop(c));
  t.true(q2.pop(c));
  t.false(q2.pop(c));
  q2.unpop(2); // e.g. mergeable RX could not fit a packet
  t.is(q2.lastAvailIdx, 6);
  t.true(q2.hasAvailable());
  t.false(q2.enableNotification(), 'given-back lists are not news');
  t.is(drv.deviceEventOffWrap, 1, 'position 1, wrap counter 0');
  drv.kick();
  drv.addChain([{ byteLen: 4, write: true }]);
  t.true(drv.kick());
  t.true(q2.enableNotification());
});

test('IN_ORDER: accepted as a flag; one used element per list, in order, is what the driver sees', (t) => {
  const { drv, q, chain } = prig(8, { queue: { inOrder: true } });
  t.true(q.inOrder);
  const ids = [
    drv.addChain([{ byteLen: 4, write: true }, { byteLen: 4, write: true }]),
    drv.addChain([{ byteLen: 4, write: true }]),
    drv.addChain([{ byteLen: 4, write: false }, { byteLen: 4, write: true }, { byteLen: 4, write: true }]),
  ];
  t.deepEqual(echo(q, chain, 3), ids);
  t.true(q.flushUsed());
  t.deepEqual(
    drv.readUsed().map((u) => [u.id, u.pos]),
    [
      [ids[0], 0],
      [ids[1], 2],
      [ids[2], 3],
    ],
  );
});

test('vhost-user base encoding: 0x80008000 (QEMU), 0x8000 (DPDK: used = avail), round trips', (t) => {
  t.deepEqual(packedBaseFromVhost(0x80008000), { lastAvailIdx: 0, availWrap: true, usedIdx: 0, usedWrap: true });
  t.deepEqual(packedBaseFromVhost(0x8000), { lastAvailIdx: 0, availWrap: true, usedIdx: 0, usedWrap: true });
  t.deepEqual(packedBaseFromVhost(0x0005), { lastAvailIdx: 5, availWrap: false, usedIdx: 5, usedWrap: false });
  t.deepEqual(packedBaseFromVhost(0x0003_8005), { lastAvailIdx: 5, availWrap: true, usedIdx: 3, usedWrap: false });
  t.deepEqual(packedBaseFromVhost(0xffff_ffff), { lastAvailIdx: 0x7fff, availWrap: true, usedIdx: 0x7fff, usedWrap: true });
  t.is(packedBaseToVhost({ lastAvailIdx: 0, availWrap: true, usedIdx: 0, usedWrap: true }), 0x80008000);
  t.is(packedBaseToVhost(packedBaseFromVhost(0x8000)), 0x80008000);
  for (const v of [0x80008000, 0x0003_8005, 0x8001_0007, 0xffff_ffff, 0x7fff_7fff, 0x8000_0000 + 12]) {
    t.is(packedBaseToVhost(packedBaseFromVhost(v)), v >>> 0, v.toString(16));
  }
  const { drv } = prig(8);
  const q = new PackedQueue(drv.queueConfig({ vhostBase: 0x8000 }), drv.mem);
  t.is(q.vhostBase, 0x80008000);
});

test('GET_VRING_BASE mid-run then SET_VRING_BASE on a new queue continues seamlessly (any lap)', (t) => {
  const { drv, q, chain } = prig(5);
  for (let i = 0; i < 13; i++) {
    drv.addChain([{ byteLen: 4, write: false }, { byteLen: 4, write: true }]);
    echo(q, chain, 1);
    q.flushUsed();
    drv.readUsed();
  }
  const base = q.vhostBase;
  t.deepEqual(packedBaseFromVhost(base), q.base);
  t.is(q.lastAvailIdx, 26 % 5);
  t.is(q.availWrapCounter, Math.floor(26 / 5) % 2 === 0);
  const q2 = new PackedQueue(drv.queueConfig({ vhostBase: base }), drv.mem);
  const data = bytes(4, 77);
  const id = drv.addChain([{ byteLen: 4, write: false, data }, { byteLen: 4, write: true }]);
  t.deepEqual(echo(q2, chain, 1), [id]);
  t.true(q2.flushUsed());
  t.deepEqual(drv.readUsed()[0]!.data, data);
  // DPDK-style avail-only base at the same point works too.
  const q3 = new PackedQueue(drv.queueConfig({ vhostBase: q2.vhostBase & 0xffff }), drv.mem);
  t.deepEqual(q3.base, q2.base);
});

test('constructor validation: size 1..32768 any integer, alignments, indices', (t) => {
  const mem = new FlatMemory(1 << 20);
  const cfg = (c: Partial<PackedQueueConfig>): PackedQueueConfig => ({
    size: 8,
    descAddr: 0,
    driverEventAddr: 0x1000,
    deviceEventAddr: 0x1004,
    eventIdx: false,
    indirect: false,
    ...c,
  });
  for (const size of [0, 32769, 1.5, -1]) {
    t.throws(() => new PackedQueue(cfg({ size }), mem), { instanceOf: VirtqError, message: /size/ });
  }
  for (const size of [1, 3, 100, 257, 32768]) t.is(new PackedQueue(cfg({ size, driverEventAddr: 0x80000, deviceEventAddr: 0x80004 }), mem).size, size);
  const e = t.throws<VirtqError>(() => new PackedQueue(cfg({ descAddr: 8 }), mem), { instanceOf: VirtqError });
  t.is(e?.code, 'VQ_RING_LAYOUT');
  t.throws(() => new PackedQueue(cfg({ driverEventAddr: 0x1002 }), mem), { instanceOf: VirtqError });
  t.throws(() => new PackedQueue(cfg({ deviceEventAddr: 0x1006 }), mem), { instanceOf: VirtqError });
  t.throws(() => new PackedQueue(cfg({ descAddr: 0x200000 }), mem), { instanceOf: VirtqError });
  t.throws(() => new PackedQueue(cfg({ lastAvailIdx: 8 }), mem), { instanceOf: RangeError });
  t.throws(() => new PackedQueue(cfg({ usedIdx: 3, lastAvailIdx: 2 }), mem), { instanceOf: RangeError }, 'used ahead of avail');
  const q = new PackedQueue(cfg({ lastAvailIdx: 2, usedIdx: 6, usedWrapCounter: false, availWrapCounter: true }), mem);
  t.is(q.lastAvailIdx, 2);
  t.is(q.usedIdx, 6);
});

test('setMemory: rings gone from the new table -> broken (VQ_UNMAPPED); pushes are then ignored', (t) => {
  const mem = new RegionMemory([{ gpa: 0, uva: 0x1000_0000, byteLen: 1 << 20, bytes: new Uint8Array(1 << 20) }]);
  const drv = new PackedDriver(mem, { size: 8 });
  const q = new PackedQueue(drv.queueConfig(), mem);
  const c = new Chain();
  drv.addChain([{ byteLen: 4, write: true }]);
  t.true(q.pop(c));
  const other = new RegionMemory([{ gpa: 1 << 24, uva: 0, byteLen: 4096, bytes: new Uint8Array(4096) }]);
  t.false(q.setMemory(other));
  t.is(q.broken?.code, 'VQ_UNMAPPED');
  q.pushUsed(c.head, 0);
  t.false(q.flushUsed());
  const q2 = new PackedQueue(drv.queueConfig(), mem);
  t.true(q2.setMemory(new RegionMemory(mem.regions)));
});

test('dirty logging: event area writes are reported; none when nothing changes', (t) => {
  const { q, mem, drv } = prig(8, { eventIdx: true });
  const logged: [number, number][] = [];
  mem.onWrite = (gpa, n) => logged.push([gpa, n]);
  q.disableNotification();
  q.disableNotification();
  t.deepEqual(logged, [[drv.deviceEventAddr + 2, 2]]);
  logged.length = 0;
  q.enableNotification();
  t.deepEqual(logged, [
    [drv.deviceEventAddr, 2],
    [drv.deviceEventAddr + 2, 2],
  ]);
  logged.length = 0;
  q.enableNotification();
  t.deepEqual(logged, []);
});
