import test from 'ava';
import {
  FlatMemory,
  RegionMemory,
  VirtqError,
  createSpan,
  createWindow,
  joinAddr,
  readAddr64,
  readBytes,
  readU16,
  readU32,
  readU64,
  ringDataView,
  ringU16,
  ringU32,
  writeBytes,
  writeU16,
  writeU32,
  writeU64,
} from '../../virtqueue/index.ts';

function region(gpa: number, byteLen: number, uva = gpa + 0x7f00_0000_0000, writable?: boolean) {
  return { gpa, uva, byteLen, bytes: new Uint8Array(byteLen), ...(writable === undefined ? {} : { writable }) };
}

test('RegionMemory keeps regions sorted and translates with a possibly shorter length', (t) => {
  const hi = region(0x10000, 0x1000);
  const lo = region(0x0, 0x1000);
  const m = new RegionMemory([hi, lo]);
  t.deepEqual(
    m.regions.map((r) => r.gpa),
    [0, 0x10000],
  );
  const s = createSpan();
  t.true(m.translate(0x10ff0, 64, false, s));
  t.is(s.bytes, hi.bytes);
  t.is(s.offset, 0xff0);
  t.is(s.byteLen, 16); // only what is contiguous in the region
  t.true(m.translate(0x10, 8, true, s));
  t.is(s.bytes, lo.bytes);
  t.is(s.byteLen, 8);
  t.false(m.translate(0x1000, 1, false, s)); // gap
  t.false(m.translate(0x11000, 1, false, s)); // past the end
  t.false(m.translate(-1, 1, false, s));
});

test('RegionMemory finds regions by binary search among many', (t) => {
  const m = new RegionMemory();
  for (let i = 99; i >= 0; i--) m.addRegion(region(i * 0x2000, 0x1000));
  const s = createSpan();
  for (let i = 0; i < 100; i++) {
    t.true(m.translate(i * 0x2000 + 5, 1, false, s));
    t.is(s.offset, 5);
    t.false(m.translate(i * 0x2000 + 0x1000, 1, false, s));
  }
  t.is(m.regionCount, 100);
});

test('RegionMemory refuses overlapping and malformed regions with a code', (t) => {
  const m = new RegionMemory([region(0x1000, 0x1000)]);
  for (const [gpa, len] of [
    [0x1800, 0x1000],
    [0x0, 0x1001],
    [0x1000, 0x10],
    [0x0, 0x3000],
  ] as const) {
    const e = t.throws(() => m.addRegion(region(gpa, len)), { instanceOf: VirtqError });
    t.is(e?.code, 'VQ_REGION_OVERLAP');
  }
  m.addRegion(region(0x0, 0x1000)); // adjacent is fine
  m.addRegion(region(0x2000, 0x1000));
  t.is(m.regionCount, 3);
  const bad = [
    { gpa: 0x9000, uva: 0, byteLen: 0, bytes: new Uint8Array(0) },
    { gpa: 0x9000, uva: 0, byteLen: 0x100, bytes: new Uint8Array(0x10) },
    { gpa: -0x1000, uva: 0, byteLen: 0x10, bytes: new Uint8Array(0x10) },
    { gpa: 2 ** 53 - 8, uva: 0, byteLen: 0x10, bytes: new Uint8Array(0x10) },
  ];
  for (const r of bad) t.is(t.throws(() => m.addRegion(r), { instanceOf: VirtqError })?.code, 'VQ_BAD_REGION');
});

test('RegionMemory removeRegion / uvaToGpa / gpaOf / read-only regions', (t) => {
  const a = region(0x0, 0x1000, 0x7000_0000);
  const b = region(0x100000, 0x2000, 0x5000_0000, false);
  const m = new RegionMemory([a, b]);
  t.is(m.uvaToGpa(0x7000_0010), 0x10);
  t.is(m.uvaToGpa(0x5000_1fff), 0x101fff);
  t.is(m.uvaToGpa(0x5000_2000), null);
  t.is(m.gpaOf(b.bytes, 0x20), 0x100020);
  t.is(m.gpaOf(b.bytes.subarray(0x10), 0x20), 0x100030);
  t.is(m.gpaOf(new Uint8Array(4), 0), null);
  const s = createSpan();
  t.true(m.translate(0x100000, 4, false, s));
  t.false(m.translate(0x100000, 4, true, s)); // read-only
  t.is(t.throws(() => writeU32(m, 0x100000, 1), { instanceOf: VirtqError })?.code, 'VQ_UNMAPPED');
  t.is(m.removeRegion(0x100000), b);
  t.is(m.removeRegion(0x100000), null);
  t.false(m.translate(0x100000, 4, false, s));
  t.is(m.findRegion(0x20), a);
});

test('helpers read and write scalars across a region boundary, and log writes', (t) => {
  const a = region(0x0, 0x1000);
  const b = region(0x1000, 0x1000);
  const m = new RegionMemory([a, b]);
  const logged: [number, number][] = [];
  m.onWrite = (gpa, n) => logged.push([gpa, n]);
  writeU64(m, 0xffc, 0x1122334455667788n);
  t.is(readU64(m, 0xffc), 0x1122334455667788n);
  t.is(readU32(m, 0xffc), 0x55667788);
  t.is(readU32(m, 0x1000), 0x11223344);
  t.deepEqual([...a.bytes.subarray(0xffc)], [0x88, 0x77, 0x66, 0x55]);
  writeU16(m, 0x10, 0xbeef, false); // driver-style write: not logged
  t.is(readU16(m, 0x10), 0xbeef);
  t.deepEqual(logged, [[0xffc, 8]]);
  const src = Uint8Array.from({ length: 100 }, (_, i) => i);
  writeBytes(m, 0xfd0, src);
  const dst = new Uint8Array(100);
  readBytes(m, 0xfd0, dst);
  t.deepEqual(dst, src);
  t.is(t.throws(() => readU32(m, 0x1ffe), { instanceOf: VirtqError })?.code, 'VQ_UNMAPPED');
});

test('64-bit addresses: joinAddr and readAddr64 refuse values >= 2^53', (t) => {
  t.is(joinAddr(0x89abcdef, 0x1234), 0x1234_89abcdef);
  t.is(joinAddr(0xffffffff, 0x1fffff), 2 ** 53 - 1);
  t.is(joinAddr(0, 0x200000), -1);
  const m = new FlatMemory(64);
  writeU64(m, 0, 2n ** 53n - 1n);
  t.is(readAddr64(m, 0), 2 ** 53 - 1);
  writeU64(m, 8, 2n ** 53n);
  t.is(t.throws(() => readAddr64(m, 8), { instanceOf: VirtqError })?.code, 'VQ_UNMAPPED');
});

test('ring views must be contiguous in one region and aligned in the host view', (t) => {
  const a = region(0x0, 0x1000);
  const b = region(0x1000, 0x1000);
  const m = new RegionMemory([a, b]);
  const u16 = ringU16(m, 0xf00, 0x100, true);
  t.is(u16.length, 0x80);
  u16[0] = 0x1234;
  t.is(readU16(m, 0xf00), 0x1234);
  t.is(ringU32(m, 0x100, 0x40, false).length, 0x10);
  t.is(ringDataView(m, 0x101, 3, false).byteLength, 3);
  t.is(t.throws(() => ringU16(m, 0xf00, 0x101 + 0x100, false), { instanceOf: VirtqError })?.code, 'VQ_RING_LAYOUT');
  t.is(t.throws(() => ringU16(m, 0x3000, 4, false), { instanceOf: VirtqError })?.code, 'VQ_UNMAPPED');
  // A region whose view is at an odd byte offset cannot hold u16 rings.
  const odd = new Uint8Array(new ArrayBuffer(0x1001), 1);
  const m2 = new RegionMemory([{ gpa: 0, uva: 0, byteLen: 0x1000, bytes: odd }]);
  t.is(t.throws(() => ringU16(m2, 0, 8, false), { instanceOf: VirtqError })?.code, 'VQ_RING_LAYOUT');
});

test('FlatMemory translates at its base only', (t) => {
  const m = new FlatMemory(0x100, 0x4000);
  const s = createSpan();
  t.true(m.translate(0x40f0, 0x20, true, s));
  t.is(s.offset, 0xf0);
  t.is(s.byteLen, 0x10);
  t.false(m.translate(0x3fff, 1, false, s));
  t.false(m.translate(0x4100, 1, false, s));
  t.is(m.gpaOf(m.bytes, 3), 0x4003);
});

test('window() agrees with translate() for every address inside it (RegionMemory, FlatMemory), read-only regions refuse writes', (t) => {
  const a = region(0x0, 0x1000);
  const b = region(0x100000, 0x2000, 0x5000_0000, false);
  const gap = region(0x3000, 0x800);
  const m = new RegionMemory([b, a, gap]);
  const flat = new FlatMemory(0x100, 0x4000);
  const w = createWindow();
  const s = createSpan();
  for (const [mem, probes] of [
    [m, [0x0, 0x7ff, 0xfff, 0x3000, 0x37ff, 0x100000, 0x101fff]],
    [flat, [0x4000, 0x40ff]],
  ] as const) {
    for (const addr of probes) {
      t.true(mem.window!(addr, false, w), `window at ${addr.toString(16)}`);
      t.true(w.lo <= addr && addr < w.hi);
      // Every address of the window translates to bytes[addr - base] of the same view.
      for (const x of [w.lo, addr, w.hi - 1]) {
        t.true(mem.translate(x, 1, false, s));
        t.is(s.bytes, w.bytes);
        t.is(s.offset, x - w.base);
      }
      t.false(mem.translate(w.hi, 1, false, s) && s.bytes === w.bytes && s.offset === w.hi - w.base, 'the window ends at its region');
    }
  }
  t.deepEqual([m.window(0x1000, false, w), m.window(0x2fff, false, w), m.window(0x102000, false, w)], [false, false, false], 'gaps');
  t.false(m.window(0x100010, true, w), 'read-only region: no writable window');
  t.true(m.window(0x10, true, w));
  t.deepEqual([w.lo, w.hi, w.base], [0, 0x1000, 0]);
  t.false(flat.window(0x3fff, false, w));
  t.false(flat.window(0x4100, false, w));
});
