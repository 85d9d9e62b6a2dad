/**
 * Inflight I/O tracking (vhost-user.rst "Inflight I/O tracking"): region layout, the split and packed
 * bookkeeping, crash recovery at every ordering point of a batch (a crash is simulated by throwing
 * from the k-th Atomics.store into the region or guest memory, then building a NEW queue over the same
 * guest memory and region bytes), hostile regions, and the used ring log address.
 */
import test from 'ava';
import type { ExecutionContext } from 'ava';
import {
  Chain,
  ChainReader,
  ChainWriter,
  FlatMemory,
  SplitDriver,
  PackedDriver,
  PackedInflight,
  PackedQueue,
  SplitInflight,
  SplitQueue,
  VIRTQ_DESC_F_AVAIL,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_USED,
  VIRTQ_DESC_F_WRITE,
  VirtqError,
  createDrainPlan,
  inflightQueueOffset,
  inflightQueueSize,
  inflightRegionSize,
  openInflightRegion,
} from '../../virtqueue/index.ts';
import type { InflightLayout, DriverBuffer, UsedEntry, Virtqueue, VirtqErrorCode } from '../../virtqueue/index.ts';

const MAGIC = 0xa5a5a5a5;

function le(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function expectCode(t: ExecutionContext, fn: () => unknown, code: VirtqErrorCode, what?: string): VirtqError | undefined {
  const e = t.throws(fn, { instanceOf: VirtqError }, what);
  t.is(e?.code, code, `${what ?? ''}: ${e?.message}`);
  return e;
}

// ---- tagged chains: the device reads a tag and writes (tag ^ MAGIC, tag) back ------------------

type Kind = 'two' | 'three' | 'ind';

function bufsFor(tag: number, kind: Kind): { bufs: DriverBuffer[]; indirect: boolean } {
  const data = new Uint8Array(8);
  le(data).setUint32(0, tag, true);
  le(data).setUint32(4, 0x11111111, true);
  const r: DriverBuffer = { byteLen: 8, write: false, data };
  if (kind === 'three') return { bufs: [r, { byteLen: 8, write: true }, { byteLen: 8, write: true }], indirect: false };
  return { bufs: [r, { byteLen: 16, write: true }], indirect: kind === 'ind' };
}

const reader = new ChainReader();
const writer = new ChainWriter();

/** The device: reads the tag, writes 12 bytes back; returns the tag and the used length. */
function serve(chain: Chain): { tag: number; len: number } {
  reader.reset(chain);
  const b = new Uint8Array(8);
  reader.read(b);
  const tag = le(b).getUint32(0, true);
  const out = new Uint8Array(12);
  le(out).setUint32(0, (tag ^ MAGIC) >>> 0, true);
  le(out).setUint32(4, tag, true);
  le(out).setUint32(8, 0x22222222, true);
  writer.reset(chain);
  writer.write(out);
  return { tag, len: writer.written };
}

/** The driver's view of a used element: the tag the device wrote (checked against its echo). */
function usedTag(t: ExecutionContext, u: UsedEntry): number {
  t.is(u.len, 12, `used len of id ${u.id}`);
  const d = u.data!;
  t.truthy(d, `used id ${u.id} is a known chain`);
  const a = le(d).getUint32(0, true);
  const tag = le(d).getUint32(4, true);
  t.is((a ^ MAGIC) >>> 0, tag, `device output for tag ${tag}`);
  return tag;
}

interface Driver {
  addChain(bufs: readonly DriverBuffer[], opts?: { indirect?: boolean }): number;
  readUsed(): UsedEntry[];
  readonly inFlightCount: number;
}

interface Flavor {
  layout: InflightLayout;
  size: number;
  memBytes: number;
  driver(mem: FlatMemory): Driver;
  /** A queue as the session would build it after a (re)connect. */
  queue(mem: FlatMemory, drv: Driver): Virtqueue;
  region(bytes: Uint8Array): SplitInflight | PackedInflight;
}

const splitFlavor: Flavor = {
  layout: 'split',
  size: 16,
  memBytes: 1 << 17,
  driver(mem) {
    const d = new SplitDriver(mem, { size: 16, heapByteLen: 32768 });
    d.startAt(0xfffa); // the script crosses the 16-bit index wrap
    return d;
  },
  queue(mem, drv) {
    const d = drv as SplitDriver;
    // After a crash QEMU restores last_avail_idx := used idx (vhost_virtqueue_stop); attach overrides it.
    return new SplitQueue(d.queueConfig({ lastAvailIdx: d.usedIdx }), mem);
  },
  region: (bytes) => new SplitInflight(bytes, 16),
};

const packedFlavor: Flavor = {
  layout: 'packed',
  size: 8,
  memBytes: 1 << 17,
  driver: (mem) => new PackedDriver(mem, { size: 8, heapByteLen: 32768 }),
  // A stale SET_VRING_BASE (the fresh-ring value): attach takes the position from the region.
  queue: (mem, drv) => new PackedQueue((drv as PackedDriver).queueConfig({ vhostBase: 0x80008000 }), mem),
  region: (bytes) => new PackedInflight(bytes, 8),
};

class Crash extends Error {}

/**
 * Runs fn; the k-th Atomics.store into one of `watched` throws Crash instead of storing (k < 0: never).
 * Returns the number of watched stores made (or attempted, when it crashed) and whether it crashed.
 */
function crashAt(k: number, watched: readonly ArrayBufferLike[], fn: () => void): { stores: number; crashed: boolean } {
  const orig = Atomics.store;
  let count = 0;
  const patched = ((ta: Uint8Array, i: number, v: number) => {
    if (watched.includes(ta.buffer)) {
      if (count++ === k) throw new Crash(`crash at store ${k}`);
    }
    return orig(ta, i, v);
  }) as typeof Atomics.store;
  Atomics.store = patched;
  try {
    fn();
    return { stores: count, crashed: false };
  } catch (e) {
    if (e instanceof Crash) return { stores: count, crashed: true };
    throw e;
  } finally {
    Atomics.store = orig;
  }
}

/** One run of a scenario: the device side state the test keeps to know what must happen after a crash. */
class Run {
  readonly mem: FlatMemory;
  readonly drv: Driver;
  readonly regionBytes: Uint8Array;
  q!: Virtqueue;
  readonly chain = new Chain();
  /** Tags added, in ring order, not yet popped from the ring. */
  readonly fifo: number[] = [];
  /** Tags popped (and not given back), in pop order. */
  readonly popped: number[] = [];
  readonly all: number[] = [];
  readonly heads = new Map<number, number>();
  readonly lens = new Map<number, number>();
  /** Tags the driver has seen completed. */
  readonly completed: number[] = [];
  /** The op in progress and the tag it concerns (what a crash may leave either way). */
  inProgress: { op: 'pop' | 'unpop'; tag: number } | null = null;

  constructor(
    readonly t: ExecutionContext,
    readonly f: Flavor,
  ) {
    this.mem = new FlatMemory(f.memBytes);
    this.drv = f.driver(this.mem);
    this.regionBytes = new Uint8Array(inflightQueueSize(f.layout, f.size));
  }

  start(): void {
    this.q = this.f.queue(this.mem, this.drv);
    this.q.attachInflight(this.f.region(this.regionBytes));
  }
  add(tag: number, kind: Kind): void {
    const { bufs, indirect } = bufsFor(tag, kind);
    this.drv.addChain(bufs, { indirect });
    this.fifo.push(tag);
    this.all.push(tag);
  }
  pop(): void {
    this.inProgress = { op: 'pop', tag: this.fifo[0]! };
    if (!this.q.pop(this.chain)) throw new Error(`pop failed: ${this.q.broken?.message}`);
    const { tag, len } = serve(this.chain);
    if (tag !== this.fifo[0]) throw new Error(`popped tag ${tag}, expected ${this.fifo[0]}`);
    this.fifo.shift();
    this.popped.push(tag);
    this.heads.set(tag, this.chain.head);
    this.lens.set(tag, len);
    this.inProgress = null;
  }
  unpop(): void {
    const tag = this.popped[this.popped.length - 1]!;
    this.inProgress = { op: 'unpop', tag };
    this.q.unpop(1);
    this.popped.pop();
    this.fifo.unshift(tag);
    this.inProgress = null;
  }
  push(tag: number): void {
    this.q.pushUsed(this.heads.get(tag)!, this.lens.get(tag)!);
  }
  flush(): void {
    this.q.flushUsed();
  }
  read(): void {
    for (const u of this.drv.readUsed()) this.completed.push(usedTag(this.t, u));
  }
}

function splitScript(r: Run): void {
  r.start();
  r.add(1, 'two');
  r.add(2, 'ind');
  r.add(3, 'three');
  r.add(4, 'two');
  r.add(5, 'two');
  r.pop();
  r.pop();
  r.pop();
  r.push(2);
  r.push(1);
  r.flush();
  r.read();
  r.pop();
  r.pop();
  r.unpop();
  r.pop();
  r.push(5);
  r.push(3);
  r.flush();
  r.add(6, 'two');
  r.add(7, 'ind');
  r.pop();
  r.pop();
  r.push(7);
  r.read();
}

function packedScript(r: Run): void {
  r.start();
  r.add(1, 'two');
  r.add(2, 'ind');
  r.add(3, 'three');
  r.pop();
  r.pop();
  r.pop();
  r.push(3); // completion out of order; the batch stays open...
  r.push(1);
  r.add(4, 'ind');
  r.pop(); // ...across a pop
  r.unpop(); // ...and an unpop
  r.pop();
  r.flush();
  r.read();
  r.add(5, 'two'); // crosses the ring end
  r.add(6, 'three');
  r.pop();
  r.pop();
  r.push(2);
  r.push(6); // the used wrap counter flips inside this batch
  r.flush();
  r.read();
  r.push(4);
  r.push(5); // left unpublished
}

/**
 * A batch that wraps and ends on a slot still holding a non-first descriptor of a lap-1 list (so it
 * carries lap-1 AVAILABLE flags): the one place where the ring alone cannot tell a published batch
 * from an unpublished one when the old_used_* pair is caught half-written.
 */
function packedWrapScript(r: Run): void {
  r.start();
  r.add(1, 'two'); // positions 0-1
  r.add(2, 'ind'); // 2
  r.add(3, 'ind'); // 3
  r.pop();
  r.pop();
  r.pop();
  r.push(1);
  r.push(2);
  r.flush(); // used elements at 0 and 2; position 1 keeps list 1's second descriptor
  r.read();
  r.add(4, 'ind'); // lap 2, position 0
  r.pop();
  r.push(3);
  r.push(4);
  r.flush(); // from position 3 (lap 1) to position 1 (lap 2)
  r.read();
}

const packedSmallFlavor: Flavor = {
  ...packedFlavor,
  size: 4,
  driver: (mem) => new PackedDriver(mem, { size: 4, heapByteLen: 32768 }),
  region: (bytes) => new PackedInflight(bytes, 4),
};

interface Tally {
  runs: number;
  withResubmits: number;
  publishedUncommitted: number;
  ambiguous: number;
}

/**
 * After a crash: the driver collects what was published, a NEW queue over the same memory and region
 * bytes recovers; the resubmitted chains must be exactly those popped and not published, in pop order
 * (the chain a crash caught half-way through a pop / unpop may go either way), and afterwards every
 * buffer must reach the driver exactly once. `crashInRecovery` >= 0 first crashes the recovery itself
 * at that store and recovers again with yet another queue.
 */
function restartAndCheck(t: ExecutionContext, r: Run, tally: Tally, crashInRecovery = -1): boolean {
  r.read();
  const published = new Set(r.completed);
  const expected = r.popped.filter((x) => !published.has(x));
  let alt = expected;
  if (r.inProgress !== null) {
    const T = r.inProgress.tag;
    alt = r.inProgress.op === 'pop' && !published.has(T) ? [...expected, T] : expected.filter((x) => x !== T);
    tally.ambiguous++;
  }
  const probe = r.f.region(r.regionBytes);
  if (!probe.isFresh) {
    const ringUsed = r.f.layout === 'split' ? (r.drv as SplitDriver).usedIdx : -1;
    if (probe instanceof SplitInflight && probe.usedIdx !== ringUsed) tally.publishedUncommitted++;
    if (probe instanceof PackedInflight && (probe.usedIdx !== probe.oldUsedIdx || probe.usedWrap !== probe.oldUsedWrap)) {
      tally.publishedUncommitted++;
    }
  }
  if (crashInRecovery >= 0) {
    const q = r.f.queue(r.mem, r.drv);
    const res = crashAt(crashInRecovery, [r.regionBytes.buffer, r.mem.bytes.buffer], () => {
      q.attachInflight(r.f.region(r.regionBytes));
    });
    if (!res.crashed) return false; // past the last store of this recovery
  }
  const q2 = r.f.queue(r.mem, r.drv);
  const att = q2.attachInflight(r.f.region(r.regionBytes));
  t.is(q2.resubmitPending, att.resubmitted);
  // The device writes its next used element where the driver looks for it.
  if (q2 instanceof PackedQueue) {
    const d = r.drv as PackedDriver;
    t.deepEqual([q2.usedIdx, q2.usedWrapCounter], [d.usedPos, d.usedWrap], 'recovered used position');
  } else t.is(q2.usedIdx, (r.drv as SplitDriver).usedIdx, 'recovered used idx');
  if (att.resubmitted > 0) {
    tally.withResubmits++;
    t.true(q2.hasAvailable(), 'resubmits count as available');
  }
  const chain = new Chain();
  const resubmitted: number[] = [];
  for (let i = 0; i < att.resubmitted; i++) {
    t.true(q2.pop(chain), `resubmit ${i}: ${q2.broken?.message}`);
    const { tag, len } = serve(chain);
    t.false(published.has(tag), `tag ${tag} was completed before the crash and is resubmitted`);
    resubmitted.push(tag);
    q2.pushUsed(chain.head, len);
  }
  const sameAs = (a: number[]) => a.length === resubmitted.length && a.every((x, i) => x === resubmitted[i]);
  t.true(sameAs(expected) || sameAs(alt), `resubmitted [${resubmitted}], expected [${expected}] or [${alt}]`);
  t.is(new Set(resubmitted).size, resubmitted.length, 'no chain resubmitted twice');
  t.is(q2.resubmitPending, 0);
  while (q2.pop(chain)) {
    const { tag, len } = serve(chain);
    t.false(published.has(tag), `tag ${tag} was completed before the crash and is processed again`);
    q2.pushUsed(chain.head, len);
  }
  q2.flushUsed();
  t.is(q2.broken, null, q2.broken?.message);
  r.read();
  t.deepEqual([...r.completed].sort((a, b) => a - b), [...r.all].sort((a, b) => a - b), 'every buffer completed exactly once');
  t.is(r.drv.inFlightCount, 0);
  // The region is clean again: another restart finds nothing in flight, and no packed entry is lost.
  const q3 = r.f.queue(r.mem, r.drv);
  const final = r.f.region(r.regionBytes);
  t.is(q3.attachInflight(final).resubmitted, 0, 'nothing left in flight');
  t.false(q3.pop(chain));
  if (final instanceof PackedInflight) t.deepEqual([...final.freeList()].sort((a, b) => a - b), [...Array(r.f.size).keys()]);
  tally.runs++;
  return true;
}

function crashEverywhere(t: ExecutionContext, f: Flavor, script: (r: Run) => void): Tally {
  const tally: Tally = { runs: 0, withResubmits: 0, publishedUncommitted: 0, ambiguous: 0 };
  let k = 0;
  for (; k < 1000; k++) {
    const r = new Run(t, f);
    const res = crashAt(k, [r.regionBytes.buffer, r.mem.bytes.buffer], () => script(r));
    restartAndCheck(t, r, tally);
    if (!res.crashed) break; // k was past the last store: that run was the clean end of the script
  }
  t.true(k > 10 && k < 1000, `${k} crash points`);
  return tally;
}

test('split: a crash at every store of the script, then a new queue recovers: exactly-once completion', (t) => {
  const tally = crashEverywhere(t, splitFlavor, splitScript);
  t.true(tally.withResubmits > 10, `runs with resubmits: ${tally.withResubmits}`);
  t.true(tally.publishedUncommitted > 0, 'some crashes fell between publishing used.idx and clearing the batch');
});

test('packed: a crash at every store of the script, then a new queue recovers: exactly-once completion', (t) => {
  const tally = crashEverywhere(t, packedFlavor, packedScript);
  t.true(tally.withResubmits > 10, `runs with resubmits: ${tally.withResubmits}`);
  t.true(tally.publishedUncommitted > 0, 'some crashes fell between publishing a batch and committing it');
});

test('packed: a batch wrapping onto a stale lap-1 descriptor, crashed at every store', (t) => {
  const tally = crashEverywhere(t, packedSmallFlavor, packedWrapScript);
  t.true(tally.publishedUncommitted > 0);
});

test('a crash during recovery itself: recovering again gives the same result (split and packed)', (t) => {
  for (const [f, script] of [
    [splitFlavor, splitScript],
    [packedFlavor, packedScript],
    [packedSmallFlavor, packedWrapScript],
  ] as const) {
    let checked = 0;
    for (let k = 0; k < 1000; k++) {
      const first = new Run(t, f);
      const res = crashAt(k, [first.regionBytes.buffer, first.mem.bytes.buffer], () => script(first));
      for (let k2 = 0; k2 < 64; k2++) {
        const r = new Run(t, f);
        crashAt(k, [r.regionBytes.buffer, r.mem.bytes.buffer], () => script(r));
        const tally: Tally = { runs: 0, withResubmits: 0, publishedUncommitted: 0, ambiguous: 0 };
        if (!restartAndCheck(t, r, tally, k2)) break;
        checked++;
      }
      if (!res.crashed) break;
    }
    t.true(checked > 10, `${f.layout}: ${checked} double crashes`);
  }
});

// ---- sizes and fresh layout ----------------------------------------------------------------------

test('inflightQueueSize: 64-byte aligned, equal to DPDK and libvhost-user formulas', (t) => {
  const a64 = (n: number) => Math.ceil(n / 64) * 64;
  for (let n = 1; n <= 1024; n++) {
    t.is(inflightQueueSize('split', n), a64(16 * n + 16), `split ${n}`); // DPDK get_pervq_shm_size_split
    t.is(inflightQueueSize('split', n), a64(16 * n + 2), `split ${n} (libvhost-user)`);
    t.is(inflightQueueSize('packed', n), a64(32 * n + 8 + 12 + 9), `packed ${n}`); // DPDK get_pervq_shm_size_packed
  }
  t.is(inflightQueueSize('split', 256), 4160);
  t.is(inflightQueueSize('packed', 256), 8256);
  t.is(inflightQueueSize('split', 32768), 16 + 16 * 32768 + 48);
  t.is(inflightRegionSize('split', 2, 256), 8320);
  t.is(inflightQueueOffset('packed', 3, 256), 3 * 8256);
  expectCode(t, () => inflightQueueSize('split', 0), 'VQ_INFLIGHT_REGION');
  expectCode(t, () => inflightQueueSize('split', 32769), 'VQ_INFLIGHT_REGION');
  expectCode(t, () => inflightRegionSize('split', 0, 256), 'VQ_INFLIGHT_REGION');
});

test('split: a fresh region attached to a queue: the header at the documented offsets', (t) => {
  const mem = new FlatMemory(1 << 17);
  const drv = new SplitDriver(mem, { size: 8 });
  drv.startAt(1234);
  const q = new SplitQueue(drv.queueConfig({ lastAvailIdx: 1234 }), mem);
  const bytes = new Uint8Array(inflightQueueSize('split', 8));
  bytes.fill(0xee, 16); // the frontend need not zero it: init does
  const region = openInflightRegion('split', bytes, 8);
  t.true(region instanceof SplitInflight);
  t.true(region.isFresh);
  const res = q.attachInflight(region);
  t.deepEqual(res, { fresh: true, resubmitted: 0 });
  const v = le(bytes);
  t.is(v.getBigUint64(0, true), 0n, 'features');
  t.is(v.getUint16(8, true), 1, 'version');
  t.is(v.getUint16(10, true), 8, 'desc_num');
  t.is(v.getUint16(12, true), 0, 'last_batch_head');
  t.is(v.getUint16(14, true), 1234, 'used_idx = the used ring idx');
  t.true(bytes.subarray(16).every((b) => b === 0), 'desc[] zeroed');
  t.is(q.lastAvailIdx, 1234, 'a fresh region does not move the ring position');
  t.is(q.inflight as unknown, region);
  t.is(q.resubmitPending, 0);
  expectCode(t, () => q.attachInflight(openInflightRegion('packed', new Uint8Array(inflightQueueSize('packed', 8)), 8)), 'VQ_INFLIGHT_REGION');
});

test('packed: a fresh region attached to a queue: the header and free list at the documented offsets', (t) => {
  const mem = new FlatMemory(1 << 17);
  const drv = new PackedDriver(mem, { size: 5 });
  drv.startAt(3, false);
  const q = new PackedQueue(drv.queueConfig({ lastAvailIdx: 3, availWrapCounter: false }), mem);
  const bytes = new Uint8Array(inflightQueueSize('packed', 5));
  const res = q.attachInflight(new PackedInflight(bytes, 5));
  t.deepEqual(res, { fresh: true, resubmitted: 0 });
  const v = le(bytes);
  t.is(v.getBigUint64(0, true), 0n);
  t.is(v.getUint16(8, true), 1, 'version');
  t.is(v.getUint16(10, true), 5, 'desc_num');
  t.is(v.getUint16(12, true), 0, 'free_head');
  t.is(v.getUint16(14, true), 0, 'old_free_head');
  t.is(v.getUint16(16, true), 3, 'used_idx = the queue used position');
  t.is(v.getUint16(18, true), 3, 'old_used_idx');
  t.is(bytes[20], 0, 'used_wrap_counter');
  t.is(bytes[21], 0, 'old_used_wrap_counter');
  for (let j = 0; j < 5; j++) {
    t.is(v.getUint16(32 + 32 * j + 2, true), j + 1, `desc[${j}].next`);
    t.is(bytes[32 + 32 * j], 0, `desc[${j}].inflight`);
  }
});

// ---- bookkeeping ---------------------------------------------------------------------------------

test('split: pop marks in flight with increasing counters; push links the batch; flush publishes, then clears', (t) => {
  const mem = new FlatMemory(1 << 17);
  const drv = new SplitDriver(mem, { size: 8 });
  const q = new SplitQueue(drv.queueConfig(), mem);
  const bytes = new Uint8Array(inflightQueueSize('split', 8));
  const region = new SplitInflight(bytes, 8);
  q.attachInflight(region);
  const v = le(bytes);
  const inflight = (h: number) => bytes[16 + 16 * h];
  const next = (h: number) => v.getUint16(16 + 16 * h + 6, true);
  const counter = (h: number) => v.getBigUint64(16 + 16 * h + 8, true);
  const heads = [0, 1, 2].map((i) => drv.addChain(bufsFor(i, 'two').bufs));
  const c = new Chain();
  for (const h of heads) {
    t.true(q.pop(c));
    t.is(c.head, h);
  }
  t.deepEqual(heads.map(inflight), [1, 1, 1]);
  t.deepEqual(heads.map(counter), [0n, 1n, 2n]);
  const [a, b, cc] = heads as [number, number, number];
  q.pushUsed(cc, 4);
  t.is(next(cc), 0, 'desc[c].next = previous last_batch_head');
  t.is(v.getUint16(12, true), cc, 'last_batch_head');
  q.pushUsed(a, 4);
  t.is(next(a), cc);
  t.is(v.getUint16(12, true), a);
  t.deepEqual(heads.map(inflight), [1, 1, 1], 'still in flight before the flush');
  t.is(v.getUint16(14, true), 0, 'used_idx unchanged before the flush');

  // Watch the order of the flush's stores: used.idx in guest memory first, then the region.
  const order: string[] = [];
  const orig = Atomics.store;
  Atomics.store = ((ta: Uint8Array, i: number, val: number) => {
    if (ta.buffer === mem.bytes.buffer) order.push('used.idx');
    else if (ta.buffer === bytes.buffer) order.push(ta.BYTES_PER_ELEMENT === 1 ? `clear ${(i - 16) / 16}` : `used_idx ${val}`);
    return orig(ta, i, val);
  }) as typeof Atomics.store;
  try {
    q.flushUsed();
  } finally {
    Atomics.store = orig;
  }
  t.deepEqual(order, ['used.idx', `clear ${cc}`, `clear ${a}`, 'used_idx 2']);
  t.deepEqual(heads.map(inflight), [0, 1, 0]);
  t.is(region.usedIdx, 2);
  t.deepEqual(region.inflightHeads(), [b]);

  // unpop: the given-back chain is no longer in flight, and comes back with a new counter.
  const h4 = drv.addChain(bufsFor(4, 'two').bufs);
  t.true(q.pop(c));
  t.is(inflight(h4), 1);
  t.is(counter(h4), 3n);
  q.unpop(1);
  t.is(inflight(h4), 0);
  t.true(q.pop(c));
  t.is(c.head, h4);
  t.is(counter(h4), 4n);
});

test('packed: pop copies the descriptors into free-list entries; push frees them; flush commits old_*', (t) => {
  const mem = new FlatMemory(1 << 17);
  const drv = new PackedDriver(mem, { size: 8 });
  const q = new PackedQueue(drv.queueConfig(), mem);
  const bytes = new Uint8Array(inflightQueueSize('packed', 8));
  const region = new PackedInflight(bytes, 8);
  q.attachInflight(region);
  const idA = drv.addChain(bufsFor(1, 'three').bufs); // ring 0..2
  const idB = drv.addChain(bufsFor(2, 'two').bufs); // ring 3..4
  const ringA = [0, 1, 2].map((p) => drv.readDesc(p));
  const c = new Chain();
  t.true(q.pop(c));
  t.is(c.head, idA);
  const hA = region.entry(0);
  t.is(hA.inflight, 1);
  t.is(hA.num, 3);
  t.is(hA.last, 2);
  t.is(hA.counter, 0n);
  for (let j = 0; j < 3; j++) {
    const e = region.entry(j);
    t.is(e.addr, BigInt(ringA[j]!.addr), `entry ${j} addr`);
    t.is(e.len, ringA[j]!.len);
    t.is(e.flags, ringA[j]!.flags);
    t.is(e.id, ringA[j]!.id);
  }
  t.is(region.freeHeadField, 3);
  t.is(region.oldFreeHead, 3);
  t.true(q.pop(c));
  t.is(c.head, idB);
  t.deepEqual([region.entry(3).num, region.entry(3).last, region.entry(3).counter], [2, 4, 1n]);
  t.is(region.oldFreeHead, 5);

  q.pushUsed(idB, 12); // completes first: entries 3, 4 go back in front of free_head
  t.is(region.freeHeadField, 3);
  t.is(region.entry(4).next, 5);
  t.is(region.usedIdx, 2, 'used_idx advanced by B (2 descriptors)');
  t.is(region.oldUsedIdx, 0);
  t.is(region.oldFreeHead, 5, 'the roll-back point is untouched until the batch is published');
  t.is(region.entry(3).inflight, 1);
  // A pop while the batch is open takes from the roll-back list and keeps the open batch linked to it.
  const idC = drv.addChain(bufsFor(3, 'ind').bufs, { indirect: true });
  t.true(q.pop(c));
  t.is(c.head, idC);
  t.is(region.entry(5).num, 1);
  t.is(region.oldFreeHead, 6);
  t.is(region.freeHeadField, 3);
  t.deepEqual(region.freeList(), [3, 4, 6, 7], 'free list = open batch, then the roll-back list');
  q.flushUsed();
  t.is(region.entry(3).inflight, 0);
  t.is(region.oldUsedIdx, 2);
  t.is(region.oldFreeHead, 3);
  t.true(region.oldUsedWrap);
  t.deepEqual(region.inflightEntries(), [0, 5]);
});

// ---- resubmission through the queue -----------------------------------------------------------------

test('split: attach over a region in use resubmits in counter order before the ring, last_avail = used + n', (t) => {
  const mem = new FlatMemory(1 << 17);
  const drv = new SplitDriver(mem, { size: 16 });
  const bytes = new Uint8Array(inflightQueueSize('split', 16));
  const q1 = new SplitQueue(drv.queueConfig(), mem);
  q1.attachInflight(new SplitInflight(bytes, 16));
  const c = new Chain();
  for (let i = 0; i < 4; i++) drv.addChain(bufsFor(i, 'two').bufs);
  const order: number[] = [];
  for (let i = 0; i < 4; i++) {
    t.true(q1.pop(c));
    order.push(c.head);
  }
  q1.pushUsed(order[1]!, 0);
  q1.flushUsed();
  // q1 "crashes". A new queue: the new avail entry is popped only after the three resubmits.
  const late = drv.addChain(bufsFor(9, 'two').bufs);
  const q2 = new SplitQueue(drv.queueConfig({ lastAvailIdx: 1 }), mem);
  const res = q2.attachInflight(new SplitInflight(bytes, 16));
  t.deepEqual(res, { fresh: false, resubmitted: 3 });
  t.is(q2.lastAvailIdx, 1 + 3);
  t.is(q2.usedIdx, 1);
  const got: number[] = [];
  while (q2.pop(c)) got.push(c.head);
  t.deepEqual(got, [order[0], order[2], order[3], late]);
  // unpop gives a resubmitted chain back to the resubmit list, a ring chain back to the ring.
  q2.unpop(2);
  t.is(q2.resubmitPending, 1);
  t.is(q2.lastAvailIdx, 4);
  t.true(q2.pop(c));
  t.is(c.head, order[3]!);
  t.true(q2.pop(c));
  t.is(c.head, late);
  t.is(q2.broken, null);
});

test('split: drain() processes resubmitted chains (hasAvailable is true with an empty ring)', (t) => {
  const mem = new FlatMemory(1 << 17);
  const drv = new SplitDriver(mem, { size: 8 });
  const bytes = new Uint8Array(inflightQueueSize('split', 8));
  const q1 = new SplitQueue(drv.queueConfig(), mem);
  q1.attachInflight(new SplitInflight(bytes, 8));
  const c = new Chain();
  drv.addChain(bufsFor(7, 'two').bufs);
  t.true(q1.pop(c));
  const q2 = new SplitQueue(drv.queueConfig(), mem);
  q2.attachInflight(new SplitInflight(bytes, 8));
  t.is(q2.availableCount(), 0, 'nothing new in the ring');
  t.true(q2.hasAvailable());
  const r = q2.drain(createDrainPlan((ch) => serve(ch).len, 16));
  t.is(r.processed, 1);
  t.deepEqual(drv.readUsed().map((u) => usedTag(t, u)), [7]);
});

test('packed: resubmitted lists come from the saved copies even when the ring slots were overwritten', (t) => {
  const mem = new FlatMemory(1 << 17);
  const drv = new PackedDriver(mem, { size: 8 });
  const bytes = new Uint8Array(inflightQueueSize('packed', 8));
  const q1 = new PackedQueue(drv.queueConfig(), mem);
  q1.attachInflight(new PackedInflight(bytes, 8));
  const c = new Chain();
  drv.addChain(bufsFor(1, 'three').bufs); // ring 0..2
  drv.addChain(bufsFor(2, 'two').bufs); // ring 3..4
  t.true(q1.pop(c));
  const l1 = serve(c);
  t.true(q1.pop(c));
  const l2 = serve(c);
  q1.pushUsed(c.head, l2.len); // list 2 completes first: its used element overwrites ring slot 0 (list 1's head)
  q1.flushUsed();
  t.deepEqual(drv.readUsed().map((u) => usedTag(t, u)), [2]);
  t.is(drv.readDesc(0).len, 12, 'ring slot 0 now holds a used element');
  const q2 = new PackedQueue(drv.queueConfig(), mem);
  const res = q2.attachInflight(new PackedInflight(bytes, 8));
  t.deepEqual(res, { fresh: false, resubmitted: 1 });
  t.is(q2.usedIdx, 2);
  t.is(q2.lastAvailIdx, 5, 'used position + 3 descriptors in flight');
  t.true(q2.pop(c));
  const again = serve(c);
  t.is(again.tag, 1);
  t.is(again.len, l1.len);
  t.is(c.descCount, 3);
  q2.pushUsed(c.head, again.len);
  q2.flushUsed();
  t.deepEqual(drv.readUsed().map((u) => usedTag(t, u)), [1]);
  t.false(q2.pop(c));
  t.is(q2.broken, null);
});

test('resubmitted chains go through the walker: a bad saved address or a looping descriptor breaks the queue', (t) => {
  // Packed: a saved descriptor pointing outside guest memory (the region is consistent otherwise).
  {
    const mem = new FlatMemory(1 << 17);
    const drv = new PackedDriver(mem, { size: 4 });
    const bytes = new Uint8Array(inflightQueueSize('packed', 4));
    const q1 = new PackedQueue(drv.queueConfig(), mem);
    q1.attachInflight(new PackedInflight(bytes, 4));
    drv.addChain(bufsFor(1, 'two').bufs);
    const c = new Chain();
    t.true(q1.pop(c));
    le(bytes).setBigUint64(32 + 24, 0x7000_0000n, true); // entry 0 addr: unmapped
    const q2 = new PackedQueue(drv.queueConfig(), mem);
    t.is(q2.attachInflight(new PackedInflight(bytes, 4)).resubmitted, 1);
    t.false(q2.pop(c));
    t.is(q2.broken?.code, 'VQ_UNMAPPED');
  }
  // Split: the guest rewrote the in-flight chain's descriptors into a loop.
  {
    const mem = new FlatMemory(1 << 17);
    const drv = new SplitDriver(mem, { size: 4 });
    const bytes = new Uint8Array(inflightQueueSize('split', 4));
    const q1 = new SplitQueue(drv.queueConfig(), mem);
    q1.attachInflight(new SplitInflight(bytes, 4));
    const h = drv.addChain(bufsFor(1, 'two').bufs);
    const c = new Chain();
    t.true(q1.pop(c));
    drv.writeDesc(h, { addr: drv.heapAddr, len: 8, flags: VIRTQ_DESC_F_NEXT, next: h });
    const q2 = new SplitQueue(drv.queueConfig(), mem);
    t.is(q2.attachInflight(new SplitInflight(bytes, 4)).resubmitted, 1);
    t.false(q2.pop(c));
    t.is(q2.broken?.code, 'VQ_LOOP');
  }
});

// ---- hostile regions ------------------------------------------------------------------------------

/** A split region left by a queue with `inflight` chains popped and `completed` published. */
function splitRegionInUse(size = 8): { bytes: Uint8Array; v: DataView; drv: SplitDriver; mem: FlatMemory; heads: number[] } {
  const mem = new FlatMemory(1 << 17);
  const drv = new SplitDriver(mem, { size });
  const bytes = new Uint8Array(inflightQueueSize('split', size));
  const q = new SplitQueue(drv.queueConfig(), mem);
  q.attachInflight(new SplitInflight(bytes, size));
  const c = new Chain();
  const heads: number[] = [];
  for (let i = 0; i < 3; i++) {
    drv.addChain(bufsFor(i, 'two').bufs);
    q.pop(c);
    heads.push(c.head);
  }
  return { bytes, v: le(bytes), drv, mem, heads };
}

function splitAttachFails(t: ExecutionContext, s: ReturnType<typeof splitRegionInUse>, code: VirtqErrorCode, what: string): void {
  const q = new SplitQueue(s.drv.queueConfig(), s.mem);
  const before = s.bytes.slice();
  expectCode(t, () => q.attachInflight(new SplitInflight(s.bytes, 8)), code, what);
  t.deepEqual(s.bytes, before, `${what}: the region is not written`);
  t.is(q.inflight, null, `${what}: nothing attached`);
  // The queue still works without a region.
  const c = new Chain();
  t.true(q.pop(c), what);
}

test('split hostile regions: clear errors, nothing written, the queue unharmed', (t) => {
  const cases: [string, (s: ReturnType<typeof splitRegionInUse>) => void, VirtqErrorCode][] = [
    ['desc_num differs', (s) => s.v.setUint16(10, 7, true), 'VQ_INFLIGHT_REGION'],
    ['version 2', (s) => s.v.setUint16(8, 2, true), 'VQ_INFLIGHT_REGION'],
    ['unknown features', (s) => s.v.setBigUint64(0, 1n, true), 'VQ_INFLIGHT_REGION'],
    ['last_batch_head out of range', (s) => s.v.setUint16(12, 8, true), 'VQ_INFLIGHT_CORRUPT'],
    ['inflight byte 2', (s) => (s.bytes[16 + 16 * 5] = 2), 'VQ_INFLIGHT_CORRUPT'],
    ['batch larger than the ring', (s) => s.v.setUint16(14, 0xfff0, true), 'VQ_INFLIGHT_CORRUPT'],
    [
      'loop in the batch list',
      (s) => {
        s.v.setUint16(14, 0xfffd, true); // 3 published entries to clear
        s.v.setUint16(12, 1, true);
        s.v.setUint16(16 + 16 * 1 + 6, 2, true);
        s.v.setUint16(16 + 16 * 2 + 6, 1, true);
      },
      'VQ_INFLIGHT_CORRUPT',
    ],
    [
      'batch list leaves the queue',
      (s) => {
        s.v.setUint16(14, 0xfffe, true);
        s.v.setUint16(12, 1, true);
        s.v.setUint16(16 + 16 * 1 + 6, 999, true);
      },
      'VQ_INFLIGHT_CORRUPT',
    ],
    ['more in flight than the driver made available', (s) => (s.bytes[16 + 16 * 7] = 1), 'VQ_INFLIGHT_CORRUPT'],
  ];
  for (const [what, mutate, code] of cases) {
    const s = splitRegionInUse();
    mutate(s);
    // Make one more chain available so the "queue still works" pop has something.
    s.drv.addChain(bufsFor(50, 'two').bufs);
    if (what === 'more in flight than the driver made available') {
      // 4 available past used.idx; mark 5 in flight.
      s.bytes[16 + 16 * 6] = 1;
      s.bytes[16 + 16 * 5] = 1;
    }
    splitAttachFails(t, s, code, what);
  }
  // Layout errors on construction.
  expectCode(t, () => new SplitInflight(new Uint8Array(64), 8), 'VQ_INFLIGHT_REGION', 'too short');
  expectCode(t, () => new SplitInflight(new Uint8Array(1024).subarray(4), 8), 'VQ_INFLIGHT_REGION', 'misaligned');
  const mem = new FlatMemory(1 << 17);
  const drv = new SplitDriver(mem, { size: 8 });
  const q = new SplitQueue(drv.queueConfig(), mem);
  expectCode(t, () => q.attachInflight(new SplitInflight(new Uint8Array(inflightQueueSize('split', 16)), 16)), 'VQ_INFLIGHT_REGION', 'other size');
});

function packedRegionInUse(): { bytes: Uint8Array; v: DataView; drv: PackedDriver; mem: FlatMemory } {
  const mem = new FlatMemory(1 << 17);
  const drv = new PackedDriver(mem, { size: 8 });
  const bytes = new Uint8Array(inflightQueueSize('packed', 8));
  const q = new PackedQueue(drv.queueConfig(), mem);
  q.attachInflight(new PackedInflight(bytes, 8));
  const c = new Chain();
  drv.addChain(bufsFor(1, 'two').bufs); // entries 0, 1
  drv.addChain(bufsFor(2, 'three').bufs); // entries 2, 3, 4
  q.pop(c);
  q.pop(c);
  return { bytes, v: le(bytes), drv, mem };
}

test('packed hostile regions: clear errors, nothing written, the queue unharmed', (t) => {
  const E = (i: number) => 32 + 32 * i;
  const cases: [string, (s: ReturnType<typeof packedRegionInUse>) => void, VirtqErrorCode][] = [
    ['desc_num differs', (s) => s.v.setUint16(10, 9, true), 'VQ_INFLIGHT_REGION'],
    ['version 0x101', (s) => s.v.setUint16(8, 0x101, true), 'VQ_INFLIGHT_REGION'],
    ['free_head beyond desc_num', (s) => s.v.setUint16(12, 9, true), 'VQ_INFLIGHT_CORRUPT'],
    ['old_free_head beyond desc_num', (s) => s.v.setUint16(14, 100, true), 'VQ_INFLIGHT_CORRUPT'],
    ['used_idx out of the ring', (s) => s.v.setUint16(16, 8, true), 'VQ_INFLIGHT_CORRUPT'],
    ['wrap counter 2', (s) => (s.bytes[21] = 2), 'VQ_INFLIGHT_CORRUPT'],
    ['inflight byte 3', (s) => (s.bytes[E(6)] = 3), 'VQ_INFLIGHT_CORRUPT'],
    ['loop in the free list', (s) => s.v.setUint16(E(7) + 2, 5, true), 'VQ_INFLIGHT_CORRUPT'],
    ['free list next beyond desc_num', (s) => s.v.setUint16(E(6) + 2, 40, true), 'VQ_INFLIGHT_CORRUPT'],
    ['num 0', (s) => s.v.setUint16(E(0) + 6, 0, true), 'VQ_INFLIGHT_CORRUPT'],
    ['num larger than the ring', (s) => s.v.setUint16(E(2) + 6, 9, true), 'VQ_INFLIGHT_CORRUPT'],
    ['list runs into the free list', (s) => s.v.setUint16(E(2) + 6, 4, true), 'VQ_INFLIGHT_CORRUPT'],
    ['last does not match', (s) => s.v.setUint16(E(2) + 4, 3, true), 'VQ_INFLIGHT_CORRUPT'],
    ['next chain loops inside a list', (s) => s.v.setUint16(E(2) + 2, 2, true), 'VQ_INFLIGHT_CORRUPT'],
    [
      'two lists share an entry',
      (s) => {
        s.v.setUint16(E(0) + 2, 3, true); // list 0 -> 3 (entry 3 belongs to list 2)
        s.v.setUint16(E(0) + 4, 3, true);
      },
      'VQ_INFLIGHT_CORRUPT',
    ],
    ['saved NEXT flags disagree with num', (s) => s.v.setUint16(E(1) + 18, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, true), 'VQ_INFLIGHT_CORRUPT'],
    ['duplicate buffer ids', (s) => s.v.setUint16(E(4) + 16, s.v.getUint16(E(1) + 16, true), true), 'VQ_INFLIGHT_CORRUPT'],
  ];
  for (const [what, mutate, code] of cases) {
    const s = packedRegionInUse();
    mutate(s);
    const q = new PackedQueue(s.drv.queueConfig(), s.mem);
    const before = s.bytes.slice();
    expectCode(t, () => q.attachInflight(new PackedInflight(s.bytes, 8)), code, what);
    t.deepEqual(s.bytes, before, `${what}: the region is not written`);
    t.is(q.inflight, null, what);
    t.is(q.broken, null, what);
  }
  expectCode(t, () => new PackedInflight(new Uint8Array(100), 8), 'VQ_INFLIGHT_REGION', 'too short');
  const s = packedRegionInUse();
  const sq = new SplitQueue(new SplitDriver(new FlatMemory(1 << 16), { size: 8 }).queueConfig(), new FlatMemory(1 << 16));
  t.truthy(sq); // (split queue over its own memory)
  expectCode(t, () => sq.attachInflight(new PackedInflight(s.bytes, 8)), 'VQ_INFLIGHT_REGION', 'packed region on a split queue');
});

test('packed: an entry leaked by a crash half-way through an unpop is returned to the free list', (t) => {
  const mem = new FlatMemory(1 << 17);
  const drv = new PackedDriver(mem, { size: 8 });
  const bytes = new Uint8Array(inflightQueueSize('packed', 8));
  const q = new PackedQueue(drv.queueConfig(), mem);
  q.attachInflight(new PackedInflight(bytes, 8));
  const c = new Chain();
  drv.addChain(bufsFor(1, 'two').bufs);
  t.true(q.pop(c));
  // Crash right after the unpop cleared the head (its first store): entries 0, 1 are neither free nor in flight.
  const res = crashAt(1, [bytes.buffer], () => q.unpop(1));
  t.true(res.crashed);
  const region = new PackedInflight(bytes, 8);
  const q2 = new PackedQueue(drv.queueConfig(), mem);
  t.is(q2.attachInflight(region).resubmitted, 0);
  t.deepEqual([...region.freeList()].sort(), [0, 1, 2, 3, 4, 5, 6, 7]);
  t.is(q2.lastAvailIdx, 0, 'the list is read from the ring again');
  t.true(q2.pop(c));
  t.is(serve(c).tag, 1);
});

// ---- used ring log address ------------------------------------------------------------------------

test('usedLogAddr: split used ring writes are logged there; buffers at their own address', (t) => {
  const mem = new FlatMemory(1 << 17);
  const drv = new SplitDriver(mem, { size: 8, eventIdx: true });
  const LOG = 0x4000_0000;
  const q = new SplitQueue(drv.queueConfig({ usedLogAddr: LOG }), mem);
  t.is(q.usedLogGpa, LOG);
  const writes: [number, number][] = [];
  mem.onWrite = (gpa, n) => void writes.push([gpa, n]);
  drv.addChain(bufsFor(1, 'two').bufs);
  const c = new Chain();
  t.true(q.pop(c));
  const out = new Uint8Array(4);
  writer.reset(c);
  writer.write(out);
  const bufAddr = c.segAddr[1]!;
  q.pushUsed(c.head, 4);
  q.flushUsed();
  q.enableNotification();
  t.deepEqual(writes, [
    [bufAddr, 4],
    [LOG + 4, 8],
    [LOG + 2, 2],
    [LOG + 4 + 8 * 8, 2],
  ]);
  t.false(writes.some(([g]) => g >= drv.usedAddr && g < drv.usedAddr + 0x100), 'nothing at the ring gpa');
  const q2 = new SplitQueue(drv.queueConfig(), mem);
  t.is(q2.usedLogGpa, drv.usedAddr, 'default: the ring address');
  t.throws(() => new SplitQueue(drv.queueConfig({ usedLogAddr: -1 }), mem), { instanceOf: VirtqError });
});

test('usedLogAddr: packed device-area writes are logged there, used elements at the descriptor', (t) => {
  const mem = new FlatMemory(1 << 17);
  const drv = new PackedDriver(mem, { size: 8 });
  const LOG = 0x5000_0000;
  const q = new PackedQueue(drv.queueConfig({ usedLogAddr: LOG }), mem);
  const writes: [number, number][] = [];
  mem.onWrite = (gpa, n) => void writes.push([gpa, n]);
  q.disableNotification();
  drv.addChain(bufsFor(1, 'two').bufs);
  const c = new Chain();
  t.true(q.pop(c));
  q.pushUsed(c.head, 0);
  q.flushUsed();
  q.enableNotification();
  t.deepEqual(writes, [
    [LOG + 2, 2],
    [drv.descAddr + 8, 8],
    [LOG + 2, 2],
  ]);
});

test('no region: the queues report no inflight state and behave as before', (t) => {
  const mem = new FlatMemory(1 << 17);
  const drv = new SplitDriver(mem, { size: 8 });
  const q = new SplitQueue(drv.queueConfig(), mem);
  t.is(q.inflight, null);
  t.is(q.resubmitPending, 0);
  drv.addChain(bufsFor(3, 'two').bufs);
  const r = q.drain(createDrainPlan((ch) => serve(ch).len, 8));
  t.is(r.processed, 1);
  t.deepEqual(drv.readUsed().map((u) => usedTag(t, u)), [3]);
  const pm = new FlatMemory(1 << 17);
  const pd = new PackedDriver(pm, { size: 8 });
  const pq = new PackedQueue(pd.queueConfig(), pm);
  t.is(pq.inflight, null);
  t.is(pq.resubmitPending, 0);
  // Packed ring flag constants the recovery relies on (2.8.1): available in lap 1 = AVAIL set, USED clear.
  t.is(PackedDriver.availFlags(true), VIRTQ_DESC_F_AVAIL);
  t.is(PackedDriver.availFlags(false), VIRTQ_DESC_F_USED);
});
