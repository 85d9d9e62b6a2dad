import test from 'ava';
import { performance } from 'node:perf_hooks';
import { IotlbCache, IotlbFault, IotlbMemory, createIotlbLookup, iotlbPermBits, iotlbPermFromBits } from '../../virtqueue/iotlb.ts';
import type { IotlbEntry, IotlbPerm } from '../../virtqueue/iotlb.ts';
import { RegionMemory, createSpan, readBytes, writeBytes } from '../../virtqueue/memory.ts';
import { VirtqError } from '../../virtqueue/errors.ts';
import { DirtyLog, LOG_PAGE } from '../../virtqueue/dirty-log.ts';
import { Chain, ChainWriter } from '../../virtqueue/chain.ts';
import { SplitDriver } from '../../virtqueue/split-driver.ts';
import { SplitQueue } from '../../virtqueue/split.ts';
import { filledIotlb, prng, timeLookups } from './virtqueue-fixtures.ts';

const PAGE = 0x1000;

function e(iova: number, size: number, uaddr: number, perm: IotlbPerm): IotlbEntry {
  return { iova, size, uaddr, perm };
}

/** Entries sorted, non-empty, non-overlapping. */
function assertInvariants(c: IotlbCache): boolean {
  const es = c.entries();
  for (let i = 0; i < es.length; i++) {
    if (es[i]!.size <= 0) return false;
    if (i > 0 && es[i - 1]!.iova + es[i - 1]!.size > es[i]!.iova) return false;
  }
  return true;
}

// ---- IotlbCache: update / lookup ----------------------------------------------------------------

test('lookup: hit gives uaddr and the bytes left in the entry; miss gives the iova and the access', (t) => {
  const c = new IotlbCache();
  c.update(0x10000, 0x2000, 0x7f00_0000_0000, 'rw');
  const r = createIotlbLookup();
  t.is(c.lookup(0x10010, 16, false, r), r);
  t.like(r, { kind: 'hit', iova: 0x10010, uaddr: 0x7f00_0000_0010, byteLen: 16, perm: 'rw' });
  c.lookup(0x11ff0, 64, true, r);
  t.like(r, { kind: 'hit', uaddr: 0x7f00_0000_1ff0, byteLen: 16 }, 'clamped at the entry end');
  c.lookup(0x12000, 8, true, r);
  t.like(r, { kind: 'miss', iova: 0x12000, perm: 'wo', byteLen: 0 });
  c.lookup(0xfff8, 8, false, r);
  t.like(r, { kind: 'miss', iova: 0xfff8, perm: 'ro' }, 'below the first entry');
  t.like(c.stats(), { lookups: 4, hits: 2, misses: 2, denied: 0, entries: 1 });
});

test('UPDATE over existing entries replaces exactly the overlapped parts (newest wins, no duplicates)', (t) => {
  const c = new IotlbCache();
  c.update(0x1000, 0x3000, 0xa000_0000, 'rw');
  c.update(0x2000, 0x800, 0xb000_0000, 'ro');
  t.deepEqual(c.entries(), [
    e(0x1000, 0x1000, 0xa000_0000, 'rw'),
    e(0x2000, 0x800, 0xb000_0000, 'ro'),
    e(0x2800, 0x1800, 0xa000_1800, 'rw'),
  ]);
  // The case DPDK dropped as "identical": same iova, different target. The new mapping must win.
  c.update(0x1000, 0x1000, 0xc000_0000, 'rw');
  t.is(c.lookup(0x1004, 4, false).uaddr, 0xc000_0004);
  // Straddling two entries and a gap.
  c.update(0x2400, 0x2000, 0xd000_0000, 'wo');
  t.deepEqual(c.entries(), [
    e(0x1000, 0x1000, 0xc000_0000, 'rw'),
    e(0x2000, 0x400, 0xb000_0000, 'ro'),
    e(0x2400, 0x2000, 0xd000_0000, 'wo'),
  ]);
  t.true(assertInvariants(c));
});

test('repeating or re-sending an UPDATE never grows the cache; contiguous same-permission UPDATEs merge', (t) => {
  const c = new IotlbCache();
  for (let i = 0; i < 1000; i++) c.update(0x40000, PAGE, 0x9000_0000, 'rw');
  t.is(c.size, 1);
  // Page by page, in both directions: one entry.
  for (let p = 1; p < 8; p++) c.update(0x40000 + p * PAGE, PAGE, 0x9000_0000 + p * PAGE, 'rw');
  for (let p = 1; p < 8; p++) c.update(0x40000 - p * PAGE, PAGE, 0x9000_0000 - p * PAGE, 'rw');
  t.deepEqual(c.entries(), [e(0x40000 - 7 * PAGE, 15 * PAGE, 0x9000_0000 - 7 * PAGE, 'rw')]);
  // Filling a hole merges both sides.
  c.invalidate(0x41000, PAGE);
  t.is(c.size, 2);
  c.update(0x41000, PAGE, 0x9000_1000, 'rw');
  t.is(c.size, 1);
  // Not merged: other permissions, or not contiguous in user addresses.
  c.update(0x48000, PAGE, 0x9000_8000, 'ro');
  c.update(0x49000, PAGE, 0x7000_0000, 'ro');
  t.is(c.size, 3);
  t.true(c.stats().merges > 0);
});

test('a hit runs over adjacent entries that are contiguous in user address and allow the access', (t) => {
  const c = new IotlbCache();
  c.update(0x0, PAGE, 0x5000_0000, 'rw');
  c.update(PAGE, PAGE, 0x5000_1000, 'ro'); // contiguous, other perm: a separate entry
  c.update(2 * PAGE, PAGE, 0x6000_0000, 'ro'); // not contiguous
  t.is(c.size, 3);
  const r = c.lookup(0x800, 3 * PAGE, false);
  t.like(r, { kind: 'hit', uaddr: 0x5000_0800, byteLen: 0x1800 }, 'read: both contiguous entries, stops at the jump');
  c.lookup(0x800, 3 * PAGE, true, r);
  t.like(r, { kind: 'hit', byteLen: 0x800 }, 'write: stops before the read-only entry');
  c.lookup(PAGE, 4, true, r);
  t.like(r, { kind: 'denied', iova: PAGE, perm: 'ro' });
});

test('permissions: a write to a read-only mapping and a read of a write-only one are denied, not misses', (t) => {
  const c = new IotlbCache();
  c.update(0x1000, PAGE, 0x1_0000_0000, 'ro');
  c.update(0x3000, PAGE, 0x2_0000_0000, 'wo');
  t.like(c.lookup(0x1000, 4, false), { kind: 'hit' });
  t.like(c.lookup(0x1010, 4, true), { kind: 'denied', iova: 0x1010, perm: 'ro' });
  t.like(c.lookup(0x3000, 4, true), { kind: 'hit', perm: 'wo' });
  t.like(c.lookup(0x3020, 4, false), { kind: 'denied', iova: 0x3020, perm: 'wo' });
  t.like(c.stats(), { hits: 2, denied: 2, misses: 0 });
  t.is(iotlbPermBits('ro'), 1);
  t.is(iotlbPermBits('wo'), 2);
  t.is(iotlbPermBits('rw'), 3);
  t.is(iotlbPermFromBits(3), 'rw');
  t.is(iotlbPermFromBits(0), null);
});

// ---- INVALIDATE ---------------------------------------------------------------------------------

test('INVALIDATE splits an entry around the range, trims the ones it overlaps, removes the ones it covers', (t) => {
  const c = new IotlbCache();
  c.update(0x10000, 0x4000, 0xa0000, 'rw');
  t.is(c.invalidate(0x11000, 0x100), 1);
  t.deepEqual(c.entries(), [e(0x10000, 0x1000, 0xa0000, 'rw'), e(0x11100, 0x2f00, 0xa1100, 'rw')]);
  t.like(c.lookup(0x110ff, 1, false), { kind: 'miss', iova: 0x110ff });
  t.like(c.lookup(0x11100, 1, false), { kind: 'hit', uaddr: 0xa1100 });

  c.update(0x20000, 0x1000, 0xb0000, 'ro');
  c.update(0x22000, 0x1000, 0xc0000, 'ro');
  // Covers the tail of the second entry, all of the third, the head of the fourth.
  t.is(c.invalidate(0x12000, 0x10800), 3);
  t.deepEqual(c.entries(), [
    e(0x10000, 0x1000, 0xa0000, 'rw'),
    e(0x11100, 0xf00, 0xa1100, 'rw'),
    e(0x22800, 0x800, 0xc0800, 'ro'),
  ]);
  // Exact edges: an entry starting where the range ends (or ending where it starts) is untouched.
  t.is(c.invalidate(0x12000, 0x10800), 0);
  t.is(c.invalidate(0x21000, 0x1800), 0);
  t.is(c.size, 3);
  // A range reaching past 2^53 is clamped: everything from 0x11000 up goes.
  t.is(c.invalidate(0x11000, Number.MAX_SAFE_INTEGER), 2);
  t.deepEqual(c.entries(), [e(0x10000, 0x1000, 0xa0000, 'rw')]);
  t.true(assertInvariants(c));
});

test('applyMessage: decoded IOTLB messages (bigints), perm 0 unmaps, sizes past 2^53 refused or clamped', (t) => {
  const c = new IotlbCache();
  t.is(c.applyMessage({ type: 2, iova: 0x1000n, size: 0x2000n, userAddr: 0x7f00_0000_0000n, perm: 3 }), null);
  t.deepEqual(c.entries(), [e(0x1000, 0x2000, 0x7f00_0000_0000, 'rw')]);
  t.is(c.applyMessage({ type: 2, iova: 0x1000n, size: 0x1000n, userAddr: 0n, perm: 0 }), null);
  t.deepEqual(c.entries(), [e(0x2000, 0x1000, 0x7f00_0000_1000, 'rw')], 'no access = unmapped');
  t.is(c.applyMessage({ type: 2, iova: 0x9000n, size: 0n, userAddr: 0n, perm: 1 }), null);
  t.is(c.size, 1, 'zero-size update: nothing');
  t.regex(c.applyMessage({ type: 2, iova: 1n << 53n, size: 0x1000n, userAddr: 0n, perm: 1 }) ?? '', /2\^53/);
  t.regex(c.applyMessage({ type: 2, iova: 0n, size: 0x1000n, userAddr: (1n << 53n) - 1n, perm: 1 }) ?? '', /2\^53/);
  t.regex(c.applyMessage({ type: 2, iova: 0n, size: 0x1000n, userAddr: 0n, perm: 4 }) ?? '', /permissions/);
  t.regex(c.applyMessage({ type: 1, iova: 0n, size: 0n, userAddr: 0n, perm: 1 }) ?? '', /type 1/);
  // Whole-space invalidation (iova + size up to 2^64 - 1): clamped, everything goes.
  t.is(c.applyMessage({ type: 3, iova: 0n, size: (1n << 64n) - 1n, userAddr: 0n, perm: 0 }), null);
  t.is(c.size, 0);
  t.is(c.applyMessage({ type: 3, iova: 1n << 60n, size: 1n, userAddr: 0n, perm: 0 }), null, 'above 2^53: nothing cached there');
  t.throws(() => c.update(0, 0, 0, 'rw'), { instanceOf: RangeError });
  t.throws(() => c.update(0, 1, 0, 0), { instanceOf: RangeError });
});

// ---- against a page-level model -----------------------------------------------------------------

test('random UPDATE / INVALIDATE sequences match a page-level model, with exactly one entry per maximal run', (t) => {
  const N = 256;
  const model: ({ u: number; p: number } | null)[] = new Array(N).fill(null);
  const c = new IotlbCache({ maxEntries: 1 << 16 });
  const rnd = prng(7);
  const ri = (n: number) => Math.floor(rnd() * n);
  const r = createIotlbLookup();
  let checked = 0;
  for (let op = 0; op < 4000; op++) {
    const a = ri(N);
    const n = 1 + ri(Math.min(12, N - a));
    if (rnd() < 0.65) {
      const perm = 1 + ri(3);
      // Often continue the mapping of the page before (exercises merging).
      const prev = a > 0 ? model[a - 1] : null;
      const follow = prev !== null && prev !== undefined && rnd() < 0.4;
      const u = follow ? prev.u + PAGE : (1 + ri(1 << 20)) * PAGE;
      const p = follow ? prev.p : perm;
      c.update(a * PAGE, n * PAGE, u, p);
      for (let k = 0; k < n; k++) model[a + k] = { u: u + k * PAGE, p };
    } else {
      c.invalidate(a * PAGE, n * PAGE);
      for (let k = 0; k < n; k++) model[a + k] = null;
    }
    // Compare every page, for both accesses.
    for (let pg = 0; pg < N; pg++) {
      const m = model[pg];
      const off = (pg * 37) % PAGE;
      for (const write of [false, true]) {
        c.probe(pg * PAGE + off, 1, write, r);
        const want = m === null || m === undefined ? 'miss' : (m.p & (write ? 2 : 1)) !== 0 ? 'hit' : 'denied';
        if (r.kind !== want || (want === 'hit' && r.uaddr !== m!.u + off)) {
          t.fail(`op ${op}: page ${pg} ${write ? 'write' : 'read'}: got ${r.kind} ${r.uaddr}, model ${want} ${m?.u}`);
          return;
        }
        checked++;
      }
    }
    // Entries = maximal runs (contiguous iova and uaddr, same permissions): no duplicates, no growth.
    let runs = 0;
    for (let pg = 0; pg < N; pg++) {
      const m = model[pg];
      if (m === null || m === undefined) continue;
      const b = pg > 0 ? model[pg - 1] : null;
      if (b === null || b === undefined || b.p !== m.p || b.u + PAGE !== m.u) runs++;
    }
    if (c.size !== runs) {
      t.fail(`op ${op}: ${c.size} entries for ${runs} runs`);
      return;
    }
  }
  t.true(assertInvariants(c));
  t.true(checked > 1_000_000);
});

test('eviction never produces a wrong translation: evicted ranges miss, the rest still match', (t) => {
  const N = 4096;
  const model: (number | null)[] = new Array(N).fill(null);
  const c = new IotlbCache({ maxEntries: 64 });
  const rnd = prng(11);
  const r = createIotlbLookup();
  for (let op = 0; op < 5000; op++) {
    const a = Math.floor(rnd() * N);
    const u = (1 + Math.floor(rnd() * (1 << 24))) * PAGE;
    c.update(a * PAGE, PAGE, u, 'rw');
    model[a] = u;
    if (c.size > 64) {
      t.fail(`size ${c.size} > 64`);
      return;
    }
  }
  let hits = 0;
  for (let pg = 0; pg < N; pg++) {
    c.probe(pg * PAGE + 8, 4, false, r);
    if (r.kind === 'hit') {
      hits++;
      if (r.uaddr !== model[pg]! + 8) {
        t.fail(`page ${pg}: ${r.uaddr} != ${model[pg]}`);
        return;
      }
    }
  }
  t.true(hits > 0 && hits <= 64);
  t.true(c.evictions > 0);
});

test('least recently used entries are evicted first: a mapping in use survives a flood', (t) => {
  const c = new IotlbCache({ maxEntries: 128 });
  c.update(0x7000_0000, PAGE, 0x1234_0000, 'rw'); // "the ring"
  const rnd = prng(3);
  for (let i = 0; i < 10_000; i++) {
    c.update(Math.floor(rnd() * (1 << 20)) * PAGE, PAGE, Math.floor(rnd() * (1 << 20)) * PAGE * 2 + PAGE, 'ro');
    if (i % 16 === 0) t.is(c.lookup(0x7000_0010, 4, true).kind, 'hit');
  }
  t.like(c.lookup(0x7000_0010, 4, true), { kind: 'hit', uaddr: 0x1234_0010 });
  t.true(c.size <= 128);
  t.true(c.evictions >= 10_000 - 128);
});

// ---- hostile flood: bounded size, O(log n) lookups -----------------------------------------------

test('a flood of 1e5 random overlapping UPDATEs keeps the cache bounded and lookups logarithmic', (t) => {
  const max = 4096;
  const c = new IotlbCache({ maxEntries: max });
  const rnd = prng(99);
  let peak = 0;
  const t0 = performance.now();
  for (let i = 0; i < 100_000; i++) {
    const iova = Math.floor(rnd() * (1 << 20)) * PAGE + (rnd() < 0.2 ? Math.floor(rnd() * PAGE) : 0);
    const size = (1 + Math.floor(rnd() * 16)) * PAGE - (rnd() < 0.2 ? Math.floor(rnd() * 64) : 0);
    c.update(iova, size, Math.floor(rnd() * (1 << 30)) * PAGE, 1 + Math.floor(rnd() * 3));
    if (c.size > peak) peak = c.size;
  }
  const floodMs = performance.now() - t0;
  t.true(peak <= max, `peak ${peak}`);
  t.true(c.evictions > 0);
  t.true(assertInvariants(c));
  t.true(floodMs < 20_000, `flood took ${floodMs.toFixed(0)} ms`);

  // Everything piled onto one small window: at most one entry per byte range, so it cannot grow.
  const w = new IotlbCache({ maxEntries: max });
  for (let i = 0; i < 100_000; i++) {
    const off = Math.floor(rnd() * 60) * PAGE;
    w.update(0x100000 + off, (1 + Math.floor(rnd() * 4)) * PAGE, Math.floor(rnd() * (1 << 30)) * PAGE, 'rw');
  }
  t.true(w.size <= 63, `${w.size} entries in a 63-page window`);
  t.is(w.evictions, 0);

  // Lookups after the flood: random addresses (no locality, the last-hit entry rarely helps).
  const rnd2 = prng(5);
  const addrs = new Float64Array(200_000);
  for (let i = 0; i < addrs.length; i++) addrs[i] = Math.floor(rnd2() * (1 << 20)) * PAGE;
  timeLookups(c, addrs); // warm-up
  const ms = timeLookups(c, addrs);
  const nsPer = (ms * 1e6) / addrs.length;
  t.true(nsPer < 10_000, `${nsPer.toFixed(0)} ns per lookup after the flood`);

  // O(log n): 4096 entries must not cost anywhere near 64x what 64 entries cost (a list scan would).
  const small = filledIotlb(64, 200_000, 1);
  const big = filledIotlb(4096, 200_000, 2);
  const ratios: number[] = [];
  for (let k = 0; k < 3; k++) ratios.push(timeLookups(big.c, big.addrs) / timeLookups(small.c, small.addrs));
  ratios.sort((a, b) => a - b);
  t.true(ratios[1]! < 8, `4096 vs 64 entries: ${ratios.map((x) => x.toFixed(2)).join(', ')}x`);
  t.log(`flood: 1e5 updates in ${floodMs.toFixed(0)} ms, peak ${peak} entries, ${c.evictions} evicted; ` +
    `random lookup after it ${nsPer.toFixed(0)} ns; 4096/64-entry lookup time ratio ${ratios[1]!.toFixed(2)}`);
});

// The lookup / translate benchmark (not a test: it asserts nothing a regression could fail) is
// test/bench/iotlb.ts: `node --import tsx test/bench/iotlb.ts`.

// ---- pending misses -----------------------------------------------------------------------------

test('pending misses: one per (iova, access) until answered or stale, bounded', (t) => {
  let now = 1000;
  const c = new IotlbCache({ missRetryMs: 500, maxPendingMisses: 4, now: () => now });
  t.true(c.shouldSendMiss(0x5000, false));
  t.false(c.shouldSendMiss(0x5000, false), 'already pending');
  t.true(c.shouldSendMiss(0x5000, true), 'another access is another miss');
  t.is(c.pendingMisses, 2);
  // A read-only UPDATE answers the read miss, not the write miss.
  c.update(0x5000, PAGE, 0x9000, 'ro');
  t.is(c.pendingMisses, 1);
  t.false(c.shouldSendMiss(0x5000, true));
  c.update(0x5000, PAGE, 0x9000, 'rw');
  t.is(c.pendingMisses, 0);
  // No answer (an invalid IOVA: the front-end sends nothing): re-sendable after missRetryMs.
  t.true(c.shouldSendMiss(0xdead000, false));
  now += 499;
  t.false(c.shouldSendMiss(0xdead000, false));
  now += 1;
  t.true(c.shouldSendMiss(0xdead000, false));
  // Bounded: the oldest is forgotten.
  for (let i = 0; i < 10; i++) c.shouldSendMiss(0x100000 + i * PAGE, false);
  t.is(c.pendingMisses, 4);
  t.true(c.shouldSendMiss(0x100000, false), 'the oldest was dropped');
  t.is(c.stats().missesSuppressed, 3);
  c.clear();
  t.is(c.pendingMisses, 0);
});

// ---- RegionMemory.translateUva ------------------------------------------------------------------

const UVA = 0x7f00_0000_0000;

function regions() {
  const a = { gpa: 0x0, uva: UVA, byteLen: 0x10000, bytes: new Uint8Array(0x10000) };
  // Contiguous with a in user addresses, not in guest physical ones.
  const b = { gpa: 0x100000, uva: UVA + 0x10000, byteLen: 0x10000, bytes: new Uint8Array(0x10000) };
  const ro = { gpa: 0x200000, uva: 0x7f10_0000_0000, byteLen: PAGE, bytes: new Uint8Array(PAGE), writable: false };
  return { a, b, ro, mem: new RegionMemory([b, ro, a]) };
}

test('RegionMemory.translateUva: by user address, clamped at the region end, gpa returned', (t) => {
  const { a, b, ro, mem } = regions();
  const s = createSpan();
  t.is(mem.translateUva(UVA + 0xfff0, 64, true, s), 0xfff0);
  t.is(s.bytes, a.bytes);
  t.is(s.offset, 0xfff0);
  t.is(s.byteLen, 16);
  t.is(mem.translateUva(UVA + 0x10000, 8, false, s), 0x100000);
  t.is(s.bytes, b.bytes);
  t.is(mem.translateUva(0x7f10_0000_0010, 4, false, s), 0x200010);
  t.is(s.bytes, ro.bytes);
  t.is(mem.translateUva(0x7f10_0000_0010, 4, true, s), -1, 'read-only region');
  t.is(mem.translateUva(UVA + 0x20000, 1, false, s), -1, 'past the end');
  t.is(mem.translateUva(UVA - 1, 1, false, s), -1, 'before the start');
  // The index follows region changes.
  mem.removeRegion(0x100000);
  t.is(mem.translateUva(UVA + 0x10000, 8, false, s), -1);
  mem.addRegion({ gpa: 0x300000, uva: UVA + 0x10000, byteLen: PAGE, bytes: new Uint8Array(PAGE) });
  t.is(mem.translateUva(UVA + 0x10008, 8, false, s), 0x300008);
});

test('RegionMemory.translateUva: aliased user addresses resolve to the lowest gpa, like uvaToGpa', (t) => {
  const big = { gpa: 0x800000, uva: UVA, byteLen: 0x10000, bytes: new Uint8Array(0x10000) };
  const alias = { gpa: 0x1000, uva: UVA + 0x4000, byteLen: 0x1000, bytes: big.bytes.subarray(0x4000, 0x5000) };
  const mem = new RegionMemory([big, alias]);
  const s = createSpan();
  t.is(mem.translateUva(UVA + 0x4010, 4, false, s), 0x1010);
  t.is(mem.uvaToGpa(UVA + 0x4010), 0x1010);
  t.is(mem.translateUva(UVA + 0x8000, 4, false, s), 0x808000, 'outside the alias: the big region');
  t.is(mem.translateUva(UVA + 0x10, 4, false, s), 0x800010);
  t.is(mem.translateUva(UVA + 0x4010, 4, false, s), 0x1010, 'not shadowed by the last hit');
});

// ---- IotlbMemory --------------------------------------------------------------------------------

const IOVA = 0x4000_0000;

function iommuRig() {
  const r = regions();
  const c = new IotlbCache();
  // One entry over both regions (contiguous in user address), one to the read-only region, and two
  // adjacent IOVA pages that map to non-contiguous user addresses inside region a.
  c.update(IOVA, 0x20000, UVA, 'rw');
  c.update(0x5000_0000, PAGE, 0x7f10_0000_0000, 'rw');
  c.update(0x6000_0000, PAGE, UVA + 0x2000, 'rw');
  c.update(0x6000_1000, PAGE, UVA + 0x8000, 'ro');
  const mem = new IotlbMemory(c, r.mem);
  return { ...r, c, mem };
}

test('IotlbMemory.translate: IOTLB then the region by user address; spans stop at region and entry ends', (t) => {
  const { a, b, mem } = iommuRig();
  const s = createSpan();
  t.true(mem.translate(IOVA + 0xfff0, 0x20, true, s));
  t.is(s.bytes, a.bytes);
  t.is(s.offset, 0xfff0);
  t.is(s.byteLen, 0x10, 'region a ends although the IOTLB entry goes on');
  t.true(mem.translate(IOVA + 0x10000, 0x10, true, s));
  t.is(s.bytes, b.bytes);
  t.is(s.offset, 0);
  t.true(mem.translate(0x6000_0ff8, 16, false, s));
  t.is(s.offset, 0x2ff8);
  t.is(s.byteLen, 8, 'next IOVA page maps elsewhere');
  t.true(mem.translate(0x6000_1000, 8, false, s));
  t.is(s.offset, 0x8000);

  // Copies across both boundaries land where the translations say.
  const data = new Uint8Array(32).map((_, i) => i + 1);
  writeBytes(mem, IOVA + 0xfff0, data);
  t.deepEqual(a.bytes.subarray(0xfff0, 0x10000), data.subarray(0, 16));
  t.deepEqual(b.bytes.subarray(0, 16), data.subarray(16));
  a.bytes.set([9, 9, 9, 9], 0x2ffc);
  a.bytes.set([7, 7, 7, 7], 0x8000);
  const got = new Uint8Array(8);
  readBytes(mem, 0x6000_0ffc, got);
  t.deepEqual([...got], [9, 9, 9, 9, 7, 7, 7, 7]);
});

test('IotlbMemory: a miss throws VQ_IOTLB_MISS with the first untranslated iova and records lastMiss', (t) => {
  const { mem, c } = iommuRig();
  const s = createSpan();
  const err = t.throws(() => mem.translate(0x7000_0000, 4, false, s), { instanceOf: IotlbFault });
  t.true(err instanceof VirtqError);
  t.is(err!.code, 'VQ_IOTLB_MISS');
  t.is(err!.iova, 0x7000_0000);
  t.false(err!.write);
  t.deepEqual(mem.lastMiss, { iova: 0x7000_0000, write: false });
  // The tail of the range is missing: the miss is reported right away, at the first missing byte,
  // rather than a short span (a ring spanning two IOMMU pages must get the miss, not a layout error).
  const tail = t.throws(() => mem.translate(IOVA + 0x1fff8, 16, true, s), { instanceOf: IotlbFault });
  t.is(tail!.iova, IOVA + 0x20000);
  t.true(tail!.write);
  t.deepEqual(mem.lastMiss, { iova: IOVA + 0x20000, write: true });
  const viaCopy = t.throws(() => readBytes(mem, 0x7000_0100, new Uint8Array(4)), { instanceOf: VirtqError });
  t.is(viaCopy!.code, 'VQ_IOTLB_MISS');
  t.true(c.stats().misses >= 3);
  // Answered: the same translation now succeeds.
  c.update(0x7000_0000, PAGE, UVA + 0x3000, 'rw');
  t.true(mem.translate(0x7000_0000, 4, false, s));
  t.is(s.offset, 0x3000);
});

test('IotlbMemory: permission failures throw VQ_IOTLB_PERM; user addresses outside every region are VQ_UNMAPPED', (t) => {
  const { mem, c } = iommuRig();
  const s = createSpan();
  const err = t.throws(() => mem.translate(0x6000_1004, 4, true, s), { instanceOf: IotlbFault });
  t.is(err!.code, 'VQ_IOTLB_PERM');
  t.deepEqual(mem.lastDenied, { iova: 0x6000_1004, write: true });
  t.is(mem.lastMiss, null);
  // Write crossing from a writable page into the read-only one: denied at the boundary.
  const cross = t.throws(() => mem.translate(0x6000_0ffc, 8, true, s), { instanceOf: IotlbFault });
  t.is(cross!.code, 'VQ_IOTLB_PERM');
  t.is(cross!.iova, 0x6000_1000);
  // rw IOTLB entry onto a read-only region: the region refuses the write.
  t.false(mem.translate(0x5000_0000, 4, true, s));
  t.true(mem.translate(0x5000_0000, 4, false, s));
  // An entry pointing outside the memory table (a front-end error).
  c.update(0x8000_0000, PAGE, 0x1234_0000, 'rw');
  t.false(mem.translate(0x8000_0000, 4, false, s));
  const unm = t.throws(() => readBytes(mem, 0x8000_0000, new Uint8Array(4)), { instanceOf: VirtqError });
  t.is(unm!.code, 'VQ_UNMAPPED');
});

test('IotlbMemory.onWrite reports guest physical addresses, split at entry and region boundaries', (t) => {
  const { mem } = iommuRig();
  t.is(mem.onWrite, undefined);
  const seen: [number, number][] = [];
  const hook = (gpa: number, n: number) => seen.push([gpa, n]);
  (hook as { tag?: string }).tag = 'mine';
  mem.onWrite = hook;
  t.is((mem.onWrite as { tag?: string } | undefined)?.tag, 'mine', 'tags of the hook survive the wrapper');
  writeBytes(mem, IOVA + 0xfff0, new Uint8Array(32));
  t.deepEqual(seen, [
    [0xfff0, 16],
    [0x100000, 16],
  ]);
  seen.length = 0;
  writeBytes(mem, 0x6000_0ff0, new Uint8Array(8));
  t.deepEqual(seen, [[0x2ff0, 8]]);
  t.is(mem.iovaToGpa(IOVA + 0x10004), 0x100004);
  t.is(mem.iovaToGpa(0x7000_0000), -1);
  t.is(mem.unloggedWrites, 0);
  // A write at an IOVA that has no translation any more cannot be logged: counted, not guessed.
  mem.onWrite!(0x7000_0000, 4);
  t.is(mem.unloggedWrites, 1);
  mem.onWrite = undefined;
  t.is(mem.onWrite, undefined);
  writeBytes(mem, IOVA, new Uint8Array(4));
  t.is(seen.length, 1);
});

test('IotlbMemory with a DirtyLog: the pages marked are the gpa pages, not the IOVA pages', (t) => {
  const { mem } = iommuRig();
  const dl = new DirtyLog(new Uint8Array(0x10000)); // 2 GiB: the IOVA pages are covered too
  t.true(dl.coveredBytes > IOVA + 0x10000);
  mem.onWrite = (gpa, n) => dl.mark(gpa, n);
  writeBytes(mem, IOVA + 0xfffc, new Uint8Array(8));
  t.deepEqual(dl.dirtyPages(), [0xf, 0x100], 'last page of region a, first of region b');
  t.false(dl.isDirty(IOVA + 0xfffc), 'no bit for the IOVA page');
  t.is(LOG_PAGE, PAGE);
});

test('a split queue over IotlbMemory: chains translate across entries, a miss parks pop (not broken) and pop retries', (t) => {
  const big = { gpa: 0x0, uva: UVA, byteLen: 0x40000, bytes: new Uint8Array(0x40000) };
  const rm = new RegionMemory([big]);
  const c = new IotlbCache();
  const mem = new IotlbMemory(c, rm);
  // Rings and heap at IOVA 0x1_0000_0000 -> gpa 0x10000 (two entries, uaddr-contiguous: merged).
  c.update(0x1_0000_0000, 0x8000, UVA + 0x10000, 'rw');
  c.update(0x1_0000_8000, 0x18000, UVA + 0x18000, 'rw');
  t.is(c.size, 1);
  const drv = new SplitDriver(mem, { size: 8, base: 0x1_0000_0000 });
  const q = new SplitQueue(drv.queueConfig(), mem);
  // A buffer over two IOVA pages whose translations are apart in user (and guest physical) memory.
  c.update(0x2_0000_0000, PAGE, UVA + 0x30000, 'rw');
  c.update(0x2_0000_1000, PAGE, UVA + 0x2000, 'rw');
  drv.addChain([{ byteLen: 32, write: true, addr: 0x2_0000_0ff0 }]);
  const chain = new Chain();
  t.true(q.pop(chain));
  t.deepEqual(chain.segments(), [
    { addr: 0x2_0000_0ff0, byteLen: 16, write: true },
    { addr: 0x2_0000_1000, byteLen: 16, write: true },
  ]);
  const seen: [number, number][] = [];
  mem.onWrite = (gpa, n) => seen.push([gpa, n]);
  const w = new ChainWriter().reset(chain);
  w.write(new Uint8Array(32).fill(0xab));
  t.deepEqual(seen, [
    [0x30ff0, 16],
    [0x2000, 16],
  ]);
  t.is(big.bytes[0x30ff0], 0xab);
  t.is(big.bytes[0x200f], 0xab);
  q.pushUsed(chain.head, 32);
  q.flushUsed();
  mem.onWrite = undefined;

  // A buffer at an IOVA the IOTLB does not have: pop stops there (nothing consumed), the queue is not
  // broken, and the memory reports the miss (the session sends it to the frontend).
  const faults: { kind: string; iova: number }[] = [];
  mem.onFault = (kind, a) => faults.push({ kind, iova: a.iova });
  drv.addChain([{ byteLen: 16, write: false, addr: 0x3_0000_0000 }]);
  t.false(q.pop(chain));
  t.deepEqual(faults, [{ kind: 'miss', iova: 0x3_0000_0000 }]);
  t.is(mem.lastMiss!.iova, 0x3_0000_0000);
  t.is(q.broken, null);
  t.is(q.iotlbMisses, 1);
  t.false(q.pop(chain), 'still missing: still parked, not broken');
  t.is(q.broken, null);
  t.true(c.shouldSendMiss(0x3_0000_0000, false));
  c.update(0x3_0000_0000, PAGE, UVA + 0x4000, 'ro');
  t.is(c.pendingMisses, 0, 'the UPDATE answered the miss');
  t.true(q.pop(chain), 'the same chain pops after the UPDATE');
  t.deepEqual(chain.segments(), [{ addr: 0x3_0000_0000, byteLen: 16, write: false }]);
});
